//! DDIM (arXiv 2010.02502) as diffusers' `DDIMScheduler` implements it.

use burn::tensor::Tensor;

use super::{
    BetaSchedule, Prediction, SchedulerError, TimestepSpacing, alphas_cumprod, betas, rescale_zero_terminal_snr,
};

/// The fields of a diffusers `scheduler_config.json` that DDIM uses, with diffusers' defaults.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct DdimConfig {
    pub num_train_timesteps: usize,
    pub beta_start: f64,
    pub beta_end: f64,
    pub beta_schedule: BetaSchedule,
    pub clip_sample: bool,
    pub clip_sample_range: f64,
    pub set_alpha_to_one: bool,
    pub steps_offset: usize,
    pub prediction_type: Prediction,
    pub timestep_spacing: TimestepSpacing,
    pub rescale_betas_zero_snr: bool,
}

impl Default for DdimConfig {
    /// diffusers' `DDIMScheduler()` defaults.
    fn default() -> Self {
        DdimConfig {
            num_train_timesteps: 1000,
            beta_start: 0.0001,
            beta_end: 0.02,
            beta_schedule: BetaSchedule::Linear,
            clip_sample: true,
            clip_sample_range: 1.0,
            set_alpha_to_one: true,
            steps_offset: 0,
            prediction_type: Prediction::Epsilon,
            timestep_spacing: TimestepSpacing::Leading,
            rescale_betas_zero_snr: false,
        }
    }
}

impl DdimConfig {
    /// The scheduler of the official I4VGen / AnimateDiff inference configs: linear betas
    /// 0.00085..0.012, steps_offset 1, no sample clipping, leading spacing.
    pub fn animatediff() -> Self {
        DdimConfig {
            beta_start: 0.00085,
            beta_end: 0.012,
            beta_schedule: BetaSchedule::Linear,
            clip_sample: false,
            set_alpha_to_one: true,
            steps_offset: 1,
            ..DdimConfig::default()
        }
    }

    /// Stable Diffusion 1.5's scheduler (scaled_linear betas, set_alpha_to_one false).
    pub fn sd15() -> Self {
        DdimConfig {
            beta_start: 0.00085,
            beta_end: 0.012,
            beta_schedule: BetaSchedule::ScaledLinear,
            clip_sample: false,
            set_alpha_to_one: false,
            steps_offset: 1,
            ..DdimConfig::default()
        }
    }
}

/// The DDIM scheduler: training-range tables plus the inference timesteps chosen by `set_timesteps`.
#[derive(Clone, Debug)]
pub struct Ddim {
    pub config: DdimConfig,
    /// `alphas_cumprod[t]` for every training timestep.
    pub alphas_cumprod: Vec<f64>,
    pub final_alpha_cumprod: f64,
    /// Inference timesteps, largest first.
    pub timesteps: Vec<usize>,
    num_inference_steps: usize,
}

/// The result of one DDIM step.
pub struct DdimStep<const D: usize> {
    /// x_{t-1}.
    pub prev_sample: Tensor<D>,
    /// The model's estimate of x_0.
    pub pred_original: Tensor<D>,
}

impl Ddim {
    pub fn new(config: DdimConfig) -> Result<Self, SchedulerError> {
        if config.num_train_timesteps == 0 {
            return Err(SchedulerError::Config("num_train_timesteps must be positive".into()));
        }
        let mut b = betas(config.beta_schedule, config.beta_start, config.beta_end, config.num_train_timesteps);
        if config.rescale_betas_zero_snr {
            b = rescale_zero_terminal_snr(&b);
        }
        // With zero terminal SNR the last alpha-bar is exactly 0: DDIM's v-prediction step needs no
        // division by it (unlike Euler, where diffusers clamps it to 2^-24).
        let alphas_cumprod = alphas_cumprod(&b);
        let final_alpha_cumprod = if config.set_alpha_to_one { 1.0 } else { alphas_cumprod[0] };
        Ok(Ddim { config, alphas_cumprod, final_alpha_cumprod, timesteps: Vec::new(), num_inference_steps: 0 })
    }

