//! I2VGen-XL's UNet as diffusers' `I2VGenXLUNet` (0.27.2, ../shared/SEED-SYSTEMS.md 3.3-3.4): ModelScope's
//! 3-D UNet ([`super::modelscope::Unet3d`]: the same blocks, `transformer_in` included) whose `conv_in`
//! takes the noise and the encoded image side by side (8 channels), with the image conditioning of
//! I2VGen-XL around it:
//!
//! - `image_latents_proj_in` (3 convolutions) per frame, then `image_latents_temporal_encoder` (one pre-norm
//!   attention + GELU feed-forward over the frames at each latent pixel): the 4 channels concatenated to the
//!   noise (diffusers concatenates them once; VGen's code adds them twice, see the issue note);
//! - the cross-attention context of every frame: the text tokens, 64 local tokens from the first frame's
//!   latent (`image_latents_context_embedding`: conv, adaptive average pool to 32x32, two stride-2 convs),
//!   and `in_channels` global tokens from the CLIP image embedding (`context_embedding`);
//! - the frame rate as a second timestep embedding (`fps_embedding`) added to the time embedding.

use std::path::Path;

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{LayerNorm, LayerNormConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::activation::{gelu, silu};
use burn::tensor::module::adaptive_avg_pool2d;
use burn::tensor::{Device, Tensor};

use super::blocks::conv_forward;
use super::load::{LoadOptions, LoadReport};
use super::modelscope::{Unet3d, Unet3dConfig, Unet3dConfigError};
use super::unet::timestep_embedding;
use super::{ComponentError, bounds};
use crate::pipelines::PipelineError;

/// An `I2VGenXLUNet` `config.json`: the fields of a `UNet3DConditionModel` one, with the same meanings and
/// defaults (ali-vilab/i2vgen-xl's UNet has ModelScope's block layout).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct I2vgenXlUnetConfig(pub Unet3dConfig);

/// The local-token pool's output side (fixed in diffusers: 32x32, then two stride-2 convolutions: 64 tokens).
const LOCAL_POOL: usize = 32;
/// Heads of the image-latent temporal encoder (fixed in diffusers).
const ENCODER_HEADS: usize = 2;

/// A 3x3 convolution with padding 1 and the given stride.
fn conv3(i: usize, o: usize, stride: usize, device: &Device) -> Conv2d {
    Conv2dConfig::new([i, o], [3, 3])
        .with_stride([stride, stride])
        .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
        .init(device)
}

impl I2vgenXlUnetConfig {
    fn unet3d(&self) -> Unet3dConfig {
        // conv_in reads the noise and the encoded image latents.
        Unet3dConfig { in_channels: 2 * self.0.in_channels, ..self.0.clone() }
    }

    pub fn init(&self, device: &Device) -> Result<I2vgenXlUnet, Unet3dConfigError> {
        bounds::check("in_channels", self.0.in_channels, 1, 64)?;
        let base = self.unet3d().init(device)?;
        let c = self.0.in_channels;
        let d = self.0.cross_attention_dim;
        let first =
            *self.0.block_out_channels.first().ok_or(Unet3dConfigError::Unet("no block_out_channels".into()))?;
        let time_dim = 4 * first;
        let linear = |i, o| LinearConfig::new(i, o).init(device);
        let no_bias = |i, o| LinearConfig::new(i, o).with_bias(false).init(device);
        let inner = ENCODER_HEADS * c;
        Ok(I2vgenXlUnet {
            base,
            own: I2vgenXlOwn {
                image_latents_proj_in: ConvStack {
                    conv0: conv3(4, 4 * c, 1, device),
                    conv2: conv3(4 * c, 4 * c, 1, device),
                    conv4: conv3(4 * c, c, 1, device),
                },
                image_latents_temporal_encoder: TemporalEncoder {
                    norm1: LayerNormConfig::new(c).with_epsilon(1e-5).init(device),
                    attn1: EncoderAttention {
                        to_q: no_bias(c, inner),
                        to_k: no_bias(c, inner),
                        to_v: no_bias(c, inner),
                        to_out: linear(inner, c),
                        heads: ENCODER_HEADS,
                    },
                    ff_in: linear(c, 4 * c),
                    ff_out: linear(4 * c, c),
                },
                image_latents_context_embedding: LocalTokens {
                    conv0: conv3(4, 8 * c, 1, device),
                    conv3: conv3(8 * c, 16 * c, 2, device),
                    conv5: conv3(16 * c, d, 2, device),
                },
                context_embedding: Mlp { fc0: linear(d, time_dim), fc2: linear(time_dim, d * c) },
                fps_embedding: Mlp { fc0: linear(first, time_dim), fc2: linear(time_dim, time_dim) },
            },
            in_channels: c,
        })
    }
}

/// `nn.Sequential(conv, SiLU, conv, SiLU, conv)` (file indices 0, 2, 4).
#[derive(Module, Debug)]
pub struct ConvStack {
    pub conv0: Conv2d,
    pub conv2: Conv2d,
    pub conv4: Conv2d,
}

impl ConvStack {
    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let x = silu(conv_forward(&self.conv0, x));
        let x = silu(conv_forward(&self.conv2, x));
        conv_forward(&self.conv4, x)
    }
}

