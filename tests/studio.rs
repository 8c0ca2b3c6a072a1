//! The artist's studio (issue 14), driven headless through egui and a real worker: results that survive a
//! restart, recovery after a crash, the palette, wiring from a dropped wire, copy and paste, the inspector,
//! pause and resume, the overall progress and its ETA, the clip player.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::ui::{click, labels, raw_input, run_frame, values, widget};
use stepstone::runtime::Worker;
use stepstone::runtime::disk_cache::{DEFAULT_LIMIT_BYTES, DiskCache};
use stepstone::ui::Studio;

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn studio() -> Studio {
    Studio::new(stepstone::nodes::registry(), repo("assets/demo-models"))
}

/// A worker on the demo models whose results persist in `cache` (None: memory only).
fn worker(cache: Option<&Path>) -> Worker {
    let cache = cache.map(Path::to_path_buf);
    Worker::spawn(
        move || {
            let engine = stepstone::builtin_engine(repo("assets/demo-models"));
            match cache {
                Some(dir) => engine.with_disk_cache(DiskCache::open(&dir, DEFAULT_LIMIT_BYTES).unwrap()),
                None => engine,
            }
        },
        None,
    )
    .unwrap()
}

/// The demo preset made cheap: two candidates of one step each.
fn cheap_demo(dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(repo("graphs/i4vgen_demo.json"))
        .unwrap()
        .replace("\"count\": 16", "\"count\": 2")
        .replace("\"steps\": 25", "\"steps\": 1");
    let path = dir.join("cheap.json");
    std::fs::write(&path, text).unwrap();
    path
}

/// An editor (no worker) with the cheap demo open, its egui context reporting accessibility, and the folder
/// the preset was written to.
fn opened() -> (tempfile::TempDir, egui::Context, Studio) {
    let dir = tempfile::tempdir().unwrap();
    let ctx = egui::Context::default();
    ctx.enable_accesskit();
    let mut studio = studio();
    assert!(studio.open(&cheap_demo(dir.path())));
    (dir, ctx, studio)
}

/// [`opened`] with a worker (results in memory), the graph's outputs accepted.
fn opened_with_worker() -> (tempfile::TempDir, egui::Context, Studio) {
    let dir = tempfile::tempdir().unwrap();
    let ctx = egui::Context::default();
    ctx.enable_accesskit();
    let mut studio = studio().with_worker(worker(None));
    assert!(studio.open(&cheap_demo(dir.path())));
    studio.accept_outputs_only();
    (dir, ctx, studio)
}

/// Draws frames (polling the worker) until `done` holds or `limit` passes; the last frame's output.
fn frames_until(
    ctx: &egui::Context,
    studio: &mut Studio,
    limit: Duration,
    mut done: impl FnMut(&Studio) -> bool,
) -> egui::FullOutput {
    let start = Instant::now();
    let mut t = 0.0;
    loop {
        let output = run_frame(ctx, studio, raw_input(t));
        t += 0.05;
        if done(studio) || start.elapsed() > limit {
            return output;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Restart: a second editor (a new worker and engine on the same cache folder) opening the same graph shows
/// the candidates grid and the selector's ranking without running anything; a damaged entry is ignored with
/// a log line and its node shows nothing until it runs again.
#[test]
fn after_a_restart_cached_results_show_without_a_run_and_damaged_entries_are_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let preset = cheap_demo(dir.path());

    let ctx = egui::Context::default();
    ctx.enable_accesskit();
    let mut first = studio().with_worker(worker(Some(&cache)));
    assert!(first.open(&preset));
    first.accept_outputs_only();
    first.run(vec!["selector".to_string()]);
    frames_until(&ctx, &mut first, Duration::from_secs(120), |s| s.session().last_outcome.is_some());
    assert_eq!(first.session().last_outcome, Some(stepstone::runtime::events::RunOutcome::Completed));
    drop(first);

    let ctx = egui::Context::default();
    ctx.enable_accesskit();
    let mut second = studio().with_worker(worker(Some(&cache)));
    assert!(second.open(&preset));
    let shown = |s: &Studio| {
        ["candidates", "selector"].iter().all(|n| s.session().node(n).is_some_and(|n| n.outputs.is_some()))
    };
    frames_until(&ctx, &mut second, Duration::from_secs(30), shown);
    assert!(shown(&second), "the cached results are shown after the restart");
    assert!(second.session().running.is_none() && second.session().last_outcome.is_none(), "without a run");
    // Two more frames so the grid is drawn with the restored ranking.
    run_frame(&ctx, &mut second, raw_input(100.0));
    let output = run_frame(&ctx, &mut second, raw_input(100.1));
    let labels = labels(&output);
    assert!(labels.iter().any(|l| l == "candidate 1"), "the ranking's grid is drawn: {labels:?}");
    drop(second);

    // Damage every entry: a third editor shows none of them and says why.
    let mut damaged = 0;
    for entry in std::fs::read_dir(&cache).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "result") {
            let bytes = std::fs::read(&path).unwrap();
            std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
            damaged += 1;
        }
    }
    assert!(damaged >= 2, "the prompt, candidates and ranking were stored: {damaged}");
    let ctx = egui::Context::default();
    let mut third = studio().with_worker(worker(Some(&cache)));
    assert!(third.open(&preset));
    let logged = |s: &Studio| s.session().log.iter().any(|n| n.text.contains("result cache: ignored"));
    frames_until(&ctx, &mut third, Duration::from_secs(30), logged);
    assert!(logged(&third), "{:?}", third.session().log);
    assert!(third.session().node("candidates").is_none_or(|n| n.outputs.is_none()), "a damaged result is not shown");
}

