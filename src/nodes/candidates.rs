//! T2I Candidates: N anchor candidates from the prompt with SD 1.5 (I4VGen stage 1).

use std::sync::Arc;

use super::stage::{cfg_batch, check_memory, encode, failed, guided, pixels, scheduler, video_unet, with_progress};
use super::values::{Candidates, CheckpointValue, PromptValue};
use crate::pipelines::i4vgen;
use crate::pipelines::memory::StageShape;
use crate::pipelines::noise::{NoiseSource, SeededNoise};
use crate::pipelines::{Latents, PipelineError};
use crate::runtime::{EvalContext, NodeError, NodeOutputs};

pub(super) fn evaluate(ctx: &mut EvalContext<'_>) -> Result<NodeOutputs, NodeError> {
    let checkpoint = ctx.input::<CheckpointValue>("model")?.clone();
    let prompt = ctx.input::<PromptValue>("prompt")?.clone();
    let count = ctx.param_u64("count")? as usize;
    if count == 0 {
        return Err(NodeError::Param { name: "count".into(), message: PipelineError::NoCandidates.to_string() });
    }
    let (width, height) = (pixels(ctx, "width")?, pixels(ctx, "height")?);
    let seed = ctx.param_u64("seed")?;
    let ddim = scheduler(ctx)?;
    // Plain SD 1.5: the video UNet with no motion modules treats each candidate as a one-frame clip.
    let unet = video_unet(&checkpoint, None)?;
    // The candidates are one batch of `count` images, as the frames of a clip are.
    let shape =
        StageShape { clips: 1, frames: count, height: height / 8, width: width / 8, cfg_batch: cfg_batch(ctx)? };
    check_memory(ctx, &unet, &checkpoint, shape, Some("count"), true)?;
    let text = encode(ctx, &checkpoint, &prompt)?;
    let channels = unet.unet.in_channels();
    let device = ctx.device.clone();
    // One draw of [1, C, N, h, w], as the reference draws the video's initial latent for its N frames.
    let noise = SeededNoise::new(seed)
        .normal("candidates", [1, channels, count, height / 8, width / 8], &device)
        .map_err(|e| failed(e.into()))?;
    let model = guided(ctx, &unet, &text, shape)?;
    let latents = with_progress(ctx, |observer| i4vgen::candidates(&model, &ddim, noise, observer))?;
    let images: Vec<Arc<image::RgbImage>> =
        i4vgen::images_of(&i4vgen::decode(&checkpoint.model.vae, latents.clone())).into_iter().map(Arc::new).collect();
    let latents = Latents::from_tensor(&latents).map_err(failed)?;
    ctx.preview("candidates", images.clone());
    let value = Candidates { latents, images, prompt: prompt.positive.clone(), seed };
    Ok(NodeOutputs::new().with("candidates", value))
}
