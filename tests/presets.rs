//! Shipped presets, preset round trips, and every validation message.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use serde_json::json;
use stepstone::graph::{
    Graph, Node, PortRef, ResolvedParams, Severity, ValidateOptions, load_preset, parse_preset, to_preset_string,
    validate,
};

fn graphs_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("graphs")
}

fn shipped() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(graphs_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    v.sort();
    v
}

#[test]
fn shipped_presets_round_trip_byte_for_byte_and_validate() {
    let reg = stepstone::nodes::registry();
    let presets = shipped();
    assert!(presets.len() >= 2, "graphs/ must ship the I4VGen and vanilla presets");
    for path in presets {
        let text = std::fs::read_to_string(&path).unwrap();
        let graph = load_preset(&path).unwrap();
        assert_eq!(to_preset_string(&graph), text, "{} is not in canonical form", path.display());
        // A preset is someone else's data: the files it names to read wait for the user's permission, and
        // nothing else is in question.
        let report = validate(&graph, &reg, &ValidateOptions::default());
        for m in &report.messages {
            let text = m.to_string();
            assert!(text.contains("names a file to read"), "{}:\n{report}", path.display());
        }
        // With the permission given, from the repository, the bundled input files exist.
        let mut options = ValidateOptions { check_inputs: true, ..ValidateOptions::default() };
        options.access.allow_inputs = true;
        options.access.work_dir = Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf();
        let report = validate(&graph, &reg, &options);
        assert!(report.messages.is_empty(), "{}:\n{report}", path.display());
    }
}

fn params(graph: &Graph, node: &str) -> ResolvedParams {
    let reg = stepstone::nodes::registry();
    let n = &graph.nodes[node];
    ResolvedParams::resolve(reg.get(&n.kind).unwrap(), n)
}

#[test]
fn i4vgen_preset_carries_the_reference_defaults() {
    let g = load_preset(&graphs_dir().join("i4vgen_animatediff.json")).unwrap();
    let c = params(&g, "candidates");
    assert_eq!((c.i64("count"), c.i64("width"), c.i64("height")), (Some(16), Some(512), Some(512)));
    assert_eq!((c.i64("steps"), c.f64("cfg")), (Some(25), Some(7.5)));
    let a = params(&g, "animator");
    assert_eq!((a.i64("frames"), a.f64("p_ni_vsds")), (Some(16), Some(0.6)));
    assert_eq!(a.f64_list("step_sizes"), Some(vec![10.0, 10.0, 10.0, 1.0]));
    let r = params(&g, "regenerator");
    assert_eq!((r.f64("strength"), r.i64("steps"), r.f64("cfg")), (Some(1.0), Some(25), Some(7.5)));
    for node in ["candidates", "animator", "regenerator"] {
        let p = params(&g, node);
        assert_eq!(p.str("beta_schedule"), Some("linear"), "{node}");
        assert_eq!((p.f64("beta_start"), p.f64("beta_end")), (Some(0.00085), Some(0.012)), "{node}");
    }
    assert_eq!(params(&g, "selector").str("mode"), Some("reward"));
    assert_eq!(params(&g, "prompt").str("negative"), Some(""));
    assert_eq!(params(&g, "export").f64("fps"), Some(8.0));
    // The whole I4VGen chain is wired: the regenerator's video comes from the animator, whose anchor
    // comes from the selector.
    assert!(g.link_into(&PortRef::new("regenerator", "video")).is_some_and(|l| l.from.node == "animator"));
    assert!(g.link_into(&PortRef::new("animator", "anchor")).is_some_and(|l| l.from.node == "selector"));
}

#[test]
fn vanilla_preset_uses_the_same_model_and_sampler_settings() {
    let g = load_preset(&graphs_dir().join("vanilla_animatediff.json")).unwrap();
    let i4v = load_preset(&graphs_dir().join("i4vgen_animatediff.json")).unwrap();
    assert_eq!(g.nodes["checkpoint"].params, i4v.nodes["checkpoint"].params);
    assert_eq!(g.nodes["motion"].params, i4v.nodes["motion"].params);
    let t = params(&g, "t2v");
    assert_eq!((t.i64("frames"), t.i64("steps"), t.f64("cfg")), (Some(16), Some(25), Some(7.5)));
    assert_eq!(t.str("beta_schedule"), Some("linear"));
}

