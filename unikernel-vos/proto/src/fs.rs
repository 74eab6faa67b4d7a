//! The `fs` server's protocol: files and directories by path, data by handle.
//!
//! A client calls the server's endpoint (`storage.fs`) with `sendrec`; the server answers every
//! request with exactly one reply. Requests from several clients are served one after the other.
//!
//! ## Messages
//! | direction | `mtype` | payload (postcard, then zero bytes to the end) |
//! |---|---|---|
//! | client → server | [`REQUEST`] `0x6673_7201` | an [`FsRequest`] |
//! | server → client | [`REPLY`] `0x6673_7202` | an [`FsReply`] |
//!
//! postcard writes an enum as its variant index (a varint), then its fields in order, integers as
//! varints and `bool` as one byte. So `Unlink { path: BufRange { offset: 0, len: 6 } }` is
//! `05 00 06` and then zeros. No request takes more than 36 and no reply more than 26 of the 56
//! payload bytes (tested with the largest values).
//!
//! | index | request | reply on success |
//! |---|---|---|
//! | 0 | `Open { path, create, exclusive, truncate }` | `Opened { handle, size }` |
//! | 1 | `Read { handle, offset, buf }` | `Done { len }`: `len` bytes pushed to `buf.offset` (0 at the end) |
//! | 2 | `Write { handle, offset, buf }` | `Done { len }`: all of `buf` written at `offset` |
//! | 3 | `Truncate { handle, size }` | `Ok` |
//! | 4 | `Rename { from, to }` | `Ok` (durable) |
//! | 5 | `Unlink { path }` | `Ok` (durable; a file or an empty directory) |
//! | 6 | `Mkdir { path }` | `Ok` (durable) |
//! | 7 | `Readdir { path, start, buf }` | `Listing { entries, bytes, more }` |
//! | 8 | `Stat { path }` | `Stat(StatInfo)` |
//! | 9 | `Fstat { handle }` | `Stat(StatInfo)` |
//! | 10 | `Fsync { handle }` | `Ok` (the file, and every change before, durable) |
//! | 11 | `Close { handle }` | `Ok` |
//! | 12 | `Space` | `Space { block_size, blocks, available }` |
//!
//! Every request may instead be answered `Error(FsError)`; reply indices: 0 `Ok`, 1 `Opened`,
//! 2 `Done`, 3 `Stat`, 4 `Listing`, 5 `Space`, 6 `Error`.
//!
//! ## Paths and data: the client's vcopy buffer, never the payload
//! A [`BufRange`] names `len` bytes at `offset` in the **client's** vcopy buffer. Paths are read
//! from there (UTF-8, the rules of [`validate_path`], at most [`MAX_PATH`] bytes); `Write` data is
//! pulled from there and `Read` data and `Readdir` listings are pushed there, the server being
//! the vcopy requester each time. At most [`MAX_IO`] bytes move per `Read`/`Write`
//! ([`FsError::TooLarge`] beyond). A range the client's buffer does not hold is
//! [`FsError::Buffer`] with the code of the failed vcopy.
//!
//! ## Handles
//! `handle` is a number the server gives this client in `Opened`; it means nothing to another
//! client (the server keys its table by the caller's endpoint, which the engine fills in and the
//! payload cannot forge). A handle of a removed file answers [`FsError::BadHandle`].
//!
//! ## Listings
//! `Readdir` writes entries number `start..` (in name order) into `buf`, as many whole entries as
//! fit, each as [`push_entry`] lays it out: kind (1 byte: 1 file, 2 directory), name length
//! (1 byte), size (8 bytes little-endian: bytes, or entries for a directory), then the name.
//! `entries` and `bytes` say how much was written; `more` that entries remain (ask again with
//! `start + entries`). [`parse_listing`] reads it back.
//!
//! ## Durability
//! `Write`, `Truncate` and the creation by `Open` are durable once a later `Fsync` (of any file)
//! or a durable request (`Rename`, `Unlink`, `Mkdir`) has been answered `Ok`. The server commits
//! the whole tree atomically (see unikernel-vos/fs/README.md).

