//! Where the web server keeps files: the [`Store`] trait (streaming open/read, create/write/
//! commit, delete, list; every call may answer `Poll::Pending`, so a store behind M3-IPC can be
//! swapped in without changing the server) and [`RamStore`], a bounded store in RAM.

use alloc::collections::BTreeMap;
use alloc::rc::Rc;
use alloc::string::String;
use alloc::vec::Vec;
use core::task::Poll;

/// Why a store operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreError {
    /// No such file.
    NotFound,
    /// The file would be larger than the per-file limit (bytes).
    FileTooLarge(u64),
    /// The store is full (its limit, bytes; or its file count).
    Full(u64),
    /// The store cannot be reached or failed (the server answers 503).
    Unavailable(&'static str),
    /// The file server refused (the status is `FsError::http_status`).
    Fs(dvs_vos_proto::fs::FsError),
}

/// One file in a listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The file's path (starts with `/`).
    pub path: String,
    /// Its size in bytes.
    pub size: u64,
}

/// A file store the web server streams through. Every call returns `Poll::Pending` when the
/// answer is not there yet; the server calls it again with the same arguments on a later turn
/// (a store that sends requests elsewhere keeps the in-flight state in the handle or itself).
/// Data moves in pieces the size of a socket buffer: nothing here holds a whole body.
pub trait Store {
    /// An open file being read.
    type Reader;
    /// A file being written; invisible until committed.
    type Writer;
    /// The largest file a PUT may store, bytes (a larger announced body is answered 413).
    fn max_file(&self) -> u64;
    /// Opens `path` for reading from byte `offset`: the reader and the file's size.
    fn poll_open(&mut self, path: &str) -> Poll<Result<(Self::Reader, u64), StoreError>>;
    /// Moves the reader to byte `offset`.
    fn seek(&mut self, r: &mut Self::Reader, offset: u64);
    /// Reads into `buf`; 0 at the end of the file.
    fn poll_read(
        &mut self,
        r: &mut Self::Reader,
        buf: &mut [u8],
    ) -> Poll<Result<usize, StoreError>>;
    /// Starts writing a new version of `path` (`len`: its size if announced).
    fn poll_create(
        &mut self,
        path: &str,
        len: Option<u64>,
    ) -> Poll<Result<Self::Writer, StoreError>>;
    /// Appends from `data`; returns how many bytes were taken (0 with Ready is not allowed for
    /// non-empty `data`: a full store answers an error).
    fn poll_write(&mut self, w: &mut Self::Writer, data: &[u8]) -> Poll<Result<usize, StoreError>>;
    /// Makes the written file visible under its path, replacing an old one; true if the path
    /// was new.
    fn poll_commit(&mut self, w: &mut Self::Writer) -> Poll<Result<bool, StoreError>>;
    /// Drops an uncommitted file (the old version, if any, stays).
    fn abort(&mut self, w: Self::Writer);
    /// Removes `path`.
    fn poll_delete(&mut self, path: &str) -> Poll<Result<(), StoreError>>;
    /// Up to `max` files under `dir` (a path ending in `/`) whose path sorts after `after`, in
    /// order.
    fn poll_list(
        &mut self,
        dir: &str,
        after: Option<&str>,
        max: usize,
    ) -> Poll<Result<Vec<Entry>, StoreError>>;
}

/// Bytes per piece of a file in RAM (so no allocation is larger than this).
const PIECE: usize = 4096;
/// Bytes charged for each file on top of its data and its name.
const FILE_OVERHEAD: u64 = 96;

/// A committed file in RAM.
struct RamFile {
    pieces: Vec<Vec<u8>>,
    len: u64,
}

/// A reader of [`RamStore`]: the file (kept alive even if it is replaced or deleted meanwhile)
/// and a position.
pub struct RamReader {
    file: Rc<RamFile>,
    pos: u64,
}

/// A writer of [`RamStore`].
pub struct RamWriter {
    path: String,
    pieces: Vec<Vec<u8>>,
    len: u64,
    /// Bytes charged to the store for this upload so far.
    charged: u64,
}

/// Files in RAM with a per-file limit, a total limit (data, names and a fixed overhead per
/// file; uploads in progress count) and a file count limit.
pub struct RamStore {
    files: BTreeMap<String, Rc<RamFile>>,
    used: u64,
    /// Largest file, bytes.
    pub per_file: u64,
    /// Most bytes held.
    pub total: u64,
    /// Most files held.
    pub max_files: usize,
}

impl RamStore {
    /// An empty store with these limits.
    pub fn new(per_file: u64, total: u64, max_files: usize) -> RamStore {
        RamStore {
            files: BTreeMap::new(),
            used: 0,
            per_file,
            total,
            max_files,
        }
    }

    /// Stores `data` as `path` at once (for the pages the server starts with).
    pub fn preload(&mut self, path: &str, data: &[u8]) -> Result<(), StoreError> {
        let mut w = self.create(path, Some(data.len() as u64))?;
        let mut off = 0;
        while off < data.len() {
            off += self.write(&mut w, &data[off..])?;
        }
        self.commit(&mut w);
        Ok(())
    }

    /// Bytes held (committed files and uploads in progress).
    pub fn used(&self) -> u64 {
        self.used
    }

