//! The editor's copy of a graph: an egui-snarl canvas whose nodes carry the graph's nodes whole.
//!
//! The conversion is lossless both ways: `Document::from_graph(g).to_graph() == g` for any graph, including
//! nodes of unknown kinds, unknown parameters, links to ports a kind does not have, links whose nodes are
//! missing, node fields and top-level fields this version does not know, and positions that an `f32` canvas
//! cannot hold exactly. What the file held is what a save writes, unless the artist changed it.

use std::collections::{BTreeMap, BTreeSet};

use egui::Pos2;
use egui_snarl::{InPinId, OutPinId, Snarl};
use serde_json::Value;

use crate::graph::{Graph, KindRegistry, KindSpec, Link, LinkError, Node, NodeId, PortRef, PortSpec, PortType};

/// Left edge and top edge of an automatic layout, and the distance between its columns and rows.
const LAYOUT_ORIGIN: [f32; 2] = [40.0, 40.0];
const LAYOUT_STEP: [f32; 2] = [300.0, 200.0];

/// One input or output pin of an editor node.
#[derive(Clone, Debug, PartialEq)]
pub struct Slot {
    pub name: String,
    /// `None` for a port the node's kind does not declare (a link in the file names it; validation reports
    /// it); such pins accept no new links.
    pub ty: Option<PortType>,
    pub required: bool,
    pub description: String,
}

impl Slot {
    fn from_spec(spec: &PortSpec) -> Slot {
        Slot {
            name: spec.name.to_string(),
            ty: Some(spec.ty),
            required: spec.required,
            description: spec.description.into(),
        }
    }

    fn unknown(name: &str) -> Slot {
        Slot {
            name: name.to_string(),
            ty: None,
            required: false,
            description: "not a port of this node's kind (kept from the file)".to_string(),
        }
    }
}

/// A node on the canvas: the graph node as stored, plus its pins.
#[derive(Clone, Debug)]
pub struct EditorNode {
    pub id: NodeId,
    pub node: Node,
    pub inputs: Vec<Slot>,
    pub outputs: Vec<Slot>,
    /// Where the node was placed when the document was made. While it stays there, the stored position
    /// (`node.pos`, possibly `None`) is what a save writes.
    placed_at: Pos2,
}

/// The graph being edited.
pub struct Document {
    pub snarl: Snarl<EditorNode>,
    /// Editor view state from the file (kept as loaded).
    pub view: Value,
    /// Top-level fields of the file this version does not know.
    pub extra: BTreeMap<String, Value>,
    /// Links naming a node that is not in the graph: kept so that a save loses nothing (validation
    /// reports them).
    pub dangling: Vec<Link>,
}

impl Default for Document {
    fn default() -> Self {
        Document { snarl: Snarl::new(), view: Value::Null, extra: BTreeMap::new(), dangling: Vec::new() }
    }
}

/// How far from the origin a node from a file is drawn (canvas units); positions beyond are clamped.
pub const CANVAS_REACH: f64 = 100_000.0;

impl Document {
    /// The editor's copy of `graph`. Nodes without a stored position are laid out in columns by their
    /// depth along the links.
    pub fn from_graph(graph: &Graph, registry: &KindRegistry) -> Document {
        let mut doc = Document { view: graph.view.clone(), extra: graph.extra.clone(), ..Document::default() };
        let layout = auto_layout(graph);
        let mut index = BTreeMap::new();
        for (id, node) in &graph.nodes {
            let (inputs, outputs) = match registry.get(&node.kind) {
                Some(kind) => slots_of(kind),
                None => (Vec::new(), Vec::new()),
            };
            // A position from the file is drawn only when finite, and within the canvas's reach (a preset may
            // hold any number: 1e308 overflows egui's layout); the stored value is kept as it is.
            let placed_at = match node.pos {
                Some([x, y]) if x.is_finite() && y.is_finite() => {
                    Pos2::new(x.clamp(-CANVAS_REACH, CANVAS_REACH) as f32, y.clamp(-CANVAS_REACH, CANVAS_REACH) as f32)
                }
                _ => layout.get(id.as_str()).copied().unwrap_or(Pos2::new(LAYOUT_ORIGIN[0], LAYOUT_ORIGIN[1])),
            };
            let editor_node = EditorNode { id: id.clone(), node: node.clone(), inputs, outputs, placed_at };
            index.insert(id.clone(), doc.snarl.insert_node(placed_at, editor_node));
        }
        for link in &graph.links {
            let (Some(&from), Some(&to)) = (index.get(&link.from.node), index.get(&link.to.node)) else {
                doc.dangling.push(link.clone());
                continue;
            };
            let output = pin_index(&mut doc.snarl[from].outputs, &link.from.port);
            let input = pin_index(&mut doc.snarl[to].inputs, &link.to.port);
            doc.snarl.connect(OutPinId { node: from, output }, InPinId { node: to, input });
        }
        doc
    }

