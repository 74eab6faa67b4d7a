//! Boots the real VOS image under QEMU through dvs-instance and checks it from the host.
//!
//! Every test builds a [`VmSpec`] with a typed [`BootConfig`] (or, to feed a bad command line, a
//! [`Kernel::Raw`]), starts it with [`QemuBackend`], and learns what the guest does from its
//! control channel: readiness from the Ready record, counters from Counters records, benchmark
//! results from Report records. The human console is read only where it is the thing under test.
//! The host end of the fabric NIC is dvs-instance's [`EnginePort`] on a [`DgramPort`].
//!
//! Each test has bounded waits (KVM figures, three times as long under TCG: [`Accel::timeout`]);
//! every QEMU is killed and reaped when its [`Machine`] drops.

use dvs_instance::port::{DgramPort, EnginePort, HOST_MAC};
use dvs_instance::{
    Accel, Exit, Kernel, Machine, MachineType, Nic, NicBackend, QemuBackend, ReadyError, VmBackend,
    VmSpec,
};
use dvs_vos_abi::control::CONTROL_VERSION;
use dvs_vos_abi::{BootConfig, Cidr, ControlRecord, Counters, IpConfig, Ready, Report, Service};
use m3ipc_core::wire::{FrameRepr, Kind};
use m3ipc_core::{Completion, DcId, Endpoint, Message, VcopyRequest};
use qemu_tests::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

const DC: u16 = 1;
const GUEST_EP: u32 = 10;
const HOST_EP: u32 = 500;

/// The disk server's tests (`services=[disk]` over a virtio-blk drive).
#[path = "vos/disk.rs"]
mod disk;

/// The file server's tests (`services=[disk, fs]`, and fs calling a disk server elsewhere).
#[path = "vos/fs.rs"]
mod fs;

/// The fabric NIC on the node's proxy: stream and vhost-user ports side by side.
#[path = "vos/vhost.rs"]
mod vhost;

/// The web server on the file server (`services=[http, disk, fs]`), and with the file server away.
#[path = "vos/web.rs"]
mod web;

/// A VOS confined on the host: cgroup limits, an unprivileged uid, seccomp, an empty chroot.
#[path = "vos/confine.rs"]
mod confine;

/// The guest data path: jumbo vcopy frames (`mtu=`) and the adaptive poll (`call_spin_us=`).
#[path = "vos/datapath.rs"]
mod datapath;

/// QEMU's exit status when the guest ends with `ExitCode::BadConfig` (2): isa-debug-exit turns
/// value `v` into `2v + 1`.
const EXIT_BAD_CONFIG: i32 = 5;

fn secs(a: Accel, s: u64) -> Duration {
    a.timeout(Duration::from_secs(s))
}

/// The MAC of a guest's `i`-th NIC (QEMU's own default numbering, so the q35 check reads as
/// before).
fn nic_mac(i: usize) -> [u8; 6] {
    [0x52, 0x54, 0, 0x12, 0x34, 0x10 + i as u8]
}

/// A boot incarnation that grows from run to run.
fn incarnation() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as u32)
        .unwrap_or(1)
}

/// A boot configuration of DC 1 with `endpoints`, `services` and `settings` (`key=value`, as a
/// user's `--arg`).
fn config(endpoints: &[u32], services: &[Service], settings: &[&str]) -> BootConfig {
    let mut c = BootConfig::new(DC, incarnation());
    c.endpoints = endpoints.to_vec();
    c.services = services.to_vec();
    for s in settings {
        c.apply(s)
            .unwrap_or_else(|e| panic!("test setting '{s}' should apply: {e}"));
    }
    c
}

/// An address on a NIC.
fn ip(cidr: &str, gateway: Option<[u8; 4]>) -> Option<IpConfig> {
    let cidr = Cidr::parse(cidr).unwrap_or_else(|e| panic!("test address '{cidr}': {e}"));
    Some(IpConfig { cidr, gateway })
}

/// A VOS spec named `name`: `machine`, `accel`, console captured, control socket in `dir`.
fn vos(dir: &TempDir, name: &str, machine: MachineType, a: Accel, kernel: Kernel) -> VmSpec {
    let image = image().unwrap_or_else(|e| panic!("the VOS image should build: {e}"));
    let mut s = VmSpec::new(name, image, kernel);
    s.machine = machine;
    s.accel = a;
    s.control = Some(dir.join(&format!("{name}-ctl.sock")));
    s
}

/// A NIC on a unix datagram pair: QEMU binds `local`, sends to `remote`.
fn dgram_nic(i: usize, local: std::path::PathBuf, remote: std::path::PathBuf) -> Nic {
    Nic {
        backend: NicBackend::Dgram { local, remote },
        mac: nic_mac(i),
    }
}

fn start(spec: &VmSpec) -> Machine {
    QemuBackend::default()
        .start(spec)
        .unwrap_or_else(|e| panic!("QEMU should start for '{}': {e}", spec.name))
}

fn console(m: &Machine) -> String {
    m.console_lines().join("\n")
}

/// The Ready record, within 10 s (KVM).
fn ready(m: &mut Machine, a: Accel) -> Ready {
    let t = secs(a, 10);
    Machine::block_on(m.ready(t)).unwrap_or_else(|e| {
        panic!(
            "expected a Ready record within {t:?}, got: {e}\nconsole:\n{}",
            console(m)
        )
    })
}

/// Waits up to `timeout` for a control record for which `done` holds (records already seen
/// first) and returns it. A malformed record, a closed channel or the timeout fail the test.
fn wait_record(
    m: &mut Machine,
    timeout: Duration,
    what: &str,
    mut done: impl FnMut(&ControlRecord) -> bool,
) -> ControlRecord {
    if let Some(r) = m.seen().iter().find(|r| done(r)) {
        return r.clone();
    }
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        // The timer is made inside block_on: tokio's timers need the runtime's context.
        let got = Machine::block_on(async { tokio::time::timeout(left, m.next_record()).await });
        let why = match got {
            Ok(Some(Ok(r))) if done(&r) => return r,
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(e))) => format!("a control frame that is not a record ({e})"),
            Ok(None) => format!("the control channel closed (machine: {:?})", m.try_wait()),
            Err(_) => format!("nothing more within {timeout:?}"),
        };
        let seen = m.seen();
        panic!(
            "expected a control record {what}; got {why}. Last records: {:#?}\nconsole:\n{}",
            &seen[seen.len().saturating_sub(4)..],
            console(m)
        );
    }
}

/// The first Counters record (within `timeout`) for which `done` holds.
fn wait_counters(
    m: &mut Machine,
    timeout: Duration,
    what: &str,
    done: impl Fn(&Counters) -> bool,
) -> Counters {
    match wait_record(
        m,
        timeout,
        what,
        |r| matches!(r, ControlRecord::Counters(c) if done(c)),
    ) {
        ControlRecord::Counters(c) => c,
        other => unreachable!("wait_record returned {other:?}"),
    }
}

/// The first Report record for which `pick` gives a value; a `Report::Failed` fails the test.
fn wait_report<T>(
    m: &mut Machine,
    timeout: Duration,
    what: &str,
    pick: impl Fn(&Report) -> Option<T>,
) -> T {
    let rec = wait_record(m, timeout, what, |r| match r {
        ControlRecord::Report(f @ Report::Failed { .. }) => {
            panic!("expected {what}, the guest reported {f:?}")
        }
        ControlRecord::Report(rep) => pick(rep).is_some(),
        _ => false,
    });
    match rec {
        ControlRecord::Report(rep) => pick(&rep).unwrap_or_else(|| unreachable!("picked before")),
        other => unreachable!("wait_record returned {other:?}"),
    }
}

/// Waits up to `timeout` for the machine to end.
fn wait_exit(m: &mut Machine, timeout: Duration) -> Option<Exit> {
    Machine::block_on(async { tokio::time::timeout(timeout, m.wait()).await }).ok()
}

/// An echo guest on a dgram fabric NIC and the host's engine on the other end (the machine
/// drops first, killing QEMU, then the host port).
struct Echo {
    vm: Machine,
    host: EnginePort<DgramPort>,
    ready: Ready,
}

/// Boots echo on endpoint 10 with `settings`, its fabric NIC a dgram pair (sockets in `dir`,
/// which the caller keeps until the guest is gone) to a host engine that holds endpoint 500,
/// and waits for its Ready record.
fn boot_echo(dir: &TempDir, a: Accel, machine: MachineType, mem: u32, settings: &[&str]) -> Echo {
    let (guest_sock, host_sock) = (dir.join("guest.sock"), dir.join("host.sock"));
    let port =
        DgramPort::bind(&host_sock, &guest_sock).expect("the host end of the fabric NIC binds");
    let host = EnginePort::new(port, DC, &[Endpoint(HOST_EP)], HOST_MAC)
        .expect("the host engine binds its endpoint");
    let cfg = config(&[GUEST_EP], &[Service::Echo], settings);
    let mut spec = vos(dir, "echo", machine, a, Kernel::Config(cfg));
    spec.memory_mib = mem;
    spec.nics.push(dgram_nic(0, guest_sock, host_sock));
    let mut vm = start(&spec);
    let ready = ready(&mut vm, a);
    assert_eq!(
        (ready.dc, &ready.endpoints[..], &ready.services[..]),
        (DC, &[GUEST_EP][..], &[Service::Echo][..]),
        "Ready record of the echo guest: {ready:?}"
    );
    Echo { vm, host, ready }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(18080)
}

