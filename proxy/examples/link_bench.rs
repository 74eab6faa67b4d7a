//! What TLS costs on a peer link: two proxies on loopback, one VM port each (stream sockets), plain TCP and then
//! mutual TLS 1.3. Prints the sendrec round trip (VM → proxy → link → proxy → VM and back) and the one-way rate
//! of full-size VcopyData frames. Not a test: `cargo run --release -p dvs-proxy --example link_bench`.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dvs_proxy::port::{PortKind, VmEnd};
use dvs_proxy::tls::{issue_node_cert, new_cluster_ca, PeerTls};
use dvs_proxy::{Announce, ClusterMap, DcInfo, NodeInfo, PortSpec, Proxy, ProxyConfig};
use m3ipc_core::wire::ethernet::{EthernetHeader, ETH_HEADER_LEN};
use m3ipc_core::wire::{FrameRepr, Kind, ETHERTYPE_M3IPC};
use m3ipc_core::{DcId, Endpoint, NodeId};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn frame(kind: Kind, src: u32, dst: u32, seq: u64, len: usize) -> Vec<u8> {
    let payload = vec![7u8; len];
    let repr = FrameRepr {
        kind,
        dc: DcId(1),
        flags: 0,
        src: Endpoint(src),
        dst: Endpoint(dst),
        seq,
        aux: 0,
        code: 0,
        payload: &payload,
    };
    let mut buf = vec![0u8; ETH_HEADER_LEN + repr.buffer_len()];
    let eth = EthernetHeader {
        dst: [0xff; 6],
        src: [2, 0, 0, 0, 0, src as u8],
        ethertype: ETHERTYPE_M3IPC,
    };
    eth.emit(&mut buf).expect("room for the header");
    repr.emit(&mut buf[ETH_HEADER_LEN..])
        .expect("room for the frame");
    buf
}

async fn run(tls: bool) -> anyhow::Result<(Duration, Duration, f64)> {
    let cluster = ClusterMap {
        nodes: [1u16, 2]
            .iter()
            .map(|&id| NodeInfo {
                id,
                proxy: format!("127.0.0.1:{}", free_port())
                    .parse()
                    .expect("an address"),
                api: "127.0.0.1:1".parse().expect("an address"),
            })
            .collect(),
        dcs: vec![DcInfo {
            id: 1,
            name: "one".into(),
            nodes: vec![1, 2],
            limit: Default::default(),
            quota: Default::default(),
        }],
    };
    let ca = new_cluster_ca("bench")?;
    let mut proxies = vec![];
    for id in [1u16, 2] {
        let mut cfg = ProxyConfig::new(NodeId(id), cluster.clone())?;
        if tls {
            let pem = issue_node_cert(&ca, &format!("n{id}"), NodeId(id))?;
            let t = PeerTls::from_pem(
                ca.cert.as_bytes(),
                pem.cert.as_bytes(),
                pem.key.as_bytes(),
                NodeId(id),
            )?;
            cfg.tls = Some(Arc::new(t));
        }
        proxies.push(Proxy::start(cfg).await?);
    }
    let (p1, p2) = (&proxies[0], &proxies[1]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(p1.peer_is_up(NodeId(2)) && p2.peer_is_up(NodeId(1))) {
        anyhow::ensure!(Instant::now() < deadline, "link did not come up");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let dir = std::env::temp_dir().join(format!("dvs-link-bench-{}-{tls}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let kind = |n: &str| PortKind::Stream {
        path: dir.join(format!("{n}.sock")),
    };
    let spec = |n: &str, ep| PortSpec {
        name: n.into(),
        dc: DcId(1),
        endpoints: vec![Endpoint(ep)],
        mac: None,
        gen: 1,
        announce: Announce::Now,
    };
    p1.add_port(spec("a", 10), &kind("a")).await?;
    p2.add_port(spec("b", 20), &kind("b")).await?;
    let mut a = VmEnd::open(&kind("a")).await?;
    let mut b = VmEnd::open(&kind("b")).await?;
    while p1
        .lookup(DcId(1), Endpoint(20))
        .is_none_or(|p| p.node != NodeId(2))
    {
        anyhow::ensure!(Instant::now() < deadline, "no placement");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut buf = vec![0u8; 2048];
    let mut rtts = vec![];
    for seq in 1..=4000u64 {
        let t = Instant::now();
        let two_s = Duration::from_secs(2);
        a.send(&frame(Kind::SendRec, 10, 20, seq, 60)).await?;
        tokio::time::timeout(two_s, b.recv(&mut buf)).await??;
        b.send(&frame(Kind::Reply, 20, 10, seq, 60)).await?;
        tokio::time::timeout(two_s, a.recv(&mut buf)).await??;
        if seq > 500 {
            rtts.push(t.elapsed());
        }
    }
    rtts.sort();
    let (median, p99) = (rtts[rtts.len() / 2], rtts[rtts.len() * 99 / 100]);
    // One way, full frames: a sender and a receiver at once.
    const N: u64 = 100_000;
    let big = frame(Kind::VcopyData, 10, 20, 1, m3ipc_core::wire::VCOPY_CHUNK);
    let t = Instant::now();
    let sender = tokio::spawn(async move {
        for _ in 0..N {
            a.send(&big).await?;
        }
        anyhow::Ok(a)
    });
    let mut got = 0u64;
    let mut bytes = 0usize;
    while got < N {
        match tokio::time::timeout(Duration::from_secs(2), b.recv(&mut buf)).await {
            Ok(n) => {
                bytes += n?;
                got += 1;
            }
            Err(_) => break, // frames dropped at a full queue: count what came
        }
    }
    let secs = t.elapsed().as_secs_f64();
    sender.abort();
    for p in &proxies {
        p.shutdown();
    }
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "  {}: {got} of {N} frames arrived, {:.1} MB/s",
        if tls { "tls" } else { "tcp" },
        bytes as f64 / secs / 1e6
    );
    Ok((median, p99, bytes as f64 / secs / 1e6))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut rows = vec![];
    for round in 0..3 {
        for tls in [false, true] {
            let (m, p, r) = run(tls).await?;
            rows.push((round, tls, m, p, r));
        }
    }
    println!("round link  sendrec median  p99      VcopyData frames one way (VM port bound)");
    for (round, tls, m, p, r) in rows {
        println!(
            "{round}     {}   {:>8.1} µs   {:>6.1} µs  {r:>7.1} MB/s",
            if tls { "tls" } else { "tcp" },
            m.as_secs_f64() * 1e6,
            p.as_secs_f64() * 1e6
        );
    }
    Ok(())
}
