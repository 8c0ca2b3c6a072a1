//! The I4VGen stages as nodes: T2I Candidates (stage 1: N anchor candidates from the prompt), NI-VSDS
//! Animator (stage 3: the anchor's static video animated by noise-invariant video score distillation) and
//! Regenerator (stage 4: the video noised and denoised again for detail). The candidate selector (stage 2)
//! is with the reward model ([`super::reward`]). Each decodes its result, so every intermediate can be seen.

use std::sync::Arc;

use super::animatediff::stage::{
    check_memory, clip_of, encode, frames, guided, video_unet, with_progress, with_progress_part,
};
use super::animatediff::{IN_CHECKPOINT, IN_MOTION, IN_PROMPT, OUT_VIDEO, finish, scheduler_config, video_inputs};
use super::params::{FRAMES, HEIGHT, SamplerParams, WIDTH, pixels, with_group};
use super::values::{Candidates, CheckpointValue, PromptValue, StillImage};
use super::{NodeKind, failed};
use crate::graph::{KindSpec, ParamSpec, ParamType, PortSpec, PortType};
use crate::pipelines::i4vgen;
use crate::pipelines::memory::StageShape;
use crate::pipelines::noise::{NoiseSource, SeededNoise};
use crate::pipelines::{Latents, PipelineError};
use crate::runtime::{EvalContext, NodeError, NodeOutputs};
use crate::video::Video;

const COUNT: ParamSpec = ParamSpec::new(
    "count",
    ParamType::Int { default: 16, min: 1, max: 64 },
    "Number of candidates (the reference uses one per video frame)",
);
const BATCHES: ParamSpec = ParamSpec::new(
    "batches",
    ParamType::Int { default: 1, min: 1, max: 16 },
    "Batches of `count` candidates; batch k draws its noise from seed + k, so raising it (\"more candidates\") \
     keeps every earlier candidate as it was",
);
const CANDIDATES_PARAMS: [ParamSpec; 11] = with_group([COUNT, WIDTH, HEIGHT, BATCHES], SamplerParams::SPECS);

pub const T2I_CANDIDATES: NodeKind = NodeKind {
    spec: KindSpec {
        id: "t2i_candidates",
        title: "T2I Candidates",
        category: "I4VGen",
        version: 2,
        description: "Generates N candidate anchor images from the prompt with SD 1.5 (motion modules bypassed)",
        inputs: &[IN_CHECKPOINT, IN_PROMPT],
        outputs: &[PortSpec::output("candidates", PortType::Candidates, "Candidate images and latents")],
        params: &CANDIDATES_PARAMS,
        is_output: false,
        pick: None,
        more: Some("batches"),
    },
    evaluate: candidates,
    check: None,
};

/// T2I Candidates' parameters.
struct CandidatesParams {
    count: usize,
    batches: usize,
    width: usize,
    height: usize,
    sampler: SamplerParams,
}

impl CandidatesParams {
    fn read(ctx: &EvalContext<'_>) -> Result<Self, NodeError> {
        Ok(CandidatesParams {
            count: ctx.param_u64("count")? as usize,
            batches: ctx.param_u64("batches")? as usize,
            width: pixels(ctx, "width")?,
            height: pixels(ctx, "height")?,
            sampler: SamplerParams::read(ctx)?,
        })
    }
}

