//! The editor window, driven headless through egui: dropping a clip stepstone exported restores the graph it
//! was made with; dropping a preset opens it; bad files leave the graph being edited untouched and say what is
//! wrong; undo brings back what an open replaced; saving a graph that came from a clip writes a preset, not
//! over the clip.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;

mod common;

use common::ui::{click, raw_input, run_frame, widget};
use image::{Rgb, RgbImage};
use stepstone::graph::{Graph, load_preset, parse_preset, to_preset_string};
use stepstone::ui::Studio;
use stepstone::ui::session::Level;
use stepstone::video::Video;
use stepstone::video::encode::{EncodeOptions, export};

/// A file dropped on the window (what egui-winit hands egui for a native drop).
#[derive(Debug)]
struct Dropped(PathBuf);

impl egui::DroppedFile for Dropped {
    fn path(&self) -> &Path {
        &self.0
    }
    fn bytes(&self) -> Result<Vec<u8>, String> {
        std::fs::read(&self.0).map_err(|e| e.to_string())
    }
}

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn studio() -> Studio {
    Studio::new(stepstone::nodes::registry(), repo("assets/demo-models"))
}

/// One frame of the window, 1280x800, with `dropped` files dropped on it this frame.
fn frame(ctx: &egui::Context, studio: &mut Studio, dropped: &[&Path], time: f64) {
    let raw = egui::RawInput {
        dropped_files: dropped.iter().map(|p| Arc::new(Dropped(p.to_path_buf())) as egui::DroppedFileHandle).collect(),
        ..raw_input(time)
    };
    run_frame(ctx, studio, raw);
}

/// The demo preset with a different prompt and seed (so that it differs from anything shipped).
fn edited_demo() -> (Graph, String) {
    let text = std::fs::read_to_string(repo("graphs/i4vgen_demo.json")).unwrap();
    assert!(text.contains("a red ball"), "the demo preset's prompt changed; change this test with it");
    let text = text.replace("a red ball", r#"a \"paper\" boat — café ✓"#).replace("\"seed\": 42", "\"seed\": 1234");
    let graph = parse_preset(&text, "edited demo").unwrap();
    (graph, text)
}

fn clip() -> Video {
    let frames =
        (0..4).map(|i| RgbImage::from_fn(32, 32, |x, y| Rgb([(x * 8) as u8, (y * 8) as u8, i * 60]))).collect();
    Video { frames, fps: 8.0, prompt: "boat".into(), seed: 1234, latents: None }
}

fn write_clip(path: &Path, graph: Option<String>) {
    let options = EncodeOptions { graph, preset: "veryfast".into(), ..EncodeOptions::default() };
    export(&clip(), path, &options, &mut |_, _| ControlFlow::Continue(())).unwrap();
}

fn last_error(studio: &Studio) -> String {
    let notice = studio.session().log.last().expect("a message");
    assert_eq!(notice.level, Level::Error, "{}", notice.text);
    notice.text.clone()
}

#[test]
fn dropping_an_exported_clip_restores_its_graph_in_every_format() {
    let dir = tempfile::tempdir().unwrap();
    let (graph, text) = edited_demo();
    let ctx = egui::Context::default();
    for name in ["clip.mp4", "clip.webm", "clip.gif", "clip.png", "frames"] {
        let path = dir.path().join(name);
        write_clip(&path, Some(text.clone()));
        let mut studio = studio();
        frame(&ctx, &mut studio, &[], 0.0);
        assert!(studio.graph().nodes.is_empty());
        frame(&ctx, &mut studio, &[&path], 0.1);
        assert_eq!(studio.graph(), graph, "{name}: the graph on the canvas is the one embedded in the clip");
        assert_eq!(to_preset_string(&studio.graph()), to_preset_string(&graph), "{name}");
        assert_eq!(studio.document().snarl.wires().count(), graph.links.len(), "{name}: every link is a wire");
        assert_eq!(studio.opened_from(), Some(path.as_path()), "{name}");
        assert_eq!(studio.path(), None, "{name}: saving must not write over the clip");
        assert!(!studio.is_dirty(), "{name}");
        // A few more frames (layout settles, nothing is committed by drawing alone).
        for t in 1..4 {
            frame(&ctx, &mut studio, &[], 0.1 + f64::from(t));
        }
        assert_eq!(studio.graph(), graph, "{name}: drawing changes nothing");
        assert!(studio.can_undo(), "{name}: the empty graph the drop replaced is one undo away");
    }
}

#[test]
fn bad_drops_name_the_file_and_keep_the_graph() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = egui::Context::default();
    let mut studio = studio();
    let preset = repo("graphs/i4vgen_demo.json");
    frame(&ctx, &mut studio, &[&preset], 0.0);
    let before = load_preset(&preset).unwrap();
    assert_eq!(studio.graph(), before);
    assert_eq!(studio.path(), Some(preset.as_path()), "a preset saves back to itself");

    // A clip exported without a graph.
    let bare = dir.path().join("bare.gif");
    write_clip(&bare, None);
    frame(&ctx, &mut studio, &[&bare], 1.0);
    let e = last_error(&studio);
    assert!(e.contains("bare.gif") && e.contains("carries no stepstone graph"), "{e}");
    assert_eq!(studio.graph(), before);

    // Not a video at all, under a video name; a JSON file that is not a preset; a file with another extension.
    let fake = dir.path().join("fake.mp4");
    std::fs::write(&fake, b"definitely not an MP4").unwrap();
    frame(&ctx, &mut studio, &[&fake], 2.0);
    assert!(last_error(&studio).contains("fake.mp4"));
    let json = dir.path().join("list.json");
    std::fs::write(&json, b"[1, 2, 3]").unwrap();
    frame(&ctx, &mut studio, &[&json], 3.0);
    let e = last_error(&studio);
    assert!(e.contains("list.json") && e.contains("not a stepstone graph"), "{e}");
    let notes = dir.path().join("notes.txt");
    std::fs::write(&notes, b"hello").unwrap();
    frame(&ctx, &mut studio, &[&notes], 4.0);
    assert!(last_error(&studio).contains("notes.txt"));

    assert_eq!(studio.graph(), before, "nothing that failed to open changed the graph");
    assert_eq!(studio.path(), Some(preset.as_path()));
    assert!(!studio.is_dirty());
}

