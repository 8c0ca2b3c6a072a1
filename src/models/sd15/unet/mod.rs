//! diffusers' `UNet2DConditionModel`, configurable, with SD 1.5 as the default configuration.
//!
//! Field names are diffusers' (`conv_in`, `time_embedding.linear_1`, `down_blocks.N.resnets.M`,
//! `down_blocks.N.attentions.M`, `down_blocks.N.downsamplers.0`, `mid_block`, `up_blocks.N.upsamplers.0`,
//! `conv_norm_out`, `conv_out`), so weights load by walking the same keys.

pub mod attention;
pub mod motion;

use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::nn::{GroupNorm, Linear, LinearConfig};
use burn::tensor::activation::silu;
use burn::tensor::{Device, Tensor, TensorData};

use self::attention::Transformer2DModel;
use self::motion::{MotionAdapter, MotionError, MotionModules};
use crate::models::blocks::{Downsample2D, ResnetBlock2D, Upsample2D, conv2d, group_norm, group_norm_frames};
use crate::models::bounds::{
    self, MAX_CHANNELS, MAX_DEPTH, MAX_HEADS, MAX_IO_CHANNELS, MAX_LAYERS_PER_BLOCK, MAX_LEVELS, MAX_PADDING,
    OutOfRange,
};

/// `attention_head_dim` / `num_attention_heads` in diffusers configs: one number or one per block.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
pub enum PerBlock {
    One(usize),
    Each(Vec<usize>),
}

impl PerBlock {
    fn expand(&self, n: usize) -> Vec<usize> {
        match self {
            PerBlock::One(v) => vec![*v; n],
            PerBlock::Each(v) => v.clone(),
        }
    }
}

/// The fields of a diffusers `unet/config.json` the model needs.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct UnetConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    pub down_block_types: Vec<String>,
    pub up_block_types: Vec<String>,
    pub block_out_channels: Vec<usize>,
    pub layers_per_block: usize,
    /// In SD 1.x configs this is, despite its name, the number of heads (a diffusers quirk).
    pub attention_head_dim: PerBlock,
    pub num_attention_heads: Option<PerBlock>,
    pub cross_attention_dim: usize,
    pub norm_num_groups: usize,
    pub norm_eps: f64,
    pub flip_sin_to_cos: bool,
    pub freq_shift: f64,
    pub use_linear_projection: bool,
    pub downsample_padding: usize,
    pub transformer_layers_per_block: usize,
}

