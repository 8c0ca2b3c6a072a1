//! Results shown inside nodes: candidate grids, the ranking (where the artist picks an anchor by hand), still
//! images and playing clips. Textures are made once per result and kept until the node has a new one.

use std::collections::HashMap;
use std::sync::Arc;

use egui::{Color32, ColorImage, RichText, TextureHandle, TextureOptions, Ui};
use image::RgbImage;

use super::session::NodeState;
use crate::values::{Candidates, Ranking, SelectedBy, StillImage, Value};
use crate::video::Video;

/// Which result of a node to show.
pub enum Shown<'a> {
    Images(&'a [Arc<RgbImage>]),
    Ranking(&'a Ranking),
    Still(&'a StillImage),
    Video(&'a Video),
}

impl Shown<'_> {
    fn images(&self) -> Vec<&RgbImage> {
        match self {
            Shown::Images(images) => images.iter().map(|i| i.as_ref()).collect(),
            Shown::Ranking(r) => r.images.iter().map(|i| i.as_ref()).collect(),
            Shown::Still(s) => vec![s.image.as_ref()],
            Shown::Video(v) => v.frames.iter().collect(),
        }
    }
}

/// The result to show for a node: its newest preview, else its outputs.
pub fn shown(state: &NodeState) -> Option<Shown<'_>> {
    for label in [crate::runtime::LIVE_PREVIEW, "ranking", "video", "candidates", "image"] {
        let shown = match state.previews.get(label) {
            Some(Value::Ranking(r)) => Shown::Ranking(r),
            Some(Value::Video(v)) => Shown::Video(v),
            Some(Value::Images(images)) => Shown::Images(images),
            Some(Value::Candidates(c)) => Shown::Images(&c.images),
            Some(Value::Image(s)) => Shown::Still(s),
            _ => continue,
        };
        return Some(shown);
    }
    let outputs = state.outputs.as_ref()?;
    if let Some(r) = outputs.get::<Ranking>("ranking") {
        return Some(Shown::Ranking(r));
    }
    if let Some(v) = outputs.get::<Video>("video") {
        return Some(Shown::Video(v));
    }
    if let Some(c) = outputs.get::<Candidates>("candidates") {
        return Some(Shown::Images(&c.images));
    }
    for port in ["anchor", "image"] {
        if let Some(s) = outputs.get::<StillImage>(port) {
            return Some(Shown::Still(s));
        }
    }
    None
}

/// Texture cache: per node, the textures of the result with a given revision.
#[derive(Default)]
pub struct Textures {
    by_node: HashMap<String, (u64, Vec<TextureHandle>)>,
}

/// The longest side of the textures drawn on the canvas (and in hover enlargements): results are downscaled
/// to it, so a 16-frame 512x512 clip costs 16 small textures per node, not 16 MB; full-size frames are only
/// uploaded for the clip player.
pub const THUMB_TEXTURE: u32 = 256;

/// An image as a texture, downscaled so that its longest side is at most `limit` (None: full size).
pub fn texture(ui: &Ui, name: String, image: &RgbImage, limit: Option<u32>) -> TextureHandle {
    let longest = image.width().max(image.height());
    let colour = match limit {
        Some(limit) if longest > limit => {
            let scale = f64::from(limit) / f64::from(longest);
            let w = ((f64::from(image.width()) * scale).round() as u32).max(1);
            let h = ((f64::from(image.height()) * scale).round() as u32).max(1);
            let small = image::imageops::resize(image, w, h, image::imageops::FilterType::Triangle);
            ColorImage::from_rgb([w as usize, h as usize], small.as_raw())
        }
        _ => ColorImage::from_rgb([image.width() as usize, image.height() as usize], image.as_raw()),
    };
    ui.ctx().load_texture(name, colour, TextureOptions::LINEAR)
}

impl Textures {
    fn get(&mut self, ui: &Ui, node: &str, revision: u64, shown: &Shown<'_>) -> &[TextureHandle] {
        let entry = self.by_node.entry(node.to_string()).or_insert((u64::MAX, Vec::new()));
        if entry.0 != revision {
            entry.1 = shown
                .images()
                .into_iter()
                .enumerate()
                .map(|(i, image)| texture(ui, format!("{node}/{i}"), image, Some(THUMB_TEXTURE)))
                .collect();
            entry.0 = revision;
        }
        &entry.1
    }

    /// The size of the textures made for `node` (tests check they are downscaled).
    pub fn sizes(&self, node: &str) -> Vec<[usize; 2]> {
        self.by_node.get(node).map(|(_, t)| t.iter().map(TextureHandle::size).collect()).unwrap_or_default()
    }

    /// Drops the textures of nodes for which `keep` is false.
    pub fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        self.by_node.retain(|id, _| keep(id));
    }
}

/// What the artist did with a shown result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pick {
    /// Use this candidate as the anchor (the selector goes to manual mode).
    Candidate(usize),
    /// Let the reward model choose again.
    ByReward,
    /// Another batch of candidates, keeping the ones shown (and the pick among them).
    More,
}

const THUMB: f32 = 56.0;
const LARGE: f32 = 176.0;