#[test]
fn several_files_dropped_open_the_first_that_opens() {
    let dir = tempfile::tempdir().unwrap();
    let (graph, text) = edited_demo();
    let good = dir.path().join("good.mp4");
    write_clip(&good, Some(text));
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, b"{").unwrap();
    let ctx = egui::Context::default();
    let mut studio = studio();
    frame(&ctx, &mut studio, &[&bad, &good], 0.0);
    assert_eq!(studio.graph(), graph);
    let log: Vec<&str> = studio.session().log.iter().map(|n| n.text.as_str()).collect();
    assert!(log.iter().any(|l| l.contains("2 files were dropped")), "{log:?}");
    assert!(log.iter().any(|l| l.contains("bad.json")), "{log:?}");
}

#[test]
fn undo_brings_back_what_an_open_replaced_and_edits_commit_as_steps() {
    let dir = tempfile::tempdir().unwrap();
    let (graph, text) = edited_demo();
    let clip_path = dir.path().join("boat.gif");
    write_clip(&clip_path, Some(text));
    let preset = repo("graphs/vanilla_animatediff.json");
    let original = load_preset(&preset).unwrap();

    let ctx = egui::Context::default();
    let mut studio = studio();
    frame(&ctx, &mut studio, &[&preset], 0.0);
    // An edit on the canvas: the prompt text of the first prompt node.
    let prompt = studio.document().find("prompt").expect("a prompt node");
    studio.document_mut().snarl[prompt].node.params.insert("positive".into(), "a lighthouse at dusk".into());
    frame(&ctx, &mut studio, &[], 5.0);
    assert!(studio.is_dirty());
    let edited = studio.graph();
    assert_ne!(edited, original);

    frame(&ctx, &mut studio, &[&clip_path], 10.0);
    assert_eq!(studio.graph(), graph);
    studio.undo();
    assert_eq!(studio.graph(), edited, "undo after an open gives back the edited graph, edits included");
    studio.undo();
    assert_eq!(studio.graph(), original);
    studio.redo();
    studio.redo();
    assert_eq!(studio.graph(), graph);
}

#[test]
fn saving_a_graph_from_a_clip_writes_a_preset_that_opens_to_the_same_graph() {
    let dir = tempfile::tempdir().unwrap();
    let (graph, text) = edited_demo();
    let clip_path = dir.path().join("boat.mp4");
    write_clip(&clip_path, Some(text));
    let ctx = egui::Context::default();
    let mut studio = studio();
    frame(&ctx, &mut studio, &[&clip_path], 0.0);
    let clip_bytes = std::fs::read(&clip_path).unwrap();

    assert!(studio.save_as(&dir.path().join("boat")));
    let saved = dir.path().join("boat.json");
    assert_eq!(studio.path(), Some(saved.as_path()), "the extension is added");
    assert_eq!(std::fs::read_to_string(&saved).unwrap(), to_preset_string(&graph));
    assert_eq!(std::fs::read(&clip_path).unwrap(), clip_bytes, "the clip is untouched");
    assert!(!studio.is_dirty());

    // Saving into a folder that cannot exist fails with the path named; the graph stays, still unsaved there.
    let blocker = dir.path().join("file");
    std::fs::write(&blocker, b"x").unwrap();
    assert!(!studio.save_as(&blocker.join("sub/boat.json")));
    let e = last_error(&studio);
    assert!(e.contains("sub/boat.json") || e.contains("sub"), "{e}");
    assert_eq!(studio.graph(), graph);
    assert_eq!(studio.path(), Some(saved.as_path()));
}

