//! The node's configuration file (`node.toml`) and the cluster file it points to.

use std::path::{Path, PathBuf};

use dvs_proxy::tls::{PeerTls, TlsFiles};
use dvs_proxy::{ClusterMap, ProxyConfig};
use serde::{Deserialize, Serialize};

use crate::volumes::ByteSize;

/// Which VM backend boots instances.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// QEMU (`-M microvm`), with KVM when `/dev/kvm` works, TCG otherwise.
    #[default]
    Qemu,
    /// A host program as the machine (`process_program`): for test doubles named for their role (a spoofing,
    /// flooding or garbage-sending peer), never for "a VOS". It gets the VM spec as JSON in `DVS_VM_SPEC`.
    Process,
}

/// Which QEMU socket netdev the fabric NIC uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetdevKind {
    /// `-netdev dgram`.
    Dgram,
    /// `-netdev stream`: measured a little faster (vcopy 30-35 vs 21-31 MB/s VM to VM, same latency), the
    /// default.
    #[default]
    Stream,
}

/// How the proxy serves the fabric NIC of the node's QEMU instances (`vm_port` in node.toml; `DVS_VM_PORT`
/// overrides it). Process doubles and publish NICs always get stream sockets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
pub enum VmPortKind {
    /// A socket netdev (`netdev` says which): the default, and the fallback.
    #[default]
    #[serde(rename = "stream")]
    Stream,
    /// `-netdev vhost-user`: the proxy is the virtio-net device, reading and writing the guest's rings in
    /// its shared memory.
    #[serde(rename = "vhost-user")]
    VhostUser,
}

impl VmPortKind {
    /// `DVS_VM_PORT=stream|vhost-user` if set, else `configured`.
    pub fn resolve(configured: VmPortKind) -> VmPortKind {
        match std::env::var("DVS_VM_PORT").as_deref() {
            Ok("vhost-user") => VmPortKind::VhostUser,
            Ok("stream") => VmPortKind::Stream,
            _ => configured,
        }
    }
}

/// KVM or TCG.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// KVM when `/dev/kvm` opens, TCG otherwise.
    #[default]
    Auto,
    /// Always KVM.
    Kvm,
    /// Always TCG.
    Tcg,
}