fn http(port: u16, req: &str, timeout: Duration) -> Result<String, String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    s.write_all(req.as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8(out).map_err(|e| e.to_string())
}

/// CPU time (user + system) process `pid` has used, in clock ticks (1/100 s), from /proc.
fn cpu_ticks(pid: u32) -> Result<u64, String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| format!("read /proc/{pid}/stat: {e}"))?;
    // Fields after the command name (in parentheses, may contain spaces); the rest starts at
    // field 3 (state), so utime (field 14) and stime (15) are at 11 and 12.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or("malformed /proc stat")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = f.get(11).and_then(|v| v.parse().ok()).ok_or("no utime")?;
    let stime: u64 = f.get(12).and_then(|v| v.parse().ok()).ok_or("no stime")?;
    Ok(utime + stime)
}

/// CPU time the live threads of process `pid` have used, in ns, from /proc/PID/task/*/schedstat:
/// precise where /proc/PID/stat counts 10 ms ticks (and QEMU's vCPU runs in a thread of its own).
fn cpu_ns(pid: u32) -> Result<u64, String> {
    let dir = format!("/proc/{pid}/task");
    let tasks = std::fs::read_dir(&dir).map_err(|e| format!("read {dir}: {e}"))?;
    let mut total = 0u64;
    for t in tasks.flatten() {
        // A thread that ended since read_dir is simply not counted.
        let Ok(s) = std::fs::read_to_string(t.path().join("schedstat")) else {
            continue;
        };
        let ns: u64 = s
            .split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("malformed {}/schedstat", t.path().display()))?;
        total += ns;
    }
    Ok(total)
}

#[test]
fn boot_ready_microvm() {
    let _g = exclusive();
    let a = accel();
    let dir = TempDir::new().expect("scratch dir");
    let cfg = config(&[GUEST_EP], &[Service::Echo], &[]);
    let mut vm = start(&vos(
        &dir,
        "boot",
        MachineType::Microvm,
        a,
        Kernel::Config(cfg),
    ));
    let r = ready(&mut vm, a);
    assert_eq!(r.version, CONTROL_VERSION, "control version: {r:?}");
    assert_eq!(
        (r.dc, &r.endpoints[..], &r.services[..], r.macs.len()),
        (DC, &[GUEST_EP][..], &[Service::Echo][..], 0),
        "Ready record of a NIC-less echo guest: {r:?}"
    );
    assert!(
        r.tsc_mhz > 0 && r.init_us > 0,
        "calibration and boot time: {r:?}"
    );
    eprintln!(
        "qemu-tests: microvm ready in {} µs of guest time, TSC {} MHz ({})",
        r.init_us,
        r.tsc_mhz,
        a.name()
    );
}

#[test]
fn boot_ready_q35() {
    let _g = exclusive();
    let a = accel();
    let dir = TempDir::new().expect("scratch dir");
    let mut cfg = config(&[GUEST_EP], &[Service::Echo, Service::Http], &[]);
    cfg.fabric = ip("10.0.2.15/24", None);
    let mut spec = vos(&dir, "q35", MachineType::Q35, a, Kernel::Config(cfg));
    spec.nics
        .push(dgram_nic(0, dir.join("g.sock"), dir.join("h.sock")));
    let mut vm = start(&spec);
    let r = ready(&mut vm, a);
    assert_eq!(
        r.macs,
        [nic_mac(0)],
        "q35's PCI NIC in the Ready record: {r:?}"
    );
    assert_eq!(r.services, [Service::Echo, Service::Http], "{r:?}");
}

/// The control channel and the human console are two channels: a guest's Ready record arrives
/// while its console prints its readable `dvs: ready` line, nothing binary leaks into the
/// console, and a guest with no control channel is not taken as ready however its console reads.
#[test]
fn control_records_and_console_lines_are_separate() {
    let _g = exclusive();
    let a = accel();
    let dir = TempDir::new().expect("scratch dir");
    let cfg = config(&[GUEST_EP], &[Service::Echo], &[]);
    let spec = vos(
        &dir,
        "sep",
        MachineType::Microvm,
        a,
        Kernel::Config(cfg.clone()),
    );
    let mut vm = start(&spec);
    let r = ready(&mut vm, a);
    assert_eq!((r.dc, &r.endpoints[..]), (DC, &[GUEST_EP][..]), "{r:?}");
    let line = Machine::block_on(vm.wait_console("dvs: ready", secs(a, 5)))
        .unwrap_or_else(|e| panic!("expected a readable ready line on the console too: {e}"));
    assert!(
        line.contains("dc=1") && line.contains("ep=10"),
        "the console's ready line should name the DC and endpoint: {line}"
    );
    for l in vm.console_lines() {
        assert!(
            !l.chars().any(|c| c.is_control() && c != '\t'),
            "a console line carries control bytes (a record on the wrong port?): {l:?}"
        );
    }
    drop(vm);

    // The same guest without a control channel still prints its ready line, and is not ready.
    let mut blind = spec;
    blind.name = "blind".into();
    blind.control = None;
    let mut vm = start(&blind);
    Machine::block_on(vm.wait_console("dvs: ready", secs(a, 10)))
        .unwrap_or_else(|e| panic!("expected the ready line without a control channel: {e}"));
    match Machine::block_on(vm.ready(secs(a, 2))) {
        Err(ReadyError::ChannelClosed) => {}
        other => panic!(
            "a machine without a control channel should not be ready (ChannelClosed), got {other:?}"
        ),
    }
}

#[test]
fn http_get_through_publish_nic() {
    http_checks(MachineType::Microvm);
}

#[test]
fn http_get_through_publish_nic_q35() {
    http_checks(MachineType::Q35);
}

/// Two NICs (dgram fabric, the publish NIC on a publish gateway); HTTP through the publish NIC.
fn http_checks(machine: MachineType) {
    let _g = exclusive();
    let a = accel();
    let dir = TempDir::new().expect("scratch dir");
    let mut cfg = config(&[GUEST_EP], &[Service::Http, Service::Echo], &[]);
    cfg.fabric = ip("10.1.0.2/24", None);
    cfg.publish = ip("10.0.2.15/24", Some([10, 0, 2, 2]));
    let mut spec = vos(&dir, "web", machine, a, Kernel::Config(cfg));
    spec.nics
        .push(dgram_nic(0, dir.join("g.sock"), dir.join("h.sock")));
    let gw = Published::start(&dir.join("pub.sock"), 80);
    let port = gw.port;
    spec.nics.push(gw.nic(nic_mac(1)));
    let mut vm = start(&spec);
    let r = ready(&mut vm, a);
    assert_eq!(r.macs, [nic_mac(0), nic_mac(1)], "both NICs: {r:?}");
    let t = secs(a, 5);
    let r = http(
        port,
        "GET /hello.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        t,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(r.starts_with("HTTP/1.1 200 OK"), "response: {r}");
    assert!(
        r.contains("Content-Length: 15") && r.ends_with("hello from dvs\n"),
        "response: {r}"
    );
    let r = http(port, "GET /nope HTTP/1.1\r\nConnection: close\r\n\r\n", t)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(r.starts_with("HTTP/1.1 404"), "response: {r}");
    let r = http(
        port,
        "POST / HTTP/1.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        t,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        r.starts_with("HTTP/1.1 405") && r.contains("Allow: GET, HEAD"),
        "response: {r}"
    );
    let r = http(port, "garbage\r\n\r\n", t).unwrap_or_else(|e| panic!("{e}"));
    assert!(r.starts_with("HTTP/1.1 400"), "response: {r}");
    let r = http(port, "HEAD /big HTTP/1.1\r\nConnection: close\r\n\r\n", t)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        r.contains("Content-Length: 65536") && r.ends_with("\r\n\r\n"),
        "HEAD response: {r}"
    );
    // Keep-alive: two requests on one connection, then the 64 KiB page.
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the published port");
    s.set_read_timeout(Some(t)).expect("set a read timeout");
    s.write_all(b"GET /hello.txt HTTP/1.1\r\n\r\nGET /hello.txt HTTP/1.1\r\n\r\nGET /big HTTP/1.1\r\nConnection: close\r\n\r\n").expect("write three requests");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out);
    assert_eq!(
        text.matches("HTTP/1.1 200 OK").count(),
        3,
        "keep-alive responses: {}",
        &text[..text.len().min(600)]
    );
    assert!(out.len() > 65536, "big page truncated: {} bytes", out.len());
    // Several clients at once.
    let clients: Vec<_> = (0..4)
        .map(|_| {
            std::thread::spawn(move || http(port, "GET / HTTP/1.1\r\nConnection: close\r\n\r\n", t))
        })
        .collect();
    for c in clients {
        let r = c
            .join()
            .expect("client thread")
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(r.starts_with("HTTP/1.1 200 OK"), "concurrent response: {r}");
    }
    // The guest's counters saw the requests: 9 answered 200 above, 1 malformed.
    wait_counters(
        &mut vm,
        secs(a, 5),
        "with http_requests >= 9 and http_bad >= 1",
        |c| c.http_requests >= 9 && c.http_bad >= 1,
    );
    let c = gw.counters();
    assert!(
        c.connected >= 10 && c.timed_out == 0 && c.reset_by_guest == 0,
        "the gateway's view: {c:?}"
    );
}

