//! A bounded, least-recently-used cache of blocks in front of a [`BlockDevice`].
//!
//! The VOS fs server's device is the disk server, one M3-IPC call away (in the same instance or
//! on another node): every block the file system reads costs a call and a vcopy. The file
//! system keeps its metadata in memory, so what it reads is file data; this cache keeps the
//! blocks it read or wrote last, so that a file read again (or read right after it was written)
//! is served from memory.
//!
//! It is **write-through**: every write goes to the device before it returns, in the order the
//! file system issued it, and every flush is the device's flush. The device therefore sees
//! exactly the calls it would see without the cache, minus reads of cached blocks, and the file
//! system's crash safety (which rests on write and flush order) is unchanged. A read hit returns
//! what the last write of that block wrote, which is what the device itself returns. After any
//! device error the whole cache is dropped: what the device holds is not known any more.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use crate::device::BlockDevice;
use crate::error::DeviceError;

/// One cached block.
struct Entry {
    /// Its last use (a key of `lru`).
    tick: u64,
    data: Vec<u8>,
}

/// A write-through LRU block cache over `D` (see the module doc).
pub struct CachedDevice<D: BlockDevice> {
    dev: D,
    capacity: usize,
    blocks: BTreeMap<u64, Entry>,
    /// Last use → block, oldest first.
    lru: BTreeMap<u64, u64>,
    tick: u64,
    /// Blocks read from the cache.
    pub hits: u64,
    /// Blocks read from the device.
    pub misses: u64,
}

impl<D: BlockDevice> CachedDevice<D> {
    /// A cache of at most `capacity` blocks over `dev` (0: no caching at all).
    pub fn new(dev: D, capacity: usize) -> CachedDevice<D> {
        CachedDevice {
            dev,
            capacity,
            blocks: BTreeMap::new(),
            lru: BTreeMap::new(),
            tick: 0,
            hits: 0,
            misses: 0,
        }
    }

    /// The device underneath.
    pub fn device(&self) -> &D {
        &self.dev
    }

    /// The device underneath, mutably (a caller that writes to it directly must call
    /// [`CachedDevice::forget`] first).
    pub fn device_mut(&mut self) -> &mut D {
        &mut self.dev
    }

    /// The device, the cache dropped.
    pub fn into_inner(self) -> D {
        self.dev
    }

    /// Blocks held now.
    pub fn len(&self) -> usize {
        self.blocks.len()
    }

    /// Whether no block is held.
    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }

    /// Drops every cached block.
    pub fn forget(&mut self) {
        self.blocks.clear();
        self.lru.clear();
    }

    /// Copies block `index` into `out` if it is cached (and marks it used).
    fn lookup(&mut self, index: u64, out: &mut [u8]) -> bool {
        let tick = self.tick + 1;
        let Some(e) = self.blocks.get_mut(&index) else {
            return false;
        };
        out.copy_from_slice(&e.data);
        self.lru.remove(&e.tick);
        e.tick = tick;
        self.lru.insert(tick, index);
        self.tick = tick;
        true
    }

    /// Caches `data` as block `index`, evicting the least recently used blocks beyond the
    /// capacity (their buffers are reused).
    fn store(&mut self, index: u64, data: &[u8]) {
        if self.capacity == 0 {
            return;
        }
        self.tick += 1;
        let tick = self.tick;
        if let Some(e) = self.blocks.get_mut(&index) {
            e.data.copy_from_slice(data);
            self.lru.remove(&e.tick);
            e.tick = tick;
            self.lru.insert(tick, index);
            return;
        }
        let mut buf = None;
        while self.blocks.len() >= self.capacity {
            let Some((_, old)) = self.lru.pop_first() else {
                break;
            };
            if let Some(e) = self.blocks.remove(&old) {
                buf = Some(e.data);
            }
        }
        let data = match buf {
            Some(mut b) if b.len() == data.len() => {
                b.copy_from_slice(data);
                b
            }
            _ => data.to_vec(),
        };
        self.blocks.insert(index, Entry { tick, data });
        self.lru.insert(tick, index);
    }

    /// Passes a device result on, dropping the cache if it is an error.
    fn checked<T>(&mut self, r: Result<T, DeviceError>) -> Result<T, DeviceError> {
        if r.is_err() {
            self.forget();
        }
        r
    }
}

