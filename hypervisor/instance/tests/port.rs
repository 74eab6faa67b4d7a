//! The engine-over-a-port loop between two engines, over a datagram pair and over a stream.

use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dvs_instance::port::{DgramPort, EnginePort, FramePort, StreamPort};
use m3ipc_core::engine::{Completion, Event};
use m3ipc_core::{Endpoint, Message, VcopyRequest};

fn dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("dvs-inst-port-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

const CLIENT: Endpoint = Endpoint(10);
const SERVER: Endpoint = Endpoint(20);

/// An echo server on `SERVER` with a 64 KiB buffer holding 0, 1, 2, ...: answers every sendrec
/// with the message it got plus one in its type, until `stop`.
fn serve<P: FramePort + Send + 'static>(
    port: P,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut ep = EnginePort::new(port, 1, &[SERVER], [2, 0, 0, 0, 0, 2]).unwrap();
        let buf: Vec<u8> = (0..65536u32).map(|i| i as u8).collect();
        ep.engine.set_buffer(SERVER, buf).unwrap();
        let now = ep.now();
        ep.engine.receive(now, SERVER, Endpoint::ANY, None).unwrap();
        let mut served = 0;
        while !stop.load(Ordering::Relaxed) {
            ep.poll(Duration::from_millis(20)).unwrap();
            while let Some(ev) = ep.next_event() {
                if let Event::Done {
                    ep: SERVER,
                    result: Ok(Completion::Received { msg, needs_reply }),
                } = ev
                {
                    let now = ep.now();
                    if needs_reply {
                        let mut answer = msg;
                        answer.mtype += 1;
                        ep.engine.reply(now, SERVER, msg.source, answer).unwrap();
                        served += 1;
                    }
                    ep.engine.receive(now, SERVER, Endpoint::ANY, None).unwrap();
                }
            }
        }
        served
    })
}

fn exercise<P: FramePort>(client: &mut EnginePort<P>) {
    for i in 0..50u32 {
        let msg = Message::with_bytes(100 + i, b"ping");
        let r = client
            .sendrec(CLIENT, SERVER, msg, Duration::from_secs(5))
            .unwrap();
        assert_eq!(r.mtype, 101 + i);
        assert_eq!(&r.payload[..4], b"ping");
        assert_eq!(r.source, SERVER);
    }
    client.engine.set_buffer(CLIENT, vec![0; 65536]).unwrap();
    let pulled = client
        .vcopy(
            CLIENT,
            VcopyRequest {
                src: SERVER,
                src_offset: 1000,
                dst: CLIENT,
                dst_offset: 0,
                len: 40_000,
            },
            Duration::from_secs(10),
        )
        .unwrap();
    assert_eq!(pulled, 40_000);
    let got = client.engine.buffer(CLIENT).unwrap();
    assert!(got[..40_000]
        .iter()
        .enumerate()
        .all(|(i, &b)| b == (i + 1000) as u8));
    // A copy outside the server's buffer fails with the engine's error, named.
    let err = client
        .vcopy(
            CLIENT,
            VcopyRequest {
                src: SERVER,
                src_offset: 60_000,
                dst: CLIENT,
                dst_offset: 0,
                len: 10_000,
            },
            Duration::from_secs(5),
        )
        .unwrap_err();
    assert!(err.contains("call failed"), "{err}");
}

#[test]
fn sendrec_and_vcopy_between_two_engines_over_datagrams() {
    let d = dir("dgram");
    let (a, b) = (d.join("a.sock"), d.join("b.sock"));
    let stop = Arc::new(AtomicBool::new(false));
    let server = serve(DgramPort::bind(&b, &a).unwrap(), stop.clone());
    let mut client = EnginePort::new(
        DgramPort::bind(&a, &b).unwrap(),
        1,
        &[CLIENT],
        [2, 0, 0, 0, 0, 1],
    )
    .unwrap();
    client.spin = Duration::from_micros(20);
    exercise(&mut client);
    stop.store(true, Ordering::Relaxed);
    assert_eq!(server.join().unwrap(), 50);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn sendrec_and_vcopy_between_two_engines_over_a_stream() {
    let d = dir("stream");
    let path = d.join("s.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let client_port = StreamPort::connect(&path, Duration::from_secs(2)).unwrap();
    let (conn, _) = listener.accept().unwrap();
    let server = serve(StreamPort::from_stream(conn).unwrap(), stop.clone());
    let mut client = EnginePort::new(client_port, 1, &[CLIENT], [2, 0, 0, 0, 0, 1]).unwrap();
    exercise(&mut client);
    stop.store(true, Ordering::Relaxed);
    assert_eq!(server.join().unwrap(), 50);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn other_frames_go_to_the_hook_and_its_answer_is_sent() {
    let d = dir("hook");
    let (a, b) = (d.join("a.sock"), d.join("b.sock"));
    let mut peer = DgramPort::bind(&b, &a).unwrap();
    let mut ep = EnginePort::new(
        DgramPort::bind(&a, &b).unwrap(),
        1,
        &[CLIENT],
        [2, 0, 0, 0, 0, 1],
    )
    .unwrap();
    ep.on_other = Some(Box::new(|f: &[u8]| {
        (f.len() > 14 && f[12..14] == [0x08, 0x06]).then(|| b"arp answer".to_vec())
    }));
    let mut arp = vec![0xffu8; 6];
    arp.extend_from_slice(&[2, 0, 0, 0, 0, 9, 0x08, 0x06]);
    arp.extend_from_slice(&[0; 28]);
    peer.send(&arp).unwrap();
    assert_eq!(ep.poll(Duration::from_secs(2)).unwrap(), 1);
    let mut buf = [0u8; 100];
    let n = peer
        .recv(&mut buf, Duration::from_secs(2))
        .unwrap()
        .unwrap();
    assert_eq!(&buf[..n], b"arp answer");
    // Nothing else: a quiet port times out.
    assert_eq!(
        peer.recv(&mut buf, Duration::from_millis(20)).unwrap(),
        None
    );
    // A call to an endpoint nobody holds ends with a named timeout.
    let e = ep
        .sendrec(
            CLIENT,
            Endpoint(77),
            Message::new(1),
            Duration::from_millis(200),
        )
        .unwrap_err();
    assert!(e.contains("endpoint 10"), "{e}");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_stream_port_refuses_an_oversized_frame() {
    let d = dir("big");
    let path = d.join("s.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let mut port = StreamPort::connect(&path, Duration::from_secs(2)).unwrap();
    let (mut conn, _) = listener.accept().unwrap();
    std::io::Write::write_all(&mut conn, &(1u32 << 20).to_be_bytes()).unwrap();
    let mut buf = vec![0u8; 65536];
    let e = port.recv(&mut buf, Duration::from_secs(1)).unwrap_err();
    assert!(e.to_string().contains("1048576"), "{e}");
    // Connecting to nothing gives up after the deadline, naming the path.
    let e = StreamPort::connect(&d.join("none.sock"), Duration::from_millis(50)).unwrap_err();
    assert!(e.to_string().contains("none.sock"), "{e}");
    let _ = std::fs::remove_dir_all(&d);
}
