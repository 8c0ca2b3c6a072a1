//! The I4VGen stages against a Python reference of the official AnimateDiff procedure
//! (tools/fixtures/pipeline.py) on the tiny random models, with all noise replayed from the reference.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::ops::ControlFlow;

use burn::tensor::Tensor;
use common::{Fixture, assert_close, cpu, to_vec};
use stepstone::models::image_reward::{ImageReward, load_image_reward_dir};
use stepstone::models::unet::VideoUnet;
use stepstone::models::vae::AutoencoderKl;
use stepstone::pipelines::PipelineError;
use stepstone::pipelines::i4vgen::{self, GuidanceConditioning, Guided, StageProgress};
use stepstone::pipelines::noise::{NoiseSource, ReplayNoise};
use stepstone::schedulers::{Ddim, DdimConfig};

const TOL: f32 = 1e-4;

struct Setup {
    unet: VideoUnet,
    vae: AutoencoderKl,
    reward: ImageReward,
    text: GuidanceConditioning,
    scheduler: Ddim,
    json: serde_json::Value,
    fx: Fixture,
}

fn setup() -> Setup {
    let device = cpu();
    let root = common::fixtures();
    let (unet, vae) = common::tiny_video_model();
    let (reward, _) = load_image_reward_dir(&root.join("image_reward"), &device).unwrap();
    let fx = Fixture::load("pipeline/i4vgen_io.safetensors");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("pipeline/i4vgen.json")).unwrap()).unwrap();
    let mut scheduler = Ddim::new(DdimConfig::animatediff()).unwrap();
    scheduler.set_timesteps(json["steps"].as_u64().unwrap() as usize).unwrap();
    let timesteps: Vec<usize> =
        json["timesteps"].as_array().unwrap().iter().map(|t| t.as_u64().unwrap() as usize).collect();
    assert_eq!(scheduler.timesteps, timesteps, "DDIM timesteps");
    let text = GuidanceConditioning::text(fx.tensor("cond", &device), fx.tensor("uncond", &device));
    Setup { unet, vae, reward, text, scheduler, json, fx }
}

fn noise(name: &str, shape: [usize; 5]) -> Tensor<5> {
    let mut replay = ReplayNoise::from_file(&common::fixtures().join("pipeline/i4vgen_io.safetensors")).unwrap();
    replay.normal(name, shape, &cpu()).unwrap()
}

fn go(_: StageProgress<'_>) -> ControlFlow<()> {
    ControlFlow::Continue(())
}

fn close(what: &str, got: &Tensor<5>, fx: &Fixture, name: &str) {
    let err = assert_close(what, &to_vec(got), fx.values(name), TOL);
    eprintln!("{what}: max abs error {err:e}");
}

