//! Counters per port, per DC and per peer: frames, bytes and drops by reason.

use serde::{Deserialize, Serialize};

/// Why the proxy dropped a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Drop {
    /// The bytes are not a valid Ethernet or M3-IPC frame.
    Malformed,
    /// A VM port sent as a DC, endpoint or MAC address the node did not assign to it.
    Spoofed,
    /// A peer sent a frame for a DC that does not span it.
    WrongDc,
    /// The destination (port socket or peer queue) was full or gone.
    QueueFull,
    /// No route: unknown endpoint, other DC, unreachable node (an Error frame went back when one was due).
    NoRoute,
    /// A frame went round between nodes too often.
    Loop,
    /// A peer sent a frame as an endpoint (or a LAN source MAC) that is not its own: the M3-IPC source is not
    /// placed on that peer (nor left it a moment ago), or the MAC belongs to a port of this node.
    PeerSpoofed,
    /// A vhost-user instance broke its virtqueues (a descriptor outside its memory, a bad chain, an oversized
    /// frame, garbage in a ring): the port cut it off.
    BadRing,
    /// A VM port's frame came over its DC's rate limit on this node (the DC's token bucket was empty).
    RateLimited,
}

/// Drops by reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drops {
    /// Not a valid frame.
    pub malformed: u64,
    /// Sent as someone else.
    pub spoofed: u64,
    /// From a peer outside the frame's DC.
    pub wrong_dc: u64,
    /// Destination full or gone.
    pub queue_full: u64,
    /// No route.
    pub no_route: u64,
    /// Loop guard.
    pub loop_guard: u64,
    /// From a peer, as a source that is not the peer's.
    #[serde(default)]
    pub peer_spoofed: u64,
    /// Instances cut off for breaking their vhost-user virtqueues.
    #[serde(default)]
    pub bad_ring: u64,
    /// Frames from VM ports over their DC's rate limit on this node.
    #[serde(default)]
    pub rate_limited: u64,
}

impl Drops {
    /// Counts one drop.
    pub fn add(&mut self, why: Drop) {
        let c = match why {
            Drop::Malformed => &mut self.malformed,
            Drop::Spoofed => &mut self.spoofed,
            Drop::WrongDc => &mut self.wrong_dc,
            Drop::QueueFull => &mut self.queue_full,
            Drop::NoRoute => &mut self.no_route,
            Drop::Loop => &mut self.loop_guard,
            Drop::PeerSpoofed => &mut self.peer_spoofed,
            Drop::BadRing => &mut self.bad_ring,
            Drop::RateLimited => &mut self.rate_limited,
        };
        *c += 1;
    }

    /// All drops.
    pub fn total(&self) -> u64 {
        self.by_reason().iter().map(|(_, n)| n).sum()
    }

    /// Each reason's name (as in counters' JSON) and count.
    pub fn by_reason(&self) -> [(&'static str, u64); 9] {
        [
            ("malformed", self.malformed),
            ("spoofed", self.spoofed),
            ("wrong_dc", self.wrong_dc),
            ("queue_full", self.queue_full),
            ("no_route", self.no_route),
            ("loop_guard", self.loop_guard),
            ("peer_spoofed", self.peer_spoofed),
            ("bad_ring", self.bad_ring),
            ("rate_limited", self.rate_limited),
        ]
    }
}

impl std::fmt::Display for Drops {
    /// `none`, or the non-zero reasons: `spoofed=10 malformed=2`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let all = self.by_reason();
        let parts: Vec<String> = all
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(k, n)| format!("{k}={n}"))
            .collect();
        if parts.is_empty() {
            f.write_str("none")
        } else {
            f.write_str(&parts.join(" "))
        }
    }
}

/// Frames and bytes in one direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flow {
    /// Frames.
    pub frames: u64,
    /// Bytes (Ethernet frames, headers included).
    pub bytes: u64,
}

impl Flow {
    /// Counts one frame of `len` bytes.
    pub fn add(&mut self, len: usize) {
        self.frames += 1;
        self.bytes += len as u64;
    }
}

