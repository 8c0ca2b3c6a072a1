//! diffusers' `AutoencoderKL` (the SD kl-f8 VAE): encoder to a diagonal Gaussian, decoder back to pixels.
//! Latents are scaled by `scaling_factor` (0.18215 for SD 1.x) by the caller's convention: `encode` and
//! `decode` work on unscaled latents, `encode_scaled`/`decode_scaled` include the factor.
//!
//! Large latents can be decoded in overlapping tiles ([`TileConfig`], [`AutoencoderKl::decode_tiled`]) so
//! that the decoder's memory stays bounded by the tile size, as diffusers' `AutoencoderKL.tiled_decode`.

use burn::module::Module;
use burn::nn::GroupNorm;
use burn::nn::conv::Conv2d;
use burn::tensor::activation::silu;
use burn::tensor::{Device, Tensor, TensorData};

use super::blocks::{Downsample2D, ResnetBlock2D, SpatialSelfAttention, Upsample2D, conv_forward, conv2d, group_norm};
use super::bounds::{
    self, MAX_CHANNELS, MAX_IMAGE_SIZE, MAX_IO_CHANNELS, MAX_LAYERS_PER_BLOCK, MAX_LEVELS, OutOfRange,
};

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
    /// The image size the VAE was configured for; diffusers derives its default tile size from it.
    pub sample_size: usize,
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
            sample_size: 512,
        }
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum VaeConfigError {
    #[error("block_out_channels is empty")]
    NoBlocks,
    #[error("channel count {channels} is not divisible by norm_num_groups {groups}")]
    Groups { channels: usize, groups: usize },
    #[error(transparent)]
    Bound(#[from] OutOfRange),
}

/// The VAE's GroupNorm epsilon (diffusers hard-codes 1e-6 in the encoder and decoder).
const EPS: f64 = 1e-6;

impl VaeConfig {
    fn check(&self) -> Result<(), VaeConfigError> {
        if self.block_out_channels.is_empty() {
            return Err(VaeConfigError::NoBlocks);
        }
        bounds::check_each("block_out_channels", &self.block_out_channels, 1, MAX_CHANNELS, MAX_LEVELS)?;
        bounds::check("in_channels", self.in_channels, 1, MAX_IO_CHANNELS)?;
        bounds::check("out_channels", self.out_channels, 1, MAX_IO_CHANNELS)?;
        bounds::check("latent_channels", self.latent_channels, 1, MAX_IO_CHANNELS)?;
        bounds::check("layers_per_block", self.layers_per_block, 1, MAX_LAYERS_PER_BLOCK)?;
        bounds::check("norm_num_groups", self.norm_num_groups, 1, MAX_CHANNELS)?;
        bounds::check("sample_size", self.sample_size, 1, MAX_IMAGE_SIZE)?;
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
            resnets: vec![
                ResnetBlock2D::new(last, last, None, g, EPS, device),
                ResnetBlock2D::new(last, last, None, g, EPS, device),
            ],
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
        let default_tiles = TileConfig::for_config(self).ok();
        Ok(AutoencoderKl {
            encoder,
            decoder,
            quant_conv: conv2d(2 * lc, 2 * lc, 1, 1, 0, device),
            post_quant_conv: conv2d(lc, lc, 1, 1, 0, device),
            scaling_factor: self.scaling_factor,
            default_tiles,
        })
    }
}

/// How [`AutoencoderKl::decode_tiled`] cuts a latent into overlapping tiles: diffusers'
/// `tile_latent_min_size`, `tile_sample_min_size` and `tile_overlap_factor`.
///
/// Tiles of `latent_size` x `latent_size` latent pixels start every [`latent_stride`](Self::latent_stride)
/// pixels; each decoded tile (`sample_size` pixels for a full tile) is blended linearly over
/// [`blend_extent`](Self::blend_extent) rows/columns into the tile above and the tile to its left, then
/// cropped to [`row_limit`](Self::row_limit) rows and columns.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TileConfig {
    latent_size: usize,
    sample_size: usize,
    overlap_factor: f64,
}

