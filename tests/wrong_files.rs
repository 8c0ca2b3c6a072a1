//! A file of the wrong kind, or a damaged one, gets a message that says what it is.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;

use common::cpu;
use stepstone::models::clip::ClipTextConfig;
use stepstone::models::{LoadError, load_clip_weights, load_unet};

fn tiny_clip() -> stepstone::models::clip::ClipTextModel {
    let dir = common::fixtures().join("clip/text_encoder");
    let config: ClipTextConfig =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    config.init(&cpu()).unwrap()
}

#[test]
fn a_vae_file_offered_as_a_text_encoder_is_named_as_a_vae() {
    let mut model = tiny_clip();
    let err = load_clip_weights(&mut model, &common::fixtures().join("vae/vae/diffusion_pytorch_model.safetensors"))
        .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, LoadError::WrongKind { .. }), "{text}");
    assert!(text.contains("looks like a diffusers VAE, not a CLIP text encoder"), "{text}");
}

fn write_safetensors(path: &std::path::Path, names: &[&str]) {
    let data = vec![0u8; 16];
    let views: HashMap<String, safetensors::tensor::TensorView<'_>> = names
        .iter()
        .map(|n| {
            (n.to_string(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![2, 2], &data).unwrap())
        })
        .collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}

#[test]
fn a_lora_and_an_sdxl_checkpoint_offered_as_a_unet_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let unet_dir = common::fixtures().join("unet/unet");
    for (names, expected) in [
        (
            vec![
                "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight",
                "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight",
            ],
            "looks like a LoRA",
        ),
        (
            vec![
                "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight",
                "model.diffusion_model.out.2.weight",
            ],
            "looks like an SDXL checkpoint",
        ),
    ] {
        let dir = tmp.path().join(expected.replace(' ', "_"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(unet_dir.join("config.json"), dir.join("config.json")).unwrap();
        write_safetensors(&dir.join("diffusion_pytorch_model.safetensors"), &names);
        let err = load_unet(&dir, &cpu()).unwrap_err();
        let text = err.to_string();
        assert!(text.contains(expected) && text.contains("not a diffusers UNet"), "{text}");
    }
}

#[test]
fn a_truncated_download_is_called_truncated() {
    let tmp = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(common::fixtures().join("clip/text_encoder/model.safetensors")).unwrap();
    let cut = tmp.path().join("model.safetensors");
    std::fs::write(&cut, &bytes[..bytes.len() - 1000]).unwrap();
    let err = load_clip_weights(&mut tiny_clip(), &cut).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("truncated") && text.contains(&cut.display().to_string()), "{text}");
    std::fs::write(&cut, b"hello").unwrap();
    let text = load_clip_weights(&mut tiny_clip(), &cut).unwrap_err().to_string();
    assert!(text.contains("not a safetensors file"), "{text}");
}
