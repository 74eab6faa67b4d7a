//! The one engine-over-a-port loop of the host side: an m3ipc-core [`Engine`] driven over a socket
//! that carries Ethernet frames. Sync (no async runtime), so that benchmarks measure the engine
//! and the socket, nothing else.
//!
//! - [`FramePort`]: sends and receives whole Ethernet frames;
//!   [`DgramPort`] (a unix datagram socket, one frame a datagram, like `-netdev dgram`) and
//!   [`StreamPort`] (a unix stream connection with a 4-byte big-endian length before every frame,
//!   like the client side of `-netdev stream`).
//! - [`EnginePort`]: the engine on a port, with the blocking calls tests and role doubles make
//!   (`sendrec`, `vcopy`, `wait_done`) and one-turn [`EnginePort::poll`] for servers.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use m3ipc_core::engine::{Completion, Engine, EngineConfig, Event};
use m3ipc_core::wire::ethernet::{EthernetHeader, BROADCAST, ETH_HEADER_LEN};
use m3ipc_core::wire::{ETHERTYPE_M3IPC, MAX_FRAME};
use m3ipc_core::{DcId, Endpoint, ErrorCode, Instant as IpcInstant, Message, VcopyRequest};

use crate::InstanceError;

/// Largest Ethernet frame a port takes (jumbo frames included).
pub const MAX_ETH_FRAME: usize = 65536;

/// Sends and receives whole Ethernet frames.
pub trait FramePort {
    /// Sends one frame.
    fn send(&mut self, frame: &[u8]) -> io::Result<()>;
    /// Receives one frame into `buf`: its length, or None when none came within `timeout`
    /// (`Duration::ZERO`: do not wait).
    fn recv(&mut self, buf: &mut [u8], timeout: Duration) -> io::Result<Option<usize>>;
}

/// Waits until `fd` is readable (or writable) or `timeout` passes; true if it is.
fn wait_fd(fd: RawFd, write: bool, timeout: Duration) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd,
        events: if write { libc::POLLOUT } else { libc::POLLIN },
        revents: 0,
    };
    let ts = libc::timespec {
        tv_sec: timeout.as_secs().min(i32::MAX as u64) as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: one valid pollfd, a valid timespec, no signal mask.
    let n = unsafe { libc::ppoll(&mut pfd, 1, &ts, std::ptr::null()) };
    match n {
        n if n > 0 => Ok(true),
        0 => Ok(false),
        _ => {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                Ok(false)
            } else {
                Err(e)
            }
        }
    }
}

fn unlink(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// A unix datagram socket bound at `local`, sending to `remote`: one frame a datagram.
#[derive(Debug)]
pub struct DgramPort {
    sock: UnixDatagram,
    local: PathBuf,
    remote: PathBuf,
}

impl DgramPort {
    /// Binds `local` (a stale socket file there is removed first); frames go to `remote`, which
    /// need not exist yet.
    pub fn bind(local: &Path, remote: &Path) -> io::Result<DgramPort> {
        unlink(local)?;
        let sock = UnixDatagram::bind(local)
            .map_err(|e| io::Error::new(e.kind(), format!("bind {}: {e}", local.display())))?;
        sock.set_nonblocking(true)?;
        Ok(DgramPort {
            sock,
            local: local.to_path_buf(),
            remote: remote.to_path_buf(),
        })
    }

    /// The path this port is bound at.
    pub fn local(&self) -> &Path {
        &self.local
    }

    /// The path frames go to.
    pub fn remote(&self) -> &Path {
        &self.remote
    }
}

impl FramePort for DgramPort {
    fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        loop {
            match self.sock.send_to(frame, &self.remote) {
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    wait_fd(self.sock.as_raw_fd(), true, Duration::from_millis(100))?;
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn recv(&mut self, buf: &mut [u8], timeout: Duration) -> io::Result<Option<usize>> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.sock.recv(buf) {
                Ok(n) => return Ok(Some(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || !wait_fd(self.sock.as_raw_fd(), false, left)? {
                return Ok(None);
            }
        }
    }
}

impl Drop for DgramPort {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.local);
    }
}

/// A unix stream connection carrying frames as a 4-byte big-endian length and the frame (the
/// client side of QEMU's `-netdev stream`).
#[derive(Debug)]
pub struct StreamPort {
    sock: UnixStream,
    rx: Vec<u8>,
}

impl StreamPort {
    /// Connects to `path`, retrying while it does not exist or refuses until `within` has passed.
    pub fn connect(path: &Path, within: Duration) -> io::Result<StreamPort> {
        let deadline = Instant::now() + within;
        loop {
            match UnixStream::connect(path) {
                Ok(s) => return StreamPort::from_stream(s),
                Err(e)
                    if Instant::now() < deadline
                        && matches!(
                            e.kind(),
                            io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
                        ) =>
                {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("connect {}: {e}", path.display()),
                    ))
                }
            }
        }
    }

    /// A port on a connected stream (either side).
    pub fn from_stream(sock: UnixStream) -> io::Result<StreamPort> {
        sock.set_nonblocking(true)?;
        Ok(StreamPort {
            sock,
            rx: Vec::new(),
        })
    }

    /// A whole frame at the front of the receive buffer, copied to `buf`.
    fn take_frame(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        if self.rx.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([self.rx[0], self.rx[1], self.rx[2], self.rx[3]]) as usize;
        if len > MAX_ETH_FRAME || len > buf.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "stream frame of {len} bytes (at most {} here)",
                    buf.len().min(MAX_ETH_FRAME)
                ),
            ));
        }
        if self.rx.len() < 4 + len {
            return Ok(None);
        }
        buf[..len].copy_from_slice(&self.rx[4..4 + len]);
        self.rx.drain(..4 + len);
        Ok(Some(len))
    }
}

