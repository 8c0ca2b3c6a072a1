//! Half precision on a GPU back-end (wgpu; Mesa's llvmpipe on CI): the parity fixtures' networks with every
//! weight and activation in f16 (the device's default float type, weights cast at load), against the f32
//! references, within stated tolerances. Its own test binary: a device's default dtype is set once per
//! process.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::OnceLock;

use burn::tensor::{DType, Device, DeviceKind, FloatDType, Tensor};
use common::{Fixture, assert_relative};
use stepstone::models::load_clip_text_encoder;

/// The wgpu device with f16 as its float type.
fn f16_device() -> Device {
    static DEVICE: OnceLock<Device> = OnceLock::new();
    DEVICE
        .get_or_init(|| {
            let mut device = Device::wgpu(DeviceKind::DefaultDevice);
            assert!(device.supports_dtype(FloatDType::F16), "the wgpu device has no f16");
            device.configure(FloatDType::F16).unwrap();
            device
        })
        .clone()
}

fn values<const D: usize>(t: &Tensor<D>) -> Vec<f32> {
    assert_eq!(t.dtype(), DType::F16, "the network computed in f16");
    t.to_data().convert::<f32>().try_to_vec::<f32>().unwrap()
}

#[test]
fn clip_text_encoder_in_f16_matches_transformers() {
    let fx = Fixture::load("clip/text_encoder_io.safetensors");
    let (shape, data) = fx.get("input_ids");
    let ids: Vec<Vec<u32>> = data.chunks(shape[1]).map(|r| r.iter().map(|&v| v as u32).collect()).collect();
    let device = f16_device();
    let (model, _) = load_clip_text_encoder(&common::fixtures().join("clip/text_encoder"), &device).unwrap();
    let got = values(&model.encode_ids(&ids, &device));
    assert_relative("CLIP f16 vs transformers f32", &got, fx.values("last_hidden_state"), 1e-2);
}

#[test]
fn unet_in_f16_matches_diffusers() {
    use stepstone::models::load_unet;

    let fx = Fixture::load("unet/unet_io.safetensors");
    let timesteps: Vec<f64> = fx.values("timesteps").iter().map(|&t| f64::from(t)).collect();
    let device = f16_device();
    let (unet, _) = load_unet(&common::fixtures().join("unet/unet"), &device).unwrap();
    let eps = unet.forward(fx.tensor::<4>("sample", &device), &timesteps, fx.tensor::<3>("context", &device));
    assert_relative("UNet f16 vs diffusers f32", &values(&eps), fx.values("eps"), 1e-2);
}

#[test]
fn video_unet_in_f16_matches_the_original_animatediff() {
    use stepstone::models::unet::{Motion, VideoUnet};
    use stepstone::models::{MotionLoadOptions, load_motion_module, load_unet};

    let fx = Fixture::load("motion/motion_io.safetensors");
    let timesteps: Vec<f64> = fx.values("timesteps").iter().map(|&t| f64::from(t)).collect();
    let options = MotionLoadOptions { heads: 2, groups: 4, norms: None };
    let device = f16_device();
    let (unet, _) = load_unet(&common::fixtures().join("unet/unet"), &device).unwrap();
    let (motion, _) = load_motion_module(&common::fixtures().join("motion/mm_v2.ckpt"), &device, &options).unwrap();
    let model = VideoUnet::new(unet, Some(motion)).unwrap();
    let sample = fx.tensor::<5>("sample_f5", &device);
    let eps = model.forward(sample, &timesteps, fx.tensor::<3>("context", &device), Motion::On).unwrap();
    assert_relative("video UNet f16 vs original f32", &values(&eps), fx.values("eps_v2_original_f5"), 1e-2);
}

#[test]
fn vae_in_f16_matches_diffusers() {
    use stepstone::models::load_vae;

    let fx = Fixture::load("vae/vae_io.safetensors");
    let device = f16_device();
    let (vae, _) = load_vae(&common::fixtures().join("vae/vae"), &device).unwrap();
    let post = vae.encode(fx.tensor::<4>("x", &device));
    assert_relative("VAE posterior mean f16 vs diffusers f32", &values(&post.mean), fx.values("mean"), 1e-2);
    let decoded = vae.decode(fx.tensor::<4>("z", &device));
    assert_relative("VAE decode f16 vs diffusers f32", &values(&decoded), fx.values("decoded"), 1e-2);
}

/// Memory planning counts f16 weights and activations at two bytes.
#[test]
fn memory_estimates_halve_in_f16() {
    use burn::module::Module;
    use stepstone::models::unet::VideoUnet;
    use stepstone::models::{load_unet, load_vae};
    use stepstone::pipelines::memory::{CfgBatch, StageShape, stage_estimate};

    let shape = StageShape { clips: 1, frames: 4, height: 8, width: 8, cfg_batch: CfgBatch::Together };
    let estimate = |device: &Device| {
        let (unet, _) = load_unet(&common::fixtures().join("unet/unet"), device).unwrap();
        let (vae, _) = load_vae(&common::fixtures().join("vae/vae"), device).unwrap();
        let params = (unet.num_params() + vae.num_params()) as u64;
        (stage_estimate(&VideoUnet::new(unet, None).unwrap(), &vae, shape, false), params)
    };
    let (half, params) = estimate(&f16_device());
    let (full, _) = estimate(&common::cpu());
    assert_eq!(half.weights, params * 2);
    assert_eq!(full.weights, params * 4);
    assert!(half.activations * 2 <= full.activations + 8 && half.activations * 2 + 8 >= full.activations);
}
