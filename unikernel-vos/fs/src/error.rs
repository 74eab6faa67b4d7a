//! Typed errors of the file system and of the block devices under it.

use alloc::string::String;
use core::fmt;

/// What a [`crate::BlockDevice`] reports when an operation fails.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeviceError {
    /// A block index at or past the end of the device.
    OutOfRange {
        /// The block asked for.
        block: u64,
        /// The device's size in blocks.
        blocks: u64,
    },
    /// A buffer whose length is not the device's block size.
    BadLength {
        /// The length given.
        len: usize,
        /// The device's block size.
        block_size: usize,
    },
    /// The device is read-only.
    ReadOnly,
    /// The device has gone away (power cut, disk server down, transport error).
    Gone,
    /// Any other failure of the device, with the device's own code.
    Other(u32),
}

impl fmt::Display for DeviceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceError::OutOfRange { block, blocks } => {
                write!(f, "block {block} out of range (device has {blocks} blocks)")
            }
            DeviceError::BadLength { len, block_size } => {
                write!(f, "buffer of {len} bytes, block size is {block_size}")
            }
            DeviceError::ReadOnly => f.write_str("device is read-only"),
            DeviceError::Gone => f.write_str("device is gone"),
            DeviceError::Other(c) => write!(f, "device error {c}"),
        }
    }
}

/// Every way a file system operation can fail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Error {
    /// The device failed; `op` says which operation on which block (`u64::MAX` for a flush).
    Io {
        /// "read", "write" or "flush".
        op: &'static str,
        /// The block concerned.
        block: u64,
        /// The device's error.
        err: DeviceError,
    },
    /// Neither superblock slot carries the format's magic: a blank (or foreign) disk.
    NotFormatted,
    /// A superblock of another format version: refused, never converted.
    UnsupportedVersion {
        /// The version found on disk.
        found: u32,
        /// The version this code reads and writes.
        supported: u32,
    },
    /// The on-disk structures are damaged; `what` names the check that failed and where.
    Corrupt {
        /// The block where the damage was seen (0 when none applies).
        block: u64,
        /// What failed, with the values seen.
        what: String,
    },
    /// The device does not fit the format (block size, block count).
    BadDevice {
        /// Why.
        what: String,
    },
    /// No such file or directory.
    NotFound,
    /// The name exists already.
    Exists,
    /// A path component that must be a directory is not one.
    NotDir,
    /// A directory where a file is needed.
    IsDir,
    /// A directory that must be empty is not.
    NotEmpty,
    /// The disk is full (the http layer answers 507).
    NoSpace,
    /// A path that breaks the rules of [`crate::path`] (empty component, `.`/`..`, too long, NUL).
    InvalidPath,
    /// An argument out of range (offset past the largest file, rename into itself, removing `/`).
    Invalid {
        /// Why.
        what: &'static str,
    },
    /// A handle whose file has been removed (or never existed).
    StaleHandle,
    /// No more inode numbers.
    TooManyFiles,
    /// An earlier device error left memory and disk apart; remount to continue.
    Poisoned,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io { op, block, err } => write!(f, "device {op} of block {block} failed: {err}"),
            Error::NotFormatted => {
                f.write_str("no dvs-fs superblock on this disk (blank or foreign)")
            }
            Error::UnsupportedVersion { found, supported } => write!(
                f,
                "dvs-fs format version {found} on disk, this code reads only version {supported}"
            ),
            Error::Corrupt { block, what } => {
                write!(f, "file system corrupt at block {block}: {what}")
            }
            Error::BadDevice { what } => write!(f, "device unusable: {what}"),
            Error::NotFound => f.write_str("no such file or directory"),
            Error::Exists => f.write_str("file exists"),
            Error::NotDir => f.write_str("not a directory"),
            Error::IsDir => f.write_str("is a directory"),
            Error::NotEmpty => f.write_str("directory not empty"),
            Error::NoSpace => f.write_str("no space left on device"),
            Error::InvalidPath => f.write_str("invalid path"),
            Error::Invalid { what } => write!(f, "invalid argument: {what}"),
            Error::StaleHandle => f.write_str("stale file handle"),
            Error::TooManyFiles => f.write_str("inode table full"),
            Error::Poisoned => {
                f.write_str("an earlier device error stopped the file system; remount")
            }
        }
    }
}

impl embedded_io::Error for Error {
    fn kind(&self) -> embedded_io::ErrorKind {
        use embedded_io::ErrorKind as K;
        match self {
            Error::NotFound | Error::StaleHandle => K::NotFound,
            Error::Exists => K::AlreadyExists,
            Error::NoSpace => K::OutOfMemory,
            Error::InvalidPath | Error::Invalid { .. } | Error::NotDir | Error::IsDir => {
                K::InvalidInput
            }
            Error::NotEmpty => K::InvalidInput,
            Error::Corrupt { .. } | Error::UnsupportedVersion { .. } | Error::NotFormatted => {
                K::InvalidData
            }
            _ => K::Other,
        }
    }
}

/// The result of a file system operation.
pub type Result<T> = core::result::Result<T, Error>;
