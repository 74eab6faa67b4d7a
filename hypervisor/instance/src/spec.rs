//! What a machine is: the typed VM spec every backend starts from. Nothing here knows QEMU's flags
//! (that is [`crate::qemu`]).

use std::path::PathBuf;
use std::time::Duration;

use dvs_vos_abi::BootConfig;

use crate::confine::Confinement;
use serde::{Deserialize, Serialize};

/// The accelerator a machine runs with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// Hardware virtualisation through `/dev/kvm`.
    Kvm,
    /// QEMU's translator.
    Tcg,
}

impl Accel {
    /// `DVS_ACCEL=kvm|tcg` if set, else KVM when `/dev/kvm` opens read-write, else TCG.
    pub fn detect() -> Accel {
        match std::env::var("DVS_ACCEL").as_deref() {
            Ok("tcg") => return Accel::Tcg,
            Ok("kvm") => return Accel::Kvm,
            _ => {}
        }
        let ok = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_ok();
        if ok {
            Accel::Kvm
        } else {
            Accel::Tcg
        }
    }

    /// `kvm` or `tcg`.
    pub fn name(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }

    /// The time an operation that takes `base` under KVM may take here (TCG: three times as long).
    pub fn timeout(self, base: Duration) -> Duration {
        match self {
            Accel::Kvm => base,
            Accel::Tcg => base * 3,
        }
    }
}

/// The machine type.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MachineType {
    /// `microvm` without ACPI: virtio-mmio devices, announced on the kernel command line.
    #[default]
    Microvm,
    /// `q35` with qboot as firmware (SeaBIOS takes seconds under nested KVM); PCI devices.
    Q35,
}

impl MachineType {
    /// `microvm` or `q35`.
    pub fn name(self) -> &'static str {
        match self {
            MachineType::Microvm => "microvm",
            MachineType::Q35 => "q35",
        }
    }
}

/// What a NIC is plugged into.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NicBackend {
    /// A unix stream socket the machine connects to (the host listens); every frame is sent as a
    /// 4-byte big-endian length and the frame. The fabric NIC on the node's proxy, and the publish
    /// NIC on the node's publish gateway (`dvs-publish`).
    Stream {
        /// The listening socket's path.
        path: PathBuf,
    },
    /// A unix datagram socket pair: the machine binds `local` and sends to `remote`, one frame a
    /// datagram.
    Dgram {
        /// The path the machine binds.
        local: PathBuf,
        /// The path the host binds.
        remote: PathBuf,
    },
    /// A vhost-user backend listening on `path` (the node's proxy) serves the device itself from
    /// the guest's memory, which the machine then shares (a memfd backend): frames skip the VMM.
    #[serde(rename = "vhost-user")]
    VhostUser {
        /// The backend's listening socket.
        path: PathBuf,
    },
}

impl VmSpec {
    /// True if a NIC is served by a vhost-user backend (the guest's memory must be shared).
    pub fn shares_memory(&self) -> bool {
        self.nics
            .iter()
            .any(|n| matches!(n.backend, NicBackend::VhostUser { .. }))
    }
}

/// One NIC of a machine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Nic {
    /// What it is plugged into.
    pub backend: NicBackend,
    /// Its MAC address.
    pub mac: [u8; 6],
}

/// What the kernel is told at boot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kernel {
    /// A VOS boot configuration, passed as the one command-line word `dvs.cfg=<hex>`.
    Config(BootConfig),
    /// A raw command line, for tests that feed a guest a bad one.
    Raw(String),
}

/// Where a machine's human console goes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConsoleSink {
    /// Appended to this file; the machine process's own stdout and stderr go there too.
    File(PathBuf),
    /// Kept in memory as lines ([`crate::Machine::console_lines`]).
    Capture,
}

/// A block device of a machine: a raw disk image on the host, attached as a virtio-blk device
/// (the VOS `disk` server serves the first one).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drive {
    /// The raw image file on the host (must exist; its size is the disk's size).
    pub path: PathBuf,
    /// The guest may only read it (QEMU opens the file read-only; writes fail in the guest).
    pub read_only: bool,
}

