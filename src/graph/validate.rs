//! Graph validation: per-node messages for everything that would stop a node from running.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use super::access::{AccessPolicy, Verdict};
use super::params::{ParamSpec, ParamType, PathRole};
use super::{Graph, KindRegistry, Link, NodeId, ResolvedParams};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// The node cannot run.
    Error,
    /// Worth knowing; the node runs.
    Warning,
}

/// One validation finding, about one node (or the whole graph when `node` is `None`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub node: Option<NodeId>,
    pub severity: Severity,
    pub text: String,
}

impl fmt::Display for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let level = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        match &self.node {
            Some(node) => write!(f, "{level}: node '{node}': {}", self.text),
            None => write!(f, "{level}: {}", self.text),
        }
    }
}

/// All findings for a graph.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub messages: Vec<Message>,
}

impl Report {
    pub fn has_errors(&self) -> bool {
        self.messages.iter().any(|m| m.severity == Severity::Error)
    }

    pub fn errors(&self) -> impl Iterator<Item = &Message> {
        self.messages.iter().filter(|m| m.severity == Severity::Error)
    }

    /// Messages about one node.
    pub fn for_node<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a Message> + 'a {
        self.messages.iter().filter(move |m| m.node.as_deref() == Some(node))
    }

    /// Whether a node has an error of its own.
    pub fn node_has_error(&self, node: &str) -> bool {
        self.for_node(node).any(|m| m.severity == Severity::Error)
    }

    fn error(&mut self, node: &str, text: impl Into<String>) {
        self.messages.push(Message { node: Some(node.to_string()), severity: Severity::Error, text: text.into() });
    }

    fn warning(&mut self, node: &str, text: impl Into<String>) {
        self.messages.push(Message { node: Some(node.to_string()), severity: Severity::Warning, text: text.into() });
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for m in &self.messages {
            writeln!(f, "{m}")?;
        }
        Ok(())
    }
}

/// The longest node id.
pub const MAX_ID_LEN: usize = 128;

/// What validation may look at beyond the graph itself.
#[derive(Clone, Debug, Default)]
pub struct ValidateOptions {
    /// Where paths resolve and what the graph may read and write ([`AccessPolicy`]); uses of files the
    /// policy refuses, or that need a permission not given, are errors.
    pub access: AccessPolicy,
    /// Whether missing model files are errors (the models folder is known).
    pub check_models: bool,
    /// Whether missing input files are errors.
    pub check_inputs: bool,
}

/// Resolves a model path parameter inside the models directory; `None` when it is absolute or climbs out
/// of it (see [`super::access`]).
pub fn resolve_model_path(models_dir: &Path, value: &str) -> Option<PathBuf> {
    super::access::confined(value).map(|rel| models_dir.join(rel))
}

/// Checks the whole graph. Unknown kinds and parameters are reported, never removed.
pub fn validate(graph: &Graph, registry: &KindRegistry, options: &ValidateOptions) -> Report {
    let mut report = Report::default();
    let incoming = incoming_links(graph);
    let no_links: Vec<&Link> = Vec::new();

    for (id, node) in &graph.nodes {
        let into = incoming.get(id.as_str()).unwrap_or(&no_links);
        if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
            report.error(id, "node ids may use only letters, digits, '_' and '-'");
        } else if id.len() > MAX_ID_LEN {
            report.error(id, format!("node ids are at most {MAX_ID_LEN} characters (this one has {})", id.len()));
        }
        let Some(kind) = registry.get(&node.kind) else {
            report.error(id, format!("unknown node kind '{}' (kept in the graph, but it cannot run)", node.kind));
            continue;
        };
        for (name, value) in &node.params {
            match kind.param(name) {
                None => {
                    report.warning(id, format!("unknown parameter '{name}' for kind '{}' (kept, but ignored)", kind.id))
                }
                Some(spec) => {
                    if let Err(e) = spec.check(value) {
                        report.error(id, format!("parameter '{name}': {e}"));
                    }
                }
            }
        }
        let resolved = ResolvedParams::resolve(kind, node);
        check_paths(&mut report, id, kind.params, &resolved, options);
        check_multiples(&mut report, id, kind.params, &resolved);

        for input in kind.inputs {
            if into.iter().any(|l| l.to.port == input.name) {
                continue;
            }
            if input.required {
                report.error(id, format!("required input '{}' ({}) is not connected", input.name, input.ty));
            } else if let Some((param, value)) = input.required_when
                && resolved.str(param) == Some(value)
            {
                report.error(
                    id,
                    format!(
                        "{param} \"{value}\" needs input '{}' ({}): connect it or change {param}",
                        input.name, input.ty
                    ),
                );
            }
        }
    }

    check_links(&mut report, graph, registry);
    check_cycles(&mut report, graph);
    report
}

