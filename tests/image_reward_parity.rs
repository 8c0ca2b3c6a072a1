//! ImageReward against the image-reward 1.5 package (fixtures from tools/fixtures/image_reward.py): the BERT
//! tokenizer, Pillow's bicubic resize, preprocessing, image embeds, [CLS] states and scores from `.pt` and
//! `.safetensors`, the full-size key layout, and wrong files.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::store::{BurnToPyTorchAdapter, ModuleSnapshot};
use burn::tensor::{Tensor, TensorData};
use common::{Fixture, assert_close, assert_same, cpu, manifest, to_vec};
use image::RgbImage;
use stepstone::models::LoadError;
use stepstone::models::image_reward::{
    self, BertTokenizer, IGNORED_KEYS, ImageRewardConfig, ImageRewardError, argmax, checkpoint_key, load_image_reward,
    load_image_reward_dir, preprocess,
};

fn dir() -> PathBuf {
    common::fixtures().join("image_reward")
}

fn json(rel: &str) -> serde_json::Value {
    let path = dir().join(rel);
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

fn png(path: &Path) -> RgbImage {
    image::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).to_rgb8()
}

fn images() -> Vec<RgbImage> {
    json("io.json")["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| png(&dir().join("images").join(n.as_str().unwrap())))
        .collect()
}

/// Largest per-channel difference between two images of equal size, and how many bytes differ.
fn image_diff(a: &RgbImage, b: &RgbImage) -> (u8, usize) {
    assert_eq!(a.dimensions(), b.dimensions());
    let diffs = a.as_raw().iter().zip(b.as_raw()).map(|(x, y)| x.abs_diff(*y));
    diffs.fold((0, 0), |(m, n), d| (m.max(d), n + usize::from(d > 0)))
}

#[test]
fn tokenizer_ids_match_transformers_bert_tokenizer() {
    let tok = BertTokenizer::from_file(&dir().join("vocab.txt")).unwrap();
    let fixture = json("tokenizer.json");
    assert_eq!(tok.vocab_size as u64, fixture["vocab_size"].as_u64().unwrap());
    assert_eq!(u64::from(tok.enc), fixture["enc_token_id"].as_u64().unwrap(), "[ENC] id");
    assert_eq!(u64::from(tok.dec), fixture["bos_token_id"].as_u64().unwrap(), "[DEC] id");
    let cases = fixture["cases"].as_array().unwrap();
    assert!(cases.len() >= 10);
    for case in cases {
        let prompt = case["prompt"].as_str().unwrap();
        let want: Vec<u32> = serde_json::from_value(case["ids"].clone()).unwrap();
        let got = tok.encode(prompt).unwrap();
        assert_eq!(got.ids, want, "ids of {prompt:?}");
        let real = want.iter().position(|&i| i == tok.pad).unwrap_or(want.len());
        assert_eq!(got.attention_mask.iter().filter(|&&m| m == 1).count(), real, "mask of {prompt:?}");
        let full = case["untruncated_len"].as_u64().unwrap() as usize;
        assert_eq!(got.truncated, full.saturating_sub(33), "truncation reported for {prompt:?}");
    }
    let long = cases.iter().find(|c| c["untruncated_len"].as_u64().unwrap() > 33).expect("a prompt over 35 tokens");
    assert!(tok.encode(long["prompt"].as_str().unwrap()).unwrap().truncated > 0);
}

#[test]
fn tokenizer_reports_missing_vocab() {
    let err = BertTokenizer::from_file(Path::new("/nonexistent/vocab.txt")).unwrap_err();
    assert!(err.to_string().contains("/nonexistent/vocab.txt"), "{err}");
}

#[test]
fn bicubic_resize_matches_pillow_exactly() {
    let src = png(&dir().join("resize/source.png"));
    let cases = json("io.json")["resize"].as_array().unwrap().clone();
    assert!(cases.len() >= 5);
    for case in cases {
        let (w, h) = (case["width"].as_u64().unwrap() as u32, case["height"].as_u64().unwrap() as u32);
        let want = png(&dir().join("resize").join(case["file"].as_str().unwrap()));
        let got = preprocess::resize_bicubic(&src, w, h);
        let (max, count) = image_diff(&got, &want);
        assert!(
            max == 0,
            "{}x{} -> {w}x{h}: {count} bytes differ from Pillow, max difference {max}",
            src.width(),
            src.height()
        );
    }
}

#[test]
fn preprocessing_matches_the_package() {
    let fx = Fixture::load("image_reward/io.safetensors");
    let imgs = images();
    for (i, img) in imgs.iter().enumerate() {
        let crop_path = dir().join("images").join(format!("crop{i}.png"));
        let want = if crop_path.is_file() { png(&crop_path) } else { img.clone() };
        let got = preprocess::resize_and_crop(img, 224);
        let (max, count) = image_diff(&got, &want);
        assert!(
            max == 0,
            "image {i} ({}x{}): resize + crop differs in {count} bytes, max {max}",
            img.width(),
            img.height()
        );
    }
    let pixels = preprocess::preprocess(&imgs, 224, &cpu());
    assert_eq!(pixels.dims(), [imgs.len(), 3, 224, 224]);
    let [n, _, _, _] = pixels.dims();
    let rows: Vec<Tensor<4>> =
        (0..224).step_by(112).map(|r| pixels.clone().slice([0..n, 0..3, r..r + 1, 0..224])).collect();
    let rows = Tensor::cat(rows, 2);
    let err = assert_close("pixel rows", &to_vec(&rows), fx.values("pixel_rows"), 1e-6);
    let means = pixels.mean_dim(3).mean_dim(2).reshape([n, 3]);
    let err_m = assert_close("pixel channel means", &to_vec(&means), fx.values("pixel_channel_means"), 1e-5);
    eprintln!("preprocessing: pixel rows max abs error {err:e}, channel means {err_m:e}");
}

#[test]
fn frames_in_zero_one_become_the_same_pixels() {
    let img = &images()[3];
    let (w, h) = img.dimensions();
    let mut data = vec![0f32; 3 * (w * h) as usize];
    for (i, px) in img.pixels().enumerate() {
        for c in 0..3 {
            data[c * (w * h) as usize + i] = f32::from(px.0[c]) / 255.0;
        }
    }
    let frame = Tensor::<3>::from_data(TensorData::new(data, [3, h as usize, w as usize]), &cpu());
    let back = preprocess::frame_to_image(&frame);
    let (max, count) = image_diff(&back, img);
    assert_eq!(max, 0, "{count} bytes differ after u8 -> [0, 1] -> u8");
}

fn scores_match(reward: &image_reward::ImageReward, file: &str) {
    let fx = Fixture::load("image_reward/io.safetensors");
    let meta = json("io.json");
    let imgs = images();
    let device = cpu();
    let pixels = preprocess::preprocess(&imgs, 224, &device);
    let embeds = reward.model.image_embeds(pixels);
    let err = assert_close(&format!("image embeds ({file})"), &to_vec(&embeds), fx.values("image_embeds"), 1e-4);
    eprintln!("{file}: image embeds max abs error {err:e}");
    let mut worst = 0f32;
    for (p, case) in meta["prompts"].as_array().unwrap().iter().enumerate() {
        let prompt = case["prompt"].as_str().unwrap();
        let want_ids: Vec<u32> = serde_json::from_value(case["ids"].clone()).unwrap();
        let encoding = reward.tokenizer.encode(prompt).unwrap();
        assert_eq!(encoding.ids, want_ids, "ids of {prompt:?}");
        let cls = reward.model.cls_states(&encoding, embeds.clone());
        let err = assert_close(
            &format!("[CLS] states, prompt {p} ({file})"),
            &to_vec(&cls),
            fx.values(&format!("prompt{p}.cls")),
            1e-4,
        );
        worst = worst.max(err);
        let want: Vec<f32> = serde_json::from_value(case["scores"].clone()).unwrap();
        let got = reward.score(prompt, &imgs).unwrap();
        let err = assert_close(&format!("scores, prompt {p} ({file})"), &got, &want, 1e-4);
        worst = worst.max(err);
        assert_eq!(
            argmax(&got),
            Some(case["best"].as_u64().unwrap() as usize),
            "prompt {p}: best image ours {got:?}, reference {want:?}"
        );
        // The scores really differ across images.
        let spread = want.iter().cloned().fold(f32::MIN, f32::max) - want.iter().cloned().fold(f32::MAX, f32::min);
        assert!(spread > 0.05, "prompt {p}: reference scores barely differ: {want:?}");
        eprintln!("{file}: prompt {p} scores {got:?} (reference {want:?}), max abs error {err:e}");
    }
    eprintln!("{file}: worst [CLS]/score error {worst:e}");
}

fn scores_match_the_package_from_pt_and_safetensors_check() {
    let device = cpu();
    for file in ["ImageReward.pt", "ImageReward.safetensors"] {
        let (reward, report) = load_image_reward(&dir().join(file), &dir(), &device).unwrap();
        assert!(report.unused.is_empty(), "{file}: unused keys {:?}", report.unused);
        assert!(report.applied > 0);
        scores_match(&reward, file);
    }
    // The folder loader prefers safetensors.
    let (_, report) = load_image_reward_dir(&dir(), &device).unwrap();
    assert_eq!(report.path.file_name().unwrap(), "ImageReward.safetensors");
}

#[test]
fn a_clip_text_encoder_is_named_as_such() {
    let clip = common::fixtures().join("clip/text_encoder/model.safetensors");
    let err = load_image_reward(&clip, &dir(), &cpu()).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, ImageRewardError::Load(LoadError::WrongKind { .. })), "{text}");
    assert!(text.contains("looks like a CLIP text encoder") && text.contains("not an ImageReward model"), "{text}");
    assert!(text.contains("model.safetensors"), "{text}");
}