/// Clicks the button labelled `label` (drawing a frame first to find it).
fn click_button(ctx: &egui::Context, studio: &mut Studio, label: &str, time: f64) {
    let output = run_frame(ctx, studio, raw_input(time));
    let target = widget(&output, label).unwrap_or_else(|| panic!("no '{label}' in {:?}", labels(&output)));
    run_frame(ctx, studio, click(target, time + 0.01));
    run_frame(ctx, studio, raw_input(time + 0.02));
}

/// Autosave and recovery: an edited graph is written to the recovery file within a few seconds; an editor
/// that stops without closing (a crash) leaves it, and the next start offers it back; Restore brings the
/// edited graph back, unsaved and tied to its preset; a clean exit leaves nothing to recover. Recent files
/// remember the preset.
#[test]
fn a_crash_leaves_the_edited_graph_to_restore_and_a_clean_exit_does_not() {
    use stepstone::ui::app::AUTOSAVE_EVERY;
    use stepstone::ui::recovery::StateDir;

    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let preset = cheap_demo(dir.path());
    let ctx = egui::Context::default();
    let mut first = studio().with_state_dir(StateDir::new(&state));
    assert!(first.recovery_offer().is_none());
    assert!(first.open(&preset));
    assert_eq!(first.recent_files(), std::slice::from_ref(&preset));
    let mut t = 0.0;
    run_frame(&ctx, &mut first, raw_input(t));
    assert!(!state.join("recovery.json").exists(), "nothing changed yet: nothing is autosaved");
    first.document_mut().set_param("candidates", "count", serde_json::json!(3));
    for _ in 0..3 {
        t += AUTOSAVE_EVERY;
        run_frame(&ctx, &mut first, raw_input(t));
    }
    assert!(state.join("recovery.json").is_file(), "the change is autosaved");
    let edited = first.graph();
    drop(first); // a crash: no clean exit

    let ctx = egui::Context::default();
    ctx.enable_accesskit();
    let mut second = studio().with_state_dir(StateDir::new(&state));
    assert_eq!(second.recent_files(), std::slice::from_ref(&preset));
    assert!(second.recovery_offer().is_some(), "the next start offers the autosaved graph");
    click_button(&ctx, &mut second, "Restore", 1.0);
    assert!(second.recovery_offer().is_none());
    assert_eq!(second.graph(), edited, "the edited graph is back");
    assert_eq!(second.path(), Some(preset.as_path()), "tied to its preset");
    assert!(second.is_dirty(), "and shown as unsaved");
    second.exit_cleanly();
    assert!(!state.join("recovery.json").exists(), "a clean exit leaves nothing to recover");
    let third = studio().with_state_dir(StateDir::new(&state));
    assert!(third.recovery_offer().is_none());
    let left: Vec<_> = std::fs::read_dir(&state).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left, ["recent.json"], "no temporary files");
}

fn key(key: egui::Key) -> egui::Event {
    egui::Event::Key { key, physical_key: None, pressed: true, repeat: false, modifiers: egui::Modifiers::NONE }
}

fn input_with(time: f64, events: Vec<egui::Event>) -> egui::RawInput {
    egui::RawInput { events, ..raw_input(time) }
}

/// Space on the canvas opens the palette; typing filters it and Enter adds the best match with its
/// parameters at their defaults, where the pointer was.
#[test]
fn the_palette_adds_a_node_by_search() {
    let (_dir, ctx, mut studio) = opened();
    for t in 0..4 {
        run_frame(&ctx, &mut studio, raw_input(f64::from(t) * 0.1));
    }
    let before = studio.graph();
    let pointer = egui::Event::PointerMoved(egui::pos2(500.0, 700.0));
    run_frame(&ctx, &mut studio, input_with(1.0, vec![pointer, key(egui::Key::Space)]));
    assert!(studio.palette_open(), "Space opens the palette");
    run_frame(&ctx, &mut studio, input_with(1.1, vec![egui::Event::Text("export".into())]));
    run_frame(&ctx, &mut studio, input_with(1.2, vec![key(egui::Key::Enter)]));
    run_frame(&ctx, &mut studio, raw_input(1.3));
    assert!(!studio.palette_open(), "adding closes it");
    let after = studio.graph();
    let added: Vec<_> = after.nodes.keys().filter(|id| !before.nodes.contains_key(*id)).collect();
    assert_eq!(added, ["export_2"], "one Export node under a fresh id");
    let node = &after.nodes["export_2"];
    assert_eq!(node.kind, "export");
    let kind = stepstone::nodes::registry().get("export").copied().unwrap();
    for p in kind.params {
        assert_eq!(node.params.get(p.name), Some(&p.default_value()), "{} at its default", p.name);
    }
    assert!(after.links.len() == before.links.len(), "nothing was connected");
    // Escape closes a palette without adding anything.
    run_frame(&ctx, &mut studio, input_with(2.0, vec![key(egui::Key::Tab)]));
    assert!(studio.palette_open(), "Tab opens it too");
    run_frame(&ctx, &mut studio, input_with(2.1, vec![key(egui::Key::Escape)]));
    assert!(!studio.palette_open());
    assert_eq!(studio.graph().nodes.len(), after.nodes.len());
}

