//! Nodes that run on any family's video model ([`VideoModel`]): T2V Sampler, plain text-to-video sampling
//! with the model's own noise schedule. (TI2V-Zero Animator, in [`super::ti2v_zero`], takes one too.)
//!
//! [`VideoModel`]: crate::pipelines::denoiser::VideoModel

use super::animatediff::stage::{check_model_memory, decode_clip, encode_with, with_progress};
use super::animatediff::{IN_PROMPT, OUT_VIDEO, finish};
use super::params::{FRAMES, GuidanceParams, HEIGHT, WIDTH, pixels, with_group};
use super::values::{PromptValue, VideoModelValue};
use super::{NodeKind, failed};
use crate::graph::{KindSpec, ParamSpec, PortSpec, PortType};
use crate::pipelines::denoiser::VideoModel;
use crate::pipelines::i4vgen::{self, Guided};
use crate::pipelines::memory::StageShape;
use crate::pipelines::noise::{NoiseSource, SeededNoise};
use crate::runtime::{EvalContext, NodeError, NodeOutputs};

/// The input every family-independent video node takes.
pub(crate) const IN_VIDEO_MODEL: PortSpec = PortSpec::required(
    "video_model",
    PortType::VideoModel,
    "A text-to-video model: Load ModelScope T2V, or AnimateDiff Video Model (an SD 1.5 checkpoint and motion modules)",
);

/// Refuses more frames per clip than `family` takes (the `frames` parameter), before any work.
pub(crate) fn check_frames(family: &dyn VideoModel, frames: usize) -> Result<(), NodeError> {
    match family.max_frames() {
        Some(most) if frames > most => Err(NodeError::Param {
            name: "frames".into(),
            message: format!("{frames} frames; {} takes at most {most} per clip", family.family()),
        }),
        _ => Ok(()),
    }
}

const PARAMS: [ParamSpec; 7] = with_group([FRAMES, WIDTH, HEIGHT], GuidanceParams::specs_with(25, 9.0));

pub const T2V_SAMPLER: NodeKind = NodeKind {
    spec: KindSpec {
        id: "t2v_sampler",
        title: "T2V Sampler",
        category: "Sampling",
        version: 1,
        description: "Text-to-video sampling from noise with any video model (DDIM with the model's noise schedule)",
        inputs: &[IN_VIDEO_MODEL, IN_PROMPT],
        outputs: &[OUT_VIDEO],
        params: &PARAMS,
        is_output: false,
        pick: None,
        more: None,
    },
    evaluate: sample,
    check: None,
};

fn sample(ctx: &mut EvalContext<'_>) -> Result<NodeOutputs, NodeError> {
    let model = ctx.input::<VideoModelValue>("video_model")?.clone();
    let prompt = ctx.input::<PromptValue>("prompt")?.clone();
    let family = model.model.as_ref();
    let frames = ctx.param_u64("frames")? as usize;
    check_frames(family, frames)?;
    let (width, height) = (pixels(ctx, "width")?, pixels(ctx, "height")?);
    let guidance = GuidanceParams::read(ctx)?;
    let mut ddim = crate::schedulers::Ddim::new(family.scheduler())
        .map_err(|e| NodeError::Failed(format!("{}'s scheduler: {e}", family.family())))?;
    ddim.set_timesteps(guidance.steps)
        .map_err(|e| NodeError::Param { name: "steps".into(), message: e.to_string() })?;
    let text = encode_with(ctx, family, &prompt)?;
    let device = ctx.device.clone();
    let channels = family.denoiser().latent_channels();
    // The VAE's downsampling, from the model (8 for SD's).
    let factor = family.vae().downsampling();
    let stage =
        StageShape { clips: 1, frames, height: height / factor, width: width / factor, cfg_batch: guidance.cfg_batch };
    check_model_memory(ctx, family, stage, Some("frames"), true)?;
    let shape = [1, channels, frames, height / factor, width / factor];
    let noise = SeededNoise::new(guidance.seed).normal("t2v_sampler", shape, &device).map_err(|e| failed(e.into()))?;
    let guided = Guided::new(family.denoiser(), &text, guidance.cfg).with_cfg_batch(guidance.cfg_batch);
    let z = with_progress(ctx, |observer| i4vgen::text_to_video(&guided, &ddim, noise, observer))?;
    let video = decode_clip(family.vae(), &z, &prompt, guidance.seed)?;
    finish(ctx, video)
}
