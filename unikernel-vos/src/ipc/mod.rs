//! M3-IPC in the guest: the m3ipc-core engine bound to the fabric NIC (frames of EtherType
//! 0x88B5, broadcast destination MAC), and the task-facing API (`send`, `receive`, `sendrec`,
//! `reply`, `notify`, `vcopy`) as futures.

pub mod local_bench;

use crate::config::{self, BootConfig};
use crate::drivers::net::Nic;
use crate::executor;
use alloc::format;
use alloc::rc::Rc;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::cell::RefCell;
use core::future::poll_fn;
use core::task::Poll;
use core::time::Duration;
use m3ipc_core::engine::{Completion, Engine, EngineConfig, Event};
use m3ipc_core::wire::ethernet::{EthernetHeader, BROADCAST, ETH_HEADER_LEN};
use m3ipc_core::wire::{self, ETHERTYPE_M3IPC};
use m3ipc_core::{DcId, Endpoint, ErrorCode, Instant, Message, VcopyRequest};

/// The IPC host state shared by the main loop and the tasks.
pub struct Ipc {
    /// The engine.
    pub engine: Engine,
    /// Results of finished calls, waiting for their task.
    /// (A few endpoints: a vector, which unlike a map does not allocate per call.)
    done: Vec<(Endpoint, Result<Completion, ErrorCode>)>,
    /// Ethernet frames refused before the engine (not M3-IPC, too short).
    pub bad_ethernet: u64,
    /// Notifications that could not be delivered.
    pub notify_failed: u64,
    /// Frames lost because the NIC had no free transmit buffer (the engine retransmits).
    pub tx_dropped: u64,
    mac: [u8; 6],
    /// Recent answer times of calls to remote endpoints, µs (a ring of `ANSWER_SAMPLES`).
    answers: [u32; ANSWER_SAMPLES],
    answers_at: usize,
    answers_n: usize,
    /// Most µs the loop polls while an answer is due (`call_spin_us`), and the bound it uses
    /// now (twice the median answer time, when that fits under the cap; else 0).
    call_spin_cap_us: u64,
    call_spin_us: u64,
}

/// Answer times the adaptive poll keeps.
const ANSWER_SAMPLES: usize = 16;

/// Shared handle to the IPC state.
pub type IpcRef = Rc<RefCell<Ipc>>;

/// The current time on the engine's clock.
pub fn now() -> Instant {
    Instant::from_micros(crate::arch::time::now_us())
}

impl Ipc {
    /// The engine of this instance: DC and incarnation from `cfg`, every endpoint bound, and a
    /// vcopy buffer for each echo endpoint (`echo_buffer` bytes) and for the bench client (the
    /// larger of that and the bench's vcopy size). Frames go out from `mac`. The error names
    /// the endpoint that could not be set up.
    pub fn start(cfg: &BootConfig, mac: [u8; 6]) -> Result<Ipc, String> {
        let mut ecfg = EngineConfig::new(DcId(cfg.dc), config::incarnation(cfg));
        ecfg.vcopy_chunk = wire::chunk_for_mtu(cfg.mtu as usize) as u32;
        let mut engine = Engine::new(ecfg);
        for &ep in &cfg.endpoints {
            engine
                .bind(Endpoint(ep))
                .map_err(|e| format!("bind endpoint {ep}: {e:?}"))?;
        }
        let roles = config::roles(cfg);
        let client = roles
            .client
            .map(|c| (c, cfg.bench.vcopy.max(cfg.echo_buffer)));
        let echo = roles.echo.iter().map(|&ep| (ep, cfg.echo_buffer));
        for (ep, size) in echo.chain(client) {
            engine
                .set_buffer(Endpoint(ep), vec![0u8; size as usize])
                .map_err(|e| format!("vcopy buffer of {size} bytes for endpoint {ep}: {e:?}"))?;
        }
        let mut ipc = Ipc::new(engine, mac);
        ipc.call_spin_cap_us = u64::from(cfg.call_spin_us);
        ipc.call_spin_us = ipc.call_spin_cap_us;
        Ok(ipc)
    }

