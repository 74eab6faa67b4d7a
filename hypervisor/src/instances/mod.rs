//! Instances: their specs (kept on disk, so they come back after a daemon restart), their VM port, their
//! publish gateway (dvs-publish: the published ports, listened on from `run` until the instance is stopped or
//! will not boot again, carried to the guest over its publish NIC, `<run_dir>/<name>-pub.sock`), and one
//! supervisor task each (`supervise.rs`) that boots the machine through dvs-instance, follows its control
//! channel (readiness, counters, reports), waits for it, restarts it per policy and stops it on request.

mod spec;
mod supervise;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dvs_instance::{
    ConsoleSink, Kernel, MachineType, Nic, NicBackend, ProcessBackend, QemuBackend, VmBackend,
    VmSpec,
};
use dvs_proxy::port::PortKind;
use dvs_proxy::{Announce, PortId, PortSpec, Proxy};
use dvs_publish::{GatewayHandle, PublishError};
use dvs_vos_abi::BootConfig;
use m3ipc_core::{DcId, Endpoint};
use tokio::sync::{mpsc, watch};

use crate::config::{BackendKind, ConfineMode, NetdevKind, NodeConfig, VmPortKind, UIDS_PER_NODE};
use crate::images::ImageStore;
use crate::volumes::VolumeStore;
pub use spec::{
    boot_config, GuestView, InstanceError, InstanceSpec, InstanceView, LimitsSpec, Publish,
    RestartPolicy, RunRequest, State, PUBLISH_GW, PUBLISH_IP, REPORTS_KEPT,
};
use spec::{mac_for, valid_name};

/// The cgroup every confined instance's cgroup is under: `dvs/<node>.<daemon pid>/dc<N>/<instance>`.
const CGROUP_PARENT: &str = "dvs";

/// The longest a `wait_after` request may wait.
pub const MAX_WAIT: Duration = Duration::from_secs(60);

struct Instance {
    spec: InstanceSpec,
    image_sha256: String,
    state: State,
    last_exit: Option<String>,
    boots: u32,
    pid: Option<u32>,
    /// When its current machine started (none while it has none).
    since: Option<std::time::SystemTime>,
    mac: [u8; 6],
    cmdline: String,
    boot_config: Option<BootConfig>,
    gen: u64,
    port: Option<PortId>,
    stop: Option<mpsc::Sender<bool>>,
    takeover: bool,
    inc: u32,
    guest: GuestView,
    rev: u64,
    /// The published ports' gateway (bound at `run`, across reboots).
    gateway: Option<GatewayHandle>,
    /// Its slot among the node's instances: its uid when confined (`confine_uid_base`).
    slot: u32,
    /// Its machine's host limits, when it is a confined machine (counted against its DC's quota).
    limits: Option<dvs_instance::Limits>,
}

/// What a boot needs: the machine's spec, the port of the proxy it plugs into, and the backend that starts it.
struct Plan {
    vm: VmSpec,
    port: PortSpec,
    fabric: PortKind,
    backend: Box<dyn VmBackend>,
}

/// Which part of a console log to read ([`Manager::log_read`]; the query of `GET /v1/instances/{name}/logs`).
#[derive(Clone, Debug, Default, serde::Deserialize)]
pub struct LogQuery {
    /// Only the last this many lines.
    pub tail: Option<usize>,
    /// Only the lines written at or after this moment, Unix milliseconds.
    pub since_ms: Option<u64>,
    /// Only what came after this cursor (`FILE-OFFSET`, from an earlier answer): for following a log.
    #[serde(default, deserialize_with = "cursor_opt")]
    pub after: Option<dvs_instance::console_log::Cursor>,
}

fn cursor_opt<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<dvs_instance::console_log::Cursor>, D::Error> {
    let s: Option<String> = serde::Deserialize::deserialize(d)?;
    s.map(|s| s.parse().map_err(serde::de::Error::custom))
        .transpose()
}

