//! diffusers' `AutoencoderKL` (the SD kl-f8 VAE): encoder to a diagonal Gaussian, decoder back to pixels.
//! Latents are scaled by `scaling_factor` (0.18215 for SD 1.x) by the caller's convention: `encode` and
//! `decode` work on unscaled latents, `encode_scaled`/`decode_scaled` include the factor.

use burn::module::Module;
use burn::nn::GroupNorm;
use burn::nn::conv::Conv2d;
use burn::tensor::activation::silu;
use burn::tensor::{Device, Tensor};

use super::blocks::{Downsample2D, ResnetBlock2D, SpatialSelfAttention, Upsample2D, conv2d, group_norm};

/// The fields of a diffusers `vae/config.json` the model needs.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct VaeConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    pub block_out_channels: Vec<usize>,
    pub layers_per_block: usize,
    pub latent_channels: usize,
    pub norm_num_groups: usize,
    pub scaling_factor: f64,
    pub mid_block_add_attention: bool,
}

impl Default for VaeConfig {
    /// SD 1.x's VAE.
    fn default() -> Self {
        VaeConfig {
            in_channels: 3,
            out_channels: 3,
            block_out_channels: vec![128, 256, 512, 512],
            layers_per_block: 2,
            latent_channels: 4,
            norm_num_groups: 32,
            scaling_factor: 0.18215,
            mid_block_add_attention: true,
        }
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum VaeConfigError {
    #[error("block_out_channels is empty")]
    NoBlocks,
    #[error("channel count {channels} is not divisible by norm_num_groups {groups}")]
    Groups { channels: usize, groups: usize },
}

/// The VAE's GroupNorm epsilon (diffusers hard-codes 1e-6 in the encoder and decoder).
const EPS: f64 = 1e-6;

impl VaeConfig {
    fn check(&self) -> Result<(), VaeConfigError> {
        if self.block_out_channels.is_empty() {
            return Err(VaeConfigError::NoBlocks);
        }
        let g = self.norm_num_groups;
        if let Some(&c) = self.block_out_channels.iter().find(|&&c| g == 0 || c % g != 0) {
            return Err(VaeConfigError::Groups { channels: c, groups: g });
        }
        Ok(())
    }

    pub fn init(&self, device: &Device) -> Result<AutoencoderKl, VaeConfigError> {
        self.check()?;
        let ch = &self.block_out_channels;
        let g = self.norm_num_groups;
        let last = *ch.last().unwrap_or(&0);
        let mid = || VaeMidBlock {
            resnets: vec![ResnetBlock2D::new(last, last, None, g, EPS, device), ResnetBlock2D::new(last, last, None, g, EPS, device)],
            attentions: if self.mid_block_add_attention {
                vec![SpatialSelfAttention::new(last, g, EPS, device)]
            } else {
                Vec::new()
            },
        };

        let mut down_blocks = Vec::with_capacity(ch.len());
        let mut cin = ch[0];
        for (i, &cout) in ch.iter().enumerate() {
            let resnets = (0..self.layers_per_block)
                .map(|j| ResnetBlock2D::new(if j == 0 { cin } else { cout }, cout, None, g, EPS, device))
                .collect();
            let downsamplers = if i + 1 < ch.len() { vec![Downsample2D::new(cout, 0, device)] } else { Vec::new() };
            down_blocks.push(VaeDownBlock { resnets, downsamplers });
            cin = cout;
        }
        let encoder = VaeEncoder {
            conv_in: conv2d(self.in_channels, ch[0], 3, 1, 1, device),
            down_blocks,
            mid_block: mid(),
            conv_norm_out: group_norm(g, last, EPS, device),
            conv_out: conv2d(last, 2 * self.latent_channels, 3, 1, 1, device),
        };

        let reversed: Vec<usize> = ch.iter().rev().copied().collect();
        let mut up_blocks = Vec::with_capacity(ch.len());
        let mut cin = reversed[0];
        for (i, &cout) in reversed.iter().enumerate() {
            let resnets = (0..=self.layers_per_block)
                .map(|j| ResnetBlock2D::new(if j == 0 { cin } else { cout }, cout, None, g, EPS, device))
                .collect();
            let upsamplers = if i + 1 < ch.len() { vec![Upsample2D::new(cout, device)] } else { Vec::new() };
            up_blocks.push(VaeUpBlock { resnets, upsamplers });
            cin = cout;
        }
        let decoder = VaeDecoder {
            conv_in: conv2d(self.latent_channels, last, 3, 1, 1, device),
            mid_block: mid(),
            up_blocks,
            conv_norm_out: group_norm(g, ch[0], EPS, device),
            conv_out: conv2d(ch[0], self.out_channels, 3, 1, 1, device),
        };
        let lc = self.latent_channels;
        Ok(AutoencoderKl {
            encoder,
            decoder,
            quant_conv: conv2d(2 * lc, 2 * lc, 1, 1, 0, device),
            post_quant_conv: conv2d(lc, lc, 1, 1, 0, device),
            scaling_factor: self.scaling_factor,
        })
    }
}

#[derive(Module, Debug)]
pub struct VaeMidBlock {
    pub resnets: Vec<ResnetBlock2D>,
    pub attentions: Vec<SpatialSelfAttention>,
}

impl VaeMidBlock {
    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let mut x = x;
        for (i, resnet) in self.resnets.iter().enumerate() {
            if i > 0 {
                if let Some(attn) = self.attentions.get(i - 1) {
                    x = attn.forward(x);
                }
            }
            x = resnet.forward(x, None);
        }
        x
    }
}

#[derive(Module, Debug)]
pub struct VaeDownBlock {
    pub resnets: Vec<ResnetBlock2D>,
    pub downsamplers: Vec<Downsample2D>,
}

impl VaeDownBlock {
    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let x = self.resnets.iter().fold(x, |h, r| r.forward(h, None));
        self.downsamplers.iter().fold(x, |h, d| d.forward(h))
    }
}

