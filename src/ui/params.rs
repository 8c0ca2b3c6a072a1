//! Editors for node parameters, one per parameter type, drawn inside the nodes (as ComfyUI's widgets are).
//!
//! An editor shows the stored value, or the default when the node has none; it writes a value only when
//! the artist changes it, so an untouched node saves exactly as it was loaded. A stored value of the wrong
//! type (a hand-edited file) is shown in red with what was expected, and a button to reset it.

use std::path::Path;

use egui::{Color32, RichText, Ui};
use serde_json::Value;

use crate::graph::access::Chosen;
use crate::graph::params::{MAX_SEED, describe_value};
use crate::graph::{KindSpec, ParamSpec, ParamType, PathRole};

/// The width of text fields in nodes.
const EDIT_WIDTH: f32 = 200.0;

/// The colour of values and messages that are wrong.
pub const ERROR_COLOUR: Color32 = Color32::from_rgb(230, 90, 80);

/// How a parameter form is drawn: in a node (compact) or in the inspector (reset buttons, wider fields).
pub struct Form {
    /// A reset button beside each parameter whose value differs from its default.
    pub reset_buttons: bool,
    /// The width of the value column (None: the editors' own).
    pub width: Option<f32>,
}

/// The parameters of a node: one row per declared parameter (name with its description, type and range as a
/// tooltip; the editor; greyed out while another parameter makes it irrelevant), then the parameters the kind
/// does not declare (shown, kept). Edits go into `node.params`. Returns the path values the artist chose
/// in a file dialog. The node body and the inspector both draw this form.
pub fn param_form(
    ui: &mut Ui,
    form: &Form,
    kind: Option<&KindSpec>,
    id: &str,
    node: &mut crate::graph::Node,
    models_dir: &Path,
) -> Vec<Chosen> {
    let mut chosen = Vec::new();
    let columns = if form.reset_buttons { 3 } else { 2 };
    egui::Grid::new(("params", id, form.reset_buttons)).num_columns(columns).spacing([8.0, 4.0]).show(ui, |ui| {
        if let Some(kind) = kind {
            for spec in kind.params {
                let enabled = spec.only_when.is_none_or(|(param, value)| {
                    let current =
                        node.params.get(param).cloned().or_else(|| kind.param(param).map(|p| p.default_value()));
                    current.as_ref().and_then(Value::as_str) == Some(value)
                });
                let hover = format!(
                    "{}\n{}\ndefault: {}",
                    spec.description,
                    spec.type_description(),
                    describe_value(&spec.default_value())
                );
                ui.add_enabled(enabled, egui::Label::new(spec.name)).on_hover_text(hover);
                let stored = node.params.get(spec.name);
                let changed = ui
                    .add_enabled_ui(enabled, |ui| {
                        if let Some(width) = form.width {
                            ui.set_min_width(width);
                        }
                        param_editor(ui, spec, stored, models_dir)
                    })
                    .inner;
                if let ParamType::Path { role: PathRole::Model, .. } = spec.ty
                    && let Some(path) = node.params.get(spec.name).and_then(Value::as_str).filter(|p| !p.is_empty())
                {
                    // What the file or folder holds, on the row below (or why it is no model).
                    ui.end_row();
                    ui.label("");
                    let (text, colour) = match detected(&models_dir.join(path)) {
                        Ok(found) => (found, None),
                        Err(why) => (why, Some(ERROR_COLOUR)),
                    };
                    let mut text = RichText::new(text).small().weak();
                    if let Some(c) = colour {
                        text = text.color(c);
                    }
                    ui.add(egui::Label::new(text).wrap());
                    if form.reset_buttons {
                        ui.label("");
                    }
                }
                if let Some(value) = changed {
                    if take_picked_in_dialog(ui)
                        && let Some(text) = value.as_str()
                    {
                        chosen.push(Chosen {
                            node: id.to_string(),
                            param: spec.name.to_string(),
                            value: text.to_string(),
                        });
                    }
                    node.params.insert(spec.name.to_string(), value);
                }
                if form.reset_buttons {
                    let default = spec.default_value();
                    let is_default = node.params.get(spec.name).is_none_or(|v| *v == default);
                    let reset = ui.add_enabled(!is_default, egui::Button::new("↺").small()).on_hover_text(format!(
                        "Reset {} to its default, {}",
                        spec.name,
                        describe_value(&default)
                    ));
                    if reset.clicked() {
                        node.params.insert(spec.name.to_string(), default);
                    }
                }
                ui.end_row();
            }
        }
        // Parameters the kind does not declare: shown, kept, saved; validation says what is wrong.
        for (name, value) in &node.params {
            if kind.is_some_and(|k| k.param(name).is_some()) {
                continue;
            }
            ui.label(RichText::new(name).color(ERROR_COLOUR))
                .on_hover_text("Not a parameter of this node kind; kept from the file");
            ui.label(RichText::new(describe_value(value)).weak());
            ui.end_row();
        }
    });
    chosen
}

