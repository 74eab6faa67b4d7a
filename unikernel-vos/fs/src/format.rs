//! The on-disk structures, byte for byte (README.md, "On-disk format", is the prose of this file).
//!
//! All integers are little-endian. Every block but data blocks carries a CRC-32 (IEEE, the
//! `crc32fast` one), so that a torn or stray write is seen, never trusted.

use alloc::vec;
use alloc::vec::Vec;

/// The format version this code reads and writes (superblock bytes 8..12).
pub const VERSION: u32 = 1;
/// Superblock magic (bytes 0..8).
pub const SUPER_MAGIC: [u8; 8] = *b"dvs-fs\0\x01";
/// Magic of an inode-table block (root or leaf).
pub const TABLE_MAGIC: [u8; 4] = *b"DVST";
/// Magic of an inode-record chain block.
pub const CHAIN_MAGIC: [u8; 4] = *b"DVSC";
/// The two superblock slots: blocks 0 and 1. Generation `g` lives in slot `g % 2`.
pub const SUPER_SLOTS: u64 = 2;
/// Bytes of the header of a table or chain block.
pub const META_HEADER: usize = 16;
/// Bytes of a chain block's header (the metadata header plus `next` and `len`).
pub const CHAIN_HEADER: usize = 32;
/// Bytes of an inode record's fixed part.
pub const RECORD_HEADER: usize = 32;
/// Bytes of one extent in an inode record.
pub const EXTENT_LEN: usize = 16;
/// The inode number of `/`.
pub const ROOT_INO: u32 = 1;
/// Inode kind byte of a regular file.
pub const KIND_FILE: u8 = 1;
/// Inode kind byte of a directory.
pub const KIND_DIR: u8 = 2;

/// Superblock field offsets.
pub mod sb {
    use core::ops::Range;
    /// Magic.
    pub const MAGIC: Range<usize> = 0..8;
    /// Format version.
    pub const VERSION: Range<usize> = 8..12;
    /// Block size in bytes.
    pub const BLOCK_SIZE: Range<usize> = 12..16;
    /// Commit generation.
    pub const GENERATION: Range<usize> = 16..24;
    /// File system size in blocks.
    pub const BLOCKS: Range<usize> = 24..32;
    /// Block of the inode-table root.
    pub const TABLE_ROOT: Range<usize> = 32..40;
    /// Blocks referenced by this tree, superblock slots included.
    pub const USED: Range<usize> = 40..48;
    /// The next inode serial to hand out.
    pub const NEXT_SERIAL: Range<usize> = 48..56;
    /// Number of inodes in the tree.
    pub const INODES: Range<usize> = 56..60;
    /// CRC-32 of bytes 0..60.
    pub const CRC: Range<usize> = 60..64;
}

pub(crate) fn le32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

pub(crate) fn le64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

pub(crate) fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

pub(crate) fn put64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// A decoded superblock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Superblock {
    /// Block size in bytes.
    pub block_size: u32,
    /// Commit generation (1 for the first commit after format).
    pub generation: u64,
    /// File system size in blocks.
    pub blocks: u64,
    /// Block of the inode-table root.
    pub table_root: u64,
    /// Blocks referenced by the tree (both superblock slots included).
    pub used: u64,
    /// The next inode serial.
    pub next_serial: u64,
    /// Inodes in the tree.
    pub inodes: u32,
}

/// What one superblock slot holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Slot {
    /// No dvs-fs magic: never formatted (or not ours).
    NoMagic,
    /// Our magic with another version number.
    Version(u32),
    /// Our magic and version, but the CRC does not match: a torn or damaged write.
    BadCrc,
    /// A valid superblock.
    Valid(Superblock),
}

impl Superblock {
    /// The block image of this superblock (`block_size` bytes, zero past byte 64).
    pub fn encode(&self, block_size: usize) -> Vec<u8> {
        let mut b = vec![0u8; block_size];
        b[sb::MAGIC].copy_from_slice(&SUPER_MAGIC);
        put32(&mut b, sb::VERSION.start, VERSION);
        put32(&mut b, sb::BLOCK_SIZE.start, self.block_size);
        put64(&mut b, sb::GENERATION.start, self.generation);
        put64(&mut b, sb::BLOCKS.start, self.blocks);
        put64(&mut b, sb::TABLE_ROOT.start, self.table_root);
        put64(&mut b, sb::USED.start, self.used);
        put64(&mut b, sb::NEXT_SERIAL.start, self.next_serial);
        put32(&mut b, sb::INODES.start, self.inodes);
        let crc = crc32fast::hash(&b[..sb::CRC.start]);
        put32(&mut b, sb::CRC.start, crc);
        b
    }

