//! CLIP tokenizer and text encoder against transformers (fixtures from tools/fixtures/make_fixtures.py).

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};

use common::{Fixture, assert_close, cpu, to_vec};
use stepstone::models::clip::{ClipTextConfig, ClipTokenizer};
use stepstone::models::{LoadError, load_clip_text_encoder, load_clip_weights};

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

#[test]
fn tokenizer_ids_match_transformers() {
    let text = std::fs::read_to_string(common::fixtures().join("clip/tokenizer.json")).unwrap();
    let fixture: serde_json::Value = serde_json::from_str(&text).unwrap();
    common::assert_clip_ids(&ClipTokenizer::from_dir(&repo("assets/clip-tokenizer")).unwrap(), &fixture, 10);
    // The copy compiled into the binary (single-file checkpoints carry no tokenizer) is the same tokenizer.
    common::assert_clip_ids(&ClipTokenizer::sd15().unwrap(), &fixture, 10);
}

#[test]
fn tokenizer_reports_missing_files() {
    let err = ClipTokenizer::from_dir(Path::new("/nonexistent/tokenizer")).unwrap_err();
    assert!(err.to_string().contains("/nonexistent/tokenizer/vocab.json"), "{err}");
}

fn input_ids(fx: &Fixture) -> Vec<Vec<u32>> {
    let (shape, data) = fx.get("input_ids");
    data.chunks(shape[1]).map(|row| row.iter().map(|&v| v as u32).collect()).collect()
}

fn text_encoder_matches_transformers_in_every_file_format_check() {
    let device = cpu();
    let fx = Fixture::load("clip/text_encoder_io.safetensors");
    let ids = input_ids(&fx);
    let dir = common::fixtures().join("clip/text_encoder");

    let (model, report) = load_clip_text_encoder(&dir, &device).unwrap();
    assert!(report.unused.is_empty(), "unused keys: {:?}", report.unused);
    assert_eq!(report.path.file_name().unwrap(), "model.safetensors");
    let out = model.encode_ids(&ids, &device);
    assert_eq!(out.dims(), [3, 77, 32]);
    let err = assert_close("CLIP last_hidden_state (safetensors)", &to_vec(&out), fx.values("last_hidden_state"), 1e-4);
    eprintln!("safetensors f32: max abs error {err:e}");

    let config: ClipTextConfig =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    for (file, reference) in
        [("pytorch_model.bin", "last_hidden_state"), ("model.fp16.safetensors", "last_hidden_state_from_f16")]
    {
        let mut model = config.init(&device).unwrap();
        let report = load_clip_weights(&mut model, &dir.join(file)).unwrap();
        assert!(report.unused.is_empty(), "{file}: unused keys {:?}", report.unused);
        let out = model.encode_ids(&ids, &device);
        let err = assert_close(&format!("CLIP last_hidden_state ({file})"), &to_vec(&out), fx.values(reference), 1e-4);
        eprintln!("{file}: max abs error {err:e}");
    }
}

#[test]
fn loading_a_mismatched_model_names_the_keys_and_shapes() {
    let device = cpu();
    let dir = common::fixtures().join("clip/text_encoder");
    let config: ClipTextConfig =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();

    // Wider model than the file: every shape is off.
    let mut wide = ClipTextConfig { hidden_size: 64, ..config.clone() }.init(&device).unwrap();
    let err = load_clip_weights(&mut wide, &dir.join("model.safetensors")).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, LoadError::Mismatch { .. }), "{text}");
    assert!(text.contains("model.safetensors") && text.contains("expected shape") && text.contains("32"), "{text}");

    // Deeper model than the file: layer 2 is missing.
    let mut deep = ClipTextConfig { num_hidden_layers: 3, ..config }.init(&device).unwrap();
    let err = load_clip_weights(&mut deep, &dir.join("model.safetensors")).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, LoadError::Missing { .. }), "{text}");
    assert!(text.contains("layers.2."), "{text}");

    // A truncated file.
    let tmp = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let cut = tmp.path().join("model.safetensors");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let mut model = ClipTextConfig { hidden_size: 32, ..ClipTextConfig::default() };
    model.vocab_size = 1000;
    model.intermediate_size = 64;
    model.num_hidden_layers = 2;
    model.num_attention_heads = 4;
    let mut m = model.init(&device).unwrap();
    let err = load_clip_weights(&mut m, &cut).unwrap_err();
    assert!(err.to_string().contains(&cut.display().to_string()), "{err}");
}

#[test]
fn text_encoder_matches_transformers_in_every_file_format() {
    text_encoder_matches_transformers_in_every_file_format_check();
}

/// The same comparison with every attention on the reference kernel in chunks (a 256-byte score budget: a few rows at a time).
#[test]
fn text_encoder_matches_transformers_in_every_file_format_with_chunked_attention() {
    stepstone::models::attention::with_reference_chunks(
        256,
        text_encoder_matches_transformers_in_every_file_format_check,
    );
}
