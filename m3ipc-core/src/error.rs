//! The result codes of M3-IPC calls; the same numbers travel in Error frames.

use core::fmt;

/// Why an M3-IPC call failed. `#[repr(u16)]`: the value is the wire `code` of an Error frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum ErrorCode {
    /// No endpoint with that number exists in this DC.
    UnknownDestination = 1,
    /// The endpoint existed but its task has ended.
    DeadDestination = 2,
    /// Reserved (wire value kept): the routers answer `UnknownDestination` for an endpoint of
    /// another DC, so that a caller learns nothing about other DCs.
    NotInDc = 3,
    /// The call's deadline passed without an answer (the outcome at the peer is unknown).
    Timeout = 4,
    /// The endpoint moved; the engine resends by itself, callers never see this code.
    Migrated = 5,
    /// The node holding the peer cannot be reached.
    NodeUnreachable = 6,
    /// A vcopy range lies outside an endpoint's buffer, or the endpoint has none.
    BufferOutOfRange = 7,
    /// The endpoint already has a blocking call in progress, or a queue is full.
    Busy = 8,
    /// A frame failed to decode.
    BadFrame = 9,
    /// The caller may not do this (e.g. vcopy between two endpoints neither of which is its own).
    NotAllowed = 10,
    /// A vcopy arrived whole but its end-to-end checksum differs.
    ChecksumMismatch = 11,
    /// An argument is out of its domain (e.g. sending to `ANY`).
    InvalidArgument = 12,
    /// The local endpoint is not bound in this engine.
    NotBound = 13,
    /// A reply was given to an endpoint that is not waiting for one from the replier.
    NotWaiting = 14,
}

/// The error type of M3-IPC calls.
pub type IpcError = ErrorCode;

impl ErrorCode {
    /// Every code, in wire order.
    pub const ALL: [ErrorCode; 14] = [
        ErrorCode::UnknownDestination,
        ErrorCode::DeadDestination,
        ErrorCode::NotInDc,
        ErrorCode::Timeout,
        ErrorCode::Migrated,
        ErrorCode::NodeUnreachable,
        ErrorCode::BufferOutOfRange,
        ErrorCode::Busy,
        ErrorCode::BadFrame,
        ErrorCode::NotAllowed,
        ErrorCode::ChecksumMismatch,
        ErrorCode::InvalidArgument,
        ErrorCode::NotBound,
        ErrorCode::NotWaiting,
    ];

    /// The code for a wire value, if it names one.
    pub fn from_u16(v: u16) -> Option<ErrorCode> {
        ErrorCode::ALL.iter().copied().find(|c| *c as u16 == v)
    }

    /// A short English description.
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorCode::UnknownDestination => "unknown destination",
            ErrorCode::DeadDestination => "dead destination",
            ErrorCode::NotInDc => "not in this DC",
            ErrorCode::Timeout => "timeout",
            ErrorCode::Migrated => "migrated",
            ErrorCode::NodeUnreachable => "node unreachable",
            ErrorCode::BufferOutOfRange => "buffer out of range",
            ErrorCode::Busy => "busy",
            ErrorCode::BadFrame => "bad frame",
            ErrorCode::NotAllowed => "not allowed",
            ErrorCode::ChecksumMismatch => "checksum mismatch",
            ErrorCode::InvalidArgument => "invalid argument",
            ErrorCode::NotBound => "endpoint not bound here",
            ErrorCode::NotWaiting => "destination is not waiting for a reply",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(feature = "std")]
impl std::error::Error for ErrorCode {}
