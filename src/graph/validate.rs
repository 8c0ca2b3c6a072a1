//! Graph validation: per-node messages for everything that would stop a node from running.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use super::params::{ParamType, PathRole};
use super::{Graph, KindRegistry, NodeId, ResolvedParams};

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
        self.messages.push(Message {
            node: Some(node.to_string()),
            severity: Severity::Warning,
            text: text.into(),
        });
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

/// What validation may look at beyond the graph itself.
#[derive(Clone, Debug, Default)]
pub struct ValidateOptions {
    /// Where model paths are resolved; when set, missing model files are errors.
    pub models_dir: Option<PathBuf>,
    /// Where relative input files (images) are resolved; when set, missing input files are errors.
    pub input_dir: Option<PathBuf>,
}

/// Resolves a model path parameter against the models directory (absolute paths stay as they are).
pub fn resolve_model_path(models_dir: &Path, value: &str) -> PathBuf {
    let p = Path::new(value);
    if p.is_absolute() { p.to_path_buf() } else { models_dir.join(p) }
}

/// Checks the whole graph. Unknown kinds and parameters are reported, never removed.
pub fn validate(graph: &Graph, registry: &KindRegistry, options: &ValidateOptions) -> Report {
    let mut report = Report::default();

    for (id, node) in &graph.nodes {
        if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
            report.error(id, "node ids may use only letters, digits, '_' and '-'");
        }
        let Some(kind) = registry.get(&node.kind) else {
            report.error(
                id,
                format!("unknown node kind '{}' (kept in the graph, but it cannot run)", node.kind),
            );
            continue;
        };
        for (name, value) in &node.params {
            match kind.param(name) {
                None => report.warning(
                    id,
                    format!("unknown parameter '{name}' for kind '{}' (kept, but ignored)", kind.id),
                ),
                Some(spec) => {
                    if let Err(e) = spec.check(value) {
                        report.error(id, format!("parameter '{name}': {e}"));
                    }
                }
            }
        }
        let resolved = ResolvedParams::resolve(kind, node);
        check_paths(&mut report, id, kind.params, &resolved, options);
        check_kind_rules(&mut report, graph, id, kind.id, &resolved);

        for input in kind.inputs.iter().filter(|p| p.required) {
            if !graph.links_into(id).any(|l| l.to.port == input.name) {
                report.error(id, format!("required input '{}' ({}) is not connected", input.name, input.ty));
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
        match role {
            PathRole::Model => {
                if value.is_empty() {
                    report.error(id, format!("parameter '{}': no model file chosen", spec.name));
                } else if let Some(dir) = &options.models_dir {
                    let path = resolve_model_path(dir, value);
                    if !path.exists() {
                        report.error(
                            id,
                            format!(
                                "parameter '{}': model file '{value}' not found in the models directory '{}' \
                                 (looked for {})",
                                spec.name,
                                dir.display(),
                                path.display()
                            ),
                        );
                    }
                }
            }
            PathRole::InputFile => {
                if value.is_empty() {
                    report.error(id, format!("parameter '{}': no file chosen", spec.name));
                } else if let Some(dir) = &options.input_dir {
                    let path = dir.join(value);
                    if !path.is_file() {
                        report.error(
                            id,
                            format!("parameter '{}': file '{}' not found", spec.name, path.display()),
                        );
                    }
                }
            }
            PathRole::Output => {
                if value.is_empty() {
                    report.error(id, format!("parameter '{}': no output path given", spec.name));
                }
            }
        }
    }
}

/// Rules that involve more than one parameter or port of a kind.
fn check_kind_rules(report: &mut Report, graph: &Graph, id: &str, kind: &str, params: &ResolvedParams) {
    for name in ["width", "height"] {
        if let Some(v) = params.i64(name) {
            if v % 8 != 0 {
                report.error(id, format!("parameter '{name}': {v} is not a multiple of 8 (the VAE downsamples by 8)"));
            }
        }
    }
    if kind == "candidate_selector" && params.str("mode") == Some("reward") {
        if !graph.links_into(id).any(|l| l.to.port == "reward") {
            report.error(
                id,
                "mode \"reward\" needs a reward model: connect input 'reward' or switch mode to \"manual\"",
            );
        }
    }
}

fn check_links(report: &mut Report, graph: &Graph, registry: &KindRegistry) {
    let mut into: BTreeMap<&super::PortRef, usize> = BTreeMap::new();
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
    for (to, count) in into {
        if count > 1 {
            report.error(&to.node, format!("input '{}' has {count} links; an input takes one", to.port));
        }
    }
}

fn check_cycles(report: &mut Report, graph: &Graph) {
    // Kahn's algorithm: whatever cannot be ordered lies on or behind a cycle; then keep the nodes that
    // actually sit on one (they reach themselves).
    let mut indegree: BTreeMap<&str, usize> = graph.nodes.keys().map(|k| (k.as_str(), 0)).collect();
    let edges: BTreeSet<(&str, &str)> = graph
        .links
        .iter()
        .filter(|l| graph.nodes.contains_key(&l.from.node) && graph.nodes.contains_key(&l.to.node))
        .map(|l| (l.from.node.as_str(), l.to.node.as_str()))
        .collect();
    for (_, to) in &edges {
        if let Some(d) = indegree.get_mut(to) {
            *d += 1;
        }
    }
    let mut ready: Vec<&str> = indegree.iter().filter(|(_, d)| **d == 0).map(|(n, _)| *n).collect();
    while let Some(n) = ready.pop() {
        indegree.remove(n);
        for (_, to) in edges.iter().filter(|(from, _)| *from == n) {
            if let Some(d) = indegree.get_mut(to) {
                *d -= 1;
                if *d == 0 {
                    ready.push(*to);
                }
            }
        }
    }
    for node in indegree.keys() {
        let on_cycle = edges.iter().any(|(from, to)| from == node && graph.reaches(to, node));
        if on_cycle {
            report.error(node, "is part of a cycle: links must not lead back to the node they start from");
        }
    }
}
