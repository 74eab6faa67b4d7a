//! The node's HTTP/JSON API (axum). Documented in hypervisor/README.md.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use bytes::Bytes;
use m3ipc_core::{DcId, Endpoint, NodeId};
use serde::Deserialize;

use crate::client::{
    ApiErrorBody, ImageCheck, MigrateRequest, MigrateResult, NodeClient, NodeStatus,
};
use crate::images::{ImageError, Manifest};
use crate::instances::{InstanceError, Manager, RunRequest, State as IState};

/// Shared state of the API handlers.
pub struct Api {
    /// The instance manager (and through it the proxy and the images).
    pub mgr: Arc<Manager>,
    /// When the daemon started.
    pub started: Instant,
}

/// An error answer: HTTP status, stable code, message.
pub struct ApiError(StatusCode, &'static str, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.0,
            Json(ApiErrorBody {
                error: self.2,
                code: self.1.into(),
            }),
        )
            .into_response()
    }
}

impl From<InstanceError> for ApiError {
    fn from(e: InstanceError) -> ApiError {
        let (status, code) = match &e {
            InstanceError::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid"),
            InstanceError::NameTaken(_) => (StatusCode::CONFLICT, "name_taken"),
            InstanceError::EndpointTaken { .. } => (StatusCode::CONFLICT, "endpoint_taken"),
            InstanceError::Dc(_) => (StatusCode::BAD_REQUEST, "dc"),
            InstanceError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            InstanceError::Image(ImageError::NotFound(_)) => (StatusCode::NOT_FOUND, "image"),
            InstanceError::Image(_) => (StatusCode::BAD_REQUEST, "image"),
            InstanceError::Other(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        ApiError(status, code, e.to_string())
    }
}

impl From<ImageError> for ApiError {
    fn from(e: ImageError) -> ApiError {
        InstanceError::Image(e).into()
    }
}

type Res<T> = Result<Json<T>, ApiError>;
type S = State<Arc<Api>>;

/// The API's routes.
pub fn router(api: Arc<Api>) -> Router {
    Router::new()
        .route("/v1/node", get(node))
        .route(
            "/v1/cluster",
            get(|s: S| async move { Json(s.mgr.proxy().cluster()) }),
        )
        .route(
            "/v1/directory",
            get(|s: S| async move { Json(s.mgr.proxy().placements()) }),
        )
        .route(
            "/v1/counters",
            get(|s: S| async move { Json(s.mgr.proxy().stats()) }),
        )
        .route("/v1/images", get(images))
        .route("/v1/images/{reference}", put(push_image).get(image))
        .route(
            "/v1/instances",
            get(|s: S| async move { Json(s.mgr.list()) }).post(run),
        )
        .route("/v1/instances/{name}", get(instance).delete(stop))
        .route("/v1/instances/{name}/logs", get(logs))
        .route("/v1/instances/{name}/migrate", post(migrate))
        .layer(DefaultBodyLimit::max(512 << 20))
        .with_state(api)
}

async fn node(State(s): S) -> Json<NodeStatus> {
    let proxy = s.mgr.proxy();
    let peers = proxy
        .cluster()
        .nodes
        .iter()
        .filter(|n| n.id != proxy.node().0)
        .map(|n| (n.id, proxy.peer_is_up(NodeId(n.id))))
        .collect();
    Json(NodeStatus {
        node: proxy.node().0,
        version: env!("CARGO_PKG_VERSION").into(),
        uptime_s: s.started.elapsed().as_secs(),
        backend: s.mgr.backend(),
        peers,
        instances: s.mgr.list().len(),
        images: s.mgr.images().list().map(|l| l.len()).unwrap_or(0),
    })
}

async fn images(State(s): S) -> Res<Vec<crate::images::Image>> {
    Ok(Json(s.mgr.images().list()?))
}

async fn image(State(s): S, Path(reference): Path<String>) -> Res<ImageCheck> {
    let image = s.mgr.images().find(&reference)?;
    let verified = s.mgr.images().verify(&image)?;
    Ok(Json(ImageCheck { image, verified }))
}

async fn push_image(
    State(s): S,
    Path(sha): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Res<crate::images::Image> {
    let bad = |m: String| ApiError(StatusCode::BAD_REQUEST, "invalid", m);
    let json = headers
        .get("x-dvs-manifest")
        .ok_or_else(|| bad("missing header x-dvs-manifest".into()))?;
    let manifest: Manifest =
        serde_json::from_slice(json.as_bytes()).map_err(|e| bad(format!("x-dvs-manifest: {e}")))?;
    let store = s.mgr.images().clone();
    let image = tokio::task::spawn_blocking(move || store.put(&sha, &body, manifest))
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))??;
    Ok(Json(image))
}

async fn run(State(s): S, Json(req): Json<RunRequest>) -> Res<crate::instances::InstanceView> {
    Ok(Json(s.mgr.run(req)?))
}

async fn instance(State(s): S, Path(name): Path<String>) -> Res<crate::instances::InstanceView> {
    s.mgr
        .view(&name)
        .map(Json)
        .ok_or_else(|| InstanceError::NotFound(name).into())
}

async fn stop(State(s): S, Path(name): Path<String>) -> Res<serde_json::Value> {
    s.mgr.stop(&name).await?;
    Ok(Json(serde_json::json!({ "stopped": name })))
}

#[derive(Deserialize)]
struct Tail {
    tail: Option<usize>,
}

async fn logs(
    State(s): S,
    Path(name): Path<String>,
    Query(q): Query<Tail>,
) -> Res<serde_json::Value> {
    Ok(Json(
        serde_json::json!({ "log": s.mgr.logs(&name, q.tail)? }),
    ))
}

/// Moves an instance to another node: boot it there (taking over its endpoints with a newer binding), wait
/// until that node announces them, let calls in progress here finish, then stop it here.
async fn migrate(
    State(s): S,
    Path(name): Path<String>,
    Json(req): Json<MigrateRequest>,
) -> Res<MigrateResult> {
    let t0 = Instant::now();
    let proxy = s.mgr.proxy().clone();
    let me = proxy.node().0;
    let view = s
        .mgr
        .view(&name)
        .ok_or_else(|| ApiError::from(InstanceError::NotFound(name.clone())))?;
    let bad = |m: String| ApiError(StatusCode::BAD_REQUEST, "invalid", m);
    if req.to == me {
        return Err(bad(format!("instance '{name}' is already on node {me}")));
    }
    let cluster = proxy.cluster();
    let target = cluster
        .node(NodeId(req.to))
        .ok_or_else(|| bad(format!("node {} is not in the cluster", req.to)))?;
    if !proxy.peer_is_up(NodeId(req.to)) {
        return Err(ApiError(
            StatusCode::BAD_GATEWAY,
            "unreachable",
            format!("node {} is unreachable", req.to),
        ));
    }
    if view.state != IState::Running {
        return Err(bad(format!(
            "instance '{name}' is {:?}, not running",
            view.state
        )));
    }
    let old_port = s.mgr.port_of(&name);
    let gen = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros() as u64)
        .max(view.gen + 1);
    let remote = NodeClient::new(&target.api.to_string());
    let upstream = |e: crate::client::ClientError| {
        ApiError(StatusCode::BAD_GATEWAY, "unreachable", e.to_string())
    };
    remote
        .run(&RunRequest {
            spec: view.spec.clone(),
            takeover_gen: Some(gen),
        })
        .await
        .map_err(upstream)?;
    // Wait until the new place holds every endpoint (its first frame, or the fallback, announces them).
    let dc = DcId(view.spec.dc);
    let moved = |p: &dvs_proxy::Proxy| {
        view.spec.endpoints.iter().all(|&e| {
            p.lookup(dc, Endpoint(e))
                .is_some_and(|pl| pl.node.0 == req.to)
        })
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let running = match remote.instance(&name).await {
            Ok(v) => v.state == IState::Running,
            Err(_) => false,
        };
        if running && moved(&proxy) {
            break;
        }
        if Instant::now() > deadline {
            let _ = remote.stop(&name).await;
            return Err(ApiError(
                StatusCode::GATEWAY_TIMEOUT,
                "unreachable",
                format!("node {} did not take over '{name}' in time", req.to),
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Let calls already delivered here finish (bounded), then move what is left and stop the old machine.
    let mut refused = 0;
    if let Some(port) = old_port {
        for _ in 0..150 {
            if proxy.port_pending(port) == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        refused = proxy.port_pending(port);
        let _ = proxy.move_port(port, NodeId(req.to), gen).await;
    }
    s.mgr.stop(&name).await?;
    Ok(Json(MigrateResult {
        from: me,
        to: req.to,
        gen,
        took_ms: t0.elapsed().as_millis() as u64,
        refused_in_flight: refused,
    }))
}
