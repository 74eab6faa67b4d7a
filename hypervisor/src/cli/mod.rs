//! The `dvs` command line: the node daemon (`dvs node --config`) and the client commands, which talk to a
//! node's API (`--node`, default 127.0.0.1:7070) and, for cluster-wide commands, to every node it knows.

mod cluster;
mod control;
mod deploy;
mod images;
mod pki;
mod top;
mod volumes;

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{anyhow, bail, Context};
use clap::{Parser, Subcommand};
use dvs_proxy::ClusterMap;

use crate::client::{ClientError, NodeClient};
use crate::instances::InstanceView;
use crate::instances::Publish;
use crate::volumes::VolumeRequest;

const AFTER_HELP: &str = "\
Examples:
  dvs node --config examples/local/node.toml          run a node (see hypervisor/README.md)
  dvs image push --all images/vos.elf                 upload an image to every node, verified by sha256
  dvs run vos --dc web --ep 10 --svc http,echo --ip 10.1.0.2/24 --publish 8080:80
                                                      (--publish 0.0.0.0:8080:80: on every address of the node)
  dvs ps                                              instances on every node
  dvs migrate web --to 2                              move an instance; calls to it keep working
  dvs apply examples/web-dc.toml                      deploy a DC manifest (idempotent)
  dvs run vos --dc web --ep 10,11,12 --svc disk,fs,http --arg disk_ep=11 --arg fs_ep=10 --volume data:64M
                                                      an instance with a 64 MiB volume (kept until `dvs volume rm`)
  dvs volume ls                                       volumes on every node: size, space used, attached to
  dvs run vos --dc web --name liar --process --process-arg console-liar
                                                      a test double as the machine (node's process_program)

  dvs ps -o wide                                      more columns: pid, CPU time, memory, boots, last exit
  dvs top --once                                      CPU, memory and frames/s per instance (live without --once)
  dvs dc create shop --id 7 --nodes 1,2               a DC created live (a cluster on etcd)
  dvs node join --id 4 --proxy 10.0.0.4:7001 --api 10.0.0.4:7000
                                                      register a node; then start its daemon with etcd

Exit codes: 0 ok, 1 failed, 2 usage, 3 node unreachable (or etcd), 4 not found (image, instance, DC, volume,
node), 5 conflict (endpoint or name taken, volume attached or of another size, DC or node in use, a static
cluster), 6 not allowed (no or a read-only credential).";

/// dvs: distributed containers (DCs) of unikernel VMs whose IPC spans nodes.
///
/// Start a node with `dvs node --config node.toml`; every other command talks to a node's HTTP API
/// (`--node`, or DVS_NODE) and, for cluster-wide commands, to all nodes in that node's cluster file.
#[derive(Parser, Debug)]
#[command(name = "dvs", version, propagate_version = true, after_help = AFTER_HELP)]
pub struct Cli {
    /// The node to talk to (host:port of its API; default: the `url` of the credential file, else
    /// 127.0.0.1:7070).
    #[arg(long, global = true, env = "DVS_NODE")]
    node: Option<String>,
    /// The credential file (API URL, CA, client certificate and key; from `dvs cluster credentials`, or the
    /// `admin.toml` / `read-only.toml` a node writes in <data_dir>/api/). Default: DVS_CREDENTIALS, else
    /// $XDG_CONFIG_HOME/dvs/credentials.toml (~/.config/dvs/credentials.toml).
    #[arg(long, global = true, env = "DVS_CREDENTIALS", value_name = "FILE")]
    credentials: Option<PathBuf>,
    /// Print JSON instead of tables (listing commands).
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run the node daemon (`--config node.toml`), or `dvs node status`.
    Node {
        /// Run the daemon with this node.toml.
        #[arg(long)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        cmd: Option<NodeCmd>,
    },
    /// The cluster's identity: `dvs cluster init` makes the CA that node certificates come from.
    Cluster {
        #[command(subcommand)]
        cmd: pki::ClusterCmd,
    },
    /// Images: push, list.
    Image {
        #[command(subcommand)]
        cmd: ImageCmd,
    },
    /// DCs: list.
    Dc {
        #[command(subcommand)]
        cmd: DcCmd,
    },
    /// Boot an instance of IMAGE in a DC.
    Run(Box<RunArgs>),
    /// List instances on every node of the cluster.
    Ps {
        /// Output: table, wide (more columns) or json (the same as --json).
        #[arg(long, short = 'o', default_value = "table")]
        output: PsOutput,
    },
    /// Per-instance CPU, memory and message rates across the cluster, refreshed every --interval.
    Top {
        /// Print one table (after one interval) and exit: for scripts and logs.
        #[arg(long)]
        once: bool,
        /// Seconds between samples.
        #[arg(long, default_value_t = 2.0)]
        interval: f64,
    },
    /// A one-time login link for the node's web console (valid two minutes; the session it opens has the
    /// role of these credentials).
    Console {
        /// Print only the link (for scripts).
        #[arg(long)]
        url_only: bool,
    },
    /// Which instance owns each endpoint (a cluster on etcd).
    Owners,
    /// Print an instance's console log.
    Logs {
        /// Instance name.
        name: String,
        /// Only the last N lines.
        #[arg(long)]
        tail: Option<usize>,
        /// Only the lines written since then: a duration back from now (`90s`, `5m`, `2h`, `1d`) or a Unix
        /// time in seconds.
        #[arg(long)]
        since: Option<String>,
        /// Keep printing what the console writes (until Ctrl-C).
        #[arg(long, short)]
        follow: bool,
    },
    /// Volumes (disk images kept by a node for its instances): list, remove.
    Volume {
        #[command(subcommand)]
        cmd: VolumeCmd,
    },
    /// Stop an instance (and forget it; its volumes stay, detached).
    Stop {
        /// Instance name.
        name: String,
    },
    /// Move an instance (and its endpoints) to another node; calls to it keep working. Refused for an
    /// instance with volumes: a volume cannot follow it to another node yet.
    Migrate {
        /// Instance name.
        name: String,
        /// Destination node id.
        #[arg(long)]
        to: u16,
    },
    /// GET an API path of the node and print the JSON (or one value, with --pointer): for scripts.
    Api {
        /// Path, e.g. /v1/counters.
        path: String,
        /// A JSON pointer into the answer, e.g. /ports/web/rx/frames.
        #[arg(long)]
        pointer: Option<String>,
    },
    /// Deploy a DC manifest (images, instances, nodes) across the cluster; idempotent.
    Apply {
        /// The manifest (TOML).
        file: PathBuf,
        /// Also stop instances of the DC that the manifest does not list.
        #[arg(long)]
        prune: bool,
        /// Then wait until every instance it started is running (a progress bar on a terminal); one that
        /// exits, fails, or is not running within --wait-timeout makes it fail.
        #[arg(long)]
        wait: bool,
        /// Seconds --wait waits at most.
        #[arg(long, default_value_t = 120)]
        wait_timeout: u64,
    },
}

#[derive(Subcommand, Debug)]
enum NodeCmd {
    /// The node's status: peers, instances, images.
    Status,
    /// Issue a node certificate (for mutual TLS on peer links) from the cluster CA of `dvs cluster init`.
    Cert(pki::CertArgs),
    /// Register a node as a member (a cluster on etcd) before its daemon starts.
    Join {
        /// The node's id.
        #[arg(long)]
        id: u16,
        /// Its peer-link address (host:port).
        #[arg(long)]
        proxy: std::net::SocketAddr,
        /// Its API address (host:port).
        #[arg(long)]
        api: std::net::SocketAddr,
    },
    /// Remove a node from the members; refused while it is alive or a DC lists it.
    Remove {
        /// The node's id.
        id: u16,
    },
    /// Move every instance off a node (make-before-break migrations, one at a time), e.g. before taking it
    /// down: each goes to `--to`, or to the node of its DC (other than this one) that answers and runs the
    /// fewest instances. Instances with volumes cannot move yet: they stay, and the command fails naming them.
    Drain {
        /// The node to empty.
        id: u16,
        /// Move everything to this node.
        #[arg(long)]
        to: Option<u16>,
    },
}

#[derive(Subcommand, Debug)]
enum ImageCmd {
    /// Upload an image (ELF + manifest JSON), verified by sha256.
    Push {
        /// Kernel ELF.
        file: PathBuf,
        /// Image manifest (default: FILE with .manifest.json in place of .elf).
        #[arg(long)]
        manifest: Option<PathBuf>,
        /// Push to every node of the cluster.
        #[arg(long)]
        all: bool,
    },
    /// List images on the node.
    Ls,
}

#[derive(Subcommand, Debug)]
enum VolumeCmd {
    /// List the volumes of every node: node, DC, name, size, space it takes on the node's disk (images are
    /// sparse) and the instance it is attached to (`-`: none).
    Ls,
    /// Remove a volume and its data for good. Refused while an instance holds it (`dvs stop` that
    /// instance first).
    #[command(after_help = "Example:
  dvs volume rm --dc web data          remove volume 'data' of DC web (on the one node that has it)")]
    Rm {
        /// The volume's DC (number or name).
        #[arg(long)]
        dc: String,
        /// The volume's name.
        name: String,
        /// The node holding it (default: the one node of the cluster that has a volume of that name in DC).
        #[arg(long, value_name = "NODE")]
        on: Option<u16>,
    },
}

#[derive(Subcommand, Debug)]
enum DcCmd {
    /// List DCs with their nodes and instances.
    Ls,
    /// Create a DC live (a cluster on etcd): every node's proxy routes it at once.
    Create {
        /// The DC's name.
        name: String,
        /// The DC's number (unused).
        #[arg(long)]
        id: u16,
        /// The nodes it spans (comma-separated ids).
        #[arg(long, value_delimiter = ',', required = true)]
        nodes: Vec<u16>,
    },
    /// Delete a DC (number or name); refused while any of its endpoints is owned by an instance.
    Delete {
        /// The DC.
        dc: String,
    },
}

/// How `dvs ps` prints.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum PsOutput {
    /// Name, node, DC, state, endpoints, services, published ports, image.
    Table,
    /// The table plus pid, CPU time, memory, boots and the last exit.
    Wide,
    /// Every instance view as JSON.
    Json,
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// Image: name, name:version or sha256 (prefix).
    image: String,
    /// DC number or name.
    #[arg(long)]
    dc: String,
    /// Endpoints (comma-separated).
    #[arg(long, value_delimiter = ',')]
    ep: Vec<u32>,
    /// Services (comma-separated: http, echo, ipc-bench, udp-echo).
    #[arg(long, value_delimiter = ',')]
    svc: Vec<String>,
    /// Instance name (default: IMAGE-FIRSTENDPOINT).
    #[arg(long)]
    name: Option<String>,
    /// Memory in MiB (default: the image's).
    #[arg(long)]
    mem: Option<u32>,
    /// Fabric IPv4 address with prefix.
    #[arg(long)]
    ip: Option<String>,
    /// Publish a guest TCP port on a host port: [ADDR:]HOST:GUEST (ADDR an IPv4 address of this node,
    /// default 127.0.0.1; 0.0.0.0 for every address), repeatable. The node listens and carries each client to
    /// the guest; clients beyond what the guest takes at once wait.
    #[arg(long)]
    publish: Vec<Publish>,
    /// Restart policy: never, on-failure, always.
    #[arg(long, default_value = "never")]
    restart: String,
    /// A boot setting key=value, repeatable: gw, peer, n, vcopy, notify_n, buf, local_n, stats, spin_us (checked by
    /// the node; a bad one is refused before anything boots).
    #[arg(long)]
    arg: Vec<String>,
    /// Node to run on (default: --node).
    #[arg(long)]
    on: Option<u16>,
    /// Run the node's `process_program` as the machine instead of a VM (test doubles named for their role,
    /// e.g. the `dvs-double` of qemu-tests/support; the node needs `process_program` in its node.toml).
    #[arg(long)]
    process: bool,
    /// An argument of the process program (its role and knobs, e.g. `--process-arg spoofer`), repeatable;
    /// implies --process.
    #[arg(long = "process-arg", allow_hyphen_values = true)]
    process_arg: Vec<String>,
    /// A volume NAME:SIZE (e.g. data:64M; K, M, G, T suffixes), repeatable: a disk image of the DC on this
    /// node, created on first use and kept (through restarts, `dvs stop` and daemon restarts) until `dvs volume
    /// rm`; attached as a virtio-blk drive, in order. It serves one instance at a time, does not follow a
    /// migration and is never resized (asking for another size is refused).
    #[arg(long = "volume", value_name = "NAME:SIZE")]
    volume: Vec<VolumeRequest>,
    /// Memory limit of the machine process in MiB, where the node confines instances (default: the guest's
    /// memory plus 96); past it the kernel kills the machine and `dvs ps` says so.
    #[arg(long, value_name = "MiB")]
    limit_mem: Option<u32>,
    /// CPU limit of the machine, percent of one core (default 150).
    #[arg(long, value_name = "PERCENT")]
    limit_cpu: Option<u32>,
    /// Most processes and threads of the machine (default 128).
    #[arg(long, value_name = "N")]
    limit_pids: Option<u32>,
}

