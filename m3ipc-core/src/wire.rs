//! The M3-IPC wire frame: a 36-byte big-endian header and a payload, carried as the payload of an
//! Ethernet frame of EtherType [`ETHERTYPE_M3IPC`].
//!
//! | bytes  | field          | meaning                                                        |
//! |--------|----------------|----------------------------------------------------------------|
//! | 0..2   | magic          | `0x4D33` ("M3")                                                |
//! | 2      | version        | [`VERSION`] (1)                                                |
//! | 3      | kind           | [`Kind`]                                                       |
//! | 4..6   | dc             | the DC both endpoints belong to                                |
//! | 6..8   | flags          | per kind (see [`flags`]); unknown bits must be zero            |
//! | 8..12  | src            | source endpoint                                                |
//! | 12..16 | dst            | destination endpoint                                           |
//! | 16..24 | seq            | sender's sequence number: `incarnation << 32 \| counter`       |
//! | 24..32 | aux            | per kind: acknowledged seq, vcopy offset, refused seq          |
//! | 32..34 | length         | payload length: at most [`MAX_PAYLOAD`], VcopyData [`MAX_DATA_PAYLOAD`] |
//! | 34..36 | code           | [`ErrorCode`] of an Error frame, else 0                        |
//! | 36..   | payload        | `length` bytes                                                 |
//!
//! The header is read in place through [`Frame`] (byte ranges, no alignment needs, no `unsafe`, no copy):
//! a `#[repr(C)]` struct cast would need an aligned buffer and `unsafe`, and rkyv's validation costs
//! more than these fixed offsets for a 36-byte header. [`FrameRepr`] is the parsed, checked view.
//! Bytes after `36 + length` (Ethernet padding) are ignored.

use crate::error::ErrorCode;
use crate::ids::{DcId, Endpoint};
use crate::message;
use core::fmt;

/// EtherType of Ethernet frames that carry M3-IPC frames (IEEE 802 local experimental 1).
pub const ETHERTYPE_M3IPC: u16 = 0x88B5;
/// Header magic, "M3".
pub const MAGIC: u16 = 0x4D33;
/// Version of this layout.
pub const VERSION: u8 = 1;
/// Length of the M3-IPC header.
pub const HEADER_LEN: usize = 36;
/// Largest payload: an Ethernet MTU of 1500 minus the header.
pub const MAX_PAYLOAD: usize = 1500 - HEADER_LEN;
/// Largest M3-IPC frame.
pub const MAX_FRAME: usize = HEADER_LEN + MAX_PAYLOAD;
/// Bytes of buffer data in one VcopyData frame on a 1500-byte link: the legacy chunk, used unless
/// both ends of a transfer agree on a larger one (see [`VcopyOpen::chunk`]).
pub const VCOPY_CHUNK: usize = 1408;
/// Largest M3-IPC frame on a jumbo link (the largest Ethernet payload a virtual link may carry).
/// Only VcopyData frames grow beyond [`MAX_FRAME`].
pub const MAX_JUMBO_FRAME: usize = 65535;
/// Largest VcopyData payload (a transfer's agreed chunk is at most this).
pub const MAX_DATA_PAYLOAD: usize = MAX_JUMBO_FRAME - HEADER_LEN;

/// The vcopy chunk for a link whose largest Ethernet payload is `mtu` bytes: the data that fits
/// after the M3-IPC header, rounded down to a multiple of 64, and at least [`VCOPY_CHUNK`]
/// (1500 gives exactly [`VCOPY_CHUNK`]).
pub const fn chunk_for_mtu(mtu: usize) -> usize {
    let mtu = if mtu > MAX_JUMBO_FRAME {
        MAX_JUMBO_FRAME
    } else {
        mtu
    };
    let c = mtu.saturating_sub(HEADER_LEN) & !63;
    if c < VCOPY_CHUNK {
        VCOPY_CHUNK
    } else {
        c
    }
}
/// Payload length of a VcopyOpen frame.
pub const VCOPY_OPEN_LEN: usize = 28;
/// Longest VcopyAck payload: the 8-byte SACK bitmap and the 4-byte agreed chunk.
pub const VCOPY_ACK_MAX_LEN: usize = 12;

