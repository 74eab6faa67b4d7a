//! dvs VOS: a unikernel booted by QEMU `-kernel` (PVH) that runs its services in ring 3.
//!
//! Layout (Hermit-like): `arch` (the machine), `drivers` (virtio), `net` (smoltcp and the
//! Ethernet demultiplexer), `ipc` (M3-IPC), `services`, plus the command line (`config`) and
//! the cooperative `executor`. This file brings them up and runs the event loop.
#![no_std]
#![no_main]

extern crate alloc;

pub mod arch;
pub mod config;
pub mod drivers;
pub mod executor;
pub mod ipc;
pub mod net;
pub mod services;

use alloc::format;
use alloc::rc::Rc;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use arch::{apic, time, ExitCode};
use config::{Config, Service};
use core::cell::RefCell;
use drivers::net::Nic;
use drivers::transport::VosTransport;
use linked_list_allocator::LockedHeap;
use m3ipc_core::engine::{Engine, EngineConfig};
use m3ipc_core::{DcId, Endpoint};
use net::{Net, Port};
use virtio_drivers::transport::{DeviceType, Transport};

#[global_allocator]
static HEAP: LockedHeap = LockedHeap::empty();

/// Longest gap between two busy turns of the loop (a sign of the host descheduling us).
static LOOP_GAP_MAX: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// Longest halt (the LAPIC counter's range at ~1 GHz is 4.29 s).
const MAX_SLEEP_US: u64 = 4_000_000;

fn fatal(what: &str) -> ! {
    println!("dvs: FATAL {what}");
    arch::exit(ExitCode::Fault)
}

/// Ring-3 entry, reached from boot.rs by `iretq` with the PVH start-info address.
#[no_mangle]
extern "C" fn vos_entry(start_info: u32) -> ! {
    time::set_origin();
    arch::interrupts::init();
    let boot = arch::pvh::parse(start_info).unwrap_or_else(|e| fatal(e));
    // SAFETY: [ram_start, ram_end) is RAM after the image that nothing else uses.
    unsafe {
        HEAP.lock().init(
            boot.ram_start as usize as *mut u8,
            (boot.ram_end - boot.ram_start) as usize,
        )
    };
    let cfg = match Config::parse(boot.cmdline) {
        Ok(c) => c,
        Err(e) => {
            println!("dvs: FATAL bad command line: {e}");
            println!("dvs: command line was: {}", boot.cmdline);
            arch::exit(ExitCode::BadConfig);
        }
    };
    apic::init();
    // Calibrate over the device set-up (at least 2 ms): the PIT counts while virtio
    // initialises, so the measurement costs no extra boot time.
    let calibration = time::Calibrator::start();
    let nics = discover(&cfg);
    let cal = calibration.finish(2000).unwrap_or_else(|e| fatal(e));
    let seed = time::rdtsc();
    let mut ports = Vec::new();
    for (i, nic) in nics.into_iter().enumerate() {
        let (ip, gw) = match i {
            0 => (
                cfg.ip.or(cfg.pub_ip),
                if cfg.ip.is_some() { cfg.gw } else { cfg.pub_gw },
            ),
            1 if cfg.ip.is_some() => (cfg.pub_ip, cfg.pub_gw),
            _ => (None, None),
        };
        ports.push(Port::new(nic, ip, gw, seed ^ i as u64, time::now_us()));
    }
    for p in ports.iter_mut() {
        p.gratuitous_arp();
    }
    let fabric_mac = ports
        .first()
        .map(|p| p.nic.borrow().mac)
        .unwrap_or([0x02, 0, 0, 0, 0, 1]);
    let net = Rc::new(RefCell::new(Net { ports }));

    let incarnation = cfg.incarnation.unwrap_or_else(arch::rtc_seconds);
    let mut engine = Engine::new(EngineConfig::new(DcId(cfg.dc), incarnation));
    for &ep in &cfg.endpoints {
        if let Err(e) = engine.bind(Endpoint(ep)) {
            fatal(&format!("bind endpoint {ep}: {e:?}"));
        }
    }
    let bench = cfg.services.contains(&Service::IpcBench);
    let (client_ep, echo_eps) = match (bench, cfg.endpoints.split_first()) {
        (true, Some((c, rest))) => (Some(*c), rest.to_vec()),
        _ => (None, cfg.endpoints.clone()),
    };
    let serves_echo = cfg.services.contains(&Service::Echo);
    for &ep in echo_eps
        .iter()
        .filter(|_| serves_echo)
        .chain(client_ep.iter())
    {
        let size = if Some(ep) == client_ep {
            cfg.bench_vcopy.max(cfg.buf)
        } else {
            cfg.buf
        };
        if let Err(e) = engine.set_buffer(Endpoint(ep), vec![0u8; size as usize]) {
            fatal(&format!(
                "vcopy buffer of {size} bytes for endpoint {ep}: {e:?}"
            ));
        }
    }
    let ipc = Rc::new(RefCell::new(ipc::Ipc::new(engine, fabric_mac)));

    if cfg.local_n > 0 {
        match ipc::local_bench::run(cfg.dc, cfg.local_n) {
            Ok(r) => println!(
                "dvs: local-sendrec n={} ns_per_call={}",
                r.calls, r.ns_per_call
            ),
            Err(e) => println!("dvs: local-sendrec FAILED: {e}"),
        }
    }

    let mut exec = executor::Executor::default();
    let echo_stats = Rc::new(services::echo::EchoStats::default());
    let http_stats = Rc::new(RefCell::new(services::http::HttpStats::default()));
    if serves_echo {
        for &ep in &echo_eps {
            exec.spawn(services::echo::serve(
                ipc.clone(),
                Endpoint(ep),
                echo_stats.clone(),
            ));
        }
    }
    // IP services run on the publish NIC when there is one, else on the fabric NIC.
    let n = net.borrow().ports.len();
    let ip_port = if n > 1 && cfg.pub_ip.is_some() && cfg.ip.is_some() {
        1
    } else {
        0
    };
    let ip_svcs = cfg
        .services
        .iter()
        .any(|s| matches!(s, Service::Http | Service::UdpEcho));
    if ip_svcs && n == 0 {
        fatal("svc=http/udp-echo need a virtio-net device (-device virtio-net-...)");
    }
    if cfg.services.contains(&Service::Http) {
        exec.spawn(services::http::serve(
            net.clone(),
            ip_port,
            http_stats.clone(),
        ));
    }
    if cfg.services.contains(&Service::UdpEcho) {
        exec.spawn(services::udp_echo::serve(net.clone(), ip_port));
    }
    if let (Some(c), Some(peer)) = (client_ep, cfg.peer) {
        exec.spawn(services::ipc_bench::run(
            ipc.clone(),
            Endpoint(c),
            Endpoint(peer),
            cfg.bench_n,
            cfg.bench_vcopy,
        ));
    }

    let eps: Vec<String> = cfg.endpoints.iter().map(|e| format!("{e}")).collect();
    let svcs: Vec<&str> = cfg
        .services
        .iter()
        .map(|s| match s {
            Service::Http => "http",
            Service::Echo => "echo",
            Service::IpcBench => "ipc-bench",
            Service::UdpEcho => "udp-echo",
        })
        .collect();
    let macs: Vec<String> = net
        .borrow()
        .ports
        .iter()
        .map(|p| {
            let m = p.nic.borrow().mac;
            format!(
                "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
                m[0], m[1], m[2], m[3], m[4], m[5]
            )
        })
        .collect();
    println!(
        "dvs: ready dc={} ep={} svc={} nics={} tsc_mhz={} init_us={}",
        cfg.dc,
        eps.join(","),
        svcs.join(","),
        macs.join(","),
        cal.tsc_hz / 1_000_000,
        time::now_us()
    );
    run(&cfg, &net, &ipc, &mut exec, &echo_stats, &http_stats)
}

