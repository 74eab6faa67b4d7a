//! The web console: the cluster as seen from one node, served by its daemon under `/console`.
//!
//! Server-rendered HTML (maud) with one stylesheet and one small script compiled into the binary: every
//! page reads without JavaScript; with it, the instance table, the DCs' message-rate charts and a console
//! log follow live by polling small JSON and HTML fragments. Actions (stop, restart, migrate, start an
//! instance, apply a manifest) are forms that post to the console, which makes the same calls as the `dvs`
//! CLI through the nodes' APIs with this node's credentials, so every check of the API applies.
//!
//! Signing in: see [`session`]. Every page answers with a strict Content-Security-Policy (nothing but this
//! node's own script and stylesheet), no caching, no referrer to other sites (same-origin: with none, a browser sends `Origin: null` on posts) and no framing; every form carries the
//! session's CSRF token, and a post whose `Origin` is another site is refused.

mod pages;
pub mod session;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Form, FromRequestParts, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use dvs_proxy::ClusterMap;
use serde::Deserialize;

use crate::api::Api;
use crate::auth::Role;
use crate::client::{NodeClient, NodeStatus};
use crate::instances::{InstanceSpec, InstanceView, RunRequest};
use session::{same_secret, Flash};

/// The session cookie's name.
const COOKIE: &str = "dvs_console";
/// How long the console waits for another node's API before showing it as not answering.
const NODE_TIMEOUT: Duration = Duration::from_secs(3);
/// The largest form the console takes (a manifest pasted in).
const MAX_FORM: usize = 256 << 10;
/// Console log lines shown and followed.
const LOG_LINES: usize = 300;

/// The console's state in the daemon: sessions, and clients for the cluster's nodes.
#[derive(Default)]
pub struct Console {
    /// Login links and sessions.
    pub sessions: session::Sessions,
    clients: Mutex<BTreeMap<String, NodeClient>>,
}

type S = State<Arc<Api>>;

/// The console's routes (they authenticate by session cookie, not by client certificate).
pub fn routes() -> Router<Arc<Api>> {
    Router::new()
        .route("/console", get(overview))
        .route("/console/", get(|| async { Redirect::to("/console") }))
        .route("/console/login", get(login))
        .route("/console/logout", post(logout))
        .route("/console/fragment/instances", get(instances_fragment))
        .route("/console/rates", get(rates))
        .route("/console/instances/{name}", get(instance_page))
        .route("/console/instances/{name}/log", get(instance_log))
        .route("/console/instances/{name}/stop", post(stop))
        .route("/console/instances/{name}/restart", post(restart))
        .route("/console/instances/{name}/migrate", post(migrate))
        .route("/console/run", post(run))
        .route("/console/apply", post(apply))
        .route("/console/static/console.css", get(css))
        .route("/console/static/console.js", get(js))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_FORM))
        .layer(axum::middleware::from_fn(headers))
}

/// `POST /v1/console/login` (an API route: the caller has a client certificate): a one-time login link for
/// a browser, with the caller's role.
pub async fn issue_login(
    State(s): S,
    axum::Extension(caller): axum::Extension<crate::auth::Caller>,
) -> Response {
    let crate::auth::Caller::Role(role) = caller else {
        return StatusCode::FORBIDDEN.into_response();
    };
    let token = s.console.sessions.issue_login(role);
    Json(serde_json::json!({
        "path": format!("/console/login?token={token}"),
        "expires_s": session::LOGIN_TTL.as_secs(),
        "role": role,
    }))
    .into_response()
}

/// Security headers on every console answer.
async fn headers(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let is_static = req.uri().path().starts_with("/console/static/");
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; \
             form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(if is_static {
            "private, max-age=300"
        } else {
            "no-store"
        }),
    );
    resp
}

async fn css() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("console.css"),
    )
        .into_response()
}

async fn js() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("console.js"),
    )
        .into_response()
}

