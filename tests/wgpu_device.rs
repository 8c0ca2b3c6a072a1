//! The same network on the wgpu device (Vulkan; Mesa's software rasteriser "llvmpipe" on CI) and on the
//! flex CPU device must agree.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use burn::tensor::{Device, DeviceKind};
use common::{Fixture, assert_close, to_vec};
use stepstone::models::load_clip_text_encoder;

#[test]
fn clip_text_encoder_agrees_on_wgpu_and_flex() {
    let fx = Fixture::load("clip/text_encoder_io.safetensors");
    let (shape, data) = fx.get("input_ids");
    let ids: Vec<Vec<u32>> = data.chunks(shape[1]).map(|r| r.iter().map(|&v| v as u32).collect()).collect();
    let dir = common::fixtures().join("clip/text_encoder");

    let cpu = common::cpu();
    let (model, _) = load_clip_text_encoder(&dir, &cpu).unwrap();
    let on_cpu = to_vec(&model.encode_ids(&ids, &cpu));

    let gpu = Device::wgpu(DeviceKind::DefaultDevice);
    let (model, _) = load_clip_text_encoder(&dir, &gpu).unwrap();
    let on_gpu = to_vec(&model.encode_ids(&ids, &gpu));

    let err = assert_close("CLIP on wgpu vs flex", &on_gpu, &on_cpu, 1e-4);
    eprintln!("wgpu vs flex: max abs error {err:e}");
    assert_close("CLIP on wgpu vs transformers", &on_gpu, fx.values("last_hidden_state"), 1e-4);
}

#[test]
fn unet_agrees_on_wgpu_and_flex_and_with_diffusers() {
    use stepstone::models::load_unet;

    let fx = Fixture::load("unet/unet_io.safetensors");
    let dir = common::fixtures().join("unet/unet");
    let timesteps: Vec<f64> = fx.values("timesteps").iter().map(|&t| f64::from(t)).collect();
    let run = |device: &Device| {
        let (unet, report) = load_unet(&dir, device).unwrap();
        assert!(report.unused.is_empty(), "unused: {:?}", report.unused);
        to_vec(&unet.forward(fx.tensor::<4>("sample", device), &timesteps, fx.tensor::<3>("context", device)))
    };
    let on_cpu = run(&common::cpu());
    let on_gpu = run(&Device::wgpu(DeviceKind::DefaultDevice));

    let err = assert_close("UNet on wgpu vs flex", &on_gpu, &on_cpu, 1e-4);
    let err_ref = assert_close("UNet on wgpu vs diffusers", &on_gpu, fx.values("eps"), 1e-4);
    eprintln!("UNet: wgpu vs flex max abs error {err:e}, wgpu vs diffusers {err_ref:e}");
}

#[test]
fn video_unet_with_motion_modules_agrees_on_wgpu_and_with_the_original() {
    use stepstone::models::unet::{Motion, VideoUnet};
    use stepstone::models::{MotionLoadOptions, load_motion_module, load_unet};

    let fx = Fixture::load("motion/motion_io.safetensors");
    let timesteps: Vec<f64> = fx.values("timesteps").iter().map(|&t| f64::from(t)).collect();
    let options = MotionLoadOptions { heads: 2, groups: 4, norms: None };
    let run = |device: &Device| {
        let (unet, _) = load_unet(&common::fixtures().join("unet/unet"), device).unwrap();
        let (motion, _) = load_motion_module(&common::fixtures().join("motion/mm_v2.ckpt"), device, &options).unwrap();
        let model = VideoUnet::new(unet, Some(motion)).unwrap();
        let sample = fx.tensor::<5>("sample_f5", device);
        to_vec(&model.forward(sample, &timesteps, fx.tensor::<3>("context", device), Motion::On).unwrap())
    };
    let on_cpu = run(&common::cpu());
    let on_gpu = run(&Device::wgpu(DeviceKind::DefaultDevice));
    let err = assert_close("video UNet on wgpu vs flex", &on_gpu, &on_cpu, 1e-4);
    let err_ref =
        assert_close("video UNet on wgpu vs original AnimateDiff", &on_gpu, fx.values("eps_v2_original_f5"), 1e-4);
    eprintln!("video UNet: wgpu vs flex max abs error {err:e}, wgpu vs reference {err_ref:e}");
}

#[test]
fn demo_nodes_agree_on_wgpu_and_flex() {
    use serde_json::json;
    use stepstone::graph::load_preset;
    use stepstone::nodes::{Candidates, Ranking};
    use stepstone::runtime::{Event, RunOutcome};

    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut graph = load_preset(&root.join("graphs/i4vgen_demo.json")).unwrap();
    for (param, value) in [("count", json!(2)), ("steps", json!(3))] {
        graph.set_param(&stepstone::nodes::registry(), "candidates", param, value).unwrap();
    }
    let run = |device: Device| {
        let mut engine = stepstone::builtin_engine(root.join("assets/demo-models")).with_device(device);
        let mut outputs = std::collections::BTreeMap::new();
        let outcome = engine.run(
            &graph,
            &["selector".to_string()],
            1,
            &mut |e| {
                if let Event::NodeFinished { node, outputs: o, .. } = e {
                    outputs.insert(node, o);
                }
            },
            &|| false,
        );
        assert_eq!(outcome, RunOutcome::Completed);
        let latents = outputs["candidates"].get::<Candidates>("candidates").unwrap().latents.data.as_ref().clone();
        let scores = outputs["selector"].get::<Ranking>("ranking").unwrap().scores.clone().unwrap();
        (latents, scores)
    };
    let (cpu_latents, cpu_scores) = run(common::cpu());
    let (gpu_latents, gpu_scores) = run(Device::wgpu(DeviceKind::DefaultDevice));
    let err = assert_close("demo candidates on wgpu vs flex", &gpu_latents, &cpu_latents, 1e-3);
    let err_scores = assert_close("demo ImageReward scores on wgpu vs flex", &gpu_scores, &cpu_scores, 1e-3);
    eprintln!("demo nodes: candidate latents max abs error {err:e}, scores {err_scores:e}");
}
