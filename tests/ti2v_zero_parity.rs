//! TI2V-Zero's repeat-and-slide (DDPM inversion, resampling, ModelScope's DDIM step) against the clean-room
//! Python reference of tools/fixtures/ti2v_zero.py on the tiny video UNet and VAE, every draw replayed.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::ops::ControlFlow;

use common::{Fixture, assert_relative, cpu, to_vec};
use stepstone::models::unet::VideoUnet;
use stepstone::pipelines::PipelineError;
use stepstone::pipelines::i4vgen::{GuidanceConditioning, Guided, StageProgress};
use stepstone::pipelines::noise::ReplayNoise;
use stepstone::pipelines::ti2v_zero::{ModelScopeDdim, Ti2vZeroSettings, ti2v_zero};
use stepstone::schedulers::{Ddim, DdimConfig};

struct Setup {
    unet: VideoUnet,
    vae: stepstone::models::vae::AutoencoderKl,
    text: GuidanceConditioning,
    fx: Fixture,
    json: serde_json::Value,
}

fn setup() -> Setup {
    let device = cpu();
    let root = common::fixtures();
    let (unet, vae) = common::tiny_video_model();
    let fx = Fixture::load("ti2v_zero/ti2v_zero_io.safetensors");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("ti2v_zero/ti2v_zero.json")).unwrap()).unwrap();
    let text = GuidanceConditioning::text(fx.tensor("cond", &device), fx.tensor("uncond", &device));
    Setup { unet, vae, text, fx, json }
}

fn schedule(json: &serde_json::Value) -> ModelScopeDdim {
    let ddim = Ddim::new(DdimConfig::animatediff()).unwrap();
    ModelScopeDdim::new(ddim.alphas_cumprod, json["steps"].as_u64().unwrap() as usize).unwrap()
}

fn settings(json: &serde_json::Value) -> Ti2vZeroSettings {
    let n = |k: &str| json[k].as_u64().unwrap() as usize;
    Ti2vZeroSettings { frames: n("frames"), new_frames: n("new_frames"), resample: n("resample") }
}

#[test]
fn ti2v_zero_matches_the_clean_room_reference() {
    let s = setup();
    let ddim = schedule(&s.json);
    let want: Vec<usize> =
        s.json["timesteps"].as_array().unwrap().iter().map(|t| t.as_u64().unwrap() as usize).collect();
    assert_eq!(ddim.timesteps, want, "ModelScope timesteps");
    let model = Guided::new(&s.unet, &s.text, s.json["guidance"].as_f64().unwrap());
    let mut noise = ReplayNoise::from_file(&common::fixtures().join("ti2v_zero/ti2v_zero_io.safetensors")).unwrap();
    let settings = settings(&s.json);
    let mut steps = Vec::new();
    let mut observe = |p: StageProgress<'_>| {
        steps.push(p.done);
        ControlFlow::Continue(())
    };
    let image = s.fx.tensor::<4>("image", &cpu());
    let out = ti2v_zero(&model, &s.vae, &ddim, image, settings, &mut noise, &mut observe).unwrap();
    assert_eq!(out.frames.len(), 1 + settings.new_frames, "the image and the new frames");
    assert_eq!(out.frames[0].to_data(), s.fx.tensor::<4>("image", &cpu()).to_data(), "the first frame is the image");
    for n in 0..settings.new_frames {
        assert_relative(
            &format!("new latent {n}"),
            &to_vec(&out.new_latents[n]),
            s.fx.values(&format!("new_latent_{n}")),
            2e-5,
        );
        assert_relative(
            &format!("new frame {n}"),
            &to_vec(&out.frames[n + 1]),
            s.fx.values(&format!("new_frame_{n}")),
            2e-5,
        );
    }
    // One report per DDIM step: S * (r + 1) per new frame.
    let per_frame = ddim.timesteps.len() * (settings.resample + 1);
    assert_eq!(steps, (1..=settings.new_frames * per_frame).collect::<Vec<_>>());
}

