//! How nodes look and behave on the canvas (egui-snarl's `SnarlViewer`): typed, coloured pins, parameter
//! editors in the node body, the node's result (candidates to pick from, images, a playing clip), and a
//! footer with what the last run did and what validation found.

use std::path::Path;

use egui::emath::TSTransform;
use egui::{Color32, Rect, RichText, Ui};
use egui_snarl::ui::{PinInfo, PinShape, SnarlViewer};
use egui_snarl::{InPin, NodeId as SnarlNodeId, OutPin, Snarl};
use serde_json::Value;

use super::document::{self, EditorNode, Slot};
use super::palette::WireEnd;
use super::params::ERROR_COLOUR;
use super::session::{Activity, Notice, Session};
use super::thumbs::{self, Pick, Textures};
use crate::graph::kinds::PickParams;
use crate::graph::{KindRegistry, NodeId, PortType, Severity};
use crate::runtime::engine::NodeStatus;

/// The colour of a port type's pins and wires.
pub fn port_colour(ty: Option<PortType>) -> Color32 {
    match ty {
        Some(PortType::Prompt) => Color32::from_rgb(240, 200, 80),
        Some(PortType::Checkpoint) => Color32::from_rgb(170, 120, 230),
        Some(PortType::MotionModule) => Color32::from_rgb(230, 120, 200),
        Some(PortType::RewardModel) => Color32::from_rgb(120, 200, 230),
        Some(PortType::VideoModel) => Color32::from_rgb(200, 140, 250),
        Some(PortType::I2vModel) => Color32::from_rgb(240, 120, 200),
        Some(PortType::Candidates) => Color32::from_rgb(110, 200, 120),
        Some(PortType::Image) => Color32::from_rgb(80, 170, 110),
        Some(PortType::Ranking) => Color32::from_rgb(160, 220, 90),
        Some(PortType::Video) => Color32::from_rgb(90, 140, 240),
        Some(PortType::Int) => Color32::from_rgb(200, 200, 200),
        None => Color32::from_gray(110),
    }
}

/// What the canvas asked of the editor this frame, besides edits to the graph itself.
#[derive(Default)]
pub struct Requests {
    /// Run this node (and what it needs).
    pub run_node: Option<NodeId>,
    pub notices: Vec<Notice>,
    /// Path values the artist chose in a file dialog.
    pub chosen: Vec<crate::graph::access::Chosen>,
    /// Open the node palette at this canvas position (right-click, or a wire dropped there).
    pub palette: Option<(egui::Pos2, Option<WireEnd>)>,
    /// "more candidates" was clicked on this node.
    pub more: Option<NodeId>,
}

/// Draws the document's nodes.
pub struct GraphViewer<'a> {
    pub registry: &'a KindRegistry,
    pub session: &'a Session,
    pub models_dir: &'a Path,
    pub textures: &'a mut Textures,
    pub requests: Requests,
    /// Fit the view so that `content` (canvas coordinates, measured the frame before) fills this screen rect.
    pub fit: Option<(Rect, Rect)>,
    /// Whether the fit was applied this frame.
    pub fitted: bool,
    /// The nodes' bounds in canvas coordinates, measured while drawing this frame.
    pub content: Option<Rect>,
    /// The canvas-to-screen transform of this frame.
    pub transform: Option<TSTransform>,
    /// Each node's rect in canvas coordinates, as drawn this frame.
    pub node_rects: Vec<(NodeId, Rect)>,
    /// Each output pin's row, (node, port, the row's vertical centre in canvas coordinates): where a wire
    /// is dragged from (the pin sits on the node's right edge).
    pub output_rows: Vec<(NodeId, String, f32)>,
}

