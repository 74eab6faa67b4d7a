//! VM backends: how an instance's machine is started. QEMU (`-M microvm`, KVM or TCG) is the real one; `fake`
//! starts a host-side fake instance with the same command line and fabric port. Every child gets
//! PR_SET_PDEATHSIG and its own process group, so none outlives the node daemon.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use dvs_proxy::port::PortKind;
use serde::{Deserialize, Serialize};
use tokio::process::{Child, Command};

use crate::config::{Accel, BackendKind};

/// A host port forwarded to a guest TCP port through the publish NIC.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Publish {
    /// Host TCP port (on 127.0.0.1).
    pub host: u16,
    /// Guest TCP port.
    pub guest: u16,
}

impl std::str::FromStr for Publish {
    type Err = String;
    fn from_str(s: &str) -> Result<Publish, String> {
        let (h, g) = s
            .split_once(':')
            .ok_or_else(|| format!("'{s}': expected HOST:GUEST"))?;
        let port = |p: &str| {
            p.parse::<u16>()
                .map_err(|_| format!("'{p}' in '{s}' is not a port"))
        };
        Ok(Publish {
            host: port(h)?,
            guest: port(g)?,
        })
    }
}

/// Everything needed to start one instance's machine.
#[derive(Clone, Debug)]
pub struct BootPlan {
    /// Instance name.
    pub name: String,
    /// Kernel ELF.
    pub kernel: PathBuf,
    /// Kernel command line.
    pub cmdline: String,
    /// Memory in MiB.
    pub memory_mib: u32,
    /// The fabric port (the machine opens the instance's end).
    pub fabric: PortKind,
    /// Fabric MAC.
    pub mac: [u8; 6],
    /// Published ports (a second NIC on QEMU user networking).
    pub publish: Vec<Publish>,
    /// Console log file.
    pub console: PathBuf,
}

/// Starts machines.
pub trait VmBackend: Send + Sync {
    /// Short name for the node status.
    fn describe(&self) -> String;
    /// Starts the machine of `plan`; the child dies with the daemon.
    fn spawn(&self, plan: &BootPlan) -> std::io::Result<Child>;
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn mac_string(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn console_file(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}

/// Puts the child in its own process group and asks the kernel to SIGKILL it when the daemon dies.
fn guard(cmd: &mut Command) {
    cmd.kill_on_drop(true);
    // SAFETY: the closure runs in the forked child before exec and only calls async-signal-safe functions
    // (prctl, getppid, setpgid, _exit).
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            if libc::getppid() == 1 {
                libc::_exit(1); // the daemon is already gone
            }
            if libc::setpgid(0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// QEMU `-M microvm`.
pub struct Qemu {
    /// The binary.
    pub binary: PathBuf,
    /// True for KVM, false for TCG.
    pub kvm: bool,
}

impl Qemu {
    /// A QEMU backend; `Accel::Auto` picks KVM when `/dev/kvm` opens read-write.
    pub fn new(binary: PathBuf, accel: Accel) -> Qemu {
        let kvm = match accel {
            Accel::Kvm => true,
            Accel::Tcg => false,
            Accel::Auto => std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/kvm")
                .is_ok(),
        };
        Qemu { binary, kvm }
    }

    /// The QEMU arguments for `plan`.
    pub fn args(&self, plan: &BootPlan) -> Vec<String> {
        let mut a: Vec<String> = vec![
            "-M".into(),
            "microvm,acpi=off".into(),
            "-accel".into(),
            if self.kvm { "kvm" } else { "tcg" }.into(),
            "-m".into(),
            format!("{}M", plan.memory_mib),
            "-smp".into(),
            "1".into(),
            "-nodefaults".into(),
            "-no-user-config".into(),
            "-nographic".into(),
            "-no-reboot".into(),
            "-kernel".into(),
            plan.kernel.display().to_string(),
            "-append".into(),
            plan.cmdline.clone(),
            "-chardev".into(),
            format!("file,id=con,path={},append=on", plan.console.display()),
            "-serial".into(),
            "chardev:con".into(),
            "-device".into(),
            "isa-debug-exit,iobase=0xf4,iosize=0x04".into(),
        ];
        if self.kvm {
            // Nested KVM refuses to set the arch-capabilities MSR.
            a.extend(["-cpu".into(), "host,-arch-capabilities".into()]);
        }
        let netdev = match &plan.fabric {
            PortKind::Dgram {
                proxy_path,
                vm_path,
            } => format!(
                "dgram,id=fab,local.type=unix,local.path={},remote.type=unix,remote.path={}",
                vm_path.display(),
                proxy_path.display()
            ),
            PortKind::Stream { path } => {
                format!(
                    "stream,id=fab,server=off,addr.type=unix,addr.path={}",
                    path.display()
                )
            }
        };
        a.extend(["-netdev".into(), netdev]);
        a.extend([
            "-device".into(),
            format!("virtio-net-device,netdev=fab,mac={}", mac_string(&plan.mac)),
        ]);
        if !plan.publish.is_empty() {
            let fwd: String = plan
                .publish
                .iter()
                .map(|p| format!(",hostfwd=tcp:127.0.0.1:{}-:{}", p.host, p.guest))
                .collect();
            a.extend(["-netdev".into(), format!("user,id=pub{fwd}")]);
            a.extend(["-device".into(), "virtio-net-device,netdev=pub".into()]);
        }
        a
    }
}

impl VmBackend for Qemu {
    fn describe(&self) -> String {
        format!("qemu ({})", if self.kvm { "kvm" } else { "tcg" })
    }

    fn spawn(&self, plan: &BootPlan) -> std::io::Result<Child> {
        let log = console_file(&plan.console)?;
        let mut cmd = Command::new(&self.binary);
        cmd.args(self.args(plan))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        guard(&mut cmd);
        cmd.spawn()
    }
}

/// Host-side fake instances (`dvs-fake-vos`, found next to the running executable).
pub struct Fake {
    /// The fake instance binary.
    pub binary: PathBuf,
}

impl Fake {
    /// The fake backend using `$DVS_FAKE_VOS`, or `dvs-fake-vos` from the running executable's folder.
    pub fn new() -> Fake {
        if let Some(path) = std::env::var_os("DVS_FAKE_VOS") {
            return Fake {
                binary: path.into(),
            };
        }
        let dir = std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(Path::to_owned))
            .unwrap_or_default();
        Fake {
            binary: dir.join("dvs-fake-vos"),
        }
    }
}

impl Default for Fake {
    fn default() -> Fake {
        Fake::new()
    }
}

impl VmBackend for Fake {
    fn describe(&self) -> String {
        "fake (host-side fake instances, no VMs)".into()
    }

    fn spawn(&self, plan: &BootPlan) -> std::io::Result<Child> {
        let log = console_file(&plan.console)?;
        let mut cmd = Command::new(&self.binary);
        match &plan.fabric {
            PortKind::Dgram {
                proxy_path,
                vm_path,
            } => cmd.arg("--dgram").arg(proxy_path).arg(vm_path),
            PortKind::Stream { path } => cmd.arg("--stream").arg(path),
        };
        cmd.arg("--mac")
            .arg(mac_string(&plan.mac))
            .arg("--")
            .args(plan.cmdline.split_ascii_whitespace());
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        guard(&mut cmd);
        cmd.spawn()
    }
}

/// The backend a node config asks for.
pub fn from_config(kind: BackendKind, qemu: PathBuf, accel: Accel) -> Box<dyn VmBackend> {
    match kind {
        BackendKind::Qemu => Box::new(Qemu::new(qemu, accel)),
        BackendKind::Fake => Box::new(Fake::new()),
    }
}