/// A signed-in browser: its session id and session. A request without a live session gets the
/// "not signed in" page (401).
pub struct Viewer {
    id: String,
    session: session::Session,
}

fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|kv| {
            let (k, v) = kv.trim().split_once('=')?;
            (k == name).then_some(v)
        })
}

impl FromRequestParts<Arc<Api>> for Viewer {
    type Rejection = Response;
    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        s: &Arc<Api>,
    ) -> Result<Viewer, Response> {
        let found = cookie(&parts.headers, COOKIE)
            .and_then(|id| Some((id.to_string(), s.console.sessions.get(id)?)));
        match found {
            Some((id, session)) => Ok(Viewer { id, session }),
            None => Err((StatusCode::UNAUTHORIZED, pages::signed_out()).into_response()),
        }
    }
}

/// A refused console request: its status and why, shown on an error page.
pub struct Refusal(StatusCode, String);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        (self.0, pages::error_page(self.0, &self.1)).into_response()
    }
}

impl Viewer {
    /// Lets a change through only for an admin session whose form carried its CSRF token, from this site.
    fn may_change(&self, csrf: &str, headers: &HeaderMap) -> Result<(), Refusal> {
        let refuse = |status: StatusCode, why: &str| Err(Refusal(status, why.to_string()));
        if !same_secret(csrf, &self.session.csrf) {
            return refuse(
                StatusCode::FORBIDDEN,
                "the form's token does not match this session (reload the page and try again)",
            );
        }
        if let Some(origin) = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()) {
            let host = headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or("");
            let origin_host = origin.split_once("://").map_or(origin, |(_, h)| h);
            if origin_host != host {
                return refuse(StatusCode::FORBIDDEN, "the form came from another site");
            }
        }
        if self.session.role != Role::Admin {
            return refuse(
                StatusCode::FORBIDDEN,
                "this session is read-only (signed in with read-only credentials)",
            );
        }
        Ok(())
    }
}

#[derive(Deserialize)]
struct LoginQuery {
    token: Option<String>,
}

/// `GET /console/login?token=...`: a login link becomes a session cookie.
async fn login(State(s): S, Query(q): Query<LoginQuery>) -> Response {
    let Some((id, _)) = q
        .token
        .as_deref()
        .and_then(|t| s.console.sessions.redeem(t))
    else {
        return (StatusCode::UNAUTHORIZED, pages::signed_out()).into_response();
    };
    let cookie = format!(
        "{COOKIE}={id}; Path=/console; Max-Age={}; HttpOnly; Secure; SameSite=Strict",
        session::SESSION_TTL.as_secs()
    );
    let mut resp = Redirect::to("/console").into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    resp
}

#[derive(Deserialize)]
struct CsrfForm {
    csrf: String,
}

async fn logout(State(s): S, v: Viewer, Form(f): Form<CsrfForm>) -> Response {
    if !same_secret(&f.csrf, &v.session.csrf) {
        return (
            StatusCode::FORBIDDEN,
            pages::error_page(StatusCode::FORBIDDEN, "the form's token does not match"),
        )
            .into_response();
    }
    s.console.sessions.end(&v.id);
    let mut resp = (StatusCode::OK, pages::signed_out()).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!(
        "{COOKIE}=; Path=/console; Max-Age=0; HttpOnly; Secure; SameSite=Strict"
    )) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    resp
}

/// One node as the console shows it.
pub struct NodeRow {
    /// Its id.
    pub id: u16,
    /// Its API address.
    pub api: String,
    /// Its proxy address.
    pub proxy: String,
    /// What it answered (or why it did not).
    pub status: Result<NodeStatus, String>,
}

