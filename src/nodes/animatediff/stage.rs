//! What the generation nodes of the SD 1.5 + AnimateDiff family share: encoding the prompt, the video UNet,
//! progress and cancellation, decoding, memory checks.

use std::ops::ControlFlow;

use burn::tensor::Tensor;

use super::super::failed;
use crate::models::clip::TokenizerError;
use crate::models::stable_diffusion::EncodedPrompt;
use crate::models::unet::VideoUnet;
use crate::models::unet::motion::MotionError;
use crate::nodes::values::{CheckpointValue, MotionValue, PromptValue};
use crate::pipelines::PipelineError;
use crate::pipelines::denoiser::VideoModel;
use crate::pipelines::i4vgen::{self, GuidanceConditioning, Guided, StageProgress};
use crate::pipelines::memory::{self, CfgBatch, Room, StageShape};
use crate::runtime::{EvalContext, NodeError};
use crate::video::Video;

/// The prompt encoded with the checkpoint's tokenizer and text encoder; truncation is reported on the node.
pub(crate) fn encode(
    ctx: &mut EvalContext<'_>,
    checkpoint: &CheckpointValue,
    prompt: &PromptValue,
) -> Result<GuidanceConditioning, NodeError> {
    let encoded = checkpoint.model.encode_prompt(&prompt.positive, &prompt.negative, ctx.device);
    noted_prompt(ctx, encoded, checkpoint.model.tokenizer.max_length.saturating_sub(2))
}

/// The prompt encoded by any family's [`VideoModel`]; truncation is reported on the node.
pub(crate) fn encode_with(
    ctx: &mut EvalContext<'_>,
    model: &dyn VideoModel,
    prompt: &PromptValue,
) -> Result<GuidanceConditioning, NodeError> {
    let encoded = model.encode_prompt(&prompt.positive, &prompt.negative, ctx.device);
    noted_prompt(ctx, encoded, model.prompt_room())
}

fn noted_prompt(
    ctx: &mut EvalContext<'_>,
    encoded: Result<EncodedPrompt, TokenizerError>,
    room: usize,
) -> Result<GuidanceConditioning, NodeError> {
    let encoded = encoded.map_err(|e| NodeError::Failed(format!("cannot tokenize the prompt: {e}")))?;
    for (what, dropped) in [("prompt", encoded.truncated), ("negative prompt", encoded.truncated_negative)] {
        if dropped > 0 {
            ctx.note(format!(
                "the {what} is {} CLIP tokens, {dropped} more than the {room} that fit: the end was cut off",
                room + dropped
            ));
        }
    }
    Ok(GuidanceConditioning::text(encoded.cond, encoded.uncond))
}

/// The checkpoint's UNet with the motion modules (or none: single images).
pub(crate) fn video_unet(checkpoint: &CheckpointValue, motion: Option<&MotionValue>) -> Result<VideoUnet, NodeError> {
    VideoUnet::new(checkpoint.model.unet.clone(), motion.map(|m| m.model.as_ref().clone()))
        .map_err(|e: MotionError| NodeError::Failed(e.to_string()))
}

/// The `frames` parameter, checked against the motion module's positional limit before any work is done.
pub(crate) fn frames(ctx: &EvalContext<'_>, unet: &VideoUnet) -> Result<usize, NodeError> {
    let frames = ctx.param_u64("frames")? as usize;
    if let Some(motion) = &unet.motion {
        motion.check_frames(frames).map_err(|e| NodeError::Param { name: "frames".into(), message: e.to_string() })?;
    }
    Ok(frames)
}