/// A wire dropped on empty canvas offers only the node kinds that can take it, and the one chosen is
/// added and connected to the wire.
#[test]
fn a_dropped_wire_offers_only_compatible_nodes_and_connects_the_chosen_one() {
    let (_dir, ctx, mut studio) = opened();
    run_frame(&ctx, &mut studio, raw_input(0.0));
    let registry = stepstone::nodes::registry();
    assert!(studio.drop_wire("regenerator", "video", true, egui::pos2(900.0, 300.0)));
    let output = run_frame(&ctx, &mut studio, raw_input(0.1));
    let offered: Vec<String> = labels(&output).into_iter().filter(|l| l.contains("  ·  ")).collect();
    let takes_video: Vec<String> = registry
        .iter()
        .filter(|k| k.inputs.iter().any(|p| p.ty == stepstone::graph::PortType::Video))
        .map(|k| format!("{}  ·  {}", k.title, k.category))
        .collect();
    assert!(!offered.is_empty());
    let mut sorted = offered.clone();
    sorted.sort();
    let mut expected = takes_video.clone();
    expected.sort();
    assert_eq!(sorted, expected, "exactly the kinds with a video input");
    let export = offered.iter().find(|l| l.starts_with("Export")).expect("Export takes a video");
    let target = widget(&output, export).unwrap();
    run_frame(&ctx, &mut studio, click(target, 0.2));
    run_frame(&ctx, &mut studio, raw_input(0.3));
    let graph = studio.graph();
    assert_eq!(graph.nodes["export_2"].kind, "export");
    assert!(
        graph.links.iter().any(|l| l.from.node == "regenerator" && l.from.port == "video" && l.to.node == "export_2"),
        "{:?}",
        graph.links
    );
    // From an input: the prompt input of the candidates node offers what gives a prompt.
    assert!(studio.drop_wire("candidates", "prompt", false, egui::pos2(100.0, 100.0)));
    let output = run_frame(&ctx, &mut studio, raw_input(1.0));
    let offered: Vec<String> = labels(&output).into_iter().filter(|l| l.contains("  ·  ")).collect();
    assert!(offered.iter().all(|l| l.starts_with("Prompt")), "{offered:?}");
}

fn press(pos: egui::Pos2, pressed: bool, modifiers: egui::Modifiers) -> egui::Event {
    egui::Event::PointerButton { pos, button: egui::PointerButton::Primary, pressed, modifiers }
}

/// Click on the node's title bar (selects it), one frame per event.
fn click_node(ctx: &egui::Context, studio: &mut Studio, id: &str, t: &mut f64) {
    let rect = studio.node_rect(id).unwrap_or_else(|| panic!("node {id} is drawn"));
    let at = rect.left_top() + egui::vec2(rect.width() * 0.5, 8.0);
    for event in
        [egui::Event::PointerMoved(at), press(at, true, egui::Modifiers::NONE), press(at, false, egui::Modifiers::NONE)]
    {
        *t += 0.05;
        run_frame(ctx, studio, input_with(*t, vec![event]));
    }
    *t += 0.05;
    run_frame(ctx, studio, raw_input(*t));
}

