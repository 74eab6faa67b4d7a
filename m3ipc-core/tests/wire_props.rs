//! Property tests of the wire format: every kind round-trips; no byte string makes the decoder panic.

use m3ipc_core::wire::{self, flags, FrameRepr, Kind, VcopyOpen};
use m3ipc_core::{DcId, Endpoint, ErrorCode, Message};
use proptest::prelude::*;

fn kind() -> impl Strategy<Value = Kind> {
    prop::sample::select(Kind::ALL.to_vec())
}

/// A payload valid for `kind`.
fn payload_for(kind: Kind) -> BoxedStrategy<Vec<u8>> {
    match kind {
        Kind::Send | Kind::SendRec | Kind::Reply => {
            prop::collection::vec(any::<u8>(), m3ipc_core::message::WIRE_LEN).boxed()
        }
        Kind::VcopyOpen => (
            any::<u64>(),
            any::<u64>(),
            any::<u32>(),
            any::<u32>(),
            any::<u32>(),
        )
            .prop_map(|(peer_off, len, crc, window, chunk)| {
                VcopyOpen {
                    peer_off,
                    len,
                    crc,
                    window,
                    chunk,
                }
                .to_bytes()
                .to_vec()
            })
            .boxed(),
        // Legacy chunks mostly, jumbo ones (up to the largest a frame can hold) now and then.
        Kind::VcopyData => prop_oneof![
            4 => prop::collection::vec(any::<u8>(), 1..=wire::VCOPY_CHUNK),
            1 => prop::collection::vec(any::<u8>(), wire::VCOPY_CHUNK..=wire::MAX_DATA_PAYLOAD),
        ]
        .boxed(),
        Kind::VcopyAck => prop::collection::vec(any::<u8>(), 0..=wire::VCOPY_ACK_MAX_LEN).boxed(),
        Kind::Migrated => prop::collection::vec(any::<u8>(), 0..=4).boxed(),
        _ => Just(Vec::new()).boxed(),
    }
}

fn code_for(kind: Kind) -> BoxedStrategy<u16> {
    match kind {
        Kind::Error => prop::sample::select(ErrorCode::ALL.to_vec())
            .prop_map(|c| c as u16)
            .boxed(),
        Kind::VcopyFin => prop_oneof![
            Just(0u16),
            prop::sample::select(ErrorCode::ALL.to_vec()).prop_map(|c| c as u16)
        ]
        .boxed(),
        _ => Just(0).boxed(),
    }
}