/// UDP echo on the publish NIC, by raw frames: the test holds the NIC's other end (the publish
/// gateway carries TCP only), sends a UDP datagram from the gateway's address to port 7, answers
/// the guest's ARP for that address, and takes the echo.
#[test]
fn udp_echo_through_publish_nic() {
    let _g = exclusive();
    let a = accel();
    let dir = TempDir::new().expect("scratch dir");
    let mut cfg = config(&[GUEST_EP], &[Service::UdpEcho], &[]);
    cfg.fabric = ip("10.1.0.2/24", None);
    cfg.publish = ip("10.0.2.15/24", Some([10, 0, 2, 2]));
    let mut spec = vos(&dir, "udp", MachineType::Microvm, a, Kernel::Config(cfg));
    spec.nics
        .push(dgram_nic(0, dir.join("g.sock"), dir.join("h.sock")));
    let link = dir.join("pub.sock");
    let listener = std::os::unix::net::UnixListener::bind(&link).expect("bind the publish link");
    spec.nics.push(Nic {
        backend: NicBackend::Stream { path: link },
        mac: nic_mac(1),
    });
    let mut vm = start(&spec);
    listener
        .set_nonblocking(false)
        .expect("a blocking listener");
    let (sock, _) = listener
        .accept()
        .expect("QEMU connects to the publish link");
    let mut port = dvs_instance::StreamPort::from_stream(sock).expect("a stream port on the link");
    ready(&mut vm, a);
    let (host_mac, host_ip, guest_ip) = (HOST_MAC, [10, 0, 2, 2], [10, 0, 2, 15]);
    let msg = b"dvs udp echo over the publish NIC";
    let deadline = Instant::now() + secs(a, 10);
    let mut buf = vec![0u8; 65536];
    let mut got = None;
    'outer: while Instant::now() < deadline {
        use dvs_instance::FramePort;
        let f = udp_frame((host_mac, host_ip, 40007), ([0xff; 6], guest_ip, 7), msg);
        port.send(&f).expect("send the UDP frame");
        let until = Instant::now() + Duration::from_millis(300);
        while let Some(n) = port
            .recv(&mut buf, until.saturating_duration_since(Instant::now()))
            .expect("the publish link")
        {
            let fr = &buf[..n];
            if fr.len() >= 42
                && fr[12..14] == [8, 6]
                && fr[20..22] == [0, 1]
                && fr[38..42] == host_ip
            {
                // The guest asks who 10.0.2.2 is, to send its answer.
                let gmac: [u8; 6] = fr[6..12].try_into().expect("six bytes");
                let gip: [u8; 4] = fr[28..32].try_into().expect("four bytes");
                port.send(&arp_frame(2, (host_mac, host_ip), (gmac, gip), gmac))
                    .expect("send the ARP reply");
            } else if let Some(p) = udp_payload(fr, (guest_ip, 7), (host_ip, 40007)) {
                got = Some(p.to_vec());
                break 'outer;
            }
        }
    }
    assert_eq!(
        got.as_deref(),
        Some(&msg[..]),
        "no UDP echo on the publish NIC"
    );
}

#[test]
fn sendrec_and_vcopy_through_dgram_netdev() {
    let _g = exclusive();
    let a = accel();
    let size = 4 << 20;
    let dir = TempDir::new().expect("scratch dir");
    let Echo { vm, mut host, .. } =
        boot_echo(&dir, a, MachineType::Microvm, 48, &[&format!("buf={size}")]);
    let t = secs(a, 2);
    for i in 0..1000u32 {
        let mut m = Message::new(0x100 + i);
        m.set_u32(0, i);
        m.set_u64(1, 0xdead_beef_0000 + i as u64);
        let r = host
            .sendrec(Endpoint(HOST_EP), Endpoint(GUEST_EP), m, t)
            .unwrap_or_else(|e| panic!("sendrec {i}: {e}"));
        assert_eq!(
            (r.mtype, r.payload),
            (m.mtype, m.payload),
            "reply {i} differs"
        );
        assert_eq!(r.source, Endpoint(GUEST_EP));
    }
    // 4 MiB both ways, byte-exact.
    let pattern: Vec<u8> = (0..size)
        .map(|i| (i as u32).wrapping_mul(2654435761).to_le_bytes()[1])
        .collect();
    host.engine
        .set_buffer(Endpoint(HOST_EP), pattern.clone())
        .expect("the host buffer takes 4 MiB");
    let vt = secs(a, 60);
    let push = VcopyRequest {
        src: Endpoint(HOST_EP),
        src_offset: 0,
        dst: Endpoint(GUEST_EP),
        dst_offset: 0,
        len: size as u64,
    };
    let n = host
        .vcopy(Endpoint(HOST_EP), push, vt)
        .unwrap_or_else(|e| panic!("push: {e}\nconsole:\n{}", console(&vm)));
    assert_eq!(n, size as u64);
    host.engine
        .set_buffer(Endpoint(HOST_EP), vec![0u8; size])
        .expect("the host buffer takes 4 MiB");
    let pull = VcopyRequest {
        src: Endpoint(GUEST_EP),
        dst: Endpoint(HOST_EP),
        ..push
    };
    let n = host
        .vcopy(Endpoint(HOST_EP), pull, vt)
        .unwrap_or_else(|e| panic!("pull: {e}\nconsole:\n{}", console(&vm)));
    assert_eq!(n, size as u64);
    let back = host
        .engine
        .buffer(Endpoint(HOST_EP))
        .expect("the host buffer");
    assert!(
        back == &pattern[..],
        "4 MiB round trip differs at byte {:?}",
        back.iter().zip(&pattern).position(|(x, y)| x != y)
    );
}

#[test]
fn hostile_frames_are_dropped_and_counted() {
    let _g = exclusive();
    let a = accel();
    let dir = TempDir::new().expect("scratch dir");
    let Echo {
        mut vm, mut host, ..
    } = boot_echo(&dir, a, MachineType::Microvm, 16, &[]);
    let t = secs(a, 2);
    host.sendrec(Endpoint(HOST_EP), Endpoint(GUEST_EP), Message::new(1), t)
        .unwrap_or_else(|e| panic!("first sendrec: {e}"));
    // A valid SendRec frame to mutate.
    let payload = [0u8; 60];
    let good = FrameRepr {
        kind: Kind::SendRec,
        dc: DcId(DC),
        flags: 0,
        src: Endpoint(HOST_EP + 1),
        dst: Endpoint(GUEST_EP),
        seq: 1 << 32 | 1,
        aux: 0,
        code: 0,
        payload: &payload,
    };
    let mut buf = vec![0u8; good.buffer_len()];
    good.emit(&mut buf).expect("emit a valid frame");
    let mut seed = 0x1234_5678u32;
    let mut rnd = || {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        seed
    };
    let mut sent_bad = 0;
    for i in 0..200 {
        // Garbage of random length and bytes with the M3-IPC EtherType.
        let len = (rnd() % 1400) as usize;
        let g: Vec<u8> = (0..len).map(|_| rnd() as u8).collect();
        host.send_m3(&g).expect("send garbage");
        // Truncated valid frames.
        host.send_m3(&buf[..(i % buf.len().max(1)).min(buf.len() - 1)])
            .expect("send a truncated frame");
        sent_bad += 2;
    }
    // Wrong DC, spoofed source (the guest's own endpoint), runt and foreign-EtherType frames.
    let mut wrong = buf.clone();
    wrong[4..6].copy_from_slice(&99u16.to_be_bytes());
    host.send_m3(&wrong).expect("send a wrong-DC frame");
    let spoof = FrameRepr {
        src: Endpoint(GUEST_EP),
        dst: Endpoint(GUEST_EP),
        ..good
    };
    let mut sp = vec![0u8; spoof.buffer_len()];
    spoof.emit(&mut sp).expect("emit a spoofed frame");
    host.send_m3(&sp).expect("send a spoofed frame");
    host.send_raw(&[1, 2, 3]).expect("send a runt");
    let mut foreign = vec![0xffu8; 60];
    foreign[12] = 0x12;
    foreign[13] = 0x34;
    host.send_raw(&foreign)
        .expect("send a foreign-EtherType frame");
    // Still serving.
    for i in 0..10u32 {
        let mut m = Message::new(2);
        m.set_u32(0, i);
        let r = host
            .sendrec(Endpoint(HOST_EP), Endpoint(GUEST_EP), m, t)
            .unwrap_or_else(|e| panic!("sendrec after garbage: {e}"));
        assert_eq!(r.u32_at(0), Some(i));
    }
    // The counters record the drops (sent when they change, at most once a second).
    let c = wait_counters(
        &mut vm,
        secs(a, 8),
        &format!(
            "with bad_frames >= {}, wrong_dc >= 1, spoofed >= 1, echo_replied >= 11",
            sent_bad / 2
        ),
        |c| {
            c.bad_frames >= sent_bad / 2
                && c.wrong_dc >= 1
                && c.spoofed >= 1
                && c.echo_replied >= 11
        },
    );
    eprintln!(
        "qemu-tests: after {sent_bad} bad frames: bad_frames={} wrong_dc={} spoofed={} bad_ethernet={}",
        c.bad_frames, c.wrong_dc, c.spoofed, c.bad_ethernet
    );
    assert!(
        vm.try_wait().is_none(),
        "the guest ended: {:?}\nconsole:\n{}",
        vm.try_wait(),
        console(&vm)
    );
    assert!(
        !vm.seen()
            .iter()
            .any(|r| matches!(r, ControlRecord::Fatal { .. })),
        "the guest sent a Fatal record: {:?}",
        vm.seen()
    );
}

