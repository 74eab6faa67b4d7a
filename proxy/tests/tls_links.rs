//! Peer links with mutual TLS: two proxies with certificates of one CA link up and carry frames; intruders
//! (no TLS, a certificate of another CA, a real node's certificate claiming another node) are refused at the
//! handshake and counted; an authenticated peer cannot send as, or bind, an endpoint it does not hold.

mod common;

use common::{free_port, m3_frame, wait_for};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use dvs_proxy::peer::{PeerMsg, PROTOCOL};
use dvs_proxy::placement::Binding;
use dvs_proxy::port::{PortKind, VmEnd};
use dvs_proxy::tls::{issue_node_cert, new_cluster_ca, PeerTls, Pem};
use dvs_proxy::{Announce, ClusterMap, DcInfo, DirMsg, NodeInfo, PortSpec, Proxy, ProxyConfig};
use m3ipc_core::wire::ethernet::ETH_HEADER_LEN;
use m3ipc_core::wire::{FrameRepr, Kind};
use m3ipc_core::{DcId, Endpoint, NodeId};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

fn cluster(nodes: &[u16]) -> ClusterMap {
    ClusterMap {
        nodes: nodes
            .iter()
            .map(|&id| NodeInfo {
                id,
                proxy: format!("127.0.0.1:{}", free_port()).parse().unwrap(),
                api: "127.0.0.1:1".parse().unwrap(),
            })
            .collect(),
        dcs: vec![DcInfo {
            id: 1,
            name: "one".into(),
            nodes: nodes.to_vec(),
            limit: Default::default(),
            quota: Default::default(),
        }],
    }
}

/// One CA and the TLS credentials of its nodes.
struct Ca(Pem);

impl Ca {
    fn new() -> Ca {
        Ca(new_cluster_ca("test").unwrap())
    }

    fn node(&self, id: u16) -> Arc<PeerTls> {
        let pem = issue_node_cert(&self.0, &format!("n{id}"), NodeId(id)).unwrap();
        let tls = PeerTls::from_pem(
            self.0.cert.as_bytes(),
            pem.cert.as_bytes(),
            pem.key.as_bytes(),
            NodeId(id),
        )
        .unwrap();
        Arc::new(tls)
    }
}

async fn start(node: u16, cluster: &ClusterMap, tls: Option<Arc<PeerTls>>) -> Proxy {
    let mut cfg = ProxyConfig::new(NodeId(node), cluster.clone()).unwrap();
    cfg.tls = tls;
    Proxy::start(cfg).await.unwrap()
}

fn frame(kind: Kind, src: u32, dst: u32, seq: u64) -> Vec<u8> {
    m3_frame(kind, 1, src, dst, seq)
}

fn spec(name: &str, ep: u32) -> PortSpec {
    PortSpec {
        name: name.into(),
        dc: DcId(1),
        endpoints: vec![Endpoint(ep)],
        mac: None,
        gen: 1,
        announce: Announce::Now,
    }
}

