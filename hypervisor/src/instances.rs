//! Instances: their specs (kept on disk, so they come back after a daemon restart), their VM port, and one
//! supervisor task each that boots the machine, waits for it, restarts it per policy and stops it on request.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dvs_proxy::port::PortKind;
use dvs_proxy::{Announce, PortId, PortSpec, Proxy};
use m3ipc_core::{DcId, Endpoint};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::backend::{self, BootPlan, Publish, VmBackend};
use crate::config::{BackendKind, NetdevKind, NodeConfig};
use crate::images::{ImageError, ImageStore};

/// What to do when an instance's machine exits by itself.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// Leave it exited or failed.
    #[default]
    Never,
    /// Boot it again if it failed (non-zero exit or killed).
    OnFailure,
    /// Boot it again whenever it exits.
    Always,
}

/// What a user asks for: one instance of an image in a DC.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceSpec {
    /// Unique on the node: `[a-z0-9-]`, at most 32 characters.
    pub name: String,
    /// Image reference: sha256 (or a prefix), `name:version` or `name`.
    pub image: String,
    /// DC number.
    pub dc: u16,
    /// Endpoints the instance holds.
    #[serde(default)]
    pub endpoints: Vec<u32>,
    /// Services to run (`http`, `echo`, `ipc-bench`).
    #[serde(default)]
    pub services: Vec<String>,
    /// Memory in MiB (default: the image's).
    #[serde(default)]
    pub memory: Option<u32>,
    /// Fabric IPv4 address with prefix (`10.1.0.2/24`).
    #[serde(default)]
    pub ip: Option<String>,
    /// More kernel command-line words (`peer=20`, `n=1000`...).
    #[serde(default)]
    pub args: Vec<String>,
    /// Host ports forwarded to guest ports.
    #[serde(default)]
    pub publish: Vec<Publish>,
    /// Restart policy.
    #[serde(default)]
    pub restart: RestartPolicy,
    /// Run this instance with another backend than the node's (`fake` for host-side probes).
    #[serde(default)]
    pub backend: Option<BackendKind>,
}

/// A request to boot an instance; `takeover_gen` marks the new home of a migrating instance.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunRequest {
    /// The instance.
    pub spec: InstanceSpec,
    /// Set by a migration: bind the endpoints with at least this generation, although another node holds them.
    #[serde(default)]
    pub takeover_gen: Option<u64>,
}

/// Where an instance is in its life.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Being booted.
    Starting,
    /// The machine runs.
    Running,
    /// Stopped on request.
    Stopped,
    /// The machine exited by itself with success.
    Exited,
    /// The machine failed (non-zero exit, killed, or could not start).
    Failed,
}

/// An instance as the API shows it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct InstanceView {
    /// The spec.
    pub spec: InstanceSpec,
    /// The node holding it.
    pub node: u16,
    /// Resolved image sha256.
    pub image_sha256: String,
    /// State.
    pub state: State,
    /// Why it last exited or failed.
    pub last_exit: Option<String>,
    /// Times booted since the daemon started.
    pub boots: u32,
    /// Machine process id.
    pub pid: Option<u32>,
    /// Fabric MAC.
    pub mac: String,
    /// The kernel command line of the last boot.
    pub cmdline: String,
    /// Binding generation of its endpoints.
    pub gen: u64,
    /// Which backend runs it.
    pub backend: String,
}

/// Why an instance request failed.
#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    /// Bad spec.
    #[error("{0}")]
    Invalid(String),
    /// Name in use on this node.
    #[error("an instance named '{0}' already exists on this node")]
    NameTaken(String),
    /// Endpoint held elsewhere.
    #[error("endpoint {ep} of DC {dc} is taken ({holder})")]
    EndpointTaken {
        /// DC.
        dc: u16,
        /// Endpoint.
        ep: u32,
        /// Who holds it.
        holder: String,
    },
    /// DC unknown or not on this node.
    #[error("{0}")]
    Dc(String),
    /// No such instance.
    #[error("no instance '{0}' on this node")]
    NotFound(String),
    /// Image problem.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// Anything else.
    #[error("{0}")]
    Other(String),
}

struct Instance {
    spec: InstanceSpec,
    image_sha256: String,
    state: State,
    last_exit: Option<String>,
    boots: u32,
    pid: Option<u32>,
    mac: [u8; 6],
    cmdline: String,
    gen: u64,
    port: Option<PortId>,
    stop: Option<mpsc::Sender<bool>>,
    takeover: bool,
    inc: u32,
}

