//! I2VGen-XL against diffusers' I2VGenXLPipeline (fixtures from tools/fixtures/i2vgen_xl.py). So far: the
//! pipeline's image preprocessing for the image encoder and for the VAE, on two odd-sized images.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Fixture, assert_close, assert_relative, cpu, to_vec};
use stepstone::models::clip::image::{CLIP_MEAN, CLIP_STD};
use stepstone::pipelines::i2vgen_xl::{center_crop_wide, clip_pixels, latent_pixels};

#[test]
fn preprocessing_matches_the_pipeline_for_both_branches() {
    let fx = Fixture::load("i2vgen_xl/preprocess.safetensors");
    for (name, (width, height)) in [("wide", (40, 24)), ("tall", (32, 48))] {
        let img = image::open(common::fixtures().join("clip_vision").join(format!("{name}.png"))).unwrap().to_rgb8();
        for crop in [30, 224] {
            let key = format!("{name}.clip{crop}");
            let ours = clip_pixels(&img, width, (crop, crop), CLIP_MEAN, CLIP_STD);
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
            vgen_concat_matches(&unet, &fx, &fps, t);
        }
        // Tight: a missing 1/sqrt(d) in the temporal encoder's attention gave 6e-5 on unet_a.
        let err = assert_close(name, &to_vec(&eps), fx.values("eps"), 5e-6);
        eprintln!("{name}: max abs error {err:e}");
    }
}