/// Shows the editor of one parameter. `stored` is the node's value (None: the default applies). Returns the
/// new value when the artist changed it.
pub fn param_editor(ui: &mut Ui, spec: &ParamSpec, stored: Option<&Value>, models_dir: &Path) -> Option<Value> {
    let value = stored.cloned().unwrap_or_else(|| spec.default_value());
    if let Err(problem) = spec.check(&value) {
        let mut out = None;
        ui.horizontal(|ui| {
            ui.label(RichText::new(describe_value(&value)).color(ERROR_COLOUR)).on_hover_text(problem);
            if ui.small_button("reset").on_hover_text(format!("Use the default, {}", spec.default_value())).clicked() {
                out = Some(spec.default_value());
            }
        });
        return out;
    }
    match spec.ty {
        ParamType::Int { min, max, .. } => {
            let mut v = value.as_i64().unwrap_or(min);
            let speed = ((max - min) as f64 / 500.0).clamp(0.05, 1000.0);
            ui.add(egui::DragValue::new(&mut v).range(min..=max).speed(speed)).changed().then(|| Value::from(v))
        }
        ParamType::Float { min, max, .. } => {
            let mut v = value.as_f64().unwrap_or(min);
            let speed = ((max - min) / 1000.0).clamp(1e-5, 100.0);
            let decimals = if max - min <= 0.1 {
                5
            } else if max - min <= 2.0 {
                3
            } else {
                2
            };
            let response = ui.add(egui::DragValue::new(&mut v).range(min..=max).speed(speed).max_decimals(decimals));
            response.changed().then(|| Value::from(v))
        }
        ParamType::Bool { .. } => {
            let mut v = value.as_bool().unwrap_or(false);
            ui.checkbox(&mut v, "").changed().then(|| Value::from(v))
        }
        ParamType::Text { multiline, .. } => {
            let mut v = value.as_str().unwrap_or_default().to_string();
            let edit = if multiline {
                egui::TextEdit::multiline(&mut v).desired_rows(3).desired_width(EDIT_WIDTH)
            } else {
                egui::TextEdit::singleline(&mut v).desired_width(EDIT_WIDTH)
            };
            ui.add(edit).changed().then(|| Value::from(v))
        }
        ParamType::Choice { options, .. } => {
            let current = value.as_str().unwrap_or_default().to_string();
            let mut out = None;
            egui::ComboBox::from_id_salt(ui.next_auto_id()).selected_text(&current).show_ui(ui, |ui| {
                for option in options {
                    if ui.selectable_label(current == *option, *option).clicked() && current != *option {
                        out = Some(Value::from(*option));
                    }
                }
            });
            out
        }
        ParamType::Path { role, .. } => path_editor(ui, value.as_str().unwrap_or_default(), role, models_dir),
        ParamType::FloatList { min, max, .. } => float_list_editor(ui, &value, min, max),
        ParamType::Seed { .. } => {
            let mut v = value.as_u64().unwrap_or(0);
            let mut out = None;
            ui.horizontal(|ui| {
                if ui.add(egui::DragValue::new(&mut v).range(0..=MAX_SEED)).changed() {
                    out = Some(Value::from(v));
                }
                if ui.small_button("🎲").on_hover_text("A new random seed").clicked() {
                    out = Some(Value::from(random_seed()));
                }
            });
            out
        }
    }
}

