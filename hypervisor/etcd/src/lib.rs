//! # dvs-etcd — the cluster's shared state on etcd
//!
//! Where nodes, DCs, membership and endpoint ownership live when a cluster runs on etcd (the static cluster
//! file stays the one-machine embedded default). One [`Store`] per node daemon; every value is JSON under a
//! prefix (default `/dvs`):
//!
//! | key | value | life |
//! |---|---|---|
//! | `{prefix}/nodes/{id}` | [`NodeInfo`] | from `join` to `remove`: the cluster's members |
//! | `{prefix}/alive/{id}` | the lease id | put with the node's lease ([`Membership`]): gone when it lapses |
//! | `{prefix}/dcs/{id}` | [`DcInfo`] | from `create_dc` to `delete_dc` |
//! | `{prefix}/endpoints/{dc}/{ep}` | [`EndpointOwner`] | from the first claim to the release |
//! | `{prefix}/instances/{node}/{name}` | the instance's spec (the daemon's JSON) | while it runs there |
//! | `{prefix}/seeded` | `true` | the cluster was seeded from a cluster file once |
//!
//! Ids are zero-padded in keys so that a prefix range lists them in order. Ownership changes are
//! transactions that compare the key's revision ([`Expect`]): two claimants never both win, and a node takes
//! over a dead node's endpoint only while that node's `alive` key is absent. [`ClusterWatch`] keeps a current
//! [`ClusterState`] from an etcd watch, so that proxies learn changes from events, not from polling.
#![warn(missing_docs)]

mod health;
pub mod member;
mod membership;
mod watch;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

pub use dvs_proxy::{ClusterMap, DcInfo, NodeInfo};
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, KeyValue, PutOptions, Txn, TxnOp,
};
use serde::{Deserialize, Serialize};

pub use membership::Membership;
pub use watch::ClusterWatch;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    /// etcd could not be reached or refused the request.
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    /// etcd did not answer in time.
    #[error("etcd at {endpoints}: no answer within {timeout:?}")]
    Timeout {
        /// The endpoints tried.
        endpoints: String,
        /// How long we waited.
        timeout: Duration,
    },
    /// A value under our prefix is not what dvs writes there.
    #[error("etcd key {key}: {why}")]
    BadValue {
        /// The key.
        key: String,
        /// What is wrong.
        why: String,
    },
    /// The node id is taken by another node (other addresses).
    #[error("node {0} is already a member with other addresses")]
    NodeTaken(u16),
    /// The node is not a member.
    #[error("node {0} is not a member of the cluster")]
    NoSuchNode(u16),
    /// The node is alive: drain it and stop its daemon before removing it.
    #[error("node {0} is alive (its lease holds): stop its daemon before removing it")]
    NodeAlive(u16),
    /// A DC with this id or name exists.
    #[error("DC {0} exists")]
    DcTaken(String),
    /// No DC with this id.
    #[error("no DC {0}")]
    NoSuchDc(u16),
    /// The DC still has endpoints owned by instances.
    #[error("DC {dc} still has {endpoints} endpoint(s) owned by instances: stop them first")]
    DcInUse {
        /// The DC.
        dc: u16,
        /// How many endpoints it has.
        endpoints: usize,
    },
    /// The DC names a node that is not a member.
    #[error("DC {dc} names node {node}, which is not a member")]
    DcNode {
        /// The DC.
        dc: u16,
        /// The unknown node.
        node: u16,
    },
    /// An ownership change lost its race: the endpoint is not as the caller expected.
    #[error("endpoint {ep} of DC {dc}: ownership changed (now {current:?})")]
    Conflict {
        /// The DC.
        dc: u16,
        /// The endpoint.
        ep: u32,
        /// Who owns it now, if anyone.
        current: Option<Owned>,
    },
    /// Our lease is gone: this node is no longer a live member and must not act as one.
    #[error("the lease of node {0} lapsed")]
    LeaseLost(u16),
}