    fn charge(&mut self, n: u64) -> Result<(), StoreError> {
        if self.used.saturating_add(n) > self.total {
            return Err(StoreError::Full(self.total));
        }
        self.used += n;
        Ok(())
    }

    fn cost(path: &str, len: u64) -> u64 {
        len + path.len() as u64 + FILE_OVERHEAD
    }

    fn create(&mut self, path: &str, len: Option<u64>) -> Result<RamWriter, StoreError> {
        if len.is_some_and(|l| l > self.per_file) {
            return Err(StoreError::FileTooLarge(self.per_file));
        }
        if !self.files.contains_key(path) && self.files.len() >= self.max_files {
            return Err(StoreError::Full(self.total));
        }
        let base = Self::cost(path, 0);
        self.charge(base)?;
        Ok(RamWriter {
            path: path.into(),
            pieces: Vec::new(),
            len: 0,
            charged: base,
        })
    }

    fn write(&mut self, w: &mut RamWriter, data: &[u8]) -> Result<usize, StoreError> {
        if w.len.saturating_add(data.len() as u64) > self.per_file {
            return Err(StoreError::FileTooLarge(self.per_file));
        }
        self.charge(data.len() as u64)?;
        w.charged += data.len() as u64;
        w.len += data.len() as u64;
        let mut rest = data;
        while !rest.is_empty() {
            if w.pieces.last().is_none_or(|p| p.len() == PIECE) {
                w.pieces.push(Vec::with_capacity(PIECE));
            }
            let Some(p) = w.pieces.last_mut() else {
                break;
            };
            let n = (PIECE - p.len()).min(rest.len());
            p.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
        }
        Ok(data.len())
    }

    fn commit(&mut self, w: &mut RamWriter) -> bool {
        if let Some(last) = w.pieces.last_mut() {
            last.shrink_to_fit();
        }
        let file = Rc::new(RamFile {
            pieces: core::mem::take(&mut w.pieces),
            len: w.len,
        });
        // The writer's charge now belongs to the file.
        w.charged = 0;
        let path = core::mem::take(&mut w.path);
        let cost = Self::cost(&path, 0);
        match self.files.insert(path, file) {
            Some(old) => {
                self.used = self.used.saturating_sub(cost + old.len);
                false
            }
            None => true,
        }
    }
}

impl Store for RamStore {
    type Reader = RamReader;
    type Writer = RamWriter;

    fn max_file(&self) -> u64 {
        self.per_file
    }

    fn poll_open(&mut self, path: &str) -> Poll<Result<(RamReader, u64), StoreError>> {
        Poll::Ready(match self.files.get(path) {
            Some(f) => Ok((
                RamReader {
                    file: f.clone(),
                    pos: 0,
                },
                f.len,
            )),
            None => Err(StoreError::NotFound),
        })
    }

    fn seek(&mut self, r: &mut RamReader, offset: u64) {
        r.pos = offset.min(r.file.len);
    }

    fn poll_read(&mut self, r: &mut RamReader, buf: &mut [u8]) -> Poll<Result<usize, StoreError>> {
        let mut n = 0;
        while n < buf.len() && r.pos < r.file.len {
            let piece = (r.pos / PIECE as u64) as usize;
            let off = (r.pos % PIECE as u64) as usize;
            let Some(p) = r.file.pieces.get(piece) else {
                break;
            };
            let Some(src) = p.get(off..) else { break };
            let k = src.len().min(buf.len() - n);
            if k == 0 {
                break;
            }
            buf[n..n + k].copy_from_slice(&src[..k]);
            n += k;
            r.pos += k as u64;
        }
        Poll::Ready(Ok(n))
    }

    fn poll_create(&mut self, path: &str, len: Option<u64>) -> Poll<Result<RamWriter, StoreError>> {
        Poll::Ready(self.create(path, len))
    }

    fn poll_write(&mut self, w: &mut RamWriter, data: &[u8]) -> Poll<Result<usize, StoreError>> {
        Poll::Ready(self.write(w, data))
    }

    fn poll_commit(&mut self, w: &mut RamWriter) -> Poll<Result<bool, StoreError>> {
        Poll::Ready(Ok(self.commit(w)))
    }

    fn abort(&mut self, w: RamWriter) {
        self.used = self.used.saturating_sub(w.charged);
    }

    fn poll_delete(&mut self, path: &str) -> Poll<Result<(), StoreError>> {
        Poll::Ready(match self.files.remove(path) {
            Some(f) => {
                self.used = self.used.saturating_sub(Self::cost(path, 0) + f.len);
                Ok(())
            }
            None => Err(StoreError::NotFound),
        })
    }

    fn poll_list(
        &mut self,
        dir: &str,
        after: Option<&str>,
        max: usize,
    ) -> Poll<Result<Vec<Entry>, StoreError>> {
        use core::ops::Bound;
        let lower = match after {
            Some(a) => Bound::Excluded(a),
            None => Bound::Included(dir),
        };
        let out = self
            .files
            .range::<str, _>((lower, Bound::Unbounded))
            .take_while(|(p, _)| p.starts_with(dir))
            .take(max)
            .map(|(p, f)| Entry {
                path: p.clone(),
                size: f.len,
            })
            .collect();
        Poll::Ready(Ok(out))
    }
}
