//! The networks behind the nodes, in burn: usable as a library without the app. By family:
//!
//! - [`sd15`]: SD 1.5 + AnimateDiff ([`unet`], [`stable_diffusion`], [`single_file`], re-exported here);
//! - [`modelscope`]: ModelScope T2V (UNet3DConditionModel and the diffusers folder);
//! - [`image_reward`]: the reward model of I4VGen's candidate selection;
//!
//! and shared by the families: [`blocks`] (resnets, up/down samplers), [`attention`], [`vae`], [`clip`],
//! [`load`], [`bounds`].
//!
//! - [`clip`]: the CLIP text encoder (SD 1.x's, OpenCLIP-H's as transformers holds it) and its BPE tokenizer
//!   ([`load_clip_text_encoder`]).
//! - [`unet`]: `UNet2DConditionModel` ([`load_unet`]); [`unet::motion`]: AnimateDiff motion modules v1/v2/v3
//!   ([`load_motion_module`]); [`unet::VideoUnet`] joins them into a video UNet over (B, C, F, H, W), with the
//!   motion modules bypassable for single images.
//! - [`vae`]: `AutoencoderKL` (encode, decode, frame-sliced and tiled decode) ([`load_vae`]).
//! - [`single_file`]: all three networks from one SD 1.5 checkpoint with the original LDM key names.
//! - [`stable_diffusion`]: a whole SD 1.x model (diffusers folder or single file) with its tokenizer, the
//!   parts checked against each other, and prompt encoding for guidance.
//! - [`image_reward`]: ImageReward (BLIP ViT-L/16 + BERT with cross-attention + MLP head), its Pillow-exact
//!   preprocessing and WordPiece tokenizer: scores images against a prompt.
//! - [`bounds`]: the sane bounds every size read from a configuration or tokenizer file is checked against.
//! - [`load`]: checked weight loading (missing keys, shape mismatches, unused keys, files of the wrong kind);
//!   pickles are parsed as data, never executed.
//!
//! Every network runs on any burn device (`Device::flex()` on the CPU, `Device::wgpu(..)` on a GPU). A video
//! noise prediction from a diffusers folder and a motion-module file:
//!
//! ```no_run
//! use std::path::Path;
//! use burn::tensor::{Device, Tensor};
//! use stepstone::models::unet::{Motion, VideoUnet};
//! use stepstone::models::{MotionLoadOptions, load_motion_module, load_unet};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let device = Device::flex();
//! let (unet, _) = load_unet(Path::new("stable-diffusion-v1-5/unet"), &device)?;
//! let (motion, _) = load_motion_module(Path::new("mm_sd_v15_v2.ckpt"), &device, &MotionLoadOptions::default())?;
//! let model = VideoUnet::new(unet, Some(motion))?;
//! let latents: Tensor<5> = Tensor::zeros([1, 4, 16, 64, 64], &device); // (B, C, F, H, W)
//! let text: Tensor<3> = Tensor::zeros([1, 77, 768], &device); // CLIP last hidden state
//! let eps = model.forward(latents, &[961.0], text, Motion::On)?;
//! # let _ = eps;
//! # Ok(())
//! # }
//! ```

pub mod attention;
pub mod blocks;
pub mod bounds;
pub mod clip;
pub mod i2vgen_xl;
pub mod image_reward;
pub mod load;
pub mod modelscope;
pub mod sd15;

// The SD 1.5 + AnimateDiff family's modules under their short paths (crate::models::unet, ...).
pub use sd15::{single_file, stable_diffusion, unet};
pub mod vae;

use std::path::{Path, PathBuf};

use burn::tensor::Device;

pub use load::{LoadError, LoadOptions, LoadReport};

/// Whether `device` is the CPU back-end (burn flex), which computes in f32, reports no device memory and
/// runs its own attention kernels.
pub fn is_cpu(device: &Device) -> bool {
    *device == Device::flex()
}

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
    let text = bounds::read_text(&path, bounds::MAX_CONFIG_BYTES)
        .map_err(|message| ComponentError::Config { path: path.clone(), message })?;
    serde_json::from_str(&text)
        .map_err(|e| ComponentError::Config { path, message: format!("line {} column {}: {e}", e.line(), e.column()) })
}