/// The cluster as this node gathered it for one page.
pub struct Gathered {
    /// This node.
    pub me: u16,
    /// The cluster map.
    pub cluster: ClusterMap,
    /// Every node.
    pub nodes: Vec<NodeRow>,
    /// Every instance of the nodes that answered.
    pub instances: Vec<InstanceView>,
    /// Nodes that did not answer.
    pub down: Vec<u16>,
    /// Where the endpoints live, as this node's directory knows.
    pub placements: Vec<dvs_proxy::placement::PlacementView>,
    /// Images in this node's store.
    pub images: Vec<crate::images::Image>,
    /// Whether this node can act on the cluster (it has credentials for the nodes' APIs).
    pub can_act: bool,
}

impl Console {
    /// A client of `addr` with `creds` (kept: one TLS set-up per node, not per page).
    fn client(&self, addr: &str, creds: &crate::auth::Credentials) -> NodeClient {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        clients
            .entry(addr.to_string())
            .or_insert_with(|| NodeClient::with_credentials(addr, creds))
            .clone()
    }
}

/// A client for every node of the cluster (this node through its own URL), when this node has credentials.
fn clients(s: &Api) -> Option<BTreeMap<u16, NodeClient>> {
    let creds = s.credentials.as_ref()?;
    let me = s.mgr.proxy().node().0;
    Some(
        s.mgr
            .proxy()
            .cluster()
            .nodes
            .iter()
            .map(|n| {
                let addr = if n.id == me {
                    creds.url.clone()
                } else {
                    n.api.to_string()
                };
                (n.id, s.console.client(&addr, creds))
            })
            .collect(),
    )
}

async fn gather(s: &Api) -> Gathered {
    let proxy = s.mgr.proxy();
    let me = proxy.node().0;
    let cluster = proxy.cluster();
    let clients = clients(s);
    let remote = cluster.nodes.iter().filter(|n| n.id != me).map(|n| {
        let c = clients.as_ref().and_then(|c| c.get(&n.id)).cloned();
        async move {
            let Some(c) = c else {
                return (
                    n.id,
                    Err("this node has no credentials for other nodes' APIs".to_string()),
                    Vec::new(),
                );
            };
            let asked = tokio::time::timeout(NODE_TIMEOUT, async {
                let status = c.status().await.map_err(|e| e.to_string())?;
                let instances = c.instances().await.map_err(|e| e.to_string())?;
                Ok::<_, String>((status, instances))
            })
            .await
            .unwrap_or_else(|_| Err("did not answer in time".into()));
            match asked {
                Ok((status, instances)) => (n.id, Ok(status), instances),
                Err(e) => (n.id, Err(e), Vec::new()),
            }
        }
    });
    let answers = futures_util::future::join_all(remote).await;
    let mut instances = s.mgr.list();
    let mut by_node: BTreeMap<u16, Result<NodeStatus, String>> = BTreeMap::new();
    by_node.insert(me, Ok(crate::api::node_status(s)));
    let mut down = Vec::new();
    for (id, status, list) in answers {
        if status.is_err() {
            down.push(id);
        }
        by_node.insert(id, status);
        instances.extend(list);
    }
    instances.sort_by(|a, b| (a.spec.dc, &a.spec.name).cmp(&(b.spec.dc, &b.spec.name)));
    let nodes = cluster
        .nodes
        .iter()
        .map(|n| NodeRow {
            id: n.id,
            api: n.api.to_string(),
            proxy: n.proxy.to_string(),
            status: by_node
                .remove(&n.id)
                .unwrap_or_else(|| Err("not asked".into())),
        })
        .collect();
    Gathered {
        me,
        nodes,
        instances,
        down,
        placements: proxy.placements(),
        images: s.mgr.images().list().unwrap_or_default(),
        can_act: s.credentials.is_some(),
        cluster,
    }
}

async fn overview(State(s): S, v: Viewer) -> Response {
    let g = gather(&s).await;
    let flash = s.console.sessions.take_flash(&v.id);
    pages::overview(&g, &v.session, flash.as_ref()).into_response()
}

