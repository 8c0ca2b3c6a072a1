//! What a weight file looks like, from its keys alone: so that a wrong file gets a message that says
//! what it is ("an SDXL checkpoint", "a LoRA") rather than a list of a thousand missing weights.

use std::path::Path;

use super::{LoadError, WeightFormat};

/// A recognised kind of weight file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FileKind {
    Sd1SingleFile,
    Sd2SingleFile,
    SdxlSingleFile,
    Lora,
    /// An original AnimateDiff motion module (`mm_sd_v15*.ckpt`, `v3_sd15_mm.ckpt`).
    MotionModule,
    /// A diffusers `MotionAdapter`.
    MotionAdapter,
    DiffusersUnet,
    /// A diffusers `UNet3DConditionModel` (ModelScope T2V's UNet: temporal convolutions and transformers).
    DiffusersUnet3d,
    /// A diffusers `I2VGenXLUNet` (the 3-D UNet with I2VGen-XL's image and frame-rate conditioning).
    I2vgenXlUnet,
    DiffusersVae,
    ClipTextEncoder,
    /// A transformers `CLIPVisionModel(WithProjection)` (an image encoder).
    ClipImageEncoder,
    ImageReward,
    Unknown,
}

impl FileKind {
    pub fn describe(&self) -> &'static str {
        match self {
            FileKind::Sd1SingleFile => "a Stable Diffusion 1.x single-file checkpoint",
            FileKind::Sd2SingleFile => "a Stable Diffusion 2.x single-file checkpoint (OpenCLIP text encoder)",
            FileKind::SdxlSingleFile => "an SDXL checkpoint (two text encoders), which SD 1.5 pipelines cannot use",
            FileKind::Lora => "a LoRA (low-rank adapter weights), not a full model",
            FileKind::MotionModule => "an AnimateDiff motion module",
            FileKind::MotionAdapter => "a diffusers MotionAdapter (AnimateDiff motion modules)",
            FileKind::DiffusersUnet => "a diffusers UNet",
            FileKind::DiffusersUnet3d => "a diffusers UNet3DConditionModel (ModelScope T2V's UNet)",
            FileKind::I2vgenXlUnet => "a diffusers I2VGenXLUNet (I2VGen-XL's UNet)",
            FileKind::DiffusersVae => "a diffusers VAE",
            FileKind::ClipTextEncoder => "a CLIP text encoder",
            FileKind::ClipImageEncoder => "a CLIP image encoder",
            FileKind::ImageReward => "an ImageReward model",
            FileKind::Unknown => "no model stepstone knows",
        }
    }
}

/// Classifies a file from its tensor names.
pub fn classify(keys: &[String]) -> FileKind {
    let any = |pred: &dyn Fn(&str) -> bool| keys.iter().any(|k| pred(k));
    if any(&|k| {
        k.contains("lora_down")
            || k.contains("lora_up")
            || k.contains(".lora_A.")
            || k.starts_with("lora_unet_")
            || k.starts_with("lora_te")
    }) {
        return FileKind::Lora;
    }
    if any(&|k| k.starts_with("conditioner.embedders.")) {
        return FileKind::SdxlSingleFile;
    }
    if any(&|k| k.starts_with("cond_stage_model.model.transformer.resblocks")) {
        return FileKind::Sd2SingleFile;
    }
    if any(&|k| k.starts_with("model.diffusion_model.")) {
        return FileKind::Sd1SingleFile;
    }
    if any(&|k| k.contains("motion_modules.") && k.contains("temporal_transformer")) {
        return FileKind::MotionModule;
    }
    if any(&|k| k.contains("motion_modules.")) {
        return FileKind::MotionAdapter;
    }
    if any(&|k| k.starts_with("blip.") || k.starts_with("mlp.layers.")) {
        return FileKind::ImageReward;
    }
    if any(&|k| k.starts_with("text_model.embeddings.")) {
        return FileKind::ClipTextEncoder;
    }
    if any(&|k| k.starts_with("vision_model.embeddings.")) {
        return FileKind::ClipImageEncoder;
    }
    if any(&|k| k.starts_with("encoder.conv_in.")) && any(&|k| k.starts_with("decoder.conv_out.")) {
        return FileKind::DiffusersVae;
    }
    if any(&|k| k.starts_with("image_latents_proj_in.")) && any(&|k| k.starts_with("fps_embedding.")) {
        return FileKind::I2vgenXlUnet;
    }
    if any(&|k| k.starts_with("transformer_in.")) && any(&|k| k.contains(".temp_convs.")) {
        return FileKind::DiffusersUnet3d;
    }
    if any(&|k| k.starts_with("time_embedding.")) && any(&|k| k.starts_with("down_blocks.")) {
        return FileKind::DiffusersUnet;
    }
    FileKind::Unknown
}