/// Refuses a component folder whose `config.json` names another known class than `class` (a UNet of another
/// family where this one is expected), saying what it is and which node loads it.
pub(crate) fn check_component_class(dir: &Path, class: &str) -> Result<(), ComponentError> {
    let path = dir.join("config.json");
    let Ok(text) = bounds::read_text(&path, bounds::MAX_CONFIG_BYTES) else { return Ok(()) };
    let Some(found) = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v.get("_class_name").and_then(|c| c.as_str()).map(str::to_string))
    else {
        return Ok(());
    };
    let known = |c: &str| match c {
        "UNet2DConditionModel" => Some(("a diffusers UNet2DConditionModel (SD 1.5's UNet)", "Load SD 1.5 Checkpoint")),
        "UNet3DConditionModel" => {
            Some(("a diffusers UNet3DConditionModel (ModelScope T2V's UNet)", "Load ModelScope T2V"))
        }
        "I2VGenXLUNet" => Some(("a diffusers I2VGenXLUNet (I2VGen-XL's UNet)", "Load I2VGen-XL")),
        _ => None,
    };
    match (known(&found), known(class)) {
        (Some((what, node)), Some((expected, _))) if found != class => Err(ComponentError::Config {
            path,
            message: format!("this is {what} ({found}), not {expected}: its folder loads with {node}"),
        }),
        _ => Ok(()),
    }
}

/// The pipeline class a diffusers folder's `model_index.json` names (`StableDiffusionPipeline`,
/// `TextToVideoSDPipeline`, ...), if it has a readable one.
pub fn pipeline_class(dir: &Path) -> Option<String> {
    let text = bounds::read_text(&dir.join("model_index.json"), bounds::MAX_CONFIG_BYTES).ok()?;
    let index: serde_json::Value = serde_json::from_str(&text).ok()?;
    index.get("_class_name")?.as_str().map(str::to_string)
}

/// What a diffusers pipeline class is, for wrong-kind messages, and the node that loads it.
pub fn describe_pipeline(class: &str) -> Option<(&'static str, &'static str)> {
    Some(match class {
        "StableDiffusionPipeline" => ("a Stable Diffusion 1.x folder", "Load SD 1.5 Checkpoint"),
        "TextToVideoSDPipeline" => ("a ModelScope T2V folder", "Load ModelScope T2V"),
        "AnimateDiffPipeline" => ("an AnimateDiff pipeline folder", "Load SD 1.5 Checkpoint and Load Motion Module"),
        "I2VGenXLPipeline" => ("an I2VGen-XL folder", "Load I2VGen-XL"),
        "StableDiffusionXLPipeline" => ("an SDXL folder", "none: SDXL is not supported"),
        _ => return None,
    })
}

/// Why a diffusers pipeline folder (ModelScope T2V, I2VGen-XL) did not load: the folder and what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum FolderError {
    #[error("{path}: {component}: {source}")]
    Component {
        path: PathBuf,
        component: &'static str,
        #[source]
        source: Box<ComponentError>,
    },
    #[error(transparent)]
    Tokenizer(#[from] clip::TokenizerError),
    #[error("{path}: {message}")]
    Layout { path: PathBuf, message: String },
}

impl FolderError {
    /// A layout problem of the folder at `path`.
    pub fn layout(path: &Path, message: impl Into<String>) -> Self {
        FolderError::Layout { path: path.to_path_buf(), message: message.into() }
    }

    /// Maps a component's error to one naming the folder and the component.
    pub fn component<'a>(path: &'a Path, component: &'static str) -> impl Fn(ComponentError) -> FolderError + 'a {
        move |source| FolderError::Component { path: path.to_path_buf(), component, source: Box::new(source) }
    }
}

/// Checks that `path` is a diffusers folder of `family` ("a ModelScope T2V": model_index.json naming `class`, where it names one
/// known to be something else) with every sub-folder of `parts`.
pub(crate) fn check_pipeline_folder(path: &Path, class: &str, family: &str, parts: &[&str]) -> Result<(), FolderError> {
    if let Some(found) = pipeline_class(path)
        && found != class
        && let Some((what, node)) = describe_pipeline(&found)
    {
        return Err(FolderError::layout(
            path,
            format!("this is {what} ({found} in model_index.json), not {family}: use {node}"),
        ));
    }
    let missing: Vec<String> = parts.iter().filter(|c| !path.join(c).is_dir()).map(|c| format!("{c}/")).collect();
    if !missing.is_empty() {
        let expected: Vec<String> = parts.iter().map(|c| format!("{c}/")).collect();
        return Err(FolderError::layout(
            path,
            format!("not {family} diffusers folder: missing {} (expected {})", missing.join(", "), expected.join(", ")),
        ));
    }
    Ok(())
}

