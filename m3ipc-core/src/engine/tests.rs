//! Unit tests of each primitive and each error path, over a lossless in-memory wire.

use super::*;
use crate::wire::MAX_FRAME;
use alloc::vec;

const DC: DcId = DcId(1);
const A: Endpoint = Endpoint(10);
const A2: Endpoint = Endpoint(11);
const B: Endpoint = Endpoint(20);
const B2: Endpoint = Endpoint(21);
const T: Option<Duration> = Some(Duration::from_secs(1));

fn t(us: u64) -> Instant {
    Instant::from_micros(us)
}

fn engine(inc: u32, eps: &[Endpoint]) -> Engine {
    let mut e = Engine::new(EngineConfig::new(DC, inc));
    for ep in eps {
        e.bind(*ep).unwrap();
    }
    e
}

/// Two engines joined by a wire that a test may filter or tamper with.
struct Pair {
    a: Engine,
    b: Engine,
    now: Instant,
}

impl Pair {
    fn new() -> Pair {
        Pair {
            a: engine(1, &[A, A2]),
            b: engine(2, &[B, B2]),
            now: t(1000),
        }
    }

    /// Moves frames both ways until quiet; `keep` may drop (false) or alter frames in flight.
    fn pump_with(&mut self, mut keep: impl FnMut(bool, &mut Vec<u8>) -> bool) {
        let mut buf = [0u8; MAX_FRAME];
        loop {
            let mut moved = false;
            while let Some(n) = self.a.poll_transmit(self.now, &mut buf) {
                let mut f = buf[..n].to_vec();
                if keep(true, &mut f) {
                    self.b.handle_frame(self.now, &f);
                }
                moved = true;
            }
            while let Some(n) = self.b.poll_transmit(self.now, &mut buf) {
                let mut f = buf[..n].to_vec();
                if keep(false, &mut f) {
                    self.a.handle_frame(self.now, &f);
                }
                moved = true;
            }
            if !moved {
                return;
            }
        }
    }

    fn pump(&mut self) {
        self.pump_with(|_, _| true);
    }

    /// Advances time to the earliest timer of either engine and runs it.
    fn tick(&mut self) {
        let next = [self.a.poll_timeout(), self.b.poll_timeout()]
            .into_iter()
            .flatten()
            .min();
        if let Some(n) = next {
            self.now = self.now.max(n);
            self.a.handle_timeout(self.now);
            self.b.handle_timeout(self.now);
        }
    }
}

fn events(e: &mut Engine) -> Vec<Event> {
    core::iter::from_fn(|| e.poll_event()).collect()
}

fn done(ep: Endpoint, result: Result<Completion, ErrorCode>) -> Event {
    Event::Done { ep, result }
}

fn received(src: Endpoint, mtype: u32, needs_reply: bool) -> impl Fn(&Event) -> bool {
    move |ev| matches!(ev, Event::Done { result: Ok(Completion::Received { msg, needs_reply: nr }), .. } if msg.source == src && msg.mtype == mtype && *nr == needs_reply)
}

#[test]
fn local_sendrec_round_trip_makes_no_frame() {
    let mut e = engine(1, &[A, B]);
    let now = t(0);
    e.receive(now, B, Endpoint::ANY, None).unwrap();
    e.sendrec(now, A, B, Message::with_bytes(7, b"ping"), T)
        .unwrap();
    let ev = events(&mut e);
    assert_eq!(ev.len(), 1);
    assert!(received(A, 7, true)(&ev[0]));
    e.reply(now, B, A, Message::with_bytes(8, b"pong")).unwrap();
    let ev = events(&mut e);
    assert!(
        matches!(ev[..], [Event::Done { ep: A, result: Ok(Completion::Replied(m)) }] if m.mtype == 8 && m.source == B)
    );
    let mut buf = [0u8; MAX_FRAME];
    assert_eq!(e.poll_transmit(now, &mut buf), None);
    assert_eq!(e.stats().frames_out, 0);
}

#[test]
fn local_send_is_a_rendezvous() {
    let mut e = engine(1, &[A, B]);
    let now = t(0);
    e.send(now, A, B, Message::new(1), T).unwrap();
    assert!(
        events(&mut e).is_empty(),
        "send must wait until the receiver takes the message"
    );
    assert!(e.is_blocked(A));
    e.receive(now, B, A, None).unwrap();
    let ev = events(&mut e);
    assert!(received(A, 1, false)(&ev[0]));
    assert_eq!(ev[1], done(A, Ok(Completion::Sent)));
}

