//! An HTTP client of the node API, used by the CLI and by nodes talking to each other (migration).

use std::time::Duration;

use anyhow::{anyhow, Context};
use dvs_proxy::placement::PlacementView;
use dvs_proxy::switch::Stats;
use dvs_proxy::ClusterMap;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::auth::Credentials;
use crate::images::{Image, Manifest};
use crate::instances::{InstanceView, RunRequest};
use crate::volumes::VolumeView;

/// `GET /v1/node`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeStatus {
    /// Node id.
    pub node: u16,
    /// dvs version.
    pub version: String,
    /// Seconds since the daemon started.
    pub uptime_s: u64,
    /// VM backend.
    pub backend: String,
    /// Peer links: node id → up.
    pub peers: std::collections::BTreeMap<u16, bool>,
    /// Instances on this node.
    pub instances: usize,
    /// Images on this node.
    pub images: usize,
    /// The largest image a push may upload, in bytes (`max_image`; absent from older nodes).
    #[serde(default)]
    pub max_image: Option<u64>,
}

/// `POST /v1/instances/{name}/migrate`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MigrateRequest {
    /// Destination node.
    pub to: u16,
}

/// The result of a migration.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MigrateResult {
    /// Source node.
    pub from: u16,
    /// Destination node.
    pub to: u16,
    /// Binding generation at the destination.
    pub gen: u64,
    /// Milliseconds from request to the old instance stopped.
    pub took_ms: u64,
    /// Calls still in progress at the old place when it moved (answered with Migrated).
    pub refused_in_flight: usize,
}

/// An error answer of the API: `{"code": "...", "message": "..."}`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ApiErrorBody {
    /// A stable code: unauthenticated (401), forbidden (403), not_found, endpoint_taken, name_taken,
    /// image_taken, dc, image, invalid, too_large, timeout, unreachable, handover, volume_attached, volume_size,
    /// volume_io, internal.
    pub code: String,
    /// What went wrong, for people.
    #[serde(alias = "error")]
    pub message: String,
}

/// Why a call to a node failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The node did not answer.
    #[error("node at {url} is unreachable: {source}")]
    Unreachable {
        /// The node's URL.
        url: String,
        /// Why.
        source: reqwest::Error,
    },
    /// The node answered with an error.
    #[error("{body_error} (node {url}, HTTP {status})")]
    Api {
        /// The node's URL.
        url: String,
        /// HTTP status.
        status: u16,
        /// The error code.
        code: String,
        /// The message.
        body_error: String,
    },
    /// The answer was not what the API promises.
    #[error("node at {url} answered something unreadable: {why}")]
    BadAnswer {
        /// The node's URL.
        url: String,
        /// Why.
        why: String,
    },
}

impl ClientError {
    /// The API error code, if the node answered.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Api { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// A client of one node.
#[derive(Clone, Debug)]
pub struct NodeClient {
    base: String,
    http: reqwest::Client,
}

/// How long the client keeps an idle connection (below the node's 30 s header timeout, so that the node
/// never closes one the client is about to reuse).
const IDLE: Duration = Duration::from_secs(10);

/// reqwest (built without a crypto provider of its own) takes the process's default: `ring`, as everywhere in
/// dvs. A provider installed earlier by someone else stays.
fn ensure_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

impl NodeClient {
    /// A client of the node at `addr` (`host:port`, or a URL) with the credentials of
    /// [`Credentials::discover`] (`$DVS_CREDENTIALS`, else the default credential file); without any, a plain
    /// HTTP client, which a node (TLS only) refuses: the error says so.
    pub fn new(addr: &str) -> NodeClient {
        match Credentials::discover(None) {
            Ok(Some((_, c))) => NodeClient::with_credentials(addr, &c),
            Ok(None) => NodeClient::plain(addr),
            Err(e) => {
                tracing::warn!("{e}: talking to {addr} without credentials");
                NodeClient::plain(addr)
            }
        }
    }

    /// A client of the node at `addr` (`host:port` or `https://host:port`) that trusts the CA of `creds` and
    /// presents its client certificate.
    pub fn with_credentials(addr: &str, creds: &Credentials) -> NodeClient {
        let host = addr
            .trim_start_matches("https://")
            .trim_start_matches("http://")
            .trim_end_matches('/');
        let base = format!("https://{host}");
        ensure_crypto_provider();
        let builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_secs(600))
            .pool_idle_timeout(IDLE);
        let http = match creds.client_config() {
            Ok(tls) => builder.tls_backend_preconfigured(tls).build(),
            // Loaded credentials have been checked already; a client that fails says why on every call.
            Err(e) => {
                tracing::warn!("credentials '{}': {e}", creds.name);
                builder.https_only(true).build()
            }
        }
        .unwrap_or_default();
        NodeClient { base, http }
    }