/// The instance manager of one node.
pub struct Manager {
    node: u16,
    cfg: NodeConfig,
    proxy: Proxy,
    images: ImageStore,
    backend: Box<dyn VmBackend>,
    fake: Box<dyn VmBackend>,
    run_dir: PathBuf,
    dir: PathBuf,
    inner: Mutex<BTreeMap<String, Instance>>,
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros() as u64
}

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 32
        && n.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// A MAC address for an instance: locally administered, derived from DC and name (stable across boots).
fn mac_for(dc: u16, name: &str) -> [u8; 6] {
    let h = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    let [a, b, c, ..] = h.to_be_bytes();
    [0x02, 0x64, dc as u8, a, b, c]
}

/// The VOS kernel command line of `spec` for boot `inc`.
pub fn kernel_cmdline(s: &InstanceSpec, inc: u32) -> String {
    let mut words = vec![format!("dc={}", s.dc)];
    if !s.endpoints.is_empty() {
        words.push(format!(
            "ep={}",
            s.endpoints
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(",")
        ));
    }
    if !s.services.is_empty() {
        words.push(format!("svc={}", s.services.join(",")));
    }
    if let Some(ip) = &s.ip {
        words.push(format!("ip={ip}"));
    }
    if !s.publish.is_empty() {
        words.push("pub_ip=10.0.2.15/24".into());
        words.push("pub_gw=10.0.2.2".into());
    }
    words.push(format!("inc={inc}"));
    words.extend(s.args.iter().cloned());
    words.join(" ")
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Manager {
    /// A manager for the node of `cfg`, booting through the configured backend.
    pub fn new(cfg: NodeConfig, proxy: Proxy, images: ImageStore) -> anyhow::Result<Arc<Manager>> {
        let dir = cfg.data_dir.join("instances");
        std::fs::create_dir_all(&dir)?;
        // Unix socket paths are limited to 108 bytes: keep them short, under /tmp.
        let tag = crate::images::sha256_hex(cfg.data_dir.display().to_string().as_bytes());
        let run_dir = std::env::temp_dir().join(format!("dvs-{}-{}", cfg.node, &tag[..8]));
        std::fs::create_dir_all(&run_dir)?;
        let backend = backend::from_config(cfg.backend, cfg.qemu.clone(), cfg.accel);
        Ok(Arc::new(Manager {
            node: cfg.node,
            proxy,
            images,
            backend,
            fake: Box::new(backend::Fake::new()),
            run_dir,
            dir,
            cfg,
            inner: Mutex::new(BTreeMap::new()),
        }))
    }

    /// The node's backend, described.
    pub fn backend(&self) -> String {
        self.backend.describe()
    }

    /// The image store.
    pub fn images(&self) -> &ImageStore {
        &self.images
    }

    /// The proxy.
    pub fn proxy(&self) -> &Proxy {
        &self.proxy
    }

    /// Boots every instance recorded on disk (after a daemon restart).
    pub fn restore(self: &Arc<Self>) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for e in entries.flatten() {
            let path = e.path();
            if path.extension().and_then(|x| x.to_str()) != Some("json") {
                continue;
            }
            let spec: Option<InstanceSpec> = std::fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok());
            match spec {
                Some(spec) => {
                    if let Err(e) = self.run(RunRequest {
                        spec,
                        takeover_gen: None,
                    }) {
                        tracing::warn!("restoring {}: {e}", path.display());
                    }
                }
                None => tracing::warn!("skipping unreadable instance record {}", path.display()),
            }
        }
    }

    fn console_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.log"))
    }

    /// Checks a spec and starts the instance's supervisor.
    pub fn run(self: &Arc<Self>, req: RunRequest) -> Result<InstanceView, InstanceError> {
        let spec = req.spec;
        if !valid_name(&spec.name) {
            return Err(InstanceError::Invalid(format!(
                "instance name '{}': use 1-32 of a-z, 0-9 and -",
                spec.name
            )));
        }
        let cluster = self.proxy.cluster();
        let Some(dc) = cluster.dc(DcId(spec.dc)) else {
            return Err(InstanceError::Dc(format!(
                "DC {} is not in the cluster",
                spec.dc
            )));
        };
        if !dc.nodes.contains(&self.node) {
            return Err(InstanceError::Dc(format!(
                "DC {} ({}) does not span node {}",
                spec.dc, dc.name, self.node
            )));
        }
        let image = self.images.find(&spec.image)?;
        let mut seen = std::collections::BTreeSet::new();
        for &ep in &spec.endpoints {
            if ep == 0 || !Endpoint(ep).is_addressable() || !seen.insert(ep) {
                return Err(InstanceError::Invalid(format!(
                    "endpoint {ep} is reserved or given twice"
                )));
            }
        }
        let mut inner = lock(&self.inner);
        if inner.contains_key(&spec.name) {
            return Err(InstanceError::NameTaken(spec.name));
        }
        if req.takeover_gen.is_none() {
            for &ep in &spec.endpoints {
                if let Some(place) = self.proxy.lookup(DcId(spec.dc), Endpoint(ep)) {
                    let holder = if place.node.0 == self.node {
                        let owner = inner
                            .iter()
                            .find(|(_, i)| i.port == place.port)
                            .map(|(n, _)| n.clone());
                        format!("by instance '{}' on this node", owner.unwrap_or_default())
                    } else {
                        format!("by node {}", place.node.0)
                    };
                    return Err(InstanceError::EndpointTaken {
                        dc: spec.dc,
                        ep,
                        holder,
                    });
                }
            }
        }
        let record = self.dir.join(format!("{}.json", spec.name));
        let json =
            serde_json::to_vec_pretty(&spec).map_err(|e| InstanceError::Other(e.to_string()))?;
        std::fs::write(&record, json)
            .map_err(|e| InstanceError::Other(format!("{}: {e}", record.display())))?;
        let (stop_tx, stop_rx) = mpsc::channel(1);
        let inst = Instance {
            mac: mac_for(spec.dc, &spec.name),
            image_sha256: image.manifest.sha256.clone(),
            state: State::Starting,
            last_exit: None,
            boots: 0,
            pid: None,
            cmdline: String::new(),
            gen: req.takeover_gen.unwrap_or(0).max(now_micros()),
            port: None,
            stop: Some(stop_tx),
            takeover: req.takeover_gen.is_some(),
            inc: 0,
            spec: spec.clone(),
        };
        inner.insert(spec.name.clone(), inst);
        drop(inner);
        let me = self.clone();
        let name = spec.name.clone();
        tokio::spawn(async move { me.supervise(name, stop_rx).await });
        self.view(&spec.name)
            .ok_or(InstanceError::NotFound(spec.name))
    }

    fn view_of(&self, i: &Instance) -> InstanceView {
        let kind = i.spec.backend.unwrap_or(self.cfg.backend);
        InstanceView {
            spec: i.spec.clone(),
            node: self.node,
            image_sha256: i.image_sha256.clone(),
            state: i.state.clone(),
            last_exit: i.last_exit.clone(),
            boots: i.boots,
            pid: i.pid,
            mac: backend::mac_string(&i.mac),
            cmdline: i.cmdline.clone(),
            gen: i.gen,
            backend: if kind == BackendKind::Fake {
                self.fake.describe()
            } else {
                self.backend.describe()
            },
        }
    }

    /// One instance.
    pub fn view(&self, name: &str) -> Option<InstanceView> {
        lock(&self.inner).get(name).map(|i| self.view_of(i))
    }

    /// All instances.
    pub fn list(&self) -> Vec<InstanceView> {
        lock(&self.inner)
            .values()
            .map(|i| self.view_of(i))
            .collect()
    }

    /// The VM port of a running instance.
    pub fn port_of(&self, name: &str) -> Option<PortId> {
        lock(&self.inner).get(name).and_then(|i| i.port)
    }

    /// Stops an instance and forgets it (its record and its port go; its console log stays).
    pub async fn stop(&self, name: &str) -> Result<(), InstanceError> {
        let stop = lock(&self.inner)
            .get_mut(name)
            .ok_or_else(|| InstanceError::NotFound(name.into()))?
            .stop
            .take();
        let _ = std::fs::remove_file(self.dir.join(format!("{name}.json")));
        if let Some(stop) = stop {
            let _ = stop.send(true).await;
            for _ in 0..100 {
                if lock(&self.inner)
                    .get(name)
                    .is_none_or(|i| matches!(i.state, State::Stopped))
                {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        lock(&self.inner).remove(name);
        Ok(())
    }

    /// Kills every machine without forgetting the instances (daemon shutdown: they come back on restart).
    pub async fn shutdown(&self) {
        let stops: Vec<_> = lock(&self.inner)
            .values_mut()
            .filter_map(|i| i.stop.take())
            .collect();
        for s in stops {
            let _ = s.send(false).await;
        }
        for _ in 0..100 {
            if lock(&self.inner).values().all(|i| i.pid.is_none()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The console log of an instance (the last `tail` lines when given).
    pub fn logs(&self, name: &str, tail: Option<usize>) -> Result<String, InstanceError> {
        let path = self.console_path(name);
        let bytes = std::fs::read(&path).map_err(|_| InstanceError::NotFound(name.into()))?;
        let text = String::from_utf8_lossy(&bytes).into_owned();
        Ok(match tail {
            Some(n) => {
                let lines: Vec<&str> = text.lines().collect();
                lines[lines.len().saturating_sub(n)..].join("\n") + "\n"
            }
            None => text,
        })
    }

    fn plan(&self, name: &str) -> Result<(BootPlan, PortSpec, BackendKind), InstanceError> {
        let mut inner = lock(&self.inner);
        let i = inner
            .get_mut(name)
            .ok_or_else(|| InstanceError::NotFound(name.into()))?;
        let image = self.images.find(&i.image_sha256)?;
        // The incarnation must grow from boot to boot: tenths of a second, and more than the last one.
        let inc = ((now_micros() / 100_000) as u32).max(i.inc + 1);
        i.inc = inc;
        let s = &i.spec;
        let cmdline = kernel_cmdline(s, inc);
        i.cmdline = cmdline.clone();
        let fabric = match self.cfg.netdev {
            NetdevKind::Dgram => PortKind::Dgram {
                proxy_path: self.run_dir.join(format!("{name}-p.sock")),
                vm_path: self.run_dir.join(format!("{name}-vm.sock")),
            },
            NetdevKind::Stream => PortKind::Stream {
                path: self.run_dir.join(format!("{name}.sock")),
            },
        };
        let plan = BootPlan {
            name: name.into(),
            kernel: image.kernel.clone(),
            cmdline,
            memory_mib: s.memory.unwrap_or(image.manifest.memory).max(16),
            fabric,
            mac: i.mac,
            publish: s.publish.clone(),
            console: self.console_path(name),
        };
        let port = PortSpec {
            name: name.into(),
            dc: DcId(s.dc),
            endpoints: s.endpoints.iter().map(|&e| Endpoint(e)).collect(),
            mac: Some(i.mac),
            gen: i.gen,
            announce: if i.takeover {
                Announce::OnFirstFrame
            } else {
                Announce::Now
            },
        };
        Ok((plan, port, s.backend.unwrap_or(self.cfg.backend)))
    }

    fn set(&self, name: &str, f: impl FnOnce(&mut Instance)) {
        if let Some(i) = lock(&self.inner).get_mut(name) {
            f(i);
        }
    }

    /// Boots, watches and restarts one instance until it is stopped (`true`: forget it) or the daemon shuts
    /// down (`false`).
    async fn supervise(self: Arc<Self>, name: String, mut stop: mpsc::Receiver<bool>) {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> InstanceSpec {
        InstanceSpec {
            name: "web".into(),
            image: "vos".into(),
            dc: 3,
            endpoints: vec![10, 11],
            services: vec!["http".into(), "echo".into()],
            memory: None,
            ip: Some("10.1.0.2/24".into()),
            args: vec!["stats=1".into()],
            publish: vec![Publish {
                host: 8080,
                guest: 80,
            }],
            restart: RestartPolicy::OnFailure,
            backend: None,
        }
    }

    #[test]
    fn cmdline_is_the_vos_one() {
        assert_eq!(
            kernel_cmdline(&spec(), 42),
            "dc=3 ep=10,11 svc=http,echo ip=10.1.0.2/24 pub_ip=10.0.2.15/24 pub_gw=10.0.2.2 inc=42 stats=1"
        );
    }

    #[test]
    fn macs_are_stable_local_and_per_dc() {
        let a = mac_for(3, "web");
        assert_eq!(a, mac_for(3, "web"));
        assert_eq!(a[0] & 0x03, 0x02, "locally administered unicast");
        assert_ne!(a, mac_for(4, "web"));
        assert_ne!(a, mac_for(3, "web2"));
    }

    #[test]
    fn names_are_checked() {
        assert!(valid_name("echo-2"));
        assert!(!valid_name("Echo"));
        assert!(!valid_name("a/b"));
        assert!(!valid_name(&"x".repeat(33)));
    }

    #[test]
    fn specs_round_trip_as_json() {
        let json = serde_json::to_string(&spec()).unwrap();
        assert_eq!(serde_json::from_str::<InstanceSpec>(&json).unwrap(), spec());
        assert!(serde_json::from_str::<InstanceSpec>(
            r#"{"name":"x","image":"v","dc":1,"bogus":1}"#
        )
        .is_err());
    }
}
