//! The file server (`services=[disk, fs]`, or `fs` alone calling a disk server elsewhere) driven
//! from the host engine with the `dvs_vos_proto::fs` protocol: paths and data only through vcopy
//! between the client's buffer and the server, the blocks through the disk server's protocol
//! on a real virtio-blk drive backed by a sparse raw image.

use super::*;
use dvs_instance::Drive;
use dvs_vos_proto::fs::{
    parse_listing, BufRange, FileKind, FsError, FsReply, FsRequest, StatInfo, MAX_IO, REQUEST,
};
use m3ipc_core::ErrorCode;
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

const DISK_EP: u32 = 20;
const FS_EP: u32 = 21;
const CLIENT: Endpoint = Endpoint(HOST_EP);
const CLIENT2: Endpoint = Endpoint(HOST_EP + 1);
const SERVER: Endpoint = Endpoint(FS_EP);
const IMAGE_MIB: u64 = 64;
/// Where the client keeps the first and the second path of a request, and the data.
const PATH_A: u64 = 0;
const PATH_B: u64 = 2048;
const DATA: u64 = 4096;
const FILE_LEN: usize = 1 << 20;
const BUF_LEN: usize = DATA as usize + FILE_LEN;

/// A guest running the fs server (and the disk server, if it has a drive) and the host engine
/// with two client endpoints.
struct FsVm {
    vm: Machine,
    host: EnginePort<DgramPort>,
}

/// Boots `services` on endpoints 20 (disk) and 21 (fs) with `image` as its drive (if any);
/// `disk_ep` is where the fs server finds its disk server. `extra` host endpoints are bound too.
fn boot(
    dir: &TempDir,
    a: Accel,
    name: &str,
    image: Option<&Path>,
    disk_ep: u32,
    extra: &[Endpoint],
) -> FsVm {
    let (guest_sock, host_sock) = (
        dir.join(&format!("{name}-guest.sock")),
        dir.join(&format!("{name}-host.sock")),
    );
    let port =
        DgramPort::bind(&host_sock, &guest_sock).expect("the host end of the fabric NIC binds");
    let mut eps = vec![CLIENT, CLIENT2];
    eps.extend_from_slice(extra);
    let host =
        EnginePort::new(port, DC, &eps, HOST_MAC).expect("the host engine binds its endpoints");
    let (endpoints, services) = match image {
        Some(_) => (vec![DISK_EP, FS_EP], vec![Service::Disk, Service::Fs]),
        None => (vec![FS_EP], vec![Service::Fs]),
    };
    let cfg = config(
        &endpoints,
        &services,
        &[&format!("disk_ep={disk_ep}"), &format!("fs_ep={FS_EP}")],
    );
    let mut spec = vos(dir, name, MachineType::Microvm, a, Kernel::Config(cfg));
    spec.memory_mib = 64;
    spec.nics.push(dgram_nic(0, guest_sock, host_sock));
    if let Some(image) = image {
        spec.drives.push(Drive {
            path: image.to_path_buf(),
            read_only: false,
        });
    }
    let mut vm = start(&spec);
    let r = ready(&mut vm, a);
    assert_eq!(
        (&r.endpoints[..], &r.services[..]),
        (&endpoints[..], &services[..]),
        "Ready record of the fs guest: {r:?}"
    );
    let mut d = FsVm { vm, host };
    d.set_buffer(CLIENT, vec![0; BUF_LEN]);
    d.set_buffer(CLIENT2, vec![0; BUF_LEN]);
    d
}

impl FsVm {
    fn set_buffer(&mut self, ep: Endpoint, buf: Vec<u8>) {
        self.host
            .engine
            .set_buffer(ep, buf)
            .expect("the host endpoint takes a buffer");
    }

    fn buf(&mut self, ep: Endpoint) -> &mut [u8] {
        self.host
            .engine
            .buffer_mut(ep)
            .expect("the host endpoint's buffer")
    }

    /// Puts `path` at `at` in `ep`'s buffer: its range.
    fn path(&mut self, ep: Endpoint, at: u64, path: &str) -> BufRange {
        let b = self.buf(ep);
        b[at as usize..at as usize + path.len()].copy_from_slice(path.as_bytes());
        BufRange {
            offset: at,
            len: path.len() as u32,
        }
    }