    /// A client without TLS (`http://`): for a node behind something that terminates TLS, and to show that a
    /// node refuses plain HTTP.
    pub fn plain(addr: &str) -> NodeClient {
        let host = addr.trim_start_matches("http://").trim_end_matches('/');
        ensure_crypto_provider();
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_secs(600))
            .pool_idle_timeout(IDLE)
            .build()
            .unwrap_or_default();
        NodeClient {
            base: format!("http://{host}"),
            http,
        }
    }

    /// The node's base URL.
    pub fn url(&self) -> &str {
        &self.base
    }

    async fn answer<T: DeserializeOwned>(
        &self,
        r: Result<reqwest::Response, reqwest::Error>,
    ) -> Result<T, ClientError> {
        let url = self.base.clone();
        let resp = r.map_err(|source| ClientError::Unreachable {
            url: url.clone(),
            source,
        })?;
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .map_err(|source| ClientError::Unreachable {
                url: url.clone(),
                source,
            })?;
        if !status.is_success() {
            let body: ApiErrorBody = serde_json::from_slice(&bytes).unwrap_or(ApiErrorBody {
                message: String::from_utf8_lossy(&bytes).into_owned(),
                code: "internal".into(),
            });
            return Err(ClientError::Api {
                url,
                status: status.as_u16(),
                code: body.code,
                body_error: body.message,
            });
        }
        serde_json::from_slice(&bytes).map_err(|e| ClientError::BadAnswer {
            url,
            why: e.to_string(),
        })
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.answer(self.http.get(format!("{}{path}", self.base)).send().await)
            .await
    }

    /// GET any API path as JSON.
    pub async fn get_json(&self, path: &str) -> Result<serde_json::Value, ClientError> {
        self.get(path).await
    }

    /// POST `body` as JSON to an API path; the answer as JSON.
    pub async fn post_json<B: serde::Serialize>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<serde_json::Value, ClientError> {
        let url = format!("{}{path}", self.base);
        self.answer(self.http.post(url).json(body).send().await)
            .await
    }

    /// DELETE an API path; the answer as JSON.
    pub async fn delete_json(&self, path: &str) -> Result<serde_json::Value, ClientError> {
        let url = format!("{}{path}", self.base);
        self.answer(self.http.delete(url).send().await).await
    }

    /// `GET /v1/node`.
    pub async fn status(&self) -> Result<NodeStatus, ClientError> {
        self.get("/v1/node").await
    }

    /// `GET /v1/cluster`.
    pub async fn cluster(&self) -> Result<ClusterMap, ClientError> {
        self.get("/v1/cluster").await
    }

    /// `GET /v1/directory`.
    pub async fn directory(&self) -> Result<Vec<PlacementView>, ClientError> {
        self.get("/v1/directory").await
    }

    /// `GET /v1/counters`.
    pub async fn counters(&self) -> Result<Stats, ClientError> {
        self.get("/v1/counters").await
    }

    /// `GET /v1/images`.
    pub async fn images(&self) -> Result<Vec<Image>, ClientError> {
        self.get("/v1/images").await
    }

    /// `GET /v1/images/{reference}` (the node re-hashes it).
    pub async fn image(&self, reference: &str) -> Result<ImageCheck, ClientError> {
        self.get(&format!("/v1/images/{reference}")).await
    }

    /// `PUT /v1/images/{sha256}` with a body that reports progress as it is read.
    pub async fn push_image(
        &self,
        manifest: &Manifest,
        body: reqwest::Body,
    ) -> Result<Image, ClientError> {
        let json = serde_json::to_string(manifest).map_err(|e| ClientError::BadAnswer {
            url: self.base.clone(),
            why: e.to_string(),
        })?;
        let r = self
            .http
            .put(format!("{}/v1/images/{}", self.base, manifest.sha256))
            .header("x-dvs-manifest", json)
            .body(body)
            .send()
            .await;
        self.answer(r).await
    }

    /// `GET /v1/instances`.
    pub async fn instances(&self) -> Result<Vec<InstanceView>, ClientError> {
        self.get("/v1/instances").await
    }

    /// `GET /v1/instances/{name}`.
    pub async fn instance(&self, name: &str) -> Result<InstanceView, ClientError> {
        self.get(&format!("/v1/instances/{name}")).await
    }

    /// `GET /v1/instances/{name}?wait_after=REV&timeout_ms=N`: the instance as soon as its revision is above
    /// `after`, or as it is after `timeout` (the node caps it at 60 s).
    pub async fn instance_after(
        &self,
        name: &str,
        after: u64,
        timeout: Duration,
    ) -> Result<InstanceView, ClientError> {
        self.get(&format!(
            "/v1/instances/{name}?wait_after={after}&timeout_ms={}",
            timeout.as_millis()
        ))
        .await
    }

    /// Waits until instance `name` satisfies `pred` (following its revisions, no polling), or `timeout`
    /// passes: the last view seen, and whether it satisfied `pred`.
    pub async fn wait_instance(
        &self,
        name: &str,
        timeout: Duration,
        pred: impl Fn(&InstanceView) -> bool,
    ) -> Result<(InstanceView, bool), ClientError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut v = self.instance(name).await?;
        loop {
            if pred(&v) {
                return Ok((v, true));
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Ok((v, false));
            }
            v = self.instance_after(name, v.rev, left).await?;
        }
    }

    /// `POST /v1/instances`.
    pub async fn run(&self, req: &RunRequest) -> Result<InstanceView, ClientError> {
        self.answer(
            self.http
                .post(format!("{}/v1/instances", self.base))
                .json(req)
                .send()
                .await,
        )
        .await
    }

    /// `DELETE /v1/instances/{name}`.
    pub async fn stop(&self, name: &str) -> Result<serde_json::Value, ClientError> {
        self.answer(
            self.http
                .delete(format!("{}/v1/instances/{name}", self.base))
                .send()
                .await,
        )
        .await
    }

    /// `GET /v1/instances/{name}/logs`.
    pub async fn logs(&self, name: &str, tail: Option<usize>) -> Result<String, ClientError> {
        self.log_read(name, tail, None, None)
            .await
            .map(|(log, _)| log)
    }

    /// `GET /v1/instances/{name}/logs` with a query: the last `tail` lines of what came after `after` (a
    /// cursor of an earlier answer) or since `since_ms` (Unix ms); and the cursor to follow on from.
    pub async fn log_read(
        &self,
        name: &str,
        tail: Option<usize>,
        since_ms: Option<u64>,
        after: Option<&str>,
    ) -> Result<(String, String), ClientError> {
        let mut q = Vec::new();
        if let Some(t) = tail {
            q.push(format!("tail={t}"));
        }
        if let Some(s) = since_ms {
            q.push(format!("since_ms={s}"));
        }
        if let Some(a) = after {
            q.push(format!("after={a}"));
        }
        let q = if q.is_empty() {
            String::new()
        } else {
            format!("?{}", q.join("&"))
        };
        let v: serde_json::Value = self.get(&format!("/v1/instances/{name}/logs{q}")).await?;
        Ok((
            v["log"].as_str().unwrap_or_default().to_string(),
            v["cursor"].as_str().unwrap_or_default().to_string(),
        ))
    }

    /// `GET /v1/volumes`.
    pub async fn volumes(&self) -> Result<Vec<VolumeView>, ClientError> {
        self.get("/v1/volumes").await
    }

    /// `DELETE /v1/volumes/{dc}/{name}`: the volume as it was.
    pub async fn remove_volume(&self, dc: u16, name: &str) -> Result<VolumeView, ClientError> {
        let url = format!("{}/v1/volumes/{dc}/{}", self.base, percent(name));
        self.answer(self.http.delete(url).send().await).await
    }

    /// `POST /v1/instances/{name}/migrate`.
    pub async fn migrate(&self, name: &str, to: u16) -> Result<MigrateResult, ClientError> {
        let r = self
            .http
            .post(format!("{}/v1/instances/{name}/migrate", self.base))
            .json(&MigrateRequest { to })
            .send()
            .await;
        self.answer(r).await
    }
}

/// `GET /v1/images/{reference}`: the image and whether its bytes still hash right.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ImageCheck {
    /// The image.
    pub image: Image,
    /// True if the stored kernel re-hashes to its sha256.
    pub verified: bool,
}

/// `s` with every byte but `[A-Za-z0-9-_.~]` percent-encoded, as one URL path segment (so a name the node
/// will refuse, `../x`, reaches it as it is instead of changing the path).
fn percent(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Turns a client error into an `anyhow` error naming the operation.
pub fn ctx<T>(r: Result<T, ClientError>, what: &str) -> anyhow::Result<T> {
    r.map_err(|e| anyhow!(e)).with_context(|| what.to_string())
}
