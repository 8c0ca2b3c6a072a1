//! Parameter declarations shared by several kinds, and the groups read as one typed struct: the sampler's
//! settings ([`SamplerParams`]) are declared once here and appear in every generation node.

use crate::graph::{ParamSpec, ParamType};
use crate::pipelines::memory::CfgBatch;
use crate::runtime::{EvalContext, NodeError};
use crate::schedulers::{BetaSchedule, Ddim, DdimConfig};

pub const SEED: ParamSpec = ParamSpec::new(
    "seed",
    ParamType::Seed { default: 42 },
    "Random seed: the same seed and settings give the same result",
);
pub const STEPS: ParamSpec =
    ParamSpec::new("steps", ParamType::Int { default: 25, min: 1, max: 1000 }, "Number of DDIM sampling steps");
pub const CFG: ParamSpec = ParamSpec::new(
    "cfg",
    ParamType::Float { default: 7.5, min: 0.0, max: 30.0 },
    "Classifier-free guidance scale (1 disables the unconditional pass)",
);
pub const CFG_BATCH: ParamSpec = ParamSpec::new(
    "cfg_batch",
    ParamType::Choice { default: "together", options: &["together", "sequential"] },
    "together: both guidance branches in one UNet call (fastest); sequential: one after the other (half the memory)",
);
pub const BETA_SCHEDULE: ParamSpec = ParamSpec::new(
    "beta_schedule",
    ParamType::Choice { default: "linear", options: &["linear", "scaled_linear"] },
    "Noise schedule of the DDIM sampler (AnimateDiff uses linear, SD 1.5 scaled_linear)",
);
pub const BETA_START: ParamSpec = ParamSpec::new(
    "beta_start",
    ParamType::Float { default: 0.00085, min: 0.0, max: 0.1 },
    "First beta of the noise schedule",
);
pub const BETA_END: ParamSpec = ParamSpec::new(
    "beta_end",
    ParamType::Float { default: 0.012, min: 0.0, max: 0.5 },
    "Last beta of the noise schedule",
);
/// Why image sizes are multiples of 8.
const VAE_BLOCKS: &str = "the VAE downsamples by 8";
pub const WIDTH: ParamSpec =
    ParamSpec::new("width", ParamType::Int { default: 512, min: 64, max: 2048 }, "Width in pixels (a multiple of 8)")
        .multiple_of(8, VAE_BLOCKS);
pub const HEIGHT: ParamSpec =
    ParamSpec::new("height", ParamType::Int { default: 512, min: 64, max: 2048 }, "Height in pixels (a multiple of 8)")
        .multiple_of(8, VAE_BLOCKS);
pub const FRAMES: ParamSpec = ParamSpec::new(
    "frames",
    ParamType::Int { default: 16, min: 1, max: 64 },
    "Number of video frames (at most the motion module's positional limit: 24 for v1, 32 for v2/v3)",
);
pub const FPS: ParamSpec =
    ParamSpec::new("fps", ParamType::Float { default: 8.0, min: 0.1, max: 120.0 }, "Playback frame rate");

/// A kind's own parameters followed by a shared group, as one list (`N` = both lengths; checked when the
/// constant is evaluated, so a wrong count does not compile).
pub const fn with_group<const A: usize, const B: usize, const N: usize>(
    own: [ParamSpec; A],
    group: [ParamSpec; B],
) -> [ParamSpec; N] {
    assert!(A + B == N, "with_group: N must be the sum of both lengths");
    assert!(N > 0, "with_group: no parameters");
    let mut out = [if A > 0 { own[0] } else { group[0] }; N];
    let mut i = 0;
    while i < A {
        out[i] = own[i];
        i += 1;
    }
    while i < N {
        out[i] = group[i - A];
        i += 1;
    }
    out
}

/// The sampler's settings of a generation node: DDIM steps, guidance, how the guidance batches run, the
/// seed, and the noise schedule.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplerParams {
    pub steps: usize,
    pub cfg: f64,
    pub cfg_batch: CfgBatch,
    pub seed: u64,
    pub beta_schedule: BetaSchedule,
    pub beta_start: f64,
    pub beta_end: f64,
}

impl SamplerParams {
    /// The group's declarations, in the order the editor shows them.
    pub const SPECS: [ParamSpec; 7] = [STEPS, CFG, CFG_BATCH, SEED, BETA_SCHEDULE, BETA_START, BETA_END];

