//! The vhost-user VM port: the proxy serves an instance's fabric virtio-net device itself, from the guest's
//! memory that QEMU shares with it (`-netdev vhost-user` with a memfd memory backend).
//!
//! QEMU connects to the port's unix socket and hands over the guest memory and the two virtqueues (0: the
//! guest's receive queue, 1: its transmit queue) with their kick and call eventfds; rust-vmm's
//! `vhost-user-backend` daemon speaks that protocol on its own thread and runs one epoll worker thread per
//! connection. On a transmit kick the worker pops the guest's descriptor chains, checks them and hands each
//! frame to the port's [`Sink`] in order. The other direction has no thread hop: [`VmPort::try_send`] (called
//! from the routing) writes the virtio-net header and the frame straight into the next receive buffer of the
//! guest's ring, marks it used and signals the call eventfd only when the guest asked for interrupts. Frames
//! that find the ring full wait in a bounded backlog that the guest's next receive kick (it posts buffers)
//! drains.
//!
//! The guest is untrusted. A descriptor outside guest memory, a chain that is empty, loops, has the wrong
//! direction or is longer than a frame, a ring that is not inside guest memory or an available index that
//! runs ahead of the ring: the port counts the fault ([`crate::counters::Drops::bad_ring`]), closes the
//! connection (QEMU sees its backend go away) and takes no frames until the instance connects again. Nothing
//! the guest writes makes the proxy panic or touches another port.

use std::collections::VecDeque;
use std::io;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost::vhost_user::Listener;
use vhost_user_backend::{ShutdownHandle, VhostUserBackend, VhostUserDaemon, VringMutex, VringT};
use virtio_queue::{QueueOwnedT, QueueT};
use vm_memory::{
    Bytes as _, GuestAddress, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryBackend as _,
    GuestMemoryMmap,
};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};

use crate::port::{PortHandle, Sink, VmPort, MAX_ETH_FRAME};

/// Descriptors per virtqueue the backend accepts at most.
const MAX_QUEUE_SIZE: usize = 1024;
/// The guest's receive queue (frames to the guest).
const RX: usize = 0;
/// The guest's transmit queue (frames from the guest).
const TX: usize = 1;
/// Frames kept for a guest whose receive ring is momentarily full.
const RX_BACKLOG_FRAMES: usize = 512;
/// Bytes kept for a guest whose receive ring is momentarily full.
const RX_BACKLOG_BYTES: usize = 1 << 20;

/// `VIRTIO_NET_F_MRG_RXBUF`: the header carries `num_buffers` (12 bytes).
const F_MRG_RXBUF: u64 = 1 << 15;
/// `VIRTIO_RING_F_INDIRECT_DESC`.
const F_INDIRECT_DESC: u64 = 1 << 28;
/// `VIRTIO_RING_F_EVENT_IDX`.
const F_EVENT_IDX: u64 = 1 << 29;
/// `VHOST_USER_F_PROTOCOL_FEATURES`.
const F_PROTOCOL_FEATURES: u64 = 1 << 30;
/// `VHOST_USER_SET_FEATURES`.
const REQ_SET_FEATURES: u32 = 2;
/// `VHOST_USER_SET_VRING_ENABLE`.
const REQ_SET_VRING_ENABLE: u32 = 18;
/// The largest vhost-user message body the relay passes on.
const MAX_MSG: usize = 0x1000;
/// `VIRTIO_F_VERSION_1`: modern device, 12-byte header.
const F_VERSION_1: u64 = 1 << 32;

/// Why a port cut its instance off.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RingFault {
    /// The ring's tables do not lie inside guest memory, or the available index runs ahead of the ring.
    #[error("virtqueue {0} is not valid: {1}")]
    Queue(usize, String),
    /// A descriptor chain is empty, loops or points outside the descriptor table.
    #[error("virtqueue {0}: a descriptor chain is empty or broken")]
    Chain(usize),
    /// A descriptor has the wrong direction (a writable buffer on transmit, a readable one on receive).
    #[error("virtqueue {0}: a descriptor has the wrong direction")]
    Direction(usize),
    /// A descriptor points outside guest memory.
    #[error("virtqueue {0}: a descriptor points outside guest memory")]
    Memory(usize),
    /// A transmitted frame is shorter than its header or longer than [`MAX_ETH_FRAME`].
    #[error("a transmitted frame of {0} bytes (header included)")]
    Length(usize),
}

