//! The built-in nodes on the bundled demo models (assets/demo-models: tiny random networks in the real
//! formats), through the engine: what each artist's edit re-runs, what the selector shows, and bad input.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::engine::{engine, repo, run, set, sorted};
use serde_json::json;
use stepstone::graph::{Graph, Node, PortRef, load_preset};
use stepstone::nodes::{Candidates, Ranking, SelectedBy, StillImage};
use stepstone::runtime::{Event, NodeStatus, RunOutcome};
use stepstone::video::Video;

/// The demo preset made cheaper for tests: 4 candidates and frames, 4 DDIM steps.
fn demo() -> Graph {
    let mut g = load_preset(&repo("graphs/i4vgen_demo.json")).unwrap();
    for (node, param, value) in [
        ("candidates", "count", json!(4)),
        ("animator", "frames", json!(4)),
        ("candidates", "steps", json!(4)),
        ("animator", "steps", json!(4)),
        ("regenerator", "steps", json!(4)),
        ("regenerator", "strength", json!(0.75)),
    ] {
        set(&mut g, node, param, value);
    }
    g
}

#[test]
fn artist_edits_rerun_only_what_they_touch() {
    let mut engine = engine();
    let mut g = demo();
    let first = run(&mut engine, &g, &["preview"]);
    assert!(first.completed(), "{:?}", first.failures);
    assert_eq!(
        sorted(&first.evaluated),
        ["animator", "candidates", "checkpoint", "motion", "preview", "prompt", "regenerator", "reward", "selector"]
    );
    let loads = engine.models().load_count();
    assert_eq!(loads, 4, "three models and one set of scores");

    // What the selector shows: every candidate, its score, the selected one (the best by reward).
    let candidates = first.output::<Candidates>("candidates", "candidates");
    assert_eq!(candidates.images.len(), 4);
    assert_eq!(candidates.latents.shape, [4, 4, 1, 8, 8]);
    let ranking = first.output::<Ranking>("selector", "ranking");
    let scores = ranking.scores.clone().expect("scores with a reward model connected");
    assert_eq!(scores.len(), 4);
    assert!(scores.iter().any(|s| *s != scores[0]), "the candidates must score differently: {scores:?}");
    assert_eq!((ranking.by, Some(ranking.selected)), (SelectedBy::Reward, ranking.best()));
    let best = ranking.selected;
    let anchor = first.output::<StillImage>("selector", "anchor");
    assert_eq!(anchor.latent, candidates.latents.clip(best), "the anchor carries the selected candidate's latent");
    assert_eq!(*anchor.image, *candidates.images[best]);
    let clip = first.output::<Video>("regenerator", "video");
    assert_eq!(clip.frames.len(), 4);
    assert_eq!(clip.frames[0].dimensions(), (64, 64));
    assert_eq!(clip.latents.as_ref().map(|l| l.shape), Some([1, 4, 4, 8, 8]));
    let animated = first.output::<Video>("animator", "video");
    assert_ne!(animated.latents, clip.latents, "regeneration changes the clip");

    // Nothing changed: nothing runs.
    let again = run(&mut engine, &g, &["preview"]);
    assert!(again.completed() && again.evaluated.is_empty(), "{:?}", again.evaluated);
    // The manual index does not matter in reward mode: moving it re-runs nothing.
    set(&mut g, "selector", "index", json!(3));
    let r = run(&mut engine, &g, &["preview"]);
    assert!(r.completed() && r.evaluated.is_empty(), "{:?}", r.evaluated);

    // 1. Regeneration strength: only the regenerator and what follows.
    set(&mut g, "regenerator", "strength", json!(0.5));
    let r = run(&mut engine, &g, &["preview"]);
    assert!(r.completed(), "{:?}", r.failures);
    assert_eq!(sorted(&r.evaluated), ["preview", "regenerator"]);

    // 2. Another candidate by hand: NI-VSDS onward, never the candidates, and no re-scoring.
    let other = (best + 1) % 4;
    set(&mut g, "selector", "mode", json!("manual"));
    set(&mut g, "selector", "index", json!(other));
    let r = run(&mut engine, &g, &["preview"]);
    assert!(r.completed(), "{:?}", r.failures);
    assert_eq!(sorted(&r.evaluated), ["animator", "preview", "regenerator", "selector"]);
    assert_eq!(engine.models().load_count(), loads, "no model loaded and no candidate scored again");
    let picked = r.output::<Ranking>("selector", "ranking");
    assert_eq!((picked.by, picked.selected, picked.scores.as_ref()), (SelectedBy::Hand, other, Some(&scores)));
    let note = r.notes_of("selector").join(" | ");
    assert!(note.contains(&format!("candidate {other} picked by hand")), "{note}");
    assert!(note.contains(&format!("ImageReward prefers candidate {best}")), "{note}");

    // 3. The prompt: everything that depends on the text (not the model loaders).
    set(&mut g, "prompt", "positive", json!("a lighthouse in a storm"));
    let r = run(&mut engine, &g, &["preview"]);
    assert!(r.completed(), "{:?}", r.failures);
    assert_eq!(sorted(&r.evaluated), ["animator", "candidates", "preview", "prompt", "regenerator", "selector"]);
    assert_eq!(engine.models().load_count(), loads + 1, "the new candidates are scored once");
}