impl Default for UnetConfig {
    /// Stable Diffusion 1.5.
    fn default() -> Self {
        UnetConfig {
            in_channels: 4,
            out_channels: 4,
            down_block_types: vec![
                "CrossAttnDownBlock2D".into(),
                "CrossAttnDownBlock2D".into(),
                "CrossAttnDownBlock2D".into(),
                "DownBlock2D".into(),
            ],
            up_block_types: vec![
                "UpBlock2D".into(),
                "CrossAttnUpBlock2D".into(),
                "CrossAttnUpBlock2D".into(),
                "CrossAttnUpBlock2D".into(),
            ],
            block_out_channels: vec![320, 640, 1280, 1280],
            layers_per_block: 2,
            attention_head_dim: PerBlock::One(8),
            num_attention_heads: None,
            cross_attention_dim: 768,
            norm_num_groups: 32,
            norm_eps: 1e-5,
            flip_sin_to_cos: true,
            freq_shift: 0.0,
            use_linear_projection: false,
            downsample_padding: 1,
            transformer_layers_per_block: 1,
        }
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum UnetConfigError {
    #[error("block type '{0}' is not supported")]
    BlockType(String),
    #[error("{what} has {found} entries, expected one per block ({expected})")]
    Lengths { what: &'static str, found: usize, expected: usize },
    #[error("{channels} channels cannot be split into {heads} attention heads")]
    Heads { channels: usize, heads: usize },
    #[error("block_out_channels {channels} is not divisible by norm_num_groups {groups}")]
    Groups { channels: usize, groups: usize },
    #[error(transparent)]
    Bound(#[from] OutOfRange),
}

/// A cross-attention down or up block, or a plain one (no attentions).
#[derive(Module, Debug)]
pub struct DownBlock {
    pub resnets: Vec<ResnetBlock2D>,
    pub attentions: Vec<Transformer2DModel>,
    pub downsamplers: Vec<Downsample2D>,
}

#[derive(Module, Debug)]
pub struct UpBlock {
    pub resnets: Vec<ResnetBlock2D>,
    pub attentions: Vec<Transformer2DModel>,
    pub upsamplers: Vec<Upsample2D>,
}

#[derive(Module, Debug)]
pub struct MidBlock {
    pub resnets: Vec<ResnetBlock2D>,
    pub attentions: Vec<Transformer2DModel>,
}

#[derive(Module, Debug)]
pub struct TimestepEmbedding {
    pub linear_1: Linear,
    pub linear_2: Linear,
}

#[derive(Module, Debug)]
pub struct Unet2DConditionModel {
    pub conv_in: Conv2d,
    pub time_embedding: TimestepEmbedding,
    pub down_blocks: Vec<DownBlock>,
    pub mid_block: MidBlock,
    pub up_blocks: Vec<UpBlock>,
    pub conv_norm_out: GroupNorm,
    pub conv_out: Conv2d,
    #[module(skip)]
    pub flip_sin_to_cos: bool,
    #[module(skip)]
    pub freq_shift: f64,
}

impl UnetConfig {
    /// Every size within the bounds of [`crate::models::bounds`], and the norm groups dividing every level.
    fn check_bounds(&self) -> Result<(), UnetConfigError> {
        bounds::check_each("block_out_channels", &self.block_out_channels, 1, MAX_CHANNELS, MAX_LEVELS)?;
        bounds::check("in_channels", self.in_channels, 1, MAX_IO_CHANNELS)?;
        bounds::check("out_channels", self.out_channels, 1, MAX_IO_CHANNELS)?;
        bounds::check("layers_per_block", self.layers_per_block, 1, MAX_LAYERS_PER_BLOCK)?;
        bounds::check("transformer_layers_per_block", self.transformer_layers_per_block, 1, MAX_DEPTH)?;
        bounds::check("cross_attention_dim", self.cross_attention_dim, 1, MAX_CHANNELS)?;
        bounds::check("downsample_padding", self.downsample_padding, 0, MAX_PADDING)?;
        let g = bounds::check("norm_num_groups", self.norm_num_groups, 1, MAX_CHANNELS)?;
        if let Some(&c) = self.block_out_channels.iter().find(|&&c| c % g != 0) {
            return Err(UnetConfigError::Groups { channels: c, groups: g });
        }
        let heads = self.num_attention_heads.as_ref().unwrap_or(&self.attention_head_dim);
        match heads {
            PerBlock::One(h) => {
                bounds::check("attention heads", *h, 1, MAX_HEADS)?;
            }
            PerBlock::Each(list) => bounds::check_each("attention heads", list, 1, MAX_HEADS, MAX_LEVELS)?,
        }
        Ok(())
    }

    pub fn init(&self, device: &Device) -> Result<Unet2DConditionModel, UnetConfigError> {
        self.check_bounds()?;
        let ch = &self.block_out_channels;
        let n = ch.len();
        for (what, found) in
            [("down_block_types", self.down_block_types.len()), ("up_block_types", self.up_block_types.len())]
        {
            if found != n {
                return Err(UnetConfigError::Lengths { what, found, expected: n });
            }
        }
        let heads = self.num_attention_heads.as_ref().unwrap_or(&self.attention_head_dim).expand(n);
        if heads.len() != n {
            return Err(UnetConfigError::Lengths { what: "attention heads", found: heads.len(), expected: n });
        }
        let g = self.norm_num_groups;
        let eps = self.norm_eps;
        let temb = ch[0] * 4;
        let transformer = |c: usize, h: usize| -> Result<Transformer2DModel, UnetConfigError> {
            if h == 0 || !c.is_multiple_of(h) {
                return Err(UnetConfigError::Heads { channels: c, heads: h });
            }
            Ok(Transformer2DModel::new(
                c,
                h,
                self.cross_attention_dim,
                self.transformer_layers_per_block,
                g,
                self.use_linear_projection,
                device,
            ))
        };

        let mut down_blocks = Vec::with_capacity(n);
        let mut output = ch[0];
        for (i, kind) in self.down_block_types.iter().enumerate() {
            let input = output;
            output = ch[i];
            let cross = match kind.as_str() {
                "CrossAttnDownBlock2D" => true,
                "DownBlock2D" => false,
                other => return Err(UnetConfigError::BlockType(other.to_string())),
            };
            let mut resnets = Vec::new();
            let mut attentions = Vec::new();
            for j in 0..self.layers_per_block {
                resnets.push(ResnetBlock2D::new(
                    if j == 0 { input } else { output },
                    output,
                    Some(temb),
                    g,
                    eps,
                    device,
                ));
                if cross {
                    attentions.push(transformer(output, heads[i])?);
                }
            }
            let downsamplers =
                if i + 1 < n { vec![Downsample2D::new(output, self.downsample_padding, device)] } else { Vec::new() };
            down_blocks.push(DownBlock { resnets, attentions, downsamplers });
        }

        let last = ch[n - 1];
        let mid_block = MidBlock {
            resnets: vec![
                ResnetBlock2D::new(last, last, Some(temb), g, eps, device),
                ResnetBlock2D::new(last, last, Some(temb), g, eps, device),
            ],
            attentions: vec![transformer(last, heads[n - 1])?],
        };

        let rev: Vec<usize> = ch.iter().rev().copied().collect();
        let rev_heads: Vec<usize> = heads.iter().rev().copied().collect();
        let mut up_blocks = Vec::with_capacity(n);
        let mut output = rev[0];
        for (i, kind) in self.up_block_types.iter().enumerate() {
            let prev_output = output;
            output = rev[i];
            let input = rev[(i + 1).min(n - 1)];
            let cross = match kind.as_str() {
                "CrossAttnUpBlock2D" => true,
                "UpBlock2D" => false,
                other => return Err(UnetConfigError::BlockType(other.to_string())),
            };
            let layers = self.layers_per_block + 1;
            let mut resnets = Vec::new();
            let mut attentions = Vec::new();
            for j in 0..layers {
                let skip = if j == layers - 1 { input } else { output };
                let res_in = if j == 0 { prev_output } else { output };
                resnets.push(ResnetBlock2D::new(res_in + skip, output, Some(temb), g, eps, device));
                if cross {
                    attentions.push(transformer(output, rev_heads[i])?);
                }
            }
            let upsamplers = if i + 1 < n { vec![Upsample2D::new(output, device)] } else { Vec::new() };
            up_blocks.push(UpBlock { resnets, attentions, upsamplers });
        }

        Ok(Unet2DConditionModel {
            conv_in: conv2d(self.in_channels, ch[0], 3, 1, 1, device),
            time_embedding: TimestepEmbedding {
                linear_1: LinearConfig::new(ch[0], temb).init(device),
                linear_2: LinearConfig::new(temb, temb).init(device),
            },
            down_blocks,
            mid_block,
            up_blocks,
            conv_norm_out: group_norm(g, ch[0], eps, device),
            conv_out: conv2d(ch[0], self.out_channels, 3, 1, 1, device),
            flip_sin_to_cos: self.flip_sin_to_cos,
            freq_shift: self.freq_shift,
        })
    }
}

/// diffusers' `get_timestep_embedding`: sinusoidal features of `timesteps` (computed in f32 like the
/// reference), [N] -> [N, dim].
pub fn timestep_embedding(
    timesteps: &[f64],
    dim: usize,
    flip_sin_to_cos: bool,
    shift: f64,
    device: &Device,
) -> Tensor<2> {
    let half = dim / 2;
    let freqs: Vec<f32> =
        (0..half).map(|i| (-(10000f32.ln()) * i as f32 / (half as f32 - shift as f32)).exp()).collect();
    let mut data = Vec::with_capacity(timesteps.len() * dim);
    for &t in timesteps {
        let args: Vec<f32> = freqs.iter().map(|f| t as f32 * f).collect();
        let (sin, cos): (Vec<f32>, Vec<f32>) = args.iter().map(|a| (a.sin(), a.cos())).unzip();
        if flip_sin_to_cos {
            data.extend(cos);
            data.extend(sin);
        } else {
            data.extend(sin);
            data.extend(cos);
        }
        if dim % 2 == 1 {
            data.push(0.0);
        }
    }
    Tensor::from_data(TensorData::new(data, [timesteps.len(), dim]), device)
}

impl Unet2DConditionModel {
    /// The time embedding for one timestep per sample, [N, 4 * C0].
    pub fn time_embed(&self, timesteps: &[f64], device: &Device) -> Tensor<2> {
        let dim = self.time_embedding.linear_1.weight.dims()[0];
        let t = timestep_embedding(timesteps, dim, self.flip_sin_to_cos, self.freq_shift, device);
        self.time_embedding.linear_2.forward(silu(self.time_embedding.linear_1.forward(t)))
    }

    /// Noise prediction for `sample` [N, C, H, W] at `timesteps` (one per sample), conditioned on
    /// `context` [N, S, cross_attention_dim].
    pub fn forward(&self, sample: Tensor<4>, timesteps: &[f64], context: Tensor<3>) -> Tensor<4> {
        let temb = self.time_embed(timesteps, &sample.device());
        self.forward_inner(sample, temb, context, None, None)
    }

    /// The walk with another family's temporal layers woven in (`sample` [N, C, H, W] holds clips of frames,
    /// clip-major; `temb` and `context` per frame).
    pub fn forward_with_layers(
        &self,
        sample: Tensor<4>,
        temb: Tensor<2>,
        context: Tensor<3>,
        layers: &dyn TemporalLayers,
    ) -> Tensor<4> {
        self.forward_inner(sample, temb, context, None, Some(layers))
    }

    /// The UNet walk. With `video`, N holds clips of `video.frames` frames (clip-major): motion modules run
    /// after each resnet/attention pair of the down and up levels and after the mid block's attention.
    fn forward_inner(
        &self,
        sample: Tensor<4>,
        temb: Tensor<2>,
        context: Tensor<3>,
        video: Option<&Frames<'_>>,
        layers: Option<&dyn TemporalLayers>,
    ) -> Tensor<4> {
        let across = video.and_then(|v| v.spatial_across());
        let motion = |h: Tensor<4>, level: Option<&MotionModules>, j: usize| match (video, level) {
            (Some(v), Some(level)) => match level.motion_modules.get(j) {
                Some(module) => module.forward(h, v.frames, v.adapter.norms.temporal),
                None => h,
            },
            _ => h,
        };
        let adapter = video.map(|v| v.adapter);
        let after_resnet = |site: Site, h: Tensor<4>| match layers {
            Some(l) => l.after_resnet(site, h),
            None => h,
        };
        let after_attention = |site: Site, h: Tensor<4>| match layers {
            Some(l) => l.after_attention(site, h),
            None => h,
        };
        let mut h = crate::models::blocks::conv_forward(&self.conv_in, sample);
        if let Some(l) = layers {
            h = l.after_conv_in(h);
        }
        let mut skips = vec![h.clone()];
        for (i, block) in self.down_blocks.iter().enumerate() {
            let level = adapter.and_then(|a| a.down_blocks.get(i));
            for (j, resnet) in block.resnets.iter().enumerate() {
                h = after_resnet(Site::Down(i, j), resnet.forward_frames(h, Some(temb.clone()), across));
                if let Some(attn) = block.attentions.get(j) {
                    h = after_attention(Site::Down(i, j), attn.forward(h, context.clone()));
                }
                h = motion(h, level, j);
                skips.push(h.clone());
            }
            for down in &block.downsamplers {
                h = down.forward(h);
                skips.push(h.clone());
            }
        }
        let mid = &self.mid_block;
        let level = adapter.and_then(|a| a.mid_block.as_ref());
        h = after_resnet(Site::Mid(0), mid.resnets[0].forward_frames(h, Some(temb.clone()), across));
        for (j, (attn, resnet)) in mid.attentions.iter().zip(mid.resnets.iter().skip(1)).enumerate() {
            h = after_attention(Site::Mid(j), attn.forward(h, context.clone()));
            h = motion(h, level, j);
            h = after_resnet(Site::Mid(j + 1), resnet.forward_frames(h, Some(temb.clone()), across));
        }
        for (i, block) in self.up_blocks.iter().enumerate() {
            let level = adapter.and_then(|a| a.up_blocks.get(i));
            for (j, resnet) in block.resnets.iter().enumerate() {
                if let Some(skip) = skips.pop() {
                    h = Tensor::cat(vec![h, skip], 1);
                }
                h = after_resnet(Site::Up(i, j), resnet.forward_frames(h, Some(temb.clone()), across));
                if let Some(attn) = block.attentions.get(j) {
                    h = after_attention(Site::Up(i, j), attn.forward(h, context.clone()));
                }
                h = motion(h, level, j);
            }
            for up in &block.upsamplers {
                h = up.forward(h);
            }
        }
        let h = group_norm_frames(&self.conv_norm_out, h, across);
        crate::models::blocks::conv_forward(&self.conv_out, silu(h))
    }

    /// Output channels of each down level (what motion modules must match).
    pub fn level_channels(&self) -> Vec<usize> {
        self.down_blocks.iter().filter_map(|b| b.resnets.first().map(|r| r.conv1.weight.dims()[0])).collect()
    }

    /// Latent channels the UNet takes (4 for SD 1.x).
    pub fn in_channels(&self) -> usize {
        self.conv_in.weight.dims()[1]
    }

    /// The width of the text states the cross-attentions read (768 for SD 1.x), if the UNet has any.
    pub fn cross_attention_dim(&self) -> Option<usize> {
        let mid = self.mid_block.attentions.iter();
        let down = self.down_blocks.iter().flat_map(|b| b.attentions.iter());
        let first = mid.chain(down).flat_map(|a| a.transformer_blocks.first()).next()?;
        Some(first.attn2.to_k.weight.dims()[0])
    }
}

/// Where in the UNet walk a temporal layer runs: (level, layer) of the down and up blocks, or the mid block's
/// layer (its resnets 0, 1, ... and attentions 0, ...).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Site {
    Down(usize, usize),
    Mid(usize),
    Up(usize, usize),
}

/// Temporal layers of a video family woven into the 2-D UNet's walk (ModelScope T2V: a temporal transformer
/// after `conv_in`, a temporal convolution after every resnet, a temporal transformer after every spatial
/// transformer). Each takes and returns the frames [clips * frames, C, H, W].
pub trait TemporalLayers {
    fn after_conv_in(&self, h: Tensor<4>) -> Tensor<4>;
    fn after_resnet(&self, site: Site, h: Tensor<4>) -> Tensor<4>;
    fn after_attention(&self, site: Site, h: Tensor<4>) -> Tensor<4>;
}

/// Clips of `frames` frames with their motion modules, for the UNet walk.
struct Frames<'a> {
    frames: usize,
    adapter: &'a MotionAdapter,
}

impl Frames<'_> {
    fn spatial_across(&self) -> Option<usize> {
        self.adapter.norms.spatial.frames(self.frames)
    }
}

/// Whether a video forward runs the motion modules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Motion {
    /// The video UNet: motion modules attend across the frames of each clip.
    On,
    /// Plain SD: every frame is an independent image (I4VGen's candidate images).
    Bypass,
}