/// Copy and paste keep the nodes' parameters (and the links between the copied nodes); Shift+drag selects
/// a box of nodes; Ctrl+D duplicates; Del removes the selection.
#[test]
fn copy_paste_duplicate_box_select_and_delete_keep_parameters() {
    let (_dir, ctx, mut studio) = opened();
    studio.document_mut().set_param("candidates", "guidance", serde_json::json!(5.5));
    let mut t = 0.0;
    for _ in 0..4 {
        t += 0.05;
        run_frame(&ctx, &mut studio, raw_input(t));
    }
    click_node(&ctx, &mut studio, "candidates", &mut t);
    assert_eq!(studio.selected(), ["candidates"], "a click selects the node");

    t += 0.05;
    let output = run_frame(&ctx, &mut studio, input_with(t, vec![egui::Event::Copy]));
    let copied = output
        .platform_output
        .commands
        .iter()
        .find_map(|c| match c {
            egui::OutputCommand::CopyText(text) => Some(text.clone()),
            _ => None,
        })
        .expect("Copy puts the node on the clipboard");
    let before = studio.graph();
    let at = egui::pos2(640.0, 700.0);
    t += 0.05;
    run_frame(&ctx, &mut studio, input_with(t, vec![egui::Event::PointerMoved(at), egui::Event::Paste(copied)]));
    let pasted = studio.graph();
    assert_eq!(pasted.nodes.len(), before.nodes.len() + 1);
    let copy = &pasted.nodes["candidates_2"];
    assert_eq!(copy.kind, "t2i_candidates");
    assert_eq!(copy.params, before.nodes["candidates"].params, "the parameters come along");
    assert_eq!(copy.params["guidance"], 5.5);

    // Shift+drag a box around the prompt and the candidates: both selected; Ctrl+D copies both with their link.
    let (a, b) = (studio.node_rect("prompt").unwrap(), studio.node_rect("candidates").unwrap());
    let area = a.union(b).expand(12.0);
    let shift = egui::Modifiers::SHIFT;
    let mut drag = vec![
        egui::Event::ModifiersChanged(shift),
        egui::Event::PointerMoved(area.left_top()),
        press(area.left_top(), true, shift),
    ];
    for i in 1..=5 {
        drag.push(egui::Event::PointerMoved(area.left_top() + (area.size() * i as f32 / 5.0)));
    }
    drag.push(press(area.right_bottom(), false, shift));
    drag.push(egui::Event::ModifiersChanged(egui::Modifiers::NONE));
    for event in drag {
        t += 0.05;
        run_frame(&ctx, &mut studio, input_with(t, vec![event]));
    }
    t += 0.05;
    run_frame(&ctx, &mut studio, raw_input(t));
    let mut selected = studio.selected().to_vec();
    selected.sort();
    assert_eq!(selected, ["candidates", "prompt"], "the box selects both");
    let ctrl_d = egui::Event::Key {
        key: egui::Key::D,
        physical_key: None,
        pressed: true,
        repeat: false,
        modifiers: egui::Modifiers::COMMAND,
    };
    t += 0.05;
    let command = egui::Modifiers::COMMAND;
    let events =
        vec![egui::Event::ModifiersChanged(command), ctrl_d, egui::Event::ModifiersChanged(egui::Modifiers::NONE)];
    run_frame(&ctx, &mut studio, input_with(t, events));
    let duplicated = studio.graph();
    assert_eq!(duplicated.nodes.len(), pasted.nodes.len() + 2);
    assert_eq!(duplicated.nodes["prompt_2"].params, before.nodes["prompt"].params);
    assert!(
        duplicated.links.iter().any(|l| l.from.node == "prompt_2" && l.to.node == "candidates_3"),
        "the link between the copied nodes comes along: {:?}",
        duplicated.links
    );

    // Del removes what is selected, and undo brings it back.
    click_node(&ctx, &mut studio, "candidates_2", &mut t);
    t += 0.05;
    run_frame(&ctx, &mut studio, input_with(t, vec![key(egui::Key::Delete)]));
    assert!(!studio.graph().nodes.contains_key("candidates_2"));
    assert_eq!(studio.graph().nodes.len(), duplicated.nodes.len() - 1);
    studio.undo();
    assert!(studio.graph().nodes.contains_key("candidates_2"));
}

/// The inspector shows the clicked node's parameters in the same form as the node: a value set there is
/// the node's value and the node shows it. Its seed control draws a new seed for each run, shows the seed
/// the run used, and "keep this seed" fixes it.
#[test]
fn the_inspector_edits_the_nodes_parameters_and_keeps_the_seed_a_run_used() {
    let (_dir, ctx, mut studio) = opened_with_worker();
    studio.document_mut().set_param("candidates", "steps", serde_json::json!(17));
    studio.select("candidates");
    let mut t = 0.0;
    let mut output = run_frame(&ctx, &mut studio, raw_input(t));
    for _ in 0..3 {
        t += 0.05;
        output = run_frame(&ctx, &mut studio, raw_input(t));
    }
    let panel_left = 1280.0 - 360.0;
    let shown = values(&output);
    let in_node = |v: &[(String, f64)], value: &str| v.iter().any(|(s, x)| s == value && *x < panel_left);
    let in_inspector = |v: &[(String, f64)], value: &str| v.iter().any(|(s, x)| s == value && *x >= panel_left);
    assert!(in_node(&shown, "17") && in_inspector(&shown, "17"), "both show steps = 17: {shown:?}");
    let update = output.platform_output.accesskit_update.as_ref().unwrap();
    let (target, _) = update
        .nodes
        .iter()
        .find(|(_, n)| n.value() == Some("17") && n.bounds().is_some_and(|b| b.x0 >= panel_left))
        .unwrap();
    let set = egui::RawInput {
        events: vec![egui::Event::AccessKitActionRequest(egui::accesskit::ActionRequest {
            action: egui::accesskit::Action::SetValue,
            target_tree: egui::accesskit::TreeId::ROOT,
            target_node: *target,
            data: Some(egui::accesskit::ActionData::NumericValue(23.0)),
        })],
        ..raw_input(t + 0.05)
    };
    run_frame(&ctx, &mut studio, set);
    let output = run_frame(&ctx, &mut studio, raw_input(t + 0.1));
    assert_eq!(studio.graph().nodes["candidates"].params["steps"], 23, "the inspector's edit is the node's value");
    assert!(in_node(&values(&output), "23"), "and the node shows it: {:?}", values(&output));
    studio.document_mut().set_param("candidates", "steps", serde_json::json!(1));

    // New seed each run: the run uses a seed drawn for it, the inspector shows it, "keep this seed" fixes it.
    let before = studio.graph().nodes["candidates"].params["seed"].clone();
    click_button(&ctx, &mut studio, "new each run", t + 0.2);
    assert_eq!(studio.graph().nodes["candidates"].extra["seed_control"], "new each run");
    studio.run(vec!["candidates".to_string()]);
    frames_until(&ctx, &mut studio, Duration::from_secs(60), |s| s.session().last_outcome.is_some());
    let used = studio.graph().nodes["candidates"].params["seed"].as_u64().unwrap();
    assert_ne!(Some(used), before.as_u64(), "a new seed was drawn for the run");
    assert_eq!(studio.seeds_used("candidates"), [("seed".to_string(), used)]);
    let output = run_frame(&ctx, &mut studio, raw_input(100.0));
    let text = format!("seed used: {used}");
    assert!(values(&output).iter().any(|(v, _)| *v == text), "the inspector shows {text}: {:?}", values(&output));
    click_button(&ctx, &mut studio, "keep this seed", 100.1);
    let node = &studio.graph().nodes["candidates"];
    assert!(!node.extra.contains_key("seed_control"), "fixed again");
    assert_eq!(node.params["seed"], used);
}