/// VGen's "concat added twice" on the same weights: our `ImageConcat::Vgen` against diffusers' forward with
/// conv_in's concatenated half doubled (VGen's math, exact by linearity); the two modes differ visibly.
fn vgen_concat_matches(unet: &stepstone::models::i2vgen_xl::I2vgenXlUnet, fx: &Fixture, fps: &[f64], t: f64) {
    use stepstone::models::i2vgen_xl::ImageConcat;
    let device = cpu();
    let eps = unet
        .forward_with(
            fx.tensor::<5>("sample", &device),
            &[t, t],
            fps,
            fx.tensor::<5>("image_latents", &device),
            fx.tensor::<2>("image_embeddings", &device),
            fx.tensor::<3>("encoder_hidden_states", &device),
            ImageConcat::Vgen,
        )
        .unwrap();
    assert_relative("unet_a, VGen's concat", &to_vec(&eps), fx.values("eps_vgen"), 1e-5);
    let apart = fx.values("eps").iter().zip(fx.values("eps_vgen")).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(apart > 1e-2, "diffusers' and VGen's forwards differ by {apart} only");
    eprintln!("diffusers vs VGen concat: max difference {apart}");
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

const PROMPT: &str = "a red fox jumping over a frozen lake at dawn";

fn pipeline_settings() -> stepstone::pipelines::i2vgen_xl::I2vgenXlSettings {
    stepstone::pipelines::i2vgen_xl::I2vgenXlSettings {
        width: 32,
        height: 24,
        frames: 5,
        fps: 12.0,
        steps: 3,
        guidance_scale: 9.0,
        decode_chunk: 2,
        ..Default::default()
    }
}

/// A 3-step run of the whole pipeline on the tiny I2VGen-XL folder (UNet as an fp16 variant, text encoder
/// as .bin) against diffusers' I2VGenXLPipeline with the same initial latents and VAE posterior noise: the
/// conditioning tensors, the timesteps, the final latents and the decoded video.
#[test]
fn pipeline_matches_diffusers_in_three_steps() {
    use burn::tensor::Tensor;
    use stepstone::pipelines::i2vgen_xl::{NEGATIVE_PROMPT, conditioning, sample, scheduler};
    use stepstone::pipelines::noise::ReplayNoise;

    let device = cpu();
    let dir = common::fixtures().join("i2vgen_xl").join("pipeline");
    let (model, reports) = stepstone::models::i2vgen_xl::load_i2vgen_xl(&dir, &device).unwrap();
    for report in &reports {
        assert!(report.unused.is_empty(), "{}: unused {:?}", report.path.display(), report.unused);
    }
    let fx = Fixture::load("i2vgen_xl/pipeline_io.safetensors");
    let img = image::open(common::fixtures().join("clip_vision").join("wide.png")).unwrap().to_rgb8();
    let settings = pipeline_settings();
    let mut noise =
        ReplayNoise::from_file(&common::fixtures().join("i2vgen_xl").join("pipeline_io.safetensors")).unwrap();
    noise.alias("i2vgen_xl/start", "start");
    noise.alias("i2vgen_xl/image_latent", "posterior_noise");

    let cond = conditioning(&model, &img, PROMPT, NEGATIVE_PROMPT, &settings, &mut noise, &device).unwrap();
    let (u, c) = (&cond.guidance.uncond, &cond.guidance.cond);
    assert_eq!((cond.truncated, cond.truncated_negative), (0, 0));
    // The reference batches [unconditional; conditional].
    let text = Tensor::cat(vec![u.text.clone(), c.text.clone()], 0);
    assert_relative("text states (clip_skip 1)", &to_vec(&text), fx.values("text"), 1e-5);
    let tokens = Tensor::cat(vec![u.image_tokens.clone().unwrap(), c.image_tokens.clone().unwrap()], 0);
    assert_eq!(tokens.dims().as_slice(), fx.get("image_embeddings").0.as_slice());
    assert_relative(
        "image embeddings (zeros, then the image's)",
        &to_vec(&tokens),
        fx.values("image_embeddings"),
        1e-5,
    );
    let latents = Tensor::cat(vec![u.concat_latents.clone().unwrap(), c.concat_latents.clone().unwrap()], 0);
    assert_eq!(latents.dims().as_slice(), fx.get("image_latents").0.as_slice());
    assert_relative("image latents + frame-position maps", &to_vec(&latents), fx.values("image_latents"), 1e-5);
    assert_eq!(fx.values("fps"), [12.0, 12.0]);
    assert_eq!(c.fps, Some(12.0));

    let ddim = scheduler(&model, settings.steps).unwrap();
    let timesteps: Vec<f32> = ddim.timesteps.iter().map(|&t| t as f32).collect();
    assert_eq!(timesteps, fx.values("timesteps"), "leading spacing with steps_offset 1");

    let mut steps = Vec::new();
    let out = sample(&model, &cond, &settings, &mut noise, &device, &mut |p| {
        assert!(p.latents.is_some(), "every step shows its clean-latent estimate");
        steps.push((p.stage, p.done, p.total));
        std::ops::ControlFlow::Continue(())
    })
    .unwrap();
    assert_eq!(steps, vec![("i2vgen_xl", 1, 3), ("i2vgen_xl", 2, 3), ("i2vgen_xl", 3, 3)]);
    assert_eq!(out.dims().as_slice(), fx.get("latents").0.as_slice());
    assert_relative("final latents after 3 steps", &to_vec(&out), fx.values("latents"), 1e-4);

    // Decoding in chunks of 2 frames vs diffusers' decode_latents(decode_chunk_size=2), then its [0, 1] mapping.
    let video = model.vae.decode_video_scaled(fx.tensor::<5>("latents", &device), settings.decode_chunk);
    let want: Vec<f32> = fx.values("video").iter().map(|v| (v / 2.0 + 0.5).clamp(0.0, 1.0)).collect();
    assert_relative("decoded video", &to_vec(&video), &want, 1e-5);
    let one_by_one = model.vae.decode_video_scaled(fx.tensor::<5>("latents", &device), 1);
    assert_relative("decoded one frame at a time", &to_vec(&one_by_one), &want, 1e-5);
}

/// A cancel stops the run within a step (before the next UNet call), and the settings are checked against
/// the model by name before any work.
#[test]
fn pipeline_cancels_within_a_step_and_names_bad_settings() {
    use stepstone::pipelines::i2vgen_xl::{check_settings, i2vgen_xl};
    use stepstone::pipelines::noise::SeededNoise;
    let device = cpu();
    let dir = common::fixtures().join("i2vgen_xl").join("pipeline");
    let (model, _) = stepstone::models::i2vgen_xl::load_i2vgen_xl(&dir, &device).unwrap();
    let img = image::open(common::fixtures().join("clip_vision").join("tall.png")).unwrap().to_rgb8();
    let settings = pipeline_settings();
    let mut calls = 0;
    let result = i2vgen_xl(&model, &img, PROMPT, "", &settings, &mut SeededNoise::new(1), &device, &mut |_| {
        calls += 1;
        std::ops::ControlFlow::Break(())
    });
    assert!(matches!(result, Err(stepstone::pipelines::PipelineError::Cancelled { stage: "i2vgen_xl" })));
    assert_eq!(calls, 1, "cancelled after the first step");

    // The VAE downsamples by 4 and the UNet by 2 here: sides in multiples of 8.
    assert_eq!(model.size_step(), 8);
    let err = check_settings(&model, &stepstone::pipelines::i2vgen_xl::I2vgenXlSettings { width: 36, ..settings })
        .unwrap_err()
        .to_string();
    assert!(err.contains("width 36") && err.contains("multiple of 8"), "{err}");
    let err = check_settings(&model, &stepstone::pipelines::i2vgen_xl::I2vgenXlSettings { frames: 0, ..settings })
        .unwrap_err()
        .to_string();
    assert!(err.contains("frames"), "{err}");

    // A seeded run gives the clip's shape and stays finite; the same seed gives the same clip.
    let run = |seed| {
        i2vgen_xl(&model, &img, PROMPT, "", &settings, &mut SeededNoise::new(seed), &device, &mut |_| {
            std::ops::ControlFlow::Continue(())
        })
        .unwrap()
    };
    let (a, b) = (run(3), run(3));
    assert_eq!(a.video.dims(), [1, 3, 5, 24, 32]);
    let va = to_vec(&a.video);
    assert!(va.iter().all(|v| v.is_finite() && (0.0..=1.0).contains(v)));
    assert_eq!(va, to_vec(&b.video));
    assert_ne!(va, to_vec(&run(4).video), "another seed, another clip");
}

/// Folders of the wrong family are named, with the node that loads them; a missing part is named.
#[test]
fn loaders_name_the_wrong_family_and_missing_parts() {
    let device = cpu();
    let i2v = common::fixtures().join("i2vgen_xl").join("pipeline");
    let ms = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/demo-models/modelscope-tiny");
    let err = stepstone::models::i2vgen_xl::load_i2vgen_xl(&ms, &device).unwrap_err().to_string();
    assert!(err.contains("ModelScope T2V folder") && err.contains("use Load ModelScope T2V"), "{err}");
    let err = stepstone::models::modelscope::load_modelscope(&i2v, &device).unwrap_err().to_string();
    assert!(err.contains("an I2VGen-XL folder") && err.contains("use Load I2VGen-XL"), "{err}");
    // I2VGen-XL's UNet where ModelScope's is expected: said what it is.
    let err = stepstone::models::modelscope::load_unet3d(&i2v.join("unet"), &device).unwrap_err().to_string();
    assert!(err.contains("I2VGenXLUNet") && err.contains("loads with Load I2VGen-XL"), "{err}");
    let err = stepstone::models::i2vgen_xl::load_i2vgen_xl_unet(&ms.join("unet"), &device).unwrap_err().to_string();
    assert!(err.contains("UNet3DConditionModel") && err.contains("loads with Load ModelScope T2V"), "{err}");

    let tmp = tempfile::tempdir().unwrap();
    let copy = tmp.path().join("i2vgen-xl");
    for part in ["unet", "vae", "text_encoder", "tokenizer", "scheduler"] {
        copy_dir(&i2v.join(part), &copy.join(part));
    }
    std::fs::copy(i2v.join("model_index.json"), copy.join("model_index.json")).unwrap();
    let err = stepstone::models::i2vgen_xl::load_i2vgen_xl(&copy, &device).unwrap_err().to_string();
    assert!(err.contains("missing image_encoder/, feature_extractor/"), "{err}");
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}