/// `node.toml`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// This node's id in the cluster file.
    pub node: u16,
    /// The cluster file (relative paths are relative to node.toml).
    pub cluster: PathBuf,
    /// Images, instance records and console logs live here (relative to node.toml).
    pub data_dir: PathBuf,
    /// VM backend.
    #[serde(default)]
    pub backend: BackendKind,
    /// Fabric netdev flavour.
    #[serde(default)]
    pub netdev: NetdevKind,
    /// How the proxy serves QEMU instances' fabric NICs: `"stream"` (a socket netdev, the default) or
    /// `"vhost-user"`; the environment's `DVS_VM_PORT` overrides it.
    #[serde(default)]
    pub vm_port: VmPortKind,
    /// KVM or TCG.
    #[serde(default)]
    pub accel: Accel,
    /// QEMU binary.
    #[serde(default = "default_qemu")]
    pub qemu: PathBuf,
    /// The program the `process` backend runs as the machine (relative to node.toml); instances with
    /// `backend = "process"` need it.
    #[serde(default)]
    pub process_program: Option<PathBuf>,
    /// Where the API listens (e.g. `0.0.0.0:7070`, or this node's address). Default: loopback
    /// (`127.0.0.1`) on the port of this node's `api` in the cluster file, so that only this host reaches
    /// it; a node that other nodes or hosts must reach (migration, a cluster-wide `dvs ps`) says where.
    pub api_listen: Option<std::net::SocketAddr>,
    /// The CA the node issues its API server certificate and credential files from:
    /// `api_ca = { cert = "pki/ca.pem", key = "pki/ca.key" }` (relative to node.toml; e.g. the CA of `dvs
    /// cluster init`). Nodes given the same CA accept each other's credentials (needed to migrate between
    /// them). Without it the node makes its own CA in `<data_dir>/api/` on first start. See `crate::auth`.
    #[serde(default)]
    pub api_ca: Option<crate::auth::CaFiles>,
    /// API certificates issued elsewhere, so that the node holds no CA key:
    /// `api_tls = { ca = "pki/ca.pem", cert = "pki/n1-api.pem", key = "pki/n1-api.key", credentials =
    /// "pki/n1.credentials.toml" }` (from `dvs cluster api-cert` and `dvs cluster credentials`; `credentials`
    /// is what this node presents to other nodes, needed to migrate out). Excludes `api_ca`.
    #[serde(default)]
    pub api_tls: Option<crate::auth::ApiTlsFiles>,
    /// The largest image a push may upload (`"64M"`, the default; K, M, G, T suffixes).
    #[serde(default = "default_max_image")]
    pub max_image: ByteSize,
    /// The largest volume an instance may ask for (`"16G"`, the default; K, M, G, T suffixes).
    #[serde(default = "default_max_volume")]
    pub max_volume: ByteSize,
    /// Mutual TLS on peer links: `tls = { ca = "pki/ca.pem", cert = "pki/n1.pem", key = "pki/n1.key" }`
    /// (relative to node.toml; from `dvs cluster init` and `dvs node cert`). Without it peer links are plain TCP,
    /// which only a one-node cluster should use.
    #[serde(default)]
    pub tls: Option<TlsFiles>,
    /// Confinement of QEMU instances (a cgroup with limits each, an unprivileged uid of their own, QEMU's
    /// seccomp sandbox and an empty chroot; see `dvs_instance::confine`): `"auto"` (the default: on where the
    /// daemon runs as root and the cgroup controllers are there, else off with a warning), `"on"` (refuse
    /// to start without it), `"off"`.
    #[serde(default)]
    pub confine: ConfineMode,
    /// The first uid (and gid) of confined instances: instance slot `s` of node `n` runs as
    /// `confine_uid_base + 4096 n + s` (ids of no account; default 800000).
    #[serde(default = "default_uid_base")]
    pub confine_uid_base: u32,
    /// The control plane on etcd: `etcd = { endpoints = ["http://10.0.0.1:2379"] }` (see
    /// [`crate::control`]). Without it the cluster file is the whole directory, read at start.
    #[serde(default)]
    pub etcd: Option<crate::control::EtcdSettings>,
}

/// Whether QEMU instances are confined (`confine` in node.toml).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConfineMode {
    /// Where it can be.
    #[default]
    Auto,
    /// Always; the daemon does not start if it cannot be.
    On,
    /// Never.
    Off,
}

/// Instance slots per node in the uid range of confined instances.
pub const UIDS_PER_NODE: u32 = 4096;

fn default_uid_base() -> u32 {
    800_000
}

impl NodeConfig {
    /// Checks the rules between fields (the process backend needs its program).
    pub fn check(&self) -> anyhow::Result<()> {
        if self.backend == BackendKind::Process && self.process_program.is_none() {
            anyhow::bail!("backend = \"process\" needs process_program = \"<path>\"");
        }
        if self.api_ca.is_some() && self.api_tls.is_some() {
            anyhow::bail!(
                "api_ca and api_tls: give one (api_ca: the node issues its API certificates; api_tls: they \
                 were issued elsewhere)"
            );
        }
        if self.confine_uid_base == 0
            || u64::from(self.confine_uid_base) + u64::from(UIDS_PER_NODE) * 65_536
                > u64::from(u32::MAX)
        {
            anyhow::bail!(
                "confine_uid_base = {}: from 1 to {} (4096 uids for each of 65536 nodes above it)",
                self.confine_uid_base,
                u32::MAX - UIDS_PER_NODE * 65_536
            );
        }
        if self.max_volume.0 < crate::volumes::MIN_VOLUME {
            anyhow::bail!(
                "max_volume = \"{}\": at least {} (the smallest volume)",
                self.max_volume,
                ByteSize(crate::volumes::MIN_VOLUME)
            );
        }
        Ok(())
    }