/// Pause holds the run at a step (no progress while paused; Cancel still works), Resume goes on, and the
/// result is the one an uninterrupted run gives.
#[test]
fn pause_stops_step_progress_and_resume_gives_the_uninterrupted_result() {
    use stepstone::ui::session::Activity;
    use stepstone::values::Candidates;

    let dir = tempfile::tempdir().unwrap();
    let preset = cheap_demo(dir.path());
    let slow = |studio: &mut Studio| {
        studio.document_mut().set_param("candidates", "steps", serde_json::json!(30));
    };
    let step_of = |studio: &Studio| match studio.session().node("candidates").and_then(|n| n.activity.clone()) {
        Some(Activity::Running { step, .. }) => Some(step),
        _ => None,
    };
    let ctx = egui::Context::default();
    let mut studio = studio().with_worker(worker(None));
    assert!(studio.open(&preset));
    studio.accept_outputs_only();
    slow(&mut studio);
    studio.run(vec!["candidates".to_string()]);
    frames_until(&ctx, &mut studio, Duration::from_secs(60), |s| step_of(s).is_some_and(|step| step >= 1));
    studio.pause();
    frames_until(&ctx, &mut studio, Duration::from_secs(10), |s| s.session().paused);
    assert!(studio.session().paused, "the worker says it waits");
    let held = step_of(&studio).expect("paused inside the node");
    assert!(held < 30, "paused before the end: step {held}");
    let start = Instant::now();
    frames_until(&ctx, &mut studio, Duration::from_millis(800), |_| false);
    assert_eq!(step_of(&studio), Some(held), "no step while paused ({:?})", start.elapsed());
    assert!(studio.session().last_outcome.is_none());
    studio.resume();
    frames_until(&ctx, &mut studio, Duration::from_secs(120), |s| s.session().last_outcome.is_some());
    assert_eq!(studio.session().last_outcome, Some(stepstone::runtime::events::RunOutcome::Completed));
    let paused_result = studio.session().node("candidates").unwrap().outputs.clone().unwrap();

    let mut plain = self::studio().with_worker(worker(None));
    assert!(plain.open(&preset));
    plain.accept_outputs_only();
    slow(&mut plain);
    plain.run(vec!["candidates".to_string()]);
    frames_until(&ctx, &mut plain, Duration::from_secs(120), |s| s.session().last_outcome.is_some());
    let plain_result = plain.session().node("candidates").unwrap().outputs.clone().unwrap();
    let (a, b) =
        (paused_result.get::<Candidates>("candidates").unwrap(), plain_result.get::<Candidates>("candidates").unwrap());
    assert_eq!(a.images.len(), 2);
    assert!(a.images.iter().zip(&b.images).all(|(x, y)| x.as_raw() == y.as_raw()), "the same candidates");

    // Cancel while paused ends the run.
    plain.document_mut().set_param("candidates", "seed", serde_json::json!(7));
    plain.run(vec!["candidates".to_string()]);
    frames_until(&ctx, &mut plain, Duration::from_secs(60), |s| step_of(s).is_some_and(|step| step >= 1));
    plain.pause();
    frames_until(&ctx, &mut plain, Duration::from_secs(10), |s| s.session().paused);
    plain.cancel();
    frames_until(&ctx, &mut plain, Duration::from_secs(10), |s| s.session().last_outcome.is_some());
    assert_eq!(plain.session().last_outcome, Some(stepstone::runtime::events::RunOutcome::Cancelled));
    plain.resume();
}

