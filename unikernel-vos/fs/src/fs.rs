//! The file system: namespace and data operations in memory, a copy-on-write commit to disk.

use crate::device::BlockDevice;
use crate::error::{Error, Result};
use crate::format::{self, Slot, Superblock};
use crate::path;
use alloc::collections::{BTreeMap, BTreeSet};
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;

/// The largest file: 1 TiB (well past the 1 GiB the VOS needs; file block numbers are `u32`).
pub const MAX_FILE_SIZE: u64 = 1 << 40;
/// The smallest device the format accepts, in blocks.
pub const MIN_BLOCKS: u64 = 16;

/// What an inode is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
}

/// A capability for an open file: its inode and the serial it was born with, so that a handle to
/// a removed file never reaches a later file given the same inode number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FileHandle {
    ino: u32,
    serial: u64,
}

impl FileHandle {
    /// The inode number.
    pub fn ino(&self) -> u32 {
        self.ino
    }
    /// The inode's serial (unique over the file system's life).
    pub fn serial(&self) -> u64 {
        self.serial
    }
}

/// How [`FileSystem::open`] treats a missing or existing file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpenFlags {
    /// Create the file if it does not exist.
    pub create: bool,
    /// With `create`: fail with `Exists` if it does exist.
    pub exclusive: bool,
    /// Cut an existing file to length 0.
    pub truncate: bool,
}

impl OpenFlags {
    /// Open an existing file.
    pub const EXISTING: OpenFlags = OpenFlags {
        create: false,
        exclusive: false,
        truncate: false,
    };
    /// Open or create.
    pub const CREATE: OpenFlags = OpenFlags {
        create: true,
        exclusive: false,
        truncate: false,
    };
    /// Create a new file; `Exists` if there is one.
    pub const CREATE_NEW: OpenFlags = OpenFlags {
        create: true,
        exclusive: true,
        truncate: false,
    };
    /// Open or create, and cut to length 0 (an HTTP PUT).
    pub const REPLACE: OpenFlags = OpenFlags {
        create: true,
        exclusive: false,
        truncate: true,
    };
}

/// What [`FileSystem::stat`] reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stat {
    /// File or directory.
    pub kind: Kind,
    /// Bytes for a file, entries for a directory.
    pub size: u64,
    /// Data blocks the file holds (holes take none).
    pub blocks: u64,
    /// The inode number.
    pub ino: u32,
    /// The inode's serial.
    pub serial: u64,
}

/// One entry of [`FileSystem::readdir`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    /// The name.
    pub name: String,
    /// File or directory.
    pub kind: Kind,
    /// Bytes for a file, entries for a directory.
    pub size: u64,
}

/// Space and state of a mounted file system.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FsStats {
    /// Bytes per block.
    pub block_size: usize,
    /// Blocks in the file system.
    pub blocks: u64,
    /// Blocks the current tree uses (metadata and superblocks included).
    pub used: u64,
    /// Blocks a data write can take now (the metadata reserve and not-yet-committed frees excluded).
    pub available: u64,
    /// Blocks freed since the last commit; they become available when it lands.
    pub pending_free: u64,
    /// Blocks kept for metadata so that a commit (and so an unlink) never fails on a full disk.
    pub reserve: u64,
    /// Inodes in the tree.
    pub inodes: u32,
    /// Generation of the last durable commit.
    pub generation: u64,
    /// True if there are changes since that commit.
    pub dirty: bool,
}

/// What [`FileSystem::mount`] found besides the tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountReport {
    /// The generation mounted.
    pub generation: u64,
    /// The slot it was read from (0 or 1).
    pub slot: u64,
    /// The other slot was unusable (torn or damaged); the expected state after a power cut during
    /// a commit. Logged by the server, never rewritten at mount (the next commit overwrites it).
    pub other_slot_damaged: bool,
}

#[derive(Clone, Debug)]
struct Inode {
    kind: Kind,
    serial: u64,
    parent: u32,
    size: u64,
    /// File block → (device block, run length), non-overlapping, merged when contiguous.
    extents: BTreeMap<u32, (u64, u32)>,
    /// Directory entries.
    entries: BTreeMap<String, u32>,
    /// The blocks of this inode's record chain in the committed tree.
    chain: Vec<u64>,
    dirty: bool,
}

impl Inode {
    fn new(kind: Kind, serial: u64, parent: u32) -> Inode {
        Inode {
            kind,
            serial,
            parent,
            size: 0,
            extents: BTreeMap::new(),
            entries: BTreeMap::new(),
            chain: Vec::new(),
            dirty: true,
        }
    }

    fn lookup(&self, lb: u32) -> Option<u64> {
        let (&s, &(p, l)) = self.extents.range(..=lb).next_back()?;
        if u64::from(lb) < u64::from(s) + u64::from(l) {
            Some(p + u64::from(lb - s))
        } else {
            None
        }
    }

    /// Bytes for a file, entries for a directory (counted now, not as last loaded).
    fn reported_size(&self) -> u64 {
        match self.kind {
            Kind::Dir => self.entries.len() as u64,
            _ => self.size,
        }
    }

    fn data_blocks(&self) -> u64 {
        self.extents.values().map(|&(_, l)| u64::from(l)).sum()
    }

    /// Unmaps file blocks `[from, to)`; returns the device runs that were mapped there.
    fn unmap(&mut self, from: u64, to: u64) -> Vec<(u64, u64)> {
        let mut freed = Vec::new();
        let upper = to.min(u64::from(u32::MAX) + 1);
        let keys: Vec<u32> = self
            .extents
            .range(..)
            .rev()
            .skip_while(|(&s, _)| u64::from(s) >= upper)
            .take_while(|(&s, &(_, l))| u64::from(s) + u64::from(l) > from)
            .map(|(&s, _)| s)
            .collect();
        for s in keys {
            let Some((p, l)) = self.extents.remove(&s) else {
                continue;
            };
            let (s64, end) = (u64::from(s), u64::from(s) + u64::from(l));
            let cut_from = s64.max(from);
            let cut_to = end.min(upper);
            if s64 < cut_from {
                self.extents.insert(s, (p, (cut_from - s64) as u32));
            }
            if end > cut_to {
                self.extents
                    .insert(cut_to as u32, (p + (cut_to - s64), (end - cut_to) as u32));
            }
            freed.push((p + (cut_from - s64), cut_to - cut_from));
        }
        freed
    }

