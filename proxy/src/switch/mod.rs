//! The switch: the proxy's sans-IO core. It takes frames from VM ports and peer links, and directory messages
//! from peers, and says where frames go ([`Out`]). It never does I/O, never reads a clock (the caller passes
//! `now`, a monotonic [`Instant`], with every frame) and never panics on input, so that the whole data path is
//! tested on plain byte vectors and a simulated clock.

mod lan;
mod m3;
mod pending;
mod rate;
mod timing;

use std::collections::{BTreeMap, HashMap, HashSet};

use bytes::Bytes;
use m3ipc_core::wire::ethernet::EthernetHeader;
use m3ipc_core::wire::{FrameRepr, ETHERTYPE_M3IPC};
use m3ipc_core::{DcId, Endpoint, ErrorCode, Instant, NodeId};
use serde::{Deserialize, Serialize};

use crate::cluster::ClusterMap;
use crate::counters::{
    DcCounters, Drop, LinkCounters, LinkRefusal, PeerCounters, PortCounters, SwitchTiming,
};
use crate::placement::{Binding, DirMsg, Place, PlacementView, PortId};
pub use lan::{MacConfig, MAC_AGEING, MAX_MACS_PER_DC};
use pending::Pending;
pub use pending::MAX_PENDING;

/// Hops a frame may still make between proxies when it leaves its first node (one redirect after a move).
pub const FIRST_HOPS: u8 = 2;
/// The MAC address the proxy writes as the source of Error frames answering a broadcast.
pub const PROXY_MAC: [u8; 6] = [0x02, 0x64, 0x76, 0x73, 0x00, 0x00];
/// How long after an endpoint left a node that node may still send frames about it: answers to calls that were
/// in progress there (Migrated, DeadDestination) and frames it forwards to the endpoint's new place.
pub const LEFT_GRACE: std::time::Duration = std::time::Duration::from_secs(10);
/// At most this many recently-left endpoints, handover grants and refused claims are kept (bounded memory
/// whatever peers send).
pub const MAX_TRACKED: usize = 4096;

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
    /// Peer links refused at the handshake.
    #[serde(default)]
    pub links: LinkCounters,
    /// How long frames stay in the switch (timing hooks).
    #[serde(default)]
    pub timing: SwitchTiming,
}

