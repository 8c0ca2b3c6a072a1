//! Engine and worker behaviour, with test-only node kinds that count their evaluations.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use stepstone::graph::{
    Graph, KindRegistry, KindSpec, Node, ParamSpec, ParamType, PathRole, PortRef, PortSpec, PortType,
};
use stepstone::runtime::{Engine, EvalContext, Evaluators, Event, NodeError, NodeOutputs, RunOutcome, Worker};

const SOURCE: KindSpec = KindSpec {
    id: "source",
    title: "Source",
    category: "Test",
    version: 1,
    description: "an integer parameter",
    inputs: &[],
    outputs: &[PortSpec::output("out", PortType::Int, "value")],
    params: &[ParamSpec::new("value", ParamType::Int { default: 1, min: -1000, max: 1000 }, "value")],
    is_output: false,
    pick: None,
    more: None,
};
const ADD: KindSpec = KindSpec {
    id: "add",
    title: "Add",
    category: "Test",
    version: 1,
    description: "a + b + offset",
    inputs: &[PortSpec::required("a", PortType::Int, "a"), PortSpec::optional("b", PortType::Int, "b")],
    outputs: &[PortSpec::output("out", PortType::Int, "sum")],
    params: &[
        ParamSpec::new("offset", ParamType::Int { default: 0, min: -1000, max: 1000 }, "offset"),
        ParamSpec::new("scale", ParamType::Float { default: 1.0, min: 0.0, max: 10.0 }, "scale"),
    ],
    is_output: false,
    pick: None,
    more: None,
};
const SLOW: KindSpec = KindSpec {
    id: "slow",
    title: "Slow",
    category: "Test",
    version: 1,
    description: "steps of work, each reported",
    inputs: &[PortSpec::required("x", PortType::Int, "x")],
    outputs: &[PortSpec::output("out", PortType::Int, "x + steps")],
    params: &[
        ParamSpec::new("steps", ParamType::Int { default: 10, min: 1, max: 10_000 }, "steps"),
        ParamSpec::new("step_ms", ParamType::Int { default: 0, min: 0, max: 1000 }, "sleep per step"),
    ],
    is_output: false,
    pick: None,
    more: None,
};
const FAIL: KindSpec = KindSpec {
    id: "fail",
    title: "Fail",
    category: "Test",
    version: 1,
    description: "fails or panics on request",
    inputs: &[PortSpec::required("x", PortType::Int, "x")],
    outputs: &[PortSpec::output("out", PortType::Int, "x")],
    params: &[
        ParamSpec::new("fail", ParamType::Bool { default: true }, "fail"),
        ParamSpec::new("panic", ParamType::Bool { default: false }, "panic"),
        ParamSpec::new("panic_text", ParamType::Text { default: "deliberate panic", multiline: false }, "its message"),
    ],
    is_output: false,
    pick: None,
    more: None,
};
const FILE: KindSpec = KindSpec {
    id: "file",
    title: "File",
    category: "Test",
    version: 1,
    description: "size of an input file",
    inputs: &[],
    outputs: &[PortSpec::output("out", PortType::Int, "size")],
    params: &[ParamSpec::new("path", ParamType::Path { default: "", role: PathRole::InputFile }, "file")],
    is_output: false,
    pick: None,
    more: None,
};
const LOADER: KindSpec = KindSpec {
    id: "loader",
    title: "Loader",
    category: "Test",
    version: 1,
    description: "a model handle through the model cache",
    inputs: &[],
    outputs: &[PortSpec::output("out", PortType::Int, "model size")],
    params: &[ParamSpec::new("path", ParamType::Path { default: "", role: PathRole::Model }, "model")],
    is_output: false,
    pick: None,
    more: None,
};
const SINK: KindSpec = KindSpec {
    id: "sink",
    title: "Sink",
    category: "Test",
    version: 1,
    description: "an output node that records what it sees",
    inputs: &[PortSpec::required("x", PortType::Int, "x")],
    outputs: &[],
    params: &[],
    is_output: true,
    pick: None,
    more: None,
};

/// Evaluation counts per node id, and the values sinks saw.
#[derive(Clone, Default)]
struct Log {
    counts: Arc<Mutex<BTreeMap<String, usize>>>,
    sunk: Arc<Mutex<BTreeMap<String, i64>>>,
}