impl Cli {
    /// True for `dvs node --config`: the daemon (which must not die of SIGPIPE on a closed socket).
    pub fn is_daemon(&self) -> bool {
        matches!(
            self.cmd,
            Cmd::Node {
                config: Some(_),
                ..
            }
        )
    }
}

/// Process exit codes.
pub mod exit {
    /// Something failed.
    pub const FAILED: i32 = 1;
    /// A node could not be reached.
    pub const UNREACHABLE: i32 = 3;
    /// An image, instance, DC or volume was not found.
    pub const NOT_FOUND: i32 = 4;
    /// A conflict: endpoint or name taken, volume attached or of another size, DC or node in use, a
    /// change a static cluster cannot make.
    pub const CONFLICT: i32 = 5;
    /// Not allowed: no credential, or a read-only one for a change.
    pub const NOT_ALLOWED: i32 = 6;
}

/// The exit code for an error.
pub fn exit_code(e: &anyhow::Error) -> i32 {
    for cause in e.chain() {
        if let Some(c) = cause.downcast_ref::<ClientError>() {
            return match c {
                ClientError::Unreachable { .. } => exit::UNREACHABLE,
                ClientError::Api { code, .. } => match code.as_str() {
                    "not_found" | "image" | "dc" => exit::NOT_FOUND,
                    "endpoint_taken" | "name_taken" | "volume_attached" | "volume_size"
                    | "conflict" | "static_cluster" | "quota" => exit::CONFLICT,
                    "unreachable" | "lease_lost" => exit::UNREACHABLE,
                    "unauthenticated" | "forbidden" => exit::NOT_ALLOWED,
                    _ => exit::FAILED,
                },
                ClientError::BadAnswer { .. } => exit::FAILED,
            };
        }
    }
    exit::FAILED
}