#[test]
fn runs_are_reproducible_and_the_seed_matters() {
    let g = demo();
    let a = run(&mut engine(), &g, &["candidates"]);
    let b = run(&mut engine(), &g, &["candidates"]);
    let (a, b) =
        (a.output::<Candidates>("candidates", "candidates"), b.output::<Candidates>("candidates", "candidates"));
    assert_eq!(a.latents, b.latents, "same seed, same candidates");
    let mut g2 = g.clone();
    set(&mut g2, "candidates", "seed", json!(7));
    let c = run(&mut engine(), &g2, &["candidates"]);
    assert_ne!(a.latents, c.output::<Candidates>("candidates", "candidates").latents, "another seed, other candidates");
}

#[test]
fn bad_sizes_frames_and_indices_are_named_and_lose_nothing() {
    let mut engine = engine();
    let mut g = demo();
    let base = run(&mut engine, &g, &["selector"]);
    assert!(base.completed(), "{:?}", base.failures);

    // Frames beyond the motion module's positions (32 for v2): refused before any step, candidates kept.
    set(&mut g, "animator", "frames", json!(40));
    let r = run(&mut engine, &g, &["animator"]);
    let msg = &r.failures["animator"];
    assert!(msg.contains("frames") && msg.contains("40 frames") && msg.contains("32"), "{msg}");
    assert_eq!(r.evaluated, ["motion"], "only the motion module (not needed before) was loaded");
    set(&mut g, "animator", "frames", json!(4));
    let r = run(&mut engine, &g, &["animator"]);
    assert_eq!(sorted(&r.evaluated), ["animator"], "the candidates and scores survived the failure");

    // A manual index past the candidates.
    set(&mut g, "selector", "mode", json!("manual"));
    set(&mut g, "selector", "index", json!(9));
    let r = run(&mut engine, &g, &["selector"]);
    let msg = &r.failures["selector"];
    assert!(
        msg.contains("index") && msg.contains("candidate 9 was picked, but there are only 4 candidates (0 to 3)"),
        "{msg}"
    );

    // Width not divisible by 8: validation blocks the node before it runs, naming the parameter.
    set(&mut g, "candidates", "width", json!(100));
    let r = run(&mut engine, &g, &["candidates"]);
    let msg = &r.skipped["candidates"];
    assert!(msg.contains("'width'") && msg.contains("100 is not a multiple of 8"), "{msg}");
    assert!(r.outcome != Some(RunOutcome::Completed));

    // Zero candidates: refused by validation, naming the parameter.
    let mut g0 = demo();
    let registry = stepstone::nodes::registry();
    assert!(g0.set_param(&registry, "candidates", "count", json!(0)).is_err(), "the editor refuses 0");
    g0.nodes.get_mut("candidates").unwrap().params.insert("count".into(), json!(0));
    let plan = engine.plan(&g0, &["candidates".to_string()]).unwrap();
    match plan.status("candidates") {
        Some(NodeStatus::Blocked { reason }) => assert!(reason.contains("count"), "{reason}"),
        other => panic!("count 0 must block the node, got {other:?}"),
    }

    // Reward mode without a reward model.
    let mut g1 = demo();
    assert!(g1.disconnect(&PortRef::new("selector", "reward")));
    let r = run(&mut engine, &g1, &["selector"]);
    assert!(r.skipped["selector"].contains("needs input 'reward' (reward model)"), "{:?}", r.skipped);
}

