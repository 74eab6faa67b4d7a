//! vcopy: bulk copies between endpoints' buffers, in chunks, windowed, verified end to end.
//!
//! One side of a transfer holds the data (the *holder*), the other writes it (the *receiver*). The
//! requester opens the transfer: with `PUSH` it is the holder, without it asks the peer to push. The
//! receiver acknowledges in-order bytes plus a 64-chunk SACK bitmap; the holder retransmits on timeout
//! and fast-retransmits holes the bitmap reveals. When all bytes are in, the receiver sends the CRC-32
//! of its whole range (FINAL ack); the holder compares it with its own. On a push the holder is the
//! requester and ends the call; on a pull it answers with VcopyFin carrying the verdict.
//!
//! Chunk size: the opener proposes the largest chunk it handles (`EngineConfig::vcopy_chunk`, from its
//! link's MTU); the peer takes the smaller of that and its own and says so in a VcopyAck with a 12-byte
//! payload (SACK bitmap, then the chunk): on a push the receiver's first ack, on a pull an ack the holder
//! sends before its data. Proposals of the legacy [`VCOPY_CHUNK`] (or 0) need no answer.
//!
//! Window: bytes in flight, not frames. The holder times one chunk per round trip (Karn's rule: never a
//! retransmitted one), keeps the least round-trip time and a slowly decaying peak delivery rate, and
//! allows twice their product (the bandwidth-delay product) in flight, between a floor and the cap the
//! configuration and the peer set. Starting at the floor it doubles per round trip while the delivery
//! rate keeps up, then holds near 2x BDP, so a large copy fills the path without building a queue that
//! small calls would wait behind.

use super::state::Retx;
use super::{Body, Completion, Engine, EngineConfig, Tx};
use crate::error::ErrorCode;
use crate::ids::Endpoint;
use crate::time::Instant;
use crate::wire::{self, flags, FrameRepr, Kind, VcopyOpen, MAX_DATA_PAYLOAD, VCOPY_CHUNK};
use alloc::collections::VecDeque;
use alloc::vec;
use alloc::vec::Vec;

const CHUNK: u64 = VCOPY_CHUNK as u64;
/// The window never falls below this many bytes (nor below `MIN_CHUNKS` chunks), unless the cap is lower.
const MIN_WINDOW: u64 = 64 * 1024;
/// Least chunks the window allows in flight.
const MIN_CHUNKS: u64 = 4;
/// The receiver acknowledges at least every this many in-order chunks.
const ACK_EVERY: u32 = 8;

/// Identifies a transfer at one side: the local endpoint, the remote one, the requester's seq.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct TransferKey {
    pub local: Endpoint,
    pub peer: Endpoint,
    pub id: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    /// The requester waits for the peer's first answer.
    Opening,
    /// Data flows.
    Running,
    /// A pulling requester has all data and waits for the holder's verdict.
    Verifying,
}

/// One side of a transfer in progress.
#[derive(Debug)]
pub(crate) struct Transfer {
    holder: bool,
    requester: bool,
    local_off: u64,
    peer_off: u64,
    len: u64,
    /// Holder: CRC of the data; pulling requester in Verifying: CRC of what arrived.
    crc: u32,
    phase: Phase,
    timer: Retx,
    last_progress: Instant,
    /// Bytes per VcopyData frame (all but the last); agreed with the peer.
    chunk: u64,
    /// Whether `chunk` is agreed yet (a requester learns it from the peer's first ack).
    chunk_known: bool,
    /// The chunk this side proposed (requester) or was proposed (responder).
    proposed: u64,
    /// Holder: most chunks and most bytes in flight (configuration and peer).
    cap_chunks: u64,
    cap_bytes: u64,
    /// The resulting cap of the window in bytes, and the adaptive window below it.
    cap: u64,
    pace: Pace,
    // Holder side.
    acked: u64,
    next_new: u64,
    sack: u64,
    resend: VecDeque<u64>,
    fast_floor: u64,
    // Receiver side.
    got: Vec<u64>,
    contiguous: u64,
    unacked: u32,
    /// A pulling requester: when it last sent its FINAL ack.
    final_sent: Instant,
}

