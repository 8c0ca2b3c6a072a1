//! The command line: failures exit non-zero with messages that name what is wrong.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

mod cli_support;
use cli_support::{repo, run_small, stderr, stepstone, write};

/// A models directory holding (empty) files under the names the shipped presets use.
fn fake_models(dir: &Path) -> PathBuf {
    let m = dir.join("models");
    std::fs::create_dir_all(m.join("stable-diffusion-v1-5")).unwrap();
    std::fs::write(m.join("mm_sd_v15_v2.ckpt"), b"").unwrap();
    std::fs::create_dir_all(m.join("ImageReward")).unwrap();
    std::fs::write(m.join("ImageReward").join("ImageReward.pt"), b"").unwrap();
    m
}

#[test]
fn malformed_json_reports_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let p =
        write(dir.path(), "bad.json", "{\n  \"format\": \"stepstone-graph\",\n  \"version\": 1,\n  \"nodes\": [}\n}\n");
    for cmd in ["run", "validate"] {
        let o = stepstone(&[cmd, p.to_str().unwrap()], dir.path());
        assert!(!o.status.success(), "{cmd} must fail");
        let err = stderr(&o);
        assert!(err.contains(&format!("{}:4:13: malformed JSON", p.display())), "{cmd}: {err}");
    }
}

const UNKNOWN_KIND: &str = r#"{
  "format": "stepstone-graph",
  "version": 1,
  "nodes": [
    {"id": "p", "kind": "prompt", "params": {"positive": "a cat"}},
    {"id": "x", "kind": "hyperdrive", "params": {}}
  ],
  "links": [{"from": "p.prompt", "to": "x.prompt"}]
}"#;

#[test]
fn unknown_node_kind_fails_validate_and_run() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "unknown.json", UNKNOWN_KIND);
    let o = stepstone(&["validate", p.to_str().unwrap()], dir.path());
    assert!(!o.status.success());
    assert!(stderr(&o).contains("node 'x': unknown node kind 'hyperdrive'"), "{}", stderr(&o));
    let o = stepstone(&["run", p.to_str().unwrap(), "--target", "x"], dir.path());
    assert!(!o.status.success());
    assert!(stderr(&o).contains("unknown node kind 'hyperdrive'"), "{}", stderr(&o));
    // The rest of the graph still runs.
    let o = stepstone(&["run", p.to_str().unwrap(), "--target", "p", "--quiet"], dir.path());
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn missing_model_file_names_the_file_and_the_models_directory() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("my-models");
    std::fs::create_dir_all(&models).unwrap();
    let preset = repo("graphs/i4vgen_animatediff.json");
    let o = stepstone(&["run", &preset, "--models", models.to_str().unwrap()], dir.path());
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(err.contains("model file 'mm_sd_v15_v2.ckpt' not found"), "{err}");
    assert!(err.contains(&format!("models directory '{}'", models.display())), "{err}");
    assert!(err.contains("from --models"), "{err}");

    // The environment variable is the next place looked at.
    let o = Command::new(env!("CARGO_BIN_EXE_stepstone"))
        .args(["run", &preset])
        .env("STEPSTONE_MODELS", &models)
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(stderr(&o).contains("from $STEPSTONE_MODELS"), "{}", stderr(&o));
}

