//! Editing the canvas: what is selected (a click, or egui-snarl's Shift+click and box), copy, cut, paste,
//! duplicate and delete, picking candidates by number and asking for more, and the node palette (adding a
//! node, or one that takes a dropped wire).

use egui::{Key, KeyboardShortcut, Modifiers, Ui};
use serde_json::Value;

use super::{BACKSPACE, DELETE, DUPLICATE, Studio};
use crate::graph::NodeId;
use crate::ui::palette::{Palette, WireEnd};
use crate::ui::session::Notice;

impl Studio {
    /// The nodes selected on the canvas.
    pub fn selected(&self) -> &[NodeId] {
        &self.selected
    }

    /// The node clicked last, which the inspector shows.
    pub fn current_node(&self) -> Option<&str> {
        self.clicked_node.as_deref()
    }

    /// Makes `id` the clicked node and the whole selection.
    pub fn select(&mut self, id: &str) {
        self.clicked_node = Some(id.to_string());
        self.selected = vec![id.to_string()];
    }

    /// A plain click on a node selects it alone; a change of the canvas's own selection (Shift+click,
    /// Shift+drag) selects that instead.
    pub(super) fn track_selection(&mut self, ui: &Ui, boxed: Vec<NodeId>) {
        if boxed != self.box_selected {
            self.box_selected = boxed.clone();
            if !boxed.is_empty() {
                self.selected = boxed;
                if self.selected.len() == 1 {
                    self.clicked_node = self.selected.first().cloned();
                }
            }
        }
        let (clicked, modifiers, at) =
            ui.input(|i| (i.pointer.primary_clicked(), i.modifiers, i.pointer.interact_pos()));
        if !clicked || modifiers.shift || modifiers.command {
            return;
        }
        let Some(at) = at.filter(|p| self.canvas_rect.contains(*p)) else { return };
        if ui.ctx().layer_id_at(at).is_some_and(|l| matches!(l.order, egui::Order::Foreground | egui::Order::Tooltip)) {
            return; // a click on a popup over the canvas
        }
        // The topmost node drawn there (later nodes are drawn over earlier ones).
        let hit = self.node_rects.iter().rev().find(|(_, r)| r.contains(at)).map(|(id, _)| id.clone());
        match hit {
            Some(id) => self.select(&id),
            None => {
                self.clicked_node = None;
                self.selected.clear();
            }
        }
    }

    /// Where the output pin `port` of node `id` was drawn last frame (screen coordinates).
    pub fn output_pin(&self, id: &str, port: &str) -> Option<egui::Pos2> {
        self.output_pins.iter().find(|(n, p, _)| n == id && p == port).map(|(_, _, at)| *at)
    }

    /// Where the node with graph id `id` was drawn last frame (screen coordinates).
    pub fn node_rect(&self, id: &str) -> Option<egui::Rect> {
        self.node_rects.iter().find(|(n, _)| n == id).map(|(_, r)| *r)
    }

    /// The selected nodes as preset text (Copy): parameters, titles, positions and the links between them.
    pub fn copy_selection(&mut self) -> Option<String> {
        if self.selected.is_empty() {
            return None;
        }
        let text = crate::graph::to_preset_string(&crate::ui::document::subgraph(&self.doc.snarl, &self.selected));
        self.clipboard = Some(text.clone());
        Some(text)
    }

    /// Pastes nodes from preset text (what Copy made, or a preset from elsewhere) with their top-left node at
    /// `at` (screen coordinates; None: beside where they were). Text that is no graph is refused, saying so.
    pub fn paste(&mut self, text: &str, at: Option<egui::Pos2>) -> Vec<NodeId> {
        let graph = match crate::graph::parse_preset(text, "the clipboard") {
            Ok(graph) if !graph.nodes.is_empty() => graph,
            Ok(_) => return Vec::new(),
            Err(e) => {
                self.session.push(Notice::warning(format!("nothing pasted: {e}")));
                return Vec::new();
            }
        };
        let origin = match at {
            Some(screen) => self.view.inverse() * screen,
            None => {
                let corner = graph.nodes.values().filter_map(|n| n.pos).map(|[x, y]| egui::pos2(x as f32, y as f32));
                corner.reduce(|a, b| a.min(b)).unwrap_or(egui::Pos2::ZERO) + egui::vec2(40.0, 40.0)
            }
        };
        self.commit_pending(None);
        let added = crate::ui::document::paste(&mut self.doc.snarl, &self.registry, &graph, origin);
        self.commit_pending(None); // one undo step of its own
        self.session.push(Notice::info(format!("pasted {} node(s): {}", added.len(), added.join(", "))));
        added
    }

    /// Copies the selected nodes and pastes them beside themselves (Ctrl+D).
    pub fn duplicate_selection(&mut self) -> Vec<NodeId> {
        let Some(text) = self.copy_selection() else { return Vec::new() };
        self.paste(&text, None)
    }