/// SD UNet + AnimateDiff motion modules: a video UNet over (B, C, F, H, W).
#[derive(Module, Debug)]
pub struct VideoUnet {
    pub unet: Unet2DConditionModel,
    pub motion: Option<MotionAdapter>,
}

impl VideoUnet {
    /// Pairs a UNet with motion modules, checking that they fit (channels and module counts per level).
    pub fn new(unet: Unet2DConditionModel, motion: Option<MotionAdapter>) -> Result<VideoUnet, MotionError> {
        if let Some(adapter) = &motion {
            let unet_channels = unet.level_channels();
            let motion_channels: Vec<usize> = adapter
                .down_blocks
                .iter()
                .filter_map(|l| l.motion_modules.first().map(|m| m.proj_in.weight.dims()[0]))
                .collect();
            if unet_channels != motion_channels {
                return Err(MotionError::Mismatch(format!(
                    "UNet levels have {unet_channels:?} channels, the motion module {motion_channels:?}"
                )));
            }
            let counts = |levels: &[MotionModules]| levels.iter().map(|l| l.motion_modules.len()).collect::<Vec<_>>();
            let expected_down: Vec<usize> = unet.down_blocks.iter().map(|b| b.resnets.len()).collect();
            let expected_up: Vec<usize> = unet.up_blocks.iter().map(|b| b.resnets.len()).collect();
            if counts(&adapter.down_blocks) != expected_down || counts(&adapter.up_blocks) != expected_up {
                return Err(MotionError::Mismatch(format!(
                    "modules per level: down {:?} up {:?}, the UNet has {expected_down:?} and {expected_up:?} resnets",
                    counts(&adapter.down_blocks),
                    counts(&adapter.up_blocks)
                )));
            }
        }
        Ok(VideoUnet { unet, motion })
    }

