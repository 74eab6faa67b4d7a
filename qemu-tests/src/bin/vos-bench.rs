//! The VOS benchmark: boots the real image under KVM (if /dev/kvm works) and TCG, and prints
//! one table, every row from this run. Not asserted; the aims are printed beside the figures.

use m3ipc_core::Message;
use qemu_tests::*;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

const DC: u16 = 1;
const GUEST_EP: u32 = 10;
const HOST_EP: u32 = 500;
const BOOT_RUNS: usize = 11;
const RTT_N: usize = 2000;

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn p99(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get((v.len() * 99 / 100).min(v.len().saturating_sub(1)))
        .copied()
        .unwrap_or(f64::NAN)
}

/// Launch-to-exit of the floor ELF, in ms.
fn floor_once(machine: Machine, accel: Accel) -> Option<f64> {
    let mut spec = VmSpec::new(machine, accel, "");
    spec.kernel = floor_image();
    spec.mem_mib = 8;
    let mut vm = Vm::start(&spec);
    match vm.wait_exit(accel.timeout(Duration::from_secs(10))) {
        Some(_) => Some(vm.started.elapsed().as_secs_f64() * 1000.0),
        None => {
            eprintln!(
                "vos-bench: floor ELF did not exit on {} {}",
                machine.name(),
                accel.name()
            );
            None
        }
    }
}

/// Launch-to-ready of the VOS, in ms.
fn ready_once(machine: Machine, accel: Accel) -> Option<f64> {
    let mut spec = VmSpec::new(machine, accel, "dc=1 ep=10 svc=echo");
    spec.mem_mib = 8;
    let mut vm = Vm::start(&spec);
    match vm.wait_line("dvs: ready", accel.timeout(Duration::from_secs(10))) {
        Ok(_) => Some(vm.started.elapsed().as_secs_f64() * 1000.0),
        Err(e) => {
            eprintln!("vos-bench: {e}");
            None
        }
    }
}

/// Median launch-to-ready of the VOS and launch-to-exit of the floor, runs interleaved so
/// that both see the same machine load.
fn boot_ms(machine: Machine, accel: Accel) -> (f64, f64) {
    let (mut r, mut f) = (Vec::new(), Vec::new());
    for _ in 0..BOOT_RUNS {
        f.extend(floor_once(machine, accel));
        r.extend(ready_once(machine, accel));
    }
    (median(&mut r), median(&mut f))
}

/// Boots echo on a dgram NIC (guest command line `extra` appended) and measures
/// host-harness sendrec round trips (µs).
fn guest_rtt(accel: Accel, extra: &str) -> Result<(f64, f64), String> {
    let dir = TempDir::new();
    let (guest, host) = (dir.0.join("g.sock"), dir.0.join("h.sock"));
    let mut h = Harness::new(DC, &[HOST_EP], &host, &guest);
    let mut spec = VmSpec::new(
        Machine::Microvm,
        accel,
        &format!("dc={DC} ep={GUEST_EP} svc=echo {extra}"),
    );
    spec.mem_mib = 8;
    spec.nics.push(NicBackend::Dgram { guest, host });
    let mut vm = Vm::start(&spec);
    vm.wait_line("dvs: ready", accel.timeout(Duration::from_secs(10)))?;
    let to = accel.timeout(Duration::from_secs(2));
    for i in 0..200 {
        h.sendrec(HOST_EP, GUEST_EP, Message::new(i), to)?;
    }
    let mut lat = Vec::with_capacity(RTT_N);
    for i in 0..RTT_N as u32 {
        let t0 = Instant::now();
        h.sendrec(HOST_EP, GUEST_EP, Message::new(i), to)?;
        lat.push(t0.elapsed().as_secs_f64() * 1e6);
    }
    Ok((median(&mut lat), p99(&mut lat)))
}

/// Host-harness sendrec to a guest that halted before each call (5 ms apart): the cost of
/// waking it through the device interrupt (median µs, p99 µs).
fn halted_rtt(accel: Accel) -> Result<(f64, f64), String> {
    let dir = TempDir::new();
    let (guest, host) = (dir.0.join("g.sock"), dir.0.join("h.sock"));
    let mut h = Harness::new(DC, &[HOST_EP], &host, &guest);
    let mut spec = VmSpec::new(
        Machine::Microvm,
        accel,
        &format!("dc={DC} ep={GUEST_EP} svc=echo"),
    );
    spec.mem_mib = 8;
    spec.nics.push(NicBackend::Dgram { guest, host });
    let mut vm = Vm::start(&spec);
    vm.wait_line("dvs: ready", accel.timeout(Duration::from_secs(10)))?;
    let to = accel.timeout(Duration::from_secs(2));
    let mut lat = Vec::new();
    for i in 0..200 {
        std::thread::sleep(Duration::from_millis(5));
        let t0 = Instant::now();
        h.sendrec(HOST_EP, GUEST_EP, Message::new(i), to)?;
        lat.push(t0.elapsed().as_secs_f64() * 1e6);
    }
    Ok((median(&mut lat), p99(&mut lat)))
}

