//! Typed ports: what flows along a link.

use serde::{Deserialize, Serialize};

/// The type of a value carried by a link. A link is allowed only between ports of the same type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PortType {
    /// Positive and negative prompt text.
    Prompt,
    /// A Stable Diffusion 1.5 model: UNet, VAE, text encoder and tokenizer.
    Checkpoint,
    /// AnimateDiff motion modules for the SD 1.5 UNet.
    MotionModule,
    /// An ImageReward model.
    RewardModel,
    /// A text-to-video model of any family (its denoiser, VAE, text encoder and noise schedule).
    VideoModel,
    /// An image-to-video model (I2VGen-XL: its UNet, VAE, text and image encoders and noise schedule).
    I2vModel,
    /// N candidate anchor images with their latents (and, once scored, their rewards).
    Candidates,
    /// One still image (an anchor).
    Image,
    /// Every candidate with its reward score, and which one is selected (by reward or by hand).
    Ranking,
    /// A video clip: frames and, where a model made it, its latents.
    Video,
    /// An integer; used by test-only node kinds.
    Int,
}

impl PortType {
    /// A short human name, as shown on ports and in messages.
    pub fn name(self) -> &'static str {
        match self {
            PortType::Prompt => "prompt",
            PortType::Checkpoint => "checkpoint",
            PortType::MotionModule => "motion module",
            PortType::RewardModel => "reward model",
            PortType::VideoModel => "video model",
            PortType::I2vModel => "image-to-video model",
            PortType::Candidates => "candidates",
            PortType::Image => "image",
            PortType::Ranking => "ranking",
            PortType::Video => "video",
            PortType::Int => "integer",
        }
    }
}

impl std::fmt::Display for PortType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Declaration of one input or output port of a node kind.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PortSpec {
    pub name: &'static str,
    pub ty: PortType,
    /// For inputs: whether the node cannot run without a link here.
    pub required: bool,
    /// For optional inputs: `(parameter, value)`: the input is required while that choice parameter has that
    /// value (the candidate selector's reward model in mode "reward").
    pub required_when: Option<(&'static str, &'static str)>,
    /// One line, shown as a tooltip.
    pub description: &'static str,
}

impl PortSpec {
    pub const fn required(name: &'static str, ty: PortType, description: &'static str) -> Self {
        PortSpec { name, ty, required: true, required_when: None, description }
    }
    pub const fn optional(name: &'static str, ty: PortType, description: &'static str) -> Self {
        PortSpec { name, ty, required: false, required_when: None, description }
    }
    /// Declares that this (optional) input is required while choice parameter `param` is `value`.
    pub const fn required_when(mut self, param: &'static str, value: &'static str) -> Self {
        self.required_when = Some((param, value));
        self
    }
    /// Output ports are never "required"; this is the constructor for them.
    pub const fn output(name: &'static str, ty: PortType, description: &'static str) -> Self {
        PortSpec { name, ty, required: false, required_when: None, description }
    }
}