#[test]
fn receive_from_one_source_skips_others() {
    let mut e = engine(1, &[A, A2, B]);
    let now = t(0);
    e.send(now, A, B, Message::new(1), T).unwrap();
    e.send(now, A2, B, Message::new(2), T).unwrap();
    e.receive(now, B, A2, None).unwrap();
    let ev = events(&mut e);
    assert!(received(A2, 2, false)(&ev[0]));
    e.receive(now, B, Endpoint::ANY, None).unwrap();
    assert!(received(A, 1, false)(&events(&mut e)[0]));
}

#[test]
fn argument_errors_are_immediate() {
    let mut e = engine(1, &[A, B]);
    let now = t(0);
    let m = Message::new(0);
    assert_eq!(
        e.sendrec(now, A, Endpoint::ANY, m, T),
        Err(ErrorCode::InvalidArgument)
    );
    assert_eq!(e.sendrec(now, A, A, m, T), Err(ErrorCode::InvalidArgument));
    assert_eq!(
        e.sendrec(now, Endpoint(99), B, m, T),
        Err(ErrorCode::NotBound)
    );
    assert_eq!(
        e.receive(now, A, Endpoint::NONE, None),
        Err(ErrorCode::InvalidArgument)
    );
    assert_eq!(e.reply(now, B, A, m), Err(ErrorCode::NotWaiting));
    assert_eq!(e.bind(A), Err(ErrorCode::Busy));
    assert_eq!(e.bind(Endpoint::ANY), Err(ErrorCode::InvalidArgument));
    e.sendrec(now, A, B, m, T).unwrap();
    assert_eq!(
        e.send(now, A, B, m, T),
        Err(ErrorCode::Busy),
        "one blocking call per endpoint"
    );
    assert_eq!(
        e.vcopy(
            now,
            Endpoint(5),
            VcopyRequest {
                src: A,
                src_offset: 0,
                dst: B,
                dst_offset: 0,
                len: 1
            },
            T
        ),
        Err(ErrorCode::NotAllowed)
    );
}

#[test]
fn local_timeout_withdraws_the_message() {
    let mut e = engine(1, &[A, B]);
    e.send(t(0), A, B, Message::new(1), Some(Duration::from_millis(5)))
        .unwrap();
    assert_eq!(e.poll_timeout(), Some(t(5000)));
    e.handle_timeout(t(5000));
    assert_eq!(events(&mut e), vec![done(A, Err(ErrorCode::Timeout))]);
    e.receive(t(6000), B, Endpoint::ANY, Some(Duration::from_millis(1)))
        .unwrap();
    assert!(
        events(&mut e).is_empty(),
        "a timed-out send must not be delivered later"
    );
    e.handle_timeout(t(7000));
    assert_eq!(events(&mut e), vec![done(B, Err(ErrorCode::Timeout))]);
}

#[test]
fn local_notify_coalesces_and_is_received_first() {
    let mut e = engine(1, &[A, A2, B]);
    let now = t(0);
    e.send(now, A2, B, Message::new(5), T).unwrap();
    for _ in 0..3 {
        e.notify(now, A, B).unwrap();
    }
    assert_eq!(e.stats().notify_coalesced, 2);
    e.receive(now, B, Endpoint::ANY, None).unwrap();
    assert!(received(A, Message::NOTIFY_MTYPE, false)(
        &events(&mut e)[0]
    ));
    e.receive(now, B, Endpoint::ANY, None).unwrap();
    assert!(received(A2, 5, false)(&events(&mut e)[0]));
}

#[test]
fn remote_sendrec_and_send() {
    let mut p = Pair::new();
    p.b.receive(p.now, B, Endpoint::ANY, None).unwrap();
    p.a.sendrec(p.now, A, B, Message::with_bytes(3, b"q"), T)
        .unwrap();
    p.pump();
    let ev = events(&mut p.b);
    assert!(received(A, 3, true)(&ev[0]));
    p.b.reply(p.now, B, A, Message::new(4)).unwrap();
    p.pump();
    assert!(
        matches!(events(&mut p.a)[..], [Event::Done { ep: A, result: Ok(Completion::Replied(m)) }] if m.mtype == 4 && m.source == B)
    );

    p.a.send(p.now, A, B, Message::new(9), T).unwrap();
    p.pump();
    assert!(events(&mut p.a).is_empty(), "not taken yet");
    p.b.receive(p.now, B, Endpoint::ANY, None).unwrap();
    p.pump();
    assert!(received(A, 9, false)(&events(&mut p.b)[0]));
    assert_eq!(events(&mut p.a), vec![done(A, Ok(Completion::Sent))]);
}

