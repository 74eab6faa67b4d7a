//! One test per operation, on a RAM device.

use dvs_fs::{Error, FileSystem, Kind, MemDevice, OpenFlags, MAX_FILE_SIZE};
use embedded_io::{Read, Seek, SeekFrom, Write};

fn fresh(blocks: u64) -> FileSystem<MemDevice> {
    FileSystem::format(MemDevice::new(4096, blocks)).expect("format")
}

fn remount(fs: FileSystem<MemDevice>) -> FileSystem<MemDevice> {
    FileSystem::mount(fs.into_device()).expect("mount").0
}

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn format_then_mount_shows_an_empty_root() {
    let fs = remount(fresh(64));
    assert!(fs.readdir("/").unwrap().is_empty());
    assert_eq!(fs.stat("/").unwrap().kind, Kind::Dir);
    fs.check().unwrap();
}

#[test]
fn blank_disk_is_not_formatted_and_mount_or_format_formats_it_once() {
    assert_eq!(
        FileSystem::mount(MemDevice::new(4096, 64)).err(),
        Some(Error::NotFormatted)
    );
    let (mut fs, formatted) = FileSystem::mount_or_format(MemDevice::new(4096, 64)).unwrap();
    assert!(formatted);
    let fh = fs.open("/a", OpenFlags::CREATE).unwrap();
    fs.write_at(fh, 0, b"x").unwrap();
    fs.fsync(fh).unwrap();
    let (fs, formatted) = FileSystem::mount_or_format(fs.into_device()).unwrap();
    assert!(!formatted);
    assert_eq!(fs.stat("/a").unwrap().size, 1);
}

#[test]
fn create_write_read_back_after_remount() {
    let mut fs = fresh(256);
    let fh = fs.open("/hello.txt", OpenFlags::CREATE_NEW).unwrap();
    let data = pattern(10_000, 3);
    assert_eq!(fs.write_at(fh, 0, &data).unwrap(), data.len());
    fs.fsync(fh).unwrap();
    let mut fs = remount(fs);
    let fh = fs.open("/hello.txt", OpenFlags::EXISTING).unwrap();
    let mut got = vec![0u8; 20_000];
    assert_eq!(fs.read_at(fh, 0, &mut got).unwrap(), 10_000);
    assert_eq!(&got[..10_000], &data[..]);
    assert_eq!(fs.read_at(fh, 10_000, &mut got).unwrap(), 0);
    assert_eq!(fs.read_at(fh, 9_999, &mut got[..5]).unwrap(), 1);
    fs.check().unwrap();
}

#[test]
fn open_flags() {
    let mut fs = fresh(64);
    assert_eq!(fs.open("/x", OpenFlags::EXISTING), Err(Error::NotFound));
    let fh = fs.open("/x", OpenFlags::CREATE_NEW).unwrap();
    fs.write_at(fh, 0, b"abc").unwrap();
    assert_eq!(fs.open("/x", OpenFlags::CREATE_NEW), Err(Error::Exists));
    assert_eq!(fs.open("/x", OpenFlags::CREATE).unwrap(), fh);
    assert_eq!(fs.stat("/x").unwrap().size, 3);
    fs.open("/x", OpenFlags::REPLACE).unwrap();
    assert_eq!(fs.stat("/x").unwrap().size, 0);
    fs.mkdir("/d").unwrap();
    assert_eq!(fs.open("/d", OpenFlags::CREATE), Err(Error::IsDir));
    assert_eq!(fs.open("/x/y", OpenFlags::CREATE), Err(Error::NotDir));
    assert_eq!(fs.open("/nope/y", OpenFlags::CREATE), Err(Error::NotFound));
    assert_eq!(fs.open("/../x", OpenFlags::CREATE), Err(Error::InvalidPath));
    assert_eq!(fs.open("x", OpenFlags::CREATE), Err(Error::InvalidPath));
    assert!(fs.open("/", OpenFlags::CREATE).is_err());
}

#[test]
fn overwrite_in_the_middle_and_sparse_writes() {
    let mut fs = fresh(256);
    let fh = fs.open("/f", OpenFlags::CREATE).unwrap();
    let mut model = pattern(20_000, 1);
    fs.write_at(fh, 0, &model).unwrap();
    fs.fsync(fh).unwrap();
    let patch = pattern(5000, 9);
    fs.write_at(fh, 3000, &patch).unwrap();
    model[3000..8000].copy_from_slice(&patch);
    // A hole from 20_000 to 50_000, then data.
    fs.write_at(fh, 50_000, b"tail").unwrap();
    model.resize(50_000, 0);
    model.extend_from_slice(b"tail");
    let mut fs = {
        fs.fsync(fh).unwrap();
        remount(fs)
    };
    let fh = fs.open("/f", OpenFlags::EXISTING).unwrap();
    let mut got = vec![0u8; model.len()];
    fs.read_at(fh, 0, &mut got).unwrap();
    assert_eq!(got, model);
    fs.check().unwrap();
}

