//! The sans-IO M3-IPC engine: one per IPC host (a VOS instance or a host tool).
//!
//! The caller drives it: calls (`send`, `sendrec`, `receive`, `reply`, `notify`, `vcopy`) and incoming
//! frames (`handle_frame`) go in with the current time; frames to transmit (`poll_transmit`), the next
//! deadline (`poll_timeout`, then `handle_timeout`) and results (`poll_event`) come out. It does no I/O,
//! reads no clock and starts no thread.
//!
//! Reliability: every frame that starts or answers a call may be lost, duplicated, reordered or delayed.
//! Each local endpoint has at most one blocking call at a time and numbers its calls with a growing
//! `seq` (`incarnation << 32 | counter`). A sender retransmits until answered; a receiver remembers, per
//! source, the last seq it accepted (and the reply it gave), so a duplicate is answered again but never
//! delivered twice. Every call ends with exactly one [`Event::Done`] (or an immediate `Err`).

mod config;
#[cfg(feature = "snapshot")]
mod snapshot;
mod state;
mod vcopy;

pub use config::EngineConfig;
#[cfg(feature = "snapshot")]
pub use snapshot::{SnapshotError, SnapshotLimits, SNAPSHOT_VERSION};
pub use state::{EndpointState, PeerSnapshot};

use crate::error::ErrorCode;
use crate::ids::{DcId, Endpoint};
use crate::message::{self, Message};
use crate::time::Instant;
use crate::wire::{self, flags, FrameRepr, Kind, VcopyOpen};
use alloc::collections::{BTreeMap, BTreeSet, VecDeque};
use alloc::vec::Vec;
use core::time::Duration;
use state::{InState, Incoming, Local, Op, OpKind, Retx};
use vcopy::{Transfer, TransferKey};

/// What a [`Engine::vcopy`] copies: `len` bytes from `src`'s registered buffer at `src_offset` to
/// `dst`'s buffer at `dst_offset`. Offsets and length are in bytes; both ranges must lie inside the
/// respective buffers (else [`ErrorCode::BufferOutOfRange`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct VcopyRequest {
    /// The endpoint whose buffer is read.
    pub src: Endpoint,
    /// Where in `src`'s buffer the copy starts, in bytes.
    pub src_offset: u64,
    /// The endpoint whose buffer is written.
    pub dst: Endpoint,
    /// Where in `dst`'s buffer the copy lands, in bytes.
    pub dst_offset: u64,
    /// How many bytes to copy.
    pub len: u64,
}

/// How a blocking call ended well.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Completion {
    /// `send`: the destination took the message.
    Sent,
    /// `receive`: a message (or notification) arrived; `needs_reply` if its sender waits in `sendrec`.
    Received {
        /// The message, with its true source.
        msg: Message,
        /// The sender is blocked in `sendrec` and wants a `reply`.
        needs_reply: bool,
    },
    /// `sendrec`: the reply.
    Replied(Message),
    /// `vcopy`: all bytes copied and verified.
    Copied {
        /// Bytes copied.
        len: u64,
    },
}

/// What the engine tells its caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// The blocking call of local endpoint `ep` ended.
    Done {
        /// The endpoint whose call ended.
        ep: Endpoint,
        /// Its result.
        result: Result<Completion, ErrorCode>,
    },
    /// A notification from `src` to `dst` could not be delivered.
    NotifyFailed {
        /// The notifying local endpoint.
        src: Endpoint,
        /// The destination.
        dst: Endpoint,
        /// Why.
        error: ErrorCode,
    },
}

/// Counters of what the engine saw; drops are counted by reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Frames handed to `handle_frame`.
    pub frames_in: u64,
    /// Frames produced by `poll_transmit`.
    pub frames_out: u64,
    /// Frames that failed to decode.
    pub bad_frames: u64,
    /// Frames of another DC.
    pub wrong_dc: u64,
    /// Frames claiming to come from one of this engine's own endpoints.
    pub spoofed: u64,
    /// Answers to calls that are no longer in progress, and other late frames.
    pub stale: u64,
    /// Duplicate calls suppressed (answered again, not delivered).
    pub duplicates: u64,
    /// Incoming calls dropped because the destination's queue was full.
    pub queue_full: u64,
    /// Frames for endpoints this engine does not hold.
    pub not_here: u64,
    /// Frames retransmitted.
    pub retransmits: u64,
    /// Resends after a Migrated answer.
    pub migrated_resends: u64,
    /// Notifications merged into one already pending.
    pub notify_coalesced: u64,
    /// Messages delivered to local tasks.
    pub delivered: u64,
    /// Frames dropped because the transmit buffer was too small.
    pub tx_too_small: u64,
}

/// A frame waiting to be emitted by `poll_transmit`.
#[derive(Clone, Copy, Debug)]
struct Tx {
    kind: Kind,
    flags: u16,
    src: Endpoint,
    dst: Endpoint,
    seq: u64,
    aux: u64,
    code: u16,
    body: Body,
}

#[derive(Clone, Copy, Debug)]
enum Body {
    None,
    Msg(Message),
    Bytes([u8; wire::VCOPY_ACK_MAX_LEN], u8),
    Open(VcopyOpen),
}

impl Tx {
    fn ctl(kind: Kind, src: Endpoint, dst: Endpoint, seq: u64, aux: u64) -> Tx {
        Tx {
            kind,
            flags: 0,
            src,
            dst,
            seq,
            aux,
            code: 0,
            body: Body::None,
        }
    }
}

