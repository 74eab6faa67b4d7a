//! The fixed-size M3-IPC message (Minix style: source, type, fixed payload).

use crate::ids::Endpoint;

/// Bytes of payload in every message.
pub const PAYLOAD_LEN: usize = 56;
/// Bytes a message takes on the wire: the type then the payload (the source is the frame's `src`).
pub const WIRE_LEN: usize = 4 + PAYLOAD_LEN;

/// One message: who sent it, its type, and 56 bytes of payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Message {
    /// The true sender, filled in by the engine from the frame (never trusted from the payload).
    pub source: Endpoint,
    /// The message type; its meaning is the application's, except `NOTIFY_MTYPE`.
    pub mtype: u32,
    /// The payload.
    pub payload: [u8; PAYLOAD_LEN],
}

impl Default for Message {
    fn default() -> Self {
        Message::new(0)
    }
}

impl Message {
    /// The type of a notification delivered by `receive`.
    pub const NOTIFY_MTYPE: u32 = 0xFFFF_FF01;

    /// A message of type `mtype` with a zero payload.
    pub const fn new(mtype: u32) -> Message {
        Message {
            source: Endpoint::NONE,
            mtype,
            payload: [0; PAYLOAD_LEN],
        }
    }

    /// A message of type `mtype` whose payload starts with `bytes` (at most 56 are taken).
    pub fn with_bytes(mtype: u32, bytes: &[u8]) -> Message {
        let mut m = Message::new(mtype);
        let n = bytes.len().min(PAYLOAD_LEN);
        m.payload[..n].copy_from_slice(&bytes[..n]);
        m
    }

    /// True if this message is a notification.
    pub fn is_notify(&self) -> bool {
        self.mtype == Message::NOTIFY_MTYPE
    }

    /// The payload bytes.
    pub fn bytes(&self) -> &[u8; PAYLOAD_LEN] {
        &self.payload
    }

    /// The little-endian `u32` in payload slot `i` (0..14), or `None` past the end.
    pub fn u32_at(&self, i: usize) -> Option<u32> {
        let b = self.payload.get(i * 4..i * 4 + 4)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// The little-endian `u64` in payload slot `i` (0..7), or `None` past the end.
    pub fn u64_at(&self, i: usize) -> Option<u64> {
        let b = self.payload.get(i * 8..i * 8 + 8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Some(u64::from_le_bytes(a))
    }

    /// Stores `v` in `u32` slot `i`; returns false (and changes nothing) past the end.
    pub fn set_u32(&mut self, i: usize, v: u32) -> bool {
        match self.payload.get_mut(i * 4..i * 4 + 4) {
            Some(b) => {
                b.copy_from_slice(&v.to_le_bytes());
                true
            }
            None => false,
        }
    }

    /// Stores `v` in `u64` slot `i`; returns false (and changes nothing) past the end.
    pub fn set_u64(&mut self, i: usize, v: u64) -> bool {
        match self.payload.get_mut(i * 8..i * 8 + 8) {
            Some(b) => {
                b.copy_from_slice(&v.to_le_bytes());
                true
            }
            None => false,
        }
    }

    /// Writes the wire form (type, payload) into `out`, which must hold `WIRE_LEN` bytes.
    pub fn emit(&self, out: &mut [u8; WIRE_LEN]) {
        out[..4].copy_from_slice(&self.mtype.to_be_bytes());
        out[4..].copy_from_slice(&self.payload);
    }

    /// Reads the wire form; `None` unless `bytes` is exactly `WIRE_LEN` long.
    pub fn parse(source: Endpoint, bytes: &[u8]) -> Option<Message> {
        if bytes.len() != WIRE_LEN {
            return None;
        }
        let mtype = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        let mut payload = [0u8; PAYLOAD_LEN];
        payload.copy_from_slice(&bytes[4..]);
        Some(Message {
            source,
            mtype,
            payload,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_round_trip_and_refuse_out_of_range() {
        let mut m = Message::new(7);
        assert!(m.set_u64(6, 0x0102_0304_0506_0708));
        assert_eq!(m.u64_at(6), Some(0x0102_0304_0506_0708));
        assert!(!m.set_u64(7, 1));
        assert_eq!(m.u64_at(7), None);
        assert!(m.set_u32(13, 99));
        assert_eq!(m.u32_at(13), Some(99));
        assert_eq!(m.u32_at(14), None);
    }

    #[test]
    fn wire_form_round_trips() {
        let m = Message::with_bytes(0xdead_beef, b"hello");
        let mut buf = [0u8; WIRE_LEN];
        m.emit(&mut buf);
        let back = Message::parse(Endpoint(3), &buf).unwrap();
        assert_eq!(back.mtype, 0xdead_beef);
        assert_eq!(&back.payload[..5], b"hello");
        assert_eq!(back.source, Endpoint(3));
        assert!(Message::parse(Endpoint(3), &buf[1..]).is_none());
    }
}