/// Finds the virtio-net devices: virtio-mmio from the command line (microvm), else PCI bus 0.
fn discover(cfg: &Config) -> Vec<Nic> {
    let mut nics = Vec::new();
    if !cfg.mmio.is_empty() {
        // QEMU appends one word per plugged transport, in -device order.
        for d in cfg.mmio.iter().copied() {
            let Ok(t) = VosTransport::mmio(d.base, d.size) else {
                continue;
            };
            if t.device_type() != DeviceType::Network {
                continue;
            }
            match Nic::new(t) {
                Ok(nic) => {
                    if apic::route_irq(d.irq).is_err() {
                        println!("dvs: virtio-mmio {:#x}: irq {} out of range", d.base, d.irq);
                    }
                    nics.push(nic);
                }
                Err(e) => println!("dvs: virtio-mmio {:#x}: {e}", d.base),
            }
        }
        return nics;
    }
    if !drivers::pci::present() {
        return nics;
    }
    let mut root = virtio_drivers::transport::pci::bus::PciRoot::new(drivers::pci::PortCam);
    for dev in drivers::pci::scan(&mut root) {
        if dev.kind != DeviceType::Network {
            continue;
        }
        match drivers::transport::CachedPci::new(&mut root, dev.df)
            .and_then(|t| Nic::new(VosTransport::pci(t)))
        {
            Ok(nic) => nics.push(nic),
            Err(e) => println!("dvs: pci {}: {e}", dev.df),
        }
    }
    if !nics.is_empty() {
        // PCI INTx lines reach IOAPIC inputs 16..23; any of them just wakes the loop.
        for pin in 16..24 {
            let _ = apic::route_irq(pin);
        }
    }
    nics
}

