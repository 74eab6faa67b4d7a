//! Benchmark client: N sendrecs against a peer endpoint (median, p99, ops/s, and where each call
//! spent its time: `Report::Hops`), then notifications sent back to back, then a vcopy of M bytes
//! to the peer and back, then (when the instance has a spare endpoint) sendrecs from that endpoint
//! during a vcopy of M bytes (`Report::LoadedSendrecs`), then the timer wake-up floor
//! (`Report::TimerWake`). Each part is reported on the console (`dvs: bench ...`) and on the
//! control channel (`Report`); the first failure ends the run with `dvs: bench FAILED ...` and
//! `Report::Failed`. [`hops`] holds the stamps the kernel's loop sets for this, and reports a
//! server's side of the calls (`Report::ServerHops`) in instances that do not run the client.

use crate::arch::{control, time};
use crate::executor;
use crate::ipc::{self, IpcRef};
use crate::println;
use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::cell::Cell;
use core::future::{poll_fn, Future};
use core::task::Poll;
use core::time::Duration;
use dvs_vos_abi::boot::BenchConfig;
use dvs_vos_abi::control::BenchStep;
use dvs_vos_abi::{ControlRecord, Report};
use m3ipc_core::{Endpoint, ErrorCode, Message, VcopyRequest};

/// Timeout of one sendrec.
const SENDREC_TIMEOUT: Duration = Duration::from_secs(5);
/// Timeout of one vcopy.
const VCOPY_TIMEOUT: Duration = Duration::from_secs(30);
/// The loaded phase repeats its vcopy until this many calls were made during them...
const LOADED_MIN_CALLS: usize = 1000;
/// ...or this many vcopies ran.
const LOADED_MAX_COPIES: u32 = 4;
/// Sleeps of the timer wake-up phase, and how long each asks for (longer than the loop's
/// default 300 µs of polling, so that it halts).
const TIMER_SLEEPS: usize = 100;
const TIMER_SLEEP_US: u64 = 2000;

fn report(r: Report) {
    control::send(&ControlRecord::Report(r));
}

/// A failed step: its console line has been printed; this sends the record.
fn failed(step: BenchStep, index: u32, peer: Endpoint, code: Option<ErrorCode>, error: String) {
    report(Report::Failed {
        step,
        index,
        peer: peer.0,
        code: code.map_or(0, |c| c as u16),
        error,
    });
}

/// Runs the benchmark from `ep` against `peer` with the knobs of `bench`.
pub async fn run(
    ipc: IpcRef,
    ep: Endpoint,
    peer: Endpoint,
    bench: BenchConfig,
) -> Result<(), &'static str> {
    hops::client();
    if sendrecs(&ipc, ep, peer, bench.sendrecs).await
        && notifies(&ipc, ep, peer, bench.notifies)
        && (bench.vcopy == 0
            || (vcopy(&ipc, ep, peer, bench.vcopy as u64).await
                && loaded(&ipc, ep, peer, bench.sendrecs, bench.vcopy as u64).await))
    {
        timer_wake().await;
    }
    Ok(())
}

/// The `q`th percentile of sorted `v` (0 when empty).
fn pct(v: &[u64], q: usize) -> u64 {
    v.get((v.len() * q / 100).min(v.len().saturating_sub(1)))
        .copied()
        .unwrap_or(0)
}

/// The median of `v` (sorted here), converted from TSC ticks to ns.
fn median_ns(v: &mut [u64]) -> u64 {
    v.sort_unstable();
    time::ticks_to_ns(pct(v, 50))
}

