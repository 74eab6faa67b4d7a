//! Moving an instance and its endpoints to another node, make before break: boot it there (taking over its
//! endpoints with a newer binding), wait until that node announces them (every proxy, this one included, then
//! routes to it), let calls in progress at the old instance finish, then stop the old instance. Frames that
//! still arrive here are forwarded; calls that did not finish in time are refused with Migrated, which the
//! caller's engine resends to the new place.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use m3ipc_core::{DcId, Endpoint, NodeId};

use crate::client::{MigrateResult, NodeClient};
use crate::instances::{InstanceError, Manager, RunRequest, State};

/// How long the new place may take to boot and announce the endpoints.
const TAKEOVER_TIMEOUT: Duration = Duration::from_secs(120);
/// How long calls in progress at the old instance may take to finish.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(3);

/// Why a migration did not happen.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// The request makes no sense (same node, unknown node, instance not running).
    #[error("{0}")]
    Invalid(String),
    /// The destination cannot be reached or refused.
    #[error("{0}")]
    Unreachable(String),
    /// The destination did not take over in time (the instance stays here).
    #[error("{0}")]
    TimedOut(String),
    /// The instance itself.
    #[error(transparent)]
    Instance(#[from] InstanceError),
}

/// Moves instance `name` of this node to node `to`.
pub async fn migrate_out(
    mgr: &Manager,
    name: &str,
    to: u16,
) -> Result<MigrateResult, MigrateError> {
    let t0 = Instant::now();
    let proxy = mgr.proxy().clone();
    let me = proxy.node().0;
    let view = mgr
        .view(name)
        .ok_or_else(|| InstanceError::NotFound(name.into()))?;
    if to == me {
        return Err(MigrateError::Invalid(format!(
            "instance '{name}' is already on node {me}"
        )));
    }
    let cluster = proxy.cluster();
    let target = cluster
        .node(NodeId(to))
        .ok_or_else(|| MigrateError::Invalid(format!("node {to} is not in the cluster")))?;
    if !proxy.peer_is_up(NodeId(to)) {
        return Err(MigrateError::Unreachable(format!(
            "node {to} is unreachable"
        )));
    }
    if view.state != State::Running {
        return Err(MigrateError::Invalid(format!(
            "instance '{name}' is {:?}, not running",
            view.state
        )));
    }
    let old_port = mgr.port_of(name);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros() as u64;
    let gen = now.max(view.gen + 1);

    // 1. Boot it at the destination, taking over the endpoints with the newer binding.
    let remote = NodeClient::new(&target.api.to_string());
    let req = RunRequest {
        spec: view.spec.clone(),
        takeover_gen: Some(gen),
    };
    remote
        .run(&req)
        .await
        .map_err(|e| MigrateError::Unreachable(e.to_string()))?;

    // 2. Wait until it runs there and this node routes its endpoints there.
    let dc = DcId(view.spec.dc);
    let deadline = Instant::now() + TAKEOVER_TIMEOUT;
    loop {
        let running = remote
            .instance(name)
            .await
            .is_ok_and(|v| v.state == State::Running);
        let moved = view.spec.endpoints.iter().all(|&e| {
            proxy
                .lookup(dc, Endpoint(e))
                .is_some_and(|p| p.node.0 == to)
        });
        if running && moved {
            break;
        }
        if Instant::now() > deadline {
            let _ = remote.stop(name).await;
            return Err(MigrateError::TimedOut(format!(
                "node {to} did not take over '{name}' in time"
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // 3. Let calls already delivered here finish, refuse the rest with Migrated, stop the old machine.
    let mut refused = 0;
    if let Some(port) = old_port {
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        while proxy.port_pending(port) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        refused = proxy.port_pending(port);
        let _ = proxy.move_port(port, NodeId(to), gen).await;
    }
    mgr.stop(name).await?;
    Ok(MigrateResult {
        from: me,
        to,
        gen,
        took_ms: t0.elapsed().as_millis() as u64,
        refused_in_flight: refused,
    })
}
