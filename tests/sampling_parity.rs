//! The DDIM + classifier-free-guidance loop with the tiny UNet against diffusers' pipeline loop (fixtures
//! from tools/fixtures/sampling.py: AnimateDiff's scheduler, 4 steps, guidance 7.5, eta 0 and 1).

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::ops::ControlFlow;

use burn::tensor::{Device, Tensor};
use common::{Fixture, assert_close, cpu, to_vec};
use serde_json::Value;
use stepstone::models::load_unet;
use stepstone::models::unet::Unet2DConditionModel;
use stepstone::schedulers::{CfgDdim, Ddim, DdimConfig, SampleError, sample_ddim_cfg};

const TOL: f32 = 1e-4;

fn meta() -> Value {
    let text = std::fs::read_to_string(common::fixtures().join("sampling/ddim_cfg.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn scheduler(meta: &Value) -> Ddim {
    let config: DdimConfig = serde_json::from_value(meta["config"].clone()).unwrap();
    assert_eq!(config, DdimConfig::animatediff(), "the fixture uses AnimateDiff's scheduler");
    let mut s = Ddim::new(config).unwrap();
    s.set_timesteps(meta["steps"].as_u64().unwrap() as usize).unwrap();
    let want: Vec<usize> = serde_json::from_value(meta["timesteps"].clone()).unwrap();
    assert_eq!(s.timesteps, want);
    s
}

/// The UNet as the loop's model: contexts [uncond; cond], the timestep repeated over the batch.
fn unet_model<'a>(
    unet: &'a Unet2DConditionModel,
    context: &'a Tensor<3>,
) -> impl FnMut(Tensor<4>, usize) -> Tensor<4> + 'a {
    move |x, t| {
        let n = x.dims()[0];
        unet.forward(x, &vec![t as f64; n], context.clone())
    }
}

fn setup(device: &Device) -> (Value, Fixture, Unet2DConditionModel, Tensor<3>) {
    let meta = meta();
    let fx = Fixture::load("sampling/ddim_cfg.safetensors");
    let (unet, _) = load_unet(&common::fixtures().join("unet/unet"), device).unwrap();
    let context = Tensor::cat(vec![fx.tensor::<3>("uncond", device), fx.tensor::<3>("cond", device)], 0);
    (meta, fx, unet, context)
}

#[test]
fn every_step_matches_diffusers() {
    let device = cpu();
    let (meta, fx, unet, context) = setup(&device);
    let s = scheduler(&meta);
    let guidance_scale = meta["guidance_scale"].as_f64().unwrap();
    for eta in [0.0, 1.0] {
        let key = format!("eta{}", (eta * 10.0) as u32);
        let mut errors = Vec::new();
        let mut seen = Vec::new();
        let fin = sample_ddim_cfg(
            &s,
            CfgDdim { guidance_scale, eta },
            fx.tensor::<4>("latents", &device),
            &s.timesteps,
            unet_model(&unet, &context),
            |i| Some(fx.tensor::<4>(&format!("{key}.noise{i}"), &device)),
            |p| {
                let i = p.completed - 1;
                seen.push(p.timestep);
                let want = fx.values(&format!("{key}.step{i}"));
                errors.push(assert_close(
                    &format!("{key}: latents after step {i} (t={})", p.timestep),
                    &to_vec(p.latents),
                    want,
                    TOL,
                ));
                ControlFlow::Continue(())
            },
        )
        .unwrap();
        assert_eq!(seen, s.timesteps, "{key}: one callback per step, in order");
        let last = format!("{key}.step{}", s.timesteps.len() - 1);
        assert_close(&format!("{key}: final latents"), &to_vec(&fin), fx.values(&last), TOL);
        let errors: Vec<String> = errors.iter().map(|e| format!("{e:.2e}")).collect();
        eprintln!("{key}: max abs error per step [{}]", errors.join(", "));
    }
    // eta 1 really injected the supplied noise: its result differs from the deterministic run.
    let gap =
        fx.values("eta0.step3").iter().zip(fx.values("eta10.step3")).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(gap > 100.0 * TOL, "eta 0 and eta 1 runs differ by only {gap:e}");
}

#[test]
fn cancelling_stops_before_the_next_model_call() {
    let device = cpu();
    let (meta, fx, unet, context) = setup(&device);
    let s = scheduler(&meta);
    let mut calls = 0;
    let mut model = unet_model(&unet, &context);
    let result = sample_ddim_cfg(
        &s,
        CfgDdim { guidance_scale: 7.5, eta: 0.0 },
        fx.tensor::<4>("latents", &device),
        &s.timesteps,
        |x, t| {
            calls += 1;
            model(x, t)
        },
        |_| None,
        |p| if p.completed == 2 { ControlFlow::Break(()) } else { ControlFlow::Continue(()) },
    );
    assert_eq!(result.err(), Some(SampleError::Cancelled { completed: 2, total: 4 }));
    assert_eq!(calls, 2, "the model ran {calls} times");
}

#[test]
fn eta_above_zero_needs_noise_and_the_model_must_return_both_halves() {
    let device = cpu();
    let (meta, fx, _, _) = setup(&device);
    let s = scheduler(&meta);
    let x = fx.tensor::<4>("latents", &device);
    let result = sample_ddim_cfg(
        &s,
        CfgDdim { guidance_scale: 7.5, eta: 1.0 },
        x.clone(),
        &s.timesteps,
        |x, _| x,
        |_| None,
        |_| ControlFlow::Continue(()),
    );
    assert_eq!(result.err(), Some(SampleError::MissingNoise { eta: 1.0, step: 0 }));
    let half = |x: Tensor<4>, _| x.narrow(0, 0, 1);
    let result = sample_ddim_cfg(
        &s,
        CfgDdim { guidance_scale: 7.5, eta: 0.0 },
        x,
        &s.timesteps,
        half,
        |_| None,
        |_| ControlFlow::Continue(()),
    );
    assert_eq!(result.err(), Some(SampleError::ModelBatch { found: 1, expected: 2 }));
}