/// The instance manager of one node.
pub struct Manager {
    node: u16,
    cfg: NodeConfig,
    proxy: Proxy,
    images: ImageStore,
    volumes: VolumeStore,
    qemu: QemuBackend,
    accel: dvs_instance::Accel,
    run_dir: PathBuf,
    dir: PathBuf,
    /// QEMU instances are confined (`confine` in node.toml, resolved at start).
    confine: bool,
    inner: Mutex<BTreeMap<String, Instance>>,
    /// The last revision handed out; every change of an instance takes the next one.
    rev: watch::Sender<u64>,
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
        cfg.check()?;
        let volumes = VolumeStore::open(&cfg.data_dir, cfg.max_volume)?;
        let confine = match (cfg.confine, dvs_instance::confine::available()) {
            (ConfineMode::Off, _) => false,
            (_, Ok(())) => true,
            (ConfineMode::On, Err(e)) => {
                anyhow::bail!("confine = \"on\", but this host cannot confine instances: {e}")
            }
            (ConfineMode::Auto, Err(e)) => {
                tracing::warn!(
                    "QEMU instances run unconfined (no cgroup limits, as this daemon's user): {e}"
                );
                false
            }
        };
        if confine {
            let swept = dvs_instance::confine::sweep_stale(CGROUP_PARENT);
            if swept > 0 {
                tracing::info!("removed {swept} cgroups left by daemons that are gone");
            }
            let root = run_dir.join("root");
            std::fs::create_dir_all(&root)?;
            tracing::info!(
                "QEMU instances are confined: cgroups {CGROUP_PARENT}/{}.{}/dc<N>/<instance>, uids from {}, seccomp, chroot {}",
                cfg.node,
                std::process::id(),
                cfg.confine_uid_base + u32::from(cfg.node) * UIDS_PER_NODE,
                root.display()
            );
        }
        Ok(Arc::new(Manager {
            confine,
            node: cfg.node,
            proxy,
            images,
            volumes,
            qemu: QemuBackend::new(cfg.qemu.clone()),
            accel: cfg.accel(),
            run_dir,
            dir,
            cfg,
            inner: Mutex::new(BTreeMap::new()),
            rev: watch::channel(0).0,
        }))
    }

    /// The node's backend, described.
    pub fn backend(&self) -> String {
        self.describe(self.cfg.backend)
    }

    fn describe(&self, kind: BackendKind) -> String {
        match kind {
            BackendKind::Qemu => {
                format!("qemu ({}, {})", self.cfg.qemu.display(), self.accel.name())
            }
            BackendKind::Process => match &self.cfg.process_program {
                Some(p) => format!("process ({})", p.display()),
                None => "process (no process_program)".into(),
            },
        }
    }

    /// The backend that starts `spec`'s machine.
    fn backend_for(&self, spec: &InstanceSpec) -> Result<Box<dyn VmBackend>, InstanceError> {
        match spec.backend.unwrap_or(self.cfg.backend) {
            BackendKind::Qemu => {
                if !spec.process_args.is_empty() {
                    return Err(InstanceError::Invalid(format!(
                        "instance '{}': process_args {:?} need the process backend",
                        spec.name, spec.process_args
                    )));
                }
                Ok(Box::new(self.qemu.clone()))
            }
            BackendKind::Process => match &self.cfg.process_program {
                Some(p) => Ok(Box::new(
                    ProcessBackend::new(p.clone()).with_args(spec.process_args.clone()),
                )),
                None => Err(InstanceError::Invalid(format!(
                    "instance '{}' asks for the process backend, but node {} has no process_program",
                    spec.name, self.node
                ))),
            },
        }
    }

    /// The image store.
    pub fn images(&self) -> &ImageStore {
        &self.images
    }

    /// The proxy.
    pub fn proxy(&self) -> &Proxy {
        &self.proxy
    }

    /// The node's volumes.
    pub fn volumes(&self) -> &VolumeStore {
        &self.volumes
    }

    /// Boots every instance recorded on disk (after a daemon restart); they claim their volumes again.
    pub fn restore(self: &Arc<Self>) {
        self.restore_with(|_| true)
    }

    /// The instance specs recorded on disk (what [`Manager::restore`] would boot).
    pub fn recorded(&self) -> Vec<InstanceSpec> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().and_then(|x| x.to_str()) == Some("json"))
            .filter_map(|p| serde_json::from_slice(&std::fs::read(&p).ok()?).ok())
            .collect()
    }

    /// Like [`Manager::restore`], booting only the recorded instances `keep` says yes to; the records of the
    /// others are removed (e.g. instances that another node runs now).
    pub fn restore_with(self: &Arc<Self>, keep: impl Fn(&InstanceSpec) -> bool) {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries.flatten().collect(),
            Err(e) => {
                tracing::warn!("restoring instances from {}: {e}", self.dir.display());
                Vec::new()
            }
        };
        for e in entries {
            let path = e.path();
            if path.extension().and_then(|x| x.to_str()) != Some("json") {
                continue;
            }
            let spec: Option<InstanceSpec> = std::fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok());
            match spec {
                Some(spec) if !keep(&spec) => {
                    tracing::info!("not restoring '{}': it runs elsewhere now", spec.name);
                    let _ = std::fs::remove_file(&path);
                }
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
        // Volumes whose instance did not come back are free now: say so in their records.
        self.volumes.reconcile();
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
        self.backend_for(&spec)?;
        let limits = spec
            .limits
            .resolve(guest_memory(&spec, &image))
            .map_err(|e| InstanceError::Invalid(format!("instance '{}': {e}", spec.name)))?;
        let quota = dc.quota;
        let is_vos = spec.backend.unwrap_or(self.cfg.backend) == BackendKind::Qemu;
        let limits = (self.confine && is_vos).then_some(limits);
        let first = boot_config(&spec, 1, is_vos)?;
        self.volumes.check(&spec.volumes)?;
        if !spec.volumes.is_empty() && req.takeover_gen.is_some() {
            return Err(InstanceError::Invalid(format!(
                "instance '{}' has volumes ({}): a volume cannot follow an instance to another node yet",
                spec.name,
                volume_names(&spec)
            )));
        }
        if is_vos && spec.services.iter().any(|s| s == "disk") && spec.volumes.is_empty() {
            return Err(InstanceError::Invalid(format!(
                "instance '{}' runs the disk service but asks for no volume (add `volumes = [{{ name = \"data\", size = \"64M\" }}]` or `--volume data:64M`)",
                spec.name
            )));
        }
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
        // Under the instances' lock: two instances cannot both take the DC's last room.
        if let Some(l) = &limits {
            fits_quota(&inner, &spec, l, &quota)?;
        }
        // Bound under the instances' lock, before anything else is claimed: a port in use refuses the run.
        let gateway = self.publish(&spec, &first)?;
        // Claimed under the instances' lock: two instances asking for one volume cannot both get it.
        self.volumes.claim(spec.dc, &spec.name, &spec.volumes)?;
        let record = self.dir.join(format!("{}.json", spec.name));
        let written = serde_json::to_vec_pretty(&spec)
            .map_err(|e| InstanceError::Other(e.to_string()))
            .and_then(|json| {
                std::fs::write(&record, json)
                    .map_err(|e| InstanceError::Other(format!("{}: {e}", record.display())))
            });
        if let Err(e) = written {
            self.volumes.release(spec.dc, &spec.name);
            return Err(e);
        }
        let (stop_tx, stop_rx) = mpsc::channel(1);
        let used: std::collections::BTreeSet<u32> = inner.values().map(|i| i.slot).collect();
        let Some(slot) = (0..UIDS_PER_NODE).find(|s| !used.contains(s)) else {
            self.volumes.release(spec.dc, &spec.name);
            return Err(InstanceError::Invalid(format!(
                "this node holds {UIDS_PER_NODE} instances, the most it can"
            )));
        };
        let inst = Instance {
            slot,
            limits,
            mac: mac_for(spec.dc, &spec.name),
            image_sha256: image.manifest.sha256.clone(),
            state: State::Starting,
            last_exit: None,
            boots: 0,
            pid: None,
            since: None,
            cmdline: String::new(),
            boot_config: None,
            gen: req.takeover_gen.unwrap_or(0).max(now_micros()),
            port: None,
            stop: Some(stop_tx),
            takeover: req.takeover_gen.is_some(),
            inc: 0,
            spec: spec.clone(),
            guest: GuestView::default(),
            rev: self.next_rev(),
            gateway,
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
        InstanceView {
            spec: i.spec.clone(),
            node: self.node,
            image_sha256: i.image_sha256.clone(),
            state: i.state.clone(),
            last_exit: i.last_exit.clone(),
            boots: i.boots,
            pid: i.pid,
            started_at: i
                .since
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_secs()),
            mac: dvs_instance::mac_string(&i.mac),
            cmdline: i.cmdline.clone(),
            boot_config: i.boot_config.clone(),
            gen: i.gen,
            backend: self.describe(i.spec.backend.unwrap_or(self.cfg.backend)),
            guest: i.guest.clone(),
            publish: i.gateway.as_ref().map(|g| g.counters()),
            usage: i.pid.and_then(dvs_instance::usage::of_pid),
            rev: i.rev,
        }
    }

    /// The link socket of `name`'s publish NIC.
    fn publish_link(&self, name: &str) -> PathBuf {
        self.run_dir.join(format!("{name}-pub.sock"))
    }

    /// Listens on `spec`'s published ports (none: no gateway). The guest takes as many connections at once as
    /// its web server has slots (`cfg`); more clients wait in the gateway.
    fn publish(
        &self,
        spec: &InstanceSpec,
        cfg: &BootConfig,
    ) -> Result<Option<GatewayHandle>, InstanceError> {
        if spec.publish.is_empty() {
            return Ok(None);
        }
        let forwards: Vec<dvs_publish::Forward> = spec
            .publish
            .iter()
            .map(|p| dvs_publish::Forward {
                listen: p.listen(),
                guest_port: p.guest,
            })
            .collect();
        let gw_cfg = dvs_publish::Config {
            max_guest_conns: cfg.http.slots.max(1) as usize,
            ..dvs_publish::Config::default()
        };
        let link = self.publish_link(&spec.name);
        match dvs_publish::Gateway::bind(&link, &forwards, gw_cfg) {
            Ok(g) => {
                tracing::info!(
                    "instance {}: publishing {}",
                    spec.name,
                    spec.publish
                        .iter()
                        .map(|p| format!("{}:{} -> {}", p.addr, p.host, p.guest))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                Ok(Some(g.spawn()))
            }
            Err(e @ PublishError::Bind { .. }) => Err(InstanceError::PortTaken {
                name: spec.name.clone(),
                why: e.to_string(),
            }),
            Err(e) => Err(InstanceError::Other(format!(
                "instance '{}': {e}",
                spec.name
            ))),
        }
    }

    /// Stops `name`'s publish gateway, if it has one: its ports are free once this returns.
    pub(crate) async fn unpublish(&self, name: &str) {
        let gw = lock(&self.inner)
            .get_mut(name)
            .and_then(|i| i.gateway.take());
        if let Some(gw) = gw {
            gw.stop().await;
            tracing::info!("instance {name}: published ports closed");
        }
    }

    /// Takes the next revision and tells the waiters. Called with `inner` locked, so revisions are in the
    /// order of the changes.
    fn next_rev(&self) -> u64 {
        let mut rev = 0;
        self.rev.send_modify(|r| {
            *r += 1;
            rev = *r;
        });
        rev
    }

    /// Waits until `name`'s view passes `pred` or `timeout` passes; the last view (None once it is gone).
    async fn wait_for(
        &self,
        name: &str,
        timeout: Duration,
        pred: impl Fn(&InstanceView) -> bool,
    ) -> Option<InstanceView> {
        let mut changes = self.rev.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            changes.borrow_and_update();
            let v = self.view(name)?;
            if pred(&v) {
                return Some(v);
            }
            tokio::select! {
                r = changes.changed() => if r.is_err() { return Some(v) },
                _ = tokio::time::sleep_until(deadline) => return Some(v),
            }
        }
    }

    /// One instance, as soon as its revision is above `after` or after `timeout` (at most [`MAX_WAIT`]) as
    /// it is then. None if there is no such instance (or it went away).
    pub async fn wait_view(
        &self,
        name: &str,
        after: u64,
        timeout: Duration,
    ) -> Option<InstanceView> {
        self.wait_for(name, timeout.min(MAX_WAIT), |v| v.rev > after)
            .await
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
            // The supervisor is gone already when the machine ended by itself and is not restarted.
            if stop.send(true).await.is_ok() {
                self.wait_for(name, Duration::from_secs(10), |v| {
                    v.pid.is_none() && !matches!(v.state, State::Starting | State::Running)
                })
                .await;
            }
        }
        self.unpublish(name).await;
        let mut inner = lock(&self.inner);
        if let Some(i) = inner.remove(name) {
            // Its volumes stay, detached: another instance (or this one again) may take them.
            self.volumes.release(i.spec.dc, name);
        }
        self.next_rev();
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
        let gateways: Vec<_> = lock(&self.inner)
            .values_mut()
            .filter_map(|i| i.gateway.take())
            .collect();
        for g in gateways {
            g.stop().await;
        }
        let mut changes = self.rev.subscribe();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            changes.borrow_and_update();
            if lock(&self.inner).values().all(|i| i.pid.is_none()) {
                break;
            }
            tokio::select! {
                r = changes.changed() => if r.is_err() { break },
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        // With every machine gone, this run's sockets serve nothing: remove their directory
        // (a machine still alive keeps it, so that nothing pulls a socket from under it).
        if lock(&self.inner).values().all(|i| i.pid.is_none()) {
            match std::fs::remove_dir_all(&self.run_dir) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => tracing::warn!(
                    "could not remove the run directory {}: {e}",
                    self.run_dir.display()
                ),
                _ => {}
            }
        }
    }

    /// The console log of an instance (the last `tail` lines when given).
    pub fn logs(&self, name: &str, tail: Option<usize>) -> Result<String, InstanceError> {
        let q = LogQuery {
            tail,
            ..LogQuery::default()
        };
        self.log_read(name, &q).map(|(text, _)| text)
    }

    /// Part of the console log of an instance: what came after the cursor `q.after` (following it), or since
    /// `q.since_ms`, or all of the current log; then its last `q.tail` lines. With the cursor at its end now.
    pub fn log_read(
        &self,
        name: &str,
        q: &LogQuery,
    ) -> Result<(String, dvs_instance::console_log::Cursor), InstanceError> {
        use dvs_instance::console_log;
        if !valid_name(name) {
            // Names become file names: nothing else may reach the file system.
            return Err(InstanceError::NotFound(name.into()));
        }
        let path = self.console_path(name);
        let not_found = |_| InstanceError::NotFound(name.into());
        if !path.exists() {
            return Err(InstanceError::NotFound(name.into()));
        }
        let (bytes, cursor) = match (q.after, q.since_ms) {
            (Some(after), _) => console_log::read_after(&path, after).map_err(not_found)?,
            (None, Some(since)) => {
                let (_, end) = console_log::read_all(&path).map_err(not_found)?;
                (
                    console_log::read_since(&path, since).map_err(not_found)?,
                    end,
                )
            }
            (None, None) => console_log::read_all(&path).map_err(not_found)?,
        };
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let text = match q.tail {
            Some(n) => {
                let lines: Vec<&str> = text.lines().collect();
                let kept = &lines[lines.len().saturating_sub(n)..];
                if kept.is_empty() {
                    String::new()
                } else {
                    kept.join("\n") + "\n"
                }
            }
            None => text,
        };
        Ok((text, cursor))
    }

    fn plan(&self, name: &str) -> Result<Plan, InstanceError> {
        let mut inner = lock(&self.inner);
        let i = inner
            .get_mut(name)
            .ok_or_else(|| InstanceError::NotFound(name.into()))?;
        let image = self.images.find(&i.image_sha256)?;
        let backend = self.backend_for(&i.spec)?;
        let is_vos = i.spec.backend.unwrap_or(self.cfg.backend) == BackendKind::Qemu;
        // The incarnation must grow from boot to boot: tenths of a second, and more than the last one.
        let inc = ((now_micros() / 100_000) as u32).max(i.inc + 1);
        i.inc = inc;
        let s = &i.spec;
        let cfg = boot_config(s, inc, is_vos)?;
        i.cmdline = cfg.to_cmdline_word();
        i.boot_config = Some(cfg.clone());
        let vhost = is_vos && VmPortKind::resolve(self.cfg.vm_port) == VmPortKind::VhostUser;
        let (fabric, nic) = match self.cfg.netdev {
            _ if vhost => {
                let path = self.run_dir.join(format!("{name}-vu.sock"));
                (
                    PortKind::VhostUser { path: path.clone() },
                    NicBackend::VhostUser { path },
                )
            }
            NetdevKind::Dgram => {
                let proxy_path = self.run_dir.join(format!("{name}-p.sock"));
                let vm_path = self.run_dir.join(format!("{name}-vm.sock"));
                let nic = NicBackend::Dgram {
                    local: vm_path.clone(),
                    remote: proxy_path.clone(),
                };
                (
                    PortKind::Dgram {
                        proxy_path,
                        vm_path,
                    },
                    nic,
                )
            }
            NetdevKind::Stream => {
                let path = self.run_dir.join(format!("{name}.sock"));
                (
                    PortKind::Stream { path: path.clone() },
                    NicBackend::Stream { path },
                )
            }
        };
        let mut nics = vec![Nic {
            backend: nic,
            mac: i.mac,
        }];
        if !s.publish.is_empty() {
            // The publish gateway listens on this socket since `run`.
            nics.push(Nic {
                backend: NicBackend::Stream {
                    path: self.publish_link(name),
                },
                mac: [0x52, 0x54, 0x00, i.mac[3], i.mac[4], i.mac[5]],
            });
        }
        let memory_mib = guest_memory(s, &image);
        // `run` resolved the limits of a confined machine: it is confined when it has them.
        let confine = if let Some(limits) = i.limits {
            let uid = self.cfg.confine_uid_base + u32::from(self.node) * UIDS_PER_NODE + i.slot;
            // The DC's cgroup above the machine's holds all its machines here to its quota.
            let dc_group = format!(
                "{CGROUP_PARENT}/{}.{}/dc{}",
                self.node,
                std::process::id(),
                s.dc
            );
            let quota = self
                .proxy
                .cluster()
                .dc(DcId(s.dc))
                .map(|d| d.quota)
                .unwrap_or_default();
            dvs_instance::confine::set_group_limits(&dc_group, quota.memory_mib, quota.cpu_percent)
                .map_err(|e| InstanceError::Other(format!("the cgroup of DC {}: {e}", s.dc)))?;
            Some(dvs_instance::Confinement {
                uid,
                gid: uid,
                root: self.run_dir.join("root"),
                cgroup: format!("{dc_group}/{name}"),
                limits,
            })
        } else {
            None
        };
        let vm = VmSpec {
            name: name.into(),
            machine: MachineType::Microvm,
            accel: self.accel,
            memory_mib,
            kernel_path: image.kernel.clone(),
            kernel: Kernel::Config(cfg),
            nics,
            console: ConsoleSink::File(self.console_path(name)),
            control: Some(self.run_dir.join(format!("{name}-ctl.sock"))),
            // Paths made by the volume store from the DC and the names `run` checked.
            drives: s
                .volumes
                .iter()
                .map(|v| dvs_instance::Drive {
                    path: self.volumes.image_of(s.dc, &v.name),
                    read_only: false,
                })
                .collect(),
            confine,
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
        Ok(Plan {
            vm,
            port,
            fabric,
            backend,
        })
    }

    fn set(&self, name: &str, f: impl FnOnce(&mut Instance)) {
        let mut inner = lock(&self.inner);
        if let Some(i) = inner.get_mut(name) {
            f(i);
            i.rev = self.next_rev();
        }
    }
}

