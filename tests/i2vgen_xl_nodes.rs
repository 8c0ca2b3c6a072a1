//! The I2VGen-XL nodes on the bundled demo models (assets/demo-models/i2vgen-xl-tiny: random weights in the
//! real folder layout) through the engine: the presets run, the anchor pick re-runs only the image-to-video
//! branch, bad settings and wrong folders are named and lose nothing, and a cancel stops within a step.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::engine::{engine, repo, run, set, sorted};
use serde_json::json;
use stepstone::graph::{Graph, load_preset};
use stepstone::runtime::{Event, NodeStatus, RunOutcome};
use stepstone::video::Video;

/// A preset made cheaper for tests: fewer frames, steps and candidates.
fn cheap(name: &str) -> Graph {
    let mut g = load_preset(&repo(&format!("graphs/{name}"))).unwrap();
    let registry = stepstone::nodes::registry();
    let edits: &[(&str, &str, serde_json::Value)] = &[
        ("animator", "frames", json!(4)),
        ("animator", "steps", json!(3)),
        ("i2vgen_xl", "frames", json!(4)),
        ("i2vgen_xl", "steps", json!(2)),
        ("candidates", "count", json!(3)),
        ("candidates", "steps", json!(2)),
        ("ni_vsds", "frames", json!(4)),
        ("ni_vsds", "steps", json!(2)),
        ("regenerator", "steps", json!(2)),
        ("ti2v_zero", "frames", json!(3)),
        ("ti2v_zero", "new_frames", json!(3)),
        ("ti2v_zero", "steps", json!(2)),
    ];
    for (node, param, value) in edits {
        if g.nodes.get(*node).is_some_and(|n| registry.get(&n.kind).is_some_and(|k| k.param(param).is_some())) {
            set(&mut g, node, param, value.clone());
        }
    }
    g
}

#[test]
fn i2vgen_xl_preset_animates_the_loaded_image() {
    let mut engine = engine();
    let mut g = cheap("i2vgen_xl.json");
    // The preset names the bundled picture relative to the repository (the tests run there).
    set(&mut g, "image", "path", json!(repo("assets/demo-images/dawn.png").to_str().unwrap()));
    let r = run(&mut engine, &g, &["preview"]);
    assert!(r.completed(), "{:?}", r.failures);
    let video = r.output::<Video>("animator", "video");
    assert_eq!(video.frames.len(), 4);
    assert_eq!(video.frames[0].dimensions(), (96, 64), "the preset's size, not the picture's (160x96)");
    assert_eq!(video.fps, 16.0, "played at the rate it was conditioned on");
    let latents = video.latents.as_ref().unwrap();
    assert_eq!(latents.shape, [1, 4, 4, 8, 12]);
    assert!(latents.is_finite());
    assert!(r.notes_of("model").iter().any(|n| n.contains("multiples of 16")), "{:?}", r.notes);

    // Another frame rate is another conditioning: only the animator and the preview run again.
    set(&mut g, "animator", "fps", json!(8.0));
    let again = run(&mut engine, &g, &["preview"]);
    assert!(again.completed(), "{:?}", again.failures);
    assert_eq!(sorted(&again.evaluated), ["animator", "preview"]);
    assert_ne!(again.output::<Video>("animator", "video").frames, video.frames, "the fps condition matters");

    // VGen's doubled image concatenation is another clip from the same weights.
    set(&mut g, "animator", "image_concat", json!("vgen"));
    let vgen = run(&mut engine, &g, &["animator"]);
    assert!(vgen.completed(), "{:?}", vgen.failures);
    assert_eq!(vgen.evaluated, ["animator"]);
    let frames = &vgen.output::<Video>("animator", "video").frames;
    assert_ne!(frames, &again.output::<Video>("animator", "video").frames);
}

/// I4VGen's anchor handed to I2VGen-XL: picking another candidate by hand re-runs the selector and the
/// image-to-video branch only (the candidates and every loaded model come from the caches).
#[test]
fn the_anchor_pick_reruns_only_the_image_to_video_branch() {
    let mut engine = engine();
    let mut g = cheap("i4vgen_i2vgen_xl.json");
    let first = run(&mut engine, &g, &["preview"]);
    assert!(first.completed(), "{:?}", first.failures);
    let video = first.output::<Video>("animator", "video").clone();
    assert_eq!((video.frames.len(), video.frames[0].dimensions()), (4, (64, 64)));

    // Another candidate than the reward's pick (which candidate that is depends on the demo weights).
    let ranking = first.output::<stepstone::values::Ranking>("selector", "ranking");
    let other = (ranking.selected + 1) % ranking.images.len();
    set(&mut g, "selector", "mode", json!("manual"));
    set(&mut g, "selector", "index", json!(other));
    let picked = run(&mut engine, &g, &["preview"]);
    assert!(picked.completed(), "{:?}", picked.failures);
    assert_eq!(sorted(&picked.evaluated), ["animator", "preview", "selector"]);
    assert_ne!(picked.output::<Video>("animator", "video").frames, video.frames, "another anchor, another clip");
}