/// What a finished transfer answers to late duplicates.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Finished {
    key: TransferKey,
    at: Instant,
    answer: FinishedAnswer,
}

#[derive(Clone, Copy, Debug)]
enum FinishedAnswer {
    /// A receiver that completed a push: its FINAL ack.
    FinalAck { len: u64, crc: u32 },
    /// A holder that completed a pull: its verdict.
    Fin { code: u16 },
}

/// True if `[off, off + len)` lies inside a buffer of `buf_len` bytes.
pub(crate) fn range_ok(buf_len: usize, off: u64, len: u64) -> bool {
    off.checked_add(len)
        .is_some_and(|end| end <= buf_len as u64)
}

/// CRC-32 of `buf[off..off + len]` (the range was checked).
pub(crate) fn crc_of(buf: &[u8], off: u64, len: u64) -> u32 {
    let (s, e) = (off as usize, (off + len) as usize);
    buf.get(s..e).map_or(0, crc32fast::hash)
}

fn chunk_len(chunk: u64, len: u64, off: u64) -> u64 {
    chunk.min(len - off)
}

/// The largest chunk an engine with configuration `cfg` handles.
pub(crate) fn own_chunk(cfg: &EngineConfig) -> u64 {
    u64::from(cfg.vcopy_chunk).clamp(CHUNK, MAX_DATA_PAYLOAD as u64)
}

/// The holder's window: bytes allowed in flight, from round-trip and delivery-rate samples.
#[derive(Clone, Copy, Debug)]
struct Pace {
    /// Bytes allowed in flight now.
    window: u64,
    /// Least round-trip time seen, µs (0 = none yet).
    min_rtt_us: u64,
    /// Peak delivery rate, bytes per ms (decays by 1/8 per sample).
    max_rate: u64,
    /// The timed chunk: (end offset, when sent, bytes acknowledged then).
    sample: Option<(u64, Instant, u64)>,
}

impl Pace {
    fn new(window: u64) -> Pace {
        Pace {
            window,
            min_rtt_us: 0,
            max_rate: 0,
            sample: None,
        }
    }
}

impl Transfer {
    #[allow(clippy::too_many_arguments)]
    fn new(
        now: Instant,
        cfg: &EngineConfig,
        holder: bool,
        requester: bool,
        local_off: u64,
        peer_off: u64,
        len: u64,
        chunk: u64,
        chunk_known: bool,
    ) -> Transfer {
        let mut t = Transfer {
            holder,
            requester,
            local_off,
            peer_off,
            len,
            crc: 0,
            phase: Phase::Running,
            timer: Retx::none(),
            last_progress: now,
            chunk,
            chunk_known,
            proposed: chunk,
            cap_chunks: u64::from(cfg.vcopy_window.max(1)),
            cap_bytes: cfg.vcopy_max_inflight,
            cap: 0,
            pace: Pace::new(0),
            acked: 0,
            next_new: 0,
            sack: 0,
            resend: VecDeque::new(),
            fast_floor: 0,
            got: Vec::new(),
            contiguous: 0,
            unacked: 0,
            final_sent: Instant::ZERO,
        };
        t.recap();
        if chunk_known {
            t.set_chunk(chunk);
        }
        t
    }

    /// Limits the window to `chunks` chunks (the peer's wish).
    fn limit_chunks(&mut self, chunks: u64) {
        self.cap_chunks = self.cap_chunks.min(chunks.max(1));
        self.recap();
    }

    /// Recomputes the cap for the current chunk (at least one chunk) and starts the adaptive
    /// window at its floor.
    fn recap(&mut self) {
        self.cap = self
            .cap_chunks
            .saturating_mul(self.chunk)
            .min(self.cap_bytes)
            .max(self.chunk);
        self.pace = Pace::new(self.floor());
    }

    fn floor(&self) -> u64 {
        MIN_WINDOW.max(MIN_CHUNKS * self.chunk).min(self.cap)
    }

    /// Fixes the chunk at `chunk` (agreed) and sizes the receiver's bitmap for it.
    fn set_chunk(&mut self, chunk: u64) {
        self.chunk = chunk;
        self.chunk_known = true;
        if !self.holder {
            let chunks = self.len.div_ceil(chunk);
            self.got = vec![0; chunks.div_ceil(64) as usize];
        }
        self.recap();
    }

