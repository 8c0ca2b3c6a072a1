//! The studio's modal dialogs: unsaved changes on close, and the files a graph from a file will read and
//! write before its first run.

use egui::{Color32, RichText, Ui};

use super::{Level, Studio, Verdict, level_colour};

impl Studio {
    /// Closing the window with unsaved changes asks first: save, discard, or keep editing.
    pub(super) fn guard_close(&mut self, ui: &Ui) {
        if ui.input(|i| i.viewport().close_requested()) && !self.close_confirmed && self.is_dirty() {
            ui.ctx().send_viewport_cmd(egui::ViewportCommand::CancelClose);
            self.confirm_close = true;
        }
        if !self.confirm_close {
            return;
        }
        let modal = egui::Modal::new(egui::Id::new("confirm-close")).show(ui.ctx(), |ui| {
            ui.heading("Save changes before closing?");
            ui.label(format!(
                "{} has changes that are not saved.",
                self.window_title().trim_end_matches(" — stepstone")
            ));
            ui.horizontal(|ui| {
                if ui.button("Save").clicked() {
                    self.save();
                    if !self.is_dirty() {
                        self.close_confirmed = true;
                        ui.ctx().send_viewport_cmd(egui::ViewportCommand::Close);
                    }
                    self.confirm_close = false;
                }
                if ui.button("Close without saving").clicked() {
                    self.close_confirmed = true;
                    self.confirm_close = false;
                    ui.ctx().send_viewport_cmd(egui::ViewportCommand::Close);
                }
                if ui.button("Cancel").clicked() {
                    self.confirm_close = false;
                }
            });
        });
        if modal.should_close() {
            self.confirm_close = false;
        }
    }

    /// Before the first run of a graph opened from a file: every file it will read and write, and what is
    /// refused, with Run and Cancel.
    pub(super) fn confirm_files_dialog(&mut self, ui: &Ui) {
        let Some((_, files)) = &self.confirm_run else { return };
        let mut decision = None;
        let source = self.opened_from.as_ref().map(|p| p.display().to_string()).unwrap_or_default();
        let modal = egui::Modal::new(egui::Id::new("confirm-files")).show(ui.ctx(), |ui| {
            ui.heading("Run a graph from a file?");
            ui.label(format!("The graph from {source} will read and write these files:"));
            egui::ScrollArea::vertical().max_height(320.0).show(ui, |ui| {
                if files.is_empty() {
                    ui.label(RichText::new("no files").weak());
                }
                for file in files {
                    let colour = match file.verdict {
                        Verdict::Allowed => Color32::GRAY,
                        Verdict::NeedsPermission(_) => level_colour(Level::Warning),
                        Verdict::Refused(_) => level_colour(Level::Error),
                    };
                    ui.label(RichText::new(file.describe()).color(colour));
                }
            });
            ui.label(
                RichText::new(
                    "Run lets it read the files listed; writes outside the output folder stay refused unless you \
                     choose the path in a file dialog.",
                )
                .weak(),
            );
            ui.horizontal(|ui| {
                if ui.button("Run").clicked() {
                    decision = Some(true);
                }
                if ui.button("Cancel").clicked() {
                    decision = Some(false);
                }
            });
        });
        if modal.should_close() && decision.is_none() {
            decision = Some(false);
        }
        match decision {
            Some(true) => self.confirm_files(),
            Some(false) => self.confirm_run = None,
            None => {}
        }
    }

    /// After a crash: the graph autosaved before it, offered back (Restore) or dropped (Discard).
    pub(super) fn recovery_dialog(&mut self, ui: &Ui) {
        let Some(offer) = &self.recovery_offer else { return };
        let mut decision = None;
        let name = match (&offer.path, &offer.opened_from) {
            (Some(p), _) | (None, Some(p)) => p.display().to_string(),
            (None, None) => "an untitled graph".to_string(),
        };
        let ago = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs().saturating_sub(offer.written_unix))
            .unwrap_or(0);
        let nodes = offer.graph.nodes.len();
        let modal = egui::Modal::new(egui::Id::new("recovery")).show(ui.ctx(), |ui| {
            ui.heading("Restore unsaved work?");
            ui.label(format!(
                "stepstone did not close normally. Changes to {name} ({nodes} nodes) were autosaved {} ago.",
                describe_age(ago)
            ));
            ui.horizontal(|ui| {
                if ui.button("Restore").clicked() {
                    decision = Some(true);
                }
                if ui.button("Discard").clicked() {
                    decision = Some(false);
                }
            });
        });
        match decision {
            Some(true) => self.restore_recovery(),
            Some(false) => self.discard_recovery(),
            None if modal.should_close() => self.recovery_offer = None, // asked again at the next start
            None => {}
        }
    }
}

/// "12 s", "5 min", "3 h", "2 days".
fn describe_age(seconds: u64) -> String {
    match seconds {
        0..60 => format!("{seconds} s"),
        60..3600 => format!("{} min", seconds / 60),
        3600..86400 => format!("{} h", seconds / 3600),
        _ => format!("{} days", seconds / 86400),
    }
}
