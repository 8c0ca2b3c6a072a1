//! BLIP's BERT with cross-attention (`models/BLIP/med.py` `BertModel(add_pooling_layer=False)`, mode
//! "multimodal"): word + absolute position embeddings (no token-type embeddings), LayerNorm; per layer a
//! post-norm self-attention over the prompt (padding masked with -10000 as the reference does), a post-norm
//! cross-attention from the prompt to the image tokens (keys/values from `encoder_width`), and a GELU
//! feed-forward. Field names are the checkpoint's, except `self` (a Rust keyword), which is `self_` here:
//! see [`super::CHECKPOINT_REMAP`].

#![allow(non_snake_case)]

use burn::module::Module;
use burn::nn::{Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::activation::gelu;
use burn::tensor::{Device, Int, Tensor};

use super::attention;
use crate::models::bounds::{
    self, MAX_CHANNELS, MAX_DEPTH, MAX_FEED_FORWARD, MAX_HEADS, MAX_POSITIONS, MAX_VOCAB, OutOfRange,
};

/// BLIP's `med_config.json` (a transformers `BertConfig` plus `encoder_width`); unknown fields are ignored.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct MedConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    /// Read for completeness: med.py's embeddings have no token-type table.
    pub type_vocab_size: usize,
    pub layer_norm_eps: f64,
    pub hidden_act: String,
    pub pad_token_id: usize,
    pub add_cross_attention: bool,
    /// Width of the image tokens; BLIP_Pretrain overwrites the file's value with the ViT's width.
    pub encoder_width: usize,
}

impl Default for MedConfig {
    /// BLIP's `configs/med_config.json` with `encoder_width` set to ViT-L's 1024, as ImageReward builds it.
    fn default() -> Self {
        MedConfig {
            vocab_size: 30524,
            hidden_size: 768,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            intermediate_size: 3072,
            max_position_embeddings: 512,
            type_vocab_size: 2,
            layer_norm_eps: 1e-12,
            hidden_act: "gelu".into(),
            pad_token_id: 0,
            add_cross_attention: true,
            encoder_width: 1024,
        }
    }
}

impl MedConfig {
    /// Every size within the bounds of [`crate::models::bounds`] (field names as in med_config.json).
    pub fn check_bounds(&self) -> Result<(), OutOfRange> {
        bounds::check("vocab_size", self.vocab_size, 1, MAX_VOCAB)?;
        bounds::check("hidden_size", self.hidden_size, 1, MAX_CHANNELS)?;
        bounds::check("num_hidden_layers", self.num_hidden_layers, 1, MAX_DEPTH)?;
        bounds::check("num_attention_heads", self.num_attention_heads, 1, MAX_HEADS)?;
        bounds::check("intermediate_size", self.intermediate_size, 1, MAX_FEED_FORWARD)?;
        bounds::check("max_position_embeddings", self.max_position_embeddings, 1, MAX_POSITIONS)?;
        bounds::check("encoder_width", self.encoder_width, 1, MAX_CHANNELS)?;
        Ok(())
    }

    pub(super) fn init(&self, device: &Device) -> BertModel {
        let d = self.hidden_size;
        let ln = || LayerNormConfig::new(d).with_epsilon(self.layer_norm_eps).init(device);
        let linear = |i, o| LinearConfig::new(i, o).init(device);
        let heads = self.num_attention_heads;
        let attn = |kv: usize| BertAttention {
            self_: BertSelfAttention { query: linear(d, d), key: linear(kv, d), value: linear(kv, d), heads },
            output: BertSelfOutput { dense: linear(d, d), LayerNorm: ln() },
        };
        let layer = (0..self.num_hidden_layers)
            .map(|_| BertLayer {
                attention: attn(d),
                crossattention: attn(self.encoder_width),
                intermediate: BertIntermediate { dense: linear(d, self.intermediate_size) },
                output: BertOutput { dense: linear(self.intermediate_size, d), LayerNorm: ln() },
            })
            .collect();
        BertModel {
            embeddings: BertEmbeddings {
                word_embeddings: EmbeddingConfig::new(self.vocab_size, d).init(device),
                position_embeddings: EmbeddingConfig::new(self.max_position_embeddings, d).init(device),
                LayerNorm: ln(),
            },
            encoder: BertEncoder { layer },
        }
    }
}

