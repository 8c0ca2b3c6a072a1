//! Commands to the worker and the events it answers with.

use std::time::Duration;

use super::plan::Plan;
use super::{NodeOutputs, Value};
use crate::graph::{NodeId, Report};

/// Identifies one run; increases with each run a worker is asked for.
pub type RunId = u64;

/// What a front end asks the worker to do.
pub enum Command {
    /// A new graph is waiting in the worker's graph slot (the slot keeps only the newest one, so a
    /// burst of edits costs one check).
    GraphChanged,
    /// Evaluate the given nodes of the current graph (all output nodes when empty).
    Run {
        run_id: RunId,
        targets: Vec<NodeId>,
    },
    /// Which nodes would run for these targets.
    QueryStale {
        targets: Vec<NodeId>,
    },
    /// Drop cached node results; with `models`, also loaded models.
    ClearCache {
        models: bool,
    },
    /// Replace the engine's access policy (what graphs may read and write); the current graph is checked
    /// again.
    SetAccess(Box<crate::graph::AccessPolicy>),
    /// Sampling nodes preview their latents every this many steps (0: off).
    SetLivePreviews(u32),
    /// Stop the current run at the next step (the flag is set by the handle; this only wakes an idle worker).
    Cancel,
    Shutdown,
}

/// How a run ended.
#[derive(Clone, Debug, PartialEq)]
pub enum RunOutcome {
    /// Every requested node has its result.
    Completed,
    /// Cancelled; completed node results are kept.
    Cancelled,
    /// Some nodes failed (their upstream results are kept); the others ran.
    Failed { failed: Vec<NodeId> },
    /// The run could not start (no such target, no output node, ...).
    Rejected { message: String },
}

/// What the worker reports.
#[derive(Clone)]
pub enum Event {
    /// The current graph was checked: validation findings and what a run of all outputs would do.
    GraphChecked {
        report: Report,
        plan: Option<Plan>,
    },
    /// Answer to `QueryStale`.
    Stale {
        targets: Vec<NodeId>,
        plan: Result<Plan, String>,
    },
    RunStarted {
        run_id: RunId,
        plan: Plan,
    },
    NodeStarted {
        run_id: RunId,
        node: NodeId,
    },
    /// `step` of `total` units of the node's work are done (a diffusion step is the unit).
    Progress {
        run_id: RunId,
        node: NodeId,
        step: u64,
        total: u64,
    },
    /// An intermediate result to show.
    Preview {
        run_id: RunId,
        node: NodeId,
        label: String,
        value: Value,
    },
    /// A message about the node (shown on it).
    NodeNote {
        run_id: RunId,
        node: NodeId,
        text: String,
    },
    /// The node has its outputs, computed now or (`cached`) taken from the cache.
    NodeFinished {
        run_id: RunId,
        node: NodeId,
        cached: bool,
        elapsed: Duration,
        outputs: NodeOutputs,
    },
    NodeFailed {
        run_id: RunId,
        node: NodeId,
        message: String,
    },
    /// Not run because a node it depends on failed or has errors.
    NodeSkipped {
        run_id: RunId,
        node: NodeId,
        reason: String,
    },
    RunFinished {
        run_id: RunId,
        outcome: RunOutcome,
    },
    /// The run waits at a step (`paused`), or goes on.
    Paused {
        run_id: RunId,
        paused: bool,
    },
    CacheCleared {
        models: bool,
    },
    /// A node's result found in the cache when the graph was checked (after an open or a restart), so a
    /// front end shows it without a run. Sent once per node and cache key.
    Restored {
        node: NodeId,
        outputs: NodeOutputs,
    },
    /// The graph slot was empty when a check was asked for, or the worker hit an internal problem.
    WorkerMessage {
        text: String,
    },
}

impl Event {
    /// The run an event belongs to, if any.
    pub fn run_id(&self) -> Option<RunId> {
        match self {
            Event::RunStarted { run_id, .. }
            | Event::NodeStarted { run_id, .. }
            | Event::Progress { run_id, .. }
            | Event::Preview { run_id, .. }
            | Event::NodeNote { run_id, .. }
            | Event::NodeFinished { run_id, .. }
            | Event::NodeFailed { run_id, .. }
            | Event::NodeSkipped { run_id, .. }
            | Event::RunFinished { run_id, .. }
            | Event::Paused { run_id, .. } => Some(*run_id),
            _ => None,
        }
    }
}

impl std::fmt::Debug for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Event::GraphChecked { report, .. } => write!(f, "GraphChecked({} messages)", report.messages.len()),
            Event::Stale { targets, plan } => write!(f, "Stale({targets:?}, {:?})", plan.as_ref().map(Plan::stale)),
            Event::RunStarted { run_id, plan } => write!(f, "RunStarted({run_id}, stale {:?})", plan.stale()),
            Event::NodeStarted { run_id, node } => write!(f, "NodeStarted({run_id}, {node})"),
            Event::Progress { node, step, total, .. } => write!(f, "Progress({node} {step}/{total})"),
            Event::Preview { node, label, .. } => write!(f, "Preview({node}, {label})"),
            Event::NodeNote { node, text, .. } => write!(f, "NodeNote({node}: {text})"),
            Event::NodeFinished { node, cached, .. } => write!(f, "NodeFinished({node}, cached {cached})"),
            Event::NodeFailed { node, message, .. } => write!(f, "NodeFailed({node}: {message})"),
            Event::NodeSkipped { node, reason, .. } => write!(f, "NodeSkipped({node}: {reason})"),
            Event::RunFinished { run_id, outcome } => write!(f, "RunFinished({run_id}, {outcome:?})"),
            Event::Paused { run_id, paused } => write!(f, "Paused({run_id}, {paused})"),
            Event::CacheCleared { models } => write!(f, "CacheCleared(models {models})"),
            Event::Restored { node, .. } => write!(f, "Restored({node})"),
            Event::WorkerMessage { text } => write!(f, "WorkerMessage({text})"),
        }
    }
}
