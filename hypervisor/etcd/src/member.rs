//! A local etcd member as a child process: what the tests and the cluster fixture run (Debian's
//! `etcd-server`, `/usr/bin/etcd`). Not used by the node daemon, which only talks to etcd.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Why a local member could not be started.
#[derive(Debug, thiserror::Error)]
pub enum MemberError {
    /// The etcd program is not installed.
    #[error("etcd not found ({0}): install Debian's etcd-server (make setup does)")]
    NotInstalled(String),
    /// Starting it failed.
    #[error("starting etcd: {0}")]
    Spawn(#[from] std::io::Error),
    /// It did not answer in time; its log says why.
    #[error("etcd {name} did not come up within {waited:?}; its log {log}:\n{tail}")]
    NotUp {
        /// Member name.
        name: String,
        /// How long we waited.
        waited: Duration,
        /// Log file.
        log: String,
        /// Its last lines.
        tail: String,
    },
}

/// The etcd program: `$DVS_ETCD`, else `etcd` on the PATH.
pub fn program() -> String {
    std::env::var("DVS_ETCD").unwrap_or_else(|_| "etcd".into())
}

/// Addresses of one member: where clients and peers reach it.
#[derive(Clone, Debug)]
pub struct MemberAddrs {
    /// Member name.
    pub name: String,
    /// Client URL address.
    pub client: SocketAddr,
    /// Peer URL address.
    pub peer: SocketAddr,
}

impl MemberAddrs {
    /// Member `name` on free loopback ports.
    pub fn loopback(name: &str) -> std::io::Result<MemberAddrs> {
        let free =
            || -> std::io::Result<SocketAddr> { TcpListener::bind("127.0.0.1:0")?.local_addr() };
        Ok(MemberAddrs {
            name: name.into(),
            client: free()?,
            peer: free()?,
        })
    }

    /// The client URL.
    pub fn client_url(&self) -> String {
        format!("http://{}", self.client)
    }
}

/// A running etcd member; killed (SIGKILL) when dropped.
#[derive(Debug)]
pub struct LocalMember {
    /// Its addresses.
    pub addrs: MemberAddrs,
    child: Child,
    log: PathBuf,
}

impl LocalMember {
    /// Starts member `me` of the cluster `all` (every member's addresses, `me` among them), with its data
    /// in `dir/<name>`, and waits until its client port answers. `setup` runs in the child before exec
    /// (e.g. to enter a network namespace).
    pub fn start(
        dir: &Path,
        me: &MemberAddrs,
        all: &[MemberAddrs],
        heartbeat: Duration,
        mut command: impl FnMut(&mut Command),
    ) -> Result<LocalMember, MemberError> {
        let data = dir.join(&me.name);
        std::fs::create_dir_all(&data)?;
        let log = dir.join(format!("{}.log", me.name));
        let initial = all
            .iter()
            .map(|m| format!("{}=http://{}", m.name, m.peer))
            .collect::<Vec<_>>()
            .join(",");
        let hb = heartbeat.as_millis().max(10);
        let mut cmd = Command::new(program());
        cmd.arg("--name")
            .arg(&me.name)
            .arg("--data-dir")
            .arg(&data)
            .arg("--listen-client-urls")
            .arg(me.client_url())
            .arg("--advertise-client-urls")
            .arg(me.client_url())
            .arg("--listen-peer-urls")
            .arg(format!("http://{}", me.peer))
            .arg("--initial-advertise-peer-urls")
            .arg(format!("http://{}", me.peer))
            .arg("--initial-cluster")
            .arg(initial)
            .arg("--initial-cluster-state")
            .arg("new")
            .arg("--heartbeat-interval")
            .arg(hb.to_string())
            .arg("--election-timeout")
            .arg((hb * 10).to_string())
            .arg("--logger")
            .arg("zap")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log)?)
            .stderr(std::fs::File::options().append(true).open(&log)?);
        command(&mut cmd);
        let child = cmd.spawn().map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                MemberError::NotInstalled(program())
            } else {
                MemberError::Spawn(e)
            }
        })?;
        Ok(LocalMember {
            addrs: me.clone(),
            child,
            log,
        })
    }

    /// A single-member cluster on loopback, in `dir`, up and answering.
    pub fn single(dir: &Path) -> Result<LocalMember, MemberError> {
        let me = MemberAddrs::loopback("m1")?;
        let m = LocalMember::start(
            dir,
            &me,
            std::slice::from_ref(&me),
            Duration::from_millis(50),
            |_| {},
        )?;
        m.wait_listening(Duration::from_secs(20))?;
        Ok(m)
    }

    /// Waits until the member's client port accepts connections.
    pub fn wait_listening(&self, timeout: Duration) -> Result<(), MemberError> {
        let t0 = Instant::now();
        while t0.elapsed() < timeout {
            if std::net::TcpStream::connect_timeout(&self.addrs.client, Duration::from_millis(200))
                .is_ok()
            {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(MemberError::NotUp {
            name: self.addrs.name.clone(),
            waited: timeout,
            log: self.log.display().to_string(),
            tail: tail(&self.log, 20),
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the member at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for LocalMember {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The last `n` lines of `path`.
fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
