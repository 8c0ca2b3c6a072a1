//! The editor's own state on disk: autosave to the recovery file, the recovery offer after a crash, and the
//! recent files (see [`crate::ui::recovery`]).

use std::path::{Path, PathBuf};

use super::{AUTOSAVE_EVERY, Studio};
use crate::ui::recovery::{Recovery, StateDir};
use crate::ui::session::Notice;

impl Studio {
    /// Autosaves to, and offers recovery from, `state`; keeps the recent files there.
    pub fn with_state_dir(mut self, state: StateDir) -> Studio {
        self.recent = state.recent();
        match state.read_recovery() {
            Ok(offer) => self.recovery_offer = offer,
            Err(e) => self.session.push(Notice::warning(format!("the autosaved graph cannot be restored: {e}"))),
        }
        self.state = Some(state);
        self
    }

    /// The autosaved graph a crash left behind, while the artist has not restored or discarded it.
    pub fn recovery_offer(&self) -> Option<&Recovery> {
        self.recovery_offer.as_ref()
    }

    /// Puts the autosaved graph back in the editor (undoable), with the file it belongs to; it shows as
    /// unsaved.
    pub fn restore_recovery(&mut self) {
        let Some(offer) = self.recovery_offer.take() else { return };
        let saved = offer.path.as_deref().and_then(|p| crate::graph::load_preset(p).ok()).unwrap_or_default();
        self.replace_graph(offer.graph, offer.path, offer.opened_from);
        self.saved = saved;
        self.session.push(Notice::info("restored the graph autosaved before stepstone last stopped"));
    }

    /// Drops the autosaved graph (its file is removed).
    pub fn discard_recovery(&mut self) {
        self.recovery_offer = None;
        self.autosaved = None;
        if let Some(state) = &self.state
            && let Err(e) = state.discard_recovery()
        {
            self.session.push(Notice::error(format!("the recovery file was not removed: {e}")));
        }
    }

    /// The window closes normally: nothing is left to recover (an offer not answered stays for next time).
    pub fn exit_cleanly(&mut self) {
        if self.recovery_offer.is_none() {
            self.discard_recovery();
        }
    }

    /// Recent presets and clips, newest first.
    pub fn recent_files(&self) -> &[PathBuf] {
        &self.recent
    }

    pub(super) fn remember_recent(&mut self, path: &Path) {
        let Some(state) = &self.state else { return };
        match state.add_recent(path) {
            Ok(list) => self.recent = list,
            Err(e) => self.session.push(Notice::warning(format!("the recent files list was not updated: {e}"))),
        }
    }

    /// Writes the graph being edited to the recovery file when it changed (at most every
    /// [`AUTOSAVE_EVERY`] seconds); removes it when the graph is saved.
    pub(super) fn autosave(&mut self, now: f64) {
        if self.state.is_none() || self.recovery_offer.is_some() || now - self.autosave_checked < AUTOSAVE_EVERY {
            return;
        }
        self.autosave_checked = now;
        if self.current == self.saved {
            if self.autosaved.is_some() {
                self.discard_recovery();
            }
            return;
        }
        if self.autosaved.as_ref() == Some(&self.current) {
            return;
        }
        let Some(state) = &self.state else { return };
        if let Err(e) = state.write_recovery(&self.current, self.path.as_deref(), self.opened_from.as_deref()) {
            self.session.push(Notice::error(format!("autosave failed: {e}")));
        }
        // Also after a failure: the next attempt waits for the next change instead of failing every frame.
        self.autosaved = Some(self.current.clone());
    }
}