/// A frame in which the window manager asks the window to close; whether the editor held the close back.
fn close_held_back(ctx: &egui::Context, studio: &mut Studio, time: f64) -> bool {
    let mut raw = raw_input(time);
    raw.viewports.entry(egui::ViewportId::ROOT).or_default().events.push(egui::ViewportEvent::Close);
    let output = run_frame(ctx, studio, raw);
    output
        .viewport_output
        .get(&egui::ViewportId::ROOT)
        .is_some_and(|v| v.commands.iter().any(|c| matches!(c, egui::ViewportCommand::CancelClose)))
}

#[test]
fn closing_with_unsaved_changes_asks_first() {
    let ctx = egui::Context::default();
    let mut studio = studio();
    let preset = repo("graphs/i4vgen_demo.json");
    frame(&ctx, &mut studio, &[&preset], 0.0);
    assert!(!close_held_back(&ctx, &mut studio, 1.0), "nothing unsaved: the window closes");

    let mut studio = self::studio();
    frame(&ctx, &mut studio, &[&preset], 2.0);
    let node = studio.document().find("candidates").unwrap();
    studio.document_mut().snarl[node].node.params.insert("count".into(), 4.into());
    frame(&ctx, &mut studio, &[], 3.0);
    assert!(studio.is_dirty());
    assert!(close_held_back(&ctx, &mut studio, 4.0), "unsaved changes: the close waits for the artist");
    assert_eq!(studio.graph().nodes["candidates"].params["count"], 4, "and the edit is still there");
}

#[test]
fn clicking_a_ranked_candidate_picks_it_as_the_anchor_and_undo_takes_it_back() {
    use stepstone::nodes::values::{Ranking, SelectedBy};
    use stepstone::runtime::events::Event;

    let ctx = egui::Context::default();
    ctx.enable_accesskit();
    let mut studio = studio();
    let preset = repo("graphs/i4vgen_demo.json");
    frame(&ctx, &mut studio, &[&preset], 0.0);
    let before = studio.graph();
    assert_eq!(before.nodes["selector"].params["mode"], "reward");
    // What the worker sends when the selector has run: four candidates, scored, the best (1) selected.
    let images = (0..4u8).map(|i| Arc::new(RgbImage::from_pixel(16, 16, Rgb([i * 60, 100, 200])))).collect();
    let ranking = Ranking { images, scores: Some(vec![0.1, 0.9, -0.3, 0.4]), selected: 1, by: SelectedBy::Reward };
    studio.session_mut().apply(Event::Preview {
        run_id: 1,
        node: "selector".into(),
        label: "ranking".into(),
        value: stepstone::values::Value::Ranking(Arc::new(ranking)),
    });
    let mut output = None;
    for t in 1..6 {
        output = Some(run_frame(&ctx, &mut studio, raw_input(f64::from(t))));
    }
    let target = widget(output.as_ref().unwrap(), "candidate 2").expect("the ranking shows candidate 2");
    run_frame(&ctx, &mut studio, click(target, 6.0));
    run_frame(&ctx, &mut studio, raw_input(7.0));
    let picked = studio.graph();
    assert_eq!(picked.nodes["selector"].params["mode"], "manual");
    assert_eq!(picked.nodes["selector"].params["index"], 2);
    assert!(studio.is_dirty());
    studio.undo();
    assert_eq!(studio.graph(), before, "the pick is one undo step");
}

#[test]
fn extreme_positions_from_a_file_are_drawn_without_panicking_and_kept() {
    // Issue 11, defect 7: a node position of [1e308, -1e308] panicked egui ("Negative desired size").
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(repo("graphs/i4vgen_demo.json"))
        .unwrap()
        .replacen("1000.0,\n        40.0", "1e308,\n        -1e308", 1)
        .replacen("360.0,\n        40.0", "-1.7976931348623157e308,\n        5e-324", 1);
    assert!(text.contains("1e308"), "the preset's layout changed: update the replaced positions");
    let path = dir.path().join("far.json");
    std::fs::write(&path, &text).unwrap();
    let mut studio = studio();
    assert!(studio.open(&path));
    let ctx = egui::Context::default();
    for i in 0..6 {
        frame(&ctx, &mut studio, &[], i as f64 * 0.1);
    }
    // Drawn, and the positions the file holds are saved back as they were.
    assert_eq!(studio.graph(), load_preset(&path).unwrap());
    assert_eq!(to_preset_string(&studio.graph()), to_preset_string(&parse_preset(&text, "far").unwrap()));
}

