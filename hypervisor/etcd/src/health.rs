//! Failover between etcd members. etcd-client balances requests over every endpoint it was given, and keeps
//! sending some to a member that is down (its channel reconnects lazily and the balancer does not skip it),
//! so one dead member of three fails a share of every node's requests. This task probes each member's client
//! port and takes the ones that do not answer out of the client's balancer until they answer again. The last
//! member in it is never taken out: with none answering, requests fail with etcd's own error.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::Client;

/// How often members are probed.
const EVERY: Duration = Duration::from_millis(500);
/// How long a probe waits for a TCP connection.
const PROBE: Duration = Duration::from_millis(400);

/// Stops the probing task when the last [`crate::Store`] clone holding it goes.
#[derive(Debug)]
pub(crate) struct Health(tokio::task::JoinHandle<()>);

impl Drop for Health {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// `host:port` of an endpoint URL (`http://host:port`).
fn authority(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.split('/').next().unwrap_or(rest)
}

async fn answers(url: &str) -> bool {
    matches!(
        tokio::time::timeout(PROBE, tokio::net::TcpStream::connect(authority(url))).await,
        Ok(Ok(_))
    )
}

/// Starts probing `endpoints` for `client` (nothing to do for a single one).
pub(crate) fn watch(client: Client, endpoints: Vec<String>) -> Option<Arc<Health>> {
    if endpoints.len() < 2 {
        return None;
    }
    Some(Arc::new(Health(tokio::spawn(async move {
        let mut out: BTreeSet<String> = BTreeSet::new();
        loop {
            for url in &endpoints {
                let up = answers(url).await;
                let is_out = out.contains(url);
                if !up && !is_out && out.len() + 1 < endpoints.len() {
                    match client.remove_endpoint(url).await {
                        Ok(()) => {
                            tracing::warn!(
                                "etcd member {url} does not answer: requests go to the others"
                            );
                            out.insert(url.clone());
                        }
                        Err(e) => tracing::warn!("etcd: taking {url} out: {e}"),
                    }
                } else if up && is_out {
                    match client.add_endpoint(url).await {
                        Ok(()) => {
                            tracing::info!("etcd member {url} answers again");
                            out.remove(url);
                        }
                        Err(e) => tracing::warn!("etcd: taking {url} back: {e}"),
                    }
                }
            }
            tokio::time::sleep(EVERY).await;
        }
    }))))
}

#[cfg(test)]
mod tests {
    #[test]
    fn authority_of_urls() {
        assert_eq!(super::authority("http://10.0.0.1:2379"), "10.0.0.1:2379");
        assert_eq!(super::authority("https://h:1/x"), "h:1");
        assert_eq!(super::authority("h:2"), "h:2");
    }
}
