//! The node's part in the control plane on etcd (node.toml `etcd = {...}`; [`dvs_etcd`]): it seeds the
//! cluster from the cluster file once, joins as a member, holds its lease, follows the cluster's changes
//! into the proxy (nodes joining and leaving, DCs created and deleted, nodes whose lease lapsed), and records
//! which instance owns each endpoint, by compare-and-swap. Without `etcd` the cluster file is a static
//! directory, the embedded default, and none of this runs.

use std::sync::Arc;
use std::time::Duration;

use dvs_etcd::{ClusterState, EndpointOwner, EtcdError, Expect, Membership, Owned, Store};
use dvs_proxy::{ClusterMap, NodeInfo, Proxy};
use m3ipc_core::NodeId;
use serde::{Deserialize, Serialize};

use crate::instances::{InstanceSpec, Manager, RestartPolicy, RunRequest};

/// node.toml's `etcd = { endpoints = [...], prefix = "/dvs", lease_ttl_s = 3, proxy = "...", api = "..." }`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdSettings {
    /// The etcd members' client URLs, e.g. `["http://10.0.0.1:2379"]`.
    pub endpoints: Vec<String>,
    /// Where the cluster's keys live (one etcd can hold several clusters under different prefixes).
    #[serde(default = "EtcdSettings::default_prefix")]
    pub prefix: String,
    /// The node's lease TTL, seconds: a node whose daemon stops renewing it is dead for the others this
    /// long after (default 3).
    #[serde(default = "EtcdSettings::default_ttl")]
    pub lease_ttl_s: u64,
    /// This node's peer-link address, for a node that is not in the cluster file (one that joins).
    #[serde(default)]
    pub proxy: Option<std::net::SocketAddr>,
    /// This node's API address, for a node that is not in the cluster file.
    #[serde(default)]
    pub api: Option<std::net::SocketAddr>,
}

impl EtcdSettings {
    fn default_prefix() -> String {
        "/dvs".into()
    }

    fn default_ttl() -> u64 {
        3
    }

    /// The lease TTL.
    pub fn ttl(&self) -> Duration {
        Duration::from_secs(self.lease_ttl_s.max(1))
    }

    /// This node as the cluster should know it: its entry in the cluster file, else the addresses given here.
    pub fn me(&self, node: u16, file: &ClusterMap) -> Result<NodeInfo, String> {
        if let Some(n) = file.node(NodeId(node)) {
            return Ok(n.clone());
        }
        match (self.proxy, self.api) {
            (Some(proxy), Some(api)) => Ok(NodeInfo {
                id: node,
                proxy,
                api,
            }),
            _ => Err(format!(
                "node {node} is not in the cluster file: give its addresses as etcd.proxy and etcd.api in \
                 node.toml to join"
            )),
        }
    }
}

/// What `GET /v1/control` shows: the mode, this node's lease, the members, DCs and endpoint owners.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ControlView {
    /// `etcd`, or `static` (the cluster file; nothing else below is filled).
    pub mode: String,
    /// The etcd endpoints.
    #[serde(default)]
    pub endpoints: Vec<String>,
    /// This node's lease id.
    #[serde(default)]
    pub lease: i64,
    /// The lease TTL, seconds.
    #[serde(default)]
    pub lease_ttl_s: u64,
    /// The etcd revision of the state below.
    #[serde(default)]
    pub revision: i64,
    /// Members, with whether their lease holds.
    #[serde(default)]
    pub members: Vec<MemberView>,
    /// Endpoint owners.
    #[serde(default)]
    pub owners: Vec<OwnerView>,
}

/// A member of the cluster.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MemberView {
    /// The node.
    pub node: NodeInfo,
    /// Its lease holds.
    pub alive: bool,
}

/// Who owns one endpoint.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct OwnerView {
    /// DC.
    pub dc: u16,
    /// Endpoint.
    pub ep: u32,
    /// Owning node.
    pub node: u16,
    /// Owning instance.
    pub instance: String,
    /// Binding generation.
    pub gen: u64,
    /// etcd revision of the ownership.
    pub revision: i64,
}

/// The node's handle on the control plane.
#[derive(Debug)]
pub struct ControlPlane {
    node: u16,
    settings: EtcdSettings,
    store: Store,
    membership: Membership,
    watch: dvs_etcd::ClusterWatch,
}

