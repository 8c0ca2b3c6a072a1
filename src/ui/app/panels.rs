//! The window's bars and panels: the menu bar with the run controls (Run, Pause/Resume, Cancel, overall
//! progress, elapsed time and ETA), the status bar, and the side panel (inspector, problems, log).

use egui::{RichText, Ui};

use super::*;

impl Studio {
    pub(super) fn menu_bar(&mut self, ui: &mut Ui) {
        egui::MenuBar::new().ui(ui, |ui| {
            ui.menu_button("File", |ui| {
                if ui.button("New graph").clicked() {
                    self.new_graph();
                }
                if ui.add(egui::Button::new("Open…").shortcut_text(ui.ctx().format_shortcut(&OPEN))).clicked() {
                    self.open_dialog();
                }
                let mut open_recent = None;
                ui.add_enabled_ui(!self.recent.is_empty(), |ui| {
                    ui.menu_button("Open recent", |ui| {
                        for path in &self.recent {
                            if ui.button(path.display().to_string()).clicked() {
                                open_recent = Some(path.clone());
                                ui.close();
                            }
                        }
                    })
                });
                if let Some(path) = open_recent {
                    self.open(&path);
                }
                ui.menu_button("Open preset", |ui| {
                    for path in shipped_presets() {
                        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                        if ui.button(name).clicked() {
                            self.open(&path);
                        }
                    }
                });
                ui.separator();
                if ui.add(egui::Button::new("Save").shortcut_text(ui.ctx().format_shortcut(&SAVE))).clicked() {
                    self.save();
                }
                if ui.add(egui::Button::new("Save as…").shortcut_text(ui.ctx().format_shortcut(&SAVE_AS))).clicked() {
                    self.save_dialog();
                }
                ui.separator();
                let output = format!("Output folder… ({})", self.access.output_dir.display());
                if ui.button(output).on_hover_text("Where Export nodes write: their paths are inside it").clicked()
                    && let Some(dir) = rfd::FileDialog::new().set_directory(&self.access.output_dir).pick_folder()
                {
                    self.set_output_dir(dir);
                }
                ui.separator();
                if ui.button("Quit").clicked() {
                    ui.ctx().send_viewport_cmd(egui::ViewportCommand::Close);
                }
            });
            ui.menu_button("Edit", |ui| {
                let undo = egui::Button::new("Undo").shortcut_text(ui.ctx().format_shortcut(&UNDO));
                if ui.add_enabled(!self.undo.is_empty(), undo).clicked() {
                    self.undo();
                }
                let redo = egui::Button::new("Redo").shortcut_text(ui.ctx().format_shortcut(&REDO));
                if ui.add_enabled(!self.redo.is_empty(), redo).clicked() {
                    self.redo();
                }
            });
            ui.menu_button("View", |ui| {
                let fit = egui::Button::new("Fit graph in view").shortcut_text(ui.ctx().format_shortcut(&FIT));
                if ui.add(fit).clicked() {
                    self.fit_frames = FIT_FRAMES;
                }
                let player = egui::Button::selectable(self.player.open, "Clip player")
                    .shortcut_text(ui.ctx().format_shortcut(&PLAYER));
                if ui.add(player).clicked() {
                    self.player.open = !self.player.open;
                }
                let mut live = self.live_previews;
                if ui
                    .checkbox(&mut live, "Live previews while sampling")
                    .on_hover_text(
                        "Sampling nodes show their latents (a fixed projection to colour, no VAE) after every step",
                    )
                    .changed()
                {
                    self.set_live_previews(live);
                }
            });
            ui.menu_button("Run", |ui| {
                let has_worker = self.worker.is_some();
                let run = egui::Button::new("Run outputs").shortcut_text(ui.ctx().format_shortcut(&RUN));
                if ui.add_enabled(has_worker, run).clicked() {
                    self.run(Vec::new());
                }
                let selected =
                    egui::Button::new("Run selected nodes").shortcut_text(ui.ctx().format_shortcut(&RUN_SELECTED));
                if ui.add_enabled(has_worker && !self.selected.is_empty(), selected).clicked() {
                    self.run_selected();
                }
                let cancel = egui::Button::new("Cancel").shortcut_text(ui.ctx().format_shortcut(&CANCEL));
                if ui.add_enabled(self.session.running.is_some(), cancel).clicked() {
                    self.cancel();
                }
                if self.is_paused() {
                    if ui.button("Resume").clicked() {
                        self.resume();
                    }
                } else if ui.add_enabled(has_worker, egui::Button::new("Pause")).clicked() {
                    self.pause();
                }
                ui.separator();
                if ui.add_enabled(has_worker, egui::Button::new("Clear cached results")).clicked()
                    && let Some(w) = &self.worker
                    && let Err(e) = w.clear_cache(false)
                {
                    self.session.push(Notice::error(format!("the results were not cleared: {e}")));
                }
                if ui.add_enabled(has_worker, egui::Button::new("Clear results and unload models")).clicked()
                    && let Some(w) = &self.worker
                    && let Err(e) = w.clear_cache(true)
                {
                    self.session.push(Notice::error(format!("the results and models were not cleared: {e}")));
                }
            });
            ui.separator();
            self.run_controls(ui);
        });
    }