async fn instances_fragment(State(s): S, v: Viewer) -> Response {
    let g = gather(&s).await;
    pages::instances_table(&g, &v.session).into_response()
}

/// `GET /console/rates`: the M3-IPC and LAN frames that every node's proxy has routed per DC, summed (the
/// script turns successive answers into rates).
async fn rates(State(s): S, _v: Viewer) -> Response {
    let proxy = s.mgr.proxy();
    let me = proxy.node().0;
    let mut stats = vec![proxy.stats()];
    if let Some(clients) = clients(&s) {
        let asks = clients
            .iter()
            .filter(|(id, _)| **id != me)
            .map(|(_, c)| tokio::time::timeout(NODE_TIMEOUT, c.counters()));
        for answer in futures_util::future::join_all(asks).await {
            if let Ok(Ok(st)) = answer {
                stats.push(st);
            }
        }
    }
    let mut dcs: BTreeMap<u16, (u64, u64)> = BTreeMap::new();
    for st in &stats {
        for (dc, c) in &st.dcs {
            let e = dcs.entry(*dc).or_default();
            e.0 += c.m3ipc.frames + c.lan.frames;
            e.1 += c.m3ipc.bytes + c.lan.bytes;
        }
    }
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let dcs: Vec<_> = dcs
        .into_iter()
        .map(|(dc, (frames, bytes))| serde_json::json!({ "dc": dc, "frames": frames, "bytes": bytes }))
        .collect();
    Json(serde_json::json!({ "t_ms": now_ms, "nodes": stats.len(), "dcs": dcs })).into_response()
}

/// The instance called `name` and a client of its node (None: this node has no credentials).
async fn find(s: &Api, name: &str) -> Result<(InstanceView, Option<NodeClient>), Refusal> {
    let not_found = || {
        let why = format!(
            "no instance '{}' on the nodes that answered",
            crate::validate::shown(name)
        );
        Err(Refusal(StatusCode::NOT_FOUND, why))
    };
    if crate::validate::check_name("instance name", name).is_err() {
        return not_found();
    }
    let clients = clients(s);
    let me = s.mgr.proxy().node().0;
    if let Some(v) = s.mgr.view(name) {
        return Ok((v, clients.and_then(|mut c| c.remove(&me))));
    }
    for (id, c) in clients.into_iter().flatten() {
        if id == me {
            continue;
        }
        if let Ok(Ok(v)) = tokio::time::timeout(NODE_TIMEOUT, c.instance(name)).await {
            return Ok((v, Some(c)));
        }
    }
    not_found()
}

async fn log_of(s: &Api, v: &InstanceView, c: Option<&NodeClient>) -> String {
    if v.node == s.mgr.proxy().node().0 {
        return s
            .mgr
            .logs(&v.spec.name, Some(LOG_LINES))
            .unwrap_or_default();
    }
    match c {
        Some(c) => tokio::time::timeout(NODE_TIMEOUT, c.logs(&v.spec.name, Some(LOG_LINES)))
            .await
            .map_or_else(
                |_| Err("did not answer in time".to_string()),
                |r| r.map_err(|e| e.to_string()),
            )
            .unwrap_or_else(|e| format!("(node {} did not give the log: {e})", v.node)),
        None => format!(
            "(node {}: this node has no credentials for its API)",
            v.node
        ),
    }
}

async fn instance_page(State(s): S, v: Viewer, Path(name): Path<String>) -> Response {
    let (inst, c) = match find(&s, &name).await {
        Ok(found) => found,
        Err(r) => return r.into_response(),
    };
    let log = log_of(&s, &inst, c.as_ref()).await;
    let nodes: Vec<u16> = s.mgr.proxy().cluster().nodes.iter().map(|n| n.id).collect();
    let flash = s.console.sessions.take_flash(&v.id);
    pages::instance(&inst, &log, &nodes, &v.session, flash.as_ref()).into_response()
}

