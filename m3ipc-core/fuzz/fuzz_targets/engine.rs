//! Fuzzes the engine with arbitrary frames while calls and a transfer are in progress: never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use m3ipc_core::wire::MAX_FRAME;
use m3ipc_core::{DcId, Endpoint, Engine, EngineConfig, Instant, Message, VcopyRequest};
use std::time::Duration;

fuzz_target!(|data: &[u8]| {
    let mut e = Engine::new(EngineConfig::new(DcId(1), 1));
    let (a, b) = (Endpoint(10), Endpoint(11));
    e.bind(a).unwrap();
    e.bind(b).unwrap();
    e.set_buffer(b, vec![0; 8192]).unwrap();
    let now = Instant::from_micros(10);
    e.sendrec(
        now,
        a,
        Endpoint(20),
        Message::new(1),
        Some(Duration::from_millis(50)),
    )
    .unwrap();
    let copy = VcopyRequest {
        src: Endpoint(21),
        src_offset: 0,
        dst: b,
        dst_offset: 0,
        len: 8000,
    };
    e.vcopy(now, b, copy, Some(Duration::from_millis(50)))
        .unwrap();
    let mut out = [0u8; MAX_FRAME];
    // The input is a sequence of frames, each prefixed by a one-byte length.
    let mut rest = data;
    while let Some((&len, tail)) = rest.split_first() {
        let len = usize::from(len).min(tail.len());
        e.handle_frame(now, &tail[..len]);
        rest = &tail[len..];
        while e.poll_transmit(now, &mut out).is_some() {}
    }
    let mut t = now;
    while let Some(at) = e.poll_timeout() {
        t = t.max(at);
        e.handle_timeout(t);
        while e.poll_transmit(t, &mut out).is_some() {}
        while e.poll_event().is_some() {}
    }
});