    /// The requester's side of a new transfer, opening (proposing this engine's chunk).
    pub fn requester(
        now: Instant,
        cfg: &EngineConfig,
        push: bool,
        local_off: u64,
        peer_off: u64,
        len: u64,
        crc: u32,
    ) -> Transfer {
        let chunk = own_chunk(cfg);
        // A proposal of the legacy chunk needs no answer: nothing smaller is agreed.
        let known = chunk == CHUNK;
        let mut t = Transfer::new(now, cfg, push, true, local_off, peer_off, len, chunk, known);
        t.crc = crc;
        t.phase = Phase::Opening;
        t.timer = Retx::start(now, cfg.rto);
        t
    }

    /// The VcopyOpen frame of a requester's transfer.
    pub(super) fn open_frame(&self, key: TransferKey, window: u32) -> Tx {
        let open = VcopyOpen {
            peer_off: self.peer_off,
            len: self.len,
            crc: self.crc,
            window,
            chunk: if self.proposed == CHUNK {
                0
            } else {
                self.proposed as u32
            },
        };
        Tx {
            flags: if self.holder { flags::PUSH } else { 0 },
            body: Body::Open(open),
            ..Tx::ctl(Kind::VcopyOpen, key.local, key.peer, key.id, 0)
        }
    }

    /// Starts over after the peer moved: every byte is sent again to the new place.
    pub fn restart(&mut self, at: Instant, rto: core::time::Duration) {
        self.phase = Phase::Opening;
        self.timer = Retx {
            next: at,
            interval: rto,
        };
        self.acked = 0;
        self.next_new = 0;
        self.sack = 0;
        self.resend.clear();
        self.fast_floor = 0;
        self.got.clear();
        self.contiguous = 0;
        self.unacked = 0;
        // The new place may agree on another chunk.
        self.chunk = self.proposed;
        self.chunk_known = self.proposed == CHUNK;
        if self.chunk_known {
            self.set_chunk(self.proposed);
        } else {
            self.recap();
        }
    }

    /// The chunk to put in this side's acks: only for transfers whose opener proposed more than
    /// the legacy chunk, and only by the responder, which chose it.
    fn announce(&self) -> Option<u64> {
        (!self.requester && self.proposed != CHUNK).then_some(self.chunk)
    }

    /// In-order chunks the receiver takes before it acknowledges: about every 8 legacy chunks,
    /// at least every other chunk.
    fn ack_every(&self) -> u32 {
        (ACK_EVERY as u64 * CHUNK / self.chunk).clamp(2, u64::from(ACK_EVERY)) as u32
    }

    /// The bytes of one full chunk of this transfer.
    pub fn chunk_bytes(&self) -> usize {
        self.chunk as usize
    }

    /// True if a holder has a chunk it may send now.
    pub fn wants_to_send(&self) -> bool {
        self.holder
            && self.phase == Phase::Running
            && (!self.resend.is_empty() || self.window_open())
    }

    fn window_open(&self) -> bool {
        self.next_new < self.len && self.next_new - self.acked < self.pace.window
    }

    /// A holder's ack advanced to `acked` at `now`: takes the round-trip and delivery-rate sample
    /// of the timed chunk if it is in, and sets the window to twice the bandwidth-delay product.
    fn on_acked(&mut self, now: Instant) {
        let Some((end, sent, acked_then)) = self.pace.sample else {
            return;
        };
        if self.acked < end {
            return;
        }
        self.pace.sample = None;
        let rtt = now.as_micros().saturating_sub(sent.as_micros()).max(1);
        let delivered = self.acked - acked_then;
        let rate = delivered.saturating_mul(1000) / rtt;
        let p = &mut self.pace;
        p.min_rtt_us = if p.min_rtt_us == 0 {
            rtt
        } else {
            p.min_rtt_us.min(rtt)
        };
        p.max_rate = rate.max(p.max_rate - p.max_rate / 8);
        let bdp = p.max_rate.saturating_mul(p.min_rtt_us) / 1000;
        let floor = self.floor();
        self.pace.window = bdp.saturating_mul(2).clamp(floor, self.cap);
    }