/// A diffusers folder's `scheduler/scheduler_config.json` as a DDIM configuration.
pub(crate) fn read_scheduler_config(path: &Path) -> Result<crate::schedulers::DdimConfig, FolderError> {
    let file = path.join("scheduler").join("scheduler_config.json");
    let text = bounds::read_text(&file, bounds::MAX_CONFIG_BYTES)
        .map_err(|message| FolderError::layout(path, format!("scheduler/scheduler_config.json: {message}")))?;
    serde_json::from_str(&text).map_err(|e| FolderError::layout(path, format!("scheduler/scheduler_config.json: {e}")))
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
    let mut model = init(&config, device)
        .map_err(|e| ComponentError::Config { path: dir.join("config.json"), message: e.to_string() })?;
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

/// Loads transformers' `CLIPVisionModelWithProjection` from an `image_encoder/` folder (I2VGen-XL's and
/// DynamiCrafter's OpenCLIP ViT-H/14 image encoder).
pub fn load_clip_image_encoder(
    dir: &Path,
    device: &Device,
) -> Result<(clip::vision::ClipVisionModelWithProjection, LoadReport), ComponentError> {
    let options = LoadOptions { expected: Some("a CLIP image encoder"), ..CLIP_OPTIONS };
    load_component(dir, device, &["model", "pytorch_model"], clip::vision::ClipVisionConfig::init, &options)
}

/// Loads CLIP text-encoder weights (transformers key names) from one file.
pub fn load_clip_weights(model: &mut clip::ClipTextModel, path: &Path) -> Result<LoadReport, LoadError> {
    load::load_into(model, path, &CLIP_OPTIONS)
}

/// Loads diffusers' `AutoencoderKL` from a `vae/` folder.
pub fn load_vae(dir: &Path, device: &Device) -> Result<(vae::AutoencoderKl, LoadReport), ComponentError> {
    let options =
        LoadOptions { remap: VAE_LEGACY_ATTENTION, expected: Some("a diffusers VAE"), ..LoadOptions::default() };
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

/// How to read a motion-module file that has no `config.json`, and which norm semantics to run.
#[derive(Clone, Debug)]
pub struct MotionLoadOptions {
    /// Attention heads (8 in every released SD 1.5 motion module).
    pub heads: usize,
    /// GroupNorm groups (32 in every released SD 1.5 motion module).
    pub groups: usize,
    /// `None`: the original AnimateDiff semantics of the detected version.
    pub norms: Option<unet::motion::VideoNorms>,
}

impl Default for MotionLoadOptions {
    fn default() -> Self {
        MotionLoadOptions { heads: 8, groups: 32, norms: None }
    }
}

/// Loads AnimateDiff motion modules: a diffusers `MotionAdapter` folder (`config.json` +
/// `diffusion_pytorch_model.*`), or one file in the original format (`mm_sd_v15.ckpt`, `mm_sd_v15_v2.ckpt`,
/// `v3_sd15_mm.ckpt`, or their .safetensors conversions) or in diffusers' naming; fp32 or fp16. The layout
/// (v1/v2/v3) of a lone file is read from its tensor shapes.
pub fn load_motion_module(
    path: &Path,
    device: &Device,
    options: &MotionLoadOptions,
) -> Result<(unet::motion::MotionAdapter, LoadReport), ComponentError> {
    use unet::motion::{IGNORED_KEYS, MotionAdapterConfig, ORIGINAL_RENAME, VideoNorms};
    let (config, weights) = if path.is_dir() {
        let config: MotionAdapterConfig = read_config(path)?;
        let weights = diffusers_weight_file(path, "diffusion_pytorch_model", false).ok_or_else(|| {
            ComponentError::NoWeights { dir: path.to_path_buf(), stem: "diffusion_pytorch_model".into() }
        })?;
        (config, weights)
    } else {
        if !path.is_file() {
            return Err(LoadError::NotFound { path: path.to_path_buf() }.into());
        }
        let shapes = load::identify::read_shapes(path)?;
        let inferred = MotionAdapterConfig::infer(&shapes, options.heads, options.groups)
            .map_err(|e| ComponentError::Config { path: path.to_path_buf(), message: e.to_string() })?;
        let config = inferred.ok_or_else(|| {
            let keys: Vec<String> = shapes.into_iter().map(|(k, _)| k).collect();
            LoadError::WrongKind {
                path: path.to_path_buf(),
                message: format!(
                    "this file looks like {}, not an AnimateDiff motion module (no motion_modules weights)",
                    load::identify::classify(&keys).describe()
                ),
            }
        })?;
        (config, path.to_path_buf())
    };
    let mut adapter = config.init(device).map_err(|e| ComponentError::Config {
        path: if path.is_dir() { path.join("config.json") } else { path.to_path_buf() },
        message: e.to_string(),
    })?;
    let norms = options.norms.unwrap_or_else(|| VideoNorms::original(adapter.version));
    adapter = adapter.with_norms(norms);
    let load_options = LoadOptions {
        remap: ORIGINAL_RENAME,
        ignore_unused: IGNORED_KEYS,
        top_level_key: None,
        expected: Some("an AnimateDiff motion module"),
    };
    let report = load::load_into(&mut adapter, &weights, &load_options)?;
    Ok((adapter, report))
}

/// Loads diffusers' `UNet2DConditionModel` from a `unet/` folder.
pub fn load_unet(dir: &Path, device: &Device) -> Result<(unet::Unet2DConditionModel, LoadReport), ComponentError> {
    let options = LoadOptions { expected: Some("a diffusers UNet"), ..LoadOptions::default() };
    load_component(dir, device, &["diffusion_pytorch_model"], unet::UnetConfig::init, &options)
}
