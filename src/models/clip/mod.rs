//! The CLIP text encoder of Stable Diffusion 1.x (transformers' `CLIPTextModel`), and its tokenizer.
//!
//! Field names follow transformers' module tree (`text_model.embeddings.token_embedding`,
//! `text_model.encoder.layers.N.self_attn.q_proj`, ...) so that loading is a walk over the same keys.

pub mod image;
pub mod tokenizer;
pub mod vision;

use burn::module::Module;
use burn::nn::{Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::activation::sigmoid;
use burn::tensor::{Device, Int, Tensor, TensorData};

pub use tokenizer::{ClipTokenizer, Encoding, TokenizerError};

use crate::models::bounds::{
    self, MAX_CHANNELS, MAX_DEPTH, MAX_FEED_FORWARD, MAX_HEADS, MAX_POSITIONS, MAX_VOCAB, OutOfRange,
};

/// The parts of a transformers `CLIPTextConfig` the text encoder needs.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct ClipTextConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub max_position_embeddings: usize,
    pub hidden_act: String,
    pub layer_norm_eps: f64,
}

impl Default for ClipTextConfig {
    /// SD 1.x: the ViT-L/14 text tower.
    fn default() -> Self {
        ClipTextConfig {
            vocab_size: 49408,
            hidden_size: 768,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            max_position_embeddings: 77,
            hidden_act: "quick_gelu".to_string(),
            layer_norm_eps: 1e-5,
        }
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ClipConfigError {
    #[error("hidden_size {hidden} is not divisible by num_attention_heads {heads}")]
    Heads { hidden: usize, heads: usize },
    #[error("hidden_act '{0}' is not supported (quick_gelu, gelu)")]
    Activation(String),
    #[error(transparent)]
    Bound(#[from] OutOfRange),
}

impl ClipTextConfig {
    pub fn check(&self) -> Result<(), ClipConfigError> {
        bounds::check("vocab_size", self.vocab_size, 1, MAX_VOCAB)?;
        bounds::check("hidden_size", self.hidden_size, 1, MAX_CHANNELS)?;
        bounds::check("intermediate_size", self.intermediate_size, 1, MAX_FEED_FORWARD)?;
        bounds::check("num_hidden_layers", self.num_hidden_layers, 1, MAX_DEPTH)?;
        bounds::check("num_attention_heads", self.num_attention_heads, 1, MAX_HEADS)?;
        bounds::check("max_position_embeddings", self.max_position_embeddings, 1, MAX_POSITIONS)?;
        if self.num_attention_heads == 0 || !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(ClipConfigError::Heads { hidden: self.hidden_size, heads: self.num_attention_heads });
        }
        if !matches!(self.hidden_act.as_str(), "quick_gelu" | "gelu") {
            return Err(ClipConfigError::Activation(self.hidden_act.clone()));
        }
        Ok(())
    }

    /// A zero-initialised model of this shape, ready to receive weights.
    pub fn init(&self, device: &Device) -> Result<ClipTextModel, ClipConfigError> {
        self.check()?;
        let d = self.hidden_size;
        let ln = || LayerNormConfig::new(d).with_epsilon(self.layer_norm_eps).init(device);
        let shape = EncoderShape {
            hidden: d,
            intermediate: self.intermediate_size,
            layers: self.num_hidden_layers,
            heads: self.num_attention_heads,
            quick_gelu: self.hidden_act == "quick_gelu",
            eps: self.layer_norm_eps,
        };
        let layers = shape.init(device);
        Ok(ClipTextModel {
            text_model: ClipTextTransformer {
                embeddings: ClipTextEmbeddings {
                    token_embedding: EmbeddingConfig::new(self.vocab_size, d).init(device),
                    position_embedding: EmbeddingConfig::new(self.max_position_embeddings, d).init(device),
                },
                encoder: ClipEncoder { layers },
                final_layer_norm: ln(),
            },
        })
    }
}

/// The shape of a CLIP encoder stack (text and vision towers share it).
pub(crate) struct EncoderShape {
    pub hidden: usize,
    pub intermediate: usize,
    pub layers: usize,
    pub heads: usize,
    pub quick_gelu: bool,
    pub eps: f64,
}

impl EncoderShape {
    /// Zero-initialised encoder layers of this shape.
    pub(crate) fn init(&self, device: &Device) -> Vec<ClipEncoderLayer> {
        let d = self.hidden;
        let ln = || LayerNormConfig::new(d).with_epsilon(self.eps).init(device);
        let linear = |i, o| LinearConfig::new(i, o).init(device);
        (0..self.layers)
            .map(|_| ClipEncoderLayer {
                self_attn: ClipAttention {
                    q_proj: linear(d, d),
                    k_proj: linear(d, d),
                    v_proj: linear(d, d),
                    out_proj: linear(d, d),
                    num_heads: self.heads,
                },
                layer_norm1: ln(),
                mlp: ClipMlp {
                    fc1: linear(d, self.intermediate),
                    fc2: linear(self.intermediate, d),
                    quick_gelu: self.quick_gelu,
                },
                layer_norm2: ln(),
            })
            .collect()
    }
}

#[derive(Module, Debug)]
pub struct ClipAttention {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub out_proj: Linear,
    #[module(skip)]
    pub num_heads: usize,
}

impl ClipAttention {
    /// Self-attention over `x` [batch, seq, dim] with an additive `mask` [seq, seq] (None: every token sees
    /// every token, as in the vision tower).
    pub fn forward(&self, x: Tensor<3>, mask: Option<Tensor<2>>) -> Tensor<3> {
        let [b, s, d] = x.dims();
        let h = self.num_heads;
        let dh = d / h;
        let split = |t: Tensor<3>| t.reshape([b, s, h, dh]).swap_dims(1, 2);
        let q = split(self.q_proj.forward(x.clone())).mul_scalar((dh as f64).powf(-0.5));
        let k = split(self.k_proj.forward(x.clone()));
        let v = split(self.v_proj.forward(x));
        let out = crate::models::attention::attention(q, k, v, None, mask.map(|m| m.unsqueeze::<4>()));
        let out = out.swap_dims(1, 2).reshape([b, s, d]);
        self.out_proj.forward(out)
    }
}

#[derive(Module, Debug)]
pub struct ClipMlp {
    pub fc1: Linear,
    pub fc2: Linear,
    #[module(skip)]
    pub quick_gelu: bool,
}

impl ClipMlp {
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let x = self.fc1.forward(x);
        let x =
            if self.quick_gelu { x.clone() * sigmoid(x.mul_scalar(1.702)) } else { burn::tensor::activation::gelu(x) };
        self.fc2.forward(x)
    }
}

#[derive(Module, Debug)]
pub struct ClipEncoderLayer {
    pub self_attn: ClipAttention,
    pub layer_norm1: LayerNorm,
    pub mlp: ClipMlp,
    pub layer_norm2: LayerNorm,
}

impl ClipEncoderLayer {
    pub fn forward(&self, x: Tensor<3>, mask: Option<Tensor<2>>) -> Tensor<3> {
        let x = x.clone() + self.self_attn.forward(self.layer_norm1.forward(x), mask);
        x.clone() + self.mlp.forward(self.layer_norm2.forward(x))
    }
}

#[derive(Module, Debug)]
pub struct ClipEncoder {
    pub layers: Vec<ClipEncoderLayer>,
}

#[derive(Module, Debug)]
pub struct ClipTextEmbeddings {
    pub token_embedding: Embedding,
    pub position_embedding: Embedding,
}

#[derive(Module, Debug)]
pub struct ClipTextTransformer {
    pub embeddings: ClipTextEmbeddings,
    pub encoder: ClipEncoder,
    pub final_layer_norm: LayerNorm,
}

/// transformers' `CLIPTextModel`.
#[derive(Module, Debug)]
pub struct ClipTextModel {
    pub text_model: ClipTextTransformer,
}

impl ClipTextModel {
    /// The last hidden state [batch, seq, hidden] for token ids [batch, seq] (what SD 1.x conditions on).
    pub fn forward(&self, input_ids: Tensor<2, Int>) -> Tensor<3> {
        self.forward_clip_skip(input_ids, 0)
    }