    /// Picks `steps` inference timesteps (diffusers' `set_timesteps`).
    pub fn set_timesteps(&mut self, steps: usize) -> Result<(), SchedulerError> {
        let train = self.config.num_train_timesteps;
        if steps == 0 {
            return Err(SchedulerError::NoSteps);
        }
        if steps > train {
            return Err(SchedulerError::TooManySteps { steps, train });
        }
        self.timesteps = match self.config.timestep_spacing {
            TimestepSpacing::Linspace => {
                // np.linspace(0, train - 1, steps).round()[::-1] (f64, round half to even).
                let last = (train - 1) as f64;
                (0..steps)
                    .rev()
                    .map(|i| {
                        let v = if steps == 1 { 0.0 } else { last * i as f64 / (steps - 1) as f64 };
                        v.round_ties_even() as usize
                    })
                    .collect()
            }
            TimestepSpacing::Leading => {
                let ratio = train / steps;
                (0..steps).rev().map(|i| i * ratio + self.config.steps_offset).collect()
            }
            TimestepSpacing::Trailing => {
                // np.round(np.arange(train, 0, -train / steps)) - 1
                let ratio = train as f64 / steps as f64;
                let mut out = Vec::with_capacity(steps);
                let mut v = train as f64;
                while v > 0.0 && out.len() < steps {
                    out.push((v.round_ties_even() as usize).saturating_sub(1));
                    v -= ratio;
                }
                out
            }
        };
        if let Some(&t) = self.timesteps.iter().find(|&&t| t >= train) {
            return Err(SchedulerError::BadTimestep { t: t as i64, train });
        }
        self.num_inference_steps = steps;
        Ok(())
    }

    pub fn num_inference_steps(&self) -> usize {
        self.num_inference_steps
    }

    /// The timestep a step from `t` lands on (`t - train // steps`; negative means "past the end").
    pub fn prev_timestep(&self, t: usize) -> i64 {
        let ratio = self.config.num_train_timesteps / self.num_inference_steps.max(1);
        t as i64 - ratio as i64
    }

    /// alpha-bar at `t`, or the final alpha-bar for negative timesteps.
    pub fn alpha_bar(&self, t: i64) -> f64 {
        if t < 0 { self.final_alpha_cumprod } else { self.alphas_cumprod[t as usize] }
    }

    fn alpha_bar_checked(&self, t: usize) -> Result<f64, SchedulerError> {
        self.alphas_cumprod
            .get(t)
            .copied()
            .ok_or(SchedulerError::BadTimestep { t: t as i64, train: self.config.num_train_timesteps })
    }

    /// The variance sigma_t^2 / eta^2 between `t` and `prev` (diffusers' `_get_variance`).
    pub fn variance(&self, t: usize, prev: i64) -> f64 {
        let a_t = self.alphas_cumprod[t];
        let a_prev = self.alpha_bar(prev);
        let (b_t, b_prev) = (1.0 - a_t, 1.0 - a_prev);
        (b_prev / b_t) * (1.0 - a_t / a_prev)
    }

    /// One DDIM step from `t` (diffusers' `step`, `use_clipped_model_output = false`).
    /// `noise` is required when `eta > 0`: every random draw comes from the caller.
    pub fn step<const D: usize>(
        &self,
        model_output: Tensor<D>,
        t: usize,
        sample: Tensor<D>,
        eta: f64,
        noise: Option<Tensor<D>>,
    ) -> Result<DdimStep<D>, SchedulerError> {
        if self.num_inference_steps == 0 {
            return Err(SchedulerError::NoTimesteps);
        }
        // 1. previous timestep and 2. alpha/beta products (formula (12) of the DDIM paper).
        let prev = self.prev_timestep(t);
        let a_t = self.alpha_bar_checked(t)?;
        let a_prev = self.alpha_bar(prev);
        let b_t = 1.0 - a_t;
        // 3. predicted x_0 and predicted epsilon.
        let (mut pred_original, pred_eps) = match self.config.prediction_type {
            Prediction::Epsilon => {
                let x0 = (sample.clone() - model_output.clone().mul_scalar(b_t.sqrt())).div_scalar(a_t.sqrt());
                (x0, model_output)
            }
            Prediction::Sample => {
                let eps = (sample - model_output.clone().mul_scalar(a_t.sqrt())).div_scalar(b_t.sqrt());
                (model_output, eps)
            }
            Prediction::VPrediction => {
                let x0 = sample.clone().mul_scalar(a_t.sqrt()) - model_output.clone().mul_scalar(b_t.sqrt());
                let eps = model_output.mul_scalar(a_t.sqrt()) + sample.mul_scalar(b_t.sqrt());
                (x0, eps)
            }
        };
        // 4. clip x_0 if configured.
        if self.config.clip_sample {
            let r = self.config.clip_sample_range;
            pred_original = pred_original.clamp(-r, r);
        }
        // 5. sigma_t (formula (16)).
        let std_dev = eta * self.variance(t, prev).sqrt();
        // 6. direction pointing to x_t, and 7. x_{t-1} (formula (12)).
        let direction = pred_eps.mul_scalar((1.0 - a_prev - std_dev * std_dev).max(0.0).sqrt());
        let mut prev_sample = pred_original.clone().mul_scalar(a_prev.sqrt()) + direction;
        if eta > 0.0 {
            let noise = noise.ok_or_else(|| SchedulerError::Config("eta > 0 needs a noise tensor".into()))?;
            prev_sample = prev_sample + noise.mul_scalar(std_dev);
        }
        Ok(DdimStep { prev_sample, pred_original })
    }

