//! The node's HTTP/JSON API (axum). Documented in hypervisor/README.md.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use bytes::Bytes;
use m3ipc_core::NodeId;
use serde::Deserialize;

use crate::client::{ApiErrorBody, ImageCheck, MigrateRequest, MigrateResult, NodeStatus};
use crate::images::{ImageError, Manifest};
use crate::instances::{InstanceError, Manager, RunRequest};
use crate::migrate::MigrateError;
use crate::volumes::{VolumeError, VolumeView};

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
            InstanceError::BootConfig { .. } => (StatusCode::BAD_REQUEST, "invalid"),
            InstanceError::NameTaken(_) => (StatusCode::CONFLICT, "name_taken"),
            InstanceError::EndpointTaken { .. } => (StatusCode::CONFLICT, "endpoint_taken"),
            InstanceError::PortTaken { .. } => (StatusCode::CONFLICT, "port_taken"),
            InstanceError::Dc(_) => (StatusCode::BAD_REQUEST, "dc"),
            InstanceError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            InstanceError::Image(ImageError::NotFound(_)) => (StatusCode::NOT_FOUND, "image"),
            InstanceError::Image(_) => (StatusCode::BAD_REQUEST, "image"),
            InstanceError::Volume(v) => volume_status(v),
            InstanceError::Other(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        ApiError(status, code, e.to_string())
    }
}

/// The status and code of a volume error: 400 `invalid`, 404 `not_found`, 409 `volume_attached` /
/// `volume_size`, 500 `volume_io`.
fn volume_status(e: &VolumeError) -> (StatusCode, &'static str) {
    match e {
        VolumeError::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid"),
        VolumeError::NotFound { .. } => (StatusCode::NOT_FOUND, "not_found"),
        VolumeError::Attached { .. } => (StatusCode::CONFLICT, "volume_attached"),
        VolumeError::Size { .. } => (StatusCode::CONFLICT, "volume_size"),
        VolumeError::Io(_) => (StatusCode::INTERNAL_SERVER_ERROR, "volume_io"),
    }
}

impl From<VolumeError> for ApiError {
    fn from(e: VolumeError) -> ApiError {
        let (status, code) = volume_status(&e);
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
        .route(
            "/v1/volumes",
            get(|s: S| async move { Json(s.mgr.volumes().list()) }),
        )
        .route("/v1/volumes/{dc}/{name}", delete(remove_volume))
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

/// `?wait_after=REV&timeout_ms=N`: answer once the instance's revision is above REV (or after N ms, at most
/// 60 s, with the view as it is then).
#[derive(Deserialize)]
struct Wait {
    wait_after: Option<u64>,
    timeout_ms: Option<u64>,
}

async fn instance(
    State(s): S,
    Path(name): Path<String>,
    Query(q): Query<Wait>,
) -> Res<crate::instances::InstanceView> {
    let view = match q.wait_after {
        Some(after) => {
            let timeout = std::time::Duration::from_millis(q.timeout_ms.unwrap_or(30_000));
            s.mgr.wait_view(&name, after, timeout).await
        }
        None => s.mgr.view(&name),
    };
    view.map(Json)
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

/// `DELETE /v1/volumes/{dc}/{name}`: removes a detached volume (its data goes); 409 while attached.
async fn remove_volume(State(s): S, Path((dc, name)): Path<(String, String)>) -> Res<VolumeView> {
    let dc: u16 = dc.parse().map_err(|_| {
        ApiError(
            StatusCode::BAD_REQUEST,
            "invalid",
            format!("DC '{}': expected a DC number", dc.escape_debug()),
        )
    })?;
    Ok(Json(s.mgr.volumes().remove(dc, &name)?))
}

/// Moves an instance to another node (see `migrate.rs`).
async fn migrate(
    State(s): S,
    Path(name): Path<String>,
    Json(req): Json<MigrateRequest>,
) -> Res<MigrateResult> {
    match crate::migrate::migrate_out(&s.mgr, &name, req.to).await {
        Ok(r) => Ok(Json(r)),
        Err(MigrateError::Instance(e)) => Err(e.into()),
        Err(e @ MigrateError::Invalid(_)) => {
            Err(ApiError(StatusCode::BAD_REQUEST, "invalid", e.to_string()))
        }
        Err(e @ MigrateError::Unreachable(_)) => Err(ApiError(
            StatusCode::BAD_GATEWAY,
            "unreachable",
            e.to_string(),
        )),
        Err(e @ MigrateError::TimedOut(_)) => Err(ApiError(
            StatusCode::GATEWAY_TIMEOUT,
            "unreachable",
            e.to_string(),
        )),
        Err(e @ MigrateError::Handover { .. }) => Err(ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            "handover",
            e.to_string(),
        )),
    }
}
