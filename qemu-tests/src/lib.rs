//! Host side of the VOS tests and benchmark: boots `images/vos.elf` under QEMU (KVM when
//! `/dev/kvm` works, else TCG), reads its console, and talks M3-IPC to it through a
//! unix-socket datagram netdev with a harness built on m3ipc-core's `Engine`.
//!
//! Every QEMU process is owned by a [`Vm`], which kills and reaps it on drop.

use m3ipc_core::engine::{Completion, Engine, EngineConfig, Event};
use m3ipc_core::wire::ethernet::{EthernetHeader, BROADCAST, ETH_HEADER_LEN};
use m3ipc_core::wire::{ETHERTYPE_M3IPC, MAX_FRAME};
use m3ipc_core::{DcId, Endpoint, ErrorCode, Instant as IpcInstant, Message};
use std::io::{BufRead, BufReader, Read};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

/// The repository root (the parent of this crate).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".."))
}

fn build_images() -> Result<(), String> {
    let status = Command::new("bash")
        .arg(repo_root().join("images/build.sh"))
        .status()
        .map_err(|e| format!("cannot run images/build.sh: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("images/build.sh failed: {status}"))
    }
}

/// `images/vos.elf` (or `$DVS_IMAGE`), built with `images/build.sh` once per process if missing.
pub fn image() -> PathBuf {
    if let Ok(p) = std::env::var("DVS_IMAGE") {
        return PathBuf::from(p);
    }
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    let path = repo_root().join("images/vos.elf");
    if !path.exists() {
        if let Err(e) = BUILT.get_or_init(build_images) {
            panic!("{e}");
        }
    }
    path
}

/// `images/floor.elf`: the PVH ELF that exits at once (boot-time floor).
pub fn floor_image() -> PathBuf {
    let path = repo_root().join("images/floor.elf");
    if !path.exists() {
        let _ = build_images();
    }
    path
}

/// Serialises the tests of one process: each boots QEMU and the machine has 2 cores.
pub fn exclusive() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

/// The accelerator QEMU runs with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accel {
    /// Hardware virtualisation through /dev/kvm.
    Kvm,
    /// QEMU's translator.
    Tcg,
}

impl Accel {
    /// KVM if `/dev/kvm` opens read-write, else TCG; `DVS_ACCEL=kvm|tcg` overrides.
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

    /// QEMU arguments selecting this accelerator. Under KVM the host CPU model is used without
    /// `arch-capabilities` (nested KVM refuses to set that MSR).
    pub fn args(self) -> Vec<String> {
        match self {
            Accel::Kvm => vec![
                "-accel".into(),
                "kvm".into(),
                "-cpu".into(),
                "host,-arch-capabilities".into(),
            ],
            Accel::Tcg => vec!["-accel".into(), "tcg".into()],
        }
    }

    /// Name for reports.
    pub fn name(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }

    /// Timeout for an operation that takes `base` under KVM (TCG gets three times as long).
    pub fn timeout(self, base: Duration) -> Duration {
        match self {
            Accel::Kvm => base,
            Accel::Tcg => base * 3,
        }
    }
}

/// The QEMU machine type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Machine {
    /// `-M microvm,acpi=off`: virtio-mmio, devices announced on the kernel command line.
    Microvm,
    /// `-M q35` with qboot as firmware (SeaBIOS takes seconds under nested KVM); PCI BARs are
    /// assigned by the kernel.
    Q35,
}

impl Machine {
    /// Name for reports.
    pub fn name(self) -> &'static str {
        match self {
            Machine::Microvm => "microvm",
            Machine::Q35 => "q35",
        }
    }
}

/// A network backend for one guest NIC.
#[derive(Clone, Debug)]
pub enum NicBackend {
    /// QEMU user networking, optionally forwarding a host port to guest TCP port 80 and
    /// the same host UDP port to guest UDP port 7.
    User {
        /// Host port forwarded to the guest's TCP port 80 (and UDP port 7).
        hostfwd: Option<u16>,
    },
    /// A unix datagram socket pair: QEMU binds `guest`, sends to `host`.
    Dgram {
        /// Path QEMU binds.
        guest: PathBuf,
        /// Path the host harness binds.
        host: PathBuf,
    },
}