const UNKNOWN: &str = r#"{
  "format": "stepstone-graph",
  "version": 1,
  "nodes": [
    {"id": "p", "kind": "prompt", "params": {"positive": "x", "sparkle": 11}},
    {"id": "w", "kind": "warp_drive", "params": {"factor": 9}, "note": "from the future"}
  ],
  "links": [{"from": "p.prompt", "to": "w.text"}]
}"#;

#[test]
fn unknown_kinds_and_parameters_are_kept_and_reported() {
    let g = parse_preset(UNKNOWN, "unknown.json").unwrap();
    let report = validate(&g, &stepstone::nodes::registry(), &ValidateOptions::default());
    let w: Vec<_> = report.for_node("w").collect();
    assert!(
        w.iter().any(|m| m.severity == Severity::Error && m.text.contains("unknown node kind 'warp_drive'")),
        "{report}"
    );
    let p: Vec<_> = report.for_node("p").collect();
    assert!(
        p.iter().any(|m| m.severity == Severity::Warning && m.text.contains("unknown parameter 'sparkle'")),
        "{report}"
    );
    let saved = to_preset_string(&g);
    let back = parse_preset(&saved, "saved").unwrap();
    assert_eq!(back, g, "nothing may be dropped");
    assert_eq!(back.nodes["w"].params["factor"], json!(9));
    assert_eq!(back.nodes["w"].extra["note"], json!("from the future"));
    assert_eq!(back.nodes["p"].params["sparkle"], json!(11));
    assert_eq!(back.links.len(), 1);
}

/// The errors validation reports for one node of a small graph built by `build`.
fn errors_for(build: impl FnOnce(&mut Graph), node: &str, options: &ValidateOptions) -> Vec<String> {
    let mut g = Graph::new();
    build(&mut g);
    let report = validate(&g, &stepstone::nodes::registry(), options);
    report.for_node(node).filter(|m| m.severity == Severity::Error).map(|m| m.text.clone()).collect()
}

fn link(g: &mut Graph, from: &str, to: &str) {
    // Inserted directly (not through `connect`), as a hand-edited file could have it.
    g.links.insert(stepstone::graph::Link { from: PortRef::parse(from).unwrap(), to: PortRef::parse(to).unwrap() });
}

fn any(errors: &[String], needle: &str) -> bool {
    errors.iter().any(|e| e.contains(needle))
}

