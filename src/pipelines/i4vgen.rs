//! The stages of I4VGen's AnimateDiff back-end (official `pipeline_animation.py`), each usable on its own:
//! candidates -> scoring and selection -> NI-VSDS -> regeneration -> decoding. Plain text-to-video (vanilla
//! AnimateDiff sampling) is here too, for comparison.
//!
//! Latents are video latents [B, C, F, h, w] throughout; candidates are F one-frame clips [F, C, 1, h, w].
//! Every random draw comes from the caller (a [`NoiseSource`](super::noise::NoiseSource) upstream).

use std::cell::RefCell;
use std::ops::ControlFlow;

use burn::tensor::{Device, Tensor, TensorData};
use image::RgbImage;

use crate::models::image_reward::preprocess::frame_to_image;
use crate::models::image_reward::{ImageReward, argmax};
use crate::models::unet::Motion;
use crate::models::vae::AutoencoderKl;
use crate::schedulers::{CfgDdim, Ddim, SampleError, guide, sample_ddim_cfg};

use super::PipelineError;
use super::memory::CfgBatch;

pub use super::denoiser::{Conditioning, GuidanceConditioning, VideoDenoiser};

/// What a stage reports after each of its steps.
#[derive(Clone, Copy, Debug)]
pub struct StageProgress<'a> {
    pub stage: &'static str,
    pub done: usize,
    pub total: usize,
    /// The step's estimate of the clean latents [B, C, F, h, w], for live previews (None where the stage
    /// has none).
    pub latents: Option<&'a Tensor<5>>,
}

/// Called after every step; [`ControlFlow::Break`] cancels the stage before its next UNet call.
pub type Observer<'a> = &'a mut dyn FnMut(StageProgress<'_>) -> ControlFlow<()>;

/// A video denoiser with classifier-free guidance over one conditioning pair.
pub struct Guided<'a> {
    pub denoiser: &'a dyn VideoDenoiser,
    pub conditioning: &'a GuidanceConditioning,
    pub guidance_scale: f64,
    /// Both branches in one UNet call, or one after the other (half the activation memory).
    pub cfg_batch: CfgBatch,
}

impl<'a> Guided<'a> {
    /// Guidance with both branches in one call ([`CfgBatch::Together`], as the reference runs it).
    pub fn new(denoiser: &'a dyn VideoDenoiser, conditioning: &'a GuidanceConditioning, guidance_scale: f64) -> Self {
        Guided { denoiser, conditioning, guidance_scale, cfg_batch: CfgBatch::Together }
    }

    pub fn with_cfg_batch(self, cfg_batch: CfgBatch) -> Self {
        Guided { cfg_batch, ..self }
    }

    /// Raw predictions for `pair` = [x; x] (2B clips): the first B unconditional, the last B conditional.
    fn predict_pair(&self, pair: Tensor<5>, t: usize, motion: Motion) -> Result<Tensor<5>, PipelineError> {
        let clips = pair.dims()[0] / 2;
        let uncond = self.conditioning.uncond.for_clips(clips);
        let cond = self.conditioning.cond.for_clips(clips);
        match self.cfg_batch {
            CfgBatch::Together => {
                let both = Conditioning::batched(&uncond, &cond)?;
                let timesteps = vec![t as f64; 2 * clips];
                self.denoiser.predict(pair, &timesteps, &both, motion)
            }
            CfgBatch::Sequential => {
                let timesteps = vec![t as f64; clips];
                let halves = pair.chunk(2, 0);
                let mut out = Vec::with_capacity(2);
                for (half, conditioning) in halves.into_iter().zip([uncond, cond]) {
                    out.push(self.denoiser.predict(half, &timesteps, &conditioning, motion)?);
                }
                Ok(Tensor::cat(out, 0))
            }
        }
    }

    /// The guided noise prediction eps_u + g (eps_c - eps_u) for `x` [B, C, F, h, w] (one UNet call).
    pub fn eps(&self, x: Tensor<5>, t: usize, motion: Motion) -> Result<Tensor<5>, PipelineError> {
        let b = x.dims()[0];
        let both = self.predict_pair(Tensor::cat(vec![x.clone(), x], 0), t, motion)?;
        Ok(guide(both, b, self.guidance_scale))
    }