/// Boots `spec`, which the guest must refuse: expects a Fatal record whose reason contains
/// `says`, then exit status 5 (BadConfig). Returns the machine for further checks.
fn expect_refused(spec: &VmSpec, a: Accel, says: &str) -> Machine {
    let mut vm = start(spec);
    match Machine::block_on(vm.ready(secs(a, 10))) {
        Err(ReadyError::Fatal(reason)) => assert!(
            reason.contains(says),
            "'{}': the Fatal reason should say '{says}', it says '{reason}'",
            spec.cmdline()
        ),
        other => panic!(
            "'{}': expected a Fatal record, got {other:?}\nconsole:\n{}",
            spec.cmdline(),
            console(&vm)
        ),
    }
    let exit = wait_exit(&mut vm, secs(a, 10))
        .unwrap_or_else(|| panic!("'{}': the guest did not exit", spec.cmdline()));
    assert_eq!(
        exit,
        Exit::Code(EXIT_BAD_CONFIG),
        "'{}': exit status (BadConfig)",
        spec.cmdline()
    );
    vm
}

/// Command lines that are not a boot configuration: a Fatal record with the reason, the
/// BadConfig exit status, and the reason on the console for a human.
#[test]
fn bad_command_line_sends_fatal_and_exits_bad_config() {
    let _g = exclusive();
    let a = accel();
    let dir = TempDir::new().expect("scratch dir");
    let good = config(&[GUEST_EP], &[Service::Echo], &[]).to_cmdline_word();
    for raw in [
        "dc=1 ep=10 svc=echo".to_string(),
        "dvs.cfg=zz".to_string(),
        "dvs.cfg=07".to_string(),
        "dvs.cfg=02ff".to_string(),
        format!("{good} {good}"),
    ] {
        let says = match BootConfig::from_cmdline(&raw) {
            Err(e) => e.to_string(),
            Ok(c) => panic!("test command line '{raw}' should be refused, it decodes to {c:?}"),
        };
        let spec = vos(
            &dir,
            "bad",
            MachineType::Microvm,
            a,
            Kernel::Raw(raw.clone()),
        );
        let vm = expect_refused(&spec, a, &says);
        assert!(
            vm.count_console(&says) > 0,
            "'{raw}': the console should tell a human why ('{says}'):\n{}",
            console(&vm)
        );
    }
}

/// Well-encoded configurations that break a rule between fields: the guest validates what it
/// decodes and refuses them the same way.
#[test]
fn invalid_boot_config_sends_fatal_and_exits_bad_config() {
    let _g = exclusive();
    let a = accel();
    let dir = TempDir::new().expect("scratch dir");
    let no_service = config(&[GUEST_EP], &[], &[]);
    let bench_without_peer = config(&[GUEST_EP], &[Service::IpcBench], &[]);
    let reserved = config(&[0], &[Service::Echo], &[]);
    let twice = config(&[GUEST_EP, GUEST_EP], &[Service::Echo], &[]);
    let http_without_ip = config(&[], &[Service::Http], &[]);
    for cfg in [
        no_service,
        bench_without_peer,
        reserved,
        twice,
        http_without_ip,
    ] {
        let says = match cfg.validate() {
            Err(e) => e.to_string(),
            Ok(()) => panic!("test configuration should be invalid: {cfg:?}"),
        };
        let spec = vos(
            &dir,
            "invalid",
            MachineType::Microvm,
            a,
            Kernel::Config(cfg),
        );
        expect_refused(&spec, a, &says);
    }
}

#[test]
fn idle_instance_uses_little_cpu() {
    let _g = exclusive();
    let a = accel();
    let dir = TempDir::new().expect("scratch dir");
    let Echo { vm, mut host, .. } = boot_echo(&dir, a, MachineType::Microvm, 16, &[]);
    let (src, dst) = (Endpoint(HOST_EP), Endpoint(GUEST_EP));
    let t = secs(a, 2);
    host.sendrec(src, dst, Message::new(1), t)
        .unwrap_or_else(|e| panic!("{e}"));
    let pid = vm.pid().expect("a QEMU machine has a pid");
    std::thread::sleep(Duration::from_millis(1500));
    let before = cpu_ticks(pid).expect("cpu ticks");
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs(10));
    let used = cpu_ticks(pid).expect("cpu ticks") - before;
    let wall = start.elapsed().as_secs_f64();
    let pct = used as f64 / (wall * 100.0) * 100.0;
    eprintln!(
        "qemu-tests: idle CPU {pct:.2}% of one core over {wall:.1} s ({})",
        a.name()
    );
    assert!(pct < 5.0, "idle instance used {pct:.2}% of a core");
    let r = host
        .sendrec(src, dst, Message::new(7), t)
        .unwrap_or_else(|e| panic!("sendrec after idle: {e}"));
    assert_eq!(r.mtype, 7);
    // A halted guest wakes on the device interrupt, not on some later timer.
    let mut lat = Vec::new();
    for i in 0..20 {
        std::thread::sleep(Duration::from_millis(5));
        let t0 = Instant::now();
        host.sendrec(src, dst, Message::new(i), t)
            .unwrap_or_else(|e| panic!("spaced sendrec {i}: {e}"));
        lat.push(t0.elapsed());
    }
    lat.sort();
    eprintln!(
        "qemu-tests: sendrec to a halted guest: median {:?} ({})",
        lat[10],
        a.name()
    );
    assert!(
        lat[10] < Duration::from_millis(3),
        "halted guest answers in {:?} (median): lost wake-ups?",
        lat[10]
    );
}

#[test]
fn ipc_bench_against_local_echo() {
    let _g = exclusive();
    let a = accel();
    let dir = TempDir::new().expect("scratch dir");
    let cfg = config(
        &[10, 11],
        &[Service::Echo, Service::IpcBench],
        &[
            "peer=11",
            "n=2000",
            "vcopy=262144",
            "buf=262144",
            "local_n=1000",
        ],
    );
    let mut vm = start(&vos(
        &dir,
        "bench",
        MachineType::Microvm,
        a,
        Kernel::Config(cfg),
    ));
    ready(&mut vm, a);
    let t = secs(a, 15);
    let (calls, ns) = wait_report(&mut vm, t, "LocalSendrec", |r| match r {
        Report::LocalSendrec { calls, ns_per_call } => Some((*calls, *ns_per_call)),
        _ => None,
    });
    assert!(
        calls == 1000 && ns > 0,
        "local sendrec: {calls} calls, {ns} ns each"
    );
    let (n, median, p99) = wait_report(&mut vm, t, "Sendrecs", |r| match r {
        Report::Sendrecs {
            n,
            median_ns,
            p99_ns,
            ..
        } => Some((*n, *median_ns, *p99_ns)),
        _ => None,
    });
    assert!(
        n == 2000 && median > 0 && p99 >= median,
        "sendrecs: n={n} median={median} p99={p99}"
    );
    let bytes = wait_report(&mut vm, t, "Vcopy", |r| match r {
        Report::Vcopy { bytes, .. } => Some(*bytes),
        _ => None,
    });
    assert_eq!(bytes, 262144, "vcopy bytes");
    eprintln!(
        "qemu-tests: in-guest local sendrec {ns} ns, sendrec median {median} ns p99 {p99} ns ({})",
        a.name()
    );
}