/// The top bar shows the elapsed time and an ETA while a run goes on, and the ETA falls as steps finish.
#[test]
fn the_top_bar_shows_an_eta_that_falls() {
    use stepstone::runtime::events::Event;
    use stepstone::runtime::plan::{NodeStatus, Plan, PlannedNode};

    let (_dir, ctx, mut studio) = opened();
    let t0 = Instant::now() - Duration::from_secs(1);
    let planned = PlannedNode {
        id: "candidates".into(),
        key: None,
        status: NodeStatus::Stale,
        inputs: Default::default(),
        pulled: true,
        own_error: false,
    };
    let session = studio.session_mut();
    session.apply_at(Event::RunStarted { run_id: 1, plan: Plan { targets: vec![], nodes: vec![planned] } }, t0);
    session.apply_at(Event::NodeStarted { run_id: 1, node: "candidates".into() }, t0);
    session.apply_at(
        Event::Progress { run_id: 1, node: "candidates".into(), step: 1, total: 5 },
        t0 + Duration::from_secs(1),
    );
    let eta_shown = |output: &egui::FullOutput| {
        values(output).into_iter().chain(labels(output).into_iter().map(|l| (l, 0.0))).find_map(|(v, _)| {
            let (_, eta) = v.split_once("ETA ")?;
            let secs: f64 = eta.trim_end_matches(" s").parse().ok()?;
            v.starts_with("elapsed ").then_some(secs)
        })
    };
    let first = eta_shown(&run_frame(&ctx, &mut studio, raw_input(0.0))).expect("an ETA in the top bar");
    studio.session_mut().apply_at(
        Event::Progress { run_id: 1, node: "candidates".into(), step: 4, total: 5 },
        t0 + Duration::from_secs(4),
    );
    let later = eta_shown(&run_frame(&ctx, &mut studio, raw_input(0.1))).expect("an ETA in the top bar");
    assert!(later < first, "the ETA falls: {first} -> {later}");
}

/// What the worker sends when the selector has run: four 512x512 candidates, scored, the best (1) selected.
fn ranking_preview(size: u32) -> stepstone::runtime::events::Event {
    use image::{Rgb, RgbImage};
    use stepstone::values::{Ranking, SelectedBy};
    let images =
        (0..4u8).map(|i| std::sync::Arc::new(RgbImage::from_pixel(size, size, Rgb([i * 60, 100, 200])))).collect();
    let ranking = Ranking { images, scores: Some(vec![0.1, 0.9, -0.3, 0.4]), selected: 1, by: SelectedBy::Reward };
    preview("selector", "ranking", stepstone::values::Value::Ranking(std::sync::Arc::new(ranking)))
}

/// What the worker sends when `node` shows an intermediate result.
fn preview(node: &str, label: &str, value: stepstone::values::Value) -> stepstone::runtime::events::Event {
    stepstone::runtime::events::Event::Preview { run_id: 1, node: node.into(), label: label.into(), value }
}

/// With the selector selected, the number keys pick that candidate; the canvas holds downscaled textures
/// of full-size results.
#[test]
fn number_keys_pick_candidates_and_canvas_textures_are_downscaled() {
    let (_dir, ctx, mut studio) = opened();
    studio.session_mut().apply(ranking_preview(512));
    for t in 0..3 {
        run_frame(&ctx, &mut studio, raw_input(f64::from(t) * 0.1));
    }
    let sizes = studio.thumbnail_sizes("selector");
    assert_eq!(sizes.len(), 4);
    assert!(sizes.iter().all(|s| s[0] <= 256 && s[1] <= 256), "downscaled: {sizes:?}");
    studio.select("selector");
    run_frame(&ctx, &mut studio, input_with(1.0, vec![key(egui::Key::Num3)]));
    run_frame(&ctx, &mut studio, raw_input(1.1));
    let g = studio.graph();
    assert_eq!(g.nodes["selector"].params["mode"], "manual");
    assert_eq!(g.nodes["selector"].params["index"], 2, "key 3 is the third candidate");
    run_frame(&ctx, &mut studio, input_with(2.0, vec![key(egui::Key::Num9)]));
    assert_eq!(studio.graph().nodes["selector"].params["index"], 2, "there is no ninth candidate");
    assert!(studio.session().log.last().unwrap().text.contains("no number 9"));
    // Keys do nothing to a node without a ranking.
    studio.select("candidates");
    run_frame(&ctx, &mut studio, input_with(3.0, vec![key(egui::Key::Num1)]));
    assert_eq!(studio.graph().nodes["selector"].params["index"], 2);
}

/// A clip of `n` frames whose first pixel's red channel is the frame index (so a frame can be told apart).
fn numbered_clip(n: u8, size: u32) -> stepstone::video::Video {
    use image::{Rgb, RgbImage};
    let frames = (0..n).map(|i| RgbImage::from_pixel(size, size, Rgb([i * 10, 50, 90]))).collect();
    stepstone::video::Video { frames, fps: 8.0, prompt: "clip".into(), seed: 1, latents: None }
}

fn video_preview(node: &str, video: stepstone::video::Video) -> stepstone::runtime::events::Event {
    preview(node, "video", stepstone::values::Value::Video(std::sync::Arc::new(video)))
}

