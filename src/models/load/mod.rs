//! Loading weights into module trees, with the result checked.
//!
//! Every load reports: missing keys and shape or dtype mismatches are errors naming the file and the
//! first offending keys (expected vs found); keys in the file that the module does not use are returned
//! in the report (minus those a caller declares harmless, such as transformers' `position_ids` buffer).
//! Pickle files (`.bin`, `.ckpt`, `.pt`, `.pth`) are read by burn-store's PyTorch reader, which parses the
//! pickle stream as data and never executes code from it.
//!
//! Every tensor passes the same adapters, whatever the file format ([`import_adapter`]): a 1x1-convolution
//! weight `[out, in, 1, 1]` entering a `Linear` becomes `[out, in]` (original LDM VAE attention), PyTorch
//! layouts become burn's (Linear weights transposed, norm `weight`/`bias` as `gamma`/`beta`), and floats
//! of any width are cast to f32 (fp16 safetensors and fp16 pickles alike).

pub mod archive;
pub mod check;
pub mod identify;

use std::path::{Path, PathBuf};

use burn::store::burn_pack::Tensor as PackTensor;
use burn::store::{
    ApplyError, ApplyResult, ChainAdapter, FloatCastAdapter, KeyRemapper, ModuleAdapter, ModuleContext, ModuleSnapshot,
    ModuleStore, PyTorchToBurnAdapter, PytorchStore, SafetensorsStore, bridge,
};
use burn::tensor::{DType, Shape, TensorData};

/// How many offending keys a message lists.
const SHOWN: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{path}: file not found")]
    NotFound { path: PathBuf },
    #[error("{path}: cannot read weights: {message}")]
    Read { path: PathBuf, message: String },
    /// A weight file whose own description of itself is inconsistent (a crafted or damaged header).
    #[error("{path}: malformed weight file: {}{field}: {message}", tensor_prefix(.tensor))]
    Corrupt { path: PathBuf, tensor: Option<String>, field: &'static str, message: String },
    #[error("{path}: unsupported weight file type (expected .safetensors, .bin, .ckpt, .pt or .pth)")]
    UnknownFormat { path: PathBuf },
    #[error("{path}: {count} weight(s) missing, e.g. {}", list(.first))]
    Missing { path: PathBuf, count: usize, first: Vec<String> },
    #[error("{path}: {count} weight(s) do not fit: {}", list(.first))]
    Mismatch { path: PathBuf, count: usize, first: Vec<String> },
    #[error("{path}: {message}")]
    WrongKind { path: PathBuf, message: String },
    #[error("{path}: invalid key mapping: {message}")]
    Remap { path: PathBuf, message: String },
}

fn tensor_prefix(tensor: &Option<String>) -> String {
    tensor.as_ref().map(|t| format!("tensor '{t}': ")).unwrap_or_default()
}

fn list(items: &[String]) -> String {
    items.join("; ")
}

/// What a successful load did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LoadReport {
    pub path: PathBuf,
    /// Number of tensors loaded.
    pub applied: usize,
    /// Keys in the file that nothing used (after removing the declared-harmless ones).
    pub unused: Vec<String>,
}

/// Options of one load.
#[derive(Clone, Debug, Default)]
pub struct LoadOptions<'a> {
    /// Regex rewrites applied to the file's keys before matching (one documented table per format).
    pub remap: &'a [(&'a str, &'a str)],
    /// Regexes of file keys that are expected to be unused (buffers, EMA copies, ...).
    pub ignore_unused: &'a [&'a str],
    /// For pickle checkpoints: the key of the nested state dict ("state_dict"), if any.
    pub top_level_key: Option<&'a str>,
    /// What the file should hold, for messages ("a diffusers UNet").
    pub expected: Option<&'a str>,
}

/// The weight format of a file, from its extension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightFormat {
    Safetensors,
    Pickle,
}

impl WeightFormat {
    pub fn of(path: &Path) -> Option<Self> {
        match path.extension()?.to_str()?.to_ascii_lowercase().as_str() {
            "safetensors" => Some(WeightFormat::Safetensors),
            "bin" | "ckpt" | "pt" | "pth" => Some(WeightFormat::Pickle),
            _ => None,
        }
    }
}

/// The adapters every loaded tensor passes, in order: [`Conv1x1ToLinear`], burn-store's
/// `PyTorchToBurnAdapter`, a cast of floats to f32.
pub fn import_adapter() -> ChainAdapter {
    ChainAdapter::new(Conv1x1ToLinear, ChainAdapter::new(PyTorchToBurnAdapter, FloatCastAdapter::to(DType::F32)))
}

/// A 1x1-convolution weight `[out, in, 1, 1]` loaded into a `Linear` is the same matrix `[out, in]`: the
/// original LDM VAE stores its attention projections (`q`, `k`, `v`, `proj_out`) as 1x1 convolutions where
/// diffusers (and we) have linear layers. Any other tensor passes unchanged; a 4-D tensor entering a
/// `Linear` with other trailing sizes still fails the shape check, naming both shapes.
#[derive(Clone, Debug, Default)]
pub struct Conv1x1ToLinear;

impl ModuleAdapter for Conv1x1ToLinear {
    fn adapt(&self, tensor: PackTensor, ctx: ModuleContext<'_>) -> PackTensor {
        let linear_weight =
            ctx.module_type() == Some("Struct:Linear") && tensor.name.rsplit('.').next() == Some("weight");
        match *tensor.shape {
            [out, inp, 1, 1] if linear_weight => {
                let (name, dtype) = (tensor.name.clone(), tensor.dtype);
                let shape = Shape::from(vec![out, inp]);
                let target = shape.clone();
                bridge::map_data(tensor, name, dtype, shape, move |data| {
                    let (bytes, _, dtype) = data.into_parts();
                    TensorData::from_bytes(bytes, target.clone(), dtype)
                })
            }
            _ => tensor,
        }
    }