async fn sendrecs(ipc: &IpcRef, ep: Endpoint, peer: Endpoint, n: u32) -> bool {
    let mut lat = Vec::with_capacity(n as usize);
    let mut split = Split::with_capacity(n as usize);
    let start = time::rdtsc();
    let mut msg = Message::new(1);
    for i in 0..n {
        msg.set_u32(0, i);
        let t0 = time::rdtsc();
        hops::arm();
        match ipc::sendrec(ipc, ep, peer, msg, Some(SENDREC_TIMEOUT)).await {
            Ok(r) if r.u32_at(0) == Some(i) => {
                let t1 = time::rdtsc();
                lat.push(t1 - t0);
                split.add(t0, t1, hops::take());
            }
            Ok(_) => {
                println!("dvs: bench FAILED sendrec {i}: reply payload differs");
                failed(
                    BenchStep::Sendrec,
                    i,
                    peer,
                    None,
                    "reply payload differs".into(),
                );
                return false;
            }
            Err(e) => {
                println!("dvs: bench FAILED sendrec {i} to {}: {e:?}", peer.0);
                failed(BenchStep::Sendrec, i, peer, Some(e), format!("{e:?}"));
                return false;
            }
        }
    }
    let total_ns = time::ticks_to_ns(time::rdtsc() - start).max(1);
    lat.sort_unstable();
    let (median_ns, p99_ns) = (
        time::ticks_to_ns(pct(&lat, 50)),
        time::ticks_to_ns(pct(&lat, 99)),
    );
    let ops_per_s = n as u64 * 1_000_000_000 / total_ns;
    println!(
        "dvs: bench sendrec n={n} median_ns={median_ns} p99_ns={p99_ns} ops_per_s={ops_per_s}"
    );
    report(Report::Sendrecs {
        n,
        median_ns,
        p99_ns,
        ops_per_s,
    });
    let h = split.report(n);
    println!("dvs: bench hops {h:?}");
    report(h);
    true
}

/// The per-call pieces of the sendrec phase, in TSC ticks.
struct Split {
    issue_to_tx: Vec<u64>,
    tx_to_rx: Vec<u64>,
    rx_to_woken: Vec<u64>,
    wake_to_rx: Vec<u64>,
    halted: u32,
}

impl Split {
    fn with_capacity(n: usize) -> Split {
        Split {
            issue_to_tx: Vec::with_capacity(n),
            tx_to_rx: Vec::with_capacity(n),
            rx_to_woken: Vec::with_capacity(n),
            wake_to_rx: Vec::new(),
            halted: 0,
        }
    }

    /// One call issued at `t0` and finished at `t1`, with the kernel's stamps `s`.
    fn add(&mut self, t0: u64, t1: u64, s: hops::Stamps) {
        // A stamp the kernel did not set (0) or one out of order (a call that finished inside
        // the guest) is left out rather than counted as 0.
        if s.tx >= t0 && s.rx >= s.tx && t1 >= s.rx && s.tx > 0 {
            self.issue_to_tx.push(s.tx - t0);
            self.tx_to_rx.push(s.rx - s.tx);
            self.rx_to_woken.push(t1 - s.rx);
        }
        if s.halts > 0 {
            self.halted += 1;
            if s.woke > 0 && s.rx >= s.woke {
                self.wake_to_rx.push(s.rx - s.woke);
            }
        }
    }

    fn report(mut self, n: u32) -> Report {
        Report::Hops {
            n: self.issue_to_tx.len() as u32,
            issue_to_tx_ns: median_ns(&mut self.issue_to_tx),
            tx_to_rx_ns: median_ns(&mut self.tx_to_rx),
            rx_to_woken_ns: median_ns(&mut self.rx_to_woken),
            halted_permille: (self.halted as u64 * 1000 / (n as u64).max(1)) as u32,
            wake_to_rx_ns: median_ns(&mut self.wake_to_rx),
        }
    }
}

/// Sends `n` notifications back to back (0: none, no report). Those the peer has not received
/// yet coalesce, so it counts between 1 and `n`.
fn notifies(ipc: &IpcRef, ep: Endpoint, peer: Endpoint, n: u32) -> bool {
    if n == 0 {
        return true;
    }
    for i in 0..n {
        if let Err(e) = ipc::notify(ipc, ep, peer) {
            println!("dvs: bench FAILED notify {i} to {}: {e:?}", peer.0);
            failed(BenchStep::Notify, i, peer, Some(e), format!("{e:?}"));
            return false;
        }
    }
    println!("dvs: bench notify sent={n}");
    report(Report::Notifies { sent: n });
    true
}

async fn vcopy(ipc: &IpcRef, ep: Endpoint, peer: Endpoint, len: u64) -> bool {
    let (push, pull) = (
        VcopyRequest {
            src: ep,
            src_offset: 0,
            dst: peer,
            dst_offset: 0,
            len,
        },
        VcopyRequest {
            src: peer,
            src_offset: 0,
            dst: ep,
            dst_offset: 0,
            len,
        },
    );
    let t0 = time::rdtsc();
    let pushed = ipc::vcopy(ipc, ep, push, Some(VCOPY_TIMEOUT)).await;
    let t1 = time::rdtsc();
    let pulled = ipc::vcopy(ipc, ep, pull, Some(VCOPY_TIMEOUT)).await;
    let t2 = time::rdtsc();
    let failure = match (&pushed, &pulled) {
        (Err(e), _) => Some((0, *e)),
        (_, Err(e)) => Some((1, *e)),
        _ => None,
    };
    if let Some((index, e)) = failure {
        println!("dvs: bench FAILED vcopy {len} bytes: push {pushed:?} pull {pulled:?}");
        failed(BenchStep::Vcopy, index, peer, Some(e), format!("{e:?}"));
        return false;
    }
    let (a, b) = (
        time::ticks_to_ns(t1 - t0).max(1),
        time::ticks_to_ns(t2 - t1).max(1),
    );
    println!(
        "dvs: bench vcopy bytes={len} push_us={} pull_us={} push_mb_s={} pull_mb_s={}",
        a / 1000,
        b / 1000,
        len * 1000 / a,
        len * 1000 / b
    );
    report(Report::Vcopy {
        bytes: len,
        push_us: a / 1000,
        pull_us: b / 1000,
    });
    true
}

