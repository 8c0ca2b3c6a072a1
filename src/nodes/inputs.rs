//! Source nodes: prompt, model loaders, load image.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::model_path;
use super::values::{CheckpointValue, Loaded, MotionValue, PromptValue, RewardValue, StillImage};
use crate::models::image_reward::{load_image_reward, load_image_reward_dir};
use crate::models::load::identify::{classify, read_shapes};
use crate::models::stable_diffusion::load_stable_diffusion;
use crate::models::{LoadReport, MotionLoadOptions, load_motion_module};
use crate::runtime::cache::fingerprint;
use crate::runtime::{EvalContext, NodeError, NodeOutputs};

pub(super) fn prompt(ctx: &mut EvalContext<'_>) -> Result<NodeOutputs, NodeError> {
    let value = PromptValue {
        positive: ctx.param_str("positive")?.to_string(),
        negative: ctx.param_str("negative")?.to_string(),
    };
    Ok(NodeOutputs::new().with("prompt", value))
}

/// The model-cache key of a model file or folder: what it is, where, and its fingerprint (so a replaced file
/// is loaded again), plus any loading options.
fn model_key(role: &str, path: &Path, options: &str) -> String {
    let print = blake3::hash(&fingerprint(path));
    format!("{role}:{}:{}:{options}", path.display(), &print.to_hex()[..16])
}

/// Loads (or finds loaded) the model under `key`; a failure names the file.
fn load_cached<T: Send + Sync + 'static>(
    ctx: &mut EvalContext<'_>,
    key: String,
    path: &Path,
    load: impl FnOnce() -> Result<(T, Vec<LoadReport>), String>,
) -> Result<Loaded<T>, NodeError> {
    let mut unused = Vec::new();
    let model = ctx.models.get_or_load(&key, || {
        let (model, reports) = load().map_err(|message| NodeError::File { path: path.to_path_buf(), message })?;
        unused = reports.into_iter().flat_map(|r| r.unused).collect();
        Ok(model)
    })?;
    if !unused.is_empty() {
        let shown: Vec<&str> = unused.iter().take(5).map(String::as_str).collect();
        ctx.note(format!("{} weights in the file were not used (first: {})", unused.len(), shown.join(", ")));
    }
    Ok(Loaded { model, key })
}

pub(super) fn load_checkpoint(ctx: &mut EvalContext<'_>) -> Result<NodeOutputs, NodeError> {
    let path = model_path(ctx, "path")?;
    let device = ctx.device.clone();
    let value: CheckpointValue = load_cached(ctx, model_key("sd", &path, ""), &path, || {
        let (model, reports) = load_stable_diffusion(&path, &device).map_err(|e| e.to_string())?;
        Ok((model, reports.into_iter().map(|(_, r)| r).collect()))
    })?;
    Ok(NodeOutputs::new().with("model", value))
}

pub(super) fn load_motion_module_node(ctx: &mut EvalContext<'_>) -> Result<NodeOutputs, NodeError> {
    let path = model_path(ctx, "path")?;
    let wanted = ctx.param_str("version")?.to_string();
    let device = ctx.device.clone();
    let value: MotionValue = load_cached(ctx, model_key("motion", &path, ""), &path, || {
        let (adapter, report) =
            load_motion_module(&path, &device, &MotionLoadOptions::default()).map_err(|e| e.to_string())?;
        Ok((adapter, vec![report]))
    })?;
    let found = value.model.version;
    if wanted != "auto" && !found.name().starts_with(&format!("{wanted} ")) {
        return Err(NodeError::Param {
            name: "version".to_string(),
            message: format!(
                "{wanted} was chosen, but {} holds a {} motion module (read from its weights); choose {} or auto",
                path.display(),
                found.name(),
                found.name().split(' ').next().unwrap_or("auto")
            ),
        });
    }
    ctx.note(format!("AnimateDiff {} motion module, at most {} frames", found.name(), value.model.max_seq_length));
    Ok(NodeOutputs::new().with("motion", value))
}

pub(super) fn load_reward_model(ctx: &mut EvalContext<'_>) -> Result<NodeOutputs, NodeError> {
    let path = model_path(ctx, "path")?;
    let device = ctx.device.clone();
    let value: RewardValue = load_cached(ctx, model_key("image reward", &path, ""), &path, || {
        let (model, report) = if path.is_dir() {
            load_image_reward_dir(&path, &device)
        } else {
            // Say what a wrong file is before looking for the configuration files beside it.
            let shapes = read_shapes(&path).map_err(|e| e.to_string())?;
            if !shapes.iter().any(|(key, _)| key.starts_with("blip.")) {
                let keys: Vec<String> = shapes.into_iter().map(|(key, _)| key).collect();
                return Err(format!(
                    "this file looks like {}, not an ImageReward model (it has no blip.* weights)",
                    classify(&keys).describe()
                ));
            }
            // A weights file next to its med_config.json and vocab.txt (the ImageReward folder layout).
            let dir = path.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."));
            load_image_reward(&path, &dir, &device)
        }
        .map_err(|e| e.to_string())?;
        Ok((model, vec![report]))
    })?;
    Ok(NodeOutputs::new().with("reward", value))
}

/// The largest side of an image Load Image decodes.
const MAX_IMAGE_SIDE: u32 = 16_384;
/// The most memory decoding one image may take.
const MAX_IMAGE_BYTES: u64 = 1 << 30;

pub(super) fn load_image(ctx: &mut EvalContext<'_>) -> Result<NodeOutputs, NodeError> {
    let value = ctx.param_str("path")?;
    if value.is_empty() {
        return Err(NodeError::Param { name: "path".into(), message: "no image file chosen".into() });
    }
    let path = ctx.file("path")?;
    let mut reader = image::ImageReader::open(&path)
        .map_err(|e| NodeError::File { path: path.clone(), message: format!("cannot open: {e}") })?
        .with_guessed_format()
        .map_err(|e| NodeError::File { path: path.clone(), message: format!("cannot read: {e}") })?;
    // A crafted header may claim any size: decode only what an anchor image can reasonably be.
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_IMAGE_SIDE);
    limits.max_image_height = Some(MAX_IMAGE_SIDE);
    limits.max_alloc = Some(MAX_IMAGE_BYTES);
    reader.limits(limits);
    let image = reader
        .decode()
        .map_err(|e| NodeError::File { path: path.clone(), message: format!("not a readable image: {e}") })?
        .to_rgb8();
    let still = StillImage { image: Arc::new(image), source: path.display().to_string(), latent: None };
    ctx.preview("image", still.clone());
    Ok(NodeOutputs::new().with("image", still))
}