use crate::ProtoError;
use core::fmt;
use m3ipc_core::ErrorCode;
use serde::{Deserialize, Serialize};

/// The `mtype` of a request to the fs server.
pub const REQUEST: u32 = 0x6673_7201;
/// The `mtype` of the fs server's replies.
pub const REPLY: u32 = 0x6673_7202;
/// The most bytes one `Read` or `Write` moves.
pub const MAX_IO: u32 = 256 * 1024;
/// The path rules are the file system's own, written once in `dvs_fs::path`: the http server
/// runs `validate_path` after percent-decoding, the fs server on every path it pulls from a client.
pub use dvs_fs::path::{check as validate_path, PathError, MAX_NAME, MAX_PATH};
/// Bytes of a listing entry before its name.
pub const ENTRY_HEADER: usize = 10;

/// `len` bytes at `offset` in the client's vcopy buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BufRange {
    /// Byte offset in the client's buffer.
    pub offset: u64,
    /// Bytes.
    pub len: u32,
}

impl BufRange {
    /// The range, refused as [`FsError::TooLarge`] if it is longer than `max`.
    pub fn check(&self, max: u32) -> Result<BufRange, FsError> {
        if self.len > max {
            Err(FsError::TooLarge { len: self.len, max })
        } else {
            Ok(*self)
        }
    }
}

/// A request to the fs server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FsRequest {
    /// Opens the file at `path`; with `create` makes it if missing (with `exclusive`, fails with
    /// `Exists` if present); with `truncate` cuts it to length 0.
    Open {
        /// The path, in the client's buffer.
        path: BufRange,
        /// Create if missing.
        create: bool,
        /// With `create`: fail if present.
        exclusive: bool,
        /// Cut to length 0.
        truncate: bool,
    },
    /// Reads up to `buf.len` bytes at `offset` into the client's buffer.
    Read {
        /// An open file.
        handle: u32,
        /// Byte offset in the file.
        offset: u64,
        /// Where the bytes go.
        buf: BufRange,
    },
    /// Writes the `buf.len` bytes of the client's buffer at `offset`.
    Write {
        /// An open file.
        handle: u32,
        /// Byte offset in the file.
        offset: u64,
        /// Where the bytes come from.
        buf: BufRange,
    },
    /// Sets the file's length.
    Truncate {
        /// An open file.
        handle: u32,
        /// The new length.
        size: u64,
    },
    /// Moves `from` to `to` (a file replaces a file; a directory is never replaced).
    Rename {
        /// The old path.
        from: BufRange,
        /// The new path.
        to: BufRange,
    },
    /// Removes a file or an empty directory.
    Unlink {
        /// The path.
        path: BufRange,
    },
    /// Creates a directory.
    Mkdir {
        /// The path.
        path: BufRange,
    },
    /// Lists directory `path` from entry `start` into `buf`.
    Readdir {
        /// The directory.
        path: BufRange,
        /// The first entry wanted (0 for the beginning).
        start: u32,
        /// Where the listing goes.
        buf: BufRange,
    },
    /// What is at `path`.
    Stat {
        /// The path.
        path: BufRange,
    },
    /// What an open file is.
    Fstat {
        /// An open file.
        handle: u32,
    },
    /// Makes the file (and every change before) durable.
    Fsync {
        /// An open file.
        handle: u32,
    },
    /// Forgets a handle.
    Close {
        /// An open file.
        handle: u32,
    },
    /// The file system's size and free space.
    Space,
}

/// File or directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FileKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
}

/// What `Stat` and `Fstat` answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatInfo {
    /// File or directory.
    pub kind: FileKind,
    /// Bytes (file) or entries (directory).
    pub size: u64,
    /// Unique over the file system's life for this file (an HTTP validator can use it).
    pub serial: u64,
}