impl GraphViewer<'_> {
    fn status_chip(&self, id: &str) -> Option<(Color32, String)> {
        let state = self.session.node(id);
        if let Some(activity) = state.and_then(|s| s.activity.as_ref()) {
            let chip = match activity {
                Activity::Queued => (Color32::from_rgb(200, 160, 60), "queued".to_string()),
                Activity::Running { step, total } if *total > 0 => {
                    (Color32::from_rgb(90, 160, 250), format!("running {step}/{total}"))
                }
                Activity::Running { .. } => (Color32::from_rgb(90, 160, 250), "running".to_string()),
                Activity::Done { cached: true, .. } => (Color32::from_rgb(90, 190, 110), "cached".to_string()),
                Activity::Done { elapsed, .. } => {
                    (Color32::from_rgb(90, 190, 110), format!("done in {:.1} s", elapsed.as_secs_f64()))
                }
                Activity::Failed { .. } => (ERROR_COLOUR, "failed".to_string()),
                Activity::Skipped { .. } => (Color32::GRAY, "skipped".to_string()),
                Activity::Idle => return self.plan_chip(id),
            };
            return Some(chip);
        }
        self.plan_chip(id)
    }

    fn plan_chip(&self, id: &str) -> Option<(Color32, String)> {
        match self.session.node(id)?.plan.as_ref()? {
            NodeStatus::Cached => Some((Color32::from_rgb(90, 190, 110), "up to date".to_string())),
            NodeStatus::Stale => Some((Color32::from_rgb(220, 150, 60), "will run".to_string())),
            NodeStatus::Blocked { .. } => Some((ERROR_COLOUR, "blocked".to_string())),
            NodeStatus::Unneeded => None,
        }
    }

    fn pin_label(ui: &mut Ui, slot: &Slot, connected: bool) {
        let mut text = RichText::new(&slot.name);
        if slot.ty.is_none() {
            text = text.color(ERROR_COLOUR);
        } else if slot.required && !connected {
            text = text.color(Color32::from_rgb(230, 170, 80));
        }
        let ty = slot.ty.map_or("unknown", PortType::name);
        let mut hover = format!("{ty}: {}", slot.description);
        if slot.required && !connected {
            hover.push_str("\nRequired: connect a link here");
        }
        ui.label(text).on_hover_text(hover);
    }

    fn pin(slot: &Slot) -> PinInfo {
        let info = PinInfo::circle().with_fill(port_colour(slot.ty));
        if slot.ty.is_none() { info.with_shape(PinShape::Square) } else { info }
    }

    /// Writes a pick into the node's parameters, where its kind says (`KindSpec::pick`).
    pub fn apply_pick(node: &mut EditorNode, spec: PickParams, pick: Pick) {
        match pick {
            Pick::Candidate(i) => {
                node.node.params.insert(spec.choice.to_string(), Value::from(spec.by_hand));
                node.node.params.insert(spec.index.to_string(), Value::from(i as u64));
            }
            Pick::ByReward => {
                node.node.params.insert(spec.choice.to_string(), Value::from(spec.automatic));
            }
            Pick::More => {}
        }
    }
}

