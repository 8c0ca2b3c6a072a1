//! Preset files: versioned JSON graphs (see docs/FORMATS.md).
//!
//! Saving is canonical: nodes sorted by id, links sorted, parameters sorted by name, two-space indent and a
//! final newline, so a saved preset loads and saves again byte for byte. Fields this version does not
//! know (at the top level and on nodes) and nodes of unknown kinds are kept and written back unchanged.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::{Graph, Link, Node, PortRef};

/// The `format` field of every preset.
pub const FORMAT: &str = "stepstone-graph";
/// The version this build writes.
pub const CURRENT_VERSION: u64 = 1;

/// The largest preset (or embedded graph) read, in bytes.
pub const MAX_PRESET_BYTES: usize = 16 * 1024 * 1024;
/// The most nodes a preset may hold.
pub const MAX_NODES: usize = 10_000;
/// The most links a preset may hold.
pub const MAX_LINKS: usize = 50_000;

/// A migration turns the JSON of version `n` into version `n + 1`.
pub type Migration = fn(Value) -> Result<Value, String>;

/// Migrations indexed by the version they start from: `MIGRATIONS[0]` takes version 1 to 2, and so on.
/// Version 1 is the first format, so there are none yet; a format change adds one here and bumps
/// `CURRENT_VERSION`.
pub const MIGRATIONS: &[Migration] = &[];

#[derive(Debug, thiserror::Error)]
pub enum PresetError {
    #[error("cannot read preset {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("cannot write preset {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("{origin}:{line}:{column}: malformed JSON: {message}")]
    Json { origin: String, line: usize, column: usize, message: String },
    #[error("{origin}: not a stepstone graph: {message}")]
    NotAPreset { origin: String, message: String },
    #[error(
        "{origin}: preset version {found} was written by a newer stepstone (this one reads up to version {supported})"
    )]
    TooNew { origin: String, found: u64, supported: u64 },
    #[error("{origin}: migrating from version {from} failed: {message}")]
    Migration { origin: String, from: u64, message: String },
    #[error("{origin}: {message}")]
    Invalid { origin: String, message: String },
    #[error("{origin}: {what} is too large: {found}, at most {limit}")]
    TooLarge { origin: String, what: &'static str, found: usize, limit: usize },
    #[error(
        "{origin}: not UTF-8 text: invalid byte 0x{byte:02x} at byte offset {offset} (line {line}, column {column})"
    )]
    NotUtf8 { origin: String, byte: u8, offset: usize, line: usize, column: usize },
}

/// Reads a preset file (at most [`MAX_PRESET_BYTES`]; UTF-8, with or without a byte-order mark).
pub fn load_preset(path: &Path) -> Result<Graph, PresetError> {
    use std::io::Read;
    let origin = path.display().to_string();
    let read_err = |source| PresetError::Read { path: path.to_path_buf(), source };
    let file = std::fs::File::open(path).map_err(read_err)?;
    let mut bytes = Vec::new();
    // One byte more than the limit tells a file at the limit from a larger one, without reading it all.
    file.take(MAX_PRESET_BYTES as u64 + 1).read_to_end(&mut bytes).map_err(read_err)?;
    if bytes.len() > MAX_PRESET_BYTES {
        let found = std::fs::metadata(path).map(|m| m.len() as usize).unwrap_or(bytes.len());
        return Err(too_large(&origin, "the preset (bytes)", found, MAX_PRESET_BYTES));
    }
    let text = preset_text(&bytes, &origin)?;
    parse_preset(text, &origin)
}

/// Preset bytes as text: UTF-8 (a leading byte-order mark is skipped); otherwise the error gives the offset,
/// line and column of the first bad byte.
pub fn preset_text<'a>(bytes: &'a [u8], origin: &str) -> Result<&'a str, PresetError> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    std::str::from_utf8(bytes).map_err(|e| {
        let offset = e.valid_up_to();
        let before = &bytes[..offset];
        let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
        let line_start = before.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        // Characters, not bytes, up to the bad byte (the text before it is valid UTF-8).
        let column = std::str::from_utf8(&before[line_start..]).map_or(0, |t| t.chars().count()) + 1;
        PresetError::NotUtf8 {
            origin: origin.to_string(),
            byte: bytes.get(offset).copied().unwrap_or(0),
            offset,
            line,
            column,
        }
    })
}

