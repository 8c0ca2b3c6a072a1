//! The networks behind the nodes, in burn: usable as a library without the app.
//!
//! Status: CLIP text encoder and tokenizer, VAE, 2D UNet. Motion modules, single-file checkpoints and
//! ImageReward are to come.

pub mod blocks;
pub mod clip;
pub mod image_reward;
pub mod load;
pub mod single_file;
pub mod unet;
pub mod vae;

use std::path::{Path, PathBuf};

use burn::tensor::Device;

pub use load::{LoadError, LoadOptions, LoadReport};

/// Files of one component in a diffusers folder, in the order diffusers prefers them.
pub fn diffusers_weight_file(dir: &Path, stem: &str, prefer_fp16: bool) -> Option<PathBuf> {
    let mut candidates = vec![format!("{stem}.safetensors"), format!("{stem}.bin")];
    let fp16 = vec![format!("{stem}.fp16.safetensors"), format!("{stem}.fp16.bin")];
    if prefer_fp16 {
        candidates.splice(0..0, fp16);
    } else {
        candidates.extend(fp16);
    }
    candidates.into_iter().map(|c| dir.join(c)).find(|p| p.is_file())
}

/// Errors of loading a diffusers component folder.
#[derive(Debug, thiserror::Error)]
pub enum ComponentError {
    #[error("{path}: {message}")]
    Config { path: PathBuf, message: String },
    #[error("{dir}: no weights found (looked for {stem}.safetensors, {stem}.bin and their .fp16 variants)")]
    NoWeights { dir: PathBuf, stem: String },
    #[error(transparent)]
    Load(#[from] LoadError),
}

fn read_config<T: serde::de::DeserializeOwned>(dir: &Path) -> Result<T, ComponentError> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| ComponentError::Config { path: path.clone(), message: e.to_string() })?;
    serde_json::from_str(&text).map_err(|e| ComponentError::Config {
        path,
        message: format!("line {} column {}: {e}", e.line(), e.column()),
    })
}

/// Reads a component folder: `config.json` into `C`, the model built by `init`, weights from the first
/// `stems` file found (each with its .fp16 variants), loaded with `options`.
fn load_component<C, M, E>(
    dir: &Path,
    device: &Device,
    stems: &[&str],
    init: impl FnOnce(&C, &Device) -> Result<M, E>,
    options: &LoadOptions<'_>,
) -> Result<(M, LoadReport), ComponentError>
where
    C: serde::de::DeserializeOwned,
    M: burn::store::ModuleSnapshot,
    E: std::fmt::Display,
{
    let config: C = read_config(dir)?;
    let mut model =
        init(&config, device).map_err(|e| ComponentError::Config { path: dir.join("config.json"), message: e.to_string() })?;
    let weights = stems
        .iter()
        .find_map(|stem| diffusers_weight_file(dir, stem, false))
        .ok_or_else(|| ComponentError::NoWeights { dir: dir.to_path_buf(), stem: stems.join("|") })?;
    let report = load::load_into(&mut model, &weights, options)?;
    Ok((model, report))
}

/// Loading options of the CLIP text encoder (transformers key names).
const CLIP_OPTIONS: LoadOptions<'static> = LoadOptions {
    remap: &[],
    ignore_unused: &[r"position_ids$"],
    top_level_key: None,
    expected: Some("a CLIP text encoder"),
};

/// Loads transformers' `CLIPTextModel` from a diffusers `text_encoder/` folder.
pub fn load_clip_text_encoder(
    dir: &Path,
    device: &Device,
) -> Result<(clip::ClipTextModel, LoadReport), ComponentError> {
    load_component(dir, device, &["model", "pytorch_model"], clip::ClipTextConfig::init, &CLIP_OPTIONS)
}

/// Loads CLIP text-encoder weights (transformers key names) from one file.
pub fn load_clip_weights(model: &mut clip::ClipTextModel, path: &Path) -> Result<LoadReport, LoadError> {
    load::load_into(model, path, &CLIP_OPTIONS)
}

/// Loads diffusers' `AutoencoderKL` from a `vae/` folder.
pub fn load_vae(dir: &Path, device: &Device) -> Result<(vae::AutoencoderKl, LoadReport), ComponentError> {
    let options = LoadOptions { remap: VAE_LEGACY_ATTENTION, expected: Some("a diffusers VAE"), ..LoadOptions::default() };
    load_component(dir, device, &["diffusion_pytorch_model"], vae::VaeConfig::init, &options)
}

/// Older diffusers VAE files name the mid-block attention `query`/`key`/`value`/`proj_attn`; diffusers
/// renames them on load to `to_q`/`to_k`/`to_v`/`to_out.0`, and so do we.
pub const VAE_LEGACY_ATTENTION: &[(&str, &str)] = &[
    (r"(mid_block\.attentions\.\d+)\.query\.", "$1.to_q."),
    (r"(mid_block\.attentions\.\d+)\.key\.", "$1.to_k."),
    (r"(mid_block\.attentions\.\d+)\.value\.", "$1.to_v."),
    (r"(mid_block\.attentions\.\d+)\.proj_attn\.", "$1.to_out.0."),
];

/// Loads diffusers' `UNet2DConditionModel` from a `unet/` folder.
pub fn load_unet(dir: &Path, device: &Device) -> Result<(unet::Unet2DConditionModel, LoadReport), ComponentError> {
    let options = LoadOptions { expected: Some("a diffusers UNet"), ..LoadOptions::default() };
    load_component(dir, device, &["diffusion_pytorch_model"], unet::UnetConfig::init, &options)
}