    /// One request from `ep`: the decoded reply.
    fn call(&mut self, ep: Endpoint, req: FsRequest, t: Duration) -> FsReply {
        let m = self
            .host
            .sendrec(ep, SERVER, req.encode(), t)
            .unwrap_or_else(|e| panic!("{req:?}: {e}\nconsole:\n{}", console(&self.vm)));
        FsReply::decode(&m).unwrap_or_else(|e| panic!("{req:?}: reply {m:?} undecodable: {e}"))
    }

    fn ok(&mut self, ep: Endpoint, req: FsRequest, t: Duration) {
        let r = self.call(ep, req, t);
        assert_eq!(r, FsReply::Ok, "{req:?}\nconsole:\n{}", console(&self.vm));
    }

    fn mkdir(&mut self, p: &str, t: Duration) -> FsReply {
        let path = self.path(CLIENT, PATH_A, p);
        self.call(CLIENT, FsRequest::Mkdir { path }, t)
    }

    fn stat(&mut self, p: &str, t: Duration) -> FsReply {
        let path = self.path(CLIENT, PATH_A, p);
        self.call(CLIENT, FsRequest::Stat { path }, t)
    }

    fn open(&mut self, ep: Endpoint, p: &str, create: bool, t: Duration) -> (u32, u64) {
        let path = self.path(ep, PATH_A, p);
        let req = FsRequest::Open {
            path,
            create,
            exclusive: false,
            truncate: false,
        };
        match self.call(ep, req, t) {
            FsReply::Opened { handle, size } => (handle, size),
            other => panic!("open {p}: {other:?}\nconsole:\n{}", console(&self.vm)),
        }
    }

    /// Writes `data` at file offset 0 in `MAX_IO` pieces (from `DATA` in the client's buffer).
    fn write_all(&mut self, ep: Endpoint, h: u32, data: &[u8], t: Duration) {
        self.buf(ep)[DATA as usize..DATA as usize + data.len()].copy_from_slice(data);
        for (i, chunk) in data.chunks(MAX_IO as usize).enumerate() {
            let off = (i * MAX_IO as usize) as u64;
            let req = FsRequest::Write {
                handle: h,
                offset: off,
                buf: BufRange {
                    offset: DATA + off,
                    len: chunk.len() as u32,
                },
            };
            assert_eq!(
                self.call(ep, req, t),
                FsReply::Done {
                    len: chunk.len() as u32
                },
                "write at {off}"
            );
        }
    }

    /// Reads `len` bytes from file offset 0 in `MAX_IO` pieces: what came back.
    fn read_all(&mut self, ep: Endpoint, h: u32, len: usize, t: Duration) -> Vec<u8> {
        self.buf(ep)[DATA as usize..].fill(0);
        let mut off = 0usize;
        while off < len {
            let want = (len - off).min(MAX_IO as usize);
            let req = FsRequest::Read {
                handle: h,
                offset: off as u64,
                buf: BufRange {
                    offset: DATA + off as u64,
                    len: want as u32,
                },
            };
            match self.call(ep, req, t) {
                FsReply::Done { len: n } if n > 0 => off += n as usize,
                other => panic!("read at {off}: {other:?}\nconsole:\n{}", console(&self.vm)),
            }
        }
        self.buf(ep)[DATA as usize..DATA as usize + len].to_vec()
    }

    /// The listing of `dir` (kind, size, name), in one `Readdir` into the data area.
    fn readdir(&mut self, dir: &str, t: Duration) -> Vec<(FileKind, u64, String)> {
        let path = self.path(CLIENT, PATH_A, dir);
        let req = FsRequest::Readdir {
            path,
            start: 0,
            buf: BufRange {
                offset: DATA,
                len: 64 * 1024,
            },
        };
        match self.call(CLIENT, req, t) {
            FsReply::Listing {
                entries,
                bytes,
                more: false,
            } => {
                let raw = self.buf(CLIENT)[DATA as usize..DATA as usize + bytes as usize].to_vec();
                let list = parse_listing(&raw).expect("the listing parses");
                assert_eq!(list.len(), entries as usize, "entries of {dir}");
                list.iter()
                    .map(|e| (e.kind, e.size, e.name.to_string()))
                    .collect()
            }
            other => panic!("readdir {dir}: {other:?}"),
        }
    }
}

fn fs_config_disk(dir: &TempDir) -> PathBuf {
    let image = dir.join("fs.img");
    sparse_image(&image, IMAGE_MIB);
    image
}