#[derive(Module, Debug)]
pub struct VaeUpBlock {
    pub resnets: Vec<ResnetBlock2D>,
    pub upsamplers: Vec<Upsample2D>,
}

impl VaeUpBlock {
    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let x = self.resnets.iter().fold(x, |h, r| r.forward(h, None));
        self.upsamplers.iter().fold(x, |h, u| u.forward(h))
    }
}

#[derive(Module, Debug)]
pub struct VaeEncoder {
    pub conv_in: Conv2d,
    pub down_blocks: Vec<VaeDownBlock>,
    pub mid_block: VaeMidBlock,
    pub conv_norm_out: GroupNorm,
    pub conv_out: Conv2d,
}

#[derive(Module, Debug)]
pub struct VaeDecoder {
    pub conv_in: Conv2d,
    pub mid_block: VaeMidBlock,
    pub up_blocks: Vec<VaeUpBlock>,
    pub conv_norm_out: GroupNorm,
    pub conv_out: Conv2d,
}

/// The posterior of an encoded image.
pub struct DiagonalGaussian {
    pub mean: Tensor<4>,
    pub logvar: Tensor<4>,
}

impl DiagonalGaussian {
    /// mean + std * noise (diffusers clamps logvar to [-30, 20]).
    pub fn sample(&self, noise: Tensor<4>) -> Tensor<4> {
        self.mean.clone() + self.logvar.clone().clamp(-30.0, 20.0).mul_scalar(0.5).exp() * noise
    }
}

#[derive(Module, Debug)]
pub struct AutoencoderKl {
    pub encoder: VaeEncoder,
    pub decoder: VaeDecoder,
    pub quant_conv: Conv2d,
    pub post_quant_conv: Conv2d,
    #[module(skip)]
    pub scaling_factor: f64,
}

impl AutoencoderKl {
    /// Images in [-1, 1], [N, 3, H, W] -> the posterior over unscaled latents [N, 4, H/8, W/8].
    pub fn encode(&self, x: Tensor<4>) -> DiagonalGaussian {
        let e = &self.encoder;
        let h = e.down_blocks.iter().fold(e.conv_in.forward(x), |h, block| block.forward(h));
        let h = e.mid_block.forward(h);
        let h = e.conv_out.forward(silu(e.conv_norm_out.forward(h)));
        let moments = self.quant_conv.forward(h);
        let [n, c2, hh, ww] = moments.dims();
        let c = c2 / 2;
        let mean = moments.clone().slice([0..n, 0..c, 0..hh, 0..ww]);
        let logvar = moments.slice([0..n, c..c2, 0..hh, 0..ww]);
        DiagonalGaussian { mean, logvar }
    }

    /// Unscaled latents [N, 4, h, w] -> images in about [-1, 1], [N, 3, 8h, 8w].
    pub fn decode(&self, z: Tensor<4>) -> Tensor<4> {
        let d = &self.decoder;
        let h = d.conv_in.forward(self.post_quant_conv.forward(z));
        let h = d.up_blocks.iter().fold(d.mid_block.forward(h), |h, block| block.forward(h));
        d.conv_out.forward(silu(d.conv_norm_out.forward(h)))
    }

    /// Posterior mean of the images, times the scaling factor (the latents pipelines work with).
    pub fn encode_scaled(&self, x: Tensor<4>) -> Tensor<4> {
        self.encode(x).mean.mul_scalar(self.scaling_factor)
    }

    /// Scaled latents -> images mapped to [0, 1] (`(x / 2 + 0.5).clamp(0, 1)`).
    pub fn decode_scaled(&self, z: Tensor<4>) -> Tensor<4> {
        self.decode(z.div_scalar(self.scaling_factor)).mul_scalar(0.5).add_scalar(0.5).clamp(0.0, 1.0)
    }

    /// Decodes a video latent [B, C, F, h, w] (scaled) to [B, 3, F, 8h, 8w] in [0, 1], `chunk` frames at a
    /// time so that memory stays bounded for long clips.
    pub fn decode_video_scaled(&self, z: Tensor<5>, chunk: usize) -> Tensor<5> {
        let [b, c, f, h, w] = z.dims();
        let frames = z.swap_dims(1, 2).reshape([b * f, c, h, w]);
        let chunk = chunk.max(1);
        let mut parts = Vec::new();
        let mut start = 0;
        while start < b * f {
            let end = (start + chunk).min(b * f);
            parts.push(self.decode_scaled(frames.clone().slice([start..end, 0..c, 0..h, 0..w])));
            start = end;
        }
        let images = Tensor::cat(parts, 0);
        let [_, oc, oh, ow] = images.dims();
        images.reshape([b, f, oc, oh, ow]).swap_dims(1, 2)
    }
}
