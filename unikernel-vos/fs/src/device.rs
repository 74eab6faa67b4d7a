//! The block device the file system runs on, and an in-memory one for tests and RAM disks.

use crate::error::DeviceError;
use alloc::vec;
use alloc::vec::Vec;

/// A device of fixed-size blocks. The file system's only contract with the disk below it.
///
/// Durability contract: a `write_block` that returned may still sit in a volatile cache; only a
/// returned `flush` makes every write before it durable. Writes between two flushes may reach the
/// medium in any order, and a power cut may tear the block being written. The file system relies on
/// nothing more (see README.md, "Commit protocol").
pub trait BlockDevice {
    /// Bytes per block: a power of two from 512 to 65536; 4096 for the VOS disk server.
    fn block_size(&self) -> usize;
    /// The device's size in blocks.
    fn blocks(&self) -> u64;
    /// Reads block `index` into `buf` (`buf.len() == block_size()`).
    fn read_block(&mut self, index: u64, buf: &mut [u8]) -> Result<(), DeviceError>;
    /// Writes `data` (`data.len() == block_size()`) to block `index`.
    fn write_block(&mut self, index: u64, data: &[u8]) -> Result<(), DeviceError>;
    /// Makes every write that returned before this call durable.
    fn flush(&mut self) -> Result<(), DeviceError>;

    /// Reads `buf.len() / block_size()` consecutive blocks from `index` (`buf.len()` a multiple
    /// of the block size). The default reads one block at a time; a device with a cheaper bulk
    /// path (the disk server's client: one request moves up to 256 KiB) overrides it.
    fn read_blocks(&mut self, index: u64, buf: &mut [u8]) -> Result<(), DeviceError> {
        let bs = self.block_size();
        for (i, b) in buf.chunks_mut(bs).enumerate() {
            self.read_block(index + i as u64, b)?;
        }
        Ok(())
    }

    /// Writes `data` (a multiple of the block size) to consecutive blocks from `index`; the
    /// same durability as that many `write_block` calls (any of them may be lost or torn by a
    /// power cut before the next flush). The default writes one block at a time.
    fn write_blocks(&mut self, index: u64, data: &[u8]) -> Result<(), DeviceError> {
        let bs = self.block_size();
        for (i, b) in data.chunks(bs).enumerate() {
            self.write_block(index + i as u64, b)?;
        }
        Ok(())
    }
}

impl<T: BlockDevice + ?Sized> BlockDevice for &mut T {
    fn block_size(&self) -> usize {
        (**self).block_size()
    }
    fn blocks(&self) -> u64 {
        (**self).blocks()
    }
    fn read_block(&mut self, index: u64, buf: &mut [u8]) -> Result<(), DeviceError> {
        (**self).read_block(index, buf)
    }
    fn write_block(&mut self, index: u64, data: &[u8]) -> Result<(), DeviceError> {
        (**self).write_block(index, data)
    }
    fn flush(&mut self) -> Result<(), DeviceError> {
        (**self).flush()
    }
    fn read_blocks(&mut self, index: u64, buf: &mut [u8]) -> Result<(), DeviceError> {
        (**self).read_blocks(index, buf)
    }
    fn write_blocks(&mut self, index: u64, data: &[u8]) -> Result<(), DeviceError> {
        (**self).write_blocks(index, data)
    }
}

/// A device held in RAM, every write immediately "durable". Blocks never written read as zeros
/// and take no memory, so a test can make a multi-GiB sparse disk.
#[derive(Clone, Debug)]
pub struct MemDevice {
    block_size: usize,
    blocks: u64,
    data: alloc::collections::BTreeMap<u64, Vec<u8>>,
    /// Block writes so far.
    pub writes: u64,
    /// Flushes so far.
    pub flushes: u64,
}

impl MemDevice {
    /// A zeroed device of `blocks` blocks of `block_size` bytes.
    pub fn new(block_size: usize, blocks: u64) -> MemDevice {
        MemDevice {
            block_size,
            blocks,
            data: alloc::collections::BTreeMap::new(),
            writes: 0,
            flushes: 0,
        }
    }

    /// The contents of block `index` (zeros if never written or out of range).
    pub fn block(&self, index: u64) -> Vec<u8> {
        self.data
            .get(&index)
            .cloned()
            .unwrap_or_else(|| vec![0; self.block_size])
    }

    /// Overwrites block `index` directly (tests use it to corrupt a disk).
    pub fn set_block(&mut self, index: u64, data: &[u8]) {
        let mut b = vec![0; self.block_size];
        let n = data.len().min(self.block_size);
        b[..n].copy_from_slice(&data[..n]);
        self.data.insert(index, b);
    }

    /// Blocks that hold data (were ever written).
    pub fn resident_blocks(&self) -> usize {
        self.data.len()
    }

    fn check(&self, index: u64, len: usize) -> Result<(), DeviceError> {
        if index >= self.blocks {
            return Err(DeviceError::OutOfRange {
                block: index,
                blocks: self.blocks,
            });
        }
        if len != self.block_size {
            return Err(DeviceError::BadLength {
                len,
                block_size: self.block_size,
            });
        }
        Ok(())
    }
}

impl BlockDevice for MemDevice {
    fn block_size(&self) -> usize {
        self.block_size
    }
    fn blocks(&self) -> u64 {
        self.blocks
    }
    fn read_block(&mut self, index: u64, buf: &mut [u8]) -> Result<(), DeviceError> {
        self.check(index, buf.len())?;
        match self.data.get(&index) {
            Some(b) => buf.copy_from_slice(b),
            None => buf.fill(0),
        }
        Ok(())
    }
    fn write_block(&mut self, index: u64, data: &[u8]) -> Result<(), DeviceError> {
        self.check(index, data.len())?;
        self.writes += 1;
        match self.data.get_mut(&index) {
            Some(b) => b.copy_from_slice(data),
            None => {
                self.data.insert(index, data.to_vec());
            }
        }
        Ok(())
    }
    fn flush(&mut self) -> Result<(), DeviceError> {
        self.flushes += 1;
        Ok(())
    }
}