#[test]
fn lost_reply_is_recovered_from_the_reply_cache_without_second_delivery() {
    let mut p = Pair::new();
    p.b.receive(p.now, B, Endpoint::ANY, None).unwrap();
    p.a.sendrec(p.now, A, B, Message::new(3), T).unwrap();
    p.pump();
    assert_eq!(events(&mut p.b).len(), 1);
    p.b.reply(p.now, B, A, Message::new(4)).unwrap();
    p.b.receive(p.now, B, Endpoint::ANY, None).unwrap();
    // Drop the reply.
    p.pump_with(|a_to_b, f| a_to_b || FrameRepr::parse(f).unwrap().kind != Kind::Reply);
    assert!(events(&mut p.a).is_empty());
    // The client's probe brings the cached reply; the server's task sees nothing new.
    p.tick();
    p.pump();
    assert!(matches!(
        events(&mut p.a)[..],
        [Event::Done {
            result: Ok(Completion::Replied(_)),
            ..
        }]
    ));
    assert!(events(&mut p.b).is_empty());
    assert!(p.b.stats().duplicates >= 1);
}

#[test]
fn duplicated_frames_are_delivered_once() {
    let mut p = Pair::new();
    p.a.send(p.now, A, B, Message::new(1), T).unwrap();
    let mut buf = [0u8; MAX_FRAME];
    let n = p.a.poll_transmit(p.now, &mut buf).unwrap();
    for _ in 0..3 {
        p.b.handle_frame(p.now, &buf[..n]);
    }
    p.b.receive(p.now, B, Endpoint::ANY, None).unwrap();
    p.b.handle_frame(p.now, &buf[..n]);
    p.b.receive(p.now, B, Endpoint::ANY, Some(Duration::from_millis(1)))
        .unwrap();
    p.pump();
    assert_eq!(events(&mut p.b).len(), 1, "exactly one delivery");
    assert_eq!(events(&mut p.a), vec![done(A, Ok(Completion::Sent))]);
}

#[test]
fn refuses_wrong_dc_bad_and_spoofed_frames() {
    let mut p = Pair::new();
    let mut other = Engine::new(EngineConfig::new(DcId(2), 3));
    other.bind(Endpoint(30)).unwrap();
    other
        .send(p.now, Endpoint(30), B, Message::new(1), T)
        .unwrap();
    let mut buf = [0u8; MAX_FRAME];
    let n = other.poll_transmit(p.now, &mut buf).unwrap();
    p.b.handle_frame(p.now, &buf[..n]);
    assert_eq!(p.b.stats().wrong_dc, 1);
    p.b.handle_frame(p.now, &buf[..n / 2]);
    p.b.handle_frame(p.now, b"garbage");
    assert_eq!(p.b.stats().bad_frames, 2);
    // A frame claiming to come from B's own endpoint.
    p.a.send(p.now, A, B, Message::new(1), T).unwrap();
    let n = p.a.poll_transmit(p.now, &mut buf).unwrap();
    buf[8..12].copy_from_slice(&B2.0.to_be_bytes());
    p.b.handle_frame(p.now, &buf[..n]);
    assert_eq!(p.b.stats().spoofed, 1);
    p.b.receive(p.now, B, Endpoint::ANY, Some(Duration::from_millis(1)))
        .unwrap();
    assert!(events(&mut p.b).is_empty());
}

#[test]
fn unknown_and_dead_destinations_fail_the_call() {
    let mut p = Pair::new();
    p.a.sendrec(p.now, A, Endpoint(77), Message::new(1), T)
        .unwrap();
    p.pump();
    assert_eq!(
        events(&mut p.a),
        vec![done(A, Err(ErrorCode::UnknownDestination))]
    );
    p.b.unbind(B2).unwrap();
    p.a.send(p.now, A, B2, Message::new(1), T).unwrap();
    p.pump();
    assert_eq!(
        events(&mut p.a),
        vec![done(A, Err(ErrorCode::DeadDestination))]
    );
}

