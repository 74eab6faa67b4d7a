//! The `dvs` command line: the node daemon (`dvs node --config`) and the client commands, which talk to a
//! node's API (`--node`, default 127.0.0.1:7070) and, for cluster-wide commands, to every node it knows.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::{anyhow, bail, Context};
use clap::{Parser, Subcommand};
use dvs_proxy::ClusterMap;
use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};

use crate::backend::Publish;
use crate::client::{ClientError, NodeClient};
use crate::config::BackendKind;
use crate::instances::{InstanceSpec, InstanceView, RestartPolicy, RunRequest, State};
use crate::manifest::{load_image, DcManifest, LoadedImage};

/// dvs: distributed containers (DCs) of unikernel VMs whose IPC spans nodes.
///
/// Start a node with `dvs node --config node.toml`; every other command talks to a node's HTTP API
/// (`--node`, or DVS_NODE) and, for cluster-wide commands, to all nodes in that node's cluster file.
#[derive(Parser, Debug)]
#[command(name = "dvs", version, propagate_version = true)]
pub struct Cli {
    /// The node to talk to (host:port of its API).
    #[arg(
        long,
        global = true,
        env = "DVS_NODE",
        default_value = "127.0.0.1:7070"
    )]
    node: String,
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
    Run(RunArgs),
    /// List instances on every node of the cluster.
    Ps,
    /// Print an instance's console log.
    Logs {
        /// Instance name.
        name: String,
        /// Only the last N lines.
        #[arg(long)]
        tail: Option<usize>,
    },
    /// Stop an instance (and forget it).
    Stop {
        /// Instance name.
        name: String,
    },
    /// Move an instance (and its endpoints) to another node; calls to it keep working.
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
    },
}

