//! AnimateDiff motion modules: temporal transformers inserted into the SD UNet, attending over frames.
//!
//! Field names are diffusers' `MotionAdapter` (`down_blocks.N.motion_modules.M`, `mid_block.motion_modules.0`,
//! `up_blocks.N.motion_modules.M`; in each module `norm`, `proj_in`, `transformer_blocks.0.{norm1, attn1,
//! norm2, attn2, norm3, ff}`, `proj_out`). The original AnimateDiff checkpoints (`mm_sd_v15.ckpt`,
//! `mm_sd_v15_v2.ckpt`, `v3_sd15_mm.ckpt`) name the same tensors differently; [`ORIGINAL_RENAME`] maps them.
//!
//! Two details differ between the original implementation (what AnimateDiff and I4VGen run) and diffusers
//! 0.27 (`UNetMotionModel`), both about which values a GroupNorm takes its statistics over; see
//! [`VideoNorms`]. Both are supported; the default is the original.

use burn::module::Module;
use burn::nn::{GroupNorm, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::{Device, Tensor, TensorData};

use super::attention::{Attention, FeedForward};
use crate::models::blocks::{group_norm, group_norm_frames};
use crate::models::bounds::{
    self, MAX_CHANNELS, MAX_HEADS, MAX_LAYERS_PER_BLOCK, MAX_LEVELS, MAX_POSITIONS, OutOfRange,
};

/// Over which values a GroupNorm of the video UNet takes its statistics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FrameNorm {
    /// Each frame on its own (frames folded into the batch).
    PerFrame,
    /// All frames of a clip together (the norm sees a (C, F, H, W) volume).
    AcrossFrames,
}

impl FrameNorm {
    /// The `across_frames` argument of the group norms for clips of `frames` frames.
    pub fn frames(self, frames: usize) -> Option<usize> {
        match self {
            FrameNorm::PerFrame => None,
            FrameNorm::AcrossFrames => Some(frames),
        }
    }
}

/// The GroupNorm semantics of a video UNet.
///
/// - Original AnimateDiff: the motion module's norm runs per frame (it rearranges to `(b f) c h w` first).
///   The UNet's ResNet norms and `conv_norm_out` run per frame with `use_inflated_groupnorm` (v2, v3
///   configs) and across frames without it (v1 config: a plain GroupNorm on the 5-D tensor).
/// - diffusers 0.27 `UNetMotionModel`: ResNets are 2-D (per frame); `TransformerTemporalModel` applies its
///   norm to the (B, C, F, H, W) tensor, i.e. across frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VideoNorms {
    /// The motion modules' GroupNorm.
    pub temporal: FrameNorm,
    /// The UNet's ResNet GroupNorms and `conv_norm_out`.
    pub spatial: FrameNorm,
}

impl VideoNorms {
    /// What diffusers' `UNetMotionModel` computes (for every motion-module version).
    pub const DIFFUSERS: VideoNorms = VideoNorms { temporal: FrameNorm::AcrossFrames, spatial: FrameNorm::PerFrame };

    /// What the original AnimateDiff code computes with the inference config of `version`.
    pub fn original(version: MotionVersion) -> VideoNorms {
        let spatial = match version {
            MotionVersion::V1 => FrameNorm::AcrossFrames,
            MotionVersion::V2 | MotionVersion::V3 => FrameNorm::PerFrame,
        };
        VideoNorms { temporal: FrameNorm::PerFrame, spatial }
    }
}

/// The released SD 1.5 motion-module generations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MotionVersion {
    /// `mm_sd_v14.ckpt` / `mm_sd_v15.ckpt`: no mid-block module, 24 positions.
    V1,
    /// `mm_sd_v15_v2.ckpt`: a mid-block module, 32 positions.
    V2,
    /// `v3_sd15_mm.ckpt`: no mid-block module, 32 positions.
    V3,
}

impl MotionVersion {
    /// The generation a module's shape belongs to (a mid block means v2; otherwise 24 positions mean v1).
    pub fn detect(mid_block: bool, max_seq_length: usize) -> MotionVersion {
        match (mid_block, max_seq_length) {
            (true, _) => MotionVersion::V2,
            (false, 24) => MotionVersion::V1,
            _ => MotionVersion::V3,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            MotionVersion::V1 => "v1 (mm_sd_v15)",
            MotionVersion::V2 => "v2 (mm_sd_v15_v2)",
            MotionVersion::V3 => "v3 (v3_sd15_mm)",
        }
    }

