//! One proxy on a real runtime, two DCs: one DC's instance floods, the other DC's frames all get through, and
//! the flood is dropped at its DC's rate limit and counted.

mod common;

use common::{free_port, m3_frame};
use std::time::Duration;

use dvs_proxy::cluster::DcLimit;
use dvs_proxy::port::{PortKind, VmEnd};
use dvs_proxy::{Announce, ClusterMap, DcInfo, NodeInfo, PortSpec, Proxy, ProxyConfig};
use m3ipc_core::wire::ethernet::ETH_HEADER_LEN;
use m3ipc_core::wire::{FrameRepr, Kind};
use m3ipc_core::{DcId, Endpoint, NodeId};

/// One node; DC 1 limited to 100 frames/s with a burst of 10, DC 2 at the defaults.
fn cluster() -> ClusterMap {
    let dc = |id: u16, limit: DcLimit| DcInfo {
        id,
        name: format!("dc{id}"),
        nodes: vec![1],
        limit,
        quota: Default::default(),
    };
    ClusterMap {
        nodes: vec![NodeInfo {
            id: 1,
            proxy: format!("127.0.0.1:{}", free_port()).parse().unwrap(),
            api: "127.0.0.1:1".parse().unwrap(),
        }],
        dcs: vec![
            dc(
                1,
                DcLimit {
                    frames_per_s: 100,
                    burst_frames: 10,
                    ..DcLimit::default()
                },
            ),
            dc(2, DcLimit::default()),
        ],
    }
}

fn send(dc: u16, src: u32, dst: u32, seq: u64) -> Vec<u8> {
    m3_frame(Kind::Send, dc, src, dst, seq)
}

fn spec(name: &str, dc: u16, ep: u32) -> PortSpec {
    PortSpec {
        name: name.into(),
        dc: DcId(dc),
        endpoints: vec![Endpoint(ep)],
        mac: None,
        gen: 1,
        announce: Announce::Now,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_dc_does_not_starve_another() {
    let dir = std::env::temp_dir().join(format!(
        "dvs-proxy-flood-{}-{}",
        std::process::id(),
        free_port()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let p = Proxy::start(ProxyConfig::new(NodeId(1), cluster()).unwrap())
        .await
        .unwrap();
    let kind = |name: &str| PortKind::Stream {
        path: dir.join(format!("{name}.sock")),
    };
    let (ka, kb, kc, kd) = (kind("a"), kind("b"), kind("c"), kind("d"));
    p.add_port(spec("a", 1, 10), &ka).await.unwrap();
    p.add_port(spec("b", 1, 20), &kb).await.unwrap();
    p.add_port(spec("c", 2, 30), &kc).await.unwrap();
    p.add_port(spec("d", 2, 40), &kd).await.unwrap();
    let mut a = VmEnd::open(&ka).await.unwrap();
    let _b = VmEnd::open(&kb).await.unwrap();
    let mut c = VmEnd::open(&kc).await.unwrap();
    let mut d = VmEnd::open(&kd).await.unwrap();

    let mut buf = vec![0u8; 2048];
    let start = std::time::Instant::now();
    for seq in 1..=200u64 {
        a.send(&send(1, 10, 20, seq)).await.unwrap();
        if seq % 4 == 0 {
            let seq = seq / 4;
            c.send(&send(2, 30, 40, seq)).await.unwrap();
            let n = tokio::time::timeout(Duration::from_secs(5), d.recv(&mut buf))
                .await
                .expect("DC 2's frame in time")
                .unwrap();
            let r = FrameRepr::parse(&buf[ETH_HEADER_LEN..n]).unwrap();
            assert_eq!((r.kind, r.src.0, r.dst.0, r.seq), (Kind::Send, 30, 40, seq));
        }
    }
    for _ in 0..250 {
        if p.stats().ports["a"].rx.frames == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let secs = start.elapsed().as_secs_f64();
    let s = p.stats();
    assert_eq!(s.ports["a"].rx.frames, 200);
    let limited = s.ports["a"].drops.rate_limited;
    // At most the burst plus what the time since the start refilled got through.
    let passed_max = 10 + (secs * 100.0).ceil() as u64 + 1;
    assert!(
        limited + passed_max >= 200 && limited > 0,
        "{limited} rate-limited in {secs} s"
    );
    assert_eq!(s.dcs[&1].drops.rate_limited, limited);
    assert_eq!(s.ports["c"].drops.rate_limited, 0);
    assert_eq!(s.dcs.get(&2).map_or(0, |d| d.drops.rate_limited), 0);
    assert_eq!(s.ports["c"].rx.frames, 50);
    p.shutdown();
    let _ = std::fs::remove_dir_all(&dir);
}