/// A path as text, with a button that opens a file dialog. Model paths inside the models directory are
/// written relative to it (as presets keep them).
fn path_editor(ui: &mut Ui, current: &str, role: PathRole, models_dir: &Path) -> Option<Value> {
    let mut text = current.to_string();
    let mut out = None;
    ui.horizontal(|ui| {
        if ui.add(egui::TextEdit::singleline(&mut text).desired_width(EDIT_WIDTH - 36.0)).changed() {
            out = Some(Value::from(text.clone()));
        }
        let picked = match role {
            PathRole::Model => {
                let mut picked = None;
                ui.menu_button("…", |ui| {
                    if ui.button("File…").clicked() {
                        picked = rfd::FileDialog::new().set_directory(models_dir).pick_file();
                    }
                    if ui.button("Folder (diffusers)…").clicked() {
                        picked = rfd::FileDialog::new().set_directory(models_dir).pick_folder();
                    }
                    ui.separator();
                    ui.label(RichText::new(format!("In {}", models_dir.display())).small().weak());
                    let found = models_in(models_dir);
                    if found.is_empty() {
                        ui.label(RichText::new("no models here yet").weak());
                    }
                    egui::ScrollArea::vertical().max_height(300.0).show(ui, |ui| {
                        for rel in found {
                            let hover = detected(&models_dir.join(&rel)).unwrap_or_else(|why| why);
                            if ui.selectable_label(rel == current, &rel).on_hover_text(hover).clicked()
                                && rel != current
                            {
                                out = Some(Value::from(rel));
                                ui.close();
                            }
                        }
                    });
                })
                .response
                .on_hover_text("Choose a model file or folder");
                picked.map(|p| p.strip_prefix(models_dir).map(Path::to_path_buf).unwrap_or(p))
            }
            PathRole::InputFile => ui
                .small_button("…")
                .on_hover_text("Choose an image")
                .clicked()
                .then(|| rfd::FileDialog::new().add_filter("images", &["png", "jpg", "jpeg", "webp"]).pick_file())
                .flatten(),
            PathRole::Output => ui
                .small_button("…")
                .on_hover_text("Choose where to write ({prompt}, {seed}, {date} and {n} are filled in)")
                .clicked()
                .then(|| rfd::FileDialog::new().save_file())
                .flatten(),
        };
        if let Some(p) = picked {
            out = Some(Value::from(p.to_string_lossy().into_owned()));
            ui.ctx().data_mut(|d| d.insert_temp(picked_id(), true));
        }
    });
    out
}

/// [`crate::models::load::identify::describe_model`] of a path, remembered while the file's size and time
/// stay the same (the canvas asks every frame).
pub fn detected(path: &Path) -> Result<String, String> {
    type Seen =
        std::collections::HashMap<std::path::PathBuf, (Option<std::time::SystemTime>, u64, Result<String, String>)>;
    static SEEN: std::sync::Mutex<Option<Seen>> = std::sync::Mutex::new(None);
    let meta = std::fs::metadata(path).ok();
    let stamp = (meta.as_ref().and_then(|m| m.modified().ok()), meta.as_ref().map_or(0, |m| m.len()));
    let mut seen = SEEN.lock().unwrap_or_else(|p| p.into_inner());
    let seen = seen.get_or_insert_with(Default::default);
    if let Some((time, len, found)) = seen.get(path)
        && (*time, *len) == stamp
    {
        return found.clone();
    }
    let found = crate::models::load::identify::describe_model(path);
    if seen.len() > 256 {
        seen.clear();
    }
    seen.insert(path.to_path_buf(), (stamp.0, stamp.1, found.clone()));
    found
}

