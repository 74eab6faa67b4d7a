//! The switch: the proxy's sans-IO core. It takes frames from VM ports and peer links, and directory messages
//! from peers, and says where frames go ([`Out`]). It never does I/O, never reads a clock (the caller passes
//! `now`, a monotonic [`Instant`], with every frame) and never panics on input, so that the whole data path is
//! tested on plain byte vectors and a simulated clock.

mod lan;
mod m3;
mod pending;

use std::collections::{BTreeMap, HashMap, HashSet};

use bytes::Bytes;
use m3ipc_core::wire::ethernet::EthernetHeader;
use m3ipc_core::wire::{FrameRepr, ETHERTYPE_M3IPC};
use m3ipc_core::{DcId, Endpoint, ErrorCode, Instant, NodeId};
use serde::{Deserialize, Serialize};

use crate::cluster::ClusterMap;
use crate::counters::{DcCounters, Drop, PeerCounters, PortCounters};
use crate::placement::{Binding, DirMsg, Place, PlacementView, PortId};
pub use lan::{MacConfig, MAC_AGEING, MAX_MACS_PER_DC};
use pending::Pending;
pub use pending::MAX_PENDING;

/// Hops a frame may still make between proxies when it leaves its first node (one redirect after a move).
pub const FIRST_HOPS: u8 = 2;
/// The MAC address the proxy writes as the source of Error frames answering a broadcast.
pub const PROXY_MAC: [u8; 6] = [0x02, 0x64, 0x76, 0x73, 0x00, 0x00];

/// What the node assigned to one VM port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortSpec {
    /// A name for logs and counters (the instance's name).
    pub name: String,
    /// The instance's DC.
    pub dc: DcId,
    /// The endpoints the instance may send as.
    pub endpoints: Vec<Endpoint>,
    /// The instance's fabric MAC; when set, LAN frames with another source MAC are dropped.
    pub mac: Option<[u8; 6]>,
    /// Binding generation of the endpoints.
    pub gen: u64,
    /// When the port's endpoints are announced to the other nodes.
    pub announce: Announce,
}

/// When a port's endpoints become known to the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Announce {
    /// Right away.
    Now,
    /// When the instance sends its first frame (it is up): used when an instance takes over moved endpoints.
    OnFirstFrame,
}

/// Where a frame came from or goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Via {
    /// A VM port of this node.
    Port(PortId),
    /// The peer link to another node.
    Peer(NodeId),
}

/// What the switch asks its caller to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Out {
    /// Deliver an Ethernet frame to a VM port.
    Port(PortId, Bytes),
    /// Send an Ethernet frame of `dc` over the link to `node`, which may forward it `hops` more times.
    Peer {
        /// The peer.
        node: NodeId,
        /// The frame's DC.
        dc: DcId,
        /// Remaining forwards.
        hops: u8,
        /// The Ethernet frame.
        frame: Bytes,
    },
    /// Send a directory message to one peer (`Some`) or every peer whose link is up (`None`).
    Dir(Option<NodeId>, DirMsg),
}

/// Why the switch refused a port or an endpoint change.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SwitchError {
    /// The DC is not in the cluster map.
    #[error("{0} is not in the cluster")]
    UnknownDc(DcId),
    /// The DC does not span this node.
    #[error("{dc} does not span {node}")]
    DcNotHere {
        /// The DC.
        dc: DcId,
        /// This node.
        node: NodeId,
    },
    /// Another local port already holds the endpoint.
    #[error("{ep} of {dc} is already bound to port {port}")]
    EndpointTaken {
        /// The DC.
        dc: DcId,
        /// The endpoint.
        ep: Endpoint,
        /// The holder's name.
        port: String,
    },
    /// No port with this id.
    #[error("no VM port {0}")]
    NoPort(PortId),
}

struct Port {
    spec: PortSpec,
    announced: bool,
    counters: PortCounters,
}