/// The new frames depend on the queue: the second new frame is not the first one again (the slide happened),
/// and a different image gives different frames.
#[test]
fn the_queue_slides_and_the_image_conditions() {
    let s = setup();
    let ddim = schedule(&s.json);
    let model = Guided::new(&s.unet, &s.text, s.json["guidance"].as_f64().unwrap());
    let settings = settings(&s.json);
    let run = |image: burn::tensor::Tensor<4>| {
        let mut noise = ReplayNoise::from_file(&common::fixtures().join("ti2v_zero/ti2v_zero_io.safetensors")).unwrap();
        ti2v_zero(&model, &s.vae, &ddim, image, settings, &mut noise, &mut |_| ControlFlow::Continue(())).unwrap()
    };
    let image = s.fx.tensor::<4>("image", &cpu());
    let a = run(image.clone());
    let b = run(image.neg());
    let diff = |x: Vec<f32>, y: Vec<f32>| x.iter().zip(y).map(|(p, q)| (p - q).abs()).fold(0f32, f32::max);
    assert!(diff(to_vec(&a.frames[1]), to_vec(&b.frames[1])) > 1e-2, "the image does not condition the new frame");
    assert!(
        diff(to_vec(&a.new_latents[0]), to_vec(&a.new_latents[1])) > 1e-3,
        "the second new frame repeats the first: the queue did not slide"
    );
}

/// A break from the observer cancels within one DDIM step; too short a clip is refused by name.
#[test]
fn cancel_and_bad_settings() {
    let s = setup();
    let ddim = schedule(&s.json);
    let model = Guided::new(&s.unet, &s.text, 7.5);
    let mut noise = ReplayNoise::from_file(&common::fixtures().join("ti2v_zero/ti2v_zero_io.safetensors")).unwrap();
    let image = s.fx.tensor::<4>("image", &cpu());
    let mut calls = 0;
    let mut stop = |_: StageProgress<'_>| {
        calls += 1;
        ControlFlow::Break(())
    };
    let err = ti2v_zero(&model, &s.vae, &ddim, image.clone(), settings(&s.json), &mut noise, &mut stop).err();
    assert!(matches!(err, Some(PipelineError::Cancelled { stage: "ti2v_zero" })), "{err:?}");
    assert_eq!(calls, 1);
    let short = Ti2vZeroSettings { frames: 1, ..settings(&s.json) };
    let err = ti2v_zero(&model, &s.vae, &ddim, image, short, &mut noise, &mut |_| ControlFlow::Continue(())).err();
    assert!(err.is_some_and(|e| e.to_string().contains("at least 2 frames")));
}

/// The reference's draws for the ModelScope run, stored under "modelscope/".
struct Prefixed(ReplayNoise);

impl stepstone::pipelines::noise::NoiseSource for Prefixed {
    fn normal(
        &mut self,
        name: &str,
        shape: [usize; 5],
        device: &burn::tensor::Device,
    ) -> Result<burn::tensor::Tensor<5>, stepstone::pipelines::noise::NoiseError> {
        self.0.normal(&format!("modelscope/{name}"), shape, device)
    }
}

/// The same loop on the second family: ModelScope T2V's UNet3DConditionModel (tiny) with its scaled-linear
/// schedule, against the same reference.
#[test]
fn ti2v_zero_on_modelscope_matches_the_clean_room_reference() {
    use stepstone::models::modelscope::load_unet3d;
    use stepstone::schedulers::BetaSchedule;

    let s = setup();
    let (unet, _) = load_unet3d(&common::fixtures().join("modelscope/unet3d_two_levels"), &cpu()).unwrap();
    let config = DdimConfig { beta_schedule: BetaSchedule::ScaledLinear, ..DdimConfig::default() };
    let config = DdimConfig { beta_start: 0.00085, beta_end: 0.012, ..config };
    let ddim = ModelScopeDdim::new(Ddim::new(config).unwrap().alphas_cumprod, 2).unwrap();
    let text =
        GuidanceConditioning::text(s.fx.tensor("modelscope/cond", &cpu()), s.fx.tensor("modelscope/uncond", &cpu()));
    let model = Guided::new(&unet, &text, s.json["guidance"].as_f64().unwrap());
    let replay = ReplayNoise::from_file(&common::fixtures().join("ti2v_zero/ti2v_zero_io.safetensors")).unwrap();
    let mut noise = Prefixed(replay);
    let settings = settings(&s.json);
    let image = s.fx.tensor::<4>("image", &cpu());
    let out =
        ti2v_zero(&model, &s.vae, &ddim, image, settings, &mut noise, &mut |_| ControlFlow::Continue(())).unwrap();
    for n in 0..settings.new_frames {
        let want = s.fx.values(&format!("modelscope/new_latent_{n}"));
        assert_relative(&format!("ModelScope new latent {n}"), &to_vec(&out.new_latents[n]), want, 2e-5);
        let want = s.fx.values(&format!("modelscope/new_frame_{n}"));
        assert_relative(&format!("ModelScope new frame {n}"), &to_vec(&out.frames[n + 1]), want, 2e-5);
    }
}