/// Whether an instance with `limits` fits its DC's quota on this node beside the DC's instances
/// the node already holds (running or not: each keeps its share until it is stopped).
fn fits_quota(
    inner: &BTreeMap<String, Instance>,
    spec: &InstanceSpec,
    limits: &dvs_instance::Limits,
    quota: &dvs_proxy::cluster::DcQuota,
) -> Result<(), InstanceError> {
    let others = inner
        .values()
        .filter(|i| i.spec.dc == spec.dc)
        .filter_map(|i| i.limits);
    let (mem, cpu) = others.fold(
        (limits.memory_mib, u64::from(limits.cpu_percent)),
        |(m, c), l| (m + l.memory_mib, c + u64::from(l.cpu_percent)),
    );
    if let Some(q) = quota.memory_mib {
        if mem > q {
            return Err(InstanceError::Quota(format!(
                "instance '{}' (memory limit {} MiB) would take DC {} to {mem} MiB on this node, past its quota of {q} MiB",
                spec.name, limits.memory_mib, spec.dc
            )));
        }
    }
    if let Some(q) = quota.cpu_percent {
        if cpu > u64::from(q) {
            return Err(InstanceError::Quota(format!(
                "instance '{}' (CPU limit {}%) would take DC {} to {cpu}% on this node, past its quota of {q}%",
                spec.name, limits.cpu_percent, spec.dc
            )));
        }
    }
    Ok(())
}

/// The guest RAM of an instance, MiB: its spec's, else its image's (at least 16).
fn guest_memory(spec: &InstanceSpec, image: &crate::images::Image) -> u32 {
    spec.memory.unwrap_or(image.manifest.memory).max(16)
}

/// `data, logs`: the names of `spec`'s volumes.
pub(crate) fn volume_names(spec: &InstanceSpec) -> String {
    spec.volumes
        .iter()
        .map(|v| v.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}
