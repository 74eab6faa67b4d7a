//! The VOS benchmark (`bash scripts/bench-vos.sh`): boots the real image under KVM (if /dev/kvm
//! works) and TCG through dvs-instance, and prints one table, every row from this run. Readiness
//! is the guest's Ready record and results are its Report records (the control channel); the
//! console is only kept for errors. Not asserted; the aims are printed beside the figures. The
//! figures also go to `target/bench/vos.json` (see `dvs-bench summary`).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use dvs_bench::{clock_ticks_per_s, cpu_ticks, median, p99, print_table, repo_root, Figures};
use dvs_instance::{
    port::HOST_MAC, Accel, ConsoleSink, DgramPort, EnginePort, Kernel, Machine, MachineType, Nic,
    NicBackend, QemuBackend, VmBackend, VmSpec,
};
use dvs_vos_abi::{BootConfig, ControlRecord, Report, Service};
use m3ipc_core::{Endpoint, Message};

const DC: u16 = 1;
const GUEST_EP: Endpoint = Endpoint(10);
const HOST_EP: Endpoint = Endpoint(500);
const BOOT_RUNS: usize = 11;
const RTT_N: usize = 2000;
const GUEST_MAC: [u8; 6] = [0x02, 0xd5, 0, 0, 0, 0x10];

/// A fresh directory for sockets and console logs, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Result<TempDir, String> {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "dvs-bench-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).map_err(|e| format!("create {}: {e}", p.display()))?;
        Ok(TempDir(p))
    }

    fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The benchmark's context: the tokio runtime dvs-instance's machine handles wait on, the
/// backend, the image.
struct Bench {
    rt: tokio::runtime::Runtime,
    backend: QemuBackend,
    image: PathBuf,
    floor: PathBuf,
    extra: Vec<String>,
}

/// A running machine with the directory its sockets and console live in (dropped after it).
struct Vm {
    machine: Machine,
    started: Instant,
    dir: TempDir,
}

