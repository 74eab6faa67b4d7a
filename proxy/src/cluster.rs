//! The static part of the directory: which nodes exist, where their proxies listen, which DCs span which nodes.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use m3ipc_core::{DcId, NodeId};
use serde::{Deserialize, Serialize};

/// One node of the cluster as the directory knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// The node's id (unique in the cluster).
    pub id: u16,
    /// Where the node's proxy accepts peer links.
    pub proxy: SocketAddr,
    /// Where the node's HTTP API listens.
    pub api: SocketAddr,
}

/// One DC as the directory knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DcInfo {
    /// The DC's number.
    pub id: u16,
    /// A human name.
    pub name: String,
    /// The nodes the DC spans.
    pub nodes: Vec<u16>,
}

/// Nodes and DCs: everything about the cluster that does not change while it runs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterMap {
    /// All nodes, by id.
    #[serde(rename = "node", default)]
    pub nodes: Vec<NodeInfo>,
    /// All DCs, by id.
    #[serde(rename = "dc", default)]
    pub dcs: Vec<DcInfo>,
}

/// Why a cluster map is unusable.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ClusterError {
    /// Two nodes share an id.
    #[error("node {0} is listed twice")]
    DuplicateNode(u16),
    /// Two DCs share an id.
    #[error("DC {0} is listed twice")]
    DuplicateDc(u16),
    /// A DC names a node that the cluster does not have.
    #[error("DC {dc} names node {node}, which is not in the cluster")]
    UnknownNode {
        /// The DC.
        dc: u16,
        /// The missing node.
        node: u16,
    },
}

impl ClusterMap {
    /// Checks ids are unique and DCs name only known nodes.
    pub fn validate(&self) -> Result<(), ClusterError> {
        let mut seen = BTreeMap::new();
        for n in &self.nodes {
            if seen.insert(n.id, ()).is_some() {
                return Err(ClusterError::DuplicateNode(n.id));
            }
        }
        let mut dcs = BTreeMap::new();
        for dc in &self.dcs {
            if dcs.insert(dc.id, ()).is_some() {
                return Err(ClusterError::DuplicateDc(dc.id));
            }
            if let Some(&node) = dc.nodes.iter().find(|n| !seen.contains_key(n)) {
                return Err(ClusterError::UnknownNode { dc: dc.id, node });
            }
        }
        Ok(())
    }

    /// The node with this id.
    pub fn node(&self, id: NodeId) -> Option<&NodeInfo> {
        self.nodes.iter().find(|n| n.id == id.0)
    }

    /// The DC with this id.
    pub fn dc(&self, id: DcId) -> Option<&DcInfo> {
        self.dcs.iter().find(|d| d.id == id.0)
    }

    /// The DC with this name or number.
    pub fn dc_by_name(&self, name_or_id: &str) -> Option<&DcInfo> {
        self.dcs
            .iter()
            .find(|d| d.name == name_or_id || d.id.to_string() == name_or_id)
    }

    /// True if `dc` spans `node`.
    pub fn dc_has_node(&self, dc: DcId, node: NodeId) -> bool {
        self.dc(dc).is_some_and(|d| d.nodes.contains(&node.0))
    }

    /// The nodes `dc` spans (empty for an unknown DC).
    pub fn dc_nodes(&self, dc: DcId) -> impl Iterator<Item = NodeId> + '_ {
        self.dc(dc)
            .into_iter()
            .flat_map(|d| d.nodes.iter().map(|&n| NodeId(n)))
    }
}

/// Where the static cluster description comes from: a file today, a distributed store (etcd) later.
pub trait Directory: Send + Sync {
    /// The current nodes and DCs.
    fn cluster(&self) -> ClusterMap;
}

/// A directory read once from a cluster file (TOML), the embedded default.
#[derive(Clone, Debug)]
pub struct StaticDirectory(pub ClusterMap);

impl Directory for StaticDirectory {
    fn cluster(&self) -> ClusterMap {
        self.0.clone()
    }
}