/// Who owns an endpoint: the node and instance serving it and the binding generation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointOwner {
    /// The node.
    pub node: u16,
    /// The instance on that node.
    pub instance: String,
    /// The binding generation (grows with every move).
    pub gen: u64,
}

/// An owner as stored, with the revision of its key (what the next change must compare against).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owned {
    /// The owner.
    pub owner: EndpointOwner,
    /// The key's modification revision.
    pub revision: i64,
}

/// What an ownership change expects the endpoint's key to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// Nobody owns it.
    Absent,
    /// It is as it was at this revision (a handover by the owner, or by one who read it).
    Revision(i64),
    /// It is as it was at `revision`, and its owner `node` is dead (its `alive` key is gone): a takeover.
    DeadOwner {
        /// The revision read.
        revision: i64,
        /// The owner's node.
        node: u16,
    },
}

/// The cluster as etcd holds it at one revision.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterState {
    /// Members, by id.
    pub nodes: BTreeMap<u16, NodeInfo>,
    /// Members whose lease holds.
    pub alive: BTreeSet<u16>,
    /// DCs, by id.
    pub dcs: BTreeMap<u16, DcInfo>,
    /// The etcd revision this state is at.
    pub revision: i64,
}

impl ClusterState {
    /// The nodes and DCs as a cluster map (what the proxy routes by).
    pub fn map(&self) -> ClusterMap {
        ClusterMap {
            nodes: self.nodes.values().cloned().collect(),
            dcs: self.dcs.values().cloned().collect(),
        }
    }

    /// Applies a put (`value`: Some) or delete of `key` (relative to the prefix). Keys of other kinds are
    /// ignored; a value that does not decode is an error (and changes nothing).
    fn apply(&mut self, key: &str, value: Option<&[u8]>) -> Result<(), EtcdError> {
        let bad = |why: String| EtcdError::BadValue {
            key: key.to_string(),
            why,
        };
        let mut parts = key.split('/');
        let (kind, id) = (parts.next(), parts.next().map(str::parse::<u16>));
        let id = match (kind, id) {
            (Some("nodes" | "alive" | "dcs"), Some(Ok(id))) => id,
            (Some("nodes" | "alive" | "dcs"), _) => return Err(bad("not a 16-bit id".into())),
            _ => return Ok(()),
        };
        match (kind, value) {
            (Some("nodes"), Some(v)) => {
                let n: NodeInfo = serde_json::from_slice(v).map_err(|e| bad(e.to_string()))?;
                if n.id != id {
                    return Err(bad(format!("holds node {}", n.id)));
                }
                self.nodes.insert(id, n);
            }
            (Some("nodes"), None) => {
                self.nodes.remove(&id);
            }
            (Some("alive"), Some(_)) => {
                self.alive.insert(id);
            }
            (Some("alive"), None) => {
                self.alive.remove(&id);
            }
            (Some("dcs"), Some(v)) => {
                let d: DcInfo = serde_json::from_slice(v).map_err(|e| bad(e.to_string()))?;
                if d.id != id {
                    return Err(bad(format!("holds DC {}", d.id)));
                }
                self.dcs.insert(id, d);
            }
            (Some("dcs"), None) => {
                self.dcs.remove(&id);
            }
            _ => {}
        }
        Ok(())
    }
}

/// How long one request to etcd may take before it is an error.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// A node daemon's handle on the cluster's state in etcd.
#[derive(Clone)]
pub struct Store {
    client: Client,
    prefix: String,
    endpoints: String,
    /// Takes members that do not answer out of the client's balancer (`health.rs`).
    _health: Option<std::sync::Arc<health::Health>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Store({} at {})", self.prefix, self.endpoints)
    }
}

fn node_key(id: u16) -> String {
    format!("nodes/{id:05}")
}

fn alive_key(id: u16) -> String {
    format!("alive/{id:05}")
}

fn dc_key(id: u16) -> String {
    format!("dcs/{id:05}")
}

fn instance_key(node: u16, name: &str) -> String {
    format!("instances/{node:05}/{name}")
}

