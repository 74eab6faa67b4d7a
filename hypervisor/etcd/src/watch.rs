//! Following the cluster's state from an etcd watch.

use std::time::Duration;

use etcd_client::{EventType, WatchOptions};
use tokio::sync::watch;

use crate::{ClusterState, EtcdError, Store};

/// The cluster's nodes, live members and DCs as etcd last said, kept current by a watch on the prefix (from
/// the revision of the first read on, so that no change falls between the read and the watch). When the
/// watch breaks (etcd restarted, the history compacted) it reads the whole state again and watches on.
#[derive(Debug)]
pub struct ClusterWatch {
    rx: watch::Receiver<ClusterState>,
    task: tokio::task::JoinHandle<()>,
}

/// How long to wait before watching again after etcd failed.
const RETRY: Duration = Duration::from_millis(200);

impl ClusterWatch {
    pub(crate) async fn start(store: Store) -> Result<ClusterWatch, EtcdError> {
        let state = store.state().await?;
        let (tx, rx) = watch::channel(state);
        let task = tokio::spawn(follow(store, tx));
        Ok(ClusterWatch { rx, task })
    }

    /// The state now.
    pub fn current(&self) -> ClusterState {
        self.rx.borrow().clone()
    }

    /// A receiver that sees every new state (for a task that applies changes).
    pub fn subscribe(&self) -> watch::Receiver<ClusterState> {
        self.rx.clone()
    }

    /// The first state that satisfies `pred`, or `None` after `timeout`.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        mut pred: impl FnMut(&ClusterState) -> bool,
    ) -> Option<ClusterState> {
        let mut rx = self.rx.clone();
        let found = tokio::time::timeout(timeout, async {
            rx.wait_for(|s| pred(s)).await.map(|s| s.clone()).ok()
        })
        .await;
        found.ok().flatten()
    }
}

impl Drop for ClusterWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn follow(store: Store, tx: watch::Sender<ClusterState>) {
    let prefix = store.key("");
    loop {
        let from = tx.borrow().revision + 1;
        let opts = WatchOptions::new().with_prefix().with_start_revision(from);
        match store.client.clone().watch(prefix.clone(), Some(opts)).await {
            Ok(mut stream) => {
                while let Ok(Some(resp)) = stream.message().await {
                    if resp.canceled() {
                        tracing::warn!("etcd watch cancelled: {}", resp.cancel_reason());
                        break;
                    }
                    let mut state = tx.borrow().clone();
                    for ev in resp.events() {
                        let Some(kv) = ev.kv() else { continue };
                        let Some(rel) = store.rel(kv.key()) else {
                            continue;
                        };
                        let value = match ev.event_type() {
                            EventType::Put => Some(kv.value()),
                            EventType::Delete => None,
                        };
                        if let Err(e) = state.apply(rel, value) {
                            tracing::warn!("etcd watch: {e} (ignored)");
                        }
                        state.revision = state.revision.max(kv.mod_revision());
                    }
                    if let Some(h) = resp.header() {
                        state.revision = state.revision.max(h.revision());
                    }
                    tx.send_if_modified(|s| {
                        let changed = *s != state;
                        *s = state;
                        changed
                    });
                }
            }
            Err(e) => tracing::warn!("etcd watch: {e}"),
        }
        tokio::time::sleep(RETRY).await;
        // Read everything again: events may have been compacted away while the watch was down.
        match store.state().await {
            Ok(s) => {
                tx.send_if_modified(|old| {
                    let changed = *old != s;
                    *old = s;
                    changed
                });
            }
            Err(e) => tracing::warn!("etcd: {e}"),
        }
    }
}