    /// The full-size SD 1.5 configuration of this generation.
    pub fn config(self) -> MotionAdapterConfig {
        let (mid, len) = match self {
            MotionVersion::V1 => (false, 24),
            MotionVersion::V2 => (true, 32),
            MotionVersion::V3 => (false, 32),
        };
        MotionAdapterConfig { use_motion_mid_block: mid, motion_max_seq_length: len, ..MotionAdapterConfig::default() }
    }
}

/// The fields of a diffusers `MotionAdapter` `config.json`.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct MotionAdapterConfig {
    pub block_out_channels: Vec<usize>,
    pub motion_layers_per_block: usize,
    pub motion_mid_block_layers_per_block: usize,
    pub motion_num_attention_heads: usize,
    pub motion_norm_num_groups: usize,
    pub motion_max_seq_length: usize,
    pub use_motion_mid_block: bool,
    /// Only the SparseCtrl/PIA variants have an input convolution; SD 1.5 motion modules do not.
    pub conv_in_channels: Option<usize>,
}

impl Default for MotionAdapterConfig {
    /// diffusers' defaults: SD 1.5 channels, 2 modules per down level (3 per up level), 8 heads, 32 groups,
    /// 32 positions, a mid-block module (v2).
    fn default() -> Self {
        MotionAdapterConfig {
            block_out_channels: vec![320, 640, 1280, 1280],
            motion_layers_per_block: 2,
            motion_mid_block_layers_per_block: 1,
            motion_num_attention_heads: 8,
            motion_norm_num_groups: 32,
            motion_max_seq_length: 32,
            use_motion_mid_block: true,
            conv_in_channels: None,
        }
    }
}

