//! VM ports: the host end of an instance's fabric NIC. QEMU's `-netdev dgram` (one Ethernet frame per unix
//! datagram) and `-netdev stream` (4-byte big-endian length, then the frame) are here; `-netdev vhost-user`
//! (the proxy serves the virtio-net device itself from shared guest memory) is [`crate::vhost`]. Routing sees
//! each only as a [`VmPort`].

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixDatagram, UnixListener};

/// The largest Ethernet frame a port takes: the MTU of a virtual link is ours, up to 64 KiB (65535 bytes of
/// payload, the Ethernet header and slack for VLAN tags). Ports keep one receive buffer of this size; frames
/// in backlogs take only their own length.
pub const MAX_ETH_FRAME: usize = 65535 + 64;

/// Which QEMU socket protocol a port speaks.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum PortKind {
    /// `-netdev dgram`: the proxy binds `proxy_path`, the instance binds `vm_path`.
    Dgram {
        /// The proxy's socket.
        proxy_path: PathBuf,
        /// The instance's socket.
        vm_path: PathBuf,
    },
    /// `-netdev stream`: the proxy listens on `path`, the instance connects.
    Stream {
        /// The proxy's listening socket.
        path: PathBuf,
    },
    /// `-netdev vhost-user`: the proxy listens on `path` and serves the instance's virtio-net device from its
    /// shared memory ([`crate::vhost`]).
    #[serde(rename = "vhost-user")]
    VhostUser {
        /// The proxy's listening socket.
        path: PathBuf,
    },
}

/// The sending half of a VM port, as the proxy's data path sees it.
pub trait VmPort: Send + Sync + 'static {
    /// Hands one Ethernet frame to the instance without waiting; `WouldBlock` when the instance is not taking
    /// frames (the caller drops and counts it, like a NIC with a full ring).
    fn try_send(&self, frame: &[u8]) -> io::Result<()>;
}

/// What a port's reader does with each frame the instance sends.
pub type Sink = Arc<dyn Fn(Bytes) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// Opens a port of `kind`; frames the instance sends are given to `on_frame` in order, and an instance that
/// breaks its rings (vhost-user) is cut off and reported to `on_fault`. The port's tasks and threads end when
/// it is closed with [`PortHandle::close`].
pub async fn open(
    kind: &PortKind,
    on_frame: Sink,
    on_fault: crate::vhost::FaultSink,
) -> io::Result<PortHandle> {
    match kind {
        PortKind::Dgram {
            proxy_path,
            vm_path,
        } => DgramPort::open(proxy_path, vm_path, on_frame).await,
        PortKind::Stream { path } => StreamPort::open(path, on_frame).await,
        PortKind::VhostUser { path } => crate::vhost::VhostPort::open(path, on_frame, on_fault),
    }
}

/// An open port: its sending half and the task that reads it.
pub struct PortHandle {
    /// Sends frames to the instance.
    pub tx: Arc<dyn VmPort>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    paths: Vec<PathBuf>,
    closers: Vec<Box<dyn FnOnce() + Send>>,
}

impl PortHandle {
    /// A port run by its own threads: `close` runs `closer`, then removes `path`.
    pub(crate) fn with_closer(
        tx: Arc<dyn VmPort>,
        path: PathBuf,
        closer: Box<dyn FnOnce() + Send>,
    ) -> PortHandle {
        PortHandle {
            tx,
            tasks: Vec::new(),
            paths: vec![path],
            closers: vec![closer],
        }
    }