/// Counters of one VM port.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortCounters {
    /// Frames the instance sent (all of them, dropped ones too).
    pub rx: Flow,
    /// Frames delivered to the instance.
    pub tx: Flow,
    /// Frames from this instance that were dropped.
    pub drops: Drops,
}

/// Counters of one DC on this node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DcCounters {
    /// M3-IPC frames routed.
    pub m3ipc: Flow,
    /// Virtual-LAN frames (Ethernet, ARP, IPv4...) switched.
    pub lan: Flow,
    /// Error or Migrated frames the proxy sent back to sources, by code.
    pub refused: Refusals,
    /// Frames of this DC that were dropped.
    pub drops: Drops,
    /// The DC's MAC table (absent in counters from before it had one).
    #[serde(default)]
    pub macs: MacCounters,
    /// How long the DC's calls through this node took, from the request passing the proxy to its answer
    /// coming back through it (a retransmitted request keeps its first time).
    #[serde(default)]
    pub calls: CallLatency,
}

/// Call times of one DC through this node, by kind of call.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallLatency {
    /// SendRec to its Reply.
    pub sendrec: Histogram,
    /// Send to its Delivered.
    pub send: Histogram,
    /// VcopyOpen to its VcopyFin (a whole bulk copy).
    pub vcopy: Histogram,
    /// Calls answered with an Error (by the destination, its node or this proxy).
    pub failed: u64,
}

/// A latency histogram with fixed bounds ([`Histogram::BOUNDS_US`]): counts per bucket, the sum and the count.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Histogram {
    /// Observations at most `BOUNDS_US[i]` µs (and above `BOUNDS_US[i - 1]`); the last bucket holds the rest.
    pub buckets: Vec<u64>,
    /// Sum of the observations, µs.
    pub sum_us: u64,
    /// Number of observations.
    pub count: u64,
}

impl Default for Histogram {
    fn default() -> Histogram {
        Histogram {
            buckets: vec![0; Histogram::BOUNDS_US.len() + 1],
            sum_us: 0,
            count: 0,
        }
    }
}

impl Histogram {
    /// Upper bounds of the buckets, µs: from 10 µs (a same-node call) to 10 s (a long bulk copy).
    pub const BOUNDS_US: [u64; 16] = [
        10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 500_000,
        1_000_000, 10_000_000,
    ];

    /// Counts one observation of `us` microseconds.
    pub fn observe(&mut self, us: u64) {
        let i = Histogram::BOUNDS_US.partition_point(|&b| b < us);
        if self.buckets.len() != Histogram::BOUNDS_US.len() + 1 {
            self.buckets = vec![0; Histogram::BOUNDS_US.len() + 1];
        }
        self.buckets[i] += 1;
        self.sum_us = self.sum_us.saturating_add(us);
        self.count += 1;
    }

    /// `(upper bound in seconds, count in that bucket alone)`, `+Inf` last (what an encoder that sums the
    /// buckets itself, such as prometheus-client's, takes).
    pub fn buckets_seconds(&self) -> Vec<(f64, u64)> {
        let bounds = Histogram::BOUNDS_US
            .iter()
            .map(|&b| b as f64 / 1e6)
            .chain([f64::INFINITY]);
        bounds
            .zip(self.buckets.iter().copied().chain(std::iter::repeat(0)))
            .collect()
    }
}

/// The MAC table of one DC on this node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MacCounters {
    /// Addresses in the table now (learned and assigned to ports).
    pub entries: u64,
    /// New addresses learned from frames.
    pub learned: u64,
    /// Learned addresses seen behind another port or peer than before.
    pub moved: u64,
    /// Learned addresses forgotten because they sent nothing for the ageing time.
    pub aged: u64,
    /// Learned addresses dropped to make room in a full table (the one seen longest ago goes).
    pub evicted: u64,
}