impl ControlPlane {
    /// Connects, seeds the cluster from `file` if etcd has none yet, joins as `me` and takes a lease.
    pub async fn join(
        settings: &EtcdSettings,
        me: &NodeInfo,
        file: &ClusterMap,
    ) -> Result<ControlPlane, EtcdError> {
        let store = Store::connect(&settings.endpoints, &settings.prefix).await?;
        if store.seed(file).await? {
            tracing::info!("etcd: the cluster was seeded from the cluster file");
        }
        store.join(me).await?;
        let membership = store.membership(me.id, settings.ttl()).await?;
        let watch = store.watch().await?;
        Ok(ControlPlane {
            node: me.id,
            settings: settings.clone(),
            store,
            membership,
            watch,
        })
    }

    /// The store (for DC and node changes through the API).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The cluster now, as etcd says.
    pub fn cluster(&self) -> ClusterMap {
        self.watch.current().map()
    }

    /// True once this node's lease is lost.
    pub fn is_lost(&self) -> bool {
        self.membership.is_lost()
    }

    /// Leaves the cluster's live members now (the lease is revoked; the node stays a member).
    pub async fn leave(&self) -> Result<(), EtcdError> {
        self.membership.leave().await
    }

    /// Resolves when this node's lease is lost.
    pub async fn lost(&self) {
        self.membership.lost().await
    }

    /// Applies every change of the cluster to `proxy` until the watch ends (a task the daemon aborts).
    pub fn follow(&self, proxy: Proxy) -> tokio::task::JoinHandle<()> {
        let mut rx = self.watch.subscribe();
        let me = self.node;
        tokio::spawn(async move {
            let mut applied: Option<ClusterState> = None;
            loop {
                let state = rx.borrow_and_update().clone();
                let same_map = applied.as_ref().is_some_and(|a| a.map() == state.map());
                if !same_map {
                    if let Err(e) = proxy.set_cluster(state.map()).await {
                        tracing::error!("etcd: the cluster without this node: {e}");
                    }
                }
                for n in state.nodes.keys().filter(|&&n| n != me) {
                    proxy.set_alive(NodeId(*n), state.alive.contains(n)).await;
                }
                applied = Some(state);
                if rx.changed().await.is_err() {
                    return;
                }
            }
        })
    }

    /// Records `instance` of this node as the owner of `eps` of `dc` with generation `gen`. An endpoint
    /// nobody owns is claimed; one this node owns (a restart, a restore) is claimed again; one a dead node
    /// owns is taken over; one another live node owns is refused ([`EtcdError::Conflict`]) unless
    /// `takeover` (a migration, which that node asked for). On an error, what was claimed is released.
    pub async fn claim(
        &self,
        dc: u16,
        eps: &[u32],
        instance: &str,
        gen: u64,
        takeover: bool,
    ) -> Result<Vec<Owned>, EtcdError> {
        if self.membership.is_lost() {
            return Err(EtcdError::LeaseLost(self.node));
        }
        let owner = EndpointOwner {
            node: self.node,
            instance: instance.to_string(),
            gen,
        };
        let mut done = vec![];
        for &ep in eps {
            match self.claim_one(dc, ep, &owner, takeover).await {
                Ok(o) => done.push((ep, o)),
                Err(e) => {
                    for (ep, o) in done {
                        let _ = self.store.release(dc, ep, o.revision).await;
                    }
                    return Err(e);
                }
            }
        }
        Ok(done.into_iter().map(|(_, o)| o).collect())
    }

    async fn claim_one(
        &self,
        dc: u16,
        ep: u32,
        owner: &EndpointOwner,
        takeover: bool,
    ) -> Result<Owned, EtcdError> {
        let alive = self.watch.current().alive;
        let expect = match self.store.owner(dc, ep).await? {
            None => Expect::Absent,
            Some(cur) if cur.owner.node == self.node || takeover => Expect::Revision(cur.revision),
            Some(cur) if !alive.contains(&cur.owner.node) => Expect::DeadOwner {
                revision: cur.revision,
                node: cur.owner.node,
            },
            Some(cur) => {
                return Err(EtcdError::Conflict {
                    dc,
                    ep,
                    current: Some(cur),
                })
            }
        };
        self.store.claim(dc, ep, owner, expect).await
    }

