//! The video UNet (SD UNet + AnimateDiff motion modules) against two references over the same weights
//! (tools/fixtures/motion.py): diffusers' `UNetMotionModel` and a re-implementation of the original AnimateDiff
//! modules (original key names and norm semantics). Every file format of the motion modules; several frame
//! counts; bypassed motion modules equal the plain 2-D UNet.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use burn::tensor::Tensor;
use common::{Fixture, assert_close, cpu, to_vec};
use stepstone::models::unet::motion::{FrameNorm, MotionAdapter, MotionError, MotionVersion, VideoNorms};
use stepstone::models::unet::{Motion, VideoUnet};
use stepstone::models::{MotionLoadOptions, load_motion_module, load_unet};

const TOL: f32 = 1e-4;

fn options(norms: Option<VideoNorms>) -> MotionLoadOptions {
    // The tiny modules have 2 heads and 4 norm groups (the released ones 8 and 32, the defaults).
    MotionLoadOptions { heads: 2, groups: 4, norms }
}

fn motion_dir() -> std::path::PathBuf {
    common::fixtures().join("motion")
}

fn video_unet(adapter: MotionAdapter) -> VideoUnet {
    let (unet, _) = load_unet(&common::fixtures().join("unet/unet"), &cpu()).unwrap();
    VideoUnet::new(unet, Some(adapter)).unwrap()
}

fn load(file: &str, norms: Option<VideoNorms>) -> MotionAdapter {
    let (adapter, report) = load_motion_module(&motion_dir().join(file), &cpu(), &options(norms)).unwrap();
    assert!(report.unused.is_empty(), "{file}: unused {:?}", report.unused);
    adapter
}

fn eps(model: &VideoUnet, fx: &Fixture, frames: usize, motion: Motion) -> Vec<f32> {
    let device = cpu();
    let timesteps: Vec<f64> = fx.values("timesteps").iter().map(|&t| f64::from(t)).collect();
    let sample: Tensor<5> = fx.tensor(&format!("sample_f{frames}"), &device);
    to_vec(&model.forward(sample, &timesteps, fx.tensor::<3>("context", &device), motion).unwrap())
}

fn v2_matches_diffusers_in_every_file_format_check() {
    let fx = Fixture::load("motion/motion_io.safetensors");
    // The same weights in diffusers' folder (safetensors, .bin) and in the original names (.ckpt, .safetensors).
    for file in ["v2", "v2/diffusion_pytorch_model.bin", "mm_v2.ckpt", "mm_v2.safetensors"] {
        let model = video_unet(load(file, Some(VideoNorms::DIFFUSERS)));
        for frames in [1, 2, 5] {
            let err = assert_close(
                &format!("{file}, {frames} frames, diffusers norms"),
                &eps(&model, &fx, frames, Motion::On),
                fx.values(&format!("eps_v2_diffusers_f{frames}")),
                TOL,
            );
            eprintln!("{file} f{frames}: max abs error {err:e}");
        }
    }
    let model = video_unet(load("v2/diffusion_pytorch_model.fp16.safetensors", Some(VideoNorms::DIFFUSERS)));
    let err = assert_close(
        "fp16 MotionAdapter, 2 frames",
        &eps(&model, &fx, 2, Motion::On),
        fx.values("eps_v2_diffusers_from_f16_f2"),
        TOL,
    );
    eprintln!("fp16: max abs error {err:e}");
}

#[test]
fn v2_matches_the_original_animatediff_modules() {
    let fx = Fixture::load("motion/motion_io.safetensors");
    for file in ["mm_v2.ckpt", "v2"] {
        // Default norms: the original semantics of the detected version.
        let adapter = load(file, None);
        assert_eq!(adapter.version, MotionVersion::V2);
        assert_eq!(adapter.norms, VideoNorms { temporal: FrameNorm::PerFrame, spatial: FrameNorm::PerFrame });
        let model = video_unet(adapter);
        for frames in [1, 2, 5] {
            let got = eps(&model, &fx, frames, Motion::On);
            let err = assert_close(
                &format!("{file}, {frames} frames, original norms"),
                &got,
                fx.values(&format!("eps_v2_original_f{frames}")),
                TOL,
            );
            eprintln!("{file} f{frames} original: max abs error {err:e}");
            if frames > 1 {
                // The two semantics really differ, so the comparison above can tell them apart.
                let other = fx.values(&format!("eps_v2_diffusers_f{frames}"));
                let spread = got.iter().zip(other).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
                assert!(
                    spread > 100.0 * TOL,
                    "{frames} frames: original and diffusers norms differ only by {spread:e}"
                );
            }
        }
    }
}

