//! The clip player: a panel that plays a node's clip at full size, with play/pause, loop, a scrub bar,
//! frame steps (`,` and `.`) and the playback rate, and an A/B view that shows a second node's result beside
//! it at the same frame index (plain text-to-video against I4VGen, the anchor against the animated clip).
//!
//! Only the clips shown here are uploaded at full size; the canvas keeps downscaled thumbnails.

use std::collections::HashMap;
use std::sync::Arc;

use egui::{RichText, TextureHandle, Ui};
use image::RgbImage;

use super::session::{NodeState, Session};
use crate::graph::NodeId;
use crate::values::{Candidates, Ranking, StillImage, Value};
use crate::video::Video;

/// The frames of a node's result as the player shows them: its clip, else its still (one frame), else its
/// candidates (one per frame); with the clip's rate.
pub fn playable(state: &NodeState) -> Option<(Vec<Arc<RgbImage>>, Option<f32>)> {
    let video = |v: &Video| (v.frames.iter().map(|f| Arc::new(f.clone())).collect(), Some(v.fps as f32));
    if let Some(Value::Video(v)) = state.previews.get("video") {
        return Some(video(v));
    }
    let outputs = state.outputs.as_ref();
    if let Some(v) = outputs.and_then(|o| o.get::<Video>("video")) {
        return Some(video(v));
    }
    for port in ["anchor", "image"] {
        if let Some(s) = outputs.and_then(|o| o.get::<StillImage>(port)) {
            return Some((vec![s.image.clone()], None));
        }
    }
    if let Some(r) = outputs.and_then(|o| o.get::<Ranking>("ranking")) {
        return Some((r.images.clone(), None));
    }
    if let Some(c) = outputs.and_then(|o| o.get::<Candidates>("candidates")) {
        return Some((c.images.clone(), None));
    }
    None
}

/// The player's state.
pub struct Player {
    pub open: bool,
    /// The node shown on the left (None: the node selected on the canvas).
    pub a: Option<NodeId>,
    /// The node shown beside it (None: no comparison).
    pub b: Option<NodeId>,
    pub playing: bool,
    pub looping: bool,
    /// The frame index shown (both sides show the same one, clamped to each clip's length).
    pub frame: usize,
    /// Playback rate in frames per second (None: the clip's own).
    pub fps: Option<f32>,
    /// Fractional frames accumulated since the last whole one, and the egui time of the last frame drawn.
    phase: f64,
    last_time: Option<f64>,
    /// Full-size textures of the clips shown, by node, with the result revision they were made from.
    textures: HashMap<NodeId, (u64, Vec<TextureHandle>)>,
}

impl Default for Player {
    fn default() -> Self {
        Player {
            open: false,
            a: None,
            b: None,
            playing: false,
            looping: true,
            frame: 0,
            fps: None,
            phase: 0.0,
            last_time: None,
            textures: HashMap::new(),
        }
    }
}

/// A side of the player: which node, its frames and rate.
struct Side {
    node: NodeId,
    frames: usize,
    fps: Option<f32>,
}

impl Player {
    /// Steps one frame forward (`forward`) or back, pausing playback; wraps when looping.
    pub fn step(&mut self, forward: bool, frames: usize) {
        self.playing = false;
        if frames == 0 {
            return;
        }
        self.frame = if forward {
            if self.frame + 1 >= frames { if self.looping { 0 } else { frames - 1 } } else { self.frame + 1 }
        } else if self.frame == 0 {
            if self.looping { frames - 1 } else { 0 }
        } else {
            self.frame - 1
        };
    }

    fn side(session: &Session, node: Option<&NodeId>) -> Option<Side> {
        let node = node?;
        let (frames, fps) = playable(session.node(node)?)?;
        Some(Side { node: node.clone(), frames: frames.len(), fps })
    }

    /// The number of frames the player steps through: the longer of the two sides.
    pub fn length(&self, session: &Session, selected: Option<&NodeId>) -> usize {
        let a = Self::side(session, self.a.as_ref().or(selected)).map_or(0, |s| s.frames);
        let b = Self::side(session, self.b.as_ref()).map_or(0, |s| s.frames);
        a.max(b)
    }

    /// Moves playback on by the time since the last frame.
    fn advance(&mut self, now: f64, fps: f32, frames: usize) {
        let last = self.last_time.replace(now);
        if !self.playing || frames == 0 {
            self.phase = 0.0;
            return;
        }
        let dt = last.map_or(0.0, |t| (now - t).clamp(0.0, 1.0));
        self.phase += dt * f64::from(fps.max(0.1));
        while self.phase >= 1.0 {
            self.phase -= 1.0;
            if self.frame + 1 >= frames {
                if self.looping {
                    self.frame = 0;
                } else {
                    self.frame = frames - 1;
                    self.playing = false;
                    self.phase = 0.0;
                    break;
                }
            } else {
                self.frame += 1;
            }
        }
    }

    fn textures(&mut self, ui: &Ui, session: &Session, node: &NodeId) -> Vec<TextureHandle> {
        let Some(state) = session.node(node) else { return Vec::new() };
        let entry = self.textures.entry(node.clone()).or_insert((u64::MAX, Vec::new()));
        if entry.0 != state.revision {
            let frames = playable(state).map(|(f, _)| f).unwrap_or_default();
            entry.1 = frames
                .iter()
                .enumerate()
                .map(|(i, f)| super::thumbs::texture(ui, format!("player/{node}/{i}"), f, None))
                .collect();
            entry.0 = state.revision;
        }
        entry.1.clone()
    }

