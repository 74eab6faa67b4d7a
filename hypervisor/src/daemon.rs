//! `dvs node --config node.toml`: the node daemon. Starts the proxy, restores the instances recorded on disk,
//! serves the API, and on SIGTERM/SIGINT kills every machine it started before it exits.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use dvs_proxy::placement::PlacementView;
use dvs_proxy::{Directory, Proxy, StaticDirectory};
use m3ipc_core::NodeId;

use crate::api::{router, Api};
use crate::config;
use crate::images::ImageStore;
use crate::instances::Manager;

/// Runs the node daemon until SIGTERM or SIGINT.
pub async fn run(config_path: &Path) -> anyhow::Result<()> {
    let (cfg, cluster) = config::load(config_path)?;
    serve(cfg, cluster, shutdown_signal()).await
}

/// Runs a node of `cluster` configured by `cfg` until `shutdown` completes.
pub async fn serve(
    cfg: config::NodeConfig,
    cluster: dvs_proxy::ClusterMap,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    // The cluster file is the embedded directory; an etcd backend would be another `Directory`.
    let directory: Box<dyn Directory> = Box::new(StaticDirectory(cluster));
    let cluster = directory.cluster();
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("creating {}", cfg.data_dir.display()))?;
    let me = cluster
        .node(NodeId(cfg.node))
        .context("node not in the cluster file")?
        .clone();
    let images = ImageStore::open(&cfg.data_dir)?;
    let proxy = Proxy::start(config::proxy_config(&cfg, cluster)?).await?;
    let listen = cfg.api_listen.unwrap_or(me.api);
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("API listener on {listen}"))?;
    let pid_file = cfg.data_dir.join("node.pid");
    std::fs::write(&pid_file, std::process::id().to_string())?;
    let cache = cfg.data_dir.join("directory.json");
    if let Some(known) = std::fs::read(&cache)
        .ok()
        .and_then(|b| serde_json::from_slice::<Vec<PlacementView>>(&b).ok())
    {
        proxy.preload(&known);
    }
    let saver = tokio::spawn(save_directory(proxy.clone(), cache));
    let mgr = Manager::new(cfg.clone(), proxy.clone(), images)?;
    tracing::info!(
        "node {} up: API on http://{listen}, proxy on {}, backend {}",
        cfg.node,
        me.proxy,
        mgr.backend()
    );
    mgr.restore();
    let api = Arc::new(Api {
        mgr: mgr.clone(),
        started: Instant::now(),
    });
    let served = axum::serve(listener, router(api))
        .with_graceful_shutdown(shutdown)
        .await;
    tracing::info!("node {} stopping: killing its machines", cfg.node);
    saver.abort();
    mgr.shutdown().await;
    proxy.shutdown();
    let _ = std::fs::remove_file(&pid_file);
    served.context("API server")
}

/// Keeps a copy of what this node knows about other nodes' endpoints (`directory.json`), so that after a
/// restart calls to a node that is still down fail with NodeUnreachable rather than UnknownDestination.
async fn save_directory(proxy: Proxy, path: std::path::PathBuf) {
    let me = proxy.node().0;
    let mut last = Vec::new();
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        let remote: Vec<PlacementView> = proxy
            .placements()
            .into_iter()
            .filter(|p| p.node != me)
            .collect();
        if remote == last {
            continue;
        }
        let tmp = path.with_extension("json.tmp");
        let saved = serde_json::to_vec(&remote)
            .map_err(std::io::Error::other)
            .and_then(|b| std::fs::write(&tmp, b))
            .and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(e) = saved {
            tracing::warn!("saving {}: {e}", path.display());
        }
        last = remote;
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
