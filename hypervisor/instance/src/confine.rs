//! Confinement of a machine on the host: a cgroup of its own with memory, CPU and process
//! limits, and (for QEMU) an unprivileged uid of its own, a seccomp sandbox and an empty chroot.
//!
//! The order at start, all done by the host process as root:
//! 1. [`Cgroup::create`] makes the machine's cgroup (`<hierarchy>/<Confinement::cgroup>`) in
//!    every hierarchy it needs (cgroup v2's one, or v1's `memory`, `cpu` and `pids`) and writes
//!    the limits;
//! 2. the forked child writes itself into those cgroups' `cgroup.procs` before it execs
//!    ([`Cgroup::join_in_child`]), so that all the machine ever allocates is counted;
//! 3. QEMU opens everything it needs (its kernel, drives, sockets, `/dev/kvm`) as root, then
//!    drops to `uid:gid` and chroots into the empty [`Confinement::root`] (`-runas`, `-chroot`)
//!    with its seccomp filter on (`-sandbox`): from then on it reaches no host file by name, and
//!    no other instance (each has a uid of its own).
//!
//! When the machine has ended, its cgroup tells whether the kernel killed it for its memory
//! limit ([`Cgroup::oom_kills`]), and is removed.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Where the cgroup hierarchies are mounted.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// The CFS period the CPU limit is expressed in, µs.
const CPU_PERIOD_US: u64 = 100_000;

/// Host limits of one machine's processes (its cgroup).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Memory of the whole machine process, MiB: guest RAM as the guest touches it, the VMM's
    /// own memory and the page cache of its files. Past it the kernel kills the machine.
    pub memory_mib: u64,
    /// CPU time, in percent of one core (150: one and a half cores), over 100 ms periods.
    pub cpu_percent: u32,
    /// Processes and threads.
    pub pids: u32,
}

/// How a machine is confined on the host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confinement {
    /// The uid the machine runs as once it has started (one of its own; need not exist in
    /// `/etc/passwd`).
    pub uid: u32,
    /// The gid the machine runs as.
    pub gid: u32,
    /// An empty directory the machine chroots into once it has started (made if missing).
    pub root: PathBuf,
    /// The machine's cgroup, relative to each hierarchy's root (`dvs/node1.4242/web`); made
    /// with [`Confinement::limits`] at start, removed when the machine has ended.
    pub cgroup: String,
    /// The limits.
    pub limits: Limits,
}

/// Why a machine could not be confined.
#[derive(Debug, thiserror::Error)]
pub enum ConfineError {
    /// No usable cgroup hierarchy (v2 with the memory, cpu and pids controllers, or v1's).
    #[error("no usable cgroup hierarchy under {CGROUP_ROOT}: {0}")]
    NoCgroups(String),
    /// A cgroup file or directory could not be written.
    #[error("{path}: {error}", path = path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// The cgroup name is not a relative path of plain names.
    #[error("bad cgroup name {0:?}")]
    BadName(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ConfineError + '_ {
    move |error| ConfineError::Io {
        path: path.to_path_buf(),
        error,
    }
}

/// The cgroup hierarchies of this host.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Layout {
    /// cgroup v2: one hierarchy with every controller.
    V2(PathBuf),
    /// cgroup v1: one hierarchy per controller.
    V1 {
        memory: PathBuf,
        cpu: PathBuf,
        pids: PathBuf,
    },
}

impl Layout {
    fn detect() -> Result<Layout, ConfineError> {
        let root = Path::new(CGROUP_ROOT);
        if let Ok(c) = std::fs::read_to_string(root.join("cgroup.controllers")) {
            let have: Vec<&str> = c.split_whitespace().collect();
            let missing: Vec<&str> = ["memory", "cpu", "pids"]
                .into_iter()
                .filter(|c| !have.contains(c))
                .collect();
            if missing.is_empty() {
                return Ok(Layout::V2(root.to_path_buf()));
            }
            return Err(ConfineError::NoCgroups(format!(
                "cgroup v2 without the {} controller(s)",
                missing.join(", ")
            )));
        }
        let find = |names: &[&str], probe: &str| {
            names
                .iter()
                .map(|n| root.join(n))
                .find(|d| d.join(probe).exists())
        };
        match (
            find(&["memory"], "memory.limit_in_bytes"),
            find(&["cpu", "cpu,cpuacct"], "cpu.cfs_quota_us"),
            find(&["pids"], "cgroup.procs"),
        ) {
            (Some(memory), Some(cpu), Some(pids)) => Ok(Layout::V1 { memory, cpu, pids }),
            _ => Err(ConfineError::NoCgroups(
                "neither cgroup v2 nor v1's memory, cpu and pids hierarchies".into(),
            )),
        }
    }

    fn roots(&self) -> Vec<PathBuf> {
        match self {
            Layout::V2(r) => vec![r.clone()],
            Layout::V1 { memory, cpu, pids } => vec![memory.clone(), cpu.clone(), pids.clone()],
        }
    }
}