/// Everything needed to start one machine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmSpec {
    /// The instance's name (for logs and errors).
    pub name: String,
    /// Machine type.
    pub machine: MachineType,
    /// Accelerator.
    pub accel: Accel,
    /// Guest RAM in MiB.
    pub memory_mib: u32,
    /// The kernel ELF.
    pub kernel_path: PathBuf,
    /// What the kernel is told.
    pub kernel: Kernel,
    /// NICs in order (the VOS takes the first as its fabric NIC, the second as its publish NIC).
    pub nics: Vec<Nic>,
    /// The human console.
    pub console: ConsoleSink,
    /// The control channel: a unix socket path the host listens on (before the machine starts)
    /// and the machine connects to; None: no control channel (and so no readiness).
    pub control: Option<PathBuf>,
    /// Block devices in order (`blk0`, `blk1`, ...); absent in JSON: none.
    #[serde(default)]
    pub drives: Vec<Drive>,
    /// How the machine is confined on the host (a cgroup with limits; QEMU also drops to an
    /// unprivileged uid in an empty chroot under its seccomp sandbox); None: not confined.
    #[serde(default)]
    pub confine: Option<Confinement>,
}

impl VmSpec {
    /// A microvm spec booting `kernel_path` with `kernel`: the detected accelerator, 16 MiB, no
    /// NIC, console captured, no control channel, no drive.
    pub fn new(name: &str, kernel_path: PathBuf, kernel: Kernel) -> VmSpec {
        VmSpec {
            name: name.into(),
            machine: MachineType::Microvm,
            accel: Accel::detect(),
            memory_mib: 16,
            kernel_path,
            kernel,
            nics: Vec::new(),
            console: ConsoleSink::Capture,
            control: None,
            drives: Vec::new(),
            confine: None,
        }
    }

    /// The kernel command line (`dvs.cfg=<hex>` for a boot configuration).
    pub fn cmdline(&self) -> String {
        match &self.kernel {
            Kernel::Config(c) => c.to_cmdline_word(),
            Kernel::Raw(s) => s.clone(),
        }
    }

    /// The boot configuration, if the kernel is given one.
    pub fn boot_config(&self) -> Option<&BootConfig> {
        match &self.kernel {
            Kernel::Config(c) => Some(c),
            Kernel::Raw(_) => None,
        }
    }
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn mac_string(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_print_and_parse() {
        let m = [0x02, 0x64, 3, 0xab, 0, 0xff];
        assert_eq!(mac_string(&m), "02:64:03:ab:00:ff");
        assert_eq!(parse_mac("02:64:03:ab:00:ff"), Some(m));
        for bad in [
            "02:64:03:ab:00",
            "02:64:03:ab:00:ff:1",
            "2:64:3:ab:0:ff",
            "zz:64:03:ab:00:ff",
        ] {
            assert_eq!(parse_mac(bad), None, "{bad}");
        }
    }

    #[test]
    fn specs_round_trip_as_json() {
        let mut cfg = BootConfig::new(3, 7);
        cfg.endpoints = vec![10];
        let mut s = VmSpec::new("x", "/k.elf".into(), Kernel::Config(cfg));
        s.accel = Accel::Tcg;
        s.nics.push(Nic {
            backend: NicBackend::Stream {
                path: "/run/x-pub.sock".into(),
            },
            mac: [2, 0, 0, 0, 0, 1],
        });
        s.control = Some("/tmp/c.sock".into());
        s.drives.push(Drive {
            path: "/v/data.img".into(),
            read_only: true,
        });
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<VmSpec>(&json).unwrap(), s);
        assert!(json.contains("\"accel\":\"tcg\""), "{json}");
        assert!(s.cmdline().starts_with("dvs.cfg=03"));
    }

    #[test]
    fn a_spec_without_drives_in_json_has_none() {
        let s = VmSpec::new("x", "/k.elf".into(), Kernel::Raw("a".into()));
        let mut v = serde_json::to_value(&s).unwrap();
        v.as_object_mut().unwrap().remove("drives");
        assert_eq!(serde_json::from_value::<VmSpec>(v).unwrap(), s);
    }

    #[test]
    fn tcg_gets_three_times_as_long() {
        assert_eq!(
            Accel::Tcg.timeout(Duration::from_secs(2)),
            Duration::from_secs(6)
        );
        assert_eq!(
            Accel::Kvm.timeout(Duration::from_secs(2)),
            Duration::from_secs(2)
        );
    }
}
