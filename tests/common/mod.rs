//! Helpers shared by the parity tests: fixture loading and tensor comparison.
#![allow(dead_code)]

pub mod crafted;
pub mod demo;
pub mod engine;
pub mod ui;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use burn::store::{BurnToPyTorchAdapter, ModuleSnapshot};
use burn::tensor::{Device, Tensor, TensorData};

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests").join("fixtures")
}

/// The CPU device most tests run on.
pub fn cpu() -> Device {
    Device::flex()
}

/// A tensor from a safetensors fixture file (f32 only), by name.
pub struct Fixture {
    pub tensors: HashMap<String, (Vec<usize>, Vec<f32>)>,
    pub path: PathBuf,
}

impl Fixture {
    pub fn load(rel: &str) -> Fixture {
        let path = fixtures().join(rel);
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let mut tensors = HashMap::new();
        for (name, view) in st.tensors() {
            assert_eq!(view.dtype(), safetensors::Dtype::F32, "{name}: fixtures are f32");
            let data: Vec<f32> =
                view.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
            tensors.insert(name.to_string(), (view.shape().to_vec(), data));
        }
        Fixture { tensors, path }
    }

    pub fn values(&self, name: &str) -> &[f32] {
        &self.get(name).1
    }

    pub fn get(&self, name: &str) -> &(Vec<usize>, Vec<f32>) {
        self.tensors.get(name).unwrap_or_else(|| panic!("{}: no tensor '{name}'", self.path.display()))
    }

    pub fn tensor<const D: usize>(&self, name: &str, device: &Device) -> Tensor<D> {
        let (shape, data) = self.get(name);
        assert_eq!(shape.len(), D, "{name}: rank {} expected {D}", shape.len());
        Tensor::from_data(TensorData::new(data.clone(), shape.clone()), device)
    }
}

pub fn to_vec<const D: usize>(t: &Tensor<D>) -> Vec<f32> {
    t.to_data().try_to_vec::<f32>().unwrap()
}

/// The tiny video model of the parity fixtures: the UNet of tests/fixtures/unet/unet with the MotionAdapter of
/// tests/fixtures/motion/v2 (diffusers norm semantics), and the VAE of tests/fixtures/vae/vae.
#[allow(dead_code)]
pub fn tiny_video_model() -> (stepstone::models::unet::VideoUnet, stepstone::models::vae::AutoencoderKl) {
    use stepstone::models::unet::motion::VideoNorms;
    use stepstone::models::{MotionLoadOptions, load_motion_module, load_unet, load_vae};
    let (device, root) = (cpu(), fixtures());
    let (unet, _) = load_unet(&root.join("unet/unet"), &device).unwrap();
    let options = MotionLoadOptions { heads: 2, groups: 4, norms: Some(VideoNorms::DIFFUSERS) };
    let (motion, _) = load_motion_module(&root.join("motion/v2"), &device, &options).unwrap();
    let (vae, _) = load_vae(&root.join("vae/vae"), &device).unwrap();
    (stepstone::models::unet::VideoUnet::new(unet, Some(motion)).unwrap(), vae)
}

/// The largest difference relative to the reference's largest magnitude; panics above `relative_tol`, on a
/// NaN or infinity, naming the absolute and the relative error. Returns the relative error.
pub fn assert_relative(what: &str, got: &[f32], want: &[f32], relative_tol: f32) -> f32 {
    assert_eq!(got.len(), want.len(), "{what}: {} values, expected {}", got.len(), want.len());
    assert!(got.iter().all(|v| v.is_finite()), "{what}: not finite: {:?}", &got[..got.len().min(8)]);
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(f32::MIN_POSITIVE);
    let err = got.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    let relative = err / scale;
    eprintln!("{what}: max abs error {err:e}, relative {relative:e} (largest |value| {scale})");
    assert!(relative <= relative_tol, "{what}: max abs error {err:e}, relative {relative:e} > {relative_tol:e}");
    relative
}