    /// Maps file block `lb` to device block `phys` (which must be unmapped first).
    fn map(&mut self, lb: u32, phys: u64) {
        let (mut start, mut p, mut len) = (lb, phys, 1u32);
        if let Some((&s, &(pp, l))) = self.extents.range(..lb).next_back() {
            if u64::from(s) + u64::from(l) == u64::from(lb)
                && pp + u64::from(l) == phys
                && l < u32::MAX
            {
                start = s;
                p = pp;
                len = l + 1;
                self.extents.remove(&s);
            }
        }
        if let Some(next) = lb.checked_add(1) {
            if let Some(&(np, nl)) = self.extents.get(&next) {
                if phys + 1 == np && u64::from(len) + u64::from(nl) <= u64::from(u32::MAX) {
                    len += nl;
                    self.extents.remove(&next);
                }
            }
        }
        self.extents.insert(start, (p, len));
    }
}

/// A bitmap of device blocks.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Bitmap(Vec<u64>);

impl Bitmap {
    fn new(bits: u64) -> Bitmap {
        Bitmap(vec![0; bits.div_ceil(64) as usize])
    }
    fn get(&self, i: u64) -> bool {
        self.0[(i / 64) as usize] & (1 << (i % 64)) != 0
    }
    fn set(&mut self, i: u64) {
        self.0[(i / 64) as usize] |= 1 << (i % 64);
    }
    fn clear(&mut self, i: u64) {
        self.0[(i / 64) as usize] &= !(1 << (i % 64));
    }
    fn count(&self) -> u64 {
        self.0.iter().map(|w| u64::from(w.count_ones())).sum()
    }
}

/// A dvs-fs file system on a block device. See the crate README for the format and the promises.
pub struct FileSystem<D: BlockDevice> {
    dev: D,
    bs: usize,
    blocks: u64,
    /// Inode-table entries per block.
    per_table: usize,
    generation: u64,
    next_serial: u64,
    inodes: BTreeMap<u32, Inode>,
    table_root: u64,
    /// Leaf block per leaf index (0 = no leaf).
    leaves: Vec<u64>,
    dirty_leaves: BTreeSet<u32>,
    /// Blocks the in-memory tree references.
    working: Bitmap,
    /// Blocks the last durable tree references (never overwritten until the next commit lands).
    committed: Bitmap,
    /// |working ∪ committed|.
    busy: u64,
    /// |working|.
    used: u64,
    cursor: u64,
    reserve: u64,
    next_ino: u32,
    dirty: bool,
    poisoned: bool,
}

fn corrupt(block: u64, what: String) -> Error {
    Error::Corrupt { block, what }
}

impl<D: BlockDevice> FileSystem<D> {
    fn io<T>(
        r: core::result::Result<T, crate::DeviceError>,
        op: &'static str,
        block: u64,
    ) -> Result<T> {
        r.map_err(|err| Error::Io { op, block, err })
    }

    fn check_device(dev: &D) -> Result<(usize, u64)> {
        let bs = dev.block_size();
        if !bs.is_power_of_two() || !(512..=65536).contains(&bs) {
            return Err(Error::BadDevice {
                what: format!("block size {bs} is not a power of two in 512..=65536"),
            });
        }
        let blocks = dev.blocks();
        if blocks < MIN_BLOCKS {
            return Err(Error::BadDevice {
                what: format!("{blocks} blocks, the format needs at least {MIN_BLOCKS}"),
            });
        }
        Ok((bs, blocks))
    }

    fn empty(dev: D, bs: usize, blocks: u64) -> Self {
        let per_table = format::table_entries(bs);
        let mut working = Bitmap::new(blocks);
        working.set(0);
        working.set(1);
        FileSystem {
            dev,
            bs,
            blocks,
            per_table,
            generation: 0,
            next_serial: 1,
            inodes: BTreeMap::new(),
            table_root: 0,
            leaves: vec![0; per_table],
            dirty_leaves: BTreeSet::new(),
            committed: working.clone(),
            working,
            busy: 2,
            used: 2,
            cursor: format::SUPER_SLOTS,
            reserve: (blocks / 64).clamp(8, 1024),
            next_ino: format::ROOT_INO + 1,
            dirty: true,
            poisoned: false,
        }
    }

    /// Writes an empty file system (just `/`) over the whole device and commits it.
    /// Both superblock slots are zeroed (and flushed) first, so no older tree can come back.
    pub fn format(mut dev: D) -> Result<Self> {
        let (bs, blocks) = Self::check_device(&dev)?;
        let zero = vec![0u8; bs];
        for slot in 0..format::SUPER_SLOTS {
            Self::io(dev.write_block(slot, &zero), "write", slot)?;
        }
        Self::io(dev.flush(), "flush", u64::MAX)?;
        let mut fs = Self::empty(dev, bs, blocks);
        let serial = fs.take_serial();
        let root = Inode::new(Kind::Dir, serial, format::ROOT_INO);
        fs.inodes.insert(format::ROOT_INO, root);
        fs.dirty_leaves.insert(0);
        fs.commit()?;
        Ok(fs)
    }

    /// Mounts the file system on `dev`, formatting it only if it is blank (`NotFormatted`);
    /// a corrupt or other-version disk is refused as by [`FileSystem::mount`]. The flag says
    /// whether it formatted.
    pub fn mount_or_format(mut dev: D) -> Result<(Self, bool)> {
        match Self::probe(&mut dev) {
            Err(Error::NotFormatted) => Ok((Self::format(dev)?, true)),
            Err(e) => Err(e),
            Ok(_) => Ok((Self::mount(dev)?.0, false)),
        }
    }

    fn probe(dev: &mut D) -> Result<(Superblock, u64, bool)> {
        let (bs, _) = Self::check_device(dev)?;
        let mut slots = Vec::new();
        let mut buf = vec![0u8; bs];
        for slot in 0..format::SUPER_SLOTS {
            Self::io(dev.read_block(slot, &mut buf), "read", slot)?;
            slots.push(Superblock::decode(&buf));
        }
        if slots.iter().all(|s| *s == Slot::NoMagic) {
            return Err(Error::NotFormatted);
        }
        for s in &slots {
            if let Slot::Version(v) = s {
                return Err(Error::UnsupportedVersion {
                    found: *v,
                    supported: format::VERSION,
                });
            }
        }
        let mut best: Option<(Superblock, u64)> = None;
        for (i, s) in slots.iter().enumerate() {
            if let Slot::Valid(sb) = s {
                if sb.generation % 2 != i as u64 {
                    return Err(corrupt(
                        i as u64,
                        format!("generation {} found in slot {i}", sb.generation),
                    ));
                }
                if best
                    .as_ref()
                    .is_none_or(|(b, _)| sb.generation > b.generation)
                {
                    best = Some((sb.clone(), i as u64));
                }
            }
        }
        let Some((sb, slot)) = best else {
            return Err(corrupt(
                0,
                "both superblocks fail their CRC check".to_string(),
            ));
        };
        let other_damaged = !matches!(slots[(1 - slot) as usize], Slot::Valid(_));
        Ok((sb, slot, other_damaged))
    }

