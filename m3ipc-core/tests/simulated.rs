//! Properties of the engine over a lossy, duplicating, reordering, partitioned network, each checked over
//! many seeds (`M3IPC_SEEDS`, default 500): every call ends exactly once; no message is delivered twice;
//! FIFO per sender→receiver pair; notifications coalesce and are not lost; vcopy is byte-exact under 10%
//! loss; partitions end calls with a timeout, never a hang; a migrating server loses and repeats nothing.

mod sim;

use m3ipc_core::{
    Completion, DcId, Endpoint, Engine, EngineConfig, ErrorCode, Event, Instant, Message,
    VcopyRequest,
};
use sim::{Faults, Sim};
use std::collections::BTreeMap;
use std::time::Duration;

const DC: DcId = DcId(7);
const SERVER: Endpoint = Endpoint(20);

fn seeds() -> u64 {
    std::env::var("M3IPC_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(500)
}

fn engine(incarnation: u32, eps: &[u32]) -> Engine {
    let mut e = Engine::new(EngineConfig::new(DC, incarnation));
    for ep in eps {
        e.bind(Endpoint(*ep)).unwrap();
    }
    e
}

/// Which call a client makes.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Style {
    SendRec,
    Send,
}

struct Client {
    ep: Endpoint,
    engine: usize,
    dst: Endpoint,
    style: Style,
    next_id: u64,
    calls: u64,
    outstanding: bool,
    /// Overrides the run's call timeout.
    timeout: Option<Duration>,
    ok: u64,
    failed: Vec<ErrorCode>,
}

impl Client {
    fn new(ep: u32, engine: usize, dst: Endpoint, style: Style, calls: u64) -> Client {
        Client {
            ep: Endpoint(ep),
            engine,
            dst,
            style,
            next_id: 1,
            calls,
            outstanding: false,
            timeout: None,
            ok: 0,
            failed: vec![],
        }
    }

    fn done(&self) -> bool {
        !self.outstanding && self.next_id > self.calls
    }

    fn issue(&mut self, sim: &mut Sim, timeout: Duration) {
        let timeout = self.timeout.unwrap_or(timeout);
        if self.outstanding || self.next_id > self.calls {
            return;
        }
        let mut m = Message::new(1);
        m.set_u64(0, self.next_id);
        let e = &mut sim.engines[self.engine];
        let r = match self.style {
            Style::SendRec => e.sendrec(sim.now, self.ep, self.dst, m, Some(timeout)),
            Style::Send => e.send(sim.now, self.ep, self.dst, m, Some(timeout)),
        };
        match r {
            Ok(()) => self.outstanding = true,
            Err(e) => {
                self.failed.push(e);
                self.next_id += 1;
            }
        }
    }

    /// Takes the end of the outstanding call; panics if a call ends twice or with a foreign answer.
    fn on_done(&mut self, result: Result<Completion, ErrorCode>) {
        assert!(
            self.outstanding,
            "{}: a call ended that was not in progress (ended twice?)",
            self.ep
        );
        self.outstanding = false;
        match result {
            Ok(Completion::Replied(m)) => {
                assert_eq!(self.style, Style::SendRec);
                assert_eq!(
                    m.u64_at(0),
                    Some(self.next_id),
                    "{}: reply to another call",
                    self.ep
                );
                assert_eq!(m.source, self.dst);
                self.ok += 1;
            }
            Ok(Completion::Sent) => {
                assert_eq!(self.style, Style::Send);
                self.ok += 1;
            }
            Ok(other) => panic!("{}: unexpected completion {other:?}", self.ep),
            Err(e) => self.failed.push(e),
        }
        self.next_id += 1;
    }
}

/// An echo server that checks, per source, that ids arrive once each and in order.
#[derive(Default)]
struct Server {
    seen: BTreeMap<Endpoint, u64>,
    delivered: u64,
}