#[test]
fn guest_to_guest_over_dgram_pair() {
    let _g = exclusive();
    let a = accel();
    let dir = TempDir::new().expect("scratch dir");
    let (pa, pb) = (dir.join("a.sock"), dir.join("b.sock"));
    let server = config(&[20], &[Service::Echo], &["buf=1048576"]);
    let mut server = vos(
        &dir,
        "server",
        MachineType::Microvm,
        a,
        Kernel::Config(server),
    );
    server.nics.push(dgram_nic(0, pb.clone(), pa.clone()));
    let mut srv = start(&server);
    ready(&mut srv, a);
    let client = config(
        &[10],
        &[Service::IpcBench],
        &["peer=20", "n=1000", "vcopy=1048576"],
    );
    let mut client = vos(
        &dir,
        "client",
        MachineType::Microvm,
        a,
        Kernel::Config(client),
    );
    client.nics.push(dgram_nic(0, pa, pb));
    let mut cli = start(&client);
    ready(&mut cli, a);
    let t = secs(a, 20);
    let (n, median, p99, ops) = wait_report(&mut cli, t, "Sendrecs", |r| match r {
        Report::Sendrecs {
            n,
            median_ns,
            p99_ns,
            ops_per_s,
        } => Some((*n, *median_ns, *p99_ns, *ops_per_s)),
        _ => None,
    });
    assert_eq!(n, 1000, "client sendrecs");
    let (bytes, push, pull) = wait_report(&mut cli, t, "Vcopy", |r| match r {
        Report::Vcopy {
            bytes,
            push_us,
            pull_us,
        } => Some((*bytes, *push_us, *pull_us)),
        _ => None,
    });
    assert_eq!(bytes, 1048576, "client vcopy bytes");
    eprintln!(
        "qemu-tests: guest-to-guest sendrec median {median} ns p99 {p99} ns ({ops}/s); 1 MiB vcopy push {push} µs pull {pull} µs ({})",
        a.name()
    );
}

#[test]
fn gratuitous_arp_arp_and_icmp_echo_on_the_fabric_nic() {
    let _g = exclusive();
    let a = accel();
    let dir = TempDir::new().expect("scratch dir");
    let (guest, host) = (dir.join("guest.sock"), dir.join("host.sock"));
    let port = DgramPort::bind(&host, &guest).expect("the host end of the fabric NIC binds");
    let mut h = EnginePort::new(port, DC, &[Endpoint(HOST_EP)], HOST_MAC)
        .expect("the host engine binds its endpoint");
    let mut cfg = config(&[GUEST_EP], &[Service::Echo], &[]);
    cfg.fabric = ip("10.1.0.2/24", None);
    let mut spec = vos(&dir, "arp", MachineType::Microvm, a, Kernel::Config(cfg));
    spec.nics.push(dgram_nic(0, guest, host));
    let mut vm = start(&spec);
    let r = ready(&mut vm, a);
    let (guest_ip, host_ip) = ([10, 1, 0, 2], [10, 1, 0, 1]);
    // The gratuitous ARP sent at start, from the MAC the Ready record names.
    let deadline = Instant::now() + secs(a, 5);
    let guest_mac = loop {
        assert!(
            Instant::now() < deadline,
            "no gratuitous ARP from the guest"
        );
        let Some(f) = h
            .recv_raw(Duration::from_millis(200))
            .expect("the fabric port receives")
        else {
            continue;
        };
        if f.len() >= 42 && f[12..14] == [8, 6] && f[28..32] == guest_ip && f[38..42] == guest_ip {
            let mut m = [0u8; 6];
            m.copy_from_slice(&f[6..12]);
            break m;
        }
    };
    assert_eq!(
        r.macs.first(),
        Some(&guest_mac),
        "the gratuitous ARP's sender is the fabric MAC of the Ready record"
    );
    // Ping it; answer its ARP request for us.
    let deadline = Instant::now() + secs(a, 5);
    let mut tries = 0;
    loop {
        assert!(
            Instant::now() < deadline,
            "no ICMP echo reply after {tries} pings\n{}",
            console(&vm)
        );
        tries += 1;
        let ping = icmp_echo_frame(
            (HOST_MAC, host_ip),
            (guest_mac, guest_ip),
            0x1234,
            tries,
            b"dvs-ping",
        );
        h.send_raw(&ping)
            .unwrap_or_else(|e| panic!("send ping: {e}\n{}", console(&vm)));
        let until = Instant::now() + Duration::from_millis(300);
        let mut replied = false;
        while let Some(f) = h
            .recv_raw(until.saturating_duration_since(Instant::now()))
            .expect("the fabric port receives")
        {
            if f.len() >= 42 && f[12..14] == [8, 6] && f[20..22] == [0, 1] && f[38..42] == host_ip {
                let reply = arp_frame(2, (HOST_MAC, host_ip), (guest_mac, guest_ip), guest_mac);
                h.send_raw(&reply).expect("send an ARP reply");
            } else if f.len() >= 42
                && f[12..14] == [8, 0]
                && f[23] == 1
                && f[34] == 0
                && f[38..40] == [0x12, 0x34]
            {
                assert!(f.ends_with(b"dvs-ping"), "echo payload differs");
                replied = true;
                break;
            }
            if Instant::now() >= until {
                break;
            }
        }
        if replied {
            break;
        }
    }
}

#[test]
fn sendrec_and_vcopy_on_q35() {
    let _g = exclusive();
    let a = accel();
    let dir = TempDir::new().expect("scratch dir");
    let Echo {
        vm,
        mut host,
        ready,
        ..
    } = boot_echo(&dir, a, MachineType::Q35, 16, &["buf=262144"]);
    assert_eq!(ready.macs, [nic_mac(0)], "q35's PCI fabric NIC: {ready:?}");
    let t = secs(a, 2);
    for i in 0..200u32 {
        let mut m = Message::new(i);
        m.set_u32(0, i);
        let r = host
            .sendrec(Endpoint(HOST_EP), Endpoint(GUEST_EP), m, t)
            .unwrap_or_else(|e| panic!("sendrec {i}: {e}\n{}", console(&vm)));
        assert_eq!(r.payload, m.payload);
    }
    let data: Vec<u8> = (0..262144u32).map(|i| (i * 7) as u8).collect();
    host.engine
        .set_buffer(Endpoint(HOST_EP), data.clone())
        .expect("host buffer");
    let push = VcopyRequest {
        src: Endpoint(HOST_EP),
        src_offset: 0,
        dst: Endpoint(GUEST_EP),
        dst_offset: 0,
        len: 262144,
    };
    host.vcopy(Endpoint(HOST_EP), push, secs(a, 20))
        .unwrap_or_else(|e| panic!("push: {e}\n{}", console(&vm)));
    host.engine
        .set_buffer(Endpoint(HOST_EP), vec![0; 262144])
        .expect("host buffer");
    let pull = VcopyRequest {
        src: Endpoint(GUEST_EP),
        dst: Endpoint(HOST_EP),
        ..push
    };
    host.vcopy(Endpoint(HOST_EP), pull, secs(a, 20))
        .unwrap_or_else(|e| panic!("pull: {e}\n{}", console(&vm)));
    assert!(
        host.engine.buffer(Endpoint(HOST_EP)) == Some(&data[..]),
        "q35 vcopy round trip differs"
    );
}

#[test]
fn send_and_notify_reach_the_echo_task() {
    let _g = exclusive();
    let a = accel();
    let dir = TempDir::new().expect("scratch dir");
    let Echo {
        mut vm, mut host, ..
    } = boot_echo(&dir, a, MachineType::Microvm, 16, &[]);
    let (src, dst) = (Endpoint(HOST_EP), Endpoint(GUEST_EP));
    let t = secs(a, 2);
    for i in 0..10u32 {
        let now = host.now();
        host.engine
            .send(now, src, dst, Message::new(i), Some(t))
            .unwrap_or_else(|e| panic!("send {i}: {e:?}"));
        match host.wait_done(src, t + Duration::from_millis(100)) {
            Ok(Completion::Sent) => {}
            other => panic!("send {i}: expected Sent, got {other:?}"),
        }
    }
    let now = host.now();
    host.engine
        .notify(now, src, dst)
        .unwrap_or_else(|e| panic!("notify: {e:?}"));
    // The notification is delivered when the engine sees it acknowledged; then a sendrec
    // shows the echo task is still serving.
    let r = host
        .sendrec(src, dst, Message::new(99), t)
        .unwrap_or_else(|e| panic!("sendrec after send/notify: {e}"));
    assert_eq!(r.mtype, 99);
    // 10 sends, 1 notification and 1 sendrec received (the notification counted with the
    // messages, or on its own), 1 reply.
    let c = wait_counters(
        &mut vm,
        secs(a, 5),
        "with 10 sends + 1 notification + 1 sendrec received and 1 reply",
        |c| {
            c.echo_replied >= 1
                && (c.echo_received >= 12 || (c.echo_received >= 11 && c.notify_received >= 1))
        },
    );
    assert_eq!(c.echo_replied, 1, "replies: {c:?}");
    assert!(
        c.echo_received == 12 || (c.echo_received == 11 && c.notify_received == 1),
        "received: {c:?}"
    );
}

// ---- The web server through the publish NIC (on a publish gateway, as the node runs it). ----