/// Raw TCP ping-pong of 64-byte messages on loopback (µs).
fn tcp_rtt() -> Result<(f64, f64), String> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let addr = l.local_addr().map_err(|e| e.to_string())?;
    let server = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut s, _) = l.accept()?;
        s.set_nodelay(true)?;
        let mut b = [0u8; 64];
        for _ in 0..RTT_N + 200 {
            s.read_exact(&mut b)?;
            s.write_all(&b)?;
        }
        Ok(())
    });
    let mut c = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    c.set_nodelay(true).map_err(|e| e.to_string())?;
    let mut b = [7u8; 64];
    let mut lat = Vec::with_capacity(RTT_N);
    for i in 0..RTT_N + 200 {
        let t0 = Instant::now();
        c.write_all(&b).map_err(|e| e.to_string())?;
        c.read_exact(&mut b).map_err(|e| e.to_string())?;
        if i >= 200 {
            lat.push(t0.elapsed().as_secs_f64() * 1e6);
        }
    }
    let _ = server.join();
    Ok((median(&mut lat), p99(&mut lat)))
}

/// The in-guest local sendrec loop (ns per call), read from the console.
fn local_ns(accel: Accel) -> Result<u64, String> {
    let mut spec = VmSpec::new(
        Machine::Microvm,
        accel,
        "dc=1 ep=10 svc=echo local_n=200000",
    );
    spec.mem_mib = 8;
    let mut vm = Vm::start(&spec);
    let line = vm.wait_line("dvs: local-sendrec", accel.timeout(Duration::from_secs(20)))?;
    field(&line, "ns_per_call").ok_or_else(|| format!("no ns_per_call in '{line}'"))
}

/// ipc-bench against a local echo endpoint through the task API (median ns, ops/s).
fn task_sendrec(accel: Accel) -> Result<(u64, u64), String> {
    let mut spec = VmSpec::new(
        Machine::Microvm,
        accel,
        "dc=1 ep=10,11 svc=echo,ipc-bench peer=11 n=100000 vcopy=0",
    );
    spec.mem_mib = 8;
    let mut vm = Vm::start(&spec);
    let line = vm.wait_line("dvs: bench sendrec", accel.timeout(Duration::from_secs(20)))?;
    match (field(&line, "median_ns"), field(&line, "ops_per_s")) {
        (Some(m), Some(o)) => Ok((m, o)),
        _ => Err(format!("unexpected bench line '{line}'")),
    }
}

/// ipc-bench in one VM against echo in another, over a unix datagram socket pair (no proxy):
/// (median µs, p99 µs).
fn guest_to_guest(accel: Accel) -> Result<(f64, f64), String> {
    let dir = TempDir::new();
    let (pa, pb) = (dir.0.join("a.sock"), dir.0.join("b.sock"));
    let mut server = VmSpec::new(Machine::Microvm, accel, "dc=1 ep=20 svc=echo");
    server.mem_mib = 8;
    server.nics.push(NicBackend::Dgram {
        guest: pb.clone(),
        host: pa.clone(),
    });
    let mut srv = Vm::start(&server);
    srv.wait_line("dvs: ready", accel.timeout(Duration::from_secs(10)))?;
    let mut client = VmSpec::new(
        Machine::Microvm,
        accel,
        "dc=1 ep=10 svc=ipc-bench peer=20 n=2000 vcopy=0",
    );
    client.mem_mib = 8;
    client.nics.push(NicBackend::Dgram {
        guest: pa,
        host: pb,
    });
    let mut cli = Vm::start(&client);
    let line = cli.wait_line("dvs: bench sendrec", accel.timeout(Duration::from_secs(30)))?;
    match (field(&line, "median_ns"), field(&line, "p99_ns")) {
        (Some(m), Some(p)) => Ok((m as f64 / 1000.0, p as f64 / 1000.0)),
        _ => Err(format!("unexpected bench line '{line}'")),
    }
}

/// CPU use of an idle instance over 5 s, in percent of one core.
fn idle_pct(accel: Accel) -> Result<f64, String> {
    let dir = TempDir::new();
    let (guest, host) = (dir.0.join("g.sock"), dir.0.join("h.sock"));
    let _h = Harness::new(DC, &[HOST_EP], &host, &guest);
    let mut spec = VmSpec::new(
        Machine::Microvm,
        accel,
        &format!("dc={DC} ep={GUEST_EP} svc=echo"),
    );
    spec.mem_mib = 8;
    spec.nics.push(NicBackend::Dgram { guest, host });
    let mut vm = Vm::start(&spec);
    vm.wait_line("dvs: ready", accel.timeout(Duration::from_secs(10)))?;
    std::thread::sleep(Duration::from_secs(1));
    let a = vm.cpu_ticks()?;
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(5));
    let used = vm.cpu_ticks()? - a;
    Ok(used as f64 / (t0.elapsed().as_secs_f64() * 100.0) * 100.0)
}

