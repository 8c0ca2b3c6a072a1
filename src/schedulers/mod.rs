//! Diffusion noise schedulers as diffusers implements them.
//!
//! Schedulers are CPU-side tables (`f64`, computed the way diffusers computes them in `float32` so that
//! timesteps and coefficients match bit for bit where it matters); only `step` and `add_noise` touch
//! tensors. Pipeline logic lives in pipelines; [`sample`] only holds the generic guided DDIM loop, with
//! the model passed in as a closure.

pub mod ddim;
pub mod sample;

pub use ddim::{Ddim, DdimConfig, DdimStep};
pub use sample::{CfgDdim, SampleError, StepProgress, guide, sample_ddim_cfg};

/// How betas are spread over the training timesteps (`beta_schedule` in diffusers configs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BetaSchedule {
    /// `linspace(beta_start, beta_end)`: AnimateDiff's and LaVie's schedule.
    Linear,
    /// `linspace(sqrt(beta_start), sqrt(beta_end)) ** 2`: Stable Diffusion 1.x/2.x.
    ScaledLinear,
    /// Glide's cosine schedule (`squaredcos_cap_v2`), betas capped at 0.999: I2VGen-XL.
    #[serde(rename = "squaredcos_cap_v2")]
    SquaredCosCapV2,
}

impl BetaSchedule {
    /// The diffusers name.
    pub fn name(self) -> &'static str {
        match self {
            BetaSchedule::Linear => "linear",
            BetaSchedule::ScaledLinear => "scaled_linear",
            BetaSchedule::SquaredCosCapV2 => "squaredcos_cap_v2",
        }
    }

    /// Parses a diffusers name.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "linear" => Some(BetaSchedule::Linear),
            "scaled_linear" => Some(BetaSchedule::ScaledLinear),
            "squaredcos_cap_v2" => Some(BetaSchedule::SquaredCosCapV2),
            _ => None,
        }
    }
}

/// How inference timesteps are picked from the training range (`timestep_spacing`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimestepSpacing {
    Leading,
    Trailing,
    Linspace,
}

/// What the model predicts (`prediction_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Prediction {
    Epsilon,
    #[serde(rename = "v_prediction")]
    VPrediction,
    Sample,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SchedulerError {
    #[error("{steps} inference steps requested, but the scheduler was trained with {train} timesteps")]
    TooManySteps { steps: usize, train: usize },
    #[error("at least one inference step is needed")]
    NoSteps,
    #[error("timestep {t} is outside the trained range 0..{train}")]
    BadTimestep { t: i64, train: usize },
    #[error("set_timesteps must be called before step")]
    NoTimesteps,
    #[error("invalid scheduler configuration: {0}")]
    Config(String),
}

/// Betas as diffusers computes them (in `float32`), returned as `f64`.
pub fn betas(schedule: BetaSchedule, beta_start: f64, beta_end: f64, n: usize) -> Vec<f64> {
    match schedule {
        BetaSchedule::Linear => {
            linspace_f32(beta_start as f32, beta_end as f32, n).into_iter().map(f64::from).collect()
        }
        BetaSchedule::ScaledLinear => linspace_f32(beta_start.sqrt() as f32, beta_end.sqrt() as f32, n)
            .into_iter()
            .map(|b| f64::from(b * b))
            .collect(),
        BetaSchedule::SquaredCosCapV2 => {
            // diffusers' betas_for_alpha_bar: computed in Python floats (f64), stored as float32.
            let alpha_bar = |t: f64| ((t + 0.008) / 1.008 * std::f64::consts::FRAC_PI_2).cos().powi(2);
            (0..n)
                .map(|i| {
                    let t1 = i as f64 / n as f64;
                    let t2 = (i + 1) as f64 / n as f64;
                    f64::from((1.0 - alpha_bar(t2) / alpha_bar(t1)).min(0.999) as f32)
                })
                .collect()
        }
    }
}

/// `torch.linspace(start, end, n, dtype=float32)`: torch computes the first half from the start and the
/// second half from the end (`start + i*step` for `i < n/2`, `end - (n-1-i)*step` after), in float32.
pub fn linspace_f32(start: f32, end: f32, n: usize) -> Vec<f32> {
    if n == 1 {
        return vec![start];
    }
    let step = (end - start) / (n - 1) as f32;
    let half = n / 2;
    (0..n).map(|i| if i < half { start + step * i as f32 } else { end - step * (n - 1 - i) as f32 }).collect()
}

/// diffusers' `rescale_zero_terminal_snr` (arXiv 2305.08891, Algorithm 1), in float32 like diffusers.
pub fn rescale_zero_terminal_snr(betas: &[f64]) -> Vec<f64> {
    let sqrt_bar: Vec<f32> = alphas_cumprod(betas).into_iter().map(|a| (a as f32).sqrt()).collect();
    let (Some(&a0), Some(&at)) = (sqrt_bar.first(), sqrt_bar.last()) else { return Vec::new() };
    let bar: Vec<f32> = sqrt_bar.iter().map(|&s| ((s - at) * (a0 / (a0 - at))).powi(2)).collect();
    let mut out = Vec::with_capacity(bar.len());
    out.push(f64::from(1.0 - bar[0]));
    for i in 1..bar.len() {
        out.push(f64::from(1.0 - bar[i] / bar[i - 1]));
    }
    out
}

/// Cumulative products of `1 - beta` as `torch.cumprod` computes them on float32 tensors: factors in
/// float32, the running product accumulated in double, each output rounded to float32.
pub fn alphas_cumprod(betas: &[f64]) -> Vec<f64> {
    let mut cum = 1.0f64;
    betas
        .iter()
        .map(|&b| {
            cum *= f64::from(1.0 - b as f32);
            f64::from(cum as f32)
        })
        .collect()
}