#[test]
fn truncate_shrinks_grows_and_returns_space() {
    let mut fs = fresh(256);
    let fh = fs.open("/f", OpenFlags::CREATE).unwrap();
    fs.write_at(fh, 0, &pattern(100_000, 2)).unwrap();
    fs.fsync(fh).unwrap();
    let used = fs.stats().used;
    fs.truncate(fh, 5000).unwrap();
    fs.truncate(fh, 9000).unwrap();
    let mut got = vec![0xAAu8; 9000];
    fs.read_at(fh, 0, &mut got).unwrap();
    assert_eq!(&got[..5000], &pattern(5000, 2)[..]);
    assert!(
        got[5000..].iter().all(|&b| b == 0),
        "grown part reads zeros"
    );
    fs.fsync(fh).unwrap();
    assert!(fs.stats().used < used - 20, "{} vs {used}", fs.stats().used);
    fs.check().unwrap();
    let fs = remount(fs);
    assert_eq!(fs.stat("/f").unwrap().size, 9000);
}

#[test]
fn mkdir_readdir_stat() {
    let mut fs = fresh(64);
    fs.mkdir("/a").unwrap();
    fs.mkdir("/a/b").unwrap();
    assert_eq!(fs.mkdir("/a"), Err(Error::Exists));
    let fh = fs.open("/a/f", OpenFlags::CREATE).unwrap();
    fs.write_at(fh, 0, b"12345").unwrap();
    // A directory's size is its entry count at once, not only after a remount.
    assert_eq!(fs.stat("/a").unwrap().size, 2);
    assert_eq!(fs.readdir("/").unwrap()[0].size, 2);
    fs.sync().unwrap();
    let fs = remount(fs);
    let list = fs.readdir("/a").unwrap();
    let names: Vec<_> = list
        .iter()
        .map(|e| (e.name.as_str(), e.kind, e.size))
        .collect();
    assert_eq!(names, [("b", Kind::Dir, 0), ("f", Kind::File, 5)]);
    assert_eq!(fs.readdir("/a/f"), Err(Error::NotDir));
    assert_eq!(fs.stat("/a").unwrap().size, 2);
    assert_eq!(fs.stat("/zz"), Err(Error::NotFound));
}

#[test]
fn rename_moves_replaces_and_refuses_cycles() {
    let mut fs = fresh(64);
    fs.mkdir("/a").unwrap();
    fs.mkdir("/a/b").unwrap();
    let f = fs.open("/f", OpenFlags::CREATE).unwrap();
    fs.write_at(f, 0, b"new").unwrap();
    let g = fs.open("/a/g", OpenFlags::CREATE).unwrap();
    fs.write_at(g, 0, b"old").unwrap();
    fs.rename("/f", "/a/g").unwrap();
    assert_eq!(fs.stat("/f"), Err(Error::NotFound));
    assert_eq!(fs.stat("/a/g").unwrap().size, 3);
    assert_eq!(fs.read_at(g, 0, &mut [0; 3]), Err(Error::StaleHandle));
    let mut buf = [0u8; 3];
    fs.read_at(f, 0, &mut buf).unwrap();
    assert_eq!(&buf, b"new");
    assert!(matches!(
        fs.rename("/a", "/a/b/c"),
        Err(Error::Invalid { .. })
    ));
    assert_eq!(fs.rename("/a/g", "/a/b"), Err(Error::Exists));
    fs.rename("/a/b", "/c").unwrap();
    fs.rename("/c", "/c").unwrap();
    let fs = remount(fs);
    assert_eq!(fs.stat("/c").unwrap().kind, Kind::Dir);
    assert_eq!(fs.readdir("/a").unwrap().len(), 1);
    fs.check().unwrap();
}

#[test]
fn unlink_files_and_empty_dirs_only() {
    let mut fs = fresh(64);
    fs.mkdir("/d").unwrap();
    let fh = fs.open("/d/f", OpenFlags::CREATE).unwrap();
    assert_eq!(fs.unlink("/d"), Err(Error::NotEmpty));
    fs.unlink("/d/f").unwrap();
    assert_eq!(fs.fstat(fh), Err(Error::StaleHandle));
    fs.unlink("/d").unwrap();
    assert_eq!(fs.unlink("/d"), Err(Error::NotFound));
    assert!(fs.unlink("/").is_err());
    let fs = remount(fs);
    assert!(fs.readdir("/").unwrap().is_empty());
}