struct Ctx {
    node: NodeClient,
    json: bool,
    creds: Option<crate::auth::Credentials>,
}

impl Ctx {
    /// A client of the node whose API is at `addr`, with the CLI's credentials.
    fn client(&self, addr: &str) -> NodeClient {
        match &self.creds {
            Some(c) => NodeClient::with_credentials(addr, c),
            None => NodeClient::plain(addr),
        }
    }

    async fn cluster(&self) -> anyhow::Result<ClusterMap> {
        self.node
            .cluster()
            .await
            .with_context(|| "asking the node for its cluster map")
    }

    /// A client for every node, by id.
    async fn nodes(&self) -> anyhow::Result<BTreeMap<u16, NodeClient>> {
        Ok(self
            .cluster()
            .await?
            .nodes
            .iter()
            .map(|n| (n.id, self.client(&n.api.to_string())))
            .collect())
    }

    async fn client_of(&self, id: u16) -> anyhow::Result<NodeClient> {
        self.nodes()
            .await?
            .remove(&id)
            .ok_or_else(|| anyhow!("node {id} is not in the cluster"))
    }

    /// The node holding instance `name`.
    async fn find(&self, name: &str) -> anyhow::Result<(NodeClient, InstanceView)> {
        let mut down = vec![];
        for (id, c) in self.nodes().await? {
            match c.instance(name).await {
                Ok(v) => return Ok((c, v)),
                Err(ClientError::Unreachable { .. }) => down.push(id),
                Err(_) => {}
            }
        }
        let note = if down.is_empty() {
            String::new()
        } else {
            format!(" (nodes {down:?} did not answer)")
        };
        Err(anyhow!(ClientError::Api {
            url: self.node.url().into(),
            status: 404,
            code: "not_found".into(),
            body_error: format!("no instance '{name}' on any node{note}"),
        }))
    }
}

