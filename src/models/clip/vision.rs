//! The CLIP vision tower as transformers' `CLIPVisionModelWithProjection` (how I2VGen-XL's and
//! DynamiCrafter's OpenCLIP ViT-H/14 image encoder is saved): a patch convolution without bias, a class token,
//! learned position embeddings, `pre_layrnorm` (transformers' spelling), the CLIP encoder layers (the text
//! tower's, without a mask), `post_layernorm` on the class token and a bias-free `visual_projection`.
//! Field names follow transformers' module tree, so loading is a walk over the same keys.

use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Embedding, EmbeddingConfig, Initializer, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::{Device, Int, Tensor};

use super::{ClipConfigError, ClipEncoder, EncoderShape};
use crate::models::bounds::{self, MAX_CHANNELS, MAX_DEPTH, MAX_FEED_FORWARD, MAX_HEADS};

/// The largest image side and patch side a config may name.
const MAX_IMAGE: usize = 4096;

/// The parts of a transformers `CLIPVisionConfig` the tower needs.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct ClipVisionConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_channels: usize,
    pub image_size: usize,
    pub patch_size: usize,
    pub projection_dim: usize,
    pub hidden_act: String,
    pub layer_norm_eps: f64,
}

impl Default for ClipVisionConfig {
    /// OpenCLIP ViT-H/14 at 224 px, as `ali-vilab/i2vgen-xl`'s `image_encoder/config.json` has it.
    fn default() -> Self {
        ClipVisionConfig {
            hidden_size: 1280,
            intermediate_size: 5120,
            num_hidden_layers: 32,
            num_attention_heads: 16,
            num_channels: 3,
            image_size: 224,
            patch_size: 14,
            projection_dim: 1024,
            hidden_act: "gelu".to_string(),
            layer_norm_eps: 1e-5,
        }
    }
}

impl ClipVisionConfig {
    /// Patches per side.
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size.max(1)
    }

    pub fn check(&self) -> Result<(), ClipConfigError> {
        bounds::check("hidden_size", self.hidden_size, 1, MAX_CHANNELS)?;
        bounds::check("intermediate_size", self.intermediate_size, 1, MAX_FEED_FORWARD)?;
        bounds::check("num_hidden_layers", self.num_hidden_layers, 1, MAX_DEPTH)?;
        bounds::check("num_attention_heads", self.num_attention_heads, 1, MAX_HEADS)?;
        bounds::check("num_channels", self.num_channels, 1, 16)?;
        bounds::check("image_size", self.image_size, 1, MAX_IMAGE)?;
        bounds::check("patch_size", self.patch_size, 1, self.image_size)?;
        bounds::check("projection_dim", self.projection_dim, 1, MAX_CHANNELS)?;
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(ClipConfigError::Heads { hidden: self.hidden_size, heads: self.num_attention_heads });
        }
        if !matches!(self.hidden_act.as_str(), "quick_gelu" | "gelu") {
            return Err(ClipConfigError::Activation(self.hidden_act.clone()));
        }
        Ok(())
    }

    /// A zero-initialised model of this shape, ready to receive weights.
    pub fn init(&self, device: &Device) -> Result<ClipVisionModelWithProjection, ClipConfigError> {
        self.check()?;
        let d = self.hidden_size;
        let ln = || LayerNormConfig::new(d).with_epsilon(self.layer_norm_eps).init(device);
        let layers = EncoderShape {
            hidden: d,
            intermediate: self.intermediate_size,
            layers: self.num_hidden_layers,
            heads: self.num_attention_heads,
            quick_gelu: self.hidden_act == "quick_gelu",
            eps: self.layer_norm_eps,
        }
        .init(device);
        let p = self.patch_size;
        let tokens = self.grid() * self.grid() + 1;
        Ok(ClipVisionModelWithProjection {
            vision_model: ClipVisionTransformer {
                embeddings: ClipVisionEmbeddings {
                    class_embedding: Initializer::Zeros.init([d], device),
                    patch_embedding: Conv2dConfig::new([self.num_channels, d], [p, p])
                        .with_stride([p, p])
                        .with_bias(false)
                        .init(device),
                    position_embedding: EmbeddingConfig::new(tokens, d).init(device),
                },
                pre_layrnorm: ln(),
                encoder: ClipEncoder { layers },
                post_layernorm: ln(),
            },
            visual_projection: LinearConfig::new(d, self.projection_dim).with_bias(false).init(device),
        })
    }
}