mod field {
    pub type Field = core::ops::Range<usize>;
    pub const MAGIC: Field = 0..2;
    pub const VERSION: usize = 2;
    pub const KIND: usize = 3;
    pub const DC: Field = 4..6;
    pub const FLAGS: Field = 6..8;
    pub const SRC: Field = 8..12;
    pub const DST: Field = 12..16;
    pub const SEQ: Field = 16..24;
    pub const AUX: Field = 24..32;
    pub const LENGTH: Field = 32..34;
    pub const CODE: Field = 34..36;
    pub const PAYLOAD: usize = 36;
}

/// Flag bits of the header's `flags` field.
pub mod flags {
    /// VcopyOpen: the requester holds the data and will push it (else it asks the peer to push).
    pub const PUSH: u16 = 0x0001;
    /// VcopyAck: all data arrived; the payload carries the receiver's CRC-32 of the whole range.
    pub const FINAL: u16 = 0x0002;
    /// Delivered: the acknowledged frame was a notification.
    pub const NOTIFY: u16 = 0x0004;
    /// Every defined bit.
    pub const ALL: u16 = PUSH | FINAL | NOTIFY;
}

/// What a frame is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Kind {
    /// A message; the receiver acknowledges with Delivered once a task took it (rendezvous).
    Send = 1,
    /// A message that wants a Reply.
    SendRec = 2,
    /// `aux` (a Send, SendRec or Notify seq) was taken by the destination.
    Delivered = 3,
    /// The answer to the SendRec whose seq is `seq`.
    Reply = 4,
    /// A notification (no payload).
    Notify = 5,
    /// Opens the vcopy transfer `seq` (payload: [`VcopyOpen`]).
    VcopyOpen = 6,
    /// Data of transfer `seq` at offset `aux`.
    VcopyData = 7,
    /// Receiver's progress on transfer `seq`: `aux` bytes arrived in order (payload: SACK bitmap, or CRC when FINAL).
    VcopyAck = 8,
    /// Holder's verdict on a pulled transfer: `code` 0 = verified, else the error.
    VcopyFin = 9,
    /// The frame whose seq is `aux` was refused with `code`.
    Error = 10,
    /// The frame whose seq is `aux` reached a place its destination has left; resend.
    Migrated = 11,
    /// Liveness between routers; engines ignore it.
    Keepalive = 12,
    /// The sender gave up the call `seq`; drop it if still queued.
    Cancel = 13,
}

impl Kind {
    /// The kind for a wire value, if it names one.
    pub fn from_u8(v: u8) -> Option<Kind> {
        Some(match v {
            1 => Kind::Send,
            2 => Kind::SendRec,
            3 => Kind::Delivered,
            4 => Kind::Reply,
            5 => Kind::Notify,
            6 => Kind::VcopyOpen,
            7 => Kind::VcopyData,
            8 => Kind::VcopyAck,
            9 => Kind::VcopyFin,
            10 => Kind::Error,
            11 => Kind::Migrated,
            12 => Kind::Keepalive,
            13 => Kind::Cancel,
            _ => return None,
        })
    }

    /// Every kind, in wire order.
    pub const ALL: [Kind; 13] = [
        Kind::Send,
        Kind::SendRec,
        Kind::Delivered,
        Kind::Reply,
        Kind::Notify,
        Kind::VcopyOpen,
        Kind::VcopyData,
        Kind::VcopyAck,
        Kind::VcopyFin,
        Kind::Error,
        Kind::Migrated,
        Kind::Keepalive,
        Kind::Cancel,
    ];

