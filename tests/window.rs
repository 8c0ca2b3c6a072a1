//! The real editor window under a virtual X display (xvfb-run, installed by tools/setup.sh): it starts on
//! wgpu (Mesa's software Vulkan without a GPU), opens the graph embedded in an exported clip, runs it on the
//! background worker with the demo models (the export node writes a new clip), and saves a screenshot that
//! is checked to show a drawn window, not a blank one. With `--device wgpu` the models run on the window's
//! own wgpu device.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::ops::ControlFlow;
use std::path::Path;
use std::process::Command;

use image::{Rgb, RgbImage};
use stepstone::video::Video;
use stepstone::video::encode::{EncodeOptions, export};

#[test]
fn the_window_opens_a_clip_and_draws_its_graph() {
    let dir = tempfile::tempdir().unwrap();
    let preset = small_demo();
    let graph = stepstone::graph::parse_preset(&preset, "small demo").unwrap();
    let clip_path = dir.path().join("fox.mp4");
    let frames =
        (0..3).map(|i| RgbImage::from_fn(32, 32, |x, y| Rgb([(x * 8) as u8, (y * 8) as u8, i * 80]))).collect();
    let clip = Video { frames, fps: 8.0, prompt: "fox".into(), seed: 42, latents: None };
    let options = EncodeOptions { graph: Some(preset.clone()), preset: "veryfast".into(), ..EncodeOptions::default() };
    export(&clip, &clip_path, &options, &mut |_, _| ControlFlow::Continue(())).unwrap();

    let shot = dir.path().join("window.png");
    let stderr = run_editor(dir.path(), &clip_path, &[], &shot);
    let opened = format!("opened the graph embedded in {} (10 nodes, 14 links)", clip_path.display());
    assert!(stderr.contains(&opened), "expected '{opened}' in the log:\n{stderr}");
    assert!(stderr.contains("has the highest ImageReward score"), "the selector ran:\n{stderr}");
    assert!(stderr.contains("run finished") && !stderr.contains("ERROR"), "{stderr}");
    // The export node wrote a clip (inside the output folder, ./out by default), and the graph it
    // carries is the one opened from the first clip.
    let written = dir.path().join("out/i4vgen-demo-42.mp4");
    let decoded = stepstone::video::encode::decode(&written).unwrap();
    assert_eq!((decoded.frames.len(), decoded.width, decoded.height), (4, 64, 64));
    assert_eq!(stepstone::open::open_graph(&written).unwrap(), graph);

    assert_drawn(&shot);
}

/// The editor on `--device wgpu` (Mesa's software Vulkan here) draws the window and runs the models on one
/// wgpu device: eframe's, handed to burn.
#[test]
fn on_wgpu_the_window_and_the_models_share_one_device() {
    let dir = tempfile::tempdir().unwrap();
    let preset = dir.path().join("small.json");
    std::fs::write(&preset, small_demo()).unwrap();
    let shot = dir.path().join("window.png");
    let stderr = run_editor(dir.path(), &preset, &["--device", "wgpu"], &shot);
    assert!(stderr.contains("the window and the models share one wgpu device"), "{stderr}");
    assert!(!stderr.contains("get a wgpu device of their own"), "{stderr}");
    assert!(stderr.contains("run finished") && !stderr.contains("ERROR"), "{stderr}");
    let written = dir.path().join("out/i4vgen-demo-42.mp4");
    let decoded = stepstone::video::encode::decode(&written).unwrap();
    assert_eq!((decoded.frames.len(), decoded.width, decoded.height), (4, 64, 64));
    // The models drew something: a clip of one flat colour would mean the network output was lost.
    let first = &decoded.frames[0];
    let distinct: std::collections::HashSet<_> = first.pixels().map(|p| p.0).collect();
    assert!(distinct.len() > 50, "the first frame has {} colours", distinct.len());
    assert_drawn(&shot);
}

/// The demo graph, made small so that a run takes seconds.
fn small_demo() -> String {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(repo.join("graphs/i4vgen_demo.json"))
        .unwrap()
        .replace("\"count\": 16", "\"count\": 2")
        .replace("\"steps\": 25", "\"steps\": 2")
        .replace("\"frames\": 16", "\"frames\": 4")
}

/// Runs `stepstone edit FILE --run --screenshot SHOT` with the demo models under a virtual X display in
/// `dir` and returns its log; fails when the editor does.
fn run_editor(dir: &Path, file: &Path, extra: &[&str], shot: &Path) -> String {
    let xvfb = Command::new("sh").args(["-c", "command -v xvfb-run"]).output().unwrap();
    assert!(
        xvfb.status.success(),
        "xvfb-run is missing: run `bash tools/setup.sh` (it installs xvfb) before the tests"
    );
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let output = Command::new("timeout")
        .arg("180")
        .args(["xvfb-run", "-a", "-s", "-screen 0 1600x1000x24"])
        .arg(env!("CARGO_BIN_EXE_stepstone"))
        .arg("edit")
        .arg(file)
        .arg("--models")
        .arg(repo.join("assets/demo-models"))
        .args(extra)
        .arg("--run")
        .arg("--screenshot")
        .arg(shot)
        .current_dir(dir)
        // The editor's result cache in the test's own folder: nothing from other runs is found there.
        .env("STEPSTONE_CACHE_DIR", dir.join("result-cache"))
        // Its autosave and recent files too.
        .env("STEPSTONE_STATE_DIR", dir.join("state"))
        .env("STEPSTONE_LOG", "stepstone=info")
        .env("XDG_RUNTIME_DIR", std::env::var("XDG_RUNTIME_DIR").unwrap_or_else(|_| "/tmp".into()))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "the editor failed ({}):\n{stderr}", output.status);
    stderr
}

/// The screenshot shows a drawn editor: text, pins and wires in many colours over a dark canvas (a blank or
/// single-colour frame has a handful).
fn assert_drawn(shot: &Path) {
    let image = image::open(shot).unwrap().to_rgb8();
    assert!(image.width() >= 640 && image.height() >= 400, "{}x{}", image.width(), image.height());
    let mut colours = std::collections::HashSet::new();
    let mut bright = 0usize;
    for p in image.pixels() {
        colours.insert(p.0);
        if p.0.iter().map(|&c| u32::from(c)).sum::<u32>() > 300 {
            bright += 1;
        }
    }
    assert!(colours.len() > 200, "only {} colours: the window looks blank", colours.len());
    let share = bright as f64 / f64::from(image.width() * image.height());
    assert!((0.002..0.5).contains(&share), "bright pixels {share:.4}: not a dark canvas with drawn nodes");
}