/// What a port does when it cuts its instance off (the runtime counts it).
pub type FaultSink = Arc<dyn Fn(&RingFault) + Send + Sync>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What [`Conn::put`] did with a frame.
enum Put {
    /// The frame is in the guest's ring.
    Done,
    /// No receive buffer (or the ring is not running yet).
    Full,
    /// The guest's buffer is smaller than the frame (its MTU is smaller than the link's).
    TooBig,
}

/// One vhost-user connection (one boot of the instance): its memory, its rings and its state.
struct Conn {
    mem: GuestMemoryAtomic<GuestMemoryMmap>,
    /// The guest's receive ring, known from the first event the worker sees (the guest kicks it when it
    /// posts its buffers), and the frames waiting for room in it.
    rx: Mutex<RxSide>,
    acked: AtomicU64,
    broken: AtomicBool,
    shutdown: Mutex<Option<ShutdownHandle>>,
    sink: Sink,
    on_fault: FaultSink,
    rt: tokio::runtime::Handle,
}

#[derive(Default)]
struct RxSide {
    vring: Option<VringMutex>,
    backlog: VecDeque<Bytes>,
    queued: usize,
}

impl Conn {
    /// The virtio-net header length the guest negotiated: 12 bytes with VERSION_1 or MRG_RXBUF, else 10.
    fn hdr_len(&self) -> usize {
        if self.acked.load(Ordering::Relaxed) & (F_VERSION_1 | F_MRG_RXBUF) != 0 {
            12
        } else {
            10
        }
    }

    fn event_idx(&self) -> bool {
        self.acked.load(Ordering::Relaxed) & F_EVENT_IDX != 0
    }

    /// Counts the fault once, marks the connection broken and closes it.
    fn fault(&self, f: RingFault) -> io::Error {
        if !self.broken.swap(true, Ordering::AcqRel) {
            tracing::warn!("vhost-user port: instance cut off: {f}");
            (self.on_fault)(&f);
            if let Some(h) = lock(&self.shutdown).as_ref() {
                h.shutdown();
            }
            lock(&self.rx).backlog.clear();
        }
        io::Error::new(io::ErrorKind::BrokenPipe, f.to_string())
    }

    fn broken_err(&self) -> io::Error {
        io::Error::new(io::ErrorKind::BrokenPipe, "instance cut off (bad ring)")
    }

    /// Puts one frame into the next receive buffer of `vring`.
    fn put(&self, vring: &VringMutex, frame: &[u8]) -> Result<Put, RingFault> {
        let hdr_len = self.hdr_len();
        let mut hdr = [0u8; 12];
        if hdr_len == 12 {
            hdr[10] = 1; // num_buffers, little-endian
        }
        let hdr = &hdr[..hdr_len];
        let need = hdr_len + frame.len();
        let mem = self.mem.memory();
        let mut st = vring.get_mut();
        if !st.is_enabled() || !st.get_queue().ready() {
            return Ok(Put::Full);
        }
        let q = st.get_queue_mut();
        if !q.is_valid(mem.deref()) {
            return Err(RingFault::Queue(RX, "rings outside guest memory".into()));
        }
        let mut iter = q
            .iter(mem.deref())
            .map_err(|e| RingFault::Queue(RX, e.to_string()))?;
        let Some(chain) = iter.next() else {
            return Ok(Put::Full);
        };
        let head = chain.head_index();
        // Check the whole chain before writing, so that a too small buffer is given back untouched.
        let mut bufs: [(GuestAddress, usize); 8] = [(GuestAddress(0), 0); 8];
        let (mut n, mut room, mut any) = (0usize, 0usize, false);
        for d in chain {
            any = true;
            if !d.is_write_only() {
                return Err(RingFault::Direction(RX));
            }
            let len = d.len() as usize;
            if !mem.deref().check_range(d.addr(), len) {
                return Err(RingFault::Memory(RX));
            }
            if room < need && n < bufs.len() {
                bufs[n] = (d.addr(), len);
                n += 1;
                room += len;
            }
        }
        if !any {
            return Err(RingFault::Chain(RX));
        }
        if room < need {
            // The frame is dropped, the buffer stays for the next one.
            q.go_to_previous_position();
            return Ok(Put::TooBig);
        }
        let (mut hdr_left, mut frame_left) = (hdr, frame);
        for &(addr, len) in &bufs[..n] {
            let mut at = addr;
            let mut space = len;
            for part in [&mut hdr_left, &mut frame_left] {
                let k = part.len().min(space);
                if k == 0 {
                    continue;
                }
                mem.write_slice(&part[..k], at)
                    .map_err(|_| RingFault::Memory(RX))?;
                *part = &part[k..];
                at = GuestAddress(at.0 + k as u64);
                space -= k;
            }
        }
        q.add_used(mem.deref(), head, need as u32)
            .map_err(|e| RingFault::Queue(RX, e.to_string()))?;
        let notify = q
            .needs_notification(mem.deref())
            .map_err(|e| RingFault::Queue(RX, e.to_string()))?;
        if notify {
            let _ = st.signal_used_queue();
        }
        Ok(Put::Done)
    }