/// diffusers' `Attention` as the temporal encoder builds it: q/k/v without bias, `to_out.0` with.
#[derive(Module, Debug)]
pub struct EncoderAttention {
    pub to_q: Linear,
    pub to_k: Linear,
    pub to_v: Linear,
    pub to_out: Linear,
    #[module(skip)]
    pub heads: usize,
}

/// `I2VGenXLTransformerTemporalEncoder`: x + attn(norm1(x)), then x + ff(x) (the feed-forward has no norm
/// of its own; GELU, exact erf).
#[derive(Module, Debug)]
pub struct TemporalEncoder {
    pub norm1: LayerNorm,
    pub attn1: EncoderAttention,
    pub ff_in: Linear,
    pub ff_out: Linear,
}

impl TemporalEncoder {
    /// `x` [N, frames, channels].
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let [n, f, _] = x.dims();
        let a = &self.attn1;
        let h = self.norm1.forward(x.clone());
        let inner = a.to_q.weight.dims()[1];
        let dh = inner / a.heads.max(1);
        let split = |t: Tensor<3>| t.reshape([n, f, a.heads, dh]).swap_dims(1, 2);
        let q = split(a.to_q.forward(h.clone())).mul_scalar((dh.max(1) as f64).powf(-0.5));
        let k = split(a.to_k.forward(h.clone()));
        let v = split(a.to_v.forward(h));
        let out = crate::models::attention::attention(q, k, v, None, None).swap_dims(1, 2).reshape([n, f, inner]);
        let x = x + a.to_out.forward(out);
        x.clone() + self.ff_out.forward(gelu(self.ff_in.forward(x)))
    }
}

/// `image_latents_context_embedding`: conv, SiLU, adaptive average pool to 32x32, stride-2 conv, SiLU,
/// stride-2 conv (file indices 0, 3, 5).
#[derive(Module, Debug)]
pub struct LocalTokens {
    pub conv0: Conv2d,
    pub conv3: Conv2d,
    pub conv5: Conv2d,
}

/// `nn.Sequential(Linear, SiLU, Linear)` (file indices 0, 2).
#[derive(Module, Debug)]
pub struct Mlp {
    pub fc0: Linear,
    pub fc2: Linear,
}

impl Mlp {
    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.fc2.forward(silu(self.fc0.forward(x)))
    }
}

/// I2VGen-XL's own modules around the 3-D UNet (named as in the file).
#[derive(Module, Debug)]
pub struct I2vgenXlOwn {
    pub image_latents_proj_in: ConvStack,
    pub image_latents_temporal_encoder: TemporalEncoder,
    pub image_latents_context_embedding: LocalTokens,
    pub context_embedding: Mlp,
    pub fps_embedding: Mlp,
}

