//! The ModelScope T2V family's UNet: diffusers' `UNet3DConditionModel` (`damo-vilab/text-to-video-ms-1.7b`).
//! Its spatial part is the SD UNet ([`Unet2DConditionModel`], SD 2.x-style: 1024-wide context, heads of a
//! fixed size); its temporal layers ([`ModelScopeTemporal`]) are woven into that walk: a temporal
//! transformer after `conv_in`, a temporal convolution after every resnet and a temporal transformer after
//! every spatial transformer. Key names are diffusers' (`down_blocks.0.temp_convs.1.conv2.3.weight`, ...);
//! every size comes from `config.json` and the weights.

use std::path::Path;

use burn::module::Module;
use burn::nn::conv::{Conv3d, Conv3dConfig};
use burn::nn::{Dropout, DropoutConfig, GroupNorm, Linear, LinearConfig, PaddingConfig3d};
use burn::tensor::activation::silu;
use burn::tensor::{Device, Tensor};

use super::blocks::group_norm;
use super::load::{LoadOptions, LoadReport};
use super::unet::attention::BasicTransformerBlock;
use super::unet::{PerBlock, Site, TemporalLayers, Unet2DConditionModel, UnetConfig};
use super::{ComponentError, bounds};
use crate::pipelines::PipelineError;
use crate::pipelines::denoiser::{Conditioning, VideoDenoiser};

/// The fields of a diffusers `UNet3DConditionModel` `config.json` the model needs (ModelScope T2V 1.7B's by
/// default).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Unet3dConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    pub down_block_types: Vec<String>,
    pub up_block_types: Vec<String>,
    pub block_out_channels: Vec<usize>,
    pub layers_per_block: usize,
    /// The size of every attention head (diffusers passes it where a head count is expected and back again:
    /// the transformers get `channels / attention_head_dim` heads of this size).
    pub attention_head_dim: usize,
    pub cross_attention_dim: usize,
    pub norm_num_groups: usize,
    pub norm_eps: f64,
    pub downsample_padding: usize,
}