/// The M3-IPC engine of one IPC host. See the module docs.
pub struct Engine {
    cfg: EngineConfig,
    locals: BTreeMap<Endpoint, Local>,
    /// Endpoints that moved away (answered with Migrated) and ones that ended (DeadDestination).
    moved: BTreeSet<Endpoint>,
    dead: BTreeSet<Endpoint>,
    notifies: BTreeMap<(Endpoint, Endpoint), state::PendingNotify>,
    transfers: BTreeMap<TransferKey, Transfer>,
    finished: VecDeque<vcopy::Finished>,
    tx: VecDeque<Tx>,
    events: VecDeque<Event>,
    stats: Stats,
}

impl Engine {
    /// A new engine with no endpoints.
    pub fn new(cfg: EngineConfig) -> Engine {
        Engine {
            cfg,
            locals: BTreeMap::new(),
            moved: BTreeSet::new(),
            dead: BTreeSet::new(),
            notifies: BTreeMap::new(),
            transfers: BTreeMap::new(),
            finished: VecDeque::new(),
            tx: VecDeque::new(),
            events: VecDeque::new(),
            stats: Stats::default(),
        }
    }

    /// The engine's DC.
    pub fn dc(&self) -> DcId {
        self.cfg.dc
    }

    /// The configuration.
    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    /// The counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Binds local endpoint `ep`. Fails with `InvalidArgument` for ANY/NONE and `Busy` if already bound.
    pub fn bind(&mut self, ep: Endpoint) -> Result<(), ErrorCode> {
        let seq = (u64::from(self.cfg.incarnation) << 32) | 1;
        self.insert_local(ep, Local::new(seq))
    }

    /// Makes `ep` local (refusing ANY/NONE and endpoints already bound) and forgets that it had moved or died.
    fn insert_local(&mut self, ep: Endpoint, local: Local) -> Result<(), ErrorCode> {
        if !ep.is_addressable() {
            return Err(ErrorCode::InvalidArgument);
        }
        if self.locals.contains_key(&ep) {
            return Err(ErrorCode::Busy);
        }
        self.moved.remove(&ep);
        self.dead.remove(&ep);
        self.locals.insert(ep, local);
        Ok(())
    }

    /// Unbinds `ep`: its call ends with `NotBound`, later frames for it get `DeadDestination`.
    pub fn unbind(&mut self, ep: Endpoint) -> Result<(), ErrorCode> {
        self.fail_op(ep, ErrorCode::NotBound);
        self.drop_local_state(ep);
        self.locals.remove(&ep).ok_or(ErrorCode::NotBound)?;
        self.dead.insert(ep);
        Ok(())
    }

    /// True if `ep` is bound here.
    pub fn is_bound(&self, ep: Endpoint) -> bool {
        self.locals.contains_key(&ep)
    }

