//! Identifiers: distributed containers, endpoints and nodes.

use core::fmt;

/// A distributed container (DC): an isolated domain with its own endpoint space.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DcId(pub u16);

/// An M3-IPC address inside a DC, bound to one task of one instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Endpoint(pub u32);

/// A node of the cluster (one host running `dvs node`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(pub u16);

impl Endpoint {
    /// `receive` from any source.
    pub const ANY: Endpoint = Endpoint(u32::MAX);
    /// No endpoint (an unset field).
    pub const NONE: Endpoint = Endpoint(u32::MAX - 1);

    /// True for a real endpoint number (neither `ANY` nor `NONE`).
    pub const fn is_addressable(self) -> bool {
        self.0 < u32::MAX - 1
    }
}

impl fmt::Display for DcId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DC {}", self.0)
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Endpoint::ANY => f.write_str("endpoint ANY"),
            Endpoint::NONE => f.write_str("endpoint NONE"),
            Endpoint(n) => write!(f, "endpoint {n}"),
        }
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "node {}", self.0)
    }
}