/// Tile settings that cannot tile.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TileConfigError {
    #[error("tile sizes must be positive (latent {latent}, sample {sample})")]
    Empty { latent: usize, sample: usize },
    #[error("the tile overlap factor {0} is outside [0, 1)")]
    Overlap(f64),
    #[error("latent tiles of {latent} pixels overlapping by a factor {overlap} leave no stride between tiles")]
    NoStride { latent: usize, overlap: f64 },
}

impl TileConfig {
    /// Tiles of `latent_size` latent pixels that decode to `sample_size` pixels, overlapping by
    /// `overlap_factor` (diffusers uses 0.25).
    pub fn new(latent_size: usize, sample_size: usize, overlap_factor: f64) -> Result<Self, TileConfigError> {
        if latent_size == 0 || sample_size == 0 {
            return Err(TileConfigError::Empty { latent: latent_size, sample: sample_size });
        }
        if !(0.0..1.0).contains(&overlap_factor) {
            return Err(TileConfigError::Overlap(overlap_factor));
        }
        let tiles = TileConfig { latent_size, sample_size, overlap_factor };
        if tiles.latent_stride() == 0 {
            return Err(TileConfigError::NoStride { latent: latent_size, overlap: overlap_factor });
        }
        Ok(tiles)
    }

    /// diffusers' defaults for a VAE configuration: tiles of `sample_size` pixels,
    /// `sample_size / 2^(levels - 1)` latent pixels, overlap factor 0.25 (SD 1.x: 512 and 64).
    pub fn for_config(config: &VaeConfig) -> Result<Self, TileConfigError> {
        let levels = config.block_out_channels.len().saturating_sub(1);
        let latent = u32::try_from(levels)
            .ok()
            .and_then(|l| 1usize.checked_shl(l))
            .map_or(0, |factor| config.sample_size / factor);
        TileConfig::new(latent, config.sample_size, 0.25)
    }

    /// Side of a latent tile (`tile_latent_min_size`).
    pub fn latent_size(&self) -> usize {
        self.latent_size
    }

    /// Side of a decoded full tile (`tile_sample_min_size`).
    pub fn sample_size(&self) -> usize {
        self.sample_size
    }

    /// The fraction of a tile shared with its neighbour (`tile_overlap_factor`).
    pub fn overlap_factor(&self) -> f64 {
        self.overlap_factor
    }

    /// Latent pixels between the origins of neighbouring tiles: `floor(latent_size * (1 - overlap))`.
    pub fn latent_stride(&self) -> usize {
        (self.latent_size as f64 * (1.0 - self.overlap_factor)) as usize
    }

    /// Decoded rows (columns) blended with the tile above (to the left): `floor(sample_size * overlap)`.
    pub fn blend_extent(&self) -> usize {
        (self.sample_size as f64 * self.overlap_factor) as usize
    }

    /// Decoded rows and columns each tile keeps after blending: `sample_size - blend_extent`.
    pub fn row_limit(&self) -> usize {
        self.sample_size - self.blend_extent()
    }

    /// Whether a latent of `height` x `width` is larger than one tile (diffusers tiles only then).
    pub fn needs_tiling(&self, height: usize, width: usize) -> bool {
        height > self.latent_size || width > self.latent_size
    }
}

/// The linear ramps of the tile blend, `(1 - k/e, k/e)` for `k < e`, shaped to broadcast along one
/// spatial axis; made once per extent and axis and kept on the device.
struct BlendRamps {
    device: Device,
    made: Vec<((usize, usize), (Tensor<4>, Tensor<4>))>,
}

impl BlendRamps {
    fn new(device: Device) -> Self {
        BlendRamps { device, made: Vec::new() }
    }

    fn get(&mut self, dim: usize, extent: usize) -> (Tensor<4>, Tensor<4>) {
        if let Some((_, ramps)) = self.made.iter().find(|(key, _)| *key == (dim, extent)) {
            return ramps.clone();
        }
        let shape = if dim == 2 { [1, 1, extent, 1] } else { [1, 1, 1, extent] };
        let ramp = |f: &dyn Fn(f64) -> f64| -> Tensor<4> {
            let values: Vec<f32> = (0..extent).map(|k| f(k as f64 / extent as f64) as f32).collect();
            Tensor::from_data(TensorData::new(values, shape), &self.device)
        };
        let ramps = (ramp(&|x| 1.0 - x), ramp(&|x| x));
        self.made.push(((dim, extent), ramps.clone()));
        ramps
    }