    /// Picks candidate `index` of the selected node's ranking as the anchor (keys 1-9); false when the
    /// selected node shows no ranking with that many candidates.
    pub fn pick_candidate(&mut self, index: usize) -> bool {
        let Some(id) = self.clicked_node.clone() else { return false };
        let Some(canvas_node) = self.doc.find(&id) else { return false };
        let Some(spec) = self.registry.get(&self.doc.snarl[canvas_node].node.kind).and_then(|k| k.pick) else {
            return false;
        };
        let count = match self.session.node(&id).and_then(crate::ui::thumbs::shown) {
            Some(crate::ui::thumbs::Shown::Ranking(r)) => r.images.len(),
            _ => 0,
        };
        if index >= count {
            self.session
                .push(Notice::warning(format!("{id} shows {count} candidates: there is no number {}", index + 1)));
            return false;
        }
        crate::ui::viewer::GraphViewer::apply_pick(
            &mut self.doc.snarl[canvas_node],
            spec,
            crate::ui::thumbs::Pick::Candidate(index),
        );
        self.commit_pending(None);
        true
    }

    /// "more candidates" on node `id` (the candidates node, or a node it feeds, such as the selector): raises
    /// the candidates node's batch count (its earlier batches stay the same) and runs `id`. A selector that
    /// chose by reward keeps its current choice, now by hand, until the artist picks another.
    pub fn more_candidates(&mut self, id: &str) -> bool {
        self.commit_pending(None);
        let graph = self.current.clone();
        let kind_of = |node: &str| graph.nodes.get(node).and_then(|n| self.registry.get(&n.kind)).copied();
        let source = match kind_of(id).and_then(|k| k.more) {
            Some(param) => Some((id.to_string(), param)),
            None => graph.links.iter().filter(|l| l.to.node == id).find_map(|l| {
                let param = kind_of(&l.from.node)?.more?;
                Some((l.from.node.clone(), param))
            }),
        };
        let Some((source, param)) = source else {
            self.session.push(Notice::warning(format!("{id} has no candidates node to ask for more")));
            return false;
        };
        let Some(spec) = kind_of(&source).and_then(|k| k.param(param).copied()) else { return false };
        let current = graph.nodes[&source].params.get(param).and_then(Value::as_u64).or(spec.default_value().as_u64());
        let max = match spec.ty {
            crate::graph::ParamType::Int { max, .. } => max as u64,
            _ => u64::MAX,
        };
        let next = current.unwrap_or(1) + 1;
        if next > max {
            self.session.push(Notice::warning(format!("{source} already makes {max} {param}, the most it can")));
            return false;
        }
        // Keep the anchors the artist sees: every picker the candidates feed that chose by reward keeps the
        // same choice, by hand; they run again with the new batch.
        let mut targets = vec![id.to_string()];
        let pickers: Vec<NodeId> =
            graph.links.iter().filter(|l| l.from.node == source).map(|l| l.to.node.clone()).collect();
        for picker in pickers {
            let Some(pick) = kind_of(&picker).and_then(|k| k.pick) else { continue };
            if !targets.contains(&picker) {
                targets.push(picker.clone());
            }
            if let Some(crate::ui::thumbs::Shown::Ranking(ranking)) =
                self.session.node(&picker).and_then(crate::ui::thumbs::shown)
                && ranking.by != crate::values::SelectedBy::Hand
                && let Some(canvas_node) = self.doc.find(&picker)
            {
                let keep = crate::ui::thumbs::Pick::Candidate(ranking.selected);
                crate::ui::viewer::GraphViewer::apply_pick(&mut self.doc.snarl[canvas_node], pick, keep);
            }
        }
        self.doc.set_param(&source, param, Value::from(next));
        self.commit_pending(None);
        self.session.push(Notice::info(format!("{source}: {param} = {next}")).about(source.clone()));
        self.run(targets);
        true
    }

    /// Removes the selected nodes and their links (Del).
    pub fn delete_selection(&mut self) -> usize {
        self.commit_pending(None);
        let removed = crate::ui::document::remove(&mut self.doc.snarl, &self.selected);
        self.selected.clear();
        self.commit_pending(None); // one undo step of its own
        removed
    }

