//! The gateway against a second smoltcp stack playing the guest (10.0.2.15) on the other end of
//! the link socket: echo, one-reply and source servers, a guest that refuses at first, a guest
//! that dials out, and raw garbage frames.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use smoltcp::iface::{Config as IfaceConfig, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{self, Device, DeviceCapabilities, Medium};
use smoltcp::socket::tcp;
use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, HardwareAddress, IpAddress,
    IpCidr, IpProtocol, Ipv4Address, Ipv4Packet, Ipv4Repr, TcpPacket,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

use super::*;

const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
const ECHO: u16 = 7;
const SOURCE: u16 = 9;
const REPLY: u16 = 80;

// ---- the guest: a smoltcp stack on the link ----

struct TestDevice {
    rx: VecDeque<Vec<u8>>,
    tx: Vec<Vec<u8>>,
}

struct RxTok(Vec<u8>);
impl phy::RxToken for RxTok {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}
struct TxTok<'a>(&'a mut Vec<Vec<u8>>);
impl phy::TxToken for TxTok<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut b = vec![0; len];
        let r = f(&mut b);
        self.0.push(b);
        r
    }
}
impl Device for TestDevice {
    type RxToken<'a> = RxTok;
    type TxToken<'a> = TxTok<'a>;
    fn receive(&mut self, _: smoltcp::time::Instant) -> Option<(RxTok, TxTok<'_>)> {
        let f = self.rx.pop_front()?;
        Some((RxTok(f), TxTok(&mut self.tx)))
    }
    fn transmit(&mut self, _: smoltcp::time::Instant) -> Option<TxTok<'_>> {
        Some(TxTok(&mut self.tx))
    }
    fn capabilities(&self) -> DeviceCapabilities {
        let mut c = DeviceCapabilities::default();
        c.medium = Medium::Ethernet;
        c.max_transmission_unit = 1514;
        c
    }
}

/// What the test guest runs and what it tells the test.
#[derive(Default)]
struct GuestSpec {
    /// Echo listeners on port 7.
    echo: usize,
    /// One-reply listeners on port 80 ("ok LINE\n" to the first line, then close).
    reply: usize,
    /// Bytes the source on port 9 sends to each connection (pattern), then closes.
    source: usize,
    /// A connection the guest opens to the gateway's address at this port.
    dial: Option<u16>,
    /// The reply listeners start off ([`GuestState::reply_on`] clear).
    reply_off: bool,
}

#[derive(Default)]
struct GuestState {
    /// The reply listeners listen only while this is set (else the guest answers SYNs with RST).
    reply_on: AtomicBool,
    /// Bytes the source has put in its socket.
    sent: AtomicU64,
    /// Replies sent.
    replies: AtomicU64,
    /// The dialled connection reached ESTABLISHED.
    dial_established: AtomicBool,
    /// The dialled connection was reset.
    dial_reset: AtomicBool,
    /// Raw bytes to write on the link before the next frames.
    inject: Mutex<Vec<u8>>,
}