/// Shows a node's result; returns the artist's pick when they clicked a ranked candidate.
pub fn show(ui: &mut Ui, textures: &mut Textures, node: &str, state: &NodeState) -> Option<Pick> {
    let shown = shown(state)?;
    let textures = textures.get(ui, node, state.revision, &shown);
    match shown {
        Shown::Images(_) => {
            grid(ui, textures, |ui, i, t| {
                ui.add(egui::Image::new(t).fit_to_exact_size(egui::vec2(THUMB, THUMB))).on_hover_ui(|ui| {
                    enlarged(ui, t, &format!("candidate {i}"));
                });
            });
            more_button(ui)
        }
        Shown::Ranking(ranking) => ranking_grid(ui, textures, ranking),
        Shown::Still(still) => {
            if let Some(t) = textures.first() {
                ui.add(egui::Image::new(t).max_size(egui::vec2(LARGE, LARGE))).on_hover_text(&still.source);
            }
            None
        }
        Shown::Video(video) => {
            if !textures.is_empty() {
                let fps = if video.fps > 0.0 { video.fps } else { 8.0 };
                let time = ui.input(|i| i.time);
                let frame = (time * fps) as usize % textures.len();
                ui.add(egui::Image::new(&textures[frame]).max_size(egui::vec2(LARGE, LARGE)));
                ui.label(RichText::new(format!("frame {} / {} · {fps} fps", frame + 1, textures.len())).small().weak());
                ui.ctx().request_repaint_after(std::time::Duration::from_secs_f64(1.0 / fps));
            }
            None
        }
    }
}

/// "more candidates": another batch from the next seed, the ones shown kept.
fn more_button(ui: &mut Ui) -> Option<Pick> {
    let hover = "Another batch of candidates (the next seed); the ones shown and the anchor stay until you pick";
    ui.small_button("more candidates").on_hover_text(hover).clicked().then_some(Pick::More)
}

/// The hover view of a thumbnail: the image at the texture's size, with a caption.
fn enlarged(ui: &mut Ui, texture: &TextureHandle, caption: &str) {
    ui.add(egui::Image::new(texture).max_size(egui::vec2(THUMB_TEXTURE as f32, THUMB_TEXTURE as f32)));
    ui.label(RichText::new(caption).small());
}

fn grid(ui: &mut Ui, textures: &[TextureHandle], mut cell: impl FnMut(&mut Ui, usize, &TextureHandle)) {
    let columns = if textures.len() <= 4 { textures.len().max(1) } else { 4 };
    egui::Grid::new(ui.next_auto_id()).spacing([4.0, 4.0]).show(ui, |ui| {
        for (i, t) in textures.iter().enumerate() {
            cell(ui, i, t);
            if (i + 1) % columns == 0 {
                ui.end_row();
            }
        }
    });
}

/// The candidates with their scores; the selected one framed, the reward model's best starred. A click picks.
fn ranking_grid(ui: &mut Ui, textures: &[TextureHandle], ranking: &Ranking) -> Option<Pick> {
    let best = ranking.best();
    let mut pick = None;
    grid(ui, textures, |ui, i, t| {
        let selected = i == ranking.selected;
        let score = ranking.scores.as_ref().and_then(|s| s.get(i));
        let mut hover = match score {
            Some(s) => format!("candidate {i}: ImageReward {s:.3}"),
            None => format!("candidate {i}"),
        };
        if best == Some(i) {
            hover.push_str(" (best score)");
        }
        if i < 9 {
            hover.push_str(&format!("\nClick, or press {} with this node selected, to use it as the anchor", i + 1));
        } else {
            hover.push_str("\nClick to use it as the anchor");
        }
        ui.vertical(|ui| {
            let stroke =
                if selected { egui::Stroke::new(2.0, Color32::from_rgb(250, 200, 60)) } else { egui::Stroke::NONE };
            let image = egui::Image::new(t).fit_to_exact_size(egui::vec2(THUMB, THUMB)).sense(egui::Sense::click());
            let response = egui::Frame::NONE.stroke(stroke).show(ui, |ui| ui.add(image)).inner;
            response
                .widget_info(|| egui::WidgetInfo::labeled(egui::WidgetType::Button, true, format!("candidate {i}")));
            let response = response.on_hover_ui(|ui| enlarged(ui, t, &hover));
            if response.clicked() && !(selected && ranking.by == SelectedBy::Hand) {
                pick = Some(Pick::Candidate(i));
            }
            let star = if best == Some(i) { "★ " } else { "" };
            let label = match score {
                Some(s) => format!("{star}{i}: {s:.2}"),
                None => format!("{i}"),
            };
            ui.label(RichText::new(label).small());
        });
    });
    ui.horizontal(|ui| {
        if ranking.by == SelectedBy::Hand {
            ui.label(RichText::new(format!("picked by hand: {}", ranking.selected)).small());
            if ranking.scores.is_some() && ui.small_button("use best score").clicked() {
                pick = Some(Pick::ByReward);
            }
        }
        if let Some(more) = more_button(ui) {
            pick = Some(more);
        }
    });
    pick
}