    /// `tile` with its first rows (dim 2) or columns (dim 3) mixed linearly with the last ones of
    /// `previous`: from all `previous` at the edge to all `tile` at `extent`.
    fn blend(&mut self, previous: &Tensor<4>, tile: Tensor<4>, dim: usize, extent: usize) -> Tensor<4> {
        let (prev_len, tile_len) = (previous.dims()[dim], tile.dims()[dim]);
        let extent = extent.min(prev_len).min(tile_len);
        if extent == 0 {
            return tile;
        }
        let (fade_out, fade_in) = self.get(dim, extent);
        let from_previous = previous.clone().narrow(dim, prev_len - extent, extent);
        let shape = from_previous.shape();
        let from_tile = tile.clone().narrow(dim, 0, extent);
        let mixed = from_previous * fade_out.expand(shape.clone()) + from_tile * fade_in.expand(shape);
        if extent == tile_len {
            mixed
        } else {
            Tensor::cat(vec![mixed, tile.narrow(dim, extent, tile_len - extent)], dim)
        }
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
            if i > 0
                && let Some(attn) = self.attentions.get(i - 1)
            {
                x = attn.forward(x);
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
    /// diffusers' tile settings for this configuration ([`TileConfig::for_config`]); `None` when the
    /// configured `sample_size` is too small to give a tile.
    #[module(skip)]
    pub default_tiles: Option<TileConfig>,
}

impl AutoencoderKl {
    /// How many pixels one latent spans per side (8 for SD's four levels): 2 to the number of downsamplers.
    pub fn downsampling(&self) -> usize {
        1 << self.encoder.down_blocks.iter().map(|b| b.downsamplers.len()).sum::<usize>()
    }

    /// Images in [-1, 1], [N, 3, H, W] -> the posterior over unscaled latents [N, 4, H/8, W/8].
    pub fn encode(&self, x: Tensor<4>) -> DiagonalGaussian {
        let e = &self.encoder;
        let h = e.down_blocks.iter().fold(conv_forward(&e.conv_in, x), |h, block| block.forward(h));
        let h = e.mid_block.forward(h);
        let h = conv_forward(&e.conv_out, silu(e.conv_norm_out.forward(h)));
        let moments = conv_forward(&self.quant_conv, h);
        let [n, c2, hh, ww] = moments.dims();
        let c = c2 / 2;
        let mean = moments.clone().slice([0..n, 0..c, 0..hh, 0..ww]);
        let logvar = moments.slice([0..n, c..c2, 0..hh, 0..ww]);
        DiagonalGaussian { mean, logvar }
    }

    /// Unscaled latents [N, 4, h, w] -> images in about [-1, 1], [N, 3, 8h, 8w].
    pub fn decode(&self, z: Tensor<4>) -> Tensor<4> {
        let d = &self.decoder;
        let h = conv_forward(&d.conv_in, conv_forward(&self.post_quant_conv, z));
        let h = d.up_blocks.iter().fold(d.mid_block.forward(h), |h, block| block.forward(h));
        conv_forward(&d.conv_out, silu(d.conv_norm_out.forward(h)))
    }

    /// Posterior mean of the images, times the scaling factor (the latents pipelines work with).
    pub fn encode_scaled(&self, x: Tensor<4>) -> Tensor<4> {
        self.encode(x).mean.mul_scalar(self.scaling_factor)
    }

    /// Scaled latents -> images mapped to [0, 1] (`(x / 2 + 0.5).clamp(0, 1)`).
    pub fn decode_scaled(&self, z: Tensor<4>) -> Tensor<4> {
        self.decode_scaled_with(z, None)
    }

    /// [`decode_with`](Self::decode_with) on scaled latents, mapped to [0, 1] like
    /// [`decode_scaled`](Self::decode_scaled).
    pub fn decode_scaled_with(&self, z: Tensor<4>, tiles: Option<&TileConfig>) -> Tensor<4> {
        self.decode_with(z.div_scalar(self.scaling_factor), tiles).mul_scalar(0.5).add_scalar(0.5).clamp(0.0, 1.0)
    }

    /// Unscaled latents -> images, in tiles when `tiles` is given and the latent is larger than one tile
    /// (diffusers' `decode` with tiling enabled), in one piece otherwise.
    pub fn decode_with(&self, z: Tensor<4>, tiles: Option<&TileConfig>) -> Tensor<4> {
        let [_, _, h, w] = z.dims();
        match tiles {
            Some(tiles) if tiles.needs_tiling(h, w) => self.decode_tiled(z, tiles),
            _ => self.decode(z),
        }
    }

    /// Unscaled latents [N, 4, h, w] decoded tile by tile (diffusers' `AutoencoderKL.tiled_decode`): the
    /// decoder only ever sees one tile, so its memory is bounded by the tile size. Tiles start every
    /// `tiles.latent_stride()` latent pixels in both directions (edge tiles are smaller); each decoded
    /// tile is blended linearly into the already blended tile above it and then into the one to its
    /// left, and cropped to `tiles.row_limit()` pixels. The result differs from [`decode`](Self::decode)
    /// where the decoder looks beyond a tile (its attention and group norms see the whole image).
    pub fn decode_tiled(&self, z: Tensor<4>, tiles: &TileConfig) -> Tensor<4> {
        let [n, c, h, w] = z.dims();
        if h == 0 || w == 0 {
            return self.decode(z);
        }
        let (size, stride) = (tiles.latent_size(), tiles.latent_stride().max(1));
        let (extent, limit) = (tiles.blend_extent(), tiles.row_limit());
        let mut ramps = BlendRamps::new(z.device());
        let mut above: Vec<Tensor<4>> = Vec::new();
        let mut rows = Vec::new();
        for top in (0..h).step_by(stride) {
            let mut row: Vec<Tensor<4>> = Vec::new();
            for (j, left) in (0..w).step_by(stride).enumerate() {
                let latent = z.clone().slice([0..n, 0..c, top..(top + size).min(h), left..(left + size).min(w)]);
                let mut tile = self.decode(latent);
                if let Some(prev) = above.get(j) {
                    tile = ramps.blend(prev, tile, 2, extent);
                }
                if let Some(prev) = row.last() {
                    tile = ramps.blend(prev, tile, 3, extent);
                }
                row.push(tile);
            }
            let cropped = row
                .iter()
                .map(|tile| {
                    let [tn, tc, th, tw] = tile.dims();
                    tile.clone().slice([0..tn, 0..tc, 0..limit.min(th), 0..limit.min(tw)])
                })
                .collect();
            rows.push(Tensor::cat(cropped, 3));
            above = row;
        }
        Tensor::cat(rows, 2)
    }

    /// Decodes a video latent [B, C, F, h, w] (scaled) to [B, 3, F, 8h, 8w] in [0, 1], `chunk` frames at a
    /// time so that memory stays bounded for long clips.
    pub fn decode_video_scaled(&self, z: Tensor<5>, chunk: usize) -> Tensor<5> {
        self.decode_video_scaled_with(z, chunk, None)
    }

    /// [`decode_video_scaled`](Self::decode_video_scaled), each chunk of frames decoded with
    /// [`decode_scaled_with`](Self::decode_scaled_with): in tiles when `tiles` is given and a frame is
    /// larger than one tile, so that memory stays bounded for large frames too.
    pub fn decode_video_scaled_with(&self, z: Tensor<5>, chunk: usize, tiles: Option<&TileConfig>) -> Tensor<5> {
        let [b, c, f, h, w] = z.dims();
        let frames = z.swap_dims(1, 2).reshape([b * f, c, h, w]);
        let chunk = chunk.max(1);
        let mut parts = Vec::new();
        let mut start = 0;
        while start < b * f {
            let end = (start + chunk).min(b * f);
            parts.push(self.decode_scaled_with(frames.clone().slice([start..end, 0..c, 0..h, 0..w]), tiles));
            start = end;
        }
        let images = Tensor::cat(parts, 0);
        let [_, oc, oh, ow] = images.dims();
        images.reshape([b, f, oc, oh, ow]).swap_dims(1, 2)
    }
}