    /// The payload lengths this kind allows, as an inclusive range.
    const fn payload_len_range(self) -> (usize, usize) {
        match self {
            Kind::Send | Kind::SendRec | Kind::Reply => (message::WIRE_LEN, message::WIRE_LEN),
            Kind::VcopyOpen => (VCOPY_OPEN_LEN, VCOPY_OPEN_LEN),
            Kind::VcopyData => (1, MAX_DATA_PAYLOAD),
            Kind::VcopyAck => (0, VCOPY_ACK_MAX_LEN),
            Kind::Migrated => (0, 4),
            Kind::Delivered
            | Kind::Notify
            | Kind::VcopyFin
            | Kind::Error
            | Kind::Keepalive
            | Kind::Cancel => (0, 0),
        }
    }
}

/// Why bytes are not a valid frame. Each variant names the offending value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WireError {
    /// Fewer bytes than a header (or than an Ethernet header).
    Truncated {
        /// Bytes present.
        len: usize,
        /// Bytes needed.
        need: usize,
    },
    /// The magic is not "M3".
    BadMagic(u16),
    /// A version this code does not speak.
    BadVersion(u8),
    /// An unknown kind.
    BadKind(u8),
    /// Flag bits that are not defined.
    BadFlags(u16),
    /// The length field exceeds `MAX_PAYLOAD` or the bytes present.
    BadLength {
        /// The length field.
        length: u16,
        /// Payload bytes present.
        available: usize,
    },
    /// The payload length is not one this kind allows.
    BadPayloadLen {
        /// The frame's kind.
        kind: Kind,
        /// Its payload length.
        len: usize,
    },
    /// An Error frame whose code is unknown, or a non-Error frame with a non-zero code.
    BadCode(u16),
    /// An endpoint field that may not hold that value (ANY/NONE as source or destination).
    BadEndpoint(u32),
    /// The output buffer is too small for the frame.
    BufferTooSmall {
        /// Buffer length.
        len: usize,
        /// Bytes needed.
        need: usize,
    },
    /// Not an M3-IPC Ethernet frame (other EtherType).
    NotM3Ipc(u16),
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            WireError::Truncated { len, need } => {
                write!(f, "frame truncated: {len} bytes, need {need}")
            }
            WireError::BadMagic(m) => write!(f, "bad magic {m:#06x}, expected {MAGIC:#06x}"),
            WireError::BadVersion(v) => write!(f, "unsupported version {v}, expected {VERSION}"),
            WireError::BadKind(k) => write!(f, "unknown frame kind {k}"),
            WireError::BadFlags(fl) => write!(f, "undefined flag bits {fl:#06x}"),
            WireError::BadLength { length, available } => {
                write!(f, "payload length {length} exceeds {available} available bytes (max {MAX_PAYLOAD})")
            }
            WireError::BadPayloadLen { kind, len } => {
                write!(f, "payload of {len} bytes is not valid for {kind:?}")
            }
            WireError::BadCode(c) => write!(f, "bad error code {c}"),
            WireError::BadEndpoint(e) => {
                write!(f, "endpoint {e:#x} cannot be a source or destination")
            }
            WireError::BufferTooSmall { len, need } => {
                write!(f, "buffer of {len} bytes, frame needs {need}")
            }
            WireError::NotM3Ipc(t) => write!(
                f,
                "EtherType {t:#06x} is not M3-IPC ({ETHERTYPE_M3IPC:#06x})"
            ),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for WireError {}

/// A read-only or writable view of a frame in a buffer (zero copy).
#[derive(Debug, Clone, Copy)]
pub struct Frame<T: AsRef<[u8]>> {
    buffer: T,
}

fn be16(b: &[u8], r: field::Field) -> u16 {
    let s = &b[r];
    u16::from_be_bytes([s[0], s[1]])
}
fn be32(b: &[u8], r: field::Field) -> u32 {
    let s = &b[r];
    u32::from_be_bytes([s[0], s[1], s[2], s[3]])
}
fn be64(b: &[u8], r: field::Field) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[r]);
    u64::from_be_bytes(a)
}

impl<T: AsRef<[u8]>> Frame<T> {
    /// Wraps `buffer` without any check; getters may panic on a short buffer. Prefer `new_checked`.
    pub const fn new_unchecked(buffer: T) -> Frame<T> {
        Frame { buffer }
    }