#[derive(Subcommand, Debug)]
enum NodeCmd {
    /// The node's status: peers, instances, images.
    Status,
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
enum DcCmd {
    /// List DCs with their nodes and instances.
    Ls,
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
    /// Services (comma-separated: http, echo, ipc-bench).
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
    /// Forward a host port to a guest port (HOST:GUEST), repeatable.
    #[arg(long)]
    publish: Vec<Publish>,
    /// Restart policy: never, on-failure, always.
    #[arg(long, default_value = "never")]
    restart: String,
    /// Extra kernel command-line word (key=value), repeatable.
    #[arg(long)]
    arg: Vec<String>,
    /// Node to run on (default: --node).
    #[arg(long)]
    on: Option<u16>,
    /// Run as a host-side fake instance instead of a VM.
    #[arg(long)]
    fake: bool,
}

/// Process exit codes.
pub mod exit {
    /// Something failed.
    pub const FAILED: i32 = 1;
    /// A node could not be reached.
    pub const UNREACHABLE: i32 = 3;
    /// An image, instance or DC was not found.
    pub const NOT_FOUND: i32 = 4;
    /// A conflict: endpoint or name taken.
    pub const CONFLICT: i32 = 5;
}

/// The exit code for an error.
pub fn exit_code(e: &anyhow::Error) -> i32 {
    for cause in e.chain() {
        if let Some(c) = cause.downcast_ref::<ClientError>() {
            return match c {
                ClientError::Unreachable { .. } => exit::UNREACHABLE,
                ClientError::Api { code, .. } => match code.as_str() {
                    "not_found" | "image" | "dc" => exit::NOT_FOUND,
                    "endpoint_taken" | "name_taken" => exit::CONFLICT,
                    "unreachable" => exit::UNREACHABLE,
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
}

impl Ctx {
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
            .map(|n| (n.id, NodeClient::new(&n.api.to_string())))
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
    let ctx = Ctx {
        node: NodeClient::new(&cli.node),
        json: cli.json,
    };
    match cli.cmd {
        Cmd::Node {
            config: Some(path), ..
        } => crate::daemon::run(&path).await,
        Cmd::Node {
            cmd: Some(NodeCmd::Status),
            ..
        } => node_status(&ctx).await,
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
        } => push(&ctx, &file, manifest.as_deref(), all).await,
        Cmd::Image { cmd: ImageCmd::Ls } => image_ls(&ctx).await,
        Cmd::Dc { cmd: DcCmd::Ls } => dc_ls(&ctx).await,
        Cmd::Run(args) => run(&ctx, args).await,
        Cmd::Ps => ps(&ctx).await,
        Cmd::Logs { name, tail } => {
            let (c, _) = ctx.find(&name).await?;
            print!("{}", c.logs(&name, tail).await?);
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
        Cmd::Apply { file, prune } => apply(&ctx, &file, prune).await,
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

async fn node_status(ctx: &Ctx) -> anyhow::Result<()> {
    let s = ctx.node.status().await?;
    if ctx.json {
        let counters = ctx.node.counters().await?;
        return print_json(&serde_json::json!({ "status": s, "counters": counters }));
    }
    println!(
        "node {} (dvs {}), up {} s, backend {}",
        s.node, s.version, s.uptime_s, s.backend
    );
    for (id, up) in &s.peers {
        println!("  peer node {id}: {}", if *up { "up" } else { "DOWN" });
    }
    println!("  {} instances, {} images", s.instances, s.images);
    let c = ctx.node.counters().await?;
    for (name, p) in &c.ports {
        println!(
            "  port {name}: rx {} frames, tx {} frames, drops: {}",
            p.rx.frames, p.tx.frames, p.drops
        );
    }
    for (id, p) in &c.peers {
        println!(
            "  link to node {id}: tx {} frames in {} writes, rx {} frames, drops: {}",
            p.tx.frames, p.writes, p.rx.frames, p.drops
        );
    }
    Ok(())
}

fn bar(len: u64, msg: String) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len);
    let style =
        ProgressStyle::with_template("{msg:>24} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
    pb.set_style(style);
    pb.set_message(msg);
    pb
}

fn hash_with_progress(bytes: &[u8]) -> String {
    let pb = bar(bytes.len() as u64, "sha256".into());
    let mut h = Sha256::new();
    for chunk in bytes.chunks(1 << 20) {
        h.update(chunk);
        pb.inc(chunk.len() as u64);
    }
    pb.finish_and_clear();
    hex::encode(h.finalize())
}

async fn upload(c: &NodeClient, img: &LoadedImage, label: String) -> anyhow::Result<()> {
    let pb = bar(img.bytes.len() as u64, label);
    let chunks: Vec<bytes::Bytes> = img
        .bytes
        .chunks(64 << 10)
        .map(bytes::Bytes::copy_from_slice)
        .collect();
    let pb2 = pb.clone();
    let stream = futures_util::stream::iter(chunks.into_iter().map(move |c| {
        pb2.inc(c.len() as u64);
        Ok::<_, std::io::Error>(c)
    }));
    let r = c
        .push_image(&img.manifest, reqwest::Body::wrap_stream(stream))
        .await;
    pb.finish_and_clear();
    r.with_context(|| format!("pushing {} to {}", img.manifest.name, c.url()))?;
    Ok(())
}

async fn push(
    ctx: &Ctx,
    file: &std::path::Path,
    manifest: Option<&std::path::Path>,
    all: bool,
) -> anyhow::Result<()> {
    let img = load_image(file, manifest)?;
    let sha = hash_with_progress(&img.bytes);
    let targets: Vec<(String, NodeClient)> = if all {
        ctx.nodes()
            .await?
            .into_iter()
            .map(|(id, c)| (format!("node {id}"), c))
            .collect()
    } else {
        vec![(ctx.node.url().to_string(), ctx.node.clone())]
    };
    for (label, c) in targets {
        upload(&c, &img, format!("{} -> {label}", img.manifest.name)).await?;
        let check = c.image(&sha).await?;
        if !check.verified {
            bail!(
                "{label} stored {} but it does not re-hash to {sha}",
                img.manifest.name
            );
        }
        println!(
            "pushed {} {} sha256:{sha} to {label} (verified)",
            img.manifest.name, img.manifest.version
        );
    }
    Ok(())
}

async fn image_ls(ctx: &Ctx) -> anyhow::Result<()> {
    let images = ctx.node.images().await?;
    if ctx.json {
        return print_json(&images);
    }
    println!(
        "{:<12} {:<10} {:<14} {:>10} {:>6}  SERVICES",
        "NAME", "VERSION", "SHA256", "SIZE", "MEM"
    );
    for i in images {
        let m = &i.manifest;
        println!(
            "{:<12} {:<10} {:<14} {:>10} {:>5}M  {}",
            m.name,
            m.version,
            &m.sha256[..12],
            i.size,
            m.memory,
            m.services.join(",")
        );
    }
    Ok(())
}

/// Instances of every node; nodes that do not answer are listed apart.
async fn all_instances(ctx: &Ctx) -> anyhow::Result<(Vec<InstanceView>, Vec<u16>)> {
    let mut all = vec![];
    let mut down = vec![];
    for (id, c) in ctx.nodes().await? {
        match c.instances().await {
            Ok(v) => all.extend(v),
            Err(_) => down.push(id),
        }
    }
    Ok((all, down))
}

async fn dc_ls(ctx: &Ctx) -> anyhow::Result<()> {
    let cluster = ctx.cluster().await?;
    let (instances, down) = all_instances(ctx).await?;
    if ctx.json {
        let dcs: Vec<_> = cluster
            .dcs
            .iter()
            .map(|d| {
                let inst: Vec<_> = instances.iter().filter(|i| i.spec.dc == d.id).map(|i| &i.spec.name).collect();
                serde_json::json!({ "id": d.id, "name": d.name, "nodes": d.nodes, "instances": inst })
            })
            .collect();
        return print_json(&dcs);
    }
    println!(
        "{:<4} {:<12} {:<12} {:>9}  ENDPOINTS",
        "ID", "NAME", "NODES", "INSTANCES"
    );
    for d in &cluster.dcs {
        let mine: Vec<_> = instances.iter().filter(|i| i.spec.dc == d.id).collect();
        let mut eps: Vec<u32> = mine
            .iter()
            .flat_map(|i| i.spec.endpoints.iter().copied())
            .collect();
        eps.sort_unstable();
        let nodes = d
            .nodes
            .iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(",");
        println!(
            "{:<4} {:<12} {:<12} {:>9}  {:?}",
            d.id,
            d.name,
            nodes,
            mine.len(),
            eps
        );
    }
    if !down.is_empty() {
        eprintln!("(nodes {down:?} did not answer)");
    }
    Ok(())
}

async fn ps(ctx: &Ctx) -> anyhow::Result<()> {
    let (instances, down) = all_instances(ctx).await?;
    if ctx.json {
        return print_json(
            &serde_json::json!({ "instances": instances, "unreachable_nodes": down }),
        );
    }
    println!(
        "{:<16} {:>4} {:>4} {:<8} {:<14} {:<16} {:<12} IMAGE",
        "NAME", "NODE", "DC", "STATE", "ENDPOINTS", "SERVICES", "PUBLISH"
    );
    for i in &instances {
        let eps = i
            .spec
            .endpoints
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let publ = i
            .spec
            .publish
            .iter()
            .map(|p| format!("{}:{}", p.host, p.guest))
            .collect::<Vec<_>>()
            .join(",");
        let state = format!("{:?}", i.state).to_lowercase();
        println!(
            "{:<16} {:>4} {:>4} {:<8} {:<14} {:<16} {:<12} {}",
            i.spec.name,
            i.node,
            i.spec.dc,
            state,
            eps,
            i.spec.services.join(","),
            publ,
            &i.image_sha256[..12]
        );
    }
    if !down.is_empty() {
        eprintln!("(nodes {down:?} did not answer)");
    }
    Ok(())
}

async fn run(ctx: &Ctx, a: RunArgs) -> anyhow::Result<()> {
    let cluster = ctx.cluster().await?;
    let dc = cluster.dc_by_name(&a.dc).ok_or_else(|| {
        anyhow!(ClientError::Api {
            url: ctx.node.url().into(),
            status: 404,
            code: "dc".into(),
            body_error: format!("DC '{}' is not in the cluster (see `dvs dc ls`)", a.dc),
        })
    })?;
    let restart: RestartPolicy =
        serde_json::from_value(serde_json::Value::String(a.restart.clone()))
            .map_err(|_| anyhow!("--restart {}: use never, on-failure or always", a.restart))?;
    let name = a.name.unwrap_or_else(|| {
        format!(
            "{}-{}",
            a.image.split(':').next().unwrap_or("vm"),
            a.ep.first().copied().unwrap_or(0)
        )
    });
    let spec = InstanceSpec {
        name,
        image: a.image,
        dc: dc.id,
        endpoints: a.ep,
        services: a.svc,
        memory: a.mem,
        ip: a.ip,
        args: a.arg,
        publish: a.publish,
        restart,
        backend: a.fake.then_some(BackendKind::Fake),
    };
    let c = match a.on {
        Some(id) => ctx.client_of(id).await?,
        None => ctx.node.clone(),
    };
    let v = c
        .run(&RunRequest {
            spec,
            takeover_gen: None,
        })
        .await?;
    if ctx.json {
        return print_json(&v);
    }
    println!(
        "started {} on node {} in DC {} (endpoints {:?})",
        v.spec.name, v.node, v.spec.dc, v.spec.endpoints
    );
    Ok(())
}

async fn apply(ctx: &Ctx, file: &std::path::Path, prune: bool) -> anyhow::Result<()> {
    let m = DcManifest::load(file)?;
    let cluster = ctx.cluster().await?;
    let dc = match (&m.dc.id, &m.dc.name) {
        (Some(id), _) => cluster.dc(m3ipc_core::DcId(*id)),
        (None, Some(name)) => cluster.dc_by_name(name),
        (None, None) => bail!("{}: [dc] needs id or name", file.display()),
    }
    .ok_or_else(|| anyhow!("{}: DC {:?} is not in the cluster", file.display(), m.dc))?
    .clone();
    let nodes = ctx.nodes().await?;
    let mut images = BTreeMap::new();
    for e in &m.images {
        images.insert(e.name.clone(), load_image(&e.path, e.manifest.as_deref())?);
    }
    let shas: BTreeMap<String, String> = images
        .iter()
        .map(|(k, v)| (k.clone(), v.manifest.sha256.clone()))
        .collect();
    let (existing, down) = all_instances(ctx).await?;
    let mut changed = 0;
    for entry in &m.instances {
        let spec = m.spec(entry, dc.id, &shas)?;
        let c = nodes.get(&entry.node).ok_or_else(|| {
            anyhow!(
                "instance '{}': node {} is not in the cluster",
                entry.name,
                entry.node
            )
        })?;
        if down.contains(&entry.node) {
            bail!(
                "instance '{}': node {} does not answer",
                entry.name,
                entry.node
            );
        }
        let found = existing
            .iter()
            .find(|i| i.spec.name == spec.name && i.spec.dc == dc.id);
        if let Some(cur) = found {
            if cur.spec == spec && cur.state == State::Running {
                println!("unchanged {} (node {})", spec.name, cur.node);
                continue;
            }
            if let Some(old) = nodes.get(&cur.node) {
                old.stop(&spec.name)
                    .await
                    .with_context(|| format!("replacing {}", spec.name))?;
            }
        }
        if let Some(img) = images.get(&entry.image) {
            if c.image(&img.manifest.sha256).await.is_err() {
                upload(
                    c,
                    img,
                    format!("{} -> node {}", img.manifest.name, entry.node),
                )
                .await?;
                println!("pushed image {} to node {}", img.manifest.name, entry.node);
            }
        }
        let v = c
            .run(&RunRequest {
                spec,
                takeover_gen: None,
            })
            .await
            .with_context(|| format!("starting {} on node {}", entry.name, entry.node))?;
        println!(
            "{} {} (node {}, endpoints {:?})",
            if found.is_some() {
                "replaced"
            } else {
                "created"
            },
            v.spec.name,
            v.node,
            v.spec.endpoints
        );
        changed += 1;
    }
    let listed: Vec<&str> = m.instances.iter().map(|i| i.name.as_str()).collect();
    for extra in existing
        .iter()
        .filter(|i| i.spec.dc == dc.id && !listed.contains(&i.spec.name.as_str()))
    {
        if prune {
            if let Some(c) = nodes.get(&extra.node) {
                c.stop(&extra.spec.name).await?;
                println!("pruned {} (node {})", extra.spec.name, extra.node);
                changed += 1;
            }
        } else {
            println!(
                "kept {} (node {}): not in the manifest (use --prune to stop it)",
                extra.spec.name, extra.node
            );
        }
    }
    println!("DC {} ({}): {} change(s)", dc.id, dc.name, changed);
    Ok(())
}
