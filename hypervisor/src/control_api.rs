//! The API's control-plane routes (`/v1/control`, `/v1/dcs`, `/v1/nodes`): membership, live DCs and
//! nodes, endpoint owners. They need `etcd` in node.toml; on a static cluster (the cluster file) changes
//! are 409 `static_cluster`.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use dvs_etcd::EtcdError;
use dvs_proxy::{DcInfo, NodeInfo};

use crate::api::{Api, ApiError, ApiJson};
use crate::control::{ControlPlane, ControlView};

type Res<T> = Result<Json<T>, ApiError>;
type S = State<Arc<Api>>;

/// The routes, merged into the API's router.
pub(crate) fn routes() -> Router<Arc<Api>> {
    Router::new()
        .route("/v1/control", get(view))
        .route("/v1/dcs", post(create_dc))
        .route("/v1/dcs/{id}", delete(delete_dc))
        .route("/v1/nodes", post(join_node))
        .route("/v1/nodes/{id}", delete(remove_node))
}

impl From<EtcdError> for ApiError {
    fn from(e: EtcdError) -> ApiError {
        let (status, code) = match &e {
            EtcdError::Etcd(_) | EtcdError::Timeout { .. } => {
                (StatusCode::BAD_GATEWAY, "unreachable")
            }
            EtcdError::BadValue { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
            EtcdError::NoSuchNode(_) | EtcdError::NoSuchDc(_) => {
                (StatusCode::NOT_FOUND, "not_found")
            }
            EtcdError::DcNode { .. } => (StatusCode::BAD_REQUEST, "invalid"),
            EtcdError::NodeTaken(_)
            | EtcdError::NodeAlive(_)
            | EtcdError::DcTaken(_)
            | EtcdError::DcInUse { .. } => (StatusCode::CONFLICT, "conflict"),
            EtcdError::Conflict { .. } => (StatusCode::CONFLICT, "endpoint_taken"),
            EtcdError::LeaseLost(_) => (StatusCode::SERVICE_UNAVAILABLE, "lease_lost"),
        };
        ApiError::new(status, code, e.to_string())
    }
}

fn plane(s: &Api) -> Result<&ControlPlane, ApiError> {
    s.control.as_deref().ok_or_else(|| {
        ApiError::new(
            StatusCode::CONFLICT,
            "static_cluster",
            "this node's cluster is its cluster file (no `etcd` in node.toml): nodes and DCs change only by \
             editing the file and restarting"
                .into(),
        )
    })
}

async fn view(State(s): S) -> Res<ControlView> {
    match &s.control {
        Some(cp) => Ok(Json(cp.view().await?)),
        None => Ok(Json(ControlView {
            mode: "static".into(),
            endpoints: vec![],
            lease: 0,
            lease_ttl_s: 0,
            revision: 0,
            members: vec![],
            owners: vec![],
        })),
    }
}

/// `POST /v1/dcs` with a DC (`id`, `name`, `nodes`, optional `limit` and `quota`).
async fn create_dc(State(s): S, ApiJson(dc): ApiJson<DcInfo>) -> Res<DcInfo> {
    let cp = plane(&s)?;
    crate::validate::check_name("DC name", &dc.name)
        .map_err(|m| ApiError::new(StatusCode::BAD_REQUEST, "invalid", m))?;
    if dc.id == 0 || dc.nodes.is_empty() {
        let why = "a DC needs an id above 0 and at least one node".to_string();
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "invalid", why));
    }
    cp.store().create_dc(&dc).await?;
    tracing::info!("DC {} '{}' created on nodes {:?}", dc.id, dc.name, dc.nodes);
    Ok(Json(dc))
}

async fn delete_dc(State(s): S, Path(id): Path<u16>) -> Res<serde_json::Value> {
    let cp = plane(&s)?;
    cp.store().delete_dc(id).await?;
    tracing::info!("DC {id} deleted");
    Ok(Json(serde_json::json!({ "deleted": id })))
}

/// `POST /v1/nodes` with a node (`id`, `proxy`, `api`): registers a member before its daemon starts.
async fn join_node(State(s): S, ApiJson(node): ApiJson<NodeInfo>) -> Res<NodeInfo> {
    let cp = plane(&s)?;
    if node.id == 0 {
        let why = "node ids start at 1".to_string();
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "invalid", why));
    }
    cp.store().join(&node).await?;
    Ok(Json(node))
}

async fn remove_node(State(s): S, Path(id): Path<u16>) -> Res<serde_json::Value> {
    let cp = plane(&s)?;
    cp.store().remove_node(id).await.map_err(|e| match e {
        // Listed by a DC: the node is in use, not an invalid request.
        EtcdError::DcNode { .. } => ApiError::new(StatusCode::CONFLICT, "conflict", e.to_string()),
        e => e.into(),
    })?;
    tracing::info!("node {id} removed from the cluster");
    Ok(Json(serde_json::json!({ "removed": id })))
}