/// One anchor through NI-VSDS (+ regeneration), TI2V-Zero and I2VGen-XL, each into its own preview.
#[test]
fn compare_animators_runs_all_three_from_one_anchor() {
    let mut engine = engine();
    let g = cheap("compare_animators.json");
    let r = run(&mut engine, &g, &["preview_ni_vsds", "preview_ti2v_zero", "preview_i2vgen_xl"]);
    assert!(r.completed(), "{:?}", r.failures);
    assert_eq!(r.evaluated.iter().filter(|n| *n == "candidates").count(), 1, "one anchor for all three");
    let ni = r.output::<Video>("regenerator", "video");
    let ti = r.output::<Video>("ti2v_zero", "video");
    let i2v = r.output::<Video>("i2vgen_xl", "video");
    assert_eq!((ni.frames.len(), ti.frames.len(), i2v.frames.len()), (4, 4, 4));
    let anchor = r.output::<stepstone::nodes::StillImage>("selector", "anchor");
    assert_eq!(ti.frames[0], *anchor.image, "TI2V-Zero's clip starts with the anchor itself");
    for preview in ["preview_ni_vsds", "preview_ti2v_zero", "preview_i2vgen_xl"] {
        assert!(r.previews.iter().any(|(node, _, _)| node == preview), "{preview} shows its clip");
    }
}

/// A size that is not a multiple of the model's step and a folder of another family are named (parameter,
/// expected vs found, the node that loads it); the cached results survive.
#[test]
fn bad_sizes_and_wrong_folders_are_named_and_lose_nothing() {
    let mut engine = engine();
    let mut g = cheap("i4vgen_i2vgen_xl.json");
    let ok = run(&mut engine, &g, &["animator"]);
    assert!(ok.completed(), "{:?}", ok.failures);

    set(&mut g, "animator", "width", json!(72));
    let r = run(&mut engine, &g, &["animator"]);
    let msg = &r.failures["animator"];
    assert!(msg.contains("width") && msg.contains("72") && msg.contains("multiple of 16"), "{msg}");
    assert!(msg.contains("use 64 or 80"), "{msg}");
    let plan = engine.plan(&g, &["animator".to_string()]).unwrap();
    assert_eq!(plan.status("candidates"), Some(&NodeStatus::Cached), "the candidates survive");

    set(&mut g, "animator", "width", json!(64));
    set(&mut g, "model", "path", json!("modelscope-tiny"));
    let r = run(&mut engine, &g, &["animator"]);
    let msg = &r.failures["model"];
    assert!(msg.contains("modelscope-tiny") && msg.contains("use Load ModelScope T2V"), "{msg}");
    assert!(r.skipped.contains_key("animator"), "{:?}", r.skipped);
}

#[test]
fn progress_per_step_and_a_cancel_within_a_step() {
    let mut engine = engine();
    let g = cheap("i4vgen_i2vgen_xl.json");
    let up = run(&mut engine, &g, &["selector", "model"]);
    assert!(up.completed(), "{:?}", up.failures);
    let stop = std::cell::Cell::new(false);
    let mut steps = Vec::new();
    let outcome = engine.run(
        &g,
        &["animator".to_string()],
        1,
        &mut |event| {
            if let Event::Progress { node, step, total, .. } = event
                && node == "animator"
            {
                steps.push((step, total));
                stop.set(step == 1);
            }
        },
        &|| stop.get(),
    );
    assert_eq!(outcome, RunOutcome::Cancelled);
    assert_eq!(steps, [(1, 3)], "one progress event per DDIM step, none after the cancel");
    let plan = engine.plan(&g, &["animator".to_string()]).unwrap();
    assert_eq!(plan.status("animator"), Some(&NodeStatus::Stale));
    assert_eq!(plan.status("model"), Some(&NodeStatus::Cached), "the loaded model survives the cancel");

    let done = run(&mut engine, &g, &["animator"]);
    assert!(done.completed(), "{:?}", done.failures);
    assert_eq!(done.evaluated, ["animator"]);
}