    /// Draws the player. `selected`: the node selected on the canvas (side A follows it unless pinned).
    pub fn show(&mut self, ui: &mut Ui, session: &Session, selected: Option<&NodeId>) {
        let candidates: Vec<NodeId> =
            session.nodes.iter().filter(|(_, s)| playable(s).is_some()).map(|(id, _)| id.clone()).collect();
        let a = Self::side(session, self.a.as_ref().or(selected));
        let b = Self::side(session, self.b.as_ref());
        let frames = a.as_ref().map_or(0, |s| s.frames).max(b.as_ref().map_or(0, |s| s.frames));
        let clip_fps = a.as_ref().and_then(|s| s.fps).or(b.as_ref().and_then(|s| s.fps)).unwrap_or(8.0);
        let fps = self.fps.unwrap_or(clip_fps);
        self.advance(ui.input(|i| i.time), fps, frames);
        if frames > 0 {
            self.frame = self.frame.min(frames - 1);
        }
        self.controls(ui, &candidates, selected, frames, fps);
        let mut sides: Vec<(char, Side)> = Vec::new();
        if let Some(a) = a {
            sides.push(('A', a));
        }
        if let Some(b) = b {
            sides.push(('B', b));
        }
        if sides.is_empty() {
            ui.label(RichText::new("Select a node with a clip or image, or choose A and B above").weak());
            return;
        }
        let width = (ui.available_width() / sides.len() as f32 - 8.0).max(32.0);
        let height = (ui.available_height() - 24.0).max(96.0);
        ui.horizontal_top(|ui| {
            for (letter, side) in &sides {
                let textures = self.textures(ui, session, &side.node);
                let index = self.frame.min(side.frames.saturating_sub(1));
                ui.vertical(|ui| {
                    if let Some(t) = textures.get(index) {
                        // As large as the panel allows, keeping the aspect ratio (small clips are magnified).
                        let [w, h] = t.size().map(|v| v.max(1) as f32);
                        let scale = (width / w).min(height / h);
                        ui.add(egui::Image::new(t).fit_to_exact_size(egui::vec2(w * scale, h * scale)));
                    }
                    ui.label(format!("{letter}: {} · frame {} / {}", side.node, index + 1, side.frames));
                });
            }
        });
        if self.playing {
            ui.ctx().request_repaint_after(std::time::Duration::from_secs_f64(1.0 / f64::from(fps.max(0.1))));
        }
    }

    fn controls(&mut self, ui: &mut Ui, candidates: &[NodeId], selected: Option<&NodeId>, frames: usize, fps: f32) {
        ui.horizontal(|ui| {
            ui.label("A");
            let a_text = match &self.a {
                Some(id) => id.clone(),
                None => format!("selected ({})", selected.map_or("none", |s| s.as_str())),
            };
            egui::ComboBox::from_id_salt("player-a").selected_text(a_text).show_ui(ui, |ui| {
                ui.selectable_value(&mut self.a, None, "the selected node");
                for id in candidates {
                    ui.selectable_value(&mut self.a, Some(id.clone()), id);
                }
            });
            ui.label("B");
            egui::ComboBox::from_id_salt("player-b")
                .selected_text(self.b.clone().unwrap_or_else(|| "none".to_string()))
                .show_ui(ui, |ui| {
                    ui.selectable_value(&mut self.b, None, "none");
                    for id in candidates {
                        ui.selectable_value(&mut self.b, Some(id.clone()), id);
                    }
                });
            ui.separator();
            if ui.button("⏮").on_hover_text("First frame").clicked() {
                self.frame = 0;
                self.playing = false;
            }
            if ui.button("◀").on_hover_text("Previous frame (,)").clicked() {
                self.step(false, frames);
            }
            let play = if self.playing { "⏸ Pause" } else { "▶ Play" };
            if ui.button(play).clicked() {
                self.playing = !self.playing;
                if self.playing && !self.looping && self.frame + 1 >= frames {
                    self.frame = 0;
                }
            }
            if ui.button("▶|").on_hover_text("Next frame (.)").clicked() {
                self.step(true, frames);
            }
            ui.checkbox(&mut self.looping, "loop");
            let mut rate = fps;
            if ui.add(egui::DragValue::new(&mut rate).range(0.5..=60.0).speed(0.1).suffix(" fps")).changed() {
                self.fps = Some(rate);
            }
            if self.fps.is_some() && ui.small_button("clip's fps").clicked() {
                self.fps = None;
            }
            if frames > 1 {
                let mut index = self.frame;
                let scrub = egui::Slider::new(&mut index, 0..=frames - 1).show_value(false).text("frame");
                if ui.add(scrub).changed() {
                    self.frame = index;
                    self.playing = false;
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stepping_wraps_when_looping_and_stops_at_the_ends_otherwise() {
        let mut p = Player { playing: true, ..Player::default() };
        p.step(false, 4);
        assert_eq!((p.frame, p.playing), (3, false));
        p.step(true, 4);
        assert_eq!(p.frame, 0);
        p.looping = false;
        p.step(false, 4);
        assert_eq!(p.frame, 0);
        p.frame = 3;
        p.step(true, 4);
        assert_eq!(p.frame, 3);
    }

    #[test]
    fn playback_advances_with_time_and_stops_at_the_end_without_loop() {
        let mut p = Player { playing: true, ..Player::default() };
        p.advance(10.0, 8.0, 16);
        p.advance(10.5, 8.0, 16);
        assert_eq!(p.frame, 4, "half a second at 8 fps");
        p.looping = false;
        p.advance(12.5, 8.0, 16);
        assert_eq!((p.frame, p.playing), (12, true), "at most a second per frame drawn");
        p.advance(13.5, 8.0, 16);
        assert_eq!((p.frame, p.playing), (15, false), "stopped on the last frame");
    }
}
