//! The file server: `dvs-fs` over the disk server's blocks, served on endpoint `storage.fs` with
//! the protocol of `dvs_vos_proto::fs`.
//!
//! One request at a time: receive from any endpoint → decode → pull the paths (and a `Write`'s
//! data) from the client's vcopy buffer → run the file-system operation → push a `Read`'s data
//! or a listing into the client's buffer → reply. Callers that arrive meanwhile wait in the
//! engine's rendezvous queue. Malformed requests, bad paths, unknown handles and ranges the
//! client's buffer does not hold get error replies; plain sends and notifications are dropped
//! (and counted).
//!
//! `dvs-fs` is synchronous; its device calls go to the disk server over M3-IPC, which is async.
//! Each file-system operation therefore runs on a stack of its own (`blocking`): when it needs
//! blocks it suspends, this task makes the disk call (every other task keeps running — the disk
//! server too, if it lives in this instance), and the operation resumes with the answer.
//!
//! Mount: at start, `mount` (formatting only a blank disk, `NotFormatted`). A corrupt disk or
//! one of another format version is refused for good: a console line says why, a `ServiceDown`
//! record goes to the host, and every request is answered `FsError::Corrupt` (the disk is never
//! written). A disk server that does not answer (not booted yet, its node away: the fs server may
//! well boot before its disk server, on another node) leaves the server "down": requests are
//! answered `FsError::Io` at once, and the server tries to mount again every `RETRY_US`, by
//! itself while no request comes, so that it is up as soon as the disk server is. After a device
//! error while writing (the file system then refuses everything, `Poisoned`) the server
//! remounts, from the last commit, at the next request.
//!
//! Blocks go through a write-through LRU cache (`dvs_fs::CachedDevice`, an eighth of the free
//! heap at mount, at most 8 MiB): a file read again, or read right after it was written, costs
//! no disk call. Every write and flush still reaches the disk server in order, so crash safety
//! is unchanged; the cache is dropped with the mount and after any device error.
//!
//! Handles: per client endpoint (the engine fills in the source; a payload cannot forge it), a
//! table of at most `MAX_PER_CLIENT` handles, `MAX_HANDLES` in all; a handle number means
//! nothing to another client.

use super::blocking::Blocking;
use super::bump;
use super::disk_client::{DiskClient, DiskDevice, Failure, Link, FS_BLOCK};
use crate::arch::control;
use crate::arch::heap;
use crate::arch::time;
use crate::config::Service;
use crate::ipc::{self, IpcRef};
use crate::println;
use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::format;
use alloc::rc::Rc;
use alloc::string::String;
use alloc::vec::Vec;
use core::cell::Cell;
use core::time::Duration;
use dvs_fs::{CachedDevice, Error, FileHandle, FileSystem, Kind, OpenFlags};
use dvs_vos_abi::ControlRecord;
use dvs_vos_proto::fs::{
    push_entry, validate_path, BufRange, FileKind, FsError, FsReply, FsRequest, StatInfo, MAX_IO,
    MAX_PATH,
};
use m3ipc_core::{Endpoint, ErrorCode, Message, VcopyRequest};

/// How long one vcopy with a client may take.
const VCOPY_TIMEOUT: Duration = Duration::from_secs(5);
/// The job stack's size.
const STACK_BYTES: usize = 256 * 1024;
/// Least time between two mount attempts while the disk server is away, µs.
const RETRY_US: u64 = 1_000_000;
/// Handles one client may hold.
pub const MAX_PER_CLIENT: usize = 1024;
/// The file system's device: the disk server's client behind a block cache (write-through, so
/// crash safety is the device's; see `dvs_fs::cache`).
type Device = CachedDevice<DiskDevice>;

/// Blocks the cache may hold, given `free` bytes of heap at mount: an eighth of it, from 16
/// blocks (64 KiB) to 2048 (8 MiB).
fn cache_blocks(free: usize) -> usize {
    (free / 8 / FS_BLOCK).clamp(16, 2048)
}
/// Handles all clients together may hold.
pub const MAX_HANDLES: usize = 4096;

