//! Benchmark client: N sendrecs against a peer endpoint (median, p99, ops/s), then a vcopy
//! of M bytes to the peer and back.

use crate::arch::time;
use crate::ipc::{self, IpcRef};
use crate::println;
use alloc::vec::Vec;
use core::time::Duration;
use m3ipc_core::{Endpoint, Message};

/// Runs the benchmark from `ep` against `peer` and prints one line per part.
pub async fn run(ipc: IpcRef, ep: Endpoint, peer: Endpoint, n: u32, vcopy_len: u32) {
    let timeout = Some(Duration::from_secs(5));
    let mut lat = Vec::with_capacity(n as usize);
    let start = time::rdtsc();
    let mut msg = Message::new(1);
    for i in 0..n {
        msg.set_u32(0, i);
        let t0 = time::rdtsc();
        match ipc::sendrec(&ipc, ep, peer, msg, timeout).await {
            Ok(r) if r.u32_at(0) == Some(i) => lat.push(time::rdtsc() - t0),
            Ok(_) => {
                println!("dvs: bench FAILED sendrec {i}: reply payload differs");
                return;
            }
            Err(e) => {
                println!("dvs: bench FAILED sendrec {i} to {}: {e:?}", peer.0);
                return;
            }
        }
    }
    let total_ns = time::ticks_to_ns(time::rdtsc() - start).max(1);
    lat.sort_unstable();
    let pick = |q: usize| {
        lat.get((lat.len() * q / 100).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    println!(
        "dvs: bench sendrec n={n} median_ns={} p99_ns={} ops_per_s={}",
        time::ticks_to_ns(pick(50)),
        time::ticks_to_ns(pick(99)),
        n as u64 * 1_000_000_000 / total_ns
    );
    if vcopy_len == 0 {
        return;
    }
    let len = vcopy_len as u64;
    let t0 = time::rdtsc();
    let push = ipc::vcopy(&ipc, ep, ep, 0, peer, 0, len, Some(Duration::from_secs(30))).await;
    let t1 = time::rdtsc();
    let pull = ipc::vcopy(&ipc, ep, peer, 0, ep, 0, len, Some(Duration::from_secs(30))).await;
    let t2 = time::rdtsc();
    match (push, pull) {
        (Ok(_), Ok(_)) => {
            let (a, b) = (
                time::ticks_to_ns(t1 - t0).max(1),
                time::ticks_to_ns(t2 - t1).max(1),
            );
            println!(
                "dvs: bench vcopy bytes={len} push_us={} pull_us={} push_mb_s={} pull_mb_s={}",
                a / 1000,
                b / 1000,
                len * 1000 / a,
                len * 1000 / b
            );
        }
        (p, q) => println!("dvs: bench FAILED vcopy {len} bytes: push {p:?} pull {q:?}"),
    }
}
