//! The kernel value: the ports, the IPC engine, the task executor and the counters, and the
//! event loop that drives them.

use crate::arch::control;
use crate::arch::time::{self, Calibration};
use crate::arch::{apic, interrupts};
use crate::config::{BootConfig, Service};
use crate::drivers::blk::Disk;
use crate::executor::Executor;
use crate::ipc::{Ipc, IpcRef};
use crate::net::{Net, NetRef};
use crate::println;
use crate::services::disk::DiskStats;
use crate::services::echo::EchoStats;
use crate::services::fs::FsStats;
use crate::services::http::HttpStats;
use crate::services::ipc_bench::hops;
use alloc::format;
use alloc::rc::Rc;
use alloc::string::String;
use alloc::vec::Vec;
use core::cell::RefCell;
use core::future::Future;
use dvs_vos_abi::control::CONTROL_VERSION;
use dvs_vos_abi::{ControlRecord, Counters, Ready};

/// Longest halt (the LAPIC counter's range at ~1 GHz is 4.29 s).
const MAX_SLEEP_US: u64 = 4_000_000;

/// The counters the services keep (the engine and the NICs keep their own).
#[derive(Default)]
pub struct Stats {
    /// The echo servers'.
    pub echo: Rc<EchoStats>,
    /// The HTTP server's.
    pub http: Rc<RefCell<HttpStats>>,
    /// The disk server's.
    pub disk: Rc<DiskStats>,
    /// The file server's.
    pub fs: Rc<FsStats>,
    /// Longest gap between two busy turns of the loop, µs (a sign of the host descheduling us).
    pub loop_gap_max_us: u64,
}

/// Everything the running kernel holds.
pub struct Kernel {
    /// The NICs with their IP stacks (the first is the fabric NIC).
    pub net: NetRef,
    /// M3-IPC on the fabric NIC.
    pub ipc: IpcRef,
    /// The service tasks.
    pub exec: Executor,
    /// The services' counters.
    pub stats: Stats,
    /// The virtio-blk devices not yet given to a service (the disk server takes the first).
    pub disks: Vec<Disk>,
    /// How long the loop polls after the last work before it halts, µs.
    spin_us: u64,
    /// Least time between two counter reports, µs.
    stats_every_us: u64,
    /// Records held back until `ready`, which sends them with `Ready` in one write.
    boot_records: Vec<ControlRecord>,
}

impl Kernel {
    /// A kernel over `net` and `ipc`, with the loop's knobs from `cfg` and no task yet.
    pub fn new(cfg: &BootConfig, net: Net, ipc: Ipc) -> Kernel {
        Kernel {
            net: Rc::new(RefCell::new(net)),
            ipc: Rc::new(RefCell::new(ipc)),
            exec: Executor::default(),
            stats: Stats::default(),
            disks: Vec::new(),
            spin_us: cfg.spin_us as u64,
            stats_every_us: cfg.stats_interval_s.max(1) as u64 * 1_000_000,
            boot_records: Vec::new(),
        }
    }

    /// Spawns the task of `service` (on `endpoint`, for M3-IPC services) and announces it
    /// (`ServiceUp`, sent just before `Ready`). If the task ends with an error, `ServiceDown`
    /// says why.
    pub fn spawn<F>(&mut self, service: Service, endpoint: Option<u32>, task: F)
    where
        F: Future<Output = Result<(), &'static str>> + 'static,
    {
        self.exec.spawn(async move {
            if let Err(reason) = task.await {
                println!("dvs: service {service} stopped: {reason}");
                control::send(&ControlRecord::ServiceDown {
                    service,
                    reason: reason.into(),
                });
            }
        });
        self.boot_records
            .push(ControlRecord::ServiceUp { service, endpoint });
    }

