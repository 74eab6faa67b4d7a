//! A deterministic network simulator for m3ipc-core engines: seeded loss, duplication, reordering
//! (random delay), partitions, and a router that answers like the proxy (unknown endpoint → Error).

use m3ipc_core::wire::{FrameRepr, Kind, MAX_FRAME, MAX_JUMBO_FRAME};
use m3ipc_core::{Endpoint, Engine, ErrorCode, Event, Instant};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

/// splitmix64: small, seeded, good enough for fault injection.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        ((self.next_u64() >> 11) as f64) / ((1u64 << 53) as f64) < p
    }
    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }
}

/// What the network does to frames.
#[derive(Clone, Copy, Debug)]
pub struct Faults {
    pub loss: f64,
    pub dup: f64,
    /// One-way delay, uniform in this range of microseconds (a spread reorders frames).
    pub delay_us: (u64, u64),
}

impl Faults {
    pub fn lossy(loss: f64) -> Faults {
        Faults {
            loss,
            dup: 0.05,
            delay_us: (50, 3000),
        }
    }
}

#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct InFlight {
    at: u64,
    n: u64,
    to: usize,
    bytes: Vec<u8>,
}

pub struct Sim {
    pub now: Instant,
    pub engines: Vec<Engine>,
    /// Where each endpoint lives (the directory).
    pub route: BTreeMap<Endpoint, usize>,
    /// Engine pairs that cannot reach each other.
    pub partitions: Vec<(usize, usize)>,
    pub faults: Faults,
    rng: Rng,
    inflight: BinaryHeap<Reverse<InFlight>>,
    n: u64,
    pub frames_sent: u64,
    /// VcopyData frames put on the network so far (the index the two lists below count by).
    pub data_frames: u64,
    /// VcopyData frames (by index) the network drops on purpose.
    pub drop_data: Vec<u64>,
    /// VcopyData frames (by index) the network holds back this many extra µs (they arrive after
    /// later ones).
    pub hold_data: Vec<(u64, u64)>,
    /// Largest VcopyData payload seen.
    pub max_data_payload: usize,
    /// Link speed towards each engine in bytes per µs (0: infinite): frames to one engine queue
    /// behind each other (FIFO), as on a real link, before the delay.
    pub bytes_per_us: u64,
    busy_until: Vec<u64>,
    buf: Vec<u8>,
}

impl Sim {
    pub fn new(seed: u64, engines: Vec<Engine>, faults: Faults) -> Sim {
        let mut route = BTreeMap::new();
        for (i, e) in engines.iter().enumerate() {
            for ep in e.endpoints() {
                route.insert(ep, i);
            }
        }
        Sim {
            now: Instant::from_micros(1_000_000),
            engines,
            route,
            partitions: Vec::new(),
            faults,
            rng: Rng::new(seed),
            inflight: BinaryHeap::new(),
            n: 0,
            frames_sent: 0,
            data_frames: 0,
            drop_data: Vec::new(),
            hold_data: Vec::new(),
            max_data_payload: 0,
            bytes_per_us: 0,
            busy_until: Vec::new(),
            buf: vec![0u8; MAX_JUMBO_FRAME],
        }
    }

    pub fn rng(&mut self) -> &mut Rng {
        &mut self.rng
    }

    fn cut(&self, a: usize, b: usize) -> bool {
        self.partitions
            .iter()
            .any(|&(x, y)| (x, y) == (a, b) || (y, x) == (a, b))
    }

    fn schedule(&mut self, to: usize, bytes: Vec<u8>) {
        self.schedule_after(to, bytes, 0);
    }

    fn schedule_after(&mut self, to: usize, bytes: Vec<u8>, extra_us: u64) {
        let (lo, hi) = self.faults.delay_us;
        let mut start = self.now.as_micros();
        if self.bytes_per_us > 0 {
            if self.busy_until.len() <= to {
                self.busy_until.resize(to + 1, 0);
            }
            let done =
                start.max(self.busy_until[to]) + (bytes.len() as u64).div_ceil(self.bytes_per_us);
            self.busy_until[to] = done;
            start = done;
        }
        let at = start + self.rng.range(lo, hi) + extra_us;
        self.n += 1;
        self.inflight.push(Reverse(InFlight {
            at,
            n: self.n,
            to,
            bytes,
        }));
    }

    /// Takes every frame the engines want to send and puts it on the network.
    pub fn flush(&mut self) {
        let mut buf = core::mem::take(&mut self.buf);
        for from in 0..self.engines.len() {
            while let Some(len) = self.engines[from].poll_transmit(self.now, &mut buf) {
                self.frames_sent += 1;
                let bytes = buf[..len].to_vec();
                let f = FrameRepr::parse(&bytes).expect("engines emit valid frames");
                let mut extra = 0;
                if f.kind == Kind::VcopyData {
                    let i = self.data_frames;
                    self.data_frames += 1;
                    self.max_data_payload = self.max_data_payload.max(f.payload.len());
                    if self.drop_data.contains(&i) {
                        continue;
                    }
                    if let Some(&(_, us)) = self.hold_data.iter().find(|(at, _)| *at == i) {
                        extra = us;
                    }
                }
                let Some(&to) = self.route.get(&f.dst) else {
                    // The router answers for endpoints nobody holds.
                    if f.wants_error_reply() {
                        let mut out = [0u8; MAX_FRAME];
                        let n = f
                            .error_reply(ErrorCode::UnknownDestination)
                            .emit(&mut out)
                            .unwrap();
                        self.schedule(from, out[..n].to_vec());
                    }
                    continue;
                };
                if self.cut(from, to) || self.rng.chance(self.faults.loss) {
                    continue;
                }
                if self.rng.chance(self.faults.dup) {
                    self.schedule(to, bytes.clone());
                }
                self.schedule_after(to, bytes, extra);
            }
        }
        self.buf = buf;
    }

    /// Advances to the next frame arrival or timer, runs it, and returns the events it caused.
    /// `None` when nothing at all is pending (the system is quiet).
    pub fn step(&mut self) -> Option<Vec<(usize, Event)>> {
        self.flush();
        // Events caused by calls made since the last step come first.
        let pending = self.drain_events();
        if !pending.is_empty() {
            return Some(pending);
        }
        let next_frame = self.inflight.peek().map(|Reverse(f)| f.at);
        let next_timer = self
            .engines
            .iter()
            .filter_map(|e| e.poll_timeout())
            .map(|t| t.as_micros())
            .min();
        let at = match (next_frame, next_timer) {
            (None, None) => return None,
            (a, b) => a.unwrap_or(u64::MAX).min(b.unwrap_or(u64::MAX)),
        };
        self.now = self.now.max(Instant::from_micros(at));
        while self.inflight.peek().is_some_and(|Reverse(f)| f.at <= at) {
            let Reverse(f) = self.inflight.pop().unwrap();
            self.engines[f.to].handle_frame(self.now, &f.bytes);
        }
        for e in &mut self.engines {
            if e.poll_timeout().is_some_and(|t| t <= self.now) {
                e.handle_timeout(self.now);
            }
        }
        Some(self.drain_events())
    }

    pub fn drain_events(&mut self) -> Vec<(usize, Event)> {
        let mut out = Vec::new();
        for (i, e) in self.engines.iter_mut().enumerate() {
            while let Some(ev) = e.poll_event() {
                out.push((i, ev));
            }
        }
        out
    }
}