    /// The bound endpoints.
    pub fn endpoints(&self) -> impl Iterator<Item = Endpoint> + '_ {
        self.locals.keys().copied()
    }

    /// True if `ep` has a blocking call in progress.
    pub fn is_blocked(&self, ep: Endpoint) -> bool {
        self.locals.get(&ep).is_some_and(|l| l.op.is_some())
    }

    /// Gives `ep` a buffer that peers of the DC may `vcopy` from and to (replacing any earlier one).
    pub fn set_buffer(&mut self, ep: Endpoint, buf: Vec<u8>) -> Result<(), ErrorCode> {
        self.locals.get_mut(&ep).ok_or(ErrorCode::NotBound)?.buffer = buf;
        Ok(())
    }

    /// Takes `ep`'s vcopy buffer back, leaving it none: peers' vcopies from or to it then fail
    /// (`BufferOutOfRange`, or the transfer is cancelled or times out if it was running). `None`
    /// if `ep` is not bound here. A server that lends its buffer for one request at a time uses this to keep
    /// the memory between requests.
    pub fn take_buffer(&mut self, ep: Endpoint) -> Option<Vec<u8>> {
        self.locals
            .get_mut(&ep)
            .map(|l| core::mem::take(&mut l.buffer))
    }

    /// `ep`'s vcopy buffer.
    pub fn buffer(&self, ep: Endpoint) -> Option<&[u8]> {
        self.locals.get(&ep).map(|l| l.buffer.as_slice())
    }

    /// `ep`'s vcopy buffer, writable.
    pub fn buffer_mut(&mut self, ep: Endpoint) -> Option<&mut [u8]> {
        self.locals.get_mut(&ep).map(|l| l.buffer.as_mut_slice())
    }

    // ---------------------------------------------------------------- calls

    /// Sends `msg` from `src` to `dst`; ends when `dst` has taken it (rendezvous).
    pub fn send(
        &mut self,
        now: Instant,
        src: Endpoint,
        dst: Endpoint,
        msg: Message,
        timeout: Option<Duration>,
    ) -> Result<(), ErrorCode> {
        self.call(now, src, dst, msg, timeout, OpKind::Send)
    }

    /// Sends `msg` from `src` to `dst` and waits for `dst`'s reply.
    pub fn sendrec(
        &mut self,
        now: Instant,
        src: Endpoint,
        dst: Endpoint,
        msg: Message,
        timeout: Option<Duration>,
    ) -> Result<(), ErrorCode> {
        self.call(now, src, dst, msg, timeout, OpKind::SendRec)
    }

    fn call(
        &mut self,
        now: Instant,
        src: Endpoint,
        dst: Endpoint,
        mut msg: Message,
        timeout: Option<Duration>,
        kind: OpKind,
    ) -> Result<(), ErrorCode> {
        if !dst.is_addressable() || dst == src {
            return Err(ErrorCode::InvalidArgument);
        }
        let local_dst = self.locals.contains_key(&dst);
        if !local_dst {
            if let Some(err) = self.refusal_for_remote(dst) {
                return Err(err);
            }
        }
        let seq = self.start_op(src)?;
        msg.source = src;
        // Local calls keep a timer too: a full queue or a migration away turns them into retransmissions.
        let retx = Retx::start(now, self.cfg.rto);
        let op = Op {
            seq,
            deadline: deadline(now, timeout),
            kind,
            peer: dst,
            msg,
            retx,
            delivered: false,
            transfer: None,
        };
        self.local_mut(src).op = Some(op);
        if local_dst {
            self.accept_call(now, dst, src, seq, msg, kind, true);
        } else {
            self.push_call_frame(src, dst, seq, msg, kind);
        }
        Ok(())
    }

    /// Waits for a message for `ep` from `from` (an endpoint, or `Endpoint::ANY`).
    pub fn receive(
        &mut self,
        now: Instant,
        ep: Endpoint,
        from: Endpoint,
        timeout: Option<Duration>,
    ) -> Result<(), ErrorCode> {
        if from == Endpoint::NONE || from == ep {
            return Err(ErrorCode::InvalidArgument);
        }
        let local = self.locals.get_mut(&ep).ok_or(ErrorCode::NotBound)?;
        if local.op.is_some() {
            return Err(ErrorCode::Busy);
        }
        // Notifications first (Minix order), then queued messages in arrival order.
        let notified = if from == Endpoint::ANY {
            local.notify_pending.pop_first()
        } else {
            local.notify_pending.take(&from)
        };
        if let Some(src) = notified {
            let mut msg = Message::new(Message::NOTIFY_MTYPE);
            msg.source = src;
            self.stats.delivered += 1;
            self.events.push_back(Event::Done {
                ep,
                result: Ok(Completion::Received {
                    msg,
                    needs_reply: false,
                }),
            });
            return Ok(());
        }
        let pos = local
            .queue
            .iter()
            .position(|m| from == Endpoint::ANY || m.src == from);
        if let Some(incoming) = pos.and_then(|p| local.queue.remove(p)) {
            self.take_incoming(now, ep, incoming);
            return Ok(());
        }
        let op = Op {
            seq: 0,
            deadline: deadline(now, timeout),
            kind: OpKind::Receive,
            peer: from,
            msg: Message::default(),
            retx: Retx::none(),
            delivered: false,
            transfer: None,
        };
        self.local_mut(ep).op = Some(op);
        Ok(())
    }

    /// Answers `dst`, which waits in `sendrec` for `src`; never blocks.
    pub fn reply(
        &mut self,
        now: Instant,
        src: Endpoint,
        dst: Endpoint,
        mut msg: Message,
    ) -> Result<(), ErrorCode> {
        let local = self.locals.get_mut(&src).ok_or(ErrorCode::NotBound)?;
        let peer = local.peers.get_mut(&dst).ok_or(ErrorCode::NotWaiting)?;
        if peer.state != InState::AwaitingReply {
            return Err(ErrorCode::NotWaiting);
        }
        let seq = peer.last_seq;
        msg.source = src;
        peer.state = InState::Replied(msg);
        peer.last_active = now;
        if let Some(client) = self.locals.get_mut(&dst) {
            let waiting = client
                .op
                .as_ref()
                .is_some_and(|op| op.kind == OpKind::SendRec && op.seq == seq);
            if !waiting {
                return Err(ErrorCode::NotWaiting);
            }
            client.op = None;
            self.events.push_back(Event::Done {
                ep: dst,
                result: Ok(Completion::Replied(msg)),
            });
        } else {
            // A Delivered for this call still waiting to go out is made redundant by the Reply.
            let redundant = self.tx.iter().position(|t| {
                t.kind == Kind::Delivered
                    && t.flags == 0
                    && t.src == src
                    && t.dst == dst
                    && t.aux == seq
            });
            if let Some(pos) = redundant {
                self.tx.remove(pos);
            }
            self.tx.push_back(Tx {
                body: Body::Msg(msg),
                ..Tx::ctl(Kind::Reply, src, dst, seq, 0)
            });
        }
        Ok(())
    }

    /// Notifies `dst` from `src`; never blocks. Notifications from one source coalesce until received.
    pub fn notify(&mut self, now: Instant, src: Endpoint, dst: Endpoint) -> Result<(), ErrorCode> {
        if !dst.is_addressable() || dst == src {
            return Err(ErrorCode::InvalidArgument);
        }
        if !self.locals.contains_key(&src) {
            return Err(ErrorCode::NotBound);
        }
        if self.locals.contains_key(&dst) {
            self.post_notification(dst, src);
            return Ok(());
        }
        if let Some(err) = self.refusal_for_remote(dst) {
            return Err(err);
        }
        if let Some(p) = self.notifies.get_mut(&(src, dst)) {
            // One is in flight: if the receiver already consumed it, another must follow its ack.
            p.again = true;
            self.stats.notify_coalesced += 1;
            return Ok(());
        }
        self.start_notify(now, src, dst);
        Ok(())
    }

    fn start_notify(&mut self, now: Instant, src: Endpoint, dst: Endpoint) {
        let seq = self.local_mut(src).next_seq();
        let p = state::PendingNotify {
            seq,
            deadline: now + self.cfg.notify_timeout,
            retx: Retx::start(now, self.cfg.rto),
            again: false,
        };
        self.notifies.insert((src, dst), p);
        self.tx.push_back(Tx::ctl(Kind::Notify, src, dst, seq, 0));
    }

    /// Runs the copy described by `req` on behalf of `requester`, which must be `req.src` or
    /// `req.dst` and bound here: `req.len` bytes from `req.src`'s buffer at `req.src_offset` to
    /// `req.dst`'s buffer at `req.dst_offset`. Chunked, windowed, CRC-checked; completes with
    /// [`Event::Done`] carrying [`Completion::Copied`] (at once when both endpoints are local).
    /// `timeout` bounds the whole copy (`None`: no deadline).
    pub fn vcopy(
        &mut self,
        now: Instant,
        requester: Endpoint,
        req: VcopyRequest,
        timeout: Option<Duration>,
    ) -> Result<(), ErrorCode> {
        let VcopyRequest {
            src: src_ep,
            src_offset: src_off,
            dst: dst_ep,
            dst_offset: dst_off,
            len,
        } = req;
        if requester != src_ep && requester != dst_ep {
            return Err(ErrorCode::NotAllowed);
        }
        if !src_ep.is_addressable() || !dst_ep.is_addressable() {
            return Err(ErrorCode::InvalidArgument);
        }
        let local_src = self.locals.contains_key(&src_ep);
        let local_dst = self.locals.contains_key(&dst_ep);
        if local_src && local_dst {
            self.start_op(requester)?;
            self.local_mut(requester).op = None;
            let result = self.copy_local(src_ep, src_off, dst_ep, dst_off, len);
            self.events.push_back(Event::Done {
                ep: requester,
                result: result.map(|()| Completion::Copied { len }),
            });
            return Ok(());
        }
        let (local, peer, local_off, peer_off, push) = if requester == src_ep {
            (src_ep, dst_ep, src_off, dst_off, true)
        } else {
            (dst_ep, src_ep, dst_off, src_off, false)
        };
        let buf_len = self
            .locals
            .get(&local)
            .ok_or(ErrorCode::NotBound)?
            .buffer
            .len();
        if !vcopy::range_ok(buf_len, local_off, len) {
            return Err(ErrorCode::BufferOutOfRange);
        }
        if let Some(err) = self.refusal_for_remote(peer) {
            return Err(err);
        }
        let seq = self.start_op(local)?;
        let key = TransferKey {
            local,
            peer,
            id: seq,
        };
        let crc = if push {
            vcopy::crc_of(&self.local_mut(local).buffer, local_off, len)
        } else {
            0
        };
        let t = Transfer::requester(now, &self.cfg, push, local_off, peer_off, len, crc);
        let op = Op {
            seq,
            deadline: deadline(now, timeout),
            kind: OpKind::Vcopy,
            peer,
            msg: Message::default(),
            retx: Retx::none(),
            delivered: false,
            transfer: Some(key),
        };
        self.local_mut(local).op = Some(op);
        self.tx.push_back(t.open_frame(key, self.cfg.vcopy_window));
        self.transfers.insert(key, t);
        Ok(())
    }

    // ---------------------------------------------------------------- migration

    /// Takes `ep` out of this engine for migration: its dedup table, reply cache, seq counter,
    /// pending notifications and buffer travel in the returned state; later frames for it are
    /// answered with Migrated. A pending `receive` ends with `Migrated` (the task re-issues it at the
    /// new place); any other blocking call, or an event for `ep` not yet taken by `poll_event`, makes
    /// this fail with `Busy`.
    pub fn export_endpoint(&mut self, ep: Endpoint) -> Result<EndpointState, ErrorCode> {
        let local = self.locals.get(&ep).ok_or(ErrorCode::NotBound)?;
        let undrained = self
            .events
            .iter()
            .any(|ev| matches!(ev, Event::Done { ep: e, .. } if *e == ep));
        if undrained {
            return Err(ErrorCode::Busy);
        }
        match local.op.map(|op| op.kind) {
            None => {}
            Some(OpKind::Receive) => self.complete(ep, Err(ErrorCode::Migrated)),
            Some(_) => return Err(ErrorCode::Busy),
        }
        let local = self.locals.remove(&ep).ok_or(ErrorCode::NotBound)?;
        self.drop_local_state(ep);
        self.moved.insert(ep);
        // Local callers of `ep` now reach it through the network: resend at once.
        for l in self.locals.values_mut() {
            if let Some(op) =
                l.op.as_mut()
                    .filter(|op| op.peer == ep && matches!(op.kind, OpKind::Send | OpKind::SendRec))
            {
                op.retx.next = Instant::ZERO;
            }
        }
        Ok(EndpointState::from_local(ep, local))
    }

    /// Binds an endpoint exported by another engine, continuing its state.
    pub fn import_endpoint(&mut self, state: EndpointState) -> Result<(), ErrorCode> {
        let ep = state.ep;
        self.insert_local(ep, state.into_local())
    }

    /// Marks `ep` as moved away: frames for it are answered with Migrated (used by a host that only
    /// learns of a move, without holding the endpoint).
    pub fn mark_moved(&mut self, ep: Endpoint) {
        if !self.locals.contains_key(&ep) {
            self.moved.insert(ep);
        }
    }

    // ---------------------------------------------------------------- I/O side

    /// Feeds one incoming M3-IPC frame (the Ethernet payload). Bad frames are counted and dropped.
    pub fn handle_frame(&mut self, now: Instant, bytes: &[u8]) {
        self.stats.frames_in += 1;
        let f = match FrameRepr::parse(bytes) {
            Ok(f) => f,
            Err(_) => {
                self.stats.bad_frames += 1;
                return;
            }
        };
        if f.dc != self.cfg.dc {
            self.stats.wrong_dc += 1;
            return;
        }
        if self.locals.contains_key(&f.src) {
            self.stats.spoofed += 1;
            return;
        }
        if !self.locals.contains_key(&f.dst) {
            self.stats.not_here += 1;
            if f.wants_error_reply() {
                let answer = if self.moved.contains(&f.dst) {
                    f.migrated_reply()
                } else if self.dead.contains(&f.dst) {
                    f.error_reply(ErrorCode::DeadDestination)
                } else {
                    f.error_reply(ErrorCode::UnknownDestination)
                };
                self.push_repr(&answer);
            }
            return;
        }
        match f.kind {
            Kind::Send => self.on_call(now, &f, OpKind::Send),
            Kind::SendRec => self.on_call(now, &f, OpKind::SendRec),
            Kind::Delivered => self.on_delivered(now, &f),
            Kind::Reply => self.on_reply(&f),
            Kind::Notify => self.on_notify(now, &f),
            Kind::Error => self.on_error(now, &f),
            Kind::Migrated => self.on_migrated(now, &f),
            Kind::Cancel => self.on_cancel(&f),
            Kind::Keepalive => {}
            Kind::VcopyOpen => self.on_vcopy_open(now, &f),
            Kind::VcopyData => self.on_vcopy_data(now, &f),
            Kind::VcopyAck => self.on_vcopy_ack(now, &f),
            Kind::VcopyFin => self.on_vcopy_fin(&f),
        }
    }

    /// Writes the next frame to send into `buf` (which should hold `wire::MAX_FRAME` bytes) and returns
    /// its length, or `None` when there is nothing to send.
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<usize> {
        loop {
            let tx = match self.tx.pop_front() {
                Some(tx) => tx,
                None => return self.poll_vcopy_data(now, buf),
            };
            if let Some(n) = self.emit_tx(&tx, buf) {
                self.stats.frames_out += 1;
                return Some(n);
            }
            self.stats.tx_too_small += 1;
        }
    }

    /// True if `poll_transmit` has something to send.
    pub fn has_transmit(&self) -> bool {
        !self.tx.is_empty() || self.transfers.values().any(|t| t.wants_to_send())
    }

    /// The longest frame `poll_transmit` may emit next: [`wire::MAX_FRAME`] while control frames
    /// wait, else the header plus the largest chunk a sending transfer uses (never more than
    /// `HEADER_LEN + EngineConfig::vcopy_chunk`). Lets a caller with buffers of two sizes pick one.
    pub fn next_transmit_max_len(&self) -> usize {
        if !self.tx.is_empty() {
            return wire::MAX_FRAME;
        }
        self.transfers
            .values()
            .filter(|t| t.wants_to_send())
            .map(|t| wire::HEADER_LEN + t.chunk_bytes())
            .max()
            .unwrap_or(wire::MAX_FRAME)
            .max(wire::MAX_FRAME)
    }

    /// True while an answer from a remote peer is due soon: a local endpoint's send, sendrec or
    /// vcopy towards a remote endpoint has not ended, or a transfer for a peer is in progress.
    /// (A `receive` waits for work that may never come: it does not count.) A caller that polls
    /// before it sleeps can poll longer while this holds.
    pub fn awaiting_remote(&self) -> bool {
        !self.transfers.is_empty()
            || self.locals.values().any(|l| {
                l.op.as_ref().is_some_and(|op| {
                    op.kind != OpKind::Receive && !self.locals.contains_key(&op.peer)
                })
            })
    }

    /// The earliest time `handle_timeout` must be called, if any.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut next = Instant::FAR_FUTURE;
        for l in self.locals.values() {
            if let Some(op) = &l.op {
                next = next.min(op.deadline).min(op.retx.next);
            }
        }
        for p in self.notifies.values() {
            next = next.min(p.deadline).min(p.retx.next);
        }
        for t in self.transfers.values() {
            next = next.min(t.next_timer(&self.cfg));
        }
        (next != Instant::FAR_FUTURE).then_some(next)
    }

    /// Runs every timer due at `now`: deadlines, retransmissions, idle transfers.
    pub fn handle_timeout(&mut self, now: Instant) {
        // Walk the maps by key range rather than collecting the due keys: no allocation per tick.
        let mut from = Endpoint(0);
        while let Some(ep) = self
            .locals
            .range(from..)
            .find(|(_, l)| {
                l.op.as_ref()
                    .is_some_and(|op| op.deadline <= now || op.retx.next <= now)
            })
            .map(|(ep, _)| *ep)
        {
            self.op_timer(now, ep);
            match ep.0.checked_add(1) {
                Some(next) => from = Endpoint(next),
                None => break,
            }
        }
        let mut from = (Endpoint(0), Endpoint(0));
        while let Some((src, dst)) = self
            .notifies
            .range(from..)
            .find(|(_, p)| p.deadline <= now || p.retx.next <= now)
            .map(|(k, _)| *k)
        {
            self.notify_timer(now, src, dst);
            match dst.0.checked_add(1) {
                Some(next) => from = (src, Endpoint(next)),
                None => from = (Endpoint(src.0.saturating_add(1)), Endpoint(0)),
            }
        }
        self.vcopy_timers(now);
    }

    /// The next event for the caller, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    // ---------------------------------------------------------------- internals: calls

    fn local_mut(&mut self, ep: Endpoint) -> &mut Local {
        // Callers check `contains_key` first; a missing endpoint is an engine bug.
        self.locals.get_mut(&ep).expect("local endpoint vanished")
    }

    /// Checks that `ep` is bound and idle, and allocates the seq of its next call.
    fn start_op(&mut self, ep: Endpoint) -> Result<u64, ErrorCode> {
        let local = self.locals.get_mut(&ep).ok_or(ErrorCode::NotBound)?;
        if local.op.is_some() {
            return Err(ErrorCode::Busy);
        }
        Ok(local.next_seq())
    }

    /// An immediate refusal for a remote destination this engine knows about.
    fn refusal_for_remote(&self, dst: Endpoint) -> Option<ErrorCode> {
        self.dead
            .contains(&dst)
            .then_some(ErrorCode::DeadDestination)
    }

    fn push_call_frame(
        &mut self,
        src: Endpoint,
        dst: Endpoint,
        seq: u64,
        msg: Message,
        kind: OpKind,
    ) {
        let k = if kind == OpKind::Send {
            Kind::Send
        } else {
            Kind::SendRec
        };
        self.tx.push_back(Tx {
            body: Body::Msg(msg),
            ..Tx::ctl(k, src, dst, seq, 0)
        });
    }

    fn push_repr(&mut self, f: &FrameRepr<'_>) {
        // Only payload-free answers go through here.
        self.tx.push_back(Tx {
            kind: f.kind,
            flags: f.flags,
            src: f.src,
            dst: f.dst,
            seq: f.seq,
            aux: f.aux,
            code: f.code,
            body: Body::None,
        });
    }

    fn complete(&mut self, ep: Endpoint, result: Result<Completion, ErrorCode>) {
        if let Some(l) = self.locals.get_mut(&ep) {
            if l.op.take().is_some() {
                self.events.push_back(Event::Done { ep, result });
            }
        }
    }

    /// Ends `ep`'s call with `err`, withdrawing whatever it left at its peer.
    fn fail_op(&mut self, ep: Endpoint, err: ErrorCode) {
        let Some(op) = self.locals.get(&ep).and_then(|l| l.op) else {
            return;
        };
        match op.kind {
            OpKind::Send | OpKind::SendRec => {
                if let Some(dst) = self.locals.get_mut(&op.peer) {
                    // Local peer: take the message back out of its queue.
                    dst.queue.retain(|m| !(m.src == ep && m.seq == op.seq));
                    if let Some(p) = dst.peers.get_mut(&ep) {
                        if p.last_seq == op.seq && p.state == InState::Queued {
                            p.state = InState::Idle;
                        }
                    }
                } else if !op.delivered {
                    self.tx
                        .push_back(Tx::ctl(Kind::Cancel, ep, op.peer, op.seq, 0));
                }
            }
            OpKind::Vcopy => {
                if let Some(key) = op.transfer {
                    self.transfers.remove(&key);
                    self.tx
                        .push_back(Tx::ctl(Kind::Cancel, ep, op.peer, op.seq, 0));
                }
            }
            OpKind::Receive => {}
        }
        self.complete(ep, Err(err));
    }

    fn drop_local_state(&mut self, ep: Endpoint) {
        self.notifies.retain(|(src, _), _| *src != ep);
        self.transfers.retain(|k, _| k.local != ep);
    }

    /// A call reaches local `dst` from `src` (a local endpoint if `local`, else a frame): suppresses
    /// duplicates (answering them again), then delivers it to a waiting `receive` or queues it.
    #[allow(clippy::too_many_arguments)]
    fn accept_call(
        &mut self,
        now: Instant,
        dst: Endpoint,
        src: Endpoint,
        seq: u64,
        msg: Message,
        kind: OpKind,
        local: bool,
    ) {
        let limit = self.cfg.peer_limit;
        let queue_limit = self.cfg.queue_limit;
        let d = self.local_mut(dst);
        let peer = d.peer_entry(src, now, limit);
        if seq <= peer.last_seq {
            let (state, last_seq) = (peer.state, peer.last_seq);
            self.stats.duplicates += 1;
            if seq != last_seq {
                self.stats.stale += 1;
                return;
            }
            match state {
                InState::Replied(reply) if kind == OpKind::SendRec => {
                    self.answer_reply(dst, src, seq, reply, local)
                }
                InState::Delivered | InState::AwaitingReply | InState::Replied(_) => {
                    self.answer_delivered(dst, src, seq, local)
                }
                InState::Queued | InState::Idle => {}
            }
            return;
        }
        // A newer call from the same source: any older one still queued was given up by its sender.
        if peer.state == InState::Queued {
            d.queue.retain(|m| m.src != src);
        }
        let incoming = Incoming {
            src,
            seq,
            msg,
            kind,
            local,
        };
        if d.receiving_from(src) {
            d.peer_entry(src, now, limit).last_seq = seq;
            self.take_incoming(now, dst, incoming);
        } else if d.queue.len() < queue_limit {
            let peer = d.peer_entry(src, now, limit);
            peer.last_seq = seq;
            peer.state = InState::Queued;
            d.queue.push_back(incoming);
        } else {
            self.stats.queue_full += 1;
        }
    }

    /// Tells the sender of call `seq` that `dst` took it (again, for a duplicate).
    fn answer_delivered(&mut self, dst: Endpoint, src: Endpoint, seq: u64, local: bool) {
        if !local {
            self.tx
                .push_back(Tx::ctl(Kind::Delivered, dst, src, 0, seq));
            return;
        }
        let probe = self.cfg.probe_interval;
        let Some(op) = self
            .locals
            .get_mut(&src)
            .and_then(|l| l.op.as_mut())
            .filter(|op| op.seq == seq)
        else {
            return;
        };
        if op.kind == OpKind::SendRec {
            op.delivered = true;
            op.retx.interval = probe;
        } else {
            self.complete(src, Ok(Completion::Sent));
        }
    }

    /// Gives the sender of SendRec `seq` its reply (again, for a duplicate).
    fn answer_reply(
        &mut self,
        dst: Endpoint,
        src: Endpoint,
        seq: u64,
        reply: Message,
        local: bool,
    ) {
        if !local {
            self.tx.push_back(Tx {
                body: Body::Msg(reply),
                ..Tx::ctl(Kind::Reply, dst, src, seq, 0)
            });
        } else if self
            .locals
            .get(&src)
            .and_then(|l| l.op)
            .is_some_and(|op| op.seq == seq && op.kind == OpKind::SendRec)
        {
            self.complete(src, Ok(Completion::Replied(reply)));
        }
    }

    /// Hands `incoming` to `ep`'s task and tells its sender.
    fn take_incoming(&mut self, now: Instant, ep: Endpoint, incoming: Incoming) {
        let needs_reply = incoming.kind == OpKind::SendRec;
        let peer_limit = self.cfg.peer_limit;
        let local = self.local_mut(ep);
        let peer = local.peer_entry(incoming.src, now, peer_limit);
        peer.state = if needs_reply {
            InState::AwaitingReply
        } else {
            InState::Delivered
        };
        peer.last_active = now;
        local.op = None;
        self.stats.delivered += 1;
        self.events.push_back(Event::Done {
            ep,
            result: Ok(Completion::Received {
                msg: incoming.msg,
                needs_reply,
            }),
        });
        if incoming.local {
            if let Some(sender) = self.locals.get_mut(&incoming.src) {
                if let Some(op) = sender.op.as_mut().filter(|op| op.seq == incoming.seq) {
                    if needs_reply {
                        op.delivered = true;
                    } else {
                        self.complete(incoming.src, Ok(Completion::Sent));
                    }
                }
            }
        } else {
            self.tx
                .push_back(Tx::ctl(Kind::Delivered, ep, incoming.src, 0, incoming.seq));
        }
    }

    fn post_notification(&mut self, dst: Endpoint, src: Endpoint) {
        let d = self.local_mut(dst);
        if d.receiving_from(src) {
            d.op = None;
            let mut msg = Message::new(Message::NOTIFY_MTYPE);
            msg.source = src;
            self.stats.delivered += 1;
            self.events.push_back(Event::Done {
                ep: dst,
                result: Ok(Completion::Received {
                    msg,
                    needs_reply: false,
                }),
            });
        } else if !d.notify_pending.insert(src) {
            self.stats.notify_coalesced += 1;
        }
    }

    // ---------------------------------------------------------------- internals: frames in

    fn on_call(&mut self, now: Instant, f: &FrameRepr<'_>, kind: OpKind) {
        let Some(msg) = Message::parse(f.src, f.payload) else {
            self.stats.bad_frames += 1;
            return;
        };
        self.accept_call(now, f.dst, f.src, f.seq, msg, kind, false);
    }

    fn on_delivered(&mut self, now: Instant, f: &FrameRepr<'_>) {
        let (ep, seq) = (f.dst, f.aux);
        if f.flags & flags::NOTIFY != 0 {
            let key = (ep, f.src);
            match self.notifies.get(&key) {
                Some(p) if p.seq == seq => {
                    let again = p.again;
                    self.notifies.remove(&key);
                    if again {
                        self.start_notify(now, ep, f.src);
                    }
                }
                _ => self.stats.stale += 1,
            }
            return;
        }
        let probe = self.cfg.probe_interval;
        let op = self.locals.get_mut(&ep).and_then(|l| l.op.as_mut());
        match op {
            Some(op) if op.seq == seq && op.peer == f.src && op.kind == OpKind::Send => {
                self.complete(ep, Ok(Completion::Sent));
            }
            Some(op) if op.seq == seq && op.peer == f.src && op.kind == OpKind::SendRec => {
                op.delivered = true;
                op.retx = Retx::start(now, probe);
            }
            _ => self.stats.stale += 1,
        }
    }

    fn on_reply(&mut self, f: &FrameRepr<'_>) {
        let ep = f.dst;
        let Some(msg) = Message::parse(f.src, f.payload) else {
            self.stats.bad_frames += 1;
            return;
        };
        let op = self.locals.get(&ep).and_then(|l| l.op);
        match op {
            Some(op) if op.kind == OpKind::SendRec && op.seq == f.seq && op.peer == f.src => {
                self.complete(ep, Ok(Completion::Replied(msg)));
            }
            _ => self.stats.stale += 1,
        }
    }

    fn on_notify(&mut self, now: Instant, f: &FrameRepr<'_>) {
        let limit = self.cfg.peer_limit;
        let peer = self.local_mut(f.dst).peer_entry(f.src, now, limit);
        let fresh = f.seq > peer.last_notify;
        if fresh {
            peer.last_notify = f.seq;
        } else {
            self.stats.duplicates += 1;
        }
        self.tx.push_back(Tx {
            flags: flags::NOTIFY,
            ..Tx::ctl(Kind::Delivered, f.dst, f.src, 0, f.seq)
        });
        if fresh {
            self.post_notification(f.dst, f.src);
        }
    }

    fn on_error(&mut self, now: Instant, f: &FrameRepr<'_>) {
        let code = ErrorCode::from_u16(f.code).unwrap_or(ErrorCode::BadFrame);
        if code == ErrorCode::Migrated {
            return self.on_migrated(now, f);
        }
        let (ep, seq) = (f.dst, f.aux);
        if let Some(op) = self.locals.get(&ep).and_then(|l| l.op) {
            if op.seq == seq && op.peer == f.src && op.kind != OpKind::Receive {
                if let Some(key) = op.transfer {
                    self.transfers.remove(&key);
                }
                self.complete(ep, Err(code));
                return;
            }
        }
        if self
            .notifies
            .get(&(ep, f.src))
            .is_some_and(|p| p.seq == seq)
        {
            self.notifies.remove(&(ep, f.src));
            self.events.push_back(Event::NotifyFailed {
                src: ep,
                dst: f.src,
                error: code,
            });
            return;
        }
        if self
            .transfers
            .remove(&TransferKey {
                local: ep,
                peer: f.src,
                id: seq,
            })
            .is_none()
        {
            self.stats.stale += 1;
        }
    }

    fn on_migrated(&mut self, now: Instant, f: &FrameRepr<'_>) {
        let (ep, seq) = (f.dst, f.aux);
        let retry = now + self.cfg.migrated_retry;
        if let Some(op) = self.locals.get_mut(&ep).and_then(|l| l.op.as_mut()) {
            if op.seq == seq && op.peer == f.src && op.kind != OpKind::Receive {
                // Resend shortly; the router then finds the endpoint's new place.
                op.retx = Retx {
                    next: retry,
                    interval: self.cfg.rto,
                };
                op.delivered = false;
                if let Some(key) = op.transfer {
                    if let Some(t) = self.transfers.get_mut(&key) {
                        t.restart(retry, self.cfg.rto);
                    }
                }
                self.stats.migrated_resends += 1;
                return;
            }
        }
        if let Some(p) = self.notifies.get_mut(&(ep, f.src)).filter(|p| p.seq == seq) {
            p.retx = Retx {
                next: retry,
                interval: self.cfg.rto,
            };
            self.stats.migrated_resends += 1;
            return;
        }
        self.stats.stale += 1;
    }

    fn on_cancel(&mut self, f: &FrameRepr<'_>) {
        let (ep, src, seq) = (f.dst, f.src, f.seq);
        if self
            .transfers
            .remove(&TransferKey {
                local: ep,
                peer: src,
                id: seq,
            })
            .is_some()
        {
            return;
        }
        let d = self.local_mut(ep);
        if let Some(p) = d.peers.get_mut(&src) {
            if p.last_seq == seq && p.state == InState::Queued {
                p.state = InState::Idle;
                d.queue.retain(|m| !(m.src == src && m.seq == seq));
            }
        }
    }

    // ---------------------------------------------------------------- internals: timers

    fn op_timer(&mut self, now: Instant, ep: Endpoint) {
        let Some(op) = self.locals.get(&ep).and_then(|l| l.op) else {
            return;
        };
        if op.deadline <= now {
            self.fail_op(ep, ErrorCode::Timeout);
            return;
        }
        if op.retx.next > now {
            return;
        }
        let max = self.cfg.max_rto;
        let probe = self.cfg.probe_interval;
        if let Some(op) = self.locals.get_mut(&ep).and_then(|l| l.op.as_mut()) {
            op.retx = if op.delivered {
                Retx::start(now, probe)
            } else {
                op.retx.backoff(now, max)
            };
        }
        match op.kind {
            OpKind::Send | OpKind::SendRec if self.locals.contains_key(&op.peer) => {
                // The destination is (now) here: retry locally; duplicates are suppressed as for frames.
                self.accept_call(now, op.peer, ep, op.seq, op.msg, op.kind, true);
            }
            OpKind::Send | OpKind::SendRec => {
                self.stats.retransmits += 1;
                self.push_call_frame(ep, op.peer, op.seq, op.msg, op.kind);
            }
            OpKind::Receive | OpKind::Vcopy => {}
        }
    }

    fn notify_timer(&mut self, now: Instant, src: Endpoint, dst: Endpoint) {
        let max = self.cfg.max_rto;
        let Some(p) = self.notifies.get_mut(&(src, dst)) else {
            return;
        };
        if p.deadline <= now {
            self.notifies.remove(&(src, dst));
            self.events.push_back(Event::NotifyFailed {
                src,
                dst,
                error: ErrorCode::Timeout,
            });
            return;
        }
        p.retx = p.retx.backoff(now, max);
        let seq = p.seq;
        self.stats.retransmits += 1;
        self.tx.push_back(Tx::ctl(Kind::Notify, src, dst, seq, 0));
    }

    // ---------------------------------------------------------------- internals: frames out

    fn emit_tx(&self, tx: &Tx, buf: &mut [u8]) -> Option<usize> {
        let mut tmp = [0u8; message::WIRE_LEN];
        let open: [u8; wire::VCOPY_OPEN_LEN];
        let payload: &[u8] = match &tx.body {
            Body::None => &[],
            Body::Msg(m) => {
                m.emit(&mut tmp);
                &tmp
            }
            Body::Bytes(b, n) => &b[..usize::from(*n)],
            Body::Open(o) => {
                open = o.to_bytes();
                &open
            }
        };
        let repr = FrameRepr {
            kind: tx.kind,
            dc: self.cfg.dc,
            flags: tx.flags,
            src: tx.src,
            dst: tx.dst,
            seq: tx.seq,
            aux: tx.aux,
            code: tx.code,
            payload,
        };
        repr.emit(buf).ok()
    }
}

fn deadline(now: Instant, timeout: Option<Duration>) -> Instant {
    match timeout {
        Some(t) => now + t,
        None => Instant::FAR_FUTURE,
    }
}

#[cfg(test)]
mod tests;
