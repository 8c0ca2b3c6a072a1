//! The studio window: menus and shortcuts, the node canvas, the problems and log panel, the status bar;
//! opening presets and clips (File > Open, or dropping a file on the window), saving, undo, and runs on the
//! background worker.
//!
//! `Studio::ui` draws into any `egui::Ui`, so tests drive it headless with `egui::Context::run_ui`.

use std::path::{Path, PathBuf};

use egui::{Color32, Key, KeyboardShortcut, Modifiers, RichText, Ui};

mod autosave;
mod dialogs;
mod editing;
mod panels;

use panels::LogFilter;
pub use panels::run_clock_text;
pub mod inspector;

use super::document::Document;
use super::palette::Palette;
use super::recovery::{Recovery, StateDir};
use super::session::{Level, Notice, Session};
use super::thumbs::Textures;
use super::viewer::GraphViewer;
use crate::graph::{AccessPolicy, FileUse, Graph, KindRegistry, NodeId, Severity, Verdict, file_uses, save_preset};
use crate::open::{CLIP_EXTENSIONS, GraphSource, open_graph};
use crate::runtime::worker::Worker;

/// Edits closer together than this (seconds) make one undo step (typing a prompt is one step, not one per
/// letter).
const MERGE_EDITS_WITHIN: f64 = 1.0;
/// In how many frames after an open the view is fitted to the graph.
const FIT_FRAMES: u8 = 3;
/// How many undo steps are kept.
const UNDO_STEPS: usize = 200;
/// The graph being edited is autosaved to the recovery file at most this often (seconds) while it changes.
pub const AUTOSAVE_EVERY: f64 = 5.0;
/// Live previews show the sampling latents after every this many steps.
pub const LIVE_PREVIEW_EVERY: u32 = 1;

const OPEN: KeyboardShortcut = KeyboardShortcut::new(Modifiers::COMMAND, Key::O);
const SAVE: KeyboardShortcut = KeyboardShortcut::new(Modifiers::COMMAND, Key::S);
const SAVE_AS: KeyboardShortcut = KeyboardShortcut::new(Modifiers::COMMAND.plus(Modifiers::SHIFT), Key::S);
const UNDO: KeyboardShortcut = KeyboardShortcut::new(Modifiers::COMMAND, Key::Z);
const REDO: KeyboardShortcut = KeyboardShortcut::new(Modifiers::COMMAND.plus(Modifiers::SHIFT), Key::Z);
const RUN: KeyboardShortcut = KeyboardShortcut::new(Modifiers::COMMAND, Key::Enter);
const RUN_SELECTED: KeyboardShortcut = KeyboardShortcut::new(Modifiers::COMMAND.plus(Modifiers::SHIFT), Key::Enter);
const FIT: KeyboardShortcut = KeyboardShortcut::new(Modifiers::NONE, Key::Home);
const CANCEL: KeyboardShortcut = KeyboardShortcut::new(Modifiers::NONE, Key::Escape);
const DUPLICATE: KeyboardShortcut = KeyboardShortcut::new(Modifiers::COMMAND, Key::D);
const DELETE: KeyboardShortcut = KeyboardShortcut::new(Modifiers::NONE, Key::Delete);
const BACKSPACE: KeyboardShortcut = KeyboardShortcut::new(Modifiers::NONE, Key::Backspace);
const PLAYER: KeyboardShortcut = KeyboardShortcut::new(Modifiers::NONE, Key::P);
const FRAME_BACK: KeyboardShortcut = KeyboardShortcut::new(Modifiers::NONE, Key::Comma);
const FRAME_ON: KeyboardShortcut = KeyboardShortcut::new(Modifiers::NONE, Key::Period);
const PALETTE: KeyboardShortcut = KeyboardShortcut::new(Modifiers::NONE, Key::Space);
const PALETTE_TAB: KeyboardShortcut = KeyboardShortcut::new(Modifiers::NONE, Key::Tab);

