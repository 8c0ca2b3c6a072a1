//! TI2V-Zero Animator: a still image (a loaded picture, or the candidate selector's anchor: "I4VGen anchor
//! -> TI2V-Zero") animated by repeat-and-slide over the family's frozen text-to-video model
//! ([`crate::pipelines::ti2v_zero`]). Shows the clip after every new frame.

use std::cell::RefCell;
use std::ops::ControlFlow;

use super::animatediff::stage::{check_model_memory, encode_with};
use super::animatediff::{IN_PROMPT, OUT_VIDEO, finish};
use super::params::{GuidanceParams, with_group};
use super::values::{PromptValue, StillImage, VideoModelValue};
use super::video_model::{IN_VIDEO_MODEL, check_frames};
use super::{NodeKind, failed};
use crate::graph::{KindSpec, ParamSpec, ParamType, PortSpec, PortType};
use crate::pipelines::i4vgen::{self, Guided, StageProgress};
use crate::pipelines::memory::StageShape;
use crate::pipelines::noise::SeededNoise;
use crate::pipelines::ti2v_zero::{ModelScopeDdim, Ti2vZeroOutput, Ti2vZeroSettings, ti2v_zero_with};
use crate::pipelines::{Latents, PipelineError};
use crate::runtime::{EvalContext, NodeError, NodeOutputs};
use crate::video::Video;

const OWN: [ParamSpec; 3] = [
    ParamSpec::new(
        "frames",
        ParamType::Int { default: 16, min: 2, max: 64 },
        "Frames of each clip the video model sees: the queue holds one fewer (TI2V-Zero uses 16)",
    ),
    ParamSpec::new(
        "new_frames",
        ParamType::Int { default: 15, min: 1, max: 256 },
        "Frames generated after the image, one at a time (the clip has one more: the image first)",
    ),
    ParamSpec::new(
        "resample",
        ParamType::Int { default: 4, min: 0, max: 16 },
        "Resampling rounds per step: more keeps the new frame closer to the queue (TI2V-Zero uses 4 at 10 steps)",
    ),
];
/// TI2V-Zero's demo settings: 10 DDIM steps, guidance 9.
const PARAMS: [ParamSpec; 7] = with_group(OWN, GuidanceParams::specs_with(10, 9.0));

pub const TI2V_ZERO: NodeKind = NodeKind {
    spec: KindSpec {
        id: "ti2v_zero",
        title: "TI2V-Zero Animator",
        category: "Image to Video",
        version: 1,
        description: "Animates a still image with a frozen text-to-video model by repeat-and-slide (TI2V-Zero)",
        inputs: &[
            IN_VIDEO_MODEL,
            IN_PROMPT,
            PortSpec::required("image", PortType::Image, "The first frame: a loaded image or the selected anchor"),
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

struct Params {
    settings: Ti2vZeroSettings,
    sampler: GuidanceParams,
}

impl Params {
    fn read(ctx: &EvalContext<'_>) -> Result<Self, NodeError> {
        let n = |name: &str| ctx.param_u64(name).map(|v| v as usize);
        let settings =
            Ti2vZeroSettings { frames: n("frames")?, new_frames: n("new_frames")?, resample: n("resample")? };
        Ok(Params { settings, sampler: GuidanceParams::read(ctx)? })
    }
}

/// The clip so far: decoded frames in [-1, 1] as images, and their latents (the image's posterior mean, then
/// each new frame's), so that a regenerator can continue from it.
fn clip(
    out: &Ti2vZeroOutput,
    first: &burn::tensor::Tensor<5>,
    prompt: &str,
    seed: u64,
) -> Result<Video, PipelineError> {
    let pixels: Vec<_> = out.frames.iter().map(|f| f.clone().add_scalar(1.0).div_scalar(2.0).clamp(0.0, 1.0)).collect();
    let frames = i4vgen::images_of(&burn::tensor::Tensor::stack(pixels, 2));
    let mut latents = vec![first.clone()];
    latents.extend(out.new_latents.iter().cloned());
    let latents = Latents::from_tensor(&burn::tensor::Tensor::cat(latents, 2))?;
    Ok(Video { frames, fps: 8.0, prompt: prompt.to_string(), seed, latents: Some(latents) })
}

fn animate(ctx: &mut EvalContext<'_>) -> Result<NodeOutputs, NodeError> {
    let model = ctx.input::<VideoModelValue>("video_model")?.clone();
    let prompt = ctx.input::<PromptValue>("prompt")?.clone();
    let image = ctx.input::<StillImage>("image")?.clone();
    let params = Params::read(ctx)?;
    let Ti2vZeroSettings { frames, .. } = params.settings;
    let family = model.model.as_ref();
    check_frames(family, frames)?;
    let device = ctx.device.clone();
    let vae = family.vae();
    let pixels = i4vgen::pixels_of(&image.image, &device)
        .map_err(|e| NodeError::Failed(format!("image ({}): {e}", image.source)))?;
    let first = vae.encode_scaled(pixels.clone());
    let [_, c, h, w] = first.dims();
    let shape = StageShape { clips: 1, frames, height: h, width: w, cfg_batch: params.sampler.cfg_batch };
    check_model_memory(ctx, family, shape, Some("frames"), false)?;
    // The family's trained noise schedule, with ModelScope's timesteps and DDIM step.
    let schedule = crate::schedulers::Ddim::new(family.scheduler())
        .map_err(|e| NodeError::Failed(format!("{}'s scheduler: {e}", family.family())))?;
    let ddim = ModelScopeDdim::new(schedule.alphas_cumprod.clone(), params.sampler.steps)
        .map_err(|e| NodeError::Param { name: "steps".into(), message: e.to_string() })?;
    let text = encode_with(ctx, family, &prompt)?;
    let guided = Guided::new(family.denoiser(), &text, params.sampler.cfg).with_cfg_batch(params.sampler.cfg_batch);
    let mut noise = SeededNoise::new(params.sampler.seed);
    let first = first.reshape([1, c, 1, h, w]);
    let (positive, seed) = (prompt.positive.clone(), params.sampler.seed);
    // Progress after every DDIM step and the clip so far after every new frame: both report through the
    // node's context, one at a time.
    let shared = RefCell::new(&mut *ctx);
    let mut observer = |p: StageProgress<'_>| match shared.borrow_mut().progress(p.done as u64, p.total as u64) {
        Ok(()) => ControlFlow::Continue(()),
        Err(_) => ControlFlow::Break(()),
    };
    let mut on_frame = |so_far: &Ti2vZeroOutput| {
        if let Ok(video) = clip(so_far, &first, &positive, seed) {
            shared.borrow_mut().preview("video", video);
        }
    };
    let out = ti2v_zero_with(&guided, vae, &ddim, pixels, params.settings, &mut noise, &mut observer, &mut on_frame)
        .map_err(failed)?;
    let video = clip(&out, &first, &positive, seed).map_err(failed)?;
    finish(ctx, video)
}
