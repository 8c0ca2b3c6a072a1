//! TI2V-Zero (arXiv 2404.16306): zero-shot image conditioning of a frozen text-to-video model by
//! "repeat and slide", written from the paper and the procedure in SEED-SYSTEMS.md section 4.2 (the official
//! code is AGPL and is not used here). Runs over any [`VideoDenoiser`] with an SD-style VAE.
//!
//! The clip has F frames; a queue of K = F - 1 pixel frames (at first the image repeated) conditions each new
//! frame. Per new frame:
//! 1. the queue is encoded with the VAE posterior mean (scaled): `cond` [1, C, K, h, w];
//! 2. DDPM inversion: x_T is the queue's last latent noised to the first timestep, independently per frame;
//! 3. at each timestep t (next: the following one, 0 after the last): the first K frames of x_t are replaced
//!    by `cond` noised to t; then `resample` times: a DDIM step, the first K frames replaced by `cond` noised
//!    to next, and the whole clip noised back from next to t (a = abar_t / abar_next); then a final DDIM step;
//! 4. only the last frame of x_0 is decoded: the new frame, which enters the queue as the oldest one leaves.
//!
//! The output is the image followed by the new frames. Timesteps and the DDIM step follow ModelScope's
//! `GaussianDiffusion` ([`ModelScopeDdim`]), the family's noise schedule its own. Every random draw comes
//! from the caller's [`NoiseSource`], named `ti2v_zero/{frame}/start`, `.../{step}/cond`, `.../{step}/next`
//! and `.../{step}/resample{j}`.

use burn::tensor::Tensor;

use super::PipelineError;
use super::i4vgen::{Guided, Observer, StageProgress};
use super::noise::NoiseSource;
use crate::models::unet::Motion;
use crate::models::vae::AutoencoderKl;

/// ModelScope's DDIM (`GaussianDiffusion.ddim_sample`, eta 0, epsilon prediction): timesteps
/// `(1 + arange(0, T, T / S)).clamp(0, T - 1)` from the last, and a step from t to `abar[max(t - stride, 0)]`
/// (`abar[0]` at the end, where diffusers' DDIM would take 1 or its final alpha).
#[derive(Clone, Debug, PartialEq)]
pub struct ModelScopeDdim {
    pub alphas_cumprod: Vec<f64>,
    /// The timesteps from the noisiest.
    pub timesteps: Vec<usize>,
    /// T / S (integer division), the distance of one step.
    pub stride: usize,
}

impl ModelScopeDdim {
    /// The schedule of `steps` steps over the training schedule `alphas_cumprod` (T entries). With T not a
    /// multiple of S there can be one step more than S, as in ModelScope.
    pub fn new(alphas_cumprod: Vec<f64>, steps: usize) -> Result<Self, PipelineError> {
        let train = alphas_cumprod.len();
        if steps == 0 || steps > train {
            return Err(PipelineError::Data(format!("TI2V-Zero: {steps} steps over a schedule of {train} timesteps")));
        }
        let stride = train / steps;
        let mut timesteps: Vec<usize> = (0..train).step_by(stride).map(|t| (t + 1).min(train - 1)).collect();
        timesteps.reverse();
        Ok(ModelScopeDdim { alphas_cumprod, timesteps, stride })
    }

    pub fn alpha_bar(&self, t: usize) -> f64 {
        self.alphas_cumprod[t.min(self.alphas_cumprod.len() - 1)]
    }

    /// `x0` noised to `t`: sqrt(abar_t) x0 + sqrt(1 - abar_t) eps.
    pub fn q_sample<const D: usize>(&self, x0: Tensor<D>, t: usize, eps: Tensor<D>) -> Tensor<D> {
        let a = self.alpha_bar(t);
        x0.mul_scalar(a.sqrt()) + eps.mul_scalar((1.0 - a).sqrt())
    }

