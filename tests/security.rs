//! Shared graphs are someone else's data (docs/SECURITY.md): what they may read and write, that stepstone
//! never deletes what it did not write, that Ctrl-C leaves nothing behind, and clear refusals of bad input.
//! One test per defect found in issue 11.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod cli_support;
use cli_support::{repo, run_small, stderr, stdout, stepstone};

/// Every file under `dir` (relative names, sorted), hidden ones included.
fn tree(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            out.push(p.strip_prefix(dir).unwrap().display().to_string());
            if p.is_dir() {
                stack.push(p);
            }
        }
    }
    out.sort();
    out
}

/// The demo preset with the Export node's parameters replaced (as a shared clip could carry them).
fn demo_with_export(dir: &Path, path: &str, overwrite: bool) -> PathBuf {
    let text = std::fs::read_to_string(repo("graphs/i4vgen_demo.json")).unwrap();
    let mut graph: serde_json::Value = serde_json::from_str(&text).unwrap();
    for node in graph["nodes"].as_array_mut().unwrap() {
        if node["id"] == "export" {
            node["params"]["path"] = serde_json::Value::from(path);
            node["params"]["overwrite"] = serde_json::Value::from(overwrite);
        }
    }
    let file = dir.join(format!("shared-{}.json", path.len()));
    std::fs::write(&file, serde_json::to_string_pretty(&graph).unwrap()).unwrap();
    file
}

#[test]
fn a_folder_with_a_users_file_survives_every_export_setting() {
    // Issue 11, defect 1: `--out v` onto a folder of the user's, with the demo preset's overwrite on, emptied
    // it; so did a shared clip whose export path is `.` or `..`.
    let dir = tempfile::tempdir().unwrap();
    let v = dir.path().join("v");
    std::fs::create_dir(&v).unwrap();
    std::fs::write(v.join("a"), b"x").unwrap();
    let preset = repo("graphs/i4vgen_demo.json");

    let o = run_small(dir.path(), Path::new(&preset), &["--out", "v"]);
    assert!(!o.status.success(), "must refuse");
    let err = stderr(&o);
    assert!(err.contains("cannot be replaced") && err.contains("'a', which stepstone did not write"), "{err}");
    assert_eq!(std::fs::read(v.join("a")).unwrap(), b"x");

    // The output folder itself, its parent, the working folder: refused, nothing touched.
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("keep.txt"), b"mine").unwrap();
    for path in [".", "..", "", "sub/..", "../v"] {
        let shared = demo_with_export(dir.path(), path, true);
        let o = run_small(dir.path(), &shared, &[]);
        assert!(!o.status.success(), "{path:?} must be refused");
        assert!(stderr(&o).contains("node 'export'"), "{path:?}: {}", stderr(&o));
        assert_eq!(std::fs::read(out.join("keep.txt")).unwrap(), b"mine", "{path:?}");
        assert_eq!(std::fs::read(v.join("a")).unwrap(), b"x", "{path:?}");
    }
    // A frame folder stepstone wrote is replaced, and so is a regular file (both with overwrite on).
    let shared = demo_with_export(dir.path(), "frames", true);
    for _ in 0..2 {
        let o = run_small(dir.path(), &shared, &[]);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let frames = tree(&out.join("frames"));
    assert_eq!(frames, vec![".stepstone-frames", "frame_0000.png", "frame_0001.png", "frame_0002.png"]);
    // ... but not once a user's file is in it.
    std::fs::write(out.join("frames/notes.txt"), b"mine").unwrap();
    let o = run_small(dir.path(), &shared, &[]);
    assert!(!o.status.success() && stderr(&o).contains("notes.txt"), "{}", stderr(&o));
    assert_eq!(std::fs::read(out.join("frames/notes.txt")).unwrap(), b"mine");
    // A folder where a clip file is to go is never replaced.
    std::fs::create_dir(out.join("clip.mp4")).unwrap();
    std::fs::write(out.join("clip.mp4/inside"), b"mine").unwrap();
    let shared = demo_with_export(dir.path(), "clip.mp4", true);
    let o = run_small(dir.path(), &shared, &[]);
    assert!(!o.status.success() && stderr(&o).contains("overwrite replaces only a regular file"), "{}", stderr(&o));
    assert_eq!(std::fs::read(out.join("clip.mp4/inside")).unwrap(), b"mine");
}