/// Refusals sent back to sources, by error code.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusals {
    /// Error UnknownDestination.
    pub unknown_destination: u64,
    /// Of those answered UnknownDestination, calls to an endpoint that exists in another DC
    /// (a cross-DC probe; the caller is told nothing more than for a missing endpoint).
    pub other_dc: u64,
    /// Error NodeUnreachable.
    pub node_unreachable: u64,
    /// Error DeadDestination (the instance went away with a call in progress).
    pub dead_destination: u64,
    /// Migrated.
    pub migrated: u64,
}

impl Refusals {
    /// Each answer's name (as in counters' JSON) and count; `other_dc` is a part of `unknown_destination`.
    pub fn by_code(&self) -> [(&'static str, u64); 5] {
        [
            ("unknown_destination", self.unknown_destination),
            ("other_dc", self.other_dc),
            ("node_unreachable", self.node_unreachable),
            ("dead_destination", self.dead_destination),
            ("migrated", self.migrated),
        ]
    }
}

/// Counters of one peer link.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerCounters {
    /// True while the link is up.
    pub up: bool,
    /// Frames received from the peer.
    pub rx: Flow,
    /// Frames sent to the peer.
    pub tx: Flow,
    /// Writes to the socket (tx.frames / writes is the mean batch size).
    pub writes: u64,
    /// Times the link came up.
    pub connects: u64,
    /// Frames to or from the peer that were dropped.
    pub drops: Drops,
    /// Directory messages from the peer that were refused (an endpoint the peer does not own, a handover from
    /// a node that is not the owner).
    #[serde(default)]
    pub dir_refused: u64,
    /// The link's latest round trip, µs: a Ping (sent every heartbeat period) to its Pong, through both
    /// proxies' queues (`None` until one was answered).
    #[serde(default)]
    pub rtt_us: Option<u64>,
    /// Pings answered.
    #[serde(default)]
    pub pongs: u64,
}

/// Peer links refused before they carried anything, by reason (the peer may not be a node at all, so these
/// are not per peer).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkCounters {
    /// The TLS handshake failed: no certificate, one of another CA, plain TCP where TLS is on (or TLS where it
    /// is off), a bad or late handshake.
    pub tls_refused: u64,
    /// The certificate is of the cluster CA but names another node than the one dialled or the one the peer
    /// claims in its Hello.
    pub id_mismatch: u64,
    /// The Hello was missing, late, of another protocol version, or from a node that should not connect here.
    pub hello_refused: u64,
}

/// Why a peer link was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkRefusal {
    /// See [`LinkCounters::tls_refused`].
    Tls,
    /// See [`LinkCounters::id_mismatch`].
    IdMismatch,
    /// See [`LinkCounters::hello_refused`].
    Hello,
}

impl LinkCounters {
    /// Counts one refusal.
    pub fn add(&mut self, why: LinkRefusal) {
        match why {
            LinkRefusal::Tls => self.tls_refused += 1,
            LinkRefusal::IdMismatch => self.id_mismatch += 1,
            LinkRefusal::Hello => self.hello_refused += 1,
        }
    }
}

/// Sub-buckets per power of two in [`Latency`] (resolution about 19%).
const LATENCY_SUB: u32 = 4;
/// Buckets of [`Latency`]: up to 2^40 ns (18 minutes).
pub const LATENCY_BUCKETS: usize = 40 * LATENCY_SUB as usize;

/// A histogram of durations in nanoseconds: log-linear buckets ([`LATENCY_SUB`] per power of two), so that a
/// reader can take quantiles of any window by subtracting two snapshots ([`Latency::since`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Latency {
    /// Samples.
    pub count: u64,
    /// Sum of the samples, ns.
    pub sum_ns: u64,
    /// Samples per bucket ([`Latency::bucket`] says which); empty until the first sample.
    #[serde(default)]
    pub buckets: Vec<u64>,
}

impl Latency {
    /// The bucket of `ns`.
    pub fn bucket(ns: u64) -> usize {
        if ns < u64::from(LATENCY_SUB) {
            return ns as usize;
        }
        let octave = 63 - ns.leading_zeros(); // ≥ 2
        let sub = (ns >> (octave - 2)) & u64::from(LATENCY_SUB - 1);
        ((octave - 1) * LATENCY_SUB + sub as u32).min(LATENCY_BUCKETS as u32 - 1) as usize
    }