    /// Classifies a superblock slot's bytes (at least 64 of them).
    pub fn decode(b: &[u8]) -> Slot {
        if b.len() < 64 || b[sb::MAGIC] != SUPER_MAGIC {
            return Slot::NoMagic;
        }
        let version = le32(b, sb::VERSION.start);
        if version != VERSION {
            return Slot::Version(version);
        }
        if crc32fast::hash(&b[..sb::CRC.start]) != le32(b, sb::CRC.start) {
            return Slot::BadCrc;
        }
        Slot::Valid(Superblock {
            block_size: le32(b, sb::BLOCK_SIZE.start),
            generation: le64(b, sb::GENERATION.start),
            blocks: le64(b, sb::BLOCKS.start),
            table_root: le64(b, sb::TABLE_ROOT.start),
            used: le64(b, sb::USED.start),
            next_serial: le64(b, sb::NEXT_SERIAL.start),
            inodes: le32(b, sb::INODES.start),
        })
    }
}

/// Seals a table or chain block: magic, generation, then the CRC of bytes 8.. at 4..8.
pub(crate) fn seal(b: &mut [u8], magic: [u8; 4], generation: u64) {
    b[0..4].copy_from_slice(&magic);
    put64(b, 8, generation);
    let crc = crc32fast::hash(&b[8..]);
    put32(b, 4, crc);
}

/// Checks a table or chain block's magic and CRC; returns the generation it was written in.
pub(crate) fn unseal(b: &[u8], magic: [u8; 4]) -> Result<u64, &'static str> {
    if b.len() < META_HEADER || b[0..4] != magic {
        return Err("bad magic");
    }
    if crc32fast::hash(&b[8..]) != le32(b, 4) {
        return Err("bad CRC");
    }
    Ok(le64(b, 8))
}

/// Inode-table entries per block for a block size.
pub const fn table_entries(block_size: usize) -> usize {
    (block_size - META_HEADER) / 8
}

/// Inode-record payload bytes per chain block for a block size.
pub const fn chain_payload(block_size: usize) -> usize {
    block_size - CHAIN_HEADER
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Superblock {
        Superblock {
            block_size: 4096,
            generation: 7,
            blocks: 1000,
            table_root: 9,
            used: 20,
            next_serial: 3,
            inodes: 2,
        }
    }

    #[test]
    fn superblock_round_trip_and_offsets() {
        let b = sample().encode(4096);
        assert_eq!(&b[0..8], b"dvs-fs\0\x01");
        assert_eq!(le32(&b, 8), VERSION);
        assert_eq!(le64(&b, 16), 7);
        assert_eq!(Superblock::decode(&b), Slot::Valid(sample()));
    }

    #[test]
    fn superblock_damage_is_classified() {
        let mut b = sample().encode(4096);
        b[20] ^= 1;
        assert_eq!(Superblock::decode(&b), Slot::BadCrc);
        let mut b = sample().encode(4096);
        put32(&mut b, 8, 2);
        assert_eq!(Superblock::decode(&b), Slot::Version(2));
        assert_eq!(Superblock::decode(&[0u8; 4096]), Slot::NoMagic);
        assert_eq!(Superblock::decode(&[0u8; 10]), Slot::NoMagic);
    }

    #[test]
    fn sealed_blocks_detect_flips() {
        let mut b = vec![0u8; 512];
        b[100] = 5;
        seal(&mut b, TABLE_MAGIC, 4);
        assert_eq!(unseal(&b, TABLE_MAGIC), Ok(4));
        assert!(unseal(&b, CHAIN_MAGIC).is_err());
        b[300] ^= 0x80;
        assert_eq!(unseal(&b, TABLE_MAGIC), Err("bad CRC"));
    }
}