#[test]
fn a_shared_graph_cannot_write_outside_the_output_folder() {
    // Issue 11, defect 2: absolute and `../` export paths wrote anywhere, and validate said ok.
    let dir = tempfile::tempdir().unwrap();
    let elsewhere = dir.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    std::fs::write(elsewhere.join("clip.mp4"), b"someone's clip").unwrap();
    let absolute = elsewhere.join("clip.mp4").display().to_string();
    let models = repo("assets/demo-models");
    for path in [absolute.as_str(), "../elsewhere/clip.mp4", "a/../../elsewhere/clip.mp4"] {
        let shared = demo_with_export(dir.path(), path, true);
        let o = stepstone(&["validate", shared.to_str().unwrap(), "--models", &models], dir.path());
        assert!(!o.status.success(), "validate must refuse {path}");
        let err = stderr(&o);
        assert!(err.contains("may write only inside the output folder"), "{path}: {err}");
        let listed = stdout(&o);
        assert!(listed.contains("writes") && listed.contains("refused"), "validate lists the write: {listed}");
        let o = run_small(dir.path(), &shared, &[]);
        assert!(!o.status.success(), "run must refuse {path}");
        assert!(stderr(&o).contains("cannot run: node 'export' has an error"), "{path}: {}", stderr(&o));
        assert_eq!(std::fs::read(elsewhere.join("clip.mp4")).unwrap(), b"someone's clip");
    }
    assert!(!dir.path().join("out").exists(), "nothing was written");
    // The user may send the output anywhere on the command line (and validate lists what is written).
    let shared = demo_with_export(dir.path(), "inside.mp4", false);
    let o = stepstone(&["validate", shared.to_str().unwrap(), "--models", &models], dir.path());
    assert!(o.status.success(), "{}", stderr(&o));
    let listed = stdout(&o);
    assert!(listed.contains(&format!("writes {}", Path::new("out").join("inside.mp4").display())), "{listed}");
    assert!(listed.contains("reads model") && listed.contains("sd15-tiny"), "{listed}");
    let target = elsewhere.join("mine.mp4").display().to_string();
    let o = run_small(dir.path(), &shared, &["--out", &target]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(elsewhere.join("mine.mp4").is_file());
}

#[test]
fn a_shared_graph_reads_models_only_from_the_models_folder_and_images_only_when_allowed() {
    // Issue 11, defect 3: model paths could be absolute or climb out with `../`, and Load Image read any
    // picture the user can read.
    let dir = tempfile::tempdir().unwrap();
    let models = repo("assets/demo-models");
    let text = std::fs::read_to_string(repo("graphs/i4vgen_demo.json")).unwrap();
    let outside = repo("assets/demo-models/sd15-tiny");
    for bad in [outside.as_str(), "../demo-models/sd15-tiny"] {
        let shared = dir.path().join("models.json");
        std::fs::write(&shared, text.replace("\"path\": \"sd15-tiny\"", &format!("\"path\": {bad:?}"))).unwrap();
        let o = stepstone(&["validate", shared.to_str().unwrap(), "--models", &models], dir.path());
        assert!(!o.status.success(), "{bad}");
        assert!(stderr(&o).contains("model paths must lie inside the models folder"), "{bad}: {}", stderr(&o));
        let o = run_small(dir.path(), &shared, &[]);
        assert!(!o.status.success() && stderr(&o).contains("node 'checkpoint'"), "{bad}: {}", stderr(&o));
    }

    let private = dir.path().join("private.png");
    image::RgbImage::from_pixel(16, 8, image::Rgb([1, 2, 3])).save(&private).unwrap();
    let graph = format!(
        r#"{{"format": "stepstone-graph", "version": 1, "nodes": [
            {{"id": "img", "kind": "load_image", "params": {{"path": {:?}}}}}], "links": []}}"#,
        private.display().to_string()
    );
    let shared = dir.path().join("reads.json");
    std::fs::write(&shared, graph).unwrap();
    let o = stepstone(&["run", shared.to_str().unwrap(), "--target", "img"], dir.path());
    assert!(!o.status.success(), "reading needs permission");
    let err = stderr(&o);
    assert!(err.contains("node 'img'") && err.contains("--allow-paths"), "{err}");
    assert!(!err.contains("done img"), "{err}");
    let o = stepstone(&["validate", shared.to_str().unwrap()], dir.path());
    assert!(stdout(&o).contains(&format!("reads file {}", private.display())), "{}", stdout(&o));
    // Allowed by the user: on the command line, or by naming the file themselves.
    let o = stepstone(&["run", shared.to_str().unwrap(), "--target", "img", "--allow-paths"], dir.path());
    assert!(o.status.success() && stderr(&o).contains("done img"), "{}", stderr(&o));
    let set = format!("img.path={}", private.display());
    let o = stepstone(&["run", shared.to_str().unwrap(), "--target", "img", "--set", &set], dir.path());
    assert!(o.status.success(), "{}", stderr(&o));
}

