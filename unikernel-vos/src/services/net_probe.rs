//! Service net-probe: tries a TCP connection to each `probe=` target, on every NIC with an address, and
//! reports for each whether one was made (`Report::Probe`). It serves nothing: it is how a test looks, from
//! inside a guest, at what a guest can reach (its DC's LAN, and nothing of its host).

use crate::arch::{control, time};
use crate::executor;
use crate::net::NetRef;
use crate::println;
use alloc::format;
use alloc::string::String;
use alloc::vec;
use dvs_vos_abi::boot::ProbeTarget;
use dvs_vos_abi::{ControlRecord, Report};
use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp;
use smoltcp::wire::{IpAddress, Ipv4Address};

/// How long one attempt may take.
const ATTEMPT_US: u64 = 1_500_000;
/// The first local port the probes use (one per attempt).
const LOCAL_PORT: u16 = 40_000;

/// Tries every target in turn, then ends (successfully: nothing to serve).
pub async fn run(net: NetRef, probes: alloc::vec::Vec<ProbeTarget>) -> Result<(), &'static str> {
    let mut local = LOCAL_PORT;
    for p in probes {
        let ports = net.borrow().ports.len();
        let mut reached = false;
        let mut details = vec![];
        for i in 0..ports {
            local = local.wrapping_add(1).max(LOCAL_PORT);
            let d = attempt(&net, i, p, local).await;
            reached |= d == "connected";
            details.push(format!("nic {i}: {d}"));
            if reached {
                break;
            }
        }
        let detail = if details.is_empty() {
            String::from("no NIC")
        } else {
            details.join(", ")
        };
        let [a, b, c, d] = p.addr;
        println!(
            "dvs: net-probe {a}.{b}.{c}.{d}:{} {}: {detail}",
            p.port,
            if reached { "reached" } else { "not reached" }
        );
        control::send(&ControlRecord::Report(Report::Probe {
            target: p.addr,
            port: p.port,
            reached,
            detail,
        }));
    }
    Ok(())
}

/// One TCP connection attempt to `p` from NIC `i`: `connected`, `refused`, `timed out`, or why it could not
/// start.
async fn attempt(net: &NetRef, i: usize, p: ProbeTarget, local: u16) -> &'static str {
    let handle: SocketHandle = {
        let mut n = net.borrow_mut();
        let Some(port) = n.ports.get_mut(i) else {
            return "no such NIC";
        };
        let Some(iface) = port.iface.as_mut() else {
            return "no address";
        };
        let mut s = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; 1024]),
            tcp::SocketBuffer::new(vec![0; 1024]),
        );
        let remote = (IpAddress::Ipv4(Ipv4Address::from(p.addr)), p.port);
        if s.connect(iface.context(), remote, local).is_err() {
            return "no route";
        }
        port.sockets.add(s)
    };
    let deadline = time::now_us() + ATTEMPT_US;
    let mut was_open = false;
    let outcome = loop {
        {
            let mut n = net.borrow_mut();
            let Some(port) = n.ports.get_mut(i) else {
                return "NIC gone";
            };
            let s = port.sockets.get_mut::<tcp::Socket>(handle);
            match s.state() {
                tcp::State::Established => break "connected",
                tcp::State::SynSent | tcp::State::SynReceived => was_open = true,
                tcp::State::Closed if was_open => break "refused",
                _ => {}
            }
        }
        if time::now_us() >= deadline {
            break "timed out";
        }
        executor::sleep_until((time::now_us() + 10_000).min(deadline)).await;
    };
    let mut n = net.borrow_mut();
    if let Some(port) = n.ports.get_mut(i) {
        port.sockets.get_mut::<tcp::Socket>(handle).abort();
        port.sockets.remove(handle);
    }
    outcome
}