/// How the encoded image latents enter `conv_in` (../shared/SEED-SYSTEMS.md 3.4). VGen's `UNetSD_I2VGen` adds
/// the encoder's output to a zero tensor twice ("This is a bug, but it doesn't matter"), so the released
/// weights were trained on twice the encoding; diffusers' `I2VGenXLUNet` concatenates it once and its
/// converter copies `conv_in` unchanged, so the two differ by that factor on the concatenated channels.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ImageConcat {
    /// Once, as diffusers' port (what the parity tests check against).
    #[default]
    Diffusers,
    /// Twice, as VGen's code that trained the weights.
    Vgen,
}

impl ImageConcat {
    pub fn scale(self) -> f64 {
        match self {
            ImageConcat::Diffusers => 1.0,
            ImageConcat::Vgen => 2.0,
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "diffusers" => Some(ImageConcat::Diffusers),
            "vgen" => Some(ImageConcat::Vgen),
            _ => None,
        }
    }
}

/// diffusers' `I2VGenXLUNet`.
#[derive(Module, Debug)]
pub struct I2vgenXlUnet {
    pub base: Unet3d,
    pub own: I2vgenXlOwn,
    #[module(skip)]
    pub in_channels: usize,
}

impl I2vgenXlUnet {
    /// The velocity (v-prediction) for `sample` [B, C, F, H, W] at `timesteps` (one per clip) with `fps` (one
    /// per clip), the encoded image latents [B, C, F, H, W] (the image's latent, then the frame-position
    /// maps), the CLIP image embedding [B, D] and the text tokens [B, S, D].
    pub fn forward(
        &self,
        sample: Tensor<5>,
        timesteps: &[f64],
        fps: &[f64],
        image_latents: Tensor<5>,
        image_embeddings: Tensor<2>,
        text: Tensor<3>,
    ) -> Result<Tensor<5>, PipelineError> {
        self.forward_with(sample, timesteps, fps, image_latents, image_embeddings, text, ImageConcat::Diffusers)
    }

    /// [`Self::forward`] with the encoded image latents entering `conv_in` as `concat` says.
    #[allow(clippy::too_many_arguments)]
    pub fn forward_with(
        &self,
        sample: Tensor<5>,
        timesteps: &[f64],
        fps: &[f64],
        image_latents: Tensor<5>,
        image_embeddings: Tensor<2>,
        text: Tensor<3>,
        concat: ImageConcat,
    ) -> Result<Tensor<5>, PipelineError> {
        let [b, c, f, h, w] = sample.dims();
        let shapes_agree = timesteps.len() == b
            && fps.len() == b
            && image_latents.dims() == [b, c, f, h, w]
            && image_embeddings.dims()[0] == b
            && text.dims()[0] == b
            && c == self.in_channels;
        if !shapes_agree {
            return Err(PipelineError::Data(format!(
                "I2VGen-XL UNet: sample {:?} ({} channels expected), image latents {:?}, image embeddings {:?}, \
                 text {:?}, {} timesteps, {} frame rates",
                sample.dims(),
                self.in_channels,
                image_latents.dims(),
                image_embeddings.dims(),
                text.dims(),
                timesteps.len(),
                fps.len()
            )));
        }
        let device = sample.device();
        let unet = &self.base.unet;
        // Time + frame rate, per clip, then per frame.
        let t_emb = unet.time_embed(timesteps, &device);
        let proj_dim = unet.time_embedding.linear_1.weight.dims()[0];
        let fps_emb = self.own.fps_embedding.forward(timestep_embedding(fps, proj_dim, true, 0.0, &device));
        let emb = t_emb + fps_emb;
        let [_, e] = emb.dims();
        let emb = emb.unsqueeze_dim::<3>(1).repeat_dim(1, f).reshape([b * f, e]);

        // Context: text, 64 local tokens from the first frame's latent, global tokens from the CLIP embedding.
        let l = &self.own.image_latents_context_embedding;
        let first = image_latents.clone().narrow(2, 0, 1).reshape([b, c, h, w]);
        let local = silu(conv_forward(&l.conv0, first));
        let local = adaptive_avg_pool2d(local, [LOCAL_POOL, LOCAL_POOL]);
        let local = conv_forward(&l.conv5, silu(conv_forward(&l.conv3, local)));
        let [_, d, lh, lw] = local.dims();
        let local = local.reshape([b, d, lh * lw]).swap_dims(1, 2);
        let global = self.own.context_embedding.forward(image_embeddings).reshape([b, self.in_channels, d]);
        let context = Tensor::cat(vec![text, local, global], 1);
        let [_, s, _] = context.dims();
        let context = context.unsqueeze_dim::<4>(1).repeat_dim(1, f).reshape([b * f, s, d]);

        // The image latents per frame, then over the frames at each pixel.
        let frames = image_latents.permute([0, 2, 1, 3, 4]).reshape([b * f, c, h, w]);
        let encoded = self.own.image_latents_proj_in.forward(frames); // [b*f, c, h, w]
        let encoded = encoded.reshape([b, f, c, h, w]).permute([0, 3, 4, 1, 2]).reshape([b * h * w, f, c]);
        let encoded = self.own.image_latents_temporal_encoder.forward(encoded);
        let encoded = encoded.reshape([b, h, w, f, c]).permute([0, 3, 4, 1, 2]); // [b, f, c, h, w]
        let encoded = if concat == ImageConcat::Diffusers { encoded } else { encoded.mul_scalar(concat.scale()) };
        let x = sample.permute([0, 2, 1, 3, 4]); // [b, f, c, h, w]
        let x = Tensor::cat(vec![x, encoded], 2).reshape([b * f, 2 * c, h, w]);
        let out = self.base.forward_frames(x, emb, context, f);
        let [_, oc, _, _] = out.dims();
        Ok(out.reshape([b, f, oc, h, w]).permute([0, 2, 1, 3, 4]))
    }
}