    /// Wraps `buffer` after checking that the header and the payload it announces are present,
    /// so that every getter is in bounds.
    pub fn new_checked(buffer: T) -> Result<Frame<T>, WireError> {
        let f = Frame { buffer };
        f.check_len()?;
        Ok(f)
    }

    /// Checks that the buffer holds the header and `length` bytes of payload.
    pub fn check_len(&self) -> Result<(), WireError> {
        let b = self.buffer.as_ref();
        if b.len() < HEADER_LEN {
            return Err(WireError::Truncated {
                len: b.len(),
                need: HEADER_LEN,
            });
        }
        let length = be16(b, field::LENGTH);
        let available = b.len() - HEADER_LEN;
        if usize::from(length) > available.min(MAX_DATA_PAYLOAD) {
            return Err(WireError::BadLength { length, available });
        }
        Ok(())
    }

    /// Gives the buffer back.
    pub fn into_inner(self) -> T {
        self.buffer
    }
    /// The magic field.
    pub fn magic(&self) -> u16 {
        be16(self.buffer.as_ref(), field::MAGIC)
    }
    /// The version field.
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VERSION]
    }
    /// The raw kind byte.
    pub fn kind_raw(&self) -> u8 {
        self.buffer.as_ref()[field::KIND]
    }
    /// The kind, if known.
    pub fn kind(&self) -> Option<Kind> {
        Kind::from_u8(self.kind_raw())
    }
    /// The DC.
    pub fn dc(&self) -> DcId {
        DcId(be16(self.buffer.as_ref(), field::DC))
    }
    /// The flags.
    pub fn flags(&self) -> u16 {
        be16(self.buffer.as_ref(), field::FLAGS)
    }
    /// The source endpoint.
    pub fn src(&self) -> Endpoint {
        Endpoint(be32(self.buffer.as_ref(), field::SRC))
    }
    /// The destination endpoint.
    pub fn dst(&self) -> Endpoint {
        Endpoint(be32(self.buffer.as_ref(), field::DST))
    }
    /// The sequence number.
    pub fn seq(&self) -> u64 {
        be64(self.buffer.as_ref(), field::SEQ)
    }
    /// The aux field.
    pub fn aux(&self) -> u64 {
        be64(self.buffer.as_ref(), field::AUX)
    }
    /// The payload length field.
    pub fn payload_len(&self) -> usize {
        usize::from(be16(self.buffer.as_ref(), field::LENGTH))
    }
    /// The raw code field.
    pub fn code(&self) -> u16 {
        be16(self.buffer.as_ref(), field::CODE)
    }
    /// The payload (`length` bytes after the header).
    pub fn payload(&self) -> &[u8] {
        let len = self.payload_len();
        &self.buffer.as_ref()[field::PAYLOAD..field::PAYLOAD + len]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Frame<T> {
    fn put(&mut self, r: field::Field, bytes: &[u8]) {
        self.buffer.as_mut()[r].copy_from_slice(bytes);
    }
    /// Sets the destination endpoint (routers rewrite nothing else).
    pub fn set_dst(&mut self, dst: Endpoint) {
        self.put(field::DST, &dst.0.to_be_bytes());
    }
}

/// The parsed, validated form of a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameRepr<'a> {
    /// What the frame is.
    pub kind: Kind,
    /// The DC of both endpoints.
    pub dc: DcId,
    /// Flag bits from [`flags`].
    pub flags: u16,
    /// Source endpoint.
    pub src: Endpoint,
    /// Destination endpoint.
    pub dst: Endpoint,
    /// Sequence number.
    pub seq: u64,
    /// Per-kind auxiliary value.
    pub aux: u64,
    /// Error code (Error frames), else 0.
    pub code: u16,
    /// The payload.
    pub payload: &'a [u8],
}