impl Log {
    fn count(&self, ctx: &EvalContext<'_>) {
        *self.counts.lock().unwrap().entry(ctx.node.to_string()).or_default() += 1;
    }
    fn counts(&self) -> BTreeMap<String, usize> {
        self.counts.lock().unwrap().clone()
    }
    /// Nodes evaluated since `before`.
    fn ran_since(&self, before: &BTreeMap<String, usize>) -> BTreeSet<String> {
        self.counts().into_iter().filter(|(k, v)| before.get(k) != Some(v)).map(|(k, _)| k).collect()
    }
    fn sunk(&self, node: &str) -> Option<i64> {
        self.sunk.lock().unwrap().get(node).copied()
    }
}

fn int(ctx: &EvalContext<'_>, port: &str) -> Result<i64, NodeError> {
    ctx.input::<i64>(port).copied()
}

fn test_engine(log: &Log, models_dir: PathBuf) -> Engine {
    let mut reg = KindRegistry::empty();
    for k in [SOURCE, ADD, SLOW, FAIL, FILE, LOADER, SINK] {
        reg.register(k);
    }
    let mut ev = Evaluators::new();
    let l = log.clone();
    ev.register("source", move |ctx: &mut EvalContext<'_>| {
        l.count(ctx);
        Ok(NodeOutputs::new().with("out", ctx.param_i64("value")?))
    });
    let l = log.clone();
    ev.register("add", move |ctx: &mut EvalContext<'_>| {
        l.count(ctx);
        let b = ctx.optional_input::<i64>("b")?.copied().unwrap_or(0);
        let sum = (int(ctx, "a")? + b + ctx.param_i64("offset")?) as f64 * ctx.param_f64("scale")?;
        Ok(NodeOutputs::new().with("out", sum as i64))
    });
    let l = log.clone();
    ev.register("slow", move |ctx: &mut EvalContext<'_>| {
        l.count(ctx);
        let steps = ctx.param_i64("steps")? as u64;
        let ms = ctx.param_i64("step_ms")? as u64;
        for i in 0..steps {
            std::thread::sleep(Duration::from_millis(ms));
            ctx.progress(i + 1, steps)?;
        }
        Ok(NodeOutputs::new().with("out", int(ctx, "x")? + steps as i64))
    });
    let l = log.clone();
    ev.register("fail", move |ctx: &mut EvalContext<'_>| {
        l.count(ctx);
        if ctx.param_bool("panic")? {
            panic!("{}", ctx.param_str("panic_text")?);
        }
        if ctx.param_bool("fail")? {
            return Err(NodeError::Failed("boom".into()));
        }
        Ok(NodeOutputs::new().with("out", int(ctx, "x")?))
    });
    let l = log.clone();
    ev.register("file", move |ctx: &mut EvalContext<'_>| {
        l.count(ctx);
        let path = PathBuf::from(ctx.param_str("path")?);
        let len = std::fs::metadata(&path).map_err(|e| NodeError::File { path, message: e.to_string() })?.len();
        Ok(NodeOutputs::new().with("out", len as i64))
    });
    let l = log.clone();
    ev.register("loader", move |ctx: &mut EvalContext<'_>| {
        l.count(ctx);
        let path = ctx.file("path")?;
        let model = ctx.models.get_or_load(&path.display().to_string(), || {
            std::fs::read(&path).map_err(|e| NodeError::File { path: path.clone(), message: e.to_string() })
        })?;
        Ok(NodeOutputs::new().with("out", model.len() as i64))
    });
    let l = log.clone();
    ev.register("sink", move |ctx: &mut EvalContext<'_>| {
        l.count(ctx);
        let x = int(ctx, "x")?;
        l.sunk.lock().unwrap().insert(ctx.node.to_string(), x);
        Ok(NodeOutputs::new())
    });
    // The test is the user: its input files may be read.
    let engine = Engine::new(reg, ev, models_dir);
    let mut access = engine.access().clone();
    access.allow_inputs = true;
    engine.with_access(access)
}

fn registry(engine: &Engine) -> KindRegistry {
    engine.registry().clone()
}

fn link(g: &mut Graph, reg: &KindRegistry, from: &str, to: &str) {
    g.connect(reg, PortRef::parse(from).unwrap(), PortRef::parse(to).unwrap()).unwrap();
}

