//! A machine's console log on the host: what the machine writes (the guest's COM1 through QEMU's stdout, and
//! the machine process's own stderr) copied into a file by a thread of this process, never by the machine
//! itself, so that the log is bounded and timed.
//!
//! - **Bounded**: when the log would pass [`MAX_LOG`] bytes (or its index [`MAX_INDEX`]), it is rotated: the
//!   file becomes `<log>.1` (replacing the one before) and a new one starts. A guest that prints without end
//!   costs at most twice that on disk.
//! - **Timed**: beside the log, `<log>.idx` holds 16-byte records `(offset: u64 LE, unix_ms: u64 LE)`: where
//!   in the log a piece of output starts and when it came (at most one record per [`INDEX_EVERY`]), so that
//!   [`read_since`] can return the lines written since a moment (`dvs logs --since`) without any timestamp in
//!   the text.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The largest a console log grows before it is rotated.
pub const MAX_LOG: u64 = 8 << 20;
/// The largest its index grows before the log is rotated.
pub const MAX_INDEX: u64 = 1 << 20;
/// Output that comes closer together than this shares one index record.
pub const INDEX_EVERY: Duration = Duration::from_millis(100);
const RECORD: usize = 16;

/// The index file of the log at `log`.
pub fn index_path(log: &Path) -> PathBuf {
    let mut p = log.as_os_str().to_owned();
    p.push(".idx");
    PathBuf::from(p)
}

/// The rotated (older) copy of `path`.
fn older(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".1");
    PathBuf::from(p)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The open log and index, where they are.
struct Writer {
    log_path: PathBuf,
    log: File,
    index: File,
    size: u64,
    index_size: u64,
    last_record: Option<Instant>,
}

impl Writer {
    fn open(log_path: PathBuf) -> std::io::Result<Writer> {
        let append = |p: &Path| OpenOptions::new().create(true).append(true).open(p);
        let log = append(&log_path)?;
        let index = append(&index_path(&log_path))?;
        let size = log.metadata()?.len();
        let index_size = index.metadata()?.len();
        Ok(Writer {
            log,
            index,
            size,
            index_size,
            log_path,
            last_record: None,
        })
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        let idx = index_path(&self.log_path);
        std::fs::rename(&self.log_path, older(&self.log_path))?;
        std::fs::rename(&idx, index_path(&older(&self.log_path)))?;
        *self = Writer::open(self.log_path.clone())?;
        Ok(())
    }

    fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        if self.size + bytes.len() as u64 > MAX_LOG || self.index_size + RECORD as u64 > MAX_INDEX {
            self.rotate()?;
        }
        let due = self.last_record.is_none_or(|t| t.elapsed() >= INDEX_EVERY);
        if due {
            let mut rec = [0u8; RECORD];
            rec[..8].copy_from_slice(&self.size.to_le_bytes());
            rec[8..].copy_from_slice(&now_ms().to_le_bytes());
            self.index.write_all(&rec)?;
            self.index_size += RECORD as u64;
            self.last_record = Some(Instant::now());
        }
        self.log.write_all(bytes)?;
        self.size += bytes.len() as u64;
        Ok(())
    }
}

/// Copies everything `from` gives into the log at `path` until `from` ends; returns when it has. An error
/// writing the log is reported once on stderr and the rest is read and dropped (the machine must not block on
/// a full pipe).
pub fn copy(mut from: impl Read, path: PathBuf) {
    let mut w = match Writer::open(path.clone()) {
        Ok(w) => Some(w),
        Err(e) => {
            eprintln!("dvs-instance: console log {}: {e}", path.display());
            None
        }
    };
    let mut buf = vec![0u8; 16 << 10];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        if let Some(writer) = w.as_mut() {
            if let Err(e) = writer.write(&buf[..n]) {
                eprintln!("dvs-instance: console log {}: {e}", path.display());
                w = None;
            }
        }
    }
}

/// Appends `bytes` to the log at `path`, timed like a machine's output (the host's own lines: boot banners).
pub fn append(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    Writer::open(path.to_path_buf())?.write(bytes)
}

/// The part of one log file written at or after `since_ms` (Unix ms), from the first whole line.
fn since_in(log: &Path, since_ms: u64) -> std::io::Result<Vec<u8>> {
    let index = match std::fs::read(index_path(log)) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let start = index
        .chunks_exact(RECORD)
        .map(|r| {
            let mut off = [0u8; 8];
            let mut ms = [0u8; 8];
            off.copy_from_slice(&r[..8]);
            ms.copy_from_slice(&r[8..]);
            (u64::from_le_bytes(off), u64::from_le_bytes(ms))
        })
        .find(|&(_, ms)| ms >= since_ms)
        .map(|(off, _)| off);
    let Some(start) = start else {
        return Ok(Vec::new());
    };
    let text = std::fs::read(log)?;
    let start = usize::try_from(start).unwrap_or(usize::MAX).min(text.len());
    // A line that began before `since` is not one of its lines.
    let start = if start == 0 || text[start - 1] == b'\n' {
        start
    } else {
        text[start..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(text.len(), |i| start + i + 1)
    };
    Ok(text[start..].to_vec())
}

/// The lines of the console log at `log` (its rotated copy first) written at or after `since_ms`, Unix
/// milliseconds. Output written before the log was timed (no index) is not included.
pub fn read_since(log: &Path, since_ms: u64) -> std::io::Result<Vec<u8>> {
    let mut out = since_in(&older(log), since_ms)?;
    out.extend(since_in(log, since_ms)?);
    Ok(out)
}

/// Where a reader of a console log got to: the log file (its inode) and how far into it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cursor {
    /// The inode of the log file read.
    pub file: u64,
    /// Bytes of it read.
    pub offset: u64,
}