/// The tensor names in a weight file. Safetensors headers are checked against the file size, so a
/// truncated download is named as such.
pub fn read_keys(path: &Path) -> Result<Vec<String>, LoadError> {
    Ok(read_shapes(path)?.into_iter().map(|(k, _)| k).collect())
}

/// The tensor names and shapes in a weight file (no tensor data is read). Every size, offset and count
/// the file declares is checked first ([`super::check`]): a damaged or crafted file is an error naming the
/// file, the tensor and the field, never a panic or a huge allocation.
pub fn read_shapes(path: &Path) -> Result<Vec<(String, Vec<usize>)>, LoadError> {
    match WeightFormat::of(path) {
        Some(WeightFormat::Safetensors) => super::check::safetensors_shapes(path),
        Some(WeightFormat::Pickle) => super::check::pickle_shapes(path),
        None => Err(LoadError::UnknownFormat { path: path.to_path_buf() }),
    }
}

/// What a model path holds, in one line for the artist: the kind of model (from its keys, or a folder's
/// `model_index.json` / `config.json` class), the file format and dtypes, and the size. The error says why
/// the path is not a model stepstone can read.
pub fn describe_model(path: &Path) -> Result<String, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if meta.is_dir() {
        let class = |file: &str| -> Option<String> {
            let text = std::fs::read_to_string(path.join(file)).ok()?;
            let value: serde_json::Value = serde_json::from_str(&text).ok()?;
            value.get("_class_name")?.as_str().map(str::to_string)
        };
        let what = if let Some(class) = class("model_index.json") {
            format!("diffusers folder ({class})")
        } else if let Some(class) = class("config.json") {
            format!("diffusers {class} folder")
        } else if path.join("med_config.json").is_file() {
            "ImageReward folder".to_string()
        } else {
            return Err(format!(
                "{} is a folder without model_index.json, config.json or med_config.json: no model stepstone knows",
                path.display()
            ));
        };
        return Ok(format!("{what} · {}", describe_size(folder_size(path, 4))));
    }
    let shapes = read_shapes(path).map_err(|e| e.to_string())?;
    let keys: Vec<String> = shapes.iter().map(|(k, _)| k.clone()).collect();
    let kind = classify(&keys);
    if kind == FileKind::Unknown {
        return Err(format!("{}: {} ({} tensors)", path.display(), kind.describe(), keys.len()));
    }
    let format = match WeightFormat::of(path) {
        Some(WeightFormat::Safetensors) => {
            let dtypes = super::check::safetensors_dtypes(path).map_err(|e| e.to_string())?;
            let names: Vec<&str> = dtypes.keys().map(String::as_str).collect();
            format!("safetensors {}", names.join("+"))
        }
        Some(WeightFormat::Pickle) => "pickle checkpoint".to_string(),
        None => "unknown format".to_string(),
    };
    // Motion modules: the generation, read from the weights' layout as the loader reads it.
    let version = match kind {
        FileKind::MotionModule | FileKind::MotionAdapter => {
            crate::models::unet::motion::MotionAdapterConfig::infer(&shapes, 8, 32)
                .ok()
                .flatten()
                .map(|c| {
                    let v = crate::models::unet::motion::MotionVersion::detect(
                        c.use_motion_mid_block,
                        c.motion_max_seq_length,
                    );
                    format!(" {}", v.name())
                })
                .unwrap_or_default()
        }
        _ => String::new(),
    };
    let kind = kind.describe();
    let kind = kind.strip_prefix("an ").or_else(|| kind.strip_prefix("a ")).unwrap_or(kind);
    Ok(format!("{kind}{version} · {format} · {}", describe_size(meta.len())))
}

