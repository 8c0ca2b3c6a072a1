//! The SD 1.5 + AnimateDiff family: the checkpoint and motion-module loaders, plain text-to-video sampling
//! (the baseline I4VGen improves on), and what the family's generation nodes share ([`stage`]).

pub(crate) mod stage;

use super::loading::{load_cached, model_key};
use super::params::{FRAMES, HEIGHT, SamplerParams, WIDTH, pixels, with_group};
use super::values::{CheckpointValue, Loaded, MotionValue, PromptValue, VideoModelValue};
use super::{NodeKind, failed, model_path};
use crate::graph::{KindSpec, ParamSpec, ParamType, PathRole, PortSpec, PortType};
use crate::models::stable_diffusion::load_stable_diffusion;
use crate::models::{MotionLoadOptions, load_motion_module};
use crate::pipelines::denoiser::AnimateDiffModel;
use crate::pipelines::i4vgen;
use crate::pipelines::memory::StageShape;
use crate::pipelines::noise::{NoiseSource, SeededNoise};
use crate::runtime::{EvalContext, NodeError, NodeOutputs};
use crate::schedulers::DdimConfig;
use crate::video::Video;
use stage::{check_memory, clip_of, encode, frames, guided, video_unet, with_progress};

pub(crate) const IN_CHECKPOINT: PortSpec =
    PortSpec::required("model", PortType::Checkpoint, "Stable Diffusion 1.5 model");
pub(crate) const IN_MOTION: PortSpec =
    PortSpec::required("motion", PortType::MotionModule, "AnimateDiff motion modules");
pub(crate) const IN_PROMPT: PortSpec = PortSpec::required("prompt", PortType::Prompt, "Positive and negative prompt");
pub(crate) const OUT_VIDEO: PortSpec = PortSpec::output("video", PortType::Video, "The clip: frames and latents");

/// The family's scheduler configuration (the official AnimateDiff inference config); the node's
/// [`SamplerParams`] set the betas and steps.
pub(crate) fn scheduler_config() -> DdimConfig {
    DdimConfig::animatediff()
}

pub const LOAD_CHECKPOINT: NodeKind = NodeKind {
    spec: KindSpec {
        id: "load_checkpoint",
        title: "Load SD 1.5 Checkpoint",
        category: "Models",
        version: 2,
        description: "Loads a Stable Diffusion 1.5 model (single file or diffusers folder)",
        inputs: &[],
        outputs: &[PortSpec::output("model", PortType::Checkpoint, "UNet, VAE, text encoder, tokenizer")],
        params: &[ParamSpec::new(
            "path",
            ParamType::Path { default: "", role: PathRole::Model },
            "Checkpoint file or diffusers folder, relative to the models directory",
        )],
        is_output: false,
        pick: None,
        more: None,
    },
    evaluate: load_checkpoint,
    check: None,
};

fn load_checkpoint(ctx: &mut EvalContext<'_>) -> Result<NodeOutputs, NodeError> {
    let path = model_path(ctx, "path")?;
    let device = ctx.device.clone();
    let value: CheckpointValue = load_cached(ctx, model_key("sd", &path, ""), &path, || {
        let (model, reports) = load_stable_diffusion(&path, &device).map_err(|e| e.to_string())?;
        Ok((model, reports.into_iter().map(|(_, r)| r).collect()))
    })?;
    Ok(NodeOutputs::new().with("model", value))
}

pub const LOAD_MOTION_MODULE: NodeKind = NodeKind {
    spec: KindSpec {
        id: "load_motion_module",
        title: "Load Motion Module",
        category: "Models",
        version: 2,
        description: "Loads AnimateDiff motion modules (v1, v2 or v3)",
        inputs: &[],
        outputs: &[PortSpec::output("motion", PortType::MotionModule, "Motion modules")],
        params: &[
            ParamSpec::new(
                "path",
                ParamType::Path { default: "", role: PathRole::Model },
                "Motion module file or MotionAdapter folder, relative to the models directory",
            ),
            ParamSpec::new(
                "version",
                ParamType::Choice { default: "auto", options: &["auto", "v1", "v2", "v3"] },
                "Motion module version (auto: detect from the weights)",
            ),
        ],
        is_output: false,
        pick: None,
        more: None,
    },
    evaluate: load_motion_module_node,
    check: None,
};

fn load_motion_module_node(ctx: &mut EvalContext<'_>) -> Result<NodeOutputs, NodeError> {
    let path = model_path(ctx, "path")?;
    let wanted = ctx.param_str("version")?.to_string();
    let device = ctx.device.clone();
    let value: MotionValue = load_cached(ctx, model_key("motion", &path, ""), &path, || {
        let (adapter, report) =
            load_motion_module(&path, &device, &MotionLoadOptions::default()).map_err(|e| e.to_string())?;
        Ok((adapter, vec![report]))
    })?;
    let found = value.model.version;
    if wanted != "auto" && !found.name().starts_with(&format!("{wanted} ")) {
        return Err(NodeError::Param {
            name: "version".to_string(),
            message: format!(
                "{wanted} was chosen, but {} holds a {} motion module (read from its weights); choose {} or auto",
                path.display(),
                found.name(),
                found.name().split(' ').next().unwrap_or("auto")
            ),
        });
    }
    ctx.note(format!("AnimateDiff {} motion module, at most {} frames", found.name(), value.model.max_seq_length));
    Ok(NodeOutputs::new().with("motion", value))
}