/// Counters of the file server.
#[derive(Default)]
pub struct FsStats {
    /// Requests answered.
    pub requests: Cell<u64>,
    /// Requests answered with an error, and messages dropped.
    pub errors: Cell<u64>,
}

/// The state of the file system.
enum Mount {
    /// Mounted.
    Up(Box<FileSystem<Device>>),
    /// Refused for good (corrupt, another version): every request gets this error.
    Refused,
    /// Not mounted (disk server away, or a remount is due); the time of the last attempt.
    Down { tried_us: Option<u64> },
}

/// One client's handles.
#[derive(Default)]
struct Client {
    next: u32,
    open: BTreeMap<u32, FileHandle>,
}

/// The per-client handle tables.
#[derive(Default)]
struct Handles {
    clients: BTreeMap<u32, Client>,
    total: usize,
}

impl Handles {
    fn room(&self, client: Endpoint) -> Result<(), FsError> {
        let held = self.clients.get(&client.0).map_or(0, |c| c.open.len());
        if held >= MAX_PER_CLIENT || self.total >= MAX_HANDLES {
            Err(FsError::TooManyHandles)
        } else {
            Ok(())
        }
    }

    fn insert(&mut self, client: Endpoint, fh: FileHandle) -> u32 {
        let c = self.clients.entry(client.0).or_default();
        loop {
            c.next = c.next.wrapping_add(1);
            if c.next != 0 && !c.open.contains_key(&c.next) {
                break;
            }
        }
        c.open.insert(c.next, fh);
        self.total += 1;
        c.next
    }

    fn get(&self, client: Endpoint, h: u32) -> Result<FileHandle, FsError> {
        self.clients
            .get(&client.0)
            .and_then(|c| c.open.get(&h))
            .copied()
            .ok_or(FsError::BadHandle)
    }

    fn remove(&mut self, client: Endpoint, h: u32) -> Result<(), FsError> {
        let c = self.clients.get_mut(&client.0).ok_or(FsError::BadHandle)?;
        c.open.remove(&h).ok_or(FsError::BadHandle)?;
        self.total -= 1;
        if c.open.is_empty() {
            self.clients.remove(&client.0);
        }
        Ok(())
    }
}

/// The file error a client sees for a file-system error.
fn fs_error(e: &Error) -> FsError {
    match e {
        Error::NotFound => FsError::NotFound,
        Error::Exists => FsError::Exists,
        Error::NotDir => FsError::NotDir,
        Error::IsDir => FsError::IsDir,
        Error::NotEmpty => FsError::NotEmpty,
        Error::NoSpace => FsError::NoSpace,
        Error::InvalidPath => FsError::InvalidPath,
        Error::StaleHandle => FsError::BadHandle,
        Error::Invalid { .. } | Error::TooManyFiles => FsError::Invalid,
        Error::Io { .. } | Error::Poisoned => FsError::Io,
        Error::NotFormatted
        | Error::UnsupportedVersion { .. }
        | Error::Corrupt { .. }
        | Error::BadDevice { .. } => FsError::Corrupt,
    }
}

/// What a request needs moved into the client's buffer after the operation.
enum Out {
    /// Nothing.
    None,
    /// These bytes at this offset.
    Push(u64, Vec<u8>),
}

/// The server.
struct Server {
    ipc: IpcRef,
    ep: Endpoint,
    blocking: Blocking,
    link: Rc<Link>,
    client: DiskClient,
    mount: Mount,
    handles: Handles,
    /// Buffer storage kept between requests.
    spare: Vec<u8>,
}

/// Serves the file system on endpoint `ep`, its blocks on the disk server at `disk`, forever.
pub async fn serve(
    ipc: IpcRef,
    ep: Endpoint,
    disk: Endpoint,
    stats: Rc<FsStats>,
) -> Result<(), &'static str> {
    let mut s = Server {
        ipc: ipc.clone(),
        ep,
        blocking: Blocking::new(STACK_BYTES),
        link: Rc::new(Link::default()),
        client: DiskClient::new(ipc, ep, disk),
        mount: Mount::Down { tried_us: None },
        handles: Handles::default(),
        spare: Vec::new(),
    };
    s.try_mount().await;
    loop {
        let Some(msg) = s.next_request(&stats.errors).await else {
            // Down, and no request came before the next attempt was due.
            s.try_mount().await;
            continue;
        };
        let reply = match FsRequest::decode(&msg) {
            Ok(req) => s.handle(msg.source, req).await,
            Err(_) => FsReply::Error(FsError::Malformed),
        };
        bump(&stats.requests);
        if matches!(reply, FsReply::Error(_)) {
            bump(&stats.errors);
        }
        if ipc::reply(&s.ipc, ep, msg.source, reply.encode()).is_err() {
            bump(&stats.errors);
        }
    }
}