impl<'a> FrameRepr<'a> {
    /// Parses and validates a frame. Total: any bytes give `Ok` or a precise `Err`, never a panic.
    pub fn parse(bytes: &'a [u8]) -> Result<FrameRepr<'a>, WireError> {
        let frame = Frame::new_checked(bytes)?;
        if frame.magic() != MAGIC {
            return Err(WireError::BadMagic(frame.magic()));
        }
        if frame.version() != VERSION {
            return Err(WireError::BadVersion(frame.version()));
        }
        let kind = frame.kind().ok_or(WireError::BadKind(frame.kind_raw()))?;
        if frame.flags() & !flags::ALL != 0 {
            return Err(WireError::BadFlags(frame.flags()));
        }
        let (src, dst) = (frame.src(), frame.dst());
        for ep in [src, dst] {
            if !ep.is_addressable() {
                return Err(WireError::BadEndpoint(ep.0));
            }
        }
        let code = frame.code();
        let code_ok = match kind {
            Kind::Error => ErrorCode::from_u16(code).is_some(),
            Kind::VcopyFin => code == 0 || ErrorCode::from_u16(code).is_some(),
            _ => code == 0,
        };
        if !code_ok {
            return Err(WireError::BadCode(code));
        }
        let payload = &bytes[field::PAYLOAD..field::PAYLOAD + frame.payload_len()];
        let (lo, hi) = kind.payload_len_range();
        if payload.len() < lo || payload.len() > hi {
            return Err(WireError::BadPayloadLen {
                kind,
                len: payload.len(),
            });
        }
        Ok(FrameRepr {
            kind,
            dc: frame.dc(),
            flags: frame.flags(),
            src,
            dst,
            seq: frame.seq(),
            aux: frame.aux(),
            code,
            payload,
        })
    }

    /// Bytes needed to emit this frame.
    pub fn buffer_len(&self) -> usize {
        HEADER_LEN + self.payload.len()
    }

    /// Writes the frame at the start of `out`; returns its length.
    pub fn emit(&self, out: &mut [u8]) -> Result<usize, WireError> {
        let need = self.buffer_len();
        let (_, max) = self.kind.payload_len_range();
        if self.payload.len() > max {
            return Err(WireError::BadPayloadLen {
                kind: self.kind,
                len: self.payload.len(),
            });
        }
        if out.len() < need {
            return Err(WireError::BufferTooSmall {
                len: out.len(),
                need,
            });
        }
        emit_header(
            out,
            self.kind,
            self.dc,
            self.flags,
            self.src,
            self.dst,
            self.seq,
            self.aux,
            self.code,
            self.payload.len(),
        );
        out[HEADER_LEN..need].copy_from_slice(self.payload);
        Ok(need)
    }

    /// The Error frame a router sends back to this frame's source: endpoints swapped, `aux` = this frame's seq.
    pub fn error_reply(&self, code: ErrorCode) -> FrameRepr<'static> {
        FrameRepr {
            kind: Kind::Error,
            dc: self.dc,
            flags: 0,
            src: self.dst,
            dst: self.src,
            seq: 0,
            aux: self.seq,
            code: code as u16,
            payload: &[],
        }
    }

    /// The Migrated frame a router or engine sends back when this frame's destination has moved away.
    pub fn migrated_reply(&self) -> FrameRepr<'static> {
        FrameRepr {
            kind: Kind::Migrated,
            code: 0,
            ..self.error_reply(ErrorCode::Migrated)
        }
    }

    /// True for frames that start or continue a call and so deserve an Error/Migrated answer when refused
    /// (answers to answers are never sent, so two routers cannot ping-pong errors).
    pub fn wants_error_reply(&self) -> bool {
        matches!(
            self.kind,
            Kind::Send
                | Kind::SendRec
                | Kind::Notify
                | Kind::VcopyOpen
                | Kind::VcopyData
                | Kind::VcopyAck
        )
    }
}