/// Counters of the whole switch, for the node API.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Stats {
    /// Per VM port, by name.
    pub ports: BTreeMap<String, PortCounters>,
    /// Per DC, by number.
    pub dcs: BTreeMap<u16, DcCounters>,
    /// Per peer, by node id.
    pub peers: BTreeMap<u16, PeerCounters>,
}

/// The switch of one node.
pub struct Switch {
    node: NodeId,
    cluster: ClusterMap,
    ports: HashMap<PortId, Port>,
    next_port: PortId,
    places: HashMap<(DcId, Endpoint), Place>,
    peers_up: HashSet<NodeId>,
    pending: HashMap<Via, Pending>,
    macs: lan::MacTables,
    dcs: BTreeMap<u16, DcCounters>,
    peers: BTreeMap<u16, PeerCounters>,
}

impl Switch {
    /// A switch for `node` in `cluster`, with no ports and no peers up, and default MAC tables
    /// ([`MacConfig::default`]: 300 s ageing, [`MAX_MACS_PER_DC`] addresses per DC).
    pub fn new(node: NodeId, cluster: ClusterMap) -> Switch {
        Switch::with_macs(node, cluster, MacConfig::default())
    }

    /// A switch for `node` in `cluster` whose per-DC MAC tables learn and forget as `macs` says.
    pub fn with_macs(node: NodeId, cluster: ClusterMap, macs: MacConfig) -> Switch {
        let peers = cluster
            .nodes
            .iter()
            .filter(|n| n.id != node.0)
            .map(|n| (n.id, PeerCounters::default()))
            .collect();
        Switch {
            node,
            cluster,
            ports: HashMap::new(),
            next_port: 1,
            places: HashMap::new(),
            peers_up: HashSet::new(),
            pending: HashMap::new(),
            macs: lan::MacTables::new(macs),
            dcs: BTreeMap::new(),
            peers,
        }
    }

    /// This node's id.
    pub fn node(&self) -> NodeId {
        self.node
    }

    /// The cluster map the switch routes by.
    pub fn cluster(&self) -> &ClusterMap {
        &self.cluster
    }

    // ---- ports and endpoints ----

    /// Adds a VM port holding `spec.endpoints` of `spec.dc`; announces them (now or on the port's first frame).
    pub fn add_port(&mut self, spec: PortSpec, out: &mut Vec<Out>) -> Result<PortId, SwitchError> {
        if self.cluster.dc(spec.dc).is_none() {
            return Err(SwitchError::UnknownDc(spec.dc));
        }
        if !self.cluster.dc_has_node(spec.dc, self.node) {
            return Err(SwitchError::DcNotHere {
                dc: spec.dc,
                node: self.node,
            });
        }
        for &ep in &spec.endpoints {
            if let Some(Place { port: Some(p), .. }) = self.places.get(&(spec.dc, ep)) {
                let port = self
                    .ports
                    .get(p)
                    .map(|p| p.spec.name.clone())
                    .unwrap_or_default();
                return Err(SwitchError::EndpointTaken {
                    dc: spec.dc,
                    ep,
                    port,
                });
            }
        }
        let id = self.next_port;
        self.next_port += 1;
        for &ep in &spec.endpoints {
            self.places.insert(
                (spec.dc, ep),
                Place {
                    node: self.node,
                    gen: spec.gen,
                    port: Some(id),
                },
            );
        }
        if let Some(mac) = spec.mac {
            self.macs.assign(spec.dc, mac, Via::Port(id));
        }
        let announced = spec.announce == Announce::Now;
        self.ports.insert(
            id,
            Port {
                spec,
                announced: false,
                counters: PortCounters::default(),
            },
        );
        if announced {
            self.announce_port(id, out);
        }
        Ok(id)
    }

    /// Tells every peer about the port's endpoints (once).
    pub fn announce_port(&mut self, id: PortId, out: &mut Vec<Out>) {
        let Some(port) = self.ports.get_mut(&id) else {
            return;
        };
        if port.announced {
            return;
        }
        port.announced = true;
        for &ep in &port.spec.endpoints {
            let b = Binding {
                dc: port.spec.dc.0,
                ep: ep.0,
                gen: port.spec.gen,
            };
            out.push(Out::Dir(None, DirMsg::Bind(b)));
        }
    }

