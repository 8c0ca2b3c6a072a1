//! The inspector: the selected node's title, every parameter (the same form as in the node, with reset
//! buttons and the full descriptions), its seed control, and what its last run did (time, notes, errors,
//! the seed it used, to copy or keep).

use egui::{RichText, Ui};
use serde_json::Value;

use super::{Level, Studio, level_colour};
use crate::graph::{Node, ParamType, Severity};
use crate::ui::params::{Form, param_form, random_seed};
use crate::ui::session::Activity;

/// The node field (kept in presets) that says whether the editor draws new seeds before each run.
pub const SEED_CONTROL: &str = "seed_control";
/// Its value for "new each run" (absent: the seed stays fixed).
pub const NEW_EACH_RUN: &str = "new each run";

/// Whether the node draws a new seed for each run.
pub fn new_seed_each_run(node: &Node) -> bool {
    node.extra.get(SEED_CONTROL).and_then(Value::as_str) == Some(NEW_EACH_RUN)
}

impl Studio {
    /// Before a run: every node set to "new each run" gets fresh seeds (one undo step, so the seeds a run
    /// used can always be found again).
    pub(super) fn draw_new_seeds(&mut self) {
        self.commit_pending(None);
        let mut drawn = Vec::new();
        for (_, editor_node) in self.doc.snarl.nodes_ids_data_mut().map(|(i, n)| (i, &mut n.value)) {
            if !new_seed_each_run(&editor_node.node) {
                continue;
            }
            let Some(kind) = self.registry.get(&editor_node.node.kind) else { continue };
            for spec in kind.params.iter().filter(|p| matches!(p.ty, ParamType::Seed { .. })) {
                let seed = random_seed();
                editor_node.node.params.insert(spec.name.to_string(), Value::from(seed));
                drawn.push(format!("{}.{} = {seed}", editor_node.id, spec.name));
            }
        }
        if !drawn.is_empty() {
            self.commit_pending(None);
            self.session.push(crate::ui::session::Notice::info(format!("new seeds: {}", drawn.join(", "))));
        }
    }

    /// The seed parameters of node `id` as the last run that reached it used them.
    pub fn seeds_used(&self, id: &str) -> Vec<(String, u64)> {
        let (Some(graph), Some(node)) = (&self.last_run_graph, self.current.nodes.get(id)) else { return Vec::new() };
        let Some(kind) = self.registry.get(&node.kind) else { return Vec::new() };
        let Some(ran) = graph.nodes.get(id) else { return Vec::new() };
        kind.params
            .iter()
            .filter(|p| matches!(p.ty, ParamType::Seed { .. }))
            .filter_map(|p| {
                let value = ran.params.get(p.name).cloned().unwrap_or_else(|| p.default_value());
                Some((p.name.to_string(), value.as_u64()?))
            })
            .collect()
    }

    pub(super) fn inspector(&mut self, ui: &mut Ui) {
        ui.heading("Inspector");
        let Some(id) = self.clicked_node.clone() else {
            ui.label(RichText::new("Click a node to see all its settings here").weak());
            return;
        };
        let Some(canvas_node) = self.doc.find(&id) else {
            self.clicked_node = None;
            return;
        };
        let models_dir = self.models_dir.clone();
        let kind = self.registry.get(&self.doc.snarl[canvas_node].node.kind).copied();
        let editor_node = &mut self.doc.snarl[canvas_node];
        let node = &mut editor_node.node;
        ui.horizontal(|ui| {
            ui.label("title");
            let mut title = node.title.clone().unwrap_or_default();
            let hint = kind.map_or(node.kind.as_str(), |k| k.title);
            if ui.add(egui::TextEdit::singleline(&mut title).hint_text(hint).desired_width(180.0)).changed() {
                node.title = (!title.trim().is_empty()).then_some(title);
            }
        });
        match &kind {
            Some(k) => {
                ui.label(RichText::new(format!("{} · kind {} · id {id}", k.category, k.id)).weak().small());
                ui.label(RichText::new(k.description).small());
            }
            None => {
                ui.label(
                    RichText::new(format!("unknown kind '{}': kept and saved, but it cannot run", node.kind))
                        .color(level_colour(Level::Warning)),
                );
            }
        }
        ui.separator();
        let form = Form { reset_buttons: true, width: Some(150.0) };
        let chosen = param_form(ui, &form, kind.as_ref(), &id, node, &models_dir);
        let has_seed = kind.is_some_and(|k| k.params.iter().any(|p| matches!(p.ty, ParamType::Seed { .. })));
        if has_seed {
            let mut each_run = new_seed_each_run(node);
            ui.horizontal(|ui| {
                ui.label("seed");
                let fixed = ui.radio_value(&mut each_run, false, "fixed");
                let fresh = ui.radio_value(&mut each_run, true, "new each run");
                if fixed.changed() || fresh.changed() {
                    if each_run {
                        node.extra.insert(super::inspector::SEED_CONTROL.to_string(), Value::from(NEW_EACH_RUN));
                    } else {
                        node.extra.remove(SEED_CONTROL);
                    }
                }
            });
        }
        if !chosen.is_empty() {
            self.access.chosen.extend(chosen);
            self.send_access();
        }
        self.last_run_section(ui, &id);
    }

    fn last_run_section(&mut self, ui: &mut Ui, id: &str) {
        ui.separator();
        ui.label(RichText::new("Last run").strong());
        let state = self.session.node(id);
        let line = match state.and_then(|s| s.activity.as_ref()) {
            Some(Activity::Done { cached: true, .. }) => "result from the cache".to_string(),
            Some(Activity::Done { elapsed, .. }) => format!("done in {:.2} s", elapsed.as_secs_f64()),
            Some(Activity::Running { step, total }) => format!("running, step {step} of {total}"),
            Some(Activity::Queued) => "queued".to_string(),
            Some(Activity::Failed { message }) => format!("failed: {message}"),
            Some(Activity::Skipped { reason }) => format!("skipped: {reason}"),
            Some(Activity::Idle) | None if state.is_some_and(|s| s.outputs.is_some()) => {
                "result shown from an earlier run".to_string()
            }
            Some(Activity::Idle) | None => "not run yet".to_string(),
        };
        let failed = matches!(state.and_then(|s| s.activity.as_ref()), Some(Activity::Failed { .. }));
        let colour = if failed { level_colour(Level::Error) } else { level_colour(Level::Info) };
        ui.label(RichText::new(line).color(colour));
        for note in state.map(|s| s.notes.as_slice()).unwrap_or_default() {
            ui.label(RichText::new(note).small().italics());
        }
        for message in self.session.report.for_node(id) {
            let level = if message.severity == Severity::Error { Level::Error } else { Level::Warning };
            ui.label(RichText::new(&message.text).color(level_colour(level)).small());
        }
        let ran = state.is_some_and(|s| matches!(s.activity, Some(Activity::Done { .. })));
        if !ran {
            return;
        }
        for (param, seed) in self.seeds_used(id) {
            ui.horizontal(|ui| {
                ui.label(format!("{param} used: {seed}"));
                if ui.small_button("copy seed").clicked() {
                    ui.ctx().copy_text(seed.to_string());
                }
                if ui.small_button("keep this seed").on_hover_text("Set it and stop drawing new ones").clicked()
                    && let Some(node) = self.doc.find(id)
                {
                    let node = &mut self.doc.snarl[node].node;
                    node.params.insert(param.clone(), Value::from(seed));
                    node.extra.remove(SEED_CONTROL);
                }
            });
        }
    }
}