    /// One frame from the routing to the guest.
    fn send(&self, frame: &[u8]) -> io::Result<()> {
        if self.broken.load(Ordering::Acquire) {
            return Err(self.broken_err());
        }
        let mut rx = lock(&self.rx);
        if rx.backlog.is_empty() {
            if let Some(vring) = rx.vring.clone() {
                match self.put(&vring, frame) {
                    Ok(Put::Done) => return Ok(()),
                    Ok(Put::Full) => {}
                    Ok(Put::TooBig) => {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidInput,
                            "frame larger than the guest's receive buffers",
                        ))
                    }
                    Err(f) => {
                        drop(rx);
                        return Err(self.fault(f));
                    }
                }
            }
        }
        if rx.backlog.len() >= RX_BACKLOG_FRAMES || rx.queued + frame.len() > RX_BACKLOG_BYTES {
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                "guest receive ring and backlog full",
            ));
        }
        rx.queued += frame.len();
        rx.backlog.push_back(Bytes::copy_from_slice(frame));
        Ok(())
    }

    /// The guest posted receive buffers: drain the backlog into them.
    fn rx_kick(&self, vring: &VringMutex) -> Result<(), RingFault> {
        let mut rx = lock(&self.rx);
        if rx.vring.is_none() {
            rx.vring = Some(vring.clone());
        }
        while let Some(front) = rx.backlog.front().cloned() {
            match self.put(vring, &front) {
                Ok(Put::Done | Put::TooBig) => {
                    rx.queued -= front.len();
                    rx.backlog.pop_front();
                }
                Ok(Put::Full) => break,
                Err(f) => return Err(f),
            }
        }
        Ok(())
    }

    /// Takes every frame the guest queued for transmission, in order, and hands them to the sink.
    fn tx_kick(&self, vring: &VringMutex) -> Result<(), RingFault> {
        let hdr_len = self.hdr_len();
        let event_idx = self.event_idx();
        loop {
            let mut frames = Vec::new();
            {
                let mem = self.mem.memory();
                let mut st = vring.get_mut();
                if !st.is_enabled() || !st.get_queue().ready() {
                    return Ok(());
                }
                let q = st.get_queue_mut();
                if !q.is_valid(mem.deref()) {
                    return Err(RingFault::Queue(TX, "rings outside guest memory".into()));
                }
                if event_idx {
                    q.disable_notification(mem.deref())
                        .map_err(|e| RingFault::Queue(TX, e.to_string()))?;
                }
                let mut heads = Vec::new();
                let iter = q
                    .iter(mem.deref())
                    .map_err(|e| RingFault::Queue(TX, e.to_string()))?;
                for chain in iter {
                    let head = chain.head_index();
                    let mut buf = Vec::new();
                    let mut any = false;
                    for d in chain {
                        any = true;
                        if d.is_write_only() {
                            return Err(RingFault::Direction(TX));
                        }
                        let len = d.len() as usize;
                        let total = buf.len().saturating_add(len);
                        if total > hdr_len + MAX_ETH_FRAME {
                            return Err(RingFault::Length(total));
                        }
                        let at = buf.len();
                        buf.resize(total, 0);
                        mem.read_slice(&mut buf[at..], d.addr())
                            .map_err(|_| RingFault::Memory(TX))?;
                    }
                    if !any {
                        return Err(RingFault::Chain(TX));
                    }
                    if buf.len() < hdr_len {
                        return Err(RingFault::Length(buf.len()));
                    }
                    heads.push(head);
                    frames.push(Bytes::from(buf).slice(hdr_len..));
                }
                for &h in &heads {
                    q.add_used(mem.deref(), h, 0)
                        .map_err(|e| RingFault::Queue(TX, e.to_string()))?;
                }
                if !heads.is_empty()
                    && q.needs_notification(mem.deref())
                        .map_err(|e| RingFault::Queue(TX, e.to_string()))?
                {
                    let _ = st.signal_used_queue();
                }
            }
            for f in frames {
                if self.broken.load(Ordering::Acquire) {
                    return Ok(());
                }
                self.rt.block_on((self.sink)(f));
            }
            if !event_idx {
                return Ok(());
            }
            let mem = self.mem.memory();
            let mut st = vring.get_mut();
            let more = st
                .get_queue_mut()
                .enable_notification(mem.deref())
                .map_err(|e| RingFault::Queue(TX, e.to_string()))?;
            if !more {
                return Ok(());
            }
        }
    }
}

