//! The proxy on tokio: the switch behind a lock, VM ports, and one peer link per other node (dialled by the
//! lower node id, accepted by the higher), with batching, heartbeats, reconnect with backoff and a bounded
//! queue per peer. With [`ProxyConfig::tls`] a link is mutual TLS 1.3 and the peer's certificate must name the
//! node it is (see [`crate::tls`]); without, plain TCP (a one-node cluster).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use m3ipc_core::{DcId, Endpoint, Instant, NodeId};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};

use crate::cluster::ClusterMap;
use crate::counters::{Drop, LinkRefusal};
use crate::peer::{PeerError, PeerMsg, PROTOCOL};
use crate::placement::{Place, PlacementView, PortId};
use crate::port::{self, PortHandle, PortKind, VmPort};
use crate::switch::{MacConfig, Out, PortSpec, Stats, Switch, SwitchError, Via};
use crate::tls::PeerTls;

/// How a proxy runs.
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    /// This node.
    pub node: NodeId,
    /// Nodes and DCs.
    pub cluster: ClusterMap,
    /// Where to accept peer links (usually this node's `proxy` address in the cluster map).
    pub listen: SocketAddr,
    /// A link idle this long sends a heartbeat.
    pub heartbeat: Duration,
    /// A link silent this long is declared down.
    pub dead_after: Duration,
    /// Messages queued per peer before senders wait (back-pressure) or drop.
    pub peer_queue: usize,
    /// How the switch's per-DC MAC tables age and how many addresses they keep.
    pub macs: MacConfig,
    /// Mutual TLS on peer links with these credentials; `None`: plain TCP, for a one-node cluster (anyone who
    /// reaches the peer port can then speak as a node).
    pub tls: Option<Arc<PeerTls>>,
}

impl ProxyConfig {
    /// Defaults for `node` in `cluster`: listen on the node's proxy address, 1 s heartbeats, down after 3 s,
    /// MAC addresses aged out after 300 s ([`MacConfig::default`]).
    pub fn new(node: NodeId, cluster: ClusterMap) -> Result<ProxyConfig, ProxyError> {
        let me = cluster.node(node).ok_or(ProxyError::UnknownNode(node))?;
        Ok(ProxyConfig {
            node,
            listen: me.proxy,
            cluster,
            heartbeat: Duration::from_secs(1),
            dead_after: Duration::from_secs(3),
            peer_queue: 1024,
            macs: MacConfig::default(),
            tls: None,
        })
    }
}

/// Why a proxy operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// This node is not in the cluster map.
    #[error("{0} is not in the cluster map")]
    UnknownNode(NodeId),
    /// The switch refused.
    #[error(transparent)]
    Switch(#[from] SwitchError),
    /// The TLS credentials are for another node.
    #[error("the TLS credentials are for {tls}, this proxy is {node}")]
    TlsForOtherNode {
        /// This node.
        node: NodeId,
        /// The credentials' node.
        tls: NodeId,
    },
    /// A socket could not be opened.
    #[error("{what}: {source}")]
    Io {
        /// What was being opened.
        what: String,
        /// The error.
        source: std::io::Error,
    },
}

struct Peer {
    addr: SocketAddr,
    tx: mpsc::Sender<PeerMsg>,
    rx: tokio::sync::Mutex<mpsc::Receiver<PeerMsg>>,
    cancel: Mutex<Option<oneshot::Sender<()>>>,
}

struct Core {
    cfg: ProxyConfig,
    /// The origin of the switch's clock (tokio's, so that paused test time is seen too).
    epoch: tokio::time::Instant,
    switch: Mutex<Switch>,
    ports: RwLock<HashMap<PortId, Arc<dyn VmPort>>>,
    /// The other nodes of the cluster (changed live by [`Proxy::set_cluster`]).
    peers: RwLock<HashMap<NodeId, Arc<Peer>>>,
    /// Nodes the directory says are dead (their lease lapsed): no link to them until they are alive again.
    fenced: RwLock<std::collections::HashSet<NodeId>>,
}