impl std::fmt::Display for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.file, self.offset)
    }
}

impl std::str::FromStr for Cursor {
    type Err = String;
    fn from_str(s: &str) -> Result<Cursor, String> {
        let (file, offset) = s.split_once('-').ok_or("a cursor is FILE-OFFSET")?;
        Ok(Cursor {
            file: file.parse().map_err(|_| "a cursor's file is a number")?,
            offset: offset
                .parse()
                .map_err(|_| "a cursor's offset is a number")?,
        })
    }
}

/// The whole of one log file and its cursor at the end (empty and file 0 when there is none).
fn read_whole(path: &Path) -> std::io::Result<(Vec<u8>, Cursor)> {
    use std::os::unix::fs::MetadataExt;
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok((Vec::new(), Cursor { file: 0, offset: 0 }))
        }
        Err(e) => return Err(e),
    };
    let file = f.metadata()?.ino();
    let mut bytes = Vec::new();
    f.read_to_end(&mut bytes)?;
    let offset = bytes.len() as u64;
    Ok((bytes, Cursor { file, offset }))
}

/// The whole current log at `log`, and the cursor at its end.
pub fn read_all(log: &Path) -> std::io::Result<(Vec<u8>, Cursor)> {
    read_whole(log)
}

/// What was written to the log at `log` after `from` (also across a rotation since), and the new cursor.
/// If the file `from` names is gone altogether (rotated twice), the whole current log.
pub fn read_after(log: &Path, from: Cursor) -> std::io::Result<(Vec<u8>, Cursor)> {
    let (now, cursor) = read_whole(log)?;
    let rest = |b: &[u8]| {
        b[usize::try_from(from.offset)
            .unwrap_or(usize::MAX)
            .min(b.len())..]
            .to_vec()
    };
    if cursor.file == from.file {
        return Ok((rest(&now), cursor));
    }
    let (old, old_cursor) = read_whole(&older(log))?;
    let mut out = if old_cursor.file == from.file && from.file != 0 {
        rest(&old)
    } else {
        Vec::new()
    };
    out.extend(now);
    Ok((out, cursor))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("dvs-console-log-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn lines_since_a_moment_and_not_before() {
        let d = dir("since");
        let log = d.join("m.log");
        copy(&b"old line\nhalf"[..], log.clone());
        std::thread::sleep(INDEX_EVERY + Duration::from_millis(20));
        let mid = now_ms();
        std::thread::sleep(Duration::from_millis(5));
        copy(&b" of it\nnew line\n"[..], log.clone());
        assert_eq!(
            std::fs::read_to_string(&log).unwrap(),
            "old line\nhalf of it\nnew line\n"
        );
        // The half line began before `mid`: only the line after it is new.
        assert_eq!(read_since(&log, mid).unwrap(), b"new line\n");
        assert_eq!(
            read_since(&log, 0).unwrap(),
            b"old line\nhalf of it\nnew line\n"
        );
        assert!(read_since(&log, now_ms() + 1000).unwrap().is_empty());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_follower_misses_nothing_across_a_rotation() {
        let d = dir("follow");
        let log = d.join("m.log");
        copy(&b"one\n"[..], log.clone());
        let (all, c) = read_all(&log).unwrap();
        assert_eq!(all, b"one\n");
        assert_eq!(c.to_string().parse::<Cursor>(), Ok(c));
        copy(&b"two\n"[..], log.clone());
        let (new, c) = read_after(&log, c).unwrap();
        assert_eq!(new, b"two\n");
        // Fill the log past its bound: it rotates, and the follower gets the end of the old file and the
        // new one.
        let big = vec![b'y'; MAX_LOG as usize - 6];
        copy(&big[..], log.clone());
        copy(&b"three\n"[..], log.clone());
        let (new, c2) = read_after(&log, c).unwrap();
        assert_eq!(new.len(), big.len() + 6);
        assert!(new.ends_with(b"three\n"));
        assert_ne!(c2.file, c.file);
        assert!(read_after(&log, c2).unwrap().0.is_empty());
        assert!("x".parse::<Cursor>().is_err() && "1-x".parse::<Cursor>().is_err());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_log_that_passes_its_bound_is_rotated() {
        let d = dir("rotate");
        let log = d.join("m.log");
        let line = vec![b'x'; 1023]
            .into_iter()
            .chain([b'\n'])
            .collect::<Vec<u8>>();
        let total = (MAX_LOG as usize / line.len()) * 3;
        let all: Vec<u8> = line
            .iter()
            .copied()
            .cycle()
            .take(total * line.len())
            .collect();
        copy(&all[..], log.clone());
        let now = std::fs::metadata(&log).unwrap().len();
        let old = std::fs::metadata(older(&log)).unwrap().len();
        assert!(now <= MAX_LOG && old <= MAX_LOG, "{now} {old}");
        assert!(now > 0 && old > 0);
        assert!(!d.join("m.log.1.1").exists());
        // Both files are timed: everything since the start is the rotated copy and the current log.
        assert!(d.join("m.log.1.idx").exists());
        assert_eq!(read_since(&log, 0).unwrap().len() as u64, now + old);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn no_index_no_lines_and_a_garbage_index_is_harmless() {
        let d = dir("garbage");
        let log = d.join("m.log");
        std::fs::write(&log, "untimed\n").unwrap();
        assert!(read_since(&log, 0).unwrap().is_empty());
        std::fs::write(index_path(&log), [0xffu8; 37]).unwrap();
        // Two records pointing past the end of the log, and a torn one: nothing, and no panic.
        assert!(read_since(&log, 0).unwrap().is_empty());
        let _ = std::fs::remove_dir_all(&d);
    }
}