impl Server {
    /// The next request; while the file system is down, `None` once the next mount attempt is
    /// due with no request come (so that the server mounts without waiting for one).
    async fn next_request(&self, dropped: &Cell<u64>) -> Option<Message> {
        let Mount::Down { tried_us } = self.mount else {
            return Some(super::next_request(&self.ipc, self.ep, dropped).await);
        };
        loop {
            let now = time::now_us();
            let due = tried_us.map_or(now, |t| t + RETRY_US);
            if now >= due {
                return None;
            }
            let wait = Duration::from_micros(due - now);
            match ipc::receive(&self.ipc, self.ep, Endpoint::ANY, Some(wait)).await {
                Ok((msg, true)) if !msg.is_notify() => return Some(msg),
                Ok(_) => bump(dropped),
                Err(ErrorCode::Timeout) => return None,
                Err(_) => {
                    bump(dropped);
                    crate::executor::yield_now().await;
                }
            }
        }
    }

    /// Runs `f` on the job stack, doing its disk calls meanwhile. `None` if the stack is
    /// unusable (never after a normal run).
    async fn blocking<R>(
        blocking: &Blocking,
        link: &Link,
        client: &mut DiskClient,
        f: impl FnOnce() -> R,
    ) -> Option<R> {
        // `run` awaits one `io` future at a time, so the RefCell is never borrowed twice.
        let client = core::cell::RefCell::new(client);
        let client = &client;
        #[allow(clippy::await_holding_refcell_ref)]
        blocking
            .run(f, move || async move {
                let mut c = client.borrow_mut();
                c.serve_link(link).await
            })
            .await
    }

    /// Mounts the disk (formatting a blank one); sets `self.mount` and says what happened.
    async fn try_mount(&mut self) {
        let link = self.link.clone();
        let susp = self.blocking.suspender();
        let disk = self.client.disk;
        let cache = cache_blocks(heap::free());
        let r = Self::blocking(&self.blocking, &self.link, &mut self.client, move || {
            let sectors = DiskDevice::probe(&link, &susp).map_err(MountError::Disk)?;
            let dev = DiskDevice::new(link.clone(), susp.clone(), sectors);
            match FileSystem::mount(CachedDevice::new(dev, cache)) {
                Ok((fs, report)) => Ok((fs, Some(report))),
                Err(Error::NotFormatted) => {
                    let dev = DiskDevice::new(link, susp, sectors);
                    FileSystem::format(CachedDevice::new(dev, cache))
                        .map(|fs| (fs, None))
                        .map_err(MountError::Fs)
                }
                Err(e) => Err(MountError::Fs(e)),
            }
        })
        .await;
        let now = time::now_us();
        self.mount = match r {
            Some(Ok((fs, report))) => {
                let st = fs.stats();
                match report {
                    None => println!(
                        "dvs: fs: formatted a blank disk: {} blocks of {} bytes (disk server {})",
                        st.blocks, st.block_size, disk.0
                    ),
                    Some(r) => println!(
                        "dvs: fs: mounted generation {} from slot {}{}: {} blocks, {} used, {} inodes",
                        r.generation,
                        r.slot,
                        if r.other_slot_damaged {
                            " (the other superblock slot is damaged: a commit was cut)"
                        } else {
                            ""
                        },
                        st.blocks,
                        st.used,
                        st.inodes
                    ),
                }
                Mount::Up(Box::new(fs))
            }
            Some(Err(MountError::Fs(e))) if is_refusal(&e) => {
                let reason = format!("the disk holds no usable file system, refused: {e}");
                println!("dvs: fs: {reason}; every request is answered Corrupt");
                control::send(&ControlRecord::ServiceDown {
                    service: Service::Fs,
                    reason,
                });
                Mount::Refused
            }
            Some(Err(e)) => {
                println!(
                    "dvs: fs: cannot mount (disk server {}): {}; requests are answered Io",
                    disk.0,
                    e.describe(&self.link)
                );
                Mount::Down {
                    tried_us: Some(now),
                }
            }
            None => {
                println!("dvs: fs: the job stack is unusable; requests are answered Io");
                Mount::Down {
                    tried_us: Some(now),
                }
            }
        };
    }