#[test]
fn lost_frames_time_out_exactly_once() {
    let mut p = Pair::new();
    p.a.sendrec(
        p.now,
        A,
        B,
        Message::new(1),
        Some(Duration::from_millis(50)),
    )
    .unwrap();
    let mut all = Vec::new();
    for _ in 0..100 {
        p.pump_with(|_, _| false);
        p.tick();
        all.extend(events(&mut p.a));
    }
    assert_eq!(all, vec![done(A, Err(ErrorCode::Timeout))]);
    assert!(p.a.stats().retransmits >= 2);
    assert_eq!(p.a.poll_timeout(), None);
}

#[test]
fn migrated_answer_resends_to_the_new_place() {
    let mut p = Pair::new();
    let mut c = engine(3, &[]);
    p.b.receive(p.now, B, Endpoint::ANY, None).unwrap();
    let state = p.b.export_endpoint(B).unwrap();
    assert_eq!(events(&mut p.b), vec![done(B, Err(ErrorCode::Migrated))]);
    c.import_endpoint(state).unwrap();
    c.receive(p.now, B, Endpoint::ANY, None).unwrap();
    p.a.sendrec(p.now, A, B, Message::new(1), T).unwrap();
    p.pump(); // Reaches the old place: Migrated.
    assert!(events(&mut p.a).is_empty());
    assert_eq!(p.a.stats().migrated_resends, 1);
    // The directory now points at C.
    p.tick();
    let mut buf = [0u8; MAX_FRAME];
    let n = p.a.poll_transmit(p.now, &mut buf).unwrap();
    c.handle_frame(p.now, &buf[..n]);
    assert!(received(A, 1, true)(&events(&mut c)[0]));
    c.reply(p.now, B, A, Message::new(2)).unwrap();
    while let Some(n) = c.poll_transmit(p.now, &mut buf) {
        p.a.handle_frame(p.now, &buf[..n]);
    }
    assert!(matches!(
        events(&mut p.a)[..],
        [Event::Done {
            result: Ok(Completion::Replied(_)),
            ..
        }]
    ));
}

#[test]
fn migration_carries_dedup_state() {
    let mut p = Pair::new();
    p.b.receive(p.now, B, Endpoint::ANY, None).unwrap();
    p.a.sendrec(p.now, A, B, Message::new(1), T).unwrap();
    let mut buf = [0u8; MAX_FRAME];
    let n = p.a.poll_transmit(p.now, &mut buf).unwrap();
    let request = buf[..n].to_vec();
    p.b.handle_frame(p.now, &request);
    events(&mut p.b);
    p.b.reply(p.now, B, A, Message::new(2)).unwrap();
    let mut c = engine(3, &[]);
    c.import_endpoint(p.b.export_endpoint(B).unwrap()).unwrap();
    c.receive(p.now, B, Endpoint::ANY, None).unwrap();
    // The retransmitted request reaches the new place: answered from the carried cache, not redelivered.
    c.handle_frame(p.now, &request);
    assert!(events(&mut c).is_empty());
    let n = c.poll_transmit(p.now, &mut buf).unwrap();
    assert_eq!(FrameRepr::parse(&buf[..n]).unwrap().kind, Kind::Reply);
}

#[test]
fn remote_notify_coalesces_and_follows_consumption() {
    let mut p = Pair::new();
    for _ in 0..5 {
        p.a.notify(p.now, A, B).unwrap();
    }
    p.pump();
    p.b.receive(p.now, B, Endpoint::ANY, None).unwrap();
    assert!(received(A, Message::NOTIFY_MTYPE, false)(
        &events(&mut p.b)[0]
    ));
    p.b.receive(p.now, B, Endpoint::ANY, Some(Duration::from_millis(1)))
        .unwrap();
    p.pump();
    assert!(
        events(&mut p.b).is_empty(),
        "five notifications coalesce into one"
    );
    // A notify while one is in flight is not lost.
    p.a.notify(p.now, A, B).unwrap();
    p.a.notify(p.now, A, B).unwrap();
    p.pump();
    assert!(received(A, Message::NOTIFY_MTYPE, false)(
        &events(&mut p.b)[0]
    ));
}