impl SnarlViewer<EditorNode> for GraphViewer<'_> {
    fn title(&mut self, node: &EditorNode) -> String {
        match (&node.node.title, self.registry.get(&node.node.kind)) {
            (Some(title), _) => title.clone(),
            (None, Some(kind)) => kind.title.to_string(),
            (None, None) => node.node.kind.clone(),
        }
    }

    fn show_header(
        &mut self,
        node: SnarlNodeId,
        _inputs: &[InPin],
        _outputs: &[OutPin],
        ui: &mut Ui,
        snarl: &mut Snarl<EditorNode>,
    ) {
        let title = self.title(&snarl[node]);
        let editor_node = &snarl[node];
        let kind = self.registry.get(&editor_node.node.kind);
        ui.horizontal(|ui| {
            let response = ui.label(RichText::new(title).strong());
            match kind {
                Some(k) => response.on_hover_text(format!("{}\nkind: {} · id: {}", k.description, k.id, editor_node.id)),
                None => response.on_hover_text(format!(
                    "Unknown node kind '{}' (made by a newer stepstone?). It is kept as it is and saved with the graph, \
                     but cannot run.",
                    editor_node.node.kind
                )),
            };
            ui.label(RichText::new(&editor_node.id).weak().small());
            if let Some((colour, text)) = self.status_chip(&editor_node.id) {
                let (dot, _) = ui.allocate_exact_size(egui::vec2(8.0, 8.0), egui::Sense::hover());
                ui.painter().circle_filled(dot.center(), 3.5, colour);
                let chip = ui.label(RichText::new(text).color(colour).small());
                if let Some(NodeStatus::Blocked { reason }) = self.session.node(&editor_node.id).and_then(|s| s.plan.as_ref())
                {
                    chip.on_hover_text(format!("Cannot run: {reason}"));
                }
            }
        });
    }

    fn inputs(&mut self, node: &EditorNode) -> usize {
        node.inputs.len()
    }

    fn outputs(&mut self, node: &EditorNode) -> usize {
        node.outputs.len()
    }

    #[allow(refining_impl_trait)]
    fn show_input(&mut self, pin: &InPin, ui: &mut Ui, snarl: &mut Snarl<EditorNode>) -> PinInfo {
        let Some(slot) = snarl[pin.id.node].inputs.get(pin.id.input) else { return PinInfo::circle() };
        Self::pin_label(ui, slot, !pin.remotes.is_empty());
        Self::pin(slot)
    }

    #[allow(refining_impl_trait)]
    fn show_output(&mut self, pin: &OutPin, ui: &mut Ui, snarl: &mut Snarl<EditorNode>) -> PinInfo {
        let Some(slot) = snarl[pin.id.node].outputs.get(pin.id.output) else { return PinInfo::circle() };
        Self::pin_label(ui, slot, true);
        self.output_rows.push((snarl[pin.id.node].id.clone(), slot.name.clone(), ui.min_rect().center().y));
        Self::pin(slot)
    }

    fn has_body(&mut self, _node: &EditorNode) -> bool {
        true
    }

    fn show_body(
        &mut self,
        node: SnarlNodeId,
        _inputs: &[InPin],
        _outputs: &[OutPin],
        ui: &mut Ui,
        snarl: &mut Snarl<EditorNode>,
    ) {
        let editor_node = &mut snarl[node];
        let kind = self.registry.get(&editor_node.node.kind).copied();
        ui.vertical(|ui| {
            let form = super::params::Form { reset_buttons: false, width: None };
            let chosen = super::params::param_form(
                ui,
                &form,
                kind.as_ref(),
                &editor_node.id,
                &mut editor_node.node,
                self.models_dir,
            );
            self.requests.chosen.extend(chosen);
            if let Some(state) = self.session.node(&editor_node.id)
                && let Some(pick) = thumbs::show(ui, self.textures, &editor_node.id, state)
            {
                match (pick, kind.and_then(|k| k.pick)) {
                    (Pick::More, _) => self.requests.more = Some(editor_node.id.clone()),
                    (pick, Some(spec)) => Self::apply_pick(editor_node, spec, pick),
                    (_, None) => {}
                }
            }
        });
    }

    fn has_footer(&mut self, node: &EditorNode) -> bool {
        let state = self.session.node(&node.id);
        self.session.report.for_node(&node.id).next().is_some()
            || state.is_some_and(|s| {
                !s.notes.is_empty()
                    || matches!(
                        s.activity,
                        Some(Activity::Running { .. } | Activity::Failed { .. } | Activity::Skipped { .. })
                    )
            })
    }

    fn show_footer(
        &mut self,
        node: SnarlNodeId,
        _inputs: &[InPin],
        _outputs: &[OutPin],
        ui: &mut Ui,
        snarl: &mut Snarl<EditorNode>,
    ) {
        let id = &snarl[node].id;
        ui.vertical(|ui| {
            ui.set_max_width(300.0);
            if let Some(state) = self.session.node(id) {
                match &state.activity {
                    Some(Activity::Running { step, total }) if *total > 0 => {
                        let fraction = *step as f32 / *total as f32;
                        ui.add(egui::ProgressBar::new(fraction).text(format!("{step} / {total}")).desired_width(220.0));
                    }
                    Some(Activity::Failed { message }) => {
                        ui.label(RichText::new(message).color(ERROR_COLOUR));
                    }
                    Some(Activity::Skipped { reason }) => {
                        ui.label(RichText::new(format!("skipped: {reason}")).weak());
                    }
                    _ => {}
                }
                for note in &state.notes {
                    ui.label(RichText::new(note).small().italics());
                }
            }
            for message in self.session.report.for_node(id) {
                let colour = match message.severity {
                    Severity::Error => ERROR_COLOUR,
                    _ => Color32::from_rgb(230, 170, 80),
                };
                ui.label(RichText::new(&message.text).color(colour).small());
            }
        });
    }

    fn has_graph_menu(&mut self, _pos: egui::Pos2, _snarl: &mut Snarl<EditorNode>) -> bool {
        true
    }

    fn show_graph_menu(&mut self, pos: egui::Pos2, ui: &mut Ui, _snarl: &mut Snarl<EditorNode>) {
        // The searchable palette replaces the context menu.
        self.requests.palette = Some((pos, None));
        ui.close();
    }

    fn has_dropped_wire_menu(&mut self, _src_pins: egui_snarl::ui::AnyPins, _snarl: &mut Snarl<EditorNode>) -> bool {
        true
    }

    fn show_dropped_wire_menu(
        &mut self,
        pos: egui::Pos2,
        ui: &mut Ui,
        src_pins: egui_snarl::ui::AnyPins,
        snarl: &mut Snarl<EditorNode>,
    ) {
        let end = match src_pins {
            egui_snarl::ui::AnyPins::Out(pins) => pins.first().and_then(|&pin| {
                let ty = snarl.get_node(pin.node)?.outputs.get(pin.output)?.ty?;
                Some(WireEnd::Output(pin, ty))
            }),
            egui_snarl::ui::AnyPins::In(pins) => pins.first().and_then(|&pin| {
                let ty = snarl.get_node(pin.node)?.inputs.get(pin.input)?.ty?;
                Some(WireEnd::Input(pin, ty))
            }),
        };
        if let Some(end) = end {
            self.requests.palette = Some((pos, Some(end)));
        }
        ui.close();
    }

    fn has_node_menu(&mut self, _node: &EditorNode) -> bool {
        true
    }

    fn show_node_menu(
        &mut self,
        node: SnarlNodeId,
        _inputs: &[InPin],
        _outputs: &[OutPin],
        ui: &mut Ui,
        snarl: &mut Snarl<EditorNode>,
    ) {
        let id = snarl[node].id.clone();
        if ui.button("Run to here").on_hover_text("Run this node and what it needs").clicked() {
            self.requests.run_node = Some(id.clone());
            ui.close();
        }
        if ui.button("Duplicate").on_hover_text("Ctrl+D: a copy with the same parameters").clicked() {
            let copy = document::subgraph(snarl, std::slice::from_ref(&id));
            let at = snarl.get_node_info(node).map_or(egui::Pos2::ZERO, |n| n.pos) + egui::vec2(40.0, 40.0);
            document::paste(snarl, self.registry, &copy, at);
            ui.close();
        }
        if ui.button("Remove").on_hover_text("Del").clicked() {
            snarl.remove_node(node);
            ui.close();
        }
    }

    fn final_node_rect(&mut self, node: SnarlNodeId, rect: Rect, _ui: &mut Ui, snarl: &mut Snarl<EditorNode>) {
        self.content = Some(self.content.map_or(rect, |c| c.union(rect)));
        self.node_rects.push((snarl[node].id.clone(), rect));
    }

    fn current_transform(&mut self, to_global: &mut TSTransform, _snarl: &mut Snarl<EditorNode>) {
        if let Some((screen, content)) = self.fit {
            *to_global = fit_transform(screen, content);
            self.fitted = true;
        }
        self.transform = Some(*to_global);
    }

    fn connect(&mut self, from: &OutPin, to: &InPin, snarl: &mut Snarl<EditorNode>) {
        if let Err(e) = document::connect(snarl, self.registry, from.id, to.id) {
            self.requests.notices.push(Notice::warning(e.to_string()));
        }
    }
}

