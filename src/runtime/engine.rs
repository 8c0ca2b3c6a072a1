//! Planning and running a graph: pull-based, cached by key, cancellable, failures isolated.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::tensor::Device;

use super::cache::{ModelCache, PathContext, ResultCache, node_key, normalise_params};
use super::events::{Event, RunId, RunOutcome};
pub use super::plan::{NodeStatus, Plan, PlanError, PlannedNode};
use super::{EvalContext, Evaluators, NodeError, NodeOutputs, NodeReport};
use crate::graph::{AccessPolicy, Graph, KindRegistry, Link, NodeId, ResolvedParams, ValidateOptions, validate};

/// How many node results the cache keeps by default.
pub const DEFAULT_CACHE_ENTRIES: usize = 256;

/// Evaluates graphs. Owns the node-result cache and the model cache; single-threaded by design (the
/// worker thread owns it, together with the compute device).
pub struct Engine {
    registry: KindRegistry,
    evaluators: Evaluators,
    cache: ResultCache,
    models: ModelCache,
    /// Where paths resolve and what graphs may read and write.
    access: AccessPolicy,
    device: Device,
    /// The memory a node may use in all (weights + activations); `None`: the system's available memory on
    /// the CPU, no check on a GPU (burn does not report a GPU's capacity).
    memory_limit: Option<u64>,
    live_previews: u32,
}

impl Engine {
    pub fn new(registry: KindRegistry, evaluators: Evaluators, models_dir: PathBuf) -> Self {
        Engine {
            registry,
            evaluators,
            cache: ResultCache::new(DEFAULT_CACHE_ENTRIES),
            models: ModelCache::new(),
            access: AccessPolicy::new(models_dir, crate::graph::access::DEFAULT_OUTPUT_DIR),
            device: Device::flex(),
            memory_limit: None,
            live_previews: 0,
        }
    }

    /// Sets the memory limit generation nodes plan against (see [`crate::pipelines::memory`]); the model
    /// and result caches stay.
    pub fn set_memory_limit(&mut self, bytes: Option<u64>) {
        self.memory_limit = bytes;
    }

    /// Sampling nodes preview their latents every `every` steps (0: never, the default: a front end that
    /// shows them turns them on).
    pub fn set_live_previews(&mut self, every: u32) {
        self.live_previews = every;
    }

    pub fn memory_limit(&self) -> Option<u64> {
        self.memory_limit
    }

    /// The engine evaluating on `device` (the CPU by default). Loaded models live on it, so changing the
    /// device drops them.
    pub fn with_device(mut self, device: Device) -> Self {
        self.device = device;
        self.models.clear();
        self
    }