impl Peer {
    fn new(addr: SocketAddr, queue: usize) -> Arc<Peer> {
        let (tx, rx) = mpsc::channel(queue);
        Arc::new(Peer {
            addr,
            tx,
            rx: tokio::sync::Mutex::new(rx),
            cancel: Mutex::new(None),
        })
    }

    /// Ends the link's session now, if one runs.
    fn cancel(&self) {
        if let Some(c) = lock(&self.cancel).take() {
            let _ = c.send(());
        }
    }
}

fn read<T>(m: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(m: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(|e| e.into_inner())
}

/// A running proxy. Cloning gives another handle to the same proxy.
#[derive(Clone)]
pub struct Proxy {
    core: Arc<Core>,
    handles: Arc<Mutex<HashMap<PortId, PortHandle>>>,
    tasks: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Proxy {
    /// Starts the proxy: accepts peer links on `cfg.listen` and dials the nodes with higher ids.
    pub async fn start(cfg: ProxyConfig) -> Result<Proxy, ProxyError> {
        if let Some(tls) = cfg.tls.as_ref().filter(|t| t.node() != cfg.node) {
            return Err(ProxyError::TlsForOtherNode {
                node: cfg.node,
                tls: tls.node(),
            });
        }
        let listener = TcpListener::bind(cfg.listen)
            .await
            .map_err(|source| ProxyError::Io {
                what: format!("peer listener on {}", cfg.listen),
                source,
            })?;
        let peers = cfg
            .cluster
            .nodes
            .iter()
            .filter(|n| n.id != cfg.node.0)
            .map(|n| (NodeId(n.id), Peer::new(n.proxy, cfg.peer_queue)))
            .collect();
        let switch = Mutex::new(Switch::with_macs(cfg.node, cfg.cluster.clone(), cfg.macs));
        let core = Arc::new(Core {
            cfg,
            epoch: tokio::time::Instant::now(),
            switch,
            ports: RwLock::new(HashMap::new()),
            peers: RwLock::new(peers),
            fenced: RwLock::default(),
        });
        let mut tasks = vec![tokio::spawn(accept_loop(core.clone(), listener))];
        let nodes: Vec<NodeId> = read(&core.peers).keys().copied().collect();
        for node in nodes {
            if node > core.cfg.node {
                tasks.push(tokio::spawn(dial_loop(core.clone(), node)));
            }
        }
        Ok(Proxy {
            core,
            handles: Arc::default(),
            tasks: Arc::new(Mutex::new(tasks)),
        })
    }

    /// This node.
    pub fn node(&self) -> NodeId {
        self.core.cfg.node
    }

    /// Opens a VM port of `kind` for an instance holding `spec`.
    pub async fn add_port(&self, spec: PortSpec, kind: &PortKind) -> Result<PortId, ProxyError> {
        let mut out = vec![];
        let now = self.core.now();
        let id = lock(&self.core.switch).add_port(now, spec, &mut out)?;
        let core = self.core.clone();
        let sink: port::Sink = Arc::new(move |frame: Bytes| {
            let core = core.clone();
            Box::pin(async move { core.port_frame(id, frame).await })
        });
        let core = self.core.clone();
        let on_fault: crate::vhost::FaultSink = Arc::new(move |_| {
            lock(&core.switch).count_drop(Via::Port(id), Drop::BadRing);
        });
        let handle = match port::open(kind, sink, on_fault).await {
            Ok(h) => h,
            Err(source) => {
                // Nothing was announced yet (`out` is dropped), so there is nothing to take back from peers.
                if let Err(e) = lock(&self.core.switch).remove_port(id, &mut vec![]) {
                    tracing::warn!("undoing VM port {id} after a failed open: {e}");
                }
                return Err(ProxyError::Io {
                    what: format!("VM port {kind:?}"),
                    source,
                });
            }
        };
        self.core
            .ports
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, handle.tx.clone());
        lock(&self.handles).insert(id, handle);
        self.core.dispatch(out, true).await;
        Ok(id)
    }

    /// Closes a port and unbinds its endpoints.
    pub async fn remove_port(&self, id: PortId) -> Result<(), ProxyError> {
        let mut out = vec![];
        let r = lock(&self.core.switch).remove_port(id, &mut out);
        self.core.dispatch(out, true).await;
        self.core
            .ports
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        if let Some(h) = lock(&self.handles).remove(&id) {
            h.close();
        }
        Ok(r?)
    }

    /// Moves a port's endpoints to `to` (bound there with generation `gen`); see [`Switch::move_port`].
    pub async fn move_port(&self, id: PortId, to: NodeId, gen: u64) -> Result<(), ProxyError> {
        let mut out = vec![];
        let r = lock(&self.core.switch).move_port(id, to, gen, &mut out);
        self.core.dispatch(out, true).await;
        Ok(r?)
    }

    /// Lets node `to` take over a port's endpoints with a binding of generation `gen` or newer (before it binds
    /// them); see [`Switch::grant_move`].
    pub async fn grant_move(&self, id: PortId, to: NodeId, gen: u64) -> Result<(), ProxyError> {
        let mut out = vec![];
        let r = lock(&self.core.switch).grant_move(id, to, gen, &mut out);
        self.core.dispatch(out, true).await;
        Ok(r?)
    }

    /// True if peer links are mutual TLS.
    pub fn tls(&self) -> bool {
        self.core.cfg.tls.is_some()
    }

    /// Announces a port's endpoints now, if its first frame has not done it yet.
    pub async fn announce_port(&self, id: PortId) {
        let mut out = vec![];
        lock(&self.core.switch).announce_port(id, &mut out);
        self.core.dispatch(out, true).await;
    }

    /// The cluster map the proxy routes by.
    pub fn cluster(&self) -> ClusterMap {
        lock(&self.core.switch).cluster().clone()
    }

    /// Calls in progress towards a port.
    pub fn port_pending(&self, id: PortId) -> usize {
        lock(&self.core.switch).port_pending(id)
    }

    /// Where an endpoint lives, as far as this node knows.
    pub fn lookup(&self, dc: DcId, ep: Endpoint) -> Option<Place> {
        lock(&self.core.switch).lookup(dc, ep)
    }

    /// The handover grant this node knows for an endpoint: (holder, new place, generation).
    pub fn grant(&self, dc: DcId, ep: Endpoint) -> Option<(NodeId, NodeId, u64)> {
        lock(&self.core.switch).grant(dc, ep)
    }

    /// Every known endpoint placement.
    pub fn placements(&self) -> Vec<PlacementView> {
        lock(&self.core.switch).placements()
    }

    /// Restores placements of other nodes saved before a restart; see [`Switch::preload`].
    pub fn preload(&self, known: &[PlacementView]) {
        lock(&self.core.switch).preload(known);
    }

    /// True while the link to `node` is up.
    pub fn peer_is_up(&self, node: NodeId) -> bool {
        lock(&self.core.switch).peer_is_up(node)
    }

    /// All counters.
    pub fn stats(&self) -> Stats {
        lock(&self.core.switch).stats()
    }

    /// Stops every task and closes every port.
    pub fn shutdown(&self) {
        for t in lock(&self.tasks).drain(..) {
            t.abort();
        }
        for (_, h) in lock(&self.handles).drain() {
            h.close();
        }
        for p in read(&self.core.peers).values() {
            p.cancel();
        }
    }

    /// Takes `map` as the cluster from now on (a live change from the directory): nodes that joined get a
    /// peer link (dialled by the lower id), nodes that left lose theirs (calls in progress through them fail
    /// with NodeUnreachable), and the switch routes by the new DCs. Its own node must stay in it.
    pub async fn set_cluster(&self, map: ClusterMap) -> Result<(), ProxyError> {
        let me = self.core.cfg.node;
        if map.node(me).is_none() {
            return Err(ProxyError::UnknownNode(me));
        }
        let mut out = vec![];
        let (added, removed) = {
            let mut peers = write(&self.core.peers);
            let mut added = vec![];
            for n in map.nodes.iter().filter(|n| n.id != me.0) {
                let id = NodeId(n.id);
                if peers.get(&id).is_some_and(|p| p.addr == n.proxy) {
                    continue;
                }
                // New, or at a new address: a new peer (the old one's session ends below).
                if let Some(old) = peers.insert(id, Peer::new(n.proxy, self.core.cfg.peer_queue)) {
                    old.cancel();
                }
                added.push(id);
            }
            let gone: Vec<NodeId> = peers
                .keys()
                .copied()
                .filter(|id| map.node(*id).is_none())
                .collect();
            let removed: Vec<Arc<Peer>> = gone.iter().filter_map(|id| peers.remove(id)).collect();
            (added, removed)
        };
        for p in &removed {
            p.cancel();
        }
        lock(&self.core.switch).set_cluster(map, &mut out);
        self.core.dispatch(out, false).await;
        let mut tasks = lock(&self.tasks);
        for node in added {
            tracing::info!("node {node} joined the cluster");
            if node > me {
                tasks.push(tokio::spawn(dial_loop(self.core.clone(), node)));
            }
        }
        Ok(())
    }

    /// Marks `node` dead (`alive` false: its lease lapsed in the directory) or alive again. A dead node's
    /// link is cut now — calls in progress through it fail with NodeUnreachable — and it gets no new link
    /// until it is alive again, even if its proxy still answers (a partition the directory has decided); its
    /// endpoints may be bound by another node (the one the directory gave them to).
    pub async fn set_alive(&self, node: NodeId, alive: bool) {
        let now = self.core.now();
        let mut out = vec![];
        lock(&self.core.switch).set_node_dead(now, node, !alive, &mut out);
        if alive {
            write(&self.core.fenced).remove(&node);
            return;
        }
        if write(&self.core.fenced).insert(node) {
            tracing::warn!("node {node} is dead in the directory: its peer link is cut");
        }
        if let Some(p) = self.core.peer(node) {
            p.cancel();
        }
        self.core.dispatch(out, false).await;
    }
}

impl Core {
    /// The peer state of `node`, if it is in the cluster.
    fn peer(&self, node: NodeId) -> Option<Arc<Peer>> {
        read(&self.peers).get(&node).cloned()
    }

    /// True if `node` is dead in the directory.
    fn is_fenced(&self, node: NodeId) -> bool {
        read(&self.fenced).contains(&node)
    }

    /// The switch's `now`: monotonic, since the proxy started.
    fn now(&self) -> Instant {
        let us = u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX);
        Instant::from_micros(us)
    }

    async fn port_frame(&self, id: PortId, frame: Bytes) {
        let mut out = Vec::new();
        let now = self.now();
        lock(&self.switch).port_frame(now, id, frame, &mut out);
        self.dispatch(out, true).await;
    }

    /// Carries out what the switch asked. With `wait`, a full peer queue makes the caller wait (back-pressure
    /// on the VM port); without, the frame is dropped and counted (peer readers never wait on each other).
    async fn dispatch(&self, out: Vec<Out>, wait: bool) {
        for o in out {
            match o {
                Out::Port(id, frame) => {
                    let port = self
                        .ports
                        .read()
                        .unwrap_or_else(|e| e.into_inner())
                        .get(&id)
                        .cloned();
                    if port.is_none_or(|p| p.try_send(&frame).is_err()) {
                        lock(&self.switch).count_drop(Via::Port(id), Drop::QueueFull);
                    }
                }
                Out::Peer {
                    node,
                    dc,
                    hops,
                    frame,
                } => {
                    self.to_peer(
                        node,
                        PeerMsg::Frame {
                            dc: dc.0,
                            hops,
                            frame,
                        },
                        wait,
                    )
                    .await;
                }
                Out::Dir(Some(node), msg) => self.to_peer(node, PeerMsg::Dir(msg), true).await,
                Out::Dir(None, msg) => {
                    let up: Vec<NodeId> = {
                        let nodes: Vec<NodeId> = read(&self.peers).keys().copied().collect();
                        let sw = lock(&self.switch);
                        nodes.into_iter().filter(|&n| sw.peer_is_up(n)).collect()
                    };
                    for node in up {
                        self.to_peer(node, PeerMsg::Dir(msg.clone()), true).await;
                    }
                }
            }
        }
    }

    async fn to_peer(&self, node: NodeId, msg: PeerMsg, wait: bool) {
        let Some(peer) = self.peer(node) else {
            return;
        };
        let sent = if wait {
            tokio::time::timeout(self.cfg.dead_after, peer.tx.send(msg))
                .await
                .is_ok_and(|r| r.is_ok())
        } else {
            peer.tx.try_send(msg).is_ok()
        };
        if !sent {
            lock(&self.switch).count_drop(Via::Peer(node), Drop::QueueFull);
        }
    }
}