    /// Mounts the file system on `dev`. Reads the newest valid superblock and walks the whole
    /// tree, checking every structure (magic, CRC, ranges, every block referenced once, the
    /// used-block count, every inode reachable exactly once): anything wrong is refused with
    /// `Corrupt` naming what; a superblock of another version with `UnsupportedVersion`; a blank
    /// disk with `NotFormatted`. Nothing is ever repaired.
    pub fn mount(mut dev: D) -> Result<(Self, MountReport)> {
        let (sb, slot, other_slot_damaged) = Self::probe(&mut dev)?;
        let (bs, dev_blocks) = Self::check_device(&dev)?;
        if sb.block_size as usize != bs {
            return Err(Error::BadDevice {
                what: format!(
                    "superblock block size {} but device block size {bs}",
                    sb.block_size
                ),
            });
        }
        if sb.blocks > dev_blocks || sb.blocks < MIN_BLOCKS {
            return Err(Error::BadDevice {
                what: format!(
                    "superblock says {} blocks, device has {dev_blocks}",
                    sb.blocks
                ),
            });
        }
        let mut fs = Self::empty(dev, bs, sb.blocks);
        fs.generation = sb.generation;
        fs.next_serial = sb.next_serial;
        fs.load(&sb)?;
        fs.committed = fs.working.clone();
        fs.busy = fs.used;
        fs.dirty = false;
        Ok((
            fs,
            MountReport {
                generation: sb.generation,
                slot,
                other_slot_damaged,
            },
        ))
    }

    fn mark(&mut self, block: u64, what: &str) -> Result<()> {
        if block < format::SUPER_SLOTS || block >= self.blocks {
            return Err(corrupt(
                block,
                format!("{what} points at block {block}, outside 2..{}", self.blocks),
            ));
        }
        if self.working.get(block) {
            return Err(corrupt(
                block,
                format!("block {block} referenced twice ({what})"),
            ));
        }
        self.working.set(block);
        self.used += 1;
        Ok(())
    }

