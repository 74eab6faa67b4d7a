//! The `disk` server's protocol: blocks of one virtio-blk device, read, written and flushed.
//!
//! A client calls the server's endpoint (`storage.disk`) with `sendrec`; the server answers every
//! request with exactly one reply, requests from several clients one after the other (the
//! rendezvous queues them; none is refused for being second).
//!
//! ## Messages
//! | direction | `mtype` | payload (postcard, then zero bytes to the end) |
//! |---|---|---|
//! | client → server | [`REQUEST`] `0x6473_6b01` | a [`DiskRequest`] |
//! | server → client | [`REPLY`] `0x6473_6b02` | a [`DiskReply`] |
//!
//! postcard writes an enum as its variant index (a varint) and then its fields in order, each
//! integer as a varint (7 bits a byte, low first, high bit = more). So `Read { block: 8, count:
//! 64, buf_offset: 0 }` is `01 08 40 00`, then 52 zero bytes. No request or reply takes more than
//! 28 of the 56 payload bytes.
//!
//! | variant index | request | reply |
//! |---|---|---|
//! | 0 | `Info` | `Info { block_size, blocks }` |
//! | 1 | `Read { block, count, buf_offset }` | `Done` |
//! | 2 | `Write { block, count, buf_offset }` | `Error(DiskError)` |
//! | 3 | `Flush` | — |
//!
//! ## Bulk data: vcopy, never the payload
//! `Read` and `Write` name `count` blocks starting at block `block` and a byte offset
//! `buf_offset` in the **client's** vcopy buffer (the buffer of the endpoint that sent the
//! request). For `Write` the server pulls `count * BLOCK_SIZE` bytes from the client's buffer at
//! `buf_offset`, then writes them to the device; for `Read` it reads the blocks and pushes them
//! into the client's buffer at `buf_offset`. The server is the vcopy requester both times, so the
//! client needs no call of its own: it sets its buffer, sends the request and waits for the
//! reply. `Done` means the bytes are on the device (`Write`, as far as the device's write cache)
//! or in the client's buffer (`Read`). A `Flush` answered `Done` means every `Write` answered
//! before it is on stable storage (the host file, `fdatasync`ed).
//!
//! At most [`MAX_BLOCKS`] blocks ([`MAX_BYTES`], 256 KiB) move per request; a bigger one is
//! refused with [`DiskError::TooLarge`]. A range past the end of the device is
//! [`DiskError::OutOfRange`]; a buffer range the client's buffer does not hold is
//! [`DiskError::Buffer`] with the M3-IPC code of the failed vcopy. `count == 0` is a valid
//! request that moves nothing.

use core::fmt;
use m3ipc_core::ErrorCode;
use serde::{Deserialize, Serialize};

/// The `mtype` of a request to the disk server.
pub const REQUEST: u32 = 0x6473_6b01;
/// The `mtype` of the disk server's replies.
pub const REPLY: u32 = 0x6473_6b02;
/// Bytes per block (virtio-blk's sector size; the server refuses devices with another).
pub const BLOCK_SIZE: u32 = 512;
/// The most bytes one `Read` or `Write` moves.
pub const MAX_BYTES: u64 = 256 * 1024;
/// The most blocks one `Read` or `Write` moves.
pub const MAX_BLOCKS: u32 = (MAX_BYTES / BLOCK_SIZE as u64) as u32;

/// A request to the disk server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DiskRequest {
    /// The device's geometry: answered with [`DiskReply::Info`].
    Info,
    /// Blocks `block .. block + count` into the client's buffer at `buf_offset`.
    Read {
        /// The first block.
        block: u64,
        /// How many blocks (at most [`MAX_BLOCKS`]).
        count: u32,
        /// Byte offset in the client's vcopy buffer.
        buf_offset: u64,
    },
    /// The client's buffer at `buf_offset` onto blocks `block .. block + count`.
    Write {
        /// The first block.
        block: u64,
        /// How many blocks (at most [`MAX_BLOCKS`]).
        count: u32,
        /// Byte offset in the client's vcopy buffer.
        buf_offset: u64,
    },
    /// Makes every write answered so far durable.
    Flush,
}

/// A reply of the disk server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DiskReply {
    /// The answer to [`DiskRequest::Info`].
    Info {
        /// Bytes per block ([`BLOCK_SIZE`]).
        block_size: u32,
        /// Blocks on the device.
        blocks: u64,
    },
    /// The request was carried out.
    Done,
    /// The request was refused or failed; nothing is known to have been written unless said.
    Error(DiskError),
}