/// Runs the demo graph exporting a long clip to `out_name`, sends `signal` `signals` times once the export's
/// temporary output exists, and returns the exit status and what is left in the folder.
fn interrupt_export(out_name: &str, signal: i32, signals: usize) -> (Option<i32>, Vec<String>, String) {
    let dir = tempfile::tempdir().unwrap();
    let models = repo("assets/demo-models");
    let preset = repo("graphs/i4vgen_demo.json");
    let work = dir.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let out = work.join(out_name).display().to_string();
    let mut args: Vec<&str> = vec!["run", &preset, "--models", &models, "--quiet", "--out", &out];
    // 16 frames, ping-pong and 100 repeats: 3,000 frames, so the export takes long enough to interrupt.
    let extra = ["candidates.count=1", "candidates.steps=2", "animator.steps=2", "regenerator.steps=2"];
    for s in &extra {
        args.extend(["--set", s]);
    }
    args.extend(["--set", "export.pingpong=true", "--set", "export.repeat=100", "--set", "export.preset=ultrafast"]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_stepstone"))
        .args(&args)
        .current_dir(dir.path())
        .env_remove("STEPSTONE_MODELS")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let mut seen_partial = false;
    while start.elapsed() < Duration::from_secs(180) {
        if tree(&work).iter().any(|n| n.contains(".partial")) {
            seen_partial = true;
            break;
        }
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(seen_partial, "the export never started writing its temporary output");
    for _ in 0..signals {
        // SAFETY: kill(2) on our own child's pid.
        assert_eq!(unsafe { libc::kill(child.id() as i32, signal) }, 0);
        // Signals of one kind do not queue: let the first be delivered before the next is sent.
        std::thread::sleep(Duration::from_millis(1));
    }
    let output = child.wait_with_output().unwrap();
    (output.status.code(), tree(&work), String::from_utf8_lossy(&output.stderr).into_owned())
}

#[test]
fn ctrl_c_during_export_leaves_no_file() {
    // Issue 11, defect 4: a real SIGINT during an export left `.NAME.PID.partial` files and folders.
    for name in ["clip.mp4", "frames"] {
        let (code, left, err) = interrupt_export(name, libc::SIGINT, 1);
        assert_eq!(code, Some(130), "{name}: {err}");
        assert!(left.is_empty(), "{name}: left behind {left:?}\n{err}");
        assert!(err.contains("interrupted"), "{name}: {err}");
    }
    // Two Ctrl-C in a row, and SIGTERM: the same exit and nothing left. (Whether the second one finds the
    // cancel still running depends on timing; the exit-at-once path is unit-tested in signals.rs and
    // video/output.rs.)
    for (signal, count) in [(libc::SIGINT, 2), (libc::SIGTERM, 1)] {
        let (code, left, err) = interrupt_export("frames", signal, count);
        assert_eq!(code, Some(130), "signal {signal} x{count}: {err}");
        assert!(left.is_empty(), "signal {signal} x{count}: left behind {left:?}\n{err}");
    }
}

#[test]
fn huge_inputs_are_refused_with_the_limit() {
    // Issue 11, defect 6: a 50 MB prompt passed validate and then aborted the run.
    let dir = tempfile::tempdir().unwrap();
    let prompt = "a fox ".repeat(3_000);
    let graph = format!(
        r#"{{"format": "stepstone-graph", "version": 1, "nodes": [
            {{"id": "prompt", "kind": "prompt", "params": {{"positive": "{prompt}"}}}}], "links": []}}"#
    );
    let file = dir.path().join("long.json");
    std::fs::write(&file, graph).unwrap();
    let o = stepstone(&["validate", file.to_str().unwrap()], dir.path());
    assert!(!o.status.success());
    assert!(stderr(&o).contains("node 'prompt': parameter 'positive': the text is 18000 bytes long"), "{}", stderr(&o));

    let big = dir.path().join("big.json");
    let f = std::fs::File::create(&big).unwrap();
    f.set_len(stepstone::graph::preset::MAX_PRESET_BYTES as u64 + 10).unwrap();
    let o = stepstone(&["validate", big.to_str().unwrap()], dir.path());
    assert!(!o.status.success());
    assert!(stderr(&o).contains("the preset (bytes) is too large"), "{}", stderr(&o));

    let nodes: Vec<String> =
        (0..=stepstone::graph::preset::MAX_NODES).map(|i| format!(r#"{{"id": "p{i}", "kind": "prompt"}}"#)).collect();
    let many = dir.path().join("many.json");
    std::fs::write(&many, format!(r#"{{"format": "stepstone-graph", "version": 1, "nodes": [{}]}}"#, nodes.join(",")))
        .unwrap();
    let o = stepstone(&["validate", many.to_str().unwrap()], dir.path());
    assert!(stderr(&o).contains("the number of nodes is too large: 10001, at most 10000"), "{}", stderr(&o));
}

#[test]
fn messages_name_what_is_wrong() {
    // Issue 11, defect 8.
    let dir = tempfile::tempdir().unwrap();
    let models = repo("assets/demo-models");
    let preset = repo("graphs/i4vgen_demo.json");
    // NaN / inf on the command line.
    let o = stepstone(&["run", &preset, "--set", "candidates.cfg=nan"], dir.path());
    let err = stderr(&o);
    assert!(err.contains("\"nan\" is not a finite number") && !err.contains("null"), "{err}");
    // Invalid UTF-8: where.
    let bad = dir.path().join("latin1.json");
    std::fs::write(&bad, b"{\n  \"format\": \"stepstone-graph\", \"caf\xe9\": 1\n}").unwrap();
    let o = stepstone(&["validate", bad.to_str().unwrap()], dir.path());
    assert!(stderr(&o).contains("invalid byte 0xe9 at byte offset 37 (line 2, column 36)"), "{}", stderr(&o));
    // A byte-order mark is fine.
    let text = std::fs::read_to_string(&preset).unwrap();
    let bom = dir.path().join("bom.json");
    std::fs::write(&bom, format!("\u{feff}{text}")).unwrap();
    let o = stepstone(&["validate", bom.to_str().unwrap()], dir.path());
    assert!(o.status.success(), "{}", stderr(&o));
    // A parent that is a file, before any compute; one node with an error is one node.
    std::fs::write(dir.path().join("a-file"), b"x").unwrap();
    let start = Instant::now();
    let o = stepstone(&["run", &preset, "--models", &models, "--out", "a-file/clip.mp4", "--quiet"], dir.path());
    let err = stderr(&o);
    assert!(!o.status.success());
    assert!(err.contains("a-file is a file, not a folder"), "{err}");
    assert!(err.contains("cannot run: node 'export' has an error"), "{err}");
    assert!(!err.contains("done "), "no node may run: {err}");
    assert!(start.elapsed() < Duration::from_secs(20), "refused before the compute");
}