    /// Says that the instance is up: the console line `dvs: ready ...` (for humans) and the
    /// `ServiceUp` records followed by `Ready` (for the host).
    pub fn ready(&mut self, cfg: &BootConfig, clock: &Calibration) {
        let macs = self.net.borrow().macs();
        let ready = Ready {
            version: CONTROL_VERSION,
            dc: cfg.dc,
            endpoints: cfg.endpoints.clone(),
            services: cfg.services.clone(),
            macs,
            tsc_mhz: (clock.tsc_hz / 1_000_000) as u32,
            init_us: time::now_us(),
        };
        let join = |v: Vec<String>| v.join(",");
        println!(
            "dvs: ready dc={} ep={} svc={} nics={} tsc_mhz={} init_us={}",
            ready.dc,
            join(ready.endpoints.iter().map(|e| format!("{e}")).collect()),
            join(ready.services.iter().map(|s| format!("{s}")).collect()),
            join(ready.macs.iter().map(mac).collect()),
            ready.tsc_mhz,
            ready.init_us
        );
        let mut records = core::mem::take(&mut self.boot_records);
        records.push(ControlRecord::Ready(ready));
        control::send_all(&records);
    }

    /// The counters of the engine, the NICs, the services, the clock and the loop.
    pub fn counters(&self) -> Counters {
        let net = self.net.borrow();
        let ipc = self.ipc.borrow();
        let s = ipc.engine.stats();
        let http = self.stats.http.borrow();
        let mut c = Counters {
            echo_received: self.stats.echo.received.get(),
            echo_replied: self.stats.echo.replied.get(),
            notify_received: self.stats.echo.notified.get(),
            frames_in: s.frames_in,
            frames_out: s.frames_out,
            bad_frames: s.bad_frames,
            wrong_dc: s.wrong_dc,
            spoofed: s.spoofed,
            not_here: s.not_here,
            stale: s.stale,
            duplicates: s.duplicates,
            retransmits: s.retransmits,
            bad_ethernet: ipc.bad_ethernet,
            http_requests: http.requests,
            http_bad: http.bad,
            http_timeouts: http.timeouts,
            http_evicted: http.evicted,
            http_busy: http.busy,
            tsc_khz: time::tsc_hz() / 1000,
            clock_back: time::backwards_steps(),
            loop_gap_max_us: self.stats.loop_gap_max_us,
            disk_reads: self.stats.disk.reads.get(),
            disk_writes: self.stats.disk.writes.get(),
            disk_flushes: self.stats.disk.flushes.get(),
            disk_errors: self.stats.disk.errors.get(),
            fs_requests: self.stats.fs.requests.get(),
            fs_errors: self.stats.fs.errors.get(),
            ..Counters::default()
        };
        for p in &net.ports {
            let n = p.nic.borrow();
            c.nic_rx += n.stats.rx;
            c.nic_tx += n.stats.tx;
            c.nic_rx_errors += n.stats.rx_errors;
            c.nic_tx_full += n.stats.tx_full;
            c.nic_kicks += n.stats.kicks;
        }
        c
    }