/// How long a peer has for the TLS handshake and for its Hello.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// A link refused before it carried anything: the counter it goes to (none for a failed connect) and why.
type Refusal = (Option<LinkRefusal>, PeerError);

fn refusal(why: LinkRefusal, e: impl Into<PeerError>) -> Refusal {
    (Some(why), e.into())
}

impl Core {
    fn count_refusal(&self, r: &Refusal) {
        if let Some(why) = r.0 {
            lock(&self.switch).count_link_refused(why);
        }
    }
}

async fn accept_loop(core: Arc<Core>, listener: TcpListener) {
    loop {
        let Ok((stream, addr)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let core = core.clone();
        tokio::spawn(async move {
            if let Err(r) = accept_link(core.clone(), stream).await {
                core.count_refusal(&r);
                tracing::warn!("peer link from {addr} refused: {}", r.1);
            }
        });
    }
}

/// Runs the accepting side of one link: TLS (when on), Hello, then the session until it ends.
async fn accept_link(core: Arc<Core>, tcp: TcpStream) -> Result<(), Refusal> {
    tcp.set_nodelay(true).map_err(|e| (None, e.into()))?;
    let Some(tls) = core.cfg.tls.clone() else {
        let (node, stream) = hello(&core, tcp, None, |_| Ok(())).await?;
        let (rd, wr) = stream.into_split();
        run_session(core, node, rd, wr).await;
        return Ok(());
    };
    let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(tcp))
        .await
        .map_err(|_| {
            refusal(
                LinkRefusal::Tls,
                PeerError::Protocol("no TLS handshake".into()),
            )
        })?
        .map_err(|e| refusal(LinkRefusal::Tls, e))?;
    let certs = stream
        .get_ref()
        .1
        .peer_certificates()
        .unwrap_or_default()
        .to_vec();
    let (node, stream) = hello(&core, stream, None, |node| {
        tls.names(&certs, node).map_err(|why| {
            let why = format!("claims to be {node}, but its certificate does not name it: {why}");
            refusal(LinkRefusal::IdMismatch, PeerError::Protocol(why))
        })
    })
    .await?;
    let (rd, wr) = tokio::io::split(stream);
    run_session(core, node, rd, wr).await;
    Ok(())
}

