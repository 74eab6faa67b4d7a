//! Calls in progress through the proxy: requests that went towards a port or a peer and have had no answer yet.
//! When the port goes away, the peer goes down or an endpoint moves, each of them is answered with an Error or
//! Migrated frame, so that the caller learns at once instead of waiting for its timeout.

use std::collections::HashMap;

use m3ipc_core::wire::{ethernet::EthernetHeader, FrameRepr, Kind};
use m3ipc_core::{DcId, Endpoint, Instant};

/// At most this many calls are tracked per destination (bounded memory, whatever the guests send).
pub const MAX_PENDING: usize = 4096;

/// One call in progress: enough of its request to answer it.
#[derive(Clone, Copy, Debug)]
pub struct PendingCall {
    /// The request's kind (Send, SendRec or VcopyOpen).
    pub kind: Kind,
    /// Destination endpoint.
    pub dst: Endpoint,
    /// Request sequence number.
    pub seq: u64,
    /// The request's Ethernet header.
    pub eth: EthernetHeader,
    /// When the request first passed the proxy (a retransmission keeps it).
    pub since: Instant,
}

impl PendingCall {
    /// The request as a header-only repr from `(dc, src)`, to build answers with.
    pub fn request(&self, dc: DcId, src: Endpoint) -> FrameRepr<'static> {
        FrameRepr {
            kind: self.kind,
            dc,
            flags: 0,
            src,
            dst: self.dst,
            seq: self.seq,
            aux: 0,
            code: 0,
            payload: &[],
        }
    }
}

/// Calls in progress towards one destination, keyed by caller: an endpoint has one blocking call at a time.
#[derive(Debug, Default)]
pub struct Pending(HashMap<(DcId, Endpoint), PendingCall>);

impl Pending {
    /// Remembers `repr`, seen at `now`, if it starts a blocking call.
    pub fn track(&mut self, now: Instant, repr: &FrameRepr, eth: EthernetHeader) {
        if !matches!(repr.kind, Kind::Send | Kind::SendRec | Kind::VcopyOpen) {
            return;
        }
        let key = (repr.dc, repr.src);
        if self.0.len() >= MAX_PENDING && !self.0.contains_key(&key) {
            return;
        }
        let since = match self.0.get(&key) {
            Some(c) if (c.kind, c.dst, c.seq) == (repr.kind, repr.dst, repr.seq) => c.since,
            _ => now,
        };
        self.0.insert(
            key,
            PendingCall {
                kind: repr.kind,
                dst: repr.dst,
                seq: repr.seq,
                eth,
                since,
            },
        );
    }

    /// Forgets the call that `answer` (a frame from the destination back to the caller) completes, and
    /// returns it.
    pub fn settle(&mut self, answer: &FrameRepr) -> Option<PendingCall> {
        let key = (answer.dc, answer.dst);
        let call = self.0.get(&key)?;
        let done = match answer.kind {
            Kind::Error => true,
            Kind::Delivered => call.kind == Kind::Send,
            Kind::Reply => call.kind == Kind::SendRec,
            Kind::VcopyFin => call.kind == Kind::VcopyOpen,
            _ => false,
        };
        if done && call.dst == answer.src {
            return self.0.remove(&key);
        }
        None
    }

    /// Number of calls in progress.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Takes every call out, as `(dc, caller, call)`.
    pub fn drain(&mut self) -> Vec<(DcId, Endpoint, PendingCall)> {
        self.0.drain().map(|((dc, src), c)| (dc, src, c)).collect()
    }
}
