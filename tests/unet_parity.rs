//! UNet2DConditionModel against diffusers (fixtures from tools/fixtures/make_fixtures.py).

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Fixture, assert_close, cpu, to_vec};
use stepstone::models::load::{LoadOptions, load_into};
use stepstone::models::load_unet;
use stepstone::models::unet::UnetConfig;

fn unet_matches_diffusers_in_every_file_format_check() {
    let device = cpu();
    let fx = Fixture::load("unet/unet_io.safetensors");
    let dir = common::fixtures().join("unet/unet");
    let timesteps: Vec<f64> = fx.values("timesteps").iter().map(|&t| f64::from(t)).collect();
    let run = |unet: &stepstone::models::unet::Unet2DConditionModel| {
        to_vec(&unet.forward(fx.tensor::<4>("sample", &device), &timesteps, fx.tensor::<3>("context", &device)))
    };

    let (unet, report) = load_unet(&dir, &device).unwrap();
    assert!(report.unused.is_empty(), "unused: {:?}", report.unused);
    let err = assert_close("UNet eps (safetensors)", &run(&unet), fx.values("eps"), 1e-4);
    eprintln!("safetensors: max abs error {err:e}");

    let config: UnetConfig = serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    for (file, reference) in
        [("diffusion_pytorch_model.bin", "eps"), ("diffusion_pytorch_model.fp16.safetensors", "eps_from_f16")]
    {
        let mut unet = config.init(&device).unwrap();
        let report = load_into(&mut unet, &dir.join(file), &LoadOptions::default()).unwrap();
        assert!(report.unused.is_empty(), "{file}: unused {:?}", report.unused);
        let err = assert_close(&format!("UNet eps ({file})"), &run(&unet), fx.values(reference), 1e-4);
        eprintln!("{file}: max abs error {err:e}");
    }
}

#[test]
fn unet_matches_diffusers_in_every_file_format() {
    unet_matches_diffusers_in_every_file_format_check();
}

/// The same comparison with every attention on the reference kernel in chunks (a 256-byte score budget: a few rows at a time).
#[test]
fn unet_matches_diffusers_in_every_file_format_with_chunked_attention() {
    stepstone::models::attention::with_reference_chunks(256, unet_matches_diffusers_in_every_file_format_check);
}