/// Keys of I2VGen-XL's own modules (around the 3-D UNet).
const OWN_KEYS: &str = r"^(image_latents_proj_in|image_latents_temporal_encoder|image_latents_context_embedding|context_embedding|fps_embedding)\.";

/// Renames of the file's `nn.Sequential` indices and diffusers' names to our fields.
pub const REMAP: &[(&str, &str)] = &[
    (r"^image_latents_proj_in\.(\d)\.", "image_latents_proj_in.conv$1."),
    (r"^image_latents_temporal_encoder\.attn1\.to_out\.0\.", "image_latents_temporal_encoder.attn1.to_out."),
    (r"^image_latents_temporal_encoder\.ff\.net\.0\.proj\.", "image_latents_temporal_encoder.ff_in."),
    (r"^image_latents_temporal_encoder\.ff\.net\.2\.", "image_latents_temporal_encoder.ff_out."),
    (r"^image_latents_context_embedding\.(\d)\.", "image_latents_context_embedding.conv$1."),
    (r"^(context_embedding|fps_embedding)\.(\d)\.", "$1.fc$2."),
];

/// Loads a diffusers `I2VGenXLUNet` `unet/` folder: the 3-D UNet and I2VGen-XL's own modules from the same
/// file, each checked complete.
pub fn load_i2vgen_xl_unet(dir: &Path, device: &Device) -> Result<(I2vgenXlUnet, LoadReport), ComponentError> {
    super::check_component_class(dir, "I2VGenXLUNet")?;
    let config: I2vgenXlUnetConfig = super::read_config(dir)?;
    let mut model = config
        .init(device)
        .map_err(|e| ComponentError::Config { path: dir.join("config.json"), message: e.to_string() })?;
    let weights = super::diffusers_weight_file(dir, "diffusion_pytorch_model", false)
        .ok_or_else(|| ComponentError::NoWeights { dir: dir.to_path_buf(), stem: "diffusion_pytorch_model".into() })?;
    let mut report = super::modelscope::load_unet3d_weights(&mut model.base, &weights, &[OWN_KEYS], "an I2VGenXLUNet")?;
    let own = LoadOptions {
        remap: REMAP,
        ignore_unused: &[
            r"^(conv_in|conv_out|conv_norm_out|time_embedding|transformer_in|down_blocks|up_blocks|mid_block)\.",
        ],
        expected: Some("an I2VGenXLUNet: its image and frame-rate conditioning"),
        ..LoadOptions::default()
    };
    let own_report = super::load::load_into(&mut model.own, &weights, &own)?;
    report.applied += own_report.applied;
    report.unused.extend(own_report.unused);
    Ok((model, report))
}

