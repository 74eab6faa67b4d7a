//! Test 3 of issue 10: power cuts at thousands of seeded points.
//!
//! A workload of random operations runs once on a device that never fails (the reference run),
//! recording the model tree at every commit. Then, for every cut point N, it runs again on a
//! device that loses power at its N-th block write: writes since the last flush sit in a volatile
//! cache, and at the cut a random subset of them reaches the medium, in any order, and the write
//! being made may be torn at any byte. The medium is then mounted afresh and must show:
//! - a mount that succeeds (the mount walks and checks the whole tree: magic and CRC of every
//!   metadata block, every block referenced once, the used count, every inode reachable once),
//!   and an allocator equal to the referenced set (`check`);
//! - exactly the tree of the last commit that returned, or of the commit that was under way at
//!   the cut — every file fsync'd before the cut with exactly its fsync'd content, nothing else;
//! - a file system that keeps working: a new file written, fsync'd and read back after remount.

mod common;

use common::{fs_apply, model_apply, random_op, snapshot, Op, Rng, Tree};
use dvs_fs::{BlockDevice, CachedDevice, DeviceError, Error, FileSystem, MemDevice, OpenFlags};
use std::collections::BTreeMap;
use std::time::Instant;

/// A device with a volatile write cache that loses power after a given number of block writes.
struct CutDevice {
    durable: MemDevice,
    cache: Vec<(u64, Vec<u8>)>,
    cached: BTreeMap<u64, usize>,
    fuel: u64,
    writes: u64,
    cut: bool,
    rng: Rng,
    tear: bool,
}

impl CutDevice {
    fn new(bs: usize, blocks: u64, fuel: u64, seed: u64, tear: bool) -> Self {
        CutDevice {
            durable: MemDevice::new(bs, blocks),
            cache: Vec::new(),
            cached: BTreeMap::new(),
            fuel,
            writes: 0,
            cut: false,
            rng: Rng(seed | 1),
            tear,
        }
    }

    /// The power goes: some of the cached writes land (in any order, so the later of two writes
    /// to one block may be the one lost), and the write in progress may land torn.
    fn lose_power(&mut self, in_flight: Option<(u64, &[u8])>) {
        self.cut = true;
        let cache = std::mem::take(&mut self.cache);
        let mut order: Vec<usize> = (0..cache.len()).collect();
        for i in (1..order.len()).rev() {
            let j = self.rng.below(i as u64 + 1) as usize;
            order.swap(i, j);
        }
        for i in order {
            if self.rng.chance(1, 2) {
                let (b, d) = &cache[i];
                self.durable.set_block(*b, d);
            }
        }
        if let Some((b, d)) = in_flight {
            if self.tear && self.rng.chance(1, 2) {
                let mut old = self.durable.block(b);
                let at = self.rng.below(d.len() as u64) as usize;
                old[..at].copy_from_slice(&d[..at]);
                self.durable.set_block(b, &old);
            }
        }
        self.cached.clear();
    }
}

impl BlockDevice for CutDevice {
    fn block_size(&self) -> usize {
        self.durable.block_size()
    }
    fn blocks(&self) -> u64 {
        self.durable.blocks()
    }
    fn read_block(&mut self, index: u64, buf: &mut [u8]) -> Result<(), DeviceError> {
        if self.cut {
            return Err(DeviceError::Gone);
        }
        match self.cached.get(&index) {
            Some(&i) => {
                buf.copy_from_slice(&self.cache[i].1);
                Ok(())
            }
            None => self.durable.read_block(index, buf),
        }
    }
    fn write_block(&mut self, index: u64, data: &[u8]) -> Result<(), DeviceError> {
        if self.cut {
            return Err(DeviceError::Gone);
        }
        if index >= self.blocks() || data.len() != self.block_size() {
            return Err(DeviceError::OutOfRange {
                block: index,
                blocks: self.blocks(),
            });
        }
        if self.fuel == 0 {
            self.lose_power(Some((index, data)));
            return Err(DeviceError::Gone);
        }
        self.fuel -= 1;
        self.writes += 1;
        self.cached.insert(index, self.cache.len());
        self.cache.push((index, data.to_vec()));
        Ok(())
    }
    fn flush(&mut self) -> Result<(), DeviceError> {
        if self.cut {
            return Err(DeviceError::Gone);
        }
        for (b, d) in self.cache.drain(..) {
            self.durable.set_block(b, &d);
        }
        self.cached.clear();
        Ok(())
    }
}

struct Workload {
    bs: usize,
    blocks: u64,
    ops: Vec<Op>,
}

