//! [`FsStore`]: the web server's files on the file server (`storage.fs`), as an fs-protocol
//! client over M3-IPC. The server may be in this instance (the calls stay in the guest) or in
//! another one; the engine decides.
//!
//! The web server calls from its own endpoint (the instance's first endpoint that is not
//! `storage.disk`, `storage.fs` or the ipc-bench client; see `config::roles`), whose vcopy buffer
//! ([`BUF_LEN`]) holds the paths of a request at [`PATH_A`] / [`PATH_B`] and a data chunk at
//! [`DATA`]. One call is in flight at a time (one endpoint, one `sendrec`); a connection whose
//! call is not the one in flight gets `Pending` and asks again on a later turn, so a slow fs call
//! stalls only the connections that need the file server. Every call has a timeout
//! ([`CALL_TIMEOUT`]): a file server that is away is `Unavailable` (503), never a hang.
//!
//! - GET/HEAD: `Open` (the size comes back), then `Read`s of [`CHUNK`] bytes into the reader's
//!   own chunk, which is handed out as the socket takes it; `Close` when the reader is dropped.
//! - PUT: `Stat` (201 or 200), `Mkdir` of every missing parent, `Open(create, truncate)` of a
//!   temporary file `/.dvs-put/<n>`; the body is gathered into [`CHUNK`]-byte `Write`s as it
//!   streams in; at the end `Fsync`, `Close` and `Rename` onto the target. A cut-off upload is
//!   never visible under its name and a finished one is whole (the rename is durable).
//! - DELETE: `Unlink`. Listing: `Readdir` of the directory (its first [`CHUNK`] bytes of
//!   entries; the temporary directory is hidden).
//!
//! Handles of readers and writers that are dropped (a finished or cut connection) are closed
//! (and a cut upload's temporary file unlinked) by later calls.

use super::store::{Entry, Store, StoreError};
use crate::arch::time;
use crate::ipc::{self, IpcRef};
use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::format;
use alloc::rc::Rc;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::cell::RefCell;
use core::future::Future;
use core::pin::Pin;
use core::task::{Context, Poll, Waker};
use core::time::Duration;
use dvs_vos_proto::fs::{
    parse_listing, validate_path, BufRange, FileKind, FsError, FsReply, FsRequest, MAX_PATH,
};
use m3ipc_core::{Endpoint, ErrorCode, Message};

/// Bytes moved per `Read` / `Write` call.
pub const CHUNK: usize = 64 * 1024;
/// Where the first path of a request goes in the endpoint's buffer.
pub const PATH_A: u64 = 0;
/// Where the second path (of a `Rename`) goes.
pub const PATH_B: u64 = MAX_PATH as u64;
/// Where the data chunk goes.
pub const DATA: u64 = 2 * MAX_PATH as u64;
/// The endpoint's vcopy buffer.
pub const BUF_LEN: usize = DATA as usize + CHUNK;
/// How long one call to the file server may take.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(8);
/// A finished call whose caller has not come back for it for this long is dropped, µs.
const STALE_US: u64 = 1_000_000;
/// The directory of uploads in progress.
pub const TMP_DIR: &str = "/.dvs-put";

/// What an in-flight call is for: the caller asking again with the same key gets its answer.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Key {
    Stat(String),
    Mkdir(String),
    OpenTmp(String),
    Open(String),
    Unlink(String),
    List(String),
    Read(u32),
    Write(u32),
    Fsync(u32),
    Close(u32),
    Rename(u32),
    Chore,
}

type CallFuture = Pin<Box<dyn Future<Output = Result<Message, ErrorCode>>>>;

/// The call in flight.
struct Inflight {
    key: Key,
    fut: CallFuture,
    /// The answer, once there, and when it came (µs).
    done: Option<(Result<FsReply, StoreError>, u64)>,
}

/// Clean-up left by dropped readers and writers.
#[derive(Default)]
struct Chores {
    close: Vec<u32>,
    unlink: Vec<String>,
}

/// A file being read.
pub struct FsReader {
    handle: u32,
    /// File offset of the end of `chunk`.
    next: u64,
    chunk: Vec<u8>,
    at: usize,
    chores: Rc<RefCell<Chores>>,
}

impl Drop for FsReader {
    fn drop(&mut self) {
        self.chores.borrow_mut().close.push(self.handle);
    }
}

/// Where a writer is.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum WStage {
    Data,
    Fsync,
    Close,
    Rename,
    Done,
}