/// Parses preset text; `origin` names the source in messages (usually the file path).
pub fn parse_preset(text: &str, origin: &str) -> Result<Graph, PresetError> {
    let text = text.strip_prefix('\u{FEFF}').unwrap_or(text);
    if text.len() > MAX_PRESET_BYTES {
        return Err(too_large(origin, "the preset (bytes)", text.len(), MAX_PRESET_BYTES));
    }
    let value: Value = serde_json::from_str(text).map_err(|e| PresetError::Json {
        origin: origin.to_string(),
        line: e.line(),
        column: e.column(),
        message: strip_position(&e.to_string()),
    })?;
    let value = migrate(value, origin, CURRENT_VERSION, MIGRATIONS)?;
    from_value(value, origin)
}

/// serde_json appends " at line L column C" to its messages; we print the position up front instead.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_string(),
        None => message.to_string(),
    }
}

fn too_large(origin: &str, what: &'static str, found: usize, limit: usize) -> PresetError {
    PresetError::TooLarge { origin: origin.to_string(), what, found, limit }
}

fn not_a_preset(origin: &str, message: impl Into<String>) -> PresetError {
    PresetError::NotAPreset { origin: origin.to_string(), message: message.into() }
}

fn invalid(origin: &str, message: impl Into<String>) -> PresetError {
    PresetError::Invalid { origin: origin.to_string(), message: message.into() }
}

/// Checks `format` and brings a preset of any older version up to `current` with `migrations`.
pub fn migrate(mut value: Value, origin: &str, current: u64, migrations: &[Migration]) -> Result<Value, PresetError> {
    let obj = value.as_object().ok_or_else(|| not_a_preset(origin, "the top level is not a JSON object"))?;
    match obj.get("format").and_then(Value::as_str) {
        Some(FORMAT) => {}
        Some(other) => {
            return Err(not_a_preset(origin, format!("\"format\" is \"{other}\", expected \"{FORMAT}\"")));
        }
        None => return Err(not_a_preset(origin, format!("missing \"format\": \"{FORMAT}\""))),
    }
    let mut version = obj
        .get("version")
        .and_then(Value::as_u64)
        .ok_or_else(|| not_a_preset(origin, "missing or non-integer \"version\""))?;
    if version == 0 {
        return Err(not_a_preset(origin, "\"version\" 0 does not exist; versions start at 1"));
    }
    if version > current {
        return Err(PresetError::TooNew { origin: origin.to_string(), found: version, supported: current });
    }
    while version < current {
        let step = usize::try_from(version - 1).ok().and_then(|i| migrations.get(i)).ok_or_else(|| {
            PresetError::Migration {
                origin: origin.to_string(),
                from: version,
                message: "no migration is registered for this version".to_string(),
            }
        })?;
        value = step(value).map_err(|message| PresetError::Migration {
            origin: origin.to_string(),
            from: version,
            message,
        })?;
        version += 1;
        if let Some(obj) = value.as_object_mut() {
            obj.insert("version".to_string(), Value::from(version));
        }
    }
    Ok(value)
}

