//! The node graph: nodes with named parameters, typed links, validation and preset files.
//!
//! This layer knows nothing of egui or burn, so presets can be read, validated and migrated anywhere.

pub mod access;
pub mod kinds;
pub mod params;
pub mod ports;
pub mod preset;
pub mod validate;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde_json::Value;

pub use access::{AccessPolicy, FileUse, Verdict, file_uses};
pub use kinds::{KindRegistry, KindSpec};
pub use params::{ParamSpec, ParamType, PathRole};
pub use ports::{PortSpec, PortType};
pub use preset::{PresetError, load_preset, parse_preset, save_preset, to_preset_string};
pub use validate::{Message, Report, Severity, ValidateOptions, validate};

/// A node identifier: unique in its graph, used in links and on the command line (`--set id.param=v`).
pub type NodeId = String;

/// One end of a link: a node and one of its ports.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortRef {
    pub node: NodeId,
    pub port: String,
}

impl PortRef {
    pub fn new(node: impl Into<String>, port: impl Into<String>) -> Self {
        PortRef { node: node.into(), port: port.into() }
    }

    /// Parses `node.port` (the port is what follows the last dot).
    pub fn parse(text: &str) -> Option<Self> {
        let (node, port) = text.rsplit_once('.')?;
        if node.is_empty() || port.is_empty() {
            return None;
        }
        Some(PortRef::new(node, port))
    }
}

impl fmt::Display for PortRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.node, self.port)
    }
}

/// A link from an output port to an input port.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Link {
    pub from: PortRef,
    pub to: PortRef,
}

impl fmt::Display for Link {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} -> {}", self.from, self.to)
    }
}

/// A node: its kind, its parameter values (missing ones take the kind's defaults) and whatever else the
/// file held for it, kept as is.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Node {
    pub kind: String,
    pub title: Option<String>,
    /// Position in the editor canvas.
    pub pos: Option<[f64; 2]>,
    pub params: BTreeMap<String, Value>,
    /// Fields of the node this version does not know, preserved on save.
    pub extra: BTreeMap<String, Value>,
}

impl Node {
    pub fn new(kind: impl Into<String>) -> Self {
        Node { kind: kind.into(), ..Node::default() }
    }

    pub fn with_param(mut self, name: &str, value: impl Into<Value>) -> Self {
        self.params.insert(name.to_string(), value.into());
        self
    }
}

/// Why a link was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LinkError {
    #[error("no node '{0}' in the graph")]
    NoSuchNode(NodeId),
    #[error("node '{node}' has unknown kind '{kind}', so its ports are not known")]
    UnknownKind { node: NodeId, kind: String },
    #[error("node '{node}' ({kind}) has no output port '{port}'")]
    NoSuchOutput { node: NodeId, kind: String, port: String },
    #[error("node '{node}' ({kind}) has no input port '{port}'")]
    NoSuchInput { node: NodeId, kind: String, port: String },
    #[error("cannot connect {from} ({from_ty}) to {to} ({to_ty}): the port types differ")]
    TypeMismatch { from: PortRef, from_ty: PortType, to: PortRef, to_ty: PortType },
    #[error("cannot connect {from} to {to}: the link would make a cycle")]
    Cycle { from: PortRef, to: PortRef },
}

/// A whole graph, as held in memory and in a preset file.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Graph {
    /// Nodes by id (sorted, so saving is deterministic).
    pub nodes: BTreeMap<NodeId, Node>,
    /// Links, sorted.
    pub links: BTreeSet<Link>,
    /// Editor view state (pan, zoom, ...); opaque to everything but the editor.
    pub view: Value,
    /// Top-level fields of the file this version does not know, preserved on save.
    pub extra: BTreeMap<String, Value>,
}

impl Graph {
    pub fn new() -> Self {
        Graph::default()
    }

    /// Adds a node under a fresh id made from its kind (`prompt`, `prompt_2`, ...) and returns the id.
    pub fn add_node(&mut self, node: Node) -> NodeId {
        let base = node.kind.clone();
        let mut id = base.clone();
        let mut n = 2;
        while self.nodes.contains_key(&id) {
            id = format!("{base}_{n}");
            n += 1;
        }
        self.nodes.insert(id.clone(), node);
        id
    }

    /// Inserts (or replaces) a node under a given id.
    pub fn insert_node(&mut self, id: impl Into<NodeId>, node: Node) {
        self.nodes.insert(id.into(), node);
    }

    /// Removes a node and every link touching it.
    pub fn remove_node(&mut self, id: &str) -> Option<Node> {
        let node = self.nodes.remove(id)?;
        self.links.retain(|l| l.from.node != id && l.to.node != id);
        Some(node)
    }

    /// The link feeding an input port, if any.
    pub fn link_into(&self, to: &PortRef) -> Option<&Link> {
        self.links.iter().find(|l| &l.to == to)
    }

