//! The I2VGen-XL family: its loader and I2VGen-XL Image to Video, a still image (a loaded picture, or the
//! candidate selector's anchor: "I4VGen anchor -> an image-to-video model") animated as diffusers'
//! `I2VGenXLPipeline` does it ([`crate::pipelines::i2vgen_xl`]).

use super::animatediff::stage::{check_estimate_memory, with_progress};
use super::animatediff::{IN_PROMPT, OUT_VIDEO, finish};
use super::loading::{load_cached, model_key};
use super::params::{GuidanceParams, with_group};
use super::values::{I2vModelValue, PromptValue, StillImage};
use super::{NodeKind, failed, model_path};
use crate::graph::{KindSpec, ParamSpec, ParamType, PathRole, PortSpec, PortType};
use crate::models::i2vgen_xl::{I2vgenXl, ImageConcat, load_i2vgen_xl};
use crate::pipelines::i2vgen_xl::{self as pipeline, I2vgenXlSettings, NEGATIVE_PROMPT};
use crate::pipelines::memory::StageShape;
use crate::pipelines::noise::SeededNoise;
use crate::runtime::{EvalContext, NodeError, NodeOutputs};
use crate::video::Video;

pub const LOAD_I2VGEN_XL: NodeKind = NodeKind {
    spec: KindSpec {
        id: "load_i2vgen_xl",
        title: "Load I2VGen-XL",
        category: "Models",
        version: 1,
        description: "Loads I2VGen-XL (an ali-vilab/i2vgen-xl diffusers folder) as an image-to-video model",
        inputs: &[],
        outputs: &[PortSpec::output("i2v_model", PortType::I2vModel, "I2VGen-XL")],
        params: &[ParamSpec::new(
            "path",
            ParamType::Path { default: "", role: PathRole::Model },
            "The diffusers folder (unet/, vae/, text_encoder/, tokenizer/, image_encoder/, feature_extractor/, \
             scheduler/), relative to the models directory",
        )],
        is_output: false,
        pick: None,
        more: None,
    },
    evaluate: load,
    check: None,
};

fn load(ctx: &mut EvalContext<'_>) -> Result<NodeOutputs, NodeError> {
    let path = model_path(ctx, "path")?;
    let device = ctx.device.clone();
    let loaded = load_cached(ctx, model_key("i2vgen_xl", &path, ""), &path, || {
        load_i2vgen_xl(&path, &device).map_err(|e| e.to_string())
    })?;
    let step = loaded.model.size_step();
    ctx.note(format!("I2VGen-XL image-to-video model (sizes in multiples of {step} pixels)"));
    Ok(NodeOutputs::new().with("i2v_model", loaded))
}

const OWN: [ParamSpec; 7] = [
    ParamSpec::new("frames", ParamType::Int { default: 16, min: 1, max: 64 }, "Frames of the clip (I2VGen-XL: 16)"),
    ParamSpec::new(
        "width",
        ParamType::Int { default: 1280, min: 64, max: 2048 },
        "Width in pixels: the image is scaled to cover the size and centre-cropped (I2VGen-XL: 1280)",
    )
    .multiple_of(8, "the VAE downsamples by 8"),
    ParamSpec::new("height", ParamType::Int { default: 704, min: 64, max: 2048 }, "Height in pixels (I2VGen-XL: 704)")
        .multiple_of(8, "the VAE downsamples by 8"),
    ParamSpec::new(
        "fps",
        ParamType::Float { default: 16.0, min: 1.0, max: 60.0 },
        "The frame rate the motion is conditioned on, and the clip's playback rate (I2VGen-XL: 16)",
    ),
    ParamSpec::new(
        "default_negative",
        ParamType::Bool { default: true },
        "Where the prompt's negative is empty, use VGen's negative prompt (\"Distorted, discontinuous, Ugly, ...\")",
    ),
    ParamSpec::new(
        "image_concat",
        ParamType::Choice { default: "diffusers", options: &["diffusers", "vgen"] },
        "How the encoded image enters the UNet: diffusers: once, as diffusers' I2VGenXLPipeline; vgen: twice, as \
         VGen's code that trained the weights",
    ),
    ParamSpec::new(
        "decode_chunk",
        ParamType::Int { default: 1, min: 1, max: 64 },
        "Frames the VAE decodes at a time (more is faster and takes more memory)",
    ),
];
/// I2VGen-XL's reference settings: 50 DDIM steps, guidance 9.
const PARAMS: [ParamSpec; 11] = with_group(OWN, GuidanceParams::specs_with(50, 9.0));

