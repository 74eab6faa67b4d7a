//! The peer link protocol: what two proxies say over their one TCP connection. Each message is a 4-byte
//! big-endian length, a type byte and a body; a writer puts as many messages into one write as it has queued.

use std::io;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::placement::DirMsg;

/// Version of this protocol, checked in Hello.
pub const PROTOCOL: u16 = 3;
/// The largest message a proxy accepts (directory snapshots are the big ones).
pub const MAX_MESSAGE: usize = 4 << 20;

const HELLO: u8 = 1;
const HEARTBEAT: u8 = 2;
const FRAME: u8 = 3;
const DIR: u8 = 4;
const PING: u8 = 5;
const PONG: u8 = 6;

/// One message between proxies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerMsg {
    /// First message each way: who is speaking.
    Hello {
        /// The sender's node id.
        node: u16,
        /// The sender's protocol version.
        protocol: u16,
    },
    /// Sent when the link has been idle for a heartbeat period.
    Heartbeat,
    /// An Ethernet frame of a DC, which the receiver may forward `hops` more times.
    Frame {
        /// The DC.
        dc: u16,
        /// Remaining forwards.
        hops: u8,
        /// The Ethernet frame.
        frame: Bytes,
    },
    /// A directory message about the sender's endpoints.
    Dir(DirMsg),
    /// Sent every heartbeat period (it is the heartbeat too): answer with a Pong carrying the same stamp.
    Ping(u64),
    /// The answer to a Ping: its stamp back, so that the pinger measures the link's round trip.
    Pong(u64),
}

/// Why a peer message could not be read.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// The socket failed or closed.
    #[error("peer link: {0}")]
    Io(#[from] io::Error),
    /// The peer broke the protocol.
    #[error("peer link protocol: {0}")]
    Protocol(String),
}

impl PeerMsg {
    /// Appends the encoded message to `buf`.
    pub fn encode(&self, buf: &mut Vec<u8>) {
        let start = buf.len();
        buf.extend_from_slice(&[0; 4]);
        match self {
            PeerMsg::Hello { node, protocol } => {
                buf.push(HELLO);
                buf.extend_from_slice(&node.to_be_bytes());
                buf.extend_from_slice(&protocol.to_be_bytes());
            }
            PeerMsg::Heartbeat => buf.push(HEARTBEAT),
            PeerMsg::Ping(stamp) => {
                buf.push(PING);
                buf.extend_from_slice(&stamp.to_be_bytes());
            }
            PeerMsg::Pong(stamp) => {
                buf.push(PONG);
                buf.extend_from_slice(&stamp.to_be_bytes());
            }
            PeerMsg::Frame { dc, hops, frame } => {
                buf.push(FRAME);
                buf.extend_from_slice(&dc.to_be_bytes());
                buf.push(*hops);
                buf.extend_from_slice(frame);
            }
            PeerMsg::Dir(msg) => {
                buf.push(DIR);
                // Serializing a plain enum of integers cannot fail.
                serde_json::to_writer(&mut *buf, msg).unwrap_or_default();
            }
        }
        let len = (buf.len() - start - 4) as u32;
        buf[start..start + 4].copy_from_slice(&len.to_be_bytes());
    }

    /// Decodes one message body (type byte first).
    pub fn decode(body: &[u8]) -> Result<PeerMsg, PeerError> {
        let bad = |what: &str| PeerError::Protocol(format!("{what} ({} bytes)", body.len()));
        let (&ty, rest) = body.split_first().ok_or_else(|| bad("empty message"))?;
        match ty {
            HELLO if rest.len() == 4 => Ok(PeerMsg::Hello {
                node: u16::from_be_bytes([rest[0], rest[1]]),
                protocol: u16::from_be_bytes([rest[2], rest[3]]),
            }),
            HEARTBEAT if rest.is_empty() => Ok(PeerMsg::Heartbeat),
            PING | PONG => {
                let stamp: [u8; 8] = rest.try_into().map_err(|_| bad("bad ping"))?;
                let stamp = u64::from_be_bytes(stamp);
                Ok(if ty == PING {
                    PeerMsg::Ping(stamp)
                } else {
                    PeerMsg::Pong(stamp)
                })
            }
            FRAME if rest.len() >= 3 => Ok(PeerMsg::Frame {
                dc: u16::from_be_bytes([rest[0], rest[1]]),
                hops: rest[2],
                frame: Bytes::copy_from_slice(&rest[3..]),
            }),
            DIR => serde_json::from_slice(rest)
                .map(PeerMsg::Dir)
                .map_err(|e| bad(&format!("bad directory message: {e}"))),
            _ => Err(bad(&format!("unknown message type {ty}"))),
        }
    }

    /// Reads one message; `body` is scratch space reused between calls.
    pub async fn read<R: AsyncRead + Unpin>(
        r: &mut R,
        body: &mut Vec<u8>,
    ) -> Result<PeerMsg, PeerError> {
        let len = r.read_u32().await? as usize;
        if len == 0 || len > MAX_MESSAGE {
            return Err(PeerError::Protocol(format!("message length {len}")));
        }
        body.resize(len, 0);
        r.read_exact(body).await?;
        PeerMsg::decode(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::placement::Binding;
    use proptest::prelude::*;

    #[tokio::test]
    async fn messages_round_trip_in_one_buffer() {
        let msgs = vec![
            PeerMsg::Hello {
                node: 3,
                protocol: PROTOCOL,
            },
            PeerMsg::Heartbeat,
            PeerMsg::Ping(u64::MAX - 1),
            PeerMsg::Pong(7),
            PeerMsg::Frame {
                dc: 2,
                hops: 1,
                frame: Bytes::from_static(&[1, 2, 3, 4]),
            },
            PeerMsg::Dir(DirMsg::Bind(Binding {
                dc: 1,
                ep: 10,
                gen: 99,
            })),
        ];
        let mut buf = vec![];
        for m in &msgs {
            m.encode(&mut buf);
        }
        let mut r = &buf[..];
        let mut scratch = vec![];
        for m in &msgs {
            assert_eq!(&PeerMsg::read(&mut r, &mut scratch).await.unwrap(), m);
        }
        assert!(PeerMsg::read(&mut r, &mut scratch).await.is_err());
    }

    proptest! {
        #[test]
        fn decode_never_panics(body in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = PeerMsg::decode(&body);
        }
    }
}