async fn instance_log(State(s): S, _v: Viewer, Path(name): Path<String>) -> Response {
    match find(&s, &name).await {
        Ok((inst, c)) => {
            let log = log_of(&s, &inst, c.as_ref()).await;
            Json(serde_json::json!({ "log": log, "state": inst.state, "rev": inst.rev }))
                .into_response()
        }
        Err(r) => r.into_response(),
    }
}

/// Where the browser goes after an action: the page it came from when that is a console page, else the
/// overview.
fn back(next: Option<&str>) -> Redirect {
    match next {
        Some(p) if p.starts_with("/console") && !p.contains("//") && !p.contains('\\') => {
            Redirect::to(p)
        }
        _ => Redirect::to("/console"),
    }
}

/// Runs an action for an admin session whose form carried its token (see [`Viewer::may_change`]), keeps
/// how it went for the next page, and sends the browser there.
async fn act(
    s: &Api,
    v: &Viewer,
    headers: &HeaderMap,
    csrf: &str,
    next: Option<&str>,
    work: impl std::future::Future<Output = anyhow::Result<Vec<String>>>,
) -> Response {
    if let Err(r) = v.may_change(csrf, headers) {
        return r.into_response();
    }
    outcome(s, v, work.await);
    back(next).into_response()
}

fn outcome(s: &Api, v: &Viewer, r: anyhow::Result<Vec<String>>) {
    let flash = match r {
        Ok(lines) => Flash { ok: true, lines },
        Err(e) => Flash {
            ok: false,
            lines: vec![format!("{e:#}")],
        },
    };
    s.console.sessions.set_flash(&v.id, flash);
}

/// The instance called `name` and a client of its node, for an action.
async fn located(s: &Api, name: &str) -> anyhow::Result<(InstanceView, NodeClient)> {
    let (inst, c) = find(s, name)
        .await
        .map_err(|_| anyhow::anyhow!("no instance '{name}'"))?;
    Ok((inst, need_client(c)?))
}

fn need_client(c: Option<NodeClient>) -> anyhow::Result<NodeClient> {
    c.ok_or_else(|| {
        anyhow::anyhow!(
            "this node has no credentials for the nodes' APIs (api_tls.credentials in node.toml): the console \
             can only show the cluster"
        )
    })
}

#[derive(Deserialize)]
struct ActionForm {
    csrf: String,
    next: Option<String>,
}

async fn stop(
    State(s): S,
    v: Viewer,
    headers: HeaderMap,
    Path(name): Path<String>,
    Form(f): Form<ActionForm>,
) -> Response {
    let work = async {
        let (inst, c) = located(&s, &name).await?;
        c.stop(&inst.spec.name).await?;
        Ok(vec![format!(
            "stopped {} (node {})",
            inst.spec.name, inst.node
        )])
    };
    // The instance page of a stopped instance is gone: back to the overview.
    act(&s, &v, &headers, &f.csrf, None, work).await
}

async fn restart(
    State(s): S,
    v: Viewer,
    headers: HeaderMap,
    Path(name): Path<String>,
    Form(f): Form<ActionForm>,
) -> Response {
    let work = async {
        let (inst, c) = located(&s, &name).await?;
        c.stop(&inst.spec.name).await?;
        let started = c
            .run(&RunRequest {
                spec: inst.spec.clone(),
                takeover_gen: None,
            })
            .await?;
        Ok(vec![format!(
            "restarted {} on node {} (boot {})",
            started.spec.name, started.node, started.boots
        )])
    };
    act(&s, &v, &headers, &f.csrf, f.next.as_deref(), work).await
}

#[derive(Deserialize)]
struct MigrateForm {
    csrf: String,
    to: u16,
    next: Option<String>,
}

