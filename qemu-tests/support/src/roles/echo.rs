//! `host-echo`: the VOS echo service as a host program: an engine over the node's proxy port, no VM.
//! Every endpoint of the boot configuration echoes sendrecs and counts notifications; Counters go out at
//! most once per stats interval (1 s when unset) when they changed. The benchmark baseline for "the same
//! protocol without a guest".

use std::time::{Duration, Instant};

use dvs_vos_abi::{Counters, Service};
use m3ipc_core::{Completion, Endpoint, Event};

use crate::double::{io_err, Double, DoubleError, Knobs};

pub(super) fn run(mut d: Double, knobs: &Knobs) -> Result<(), DoubleError> {
    knobs.only("host-echo", &["buf"])?;
    let buf: usize = knobs.num("buf", d.cfg.echo_buffer as usize)?;
    let endpoints = d.cfg.endpoints.clone();
    if endpoints.is_empty() {
        return Err(DoubleError::Usage(
            "host-echo: the boot config has no endpoint".into(),
        ));
    }
    let mut port = d.engine(&endpoints)?;
    let now = port.now();
    for &e in &endpoints {
        let ep = Endpoint(e);
        port.engine
            .set_buffer(ep, vec![0; buf])
            .and_then(|()| port.engine.receive(now, ep, Endpoint::ANY, None))
            .map_err(|c| DoubleError::Engine(format!("echo on endpoint {e}: {c:?}")))?;
    }
    d.ready(&endpoints, &[Service::Echo])?;
    let interval = Duration::from_secs(u64::from(d.cfg.stats_interval_s.max(1)));
    let mut c = Counters::default();
    let mut sent = c.clone();
    let mut next = Instant::now() + interval;
    loop {
        port.poll(next.saturating_duration_since(Instant::now()))
            .map_err(io_err("NIC closed"))?;
        while let Some(ev) = port.next_event() {
            let Event::Done { ep, result } = ev else {
                continue;
            };
            let now = port.now();
            if let Ok(Completion::Received { msg, needs_reply }) = result {
                if msg.is_notify() {
                    c.notify_received += 1;
                } else {
                    c.echo_received += 1;
                }
                if needs_reply && port.engine.reply(now, ep, msg.source, msg).is_ok() {
                    c.echo_replied += 1;
                }
            }
            // Whatever ended the receive, post the next one.
            let _ = port.engine.receive(now, ep, Endpoint::ANY, None);
        }
        if Instant::now() >= next {
            next = Instant::now() + interval;
            let st = port.engine.stats();
            c.frames_in = st.frames_in;
            c.frames_out = st.frames_out;
            c.duplicates = st.duplicates;
            c.retransmits = st.retransmits;
            if c != sent {
                d.counters(c.clone())?;
                sent = c.clone();
            }
        }
    }
}
