//! A confined VOS: QEMU in a cgroup of its own with limits, dropped to an unprivileged uid in an
//! empty chroot under its seccomp sandbox; and a machine over its memory limit, killed by the
//! kernel and reported as such.

use super::*;
use dvs_instance::confine::{self, Cgroup};
use dvs_instance::{Confinement, Limits};

/// A uid and gid no account uses.
const UID: u32 = 870_001;

/// The confinement of test machine `name`, in `dir`.
fn confinement(dir: &TempDir, name: &str, memory_mib: u64) -> Confinement {
    Confinement {
        uid: UID,
        gid: UID,
        root: dir.join("root"),
        cgroup: format!("dvs-test/{name}.{}", std::process::id()),
        limits: Limits {
            memory_mib,
            cpu_percent: 150,
            pids: 64,
        },
    }
}

/// True if this host can confine machines; else says why the test does not run.
fn can_confine(test: &str) -> bool {
    match confine::available() {
        Ok(()) => true,
        Err(e) => {
            eprintln!("qemu-tests: {test}: SKIPPED, this host cannot confine machines: {e}");
            false
        }
    }
}

/// `Field:` of /proc/PID/status, its words.
fn status(pid: u32, field: &str) -> Vec<String> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status of the QEMU");
    s.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
        .split_whitespace()
        .map(String::from)
        .collect()
}

#[test]
fn a_confined_machine_runs_unprivileged_in_its_cgroup() {
    let _g = exclusive();
    if !can_confine("a_confined_machine_runs_unprivileged_in_its_cgroup") {
        return;
    }
    let a = accel();
    let dir = TempDir::new().expect("scratch dir");
    let mut cfg = config(&[GUEST_EP], &[Service::Echo], &[]);
    cfg.fabric = ip("10.0.2.15/24", None);
    let mut spec = vos(&dir, "jailed", MachineType::Microvm, a, Kernel::Config(cfg));
    spec.memory_mib = 32;
    spec.nics
        .push(dgram_nic(0, dir.join("g.sock"), dir.join("h.sock")));
    let c = confinement(&dir, "jailed", 160);
    spec.confine = Some(c.clone());
    let mut vm = start(&spec);
    // Ready comes over the control socket QEMU opened before it dropped its privileges.
    let r = ready(&mut vm, a);
    assert_eq!(r.macs, [nic_mac(0)], "{r:?}");
    let pid = vm.pid().expect("a QEMU machine has a pid");
    let want = UID.to_string();
    assert_eq!(status(pid, "Uid"), [want.as_str(); 4], "QEMU's uids");
    assert_eq!(status(pid, "Gid"), [want.as_str(); 4], "QEMU's gids");
    assert_eq!(status(pid, "Groups"), [want.as_str()], "only its own group");
    assert_eq!(status(pid, "Seccomp"), ["2"], "a seccomp filter");
    assert_eq!(
        status(pid, "CapEff"),
        ["0000000000000000"],
        "no capabilities"
    );
    assert_eq!(
        std::fs::read_link(format!("/proc/{pid}/root")).expect("QEMU's root"),
        c.root,
        "QEMU's root directory"
    );
    // The machine is in its cgroup, with the limits.
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("cgroups");
    let mine: Vec<&str> = cgroups
        .lines()
        .filter(|l| l.ends_with(&format!("/{}", c.cgroup)))
        .collect();
    assert!(!mine.is_empty(), "QEMU in {}:\n{cgroups}", c.cgroup);
    let cg = Cgroup::create(&c.cgroup, &c.limits).expect("the same cgroup, again");
    let files = ["memory.max", "memory.limit_in_bytes", "pids.max"];
    let limits: Vec<String> = cg
        .dirs()
        .iter()
        .flat_map(|d| files.iter().map(move |f| d.join(f)))
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .map(|v| v.trim().to_string())
        .collect();
    assert!(
        limits.contains(&(160u64 << 20).to_string()) && limits.contains(&"64".to_string()),
        "memory and pids limits in {:?}: {limits:?}",
        cg.dirs()
    );
    eprintln!(
        "qemu-tests: confined VOS ready in {} µs as uid {UID}, seccomp on, chroot {}, cgroup {} ({})",
        r.init_us,
        c.root.display(),
        c.cgroup,
        a.name()
    );
    let dirs = cg.dirs().to_vec();
    drop(vm);
    assert!(
        dirs.iter().all(|d| !d.exists()),
        "the cgroup goes with the machine: {dirs:?}"
    );
}

#[test]
fn a_machine_over_its_memory_limit_is_killed_and_says_so() {
    let _g = exclusive();
    if !can_confine("a_machine_over_its_memory_limit_is_killed_and_says_so") {
        return;
    }
    let a = accel();
    let dir = TempDir::new().expect("scratch dir");
    // The echo server's vcopy buffer of 96 MiB, zeroed at boot, in a cgroup of 64 MiB: the
    // guest touches more memory than its machine may have.
    let cfg = config(&[GUEST_EP], &[Service::Echo], &["buf=100663296"]);
    let mut spec = vos(&dir, "greedy", MachineType::Microvm, a, Kernel::Config(cfg));
    spec.memory_mib = 256;
    spec.confine = Some(confinement(&dir, "greedy", 64));
    let mut vm = start(&spec);
    let t = secs(a, 20);
    let exit = Machine::block_on(async { tokio::time::timeout(t, vm.wait()).await.ok() });
    assert_eq!(
        exit,
        Some(Exit::MemoryLimit { limit_mib: 64 }),
        "console:\n{}",
        console(&vm)
    );
    eprintln!(
        "qemu-tests: a machine over its 64 MiB limit ended: {} ({})",
        exit.map(|e| e.to_string()).unwrap_or_default(),
        a.name()
    );
}