/// A blank 64 MiB disk is formatted; mkdir, create, a seeded 1 MiB file written in 256 KiB
/// pieces, fsync, byte-exact read-back, readdir, rename, unlink, stat errors and refusals
/// (bad paths, another client's handle, a malformed request, a buffer range the client does
/// not hold); then the VM is killed and booted again on the same image: the fsync'd file is
/// there, byte-exact (virtio-blk → QEMU writeback → fdatasync).
#[test]
fn fs_server_files_directories_and_durability_across_reboot() {
    let _g = exclusive();
    let a = accel();
    let dir = TempDir::new().expect("scratch dir");
    let image = fs_config_disk(&dir);
    let t = secs(a, 10);
    let mut d = boot(&dir, a, "fs1", Some(&image), DISK_EP, &[]);

    match d.call(CLIENT, FsRequest::Space, t) {
        FsReply::Space {
            block_size: 4096,
            blocks,
            available,
        } => {
            assert_eq!(blocks, IMAGE_MIB * 256, "blocks of the formatted disk");
            assert!(available > blocks / 2, "available {available} of {blocks}");
        }
        other => panic!("Space: {other:?}\nconsole:\n{}", console(&d.vm)),
    }
    assert!(
        console(&d.vm).contains("dvs: fs: formatted a blank disk"),
        "console:\n{}",
        console(&d.vm)
    );

    assert_eq!(d.mkdir("/docs", t), FsReply::Ok);
    assert_eq!(d.mkdir("/docs", t), FsReply::Error(FsError::Exists));
    let (h, size) = d.open(CLIENT, "/docs/a.bin", true, t);
    assert_eq!(size, 0, "a new file is empty");
    let data = pattern(FILE_LEN, 0x5eed);
    let started = Instant::now();
    d.write_all(CLIENT, h, &data, t);
    d.ok(CLIENT, FsRequest::Fsync { handle: h }, t);
    let wrote = started.elapsed();
    let started = Instant::now();
    let back = d.read_all(CLIENT, h, FILE_LEN, t);
    let read_t = started.elapsed();
    assert!(
        back == data,
        "read-back differs at byte {:?}",
        first_difference(&back, &data)
    );
    eprintln!(
        "fs 1 MiB ({}): write+fsync {wrote:?}, read {read_t:?}",
        a.name()
    );
    let eof = FsRequest::Read {
        handle: h,
        offset: FILE_LEN as u64,
        buf: BufRange {
            offset: DATA,
            len: 100,
        },
    };
    assert_eq!(d.call(CLIENT, eof, t), FsReply::Done { len: 0 });
    match d.call(CLIENT, FsRequest::Fstat { handle: h }, t) {
        FsReply::Stat(StatInfo {
            kind: FileKind::File,
            size,
            ..
        }) => assert_eq!(size, FILE_LEN as u64),
        other => panic!("fstat: {other:?}"),
    }
    assert_eq!(
        d.readdir("/docs", t),
        vec![(FileKind::File, FILE_LEN as u64, "a.bin".to_string())]
    );
    // (A directory's size is whatever dvs-fs reports for it; only kind and name are checked.)
    let root: Vec<_> = d
        .readdir("/", t)
        .into_iter()
        .map(|(k, _, n)| (k, n))
        .collect();
    assert_eq!(root, vec![(FileKind::Dir, "docs".to_string())]);

    // Rename, then the old name is gone and the handle still reaches the file.
    let from = d.path(CLIENT, PATH_A, "/docs/a.bin");
    let to = d.path(CLIENT, PATH_B, "/docs/b.bin");
    d.ok(CLIENT, FsRequest::Rename { from, to }, t);
    assert_eq!(d.stat("/docs/a.bin", t), FsReply::Error(FsError::NotFound));
    match d.stat("/docs/b.bin", t) {
        FsReply::Stat(s) => assert_eq!((s.kind, s.size), (FileKind::File, FILE_LEN as u64)),
        other => panic!("stat /docs/b.bin: {other:?}"),
    }
    assert_eq!(
        d.call(CLIENT, FsRequest::Fstat { handle: h }, t),
        d.stat("/docs/b.bin", t)
    );

    // A scratch file: created, written, closed, unlinked.
    let (h2, _) = d.open(CLIENT, "/docs/tmp", true, t);
    d.write_all(CLIENT, h2, b"scratch", t);
    d.ok(CLIENT, FsRequest::Close { handle: h2 }, t);
    assert_eq!(
        d.call(CLIENT, FsRequest::Fstat { handle: h2 }, t),
        FsReply::Error(FsError::BadHandle),
        "a closed handle"
    );
    let path = d.path(CLIENT, PATH_A, "/docs/tmp");
    d.ok(CLIENT, FsRequest::Unlink { path }, t);
    assert_eq!(d.stat("/docs/tmp", t), FsReply::Error(FsError::NotFound));
    let path = d.path(CLIENT, PATH_A, "/docs");
    assert_eq!(
        d.call(CLIENT, FsRequest::Unlink { path }, t),
        FsReply::Error(FsError::NotEmpty)
    );

    // Refusals; the server keeps serving.
    for bad in ["docs", "/docs/../etc", "/docs/", "/a\u{1}b"] {
        let path = d.path(CLIENT, PATH_A, bad);
        assert_eq!(
            d.call(CLIENT, FsRequest::Stat { path }, t),
            FsReply::Error(FsError::InvalidPath),
            "path {bad:?}"
        );
    }
    assert_eq!(d.stat("/nope/x", t), FsReply::Error(FsError::NotFound));
    // Another client's handle means nothing to this one.
    assert_eq!(
        d.call(CLIENT2, FsRequest::Fstat { handle: h }, t),
        FsReply::Error(FsError::BadHandle)
    );
    // Two clients' calls in flight at once: both queued and answered.
    let now = d.host.now();
    for ep in [CLIENT, CLIENT2] {
        let path = d.path(ep, PATH_A, "/docs/b.bin");
        d.host
            .engine
            .sendrec(now, ep, SERVER, FsRequest::Stat { path }.encode(), Some(t))
            .expect("the call starts");
    }
    for ep in [CLIENT, CLIENT2] {
        match d.host.wait_done(ep, t + t) {
            Ok(Completion::Replied(m)) => assert!(
                matches!(FsReply::decode(&m), Ok(FsReply::Stat(s)) if s.size == FILE_LEN as u64),
                "client {}: {m:?}",
                ep.0
            ),
            other => panic!("client {}: {other:?}\nconsole:\n{}", ep.0, console(&d.vm)),
        }
    }
    // A client's handle table is bounded: 1024 handles, then TooManyHandles (nothing opened);
    // closing one makes room. The other client is not affected.
    let mut held = Vec::new();
    for _ in 0..1024 {
        held.push(d.open(CLIENT2, "/docs/b.bin", false, t).0);
    }
    let path = d.path(CLIENT2, PATH_A, "/docs/b.bin");
    let open = FsRequest::Open {
        path,
        create: false,
        exclusive: false,
        truncate: false,
    };
    assert_eq!(
        d.call(CLIENT2, open, t),
        FsReply::Error(FsError::TooManyHandles)
    );
    d.ok(CLIENT2, FsRequest::Close { handle: held[7] }, t);
    d.open(CLIENT2, "/docs/b.bin", false, t);
    assert!(matches!(
        d.call(CLIENT, FsRequest::Fstat { handle: h }, t),
        FsReply::Stat(_)
    ));
    let too_big = FsRequest::Read {
        handle: h,
        offset: 0,
        buf: BufRange {
            offset: DATA,
            len: MAX_IO + 1,
        },
    };
    assert_eq!(
        d.call(CLIENT, too_big, t),
        FsReply::Error(FsError::TooLarge {
            len: MAX_IO + 1,
            max: MAX_IO
        })
    );
    let outside = FsRequest::Read {
        handle: h,
        offset: 0,
        buf: BufRange {
            offset: BUF_LEN as u64 - 10,
            len: 4096,
        },
    };
    assert_eq!(
        d.call(CLIENT, outside, t),
        FsReply::Error(FsError::Buffer {
            code: ErrorCode::BufferOutOfRange as u16
        })
    );
    let mut junk = Message::new(REQUEST);
    junk.payload = [0xff; 56];
    let r = d
        .host
        .sendrec(CLIENT, SERVER, junk, t)
        .expect("a malformed request is answered");
    assert_eq!(FsReply::decode(&r), Ok(FsReply::Error(FsError::Malformed)));
    // The file is unchanged after all that.
    let back = d.read_all(CLIENT, h, FILE_LEN, t);
    assert!(back == data, "data changed after refusals");
    d.ok(CLIENT, FsRequest::Close { handle: h }, t);

    // Errors: Exists, the closed handle, NotEmpty, 4 bad paths, 3 NotFound, the other client's
    // handle, TooManyHandles, TooLarge, Buffer, Malformed.
    let c = wait_counters(&mut d.vm, secs(a, 5), "with the fs requests counted", |c| {
        c.fs_requests >= 1070 && c.fs_errors >= 15
    });
    assert_eq!(c.fs_errors, 15, "fs errors: {c:?}");
    assert!(
        c.disk_writes > 0 && c.disk_flushes > 0 && c.disk_reads > 0,
        "the fs server used the disk server: {c:?}"
    );

    // Kill the VM (no clean shutdown) and boot again on the same image.
    let FsVm { vm, host } = d;
    drop(vm);
    drop(host);
    let mut d = boot(&dir, a, "fs2", Some(&image), DISK_EP, &[]);
    let (h, size) = d.open(CLIENT, "/docs/b.bin", false, t);
    assert_eq!(size, FILE_LEN as u64, "size after reboot");
    let back = d.read_all(CLIENT, h, FILE_LEN, t);
    assert!(
        back == data,
        "after reboot the file differs at byte {:?}",
        first_difference(&back, &data)
    );
    assert_eq!(d.stat("/docs/tmp", t), FsReply::Error(FsError::NotFound));
    assert!(
        console(&d.vm).contains("dvs: fs: mounted generation"),
        "console:\n{}",
        console(&d.vm)
    );
}

