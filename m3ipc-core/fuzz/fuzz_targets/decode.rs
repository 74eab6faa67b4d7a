//! Fuzzes the frame decoder: any bytes must give Ok or Err, never a panic; what parses re-emits identically.
#![no_main]
use libfuzzer_sys::fuzz_target;
use m3ipc_core::wire::{ethernet::EthernetHeader, FrameRepr, MAX_FRAME};

fuzz_target!(|data: &[u8]| {
    let _ = EthernetHeader::m3ipc_payload(data);
    if let Ok(repr) = FrameRepr::parse(data) {
        let mut out = [0u8; MAX_FRAME];
        let n = repr.emit(&mut out).expect("a parsed frame re-emits");
        assert_eq!(&out[..n], &data[..n]);
    }
});
