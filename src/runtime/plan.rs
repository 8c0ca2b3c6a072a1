//! What a run would do, node by node: the [`Plan`] the engine makes before it evaluates anything, which the
//! worker's events carry to the front ends.

use std::collections::BTreeMap;

use super::cache::CacheKey;
use crate::graph::NodeId;

/// What a run would do with one node.
#[derive(Clone, Debug, PartialEq)]
pub enum NodeStatus {
    /// Its result is cached; it will not run.
    Cached,
    /// It will run.
    Stale,
    /// It cannot run: it has errors, or a node it depends on has.
    Blocked { reason: String },
    /// Upstream of a cached node and not cached itself: not needed for this run.
    Unneeded,
}

/// One node of a plan.
#[derive(Clone, Debug)]
pub struct PlannedNode {
    pub id: NodeId,
    pub key: Option<CacheKey>,
    pub status: NodeStatus,
    /// For each connected input port: the upstream node and its output port.
    pub inputs: BTreeMap<String, (NodeId, String)>,
    /// Whether the run pulls on this node (a target, or an input of a node that runs or is blocked).
    pub pulled: bool,
    /// Whether a block is the node's own error (not only an upstream node's).
    pub own_error: bool,
}

/// What a run of some targets would do, node by node, in evaluation order.
#[derive(Clone, Debug)]
pub struct Plan {
    pub targets: Vec<NodeId>,
    pub nodes: Vec<PlannedNode>,
}

impl Plan {
    fn ids_with(&self, pred: impl Fn(&NodeStatus) -> bool) -> Vec<NodeId> {
        self.nodes.iter().filter(|n| pred(&n.status)).map(|n| n.id.clone()).collect()
    }
    /// Nodes that will run, in order.
    pub fn stale(&self) -> Vec<NodeId> {
        self.ids_with(|s| *s == NodeStatus::Stale)
    }
    /// Nodes whose cached result will be used.
    pub fn cached(&self) -> Vec<NodeId> {
        self.ids_with(|s| *s == NodeStatus::Cached)
    }
    /// Nodes that cannot run.
    pub fn blocked(&self) -> Vec<NodeId> {
        self.ids_with(|s| matches!(s, NodeStatus::Blocked { .. }))
    }
    pub fn status(&self, node: &str) -> Option<&NodeStatus> {
        self.nodes.iter().find(|n| n.id == node).map(|n| &n.status)
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PlanError {
    #[error("no node '{0}' in the graph")]
    NoSuchTarget(NodeId),
    #[error("the graph has no output node (Video Preview or Export): add one, or name the nodes to run")]
    NoOutputs,
}