    /// The mounted file system, mounting first if it is down and an attempt is due.
    async fn fs(&mut self) -> Result<(), FsError> {
        match self.mount {
            Mount::Up(_) => Ok(()),
            Mount::Refused => Err(FsError::Corrupt),
            Mount::Down { tried_us } => {
                let due = tried_us.is_none_or(|t| time::now_us() >= t + RETRY_US);
                if !due {
                    return Err(FsError::Io);
                }
                self.try_mount().await;
                match self.mount {
                    Mount::Up(_) => Ok(()),
                    Mount::Refused => Err(FsError::Corrupt),
                    Mount::Down { .. } => Err(FsError::Io),
                }
            }
        }
    }

    /// Runs `op` on the mounted file system (on the job stack). A device error while writing
    /// or a poisoned file system makes the next request remount.
    async fn with_fs<R>(
        &mut self,
        writes: bool,
        op: impl FnOnce(&mut FileSystem<Device>) -> Result<R, Error>,
    ) -> Result<R, FsError> {
        self.fs().await?;
        let Mount::Up(fs) = &mut self.mount else {
            return Err(FsError::Io);
        };
        let fs = &mut **fs;
        let r = Self::blocking(&self.blocking, &self.link, &mut self.client, || op(fs)).await;
        match r {
            Some(Ok(v)) => Ok(v),
            Some(Err(e)) => {
                let remount =
                    matches!(e, Error::Poisoned) || (writes && matches!(e, Error::Io { .. }));
                if matches!(e, Error::Io { .. } | Error::Poisoned) {
                    let why = self
                        .link
                        .last_failure
                        .get()
                        .map(|f| format!("{f}"))
                        .unwrap_or_default();
                    println!(
                        "dvs: fs: {e} ({why}){}",
                        if remount {
                            "; remounting from the last commit at the next request"
                        } else {
                            ""
                        }
                    );
                }
                if remount {
                    self.mount = Mount::Down { tried_us: None };
                }
                Err(fs_error(&e))
            }
            None => Err(FsError::Io),
        }
    }

    /// Carries out `req` from `client`; the reply.
    async fn handle(&mut self, client: Endpoint, req: FsRequest) -> FsReply {
        match self.dispatch(client, req).await {
            Ok((reply, Out::None)) => reply,
            Ok((reply, Out::Push(at, data))) => match self.push(client, at, data).await {
                Ok(()) => reply,
                Err(e) => FsReply::Error(e),
            },
            Err(e) => FsReply::Error(e),
        }
    }

