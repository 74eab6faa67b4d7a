//! The cluster fixture: N dvs nodes on one machine, each a network namespace joined to a bridge by a veth
//! pair, each running its daemon (`ip netns exec NS dvs node --config ...`) as a child of the test.
//!
//! Everything is made once by [`Cluster::up`] and undone by `Drop`, also while a test panics: daemons are
//! killed and reaped first (their machines die with them: `PR_SET_PDEATHSIG`), then the namespaces and the
//! bridge are deleted. A run that was itself killed leaves names with its pid in them, which the next run
//! removes ([`crate::netns::sweep_stale`]). The work directory (configs, node data, console logs, daemon
//! logs) is removed too, unless [`Cluster::keep_logs`] was asked for, e.g. after a failed check.
//!
//! All calls are blocking (the fixture owns a current-thread tokio runtime for the async API client): test
//! code stays straight-line. Waits take a [`Deadline`] made by [`Cluster::deadline`], which scales a KVM
//! budget for the detected accelerator (TCG: 3x).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use dvs_hypervisor::auth::Credentials;
use dvs_hypervisor::client::NodeClient;
use dvs_instance::spec::Accel;

use crate::api::Api;
use crate::netns::{sweep_stale, Bridge, NetError, Netns};
use crate::wait::Deadline;

/// Why the cluster could not be brought up.
#[derive(Debug, thiserror::Error)]
pub enum FixtureError {
    /// Not root.
    #[error("the cluster fixture needs root (network namespaces, veth, bridge); run it as root (sudo make cluster-test)")]
    NotRoot,
    /// A binary is missing.
    #[error("{what} not found at {path} ({hint})")]
    Missing {
        /// What.
        what: &'static str,
        /// Where it was looked for.
        path: PathBuf,
        /// How to get it.
        hint: &'static str,
    },
    /// Network set-up failed.
    #[error(transparent)]
    Net(#[from] NetError),
    /// A node did not come up in time.
    #[error("{what}: {source}")]
    NotUp {
        /// What did not come up (and where its log is).
        what: String,
        /// The wait that ran out.
        source: crate::wait::WaitError,
    },
    /// A file could not be written or a process started.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        source: std::io::Error,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> FixtureError {
    let what = what.into();
    move |source| FixtureError::Io { what, source }
}

/// A DC of the cluster file.
#[derive(Clone, Debug)]
pub struct DcDef {
    /// Number.
    pub id: u16,
    /// Name.
    pub name: String,
    /// Nodes it spans.
    pub nodes: Vec<u16>,
    /// More lines of its `[[dc]]` table (`quota = {...}`, `limit = {...}`).
    pub extra: String,
}

/// What cluster to make.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// Nodes, numbered 1..=nodes.
    pub nodes: u16,
    /// DCs.
    pub dcs: Vec<DcDef>,
    /// The `dvs` binary (daemon and CLI).
    pub dvs: PathBuf,
    /// Lines appended to every node.toml (backend, process program...).
    pub node_toml_extra: String,
    /// The /24 the nodes live in: node N is `.N`, the bridge `.254`.
    pub subnet: String,
    /// The accelerator the nodes boot with (`accel = ...` in node.toml) and deadlines scale for.
    pub accel: Accel,
    /// The cluster's state on etcd instead of the cluster file alone: members in the first nodes' namespaces.
    pub etcd: Option<EtcdDef>,
    /// Mutual TLS on peer links: a cluster CA made here, a node certificate for each node (`tls = {...}` in
    /// its node.toml).
    pub peer_tls: bool,
}

/// An etcd for the cluster: one member in each of the first `members` nodes' namespaces (client port 2379,
/// peer port 2380 on the node's address), and every node's `etcd = {...}` in its node.toml.
#[derive(Clone, Debug)]
pub struct EtcdDef {
    /// How many members (nodes 1..=members hold one).
    pub members: u16,
    /// The nodes' lease TTL, seconds.
    pub lease_ttl_s: u64,
}

