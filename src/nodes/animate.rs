//! The video nodes: NI-VSDS Animator (I4VGen stage 3), Regenerator (stage 4) and plain Text to Video.
//! Each decodes its result, so every intermediate clip can be watched.

use super::stage::{
    cfg_batch, check_memory, clip_of, encode, failed, frames, guided, pixels, scheduler, video_unet, with_progress,
};
use super::values::{CheckpointValue, MotionValue, PromptValue, StillImage};
use crate::pipelines::i4vgen;
use crate::pipelines::memory::StageShape;
use crate::pipelines::noise::{NoiseSource, SeededNoise};
use crate::runtime::{EvalContext, NodeError, NodeOutputs};
use crate::video::Video;

/// The inputs every video node has.
struct VideoInputs {
    checkpoint: CheckpointValue,
    motion: MotionValue,
    prompt: PromptValue,
}

fn video_inputs(ctx: &EvalContext<'_>) -> Result<VideoInputs, NodeError> {
    Ok(VideoInputs {
        checkpoint: ctx.input::<CheckpointValue>("model")?.clone(),
        motion: ctx.input::<MotionValue>("motion")?.clone(),
        prompt: ctx.input::<PromptValue>("prompt")?.clone(),
    })
}

fn finish(ctx: &mut EvalContext<'_>, video: Video) -> Result<NodeOutputs, NodeError> {
    ctx.preview("video", video.clone());
    Ok(NodeOutputs::new().with("video", video))
}

pub(super) fn ni_vsds(ctx: &mut EvalContext<'_>) -> Result<NodeOutputs, NodeError> {
    let inputs = video_inputs(ctx)?;
    let anchor = ctx.input::<StillImage>("anchor")?.clone();
    let unet = video_unet(&inputs.checkpoint, Some(&inputs.motion))?;
    let frames = frames(ctx, &unet)?;
    let seed = ctx.param_u64("seed")?;
    let p = ctx.param_f64("p_ni_vsds")?;
    let step_sizes = ctx.param_f64_list("step_sizes")?;
    let ddim = scheduler(ctx)?;
    let device = ctx.device.clone();
    // The anchor's latent: a candidate brings its own; an image from a file is encoded (anchor from an image).
    let latent = match &anchor.latent {
        Some(latent) => latent.to_tensor(&device),
        None => i4vgen::encode_image(&inputs.checkpoint.model.vae, &anchor.image, &device)
            .map_err(|e| NodeError::Failed(format!("anchor image ({}): {e}", anchor.source)))?,
    };
    let [_, _, _, h, w] = latent.dims();
    let shape = StageShape { clips: 1, frames, height: h, width: w, cfg_batch: cfg_batch(ctx)? };
    check_memory(ctx, &unet, &inputs.checkpoint, shape, Some("frames"), false)?;
    let text = encode(ctx, &inputs.checkpoint, &inputs.prompt)?;
    let still = i4vgen::static_video(&latent, 0, frames).map_err(failed)?;
    // One fixed noise for every iteration (the "noise-invariant" of NI-VSDS).
    let noise = SeededNoise::new(seed).normal("ni_vsds", still.dims(), &device).map_err(|e| failed(e.into()))?;
    let model = guided(ctx, &unet, &text, shape)?;
    let z = with_progress(ctx, |observer| i4vgen::ni_vsds(&model, &ddim, still, noise, p, &step_sizes, observer))?;
    let video = clip_of(&inputs.checkpoint, &z, &inputs.prompt, seed)?;
    finish(ctx, video)
}

pub(super) fn regenerator(ctx: &mut EvalContext<'_>) -> Result<NodeOutputs, NodeError> {
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
    let seed = ctx.param_u64("seed")?;
    let strength = ctx.param_f64("strength")?;
    let ddim = scheduler(ctx)?;
    let device = ctx.device.clone();
    let [clips, _, frames, height, width] = latents.shape;
    let shape = StageShape { clips, frames, height, width, cfg_batch: cfg_batch(ctx)? };
    check_memory(ctx, &unet, &inputs.checkpoint, shape, None, false)?;
    let text = encode(ctx, &inputs.checkpoint, &inputs.prompt)?;
    let z = latents.to_tensor(&device);
    let noise = SeededNoise::new(seed).normal("regenerate", z.dims(), &device).map_err(|e| failed(e.into()))?;
    let model = guided(ctx, &unet, &text, shape)?;
    let z = with_progress(ctx, |observer| i4vgen::regenerate(&model, &ddim, z, noise, strength, observer))?;
    let video = clip_of(&inputs.checkpoint, &z, &inputs.prompt, seed)?;
    finish(ctx, video)
}

pub(super) fn text_to_video(ctx: &mut EvalContext<'_>) -> Result<NodeOutputs, NodeError> {
    let inputs = video_inputs(ctx)?;
    let unet = video_unet(&inputs.checkpoint, Some(&inputs.motion))?;
    let frames = frames(ctx, &unet)?;
    let (width, height) = (pixels(ctx, "width")?, pixels(ctx, "height")?);
    let seed = ctx.param_u64("seed")?;
    let ddim = scheduler(ctx)?;
    let device = ctx.device.clone();
    let shape = StageShape { clips: 1, frames, height: height / 8, width: width / 8, cfg_batch: cfg_batch(ctx)? };
    check_memory(ctx, &unet, &inputs.checkpoint, shape, Some("frames"), true)?;
    let text = encode(ctx, &inputs.checkpoint, &inputs.prompt)?;
    let channels = unet.unet.in_channels();
    let noise_shape = [1, channels, frames, height / 8, width / 8];
    let noise = SeededNoise::new(seed).normal("text_to_video", noise_shape, &device).map_err(|e| failed(e.into()))?;
    let model = guided(ctx, &unet, &text, shape)?;
    let z = with_progress(ctx, |observer| i4vgen::text_to_video(&model, &ddim, noise, observer))?;
    let video = clip_of(&inputs.checkpoint, &z, &inputs.prompt, seed)?;
    finish(ctx, video)
}
