//! Monotonic clock: the TSC, calibrated at boot against the PIT (1.193182 MHz), and the
//! LAPIC timer rate measured over the same window.

use core::arch::x86_64::_rdtsc;
use core::sync::atomic::{AtomicU64, Ordering::Relaxed};

const PIT_HZ: u64 = 1_193_182;
const PIT_CMD: u16 = 0x43;
const PIT_CH0: u16 = 0x40;
/// PIT ticks per period of channel 0 (the counter runs from 65536 down).
const PIT_PERIOD: u64 = 65536;
/// The clean window of `Calibrator::finish`: ~250 µs of PIT time.
const CLEAN_TICKS: u64 = 300;

static TSC_BASE: AtomicU64 = AtomicU64::new(0);
/// Clock value (ns) at `TSC_BASE`: the rate may be refined at run time without a jump.
static OFFSET_NS: AtomicU64 = AtomicU64::new(0);
/// The boot calibration's first sample (PIT count, TSC, LAPIC count), kept for `refine`.
static REFINE: AtomicU64 = AtomicU64::new(0);
static REFINE_TSC: AtomicU64 = AtomicU64::new(0);
/// How long after the first sample the rate is measured again (the PIT wraps at 54.9 ms).
const REFINE_AFTER_US: u64 = 40_000;
/// Nanoseconds per TSC tick as a 32.32 fixed-point factor.
static NS_PER_TICK_FP: AtomicU64 = AtomicU64::new(1 << 32);
static TSC_HZ: AtomicU64 = AtomicU64::new(1_000_000_000);
static LAPIC_HZ: AtomicU64 = AtomicU64::new(1_000_000_000);

/// Reads the time-stamp counter.
#[inline]
pub fn rdtsc() -> u64 {
    // SAFETY: rdtsc is allowed in ring 3 (CR4.TSD is clear) and has no side effect.
    unsafe { _rdtsc() }
}

fn pit_read() -> u16 {
    super::outb(PIT_CMD, 0x00); // latch channel 0
    let lo = super::inb(PIT_CH0) as u16;
    let hi = super::inb(PIT_CH0) as u16;
    lo | (hi << 8)
}

/// Result of the boot-time calibration.
#[derive(Clone, Copy, Debug)]
pub struct Calibration {
    /// TSC ticks per second.
    pub tsc_hz: u64,
    /// LAPIC timer ticks per second (divide-by-1).
    pub lapic_hz: u64,
    /// PIT ticks the measurement spanned.
    pub pit_ticks: u64,
}

/// Reads the PIT with the TSC taken on both sides; returns (pit count, TSC midpoint).
fn pit_sample() -> (u16, u64) {
    let t0 = rdtsc();
    let p = pit_read();
    let t1 = rdtsc();
    (p, t0 + (t1 - t0) / 2)
}

/// A calibration in progress: the PIT and the LAPIC timer count while the kernel does
/// other work (device set-up), so the measurement window costs no boot time.
pub struct Calibrator {
    p0: u16,
    t0: u64,
    l0: u32,
}

impl Calibrator {
    /// Starts the PIT (channel 0, rate generator, period 65536 ticks = 54.9 ms) and the
    /// masked LAPIC countdown, and takes the first sample.
    pub fn start() -> Calibrator {
        super::outb(PIT_CMD, 0x34);
        super::outb(PIT_CH0, 0);
        super::outb(PIT_CH0, 0);
        super::apic::start_calibration_count();
        let (p0, t0) = pit_sample();
        let l0 = super::apic::current_count();
        Calibrator { p0, t0, l0 }
    }

    /// Waits until at least `window_us` of PIT time passed since `start`, then sets the clock's
    /// rate from the TSC ticks counted meanwhile.
    ///
    /// The PIT wraps every 54.9 ms, and the device set-up between `start` and `finish` may take
    /// longer (the q35 PCI scan on a loaded host). So `finish` also measures a short clean
    /// window of its own (nothing else runs in it, so it cannot wrap), takes a rough rate from
    /// it, and uses that to count how often the long window wrapped; the rate itself comes
    /// from the long window's exact PIT count.
    pub fn finish(self, window_us: u64) -> Result<Calibration, &'static str> {
        let want = (PIT_HZ * window_us / 1_000_000).clamp(100, 50_000);
        let (pe, te) = pit_sample();
        let mut spins = 0u32;
        let (pit_ticks, t1, l1) = loop {
            let (p, t) = pit_sample();
            let l = super::apic::current_count();
            let clean = pe.wrapping_sub(p) as u64;
            if clean >= CLEAN_TICKS {
                let measured = self.p0.wrapping_sub(p) as u64;
                // PIT ticks of the long window by the TSC at the clean window's rate.
                let estimate = ((t - self.t0) as u128 * clean as u128 / (t - te).max(1) as u128)
                    .min(u64::MAX as u128) as u64;
                let wraps = (estimate.saturating_sub(measured) + PIT_PERIOD / 2) / PIT_PERIOD;
                let total = measured + wraps * PIT_PERIOD;
                if total >= want {
                    break (total, t, l);
                }
            }
            spins += 1;
            if spins > 5_000_000 {
                return Err("PIT does not count: no i8254 (use -M microvm,pit=on)");
            }
        };
        if pit_ticks < 100 {
            return Err("PIT calibration window too short");
        }
        let tsc_hz = ((t1 - self.t0) as u128 * PIT_HZ as u128 / pit_ticks as u128) as u64;
        let lapic_hz =
            (self.l0.wrapping_sub(l1) as u128 * PIT_HZ as u128 / pit_ticks as u128) as u64;
        if tsc_hz < 1_000_000 {
            return Err("TSC runs slower than 1 MHz against the PIT");
        }
        set_rates(tsc_hz, lapic_hz);
        // Keep the PIT running: `refine` measures again over a 40 ms window.
        REFINE.store(1 << 63 | (self.p0 as u64) << 32 | self.l0 as u64, Relaxed);
        REFINE_TSC.store(self.t0, Relaxed);
        Ok(Calibration {
            tsc_hz,
            lapic_hz,
            pit_ticks,
        })
    }
}

