//! What the editor knows of the worker's side: per-node state built from worker events (plan, progress,
//! results, failures, notes), the validation report, and a log of messages for the artist.
//!
//! No egui here: the state is plain data, so tests feed it events and check what the editor would show.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::graph::{NodeId, Report};
use crate::runtime::engine::{NodeStatus, Plan};
use crate::runtime::events::{Event, RunId, RunOutcome};
use crate::runtime::{NodeOutputs, Value};

/// How serious a message is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Info,
    Warning,
    Error,
}

/// A message for the artist (shown in the log panel, and briefly in the status bar).
#[derive(Clone, Debug, PartialEq)]
pub struct Notice {
    pub level: Level,
    pub text: String,
    /// The node it is about, if any.
    pub node: Option<NodeId>,
    /// When it was made.
    pub at: std::time::SystemTime,
}

impl Notice {
    fn new(level: Level, text: impl Into<String>) -> Self {
        Notice { level, text: text.into(), node: None, at: std::time::SystemTime::now() }
    }
    pub fn info(text: impl Into<String>) -> Self {
        Notice::new(Level::Info, text)
    }
    pub fn warning(text: impl Into<String>) -> Self {
        Notice::new(Level::Warning, text)
    }
    pub fn error(text: impl Into<String>) -> Self {
        Notice::new(Level::Error, text)
    }
    /// This notice, about node `id`.
    pub fn about(mut self, id: impl Into<NodeId>) -> Self {
        self.node = Some(id.into());
        self
    }

    /// `12:04:31 error [selector] text` (UTC time of day).
    pub fn line(&self) -> String {
        let secs = self.at.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()) % 86_400;
        let level = match self.level {
            Level::Info => "info",
            Level::Warning => "warning",
            Level::Error => "error",
        };
        let node = self.node.as_ref().map(|n| format!(" [{n}]")).unwrap_or_default();
        format!("{:02}:{:02}:{:02} {level}{node} {}", secs / 3600, secs / 60 % 60, secs % 60, self.text)
    }
}

/// What a node is doing in the current (or last) run.
#[derive(Clone, Debug, PartialEq)]
pub enum Activity {
    /// Not part of a run since the graph last changed.
    Idle,
    /// In the running plan, not started yet.
    Queued,
    Running {
        step: u64,
        total: u64,
    },
    Done {
        cached: bool,
        elapsed: Duration,
    },
    Failed {
        message: String,
    },
    Skipped {
        reason: String,
    },
}

/// Everything the editor shows about one node besides its parameters.
#[derive(Clone, Default)]
pub struct NodeState {
    /// What a run of every output would do with it (from the last graph check).
    pub plan: Option<NodeStatus>,
    pub activity: Option<Activity>,
    /// Notes the node made during its last run.
    pub notes: Vec<String>,
    /// Its outputs from the last run that reached it (kept across edits until it runs again).
    pub outputs: Option<NodeOutputs>,
    /// Intermediate results by label.
    pub previews: BTreeMap<String, Value>,
    /// Bumped whenever `outputs` or `previews` change, so views can rebuild their textures.
    pub revision: u64,
    /// When it started in the current run, and when its last step was reported (pauses taken out).
    started_at: Option<Instant>,
    last_step_at: Option<Instant>,
}

/// The editor's view of the worker.
#[derive(Default)]
pub struct Session {
    pub nodes: BTreeMap<NodeId, NodeState>,
    pub report: Report,
    /// The run in progress.
    pub running: Option<RunId>,
    pub last_outcome: Option<RunOutcome>,
    pub log: Vec<Notice>,
    revision: u64,
    /// Whether the run in progress waits at a step (Pause).
    pub paused: bool,
    /// When the run in progress started (pauses taken out), and since when it is paused.
    run_started: Option<Instant>,
    paused_since: Option<Instant>,
    /// How long each node took the last time it was computed (not taken from the cache): the ETA of a node
    /// that has not started yet.
    pub history: BTreeMap<NodeId, Duration>,
}