/// What the reference run saw: the generation before and after each op, and the tree of each
/// generation.
struct Reference {
    writes: u64,
    gen_before: Vec<u64>,
    gen_after: Vec<u64>,
    trees: BTreeMap<u64, Tree>,
}

fn reference(w: &Workload) -> Reference {
    let dev = CutDevice::new(w.bs, w.blocks, u64::MAX, 1, false);
    let mut fs = FileSystem::format(dev).expect("reference format");
    let mut model = Tree::new();
    let mut trees = BTreeMap::new();
    let (mut gen_before, mut gen_after) = (Vec::new(), Vec::new());
    trees.insert(fs.stats().generation, Tree::new());
    for (i, op) in w.ops.iter().enumerate() {
        gen_before.push(fs.stats().generation);
        let mut next = model.clone();
        let want = model_apply(&mut next, op);
        let got = fs_apply(&mut fs, op);
        match (&want, &got) {
            (Ok(()), Err(Error::NoSpace)) if !op.commits() => {}
            _ => {
                assert_eq!(got, want, "reference op {i} {op:?}");
                model = next;
            }
        }
        let g = fs.stats().generation;
        gen_after.push(g);
        if g != gen_before[i] {
            assert_eq!(g, gen_before[i] + 1, "one commit per op");
            assert_eq!(snapshot(&mut fs), model, "fs and model at generation {g}");
            trees.insert(g, model.clone());
        }
    }
    fs.check().expect("reference check");
    Reference {
        writes: fs.into_device().writes,
        gen_before,
        gen_after,
        trees,
    }
}

/// Runs the workload with power lost at write `cut`; checks what the disk holds afterwards.
/// Returns the generation found and the generations that were allowed, or `None` if the cut
/// point lies past the workload.
/// The workload on `fs` until an op fails because of the cut: the generations the disk may then
/// hold (the last one that returned, and the one under way). None: format itself was cut (the
/// `cut_during_format_*` test covers that); `Some(None)`: no op failed.
fn until_cut<D: BlockDevice>(
    fs: Result<FileSystem<D>, Error>,
    w: &Workload,
    r: &Reference,
) -> Option<Option<Vec<u64>>> {
    let mut fs = match fs {
        Ok(fs) => fs,
        Err(e) => {
            assert!(matches!(e, Error::Io { .. }), "format: {e}");
            return None;
        }
    };
    for (i, op) in w.ops.iter().enumerate() {
        if let Err(Error::Io { .. }) | Err(Error::Poisoned) = fs_apply(&mut fs, op) {
            let mut a = vec![r.gen_before[i]];
            if r.gen_after[i] != r.gen_before[i] {
                a.push(r.gen_after[i]);
            }
            return Some(Some(a));
        }
    }
    Some(None)
}

/// One run cut after `cut` writes; with `cache` > 0 the file system runs on a block cache of
/// that many blocks over the cut device (the VOS fs server's arrangement), which must not
/// change what survives.
fn cut_run(
    w: &Workload,
    r: &Reference,
    cut: u64,
    seed: u64,
    cache: usize,
) -> Option<(u64, Vec<u64>)> {
    let mut dev = CutDevice::new(w.bs, w.blocks, cut, seed, true);
    let allowed = if cache == 0 {
        until_cut(FileSystem::format(&mut dev), w, r)?
    } else {
        until_cut(FileSystem::format(CachedDevice::new(&mut dev, cache)), w, r)?
    };
    assert_eq!(
        dev.cut,
        allowed.is_some(),
        "an op failed without a cut, or a cut was not seen"
    );
    let allowed = allowed?;
    let g = check_after(r, dev.durable, &allowed, cut, seed);
    Some((g, allowed))
}

fn check_after(r: &Reference, disk: MemDevice, allowed: &[u64], cut: u64, seed: u64) -> u64 {
    let ctx = format!("cut at write {cut} (seed {seed}), allowed generations {allowed:?}");
    let (mut fs, rep) = match FileSystem::mount(disk) {
        Ok(x) => x,
        Err(e) => panic!("{ctx}: mount failed: {e}"),
    };
    fs.check().unwrap_or_else(|e| panic!("{ctx}: check: {e}"));
    assert!(
        allowed.contains(&rep.generation),
        "{ctx}: mounted generation {}",
        rep.generation
    );
    let want = &r.trees[&rep.generation];
    let got = snapshot(&mut fs);
    assert!(
        &got == want,
        "{ctx}: tree differs from generation {}",
        rep.generation
    );
    // The recovered file system keeps working, and its next commit survives a remount.
    let fh = fs
        .open("/after-the-cut", OpenFlags::CREATE)
        .unwrap_or_else(|e| panic!("{ctx}: create after cut: {e}"));
    match fs.write_at(fh, 0, b"still works") {
        Ok(_) | Err(Error::NoSpace) => {}
        Err(e) => panic!("{ctx}: write after cut: {e}"),
    }
    fs.fsync(fh)
        .unwrap_or_else(|e| panic!("{ctx}: fsync after cut: {e}"));
    let size = fs.stat("/after-the-cut").map(|s| s.size).unwrap_or(0);
    let (mut fs, _) =
        FileSystem::mount(fs.into_device()).unwrap_or_else(|e| panic!("{ctx}: second mount: {e}"));
    let mut got = snapshot(&mut fs);
    let after = got.remove("/after-the-cut");
    assert_eq!(&got, want, "{ctx}: tree changed by the post-cut commit");
    assert_eq!(
        after,
        Some(common::Node::File(b"still works"[..size as usize].to_vec())),
        "{ctx}"
    );
    rep.generation
}

