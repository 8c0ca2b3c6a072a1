//! Tiled VAE decoding against diffusers' `AutoencoderKL.tiled_decode` (fixtures from
//! tools/fixtures/sampling.py, on the tiny VAE of tests/fixtures/vae/vae).

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use burn::tensor::Tensor;
use common::{Fixture, assert_close, cpu, to_vec};
use serde_json::Value;
use stepstone::models::load_vae;
use stepstone::models::vae::{TileConfig, TileConfigError, VaeConfig};

const TOL: f32 = 1e-4;

fn meta() -> Value {
    let text = std::fs::read_to_string(common::fixtures().join("sampling/vae_tiled.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn tiles_of(case: &Value) -> TileConfig {
    TileConfig::new(
        case["tile_latent_min_size"].as_u64().unwrap() as usize,
        case["tile_sample_min_size"].as_u64().unwrap() as usize,
        case["tile_overlap_factor"].as_f64().unwrap(),
    )
    .unwrap()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    assert!(a.iter().chain(b).all(|v| v.is_finite()), "a value is not finite");
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn tiled_decode_matches_diffusers() {
    let device = cpu();
    let meta = meta();
    let fx = Fixture::load("sampling/vae_tiled.safetensors");
    let (vae, _) = load_vae(&common::fixtures().join("vae/vae"), &device).unwrap();
    let cases = meta["cases"].as_object().unwrap();
    assert_eq!(cases.len(), 2);
    for (name, case) in cases {
        let tiles = tiles_of(case);
        let z = fx.tensor::<4>(&format!("{name}.z"), &device);
        let [_, _, h, w] = z.dims();
        assert!(tiles.needs_tiling(h, w), "{name}: the fixture latent {h}x{w} must be larger than a tile");
        let want_tiled = fx.values(&format!("{name}.tiled"));
        let want_untiled = fx.values(&format!("{name}.untiled"));

        let tiled = vae.decode_tiled(z.clone(), &tiles);
        assert_eq!(tiled.dims().to_vec(), fx.get(&format!("{name}.tiled")).0, "{name}: tiled output shape");
        let tiled = to_vec(&tiled);
        let err = assert_close(&format!("{name}: tiled decode vs diffusers"), &tiled, want_tiled, TOL);
        // The entry point that tiles only when needed takes the tiled path here.
        let auto = to_vec(&vae.decode_with(z.clone(), Some(&tiles)));
        assert_close(&format!("{name}: decode_with(tiles) vs decode_tiled"), &auto, &tiled, 0.0);

        // Tiling really ran: the untiled decode (which matches diffusers' untiled decode) is far off.
        let untiled = to_vec(&vae.decode(z));
        let err_untiled = assert_close(&format!("{name}: untiled decode vs diffusers"), &untiled, want_untiled, TOL);
        let gap = max_abs_diff(&untiled, &tiled);
        assert!(gap > 100.0 * TOL, "{name}: tiled and untiled decodes differ by only {gap:e}");
        eprintln!(
            "{name}: tiled vs diffusers max abs error {err:e}; untiled vs diffusers {err_untiled:e}; \
             tiled vs untiled {gap:e}"
        );
    }
}

#[test]
fn tiles_only_when_the_latent_is_larger_than_a_tile() {
    let device = cpu();
    let fx = Fixture::load("sampling/vae_tiled.safetensors");
    let (vae, _) = load_vae(&common::fixtures().join("vae/vae"), &device).unwrap();
    let tiles = TileConfig::new(4, 8, 0.25).unwrap();
    // A 4x4 latent fits one tile: decode_with must not tile it (and decode_tiled of a single tile is the
    // plain decode anyway). A 4x5 latent does not fit.
    let z = fx.tensor::<4>("quarter.z", &device);
    let small = z.clone().slice([0..1, 0..4, 0..4, 0..4]);
    let plain = to_vec(&vae.decode(small.clone()));
    assert_close("4x4 latent, decode_with(tiles)", &to_vec(&vae.decode_with(small.clone(), Some(&tiles))), &plain, 0.0);
    assert_close("4x4 latent, decode_with(None)", &to_vec(&vae.decode_with(small, None)), &plain, 0.0);
    let wide = z.slice([0..1, 0..4, 0..4, 0..5]);
    let tiled = to_vec(&vae.decode_with(wide.clone(), Some(&tiles)));
    let gap = max_abs_diff(&tiled, &to_vec(&vae.decode(wide)));
    assert!(gap > 100.0 * TOL, "4x5 latent: decode_with(tiles) should have tiled (differs from decode by {gap:e})");
}

#[test]
fn default_tiles_follow_diffusers() {
    let meta = meta();
    let defaults = &meta["defaults"];
    let (vae, _) = load_vae(&common::fixtures().join("vae/vae"), &cpu()).unwrap();
    let tiles = vae.default_tiles.expect("the tiny VAE has default tiles");
    assert_eq!(tiles.sample_size() as u64, defaults["tile_sample_min_size"].as_u64().unwrap());
    assert_eq!(tiles.latent_size() as u64, defaults["tile_latent_min_size"].as_u64().unwrap());
    assert_eq!(tiles.overlap_factor(), defaults["tile_overlap_factor"].as_f64().unwrap());
    // SD 1.x: 512-pixel tiles of 64 latent pixels, stride 48, blended over 128 pixels, 384 kept.
    let sd = TileConfig::for_config(&VaeConfig::default()).unwrap();
    assert_eq!(
        (sd.sample_size(), sd.latent_size(), sd.latent_stride(), sd.blend_extent(), sd.row_limit()),
        (512, 64, 48, 128, 384)
    );
    assert_eq!(TileConfig::new(0, 8, 0.25), Err(TileConfigError::Empty { latent: 0, sample: 8 }));
    assert_eq!(TileConfig::new(4, 8, 1.0), Err(TileConfigError::Overlap(1.0)));
    assert_eq!(TileConfig::new(1, 8, 0.5), Err(TileConfigError::NoStride { latent: 1, overlap: 0.5 }));
}

#[test]
fn tiled_video_decoding_equals_tiled_decoding_of_every_frame() {
    let device = cpu();
    let fx = Fixture::load("sampling/vae_tiled.safetensors");
    let (vae, _) = load_vae(&common::fixtures().join("vae/vae"), &device).unwrap();
    let tiles = TileConfig::new(4, 8, 0.25).unwrap();
    // A clip of 1 x 3 frames of 10x7 latents (scaled, as pipelines hold them).
    let z = fx.tensor::<4>("quarter.z", &device).mul_scalar(vae.scaling_factor);
    let frames = [z.clone(), z.clone().flip([3]), z.neg()];
    let clip: Tensor<5> = Tensor::stack(frames.to_vec(), 2);
    let video = vae.decode_video_scaled_with(clip.clone(), 2, Some(&tiles));
    assert_eq!(video.dims(), [1, 3, 3, 20, 14]);
    let mut worst = 0.0f32;
    for (f, frame) in frames.iter().enumerate() {
        let want = to_vec(&vae.decode_scaled_with(frame.clone(), Some(&tiles)));
        let got = to_vec(&video.clone().slice([0..1, 0..3, f..f + 1, 0..20, 0..14]).squeeze_dim::<4>(2));
        worst = worst.max(assert_close(&format!("tiled video frame {f}"), &got, &want, 1e-6));
    }
    // Frame 0 is diffusers' tiled decode mapped to [0, 1].
    let frame0 = to_vec(&video.clone().slice([0..1, 0..3, 0..1, 0..20, 0..14]).squeeze_dim::<4>(2));
    let want: Vec<f32> = fx.values("quarter.tiled").iter().map(|v| (v * 0.5 + 0.5).clamp(0.0, 1.0)).collect();
    let err = assert_close("tiled video frame 0 vs diffusers", &frame0, &want, TOL);
    // Without tiles the video decode is the untiled one, which differs.
    let untiled = to_vec(&vae.decode_video_scaled(clip, 2));
    let gap = max_abs_diff(&untiled, &to_vec(&video));
    assert!(gap > 100.0 * TOL, "tiled and untiled video decodes differ by only {gap:e}");
    eprintln!("tiled video vs per-frame tiled decode {worst:e}; frame 0 vs diffusers {err:e}; vs untiled {gap:e}");
}