/// Writes a header into `out[..HEADER_LEN]` (which must exist); the caller writes `payload_len` bytes after it.
#[allow(clippy::too_many_arguments)]
pub(crate) fn emit_header(
    out: &mut [u8],
    kind: Kind,
    dc: DcId,
    flags: u16,
    src: Endpoint,
    dst: Endpoint,
    seq: u64,
    aux: u64,
    code: u16,
    payload_len: usize,
) {
    let h = &mut out[..HEADER_LEN];
    h[field::MAGIC].copy_from_slice(&MAGIC.to_be_bytes());
    h[field::VERSION] = VERSION;
    h[field::KIND] = kind as u8;
    h[field::DC].copy_from_slice(&dc.0.to_be_bytes());
    h[field::FLAGS].copy_from_slice(&flags.to_be_bytes());
    h[field::SRC].copy_from_slice(&src.0.to_be_bytes());
    h[field::DST].copy_from_slice(&dst.0.to_be_bytes());
    h[field::SEQ].copy_from_slice(&seq.to_be_bytes());
    h[field::AUX].copy_from_slice(&aux.to_be_bytes());
    // Payload lengths are bounded by MAX_DATA_PAYLOAD (< 65536) everywhere this is called.
    h[field::LENGTH].copy_from_slice(&(payload_len as u16).to_be_bytes());
    h[field::CODE].copy_from_slice(&code.to_be_bytes());
}

/// The payload of a VcopyOpen frame (28 bytes, big-endian): which bytes of the peer's buffer a transfer touches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VcopyOpen {
    /// Offset in the peer's buffer (source for a pull, destination for a push).
    pub peer_off: u64,
    /// Number of bytes.
    pub len: u64,
    /// Push: the requester's CRC-32 of the data (informational); pull: 0.
    pub crc: u32,
    /// Requested chunk window (frames in flight); the holder may use less.
    pub window: u32,
    /// The largest VcopyData payload the opener sends and receives (0 = [`VCOPY_CHUNK`], the
    /// value of engines that predate jumbo links). The peer answers with the agreed chunk, the
    /// smaller of this and its own, in its first VcopyAck (a 12-byte payload: SACK bitmap, then
    /// the chunk; an 8-byte one means [`VCOPY_CHUNK`]); on a pull the holder sends that VcopyAck
    /// before its data.
    pub chunk: u32,
}

impl VcopyOpen {
    /// Parses the 28-byte payload.
    pub fn parse(p: &[u8]) -> Result<VcopyOpen, WireError> {
        if p.len() != VCOPY_OPEN_LEN {
            return Err(WireError::BadPayloadLen {
                kind: Kind::VcopyOpen,
                len: p.len(),
            });
        }
        Ok(VcopyOpen {
            peer_off: be64(p, 0..8),
            len: be64(p, 8..16),
            crc: be32(p, 16..20),
            window: be32(p, 20..24),
            chunk: be32(p, 24..28),
        })
    }

    /// The 28-byte payload.
    pub fn to_bytes(&self) -> [u8; VCOPY_OPEN_LEN] {
        let mut b = [0u8; VCOPY_OPEN_LEN];
        b[0..8].copy_from_slice(&self.peer_off.to_be_bytes());
        b[8..16].copy_from_slice(&self.len.to_be_bytes());
        b[16..20].copy_from_slice(&self.crc.to_be_bytes());
        b[20..24].copy_from_slice(&self.window.to_be_bytes());
        b[24..28].copy_from_slice(&self.chunk.to_be_bytes());
        b
    }
}

/// Ethernet II framing for M3-IPC frames (the only Ethernet parsing dvs does outside smoltcp).
pub mod ethernet {
    use super::{WireError, ETHERTYPE_M3IPC};

    /// Length of an Ethernet II header.
    pub const ETH_HEADER_LEN: usize = 14;
    /// The broadcast address.
    pub const BROADCAST: [u8; 6] = [0xff; 6];