fn workload(seed: u64, bs: usize, blocks: u64, ops: usize) -> Workload {
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    Workload {
        bs,
        blocks,
        ops: [
            Op::Mkdir { path: 2 },
            Op::Mkdir { path: 3 },
            Op::Mkdir { path: 6 },
        ]
        .into_iter()
        .chain((0..ops).map(|_| random_op(&mut rng, bs as u64)))
        .collect(),
    }
}

/// Cuts at every write of the workload, `tries` times each with its own cache and tear seed.
fn every_cut_point(w: &Workload, seed: u64, tries: u64) -> (u64, u64, u64) {
    let r = reference(w);
    let (mut runs, mut landed) = (0, 0);
    for cut in 0..=r.writes {
        for t in 0..tries {
            let s = seed.wrapping_mul(1_000_003).wrapping_add(cut * 16 + t);
            // Every other try runs on a small block cache (evictions all the time).
            let cache = if t % 2 == 1 { 8 } else { 0 };
            if let Some((g, allowed)) = cut_run(w, &r, cut, s, cache) {
                runs += 1;
                if allowed.len() == 2 && g == allowed[1] {
                    landed += 1;
                }
            }
        }
    }
    (r.writes, runs, landed)
}

#[test]
fn cut_during_format_leaves_a_blank_disk_or_an_empty_tree() {
    for cut in 0..4 {
        for seed in 0..8 {
            let mut dev = CutDevice::new(512, 64, cut, seed, true);
            let r = FileSystem::format(&mut dev);
            assert!(r.is_err(), "format with {cut} writes of fuel");
            drop(r);
            match FileSystem::mount(dev.durable.clone()) {
                Err(Error::NotFormatted) => {}
                Ok((mut fs, _)) => assert!(snapshot(&mut fs).is_empty()),
                Err(e) => panic!("cut {cut} seed {seed}: {e}"),
            }
            let (fs, _) = FileSystem::mount_or_format(dev.durable).expect("format after cut");
            fs.check().unwrap();
        }
    }
}

#[test]
fn power_cut_at_every_write_of_random_workloads() {
    let start = Instant::now();
    let mut total_runs = 0;
    let mut summary = Vec::new();
    // (seed, block size, blocks, ops): small blocks make multi-block records and a full disk likely.
    let configs = [
        (1u64, 512usize, 96u64, 700usize),
        (2, 512, 48, 700),
        (3, 4096, 64, 600),
        (4, 512, 400, 700),
        (5, 4096, 40, 600),
        (6, 1024, 128, 700),
    ];
    // DVS_FS_POWERCUT_SOAK=N adds N more workloads (seeds 100..100+N) for a longer soak run.
    let soak: u64 = std::env::var("DVS_FS_POWERCUT_SOAK")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let sizes = [(512usize, 64u64), (1024, 96), (4096, 48), (512, 300)];
    let extra = (100..100 + soak).map(|s| {
        let (bs, blocks) = sizes[(s % 4) as usize];
        (s, bs, blocks, 700usize)
    });
    let configs: Vec<_> = configs.into_iter().chain(extra).collect();
    for &(seed, bs, blocks, ops) in &configs {
        let w = workload(seed, bs, blocks, ops);
        let (writes, runs, landed) = every_cut_point(&w, seed, 2);
        total_runs += runs;
        summary.push(format!(
            "seed {seed}, {bs}-byte blocks, {blocks} blocks, {ops} ops: {writes} writes, {runs} cuts; \
             the commit under way landed in {landed}, the one before stood in {}",
            runs - landed
        ));
    }
    for s in &summary {
        println!("{s}");
    }
    println!("{total_runs} cut points checked in {:?}", start.elapsed());
    assert!(total_runs >= 2000, "only {total_runs} cut points");
}