    /// Copy, cut, paste, duplicate and delete on the canvas (while no text field has the keyboard).
    pub(super) fn edit_shortcuts(&mut self, ui: &Ui) {
        let events = ui.input(|i| i.events.clone());
        let pointer = ui.input(|i| i.pointer.hover_pos()).filter(|p| self.canvas_rect.contains(*p));
        for event in events {
            match event {
                egui::Event::Copy => {
                    if let Some(text) = self.copy_selection() {
                        ui.ctx().copy_text(text);
                    }
                }
                egui::Event::Cut => {
                    if let Some(text) = self.copy_selection() {
                        ui.ctx().copy_text(text);
                        self.delete_selection();
                    }
                }
                egui::Event::Paste(text) => {
                    let text = if text.trim().is_empty() { self.clipboard.clone().unwrap_or_default() } else { text };
                    self.paste(&text, pointer);
                }
                _ => {}
            }
        }
        let pressed = |s: &KeyboardShortcut| ui.input_mut(|i| i.consume_shortcut(s));
        // 1-9 pick that candidate of the selected node's ranking as the anchor.
        const NUMBERS: [Key; 9] =
            [Key::Num1, Key::Num2, Key::Num3, Key::Num4, Key::Num5, Key::Num6, Key::Num7, Key::Num8, Key::Num9];
        for (i, key) in NUMBERS.into_iter().enumerate() {
            if pressed(&KeyboardShortcut::new(Modifiers::NONE, key)) {
                self.pick_candidate(i);
            }
        }
        if pressed(&DUPLICATE) {
            self.duplicate_selection();
        }
        if pressed(&DELETE) || pressed(&BACKSPACE) {
            self.delete_selection();
        }
    }

    /// Opens the node palette at a screen position (where the new node goes); with `wire`, it lists only
    /// the kinds that can take that loose wire end and connects the one chosen.
    pub fn open_palette(&mut self, screen: egui::Pos2, wire: Option<WireEnd>) {
        let at = self.view.inverse() * screen;
        self.palette = Some(Palette::new(at, screen, wire));
    }

    /// A wire dragged from a node's port and dropped on empty canvas at `screen` (what the canvas reports):
    /// opens the palette for it. `output`: the port is one of the node's outputs.
    pub fn drop_wire(&mut self, node: &str, port: &str, output: bool, screen: egui::Pos2) -> bool {
        let Some(canvas_node) = self.doc.find(node) else { return false };
        let editor_node = &self.doc.snarl[canvas_node];
        let end = if output {
            editor_node.outputs.iter().position(|s| s.name == port).and_then(|i| {
                let ty = editor_node.outputs[i].ty?;
                Some(WireEnd::Output(egui_snarl::OutPinId { node: canvas_node, output: i }, ty))
            })
        } else {
            editor_node.inputs.iter().position(|s| s.name == port).and_then(|i| {
                let ty = editor_node.inputs[i].ty?;
                Some(WireEnd::Input(egui_snarl::InPinId { node: canvas_node, input: i }, ty))
            })
        };
        let Some(end) = end else { return false };
        self.open_palette(screen, Some(end));
        true
    }

    /// Whether the node palette is open.
    pub fn palette_open(&self) -> bool {
        self.palette.is_some()
    }

    /// Adds a node of `kind` where the palette was opened, connected to the palette's loose wire if any.
    pub(super) fn add_from_palette(&mut self, kind: &crate::graph::KindSpec, palette: &Palette) {
        let snarl = &mut self.doc.snarl;
        let node = crate::ui::document::add_node(snarl, kind, palette.at);
        let connected = match palette.wire {
            None => Ok(()),
            Some(WireEnd::Output(from, ty)) => match snarl[node].inputs.iter().position(|s| s.ty == Some(ty)) {
                Some(input) => {
                    crate::ui::document::connect(snarl, &self.registry, from, egui_snarl::InPinId { node, input })
                }
                None => Ok(()),
            },
            Some(WireEnd::Input(to, ty)) => match snarl[node].outputs.iter().position(|s| s.ty == Some(ty)) {
                Some(output) => {
                    crate::ui::document::connect(snarl, &self.registry, egui_snarl::OutPinId { node, output }, to)
                }
                None => Ok(()),
            },
        };
        if let Err(e) = connected {
            self.session.push(Notice::warning(format!("the new {} was not connected: {e}", kind.title)));
        }
    }

    pub(super) fn palette_window(&mut self, ui: &Ui) {
        let Some(mut palette) = self.palette.take() else { return };
        let area = egui::Area::new(egui::Id::new("node-palette"))
            .order(egui::Order::Foreground)
            .fixed_pos(palette.screen)
            .constrain(true)
            .show(ui.ctx(), |ui| {
                egui::Frame::popup(ui.style())
                    .show(ui, |ui| crate::ui::palette::show(ui, &mut palette, &self.registry))
                    .inner
            });
        match area.inner {
            crate::ui::palette::Outcome::Add(kind) => self.add_from_palette(&kind, &palette),
            crate::ui::palette::Outcome::Closed => {}
            crate::ui::palette::Outcome::Open if area.response.clicked_elsewhere() => {}
            crate::ui::palette::Outcome::Open => self.palette = Some(palette),
        }
    }
}