/// A web guest (http only) whose publish NIC is on a publish gateway carrying a free host port
/// ([`Published::port`]) to guest port 80, with `settings` (`http_*=`); waits for its Ready
/// record. The gateway takes its default 64 guest connections at once, whatever `http_slots=`
/// says, so that these tests see the guest's own handling of full slots.
fn boot_web(dir: &TempDir, a: Accel, settings: &[&str]) -> (Machine, Published) {
    let mut cfg = config(&[], &[Service::Http], settings);
    cfg.publish = ip("10.0.2.15/24", Some([10, 0, 2, 2]));
    let mut spec = vos(dir, "web", MachineType::Microvm, a, Kernel::Config(cfg));
    let gw = Published::start(&dir.join("pub.sock"), 80);
    spec.nics.push(gw.nic(nic_mac(0)));
    let mut vm = start(&spec);
    ready(&mut vm, a);
    (vm, gw)
}

/// 200 clients at once on a web guest with its default slots (64, and 4 spare listeners), through
/// the publish gateway with the node's defaults: every one is accepted (the kernel's full
/// backlog), none is reset, and every request is answered 200 with the whole 64 KiB page; the
/// gateway lets at most 64 at a time through to the guest and queues the rest.
#[test]
fn two_hundred_clients_at_once_through_the_publish_gateway() {
    let _g = exclusive();
    let a = accel();
    let dir = TempDir::new().expect("scratch dir");
    let (_vm, gw) = boot_web(&dir, a, &[]);
    let port = gw.port;
    let n = 200;
    let t = secs(a, 30);
    let go = std::sync::Arc::new(std::sync::Barrier::new(n));
    let t0 = Instant::now();
    let clients: Vec<_> = (0..n)
        .map(|i| {
            let go = go.clone();
            std::thread::spawn(move || {
                go.wait();
                let r = exchange(port, b"GET /big HTTP/1.1\r\nConnection: close\r\n\r\n", t)
                    .map_err(|e| format!("client {i}: {e}"))?;
                if r.status != 200 || r.body.len() != 65536 {
                    return Err(format!(
                        "client {i}: status {} with {} bytes: {}",
                        r.status,
                        r.body.len(),
                        r.head
                    ));
                }
                Ok(())
            })
        })
        .collect();
    let failed: Vec<String> = clients
        .into_iter()
        .filter_map(|c| c.join().expect("client thread").err())
        .collect();
    let took = t0.elapsed();
    assert!(
        failed.is_empty(),
        "{} of {n} clients failed, e.g. {:?}; gateway {:?}",
        failed.len(),
        &failed[..failed.len().min(5)],
        gw.counters()
    );
    let deadline = Instant::now() + secs(a, 5);
    let c = loop {
        let c = gw.counters();
        if c.active == 0 || Instant::now() > deadline {
            break c;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    eprintln!(
        "qemu-tests: {n} concurrent GETs of 64 KiB through the publish gateway in {took:?} \
         ({:.0} requests/s, {:.1} MiB/s); gateway {c:?}",
        n as f64 / took.as_secs_f64(),
        (n * 65536) as f64 / (1 << 20) as f64 / took.as_secs_f64()
    );
    assert_eq!(
        (
            c.accepted,
            c.connected,
            c.overflow,
            c.timed_out,
            c.reset_by_guest
        ),
        (n as u64, n as u64, 0, 0, 0),
        "{c:?}"
    );
}

/// A parsed HTTP response.
struct Resp {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Resp {
    /// The value of header field `name` (case-insensitive), if present.
    fn field(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// Decodes a chunked body.
fn unchunk(mut b: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let nl = b
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("chunk size line without CRLF")?;
        let size = std::str::from_utf8(&b[..nl]).map_err(|e| e.to_string())?;
        let size = usize::from_str_radix(size.split(';').next().unwrap_or(""), 16)
            .map_err(|e| format!("chunk size '{size}': {e}"))?;
        b = &b[nl + 2..];
        if size == 0 {
            return Ok(out);
        }
        if b.len() < size + 2 {
            return Err(format!("chunk of {size} bytes cut off"));
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

/// Parses one response from `raw` (its body delimited by Content-Length, chunked, or the end;
/// none after a HEAD request, `raw` starting with a response to HEAD).
fn parse_resp(raw: &[u8]) -> Result<Resp, String> {
    parse_resp_to(raw, false)
}

fn parse_resp_to(raw: &[u8], head_request: bool) -> Result<Resp, String> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| format!("no response head in {:?}", String::from_utf8_lossy(raw)))?;
    let head = String::from_utf8(raw[..end].to_vec()).map_err(|e| e.to_string())?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status in '{head}'"))?;
    let mut r = Resp {
        status,
        head,
        body: Vec::new(),
    };
    let rest = &raw[end + 4..];
    r.body = if head_request {
        rest.to_vec()
    } else if r.field("transfer-encoding") == Some("chunked") {
        unchunk(rest)?
    } else if let Some(n) = r.field("content-length") {
        let n: usize = n
            .parse()
            .map_err(|e| format!("Content-Length '{n}': {e}"))?;
        rest.get(..n)
            .ok_or_else(|| format!("body cut off: {} of {n} bytes", rest.len()))?
            .to_vec()
    } else {
        rest.to_vec()
    };
    Ok(r)
}

/// Sends `req` (the client closes nothing; the request should say `Connection: close`), reads
/// to the end and parses the response.
fn exchange(port: u16, req: &[u8], t: Duration) -> Result<Resp, String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(t)).map_err(|e| e.to_string())?;
    // A server that refuses early may close before all is written; the response still counts.
    let _ = s.write_all(req);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    parse_resp_to(&out, req.starts_with(b"HEAD "))
}

/// Reads from `s` until `n` bytes or the end; what was read.
fn read_some(s: &mut TcpStream, t: Duration) -> Vec<u8> {
    s.set_read_timeout(Some(t)).expect("set a read timeout");
    let mut out = Vec::new();
    let mut b = [0u8; 4096];
    while let Ok(n) = s.read(&mut b) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&b[..n]);
    }
    out
}

/// Whether the server closed `s` within `t` (EOF or reset, with nothing or a response read).
fn closed_within(s: &mut TcpStream, t: Duration) -> bool {
    s.set_read_timeout(Some(t)).expect("set a read timeout");
    let mut b = [0u8; 4096];
    loop {
        match s.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                return false
            }
            Err(_) => return true,
        }
    }
}

fn connect(port: u16) -> TcpStream {
    TcpStream::connect(("127.0.0.1", port)).expect("connect to the published port")
}

/// Idle and half-finished clients do not stop the server: a GET answers within a second while
/// 16 idle connections are open; a body that never comes is answered 408 after `http_body_ms`,
/// a head that never ends after `http_head_ms`; idle connections are closed after `http_idle_ms`.
#[test]
fn http_idle_and_slow_clients_time_out() {
    let _g = exclusive();
    let a = accel();
    let dir = TempDir::new().expect("scratch dir");
    let (mut vm, gw) = boot_web(
        &dir,
        a,
        &[
            "http_idle_ms=3000",
            "http_head_ms=1000",
            "http_body_ms=1000",
        ],
    );
    let port = gw.port;
    let t = secs(a, 5);
    // A client that asks for 64 KiB and reads none of it holds only its own slot.
    let mut stalled = connect(port);
    stalled
        .write_all(b"GET /big HTTP/1.1\r\n\r\nGET /big HTTP/1.1\r\n\r\nGET /big HTTP/1.1\r\n\r\n")
        .expect("write three GETs");
    std::thread::sleep(Duration::from_millis(200));
    // 16 idle connections, each accepted by the guest (a first GET on it answers).
    let mut idle: Vec<TcpStream> = Vec::new();
    for i in 0..16 {
        let mut s = connect(port);
        if i % 4 == 0 {
            s.write_all(b"GET /hello.txt HTTP/1.1\r\n\r\n")
                .expect("write a GET");
            let got = read_some(&mut s, Duration::from_millis(300));
            assert!(
                String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200 OK"),
                "keep-alive GET on idle connection {i}: {:?}",
                String::from_utf8_lossy(&got)
            );
        }
        idle.push(s);
    }
    // The GET is timed from its connect (the publish gateway accepts at once, with the kernel's
    // full backlog, and opens its guest connection right away: 17 is below its 64).
    let t0 = Instant::now();
    let r = exchange(
        port,
        b"GET /hello.txt HTTP/1.1\r\nConnection: close\r\n\r\n",
        t,
    )
    .unwrap_or_else(|e| panic!("GET with 16 idle connections open: {e}"));
    let took = t0.elapsed();
    assert_eq!(
        (r.status, &r.body[..]),
        (200, &b"hello from dvs\n"[..]),
        "{}",
        r.head
    );
    assert!(
        took < secs(a, 1),
        "GET with 16 idle connections took {took:?}"
    );
    // Content-Length: 100 and 10 bytes: 408 after ~1 s (body_ms), then closed.
    let mut s = connect(port);
    let t0 = Instant::now();
    s.write_all(b"PUT /slow.txt HTTP/1.1\r\nContent-Length: 100\r\n\r\n0123456789")
        .expect("write a short body");
    let got = read_some(&mut s, secs(a, 4));
    let took = t0.elapsed();
    let r = parse_resp(&got).unwrap_or_else(|e| panic!("408 response: {e}"));
    assert_eq!(r.status, 408, "body that never comes: {}", r.head);
    assert_eq!(r.field("connection"), Some("close"), "{}", r.head);
    assert!(
        took >= Duration::from_millis(900) && took < secs(a, 3),
        "408 after {took:?} (http_body_ms=1000)"
    );
    // The cut-off upload left nothing behind.
    let r = exchange(
        port,
        b"GET /slow.txt HTTP/1.1\r\nConnection: close\r\n\r\n",
        t,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        r.status, 404,
        "a timed-out upload must not be stored: {}",
        r.head
    );
    // A head that never ends: 408 after ~1 s (head_ms).
    let mut s = connect(port);
    s.write_all(b"GET /hello.txt HTTP/1.1\r\nHost: x\r\n")
        .expect("write half a head");
    let got = read_some(&mut s, secs(a, 4));
    let r = parse_resp(&got).unwrap_or_else(|e| panic!("408 response: {e}"));
    assert_eq!(r.status, 408, "head that never ends: {}", r.head);
    // The idle connections are closed by the idle timeout (3 s).
    let t0 = Instant::now();
    for (i, s) in idle.iter_mut().enumerate() {
        assert!(
            closed_within(s, secs(a, 6)),
            "idle connection {i} still open {:?} after the test's start of waiting",
            t0.elapsed()
        );
    }
    assert!(
        closed_within(&mut stalled, secs(a, 6)),
        "the client that reads nothing should be reset after http_idle_ms"
    );
    wait_counters(&mut vm, secs(a, 5), "with http_timeouts >= 19", |c| {
        c.http_timeouts >= 19
    });
}