#[test]
fn empty_and_overlong_prompts() {
    let mut engine = engine();
    let mut g = demo();
    set(&mut g, "prompt", "positive", json!(""));
    let r = run(&mut engine, &g, &["candidates"]);
    assert!(r.completed(), "an empty prompt is allowed, as in diffusers: {:?}", r.failures);
    assert!(r.notes_of("candidates").is_empty(), "{:?}", r.notes);

    let long = "a very detailed painting of a quiet harbour town at dusk, ".repeat(8);
    set(&mut g, "prompt", "positive", json!(long));
    let r = run(&mut engine, &g, &["candidates"]);
    assert!(r.completed(), "{:?}", r.failures);
    let notes = r.notes_of("candidates").join(" | ");
    assert!(notes.contains("the prompt is") && notes.contains("that fit: the end was cut off"), "{notes}");
}

#[test]
fn wrong_model_files_say_what_they_are() {
    let mut engine = engine();
    let mut g = demo();
    // A UNet where ImageReward belongs.
    set(&mut g, "reward", "path", json!("sd15-tiny/unet/diffusion_pytorch_model.safetensors"));
    let r = run(&mut engine, &g, &["selector"]);
    let msg = &r.failures["reward"];
    assert!(msg.contains("diffusion_pytorch_model.safetensors") && msg.contains("not an ImageReward model"), "{msg}");
    assert!(r.skipped.contains_key("selector"), "{:?}", r.skipped);

    // The motion module's version is checked when one is chosen.
    let mut g = demo();
    set(&mut g, "motion", "version", json!("v3"));
    let r = run(&mut engine, &g, &["motion"]);
    let msg = &r.failures["motion"];
    assert!(msg.contains("version") && msg.contains("v3 was chosen") && msg.contains("v2"), "{msg}");

    // A folder that is not a Stable Diffusion model.
    let mut g = demo();
    set(&mut g, "checkpoint", "path", json!("ImageReward-tiny"));
    let r = run(&mut engine, &g, &["checkpoint"]);
    assert!(r.failures["checkpoint"].contains("missing unet/"), "{:?}", r.failures);
}

