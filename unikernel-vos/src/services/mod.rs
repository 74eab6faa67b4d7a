//! The VOS's services, chosen by the boot configuration's `services`, and [`start`], which
//! spawns them on the kernel.

pub mod echo;
pub mod http;
pub mod ipc_bench;
pub mod udp_echo;

use crate::arch::{self, ExitCode};
use crate::config::{self, BootConfig, Service};
use crate::kernel::Kernel;
use m3ipc_core::Endpoint;

/// Spawns the services `cfg` asks for, in this order: an echo server per echo endpoint, http,
/// udp-echo (on the publish NIC if there is one), the ipc-bench client. Each one announces
/// itself (`ServiceUp`). IP services without a NIC are fatal.
pub fn start(k: &mut Kernel, cfg: &BootConfig) {
    let roles = config::roles(cfg);
    for &ep in &roles.echo {
        let task = echo::serve(k.ipc.clone(), Endpoint(ep), k.stats.echo.clone());
        k.spawn(Service::Echo, Some(ep), task);
    }
    let nics = k.net.borrow().ports.len();
    if (cfg.runs(Service::Http) || cfg.runs(Service::UdpEcho)) && nics == 0 {
        arch::fatal(
            ExitCode::Fault,
            format_args!(
                "services http and udp-echo need a virtio-net device (-device virtio-net-...)"
            ),
        );
    }
    let ip_nic = config::ip_services_nic(cfg, nics);
    if cfg.runs(Service::Http) {
        let task = http::serve(k.net.clone(), ip_nic, k.stats.http.clone());
        k.spawn(Service::Http, None, task);
    }
    if cfg.runs(Service::UdpEcho) {
        let task = udp_echo::serve(k.net.clone(), ip_nic);
        k.spawn(Service::UdpEcho, None, task);
    }
    if let (Some(client), Some(peer)) = (roles.client, cfg.bench.peer) {
        let task = ipc_bench::run(k.ipc.clone(), Endpoint(client), Endpoint(peer), cfg.bench);
        k.spawn(Service::IpcBench, Some(client), task);
    }
}