impl Server {
    fn on_message(&mut self, sim: &mut Sim, engine: usize, msg: Message, needs_reply: bool) {
        let id = msg.u64_at(0).unwrap();
        let last = self.seen.entry(msg.source).or_insert(0);
        assert!(
            id > *last,
            "{}: id {id} delivered after {last} (duplicate or reordered)",
            msg.source
        );
        *last = id;
        self.delivered += 1;
        if needs_reply {
            sim.engines[engine]
                .reply(sim.now, SERVER, msg.source, msg)
                .unwrap();
        }
    }
}

/// Runs clients against the echo server until all are done; the server lives where `sim.route` says.
fn run_echo(
    sim: &mut Sim,
    clients: &mut [Client],
    server: &mut Server,
    timeout: Duration,
    mut hook: impl FnMut(&mut Sim),
) {
    let server_engine = |sim: &Sim| sim.route[&SERVER];
    let e = server_engine(sim);
    sim.engines[e]
        .receive(sim.now, SERVER, Endpoint::ANY, None)
        .unwrap();
    let limit = sim.now + Duration::from_secs(600);
    loop {
        for c in clients.iter_mut() {
            c.issue(sim, timeout);
        }
        if clients.iter().all(Client::done) {
            return;
        }
        assert!(sim.now < limit, "simulation did not finish: a call hangs");
        hook(sim);
        let events = sim
            .step()
            .expect("calls in progress but nothing scheduled: a hang");
        for (i, ev) in events {
            match ev {
                Event::Done { ep, result } if ep == SERVER => match result {
                    Ok(Completion::Received { msg, needs_reply }) => {
                        server.on_message(sim, i, msg, needs_reply);
                        sim.engines[i]
                            .receive(sim.now, SERVER, Endpoint::ANY, None)
                            .unwrap();
                    }
                    Err(ErrorCode::Migrated) => {}
                    other => panic!("server: {other:?}"),
                },
                Event::Done { ep, result } => {
                    let c = clients
                        .iter_mut()
                        .find(|c| c.ep == ep)
                        .expect("event for an unknown client");
                    assert_eq!(c.engine, i);
                    c.on_done(result);
                }
                Event::NotifyFailed { .. } => panic!("no notifications here"),
            }
        }
    }
}

#[test]
fn calls_end_once_deliver_once_in_order_under_loss_dup_reorder() {
    for seed in 0..seeds() {
        let engines = vec![engine(1, &[10, 11]), engine(2, &[20, 21]), engine(3, &[30])];
        let mut sim = Sim::new(seed, engines, Faults::lossy(0.10));
        let mut clients = vec![
            Client::new(10, 0, SERVER, Style::SendRec, 12),
            Client::new(11, 0, SERVER, Style::Send, 12),
            Client::new(21, 1, SERVER, Style::SendRec, 12),
            Client::new(30, 2, SERVER, Style::SendRec, 12),
        ];
        let mut server = Server::default();
        run_echo(
            &mut sim,
            &mut clients,
            &mut server,
            Duration::from_secs(30),
            |_| {},
        );
        for c in &clients {
            assert_eq!(
                (c.ok, c.failed.as_slice()),
                (12, &[][..]),
                "seed {seed}: {}",
                c.ep
            );
        }
        assert_eq!(server.delivered, 48, "seed {seed}");
    }
}

#[test]
fn partition_ends_calls_with_timeout_and_spares_other_paths() {
    for seed in 0..seeds() {
        let engines = vec![engine(1, &[10, 11]), engine(2, &[20]), engine(3, &[30])];
        let mut sim = Sim::new(seed, engines, Faults::lossy(0.05));
        sim.partitions.push((0, 1));
        // 10 → 20 crosses the partition; 30 → 20 does not.
        let mut clients = vec![
            Client::new(10, 0, SERVER, Style::SendRec, 3),
            Client::new(30, 2, SERVER, Style::SendRec, 5),
        ];
        clients[0].timeout = Some(Duration::from_millis(300));
        let mut server = Server::default();
        run_echo(
            &mut sim,
            &mut clients,
            &mut server,
            Duration::from_secs(30),
            |_| {},
        );
        assert_eq!(
            clients[0].failed,
            vec![ErrorCode::Timeout; 3],
            "seed {seed}"
        );
        assert_eq!(clients[1].ok, 5, "seed {seed}");
    }
}