    /// Removes a port: its endpoints are unbound here and everywhere, and calls waiting on it fail with
    /// DeadDestination.
    pub fn remove_port(&mut self, id: PortId, out: &mut Vec<Out>) -> Result<(), SwitchError> {
        let port = self.ports.remove(&id).ok_or(SwitchError::NoPort(id))?;
        for &ep in &port.spec.endpoints {
            let key = (port.spec.dc, ep);
            if self.places.get(&key).is_some_and(|p| p.port == Some(id)) {
                self.places.remove(&key);
                let binding = Binding {
                    dc: key.0 .0,
                    ep: ep.0,
                    gen: port.spec.gen,
                };
                out.push(Out::Dir(
                    None,
                    DirMsg::Unbind {
                        binding,
                        moved_to: None,
                    },
                ));
            }
        }
        self.macs.forget(Via::Port(id));
        if let Some(mac) = port.spec.mac {
            out.push(Out::Dir(
                None,
                DirMsg::MacGone {
                    dc: port.spec.dc.0,
                    mac,
                },
            ));
        }
        self.fail_pending(Via::Port(id), ErrorCode::DeadDestination, out);
        Ok(())
    }

    /// Calls in progress towards the port (a migration waits for zero before it moves the endpoints).
    pub fn port_pending(&self, id: PortId) -> usize {
        self.pending.get(&Via::Port(id)).map_or(0, Pending::len)
    }

    /// Moves the port's endpoints to `to` (which bound them with generation `gen`): from now on frames for them
    /// go there, this node forwards late ones, and calls still in progress here are refused with Migrated.
    pub fn move_port(
        &mut self,
        id: PortId,
        to: NodeId,
        gen: u64,
        out: &mut Vec<Out>,
    ) -> Result<(), SwitchError> {
        let port = self.ports.get(&id).ok_or(SwitchError::NoPort(id))?;
        let (dc, eps, old_gen) = (port.spec.dc, port.spec.endpoints.clone(), port.spec.gen);
        for ep in eps {
            let key = (dc, ep);
            if self.places.get(&key).is_some_and(|p| p.port == Some(id)) {
                self.places.insert(
                    key,
                    Place {
                        node: to,
                        gen,
                        port: None,
                    },
                );
                let binding = Binding {
                    dc: dc.0,
                    ep: ep.0,
                    gen: old_gen,
                };
                out.push(Out::Dir(
                    None,
                    DirMsg::Unbind {
                        binding,
                        moved_to: Some(to.0),
                    },
                ));
            }
        }
        self.fail_pending(Via::Port(id), ErrorCode::Migrated, out);
        Ok(())
    }

    /// Where `ep` of `dc` lives, as far as this node knows.
    pub fn lookup(&self, dc: DcId, ep: Endpoint) -> Option<Place> {
        self.places.get(&(dc, ep)).copied()
    }

    /// Every known placement, sorted by DC and endpoint.
    pub fn placements(&self) -> Vec<PlacementView> {
        let mut v: Vec<_> = self
            .places
            .iter()
            .map(|(&(dc, ep), p)| PlacementView {
                dc: dc.0,
                ep: ep.0,
                node: p.node.0,
                gen: p.gen,
                port: p
                    .port
                    .and_then(|id| self.ports.get(&id))
                    .map(|p| p.spec.name.clone()),
            })
            .collect();
        v.sort_by_key(|p| (p.dc, p.ep));
        v
    }

    // ---- peers and the directory ----

    /// True while the link to `node` is up.
    pub fn peer_is_up(&self, node: NodeId) -> bool {
        self.peers_up.contains(&node)
    }

