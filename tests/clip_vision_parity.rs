//! The CLIP vision tower (transformers' CLIPVisionModelWithProjection) and CLIPImageProcessor against
//! transformers (fixtures from tools/fixtures/clip_vision.py).

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Fixture, assert_close, cpu, to_vec};
use stepstone::models::clip::image::ClipImageProcessor;
use stepstone::models::clip::vision::ClipVisionConfig;
use stepstone::models::load_clip_image_encoder;

fn image(name: &str) -> image::RgbImage {
    image::open(common::fixtures().join("clip_vision").join(name)).unwrap().to_rgb8()
}

/// Pixel values of two odd-sized images (61x47 downscaled, 23x50 upscaled) at a non-square tiny crop and at
/// the released 224x224, against CLIPImageProcessor.
#[test]
fn preprocessing_matches_clip_image_processor_on_odd_sizes() {
    let fx = Fixture::load("clip_vision/io.safetensors");
    let tiny = ClipImageProcessor { shortest_edge: Some(32), crop: Some((26, 30)), ..ClipImageProcessor::default() };
    let real = ClipImageProcessor::default();
    for name in ["wide", "tall"] {
        let img = image(&format!("{name}.png"));
        for (processor, key) in [(&tiny, format!("{name}_tiny")), (&real, format!("{name}_224"))] {
            let (pixels, (w, h)) = processor.pixels(&img);
            let (shape, _) = fx.get(&key);
            assert_eq!([3, h as usize, w as usize].as_slice(), shape.as_slice(), "{key}");
            let err = assert_close(&key, &pixels, fx.values(&key), 1e-6);
            eprintln!("{key}: max abs error {err:e}");
        }
    }
}

#[test]
fn processor_settings_are_read_from_preprocessor_config_json() {
    let text = r#"{"crop_size": {"height": 224, "width": 224}, "do_center_crop": true, "do_normalize": true,
        "do_resize": true, "image_mean": [0.48145466, 0.4578275, 0.40821073], "resample": 3,
        "image_std": [0.26862954, 0.26130258, 0.27577711], "size": {"shortest_edge": 224}}"#;
    assert_eq!(ClipImageProcessor::from_json(text, "preprocessor_config.json").unwrap(), ClipImageProcessor::default());
    let old = r#"{"crop_size": 196, "size": 200}"#;
    let p = ClipImageProcessor::from_json(old, "f.json").unwrap();
    assert_eq!((p.shortest_edge, p.crop), (Some(200), Some((196, 196))));
    let err = ClipImageProcessor::from_json(r#"{"resample": 2}"#, "feature_extractor/preprocessor_config.json")
        .unwrap_err()
        .to_string();
    assert!(err.contains("feature_extractor/preprocessor_config.json") && err.contains("bicubic"), "{err}");
    let err = ClipImageProcessor::from_json(r#"{"size": {"height": 3}}"#, "f.json").unwrap_err().to_string();
    assert!(err.contains("shortest_edge"), "{err}");
}

/// The tiny tower's projected embedding and token outputs against transformers, from safetensors f32, .bin
/// and f16 files; a wrong input size is refused by name.
#[test]
fn vision_tower_matches_transformers() {
    let device = cpu();
    let fx = Fixture::load("clip_vision/io.safetensors");
    let dir = common::fixtures().join("clip_vision/image_encoder");
    let (model, report) = load_clip_image_encoder(&dir, &device).unwrap();
    assert!(report.unused.is_empty(), "unused keys: {:?}", report.unused);
    let pixels = fx.tensor::<4>("pixel_values", &device);
    let out = model.forward(pixels.clone()).unwrap();
    assert_eq!(out.image_embeds.dims(), [2, 24]);
    assert_eq!(out.last_hidden_state.dims(), [2, 26, 32]);
    let e1 = assert_close("image_embeds", &to_vec(&out.image_embeds), fx.values("image_embeds"), 1e-5);
    let e2 = assert_close("last_hidden_state", &to_vec(&out.last_hidden_state), fx.values("last_hidden_state"), 1e-5);
    eprintln!("image_embeds max abs error {e1:e}, last_hidden_state {e2:e}");

    // The processor at the model's size gives the fixture's input from the PNGs.
    let square = ClipImageProcessor { shortest_edge: Some(30), crop: Some((30, 30)), ..ClipImageProcessor::default() };
    let ours = square.preprocess(&[image("wide.png"), image("tall.png")], &device).unwrap();
    assert_close("pixel_values", &to_vec(&ours), fx.values("pixel_values"), 1e-6);

    let config: ClipVisionConfig =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    assert_eq!((config.grid(), config.projection_dim), (5, 24));
    // The same weights as pytorch_model.bin and as f16 (the reference outputs are of the f32 weights: f16
    // rounding of the weights costs about 5e-3 here).
    for (file, tol) in [("pytorch_model.bin", 1e-5), ("model.fp16.safetensors", 1e-2)] {
        let mut model = config.init(&device).unwrap();
        let report = stepstone::models::load::load_into(&mut model, &dir.join(file), &Default::default()).unwrap();
        assert!(report.unused.is_empty(), "{file}: unused {:?}", report.unused);
        let out = model.forward(pixels.clone()).unwrap();
        let err = assert_close(file, &to_vec(&out.image_embeds), fx.values("image_embeds"), tol);
        eprintln!("{file}: image_embeds max abs error {err:e}");
    }
    let err = model.forward(burn::tensor::Tensor::zeros([1, 3, 32, 32], &device)).unwrap_err().to_string();
    assert!(err.contains("30x30") && err.contains("[1, 3, 32, 32]"), "{err}");
}

/// The text tower with clip_skip 1 (I2VGen-XL's default: the penultimate layer through the final layer
/// norm) against transformers' hidden_states[-2]; clip_skip 0 is the last layer.
#[test]
fn text_encoder_penultimate_layer_matches_transformers() {
    let device = cpu();
    let fx = Fixture::load("clip_vision/io.safetensors");
    let text_fx = Fixture::load("clip/text_encoder_io.safetensors");
    let (shape, data) = text_fx.get("input_ids");
    let ids: Vec<Vec<u32>> = data.chunks(shape[1]).map(|row| row.iter().map(|&v| v as u32).collect()).collect();
    let (model, _) =
        stepstone::models::load_clip_text_encoder(&common::fixtures().join("clip/text_encoder"), &device).unwrap();
    let out = model.encode_ids_clip_skip(&ids, 1, &device);
    let err = assert_close("penultimate", &to_vec(&out), fx.values("text_penultimate"), 1e-4);
    eprintln!("clip_skip 1: max abs error {err:e}");
    let last = model.encode_ids_clip_skip(&ids, 0, &device);
    assert_close("last layer", &to_vec(&last), text_fx.values("last_hidden_state"), 1e-4);
    let differs = to_vec(&last).iter().zip(fx.values("text_penultimate")).any(|(a, b)| (a - b).abs() > 1e-2);
    assert!(differs, "the penultimate layer is not the last");
}