#[test]
fn mismatched_weights_name_file_keys_and_shapes() {
    let device = cpu();
    let mut config = image_reward::read_config(&dir()).unwrap();
    // A wider text encoder than the file.
    config.text.hidden_size = 16;
    let mut model = config.init(&device).unwrap();
    let err = image_reward::load_image_reward_weights(&mut model, &dir().join("ImageReward.pt")).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, LoadError::Mismatch { .. }), "{text}");
    assert!(text.contains("ImageReward.pt") && text.contains("expected shape") && text.contains("16"), "{text}");
    // A deeper vision tower than the file: blocks.2 is missing.
    let mut config = image_reward::read_config(&dir()).unwrap();
    config.vision.depth = 3;
    let mut model = config.init(&device).unwrap();
    let err = image_reward::load_image_reward_weights(&mut model, &dir().join("ImageReward.safetensors")).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, LoadError::Missing { .. }), "{text}");
    assert!(text.contains("visual_encoder.blocks.2.") && text.contains("ImageReward.safetensors"), "{text}");
    // A missing folder file is named.
    let tmp = tempfile::tempdir().unwrap();
    let err = load_image_reward(&dir().join("ImageReward.pt"), tmp.path(), &device).unwrap_err();
    assert!(err.to_string().contains("med_config.json"), "{err}");
}