/// A file being written (to its temporary name).
pub struct FsWriter {
    handle: u32,
    tmp: String,
    path: String,
    existed: bool,
    chunk: Vec<u8>,
    written: u64,
    stage: WStage,
    chores: Rc<RefCell<Chores>>,
}

impl Drop for FsWriter {
    fn drop(&mut self) {
        let mut c = self.chores.borrow_mut();
        if matches!(self.stage, WStage::Data | WStage::Fsync | WStage::Close) {
            c.close.push(self.handle);
        }
        if self.stage != WStage::Done {
            c.unlink.push(core::mem::take(&mut self.tmp));
        }
    }
}

/// Progress of a create (before its writer exists).
struct Creating {
    existed: Option<bool>,
    /// Parents made so far (components).
    parents: usize,
    touched: u64,
}

/// The fs-protocol client store.
pub struct FsStore {
    ipc: IpcRef,
    ep: Endpoint,
    fs: Endpoint,
    call: Option<Inflight>,
    chores: Rc<RefCell<Chores>>,
    creating: BTreeMap<String, Creating>,
    tmp_dir_made: bool,
    seq: u64,
}

/// The store error of an fs error.
fn fs_err(e: FsError) -> StoreError {
    match e {
        FsError::NotFound => StoreError::NotFound,
        e => StoreError::Fs(e),
    }
}

fn ipc_err(c: ErrorCode) -> StoreError {
    StoreError::Unavailable(match c {
        ErrorCode::Timeout => "the file server did not answer in time",
        _ => "the file server cannot be reached",
    })
}

/// Puts `p` at `at` in `buf`: its range.
fn put_path(buf: &mut [u8], at: u64, p: &str) -> Result<BufRange, StoreError> {
    let dst = buf
        .get_mut(at as usize..at as usize + p.len())
        .filter(|_| p.len() <= MAX_PATH)
        .ok_or(StoreError::Fs(FsError::InvalidPath))?;
    dst.copy_from_slice(p.as_bytes());
    Ok(BufRange {
        offset: at,
        len: p.len() as u32,
    })
}

fn check(p: &str) -> Result<(), StoreError> {
    validate_path(p.as_bytes())
        .map(|_| ())
        .map_err(|_| StoreError::Fs(FsError::InvalidPath))
}

impl FsStore {
    /// A store calling the file server at `fs` from `ep` (bound here); lends `ep` its buffer.
    pub fn new(ipc: IpcRef, ep: Endpoint, fs: Endpoint) -> Result<FsStore, ErrorCode> {
        ipc.borrow_mut().engine.set_buffer(ep, vec![0; BUF_LEN])?;
        Ok(FsStore {
            ipc,
            ep,
            fs,
            call: None,
            chores: Rc::new(RefCell::new(Chores::default())),
            creating: BTreeMap::new(),
            tmp_dir_made: false,
            seq: 0,
        })
    }

    /// Polls the call in flight; drops a finished one nobody came back for.
    fn pump(&mut self) {
        let now = time::now_us();
        let Some(c) = &mut self.call else { return };
        if c.done.is_none() {
            let mut cx = Context::from_waker(Waker::noop());
            if let Poll::Ready(r) = c.fut.as_mut().poll(&mut cx) {
                let reply = match r {
                    Ok(m) => match FsReply::decode(&m) {
                        Ok(FsReply::Error(e)) => Err(fs_err(e)),
                        Ok(r) => Ok(r),
                        Err(_) => Err(StoreError::Unavailable(
                            "the file server's reply does not decode",
                        )),
                    },
                    Err(code) => Err(ipc_err(code)),
                };
                c.done = Some((reply, now));
            }
        }
        if let Some((r, at)) = &c.done {
            if c.key == Key::Chore || now.saturating_sub(*at) > STALE_US {
                if let (Ok(FsReply::Opened { handle, .. }), Key::Open(_) | Key::OpenTmp(_)) =
                    (r, &c.key)
                {
                    self.chores.borrow_mut().close.push(*handle);
                }
                self.call = None;
            }
        }
    }

    /// Starts `req` (its buffer filled by `fill`) under `key`.
    fn begin(&mut self, key: Key, req: FsRequest) {
        let ipc = self.ipc.clone();
        let (ep, fs) = (self.ep, self.fs);
        let fut: CallFuture =
            Box::pin(
                async move { ipc::sendrec(&ipc, ep, fs, req.encode(), Some(CALL_TIMEOUT)).await },
            );
        self.call = Some(Inflight {
            key,
            fut,
            done: None,
        });
        self.pump();
    }