    /// Deterministic DDIM (eta 0) with guidance from `x` over `timesteps`.
    pub fn sample(
        &self,
        scheduler: &Ddim,
        x: Tensor<5>,
        timesteps: &[usize],
        motion: Motion,
        stage: &'static str,
        observer: Observer<'_>,
    ) -> Result<Tensor<5>, PipelineError> {
        let failure = RefCell::new(None);
        let settings = CfgDdim { guidance_scale: self.guidance_scale, eta: 0.0 };
        let result = sample_ddim_cfg(
            scheduler,
            settings,
            x,
            timesteps,
            |pair, t| match self.predict_pair(pair.clone(), t, motion) {
                Ok(eps) => eps,
                Err(e) => {
                    failure.borrow_mut().get_or_insert(e);
                    pair
                }
            },
            |_| None,
            |p| {
                if failure.borrow().is_some() {
                    return ControlFlow::Break(());
                }
                observer(StageProgress { stage, done: p.completed, total: p.total, latents: Some(p.pred_original) })
            },
        );
        if let Some(e) = failure.into_inner() {
            return Err(e);
        }
        result.map_err(|e| match e {
            SampleError::Cancelled { .. } => PipelineError::Cancelled { stage },
            other => PipelineError::Sample(other),
        })
    }
}

/// Stage 1: `count` candidate images. `noise` is the initial latent [1, C, count, h, w] as the reference
/// draws it; it is treated as `count` one-frame clips and denoised with the motion modules bypassed (plain
/// SD 1.5). Returns the candidate latents [count, C, 1, h, w].
pub fn candidates(
    model: &Guided<'_>,
    scheduler: &Ddim,
    noise: Tensor<5>,
    observer: Observer<'_>,
) -> Result<Tensor<5>, PipelineError> {
    let [b, c, n, h, w] = noise.dims();
    if n == 0 {
        return Err(PipelineError::NoCandidates);
    }
    let clips = noise.permute([0, 2, 1, 3, 4]).reshape([b * n, c, 1, h, w]);
    model.sample(scheduler, clips, &scheduler.timesteps, Motion::Bypass, "candidates", observer)
}

/// Scaled video latents [B, C, F, h, w] -> frames [B, 3, F, 8h, 8w] in [0, 1], one frame at a time (the
/// reference decodes frame by frame too).
pub fn decode(vae: &AutoencoderKl, latents: Tensor<5>) -> Tensor<5> {
    vae.decode_video_scaled(latents, 1)
}

/// The candidate images [count, 3, 1, H, W] as a list of [3, H, W] frames.
pub fn frames_of(images: &Tensor<5>) -> Vec<Tensor<3>> {
    let [n, c, f, h, w] = images.dims();
    (0..n * f)
        .map(|i| {
            let (clip, frame) = (i / f, i % f);
            images.clone().slice([clip..clip + 1, 0..c, frame..frame + 1, 0..h, 0..w]).reshape([c, h, w])
        })
        .collect()
}

/// Decoded frames [B, 3, F, H, W] in [0, 1] as 8-bit images, clip by clip and frame by frame (rounded as
/// diffusers' `numpy_to_pil` rounds).
pub fn images_of(frames: &Tensor<5>) -> Vec<RgbImage> {
    frames_of(frames).iter().map(frame_to_image).collect()
}

/// An image as a one-frame clip of scaled latents [1, C, 1, H/8, W/8] (the VAE posterior's mean, so the same
/// image always gives the same latent): the anchor when the artist brings their own picture.
pub fn encode_image(vae: &AutoencoderKl, image: &RgbImage, device: &Device) -> Result<Tensor<5>, PipelineError> {
    let z = vae.encode_scaled(pixels_of(image, device)?);
    let [_, c, lh, lw] = z.dims();
    Ok(z.reshape([1, c, 1, lh, lw]))
}

/// An image as pixels in [-1, 1], [1, 3, H, W]; its sides must be multiples of 8 (the VAE's blocks).
pub fn pixels_of(image: &RgbImage, device: &Device) -> Result<Tensor<4>, PipelineError> {
    let (width, height) = image.dimensions();
    if width % 8 != 0 || height % 8 != 0 || width == 0 || height == 0 {
        return Err(PipelineError::ImageSize { width, height });
    }
    let (w, h) = (width as usize, height as usize);
    let mut planar = vec![0.0f32; 3 * h * w];
    for (i, px) in image.pixels().enumerate() {
        for (ch, &v) in px.0.iter().enumerate() {
            planar[ch * h * w + i] = f32::from(v) / 127.5 - 1.0;
        }
    }
    Ok(Tensor::<4>::from_data(TensorData::new(planar, [1, 3, h, w]), device))
}