    /// Run, or while a run goes on: Pause/Resume, Cancel, the overall progress with elapsed time and ETA.
    fn run_controls(&mut self, ui: &mut Ui) {
        if self.session.running.is_none() {
            if ui.add_enabled(self.worker.is_some(), egui::Button::new("▶ Run")).clicked() {
                self.run(Vec::new());
            }
            if self.is_paused() {
                // Paused with nothing running: the next run would wait at its first step.
                if ui
                    .button("▶ Resume")
                    .on_hover_text("Runs are paused: the next one waits at its first step")
                    .clicked()
                {
                    self.resume();
                }
            }
            return;
        }
        if self.is_paused() {
            if ui.button("▶ Resume").clicked() {
                self.resume();
            }
        } else if ui.button("⏸ Pause").on_hover_text("Wait at the next step; the run keeps its state").clicked() {
            self.pause();
        }
        if ui.button("■ Cancel").clicked() {
            self.cancel();
        }
        let now = std::time::Instant::now();
        if let Some((done, total, fraction)) = self.session.run_progress() {
            let overall = if total > 0 { (done as f32 + fraction) / total as f32 } else { 0.0 };
            ui.add(egui::ProgressBar::new(overall).desired_width(220.0).text(format!("{done} / {total} nodes")));
        }
        ui.label(run_clock_text(self.session.elapsed(now), self.session.eta(now), self.session.paused));
    }

    pub(super) fn status_bar(&mut self, ui: &mut Ui) {
        ui.horizontal(|ui| {
            if let Some(notice) = self.session.last_notice() {
                ui.label(RichText::new(&notice.text).color(level_colour(notice.level)));
            }
        });
    }

    pub(super) fn side_panel(&mut self, ui: &mut Ui) {
        let inspector_height = (ui.available_height() * 0.55).max(160.0);
        egui::ScrollArea::vertical().id_salt("inspector").max_height(inspector_height).show(ui, |ui| {
            self.inspector(ui);
        });
        ui.separator();
        ui.heading("Problems");
        let report = &self.session.report;
        if report.messages.is_empty() {
            ui.label(RichText::new("none").weak());
        }
        for message in &report.messages {
            let colour = if message.severity == Severity::Error {
                level_colour(Level::Error)
            } else {
                level_colour(Level::Warning)
            };
            ui.label(RichText::new(message.to_string()).color(colour));
        }
        ui.separator();
        self.log_panel(ui);
    }

    /// Every message since the editor started (up to [`super::session::LOG_LINES`]), with its time, level and
    /// node; filtered by level and text; a click on a node's message selects the node.
    fn log_panel(&mut self, ui: &mut Ui) {
        ui.horizontal(|ui| {
            ui.heading("Log");
            egui::ComboBox::from_id_salt("log-level").selected_text(self.log_filter.label()).show_ui(ui, |ui| {
                for filter in [LogFilter::All, LogFilter::Problems, LogFilter::Errors] {
                    ui.selectable_value(&mut self.log_filter, filter, filter.label());
                }
            });
            ui.add(egui::TextEdit::singleline(&mut self.log_search).hint_text("filter").desired_width(90.0));
            if ui.small_button("copy").on_hover_text("Copy the messages shown").clicked() {
                let text: Vec<String> = self.shown_log().map(|n| n.line()).collect();
                ui.ctx().copy_text(text.join("\n"));
            }
        });
        let mut select = None;
        egui::ScrollArea::vertical().id_salt("log").stick_to_bottom(true).show(ui, |ui| {
            for notice in self.shown_log() {
                let text = RichText::new(notice.line()).color(level_colour(notice.level)).small();
                let line = ui.add(egui::Label::new(text).wrap().sense(egui::Sense::click()));
                if let Some(node) = &notice.node
                    && line.on_hover_text("Click to select the node").clicked()
                {
                    select = Some(node.clone());
                }
            }
        });
        if let Some(node) = select
            && self.doc.find(&node).is_some()
        {
            self.select(&node);
        }
    }

    /// The log lines the panel's filters let through.
    fn shown_log(&self) -> impl Iterator<Item = &Notice> {
        let search = self.log_search.to_lowercase();
        self.session.log.iter().filter(move |n| {
            self.log_filter.admits(n.level)
                && (search.is_empty()
                    || n.text.to_lowercase().contains(&search)
                    || n.node.as_ref().is_some_and(|id| id.to_lowercase().contains(&search)))
        })
    }
}

/// Which messages the log panel shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum LogFilter {
    All,
    Problems,
    Errors,
}

impl LogFilter {
    fn label(self) -> &'static str {
        match self {
            LogFilter::All => "all",
            LogFilter::Problems => "warnings and errors",
            LogFilter::Errors => "errors",
        }
    }

    fn admits(self, level: Level) -> bool {
        match self {
            LogFilter::All => true,
            LogFilter::Problems => level != Level::Info,
            LogFilter::Errors => level == Level::Error,
        }
    }
}

/// "elapsed 12 s · ETA 40 s" (ETA "≥ 40 s" while some nodes still to run have never run; "paused").
pub fn run_clock_text(
    elapsed: Option<std::time::Duration>,
    eta: Option<crate::ui::session::Eta>,
    paused: bool,
) -> String {
    let mut parts = Vec::new();
    if let Some(e) = elapsed {
        parts.push(format!("elapsed {}", describe_duration(e)));
    }
    if paused {
        parts.push("paused".to_string());
    } else if let Some(eta) = eta {
        let bound = if eta.complete { "" } else { "≥ " };
        parts.push(format!("ETA {bound}{}", describe_duration(eta.remaining)));
    }
    parts.join(" · ")
}

/// "4.2 s", "3 min 05 s", "1 h 02 min".
fn describe_duration(d: std::time::Duration) -> String {
    let s = d.as_secs_f64();
    if s < 60.0 {
        format!("{s:.1} s")
    } else if s < 3600.0 {
        format!("{} min {:02} s", (s / 60.0) as u64, (s % 60.0) as u64)
    } else {
        format!("{} h {:02} min", (s / 3600.0) as u64, ((s % 3600.0) / 60.0) as u64)
    }
}
