//! The node's HTTP/JSON API (axum). Documented in hypervisor/README.md.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
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
    /// What this node presents to other nodes' APIs (migration): its admin credentials (none: `api_tls`
    /// without `credentials`, and migrating out is refused).
    pub credentials: Option<Arc<crate::auth::Credentials>>,
    /// The node's data directory (instances' console logs are under `instances/`).
    pub data_dir: std::path::PathBuf,
    /// The largest image a push may upload, in bytes.
    pub max_image: u64,
    /// The control plane on etcd (none: the cluster file is the directory).
    pub control: Option<Arc<crate::control::ControlPlane>>,
    /// The web console's sessions and clients.
    pub console: crate::console::Console,
}

/// How long an image upload may pause between two pieces of its body.
const BODY_IDLE: std::time::Duration = std::time::Duration::from_secs(30);

/// The largest JSON request body (an instance spec, a migration request).
pub const MAX_JSON_BODY: usize = 256 << 10;

/// An error answer: HTTP status, stable code, message.
pub struct ApiError(StatusCode, &'static str, String);

impl ApiError {
    /// An answer with `status`, the stable `code` and a message for people.
    pub fn new(status: StatusCode, code: &'static str, message: String) -> ApiError {
        ApiError(status, code, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.0,
            Json(ApiErrorBody {
                message: self.2,
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
            InstanceError::Quota(_) => (StatusCode::CONFLICT, "quota"),
            InstanceError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            InstanceError::Image(ImageError::NotFound(_)) => (StatusCode::NOT_FOUND, "image"),
            InstanceError::Image(ImageError::Taken(_)) => (StatusCode::CONFLICT, "image_taken"),
            InstanceError::Image(ImageError::Io { .. }) => {
                (StatusCode::INTERNAL_SERVER_ERROR, "internal")
            }
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
        .route("/metrics", get(metrics))
        .route("/v1/images", get(images))
        .route(
            "/v1/images/{reference}",
            put(push_image)
                .get(image)
                .layer(DefaultBodyLimit::disable()),
        )
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
        .route("/v1/console/login", post(crate::console::issue_login))
        .merge(crate::control_api::routes())
        .fallback(|| async {
            ApiError(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such API path (see hypervisor/README.md)".into(),
            )
        })
        .method_not_allowed_fallback(|| async {
            ApiError(
                StatusCode::METHOD_NOT_ALLOWED,
                "invalid",
                "this API path does not take that method".into(),
            )
        })
        .layer(DefaultBodyLimit::max(MAX_JSON_BODY))
        .layer(axum::middleware::from_fn(authorize))
        // The console authenticates by its own session cookie (a browser has no client certificate).
        .merge(crate::console::routes())
        .with_state(api)
}

/// A JSON body whose rejections (malformed, wrong type, too large, no content type) are API errors:
/// `{code, message}` with 400 `invalid`, 413 `too_large` or 415 `invalid`; 408 `timeout` when the body
/// does not come within 30 s.
pub struct ApiJson<T>(pub T);

impl<T: serde::de::DeserializeOwned, St: Send + Sync> axum::extract::FromRequest<St>
    for ApiJson<T>
{
    type Rejection = ApiError;
    async fn from_request(req: axum::extract::Request, state: &St) -> Result<Self, ApiError> {
        let read = tokio::time::timeout(BODY_IDLE, Json::<T>::from_request(req, state))
            .await
            .map_err(|_| {
                ApiError(
                    StatusCode::REQUEST_TIMEOUT,
                    "timeout",
                    format!("the request body did not come in {} s", BODY_IDLE.as_secs()),
                )
            })?;
        match read {
            Ok(Json(v)) => Ok(ApiJson(v)),
            Err(r) => {
                let status = r.status();
                let (status, code) = match status {
                    StatusCode::PAYLOAD_TOO_LARGE => (status, "too_large"),
                    StatusCode::UNSUPPORTED_MEDIA_TYPE => (status, "invalid"),
                    _ => (StatusCode::BAD_REQUEST, "invalid"),
                };
                Err(ApiError(status, code, r.body_text()))
            }
        }
    }
}

/// A query string whose rejection is a 400 `invalid` API error.
pub struct ApiQuery<T>(pub T);

impl<T: serde::de::DeserializeOwned, St: Send + Sync> axum::extract::FromRequestParts<St>
    for ApiQuery<T>
{
    type Rejection = ApiError;
    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &St,
    ) -> Result<Self, ApiError> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(v)| ApiQuery(v))
            .map_err(|r| ApiError(StatusCode::BAD_REQUEST, "invalid", r.body_text()))
    }
}

/// 400 `invalid` unless `name` is a valid instance name.
fn instance_name(name: &str) -> Result<(), ApiError> {
    crate::validate::check_name("instance name", name)
        .map_err(|m| ApiError(StatusCode::BAD_REQUEST, "invalid", m))
}

/// Lets a request through only for a caller allowed to make it: no client certificate → 401
/// `unauthenticated`; a certificate without a role → 403 `forbidden`; `read-only` → 403 `forbidden` on
/// anything but GET and HEAD. The caller comes from the TLS handshake (`daemon.rs`); a request without one
/// (a router served some other way) is anonymous.
async fn authorize(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    use crate::auth::{Caller, Role};
    use axum::http::Method;
    let caller = req
        .extensions()
        .get::<Caller>()
        .copied()
        .unwrap_or(Caller::Anonymous);
    let reads = matches!(*req.method(), Method::GET | Method::HEAD);
    // A read-only caller may ask for a console login link too (its session is read-only).
    let allowed_read_only = reads || req.uri().path() == "/v1/console/login";
    let refuse = |status, code, m: String| ApiError(status, code, m).into_response();
    let mut resp = match caller {
        Caller::Anonymous => refuse(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "this API needs a client certificate: use a credential file (dvs --credentials FILE, or \
             DVS_CREDENTIALS; a node writes admin.toml and read-only.toml in <data_dir>/api/)"
                .into(),
        ),
        Caller::NoRole => refuse(
            StatusCode::FORBIDDEN,
            "forbidden",
            "the client certificate names no role (admin or read-only)".into(),
        ),
        Caller::Role(Role::ReadOnly) if !allowed_read_only => refuse(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "{} {}: read-only credentials may only read (GET)",
                req.method(),
                req.uri().path()
            ),
        ),
        Caller::Role(_) => next.run(req).await,
    };
    // A refused change may leave its body unread: the connection then cannot carry another request, so
    // say so, or a client would reuse it and fail its next request.
    if !reads && !resp.status().is_success() {
        resp.headers_mut().insert(
            axum::http::header::CONNECTION,
            axum::http::HeaderValue::from_static("close"),
        );
    }
    resp
}

async fn node(State(s): S) -> Json<NodeStatus> {
    Json(node_status(&s))
}

/// What `GET /v1/node` answers.
pub fn node_status(s: &Api) -> NodeStatus {
    let proxy = s.mgr.proxy();
    let peers = proxy
        .cluster()
        .nodes
        .iter()
        .filter(|n| n.id != proxy.node().0)
        .map(|n| (n.id, proxy.peer_is_up(NodeId(n.id))))
        .collect();
    NodeStatus {
        node: proxy.node().0,
        version: env!("CARGO_PKG_VERSION").into(),
        uptime_s: s.started.elapsed().as_secs(),
        backend: s.mgr.backend(),
        peers,
        instances: s.mgr.list().len(),
        images: s.mgr.images().list().map(|l| l.len()).unwrap_or(0),
        max_image: Some(s.max_image),
    }
}

/// `GET /metrics`: the node's counters in the Prometheus text format ([`crate::metrics`]).
async fn metrics(State(s): S) -> Result<Response, ApiError> {
    let proxy = s.mgr.proxy();
    let images = s.mgr.images().list()?;
    let snapshot = crate::metrics::Snapshot {
        node: proxy.node().0,
        version: env!("CARGO_PKG_VERSION").into(),
        uptime_s: s.started.elapsed().as_secs_f64(),
        stats: proxy.stats(),
        instances: s.mgr.list(),
        images: images.len() as u64,
        image_bytes: images.iter().map(|i| i.size).sum(),
    };
    let text = crate::metrics::render(snapshot).map_err(|_| {
        ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the metrics could not be encoded".into(),
        )
    })?;
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            crate::metrics::CONTENT_TYPE,
        )],
        text,
    )
        .into_response())
}