/// The owner `from` of an endpoint lets node `to` bind it with a generation of at least `gen`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Grant {
    from: NodeId,
    to: NodeId,
    gen: u64,
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
    links: LinkCounters,
    /// Endpoints that left a node lately: (DC, endpoint) → (the node, when).
    left: HashMap<(DcId, Endpoint), (NodeId, Instant)>,
    /// Handovers the owners of endpoints announced.
    grants: HashMap<(DcId, Endpoint), Grant>,
    /// Bindings refused for want of a grant, kept in case the owner's handover arrives after them (the two come
    /// over different links): (DC, endpoint) → (claimant, generation).
    claims: HashMap<(DcId, Endpoint), (NodeId, u64)>,
    /// Nodes the directory says are dead (their lease lapsed): another node may bind their endpoints.
    dead: HashSet<NodeId>,
    timing: timing::Timing,
    /// Per DC (by number), the token buckets its VM ports' frames are charged to (made at a DC's first frame).
    rates: HashMap<u16, rate::DcBuckets>,
    /// Per (peer, DC), the buckets the peer's frames of the DC are charged to: a peer is held to the DC's
    /// limit (times [`rate::PEER_HEADROOM`]) as this node holds its own VMs, so a node that does not limit its
    /// VMs (or is not a dvs node) cannot flood this one.
    peer_rates: HashMap<(u16, u16), rate::DcBuckets>,
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
            links: LinkCounters::default(),
            left: HashMap::new(),
            grants: HashMap::new(),
            claims: HashMap::new(),
            timing: timing::Timing::default(),
            rates: HashMap::new(),
            peer_rates: HashMap::new(),
            dead: HashSet::new(),
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

    /// Adds a VM port holding `spec.endpoints` of `spec.dc` at `now`; announces them (now or on the port's first
    /// frame).
    pub fn add_port(
        &mut self,
        now: Instant,
        spec: PortSpec,
        out: &mut Vec<Out>,
    ) -> Result<PortId, SwitchError> {
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
            let old = self.places.insert(
                (spec.dc, ep),
                Place {
                    node: self.node,
                    gen: spec.gen,
                    port: Some(id),
                },
            );
            if let Some(old) = old.filter(|p| p.node != self.node) {
                // Taking over from another node, which forwards late frames here for a while.
                self.note_left(now, (spec.dc, ep), old.node);
            }
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
            self.grants.remove(&key);
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

    /// Lets node `to` take over the port's endpoints with a binding of generation `gen` or newer (the first step of
    /// a migration: the new place then binds them, and every node accepts that binding because the owner said
    /// so). Without a grant no node accepts another node's binding of an endpoint this node holds.
    pub fn grant_move(
        &mut self,
        id: PortId,
        to: NodeId,
        gen: u64,
        out: &mut Vec<Out>,
    ) -> Result<(), SwitchError> {
        let port = self.ports.get(&id).ok_or(SwitchError::NoPort(id))?;
        let (dc, eps) = (port.spec.dc, port.spec.endpoints.clone());
        if !self.cluster.dc_has_node(dc, to) {
            return Err(SwitchError::DcNotHere { dc, node: to });
        }
        for ep in eps {
            let key = (dc, ep);
            if self.places.get(&key).is_none_or(|p| p.port != Some(id)) {
                continue;
            }
            let grant = Grant {
                from: self.node,
                to,
                gen,
            };
            self.grants.insert(key, grant);
            let binding = Binding {
                dc: dc.0,
                ep: ep.0,
                gen,
            };
            out.push(Out::Dir(None, DirMsg::Handover { binding, to: to.0 }));
        }
        Ok(())
    }

    /// The handover grant this node knows for `ep` of `dc`: (holder, new place, generation).
    pub fn grant(&self, dc: DcId, ep: Endpoint) -> Option<(NodeId, NodeId, u64)> {
        self.grants.get(&(dc, ep)).map(|g| (g.from, g.to, g.gen))
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
        let mut grants: Vec<_> = self
            .grants
            .iter()
            .filter(|(_, g)| g.from == self.node)
            .map(|(&(dc, ep), g)| DirMsg::Handover {
                binding: Binding {
                    dc: dc.0,
                    ep: ep.0,
                    gen: g.gen,
                },
                to: g.to.0,
            })
            .collect();
        grants.sort_by_key(|m| match m {
            DirMsg::Handover { binding, .. } => (binding.dc, binding.ep),
            _ => (0, 0),
        });
        out.extend(grants.into_iter().map(|m| Out::Dir(Some(node), m)));
    }

    /// The link to `node` went down: its endpoints stay known (calls to them fail with NodeUnreachable), the MAC
    /// addresses learned behind it are forgotten, and calls in progress through it fail now.
    pub fn peer_down(&mut self, node: NodeId, out: &mut Vec<Out>) {
        self.peers_up.remove(&node);
        // A node that left the cluster has no counters any more (its session may end after it left).
        if let Some(c) = self.peers.get_mut(&node.0) {
            c.up = false;
        }
        self.timing.forget(node);
        self.macs.forget(Via::Peer(node));
        self.fail_pending(Via::Peer(node), ErrorCode::NodeUnreachable, out);
    }

    /// Marks `node` dead (its lease lapsed in the directory) or alive. A dead node is down (its calls in
    /// progress fail with NodeUnreachable) and its endpoints may be bound by the node the directory gave them
    /// to — at once for bindings that came before this news (held as claims).
    pub fn set_node_dead(&mut self, now: Instant, node: NodeId, dead: bool, out: &mut Vec<Out>) {
        if !dead {
            self.dead.remove(&node);
            return;
        }
        if !self.dead.insert(node) {
            return;
        }
        self.peer_down(node, out);
        let waiting: Vec<((DcId, Endpoint), (NodeId, u64))> = self
            .claims
            .iter()
            .filter(|(k, _)| self.places.get(k).is_some_and(|p| p.node == node))
            .map(|(k, v)| (*k, *v))
            .collect();
        for ((dc, ep), (from, gen)) in waiting {
            self.claims.remove(&(dc, ep));
            let b = Binding {
                dc: dc.0,
                ep: ep.0,
                gen,
            };
            if self.cluster.dc_has_node(dc, from) {
                self.apply_bind(now, from, b);
            }
        }
    }

    /// Routes by `cluster` from now on (a live change): a node that left is down (its calls in progress fail
    /// with NodeUnreachable) and its placements are forgotten, as are placements in DCs that are gone or no
    /// longer span their node; a node that joined gets counters. Ports stay: the daemon does not delete a DC
    /// that its instances use.
    pub fn set_cluster(&mut self, cluster: ClusterMap, out: &mut Vec<Out>) {
        let gone: Vec<NodeId> = self
            .cluster
            .nodes
            .iter()
            .map(|n| NodeId(n.id))
            .filter(|&n| n != self.node && cluster.node(n).is_none())
            .collect();
        self.cluster = cluster;
        for node in gone {
            self.peer_down(node, out);
            self.peers.remove(&node.0);
        }
        for n in &self.cluster.nodes {
            if n.id != self.node.0 {
                self.peers.entry(n.id).or_default();
            }
        }
        let cluster = &self.cluster;
        self.places
            .retain(|&(dc, _), p| p.port.is_some() || cluster.dc_has_node(dc, p.node));
    }

    /// Applies a directory message from the peer `from`, received at `now`. A peer speaks only for itself:
    ///
    /// - it may bind an endpoint of a DC that spans it if nobody holds the endpoint, if it holds it already (a
    ///   newer generation: a restart), or if the holder granted it the endpoint ([`DirMsg::Handover`], at that
    ///   generation or newer). A binding of an endpoint another node holds is refused and counted (`dir_refused`)
    ///   however new its generation: generations order a node's own bindings, they do not move endpoints
    ///   between nodes. (A refused binding is remembered, bounded, in case the holder's grant arrives after it.)
    /// - it may unbind, hand over or move away only endpoints it holds;
    /// - a snapshot replaces only what it held.
    pub fn handle_dir(&mut self, now: Instant, from: NodeId, msg: DirMsg) {
        if from == self.node || self.cluster.node(from).is_none() {
            return;
        }
        let refused = match msg {
            DirMsg::Snapshot(list) => {
                let keep: HashSet<_> = list.iter().map(Binding::key).collect();
                let gone: Vec<_> = self
                    .places
                    .iter()
                    .filter(|(k, p)| p.node == from && !keep.contains(k))
                    .map(|(k, _)| *k)
                    .collect();
                for key in gone {
                    self.places.remove(&key);
                    self.note_left(now, key, from);
                }
                let mut refused = 0;
                for b in list {
                    refused += u64::from(!self.bind_remote(now, from, b));
                }
                refused
            }
            DirMsg::Bind(b) => u64::from(!self.bind_remote(now, from, b)),
            DirMsg::MacGone { dc, mac } => {
                self.macs.forget_mac(DcId(dc), &mac, Via::Peer(from));
                0
            }
            DirMsg::Handover { binding, to } => {
                u64::from(!self.handover(now, from, binding, NodeId(to)))
            }
            DirMsg::Unbind { binding, moved_to } => {
                let key = binding.key();
                match self.places.get(&key) {
                    None => 0,
                    // Not the holder's to give up (after a move, the old holder's Unbind comes late): ignored.
                    Some(place) if place.node != from => 0,
                    Some(place) if place.gen > binding.gen => 0,
                    Some(_) => {
                        self.grants.remove(&key);
                        self.note_left(now, key, from);
                        match moved_to.map(NodeId) {
                            Some(to) if to != from && self.cluster.dc_has_node(key.0, to) => {
                                // The holder's own handover. A newer binding the newcomer sent first counts.
                                let gen = match self.claims.remove(&key) {
                                    Some((n, g)) if n == to => g.max(binding.gen),
                                    _ => binding.gen,
                                };
                                let place = Place {
                                    node: to,
                                    gen,
                                    port: None,
                                };
                                self.places.insert(key, place);
                            }
                            _ => {
                                self.places.remove(&key);
                            }
                        }
                        0
                    }
                }
            }
        };
        if refused > 0 {
            self.peers.entry(from.0).or_default().dir_refused += refused;
        }
    }

    /// A grant from `from`: accepted when `from` holds the endpoint (or nobody is known to), for a node the DC
    /// spans. A newcomer's binding that came first is applied now.
    fn handover(&mut self, now: Instant, from: NodeId, b: Binding, to: NodeId) -> bool {
        let key = b.key();
        if to == from || !self.cluster.dc_has_node(key.0, to) {
            return false;
        }
        if self.places.get(&key).is_some_and(|p| p.node != from) {
            return false;
        }
        if self.grants.len() >= MAX_TRACKED && !self.grants.contains_key(&key) {
            return true;
        }
        self.grants.insert(
            key,
            Grant {
                from,
                to,
                gen: b.gen,
            },
        );
        if let Some((n, gen)) = self.claims.get(&key).copied() {
            if n == to && gen >= b.gen {
                self.apply_bind(now, to, Binding { gen, ..b });
            }
        }
        true
    }

    /// Restores what was known of other nodes' endpoints before a restart (their next snapshot corrects it),
    /// so that calls to a node that is still down fail with NodeUnreachable rather than UnknownDestination.
    /// These come from this node's own file, not from a peer: they fill only endpoints nobody is known to hold.
    pub fn preload(&mut self, known: &[PlacementView]) {
        let me = self.node.0;
        for p in known.iter().filter(|p| p.node != me) {
            let key = (DcId(p.dc), Endpoint(p.ep));
            if self.places.contains_key(&key) || !self.cluster.dc_has_node(key.0, NodeId(p.node)) {
                continue;
            }
            self.places.insert(
                key,
                Place {
                    node: NodeId(p.node),
                    gen: p.gen,
                    port: None,
                },
            );
        }
    }

    /// Applies a binding from the peer `from` if the rules of [`Switch::handle_dir`] allow it; false when it is
    /// refused (an older binding of the same holder is ignored, not refused).
    fn bind_remote(&mut self, now: Instant, from: NodeId, b: Binding) -> bool {
        if !self.cluster.dc_has_node(DcId(b.dc), from) {
            return false;
        }
        let key = b.key();
        match self.places.get(&key).copied() {
            None => {}
            // An older binding of the same holder: ignored.
            Some(p) if p.node == from && p.gen > b.gen => return true,
            Some(p) if p.node == from => {}
            // The holder is dead in the directory, which gave the endpoint to `from`.
            Some(p) if self.dead.contains(&p.node) => {}
            Some(p) => {
                let granted = self
                    .grants
                    .get(&key)
                    .is_some_and(|g| g.from == p.node && g.to == from && b.gen >= g.gen);
                if !granted {
                    if self.claims.len() < MAX_TRACKED || self.claims.contains_key(&key) {
                        self.claims.insert(key, (from, b.gen));
                    }
                    return false;
                }
            }
        }
        self.apply_bind(now, from, b);
        true
    }

    /// Places `b`'s endpoint on `from`, noting which node it left at `now`.
    fn apply_bind(&mut self, now: Instant, from: NodeId, b: Binding) {
        let key = b.key();
        let old = self.places.insert(
            key,
            Place {
                node: from,
                gen: b.gen,
                port: None,
            },
        );
        self.grants.remove(&key);
        self.claims.remove(&key);
        if let Some(old) = old.filter(|p| p.node != from) {
            self.note_left(now, key, old.node);
        }
    }

    /// Remembers that `key` left `node` at `now` (bounded: the oldest records go first, and when all are
    /// young the new one is not kept).
    fn note_left(&mut self, now: Instant, key: (DcId, Endpoint), node: NodeId) {
        if node == self.node {
            return;
        }
        if self.left.len() >= MAX_TRACKED && !self.left.contains_key(&key) {
            self.left.retain(|_, (_, t)| *t + LEFT_GRACE > now);
            if self.left.len() >= MAX_TRACKED {
                return;
            }
        }
        self.left.insert(key, (node, now));
    }

    /// True if `key` left `node` less than [`LEFT_GRACE`] before `now`.
    fn left_lately(&self, now: Instant, key: (DcId, Endpoint), node: NodeId) -> bool {
        self.left
            .get(&key)
            .is_some_and(|&(n, t)| n == node && t + LEFT_GRACE > now)
    }

    /// True if the port `id` is being moved to `node` (granted to it, or already placed there).
    fn port_moving_to(&self, id: PortId, node: NodeId) -> bool {
        let Some(port) = self.ports.get(&id) else {
            return false;
        };
        port.spec.endpoints.iter().any(|&ep| {
            let key = (port.spec.dc, ep);
            self.grants
                .get(&key)
                .is_some_and(|g| g.from == self.node && g.to == node)
                || self.places.get(&key).is_some_and(|p| p.node == node)
        })
    }

    /// May the peer `node` send this M3-IPC frame? Its source must be placed on that peer. Forwarded frames and
    /// the proxies' own answers (hops below [`FIRST_HOPS`]) may also be about an endpoint that left that peer
    /// lately: answers to calls that were in progress there and frames it forwards to the new place.
    fn peer_may_send(&self, now: Instant, node: NodeId, repr: &FrameRepr, hops: u8) -> bool {
        let dc = repr.dc;
        if self
            .places
            .get(&(dc, repr.src))
            .is_some_and(|p| p.node == node)
        {
            return true;
        }
        hops < FIRST_HOPS
            && (self.left_lately(now, (dc, repr.src), node)
                || self.left_lately(now, (dc, repr.dst), node))
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
            Via::Peer(n) => {
                self.peers.entry(n.0).or_default().drops.add(why);
                if why == Drop::QueueFull {
                    self.timing.written(n, 1);
                }
            }
        }
    }

    /// Counts one socket write of `frames` frames (`bytes` in all) to a peer.
    pub fn count_peer_write(&mut self, node: NodeId, frames: u64, bytes: u64) {
        let c = self.peers.entry(node.0).or_default();
        c.tx.frames += frames;
        c.tx.bytes += bytes;
        c.writes += 1;
        self.timing.written(node, frames);
    }

    /// Counts a round trip of `rtt_us` measured on the link to `node` (a Ping answered).
    pub fn count_peer_rtt(&mut self, node: NodeId, rtt_us: u64) {
        let c = self.peers.entry(node.0).or_default();
        c.rtt_us = Some(rtt_us);
        c.pongs += 1;
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
            links: self.links,
            timing: self.timing.counters.clone(),
        }
    }

    /// Counts a peer link refused at its handshake.
    pub fn count_link_refused(&mut self, why: LinkRefusal) {
        self.links.add(why);
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
        let (t, first) = (std::time::Instant::now(), out.len());
        self.port_frame_checked(now, id, frame, out);
        self.timing.port_done(t, &out[first.min(out.len())..]);
    }

    fn port_frame_checked(&mut self, now: Instant, id: PortId, frame: Bytes, out: &mut Vec<Out>) {
        let Some(port) = self.ports.get_mut(&id) else {
            return;
        };
        port.counters.rx.add(frame.len());
        let dc = port.spec.dc;
        if !port.announced {
            self.announce_port(id, out);
        }
        if !self.admit(now, dc, frame.len()) {
            return self.drop_from(Via::Port(id), dc, Drop::RateLimited);
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
        let arrival = m3::Arrival {
            from: Via::Port(id),
            now,
            hops: FIRST_HOPS,
        };
        self.route_m3(arrival, eth, &repr, frame.clone(), out);
    }

    /// A frame of `dc` from the peer `node`, arrived at `now`, which allows `hops` more forwards. It is checked
    /// like a frame from a VM: an M3-IPC source must be one the peer holds (see [`Switch::handle_dir`] for how
    /// endpoints come to be held), a LAN source MAC must not be one of this node's ports.
    pub fn peer_frame(
        &mut self,
        now: Instant,
        node: NodeId,
        dc: DcId,
        hops: u8,
        frame: Bytes,
        out: &mut Vec<Out>,
    ) {
        let t = std::time::Instant::now();
        self.peer_frame_checked(now, node, dc, hops, frame, out);
        self.timing.peer_done(t);
    }

    fn peer_frame_checked(
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
        if !self.admit_peer(now, node, dc, frame.len()) {
            return self.drop_from(Via::Peer(node), dc, Drop::RateLimited);
        }
        let Ok((eth, payload)) = EthernetHeader::parse(&frame) else {
            return self.drop_from(Via::Peer(node), dc, Drop::Malformed);
        };
        if eth.src[0] & 1 == 1 {
            return self.drop_from(Via::Peer(node), dc, Drop::Malformed);
        }
        if eth.ethertype != ETHERTYPE_M3IPC {
            // The proxy knows the MACs of its own ports (assigned, or learned on them), not those of other
            // nodes' ports: a peer may not send as one of this node's.
            // (While a port moves to that peer, both copies share the MAC.)
            if let Some(Via::Port(id)) = self.macs.get(now, dc, &eth.src) {
                if !self.port_moving_to(id, node) {
                    return self.drop_from(Via::Peer(node), dc, Drop::PeerSpoofed);
                }
            }
            return self.switch_lan(Via::Peer(node), dc, eth, frame, now, out);
        }
        let Ok(repr) = FrameRepr::parse(payload) else {
            return self.drop_from(Via::Peer(node), dc, Drop::Malformed);
        };
        if repr.dc != dc {
            return self.drop_from(Via::Peer(node), dc, Drop::WrongDc);
        }
        if !self.peer_may_send(now, node, &repr, hops) {
            return self.drop_from(Via::Peer(node), dc, Drop::PeerSpoofed);
        }
        let arrival = m3::Arrival {
            from: Via::Peer(node),
            now,
            hops,
        };
        self.route_m3(arrival, eth, &repr, frame.clone(), out);
    }

    /// Charges a frame of `len` bytes from a VM port of `dc` to the DC's buckets ([`crate::cluster::DcLimit`]);
    /// false when the DC is over its limit on this node.
    fn admit(&mut self, now: Instant, dc: DcId, len: usize) -> bool {
        let cluster = &self.cluster;
        self.rates
            .entry(dc.0)
            .or_insert_with(|| {
                let limit = cluster.dc(dc).map(|d| d.limit).unwrap_or_default();
                rate::DcBuckets::new(&limit, now)
            })
            .admit(now, len)
    }

    /// Charges a frame of `len` bytes of `dc` from peer `node` to that peer's buckets for the DC; false when
    /// the peer is over them.
    fn admit_peer(&mut self, now: Instant, node: NodeId, dc: DcId, len: usize) -> bool {
        let cluster = &self.cluster;
        self.peer_rates
            .entry((node.0, dc.0))
            .or_insert_with(|| {
                let limit = cluster.dc(dc).map(|d| d.limit).unwrap_or_default();
                rate::DcBuckets::for_peer(&limit, now)
            })
            .admit(now, len)
    }

    fn drop_from(&mut self, from: Via, dc: DcId, why: Drop) {
        self.count_drop(from, why);
        self.dcs.entry(dc.0).or_default().drops.add(why);
    }
}

#[cfg(test)]
mod tests;