impl Default for Unet3dConfig {
    fn default() -> Self {
        Unet3dConfig {
            in_channels: 4,
            out_channels: 4,
            down_block_types: ["CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "DownBlock3D"]
                .map(String::from)
                .to_vec(),
            up_block_types: ["UpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D"]
                .map(String::from)
                .to_vec(),
            block_out_channels: vec![320, 640, 1280, 1280],
            layers_per_block: 2,
            attention_head_dim: 64,
            cross_attention_dim: 1024,
            norm_num_groups: 32,
            norm_eps: 1e-5,
            downsample_padding: 1,
        }
    }
}

/// Heads of the temporal transformer after `conv_in` (fixed in diffusers).
const TRANSFORMER_IN_HEADS: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum Unet3dConfigError {
    #[error("unknown block type '{0}' (expected CrossAttnDownBlock3D, DownBlock3D, UpBlock3D or CrossAttnUpBlock3D)")]
    BlockType(String),
    #[error("{channels} channels cannot be split into heads of {head_dim}")]
    Heads { channels: usize, head_dim: usize },
    #[error(transparent)]
    Bounds(#[from] bounds::OutOfRange),
    #[error("{0}")]
    Unet(String),
}

impl Unet3dConfig {
    /// The spatial part's configuration: the same blocks as 2-D ones, `channels / head_dim` heads per level.
    pub fn spatial(&self) -> Result<UnetConfig, Unet3dConfigError> {
        bounds::check("attention_head_dim", self.attention_head_dim, 1, 4096)?;
        let to_2d = |t: &String| match t.as_str() {
            "CrossAttnDownBlock3D" | "DownBlock3D" | "UpBlock3D" | "CrossAttnUpBlock3D" => Ok(t.replace("3D", "2D")),
            other => Err(Unet3dConfigError::BlockType(other.to_string())),
        };
        let heads = self
            .block_out_channels
            .iter()
            .map(|&c| {
                if c % self.attention_head_dim != 0 || c == 0 {
                    Err(Unet3dConfigError::Heads { channels: c, head_dim: self.attention_head_dim })
                } else {
                    Ok(c / self.attention_head_dim)
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(UnetConfig {
            in_channels: self.in_channels,
            out_channels: self.out_channels,
            down_block_types: self.down_block_types.iter().map(to_2d).collect::<Result<_, _>>()?,
            up_block_types: self.up_block_types.iter().map(to_2d).collect::<Result<_, _>>()?,
            block_out_channels: self.block_out_channels.clone(),
            layers_per_block: self.layers_per_block,
            attention_head_dim: PerBlock::Each(heads.clone()),
            num_attention_heads: Some(PerBlock::Each(heads)),
            cross_attention_dim: self.cross_attention_dim,
            norm_num_groups: self.norm_num_groups,
            norm_eps: self.norm_eps,
            flip_sin_to_cos: true,
            freq_shift: 0.0,
            // diffusers' 3-D blocks build their spatial transformers with linear projections (the class
            // passes no setting, and get_down_block / get_up_block default to linear).
            use_linear_projection: true,
            downsample_padding: self.downsample_padding,
            transformer_layers_per_block: 1,
        })
    }

    pub fn init(&self, device: &Device) -> Result<Unet3d, Unet3dConfigError> {
        let unet = self.spatial()?.init(device).map_err(|e| Unet3dConfigError::Unet(e.to_string()))?;
        let temporal = self.temporal(device)?;
        Ok(Unet3d { unet, temporal })
    }

    fn temporal(&self, device: &Device) -> Result<ModelScopeTemporal, Unet3dConfigError> {
        let (groups, head) = (self.norm_num_groups, self.attention_head_dim);
        let channels = &self.block_out_channels;
        let first = *channels.first().ok_or(Unet3dConfigError::Unet("no block_out_channels".into()))?;
        let attends = |t: &str| t.starts_with("CrossAttn");
        let level = |c: usize, layers: usize, attention: bool| TemporalLevel {
            temp_convs: (0..layers).map(|_| TemporalConvLayer::new(c, groups, device)).collect(),
            temp_attentions: if attention {
                (0..layers).map(|_| TemporalTransformer::new(c, c / head, head, groups, device)).collect()
            } else {
                Vec::new()
            },
        };
        let last = *channels.last().unwrap_or(&first);
        let reversed: Vec<usize> = channels.iter().rev().copied().collect();
        Ok(ModelScopeTemporal {
            transformer_in: TemporalTransformer::new(first, TRANSFORMER_IN_HEADS, head, groups, device),
            down_blocks: self
                .down_block_types
                .iter()
                .zip(channels)
                .map(|(t, &c)| level(c, self.layers_per_block, attends(t)))
                .collect(),
            mid_block: TemporalLevel {
                temp_convs: (0..2).map(|_| TemporalConvLayer::new(last, groups, device)).collect(),
                temp_attentions: vec![TemporalTransformer::new(last, last / head, head, groups, device)],
            },
            up_blocks: self
                .up_block_types
                .iter()
                .zip(&reversed)
                .map(|(t, &c)| level(c, self.layers_per_block + 1, attends(t)))
                .collect(),
        })
    }
}

/// One layer of a `TemporalConvLayer`'s `nn.Sequential` (keeping the file's indices: GroupNorm, SiLU,
/// [Dropout,] Conv3d).
#[derive(Module, Debug)]
pub enum TemporalConvPart {
    Norm(GroupNorm),
    /// SiLU or Dropout: no parameters.
    Pass(Dropout),
    Conv(Conv3d),
}

/// diffusers' `TemporalConvLayer`: four (GroupNorm, SiLU, Conv3d (3, 1, 1)) stages over the frames, residual.
#[derive(Module, Debug)]
pub struct TemporalConvLayer {
    pub conv1: Vec<TemporalConvPart>,
    pub conv2: Vec<TemporalConvPart>,
    pub conv3: Vec<TemporalConvPart>,
    pub conv4: Vec<TemporalConvPart>,
}

impl TemporalConvLayer {
    fn new(channels: usize, groups: usize, device: &Device) -> Self {
        let conv = || {
            Conv3dConfig::new([channels, channels], [3, 1, 1])
                .with_padding(PaddingConfig3d::Explicit(1, 0, 0))
                .init(device)
        };
        let pass = || TemporalConvPart::Pass(DropoutConfig::new(0.0).init());
        let stage = |dropout: bool| {
            let mut parts = vec![TemporalConvPart::Norm(group_norm(groups, channels, 1e-5, device)), pass()];
            if dropout {
                parts.push(pass());
            }
            parts.push(TemporalConvPart::Conv(conv()));
            parts
        };
        TemporalConvLayer { conv1: stage(false), conv2: stage(true), conv3: stage(true), conv4: stage(true) }
    }

    /// `x` [clips * frames, C, H, W] (clip-major).
    pub fn forward(&self, x: Tensor<4>, frames: usize) -> Tensor<4> {
        let [n, c, h, w] = x.dims();
        let video = x.reshape([n / frames, frames, c, h, w]).swap_dims(1, 2);
        let mut y = video.clone();
        for stage in [&self.conv1, &self.conv2, &self.conv3, &self.conv4] {
            for part in stage {
                y = match part {
                    TemporalConvPart::Norm(norm) => silu(norm.forward(y)),
                    TemporalConvPart::Pass(_) => y,
                    TemporalConvPart::Conv(conv) => conv.forward(y),
                };
            }
        }
        (video + y).swap_dims(1, 2).reshape([n, c, h, w])
    }
}

/// diffusers' `TransformerTemporalModel`: GroupNorm over each clip (statistics across its frames), a linear
/// projection to heads x head size, transformer blocks attending across the frames at every pixel (both
/// attentions self-attention), the projection back, residual.
#[derive(Module, Debug)]
pub struct TemporalTransformer {
    pub norm: GroupNorm,
    pub proj_in: Linear,
    pub transformer_blocks: Vec<BasicTransformerBlock>,
    pub proj_out: Linear,
}

impl TemporalTransformer {
    fn new(channels: usize, heads: usize, head_dim: usize, groups: usize, device: &Device) -> Self {
        let inner = heads * head_dim;
        TemporalTransformer {
            norm: group_norm(groups, channels, 1e-6, device),
            proj_in: LinearConfig::new(channels, inner).init(device),
            transformer_blocks: vec![BasicTransformerBlock::new(inner, heads, head_dim, inner, device)],
            proj_out: LinearConfig::new(inner, channels).init(device),
        }
    }

    /// `x` [clips * frames, C, H, W] (clip-major).
    pub fn forward(&self, x: Tensor<4>, frames: usize) -> Tensor<4> {
        let [n, c, h, w] = x.dims();
        let clips = n / frames;
        let residual = x.clone();
        let video = self.norm.forward(x.reshape([clips, frames, c, h, w]).swap_dims(1, 2));
        // [clips, C, F, H, W] -> [clips * H * W, F, C]
        let tokens = video.permute([0, 3, 4, 2, 1]).reshape([clips * h * w, frames, c]);
        let mut t = self.proj_in.forward(tokens);
        for block in &self.transformer_blocks {
            t = block.forward_double_self(t);
        }
        let t = self.proj_out.forward(t);
        // [clips * H * W, F, C] -> [clips, F, C, H, W]
        let out = t.reshape([clips, h, w, frames, c]).permute([0, 3, 4, 1, 2]).reshape([n, c, h, w]);
        out + residual
    }
}

/// The temporal layers of one level.
#[derive(Module, Debug)]
pub struct TemporalLevel {
    pub temp_convs: Vec<TemporalConvLayer>,
    pub temp_attentions: Vec<TemporalTransformer>,
}

/// Every temporal layer of a `UNet3DConditionModel`, under diffusers' key names.
#[derive(Module, Debug)]
pub struct ModelScopeTemporal {
    pub transformer_in: TemporalTransformer,
    pub down_blocks: Vec<TemporalLevel>,
    pub mid_block: TemporalLevel,
    pub up_blocks: Vec<TemporalLevel>,
}

impl ModelScopeTemporal {
    fn level(&self, site: Site) -> Option<(&TemporalLevel, usize)> {
        match site {
            Site::Down(i, j) => self.down_blocks.get(i).map(|l| (l, j)),
            Site::Mid(j) => Some((&self.mid_block, j)),
            Site::Up(i, j) => self.up_blocks.get(i).map(|l| (l, j)),
        }
    }
}

/// The temporal layers over clips of `frames` frames, as the 2-D walk's hooks.
struct Woven<'a> {
    temporal: &'a ModelScopeTemporal,
    frames: usize,
}

impl TemporalLayers for Woven<'_> {
    fn after_conv_in(&self, h: Tensor<4>) -> Tensor<4> {
        self.temporal.transformer_in.forward(h, self.frames)
    }

    fn after_resnet(&self, site: Site, h: Tensor<4>) -> Tensor<4> {
        match self.temporal.level(site).and_then(|(l, j)| l.temp_convs.get(j)) {
            Some(conv) => conv.forward(h, self.frames),
            None => h,
        }
    }

    fn after_attention(&self, site: Site, h: Tensor<4>) -> Tensor<4> {
        match self.temporal.level(site).and_then(|(l, j)| l.temp_attentions.get(j)) {
            Some(attn) => attn.forward(h, self.frames),
            None => h,
        }
    }
}

/// ModelScope T2V's UNet: the spatial SD UNet and its temporal layers.
#[derive(Module, Debug)]
pub struct Unet3d {
    pub unet: Unet2DConditionModel,
    pub temporal: ModelScopeTemporal,
}

impl Unet3d {
    /// The UNet over frames [B*F, C, H, W] (clip-major) with their time embeddings [B*F, E] and contexts
    /// [B*F, S, D], the temporal layers attending over `frames` frames per clip.
    pub fn forward_frames(&self, x: Tensor<4>, temb: Tensor<2>, context: Tensor<3>, frames: usize) -> Tensor<4> {
        self.unet.forward_with_layers(x, temb, context, &Woven { temporal: &self.temporal, frames })
    }

    /// Noise prediction for `sample` [B, C, F, H, W] at `timesteps` (one per clip), conditioned on `context`
    /// [B, S, D] (shared by the frames of a clip).
    pub fn forward(
        &self,
        sample: Tensor<5>,
        timesteps: &[f64],
        context: Tensor<3>,
    ) -> Result<Tensor<5>, PipelineError> {
        let [b, c, f, h, w] = sample.dims();
        if timesteps.len() != b || context.dims()[0] != b {
            return Err(PipelineError::Data(format!(
                "{} timesteps and {} contexts for a batch of {b} clips",
                timesteps.len(),
                context.dims()[0]
            )));
        }
        let device = sample.device();
        let frames_t: Vec<f64> = timesteps.iter().flat_map(|&t| std::iter::repeat_n(t, f)).collect();
        let temb = self.unet.time_embed(&frames_t, &device);
        let [_, s, d] = context.dims();
        let context = context.unsqueeze_dim::<4>(1).repeat_dim(1, f).reshape([b * f, s, d]);
        let x = sample.permute([0, 2, 1, 3, 4]).reshape([b * f, c, h, w]);
        let out = self.forward_frames(x, temb, context, f);
        let [_, oc, _, _] = out.dims();
        Ok(out.reshape([b, f, oc, h, w]).permute([0, 2, 1, 3, 4]))
    }
}

/// ModelScope T2V: text conditioning only. Its temporal layers always run (every frame of a clip attends to
/// the others); with [`crate::models::unet::Motion::Bypass`] each frame is a one-frame clip.
impl VideoDenoiser for Unet3d {
    fn predict(
        &self,
        x: Tensor<5>,
        timesteps: &[f64],
        cond: &Conditioning,
        motion: crate::models::unet::Motion,
    ) -> Result<Tensor<5>, PipelineError> {
        if cond.image_tokens.is_some() || cond.concat_latents.is_some() || cond.fps.is_some() {
            return Err(PipelineError::Data(
                "ModelScope T2V is conditioned on text only (image or frame-rate conditioning was given)".into(),
            ));
        }
        match motion {
            crate::models::unet::Motion::On => self.forward(x, timesteps, cond.text.clone()),
            crate::models::unet::Motion::Bypass => {
                let [b, c, f, h, w] = x.dims();
                let frames = x.permute([0, 2, 1, 3, 4]).reshape([b * f, c, 1, h, w]);
                let t: Vec<f64> = timesteps.iter().flat_map(|&t| std::iter::repeat_n(t, f)).collect();
                let [_, s, d] = cond.text.dims();
                let text = cond.text.clone().unsqueeze_dim::<4>(1).repeat_dim(1, f).reshape([b * f, s, d]);
                let out = self.forward(frames, &t, text)?;
                let [_, oc, _, _, _] = out.dims();
                Ok(out.reshape([b, f, oc, h, w]).permute([0, 2, 1, 3, 4]))
            }
        }
    }

    fn latent_channels(&self) -> usize {
        self.unet.in_channels()
    }
}

/// Keys of the temporal layers in a `UNet3DConditionModel` file.
const TEMPORAL_KEYS: &str = r"(^transformer_in\.|\.temp_convs\.|\.temp_attentions\.)";

/// Loads a diffusers `UNet3DConditionModel` `unet/` folder (config.json + diffusion_pytorch_model
/// safetensors or .bin): the spatial and the temporal parts from the same file, each checked complete.
pub fn load_unet3d(dir: &Path, device: &Device) -> Result<(Unet3d, LoadReport), ComponentError> {
    super::check_component_class(dir, "UNet3DConditionModel")?;
    let config: Unet3dConfig = super::read_config(dir)?;
    let config_err =
        |e: Unet3dConfigError| ComponentError::Config { path: dir.join("config.json"), message: e.to_string() };
    let mut model = config.init(device).map_err(config_err)?;
    let weights = super::diffusers_weight_file(dir, "diffusion_pytorch_model", false)
        .ok_or_else(|| ComponentError::NoWeights { dir: dir.to_path_buf(), stem: "diffusion_pytorch_model".into() })?;
    let report = load_unet3d_weights(&mut model, &weights, &[], "a diffusers UNet3DConditionModel (ModelScope T2V)")?;
    Ok((model, report))
}

/// Loads a 3-D UNet's spatial and temporal parts from one weights file; keys matching `others` belong to
/// another module (I2VGen-XL's conditioning) and are left for it. `what` names the expected model in messages.
pub(crate) fn load_unet3d_weights(
    model: &mut Unet3d,
    weights: &Path,
    others: &[&str],
    what: &str,
) -> Result<LoadReport, ComponentError> {
    let mut ignore = vec![TEMPORAL_KEYS];
    ignore.extend_from_slice(others);
    let spatial_options = LoadOptions { ignore_unused: &ignore, expected: Some(what), ..LoadOptions::default() };
    let report = super::load::load_into(&mut model.unet, weights, &spatial_options)?;
    // The temporal part: everything that is not temporal is the spatial part's, loaded above.
    let mut ignore = vec![
        r"^(conv_in|conv_out|conv_norm_out|time_embedding)\.",
        r"\.(resnets|attentions|downsamplers|upsamplers)\.",
    ];
    ignore.extend_from_slice(others);
    let expected = format!("{what}: its temporal layers");
    let temporal_options = LoadOptions { ignore_unused: &ignore, expected: Some(&expected), ..LoadOptions::default() };
    let temporal_report = super::load::load_into(&mut model.temporal, weights, &temporal_options)?;
    let mut unused = report.unused;
    unused.extend(temporal_report.unused);
    Ok(LoadReport { path: weights.to_path_buf(), applied: report.applied + temporal_report.applied, unused })
}

/// ModelScope T2V as diffusers holds it (`damo-vilab/text-to-video-ms-1.7b`): `unet/` (UNet3DConditionModel),
/// `vae/`, `text_encoder/` (OpenCLIP-H as a transformers CLIPTextModel, GELU), `tokenizer/` and
/// `scheduler/scheduler_config.json` (DDIM).
#[derive(Debug)]
pub struct ModelScopeT2v {
    pub unet: Unet3d,
    pub vae: super::vae::AutoencoderKl,
    pub text_encoder: super::clip::ClipTextModel,
    pub tokenizer: super::clip::ClipTokenizer,
    pub scheduler: crate::schedulers::DdimConfig,
    pub source: std::path::PathBuf,
}

/// Why a ModelScope T2V folder did not load.
pub type ModelScopeError = super::FolderError;

/// Loads a ModelScope T2V diffusers folder; the text encoder's width is checked against the UNet's context.
pub fn load_modelscope(path: &Path, device: &Device) -> Result<(ModelScopeT2v, Vec<LoadReport>), ModelScopeError> {
    super::check_pipeline_folder(
        path,
        "TextToVideoSDPipeline",
        "a ModelScope T2V",
        &["unet", "vae", "text_encoder", "tokenizer", "scheduler"],
    )?;
    let component = |name| ModelScopeError::component(path, name);
    let (unet, r_unet) = load_unet3d(&path.join("unet"), device).map_err(component("unet"))?;
    let (vae, r_vae) = super::load_vae(&path.join("vae"), device).map_err(component("vae"))?;
    let (text_encoder, r_text) =
        super::load_clip_text_encoder(&path.join("text_encoder"), device).map_err(component("text_encoder"))?;
    let tokenizer = super::clip::ClipTokenizer::from_dir(&path.join("tokenizer"))?;
    let scheduler = super::read_scheduler_config(path)?;
    let width = text_encoder.text_model.embeddings.token_embedding.weight.dims()[1];
    if let Some(cross) = unet.unet.cross_attention_dim()
        && cross != width
    {
        return Err(ModelScopeError::layout(
            path,
            format!(
                "the parts do not fit together: the text encoder produces {width}-wide states, the UNet attends to \
                 {cross}-wide ones"
            ),
        ));
    }
    let model = ModelScopeT2v { unet, vae, text_encoder, tokenizer, scheduler, source: path.to_path_buf() };
    Ok((model, vec![r_unet, r_vae, r_text]))
}
