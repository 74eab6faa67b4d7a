//! # dvs-vos-proto — the message protocols of the VOS servers
//!
//! One module per server, shared by its clients and the server itself: [`disk`] (the block
//! server), [`fs`] (the file server). Every request and reply is one M3-IPC [`Message`]: its `mtype` says which protocol
//! and direction, its 56-byte payload holds the postcard encoding of a typed value, followed by
//! zero bytes up to the end. Bulk data (blocks, file contents, paths) never travels in a payload:
//! the client keeps it in its own vcopy buffer and the request names an offset in that buffer;
//! the server moves the bytes with vcopy.
//!
//! Decoding is strict: a wrong `mtype`, bytes that are not a value of the expected type, or a
//! non-zero byte after the value are a [`ProtoError`], never a guess. Built for the host (tests,
//! host clients) and for the guest (`x86_64-unknown-none`).
#![no_std]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

extern crate alloc;

/// Gives a protocol value `encode(&self) -> Message` and `decode(&Message) -> Result<Self, ProtoError>`
/// for message type `$mtype`. Every value of these types fits the payload (each module tests its
/// largest values), so `encode` cannot fail.
macro_rules! message_codec {
    ($ty:ident, $mtype:ident, $what:literal) => {
        impl $ty {
            #[doc = concat!("This ", $what, " as a message of type [`", stringify!($mtype), "`].")]
            pub fn encode(&self) -> m3ipc_core::Message {
                match $crate::encode_value($mtype, self) {
                    Ok(m) => m,
                    Err(_) => unreachable!(concat!("every ", $what, " fits the payload")),
                }
            }

            #[doc = concat!("The ", $what, " in `m` (type [`", stringify!($mtype), "`], strict).")]
            pub fn decode(m: &m3ipc_core::Message) -> Result<$ty, $crate::ProtoError> {
                $crate::decode_value($mtype, m)
            }
        }
    };
}

pub mod disk;
pub mod fs;

use core::fmt;
use m3ipc_core::message::PAYLOAD_LEN;
use m3ipc_core::Message;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Why a message could not be decoded (or a value could not be encoded).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProtoError {
    /// The message's type is not the one this decoder reads.
    WrongType {
        /// The type expected.
        expected: u32,
        /// The type found.
        found: u32,
    },
    /// The payload does not start with a valid value of the expected type.
    Malformed,
    /// The value is followed by a non-zero byte at this payload offset.
    TrailingBytes {
        /// Offset of the first non-zero byte after the value.
        at: usize,
    },
    /// The value's encoding does not fit the 56-byte payload.
    TooLong,
}

impl fmt::Display for ProtoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtoError::WrongType { expected, found } => write!(
                f,
                "message type {found:#010x} where {expected:#010x} was expected"
            ),
            ProtoError::Malformed => write!(f, "payload is not a valid encoding"),
            ProtoError::TrailingBytes { at } => {
                write!(f, "non-zero byte at payload offset {at} after the value")
            }
            ProtoError::TooLong => write!(f, "value does not fit the {PAYLOAD_LEN}-byte payload"),
        }
    }
}

/// A message of type `mtype` whose payload is the postcard encoding of `value`, zero-padded.
pub fn encode_value<T: Serialize>(mtype: u32, value: &T) -> Result<Message, ProtoError> {
    let mut m = Message::new(mtype);
    postcard::to_slice(value, &mut m.payload).map_err(|_| ProtoError::TooLong)?;
    Ok(m)
}

/// The value of type `T` in `m`, which must be of type `mtype`: the payload must hold a postcard
/// encoding of a `T` followed only by zero bytes.
pub fn decode_value<T: DeserializeOwned>(mtype: u32, m: &Message) -> Result<T, ProtoError> {
    if m.mtype != mtype {
        return Err(ProtoError::WrongType {
            expected: mtype,
            found: m.mtype,
        });
    }
    let (value, rest) =
        postcard::take_from_bytes::<T>(&m.payload).map_err(|_| ProtoError::Malformed)?;
    if let Some(i) = rest.iter().position(|&b| b != 0) {
        return Err(ProtoError::TrailingBytes {
            at: PAYLOAD_LEN - rest.len() + i,
        });
    }
    Ok(value)
}