/// Runs the dialling side of one link to `node`: connect, TLS (when on), Hello, then the session until it ends.
async fn dial_link(core: &Arc<Core>, node: NodeId, addr: SocketAddr) -> Result<(), Refusal> {
    let tcp = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr))
        .await
        .map_err(|_| {
            (
                None,
                PeerError::Protocol(format!("connect to {addr} timed out")),
            )
        })?
        .map_err(|e| (None, e.into()))?;
    tcp.set_nodelay(true).map_err(|e| (None, e.into()))?;
    let Some(tls) = core.cfg.tls.clone() else {
        let (node, stream) = hello(core, tcp, Some(node), |_| Ok(())).await?;
        let (rd, wr) = stream.into_split();
        run_session(core.clone(), node, rd, wr).await;
        return Ok(());
    };
    let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.connect(tcp, node))
        .await
        .map_err(|_| {
            refusal(
                LinkRefusal::Tls,
                PeerError::Protocol("no TLS handshake".into()),
            )
        })?
        .map_err(|e| {
            let why = if crate::tls::is_name_mismatch(&e) {
                LinkRefusal::IdMismatch
            } else {
                LinkRefusal::Tls
            };
            refusal(why, e)
        })?;
    let (node, stream) = hello(core, stream, Some(node), |_| Ok(())).await?;
    let (rd, wr) = tokio::io::split(stream);
    run_session(core.clone(), node, rd, wr).await;
    Ok(())
}