/// Errors of building or running motion modules.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MotionError {
    #[error("{channels} channels cannot be split into {heads} motion-module attention heads")]
    Heads { channels: usize, heads: usize },
    #[error("{channels} channels cannot be split into {groups} motion-module norm groups")]
    Groups { channels: usize, groups: usize },
    #[error("motion modules with an input convolution (conv_in_channels = {0}) are not supported")]
    ConvIn(usize),
    #[error("{frames} frames is more than the motion module's {max} positions ({version}); use at most {max} frames")]
    TooManyFrames { frames: usize, max: usize, version: &'static str },
    #[error("the motion module does not fit this UNet: {0}")]
    Mismatch(String),
    /// A motion-module file whose keys or shapes describe no layout that can be built.
    #[error("{0}")]
    Layout(String),
    #[error(transparent)]
    Bound(#[from] OutOfRange),
}

/// One temporal transformer block: two self-attentions over frames (each preceded by its LayerNorm and the
/// sinusoidal frame positions) and a GEGLU feed-forward.
#[derive(Module, Debug)]
pub struct TemporalTransformerBlock {
    pub norm1: LayerNorm,
    pub attn1: Attention,
    pub norm2: LayerNorm,
    pub attn2: Attention,
    pub norm3: LayerNorm,
    pub ff: FeedForward,
}

impl TemporalTransformerBlock {
    fn new(dim: usize, heads: usize, device: &Device) -> Self {
        let ln = || LayerNormConfig::new(dim).with_epsilon(1e-5).init(device);
        TemporalTransformerBlock {
            norm1: ln(),
            attn1: Attention::new(dim, dim, heads, dim / heads, device),
            norm2: ln(),
            attn2: Attention::new(dim, dim, heads, dim / heads, device),
            norm3: ln(),
            ff: FeedForward::new(dim, 4, device),
        }
    }

    /// `x` [N, F, C] (N = clips x pixels), `pe` [1, F, C].
    fn forward(&self, x: Tensor<3>, pe: &Tensor<3>) -> Tensor<3> {
        let x = self.attn1.forward(self.norm1.forward(x.clone()) + pe.clone(), None) + x;
        let x = self.attn2.forward(self.norm2.forward(x.clone()) + pe.clone(), None) + x;
        self.ff.forward(self.norm3.forward(x.clone())) + x
    }
}

/// One motion module (`TransformerTemporalModel` in diffusers, `VanillaTemporalModule` in AnimateDiff):
/// GroupNorm, linear projection in, temporal transformer blocks, linear projection out, residual.
#[derive(Module, Debug)]
pub struct TransformerTemporalModel {
    pub norm: GroupNorm,
    pub proj_in: Linear,
    pub transformer_blocks: Vec<TemporalTransformerBlock>,
    pub proj_out: Linear,
}

impl TransformerTemporalModel {
    fn new(channels: usize, heads: usize, groups: usize, device: &Device) -> Self {
        TransformerTemporalModel {
            norm: group_norm(groups, channels, 1e-6, device),
            proj_in: LinearConfig::new(channels, channels).init(device),
            transformer_blocks: vec![TemporalTransformerBlock::new(channels, heads, device)],
            proj_out: LinearConfig::new(channels, channels).init(device),
        }
    }

    /// `x` [B*F, C, H, W] with clips of `frames` frames folded into N (clip-major).
    pub fn forward(&self, x: Tensor<4>, frames: usize, norm: FrameNorm) -> Tensor<4> {
        let [n, c, h, w] = x.dims();
        let b = n / frames;
        let residual = x.clone();
        let x = group_norm_frames(&self.norm, x, norm.frames(frames));
        // (b f) c h w -> (b h w) f c
        let tokens = x.reshape([b, frames, c, h, w]).permute([0, 3, 4, 1, 2]).reshape([b * h * w, frames, c]);
        let pe = positional_encoding(frames, c, &tokens.device());
        let mut t = self.proj_in.forward(tokens);
        for block in &self.transformer_blocks {
            t = block.forward(t, &pe);
        }
        let t = self.proj_out.forward(t);
        t.reshape([b, h, w, frames, c]).permute([0, 3, 4, 1, 2]).reshape([n, c, h, w]) + residual
    }
}

/// The sinusoidal frame positions both implementations add before each temporal attention: [1, F, C] with
/// sin at even and cos at odd channels, frequency 10000^(-2i/C) (computed in f32 like the reference).
pub fn positional_encoding(frames: usize, channels: usize, device: &Device) -> Tensor<3> {
    let scale = (-(10000f64.ln()) / channels as f64) as f32;
    let mut data = vec![0f32; frames * channels];
    for pos in 0..frames {
        for i in (0..channels).step_by(2) {
            let angle = pos as f32 * (i as f32 * scale).exp();
            data[pos * channels + i] = angle.sin();
            if i + 1 < channels {
                data[pos * channels + i + 1] = angle.cos();
            }
        }
    }
    Tensor::from_data(TensorData::new(data, [1, frames, channels]), device)
}

/// The motion modules of one UNet level.
#[derive(Module, Debug)]
pub struct MotionModules {
    pub motion_modules: Vec<TransformerTemporalModel>,
}

impl MotionModules {
    fn new(count: usize, channels: usize, heads: usize, groups: usize, device: &Device) -> Self {
        MotionModules {
            motion_modules: (0..count)
                .map(|_| TransformerTemporalModel::new(channels, heads, groups, device))
                .collect(),
        }
    }
}

/// A set of motion modules for an SD 1.x UNet (diffusers' `MotionAdapter` layout).
#[derive(Module, Debug)]
pub struct MotionAdapter {
    pub down_blocks: Vec<MotionModules>,
    pub mid_block: Option<MotionModules>,
    pub up_blocks: Vec<MotionModules>,
    #[module(skip)]
    pub max_seq_length: usize,
    #[module(skip)]
    pub version: MotionVersion,
    #[module(skip)]
    pub norms: VideoNorms,
}

impl MotionAdapterConfig {
    /// Builds the modules with the original AnimateDiff norm semantics of the detected version.
    pub fn init(&self, device: &Device) -> Result<MotionAdapter, MotionError> {
        if let Some(c) = self.conv_in_channels {
            return Err(MotionError::ConvIn(c));
        }
        self.check_bounds()?;
        let heads = self.motion_num_attention_heads;
        let groups = self.motion_norm_num_groups;
        for &c in &self.block_out_channels {
            if heads == 0 || c % heads != 0 {
                return Err(MotionError::Heads { channels: c, heads });
            }
            if groups == 0 || c % groups != 0 {
                return Err(MotionError::Groups { channels: c, groups });
            }
        }
        let level = |count: usize, c: usize| MotionModules::new(count, c, heads, groups, device);
        let ch = &self.block_out_channels;
        let version = MotionVersion::detect(self.use_motion_mid_block, self.motion_max_seq_length);
        Ok(MotionAdapter {
            down_blocks: ch.iter().map(|&c| level(self.motion_layers_per_block, c)).collect(),
            mid_block: match (self.use_motion_mid_block, ch.last()) {
                (true, Some(&c)) => Some(level(self.motion_mid_block_layers_per_block, c)),
                _ => None,
            },
            up_blocks: ch.iter().rev().map(|&c| level(self.motion_layers_per_block + 1, c)).collect(),
            max_seq_length: self.motion_max_seq_length,
            version,
            norms: VideoNorms::original(version),
        })
    }
}

impl MotionAdapterConfig {
    /// Every size within the bounds of [`crate::models::bounds`].
    fn check_bounds(&self) -> Result<(), OutOfRange> {
        bounds::check_each("block_out_channels", &self.block_out_channels, 1, MAX_CHANNELS, MAX_LEVELS)?;
        bounds::check("motion_layers_per_block", self.motion_layers_per_block, 1, MAX_LAYERS_PER_BLOCK)?;
        if self.use_motion_mid_block {
            let layers = self.motion_mid_block_layers_per_block;
            bounds::check("motion_mid_block_layers_per_block", layers, 1, MAX_LAYERS_PER_BLOCK)?;
        }
        bounds::check("motion_num_attention_heads", self.motion_num_attention_heads, 1, MAX_HEADS)?;
        bounds::check("motion_norm_num_groups", self.motion_norm_num_groups, 1, MAX_CHANNELS)?;
        bounds::check("motion_max_seq_length", self.motion_max_seq_length, 1, MAX_POSITIONS)?;
        Ok(())
    }
}

impl MotionAdapter {
    /// Uses other norm semantics (e.g. [`VideoNorms::DIFFUSERS`] to match diffusers' pipelines).
    pub fn with_norms(mut self, norms: VideoNorms) -> Self {
        self.norms = norms;
        self
    }

    /// Fails when a clip has more frames than the module has positions.
    pub fn check_frames(&self, frames: usize) -> Result<(), MotionError> {
        if frames > self.max_seq_length {
            return Err(MotionError::TooManyFrames { frames, max: self.max_seq_length, version: self.version.name() });
        }
        Ok(())
    }
}

/// Key rewrites from the original AnimateDiff checkpoints to our (diffusers) names: drop
/// `.temporal_transformer`, `attention_blocks.0/1` -> `attn1/2`, `norms.0/1` -> `norm1/2`,
/// `ff_norm` -> `norm3`; a `module.` prefix (multi-GPU training saves) is dropped. The stored
/// `pos_encoder.pe` tables are recomputed, not loaded (see [`IGNORED_KEYS`]).
pub const ORIGINAL_RENAME: &[(&str, &str)] = &[
    (r"^module\.", ""),
    (r"\.temporal_transformer\.", "."),
    (r"\.attention_blocks\.0\.", ".attn1."),
    (r"\.attention_blocks\.1\.", ".attn2."),
    (r"\.norms\.0\.", ".norm1."),
    (r"\.norms\.1\.", ".norm2."),
    (r"\.ff_norm\.", ".norm3."),
];

/// [`ORIGINAL_RENAME`], compiled: the names our module tree gives to the keys of an original file.
pub struct OriginalNames(Vec<(regex::Regex, &'static str)>);

impl OriginalNames {
    pub fn new() -> Self {
        OriginalNames(
            ORIGINAL_RENAME.iter().filter_map(|(from, to)| regex::Regex::new(from).ok().map(|r| (r, *to))).collect(),
        )
    }

    /// `key` with every rewrite of the table applied (keys already in our names pass unchanged).
    pub fn to_ours(&self, key: &str) -> String {
        self.0.iter().fold(key.to_string(), |k, (r, to)| r.replace_all(&k, *to).into_owned())
    }
}

impl Default for OriginalNames {
    fn default() -> Self {
        Self::new()
    }
}

/// Stored tables both formats carry and we recompute: the original's `pos_encoder.pe` and diffusers'
/// persistent `pos_embed.pe` buffer.
pub const IGNORED_KEYS: &[&str] = &[r"\.pos_encoder\.pe$", r"\.pos_embed\.pe$"];

impl MotionAdapterConfig {
    /// The configuration of a motion-module file without a `config.json` (original checkpoints, single
    /// MotionAdapter files), from its tensor names and shapes in either naming: channels and module counts
    /// per level, whether a mid-block module exists, and the number of positions from the stored
    /// positional table. Heads and norm groups leave no trace in the shapes; they are given.
    /// `Ok(None)` when the file holds no motion modules. Every index and size read from a key or a shape is
    /// bounded ([`MAX_LEVELS`] levels, [`MAX_LAYERS_PER_BLOCK`] modules per level, [`MAX_CHANNELS`] channels,
    /// [`MAX_POSITIONS`] positions) before it sizes anything; the error names the key.
    pub fn infer(
        shapes: &[(String, Vec<usize>)],
        heads: usize,
        groups: usize,
    ) -> Result<Option<MotionAdapterConfig>, MotionError> {
        let rename = OriginalNames::new();
        let proj = regex::Regex::new(r"^(down_blocks\.(\d+)|mid_block)\.motion_modules\.(\d+)\.proj_in\.weight$")
            .map_err(|e| MotionError::Layout(e.to_string()))?;
        let bad = |key: &str, message: String| MotionError::Layout(format!("key '{key}': {message}"));
        let mut levels: Vec<(usize, usize)> = Vec::new(); // (channels, modules) per down level
        let mut mid = 0;
        let mut positions = None;
        for (original, shape) in shapes {
            let key = rename.to_ours(original);
            if (key.ends_with(".pos_encoder.pe") || key.ends_with(".pos_embed.pe"))
                && let [_, p, _] = shape.as_slice()
            {
                let field = "the positional table's length (shape[1])";
                positions = Some(bounds::check(field, *p, 1, MAX_POSITIONS).map_err(|e| bad(original, e.to_string()))?);
            }
            let Some(caps) = proj.captures(&key) else {
                continue;
            };
            // An index is below `max`; digits too many for a usize are out of range as well.
            let index = |group: usize, what: &str, max: usize| {
                let text = caps.get(group).map_or("", |m| m.as_str());
                match text.parse::<usize>() {
                    Ok(n) if n < max => Ok(n),
                    _ => {
                        Err(bad(original, format!("{what} index {text} is out of range (at most {max} are supported)")))
                    }
                }
            };
            let module = index(3, "motion module", MAX_LAYERS_PER_BLOCK)?;
            let channels = match shape.as_slice() {
                [c, _] => bounds::check("proj_in.weight shape[0] (channels)", *c, 1, MAX_CHANNELS)
                    .map_err(|e| bad(original, e.to_string()))?,
                other => return Err(bad(original, format!("shape {other:?}, expected [channels, channels]"))),
            };
            if caps.get(2).is_some() {
                let level = index(2, "level", MAX_LEVELS)?;
                if levels.len() <= level {
                    levels.resize(level + 1, (0, 0));
                }
                if let Some(slot) = levels.get_mut(level) {
                    *slot = (channels, slot.1.max(module + 1));
                }
            } else {
                mid = mid.max(module + 1);
            }
        }
        let Some(&(_, first_count)) = levels.first() else {
            return Ok(None);
        };
        if let Some(gap) = levels.iter().position(|&(_, n)| n == 0) {
            return Err(MotionError::Layout(format!(
                "down_blocks.{gap} has no motion modules, but down_blocks.{} has",
                levels.len() - 1
            )));
        }
        Ok(Some(MotionAdapterConfig {
            block_out_channels: levels.iter().map(|&(c, _)| c).collect(),
            motion_layers_per_block: first_count,
            motion_mid_block_layers_per_block: mid.max(1),
            motion_num_attention_heads: heads,
            motion_norm_num_groups: groups,
            motion_max_seq_length: positions.unwrap_or(32),
            use_motion_mid_block: mid > 0,
            conv_in_channels: None,
        }))
    }
}