#[test]
fn disk_full_is_no_space_nothing_corrupt_and_unlink_returns_space() {
    let mut fs = fresh(128);
    let chunk = pattern(4096, 5);
    let fh = fs.open("/big", OpenFlags::CREATE).unwrap();
    let mut written = 0u64;
    loop {
        match fs.write_at(fh, written, &chunk) {
            Ok(_) => written += 4096,
            Err(Error::NoSpace) => break,
            Err(e) => panic!("{e}"),
        }
    }
    assert!(written > 64 * 4096);
    fs.fsync(fh).unwrap();
    let other = fs.open("/other", OpenFlags::CREATE).unwrap();
    assert_eq!(fs.write_at(other, 0, &chunk), Err(Error::NoSpace));
    fs.check().unwrap();
    fs.unlink("/big").unwrap();
    fs.write_at(other, 0, &pattern(50 * 4096, 1)).unwrap();
    fs.fsync(other).unwrap();
    let fs = remount(fs);
    assert_eq!(fs.stat("/other").unwrap().size, 50 * 4096);
    fs.check().unwrap();
}

#[test]
fn a_one_gib_file_is_fine_on_a_sparse_disk() {
    let blocks = (2u64 << 30) / 4096;
    let mut fs = FileSystem::format(MemDevice::new(4096, blocks)).unwrap();
    let fh = fs.open("/huge", OpenFlags::CREATE).unwrap();
    let gib = 1u64 << 30;
    fs.write_at(fh, gib - 3, b"abcdef").unwrap();
    fs.write_at(fh, 0, b"start").unwrap();
    fs.fsync(fh).unwrap();
    let mut fs = remount(fs);
    let fh = fs.open("/huge", OpenFlags::EXISTING).unwrap();
    assert_eq!(fs.stat("/huge").unwrap().size, gib + 3);
    let mut b = [0u8; 6];
    fs.read_at(fh, gib - 3, &mut b).unwrap();
    assert_eq!(&b, b"abcdef");
    fs.read_at(fh, 4096 * 1000, &mut b).unwrap();
    assert_eq!(b, [0; 6]);
    assert!(fs.write_at(fh, MAX_FILE_SIZE, b"x").is_err());
}

#[test]
fn a_64_mib_file_streams_in_and_out() {
    let mut fs = fresh((80 << 20) / 4096);
    let fh = fs.open("/m", OpenFlags::CREATE).unwrap();
    let chunk = pattern(1 << 20, 7);
    {
        let mut f = fs.file(fh);
        for _ in 0..64 {
            f.write_all(&chunk).unwrap();
        }
        f.flush().unwrap();
    }
    let st = fs.stat("/m").unwrap();
    assert_eq!(st.size, 64 << 20);
    let mut fs = remount(fs);
    let fh = fs.open("/m", OpenFlags::EXISTING).unwrap();
    let mut f = fs.file(fh);
    f.seek(SeekFrom::Start(63 << 20)).unwrap();
    let mut got = vec![0u8; 1 << 20];
    f.read_exact(&mut got).unwrap();
    assert_eq!(got, chunk);
    assert_eq!(f.read(&mut got).unwrap(), 0);
    assert_eq!(f.seek(SeekFrom::End(-1)).unwrap(), (64 << 20) - 1);
    assert!(f.seek(SeekFrom::Current(-(70 << 20))).is_err());
}

#[test]
fn corrupt_or_foreign_superblocks_are_refused() {
    let mut fs = fresh(64);
    let fh = fs.open("/a", OpenFlags::CREATE).unwrap();
    fs.fsync(fh).unwrap();
    let dev = fs.into_device();
    // Both slots damaged: refused.
    let mut d = dev.clone();
    for s in 0..2 {
        let mut b = d.block(s);
        b[20] ^= 0xFF;
        d.set_block(s, &b);
    }
    assert!(matches!(
        FileSystem::mount(d.clone()),
        Err(Error::Corrupt { .. })
    ));
    assert!(matches!(
        FileSystem::mount_or_format(d),
        Err(Error::Corrupt { .. })
    ));
    // Another version: refused.
    let mut d = dev.clone();
    let mut b = d.block(0);
    b[8] = 2;
    d.set_block(0, &b);
    assert_eq!(
        FileSystem::mount(d).err(),
        Some(Error::UnsupportedVersion {
            found: 2,
            supported: 1
        })
    );
    // A damaged metadata block: refused, naming the block.
    let mut d = dev.clone();
    let (fs, rep) = FileSystem::mount(d.clone()).unwrap();
    assert!(!rep.other_slot_damaged);
    drop(fs);
    // (Every table block, live or stale: the live one is among them.)
    for blk in 2..64 {
        let mut b = d.block(blk);
        if &b[0..4] == b"DVST" {
            b[100] ^= 1;
            d.set_block(blk, &b);
        }
    }
    assert!(matches!(FileSystem::mount(d), Err(Error::Corrupt { .. })));
    // One slot torn: the other is used, and the report says so.
    let mut d = dev;
    let mut b = d.block(0);
    b[30] ^= 1;
    d.set_block(0, &b);
    let (_, rep) = FileSystem::mount(d).unwrap();
    assert!(rep.other_slot_damaged);
}

