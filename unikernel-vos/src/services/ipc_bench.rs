//! Benchmark client: N sendrecs against a peer endpoint (median, p99, ops/s), then notifications
//! sent back to back, then a vcopy of M bytes to the peer and back. Each part is reported on the
//! console (`dvs: bench ...`) and on the control channel (`Report`); the first failure ends the
//! run with `dvs: bench FAILED ...` and `Report::Failed`.

use crate::arch::{control, time};
use crate::ipc::{self, IpcRef};
use crate::println;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::time::Duration;
use dvs_vos_abi::boot::BenchConfig;
use dvs_vos_abi::control::BenchStep;
use dvs_vos_abi::{ControlRecord, Report};
use m3ipc_core::{Endpoint, ErrorCode, Message, VcopyRequest};

/// Timeout of one sendrec.
const SENDREC_TIMEOUT: Duration = Duration::from_secs(5);
/// Timeout of one vcopy.
const VCOPY_TIMEOUT: Duration = Duration::from_secs(30);

fn report(r: Report) {
    control::send(&ControlRecord::Report(r));
}

/// A failed step: its console line has been printed; this sends the record.
fn failed(step: BenchStep, index: u32, peer: Endpoint, code: Option<ErrorCode>, error: String) {
    report(Report::Failed {
        step,
        index,
        peer: peer.0,
        code: code.map_or(0, |c| c as u16),
        error,
    });
}

/// Runs the benchmark from `ep` against `peer` with the knobs of `bench`.
pub async fn run(
    ipc: IpcRef,
    ep: Endpoint,
    peer: Endpoint,
    bench: BenchConfig,
) -> Result<(), &'static str> {
    if sendrecs(&ipc, ep, peer, bench.sendrecs).await
        && notifies(&ipc, ep, peer, bench.notifies)
        && bench.vcopy > 0
    {
        vcopy(&ipc, ep, peer, bench.vcopy as u64).await;
    }
    Ok(())
}

async fn sendrecs(ipc: &IpcRef, ep: Endpoint, peer: Endpoint, n: u32) -> bool {
    let mut lat = Vec::with_capacity(n as usize);
    let start = time::rdtsc();
    let mut msg = Message::new(1);
    for i in 0..n {
        msg.set_u32(0, i);
        let t0 = time::rdtsc();
        match ipc::sendrec(ipc, ep, peer, msg, Some(SENDREC_TIMEOUT)).await {
            Ok(r) if r.u32_at(0) == Some(i) => lat.push(time::rdtsc() - t0),
            Ok(_) => {
                println!("dvs: bench FAILED sendrec {i}: reply payload differs");
                failed(
                    BenchStep::Sendrec,
                    i,
                    peer,
                    None,
                    "reply payload differs".into(),
                );
                return false;
            }
            Err(e) => {
                println!("dvs: bench FAILED sendrec {i} to {}: {e:?}", peer.0);
                failed(BenchStep::Sendrec, i, peer, Some(e), format!("{e:?}"));
                return false;
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
    let (median_ns, p99_ns) = (time::ticks_to_ns(pick(50)), time::ticks_to_ns(pick(99)));
    let ops_per_s = n as u64 * 1_000_000_000 / total_ns;
    println!(
        "dvs: bench sendrec n={n} median_ns={median_ns} p99_ns={p99_ns} ops_per_s={ops_per_s}"
    );
    report(Report::Sendrecs {
        n,
        median_ns,
        p99_ns,
        ops_per_s,
    });
    true
}

/// Sends `n` notifications back to back (0: none, no report). Those the peer has not received
/// yet coalesce, so it counts between 1 and `n`.
fn notifies(ipc: &IpcRef, ep: Endpoint, peer: Endpoint, n: u32) -> bool {
    if n == 0 {
        return true;
    }
    for i in 0..n {
        if let Err(e) = ipc::notify(ipc, ep, peer) {
            println!("dvs: bench FAILED notify {i} to {}: {e:?}", peer.0);
            failed(BenchStep::Notify, i, peer, Some(e), format!("{e:?}"));
            return false;
        }
    }
    println!("dvs: bench notify sent={n}");
    report(Report::Notifies { sent: n });
    true
}

async fn vcopy(ipc: &IpcRef, ep: Endpoint, peer: Endpoint, len: u64) {
    let (push, pull) = (
        VcopyRequest {
            src: ep,
            src_offset: 0,
            dst: peer,
            dst_offset: 0,
            len,
        },
        VcopyRequest {
            src: peer,
            src_offset: 0,
            dst: ep,
            dst_offset: 0,
            len,
        },
    );
    let t0 = time::rdtsc();
    let pushed = ipc::vcopy(ipc, ep, push, Some(VCOPY_TIMEOUT)).await;
    let t1 = time::rdtsc();
    let pulled = ipc::vcopy(ipc, ep, pull, Some(VCOPY_TIMEOUT)).await;
    let t2 = time::rdtsc();
    let failure = match (&pushed, &pulled) {
        (Err(e), _) => Some((0, *e)),
        (_, Err(e)) => Some((1, *e)),
        _ => None,
    };
    if let Some((index, e)) = failure {
        println!("dvs: bench FAILED vcopy {len} bytes: push {pushed:?} pull {pulled:?}");
        failed(BenchStep::Vcopy, index, peer, Some(e), format!("{e:?}"));
        return;
    }
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
    report(Report::Vcopy {
        bytes: len,
        push_us: a / 1000,
        pull_us: b / 1000,
    });
}