/// How long the rest of a run will take.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Eta {
    pub remaining: Duration,
    /// False when some nodes still to run have never run (their time is not in `remaining`: a lower bound).
    pub complete: bool,
}

/// How many log lines are kept: every message of a long day's work (the oldest go beyond this).
pub const LOG_LINES: usize = 20_000;

impl Session {
    pub fn node(&self, id: &str) -> Option<&NodeState> {
        self.nodes.get(id)
    }

    pub fn push(&mut self, notice: Notice) {
        let node = notice.node.as_deref().unwrap_or("-");
        match notice.level {
            Level::Info => tracing::info!(node, "{}", notice.text),
            Level::Warning => tracing::warn!(node, "{}", notice.text),
            Level::Error => tracing::error!(node, "{}", notice.text),
        }
        self.log.push(notice);
        if self.log.len() > LOG_LINES {
            let excess = self.log.len() - LOG_LINES;
            self.log.drain(..excess);
        }
    }

    /// The newest notice, if any.
    pub fn last_notice(&self) -> Option<&Notice> {
        self.log.last()
    }

    /// The progress of the run in progress: (nodes finished, nodes in the plan, the running node's step
    /// fraction).
    pub fn run_progress(&self) -> Option<(usize, usize, f32)> {
        self.running?;
        let mut done = 0;
        let mut total = 0;
        let mut fraction = 0.0;
        for state in self.nodes.values() {
            match &state.activity {
                Some(Activity::Queued) => total += 1,
                Some(Activity::Running { step, total: t }) => {
                    total += 1;
                    if *t > 0 {
                        fraction = *step as f32 / *t as f32;
                    }
                }
                Some(Activity::Done { .. } | Activity::Failed { .. } | Activity::Skipped { .. }) => {
                    total += 1;
                    done += 1;
                }
                Some(Activity::Idle) | None => {}
            }
        }
        Some((done, total, fraction))
    }

    fn plan_into_nodes(&mut self, plan: &Plan) {
        for state in self.nodes.values_mut() {
            state.plan = None;
        }
        for planned in &plan.nodes {
            self.nodes.entry(planned.id.clone()).or_default().plan = Some(planned.status.clone());
        }
    }

    fn bump(&mut self, node: &str) -> &mut NodeState {
        self.revision += 1;
        let revision = self.revision;
        let state = self.nodes.entry(node.to_string()).or_default();
        state.revision = revision;
        state
    }

    /// Forgets nodes that are no longer in the graph.
    pub fn retain_nodes(&mut self, keep: impl Fn(&str) -> bool) {
        self.nodes.retain(|id, _| keep(id));
    }

    /// How long the run in progress has taken so far (pauses not counted).
    pub fn elapsed(&self, now: Instant) -> Option<Duration> {
        self.running?;
        let now = self.paused_since.unwrap_or(now);
        Some(now.saturating_duration_since(self.run_started?))
    }

    /// What is left of the run in progress: the running node's remaining steps at its own pace so far, and
    /// for each node still queued, the time it took the last time it was computed.
    pub fn eta(&self, now: Instant) -> Option<Eta> {
        self.running?;
        let now = self.paused_since.unwrap_or(now);
        let mut remaining = Duration::ZERO;
        let mut complete = true;
        let mut known = false;
        for (id, state) in &self.nodes {
            match &state.activity {
                Some(Activity::Queued) => match self.history.get(id) {
                    Some(d) => {
                        remaining += *d;
                        known = true;
                    }
                    None => complete = false,
                },
                Some(Activity::Running { step, total }) => {
                    let (Some(started), last) = (state.started_at, state.last_step_at) else { continue };
                    if *total > 0
                        && *step > 0
                        && let Some(last) = last
                    {
                        let per_step = last.saturating_duration_since(started) / (*step as u32).max(1);
                        let left = per_step * (total.saturating_sub(*step) as u32);
                        remaining += left.saturating_sub(now.saturating_duration_since(last));
                        known = true;
                    } else if let Some(d) = self.history.get(id) {
                        remaining += d.saturating_sub(now.saturating_duration_since(started));
                        known = true;
                    } else {
                        complete = false;
                    }
                }
                _ => {}
            }
        }
        known.then_some(Eta { remaining, complete })
    }