    /// Starts a pending clean-up call if the line is free.
    fn chore(&mut self) {
        if self.call.is_some() {
            return;
        }
        let (close, unlink) = {
            let mut c = self.chores.borrow_mut();
            (
                c.close.pop(),
                if c.close.is_empty() {
                    c.unlink.pop()
                } else {
                    None
                },
            )
        };
        if let Some(handle) = close {
            self.begin(Key::Chore, FsRequest::Close { handle });
        } else if let Some(p) = unlink {
            if let Some(path) = self.fill_path(PATH_A, &p) {
                self.begin(Key::Chore, FsRequest::Unlink { path });
            }
        }
    }

    fn fill_path(&mut self, at: u64, p: &str) -> Option<BufRange> {
        let mut i = self.ipc.borrow_mut();
        let buf = i.engine.buffer_mut(self.ep)?;
        put_path(buf, at, p).ok()
    }

    /// One call under `key`: its answer if it is the one in flight and done; else starts it if
    /// the line is free (`make` builds the request, filling the buffer).
    fn call(
        &mut self,
        key: Key,
        make: impl FnOnce(&mut [u8]) -> Result<FsRequest, StoreError>,
    ) -> Poll<Result<FsReply, StoreError>> {
        self.pump();
        if let Some(c) = &mut self.call {
            if c.key != key {
                return Poll::Pending;
            }
            return match c.done.take() {
                Some((r, _)) => {
                    self.call = None;
                    Poll::Ready(r)
                }
                None => Poll::Pending,
            };
        }
        self.chore();
        if self.call.is_some() {
            return Poll::Pending;
        }
        let req = {
            let mut i = self.ipc.borrow_mut();
            let Some(buf) = i.engine.buffer_mut(self.ep) else {
                return Poll::Ready(Err(StoreError::Unavailable(
                    "the web server's endpoint has no buffer",
                )));
            };
            match make(buf) {
                Ok(r) => r,
                Err(e) => return Poll::Ready(Err(e)),
            }
        };
        self.begin(key.clone(), req);
        // A local server may have answered at once.
        if let Some(c) = &mut self.call {
            if let Some((r, _)) = c.done.take() {
                self.call = None;
                return Poll::Ready(r);
            }
        }
        Poll::Pending
    }

    /// A copy of `len` bytes of the data area.
    fn data(&self, len: usize) -> Vec<u8> {
        let i = self.ipc.borrow();
        i.engine
            .buffer(self.ep)
            .and_then(|b| b.get(DATA as usize..DATA as usize + len))
            .map(<[u8]>::to_vec)
            .unwrap_or_default()
    }

    /// Writes the writer's chunk.
    fn flush_chunk(&mut self, w: &mut FsWriter) -> Poll<Result<(), StoreError>> {
        if w.chunk.is_empty() {
            return Poll::Ready(Ok(()));
        }
        let (handle, offset, len) = (w.handle, w.written, w.chunk.len());
        let chunk = &w.chunk;
        let r = self.call(Key::Write(handle), |buf| {
            buf[DATA as usize..DATA as usize + len].copy_from_slice(chunk);
            Ok(FsRequest::Write {
                handle,
                offset,
                buf: BufRange {
                    offset: DATA,
                    len: len as u32,
                },
            })
        });
        match r {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(FsReply::Done { len: n })) if n as usize == len => {
                w.written += len as u64;
                w.chunk.clear();
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Ok(_)) => Poll::Ready(Err(StoreError::Unavailable(
                "the file server wrote less than asked",
            ))),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
        }
    }

    /// An `Ok`-answered call on `path` (kind by `key`).
    fn path_call(
        &mut self,
        key: Key,
        path: &str,
        req: fn(BufRange) -> FsRequest,
    ) -> Poll<Result<FsReply, StoreError>> {
        self.call(key, |buf| Ok(req(put_path(buf, PATH_A, path)?)))
    }
}

/// `dir` without its trailing `/` (but `/` itself).
fn dir_path(dir: &str) -> &str {
    match dir.strip_suffix('/') {
        Some("") | None => dir,
        Some(d) => d,
    }
}

impl Store for FsStore {
    type Reader = FsReader;
    type Writer = FsWriter;

    fn max_file(&self) -> u64 {
        1 << 30
    }