fn print_json<T: serde::Serialize>(v: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// Runs the CLI; returns the process exit code.
pub async fn main(cli: Cli) -> anyhow::Result<()> {
    // Only the client commands need credentials (the daemon and the PKI commands make them).
    let needs_api = !matches!(
        cli.cmd,
        Cmd::Cluster { .. }
            | Cmd::Node {
                config: Some(_),
                ..
            }
            | Cmd::Node {
                cmd: Some(NodeCmd::Cert(_)),
                ..
            }
    );
    let creds = if needs_api {
        crate::auth::Credentials::discover(cli.credentials.as_deref())
            .context("reading the credential file")?
            .map(|(_, c)| c)
    } else {
        None
    };
    if needs_api && creds.is_none() {
        eprintln!(
            "dvs: no credential file (--credentials FILE, DVS_CREDENTIALS, or {}): nodes serve their API over \
             HTTPS with client certificates and will refuse this client (a node writes admin.toml in \
             <data_dir>/api/)",
            crate::auth::default_path()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "~/.config/dvs/credentials.toml".into())
        );
    }
    let addr = cli
        .node
        .clone()
        .or_else(|| creds.as_ref().map(|c| c.url.clone()))
        .unwrap_or_else(|| "127.0.0.1:7070".into());
    let mut ctx = Ctx {
        node: NodeClient::plain(&addr),
        json: cli.json,
        creds,
    };
    ctx.node = ctx.client(&addr);
    match cli.cmd {
        Cmd::Node {
            config: Some(path), ..
        } => crate::daemon::run(&path).await,
        Cmd::Node {
            cmd: Some(NodeCmd::Status),
            ..
        } => cluster::node_status(&ctx).await,
        Cmd::Node {
            cmd: Some(NodeCmd::Cert(args)),
            ..
        } => pki::node_cert(&args),
        Cmd::Node {
            cmd: Some(NodeCmd::Join { id, proxy, api }),
            ..
        } => control::node_join(&ctx, dvs_proxy::NodeInfo { id, proxy, api }).await,
        Cmd::Node {
            cmd: Some(NodeCmd::Remove { id }),
            ..
        } => control::node_remove(&ctx, id).await,
        Cmd::Node {
            cmd: Some(NodeCmd::Drain { id, to }),
            ..
        } => control::node_drain(&ctx, id, to).await,
        Cmd::Cluster { cmd } => pki::cluster(cmd),
        Cmd::Node { .. } => {
            bail!("use `dvs node --config node.toml` to run a node, or `dvs node status`")
        }
        Cmd::Image {
            cmd:
                ImageCmd::Push {
                    file,
                    manifest,
                    all,
                },
        } => images::push(&ctx, &file, manifest.as_deref(), all).await,
        Cmd::Image { cmd: ImageCmd::Ls } => images::image_ls(&ctx).await,
        Cmd::Dc { cmd: DcCmd::Ls } => cluster::dc_ls(&ctx).await,
        Cmd::Dc {
            cmd: DcCmd::Create { name, id, nodes },
        } => control::dc_create(&ctx, &name, id, nodes).await,
        Cmd::Dc {
            cmd: DcCmd::Delete { dc },
        } => control::dc_delete(&ctx, &dc).await,
        Cmd::Owners => control::owners(&ctx).await,
        Cmd::Console { url_only } => control::console(&ctx, url_only).await,
        Cmd::Top { once, interval } => {
            if !(0.05..=3600.0).contains(&interval) {
                bail!("--interval {interval}: give seconds between 0.05 and 3600");
            }
            top::top(&ctx, once, std::time::Duration::from_secs_f64(interval)).await
        }
        Cmd::Run(args) => deploy::run(&ctx, *args).await,
        Cmd::Ps { output } => {
            let output = if ctx.json { PsOutput::Json } else { output };
            cluster::ps(&ctx, output).await
        }
        Cmd::Volume { cmd: VolumeCmd::Ls } => volumes::ls(&ctx).await,
        Cmd::Volume {
            cmd: VolumeCmd::Rm { dc, name, on },
        } => volumes::rm(&ctx, &dc, &name, on).await,
        Cmd::Logs {
            name,
            tail,
            since,
            follow,
        } => {
            let since_ms = since.as_deref().map(since_to_ms).transpose()?;
            let (c, _) = ctx.find(&name).await?;
            let (log, mut cursor) = c.log_read(&name, tail, since_ms, None).await?;
            print!("{log}");
            if follow {
                // Print what came after the cursor of the last answer (the node follows its log across a
                // rotation).
                loop {
                    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
                    let (new, next) = c.log_read(&name, None, None, Some(&cursor)).await?;
                    if !new.is_empty() {
                        print!("{new}");
                        std::io::Write::flush(&mut std::io::stdout())?;
                    }
                    cursor = next;
                }
            }
            Ok(())
        }
        Cmd::Stop { name } => {
            let (c, v) = ctx.find(&name).await?;
            c.stop(&name).await?;
            println!("stopped {name} on node {}", v.node);
            Ok(())
        }
        Cmd::Migrate { name, to } => {
            let (c, v) = ctx.find(&name).await?;
            let r = c
                .migrate(&name, to)
                .await
                .with_context(|| format!("migrating {name} from node {} to node {to}", v.node))?;
            if ctx.json {
                return print_json(&r);
            }
            println!("migrated {name}: node {} -> node {} in {} ms ({} calls in flight refused with Migrated)", r.from, r.to, r.took_ms, r.refused_in_flight);
            Ok(())
        }
        Cmd::Apply {
            file,
            prune,
            wait,
            wait_timeout,
        } => {
            let wait = wait.then(|| std::time::Duration::from_secs(wait_timeout));
            deploy::apply(&ctx, &file, prune, wait).await
        }
        Cmd::Api { path, pointer } => {
            let v = ctx.node.get_json(&path).await?;
            let v = match pointer {
                Some(p) => v
                    .pointer(&p)
                    .cloned()
                    .ok_or_else(|| anyhow!("{path}: nothing at {p}"))?,
                None => v,
            };
            match v {
                serde_json::Value::String(s) => println!("{s}"),
                v => println!("{}", serde_json::to_string_pretty(&v)?),
            }
            Ok(())
        }
    }
}