/// The `vhost-user-backend` side of one connection.
#[derive(Clone)]
struct NetBackend {
    conn: Arc<Conn>,
}

impl VhostUserBackend for NetBackend {
    type Bitmap = ();
    type Vring = VringMutex;

    fn num_queues(&self) -> usize {
        2
    }

    fn max_queue_size(&self) -> usize {
        MAX_QUEUE_SIZE
    }

    /// With `VHOST_USER_F_PROTOCOL_FEATURES` (QEMU's vhost-user net needs it for `SET_VRING_ENABLE`;
    /// see [`relay`] for QEMU 7.2 not acking it).
    fn features(&self) -> u64 {
        F_VERSION_1 | F_EVENT_IDX | F_INDIRECT_DESC | F_PROTOCOL_FEATURES
    }

    fn acked_features(&self, features: u64) {
        self.conn.acked.store(features, Ordering::Relaxed);
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::REPLY_ACK
    }

    fn set_event_idx(&self, _enabled: bool) {}

    fn update_memory(&self, _mem: GuestMemoryAtomic<GuestMemoryMmap>) -> io::Result<()> {
        Ok(())
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        new_event_consumer_and_notifier(EventFlag::NONBLOCK).ok()
    }

    fn handle_event(
        &self,
        device_event: u16,
        evset: EventSet,
        vrings: &[VringMutex],
        _thread_id: usize,
    ) -> io::Result<()> {
        let c = &self.conn;
        if evset != EventSet::IN || c.broken.load(Ordering::Acquire) {
            return Ok(());
        }
        if let Some(rx) = vrings.get(RX) {
            let mut side = lock(&c.rx);
            if side.vring.is_none() {
                side.vring = Some(rx.clone());
            }
        }
        let r = match (device_event as usize, vrings.get(device_event as usize)) {
            (RX, Some(v)) => c.rx_kick(v),
            (TX, Some(v)) => c.tx_kick(v),
            _ => Ok(()),
        };
        r.map_err(|f| c.fault(f))
    }
}

/// A vhost-user VM port: QEMU connects to `path` (`-chardev socket,path=...` and `-netdev vhost-user`).
pub struct VhostPort {
    current: Arc<Mutex<Option<Arc<Conn>>>>,
}

