//! `embedded-io` Read / Write / Seek over an open file, for code that streams (the http server).

use crate::device::BlockDevice;
use crate::error::Error;
use crate::fs::{FileHandle, FileSystem};
use embedded_io::{ErrorType, Read, Seek, SeekFrom, Write};

/// An open file with a position, borrowing the file system. `flush` is `fsync`.
pub struct File<'a, D: BlockDevice> {
    fs: &'a mut FileSystem<D>,
    fh: FileHandle,
    pos: u64,
}

impl<'a, D: BlockDevice> File<'a, D> {
    pub(crate) fn new(fs: &'a mut FileSystem<D>, fh: FileHandle) -> Self {
        File { fs, fh, pos: 0 }
    }

    /// The handle this view is over.
    pub fn handle(&self) -> FileHandle {
        self.fh
    }

    /// The current position.
    pub fn position(&self) -> u64 {
        self.pos
    }
}

impl<D: BlockDevice> ErrorType for File<'_, D> {
    type Error = Error;
}

impl<D: BlockDevice> Read for File<'_, D> {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, Error> {
        let n = self.fs.read_at(self.fh, self.pos, buf)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl<D: BlockDevice> Write for File<'_, D> {
    fn write(&mut self, buf: &[u8]) -> Result<usize, Error> {
        let n = self.fs.write_at(self.fh, self.pos, buf)?;
        self.pos += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> Result<(), Error> {
        self.fs.fsync(self.fh)
    }
}

impl<D: BlockDevice> Seek for File<'_, D> {
    fn seek(&mut self, pos: SeekFrom) -> Result<u64, Error> {
        let size = self.fs.fstat(self.fh)?.size;
        let bad = Error::Invalid {
            what: "seek before the start or past the largest file",
        };
        let new = match pos {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => size.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        }
        .filter(|&p| p <= crate::fs::MAX_FILE_SIZE)
        .ok_or(bad)?;
        self.pos = new;
        Ok(new)
    }
}