/// The player shows the selected node's clip; `.` and `,` step frames; with B chosen, both clips show the
/// same frame index; Play advances with time and loops.
#[test]
fn the_player_steps_frames_and_the_ab_view_shows_both_clips_at_the_same_frame() {
    let (_dir, ctx, mut studio) = opened();
    studio.session_mut().apply(video_preview("regenerator", numbered_clip(6, 64)));
    studio.session_mut().apply(video_preview("animator", numbered_clip(6, 64)));
    studio.select("regenerator");
    run_frame(&ctx, &mut studio, input_with(0.0, vec![key(egui::Key::P)]));
    assert!(studio.player().open, "P opens the player");
    let caption = |output: &egui::FullOutput, side: &str| -> Option<String> {
        values(output).into_iter().map(|(v, _)| v).find(|v| v.starts_with(&format!("{side}: ")))
    };
    let output = run_frame(&ctx, &mut studio, raw_input(0.1));
    assert_eq!(caption(&output, "A").as_deref(), Some("A: regenerator · frame 1 / 6"));
    assert_eq!(caption(&output, "B"), None, "no comparison yet");
    for t in [0.2, 0.3] {
        run_frame(&ctx, &mut studio, input_with(t, vec![key(egui::Key::Period)]));
    }
    let output = run_frame(&ctx, &mut studio, raw_input(0.4));
    assert_eq!(caption(&output, "A").as_deref(), Some("A: regenerator · frame 3 / 6"), "two steps on");
    run_frame(&ctx, &mut studio, input_with(0.5, vec![key(egui::Key::Comma)]));
    studio.player_mut().b = Some("animator".into());
    let output = run_frame(&ctx, &mut studio, raw_input(0.6));
    assert_eq!(caption(&output, "A").as_deref(), Some("A: regenerator · frame 2 / 6"));
    assert_eq!(caption(&output, "B").as_deref(), Some("B: animator · frame 2 / 6"), "B at the same frame");

    // Play: a quarter second at 8 fps is two frames on, on both sides; it loops past the end.
    click_button(&ctx, &mut studio, "▶ Play", 1.0);
    assert!(studio.player().playing);
    let before = studio.player().frame;
    run_frame(&ctx, &mut studio, raw_input(1.27));
    assert_eq!(studio.player().frame, (before + 2) % 6);
    run_frame(&ctx, &mut studio, raw_input(1.77));
    let output = run_frame(&ctx, &mut studio, raw_input(1.77));
    let frame = studio.player().frame;
    assert_eq!(frame, (before + 6) % 6, "looped");
    let a = caption(&output, "A").unwrap();
    let b = caption(&output, "B").unwrap();
    assert_eq!(a.split(" · ").nth(1), b.split(" · ").nth(1), "synced: {a} / {b}");
}

/// A node's failure is in the log with its time, level and node, and on the node; the log filters by level;
/// clicking the line selects the node.
#[test]
fn the_log_names_the_node_and_level_and_selects_the_node() {
    use stepstone::runtime::events::Event;
    let (_dir, ctx, mut studio) = opened();
    let session = studio.session_mut();
    session.apply(Event::NodeFailed { run_id: 1, node: "candidates".into(), message: "out of memory".into() });
    let logged = studio.session().log.last().unwrap().clone();
    assert_eq!(logged.node.as_deref(), Some("candidates"));
    let line = logged.line();
    assert!(line.contains(" error [candidates] failed: out of memory"), "{line}");
    assert!(line.as_bytes()[2] == b':' && line.as_bytes()[5] == b':', "starts with the time: {line}");
    let mut output = run_frame(&ctx, &mut studio, raw_input(0.0));
    for t in 1..3 {
        output = run_frame(&ctx, &mut studio, raw_input(f64::from(t) * 0.1));
    }
    let texts: Vec<String> = values(&output).into_iter().map(|(v, _)| v).chain(labels(&output)).collect();
    assert!(texts.contains(&line), "the log panel shows the line: {texts:?}");
    assert!(texts.iter().any(|t| t == "out of memory"), "and the node shows the error");
    let update = output.platform_output.accesskit_update.as_ref().unwrap();
    let (target, _) = update
        .nodes
        .iter()
        .find(|(_, n)| {
            (n.value() == Some(line.as_str()) || n.label() == Some(line.as_str()))
                && n.supports_action(egui::accesskit::Action::Click)
        })
        .unwrap();
    run_frame(&ctx, &mut studio, click(*target, 1.0));
    run_frame(&ctx, &mut studio, raw_input(1.1));
    assert_eq!(studio.selected(), ["candidates"], "clicking the line selects its node");
}