    /// The link to `node` came up: send it what this node holds.
    pub fn peer_up(&mut self, node: NodeId, out: &mut Vec<Out>) {
        self.peers_up.insert(node);
        let c = self.peers.entry(node.0).or_default();
        c.up = true;
        c.connects += 1;
        let mine = self
            .ports
            .values()
            .filter(|p| p.announced)
            .flat_map(|p| p.spec.endpoints.iter().map(move |&ep| (p.spec.dc, ep)))
            .filter_map(|key| {
                let place = self.places.get(&key)?;
                (place.node == self.node).then_some(Binding {
                    dc: key.0 .0,
                    ep: key.1 .0,
                    gen: place.gen,
                })
            })
            .collect();
        out.push(Out::Dir(Some(node), DirMsg::Snapshot(mine)));
    }

    /// The link to `node` went down: its endpoints stay known (calls to them fail with NodeUnreachable), the MAC
    /// addresses learned behind it are forgotten, and calls in progress through it fail now.
    pub fn peer_down(&mut self, node: NodeId, out: &mut Vec<Out>) {
        self.peers_up.remove(&node);
        self.peers.entry(node.0).or_default().up = false;
        self.macs.forget(Via::Peer(node));
        self.fail_pending(Via::Peer(node), ErrorCode::NodeUnreachable, out);
    }

    /// Applies a directory message from the peer `from`.
    pub fn handle_dir(&mut self, from: NodeId, msg: DirMsg) {
        if from == self.node {
            return;
        }
        match msg {
            DirMsg::Snapshot(list) => {
                let keep: HashSet<_> = list.iter().map(Binding::key).collect();
                self.places
                    .retain(|k, p| p.node != from || keep.contains(k));
                for b in list {
                    self.bind_remote(from, b);
                }
            }
            DirMsg::Bind(b) => self.bind_remote(from, b),
            DirMsg::MacGone { dc, mac } => self.macs.forget_mac(DcId(dc), &mac, Via::Peer(from)),
            DirMsg::Unbind { binding, moved_to } => {
                let key = binding.key();
                let Some(place) = self.places.get(&key) else {
                    return;
                };
                if place.node != from || place.gen > binding.gen {
                    return;
                }
                match moved_to {
                    Some(to) if to != from.0 => {
                        let place = Place {
                            node: NodeId(to),
                            gen: binding.gen,
                            port: None,
                        };
                        self.places.insert(key, place);
                    }
                    _ => {
                        self.places.remove(&key);
                    }
                }
            }
        }
    }

    /// Restores what was known of other nodes' endpoints before a restart (their next snapshot corrects it),
    /// so that calls to a node that is still down fail with NodeUnreachable rather than UnknownDestination.
    pub fn preload(&mut self, known: &[PlacementView]) {
        let me = self.node.0;
        for p in known.iter().filter(|p| p.node != me) {
            self.bind_remote(
                NodeId(p.node),
                Binding {
                    dc: p.dc,
                    ep: p.ep,
                    gen: p.gen,
                },
            );
        }
    }

    fn bind_remote(&mut self, from: NodeId, b: Binding) {
        if !self.cluster.dc_has_node(DcId(b.dc), from) {
            return;
        }
        let key = b.key();
        if self
            .places
            .get(&key)
            .is_some_and(|p| p.gen > b.gen || (p.gen == b.gen && p.node == self.node))
        {
            return;
        }
        self.places.insert(
            key,
            Place {
                node: from,
                gen: b.gen,
                port: None,
            },
        );
    }

    // ---- counters ----

    /// Counts a frame that the caller could not hand to a port or a peer.
    pub fn count_drop(&mut self, to: Via, why: Drop) {
        match to {
            Via::Port(id) => {
                if let Some(p) = self.ports.get_mut(&id) {
                    p.counters.drops.add(why);
                }
            }
            Via::Peer(n) => self.peers.entry(n.0).or_default().drops.add(why),
        }
    }

    /// Counts one socket write of `frames` frames (`bytes` in all) to a peer.
    pub fn count_peer_write(&mut self, node: NodeId, frames: u64, bytes: u64) {
        let c = self.peers.entry(node.0).or_default();
        c.tx.frames += frames;
        c.tx.bytes += bytes;
        c.writes += 1;
    }