fn endpoint_key(dc: u16, ep: u32) -> String {
    format!("endpoints/{dc:05}/{ep:010}")
}

impl Store {
    /// Connects to the etcd `endpoints` (`http://host:port`), keeping keys under `prefix` (e.g. `/dvs`).
    pub async fn connect(endpoints: &[String], prefix: &str) -> Result<Store, EtcdError> {
        let opts = ConnectOptions::new()
            .with_connect_timeout(REQUEST_TIMEOUT)
            .with_timeout(REQUEST_TIMEOUT)
            .with_keep_alive(Duration::from_secs(1), Duration::from_secs(2));
        let joined = endpoints.join(",");
        let client = tokio::time::timeout(REQUEST_TIMEOUT, Client::connect(endpoints, Some(opts)))
            .await
            .map_err(|_| EtcdError::Timeout {
                endpoints: joined.clone(),
                timeout: REQUEST_TIMEOUT,
            })??;
        let store = Store {
            _health: health::watch(client.clone(), endpoints.to_vec()),
            client,
            prefix: prefix.trim_end_matches('/').to_string(),
            endpoints: joined,
        };
        // Connecting is lazy: ask, so that a wrong address is an error here. A member that is down may take
        // the first asks until the health task has taken it out of the balancer.
        let mut tries = 0;
        loop {
            match store
                .client
                .kv_client()
                .get(store.key("seeded"), None)
                .await
            {
                Ok(_) => return Ok(store),
                Err(e) if tries >= 4 || endpoints.len() < 2 => return Err(e.into()),
                Err(_) => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(600)).await;
                }
            }
        }
    }

    fn key(&self, rel: &str) -> String {
        format!("{}/{rel}", self.prefix)
    }

    /// `key` relative to the prefix, if it is under it.
    fn rel<'k>(&self, key: &'k [u8]) -> Option<&'k str> {
        std::str::from_utf8(key)
            .ok()?
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix('/')
    }

    /// Writes `map`'s nodes and DCs if the cluster was never seeded; true if it did. A cluster that exists
    /// in etcd is the truth from then on: the file is not read into it again.
    pub async fn seed(&self, map: &ClusterMap) -> Result<bool, EtcdError> {
        let mut ops = vec![TxnOp::put(self.key("seeded"), "true", None)];
        for n in &map.nodes {
            ops.push(TxnOp::put(self.key(&node_key(n.id)), json(n), None));
        }
        for d in &map.dcs {
            ops.push(TxnOp::put(self.key(&dc_key(d.id)), json(d), None));
        }
        let txn = Txn::new()
            .when([Compare::create_revision(
                self.key("seeded"),
                CompareOp::Equal,
                0,
            )])
            .and_then(ops);
        Ok(self.client.kv_client().txn(txn).await?.succeeded())
    }

    /// The cluster's nodes, live members and DCs now.
    pub async fn state(&self) -> Result<ClusterState, EtcdError> {
        // Only what the state is made of (not the endpoint owners and instance records under the same
        // prefix), in one transaction so that the three ranges are read at one revision.
        let ranges = ["nodes/", "alive/", "dcs/"]
            .map(|r| TxnOp::get(self.key(r), Some(GetOptions::new().with_prefix())));
        let resp = self
            .client
            .kv_client()
            .txn(Txn::new().and_then(ranges))
            .await?;
        let mut state = ClusterState {
            revision: resp.header().map_or(0, |h| h.revision()),
            ..ClusterState::default()
        };
        for r in resp.op_responses() {
            let etcd_client::TxnOpResponse::Get(g) = r else {
                continue;
            };
            for kv in g.kvs() {
                if let Some(rel) = self.rel(kv.key()) {
                    state.apply(rel, Some(kv.value()))?;
                }
            }
        }
        Ok(state)
    }

    /// Adds `node` to the members (the same node again is a no-op; its id with other addresses is refused).
    pub async fn join(&self, node: &NodeInfo) -> Result<(), EtcdError> {
        let key = self.key(&node_key(node.id));
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key.clone(), json(node), None)])
            .or_else([TxnOp::get(key.clone(), None)]);
        let resp = self.client.kv_client().txn(txn).await?;
        if resp.succeeded() {
            return Ok(());
        }
        let existing: Option<NodeInfo> = first_kv(&resp)
            .map(|kv| decode(&key, kv.value()))
            .transpose()?;
        match existing {
            Some(n) if n == *node => Ok(()),
            _ => Err(EtcdError::NodeTaken(node.id)),
        }
    }

    /// Removes node `id` from the members; refused while it is alive or a DC still lists it.
    pub async fn remove_node(&self, id: u16) -> Result<(), EtcdError> {
        let state = self.state().await?;
        if !state.nodes.contains_key(&id) {
            return Err(EtcdError::NoSuchNode(id));
        }
        if let Some(d) = state.dcs.values().find(|d| d.nodes.contains(&id)) {
            return Err(EtcdError::DcNode { dc: d.id, node: id });
        }
        let txn = Txn::new()
            .when([Compare::version(
                self.key(&alive_key(id)),
                CompareOp::Equal,
                0,
            )])
            .and_then([TxnOp::delete(self.key(&node_key(id)), None)]);
        if self.client.kv_client().txn(txn).await?.succeeded() {
            Ok(())
        } else {
            Err(EtcdError::NodeAlive(id))
        }
    }

    /// Creates `dc` (its id and name unused, its nodes members), atomically: of two creations of one id,
    /// one fails.
    pub async fn create_dc(&self, dc: &DcInfo) -> Result<(), EtcdError> {
        let state = self.state().await?;
        if let Some(d) = state.dcs.values().find(|d| d.name == dc.name) {
            return Err(EtcdError::DcTaken(format!("'{}' (id {})", d.name, d.id)));
        }
        if let Some(&node) = dc.nodes.iter().find(|n| !state.nodes.contains_key(n)) {
            return Err(EtcdError::DcNode { dc: dc.id, node });
        }
        let key = self.key(&dc_key(dc.id));
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key, json(dc), None)]);
        if self.client.kv_client().txn(txn).await?.succeeded() {
            Ok(())
        } else {
            Err(EtcdError::DcTaken(dc.id.to_string()))
        }
    }

    /// Deletes DC `id`; refused while any of its endpoints is owned.
    pub async fn delete_dc(&self, id: u16) -> Result<(), EtcdError> {
        let owned = self.owners_in(Some(id)).await?;
        if !owned.is_empty() {
            return Err(EtcdError::DcInUse {
                dc: id,
                endpoints: owned.len(),
            });
        }
        let resp = self
            .client
            .kv_client()
            .delete(self.key(&dc_key(id)), None)
            .await?;
        if resp.deleted() == 0 {
            return Err(EtcdError::NoSuchDc(id));
        }
        Ok(())
    }

    /// Who owns endpoint `ep` of `dc`, if anyone.
    pub async fn owner(&self, dc: u16, ep: u32) -> Result<Option<Owned>, EtcdError> {
        let key = self.key(&endpoint_key(dc, ep));
        let resp = self.client.kv_client().get(key.clone(), None).await?;
        resp.kvs().first().map(|kv| owned(&key, kv)).transpose()
    }

    /// Every owned endpoint, as `(dc, ep, owner)`.
    pub async fn owners(&self) -> Result<Vec<(u16, u32, Owned)>, EtcdError> {
        self.owners_in(None).await
    }

    async fn owners_in(&self, dc: Option<u16>) -> Result<Vec<(u16, u32, Owned)>, EtcdError> {
        let prefix = match dc {
            Some(dc) => self.key(&format!("endpoints/{dc:05}/")),
            None => self.key("endpoints/"),
        };
        let resp = self
            .client
            .kv_client()
            .get(prefix, Some(GetOptions::new().with_prefix()))
            .await?;
        let mut out = vec![];
        for kv in resp.kvs() {
            let key = String::from_utf8_lossy(kv.key()).to_string();
            let rel = self.rel(kv.key()).unwrap_or_default();
            let mut p = rel.split('/').skip(1);
            let (Some(Ok(dc)), Some(Ok(ep))) = (
                p.next().map(str::parse::<u16>),
                p.next().map(str::parse::<u32>),
            ) else {
                return Err(EtcdError::BadValue {
                    key,
                    why: "not endpoints/DC/EP".into(),
                });
            };
            out.push((dc, ep, owned(&key, kv)?));
        }
        Ok(out)
    }

    /// Makes `owner` the owner of `ep` of `dc` if the key is as `expect` says (one transaction), and returns
    /// the new ownership; else [`EtcdError::Conflict`] with the owner now.
    pub async fn claim(
        &self,
        dc: u16,
        ep: u32,
        owner: &EndpointOwner,
        expect: Expect,
    ) -> Result<Owned, EtcdError> {
        let key = self.key(&endpoint_key(dc, ep));
        let when = match expect {
            Expect::Absent => vec![Compare::create_revision(key.clone(), CompareOp::Equal, 0)],
            Expect::Revision(rev) => {
                vec![Compare::mod_revision(key.clone(), CompareOp::Equal, rev)]
            }
            Expect::DeadOwner { revision, node } => vec![
                Compare::mod_revision(key.clone(), CompareOp::Equal, revision),
                Compare::version(self.key(&alive_key(node)), CompareOp::Equal, 0),
            ],
        };
        let txn = Txn::new()
            .when(when)
            .and_then([TxnOp::put(key.clone(), json(owner), None)])
            .or_else([TxnOp::get(key.clone(), None)]);
        let resp = self.client.kv_client().txn(txn).await?;
        if resp.succeeded() {
            let revision = resp.header().map_or(0, |h| h.revision());
            return Ok(Owned {
                owner: owner.clone(),
                revision,
            });
        }
        let current = first_kv(&resp).map(|kv| owned(&key, &kv)).transpose()?;
        Err(EtcdError::Conflict { dc, ep, current })
    }

    /// Gives up `ep` of `dc` if it is still as it was at `revision`.
    pub async fn release(&self, dc: u16, ep: u32, revision: i64) -> Result<(), EtcdError> {
        let key = self.key(&endpoint_key(dc, ep));
        let txn = Txn::new()
            .when([Compare::mod_revision(
                key.clone(),
                CompareOp::Equal,
                revision,
            )])
            .and_then([TxnOp::delete(key.clone(), None)])
            .or_else([TxnOp::get(key.clone(), None)]);
        let resp = self.client.kv_client().txn(txn).await?;
        if resp.succeeded() {
            return Ok(());
        }
        let current = first_kv(&resp).map(|kv| owned(&key, &kv)).transpose()?;
        Err(EtcdError::Conflict { dc, ep, current })
    }

    /// Records that instance `name` runs on `node`, with `spec` (what another node needs to run it again).
    pub async fn put_instance(&self, node: u16, name: &str, spec: &[u8]) -> Result<(), EtcdError> {
        let key = self.key(&instance_key(node, name));
        self.client.kv_client().put(key, spec, None).await?;
        Ok(())
    }

    /// Forgets instance `name` of `node`.
    pub async fn delete_instance(&self, node: u16, name: &str) -> Result<(), EtcdError> {
        let key = self.key(&instance_key(node, name));
        self.client.kv_client().delete(key, None).await?;
        Ok(())
    }

    /// The instances recorded on `node`: `(name, spec, revision)`.
    pub async fn instances_on(&self, node: u16) -> Result<Vec<(String, Vec<u8>, i64)>, EtcdError> {
        let prefix = self.key(&instance_key(node, ""));
        let resp = self
            .client
            .kv_client()
            .get(prefix.clone(), Some(GetOptions::new().with_prefix()))
            .await?;
        Ok(resp
            .kvs()
            .iter()
            .filter_map(|kv| {
                let name = std::str::from_utf8(kv.key()).ok()?.strip_prefix(&prefix)?;
                Some((name.to_string(), kv.value().to_vec(), kv.mod_revision()))
            })
            .collect())
    }

    /// Moves the record of instance `name` from the dead node `from` (as read at `revision`) to `to`, in one
    /// transaction that holds only while `from`'s lease is gone and `to` has no instance of that name: of
    /// several survivors trying, one wins (true).
    pub async fn move_instance(
        &self,
        from: u16,
        name: &str,
        revision: i64,
        to: u16,
        spec: &[u8],
    ) -> Result<bool, EtcdError> {
        let old = self.key(&instance_key(from, name));
        let new = self.key(&instance_key(to, name));
        let txn = Txn::new()
            .when([
                Compare::mod_revision(old.clone(), CompareOp::Equal, revision),
                Compare::version(self.key(&alive_key(from)), CompareOp::Equal, 0),
                Compare::create_revision(new.clone(), CompareOp::Equal, 0),
            ])
            .and_then([TxnOp::delete(old, None), TxnOp::put(new, spec, None)]);
        Ok(self.client.kv_client().txn(txn).await?.succeeded())
    }

    /// Starts node `node`'s membership: a lease of `ttl`, kept alive, under which the node's `alive` key
    /// lives ([`Membership`]).
    pub async fn membership(&self, node: u16, ttl: Duration) -> Result<Membership, EtcdError> {
        Membership::start(self.client.clone(), self.key(&alive_key(node)), node, ttl).await
    }

    /// Follows the cluster's nodes, live members and DCs ([`ClusterWatch`]).
    pub async fn watch(&self) -> Result<ClusterWatch, EtcdError> {
        ClusterWatch::start(self.clone()).await
    }
}