/// Model loaders say what their file holds (or why it is no model) before anything runs, and their file
/// menu lists what the models folder holds.
#[test]
fn model_loaders_show_what_was_detected_and_list_the_models_folder() {
    let (_dir, ctx, mut studio) = opened();
    studio.document_mut().set_param("reward", "path", serde_json::json!("README.md"));
    let mut output = run_frame(&ctx, &mut studio, raw_input(0.0));
    for t in 1..3 {
        output = run_frame(&ctx, &mut studio, raw_input(f64::from(t) * 0.1));
    }
    let texts: Vec<String> = values(&output).into_iter().map(|(v, _)| v).collect();
    assert!(texts.iter().any(|t| t.starts_with("diffusers folder (StableDiffusionPipeline) · ")), "{texts:?}");
    assert!(
        texts.iter().any(|t| t.starts_with("AnimateDiff motion module v2 (mm_sd_v15_v2) · pickle checkpoint · ")),
        "{texts:?}"
    );
    assert!(
        texts.iter().any(|t| t.contains("README.md") && t.contains("unsupported weight file type")),
        "why README.md is no model: {texts:?}"
    );
    let listed = stepstone::ui::params::models_in(&repo("assets/demo-models"));
    for model in ["sd15-tiny", "mm_tiny_v2.ckpt", "ImageReward-tiny", "modelscope-tiny"] {
        assert!(listed.iter().any(|m| m == model), "{model} in {listed:?}");
    }
    assert!(!listed.iter().any(|m| m == "README.md"), "only models are listed");
}

/// "more candidates" on the selector adds a batch from the next seed: the earlier candidates stay exactly
/// as they were, and so does the anchor (a choice by reward becomes the same choice by hand) until the
/// artist picks another.
#[test]
fn more_candidates_keep_the_earlier_ones_and_the_current_pick() {
    use stepstone::values::{Ranking, SelectedBy, StillImage};
    let (_dir, ctx, mut studio) = opened_with_worker();
    studio.run(vec!["selector".to_string()]);
    frames_until(&ctx, &mut studio, Duration::from_secs(120), |s| s.session().last_outcome.is_some());
    let outputs = studio.session().node("selector").unwrap().outputs.clone().unwrap();
    let before = outputs.get::<Ranking>("ranking").unwrap().clone();
    let anchor = outputs.get::<StillImage>("anchor").unwrap().image.clone();
    assert_eq!((before.images.len(), before.by), (2, SelectedBy::Reward));

    click_button(&ctx, &mut studio, "more candidates", 100.0);
    let g = studio.graph();
    assert_eq!(g.nodes["candidates"].params["batches"], 2, "one more batch");
    assert_eq!(g.nodes["selector"].params["mode"], "manual", "the reward's choice is kept by hand");
    assert_eq!(g.nodes["selector"].params["index"], before.selected as u64);
    let done = |s: &Studio| {
        s.session().last_outcome.is_some()
            && s.session()
                .node("selector")
                .and_then(|n| n.outputs.as_ref())
                .and_then(|o| o.get::<Ranking>("ranking"))
                .is_some_and(|r| r.images.len() == 4)
    };
    frames_until(&ctx, &mut studio, Duration::from_secs(120), done);
    let outputs = studio.session().node("selector").unwrap().outputs.clone().unwrap();
    let after = outputs.get::<Ranking>("ranking").unwrap();
    assert_eq!(after.images.len(), 4);
    for i in 0..2 {
        assert_eq!(after.images[i].as_raw(), before.images[i].as_raw(), "candidate {i} is unchanged");
    }
    assert_ne!(after.images[2].as_raw(), before.images[0].as_raw(), "the new batch is new");
    assert_eq!(after.selected, before.selected);
    assert_eq!(outputs.get::<StillImage>("anchor").unwrap().image.as_raw(), anchor.as_raw(), "the same anchor");
}

/// The real gesture: a wire dragged with the pointer from the prompt node's output pin and released on empty
/// canvas opens the palette for that wire (egui-snarl's dropped-wire menu hands it over).
#[test]
fn dragging_a_wire_onto_empty_canvas_opens_the_palette_for_it() {
    let (_dir, ctx, mut studio) = opened();
    let mut t = 0.0;
    for _ in 0..4 {
        t += 0.05;
        run_frame(&ctx, &mut studio, raw_input(t));
    }
    let from = studio.output_pin("prompt", "prompt").expect("the pin is drawn");
    // Empty canvas: right of the pin, below every node.
    let bottom = ["prompt", "candidates", "checkpoint", "motion", "reward"]
        .iter()
        .filter_map(|n| studio.node_rect(n))
        .map(|r| r.bottom())
        .fold(0.0f32, f32::max);
    let to = egui::pos2(from.x + 40.0, (bottom + 20.0).min(740.0));
    let none = egui::Modifiers::NONE;
    let mut events = vec![egui::Event::PointerMoved(from), press(from, true, none)];
    for i in 1..=6 {
        events.push(egui::Event::PointerMoved(from + (to - from) * (i as f32 / 6.0)));
    }
    events.push(press(to, false, none));
    for event in events {
        t += 0.05;
        run_frame(&ctx, &mut studio, input_with(t, vec![event]));
    }
    for _ in 0..3 {
        t += 0.05;
        run_frame(&ctx, &mut studio, raw_input(t));
    }
    assert!(studio.palette_open(), "the dropped wire opens the palette");
    let output = run_frame(&ctx, &mut studio, raw_input(t + 0.05));
    let offered: Vec<String> = labels(&output).into_iter().filter(|l| l.contains("  ·  ")).collect();
    assert!(offered.iter().any(|l| l.starts_with("T2I Candidates")), "{offered:?}");
    assert!(!offered.iter().any(|l| l.starts_with("Export")), "only what takes a prompt: {offered:?}");
}