#[test]
fn migrating_server_loses_and_repeats_nothing() {
    for seed in 0..seeds() {
        let engines = vec![engine(1, &[10]), engine(2, &[20, 21]), engine(3, &[30])];
        let mut sim = Sim::new(seed, engines, Faults::lossy(0.10));
        let mut clients = vec![
            Client::new(10, 0, SERVER, Style::SendRec, 20),
            Client::new(21, 1, SERVER, Style::SendRec, 20),
            Client::new(30, 2, SERVER, Style::Send, 20),
        ];
        let mut server = Server::default();
        let move_at = sim.now + Duration::from_micros(sim.rng().range(0, 40_000));
        let route_lag = Duration::from_micros(sim.rng().range(0, 5_000));
        let mut moved: Option<Instant> = None;
        run_echo(
            &mut sim,
            &mut clients,
            &mut server,
            Duration::from_secs(30),
            |sim| {
                if moved.is_none() && sim.now >= move_at {
                    // Busy while the server's last event is not yet taken: try again next step.
                    match sim.engines[1].export_endpoint(SERVER) {
                        Ok(state) => {
                            sim.engines[2].import_endpoint(state).unwrap();
                            sim.engines[2]
                                .receive(sim.now, SERVER, Endpoint::ANY, None)
                                .unwrap();
                            moved = Some(sim.now);
                        }
                        Err(e) => assert_eq!(e, ErrorCode::Busy),
                    }
                }
                if moved.is_some_and(|t| sim.now >= t + route_lag) {
                    sim.route.insert(SERVER, 2);
                }
            },
        );
        assert!(moved.is_some(), "seed {seed}: the move never happened");
        for c in &clients {
            assert_eq!(
                (c.ok, c.failed.as_slice()),
                (20, &[][..]),
                "seed {seed}: {}",
                c.ep
            );
        }
        assert_eq!(server.delivered, 60, "seed {seed}");
    }
}

#[test]
fn notifications_coalesce_and_are_not_lost() {
    for seed in 0..seeds() {
        let engines = vec![engine(1, &[10]), engine(2, &[20])];
        let mut sim = Sim::new(seed, engines, Faults::lossy(0.10));
        let (a, b) = (Endpoint(10), SERVER);
        let bursts = 1 + sim.rng().range(0, 4);
        for _ in 0..3 {
            for _ in 0..bursts {
                sim.engines[0].notify(sim.now, a, b).unwrap();
            }
            // Let the network settle with nobody receiving: the notifications pile up as one.
            while let Some(ev) = sim.step() {
                assert!(ev.is_empty(), "seed {seed}: unexpected {ev:?}");
            }
            sim.engines[1]
                .receive(sim.now, b, Endpoint::ANY, Some(Duration::from_millis(1)))
                .unwrap();
            let ev = sim.drain_events();
            assert!(
                matches!(&ev[..], [(1, Event::Done { result: Ok(Completion::Received { msg, .. }), .. })] if msg.is_notify() && msg.source == a),
                "seed {seed}: expected one notification, got {ev:?}"
            );
            sim.engines[1]
                .receive(sim.now, b, Endpoint::ANY, Some(Duration::from_millis(1)))
                .unwrap();
            let mut rest = Vec::new();
            while let Some(ev) = sim.step() {
                rest.extend(ev);
            }
            assert!(
                matches!(
                    &rest[..],
                    [(
                        1,
                        Event::Done {
                            result: Err(ErrorCode::Timeout),
                            ..
                        }
                    )]
                ),
                "seed {seed}: a second notification appeared: {rest:?}"
            );
        }
    }
}

fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut r = sim::Rng::new(seed);
    (0..len).map(|_| r.next_u64() as u8).collect()
}