#[derive(Module, Debug)]
pub struct ClipVisionEmbeddings {
    pub class_embedding: Param<Tensor<1>>,
    pub patch_embedding: Conv2d,
    pub position_embedding: Embedding,
}

#[derive(Module, Debug)]
pub struct ClipVisionTransformer {
    pub embeddings: ClipVisionEmbeddings,
    pub pre_layrnorm: LayerNorm,
    pub encoder: ClipEncoder,
    pub post_layernorm: LayerNorm,
}

/// transformers' `CLIPVisionModelWithProjection`.
#[derive(Module, Debug)]
pub struct ClipVisionModelWithProjection {
    pub vision_model: ClipVisionTransformer,
    pub visual_projection: Linear,
}

/// What the vision tower gives for a batch of images.
#[derive(Debug, Clone)]
pub struct ClipVisionOutput {
    /// The projected, pooled embedding [batch, projection_dim] (I2VGen-XL's global image tokens).
    pub image_embeds: Tensor<2>,
    /// Every token after the last layer, before `post_layernorm` [batch, 1 + patches, hidden] (what
    /// DynamiCrafter's image projector reads).
    pub last_hidden_state: Tensor<3>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ClipVisionError {
    #[error("the image encoder takes {expected}x{expected} pixels with {channels} channels, got {found:?}")]
    Input { expected: usize, channels: usize, found: [usize; 4] },
}

impl ClipVisionModelWithProjection {
    /// The tower on normalised pixels [batch, channels, image_size, image_size] (see
    /// [`super::image::preprocess`]).
    pub fn forward(&self, pixel_values: Tensor<4>) -> Result<ClipVisionOutput, ClipVisionError> {
        let m = &self.vision_model;
        let dims = pixel_values.dims();
        let [b, c, h, w] = dims;
        // The image side the position table was learnt for: (tokens - 1) patches in a square grid.
        let [positions, _] = m.embeddings.position_embedding.weight.dims();
        let channels = m.embeddings.patch_embedding.weight.dims()[1];
        let p = m.embeddings.patch_embedding.kernel_size[0];
        let side = ((positions.saturating_sub(1) as f64).sqrt().round() as usize) * p;
        if c != channels || h != side || w != side {
            return Err(ClipVisionError::Input { expected: side, channels, found: dims });
        }
        let device = pixel_values.device();
        let patches = crate::models::blocks::conv_forward(&m.embeddings.patch_embedding, pixel_values); // [b, d, g, g]
        let [_, hidden, gh, gw] = patches.dims();
        let patches = patches.reshape([b, hidden, gh * gw]).swap_dims(1, 2);
        let class = m.embeddings.class_embedding.val().reshape([1, 1, hidden]).expand([b, 1, hidden]);
        let tokens = 1 + gh * gw;
        let positions = Tensor::<1, Int>::arange(0..tokens as i64, &device).unsqueeze::<2>();
        let mut x = Tensor::cat(vec![class, patches], 1) + m.embeddings.position_embedding.forward(positions);
        x = m.pre_layrnorm.forward(x);
        for layer in &m.encoder.layers {
            x = layer.forward(x, None);
        }
        let pooled = m.post_layernorm.forward(x.clone().narrow(1, 0, 1).reshape([b, hidden]));
        Ok(ClipVisionOutput { image_embeds: self.visual_projection.forward(pooled), last_hidden_state: x })
    }
}