/// src -> a -> b -> out_ab (sink)
///   \--> c -> out_c (sink)
/// other -> unused (nobody pulls it: no sink)
fn diamond(engine: &Engine) -> Graph {
    let reg = registry(engine);
    let mut g = Graph::new();
    g.insert_node("src", Node::new("source").with_param("value", 2));
    g.insert_node("a", Node::new("add").with_param("offset", 1));
    g.insert_node("b", Node::new("add").with_param("offset", 10));
    g.insert_node("c", Node::new("add").with_param("offset", 100));
    g.insert_node("out_ab", Node::new("sink"));
    g.insert_node("out_c", Node::new("sink"));
    g.insert_node("other", Node::new("source"));
    g.insert_node("unused", Node::new("add"));
    link(&mut g, &reg, "src.out", "a.a");
    link(&mut g, &reg, "a.out", "b.a");
    link(&mut g, &reg, "b.out", "out_ab.x");
    link(&mut g, &reg, "src.out", "c.a");
    link(&mut g, &reg, "c.out", "out_c.x");
    link(&mut g, &reg, "other.out", "unused.a");
    g
}

fn run(engine: &mut Engine, g: &Graph, targets: &[&str]) -> (RunOutcome, Vec<Event>) {
    let targets: Vec<String> = targets.iter().map(|s| s.to_string()).collect();
    let mut events = Vec::new();
    let outcome = engine.run(g, &targets, 1, &mut |e| events.push(e), &|| false);
    (outcome, events)
}

fn set(set: &[&str]) -> BTreeSet<String> {
    set.iter().map(|s| s.to_string()).collect()
}

#[test]
fn only_nodes_feeding_the_requested_outputs_run() {
    let log = Log::default();
    let mut engine = test_engine(&log, PathBuf::from("."));
    let g = diamond(&engine);
    let (outcome, _) = run(&mut engine, &g, &["out_ab"]);
    assert_eq!(outcome, RunOutcome::Completed);
    assert_eq!(log.ran_since(&BTreeMap::new()), set(&["src", "a", "b", "out_ab"]));
    assert_eq!(log.sunk("out_ab"), Some(2 + 1 + 10));

    // No targets: every output node, and still never the branch that feeds no output.
    let before = log.counts();
    let (outcome, _) = run(&mut engine, &g, &[]);
    assert_eq!(outcome, RunOutcome::Completed);
    assert_eq!(log.ran_since(&before), set(&["c", "out_c"]));
    assert_eq!(log.sunk("out_c"), Some(102));
    assert!(!log.counts().contains_key("other") && !log.counts().contains_key("unused"));
}

#[test]
fn editing_a_parameter_reruns_exactly_the_downstream_nodes_and_the_stale_query_says_so() {
    let log = Log::default();
    let mut engine = test_engine(&log, PathBuf::from("."));
    let mut g = diamond(&engine);
    run(&mut engine, &g, &[]);
    let plan = engine.plan(&g, &[]).unwrap();
    assert!(plan.stale().is_empty(), "nothing is stale after a run: {:?}", plan.stale());

    let reg = registry(&engine);
    g.set_param(&reg, "a", "offset", 5.into()).unwrap();
    let plan = engine.plan(&g, &[]).unwrap();
    assert_eq!(plan.stale().into_iter().collect::<BTreeSet<_>>(), set(&["a", "b", "out_ab"]));
    let before = log.counts();
    run(&mut engine, &g, &[]);
    assert_eq!(log.ran_since(&before), set(&["a", "b", "out_ab"]), "the stale query must match what runs");
    assert_eq!(log.sunk("out_ab"), Some(2 + 5 + 10));

    // Editing the source re-runs everything downstream of it, both branches.
    g.set_param(&reg, "src", "value", 3.into()).unwrap();
    let stale: BTreeSet<_> = engine.plan(&g, &[]).unwrap().stale().into_iter().collect();
    let before = log.counts();
    run(&mut engine, &g, &[]);
    assert_eq!(log.ran_since(&before), stale);
    assert_eq!(stale, set(&["src", "a", "b", "out_ab", "c", "out_c"]));

    // Going back to an earlier value hits the cache: nothing runs.
    g.set_param(&reg, "src", "value", 2.into()).unwrap();
    g.set_param(&reg, "a", "offset", 5.into()).unwrap();
    assert!(engine.plan(&g, &[]).unwrap().stale().is_empty());
}