/// With every slot taken, a new client is still accepted: the oldest idle connection is closed
/// for it; with every slot inside a request, the newcomer is answered 503.
#[test]
fn http_full_slots_make_room_or_answer_503() {
    let _g = exclusive();
    let a = accel();
    let dir = TempDir::new().expect("scratch dir");
    let (mut vm, gw) = boot_web(&dir, a, &["http_slots=4", "http_head_ms=4000"]);
    let port = gw.port;
    let t = secs(a, 5);
    // 8 idle connections on 4 slots: each is served as it comes, the older ones make room.
    let mut idle = Vec::new();
    for i in 0..8 {
        let mut s = connect(port);
        s.write_all(b"GET /hello.txt HTTP/1.1\r\n\r\n")
            .expect("write a GET");
        let got = read_some(&mut s, Duration::from_millis(300));
        assert!(
            String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200 OK"),
            "GET on connection {i} with the slots full: {:?}",
            String::from_utf8_lossy(&got)
        );
        idle.push(s);
    }
    let r = exchange(
        port,
        b"GET /hello.txt HTTP/1.1\r\nConnection: close\r\n\r\n",
        t,
    )
    .unwrap_or_else(|e| panic!("GET with 8 idle connections on 4 slots: {e}"));
    assert_eq!(r.status, 200, "{}", r.head);
    assert!(
        closed_within(&mut idle[0], secs(a, 1)),
        "the oldest idle connection should have been closed to make room"
    );
    let c = wait_counters(&mut vm, secs(a, 5), "with http_evicted >= 4", |c| {
        c.http_evicted >= 4
    });
    assert_eq!(c.http_busy, 0, "{c:?}");
    drop(idle);
    std::thread::sleep(Duration::from_millis(300));
    // 4 clients inside a request (half a head each), then a fifth: 503.
    let mut busy = Vec::new();
    for _ in 0..4 {
        let mut s = connect(port);
        s.write_all(b"GET /hello.txt HTTP/1.1\r\n")
            .expect("write half a head");
        busy.push(s);
        std::thread::sleep(Duration::from_millis(50));
    }
    let r = exchange(
        port,
        b"GET /hello.txt HTTP/1.1\r\nConnection: close\r\n\r\n",
        t,
    )
    .unwrap_or_else(|e| panic!("GET with every slot busy: {e}"));
    assert_eq!(r.status, 503, "{}", r.head);
    assert_eq!(r.field("retry-after"), Some("1"), "{}", r.head);
    // The busy ones finish normally.
    for (i, s) in busy.iter_mut().enumerate() {
        s.write_all(b"Connection: close\r\n\r\n")
            .expect("finish the head");
        let r = parse_resp(&read_some(s, t)).unwrap_or_else(|e| panic!("busy client {i}: {e}"));
        assert_eq!(r.status, 200, "busy client {i}: {}", r.head);
    }
    wait_counters(&mut vm, secs(a, 5), "with http_busy >= 1", |c| {
        c.http_busy >= 1
    });
}

/// Malformed, oversized and traversing requests are refused with the right status.
#[test]
fn http_refuses_bad_requests() {
    let _g = exclusive();
    let a = accel();
    let dir = TempDir::new().expect("scratch dir");
    let (mut vm, gw) = boot_web(&dir, a, &[]);
    let port = gw.port;
    let t = secs(a, 5);
    let mut big = b"GET /hello.txt HTTP/1.1\r\nX-Big: ".to_vec();
    big.resize(big.len() + 64 * 1024, b'a');
    big.extend_from_slice(b"\r\nConnection: close\r\n\r\n");
    let r = exchange(port, &big, t).unwrap_or_else(|e| panic!("64 KiB header: {e}"));
    assert_eq!(r.status, 431, "64 KiB header: {}", r.head);
    let cases: &[(&str, u16)] = &[
        ("garbage\r\n\r\n", 400),
        ("GET  /hello.txt HTTP/1.1\r\n\r\n", 400),
        ("GET /hello.txt\r\n\r\n", 400),
        ("GET /hello.txt HTTP/1.1 x\r\n\r\n", 400),
        ("GET /hello.txt HTTX/1.1\r\n\r\n", 400),
        ("GET /hello.txt HTTP/2.0\r\n\r\n", 505),
        ("GET /../etc/passwd HTTP/1.1\r\n\r\n", 400),
        ("GET /%2e%2e/x HTTP/1.1\r\n\r\n", 400),
        ("GET /a/%2E%2E/hello.txt HTTP/1.1\r\n\r\n", 400),
        ("GET /a%2fb HTTP/1.1\r\n\r\n", 400),
        ("GET /a%5cb HTTP/1.1\r\n\r\n", 400),
        ("GET /a//b HTTP/1.1\r\n\r\n", 400),
        ("GET /%zz HTTP/1.1\r\n\r\n", 400),
        ("GET http://10.0.2.15/hello.txt HTTP/1.1\r\n\r\n", 400),
        ("GET //etc/passwd HTTP/1.1\r\n\r\n", 400),
        ("GET * HTTP/1.1\r\n\r\n", 400),
        ("GET /hello.txt HTTP/1.1\r\nNo colon here\r\n\r\n", 400),
        ("GET /hello.txt HTTP/1.1\r\nX: a\r\n folded\r\n\r\n", 400),
        (
            "PUT /x HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            400,
        ),
        ("PUT /x HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\n", 400),
        ("PUT /x HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
        (
            "PUT /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            400,
        ),
        ("PUT /x HTTP/1.1\r\n\r\n", 411),
        ("POST /hello.txt HTTP/1.1\r\n\r\n", 405),
        ("BREW /pot HTTP/1.1\r\n\r\n", 501),
        ("GET /hello.txt HTTP/1.1\r\nExpect: tea\r\n\r\n", 417),
        ("GET /nope.txt HTTP/1.1\r\nConnection: close\r\n\r\n", 404),
    ];
    for (req, want) in cases {
        let r = exchange(port, req.as_bytes(), t).unwrap_or_else(|e| panic!("{req:?}: {e}"));
        assert_eq!(r.status, *want, "{req:?} answered: {}", r.head);
        if *want == 405 {
            assert_eq!(
                r.field("allow"),
                Some("GET, HEAD, PUT, DELETE"),
                "{}",
                r.head
            );
        }
    }
    // After all that, a normal client is served.
    let r = exchange(port, b"GET /hello.txt HTTP/1.0\r\n\r\n", t).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        (r.status, &r.body[..]),
        (200, &b"hello from dvs\n"[..]),
        "{}",
        r.head
    );
    wait_counters(&mut vm, secs(a, 5), "with http_bad >= 20", |c| {
        c.http_bad >= 20
    });
}