/// A disk whose superblocks carry the format's magic but version 2: refused, never formatted
/// over; every request is answered `Corrupt`, a ServiceDown record says why, the disk's first
/// blocks are unchanged.
#[test]
fn fs_server_refuses_a_disk_of_another_version() {
    let _g = exclusive();
    let a = accel();
    let dir = TempDir::new().expect("scratch dir");
    let image = fs_config_disk(&dir);
    let mut sb = vec![0u8; 64];
    sb[..8].copy_from_slice(b"dvs-fs\0\x01");
    sb[8..12].copy_from_slice(&2u32.to_le_bytes());
    {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&image)
            .expect("open image");
        f.write_all_at(&sb, 0).expect("slot 0");
        f.write_all_at(&sb, 4096).expect("slot 1");
    }
    let before = std::fs::read(&image).expect("read image");
    let t = secs(a, 10);
    let mut d = boot(&dir, a, "refused", Some(&image), DISK_EP, &[]);
    let rec = wait_record(&mut d.vm, t, "ServiceDown of fs", |r| {
        matches!(
            r,
            ControlRecord::ServiceDown {
                service: Service::Fs,
                ..
            }
        )
    });
    match rec {
        ControlRecord::ServiceDown { reason, .. } => {
            assert!(reason.contains("version 2"), "ServiceDown reason: {reason}")
        }
        other => unreachable!("{other:?}"),
    }
    assert_eq!(
        d.call(CLIENT, FsRequest::Space, t),
        FsReply::Error(FsError::Corrupt)
    );
    assert_eq!(d.mkdir("/x", t), FsReply::Error(FsError::Corrupt));
    let path = d.path(CLIENT, PATH_A, "/x");
    let open = FsRequest::Open {
        path,
        create: true,
        exclusive: false,
        truncate: true,
    };
    assert_eq!(d.call(CLIENT, open, t), FsReply::Error(FsError::Corrupt));
    let FsVm { vm, host } = d;
    drop(vm);
    drop(host);
    let after = std::fs::read(&image).expect("read image");
    assert!(after == before, "the refused disk was written");
}