#[test]
fn vcopy_is_byte_exact_under_ten_percent_loss() {
    for seed in 0..seeds() {
        let engines = vec![engine(1, &[10]), engine(2, &[20])];
        let mut sim = Sim::new(seed, engines, Faults::lossy(0.10));
        let len = sim.rng().range(1, 200_000) as usize;
        let (src_off, dst_off) = (sim.rng().range(0, 5000), sim.rng().range(0, 5000));
        let push = sim.rng().chance(0.5);
        let data = pattern(len, seed);
        let mut src_buf = vec![0u8; src_off as usize + len];
        src_buf[src_off as usize..].copy_from_slice(&data);
        sim.engines[0].set_buffer(Endpoint(10), src_buf).unwrap();
        sim.engines[1]
            .set_buffer(SERVER, vec![0u8; dst_off as usize + len])
            .unwrap();
        // Push: the holder (10) asks; pull: the receiver (20) asks.
        let (req_engine, req) = if push { (0, Endpoint(10)) } else { (1, SERVER) };
        let now = sim.now;
        sim.engines[req_engine]
            .vcopy(
                now,
                req,
                VcopyRequest {
                    src: Endpoint(10),
                    src_offset: src_off,
                    dst: SERVER,
                    dst_offset: dst_off,
                    len: len as u64,
                },
                Some(Duration::from_secs(120)),
            )
            .unwrap();
        let mut results = Vec::new();
        while let Some(ev) = sim.step() {
            results.extend(ev);
        }
        assert_eq!(
            results,
            vec![(
                req_engine,
                Event::Done {
                    ep: req,
                    result: Ok(Completion::Copied { len: len as u64 })
                }
            )],
            "seed {seed} (push {push}, len {len})"
        );
        assert!(
            sim.engines[1].buffer(SERVER).unwrap()[dst_off as usize..] == data[..],
            "seed {seed}: bytes differ"
        );
    }
}

#[test]
fn four_mib_vcopy_under_loss_both_ways() {
    for (seed, push) in [(1, true), (2, false)] {
        let engines = vec![engine(1, &[10]), engine(2, &[20])];
        let mut sim = Sim::new(seed, engines, Faults::lossy(0.10));
        let data = pattern(4 << 20, seed);
        sim.engines[0]
            .set_buffer(Endpoint(10), data.clone())
            .unwrap();
        sim.engines[1].set_buffer(SERVER, vec![0; 4 << 20]).unwrap();
        let (e, req) = if push { (0, Endpoint(10)) } else { (1, SERVER) };
        let now = sim.now;
        sim.engines[e]
            .vcopy(
                now,
                req,
                VcopyRequest {
                    src: Endpoint(10),
                    src_offset: 0,
                    dst: SERVER,
                    dst_offset: 0,
                    len: 4 << 20,
                },
                Some(Duration::from_secs(600)),
            )
            .unwrap();
        let mut results = Vec::new();
        while let Some(ev) = sim.step() {
            results.extend(ev);
        }
        assert_eq!(
            results,
            vec![(
                e,
                Event::Done {
                    ep: req,
                    result: Ok(Completion::Copied { len: 4 << 20 })
                }
            )]
        );
        assert!(sim.engines[1].buffer(SERVER).unwrap() == &data[..]);
    }
}

fn jumbo_engine(incarnation: u32, eps: &[u32], mtu: usize) -> Engine {
    let mut cfg = EngineConfig::new(DC, incarnation);
    cfg.vcopy_chunk = m3ipc_core::wire::chunk_for_mtu(mtu) as u32;
    let mut e = Engine::new(cfg);
    for ep in eps {
        e.bind(Endpoint(*ep)).unwrap();
    }
    e
}

