//! Instances: their specs (kept on disk, so they come back after a daemon restart), their VM port, and one
//! supervisor task each (`supervise.rs`) that boots the machine, waits for it, restarts it per policy and
//! stops it on request.

mod spec;
mod supervise;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dvs_proxy::port::PortKind;
use dvs_proxy::{Announce, PortId, PortSpec, Proxy};
use m3ipc_core::{DcId, Endpoint};
use tokio::sync::mpsc;

use crate::backend::{self, BootPlan, VmBackend};
use crate::config::{BackendKind, NetdevKind, NodeConfig};
use crate::images::ImageStore;
pub use spec::{
    kernel_cmdline, InstanceError, InstanceSpec, InstanceView, RestartPolicy, RunRequest, State,
};
use spec::{mac_for, valid_name};

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

pub(crate) fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros() as u64
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
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
        if !valid_name(name) {
            // Names become file names: nothing else may reach the file system.
            return Err(InstanceError::NotFound(name.into()));
        }
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
}