pub const I2VGEN_XL: NodeKind = NodeKind {
    spec: KindSpec {
        id: "i2vgen_xl",
        title: "I2VGen-XL Image to Video",
        category: "Image to Video",
        version: 1,
        description: "Animates a still image with I2VGen-XL (the image's CLIP embedding and latent condition every \
                      frame)",
        inputs: &[
            PortSpec::required("i2v_model", PortType::I2vModel, "An image-to-video model: Load I2VGen-XL"),
            IN_PROMPT,
            PortSpec::required("image", PortType::Image, "The image to animate: a loaded image or the selected anchor"),
        ],
        outputs: &[OUT_VIDEO],
        params: &PARAMS,
        is_output: false,
        pick: None,
        more: None,
    },
    evaluate: animate,
    check: None,
};

/// The node's settings, each checked against the model (sizes in its step) before any work.
fn settings(ctx: &EvalContext<'_>, model: &I2vgenXl) -> Result<(I2vgenXlSettings, u64), NodeError> {
    let guidance = GuidanceParams::read(ctx)?;
    let step = model.size_step();
    let side = |name: &str| -> Result<u32, NodeError> {
        let value = ctx.param_u64(name)? as u32;
        if value.is_multiple_of(step) {
            return Ok(value);
        }
        let down = (value / step * step).max(step);
        Err(NodeError::Param {
            name: name.into(),
            message: format!(
                "{value} is not a multiple of {step} (this model's VAE and UNet downsampling): use {down} or {}",
                down + step
            ),
        })
    };
    let settings = I2vgenXlSettings {
        width: side("width")?,
        height: side("height")?,
        frames: ctx.param_u64("frames")? as usize,
        fps: ctx.param_f64("fps")?,
        steps: guidance.steps,
        guidance_scale: guidance.cfg,
        decode_chunk: ctx.param_u64("decode_chunk")? as usize,
        cfg_batch: guidance.cfg_batch,
        image_concat: {
            let name = ctx.param_str("image_concat")?;
            ImageConcat::parse(name).ok_or_else(|| NodeError::Param {
                name: "image_concat".into(),
                message: format!("'{name}' is not a choice of this parameter (diffusers, vgen)"),
            })?
        },
    };
    Ok((settings, guidance.seed))
}

fn animate(ctx: &mut EvalContext<'_>) -> Result<NodeOutputs, NodeError> {
    let model = ctx.input::<I2vModelValue>("i2v_model")?.clone();
    let prompt = ctx.input::<PromptValue>("prompt")?.clone();
    let image = ctx.input::<StillImage>("image")?.clone();
    let m = model.model.as_ref();
    let (settings, seed) = settings(ctx, m)?;
    let down = m.vae.downsampling();
    let shape = StageShape {
        clips: 1,
        frames: settings.frames,
        height: settings.height as usize / down,
        width: settings.width as usize / down,
        cfg_batch: settings.cfg_batch,
    };
    let cpu = crate::models::is_cpu(ctx.device);
    check_estimate_memory(ctx, &|shape| m.estimate(shape, cpu), shape, Some("frames"), true)?;
    let negative = if prompt.negative.trim().is_empty() && ctx.param_bool("default_negative")? {
        NEGATIVE_PROMPT
    } else {
        prompt.negative.as_str()
    };
    let device = ctx.device.clone();
    let mut noise = SeededNoise::new(seed);
    let conditioning =
        pipeline::conditioning(m, &image.image, &prompt.positive, negative, &settings, &mut noise, &device).map_err(
            |e| match e {
                crate::pipelines::PipelineError::Data(message) => {
                    NodeError::Failed(format!("image ({}): {message}", image.source))
                }
                other => failed(other),
            },
        )?;
    let room = m.tokenizer.max_length.saturating_sub(2);
    for (what, dropped) in [("prompt", conditioning.truncated), ("negative prompt", conditioning.truncated_negative)] {
        if dropped > 0 {
            ctx.note(format!(
                "the {what} is {} CLIP tokens, {dropped} more than the {room} that fit: the end was cut off",
                room + dropped
            ));
        }
    }
    let latents =
        with_progress(ctx, |observer| pipeline::sample(m, &conditioning, &settings, &mut noise, &device, observer))?;
    let stored = crate::pipelines::Latents::from_tensor(&latents).map_err(failed)?;
    if !stored.is_finite() {
        return Err(NodeError::Failed(
            "the latents are no longer finite numbers (NaN or infinity): lower the guidance".to_string(),
        ));
    }
    let frames = crate::pipelines::i4vgen::images_of(&m.vae.decode_video_scaled(latents, settings.decode_chunk));
    let video = Video { frames, fps: settings.fps, prompt: prompt.positive.clone(), seed, latents: Some(stored) };
    finish(ctx, video)
}