    pub fn read(ctx: &EvalContext<'_>) -> Result<Self, NodeError> {
        let GuidanceParams { steps, cfg, cfg_batch, seed } = GuidanceParams::read(ctx)?;
        let beta_schedule = match ctx.param_str("beta_schedule")? {
            "linear" => BetaSchedule::Linear,
            "scaled_linear" => BetaSchedule::ScaledLinear,
            other => {
                return Err(NodeError::Param {
                    name: "beta_schedule".into(),
                    message: format!("'{other}' is not a schedule this node knows (linear, scaled_linear)"),
                });
            }
        };
        Ok(SamplerParams {
            steps,
            cfg,
            cfg_batch,
            seed,
            beta_schedule,
            beta_start: ctx.param_f64("beta_start")?,
            beta_end: ctx.param_f64("beta_end")?,
        })
    }

    /// The DDIM scheduler of these settings over `base` (the family's scheduler configuration: the betas
    /// here replace its own), with the timesteps set.
    pub fn scheduler(&self, base: DdimConfig) -> Result<Ddim, NodeError> {
        let config = DdimConfig {
            beta_start: self.beta_start,
            beta_end: self.beta_end,
            beta_schedule: self.beta_schedule,
            ..base
        };
        let param =
            |name: &str, e: &dyn std::fmt::Display| NodeError::Param { name: name.into(), message: e.to_string() };
        let mut ddim = Ddim::new(config).map_err(|e| param("beta_start", &e))?;
        ddim.set_timesteps(self.steps).map_err(|e| param("steps", &e))?;
        Ok(ddim)
    }
}

/// The sampler's settings of a node whose noise schedule comes with its model (any [`VideoModel`]'s):
/// steps, guidance, how the guidance batches run, the seed.
///
/// [`VideoModel`]: crate::pipelines::denoiser::VideoModel
#[derive(Clone, Debug, PartialEq)]
pub struct GuidanceParams {
    pub steps: usize,
    pub cfg: f64,
    pub cfg_batch: CfgBatch,
    pub seed: u64,
}

impl GuidanceParams {
    /// The group's declarations, in the order the editor shows them.
    pub const SPECS: [ParamSpec; 4] = [STEPS, CFG, CFG_BATCH, SEED];

    /// [`Self::SPECS`] with other defaults for the steps and the guidance scale (a method's reference
    /// settings).
    pub const fn specs_with(steps: i64, cfg: f64) -> [ParamSpec; 4] {
        let mut specs = Self::SPECS;
        if let ParamType::Int { min, max, .. } = specs[0].ty {
            specs[0].ty = ParamType::Int { default: steps, min, max };
        }
        if let ParamType::Float { min, max, .. } = specs[1].ty {
            specs[1].ty = ParamType::Float { default: cfg, min, max };
        }
        specs
    }

    pub fn read(ctx: &EvalContext<'_>) -> Result<Self, NodeError> {
        let cfg_batch = ctx.param_str("cfg_batch")?;
        let cfg_batch = CfgBatch::parse(cfg_batch).ok_or_else(|| NodeError::Param {
            name: "cfg_batch".into(),
            message: format!("'{cfg_batch}' is not a choice of this parameter (together, sequential)"),
        })?;
        Ok(GuidanceParams {
            steps: ctx.param_u64("steps")? as usize,
            cfg: ctx.param_f64("cfg")?,
            cfg_batch,
            seed: ctx.param_u64("seed")?,
        })
    }
}

/// A size parameter (`width`, `height`) in pixels, checked to be a multiple of 8.
pub fn pixels(ctx: &EvalContext<'_>, name: &str) -> Result<usize, NodeError> {
    let value = ctx.param_u64(name)? as usize;
    if !value.is_multiple_of(8) {
        let down = value / 8 * 8;
        return Err(NodeError::Param {
            name: name.to_string(),
            message: format!(
                "{value} is not a multiple of 8 (the VAE works on 8x8 pixel blocks): use {down} or {}",
                down + 8
            ),
        });
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_follow_the_kinds_own_parameters() {
        const BOTH: [ParamSpec; 9] = with_group([FRAMES, FPS], SamplerParams::SPECS);
        let names: Vec<&str> = BOTH.iter().map(|p| p.name).collect();
        assert_eq!(
            names,
            ["frames", "fps", "steps", "cfg", "cfg_batch", "seed", "beta_schedule", "beta_start", "beta_end"]
        );
        const ONLY: [ParamSpec; 7] = with_group([], SamplerParams::SPECS);
        assert_eq!(ONLY[0].name, "steps");
    }
}