#[derive(Module, Debug)]
pub struct BertEmbeddings {
    pub word_embeddings: Embedding,
    pub position_embeddings: Embedding,
    pub LayerNorm: LayerNorm,
}

/// Query from the prompt; key and value from the prompt (self-attention) or the image tokens.
#[derive(Module, Debug)]
pub struct BertSelfAttention {
    pub query: Linear,
    pub key: Linear,
    pub value: Linear,
    #[module(skip)]
    pub heads: usize,
}

#[derive(Module, Debug)]
pub struct BertSelfOutput {
    pub dense: Linear,
    pub LayerNorm: LayerNorm,
}

/// `BertAttention`: attention then `LayerNorm(dense(out) + x)`. The checkpoint calls the first part `self`.
#[derive(Module, Debug)]
pub struct BertAttention {
    pub self_: BertSelfAttention,
    pub output: BertSelfOutput,
}

impl BertAttention {
    /// `x` [N, L, hidden]; `context` [N, S, kv width] (self-attention when `None`); `mask` additive [N, 1, 1, S].
    pub fn forward(&self, x: Tensor<3>, context: Option<Tensor<3>>, mask: Option<Tensor<4>>) -> Tensor<3> {
        let context = context.unwrap_or_else(|| x.clone());
        let a = &self.self_;
        let out = attention(
            a.query.forward(x.clone()),
            a.key.forward(context.clone()),
            a.value.forward(context),
            a.heads,
            mask,
        );
        self.output.LayerNorm.forward(self.output.dense.forward(out) + x)
    }
}

#[derive(Module, Debug)]
pub struct BertIntermediate {
    pub dense: Linear,
}

#[derive(Module, Debug)]
pub struct BertOutput {
    pub dense: Linear,
    pub LayerNorm: LayerNorm,
}

#[derive(Module, Debug)]
pub struct BertLayer {
    pub attention: BertAttention,
    pub crossattention: BertAttention,
    pub intermediate: BertIntermediate,
    pub output: BertOutput,
}

impl BertLayer {
    pub fn forward(&self, x: Tensor<3>, mask: Tensor<4>, image: Tensor<3>) -> Tensor<3> {
        let x = self.attention.forward(x, None, Some(mask));
        let x = self.crossattention.forward(x, Some(image), None);
        let h = gelu(self.intermediate.dense.forward(x.clone()));
        self.output.LayerNorm.forward(self.output.dense.forward(h) + x)
    }
}

#[derive(Module, Debug)]
pub struct BertEncoder {
    pub layer: Vec<BertLayer>,
}

/// med.py's `BertModel` without pooler.
#[derive(Module, Debug)]
pub struct BertModel {
    pub embeddings: BertEmbeddings,
    pub encoder: BertEncoder,
}

impl BertModel {
    /// Last hidden states [N, L, hidden] of token ids [N, L] with attention mask [N, L] (1 = token, 0 =
    /// padding), cross-attending to image tokens [N, S, encoder_width] (all attended).
    pub fn forward(&self, ids: Tensor<2, Int>, attention_mask: Tensor<2>, image: Tensor<3>) -> Tensor<3> {
        let device = ids.device();
        let [n, l] = ids.dims();
        let positions = Tensor::<1, Int>::arange(0..l as i64, &device).unsqueeze::<2>();
        let e = &self.embeddings;
        let x = e.word_embeddings.forward(ids) + e.position_embeddings.forward(positions);
        let mut x = e.LayerNorm.forward(x);
        // (1 - mask) * -10000, broadcast over heads and queries.
        let mask = attention_mask.neg().add_scalar(1.0).mul_scalar(-10000.0).reshape([n, 1, 1, l]);
        for layer in &self.encoder.layer {
            x = layer.forward(x, mask.clone(), image.clone());
        }
        x
    }
}
