//! The VOS's services, chosen by the boot configuration's `services`, and [`start`], which
//! spawns them on the kernel.

pub mod blocking;
pub mod disk;
pub mod disk_client;
pub mod echo;
pub mod fs;
pub mod http;
pub mod ipc_bench;
pub mod net_probe;
pub mod udp_echo;

use crate::arch::{self, ExitCode};
use crate::config::{self, BootConfig, Service};
use crate::executor;
use crate::ipc::{self, IpcRef};
use crate::kernel::Kernel;
use core::cell::Cell;
use m3ipc_core::{Endpoint, Message};

/// Adds one to a service counter.
pub(crate) fn bump(c: &Cell<u64>) {
    c.set(c.get() + 1);
}

/// The next request to server endpoint `ep` that waits for a reply (a sendrec). Receive errors,
/// plain sends and notifications are counted in `dropped` and skipped: a request/reply server
/// answers nothing else.
pub(crate) async fn next_request(ipc: &IpcRef, ep: Endpoint, dropped: &Cell<u64>) -> Message {
    loop {
        match ipc::receive(ipc, ep, Endpoint::ANY, None).await {
            Ok((msg, true)) if !msg.is_notify() => return msg,
            Ok(_) => bump(dropped),
            Err(_) => {
                bump(dropped);
                executor::yield_now().await;
            }
        }
    }
}

/// Spawns the services `cfg` asks for, in this order: an echo server per echo endpoint, the disk
/// server (on `storage.disk`, over the first virtio-blk device), the file server (on
/// `storage.fs`, its blocks on the disk server at `storage.disk`), http (its files on the file
/// server at `storage.fs` if set, called from `roles.http`; else in RAM), udp-echo (on the publish
/// NIC if there is one), the ipc-bench client. Each one announces itself (`ServiceUp`). IP
/// services without a NIC, and the disk server without a virtio-blk device, are fatal.
pub fn start(k: &mut Kernel, cfg: &BootConfig) {
    let roles = config::roles(cfg);
    for &ep in &roles.echo {
        let task = echo::serve(k.ipc.clone(), Endpoint(ep), k.stats.echo.clone());
        k.spawn(Service::Echo, Some(ep), task);
    }
    if let (true, Some(ep)) = (cfg.runs(Service::Disk), cfg.storage.disk) {
        if k.disks.is_empty() {
            arch::fatal(
                ExitCode::Fault,
                format_args!(
                    "service disk needs a virtio-blk device (-drive if=none,id=blk0,... -device virtio-blk-...,drive=blk0); this instance has none"
                ),
            );
        }
        let dev = k.disks.remove(0);
        let task = disk::serve(k.ipc.clone(), Endpoint(ep), dev, k.stats.disk.clone());
        k.spawn(Service::Disk, Some(ep), task);
    }
    if let (true, Some(ep), Some(disk)) = (cfg.runs(Service::Fs), cfg.storage.fs, cfg.storage.disk)
    {
        let task = fs::serve(
            k.ipc.clone(),
            Endpoint(ep),
            Endpoint(disk),
            k.stats.fs.clone(),
        );
        k.spawn(Service::Fs, Some(ep), task);
    }
    let nics = k.net.borrow().ports.len();
    if (cfg.runs(Service::Http) || cfg.runs(Service::UdpEcho) || cfg.runs(Service::NetProbe))
        && nics == 0
    {
        arch::fatal(
            ExitCode::Fault,
            format_args!(
                "services http and udp-echo need a virtio-net device (-device virtio-net-...)"
            ),
        );
    }
    let ip_nic = config::ip_services_nic(cfg, nics);
    if cfg.runs(Service::Http) {
        let backing = match (cfg.storage.fs, roles.http) {
            (Some(fs), Some(ep)) => Some(http::Backing {
                ipc: k.ipc.clone(),
                ep: Endpoint(ep),
                fs: Endpoint(fs),
            }),
            (Some(fs), None) => arch::fatal(
                ExitCode::BadConfig,
                format_args!(
                    "service http with fs_ep={fs} needs an endpoint of its own to call the file server from (one that is not disk_ep or fs_ep)"
                ),
            ),
            (None, _) => None,
        };
        let task = http::serve(
            k.net.clone(),
            ip_nic,
            k.stats.http.clone(),
            cfg.http,
            backing,
        );
        k.spawn(Service::Http, None, task);
    }
    if cfg.runs(Service::UdpEcho) {
        let task = udp_echo::serve(k.net.clone(), ip_nic);
        k.spawn(Service::UdpEcho, None, task);
    }
    if cfg.runs(Service::NetProbe) {
        let task = net_probe::run(k.net.clone(), cfg.probes.clone());
        k.spawn(Service::NetProbe, None, task);
    }
    if let (Some(client), Some(peer)) = (roles.client, cfg.bench.peer) {
        let task = ipc_bench::run(k.ipc.clone(), Endpoint(client), Endpoint(peer), cfg.bench);
        k.spawn(Service::IpcBench, Some(client), task);
    }
}