#[test]
fn validate_accepts_the_shipped_presets_when_the_models_are_there() {
    let dir = tempfile::tempdir().unwrap();
    let models = fake_models(dir.path());
    let o = stepstone(
        &[
            "validate",
            &repo("graphs/i4vgen_animatediff.json"),
            &repo("graphs/vanilla_animatediff.json"),
            "--models",
            models.to_str().unwrap(),
        ],
        dir.path(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("i4vgen_animatediff.json: ok (10 nodes, 14 links)"), "{out}");
}

#[test]
fn set_overrides_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let models = fake_models(dir.path());
    let preset = repo("graphs/i4vgen_animatediff.json");
    let m = models.to_str().unwrap();
    let cases = [
        ("nosuch.cfg=3", "no node 'nosuch' in the graph"),
        ("candidates.guidance=3", "kind 't2i_candidates' has no parameter 'guidance'"),
        ("candidates.cfg=lots", "\"lots\" is not a number in 0..=30"),
        ("candidates.count=0", "0 is out of range: expected an integer in 1..=64"),
        ("candidates.cfg", "expected NODE.PARAM=VALUE"),
    ];
    for (set, expected) in cases {
        let o = stepstone(&["run", &preset, "--models", m, "--set", set], dir.path());
        assert!(!o.status.success(), "--set {set} must fail");
        assert!(stderr(&o).contains(expected), "--set {set}: {}", stderr(&o));
    }
}

#[test]
fn a_node_that_fails_makes_run_exit_non_zero_with_its_message() {
    // With every model path present, the run starts; the (empty) model folder cannot load and must say why,
    // the nodes that need it are skipped, and the run fails, naming the node.
    let dir = tempfile::tempdir().unwrap();
    let models = fake_models(dir.path());
    let o = stepstone(
        &["run", &repo("graphs/i4vgen_animatediff.json"), "--models", models.to_str().unwrap(), "--quiet"],
        dir.path(),
    );
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(err.contains("node 'checkpoint' failed"), "{err}");
    assert!(
        err.contains("not a Stable Diffusion diffusers folder: missing unet/, vae/, text_encoder/, tokenizer/"),
        "{err}"
    );
    assert!(err.contains("skipped: node 'candidates': upstream node 'checkpoint' did not finish"), "{err}");
    assert!(err.contains("node(s) failed"), "{err}");
}

#[test]
fn run_with_targets_evaluates_and_load_image_reports_bad_files() {
    let dir = tempfile::tempdir().unwrap();
    let img = image::RgbImage::from_pixel(16, 8, image::Rgb([1, 2, 3]));
    img.save(dir.path().join("anchor.png")).unwrap();
    write(dir.path(), "not-an-image.png", "this is text");
    let preset = write(
        dir.path(),
        "img.json",
        r#"{"format": "stepstone-graph", "version": 1, "nodes": [
            {"id": "good", "kind": "load_image", "params": {"path": "anchor.png"}},
            {"id": "bad", "kind": "load_image", "params": {"path": "not-an-image.png"}}
        ], "links": []}"#,
    );
    // A graph from a file reads the images it names only with --allow-paths.
    let o = stepstone(&["run", preset.to_str().unwrap(), "--target", "good"], dir.path());
    assert!(!o.status.success() && stderr(&o).contains("--allow-paths"), "{}", stderr(&o));
    let o = stepstone(&["run", preset.to_str().unwrap(), "--target", "good", "--allow-paths"], dir.path());
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("done good"), "{}", stderr(&o));
    let o = stepstone(
        &["run", preset.to_str().unwrap(), "--target", "bad", "--target", "good", "--allow-paths"],
        dir.path(),
    );
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(err.contains("node 'bad' failed: not-an-image.png: not a readable image"), "{err}");
    let o = stepstone(&["run", preset.to_str().unwrap()], dir.path());
    assert!(!o.status.success());
    assert!(stderr(&o).contains("no output node"), "{}", stderr(&o));
}

#[test]
fn out_needs_exactly_one_export_node() {
    let dir = tempfile::tempdir().unwrap();
    let preset = write(
        dir.path(),
        "p.json",
        r#"{"format": "stepstone-graph", "version": 1, "nodes": [{"id": "p", "kind": "prompt"}], "links": []}"#,
    );
    let o = stepstone(&["run", preset.to_str().unwrap(), "--out", "clip"], dir.path());
    assert!(!o.status.success());
    assert!(stderr(&o).contains("has no Export node"), "{}", stderr(&o));
}