fn framed(frame: &[u8]) -> Vec<u8> {
    let mut v = (frame.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(frame);
    v
}

fn pattern_at(i: u64) -> u8 {
    (i.wrapping_mul(2654435761) >> 13) as u8
}

async fn run_guest(path: PathBuf, spec: GuestSpec, st: Arc<GuestState>) {
    let mut stream = loop {
        match UnixStream::connect(&path).await {
            Ok(s) => break s,
            Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    };
    let mut dev = TestDevice {
        rx: VecDeque::new(),
        tx: Vec::new(),
    };
    let origin = Instant::now();
    let now = || smoltcp::time::Instant::from_micros(origin.elapsed().as_micros() as i64);
    let mut ic = IfaceConfig::new(HardwareAddress::Ethernet(EthernetAddress(GUEST_MAC)));
    ic.random_seed = 7;
    let mut iface = Interface::new(ic, &mut dev, now());
    iface.update_ip_addrs(|a| {
        a.push(IpCidr::new(IpAddress::v4(10, 0, 2, 15), 24))
            .unwrap();
    });
    let mut sockets = SocketSet::new(Vec::new());
    let mk = |sockets: &mut SocketSet<'static>| {
        sockets.add(tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; 65536]),
            tcp::SocketBuffer::new(vec![0; 65536]),
        ))
    };
    let echo: Vec<SocketHandle> = (0..spec.echo).map(|_| mk(&mut sockets)).collect();
    let reply: Vec<SocketHandle> = (0..spec.reply).map(|_| mk(&mut sockets)).collect();
    let source = (spec.source > 0).then(|| mk(&mut sockets));
    let mut source_off = 0u64;
    let dial = spec.dial.map(|port| {
        let h = mk(&mut sockets);
        let s = sockets.get_mut::<tcp::Socket>(h);
        s.connect(iface.context(), (IpAddress::v4(10, 0, 2, 2), port), 40000)
            .unwrap();
        h
    });
    let mut line: Vec<Vec<u8>> = vec![Vec::new(); spec.reply];
    let mut rbuf = vec![0u8; 256 << 10];
    let mut acc: Vec<u8> = Vec::new();
    let mut tmp = vec![0u8; 65536];
    loop {
        // Frames in.
        loop {
            match stream.try_read(&mut rbuf) {
                Ok(0) => return,
                Ok(n) => acc.extend_from_slice(&rbuf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(_) => return,
            }
        }
        let mut pos = 0;
        while acc.len() - pos >= 4 {
            let len = u32::from_be_bytes(acc[pos..pos + 4].try_into().unwrap()) as usize;
            if acc.len() - pos < 4 + len {
                break;
            }
            dev.rx.push_back(acc[pos + 4..pos + 4 + len].to_vec());
            pos += 4 + len;
        }
        acc.drain(..pos);
        iface.poll(now(), &mut dev, &mut sockets);
        // The servers.
        for &h in &echo {
            let s = sockets.get_mut::<tcp::Socket>(h);
            if !s.is_open() {
                s.listen(ECHO).unwrap();
            }
            while s.can_recv() && s.can_send() {
                let room = (s.send_capacity() - s.send_queue()).min(tmp.len());
                let n = s.recv_slice(&mut tmp[..room]).unwrap_or(0);
                if n == 0 {
                    break;
                }
                s.send_slice(&tmp[..n]).unwrap();
            }
            if !s.may_recv() && s.may_send() && s.send_queue() == 0 {
                s.close();
            }
        }
        let on = st.reply_on.load(Ordering::SeqCst);
        for (i, &h) in reply.iter().enumerate() {
            let s = sockets.get_mut::<tcp::Socket>(h);
            if !s.is_open() && on {
                s.listen(REPLY).unwrap();
                line[i].clear();
            }
            if s.can_recv() {
                let n = s.recv_slice(&mut tmp).unwrap_or(0);
                line[i].extend_from_slice(&tmp[..n]);
                if let Some(nl) = line[i].iter().position(|&b| b == b'\n') {
                    let mut out = b"ok ".to_vec();
                    out.extend_from_slice(&line[i][..=nl]);
                    s.send_slice(&out).unwrap();
                    s.close();
                    st.replies.fetch_add(1, Ordering::SeqCst);
                    line[i].clear();
                }
            }
        }
        if let Some(h) = source {
            let s = sockets.get_mut::<tcp::Socket>(h);
            if !s.is_open() {
                s.listen(SOURCE).unwrap();
                source_off = 0;
            }
            while s.can_send() && source_off < spec.source as u64 {
                let left = spec.source as u64 - source_off;
                let n = s
                    .send(|b| {
                        let n = b.len().min(left as usize);
                        for (k, x) in b[..n].iter_mut().enumerate() {
                            *x = pattern_at(source_off + k as u64);
                        }
                        (n, n)
                    })
                    .unwrap_or(0);
                source_off += n as u64;
                st.sent.fetch_add(n as u64, Ordering::SeqCst);
                if n == 0 {
                    break;
                }
            }
            if source_off == spec.source as u64 && s.may_send() {
                s.close();
            }
        }
        if let Some(h) = dial {
            let s = sockets.get_mut::<tcp::Socket>(h);
            if s.state() == tcp::State::Established {
                st.dial_established.store(true, Ordering::SeqCst);
            }
            if s.state() == tcp::State::Closed {
                st.dial_reset.store(true, Ordering::SeqCst);
            }
        }
        iface.poll(now(), &mut dev, &mut sockets);
        // Frames out.
        let mut out = std::mem::take(&mut *st.inject.lock().unwrap());
        for f in dev.tx.drain(..) {
            out.extend_from_slice(&framed(&f));
        }
        if !out.is_empty() && stream.write_all(&out).await.is_err() {
            return;
        }
        let wait = iface
            .poll_delay(now(), &sockets)
            .map_or(Duration::from_millis(2), |d| {
                Duration::from_micros(d.total_micros()).min(Duration::from_millis(2))
            });
        tokio::select! {
            _ = stream.readable() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

// ---- the harness ----

struct Setup {
    gw: GatewayHandle,
    guest: Arc<GuestState>,
    task: tokio::task::JoinHandle<()>,
    _dir: TmpDir,
}

struct TmpDir(PathBuf);
impl TmpDir {
    fn new() -> TmpDir {
        static N: AtomicU64 = AtomicU64::new(0);
        let p = std::env::temp_dir().join(format!(
            "dvs-publish-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&p).unwrap();
        TmpDir(p)
    }
}
impl Drop for TmpDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn local(port: u16) -> Forward {
    Forward {
        listen: "127.0.0.1:0".parse().unwrap(),
        guest_port: port,
    }
}

impl Setup {
    fn new(cfg: Config, forwards: &[Forward], spec: GuestSpec) -> Setup {
        let dir = TmpDir::new();
        let link = dir.0.join("pub.sock");
        let gw = Gateway::bind(&link, forwards, cfg).unwrap().spawn();
        let guest = Arc::new(GuestState::default());
        guest.reply_on.store(!spec.reply_off, Ordering::SeqCst);
        let task = tokio::spawn(run_guest(link, spec, guest.clone()));
        Setup {
            gw,
            guest,
            task,
            _dir: dir,
        }
    }

    fn addr(&self, i: usize) -> SocketAddr {
        self.gw.local_addrs()[i]
    }

    fn link(&self) -> &Path {
        self.gw.link_path()
    }

    async fn wait(&self, what: &str, within: Duration, f: impl Fn(&Counters) -> bool) -> Counters {
        let deadline = Instant::now() + within;
        loop {
            let c = self.gw.counters();
            if f(&c) {
                return c;
            }
            assert!(Instant::now() < deadline, "waiting for {what}: {c:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn one_reply(addr: SocketAddr, i: usize) -> Result<(), String> {
    let mut s = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let req = format!("client {i}\n");
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| format!("client {i} write: {e}"))?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)
        .await
        .map_err(|e| format!("client {i} read: {e}"))?;
    if out != format!("ok {req}").as_bytes() {
        return Err(format!(
            "client {i}: got {:?}",
            String::from_utf8_lossy(&out)
        ));
    }
    Ok(())
}

// ---- the tests ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_mib_both_ways_byte_exact_with_half_close() {
    let s = Setup::new(
        Config::default(),
        &[local(ECHO)],
        GuestSpec {
            echo: 2,
            ..Default::default()
        },
    );
    let size = 6 << 20;
    let data: Vec<u8> = (0..size as u64).map(pattern_at).collect();
    let c = TcpStream::connect(s.addr(0)).await.unwrap();
    let (mut r, mut w) = c.into_split();
    let sent = data.clone();
    let writer = tokio::spawn(async move {
        w.write_all(&sent).await.unwrap();
        // Half-close: the guest sees the FIN after the data, echoes the rest and closes.
        w.shutdown().await.unwrap();
        w
    });
    let mut got = Vec::with_capacity(size);
    let t0 = Instant::now();
    tokio::time::timeout(Duration::from_secs(60), r.read_to_end(&mut got))
        .await
        .expect("echo within 60 s")
        .unwrap();
    let took = t0.elapsed();
    let _w = writer.await.unwrap();
    assert_eq!(got.len(), size, "echoed bytes");
    assert!(got == data, "echo differs");
    eprintln!(
        "echo {} MiB each way in {took:?} ({:.0} MiB/s each way)",
        size >> 20,
        size as f64 / (1 << 20) as f64 / took.as_secs_f64()
    );
    let c = s
        .wait("the connection to end", Duration::from_secs(5), |c| {
            c.active == 0
        })
        .await;
    assert_eq!(
        (
            c.bytes_to_guest,
            c.bytes_to_client,
            c.connected,
            c.reset_by_guest
        ),
        (size as u64, size as u64, 1, 0),
        "{c:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hundred_clients_on_a_guest_that_takes_eight() {
    let cfg = Config {
        max_guest_conns: 8,
        ..Config::default()
    };
    let s = Setup::new(
        cfg,
        &[local(REPLY)],
        GuestSpec {
            reply: 8,
            ..Default::default()
        },
    );
    let addr = s.addr(0);
    let clients: Vec<_> = (0..300).map(|i| tokio::spawn(one_reply(addr, i))).collect();
    let mut failed = Vec::new();
    for c in clients {
        if let Err(e) = tokio::time::timeout(Duration::from_secs(30), c)
            .await
            .expect("clients done within 30 s")
            .unwrap()
        {
            failed.push(e);
        }
    }
    assert!(
        failed.is_empty(),
        "{} failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    let c = s
        .wait("every connection to end", Duration::from_secs(5), |c| {
            c.active == 0 && c.connected == 300
        })
        .await;
    assert_eq!(c.accepted, 300, "{c:?}");
    assert!(c.queued > 0, "8 at once must queue the rest: {c:?}");
    assert_eq!(
        (c.overflow, c.timed_out, c.reset_by_guest, c.waiting),
        (0, 0, 0, 0),
        "{c:?}"
    );
    assert_eq!(s.guest.replies.load(Ordering::SeqCst), 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusing_guest_is_asked_again_while_the_client_waits() {
    let s = Setup::new(
        Config::default(),
        &[local(REPLY)],
        GuestSpec {
            reply: 2,
            reply_off: true,
            ..Default::default()
        },
    );
    let addr = s.addr(0);
    let client = tokio::spawn(one_reply(addr, 1));
    s.wait("two refusals", Duration::from_secs(10), |c| {
        c.refused_by_guest >= 2
    })
    .await;
    assert!(
        !client.is_finished(),
        "the client waits while the guest refuses"
    );
    s.guest.reply_on.store(true, Ordering::SeqCst);
    client
        .await
        .unwrap()
        .expect("served once the guest listens");
    let c = s
        .wait("the connection counted", Duration::from_secs(5), |c| {
            c.connected == 1 && c.active == 0
        })
        .await;
    assert_eq!(c.timed_out, 0, "{c:?}");

    // A guest that keeps refusing: the client is closed after the connect timeout.
    drop(s);
    let cfg = Config {
        connect_timeout: Duration::from_millis(300),
        ..Config::default()
    };
    let s = Setup::new(
        cfg,
        &[local(REPLY)],
        GuestSpec {
            reply: 1,
            reply_off: true,
            ..Default::default()
        },
    );
    let t0 = Instant::now();
    let r = one_reply(s.addr(0), 2).await;
    assert!(r.is_err(), "no reply from a refusing guest: {r:?}");
    assert!(
        t0.elapsed() >= Duration::from_millis(250),
        "{:?}",
        t0.elapsed()
    );
    let c = s
        .wait("the timeout counted", Duration::from_secs(2), |c| {
            c.timed_out == 1
        })
        .await;
    assert!(c.refused_by_guest >= 2, "{c:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_closes_the_guest_window() {
    let total = 32 << 20;
    let s = Setup::new(
        Config::default(),
        &[local(SOURCE)],
        GuestSpec {
            source: total,
            ..Default::default()
        },
    );
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(65536).unwrap();
    let mut c = sock.connect(s.addr(0)).await.unwrap();
    // Wait until the guest can put nothing more in: its sent count stays for 500 ms.
    let deadline = Instant::now() + Duration::from_secs(20);
    let (mut last, mut since) = (u64::MAX, Instant::now());
    loop {
        let sent = s.guest.sent.load(Ordering::SeqCst);
        if sent != last {
            (last, since) = (sent, Instant::now());
        } else if since.elapsed() >= Duration::from_millis(500) && sent > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the guest never stopped: {sent}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let held = s.gw.counters().bytes_to_client;
    eprintln!(
        "stalled client: guest put {} KiB in, gateway passed {} KiB to the kernel",
        last >> 10,
        held >> 10
    );
    assert!(
        last < 8 << 20,
        "a client that reads nothing let the guest send {last} bytes"
    );
    // It was backpressure, not loss: everything arrives once the client reads.
    let mut got = Vec::new();
    let t0 = Instant::now();
    tokio::time::timeout(Duration::from_secs(60), c.read_to_end(&mut got))
        .await
        .expect("the rest within 60 s")
        .unwrap();
    eprintln!(
        "source to client: {} MiB in {:?} once read",
        total >> 20,
        t0.elapsed()
    );
    assert_eq!(got.len(), total);
    assert!(got
        .iter()
        .enumerate()
        .all(|(i, &b)| b == pattern_at(i as u64)));
}

/// An Ethernet + IPv4 + TCP frame from the guest to the gateway with `payload`, checksums right.
fn guest_tcp(src_port: u16, dst_port: u16, syn: bool, ack: bool) -> Vec<u8> {
    let tcp_len = 20;
    let ip = Ipv4Repr {
        src_addr: Ipv4Address::new(10, 0, 2, 15),
        dst_addr: Ipv4Address::new(10, 0, 2, 2),
        next_header: IpProtocol::Tcp,
        payload_len: tcp_len,
        hop_limit: 64,
    };
    let eth = EthernetRepr {
        src_addr: EthernetAddress(GUEST_MAC),
        dst_addr: EthernetAddress(Config::default().mac),
        ethertype: EthernetProtocol::Ipv4,
    };
    let mut f = vec![0u8; 14 + 20 + tcp_len];
    eth.emit(&mut EthernetFrame::new_unchecked(&mut f[..]));
    ip.emit(
        &mut Ipv4Packet::new_unchecked(&mut f[14..]),
        &smoltcp::phy::ChecksumCapabilities::default(),
    );
    let mut t = TcpPacket::new_unchecked(&mut f[34..]);
    t.set_src_port(src_port);
    t.set_dst_port(dst_port);
    t.set_seq_number(smoltcp::wire::TcpSeqNumber(1000));
    t.set_ack_number(smoltcp::wire::TcpSeqNumber(if ack { 1 } else { 0 }));
    t.set_header_len(20);
    t.clear_flags();
    t.set_syn(syn);
    t.set_ack(ack);
    t.set_window_len(1024);
    t.fill_checksum(&IpAddress::v4(10, 0, 2, 15), &IpAddress::v4(10, 0, 2, 2));
    f
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_from_the_guest_is_dropped_and_counted() {
    let s = Setup::new(
        Config::default(),
        &[local(REPLY)],
        GuestSpec {
            reply: 2,
            ..Default::default()
        },
    );
    // The gateway works first.
    one_reply(s.addr(0), 0).await.expect("a first reply");
    let good = guest_tcp(40001, 49999, false, true);
    let mut bad_ip = good.clone();
    bad_ip[14 + 10] ^= 0xff; // IPv4 header checksum
    let mut bad_tcp = good.clone();
    bad_tcp[34 + 16] ^= 0xff; // TCP checksum
    let mut truncated_ip = good.clone();
    truncated_ip[14 + 2] = 0x40; // total length past the frame
    let mut udp = good.clone();
    udp[14 + 9] = 17;
    let mut ipv6 = good.clone();
    ipv6[12..14].copy_from_slice(&[0x86, 0xdd]);
    let mut other_dst = good.clone();
    other_dst[0] = 0x06;
    let bad: Vec<Vec<u8>> = vec![
        vec![1, 2, 3],
        good[..20].to_vec(),
        bad_ip,
        bad_tcp,
        truncated_ip,
        vec![0xff; 1500],
    ];
    let ignored: Vec<Vec<u8>> = vec![udp, ipv6, other_dst];
    {
        let mut inj = s.guest.inject.lock().unwrap();
        for f in bad.iter().chain(&ignored) {
            inj.extend_from_slice(&framed(f));
        }
    }
    let c = s
        .wait("the garbage counted", Duration::from_secs(5), |c| {
            c.bad_frames >= bad.len() as u64 && c.ignored_frames >= ignored.len() as u64
        })
        .await;
    assert_eq!(c.links, 1, "garbage frames do not drop the link: {c:?}");
    one_reply(s.addr(0), 1)
        .await
        .expect("a reply after the garbage");
    // A length prefix over 65535 drops the link; the guest connects again and is served.
    s.guest
        .inject
        .lock()
        .unwrap()
        .extend_from_slice(&70000u32.to_be_bytes());
    s.wait("the link dropped", Duration::from_secs(5), |c| {
        c.bad_links == 1
    })
    .await;
    let guest = Arc::new(GuestState::default());
    guest.reply_on.store(true, Ordering::SeqCst);
    let again = tokio::spawn(run_guest(
        s.link().to_path_buf(),
        GuestSpec {
            reply: 2,
            ..Default::default()
        },
        guest,
    ));
    s.wait("a second link", Duration::from_secs(5), |c| c.links == 2)
        .await;
    one_reply(s.addr(0), 2)
        .await
        .expect("a reply on the new link");
    again.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_cannot_open_a_connection_to_the_gateway() {
    let s = Setup::new(
        Config::default(),
        &[local(REPLY)],
        GuestSpec {
            reply: 1,
            // The gateway's address at the published host port itself, and its link port.
            dial: Some(80),
            ..Default::default()
        },
    );
    // Its SYNs are dropped: counted, never answered, never a connection.
    s.wait("three SYNs dropped", Duration::from_secs(10), |c| {
        c.ignored_frames >= 3
    })
    .await;
    assert!(!s.guest.dial_established.load(Ordering::SeqCst));
    assert!(
        !s.guest.dial_reset.load(Ordering::SeqCst),
        "not even an RST"
    );
    let c = s.gw.counters();
    assert_eq!(
        (c.accepted, c.connected, c.bytes_to_client),
        (0, 0, 0),
        "{c:?}"
    );
    // A hand-made SYN+ACK for no connection of the gateway's gets a RST at most, no data.
    s.guest
        .inject
        .lock()
        .unwrap()
        .extend_from_slice(&framed(&guest_tcp(80, 50000, true, true)));
    one_reply(s.addr(0), 0)
        .await
        .expect("the published port still works");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_boot_resets_open_connections_and_keeps_queued_ones() {
    let cfg = Config {
        max_guest_conns: 1,
        ..Config::default()
    };
    let s = Setup::new(
        cfg,
        &[local(ECHO), local(REPLY)],
        GuestSpec {
            echo: 1,
            reply: 1,
            ..Default::default()
        },
    );
    // One echo connection holds the only slot; a reply client waits behind it.
    let mut held = TcpStream::connect(s.addr(0)).await.unwrap();
    held.write_all(b"x").await.unwrap();
    let mut b = [0u8; 1];
    held.read_exact(&mut b).await.unwrap();
    let waiting = tokio::spawn(one_reply(s.addr(1), 7));
    s.wait("a client queued", Duration::from_secs(5), |c| {
        c.waiting == 1
    })
    .await;
    // The instance boots again: a new link connection.
    let guest = Arc::new(GuestState::default());
    guest.reply_on.store(true, Ordering::SeqCst);
    let again = tokio::spawn(run_guest(
        s.link().to_path_buf(),
        GuestSpec {
            echo: 1,
            reply: 1,
            ..Default::default()
        },
        guest,
    ));
    waiting
        .await
        .unwrap()
        .expect("the queued client is served by the new boot");
    let mut rest = Vec::new();
    let r = held.read_to_end(&mut rest).await;
    assert!(
        r.is_err(),
        "the old boot's connection is reset: {r:?} {rest:?}"
    );
    s.wait(
        "the new link and the reset counted",
        Duration::from_secs(5),
        |c| (c.links, c.reset_by_reboot) == (2, 1),
    )
    .await;
    again.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_the_queue_clients_are_closed_at_once_and_ports_in_use_are_errors() {
    let cfg = Config {
        max_guest_conns: 1,
        queue_len: 2,
        ..Config::default()
    };
    // No guest link at all: everything waits.
    let dir = TmpDir::new();
    let gw = Gateway::bind(&dir.0.join("l.sock"), &[local(REPLY)], cfg)
        .unwrap()
        .spawn();
    let addr = gw.local_addrs()[0];
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(TcpStream::connect(addr).await.unwrap());
    }
    // The third is reset at once (maybe before connect returns).
    let third = TcpStream::connect(addr).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while gw.counters().overflow < 1 {
        assert!(Instant::now() < deadline, "{:?}", gw.counters());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let c = gw.counters();
    assert_eq!(
        (c.accepted, c.queued, c.waiting, c.overflow),
        (3, 2, 2, 1),
        "{c:?}"
    );
    if let Ok(mut third) = third {
        let mut b = [0u8; 1];
        let r = third.read(&mut b).await;
        assert!(matches!(r, Err(_) | Ok(0)), "{r:?}");
    }
    // The same address again is an error naming it.
    let e = Gateway::bind(
        &dir.0.join("m.sock"),
        &[Forward {
            listen: addr,
            guest_port: 80,
        }],
        Config::default(),
    )
    .unwrap_err();
    assert!(
        e.to_string().contains(&addr.to_string()) && e.to_string().contains("in use"),
        "{e}"
    );
    // Stopped: the port is free again and the socket file is gone.
    let link = gw.link_path().to_path_buf();
    gw.stop().await;
    assert!(!link.exists());
    let again = Gateway::bind(
        &dir.0.join("n.sock"),
        &[Forward {
            listen: addr,
            guest_port: 80,
        }],
        Config::default(),
    );
    assert!(again.is_ok(), "{again:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_gateway_sleeps() {
    let s = Setup::new(
        Config::default(),
        &[local(REPLY)],
        GuestSpec {
            reply: 1,
            ..Default::default()
        },
    );
    one_reply(s.addr(0), 0).await.unwrap();
    s.wait("idle", Duration::from_secs(5), |c| c.active == 0)
        .await;
    // Nothing happens: the task is not woken (no timer spins it). The window is the measure.
    let before = s.gw.counters();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = s.gw.counters();
    assert!(
        after.wakeups <= before.wakeups + 3,
        "an idle gateway ran {} times in a second",
        after.wakeups - before.wakeups
    );
}
