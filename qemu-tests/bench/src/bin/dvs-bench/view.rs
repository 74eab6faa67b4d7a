//! Waiting on a node's typed instance view: `GET /v1/instances/NAME?wait_after=REV&timeout_ms=N`
//! answers as soon as the view changed (its `rev` grew), so a wait costs one request per event.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use dvs_hypervisor::client::NodeClient;
use dvs_hypervisor::instances::{InstanceView, State};

/// The view of `name` once `pick` takes it (`Some`), long-polling until `timeout`. Fails at once
/// on a fatal record, a Failed report, or an instance that is no longer running.
pub async fn wait_for<T>(
    client: &NodeClient,
    name: &str,
    timeout: Duration,
    pick: impl Fn(&InstanceView) -> Option<T>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + timeout;
    let mut rev = 0u64;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let poll = left.min(Duration::from_secs(5)).as_millis().max(1);
        let path = format!("/v1/instances/{name}?wait_after={rev}&timeout_ms={poll}");
        let v: InstanceView = serde_json::from_value(client.get_json(&path).await?)
            .map_err(|e| anyhow!("{path}: unexpected answer: {e}"))?;
        if let Some(t) = pick(&v) {
            return Ok(t);
        }
        if let Some(reason) = &v.guest.fatal {
            bail!("the guest reported a fatal error: {reason}");
        }
        if let Some(f) = v
            .guest
            .reports
            .iter()
            .find(|r| matches!(r, dvs_vos_abi::Report::Failed { .. }))
        {
            bail!("the guest reported a failure: {f:?}");
        }
        if matches!(v.state, State::Failed | State::Exited | State::Stopped) {
            bail!(
                "instance is {:?} (last exit: {})",
                v.state,
                v.last_exit.as_deref().unwrap_or("-")
            );
        }
        if Instant::now() >= deadline {
            bail!(
                "not there after {timeout:?} (state {:?}, rev {})",
                v.state,
                v.rev
            );
        }
        rev = v.rev;
    }
}