    /// All counters.
    pub fn stats(&self) -> Stats {
        let mut dcs = self.dcs.clone();
        for (dc, macs) in self.macs.counters() {
            dcs.entry(dc.0).or_default().macs = *macs;
        }
        Stats {
            ports: self
                .ports
                .values()
                .map(|p| (p.spec.name.clone(), p.counters.clone()))
                .collect(),
            dcs,
            peers: self.peers.clone(),
        }
    }

    /// How the MAC tables learn and forget.
    pub fn mac_config(&self) -> MacConfig {
        self.macs.config()
    }

    /// The counters of one port.
    pub fn port_counters(&self, id: PortId) -> Option<&PortCounters> {
        self.ports.get(&id).map(|p| &p.counters)
    }

    // ---- the data path ----

    /// A frame from VM port `id`, arrived at `now`. Everything a guest writes is hostile input: checked, then
    /// routed.
    pub fn port_frame(&mut self, now: Instant, id: PortId, frame: Bytes, out: &mut Vec<Out>) {
        let Some(port) = self.ports.get_mut(&id) else {
            return;
        };
        port.counters.rx.add(frame.len());
        let dc = port.spec.dc;
        if !port.announced {
            self.announce_port(id, out);
        }
        let Ok((eth, payload)) = EthernetHeader::parse(&frame) else {
            return self.drop_from(Via::Port(id), dc, Drop::Malformed);
        };
        if eth.src[0] & 1 == 1 {
            return self.drop_from(Via::Port(id), dc, Drop::Malformed);
        }
        if eth.ethertype != ETHERTYPE_M3IPC {
            let port = &self.ports[&id];
            if port.spec.mac.is_some_and(|m| m != eth.src) {
                return self.drop_from(Via::Port(id), dc, Drop::Spoofed);
            }
            return self.switch_lan(Via::Port(id), dc, eth, frame, now, out);
        }
        let Ok(repr) = FrameRepr::parse(payload) else {
            return self.drop_from(Via::Port(id), dc, Drop::Malformed);
        };
        let spec = &self.ports[&id].spec;
        if repr.dc != spec.dc || !spec.endpoints.contains(&repr.src) {
            return self.drop_from(Via::Port(id), dc, Drop::Spoofed);
        }
        self.route_m3(Via::Port(id), eth, &repr, frame.clone(), FIRST_HOPS, out);
    }

    /// A frame of `dc` from the peer `node`, arrived at `now`, which allows `hops` more forwards.
    pub fn peer_frame(
        &mut self,
        now: Instant,
        node: NodeId,
        dc: DcId,
        hops: u8,
        frame: Bytes,
        out: &mut Vec<Out>,
    ) {
        self.peers.entry(node.0).or_default().rx.add(frame.len());
        if !self.cluster.dc_has_node(dc, node) || !self.cluster.dc_has_node(dc, self.node) {
            return self.drop_from(Via::Peer(node), dc, Drop::WrongDc);
        }
        let Ok((eth, payload)) = EthernetHeader::parse(&frame) else {
            return self.drop_from(Via::Peer(node), dc, Drop::Malformed);
        };
        if eth.ethertype != ETHERTYPE_M3IPC {
            return self.switch_lan(Via::Peer(node), dc, eth, frame, now, out);
        }
        let Ok(repr) = FrameRepr::parse(payload) else {
            return self.drop_from(Via::Peer(node), dc, Drop::Malformed);
        };
        if repr.dc != dc {
            return self.drop_from(Via::Peer(node), dc, Drop::WrongDc);
        }
        self.route_m3(Via::Peer(node), eth, &repr, frame.clone(), hops, out);
    }

    fn drop_from(&mut self, from: Via, dc: DcId, why: Drop) {
        self.count_drop(from, why);
        self.dcs.entry(dc.0).or_default().drops.add(why);
    }
}

#[cfg(test)]
mod tests;