#[test]
fn a_graph_from_a_file_lists_its_files_before_its_first_run() {
    // Issue 11: the editor shows what a graph from a clip reads and writes before its first run, and a run
    // waits for the artist's yes.
    let dir = tempfile::tempdir().unwrap();
    let (_, text) = edited_demo();
    let text = text.replace("\"path\": \"i4vgen-demo-{seed}.mp4\"", "\"path\": \"/tmp/elsewhere.mp4\"");
    let clip = dir.path().join("shared.mp4");
    write_clip(&clip, Some(text));
    let mut studio = studio();
    assert!(studio.open(&clip));
    studio.run(Vec::new());
    let files = studio.pending_confirmation().expect("the run waits for a confirmation").to_vec();
    let lines: Vec<String> = files.iter().map(|f| f.to_string()).collect();
    assert!(lines.iter().any(|l| l.starts_with("reads model") && l.contains("sd15-tiny")), "{lines:?}");
    let export = files.iter().find(|f| f.node == "export").expect("the export is listed");
    assert!(matches!(export.verdict, stepstone::graph::Verdict::Refused(_)), "{export}");
    // Drawing the dialog does not start anything; confirming lets the graph read its inputs.
    let ctx = egui::Context::default();
    frame(&ctx, &mut studio, &[], 0.0);
    assert!(studio.pending_confirmation().is_some());
    assert!(!studio.access().allow_inputs);
    studio.confirm_files();
    assert!(studio.pending_confirmation().is_none() && studio.access().allow_inputs);
    // A new graph (the artist's own) runs without asking; opening another file asks again.
    studio.new_graph();
    studio.run(Vec::new());
    assert!(studio.pending_confirmation().is_none());
    assert!(studio.open(&clip));
    assert!(!studio.access().allow_inputs);
    studio.run(Vec::new());
    assert!(studio.pending_confirmation().is_some());
}

#[test]
fn running_a_shared_clip_in_the_editor_never_empties_a_folder() {
    // Issue 11, defect 1 through the editor (`stepstone edit CLIP --run`): a clip whose export path is `.` or
    // `..`, with overwrite on, emptied the working folder or its parent.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("keep.txt"), b"mine").unwrap();
    std::fs::write(dir.path().join("also-mine.txt"), b"mine").unwrap();
    for path in [".", ".."] {
        let (_, text) = edited_demo();
        let text = text
            .replace("\"path\": \"i4vgen-demo-{seed}.mp4\"", &format!("\"path\": {path:?}"))
            .replace("\"count\": 16", "\"count\": 1")
            .replace("\"steps\": 25", "\"steps\": 1");
        let clip = dir.path().join(format!("shared-{}.gif", path.len()));
        write_clip(&clip, Some(text));
        let engine = stepstone::builtin_engine(repo("assets/demo-models"));
        let worker = stepstone::runtime::Worker::spawn(move || engine, None).unwrap();
        let mut studio = studio().with_output_dir(out.clone()).with_worker(worker);
        assert!(studio.open(&clip));
        studio.accept_outputs_only();
        studio.run(Vec::new());
        let start = std::time::Instant::now();
        while studio.session().last_outcome.is_none() && start.elapsed() < std::time::Duration::from_secs(120) {
            studio.poll_worker();
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let export = studio.session().node("export").and_then(|n| n.activity.clone());
        let Some(stepstone::ui::session::Activity::Skipped { reason }) = export else {
            panic!("{path}: the export must be refused, got {export:?}");
        };
        assert!(
            reason.contains("names the output folder") || reason.contains("only inside the output folder"),
            "{reason}"
        );
        assert_eq!(std::fs::read(out.join("keep.txt")).unwrap(), b"mine", "{path}");
        assert_eq!(std::fs::read(dir.path().join("also-mine.txt")).unwrap(), b"mine", "{path}");
        assert!(clip.is_file());
    }
}

#[test]
fn the_output_folder_setting_decides_where_exports_go() {
    let dir = tempfile::tempdir().unwrap();
    let mut studio = studio();
    assert!(studio.open(&repo("graphs/i4vgen_demo.json")));
    studio.set_output_dir(dir.path().join("renders"));
    studio.run(Vec::new());
    let files = studio.pending_confirmation().expect("a preset from a file asks first").to_vec();
    let export = files.iter().find(|f| f.node == "export").expect("the export is listed");
    assert_eq!(export.path, dir.path().join("renders").join("i4vgen-demo-{seed}.mp4"));
    assert_eq!(export.verdict, stepstone::graph::Verdict::Allowed);
}