    /// Gives up the endpoints of `dc` that `instance` of this node still owns (another owner — after a
    /// migration or a takeover — keeps them).
    pub async fn release(&self, dc: u16, eps: &[u32], instance: &str) {
        for &ep in eps {
            match self.store.owner(dc, ep).await {
                Ok(Some(cur)) if cur.owner.node == self.node && cur.owner.instance == instance => {
                    if let Err(e) = self.store.release(dc, ep, cur.revision).await {
                        tracing::warn!("etcd: releasing endpoint {ep} of DC {dc}: {e}");
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::warn!("etcd: releasing endpoint {ep} of DC {dc}: {e}"),
            }
        }
    }

    /// The control plane as `GET /v1/control` shows it.
    pub async fn view(&self) -> Result<ControlView, EtcdError> {
        let state = self.watch.current();
        let owners = self.store.owners().await?;
        Ok(ControlView {
            mode: "etcd".into(),
            endpoints: self.settings.endpoints.clone(),
            lease: self.membership.lease(),
            lease_ttl_s: self.membership.ttl().as_secs(),
            revision: state.revision,
            members: state
                .nodes
                .values()
                .map(|n| MemberView {
                    node: n.clone(),
                    alive: state.alive.contains(&n.id),
                })
                .collect(),
            owners: owners
                .into_iter()
                .map(|(dc, ep, o)| OwnerView {
                    dc,
                    ep,
                    node: o.owner.node,
                    instance: o.owner.instance,
                    gen: o.owner.gen,
                    revision: o.revision,
                })
                .collect(),
        })
    }

    /// Waits (at most `timeout`) until the cluster satisfies `pred`.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        pred: impl FnMut(&ClusterState) -> bool,
    ) -> Option<ClusterState> {
        self.watch.wait_for(timeout, pred).await
    }
}

/// After a (re)start: claims the endpoints of every instance the node restored. An instance whose
/// endpoints another live node took over while this node was away (dead or cut off) is stopped here: the
/// other copy is the one that counts.
/// The names of `specs` (instances recorded on this node's disk) whose endpoints another node owns in etcd now:
/// they moved while this node was away, and must not run here again (restoring them first and stopping them
/// after the claim failed would make a second copy for a moment, and hide the new owner from this proxy).
pub async fn moved_away(cp: &ControlPlane, specs: &[InstanceSpec]) -> Vec<String> {
    let mut moved = Vec::new();
    for spec in specs {
        for &ep in &spec.endpoints {
            match cp.store.owner(spec.dc, ep).await {
                Ok(Some(o)) if o.owner.node != cp.node => {
                    moved.push(spec.name.clone());
                    break;
                }
                Ok(_) => {}
                Err(e) => tracing::warn!("etcd: owner of endpoint {ep} of DC {}: {e}", spec.dc),
            }
        }
    }
    moved
}

/// Claims the endpoints of every instance of this node again (after a restart); one whose endpoint another
/// node took is stopped here.
pub async fn reconcile(cp: &ControlPlane, mgr: &crate::instances::Manager) {
    for v in mgr.list() {
        let spec = &v.spec;
        match cp
            .claim(spec.dc, &spec.endpoints, &spec.name, v.gen, false)
            .await
        {
            Ok(_) => {}
            Err(EtcdError::Conflict { ep, current, .. }) => {
                let owner =
                    current.map(|c| format!("node {} ({})", c.owner.node, c.owner.instance));
                tracing::warn!(
                    "instance '{}': endpoint {ep} is owned by {} now: stopping it here",
                    spec.name,
                    owner.unwrap_or_else(|| "another node".into())
                );
                if let Err(e) = mgr.stop(&spec.name).await {
                    tracing::warn!("stopping '{}': {e}", spec.name);
                }
                cp.forget(&spec.name).await;
            }
            Err(e) => tracing::warn!("instance '{}': claiming its endpoints: {e}", spec.name),
        }
    }
}

impl ControlPlane {
    /// Records in etcd that `spec` runs on this node (what a survivor needs to run it again).
    pub async fn record(&self, spec: &InstanceSpec) {
        let json = serde_json::to_vec(spec).unwrap_or_default();
        if let Err(e) = self.store.put_instance(self.node, &spec.name, &json).await {
            tracing::warn!("etcd: recording instance '{}': {e}", spec.name);
        }
    }

