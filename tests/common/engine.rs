//! The engine as the node tests drive it: the demo models' engine, a run that records what happened, and
//! parameter edits.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use stepstone::graph::Graph;
use stepstone::runtime::{Engine, Event, RunOutcome};

pub fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

pub fn engine() -> Engine {
    // The tests are the user here: the images they name may be read.
    let engine = stepstone::builtin_engine(repo("assets/demo-models"));
    let mut access = engine.access().clone();
    access.allow_inputs = true;
    engine.with_access(access)
}

pub fn set(g: &mut Graph, node: &str, param: &str, value: serde_json::Value) {
    g.set_param(&stepstone::nodes::registry(), node, param, value).unwrap_or_else(|e| panic!("{node}.{param}: {e}"));
}

/// What one run did.
#[derive(Default)]
pub struct Ran {
    pub outcome: Option<RunOutcome>,
    /// Nodes evaluated (not taken from the cache), in order.
    pub evaluated: Vec<String>,
    pub outputs: BTreeMap<String, stepstone::runtime::NodeOutputs>,
    pub notes: Vec<(String, String)>,
    pub failures: BTreeMap<String, String>,
    pub skipped: BTreeMap<String, String>,
    /// Previews by node: (label, value).
    pub previews: Vec<(String, String, stepstone::values::Value)>,
}

impl Ran {
    pub fn output<T: stepstone::values::PortValue>(&self, node: &str, port: &str) -> &T {
        self.outputs
            .get(node)
            .and_then(|o| o.get::<T>(port))
            .unwrap_or_else(|| panic!("no output {node}.{port}; failures: {:?}", self.failures))
    }
    pub fn notes_of(&self, node: &str) -> Vec<&str> {
        self.notes.iter().filter(|(n, _)| n == node).map(|(_, t)| t.as_str()).collect()
    }
    pub fn completed(&self) -> bool {
        self.outcome == Some(RunOutcome::Completed)
    }
}

pub fn run(engine: &mut Engine, graph: &Graph, targets: &[&str]) -> Ran {
    let targets: Vec<String> = targets.iter().map(|t| t.to_string()).collect();
    let mut ran = Ran::default();
    let outcome = engine.run(
        graph,
        &targets,
        1,
        &mut |event| match event {
            Event::NodeFinished { node, cached, outputs, .. } => {
                if !cached {
                    ran.evaluated.push(node.clone());
                }
                ran.outputs.insert(node, outputs);
            }
            Event::NodeNote { node, text, .. } => ran.notes.push((node, text)),
            Event::Preview { node, label, value, .. } => ran.previews.push((node, label, value)),
            Event::WorkerMessage { text } => ran.notes.push(("(worker)".to_string(), text)),
            Event::NodeFailed { node, message, .. } => {
                ran.failures.insert(node, message);
            }
            Event::NodeSkipped { node, reason, .. } => {
                ran.skipped.insert(node, reason);
            }
            _ => {}
        },
        &|| false,
    );
    ran.outcome = Some(outcome);
    ran
}

pub fn sorted(v: &[String]) -> Vec<&str> {
    let mut v: Vec<&str> = v.iter().map(String::as_str).collect();
    v.sort_unstable();
    v
}
