//! A blocking, typed client of one node's API for test code: `dvs_hypervisor::client::NodeClient` driven by
//! the fixture's runtime, every error a `String` that names the node and the call. And [`Api::wait_view`]:
//! the long-poll wait on an instance's view (`GET /v1/instances/NAME?wait_after=REV&timeout_ms=N`).

use std::future::Future;
use std::time::Duration;

use dvs_hypervisor::client::{ClientError, ImageCheck, MigrateResult, NodeClient, NodeStatus};
use dvs_hypervisor::instances::{InstanceSpec, InstanceView, RunRequest};
use dvs_proxy::placement::PlacementView;
use dvs_proxy::switch::Stats;

use crate::wait::{Deadline, WaitError};

/// The blocking client of node `node` (from [`crate::cluster::Cluster::api`]).
#[derive(Clone, Copy)]
pub struct Api<'a> {
    rt: &'a tokio::runtime::Runtime,
    c: &'a NodeClient,
    /// The node's id.
    pub node: u16,
}

/// The longest single long-poll; a wait re-asks until its deadline.
const LONG_POLL: Duration = Duration::from_secs(10);

/// One line about an instance view, for failure messages: state, boots, exit, guest state.
pub fn describe(v: &InstanceView) -> String {
    let g = &v.guest;
    format!(
        "{} on node {}: state={:?} boots={} last_exit={:?} rev={} ready={} fatal={:?} reports={:?} counters={}",
        v.spec.name,
        v.node,
        v.state,
        v.boots,
        v.last_exit,
        v.rev,
        if g.ready.is_some() { "yes" } else { "no" },
        g.fatal,
        g.reports,
        g.counters.as_ref().map_or("none".to_string(), |c| format!(
            "echo_received={} notify_received={} frames_in={} frames_out={}",
            c.echo_received, c.notify_received, c.frames_in, c.frames_out
        )),
    )
}

impl<'a> Api<'a> {
    pub(crate) fn new(rt: &'a tokio::runtime::Runtime, c: &'a NodeClient, node: u16) -> Api<'a> {
        Api { rt, c, node }
    }

    fn call<T>(
        &self,
        what: &str,
        f: impl Future<Output = Result<T, ClientError>>,
    ) -> Result<T, String> {
        self.rt
            .block_on(f)
            .map_err(|e| format!("node {}: {what}: {e}", self.node))
    }

    /// `GET /v1/node`.
    pub fn status(&self) -> Result<NodeStatus, String> {
        self.call("GET /v1/node", self.c.status())
    }

    /// `GET /v1/instances/{name}`.
    pub fn instance(&self, name: &str) -> Result<InstanceView, String> {
        self.call(&format!("GET /v1/instances/{name}"), self.c.instance(name))
    }

    /// `GET /v1/instances`.
    pub fn instances(&self) -> Result<Vec<InstanceView>, String> {
        self.call("GET /v1/instances", self.c.instances())
    }

    /// `POST /v1/instances`.
    pub fn run(&self, spec: InstanceSpec) -> Result<InstanceView, String> {
        let what = format!("run {}", spec.name);
        self.call(
            &what,
            self.c.run(&RunRequest {
                spec,
                takeover_gen: None,
            }),
        )
    }

    /// `DELETE /v1/instances/{name}`.
    pub fn stop(&self, name: &str) -> Result<(), String> {
        self.call(&format!("stop {name}"), self.c.stop(name))
            .map(|_| ())
    }

    /// `GET /v1/control`: membership, leases and owners (a cluster on etcd).
    pub fn control(&self) -> Result<dvs_hypervisor::control::ControlView, String> {
        let v = self.call("GET /v1/control", self.c.get_json("/v1/control"))?;
        serde_json::from_value(v).map_err(|e| format!("node {}: GET /v1/control: {e}", self.node))
    }

    /// `GET /v1/directory`.
    pub fn directory(&self) -> Result<Vec<PlacementView>, String> {
        self.call("GET /v1/directory", self.c.directory())
    }

    /// `GET /v1/counters`.
    pub fn counters(&self) -> Result<Stats, String> {
        self.call("GET /v1/counters", self.c.counters())
    }

    /// `GET /v1/images/{reference}` (the node re-hashes the image).
    pub fn image(&self, reference: &str) -> Result<ImageCheck, String> {
        self.call(
            &format!("GET /v1/images/{reference}"),
            self.c.image(reference),
        )
    }

    /// `POST /v1/instances/{name}/migrate`.
    pub fn migrate(&self, name: &str, to: u16) -> Result<MigrateResult, String> {
        self.call(
            &format!("migrate {name} to node {to}"),
            self.c.migrate(name, to),
        )
    }

    /// `GET /v1/instances/{name}/logs`: the console log.
    pub fn logs(&self, name: &str) -> Result<String, String> {
        self.call(&format!("logs of {name}"), self.c.logs(name, None))
    }

    /// Where the node's directory places `(dc, ep)`: the node holding it, or None.
    pub fn placed(&self, dc: u16, ep: u32) -> Result<Option<u16>, String> {
        Ok(self
            .directory()?
            .iter()
            .find(|p| p.dc == dc && p.ep == ep)
            .map(|p| p.node))
    }

    /// One long-poll: the view as soon as its revision is above `after`, or the current view after `timeout`.
    pub fn view_after(
        &self,
        name: &str,
        after: u64,
        timeout: Duration,
    ) -> Result<InstanceView, String> {
        self.call(
            &format!("GET /v1/instances/{name}?wait_after={after}"),
            self.c.instance_after(name, after, timeout),
        )
    }

    /// Waits until instance `name`'s view satisfies `pred`, woken by each change of the view (long polls on
    /// its revision), never by a timer. `what` says what is awaited; the error adds the last view seen. While
    /// the node does not answer or has no such instance yet, it re-asks with a bounded backoff.
    pub fn wait_view(
        &self,
        name: &str,
        what: &str,
        deadline: Deadline,
        mut pred: impl FnMut(&InstanceView) -> bool,
    ) -> Result<InstanceView, WaitError> {
        let started = std::time::Instant::now();
        let mut rev = 0;
        let mut last;
        let mut pause = crate::wait::BACKOFF.0;
        loop {
            let left = deadline.remaining();
            match self.view_after(name, rev, left.min(LONG_POLL)) {
                Ok(v) => {
                    if pred(&v) {
                        return Ok(v);
                    }
                    last = describe(&v);
                    rev = v.rev;
                }
                Err(e) => {
                    last = e;
                    std::thread::sleep(pause.min(deadline.remaining()));
                    pause = (pause * 2).min(crate::wait::BACKOFF.1);
                }
            }
            if deadline.passed() {
                return Err(WaitError {
                    what: format!("{name} on node {}: {what}", self.node),
                    waited: started.elapsed(),
                    last,
                });
            }
        }
    }
}