    /// Links feeding any input of a node.
    pub fn links_into<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a Link> + 'a {
        self.links.iter().filter(move |l| l.to.node == node)
    }

    /// Connects an output to an input after checking both ports exist and have the same type, and that no
    /// cycle results. A link already feeding that input is replaced (an input takes one link).
    pub fn connect(&mut self, registry: &KindRegistry, from: PortRef, to: PortRef) -> Result<(), LinkError> {
        let from_ty = self.port_type(registry, &from, false)?;
        let to_ty = self.port_type(registry, &to, true)?;
        if from_ty != to_ty {
            return Err(LinkError::TypeMismatch { from, from_ty, to, to_ty });
        }
        if from.node == to.node || self.reaches(&to.node, &from.node) {
            return Err(LinkError::Cycle { from, to });
        }
        self.links.retain(|l| l.to != to);
        self.links.insert(Link { from, to });
        Ok(())
    }

    /// Removes the link feeding an input; returns whether there was one.
    pub fn disconnect(&mut self, to: &PortRef) -> bool {
        let before = self.links.len();
        self.links.retain(|l| &l.to != to);
        before != self.links.len()
    }

    fn port_type(&self, registry: &KindRegistry, port: &PortRef, input: bool) -> Result<PortType, LinkError> {
        let node = self.nodes.get(&port.node).ok_or_else(|| LinkError::NoSuchNode(port.node.clone()))?;
        let kind = registry
            .get(&node.kind)
            .ok_or_else(|| LinkError::UnknownKind { node: port.node.clone(), kind: node.kind.clone() })?;
        let spec = if input { kind.input(&port.port) } else { kind.output(&port.port) };
        match spec {
            Some(p) => Ok(p.ty),
            None if input => Err(LinkError::NoSuchInput {
                node: port.node.clone(),
                kind: node.kind.clone(),
                port: port.port.clone(),
            }),
            None => Err(LinkError::NoSuchOutput {
                node: port.node.clone(),
                kind: node.kind.clone(),
                port: port.port.clone(),
            }),
        }
    }

    /// Whether `target` is reachable from `start` along links (downstream).
    pub fn reaches(&self, start: &str, target: &str) -> bool {
        let mut stack = vec![start];
        let mut seen = BTreeSet::new();
        while let Some(n) = stack.pop() {
            if n == target {
                return true;
            }
            if seen.insert(n) {
                stack.extend(self.links.iter().filter(|l| l.from.node == n).map(|l| l.to.node.as_str()));
            }
        }
        false
    }

    /// The nodes directly upstream of `node` (deduplicated, sorted).
    pub fn upstream_of<'a>(&'a self, node: &str) -> BTreeSet<&'a str> {
        self.links.iter().filter(|l| l.to.node == node).map(|l| l.from.node.as_str()).collect()
    }

    /// `node` and every node downstream of it.
    pub fn downstream_of(&self, node: &str) -> BTreeSet<NodeId> {
        let mut out = BTreeSet::new();
        let mut stack = vec![node.to_string()];
        while let Some(n) = stack.pop() {
            if out.insert(n.clone()) {
                stack.extend(self.links.iter().filter(|l| l.from.node == n).map(|l| l.to.node.clone()));
            }
        }
        out
    }

    /// Sets a parameter after checking it against the node's kind. Unknown kinds accept anything.
    pub fn set_param(&mut self, registry: &KindRegistry, node: &str, param: &str, value: Value) -> Result<(), String> {
        let n = self.nodes.get_mut(node).ok_or_else(|| format!("no node '{node}' in the graph"))?;
        if let Some(kind) = registry.get(&n.kind) {
            let spec = kind.param(param).ok_or_else(|| {
                let known: Vec<&str> = kind.params.iter().map(|p| p.name).collect();
                format!(
                    "node '{node}' ({}) has no parameter '{param}'; its parameters are: {}",
                    kind.id,
                    known.join(", ")
                )
            })?;
            spec.check(&value).map_err(|e| format!("node '{node}' parameter '{param}': {e}"))?;
        }
        n.params.insert(param.to_string(), value);
        Ok(())
    }
}

/// Resolved parameter values of one node: stored values where valid, the kind's defaults elsewhere.
#[derive(Clone, Debug, PartialEq)]
pub struct ResolvedParams {
    pub values: BTreeMap<String, Value>,
}

impl ResolvedParams {
    /// Resolves `node`'s parameters against `kind`. Unknown parameters are left out.
    pub fn resolve(kind: &KindSpec, node: &Node) -> Self {
        let values = kind
            .params
            .iter()
            .map(|p| {
                let v = node.params.get(p.name).cloned().unwrap_or_else(|| p.default_value());
                (p.name.to_string(), v)
            })
            .collect();
        ResolvedParams { values }
    }