#[test]
fn anchor_from_an_image_file() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("anchor.png");
    image::RgbImage::from_fn(64, 64, |x, y| image::Rgb([(x * 4) as u8, (y * 4) as u8, 128])).save(&good).unwrap();
    let odd = dir.path().join("odd.png");
    image::RgbImage::from_pixel(64, 60, image::Rgb([9, 9, 9])).save(&odd).unwrap();
    let text = dir.path().join("notes.png");
    std::fs::write(&text, "not an image").unwrap();

    let mut g = demo();
    let registry = stepstone::nodes::registry();
    g.insert_node("image", Node::new("load_image").with_param("path", good.to_str().unwrap()));
    g.disconnect(&PortRef::new("animator", "anchor"));
    g.connect(&registry, PortRef::new("image", "image"), PortRef::new("animator", "anchor")).unwrap();
    let mut engine = engine();
    let r = run(&mut engine, &g, &["animator"]);
    assert!(r.completed(), "{:?}", r.failures);
    assert!(!r.evaluated.contains(&"candidates".to_string()), "the candidates are not needed: {:?}", r.evaluated);
    let video = r.output::<Video>("animator", "video");
    assert_eq!((video.frames.len(), video.frames[0].dimensions()), (4, (64, 64)));

    set(&mut g, "image", "path", json!(odd.to_str().unwrap()));
    let r = run(&mut engine, &g, &["animator"]);
    let msg = &r.failures["animator"];
    assert!(msg.contains("64x60") && msg.contains("multiples of 8"), "{msg}");

    set(&mut g, "image", "path", json!(text.to_str().unwrap()));
    let r = run(&mut engine, &g, &["animator"]);
    assert!(
        r.failures["image"].contains("notes.png") && r.failures["image"].contains("not a readable image"),
        "{:?}",
        r.failures
    );
}

#[test]
fn progress_per_step_and_cancellation_within_a_stage() {
    let mut engine = engine();
    let g = demo();
    let stop = std::cell::Cell::new(false);
    let mut steps: Vec<(u64, u64)> = Vec::new();
    let outcome = engine.run(
        &g,
        &["animator".to_string()],
        1,
        &mut |event| {
            if let Event::Progress { node, step, total, .. } = event
                && node == "candidates"
            {
                steps.push((step, total));
                if step == 2 {
                    stop.set(true);
                }
            }
        },
        &|| stop.get(),
    );
    assert_eq!(outcome, RunOutcome::Cancelled);
    assert_eq!(steps, [(1, 4), (2, 4)], "one progress event per DDIM step, and no step after the cancel");
    let plan = engine.plan(&g, &["animator".to_string()]).unwrap();
    assert_eq!(plan.status("candidates"), Some(&NodeStatus::Stale), "a cancelled node leaves no result");
    assert_eq!(plan.status("checkpoint"), Some(&NodeStatus::Cached), "the loaded model survives the cancel");

    // Running again finishes, with the per-iteration progress of NI-VSDS: floor(4 * 0.6) + 1 = 3 iterations.
    let mut animator_steps = Vec::new();
    let outcome = engine.run(
        &g,
        &["animator".to_string()],
        2,
        &mut |event| {
            if let Event::Progress { node, step, total, .. } = event
                && node == "animator"
            {
                animator_steps.push((step, total));
            }
        },
        &|| false,
    );
    assert_eq!(outcome, RunOutcome::Completed);
    assert_eq!(animator_steps, [(1, 3), (2, 3), (3, 3)]);
}

#[test]
fn text_to_video_baseline_runs_on_the_same_models() {
    let mut g = demo();
    let registry = stepstone::nodes::registry();
    g.insert_node(
        "t2v",
        Node::new("text_to_video")
            .with_param("frames", 4)
            .with_param("width", 64)
            .with_param("height", 64)
            .with_param("steps", 3),
    );
    for (from, to) in
        [("checkpoint.model", "t2v.model"), ("motion.motion", "t2v.motion"), ("prompt.prompt", "t2v.prompt")]
    {
        g.connect(&registry, PortRef::parse(from).unwrap(), PortRef::parse(to).unwrap()).unwrap();
    }
    let mut engine = engine();
    let r = run(&mut engine, &g, &["t2v"]);
    assert!(r.completed(), "{:?}", r.failures);
    let video = r.output::<Video>("t2v", "video");
    assert_eq!((video.frames.len(), video.frames[0].dimensions()), (4, (64, 64)));
    let latents = video.latents.as_ref().unwrap();
    assert_eq!(latents.shape, [1, 4, 4, 8, 8]);
    set(&mut g, "t2v", "frames", json!(33));
    let r = run(&mut engine, &g, &["t2v"]);
    assert!(r.failures["t2v"].contains("33 frames"), "{:?}", r.failures);
}