    /// The graph as edited.
    pub fn to_graph(&self) -> Graph {
        let mut graph = graph_of(&self.snarl);
        graph.view = self.view.clone();
        graph.extra = self.extra.clone();
        graph.links.extend(self.dangling.iter().cloned());
        graph
    }

    /// Sets a parameter of the node with graph id `id` (false when there is no such node). The value is
    /// stored as given: validation says what is wrong with it.
    pub fn set_param(&mut self, id: &str, name: &str, value: Value) -> bool {
        let Some(node) = self.find(id) else { return false };
        self.snarl[node].node.params.insert(name.to_string(), value);
        true
    }

    /// The canvas node with graph id `id`.
    pub fn find(&self, id: &str) -> Option<egui_snarl::NodeId> {
        self.snarl.nodes_ids_data().find(|(_, n)| n.value.id == id).map(|(i, _)| i)
    }
}

/// The nodes and links on a canvas (without the document's view, extra fields and dangling links).
pub fn graph_of(snarl: &Snarl<EditorNode>) -> Graph {
    let mut graph = Graph::default();
    for (_, pos, editor_node) in snarl.nodes_pos_ids() {
        let mut node = editor_node.node.clone();
        if pos != editor_node.placed_at {
            node.pos = Some([f64::from(pos.x), f64::from(pos.y)]);
        }
        graph.nodes.insert(editor_node.id.clone(), node);
    }
    for (from, to) in snarl.wires() {
        let (Some(a), Some(b)) = (snarl.get_node(from.node), snarl.get_node(to.node)) else { continue };
        let (Some(out), Some(inp)) = (a.outputs.get(from.output), b.inputs.get(to.input)) else { continue };
        graph
            .links
            .insert(Link { from: PortRef::new(a.id.clone(), &out.name), to: PortRef::new(b.id.clone(), &inp.name) });
    }
    graph
}

/// A node id made from `base` that is not in `taken` (`prompt`, `prompt_2`, ...).
fn fresh_id(taken: &BTreeSet<NodeId>, base: &str) -> NodeId {
    let mut id = base.to_string();
    let mut n = 2;
    while taken.contains(&id) {
        id = format!("{base}_{n}");
        n += 1;
    }
    id
}

/// The part of the canvas's graph made of `ids`: those nodes (at their canvas positions) and the links
/// between them (what Copy puts on the clipboard).
pub fn subgraph(snarl: &Snarl<EditorNode>, ids: &[NodeId]) -> Graph {
    let mut graph = Graph::default();
    for (_, pos, editor_node) in snarl.nodes_pos_ids() {
        if ids.contains(&editor_node.id) {
            let mut node = editor_node.node.clone();
            node.pos = Some([f64::from(pos.x), f64::from(pos.y)]);
            graph.nodes.insert(editor_node.id.clone(), node);
        }
    }
    graph.links =
        graph_of(snarl).links.into_iter().filter(|l| ids.contains(&l.from.node) && ids.contains(&l.to.node)).collect();
    graph
}