    /// When this side's timer fires (retransmission, or giving up an idle transfer the peer drives).
    pub fn next_timer(&self, cfg: &EngineConfig) -> Instant {
        if self.requester {
            self.timer.next
        } else {
            self.timer
                .next
                .min(self.last_progress + cfg.transfer_idle_timeout)
        }
    }

    fn has_chunk(&self, idx: u64) -> bool {
        self.got
            .get((idx / 64) as usize)
            .is_some_and(|w| w & (1 << (idx % 64)) != 0)
    }

    fn sacked(&self, off: u64) -> bool {
        // Bit i of `sack` is chunk (acked / chunk + 1 + i).
        let base = self.acked / self.chunk + 1;
        let idx = off / self.chunk;
        idx >= base && idx - base < 64 && self.sack & (1 << (idx - base)) != 0
    }

    /// The receiver's SACK bitmap of the 64 chunks after the first missing one.
    fn sack_bits(&self) -> u64 {
        let base = self.contiguous / self.chunk + 1;
        let mut bits = 0u64;
        for i in 0..64 {
            if self.has_chunk(base + i) {
                bits |= 1 << i;
            }
        }
        bits
    }
}

impl Engine {
    /// Copies between two local buffers.
    pub(super) fn copy_local(
        &mut self,
        src: Endpoint,
        src_off: u64,
        dst: Endpoint,
        dst_off: u64,
        len: u64,
    ) -> Result<(), ErrorCode> {
        let src_len = self
            .locals
            .get(&src)
            .ok_or(ErrorCode::NotBound)?
            .buffer
            .len();
        let dst_len = self
            .locals
            .get(&dst)
            .ok_or(ErrorCode::NotBound)?
            .buffer
            .len();
        if !range_ok(src_len, src_off, len) || !range_ok(dst_len, dst_off, len) {
            return Err(ErrorCode::BufferOutOfRange);
        }
        let (s, d, n) = (src_off as usize, dst_off as usize, len as usize);
        if src == dst {
            self.local_mut(src).buffer.copy_within(s..s + n, d);
        } else {
            let data = core::mem::take(&mut self.local_mut(src).buffer);
            self.local_mut(dst).buffer[d..d + n].copy_from_slice(&data[s..s + n]);
            self.local_mut(src).buffer = data;
        }
        Ok(())
    }

    fn finished_answer(&self, key: TransferKey) -> Option<FinishedAnswer> {
        self.finished
            .iter()
            .rev()
            .find(|f| f.key == key)
            .map(|f| f.answer)
    }

    fn remember_finished(&mut self, now: Instant, key: TransferKey, answer: FinishedAnswer) {
        let idle = self.cfg.transfer_idle_timeout;
        while self.finished.front().is_some_and(|f| f.at + idle < now)
            || self.finished.len() >= self.cfg.finished_limit
        {
            self.finished.pop_front();
        }
        self.finished.push_back(Finished {
            key,
            at: now,
            answer,
        });
    }

    fn send_finished(&mut self, key: TransferKey, answer: FinishedAnswer) {
        match answer {
            FinishedAnswer::FinalAck { len, crc } => self.push_final_ack(key, len, crc),
            FinishedAnswer::Fin { code } => {
                self.tx.push_back(Tx {
                    code,
                    ..Tx::ctl(Kind::VcopyFin, key.local, key.peer, key.id, 0)
                });
            }
        }
    }

    fn push_final_ack(&mut self, key: TransferKey, len: u64, crc: u32) {
        let mut b = [0u8; wire::VCOPY_ACK_MAX_LEN];
        b[..4].copy_from_slice(&crc.to_be_bytes());
        self.tx.push_back(Tx {
            flags: flags::FINAL,
            body: Body::Bytes(b, 4),
            ..Tx::ctl(Kind::VcopyAck, key.local, key.peer, key.id, len)
        });
    }