/// A reply of the fs server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FsReply {
    /// Done; nothing to report.
    Ok,
    /// The answer to `Open`.
    Opened {
        /// The client's handle for the file.
        handle: u32,
        /// The file's length.
        size: u64,
    },
    /// The answer to `Read` and `Write`: bytes moved.
    Done {
        /// Bytes read (0 at the end of the file) or written.
        len: u32,
    },
    /// The answer to `Stat` and `Fstat`.
    Stat(StatInfo),
    /// The answer to `Readdir`.
    Listing {
        /// Entries written.
        entries: u32,
        /// Bytes written.
        bytes: u32,
        /// Entries remain after these.
        more: bool,
    },
    /// The answer to `Space`.
    Space {
        /// Bytes per block.
        block_size: u32,
        /// Blocks in the file system.
        blocks: u64,
        /// Blocks a write can take now.
        available: u64,
    },
    /// The request failed; see [`FsError`] for what changed.
    Error(FsError),
}

/// Why the fs server did not carry out a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FsError {
    /// The request did not decode.
    Malformed,
    /// No such file or directory.
    NotFound,
    /// The name exists already.
    Exists,
    /// A path component is not a directory.
    NotDir,
    /// A directory where a file is needed.
    IsDir,
    /// The directory is not empty.
    NotEmpty,
    /// The disk is full; nothing of this request was written (HTTP 507).
    NoSpace,
    /// The path breaks [`validate_path`]'s rules.
    InvalidPath,
    /// The handle is unknown to this client, or its file was removed.
    BadHandle,
    /// A range longer than allowed.
    TooLarge {
        /// The length asked for.
        len: u32,
        /// The most allowed.
        max: u32,
    },
    /// The vcopy with the client's buffer failed with this M3-IPC error code.
    Buffer {
        /// The M3-IPC error code.
        code: u16,
    },
    /// An argument out of range (a write past the largest file, a directory into itself, `/`).
    Invalid,
    /// The client holds too many handles.
    TooManyHandles,
    /// The disk server failed or is away; the file system stops until it is remounted.
    Io,
    /// The disk holds no file system of ours that can be used (corrupt, another version).
    Corrupt,
}

impl FsError {
    /// The HTTP status a web server answers for this error.
    pub fn http_status(&self) -> u16 {
        match self {
            FsError::NotFound => 404,
            FsError::Exists | FsError::NotEmpty | FsError::IsDir | FsError::NotDir => 409,
            FsError::NoSpace => 507,
            FsError::InvalidPath | FsError::Invalid => 400,
            FsError::TooLarge { .. } => 413,
            FsError::Io | FsError::TooManyHandles => 503,
            FsError::Malformed | FsError::BadHandle | FsError::Buffer { .. } | FsError::Corrupt => {
                500
            }
        }
    }

    /// For [`FsError::Buffer`], the M3-IPC error code (if it names one).
    pub fn ipc_code(&self) -> Option<ErrorCode> {
        match self {
            FsError::Buffer { code } => ErrorCode::from_u16(*code),
            _ => None,
        }
    }
}

impl fmt::Display for FsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            FsError::Malformed => f.write_str("malformed fs request"),
            FsError::NotFound => f.write_str("no such file or directory"),
            FsError::Exists => f.write_str("file exists"),
            FsError::NotDir => f.write_str("not a directory"),
            FsError::IsDir => f.write_str("is a directory"),
            FsError::NotEmpty => f.write_str("directory not empty"),
            FsError::NoSpace => f.write_str("no space left on the disk"),
            FsError::InvalidPath => f.write_str("invalid path"),
            FsError::BadHandle => f.write_str("unknown or stale file handle"),
            FsError::TooLarge { len, max } => {
                write!(f, "{len} bytes in one request; at most {max}")
            }
            FsError::Buffer { code } => match ErrorCode::from_u16(code) {
                Some(c) => write!(f, "vcopy with the client's buffer failed: {}", c.as_str()),
                None => write!(f, "vcopy with the client's buffer failed: code {code}"),
            },
            FsError::Invalid => f.write_str("invalid argument"),
            FsError::TooManyHandles => f.write_str("too many open handles"),
            FsError::Io => f.write_str("disk I/O failed"),
            FsError::Corrupt => f.write_str("the disk holds no usable file system"),
        }
    }
}

message_codec!(FsRequest, REQUEST, "fs request");

message_codec!(FsReply, REPLY, "fs reply");