async fn images(State(s): S) -> Res<Vec<crate::images::Image>> {
    Ok(Json(s.mgr.images().list()?))
}

async fn image(State(s): S, Path(reference): Path<String>) -> Res<ImageCheck> {
    let image = s.mgr.images().find(&reference)?;
    let verified = s.mgr.images().verify(&image)?;
    Ok(Json(ImageCheck { image, verified }))
}

/// `PUT /v1/images/{sha256}`: the body streams to a file in the store's folder, hashed as it comes, never
/// held in memory; at most `max_image` bytes (413 `too_large`). What the header announces is checked before
/// the body is read (400 `invalid` / `image`, 409 `image_taken`); a body that does not hash to `{sha256}` or
/// is not a loadable ELF is refused (400 `image`) and its file removed, as it is when the client goes away.
async fn push_image(
    State(s): S,
    Path(sha): Path<String>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Res<crate::images::Image> {
    use futures_util::StreamExt;
    use sha2::Digest;
    use tokio::io::AsyncWriteExt;
    let bad = |m: String| ApiError(StatusCode::BAD_REQUEST, "invalid", m);
    let json = headers
        .get("x-dvs-manifest")
        .ok_or_else(|| bad("missing header x-dvs-manifest".into()))?;
    let manifest: Manifest =
        serde_json::from_slice(json.as_bytes()).map_err(|e| bad(format!("x-dvs-manifest: {e}")))?;
    let too_large = |n: String| {
        ApiError(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!(
                "image of {n} bytes: this node takes images of at most {} bytes (max_image in node.toml)",
                s.max_image
            ),
        )
    };
    let announced = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if let Some(n) = announced.filter(|&n| n > s.max_image) {
        return Err(too_large(n.to_string()));
    }
    let store = s.mgr.images().clone();
    if let Some(stored) = store.check_push(&sha, &manifest)? {
        return Ok(Json(stored));
    }
    let (upload, file) = store.upload()?;
    let mut file = tokio::fs::File::from_std(file);
    let mut hash = sha2::Sha256::new();
    let mut total = 0u64;
    let mut stream = body.into_data_stream();
    let io_err = |e: std::io::Error| {
        ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("writing the upload: {e}"),
        )
    };
    loop {
        // A client that stops sending holds a connection and a file: not for long.
        let next = tokio::time::timeout(BODY_IDLE, stream.next())
            .await
            .map_err(|_| {
                ApiError(
                    StatusCode::REQUEST_TIMEOUT,
                    "timeout",
                    format!("no image data for {} s", BODY_IDLE.as_secs()),
                )
            })?;
        let Some(chunk) = next else { break };
        let chunk = chunk.map_err(|e| bad(format!("reading the image: {e}")))?;
        total += chunk.len() as u64;
        if total > s.max_image {
            return Err(too_large(format!("more than {}", s.max_image)));
        }
        hash.update(&chunk);
        file.write_all(&chunk).await.map_err(io_err)?;
    }
    file.sync_all().await.map_err(io_err)?;
    drop(file);
    let actual = hex::encode(hash.finalize());
    let image =
        tokio::task::spawn_blocking(move || store.put_file(&sha, upload, &actual, manifest))
            .await
            .map_err(|e| {
                ApiError(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
            })??;
    Ok(Json(image))
}

async fn run(
    State(s): S,
    ApiJson(req): ApiJson<RunRequest>,
) -> Res<crate::instances::InstanceView> {
    instance_name(&req.spec.name)?;
    // Services come from the image's manifest: an image that lists its services runs only those (the
    // instance layer checks each name against the VOS's known set and types it for the boot config).
    if let Ok(image) = s.mgr.images().find(&req.spec.image) {
        let offered = &image.manifest.services;
        if let Some(svc) = req
            .spec
            .services
            .iter()
            .find(|svc| !offered.is_empty() && !offered.contains(svc))
        {
            return Err(ApiError(
                StatusCode::BAD_REQUEST,
                "invalid",
                format!(
                    "service '{}': image {}:{} offers {}",
                    crate::validate::shown(svc),
                    image.manifest.name,
                    image.manifest.version,
                    offered.join(", ")
                ),
            ));
        }
    }
    let takeover = req.takeover_gen.is_some();
    let view = s.mgr.run(req)?;
    // With etcd, the endpoints are this instance's only once etcd says so (compare-and-swap): if another
    // live node owns one, the instance does not stay.
    if let Some(cp) = &s.control {
        let spec = &view.spec;
        if let Err(e) = cp
            .claim(spec.dc, &spec.endpoints, &spec.name, view.gen, takeover)
            .await
        {
            if let Err(stop) = s.mgr.stop(&spec.name).await {
                tracing::warn!("stopping '{}' after its claim failed: {stop}", spec.name);
            }
            return Err(e.into());
        }
        cp.record(spec).await;
    }
    Ok(Json(view))
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
    ApiQuery(q): ApiQuery<Wait>,
) -> Res<crate::instances::InstanceView> {
    instance_name(&name)?;
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

/// `DELETE /v1/instances/{name}`: stops it and forgets it, its console log too.
async fn stop(State(s): S, Path(name): Path<String>) -> Res<serde_json::Value> {
    instance_name(&name)?;
    let spec = s.mgr.view(&name).map(|v| v.spec);
    s.mgr.stop(&name).await?;
    if let (Some(cp), Some(spec)) = (&s.control, spec) {
        cp.release(spec.dc, &spec.endpoints, &spec.name).await;
        cp.forget(&spec.name).await;
    }
    // The name is checked, so the path stays in the instances' folder.
    // Its console log goes, with its rotated copy and their indexes.
    let dir = s.data_dir.join("instances");
    for file in ["log", "log.idx", "log.1", "log.1.idx"] {
        let path = dir.join(format!("{name}.{file}"));
        if let Err(e) = std::fs::remove_file(&path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!("removing {}: {e}", path.display());
            }
        }
    }
    Ok(Json(serde_json::json!({ "stopped": name })))
}

/// `GET /v1/instances/{name}/logs?tail=N&since_ms=T&after=CURSOR` → `{log, cursor}`.
async fn logs(
    State(s): S,
    Path(name): Path<String>,
    ApiQuery(q): ApiQuery<crate::instances::LogQuery>,
) -> Res<serde_json::Value> {
    instance_name(&name)?;
    let (log, cursor) = s.mgr.log_read(&name, &q)?;
    Ok(Json(
        serde_json::json!({ "log": log, "cursor": cursor.to_string() }),
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
    ApiJson(req): ApiJson<MigrateRequest>,
) -> Res<MigrateResult> {
    instance_name(&name)?;
    let Some(creds) = &s.credentials else {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            "invalid",
            "this node has no credentials for other nodes' APIs (api_tls.credentials in node.toml): it cannot \
             migrate instances out"
                .into(),
        ));
    };
    let result = crate::migrate::migrate_out(&s.mgr, &name, req.to, creds).await;
    if let (Err(_), Some(cp), Some(v)) = (&result, &s.control, s.mgr.view(&name)) {
        // The move failed and the instance still runs here: it owns its endpoints again (the destination
        // may have claimed them before it gave up).
        let spec = &v.spec;
        if let Err(e) = cp.claim(spec.dc, &spec.endpoints, &name, v.gen, true).await {
            tracing::warn!("'{name}' after a failed migration: claiming its endpoints: {e}");
        }
    }
    if let (Ok(_), Some(cp)) = (&result, &s.control) {
        // It runs (and is recorded) at the destination now.
        cp.forget(&name).await;
    }
    match result {
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