fn endpoint() -> impl Strategy<Value = Endpoint> {
    (0..u32::MAX - 1).prop_map(Endpoint)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn every_kind_round_trips(
        (kind, payload, code) in kind().prop_flat_map(|k| (Just(k), payload_for(k), code_for(k))),
        dc in any::<u16>(), fl in 0..=flags::ALL, src in endpoint(), dst in endpoint(),
        seq in any::<u64>(), aux in any::<u64>(),
    ) {
        let repr = FrameRepr { kind, dc: DcId(dc), flags: fl, src, dst, seq, aux, code, payload: &payload };
        let mut buf = vec![0u8; wire::MAX_JUMBO_FRAME];
        let n = repr.emit(&mut buf).unwrap();
        prop_assert_eq!(n, repr.buffer_len());
        prop_assert_eq!(FrameRepr::parse(&buf[..n]).unwrap(), repr);
    }

    #[test]
    fn decode_never_panics_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..1600)) {
        let _ = FrameRepr::parse(&bytes);
        let _ = wire::ethernet::EthernetHeader::m3ipc_payload(&bytes);
    }

    #[test]
    fn decode_never_panics_on_mutated_frames(flip in prop::collection::vec((0usize..96, any::<u8>()), 1..8), cut in 0usize..=96) {
        let mut buf = [0u8; 96];
        let msg = Message::with_bytes(5, b"x");
        let mut body = [0u8; m3ipc_core::message::WIRE_LEN];
        msg.emit(&mut body);
        let repr = FrameRepr { kind: Kind::SendRec, dc: DcId(1), flags: 0, src: Endpoint(1), dst: Endpoint(2), seq: 9, aux: 0, code: 0, payload: &body };
        repr.emit(&mut buf).unwrap();
        for (i, v) in flip {
            buf[i] ^= v;
        }
        if let Ok(r) = FrameRepr::parse(&buf[..cut]) {
            // Whatever parses is consistent with its own length rules.
            prop_assert!(r.payload.len() <= wire::MAX_PAYLOAD);
            prop_assert!(r.buffer_len() <= cut);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    /// Hostile but well-formed frames (any kind, any fields, aimed at live endpoints and transfers)
    /// never make the engine panic, and every call still ends exactly once.
    #[test]
    fn engine_survives_hostile_frames(
        frames in prop::collection::vec(
            (kind().prop_flat_map(|k| (Just(k), payload_for(k), code_for(k))), 0..=flags::ALL, 0u32..4, 0u32..4, 0u64..6, any::<u64>()),
            1..60),
    ) {
        use m3ipc_core::{Engine, EngineConfig, Event, Instant, VcopyRequest};
        use std::time::Duration;
        let eps = [Endpoint(10), Endpoint(11), Endpoint(20), Endpoint(21)];
        let mut e = Engine::new(EngineConfig::new(DcId(1), 1));
        e.bind(eps[0]).unwrap();
        e.bind(eps[1]).unwrap();
        e.set_buffer(eps[0], vec![7; 10_000]).unwrap();
        e.set_buffer(eps[1], vec![0; 10_000]).unwrap();
        let now = Instant::from_micros(1000);
        let t = Some(Duration::from_secs(1));
        e.sendrec(now, eps[0], eps[2], Message::new(1), t).unwrap();
        let copy = VcopyRequest {
            src: eps[3],
            src_offset: 0,
            dst: eps[1],
            dst_offset: 0,
            len: 9000,
        };
        e.vcopy(now, eps[1], copy, t).unwrap();
        let mut out = [0u8; wire::MAX_FRAME];
        let mut first_seqs = vec![];
        while let Some(n) = e.poll_transmit(now, &mut out) {
            first_seqs.push(FrameRepr::parse(&out[..n]).unwrap().seq);
        }
        for ((kind, payload, code), fl, s, d, seq_pick, aux) in frames {
            // Aim seqs at real calls half of the time.
            let seq = first_seqs.get(seq_pick as usize).copied().unwrap_or(seq_pick);
            let aux = if aux % 2 == 0 { first_seqs.first().copied().unwrap_or(aux) } else { aux };
            let repr = FrameRepr { kind, dc: DcId(1), flags: fl, src: eps[2 + (s as usize % 2)], dst: eps[d as usize % 2], seq, aux, code, payload: &payload };
            let mut hostile = vec![0u8; wire::MAX_JUMBO_FRAME];
            let n = repr.emit(&mut hostile).unwrap();
            e.handle_frame(now, &hostile[..n]);
            while e.poll_transmit(now, &mut out).is_some() {}
        }
        let mut ends = std::collections::BTreeMap::new();
        let mut clock = now;
        for _ in 0..10_000 {
            while let Some(ev) = e.poll_event() {
                if let Event::Done { ep, .. } = ev {
                    *ends.entry(ep).or_insert(0) += 1;
                }
            }
            match e.poll_timeout() {
                Some(at) => { clock = clock.max(at); e.handle_timeout(clock); }
                None => break,
            }
            while e.poll_transmit(clock, &mut out).is_some() {}
        }
        prop_assert!(ends.values().all(|&n| n == 1), "a call ended twice: {:?}", ends);
        prop_assert_eq!(ends.len(), 2, "every call ends: {:?}", ends);
    }
}
