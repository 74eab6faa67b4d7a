//! `dvs-proxy --config proxy.toml`: a proxy on its own, without the node daemon (which embeds the same library).
//! The config names this node, the cluster file and the VM ports to open; see proxy/README.md.

use std::path::PathBuf;

use anyhow::{bail, Context};
use dvs_proxy::port::PortKind;
use dvs_proxy::{Announce, ClusterMap, PortSpec, Proxy, ProxyConfig};
use m3ipc_core::{DcId, Endpoint, NodeId};
use serde::Deserialize;

#[derive(Deserialize)]
struct Config {
    node: u16,
    cluster: PathBuf,
    /// Seconds a learned MAC address that sends nothing stays known (default 300).
    mac_ageing_s: Option<u64>,
    /// Learned MAC addresses kept per DC (default 4096).
    max_macs_per_dc: Option<usize>,
    #[serde(default, rename = "port")]
    ports: Vec<PortConfig>,
}

#[derive(Deserialize)]
struct PortConfig {
    name: String,
    dc: u16,
    endpoints: Vec<u32>,
    #[serde(flatten)]
    kind: PortKind,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let args: Vec<String> = std::env::args().collect();
    let path = match args.as_slice() {
        [_, flag, path] if flag == "--config" => PathBuf::from(path),
        _ => bail!("usage: dvs-proxy --config proxy.toml   (see proxy/README.md)"),
    };
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let cfg: Config =
        toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let cluster_path = path
        .parent()
        .unwrap_or(std::path::Path::new("."))
        .join(&cfg.cluster);
    let text = std::fs::read_to_string(&cluster_path)
        .with_context(|| format!("reading {}", cluster_path.display()))?;
    let cluster: ClusterMap =
        toml::from_str(&text).with_context(|| format!("parsing {}", cluster_path.display()))?;
    cluster.validate()?;
    let mut pcfg = ProxyConfig::new(NodeId(cfg.node), cluster)?;
    if let Some(s) = cfg.mac_ageing_s {
        pcfg.macs.ageing = std::time::Duration::from_secs(s);
    }
    if let Some(n) = cfg.max_macs_per_dc {
        pcfg.macs.max_per_dc = n;
    }
    let proxy = Proxy::start(pcfg).await?;
    let gen = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_micros() as u64;
    for p in cfg.ports {
        let spec = PortSpec {
            name: p.name.clone(),
            dc: DcId(p.dc),
            endpoints: p.endpoints.into_iter().map(Endpoint).collect(),
            mac: None,
            gen,
            announce: Announce::Now,
        };
        proxy
            .add_port(spec, &p.kind)
            .await
            .with_context(|| format!("opening port {}", p.name))?;
    }
    tracing::info!("dvs-proxy node {} running", cfg.node);
    tokio::signal::ctrl_c().await?;
    proxy.shutdown();
    Ok(())
}