#[test]
fn export_node_reports_each_frame_and_a_cancel_leaves_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut g = demo();
    // Export paths resolve inside the output folder.
    set(&mut g, "export", "path", json!("clip-{seed}.webm"));
    let mut engine = engine();
    let mut access = engine.access().clone();
    access.output_dir = dir.path().to_path_buf();
    engine.set_access(access);
    let stop = std::cell::Cell::new(false);
    let mut frames = Vec::new();
    let outcome = engine.run(
        &g,
        &["export".to_string()],
        1,
        &mut |event| {
            if let Event::Progress { node, step, total, .. } = event
                && node == "export"
            {
                frames.push((step, total));
                stop.set(step == 2);
            }
        },
        &|| stop.get(),
    );
    assert_eq!(outcome, RunOutcome::Cancelled);
    assert_eq!(frames, [(1, 4), (2, 4)], "one progress event per encoded frame");
    assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none(), "a cancelled export leaves no file");

    let r = run(&mut engine, &g, &["export"]);
    assert!(r.completed(), "{:?}", r.failures);
    assert_eq!(r.evaluated, ["export"], "only the export runs again");
    let written = dir.path().join("clip-42.webm");
    assert_eq!(stepstone::video::encode::decode(&written).unwrap().frames.len(), 4);
    let graph = stepstone::video::encode::embedded_graph(&written).unwrap().unwrap();
    assert_eq!(graph, stepstone::graph::to_preset_string(&g), "the clip carries the graph as run");
}

/// A setting that cannot fit the memory limit is refused before any work, naming the estimate and the
/// settings that would fit; the worker's model and result caches survive, and the same graph runs once
/// the limit allows it. Sequential guidance needs less and gives the clip that batched guidance gives.
#[test]
fn a_setting_that_cannot_fit_is_refused_with_what_to_lower_and_loses_nothing() {
    use stepstone::models::stable_diffusion::StableDiffusion;
    use stepstone::models::unet::VideoUnet;
    use stepstone::models::unet::motion::MotionAdapter;
    use stepstone::nodes::Loaded;
    use stepstone::pipelines::memory::{CfgBatch, StageShape, stage_estimate};

    let mut engine = engine();
    let mut g = demo();
    set(&mut g, "animator", "frames", json!(32));
    let base = run(&mut engine, &g, &["selector", "checkpoint", "motion"]);
    assert!(base.completed(), "{:?}", base.failures);
    let checkpoint = base.output::<Loaded<StableDiffusion>>("checkpoint", "model");
    let motion = base.output::<Loaded<MotionAdapter>>("motion", "motion");
    let unet = VideoUnet::new(checkpoint.model.unet.clone(), Some(motion.model.as_ref().clone())).unwrap();
    let shape = |frames, cfg_batch| StageShape { clips: 1, frames, height: 8, width: 8, cfg_batch };
    let estimate = |frames, cfg| stage_estimate(&unet, &checkpoint.model.vae, shape(frames, cfg), true);
    let (together, sequential) = (estimate(32, CfgBatch::Together), estimate(32, CfgBatch::Sequential));
    assert!(sequential.activations < together.activations, "{sequential:?} vs {together:?}");
    assert!(estimate(8, CfgBatch::Together).activations < together.activations);

    // Nothing fits in one byte: refused inside the animator before any step, with no advice to give.
    engine.set_memory_limit(Some(1));
    let r = run(&mut engine, &g, &["animator"]);
    let msg = &r.failures["animator"];
    assert!(msg.contains("not enough memory") && msg.contains("32 image(s) of 64x64 pixels"), "{msg}");
    assert!(msg.contains("with cfg_batch together") && msg.contains("(--memory-limit)"), "{msg}");
    assert!(msg.contains("no smaller setting"), "{msg}");
    assert!(r.evaluated.is_empty(), "the models, candidates and scores came from the caches: {:?}", r.evaluated);

    // Between the two: refused, naming fewer frames and sequential guidance as what fits.
    engine.set_memory_limit(Some(together.weights + (together.activations + sequential.activations) / 2));
    let r = run(&mut engine, &g, &["animator"]);
    let msg = &r.failures["animator"];
    assert!(msg.contains("lower one of: frames ") && msg.contains("cfg_batch sequential (about"), "{msg}");
    set(&mut g, "animator", "cfg_batch", json!("sequential"));
    let seq = run(&mut engine, &g, &["animator"]);
    assert!(seq.completed(), "{:?}", seq.failures);
    assert_eq!(seq.evaluated, ["animator"], "the caches survived the refusals");

    // No limit: together runs, and its clip equals the sequential one within float noise.
    engine.set_memory_limit(None);
    set(&mut g, "animator", "cfg_batch", json!("together"));
    let tog = run(&mut engine, &g, &["animator"]);
    assert!(tog.completed(), "{:?}", tog.failures);
    let (a, b) = (tog.output::<Video>("animator", "video"), seq.output::<Video>("animator", "video"));
    let (a, b) = (a.latents.as_ref().unwrap(), b.latents.as_ref().unwrap());
    assert_eq!(a.shape, b.shape);
    assert!(a.is_finite() && b.is_finite(), "both clips are finite numbers");
    let diff = a.data.iter().zip(b.data.iter()).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    assert!(diff < 1e-4, "sequential and together guidance differ by {diff}");
}

