//! In-guest sendrec loop between two endpoints of one engine: the cost of the IPC path
//! itself, with no NIC and no host in the loop.

use crate::arch::control;
use crate::println;
use dvs_vos_abi::control::BenchStep;
use dvs_vos_abi::{ControlRecord, Report};
use m3ipc_core::engine::{Completion, Engine, EngineConfig, Event};
use m3ipc_core::{DcId, Endpoint, Instant, Message};

/// The loop's client and server endpoints.
const CLIENT: Endpoint = Endpoint(1);
const SERVER: Endpoint = Endpoint(2);

/// Result of the loop.
#[derive(Clone, Copy, Debug)]
pub struct LocalBench {
    /// Round trips done.
    pub calls: u32,
    /// Nanoseconds per sendrec (request, receive, reply).
    pub ns_per_call: u64,
}

fn done(e: &mut Engine, ep: Endpoint) -> Option<Completion> {
    match e.poll_event()? {
        Event::Done {
            ep: got,
            result: Ok(c),
        } if got == ep => Some(c),
        _ => None,
    }
}

/// Runs `n` sendrec/receive/reply rounds between endpoints 1 and 2 of a private engine.
pub fn run(dc: u16, n: u32) -> Result<LocalBench, &'static str> {
    let mut e = Engine::new(EngineConfig::new(DcId(dc), 1));
    let (client, server) = (CLIENT, SERVER);
    e.bind(client).map_err(|_| "bind client")?;
    e.bind(server).map_err(|_| "bind server")?;
    let now = Instant::from_micros(1);
    let mut msg = Message::new(7);
    let start = crate::arch::time::rdtsc();
    for i in 0..n {
        msg.set_u32(0, i);
        e.receive(now, server, Endpoint::ANY, None)
            .map_err(|_| "receive")?;
        e.sendrec(now, client, server, msg, None)
            .map_err(|_| "sendrec")?;
        let Some(Completion::Received { msg: req, .. }) = done(&mut e, server) else {
            return Err("server got no request");
        };
        e.reply(now, server, client, req).map_err(|_| "reply")?;
        let Some(Completion::Replied(r)) = done(&mut e, client) else {
            return Err("client got no reply");
        };
        if r.u32_at(0) != Some(i) {
            return Err("reply payload differs");
        }
    }
    let ns = crate::arch::time::ticks_to_ns(crate::arch::time::rdtsc() - start);
    Ok(LocalBench {
        calls: n,
        ns_per_call: ns / n.max(1) as u64,
    })
}

/// Runs the loop `n` times and reports it: console line `dvs: local-sendrec n= ns_per_call=`
/// and a `Report::LocalSendrec` record (or `Report::Failed` on the control channel).
pub fn report(dc: u16, n: u32) {
    match run(dc, n) {
        Ok(r) => {
            println!(
                "dvs: local-sendrec n={} ns_per_call={}",
                r.calls, r.ns_per_call
            );
            control::send(&ControlRecord::Report(Report::LocalSendrec {
                calls: r.calls,
                ns_per_call: r.ns_per_call,
            }));
        }
        Err(e) => {
            println!("dvs: local-sendrec FAILED: {e}");
            control::send(&ControlRecord::Report(Report::Failed {
                step: BenchStep::Sendrec,
                index: 0,
                peer: SERVER.0,
                code: 0,
                error: e.into(),
            }));
        }
    }
}