/// The UNet with the image latents entering `conv_in` one way or the other, as a denoiser.
#[derive(Clone, Copy, Debug)]
pub struct I2vgenXlDenoiser<'a> {
    pub unet: &'a I2vgenXlUnet,
    pub concat: ImageConcat,
}

/// As diffusers runs it ([`ImageConcat::Diffusers`]).
impl crate::pipelines::denoiser::VideoDenoiser for I2vgenXlUnet {
    fn predict(
        &self,
        x: Tensor<5>,
        timesteps: &[f64],
        cond: &crate::pipelines::denoiser::Conditioning,
        motion: crate::models::unet::Motion,
    ) -> Result<Tensor<5>, PipelineError> {
        I2vgenXlDenoiser { unet: self, concat: ImageConcat::Diffusers }.predict(x, timesteps, cond, motion)
    }

    fn latent_channels(&self) -> usize {
        self.in_channels
    }
}

/// I2VGen-XL as a denoiser: text, the CLIP image embedding as one image token [B, 1, D], the encoded image
/// latents to concatenate, and the frame rate, all required. Its frames always attend to each other
/// ([`crate::models::unet::Motion::Bypass`] is refused: I2VGen-XL has no per-image mode).
impl crate::pipelines::denoiser::VideoDenoiser for I2vgenXlDenoiser<'_> {
    fn predict(
        &self,
        x: Tensor<5>,
        timesteps: &[f64],
        cond: &crate::pipelines::denoiser::Conditioning,
        motion: crate::models::unet::Motion,
    ) -> Result<Tensor<5>, PipelineError> {
        if motion == crate::models::unet::Motion::Bypass {
            return Err(PipelineError::Data("I2VGen-XL cannot denoise frames as independent images".into()));
        }
        let missing = |what: &str| PipelineError::Data(format!("I2VGen-XL needs {what} (an image-to-video model)"));
        let image = cond.image_tokens.as_ref().ok_or_else(|| missing("the CLIP image embedding"))?;
        let latents = cond.concat_latents.clone().ok_or_else(|| missing("the encoded image latents"))?;
        let fps = cond.fps.ok_or_else(|| missing("the frame rate"))?;
        let [b, tokens, d] = image.dims();
        if tokens != 1 {
            return Err(PipelineError::Data(format!(
                "I2VGen-XL takes one CLIP image embedding per clip, got {tokens} image tokens"
            )));
        }
        let fps = vec![fps; x.dims()[0]];
        let embeddings = image.clone().reshape([b, d]);
        self.unet.forward_with(x, timesteps, &fps, latents, embeddings, cond.text.clone(), self.concat)
    }

    fn latent_channels(&self) -> usize {
        self.unet.in_channels
    }
}

/// I2VGen-XL as diffusers holds it (`ali-vilab/i2vgen-xl`): `unet/` (I2VGenXLUNet), `vae/`, `text_encoder/`
/// (OpenCLIP-H text as a transformers CLIPTextModel), `tokenizer/`, `image_encoder/`
/// (CLIPVisionModelWithProjection), `feature_extractor/` (CLIPImageProcessor: the pipeline uses its crop size
/// and normalisation) and `scheduler/` (DDIM).
#[derive(Debug)]
pub struct I2vgenXl {
    pub unet: I2vgenXlUnet,
    pub vae: super::vae::AutoencoderKl,
    pub text_encoder: super::clip::ClipTextModel,
    pub tokenizer: super::clip::ClipTokenizer,
    pub image_encoder: super::clip::vision::ClipVisionModelWithProjection,
    pub feature_extractor: super::clip::image::ClipImageProcessor,
    pub scheduler: crate::schedulers::DdimConfig,
    pub source: std::path::PathBuf,
}

/// The sub-folders of an I2VGen-XL diffusers folder.
pub const PARTS: [&str; 7] =
    ["unet", "vae", "text_encoder", "tokenizer", "image_encoder", "feature_extractor", "scheduler"];