    /// Takes one worker event into the state.
    pub fn apply(&mut self, event: Event) {
        self.apply_at(event, Instant::now());
    }

    /// [`Self::apply`] with the time the event arrived (tests pass their own clock).
    pub fn apply_at(&mut self, event: Event, now: Instant) {
        if let Some(run) = event.run_id()
            && self.running.is_some_and(|r| r != run)
            && !matches!(event, Event::RunStarted { .. })
        {
            return; // a late event of a run that was superseded
        }
        match event {
            Event::GraphChecked { report, plan } => {
                self.report = report;
                if let Some(plan) = plan {
                    self.plan_into_nodes(&plan);
                }
            }
            Event::Stale { plan: Ok(plan), .. } => self.plan_into_nodes(&plan),
            Event::Stale { plan: Err(message), .. } => self.push(Notice::warning(message)),
            Event::RunStarted { run_id, plan } => {
                self.running = Some(run_id);
                self.last_outcome = None;
                self.paused = false;
                self.paused_since = None;
                self.run_started = Some(now);
                for state in self.nodes.values_mut() {
                    state.activity = None;
                }
                for planned in plan.nodes.iter().filter(|n| n.pulled) {
                    let state = self.nodes.entry(planned.id.clone()).or_default();
                    state.activity = Some(Activity::Queued);
                }
            }
            Event::NodeStarted { node, .. } => {
                let state = self.nodes.entry(node).or_default();
                state.activity = Some(Activity::Running { step: 0, total: 0 });
                state.notes.clear();
                state.started_at = Some(now);
                state.last_step_at = None;
            }
            Event::Progress { node, step, total, .. } => {
                let state = self.nodes.entry(node).or_default();
                state.activity = Some(Activity::Running { step, total });
                state.last_step_at = Some(now);
            }
            Event::Paused { paused, .. } => {
                self.paused = paused;
                match (paused, self.paused_since.take()) {
                    (true, since) => self.paused_since = Some(since.unwrap_or(now)),
                    // The pause is taken out of the clocks: the ETA goes on from where it stood.
                    (false, Some(since)) => {
                        let pause = now.saturating_duration_since(since);
                        self.run_started = self.run_started.map(|t| t + pause);
                        for state in self.nodes.values_mut() {
                            state.started_at = state.started_at.map(|t| t + pause);
                            state.last_step_at = state.last_step_at.map(|t| t + pause);
                        }
                    }
                    (false, None) => {}
                }
            }
            Event::Preview { node, label, value, .. } => {
                self.bump(&node).previews.insert(label, value);
            }
            Event::NodeNote { node, text, .. } => {
                self.push(Notice::info(text.clone()).about(node.clone()));
                self.nodes.entry(node).or_default().notes.push(text);
            }
            Event::NodeFinished { node, cached, elapsed, outputs, .. } => {
                if !cached {
                    self.history.insert(node.clone(), elapsed);
                }
                let state = self.bump(&node);
                state.previews.remove(crate::runtime::LIVE_PREVIEW);
                state.activity = Some(Activity::Done { cached, elapsed });
                state.plan = Some(NodeStatus::Cached);
                state.outputs = Some(outputs);
            }
            Event::NodeFailed { node, message, .. } => {
                self.push(Notice::error(format!("failed: {message}")).about(node.clone()));
                let state = self.bump(&node);
                state.previews.remove(crate::runtime::LIVE_PREVIEW);
                state.activity = Some(Activity::Failed { message });
            }
            Event::NodeSkipped { node, reason, .. } => {
                self.push(Notice::warning(format!("skipped: {reason}")).about(node.clone()));
                self.nodes.entry(node).or_default().activity = Some(Activity::Skipped { reason });
            }
            Event::RunFinished { outcome, .. } => {
                self.running = None;
                self.paused = false;
                self.paused_since = None;
                self.run_started = None;
                for state in self.nodes.values_mut() {
                    if matches!(state.activity, Some(Activity::Queued | Activity::Running { .. })) {
                        state.activity = Some(Activity::Idle);
                    }
                }
                let notice = match &outcome {
                    RunOutcome::Completed => Notice::info("run finished"),
                    RunOutcome::Cancelled => Notice::warning("run cancelled; finished nodes keep their results"),
                    RunOutcome::Failed { failed } => {
                        Notice::error(format!("run finished with failures in: {}", failed.join(", ")))
                    }
                    RunOutcome::Rejected { message } => Notice::error(format!("run not started: {message}")),
                };
                self.push(notice);
                self.last_outcome = Some(outcome);
            }
            Event::CacheCleared { models } => self.push(Notice::info(if models {
                "cached results and loaded models cleared"
            } else {
                "cached results cleared"
            })),
            Event::Restored { node, outputs } => {
                self.bump(&node).outputs = Some(outputs);
            }
            Event::WorkerMessage { text } => self.push(Notice::warning(text)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::engine::PlannedNode;

    fn plan(ids: &[&str]) -> Plan {
        Plan {
            targets: vec![ids[ids.len() - 1].to_string()],
            nodes: ids
                .iter()
                .map(|id| PlannedNode {
                    id: id.to_string(),
                    key: None,
                    status: NodeStatus::Stale,
                    inputs: Default::default(),
                    pulled: true,
                    own_error: false,
                })
                .collect(),
        }
    }

    #[test]
    fn a_run_moves_nodes_through_queued_running_done_and_failed() {
        let mut s = Session::default();
        s.apply(Event::RunStarted { run_id: 1, plan: plan(&["a", "b", "c"]) });
        assert_eq!(s.run_progress(), Some((0, 3, 0.0)));
        s.apply(Event::NodeStarted { run_id: 1, node: "a".into() });
        s.apply(Event::Progress { run_id: 1, node: "a".into(), step: 5, total: 20 });
        assert_eq!(s.node("a").unwrap().activity, Some(Activity::Running { step: 5, total: 20 }));
        assert_eq!(s.run_progress(), Some((0, 3, 0.25)));
        s.apply(Event::NodeFinished {
            run_id: 1,
            node: "a".into(),
            cached: false,
            elapsed: Duration::from_millis(7),
            outputs: NodeOutputs::new().with("x", 3_i64),
        });
        s.apply(Event::NodeFailed { run_id: 1, node: "b".into(), message: "file gone".into() });
        s.apply(Event::NodeSkipped { run_id: 1, node: "c".into(), reason: "b failed".into() });
        // An event of another run is ignored while run 1 is going.
        s.apply(Event::NodeStarted { run_id: 7, node: "c".into() });
        assert!(matches!(s.node("c").unwrap().activity, Some(Activity::Skipped { .. })));
        s.apply(Event::RunFinished { run_id: 1, outcome: RunOutcome::Failed { failed: vec!["b".into()] } });
        assert_eq!(s.running, None);
        assert_eq!(s.node("a").unwrap().outputs.as_ref().unwrap().get::<i64>("x"), Some(&3));
        let errors: Vec<(Option<&str>, &str)> =
            s.log.iter().filter(|n| n.level == Level::Error).map(|n| (n.node.as_deref(), n.text.as_str())).collect();
        assert_eq!(errors, [(Some("b"), "failed: file gone"), (None, "run finished with failures in: b")]);
        let skipped = s.log.iter().find(|n| n.node.as_deref() == Some("c")).unwrap();
        assert_eq!(skipped.level, Level::Warning, "a skipped node is logged too");
        assert!(skipped.line().ends_with(" warning [c] skipped: b failed"), "{}", skipped.line());
        // A new run clears the old activities but keeps outputs until the node runs again.
        s.apply(Event::RunStarted { run_id: 2, plan: plan(&["c"]) });
        assert_eq!(s.node("a").unwrap().activity, None);
        assert!(s.node("a").unwrap().outputs.is_some());
        assert_eq!(s.node("c").unwrap().activity, Some(Activity::Queued));
    }

    #[test]
    fn the_eta_counts_the_running_nodes_pace_and_the_queued_nodes_history_and_falls() {
        let mut s = Session::default();
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let finished = |node: &str, secs: u64| Event::NodeFinished {
            run_id: 1,
            node: node.into(),
            cached: false,
            elapsed: Duration::from_secs(secs),
            outputs: NodeOutputs::new(),
        };
        // A first run: nothing known about b until it has run.
        s.apply_at(Event::RunStarted { run_id: 1, plan: plan(&["a", "b"]) }, at(0));
        assert_eq!(s.eta(at(0)), None, "no node has ever run");
        s.apply_at(Event::NodeStarted { run_id: 1, node: "a".into() }, at(0));
        s.apply_at(Event::Progress { run_id: 1, node: "a".into(), step: 2, total: 10 }, at(2_000));
        let eta = s.eta(at(2_000)).unwrap();
        assert_eq!(eta, Eta { remaining: Duration::from_secs(8), complete: false }, "b never ran: a lower bound");
        s.apply_at(finished("a", 10), at(10_000));
        s.apply_at(finished("b", 20), at(30_000));
        s.apply_at(Event::RunFinished { run_id: 1, outcome: RunOutcome::Completed }, at(30_000));
        assert_eq!(s.eta(at(30_000)), None, "no run");

        // The second run knows both.
        let t1 = 100_000;
        s.apply_at(Event::RunStarted { run_id: 2, plan: plan(&["a", "b"]) }, at(t1));
        assert_eq!(s.eta(at(t1)).unwrap(), Eta { remaining: Duration::from_secs(30), complete: true });
        s.apply_at(Event::NodeStarted { run_id: 2, node: "a".into() }, at(t1));
        s.apply_at(Event::Progress { run_id: 2, node: "a".into(), step: 1, total: 10 }, at(t1 + 1_000));
        let first = s.eta(at(t1 + 1_000)).unwrap().remaining;
        assert_eq!(first, Duration::from_secs(29));
        s.apply_at(Event::Progress { run_id: 2, node: "a".into(), step: 5, total: 10 }, at(t1 + 5_000));
        let later = s.eta(at(t1 + 5_000)).unwrap().remaining;
        assert_eq!(later, Duration::from_secs(25));
        // Between steps the running node's share counts down.
        assert_eq!(s.eta(at(t1 + 6_000)).unwrap().remaining, Duration::from_secs(24));
        assert_eq!(s.elapsed(at(t1 + 6_000)), Some(Duration::from_secs(6)));
        // A pause freezes both clocks; after it the ETA goes on from where it stood.
        s.apply_at(Event::Paused { run_id: 2, paused: true }, at(t1 + 6_000));
        assert_eq!(s.eta(at(t1 + 60_000)).unwrap().remaining, Duration::from_secs(24));
        assert_eq!(s.elapsed(at(t1 + 60_000)), Some(Duration::from_secs(6)));
        s.apply_at(Event::Paused { run_id: 2, paused: false }, at(t1 + 60_000));
        assert!(!s.paused);
        assert_eq!(s.eta(at(t1 + 61_000)).unwrap().remaining, Duration::from_secs(23));
        assert_eq!(s.elapsed(at(t1 + 61_000)), Some(Duration::from_secs(7)));
    }

    #[test]
    fn the_log_is_bounded() {
        let mut s = Session::default();
        for i in 0..(LOG_LINES + 20) {
            s.push(Notice::info(format!("{i}")));
        }
        assert_eq!(s.log.len(), LOG_LINES);
        assert_eq!(s.log[0].text, "20");
    }
}