    /// The smallest duration in bucket `i`, ns.
    pub fn bucket_floor(i: usize) -> u64 {
        let sub = LATENCY_SUB as usize;
        if i < sub {
            return i as u64;
        }
        let octave = (i / sub + 1) as u32;
        (1u64 << octave) + ((i % sub) as u64) * (1u64 << (octave - 2))
    }

    /// Counts one duration.
    pub fn add(&mut self, d: std::time::Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        if self.buckets.len() < LATENCY_BUCKETS {
            self.buckets.resize(LATENCY_BUCKETS, 0);
        }
        self.buckets[Latency::bucket(ns)] += 1;
        self.count += 1;
        self.sum_ns = self.sum_ns.saturating_add(ns);
    }

    /// The samples added after `earlier` (a snapshot of the same histogram).
    pub fn since(&self, earlier: &Latency) -> Latency {
        Latency {
            count: self.count.saturating_sub(earlier.count),
            sum_ns: self.sum_ns.saturating_sub(earlier.sum_ns),
            buckets: self
                .buckets
                .iter()
                .enumerate()
                .map(|(i, n)| n.saturating_sub(earlier.buckets.get(i).copied().unwrap_or(0)))
                .collect(),
        }
    }

    /// The `q` quantile (0..=1), ns: the middle of the bucket it falls in (None without samples).
    pub fn quantile_ns(&self, q: f64) -> Option<u64> {
        if self.count == 0 {
            return None;
        }
        let rank = ((self.count as f64 * q.clamp(0.0, 1.0)).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                let (lo, hi) = (Latency::bucket_floor(i), Latency::bucket_floor(i + 1));
                return Some(lo + (hi - lo) / 2);
            }
        }
        None
    }

    /// The mean, ns (None without samples).
    pub fn mean_ns(&self) -> Option<u64> {
        (self.count > 0).then(|| self.sum_ns / self.count)
    }
}

/// How long frames stay in this node's proxy (timing hooks of the switch; the proxy's share of a call's
/// time in the benchmarks' per-hop breakdown).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwitchTiming {
    /// A frame from a VM port through the switch (checks, routing, queueing its outputs).
    pub port_frame: Latency,
    /// A frame from a peer link through the switch.
    pub peer_frame: Latency,
    /// A frame from a VM port (handed to the switch) until the write to the peer socket that carried it
    /// (batching and the peer queue included).
    pub port_to_peer_write: Latency,
}

#[cfg(test)]
mod latency_tests {
    use super::Latency;
    use std::time::Duration;

    #[test]
    fn buckets_are_ordered_and_cover_their_floors() {
        for i in 0..super::LATENCY_BUCKETS - 1 {
            let (lo, hi) = (Latency::bucket_floor(i), Latency::bucket_floor(i + 1));
            assert!(lo < hi, "bucket {i}: {lo} !< {hi}");
            assert_eq!(Latency::bucket(lo), i, "floor of bucket {i} ({lo} ns)");
            assert_eq!(
                Latency::bucket(hi - 1),
                i,
                "top of bucket {i} ({} ns)",
                hi - 1
            );
        }
    }

    #[test]
    fn quantiles_of_a_window() {
        let mut h = Latency::default();
        for _ in 0..90 {
            h.add(Duration::from_micros(10));
        }
        let snap = h.clone();
        for _ in 0..99 {
            h.add(Duration::from_micros(100));
        }
        h.add(Duration::from_millis(5));
        let w = h.since(&snap);
        assert_eq!(w.count, 100);
        let m = w.quantile_ns(0.5).unwrap();
        assert!((90_000..=110_000).contains(&m), "median {m}");
        let p = h.quantile_ns(0.999).unwrap();
        assert!((4_000_000..=6_000_000).contains(&p), "p99.9 {p}");
        assert!(Latency::default().quantile_ns(0.5).is_none());
    }
}
