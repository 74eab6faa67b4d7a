//! `host-bench`: the VOS ipc-bench client as a host program (an engine over the node's proxy port, no VM):
//! on the first endpoint of the boot configuration, `bench.sendrecs` sendrecs to `bench.peer` (each reply
//! must carry the call's index back), then `bench.notifies` notifications back to back, then a vcopy of
//! `bench.vcopy` bytes to the peer and back, verified. Reports like the VOS: `Sendrecs`, `Notifies`,
//! `Vcopy`, or `Failed` at the first failing call (and stops there).

use std::time::{Duration, Instant};

use dvs_vos_abi::control::BenchStep;
use dvs_vos_abi::{Report, Service};
use m3ipc_core::engine::Event;
use m3ipc_core::{Completion, Endpoint, ErrorCode, Message, VcopyRequest};

use crate::double::{idle, io_err, Double, DoubleError, Knobs, Nic};
use dvs_instance::port::EnginePort;

/// How a call ended: the completion, or the error code.
fn call_done(
    port: &mut EnginePort<Nic>,
    ep: Endpoint,
    timeout: Duration,
) -> Result<Result<Completion, ErrorCode>, DoubleError> {
    let deadline = Instant::now() + timeout;
    loop {
        while let Some(ev) = port.next_event() {
            if let Event::Done { ep: e, result } = ev {
                if e == ep {
                    return Ok(result);
                }
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(Err(ErrorCode::Timeout));
        }
        port.poll(left).map_err(io_err("NIC"))?;
    }
}

fn failed(step: BenchStep, index: u32, peer: u32, code: u16, error: String) -> Report {
    Report::Failed {
        step,
        index,
        peer,
        code,
        error,
    }
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Runs the bench; the report that ends it.
fn bench(
    d: &Double,
    port: &mut EnginePort<Nic>,
    timeout: Duration,
) -> Result<Vec<Report>, DoubleError> {
    let ep = Endpoint(d.cfg.endpoints[0]);
    let peer = d.cfg.bench.peer.unwrap_or_default();
    let b = d.cfg.bench;
    let mut out = Vec::new();
    let mut lat = Vec::with_capacity(b.sendrecs as usize);
    let t0 = Instant::now();
    for i in 0..b.sendrecs {
        let mut msg = Message::new(1);
        msg.set_u64(0, u64::from(i));
        let sent = Instant::now();
        let now = port.now();
        let r = match port
            .engine
            .sendrec(now, ep, Endpoint(peer), msg, Some(timeout))
        {
            Ok(()) => call_done(port, ep, timeout + Duration::from_millis(100))?,
            Err(c) => Err(c),
        };
        match r {
            Ok(Completion::Replied(m)) if m.u64_at(0) == Some(u64::from(i)) => {
                lat.push(sent.elapsed().as_nanos() as u64)
            }
            Ok(_) => {
                out.push(failed(
                    BenchStep::Sendrec,
                    i,
                    peer,
                    0,
                    "reply payload differs".into(),
                ));
                return Ok(out);
            }
            Err(c) => {
                out.push(failed(
                    BenchStep::Sendrec,
                    i,
                    peer,
                    c as u16,
                    format!("{c:?}"),
                ));
                return Ok(out);
            }
        }
    }
    if b.sendrecs > 0 {
        let secs = t0.elapsed().as_secs_f64().max(1e-9);
        lat.sort_unstable();
        out.push(Report::Sendrecs {
            n: b.sendrecs,
            median_ns: percentile(&lat, 0.5),
            p99_ns: percentile(&lat, 0.99),
            ops_per_s: (f64::from(b.sendrecs) / secs) as u64,
        });
    }
    if b.notifies > 0 {
        let now = port.now();
        for i in 0..b.notifies {
            if let Err(c) = port.engine.notify(now, ep, Endpoint(peer)) {
                out.push(failed(
                    BenchStep::Notify,
                    i,
                    peer,
                    c as u16,
                    format!("{c:?}"),
                ));
                return Ok(out);
            }
        }
        port.flush();
        out.push(Report::Notifies { sent: b.notifies });
    }
    if b.vcopy > 0 {
        let len = u64::from(b.vcopy);
        let mut buf = vec![0u8; 2 * b.vcopy as usize];
        for (i, x) in buf.iter_mut().take(b.vcopy as usize).enumerate() {
            *x = (i as u32).wrapping_mul(2_654_435_761).to_be_bytes()[0];
        }
        port.engine
            .set_buffer(ep, buf)
            .map_err(|c| DoubleError::Engine(format!("bench buffer: {c:?}")))?;
        let big = timeout * 10;
        let mut times = [0u64; 2];
        let reqs = [
            VcopyRequest {
                src: ep,
                src_offset: 0,
                dst: Endpoint(peer),
                dst_offset: 0,
                len,
            },
            VcopyRequest {
                src: Endpoint(peer),
                src_offset: 0,
                dst: ep,
                dst_offset: len,
                len,
            },
        ];
        for (k, req) in reqs.into_iter().enumerate() {
            let t = Instant::now();
            let now = port.now();
            let r = match port.engine.vcopy(now, ep, req, Some(big)) {
                Ok(()) => call_done(port, ep, big + Duration::from_millis(100))?,
                Err(c) => Err(c),
            };
            match r {
                Ok(Completion::Copied { .. }) => times[k] = t.elapsed().as_micros() as u64,
                Ok(other) => {
                    out.push(failed(
                        BenchStep::Vcopy,
                        k as u32,
                        peer,
                        0,
                        format!("unexpected {other:?}"),
                    ));
                    return Ok(out);
                }
                Err(c) => {
                    out.push(failed(
                        BenchStep::Vcopy,
                        k as u32,
                        peer,
                        c as u16,
                        format!("{c:?}"),
                    ));
                    return Ok(out);
                }
            }
        }
        let exact = port
            .engine
            .buffer(ep)
            .is_some_and(|b| b[..b.len() / 2] == b[b.len() / 2..]);
        out.push(if exact {
            Report::Vcopy {
                bytes: len,
                push_us: times[0],
                pull_us: times[1],
            }
        } else {
            failed(
                BenchStep::Vcopy,
                1,
                peer,
                0,
                "pulled bytes differ from the pushed ones".into(),
            )
        });
    }
    Ok(out)
}

pub(super) fn run(mut d: Double, knobs: &Knobs) -> Result<(), DoubleError> {
    knobs.only("host-bench", &["timeout_ms"])?;
    let timeout = Duration::from_millis(knobs.num("timeout_ms", 5000)?);
    let endpoints = d.cfg.endpoints.clone();
    if endpoints.is_empty() || d.cfg.bench.peer.is_none() {
        return Err(DoubleError::Usage(
            "host-bench: the boot config needs an endpoint and a bench peer".into(),
        ));
    }
    let mut port = d.engine(&endpoints)?;
    d.ready(&endpoints, &[Service::IpcBench])?;
    for r in bench(&d, &mut port, timeout)? {
        d.report(r)?;
    }
    idle(&mut port)
}