fn from_value(value: Value, origin: &str) -> Result<Graph, PresetError> {
    let Value::Object(mut top) = value else {
        return Err(not_a_preset(origin, "the top level is not a JSON object"));
    };
    top.remove("format");
    top.remove("version");
    let mut graph = Graph::new();

    let nodes = match top.remove("nodes") {
        Some(Value::Array(nodes)) => nodes,
        Some(_) => return Err(invalid(origin, "\"nodes\" must be a list")),
        None => Vec::new(),
    };
    if nodes.len() > MAX_NODES {
        return Err(too_large(origin, "the number of nodes", nodes.len(), MAX_NODES));
    }
    for (i, node) in nodes.into_iter().enumerate() {
        let Value::Object(mut fields) = node else {
            return Err(invalid(origin, format!("node #{i} is not an object")));
        };
        let id = match fields.remove("id") {
            Some(Value::String(id)) => id,
            _ => return Err(invalid(origin, format!("node #{i} has no \"id\" text"))),
        };
        let kind = match fields.remove("kind") {
            Some(Value::String(kind)) => kind,
            _ => return Err(invalid(origin, format!("node '{id}' has no \"kind\" text"))),
        };
        let title = match fields.remove("title") {
            None | Some(Value::Null) => None,
            Some(Value::String(t)) => Some(t),
            Some(_) => return Err(invalid(origin, format!("node '{id}': \"title\" must be text"))),
        };
        let pos = match fields.remove("pos") {
            None | Some(Value::Null) => None,
            Some(Value::Array(xy)) if xy.len() == 2 => match (xy[0].as_f64(), xy[1].as_f64()) {
                (Some(x), Some(y)) => Some([x, y]),
                _ => return Err(invalid(origin, format!("node '{id}': \"pos\" must be [x, y] numbers"))),
            },
            Some(_) => return Err(invalid(origin, format!("node '{id}': \"pos\" must be [x, y] numbers"))),
        };
        let params: BTreeMap<String, Value> = match fields.remove("params") {
            None | Some(Value::Null) => BTreeMap::new(),
            Some(Value::Object(p)) => p.into_iter().collect(),
            Some(_) => return Err(invalid(origin, format!("node '{id}': \"params\" must be an object"))),
        };
        let extra = fields.into_iter().collect();
        if graph.nodes.contains_key(&id) {
            return Err(invalid(origin, format!("two nodes have the id '{id}'")));
        }
        graph.nodes.insert(id, Node { kind, title, pos, params, extra });
    }

    let links = match top.remove("links") {
        Some(Value::Array(links)) => links,
        Some(_) => return Err(invalid(origin, "\"links\" must be a list")),
        None => Vec::new(),
    };
    if links.len() > MAX_LINKS {
        return Err(too_large(origin, "the number of links", links.len(), MAX_LINKS));
    }
    for (i, link) in links.into_iter().enumerate() {
        let end = |key: &str| -> Result<PortRef, PresetError> {
            let text = link
                .get(key)
                .and_then(Value::as_str)
                .ok_or_else(|| invalid(origin, format!("link #{i} has no \"{key}\" text (expected \"node.port\")")))?;
            PortRef::parse(text).ok_or_else(|| invalid(origin, format!("link #{i}: \"{text}\" is not \"node.port\"")))
        };
        let link = Link { from: end("from")?, to: end("to")? };
        graph.links.insert(link);
    }

    graph.view = top.remove("view").unwrap_or(Value::Null);
    graph.extra = top.into_iter().collect();
    Ok(graph)
}

/// The canonical JSON text of a graph (what `save_preset` writes).
pub fn to_preset_string(graph: &Graph) -> String {
    let mut top = Map::new();
    top.insert("format".into(), Value::from(FORMAT));
    top.insert("version".into(), Value::from(CURRENT_VERSION));
    let nodes = graph
        .nodes
        .iter()
        .map(|(id, node)| {
            let mut n = Map::new();
            n.insert("id".into(), Value::from(id.as_str()));
            n.insert("kind".into(), Value::from(node.kind.as_str()));
            if let Some(title) = &node.title {
                n.insert("title".into(), Value::from(title.as_str()));
            }
            if let Some([x, y]) = node.pos {
                n.insert("pos".into(), Value::from(vec![x, y]));
            }
            let params: Map<String, Value> = node.params.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            n.insert("params".into(), Value::Object(params));
            for (k, v) in &node.extra {
                n.insert(k.clone(), v.clone());
            }
            Value::Object(n)
        })
        .collect();
    top.insert("nodes".into(), Value::Array(nodes));
    let links = graph
        .links
        .iter()
        .map(|l| {
            let mut m = Map::new();
            m.insert("from".into(), Value::from(l.from.to_string()));
            m.insert("to".into(), Value::from(l.to.to_string()));
            Value::Object(m)
        })
        .collect();
    top.insert("links".into(), Value::Array(links));
    if !graph.view.is_null() {
        top.insert("view".into(), graph.view.clone());
    }
    for (k, v) in &graph.extra {
        top.insert(k.clone(), v.clone());
    }
    // Serialising a Value cannot fail: every key is a string.
    let mut text = serde_json::to_string_pretty(&Value::Object(top)).unwrap_or_default();
    text.push('\n');
    text
}