/// The editor's state.
pub struct Studio {
    registry: KindRegistry,
    models_dir: PathBuf,
    doc: Document,
    /// The graph as of the last committed edit.
    current: Graph,
    /// The graph as last opened or saved (an unsaved-changes mark shows while they differ).
    saved: Graph,
    /// The preset file the graph is saved to. A graph opened from a clip has none: saving asks for a name.
    path: Option<PathBuf>,
    /// The file the graph was opened from (a preset or a clip).
    opened_from: Option<PathBuf>,
    undo: Vec<Graph>,
    redo: Vec<Graph>,
    /// When the last edit was committed (egui time), for merging quick edits into one undo step.
    last_edit: Option<f64>,
    session: Session,
    textures: Textures,
    worker: Option<Worker>,
    /// Changes with each opened document, so the canvas starts with a fresh view.
    canvas_generation: u64,
    /// Fit the view to the graph in this many of the coming frames (after an open, or View > Fit): node
    /// sizes settle over the first frames a node is drawn.
    fit_frames: u8,
    /// The nodes' bounds in canvas coordinates, as drawn last frame.
    content: Option<egui::Rect>,
    title_shown: String,
    /// The window was asked to close while the graph had unsaved changes: a dialog asks what to do.
    confirm_close: bool,
    /// The artist chose to close without saving.
    close_confirmed: bool,
    /// What graphs may read and write (models and output folders, the artist's own choices).
    access: AccessPolicy,
    /// Whether the files the graph reads and writes have been shown and accepted (a graph opened from a
    /// file is someone else's data until then).
    files_confirmed: bool,
    /// A run waiting for the artist to accept the list of files it reads and writes.
    confirm_run: Option<(Vec<NodeId>, Vec<FileUse>)>,
    /// Where the recovery file and the recent files live (None: no autosave, no recent files).
    state: Option<StateDir>,
    recent: Vec<PathBuf>,
    /// The graph last written to the recovery file, and when (egui time) the last autosave check ran.
    autosaved: Option<Graph>,
    autosave_checked: f64,
    /// A graph a crash left in the recovery file, offered back until the artist restores or discards it.
    recovery_offer: Option<Recovery>,
    /// The node palette, while open.
    palette: Option<Palette>,
    /// The canvas-to-screen transform and the canvas's screen rect, as drawn last frame.
    view: egui::emath::TSTransform,
    canvas_rect: egui::Rect,
    /// The nodes selected on the canvas, by graph id: the node last clicked, or (after Shift+click or a
    /// Shift+drag box) the canvas's selection.
    selected: Vec<NodeId>,
    /// The canvas's own selection as of last frame (Shift+click, Shift+drag).
    box_selected: Vec<NodeId>,
    /// The node clicked last (the inspector shows it).
    clicked_node: Option<NodeId>,
    /// The graph as the last run started (the seeds it used).
    last_run_graph: Option<Graph>,
    /// The clip player panel.
    player: super::player::Player,
    /// Whether sampling nodes show their latents while they run.
    live_previews: bool,
    /// The log panel's filters.
    log_filter: LogFilter,
    log_search: String,
    /// Each node's rect on the screen, as drawn last frame.
    node_rects: Vec<(NodeId, egui::Rect)>,
    /// Where each output pin was drawn last frame (screen coordinates).
    output_pins: Vec<(NodeId, String, egui::Pos2)>,
    /// What Copy took last (a preset of the copied nodes), for Paste when the system clipboard is not
    /// reachable.
    clipboard: Option<String>,
}

impl Studio {
    /// An editor with an empty graph and no worker (runs are refused until one is attached).
    pub fn new(registry: KindRegistry, models_dir: PathBuf) -> Studio {
        let models_dir_for_access = models_dir.clone();
        Studio {
            registry,
            models_dir,
            doc: Document::default(),
            current: Graph::default(),
            saved: Graph::default(),
            path: None,
            opened_from: None,
            undo: Vec::new(),
            redo: Vec::new(),
            last_edit: None,
            session: Session::default(),
            textures: Textures::default(),
            worker: None,
            canvas_generation: 0,
            fit_frames: FIT_FRAMES,
            content: None,
            title_shown: String::new(),
            confirm_close: false,
            close_confirmed: false,
            access: AccessPolicy::new(models_dir_for_access, crate::graph::access::DEFAULT_OUTPUT_DIR),
            files_confirmed: true,
            confirm_run: None,
            state: None,
            recent: Vec::new(),
            autosaved: None,
            autosave_checked: f64::NEG_INFINITY,
            recovery_offer: None,
            palette: None,
            view: egui::emath::TSTransform::IDENTITY,
            canvas_rect: egui::Rect::NOTHING,
            selected: Vec::new(),
            box_selected: Vec::new(),
            clicked_node: None,
            last_run_graph: None,
            player: Default::default(),
            live_previews: true,
            log_filter: LogFilter::All,
            log_search: String::new(),
            node_rects: Default::default(),
            output_pins: Vec::new(),
            clipboard: None,
        }
    }