    fn clone_box(&self) -> Box<dyn ModuleAdapter> {
        Box::new(self.clone())
    }
}

/// Casts every float parameter to the float type of the device it lives on (its default: f32 unless a
/// half-precision run configured the device otherwise). Files are read as f32 (see [`load_into`]); this
/// is where an f16 run's weights become f16. A no-op at f32.
pub fn to_device_dtype<M: burn::module::Module + Clone>(module: &mut M) {
    struct Cast;
    impl burn::module::ModuleMapper for Cast {
        fn map_float<const D: usize>(
            &mut self,
            param: burn::module::Param<burn::tensor::Tensor<D>>,
        ) -> burn::module::Param<burn::tensor::Tensor<D>> {
            param.map(|t| {
                let dtype = t.device().settings().float_dtype;
                t.cast(dtype)
            })
        }
    }
    let needs_cast =
        module.devices().first().is_some_and(|d| d.settings().float_dtype != burn::tensor::FloatDType::F32);
    if needs_cast {
        *module = module.clone().map(&mut Cast);
    }
}

/// Loads `path` into `module` (weights are converted to f32, then to the device's float type), checking
/// the result.
pub fn load_into<M: ModuleSnapshot + Clone>(
    module: &mut M,
    path: &Path,
    options: &LoadOptions<'_>,
) -> Result<LoadReport, LoadError> {
    if !path.is_file() {
        return Err(LoadError::NotFound { path: path.to_path_buf() });
    }
    let format = WeightFormat::of(path).ok_or_else(|| LoadError::UnknownFormat { path: path.to_path_buf() })?;
    let read_err = |e: &dyn std::fmt::Display| LoadError::Read { path: path.to_path_buf(), message: e.to_string() };
    // A quick look at the keys first, with every declared size checked against the file (`check`): a
    // truncated or crafted file, or a file of another kind, gets a precise message before burn-store reads it.
    let mut keys = identify::read_keys(path)?;
    if let (WeightFormat::Pickle, Some(top)) = (format, options.top_level_key) {
        // The reader names nested entries `<top>.<key>`; classify the keys the load will see.
        let prefix = format!("{top}.");
        keys = keys.into_iter().map(|k| k.strip_prefix(&prefix).map(str::to_string).unwrap_or(k)).collect();
    }
    let remapper = KeyRemapper::from_patterns(options.remap.to_vec())
        .map_err(|e| LoadError::Remap { path: path.to_path_buf(), message: e.to_string() })?;
    let result = match format {
        WeightFormat::Safetensors => {
            let mut store = SafetensorsStore::from_file(path)
                .with_from_adapter(import_adapter())
                .remap(remapper)
                .allow_partial(true)
                .skip_enum_variants(true)
                .validate(false);
            module.load_from(&mut store).map_err(|e| read_err(&e))?
        }
        WeightFormat::Pickle => {
            // Indices stay as the file has them: our module lists keep parameter-free entries (dropout)
            // in place, exactly like the reference's ModuleLists.
            let mut store = PytorchStore::from_file(path).remap(remapper).map_indices_contiguous(false);
            if let Some(key) = options.top_level_key {
                store = store.with_top_level_key(key);
            }
            // PytorchStore's own apply has no adapter hook (it always uses PyTorchToBurnAdapter alone, so
            // fp16 pickles would load as f16): take its (remapped) tensors and apply them with ours.
            // The pre-check above has parsed the same file with the same reader; a panic in it (or in a
            // tensor read during the apply) still becomes an error naming the file.
            let tensors: Vec<PackTensor> =
                check::guard_pickle(path, || store.get_all_tensors().map(|t| t.values().cloned().collect::<Vec<_>>()))?
                    .map_err(|e| read_err(&e))?;
            check::guard_pickle(path, || module.apply(tensors, None, Some(Box::new(import_adapter())), true))?
        }
    };
    if result.applied.len() < result.missing.len() {
        // Most of the model is absent from the file: say what the file is instead of listing keys.
        let found = identify::classify(&keys);
        let expected = options.expected.unwrap_or("the model this node needs");
        return Err(LoadError::WrongKind {
            path: path.to_path_buf(),
            message: format!(
                "this file looks like {}, not {expected} ({} of {} expected weights are missing)",
                found.describe(),
                result.missing.len(),
                result.missing.len() + result.applied.len()
            ),
        });
    }
    let report = check(path, result, options.ignore_unused)?;
    to_device_dtype(module);
    Ok(report)
}

fn check(path: &Path, result: ApplyResult, ignore: &[&str]) -> Result<LoadReport, LoadError> {
    if !result.errors.is_empty() {
        let first = result.errors.iter().take(SHOWN).map(describe_apply_error).collect();
        return Err(LoadError::Mismatch { path: path.to_path_buf(), count: result.errors.len(), first });
    }
    if !result.missing.is_empty() {
        let first = result.missing.iter().take(SHOWN).map(|(k, _)| k.clone()).collect();
        return Err(LoadError::Missing { path: path.to_path_buf(), count: result.missing.len(), first });
    }
    let ignore: Vec<regex::Regex> = ignore.iter().filter_map(|p| regex::Regex::new(p).ok()).collect();
    let unused = result.unused.into_iter().filter(|k| !ignore.iter().any(|r| r.is_match(k))).collect();
    Ok(LoadReport { path: path.to_path_buf(), applied: result.applied.len(), unused })
}

fn describe_apply_error(e: &ApplyError) -> String {
    match e {
        ApplyError::ShapeMismatch { path, expected, found } => {
            format!("{path}: expected shape {expected:?}, found {found:?}")
        }
        other => other.to_string(),
    }
}