async fn dial_loop(core: Arc<Core>, node: NodeId) {
    let Some(peer) = core.peer(node) else {
        return;
    };
    let addr = peer.addr;
    let mut backoff = Duration::from_millis(50);
    loop {
        // The node left the cluster (or moved: a new loop dials its new address).
        if !core.peer(node).is_some_and(|p| Arc::ptr_eq(&p, &peer)) {
            return;
        }
        if core.is_fenced(node) {
            tokio::time::sleep(backoff).await;
            continue;
        }
        match dial_link(&core, node, addr).await {
            Ok(()) => backoff = Duration::from_millis(50),
            Err(r) => {
                core.count_refusal(&r);
                if r.0.is_some() {
                    tracing::warn!("peer link to {node} at {addr} refused: {}", r.1);
                } else {
                    tracing::debug!("peer link to {node} at {addr}: {}", r.1);
                }
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
}

/// Exchanges Hello messages; `expect` is the node we dialled (None when accepting), `vouch` checks the claimed
/// node against the peer's certificate before anything else is believed.
async fn hello<S: AsyncRead + AsyncWrite + Unpin>(
    core: &Core,
    mut stream: S,
    expect: Option<NodeId>,
    vouch: impl FnOnce(NodeId) -> Result<(), Refusal>,
) -> Result<(NodeId, S), Refusal> {
    let bad = |e: PeerError| refusal(LinkRefusal::Hello, e);
    let mut buf = vec![];
    PeerMsg::Hello {
        node: core.cfg.node.0,
        protocol: PROTOCOL,
    }
    .encode(&mut buf);
    stream.write_all(&buf).await.map_err(|e| bad(e.into()))?;
    stream.flush().await.map_err(|e| bad(e.into()))?;
    let msg = tokio::time::timeout(HANDSHAKE_TIMEOUT, PeerMsg::read(&mut stream, &mut buf))
        .await
        .map_err(|_| bad(PeerError::Protocol("no Hello within 5 s".into())))?
        .map_err(bad)?;
    let PeerMsg::Hello { node, protocol } = msg else {
        return Err(bad(PeerError::Protocol(format!(
            "expected Hello, got {msg:?}"
        ))));
    };
    let node = NodeId(node);
    vouch(node)?;
    if let Some(e) = expect.filter(|&e| e != node) {
        let why = format!("dialled {e}, but it says it is {node}");
        return Err(refusal(LinkRefusal::IdMismatch, PeerError::Protocol(why)));
    }
    if protocol != PROTOCOL {
        return Err(bad(PeerError::Protocol(format!(
            "{node} speaks protocol {protocol}, we speak {PROTOCOL}"
        ))));
    }
    if core.peer(node).is_none() {
        return Err(bad(PeerError::Protocol(format!("unexpected {node}"))));
    }
    if core.is_fenced(node) {
        let why = format!("{node} is dead in the directory (its lease lapsed)");
        return Err(bad(PeerError::Protocol(why)));
    }
    if expect.is_none() && node > core.cfg.node {
        return Err(bad(PeerError::Protocol(format!(
            "{node} has the higher id: we dial it"
        ))));
    }
    Ok((node, stream))
}

/// Runs one connected link until it fails or a newer connection replaces it.
async fn run_session<R, W>(core: Arc<Core>, node: NodeId, rd: R, mut wr: W)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let Some(peer) = core.peer(node) else {
        return;
    };
    let (cancel_tx, cancel_rx) = oneshot::channel();
    if let Some(old) = lock(&peer.cancel).replace(cancel_tx) {
        let _ = old.send(());
    }
    let mut rx = peer.rx.lock().await; // waits for a replaced session to finish its cleanup
    tracing::info!("peer link to {node} up");
    let mut out = vec![];
    lock(&core.switch).peer_up(node, &mut out);
    for o in out {
        if let Out::Dir(_, msg) = o {
            if peer.tx.try_send(PeerMsg::Dir(msg)).is_err() {
                tracing::warn!(
                    "peer link to {node}: queue full, snapshot of our endpoints not sent"
                );
                lock(&core.switch).count_drop(Via::Peer(node), Drop::QueueFull);
            }
        }
    }
    let reader = read_loop(&core, node, rd);
    let writer = write_loop(&core, node, &mut rx, &mut wr);
    let why = tokio::select! {
        r = reader => r.err().map(|e| e.to_string()).unwrap_or_default(),
        r = writer => r.err().map(|e| e.to_string()).unwrap_or_default(),
        _ = cancel_rx => "replaced".to_string(),
    };
    tracing::info!("peer link to {node} down: {why}");
    let mut out = vec![];
    lock(&core.switch).peer_down(node, &mut out);
    while rx.try_recv().is_ok() {}
    drop(rx);
    core.dispatch(out, false).await;
}

async fn read_loop<R: AsyncRead + Unpin>(
    core: &Core,
    node: NodeId,
    rd: R,
) -> Result<(), PeerError> {
    let mut rd = BufReader::with_capacity(1 << 16, rd);
    let mut body = Vec::with_capacity(2048);
    loop {
        let msg = tokio::time::timeout(core.cfg.dead_after, PeerMsg::read(&mut rd, &mut body))
            .await
            .map_err(|_| PeerError::Protocol(format!("silent for {:?}", core.cfg.dead_after)))??;
        match msg {
            PeerMsg::Frame { dc, hops, frame } => {
                let mut out = Vec::new();
                let now = core.now();
                lock(&core.switch).peer_frame(now, node, DcId(dc), hops, frame, &mut out);
                core.dispatch(out, false).await;
            }
            PeerMsg::Dir(d) => {
                let now = core.now();
                lock(&core.switch).handle_dir(now, node, d)
            }
            PeerMsg::Heartbeat => {}
            PeerMsg::Ping(stamp) => {
                if let Some(peer) = core.peer(node) {
                    // A full queue has frames to send: the next Ping gets its answer instead.
                    let _ = peer.tx.try_send(PeerMsg::Pong(stamp));
                }
            }
            PeerMsg::Pong(stamp) => {
                let rtt = core.now().as_micros().saturating_sub(stamp);
                lock(&core.switch).count_peer_rtt(node, rtt);
            }
            PeerMsg::Hello { .. } => {
                return Err(PeerError::Protocol("Hello in the middle of a link".into()))
            }
        }
    }
}

/// Writes queued messages, as many per write as are waiting (no added delay when idle), and a Ping every
/// heartbeat period (busy or idle: the peer answers with a Pong, which measures the link's round trip). One
/// write and one flush per batch: over TLS the batch becomes as few records as fit (16 KiB each), sent at once.
async fn write_loop<W: AsyncWrite + Unpin>(
    core: &Core,
    node: NodeId,
    rx: &mut mpsc::Receiver<PeerMsg>,
    wr: &mut W,
) -> Result<(), PeerError> {
    const BATCH: usize = 1 << 16;
    let mut buf = Vec::with_capacity(BATCH + 2048);
    let mut next_ping = tokio::time::Instant::now();
    loop {
        let first = match tokio::time::timeout_at(next_ping, rx.recv()).await {
            Ok(Some(m)) => Some(m),
            Ok(None) => return Ok(()),
            Err(_) => None,
        };
        buf.clear();
        if tokio::time::Instant::now() >= next_ping {
            next_ping = tokio::time::Instant::now() + core.cfg.heartbeat;
            PeerMsg::Ping(core.now().as_micros()).encode(&mut buf);
        }
        let Some(first) = first else {
            wr.write_all(&buf).await?;
            wr.flush().await?;
            continue;
        };
        let mut frames = u64::from(matches!(first, PeerMsg::Frame { .. }));
        first.encode(&mut buf);
        while buf.len() < BATCH {
            let Ok(m) = rx.try_recv() else { break };
            frames += u64::from(matches!(m, PeerMsg::Frame { .. }));
            m.encode(&mut buf);
        }
        wr.write_all(&buf).await?;
        wr.flush().await?;
        lock(&core.switch).count_peer_write(node, frames, buf.len() as u64);
    }
}