    /// One DDIM step from `x_t` with the predicted noise `eps` to t - stride.
    pub fn step<const D: usize>(&self, x_t: Tensor<D>, eps: Tensor<D>, t: usize) -> Tensor<D> {
        let a = self.alpha_bar(t);
        let a_prev = self.alpha_bar(t.saturating_sub(self.stride));
        let (recip, recip_m1) = ((1.0 / a).sqrt(), (1.0 / a - 1.0).sqrt());
        let x0 = x_t.clone().mul_scalar(recip) - eps.mul_scalar(recip_m1);
        // The noise direction as ModelScope recomputes it from x0.
        let direction = (x_t.mul_scalar(recip) - x0.clone()).div_scalar(recip_m1);
        x0.mul_scalar(a_prev.sqrt()) + direction.mul_scalar((1.0 - a_prev).sqrt())
    }
}

/// TI2V-Zero's settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ti2vZeroSettings {
    /// Frames of each clip the denoiser sees (the queue holds one fewer).
    pub frames: usize,
    /// Frames generated after the image.
    pub new_frames: usize,
    /// Resampling rounds per timestep.
    pub resample: usize,
}

/// What TI2V-Zero made: the image and every new frame, as decoded pixels in [-1, 1] [1, 3, H, W], and each new
/// frame's clean latent [1, C, 1, h, w].
pub struct Ti2vZeroOutput {
    pub frames: Vec<Tensor<4>>,
    pub new_latents: Vec<Tensor<5>>,
}

/// The queue's frames [1, 3, H, W] each, encoded: scaled posterior means [1, C, K, h, w].
fn encode_queue(vae: &AutoencoderKl, queue: &[Tensor<4>]) -> Tensor<5> {
    let latents: Vec<Tensor<4>> = queue.iter().map(|frame| vae.encode_scaled(frame.clone())).collect();
    Tensor::stack(latents, 2)
}

/// The latents of frames `0..k` of `x` replaced by `with` [1, C, k, h, w].
fn replace_first(x: Tensor<5>, with: Tensor<5>) -> Tensor<5> {
    let [_, _, f, _, _] = x.dims();
    let k = with.dims()[2];
    if k >= f {
        return with.narrow(2, 0, f);
    }
    Tensor::cat(vec![with, x.narrow(2, k, f - k)], 2)
}

/// Runs TI2V-Zero from `image` [1, 3, H, W] in [-1, 1] (sides multiples of the VAE's downsampling). Progress
/// counts DDIM steps over all new frames; a break stops before the next UNet call.
pub fn ti2v_zero(
    model: &Guided<'_>,
    vae: &AutoencoderKl,
    ddim: &ModelScopeDdim,
    image: Tensor<4>,
    settings: Ti2vZeroSettings,
    noise: &mut dyn NoiseSource,
    observer: Observer<'_>,
) -> Result<Ti2vZeroOutput, PipelineError> {
    ti2v_zero_with(model, vae, ddim, image, settings, noise, observer, &mut |_| {})
}

