//! The evaluation engine: lazy, cached, cancellable evaluation of a graph on a background worker.
//!
//! - [`engine::Engine`] plans and runs a graph synchronously (tests and the worker use it).
//! - [`worker::Worker`] owns an engine on a dedicated thread (where the burn device and the loaded models
//!   live) and talks to front ends through bounded channels of [`events::Command`]s and [`events::Event`]s.
//! - [`cache`] holds node results (keyed by [`cache::CacheKey`]) and, separately, loaded model handles.

pub mod cache;
pub mod disk_cache;
pub mod engine;
pub mod events;
pub mod plan;
pub mod worker;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use crate::graph::{AccessPolicy, KindSpec, ParamType, ResolvedParams, Verdict};

pub use cache::{CacheKey, ModelCache, ResultCache};
pub use engine::Engine;
pub use events::{Command, Event, RunId, RunOutcome};
pub use plan::{NodeStatus, Plan, PlanError};
pub use worker::Worker;

pub use crate::values::{PortValue, Value};

/// The outputs of one node evaluation, by output port name.
#[derive(Clone, Default)]
pub struct NodeOutputs {
    pub values: BTreeMap<String, Value>,
}

impl NodeOutputs {
    pub fn new() -> Self {
        NodeOutputs::default()
    }

    /// Builder: adds one output.
    pub fn with<T: PortValue>(mut self, port: &str, value: T) -> Self {
        self.values.insert(port.to_string(), value.into_value());
        self
    }

    /// Typed access to one output.
    pub fn get<T: PortValue>(&self, port: &str) -> Option<&T> {
        T::from_value(self.values.get(port)?)
    }
}

impl std::fmt::Debug for NodeOutputs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.values.keys()).finish()
    }
}

/// Why a node did not produce its outputs.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum NodeError {
    #[error("cancelled")]
    Cancelled,
    #[error("input '{port}' is not connected")]
    MissingInput { port: String },
    #[error("input '{port}' carries {found}, expected {expected}")]
    WrongInputType { port: String, expected: &'static str, found: &'static str },
    #[error("parameter '{name}': {message}")]
    Param { name: String, message: String },
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("{0}")]
    Failed(String),
    #[error("node kind '{kind}' cannot run yet: {what}")]
    NotImplemented { kind: String, what: String },
}