impl<D: BlockDevice> BlockDevice for CachedDevice<D> {
    fn block_size(&self) -> usize {
        self.dev.block_size()
    }

    fn blocks(&self) -> u64 {
        self.dev.blocks()
    }

    fn read_block(&mut self, index: u64, buf: &mut [u8]) -> Result<(), DeviceError> {
        if buf.len() == self.dev.block_size() && self.lookup(index, buf) {
            self.hits += 1;
            return Ok(());
        }
        let r = self.dev.read_block(index, buf);
        self.checked(r)?;
        self.misses += 1;
        self.store(index, buf);
        Ok(())
    }

    fn write_block(&mut self, index: u64, data: &[u8]) -> Result<(), DeviceError> {
        let r = self.dev.write_block(index, data);
        self.checked(r)?;
        self.store(index, data);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), DeviceError> {
        let r = self.dev.flush();
        self.checked(r)
    }

    /// Cached blocks are copied; each run of consecutive missing blocks is one device
    /// `read_blocks`.
    fn read_blocks(&mut self, index: u64, buf: &mut [u8]) -> Result<(), DeviceError> {
        let bs = self.dev.block_size();
        if bs == 0 || !buf.len().is_multiple_of(bs) {
            // Let the device refuse it as it would without the cache.
            let r = self.dev.read_blocks(index, buf);
            return self.checked(r);
        }
        let n = buf.len() / bs;
        let mut i = 0;
        while i < n {
            let at = index + i as u64;
            if self.lookup(at, &mut buf[i * bs..(i + 1) * bs]) {
                self.hits += 1;
                i += 1;
                continue;
            }
            // A run of misses: up to the next cached block.
            let start = i;
            i += 1;
            while i < n && !self.blocks.contains_key(&(index + i as u64)) {
                i += 1;
            }
            let r = self
                .dev
                .read_blocks(index + start as u64, &mut buf[start * bs..i * bs]);
            self.checked(r)?;
            self.misses += (i - start) as u64;
            for k in start..i {
                let data = &buf[k * bs..(k + 1) * bs];
                // `store` needs `&mut self` while `data` borrows `buf`, not `self`.
                self.store(index + k as u64, data);
            }
        }
        Ok(())
    }

