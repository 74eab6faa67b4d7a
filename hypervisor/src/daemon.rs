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
use crate::auth::caller_of;
use crate::config;
use crate::control::ControlPlane;
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
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("creating {}", cfg.data_dir.display()))?;
    // With `etcd` the cluster lives there (the file seeds a new cluster once); without, the file is the
    // embedded, static directory.
    let control = match &cfg.etcd {
        Some(settings) => {
            let me = settings
                .me(cfg.node, &cluster)
                .map_err(|e| anyhow::anyhow!(e))?;
            let cp = ControlPlane::join(settings, &me, &cluster)
                .await
                .with_context(|| {
                    format!(
                        "joining the control plane on etcd ({})",
                        settings.endpoints.join(", ")
                    )
                })?;
            tracing::info!(
                "node {} is a member on etcd ({}), lease TTL {:?}",
                cfg.node,
                settings.endpoints.join(", "),
                settings.ttl()
            );
            Some(Arc::new(cp))
        }
        None => None,
    };
    let directory: Box<dyn Directory> = Box::new(StaticDirectory(match &control {
        Some(cp) => cp.cluster(),
        None => cluster,
    }));
    let cluster = directory.cluster();
    let me = cluster
        .node(NodeId(cfg.node))
        .context("node not in the cluster")?
        .clone();
    let images = ImageStore::open(&cfg.data_dir)?;
    let proxy = Proxy::start(config::proxy_config(&cfg, cluster)?).await?;
    let follower = control.as_ref().map(|cp| cp.follow(proxy.clone()));
    let listen = cfg.api_listen.unwrap_or(std::net::SocketAddr::new(
        [127, 0, 0, 1].into(),
        me.api.port(),
    ));
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("API listener on {listen}"))?;
    let url_host = if listen.ip().is_unspecified() {
        me.api.ip()
    } else {
        listen.ip()
    };
    let url = format!(
        "https://{}",
        std::net::SocketAddr::new(url_host, listen.port())
    );
    let pki = match &cfg.api_tls {
        Some(files) => crate::auth::node_pki_from_files(files),
        None => crate::auth::node_pki(
            &cfg.data_dir,
            cfg.api_ca.as_ref(),
            &crate::auth::server_names(&[listen.ip(), me.api.ip()]),
            &url,
        ),
    }
    .context("setting up the API's TLS and credentials")?;
    let files: Vec<String> = pki.files.iter().map(|p| p.display().to_string()).collect();
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
        "node {} up: API on {url} (listening on {listen}), proxy on {}, backend {}; credentials: {}",
        cfg.node,
        me.proxy,
        mgr.backend(),
        if files.is_empty() {
            "from api_tls".to_string()
        } else {
            files.join(", ")
        }
    );
    let rescuer = match &control {
        Some(cp) => {
            let moved = crate::control::moved_away(cp, &mgr.recorded()).await;
            for name in &moved {
                cp.forget(name).await;
            }
            mgr.restore_with(|s| !moved.contains(&s.name));
            crate::control::reconcile(cp, &mgr).await;
            Some(cp.rescue(mgr.clone()))
        }
        None => {
            mgr.restore();
            None
        }
    };
    let api = Arc::new(Api {
        mgr: mgr.clone(),
        started: Instant::now(),
        credentials: pki.peer_credentials.clone().map(Arc::new),
        data_dir: cfg.data_dir.clone(),
        max_image: cfg.max_image.0,
        control: control.clone(),
        console: Default::default(),
    });
    // A node that lost its lease is no longer a member: it stops serving (the others take over).
    let lease = control.clone();
    let shutdown = async move {
        match lease {
            Some(cp) => tokio::select! {
                _ = shutdown => {}
                _ = cp.lost() => tracing::error!("this node's lease on etcd lapsed: stopping its instances and exiting"),
            },
            None => shutdown.await,
        }
    };
    let served = serve_tls(listener, router(api), pki.server.clone(), shutdown).await;
    tracing::info!("node {} stopping: killing its machines", cfg.node);
    saver.abort();
    for task in [follower, rescuer].into_iter().flatten() {
        task.abort();
    }
    mgr.shutdown().await;
    proxy.shutdown();
    let _ = std::fs::remove_file(&pid_file);
    if let Some(cp) = control {
        if cp.is_lost() {
            anyhow::bail!("node {}: its lease on etcd lapsed", cfg.node);
        }
        // Leaving at once tells the other nodes now, not a TTL later.
        if let Err(e) = cp.leave().await {
            tracing::warn!("leaving the control plane: {e}");
        }
    }
    served.context("API server")
}

/// How long a client has for the TLS handshake.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// How long a connection may take to send a request's header (and so stay idle between requests: the
/// client closes idle connections sooner, see `client.rs`).
const HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Serves `app` over TLS on `listener` until `shutdown` completes; then drops every connection. Each request
/// carries the [`Caller`] its connection's client certificate established (the API's `authorize` layer
/// decides with it).
async fn serve_tls(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    tls: Arc<rustls::ServerConfig>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let mut conns = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => {
                let (tcp, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: wait a little rather than spin.
                        tracing::warn!("API: accept: {e}");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let (acceptor, app) = (acceptor.clone(), app.clone());
                conns.spawn(async move {
                    let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::info!("API: TLS handshake with {peer} refused: {e}");
                            return;
                        }
                        Err(_) => {
                            tracing::info!("API: TLS handshake with {peer} timed out");
                            return;
                        }
                    };
                    let caller = caller_of(stream.get_ref().1.peer_certificates());
                    let svc = tower::ServiceExt::map_request(
                        app,
                        move |mut r: axum::http::Request<hyper::body::Incoming>| {
                            r.extensions_mut().insert(caller);
                            r
                        },
                    );
                    let served = hyper::server::conn::http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(HEADER_TIMEOUT)
                        .serve_connection(
                            TokioIo::new(stream),
                            hyper_util::service::TowerToHyperService::new(svc),
                        )
                        .await;
                    if let Err(e) = served {
                        tracing::debug!("API: connection from {peer}: {e}");
                    }
                });
            }
        }
    }
    conns.shutdown().await;
    Ok(())
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
