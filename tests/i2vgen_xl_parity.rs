//! I2VGen-XL against diffusers' I2VGenXLPipeline (fixtures from tools/fixtures/i2vgen_xl.py). So far: the
//! pipeline's image preprocessing for the image encoder and for the VAE, on two odd-sized images.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Fixture, assert_close};
use stepstone::models::clip::image::{CLIP_MEAN, CLIP_STD};
use stepstone::pipelines::i2vgen_xl::{center_crop_wide, clip_pixels, latent_pixels};

#[test]
fn preprocessing_matches_the_pipeline_for_both_branches() {
    let fx = Fixture::load("i2vgen_xl/preprocess.safetensors");
    for (name, (width, height)) in [("wide", (40, 24)), ("tall", (32, 48))] {
        let img = image::open(common::fixtures().join("clip_vision").join(format!("{name}.png"))).unwrap().to_rgb8();
        for crop in [30, 224] {
            let key = format!("{name}.clip{crop}");
            let ours = clip_pixels(&img, width, crop, CLIP_MEAN, CLIP_STD);
            let err = assert_close(&key, &ours, fx.values(&key), 1e-5);
            eprintln!("{key}: max abs error {err:e}");
        }
        let key = format!("{name}.latent_input");
        let ours = latent_pixels(&img, width, height);
        assert_eq!(fx.get(&key).0, [3, height as usize, width as usize], "{key}");
        let err = assert_close(&key, &ours, fx.values(&key), 1e-6);
        eprintln!("{key}: max abs error {err:e}");
        assert_eq!(center_crop_wide(&img, width, height).dimensions(), (width, height));
    }
}