/// Appends one listing entry at `out[at..]`; returns the offset after it, or `None` (and writes
/// nothing) if it does not fit or the name is longer than [`MAX_NAME`].
pub fn push_entry(
    out: &mut [u8],
    at: usize,
    kind: FileKind,
    size: u64,
    name: &str,
) -> Option<usize> {
    if name.len() > MAX_NAME {
        return None;
    }
    let end = at.checked_add(ENTRY_HEADER + name.len())?;
    let dst = out.get_mut(at..end)?;
    dst[0] = match kind {
        FileKind::File => 1,
        FileKind::Dir => 2,
    };
    dst[1] = name.len() as u8;
    dst[2..10].copy_from_slice(&size.to_le_bytes());
    dst[10..].copy_from_slice(name.as_bytes());
    Some(end)
}

/// One entry read back by [`parse_listing`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListEntry<'a> {
    /// File or directory.
    pub kind: FileKind,
    /// Bytes (file) or entries (directory).
    pub size: u64,
    /// The name.
    pub name: &'a str,
}

/// The entries of a listing (`bytes` as the reply said): malformed bytes are refused, never
/// guessed at.
pub fn parse_listing(mut bytes: &[u8]) -> Result<alloc::vec::Vec<ListEntry<'_>>, ProtoError> {
    let mut out = alloc::vec::Vec::new();
    while !bytes.is_empty() {
        if bytes.len() < ENTRY_HEADER {
            return Err(ProtoError::Malformed);
        }
        let kind = match bytes[0] {
            1 => FileKind::File,
            2 => FileKind::Dir,
            _ => return Err(ProtoError::Malformed),
        };
        let nl = bytes[1] as usize;
        let mut size = [0u8; 8];
        size.copy_from_slice(&bytes[2..10]);
        let name = bytes
            .get(ENTRY_HEADER..ENTRY_HEADER + nl)
            .and_then(|n| core::str::from_utf8(n).ok())
            .filter(|n| !n.is_empty() && !n.contains('/'))
            .ok_or(ProtoError::Malformed)?;
        out.push(ListEntry {
            kind,
            size: u64::from_le_bytes(size),
            name,
        });
        bytes = &bytes[ENTRY_HEADER + nl..];
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;
    use m3ipc_core::message::PAYLOAD_LEN;
    use m3ipc_core::Message;
    use proptest::prelude::*;

    fn used(m: &Message) -> usize {
        m.payload.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1)
    }

    const BIG: BufRange = BufRange {
        offset: u64::MAX,
        len: u32::MAX,
    };

    #[test]
    fn the_layout_is_as_documented() {
        let m = FsRequest::Unlink {
            path: BufRange { offset: 0, len: 6 },
        }
        .encode();
        assert_eq!(m.mtype, 0x6673_7201);
        assert_eq!(&m.payload[..3], &[5, 0, 6]);
        assert!(m.payload[3..].iter().all(|&b| b == 0));
        assert_eq!(FsRequest::Space.encode().payload[0], 12);
        let r = FsReply::Error(FsError::NoSpace).encode();
        assert_eq!((r.mtype, &r.payload[..2]), (0x6673_7202, &[6u8, 6][..]));
    }

    #[test]
    fn the_largest_values_fit() {
        let reqs = [
            FsRequest::Open {
                path: BIG,
                create: true,
                exclusive: true,
                truncate: true,
            },
            FsRequest::Read {
                handle: u32::MAX,
                offset: u64::MAX,
                buf: BIG,
            },
            FsRequest::Write {
                handle: u32::MAX,
                offset: u64::MAX,
                buf: BIG,
            },
            FsRequest::Rename { from: BIG, to: BIG },
            FsRequest::Readdir {
                path: BIG,
                start: u32::MAX,
                buf: BIG,
            },
            FsRequest::Truncate {
                handle: u32::MAX,
                size: u64::MAX,
            },
        ];
        for r in reqs {
            let m = r.encode();
            assert!(used(&m) <= 36, "{r:?}: {} bytes", used(&m));
            assert_eq!(FsRequest::decode(&m), Ok(r));
        }
        let replies = [
            FsReply::Opened {
                handle: u32::MAX,
                size: u64::MAX,
            },
            FsReply::Stat(StatInfo {
                kind: FileKind::Dir,
                size: u64::MAX,
                serial: u64::MAX,
            }),
            FsReply::Listing {
                entries: u32::MAX,
                bytes: u32::MAX,
                more: true,
            },
            FsReply::Space {
                block_size: u32::MAX,
                blocks: u64::MAX,
                available: u64::MAX,
            },
            FsReply::Error(FsError::TooLarge {
                len: u32::MAX,
                max: u32::MAX,
            }),
        ];
        for r in replies {
            let m = r.encode();
            assert!(used(&m) <= 26, "{r:?}: {} bytes", used(&m));
            assert_eq!(FsReply::decode(&m), Ok(r));
        }
    }

    #[test]
    fn hostile_messages_are_refused() {
        let req = FsRequest::Space.encode();
        assert!(matches!(
            FsReply::decode(&req),
            Err(ProtoError::WrongType { .. })
        ));
        let mut m = Message::new(REQUEST);
        m.payload[0] = 13;
        assert_eq!(FsRequest::decode(&m), Err(ProtoError::Malformed));
        let mut m = Message::new(REQUEST);
        m.payload = [0xff; PAYLOAD_LEN];
        m.payload[0] = 1;
        assert_eq!(FsRequest::decode(&m), Err(ProtoError::Malformed));
        // A bool that is neither 0 nor 1.
        let mut m = Message::new(REQUEST);
        m.payload[..5].copy_from_slice(&[0, 0, 1, 2, 0]);
        assert_eq!(FsRequest::decode(&m), Err(ProtoError::Malformed));
        let mut m = FsRequest::Space.encode();
        m.payload[40] = 1;
        assert_eq!(
            FsRequest::decode(&m),
            Err(ProtoError::TrailingBytes { at: 40 })
        );
        assert!(FsRequest::decode(&Message::new(Message::NOTIFY_MTYPE)).is_err());
    }

    #[test]
    fn ranges_and_statuses() {
        let r = BufRange {
            offset: 9,
            len: MAX_IO + 1,
        };
        assert_eq!(
            r.check(MAX_IO),
            Err(FsError::TooLarge {
                len: MAX_IO + 1,
                max: MAX_IO
            })
        );
        assert!(BufRange { offset: 0, len: 7 }.check(MAX_IO).is_ok());
        assert_eq!(FsError::NoSpace.http_status(), 507);
        assert_eq!(FsError::NotFound.http_status(), 404);
        assert_eq!(FsError::InvalidPath.http_status(), 400);
        assert_eq!(
            FsError::Buffer { code: 7 }.ipc_code(),
            Some(ErrorCode::BufferOutOfRange)
        );
    }

    #[test]
    fn paths() {
        for ok in ["/", "/a", "/a/b.txt", "/é/ü", "/...", "/a..b"] {
            assert_eq!(validate_path(ok.as_bytes()), Ok(ok), "{ok}");
        }
        let cases: [(&[u8], PathError); 9] = [
            (b"", PathError::NotAbsolute),
            (b"a/b", PathError::NotAbsolute),
            (b"//", PathError::EmptyComponent),
            (b"/a/", PathError::EmptyComponent),
            (b"/a//b", PathError::EmptyComponent),
            (b"/a/../b", PathError::DotComponent),
            (b"/.", PathError::DotComponent),
            (b"/a\0b", PathError::BadByte { at: 2 }),
            (b"/\xff", PathError::NotUtf8),
        ];
        for (p, e) in cases {
            assert_eq!(validate_path(p), Err(e), "{p:?}");
        }
        let long = alloc::format!("/{}", "x".repeat(256));
        assert_eq!(
            validate_path(long.as_bytes()),
            Err(PathError::NameTooLong { len: 256 })
        );
        let longer = "/x".repeat(600);
        assert_eq!(
            validate_path(longer.as_bytes()),
            Err(PathError::TooLong { len: 1200 })
        );
    }

    #[test]
    fn listings_round_trip_and_stop_when_full() {
        let mut buf = [0u8; 40];
        let at = push_entry(&mut buf, 0, FileKind::File, 1234, "index.html").unwrap();
        assert_eq!(at, 20);
        let at = push_entry(&mut buf, at, FileKind::Dir, 2, "img").unwrap();
        assert_eq!(push_entry(&mut buf, at, FileKind::File, 0, "toolong"), None);
        let got = parse_listing(&buf[..at]).unwrap();
        assert_eq!(
            got,
            [
                ListEntry {
                    kind: FileKind::File,
                    size: 1234,
                    name: "index.html"
                },
                ListEntry {
                    kind: FileKind::Dir,
                    size: 2,
                    name: "img"
                },
            ]
        );
        assert!(parse_listing(&buf[..at - 1]).is_err());
        assert!(parse_listing(&[3, 0, 0, 0, 0, 0, 0, 0, 0, 0]).is_err());
        assert!(parse_listing(&[1, 0, 0, 0, 0, 0, 0, 0, 0, 0]).is_err());
    }

    fn range() -> impl Strategy<Value = BufRange> {
        (any::<u64>(), any::<u32>()).prop_map(|(offset, len)| BufRange { offset, len })
    }

    fn any_request() -> impl Strategy<Value = FsRequest> {
        prop_oneof![
            (range(), any::<bool>(), any::<bool>(), any::<bool>()).prop_map(
                |(path, create, exclusive, truncate)| {
                    FsRequest::Open {
                        path,
                        create,
                        exclusive,
                        truncate,
                    }
                }
            ),
            (any::<u32>(), any::<u64>(), range()).prop_map(|(handle, offset, buf)| {
                FsRequest::Read {
                    handle,
                    offset,
                    buf,
                }
            }),
            (any::<u32>(), any::<u64>(), range()).prop_map(|(handle, offset, buf)| {
                FsRequest::Write {
                    handle,
                    offset,
                    buf,
                }
            }),
            (any::<u32>(), any::<u64>())
                .prop_map(|(handle, size)| FsRequest::Truncate { handle, size }),
            (range(), range()).prop_map(|(from, to)| FsRequest::Rename { from, to }),
            range().prop_map(|path| FsRequest::Unlink { path }),
            range().prop_map(|path| FsRequest::Mkdir { path }),
            (range(), any::<u32>(), range()).prop_map(|(path, start, buf)| FsRequest::Readdir {
                path,
                start,
                buf
            }),
            range().prop_map(|path| FsRequest::Stat { path }),
            any::<u32>().prop_map(|handle| FsRequest::Fstat { handle }),
            any::<u32>().prop_map(|handle| FsRequest::Fsync { handle }),
            any::<u32>().prop_map(|handle| FsRequest::Close { handle }),
            Just(FsRequest::Space),
        ]
    }

    proptest! {
        #[test]
        fn requests_round_trip(r in any_request()) {
            prop_assert_eq!(FsRequest::decode(&r.encode()), Ok(r));
        }

        #[test]
        fn any_payload_decodes_or_is_refused(
            bytes in proptest::collection::vec(any::<u8>(), PAYLOAD_LEN),
            reply in any::<bool>(),
        ) {
            let mut m = Message::new(if reply { REPLY } else { REQUEST });
            m.payload.copy_from_slice(&bytes);
            if reply {
                if let Ok(r) = FsReply::decode(&m) {
                    prop_assert_eq!(FsReply::decode(&r.encode()), Ok(r));
                }
            } else if let Ok(r) = FsRequest::decode(&m) {
                prop_assert_eq!(FsRequest::decode(&r.encode()), Ok(r));
            }
        }

        #[test]
        fn any_listing_bytes_parse_or_are_refused(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = parse_listing(&bytes);
        }

        #[test]
        fn any_path_bytes_validate_or_are_refused(bytes in proptest::collection::vec(any::<u8>(), 0..40)) {
            if let Ok(p) = validate_path(&bytes) {
                prop_assert_eq!(p.as_bytes(), &bytes[..]);
            }
        }
    }
}