impl VmPort for VhostPort {
    fn try_send(&self, frame: &[u8]) -> io::Result<()> {
        let conn = lock(&self.current).clone();
        match conn {
            Some(c) => c.send(frame),
            None => Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "instance not connected",
            )),
        }
    }
}

impl VhostPort {
    /// Listens on `path`; each connection (one boot of the instance) gets its own backend daemon.
    pub(crate) fn open(path: &Path, on_frame: Sink, on_fault: FaultSink) -> io::Result<PortHandle> {
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let public = std::os::unix::net::UnixListener::bind(path)?;
        // The daemon accepts on a private socket next to the public one; `relay` joins the two.
        let inner = path.with_extension("backend");
        let mut listener = Listener::new(&inner, true).map_err(io::Error::other)?;
        let rt = tokio::runtime::Handle::current();
        let current: Arc<Mutex<Option<Arc<Conn>>>> = Arc::default();
        let closed = Arc::new(AtomicBool::new(false));
        let (cur, stop) = (current.clone(), closed.clone());
        let name = format!(
            "vhost-{}",
            path.file_stem().and_then(|s| s.to_str()).unwrap_or("port")
        );
        std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || {
                while !stop.load(Ordering::Acquire) {
                    let conn = Arc::new(Conn {
                        mem: GuestMemoryAtomic::new(GuestMemoryMmap::new()),
                        rx: Mutex::default(),
                        acked: AtomicU64::new(0),
                        broken: AtomicBool::new(false),
                        shutdown: Mutex::new(None),
                        sink: on_frame.clone(),
                        on_fault: on_fault.clone(),
                        rt: rt.clone(),
                    });
                    let backend = NetBackend { conn: conn.clone() };
                    let mut daemon =
                        match VhostUserDaemon::new(name.clone(), backend, conn.mem.clone()) {
                            Ok(d) => d,
                            Err(e) => {
                                tracing::warn!("vhost-user port {name}: {e}");
                                return;
                            }
                        };
                    let Ok((front, _)) = public.accept() else {
                        std::thread::sleep(std::time::Duration::from_millis(50));
                        continue;
                    };
                    if stop.load(Ordering::Acquire) {
                        return;
                    }
                    let joined = std::os::unix::net::UnixStream::connect(&inner).and_then(|back| {
                        let (f2, b2) = (front.try_clone()?, back.try_clone()?);
                        std::thread::Builder::new()
                            .name(format!("{name}-relay"))
                            .spawn(move || relay(f2, b2))?;
                        let (mut f3, mut b3) = (front.try_clone()?, back.try_clone()?);
                        std::thread::Builder::new()
                            .name(format!("{name}-reply"))
                            .spawn(move || {
                                let _ = io::copy(&mut b3, &mut f3);
                                let _ = f3.shutdown(std::net::Shutdown::Both);
                            })?;
                        Ok(back)
                    });
                    let back = match joined {
                        Ok(b) => b,
                        Err(e) => {
                            tracing::warn!("vhost-user port {name}: relay: {e}");
                            continue;
                        }
                    };
                    if let Err(e) = daemon.start(&mut listener) {
                        tracing::warn!("vhost-user port {name}: accept: {e}");
                        let _ = back.shutdown(std::net::Shutdown::Both);
                        continue;
                    }
                    *lock(&conn.shutdown) = daemon.shutdown_handle();
                    if stop.load(Ordering::Acquire) {
                        daemon.request_shutdown();
                        let _ = daemon.wait();
                        return;
                    }
                    *lock(&cur) = Some(conn.clone());
                    if let Err(e) = daemon.wait() {
                        tracing::info!("vhost-user port {name}: connection ended: {e}");
                    }
                    let _ = back.shutdown(std::net::Shutdown::Both);
                    let _ = front.shutdown(std::net::Shutdown::Both);
                    conn.broken.store(true, Ordering::Release);
                    let mut c = lock(&cur);
                    if c.as_ref().is_some_and(|x| Arc::ptr_eq(x, &conn)) {
                        *c = None;
                    }
                }
            })?;
        let path_buf: PathBuf = path.to_owned();
        let cur = current.clone();
        let closer = Box::new(move || {
            closed.store(true, Ordering::Release);
            if let Some(c) = lock(&cur).take() {
                c.broken.store(true, Ordering::Release);
                if let Some(h) = lock(&c.shutdown).as_ref() {
                    h.shutdown();
                }
            }
            // Wakes the thread if it waits in accept (it sees `closed` and ends).
            let _ = std::os::unix::net::UnixStream::connect(&path_buf);
            let _ = std::fs::remove_file(path_buf.with_extension("backend"));
        });
        Ok(PortHandle::with_closer(
            Arc::new(VhostPort { current }),
            path.to_owned(),
            closer,
        ))
    }
}

