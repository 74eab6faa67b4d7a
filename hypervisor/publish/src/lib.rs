//! # dvs-publish — the publish gateway
//!
//! An instance's published TCP ports, terminated on the node. The gateway listens on the host
//! ports (tokio listeners with the kernel's full backlog) and on the instance's *publish link*, a
//! unix stream socket that QEMU connects to (`-netdev stream,server=off`: every Ethernet frame
//! after a 4-byte big-endian length). For each client it accepts, it opens a TCP connection over
//! the link to the guest with a host [smoltcp] stack (the gateway is `10.0.2.2`, the guest
//! `10.0.2.15`) and splices the bytes both ways through the stack's socket buffers, so that a slow
//! reader closes the other side's window instead of growing memory.
//!
//! What the guest may do is small: it answers connections the gateway opened, and ARP for the
//! gateway's address. The gateway accepts no connection from the guest and forwards nothing else;
//! malformed frames are dropped and counted, a bad length prefix drops the link.
//!
//! - [`Gateway::bind`] binds the listeners and the link socket (a port in use is an error here),
//!   [`Gateway::spawn`] runs it as a tokio task, [`GatewayHandle`] reads its [`Counters`] and stops
//!   it (also on drop: the listeners close, the link socket file goes).
//! - Clients beyond [`Config::max_guest_conns`] wait in a queue of [`Config::queue_len`]; a guest
//!   that refuses (RST on SYN) is asked again with a short backoff for up to
//!   [`Config::connect_timeout`]. A new link connection (the instance booted again) resets the
//!   stack: connections to the old boot are reset, queued clients stay.
#![warn(missing_docs)]

mod engine;
pub mod link;
#[cfg(test)]
mod tests;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpSocket, UnixListener};

/// One published port: clients of `listen` are carried to the guest's TCP port `guest_port`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Forward {
    /// The host address and port to listen on.
    pub listen: SocketAddr,
    /// The guest's TCP port.
    pub guest_port: u16,
}

/// How a gateway behaves; [`Config::default`] is what the node uses for a VOS web server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// The gateway's MAC on the link (locally administered).
    pub mac: [u8; 6],
    /// The gateway's address on the link.
    pub ip: Ipv4Addr,
    /// The guest's address on the link.
    pub guest_ip: Ipv4Addr,
    /// The link's prefix length.
    pub prefix_len: u8,
    /// Connections open to the guest at once (all forwards together); more clients wait.
    pub max_guest_conns: usize,
    /// Clients that may wait for a guest connection; beyond that a client is closed at once.
    pub queue_len: usize,
    /// How long a connection to the guest may take to open (refusals are retried until then).
    pub connect_timeout: Duration,
    /// How long a client may wait in the queue.
    pub queue_timeout: Duration,
    /// Receive and transmit buffer of each guest connection, bytes.
    pub socket_buffer: usize,
}

/// The web server's default connection slots (`dvs_vos_abi::boot::HttpConfig::default().slots`).
pub const DEFAULT_GUEST_CONNS: usize = 64;

impl Default for Config {
    fn default() -> Config {
        Config {
            mac: [0x02, 0xd5, 0x9b, 0, 0, 0x02],
            ip: Ipv4Addr::new(10, 0, 2, 2),
            guest_ip: Ipv4Addr::new(10, 0, 2, 15),
            prefix_len: 24,
            max_guest_conns: DEFAULT_GUEST_CONNS,
            queue_len: 1024,
            connect_timeout: Duration::from_secs(10),
            queue_timeout: Duration::from_secs(30),
            socket_buffer: 256 << 10,
        }
    }
}

/// What a gateway has done since it was bound.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Clients accepted on the listeners.
    pub accepted: u64,
    /// Clients that had to wait in the queue.
    pub queued: u64,
    /// Clients closed at once because the queue was full.
    pub overflow: u64,
    /// Connections the guest accepted.
    pub connected: u64,
    /// Connection attempts the guest refused (RST on SYN); they are retried.
    pub refused_by_guest: u64,
    /// Clients closed because no guest connection opened in time (connect or queue timeout).
    pub timed_out: u64,
    /// Connections the guest reset after it had accepted them.
    pub reset_by_guest: u64,
    /// Connections reset because the guest booted again or its link went away.
    pub reset_by_reboot: u64,
    /// Malformed frames from the guest, dropped.
    pub bad_frames: u64,
    /// Well-formed frames from the guest that are not for the gateway, dropped.
    pub ignored_frames: u64,
    /// Link connections accepted (one per boot).
    pub links: u64,
    /// Links dropped for a bad length prefix.
    pub bad_links: u64,
    /// Bytes carried from clients to the guest.
    pub bytes_to_guest: u64,
    /// Bytes carried from the guest to clients.
    pub bytes_to_client: u64,
    /// Times the gateway's task ran (an idle gateway does not run).
    pub wakeups: u64,
    /// Guest connections open now (opening included).
    pub active: u64,
    /// Clients waiting in the queue now.
    pub waiting: u64,
}

