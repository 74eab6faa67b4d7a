//! `garbage`: sends malformed frames: M3-IPC with a bad magic, truncated headers, runts shorter than an
//! Ethernet header, and an unknown EtherType. The node's proxy must drop and count them, and keep serving.

use dvs_vos_abi::Report;
use m3ipc_core::wire::ethernet::ETH_HEADER_LEN;
use m3ipc_core::wire::ETHERTYPE_M3IPC;

use crate::double::{idle, io_err, Double, DoubleError, Knobs};

/// The `i`-th malformed frame from `mac`.
fn garbage_frame(mac: [u8; 6], i: u32) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&mac);
    match i % 4 {
        // M3-IPC ethertype, bytes that are not an M3-IPC frame.
        0 => {
            f.extend_from_slice(&ETHERTYPE_M3IPC.to_be_bytes());
            f.extend((0..64u32).map(|b| (b.wrapping_mul(31).wrapping_add(i)) as u8));
        }
        // M3-IPC ethertype, a header cut short.
        1 => {
            f.extend_from_slice(&ETHERTYPE_M3IPC.to_be_bytes());
            f.extend_from_slice(&[0x4d, 0x33]);
        }
        // A runt: shorter than an Ethernet header.
        2 => f.truncate(ETH_HEADER_LEN - 4),
        // An EtherType nobody speaks.
        _ => {
            f.extend_from_slice(&0x88b5u16.to_be_bytes());
            f.resize(60, 0xa5);
        }
    }
    f
}

pub(super) fn run(mut d: Double, knobs: &Knobs) -> Result<(), DoubleError> {
    knobs.only("garbage", &["count"])?;
    let count: u32 = knobs.num("count", 32)?;
    let endpoints = d.cfg.endpoints.clone();
    let mut port = d.engine(&endpoints)?;
    d.ready(&endpoints, &[])?;
    let mac = port.mac();
    for i in 0..count {
        port.send_raw(&garbage_frame(mac, i))
            .map_err(io_err("sending a garbage frame"))?;
    }
    d.report(Report::Injected {
        frames: count,
        what: "malformed frames (bad magic, truncated, runts, unknown EtherType)".into(),
    })?;
    idle(&mut port)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_is_malformed() {
        for i in 0..4 {
            let f = garbage_frame([2, 0, 0, 0, 0, 1], i);
            if let Ok((_, m3)) = m3ipc_core::wire::ethernet::EthernetHeader::m3ipc_payload(&f) {
                assert!(
                    m3ipc_core::wire::FrameRepr::parse(m3).is_err(),
                    "frame {i} parses"
                );
            }
        }
    }
}