/// Inserts a copy of `graph`'s nodes (parameters and titles kept, fresh ids where theirs are taken) and
/// the links between them, moved so that their top-left node is at `origin`. Returns the new ids.
pub fn paste(snarl: &mut Snarl<EditorNode>, registry: &KindRegistry, graph: &Graph, origin: Pos2) -> Vec<NodeId> {
    let layout = auto_layout(graph);
    let place = |id: &str, node: &Node| match node.pos {
        Some([x, y]) if x.is_finite() && y.is_finite() => {
            Pos2::new(x.clamp(-CANVAS_REACH, CANVAS_REACH) as f32, y.clamp(-CANVAS_REACH, CANVAS_REACH) as f32)
        }
        _ => layout.get(id).copied().unwrap_or(Pos2::new(LAYOUT_ORIGIN[0], LAYOUT_ORIGIN[1])),
    };
    let corner = graph.nodes.iter().map(|(id, n)| place(id, n)).reduce(|a, b| a.min(b)).unwrap_or(origin);
    let mut taken: BTreeSet<NodeId> = snarl.nodes().map(|n| n.id.clone()).collect();
    let mut index = BTreeMap::new();
    let mut added = Vec::new();
    for (id, node) in &graph.nodes {
        // `prompt_2` pasted is `prompt_3`, not `prompt_2_2`.
        let base = match id.rsplit_once('_') {
            Some((stem, n)) if !stem.is_empty() && !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => stem,
            _ => id.as_str(),
        };
        let new_id = fresh_id(&taken, base);
        taken.insert(new_id.clone());
        let pos = origin + (place(id, node) - corner);
        let (inputs, outputs) = registry.get(&node.kind).map(slots_of).unwrap_or_default();
        let mut node = node.clone();
        node.pos = Some([f64::from(pos.x), f64::from(pos.y)]);
        let editor_node = EditorNode { id: new_id.clone(), node, inputs, outputs, placed_at: pos };
        index.insert(id.clone(), snarl.insert_node(pos, editor_node));
        added.push(new_id);
    }
    for link in &graph.links {
        let (Some(&from), Some(&to)) = (index.get(&link.from.node), index.get(&link.to.node)) else { continue };
        let output = pin_index(&mut snarl[from].outputs, &link.from.port);
        let input = pin_index(&mut snarl[to].inputs, &link.to.port);
        snarl.connect(OutPinId { node: from, output }, InPinId { node: to, input });
    }
    added
}

/// Removes the nodes with these ids and their links.
pub fn remove(snarl: &mut Snarl<EditorNode>, ids: &[NodeId]) -> usize {
    let doomed: Vec<egui_snarl::NodeId> =
        snarl.nodes_ids_data().filter(|(_, n)| ids.contains(&n.value.id)).map(|(i, _)| i).collect();
    for node in &doomed {
        snarl.remove_node(*node);
    }
    doomed.len()
}

/// Adds a node of `kind` at `pos` under a fresh id made from the kind (`prompt`, `prompt_2`, ...), with
/// every parameter at its default written out (as presets hold them).
pub fn add_node(snarl: &mut Snarl<EditorNode>, kind: &KindSpec, pos: Pos2) -> egui_snarl::NodeId {
    let taken: BTreeSet<NodeId> = snarl.nodes().map(|n| n.id.clone()).collect();
    let id = fresh_id(&taken, kind.id);
    let mut node = Node::new(kind.id);
    for p in kind.params {
        node.params.insert(p.name.to_string(), p.default_value());
    }
    node.pos = Some([f64::from(pos.x), f64::from(pos.y)]);
    let (inputs, outputs) = slots_of(kind);
    snarl.insert_node(pos, EditorNode { id, node, inputs, outputs, placed_at: pos })
}

/// Connects an output pin to an input pin if the graph allows it (both ports declared, same type, no
/// cycle); a link already feeding the input is replaced. The error says why not.
pub fn connect(
    snarl: &mut Snarl<EditorNode>,
    registry: &KindRegistry,
    from: OutPinId,
    to: InPinId,
) -> Result<(), LinkError> {
    let (from_ref, to_ref) = match (snarl.get_node(from.node), snarl.get_node(to.node)) {
        (Some(a), Some(b)) => match (a.outputs.get(from.output), b.inputs.get(to.input)) {
            (Some(o), Some(i)) => (PortRef::new(a.id.clone(), &o.name), PortRef::new(b.id.clone(), &i.name)),
            _ => return Err(LinkError::NoSuchNode(format!("{} / {}", a.id, b.id))),
        },
        _ => return Err(LinkError::NoSuchNode("(removed node)".to_string())),
    };
    graph_of(snarl).connect(registry, from_ref, to_ref)?;
    snarl.drop_inputs(to);
    snarl.connect(from, to);
    Ok(())
}