/// A summary of the counters, printed when it changes.
fn stats_line(
    net: &Net,
    ipc: &ipc::Ipc,
    echo: &services::echo::EchoStats,
    http: &services::http::HttpStats,
) -> String {
    let s = ipc.engine.stats();
    let (mut rx, mut tx, mut rx_err, mut tx_full, mut kicks) = (0, 0, 0, 0, 0);
    for p in &net.ports {
        let n = p.nic.borrow();
        rx += n.stats.rx;
        tx += n.stats.tx;
        rx_err += n.stats.rx_errors;
        kicks += n.stats.kicks;
        tx_full += n.stats.tx_full;
    }
    format!(
        "dvs: stats echo_received={} echo_replied={} frames_in={} frames_out={} bad_frames={} wrong_dc={} spoofed={} not_here={} stale={} duplicates={} retransmits={} bad_ethernet={} http_requests={} http_bad={} nic_rx={} nic_tx={} nic_rx_errors={} nic_tx_full={} nic_kicks={} tsc_khz={} clock_back={} loop_gap_max_us={}",
        echo.received.get(),
        echo.replied.get(),
        s.frames_in,
        s.frames_out,
        s.bad_frames,
        s.wrong_dc,
        s.spoofed,
        s.not_here,
        s.stale,
        s.duplicates,
        s.retransmits,
        ipc.bad_ethernet,
        http.requests,
        http.bad,
        rx,
        tx,
        rx_err,
        tx_full,
        kicks,
        time::tsc_hz() / 1000,
        time::backwards_steps(),
        LOOP_GAP_MAX.load(core::sync::atomic::Ordering::Relaxed)
    )
}

/// The event loop: poll devices, IPC, smoltcp and tasks while there is work; halt otherwise.
fn run(
    cfg: &Config,
    net: &Rc<RefCell<Net>>,
    ipc: &ipc::IpcRef,
    exec: &mut executor::Executor,
    echo: &services::echo::EchoStats,
    http: &Rc<RefCell<services::http::HttpStats>>,
) -> ! {
    let mut last_work = time::now_us();
    let mut last_stats = String::new();
    let mut last_stats_at = 0u64;
    let stats_every = if cfg.stats > 0 {
        cfg.stats as u64 * 1_000_000
    } else {
        1_000_000
    };
    let mut prev_turn = time::now_us();
    loop {
        let now_us = time::now_us();
        let gap = now_us - prev_turn;
        if gap > LOOP_GAP_MAX.load(core::sync::atomic::Ordering::Relaxed) {
            LOOP_GAP_MAX.store(gap, core::sync::atomic::Ordering::Relaxed);
        }
        prev_turn = now_us;
        let now = m3ipc_core::Instant::from_micros(now_us);
        let mut work = false;
        {
            let mut net = net.borrow_mut();
            let mut ipc = ipc.borrow_mut();
            for (i, port) in net.ports.iter_mut().enumerate() {
                if i == 0 {
                    work |= port.pump(&mut |f| ipc.on_frame(now, f));
                } else {
                    work |= port.pump(&mut |_| ipc.bad_ethernet += 1);
                }
            }
            work |= ipc.poll(now);
        }
        let (progress, wake_at) = exec.run_once();
        work |= progress;
        {
            let mut net = net.borrow_mut();
            for port in net.ports.iter_mut() {
                work |= port.poll_ip(now_us, progress);
            }
            let mut ipc = ipc.borrow_mut();
            work |= ipc.poll(now);
            work |= ipc.flush(now, net.ports.first_mut().map(|p| p.nic.get_mut()));
            for port in net.ports.iter_mut() {
                port.nic.get_mut().settle();
            }
        }
        if work {
            last_work = now_us;
            continue;
        }
        if now_us.saturating_sub(last_work) < cfg.spin_us as u64 {
            continue;
        }
        // Idle: refine the clock rate once, report changed counters (at most once per
        // `stats_every`), then halt.
        let mut deadline = wake_at.min(now_us + MAX_SLEEP_US);
        if let Some(t) = time::refine_due_us() {
            if t <= now_us {
                time::refine();
                continue;
            }
            deadline = deadline.min(t);
        }
        let line = stats_line(&net.borrow(), &ipc.borrow(), echo, &http.borrow());
        if line != last_stats {
            if now_us >= last_stats_at + stats_every {
                println!("{line}");
                last_stats = line;
                last_stats_at = now_us;
            } else {
                deadline = deadline.min(last_stats_at + stats_every);
            }
        }
        if let Some(t) = ipc.borrow().next_deadline_us() {
            deadline = deadline.min(t);
        }
        let mut net = net.borrow_mut();
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
            arch::interrupts::halt();
            prev_turn = time::now_us();
        }
        for p in net.ports.iter_mut() {
            p.nic.get_mut().disable_interrupts();
        }
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    println!("dvs: PANIC {info}");
    arch::exit(ExitCode::Fault)
}