    /// Notes that a call to a remote endpoint took `us` to be answered, and updates the poll
    /// bound: twice the median of the recent answer times, if that is within the cap (an
    /// answer usually further off is not worth polling for: the loop halts after `spin_us`).
    pub fn record_answer(&mut self, us: u64) {
        self.answers[self.answers_at] = us.min(u64::from(u32::MAX)) as u32;
        self.answers_at = (self.answers_at + 1) % ANSWER_SAMPLES;
        self.answers_n = (self.answers_n + 1).min(ANSWER_SAMPLES);
        let mut recent = self.answers;
        let recent = &mut recent[..self.answers_n];
        recent.sort_unstable();
        let bound = 2 * u64::from(recent[recent.len() / 2]);
        self.call_spin_us = if bound <= self.call_spin_cap_us {
            bound
        } else {
            0
        };
    }

    /// How long the loop should poll after its last work before halting, µs: `spin_us`, or
    /// longer while the engine awaits an answer from another instance and its last send was
    /// `since_tx_us` ago, within the bound (see `record_answer`). A wake-up for a timer or a
    /// retransmission long after the send does not poll: idle instances stay halted.
    pub fn spin_bound_us(&self, spin_us: u64, since_tx_us: u64) -> u64 {
        if self.call_spin_us > spin_us
            && since_tx_us < self.call_spin_us
            && self.engine.awaiting_remote()
        {
            self.call_spin_us
        } else {
            spin_us
        }
    }

    /// An IPC host around `engine`, sending from MAC `mac`.
    pub fn new(engine: Engine, mac: [u8; 6]) -> Ipc {
        Ipc {
            engine,
            done: Vec::with_capacity(8),
            bad_ethernet: 0,
            notify_failed: 0,
            tx_dropped: 0,
            mac,
            answers: [0; ANSWER_SAMPLES],
            answers_at: 0,
            answers_n: 0,
            call_spin_cap_us: 0,
            call_spin_us: 0,
        }
    }

    /// Feeds one received Ethernet frame (EtherType 0x88B5, any destination MAC) to the engine.
    pub fn on_frame(&mut self, now: Instant, frame: &[u8]) {
        match EthernetHeader::m3ipc_payload(frame) {
            Ok((_, payload)) => self.engine.handle_frame(now, payload),
            Err(_) => self.bad_ethernet += 1,
        }
    }

    /// Runs due timers and collects finished calls for their tasks; true if anything happened.
    pub fn poll(&mut self, now: Instant) -> bool {
        let mut work = false;
        if self.engine.poll_timeout().is_some_and(|t| t <= now) {
            self.engine.handle_timeout(now);
            work = true;
        }
        work | self.collect_events()
    }

    /// Moves finished calls from the engine to their tasks' slots; true if there were any.
    pub fn collect_events(&mut self) -> bool {
        let mut any = false;
        while let Some(ev) = self.engine.poll_event() {
            any = true;
            match ev {
                Event::Done { ep, result } => match self.done.iter_mut().find(|(e, _)| *e == ep) {
                    Some(slot) => slot.1 = result,
                    None => self.done.push((ep, result)),
                },
                Event::NotifyFailed { .. } => self.notify_failed += 1,
            }
        }
        any
    }

    /// Sends the frames the engine has queued on `nic`, straight into the NIC's buffers (once
    /// per loop turn, after the tasks ran), but only as many as the NIC can take now: the
    /// rest stay queued in the engine rather than being lost. True if any went out.
    pub fn flush(&mut self, now: Instant, nic: Option<&mut Nic>) -> bool {
        if !self.engine.has_transmit() {
            return false;
        }
        let Some(nic) = nic else {
            // No fabric NIC: remote frames have nowhere to go.
            let mut scratch = vec![0u8; wire::MAX_JUMBO_FRAME];
            while self.engine.poll_transmit(now, &mut scratch).is_some() {}
            return true;
        };
        let hdr = EthernetHeader {
            dst: BROADCAST,
            src: self.mac,
            ethertype: ETHERTYPE_M3IPC,
        };
        let room = nic.tx_room().saturating_sub(1);
        let mut sent = 0;
        while sent < room && self.engine.has_transmit() {
            let engine = &mut self.engine;
            // A small buffer for control frames, a large one (jumbo MTU) for vcopy data.
            let max = ETH_HEADER_LEN + engine.next_transmit_max_len();
            let ok = nic.send_with(max, |buf| {
                match engine.poll_transmit(now, &mut buf[ETH_HEADER_LEN..]) {
                    Some(n) if hdr.emit(buf).is_ok() => ETH_HEADER_LEN + n,
                    _ => 0,
                }
            });
            if !ok {
                self.tx_dropped += 1;
                break;
            }
            sent += 1;
        }
        // Frames still waiting for a buffer: a finished transmission must wake a halted loop.
        nic.want_tx_interrupts(self.engine.has_transmit());
        sent > 0
    }