    /// The event loop: poll devices, IPC, smoltcp and tasks while there is work; halt otherwise.
    /// When idle, changed counters are reported (console line `dvs: stats ...` and a `Counters`
    /// record), at most once per stats interval.
    pub fn run(mut self) -> ! {
        let mut last_work = time::now_us();
        // When this instance last sent frames: an answer is due soon only after a send.
        let mut last_tx = 0u64;
        let mut last_stats: Option<Counters> = None;
        let mut last_stats_at = 0u64;
        let mut prev_turn = time::now_us();
        loop {
            let now_us = time::now_us();
            let gap = now_us - prev_turn;
            if gap > self.stats.loop_gap_max_us {
                self.stats.loop_gap_max_us = gap;
            }
            prev_turn = now_us;
            let now = m3ipc_core::Instant::from_micros(now_us);
            let mut work = false;
            {
                let mut net = self.net.borrow_mut();
                let mut ipc = self.ipc.borrow_mut();
                for (i, port) in net.ports.iter_mut().enumerate() {
                    if i == 0 {
                        work |= port.pump(&mut |f| {
                            hops::rx(f);
                            ipc.on_frame(now, f)
                        });
                    } else {
                        work |= port.pump(&mut |_| ipc.bad_ethernet += 1);
                    }
                }
                work |= ipc.poll(now);
            }
            let (progress, wake_at) = self.exec.run_once();
            work |= progress;
            {
                let mut net = self.net.borrow_mut();
                for port in net.ports.iter_mut() {
                    work |= port.poll_ip(now_us, progress);
                }
                let mut ipc = self.ipc.borrow_mut();
                work |= ipc.poll(now);
                let flushed = ipc.flush(now, net.ports.first_mut().map(|p| p.nic.get_mut()));
                work |= flushed;
                // One doorbell per queue per turn, after everything this turn sent.
                for port in net.ports.iter_mut() {
                    port.nic.get_mut().settle();
                }
                if flushed {
                    hops::tx();
                    last_tx = now_us;
                }
            }
            if work {
                last_work = now_us;
                continue;
            }
            // Poll a while before halting: `spin_us` after the last work, longer while an
            // answer from another instance is due soon (halting then costs a wake-up of
            // 140-270 µs on this nested KVM, and the answer would wait for it).
            let spin = self
                .ipc
                .borrow()
                .spin_bound_us(self.spin_us, now_us.saturating_sub(last_tx));
            if now_us.saturating_sub(last_work) < spin {
                core::hint::spin_loop();
                continue;
            }
            // Idle: refine the clock rate once, report changed counters (at most once per
            // stats interval), then halt.
            let mut deadline = wake_at.min(now_us + MAX_SLEEP_US);
            if let Some(t) = time::refine_due_us() {
                if t <= now_us {
                    time::refine();
                    continue;
                }
                deadline = deadline.min(t);
            }
            hops::idle(now_us);
            let counters = self.counters();
            if last_stats.as_ref() != Some(&counters) {
                if now_us >= last_stats_at + self.stats_every_us {
                    // On the control channel only: as a console line it was ~500 serial bytes, each an
                    // exit (tens of ms here), every second that traffic flowed. `dvs ps -o wide`, the
                    // metrics and the instance view show these counters.
                    control::send(&ControlRecord::Counters(counters.clone()));
                    last_stats = Some(counters);
                    last_stats_at = now_us;
                    // The report itself (a serial byte is an exit: tens of ms here) is not a
                    // stall of work; counted as one, it would change the counters again and
                    // print another report an interval later.
                    prev_turn = time::now_us();
                } else {
                    deadline = deadline.min(last_stats_at + self.stats_every_us);
                }
            }
            if let Some(t) = self.ipc.borrow().next_deadline_us() {
                deadline = deadline.min(t);
            }
            let mut net = self.net.borrow_mut();
            for p in net.ports.iter_mut() {
                if let Some(t) = p.poll_at_us(now_us) {
                    deadline = deadline.min(t);
                }
            }
            // Arm device interrupts, then re-check: a frame that landed meanwhile must not wait.
            let mut pending = false;
            for p in net.ports.iter_mut() {
                let nic = p.nic.get_mut();
                nic.enable_interrupts();
                nic.ack_interrupt();
                pending |= nic.rx_pending();
            }
            let now_us = time::now_us();
            if !pending && deadline > now_us {
                apic::arm_timer_ns((deadline - now_us) * 1000);
                hops::halted();
                interrupts::halt();
                hops::woke();
                prev_turn = time::now_us();
            }
            for p in net.ports.iter_mut() {
                p.nic.get_mut().disable_interrupts();
            }
        }
    }
}

fn mac(m: &[u8; 6]) -> String {
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        m[0], m[1], m[2], m[3], m[4], m[5]
    )
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    println!("dvs: PANIC {info}");
    control::fatal(format_args!("panic: {info}"));
    crate::arch::exit(crate::arch::ExitCode::Fault)
}
