//! One supervisor task per instance: open its VM port, boot its machine, follow its control channel (the Ready
//! record makes it `running` and announces a machine that takes over moved endpoints; counters, reports and
//! fatal errors are kept for the API), wait for it, restart it per policy, stop it on request. Nothing here
//! reads the console: it is a log for people.

use std::sync::Arc;
use std::time::Duration;

use dvs_instance::{Exit, Machine, MachineEvent};
use dvs_proxy::PortId;
use dvs_vos_abi::ControlRecord;
use tokio::sync::mpsc;

use super::{lock, now_micros, Manager, RestartPolicy, State, REPORTS_KEPT};

/// How long a stopped machine may take to end after SIGTERM before its process group is killed.
const STOP_GRACE: Duration = Duration::from_millis(300);

/// Why the supervisor stopped watching a machine.
enum End {
    /// The machine ended by itself.
    Exited(Exit),
    /// A stop was asked for.
    Stopped,
}

impl Manager {
    /// Boots, watches and restarts one instance until it is stopped (`true`: forget it) or the daemon shuts
    /// down (`false`).
    pub(super) async fn supervise(self: Arc<Self>, name: String, mut stop: mpsc::Receiver<bool>) {
        let mut backoff = Duration::from_millis(500);
        loop {
            let (mut machine, port) = match self.boot(&name).await {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!("instance {name}: {e:#}");
                    self.set(&name, |i| {
                        i.state = State::Failed;
                        i.last_exit = Some(format!("{e:#}"));
                    });
                    self.unpublish(&name).await;
                    return;
                }
            };
            let end = loop {
                tokio::select! {
                    ev = machine.next_event() => match ev {
                        MachineEvent::Record(Ok(rec)) => self.on_record(&name, port, rec).await,
                        MachineEvent::Record(Err(e)) => {
                            tracing::warn!("instance {name}: control channel: {e}");
                            self.set(&name, |i| i.guest.bad_records += 1);
                        }
                        MachineEvent::Exited(e) => break End::Exited(e),
                    },
                    _ = stop.recv() => break End::Stopped,
                }
            };
            let end = match end {
                End::Stopped => {
                    machine.stop(STOP_GRACE).await;
                    End::Stopped
                }
                e => e,
            };
            drop(machine);
            if let Err(e) = self.proxy.remove_port(port).await {
                tracing::warn!("instance {name}: removing its port: {e}");
            }
            let fatal = lock(&self.inner)
                .get(&name)
                .and_then(|i| i.guest.fatal.clone());
            let (state, why) = match end {
                End::Stopped => (State::Stopped, "stopped".to_string()),
                End::Exited(e) => {
                    let why = match fatal {
                        Some(f) => format!("the guest failed: {f} (machine {e})"),
                        None => format!("machine {e}"),
                    };
                    if e.success() {
                        (State::Exited, why)
                    } else {
                        (State::Failed, why)
                    }
                }
            };
            let failed = state == State::Failed;
            let stopped = state == State::Stopped;
            tracing::info!("instance {name}: {why}");
            self.set(&name, |i| {
                i.state = state;
                i.last_exit = Some(why);
                i.pid = None;
                i.since = None;
                i.port = None;
            });
            let policy = lock(&self.inner)
                .get(&name)
                .map(|i| i.spec.restart)
                .unwrap_or_default();
            let again = !stopped
                && (policy == RestartPolicy::Always
                    || (policy == RestartPolicy::OnFailure && failed));
            if !again {
                // It will not boot again: its published ports close.
                self.unpublish(&name).await;
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = stop.recv() => {
                    self.set(&name, |i| i.state = State::Stopped);
                    self.unpublish(&name).await;
                    return;
                }
            }
            backoff = (backoff * 2).min(Duration::from_secs(10));
            self.set(&name, |i| {
                i.gen = now_micros().max(i.gen + 1);
                i.takeover = false;
            });
        }
    }

    /// Takes one control record of `name`'s guest.
    async fn on_record(&self, name: &str, port: PortId, rec: ControlRecord) {
        match rec {
            ControlRecord::Ready(r) => {
                tracing::info!(
                    "instance {name}: ready (endpoints {:?}, services {:?}, {} µs)",
                    r.endpoints,
                    r.services,
                    r.init_us
                );
                let takeover = lock(&self.inner).get(name).is_some_and(|i| i.takeover);
                if takeover {
                    // A machine that takes over moved endpoints is announced once it is ready (or by its
                    // first frame, whichever comes first), before it shows as running.
                    self.proxy.announce_port(port).await;
                }
                self.set(name, |i| {
                    i.state = State::Running;
                    i.guest.ready = Some(r);
                });
            }
            ControlRecord::Counters(c) => self.set(name, |i| i.guest.counters = Some(c)),
            ControlRecord::Report(r) => self.set(name, |i| {
                let reports = &mut i.guest.reports;
                if reports.len() >= REPORTS_KEPT {
                    reports.remove(0);
                }
                reports.push(r);
            }),
            ControlRecord::Fatal { reason } => {
                tracing::warn!("instance {name}: the guest failed: {reason}");
                self.set(name, |i| i.guest.fatal = Some(reason));
            }
            ControlRecord::ServiceUp { service, endpoint } => {
                tracing::debug!("instance {name}: service {service} up (endpoint {endpoint:?})");
            }
            ControlRecord::ServiceDown { service, reason } => {
                tracing::info!("instance {name}: service {service} down: {reason}");
            }
        }
    }

    async fn boot(&self, name: &str) -> anyhow::Result<(Machine, PortId)> {
        let plan = self.plan(name)?;
        let port = self.proxy.add_port(plan.port, &plan.fabric).await?;
        self.set(name, |i| i.port = Some(port));
        let boots = lock(&self.inner).get(name).map_or(0, |i| i.boots) + 1;
        if let dvs_instance::ConsoleSink::File(console) = &plan.vm.console {
            let banner = format!(
                "--- dvs: boot {boots} of {name} ({}): {} ---\n",
                plan.backend.describe(),
                plan.vm.cmdline()
            );
            if let Err(e) = dvs_instance::console_log::append(console, banner.as_bytes()) {
                tracing::warn!("instance {name}: console log {}: {e}", console.display());
            }
        }
        let machine = match plan.backend.start(&plan.vm) {
            Ok(m) => m,
            Err(e) => {
                let _ = self.proxy.remove_port(port).await;
                anyhow::bail!("starting the machine ({}): {e}", plan.backend.describe());
            }
        };
        self.set(name, |i| {
            i.state = State::Starting;
            i.pid = machine.pid();
            i.since = Some(std::time::SystemTime::now());
            i.boots = boots;
            i.guest = Default::default();
        });
        Ok((machine, port))
    }
}