    fn write_blocks(&mut self, index: u64, data: &[u8]) -> Result<(), DeviceError> {
        let r = self.dev.write_blocks(index, data);
        self.checked(r)?;
        let bs = self.dev.block_size();
        if bs > 0 && data.len().is_multiple_of(bs) {
            for (k, b) in data.chunks(bs).enumerate() {
                self.store(index + k as u64, b);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::MemDevice;
    use crate::{FileSystem, OpenFlags};
    use alloc::vec;
    use proptest::prelude::*;

    const BS: usize = 512;

    /// A device whose calls fail from the `fail_after`-th on.
    struct Failing {
        inner: MemDevice,
        calls: u32,
        fail_after: u32,
    }

    impl Failing {
        fn tick(&mut self) -> Result<(), DeviceError> {
            self.calls += 1;
            if self.calls > self.fail_after {
                Err(DeviceError::Gone)
            } else {
                Ok(())
            }
        }
    }

    impl BlockDevice for Failing {
        fn block_size(&self) -> usize {
            self.inner.block_size()
        }
        fn blocks(&self) -> u64 {
            self.inner.blocks()
        }
        fn read_block(&mut self, i: u64, b: &mut [u8]) -> Result<(), DeviceError> {
            self.tick()?;
            self.inner.read_block(i, b)
        }
        fn write_block(&mut self, i: u64, d: &[u8]) -> Result<(), DeviceError> {
            self.tick()?;
            self.inner.write_block(i, d)
        }
        fn flush(&mut self) -> Result<(), DeviceError> {
            self.tick()?;
            self.inner.flush()
        }
    }

    #[derive(Clone, Debug)]
    enum Op {
        Read(u64, u8),
        Write(u64, u8, u8),
        Flush,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u64..40, 1u8..6).prop_map(|(i, n)| Op::Read(i, n)),
            (0u64..40, 1u8..6, any::<u8>()).prop_map(|(i, n, v)| Op::Write(i, n, v)),
            Just(Op::Flush),
        ]
    }

    proptest! {
        /// Whatever the calls, the cache answers every read exactly as the bare device does,
        /// and the device underneath ends up holding the same bytes.
        #[test]
        fn reads_and_writes_match_the_bare_device(
            ops in proptest::collection::vec(op(), 1..200),
            capacity in 0usize..12,
        ) {
            let mut bare = MemDevice::new(BS, 48);
            let mut cached = CachedDevice::new(MemDevice::new(BS, 48), capacity);
            for op in ops {
                match op {
                    Op::Read(i, n) => {
                        let mut a = vec![0u8; BS * n as usize];
                        let mut b = a.clone();
                        let ra = bare.read_blocks(i, &mut a);
                        let rb = cached.read_blocks(i, &mut b);
                        prop_assert_eq!(ra.is_ok(), rb.is_ok());
                        if ra.is_ok() {
                            prop_assert_eq!(a, b);
                        }
                    }
                    Op::Write(i, n, v) => {
                        let data: Vec<u8> = (0..BS * n as usize).map(|k| v ^ k as u8).collect();
                        prop_assert_eq!(
                            bare.write_blocks(i, &data).is_ok(),
                            cached.write_blocks(i, &data).is_ok()
                        );
                    }
                    Op::Flush => {
                        prop_assert!(bare.flush().is_ok() && cached.flush().is_ok());
                    }
                }
                prop_assert!(cached.len() <= capacity);
            }
            for i in 0..48 {
                prop_assert_eq!(bare.block(i), cached.device().block(i));
            }
        }
    }

    #[test]
    fn a_block_read_twice_is_read_from_the_device_once() {
        let mut c = CachedDevice::new(MemDevice::new(BS, 16), 4);
        let mut b = vec![0u8; BS * 3];
        c.read_blocks(2, &mut b).unwrap();
        c.read_blocks(2, &mut b).unwrap();
        assert_eq!((c.misses, c.hits), (3, 3));
        // A written block is served from the cache too.
        c.write_block(9, &[7u8; BS]).unwrap();
        let mut one = vec![0u8; BS];
        c.read_block(9, &mut one).unwrap();
        assert_eq!(one, vec![7u8; BS]);
        assert_eq!(c.hits, 4);
        // The oldest go first: 4 blocks held at most.
        assert_eq!(c.len(), 4);
    }

    #[test]
    fn a_device_error_drops_the_cache() {
        let dev = Failing {
            inner: MemDevice::new(BS, 16),
            calls: 0,
            fail_after: 3,
        };
        let mut c = CachedDevice::new(dev, 8);
        let mut b = vec![0u8; BS];
        c.read_block(1, &mut b).unwrap();
        c.read_block(2, &mut b).unwrap();
        assert_eq!(c.len(), 2);
        c.flush().unwrap();
        assert!(c.flush().is_err());
        assert!(c.is_empty());
    }

    /// The file system on the cache: a file written, synced and read back; the cache serves
    /// the reread, and a fresh mount of the device underneath sees the same file.
    #[test]
    fn the_file_system_runs_on_the_cache() {
        let dev = CachedDevice::new(MemDevice::new(4096, 512), 64);
        let mut fs = FileSystem::format(dev).unwrap();
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7) as u8).collect();
        let fh = fs.open("/f", OpenFlags::CREATE).expect("create /f");
        fs.write_at(fh, 0, &data).unwrap();
        fs.fsync(fh).unwrap();
        let mut back = vec![0u8; data.len()];
        assert_eq!(fs.read_at(fh, 0, &mut back).unwrap(), data.len());
        assert_eq!(back, data);
        let dev = fs.into_device();
        assert!(dev.hits > 0, "the reread came from the device");
        let (mut fs, _) = FileSystem::mount(dev.into_inner()).unwrap();
        let fh = fs.open("/f", OpenFlags::EXISTING).unwrap();
        let mut back = vec![0u8; data.len()];
        assert_eq!(fs.read_at(fh, 0, &mut back).unwrap(), data.len());
        assert_eq!(back, data);
    }
}