fn check_paths(
    report: &mut Report,
    id: &str,
    params: &[super::ParamSpec],
    resolved: &ResolvedParams,
    options: &ValidateOptions,
) {
    for spec in params {
        let ParamType::Path { role, .. } = spec.ty else { continue };
        let Some(value) = resolved.str(spec.name) else { continue };
        if value.is_empty() {
            let what = match role {
                PathRole::Model => "no model file chosen",
                PathRole::InputFile => "no file chosen",
                PathRole::Output => "no output path given",
            };
            report.error(id, format!("parameter '{}': {what}", spec.name));
            continue;
        }
        let file = options.access.resolve(id, spec.name, role, value);
        match &file.verdict {
            Verdict::Refused(why) | Verdict::NeedsPermission(why) => {
                report.error(id, format!("parameter '{}': '{value}': {why}", spec.name));
                continue;
            }
            Verdict::Allowed => {}
        }
        match role {
            PathRole::Model if options.check_models && !file.path.exists() => report.error(
                id,
                format!(
                    "parameter '{}': model file '{value}' not found in the models directory '{}' (looked for {})",
                    spec.name,
                    options.access.models_dir.display(),
                    file.path.display()
                ),
            ),
            PathRole::InputFile if options.check_inputs && !file.path.is_file() => {
                report.error(id, format!("parameter '{}': file '{}' not found", spec.name, file.path.display()))
            }
            _ => {}
        }
    }
}

/// Integer parameters declared as multiples of a step ([`ParamSpec::multiple_of`]).
fn check_multiples(report: &mut Report, id: &str, specs: &[ParamSpec], params: &ResolvedParams) {
    for spec in specs {
        if let (Some((step, why)), Some(v)) = (spec.multiple_of, params.i64(spec.name))
            && step > 0
            && v % step != 0
        {
            let down = v.div_euclid(step) * step;
            report.error(
                id,
                format!(
                    "parameter '{}': {v} is not a multiple of {step} ({why}): use {down} or {}",
                    spec.name,
                    down + step
                ),
            );
        }
    }
}

fn check_links(report: &mut Report, graph: &Graph, registry: &KindRegistry) {
    let mut into: HashMap<&super::PortRef, usize> = HashMap::new();
    for link in &graph.links {
        *into.entry(&link.to).or_default() += 1;
        let from_node = graph.nodes.get(&link.from.node);
        let to_node = graph.nodes.get(&link.to.node);
        let Some(to_node) = to_node else {
            // Report on the source node, which does exist (if any), otherwise on the graph.
            let text = format!("link {link}: there is no node '{}'", link.to.node);
            match from_node {
                Some(_) => report.error(&link.from.node, text),
                None => report.messages.push(Message { node: None, severity: Severity::Error, text }),
            }
            continue;
        };
        let Some(from_node) = from_node else {
            report.error(&link.to.node, format!("link {link}: there is no node '{}'", link.from.node));
            continue;
        };
        let (Some(from_kind), Some(to_kind)) = (registry.get(&from_node.kind), registry.get(&to_node.kind)) else {
            continue; // unknown kinds are reported on their nodes; their links are kept as they are
        };
        let Some(out) = from_kind.output(&link.from.port) else {
            report.error(
                &link.to.node,
                format!("link {link}: node '{}' ({}) has no output '{}'", link.from.node, from_kind.id, link.from.port),
            );
            continue;
        };
        let Some(inp) = to_kind.input(&link.to.port) else {
            report.error(&link.to.node, format!("link {link}: kind '{}' has no input '{}'", to_kind.id, link.to.port));
            continue;
        };
        if out.ty != inp.ty {
            report.error(
                &link.to.node,
                format!("link {link}: type mismatch: output is {}, input '{}' takes {}", out.ty, inp.name, inp.ty),
            );
        }
    }
    // In port order, so messages come out the same every time.
    let mut crowded: Vec<(&super::PortRef, usize)> = into.into_iter().filter(|(_, count)| *count > 1).collect();
    crowded.sort();
    for (to, count) in crowded {
        report.error(&to.node, format!("input '{}' has {count} links; an input takes one", to.port));
    }
}