    /// Forgets instance `name` of this node in etcd.
    pub async fn forget(&self, name: &str) {
        if let Err(e) = self.store.delete_instance(self.node, name).await {
            tracing::warn!("etcd: forgetting instance '{name}': {e}");
        }
    }

    /// Runs, until aborted, what makes a dead node's instances run again: on every change of the cluster,
    /// for each member whose lease is gone, the instances recorded on it that may move (restart policy
    /// `on-failure` or `always`, and no volumes: a volume stays on its node's disk) are started again on one
    /// surviving node of their DC — the one their name picks among the DC's live nodes, which takes the
    /// record over by compare-and-swap, so that one survivor runs each.
    pub fn rescue(self: &Arc<Self>, mgr: Arc<Manager>) -> tokio::task::JoinHandle<()> {
        // Weak: the task must not keep the membership (and so the lease) alive after the daemon is gone.
        let weak = Arc::downgrade(self);
        let mut rx = self.watch.subscribe();
        tokio::spawn(async move {
            loop {
                let state = rx.borrow_and_update().clone();
                let Some(cp) = weak.upgrade() else { return };
                for dead in state.nodes.keys().filter(|n| !state.alive.contains(n)) {
                    if *dead != cp.node {
                        cp.rescue_from(&state, *dead, &mgr).await;
                    }
                }
                drop(cp);
                if rx.changed().await.is_err() {
                    return;
                }
            }
        })
    }

    async fn rescue_from(&self, state: &ClusterState, dead: u16, mgr: &Arc<Manager>) {
        let records = match self.store.instances_on(dead).await {
            Ok(r) => r,
            Err(e) => return tracing::warn!("etcd: instances of dead node {dead}: {e}"),
        };
        for (name, json, revision) in records {
            let Ok(spec) = serde_json::from_slice::<InstanceSpec>(&json) else {
                tracing::warn!("etcd: instance '{name}' of node {dead}: unreadable record");
                continue;
            };
            if spec.restart == RestartPolicy::Never || !spec.volumes.is_empty() {
                continue;
            }
            let mut survivors: Vec<u16> = state
                .dcs
                .get(&spec.dc)
                .map(|d| {
                    d.nodes
                        .iter()
                        .copied()
                        .filter(|n| state.alive.contains(n))
                        .collect()
                })
                .unwrap_or_default();
            survivors.sort_unstable();
            let Some(&chosen) = survivors.get(pick(&name, survivors.len())) else {
                continue;
            };
            if chosen != self.node || mgr.view(&name).is_some() {
                continue;
            }
            match self
                .store
                .move_instance(dead, &name, revision, self.node, &json)
                .await
            {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => {
                    tracing::warn!("etcd: taking over instance '{name}' of node {dead}: {e}");
                    continue;
                }
            }
            let gen = u64::try_from(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_micros(),
            )
            .unwrap_or(u64::MAX);
            let req = RunRequest {
                spec: spec.clone(),
                takeover_gen: Some(gen),
            };
            match mgr.run(req) {
                Ok(v) => {
                    if let Err(e) = self
                        .claim(spec.dc, &spec.endpoints, &name, v.gen, false)
                        .await
                    {
                        tracing::warn!(
                            "instance '{name}' from dead node {dead}: its endpoints: {e}"
                        );
                        let _ = mgr.stop(&name).await;
                        self.forget(&name).await;
                        continue;
                    }
                    tracing::info!("instance '{name}' of dead node {dead} runs here now");
                }
                Err(e) => {
                    tracing::warn!("instance '{name}' of dead node {dead} could not run here: {e}");
                    self.forget(&name).await;
                }
            }
        }
    }
}

/// Which of `n` candidates takes the instance `name` (the same answer on every node).
fn pick(name: &str, n: usize) -> usize {
    // FNV-1a: stable across runs and builds, unlike the std hasher.
    let h = name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    usize::try_from(h % n.max(1) as u64).unwrap_or(0)
}