/// Writes a preset atomically (a temporary file in the same folder, then a rename).
pub fn save_preset(path: &Path, graph: &Graph) -> Result<(), PresetError> {
    let write_err = |source| PresetError::Write { path: path.to_path_buf(), source };
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{file_name}.{}.tmp", std::process::id()));
    std::fs::write(&tmp, to_preset_string(graph)).map_err(write_err)?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        write_err(e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SAMPLE: &str = r#"{
  "format": "stepstone-graph",
  "version": 1,
  "nodes": [
    {
      "id": "a",
      "kind": "prompt",
      "pos": [10.0, -5.5],
      "params": {
        "negative": "",
        "positive": "a cat"
      }
    },
    {
      "id": "z",
      "kind": "future_node",
      "params": {
        "knob": 3
      },
      "colour": "red"
    }
  ],
  "links": [
    {
      "from": "a.prompt",
      "to": "z.text"
    }
  ],
  "view": {
    "zoom": 1.5
  },
  "comment": "kept"
}
"#;

    #[test]
    fn canonical_text_round_trips_byte_for_byte() {
        let g = parse_preset(SAMPLE, "sample").unwrap();
        let once = to_preset_string(&g);
        let twice = to_preset_string(&parse_preset(&once, "once").unwrap());
        assert_eq!(once, twice);
        assert_eq!(g.nodes["z"].extra["colour"], json!("red"));
        assert_eq!(g.extra["comment"], json!("kept"));
        assert_eq!(g.nodes["a"].pos, Some([10.0, -5.5]));
        assert!(once.contains("\"colour\": \"red\"") && once.contains("\"comment\": \"kept\""));
    }

    #[test]
    fn malformed_json_reports_line_and_column() {
        let text = "{\n  \"format\": \"stepstone-graph\",\n  \"version\": 1,\n  \"nodes\": [,]\n}";
        let err = parse_preset(text, "bad.json").unwrap_err();
        match &err {
            PresetError::Json { line, column, .. } => assert_eq!((*line, *column), (4, 13), "{err}"),
            other => panic!("expected a JSON error, got {other}"),
        }
        assert!(err.to_string().starts_with("bad.json:4:13: malformed JSON"), "{err}");
    }

    #[test]
    fn wrong_format_and_newer_versions_are_refused() {
        let err = parse_preset(r#"{"format": "comfy", "version": 1}"#, "x").unwrap_err();
        assert!(err.to_string().contains("\"comfy\""), "{err}");
        let err = parse_preset(r#"{"format": "stepstone-graph", "version": 9}"#, "x").unwrap_err();
        assert!(matches!(err, PresetError::TooNew { found: 9, supported: 1, .. }), "{err}");
        let err = parse_preset(r#"{"format": "stepstone-graph"}"#, "x").unwrap_err();
        assert!(err.to_string().contains("version"), "{err}");
    }

    #[test]
    fn duplicate_ids_and_bad_links_are_named() {
        let text = r#"{"format": "stepstone-graph", "version": 1,
            "nodes": [{"id": "p", "kind": "prompt"}, {"id": "p", "kind": "prompt"}]}"#;
        let err = parse_preset(text, "x").unwrap_err();
        assert!(err.to_string().contains("'p'"), "{err}");
        let text = r#"{"format": "stepstone-graph", "version": 1, "links": [{"from": "p", "to": "q.x"}]}"#;
        let err = parse_preset(text, "x").unwrap_err();
        assert!(err.to_string().contains("\"p\" is not \"node.port\""), "{err}");
    }

    fn rename_text_to_prompt(mut v: Value) -> Result<Value, String> {
        for node in v["nodes"].as_array_mut().ok_or("no nodes")? {
            if node["kind"] == "text" {
                node["kind"] = Value::from("prompt");
            }
        }
        Ok(v)
    }

    fn always_fails(_: Value) -> Result<Value, String> {
        Err("cannot".to_string())
    }

    #[test]
    fn migration_hook_runs_each_step_in_order() {
        let v1 = json!({"format": FORMAT, "version": 1, "nodes": [{"id": "t", "kind": "text"}]});
        let migrated = migrate(v1.clone(), "old", 2, &[rename_text_to_prompt]).unwrap();
        assert_eq!(migrated["version"], json!(2));
        assert_eq!(migrated["nodes"][0]["kind"], json!("prompt"));
        let err = migrate(v1.clone(), "old", 3, &[rename_text_to_prompt]).unwrap_err();
        assert!(matches!(err, PresetError::Migration { from: 2, .. }), "{err}");
        let err = migrate(v1, "old", 2, &[always_fails]).unwrap_err();
        assert!(err.to_string().contains("from version 1 failed: cannot"), "{err}");
    }

    #[test]
    fn save_is_atomic_and_loadable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.json");
        let g = parse_preset(SAMPLE, "sample").unwrap();
        save_preset(&path, &g).unwrap();
        assert_eq!(load_preset(&path).unwrap(), g);
        let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temporary file may remain");
    }
}