    /// The device the models run on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn registry(&self) -> &KindRegistry {
        &self.registry
    }
    pub fn models_dir(&self) -> &Path {
        &self.access.models_dir
    }
    /// The rules for the files graphs may read and write.
    pub fn access(&self) -> &AccessPolicy {
        &self.access
    }
    /// Replaces the access policy (output folder, permissions, values the user chose). Cached results stay:
    /// keys hold the files' fingerprints, not the policy.
    pub fn set_access(&mut self, access: AccessPolicy) {
        self.access = access;
    }
    /// The engine with this access policy.
    pub fn with_access(mut self, access: AccessPolicy) -> Self {
        self.access = access;
        self
    }
    pub fn models(&self) -> &ModelCache {
        &self.models
    }
    pub fn cache(&self) -> &ResultCache {
        &self.cache
    }
    /// The cached result under `key` (memory, or read from disk now), as the editor shows it after an open
    /// without running anything.
    pub fn cached_result(&mut self, key: &super::cache::CacheKey) -> Option<super::NodeOutputs> {
        self.cache.get(key)
    }

    /// Messages of the result cache's disk side since the last call (damaged or foreign entries ignored,
    /// failed writes).
    pub fn take_cache_log(&self) -> Vec<String> {
        self.cache.disk().map(|d| d.take_log()).unwrap_or_default()
    }

    pub fn set_cache_capacity(&mut self, entries: usize) {
        let disk = std::mem::replace(&mut self.cache, ResultCache::new(entries)).into_disk();
        if let Some(disk) = disk {
            self.cache = ResultCache::new(entries).with_disk(disk);
        }
    }

    /// Keeps data results on disk too (see [`super::disk_cache`]): a later engine with the same folder finds
    /// them without running anything.
    pub fn with_disk_cache(mut self, disk: super::disk_cache::DiskCache) -> Self {
        let capacity = self.cache.capacity();
        self.cache = ResultCache::new(capacity).with_disk(disk);
        self
    }

    /// Drops cached node results (in memory and on disk: the editor's "Clear cached results"); with
    /// `models`, loaded models too.
    pub fn clear_cache(&mut self, models: bool) {
        self.cache.clear();
        if let Some(disk) = self.cache.disk() {
            disk.clear();
        }
        if models {
            self.models.clear();
        }
    }

    /// Validation options matching this engine (model files are checked in its models directory).
    pub fn validate_options(&self) -> ValidateOptions {
        ValidateOptions { access: self.access.clone(), check_models: true, check_inputs: true }
    }

    /// Output nodes of the graph (what a run with no targets evaluates).
    pub fn output_nodes(&self, graph: &Graph) -> Vec<NodeId> {
        graph
            .nodes
            .iter()
            .filter(|(_, n)| self.registry.get(&n.kind).is_some_and(|k| k.is_output))
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Works out what a run of `targets` (all output nodes when empty) would do, without running anything.
    pub fn plan(&self, graph: &Graph, targets: &[NodeId]) -> Result<Plan, PlanError> {
        let targets: Vec<NodeId> = if targets.is_empty() { self.output_nodes(graph) } else { targets.to_vec() };
        if targets.is_empty() {
            return Err(PlanError::NoOutputs);
        }
        if let Some(t) = targets.iter().find(|t| !graph.nodes.contains_key(*t)) {
            return Err(PlanError::NoSuchTarget(t.clone()));
        }

        // Incoming links per node, once (a per-node scan of every link would be quadratic).
        let mut incoming: HashMap<&str, Vec<&Link>> = HashMap::new();
        for link in &graph.links {
            incoming.entry(link.to.node.as_str()).or_default().push(link);
        }
        let no_links: Vec<&Link> = Vec::new();
        // Everything the targets depend on.
        let mut needed = BTreeSet::new();
        let mut stack: Vec<&str> = targets.iter().map(String::as_str).collect();
        while let Some(n) = stack.pop() {
            if needed.insert(n.to_string()) {
                let into = incoming.get(n).unwrap_or(&no_links);
                stack.extend(into.iter().map(|l| l.from.node.as_str()).filter(|u| graph.nodes.contains_key(*u)));
            }
        }
        let order = topological_order(graph, &needed);
        let report = validate(graph, &self.registry, &self.validate_options());

        // Keys, in order, so every upstream key is known when a node is reached.
        let mut planned: Vec<PlannedNode> = Vec::with_capacity(order.len());
        let mut index: HashMap<NodeId, usize> = HashMap::new();
        let mut own_errors: HashMap<&str, &str> = HashMap::new();
        for m in report.errors() {
            if let Some(node) = &m.node {
                own_errors.entry(node.as_str()).or_insert(m.text.as_str());
            }
        }
        for id in &order {
            let Some(node) = graph.nodes.get(id) else { continue };
            let inputs: BTreeMap<String, (NodeId, String)> = incoming
                .get(id.as_str())
                .unwrap_or(&no_links)
                .iter()
                .map(|l| (l.to.port.clone(), (l.from.node.clone(), l.from.port.clone())))
                .collect();
            let mut blocked = None;
            let mut own_error = false;
            if let Some(text) = own_errors.get(id.as_str()) {
                blocked = Some(text.to_string());
                own_error = true;
            } else if self.evaluators.get(&node.kind).is_none() {
                blocked = Some(format!("no evaluator is registered for kind '{}'", node.kind));
                own_error = true;
            } else if let (Some(check), Some(kind)) = (self.evaluators.check(&node.kind), self.registry.get(&node.kind))
            {
                // The kind's own check of what it will touch (an export's output path), before any compute.
                let params = ResolvedParams::resolve(kind, node);
                if let Err(text) = check(&super::CheckContext { node: id, params: &params, access: &self.access }) {
                    blocked = Some(text);
                    own_error = true;
                }
            }
            let mut upstream_keys = BTreeMap::new();
            for (port, (from, from_port)) in &inputs {
                match index.get(from).map(|&i| &planned[i]) {
                    Some(PlannedNode { key: Some(k), .. }) => {
                        upstream_keys.insert(port.clone(), (*k, from_port.clone()));
                    }
                    _ => {
                        blocked.get_or_insert_with(|| format!("upstream node '{from}' cannot run"));
                    }
                }
            }
            let key = match (&blocked, self.registry.get(&node.kind)) {
                (None, Some(kind)) => {
                    let mut params = ResolvedParams::resolve(kind, node);
                    normalise_params(kind, &mut params);
                    Some(node_key(kind, &params, &upstream_keys, &PathContext { node: id, access: &self.access }))
                }
                _ => None,
            };
            let status = match blocked {
                Some(reason) => NodeStatus::Blocked { reason },
                None => NodeStatus::Unneeded,
            };
            index.insert(id.clone(), planned.len());
            planned.push(PlannedNode { id: id.clone(), key, status, inputs, pulled: false, own_error });
        }

        // Pull from the targets: a cached node stops the walk; everything else it reaches will run.
        let mut stack: Vec<NodeId> = targets.clone();
        let mut seen = BTreeSet::new();
        while let Some(id) = stack.pop() {
            if !seen.insert(id.clone()) {
                continue;
            }
            let Some(&i) = index.get(&id) else { continue };
            let p = &mut planned[i];
            p.pulled = true;
            if matches!(p.status, NodeStatus::Blocked { .. }) {
                // Keep walking, so the node whose own error blocks the rest is reported too.
                stack.extend(p.inputs.values().map(|(from, _)| from.clone()));
                continue;
            }
            match p.key {
                Some(k) if self.cache.contains(&k) => p.status = NodeStatus::Cached,
                _ => {
                    p.status = NodeStatus::Stale;
                    stack.extend(p.inputs.values().map(|(from, _)| from.clone()));
                }
            }
        }
        for p in &mut planned {
            if p.status == NodeStatus::Unneeded && p.key.is_some_and(|k| self.cache.contains(&k)) {
                p.status = NodeStatus::Cached;
            }
        }
        Ok(Plan { targets, nodes: planned })
    }

    /// Runs `targets` (all output nodes when empty). Events go to `emit`; `cancelled` is polled between
    /// nodes and at every progress report inside a node.
    pub fn run(
        &mut self,
        graph: &Graph,
        targets: &[NodeId],
        run_id: RunId,
        emit: &mut dyn FnMut(Event),
        cancelled: &dyn Fn() -> bool,
    ) -> RunOutcome {
        let plan = match self.plan(graph, targets) {
            Ok(plan) => plan,
            Err(e) => {
                let outcome = RunOutcome::Rejected { message: e.to_string() };
                emit(Event::RunFinished { run_id, outcome: outcome.clone() });
                return outcome;
            }
        };
        emit(Event::RunStarted { run_id, plan: plan.clone() });

        // Results available to this run; held here so cache eviction during the run cannot lose inputs.
        let mut values: HashMap<NodeId, NodeOutputs> = HashMap::new();
        for p in plan.nodes.iter().filter(|p| p.status == NodeStatus::Cached) {
            if let Some(outputs) = p.key.and_then(|k| self.cache.get(&k)) {
                values.insert(p.id.clone(), outputs.clone());
                emit(Event::NodeFinished {
                    run_id,
                    node: p.id.clone(),
                    cached: true,
                    elapsed: std::time::Duration::ZERO,
                    outputs,
                });
            }
        }

        let mut failed: Vec<NodeId> = Vec::new();
        let mut not_done: BTreeSet<NodeId> = BTreeSet::new();
        let mut was_cancelled = false;
        for p in &plan.nodes {
            let reached_blocked = matches!(p.status, NodeStatus::Blocked { .. }) && p.pulled;
            if p.status != NodeStatus::Stale && !reached_blocked {
                continue;
            }
            if cancelled() {
                was_cancelled = true;
                break;
            }
            if let NodeStatus::Blocked { reason } = &p.status {
                emit(Event::NodeSkipped { run_id, node: p.id.clone(), reason: reason.clone() });
                failed.push(p.id.clone());
                not_done.insert(p.id.clone());
                continue;
            }
            if let Some((from, _)) = p.inputs.values().find(|(from, _)| not_done.contains(from)) {
                let reason = format!("upstream node '{from}' did not finish");
                emit(Event::NodeSkipped { run_id, node: p.id.clone(), reason });
                not_done.insert(p.id.clone());
                continue;
            }
            match self.evaluate(graph, p, &values, run_id, emit, cancelled) {
                Ok((outputs, elapsed)) => {
                    if let Some(key) = p.key {
                        let is_output = graph
                            .nodes
                            .get(&p.id)
                            .and_then(|n| self.registry.get(&n.kind))
                            .is_some_and(|k| k.is_output);
                        self.cache.insert_with(key, &p.id, outputs.clone(), !is_output);
                    }
                    values.insert(p.id.clone(), outputs.clone());
                    emit(Event::NodeFinished { run_id, node: p.id.clone(), cached: false, elapsed, outputs });
                }
                Err(NodeError::Cancelled) => {
                    was_cancelled = true;
                    break;
                }
                Err(e) => {
                    emit(Event::NodeFailed { run_id, node: p.id.clone(), message: e.to_string() });
                    failed.push(p.id.clone());
                    not_done.insert(p.id.clone());
                }
            }
        }

        let outcome = if was_cancelled {
            RunOutcome::Cancelled
        } else if failed.is_empty() {
            RunOutcome::Completed
        } else {
            RunOutcome::Failed { failed }
        };
        tracing::info!(run_id, ?outcome, "run finished");
        // What the result cache's disk side noticed (damaged or foreign entries, failed writes).
        for text in self.take_cache_log() {
            tracing::warn!("{text}");
            emit(Event::WorkerMessage { text });
        }
        emit(Event::RunFinished { run_id, outcome: outcome.clone() });
        outcome
    }

    fn evaluate(
        &self,
        graph: &Graph,
        p: &PlannedNode,
        values: &HashMap<NodeId, NodeOutputs>,
        run_id: RunId,
        emit: &mut dyn FnMut(Event),
        cancelled: &dyn Fn() -> bool,
    ) -> Result<(NodeOutputs, std::time::Duration), NodeError> {
        let internal = |what: String| NodeError::Failed(format!("internal error: {what}"));
        let node = graph.nodes.get(&p.id).ok_or_else(|| internal(format!("node '{}' vanished", p.id)))?;
        let kind = self.registry.get(&node.kind).ok_or_else(|| internal(format!("kind '{}' vanished", node.kind)))?;
        let evaluator = self
            .evaluators
            .get(&node.kind)
            .ok_or_else(|| internal(format!("no evaluator for kind '{}'", node.kind)))?;
        let key = p.key.ok_or_else(|| internal(format!("node '{}' has no key", p.id)))?;
        let mut params = ResolvedParams::resolve(kind, node);
        normalise_params(kind, &mut params);

        let mut inputs = BTreeMap::new();
        for (port, (from, from_port)) in &p.inputs {
            let value = values
                .get(from)
                .and_then(|o| o.values.get(from_port))
                .ok_or_else(|| internal(format!("input '{port}' from '{from}.{from_port}' is not available")))?;
            inputs.insert(port.clone(), value.clone());
        }

        tracing::debug!(node = %p.id, kind = %node.kind, key = %key, "evaluating");
        emit(Event::NodeStarted { run_id, node: p.id.clone() });
        let node_id = p.id.clone();
        let mut report = |r: NodeReport| {
            let node = node_id.clone();
            emit(match r {
                NodeReport::Progress { step, total } => Event::Progress { run_id, node, step, total },
                NodeReport::Preview { label, value } => Event::Preview { run_id, node, label, value },
                NodeReport::Note { text } => Event::NodeNote { run_id, node, text },
            })
        };
        let mut ctx = EvalContext {
            node: &p.id,
            graph,
            kind,
            params: &params,
            key,
            access: &self.access,
            models: &self.models,
            device: &self.device,
            memory_limit: self.memory_limit,
            live_previews: self.live_previews,
            inputs,
            report: &mut report,
            cancelled,
        };
        let start = Instant::now();
        let result = catch_unwind(AssertUnwindSafe(|| evaluator.evaluate(&mut ctx)))
            .unwrap_or_else(|panic| Err(panic_error(&panic_text(&panic))))?;
        for out in kind.outputs {
            if !result.values.contains_key(out.name) {
                return Err(internal(format!("kind '{}' did not produce output '{}'", kind.id, out.name)));
            }
        }
        Ok((result, start.elapsed()))
    }
}

