//! The background worker: one thread that owns the engine (and, through it, the compute device and the
//! loaded models). Front ends send commands and read events over bounded channels; the GUI never waits.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use super::cache::CacheKey;
use super::engine::Engine;
use super::events::{Command, Event, RunId, RunOutcome};
use super::plan::NodeStatus;
use crate::graph::{Graph, NodeId, validate};

/// Capacity of the command channel.
pub const COMMAND_CAPACITY: usize = 64;
/// Capacity of the event channel. When it is full, progress and preview events are dropped (the next one
/// supersedes them); every other event waits for room.
pub const EVENT_CAPACITY: usize = 1024;

/// How often a paused run looks whether it may go on.
const PAUSE_POLL: Duration = Duration::from_millis(20);

/// Called after each event is queued (a GUI passes `request_repaint`).
pub type Waker = Box<dyn Fn() + Send + Sync>;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WorkerError {
    #[error("the worker thread has stopped")]
    Stopped,
    #[error("the worker's command queue is full; try again")]
    Busy,
}

/// Handle to the worker thread.
pub struct Worker {
    commands: SyncSender<Command>,
    events: Receiver<Event>,
    graph_slot: Arc<Mutex<Option<(Graph, bool)>>>,
    /// Runs with an id up to this one are cancelled.
    cancel_upto: Arc<AtomicU64>,
    /// While set, the run in progress waits at its next step (or between nodes), keeping its state.
    paused: Arc<AtomicBool>,
    next_run: RunId,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    /// Starts the worker. `make_engine` runs on the worker thread, so whatever the engine creates there
    /// (the compute device, loaded models) stays on that thread.
    pub fn spawn<F>(make_engine: F, waker: Option<Waker>) -> Result<Self, std::io::Error>
    where
        F: FnOnce() -> Engine + Send + 'static,
    {
        let (cmd_tx, cmd_rx) = mpsc::sync_channel(COMMAND_CAPACITY);
        let (ev_tx, ev_rx) = mpsc::sync_channel(EVENT_CAPACITY);
        let graph_slot = Arc::new(Mutex::new(None));
        let cancel_upto = Arc::new(AtomicU64::new(0));
        let paused = Arc::new(AtomicBool::new(false));
        let state = WorkerState {
            paused: paused.clone(),
            commands: cmd_rx,
            events: ev_tx,
            waker,
            graph_slot: graph_slot.clone(),
            cancel_upto: cancel_upto.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("stepstone-worker".to_string())
            .spawn(move || state.serve(make_engine()))?;
        Ok(Worker {
            commands: cmd_tx,
            events: ev_rx,
            graph_slot,
            cancel_upto,
            paused,
            next_run: 1,
            thread: Some(thread),
        })
    }

    fn send(&self, command: Command) -> Result<(), WorkerError> {
        self.commands.try_send(command).map_err(|e| match e {
            TrySendError::Full(_) => WorkerError::Busy,
            TrySendError::Disconnected(_) => WorkerError::Stopped,
        })
    }

    /// Replaces the worker's graph. The worker answers with `Event::GraphChecked`. Bursts of edits
    /// coalesce: only the newest graph is checked.
    pub fn set_graph(&self, graph: Graph) -> Result<(), WorkerError> {
        self.put_graph(graph, false)
    }

    /// [`Self::set_graph`] for a front end that has forgotten every result it was shown (a new document):
    /// the worker sends `Event::Restored` again for every node whose result is cached.
    pub fn replace_graph(&self, graph: Graph) -> Result<(), WorkerError> {
        self.put_graph(graph, true)
    }

    fn put_graph(&self, graph: Graph, fresh: bool) -> Result<(), WorkerError> {
        let was_empty = {
            let mut slot = self.graph_slot.lock().unwrap_or_else(|p| p.into_inner());
            let fresh = fresh || slot.as_ref().is_some_and(|(_, f)| *f);
            slot.replace((graph, fresh)).is_none()
        };
        if was_empty { self.send(Command::GraphChanged) } else { Ok(()) }
    }

    /// Replaces the engine's access policy; the worker checks the current graph again (`Event::GraphChecked`).
    pub fn set_access(&self, access: crate::graph::AccessPolicy) -> Result<(), WorkerError> {
        self.send(Command::SetAccess(Box::new(access)))
    }

    /// Asks for a run of `targets` (all output nodes when empty) of the current graph.
    pub fn run(&mut self, targets: Vec<NodeId>) -> Result<RunId, WorkerError> {
        let run_id = self.next_run;
        self.send(Command::Run { run_id, targets })?;
        self.next_run += 1;
        Ok(run_id)
    }

    /// Sampling nodes preview their latents every `every` steps from the next node on (0: off).
    pub fn set_live_previews(&self, every: u32) -> Result<(), WorkerError> {
        self.send(Command::SetLivePreviews(every))
    }

    /// Pauses the run in progress at its next step, or a run that starts later at its first (the worker
    /// keeps everything it computed; Cancel still works).
    pub fn pause(&self) {
        self.paused.store(true, Ordering::SeqCst);
    }

    /// Lets a paused run go on from where it waited.
    pub fn resume(&self) {
        self.paused.store(false, Ordering::SeqCst);
    }

    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::SeqCst)
    }

    /// Cancels every run asked for so far (the one in progress stops within one step).
    pub fn cancel(&self) {
        self.cancel_upto.fetch_max(self.next_run.saturating_sub(1), Ordering::SeqCst);
        // The flag set above is what cancels; the command only wakes an idle worker, so a full queue (a busy
        // worker, which polls the flag) loses nothing.
        if let Err(WorkerError::Stopped) = self.send(Command::Cancel) {
            tracing::debug!("cancel: the worker has stopped");
        }
    }

    /// Asks which nodes a run of `targets` would evaluate; answered with `Event::Stale`.
    pub fn query_stale(&self, targets: Vec<NodeId>) -> Result<(), WorkerError> {
        self.send(Command::QueryStale { targets })
    }

    /// Drops cached node results (and, with `models`, loaded models).
    pub fn clear_cache(&self, models: bool) -> Result<(), WorkerError> {
        self.send(Command::ClearCache { models })
    }

    /// The next event, if one is waiting.
    pub fn try_event(&self) -> Option<Event> {
        self.events.try_recv().ok()
    }

    /// The next event, waiting up to `timeout`. `Err(Stopped)` once the worker is gone and drained.
    pub fn wait_event(&self, timeout: Duration) -> Result<Option<Event>, WorkerError> {
        match self.events.recv_timeout(timeout) {
            Ok(e) => Ok(Some(e)),
            Err(RecvTimeoutError::Timeout) => Ok(None),
            Err(RecvTimeoutError::Disconnected) => Err(WorkerError::Stopped),
        }
    }

    /// Stops the worker after the command in progress and waits for it.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.cancel();
        let Some(thread) = self.thread.take() else { return };
        // Never block here: the worker may itself be waiting for room in the event queue, so keep
        // draining events until the shutdown command fits and the thread has ended.
        let mut sent = false;
        while !thread.is_finished() {
            if !sent {
                sent = !matches!(self.commands.try_send(Command::Shutdown), Err(TrySendError::Full(_)));
            }
            while self.events.try_recv().is_ok() {}
            std::thread::sleep(Duration::from_millis(1));
        }
        if thread.join().is_err() {
            tracing::error!("the worker thread panicked; its last run's events may be missing");
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.stop();
    }
}