/// Runs one vcopy of `data` from endpoint 10 (engine 0) to the server (engine 1) to the end and
/// checks that exactly the requester's call ended, well, and that the bytes arrived exactly.
fn copy_and_check(sim: &mut Sim, data: &[u8], push: bool, what: &str) {
    let len = data.len();
    sim.engines[0]
        .set_buffer(Endpoint(10), data.to_vec())
        .unwrap();
    sim.engines[1].set_buffer(SERVER, vec![0u8; len]).unwrap();
    let (req_engine, req) = if push { (0, Endpoint(10)) } else { (1, SERVER) };
    let now = sim.now;
    sim.engines[req_engine]
        .vcopy(
            now,
            req,
            VcopyRequest {
                src: Endpoint(10),
                src_offset: 0,
                dst: SERVER,
                dst_offset: 0,
                len: len as u64,
            },
            Some(Duration::from_secs(120)),
        )
        .unwrap();
    let mut results = Vec::new();
    while let Some(ev) = sim.step() {
        results.extend(ev);
    }
    assert_eq!(
        results,
        vec![(
            req_engine,
            Event::Done {
                ep: req,
                result: Ok(Completion::Copied { len: len as u64 })
            }
        )],
        "{what}"
    );
    assert!(
        sim.engines[1].buffer(SERVER).unwrap() == data,
        "{what}: bytes differ"
    );
}

#[test]
fn jumbo_vcopy_with_frames_dropped_and_reordered_is_byte_exact() {
    for mtu in [9000, 65535] {
        let chunk = m3ipc_core::wire::chunk_for_mtu(mtu);
        for push in [true, false] {
            let engines = vec![jumbo_engine(1, &[10], mtu), jumbo_engine(2, &[20], mtu)];
            // No random faults: exactly the frames named below go missing or late.
            let faults = Faults {
                loss: 0.0,
                dup: 0.0,
                delay_us: (100, 100),
            };
            let mut sim = Sim::new(u64::from(push), engines, faults);
            sim.drop_data = vec![2, 9];
            sim.hold_data = vec![(4, 5_000), (5, 2_000)];
            let data = pattern(3 << 20, mtu as u64);
            copy_and_check(&mut sim, &data, push, &format!("mtu {mtu} push {push}"));
            assert_eq!(
                sim.max_data_payload, chunk,
                "mtu {mtu}: data frames carry the agreed chunk"
            );
            let chunks = (3u64 << 20).div_ceil(chunk as u64);
            assert!(
                sim.data_frames > chunks && sim.data_frames < chunks + 64,
                "mtu {mtu} push {push}: {} data frames for {chunks} chunks (2 dropped must be resent, not the whole window)",
                sim.data_frames
            );
        }
    }
}

#[test]
fn jumbo_vcopy_under_loss_with_mismatched_chunks() {
    // Each side's MTU at random (legacy 1500, jumbo or the largest): the transfer uses the
    // smaller chunk, whoever asks, and stays byte-exact under 10% loss, duplication, reordering.
    let mtus = [1500, 4000, 9000, 65535];
    for seed in 0..seeds().div_ceil(10) {
        let mut r = sim::Rng::new(seed);
        let (ma, mb) = (mtus[r.range(0, 3) as usize], mtus[r.range(0, 3) as usize]);
        let push = r.chance(0.5);
        let len = r.range(1, 600_000) as usize;
        let engines = vec![jumbo_engine(1, &[10], ma), jumbo_engine(2, &[20], mb)];
        let mut sim = Sim::new(seed, engines, Faults::lossy(0.10));
        let data = pattern(len, seed);
        let what = format!("seed {seed} mtu {ma}/{mb} push {push} len {len}");
        copy_and_check(&mut sim, &data, push, &what);
        let agreed = m3ipc_core::wire::chunk_for_mtu(ma.min(mb));
        assert!(
            sim.max_data_payload <= agreed,
            "{what}: a data frame of {} bytes, agreed {agreed}",
            sim.max_data_payload
        );
        if len > 2 * agreed {
            assert_eq!(
                sim.max_data_payload, agreed,
                "{what}: uses the agreed chunk"
            );
        }
    }
}