pub const ANIMATEDIFF_MODEL: NodeKind = NodeKind {
    spec: KindSpec {
        id: "animatediff_model",
        title: "AnimateDiff Video Model",
        category: "Models",
        version: 1,
        description: "An SD 1.5 checkpoint with AnimateDiff motion modules, as a video model for the nodes that take any family",
        inputs: &[IN_CHECKPOINT, IN_MOTION],
        outputs: &[PortSpec::output("video_model", PortType::VideoModel, "SD 1.5 + AnimateDiff")],
        params: &[],
        is_output: false,
        pick: None,
        more: None,
    },
    evaluate: animatediff_model,
    check: None,
};

fn animatediff_model(ctx: &mut EvalContext<'_>) -> Result<NodeOutputs, NodeError> {
    let checkpoint = ctx.input::<CheckpointValue>("model")?.clone();
    let motion = ctx.input::<MotionValue>("motion")?.clone();
    let unet = video_unet(&checkpoint, Some(&motion))?;
    let model = AnimateDiffModel { sd: checkpoint.model.clone(), unet };
    let key = format!("animatediff:{}+{}", checkpoint.key, motion.key);
    let value: VideoModelValue = Loaded { model: std::sync::Arc::new(model), key };
    Ok(NodeOutputs::new().with("video_model", value))
}

/// The inputs every video node of the family has.
pub(crate) struct VideoInputs {
    pub checkpoint: CheckpointValue,
    pub motion: MotionValue,
    pub prompt: PromptValue,
}

pub(crate) fn video_inputs(ctx: &EvalContext<'_>) -> Result<VideoInputs, NodeError> {
    Ok(VideoInputs {
        checkpoint: ctx.input::<CheckpointValue>("model")?.clone(),
        motion: ctx.input::<MotionValue>("motion")?.clone(),
        prompt: ctx.input::<PromptValue>("prompt")?.clone(),
    })
}

/// A video node's result: shown as a preview and put on the `video` output.
pub(crate) fn finish(ctx: &mut EvalContext<'_>, video: Video) -> Result<NodeOutputs, NodeError> {
    ctx.preview("video", video.clone());
    Ok(NodeOutputs::new().with("video", video))
}

const TEXT_TO_VIDEO_PARAMS: [ParamSpec; 10] = with_group([FRAMES, WIDTH, HEIGHT], SamplerParams::SPECS);

pub const TEXT_TO_VIDEO: NodeKind = NodeKind {
    spec: KindSpec {
        id: "text_to_video",
        title: "Text to Video",
        category: "Sampling",
        version: 2,
        description: "Plain AnimateDiff text-to-video sampling from noise (the baseline I4VGen improves on)",
        inputs: &[IN_CHECKPOINT, IN_MOTION, IN_PROMPT],
        outputs: &[OUT_VIDEO],
        params: &TEXT_TO_VIDEO_PARAMS,
        is_output: false,
        pick: None,
        more: None,
    },
    evaluate: text_to_video,
    check: None,
};

fn text_to_video(ctx: &mut EvalContext<'_>) -> Result<NodeOutputs, NodeError> {
    let inputs = video_inputs(ctx)?;
    let unet = video_unet(&inputs.checkpoint, Some(&inputs.motion))?;
    let frames = frames(ctx, &unet)?;
    let (width, height) = (pixels(ctx, "width")?, pixels(ctx, "height")?);
    let sampler = SamplerParams::read(ctx)?;
    let seed = sampler.seed;
    let ddim = sampler.scheduler(scheduler_config())?;
    let device = ctx.device.clone();
    let shape = StageShape { clips: 1, frames, height: height / 8, width: width / 8, cfg_batch: sampler.cfg_batch };
    check_memory(ctx, &unet, &inputs.checkpoint, shape, Some("frames"), true)?;
    let text = encode(ctx, &inputs.checkpoint, &inputs.prompt)?;
    let channels = unet.unet.in_channels();
    let noise_shape = [1, channels, frames, height / 8, width / 8];
    let noise = SeededNoise::new(seed).normal("text_to_video", noise_shape, &device).map_err(|e| failed(e.into()))?;
    let model = guided(&unet, &text, sampler.cfg, shape);
    let z = with_progress(ctx, |observer| i4vgen::text_to_video(&model, &ddim, noise, observer))?;
    let video = clip_of(&inputs.checkpoint, &z, &inputs.prompt, seed)?;
    finish(ctx, video)
}