impl Bench {
    /// A boot configuration of DC 1 with `eps` and `svcs`, and `words` applied (`n=100`).
    fn config(&self, eps: &[u32], svcs: &[Service], words: &[&str]) -> Result<BootConfig, String> {
        let inc = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as u32)
            .unwrap_or(1);
        let mut c = BootConfig::new(DC, inc);
        c.endpoints = eps.to_vec();
        c.services = svcs.to_vec();
        for w in words {
            c.apply(w).map_err(|e| format!("{w}: {e}"))?;
        }
        c.validate().map_err(|e| e.to_string())?;
        Ok(c)
    }

    /// A microvm (or `machine`) spec of 8 MiB with a control channel in `dir`, console to a file.
    fn spec(&self, dir: &TempDir, machine: MachineType, accel: Accel, kernel: Kernel) -> VmSpec {
        let mut spec = VmSpec::new("bench", self.image.clone(), kernel);
        spec.machine = machine;
        spec.accel = accel;
        spec.memory_mib = 8;
        spec.console = ConsoleSink::File(dir.join("console.log"));
        spec.control = Some(dir.join("ctl.sock"));
        spec
    }

    fn start(&self, spec: &VmSpec, dir: TempDir) -> Result<Vm, String> {
        let _guard = self.rt.enter();
        let started = Instant::now();
        let machine = self.backend.start(spec).map_err(|e| e.to_string())?;
        Ok(Vm {
            machine,
            started,
            dir,
        })
    }

    /// Waits for the Ready record; the console's tail in the error.
    fn ready(&self, vm: &mut Vm, timeout: Duration) -> Result<(), String> {
        self.rt
            .block_on(vm.machine.ready(timeout))
            .map(|_| ())
            .map_err(|e| format!("not ready: {e}{}", console_tail(&vm.dir)))
    }

    /// Waits for the first Report record that `pick` takes (a `Failed` report is an error).
    fn report<T>(
        &self,
        vm: &mut Vm,
        timeout: Duration,
        pick: impl Fn(&Report) -> Option<T>,
    ) -> Result<T, String> {
        for r in vm.machine.seen() {
            if let ControlRecord::Report(r) = r {
                if let Some(v) = pick(r) {
                    return Ok(v);
                }
            }
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // The timer is made inside the runtime (tokio needs its context for that).
            let rec = self.rt.block_on(async {
                tokio::time::timeout_at(deadline, vm.machine.next_record()).await
            });
            match rec {
                Err(_) => return Err(format!("no report within {timeout:?}")),
                Ok(None) => {
                    return Err(format!(
                        "control channel closed before the report{}",
                        console_tail(&vm.dir)
                    ))
                }
                Ok(Some(Err(e))) => return Err(format!("control channel: {e}")),
                Ok(Some(Ok(ControlRecord::Report(Report::Failed {
                    step, index, error, ..
                })))) => return Err(format!("{step:?} {index} failed: {error}")),
                Ok(Some(Ok(ControlRecord::Fatal { reason }))) => {
                    return Err(format!("guest fatal: {reason}"))
                }
                Ok(Some(Ok(ControlRecord::Report(r)))) => {
                    if let Some(v) = pick(&r) {
                        return Ok(v);
                    }
                }
                Ok(Some(Ok(_))) => {}
            }
        }
    }

    /// Launch-to-exit of the floor ELF, in ms.
    fn floor_once(&self, machine: MachineType, accel: Accel) -> Result<f64, String> {
        let dir = TempDir::new()?;
        let mut spec = self.spec(&dir, machine, accel, Kernel::Raw(String::new()));
        spec.kernel_path = self.floor.clone();
        spec.control = None;
        let mut vm = self.start(&spec, dir)?;
        let t = accel.timeout(Duration::from_secs(10));
        let exited = self
            .rt
            .block_on(async { tokio::time::timeout(t, vm.machine.wait()).await });
        match exited {
            Ok(_) => Ok(vm.started.elapsed().as_secs_f64() * 1000.0),
            Err(_) => Err(format!(
                "floor ELF did not exit on {} {}",
                machine.name(),
                accel.name()
            )),
        }
    }

    /// Launch-to-ready of the VOS, in ms.
    fn ready_once(&self, machine: MachineType, accel: Accel) -> Result<f64, String> {
        let dir = TempDir::new()?;
        let cfg = self.config(&[GUEST_EP.0], &[Service::Echo], &[])?;
        let spec = self.spec(&dir, machine, accel, Kernel::Config(cfg));
        let mut vm = self.start(&spec, dir)?;
        self.ready(&mut vm, accel.timeout(Duration::from_secs(10)))?;
        Ok(vm.started.elapsed().as_secs_f64() * 1000.0)
    }

    /// Median launch-to-ready of the VOS and launch-to-exit of the floor, runs interleaved so
    /// that both see the same machine load.
    fn boot_ms(&self, machine: MachineType, accel: Accel) -> Result<(f64, f64), String> {
        let (mut r, mut f) = (Vec::new(), Vec::new());
        for _ in 0..BOOT_RUNS {
            match self.floor_once(machine, accel) {
                Ok(v) => f.push(v),
                Err(e) => eprintln!("vos-bench: {e}"),
            }
            match self.ready_once(machine, accel) {
                Ok(v) => r.push(v),
                Err(e) => eprintln!("vos-bench: {e}"),
            }
        }
        if r.is_empty() || f.is_empty() {
            return Err("no boot completed".into());
        }
        Ok((median(&mut r), median(&mut f)))
    }

    /// Echo on a dgram NIC, with the host end an EnginePort on the other socket.
    fn echo_with_port(
        &self,
        accel: Accel,
        words: &[&str],
    ) -> Result<(Vm, EnginePort<DgramPort>), String> {
        let dir = TempDir::new()?;
        let (guest, host) = (dir.join("g.sock"), dir.join("h.sock"));
        let port = DgramPort::bind(&host, &guest).map_err(|e| e.to_string())?;
        let h = EnginePort::new(port, DC, &[HOST_EP], HOST_MAC).map_err(|e| e.to_string())?;
        let cfg = self.config(&[GUEST_EP.0], &[Service::Echo], words)?;
        let mut spec = self.spec(&dir, MachineType::Microvm, accel, Kernel::Config(cfg));
        spec.nics.push(Nic {
            backend: NicBackend::Dgram {
                local: guest,
                remote: host,
            },
            mac: GUEST_MAC,
        });
        let mut vm = self.start(&spec, dir)?;
        self.ready(&mut vm, accel.timeout(Duration::from_secs(10)))?;
        Ok((vm, h))
    }

    /// Host sendrec round trips to echo (µs), with the user's extra boot words.
    fn guest_rtt(&self, accel: Accel) -> Result<(f64, f64), String> {
        let extra: Vec<&str> = self.extra.iter().map(String::as_str).collect();
        let (_vm, mut h) = self.echo_with_port(accel, &extra)?;
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

    /// Host sendrec round trips to echo in a guest that polls instead of halting (`spin_us` of
    /// 10 s): the QEMU I/O-thread floor of the path, without vCPU wake-ups (median µs, p99 µs).
    fn polling_rtt(&self, accel: Accel) -> Result<(f64, f64), String> {
        let (_vm, mut h) = self.echo_with_port(accel, &["spin_us=10000000"])?;
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

    /// Host sendrec to a guest that halted before each call (5 ms apart): the cost of waking it
    /// through the device interrupt (median µs, p99 µs).
    fn halted_rtt(&self, accel: Accel) -> Result<(f64, f64), String> {
        let (_vm, mut h) = self.echo_with_port(accel, &[])?;
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

    /// The in-guest local sendrec loop (ns per call), from the guest's LocalSendrec report.
    fn local_ns(&self, accel: Accel) -> Result<u64, String> {
        let dir = TempDir::new()?;
        let cfg = self.config(&[GUEST_EP.0], &[Service::Echo], &["local_n=200000"])?;
        let spec = self.spec(&dir, MachineType::Microvm, accel, Kernel::Config(cfg));
        let mut vm = self.start(&spec, dir)?;
        self.report(
            &mut vm,
            accel.timeout(Duration::from_secs(20)),
            |r| match r {
                Report::LocalSendrec { ns_per_call, .. } => Some(*ns_per_call),
                _ => None,
            },
        )
    }

    /// ipc-bench against a local echo endpoint through the task API (median ns, ops/s).
    fn task_sendrec(&self, accel: Accel) -> Result<(u64, u64), String> {
        let dir = TempDir::new()?;
        let cfg = self.config(
            &[10, 11],
            &[Service::Echo, Service::IpcBench],
            &["peer=11", "n=100000", "vcopy=0"],
        )?;
        let spec = self.spec(&dir, MachineType::Microvm, accel, Kernel::Config(cfg));
        let mut vm = self.start(&spec, dir)?;
        self.report(&mut vm, accel.timeout(Duration::from_secs(20)), sendrecs)
            .map(|(m, _, o)| (m, o))
    }

    /// ipc-bench in one VM against echo in another, over a unix datagram socket pair (no
    /// proxy): (median µs, p99 µs).
    fn guest_to_guest(&self, accel: Accel) -> Result<(f64, f64), String> {
        let (sdir, cdir) = (TempDir::new()?, TempDir::new()?);
        let (pa, pb) = (sdir.join("a.sock"), sdir.join("b.sock"));
        let cfg = self.config(&[20], &[Service::Echo], &[])?;
        let mut server = self.spec(&sdir, MachineType::Microvm, accel, Kernel::Config(cfg));
        server.nics.push(Nic {
            backend: NicBackend::Dgram {
                local: pb.clone(),
                remote: pa.clone(),
            },
            mac: [0x02, 0xd5, 0, 0, 0, 0x20],
        });
        let mut srv = self.start(&server, sdir)?;
        self.ready(&mut srv, accel.timeout(Duration::from_secs(10)))?;
        let cfg = self.config(
            &[10],
            &[Service::IpcBench],
            &["peer=20", "n=2000", "vcopy=0"],
        )?;
        let mut client = self.spec(&cdir, MachineType::Microvm, accel, Kernel::Config(cfg));
        client.nics.push(Nic {
            backend: NicBackend::Dgram {
                local: pa,
                remote: pb,
            },
            mac: [0x02, 0xd5, 0, 0, 0, 0x21],
        });
        let mut cli = self.start(&client, cdir)?;
        let (m, p, _) = self.report(&mut cli, accel.timeout(Duration::from_secs(30)), sendrecs)?;
        Ok((m as f64 / 1000.0, p as f64 / 1000.0))
    }

    /// CPU use of an idle instance over 5 s, in percent of one core.
    fn idle_pct(&self, accel: Accel) -> Result<f64, String> {
        let (vm, _h) = self.echo_with_port(accel, &[])?;
        let pid = vm.machine.pid().ok_or("the machine has no process id")?;
        std::thread::sleep(Duration::from_secs(1));
        let a = cpu_ticks(pid)?;
        let t0 = Instant::now();
        std::thread::sleep(Duration::from_secs(5));
        let used = cpu_ticks(pid)?.saturating_sub(a);
        Ok(used as f64 / clock_ticks_per_s() / t0.elapsed().as_secs_f64() * 100.0)
    }
}

/// (median ns, p99 ns, ops/s) of a Sendrecs report.
fn sendrecs(r: &Report) -> Option<(u64, u64, u64)> {
    match r {
        Report::Sendrecs {
            median_ns,
            p99_ns,
            ops_per_s,
            ..
        } => Some((*median_ns, *p99_ns, *ops_per_s)),
        _ => None,
    }
}

/// The last console lines of a machine, for an error message.
fn console_tail(dir: &TempDir) -> String {
    let text = std::fs::read_to_string(dir.join("console.log")).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(5)..].join(" / ");
    if tail.is_empty() {
        String::new()
    } else {
        format!(" (console: {tail})")
    }
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

/// Raw unix datagram socket ping-pong of 96-byte messages between two host threads (µs): the
/// socket floor under QEMU's datagram and stream netdevs.
fn unix_rtt() -> Result<(f64, f64), String> {
    use std::os::unix::net::UnixDatagram;
    let (a, b) = UnixDatagram::pair().map_err(|e| e.to_string())?;
    let server = std::thread::spawn(move || -> std::io::Result<()> {
        let mut buf = [0u8; 96];
        for _ in 0..RTT_N + 200 {
            let n = b.recv(&mut buf)?;
            b.send(&buf[..n])?;
        }
        Ok(())
    });
    let mut buf = [7u8; 96];
    let mut lat = Vec::with_capacity(RTT_N);
    for i in 0..RTT_N + 200 {
        let t0 = Instant::now();
        a.send(&buf).map_err(|e| e.to_string())?;
        a.recv(&mut buf).map_err(|e| e.to_string())?;
        if i >= 200 {
            lat.push(t0.elapsed().as_secs_f64() * 1e6);
        }
    }
    let _ = server.join();
    Ok((median(&mut lat), p99(&mut lat)))
}

/// A table cell: the figure as `show` writes it, or why it could not be measured.
fn cell<T: Clone>(r: &Result<T, String>, show: impl FnOnce(T) -> String) -> String {
    r.clone()
        .map(show)
        .unwrap_or_else(|e| format!("failed: {e}"))
}

/// A median / p99 pair in microseconds.
fn median_p99((m, p): (f64, f64)) -> String {
    format!("{m:.1} / {p:.1} µs")
}

/// Records a (median, p99) pair of µs figures as `<accel>.<key>.median_us` / `.p99_us`.
fn pair(figs: &mut Figures, a: Accel, key: &str, r: &Result<(f64, f64), String>) {
    figs.set_result(
        format!("{}.{key}.median_us", a.name()),
        &r.clone().map(|v| round1(v.0)),
    );
    figs.set_result(
        format!("{}.{key}.p99_us", a.name()),
        &r.clone().map(|v| round1(v.1)),
    );
}

/// `images/<name>`.
fn image_path(name: &str) -> PathBuf {
    repo_root().join("images").join(name)
}

fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

fn main() -> Result<(), String> {
    let image = std::env::var_os("DVS_IMAGE")
        .map(PathBuf::from)
        .unwrap_or_else(|| image_path("vos.elf"));
    let floor = image_path("floor.elf");
    for p in [&image, &floor] {
        if !Path::new(p).exists() {
            return Err(format!("{} missing: run `make images`", p.display()));
        }
    }
    // dvs-instance's machine handles do their reading on threads of their own; the runtime only
    // waits (current-thread, so nothing runs beside the measurement).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    let extra = std::env::var("VOS_BENCH_GUEST_ARGS")
        .unwrap_or_default()
        .split_whitespace()
        .map(String::from)
        .collect();
    let b = Bench {
        rt,
        backend: QemuBackend::default(),
        image,
        floor,
        extra,
    };
    let mut accels = vec![];
    if Accel::detect() == Accel::Kvm {
        accels.push(Accel::Kvm);
    } else {
        eprintln!("vos-bench: /dev/kvm not usable: KVM columns show n/a");
    }
    accels.push(Accel::Tcg);
    // `VOS_BENCH_ACCELS=kvm` (or `tcg`) measures one column only.
    if let Ok(only) = std::env::var("VOS_BENCH_ACCELS") {
        accels.retain(|a| only.split(',').any(|w| w.trim() == a.name()));
    }
    let mut figs = Figures::new();
    let mut rows: Vec<[String; 4]> = Vec::new();
    // A row measured under each accelerator in turn (KVM first).
    let measured = |rows: &mut Vec<[String; 4]>,
                    name: &str,
                    aim: String,
                    f: &mut dyn FnMut(Accel) -> String| {
        let [k, t] = [Accel::Kvm, Accel::Tcg].map(|a| {
            if accels.contains(&a) {
                f(a)
            } else {
                "n/a".into()
            }
        });
        rows.push([name.into(), k, t, aim]);
    };
    for m in [MachineType::Microvm, MachineType::Q35] {
        eprintln!("vos-bench: boot times on {}", m.name());
        measured(
            &mut rows,
            &format!("boot {}: launch→ready", m.name()),
            "≤ 1.3x floor".into(),
            &mut |a| {
                let r = b.boot_ms(m, a);
                let key = format!("{}.boot_{}", a.name(), m.name());
                figs.set_result(format!("{key}.ready_ms"), &r.clone().map(|v| round1(v.0)));
                figs.set_result(format!("{key}.floor_ms"), &r.clone().map(|v| round1(v.1)));
                cell(&r, |(r, f)| {
                    format!("{r:.1} ms (floor {f:.1}, {:.2}x)", r / f)
                })
            },
        );
    }
    eprintln!("vos-bench: sendrec round trips");
    let tcp = tcp_rtt();
    figs.set_result("tcp_loopback.median_us", &tcp.clone().map(|v| round1(v.0)));
    figs.set_result("tcp_loopback.p99_us", &tcp.clone().map(|v| round1(v.1)));
    let tcp = cell(&tcp, |(m, p)| {
        format!("raw TCP loopback {m:.1} / {p:.1} µs")
    });
    measured(
        &mut rows,
        "host↔guest sendrec median / p99",
        format!("≤ 2x {tcp}"),
        &mut |a| {
            let r = b.guest_rtt(a);
            pair(&mut figs, a, "host_guest_sendrec", &r);
            cell(&r, median_p99)
        },
    );
    let unix = unix_rtt();
    figs.set_result("unix_dgram.median_us", &unix.clone().map(|v| round1(v.0)));
    figs.set_result("unix_dgram.p99_us", &unix.clone().map(|v| round1(v.1)));
    let unix = cell(&unix, |(m, p)| {
        format!("floor: raw unix datagram RTT {m:.1} / {p:.1} µs")
    });
    measured(
        &mut rows,
        "  same, guest polling (no halts)",
        unix,
        &mut |a| {
            let r = b.polling_rtt(a);
            pair(&mut figs, a, "host_guest_sendrec_polling", &r);
            cell(&r, median_p99)
        },
    );
    measured(
        &mut rows,
        "  same, guest halted before each call",
        "wake-up by device interrupt".into(),
        &mut |a| {
            let r = b.halted_rtt(a);
            pair(&mut figs, a, "host_guest_sendrec_halted", &r);
            cell(&r, median_p99)
        },
    );
    measured(
        &mut rows,
        "guest↔guest sendrec median / p99",
        "two VMs, dgram pair, no proxy".into(),
        &mut |a| {
            let r = b.guest_to_guest(a);
            pair(&mut figs, a, "guest_guest_sendrec", &r);
            cell(&r, median_p99)
        },
    );
    eprintln!("vos-bench: in-guest local sendrec");
    measured(
        &mut rows,
        "in-guest local sendrec",
        "≤ 300 ns".into(),
        &mut |a| {
            let r = b.local_ns(a);
            figs.set_result(format!("{}.local_sendrec_ns", a.name()), &r);
            cell(&r, |n| format!("{n} ns/call"))
        },
    );
    measured(
        &mut rows,
        "in-guest sendrec via tasks",
        "ipc-bench ↔ echo, same VM".into(),
        &mut |a| {
            let r = b.task_sendrec(a);
            figs.set_result(
                format!("{}.task_sendrec.median_ns", a.name()),
                &r.clone().map(|v| v.0),
            );
            figs.set_result(
                format!("{}.task_sendrec.ops_per_s", a.name()),
                &r.clone().map(|v| v.1),
            );
            cell(&r, |(m, o)| format!("{m} ns median, {o} ops/s"))
        },
    );
    eprintln!("vos-bench: idle CPU");
    measured(
        &mut rows,
        "idle instance CPU (5 s)",
        "< 5%".into(),
        &mut |a| {
            let r = b.idle_pct(a);
            figs.set_result(
                format!("{}.idle_cpu_pct", a.name()),
                &r.clone().map(|p| (p * 100.0).round() / 100.0),
            );
            cell(&r, |p| format!("{p:.2}% of a core"))
        },
    );
    let size = std::fs::metadata(&b.image).map(|m| m.len()).unwrap_or(0);
    figs.set("image_kib", size / 1024);
    figs.set("guest_ram_mib", 8);
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
    print_table(["metric", "KVM", "TCG", "aim / reference"], &rows);
    if let Err(e) = figs.write("vos") {
        eprintln!("vos-bench: cannot write the figures: {e}");
    }
    Ok(())
}