    /// When the engine next needs `poll`, in microseconds.
    pub fn next_deadline_us(&self) -> Option<u64> {
        self.engine.poll_timeout().map(|t| t.as_micros())
    }
}

/// Waits for the result of `ep`'s blocking call.
async fn wait(ipc: &IpcRef, ep: Endpoint) -> Result<Completion, ErrorCode> {
    poll_fn(|_| {
        let mut i = ipc.borrow_mut();
        // Calls between local endpoints finish inside the engine: pick them up here, so a
        // local sendrec needs no turn of the main loop.
        i.collect_events();
        match i
            .done
            .iter()
            .position(|(e, _)| *e == ep)
            .map(|at| i.done.swap_remove(at).1)
        {
            Some(r) => {
                executor::progress();
                Poll::Ready(r)
            }
            None => Poll::Pending,
        }
    })
    .await
}

/// Sends `msg` from `src` to `dst` and waits for the reply.
pub async fn sendrec(
    ipc: &IpcRef,
    src: Endpoint,
    dst: Endpoint,
    msg: Message,
    timeout: Option<Duration>,
) -> Result<Message, ErrorCode> {
    let t0 = crate::arch::time::now_us();
    let remote = {
        let mut i = ipc.borrow_mut();
        i.engine.sendrec(now(), src, dst, msg, timeout)?;
        !i.engine.is_bound(dst)
    };
    executor::progress();
    let r = wait(ipc, src).await;
    if remote && r.is_ok() {
        ipc.borrow_mut()
            .record_answer(crate::arch::time::now_us().saturating_sub(t0));
    }
    match r? {
        Completion::Replied(m) => Ok(m),
        _ => Err(ErrorCode::InvalidArgument),
    }
}

/// Sends `msg` from `src` to `dst`; returns when `dst` has taken it.
pub async fn send(
    ipc: &IpcRef,
    src: Endpoint,
    dst: Endpoint,
    msg: Message,
    timeout: Option<Duration>,
) -> Result<(), ErrorCode> {
    ipc.borrow_mut()
        .engine
        .send(now(), src, dst, msg, timeout)?;
    executor::progress();
    match wait(ipc, src).await? {
        Completion::Sent => Ok(()),
        _ => Err(ErrorCode::InvalidArgument),
    }
}

/// Waits for a message to `ep` from `from` (or `Endpoint::ANY`); returns it and whether its
/// sender waits for a reply.
pub async fn receive(
    ipc: &IpcRef,
    ep: Endpoint,
    from: Endpoint,
    timeout: Option<Duration>,
) -> Result<(Message, bool), ErrorCode> {
    ipc.borrow_mut().engine.receive(now(), ep, from, timeout)?;
    match wait(ipc, ep).await? {
        Completion::Received { msg, needs_reply } => Ok((msg, needs_reply)),
        _ => Err(ErrorCode::InvalidArgument),
    }
}

/// Answers `dst`, blocked in `sendrec` towards `src`; does not block.
pub fn reply(ipc: &IpcRef, src: Endpoint, dst: Endpoint, msg: Message) -> Result<(), ErrorCode> {
    executor::progress();
    ipc.borrow_mut().engine.reply(now(), src, dst, msg)
}

/// Notifies `dst` from `src`; never blocks.
pub fn notify(ipc: &IpcRef, src: Endpoint, dst: Endpoint) -> Result<(), ErrorCode> {
    executor::progress();
    ipc.borrow_mut().engine.notify(now(), src, dst)
}

/// Copies `req.len` bytes from `req.src`'s buffer at `req.src_offset` to `req.dst`'s at
/// `req.dst_offset`; `requester` is one of the two and must be local. Returns the bytes copied.
pub async fn vcopy(
    ipc: &IpcRef,
    requester: Endpoint,
    req: VcopyRequest,
    timeout: Option<Duration>,
) -> Result<u64, ErrorCode> {
    ipc.borrow_mut()
        .engine
        .vcopy(now(), requester, req, timeout)?;
    executor::progress();
    match wait(ipc, requester).await? {
        Completion::Copied { len } => Ok(len),
        _ => Err(ErrorCode::InvalidArgument),
    }
}