impl ClusterConfig {
    /// `nodes` nodes, no DC, the detected accelerator, subnet 10.217.0.0/24.
    pub fn new(nodes: u16, dvs: PathBuf) -> ClusterConfig {
        ClusterConfig {
            nodes,
            dcs: Vec::new(),
            dvs,
            node_toml_extra: String::new(),
            subnet: "10.217.0".into(),
            accel: Accel::detect(),
            etcd: None,
            peer_tls: false,
        }
    }

    /// Adds DC `id` named `name` spanning `nodes`.
    pub fn dc(mut self, id: u16, name: &str, nodes: &[u16]) -> ClusterConfig {
        self.dcs.push(DcDef {
            id,
            name: name.into(),
            nodes: nodes.to_vec(),
            extra: String::new(),
        });
        self
    }

    /// Adds DC `id` like [`ClusterConfig::dc`], with `extra` lines in its `[[dc]]` table.
    pub fn dc_with(mut self, id: u16, name: &str, nodes: &[u16], extra: &str) -> ClusterConfig {
        self = self.dc(id, name, nodes);
        if let Some(d) = self.dcs.last_mut() {
            d.extra = extra.into();
        }
        self
    }
}

/// A node daemon, a child of the test: killed and reaped on drop.
#[derive(Debug)]
struct Daemon {
    child: Child,
}

