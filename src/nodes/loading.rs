//! What the model loaders share: the model-cache key of a file and loading through the model cache.

use std::path::Path;

use super::values::Loaded;
use crate::models::LoadReport;
use crate::runtime::cache::fingerprint;
use crate::runtime::{EvalContext, NodeError};

/// The model-cache key of a model file or folder: what it is, where, and its fingerprint (so a replaced file
/// is loaded again), plus any loading options.
pub(super) fn model_key(role: &str, path: &Path, options: &str) -> String {
    let print = blake3::hash(&fingerprint(path));
    format!("{role}:{}:{}:{options}", path.display(), &print.to_hex()[..16])
}

/// Loads (or finds loaded) the model under `key`; a failure names the file.
pub(super) fn load_cached<T: Send + Sync + 'static>(
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