/// A panic as a node error. burn's GPU back-ends panic when the device runs out of memory: that one fails
/// the node with the advice (the engine, its model cache and its result cache are untouched either way).
fn panic_error(text: &str) -> NodeError {
    let lower = text.to_lowercase();
    let oom = ["out of memory", "out of device memory", "out-of-memory", "outofmemory"];
    if oom.iter().any(|s| lower.contains(s)) {
        let first = text.lines().next().unwrap_or(text);
        return NodeError::Failed(format!(
            "the device ran out of memory ({first}): lower the frames, the size or the candidate count, or set \
             cfg_batch to sequential; --memory-limit makes stepstone refuse such settings before they start"
        ));
    }
    NodeError::Failed(format!("internal error: the node panicked: {text}"))
}

fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_string()
    }
}

/// Kahn's algorithm over the `needed` nodes, smallest id first among the ready ones (deterministic), over
/// per-node lists of outgoing links (linear in nodes + links, up to the ordered set of ready nodes).
/// Nodes on a cycle cannot be ordered; they come last (validation has already marked them as errors).
fn topological_order(graph: &Graph, needed: &BTreeSet<NodeId>) -> Vec<NodeId> {
    let mut indegree: HashMap<&str, usize> = needed.iter().map(|n| (n.as_str(), 0)).collect();
    let edges: BTreeSet<(&str, &str)> = graph
        .links
        .iter()
        .filter(|l| needed.contains(&l.from.node) && needed.contains(&l.to.node))
        .map(|l| (l.from.node.as_str(), l.to.node.as_str()))
        .collect();
    let mut outgoing: HashMap<&str, Vec<&str>> = HashMap::new();
    for &(from, to) in &edges {
        outgoing.entry(from).or_default().push(to);
        if let Some(d) = indegree.get_mut(to) {
            *d += 1;
        }
    }
    let mut ready: BTreeSet<&str> = indegree.iter().filter(|(_, d)| **d == 0).map(|(n, _)| *n).collect();
    let mut order = Vec::with_capacity(needed.len());
    while let Some(n) = ready.pop_first() {
        indegree.remove(n);
        order.push(n.to_string());
        for to in outgoing.get(n).map(Vec::as_slice).unwrap_or_default() {
            if let Some(d) = indegree.get_mut(to) {
                *d -= 1;
                if *d == 0 {
                    ready.insert(*to);
                }
            }
        }
    }
    let mut rest: Vec<&str> = indegree.into_keys().collect();
    rest.sort_unstable();
    order.extend(rest.into_iter().map(str::to_string));
    order
}
