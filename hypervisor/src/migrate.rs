//! Moving an instance and its endpoints to another node, make before break: boot it there (taking over its
//! endpoints with a newer binding), wait until that node announces them (every proxy, this one included, then
//! routes to it), let calls in progress at the old instance finish, then stop the old instance. Frames that
//! still arrive here are forwarded; calls that did not finish in time are refused with Migrated, which the
//! caller's engine resends to the new place.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dvs_proxy::switch::SwitchError;
use dvs_proxy::ProxyError;
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
    /// The new place took over, but this node's proxy could not hand the old port over (the old instance is
    /// stopped anyway; calls in flight at it may time out instead of being resent).
    #[error(
        "instance '{name}' now runs on node {to}, but handing over its old port failed: {why}"
    )]
    Handover {
        /// The instance.
        name: String,
        /// The new node.
        to: u16,
        /// The proxy's error.
        why: String,
    },
}

/// Moves instance `name` of this node to node `to`, calling node `to`'s API with `credentials` (this node's
/// own; node `to` must accept them: the nodes share an API CA).
pub async fn migrate_out(
    mgr: &Manager,
    name: &str,
    to: u16,
    credentials: &crate::auth::Credentials,
) -> Result<MigrateResult, MigrateError> {
    let t0 = Instant::now();
    let proxy = mgr.proxy().clone();
    let me = proxy.node().0;
    let view = mgr
        .view(name)
        .ok_or_else(|| InstanceError::NotFound(name.into()))?;
    if !view.spec.volumes.is_empty() {
        // Booting it elsewhere would give it new, empty volumes there: refuse rather than lose its data.
        return Err(MigrateError::Invalid(format!(
            "instance '{name}' has volumes ({}) on node {me}: a volume cannot follow an instance to another \
             node yet, so it stays here (moving it would leave its data behind)",
            crate::instances::volume_names(&view.spec)
        )));
    }
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
    // 0. Let node `to` take the endpoints over with `gen`: no node accepts another node's binding of
    //    endpoints this node holds without the holder's grant (a Handover to every node).
    if let Some(port) = old_port {
        proxy
            .grant_move(port, NodeId(to), gen)
            .await
            .map_err(|e| MigrateError::Invalid(format!("migrating '{name}' to node {to}: {e}")))?;
    }

    // 1. Boot it at the destination, taking over the endpoints with the newer binding.
    let remote = NodeClient::with_credentials(&target.api.to_string(), credentials);
    let req = RunRequest {
        spec: view.spec.clone(),
        takeover_gen: Some(gen),
    };
    remote
        .run(&req)
        .await
        .map_err(|e| MigrateError::Unreachable(e.to_string()))?;

    // 2. Wait until it is ready there (following its revisions) and this node routes its endpoints there.
    let dc = DcId(view.spec.dc);
    let deadline = Instant::now() + TAKEOVER_TIMEOUT;
    let settled = |v: &crate::instances::InstanceView| {
        matches!(
            v.state,
            State::Running | State::Failed | State::Exited | State::Stopped
        )
    };
    let give_up = |why: String| async {
        if let Err(e) = remote.stop(name).await {
            tracing::warn!("migrating {name}: stopping the new instance on node {to}: {e}");
        }
        Err(MigrateError::TimedOut(why))
    };
    match remote.wait_instance(name, TAKEOVER_TIMEOUT, settled).await {
        Ok((v, _)) if v.state == State::Running => {}
        Ok((v, _)) => {
            let why = v.last_exit.unwrap_or_else(|| format!("{:?}", v.state));
            return give_up(format!("node {to} did not take over '{name}': {why}")).await;
        }
        Err(e) => return Err(MigrateError::Unreachable(e.to_string())),
    }
    loop {
        let moved = view.spec.endpoints.iter().all(|&e| {
            proxy
                .lookup(dc, Endpoint(e))
                .is_some_and(|p| p.node.0 == to)
        });
        if moved {
            break;
        }
        if Instant::now() > deadline {
            return give_up(format!(
                "node {to} runs '{name}' but did not announce its endpoints in time"
            ))
            .await;
        }
        // The announcement travels proxy to proxy; it follows the Ready record closely.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    // 3. Let calls already delivered here finish, refuse the rest with Migrated, stop the old machine.
    let mut refused = 0;
    let mut handover = Ok(());
    // The port of the machine running now: if it restarted since the start, its old port is gone.
    if let Some(port) = mgr.port_of(name).filter(|p| Some(*p) == old_port) {
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        while proxy.port_pending(port) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        refused = proxy.port_pending(port);
        handover = match proxy.move_port(port, NodeId(to), gen).await {
            Ok(()) => Ok(()),
            // The machine ended meanwhile and took its port (and the calls in flight at it) along.
            Err(ProxyError::Switch(SwitchError::NoPort(_))) => {
                tracing::info!("migrating {name}: its port went away before the handover");
                Ok(())
            }
            Err(e) => Err(e),
        };
    }
    // The new place serves the endpoints now: the old instance goes whatever the handover did.
    mgr.stop(name).await?;
    if let Err(e) = handover {
        tracing::warn!("migrating {name} to node {to}: handing over its old port: {e}");
        return Err(MigrateError::Handover {
            name: name.into(),
            to,
            why: e.to_string(),
        });
    }
    Ok(MigrateResult {
        from: me,
        to,
        gen,
        took_ms: t0.elapsed().as_millis() as u64,
        refused_in_flight: refused,
    })
}