/// Why the disk server did not carry out a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DiskError {
    /// The request did not decode (wrong type, bad bytes, trailing bytes).
    Malformed,
    /// The blocks `block .. block + count` are not all on the device of `blocks` blocks.
    OutOfRange {
        /// The first block asked for.
        block: u64,
        /// The blocks asked for.
        count: u32,
        /// Blocks on the device.
        blocks: u64,
    },
    /// More blocks than one request may move.
    TooLarge {
        /// The blocks asked for.
        count: u32,
        /// The most allowed ([`MAX_BLOCKS`]).
        max: u32,
    },
    /// The vcopy between the client's buffer and the server failed: `code` is its M3-IPC
    /// [`ErrorCode`] (`BufferOutOfRange`, 7: the client's buffer does not hold
    /// `buf_offset .. buf_offset + count * BLOCK_SIZE`). For a `Write`, nothing was written.
    Buffer {
        /// The M3-IPC error code of the failed vcopy.
        code: u16,
    },
    /// The device failed the operation (for a `Write`: the blocks' contents are unknown).
    Io,
    /// The device is read-only; nothing was written.
    ReadOnly,
    /// The server had no memory for the transfer's `bytes`; try again or with less.
    NoMemory {
        /// The bytes the transfer needed.
        bytes: u64,
    },
}

impl DiskError {
    /// For [`DiskError::Buffer`], the M3-IPC error code (if it names one).
    pub fn ipc_code(&self) -> Option<ErrorCode> {
        match self {
            DiskError::Buffer { code } => ErrorCode::from_u16(*code),
            _ => None,
        }
    }
}

impl fmt::Display for DiskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            DiskError::Malformed => write!(f, "malformed disk request"),
            DiskError::OutOfRange {
                block,
                count,
                blocks,
            } => write!(
                f,
                "blocks {block}+{count} lie outside the disk of {blocks} blocks"
            ),
            DiskError::TooLarge { count, max } => {
                write!(f, "{count} blocks in one request; at most {max}")
            }
            DiskError::Buffer { code } => match ErrorCode::from_u16(code) {
                Some(c) => write!(f, "vcopy with the client's buffer failed: {}", c.as_str()),
                None => write!(f, "vcopy with the client's buffer failed: code {code}"),
            },
            DiskError::Io => write!(f, "device I/O error"),
            DiskError::ReadOnly => write!(f, "the disk is read-only"),
            DiskError::NoMemory { bytes } => {
                write!(f, "no memory for a transfer of {bytes} bytes")
            }
        }
    }
}

/// Checks `count` blocks from `block` against a device of `blocks` blocks and the per-request
/// limit; the byte length of the transfer if it may go ahead.
pub fn check_range(block: u64, count: u32, blocks: u64) -> Result<u64, DiskError> {
    if count > MAX_BLOCKS {
        return Err(DiskError::TooLarge {
            count,
            max: MAX_BLOCKS,
        });
    }
    match block.checked_add(u64::from(count)) {
        Some(end) if end <= blocks => Ok(u64::from(count) * u64::from(BLOCK_SIZE)),
        _ => Err(DiskError::OutOfRange {
            block,
            count,
            blocks,
        }),
    }
}

message_codec!(DiskRequest, REQUEST, "disk request");