    async fn dispatch(
        &mut self,
        client: Endpoint,
        req: FsRequest,
    ) -> Result<(FsReply, Out), FsError> {
        let ok = |r| Ok((r, Out::None));
        match req {
            FsRequest::Open {
                path,
                create,
                exclusive,
                truncate,
            } => {
                let path = self.path(client, path).await?;
                self.handles.room(client)?;
                let flags = OpenFlags {
                    create,
                    exclusive,
                    truncate,
                };
                let (fh, size) = self
                    .with_fs(create || truncate, |fs| {
                        let fh = fs.open(&path, flags)?;
                        Ok((fh, fs.fstat(fh)?.size))
                    })
                    .await?;
                let handle = self.handles.insert(client, fh);
                ok(FsReply::Opened { handle, size })
            }
            FsRequest::Read {
                handle,
                offset,
                buf,
            } => {
                let buf = buf.check(MAX_IO)?;
                check_buf(buf)?;
                let fh = self.handles.get(client, handle)?;
                let mut data = self.take_spare(buf.len as usize)?;
                let n = self
                    .with_fs(false, |fs| fs.read_at(fh, offset, &mut data))
                    .await;
                let n = match n {
                    Ok(n) => n,
                    Err(e) => {
                        self.spare = data;
                        return Err(e);
                    }
                };
                data.truncate(n);
                let reply = FsReply::Done { len: n as u32 };
                if n == 0 {
                    self.spare = data;
                    return ok(reply);
                }
                Ok((reply, Out::Push(buf.offset, data)))
            }
            FsRequest::Write {
                handle,
                offset,
                buf,
            } => {
                let buf = buf.check(MAX_IO)?;
                check_buf(buf)?;
                let fh = self.handles.get(client, handle)?;
                let data = self.pull(client, buf).await?;
                let r = self
                    .with_fs(true, |fs| fs.write_at(fh, offset, &data))
                    .await;
                self.spare = data;
                let n = r?;
                ok(FsReply::Done { len: n as u32 })
            }
            FsRequest::Truncate { handle, size } => {
                let fh = self.handles.get(client, handle)?;
                self.with_fs(true, |fs| fs.truncate(fh, size)).await?;
                ok(FsReply::Ok)
            }
            FsRequest::Rename { from, to } => {
                let from = self.path(client, from).await?;
                let to = self.path(client, to).await?;
                self.with_fs(true, |fs| fs.rename(&from, &to)).await?;
                ok(FsReply::Ok)
            }
            FsRequest::Unlink { path } => {
                let path = self.path(client, path).await?;
                self.with_fs(true, |fs| fs.unlink(&path)).await?;
                ok(FsReply::Ok)
            }
            FsRequest::Mkdir { path } => {
                let path = self.path(client, path).await?;
                self.with_fs(true, |fs| fs.mkdir(&path)).await?;
                ok(FsReply::Ok)
            }
            FsRequest::Readdir { path, start, buf } => {
                let buf = buf.check(MAX_IO)?;
                check_buf(buf)?;
                let path = self.path(client, path).await?;
                let entries = self.with_fs(false, |fs| fs.readdir(&path)).await?;
                let mut out = self.take_spare(buf.len as usize)?;
                let mut at = 0;
                let mut n = 0u32;
                for e in entries.iter().skip(start as usize) {
                    let kind = match e.kind {
                        Kind::File => FileKind::File,
                        Kind::Dir => FileKind::Dir,
                    };
                    match push_entry(&mut out, at, kind, e.size, &e.name) {
                        Some(next) => {
                            at = next;
                            n += 1;
                        }
                        None => break,
                    }
                }
                let left = entries.len().saturating_sub(start as usize);
                if n == 0 && left > 0 {
                    // Not even one entry fits: asking again would never progress.
                    self.spare = out;
                    return Err(FsError::Invalid);
                }
                out.truncate(at);
                let reply = FsReply::Listing {
                    entries: n,
                    bytes: at as u32,
                    more: (n as usize) < left,
                };
                if at == 0 {
                    self.spare = out;
                    return ok(reply);
                }
                Ok((reply, Out::Push(buf.offset, out)))
            }
            FsRequest::Stat { path } => {
                let path = self.path(client, path).await?;
                let st = self.with_fs(false, |fs| fs.stat(&path)).await?;
                ok(FsReply::Stat(stat_info(&st)))
            }
            FsRequest::Fstat { handle } => {
                let fh = self.handles.get(client, handle)?;
                let st = self.with_fs(false, |fs| fs.fstat(fh)).await?;
                ok(FsReply::Stat(stat_info(&st)))
            }
            FsRequest::Fsync { handle } => {
                let fh = self.handles.get(client, handle)?;
                self.with_fs(true, |fs| fs.fsync(fh)).await?;
                ok(FsReply::Ok)
            }
            FsRequest::Close { handle } => {
                self.handles.remove(client, handle)?;
                ok(FsReply::Ok)
            }
            FsRequest::Space => {
                let st = self.with_fs(false, |fs| Ok(fs.stats())).await?;
                ok(FsReply::Space {
                    block_size: st.block_size as u32,
                    blocks: st.blocks,
                    available: st.available,
                })
            }
        }
    }

