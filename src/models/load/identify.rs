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
    DiffusersVae,
    ClipTextEncoder,
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
            FileKind::DiffusersVae => "a diffusers VAE",
            FileKind::ClipTextEncoder => "a CLIP text encoder",
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
    if any(&|k| k.starts_with("encoder.conv_in.")) && any(&|k| k.starts_with("decoder.conv_out.")) {
        return FileKind::DiffusersVae;
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

#[cfg(test)]
mod tests {
    use super::*;

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