/// What to boot.
#[derive(Clone, Debug)]
pub struct VmSpec {
    /// Machine type.
    pub machine: Machine,
    /// Accelerator.
    pub accel: Accel,
    /// Guest RAM in MiB.
    pub mem_mib: u32,
    /// The ELF to boot.
    pub kernel: PathBuf,
    /// Kernel command line.
    pub cmdline: String,
    /// NICs in order (the first is the fabric NIC, the second the publish NIC).
    pub nics: Vec<NicBackend>,
}

impl VmSpec {
    /// A spec for the VOS image with no NIC.
    pub fn new(machine: Machine, accel: Accel, cmdline: &str) -> VmSpec {
        VmSpec {
            machine,
            accel,
            mem_mib: 16,
            kernel: image(),
            cmdline: cmdline.into(),
            nics: Vec::new(),
        }
    }

    /// The QEMU command line.
    pub fn args(&self) -> Vec<String> {
        let mut a: Vec<String> = Vec::new();
        let s = |v: &str| v.to_string();
        match self.machine {
            Machine::Microvm => a.extend([s("-M"), s("microvm,acpi=off")]),
            Machine::Q35 => a.extend([s("-M"), s("q35"), s("-bios"), s("qboot.rom")]),
        }
        a.extend(self.accel.args());
        a.extend([
            s("-m"),
            format!("{}M", self.mem_mib),
            s("-smp"),
            s("1"),
            s("-nodefaults"),
            s("-no-user-config"),
            s("-display"),
            s("none"),
            s("-serial"),
            s("stdio"),
            s("-no-reboot"),
            s("-device"),
            s("isa-debug-exit,iobase=0xf4,iosize=4"),
            s("-kernel"),
            self.kernel.display().to_string(),
            s("-append"),
            self.cmdline.clone(),
        ]);
        let dev = match self.machine {
            Machine::Microvm => "virtio-net-device",
            Machine::Q35 => "virtio-net-pci",
        };
        for (i, nic) in self.nics.iter().enumerate() {
            let netdev = match nic {
                NicBackend::User { hostfwd: Some(p) } => {
                    format!(
                        "user,id=n{i},hostfwd=tcp:127.0.0.1:{p}-:80,hostfwd=udp:127.0.0.1:{p}-:7"
                    )
                }
                NicBackend::User { hostfwd: None } => format!("user,id=n{i}"),
                NicBackend::Dgram { guest, host } => format!(
                    "dgram,id=n{i},local.type=unix,local.path={},remote.type=unix,remote.path={}",
                    guest.display(),
                    host.display()
                ),
            };
            a.extend([
                s("-netdev"),
                netdev,
                s("-device"),
                format!("{dev},netdev=n{i},mac=52:54:00:12:34:{:02x}", 0x10 + i),
            ]);
        }
        a
    }
}

type Lines = Arc<(Mutex<Vec<String>>, Condvar)>;

/// A running QEMU; killed and reaped on drop.
pub struct Vm {
    child: Child,
    lines: Lines,
    /// When QEMU was spawned.
    pub started: Instant,
    status: Option<ExitStatus>,
}

fn reader(stream: impl Read + Send + 'static, lines: Lines, prefix: &'static str) {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            let (m, cv) = &*lines;
            m.lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(format!("{prefix}{}", line.trim_end_matches('\r')));
            cv.notify_all();
        }
    });
}

impl Vm {
    /// Starts QEMU for `spec`.
    pub fn start(spec: &VmSpec) -> Vm {
        let mut child = Command::new("qemu-system-x86_64")
            .args(spec.args())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start qemu-system-x86_64: {e}"));
        let started = Instant::now();
        let lines: Lines = Arc::new((Mutex::new(Vec::new()), Condvar::new()));
        if let Some(out) = child.stdout.take() {
            reader(out, lines.clone(), "");
        }
        if let Some(err) = child.stderr.take() {
            reader(err, lines.clone(), "qemu: ");
        }
        Vm {
            child,
            lines,
            started,
            status: None,
        }
    }

    /// QEMU's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the console (and QEMU's stderr) printed so far.
    pub fn output(&self) -> String {
        self.lines
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .join("\n")
    }