/// Why a gateway could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// A host address could not be listened on (in use, not local, no permission).
    #[error("publishing {addr}: {error}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        error: std::io::Error,
    },
    /// The link socket could not be made.
    #[error("publish link socket {path}: {error}", path = path.display())]
    Link {
        /// The socket path.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// The configuration cannot work.
    #[error("publish gateway: {0}")]
    Config(String),
}

/// A bound gateway, not running yet.
pub struct Gateway {
    cfg: Config,
    listeners: Vec<(TcpListener, u16)>,
    link: UnixListener,
    link_path: PathBuf,
    counters: Arc<Mutex<Counters>>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("link", &self.link_path)
            .field("listen", &self.local_addrs())
            .finish()
    }
}

/// The listen backlog asked for; the kernel caps it at `net.core.somaxconn`.
const BACKLOG: u32 = 65535;

fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let s = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    s.set_reuseaddr(true)?;
    s.bind(addr)?;
    s.listen(BACKLOG)
}

impl Gateway {
    /// Listens on every forward's address and on `link_path` (a stale socket file there is
    /// removed first). Must be called within a tokio runtime.
    pub fn bind(
        link_path: &Path,
        forwards: &[Forward],
        cfg: Config,
    ) -> Result<Gateway, PublishError> {
        if cfg.max_guest_conns == 0 || cfg.socket_buffer < 1024 || cfg.prefix_len > 32 {
            return Err(PublishError::Config(format!(
                "max_guest_conns {} (at least 1), socket_buffer {} (at least 1024), prefix_len {}",
                cfg.max_guest_conns, cfg.socket_buffer, cfg.prefix_len
            )));
        }
        let mut listeners = Vec::new();
        for f in forwards {
            let l = listen(f.listen).map_err(|error| PublishError::Bind {
                addr: f.listen,
                error,
            })?;
            listeners.push((l, f.guest_port));
        }
        let link_err = |error| PublishError::Link {
            path: link_path.to_path_buf(),
            error,
        };
        match std::fs::remove_file(link_path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(link_err(e)),
            _ => {}
        }
        let link = UnixListener::bind(link_path).map_err(link_err)?;
        Ok(Gateway {
            cfg,
            listeners,
            link,
            link_path: link_path.to_path_buf(),
            counters: Arc::new(Mutex::new(Counters::default())),
        })
    }

    /// The addresses listened on (ports resolved), in the order of the forwards.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|(l, _)| l.local_addr().ok())
            .collect()
    }

    /// The link socket's path.
    pub fn link_path(&self) -> &Path {
        &self.link_path
    }

    /// Runs the gateway until the future is dropped.
    pub async fn run(self) {
        let Gateway {
            cfg,
            listeners,
            link,
            counters,
            ..
        } = self;
        engine::Engine::new(cfg, listeners, link, counters)
            .run()
            .await
    }

    /// Runs the gateway as a tokio task; the handle stops it.
    pub fn spawn(self) -> GatewayHandle {
        let counters = self.counters.clone();
        let addrs = self.local_addrs();
        let link_path = self.link_path.clone();
        let task = tokio::spawn(self.run());
        GatewayHandle {
            task: Some(task),
            counters,
            addrs,
            link_path,
        }
    }
}

/// A running gateway; dropping it stops it.
#[derive(Debug)]
pub struct GatewayHandle {
    task: Option<tokio::task::JoinHandle<()>>,
    counters: Arc<Mutex<Counters>>,
    addrs: Vec<SocketAddr>,
    link_path: PathBuf,
}

impl GatewayHandle {
    /// Its counters now.
    pub fn counters(&self) -> Counters {
        *self.counters.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The addresses it listens on.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// The link socket's path.
    pub fn link_path(&self) -> &Path {
        &self.link_path
    }

    /// Stops it and waits until it is gone: the listeners are closed (their ports free again),
    /// every client is closed, the link socket file is removed.
    pub async fn stop(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
        let _ = std::fs::remove_file(&self.link_path);
    }
}

impl Drop for GatewayHandle {
    /// Stops the task (its listeners close when the runtime drops it) and removes the link socket.
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
        let _ = std::fs::remove_file(&self.link_path);
    }
}