#[test]
fn v1_runs_with_its_own_config() {
    let fx = Fixture::load("motion/motion_io.safetensors");
    let adapter = load("mm_v1.ckpt", None);
    assert_eq!((adapter.version, adapter.max_seq_length, adapter.mid_block.is_none()), (MotionVersion::V1, 24, true));
    assert_eq!(adapter.norms.spatial, FrameNorm::AcrossFrames, "v1's UNet norms take statistics across frames");
    let model = video_unet(adapter);
    let err = assert_close(
        "v1, 3 frames, original config",
        &eps(&model, &fx, 3, Motion::On),
        fx.values("eps_v1_original_f3"),
        TOL,
    );
    eprintln!("v1: max abs error {err:e}");
}

#[test]
fn bypassed_motion_modules_give_the_image_unet() {
    let fx = Fixture::load("motion/motion_io.safetensors");
    let model = video_unet(load("v2", None));
    let bypass = eps(&model, &fx, 5, Motion::Bypass);
    let err = assert_close("bypass vs 2-D UNet per frame", &bypass, fx.values("eps_bypass_f5"), TOL);
    eprintln!("bypass: max abs error {err:e}");
    let on = eps(&model, &fx, 5, Motion::On);
    let spread = bypass.iter().zip(&on).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(spread > 100.0 * TOL, "motion modules on and bypassed differ only by {spread:e}");
    // No motion modules at all: the same as bypassing them.
    let (unet, _) = load_unet(&common::fixtures().join("unet/unet"), &cpu()).unwrap();
    let plain = VideoUnet::new(unet, None).unwrap();
    assert_close("no motion modules vs bypass", &eps(&plain, &fx, 5, Motion::On), &bypass, 1e-6);
}

#[test]
fn too_many_frames_is_refused_with_the_limit() {
    let model = video_unet(load("mm_v1.ckpt", None));
    let device = cpu();
    let sample: Tensor<5> = Tensor::zeros([1, 4, 25, 8, 8], &device);
    let context: Tensor<3> = Tensor::zeros([1, 5, 16], &device);
    let err = model.forward(sample.clone(), &[1.0], context.clone(), Motion::On).unwrap_err();
    assert_eq!(err, MotionError::TooManyFrames { frames: 25, max: 24, version: MotionVersion::V1.name() });
    assert!(err.to_string().contains("25 frames") && err.to_string().contains("24"), "{err}");
    // Bypassed, the frame count is free (candidate images are independent).
    assert!(model.forward(sample, &[1.0], context, Motion::Bypass).is_ok());
}

#[test]
fn wrong_files_are_named() {
    let device = cpu();
    // A UNet handed to the motion-module loader.
    let path = common::fixtures().join("unet/unet/diffusion_pytorch_model.safetensors");
    let err = load_motion_module(&path, &device, &options(None)).unwrap_err().to_string();
    assert!(err.contains("looks like a diffusers UNet") && err.contains("motion module"), "{err}");
    // A motion module whose channels do not fit the UNet.
    let full = stepstone::models::unet::motion::MotionAdapterConfig {
        block_out_channels: vec![8, 32],
        motion_num_attention_heads: 2,
        motion_norm_num_groups: 4,
        ..Default::default()
    };
    let adapter = full.init(&device).unwrap();
    let (unet, _) = load_unet(&common::fixtures().join("unet/unet"), &device).unwrap();
    let err = VideoUnet::new(unet, Some(adapter)).unwrap_err().to_string();
    assert!(err.contains("[8, 16]") && err.contains("[8, 32]"), "{err}");
}

#[test]
fn v2_matches_diffusers_in_every_file_format() {
    v2_matches_diffusers_in_every_file_format_check();
}

/// The same comparison with every attention on the reference kernel in chunks (a 256-byte score budget: a few rows at a time, temporal attention included).
#[test]
fn v2_matches_diffusers_in_every_file_format_with_chunked_attention() {
    stepstone::models::attention::with_reference_chunks(256, v2_matches_diffusers_in_every_file_format_check);
}
