//! Source nodes: prompt, model loaders, load image.

use std::path::PathBuf;
use std::sync::Arc;

use super::{PromptValue, StillImage, model_path};
use crate::runtime::{EvalContext, NodeError, NodeOutputs};

/// A located model file. The model stack will replace this with loaded weights; until then the loaders
/// check that the file exists and pass its location on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelFile {
    pub path: PathBuf,
    /// What the file should hold ("sd15", "motion module", "image reward").
    pub role: &'static str,
}

pub(super) fn prompt(ctx: &mut EvalContext<'_>) -> Result<NodeOutputs, NodeError> {
    let value = PromptValue {
        positive: ctx.param_str("positive")?.to_string(),
        negative: ctx.param_str("negative")?.to_string(),
    };
    Ok(NodeOutputs::new().with("prompt", value))
}

fn locate(ctx: &mut EvalContext<'_>, role: &'static str, port: &str) -> Result<NodeOutputs, NodeError> {
    let path = model_path(ctx, "path")?;
    let key = format!("{role}:{}", path.display());
    let model = ctx.models.get_or_load(&key, || Ok(ModelFile { path: path.clone(), role }))?;
    let mut out = NodeOutputs::new();
    out.values.insert(port.to_string(), model);
    Ok(out)
}

pub(super) fn load_checkpoint(ctx: &mut EvalContext<'_>) -> Result<NodeOutputs, NodeError> {
    locate(ctx, "sd15", "model")
}

pub(super) fn load_motion_module(ctx: &mut EvalContext<'_>) -> Result<NodeOutputs, NodeError> {
    locate(ctx, "motion module", "motion")
}

pub(super) fn load_reward_model(ctx: &mut EvalContext<'_>) -> Result<NodeOutputs, NodeError> {
    locate(ctx, "image reward", "reward")
}

pub(super) fn load_image(ctx: &mut EvalContext<'_>) -> Result<NodeOutputs, NodeError> {
    let value = ctx.param_str("path")?;
    if value.is_empty() {
        return Err(NodeError::Param { name: "path".into(), message: "no image file chosen".into() });
    }
    let path = PathBuf::from(value);
    let image = image::ImageReader::open(&path)
        .map_err(|e| NodeError::File { path: path.clone(), message: format!("cannot open: {e}") })?
        .with_guessed_format()
        .map_err(|e| NodeError::File { path: path.clone(), message: format!("cannot read: {e}") })?
        .decode()
        .map_err(|e| NodeError::File { path: path.clone(), message: format!("not a readable image: {e}") })?
        .to_rgb8();
    let still = StillImage { image: Arc::new(image), source: path.display().to_string() };
    ctx.preview("image", still.clone());
    Ok(NodeOutputs::new().with("image", still))
}
