//! An endpoint's migration state as bytes (feature `snapshot`): a version byte, then the state encoded
//! with postcard. The receiving side checks everything before the state becomes an endpoint: a snapshot
//! comes from another machine (a guest, a peer), so a hostile or damaged one is an error, never a panic or
//! an endpoint with impossible state.

use alloc::vec::Vec;

use serde::{Deserialize, Serialize};

use super::state::{EndpointState, PeerSnapshot};
use crate::ids::Endpoint;
use crate::message::{Message, PAYLOAD_LEN};

/// The snapshot format's version (its first byte).
pub const SNAPSHOT_VERSION: u8 = 1;

/// Why a snapshot was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SnapshotError {
    /// Empty, or of another version.
    Version(Option<u8>),
    /// The bytes do not decode (truncated, garbage, trailing bytes).
    Malformed,
    /// The state is impossible or over the receiver's limits (what, and the value).
    Invalid(&'static str, u64),
}

impl core::fmt::Display for SnapshotError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            SnapshotError::Version(None) => f.write_str("empty endpoint snapshot"),
            SnapshotError::Version(Some(v)) => write!(
                f,
                "endpoint snapshot version {v}, this engine reads {SNAPSHOT_VERSION}"
            ),
            SnapshotError::Malformed => f.write_str("endpoint snapshot does not decode"),
            SnapshotError::Invalid(what, v) => write!(f, "endpoint snapshot: {what} ({v})"),
        }
    }
}

#[derive(Serialize, Deserialize)]
struct Wire {
    ep: u32,
    next_seq: u64,
    peers: Vec<WirePeer>,
    notify_pending: Vec<u32>,
    buffer: Vec<u8>,
}

#[derive(Serialize, Deserialize)]
struct WirePeer {
    src: u32,
    last_seq: u64,
    awaiting_reply: bool,
    reply: Option<WireMessage>,
    last_notify: u64,
}

#[derive(Serialize, Deserialize)]
struct WireMessage {
    source: u32,
    mtype: u32,
    payload: Vec<u8>,
}

/// What a receiver accepts in a snapshot.
#[derive(Clone, Copy, Debug)]
pub struct SnapshotLimits {
    /// Sources remembered (the engine's `peer_limit`).
    pub peers: usize,
    /// Bytes of vcopy buffer.
    pub buffer: usize,
}

impl EndpointState {
    /// The state as a snapshot (version byte + postcard).
    pub fn to_snapshot(&self) -> Vec<u8> {
        let wire = Wire {
            ep: self.ep.0,
            next_seq: self.next_seq,
            peers: self
                .peers
                .iter()
                .map(|p| WirePeer {
                    src: p.src.0,
                    last_seq: p.last_seq,
                    awaiting_reply: p.awaiting_reply,
                    reply: p.reply.map(|m| WireMessage {
                        source: m.source.0,
                        mtype: m.mtype,
                        payload: m.payload.to_vec(),
                    }),
                    last_notify: p.last_notify,
                })
                .collect(),
            notify_pending: self.notify_pending.iter().map(|e| e.0).collect(),
            buffer: self.buffer.clone(),
        };
        let mut out = alloc::vec![SNAPSHOT_VERSION];
        // Encoding plain integers, booleans and byte vectors into a Vec cannot fail.
        out.extend(postcard::to_allocvec(&wire).unwrap_or_default());
        out
    }

    /// Decodes and checks a snapshot: the version, the encoding (nothing left over), an addressable
    /// endpoint, sources that are distinct and addressable, a reply only for a call that was answered,
    /// payloads of the message size, and no more sources or buffer than `limits` allow.
    pub fn from_snapshot(
        bytes: &[u8],
        limits: SnapshotLimits,
    ) -> Result<EndpointState, SnapshotError> {
        let (&version, body) = bytes.split_first().ok_or(SnapshotError::Version(None))?;
        if version != SNAPSHOT_VERSION {
            return Err(SnapshotError::Version(Some(version)));
        }
        let (wire, rest): (Wire, &[u8]) =
            postcard::take_from_bytes(body).map_err(|_| SnapshotError::Malformed)?;
        if !rest.is_empty() {
            return Err(SnapshotError::Malformed);
        }
        let ep = Endpoint(wire.ep);
        if !ep.is_addressable() {
            return Err(SnapshotError::Invalid(
                "endpoint not addressable",
                wire.ep.into(),
            ));
        }
        if wire.peers.len() > limits.peers {
            return Err(SnapshotError::Invalid(
                "too many sources",
                wire.peers.len() as u64,
            ));
        }
        if wire.buffer.len() > limits.buffer {
            return Err(SnapshotError::Invalid(
                "buffer too large",
                wire.buffer.len() as u64,
            ));
        }
        if wire.notify_pending.len() > limits.peers {
            let n = wire.notify_pending.len() as u64;
            return Err(SnapshotError::Invalid("too many pending notifications", n));
        }
        let mut peers: Vec<PeerSnapshot> = Vec::with_capacity(wire.peers.len());
        for p in wire.peers {
            let src = Endpoint(p.src);
            if !src.is_addressable() || src == ep {
                return Err(SnapshotError::Invalid(
                    "source not addressable",
                    p.src.into(),
                ));
            }
            if peers.iter().any(|q| q.src == src) {
                return Err(SnapshotError::Invalid("source listed twice", p.src.into()));
            }
            let reply = match p.reply {
                None => None,
                Some(_) if p.awaiting_reply => {
                    return Err(SnapshotError::Invalid(
                        "a reply to a call still awaiting one",
                        p.src.into(),
                    ))
                }
                Some(m) => {
                    let payload: [u8; PAYLOAD_LEN] =
                        m.payload.as_slice().try_into().map_err(|_| {
                            SnapshotError::Invalid("payload size", m.payload.len() as u64)
                        })?;
                    Some(Message {
                        source: Endpoint(m.source),
                        mtype: m.mtype,
                        payload,
                    })
                }
            };
            peers.push(PeerSnapshot {
                src,
                last_seq: p.last_seq,
                awaiting_reply: p.awaiting_reply,
                reply,
                last_notify: p.last_notify,
            });
        }
        let mut notify_pending: Vec<Endpoint> =
            wire.notify_pending.into_iter().map(Endpoint).collect();
        notify_pending.sort_unstable();
        notify_pending.dedup();
        Ok(EndpointState {
            ep,
            next_seq: wire.next_seq,
            peers,
            notify_pending,
            buffer: wire.buffer,
        })
    }
}
