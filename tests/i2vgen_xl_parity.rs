//! I2VGen-XL against diffusers' I2VGenXLPipeline (fixtures from tools/fixtures/i2vgen_xl.py). So far: the
//! pipeline's image preprocessing for the image encoder and for the VAE, on two odd-sized images.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Fixture, assert_close, cpu, to_vec};
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

/// The tiny I2VGenXLUNets (2 and 3 levels, 3 and 5 frames, non-square latents, two frame rates) against
/// diffusers' forward; every weight of the file used.
#[test]
fn unet_matches_diffusers_on_two_tiny_configs() {
    let device = cpu();
    for name in ["unet_a", "unet_b"] {
        let (unet, report) = stepstone::models::i2vgen_xl::load_i2vgen_xl_unet(
            &common::fixtures().join("i2vgen_xl").join(name),
            &device,
        )
        .unwrap();
        assert!(report.unused.is_empty(), "{name}: unused {:?}", report.unused);
        let fx = Fixture::load(&format!("i2vgen_xl/{name}_io.safetensors"));
        let fps: Vec<f64> = fx.values("fps").iter().map(|&v| f64::from(v)).collect();
        let t = f64::from(fx.values("timestep")[0]);
        let eps = unet
            .forward(
                fx.tensor::<5>("sample", &device),
                &[t, t],
                &fps,
                fx.tensor::<5>("image_latents", &device),
                fx.tensor::<2>("image_embeddings", &device),
                fx.tensor::<3>("encoder_hidden_states", &device),
            )
            .unwrap();
        assert_eq!(eps.dims().as_slice(), fx.get("eps").0.as_slice(), "{name}");
        if name == "unet_a" {
            denoiser_interface_matches(&unet, &fx, &eps);
        }
        // Tight: a missing 1/sqrt(d) in the temporal encoder's attention gave 6e-5 on unet_a.
        let err = assert_close(name, &to_vec(&eps), fx.values("eps"), 5e-6);
        eprintln!("{name}: max abs error {err:e}");
    }
}

/// The same prediction through the family-independent `VideoDenoiser` interface (the CLIP embedding as an
/// image token, the latents to concatenate, the frame rate); what is missing is named.
fn denoiser_interface_matches(
    unet: &stepstone::models::i2vgen_xl::I2vgenXlUnet,
    fx: &Fixture,
    eps: &burn::tensor::Tensor<5>,
) {
    use stepstone::models::unet::Motion;
    use stepstone::pipelines::denoiser::{Conditioning, VideoDenoiser};
    let device = cpu();
    let t = f64::from(fx.values("timestep")[0]);
    let [b, d] = fx.tensor::<2>("image_embeddings", &device).dims();
    let mut cond = Conditioning::text(fx.tensor::<3>("encoder_hidden_states", &device));
    let x = fx.tensor::<5>("sample", &device);
    let err = unet.predict(x.clone(), &[t, t], &cond, Motion::On).unwrap_err().to_string();
    assert!(err.contains("CLIP image embedding"), "{err}");
    cond.image_tokens = Some(fx.tensor::<2>("image_embeddings", &device).reshape([b, 1, d]));
    cond.concat_latents = Some(fx.tensor::<5>("image_latents", &device));
    cond.fps = Some(16.0);
    // The interface takes one frame rate for the batch: compare against a forward at 16 fps for both clips.
    let direct = unet
        .forward(
            x.clone(),
            &[t, t],
            &[16.0, 16.0],
            fx.tensor::<5>("image_latents", &device),
            fx.tensor::<2>("image_embeddings", &device),
            fx.tensor::<3>("encoder_hidden_states", &device),
        )
        .unwrap();
    let through = unet.predict(x.clone(), &[t, t], &cond, Motion::On).unwrap();
    assert_eq!(to_vec(&through), to_vec(&direct));
    assert_ne!(to_vec(&direct), to_vec(eps), "the frame rate matters (the fixture's second clip is at 8 fps)");
    assert!(unet.predict(x, &[t, t], &cond, Motion::Bypass).is_err());
}