fn candidates(ctx: &mut EvalContext<'_>) -> Result<NodeOutputs, NodeError> {
    let checkpoint = ctx.input::<CheckpointValue>("model")?.clone();
    let prompt = ctx.input::<PromptValue>("prompt")?.clone();
    let params = CandidatesParams::read(ctx)?;
    let count = params.count;
    if count == 0 {
        return Err(NodeError::Param { name: "count".into(), message: PipelineError::NoCandidates.to_string() });
    }
    let (width, height) = (params.width, params.height);
    let seed = params.sampler.seed;
    let ddim = params.sampler.scheduler(scheduler_config())?;
    // Plain SD 1.5: the video UNet with no motion modules treats each candidate as a one-frame clip.
    let unet = video_unet(&checkpoint, None)?;
    // The candidates are one batch of `count` images, as the frames of a clip are.
    let shape = StageShape {
        clips: 1,
        frames: count,
        height: height / 8,
        width: width / 8,
        cfg_batch: params.sampler.cfg_batch,
    };
    check_memory(ctx, &unet, &checkpoint, shape, Some("count"), true)?;
    let text = encode(ctx, &checkpoint, &prompt)?;
    let channels = unet.unet.in_channels();
    let device = ctx.device.clone();
    let model = guided(&unet, &text, params.sampler.cfg, shape);
    let batches = params.batches.max(1);
    let mut parts = Vec::with_capacity(batches);
    for batch in 0..batches {
        // One draw of [1, C, N, h, w], as the reference draws the video's initial latent for its N frames;
        // batch k from seed + k.
        let noise = SeededNoise::new(batch_seed(seed, batch))
            .normal("candidates", [1, channels, count, height / 8, width / 8], &device)
            .map_err(|e| failed(e.into()))?;
        parts.push(with_progress_part(ctx, (batch, batches), |observer| {
            i4vgen::candidates(&model, &ddim, noise, observer)
        })?);
    }
    let latents = burn::tensor::Tensor::cat(parts, 0);
    let images: Vec<Arc<image::RgbImage>> =
        i4vgen::images_of(&i4vgen::decode(&checkpoint.model.vae, latents.clone())).into_iter().map(Arc::new).collect();
    let latents = Latents::from_tensor(&latents).map_err(failed)?;
    ctx.preview("candidates", images.clone());
    let value = Candidates { latents, images, prompt: prompt.positive.clone(), seed };
    Ok(NodeOutputs::new().with("candidates", value))
}

/// The seed of candidate batch `batch` (the first is the node's seed), within the seed range.
pub fn batch_seed(seed: u64, batch: usize) -> u64 {
    (seed + batch as u64) % (crate::graph::params::MAX_SEED + 1)
}

const NI_VSDS_OWN: [ParamSpec; 3] = [
    FRAMES,
    ParamSpec::new(
        "p_ni_vsds",
        ParamType::Float { default: 0.6, min: 0.0, max: 1.0 },
        "Fraction of the schedule used: floor(steps * p) + 1 iterations over the first timesteps",
    ),
    ParamSpec::new(
        "step_sizes",
        ParamType::FloatList { default: &[10.0, 10.0, 10.0, 1.0], min: 0.0, max: 1000.0 },
        "Step size per iteration; the last entry repeats for the remaining iterations",
    ),
];
const NI_VSDS_PARAMS: [ParamSpec; 10] = with_group(NI_VSDS_OWN, SamplerParams::SPECS);

pub const NI_VSDS: NodeKind = NodeKind {
    spec: KindSpec {
        id: "ni_vsds",
        title: "NI-VSDS Animator",
        category: "I4VGen",
        version: 2,
        description: "Animates a static video of the anchor with noise-invariant video score distillation",
        inputs: &[
            IN_CHECKPOINT,
            IN_MOTION,
            IN_PROMPT,
            PortSpec::required("anchor", PortType::Image, "The anchor image"),
        ],
        outputs: &[OUT_VIDEO],
        params: &NI_VSDS_PARAMS,
        is_output: false,
        pick: None,
        more: None,
    },
    evaluate: ni_vsds,
    check: None,
};

/// NI-VSDS Animator's parameters (the frame count is read against the motion module's limit).
struct NiVsdsParams {
    p: f64,
    step_sizes: Vec<f64>,
    sampler: SamplerParams,
}

impl NiVsdsParams {
    fn read(ctx: &EvalContext<'_>) -> Result<Self, NodeError> {
        Ok(NiVsdsParams {
            p: ctx.param_f64("p_ni_vsds")?,
            step_sizes: ctx.param_f64_list("step_sizes")?,
            sampler: SamplerParams::read(ctx)?,
        })
    }
}