    /// [`Self::forward`] with the last `clip_skip` layers left out, then the final layer norm (diffusers'
    /// `clip_skip`: 1 is the penultimate layer, what SD 2.x-style pipelines such as I2VGen-XL condition on). At
    /// least one layer always runs.
    pub fn forward_clip_skip(&self, input_ids: Tensor<2, Int>, clip_skip: usize) -> Tensor<3> {
        let device = input_ids.device();
        let [_, s] = input_ids.dims();
        let m = &self.text_model;
        let positions = Tensor::<1, Int>::arange(0..s as i64, &device).unsqueeze::<2>();
        let mut x =
            m.embeddings.token_embedding.forward(input_ids) + m.embeddings.position_embedding.forward(positions);
        let mask = causal_mask(s, &device);
        let layers = m.encoder.layers.len().saturating_sub(clip_skip).max(1);
        for layer in m.encoder.layers.iter().take(layers) {
            x = layer.forward(x, Some(mask.clone()));
        }
        m.final_layer_norm.forward(x)
    }

    /// Encodes token ids given as plain vectors (one per prompt, all of the same length).
    pub fn encode_ids(&self, ids: &[Vec<u32>], device: &Device) -> Tensor<3> {
        self.encode_ids_clip_skip(ids, 0, device)
    }

    /// [`Self::encode_ids`] with `clip_skip` (see [`Self::forward_clip_skip`]).
    pub fn encode_ids_clip_skip(&self, ids: &[Vec<u32>], clip_skip: usize, device: &Device) -> Tensor<3> {
        let s = ids.first().map_or(0, Vec::len);
        let flat: Vec<i64> = ids.iter().flat_map(|row| row.iter().map(|&i| i64::from(i))).collect();
        let input = Tensor::<2, Int>::from_data(TensorData::new(flat, [ids.len(), s]), device);
        self.forward_clip_skip(input, clip_skip)
    }
}

/// The additive causal mask: 0 on and below the diagonal, -inf above.
pub fn causal_mask(s: usize, device: &Device) -> Tensor<2> {
    let data: Vec<f32> = (0..s * s).map(|i| if i % s > i / s { f32::NEG_INFINITY } else { 0.0 }).collect();
    Tensor::from_data(TensorData::new(data, [s, s]), device)
}
