//! An endpoint that migrates between engines in the middle of traffic, with its state carried as a snapshot
//! (bytes, as it would cross machines), over a network that loses and duplicates frames: every call is
//! answered once, with the right content, and none is delivered twice — no drain wait before the move.

use std::collections::HashMap;
use std::time::Duration;

use m3ipc_core::engine::{Completion, EndpointState, Event, SnapshotLimits};
use m3ipc_core::time::Instant;
use m3ipc_core::wire::{FrameRepr, MAX_FRAME};
use m3ipc_core::{DcId, Endpoint, Engine, EngineConfig, Message};

const DC: DcId = DcId(1);
const CLIENT: Endpoint = Endpoint(10);
const SERVER: Endpoint = Endpoint(20);
const CALLS: u32 = 10_000;
const LIMITS: SnapshotLimits = SnapshotLimits {
    peers: 4096,
    buffer: 1 << 20,
};

/// A seeded xorshift: the same losses on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

fn payload(i: u32) -> Vec<u8> {
    (0..56u32)
        .map(|k| (i.wrapping_mul(2654435761).rotate_left(k) & 0xff) as u8)
        .collect()
}

/// Three engines: the client's (0), the server's first home (1) and its second (2).
struct Net {
    engines: [Engine; 3],
    /// Which engine holds the server now.
    home: usize,
    now: Instant,
    rng: Rng,
    /// Requests delivered to the server task, by call number (across both homes).
    delivered: HashMap<u32, u32>,
    /// Frames on the wire, as (destination engine, bytes).
    wire: Vec<(usize, Vec<u8>)>,
}

impl Net {
    fn route(&self, frame: &[u8]) -> Option<usize> {
        let f = FrameRepr::parse(frame).ok()?;
        Some(if f.dst == CLIENT { 0 } else { self.home })
    }

    /// Takes what every engine transmits onto the wire (losing 5%, duplicating 3%), then delivers the
    /// wire in a shuffled order.
    fn step(&mut self) -> bool {
        let mut buf = [0u8; MAX_FRAME];
        let mut moved = false;
        for e in 0..3 {
            while let Some(n) = self.engines[e].poll_transmit(self.now, &mut buf) {
                moved = true;
                let frame = buf[..n].to_vec();
                let Some(to) = self.route(&frame) else {
                    continue;
                };
                if self.rng.chance(5) {
                    continue;
                }
                if self.rng.chance(3) {
                    self.wire.push((to, frame.clone()));
                }
                self.wire.push((to, frame));
            }
        }
        let n = self.wire.len();
        for i in (1..n).rev() {
            let j = (self.rng.next() % (i as u64 + 1)) as usize;
            self.wire.swap(i, j);
        }
        for (to, frame) in std::mem::take(&mut self.wire) {
            // A frame for the server that reaches its old home is answered Migrated there, as a proxy that
            // had not learned of the move yet would let happen.
            let to = if to != 0 && self.rng.chance(10) {
                1
            } else {
                to
            };
            self.engines[to].handle_frame(self.now, &frame);
        }
        moved
    }

    /// Serves requests at the server's home: each is counted and answered with its payload reversed.
    fn serve(&mut self) {
        let home = self.home;
        let e = &mut self.engines[home];
        while let Some(ev) = e.poll_event() {
            if let Event::Done {
                ep: SERVER,
                result: Ok(Completion::Received { msg, needs_reply }),
            } = ev
            {
                assert!(needs_reply);
                *self.delivered.entry(msg.mtype).or_default() += 1;
                let mut answer = msg.payload;
                answer.reverse();
                e.reply(
                    self.now,
                    SERVER,
                    msg.source,
                    Message::with_bytes(msg.mtype, &answer),
                )
                .unwrap();
                e.receive(self.now, SERVER, Endpoint::ANY, None).unwrap();
            }
        }
    }

    fn tick(&mut self) {
        let next = self.engines.iter().filter_map(Engine::poll_timeout).min();
        if let Some(n) = next {
            self.now = self.now.max(n);
            for e in &mut self.engines {
                e.handle_timeout(self.now);
            }
        }
    }
}