/// An endpoint of this instance that nothing else uses: bound, neither `ep` nor `peer`, no
/// vcopy buffer (echo servers have one) and no call in progress.
fn spare_endpoint(ipc: &IpcRef, ep: Endpoint, peer: Endpoint) -> Option<Endpoint> {
    let i = ipc.borrow();
    let e = &i.engine;
    let found = e
        .endpoints()
        .find(|&x| x != ep && x != peer && e.buffer(x).is_none() && !e.is_blocked(x));
    found
}

/// A failed step of the loaded phase: step, index, IPC error, words.
type Failure = (BenchStep, u32, Option<ErrorCode>, String);

/// Polls `a` and `b` until both are done.
async fn join<A: Future<Output = ()>, B: Future<Output = ()>>(a: A, b: B) {
    let (mut a, mut b) = (Some(Box::pin(a)), Some(Box::pin(b)));
    poll_fn(|cx| {
        if a.as_mut().is_some_and(|p| p.as_mut().poll(cx).is_ready()) {
            a = None;
        }
        if b.as_mut().is_some_and(|p| p.as_mut().poll(cx).is_ready()) {
            b = None;
        }
        if a.is_none() && b.is_none() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await
}

/// Sendrecs from a spare endpoint (none: the phase is skipped) to `peer` while `ep` pushes `len`
/// bytes to it by vcopy, the vcopy repeated until [`LOADED_MIN_CALLS`] calls were made during
/// them (at most [`LOADED_MAX_COPIES`] times, at most `n` calls). False on a failure.
async fn loaded(ipc: &IpcRef, ep: Endpoint, peer: Endpoint, n: u32, len: u64) -> bool {
    let Some(side) = spare_endpoint(ipc, ep, peer) else {
        println!("dvs: bench loaded sendrec skipped: no spare endpoint");
        return true;
    };
    let copying = Cell::new(true);
    let calls = Cell::new(0usize);
    let failure: Cell<Option<Failure>> = Cell::new(None);
    let (copied, copy_ticks) = (Cell::new(0u64), Cell::new(0u64));
    let copier = async {
        for k in 0..LOADED_MAX_COPIES {
            let req = VcopyRequest {
                src: ep,
                src_offset: 0,
                dst: peer,
                dst_offset: 0,
                len,
            };
            let t0 = time::rdtsc();
            let r = ipc::vcopy(ipc, ep, req, Some(VCOPY_TIMEOUT)).await;
            copy_ticks.set(copy_ticks.get() + time::rdtsc() - t0);
            match r {
                Ok(_) => copied.set(copied.get() + len),
                Err(e) => {
                    failure.set(Some((BenchStep::Vcopy, k, Some(e), format!("{e:?}"))));
                    break;
                }
            }
            if calls.get() >= LOADED_MIN_CALLS {
                break;
            }
        }
        copying.set(false);
    };
    let mut lat = Vec::with_capacity(LOADED_MIN_CALLS * 2);
    let caller = async {
        let mut msg = Message::new(2);
        let mut i = 0u32;
        while copying.get() && i < n {
            msg.set_u32(0, i);
            let t0 = time::rdtsc();
            match ipc::sendrec(ipc, side, peer, msg, Some(SENDREC_TIMEOUT)).await {
                // Only calls that ended while the copy still ran count as loaded.
                Ok(r) if r.u32_at(0) == Some(i) => {
                    if copying.get() {
                        lat.push(time::rdtsc() - t0);
                        calls.set(lat.len());
                    }
                }
                Ok(_) => {
                    failure.set(Some((
                        BenchStep::Sendrec,
                        i,
                        None,
                        "reply payload differs".into(),
                    )));
                    break;
                }
                Err(e) => {
                    failure.set(Some((BenchStep::Sendrec, i, Some(e), format!("{e:?}"))));
                    break;
                }
            }
            i += 1;
        }
    };
    join(copier, caller).await;
    if let Some((step, index, code, error)) = failure.take() {
        println!("dvs: bench FAILED loaded {step:?} {index}: {error}");
        failed(step, index, peer, code, error);
        return false;
    }
    lat.sort_unstable();
    let (median_ns, p99_ns) = (
        time::ticks_to_ns(pct(&lat, 50)),
        time::ticks_to_ns(pct(&lat, 99)),
    );
    let vcopy_us = time::ticks_to_ns(copy_ticks.get()) / 1000;
    println!(
        "dvs: bench loaded sendrec n={} median_ns={median_ns} p99_ns={p99_ns} vcopy_bytes={} vcopy_us={vcopy_us}",
        lat.len(),
        copied.get()
    );
    report(Report::LoadedSendrecs {
        n: lat.len() as u32,
        median_ns,
        p99_ns,
        vcopy_bytes: copied.get(),
        vcopy_us,
    });
    true
}

/// The timer wake-up floor: [`TIMER_SLEEPS`] sleeps of [`TIMER_SLEEP_US`], each measured from
/// the time asked for to the task running again.
async fn timer_wake() {
    let mut late = Vec::with_capacity(TIMER_SLEEPS);
    for _ in 0..TIMER_SLEEPS {
        let target_us = time::now_us() + TIMER_SLEEP_US;
        executor::sleep_until(target_us).await;
        late.push(time::now_ns().saturating_sub(target_us * 1000));
    }
    late.sort_unstable();
    let (median_ns, p99_ns) = (pct(&late, 50), pct(&late, 99));
    println!("dvs: bench timer wake n={TIMER_SLEEPS} median_ns={median_ns} p99_ns={p99_ns}");
    report(Report::TimerWake {
        n: TIMER_SLEEPS as u32,
        median_ns,
        p99_ns,
    });
}

/// Stamps the kernel's loop sets at the edges of the guest (TSC ticks, one CPU, no locks): an
/// M3-IPC frame seen ([`rx`]), frames handed to the NIC with their notify ([`tx`]), around the
/// `hlt` ([`halted`], [`woke`]); and, on the idle path ([`idle`]), the server side's report.
/// The bench client arms them per call ([`arm`], [`take`]); an instance that does not run the
/// client samples request → answer instead and reports it as `Report::ServerHops`.
pub mod hops {
    use super::{pct, report, time};
    use alloc::vec::Vec;
    use core::cell::Cell;
    use dvs_vos_abi::Report;

    /// Samples a server keeps (the latest ones; older ones are overwritten).
    const SAMPLES: usize = 4096;
    /// Least time between two server reports.
    const REPORT_EVERY_US: u64 = 500_000;
    /// Offset of the M3-IPC kind byte in an Ethernet frame (14-byte header, then byte 3).
    const KIND_AT: usize = 17;
    /// Wire kinds (m3ipc_core::wire::Kind) the stamps look at.
    const SENDREC: u8 = 2;
    const REPLY: u8 = 4;

    /// What the kernel stamped during one client call.
    #[derive(Clone, Copy, Debug, Default)]
    pub struct Stamps {
        /// First hand-over to the NIC after the call was issued.
        pub tx: u64,
        /// Last Reply frame seen.
        pub rx: u64,
        /// Halts during the call.
        pub halts: u32,
        /// Last wake-up from a halt.
        pub woke: u64,
    }

    struct State {
        client: Cell<bool>,
        call: Cell<Stamps>,
        woke_at: Cell<u64>,
        halted_since_tx: Cell<bool>,
        /// Server: the first request frame since the last hand-over (0: none), and whether the
        /// guest had halted before it, with the wake-up stamp.
        req_at: Cell<u64>,
        req_halted: Cell<bool>,
        req_woke: Cell<u64>,
        rx_to_tx: [Cell<u32>; SAMPLES],
        wake_to_rx: [Cell<u32>; SAMPLES],
        count: Cell<u64>,
        halted: Cell<u64>,
        woken: Cell<u64>,
        reported: Cell<u64>,
        reported_at_us: Cell<u64>,
    }

    // SAFETY: the kernel has one CPU and no preemption (the interrupt entry runs no Rust); these
    // cells are never touched from two threads.
    unsafe impl Sync for State {}

    static S: State = State {
        client: Cell::new(false),
        call: Cell::new(Stamps {
            tx: 0,
            rx: 0,
            halts: 0,
            woke: 0,
        }),
        woke_at: Cell::new(0),
        halted_since_tx: Cell::new(false),
        req_at: Cell::new(0),
        req_halted: Cell::new(false),
        req_woke: Cell::new(0),
        rx_to_tx: [const { Cell::new(0) }; SAMPLES],
        wake_to_rx: [const { Cell::new(0) }; SAMPLES],
        count: Cell::new(0),
        halted: Cell::new(0),
        woken: Cell::new(0),
        reported: Cell::new(0),
        reported_at_us: Cell::new(0),
    };

    /// This instance runs the bench client: stamps are per call, no server report.
    pub fn client() {
        S.client.set(true);
    }

    /// A client call is about to be issued: clears the call's stamps.
    pub fn arm() {
        S.call.set(Stamps::default());
    }

    /// The stamps of the call since [`arm`].
    pub fn take() -> Stamps {
        S.call.get()
    }

    /// The guest saw Ethernet frame `f` on the fabric NIC.
    #[inline]
    pub fn rx(f: &[u8]) {
        let kind = f.get(KIND_AT).copied().unwrap_or(0);
        if S.client.get() {
            if kind == REPLY {
                let mut c = S.call.get();
                c.rx = time::rdtsc();
                S.call.set(c);
            }
        } else if kind == SENDREC && S.req_at.get() == 0 {
            S.req_at.set(time::rdtsc());
            S.req_halted.set(S.halted_since_tx.get());
            S.req_woke.set(S.woke_at.get());
        }
    }

    /// The loop handed frames to the fabric NIC (the notify, if one was due, is done).
    #[inline]
    pub fn tx() {
        let now = time::rdtsc();
        S.halted_since_tx.set(false);
        if S.client.get() {
            let mut c = S.call.get();
            if c.tx == 0 {
                c.tx = now;
                S.call.set(c);
            }
            return;
        }
        let at = S.req_at.replace(0);
        if at == 0 {
            return;
        }
        let n = S.count.get();
        let slot = (n % SAMPLES as u64) as usize;
        S.rx_to_tx[slot].set(clamp(now - at));
        S.count.set(n + 1);
        if S.req_halted.get() {
            S.halted.set(S.halted.get() + 1);
            let w = S.req_woke.get();
            if w > 0 && at >= w {
                let k = S.woken.get();
                S.wake_to_rx[(k % SAMPLES as u64) as usize].set(clamp(at - w));
                S.woken.set(k + 1);
            }
        }
    }

    /// The loop is about to halt.
    #[inline]
    pub fn halted() {
        S.halted_since_tx.set(true);
        let mut c = S.call.get();
        c.halts += 1;
        S.call.set(c);
    }

    /// The loop woke up from a halt.
    #[inline]
    pub fn woke() {
        let now = time::rdtsc();
        S.woke_at.set(now);
        let mut c = S.call.get();
        c.woke = now;
        S.call.set(c);
    }

    /// The loop is idle at `now_us`: a server with new samples reports them (the latest
    /// [`SAMPLES`]), at most once per [`REPORT_EVERY_US`].
    pub fn idle(now_us: u64) {
        let n = S.count.get();
        if S.client.get()
            || n == S.reported.get()
            || now_us < S.reported_at_us.get() + REPORT_EVERY_US
        {
            return;
        }
        S.reported.set(n);
        S.reported_at_us.set(now_us);
        let a = sorted(&S.rx_to_tx, n);
        let w = sorted(&S.wake_to_rx, S.woken.get());
        report(Report::ServerHops {
            n,
            rx_to_tx_ns: time::ticks_to_ns(pct(&a, 50)),
            rx_to_tx_p99_ns: time::ticks_to_ns(pct(&a, 99)),
            halted_permille: (S.halted.get() * 1000 / n.max(1)) as u32,
            wake_to_rx_ns: time::ticks_to_ns(pct(&w, 50)),
        });
    }

    fn clamp(ticks: u64) -> u32 {
        ticks.min(u32::MAX as u64) as u32
    }

    /// The first `min(n, SAMPLES)` samples of `v`, sorted.
    fn sorted(v: &[Cell<u32>; SAMPLES], n: u64) -> Vec<u64> {
        let len = (n as usize).min(SAMPLES);
        let mut out: Vec<u64> = v[..len].iter().map(|c| c.get() as u64).collect();
        out.sort_unstable();
        out
    }
}