/// The bytes of the files under `dir`, `depth` folders deep.
fn folder_size(dir: &Path, depth: usize) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() && depth > 0 => folder_size(&e.path(), depth - 1),
            Ok(m) if m.is_file() => m.len(),
            _ => 0,
        })
        .sum()
}

/// "812 KB", "3.4 MB", "2.13 GB".
pub fn describe_size(bytes: u64) -> String {
    let b = bytes as f64;
    if b < 1e6 {
        format!("{:.0} KB", b / 1e3)
    } else if b < 1e9 {
        format!("{:.1} MB", b / 1e6)
    } else {
        format!("{:.2} GB", b / 1e9)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describing_models_says_what_they_are_or_why_not() {
        let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/demo-models");
        let sd = describe_model(&demo.join("sd15-tiny")).unwrap();
        assert!(sd.starts_with("diffusers folder (StableDiffusionPipeline) · "), "{sd}");
        let mm = describe_model(&demo.join("mm_tiny_v2.ckpt")).unwrap();
        assert!(mm.starts_with("AnimateDiff motion module v2 (mm_sd_v15_v2) · pickle checkpoint · "), "{mm}");
        let unet = describe_model(&demo.join("sd15-tiny/unet/diffusion_pytorch_model.safetensors")).unwrap();
        assert!(unet.starts_with("diffusers UNet · safetensors F16 · "), "{unet}");
        let readme = describe_model(&demo.join("README.md")).unwrap_err();
        assert!(readme.contains("README.md"), "{readme}");
        let missing = describe_model(&demo.join("no-such-model")).unwrap_err();
        assert!(missing.contains("no-such-model"), "{missing}");
        assert_eq!(describe_size(812_000), "812 KB");
        assert_eq!(describe_size(2_130_000_000), "2.13 GB");
    }

    fn keys(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn classifies_the_files_artists_have() {
        assert_eq!(classify(&keys(&["lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight"])), FileKind::Lora);
        assert_eq!(
            classify(&keys(&["conditioner.embedders.1.model.ln_final.weight", "model.diffusion_model.out.0.weight"])),
            FileKind::SdxlSingleFile
        );
        assert_eq!(
            classify(&keys(&[
                "cond_stage_model.model.transformer.resblocks.0.ln_1.weight",
                "model.diffusion_model.out.0.weight"
            ])),
            FileKind::Sd2SingleFile
        );
        assert_eq!(
            classify(&keys(&[
                "cond_stage_model.transformer.text_model.final_layer_norm.weight",
                "model.diffusion_model.out.0.weight"
            ])),
            FileKind::Sd1SingleFile
        );
        assert_eq!(
            classify(&keys(&["down_blocks.0.motion_modules.0.temporal_transformer.proj_in.weight"])),
            FileKind::MotionModule
        );
        assert_eq!(classify(&keys(&["down_blocks.0.motion_modules.0.proj_in.weight"])), FileKind::MotionAdapter);
        assert_eq!(classify(&keys(&["encoder.conv_in.weight", "decoder.conv_out.weight"])), FileKind::DiffusersVae);
        assert_eq!(
            classify(&keys(&["time_embedding.linear_1.weight", "down_blocks.0.resnets.0.conv1.weight"])),
            FileKind::DiffusersUnet
        );
        assert_eq!(classify(&keys(&["text_model.embeddings.token_embedding.weight"])), FileKind::ClipTextEncoder);
        assert_eq!(classify(&keys(&["something.else"])), FileKind::Unknown);
    }
}