#[test]
fn equal_values_written_differently_share_a_cache_entry() {
    let log = Log::default();
    let mut engine = test_engine(&log, PathBuf::from("."));
    let mut g = diamond(&engine);
    let reg = registry(&engine);
    g.set_param(&reg, "a", "scale", 2.into()).unwrap();
    run(&mut engine, &g, &["out_ab"]);
    g.set_param(&reg, "a", "scale", 2.0.into()).unwrap();
    assert!(engine.plan(&g, &["out_ab".to_string()]).unwrap().stale().is_empty(), "2 and 2.0 are the same scale");
    // An explicit default is the same as a missing parameter.
    g.set_param(&reg, "b", "scale", 1.0.into()).unwrap();
    assert!(engine.plan(&g, &["out_ab".to_string()]).unwrap().stale().is_empty());
}

#[test]
fn relinking_changes_keys_downstream_only() {
    let log = Log::default();
    let mut engine = test_engine(&log, PathBuf::from("."));
    let mut g = diamond(&engine);
    run(&mut engine, &g, &[]);
    let reg = registry(&engine);
    link(&mut g, &reg, "c.out", "b.b"); // b now also adds c's output
    let stale: BTreeSet<_> = engine.plan(&g, &[]).unwrap().stale().into_iter().collect();
    assert_eq!(stale, set(&["b", "out_ab"]));
    let before = log.counts();
    run(&mut engine, &g, &[]);
    assert_eq!(log.ran_since(&before), stale);
    assert_eq!(log.sunk("out_ab"), Some((2 + 1 + 10) + 102));
}

fn slow_chain(engine: &Engine, steps: i64, step_ms: i64) -> Graph {
    let reg = registry(engine);
    let mut g = Graph::new();
    g.insert_node("src", Node::new("source").with_param("value", 1));
    g.insert_node("pre", Node::new("add"));
    g.insert_node("slow", Node::new("slow").with_param("steps", steps).with_param("step_ms", step_ms));
    g.insert_node("post", Node::new("add"));
    g.insert_node("out", Node::new("sink"));
    link(&mut g, &reg, "src.out", "pre.a");
    link(&mut g, &reg, "pre.out", "slow.x");
    link(&mut g, &reg, "slow.out", "post.a");
    link(&mut g, &reg, "post.out", "out.x");
    g
}

#[test]
fn cancel_stops_within_one_step_and_a_rerun_reuses_completed_work() {
    let log = Log::default();
    let mut engine = test_engine(&log, PathBuf::from("."));
    let g = slow_chain(&engine, 1000, 0);
    let cancel = AtomicBool::new(false);
    let mut last_step = 0;
    let mut events = Vec::new();
    let outcome = engine.run(
        &g,
        &[],
        7,
        &mut |e| {
            if let Event::Progress { step, .. } = &e {
                last_step = *step;
                if *step == 5 {
                    cancel.store(true, Ordering::SeqCst);
                }
            }
            events.push(e);
        },
        &|| cancel.load(Ordering::SeqCst),
    );
    assert_eq!(outcome, RunOutcome::Cancelled);
    assert_eq!(last_step, 5, "the node must stop at the step where the cancel arrived");
    assert!(!events.iter().any(|e| matches!(e, Event::NodeFinished { node, .. } if node == "slow")));
    assert!(!log.counts().contains_key("post"), "nothing after the cancelled node may run");

    // The engine is ready again and keeps what completed: src and pre do not run again.
    let plan = engine.plan(&g, &[]).unwrap();
    assert_eq!(plan.stale(), vec!["slow", "post", "out"]);
    let before = log.counts();
    let (outcome, _) = run(&mut engine, &g, &[]);
    assert_eq!(outcome, RunOutcome::Completed);
    assert_eq!(log.ran_since(&before), set(&["slow", "post", "out"]));
    assert_eq!(log.sunk("out"), Some(1 + 1000));
}

