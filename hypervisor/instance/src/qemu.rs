//! QEMU: the only place in the tree that knows QEMU's command-line flags.

use std::path::PathBuf;

use crate::backend::{spawn_machine, VmBackend};
use crate::machine::Machine;
use crate::spec::{mac_string, Accel, ConsoleSink, Drive, MachineType, NicBackend, VmSpec};
use crate::InstanceError;

/// The I/O port of the control channel's UART (COM2; the human console is COM1 at 0x3f8).
pub const CONTROL_IOBASE: u16 = 0x2f8;

/// The QEMU arguments that start `spec` (everything after the binary's name).
///
/// - machine: `-M microvm,acpi=off`, or `-M q35 -bios qboot.rom`;
/// - accelerator: `-accel kvm -cpu host,-arch-capabilities` (nested KVM refuses to set that MSR)
///   or `-accel tcg`;
/// - `-m <MiB>M -smp 1 -nodefaults -no-user-config -display none -no-reboot`, the
///   `isa-debug-exit` device at 0xf4 (the guest's exit code), `-kernel`, `-append`;
/// - the human console on COM1: `-serial stdio` (the backend copies QEMU's stdout into the log, or
///   keeps its lines when captured);
/// - the control channel on a second UART at 0x2f8 (IRQ 3), a unix socket chardev QEMU connects
///   to (`server=off`);
/// - one `-netdev` and one `-device virtio-net-device` (microvm) or `virtio-net-pci` (q35) per NIC,
///   ids `n0`, `n1`, ...; a vhost-user NIC is `-chardev socket,id=c<i>,path=<path>` and
///   `-netdev vhost-user,id=n<i>,chardev=c<i>`, and then guest RAM is a shared memfd
///   (`-object memory-backend-memfd,id=mem,size=<MiB>M,share=on` and `memory-backend=mem` on the
///   machine) so that the backend can map it;
/// - confined ([`VmSpec::confine`]): `-sandbox on,obsolete=deny,elevateprivileges=allow,
///   spawn=deny,resourcecontrol=deny` (QEMU's seccomp filter: no exec, no obsolete or
///   scheduler-changing calls), `-runas <uid>:<gid>` and `-chroot <root>`: QEMU opens its files,
///   sockets and `/dev/kvm` as root, then drops to the uid in the empty root before the guest
///   runs. `elevateprivileges=allow` because `-runas` itself calls setuid after the filter is
///   in place; once dropped, the process has no capabilities to regain and cannot exec;
/// - after the NICs, one `-drive` (raw, `if=none`, see [`drive_arg`]) and one
///   `-device virtio-blk-device` (microvm) or `virtio-blk-pci` (q35) per drive, ids `blk0`, `blk1`, ...
pub fn qemu_args(spec: &VmSpec) -> Vec<String> {
    let mut a: Vec<String> = Vec::new();
    let mut push = |words: &[&str]| a.extend(words.iter().map(|w| w.to_string()));
    let shared = spec.shares_memory();
    match (spec.machine, shared) {
        (MachineType::Microvm, false) => push(&["-M", "microvm,acpi=off"]),
        (MachineType::Microvm, true) => push(&["-M", "microvm,acpi=off,memory-backend=mem"]),
        (MachineType::Q35, false) => push(&["-M", "q35", "-bios", "qboot.rom"]),
        (MachineType::Q35, true) => push(&["-M", "q35,memory-backend=mem", "-bios", "qboot.rom"]),
    }
    let memfd = format!(
        "memory-backend-memfd,id=mem,size={}M,share=on",
        spec.memory_mib
    );
    if shared {
        push(&["-object", &memfd]);
    }
    match spec.accel {
        Accel::Kvm => push(&["-accel", "kvm", "-cpu", "host,-arch-capabilities"]),
        Accel::Tcg => push(&["-accel", "tcg"]),
    }
    a.extend([
        "-m".into(),
        format!("{}M", spec.memory_mib),
        "-smp".into(),
        "1".into(),
        "-nodefaults".into(),
        "-no-user-config".into(),
        "-display".into(),
        "none".into(),
        "-no-reboot".into(),
        "-device".into(),
        "isa-debug-exit,iobase=0xf4,iosize=4".into(),
        "-kernel".into(),
        spec.kernel_path.display().to_string(),
        "-append".into(),
        spec.cmdline(),
    ]);
    match &spec.console {
        // Both go to QEMU's stdout: the backend copies it into the log file (console_log.rs) or keeps
        // its lines; QEMU opens no file of the host for it.
        ConsoleSink::File(_) | ConsoleSink::Capture => a.extend(["-serial".into(), "stdio".into()]),
    }
    if let Some(ctl) = &spec.control {
        a.extend([
            "-chardev".into(),
            format!("socket,id=ctl,path={},server=off", ctl.display()),
            "-device".into(),
            format!("isa-serial,chardev=ctl,iobase={CONTROL_IOBASE:#x},irq=3"),
        ]);
    }
    if let Some(c) = &spec.confine {
        a.extend([
            "-sandbox".into(),
            "on,obsolete=deny,elevateprivileges=allow,spawn=deny,resourcecontrol=deny".into(),
            "-runas".into(),
            format!("{}:{}", c.uid, c.gid),
            "-chroot".into(),
            c.root.display().to_string(),
        ]);
    }
    let dev = match spec.machine {
        MachineType::Microvm => "virtio-net-device",
        MachineType::Q35 => "virtio-net-pci",
    };
    for (i, nic) in spec.nics.iter().enumerate() {
        if let NicBackend::VhostUser { path } = &nic.backend {
            a.extend([
                "-chardev".into(),
                format!("socket,id=c{i},path={}", path.display()),
            ]);
        }
        let netdev = match &nic.backend {
            NicBackend::Stream { path } => format!(
                "stream,id=n{i},server=off,addr.type=unix,addr.path={}",
                path.display()
            ),
            NicBackend::Dgram { local, remote } => format!(
                "dgram,id=n{i},local.type=unix,local.path={},remote.type=unix,remote.path={}",
                local.display(),
                remote.display()
            ),
            NicBackend::VhostUser { .. } => format!("vhost-user,id=n{i},chardev=c{i}"),
        };
        a.extend([
            "-netdev".into(),
            netdev,
            "-device".into(),
            format!("{dev},netdev=n{i},mac={}", mac_string(&nic.mac)),
        ]);
    }
    let blk = match spec.machine {
        MachineType::Microvm => "virtio-blk-device",
        MachineType::Q35 => "virtio-blk-pci",
    };
    for (i, d) in spec.drives.iter().enumerate() {
        a.extend([
            "-drive".into(),
            drive_arg(i, d),
            "-device".into(),
            format!("{blk},drive=blk{i}"),
        ]);
    }
    a
}

