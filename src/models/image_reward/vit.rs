//! BLIP's vision transformer (`models/BLIP/vit.py`, timm-style): 16x16 patch convolution, a class token,
//! learned position embeddings, pre-norm blocks (LayerNorm eps 1e-6, fused `qkv` projection with bias,
//! exact-erf GELU MLP of ratio 4) and a final LayerNorm. Field names are the checkpoint's
//! (`blip.visual_encoder.blocks.N.attn.qkv`, ...).

use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Initializer, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::activation::gelu;
use burn::tensor::{Device, Tensor};

use super::attention;

/// Shape of the vision tower.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct VisionConfig {
    pub image_size: usize,
    pub patch_size: usize,
    pub width: usize,
    pub depth: usize,
    pub heads: usize,
    pub mlp_ratio: usize,
    pub layer_norm_eps: f64,
}

impl Default for VisionConfig {
    /// BLIP's ViT-L/16 at 224 px (`create_vit('large', 224)`).
    fn default() -> Self {
        VisionConfig {
            image_size: 224,
            patch_size: 16,
            width: 1024,
            depth: 24,
            heads: 16,
            mlp_ratio: 4,
            layer_norm_eps: 1e-6,
        }
    }
}

impl VisionConfig {
    /// Patches per side.
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size.max(1)
    }

    pub(super) fn init(&self, device: &Device) -> VisionTransformer {
        let d = self.width;
        let tokens = self.grid() * self.grid() + 1;
        let ln = || LayerNormConfig::new(d).with_epsilon(self.layer_norm_eps).init(device);
        let linear = |i, o| LinearConfig::new(i, o).init(device);
        let blocks = (0..self.depth)
            .map(|_| VitBlock {
                norm1: ln(),
                attn: VitAttention { qkv: linear(d, 3 * d), proj: linear(d, d), heads: self.heads },
                norm2: ln(),
                mlp: VitMlp { fc1: linear(d, d * self.mlp_ratio), fc2: linear(d * self.mlp_ratio, d) },
            })
            .collect();
        VisionTransformer {
            // Lazy, like every other parameter: nothing is allocated before the weights arrive.
            cls_token: Initializer::Zeros.init([1, 1, d], device),
            pos_embed: Initializer::Zeros.init([1, tokens, d], device),
            patch_embed: PatchEmbed {
                proj: Conv2dConfig::new([3, d], [self.patch_size, self.patch_size])
                    .with_stride([self.patch_size, self.patch_size])
                    .init(device),
            },
            blocks,
            norm: ln(),
        }
    }
}

/// timm's `PatchEmbed`: a stride-`patch` convolution.
#[derive(Module, Debug)]
pub struct PatchEmbed {
    pub proj: Conv2d,
}

/// Multi-head self-attention with a fused `qkv` projection.
#[derive(Module, Debug)]
pub struct VitAttention {
    pub qkv: Linear,
    pub proj: Linear,
    #[module(skip)]
    pub heads: usize,
}

impl VitAttention {
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let [b, n, d] = x.dims();
        let qkv = self.qkv.forward(x);
        let part = |i: usize| qkv.clone().slice([0..b, 0..n, i * d..(i + 1) * d]);
        let out = attention(part(0), part(1), part(2), self.heads, None);
        self.proj.forward(out)
    }
}

#[derive(Module, Debug)]
pub struct VitMlp {
    pub fc1: Linear,
    pub fc2: Linear,
}

/// A pre-norm transformer block.
#[derive(Module, Debug)]
pub struct VitBlock {
    pub norm1: LayerNorm,
    pub attn: VitAttention,
    pub norm2: LayerNorm,
    pub mlp: VitMlp,
}

impl VitBlock {
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let x = x.clone() + self.attn.forward(self.norm1.forward(x));
        let h = self.mlp.fc2.forward(gelu(self.mlp.fc1.forward(self.norm2.forward(x.clone()))));
        x + h
    }
}

/// BLIP's `VisionTransformer` (no classification head).
#[derive(Module, Debug)]
pub struct VisionTransformer {
    pub cls_token: Param<Tensor<3>>,
    pub pos_embed: Param<Tensor<3>>,
    pub patch_embed: PatchEmbed,
    pub blocks: Vec<VitBlock>,
    pub norm: LayerNorm,
}

impl VisionTransformer {
    /// Image tokens [N, 1 + patches, width] of normalised pixels [N, 3, size, size].
    pub fn forward(&self, pixels: Tensor<4>) -> Tensor<3> {
        let patches = self.patch_embed.proj.forward(pixels);
        let [b, d, gh, gw] = patches.dims();
        let patches = patches.reshape([b, d, gh * gw]).swap_dims(1, 2);
        let cls = self.cls_token.val().expand([b, 1, d]);
        let x = Tensor::cat(vec![cls, patches], 1);
        let n = x.dims()[1];
        let pos = self.pos_embed.val().slice([0..1, 0..n, 0..d]);
        let mut x = x + pos;
        for block in &self.blocks {
            x = block.forward(x);
        }
        self.norm.forward(x)
    }
}