    /// Turns the sampling nodes' live previews on or off (View menu).
    pub fn set_live_previews(&mut self, on: bool) {
        self.live_previews = on;
        if let Some(worker) = &self.worker
            && let Err(e) = worker.set_live_previews(if on { LIVE_PREVIEW_EVERY } else { 0 })
        {
            self.session.push(Notice::error(format!("the worker did not take the preview setting: {e}")));
        }
    }

    /// The clip player (open it, choose A and B, step frames).
    pub fn player(&self) -> &super::player::Player {
        &self.player
    }

    pub fn player_mut(&mut self) -> &mut super::player::Player {
        &mut self.player
    }

    /// The sizes of the textures the canvas holds for node `id`'s result.
    pub fn thumbnail_sizes(&self, id: &str) -> Vec<[usize; 2]> {
        self.textures.sizes(id)
    }

    /// The output folder export paths resolve in (default `./out`).
    pub fn with_output_dir(mut self, dir: PathBuf) -> Studio {
        self.access.output_dir = dir;
        self.send_access();
        self
    }

    /// Changes the output folder (File > Output folder): Export paths resolve inside it from now on.
    pub fn set_output_dir(&mut self, dir: PathBuf) {
        self.session.push(Notice::info(format!("exports now go into {}", dir.display())));
        self.access.output_dir = dir;
        self.send_access();
    }

    /// The rules for the files the graph may read and write.
    pub fn access(&self) -> &AccessPolicy {
        &self.access
    }

    /// The files a run waits for the artist to accept, if a run is waiting.
    pub fn pending_confirmation(&self) -> Option<&[FileUse]> {
        self.confirm_run.as_ref().map(|(_, files)| files.as_slice())
    }

    /// Accepts the files the graph reads and writes (as the confirmation dialog's Run button does): its
    /// input files may be read; outputs outside the output folder stay refused unless chosen in a dialog.
    /// A waiting run starts.
    pub fn confirm_files(&mut self) {
        self.files_confirmed = true;
        self.access.allow_inputs = true;
        self.send_access();
        if let Some((targets, _)) = self.confirm_run.take() {
            self.start_run(targets);
        }
    }

    /// Accepts the graph's model and output paths without allowing its input files (`edit --run` without
    /// `--allow-paths`: the artist asked for the run on the command line).
    pub fn accept_outputs_only(&mut self) {
        self.files_confirmed = true;
    }

    fn send_access(&mut self) {
        if let Some(worker) = &self.worker
            && let Err(e) = worker.set_access(self.access.clone())
        {
            self.session.push(Notice::error(format!("the worker did not take the file rules: {e}")));
        }
    }

    /// Attaches the background worker that evaluates the graph.
    pub fn with_worker(mut self, worker: Worker) -> Studio {
        self.worker = Some(worker);
        self.send_access();
        self.set_live_previews(self.live_previews);
        self.send_graph();
        self
    }

    /// The graph as edited (including edits not yet committed to the undo history).
    pub fn graph(&self) -> Graph {
        self.doc.to_graph()
    }

    pub fn document(&self) -> &Document {
        &self.doc
    }

    pub fn document_mut(&mut self) -> &mut Document {
        &mut self.doc
    }