#[test]
fn ten_thousand_sendrecs_across_a_migration_over_a_lossy_network() {
    let engine = |inc: u32, eps: &[Endpoint]| {
        let mut e = Engine::new(EngineConfig::new(DC, inc));
        for &ep in eps {
            e.bind(ep).unwrap();
        }
        e
    };
    let mut net = Net {
        engines: [engine(1, &[CLIENT]), engine(2, &[SERVER]), engine(3, &[])],
        home: 1,
        now: Instant::from_micros(1_000),
        rng: Rng(0x9e37_79b9_7f4a_7c15),
        delivered: HashMap::new(),
        wire: Vec::new(),
    };
    net.engines[1]
        .receive(net.now, SERVER, Endpoint::ANY, None)
        .unwrap();
    let timeout = Some(Duration::from_secs(60));
    let mut migrated_at = None;
    for i in 0..CALLS {
        let req = payload(i);
        net.engines[0]
            .sendrec(
                net.now,
                CLIENT,
                SERVER,
                Message::with_bytes(i, &req),
                timeout,
            )
            .unwrap();
        let answer = 'call: loop {
            for _ in 0..64 {
                let moved = net.step();
                net.serve();
                if let Some(ev) = net.engines[0].poll_event() {
                    match ev {
                        Event::Done {
                            ep: CLIENT,
                            result: Ok(Completion::Replied(m)),
                        } => break 'call m,
                        other => panic!("call {i}: {other:?}"),
                    }
                }
                if !moved {
                    break;
                }
            }
            net.tick();
        };
        assert_eq!(answer.mtype, i, "call {i}: the answer of another call");
        let mut want = req.clone();
        want.reverse();
        assert_eq!(&answer.payload[..], &want[..], "call {i}: corrupted answer");
        // Half-way: the server moves, right after answering, its answer to this call still unsent.
        if i == CALLS / 2 {
            // (A call number no loop turn uses.)
            let call = CALLS;
            let next = payload(call);
            net.engines[0]
                .sendrec(
                    net.now,
                    CLIENT,
                    SERVER,
                    Message::with_bytes(call, &next),
                    timeout,
                )
                .unwrap();
            // The request reaches the server, which answers; the answer is lost with the old home.
            while !net.delivered.contains_key(&call) {
                net.step();
                net.serve();
                net.tick();
            }
            let mut buf = [0u8; MAX_FRAME];
            while net.engines[1].poll_transmit(net.now, &mut buf).is_some() {}
            // Its state crosses as bytes; the old home answers Migrated from now on.
            let state = net.engines[1].export_endpoint(SERVER).unwrap();
            while net.engines[1].poll_event().is_some() {}
            let bytes = state.to_snapshot();
            let carried = EndpointState::from_snapshot(&bytes, LIMITS).unwrap();
            assert_eq!(carried, state);
            net.engines[2].import_endpoint(carried).unwrap();
            net.engines[2]
                .receive(net.now, SERVER, Endpoint::ANY, None)
                .unwrap();
            net.home = 2;
            migrated_at = Some(call);
            // The client retransmits call `call`; the new home answers it from the carried reply cache.
            let answer = loop {
                net.step();
                net.serve();
                if let Some(ev) = net.engines[0].poll_event() {
                    break ev;
                }
                net.tick();
            };
            let Event::Done {
                result: Ok(Completion::Replied(m)),
                ..
            } = answer
            else {
                panic!("call {call} after the move: {answer:?}");
            };
            assert_eq!(m.mtype, call);
        }
    }
    let calls: u32 = CALLS + 1;
    assert_eq!(net.delivered.len() as u32, calls, "every call delivered");
    let twice: Vec<_> = net.delivered.iter().filter(|(_, &n)| n != 1).collect();
    assert!(twice.is_empty(), "delivered more than once: {twice:?}");
    let migrated = migrated_at.unwrap();
    let (old, new) = (net.engines[1].stats(), net.engines[2].stats());
    assert!(
        net.engines[0].stats().retransmits > 100,
        "the losses forced retransmissions"
    );
    assert!(
        new.duplicates >= 1,
        "call {migrated}'s retransmission answered from the cache"
    );
    assert!(old.frames_in > 0 && new.frames_in > 0);
}

#[test]
fn hostile_snapshots_are_refused_not_panics() {
    let mut e = Engine::new(EngineConfig::new(DC, 1));
    e.bind(SERVER).unwrap();
    let state = e.export_endpoint(SERVER).unwrap();
    let good = state.to_snapshot();
    assert_eq!(EndpointState::from_snapshot(&good, LIMITS).unwrap(), state);
    assert!(EndpointState::from_snapshot(&[], LIMITS).is_err());
    assert!(EndpointState::from_snapshot(&[9], LIMITS).is_err());
    let mut trailing = good.clone();
    trailing.push(0);
    assert!(EndpointState::from_snapshot(&trailing, LIMITS).is_err());
    for cut in 0..good.len() {
        assert!(EndpointState::from_snapshot(&good[..cut], LIMITS).is_err());
    }
    // Every single-byte change either decodes to a checked state or is refused.
    for i in 0..good.len() {
        for b in [0u8, 1, 0x7f, 0x80, 0xff] {
            let mut bad = good.clone();
            bad[i] = b;
            if let Ok(s) = EndpointState::from_snapshot(&bad, LIMITS) {
                assert!(s.ep.is_addressable());
            }
        }
    }
    // Random bytes never panic.
    let mut rng = Rng(7);
    for _ in 0..20_000 {
        let len = (rng.next() % 200) as usize;
        let mut bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        if !bytes.is_empty() {
            bytes[0] = 1;
        }
        let _ = EndpointState::from_snapshot(&bytes, LIMITS);
    }
}