/// `--since` of `dvs logs`: `90s`, `5m`, `2h`, `1d` back from now, or a Unix time in seconds → Unix ms.
fn since_to_ms(s: &str) -> anyhow::Result<u64> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let bad = || {
        anyhow!("--since {s}: give a duration back from now (90s, 5m, 2h, 1d) or a Unix time in seconds")
    };
    if let Ok(unix) = s.parse::<u64>() {
        return unix.checked_mul(1000).ok_or_else(bad);
    }
    let (n, unit) = s.split_at(s.len().saturating_sub(1));
    let n: u64 = n.parse().map_err(|_| bad())?;
    let secs = match unit {
        "s" => n,
        "m" => n.checked_mul(60).ok_or_else(bad)?,
        "h" => n.checked_mul(3600).ok_or_else(bad)?,
        "d" => n.checked_mul(86400).ok_or_else(bad)?,
        _ => return Err(bad()),
    };
    Ok(now.saturating_sub(secs.saturating_mul(1000)))
}

#[cfg(test)]
mod since_tests {
    use super::since_to_ms;

    #[test]
    fn durations_and_unix_times() {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let five_min = since_to_ms("5m").unwrap();
        assert!(now - five_min >= 300_000 && now - five_min < 310_000);
        assert_eq!(since_to_ms("1700000000").unwrap(), 1_700_000_000_000);
        for bad in ["", "m", "5x", "-5m", "99999999999999999999d"] {
            assert!(since_to_ms(bad).is_err(), "{bad}");
        }
    }
}