    /// `len` zero bytes from the kept storage.
    fn take_spare(&mut self, len: usize) -> Result<Vec<u8>, FsError> {
        let mut b = core::mem::take(&mut self.spare);
        b.clear();
        if b.try_reserve_exact(len).is_err() {
            return Err(FsError::Io);
        }
        b.resize(len, 0);
        Ok(b)
    }

    /// The path named by `r` in the client's buffer, checked.
    async fn path(&mut self, client: Endpoint, r: BufRange) -> Result<String, FsError> {
        if r.len as usize > MAX_PATH {
            return Err(FsError::InvalidPath);
        }
        check_buf(r)?;
        let bytes = self.pull(client, r).await?;
        let p = validate_path(&bytes).map(String::from);
        self.spare = bytes;
        p.map_err(|_| FsError::InvalidPath)
    }

    /// Pulls `r` from the client's buffer.
    async fn pull(&mut self, client: Endpoint, r: BufRange) -> Result<Vec<u8>, FsError> {
        let buf = self.take_spare(r.len as usize)?;
        if r.len == 0 {
            return Ok(buf);
        }
        let req = VcopyRequest {
            src: client,
            src_offset: r.offset,
            dst: self.ep,
            dst_offset: 0,
            len: u64::from(r.len),
        };
        self.vcopy(buf, req).await
    }

    /// Pushes `data` into the client's buffer at `at`.
    async fn push(&mut self, client: Endpoint, at: u64, data: Vec<u8>) -> Result<(), FsError> {
        let req = VcopyRequest {
            src: self.ep,
            src_offset: 0,
            dst: client,
            dst_offset: at,
            len: data.len() as u64,
        };
        let back = self.vcopy(data, req).await?;
        self.spare = back;
        Ok(())
    }

    /// Lends `buf` as the fs endpoint's vcopy buffer for the copy `req`; the buffer back.
    async fn vcopy(&mut self, buf: Vec<u8>, req: VcopyRequest) -> Result<Vec<u8>, FsError> {
        let len = req.len;
        let lent = self.ipc.borrow_mut().engine.set_buffer(self.ep, buf);
        let r = match lent {
            Ok(()) => ipc::vcopy(&self.ipc, self.ep, req, Some(VCOPY_TIMEOUT)).await,
            Err(e) => Err(e),
        };
        let back = self
            .ipc
            .borrow_mut()
            .engine
            .take_buffer(self.ep)
            .unwrap_or_default();
        match r {
            Ok(n) if n == len => Ok(back),
            Ok(_) => {
                self.spare = back;
                Err(FsError::Buffer {
                    code: ErrorCode::BufferOutOfRange as u16,
                })
            }
            Err(code) => {
                self.spare = back;
                Err(FsError::Buffer { code: code as u16 })
            }
        }
    }
}

/// A range whose end overflows is out of any buffer.
fn check_buf(r: BufRange) -> Result<(), FsError> {
    match r.offset.checked_add(u64::from(r.len)) {
        Some(_) => Ok(()),
        None => Err(FsError::Buffer {
            code: ErrorCode::BufferOutOfRange as u16,
        }),
    }
}

fn stat_info(st: &dvs_fs::Stat) -> StatInfo {
    StatInfo {
        kind: match st.kind {
            Kind::File => FileKind::File,
            Kind::Dir => FileKind::Dir,
        },
        size: st.size,
        serial: st.serial,
    }
}

/// Errors of a disk that answers but holds nothing we may use: refused for good.
fn is_refusal(e: &Error) -> bool {
    matches!(
        e,
        Error::UnsupportedVersion { .. } | Error::Corrupt { .. } | Error::BadDevice { .. }
    )
}

/// Why a mount failed.
enum MountError {
    /// The disk server did not answer `Info` usefully.
    Disk(Failure),
    /// The file system refused or the device failed.
    Fs(Error),
}

impl MountError {
    fn describe(&self, link: &Link) -> String {
        match self {
            MountError::Disk(f) => format!("{f}"),
            MountError::Fs(e) => match link.last_failure.get() {
                Some(f) => format!("{e} ({f})"),
                None => format!("{e}"),
            },
        }
    }
}

/// The file system block size the server formats with (for the README and tests).
pub const BLOCK: usize = FS_BLOCK;