#[test]
fn a_failing_node_blocks_only_its_downstream_and_keeps_upstream_results() {
    let log = Log::default();
    let mut engine = test_engine(&log, PathBuf::from("."));
    let reg = registry(&engine);
    let mut g = diamond(&engine);
    g.insert_node("f", Node::new("fail"));
    g.remove_node("b");
    g.insert_node("b", Node::new("add").with_param("offset", 10));
    link(&mut g, &reg, "a.out", "f.x");
    link(&mut g, &reg, "f.out", "b.a");
    link(&mut g, &reg, "b.out", "out_ab.x");

    let (outcome, events) = run(&mut engine, &g, &[]);
    assert_eq!(outcome, RunOutcome::Failed { failed: vec!["f".to_string()] });
    assert!(
        events.iter().any(|e| matches!(e, Event::NodeFailed { node, message, .. } if node == "f" && message == "boom"))
    );
    for skipped in ["b", "out_ab"] {
        assert!(
            events.iter().any(|e| matches!(e, Event::NodeSkipped { node, .. } if node == skipped)),
            "{skipped} must be reported as skipped"
        );
    }
    assert_eq!(log.sunk("out_c"), Some(102), "the other branch still runs");
    assert!(!log.counts().contains_key("b"));

    // Fixing the node re-runs it and its downstream, never the cached upstream.
    g.set_param(&reg, "f", "fail", false.into()).unwrap();
    let before = log.counts();
    let (outcome, _) = run(&mut engine, &g, &[]);
    assert_eq!(outcome, RunOutcome::Completed);
    assert_eq!(log.ran_since(&before), set(&["f", "b", "out_ab"]));
    assert_eq!(log.sunk("out_ab"), Some(13));
}

#[test]
fn a_panicking_node_is_reported_and_the_worker_survives() {
    let log = Log::default();
    let engine = test_engine(&log, PathBuf::from("."));
    let reg = registry(&engine);
    let mut g = slow_chain(&engine, 2, 0);
    g.insert_node("p", Node::new("fail").with_param("panic", true));
    link(&mut g, &reg, "src.out", "p.x");
    let mut worker = Worker::spawn(move || engine, None).unwrap();
    worker.set_graph(g).unwrap();
    let run_id = worker.run(vec!["p".into()]).unwrap();
    let events = collect_run(&worker, run_id);
    assert!(
        events.iter().any(|e| matches!(e, Event::NodeFailed { node, message, .. }
            if node == "p" && message.contains("panicked") && message.contains("deliberate panic"))),
        "{events:?}"
    );
    // Same worker, next run: fine, and src comes from the cache.
    let before = log.counts();
    let run_id = worker.run(vec!["out".into()]).unwrap();
    let events = collect_run(&worker, run_id);
    assert!(matches!(events.last(), Some(Event::RunFinished { outcome: RunOutcome::Completed, .. })), "{events:?}");
    assert_eq!(log.ran_since(&before), set(&["pre", "slow", "post", "out"]));
}