#[test]
fn i4vgen_stages_match_the_reference() {
    let s = setup();
    let (fx, json) = (&s.fx, &s.json);
    let frames = json["frames"].as_u64().unwrap() as usize;
    let guidance = json["guidance"].as_f64().unwrap();
    let p = json["p_ni_vsds"].as_f64().unwrap();
    let p_re = json["p_re"].as_f64().unwrap();
    let sizes: Vec<f64> = json["step_sizes"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    assert_eq!(i4vgen::ni_vsds_iterations(s.scheduler.timesteps.len(), p), json["tau"].as_u64().unwrap() as usize);
    let model = Guided::new(&s.unet, &s.text, guidance);
    let shape = [1, 4, frames, 8, 8];

    // 1. candidates (motion modules bypassed), decoded.
    let candidates = i4vgen::candidates(&model, &s.scheduler, noise("candidate_noise", shape), &mut go).unwrap();
    close("candidate latents", &candidates, fx, "candidate_latents");
    let images = i4vgen::decode(&s.vae, candidates.clone());
    // [F, 3, 1, H, W] here, [F, 3, H, W] in the reference: the same values in the same order.
    close("candidate images", &images, fx, "candidate_images");

    // 2. scores and selection.
    let prompt = json["prompt"].as_str().unwrap();
    let scores = i4vgen::score(&s.reward, prompt, &images).unwrap();
    let err = assert_close("ImageReward scores", &scores, fx.values("scores"), TOL);
    eprintln!("scores {scores:?}: max abs error {err:e}");
    let selected = i4vgen::select(&scores, None).unwrap();
    assert_eq!(selected, json["selected_index"].as_u64().unwrap() as usize, "selected candidate ({scores:?})");

    // 3-4. NI-VSDS from the selected and from a hand-picked candidate, then regeneration.
    let manual = json["manual_index"].as_u64().unwrap() as usize;
    for (index, prefix) in [(selected, ""), (manual, "manual_")] {
        let index = i4vgen::select(&scores, (prefix == "manual_").then_some(index)).unwrap();
        let z = i4vgen::static_video(&candidates, index, frames).unwrap();
        let z = i4vgen::ni_vsds(&model, &s.scheduler, z, noise("constant_noise", shape), p, &sizes, &mut go).unwrap();
        close(&format!("{prefix}NI-VSDS latents"), &z, fx, &format!("{prefix}ni_vsds_latents"));
        let z = i4vgen::regenerate(&model, &s.scheduler, z, noise("regen_noise", shape), p_re, &mut go).unwrap();
        close(&format!("{prefix}final latents"), &z, fx, &format!("{prefix}final_latents"));
        if prefix.is_empty() {
            close("decoded frames", &i4vgen::decode(&s.vae, z), fx, "frames");
        }
    }
}

#[test]
fn stages_report_progress_and_stop_when_cancelled() {
    let s = setup();
    let frames = s.json["frames"].as_u64().unwrap() as usize;
    let model = Guided::new(&s.unet, &s.text, 7.5);
    let shape = [1, 4, frames, 8, 8];
    let mut seen = Vec::new();
    let mut stop_after_two = |p: StageProgress<'_>| {
        seen.push((p.stage, p.done, p.total));
        if p.done == 2 { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
    };
    let z = i4vgen::static_video(&Tensor::zeros([2, 4, 1, 8, 8], &cpu()), 1, frames).unwrap();
    let err =
        i4vgen::ni_vsds(&model, &s.scheduler, z, noise("constant_noise", shape), 0.6, &[1.0], &mut stop_after_two);
    assert!(matches!(err, Err(PipelineError::Cancelled { stage: "ni_vsds" })), "{err:?}");
    assert_eq!(seen.iter().map(|p| p.1).collect::<Vec<_>>(), vec![1, 2]);
    let total = i4vgen::ni_vsds_iterations(s.scheduler.timesteps.len(), 0.6);
    assert!(seen.iter().all(|p| p.2 == total && p.0 == "ni_vsds"));

    seen.clear();
    let mut stop_after_one = |p: StageProgress<'_>| {
        seen.push((p.stage, p.done, p.total));
        ControlFlow::Break(())
    };
    let err = i4vgen::regenerate(
        &model,
        &s.scheduler,
        noise("regen_noise", shape),
        noise("regen_noise", shape),
        1.0,
        &mut stop_after_one,
    );
    assert!(matches!(err, Err(PipelineError::Cancelled { stage: "regeneration" })), "{err:?}");
    assert_eq!(seen.len(), 1);
}

#[test]
fn bad_input_is_named() {
    let s = setup();
    assert_eq!(
        i4vgen::select(&[0.1, 0.3], Some(2)).unwrap_err().to_string(),
        "candidate 2 was picked, but there are only 2 candidates (0 to 1)"
    );
    assert!(matches!(i4vgen::select(&[], None), Err(PipelineError::NoCandidates)));
    let model = Guided::new(&s.unet, &s.text, 7.5);
    let empty = Tensor::<5>::zeros([1, 4, 0, 8, 8], &cpu());
    assert!(matches!(i4vgen::candidates(&model, &s.scheduler, empty, &mut go), Err(PipelineError::NoCandidates)));
    // 33 frames exceed the v2 module's 32 positions: the message names both numbers.
    let long = Tensor::<5>::zeros([1, 4, 33, 8, 8], &cpu());
    let err = i4vgen::text_to_video(&model, &s.scheduler, long, &mut go).unwrap_err().to_string();
    assert!(err.contains("33 frames") && err.contains("32 positions"), "{err}");
}
