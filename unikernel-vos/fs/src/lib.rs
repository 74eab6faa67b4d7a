//! # dvs-fs — the VOS file system
//!
//! A small copy-on-write file system over any [`BlockDevice`]: directories, sparse files up to
//! [`MAX_FILE_SIZE`] (extent lists), create / open / read / write / truncate / rename / unlink /
//! mkdir / readdir / stat / fsync, free-space accounting with a clear [`Error::NoSpace`].
//!
//! Crash safety: every change lives in memory and in freshly allocated blocks until a commit
//! ([`FileSystem::sync`], [`FileSystem::fsync`], and the namespace operations `mkdir`, `unlink`,
//! `rename`, which commit before returning). A commit writes the new metadata, flushes, writes
//! one superblock (alternating between two slots, each with a generation and a CRC) and flushes:
//! the tree on disk moves from one consistent state to the next with that one block write. Blocks
//! the last durable tree references are never overwritten, so a power cut at any write leaves the
//! last committed tree intact. The format and the protocol are in README.md.
//!
//! `no_std` + `alloc`, no `unsafe`, no I/O of its own: the VOS fs server gives it a device that
//! talks to the disk server; the tests give it RAM.
#![no_std]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

extern crate alloc;

pub mod cache;
pub mod device;
pub mod error;
mod file;
pub mod format;
mod fs;
pub mod path;

pub use cache::CachedDevice;
pub use device::{BlockDevice, MemDevice};
pub use error::{DeviceError, Error, Result};
pub use file::File;
pub use fs::{
    DirEntry, FileHandle, FileSystem, FsStats, Kind, MountReport, OpenFlags, Stat, MAX_FILE_SIZE,
    MIN_BLOCKS,
};