/// burn's GPU back-ends panic when the device runs out of memory (cubecl's `out of device memory allocating
/// N bytes`): the node fails with what to lower, the worker and its caches carry on.
#[test]
fn a_device_out_of_memory_fails_the_node_with_advice_and_the_worker_survives() {
    let log = Log::default();
    let engine = test_engine(&log, PathBuf::from("."));
    let reg = registry(&engine);
    let mut g = slow_chain(&engine, 2, 0);
    let oom = "out of device memory allocating 17179869184 bytes\nbacktrace...";
    g.insert_node("p", Node::new("fail").with_param("panic", true).with_param("panic_text", oom));
    link(&mut g, &reg, "src.out", "p.x");
    let mut worker = Worker::spawn(move || engine, None).unwrap();
    worker.set_graph(g).unwrap();
    let run_id = worker.run(vec!["p".into()]).unwrap();
    let events = collect_run(&worker, run_id);
    let message = events
        .iter()
        .find_map(|e| match e {
            Event::NodeFailed { node, message, .. } if node == "p" => Some(message.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("{events:?}"));
    let expected = "the device ran out of memory (out of device memory allocating 17179869184 bytes)";
    assert!(message.contains(expected), "{message}");
    assert!(message.contains("cfg_batch to sequential") && !message.contains("backtrace"), "{message}");
    let before = log.counts();
    let run_id = worker.run(vec!["out".into()]).unwrap();
    let events = collect_run(&worker, run_id);
    assert!(matches!(events.last(), Some(Event::RunFinished { outcome: RunOutcome::Completed, .. })), "{events:?}");
    assert_eq!(log.ran_since(&before), set(&["pre", "slow", "post", "out"]), "src came from the cache");
}

#[test]
fn input_files_are_part_of_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("in.txt");
    std::fs::write(&file, b"abc").unwrap();
    let log = Log::default();
    let mut engine = test_engine(&log, PathBuf::from("."));
    let reg = registry(&engine);
    let mut g = Graph::new();
    g.insert_node("file", Node::new("file").with_param("path", file.display().to_string()));
    g.insert_node("out", Node::new("sink"));
    link(&mut g, &reg, "file.out", "out.x");
    run(&mut engine, &g, &[]);
    assert_eq!(log.sunk("out"), Some(3));
    assert!(engine.plan(&g, &[]).unwrap().stale().is_empty());
    std::fs::write(&file, b"abcdef").unwrap();
    assert_eq!(engine.plan(&g, &[]).unwrap().stale(), vec!["file", "out"]);
    run(&mut engine, &g, &[]);
    assert_eq!(log.sunk("out"), Some(6));
}

#[test]
fn model_handles_survive_parameter_edits_and_result_cache_clears() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("weights.bin"), vec![0u8; 64]).unwrap();
    let log = Log::default();
    let mut engine = test_engine(&log, dir.path().to_path_buf());
    let reg = registry(&engine);
    let mut g = Graph::new();
    g.insert_node("load", Node::new("loader").with_param("path", "weights.bin"));
    g.insert_node("sampler", Node::new("add"));
    g.insert_node("out", Node::new("sink"));
    link(&mut g, &reg, "load.out", "sampler.a");
    link(&mut g, &reg, "sampler.out", "out.x");
    run(&mut engine, &g, &[]);
    assert_eq!((log.sunk("out"), engine.models().load_count()), (Some(64), 1));

    g.set_param(&reg, "sampler", "offset", 3.into()).unwrap();
    let before = log.counts();
    run(&mut engine, &g, &[]);
    assert_eq!(log.ran_since(&before), set(&["sampler", "out"]));
    assert_eq!(engine.models().load_count(), 1);

    // Dropping node results re-runs the loader node, but the weights stay loaded.
    engine.clear_cache(false);
    run(&mut engine, &g, &[]);
    assert_eq!(engine.models().load_count(), 1, "weights must not be reloaded");
    engine.clear_cache(true);
    run(&mut engine, &g, &[]);
    assert_eq!(engine.models().load_count(), 2);
}

#[test]
fn graph_errors_block_only_what_depends_on_them() {
    let log = Log::default();
    let mut engine = test_engine(&log, PathBuf::from("."));
    let reg = registry(&engine);
    let mut g = diamond(&engine);
    g.insert_node("a", Node::new("add").with_param("offset", 5000)); // out of range
    link(&mut g, &reg, "src.out", "a.a");
    let plan = engine.plan(&g, &[]).unwrap();
    assert_eq!(plan.blocked().into_iter().collect::<BTreeSet<_>>(), set(&["a", "b", "out_ab"]));
    let (outcome, _) = run(&mut engine, &g, &[]);
    assert!(matches!(outcome, RunOutcome::Failed { .. }), "{outcome:?}");
    assert_eq!(log.sunk("out_c"), Some(102));
    assert!(!log.counts().contains_key("a"));
}

#[test]
fn unknown_targets_and_graphs_without_outputs_are_rejected() {
    let log = Log::default();
    let mut engine = test_engine(&log, PathBuf::from("."));
    let g = diamond(&engine);
    let (outcome, _) = run(&mut engine, &g, &["nope"]);
    assert_eq!(outcome, RunOutcome::Rejected { message: "no node 'nope' in the graph".into() });
    let mut g2 = Graph::new();
    g2.insert_node("src", Node::new("source"));
    let (outcome, _) = run(&mut engine, &g2, &[]);
    assert!(matches!(outcome, RunOutcome::Rejected { message } if message.contains("no output node")));
}

/// Events of one run, up to and including its RunFinished.
fn collect_run(worker: &Worker, run_id: u64) -> Vec<Event> {
    let mut events = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while std::time::Instant::now() < deadline {
        if let Some(e) = worker.wait_event(Duration::from_millis(50)).unwrap() {
            let done = matches!(&e, Event::RunFinished { run_id: id, .. } if *id == run_id);
            events.push(e);
            if done {
                return events;
            }
        }
    }
    panic!("run {run_id} did not finish: {events:?}");
}