impl Daemon {
    fn signal(&self, sig: i32) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: kill(2) on our own child's pid; it is not reaped yet, so the pid is still ours.
            unsafe {
                libc::kill(pid, sig);
            }
        }
    }

    /// SIGTERM, up to `grace` for the daemon to stop its machines, then SIGKILL; reaped either way.
    fn stop(mut self, grace: Duration) -> String {
        self.signal(libc::SIGTERM);
        let deadline = Deadline::after(grace);
        let mut pause = Duration::from_millis(5);
        while !deadline.passed() {
            if let Ok(Some(st)) = self.child.try_wait() {
                return st.to_string();
            }
            std::thread::sleep(pause.min(deadline.remaining()));
            pause = (pause * 2).min(Duration::from_millis(100));
        }
        self.kill()
    }

    fn kill(mut self) -> String {
        let _ = self.child.kill();
        self.child
            .wait()
            .map_or_else(|e| format!("wait failed: {e}"), |st| st.to_string())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// One node of the fixture.
#[derive(Debug)]
pub struct Node {
    /// Node id.
    pub id: u16,
    /// Its API address (`10.217.0.N:7070`).
    pub api_addr: String,
    ns: String,
    config: PathBuf,
    log: PathBuf,
    /// The admin credential file the node writes on its first start (`n<N>/api/admin.toml`).
    credentials: PathBuf,
    /// A client with those credentials, once the file is there ([`Cluster::up`] waits for it).
    client: NodeClient,
    daemon: Option<Daemon>,
}

/// The running cluster (see the module doc).
pub struct Cluster {
    /// The accelerator machines boot with.
    pub accel: Accel,
    rt: tokio::runtime::Runtime,
    dvs: PathBuf,
    work: PathBuf,
    keep: bool,
    nodes: Vec<Node>,
    namespaces: Vec<Netns>,
    bridge: Option<Bridge>,
    tag: u32,
    subnet: String,
    node_toml: String,
    etcd: Option<EtcdDef>,
    /// The etcd members, by node (None: killed).
    members: Vec<Option<dvs_etcd::member::LocalMember>>,
    /// The peer links' cluster CA, when they are mutual TLS.
    peer_ca: Option<dvs_proxy::tls::Pem>,
}

const NS_PREFIX: &str = "dvsct";
const LINK_PREFIX: &str = "dvs";

/// True when running as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

impl Cluster {
    /// Makes the network and writes the configs, then starts every node's daemon and waits (up to
    /// `ready`) until each answers its API and all peer links are up.
    pub fn up(cfg: ClusterConfig, ready: Duration) -> Result<Cluster, FixtureError> {
        if !is_root() {
            return Err(FixtureError::NotRoot);
        }
        if !cfg.dvs.is_file() {
            return Err(FixtureError::Missing {
                what: "the dvs binary",
                path: cfg.dvs.clone(),
                hint: "cargo build -p dvs-hypervisor --bin dvs",
            });
        }
        for gone in sweep_stale(NS_PREFIX, LINK_PREFIX) {
            println!("cluster: removed {gone}, left by a killed run");
        }
        let tag = std::process::id();
        let work = std::env::temp_dir().join(format!("dvs-ct.{tag}"));
        std::fs::create_dir_all(&work).map_err(io(format!("creating {}", work.display())))?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(io("starting a tokio runtime"))?;
        let mut c = Cluster {
            accel: cfg.accel,
            rt,
            dvs: cfg.dvs.clone(),
            work,
            keep: false,
            nodes: Vec::new(),
            namespaces: Vec::new(),
            bridge: None,
            tag,
            subnet: cfg.subnet.clone(),
            node_toml: String::new(),
            etcd: cfg.etcd.clone(),
            members: Vec::new(),
            peer_ca: None,
        };
        // From here on, a failure drops `c`, which undoes whatever was made so far.
        let bridge = Bridge::new(
            &format!("{LINK_PREFIX}br{tag}"),
            &format!("{}.254/24", cfg.subnet),
        )?;
        let mut cluster_toml = String::new();
        for n in 1..=cfg.nodes {
            let ns = Netns::new(&format!("{NS_PREFIX}{tag}-{n}"))?;
            ns.attach(
                &bridge,
                &format!("{LINK_PREFIX}{tag}v{n}"),
                &format!("{}.{n}/24", cfg.subnet),
            )?;
            c.namespaces.push(ns);
            let ip = format!("{}.{n}", cfg.subnet);
            cluster_toml.push_str(&format!(
                "[[node]]\nid = {n}\napi = \"{ip}:7070\"\nproxy = \"{ip}:7071\"\n\n"
            ));
        }
        c.bridge = Some(bridge);
        for dc in &cfg.dcs {
            let nodes: Vec<String> = dc.nodes.iter().map(u16::to_string).collect();
            cluster_toml.push_str(&format!(
                "[[dc]]\nid = {}\nname = \"{}\"\nnodes = [{}]\n{}\n\n",
                dc.id,
                dc.name,
                nodes.join(", "),
                dc.extra
            ));
        }
        let path = c.work.join("cluster.toml");
        std::fs::write(&path, cluster_toml).map_err(io(format!("writing {}", path.display())))?;
        // One API CA for all nodes (node.toml `api_ca`): each node issues its server certificate and its
        // credential files from it, so that nodes accept each other's calls (migration).
        let ca = dvs_proxy::tls::new_cluster_ca("cluster test").map_err(|e| FixtureError::Io {
            what: "making the API CA".into(),
            source: std::io::Error::other(e),
        })?;
        for (file, text) in [("api-ca.pem", &ca.cert), ("api-ca.key", &ca.key)] {
            let path = c.work.join(file);
            std::fs::write(&path, text).map_err(io(format!("writing {}", path.display())))?;
        }
        c.node_toml = format!(
            "accel = \"{}\"\napi_ca = {{ cert = \"api-ca.pem\", key = \"api-ca.key\" }}\n{}\n",
            cfg.accel.name(),
            cfg.node_toml_extra
        );
        if let Some(e) = &cfg.etcd {
            c.start_etcd(e.members.min(cfg.nodes), c.deadline(ready))?;
        }
        if cfg.peer_tls {
            let ca = dvs_proxy::tls::new_cluster_ca("cluster test peers").map_err(|e| {
                FixtureError::Io {
                    what: "making the peer-link CA".into(),
                    source: std::io::Error::other(e),
                }
            })?;
            let path = c.work.join("peer-ca.pem");
            std::fs::write(&path, &ca.cert).map_err(io(format!("writing {}", path.display())))?;
            c.peer_ca = Some(ca);
        }
        for n in 1..=cfg.nodes {
            c.write_node(n, false)?;
        }
        for n in 1..=cfg.nodes {
            c.start_node(n)?;
        }
        let deadline = c.deadline(ready);
        for n in 1..=cfg.nodes {
            c.take_credentials(n, deadline)?;
        }
        for n in 1..=cfg.nodes {
            c.wait_api(n, deadline)
                .map_err(|source| FixtureError::NotUp {
                    what: format!(
                        "node {n} did not come up (log: {})",
                        c.node(n).log.display()
                    ),
                    source,
                })?;
        }
        for a in 1..=cfg.nodes {
            for b in (a + 1)..=cfg.nodes {
                c.wait_peer(a, b, true, deadline)
                    .map_err(|source| FixtureError::NotUp {
                        what: format!("peer link {a}-{b}"),
                        source,
                    })?;
            }
        }
        Ok(c)
    }

    /// Writes node `n`'s node.toml and adds it to the fixture's nodes (`joins`: a node that is not in the
    /// cluster file, which joins through etcd with its own addresses).
    fn write_node(&mut self, n: u16, joins: bool) -> Result<(), FixtureError> {
        let config = self.work.join(format!("node{n}.toml"));
        let ip = format!("{}.{n}", self.subnet);
        let api_addr = format!("{ip}:7070");
        let mut text = format!(
            "node = {n}\ncluster = \"cluster.toml\"\ndata_dir = \"n{n}\"\napi_listen = \"{api_addr}\"\n{}",
            self.node_toml
        );
        if let Some(ca) = &self.peer_ca {
            let pem = dvs_proxy::tls::issue_node_cert(ca, &format!("n{n}"), m3ipc_core::NodeId(n))
                .map_err(|e| FixtureError::Io {
                    what: format!("issuing node {n}'s peer certificate"),
                    source: std::io::Error::other(e),
                })?;
            for (file, text) in [
                (format!("peer-n{n}.pem"), &pem.cert),
                (format!("peer-n{n}.key"), &pem.key),
            ] {
                let path = self.work.join(&file);
                std::fs::write(&path, text).map_err(io(format!("writing {}", path.display())))?;
            }
            text.push_str(&format!(
                "tls = {{ ca = \"peer-ca.pem\", cert = \"peer-n{n}.pem\", key = \"peer-n{n}.key\" }}\n"
            ));
        }
        if let Some(e) = &self.etcd {
            let endpoints: Vec<String> = (1..=e.members)
                .map(|m| format!("\"http://{}.{m}:2379\"", self.subnet))
                .collect();
            let own = if joins {
                format!(", proxy = \"{ip}:7071\", api = \"{api_addr}\"")
            } else {
                String::new()
            };
            text.push_str(&format!(
                "etcd = {{ endpoints = [{}], lease_ttl_s = {}{own} }}\n",
                endpoints.join(", "),
                e.lease_ttl_s
            ));
        }
        std::fs::write(&config, text).map_err(io(format!("writing {}", config.display())))?;
        self.nodes.push(Node {
            id: n,
            client: NodeClient::plain(&api_addr),
            credentials: self.work.join(format!("n{n}/api/admin.toml")),
            api_addr,
            ns: format!("{NS_PREFIX}{}-{n}", self.tag),
            config,
            log: self.work.join(format!("node{n}.log")),
            daemon: None,
        });
        Ok(())
    }

    /// Waits for node `n`'s credential file and gives its client those credentials.
    fn take_credentials(&mut self, n: u16, deadline: Deadline) -> Result<(), FixtureError> {
        let creds = self
            .wait_credentials(n, deadline)
            .map_err(|source| FixtureError::NotUp {
                what: format!(
                    "node {n} wrote no credentials (log: {})",
                    self.node(n).log.display()
                ),
                source,
            })?;
        let node = self.node_mut(n);
        node.client = NodeClient::with_credentials(&node.api_addr, &creds);
        Ok(())
    }

    /// Starts etcd members in nodes 1..=`members`' namespaces and waits until each listens.
    fn start_etcd(&mut self, members: u16, deadline: Deadline) -> Result<(), FixtureError> {
        use dvs_etcd::member::{LocalMember, MemberAddrs};
        let addr = |n: u16, port: u16| -> std::net::SocketAddr {
            std::net::SocketAddr::new(
                format!("{}.{n}", self.subnet)
                    .parse()
                    .unwrap_or(std::net::Ipv4Addr::LOCALHOST.into()),
                port,
            )
        };
        let all: Vec<MemberAddrs> = (1..=members)
            .map(|n| MemberAddrs {
                name: format!("n{n}"),
                client: addr(n, 2379),
                peer: addr(n, 2380),
            })
            .collect();
        let dir = self.work.join("etcd");
        for me in &all {
            let ns = self.namespaces[self.members.len()].name().to_string();
            let m = LocalMember::start(&dir, me, &all, Duration::from_millis(100), |cmd| {
                enter_netns(cmd, &ns);
                dvs_instance::die_with_parent(cmd);
            })
            .map_err(|e| FixtureError::Io {
                what: format!("starting etcd member {}", me.name),
                source: std::io::Error::other(e),
            })?;
            self.members.push(Some(m));
        }
        for m in self.members.iter().flatten() {
            m.wait_listening(deadline.remaining())
                .map_err(|e| FixtureError::Io {
                    what: "etcd did not come up".into(),
                    source: std::io::Error::other(e),
                })?;
        }
        Ok(())
    }

    /// Starts node `n`'s etcd member again after [`Cluster::kill_etcd`] (from its data directory: it rejoins
    /// the cluster it was in) and waits until it listens.
    pub fn restart_etcd(&mut self, n: u16, ready: Duration) -> Result<(), FixtureError> {
        use dvs_etcd::member::{LocalMember, MemberAddrs};
        let Some(e) = &self.etcd else {
            return Ok(());
        };
        let i = usize::from(n.max(1) - 1);
        if i >= usize::from(e.members) || self.members.get(i).is_some_and(Option::is_some) {
            return Ok(());
        }
        let addr = |m: u16, port: u16| -> std::net::SocketAddr {
            std::net::SocketAddr::new(
                format!("{}.{m}", self.subnet)
                    .parse()
                    .unwrap_or(std::net::Ipv4Addr::LOCALHOST.into()),
                port,
            )
        };
        let all: Vec<MemberAddrs> = (1..=e.members)
            .map(|m| MemberAddrs {
                name: format!("n{m}"),
                client: addr(m, 2379),
                peer: addr(m, 2380),
            })
            .collect();
        let ns = self.node(n).ns.clone();
        let m = LocalMember::start(
            &self.work.join("etcd"),
            &all[i],
            &all,
            Duration::from_millis(100),
            |cmd| {
                enter_netns(cmd, &ns);
                dvs_instance::die_with_parent(cmd);
            },
        )
        .map_err(|e| FixtureError::Io {
            what: format!("restarting etcd member n{n}"),
            source: std::io::Error::other(e),
        })?;
        m.wait_listening(self.accel.timeout(ready))
            .map_err(|e| FixtureError::Io {
                what: format!("etcd member n{n} did not come back"),
                source: std::io::Error::other(e),
            })?;
        if let Some(slot) = self.members.get_mut(i) {
            *slot = Some(m);
        }
        Ok(())
    }

    /// Kills (SIGKILL) node `n`'s etcd member, as a crash would.
    pub fn kill_etcd(&mut self, n: u16) {
        if let Some(m) = self.members.get_mut(usize::from(n.max(1) - 1)) {
            if let Some(mut m) = m.take() {
                m.kill();
            }
        }
    }

    /// Adds a node that is not in the cluster file (a namespace on the bridge, its daemon with etcd and its
    /// own addresses) and waits until its API answers. Needs [`ClusterConfig::etcd`]. Returns its id.
    pub fn add_node(&mut self, ready: Duration) -> Result<u16, FixtureError> {
        let n = u16::try_from(self.nodes.len() + 1).unwrap_or(u16::MAX);
        let ns = Netns::new(&format!("{NS_PREFIX}{}-{n}", self.tag))?;
        if let Some(bridge) = &self.bridge {
            ns.attach(
                bridge,
                &format!("{LINK_PREFIX}{}v{n}", self.tag),
                &format!("{}.{n}/24", self.subnet),
            )?;
        }
        self.namespaces.push(ns);
        self.write_node(n, true)?;
        self.start_node(n)?;
        let deadline = self.deadline(ready);
        self.take_credentials(n, deadline)?;
        self.wait_api(n, deadline)
            .map_err(|source| FixtureError::NotUp {
                what: format!(
                    "node {n} did not come up (log: {})",
                    self.node(n).log.display()
                ),
                source,
            })?;
        Ok(n)
    }

    /// How node `n`'s daemon ended, once it has (None while it runs or was never started).
    pub fn daemon_exited(&mut self, n: u16) -> Option<String> {
        let d = self.node_mut(n).daemon.as_mut()?;
        d.child.try_wait().ok().flatten().map(|st| st.to_string())
    }

    /// Starts node `n`'s daemon again after it ended (or kills it first if it still runs), and waits until
    /// its API answers.
    pub fn restart_node(&mut self, n: u16, ready: Duration) -> Result<(), FixtureError> {
        if let Some(d) = self.node_mut(n).daemon.take() {
            d.kill();
        }
        self.start_node(n)?;
        let deadline = self.deadline(ready);
        self.wait_api(n, deadline)
            .map_err(|source| FixtureError::NotUp {
                what: format!(
                    "node {n} did not come back (log: {})",
                    self.node(n).log.display()
                ),
                source,
            })
    }

    /// Cuts node `n` off the network (`up` false: its namespace's link goes down) or joins it again.
    pub fn set_link(&self, n: u16, up: bool) -> Result<(), NetError> {
        crate::netns::ip(&[
            "-n",
            &self.node(n).ns,
            "link",
            "set",
            "eth0",
            if up { "up" } else { "down" },
        ])
        .map(|_| ())
    }

    /// A deadline `kvm_budget` from now, scaled for the accelerator (TCG: 3x).
    pub fn deadline(&self, kvm_budget: Duration) -> Deadline {
        Deadline::after(self.accel.timeout(kvm_budget))
    }

    /// The fixture's work directory (configs, node data, logs).
    pub fn work_dir(&self) -> &Path {
        &self.work
    }

    /// Keep the work directory (copied to /tmp/dvs-cluster-test-logs) when the cluster is dropped.
    pub fn keep_logs(&mut self) {
        self.keep = true;
    }

    fn node(&self, n: u16) -> &Node {
        let i = usize::from(n.max(1) - 1);
        self.nodes
            .get(i)
            .unwrap_or_else(|| panic!("node {n}: the cluster has {} nodes", self.nodes.len()))
    }

    fn node_mut(&mut self, n: u16) -> &mut Node {
        let len = self.nodes.len();
        self.nodes
            .get_mut(usize::from(n.max(1) - 1))
            .unwrap_or_else(|| panic!("node {n}: the cluster has {len} nodes"))
    }

    /// The blocking API client of node `n`.
    pub fn api(&self, n: u16) -> Api<'_> {
        Api::new(&self.rt, &self.node(n).client, n)
    }

    /// Node `n`'s address on the bridge (where its API and its published ports listen), reachable from the
    /// root namespace.
    pub fn node_ip(&self, n: u16) -> std::net::IpAddr {
        let api = &self.node(n).api_addr;
        api.parse::<std::net::SocketAddr>()
            .map(|a| a.ip())
            .unwrap_or_else(|e| panic!("node {n}'s API address '{api}': {e}"))
    }

    /// Node ids.
    pub fn node_ids(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.id).collect()
    }

    /// Starts node `n`'s daemon (again); its output is appended to `node<n>.log`.
    pub fn start_node(&mut self, n: u16) -> Result<(), FixtureError> {
        let dvs = self.dvs.clone();
        let node = self.node_mut(n);
        if node.daemon.is_some() {
            return Ok(());
        }
        let log = File::options()
            .create(true)
            .append(true)
            .open(&node.log)
            .map_err(io(format!("opening {}", node.log.display())))?;
        let log2 = log
            .try_clone()
            .map_err(io(format!("opening {}", node.log.display())))?;
        let mut cmd = Command::new(&dvs);
        enter_netns(&mut cmd, &node.ns);
        cmd.arg("node")
            .arg("--config")
            .arg(&node.config)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        // The daemon dies with the test process even if the test is
        // killed before its guards run.
        dvs_instance::die_with_parent(&mut cmd);
        let child = cmd.spawn().map_err(io(format!(
            "starting node {n}'s daemon ({})",
            dvs.display()
        )))?;
        node.daemon = Some(Daemon { child });
        Ok(())
    }

    /// Kills node `n`'s daemon with SIGKILL (a crash: it cannot stop its machines itself) and reaps it.
    pub fn kill_node(&mut self, n: u16) -> String {
        self.node_mut(n)
            .daemon
            .take()
            .map_or_else(|| "was not running".into(), Daemon::kill)
    }

    /// Stops node `n`'s daemon with SIGTERM (it stops its machines and keeps their records), SIGKILL after
    /// `grace`; reaped.
    pub fn stop_node(&mut self, n: u16, grace: Duration) -> String {
        let grace = self.accel.timeout(grace);
        self.node_mut(n)
            .daemon
            .take()
            .map_or_else(|| "was not running".into(), |d| d.stop(grace))
    }

    /// Waits until node `n` has written its admin credential file, and reads it.
    fn wait_credentials(
        &self,
        n: u16,
        deadline: Deadline,
    ) -> Result<Credentials, crate::wait::WaitError> {
        let path = &self.node(n).credentials;
        crate::wait::eventually(deadline, &format!("{}", path.display()), || {
            Credentials::load(path).map_err(|e| e.to_string())
        })
    }

    /// Node `n`'s admin credential file (`n<N>/api/admin.toml` in the work directory).
    pub fn credentials(&self, n: u16) -> &Path {
        &self.node(n).credentials
    }

    /// Waits until node `n` answers `GET /v1/node`.
    pub fn wait_api(&self, n: u16, deadline: Deadline) -> Result<(), crate::wait::WaitError> {
        let api = self.api(n);
        crate::wait::eventually(deadline, &format!("node {n}'s API"), || {
            api.status().map(|_| ())
        })
    }

    /// Waits until node `a` sees its peer link to `b` as `up`.
    pub fn wait_peer(
        &self,
        a: u16,
        b: u16,
        up: bool,
        deadline: Deadline,
    ) -> Result<(), crate::wait::WaitError> {
        let api = self.api(a);
        let what = format!(
            "node {a} to see its peer link to node {b} {}",
            if up { "up" } else { "down" }
        );
        crate::wait::eventually(deadline, &what, || {
            let st = api.status()?;
            match st.peers.get(&b) {
                Some(&u) if u == up => Ok(()),
                other => Err(format!("peers = {:?} (node {b}: {other:?})", st.peers)),
            }
        })
    }

    /// Runs the `dvs` CLI against node `n` (`dvs --node ADDR --credentials n<N>/api/admin.toml ARGS`), from
    /// the root namespace.
    pub fn cli(&self, n: u16, args: &[&str]) -> Result<Output, String> {
        Command::new(&self.dvs)
            .arg("--node")
            .arg(&self.node(n).api_addr)
            .arg("--credentials")
            .arg(&self.node(n).credentials)
            .args(args)
            .current_dir(&self.work)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("running dvs {}: {e}", args.join(" ")))
    }

    /// Like [`Cluster::cli`], but a non-zero exit is an error with what the CLI printed; returns stdout.
    pub fn cli_ok(&self, n: u16, args: &[&str]) -> Result<String, String> {
        let out = self.cli(n, args)?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            return Err(format!(
                "`dvs {}` exited with {}: {}{}",
                args.join(" "),
                out.status,
                stdout,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(stdout)
    }

    /// Live processes (machines: QEMU or role doubles) of node `n`: those whose command line or
    /// environment names the node's data directory. Zombies do not count.
    pub fn machine_pids(&self, n: u16) -> Vec<u32> {
        processes_mentioning(&format!("{}/n{n}/", self.work.display()))
    }

    /// The daemon log of node `n` (for failure messages).
    pub fn daemon_log(&self, n: u16) -> String {
        std::fs::read_to_string(&self.node(n).log).unwrap_or_default()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let grace = self.accel.timeout(Duration::from_secs(3));
        let mut left = 0;
        for node in &mut self.nodes {
            if let Some(d) = node.daemon.take() {
                d.stop(grace);
            }
        }
        // Machines die with their daemon (PR_SET_PDEATHSIG); count strays (etcd members, which name the work
        // directory too, go first).
        self.members.clear();
        left += processes_mentioning(&format!("{}/", self.work.display())).len();
        self.namespaces.clear();
        self.bridge = None;
        if self.keep {
            let dest = Path::new("/tmp/dvs-cluster-test-logs");
            let _ = std::fs::remove_dir_all(dest);
            let copied = Command::new("cp")
                .arg("-r")
                .arg(&self.work)
                .arg(dest)
                .status()
                .is_ok_and(|s| s.success());
            if copied {
                println!("cluster: logs kept in {}", dest.display());
            }
        }
        let _ = std::fs::remove_dir_all(&self.work);
        println!("cluster: torn down (daemons, namespaces, bridge; {left} machine processes left)");
    }
}

/// Has `cmd`'s child enter network namespace `ns` (setns before exec), and only that: not `ip netns exec`,
/// which also remounts /sys in a mount namespace of its own and so hides the cgroup hierarchies the daemon
/// confines its machines in. A name that cannot be a path makes the child fail to start.
fn enter_netns(cmd: &mut Command, ns: &str) {
    let netns = std::ffi::CString::new(format!("/run/netns/{ns}")).ok();
    // SAFETY: runs in the forked child before exec; open, setns and close are async-signal-safe, and the
    // path was made before the fork.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(move || {
            let Some(netns) = &netns else {
                return Err(std::io::ErrorKind::InvalidInput.into());
            };
            let fd = libc::open(netns.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let r = libc::setns(fd, libc::CLONE_NEWNET);
            let err = std::io::Error::last_os_error();
            libc::close(fd);
            if r != 0 {
                return Err(err);
            }
            Ok(())
        });
    }
}

/// Live (not zombie) processes whose command line or environment contains `marker`.
pub fn processes_mentioning(marker: &str) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return out;
    };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == std::process::id() {
            continue;
        }
        let stat = std::fs::read_to_string(p.path().join("stat")).unwrap_or_default();
        let state = stat.rsplit(") ").next().and_then(|r| r.chars().next());
        if matches!(state, None | Some('Z') | Some('X')) {
            continue;
        }
        let hit = ["cmdline", "environ"].iter().any(|f| {
            let bytes = std::fs::read(p.path().join(f)).unwrap_or_default();
            String::from_utf8_lossy(&bytes).contains(marker)
        });
        if hit {
            out.push(pid);
        }
    }
    out
}