    /// Waits for a console line containing `pat` that is the `nth` such line (0-based).
    pub fn wait_line_nth(
        &mut self,
        pat: &str,
        nth: usize,
        timeout: Duration,
    ) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        let (m, cv) = &*self.lines;
        let mut g = m.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(l) = g.iter().filter(|l| l.contains(pat)).nth(nth) {
                return Ok(l.clone());
            }
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            if self.status.is_none() {
                if let Ok(Some(st)) = self.child.try_wait() {
                    self.status = Some(st);
                }
            }
            let wait = (deadline - now).min(Duration::from_millis(20));
            g = cv
                .wait_timeout(g, wait)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        let out = g.join("\n");
        drop(g);
        Err(format!(
            "no console line with '{pat}' within {timeout:?} (qemu status {:?}); console:\n{out}",
            self.status
        ))
    }

    /// Waits for the first console line containing `pat`.
    pub fn wait_line(&mut self, pat: &str, timeout: Duration) -> Result<String, String> {
        self.wait_line_nth(pat, 0, timeout)
    }

    /// The number of console lines containing `pat` so far.
    pub fn count_lines(&self, pat: &str) -> usize {
        self.lines
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|l| l.contains(pat))
            .count()
    }

    /// Waits up to `timeout` for QEMU to exit; its status, or None if it still runs.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.status {
                return Some(s);
            }
            if let Ok(Some(s)) = self.child.try_wait() {
                self.status = Some(s);
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// CPU time (user + system) QEMU has used, in clock ticks (1/100 s), from /proc/PID/stat.
    pub fn cpu_ticks(&self) -> Result<u64, String> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid()))
            .map_err(|e| format!("read /proc/{}/stat: {e}", self.pid()))?;
        // Fields after the command name (which is in parentheses and may contain spaces).
        let rest = stat
            .rsplit_once(')')
            .map(|(_, r)| r)
            .ok_or("malformed /proc stat")?;
        let f: Vec<&str> = rest.split_whitespace().collect();
        // rest starts at field 3 (state); utime is field 14, stime field 15.
        let utime: u64 = f.get(11).and_then(|v| v.parse().ok()).ok_or("no utime")?;
        let stime: u64 = f.get(12).and_then(|v| v.parse().ok()).ok_or("no stime")?;
        Ok(utime + stime)
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if self.status.is_none() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// A fresh directory for sockets, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// Creates `$TMPDIR/dvs-qemu-<pid>-<n>`.
    pub fn new() -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "dvs-qemu-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap_or_else(|e| panic!("create {}: {e}", p.display()));
        TempDir(p)
    }
}

