//! Evaluators of the built-in node kinds.
//!
//! Status: prompt, model loaders (file checks only), load image, video preview and export (PNG frame
//! sequence) evaluate. The generation kinds (T2I candidates, candidate selector, NI-VSDS, regenerator,
//! text to video) need the model stack and the pipeline; until those land they fail with a clear
//! "cannot run yet" message.

mod inputs;
mod outputs;

use std::path::PathBuf;
use std::sync::Arc;

use image::RgbImage;

use crate::graph::kinds;
use crate::runtime::{EvalContext, Evaluators, NodeError, NodeOutputs};

pub use inputs::ModelFile;

/// The value on a prompt port.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PromptValue {
    pub positive: String,
    pub negative: String,
}

/// The value on an image port.
#[derive(Clone, Debug)]
pub struct StillImage {
    pub image: Arc<RgbImage>,
    /// Where it came from (a file path, or "candidate 3"), for messages.
    pub source: String,
}

/// Evaluators for every built-in kind.
pub fn builtin_evaluators() -> Evaluators {
    let mut e = Evaluators::new();
    e.register(kinds::PROMPT.id, inputs::prompt);
    e.register(kinds::LOAD_CHECKPOINT.id, inputs::load_checkpoint);
    e.register(kinds::LOAD_MOTION_MODULE.id, inputs::load_motion_module);
    e.register(kinds::LOAD_REWARD_MODEL.id, inputs::load_reward_model);
    e.register(kinds::LOAD_IMAGE.id, inputs::load_image);
    for kind in [kinds::T2I_CANDIDATES, kinds::CANDIDATE_SELECTOR, kinds::NI_VSDS, kinds::REGENERATOR, kinds::TEXT_TO_VIDEO]
    {
        e.register(kind.id, not_yet);
    }
    e.register(kinds::VIDEO_PREVIEW.id, outputs::video_preview);
    e.register(kinds::EXPORT.id, outputs::export);
    e
}

fn not_yet(ctx: &mut EvalContext<'_>) -> Result<NodeOutputs, NodeError> {
    Err(NodeError::NotImplemented {
        kind: ctx.kind.id.to_string(),
        what: "the diffusion model stack and the I4VGen pipeline are not built yet".to_string(),
    })
}

/// Resolves a model path parameter against the models directory.
fn model_path(ctx: &EvalContext<'_>, param: &str) -> Result<PathBuf, NodeError> {
    let value = ctx.param_str(param)?;
    if value.is_empty() {
        return Err(NodeError::Param { name: param.to_string(), message: "no model file chosen".to_string() });
    }
    let path = crate::graph::validate::resolve_model_path(ctx.models_dir, value);
    if !path.exists() {
        return Err(NodeError::File {
            path: path.clone(),
            message: format!(
                "model file '{value}' not found in the models directory '{}'",
                ctx.models_dir.display()
            ),
        });
    }
    Ok(path)
}
