//! One supervisor task per instance: open its VM port, boot its machine, wait for it, restart it per policy,
//! stop it on request; and the announcement of a machine that takes over moved endpoints.

use std::sync::Arc;
use std::time::Duration;

use dvs_proxy::PortId;
use tokio::sync::mpsc;

use super::{lock, now_micros, Manager, RestartPolicy, State};
use crate::config::BackendKind;

impl Manager {
    /// Boots, watches and restarts one instance until it is stopped (`true`: forget it) or the daemon shuts
    /// down (`false`).
    pub(super) async fn supervise(self: Arc<Self>, name: String, mut stop: mpsc::Receiver<bool>) {
        let mut backoff = Duration::from_millis(500);
        loop {
            let booted = self.boot(&name).await;
            let (mut child, port) = match booted {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!("instance {name}: {e}");
                    self.set(&name, |i| {
                        i.state = State::Failed;
                        i.last_exit = Some(e.to_string());
                    });
                    return;
                }
            };
            let pid = child.id();
            let exit = tokio::select! {
                status = child.wait() => Some(status),
                _ = stop.recv() => None,
            };
            let _ = self.proxy.remove_port(port).await;
            let (state, why) = match exit {
                None => {
                    if let Some(pid) = pid {
                        // SAFETY: kill(2) on the machine (SIGTERM lets it say goodbye on its console), then on its
                        // process group, which the child created with setpgid.
                        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
                        let _ =
                            tokio::time::timeout(Duration::from_millis(300), child.wait()).await;
                        unsafe { libc::kill(-(pid as i32), libc::SIGKILL) };
                    }
                    let _ = child.kill().await;
                    (State::Stopped, "stopped".to_string())
                }
                Some(Ok(s)) if s.success() => (State::Exited, "exited with status 0".to_string()),
                Some(Ok(s)) => (State::Failed, format!("machine exited: {s}")),
                Some(Err(e)) => (State::Failed, format!("waiting for the machine: {e}")),
            };
            let failed = state == State::Failed;
            let stopped = state == State::Stopped;
            tracing::info!("instance {name}: {why}");
            self.set(&name, |i| {
                i.state = state;
                i.last_exit = Some(why);
                i.pid = None;
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
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = stop.recv() => {
                    self.set(&name, |i| i.state = State::Stopped);
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

    async fn boot(&self, name: &str) -> anyhow::Result<(tokio::process::Child, PortId)> {
        let (plan, port_spec, kind) = self.plan(name)?;
        let port = self.proxy.add_port(port_spec, &plan.fabric).await?;
        self.set(name, |i| i.port = Some(port));
        let boots = lock(&self.inner).get(name).map_or(0, |i| i.boots) + 1;
        let banner = format!("--- dvs: boot {boots} of {name}: {} ---\n", plan.cmdline);
        let _ = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&plan.console)
            .and_then(|mut f| std::io::Write::write_all(&mut f, banner.as_bytes()));
        let console_start = std::fs::metadata(&plan.console).map_or(0, |m| m.len() as usize);
        let backend = if kind == BackendKind::Fake {
            &self.fake
        } else {
            &self.backend
        };
        let child = match backend.spawn(&plan) {
            Ok(c) => c,
            Err(e) => {
                let _ = self.proxy.remove_port(port).await;
                anyhow::bail!("starting the machine ({}): {e}", backend.describe());
            }
        };
        self.set(name, |i| {
            i.state = State::Running;
            i.pid = child.id();
            i.boots = boots;
        });
        // A machine taking over moved endpoints is announced by its first frame or by its console's
        // `dvs: ready` line, whichever comes first; after 5 s it is announced anyway (frames sent to it too
        // early are lost, and the engines retransmit them).
        let proxy = self.proxy.clone();
        let console = plan.console.clone();
        tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            while tokio::time::Instant::now() < deadline {
                let ready = std::fs::read(&console)
                    .map(|b| {
                        b.len() > console_start
                            && String::from_utf8_lossy(&b[console_start..]).contains("dvs: ready")
                    })
                    .unwrap_or(false);
                if ready {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            proxy.announce_port(port).await;
        });
        Ok((child, port))
    }
}
