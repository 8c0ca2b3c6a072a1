//! AutoencoderKL against diffusers (fixtures from tools/fixtures/make_fixtures.py).

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use burn::tensor::Tensor;
use common::{Fixture, assert_close, cpu, to_vec};
use stepstone::models::vae::VaeConfig;
use stepstone::models::{load::LoadOptions, load::load_into, load_vae};

fn vae_encoder_and_decoder_match_diffusers_in_every_file_format_check() {
    let device = cpu();
    let fx = Fixture::load("vae/vae_io.safetensors");
    let dir = common::fixtures().join("vae/vae");
    let (vae, report) = load_vae(&dir, &device).unwrap();
    assert!(report.unused.is_empty(), "unused: {:?}", report.unused);

    let post = vae.encode(fx.tensor::<4>("x", &device));
    let e1 = assert_close("VAE posterior mean", &to_vec(&post.mean), fx.values("mean"), 1e-4);
    let e2 = assert_close("VAE posterior logvar", &to_vec(&post.logvar), fx.values("logvar"), 1e-4);
    let decoded = vae.decode(fx.tensor::<4>("z", &device));
    let e3 = assert_close("VAE decode", &to_vec(&decoded), fx.values("decoded"), 1e-4);
    eprintln!("safetensors: mean {e1:e}, logvar {e2:e}, decode {e3:e}");

    let config: VaeConfig = serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    for (file, reference) in
        [("diffusion_pytorch_model.bin", "decoded"), ("diffusion_pytorch_model.fp16.safetensors", "decoded_from_f16")]
    {
        let mut vae = config.init(&device).unwrap();
        let report = load_into(&mut vae, &dir.join(file), &LoadOptions::default()).unwrap();
        assert!(report.unused.is_empty(), "{file}: unused {:?}", report.unused);
        let decoded = vae.decode(fx.tensor::<4>("z", &device));
        let err = assert_close(&format!("VAE decode ({file})"), &to_vec(&decoded), fx.values(reference), 1e-4);
        eprintln!("{file}: decode {err:e}");
    }
}

#[test]
fn frame_sliced_video_decoding_equals_decoding_every_frame_at_once() {
    let device = cpu();
    let fx = Fixture::load("vae/vae_io.safetensors");
    let (vae, _) = load_vae(&common::fixtures().join("vae/vae"), &device).unwrap();
    // A clip of 2 x 3 frames made from the fixture latent, scaled as pipelines hold it.
    let z = fx.tensor::<4>("z", &device).mul_scalar(vae.scaling_factor);
    let clip: Tensor<5> = Tensor::stack(vec![z.clone(), z.clone().flip([2]), z.clone().neg()], 2);
    let whole = vae.decode_video_scaled(clip.clone(), 64);
    let sliced = vae.decode_video_scaled(clip, 2);
    assert_eq!(whole.dims(), [2, 3, 3, 8, 8]);
    assert_close("frame-sliced decode", &to_vec(&sliced), &to_vec(&whole), 1e-6);
    // Frame 0 of the clip is the plain decode of z, mapped to [0, 1].
    let frame0 = whole.slice([0..2, 0..3, 0..1, 0..8, 0..8]).squeeze_dim::<4>(2);
    let want: Vec<f32> = fx.values("decoded").iter().map(|v| (v * 0.5 + 0.5).clamp(0.0, 1.0)).collect();
    assert_close("frame 0 of the decoded clip", &to_vec(&frame0), &want, 1e-4);
}

#[test]
fn vae_encoder_and_decoder_match_diffusers_in_every_file_format() {
    vae_encoder_and_decoder_match_diffusers_in_every_file_format_check();
}

/// The same comparison with every attention on the reference kernel in chunks (a 256-byte score budget: a few rows at a time).
#[test]
fn vae_encoder_and_decoder_match_diffusers_in_every_file_format_with_chunked_attention() {
    stepstone::models::attention::with_reference_chunks(
        256,
        vae_encoder_and_decoder_match_diffusers_in_every_file_format_check,
    );
}
