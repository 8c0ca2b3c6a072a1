//! The values on each port type, defined with the [`Value`](crate::values::Value) enum in [`crate::values`].

pub use crate::values::{
    Candidates, CheckpointValue, I2vModelValue, Loaded, MotionValue, PortValue, PromptValue, Ranking, RewardValue,
    SelectedBy, StillImage, Value, VideoModelValue,
};