/// The pins of a kind.
fn slots_of(kind: &KindSpec) -> (Vec<Slot>, Vec<Slot>) {
    (kind.inputs.iter().map(Slot::from_spec).collect(), kind.outputs.iter().map(Slot::from_spec).collect())
}

/// The index of the pin named `port`, adding an undeclared pin for it when the kind has none.
fn pin_index(slots: &mut Vec<Slot>, port: &str) -> usize {
    match slots.iter().position(|s| s.name == port) {
        Some(i) => i,
        None => {
            slots.push(Slot::unknown(port));
            slots.len() - 1
        }
    }
}

/// Positions for a graph's nodes: a column per depth (the longest chain of links leading to the node), a
/// row per node within its column in id order.
fn auto_layout(graph: &Graph) -> BTreeMap<&str, Pos2> {
    let mut depth: BTreeMap<&str, usize> = graph.nodes.keys().map(|id| (id.as_str(), 0)).collect();
    // Longest-path depths by relaxation; at most one pass per node (links that form a cycle stop there).
    for _ in 0..graph.nodes.len() {
        let mut changed = false;
        for link in &graph.links {
            let (Some(&d_from), Some(&d_to)) = (depth.get(link.from.node.as_str()), depth.get(link.to.node.as_str()))
            else {
                continue;
            };
            if d_to < d_from + 1 {
                depth.insert(link.to.node.as_str(), d_from + 1);
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    let mut rows: BTreeMap<usize, usize> = BTreeMap::new();
    let mut out = BTreeMap::new();
    for (id, d) in depth {
        let row = rows.entry(d).or_insert(0);
        out.insert(
            id,
            Pos2::new(LAYOUT_ORIGIN[0] + LAYOUT_STEP[0] * d as f32, LAYOUT_ORIGIN[1] + LAYOUT_STEP[1] * *row as f32),
        );
        *row += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::parse_preset;

    fn registry() -> KindRegistry {
        crate::nodes::registry()
    }

    #[test]
    fn shipped_presets_round_trip_exactly() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("graphs");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "json") {
                let graph = crate::graph::load_preset(&path).unwrap();
                let doc = Document::from_graph(&graph, &registry());
                assert_eq!(doc.to_graph(), graph, "{}", path.display());
                assert_eq!(doc.snarl.wires().count(), graph.links.len(), "{}", path.display());
                seen += 1;
            }
        }
        assert!(seen >= 3);
    }

    const ODD: &str = r#"{
      "format": "stepstone-graph", "version": 1,
      "nodes": [
        {"id": "p", "kind": "prompt", "pos": [0.1, 1e-7], "params": {"text": "a cat", "mystery": 3}, "colour": "red"},
        {"id": "future", "kind": "hologram_node", "params": {"x": 1}},
        {"id": "cand", "kind": "t2i_candidates", "params": {}}
      ],
      "links": [
        {"from": "p.prompt", "to": "cand.prompt"},
        {"from": "future.beam", "to": "cand.checkpoint"},
        {"from": "p.prompt", "to": "future.text"},
        {"from": "p.prompt", "to": "cand.no_such_port"},
        {"from": "ghost.out", "to": "cand.prompt2"}
      ],
      "view": {"pan": [3.0, 4.0], "zoom": 0.5},
      "theme": "dark"
    }"#;

    #[test]
    fn what_this_version_does_not_know_survives() {
        let graph = parse_preset(ODD, "odd").unwrap();
        let doc = Document::from_graph(&graph, &registry());
        assert_eq!(doc.to_graph(), graph);
        assert_eq!(crate::graph::to_preset_string(&doc.to_graph()), crate::graph::to_preset_string(&graph));
        assert_eq!(doc.dangling.len(), 1);
        // The unknown kind gets pins for the ports its links name; they carry no type.
        let future = &doc.snarl[doc.find("future").unwrap()];
        assert_eq!(future.outputs.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), ["beam"]);
        assert_eq!(future.inputs[0].ty, None);
        let cand = &doc.snarl[doc.find("cand").unwrap()];
        assert!(cand.inputs.iter().any(|s| s.name == "no_such_port" && s.ty.is_none()));
    }

    #[test]
    fn nodes_without_positions_are_laid_out_by_depth_and_saved_without_them_until_moved() {
        let text = ODD.replace(r#""pos": [0.1, 1e-7], "#, "");
        let graph = parse_preset(&text, "odd").unwrap();
        let mut doc = Document::from_graph(&graph, &registry());
        let pos = |doc: &Document, id: &str| doc.snarl.get_node_info(doc.find(id).unwrap()).unwrap().pos;
        // p feeds future and cand, future feeds cand: depths 0, 1, 2.
        assert!(pos(&doc, "p").x < pos(&doc, "future").x && pos(&doc, "future").x < pos(&doc, "cand").x);
        assert_eq!(doc.to_graph(), graph);
        let cand = doc.find("cand").unwrap();
        doc.snarl.get_node_info_mut(cand).unwrap().pos = Pos2::new(500.0, 250.0);
        assert_eq!(doc.to_graph().nodes["cand"].pos, Some([500.0, 250.0]));
        assert_eq!(doc.to_graph().nodes["p"].pos, None);
    }

    #[test]
    fn connecting_checks_types_and_cycles_and_replaces_the_old_link() {
        let graph = crate::graph::load_preset(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("graphs/i4vgen_demo.json"),
        )
        .unwrap();
        let reg = registry();
        let mut doc = Document::from_graph(&graph, &reg);
        let node = |doc: &Document, id: &str| doc.find(id).unwrap();
        let out = |doc: &Document, id: &str, port: &str| OutPinId {
            node: node(doc, id),
            output: doc.snarl[node(doc, id)].outputs.iter().position(|s| s.name == port).unwrap(),
        };
        let inp = |doc: &Document, id: &str, port: &str| InPinId {
            node: node(doc, id),
            input: doc.snarl[node(doc, id)].inputs.iter().position(|s| s.name == port).unwrap(),
        };
        // prompt -> checkpoint input: types differ.
        let (from, to) = (out(&doc, "prompt", "prompt"), inp(&doc, "candidates", "model"));
        let e = connect(&mut doc.snarl, &reg, from, to).unwrap_err();
        assert!(matches!(e, LinkError::TypeMismatch { .. }), "{e}");
        assert_eq!(doc.to_graph(), graph, "a refused link changes nothing");
        // A second regenerator fed by the first cannot feed the first back.
        let regen2 = add_node(&mut doc.snarl, reg.get("regenerator").unwrap(), Pos2::new(0.0, 600.0));
        assert_eq!(doc.snarl[regen2].id, "regenerator_2");
        let (from, to) = (out(&doc, "regenerator", "video"), inp(&doc, "regenerator_2", "video"));
        connect(&mut doc.snarl, &reg, from, to).unwrap();
        let (from, to) = (out(&doc, "regenerator_2", "video"), inp(&doc, "regenerator", "video"));
        let e = connect(&mut doc.snarl, &reg, from, to).unwrap_err();
        assert!(matches!(e, LinkError::Cycle { .. }), "{e}");
        // A new prompt node replaces the link into candidates.prompt.
        let second = add_node(&mut doc.snarl, reg.get("prompt").unwrap(), Pos2::new(0.0, 800.0));
        assert_eq!(doc.snarl[second].id, "prompt_2");
        let (from, to) = (out(&doc, "prompt_2", "prompt"), inp(&doc, "candidates", "prompt"));
        connect(&mut doc.snarl, &reg, from, to).unwrap();
        let g = doc.to_graph();
        assert_eq!(g.link_into(&PortRef::new("candidates", "prompt")).unwrap().from.node, "prompt_2");
        assert_eq!(g.links.len(), graph.links.len() + 1, "one link added (regenerator -> regenerator_2), one replaced");
        assert_eq!(g.nodes["prompt_2"].params.len(), reg.get("prompt").unwrap().params.len());
    }
}
