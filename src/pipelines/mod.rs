//! Generation pipelines over the model stack: a library API usable without the app. The node evaluators
//! compose these stages.
//!
//! - [`i4vgen`]: I4VGen's stages (candidates, scoring and selection, NI-VSDS, regeneration, decoding) and
//!   plain text-to-video for comparison.
//! - [`noise`]: the one noise-source abstraction every random draw goes through (seeded or replayed).

pub mod denoiser;
pub mod i2vgen_xl;
pub mod i4vgen;
pub mod memory;
pub mod noise;
pub mod preview;
pub mod ti2v_zero;

use std::sync::Arc;

use burn::tensor::{Device, Tensor, TensorData};

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
    #[error(
        "the image is {width}x{height} pixels; width and height must be multiples of 8 (the VAE works on 8x8 blocks)"
    )]
    ImageSize { width: u32, height: u32 },
    #[error("{0}")]
    Data(String),
}

/// Latents (or any f32 tensor) held on the host: [clips, channels, frames, height, width].
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Latents {
    pub shape: [usize; 5],
    pub data: Arc<Vec<f32>>,
}

impl Latents {
    /// Copies a tensor from its device.
    pub fn from_tensor(t: &Tensor<5>) -> Result<Self, PipelineError> {
        let shape = t.dims();
        let data = t
            .to_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .map_err(|e| PipelineError::Data(format!("cannot read latents back from the device: {e:?}")))?;
        Ok(Latents { shape, data: Arc::new(data) })
    }

    /// The tensor on `device`.
    pub fn to_tensor(&self, device: &Device) -> Tensor<5> {
        Tensor::from_data(TensorData::new(self.data.as_ref().clone(), self.shape), device)
    }

    /// Clip `index` of the first dimension, as [1, C, F, h, w].
    pub fn clip(&self, index: usize) -> Option<Latents> {
        let [n, c, f, h, w] = self.shape;
        if index >= n {
            return None;
        }
        let size = c * f * h * w;
        let data = self.data.get(index * size..(index + 1) * size)?.to_vec();
        Some(Latents { shape: [1, c, f, h, w], data: Arc::new(data) })
    }

    /// Whether every value is finite.
    pub fn is_finite(&self) -> bool {
        self.data.iter().all(|v| v.is_finite())
    }
}