impl FramePort for StreamPort {
    fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        let len = u32::try_from(frame.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "frame too long"))?;
        let mut out = Vec::with_capacity(frame.len() + 4);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(frame);
        let mut done = 0;
        while done < out.len() {
            match self.sock.write(&out[done..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    wait_fd(self.sock.as_raw_fd(), true, Duration::from_millis(100))?;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn recv(&mut self, buf: &mut [u8], timeout: Duration) -> io::Result<Option<usize>> {
        let deadline = Instant::now() + timeout;
        let mut chunk = [0u8; 16384];
        loop {
            if let Some(n) = self.take_frame(buf)? {
                return Ok(Some(n));
            }
            match self.sock.read(&mut chunk) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => {
                    self.rx.extend_from_slice(&chunk[..n]);
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || !wait_fd(self.sock.as_raw_fd(), false, left)? {
                return Ok(None);
            }
        }
    }
}

/// What [`EnginePort`] does with a received Ethernet frame that is not M3-IPC: the answer to send
/// back, if any (ARP for role doubles).
pub type OtherFrames = Box<dyn FnMut(&[u8]) -> Option<Vec<u8>> + Send>;

/// The MAC address an [`EnginePort`] uses unless told otherwise.
pub const HOST_MAC: [u8; 6] = [0x02, 0xd5, 0, 0, 0, 0x01];

/// An m3ipc-core engine on a [`FramePort`].
pub struct EnginePort<P: FramePort> {
    /// The engine (public for tests that inspect it and servers that call it directly).
    pub engine: Engine,
    /// The port.
    pub port: P,
    /// Busy-poll the port this long before blocking (zero: block at once).
    pub spin: Duration,
    /// The destination MAC of M3-IPC frames sent (broadcast unless set: the switch delivers by
    /// endpoint, not MAC).
    pub peer_mac: [u8; 6],
    /// Called with every received Ethernet frame that is not M3-IPC; what it returns is sent.
    pub on_other: Option<OtherFrames>,
    mac: [u8; 6],
    origin: Instant,
    buf: Vec<u8>,
    events: VecDeque<Event>,
}

impl<P: FramePort> EnginePort<P> {
    /// An engine for DC `dc` holding `endpoints`, on `port`, sending as `mac`; its incarnation is
    /// the current Unix time in seconds.
    pub fn new(
        port: P,
        dc: u16,
        endpoints: &[Endpoint],
        mac: [u8; 6],
    ) -> Result<EnginePort<P>, InstanceError> {
        let inc = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as u32)
            .unwrap_or(1);
        EnginePort::with_incarnation(port, dc, inc, endpoints, mac)
    }

    /// Like [`EnginePort::new`] with the given incarnation.
    pub fn with_incarnation(
        port: P,
        dc: u16,
        incarnation: u32,
        endpoints: &[Endpoint],
        mac: [u8; 6],
    ) -> Result<EnginePort<P>, InstanceError> {
        let mut engine = Engine::new(EngineConfig::new(DcId(dc), incarnation));
        for &ep in endpoints {
            engine.bind(ep).map_err(|code| InstanceError::Bind {
                dc,
                ep: ep.0,
                code: format!("{code:?}"),
            })?;
        }
        Ok(EnginePort {
            engine,
            port,
            spin: Duration::ZERO,
            peer_mac: BROADCAST,
            on_other: None,
            mac,
            origin: Instant::now(),
            buf: vec![0; MAX_ETH_FRAME],
            events: VecDeque::new(),
        })
    }

    /// This port's MAC address.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// The engine's clock (microseconds since this port was made).
    pub fn now(&self) -> IpcInstant {
        IpcInstant::from_micros(self.origin.elapsed().as_micros() as u64)
    }

    /// Sends one raw Ethernet frame.
    pub fn send_raw(&mut self, frame: &[u8]) -> io::Result<()> {
        self.port.send(frame)
    }

    /// Receives one raw Ethernet frame (bypassing the engine), or None after `timeout`.
    pub fn recv_raw(&mut self, timeout: Duration) -> io::Result<Option<Vec<u8>>> {
        let n = self.port.recv(&mut self.buf, timeout)?;
        Ok(n.map(|n| self.buf[..n].to_vec()))
    }

    fn ethernet(&self, m3: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; ETH_HEADER_LEN + m3.len()];
        let h = EthernetHeader {
            dst: self.peer_mac,
            src: self.mac,
            ethertype: ETHERTYPE_M3IPC,
        };
        // The header fits: the vector has room for it.
        let _ = h.emit(&mut f);
        f[ETH_HEADER_LEN..].copy_from_slice(m3);
        f
    }

    /// Wraps an M3-IPC frame in Ethernet and sends it (bypassing the engine).
    pub fn send_m3(&mut self, m3: &[u8]) -> io::Result<()> {
        let f = self.ethernet(m3);
        self.port.send(&f)
    }

    /// Sends everything the engine has to send. Send errors are dropped: the peer may not be up
    /// yet, and the engine retransmits.
    pub fn flush(&mut self) {
        let now = self.now();
        let mut out = [0u8; ETH_HEADER_LEN + MAX_FRAME];
        let h = EthernetHeader {
            dst: self.peer_mac,
            src: self.mac,
            ethertype: ETHERTYPE_M3IPC,
        };
        while let Some(n) = self.engine.poll_transmit(now, &mut out[ETH_HEADER_LEN..]) {
            trace(self.origin, "tx", &out[ETH_HEADER_LEN..ETH_HEADER_LEN + n]);
            if h.emit(&mut out).is_ok() {
                let _ = self.port.send(&out[..ETH_HEADER_LEN + n]);
            }
        }
    }

    /// Hands the frame in `self.buf[..n]` to the engine (M3-IPC) or to `on_other`.
    fn feed(&mut self, now: IpcInstant, n: usize) {
        let frame = &self.buf[..n];
        if let Ok((_, m3)) = EthernetHeader::m3ipc_payload(frame) {
            trace(self.origin, "rx", m3);
            self.engine.handle_frame(now, m3);
        } else if let Some(hook) = self.on_other.as_mut() {
            if let Some(answer) = hook(frame) {
                let _ = self.port.send(&answer);
            }
        }
    }

    /// Receives one frame, busy-polling for `spin` first, then blocking for the rest of `wait`.
    fn recv_wait(&mut self, wait: Duration) -> io::Result<Option<usize>> {
        if !self.spin.is_zero() {
            let t0 = Instant::now();
            let limit = self.spin.min(wait);
            loop {
                if let Some(n) = self.port.recv(&mut self.buf, Duration::ZERO)? {
                    return Ok(Some(n));
                }
                if t0.elapsed() >= limit {
                    break;
                }
                std::hint::spin_loop();
            }
        }
        self.port.recv(&mut self.buf, wait)
    }

    /// One turn: sends what is due, waits up to `timeout` (less if an engine timer is due sooner)
    /// for frames, feeds every frame that arrived to the engine (or `on_other`), fires the due
    /// timers and sends again. Returns the number of frames received. Events stay queued for
    /// [`EnginePort::next_event`].
    pub fn poll(&mut self, timeout: Duration) -> io::Result<usize> {
        self.flush();
        let mut wait = timeout;
        if let Some(t) = self.engine.poll_timeout() {
            let until = Duration::from_micros(t.as_micros().saturating_sub(self.now().as_micros()));
            wait = wait.min(until);
        }
        let mut got = 0;
        if let Some(n) = self.recv_wait(wait)? {
            let now = self.now();
            self.feed(now, n);
            got += 1;
            // Whatever else is queued, without blocking.
            while let Some(n) = self.port.recv(&mut self.buf, Duration::ZERO)? {
                self.feed(now, n);
                got += 1;
            }
        }
        let now = self.now();
        if self.engine.poll_timeout().is_some_and(|t| t <= now) {
            self.engine.handle_timeout(now);
        }
        self.flush();
        while let Some(ev) = self.engine.poll_event() {
            self.events.push_back(ev);
        }
        Ok(got)
    }

    /// The next engine event (events passed over by [`EnginePort::wait_done`] included).
    pub fn next_event(&mut self) -> Option<Event> {
        self.events.pop_front().or_else(|| self.engine.poll_event())
    }

    /// Drives the engine until `ep`'s call ends or `timeout` passes. Other events stay queued.
    pub fn wait_done(&mut self, ep: Endpoint, timeout: Duration) -> Result<Completion, String> {
        let deadline = Instant::now() + timeout;
        loop {
            while let Some(ev) = self.engine.poll_event() {
                self.events.push_back(ev);
            }
            if let Some(i) = self
                .events
                .iter()
                .position(|ev| matches!(ev, Event::Done { ep: e, .. } if *e == ep))
            {
                if let Some(Event::Done { result, .. }) = self.events.remove(i) {
                    return result
                        .map_err(|c: ErrorCode| format!("endpoint {}: call failed: {c:?}", ep.0));
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!("endpoint {}: no answer within {timeout:?}", ep.0));
            }
            self.poll(left)
                .map_err(|e| format!("endpoint {}: port: {e}", ep.0))?;
        }
    }

    /// One sendrec from local `src` to `dst`: the reply.
    pub fn sendrec(
        &mut self,
        src: Endpoint,
        dst: Endpoint,
        msg: Message,
        timeout: Duration,
    ) -> Result<Message, String> {
        let now = self.now();
        self.engine
            .sendrec(now, src, dst, msg, Some(timeout))
            .map_err(|e| format!("sendrec {}->{}: {e:?}", src.0, dst.0))?;
        match self.wait_done(src, timeout + Duration::from_millis(100))? {
            Completion::Replied(m) => Ok(m),
            other => Err(format!(
                "sendrec {}->{}: unexpected completion {other:?}",
                src.0, dst.0
            )),
        }
    }

    /// A vcopy on behalf of local `requester`: the bytes copied.
    pub fn vcopy(
        &mut self,
        requester: Endpoint,
        req: VcopyRequest,
        timeout: Duration,
    ) -> Result<u64, String> {
        let now = self.now();
        self.engine
            .vcopy(now, requester, req, Some(timeout))
            .map_err(|e| {
                format!(
                    "vcopy {}->{} {} bytes: {e:?}",
                    req.src.0, req.dst.0, req.len
                )
            })?;
        match self.wait_done(requester, timeout + Duration::from_millis(100))? {
            Completion::Copied { len } => Ok(len),
            other => Err(format!("vcopy: unexpected completion {other:?}")),
        }
    }
}

/// With `DVS_TRACE` set, prints one line per M3-IPC frame sent or received.
fn trace(origin: Instant, dir: &str, m3: &[u8]) {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if !*ON.get_or_init(|| std::env::var_os("DVS_TRACE").is_some()) {
        return;
    }
    if let Ok(f) = m3ipc_core::wire::FrameRepr::parse(m3) {
        eprintln!(
            "trace {:?} {dir} {:?} {}->{} seq={:#x} aux={} fl={} len={}",
            origin.elapsed(),
            f.kind,
            f.src.0,
            f.dst.0,
            f.seq,
            f.aux,
            f.flags,
            f.payload.len()
        );
    }
}