    /// The accelerator QEMU machines run with (`auto`: KVM when `/dev/kvm` opens, else TCG; `DVS_ACCEL`
    /// overrides it).
    pub fn accel(&self) -> dvs_instance::Accel {
        match self.accel {
            Accel::Auto => dvs_instance::Accel::detect(),
            Accel::Kvm => dvs_instance::Accel::Kvm,
            Accel::Tcg => dvs_instance::Accel::Tcg,
        }
    }
}

fn default_max_image() -> ByteSize {
    ByteSize(64 << 20)
}

fn default_max_volume() -> ByteSize {
    ByteSize(crate::volumes::DEFAULT_MAX_VOLUME)
}

fn default_qemu() -> PathBuf {
    PathBuf::from("qemu-system-x86_64")
}

/// Reads `node.toml` and its cluster file; relative paths become relative to node.toml's folder.
pub fn load(path: &Path) -> anyhow::Result<(NodeConfig, ClusterMap)> {
    use anyhow::Context;
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut cfg: NodeConfig =
        toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let base = path.parent().unwrap_or(Path::new("."));
    cfg.cluster = base.join(&cfg.cluster);
    cfg.data_dir = base.join(&cfg.data_dir);
    cfg.process_program = cfg.process_program.map(|p| base.join(p));
    cfg.tls = cfg.tls.map(|t| t.relative_to(base));
    cfg.api_ca = cfg.api_ca.map(|t| t.relative_to(base));
    cfg.api_tls = cfg.api_tls.map(|t| t.relative_to(base));
    cfg.check()?;
    let cluster = load_cluster(&cfg.cluster)?;
    if let Some(etcd) = &cfg.etcd {
        // A node that joins through etcd need not be in the file, which only seeds a new cluster.
        etcd.me(cfg.node, &cluster)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    } else if cluster.node(m3ipc_core::NodeId(cfg.node)).is_none() {
        anyhow::bail!(
            "node {} is not in the cluster file {}",
            cfg.node,
            cfg.cluster.display()
        );
    }
    Ok((cfg, cluster))
}

/// Reads and checks a cluster file.
pub fn load_cluster(path: &Path) -> anyhow::Result<ClusterMap> {
    use anyhow::Context;
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading cluster file {}", path.display()))?;
    let cluster: ClusterMap = toml::from_str(&text)
        .with_context(|| format!("parsing cluster file {}", path.display()))?;
    cluster
        .validate()
        .with_context(|| format!("cluster file {}", path.display()))?;
    Ok(cluster)
}

/// The proxy's configuration for this node: its TLS credentials loaded and checked (they must chain to the
/// cluster CA and name this node), or, without `tls`, plain TCP peer links and a warning when the cluster has
/// other nodes.
pub fn proxy_config(cfg: &NodeConfig, cluster: ClusterMap) -> anyhow::Result<ProxyConfig> {
    use anyhow::Context;
    let node = m3ipc_core::NodeId(cfg.node);
    let others = cluster.nodes.iter().filter(|n| n.id != cfg.node).count();
    let mut pcfg = ProxyConfig::new(node, cluster)?;
    match &cfg.tls {
        Some(files) => {
            let tls = PeerTls::load(files, node)
                .with_context(|| format!("peer-link TLS of node {}", cfg.node))?;
            pcfg.tls = Some(std::sync::Arc::new(tls));
        }
        None if others > 0 => tracing::warn!(
            "node {}: no `tls` in node.toml: peer links to the {others} other node(s) are plain TCP, and \
             anyone who reaches the proxy port can claim to be a node (see `dvs cluster init`)",
            cfg.node
        ),
        None => {}
    }
    Ok(pcfg)
}
