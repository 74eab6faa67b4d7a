//! `arp-probe`: asks who-has `ask=` on the DC's virtual LAN and reports the answer (or None). It answers
//! ARP for its own address meanwhile, so other probes can find it.

use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dvs_vos_abi::Report;

use crate::arp::Arp;
use crate::double::{idle, io_err, Double, DoubleError, Knobs};

pub(super) fn run(mut d: Double, knobs: &Knobs) -> Result<(), DoubleError> {
    knobs.only("arp-probe", &["ask", "ip", "wait_ms"])?;
    let target = knobs
        .ip("ask")?
        .ok_or_else(|| DoubleError::Usage("arp-probe: ask=A.B.C.D is required".into()))?;
    let me = knobs
        .ip("ip")?
        .or_else(|| d.fabric_ip())
        .unwrap_or(Ipv4Addr::UNSPECIFIED);
    let wait = Duration::from_millis(knobs.num("wait_ms", 1500)?);
    let endpoints = d.cfg.endpoints.clone();
    let mut port = d.engine(&endpoints)?;
    let mac = port.mac();
    let answer: Arc<Mutex<Option<[u8; 6]>>> = Arc::new(Mutex::new(None));
    let seen = answer.clone();
    port.on_other = Some(Box::new(move |frame: &[u8]| {
        let arp = Arp::parse(frame)?;
        if arp.op == crate::arp::REPLY && arp.spa == target {
            *seen.lock().unwrap_or_else(|p| p.into_inner()) = Some(arp.sha);
        }
        arp.answer(mac, me).map(|a| a.to_frame())
    }));
    // A gratuitous ARP first: the switch learns this port's MAC, as it does from a booting VOS.
    port.send_raw(&Arp::who_has(mac, me, me).to_frame())
        .map_err(io_err("sending a gratuitous ARP"))?;
    d.ready(&endpoints, &[])?;
    let ask = Arp::who_has(mac, me, target).to_frame();
    let started = Instant::now();
    let mut asked = 0;
    let found = loop {
        if let Some(m) = *answer.lock().unwrap_or_else(|p| p.into_inner()) {
            break Some(m);
        }
        let left = wait.saturating_sub(started.elapsed());
        if left.is_zero() {
            break None;
        }
        // Three requests, spread over the first part of the wait.
        if asked < 3 && started.elapsed() >= wait / 8 * asked {
            port.send_raw(&ask)
                .map_err(io_err("sending the ARP request"))?;
            asked += 1;
        }
        port.poll(left.min(wait / 8)).map_err(io_err("NIC"))?;
        while port.next_event().is_some() {}
    };
    d.report(Report::Arp {
        target: target.octets(),
        answer: found,
    })?;
    idle(&mut port)
}