/// Incoming links of every node, built once (so per-node checks stay linear in nodes + links).
fn incoming_links(graph: &Graph) -> HashMap<&str, Vec<&Link>> {
    let mut into: HashMap<&str, Vec<&Link>> = HashMap::with_capacity(graph.nodes.len());
    for link in &graph.links {
        into.entry(link.to.node.as_str()).or_default().push(link);
    }
    into
}

/// Marks every node that lies on a cycle. Kosaraju's strongly connected components over node indices,
/// iterative (no recursion depth limit): a node is on a cycle when its component has more than one node
/// (a link from a node to itself is a cycle too). Linear in nodes + links.
fn check_cycles(report: &mut Report, graph: &Graph) {
    let ids: Vec<&str> = graph.nodes.keys().map(String::as_str).collect();
    let index: HashMap<&str, usize> = ids.iter().enumerate().map(|(i, id)| (*id, i)).collect();
    let n = ids.len();
    let mut forward: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut backward: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut self_loop = vec![false; n];
    for link in &graph.links {
        let (Some(&a), Some(&b)) = (index.get(link.from.node.as_str()), index.get(link.to.node.as_str())) else {
            continue;
        };
        if a == b {
            self_loop[a] = true;
        }
        forward[a].push(b);
        backward[b].push(a);
    }
    // Pass 1: finishing order of a depth-first walk along the links.
    let mut order = Vec::with_capacity(n);
    let mut visited = vec![false; n];
    for start in 0..n {
        if visited[start] {
            continue;
        }
        visited[start] = true;
        let mut stack = vec![(start, 0usize)];
        while let Some((node, next)) = stack.last_mut() {
            if let Some(&to) = forward[*node].get(*next) {
                *next += 1;
                if !visited[to] {
                    visited[to] = true;
                    stack.push((to, 0));
                }
            } else {
                order.push(*node);
                stack.pop();
            }
        }
    }
    // Pass 2: components along the reversed links, in reverse finishing order.
    let mut component = vec![usize::MAX; n];
    let mut sizes: Vec<usize> = Vec::new();
    for &start in order.iter().rev() {
        if component[start] != usize::MAX {
            continue;
        }
        let c = sizes.len();
        sizes.push(0);
        component[start] = c;
        let mut stack = vec![start];
        while let Some(node) = stack.pop() {
            sizes[c] += 1;
            for &from in &backward[node] {
                if component[from] == usize::MAX {
                    component[from] = c;
                    stack.push(from);
                }
            }
        }
    }
    for (i, id) in ids.iter().enumerate() {
        if self_loop[i] || sizes[component[i]] > 1 {
            report.error(id, "is part of a cycle: links must not lead back to the node they start from");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{KindSpec, Node, PortSpec, PortType};
    use super::*;

    /// A kind of no built-in id with its own names: the rules come from the declarations, not from ids.
    const SHAPER: KindSpec = KindSpec {
        id: "shaper",
        title: "Shaper",
        category: "Test",
        version: 1,
        description: "test kind",
        inputs: &[
            PortSpec::optional("guide", PortType::Int, "needed in mode 'guided'").required_when("style", "guided")
        ],
        outputs: &[PortSpec::output("y", PortType::Int, "out")],
        params: &[
            ParamSpec::new("style", ParamType::Choice { default: "guided", options: &["guided", "free"] }, "style"),
            ParamSpec::new("size", ParamType::Int { default: 48, min: 1, max: 1000 }, "size").multiple_of(16, "tiles"),
        ],
        is_output: true,
        pick: None,
        more: None,
    };

    fn errors_of(node: Node) -> Vec<String> {
        let mut registry = KindRegistry::empty();
        registry.register(SHAPER);
        let mut graph = Graph::new();
        graph.insert_node("s", node);
        let options =
            ValidateOptions { access: AccessPolicy::new("models", "out"), check_models: false, check_inputs: false };
        validate(&graph, &registry, &options).errors().map(|m| m.text.clone()).collect()
    }

    #[test]
    fn conditional_inputs_and_multiples_come_from_the_declarations() {
        let errors = errors_of(Node::new("shaper"));
        assert_eq!(
            errors,
            vec!["style \"guided\" needs input 'guide' (integer): connect it or change style".to_string()]
        );
        let mut free = Node::new("shaper");
        free.params.insert("style".into(), "free".into());
        free.params.insert("size".into(), 40.into());
        assert_eq!(
            errors_of(free),
            vec!["parameter 'size': 40 is not a multiple of 16 (tiles): use 32 or 48".to_string()]
        );
    }
}