    fn read_meta(
        &mut self,
        block: u64,
        magic: [u8; 4],
        what: &str,
        max_gen: u64,
    ) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; self.bs];
        Self::io(self.dev.read_block(block, &mut buf), "read", block)?;
        let g = format::unseal(&buf, magic).map_err(|e| corrupt(block, format!("{what}: {e}")))?;
        if g > max_gen {
            return Err(corrupt(
                block,
                format!("{what} written at generation {g}, newer than the superblock's {max_gen}"),
            ));
        }
        Ok(buf)
    }

    fn load(&mut self, sb: &Superblock) -> Result<()> {
        let g = sb.generation;
        self.mark(sb.table_root, "superblock table root")?;
        let root = self.read_meta(sb.table_root, format::TABLE_MAGIC, "inode table root", g)?;
        self.table_root = sb.table_root;
        let e = self.per_table;
        for li in 0..e {
            let leaf = format::le64(&root, format::META_HEADER + 8 * li);
            self.leaves[li] = leaf;
            if leaf == 0 {
                continue;
            }
            self.mark(leaf, "inode table leaf")?;
            let lb = self.read_meta(leaf, format::TABLE_MAGIC, "inode table leaf", g)?;
            for si in 0..e {
                let head = format::le64(&lb, format::META_HEADER + 8 * si);
                if head == 0 {
                    continue;
                }
                let ino = (li * e + si) as u32;
                if ino == 0 {
                    return Err(corrupt(leaf, "inode 0 is in use".to_string()));
                }
                self.load_inode(ino, head, g)?;
            }
        }
        self.check_tree(sb)
    }

    fn load_inode(&mut self, ino: u32, head: u64, g: u64) -> Result<()> {
        let mut bytes = Vec::new();
        let mut chain = Vec::new();
        let mut at = head;
        let cp = format::chain_payload(self.bs);
        while at != 0 {
            if chain.len() as u64 >= self.blocks {
                return Err(corrupt(at, format!("record chain of inode {ino} loops")));
            }
            self.mark(at, "inode record chain")?;
            let b = self.read_meta(at, format::CHAIN_MAGIC, "inode record", g)?;
            let len = format::le32(&b, 24) as usize;
            if len > cp {
                return Err(corrupt(at, format!("chain block payload {len} > {cp}")));
            }
            bytes.extend_from_slice(&b[format::CHAIN_HEADER..format::CHAIN_HEADER + len]);
            chain.push(at);
            at = format::le64(&b, 16);
        }
        let inode = self.decode_record(ino, head, &bytes, chain)?;
        for (&s, &(p, l)) in &inode.extents {
            for i in 0..u64::from(l) {
                self.mark(p + i, "file extent").map_err(|e| match e {
                    Error::Corrupt { block, what } => corrupt(
                        block,
                        format!("{what}, inode {ino} file block {}", u64::from(s) + i),
                    ),
                    e => e,
                })?;
            }
        }
        self.inodes.insert(ino, inode);
        Ok(())
    }

    fn decode_record(&self, ino: u32, head: u64, b: &[u8], chain: Vec<u64>) -> Result<Inode> {
        let bad = |what: String| corrupt(head, format!("inode {ino}: {what}"));
        if b.len() < format::RECORD_HEADER {
            return Err(bad(format!("record of {} bytes", b.len())));
        }
        let rec_ino = format::le32(b, 0);
        if rec_ino != ino {
            return Err(bad(format!("record names inode {rec_ino}")));
        }
        let kind = match b[4] {
            format::KIND_FILE => Kind::File,
            format::KIND_DIR => Kind::Dir,
            k => return Err(bad(format!("kind byte {k}"))),
        };
        let serial = format::le64(b, 8);
        let parent = format::le32(b, 16);
        let count = format::le32(b, 20) as usize;
        let size = format::le64(b, 24);
        let mut inode = Inode::new(kind, serial, parent);
        inode.chain = chain;
        inode.dirty = false;
        let mut at = format::RECORD_HEADER;
        match kind {
            Kind::File => {
                if size > MAX_FILE_SIZE {
                    return Err(bad(format!("size {size} > {MAX_FILE_SIZE}")));
                }
                inode.size = size;
                if b.len() != at + count * format::EXTENT_LEN {
                    return Err(bad(format!("{count} extents in {} bytes", b.len())));
                }
                let size_blocks = size.div_ceil(self.bs as u64);
                let mut prev_end = 0u64;
                for _ in 0..count {
                    let s = format::le32(b, at);
                    let l = format::le32(b, at + 4);
                    let p = format::le64(b, at + 8);
                    at += format::EXTENT_LEN;
                    let end = u64::from(s) + u64::from(l);
                    if l == 0 || u64::from(s) < prev_end || end > size_blocks {
                        return Err(bad(format!(
                            "extent {s}+{l} overlaps, is empty or passes the size ({size_blocks} blocks)"
                        )));
                    }
                    if p.checked_add(u64::from(l)).is_none_or(|e| e > self.blocks) {
                        return Err(bad(format!("extent {s}+{l} at block {p} past the device")));
                    }
                    prev_end = end;
                    inode.extents.insert(s, (p, l));
                }
            }
            Kind::Dir => {
                for _ in 0..count {
                    if b.len() < at + 6 {
                        return Err(bad("directory entry cut short".to_string()));
                    }
                    let child = format::le32(b, at);
                    let nl = u16::from_le_bytes([b[at + 4], b[at + 5]]) as usize;
                    at += 6;
                    let name = b
                        .get(at..at + nl)
                        .and_then(|n| core::str::from_utf8(n).ok())
                        .filter(|n| path::valid_name(n))
                        .ok_or_else(|| bad("directory entry name invalid".to_string()))?;
                    at += nl;
                    if inode.entries.insert(name.to_string(), child).is_some() {
                        return Err(bad(format!("name {name:?} twice")));
                    }
                }
                if at != b.len() {
                    return Err(bad(format!(
                        "{} stray bytes after the entries",
                        b.len() - at
                    )));
                }
                inode.size = count as u64;
            }
        }
        Ok(inode)
    }

    fn check_tree(&self, sb: &Superblock) -> Result<()> {
        let root = self
            .inodes
            .get(&format::ROOT_INO)
            .ok_or_else(|| corrupt(sb.table_root, "no root directory".to_string()))?;
        if root.kind != Kind::Dir || root.parent != format::ROOT_INO {
            return Err(corrupt(
                sb.table_root,
                "root is not a directory of its own".to_string(),
            ));
        }
        let mut seen = BTreeSet::new();
        seen.insert(format::ROOT_INO);
        for (&ino, inode) in &self.inodes {
            if inode.serial >= self.next_serial {
                return Err(corrupt(
                    0,
                    format!(
                        "inode {ino} serial {} >= next {}",
                        inode.serial, self.next_serial
                    ),
                ));
            }
            for (name, &child) in &inode.entries {
                let c = self.inodes.get(&child).ok_or_else(|| {
                    corrupt(
                        0,
                        format!("entry {name:?} of inode {ino} names missing inode {child}"),
                    )
                })?;
                if c.parent != ino || child == format::ROOT_INO || !seen.insert(child) {
                    return Err(corrupt(
                        0,
                        format!("inode {child} ({name:?}) linked wrongly from inode {ino}"),
                    ));
                }
            }
        }
        if seen.len() != self.inodes.len() || self.inodes.len() as u64 != u64::from(sb.inodes) {
            return Err(corrupt(
                0,
                format!(
                    "{} inodes in the table, {} reachable, superblock says {}",
                    self.inodes.len(),
                    seen.len(),
                    sb.inodes
                ),
            ));
        }
        // Cycles: every directory must reach the root through its parents.
        for &ino in self.inodes.keys() {
            let mut at = ino;
            for _ in 0..=self.inodes.len() {
                if at == format::ROOT_INO {
                    break;
                }
                at = self.inodes.get(&at).map_or(format::ROOT_INO, |i| i.parent);
            }
            if at != format::ROOT_INO {
                return Err(corrupt(0, format!("inode {ino} is in a cycle")));
            }
        }
        if self.used != sb.used {
            return Err(corrupt(
                0,
                format!(
                    "tree references {} blocks, superblock says {}",
                    self.used, sb.used
                ),
            ));
        }
        Ok(())
    }

    // ----- allocation -----

    fn available_now(&self) -> u64 {
        self.blocks - self.busy
    }

    fn alloc(&mut self, meta: bool) -> Result<u64> {
        let free = self.available_now();
        if free == 0 || (!meta && free <= self.reserve) {
            return Err(Error::NoSpace);
        }
        let words = self.working.0.len() as u64;
        let start_word = self.cursor / 64;
        for k in 0..=words {
            let w = (start_word + k) % words;
            let busy = self.working.0[w as usize] | self.committed.0[w as usize];
            if busy == u64::MAX {
                continue;
            }
            let mut bits = !busy;
            while bits != 0 {
                let b = w * 64 + u64::from(bits.trailing_zeros());
                bits &= bits - 1;
                if b >= self.blocks || (k == 0 && b < self.cursor && words > 1) {
                    continue;
                }
                self.working.set(b);
                self.used += 1;
                self.busy += 1;
                self.cursor = b + 1;
                return Ok(b);
            }
        }
        // Not reached while the counts are right (the loop sees the start word twice); kept as a
        // safety net should `busy` ever disagree with the bitmaps.
        for b in format::SUPER_SLOTS..self.blocks {
            if !self.working.get(b) && !self.committed.get(b) {
                self.working.set(b);
                self.used += 1;
                self.busy += 1;
                self.cursor = b + 1;
                return Ok(b);
            }
        }
        Err(Error::NoSpace)
    }

    fn free(&mut self, b: u64) {
        debug_assert!(self.working.get(b), "freeing free block {b}");
        self.working.clear(b);
        self.used -= 1;
        if !self.committed.get(b) {
            self.busy -= 1;
        }
    }

    fn take_serial(&mut self) -> u64 {
        let s = self.next_serial;
        self.next_serial += 1;
        s
    }

    fn touch(&mut self, ino: u32) {
        if let Some(i) = self.inodes.get_mut(&ino) {
            i.dirty = true;
        }
        self.dirty_leaves.insert(ino / self.per_table as u32);
        self.dirty = true;
    }

    fn live(&self) -> Result<()> {
        if self.poisoned {
            Err(Error::Poisoned)
        } else {
            Ok(())
        }
    }

    fn poison<T>(&mut self, r: Result<T>) -> Result<T> {
        if matches!(r, Err(Error::Io { .. })) {
            self.poisoned = true;
        }
        r
    }

    // ----- commit -----

    fn encode_record(&self, ino: u32, i: &Inode) -> Vec<u8> {
        let mut b = vec![0u8; format::RECORD_HEADER];
        format::put32(&mut b, 0, ino);
        b[4] = match i.kind {
            Kind::File => format::KIND_FILE,
            Kind::Dir => format::KIND_DIR,
        };
        format::put64(&mut b, 8, i.serial);
        format::put32(&mut b, 16, i.parent);
        match i.kind {
            Kind::File => {
                format::put32(&mut b, 20, i.extents.len() as u32);
                format::put64(&mut b, 24, i.size);
                for (&s, &(p, l)) in &i.extents {
                    b.extend_from_slice(&s.to_le_bytes());
                    b.extend_from_slice(&l.to_le_bytes());
                    b.extend_from_slice(&p.to_le_bytes());
                }
            }
            Kind::Dir => {
                format::put32(&mut b, 20, i.entries.len() as u32);
                for (name, &child) in &i.entries {
                    b.extend_from_slice(&child.to_le_bytes());
                    b.extend_from_slice(&(name.len() as u16).to_le_bytes());
                    b.extend_from_slice(name.as_bytes());
                }
            }
        }
        b
    }

    fn write_meta(&mut self, block: u64, mut b: Vec<u8>, magic: [u8; 4]) -> Result<()> {
        format::seal(&mut b, magic, self.generation + 1);
        Self::io(self.dev.write_block(block, &b), "write", block)
    }

    /// Makes every change so far durable, atomically: after it returns, a power cut anywhere
    /// later leaves exactly this tree (or a later committed one). Does nothing if nothing changed.
    pub fn sync(&mut self) -> Result<()> {
        self.live()?;
        if !self.dirty {
            return Ok(());
        }
        let r = self.commit();
        self.poison(r)
    }

    fn commit(&mut self) -> Result<()> {
        let mut fresh = Vec::new();
        let r = self.commit_write(&mut fresh);
        match r {
            Err(Error::NoSpace) => {
                for b in fresh {
                    self.free(b);
                }
                Err(Error::NoSpace)
            }
            Err(e) => Err(e),
            Ok((chains, leaves, root)) => self.commit_land(chains, leaves, root),
        }
    }

    /// Phase 1: writes the new records, leaves and root into free blocks. Touches no live block.
    #[allow(clippy::type_complexity)]
    fn commit_write(
        &mut self,
        fresh: &mut Vec<u64>,
    ) -> Result<(Vec<(u32, Vec<u64>)>, Vec<(u32, u64)>, u64)> {
        let cp = format::chain_payload(self.bs);
        let dirty: Vec<u32> = self
            .inodes
            .iter()
            .filter(|(_, i)| i.dirty)
            .map(|(&n, _)| n)
            .collect();
        let mut chains = Vec::new();
        for ino in dirty {
            let rec = match self.inodes.get(&ino) {
                Some(i) => self.encode_record(ino, i),
                None => continue,
            };
            let n = rec.len().div_ceil(cp).max(1);
            let mut blocks = Vec::with_capacity(n);
            for _ in 0..n {
                let b = self.alloc(true)?;
                fresh.push(b);
                blocks.push(b);
            }
            for (k, part) in rec.chunks(cp).enumerate() {
                let mut b = vec![0u8; self.bs];
                format::put64(&mut b, 16, blocks.get(k + 1).copied().unwrap_or(0));
                format::put32(&mut b, 24, part.len() as u32);
                b[format::CHAIN_HEADER..format::CHAIN_HEADER + part.len()].copy_from_slice(part);
                self.write_meta(blocks[k], b, format::CHAIN_MAGIC)?;
            }
            chains.push((ino, blocks));
        }
        let heads: BTreeMap<u32, u64> = chains.iter().map(|(i, b)| (*i, b[0])).collect();
        let e = self.per_table as u32;
        let mut leaves = Vec::new();
        let dirty_leaves: Vec<u32> = self.dirty_leaves.iter().copied().collect();
        for li in dirty_leaves {
            let mut b = vec![0u8; self.bs];
            let mut any = false;
            for (&ino, inode) in self.inodes.range(li * e..(li + 1) * e) {
                let head = heads
                    .get(&ino)
                    .copied()
                    .or(inode.chain.first().copied())
                    .unwrap_or(0);
                format::put64(
                    &mut b,
                    format::META_HEADER + 8 * (ino - li * e) as usize,
                    head,
                );
                any = true;
            }
            let at = if any {
                let at = self.alloc(true)?;
                fresh.push(at);
                self.write_meta(at, b, format::TABLE_MAGIC)?;
                at
            } else {
                0
            };
            leaves.push((li, at));
        }
        let mut b = vec![0u8; self.bs];
        for (li, &old) in self.leaves.iter().enumerate() {
            let at = leaves
                .iter()
                .find(|(l, _)| *l as usize == li)
                .map_or(old, |&(_, a)| a);
            format::put64(&mut b, format::META_HEADER + 8 * li, at);
        }
        let root = self.alloc(true)?;
        fresh.push(root);
        self.write_meta(root, b, format::TABLE_MAGIC)?;
        Ok((chains, leaves, root))
    }

    /// Phase 2: releases the old structures, flushes, writes and flushes the superblock.
    fn commit_land(
        &mut self,
        chains: Vec<(u32, Vec<u64>)>,
        leaves: Vec<(u32, u64)>,
        root: u64,
    ) -> Result<()> {
        for (ino, blocks) in chains {
            let old = match self.inodes.get_mut(&ino) {
                Some(i) => {
                    i.dirty = false;
                    core::mem::replace(&mut i.chain, blocks)
                }
                None => continue,
            };
            for b in old {
                self.free(b);
            }
        }
        for (li, at) in leaves {
            let old = core::mem::replace(&mut self.leaves[li as usize], at);
            if old != 0 {
                self.free(old);
            }
        }
        let old_root = core::mem::replace(&mut self.table_root, root);
        if old_root != 0 {
            self.free(old_root);
        }
        Self::io(self.dev.flush(), "flush", u64::MAX)?;
        let generation = self.generation + 1;
        let sb = Superblock {
            block_size: self.bs as u32,
            generation,
            blocks: self.blocks,
            table_root: self.table_root,
            used: self.used,
            next_serial: self.next_serial,
            inodes: self.inodes.len() as u32,
        };
        let slot = generation % format::SUPER_SLOTS;
        Self::io(
            self.dev.write_block(slot, &sb.encode(self.bs)),
            "write",
            slot,
        )?;
        Self::io(self.dev.flush(), "flush", u64::MAX)?;
        self.generation = generation;
        self.committed = self.working.clone();
        self.busy = self.used;
        self.dirty_leaves.clear();
        self.dirty = false;
        Ok(())
    }

    // ----- namespace -----

    fn resolve(&self, p: &str) -> Result<u32> {
        let mut at = format::ROOT_INO;
        for name in path::components(p)? {
            let dir = self.inodes.get(&at).ok_or(Error::NotFound)?;
            if dir.kind != Kind::Dir {
                return Err(Error::NotDir);
            }
            at = *dir.entries.get(name).ok_or(Error::NotFound)?;
        }
        Ok(at)
    }

    fn resolve_parent<'p>(&self, p: &'p str) -> Result<(u32, &'p str)> {
        let (parent, name) = path::split_last(p)?;
        let dir = self.resolve(parent)?;
        match self.inodes.get(&dir) {
            Some(i) if i.kind == Kind::Dir => Ok((dir, name)),
            Some(_) => Err(Error::NotDir),
            None => Err(Error::NotFound),
        }
    }

    fn new_inode(&mut self, kind: Kind, parent: u32, name: &str) -> Result<u32> {
        let max = (self.per_table * self.per_table) as u64;
        let mut ino = None;
        for k in 0..max {
            let cand = ((u64::from(self.next_ino) + k) % max) as u32;
            if cand > format::ROOT_INO && !self.inodes.contains_key(&cand) {
                ino = Some(cand);
                break;
            }
        }
        let ino = ino.ok_or(Error::TooManyFiles)?;
        self.next_ino = ino.wrapping_add(1);
        let serial = self.take_serial();
        self.inodes.insert(ino, Inode::new(kind, serial, parent));
        if let Some(d) = self.inodes.get_mut(&parent) {
            d.entries.insert(name.to_string(), ino);
        }
        self.touch(parent);
        self.touch(ino);
        Ok(ino)
    }

    fn handle(&self, fh: FileHandle) -> Result<&Inode> {
        match self.inodes.get(&fh.ino) {
            Some(i) if i.serial == fh.serial => {
                if i.kind == Kind::Dir {
                    Err(Error::IsDir)
                } else {
                    Ok(i)
                }
            }
            _ => Err(Error::StaleHandle),
        }
    }

    /// Opens (or creates, per `flags`) the file at `path`. A creation or truncation becomes
    /// durable at the next commit (`fsync`, `sync`, or a durable namespace op).
    pub fn open(&mut self, path: &str, flags: OpenFlags) -> Result<FileHandle> {
        self.live()?;
        let (dir, name) = self.resolve_parent(path)?;
        let existing = self
            .inodes
            .get(&dir)
            .and_then(|d| d.entries.get(name))
            .copied();
        let ino = match existing {
            Some(ino) => {
                if flags.create && flags.exclusive {
                    return Err(Error::Exists);
                }
                ino
            }
            None if flags.create => self.new_inode(Kind::File, dir, name)?,
            None => return Err(Error::NotFound),
        };
        let inode = self.inodes.get(&ino).ok_or(Error::NotFound)?;
        if inode.kind == Kind::Dir {
            return Err(Error::IsDir);
        }
        let fh = FileHandle {
            ino,
            serial: inode.serial,
        };
        if flags.truncate && existing.is_some() {
            self.truncate(fh, 0)?;
        }
        Ok(fh)
    }

    /// Creates directory `path` and commits (durable when it returns).
    pub fn mkdir(&mut self, path: &str) -> Result<()> {
        self.live()?;
        let (dir, name) = self.resolve_parent(path)?;
        if self
            .inodes
            .get(&dir)
            .is_some_and(|d| d.entries.contains_key(name))
        {
            return Err(Error::Exists);
        }
        self.new_inode(Kind::Dir, dir, name)?;
        self.sync()
    }

    fn drop_inode(&mut self, ino: u32) {
        if let Some(inode) = self.inodes.remove(&ino) {
            for &(p, l) in inode.extents.values() {
                for b in p..p + u64::from(l) {
                    self.free(b);
                }
            }
            for b in inode.chain {
                self.free(b);
            }
            self.dirty_leaves.insert(ino / self.per_table as u32);
            self.dirty = true;
        }
    }

    /// Removes the file or empty directory at `path`, returns its space, and commits (durable
    /// when it returns; the space is available for new writes from then on).
    pub fn unlink(&mut self, path: &str) -> Result<()> {
        self.live()?;
        let (dir, name) = self.resolve_parent(path)?;
        let ino = *self
            .inodes
            .get(&dir)
            .and_then(|d| d.entries.get(name))
            .ok_or(Error::NotFound)?;
        if self.inodes.get(&ino).is_some_and(|i| !i.entries.is_empty()) {
            return Err(Error::NotEmpty);
        }
        if let Some(d) = self.inodes.get_mut(&dir) {
            d.entries.remove(name);
        }
        self.touch(dir);
        self.drop_inode(ino);
        self.sync()
    }

    /// Moves `from` to `to` and commits (durable when it returns). A file replaces a file at
    /// `to`; a directory at `to` is never replaced (`Exists`); a directory cannot move under itself.
    pub fn rename(&mut self, from: &str, to: &str) -> Result<()> {
        self.live()?;
        let (fdir, fname) = self.resolve_parent(from)?;
        let (tdir, tname) = self.resolve_parent(to)?;
        let src = *self
            .inodes
            .get(&fdir)
            .and_then(|d| d.entries.get(fname))
            .ok_or(Error::NotFound)?;
        let skind = self
            .inodes
            .get(&src)
            .map(|i| i.kind)
            .ok_or(Error::NotFound)?;
        if fdir == tdir && fname == tname {
            return self.sync();
        }
        if skind == Kind::Dir {
            let mut at = tdir;
            loop {
                if at == src {
                    return Err(Error::Invalid {
                        what: "a directory cannot move into itself",
                    });
                }
                if at == format::ROOT_INO {
                    break;
                }
                at = self.inodes.get(&at).map_or(format::ROOT_INO, |i| i.parent);
            }
        }
        let target = self
            .inodes
            .get(&tdir)
            .and_then(|d| d.entries.get(tname))
            .copied();
        if let Some(t) = target {
            match (skind, self.inodes.get(&t).map(|i| i.kind)) {
                (_, Some(Kind::Dir)) => return Err(Error::Exists),
                (Kind::Dir, _) => return Err(Error::NotDir),
                _ => {}
            }
            self.drop_inode(t);
        }
        if let Some(d) = self.inodes.get_mut(&fdir) {
            d.entries.remove(fname);
        }
        if let Some(d) = self.inodes.get_mut(&tdir) {
            d.entries.insert(tname.to_string(), src);
        }
        if let Some(s) = self.inodes.get_mut(&src) {
            s.parent = tdir;
        }
        self.touch(fdir);
        self.touch(tdir);
        self.touch(src);
        self.sync()
    }

    /// The entries of directory `path`, sorted by name.
    pub fn readdir(&self, path: &str) -> Result<Vec<DirEntry>> {
        let ino = self.resolve(path)?;
        let dir = self.inodes.get(&ino).ok_or(Error::NotFound)?;
        if dir.kind != Kind::Dir {
            return Err(Error::NotDir);
        }
        Ok(dir
            .entries
            .iter()
            .filter_map(|(name, c)| {
                self.inodes.get(c).map(|i| DirEntry {
                    name: name.clone(),
                    kind: i.kind,
                    size: i.reported_size(),
                })
            })
            .collect())
    }

    fn stat_of(ino: u32, i: &Inode) -> Stat {
        Stat {
            kind: i.kind,
            size: i.reported_size(),
            blocks: i.data_blocks(),
            ino,
            serial: i.serial,
        }
    }

    /// What is at `path`.
    pub fn stat(&self, path: &str) -> Result<Stat> {
        let ino = self.resolve(path)?;
        let i = self.inodes.get(&ino).ok_or(Error::NotFound)?;
        Ok(Self::stat_of(ino, i))
    }

    /// What the open file is.
    pub fn fstat(&self, fh: FileHandle) -> Result<Stat> {
        let i = self.handle(fh)?;
        Ok(Self::stat_of(fh.ino, i))
    }

    // ----- data -----

    /// Reads up to `buf.len()` bytes at `offset`; returns how many (0 at or past the end).
    pub fn read_at(&mut self, fh: FileHandle, offset: u64, buf: &mut [u8]) -> Result<usize> {
        self.live()?;
        let inode = self.handle(fh)?;
        if offset >= inode.size {
            return Ok(0);
        }
        let n = (buf.len() as u64).min(inode.size - offset) as usize;
        let bs = self.bs as u64;
        let mut maps = Vec::new();
        let mut done = 0usize;
        while done < n {
            let pos = offset + done as u64;
            let lb = (pos / bs) as u32;
            let in_block = (pos % bs) as usize;
            let take = (self.bs - in_block).min(n - done);
            maps.push((inode.lookup(lb), in_block, done, take));
            done += take;
        }
        let mut scratch = vec![0u8; self.bs];
        // Whole blocks that lie one after the other on the device go in one `read_blocks`.
        let mut run: Option<(u64, usize, usize)> = None;
        for (phys, in_block, at, take) in maps {
            if let (Some(p), true) = (phys, take == self.bs) {
                match run {
                    Some((ps, ats, k)) if ps + k as u64 == p && ats + k * self.bs == at => {
                        run = Some((ps, ats, k + 1));
                        continue;
                    }
                    Some((ps, ats, k)) => {
                        let out = &mut buf[ats..ats + k * self.bs];
                        Self::io(self.dev.read_blocks(ps, out), "read", ps)?;
                    }
                    None => {}
                }
                run = Some((p, at, 1));
                continue;
            }
            if let Some((ps, ats, k)) = run.take() {
                let out = &mut buf[ats..ats + k * self.bs];
                Self::io(self.dev.read_blocks(ps, out), "read", ps)?;
            }
            let out = &mut buf[at..at + take];
            match phys {
                None => out.fill(0),
                Some(p) => {
                    Self::io(self.dev.read_block(p, &mut scratch), "read", p)?;
                    out.copy_from_slice(&scratch[in_block..in_block + take]);
                }
            }
        }
        if let Some((ps, ats, k)) = run {
            let out = &mut buf[ats..ats + k * self.bs];
            Self::io(self.dev.read_blocks(ps, out), "read", ps)?;
        }
        Ok(n)
    }

    /// Writes all of `data` at `offset`, growing the file as needed (a gap reads as zeros).
    /// Either all of it is written or, with `NoSpace`, none of it. Durable at the next commit.
    pub fn write_at(&mut self, fh: FileHandle, offset: u64, data: &[u8]) -> Result<usize> {
        self.live()?;
        let inode = self.handle(fh)?;
        let end = offset
            .checked_add(data.len() as u64)
            .filter(|&e| e <= MAX_FILE_SIZE)
            .ok_or(Error::Invalid {
                what: "write past the largest file size",
            })?;
        if data.is_empty() {
            return Ok(0);
        }
        let bs = self.bs as u64;
        let (first, last) = (offset / bs, (end - 1) / bs);
        let mut need = 0u64;
        for lb in first..=last {
            match inode.lookup(lb as u32) {
                Some(p) if !self.committed.get(p) => {}
                _ => need += 1,
            }
        }
        if need > self.available_now().saturating_sub(self.reserve) {
            return Err(Error::NoSpace);
        }
        let r = self.write_blocks(fh.ino, offset, data);
        let r = self.poison(r);
        if r.is_ok() {
            if let Some(i) = self.inodes.get_mut(&fh.ino) {
                i.size = i.size.max(end);
            }
            self.touch(fh.ino);
        }
        r.map(|()| data.len())
    }

    fn write_blocks(&mut self, ino: u32, offset: u64, data: &[u8]) -> Result<()> {
        let bs = self.bs as u64;
        let mut scratch = vec![0u8; self.bs];
        let mut run: Option<(u64, usize, usize)> = None;
        let mut done = 0usize;
        while done < data.len() {
            let pos = offset + done as u64;
            let lb = (pos / bs) as u32;
            let in_block = (pos % bs) as usize;
            let take = (self.bs - in_block).min(data.len() - done);
            let part = &data[done..done + take];
            let old = self.inodes.get(&ino).and_then(|i| i.lookup(lb));
            let target = match old {
                Some(p) if !self.committed.get(p) => p,
                _ => self.alloc(false)?,
            };
            if take == self.bs {
                // Whole blocks going to consecutive device blocks go in one `write_blocks`.
                match run {
                    Some((ts, ds, k)) if ts + k as u64 == target && ds + k * self.bs == done => {
                        run = Some((ts, ds, k + 1));
                    }
                    _ => {
                        if let Some((ts, ds, k)) = run {
                            let src = &data[ds..ds + k * self.bs];
                            Self::io(self.dev.write_blocks(ts, src), "write", ts)?;
                        }
                        run = Some((target, done, 1));
                    }
                }
            } else {
                if let Some((ts, ds, k)) = run.take() {
                    let src = &data[ds..ds + k * self.bs];
                    Self::io(self.dev.write_blocks(ts, src), "write", ts)?;
                }
                match old {
                    Some(p) => Self::io(self.dev.read_block(p, &mut scratch), "read", p)?,
                    None => scratch.fill(0),
                }
                scratch[in_block..in_block + take].copy_from_slice(part);
                Self::io(self.dev.write_block(target, &scratch), "write", target)?;
            }
            if old != Some(target) {
                if let Some(i) = self.inodes.get_mut(&ino) {
                    if let Some(p) = old {
                        i.unmap(u64::from(lb), u64::from(lb) + 1);
                        self.free(p);
                    }
                }
                if let Some(i) = self.inodes.get_mut(&ino) {
                    i.map(lb, target);
                }
            }
            done += take;
        }
        if let Some((ts, ds, k)) = run {
            let src = &data[ds..ds + k * self.bs];
            Self::io(self.dev.write_blocks(ts, src), "write", ts)?;
        }
        Ok(())
    }

    /// Sets the file's length to `size`: shrinking returns the blocks past it (available after
    /// the next commit), growing adds a hole that reads as zeros. Durable at the next commit.
    pub fn truncate(&mut self, fh: FileHandle, size: u64) -> Result<()> {
        self.live()?;
        let inode = self.handle(fh)?;
        if size > MAX_FILE_SIZE {
            return Err(Error::Invalid {
                what: "size past the largest file size",
            });
        }
        let old = inode.size;
        let bs = self.bs as u64;
        if size < old {
            // Zero the tail of the new last block (copy-on-write as any write), so that a later
            // growth reads zeros there.
            let tail = (size % bs) as usize;
            if tail != 0 {
                let lb = size / bs;
                if let Some(p) = inode.lookup(lb as u32) {
                    let mut b = vec![0u8; self.bs];
                    Self::io(self.dev.read_block(p, &mut b), "read", p)?;
                    b[tail..].fill(0);
                    let r = self.write_blocks(fh.ino, lb * bs, &b);
                    self.poison(r)?;
                }
            }
            let freed = match self.inodes.get_mut(&fh.ino) {
                Some(i) => i.unmap(size.div_ceil(bs), u64::MAX),
                None => Vec::new(),
            };
            for (p, l) in freed {
                for b in p..p + l {
                    self.free(b);
                }
            }
        }
        if let Some(i) = self.inodes.get_mut(&fh.ino) {
            i.size = size;
        }
        self.touch(fh.ino);
        Ok(())
    }

    /// Commits the whole file system (every pending change, this file's included): when it
    /// returns, the file's content is durable.
    pub fn fsync(&mut self, fh: FileHandle) -> Result<()> {
        self.live()?;
        self.handle(fh)?;
        self.sync()
    }

    /// An `embedded-io` Read / Write / Seek view of an open file, at position 0.
    pub fn file(&mut self, fh: FileHandle) -> crate::File<'_, D> {
        crate::File::new(self, fh)
    }

    /// Space and state.
    pub fn stats(&self) -> FsStats {
        FsStats {
            block_size: self.bs,
            blocks: self.blocks,
            used: self.used,
            available: self.available_now().saturating_sub(self.reserve),
            pending_free: self.busy - self.used,
            reserve: self.reserve,
            inodes: self.inodes.len() as u32,
            generation: self.generation,
            dirty: self.dirty,
        }
    }

    /// The device, for a caller that is done with the file system (uncommitted changes are lost).
    pub fn into_device(self) -> D {
        self.dev
    }

    /// Checks the in-memory tree against the allocator: every block referenced exactly once and
    /// the working bitmap equal to the referenced set. For tests and a debug command.
    pub fn check(&self) -> Result<()> {
        let mut seen = Bitmap::new(self.blocks);
        let mut refs = 2u64;
        seen.set(0);
        seen.set(1);
        let mut mark = |b: u64, what: &str| -> Result<()> {
            if b >= self.blocks || seen.get(b) {
                return Err(corrupt(
                    b,
                    format!("{what}: block {b} twice or out of range"),
                ));
            }
            seen.set(b);
            refs += 1;
            Ok(())
        };
        if !self.dirty {
            mark(self.table_root, "table root")?;
            for &l in self.leaves.iter().filter(|&&l| l != 0) {
                mark(l, "leaf")?;
            }
        }
        for (ino, i) in &self.inodes {
            if !self.dirty {
                for &b in &i.chain {
                    mark(b, "chain")?;
                }
            }
            let mut prev_end = 0u64;
            for (&s, &(p, l)) in &i.extents {
                if u64::from(s) < prev_end
                    || u64::from(s) + u64::from(l) > i.size.div_ceil(self.bs as u64)
                {
                    return Err(corrupt(
                        p,
                        format!("inode {ino}: extent {s}+{l} overlaps or passes the size"),
                    ));
                }
                prev_end = u64::from(s) + u64::from(l);
                for b in p..p + u64::from(l) {
                    mark(b, "extent")?;
                }
            }
        }
        if !self.dirty && (seen != self.working || refs != self.used) {
            return Err(corrupt(
                0,
                format!("allocator says {} used, tree references {refs}", self.used),
            ));
        }
        if self.working.count() != self.used {
            return Err(corrupt(0, "used count differs from the bitmap".to_string()));
        }
        Ok(())
    }
}
