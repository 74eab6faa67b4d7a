//! A disk is untrusted input too: metadata blocks with valid CRCs but random contents, and
//! superblocks with valid CRCs but random fields, must be refused (or mounted consistently),
//! never make mount panic or loop.

mod common;

use common::Rng;
use dvs_fs::{FileSystem, Kind, MemDevice, OpenFlags};

fn populated() -> MemDevice {
    let mut fs = FileSystem::format(MemDevice::new(512, 256)).unwrap();
    fs.mkdir("/d").unwrap();
    for (i, name) in ["/a", "/d/b", "/d/c", "/e"].iter().enumerate() {
        let fh = fs.open(name, OpenFlags::CREATE).unwrap();
        fs.write_at(fh, (i * 700) as u64, &vec![i as u8 + 1; 1500])
            .unwrap();
    }
    fs.sync().unwrap();
    fs.into_device()
}

fn reseal(b: &mut [u8]) {
    let crc = crc32fast::hash(&b[8..]);
    b[4..8].copy_from_slice(&crc.to_le_bytes());
}

/// Mounts; if that works, walks the tree reading up to 64 KiB of each file (a damaged size can
/// make a legal sparse file of up to 1 TiB).
fn try_mount(dev: MemDevice) {
    if let Ok((mut fs, _)) = FileSystem::mount(dev) {
        fs.check().expect("a mounted disk passes check");
        let mut todo = vec![String::from("/")];
        let mut buf = vec![0u8; 65536];
        while let Some(dir) = todo.pop() {
            for e in fs.readdir(&dir).expect("readdir of a mounted tree") {
                let p = format!("{}/{}", dir.trim_end_matches('/'), e.name);
                match e.kind {
                    Kind::Dir => todo.push(p),
                    Kind::File => {
                        let fh = fs.open(&p, OpenFlags::EXISTING).expect("open");
                        fs.read_at(fh, 0, &mut buf).expect("read");
                    }
                }
            }
        }
    }
}

#[test]
fn resealed_garbage_in_metadata_never_panics() {
    let dev = populated();
    let meta: Vec<u64> = (2..256)
        .filter(|&b| matches!(&dev.block(b)[0..4], b"DVST" | b"DVSC"))
        .collect();
    assert!(meta.len() >= 5);
    let mut r = Rng(77);
    let mut refused = 0;
    for _ in 0..3000 {
        let mut d = dev.clone();
        let blk = meta[r.below(meta.len() as u64) as usize];
        let mut b = d.block(blk);
        for _ in 0..1 + r.below(4) {
            let at = 8 + r.below(120) as usize;
            b[at] = r.next() as u8;
        }
        reseal(&mut b);
        d.set_block(blk, &b);
        if FileSystem::mount(d.clone()).is_err() {
            refused += 1;
        }
        try_mount(d);
    }
    assert!(
        refused > 1000,
        "only {refused} of 3000 damaged disks refused"
    );
}

#[test]
fn superblocks_with_valid_crc_and_random_fields_never_panic() {
    let dev = populated();
    let mut r = Rng(99);
    for _ in 0..3000 {
        let mut d = dev.clone();
        for slot in 0..2 {
            let mut b = d.block(slot);
            if b[0..8] != *b"dvs-fs\0\x01" {
                continue;
            }
            let at = 12 + r.below(48) as usize;
            b[at] = r.next() as u8;
            if r.chance(1, 3) {
                let v = r.below(300);
                b[32..40].copy_from_slice(&v.to_le_bytes());
            }
            let crc = crc32fast::hash(&b[..60]);
            b[60..64].copy_from_slice(&crc.to_le_bytes());
            d.set_block(slot, &b);
        }
        try_mount(d);
    }
}
