//! What the proxy's integration tests share: a free TCP port, an M3-IPC frame in Ethernet, waiting for a
//! condition.
//! (Each test binary uses a part of it.)
#![allow(dead_code)]

use std::net::TcpListener;

use m3ipc_core::wire::ethernet::{EthernetHeader, ETH_HEADER_LEN};
use m3ipc_core::wire::{FrameRepr, Kind, ETHERTYPE_M3IPC};
use m3ipc_core::{DcId, Endpoint};

/// A TCP port of 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An M3-IPC frame of `kind` in DC `dc`, `src` → `dst`, sequence `seq`, with a 60-byte payload,
/// broadcast from the MAC `02:00:00:00:00:<src>`.
pub fn m3_frame(kind: Kind, dc: u16, src: u32, dst: u32, seq: u64) -> Vec<u8> {
    let payload = [7u8; 60];
    let repr = FrameRepr {
        kind,
        dc: DcId(dc),
        flags: 0,
        src: Endpoint(src),
        dst: Endpoint(dst),
        seq,
        aux: 0,
        code: 0,
        payload: &payload,
    };
    let mut buf = vec![0u8; ETH_HEADER_LEN + repr.buffer_len()];
    EthernetHeader {
        dst: [0xff; 6],
        src: [2, 0, 0, 0, 0, src as u8],
        ethertype: ETHERTYPE_M3IPC,
    }
    .emit(&mut buf)
    .unwrap();
    repr.emit(&mut buf[ETH_HEADER_LEN..]).unwrap();
    buf
}

/// Waits (at most 10 s) until `f` holds; panics naming `what` if it never does.
pub async fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}