/// Stage 2 scoring: ImageReward scores of every candidate image against the prompt (images rounded to 8 bits
/// first, as the reference's conversion to PIL images does).
pub fn score(reward: &ImageReward, prompt: &str, images: &Tensor<5>) -> Result<Vec<f32>, PipelineError> {
    Ok(reward.score_frames(prompt, &frames_of(images))?)
}

/// Stage 2 selection: the artist's choice when given (checked against the candidate count), else the
/// highest score (the first one on ties, like Python's `max`).
pub fn select(scores: &[f32], manual: Option<usize>) -> Result<usize, PipelineError> {
    if scores.is_empty() {
        return Err(PipelineError::NoCandidates);
    }
    match manual {
        Some(index) if index >= scores.len() => Err(PipelineError::IndexOutOfRange { index, count: scores.len() }),
        Some(index) => Ok(index),
        None => argmax(scores).ok_or(PipelineError::NoCandidates),
    }
}

/// The static video: candidate `index` of [count, C, 1, h, w] repeated over `frames` frames -> [1, C, F, h, w].
pub fn static_video(candidates: &Tensor<5>, index: usize, frames: usize) -> Result<Tensor<5>, PipelineError> {
    let [n, c, _, h, w] = candidates.dims();
    if index >= n {
        return Err(PipelineError::IndexOutOfRange { index, count: n });
    }
    Ok(candidates.clone().slice([index..index + 1, 0..c, 0..1, 0..h, 0..w]).repeat_dim(2, frames))
}

/// The number of NI-VSDS iterations for `steps` DDIM steps and fraction `p`: floor(steps * p) + 1, at most
/// `steps`.
pub fn ni_vsds_iterations(steps: usize, p: f64) -> usize {
    (((steps as f64) * p).floor() as usize + 1).min(steps)
}

/// Stage 3, NI-VSDS (noise-invariant video score distillation sampling): over the first
/// [`ni_vsds_iterations`] timesteps, with one fixed `noise` eps: x_t = add_noise(z, eps, t),
/// z <- z - s_i (1 - abar_t) (eps_hat(x_t) - eps). `step_sizes[i]` is s_i; the last entry repeats when the
/// list is shorter (an empty list means 1 throughout). Returns the animated latents.
pub fn ni_vsds(
    model: &Guided<'_>,
    scheduler: &Ddim,
    static_video: Tensor<5>,
    noise: Tensor<5>,
    p: f64,
    step_sizes: &[f64],
    observer: Observer<'_>,
) -> Result<Tensor<5>, PipelineError> {
    let total = ni_vsds_iterations(scheduler.timesteps.len(), p);
    let mut z = static_video;
    for (i, &t) in scheduler.timesteps.iter().take(total).enumerate() {
        let s = step_sizes.get(i).or(step_sizes.last()).copied().unwrap_or(1.0);
        let x = scheduler.add_noise(z.clone(), noise.clone(), t)?;
        let eps_hat = model.eps(x, t, Motion::On)?;
        let w = 1.0 - scheduler.alphas_cumprod[t];
        z = z - (eps_hat - noise.clone()).mul_scalar(s * w);
        let progress = StageProgress { stage: "ni_vsds", done: i + 1, total, latents: Some(&z) };
        if observer(progress).is_break() && i + 1 < total {
            return Err(PipelineError::Cancelled { stage: "ni_vsds" });
        }
    }
    Ok(z)
}

/// Stage 4, regeneration: noise `latents` to the first timestep of the `strength` schedule with `noise`,
/// then the guided DDIM video loop over the remaining timesteps. Strength 0 returns the latents unchanged.
pub fn regenerate(
    model: &Guided<'_>,
    scheduler: &Ddim,
    latents: Tensor<5>,
    noise: Tensor<5>,
    strength: f64,
    observer: Observer<'_>,
) -> Result<Tensor<5>, PipelineError> {
    let timesteps = scheduler.timesteps_for_strength(strength);
    let Some(&first) = timesteps.first() else {
        return Ok(latents);
    };
    let x = scheduler.add_noise(latents, noise, first)?;
    model.sample(scheduler, x, timesteps, Motion::On, "regeneration", observer)
}

/// Plain AnimateDiff text-to-video: the guided DDIM video loop from pure noise [B, C, F, h, w].
pub fn text_to_video(
    model: &Guided<'_>,
    scheduler: &Ddim,
    noise: Tensor<5>,
    observer: Observer<'_>,
) -> Result<Tensor<5>, PipelineError> {
    model.sample(scheduler, noise, &scheduler.timesteps, Motion::On, "text_to_video", observer)
}