/// The `-drive` value of drive `i`:
/// `file=<path>,format=raw,if=none,id=blk<i>,cache=writeback,discard=unmap,werror=report,rerror=report`
/// and `,readonly=on` for a read-only drive. A comma in the path is doubled (QEMU's escape).
///
/// - `format=raw`: never probe the format (a guest could otherwise write a qcow2 header into its
///   raw image and have the next boot open some other host file as its backing file).
/// - `cache=writeback`: the host page cache holds writes, the guest is shown a volatile write
///   cache (VIRTIO_BLK_F_FLUSH), and every guest flush becomes an `fdatasync` of the image. The fs
///   server's crash safety rests on exactly that: what it wrote before a flush completed is on the
///   host's disk. Not `cache=none` (O_DIRECT: refused by tmpfs, where state directories and tests
///   may live, and it needs aligned I/O), not `unsafe` (drops flushes), not `directsync` (a sync
///   per write, and the fs flushes where it needs to anyway).
/// - `discard=unmap`: a guest discard punches a hole, so sparse images stay sparse.
/// - `werror=report,rerror=report`: a host I/O error (ENOSPC above all) fails the request in the
///   guest instead of pausing the VM (QEMU's default for ENOSPC), which would look like a hang.
pub fn drive_arg(i: usize, d: &Drive) -> String {
    let path = d.path.display().to_string().replace(',', ",,");
    let mut s = format!(
        "file={path},format=raw,if=none,id=blk{i},cache=writeback,discard=unmap,werror=report,rerror=report"
    );
    if d.read_only {
        s.push_str(",readonly=on");
    }
    s
}