    /// A progress ack; with `chunk` (a transfer whose opener proposed more than the legacy
    /// chunk) the agreed chunk follows the SACK bitmap.
    fn push_ack(&mut self, key: TransferKey, contiguous: u64, sack: u64, chunk: Option<u64>) {
        let mut b = [0u8; wire::VCOPY_ACK_MAX_LEN];
        b[..8].copy_from_slice(&sack.to_be_bytes());
        let n = match chunk {
            Some(c) => {
                b[8..12].copy_from_slice(&(c as u32).to_be_bytes());
                12
            }
            None => 8,
        };
        self.tx.push_back(Tx {
            body: Body::Bytes(b, n),
            ..Tx::ctl(Kind::VcopyAck, key.local, key.peer, key.id, contiguous)
        });
    }

    fn error_to(&mut self, f: &FrameRepr<'_>, code: ErrorCode) {
        let e = f.error_reply(code);
        self.push_repr(&e);
    }

    pub(super) fn on_vcopy_open(&mut self, now: Instant, f: &FrameRepr<'_>) {
        let Ok(open) = VcopyOpen::parse(f.payload) else {
            self.stats.bad_frames += 1;
            return;
        };
        let key = TransferKey {
            local: f.dst,
            peer: f.src,
            id: f.seq,
        };
        let peer_pushes = f.flags & flags::PUSH != 0;
        if let Some(t) = self.transfers.get(&key) {
            // A retransmitted open: say where we are (and, on a pull, the chunk again).
            let announce = t.announce();
            if !t.holder {
                let (c, s) = (t.contiguous, t.sack_bits());
                self.push_ack(key, c, s, announce);
            } else if announce.is_some() {
                self.push_ack(key, 0, 0, announce);
            }
            self.stats.duplicates += 1;
            return;
        }
        if let Some(answer) = self.finished_answer(key) {
            self.stats.duplicates += 1;
            self.send_finished(key, answer);
            return;
        }
        let buf_len = self.locals.get(&f.dst).map_or(0, |l| l.buffer.len());
        if !range_ok(buf_len, open.peer_off, open.len) {
            return self.error_to(f, ErrorCode::BufferOutOfRange);
        }
        let proposed = match u64::from(open.chunk) {
            0 => CHUNK,
            c if (CHUNK..=MAX_DATA_PAYLOAD as u64).contains(&c) => c,
            _ => {
                self.stats.bad_frames += 1;
                return self.error_to(f, ErrorCode::BadFrame);
            }
        };
        let chunk = proposed.min(own_chunk(&self.cfg));
        let mut t = Transfer::new(
            now,
            &self.cfg,
            !peer_pushes,
            false,
            open.peer_off,
            0,
            open.len,
            chunk,
            true,
        );
        t.proposed = proposed;
        t.limit_chunks(u64::from(open.window));
        let announce = t.announce();
        if peer_pushes {
            if open.len == 0 {
                self.push_final_ack(key, 0, 0);
                self.remember_finished(now, key, FinishedAnswer::FinalAck { len: 0, crc: 0 });
                return;
            }
            self.push_ack(key, 0, 0, announce);
        } else {
            if open.len == 0 {
                self.send_finished(key, FinishedAnswer::Fin { code: 0 });
                self.remember_finished(now, key, FinishedAnswer::Fin { code: 0 });
                return;
            }
            t.crc = crc_of(&self.local_mut(f.dst).buffer, open.peer_off, open.len);
            if announce.is_some() {
                // The receiver must know the chunk before the data: the ack goes out first.
                self.push_ack(key, 0, 0, announce);
            }
        }
        self.transfers.insert(key, t);
    }