/// A sendrec from endpoint 11 (engine 0) to 21 (engine 1) answered at once; returns its round
/// trip in µs. Runs the simulator (and whatever else is going on) until the reply is in.
fn timed_sendrec(sim: &mut Sim, id: u64) -> u64 {
    let t0 = sim.now;
    let now = sim.now;
    sim.engines[1]
        .receive(now, Endpoint(21), Endpoint::ANY, None)
        .unwrap();
    sim.engines[0]
        .sendrec(
            now,
            Endpoint(11),
            Endpoint(21),
            Message::new(id as u32),
            Some(Duration::from_secs(10)),
        )
        .unwrap();
    loop {
        let evs = sim.step().expect("the sendrec is pending");
        for (e, ev) in evs {
            match (e, ev) {
                (
                    1,
                    Event::Done {
                        ep: Endpoint(21),
                        result: Ok(Completion::Received { msg, .. }),
                    },
                ) => {
                    let now = sim.now;
                    sim.engines[1]
                        .reply(now, Endpoint(21), msg.source, msg)
                        .unwrap();
                }
                (
                    0,
                    Event::Done {
                        ep: Endpoint(11),
                        result,
                    },
                ) => {
                    assert!(result.is_ok(), "sendrec {id}: {result:?}");
                    return sim.now.as_micros() - t0.as_micros();
                }
                _ => {}
            }
        }
    }
}

#[test]
fn window_fills_the_path_without_delaying_small_calls() {
    // 1 GB/s link, 200 µs each way: a bandwidth-delay product of ~400 KB, far below the 2 MiB cap.
    let engines = vec![
        jumbo_engine(1, &[10, 11], 65535),
        jumbo_engine(2, &[20, 21], 65535),
    ];
    let faults = Faults {
        loss: 0.0,
        dup: 0.0,
        delay_us: (200, 200),
    };
    let mut sim = Sim::new(7, engines, faults);
    sim.bytes_per_us = 1000;
    let idle = timed_sendrec(&mut sim, 0);
    let len: usize = 64 << 20;
    let data = pattern(len, 3);
    sim.engines[0]
        .set_buffer(Endpoint(10), data.clone())
        .unwrap();
    sim.engines[1].set_buffer(SERVER, vec![0u8; len]).unwrap();
    let t0 = sim.now;
    let now = sim.now;
    sim.engines[0]
        .vcopy(
            now,
            Endpoint(10),
            VcopyRequest {
                src: Endpoint(10),
                src_offset: 0,
                dst: SERVER,
                dst_offset: 0,
                len: len as u64,
            },
            Some(Duration::from_secs(60)),
        )
        .unwrap();
    // Let the copy get going (past its start-up), then time small calls beside it.
    let mut loaded = Vec::new();
    let mut copied_at = None;
    while copied_at.is_none() {
        if sim.now.as_micros() - t0.as_micros() > 10_000 && loaded.len() < 20 {
            loaded.push(timed_sendrec(&mut sim, loaded.len() as u64 + 1));
            continue;
        }
        for (e, ev) in sim.step().expect("the copy is pending") {
            if let (
                0,
                Event::Done {
                    ep: Endpoint(10),
                    result,
                },
            ) = (e, ev)
            {
                assert_eq!(result, Ok(Completion::Copied { len: len as u64 }));
                copied_at = Some(sim.now);
            }
        }
    }
    assert!(
        sim.engines[1].buffer(SERVER).unwrap() == &data[..],
        "bytes differ"
    );
    let us = copied_at.unwrap().as_micros() - t0.as_micros();
    let mb_s = len as f64 / us as f64;
    loaded.sort();
    let median = loaded[loaded.len() / 2];
    eprintln!(
        "sim: 64 MiB vcopy over a 1000 MB/s, 400 µs RTT link: {mb_s:.0} MB/s; sendrec idle {idle} µs, during the copy median {median} µs (n={})",
        loaded.len()
    );
    assert_eq!(
        loaded.len(),
        20,
        "the copy ended before 20 calls were timed"
    );
    assert!(
        mb_s > 500.0,
        "the window fills the path: {mb_s:.0} MB/s of 1000"
    );
    assert!(
        median <= 3 * idle,
        "a sendrec during the copy takes {median} µs, {idle} µs unloaded"
    );
}