    /// The preset file a save writes to.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    pub fn opened_from(&self) -> Option<&Path> {
        self.opened_from.as_deref()
    }

    /// Whether the graph differs from the file it was opened from or last saved to.
    pub fn is_dirty(&self) -> bool {
        self.doc.to_graph() != self.saved
    }

    pub fn session(&self) -> &Session {
        &self.session
    }

    /// The run state; front ends other than the worker (tests, tools) can feed it events.
    pub fn session_mut(&mut self) -> &mut Session {
        &mut self.session
    }

    pub fn can_undo(&self) -> bool {
        !self.undo.is_empty()
    }

    /// Opens a preset, or a clip stepstone exported, replacing the graph being edited (Edit > Undo brings
    /// it back). On failure the message names the file and the graph being edited is untouched.
    pub fn open(&mut self, path: &Path) -> bool {
        match open_graph(path) {
            Ok(graph) => {
                let is_preset = GraphSource::of(path) != Some(GraphSource::Clip);
                self.replace_graph(graph, is_preset.then(|| path.to_path_buf()), Some(path.to_path_buf()));
                let what = if is_preset { "opened" } else { "opened the graph embedded in" };
                self.session.push(Notice::info(format!(
                    "{what} {} ({} nodes, {} links)",
                    path.display(),
                    self.current.nodes.len(),
                    self.current.links.len()
                )));
                self.remember_recent(path);
                true
            }
            Err(e) => {
                self.session.push(Notice::error(format!("could not open: {e}")));
                false
            }
        }
    }

    /// A new, empty graph (undoable).
    pub fn new_graph(&mut self) {
        self.replace_graph(Graph::default(), None, None);
    }

    /// Puts another graph in the editor as saved (from a file, or a new empty one), keeping the one it
    /// replaces, edits included, one undo step back. Results of the old graph's nodes are forgotten.
    fn replace_graph(&mut self, graph: Graph, path: Option<PathBuf>, opened_from: Option<PathBuf>) {
        self.commit_pending(None);
        if self.current != graph {
            self.push_undo(self.current.clone());
        }
        self.set_document(graph);
        self.saved = self.current.clone();
        self.path = path;
        // A graph from a file is someone else's data: its files are shown before its first run, and
        // nothing chosen for the previous graph carries over.
        self.files_confirmed = opened_from.is_none();
        self.opened_from = opened_from;
        self.access.allow_inputs = false;
        self.access.chosen.clear();
        self.confirm_run = None;
        self.send_access();
        self.session.nodes.clear();
        self.textures = Textures::default();
    }

    /// Saves to `path` (a preset file); later saves go there too.
    pub fn save_as(&mut self, path: &Path) -> bool {
        self.commit_pending(None);
        let mut path = path.to_path_buf();
        if path.extension().is_none() {
            path.set_extension("json");
        }
        match save_preset(&path, &self.current) {
            Ok(()) => {
                self.saved = self.current.clone();
                self.session.push(Notice::info(format!("saved {}", path.display())));
                self.remember_recent(&path);
                self.path = Some(path);
                true
            }
            Err(e) => {
                self.session.push(Notice::error(format!("could not save: {e}")));
                false
            }
        }
    }

    /// Saves to the current preset file, or asks for one.
    fn save(&mut self) {
        match self.path.clone() {
            Some(path) => {
                self.save_as(&path);
            }
            None => self.save_dialog(),
        }
    }

    fn save_dialog(&mut self) {
        let suggested = self
            .opened_from
            .as_ref()
            .and_then(|p| p.file_stem())
            .map(|s| format!("{}.json", s.to_string_lossy()))
            .unwrap_or_else(|| "graph.json".to_string());
        let dialog = rfd::FileDialog::new().add_filter("stepstone graph", &["json"]).set_file_name(suggested);
        let dialog = match self.path.as_ref().and_then(|p| p.parent()) {
            Some(dir) => dialog.set_directory(dir),
            None => dialog,
        };
        if let Some(path) = dialog.save_file() {
            self.save_as(&path);
        }
    }

    fn open_dialog(&mut self) {
        let mut all = vec!["json"];
        all.extend_from_slice(CLIP_EXTENSIONS);
        let dialog = rfd::FileDialog::new()
            .add_filter("graphs and clips", &all)
            .add_filter("graph preset", &["json"])
            .add_filter("clip exported by stepstone", CLIP_EXTENSIONS);
        if let Some(path) = dialog.pick_file() {
            self.open(&path);
        }
    }

    pub fn undo(&mut self) {
        self.commit_pending(None);
        if let Some(previous) = self.undo.pop() {
            self.redo.push(self.current.clone());
            self.set_document(previous);
        }
    }

    pub fn redo(&mut self) {
        self.commit_pending(None);
        if let Some(next) = self.redo.pop() {
            self.undo.push(self.current.clone());
            self.set_document(next);
        }
    }

    /// Asks the worker to run `targets` (every output node when empty). The first run of a graph opened from
    /// a file waits until the artist has seen and accepted the files it reads and writes.
    pub fn run(&mut self, targets: Vec<NodeId>) {
        self.draw_new_seeds();
        if !self.files_confirmed {
            let files = file_uses(&self.current, &self.registry, &self.access);
            self.confirm_run = Some((targets, files));
            return;
        }
        self.start_run(targets);
    }

    /// Runs the selected nodes (and what they need); nothing when none is selected.
    pub fn run_selected(&mut self) {
        if self.selected.is_empty() {
            self.session.push(Notice::warning("no node is selected: click one, or Shift+drag a box"));
            return;
        }
        self.run(self.selected.clone());
    }

    fn start_run(&mut self, targets: Vec<NodeId>) {
        let Some(worker) = self.worker.as_mut() else {
            self.session.push(Notice::error("no worker is attached: this editor cannot run graphs"));
            return;
        };
        match worker.run(targets) {
            Ok(_) => self.last_run_graph = Some(self.current.clone()),
            Err(e) => self.session.push(Notice::error(format!("could not start the run: {e}"))),
        }
    }

    /// Pauses the run in progress at its next step (Cancel still works while paused).
    pub fn pause(&mut self) {
        if let Some(worker) = &self.worker {
            worker.pause();
        }
    }

    /// Lets a paused run go on.
    pub fn resume(&mut self) {
        if let Some(worker) = &self.worker {
            worker.resume();
        }
    }

    /// Whether runs are held at their next step.
    pub fn is_paused(&self) -> bool {
        self.worker.as_ref().is_some_and(Worker::is_paused)
    }

    pub fn cancel(&mut self) {
        if let Some(worker) = &self.worker
            && self.session.running.is_some()
        {
            worker.cancel();
        }
    }

    /// Takes the worker's waiting events into the session.
    pub fn poll_worker(&mut self) {
        let Some(worker) = &self.worker else { return };
        while let Some(event) = worker.try_event() {
            self.session.apply(event);
        }
    }

    fn set_document(&mut self, graph: Graph) {
        self.doc = Document::from_graph(&graph, &self.registry);
        self.current = graph;
        self.last_edit = None;
        self.canvas_generation += 1;
        self.fit_frames = FIT_FRAMES;
        self.content = None;
        // A new document: the results it can show from the cache come again (Event::Restored).
        if let Some(worker) = &self.worker
            && let Err(e) = worker.replace_graph(self.current.clone())
        {
            self.session.push(Notice::error(format!("the worker did not take the graph: {e}")));
        }
    }

    fn push_undo(&mut self, graph: Graph) {
        self.undo.push(graph);
        if self.undo.len() > UNDO_STEPS {
            self.undo.remove(0);
        }
        self.redo.clear();
    }

    /// Records edits made on the canvas since the last commit. `now` is the egui time (None: never merge).
    fn commit_pending(&mut self, now: Option<f64>) {
        let graph = self.doc.to_graph();
        if graph == self.current {
            return;
        }
        let merge = matches!((now, self.last_edit), (Some(t), Some(last)) if t - last < MERGE_EDITS_WITHIN);
        if !merge {
            self.push_undo(self.current.clone());
        }
        self.last_edit = now;
        self.current = graph;
        let nodes = &self.current.nodes;
        self.session.retain_nodes(|id| nodes.contains_key(id));
        self.textures.retain(|id| nodes.contains_key(id));
        self.send_graph();
    }

    fn send_graph(&mut self) {
        if let Some(worker) = &self.worker
            && let Err(e) = worker.set_graph(self.current.clone())
        {
            self.session.push(Notice::error(format!("the worker did not take the graph: {e}")));
        }
    }

    fn window_title(&self) -> String {
        let name = match (&self.path, &self.opened_from) {
            (Some(p), _) => p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
            (None, Some(clip)) => {
                format!("graph from {}", clip.file_name().map(|n| n.to_string_lossy()).unwrap_or_default())
            }
            (None, None) => "untitled graph".to_string(),
        };
        let dirty = if self.current != self.saved { " •" } else { "" };
        format!("{name}{dirty} — stepstone")
    }

    /// Handles files dropped on the window: the first one that opens replaces the graph.
    fn take_dropped_files(&mut self, ui: &Ui) {
        let dropped: Vec<PathBuf> = ui.input(|i| i.raw.dropped_files.iter().map(|f| f.path().to_path_buf()).collect());
        if dropped.len() > 1 {
            self.session.push(Notice::warning(format!(
                "{} files were dropped; one graph opens at a time, so only the first that opens is used",
                dropped.len()
            )));
        }
        for path in dropped {
            if self.open(&path) {
                break;
            }
        }
    }

    fn shortcuts(&mut self, ui: &Ui) {
        let pressed = |s: &KeyboardShortcut| ui.input_mut(|i| i.consume_shortcut(s));
        // Longer shortcuts first: Ctrl+Shift+S would otherwise also match Ctrl+S.
        if pressed(&SAVE_AS) {
            self.save_dialog();
        } else if pressed(&SAVE) {
            self.save();
        }
        if pressed(&OPEN) {
            self.open_dialog();
        }
        // While a text field has the keyboard, its own undo, Home and Escape apply.
        if ui.ctx().memory(|m| m.focused().is_some()) {
            return;
        }
        if pressed(&REDO) {
            self.redo();
        } else if pressed(&UNDO) {
            self.undo();
        }
        if pressed(&RUN_SELECTED) {
            self.run_selected();
        } else if pressed(&RUN) {
            self.run(Vec::new());
        }
        if pressed(&FIT) {
            self.fit_frames = FIT_FRAMES;
        }
        if pressed(&PLAYER) {
            self.player.open = !self.player.open;
        }
        if self.player.open {
            let frames = self.player.length(&self.session, self.clicked_node.as_ref());
            if pressed(&FRAME_BACK) {
                self.player.step(false, frames);
            }
            if pressed(&FRAME_ON) {
                self.player.step(true, frames);
            }
        }
        // Escape closes the palette while it is open.
        if self.palette.is_none() && pressed(&CANCEL) {
            self.cancel();
        }
        if self.palette.is_none() {
            self.edit_shortcuts(ui);
        }
        if self.palette.is_none() && (pressed(&PALETTE) || pressed(&PALETTE_TAB)) {
            let pointer = ui.input(|i| i.pointer.hover_pos()).filter(|p| self.canvas_rect.contains(*p));
            self.open_palette(pointer.unwrap_or(self.canvas_rect.center()), None);
        }
    }

    /// Draws the whole window into `ui` and handles its input.
    pub fn ui(&mut self, ui: &mut Ui) {
        self.poll_worker();
        self.take_dropped_files(ui);
        self.shortcuts(ui);

        egui::Panel::top("menu").show(ui, |ui| self.menu_bar(ui));
        egui::Panel::bottom("status").show(ui, |ui| self.status_bar(ui));
        egui::Panel::right("side").default_size(340.0).show(ui, |ui| self.side_panel(ui));
        if self.player.open {
            egui::Panel::bottom("player").resizable(true).default_size(320.0).min_size(200.0).show(ui, |ui| {
                self.player.show(ui, &self.session, self.clicked_node.as_ref());
            });
        }
        egui::CentralPanel::no_frame().show(ui, |ui| self.canvas(ui));
        self.drop_overlay(ui);

        self.guard_close(ui);
        self.confirm_files_dialog(ui);
        self.recovery_dialog(ui);
        self.palette_window(ui);

        let dragging = ui.input(|i| i.pointer.any_down());
        let now = ui.input(|i| i.time);
        if !dragging {
            self.commit_pending(Some(now));
        }
        self.autosave(now);
        let title = self.window_title();
        if title != self.title_shown {
            ui.ctx().send_viewport_cmd(egui::ViewportCommand::Title(title.clone()));
            self.title_shown = title;
        }
        if self.session.running.is_some() {
            ui.ctx().request_repaint_after(std::time::Duration::from_millis(250));
        }
    }

    fn canvas(&mut self, ui: &mut Ui) {
        let mut viewer = GraphViewer {
            registry: &self.registry,
            session: &self.session,
            models_dir: &self.models_dir,
            textures: &mut self.textures,
            requests: Default::default(),
            fit: self.content.filter(|_| self.fit_frames > 0).map(|content| (ui.max_rect(), content)),
            fitted: false,
            content: None,
            transform: None,
            node_rects: Vec::new(),
            output_rows: Vec::new(),
        };
        let style = egui_snarl::ui::SnarlStyle {
            // Inputs above the parameters, outputs below: nodes stay narrow, so a pipeline fits across the
            // screen at a readable zoom.
            node_layout: Some(egui_snarl::ui::NodeLayout::sandwich()),
            pin_placement: Some(egui_snarl::ui::PinPlacement::Edge),
            // A box selects the nodes wholly inside it.
            select_rect_contained: Some(true),
            ..egui_snarl::ui::SnarlStyle::new()
        };
        let widget = egui_snarl::ui::SnarlWidget::new().id_salt(("canvas", self.canvas_generation)).style(style);
        widget.show(&mut self.doc.snarl, &mut viewer, ui);
        let boxed: Vec<NodeId> = widget
            .get_selected_nodes(ui)
            .into_iter()
            .filter_map(|n| self.doc.snarl.get_node(n))
            .map(|n| n.id.clone())
            .collect();
        if viewer.fitted {
            self.fit_frames -= 1;
        }
        self.content = viewer.content;
        self.canvas_rect = ui.max_rect();
        if let Some(transform) = viewer.transform {
            self.view = transform;
        }
        self.node_rects = viewer.node_rects.iter().map(|(id, rect)| (id.clone(), self.view * *rect)).collect();
        self.output_pins = viewer
            .output_rows
            .iter()
            .filter_map(|(id, port, y)| {
                let rect = viewer.node_rects.iter().find(|(n, _)| n == id)?.1;
                Some((id.clone(), port.clone(), self.view * egui::pos2(rect.right(), *y)))
            })
            .collect();
        let requests = viewer.requests;
        self.track_selection(ui, boxed);
        if let Some((at, wire)) = requests.palette {
            self.open_palette(self.view * at, wire);
        }
        for notice in requests.notices {
            self.session.push(notice);
        }
        if !requests.chosen.is_empty() {
            self.access.chosen.extend(requests.chosen);
            self.send_access();
        }
        if let Some(node) = requests.run_node {
            self.run(vec![node]);
        }
        if let Some(node) = requests.more {
            self.more_candidates(&node);
        }
        if self.doc.snarl.nodes().next().is_none() {
            ui.centered_and_justified(|ui| {
                ui.label(
                    RichText::new(
                        "Drop a graph preset or a clip exported by stepstone here, open one from File, \
                         or press Space (or right-click) to add nodes",
                    )
                    .weak(),
                );
            });
        }
    }

    /// While files are dragged over the window, says what dropping them does.
    fn drop_overlay(&self, ui: &Ui) {
        let hovered = ui.input(|i| i.raw.hovered_files.len());
        if hovered == 0 {
            return;
        }
        let rect = ui.ctx().content_rect();
        let painter = ui.ctx().layer_painter(egui::LayerId::new(egui::Order::Foreground, "drop".into()));
        painter.rect_filled(rect, 0.0, Color32::from_black_alpha(160));
        painter.text(
            rect.center(),
            egui::Align2::CENTER_CENTER,
            "Drop to open the graph (a preset, or a clip exported by stepstone)",
            egui::TextStyle::Heading.resolve(ui.style()),
            Color32::WHITE,
        );
    }
}

fn level_colour(level: Level) -> Color32 {
    match level {
        Level::Info => Color32::GRAY,
        Level::Warning => Color32::from_rgb(230, 170, 80),
        Level::Error => super::params::ERROR_COLOUR,
    }
}

/// The presets shipped in `graphs/` next to the working directory or the executable.
fn shipped_presets() -> Vec<PathBuf> {
    let mut dirs = vec![PathBuf::from("graphs")];
    if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe.parent()
    {
        dirs.push(dir.join("graphs"));
    }
    for dir in dirs {
        if let Ok(entries) = std::fs::read_dir(&dir) {
            let mut presets: Vec<PathBuf> =
                entries.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|e| e == "json")).collect();
            presets.sort();
            if !presets.is_empty() {
                return presets;
            }
        }
    }
    Vec::new()
}