#[test]
fn validation_reports_each_problem_on_its_node() {
    let none = ValidateOptions::default();

    let e = errors_for(|g| g.insert_node("c", Node::new("t2i_candidates")), "c", &none);
    assert!(any(&e, "required input 'model' (checkpoint) is not connected"), "{e:?}");
    assert!(any(&e, "required input 'prompt' (prompt) is not connected"), "{e:?}");

    let e = errors_for(
        |g| {
            g.insert_node("p", Node::new("prompt"));
            g.insert_node("c", Node::new("t2i_candidates"));
            link(g, "p.prompt", "c.model");
        },
        "c",
        &none,
    );
    assert!(any(&e, "type mismatch: output is prompt, input 'model' takes checkpoint"), "{e:?}");

    let e = errors_for(|g| g.insert_node("c", Node::new("t2i_candidates").with_param("cfg", 99.0)), "c", &none);
    assert!(any(&e, "parameter 'cfg': 99 is out of range: expected a number in 0..=30"), "{e:?}");
    let e = errors_for(|g| g.insert_node("c", Node::new("t2i_candidates").with_param("steps", "many")), "c", &none);
    assert!(any(&e, "parameter 'steps': expected an integer in 1..=1000, found text \"many\""), "{e:?}");
    let e = errors_for(|g| g.insert_node("c", Node::new("t2i_candidates").with_param("width", 500)), "c", &none);
    assert!(any(&e, "'width': 500 is not a multiple of 8"), "{e:?}");

    let e = errors_for(|g| g.insert_node("x", Node::new("teleporter")), "x", &none);
    assert!(any(&e, "unknown node kind 'teleporter'"), "{e:?}");

    let e = errors_for(
        |g| {
            g.insert_node("p", Node::new("prompt"));
            link(g, "p.prompt", "ghost.prompt");
        },
        "p",
        &none,
    );
    assert!(any(&e, "there is no node 'ghost'"), "{e:?}");

    let e = errors_for(
        |g| {
            g.insert_node("p", Node::new("prompt"));
            g.insert_node("c", Node::new("t2i_candidates"));
            link(g, "p.words", "c.prompt");
        },
        "c",
        &none,
    );
    assert!(any(&e, "node 'p' (prompt) has no output 'words'"), "{e:?}");

    let e = errors_for(
        |g| {
            g.insert_node("p", Node::new("prompt"));
            g.insert_node("q", Node::new("prompt"));
            g.insert_node("c", Node::new("t2i_candidates"));
            link(g, "p.prompt", "c.prompt");
            link(g, "q.prompt", "c.prompt");
        },
        "c",
        &none,
    );
    assert!(any(&e, "input 'prompt' has 2 links; an input takes one"), "{e:?}");

    let e = errors_for(
        |g| {
            g.insert_node("s", Node::new("candidate_selector"));
        },
        "s",
        &none,
    );
    assert!(any(&e, "mode \"reward\" needs input 'reward' (reward model)"), "{e:?}");
    let e = errors_for(
        |g| {
            g.insert_node("s", Node::new("candidate_selector").with_param("mode", "manual"));
        },
        "s",
        &none,
    );
    assert!(!any(&e, "reward model"), "manual mode needs no reward model: {e:?}");

    let e = errors_for(|g| g.insert_node("bad id!", Node::new("prompt")), "bad id!", &none);
    assert!(any(&e, "node ids may use only"), "{e:?}");

    let e = errors_for(|g| g.insert_node("ck", Node::new("load_checkpoint")), "ck", &none);
    assert!(any(&e, "parameter 'path': no model file chosen"), "{e:?}");
}

#[test]
fn validation_finds_cycles() {
    let mut g = Graph::new();
    g.insert_node("ck", Node::new("load_checkpoint").with_param("path", "m"));
    g.insert_node("mm", Node::new("load_motion_module").with_param("path", "mm"));
    g.insert_node("p", Node::new("prompt"));
    g.insert_node("r1", Node::new("regenerator"));
    g.insert_node("r2", Node::new("regenerator"));
    for r in ["r1", "r2"] {
        link(&mut g, "ck.model", &format!("{r}.model"));
        link(&mut g, "mm.motion", &format!("{r}.motion"));
        link(&mut g, "p.prompt", &format!("{r}.prompt"));
    }
    link(&mut g, "r1.video", "r2.video");
    link(&mut g, "r2.video", "r1.video");
    let report = validate(&g, &stepstone::nodes::registry(), &ValidateOptions::default());
    for node in ["r1", "r2"] {
        assert!(report.for_node(node).any(|m| m.text.contains("part of a cycle")), "{node}: {report}");
    }
    assert!(!report.for_node("p").any(|m| m.text.contains("cycle")), "{report}");
}

#[test]
fn missing_model_files_name_the_file_and_the_models_directory() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("present.safetensors"), b"").unwrap();
    let options = ValidateOptions {
        access: stepstone::graph::AccessPolicy::new(dir.path(), "out"),
        check_models: true,
        check_inputs: false,
    };
    let e = errors_for(
        |g| g.insert_node("ck", Node::new("load_checkpoint").with_param("path", "absent.safetensors")),
        "ck",
        &options,
    );
    let expected =
        format!("model file 'absent.safetensors' not found in the models directory '{}'", dir.path().display());
    assert!(any(&e, &expected), "{e:?}");
    let e = errors_for(
        |g| g.insert_node("ck", Node::new("load_checkpoint").with_param("path", "present.safetensors")),
        "ck",
        &options,
    );
    assert!(e.is_empty(), "{e:?}");
}