    pub(super) fn on_vcopy_data(&mut self, now: Instant, f: &FrameRepr<'_>) {
        let key = TransferKey {
            local: f.dst,
            peer: f.src,
            id: f.seq,
        };
        let Some(t) = self.transfers.get_mut(&key).filter(|t| !t.holder) else {
            if let Some(answer) = self.finished_answer(key) {
                self.stats.duplicates += 1;
                self.send_finished(key, answer);
            } else {
                // Data for a transfer this side gave up: tell the holder to stop.
                self.stats.stale += 1;
                self.tx
                    .push_back(Tx::ctl(Kind::Cancel, key.local, key.peer, key.id, 0));
            }
            return;
        };
        if !t.chunk_known {
            // A pull whose chunk the holder has not told yet (its ack was lost or is late): the
            // holder sends this again after its timeout, our reopen asks for the chunk again.
            self.stats.stale += 1;
            return;
        }
        let off = f.aux;
        if !off.is_multiple_of(t.chunk)
            || off >= t.len
            || f.payload.len() as u64 != chunk_len(t.chunk, t.len, off)
        {
            self.stats.bad_frames += 1;
            return;
        }
        if t.phase == Phase::Verifying {
            // Duplicates while the holder's verdict is on its way: re-answer at most once per RTO,
            // from the CRC computed once on entering Verifying.
            if now >= t.final_sent + self.cfg.rto {
                t.final_sent = now;
                let (len, crc) = (t.len, t.crc);
                self.push_final_ack(key, len, crc);
            }
            return;
        }
        if t.phase == Phase::Opening {
            t.phase = Phase::Running;
            t.timer = Retx::none();
        }
        let idx = off / t.chunk;
        let in_order = off == t.contiguous;
        if t.has_chunk(idx) {
            self.stats.duplicates += 1;
            let (c, s, a) = (t.contiguous, t.sack_bits(), t.announce());
            self.push_ack(key, c, s, a);
            return;
        }
        let at = (t.local_off + off) as usize;
        let Some(dst) = self
            .locals
            .get_mut(&key.local)
            .and_then(|l| l.buffer.get_mut(at..at + f.payload.len()))
        else {
            // The owner shrank its buffer under a running transfer.
            self.transfers.remove(&key);
            self.tx
                .push_back(Tx::ctl(Kind::Cancel, key.local, key.peer, key.id, 0));
            if self
                .locals
                .get(&key.local)
                .and_then(|l| l.op)
                .is_some_and(|op| op.transfer == Some(key))
            {
                self.complete(key.local, Err(ErrorCode::BufferOutOfRange));
            }
            return;
        };
        dst.copy_from_slice(f.payload);
        let Some(t) = self.transfers.get_mut(&key) else {
            return;
        };
        t.got[(idx / 64) as usize] |= 1 << (idx % 64);
        t.last_progress = now;
        while t.contiguous < t.len && t.has_chunk(t.contiguous / t.chunk) {
            t.contiguous += chunk_len(t.chunk, t.len, t.contiguous);
        }
        t.unacked += 1;
        if t.contiguous == t.len {
            let (len, local_off, requester) = (t.len, t.local_off, t.requester);
            let crc = crc_of(&self.local_mut(key.local).buffer, local_off, len);
            self.push_final_ack(key, len, crc);
            if requester {
                let rto = self.cfg.rto;
                if let Some(t) = self.transfers.get_mut(&key) {
                    t.phase = Phase::Verifying;
                    t.crc = crc;
                    t.final_sent = now;
                    t.timer = Retx::start(now, rto);
                }
            } else {
                self.transfers.remove(&key);
                self.remember_finished(now, key, FinishedAnswer::FinalAck { len, crc });
            }
        } else if !in_order || t.unacked >= t.ack_every() {
            t.unacked = 0;
            let (c, s, a) = (t.contiguous, t.sack_bits(), t.announce());
            self.push_ack(key, c, s, a);
        }
    }

