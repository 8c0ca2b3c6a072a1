//! Where things live on disk.

use std::path::PathBuf;

/// The environment variable naming the models directory.
pub const MODELS_ENV: &str = "STEPSTONE_MODELS";

/// Where the models directory came from (for messages).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelsDirSource {
    CommandLine,
    Environment,
    Default,
}

/// The models directory: `--models DIR` if given, else `$STEPSTONE_MODELS`, else the per-user data path
/// (`$XDG_DATA_HOME/stepstone/models`, usually `~/.local/share/stepstone/models` on Linux).
pub fn models_dir(cli: Option<PathBuf>) -> (PathBuf, ModelsDirSource) {
    if let Some(dir) = cli {
        return (dir, ModelsDirSource::CommandLine);
    }
    if let Some(dir) = std::env::var_os(MODELS_ENV).filter(|v| !v.is_empty()) {
        return (PathBuf::from(dir), ModelsDirSource::Environment);
    }
    (default_models_dir(), ModelsDirSource::Default)
}

/// The per-user default models directory.
pub fn default_models_dir() -> PathBuf {
    dirs::data_dir().unwrap_or_else(|| PathBuf::from(".")).join("stepstone").join("models")
}
