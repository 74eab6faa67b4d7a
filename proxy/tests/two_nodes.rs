//! Two proxies on loopback, instances as raw sockets: routing across a peer link, LAN flooding, and a peer
//! going down.

mod common;

use common::{free_port, m3_frame, wait_for};
use std::path::Path;
use std::time::Duration;

use dvs_proxy::port::{PortKind, VmEnd};
use dvs_proxy::{Announce, ClusterMap, DcInfo, NodeInfo, PortSpec, Proxy, ProxyConfig};
use m3ipc_core::wire::ethernet::ETH_HEADER_LEN;
use m3ipc_core::wire::{FrameRepr, Kind};
use m3ipc_core::{DcId, Endpoint, ErrorCode, NodeId};

fn cluster() -> ClusterMap {
    let node = |id: u16| NodeInfo {
        id,
        proxy: format!("127.0.0.1:{}", free_port()).parse().unwrap(),
        api: "127.0.0.1:1".parse().unwrap(),
    };
    ClusterMap {
        nodes: vec![node(1), node(2)],
        dcs: vec![DcInfo {
            id: 1,
            name: "one".into(),
            nodes: vec![1, 2],
            limit: Default::default(),
            quota: Default::default(),
        }],
    }
}

fn sendrec(src: u32, dst: u32, seq: u64) -> Vec<u8> {
    m3_frame(Kind::SendRec, 1, src, dst, seq)
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

fn kind(dir: &Path, name: &str, stream: bool) -> PortKind {
    if stream {
        PortKind::Stream {
            path: dir.join(format!("{name}.sock")),
        }
    } else {
        PortKind::Dgram {
            proxy_path: dir.join(format!("{name}-p.sock")),
            vm_path: dir.join(format!("{name}-vm.sock")),
        }
    }
}

async fn recv_repr(vm: &mut VmEnd, buf: &mut [u8]) -> (Kind, u32, u32, u64, u16) {
    let n = tokio::time::timeout(Duration::from_secs(5), vm.recv(buf))
        .await
        .expect("a frame in time")
        .unwrap();
    let r = FrameRepr::parse(&buf[ETH_HEADER_LEN..n]).unwrap();
    (
        r.kind,
        r.src.0,
        r.dst.0,
        if r.kind == Kind::Error { r.aux } else { r.seq },
        r.code,
    )
}

async fn run(stream: bool) {
    let dir = tempdir();
    let cluster = cluster();
    let p1 = Proxy::start(ProxyConfig::new(NodeId(1), cluster.clone()).unwrap())
        .await
        .unwrap();
    let p2 = Proxy::start(ProxyConfig::new(NodeId(2), cluster.clone()).unwrap())
        .await
        .unwrap();
    wait_for("link up", || {
        p1.peer_is_up(NodeId(2)) && p2.peer_is_up(NodeId(1))
    })
    .await;

    let (ka, kb) = (kind(&dir, "a", stream), kind(&dir, "b", stream));
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
    for seq in 1..=100 {
        a.send(&sendrec(10, 20, seq)).await.unwrap();
        assert_eq!(
            recv_repr(&mut b, &mut buf).await,
            (Kind::SendRec, 10, 20, seq, 0)
        );
        let mut reply = sendrec(20, 10, seq);
        reply[ETH_HEADER_LEN + 3] = Kind::Reply as u8;
        b.send(&reply).await.unwrap();
        assert_eq!(
            recv_repr(&mut a, &mut buf).await,
            (Kind::Reply, 20, 10, seq, 0)
        );
    }
    let s1 = p1.stats();
    assert_eq!(s1.ports["a"].rx.frames, 100);
    assert_eq!(s1.peers[&2].rx.frames, 100);
    assert!(p2.stats().peers[&1].writes >= 1);
    // Both proxies timed the 100 calls (the caller's towards the peer, the callee's towards its port).
    for p in [&p1, &p2] {
        let calls = &p.stats().dcs[&1].calls;
        assert_eq!((calls.sendrec.count, calls.failed), (100, 0));
        assert!(calls.sendrec.sum_us > 0);
    }
    // Each side pings the other when the link comes up and every heartbeat period after.
    wait_for("round trips measured", || {
        [(&p1, 2), (&p2, 1)]
            .iter()
            .all(|(p, peer)| p.stats().peers[peer].pongs >= 1)
    })
    .await;
    let rtt = p1.stats().peers[&2].rtt_us.unwrap();
    assert!(rtt < 1_000_000, "a loopback round trip of {rtt} µs");

    // Node 2 goes away: calls to its endpoints fail with NodeUnreachable, quickly.
    p2.shutdown();
    drop(p2);
    wait_for("link down", || !p1.peer_is_up(NodeId(2))).await;
    a.send(&sendrec(10, 20, 101)).await.unwrap();
    assert_eq!(
        recv_repr(&mut a, &mut buf).await,
        (Kind::Error, 20, 10, 101, ErrorCode::NodeUnreachable as u16)
    );
    p1.shutdown();
}

fn tempdir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!(
        "dvs-proxy-test-{}-{}",
        std::process::id(),
        free_port()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dgram_ports_across_two_nodes() {
    run(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_ports_across_two_nodes() {
    run(true).await;
}