impl Default for TempDir {
    fn default() -> Self {
        TempDir::new()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The host end of the fabric NIC: an m3ipc-core engine on a unix datagram socket.
pub struct Harness {
    /// The engine (public for tests that inspect it).
    pub engine: Engine,
    sock: UnixDatagram,
    guest: PathBuf,
    origin: Instant,
    mac: [u8; 6],
    buf: Vec<u8>,
    /// Busy-poll the socket this long before blocking (0 = block at once).
    pub spin: Duration,
}

/// Host MAC used by the harness.
pub const HOST_MAC: [u8; 6] = [0x02, 0xd5, 0, 0, 0, 0x01];

impl Harness {
    /// Binds `host` (QEMU's remote path) for DC `dc`, holding `endpoints`; frames go to `guest`.
    pub fn new(dc: u16, endpoints: &[u32], host: &Path, guest: &Path) -> Harness {
        let sock =
            UnixDatagram::bind(host).unwrap_or_else(|e| panic!("bind {}: {e}", host.display()));
        let inc = (std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(1)) as u32;
        let mut engine = Engine::new(EngineConfig::new(DcId(dc), inc));
        for &e in endpoints {
            engine
                .bind(Endpoint(e))
                .unwrap_or_else(|err| panic!("bind endpoint {e}: {err:?}"));
        }
        Harness {
            engine,
            sock,
            guest: guest.to_path_buf(),
            origin: Instant::now(),
            mac: HOST_MAC,
            buf: vec![0; 65536],
            spin: Duration::ZERO,
        }
    }

    /// The harness clock.
    pub fn now(&self) -> IpcInstant {
        IpcInstant::from_micros(self.origin.elapsed().as_micros() as u64)
    }

    /// Sends one raw Ethernet frame to the guest (for malformed-input tests).
    pub fn send_raw(&self, frame: &[u8]) -> std::io::Result<usize> {
        self.sock.send_to(frame, &self.guest)
    }

    /// Receives one raw Ethernet frame from the guest, or None after `timeout`.
    pub fn recv_raw(&mut self, timeout: Duration) -> Option<Vec<u8>> {
        let _ = self
            .sock
            .set_read_timeout(Some(timeout.max(Duration::from_micros(50))));
        let n = self.sock.recv(&mut self.buf).ok()?;
        Some(self.buf[..n].to_vec())
    }

    /// Wraps an M3-IPC frame in Ethernet (broadcast destination) and sends it.
    pub fn send_m3(&self, m3: &[u8]) -> std::io::Result<usize> {
        let mut f = vec![0u8; ETH_HEADER_LEN + m3.len()];
        let h = EthernetHeader {
            dst: BROADCAST,
            src: self.mac,
            ethertype: ETHERTYPE_M3IPC,
        };
        h.emit(&mut f)
            .map_err(|e| std::io::Error::other(format!("{e:?}")))?;
        f[ETH_HEADER_LEN..].copy_from_slice(m3);
        self.send_raw(&f)
    }

    /// Hands the M3-IPC frame in `self.buf[..n]` (if it is one) to the engine.
    fn feed(&mut self, now: IpcInstant, n: usize) {
        if let Ok((_, m3)) = EthernetHeader::m3ipc_payload(&self.buf[..n]) {
            trace(self.origin, "rx", m3);
            self.engine.handle_frame(now, m3);
        }
    }

    fn flush(&mut self) {
        let now = self.now();
        let mut out = [0u8; ETH_HEADER_LEN + MAX_FRAME];
        let h = EthernetHeader {
            dst: BROADCAST,
            src: self.mac,
            ethertype: ETHERTYPE_M3IPC,
        };
        while let Some(n) = self.engine.poll_transmit(now, &mut out[ETH_HEADER_LEN..]) {
            trace(self.origin, "tx", &out[ETH_HEADER_LEN..ETH_HEADER_LEN + n]);
            if h.emit(&mut out).is_ok() {
                // The guest may not be up yet; the engine retransmits.
                let _ = self.sock.send_to(&out[..ETH_HEADER_LEN + n], &self.guest);
            }
        }
    }

    /// Drives the engine until `ep`'s call ends or `timeout` passes.
    pub fn wait_done(&mut self, ep: Endpoint, timeout: Duration) -> Result<Completion, String> {
        let deadline = Instant::now() + timeout;
        loop {
            while let Some(ev) = self.engine.poll_event() {
                if let Event::Done { ep: e, result } = ev {
                    if e == ep {
                        return result.map_err(|c: ErrorCode| {
                            format!("endpoint {}: call failed: {c:?}", ep.0)
                        });
                    }
                }
            }
            self.flush();
            let now = Instant::now();
            if now >= deadline {
                return Err(format!("endpoint {}: no answer within {timeout:?}", ep.0));
            }
            let mut wait = deadline - now;
            if let Some(t) = self.engine.poll_timeout() {
                let until =
                    Duration::from_micros(t.as_micros().saturating_sub(self.now().as_micros()));
                wait = wait.min(until);
            }
            if let Some(n) = self.recv_wait(wait) {
                let now = self.now();
                self.feed(now, n);
                // Drain whatever else is queued without blocking.
                let _ = self.sock.set_nonblocking(true);
                while let Ok(n) = self.sock.recv(&mut self.buf) {
                    self.feed(now, n);
                }
                let _ = self.sock.set_nonblocking(false);
            }
            let now = self.now();
            if self.engine.poll_timeout().is_some_and(|t| t <= now) {
                self.engine.handle_timeout(now);
            }
        }
    }

    /// Receives one datagram into `buf`, busy-polling for `spin` first, then blocking for the
    /// rest of `wait` (at least 50 µs).
    fn recv_wait(&mut self, wait: Duration) -> Option<usize> {
        if !self.spin.is_zero() {
            let _ = self.sock.set_nonblocking(true);
            let t0 = Instant::now();
            let limit = self.spin.min(wait);
            loop {
                if let Ok(n) = self.sock.recv(&mut self.buf) {
                    return Some(n);
                }
                if t0.elapsed() >= limit {
                    break;
                }
                std::hint::spin_loop();
            }
            let _ = self.sock.set_nonblocking(false);
        }
        let _ = self
            .sock
            .set_read_timeout(Some(wait.max(Duration::from_micros(50))));
        self.sock.recv(&mut self.buf).ok()
    }

    /// One sendrec from local `src` to `dst`.
    pub fn sendrec(
        &mut self,
        src: u32,
        dst: u32,
        msg: Message,
        timeout: Duration,
    ) -> Result<Message, String> {
        let now = self.now();
        self.engine
            .sendrec(now, Endpoint(src), Endpoint(dst), msg, Some(timeout))
            .map_err(|e| format!("sendrec {src}->{dst}: {e:?}"))?;
        match self.wait_done(Endpoint(src), timeout + Duration::from_millis(100))? {
            Completion::Replied(m) => Ok(m),
            other => Err(format!(
                "sendrec {src}->{dst}: unexpected completion {other:?}"
            )),
        }
    }

    /// A vcopy requested by local `requester`.
    #[allow(clippy::too_many_arguments)]
    pub fn vcopy(
        &mut self,
        requester: u32,
        src: u32,
        src_off: u64,
        dst: u32,
        dst_off: u64,
        len: u64,
        timeout: Duration,
    ) -> Result<u64, String> {
        let now = self.now();
        self.engine
            .vcopy(
                now,
                Endpoint(requester),
                Endpoint(src),
                src_off,
                Endpoint(dst),
                dst_off,
                len,
                Some(timeout),
            )
            .map_err(|e| format!("vcopy {src}->{dst} {len} bytes: {e:?}"))?;
        match self.wait_done(Endpoint(requester), timeout + Duration::from_millis(100))? {
            Completion::Copied { len } => Ok(len),
            other => Err(format!("vcopy: unexpected completion {other:?}")),
        }
    }
}

/// Parses `key=value` from a console line such as `dvs: stats bad_frames=3 ...`.
pub fn field(line: &str, key: &str) -> Option<u64> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
        .and_then(|v| v.parse().ok())
}

/// Internet checksum (RFC 1071) of `data`.
pub fn inet_checksum(data: &[u8]) -> u16 {
    let mut sum = 0u32;
    for c in data.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from_be_bytes([c[0], 0])
        };
        sum += w as u32;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An Ethernet frame carrying an ARP packet (`oper` 1 = request, 2 = reply).
pub fn arp_frame(
    oper: u16,
    sha: [u8; 6],
    spa: [u8; 4],
    tha: [u8; 6],
    tpa: [u8; 4],
    dst: [u8; 6],
) -> Vec<u8> {
    let mut f = Vec::with_capacity(42);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&sha);
    f.extend_from_slice(&0x0806u16.to_be_bytes());
    f.extend_from_slice(&[0, 1, 8, 0, 6, 4]);
    f.extend_from_slice(&oper.to_be_bytes());
    f.extend_from_slice(&sha);
    f.extend_from_slice(&spa);
    f.extend_from_slice(&tha);
    f.extend_from_slice(&tpa);
    f
}