#[test]
fn notify_to_nowhere_reports_failure() {
    let mut p = Pair::new();
    p.a.notify(p.now, A, Endpoint(77)).unwrap();
    p.pump();
    assert_eq!(
        events(&mut p.a),
        vec![Event::NotifyFailed {
            src: A,
            dst: Endpoint(77),
            error: ErrorCode::UnknownDestination
        }]
    );
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn run_vcopy(p: &mut Pair, requester_is_a: bool, push: bool, len: usize) -> Vec<Event> {
    let data = pattern(len, 5);
    p.a.set_buffer(
        A,
        if push == requester_is_a {
            data.clone()
        } else {
            vec![0; len + 100]
        },
    )
    .unwrap();
    p.b.set_buffer(
        B,
        if push == requester_is_a {
            vec![0; len + 100]
        } else {
            data.clone()
        },
    )
    .unwrap();
    let (src, dst) = if push == requester_is_a {
        (A, B)
    } else {
        (B, A)
    };
    let dst_off = 100;
    let e = if requester_is_a { &mut p.a } else { &mut p.b };
    let req = if requester_is_a { A } else { B };
    e.vcopy(
        p.now,
        req,
        VcopyRequest {
            src,
            src_offset: 0,
            dst,
            dst_offset: dst_off,
            len: len as u64,
        },
        Some(Duration::from_secs(5)),
    )
    .unwrap();
    for _ in 0..10_000 {
        p.pump();
        if p.a.poll_timeout().is_none() && p.b.poll_timeout().is_none() {
            break;
        }
        p.tick();
    }
    let dst_buf = if dst == A {
        p.a.buffer(A)
    } else {
        p.b.buffer(B)
    }
    .unwrap();
    assert_eq!(&dst_buf[dst_off as usize..], &data[..]);
    let mut ev = events(&mut p.a);
    ev.extend(events(&mut p.b));
    ev
}

#[test]
fn vcopy_push_and_pull_across_engines() {
    for len in [1, 1408, 1409, 100_000] {
        let mut p = Pair::new();
        assert_eq!(
            run_vcopy(&mut p, true, true, len),
            vec![done(A, Ok(Completion::Copied { len: len as u64 }))]
        );
        let mut p = Pair::new();
        assert_eq!(
            run_vcopy(&mut p, true, false, len),
            vec![done(A, Ok(Completion::Copied { len: len as u64 }))]
        );
    }
}

#[test]
fn a_finished_vcopy_leaves_nothing_awaited() {
    for push in [true, false] {
        for requester_is_a in [true, false] {
            let mut p = Pair::new();
            run_vcopy(&mut p, requester_is_a, push, 100_000);
            for (who, e) in [("a", &p.a), ("b", &p.b)] {
                let what = alloc::format!(
                    "{who} after a vcopy (push {push}, requester a {requester_is_a})"
                );
                assert!(!e.awaiting_remote(), "{what}: awaiting_remote");
                assert!(!e.has_transmit(), "{what}: has_transmit");
                assert_eq!(e.poll_timeout(), None, "{what}: poll_timeout");
            }
        }
    }
}

#[test]
fn vcopy_local_and_range_errors() {
    let mut e = engine(1, &[A, B]);
    e.set_buffer(A, pattern(64, 1)).unwrap();
    e.set_buffer(B, vec![0; 64]).unwrap();
    e.vcopy(
        t(0),
        A,
        VcopyRequest {
            src: A,
            src_offset: 0,
            dst: B,
            dst_offset: 0,
            len: 64,
        },
        T,
    )
    .unwrap();
    assert_eq!(
        events(&mut e),
        vec![done(A, Ok(Completion::Copied { len: 64 }))]
    );
    assert_eq!(e.buffer(B).unwrap(), &pattern(64, 1)[..]);
    e.vcopy(
        t(0),
        B,
        VcopyRequest {
            src: A,
            src_offset: 1,
            dst: B,
            dst_offset: 0,
            len: 64,
        },
        T,
    )
    .unwrap();
    assert_eq!(
        events(&mut e),
        vec![done(B, Err(ErrorCode::BufferOutOfRange))]
    );
    assert_eq!(
        e.vcopy(
            t(0),
            A,
            VcopyRequest {
                src: A,
                src_offset: u64::MAX,
                dst: Endpoint(5),
                dst_offset: 0,
                len: 2
            },
            T
        ),
        Err(ErrorCode::BufferOutOfRange)
    );

    let mut p = Pair::new();
    p.a.set_buffer(A, vec![1; 10]).unwrap();
    p.b.set_buffer(B, vec![0; 5]).unwrap();
    p.a.vcopy(
        p.now,
        A,
        VcopyRequest {
            src: A,
            src_offset: 0,
            dst: B,
            dst_offset: 0,
            len: 10,
        },
        T,
    )
    .unwrap();
    p.pump();
    assert_eq!(
        events(&mut p.a),
        vec![done(A, Err(ErrorCode::BufferOutOfRange))]
    );
}

#[test]
fn a_taken_buffer_is_gone_for_peers() {
    let mut p = Pair::new();
    p.a.set_buffer(A, vec![1; 10]).unwrap();
    p.b.set_buffer(B, pattern(10, 2)).unwrap();
    assert_eq!(p.b.take_buffer(B), Some(pattern(10, 2)));
    assert_eq!(p.b.buffer(B), Some(&[][..]));
    assert_eq!(p.b.take_buffer(Endpoint(999)), None);
    p.a.vcopy(
        p.now,
        A,
        VcopyRequest {
            src: A,
            src_offset: 0,
            dst: B,
            dst_offset: 0,
            len: 10,
        },
        T,
    )
    .unwrap();
    p.pump();
    assert_eq!(
        events(&mut p.a),
        vec![done(A, Err(ErrorCode::BufferOutOfRange))]
    );
}

#[test]
fn vcopy_detects_corruption_in_flight() {
    let mut p = Pair::new();
    p.a.set_buffer(A, pattern(5000, 3)).unwrap();
    p.b.set_buffer(B, vec![0; 5000]).unwrap();
    p.a.vcopy(
        p.now,
        A,
        VcopyRequest {
            src: A,
            src_offset: 0,
            dst: B,
            dst_offset: 0,
            len: 5000,
        },
        T,
    )
    .unwrap();
    let mut flipped = false;
    p.pump_with(|_, f| {
        if !flipped && FrameRepr::parse(f).unwrap().kind == Kind::VcopyData {
            let last = f.len() - 1;
            f[last] ^= 0xff;
            flipped = true;
        }
        true
    });
    assert_eq!(
        events(&mut p.a),
        vec![done(A, Err(ErrorCode::ChecksumMismatch))]
    );
}

#[test]
fn cancel_removes_a_queued_remote_call() {
    let mut p = Pair::new();
    p.a.send(p.now, A, B, Message::new(1), Some(Duration::from_millis(5)))
        .unwrap();
    p.pump();
    p.now = t(1000 + 5000);
    p.a.handle_timeout(p.now);
    assert_eq!(events(&mut p.a), vec![done(A, Err(ErrorCode::Timeout))]);
    p.pump();
    p.b.receive(p.now, B, Endpoint::ANY, Some(Duration::from_millis(1)))
        .unwrap();
    assert!(
        events(&mut p.b).is_empty(),
        "the cancelled send is not delivered"
    );
}

#[test]
fn a_newer_call_supersedes_a_queued_older_one() {
    let mut p = Pair::new();
    p.a.send(p.now, A, B, Message::new(1), Some(Duration::from_millis(5)))
        .unwrap();
    p.pump();
    p.now = t(1000 + 5000);
    p.a.handle_timeout(p.now);
    events(&mut p.a);
    // The Cancel is lost; the next call from A replaces the stale one in B's queue.
    p.pump_with(|_, _| false);
    p.a.send(p.now, A, B, Message::new(2), T).unwrap();
    p.pump();
    p.b.receive(p.now, B, Endpoint::ANY, None).unwrap();
    assert!(received(A, 2, false)(&events(&mut p.b)[0]));
    p.b.receive(p.now, B, Endpoint::ANY, Some(Duration::from_millis(1)))
        .unwrap();
    assert!(events(&mut p.b).is_empty());
}

#[test]
fn full_queue_pushes_back_until_room() {
    let mut p = Pair::new();
    p.b.cfg.queue_limit = 1;
    p.a.send(p.now, A, B, Message::new(1), T).unwrap();
    p.a.send(p.now, A2, B, Message::new(2), T).unwrap();
    p.pump();
    assert_eq!(p.b.stats().queue_full, 1);
    p.b.receive(p.now, B, Endpoint::ANY, None).unwrap();
    p.pump();
    events(&mut p.b);
    p.tick(); // A2 retransmits into the freed room.
    p.pump();
    p.b.receive(p.now, B, Endpoint::ANY, None).unwrap();
    assert!(received(A2, 2, false)(&events(&mut p.b)[0]));
}

#[test]
fn a_prompt_reply_replaces_the_pending_delivered() {
    let mut p = Pair::new();
    p.b.receive(p.now, B, Endpoint::ANY, None).unwrap();
    p.a.sendrec(p.now, A, B, Message::new(3), T).unwrap();
    let mut buf = [0u8; MAX_FRAME];
    let n = p.a.poll_transmit(p.now, &mut buf).unwrap();
    p.b.handle_frame(p.now, &buf[..n]);
    events(&mut p.b);
    p.b.reply(p.now, B, A, Message::new(4)).unwrap();
    let n = p.b.poll_transmit(p.now, &mut buf).unwrap();
    assert_eq!(FrameRepr::parse(&buf[..n]).unwrap().kind, Kind::Reply);
    assert_eq!(
        p.b.poll_transmit(p.now, &mut buf),
        None,
        "one frame answers the call"
    );
}

#[test]
fn awaiting_remote_holds_while_a_remote_answer_is_due() {
    let mut p = Pair::new();
    assert!(!p.a.awaiting_remote(), "idle");
    let now = p.now;
    p.b.receive(now, B, Endpoint::ANY, None).unwrap();
    assert!(
        !p.b.awaiting_remote(),
        "a receive waits for work, not an answer"
    );
    p.a.sendrec(now, A, A2, Message::new(1), T).unwrap();
    assert!(
        !p.a.awaiting_remote(),
        "a local call never waits on the network"
    );
    let mut p = Pair::new();
    p.a.sendrec(now, A, B, Message::new(2), T).unwrap();
    assert!(p.a.awaiting_remote(), "a remote sendrec is in flight");
    p.b.receive(now, B, Endpoint::ANY, None).unwrap();
    p.pump();
    let Some(Event::Done {
        result: Ok(Completion::Received { msg, .. }),
        ..
    }) = p.b.poll_event()
    else {
        panic!("B got the call")
    };
    p.b.reply(now, B, A, msg).unwrap();
    p.pump();
    assert!(!p.a.awaiting_remote(), "answered");
}

#[test]
fn next_transmit_max_len_follows_the_agreed_chunk() {
    let mut cfg = EngineConfig::new(DC, 1);
    cfg.vcopy_chunk = crate::wire::chunk_for_mtu(9000) as u32;
    let mut a = Engine::new(cfg.clone());
    let mut b = Engine::new(cfg);
    a.bind(A).unwrap();
    b.bind(B).unwrap();
    a.set_buffer(A, vec![5; 100_000]).unwrap();
    b.set_buffer(B, vec![0; 100_000]).unwrap();
    let now = t(1000);
    let req = VcopyRequest {
        src: A,
        src_offset: 0,
        dst: B,
        dst_offset: 0,
        len: 100_000,
    };
    a.vcopy(now, A, req, T).unwrap();
    assert_eq!(a.next_transmit_max_len(), MAX_FRAME, "the open is small");
    let mut buf = vec![0u8; crate::wire::MAX_JUMBO_FRAME];
    let mut biggest = 0;
    for _ in 0..1000 {
        let mut moved = false;
        while let Some(n) = a.poll_transmit(now, &mut buf) {
            b.handle_frame(now, &buf[..n]);
            biggest = biggest.max(n);
            moved = true;
            if a.has_transmit() {
                assert!(a.next_transmit_max_len() >= MAX_FRAME);
            }
        }
        while let Some(n) = b.poll_transmit(now, &mut buf) {
            assert!(n <= MAX_FRAME, "the receiver sends only small frames");
            a.handle_frame(now, &buf[..n]);
            moved = true;
        }
        if !moved {
            break;
        }
    }
    assert_eq!(biggest, crate::wire::HEADER_LEN + 8960, "jumbo data frames");
    assert!(matches!(
        a.poll_event(),
        Some(Event::Done {
            result: Ok(Completion::Copied { len: 100_000 }),
            ..
        })
    ));
    assert_eq!(b.buffer(B).unwrap(), &vec![5u8; 100_000][..]);
}
