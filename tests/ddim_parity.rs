//! DDIM against diffusers' DDIMScheduler (fixtures from tools/fixtures/make_fixtures.py).

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Fixture, assert_close, cpu, to_vec};
use serde_json::Value;
use stepstone::schedulers::{Ddim, DdimConfig};

fn meta() -> Value {
    let text = std::fs::read_to_string(common::fixtures().join("ddim/ddim.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn scheduler(config: &Value) -> Ddim {
    let config: DdimConfig = serde_json::from_value(config.clone()).unwrap();
    Ddim::new(config).unwrap()
}

#[test]
fn tables_and_timesteps_match_diffusers() {
    let meta = meta();
    let fx = Fixture::load("ddim/ddim.safetensors");
    let cases = meta["cases"].as_object().unwrap();
    assert_eq!(cases.len(), 6);
    // I2VGen-XL's released schedule: 50 leading steps with offset 1 are 981, 961, ..., 1, as in VGen.
    let i2vgen: Vec<usize> = serde_json::from_value(cases["i2vgen_xl"]["timesteps"]["50"].clone()).unwrap();
    assert_eq!(i2vgen, (0..50).rev().map(|i| 1 + 20 * i).collect::<Vec<usize>>());
    for (name, case) in cases {
        let mut s = scheduler(&case["config"]);
        let want = fx.values(&format!("{name}.alphas_cumprod"));
        assert_eq!(s.alphas_cumprod.len(), want.len(), "{name}");
        // Relative (plus a tiny absolute floor): the tail of a zero-terminal-SNR table is near 0, where
        // an absolute tolerance would hide a wrong value.
        for (t, (&a, &b)) in s.alphas_cumprod.iter().zip(want).enumerate() {
            let b = f64::from(b);
            assert!((a - b).abs() <= 1e-5 * b.abs() + 1e-12, "{name}: alphas_cumprod[{t}] = {a:e}, diffusers {b:e}");
        }
        for (steps, expected) in case["timesteps"].as_object().unwrap() {
            s.set_timesteps(steps.parse().unwrap()).unwrap();
            let expected: Vec<usize> = serde_json::from_value(expected.clone()).unwrap();
            assert_eq!(s.timesteps, expected, "{name}: timesteps for {steps} steps");
        }
    }
}

#[test]
fn sampling_loops_match_diffusers() {
    let meta = meta();
    let fx = Fixture::load("ddim/ddim.safetensors");
    let device = cpu();
    let steps = meta["loop_steps"].as_u64().unwrap() as usize;
    for (name, case) in meta["cases"].as_object().unwrap() {
        let mut s = scheduler(&case["config"]);
        s.set_timesteps(steps).unwrap();
        for eta in [0.0, 0.7] {
            let key = format!("{name}.eta{}", (eta * 10.0) as u32);
            let mut x = fx.tensor::<5>(&format!("{name}.x_init"), &device);
            for (i, &t) in s.timesteps.clone().iter().enumerate() {
                let model_out = (x.clone().mul_scalar(0.5).add_scalar(t as f64 / 1000.0)).tanh();
                let noise = fx.tensor::<5>(&format!("{key}.noise{i}"), &device);
                let out = s.step(model_out, t, x, eta, Some(noise)).unwrap();
                assert_close(
                    &format!("{key} pred_original at step {i} (t={t})"),
                    &to_vec(&out.pred_original),
                    fx.values(&format!("{key}.pred_original{i}")),
                    1e-4,
                );
                x = out.prev_sample;
            }
            assert_close(&format!("{key} final sample"), &to_vec(&x), fx.values(&format!("{key}.final")), 1e-4);
        }
        let t = case["add_noise_t"].as_u64().unwrap() as usize;
        let clean = fx.tensor::<5>(&format!("{name}.add_noise.clean"), &device);
        let noise = fx.tensor::<5>(&format!("{name}.add_noise.noise"), &device);
        let noised = s.add_noise(clean, noise, t).unwrap();
        assert_close(&format!("{name} add_noise"), &to_vec(&noised), fx.values(&format!("{name}.add_noise.out")), 1e-5);
    }
}