    /// Stops reading and removes the port's socket files.
    pub fn close(self) {
        for t in &self.tasks {
            t.abort();
        }
        for c in self.closers {
            c();
        }
        for p in &self.paths {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn unlink(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Frames kept for a dgram port whose instance is momentarily not reading (the kernel queues only
/// `net.unix.max_dgram_qlen`, 10 by default, datagrams per socket).
const DGRAM_BACKLOG: usize = 512;

/// A `-netdev dgram` port: one frame per datagram.
pub struct DgramPort {
    sock: Arc<UnixDatagram>,
    vm_path: PathBuf,
    connected: AtomicBool,
    backlog: std::sync::Mutex<std::collections::VecDeque<Bytes>>,
    wake: tokio::sync::Notify,
}

impl DgramPort {
    async fn open(proxy_path: &Path, vm_path: &Path, on_frame: Sink) -> io::Result<PortHandle> {
        unlink(proxy_path)?;
        let sock = Arc::new(UnixDatagram::bind(proxy_path)?);
        let port = Arc::new(DgramPort {
            sock: sock.clone(),
            vm_path: vm_path.to_owned(),
            connected: AtomicBool::new(false),
            backlog: std::sync::Mutex::new(std::collections::VecDeque::new()),
            wake: tokio::sync::Notify::new(),
        });
        let reader = tokio::spawn(async move {
            let mut buf = vec![0u8; MAX_ETH_FRAME];
            loop {
                match sock.recv(&mut buf).await {
                    Ok(n) => on_frame(Bytes::copy_from_slice(&buf[..n])).await,
                    Err(e) => {
                        tracing::warn!("VM port: receive failed: {e}");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                }
            }
        });
        let flusher = tokio::spawn(port.clone().flush());
        Ok(PortHandle {
            tx: port,
            tasks: vec![reader, flusher],
            paths: vec![proxy_path.to_owned()],
            closers: Vec::new(),
        })
    }

    fn backlog(&self) -> std::sync::MutexGuard<'_, std::collections::VecDeque<Bytes>> {
        self.backlog.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends the backlog in order, waiting until the instance's socket has room (the connected socket's
    /// writability follows the peer's receive queue).
    async fn flush(self: Arc<Self>) {
        loop {
            self.wake.notified().await;
            loop {
                let Some(frame) = self.backlog().front().cloned() else {
                    break;
                };
                match self.sock.send(&frame).await {
                    Ok(_) => {
                        self.backlog().pop_front();
                    }
                    Err(_) => {
                        self.backlog().clear();
                        self.connected.store(false, Ordering::Relaxed);
                        break;
                    }
                }
            }
        }
    }
}

impl VmPort for DgramPort {
    fn try_send(&self, frame: &[u8]) -> io::Result<()> {
        if !self.connected.load(Ordering::Relaxed) {
            // The instance binds its socket when it starts: connect on first use, and again after it restarts.
            self.sock.connect(&self.vm_path)?;
            self.connected.store(true, Ordering::Relaxed);
        }
        let mut backlog = self.backlog();
        if backlog.is_empty() {
            match self.sock.try_send(frame) {
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => {
                    self.connected.store(false, Ordering::Relaxed);
                    return Err(e);
                }
            }
        }
        if backlog.len() >= DGRAM_BACKLOG {
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                "VM port backlog full",
            ));
        }
        backlog.push_back(Bytes::copy_from_slice(frame));
        drop(backlog);
        self.wake.notify_one();
        Ok(())
    }
}

/// Bytes kept for a stream port whose instance is momentarily not reading.
const STREAM_BACKLOG: usize = 1 << 20;

/// A `-netdev stream` port: a 4-byte big-endian length, then the frame, over one unix stream connection.
/// Frames are written straight from the caller when the socket takes them; what it does not take waits in
/// a bounded backlog that a task flushes when the socket is writable again.
pub struct StreamPort {
    conn: std::sync::Mutex<Option<StreamConn>>,
    wake: tokio::sync::Notify,
}

struct StreamConn {
    wr: Arc<tokio::net::unix::OwnedWriteHalf>,
    backlog: std::collections::VecDeque<Bytes>,
    queued: usize,
}

impl StreamPort {
    async fn open(path: &Path, on_frame: Sink) -> io::Result<PortHandle> {
        unlink(path)?;
        let listener = UnixListener::bind(path)?;
        let port = Arc::new(StreamPort {
            conn: std::sync::Mutex::new(None),
            wake: tokio::sync::Notify::new(),
        });
        let me = port.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (rd, wr) = stream.into_split();
                let wr = Arc::new(wr);
                *me.conn() = Some(StreamConn {
                    wr: wr.clone(),
                    backlog: Default::default(),
                    queued: 0,
                });
                let flusher = tokio::spawn(me.clone().flush(wr));
                let mut rd = tokio::io::BufReader::with_capacity(1 << 16, rd);
                let mut frame = vec![0u8; MAX_ETH_FRAME];
                while let Ok(len) = rd.read_u32().await {
                    let len = len as usize;
                    if len > frame.len() || rd.read_exact(&mut frame[..len]).await.is_err() {
                        break;
                    }
                    on_frame(Bytes::copy_from_slice(&frame[..len])).await;
                }
                flusher.abort();
                *me.conn() = None;
            }
        });
        Ok(PortHandle {
            tx: port,
            tasks: vec![task],
            paths: vec![path.to_owned()],
            closers: Vec::new(),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Option<StreamConn>> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes the backlog of connection `wr` whenever the socket can take more.
    async fn flush(self: Arc<Self>, wr: Arc<tokio::net::unix::OwnedWriteHalf>) {
        loop {
            self.wake.notified().await;
            loop {
                if wr.writable().await.is_err() {
                    return;
                }
                let mut guard = self.conn();
                let Some(conn) = guard.as_mut().filter(|c| Arc::ptr_eq(&c.wr, &wr)) else {
                    return;
                };
                while let Some(front) = conn.backlog.front_mut() {
                    match wr.try_write(front) {
                        Ok(n) if n == front.len() => {
                            conn.queued -= n;
                            conn.backlog.pop_front();
                        }
                        Ok(n) => {
                            conn.queued -= n;
                            let _ = front.split_to(n);
                            break;
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(_) => return,
                    }
                }
                if conn.backlog.is_empty() {
                    break;
                }
            }
        }
    }
}

fn put_framed(buf: &mut Vec<u8>, frame: &[u8]) {
    buf.extend_from_slice(&(frame.len() as u32).to_be_bytes());
    buf.extend_from_slice(frame);
}

impl VmPort for StreamPort {
    fn try_send(&self, frame: &[u8]) -> io::Result<()> {
        let mut guard = self.conn();
        let Some(conn) = guard.as_mut() else {
            return Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "instance not connected",
            ));
        };
        let mut buf = Vec::with_capacity(frame.len() + 4);
        put_framed(&mut buf, frame);
        let mut rest = Bytes::from(buf);
        if conn.backlog.is_empty() {
            match conn.wr.try_write(&rest) {
                Ok(n) if n == rest.len() => return Ok(()),
                Ok(n) => {
                    let _ = rest.split_to(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        } else if conn.queued + rest.len() > STREAM_BACKLOG {
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                "stream port backlog full",
            ));
        }
        conn.queued += rest.len();
        conn.backlog.push_back(rest);
        drop(guard);
        self.wake.notify_one();
        Ok(())
    }
}

/// The instance's end of a port, as QEMU would open it: for host-side fake instances and tests.
pub enum VmEnd {
    /// The instance's datagram socket, connected to the proxy's.
    Dgram(UnixDatagram),
    /// The instance's stream connection to the proxy.
    Stream(tokio::net::UnixStream),
}

impl VmEnd {
    /// Opens the instance's end of a port of `kind` (the proxy's end must exist for `Stream`; `VhostUser` has
    /// no such end: `Unsupported`).
    pub async fn open(kind: &PortKind) -> io::Result<VmEnd> {
        match kind {
            PortKind::Dgram {
                proxy_path,
                vm_path,
            } => {
                unlink(vm_path)?;
                let s = UnixDatagram::bind(vm_path)?;
                s.connect(proxy_path)?;
                Ok(VmEnd::Dgram(s))
            }
            PortKind::Stream { path } => {
                Ok(VmEnd::Stream(tokio::net::UnixStream::connect(path).await?))
            }
            PortKind::VhostUser { .. } => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "a vhost-user port's instance end is a vhost-user frontend (QEMU)",
            )),
        }
    }

    /// Sends one Ethernet frame to the proxy.
    pub async fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        match self {
            VmEnd::Dgram(s) => s.send(frame).await.map(|_| ()),
            VmEnd::Stream(s) => {
                let mut buf = Vec::with_capacity(frame.len() + 4);
                put_framed(&mut buf, frame);
                s.write_all(&buf).await
            }
        }
    }

    /// Receives one Ethernet frame from the proxy into `buf`; returns its length.
    pub async fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            VmEnd::Dgram(s) => s.recv(buf).await,
            VmEnd::Stream(s) => {
                let len = s.read_u32().await? as usize;
                if len > buf.len() {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("frame of {len} bytes"),
                    ));
                }
                s.read_exact(&mut buf[..len]).await?;
                Ok(len)
            }
        }
    }
}