    pub fn get(&self, name: &str) -> Option<&Value> {
        self.values.get(name)
    }
    pub fn f64(&self, name: &str) -> Option<f64> {
        self.get(name).and_then(Value::as_f64)
    }
    pub fn i64(&self, name: &str) -> Option<i64> {
        self.get(name).and_then(Value::as_i64)
    }
    pub fn u64(&self, name: &str) -> Option<u64> {
        self.get(name).and_then(Value::as_u64)
    }
    pub fn bool(&self, name: &str) -> Option<bool> {
        self.get(name).and_then(Value::as_bool)
    }
    pub fn str(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(Value::as_str)
    }
    pub fn f64_list(&self, name: &str) -> Option<Vec<f64>> {
        self.get(name)?.as_array()?.iter().map(Value::as_f64).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pipeline() -> (KindRegistry, Graph) {
        let reg = crate::nodes::registry();
        let mut g = Graph::new();
        g.insert_node("prompt", Node::new("prompt"));
        g.insert_node("ckpt", Node::new("load_checkpoint"));
        g.insert_node("cands", Node::new("t2i_candidates"));
        g.insert_node("reward", Node::new("load_reward_model"));
        (reg, g)
    }

    #[test]
    fn connect_refuses_wrong_type_with_reason() {
        let (reg, mut g) = pipeline();
        let err = g.connect(&reg, PortRef::new("prompt", "prompt"), PortRef::new("cands", "model")).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("prompt.prompt (prompt)") && text.contains("cands.model (checkpoint)"), "{text}");
        assert!(g.links.is_empty());
        g.connect(&reg, PortRef::new("prompt", "prompt"), PortRef::new("cands", "prompt")).unwrap();
        assert_eq!(g.links.len(), 1);
    }

    #[test]
    fn connect_refuses_unknown_ports_and_cycles() {
        let (reg, mut g) = pipeline();
        let err = g.connect(&reg, PortRef::new("prompt", "text"), PortRef::new("cands", "prompt"));
        assert!(matches!(err, Err(LinkError::NoSuchOutput { .. })));
        g.insert_node("a", Node::new("video_preview"));
        let err = g.connect(&reg, PortRef::new("prompt", "prompt"), PortRef::new("a", "prompt"));
        assert!(matches!(err, Err(LinkError::NoSuchInput { .. })));

        let mut reg2 = KindRegistry::empty();
        const PASS: KindSpec = KindSpec {
            id: "pass",
            title: "Pass",
            category: "Test",
            version: 1,
            description: "passes an integer on",
            inputs: &[PortSpec::optional("x", PortType::Int, "in")],
            outputs: &[PortSpec::output("y", PortType::Int, "out")],
            params: &[],
            is_output: false,
            pick: None,
            more: None,
        };
        reg2.register(PASS);
        let mut g = Graph::new();
        g.insert_node("a", Node::new("pass"));
        g.insert_node("b", Node::new("pass"));
        g.connect(&reg2, PortRef::new("a", "y"), PortRef::new("b", "x")).unwrap();
        let err = g.connect(&reg2, PortRef::new("b", "y"), PortRef::new("a", "x")).unwrap_err();
        assert!(matches!(err, LinkError::Cycle { .. }), "{err}");
        let err = g.connect(&reg2, PortRef::new("a", "y"), PortRef::new("a", "x")).unwrap_err();
        assert!(matches!(err, LinkError::Cycle { .. }), "{err}");
    }

    #[test]
    fn connect_replaces_the_link_into_an_input() {
        let (reg, mut g) = pipeline();
        g.insert_node("prompt2", Node::new("prompt"));
        g.connect(&reg, PortRef::new("prompt", "prompt"), PortRef::new("cands", "prompt")).unwrap();
        g.connect(&reg, PortRef::new("prompt2", "prompt"), PortRef::new("cands", "prompt")).unwrap();
        assert_eq!(g.links.len(), 1);
        assert_eq!(g.link_into(&PortRef::new("cands", "prompt")).unwrap().from.node, "prompt2");
    }

    #[test]
    fn set_param_checks_names_and_ranges() {
        let (reg, mut g) = pipeline();
        g.set_param(&reg, "cands", "cfg", Value::from(5.0)).unwrap();
        let err = g.set_param(&reg, "cands", "cfg", Value::from(99.0)).unwrap_err();
        assert!(err.contains("cfg") && err.contains("99"), "{err}");
        let err = g.set_param(&reg, "cands", "guidance", Value::from(5.0)).unwrap_err();
        assert!(err.contains("guidance") && err.contains("cfg"), "{err}");
        let err = g.set_param(&reg, "nope", "cfg", Value::from(5.0)).unwrap_err();
        assert!(err.contains("nope"), "{err}");
    }

    #[test]
    fn add_node_makes_unique_ids_and_remove_drops_links() {
        let (reg, mut g) = pipeline();
        let id = g.add_node(Node::new("prompt"));
        assert_eq!(id, "prompt_2");
        g.connect(&reg, PortRef::new(&id, "prompt"), PortRef::new("cands", "prompt")).unwrap();
        g.remove_node(&id);
        assert!(g.links.is_empty());
    }
}