#[test]
fn large_config_has_the_released_layout() {
    let reference = manifest("image_reward");
    assert_eq!(reference.len(), 625);
    let ignored: Vec<regex::Regex> = IGNORED_KEYS.iter().map(|p| regex::Regex::new(p).unwrap()).collect();
    let (skipped, reference): (BTreeMap<_, _>, BTreeMap<_, _>) =
        reference.into_iter().partition(|(k, _)| ignored.iter().any(|r| r.is_match(k)));
    assert_eq!(skipped.len(), 5, "ignored keys of the real file: {skipped:?}");
    let model = ImageRewardConfig::large().init(&cpu()).unwrap();
    let ours: BTreeMap<String, Vec<u64>> = model
        .collect(None, Some(Box::new(BurnToPyTorchAdapter)), true)
        .into_iter()
        .map(|t| (checkpoint_key(&t.name), t.shape.iter().map(|&d| d as u64).collect()))
        .collect();
    assert_same("image_reward", &ours, &reference);
}

#[test]
fn empty_inputs_are_refused_or_empty() {
    let (reward, _) = load_image_reward_dir(&dir(), &cpu()).unwrap();
    assert!(reward.score("a cat", &[]).unwrap().is_empty());
    let err = reward.score("a cat", &[images()[0].clone(), RgbImage::new(0, 5)]).unwrap_err();
    assert!(err.to_string().contains("image 1 is empty"), "{err}");
    let err = reward.score_pixels("a cat", Tensor::zeros([1, 3, 32, 32], &cpu())).unwrap_err();
    assert!(err.to_string().contains("[N, 3, 224, 224]"), "{err}");
}

#[test]
fn scores_match_the_package_from_pt_and_safetensors() {
    scores_match_the_package_from_pt_and_safetensors_check();
}

/// The same comparison with every attention on the reference kernel in chunks (a 256-byte score budget: a few rows at a time).
#[test]
fn scores_match_the_package_from_pt_and_safetensors_with_chunked_attention() {
    stepstone::models::attention::with_reference_chunks(256, scores_match_the_package_from_pt_and_safetensors_check);
}
