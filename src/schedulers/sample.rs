//! The DDIM sampling loop with classifier-free guidance, over any noise-prediction model given as a
//! closure (the loop of diffusers' text-to-image and AnimateDiff pipelines).
//!
//! The model is not named here: the caller wraps its UNet (with the text contexts, motion modules, ...)
//! in a closure, so this loop serves images ([N, C, H, W]) and videos ([B, C, F, H, W]) alike.

use std::ops::ControlFlow;

use burn::tensor::Tensor;

use super::{Ddim, SchedulerError};

/// The settings of a guided DDIM run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CfgDdim {
    /// Classifier-free guidance scale g: eps = eps_uncond + g (eps_cond - eps_uncond) (7.5 in I4VGen).
    pub guidance_scale: f64,
    /// DDIM's eta: 0 is deterministic DDIM, 1 adds DDPM-like noise at every step.
    pub eta: f64,
}

/// What the per-step callback of [`sample_ddim_cfg`] sees after each step.
pub struct StepProgress<'a, const D: usize> {
    /// Steps done so far (1 after the first step).
    pub completed: usize,
    /// Steps in this run.
    pub total: usize,
    /// The timestep the step started from.
    pub timestep: usize,
    /// The latents after the step, x_{t-1}.
    pub latents: &'a Tensor<D>,
    /// The step's estimate of the clean latents x_0 (for previews).
    pub pred_original: &'a Tensor<D>,
}

/// Why a sampling run stopped early.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SampleError {
    #[error(transparent)]
    Scheduler(#[from] SchedulerError),
    #[error("sampling was cancelled after {completed} of {total} steps")]
    Cancelled { completed: usize, total: usize },
    #[error("the model returned a batch of {found} for an input batch of {expected} ([uncond; cond])")]
    ModelBatch { found: usize, expected: usize },
    #[error("eta is {eta}, but no noise was supplied for step {step}")]
    MissingNoise { eta: f64, step: usize },
}

/// Runs DDIM from `latents` over `timesteps` (usually `scheduler.timesteps`, or
/// [`Ddim::timesteps_for_strength`] for a partial run) with classifier-free guidance.
///
/// Each step calls `model(x, t)` once with `x = [latents; latents]` (batch 2N): the model must predict
/// the unconditional noise for the first N samples and the conditional noise for the last N (a UNet
/// closure passes the contexts `[uncond; cond]`). The guided prediction
/// `eps_u + g (eps_c - eps_u)` then goes through [`Ddim::step`].
///
/// `noise(step)` supplies the variance noise of step `step` (0-based) and is called only when
/// `eta > 0`; every random draw thus comes from the caller. After each step, `on_step` sees the
/// progress; returning [`ControlFlow::Break`] cancels the run ([`SampleError::Cancelled`]) before the
/// next model call (after the last step there is nothing left to cancel, and the result is returned).
pub fn sample_ddim_cfg<const D: usize>(
    scheduler: &Ddim,
    settings: CfgDdim,
    latents: Tensor<D>,
    timesteps: &[usize],
    mut model: impl FnMut(Tensor<D>, usize) -> Tensor<D>,
    mut noise: impl FnMut(usize) -> Option<Tensor<D>>,
    mut on_step: impl FnMut(StepProgress<'_, D>) -> ControlFlow<()>,
) -> Result<Tensor<D>, SampleError> {
    let total = timesteps.len();
    let batch = latents.dims()[0];
    let mut x = latents;
    for (i, &t) in timesteps.iter().enumerate() {
        let eps = model(Tensor::cat(vec![x.clone(), x.clone()], 0), t);
        let found = eps.dims()[0];
        if found != 2 * batch {
            return Err(SampleError::ModelBatch { found, expected: 2 * batch });
        }
        let guided = guide(eps, batch, settings.guidance_scale);
        let step_noise = if settings.eta > 0.0 {
            Some(noise(i).ok_or(SampleError::MissingNoise { eta: settings.eta, step: i })?)
        } else {
            None
        };
        let out = scheduler.step(guided, t, x, settings.eta, step_noise)?;
        x = out.prev_sample;
        let progress =
            StepProgress { completed: i + 1, total, timestep: t, latents: &x, pred_original: &out.pred_original };
        if on_step(progress).is_break() && i + 1 < total {
            return Err(SampleError::Cancelled { completed: i + 1, total });
        }
    }
    Ok(x)
}

/// Classifier-free guidance over a [uncond; cond] prediction of `2 * batch` samples:
/// eps_u + g (eps_c - eps_u), `batch` samples.
pub fn guide<const D: usize>(both: Tensor<D>, batch: usize, guidance_scale: f64) -> Tensor<D> {
    let eps_uncond = both.clone().narrow(0, 0, batch);
    let eps_cond = both.narrow(0, batch, batch);
    eps_uncond.clone() + (eps_cond - eps_uncond).mul_scalar(guidance_scale)
}