    /// Forward-noises `original` to timestep `t`: sqrt(abar_t) x0 + sqrt(1 - abar_t) noise.
    pub fn add_noise<const D: usize>(
        &self,
        original: Tensor<D>,
        noise: Tensor<D>,
        t: usize,
    ) -> Result<Tensor<D>, SchedulerError> {
        let a = self.alpha_bar_checked(t)?;
        Ok(original.mul_scalar(a.sqrt()) + noise.mul_scalar((1.0 - a).sqrt()))
    }

    /// The first `round(steps * strength)` steps are skipped backwards: the timesteps that remain for an
    /// img2img/regeneration pass at `strength` (diffusers' `get_timesteps`).
    pub fn timesteps_for_strength(&self, strength: f64) -> &[usize] {
        let n = self.timesteps.len();
        let init = ((n as f64 * strength) as usize).min(n);
        &self.timesteps[n - init..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reference numbers from diffusers' own DDIM scheduler tests.
    #[test]
    fn diffusers_reference_numbers() {
        let mut s = Ddim::new(DdimConfig { steps_offset: 1, ..DdimConfig::default() }).unwrap();
        s.set_timesteps(5).unwrap();
        assert_eq!(s.timesteps, vec![801, 601, 401, 201, 1]);

        let s = Ddim::new(DdimConfig::default()).unwrap();
        for (t, prev, expected) in
            [(0, 0, 0.0), (420, 400, 0.14771), (980, 960, 0.32460), (487, 486, 0.00979), (999, 998, 0.02)]
        {
            let v = s.variance(t, prev);
            assert!((v - expected).abs() < 1e-5, "variance({t}, {prev}) = {v}, expected {expected}");
        }
    }

    #[test]
    fn i4vgen_schedule_matches_the_reference_derivation() {
        // REFERENCE.md: 25 leading steps with steps_offset 1 -> 961, 921, ..., 41, 1.
        let mut s = Ddim::new(DdimConfig::animatediff()).unwrap();
        s.set_timesteps(25).unwrap();
        let expected: Vec<usize> = (0..25).rev().map(|i| i * 40 + 1).collect();
        assert_eq!(s.timesteps, expected);
        // NI-VSDS runs floor(25 * 0.6) + 1 = 16 iterations over the first timesteps: 961 down to 361.
        assert_eq!(s.timesteps[15], 361);
        assert_eq!(s.timesteps_for_strength(1.0).first(), Some(&961));
        assert_eq!(s.timesteps_for_strength(0.8).len(), 20);
    }

    #[test]
    fn spacings_and_errors() {
        let mut s =
            Ddim::new(DdimConfig { timestep_spacing: TimestepSpacing::Trailing, ..DdimConfig::default() }).unwrap();
        s.set_timesteps(10).unwrap();
        assert_eq!(s.timesteps, vec![999, 899, 799, 699, 599, 499, 399, 299, 199, 99]);
        let mut s =
            Ddim::new(DdimConfig { timestep_spacing: TimestepSpacing::Linspace, ..DdimConfig::default() }).unwrap();
        s.set_timesteps(4).unwrap();
        assert_eq!(s.timesteps, vec![999, 666, 333, 0]);
        assert_eq!(s.set_timesteps(1001), Err(SchedulerError::TooManySteps { steps: 1001, train: 1000 }));
        assert_eq!(s.set_timesteps(0), Err(SchedulerError::NoSteps));
    }
}
