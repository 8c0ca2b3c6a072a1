//! ModelScope T2V's UNet (diffusers UNet3DConditionModel) against diffusers on tiny random models
//! (tools/fixtures/modelscope.py): two and three levels, one and two layers per block, odd frame counts,
//! non-square latents, two timesteps per batch.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Fixture, assert_relative, cpu, to_vec};
use stepstone::models::modelscope::load_unet3d;

fn check(name: &str) {
    let device = cpu();
    let root = common::fixtures().join("modelscope");
    let (unet, report) = load_unet3d(&root.join(name), &device).unwrap();
    assert!(report.unused.is_empty(), "{name}: unused weights {:?}", report.unused);
    let fx = Fixture::load(&format!("modelscope/{name}_io.safetensors"));
    let timesteps: Vec<f64> = fx.values("timesteps").iter().map(|&t| f64::from(t)).collect();
    let out =
        unet.forward(fx.tensor("sample", &device), &timesteps, fx.tensor("encoder_hidden_states", &device)).unwrap();
    assert_eq!(out.dims().to_vec(), fx.get("out").0, "{name}: output shape");
    assert_relative(name, &to_vec(&out), fx.values("out"), 1e-5);
}

#[test]
fn unet3d_with_two_levels_matches_diffusers() {
    check("unet3d_two_levels");
}

#[test]
fn unet3d_with_three_levels_matches_diffusers() {
    check("unet3d_three_levels");
}

/// The text side of ModelScope T2V: a CLIP text encoder configured as OpenCLIP-H's tower is (GELU, other
/// width, heads and depth) through the same encoder as SD's, against transformers.
#[test]
fn gelu_clip_text_encoder_matches_transformers() {
    let device = cpu();
    let root = common::fixtures().join("modelscope");
    let (model, report) = stepstone::models::load_clip_text_encoder(&root.join("text_encoder_gelu"), &device).unwrap();
    assert!(report.unused.is_empty(), "unused weights {:?}", report.unused);
    let fx = Fixture::load("modelscope/text_encoder_gelu_io.safetensors");
    let (shape, data) = fx.get("input_ids");
    let ids: Vec<Vec<u32>> = data.chunks(shape[1]).map(|r| r.iter().map(|&v| v as u32).collect()).collect();
    let out = model.encode_ids(&ids, &device);
    assert_relative("GELU CLIP text encoder", &to_vec(&out), fx.values("last_hidden_state"), 1e-5);
}

/// Each family's loader names the other family's folder and the node that loads it, reading nothing else.
#[test]
fn each_loader_names_the_other_familys_folder() {
    let device = cpu();
    let demo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/demo-models");
    let err = stepstone::models::stable_diffusion::load_stable_diffusion(&demo.join("modelscope-tiny"), &device)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("ModelScope T2V folder") && err.contains("Load ModelScope T2V"), "{err}");
    let err = stepstone::models::modelscope::load_modelscope(&demo.join("sd15-tiny"), &device)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("Stable Diffusion 1.x folder") && err.contains("Load SD 1.5 Checkpoint"), "{err}");
    // A single UNet3D weight file is recognised for what it is.
    let keys = stepstone::models::load::identify::read_keys(
        &common::fixtures().join("modelscope/unet3d_two_levels/diffusion_pytorch_model.safetensors"),
    )
    .unwrap();
    assert_eq!(
        stepstone::models::load::identify::classify(&keys),
        stepstone::models::load::identify::FileKind::DiffusersUnet3d
    );
    // And the ModelScope demo folder loads, with its scheduler configuration.
    let (model, _) = stepstone::models::modelscope::load_modelscope(&demo.join("modelscope-tiny"), &device).unwrap();
    assert_eq!(model.scheduler.beta_schedule, stepstone::schedulers::BetaSchedule::ScaledLinear);
    assert!(!model.scheduler.set_alpha_to_one);
}

/// OpenCLIP-H's tokenizer folder (ModelScope T2V, SD 2.x) pads with "!", not "<|endoftext|>": the pad token
/// is read from special_tokens_map.json, whatever its form (a string or an added-token object).
#[test]
fn the_pad_token_comes_from_the_tokenizer_folder() {
    use stepstone::models::clip::ClipTokenizer;

    let demo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/demo-models/sd15-tiny/tokenizer");
    let sd = ClipTokenizer::from_dir(&demo).unwrap();
    assert_eq!(sd.pad, sd.eos, "SD 1.5's folder pads with <|endoftext|>");
    let vocab: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(demo.join("vocab.json")).unwrap()).unwrap();
    let bang = vocab["!"].as_u64().unwrap() as u32;
    for map in [r#"{"pad_token": "!"}"#, r#"{"pad_token": {"content": "!", "lstrip": false}}"#] {
        let dir = tempfile::tempdir().unwrap();
        for f in ["vocab.json", "merges.txt"] {
            std::fs::copy(demo.join(f), dir.path().join(f)).unwrap();
        }
        std::fs::write(dir.path().join("special_tokens_map.json"), map).unwrap();
        let open_clip = ClipTokenizer::from_dir(dir.path()).unwrap();
        assert_eq!(open_clip.pad, bang, "{map}");
        let ids = open_clip.encode("a cat").unwrap().ids;
        assert_eq!(ids[ids.len() - 1], bang, "padded with '!'");
        assert_eq!(ids.iter().filter(|&&i| i == open_clip.eos).count(), 1, "one end token, then padding");
    }
    // A pad token the vocabulary lacks is named.
    let dir = tempfile::tempdir().unwrap();
    for f in ["vocab.json", "merges.txt"] {
        std::fs::copy(demo.join(f), dir.path().join(f)).unwrap();
    }
    std::fs::write(dir.path().join("special_tokens_map.json"), r#"{"pad_token": "<pad>"}"#).unwrap();
    let err = ClipTokenizer::from_dir(dir.path()).unwrap_err().to_string();
    assert!(err.contains("<pad>") && err.contains("special_tokens_map.json"), "{err}");
}