fn ni_vsds(ctx: &mut EvalContext<'_>) -> Result<NodeOutputs, NodeError> {
    let inputs = video_inputs(ctx)?;
    let anchor = ctx.input::<StillImage>("anchor")?.clone();
    let unet = video_unet(&inputs.checkpoint, Some(&inputs.motion))?;
    let frames = frames(ctx, &unet)?;
    let params = NiVsdsParams::read(ctx)?;
    let seed = params.sampler.seed;
    let ddim = params.sampler.scheduler(scheduler_config())?;
    let device = ctx.device.clone();
    // The anchor's latent: a candidate brings its own; an image from a file is encoded (anchor from an image).
    let latent = match &anchor.latent {
        Some(latent) => latent.to_tensor(&device),
        None => i4vgen::encode_image(&inputs.checkpoint.model.vae, &anchor.image, &device)
            .map_err(|e| NodeError::Failed(format!("anchor image ({}): {e}", anchor.source)))?,
    };
    let [_, _, _, h, w] = latent.dims();
    let shape = StageShape { clips: 1, frames, height: h, width: w, cfg_batch: params.sampler.cfg_batch };
    check_memory(ctx, &unet, &inputs.checkpoint, shape, Some("frames"), false)?;
    let text = encode(ctx, &inputs.checkpoint, &inputs.prompt)?;
    let still = i4vgen::static_video(&latent, 0, frames).map_err(failed)?;
    // One fixed noise for every iteration (the "noise-invariant" of NI-VSDS).
    let noise = SeededNoise::new(seed).normal("ni_vsds", still.dims(), &device).map_err(|e| failed(e.into()))?;
    let model = guided(&unet, &text, params.sampler.cfg, shape);
    let z = with_progress(ctx, |observer| {
        i4vgen::ni_vsds(&model, &ddim, still, noise, params.p, &params.step_sizes, observer)
    })?;
    let video = clip_of(&inputs.checkpoint, &z, &inputs.prompt, seed)?;
    finish(ctx, video)
}

const REGENERATOR_PARAMS: [ParamSpec; 8] = with_group(
    [ParamSpec::new(
        "strength",
        ParamType::Float { default: 1.0, min: 0.0, max: 1.0 },
        "Regeneration strength p_re: 1 re-runs every step, lower keeps more of the input",
    )],
    SamplerParams::SPECS,
);

pub const REGENERATOR: NodeKind = NodeKind {
    spec: KindSpec {
        id: "regenerator",
        title: "Regenerator",
        category: "I4VGen",
        version: 2,
        description: "Noises the animated video and denoises it again with the video model for detail",
        inputs: &[
            IN_CHECKPOINT,
            IN_MOTION,
            IN_PROMPT,
            PortSpec::required("video", PortType::Video, "Video to regenerate"),
        ],
        outputs: &[OUT_VIDEO],
        params: &REGENERATOR_PARAMS,
        is_output: false,
        pick: None,
        more: None,
    },
    evaluate: regenerator,
    check: None,
};

/// Regenerator's parameters.
struct RegeneratorParams {
    strength: f64,
    sampler: SamplerParams,
}

impl RegeneratorParams {
    fn read(ctx: &EvalContext<'_>) -> Result<Self, NodeError> {
        Ok(RegeneratorParams { strength: ctx.param_f64("strength")?, sampler: SamplerParams::read(ctx)? })
    }
}

fn regenerator(ctx: &mut EvalContext<'_>) -> Result<NodeOutputs, NodeError> {
    let inputs = video_inputs(ctx)?;
    let source = ctx.input::<Video>("video")?.clone();
    let Some(latents) = &source.latents else {
        return Err(NodeError::Failed(
            "the input video has no latents (only clips made by a model can be regenerated)".to_string(),
        ));
    };
    let unet = video_unet(&inputs.checkpoint, Some(&inputs.motion))?;
    if let Some(motion) = &unet.motion {
        motion.check_frames(latents.shape[2]).map_err(|e| NodeError::Failed(format!("input video: {e}")))?;
    }
    let params = RegeneratorParams::read(ctx)?;
    let seed = params.sampler.seed;
    let ddim = params.sampler.scheduler(scheduler_config())?;
    let device = ctx.device.clone();
    let [clips, _, frames, height, width] = latents.shape;
    let shape = StageShape { clips, frames, height, width, cfg_batch: params.sampler.cfg_batch };
    check_memory(ctx, &unet, &inputs.checkpoint, shape, None, false)?;
    let text = encode(ctx, &inputs.checkpoint, &inputs.prompt)?;
    let z = latents.to_tensor(&device);
    let noise = SeededNoise::new(seed).normal("regenerate", z.dims(), &device).map_err(|e| failed(e.into()))?;
    let model = guided(&unet, &text, params.sampler.cfg, shape);
    let z = with_progress(ctx, |observer| i4vgen::regenerate(&model, &ddim, z, noise, params.strength, observer))?;
    let video = clip_of(&inputs.checkpoint, &z, &inputs.prompt, seed)?;
    finish(ctx, video)
}
