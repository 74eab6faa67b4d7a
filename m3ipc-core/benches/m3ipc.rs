//! Criterion benchmarks: frame encode and decode, a local sendrec round trip, and a sendrec round trip
//! between two engines joined by an in-memory wire (the engine's own cost, no I/O).
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use m3ipc_core::wire::{FrameRepr, Kind, MAX_FRAME};
use m3ipc_core::{message, DcId, Endpoint, Engine, EngineConfig, Event, Instant, Message};
use std::time::Duration;

const A: Endpoint = Endpoint(10);
const B: Endpoint = Endpoint(20);

fn frames(c: &mut Criterion) {
    let mut body = [0u8; message::WIRE_LEN];
    Message::with_bytes(3, b"payload").emit(&mut body);
    let repr = FrameRepr {
        kind: Kind::SendRec,
        dc: DcId(1),
        flags: 0,
        src: A,
        dst: B,
        seq: 42,
        aux: 0,
        code: 0,
        payload: &body,
    };
    let mut buf = [0u8; MAX_FRAME];
    let n = repr.emit(&mut buf).unwrap();
    let mut g = c.benchmark_group("frame");
    g.throughput(Throughput::Elements(1));
    g.bench_function("encode message frame", |b| {
        b.iter(|| black_box(&repr).emit(black_box(&mut buf)).unwrap())
    });
    let bytes = buf[..n].to_vec();
    g.bench_function("decode message frame", |b| {
        b.iter(|| FrameRepr::parse(black_box(&bytes)).unwrap().seq)
    });
    g.finish();
}

fn take(e: &mut Engine) -> Event {
    e.poll_event().expect("an event")
}

fn local_sendrec(c: &mut Criterion) {
    let mut e = Engine::new(EngineConfig::new(DcId(1), 1));
    e.bind(A).unwrap();
    e.bind(B).unwrap();
    let now = Instant::from_micros(1);
    let t = Some(Duration::from_secs(1));
    let msg = Message::with_bytes(1, b"ping");
    let mut g = c.benchmark_group("sendrec");
    g.throughput(Throughput::Elements(1));
    g.bench_function("local round trip", |b| {
        b.iter(|| {
            e.receive(now, B, Endpoint::ANY, None).unwrap();
            e.sendrec(now, A, B, black_box(msg), t).unwrap();
            let Event::Done {
                result: Ok(m3ipc_core::Completion::Received { msg, .. }),
                ..
            } = take(&mut e)
            else {
                panic!("server did not receive")
            };
            e.reply(now, B, A, msg).unwrap();
            black_box(take(&mut e));
        })
    });

    let mut client = Engine::new(EngineConfig::new(DcId(1), 1));
    let mut server = Engine::new(EngineConfig::new(DcId(1), 2));
    client.bind(A).unwrap();
    server.bind(B).unwrap();
    let mut buf = [0u8; MAX_FRAME];
    g.bench_function("cross-engine round trip (in-memory wire)", |b| {
        b.iter(|| {
            server.receive(now, B, Endpoint::ANY, None).unwrap();
            client.sendrec(now, A, B, black_box(msg), t).unwrap();
            let n = client.poll_transmit(now, &mut buf).unwrap();
            server.handle_frame(now, &buf[..n]);
            let Event::Done {
                result: Ok(m3ipc_core::Completion::Received { msg, .. }),
                ..
            } = take(&mut server)
            else {
                panic!("server did not receive")
            };
            server.reply(now, B, A, msg).unwrap();
            while let Some(n) = server.poll_transmit(now, &mut buf) {
                client.handle_frame(now, &buf[..n]);
            }
            black_box(take(&mut client));
        })
    });
    g.finish();
}

criterion_group!(benches, frames, local_sendrec);
criterion_main!(benches);