/// Runs a stage with per-step progress on the node; a cancelled run stops the stage within one step.
pub(crate) fn with_progress<T>(
    ctx: &mut EvalContext<'_>,
    stage: impl FnOnce(&mut dyn FnMut(StageProgress<'_>) -> ControlFlow<()>) -> Result<T, PipelineError>,
) -> Result<T, NodeError> {
    with_progress_part(ctx, (0, 1), stage)
}

/// [`with_progress`] for part `index` of `parts` equal parts of a node's work (the node's progress runs over
/// all of them).
pub(crate) fn with_progress_part<T>(
    ctx: &mut EvalContext<'_>,
    (index, parts): (usize, usize),
    stage: impl FnOnce(&mut dyn FnMut(StageProgress<'_>) -> ControlFlow<()>) -> Result<T, PipelineError>,
) -> Result<T, NodeError> {
    let mut observer = |p: StageProgress<'_>| {
        ctx.live_preview(p.done, p.latents);
        match ctx.progress((index * p.total + p.done) as u64, (parts.max(1) * p.total) as u64) {
            Ok(()) => ControlFlow::Continue(()),
            Err(_) => ControlFlow::Break(()),
        }
    };
    stage(&mut observer).map_err(failed)
}

/// Decodes video latents [1, C, F, h, w] into a clip (frames as 8-bit images) that keeps the latents.
pub(crate) fn clip_of(
    checkpoint: &CheckpointValue,
    latents: &Tensor<5>,
    prompt: &PromptValue,
    seed: u64,
) -> Result<Video, NodeError> {
    decode_clip(&checkpoint.model.vae, latents, prompt, seed)
}

/// Decodes video latents [1, C, F, h, w] with `vae` into a clip that keeps the latents.
pub(crate) fn decode_clip(
    vae: &crate::models::vae::AutoencoderKl,
    latents: &Tensor<5>,
    prompt: &PromptValue,
    seed: u64,
) -> Result<Video, NodeError> {
    let stored = crate::pipelines::Latents::from_tensor(latents).map_err(failed)?;
    if !stored.is_finite() {
        return Err(NodeError::Failed(
            "the latents are no longer finite numbers (NaN or infinity): lower the step sizes or the guidance"
                .to_string(),
        ));
    }
    let frames = i4vgen::images_of(&i4vgen::decode(vae, latents.clone()));
    Ok(Video { frames, fps: 8.0, prompt: prompt.positive.clone(), seed, latents: Some(stored) })
}

/// The guided UNet at guidance scale `cfg`, with the `cfg_batch` the node planned its memory for.
pub(crate) fn guided<'a>(
    unet: &'a VideoUnet,
    text: &'a GuidanceConditioning,
    cfg: f64,
    shape: StageShape,
) -> Guided<'a> {
    Guided::new(unet, text, cfg).with_cfg_batch(shape.cfg_batch)
}

/// The memory this node may use: the run's limit, or on the CPU what the system has available now; `None`
/// on a GPU without a limit (its capacity is not known).
fn room(ctx: &EvalContext<'_>) -> Option<Room> {
    match ctx.memory_limit {
        Some(limit) => Some(Room::Limit(limit)),
        None if crate::models::is_cpu(ctx.device) => memory::system_available().map(Room::Available),
        None => None,
    }
}

/// Refuses a stage whose estimated memory does not fit, before any of its work, naming the estimate and
/// the settings that would fit (fewer frames, a smaller size, sequential guidance). `frames_param` names
/// the node's frame count parameter when the artist can lower it; `size_params` whether width and height
/// are the node's own.
pub(crate) fn check_memory(
    ctx: &EvalContext<'_>,
    unet: &VideoUnet,
    checkpoint: &CheckpointValue,
    shape: StageShape,
    frames_param: Option<&str>,
    size_params: bool,
) -> Result<(), NodeError> {
    let cpu = crate::models::is_cpu(ctx.device);
    let vae = &checkpoint.model.vae;
    check_estimate_memory(ctx, &|shape| memory::stage_estimate(unet, vae, shape, cpu), shape, frames_param, size_params)
}

/// [`check_memory`] for any family's [`VideoModel`].
pub(crate) fn check_model_memory(
    ctx: &EvalContext<'_>,
    model: &dyn VideoModel,
    shape: StageShape,
    frames_param: Option<&str>,
    size_params: bool,
) -> Result<(), NodeError> {
    let cpu = crate::models::is_cpu(ctx.device);
    check_estimate_memory(ctx, &|shape| model.estimate(shape, cpu), shape, frames_param, size_params)
}

/// [`check_memory`] over any estimate of the stage's memory (also a family that is not a [`VideoModel`]).
pub(crate) fn check_estimate_memory(
    ctx: &EvalContext<'_>,
    estimate_of: &dyn Fn(StageShape) -> memory::Estimate,
    shape: StageShape,
    frames_param: Option<&str>,
    size_params: bool,
) -> Result<(), NodeError> {
    let Some(room) = room(ctx) else { return Ok(()) };
    let fits = |shape: StageShape| {
        let e = estimate_of(shape);
        e.activations <= room.for_activations(e.weights)
    };
    let estimate = estimate_of(shape);
    if estimate.activations <= room.for_activations(estimate.weights) {
        return Ok(());
    }
    let mut advice = Vec::new();
    if let Some(name) = frames_param
        && let Some(f) = (1..shape.frames).rev().find(|&f| fits(StageShape { frames: f, ..shape }))
    {
        advice.push(format!("{name} {f}"));
    }
    if size_params {
        // Same aspect ratio, in 64-pixel steps (8 latents) of the shorter side.
        let (h, w) = (shape.height, shape.width);
        let short = h.min(w);
        let smaller = (1..short / 8).rev().map(|k| (h * k * 8 / short / 8 * 8, w * k * 8 / short / 8 * 8));
        if let Some((sh, sw)) = smaller
            .filter(|&(sh, sw)| sh > 0 && sw > 0)
            .find(|&(sh, sw)| fits(StageShape { height: sh, width: sw, ..shape }))
        {
            advice.push(format!("a size of {}x{} pixels", sw * 8, sh * 8));
        }
    }
    if shape.cfg_batch == CfgBatch::Together {
        let e = estimate_of(StageShape { cfg_batch: CfgBatch::Sequential, ..shape });
        if e.activations <= room.for_activations(e.weights) {
            advice.push(format!("cfg_batch sequential (about {} of activations)", memory::gb(e.activations)));
        }
    }
    let advice = if advice.is_empty() {
        "no smaller setting of this node fits: free memory or use a device with more".to_string()
    } else {
        format!("lower one of: {}", advice.join(", "))
    };
    Err(NodeError::Failed(format!(
        "not enough memory: {} image(s) of {}x{} pixels with cfg_batch {} need about {} of activations beside {} of \
         weights, and {}; {advice}",
        shape.clips * shape.frames,
        shape.width * 8,
        shape.height * 8,
        shape.cfg_batch.name(),
        memory::gb(estimate.activations),
        memory::gb(estimate.weights),
        room.describe(),
    )))
}
