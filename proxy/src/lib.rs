//! # dvs-proxy — the node's switch
//!
//! VM ports on one side, peer links to the other nodes' proxies on the other. The proxy routes M3-IPC frames by
//! (DC, endpoint) through the directory, switches each DC's virtual LAN, and enforces the boundary: a VM port
//! may only send as the DC and endpoints the node assigned to it. [`switch::Switch`] is the sans-IO core;
//! [`port`] (and [`vhost`], the vhost-user VM port) and [`peer`] move bytes; [`Proxy`] ties them together on tokio.
#![warn(missing_docs)]

pub mod cluster;
pub mod counters;
pub mod peer;
pub mod placement;
pub mod port;
mod runtime;
pub mod switch;
pub mod tls;
pub mod vhost;

pub use cluster::{ClusterMap, DcInfo, Directory, NodeInfo, StaticDirectory};
pub use placement::{DirMsg, PortId};
pub use runtime::{Proxy, ProxyConfig, ProxyError};
pub use switch::{Announce, MacConfig, Out, PortSpec, Switch, SwitchError, Via};
