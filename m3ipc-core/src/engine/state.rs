//! Per-endpoint state: the blocking call, the incoming queue, and what each source last sent.

use super::vcopy::TransferKey;
use crate::ids::Endpoint;
use crate::message::Message;
use crate::time::Instant;
use alloc::collections::{BTreeMap, BTreeSet, VecDeque};
use alloc::vec::Vec;
use core::time::Duration;

/// Which blocking call an endpoint is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum OpKind {
    Send,
    SendRec,
    Receive,
    Vcopy,
}

/// A retransmission timer with exponential backoff.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Retx {
    pub next: Instant,
    pub interval: Duration,
}

impl Retx {
    /// No retransmission (local calls, receive).
    pub fn none() -> Retx {
        Retx {
            next: Instant::FAR_FUTURE,
            interval: Duration::ZERO,
        }
    }
    /// First retransmission `interval` after `now`.
    pub fn start(now: Instant, interval: Duration) -> Retx {
        Retx {
            next: now + interval,
            interval,
        }
    }
    /// The next timer, twice as far (capped at `max`).
    pub fn backoff(self, now: Instant, max: Duration) -> Retx {
        let interval = (self.interval * 2).min(max).max(Duration::from_micros(1));
        Retx {
            next: now + interval,
            interval,
        }
    }
}

/// The blocking call of one endpoint.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Op {
    pub seq: u64,
    pub deadline: Instant,
    pub kind: OpKind,
    /// Destination (calls), source filter (receive), or the remote endpoint (vcopy).
    pub peer: Endpoint,
    pub msg: Message,
    pub retx: Retx,
    /// SendRec: the destination took the request; now waiting for the reply.
    pub delivered: bool,
    pub transfer: Option<TransferKey>,
}

/// A call waiting in an endpoint's queue for a `receive`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Incoming {
    pub src: Endpoint,
    pub seq: u64,
    pub msg: Message,
    pub kind: OpKind,
    /// The sender is in this engine (no frames: complete its call directly).
    pub local: bool,
}

/// What became of the last call accepted from one source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum InState {
    /// Nothing pending (or the call was cancelled).
    Idle,
    /// In the queue, not yet received.
    Queued,
    /// A Send taken by the task.
    Delivered,
    /// A SendRec taken by the task, not yet answered.
    AwaitingReply,
    /// A SendRec answered with this reply (kept to answer retransmissions).
    Replied(Message),
}

/// Duplicate suppression and reply cache for one source.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PeerIn {
    pub last_seq: u64,
    pub state: InState,
    pub last_notify: u64,
    pub last_active: Instant,
}

/// A notification in flight to a remote endpoint.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PendingNotify {
    pub seq: u64,
    pub deadline: Instant,
    pub retx: Retx,
    /// Another notify was asked for while this one was in flight.
    pub again: bool,
}

/// One bound endpoint.
#[derive(Debug)]
pub(crate) struct Local {
    pub op: Option<Op>,
    pub queue: VecDeque<Incoming>,
    pub notify_pending: BTreeSet<Endpoint>,
    pub peers: BTreeMap<Endpoint, PeerIn>,
    pub buffer: Vec<u8>,
    next_seq: u64,
}

impl Local {
    pub fn new(first_seq: u64) -> Local {
        Local {
            op: None,
            queue: VecDeque::new(),
            notify_pending: BTreeSet::new(),
            peers: BTreeMap::new(),
            buffer: Vec::new(),
            next_seq: first_seq,
        }
    }

    /// Allocates the seq of a new call or notification.
    pub fn next_seq(&mut self) -> u64 {
        let s = self.next_seq;
        self.next_seq += 1;
        s
    }

    /// True if this endpoint waits in `receive` for a message from `src`.
    pub fn receiving_from(&self, src: Endpoint) -> bool {
        self.op.as_ref().is_some_and(|op| {
            op.kind == super::OpKind::Receive && (op.peer == Endpoint::ANY || op.peer == src)
        })
    }

    /// The dedup entry for `src`, created if new; evicts the longest-idle settled entry past `limit`.
    pub fn peer_entry(&mut self, src: Endpoint, now: Instant, limit: usize) -> &mut PeerIn {
        if !self.peers.contains_key(&src) && self.peers.len() >= limit {
            let victim = self
                .peers
                .iter()
                .filter(|(_, p)| !matches!(p.state, InState::Queued | InState::AwaitingReply))
                .min_by_key(|(_, p)| p.last_active)
                .map(|(ep, _)| *ep);
            if let Some(v) = victim {
                self.peers.remove(&v);
            }
        }
        self.peers.entry(src).or_insert(PeerIn {
            last_seq: 0,
            state: InState::Idle,
            last_notify: 0,
            last_active: now,
        })
    }
}

/// An endpoint's state in transit between engines (migration). Messages still queued are not carried:
/// their senders were never told they were taken, so they resend to the new place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointState {
    /// The endpoint.
    pub ep: Endpoint,
    /// The seq its next call will use.
    pub next_seq: u64,
    /// What the endpoint remembers of each source.
    pub peers: Vec<PeerSnapshot>,
    /// Sources with a notification not yet received.
    pub notify_pending: Vec<Endpoint>,
    /// The vcopy buffer.
    pub buffer: Vec<u8>,
}

impl EndpointState {
    pub(crate) fn from_local(ep: Endpoint, local: Local) -> EndpointState {
        let peers = local
            .peers
            .iter()
            .map(|(src, p)| {
                // A queued call was never acknowledged: forget it so its retransmission is accepted anew.
                let last_seq = if p.state == InState::Queued {
                    p.last_seq.saturating_sub(1)
                } else {
                    p.last_seq
                };
                PeerSnapshot {
                    src: *src,
                    last_seq,
                    awaiting_reply: p.state == InState::AwaitingReply,
                    reply: match p.state {
                        InState::Replied(m) => Some(m),
                        _ => None,
                    },
                    last_notify: p.last_notify,
                }
            })
            .collect();
        EndpointState {
            ep,
            next_seq: local.next_seq,
            peers,
            notify_pending: local.notify_pending.into_iter().collect(),
            buffer: local.buffer,
        }
    }

    pub(crate) fn into_local(self) -> Local {
        let mut local = Local::new(self.next_seq);
        for p in self.peers {
            let state = match (p.reply, p.awaiting_reply) {
                (Some(m), _) => InState::Replied(m),
                (None, true) => InState::AwaitingReply,
                (None, false) => InState::Delivered,
            };
            local.peers.insert(
                p.src,
                PeerIn {
                    last_seq: p.last_seq,
                    state,
                    last_notify: p.last_notify,
                    last_active: Instant::ZERO,
                },
            );
        }
        local.notify_pending = self.notify_pending.into_iter().collect();
        local.buffer = self.buffer;
        local
    }
}

/// What a migrating endpoint remembers of one source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerSnapshot {
    /// The source endpoint.
    pub src: Endpoint,
    /// The last call seq accepted from it (later duplicates are not delivered again).
    pub last_seq: u64,
    /// That call was a SendRec taken by the task and not answered yet.
    pub awaiting_reply: bool,
    /// The reply given to that call, resent if the call is retransmitted.
    pub reply: Option<Message>,
    /// The last notification seq accepted from it.
    pub last_notify: u64,
}
