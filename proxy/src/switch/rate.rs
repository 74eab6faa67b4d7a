//! The per-DC rate limit: a frame bucket and a byte bucket per DC on this node, charged by every frame a VM port
//! of the DC sends into the switch. Sans-IO like the rest of the switch: the caller's `now` refills the buckets.
//! O(1) per frame, no allocation.

use m3ipc_core::Instant;

use crate::cluster::DcLimit;

/// Tokens are kept in millionths so that a refill of `elapsed µs × rate/s` is exact.
const SCALE: u128 = 1_000_000;

/// One token bucket: `rate` tokens a second, at most `burst` kept.
#[derive(Clone, Copy, Debug)]
struct Bucket {
    rate: u128,
    cap: u128,
    micro: u128,
}

impl Bucket {
    fn full(rate: u64, burst: u64) -> Bucket {
        let cap = u128::from(burst) * SCALE;
        Bucket {
            rate: u128::from(rate),
            cap,
            micro: cap,
        }
    }

    fn refill(&mut self, elapsed_us: u64) {
        self.micro = (self.micro + u128::from(elapsed_us) * self.rate).min(self.cap);
    }

    fn has(&self, n: u64) -> bool {
        self.micro >= u128::from(n) * SCALE
    }

    fn take(&mut self, n: u64) {
        self.micro = self.micro.saturating_sub(u128::from(n) * SCALE);
    }
}

/// How many times a DC's per-node limit one peer may send of it into this node.
pub const PEER_HEADROOM: u64 = 2;

/// The two buckets of one DC on this node.
#[derive(Clone, Copy, Debug)]
pub(super) struct DcBuckets {
    frames: Bucket,
    bytes: Bucket,
    last: Instant,
}

impl DcBuckets {
    /// Full buckets for `limit` (0 fields take their defaults), last refilled at `now`.
    pub(super) fn new(limit: &DcLimit, now: Instant) -> DcBuckets {
        let (fps, bps, bf, bb) = limit.effective();
        DcBuckets {
            frames: Bucket::full(fps, bf),
            bytes: Bucket::full(bps, bb),
            last: now,
        }
    }

    /// Full buckets for what one peer may send of a DC: `limit` times [`PEER_HEADROOM`] (a peer's own VMs are
    /// held to `limit` there; the headroom is for frames it forwards, e.g. to an endpoint that moved).
    pub(super) fn for_peer(limit: &DcLimit, now: Instant) -> DcBuckets {
        let (fps, bps, bf, bb) = limit.effective();
        let x = |v: u64| v.saturating_mul(PEER_HEADROOM);
        DcBuckets {
            frames: Bucket::full(x(fps), x(bf)),
            bytes: Bucket::full(x(bps), x(bb)),
            last: now,
        }
    }

    /// Refills for the time since the last call and charges one frame of `len` bytes; false (nothing charged)
    /// when either bucket lacks the tokens. A `now` earlier than the last one refills nothing.
    pub(super) fn admit(&mut self, now: Instant, len: usize) -> bool {
        if now > self.last {
            let us = now.as_micros() - self.last.as_micros();
            self.frames.refill(us);
            self.bytes.refill(us);
            self.last = now;
        }
        let len = len as u64;
        if !self.frames.has(1) || !self.bytes.has(len) {
            return false;
        }
        self.frames.take(1);
        self.bytes.take(len);
        true
    }
}