fn json<T: Serialize>(v: &T) -> Vec<u8> {
    // Plain structs of numbers, strings and addresses: serializing cannot fail.
    serde_json::to_vec(v).unwrap_or_default()
}

fn decode<T: for<'de> Deserialize<'de>>(key: &str, v: &[u8]) -> Result<T, EtcdError> {
    serde_json::from_slice(v).map_err(|e| EtcdError::BadValue {
        key: key.to_string(),
        why: e.to_string(),
    })
}

fn owned(key: &str, kv: &KeyValue) -> Result<Owned, EtcdError> {
    Ok(Owned {
        owner: decode(key, kv.value())?,
        revision: kv.mod_revision(),
    })
}

/// The first key-value of a transaction's first range answer (our `or_else` get).
fn first_kv(resp: &etcd_client::TxnResponse) -> Option<KeyValue> {
    resp.op_responses().into_iter().find_map(|r| match r {
        etcd_client::TxnOpResponse::Get(g) => g.kvs().first().cloned(),
        _ => None,
    })
}

/// Options for a put under a lease.
fn with_lease(lease: i64) -> Option<PutOptions> {
    Some(PutOptions::new().with_lease(lease))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_applies_puts_and_deletes_and_refuses_garbage() {
        let mut s = ClusterState::default();
        let n = NodeInfo {
            id: 2,
            proxy: "10.0.0.2:7001".parse().unwrap(),
            api: "10.0.0.2:7000".parse().unwrap(),
        };
        s.apply("nodes/00002", Some(&json(&n))).unwrap();
        s.apply("alive/00002", Some(b"7")).unwrap();
        assert_eq!((s.nodes.len(), s.alive.len()), (1, 1));
        assert!(
            s.apply("nodes/00003", Some(&json(&n))).is_err(),
            "key and value disagree"
        );
        assert!(s.apply("nodes/x", Some(b"{}")).is_err());
        assert!(s.apply("dcs/00001", Some(b"not json")).is_err());
        s.apply("endpoints/00001/0000000010", Some(b"anything"))
            .unwrap();
        s.apply("alive/00002", None).unwrap();
        assert!(s.alive.is_empty());
        assert_eq!(s.map().nodes, vec![n]);
    }
}
