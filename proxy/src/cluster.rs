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
    /// How fast the DC's instances may send on each node (`limit = { frames_per_s = ..., ... }`); absent or 0
    /// fields take the defaults of [`DcLimit`].
    #[serde(default)]
    pub limit: DcLimit,
    /// What the DC's machines together may use on each node where machines are confined
    /// (`quota = { memory_mib = 2048, cpu_percent = 200 }`); absent fields: no quota.
    #[serde(default)]
    pub quota: DcQuota,
}

/// A DC's quota on each node it spans: the sum of its machines' limits is held to it when an
/// instance starts, and the kernel holds the machines to it (a cgroup of the DC above theirs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DcQuota {
    /// Memory of all the DC's machines on the node, MiB.
    #[serde(default)]
    pub memory_mib: Option<u64>,
    /// CPU of all the DC's machines on the node, percent of one core.
    #[serde(default)]
    pub cpu_percent: Option<u32>,
}

/// Default frames per second a DC's instances may send on one node.
pub const DEFAULT_FRAMES_PER_S: u64 = 1_000_000;
/// Default bytes per second a DC's instances may send on one node (4 GB/s).
pub const DEFAULT_BYTES_PER_S: u64 = 4_000_000_000;
/// Default burst: this fraction (1/10, i.e. 100 ms worth of the rate) of a second's allowance can be sent at once.
pub const DEFAULT_BURST_DIVISOR: u64 = 10;

/// The rate limit of one DC on each node it spans: a frame bucket and a byte bucket, both charged by every frame
/// a VM port of the DC sends into the switch. 0 in any field means its default.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DcLimit {
    /// Frames per second (default [`DEFAULT_FRAMES_PER_S`]).
    #[serde(default)]
    pub frames_per_s: u64,
    /// Bytes per second (default [`DEFAULT_BYTES_PER_S`]).
    #[serde(default)]
    pub bytes_per_s: u64,
    /// Frames that may be sent at once after a quiet spell (default a tenth of `frames_per_s`).
    #[serde(default)]
    pub burst_frames: u64,
    /// Bytes that may be sent at once after a quiet spell (default a tenth of `bytes_per_s`, at least one
    /// largest frame).
    #[serde(default)]
    pub burst_bytes: u64,
}

impl DcLimit {
    /// The limit with every 0 replaced by its default: (frames/s, bytes/s, burst frames, burst bytes).
    pub fn effective(&self) -> (u64, u64, u64, u64) {
        let or = |v: u64, d: u64| if v == 0 { d } else { v };
        let fps = or(self.frames_per_s, DEFAULT_FRAMES_PER_S);
        let bps = or(self.bytes_per_s, DEFAULT_BYTES_PER_S);
        let bf = or(self.burst_frames, (fps / DEFAULT_BURST_DIVISOR).max(1));
        let bb = or(self.burst_bytes, bps / DEFAULT_BURST_DIVISOR)
            .max(crate::port::MAX_ETH_FRAME as u64);
        (fps, bps, bf, bb)
    }
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