    /// The largest clip length the motion modules accept (`None` without motion modules).
    pub fn max_frames(&self) -> Option<usize> {
        self.motion.as_ref().map(|m| m.max_seq_length)
    }

    /// Noise prediction for `sample` [B, C, F, H, W] at `timesteps` (one per clip), conditioned on `context`
    /// [B, S, D] (shared by the frames of a clip). Without motion modules, or with [`Motion::Bypass`], every
    /// frame goes through the 2-D UNet on its own.
    pub fn forward(
        &self,
        sample: Tensor<5>,
        timesteps: &[f64],
        context: Tensor<3>,
        motion: Motion,
    ) -> Result<Tensor<5>, MotionError> {
        let [b, c, f, h, w] = sample.dims();
        if timesteps.len() != b {
            return Err(MotionError::Mismatch(format!("{} timesteps for a batch of {b} clips", timesteps.len())));
        }
        let adapter = match (motion, &self.motion) {
            (Motion::On, Some(adapter)) => {
                adapter.check_frames(f)?;
                Some(adapter)
            }
            _ => None,
        };
        let device = sample.device();
        let frames_t: Vec<f64> = timesteps.iter().flat_map(|&t| std::iter::repeat_n(t, f)).collect();
        let temb = self.unet.time_embed(&frames_t, &device);
        let [_, s, d] = context.dims();
        let context = context.unsqueeze_dim::<4>(1).repeat_dim(1, f).reshape([b * f, s, d]);
        let x = sample.permute([0, 2, 1, 3, 4]).reshape([b * f, c, h, w]);
        let video = adapter.map(|adapter| Frames { frames: f, adapter });
        let out = self.unet.forward_inner(x, temb, context, video.as_ref(), None);
        let [_, oc, _, _] = out.dims();
        Ok(out.reshape([b, f, oc, h, w]).permute([0, 2, 1, 3, 4]))
    }
}