/// The code that evaluates one node kind.
pub trait Evaluator: Send + Sync {
    fn evaluate(&self, ctx: &mut EvalContext<'_>) -> Result<NodeOutputs, NodeError>;
}

impl<F> Evaluator for F
where
    F: Fn(&mut EvalContext<'_>) -> Result<NodeOutputs, NodeError> + Send + Sync,
{
    fn evaluate(&self, ctx: &mut EvalContext<'_>) -> Result<NodeOutputs, NodeError> {
        self(ctx)
    }
}

/// What a kind's check before a run can see: the node, its parameters and the access policy.
pub struct CheckContext<'a> {
    pub node: &'a str,
    pub params: &'a ResolvedParams,
    pub access: &'a AccessPolicy,
}

/// A kind's check of what it will touch (an output path), run when a graph is planned, before any node
/// computes: the error text blocks the node.
pub type Check = fn(&CheckContext<'_>) -> Result<(), String>;

/// Evaluators by kind id, and the kinds' checks before a run.
#[derive(Clone, Default)]
pub struct Evaluators {
    map: BTreeMap<String, Arc<dyn Evaluator>>,
    checks: BTreeMap<String, Check>,
}

impl Evaluators {
    pub fn new() -> Self {
        Evaluators::default()
    }

    /// Registers a function (or closure) as the evaluator of `kind`.
    pub fn register<F>(&mut self, kind: &str, f: F)
    where
        F: Fn(&mut EvalContext<'_>) -> Result<NodeOutputs, NodeError> + Send + Sync + 'static,
    {
        self.map.insert(kind.to_string(), Arc::new(f));
    }

    /// Registers an evaluator object for `kind`.
    pub fn register_evaluator(&mut self, kind: &str, evaluator: Arc<dyn Evaluator>) {
        self.map.insert(kind.to_string(), evaluator);
    }

    pub fn get(&self, kind: &str) -> Option<Arc<dyn Evaluator>> {
        self.map.get(kind).cloned()
    }

    /// Registers the check `kind` runs when a graph is planned (see [`Check`]).
    pub fn register_check(&mut self, kind: &str, check: Check) {
        self.checks.insert(kind.to_string(), check);
    }

    /// The check of `kind`, if it has one.
    pub fn check(&self, kind: &str) -> Option<Check> {
        self.checks.get(kind).copied()
    }
}

/// What a node's evaluation can see and do.
pub struct EvalContext<'a> {
    pub node: &'a str,
    /// The graph being run (an export embeds it in the file).
    pub graph: &'a crate::graph::Graph,
    pub kind: &'a KindSpec,
    pub params: &'a ResolvedParams,
    pub key: CacheKey,
    /// Where paths resolve and what the graph may read and write: resolve path parameters with
    /// [`EvalContext::file`].
    pub access: &'a AccessPolicy,
    pub models: &'a ModelCache,
    /// The device models are loaded on and tensors computed on.
    pub device: &'a burn::tensor::Device,
    /// The memory limit of the run (weights + activations), if one was set.
    pub memory_limit: Option<u64>,
    /// Show the sampling latents every this many steps ([`EvalContext::live_preview`]; 0: never).
    pub live_previews: u32,
    pub(crate) inputs: BTreeMap<String, Value>,
    pub(crate) report: &'a mut dyn FnMut(NodeReport),
    pub(crate) cancelled: &'a dyn Fn() -> bool,
}

/// The preview label of the sampling latents shown while a node samples (dropped when it finishes).
pub const LIVE_PREVIEW: &str = "live";

/// What a node reports while it runs.
pub enum NodeReport {
    Progress { step: u64, total: u64 },
    Preview { label: String, value: Value },
    Note { text: String },
}

impl EvalContext<'_> {
    /// A connected input of type `T`.
    pub fn input<T: PortValue>(&self, port: &str) -> Result<&T, NodeError> {
        self.optional_input(port)?.ok_or_else(|| NodeError::MissingInput { port: port.to_string() })
    }

    /// An input that may be unconnected.
    pub fn optional_input<T: PortValue>(&self, port: &str) -> Result<Option<&T>, NodeError> {
        match self.inputs.get(port) {
            None => Ok(None),
            Some(v) => T::from_value(v).map(Some).ok_or_else(|| NodeError::WrongInputType {
                port: port.to_string(),
                expected: T::NAME,
                found: v.describe(),
            }),
        }
    }

    /// Whether the run has been cancelled.
    pub fn is_cancelled(&self) -> bool {
        (self.cancelled)()
    }

    /// Returns `Err(Cancelled)` when the run has been cancelled; long loops call this (or `progress`) per step.
    pub fn check_cancel(&self) -> Result<(), NodeError> {
        if self.is_cancelled() { Err(NodeError::Cancelled) } else { Ok(()) }
    }

    /// Reports progress (`step` of `total` done), then checks for cancellation.
    pub fn progress(&mut self, step: u64, total: u64) -> Result<(), NodeError> {
        (self.report)(NodeReport::Progress { step, total });
        self.check_cancel()
    }

    /// Shows an intermediate result in the front end.
    pub fn preview<T: PortValue>(&mut self, label: &str, value: T) {
        (self.report)(NodeReport::Preview { label: label.to_string(), value: value.into_value() });
    }

    /// While sampling: the step's latents [B, C, F, h, w] projected to RGB (see [`crate::pipelines::preview`])
    /// as the node's [`LIVE_PREVIEW`], every [`Self::live_previews`] steps. Several frames show as a clip,
    /// one frame per sample as images.
    pub fn live_preview(&mut self, done: usize, latents: Option<&burn::tensor::Tensor<5>>) {
        let every = self.live_previews as usize;
        let Some(latents) = latents else { return };
        if every == 0 || !done.is_multiple_of(every) {
            return;
        }
        let Some(images) = crate::pipelines::preview::latent_rgb(latents) else { return };
        let [_, _, frames, _, _] = latents.dims();
        let value = if frames > 1 {
            let frames = images.into_iter().take(frames).collect();
            let clip = crate::video::Video { frames, fps: 8.0, prompt: String::new(), seed: 0, latents: None };
            Value::Video(std::sync::Arc::new(clip))
        } else {
            Value::Images(std::sync::Arc::new(images.into_iter().map(std::sync::Arc::new).collect()))
        };
        (self.report)(NodeReport::Preview { label: LIVE_PREVIEW.to_string(), value });
    }

    /// A message shown on the node (a truncated prompt, a fallback taken, ...).
    pub fn note(&mut self, text: impl Into<String>) {
        (self.report)(NodeReport::Note { text: text.into() });
    }

    /// A text parameter (resolved with its default).
    pub fn param_str(&self, name: &str) -> Result<&str, NodeError> {
        self.params.str(name).ok_or_else(|| self.param_error(name))
    }
    pub fn param_f64(&self, name: &str) -> Result<f64, NodeError> {
        self.params.f64(name).ok_or_else(|| self.param_error(name))
    }
    pub fn param_i64(&self, name: &str) -> Result<i64, NodeError> {
        self.params.i64(name).ok_or_else(|| self.param_error(name))
    }
    pub fn param_u64(&self, name: &str) -> Result<u64, NodeError> {
        self.params.u64(name).ok_or_else(|| self.param_error(name))
    }
    pub fn param_bool(&self, name: &str) -> Result<bool, NodeError> {
        self.params.bool(name).ok_or_else(|| self.param_error(name))
    }
    pub fn param_f64_list(&self, name: &str) -> Result<Vec<f64>, NodeError> {
        self.params.f64_list(name).ok_or_else(|| self.param_error(name))
    }

    /// A path parameter resolved by the access policy: where it points, or why it may not be used.
    pub fn file(&self, name: &str) -> Result<std::path::PathBuf, NodeError> {
        let value = self.param_str(name)?;
        let role = match self.kind.param(name).map(|p| p.ty) {
            Some(ParamType::Path { role, .. }) => role,
            _ => return Err(self.param_error(name)),
        };
        let file = self.access.resolve(self.node, name, role, value);
        match file.verdict {
            Verdict::Allowed => Ok(file.path),
            Verdict::NeedsPermission(why) | Verdict::Refused(why) => {
                Err(NodeError::Param { name: name.to_string(), message: format!("'{value}': {why}") })
            }
        }
    }

    fn param_error(&self, name: &str) -> NodeError {
        NodeError::Param {
            name: name.to_string(),
            message: format!("missing or of the wrong type for kind '{}'", self.kind.id),
        }
    }
}