/// The TI2V-Zero preset on the demo models, cheaper: the I4VGen anchor animated by TI2V-Zero. The clip
/// starts with the anchor itself and has one frame per new frame after it; the latents travel with it (a
/// regenerator could continue); an edit to the TI2V-Zero node re-runs it and what is below, nothing above.
#[test]
fn ti2v_zero_animates_the_anchor_and_reruns_alone() {
    let mut engine = engine();
    let mut g = load_preset(&repo("graphs/ti2v_zero_animatediff.json")).unwrap();
    for (node, param, value) in [
        ("candidates", "count", json!(2)),
        ("candidates", "steps", json!(2)),
        ("animator", "frames", json!(3)),
        ("animator", "new_frames", json!(2)),
        ("animator", "steps", json!(2)),
        ("animator", "resample", json!(1)),
    ] {
        set(&mut g, node, param, value);
    }
    let first = run(&mut engine, &g, &["preview"]);
    assert!(first.completed(), "{:?} {:?}", first.failures, first.skipped);
    let video = first.output::<Video>("animator", "video");
    assert_eq!(video.frames.len(), 3, "the image and two new frames");
    let anchor = first.output::<StillImage>("selector", "anchor");
    assert_eq!(video.frames[0], *anchor.image, "the clip starts with the anchor");
    assert_ne!(video.frames[1], video.frames[0], "a new frame was made");
    let latents = video.latents.as_ref().expect("the clip keeps its latents");
    assert_eq!(latents.shape[2], 3);
    assert!(latents.is_finite());

    set(&mut g, "animator", "resample", json!(2));
    let second = run(&mut engine, &g, &["preview"]);
    assert!(second.completed(), "{:?}", second.failures);
    assert_eq!(sorted(&second.evaluated), ["animator", "preview"]);
    assert_ne!(second.output::<Video>("animator", "video").frames[1], video.frames[1], "resampling changed the frame");
}