/// An Ethernet frame carrying an ICMP echo request from `src` to `dst`.
pub fn icmp_echo_frame(
    (smac, src): ([u8; 6], [u8; 4]),
    (dmac, dst): ([u8; 6], [u8; 4]),
    id: u16,
    seq: u16,
    payload: &[u8],
) -> Vec<u8> {
    let mut icmp = vec![8u8, 0, 0, 0];
    icmp.extend_from_slice(&id.to_be_bytes());
    icmp.extend_from_slice(&seq.to_be_bytes());
    icmp.extend_from_slice(payload);
    let c = inet_checksum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let total = (20 + icmp.len()) as u16;
    let mut ip = vec![0x45u8, 0];
    ip.extend_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&[0, 1, 0x40, 0, 64, 1, 0, 0]);
    ip.extend_from_slice(&src);
    ip.extend_from_slice(&dst);
    let c = inet_checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let mut f = Vec::new();
    f.extend_from_slice(&dmac);
    f.extend_from_slice(&smac);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&icmp);
    f
}

/// With `DVS_TRACE` set, prints one line per M3-IPC frame the harness sends or receives.
fn trace(origin: Instant, dir: &str, m3: &[u8]) {
    if std::env::var_os("DVS_TRACE").is_none() {
        return;
    }
    if let Ok(f) = m3ipc_core::wire::FrameRepr::parse(m3) {
        eprintln!(
            "trace {:?} {dir} {:?} {}->{} seq={:#x} aux={} fl={} len={}",
            origin.elapsed(),
            f.kind,
            f.src.0,
            f.dst.0,
            f.seq,
            f.aux,
            f.flags,
            f.payload.len()
        );
    }
}
