//! The node palette: a search box over every node kind (Space or Tab on the canvas, right-click, or a wire
//! dropped on empty canvas, which lists only the kinds that can take the wire and connects the one chosen).

use egui::{Key, Pos2, RichText, Ui};
use egui_snarl::{InPinId, OutPinId};

use crate::graph::{KindRegistry, KindSpec, PortType};

/// The loose end of a wire dropped on empty canvas: the pin it comes from and its type.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum WireEnd {
    /// From an output: the new node takes it on an input of the same type.
    Output(OutPinId, PortType),
    /// From an input: the new node feeds it from an output of the same type.
    Input(InPinId, PortType),
}

/// An open palette.
#[derive(Clone, Debug)]
pub struct Palette {
    pub query: String,
    /// Where the new node goes, in canvas coordinates.
    pub at: Pos2,
    /// Where the palette is drawn, in screen coordinates.
    pub screen: Pos2,
    pub wire: Option<WireEnd>,
    /// The highlighted entry (Up and Down move it, Enter adds it).
    pub highlighted: usize,
    focused: bool,
}

impl Palette {
    pub fn new(at: Pos2, screen: Pos2, wire: Option<WireEnd>) -> Palette {
        Palette { query: String::new(), at, screen, wire, highlighted: 0, focused: false }
    }
}

/// Whether `kind` can take the loose end `wire`.
pub fn accepts(kind: &KindSpec, wire: Option<WireEnd>) -> bool {
    match wire {
        None => true,
        Some(WireEnd::Output(_, ty)) => kind.inputs.iter().any(|p| p.ty == ty),
        Some(WireEnd::Input(_, ty)) => kind.outputs.iter().any(|p| p.ty == ty),
    }
}

/// The kinds matching `query` (every word in the title, id, category or description, case-insensitive)
/// that can take `wire`, best first: title starts with the query, then title contains it, then the rest.
pub fn matches<'a>(registry: &'a KindRegistry, query: &str, wire: Option<WireEnd>) -> Vec<&'a KindSpec> {
    let query = query.trim().to_lowercase();
    let words: Vec<&str> = query.split_whitespace().collect();
    let mut found: Vec<(u8, &KindSpec)> = registry
        .iter()
        .filter(|k| accepts(k, wire))
        .filter_map(|k| {
            let title = k.title.to_lowercase();
            let haystack = format!("{title} {} {} {}", k.id, k.category.to_lowercase(), k.description.to_lowercase());
            if !words.iter().all(|w| haystack.contains(w)) {
                return None;
            }
            let rank = if query.is_empty() {
                1
            } else if title.starts_with(&query) {
                0
            } else if title.contains(&query) {
                1
            } else {
                2
            };
            Some((rank, k))
        })
        .collect();
    found.sort_by(|a, b| {
        a.0.cmp(&b.0).then_with(|| a.1.category.cmp(b.1.category)).then_with(|| a.1.title.cmp(b.1.title))
    });
    found.into_iter().map(|(_, k)| k).collect()
}

/// What the palette's frame decided.
pub enum Outcome {
    Open,
    Closed,
    Add(KindSpec),
}

/// Draws the palette's search box and list into `ui`; Enter adds the highlighted kind, Escape closes.
pub fn show(ui: &mut Ui, palette: &mut Palette, registry: &KindRegistry) -> Outcome {
    let heading = match palette.wire {
        None => "Add node".to_string(),
        Some(WireEnd::Output(_, ty)) => format!("Add a node that takes {}", ty.name()),
        Some(WireEnd::Input(_, ty)) => format!("Add a node that gives {}", ty.name()),
    };
    ui.label(RichText::new(heading).strong());
    // Read before the search box, which takes Escape to give up the keyboard.
    let (up, down, enter, escape) = ui.input_mut(|i| {
        (
            i.consume_key(egui::Modifiers::NONE, Key::ArrowUp),
            i.consume_key(egui::Modifiers::NONE, Key::ArrowDown),
            i.key_pressed(Key::Enter),
            i.key_pressed(Key::Escape),
        )
    });
    let search = ui.add(egui::TextEdit::singleline(&mut palette.query).hint_text("search nodes").desired_width(260.0));
    // Until the box has the keyboard (the Tab that opened the palette also moves egui's focus once).
    if !palette.focused {
        search.request_focus();
    }
    palette.focused |= search.has_focus();
    if search.changed() {
        palette.highlighted = 0;
    }
    let found = matches(registry, &palette.query, palette.wire);
    if down {
        palette.highlighted = (palette.highlighted + 1).min(found.len().saturating_sub(1));
    }
    if up {
        palette.highlighted = palette.highlighted.saturating_sub(1);
    }
    if escape {
        return Outcome::Closed;
    }
    if enter && let Some(kind) = found.get(palette.highlighted) {
        return Outcome::Add(**kind);
    }
    if found.is_empty() {
        ui.label(RichText::new("no node kind matches").weak());
    }
    let mut chosen = None;
    egui::ScrollArea::vertical().max_height(320.0).show(ui, |ui| {
        for (i, kind) in found.iter().enumerate() {
            let text = format!("{}  ·  {}", kind.title, kind.category);
            let entry = ui.selectable_label(i == palette.highlighted, text).on_hover_text(kind.description);
            if entry.clicked() {
                chosen = Some(**kind);
            }
        }
    });
    match chosen {
        Some(kind) => Outcome::Add(kind),
        None => Outcome::Open,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_ranks_title_matches_first_and_wires_filter_by_type() {
        let registry = crate::nodes::registry();
        let all = matches(&registry, "", None);
        assert_eq!(all.len(), registry.iter().count());
        let found = matches(&registry, "prompt", None);
        assert_eq!(found[0].id, "prompt", "{:?}", found.iter().map(|k| k.id).collect::<Vec<_>>());
        assert!(matches(&registry, "no such node anywhere", None).is_empty());
        let pin = OutPinId { node: egui_snarl::NodeId(0), output: 0 };
        let takes_video = matches(&registry, "", Some(WireEnd::Output(pin, PortType::Video)));
        assert!(!takes_video.is_empty());
        assert!(takes_video.iter().all(|k| k.inputs.iter().any(|p| p.ty == PortType::Video)));
        assert!(takes_video.iter().any(|k| k.id == "export") && !takes_video.iter().any(|k| k.id == "prompt"));
        let gives_prompt =
            matches(&registry, "", Some(WireEnd::Input(InPinId { node: pin.node, input: 0 }, PortType::Prompt)));
        assert_eq!(gives_prompt.iter().map(|k| k.id).collect::<Vec<_>>(), ["prompt"]);
    }
}