/// Whether this host can confine machines: `Ok` if a cgroup hierarchy with memory, CPU and
/// process limits is there and this process may make cgroups in it (it is root).
pub fn available() -> Result<(), ConfineError> {
    Layout::detect()?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(ConfineError::NoCgroups(
            "making cgroups and dropping to another uid needs root".into(),
        ));
    }
    Ok(())
}

/// Makes cgroup `name` (a relative path: `dvs/node1.4242/dc1`), meant as the parent of
/// machines' cgroups, and holds everything below it to `memory_mib` and `cpu_percent` (None:
/// no limit of its own). Written again on every call: the last call's limits hold.
pub fn set_group_limits(
    name: &str,
    memory_mib: Option<u64>,
    cpu_percent: Option<u32>,
) -> Result<(), ConfineError> {
    let (layout, dirs) = make_dirs(name)?;
    if let Layout::V2(_) = layout {
        // A parent: its children get the controllers.
        enable_v2_controllers(&dirs[0])?;
    }
    write_memory_and_cpu(&layout, &dirs, memory_mib, cpu_percent)
}

/// Writes the memory limit (MiB) and the CPU limit (percent of one core) of the cgroup in
/// `dirs` (in the order of [`Layout::roots`]); None lifts that limit.
fn write_memory_and_cpu(
    layout: &Layout,
    dirs: &[PathBuf],
    memory_mib: Option<u64>,
    cpu_percent: Option<u32>,
) -> Result<(), ConfineError> {
    let bytes = memory_mib.map(|m| m.saturating_mul(1 << 20).to_string());
    let quota = cpu_percent.map(|c| (u64::from(c.max(1)) * CPU_PERIOD_US / 100).to_string());
    match layout {
        Layout::V2(_) => {
            let d = &dirs[0];
            write(&d.join("memory.max"), bytes.as_deref().unwrap_or("max"))?;
            let cpu = quota.as_deref().unwrap_or("max");
            write(&d.join("cpu.max"), &format!("{cpu} {CPU_PERIOD_US}"))?;
        }
        Layout::V1 { .. } => {
            let (mem, cpu) = (&dirs[0], &dirs[1]);
            let b = bytes.as_deref().unwrap_or("-1");
            // memsw (memory + swap) must stay >= the memory limit: lower it last, raise it
            // first.
            let memsw = mem.join("memory.memsw.limit_in_bytes");
            let _ = std::fs::write(&memsw, b);
            write(&mem.join("memory.limit_in_bytes"), b)?;
            write_if_present(&memsw, b)?;
            write(&cpu.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
            write(
                &cpu.join("cpu.cfs_quota_us"),
                quota.as_deref().unwrap_or("-1"),
            )?;
        }
    }
    Ok(())
}

/// Makes cgroup `name` and its parents in every hierarchy (v2: handing the controllers down);
/// returns the layout and its directories in the order of [`Layout::roots`].
fn make_dirs(name: &str) -> Result<(Layout, Vec<PathBuf>), ConfineError> {
    let rel = Path::new(name);
    let plain = !name.is_empty()
        && rel
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)));
    if !plain {
        return Err(ConfineError::BadName(name.into()));
    }
    let layout = Layout::detect()?;
    let mut dirs = Vec::new();
    for root in layout.roots() {
        if let Layout::V2(_) = layout {
            // Each level down to this one must hand the controllers on.
            let mut d = root.clone();
            for c in rel.parent().into_iter().flat_map(Path::components) {
                enable_v2_controllers(&d)?;
                d.push(c);
                mkdir(&d)?;
            }
            enable_v2_controllers(&d)?;
        }
        let dir = root.join(rel);
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        dirs.push(dir);
    }
    Ok((layout, dirs))
}

/// One machine's cgroup, in every hierarchy it needs.
#[derive(Debug)]
pub struct Cgroup {
    layout: Layout,
    /// The machine's directory in each hierarchy.
    dirs: Vec<PathBuf>,
    /// `cgroup.procs` of each, for the child to join before it execs.
    procs: Vec<CString>,
    limits: Limits,
}

impl Cgroup {
    /// Makes cgroup `name` (a relative path: `dvs/node1.4242/web`) with `limits`. A cgroup left
    /// by an earlier machine of the same name is reused if empty.
    pub fn create(name: &str, limits: &Limits) -> Result<Cgroup, ConfineError> {
        let (layout, dirs) = make_dirs(name)?;
        let procs = dirs
            .iter()
            .map(|d| {
                CString::new(d.join("cgroup.procs").as_os_str().as_bytes())
                    .map_err(|_| ConfineError::BadName(name.into()))
            })
            .collect::<Result<_, _>>()?;
        let cg = Cgroup {
            layout,
            dirs,
            procs,
            limits: *limits,
        };
        cg.write_limits()?;
        Ok(cg)
    }