/// Passes vhost-user requests from QEMU (`front`) to the daemon (`back`) with their file descriptors, and sets
/// `VHOST_USER_F_PROTOCOL_FEATURES` in `SET_FEATURES`: QEMU 7.2's vhost-user net negotiates protocol features
/// but leaves that bit out of `SET_FEATURES`, and then the daemon refuses its `SET_VRING_ENABLE` and closes
/// the connection (later QEMUs set the bit). Ends when either side closes or a message is malformed.
fn relay(front: std::os::unix::net::UnixStream, back: std::os::unix::net::UnixStream) {
    use std::io::Read;
    use std::os::unix::io::{FromRawFd, RawFd};
    use vmm_sys_util::sock_ctrl_msg::ScmSocket;
    let mut front_r = &front;
    let mut features_set = false;
    loop {
        let mut hdr = [0u8; 12];
        let mut fds: [RawFd; 8] = [-1; 8];
        let mut iov = [libc_iovec(&mut hdr)];
        // SAFETY: the iovec points at `hdr`, which lives across the call and may take any bytes.
        let got = unsafe { front.recv_with_fds(&mut iov, &mut fds) };
        let Ok((n, nfds)) = got else { break };
        // SAFETY: recvmsg gave us ownership of the first `nfds` descriptors; they close when dropped.
        let owned: Vec<std::fs::File> = fds[..nfds.min(fds.len())]
            .iter()
            .map(|&fd| unsafe { std::fs::File::from_raw_fd(fd) })
            .collect();
        if n == 0 || (n < hdr.len() && front_r.read_exact(&mut hdr[n..]).is_err()) {
            break;
        }
        let req = u32::from_le_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]);
        let size = u32::from_le_bytes([hdr[8], hdr[9], hdr[10], hdr[11]]) as usize;
        if size > MAX_MSG {
            break;
        }
        let mut msg = hdr.to_vec();
        msg.resize(12 + size, 0);
        if front_r.read_exact(&mut msg[12..]).is_err() {
            break;
        }
        if req == REQ_SET_VRING_ENABLE && !features_set {
            // QEMU 7.2 enables the ring before it sets features: set the one the daemon checks first (no
            // reply asked; the real SET_FEATURES follows and replaces it).
            let mut pre = Vec::with_capacity(20);
            for w in [REQ_SET_FEATURES, 1, 8] {
                pre.extend_from_slice(&w.to_le_bytes());
            }
            pre.extend_from_slice(&F_PROTOCOL_FEATURES.to_le_bytes());
            if back.send_with_fds(&[&pre[..]], &[]).is_err() {
                break;
            }
            features_set = true;
        }
        if req == REQ_SET_FEATURES && size == 8 {
            features_set = true;
            let mut v = [0u8; 8];
            v.copy_from_slice(&msg[12..20]);
            let f = u64::from_le_bytes(v) | F_PROTOCOL_FEATURES;
            msg[12..20].copy_from_slice(&f.to_le_bytes());
        }
        let raw: Vec<RawFd> = owned
            .iter()
            .map(std::os::unix::io::AsRawFd::as_raw_fd)
            .collect();
        if back.send_with_fds(&[&msg[..]], &raw).is_err() {
            break;
        }
    }
    let _ = back.shutdown(std::net::Shutdown::Both);
    let _ = front.shutdown(std::net::Shutdown::Both);
}

fn libc_iovec(buf: &mut [u8]) -> libc::iovec {
    libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    }
}