message_codec!(DiskReply, REPLY, "disk reply");

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ProtoError;
    use m3ipc_core::message::PAYLOAD_LEN;
    use m3ipc_core::Message;
    use proptest::prelude::*;

    fn used(m: &Message) -> usize {
        m.payload.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1)
    }

    #[test]
    fn the_layout_is_as_documented() {
        let m = DiskRequest::Read {
            block: 8,
            count: 64,
            buf_offset: 0,
        }
        .encode();
        assert_eq!(m.mtype, 0x6473_6b01);
        assert_eq!(&m.payload[..4], &[1, 8, 64, 0]);
        assert!(m.payload[4..].iter().all(|&b| b == 0));
        assert_eq!(DiskRequest::Flush.encode().payload[0], 3);
        let r = DiskReply::Error(DiskError::Buffer { code: 7 }).encode();
        assert_eq!((r.mtype, &r.payload[..3]), (0x6473_6b02, &[2u8, 3, 7][..]));
    }

    #[test]
    fn the_largest_values_fit() {
        let big = [
            DiskRequest::Read {
                block: u64::MAX,
                count: u32::MAX,
                buf_offset: u64::MAX,
            },
            DiskRequest::Write {
                block: u64::MAX,
                count: u32::MAX,
                buf_offset: u64::MAX,
            },
        ];
        for r in big {
            let m = r.encode();
            assert!(used(&m) <= 26, "{r:?}: {} bytes", used(&m));
            assert_eq!(DiskRequest::decode(&m), Ok(r));
        }
        let replies = [
            DiskReply::Info {
                block_size: u32::MAX,
                blocks: u64::MAX,
            },
            DiskReply::Error(DiskError::OutOfRange {
                block: u64::MAX,
                count: u32::MAX,
                blocks: u64::MAX,
            }),
            DiskReply::Error(DiskError::NoMemory { bytes: u64::MAX }),
        ];
        for r in replies {
            let m = r.encode();
            assert!(used(&m) <= 28, "{r:?}: {} bytes", used(&m));
            assert_eq!(DiskReply::decode(&m), Ok(r));
        }
    }

    #[test]
    fn hostile_messages_are_refused() {
        // The wrong type, each way round.
        let req = DiskRequest::Info.encode();
        assert_eq!(
            DiskReply::decode(&req),
            Err(ProtoError::WrongType {
                expected: REPLY,
                found: REQUEST
            })
        );
        // An unknown variant.
        let mut m = Message::new(REQUEST);
        m.payload[0] = 4;
        assert_eq!(DiskRequest::decode(&m), Err(ProtoError::Malformed));
        // A varint that never ends.
        let mut m = Message::new(REQUEST);
        m.payload = [0xff; PAYLOAD_LEN];
        m.payload[0] = 1;
        assert_eq!(DiskRequest::decode(&m), Err(ProtoError::Malformed));
        // count overflowing u32.
        let mut m = Message::new(REQUEST);
        m.payload[..7].copy_from_slice(&[1, 0, 0xff, 0xff, 0xff, 0xff, 0x7f]);
        assert_eq!(DiskRequest::decode(&m), Err(ProtoError::Malformed));
        // Garbage after a valid value.
        let mut m = DiskRequest::Flush.encode();
        m.payload[30] = 9;
        assert_eq!(
            DiskRequest::decode(&m),
            Err(ProtoError::TrailingBytes { at: 30 })
        );
        // A notification is not a request.
        let n = Message::new(Message::NOTIFY_MTYPE);
        assert!(matches!(
            DiskRequest::decode(&n),
            Err(ProtoError::WrongType { .. })
        ));
    }

    #[test]
    fn ranges_are_checked_without_overflow() {
        assert_eq!(check_range(0, 64, 64), Ok(64 * 512));
        assert_eq!(check_range(64, 0, 64), Ok(0));
        assert_eq!(
            check_range(1, 64, 64),
            Err(DiskError::OutOfRange {
                block: 1,
                count: 64,
                blocks: 64
            })
        );
        assert!(matches!(
            check_range(u64::MAX, 2, u64::MAX),
            Err(DiskError::OutOfRange { .. })
        ));
        assert_eq!(
            check_range(0, MAX_BLOCKS + 1, u64::MAX),
            Err(DiskError::TooLarge {
                count: MAX_BLOCKS + 1,
                max: 512
            })
        );
        assert_eq!(check_range(0, MAX_BLOCKS, u64::MAX), Ok(MAX_BYTES));
    }

    #[test]
    fn errors_say_what_failed() {
        let e = DiskError::OutOfRange {
            block: 40,
            count: 30,
            blocks: 64,
        };
        assert_eq!(
            alloc::format!("{e}"),
            "blocks 40+30 lie outside the disk of 64 blocks"
        );
        let b = DiskError::Buffer { code: 7 };
        assert_eq!(b.ipc_code(), Some(ErrorCode::BufferOutOfRange));
        assert!(alloc::format!("{b}").contains("buffer out of range"));
    }

    fn any_request() -> impl Strategy<Value = DiskRequest> {
        prop_oneof![
            Just(DiskRequest::Info),
            Just(DiskRequest::Flush),
            (any::<u64>(), any::<u32>(), any::<u64>()).prop_map(|(block, count, buf_offset)| {
                DiskRequest::Read {
                    block,
                    count,
                    buf_offset,
                }
            }),
            (any::<u64>(), any::<u32>(), any::<u64>()).prop_map(|(block, count, buf_offset)| {
                DiskRequest::Write {
                    block,
                    count,
                    buf_offset,
                }
            }),
        ]
    }

    proptest! {
        #[test]
        fn requests_round_trip(r in any_request()) {
            prop_assert_eq!(DiskRequest::decode(&r.encode()), Ok(r));
        }

        #[test]
        fn any_payload_decodes_or_is_refused(
            bytes in proptest::collection::vec(any::<u8>(), PAYLOAD_LEN),
            reply in any::<bool>(),
        ) {
            let mut m = Message::new(if reply { REPLY } else { REQUEST });
            m.payload.copy_from_slice(&bytes);
            // Never a panic; whatever decodes encodes back to the same bytes' prefix.
            if reply {
                if let Ok(r) = DiskReply::decode(&m) {
                    let back = DiskReply::decode(&r.encode());
                    prop_assert_eq!(back, Ok(r));
                }
            } else if let Ok(r) = DiskRequest::decode(&m) {
                prop_assert_eq!(DiskRequest::decode(&r.encode()), Ok(r));
            }
        }
    }
}