    fn write_limits(&self) -> Result<(), ConfineError> {
        let l = &self.limits;
        write_memory_and_cpu(
            &self.layout,
            &self.dirs,
            Some(l.memory_mib),
            Some(l.cpu_percent),
        )?;
        let pids = match &self.layout {
            Layout::V2(_) => {
                // No swap: the limit is the memory the machine has.
                write_if_present(&self.dirs[0].join("memory.swap.max"), "0")?;
                &self.dirs[0]
            }
            Layout::V1 { .. } => &self.dirs[2],
        };
        write(&pids.join("pids.max"), &l.pids.to_string())
    }

    /// The limits it was made with.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// The machine's directory in each hierarchy (v2: one).
    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// Moves the calling process into this cgroup: for a forked child before it execs. Only
    /// async-signal-safe calls (open, write, close); no allocation.
    pub fn join_in_child(&self) -> std::io::Result<()> {
        for p in &self.procs {
            // SAFETY: `p` is a NUL-terminated path that outlives the calls; the buffer is one
            // static byte.
            unsafe {
                let fd = libc::open(p.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let n = libc::write(fd, b"0".as_ptr().cast(), 1);
                let err = std::io::Error::last_os_error();
                libc::close(fd);
                if n != 1 {
                    return Err(err);
                }
            }
        }
        Ok(())
    }

    /// How many times the kernel killed a process of this cgroup for its memory limit.
    pub fn oom_kills(&self) -> u64 {
        let (file, d) = match &self.layout {
            Layout::V2(_) => ("memory.events", &self.dirs[0]),
            Layout::V1 { .. } => ("memory.oom_control", &self.dirs[0]),
        };
        std::fs::read_to_string(d.join(file))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("oom_kill "))
                    .and_then(|v| v.trim().parse().ok())
            })
            .unwrap_or(0)
    }

    /// Removes the cgroup (it must be empty: call once the machine's processes are gone).
    /// A cgroup still busy is left, and logged to stderr.
    pub fn remove(&self) {
        for d in &self.dirs {
            // Killed processes leave their cgroup a moment after they are reaped.
            let mut left = 50;
            loop {
                match std::fs::remove_dir(d) {
                    Ok(()) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                    Err(e) if left > 0 && e.raw_os_error() == Some(libc::EBUSY) => {
                        left -= 1;
                        std::thread::sleep(std::time::Duration::from_millis(10));
                    }
                    Err(e) => {
                        eprintln!("dvs-instance: leaving cgroup {}: {e}", d.display());
                        break;
                    }
                }
            }
        }
    }
}

/// Removes the empty cgroups under `parent` (relative, `dvs`) whose name ends in `.<pid>` of a
/// process that no longer runs: what a host process that was killed left behind (its machines
/// were killed with it). Returns how many it removed.
pub fn sweep_stale(parent: &str) -> usize {
    let Ok(layout) = Layout::detect() else {
        return 0;
    };
    let mut removed = 0;
    for root in layout.roots() {
        let Ok(entries) = std::fs::read_dir(root.join(parent)) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            let Some(pid) = name
                .to_str()
                .and_then(|n| n.rsplit_once('.'))
                .and_then(|(_, p)| p.parse::<u32>().ok())
            else {
                continue;
            };
            if Path::new(&format!("/proc/{pid}")).exists() {
                continue;
            }
            removed += remove_tree(&e.path());
        }
    }
    removed
}

/// Removes a cgroup directory and the (empty) cgroups below it, leaves first.
fn remove_tree(dir: &Path) -> usize {
    let mut n = 0;
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                n += remove_tree(&e.path());
            }
        }
    }
    if std::fs::remove_dir(dir).is_ok() {
        n += 1;
    }
    n
}

fn enable_v2_controllers(dir: &Path) -> Result<(), ConfineError> {
    write(&dir.join("cgroup.subtree_control"), "+memory +cpu +pids")
}

fn mkdir(d: &Path) -> Result<(), ConfineError> {
    match std::fs::create_dir(d) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(ConfineError::Io {
            path: d.to_path_buf(),
            error: e,
        }),
    }
}

fn write(path: &Path, value: &str) -> Result<(), ConfineError> {
    std::fs::write(path, value).map_err(io(path))
}

fn write_if_present(path: &Path, value: &str) -> Result<(), ConfineError> {
    match std::fs::write(path, value) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        r => r.map_err(io(path)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_names_must_be_plain_relative_paths() {
        let l = Limits {
            memory_mib: 64,
            cpu_percent: 100,
            pids: 16,
        };
        for bad in ["", "/abs", "../up", "dvs/../x", "./x"] {
            assert!(
                matches!(Cgroup::create(bad, &l), Err(ConfineError::BadName(_))),
                "{bad:?}"
            );
        }
    }
}