/// The models the models folder holds, relative to it: weight files and model folders, two levels deep.
pub fn models_in(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, depth: usize, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        let mut entries: Vec<_> = entries.flatten().map(|e| e.path()).collect();
        entries.sort();
        for path in entries {
            let rel = || path.strip_prefix(root).unwrap_or(&path).to_string_lossy().into_owned();
            if path.is_dir() {
                let is_model =
                    ["model_index.json", "config.json", "med_config.json"].iter().any(|f| path.join(f).is_file());
                if is_model {
                    out.push(rel());
                } else if depth > 0 {
                    walk(root, &path, depth - 1, out);
                }
            } else if path
                .extension()
                .is_some_and(|e| ["safetensors", "ckpt", "bin", "pt", "pth"].contains(&&*e.to_string_lossy()))
            {
                out.push(rel());
            }
            if out.len() >= 200 {
                return;
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, 1, &mut out);
    out
}

fn picked_id() -> egui::Id {
    egui::Id::new("stepstone-path-picked-in-dialog")
}

/// Whether the path value the last [`param_editor`] call returned was chosen in a file dialog (the artist's
/// own choice, which may point outside the models and output folders; see `graph::access`). Reading clears it.
pub fn take_picked_in_dialog(ui: &Ui) -> bool {
    ui.ctx().data_mut(|d| d.remove_temp::<bool>(picked_id())).unwrap_or(false)
}

/// A list of numbers typed as `10, 10, 10, 1`. While the text does not parse or is out of range it is shown
/// in red and the stored value is kept.
fn float_list_editor(ui: &mut Ui, value: &Value, min: f64, max: f64) -> Option<Value> {
    let shown =
        value.as_array().map(|a| a.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(", ")).unwrap_or_default();
    let id = ui.next_auto_id();
    let mut text = ui.data(|d| d.get_temp::<String>(id)).unwrap_or_else(|| shown.clone());
    let parsed = parse_float_list(&text, min, max);
    let colour = if parsed.is_ok() { None } else { Some(ERROR_COLOUR) };
    let mut edit = egui::TextEdit::singleline(&mut text).desired_width(EDIT_WIDTH);
    if let Some(c) = colour {
        edit = edit.text_color(c);
    }
    let response = ui.add(edit);
    let response = match &parsed {
        Err(e) => response.on_hover_text(e),
        Ok(_) => response.on_hover_text(format!("numbers in {min}..={max}, separated by commas")),
    };
    if response.has_focus() || parsed.is_err() {
        ui.data_mut(|d| d.insert_temp(id, text.clone()));
    } else {
        ui.data_mut(|d| d.remove::<String>(id));
    }
    if response.changed()
        && let Ok(list) = parse_float_list(&text, min, max)
    {
        return Some(Value::from(list));
    }
    None
}

/// Parses `a, b, c` into numbers within [min, max]; the error names the offending entry.
pub fn parse_float_list(text: &str, min: f64, max: f64) -> Result<Vec<f64>, String> {
    let mut out = Vec::new();
    for (i, part) in text.split(',').map(str::trim).enumerate() {
        let v: f64 = part.parse().map_err(|_| format!("entry {} ('{part}') is not a number", i + 1))?;
        if !(min..=max).contains(&v) {
            return Err(format!("entry {} ({v}) is outside {min}..={max}", i + 1));
        }
        out.push(v);
    }
    if out.is_empty() {
        return Err("the list is empty".to_string());
    }
    Ok(out)
}

/// A seed from the operating system's per-process hash keys and the clock, within `0..=MAX_SEED`.
pub fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
    h.finish() % (MAX_SEED + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float_lists_parse_and_name_the_bad_entry() {
        assert_eq!(parse_float_list("10, 10,10 , 1", 0.0, 100.0).unwrap(), vec![10.0, 10.0, 10.0, 1.0]);
        assert_eq!(parse_float_list("1, x", 0.0, 10.0).unwrap_err(), "entry 2 ('x') is not a number");
        assert_eq!(parse_float_list("1, 20", 0.0, 10.0).unwrap_err(), "entry 2 (20) is outside 0..=10");
        assert!(parse_float_list("", 0.0, 10.0).is_err());
    }

    #[test]
    fn random_seeds_are_in_range_and_differ() {
        let seeds: std::collections::BTreeSet<u64> = (0..16).map(|_| random_seed()).collect();
        assert!(seeds.len() > 1);
        assert!(seeds.iter().all(|&s| s <= MAX_SEED));
    }
}