#[test]
fn no_subcommand_opens_the_editor_and_says_why_it_cannot_without_a_display() {
    let dir = tempfile::tempdir().unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_stepstone"))
        .current_dir(dir.path())
        .env_remove("DISPLAY")
        .env_remove("WAYLAND_DISPLAY")
        .env_remove("WAYLAND_SOCKET")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(e.contains("the editor window could not be opened") && e.contains("DISPLAY"), "{e}");
}

#[test]
fn nodes_lists_every_kind_with_its_parameters() {
    let dir = tempfile::tempdir().unwrap();
    let o = stepstone(&["nodes"], dir.path());
    assert!(o.status.success());
    let out = String::from_utf8_lossy(&o.stdout);
    for kind in [
        "prompt",
        "t2i_candidates",
        "candidate_selector",
        "ni_vsds",
        "regenerator",
        "video_preview",
        "export",
        "load_image",
    ] {
        assert!(out.contains(&format!("{kind} (")), "{kind} missing:\n{out}");
    }
    assert!(out.contains("p_ni_vsds"), "{out}");
}

#[test]
fn run_writes_the_format_of_out_and_a_clip_restores_its_graph() {
    let dir = tempfile::tempdir().unwrap();
    let (models, preset) = (repo("assets/demo-models"), repo("graphs/i4vgen_demo.json"));
    let o = run_small(dir.path(), Path::new(&preset), &["--out", "clip.mp4"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let clip = dir.path().join("clip.mp4");
    let back = stepstone::video::encode::decode(&clip).unwrap();
    assert_eq!((back.frames.len(), back.width, back.height, back.codec.as_str()), (3, 64, 64, "h264"));

    // The clip carries the graph that made it, --set overrides included.
    let graph = stepstone::cli::load_graph(&clip).unwrap();
    assert_eq!(graph.nodes["candidates"].params["count"], serde_json::json!(2));
    let o = stepstone(&["validate", clip.to_str().unwrap(), "--models", &models], dir.path());
    assert!(o.status.success(), "{}", stderr(&o));
    // ... and runs again from the clip, into another format.
    let o =
        stepstone(&["run", clip.to_str().unwrap(), "--models", &models, "--out", "again.gif", "--quiet"], dir.path());
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stepstone::video::encode::decode(&dir.path().join("again.gif")).unwrap().frames.len(), 3);

    // A clip without a graph, and an unknown extension, are named.
    std::fs::write(dir.path().join("plain.gif"), b"GIF89a\x01\x00\x01\x00\x00\x00\x00;").unwrap();
    let o = stepstone(&["run", "plain.gif"], dir.path());
    assert!(!o.status.success() && stderr(&o).contains("carries no stepstone graph"), "{}", stderr(&o));
    let o = stepstone(&["run", &preset, "--models", &models, "--out", "clip.avi", "--quiet"], dir.path());
    assert!(!o.status.success() && stderr(&o).contains("unknown clip format '.avi'"), "{}", stderr(&o));
}

#[test]
fn bench_times_a_full_size_network_with_random_weights_and_prints_json() {
    let dir = tempfile::tempdir().unwrap();
    let o = stepstone(&["bench", "--case", "clip", "--repeat", "2"], dir.path());
    assert!(o.status.success(), "{}", stderr(&o));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(report["device"], "cpu");
    let case = &report["cases"][0];
    assert_eq!((case["case"].as_str(), case["runs_ms"].as_array().map(Vec::len)), (Some("clip"), Some(2)));
    let (min, median) = (case["min_ms"].as_f64().unwrap(), case["median_ms"].as_f64().unwrap());
    assert!(min > 0.0 && min <= median, "{case}");
    assert!(report["peak_rss_kb"].as_u64().unwrap() > 100_000, "CLIP ViT-L/14 alone is ~490 MB of f32: {report}");
    // The rate cases report GFLOP/s consistent with their time: 2 x 2 x 8^2 x 2880 x 320 flops per run.
    let o = stepstone(&["bench", "--case", "conv", "--case", "matmul", "--size", "8", "--repeat", "2"], dir.path());
    assert!(o.status.success(), "{}", stderr(&o));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    for (i, name) in ["conv", "matmul"].into_iter().enumerate() {
        let case = &report["cases"][i];
        assert_eq!(case["case"].as_str(), Some(name), "{report}");
        let (min, gflops) = (case["min_ms"].as_f64().unwrap(), case["gflops"].as_f64().unwrap());
        let expected = 2.0 * 2.0 * 64.0 * 2880.0 * 320.0 / (min / 1000.0) / 1e9;
        assert!(gflops > 0.0 && (gflops - expected).abs() <= 0.051 + expected * 1e-9, "{case}");
    }
    assert!(report["cases"][0].get("frames").is_none() && report["cases"][1].get("steps").is_none(), "{report}");
    // The attention case: 4 x (2 x 8 heads) x 64^2 tokens^2 x 40 flops per run.
    let o = stepstone(&["bench", "--case", "attention", "--size", "8", "--repeat", "2"], dir.path());
    assert!(o.status.success(), "{}", stderr(&o));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let case = &report["cases"][0];
    let (min, gflops) = (case["min_ms"].as_f64().unwrap(), case["gflops"].as_f64().unwrap());
    let expected = 4.0 * 16.0 * 64.0 * 64.0 * 40.0 / (min / 1000.0) / 1e9;
    assert!(case["case"] == "attention" && gflops > 0.0 && (gflops - expected).abs() <= 0.051, "{case}");
    let o = stepstone(&["bench", "--case", "unet", "--size", "12"], dir.path());
    assert!(!o.status.success() && stderr(&o).contains("--size 12"), "{}", stderr(&o));
    let o = stepstone(&["bench", "--case", "video-unet", "--frames", "33"], dir.path());
    assert!(!o.status.success() && stderr(&o).contains("--frames 33"), "{}", stderr(&o));
    let o = stepstone(&["bench", "--case", "clip", "--dtype", "f16"], dir.path());
    assert!(!o.status.success() && stderr(&o).contains("the CPU back-end computes in f32"), "{}", stderr(&o));
}

/// The full-size SD 1.5 UNet (860M parameters) at the smallest latent it takes: the smoke test of the UNet
/// case (fields, not speed).
#[test]
fn bench_runs_the_full_size_unet_at_a_tiny_latent() {
    let dir = tempfile::tempdir().unwrap();
    let o = stepstone(&["bench", "--case", "unet", "--size", "8", "--repeat", "1"], dir.path());
    assert!(o.status.success(), "{}", stderr(&o));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!((report["attention"].as_str(), report["dtype"].as_str()), (Some("fused"), Some("f32")));
    let case = &report["cases"][0];
    assert_eq!((case["case"].as_str(), case["size"].as_u64()), (Some("unet"), Some(8)), "{report}");
    assert_eq!(case["runs_ms"].as_array().map(Vec::len), Some(1), "{case}");
    assert!(case["min_ms"].as_f64().unwrap() > 0.0, "{case}");
    assert!(report["peak_rss_kb"].as_u64().unwrap() > 3_000_000, "860M f32 parameters: {report}");
}

/// `--memory-limit`: a limit the demo cannot fit refuses its first generation node with the estimate, and
/// writes no clip.
#[test]
fn run_refuses_settings_beyond_the_memory_limit() {
    let dir = tempfile::tempdir().unwrap();
    let o = run_small(dir.path(), &demo_preset(), &["--out", "clip.mp4", "--memory-limit", "1"]);
    let err = stderr(&o);
    assert!(!o.status.success(), "{err}");
    assert!(err.contains("candidates") && err.contains("not enough memory"), "{err}");
    assert!(err.contains("the memory limit is 0.0 GB (--memory-limit)"), "{err}");
    assert!(!dir.path().join("out/clip.mp4").exists() && !dir.path().join("clip.mp4").exists());
}

/// `bench --estimate-only`: memory planning's figures for the reference run (16 frames at 512x512) without
/// running it; sequential guidance needs less than batched, and both more than the weights.
#[test]
fn bench_estimates_the_reference_run_without_running_it() {
    let dir = tempfile::tempdir().unwrap();
    let estimate = |cfg: &str| {
        let args =
            ["bench", "--case", "i4vgen", "--size", "64", "--frames", "16", "--estimate-only", "--cfg-batch", cfg];
        let o = stepstone(&args, dir.path());
        assert!(o.status.success(), "{}", stderr(&o));
        let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let case = report["cases"][0].clone();
        assert_eq!(case["runs_ms"].as_array().map(Vec::len), Some(0), "{case}");
        assert!(case["min_ms"].is_null(), "{case}");
        (case["estimated_peak_mb"].as_f64().unwrap(), case["estimated_weights_mb"].as_f64().unwrap())
    };
    let (together, weights) = estimate("together");
    let (sequential, same_weights) = estimate("sequential");
    assert_eq!(weights, same_weights);
    // UNet + motion modules + VAE in f32: about 5.6 GB.
    assert!((5_000.0..6_500.0).contains(&weights), "{weights}");
    assert!(weights < sequential && sequential < together, "{weights} < {sequential} < {together}");
}

/// `run --dtype f16 --device wgpu`: the whole demo graph in half precision (weights cast at load, every
/// activation f16) writes a clip; the CPU refuses f16, naming it.
#[test]
fn run_in_half_precision_on_wgpu_writes_a_clip() {
    let dir = tempfile::tempdir().unwrap();
    let o = run_small(dir.path(), &demo_preset(), &["--out", "half.mp4", "--dtype", "f16"]);
    let refused = stderr(&o).contains("--dtype f16: the CPU back-end computes in f32");
    assert!(!o.status.success() && refused, "{}", stderr(&o));
    let o = run_small(dir.path(), &demo_preset(), &["--out", "half.mp4", "--dtype", "f16", "--device", "wgpu"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let back = stepstone::video::encode::decode(&dir.path().join("half.mp4")).unwrap();
    assert_eq!((back.frames.len(), back.width, back.height), (3, 64, 64));
}

/// The shipped demo preset.
fn demo_preset() -> PathBuf {
    PathBuf::from(repo("graphs/i4vgen_demo.json"))
}

/// `stepstone cache info|clear` on the result cache folder ($STEPSTONE_CACHE_DIR): counts the entries, and
/// clear removes them, and nothing else in the folder.
#[test]
fn cache_info_and_clear() {
    use stepstone::runtime::NodeOutputs;
    use stepstone::runtime::cache::CacheKey;
    use stepstone::runtime::disk_cache::{DEFAULT_LIMIT_BYTES, DiskCache};
    use stepstone::values::PromptValue;

    let dir = tempfile::tempdir().unwrap();
    let cache_dir = dir.path().join("results");
    let disk = DiskCache::open(&cache_dir, DEFAULT_LIMIT_BYTES).unwrap();
    for i in 0..3u8 {
        let outputs =
            NodeOutputs::new().with("prompt", PromptValue { positive: format!("p{i}"), negative: String::new() });
        assert!(disk.store(&CacheKey([i; 32]), "prompt", &outputs));
    }
    std::fs::write(cache_dir.join("keep.txt"), b"not ours").unwrap();
    let cache = |action: &str| {
        let o = Command::new(env!("CARGO_BIN_EXE_stepstone"))
            .args(["cache", action])
            .env("STEPSTONE_CACHE_DIR", &cache_dir)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let info = cache("info");
    assert!(info.contains("3 entries") && info.contains(&cache_dir.display().to_string()), "{info}");
    assert!(cache("clear").contains("removed 3 entries"));
    assert!(cache("info").contains("0 entries"));
    assert!(cache_dir.join("keep.txt").is_file(), "only stepstone's own files are deleted");
}