/// The smallest zoom the editor picks by itself. egui-snarl zooms by scaling the canvas layer, so text is
/// drawn at its normal size and scaled down: below about three quarters thin glyphs ("." and "l") vanish
/// ("10.0" read as "10 0"). The artist may still zoom further out by hand.
pub const MIN_FIT_SCALE: f32 = 0.9;

/// The view transform that shows `content` (canvas coordinates) in `screen` with a margin: centred and as
/// large as fits, never magnified beyond 1:1 and never below [`MIN_FIT_SCALE`]. When it does not fit at that
/// zoom, the view shows its top-left part (where a pipeline starts) and the artist pans to the rest.
pub fn fit_transform(screen: Rect, content: Rect) -> TSTransform {
    const MARGIN: f32 = 24.0;
    let available = (screen.size() - egui::vec2(2.0 * MARGIN, 2.0 * MARGIN)).max(egui::vec2(1.0, 1.0));
    let size = content.size().max(egui::vec2(1.0, 1.0));
    let scale = (available.x / size.x).min(available.y / size.y).clamp(MIN_FIT_SCALE, 1.0);
    // Per axis: centred when the content fits, else its start at the margin.
    let place = |screen_min: f32, screen_len: f32, content_min: f32, content_len: f32| {
        if content_len * scale <= screen_len - 2.0 * MARGIN {
            screen_min + (screen_len - content_len * scale) / 2.0 - content_min * scale
        } else {
            screen_min + MARGIN - content_min * scale
        }
    };
    let x = place(screen.min.x, screen.width(), content.min.x, size.x);
    let y = place(screen.min.y, screen.height(), content.min.y, size.y);
    TSTransform::new(egui::vec2(x, y), scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fitting_centres_the_content_and_never_magnifies() {
        let screen = Rect::from_min_size(egui::pos2(0.0, 30.0), egui::vec2(1000.0, 600.0));
        let wide = Rect::from_min_max(egui::pos2(40.0, 40.0), egui::pos2(1040.0, 540.0));
        let t = fit_transform(screen, wide);
        let shown = t * wide;
        assert!((shown.center() - screen.center()).length() < 0.01);
        assert!(screen.contains_rect(shown), "{shown:?} in {screen:?}");
        assert!((shown.width() - (1000.0 - 48.0)).abs() < 0.01, "the wide side fills the width");
        assert!(t.scaling >= MIN_FIT_SCALE);
        let small = Rect::from_min_size(egui::pos2(0.0, 0.0), egui::vec2(100.0, 50.0));
        assert_eq!(fit_transform(screen, small).scaling, 1.0);
    }

    #[test]
    fn fitting_never_zooms_below_legibility_and_shows_the_start_of_a_wide_graph() {
        let screen = Rect::from_min_size(egui::pos2(0.0, 30.0), egui::vec2(1000.0, 600.0));
        let huge = Rect::from_min_max(egui::pos2(-200.0, 100.0), egui::pos2(4800.0, 500.0));
        let t = fit_transform(screen, huge);
        assert_eq!(t.scaling, MIN_FIT_SCALE);
        let shown = t * huge;
        assert!((shown.min.x - 24.0).abs() < 0.01, "the left end at the margin: {shown:?}");
        assert!((shown.center().y - screen.center().y).abs() < 0.01, "centred vertically where it fits");
    }
}