struct WorkerState {
    paused: Arc<AtomicBool>,
    commands: Receiver<Command>,
    events: SyncSender<Event>,
    waker: Option<Waker>,
    graph_slot: Arc<Mutex<Option<(Graph, bool)>>>,
    cancel_upto: Arc<AtomicU64>,
}

impl WorkerState {
    fn emit(&self, event: Event) {
        let lossy = matches!(event, Event::Progress { .. } | Event::Preview { .. });
        let sent = if lossy { self.events.try_send(event).is_ok() } else { self.events.send(event).is_ok() };
        if sent && let Some(w) = &self.waker {
            w();
        }
    }

    /// Checks the graph and tells the front end what a run would do, then sends the cached results it has
    /// not been shown yet (`shown`: the cache key of the result each node last showed).
    fn check(&self, engine: &mut Engine, graph: &Graph, shown: &mut HashMap<NodeId, CacheKey>) {
        let report = validate(graph, engine.registry(), &engine.validate_options());
        let plan = engine.plan(graph, &[]).ok();
        self.emit(Event::GraphChecked { report, plan: plan.clone() });
        let Some(plan) = plan else { return };
        for p in plan.nodes.iter().filter(|p| p.status == NodeStatus::Cached) {
            let Some(key) = p.key else { continue };
            if shown.get(&p.id) == Some(&key) {
                continue;
            }
            if let Some(outputs) = engine.cached_result(&key) {
                shown.insert(p.id.clone(), key);
                self.emit(Event::Restored { node: p.id.clone(), outputs });
            }
        }
        for text in engine.take_cache_log() {
            self.emit(Event::WorkerMessage { text });
        }
    }