/// Starts machines as QEMU processes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QemuBackend {
    /// The QEMU binary (`qemu-system-x86_64`, looked up in `PATH` when it has no slash).
    pub binary: PathBuf,
}

impl QemuBackend {
    /// A backend running `binary`.
    pub fn new(binary: impl Into<PathBuf>) -> QemuBackend {
        QemuBackend {
            binary: binary.into(),
        }
    }
}

impl Default for QemuBackend {
    /// `qemu-system-x86_64` from `PATH`.
    fn default() -> QemuBackend {
        QemuBackend::new("qemu-system-x86_64")
    }
}

impl VmBackend for QemuBackend {
    fn describe(&self) -> String {
        format!("qemu ({})", self.binary.display())
    }

    fn start(&self, spec: &VmSpec) -> Result<Machine, InstanceError> {
        let mut cmd = std::process::Command::new(&self.binary);
        cmd.args(qemu_args(spec));
        spawn_machine(cmd, spec, "qemu: ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{Kernel, Nic};

    fn base(machine: MachineType, accel: Accel) -> VmSpec {
        let mut s = VmSpec::new("t", "/img/vos.elf".into(), Kernel::Raw("a=1 b".into()));
        s.machine = machine;
        s.accel = accel;
        s
    }

    fn words(s: &str) -> Vec<String> {
        s.split(' ').map(String::from).collect()
    }

    #[test]
    fn microvm_kvm_with_every_nic_kind_and_control() {
        let mut s = base(MachineType::Microvm, Accel::Kvm);
        s.memory_mib = 32;
        s.console = ConsoleSink::File("/d/web.log".into());
        s.control = Some("/run/web-ctl.sock".into());
        s.nics = vec![
            Nic {
                backend: NicBackend::Stream {
                    path: "/run/web.sock".into(),
                },
                mac: [2, 0x64, 1, 0, 0, 1],
            },
            Nic {
                backend: NicBackend::Dgram {
                    local: "/run/vm.sock".into(),
                    remote: "/run/p.sock".into(),
                },
                mac: [2, 0x64, 1, 0, 0, 2],
            },
            Nic {
                backend: NicBackend::Stream {
                    path: "/run/web-pub.sock".into(),
                },
                mac: [0x52, 0x54, 0, 0x12, 0x34, 0x12],
            },
        ];
        let mut want = words(
            "-M microvm,acpi=off -accel kvm -cpu host,-arch-capabilities -m 32M -smp 1 -nodefaults \
             -no-user-config -display none -no-reboot -device isa-debug-exit,iobase=0xf4,iosize=4 \
             -kernel /img/vos.elf -append",
        );
        want.push("a=1 b".into());
        want.extend(words(
            "-serial stdio \
             -chardev socket,id=ctl,path=/run/web-ctl.sock,server=off \
             -device isa-serial,chardev=ctl,iobase=0x2f8,irq=3 \
             -netdev stream,id=n0,server=off,addr.type=unix,addr.path=/run/web.sock \
             -device virtio-net-device,netdev=n0,mac=02:64:01:00:00:01 \
             -netdev dgram,id=n1,local.type=unix,local.path=/run/vm.sock,remote.type=unix,remote.path=/run/p.sock \
             -device virtio-net-device,netdev=n1,mac=02:64:01:00:00:02 \
             -netdev stream,id=n2,server=off,addr.type=unix,addr.path=/run/web-pub.sock \
             -device virtio-net-device,netdev=n2,mac=52:54:00:12:34:12",
        ));
        assert_eq!(qemu_args(&s), want);
    }

    #[test]
    fn q35_tcg_captured_without_control() {
        let mut s = base(MachineType::Q35, Accel::Tcg);
        s.nics = vec![Nic {
            backend: NicBackend::Dgram {
                local: "/g".into(),
                remote: "/h".into(),
            },
            mac: [0x52, 0x54, 0, 0x12, 0x34, 0x10],
        }];
        let mut want = words(
            "-M q35 -bios qboot.rom -accel tcg -m 16M -smp 1 -nodefaults -no-user-config \
             -display none -no-reboot -device isa-debug-exit,iobase=0xf4,iosize=4 \
             -kernel /img/vos.elf -append",
        );
        want.push("a=1 b".into());
        want.extend(words(
            "-serial stdio -netdev dgram,id=n0,local.type=unix,local.path=/g,remote.type=unix,remote.path=/h \
             -device virtio-net-pci,netdev=n0,mac=52:54:00:12:34:10",
        ));
        assert_eq!(qemu_args(&s), want);
    }

    #[test]
    fn q35_kvm_with_stream_dgram_and_control() {
        let mut s = base(MachineType::Q35, Accel::Kvm);
        s.control = Some("/c".into());
        s.nics = vec![
            Nic {
                backend: NicBackend::Dgram {
                    local: "/g".into(),
                    remote: "/h".into(),
                },
                mac: [2, 0, 0, 0, 0, 1],
            },
            Nic {
                backend: NicBackend::Stream { path: "/s".into() },
                mac: [2, 0, 0, 0, 0, 2],
            },
        ];
        let mut want = words(
            "-M q35 -bios qboot.rom -accel kvm -cpu host,-arch-capabilities -m 16M -smp 1 \
             -nodefaults -no-user-config -display none -no-reboot \
             -device isa-debug-exit,iobase=0xf4,iosize=4 -kernel /img/vos.elf -append",
        );
        want.push("a=1 b".into());
        want.extend(words(
            "-serial stdio -chardev socket,id=ctl,path=/c,server=off \
             -device isa-serial,chardev=ctl,iobase=0x2f8,irq=3 \
             -netdev dgram,id=n0,local.type=unix,local.path=/g,remote.type=unix,remote.path=/h \
             -device virtio-net-pci,netdev=n0,mac=02:00:00:00:00:01 \
             -netdev stream,id=n1,server=off,addr.type=unix,addr.path=/s \
             -device virtio-net-pci,netdev=n1,mac=02:00:00:00:00:02",
        ));
        assert_eq!(qemu_args(&s), want);
    }

    #[test]
    fn microvm_drives_follow_the_nics() {
        let mut s = base(MachineType::Microvm, Accel::Tcg);
        s.nics = vec![Nic {
            backend: NicBackend::Stream { path: "/s".into() },
            mac: [2, 0, 0, 0, 0, 1],
        }];
        s.drives = vec![
            Drive {
                path: "/v/data.img".into(),
                read_only: false,
            },
            Drive {
                path: "/v/a,b.img".into(),
                read_only: true,
            },
        ];
        let mut want = words(
            "-M microvm,acpi=off -accel tcg -m 16M -smp 1 -nodefaults -no-user-config \
             -display none -no-reboot -device isa-debug-exit,iobase=0xf4,iosize=4 \
             -kernel /img/vos.elf -append",
        );
        want.push("a=1 b".into());
        want.extend(words(
            "-serial stdio -netdev stream,id=n0,server=off,addr.type=unix,addr.path=/s \
             -device virtio-net-device,netdev=n0,mac=02:00:00:00:00:01 \
             -drive file=/v/data.img,format=raw,if=none,id=blk0,cache=writeback,discard=unmap,werror=report,rerror=report \
             -device virtio-blk-device,drive=blk0 \
             -drive file=/v/a,,b.img,format=raw,if=none,id=blk1,cache=writeback,discard=unmap,werror=report,rerror=report,readonly=on \
             -device virtio-blk-device,drive=blk1",
        ));
        assert_eq!(qemu_args(&s), want);
    }

    #[test]
    fn q35_drives_are_pci() {
        let mut s = base(MachineType::Q35, Accel::Kvm);
        s.drives = vec![Drive {
            path: "/v/d.img".into(),
            read_only: false,
        }];
        let mut want = words(
            "-M q35 -bios qboot.rom -accel kvm -cpu host,-arch-capabilities -m 16M -smp 1 \
             -nodefaults -no-user-config -display none -no-reboot \
             -device isa-debug-exit,iobase=0xf4,iosize=4 -kernel /img/vos.elf -append",
        );
        want.push("a=1 b".into());
        want.extend(words(
            "-serial stdio \
             -drive file=/v/d.img,format=raw,if=none,id=blk0,cache=writeback,discard=unmap,werror=report,rerror=report \
             -device virtio-blk-pci,drive=blk0",
        ));
        assert_eq!(qemu_args(&s), want);
    }

    #[test]
    fn vhost_user_nics_share_guest_memory_microvm() {
        let mut s = base(MachineType::Microvm, Accel::Kvm);
        s.memory_mib = 48;
        s.nics = vec![
            Nic {
                backend: NicBackend::VhostUser {
                    path: "/run/a.sock".into(),
                },
                mac: [2, 0, 0, 0, 0, 1],
            },
            Nic {
                backend: NicBackend::Stream { path: "/p".into() },
                mac: [2, 0, 0, 0, 0, 2],
            },
        ];
        let mut want = words(
            "-M microvm,acpi=off,memory-backend=mem -object memory-backend-memfd,id=mem,size=48M,share=on \
             -accel kvm -cpu host,-arch-capabilities -m 48M -smp 1 -nodefaults -no-user-config \
             -display none -no-reboot -device isa-debug-exit,iobase=0xf4,iosize=4 \
             -kernel /img/vos.elf -append",
        );
        want.push("a=1 b".into());
        want.extend(words(
            "-serial stdio -chardev socket,id=c0,path=/run/a.sock -netdev vhost-user,id=n0,chardev=c0 \
             -device virtio-net-device,netdev=n0,mac=02:00:00:00:00:01 \
             -netdev stream,id=n1,server=off,addr.type=unix,addr.path=/p \
             -device virtio-net-device,netdev=n1,mac=02:00:00:00:00:02",
        ));
        assert_eq!(qemu_args(&s), want);
    }

    #[test]
    fn vhost_user_nics_share_guest_memory_q35() {
        let mut s = base(MachineType::Q35, Accel::Tcg);
        s.nics = vec![Nic {
            backend: NicBackend::VhostUser { path: "/v".into() },
            mac: [2, 0, 0, 0, 0, 1],
        }];
        let mut want = words(
            "-M q35,memory-backend=mem -bios qboot.rom -object memory-backend-memfd,id=mem,size=16M,share=on \
             -accel tcg -m 16M -smp 1 -nodefaults -no-user-config -display none -no-reboot \
             -device isa-debug-exit,iobase=0xf4,iosize=4 -kernel /img/vos.elf -append",
        );
        want.push("a=1 b".into());
        want.extend(words(
            "-serial stdio -chardev socket,id=c0,path=/v -netdev vhost-user,id=n0,chardev=c0 \
             -device virtio-net-pci,netdev=n0,mac=02:00:00:00:00:01",
        ));
        assert_eq!(qemu_args(&s), want);
    }

    #[test]
    fn a_confined_machine_drops_to_its_uid_in_its_root_under_seccomp() {
        let mut s = base(MachineType::Microvm, Accel::Kvm);
        s.confine = Some(crate::Confinement {
            uid: 800_001,
            gid: 800_002,
            root: "/run/dvs/root".into(),
            cgroup: "dvs/1.42/web".into(),
            limits: crate::Limits {
                memory_mib: 64,
                cpu_percent: 100,
                pids: 32,
            },
        });
        let a = qemu_args(&s).join(" ");
        assert!(
            a.ends_with(
                "-serial stdio -sandbox on,obsolete=deny,elevateprivileges=allow,spawn=deny,resourcecontrol=deny \
                 -runas 800001:800002 -chroot /run/dvs/root"
            ),
            "{a}"
        );
    }

    #[test]
    fn a_boot_config_is_one_word() {
        let mut cfg = dvs_vos_abi::BootConfig::new(1, 2);
        cfg.endpoints = vec![5];
        let mut s = base(MachineType::Microvm, Accel::Tcg);
        s.kernel = Kernel::Config(cfg.clone());
        let a = qemu_args(&s);
        let i = a.iter().position(|w| w == "-append").unwrap();
        assert_eq!(a[i + 1], cfg.to_cmdline_word());
        assert!(!a[i + 1].contains(' '));
    }
}