/// A folder of its own for each test's sockets.
fn tempdir() -> std::path::PathBuf {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let d = std::env::temp_dir().join(format!("dvs-proxy-tls-test-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

async fn recv(vm: &mut VmEnd, buf: &mut [u8]) -> (Kind, u32, u32, u64) {
    let n = tokio::time::timeout(Duration::from_secs(5), vm.recv(buf))
        .await
        .expect("a frame in time")
        .unwrap();
    let r = FrameRepr::parse(&buf[ETH_HEADER_LEN..n]).unwrap();
    (r.kind, r.src.0, r.dst.0, r.seq)
}

/// A TLS client that trusts `ca` and presents `me`, whatever CA issued it.
fn rogue_client(ca: &Pem, me: &Pem) -> tokio_rustls::TlsConnector {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca.cert.as_bytes()).unwrap())
        .unwrap();
    let chain = vec![CertificateDer::from_pem_slice(me.cert.as_bytes()).unwrap()];
    let key = PrivateKeyDer::from_pem_slice(me.key.as_bytes()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
}

async fn send_msgs<S: AsyncWrite + Unpin>(s: &mut S, msgs: &[PeerMsg]) {
    let mut buf = vec![];
    for m in msgs {
        m.encode(&mut buf);
    }
    s.write_all(&buf).await.unwrap();
    s.flush().await.unwrap();
}

/// True if the other side closed the connection (after at most what it sent first) within a few seconds.
async fn closed<S: AsyncRead + Unpin>(s: &mut S) -> bool {
    let mut buf = [0u8; 256];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(6);
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_of_one_ca_link_up_and_carry_frames() {
    let ca = Ca::new();
    let cl = cluster(&[1, 2]);
    let p1 = start(1, &cl, Some(ca.node(1))).await;
    let p2 = start(2, &cl, Some(ca.node(2))).await;
    wait_for("link up", || {
        p1.peer_is_up(NodeId(2)) && p2.peer_is_up(NodeId(1))
    })
    .await;
    let dir = tempdir();
    let (ka, kb) = (
        PortKind::Stream {
            path: dir.join("a.sock"),
        },
        PortKind::Stream {
            path: dir.join("b.sock"),
        },
    );
    p1.add_port(spec("a", 10), &ka).await.unwrap();
    p2.add_port(spec("b", 20), &kb).await.unwrap();
    let mut a = VmEnd::open(&ka).await.unwrap();
    let mut b = VmEnd::open(&kb).await.unwrap();
    wait_for("placement of 20 on node 1", || {
        p1.lookup(DcId(1), Endpoint(20))
            .is_some_and(|p| p.node == NodeId(2))
    })
    .await;
    let mut buf = vec![0u8; 2048];
    for seq in 1..=50 {
        a.send(&frame(Kind::SendRec, 10, 20, seq)).await.unwrap();
        assert_eq!(recv(&mut b, &mut buf).await, (Kind::SendRec, 10, 20, seq));
        b.send(&frame(Kind::Reply, 20, 10, seq)).await.unwrap();
        assert_eq!(recv(&mut a, &mut buf).await, (Kind::Reply, 20, 10, seq));
    }
    let (s1, s2) = (p1.stats(), p2.stats());
    assert_eq!(s1.peers[&2].rx.frames, 50);
    assert_eq!(s2.peers[&1].rx.frames, 50);
    assert_eq!(s1.links, Default::default());
    assert_eq!(s2.links, Default::default());
    p1.shutdown();
    p2.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn intruders_are_refused_at_the_handshake_and_counted() {
    let ca = Ca::new();
    let cl = cluster(&[1, 2, 3]);
    // Node 2 accepts links from node 1; node 1 is not running, its place is the intruders'.
    let p2 = start(2, &cl, Some(ca.node(2))).await;
    let addr = cl.node(NodeId(2)).unwrap().proxy;
    let hello = PeerMsg::Hello {
        node: 1,
        protocol: PROTOCOL,
    };

    // 1. Plain TCP, saying it is node 1.
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    send_msgs(&mut tcp, std::slice::from_ref(&hello)).await;
    assert!(closed(&mut tcp).await, "a plain TCP peer is dropped");
    wait_for("tls_refused = 1", || p2.stats().links.tls_refused == 1).await;

    // 2. A certificate of another CA for node 1, from a client that trusts node 2's CA (so that it is node 2
    // that refuses).
    let other = Ca::new();
    let forged = issue_node_cert(&other.0, "n1", NodeId(1)).unwrap();
    assert!(
        PeerTls::from_pem(
            ca.0.cert.as_bytes(),
            forged.cert.as_bytes(),
            forged.key.as_bytes(),
            NodeId(1)
        )
        .is_err(),
        "a node refuses to start with a certificate of another CA"
    );
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut tls = rogue_client(&ca.0, &forged)
        .connect(ServerName::try_from("node-2.dvs").unwrap(), tcp)
        .await
        .unwrap(); // TLS 1.3: the client's certificate is judged after the client's handshake ends
    send_msgs(&mut tls, std::slice::from_ref(&hello)).await;
    assert!(closed(&mut tls).await, "a certificate of another CA");
    wait_for("tls_refused = 2", || p2.stats().links.tls_refused == 2).await;

    // 3. The real certificate of node 3, claiming node 1.
    let three = ca.node(3);
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut tls = three.connect(tcp, NodeId(2)).await.unwrap();
    send_msgs(&mut tls, std::slice::from_ref(&hello)).await;
    assert!(
        closed(&mut tls).await,
        "node 3's certificate claiming node 1"
    );
    wait_for("id_mismatch = 1", || p2.stats().links.id_mismatch == 1).await;

    assert!(!p2.peer_is_up(NodeId(1)));
    assert_eq!(p2.stats().peers[&1].connects, 0);
    assert_eq!(p2.stats().peers[&1].rx.frames, 0);
    p2.shutdown();

    // 4. The dialling side: node 1 dials node 2's address, where node 3's certificate answers.
    let cl = cluster(&[1, 2]);
    let rogue = tokio::net::TcpListener::bind(cl.node(NodeId(2)).unwrap().proxy)
        .await
        .unwrap();
    let p1 = start(1, &cl, Some(ca.node(1))).await;
    let (tcp, _) = rogue.accept().await.unwrap();
    let _ = three.accept(tcp).await;
    wait_for("id_mismatch on the dialler", || {
        p1.stats().links.id_mismatch >= 1
    })
    .await;
    assert!(!p1.peer_is_up(NodeId(2)));
    p1.shutdown();

    // 5. A node without TLS dialling one with it: refused there, and the plain node's Hello goes unanswered.
    let cl = cluster(&[1, 2]);
    let p2 = start(2, &cl, Some(ca.node(2))).await;
    let p1 = start(1, &cl, None).await;
    wait_for("tls_refused at node 2", || {
        p2.stats().links.tls_refused >= 1
    })
    .await;
    assert!(!p2.peer_is_up(NodeId(1)) && !p1.peer_is_up(NodeId(2)));
    p1.shutdown();
    p2.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_authenticated_peer_cannot_send_as_or_bind_anothers_endpoint() {
    let ca = Ca::new();
    let cl = cluster(&[1, 2, 3]);
    let p2 = start(2, &cl, Some(ca.node(2))).await;
    let dir = tempdir();
    let kb = PortKind::Stream {
        path: dir.join("b.sock"),
    };
    p2.add_port(spec("b", 20), &kb).await.unwrap();
    let mut b = VmEnd::open(&kb).await.unwrap();
    let before = p2.placements();

    // Node 1, with its real certificate, but misbehaving.
    let one = ca.node(1);
    let tcp = TcpStream::connect(cl.node(NodeId(2)).unwrap().proxy)
        .await
        .unwrap();
    let mut link = one.connect(tcp, NodeId(2)).await.unwrap();
    let frame_msg = |src, seq| PeerMsg::Frame {
        dc: 1,
        hops: 2,
        frame: Bytes::from(frame(Kind::SendRec, src, 20, seq)),
    };
    send_msgs(
        &mut link,
        &[
            PeerMsg::Hello {
                node: 1,
                protocol: PROTOCOL,
            },
            // As node 2's own endpoint 20, as endpoint 30 of nobody, as node 3's 40 (not known yet: nobody's).
            frame_msg(20, 1),
            frame_msg(30, 2),
            // Node 1 steals endpoint 20 with a generation no one can beat.
            PeerMsg::Dir(DirMsg::Bind(Binding {
                dc: 1,
                ep: 20,
                gen: u64::MAX,
            })),
            // And binds an endpoint of its own, then speaks as it: that one is delivered.
            PeerMsg::Dir(DirMsg::Bind(Binding {
                dc: 1,
                ep: 11,
                gen: 1,
            })),
            frame_msg(11, 3),
        ],
    )
    .await;
    let mut buf = vec![0u8; 2048];
    assert_eq!(recv(&mut b, &mut buf).await, (Kind::SendRec, 11, 20, 3));
    let st = p2.stats();
    assert_eq!(st.peers[&1].drops.peer_spoofed, 2);
    assert_eq!(st.peers[&1].dir_refused, 1);
    assert_eq!(
        st.ports["b"].tx.frames, 1,
        "only the frame from endpoint 11"
    );
    let after: Vec<_> = p2.placements().into_iter().filter(|p| p.ep != 11).collect();
    assert_eq!(after, before, "endpoint 20 stays on node 2");
    assert!(p2.lookup(DcId(1), Endpoint(20)).unwrap().port.is_some());
    p2.shutdown();
}

/// A migration as the hypervisor does it (make before break), over TLS links between three nodes: without the
/// holder's grant the new place's binding moves nothing; with it, every node follows, and calls reach the new
/// place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_granted_migration_moves_an_endpoint_and_an_ungranted_one_does_not() {
    let ca = Ca::new();
    let cl = cluster(&[1, 2, 3]);
    let p1 = start(1, &cl, Some(ca.node(1))).await;
    let p2 = start(2, &cl, Some(ca.node(2))).await;
    let p3 = start(3, &cl, Some(ca.node(3))).await;
    wait_for("all links up", || {
        p1.peer_is_up(NodeId(2)) && p1.peer_is_up(NodeId(3)) && p2.peer_is_up(NodeId(3))
    })
    .await;
    let dir = tempdir();
    let port = |name: &str| PortKind::Stream {
        path: dir.join(format!("{name}.sock")),
    };
    let old = p1.add_port(spec("old", 10), &port("old")).await.unwrap();
    p3.add_port(spec("caller", 30), &port("caller"))
        .await
        .unwrap();
    let mut caller = VmEnd::open(&port("caller")).await.unwrap();
    let on = |p: &Proxy, node: u16| {
        p.lookup(DcId(1), Endpoint(10))
            .is_some_and(|l| l.node == NodeId(node))
    };
    wait_for("10 on node 1 everywhere", || on(&p2, 1) && on(&p3, 1)).await;

    // Node 2 binds endpoint 10 on its own: refused by node 1 and node 3.
    let mut rogue = spec("rogue", 10);
    rogue.gen = 1_000;
    let r = p2.add_port(rogue, &port("rogue")).await.unwrap();
    wait_for("node 1 and 3 refuse it", || {
        p1.stats().peers[&2].dir_refused >= 1 && p3.stats().peers[&2].dir_refused >= 1
    })
    .await;
    assert!(on(&p3, 1) && p1.lookup(DcId(1), Endpoint(10)).unwrap().port == Some(old));
    p2.remove_port(r).await.unwrap();

    // The real thing: node 1 grants, node 2 takes over (announcing on its first frame), node 1 hands over.
    let gen = 2_000;
    p1.grant_move(old, NodeId(2), gen).await.unwrap();
    // (A VM boots between the grant and the new binding; here the grant must not be overtaken by the binding,
    // else node 3 drops the new place's first frames until the grant comes.)
    wait_for("the grant at node 3", || {
        p3.grant(DcId(1), Endpoint(10)) == Some((NodeId(1), NodeId(2), gen))
    })
    .await;
    let mut new = spec("new", 10);
    new.gen = gen;
    new.announce = Announce::OnFirstFrame;
    p2.add_port(new, &port("new")).await.unwrap();
    let mut vm = VmEnd::open(&port("new")).await.unwrap();
    vm.send(&frame(Kind::Send, 10, 30, 1)).await.unwrap();
    wait_for("10 on node 2 everywhere", || on(&p1, 2) && on(&p3, 2)).await;
    p1.move_port(old, NodeId(2), gen).await.unwrap();
    p1.remove_port(old).await.unwrap();
    let mut buf = vec![0u8; 2048];
    assert_eq!(recv(&mut caller, &mut buf).await, (Kind::Send, 10, 30, 1));
    caller.send(&frame(Kind::SendRec, 30, 10, 7)).await.unwrap();
    assert_eq!(recv(&mut vm, &mut buf).await, (Kind::SendRec, 30, 10, 7));
    assert!(on(&p3, 2), "the old place's unbind did not take it back");
    for p in [&p1, &p2, &p3] {
        p.shutdown();
    }
}