/// A table cell: the figure as `show` writes it, or why it could not be measured.
fn cell<T>(r: Result<T, String>, show: impl FnOnce(T) -> String) -> String {
    r.map(show).unwrap_or_else(|e| format!("failed: {e}"))
}

/// A median / p99 pair in microseconds.
fn median_p99((m, p): (f64, f64)) -> String {
    format!("{m:.1} / {p:.1} µs")
}

fn main() {
    let mut accels = vec![];
    if Accel::detect() == Accel::Kvm {
        accels.push(Accel::Kvm);
    } else {
        eprintln!("vos-bench: /dev/kvm not usable: KVM columns show n/a");
    }
    accels.push(Accel::Tcg);
    let col = |a: Accel, f: &dyn Fn(Accel) -> String| {
        if accels.contains(&a) {
            f(a)
        } else {
            "n/a".into()
        }
    };
    let mut rows: Vec<[String; 4]> = Vec::new();
    for m in [Machine::Microvm, Machine::Q35] {
        eprintln!("vos-bench: boot times on {}", m.name());
        let boot = |a: Accel| {
            let (r, f) = boot_ms(m, a);
            format!("{r:.1} ms (floor {f:.1}, {:.2}x)", r / f)
        };
        rows.push([
            format!("boot {}: launch→ready", m.name()),
            col(Accel::Kvm, &boot),
            col(Accel::Tcg, &boot),
            "≤ 1.3x floor".into(),
        ]);
    }
    eprintln!("vos-bench: sendrec round trips");
    let tcp = tcp_rtt()
        .map(|(m, p)| format!("raw TCP loopback {m:.1} / {p:.1} µs"))
        .unwrap_or_else(|e| e);
    // A row measured under each accelerator in turn (KVM first).
    let mut measured = |name: &str, aim: String, f: &dyn Fn(Accel) -> String| {
        rows.push([name.into(), col(Accel::Kvm, f), col(Accel::Tcg, f), aim]);
    };
    let guest_args = std::env::var("VOS_BENCH_GUEST_ARGS").unwrap_or_default();
    measured(
        "host↔guest sendrec median / p99",
        format!("≤ 2x {tcp}"),
        &|a| cell(guest_rtt(a, &guest_args), median_p99),
    );
    measured(
        "  same, guest halted before each call",
        "wake-up by device interrupt".into(),
        &|a| cell(halted_rtt(a), median_p99),
    );
    measured(
        "guest↔guest sendrec median / p99",
        "two VMs, dgram pair, no proxy".into(),
        &|a| cell(guest_to_guest(a), median_p99),
    );
    eprintln!("vos-bench: in-guest local sendrec");
    measured("in-guest local sendrec", "≤ 300 ns".into(), &|a| {
        cell(local_ns(a), |n| format!("{n} ns/call"))
    });
    measured(
        "in-guest sendrec via tasks",
        "ipc-bench ↔ echo, same VM".into(),
        &|a| {
            cell(task_sendrec(a), |(m, o)| {
                format!("{m} ns median, {o} ops/s")
            })
        },
    );
    eprintln!("vos-bench: idle CPU");
    measured("idle instance CPU (5 s)", "< 5%".into(), &|a| {
        cell(idle_pct(a), |p| format!("{p:.2}% of a core"))
    });
    let size = std::fs::metadata(image()).map(|m| m.len()).unwrap_or(0);
    rows.push([
        "image size (vos.elf)".into(),
        format!("{} KiB", size / 1024),
        "same image".into(),
        "≤ 512 KiB".into(),
    ]);
    rows.push([
        "guest RAM used by the runs".into(),
        "8 MiB".into(),
        "8 MiB".into(),
        "runs in 8 MiB".into(),
    ]);

    let head = ["metric", "KVM", "TCG", "aim / reference"];
    let mut w = [0usize; 4];
    for r in rows
        .iter()
        .map(|r| r.each_ref().map(|s| s.as_str()))
        .chain([head])
    {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let line = |r: [&str; 4]| {
        let cells: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c}{}", " ".repeat(w[i] - c.chars().count())))
            .collect();
        println!("| {} |", cells.join(" | "));
    };
    line(head);
    println!(
        "|{}|",
        w.iter()
            .map(|n| "-".repeat(n + 2))
            .collect::<Vec<_>>()
            .join("|")
    );
    for r in &rows {
        line(r.each_ref().map(|s| s.as_str()));
    }
}