/// The nodes on any video model: ModelScope T2V runs through T2V Sampler and TI2V-Zero Animator (the
/// ModelScope preset, cheaper), and both refuse a setting that cannot fit before any step, whatever the
/// family, keeping the caches.
#[test]
fn video_model_nodes_run_on_modelscope_and_refuse_what_cannot_fit() {
    let mut engine = engine();
    let mut g = load_preset(&repo("graphs/modelscope_t2v_demo.json")).unwrap();
    set(&mut g, "sampler", "frames", json!(3));
    set(&mut g, "sampler", "steps", json!(2));
    let r = run(&mut engine, &g, &["preview"]);
    assert!(r.completed(), "{:?}", r.failures);
    let video = r.output::<Video>("sampler", "video");
    assert_eq!(video.frames.len(), 3);
    assert_eq!(video.frames[0].dimensions(), (64, 64));
    assert!(video.latents.as_ref().is_some_and(|l| l.is_finite()));

    engine.set_memory_limit(Some(1));
    set(&mut g, "sampler", "seed", json!(7));
    let r = run(&mut engine, &g, &["sampler"]);
    let msg = &r.failures["sampler"];
    assert!(msg.contains("not enough memory") && msg.contains("3 image(s) of 64x64 pixels"), "{msg}");
    assert!(r.evaluated.is_empty() || r.evaluated == ["sampler"], "{:?}", r.evaluated);

    // TI2V-Zero on AnimateDiff: the anchor and the video model first, then the animator under the limit.
    engine.set_memory_limit(None);
    let mut t = load_preset(&repo("graphs/ti2v_zero_animatediff.json")).unwrap();
    set(&mut t, "candidates", "count", json!(2));
    set(&mut t, "candidates", "steps", json!(2));
    let up = run(&mut engine, &t, &["selector", "video_model"]);
    assert!(up.completed(), "{:?}", up.failures);
    engine.set_memory_limit(Some(1));
    let r = run(&mut engine, &t, &["animator"]);
    let msg = &r.failures["animator"];
    assert!(msg.contains("not enough memory") && msg.contains("8 image(s) of 64x64 pixels"), "{msg}");
    assert!(r.evaluated.is_empty(), "the anchor and the model came from the caches: {:?}", r.evaluated);
    engine.set_memory_limit(None);
}

/// Results that survive a restart: a second engine on the same cache folder (a new process, as far as the
/// caches go) plans every data node as cached and runs only the output node, with the same clip; a damaged
/// entry is ignored with a log line and its node runs again, giving the same result.
#[test]
fn results_survive_a_restart_and_damaged_entries_are_ignored() {
    use stepstone::runtime::disk_cache::{DEFAULT_LIMIT_BYTES, DiskCache};

    let dir = tempfile::tempdir().unwrap();
    let disk = || DiskCache::open(dir.path(), DEFAULT_LIMIT_BYTES).unwrap();
    let g = demo();
    let mut first = engine().with_disk_cache(disk());
    let a = run(&mut first, &g, &["preview"]);
    assert!(a.completed(), "{:?}", a.failures);
    let clip = a.output::<Video>("regenerator", "video").frames.clone();
    assert!(disk().info().entries >= 5, "the data results are on disk: {:?}", disk().info());
    drop(first);

    let mut second = engine().with_disk_cache(disk());
    let plan = second.plan(&g, &["preview".to_string()]).unwrap();
    assert_eq!(plan.stale(), ["preview"], "everything but the output node is cached: {:?}", plan.cached());
    let b = run(&mut second, &g, &["preview"]);
    assert!(b.completed(), "{:?}", b.failures);
    assert_eq!(b.evaluated, ["preview"]);
    assert_eq!(b.output::<Video>("regenerator", "video").frames, clip, "the same clip, read back");

    // Damage every entry on disk: a third engine trusts none of them, says so, and runs everything again.
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() / 3]).unwrap();
    }
    let mut third = engine().with_disk_cache(disk());
    let c = run(&mut third, &g, &["preview"]);
    assert!(c.completed(), "{:?}", c.failures);
    assert!(c.evaluated.contains(&"regenerator".to_string()), "{:?}", c.evaluated);
    let logged: Vec<&str> = c.notes_of("(worker)");
    assert!(logged.iter().any(|t| t.contains("result cache: ignored")), "{logged:?}");
    assert_eq!(c.output::<Video>("regenerator", "video").frames, clip, "recomputed, the same clip");
}

