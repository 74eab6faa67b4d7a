//! A node's membership: its lease, kept alive, and the `alive` key that lives under it.

use std::time::Duration;

use etcd_client::Client;
use tokio::sync::watch;

use crate::{with_lease, EtcdError};

/// A live node's lease. While it holds, the node's `alive` key exists and the other nodes count it as up;
/// the keep-alive task renews it every third of its TTL. If etcd cannot be reached for a whole TTL, or
/// answers that the lease is gone, [`Membership::lost`] fires and the node must stop acting as a member
/// (serving its endpoints: the other side of a partition takes them over). Dropping it without
/// [`Membership::leave`] is what a crash looks like: the key goes when the TTL runs out.
pub struct Membership {
    node: u16,
    lease: i64,
    ttl: Duration,
    client: Client,
    lost: watch::Receiver<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for Membership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Membership(node {}, lease {}, ttl {:?})",
            self.node, self.lease, self.ttl
        )
    }
}

impl Membership {
    pub(crate) async fn start(
        mut client: Client,
        key: String,
        node: u16,
        ttl: Duration,
    ) -> Result<Membership, EtcdError> {
        let secs = i64::try_from(ttl.as_secs().max(1)).unwrap_or(i64::MAX);
        let lease = client.lease_grant(secs, None).await?.id();
        client
            .put(key, lease.to_string(), with_lease(lease))
            .await?;
        let (tx, lost) = watch::channel(false);
        let task = tokio::spawn(keep_alive(client.clone(), node, lease, ttl, tx));
        Ok(Membership {
            node,
            lease,
            ttl,
            client,
            lost,
            task,
        })
    }

    /// The node.
    pub fn node(&self) -> u16 {
        self.node
    }

    /// The lease id.
    pub fn lease(&self) -> i64 {
        self.lease
    }

    /// The lease's TTL.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// True once the lease is lost.
    pub fn is_lost(&self) -> bool {
        *self.lost.borrow()
    }

    /// Resolves when the lease is lost (never, while it holds).
    pub async fn lost(&self) {
        let mut rx = self.lost.clone();
        let _ = rx.wait_for(|lost| *lost).await;
    }

    /// Ends the membership at once: the lease is revoked and the `alive` key goes with it.
    pub async fn leave(&self) -> Result<(), EtcdError> {
        self.task.abort();
        self.client.clone().lease_revoke(self.lease).await?;
        Ok(())
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// How soon a failed renewal is tried again.
const RETRY: Duration = Duration::from_millis(200);

/// Renews `lease` every `ttl / 3`; sets `lost` when etcd says it is gone or no renewal got through for `ttl`.
async fn keep_alive(
    mut client: Client,
    node: u16,
    lease: i64,
    ttl: Duration,
    lost: watch::Sender<bool>,
) {
    let period = ttl / 3;
    let mut renewed = tokio::time::Instant::now();
    let mut stream = None;
    loop {
        if renewed.elapsed() >= ttl {
            tracing::warn!("node {node}: lease {lease} lost (not renewed for {ttl:?})");
            let _ = lost.send(true);
            return;
        }
        if stream.is_none() {
            stream = tokio::time::timeout(period, client.lease_keep_alive(lease))
                .await
                .ok()
                .and_then(Result::ok);
        }
        let mut ok = false;
        if let Some((keeper, answers)) = stream.as_mut() {
            let renewal = async {
                keeper.keep_alive().await?;
                answers.message().await
            };
            match tokio::time::timeout(period, renewal).await {
                Ok(Ok(Some(a))) if a.ttl() > 0 => {
                    renewed = tokio::time::Instant::now();
                    ok = true;
                }
                Ok(Ok(Some(_))) => {
                    tracing::warn!("node {node}: etcd says lease {lease} is gone");
                    let _ = lost.send(true);
                    return;
                }
                // The stream broke or etcd is slow: open a new one next turn.
                _ => stream = None,
            }
        }
        // Renewed: again in a third of the TTL. Not: try again soon (etcd may be failing over), not at once.
        let wait = if ok { period } else { period.min(RETRY) };
        tokio::time::sleep(wait).await;
    }
}