/// `fs` alone, its disk server an endpoint of the host that never answers: every request is
/// answered `Io` within the disk timeout, never left hanging.
#[test]
fn fs_server_answers_io_when_the_disk_server_is_away() {
    let _g = exclusive();
    let a = accel();
    let dir = TempDir::new().expect("scratch dir");
    let silent = Endpoint(HOST_EP + 2);
    let mut d = boot(&dir, a, "away", None, silent.0, &[silent]);
    let t = secs(a, 15);
    for i in 0..3 {
        let started = Instant::now();
        let r = d.call(CLIENT, FsRequest::Space, t);
        assert_eq!(r, FsReply::Error(FsError::Io), "request {i}");
        assert!(
            started.elapsed() < secs(a, 8),
            "request {i} took {:?}",
            started.elapsed()
        );
        std::thread::sleep(Duration::from_millis(1200));
    }
    assert!(
        console(&d.vm).contains("dvs: fs: cannot mount"),
        "console:\n{}",
        console(&d.vm)
    );
}

/// One party of the router: the socket to send from, where to send, its endpoints.
type Route = (Arc<UnixDatagram>, PathBuf, Vec<u32>);

/// Routes M3-IPC frames between unix datagram sockets by destination endpoint: one socket per
/// party (each bound at the path that party sends to), frames to an endpoint nobody holds are
/// dropped. Runs on threads until dropped.
struct Router {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Router {
    /// `parties`: (the router's socket path for the party, the party's own socket path, the
    /// endpoints it holds).
    fn start(parties: &[(PathBuf, PathBuf, Vec<u32>)]) -> Router {
        let stop = Arc::new(AtomicBool::new(false));
        let mut socks = Vec::new();
        for (mine, _, _) in parties {
            let _ = std::fs::remove_file(mine);
            let s = UnixDatagram::bind(mine).expect("router socket binds");
            s.set_read_timeout(Some(Duration::from_millis(50)))
                .expect("router read timeout");
            socks.push(Arc::new(s));
        }
        let table: Arc<Vec<Route>> = Arc::new(
            parties
                .iter()
                .zip(&socks)
                .map(|((_, theirs, eps), s)| (s.clone(), theirs.clone(), eps.clone()))
                .collect(),
        );
        let mut threads = Vec::new();
        for s in socks {
            let (stop, table) = (stop.clone(), table.clone());
            threads.push(std::thread::spawn(move || {
                let mut buf = vec![0u8; 65536];
                while !stop.load(Ordering::Relaxed) {
                    let n = match s.recv(&mut buf) {
                        Ok(n) => n,
                        Err(_) => continue,
                    };
                    let frame = &buf[..n];
                    // Ethernet header (14 bytes), EtherType 0x88B5, then the M3-IPC frame.
                    if n < 14 || frame[12..14] != [0x88, 0xb5] {
                        continue;
                    }
                    let Ok(f) = FrameRepr::parse(&frame[14..]) else {
                        continue;
                    };
                    if let Some((out, to, _)) =
                        table.iter().find(|(_, _, eps)| eps.contains(&f.dst.0))
                    {
                        let _ = out.send_to(frame, to);
                    }
                }
            }));
        }
        Router { stop, threads }
    }
}

impl Drop for Router {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Two instances: one runs `disk` (endpoint 20), the other `fs` (endpoint 21) with `disk_ep=20`;
/// the host routes frames between them and its own client endpoint by destination endpoint (the
/// node's switch does the same). The fs server formats the remote disk, a 1 MiB file is written,
/// fsync'd and read back byte-exact through the fs → disk calls across instances. Then the disk
/// instance is killed: requests are answered `Io` (within the disk timeout); it boots again on
/// the same image and the fs server remounts: the fsync'd file is intact.
#[test]
fn fs_server_on_one_instance_disk_server_on_another() {
    let _g = exclusive();
    let a = accel();
    let dir = TempDir::new().expect("scratch dir");
    let image = fs_config_disk(&dir);
    let p = |s: &str| dir.join(s);
    let router = Router::start(&[
        (p("r-disk.sock"), p("disk.sock"), vec![DISK_EP]),
        (p("r-fs.sock"), p("fs.sock"), vec![FS_EP]),
        (p("r-host.sock"), p("host.sock"), vec![CLIENT.0, CLIENT2.0]),
    ]);
    let port = DgramPort::bind(&p("host.sock"), &p("r-host.sock")).expect("host port binds");
    let host = EnginePort::new(port, DC, &[CLIENT, CLIENT2], HOST_MAC).expect("host engine");

    let disk_cfg = config(
        &[DISK_EP],
        &[Service::Disk],
        &[&format!("disk_ep={DISK_EP}")],
    );
    let mut disk = vos(
        &dir,
        "disk",
        MachineType::Microvm,
        a,
        Kernel::Config(disk_cfg),
    );
    disk.memory_mib = 32;
    disk.nics
        .push(dgram_nic(0, p("disk.sock"), p("r-disk.sock")));
    disk.drives.push(Drive {
        path: image.clone(),
        read_only: false,
    });
    let mut disk_vm = start(&disk);
    ready(&mut disk_vm, a);

    let fs_cfg = config(
        &[FS_EP],
        &[Service::Fs],
        &[&format!("disk_ep={DISK_EP}"), &format!("fs_ep={FS_EP}")],
    );
    let mut fs = vos(&dir, "fs", MachineType::Microvm, a, Kernel::Config(fs_cfg));
    fs.memory_mib = 64;
    fs.nics.push(dgram_nic(0, p("fs.sock"), p("r-fs.sock")));
    let mut fs_vm = start(&fs);
    ready(&mut fs_vm, a);

    let mut d = FsVm { vm: fs_vm, host };
    d.set_buffer(CLIENT, vec![0; BUF_LEN]);
    let t = secs(a, 20);
    match d.call(CLIENT, FsRequest::Space, t) {
        FsReply::Space { blocks, .. } => assert_eq!(blocks, IMAGE_MIB * 256),
        other => panic!(
            "Space: {other:?}\nfs console:\n{}\ndisk console:\n{}",
            console(&d.vm),
            console(&disk_vm)
        ),
    }
    assert_eq!(d.mkdir("/remote", t), FsReply::Ok);
    let (h, _) = d.open(CLIENT, "/remote/f", true, t);
    let data = pattern(FILE_LEN, 77);
    let started = Instant::now();
    d.write_all(CLIENT, h, &data, t);
    d.ok(CLIENT, FsRequest::Fsync { handle: h }, t);
    let wrote = started.elapsed();
    let back = d.read_all(CLIENT, h, FILE_LEN, t);
    assert!(
        back == data,
        "remote read-back differs at byte {:?}",
        first_difference(&back, &data)
    );
    eprintln!(
        "fs over a remote disk server ({}): 1 MiB write+fsync {wrote:?}",
        a.name()
    );
    let c = wait_counters(&mut disk_vm, secs(a, 5), "disk server counters", |c| {
        c.disk_writes > 0 && c.disk_flushes > 0
    });
    assert_eq!(c.fs_requests, 0, "the disk instance serves no fs requests");

    // The disk instance dies: a write needs the disk, and is answered Io (after the disk
    // call's timeout, never a hang); so is what follows while the disk is away.
    drop(disk_vm);
    let started = Instant::now();
    let second = pattern(MAX_IO as usize, 78);
    d.buf(CLIENT)[DATA as usize..DATA as usize + second.len()].copy_from_slice(&second);
    let w = FsRequest::Write {
        handle: h,
        offset: 0,
        buf: BufRange {
            offset: DATA,
            len: MAX_IO,
        },
    };
    let r = d.call(CLIENT, w, t);
    assert!(
        matches!(r, FsReply::Error(FsError::Io) | FsReply::Done { .. }),
        "write with the disk away: {r:?}"
    );
    assert_eq!(
        d.call(CLIENT, FsRequest::Fsync { handle: h }, t),
        FsReply::Error(FsError::Io),
        "fsync with the disk away"
    );
    eprintln!(
        "fs with its disk server gone ({}): Io after {:?}",
        a.name(),
        started.elapsed()
    );
    // The disk instance comes back on the same image: the fs server remounts from the last
    // commit; the fsync'd file is there, byte-exact, through the handle opened before.
    // (A new boot, a new incarnation: the engine numbers its calls from it.)
    let disk_cfg = config(
        &[DISK_EP],
        &[Service::Disk],
        &[&format!("disk_ep={DISK_EP}")],
    );
    disk.kernel = Kernel::Config(disk_cfg);
    let _ = std::fs::remove_file(p("disk.sock"));
    let mut disk_vm = start(&disk);
    ready(&mut disk_vm, a);
    std::thread::sleep(Duration::from_millis(1100));
    let back = d.read_all(CLIENT, h, FILE_LEN, t);
    assert!(
        back == data,
        "after the disk server came back the file differs at byte {:?}\nconsole:\n{}",
        first_difference(&back, &data),
        console(&d.vm)
    );
    assert!(
        console(&d.vm).contains("dvs: fs: mounted generation"),
        "the fs server remounted:\n{}",
        console(&d.vm)
    );
    drop(d);
    drop(disk_vm);
    drop(router);
}