async fn migrate(
    State(s): S,
    v: Viewer,
    headers: HeaderMap,
    Path(name): Path<String>,
    Form(f): Form<MigrateForm>,
) -> Response {
    let work = async {
        let (inst, c) = located(&s, &name).await?;
        if inst.node == f.to {
            anyhow::bail!("{} runs on node {} already", inst.spec.name, f.to);
        }
        let moved = c.migrate(&inst.spec.name, f.to).await?;
        Ok(vec![format!(
            "migrated {} from node {} to node {}",
            inst.spec.name, inst.node, moved.to
        )])
    };
    act(&s, &v, &headers, &f.csrf, f.next.as_deref(), work).await
}

#[derive(Deserialize)]
struct RunForm {
    csrf: String,
    name: String,
    image: String,
    dc: u16,
    node: u16,
    endpoints: String,
    services: String,
    memory: Option<String>,
}

fn words(s: &str) -> impl Iterator<Item = &str> {
    s.split(|c: char| c == ',' || c.is_whitespace())
        .filter(|w| !w.is_empty())
}

async fn run(State(s): S, v: Viewer, headers: HeaderMap, Form(f): Form<RunForm>) -> Response {
    let work = async {
        let mut spec = InstanceSpec::new(f.name.trim(), f.image.trim(), f.dc);
        spec.endpoints = words(&f.endpoints)
            .map(|w| {
                w.parse::<u32>().map_err(|_| {
                    anyhow::anyhow!(
                        "endpoint '{}': expected a number",
                        crate::validate::shown(w)
                    )
                })
            })
            .collect::<anyhow::Result<_>>()?;
        spec.services = words(&f.services).map(String::from).collect();
        spec.memory = match f.memory.as_deref().map(str::trim).filter(|m| !m.is_empty()) {
            Some(m) => Some(m.parse().map_err(|_| {
                anyhow::anyhow!("memory '{}': expected MiB", crate::validate::shown(m))
            })?),
            None => None,
        };
        let c = clients(&s)
            .and_then(|mut c| c.remove(&f.node))
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "node {}: not in the cluster, or this node has no credentials",
                    f.node
                )
            })?;
        let started = c
            .run(&RunRequest {
                spec,
                takeover_gen: None,
            })
            .await?;
        Ok(vec![format!(
            "started {} on node {} in DC {} (endpoints {:?})",
            started.spec.name, started.node, started.spec.dc, started.spec.endpoints
        )])
    };
    act(&s, &v, &headers, &f.csrf, None, work).await
}

#[derive(Deserialize)]
struct ApplyForm {
    csrf: String,
    manifest: String,
    prune: Option<String>,
}

async fn apply(State(s): S, v: Viewer, headers: HeaderMap, Form(f): Form<ApplyForm>) -> Response {
    let work = async {
        let m = crate::manifest::DcManifest::parse(&f.manifest, std::path::Path::new("manifest"))?;
        if !m.images.is_empty() {
            anyhow::bail!(
                "the console applies manifests whose images are in the nodes' stores already: leave out the \
                 [[image]] tables and name images as NAME or NAME:VERSION (push them with `dvs image push`)"
            );
        }
        let nodes = clients(&s).ok_or_else(|| {
            need_client(None)
                .err()
                .unwrap_or_else(|| anyhow::anyhow!("no credentials"))
        })?;
        let g = gather(&s).await;
        let images = BTreeMap::new();
        let plan = crate::apply::Apply {
            cluster: &g.cluster,
            nodes: &nodes,
            existing: &g.instances,
            down: &g.down,
            images: &images,
            prune: f.prune.is_some(),
        };
        let mut lines = Vec::new();
        plan.run(
            &m,
            "the manifest",
            async |_: &NodeClient, img: &crate::manifest::LoadedImage, _: u16| {
                anyhow::bail!(
                    "image {}: the console does not push images",
                    img.manifest.name
                )
            },
            &mut |l| lines.push(l),
        )
        .await?;
        Ok(lines)
    };
    act(&s, &v, &headers, &f.csrf, None, work).await
}
