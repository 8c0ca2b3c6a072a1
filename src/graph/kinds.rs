//! Node kinds: their ports and parameters, and the registry a graph is checked against. The built-in kinds
//! are declared with their evaluators in [`crate::nodes`] (`crate::nodes::registry()`).
//!
//! A kind's `version` is part of every cache key made for its nodes: bump it when the kind's evaluation
//! changes so that results cached by an older build are not reused.

use super::params::{ParamSpec, ParamType, PathRole};
use super::ports::PortSpec;

/// Declaration of a node kind.
#[derive(Clone, Copy, Debug)]
pub struct KindSpec {
    /// Stable identifier used in presets (`"kind": "t2i_candidates"`).
    pub id: &'static str,
    /// Title shown on the node.
    pub title: &'static str,
    /// Menu group in the editor.
    pub category: &'static str,
    pub version: u32,
    /// One line, shown as a tooltip.
    pub description: &'static str,
    pub inputs: &'static [PortSpec],
    pub outputs: &'static [PortSpec],
    pub params: &'static [ParamSpec],
    /// Output nodes are what a run evaluates when no target is named (previews, exports).
    pub is_output: bool,
    /// Where a click on one of the node's result images picks that image by hand (the candidate selector).
    pub pick: Option<PickParams>,
    /// The integer parameter a "more" button raises by one for another batch of results (the candidates'
    /// `batches`): earlier results stay as they are, so a pick among them stays valid.
    pub more: Option<&'static str>,
}

/// The parameters a hand pick writes: `choice` set to `by_hand` with the image's number in `index`, or back to
/// `automatic`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PickParams {
    pub choice: &'static str,
    pub by_hand: &'static str,
    pub automatic: &'static str,
    pub index: &'static str,
}

impl KindSpec {
    pub fn input(&self, name: &str) -> Option<&PortSpec> {
        self.inputs.iter().find(|p| p.name == name)
    }
    pub fn output(&self, name: &str) -> Option<&PortSpec> {
        self.outputs.iter().find(|p| p.name == name)
    }
    pub fn param(&self, name: &str) -> Option<&ParamSpec> {
        self.params.iter().find(|p| p.name == name)
    }
    /// The parameter naming the file this kind writes, if it writes one (`--out` sets it).
    pub fn output_path(&self) -> Option<&'static str> {
        self.params.iter().find(|p| matches!(p.ty, ParamType::Path { role: PathRole::Output, .. })).map(|p| p.name)
    }
}

/// The set of node kinds a graph may use.
#[derive(Clone, Debug, Default)]
pub struct KindRegistry {
    kinds: Vec<KindSpec>,
}

impl KindRegistry {
    /// An empty registry (tests register their own kinds).
    pub fn empty() -> Self {
        KindRegistry { kinds: Vec::new() }
    }

    /// Adds a kind, replacing one with the same id.
    pub fn register(&mut self, spec: KindSpec) {
        self.kinds.retain(|k| k.id != spec.id);
        self.kinds.push(spec);
    }

    pub fn get(&self, id: &str) -> Option<&KindSpec> {
        self.kinds.iter().find(|k| k.id == id)
    }

    pub fn iter(&self) -> impl Iterator<Item = &KindSpec> {
        self.kinds.iter()
    }
}