/// [`ti2v_zero`], calling `on_frame` with the output so far after each new frame (for previews).
#[allow(clippy::too_many_arguments)]
pub fn ti2v_zero_with(
    model: &Guided<'_>,
    vae: &AutoencoderKl,
    ddim: &ModelScopeDdim,
    image: Tensor<4>,
    settings: Ti2vZeroSettings,
    noise: &mut dyn NoiseSource,
    observer: Observer<'_>,
    on_frame: &mut dyn FnMut(&Ti2vZeroOutput),
) -> Result<Ti2vZeroOutput, PipelineError> {
    let Ti2vZeroSettings { frames, new_frames, resample } = settings;
    if frames < 2 {
        return Err(PipelineError::Data(format!(
            "TI2V-Zero needs clips of at least 2 frames (a queue of 1 and the new one); {frames} were asked for"
        )));
    }
    let k = frames - 1;
    let device = image.device();
    let steps = ddim.timesteps.len();
    let total = new_frames * steps * (resample + 1);
    let mut done = 0;
    let mut queue: Vec<Tensor<4>> = vec![image.clone(); k];
    let mut out = Ti2vZeroOutput { frames: vec![image], new_latents: Vec::with_capacity(new_frames) };
    let first = ddim.timesteps[0];
    for n in 0..new_frames {
        let cond = encode_queue(vae, &queue);
        let [_, c, _, h, w] = cond.dims();
        let last = cond.clone().narrow(2, k - 1, 1).repeat_dim(2, frames);
        let start = noise.normal(&format!("ti2v_zero/{n}/start"), [1, c, frames, h, w], &device)?;
        let mut x = ddim.q_sample(last, first, start);
        let mut ddim_step = |x: Tensor<5>, t: usize| -> Result<Tensor<5>, PipelineError> {
            let eps = model.eps(x.clone(), t, Motion::On)?;
            done += 1;
            if observer(StageProgress { stage: "ti2v_zero", done, total, latents: None }).is_break() {
                return Err(PipelineError::Cancelled { stage: "ti2v_zero" });
            }
            Ok(ddim.step(x, eps, t))
        };
        for (s, &t) in ddim.timesteps.iter().enumerate() {
            let next = ddim.timesteps.get(s + 1).copied().unwrap_or(0);
            let cond_noise = noise.normal(&format!("ti2v_zero/{n}/{s}/cond"), [1, c, k, h, w], &device)?;
            x = replace_first(x, ddim.q_sample(cond.clone(), t, cond_noise));
            let next_noise = noise.normal(&format!("ti2v_zero/{n}/{s}/next"), [1, c, k, h, w], &device)?;
            let next_noisy = ddim.q_sample(cond.clone(), next, next_noise);
            let back = ddim.alpha_bar(t) / ddim.alpha_bar(next);
            for j in 0..resample {
                x = replace_first(ddim_step(x, t)?, next_noisy.clone());
                let renoise = noise.normal(&format!("ti2v_zero/{n}/{s}/resample{j}"), [1, c, frames, h, w], &device)?;
                x = x.mul_scalar(back.sqrt()) + renoise.mul_scalar((1.0 - back).sqrt());
            }
            x = ddim_step(x, t)?;
        }
        let latent = x.narrow(2, frames - 1, 1);
        let [_, _, _, lh, lw] = latent.dims();
        let frame = vae.decode(latent.clone().reshape([1, c, lh, lw]).div_scalar(vae.scaling_factor)).clamp(-1.0, 1.0);
        queue.remove(0);
        queue.push(frame.clone());
        out.frames.push(frame);
        out.new_latents.push(latent);
        on_frame(&out);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule() -> Vec<f64> {
        let betas: Vec<f64> = (0..1000).map(|i| 0.00085 + (0.012 - 0.00085) * i as f64 / 999.0).collect();
        betas
            .iter()
            .scan(1.0, |a, b| {
                *a *= 1.0 - b;
                Some(*a)
            })
            .collect()
    }

    /// ModelScope's timesteps: 1 + arange(0, 1000, 1000 // S), clamped to 999, from the last; one more than
    /// S where 1000 is not a multiple of S.
    #[test]
    fn timesteps_follow_modelscope() {
        let ddim = ModelScopeDdim::new(schedule(), 10).unwrap();
        assert_eq!(ddim.timesteps, vec![901, 801, 701, 601, 501, 401, 301, 201, 101, 1]);
        assert_eq!(ModelScopeDdim::new(schedule(), 2).unwrap().timesteps, vec![501, 1]);
        let three = ModelScopeDdim::new(schedule(), 3).unwrap();
        assert_eq!((three.timesteps.clone(), three.stride), (vec![999, 667, 334, 1], 333));
        assert!(ModelScopeDdim::new(schedule(), 0).is_err());
    }
}
