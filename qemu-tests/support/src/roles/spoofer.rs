//! `spoofer`: sends M3-IPC frames with a source endpoint it does not hold (`as=`), to `to=`. The node's
//! proxy must drop and count them at this port.

use dvs_vos_abi::Report;
use m3ipc_core::wire::{FrameRepr, Kind};
use m3ipc_core::{DcId, Endpoint};

use crate::double::{idle, io_err, Double, DoubleError, Knobs};

pub(super) fn run(mut d: Double, knobs: &Knobs) -> Result<(), DoubleError> {
    knobs.only("spoofer", &["as", "to", "count"])?;
    let as_ep: u32 = knobs.opt_num("as")?.ok_or_else(|| {
        DoubleError::Usage("spoofer: as=EP (the endpoint to send as) is required".into())
    })?;
    let to: u32 = match knobs.opt_num("to")? {
        Some(t) => t,
        None => d.cfg.bench.peer.ok_or_else(|| {
            DoubleError::Usage("spoofer: to=EP (or a bench peer) is required".into())
        })?,
    };
    let count: u32 = knobs.num("count", 10)?;
    let endpoints = d.cfg.endpoints.clone();
    let mut port = d.engine(&endpoints)?;
    d.ready(&endpoints, &[])?;
    let payload = [0u8; 60];
    let repr = FrameRepr {
        kind: Kind::Send,
        dc: DcId(d.cfg.dc),
        flags: 0,
        src: Endpoint(as_ep),
        dst: Endpoint(to),
        seq: 1,
        aux: 0,
        code: 0,
        payload: &payload,
    };
    let mut buf = vec![0u8; repr.buffer_len()];
    repr.emit(&mut buf)
        .map_err(|e| DoubleError::Engine(format!("building the spoofed frame: {e:?}")))?;
    for _ in 0..count {
        port.send_m3(&buf)
            .map_err(io_err("sending a spoofed frame"))?;
    }
    d.report(Report::Injected {
        frames: count,
        what: format!("M3-IPC Send as endpoint {as_ep} to {to}"),
    })?;
    idle(&mut port)
}
