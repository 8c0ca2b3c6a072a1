//! The values that travel along links between the built-in nodes, one type per port type.
//!
//! Tensors travel as host-side [`Latents`]: values must be shareable between threads (the worker sends them
//! to the front end in events), are kept in the result cache, and are small next to the models; a node
//! moves them to the engine's device when it needs them.

use std::sync::Arc;

use image::RgbImage;

use crate::models::image_reward::ImageReward;
use crate::models::stable_diffusion::StableDiffusion;
use crate::models::unet::motion::MotionAdapter;
use crate::pipelines::Latents;

/// The value on a prompt port.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PromptValue {
    pub positive: String,
    pub negative: String,
}

/// A loaded model on a model port, with the model-cache key it was loaded under (file and fingerprint),
/// which identifies it in other caches.
#[derive(Debug)]
pub struct Loaded<T> {
    pub model: Arc<T>,
    pub key: String,
}

impl<T> Clone for Loaded<T> {
    fn clone(&self) -> Self {
        Loaded { model: self.model.clone(), key: self.key.clone() }
    }
}

/// The value on a checkpoint port.
pub type CheckpointValue = Loaded<StableDiffusion>;
/// The value on a motion-module port.
pub type MotionValue = Loaded<MotionAdapter>;
/// The value on a reward-model port.
pub type RewardValue = Loaded<ImageReward>;

/// The value on an image port.
#[derive(Clone, Debug)]
pub struct StillImage {
    pub image: Arc<RgbImage>,
    /// Where it came from (a file path, or "candidate 3"), for messages.
    pub source: String,
    /// Its scaled VAE latent [1, C, 1, h, w] where a model made the image (a candidate); an image from a file
    /// has none and is encoded by the node that needs it.
    pub latent: Option<Latents>,
}

/// The value on a candidates port: N candidate anchor images from one prompt.
#[derive(Clone, Debug)]
pub struct Candidates {
    /// Scaled latents [N, C, 1, h, w].
    pub latents: Latents,
    /// The decoded images, one per candidate.
    pub images: Vec<Arc<RgbImage>>,
    /// The prompt they were made from (what the reward model scores them against).
    pub prompt: String,
    pub seed: u64,
}

/// How the candidate selector chose.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SelectedBy {
    /// The highest ImageReward score.
    Reward,
    /// The artist's pick.
    Hand,
}

/// The value on a ranking port: every candidate with its score and which one was selected (what the
/// editor shows under the candidate selector).
#[derive(Clone, Debug)]
pub struct Ranking {
    pub images: Vec<Arc<RgbImage>>,
    /// ImageReward scores in candidate order (absent when no reward model is connected).
    pub scores: Option<Vec<f32>>,
    pub selected: usize,
    pub by: SelectedBy,
}

impl Ranking {
    /// The candidate the reward model ranks highest, if scored.
    pub fn best(&self) -> Option<usize> {
        self.scores.as_deref().and_then(crate::models::image_reward::argmax)
    }
}