/// Max absolute difference; panics with the measured figure when it exceeds `tol`. A NaN anywhere fails
/// (`f32::max` alone would skip it: NaN outputs once compared as "max error 0").
pub fn assert_close(what: &str, got: &[f32], want: &[f32], tol: f32) -> f32 {
    assert_eq!(got.len(), want.len(), "{what}: {} values, expected {}", got.len(), want.len());
    if let Some(i) = got.iter().zip(want).position(|(a, b)| a.is_nan() || b.is_nan()) {
        panic!("{what}: value {i} is NaN (got {}, expected {})", got[i], want[i]);
    }
    let err = got.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(err.is_finite() && err <= tol, "{what}: max abs error {err:e} > {tol:e}");
    err
}

// Key manifests (tools/fixtures): key -> shape lists of the real full-size layouts.

pub fn manifest(name: &str) -> BTreeMap<String, Vec<u64>> {
    let path = fixtures().join("manifests").join(format!("{name}.txt"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .map(|line| {
            let (key, shape) = line.split_once(' ').unwrap();
            let dims = shape.trim_matches(|c| c == '[' || c == ']');
            let dims = if dims.is_empty() { vec![] } else { dims.split(',').map(|d| d.parse().unwrap()).collect() };
            (key.to_string(), dims)
        })
        .collect()
}

pub fn ours<M: ModuleSnapshot>(module: &M) -> BTreeMap<String, Vec<u64>> {
    module
        .collect(None, Some(Box::new(BurnToPyTorchAdapter)), true)
        .into_iter()
        .map(|t| (t.name.clone(), t.shape.iter().map(|&d| d as u64).collect()))
        .collect()
}

/// Compares key sets and shapes, listing every difference.
pub fn assert_same(name: &str, ours: &BTreeMap<String, Vec<u64>>, reference: &BTreeMap<String, Vec<u64>>) {
    let missing: Vec<_> = reference.keys().filter(|k| !ours.contains_key(*k)).collect();
    let extra: Vec<_> = ours.keys().filter(|k| !reference.contains_key(*k)).collect();
    let shapes: Vec<_> = reference
        .iter()
        .filter_map(|(k, v)| ours.get(k).filter(|o| *o != v).map(|o| format!("{k}: ours {o:?}, reference {v:?}")))
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty() && shapes.is_empty(),
        "{name}: {} keys missing from our tree {:?}; {} keys ours only {:?}; shape differences {:?}",
        missing.len(),
        missing.iter().take(10).collect::<Vec<_>>(),
        extra.len(),
        extra.iter().take(10).collect::<Vec<_>>(),
        shapes
    );
}

/// Checks a CLIP tokenizer against transformers' ids in a fixture (`{"cases": [{"prompt", "ids",
/// "untruncated_len"}]}`): every case's ids, the truncation it reports, and that a long prompt is truncated.
pub fn assert_clip_ids(tok: &stepstone::models::clip::ClipTokenizer, fixture: &serde_json::Value, min_cases: usize) {
    let cases = fixture["cases"].as_array().unwrap();
    assert!(cases.len() >= min_cases, "{} cases, expected at least {min_cases}", cases.len());
    for case in cases {
        let prompt = case["prompt"].as_str().unwrap();
        let want: Vec<u32> = serde_json::from_value(case["ids"].clone()).unwrap();
        let got = tok.encode(prompt).unwrap();
        assert_eq!(got.ids, want, "ids of {prompt:?}");
        let full = case["untruncated_len"].as_u64().unwrap() as usize;
        assert_eq!(got.truncated, full.saturating_sub(75), "truncation reported for {prompt:?}");
    }
    let long = cases.iter().find(|c| c["untruncated_len"].as_u64().unwrap() > 75).expect("a prompt over 77 tokens");
    assert!(tok.encode(long["prompt"].as_str().unwrap()).unwrap().truncated > 0);
}