#[test]
fn worker_reports_progress_wakes_the_front_end_and_cancels_mid_node() {
    let log = Log::default();
    let engine = test_engine(&log, PathBuf::from("."));
    let g = slow_chain(&engine, 400, 10);
    let wakes = Arc::new(AtomicUsize::new(0));
    let w = wakes.clone();
    let mut worker = Worker::spawn(
        move || engine,
        Some(Box::new(move || {
            w.fetch_add(1, Ordering::SeqCst);
        })),
    )
    .unwrap();
    worker.set_graph(g.clone()).unwrap();

    // The stale query answers before anything runs, and matches what then starts.
    worker.query_stale(vec![]).unwrap();
    let stale = loop {
        match worker.wait_event(Duration::from_secs(10)).unwrap() {
            Some(Event::Stale { plan, .. }) => break plan.unwrap().stale(),
            Some(_) => continue,
            None => panic!("no answer to the stale query"),
        }
    };
    assert_eq!(stale, vec!["src", "pre", "slow", "post", "out"]);

    let run_id = worker.run(vec![]).unwrap();
    let mut started = Vec::new();
    let mut step_at_cancel = None;
    let mut last_step = 0;
    let outcome = loop {
        let Some(e) = worker.wait_event(Duration::from_secs(30)).unwrap() else { panic!("worker went quiet") };
        match e {
            Event::NodeStarted { node, .. } => started.push(node),
            Event::Progress { step, .. } => {
                last_step = step;
                if step >= 5 && step_at_cancel.is_none() {
                    step_at_cancel = Some(step);
                    worker.cancel();
                }
            }
            Event::RunFinished { run_id: id, outcome } if id == run_id => break outcome,
            _ => {}
        }
    };
    assert_eq!(outcome, RunOutcome::Cancelled);
    let at = step_at_cancel.unwrap();
    // Steps take 10 ms; the worker checks at every step, so it stops within a step or two of the request
    // (the margin covers a slow CI machine delivering the event late), far from the 400 it would run.
    assert!(last_step <= at + 5, "cancelled at step {at} but ran to step {last_step}");
    assert_eq!(started, vec!["src", "pre", "slow"]);
    assert!(wakes.load(Ordering::SeqCst) > 0, "the waker must be called");

    // A new run after the cancel works and reuses src and pre.
    let before = log.counts();
    let mut worker2_graph = g;
    worker2_graph.set_param(&registry_of_test(), "slow", "step_ms", 0.into()).unwrap();
    worker.set_graph(worker2_graph).unwrap();
    let run_id = worker.run(vec![]).unwrap();
    let events = collect_run(&worker, run_id);
    assert!(matches!(events.last(), Some(Event::RunFinished { outcome: RunOutcome::Completed, .. })));
    assert_eq!(log.ran_since(&before), set(&["slow", "post", "out"]));
    assert_eq!(log.sunk("out"), Some(401));
    worker.shutdown();
}

fn registry_of_test() -> KindRegistry {
    registry(&test_engine(&Log::default(), PathBuf::from(".")))
}

#[test]
fn a_cancel_reaches_runs_asked_for_before_it_and_not_after() {
    let log = Log::default();
    let engine = test_engine(&log, PathBuf::from("."));
    // Slow enough that the cancel lands before the run ends, whether or not it has started yet.
    let g = slow_chain(&engine, 1000, 10);
    let mut worker = Worker::spawn(move || engine, None).unwrap();
    worker.set_graph(g.clone()).unwrap();
    let first = worker.run(vec![]).unwrap();
    worker.cancel();
    let events = collect_run(&worker, first);
    assert!(matches!(events.last(), Some(Event::RunFinished { outcome: RunOutcome::Cancelled, .. })), "{events:?}");
    let mut fast = g;
    fast.set_param(&registry_of_test(), "slow", "step_ms", 0.into()).unwrap();
    worker.set_graph(fast).unwrap();
    let second = worker.run(vec![]).unwrap();
    let events = collect_run(&worker, second);
    assert!(matches!(events.last(), Some(Event::RunFinished { outcome: RunOutcome::Completed, .. })), "{events:?}");
}
