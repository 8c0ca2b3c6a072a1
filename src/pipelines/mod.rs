//! Generation pipelines over the model stack: a library API usable without the app. The node evaluators
//! compose these stages.
//!
//! - [`i4vgen`]: I4VGen's stages (candidates, scoring and selection, NI-VSDS, regeneration, decoding) and
//!   plain text-to-video for comparison.
//! - [`noise`]: the one noise-source abstraction every random draw goes through (seeded or replayed).

pub mod i4vgen;
pub mod noise;

use crate::models::image_reward::ImageRewardError;
use crate::models::unet::motion::MotionError;
use crate::schedulers::{SampleError, SchedulerError};

/// Why a pipeline stage stopped.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Motion(#[from] MotionError),
    #[error(transparent)]
    Scheduler(#[from] SchedulerError),
    #[error(transparent)]
    Sample(SampleError),
    #[error(transparent)]
    Reward(#[from] ImageRewardError),
    #[error(transparent)]
    Noise(#[from] noise::NoiseError),
    #[error("{stage} was cancelled")]
    Cancelled { stage: &'static str },
    #[error("there are no candidate images (the candidate count is 0)")]
    NoCandidates,
    #[error("candidate {index} was picked, but there are only {count} candidates (0 to {})", .count.saturating_sub(1))]
    IndexOutOfRange { index: usize, count: usize },
}
