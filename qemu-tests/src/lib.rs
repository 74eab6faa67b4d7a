//! Test-only glue for the VOS tests in `tests/vos.rs`: where the images are, one QEMU test at a
//! time, scratch directories, the raw frames (ARP, ICMP, UDP) the fabric and publish-NIC tests send,
//! and [`Published`]: the node's publish gateway (`dvs-publish`) for a test machine's publish NIC.
//!
//! Everything about starting a machine (the VM spec, QEMU's flags, the control channel, the
//! engine-over-a-port loop) is `dvs-instance`'s; nothing here knows a QEMU flag.

use dvs_instance::{Accel, Nic, NicBackend};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};

/// The repository root (the parent of this crate).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".."))
}

/// Runs `images/build.sh` once per process; its outcome.
fn build_images() -> &'static Result<(), String> {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    BUILT.get_or_init(|| {
        let status = Command::new("bash")
            .arg(repo_root().join("images/build.sh"))
            .status()
            .map_err(|e| format!("cannot run images/build.sh: {e}"))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("images/build.sh failed: {status}"))
        }
    })
}

/// `images/vos.elf` (or `$DVS_IMAGE`), built with `images/build.sh` if missing.
pub fn image() -> Result<PathBuf, String> {
    if let Ok(p) = std::env::var("DVS_IMAGE") {
        return Ok(PathBuf::from(p));
    }
    let path = repo_root().join("images/vos.elf");
    if !path.exists() {
        build_images().clone()?;
    }
    Ok(path)
}

/// `images/floor.elf`: the PVH ELF that exits at once (the boot-time floor), built if missing.
pub fn floor_image() -> Result<PathBuf, String> {
    let path = repo_root().join("images/floor.elf");
    if !path.exists() {
        build_images().clone()?;
    }
    Ok(path)
}

/// Serialises the tests of one process: each boots QEMU, and the machine has 2 cores.
pub fn exclusive() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

/// The accelerator to test with ([`Accel::detect`]: `DVS_ACCEL=kvm|tcg`, else KVM when
/// `/dev/kvm` opens), printed so that every test's output says which it used.
pub fn accel() -> Accel {
    let a = Accel::detect();
    eprintln!("qemu-tests: accelerator {}", a.name());
    a
}

/// A fresh directory for sockets, removed on drop.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// Creates `$TMPDIR/dvs-qemu-<pid>-<n>`.
    pub fn new() -> std::io::Result<TempDir> {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "dvs-qemu-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p)?;
        Ok(TempDir(p))
    }

    /// A path in the directory.
    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `len` bytes of test data that differ with `seed`, for byte-exact round trips.
pub fn pattern(len: usize, seed: u32) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i ^ seed).wrapping_mul(2654435761).to_le_bytes()[2])
        .collect()
}

/// The first offset at which `a` and `b` differ, over their common length.
pub fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    a.iter().zip(b).position(|(x, y)| x != y)
}