    fn poll_open(&mut self, path: &str) -> Poll<Result<(FsReader, u64), StoreError>> {
        check(path)?;
        let r = self.call(Key::Open(path.into()), |buf| {
            Ok(FsRequest::Open {
                path: put_path(buf, PATH_A, path)?,
                create: false,
                exclusive: false,
                truncate: false,
            })
        });
        match r {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(FsReply::Opened { handle, size })) => Poll::Ready(Ok((
                FsReader {
                    handle,
                    next: 0,
                    chunk: Vec::new(),
                    at: 0,
                    chores: self.chores.clone(),
                },
                size,
            ))),
            Poll::Ready(Ok(_)) => Poll::Ready(Err(StoreError::Unavailable(
                "the file server answered Open oddly",
            ))),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
        }
    }

    fn seek(&mut self, r: &mut FsReader, offset: u64) {
        r.next = offset;
        r.chunk.clear();
        r.at = 0;
    }

    fn poll_read(&mut self, r: &mut FsReader, out: &mut [u8]) -> Poll<Result<usize, StoreError>> {
        if r.at >= r.chunk.len() {
            let (handle, offset) = (r.handle, r.next);
            let reply = self.call(Key::Read(handle), |_| {
                Ok(FsRequest::Read {
                    handle,
                    offset,
                    buf: BufRange {
                        offset: DATA,
                        len: CHUNK as u32,
                    },
                })
            });
            match reply {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(FsReply::Done { len })) if len as usize <= CHUNK => {
                    if len == 0 {
                        return Poll::Ready(Ok(0));
                    }
                    r.chunk = self.data(len as usize);
                    r.at = 0;
                    r.next += u64::from(len);
                }
                Poll::Ready(Ok(_)) => {
                    return Poll::Ready(Err(StoreError::Unavailable(
                        "the file server answered Read oddly",
                    )))
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            }
        }
        let n = out.len().min(r.chunk.len() - r.at);
        out[..n].copy_from_slice(&r.chunk[r.at..r.at + n]);
        r.at += n;
        Poll::Ready(Ok(n))
    }

    fn poll_create(&mut self, path: &str, _len: Option<u64>) -> Poll<Result<FsWriter, StoreError>> {
        check(path)?;
        let now = time::now_us();
        self.creating
            .retain(|p, c| p == path || now.saturating_sub(c.touched) < STALE_US);
        let st = self.creating.entry(path.into()).or_insert(Creating {
            existed: None,
            parents: 0,
            touched: now,
        });
        st.touched = now;
        let (existed, parents) = (st.existed, st.parents);
        // 1. Whether the target exists (and is no directory).
        let existed = match existed {
            Some(e) => e,
            None => match self.path_call(Key::Stat(path.into()), path, |p| FsRequest::Stat {
                path: p,
            }) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(FsReply::Stat(s))) if s.kind == FileKind::Dir => {
                    self.creating.remove(path);
                    return Poll::Ready(Err(StoreError::NotFound));
                }
                Poll::Ready(Ok(_)) => true,
                Poll::Ready(Err(StoreError::NotFound)) => false,
                Poll::Ready(Err(e)) => {
                    self.creating.remove(path);
                    return Poll::Ready(Err(e));
                }
            },
        };
        if let Some(c) = self.creating.get_mut(path) {
            c.existed = Some(existed);
        }
        // 2. The parents (and the temporary directory), made if missing.
        let mut dirs: Vec<String> = vec![TMP_DIR.into()];
        if !existed {
            let mut at = 0;
            while let Some(i) = path[at + 1..].find('/') {
                at += 1 + i;
                dirs.push(path[..at].into());
            }
        }
        for (i, d) in dirs.iter().enumerate().skip(parents) {
            if d == TMP_DIR && self.tmp_dir_made {
                continue;
            }
            match self.path_call(Key::Mkdir(d.clone()), d, |p| FsRequest::Mkdir { path: p }) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(_)) | Poll::Ready(Err(StoreError::Fs(FsError::Exists))) => {
                    if d == TMP_DIR {
                        self.tmp_dir_made = true;
                    }
                    if let Some(c) = self.creating.get_mut(path) {
                        c.parents = i + 1;
                    }
                }
                Poll::Ready(Err(e)) => {
                    self.creating.remove(path);
                    return Poll::Ready(Err(e));
                }
            }
        }
        // 3. The temporary file.
        let tmp = format!("{TMP_DIR}/{}", self.seq);
        let r = self.call(Key::OpenTmp(path.into()), |buf| {
            Ok(FsRequest::Open {
                path: put_path(buf, PATH_A, &tmp)?,
                create: true,
                exclusive: false,
                truncate: true,
            })
        });
        match r {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(FsReply::Opened { handle, .. })) => {
                self.creating.remove(path);
                self.seq += 1;
                Poll::Ready(Ok(FsWriter {
                    handle,
                    tmp,
                    path: path.into(),
                    existed,
                    chunk: Vec::with_capacity(CHUNK),
                    written: 0,
                    stage: WStage::Data,
                    chores: self.chores.clone(),
                }))
            }
            Poll::Ready(Ok(_)) => {
                self.creating.remove(path);
                Poll::Ready(Err(StoreError::Unavailable(
                    "the file server answered Open oddly",
                )))
            }
            Poll::Ready(Err(e)) => {
                self.creating.remove(path);
                Poll::Ready(Err(e))
            }
        }
    }

    fn poll_write(&mut self, w: &mut FsWriter, data: &[u8]) -> Poll<Result<usize, StoreError>> {
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if w.chunk.len() >= CHUNK {
            match self.flush_chunk(w) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {}
            }
        }
        let n = data.len().min(CHUNK - w.chunk.len());
        w.chunk.extend_from_slice(&data[..n]);
        Poll::Ready(Ok(n))
    }

    fn poll_commit(&mut self, w: &mut FsWriter) -> Poll<Result<bool, StoreError>> {
        loop {
            let handle = w.handle;
            let step = match w.stage {
                WStage::Data => self.flush_chunk(w).map(|r| r.map(|()| WStage::Fsync)),
                WStage::Fsync => self
                    .call(Key::Fsync(handle), |_| Ok(FsRequest::Fsync { handle }))
                    .map(|r| r.map(|_| WStage::Close)),
                WStage::Close => self
                    .call(Key::Close(handle), |_| Ok(FsRequest::Close { handle }))
                    .map(|r| r.map(|_| WStage::Rename)),
                WStage::Rename => {
                    let (tmp, path) = (&w.tmp, &w.path);
                    self.call(Key::Rename(handle), |buf| {
                        Ok(FsRequest::Rename {
                            from: put_path(buf, PATH_A, tmp)?,
                            to: put_path(buf, PATH_B, path)?,
                        })
                    })
                    .map(|r| r.map(|_| WStage::Done))
                }
                WStage::Done => return Poll::Ready(Ok(!w.existed)),
            };
            match step {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(next)) => w.stage = next,
                Poll::Ready(Err(e)) => {
                    if w.stage == WStage::Close {
                        // The handle is gone either way.
                        w.stage = WStage::Rename;
                    }
                    return Poll::Ready(Err(e));
                }
            }
        }
    }

    fn abort(&mut self, w: FsWriter) {
        drop(w);
        self.chore();
    }

    fn poll_delete(&mut self, path: &str) -> Poll<Result<(), StoreError>> {
        check(path)?;
        self.path_call(Key::Unlink(path.into()), path, |p| FsRequest::Unlink {
            path: p,
        })
        .map(|r| r.map(|_| ()))
    }

    fn poll_list(
        &mut self,
        dir: &str,
        after: Option<&str>,
        max: usize,
    ) -> Poll<Result<Vec<Entry>, StoreError>> {
        let d = dir_path(dir);
        check(d)?;
        let r = self.call(Key::List(dir.into()), |buf| {
            Ok(FsRequest::Readdir {
                path: put_path(buf, PATH_A, d)?,
                start: 0,
                buf: BufRange {
                    offset: DATA,
                    len: CHUNK as u32,
                },
            })
        });
        let bytes = match r {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Ok(FsReply::Listing { bytes, .. })) => self.data(bytes as usize),
            Poll::Ready(Ok(_)) => {
                return Poll::Ready(Err(StoreError::Unavailable(
                    "the file server answered Readdir oddly",
                )))
            }
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
        };
        let Ok(entries) = parse_listing(&bytes) else {
            return Poll::Ready(Err(StoreError::Unavailable(
                "the file server's listing does not parse",
            )));
        };
        let base = if dir.ends_with('/') {
            String::from(dir)
        } else {
            format!("{dir}/")
        };
        let out = entries
            .iter()
            .filter(|e| !(base == "/" && format!("/{}", e.name) == TMP_DIR))
            .map(|e| Entry {
                path: match e.kind {
                    FileKind::Dir => format!("{base}{}/", e.name),
                    FileKind::File => format!("{base}{}", e.name),
                },
                size: e.size,
            })
            .filter(|e| after.is_none_or(|a| e.path.as_str() > a))
            .take(max)
            .collect();
        Poll::Ready(Ok(out))
    }
}
