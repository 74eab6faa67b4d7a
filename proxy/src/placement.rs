//! The dynamic part of the directory: which node (and, on this node, which VM port) holds each endpoint, and
//! the messages nodes send each other when they bind, unbind or move endpoints.

use m3ipc_core::{DcId, Endpoint, NodeId};
use serde::{Deserialize, Serialize};

/// A VM port of this node's proxy.
pub type PortId = u32;

/// Where one endpoint of one DC lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Place {
    /// The node that holds it.
    pub node: NodeId,
    /// Generation of the binding: the newest binding of an endpoint wins.
    pub gen: u64,
    /// The VM port, when the node is this one.
    pub port: Option<PortId>,
}

/// An endpoint binding as nodes announce it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Binding {
    /// DC number.
    pub dc: u16,
    /// Endpoint number.
    pub ep: u32,
    /// Generation (microseconds since the UNIX epoch at binding time, or more).
    pub gen: u64,
}

impl Binding {
    /// The (DC, endpoint) key.
    pub fn key(&self) -> (DcId, Endpoint) {
        (DcId(self.dc), Endpoint(self.ep))
    }
}

/// What one node tells the others about the endpoints it holds. The sender is the node at the other end
/// of the peer link: a node only speaks for its own endpoints.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DirMsg {
    /// All endpoints the sender holds (sent when a link comes up); replaces what was known of the sender.
    Snapshot(Vec<Binding>),
    /// The sender now holds this endpoint.
    Bind(Binding),
    /// The sender no longer holds this endpoint; `moved_to` names its new node after a migration.
    Unbind {
        /// The binding that ends.
        binding: Binding,
        /// The endpoint's new node, if it moved.
        moved_to: Option<u16>,
    },
    /// The sender, which holds this endpoint, lets node `to` take it over with a binding of generation
    /// `binding.gen` or newer (a migration's first step): without it, no node accepts another node's binding of
    /// an endpoint that the sender holds.
    Handover {
        /// The endpoint and the generation the new place will bind it with.
        binding: Binding,
        /// The new place.
        to: u16,
    },
    /// The instance with this MAC address left the sender (stopped or moved): forget where it was learned, so
    /// that frames for it flood the DC again and find its new place.
    MacGone {
        /// DC number.
        dc: u16,
        /// The MAC address.
        mac: [u8; 6],
    },
}

/// Where an endpoint lives, for the node API.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlacementView {
    /// DC number.
    pub dc: u16,
    /// Endpoint number.
    pub ep: u32,
    /// Node holding it.
    pub node: u16,
    /// Binding generation.
    pub gen: u64,
    /// The local port's name, when it is on this node.
    pub port: Option<String>,
}
