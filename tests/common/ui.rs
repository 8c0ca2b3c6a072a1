//! Driving the editor headless through egui: frames of a 1280x800 window, and finding and clicking widgets
//! through the accessibility tree (as a screen reader would).

use stepstone::ui::Studio;

/// The input of one frame at egui time `time`.
pub fn raw_input(time: f64) -> egui::RawInput {
    egui::RawInput {
        screen_rect: Some(egui::Rect::from_min_size(egui::Pos2::ZERO, egui::vec2(1280.0, 800.0))),
        time: Some(time),
        ..Default::default()
    }
}

/// One frame of the window.
pub fn run_frame(ctx: &egui::Context, studio: &mut Studio, raw: egui::RawInput) -> egui::FullOutput {
    let mut output = ctx.run_ui(raw, |ui| studio.ui(ui));
    output.textures_delta.clear(); // no renderer here to upload textures to
    output
}

/// The accessibility node labelled `label` in a frame's output.
pub fn widget(output: &egui::FullOutput, label: &str) -> Option<egui::accesskit::NodeId> {
    let update = output.platform_output.accesskit_update.as_ref()?;
    update.nodes.iter().find(|(_, node)| node.label() == Some(label)).map(|(id, _)| *id)
}

/// A frame in which the widget is clicked through the accessibility interface.
pub fn click(target: egui::accesskit::NodeId, time: f64) -> egui::RawInput {
    egui::RawInput {
        events: vec![egui::Event::AccessKitActionRequest(egui::accesskit::ActionRequest {
            action: egui::accesskit::Action::Click,
            target_tree: egui::accesskit::TreeId::ROOT,
            target_node: target,
            data: None,
        })],
        ..raw_input(time)
    }
}

/// The labels of every accessibility node in a frame's output.
pub fn labels(output: &egui::FullOutput) -> Vec<String> {
    let Some(update) = output.platform_output.accesskit_update.as_ref() else { return Vec::new() };
    update.nodes.iter().filter_map(|(_, node)| node.label().map(str::to_string)).collect()
}

/// The accessibility nodes of a frame with a value (text), with their left edge (x).
pub fn values(output: &egui::FullOutput) -> Vec<(String, f64)> {
    let Some(update) = output.platform_output.accesskit_update.as_ref() else { return Vec::new() };
    update.nodes.iter().filter_map(|(_, n)| Some((n.value()?.to_string(), n.bounds()?.x0))).collect()
}