/// PUT (Content-Length, chunked, with 100-continue), GET byte-exact, Range, HEAD, the listing,
/// DELETE, and the size limits.
#[test]
fn http_put_get_range_delete_and_listing() {
    let _g = exclusive();
    let a = accel();
    let dir = TempDir::new().expect("scratch dir");
    let (_vm, gw) = boot_web(&dir, a, &[]);
    let port = gw.port;
    let t = secs(a, 10);
    let data: Vec<u8> = (0..200 * 1024u32)
        .map(|i| (i * 7 + i / 251) as u8)
        .collect();
    let mut req = format!(
        "PUT /data.bin HTTP/1.1\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        data.len()
    )
    .into_bytes();
    req.extend_from_slice(&data);
    let r = exchange(port, &req, t).unwrap_or_else(|e| panic!("PUT 200 KiB: {e}"));
    assert_eq!(r.status, 201, "PUT 200 KiB: {}", r.head);
    let r = exchange(
        port,
        b"GET /data.bin HTTP/1.1\r\nConnection: close\r\n\r\n",
        t,
    )
    .unwrap_or_else(|e| panic!("GET 200 KiB: {e}"));
    assert_eq!(r.status, 200, "{}", r.head);
    assert!(
        r.body == data,
        "GET /data.bin differs: {} bytes back",
        r.body.len()
    );
    // Chunked, in odd-sized chunks, with an extension and a trailer, after 100-continue.
    let chunked: Vec<u8> = (0..300 * 1024u32).map(|i| (i % 253) as u8).collect();
    let mut s = connect(port);
    s.write_all(
        b"PUT /dir/chunked.txt HTTP/1.1\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n",
    )
    .expect("write the head");
    let cont = read_some(&mut s, Duration::from_millis(500));
    assert!(
        cont.starts_with(b"HTTP/1.1 100 Continue\r\n\r\n"),
        "100 Continue: {:?}",
        String::from_utf8_lossy(&cont)
    );
    let mut off = 0;
    let mut n = 1;
    while off < chunked.len() {
        let len = n.min(chunked.len() - off);
        s.write_all(format!("{len:x};ext=1\r\n").as_bytes())
            .expect("write a chunk size");
        s.write_all(&chunked[off..off + len])
            .expect("write a chunk");
        s.write_all(b"\r\n").expect("write a chunk end");
        off += len;
        n = n * 3 + 17;
    }
    s.write_all(b"0\r\nX-Trailer: yes\r\n\r\n")
        .expect("write the last chunk");
    let r = parse_resp(&read_some(&mut s, t)).unwrap_or_else(|e| panic!("chunked PUT: {e}"));
    assert_eq!(r.status, 201, "chunked PUT: {}", r.head);
    let r = exchange(
        port,
        b"GET /dir/chunked.txt HTTP/1.1\r\nConnection: close\r\n\r\n",
        t,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status, 200, "{}", r.head);
    assert!(
        r.body == chunked,
        "chunked file differs: {} bytes back",
        r.body.len()
    );
    // Range, suffix range, open range, unsatisfiable range, HEAD.
    for (range, a0, b0) in [
        ("bytes=1000-1999", 1000usize, 1999usize),
        ("bytes=-100", data.len() - 100, data.len() - 1),
        ("bytes=204000-", 204000, data.len() - 1),
        ("bytes=0-999999999", 0, data.len() - 1),
    ] {
        let req = format!("GET /data.bin HTTP/1.1\r\nRange: {range}\r\nConnection: close\r\n\r\n");
        let r = exchange(port, req.as_bytes(), t).unwrap_or_else(|e| panic!("{range}: {e}"));
        assert_eq!(r.status, 206, "{range}: {}", r.head);
        let want = format!("bytes {a0}-{b0}/{}", data.len());
        assert_eq!(
            r.field("content-range"),
            Some(want.as_str()),
            "{range}: {}",
            r.head
        );
        assert!(
            r.body == data[a0..=b0],
            "{range}: wrong slice ({} bytes)",
            r.body.len()
        );
    }
    let r = exchange(
        port,
        b"GET /data.bin HTTP/1.1\r\nRange: bytes=999999-\r\nConnection: close\r\n\r\n",
        t,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status, 416, "{}", r.head);
    assert_eq!(
        r.field("content-range"),
        Some("bytes */204800"),
        "{}",
        r.head
    );
    let r = exchange(
        port,
        b"HEAD /data.bin HTTP/1.1\r\nConnection: close\r\n\r\n",
        t,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        (r.status, r.field("content-length"), r.body.len()),
        (200, Some("204800"), 0),
        "{}",
        r.head
    );
    // Replacing answers 200; the listing shows the files.
    let r = exchange(
        port,
        b"PUT /hello.txt HTTP/1.1\r\nContent-Length: 6\r\nConnection: close\r\n\r\nhello\n",
        t,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status, 200, "replacing PUT: {}", r.head);
    for req in [
        &b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n"[..],
        &b"GET / HTTP/1.0\r\n\r\n"[..],
    ] {
        let r = exchange(port, req, t).unwrap_or_else(|e| panic!("listing: {e}"));
        let html = String::from_utf8_lossy(&r.body);
        assert_eq!(r.status, 200, "{}", r.head);
        for f in [
            "/data.bin\">/data.bin</a> 204800",
            "/dir/chunked.txt",
            "/hello.txt\">/hello.txt</a> 6",
            "/big",
        ] {
            assert!(html.contains(f), "listing lacks {f}: {html}");
        }
    }
    let r = exchange(port, b"GET /dir/ HTTP/1.1\r\nConnection: close\r\n\r\n", t)
        .unwrap_or_else(|e| panic!("{e}"));
    let html = String::from_utf8_lossy(&r.body);
    assert!(
        html.contains("/dir/chunked.txt") && !html.contains("/data.bin"),
        "{html}"
    );
    // DELETE, then 404, then 404 again for the DELETE.
    let r = exchange(
        port,
        b"DELETE /data.bin HTTP/1.1\r\nConnection: close\r\n\r\n",
        t,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status, 204, "DELETE: {}", r.head);
    for req in [
        &b"GET /data.bin HTTP/1.1\r\nConnection: close\r\n\r\n"[..],
        &b"DELETE /data.bin HTTP/1.1\r\nConnection: close\r\n\r\n"[..],
    ] {
        let r = exchange(port, req, t).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.status, 404, "after DELETE: {}", r.head);
    }
    let r = exchange(port, b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n", t)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        !String::from_utf8_lossy(&r.body).contains("/data.bin"),
        "listing after DELETE"
    );
    // Over 1 MiB: 413 up front (Content-Length) and mid-stream (chunked); nothing stored.
    let r = exchange(
        port,
        b"PUT /huge HTTP/1.1\r\nContent-Length: 2000000\r\nConnection: close\r\n\r\n",
        t,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status, 413, "{}", r.head);
    let mut req =
        b"PUT /huge HTTP/1.1\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_vec();
    for _ in 0..40 {
        req.extend_from_slice(b"8000\r\n");
        req.extend_from_slice(&[b'x'; 0x8000]);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    let r = exchange(port, &req, t).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status, 413, "{}", r.head);
    let r = exchange(port, b"GET /huge HTTP/1.1\r\nConnection: close\r\n\r\n", t)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        r.status, 404,
        "a refused upload must not be stored: {}",
        r.head
    );
    // A full store answers 507; DELETE gives the space back (failed uploads keep none of it).
    let big: Vec<u8> = vec![b'f'; 1000 * 1024];
    let put = |name: &str| {
        let mut req = format!(
            "PUT /{name} HTTP/1.1\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            big.len()
        )
        .into_bytes();
        req.extend_from_slice(&big);
        exchange(port, &req, t)
            .unwrap_or_else(|e| panic!("PUT /{name}: {e}"))
            .status
    };
    let mut stored = 0;
    while put(&format!("fill{stored}")) == 201 {
        stored += 1;
        assert!(
            stored < 12,
            "an 8 MiB store took {stored} files of 1000 KiB"
        );
    }
    assert!(stored >= 6, "only {stored} files of 1000 KiB fit");
    assert_eq!(put("fill-again"), 507, "a second refusal");
    for i in 0..stored {
        let req = format!("DELETE /fill{i} HTTP/1.1\r\nConnection: close\r\n\r\n");
        let r = exchange(port, req.as_bytes(), t).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.status, 204, "DELETE /fill{i}: {}", r.head);
    }
    for i in 0..stored {
        assert_eq!(put(&format!("refill{i}")), 201, "refill {i} of {stored}");
    }
    for i in 0..stored {
        let req = format!("DELETE /refill{i} HTTP/1.1\r\nConnection: close\r\n\r\n");
        exchange(port, req.as_bytes(), t).unwrap_or_else(|e| panic!("{e}"));
    }
    // Keep-alive with pipelining: PUT then GET on one connection.
    let mut s = connect(port);
    s.write_all(b"PUT /k.txt HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET /k.txt HTTP/1.1\r\nConnection: close\r\n\r\n")
        .expect("write two requests");
    let out = read_some(&mut s, t);
    let text = String::from_utf8_lossy(&out);
    assert!(
        text.starts_with("HTTP/1.1 201")
            && text.contains("HTTP/1.1 200 OK")
            && text.ends_with("abc"),
        "pipelined PUT + GET: {text}"
    );
}