    fn serve(self, mut engine: Engine) {
        let mut graph = Graph::new();
        let mut shown: HashMap<NodeId, CacheKey> = HashMap::new();
        while let Ok(command) = self.commands.recv() {
            match command {
                Command::GraphChanged => {
                    let next = self.graph_slot.lock().unwrap_or_else(|p| p.into_inner()).take();
                    if let Some((next, fresh)) = next {
                        graph = next;
                        if fresh {
                            shown.clear();
                        }
                        self.check(&mut engine, &graph, &mut shown);
                    }
                }
                Command::Run { run_id, targets } => {
                    let cancel_upto = self.cancel_upto.clone();
                    let is_cancelled = move || cancel_upto.load(Ordering::SeqCst) >= run_id;
                    // Polled at every step and between nodes: a pause waits here, inside the step loop, so the
                    // run goes on exactly where it stopped.
                    let cancelled = || {
                        if self.paused.load(Ordering::SeqCst) && !is_cancelled() {
                            self.emit(Event::Paused { run_id, paused: true });
                            while self.paused.load(Ordering::SeqCst) && !is_cancelled() {
                                std::thread::sleep(PAUSE_POLL);
                            }
                            self.emit(Event::Paused { run_id, paused: false });
                        }
                        is_cancelled()
                    };
                    if is_cancelled() {
                        self.emit(Event::RunFinished { run_id, outcome: RunOutcome::Cancelled });
                        continue;
                    }
                    // What the run shows counts as shown (a later check does not send it again).
                    let mut keys: HashMap<NodeId, CacheKey> = HashMap::new();
                    let mut emit = |e: Event| {
                        match &e {
                            Event::RunStarted { plan, .. } => {
                                keys = plan.nodes.iter().filter_map(|p| Some((p.id.clone(), p.key?))).collect();
                            }
                            Event::NodeFinished { node, .. } => {
                                if let Some(key) = keys.get(node) {
                                    shown.insert(node.clone(), *key);
                                }
                            }
                            _ => {}
                        }
                        self.emit(e)
                    };
                    engine.run(&graph, &targets, run_id, &mut emit, &cancelled);
                }
                Command::QueryStale { targets } => {
                    let plan = engine.plan(&graph, &targets).map_err(|e| e.to_string());
                    self.emit(Event::Stale { targets, plan });
                }
                Command::ClearCache { models } => {
                    engine.clear_cache(models);
                    shown.clear();
                    self.emit(Event::CacheCleared { models });
                }
                Command::SetAccess(access) => {
                    engine.set_access(*access);
                    self.check(&mut engine, &graph, &mut shown);
                }
                Command::SetLivePreviews(every) => engine.set_live_previews(every),
                Command::Cancel => {}
                Command::Shutdown => break,
            }
        }
    }
}