#[test]
fn io_errors_poison_until_remount() {
    struct Failing {
        inner: MemDevice,
        fail: bool,
    }
    impl dvs_fs::BlockDevice for Failing {
        fn block_size(&self) -> usize {
            self.inner.block_size()
        }
        fn blocks(&self) -> u64 {
            self.inner.blocks()
        }
        fn read_block(&mut self, i: u64, b: &mut [u8]) -> Result<(), dvs_fs::DeviceError> {
            self.inner.read_block(i, b)
        }
        fn write_block(&mut self, i: u64, d: &[u8]) -> Result<(), dvs_fs::DeviceError> {
            if self.fail {
                return Err(dvs_fs::DeviceError::Gone);
            }
            self.inner.write_block(i, d)
        }
        fn flush(&mut self) -> Result<(), dvs_fs::DeviceError> {
            self.inner.flush()
        }
    }
    let mut fs = FileSystem::format(Failing {
        inner: MemDevice::new(4096, 64),
        fail: false,
    })
    .unwrap();
    let fh = fs.open("/a", OpenFlags::CREATE).unwrap();
    fs.fsync(fh).unwrap();
    let mut dev = fs.into_device();
    dev.fail = true;
    let (mut fs, _) = FileSystem::mount(dev).unwrap();
    assert!(matches!(fs.write_at(fh, 0, b"x"), Err(Error::Io { .. })));
    assert_eq!(fs.stat("/a").unwrap().size, 0);
    assert_eq!(fs.read_at(fh, 0, &mut [0]), Err(Error::Poisoned));
}

#[test]
fn contiguous_whole_blocks_move_in_one_device_call() {
    struct Counting {
        inner: MemDevice,
        bulk_reads: u32,
        bulk_writes: u32,
    }
    impl dvs_fs::BlockDevice for Counting {
        fn block_size(&self) -> usize {
            self.inner.block_size()
        }
        fn blocks(&self) -> u64 {
            self.inner.blocks()
        }
        fn read_block(&mut self, i: u64, b: &mut [u8]) -> Result<(), dvs_fs::DeviceError> {
            self.inner.read_block(i, b)
        }
        fn write_block(&mut self, i: u64, d: &[u8]) -> Result<(), dvs_fs::DeviceError> {
            self.inner.write_block(i, d)
        }
        fn flush(&mut self) -> Result<(), dvs_fs::DeviceError> {
            self.inner.flush()
        }
        fn read_blocks(&mut self, i: u64, b: &mut [u8]) -> Result<(), dvs_fs::DeviceError> {
            self.bulk_reads += 1;
            for (k, c) in b.chunks_mut(4096).enumerate() {
                self.inner.read_block(i + k as u64, c)?;
            }
            Ok(())
        }
        fn write_blocks(&mut self, i: u64, d: &[u8]) -> Result<(), dvs_fs::DeviceError> {
            self.bulk_writes += 1;
            for (k, c) in d.chunks(4096).enumerate() {
                self.inner.write_block(i + k as u64, c)?;
            }
            Ok(())
        }
    }
    let mut fs = FileSystem::format(Counting {
        inner: MemDevice::new(4096, 1024),
        bulk_reads: 0,
        bulk_writes: 0,
    })
    .unwrap();
    let fh = fs.open("/m", OpenFlags::CREATE).unwrap();
    let data = pattern(1 << 20, 4);
    fs.write_at(fh, 0, &data).unwrap();
    let mut got = vec![0u8; 1 << 20];
    fs.read_at(fh, 0, &mut got).unwrap();
    assert_eq!(got, data);
    let dev = fs.into_device();
    assert_eq!((dev.bulk_writes, dev.bulk_reads), (1, 1));
}