    /// An Ethernet II header.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct EthernetHeader {
        /// Destination MAC.
        pub dst: [u8; 6],
        /// Source MAC.
        pub src: [u8; 6],
        /// EtherType.
        pub ethertype: u16,
    }

    impl EthernetHeader {
        /// Splits an Ethernet frame into its header and payload.
        pub fn parse(frame: &[u8]) -> Result<(EthernetHeader, &[u8]), WireError> {
            if frame.len() < ETH_HEADER_LEN {
                return Err(WireError::Truncated {
                    len: frame.len(),
                    need: ETH_HEADER_LEN,
                });
            }
            let mut dst = [0u8; 6];
            let mut src = [0u8; 6];
            dst.copy_from_slice(&frame[0..6]);
            src.copy_from_slice(&frame[6..12]);
            let ethertype = u16::from_be_bytes([frame[12], frame[13]]);
            Ok((
                EthernetHeader {
                    dst,
                    src,
                    ethertype,
                },
                &frame[ETH_HEADER_LEN..],
            ))
        }

        /// The M3-IPC frame inside an Ethernet frame, or why there is none.
        pub fn m3ipc_payload(frame: &[u8]) -> Result<(EthernetHeader, &[u8]), WireError> {
            let (h, p) = EthernetHeader::parse(frame)?;
            if h.ethertype != ETHERTYPE_M3IPC {
                return Err(WireError::NotM3Ipc(h.ethertype));
            }
            Ok((h, p))
        }

        /// Writes the header into `out[..14]`.
        pub fn emit(&self, out: &mut [u8]) -> Result<(), WireError> {
            if out.len() < ETH_HEADER_LEN {
                return Err(WireError::BufferTooSmall {
                    len: out.len(),
                    need: ETH_HEADER_LEN,
                });
            }
            out[0..6].copy_from_slice(&self.dst);
            out[6..12].copy_from_slice(&self.src);
            out[12..14].copy_from_slice(&self.ethertype.to_be_bytes());
            Ok(())
        }

        /// True if the destination is a group (broadcast or multicast) address.
        pub fn is_group(&self) -> bool {
            self.dst[0] & 1 == 1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEND_BYTES: [u8; 36] = [
        0x4D, 0x33, 0x01, 0x01, // magic, version, kind=Send
        0x00, 0x02, 0x00, 0x00, // dc=2, flags=0
        0x00, 0x00, 0x00, 0x0A, // src=10
        0x00, 0x00, 0x00, 0x14, // dst=20
        0x00, 0x00, 0x00, 0x07, 0x00, 0x00, 0x00, 0x01, // seq = 7<<32 | 1
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // aux
        0x00, 0x3C, 0x00, 0x00, // length=60, code=0
    ];

    fn send_frame() -> (
        [u8; HEADER_LEN + message::WIRE_LEN],
        [u8; message::WIRE_LEN],
    ) {
        let mut payload = [0u8; message::WIRE_LEN];
        payload[3] = 9;
        let mut buf = [0u8; HEADER_LEN + message::WIRE_LEN];
        buf[..HEADER_LEN].copy_from_slice(&SEND_BYTES);
        buf[HEADER_LEN..].copy_from_slice(&payload);
        (buf, payload)
    }

    #[test]
    fn parse_byte_exact_send() {
        let (buf, payload) = send_frame();
        let r = FrameRepr::parse(&buf).unwrap();
        assert_eq!(r.kind, Kind::Send);
        assert_eq!(r.dc, DcId(2));
        assert_eq!(r.src, Endpoint(10));
        assert_eq!(r.dst, Endpoint(20));
        assert_eq!(r.seq, (7 << 32) | 1);
        assert_eq!(r.payload, &payload[..]);
    }

    #[test]
    fn emit_byte_exact_send() {
        let (buf, payload) = send_frame();
        let r = FrameRepr {
            kind: Kind::Send,
            dc: DcId(2),
            flags: 0,
            src: Endpoint(10),
            dst: Endpoint(20),
            seq: (7 << 32) | 1,
            aux: 0,
            code: 0,
            payload: &payload,
        };
        let mut out = [0u8; 200];
        let n = r.emit(&mut out).unwrap();
        assert_eq!(&out[..n], &buf[..]);
    }

    #[test]
    fn refuses_each_malformation_precisely() {
        let (buf, _) = send_frame();
        assert_eq!(
            FrameRepr::parse(&buf[..10]),
            Err(WireError::Truncated {
                len: 10,
                need: HEADER_LEN
            })
        );
        assert_eq!(
            FrameRepr::parse(&buf[..50]),
            Err(WireError::BadLength {
                length: 60,
                available: 14
            })
        );
        let mut b = buf;
        b[0] = 0;
        assert_eq!(FrameRepr::parse(&b), Err(WireError::BadMagic(0x0033)));
        let mut b = buf;
        b[2] = 2;
        assert_eq!(FrameRepr::parse(&b), Err(WireError::BadVersion(2)));
        let mut b = buf;
        b[3] = 99;
        assert_eq!(FrameRepr::parse(&b), Err(WireError::BadKind(99)));
        let mut b = buf;
        b[6] = 0x80;
        assert_eq!(FrameRepr::parse(&b), Err(WireError::BadFlags(0x8000)));
        let mut b = buf;
        b[8..12].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(FrameRepr::parse(&b), Err(WireError::BadEndpoint(u32::MAX)));
        let mut b = buf;
        b[35] = 3;
        assert_eq!(FrameRepr::parse(&b), Err(WireError::BadCode(3)));
        let mut b = buf;
        b[33] = 10; // length 10 is not a message
        assert_eq!(
            FrameRepr::parse(&b[..46]),
            Err(WireError::BadPayloadLen {
                kind: Kind::Send,
                len: 10
            })
        );
    }

    #[test]
    fn trailing_padding_is_ignored() {
        let (buf, _) = send_frame();
        let mut padded = [0u8; 200];
        padded[..buf.len()].copy_from_slice(&buf);
        assert_eq!(
            FrameRepr::parse(&padded).unwrap().payload.len(),
            message::WIRE_LEN
        );
    }

    #[test]
    fn error_reply_swaps_and_references_seq() {
        let (buf, _) = send_frame();
        let r = FrameRepr::parse(&buf).unwrap();
        let e = r.error_reply(ErrorCode::NotInDc);
        assert_eq!(
            (e.kind, e.src, e.dst, e.aux, e.code),
            (Kind::Error, Endpoint(20), Endpoint(10), r.seq, 3)
        );
        let mut out = [0u8; 64];
        let n = e.emit(&mut out).unwrap();
        assert_eq!(FrameRepr::parse(&out[..n]).unwrap(), e);
        assert!(!e.wants_error_reply());
        let m = r.migrated_reply();
        assert_eq!((m.kind, m.code), (Kind::Migrated, 0));
    }

    #[test]
    fn emit_refuses_small_buffer() {
        let (buf, _) = send_frame();
        let e = FrameRepr::parse(&buf).unwrap();
        let mut out = [0u8; 40];
        assert_eq!(
            e.emit(&mut out),
            Err(WireError::BufferTooSmall { len: 40, need: 96 })
        );
    }

    #[test]
    fn ethernet_split() {
        let mut f = [0u8; 14 + 4];
        let h = ethernet::EthernetHeader {
            dst: ethernet::BROADCAST,
            src: [2, 0, 0, 0, 0, 1],
            ethertype: ETHERTYPE_M3IPC,
        };
        h.emit(&mut f).unwrap();
        let (back, p) = ethernet::EthernetHeader::m3ipc_payload(&f).unwrap();
        assert_eq!(back, h);
        assert_eq!(p.len(), 4);
        assert!(back.is_group());
        f[12] = 0x08;
        f[13] = 0x00;
        assert_eq!(
            ethernet::EthernetHeader::m3ipc_payload(&f),
            Err(WireError::NotM3Ipc(0x0800))
        );
        assert!(ethernet::EthernetHeader::parse(&f[..5]).is_err());
    }

    #[test]
    fn vcopy_open_round_trip() {
        let o = VcopyOpen {
            peer_off: 1 << 40,
            len: 64 << 20,
            crc: 0xabcd_ef01,
            window: 32,
            chunk: 0,
        };
        assert_eq!(VcopyOpen::parse(&o.to_bytes()), Ok(o));
        assert!(VcopyOpen::parse(&[0; 27]).is_err());
    }
}
