//! The boot configuration: one typed value ([`BootConfig`], shared with the host through the
//! `dvs-vos-abi` crate), carried by the kernel command-line word `dvs.cfg=<hex>`, plus the
//! virtio-mmio words QEMU adds. The guest parses no other text.

use crate::arch::{self, ExitCode};
use crate::drivers::mmio_words::{self, MmioDevice};
use crate::println;
use alloc::vec::Vec;
pub use dvs_vos_abi::{BootConfig, IpConfig, Service};

/// What the command line says.
pub struct Boot {
    /// The host's configuration.
    pub cfg: BootConfig,
    /// The virtio-mmio devices QEMU announced (microvm), in `-device` order.
    pub mmio: Vec<MmioDevice>,
}

/// Reads the command line. A missing, malformed or inconsistent configuration is fatal: the
/// console and the control channel say why, and the VM exits with [`ExitCode::BadConfig`].
pub fn load(cmdline: &str) -> Boot {
    let parsed = BootConfig::from_cmdline(cmdline)
        .map_err(|e| alloc::format!("{e}"))
        .and_then(|cfg| Ok((cfg, mmio_words::parse(cmdline)?)));
    match parsed {
        Ok((cfg, mmio)) => Boot { cfg, mmio },
        Err(e) => {
            arch::report_fatal(format_args!("bad command line: {e}"));
            println!("dvs: command line was: {cmdline}");
            arch::exit(ExitCode::BadConfig)
        }
    }
}

/// The incarnation of this boot: the host's, or (if it sent 0) a count of seconds from the
/// CMOS clock, which grows from boot to boot.
pub fn incarnation(cfg: &BootConfig) -> u32 {
    match cfg.incarnation {
        0 => arch::rtc_seconds(),
        n => n,
    }
}

/// What each endpoint does.
pub struct Roles {
    /// The ipc-bench client: the first endpoint, when the instance runs `ipc-bench`.
    pub client: Option<u32>,
    /// The echo servers: the other endpoints (all of them without `ipc-bench`) except the
    /// storage servers' (`storage.disk`, `storage.fs`); empty when the instance does not run
    /// `echo`.
    pub echo: Vec<u32>,
    /// The web server's endpoint, from which it calls the file server (`storage.fs`):
    /// `BootConfig::http_endpoint`.
    pub http: Option<u32>,
}

/// The endpoints' roles.
pub fn roles(cfg: &BootConfig) -> Roles {
    let (client, rest) = match (cfg.runs(Service::IpcBench), cfg.endpoints.split_first()) {
        (true, Some((c, rest))) => (Some(*c), rest),
        _ => (None, &cfg.endpoints[..]),
    };
    let storage = [cfg.storage.disk, cfg.storage.fs];
    // The web server calls the file server from its own endpoint.
    let http = cfg.http_endpoint();
    Roles {
        client,
        http,
        echo: if cfg.runs(Service::Echo) {
            rest.iter()
                .copied()
                .filter(|e| !storage.contains(&Some(*e)) && Some(*e) != http)
                .collect()
        } else {
            Vec::new()
        },
    }
}

/// The address of NIC `i` of `nics`: with two or more NICs, the fabric address on the first
/// and the publish address on the second (the daemon always gives a publishing instance both
/// NICs, with or without a fabric address); with one NIC, the fabric address, else the publish
/// address, goes on it.
pub fn nic_ip(cfg: &BootConfig, i: usize, nics: usize) -> Option<IpConfig> {
    match (i, nics > 1) {
        (0, true) => cfg.fabric,
        (1, true) => cfg.publish,
        (0, false) => cfg.fabric.or(cfg.publish),
        _ => None,
    }
}

/// The NIC the IP services (http, udp-echo) run on, of `nics`: the publish NIC when there is
/// one, else the first.
pub fn ip_services_nic(cfg: &BootConfig, nics: usize) -> usize {
    if nics > 1 && cfg.publish.is_some() {
        1
    } else {
        0
    }
}