    pub(super) fn on_vcopy_ack(&mut self, now: Instant, f: &FrameRepr<'_>) {
        let key = TransferKey {
            local: f.dst,
            peer: f.src,
            id: f.seq,
        };
        let rto = self.cfg.rto;
        if let Some(t) = self
            .transfers
            .get_mut(&key)
            .filter(|t| !t.holder && t.requester)
        {
            // A pulling requester hears the agreed chunk from the holder.
            if f.flags & flags::FINAL == 0 && !t.chunk_known && f.payload.len() == 12 {
                let c = u64::from(u32::from_be_bytes([
                    f.payload[8],
                    f.payload[9],
                    f.payload[10],
                    f.payload[11],
                ]));
                if (CHUNK..=t.proposed).contains(&c) {
                    t.set_chunk(c);
                    t.phase = Phase::Running;
                    t.timer = Retx::none();
                    t.last_progress = now;
                    return;
                }
            }
            self.stats.stale += 1;
            return;
        }
        let Some(t) = self.transfers.get_mut(&key).filter(|t| t.holder) else {
            if let Some(answer @ FinishedAnswer::Fin { .. }) = self.finished_answer(key) {
                self.stats.duplicates += 1;
                self.send_finished(key, answer);
            } else {
                self.stats.stale += 1;
            }
            return;
        };
        if f.flags & flags::FINAL != 0 {
            if f.aux != t.len || f.payload.len() != 4 {
                self.stats.bad_frames += 1;
                return;
            }
            let crc = u32::from_be_bytes([f.payload[0], f.payload[1], f.payload[2], f.payload[3]]);
            let verdict = if crc == t.crc {
                Ok(())
            } else {
                Err(ErrorCode::ChecksumMismatch)
            };
            let (len, requester) = (t.len, t.requester);
            self.transfers.remove(&key);
            if requester {
                self.complete(key.local, verdict.map(|()| Completion::Copied { len }));
            } else {
                let code = verdict.err().map_or(0, |e| e as u16);
                self.send_finished(key, FinishedAnswer::Fin { code });
                self.remember_finished(now, key, FinishedAnswer::Fin { code });
            }
            return;
        }
        let p = f.payload;
        let (sack, chunk) = match p.len() {
            8 | 12 => (
                u64::from_be_bytes([p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7]]),
                (p.len() == 12).then(|| u64::from(u32::from_be_bytes([p[8], p[9], p[10], p[11]]))),
            ),
            0 => (0, None),
            _ => {
                self.stats.bad_frames += 1;
                return;
            }
        };
        if t.phase == Phase::Opening && !t.chunk_known {
            // The receiver's first answer fixes the chunk (an ack without one: the legacy chunk).
            match chunk.unwrap_or(CHUNK) {
                c if (CHUNK..=t.proposed).contains(&c) => t.set_chunk(c),
                _ => {
                    self.stats.bad_frames += 1;
                    return;
                }
            }
        }
        if f.aux > t.next_new.max(t.acked) || (!f.aux.is_multiple_of(t.chunk) && f.aux != t.len) {
            // Acknowledges bytes never sent: hostile or confused; ignore.
            self.stats.bad_frames += 1;
            return;
        }
        if t.phase == Phase::Opening {
            t.phase = Phase::Running;
            t.timer = Retx::none();
        }
        if f.aux > t.acked {
            t.acked = f.aux;
            t.last_progress = now;
            t.timer = if t.acked < t.next_new {
                Retx::start(now, rto)
            } else {
                Retx::none()
            };
            t.on_acked(now);
        }
        t.sack = sack;
        if sack != 0 {
            // Fast retransmit: every chunk missing below the highest one the receiver has, once per round.
            let chunk = t.chunk;
            let base = t.acked / chunk + 1;
            let top = 63 - u64::from(sack.leading_zeros());
            let first_missing = t.acked;
            if first_missing >= t.fast_floor && first_missing < t.next_new {
                t.resend.push_back(first_missing);
            }
            for i in 0..top {
                let off = (base + i) * chunk;
                if sack & (1 << i) == 0 && off >= t.fast_floor && off < t.next_new {
                    t.resend.push_back(off);
                }
            }
            t.fast_floor = t.fast_floor.max((base + top + 1) * chunk);
            // Karn: a retransmitted range gives no clean sample.
            t.pace.sample = None;
        }
    }

    pub(super) fn on_vcopy_fin(&mut self, f: &FrameRepr<'_>) {
        let key = TransferKey {
            local: f.dst,
            peer: f.src,
            id: f.seq,
        };
        let Some(t) = self
            .transfers
            .get(&key)
            .filter(|t| t.requester && !t.holder)
        else {
            self.stats.stale += 1;
            return;
        };
        if t.phase != Phase::Verifying && t.len != 0 {
            // A verdict before we sent ours: only an error makes sense here.
            if f.code == 0 {
                self.stats.bad_frames += 1;
                return;
            }
        }
        let len = t.len;
        self.transfers.remove(&key);
        let result = match ErrorCode::from_u16(f.code) {
            None => Ok(Completion::Copied { len }),
            Some(e) => Err(e),
        };
        self.complete(key.local, result);
    }

    /// Emits the next data chunk of some holder transfer, if any may be sent.
    pub(super) fn poll_vcopy_data(&mut self, now: Instant, buf: &mut [u8]) -> Option<usize> {
        let rto = self.cfg.rto;
        let dc = self.cfg.dc;
        for (key, t) in self.transfers.iter_mut() {
            if !t.holder || t.phase != Phase::Running {
                continue;
            }
            let off = loop {
                match t.resend.pop_front() {
                    Some(off) if off >= t.acked && !t.sacked(off) => {
                        self.stats.retransmits += 1;
                        break Some(off);
                    }
                    Some(_) => continue,
                    None if t.window_open() => {
                        let off = t.next_new;
                        t.next_new += chunk_len(t.chunk, t.len, off);
                        if t.pace.sample.is_none() {
                            t.pace.sample = Some((t.next_new, now, t.acked));
                        }
                        break Some(off);
                    }
                    None => break None,
                }
            };
            let Some(off) = off else { continue };
            let n = chunk_len(t.chunk, t.len, off) as usize;
            let at = (t.local_off + off) as usize;
            let data = self
                .locals
                .get(&key.local)
                .and_then(|l| l.buffer.get(at..at + n))?;
            if buf.len() < wire::HEADER_LEN + n {
                // Put the chunk back: a caller with a larger buffer sends it.
                t.resend.push_front(off);
                self.stats.tx_too_small += 1;
                return None;
            }
            wire::emit_header(
                buf,
                Kind::VcopyData,
                dc,
                0,
                key.local,
                key.peer,
                key.id,
                off,
                0,
                n,
            );
            buf[wire::HEADER_LEN..wire::HEADER_LEN + n].copy_from_slice(data);
            if t.timer.next == Instant::FAR_FUTURE {
                t.timer = Retx::start(now, rto);
            }
            self.stats.frames_out += 1;
            return Some(wire::HEADER_LEN + n);
        }
        None
    }

    /// Runs due vcopy timers: reopen, resend the final ack, retransmit unacknowledged data, drop idle transfers.
    pub(super) fn vcopy_timers(&mut self, now: Instant) {
        let max = self.cfg.max_rto;
        let idle = self.cfg.transfer_idle_timeout;
        let window = self.cfg.vcopy_window;
        let mut from = TransferKey {
            local: Endpoint(0),
            peer: Endpoint(0),
            id: 0,
        };
        while let Some(key) = self
            .transfers
            .range(from..)
            .find(|(_, t)| t.next_timer(&self.cfg) <= now)
            .map(|(k, _)| *k)
        {
            from = TransferKey {
                id: key.id.wrapping_add(1),
                ..key
            };
            if key.id == u64::MAX {
                from = TransferKey {
                    local: key.local,
                    peer: Endpoint(key.peer.0.saturating_add(1)),
                    id: 0,
                };
            }
            let Some(t) = self.transfers.get_mut(&key) else {
                continue;
            };
            if !t.requester && t.last_progress + idle <= now {
                self.transfers.remove(&key);
                continue;
            }
            if t.timer.next > now {
                continue;
            }
            t.timer = t.timer.backoff(now, max);
            self.stats.retransmits += 1;
            match t.phase {
                Phase::Opening => {
                    let open = t.open_frame(key, window);
                    self.tx.push_back(open);
                }
                Phase::Verifying => {
                    t.final_sent = now;
                    let (len, crc) = (t.len, t.crc);
                    self.push_final_ack(key, len, crc);
                }
                Phase::Running if t.holder => {
                    t.resend.clear();
                    t.pace.sample = None;
                    let mut off = t.acked;
                    while off < t.next_new {
                        if !t.sacked(off) {
                            t.resend.push_back(off);
                        }
                        off += t.chunk;
                    }
                    t.fast_floor = t.acked;
                    if t.resend.is_empty() && t.acked >= t.next_new {
                        t.timer = Retx::none();
                    }
                }
                Phase::Running => t.timer = Retx::none(),
            }
        }
    }
}