fn set_rates(tsc_hz: u64, lapic_hz: u64) {
    // Rebase so that the clock stays continuous across a change of rate.
    let t = rdtsc();
    let now = now_ns_at(t);
    OFFSET_NS.store(now, Relaxed);
    TSC_BASE.store(t, Relaxed);
    TSC_HZ.store(tsc_hz, Relaxed);
    LAPIC_HZ.store(lapic_hz.max(1), Relaxed);
    NS_PER_TICK_FP.store(((1_000_000_000u128 << 32) / tsc_hz as u128) as u64, Relaxed);
}

/// When (kernel clock, µs) `refine` should run, if it still has to.
pub fn refine_due_us() -> Option<u64> {
    if REFINE.load(Relaxed) >> 63 == 0 {
        return None;
    }
    let elapsed = ticks_to_ns(rdtsc().wrapping_sub(REFINE_TSC.load(Relaxed))) / 1000;
    Some(now_us() + REFINE_AFTER_US.saturating_sub(elapsed))
}

/// Measures the TSC rate again over ~40 ms of PIT time (a 20x longer window than
/// at boot, so 20x less error from exit latency), then stops the PIT. Skipped if the PIT may
/// have wrapped (the loop slept past 50 ms).
pub fn refine() {
    let state = REFINE.load(Relaxed);
    if state >> 63 == 0 {
        return;
    }
    let t0 = REFINE_TSC.load(Relaxed);
    let (p, t) = pit_sample();
    let elapsed_us = ticks_to_ns(t.wrapping_sub(t0)) / 1000;
    if elapsed_us < REFINE_AFTER_US {
        return;
    }
    REFINE.store(0, Relaxed);
    super::outb(PIT_CMD, 0x30); // channel 0, mode 0, no count written: the counter stops
    if elapsed_us > 50_000 {
        return;
    }
    let p0 = (state >> 32) as u16;
    let pit_ticks = p0.wrapping_sub(p) as u64;
    if pit_ticks < 10_000 {
        return;
    }
    let tsc_hz = ((t - t0) as u128 * PIT_HZ as u128 / pit_ticks as u128) as u64;
    // The LAPIC timer has been re-armed since (it wakes the halts): keep its boot rate.
    set_rates(tsc_hz, lapic_hz());
}

/// Sets the clock's origin (time 0) to now.
pub fn set_origin() {
    TSC_BASE.store(rdtsc(), Relaxed);
}

#[inline]
fn now_ns_at(tsc: u64) -> u64 {
    let ticks = tsc.wrapping_sub(TSC_BASE.load(Relaxed));
    OFFSET_NS.load(Relaxed) + ((ticks as u128 * NS_PER_TICK_FP.load(Relaxed) as u128) >> 32) as u64
}

static LAST_NS: AtomicU64 = AtomicU64::new(0);
static BACKWARDS: AtomicU64 = AtomicU64::new(0);

/// Nanoseconds since the origin; never goes backwards (a TSC step back is counted).
#[inline]
pub fn now_ns() -> u64 {
    let n = now_ns_at(rdtsc());
    let last = LAST_NS.load(Relaxed);
    if n < last {
        BACKWARDS.fetch_add(1, Relaxed);
        return last;
    }
    LAST_NS.store(n, Relaxed);
    n
}

/// How often the TSC was seen to step backwards.
pub fn backwards_steps() -> u64 {
    BACKWARDS.load(Relaxed)
}

/// Microseconds since the origin.
#[inline]
pub fn now_us() -> u64 {
    now_ns() / 1000
}

/// Converts a duration in TSC ticks to nanoseconds.
pub fn ticks_to_ns(ticks: u64) -> u64 {
    ((ticks as u128 * NS_PER_TICK_FP.load(Relaxed) as u128) >> 32) as u64
}

/// The calibrated TSC rate.
pub fn tsc_hz() -> u64 {
    TSC_HZ.load(Relaxed)
}

/// The calibrated LAPIC timer rate.
pub fn lapic_hz() -> u64 {
    LAPIC_HZ.load(Relaxed)
}