/// Creates a sparse raw disk image of `mib` MiB at `path` (panics with the path on failure).
pub fn sparse_image(path: &Path, mib: u64) -> std::fs::File {
    let f = std::fs::File::create(path)
        .unwrap_or_else(|e| panic!("create image {}: {e}", path.display()));
    f.set_len(mib << 20)
        .unwrap_or_else(|e| panic!("size image {}: {e}", path.display()));
    f
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

/// An Ethernet frame to `dst` carrying an ARP packet (`oper` 1 = request, 2 = reply).
pub fn arp_frame(
    oper: u16,
    (sha, spa): ([u8; 6], [u8; 4]),
    (tha, tpa): ([u8; 6], [u8; 4]),
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

/// An Ethernet frame carrying an ICMP echo request from `(mac, ip)` to `(mac, ip)`.
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

/// An Ethernet frame carrying a UDP datagram from `(mac, ip, port)` to `(mac, ip, port)`, both
/// checksums filled in.
pub fn udp_frame(
    (smac, src, sport): ([u8; 6], [u8; 4], u16),
    (dmac, dst, dport): ([u8; 6], [u8; 4], u16),
    payload: &[u8],
) -> Vec<u8> {
    let ulen = (8 + payload.len()) as u16;
    let mut udp = Vec::with_capacity(ulen as usize);
    udp.extend_from_slice(&sport.to_be_bytes());
    udp.extend_from_slice(&dport.to_be_bytes());
    udp.extend_from_slice(&ulen.to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(payload);
    let mut pseudo = Vec::with_capacity(12 + udp.len());
    pseudo.extend_from_slice(&src);
    pseudo.extend_from_slice(&dst);
    pseudo.extend_from_slice(&[0, 17]);
    pseudo.extend_from_slice(&ulen.to_be_bytes());
    pseudo.extend_from_slice(&udp);
    let c = match inet_checksum(&pseudo) {
        0 => 0xffff,
        c => c,
    };
    udp[6..8].copy_from_slice(&c.to_be_bytes());
    let total = (20 + udp.len()) as u16;
    let mut ip = vec![0x45u8, 0];
    ip.extend_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&[0, 1, 0x40, 0, 64, 17, 0, 0]);
    ip.extend_from_slice(&src);
    ip.extend_from_slice(&dst);
    let c = inet_checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let mut f = Vec::new();
    f.extend_from_slice(&dmac);
    f.extend_from_slice(&smac);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&udp);
    f
}

/// The payload of a UDP frame from `src:sport` to `dst:dport`, if `f` is one.
pub fn udp_payload(
    f: &[u8],
    (src, sport): ([u8; 4], u16),
    (dst, dport): ([u8; 4], u16),
) -> Option<&[u8]> {
    if f.len() < 42 || f[12..14] != [8, 0] || f[14] >> 4 != 4 || f[23] != 17 {
        return None;
    }
    let ihl = usize::from(f[14] & 0xf) * 4;
    let udp = f.get(14 + ihl..)?;
    if f[26..30] != src || f[30..34] != dst || udp.len() < 8 {
        return None;
    }
    let (sp, dp) = (
        u16::from_be_bytes([udp[0], udp[1]]),
        u16::from_be_bytes([udp[2], udp[3]]),
    );
    let len = usize::from(u16::from_be_bytes([udp[4], udp[5]]));
    (sp == sport && dp == dport && (8..=udp.len()).contains(&len)).then(|| &udp[8..len])
}

/// The node's publish gateway for a test machine: listens on a free port of 127.0.0.1 and on the
/// link socket that the machine's publish NIC ([`Published::nic`]) connects to, on a tokio runtime
/// of its own. Start it before the machine (QEMU connects at start); dropping it stops it.
pub struct Published {
    gw: Option<dvs_publish::GatewayHandle>,
    rt: Option<tokio::runtime::Runtime>,
    link: PathBuf,
    /// The host port clients connect to.
    pub port: u16,
}

impl Published {
    /// A gateway carrying host port [`Published::port`] to guest TCP port `guest_port`, the link at
    /// `link`, with the node's defaults (64 guest connections at once, the web server's slots).
    pub fn start(link: &Path, guest_port: u16) -> Published {
        Published::with_config(link, guest_port, dvs_publish::Config::default())
    }

    /// Like [`Published::start`] on host port `port` (of 127.0.0.1).
    pub fn on_port(link: &Path, port: u16, guest_port: u16) -> Published {
        Published::listen(link, port, guest_port, dvs_publish::Config::default())
    }

    /// Like [`Published::start`] with `cfg`.
    pub fn with_config(link: &Path, guest_port: u16, cfg: dvs_publish::Config) -> Published {
        Published::listen(link, 0, guest_port, cfg)
    }

    fn listen(link: &Path, port: u16, guest_port: u16, cfg: dvs_publish::Config) -> Published {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("publish-gw")
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("a runtime for the publish gateway: {e}"));
        let fwd = dvs_publish::Forward {
            listen: ([127, 0, 0, 1], port).into(),
            guest_port,
        };
        let gw = {
            let _in = rt.enter();
            dvs_publish::Gateway::bind(link, &[fwd], cfg)
                .unwrap_or_else(|e| panic!("the publish gateway: {e}"))
                .spawn()
        };
        let port = gw.local_addrs()[0].port();
        Published {
            gw: Some(gw),
            rt: Some(rt),
            link: link.to_path_buf(),
            port,
        }
    }

    /// The machine's publish NIC: a stream NIC on the gateway's link socket.
    pub fn nic(&self, mac: [u8; 6]) -> Nic {
        Nic {
            backend: NicBackend::Stream {
                path: self.link.clone(),
            },
            mac,
        }
    }

    /// The gateway's counters now.
    pub fn counters(&self) -> dvs_publish::Counters {
        self.gw.as_ref().map(|g| g.counters()).unwrap_or_default()
    }
}

impl Drop for Published {
    fn drop(&mut self) {
        if let (Some(gw), Some(rt)) = (self.gw.take(), self.rt.as_ref()) {
            rt.block_on(gw.stop());
        }
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_of_a_known_header() {
        // RFC 1071's example words.
        let d = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(inet_checksum(&d), !0xddf2);
    }

    #[test]
    fn frames_have_their_fields_in_place() {
        let (a, b) = ([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
        let f = arp_frame(1, (a, [10, 1, 0, 1]), ([0; 6], [10, 1, 0, 2]), [0xff; 6]);
        assert_eq!(f.len(), 42);
        assert_eq!(f[12..14], [8, 6]);
        assert_eq!(f[20..22], [0, 1]);
        assert_eq!(f[38..42], [10, 1, 0, 2]);
        let p = icmp_echo_frame((a, [10, 1, 0, 1]), (b, [10, 1, 0, 2]), 7, 1, b"x");
        assert_eq!(p[12..14], [8, 0]);
        assert_eq!(inet_checksum(&p[14..34]), 0, "IP header checksum");
        assert_eq!(inet_checksum(&p[34..]), 0, "ICMP checksum");
    }
}