/// Clearing the engine's cache (the editor's "Clear cached results") empties the disk side too.
#[test]
fn clearing_the_cache_clears_the_disk_too() {
    use stepstone::runtime::disk_cache::{DEFAULT_LIMIT_BYTES, DiskCache};

    let dir = tempfile::tempdir().unwrap();
    let mut engine = engine().with_disk_cache(DiskCache::open(dir.path(), DEFAULT_LIMIT_BYTES).unwrap());
    let mut g = demo();
    set(&mut g, "candidates", "count", json!(2));
    let r = run(&mut engine, &g, &["selector"]);
    assert!(r.completed(), "{:?}", r.failures);
    assert!(DiskCache::open(dir.path(), DEFAULT_LIMIT_BYTES).unwrap().info().entries >= 2);
    engine.clear_cache(false);
    assert_eq!(DiskCache::open(dir.path(), DEFAULT_LIMIT_BYTES).unwrap().info().entries, 0);
    let again = run(&mut engine, &g, &["selector"]);
    assert!(again.evaluated.contains(&"candidates".to_string()), "{:?}", again.evaluated);
}

/// Live previews: with them on, every sampling step of the candidates, NI-VSDS and regeneration shows its
/// latents projected to colour (images of one frame per candidate, clips of the animated frames, at latent
/// size); with them off there are none; the results are the same either way.
#[test]
fn live_previews_show_every_sampling_step_and_change_no_result() {
    use stepstone::values::Value;
    let g = demo();
    let mut off = engine();
    let plain = run(&mut off, &g, &["regenerator"]);
    assert!(plain.completed(), "{:?}", plain.failures);
    assert!(!plain.previews.iter().any(|(_, label, _)| label == stepstone::runtime::LIVE_PREVIEW), "off by default");
    let mut on = engine();
    on.set_live_previews(1);
    let live = run(&mut on, &g, &["regenerator"]);
    assert!(live.completed(), "{:?}", live.failures);
    let of = |node: &str| -> Vec<&Value> {
        live.previews
            .iter()
            .filter(|(n, l, _)| n == node && l == stepstone::runtime::LIVE_PREVIEW)
            .map(|(_, _, v)| v)
            .collect()
    };
    let width = g.nodes["candidates"].params["width"].as_u64().unwrap() as u32;
    let candidates = of("candidates");
    assert_eq!(candidates.len(), 4, "one per DDIM step");
    for value in &candidates {
        let Value::Images(images) = value else { panic!("candidates preview as images") };
        assert_eq!(images.len(), 4, "one per candidate");
        assert_eq!(images[0].width(), width / 8, "at latent size");
    }
    let animator = of("animator");
    let iterations = stepstone::pipelines::i4vgen::ni_vsds_iterations(4, 0.6);
    assert_eq!(animator.len(), iterations, "one per NI-VSDS iteration");
    let Value::Video(clip) = animator[0] else { panic!("the animator previews a clip") };
    assert_eq!(clip.frames.len(), 4);
    assert!(!of("regenerator").is_empty());
    // The last NI-VSDS preview is the animated latents themselves, projected.
    let latents =
        live.output::<Video>("animator", "video").latents.clone().unwrap().to_tensor(&burn::tensor::Device::flex());
    let projected = stepstone::pipelines::preview::latent_rgb(&latents).unwrap();
    let Value::Video(last) = animator[iterations - 1] else { panic!() };
    assert_eq!(last.frames, projected, "the preview is the projection of the step's latents");
    assert_eq!(
        plain.output::<Candidates>("candidates", "candidates").latents,
        live.output::<Candidates>("candidates", "candidates").latents
    );
    assert_eq!(
        plain.output::<Video>("regenerator", "video").frames,
        live.output::<Video>("regenerator", "video").frames,
        "previews change no result"
    );
}
