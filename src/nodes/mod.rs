//! Evaluators of the built-in node kinds, over the pipeline stages of [`crate::pipelines`].
//!
//! - [`inputs`]: prompt, the model loaders (SD 1.5 checkpoint, motion module, ImageReward; loaded once into
//!   the engine's model cache, on the engine's device), load image;
//! - [`candidates`], [`selector`]: I4VGen stages 1 and 2;
//! - [`animate`]: NI-VSDS, regeneration and plain text-to-video (stages 3 and 4, and the baseline);
//! - [`outputs`]: video preview and export.
//!
//! The values on each port type are in [`values`].

mod animate;
mod candidates;
mod inputs;
mod outputs;
mod selector;
mod stage;
pub mod values;

use std::path::PathBuf;

use crate::graph::kinds;
use crate::runtime::{EvalContext, Evaluators, NodeError};

pub use values::{Candidates, Loaded, PromptValue, Ranking, SelectedBy, StillImage};

/// Evaluators for every built-in kind.
pub fn builtin_evaluators() -> Evaluators {
    let mut e = Evaluators::new();
    e.register(kinds::PROMPT.id, inputs::prompt);
    e.register(kinds::LOAD_CHECKPOINT.id, inputs::load_checkpoint);
    e.register(kinds::LOAD_MOTION_MODULE.id, inputs::load_motion_module_node);
    e.register(kinds::LOAD_REWARD_MODEL.id, inputs::load_reward_model);
    e.register(kinds::LOAD_IMAGE.id, inputs::load_image);
    e.register(kinds::T2I_CANDIDATES.id, candidates::evaluate);
    e.register(kinds::CANDIDATE_SELECTOR.id, selector::evaluate);
    e.register(kinds::NI_VSDS.id, animate::ni_vsds);
    e.register(kinds::REGENERATOR.id, animate::regenerator);
    e.register(kinds::TEXT_TO_VIDEO.id, animate::text_to_video);
    e.register(kinds::VIDEO_PREVIEW.id, outputs::video_preview);
    e.register(kinds::EXPORT.id, outputs::export);
    e.register_check(kinds::EXPORT.id, outputs::export_check);
    e
}

/// Resolves a model path parameter inside the models directory (the access policy refuses paths that lead
/// out of it) and checks that it exists.
fn model_path(ctx: &EvalContext<'_>, param: &str) -> Result<PathBuf, NodeError> {
    let value = ctx.param_str(param)?;
    if value.is_empty() {
        return Err(NodeError::Param { name: param.to_string(), message: "no model file chosen".to_string() });
    }
    let path = ctx.file(param)?;
    if !path.exists() {
        return Err(NodeError::File {
            path: path.clone(),
            message: format!(
                "model file '{value}' not found in the models directory '{}'",
                ctx.access.models_dir.display()
            ),
        });
    }
    Ok(path)
}