/// Loads an I2VGen-XL diffusers folder (each component's safetensors, .bin or .fp16 variant); the parts are
/// checked against each other (text and image widths against the UNet's context, the VAE's latent channels
/// against the UNet's).
pub fn load_i2vgen_xl(path: &Path, device: &Device) -> Result<(I2vgenXl, Vec<LoadReport>), super::FolderError> {
    use super::FolderError;
    super::check_pipeline_folder(path, "I2VGenXLPipeline", "an I2VGen-XL", &PARTS)?;
    let component = |name| FolderError::component(path, name);
    let (unet, r_unet) = load_i2vgen_xl_unet(&path.join("unet"), device).map_err(component("unet"))?;
    let (vae, r_vae) = super::load_vae(&path.join("vae"), device).map_err(component("vae"))?;
    let (text_encoder, r_text) =
        super::load_clip_text_encoder(&path.join("text_encoder"), device).map_err(component("text_encoder"))?;
    let (image_encoder, r_image) =
        super::load_clip_image_encoder(&path.join("image_encoder"), device).map_err(component("image_encoder"))?;
    let tokenizer = super::clip::ClipTokenizer::from_dir(&path.join("tokenizer"))?;
    let processor_file = path.join("feature_extractor").join("preprocessor_config.json");
    let text = bounds::read_text(&processor_file, bounds::MAX_CONFIG_BYTES).map_err(|message| {
        FolderError::layout(path, format!("feature_extractor/preprocessor_config.json: {message}"))
    })?;
    let feature_extractor =
        super::clip::image::ClipImageProcessor::from_json(&text, "feature_extractor/preprocessor_config.json")
            .map_err(|e| FolderError::layout(path, e.to_string()))?;
    if feature_extractor.crop.is_none() {
        return Err(FolderError::layout(
            path,
            "feature_extractor/preprocessor_config.json: no crop_size (the pipeline resizes the image to it)",
        ));
    }
    let scheduler = super::read_scheduler_config(path)?;
    let context = unet.base.unet.cross_attention_dim().unwrap_or(0);
    let text_width = text_encoder.text_model.embeddings.token_embedding.weight.dims()[1];
    let image_width = image_encoder.visual_projection.weight.dims()[1];
    let latent_channels = vae.quant_conv.weight.dims()[0] / 2;
    let misfit = [
        (text_width != context).then(|| format!("the text encoder produces {text_width}-wide states")),
        (image_width != context).then(|| format!("the image encoder projects to {image_width}")),
    ];
    let misfit: Vec<String> = misfit.into_iter().flatten().collect();
    if !misfit.is_empty() {
        return Err(FolderError::layout(
            path,
            format!("the parts do not fit together: {}, the UNet attends to {context}-wide ones", misfit.join(" and ")),
        ));
    }
    if latent_channels != unet.in_channels {
        return Err(FolderError::layout(
            path,
            format!(
                "the parts do not fit together: the VAE makes {latent_channels}-channel latents, the UNet denoises {}",
                unet.in_channels
            ),
        ));
    }
    let model = I2vgenXl {
        unet,
        vae,
        text_encoder,
        tokenizer,
        image_encoder,
        feature_extractor,
        scheduler,
        source: path.to_path_buf(),
    };
    Ok((model, vec![r_unet, r_vae, r_text, r_image]))
}

impl I2vgenXl {
    /// The memory a guided sampling run of `shape` takes: the weights of every part and the UNet walk's
    /// activations (see [`crate::pipelines::memory::walk_estimate`]).
    pub fn estimate(
        &self,
        shape: crate::pipelines::memory::StageShape,
        cpu: bool,
    ) -> crate::pipelines::memory::Estimate {
        let beside = self.unet.base.temporal.num_params()
            + self.unet.own.num_params()
            + self.text_encoder.num_params()
            + self.image_encoder.num_params();
        crate::pipelines::memory::walk_estimate(&self.unet.base.unet, beside as u64, &self.vae, shape, cpu)
    }
}
