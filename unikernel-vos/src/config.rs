//! The kernel command line: `key=value` words (see README.md). QEMU's own
//! `virtio_mmio.device=SIZE@BASE:IRQ` words are read here too.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::net::Ipv4Addr;

/// A service this instance runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Service {
    /// HTTP/1.1 server on TCP port 80.
    Http,
    /// M3-IPC echo server (answers every sendrec with the same payload; vcopy buffer).
    Echo,
    /// M3-IPC benchmark client against `peer`.
    IpcBench,
    /// UDP echo on port 7.
    UdpEcho,
}

/// An IPv4 address with its prefix length.
#[derive(Clone, Copy, Debug)]
pub struct Cidr {
    /// The address.
    pub addr: Ipv4Addr,
    /// Prefix length (0..=32).
    pub prefix: u8,
}

/// A virtio-mmio device announced by QEMU on the command line.
#[derive(Clone, Copy, Debug)]
pub struct MmioDevice {
    /// Base address.
    pub base: u64,
    /// Region size in bytes.
    pub size: u64,
    /// IOAPIC input.
    pub irq: u8,
}

/// Everything the command line configures.
#[derive(Clone, Debug)]
pub struct Config {
    /// The DC this instance belongs to.
    pub dc: u16,
    /// Endpoints this instance binds (the first serves `echo`, and is the bench client).
    pub endpoints: Vec<u32>,
    /// Services to run.
    pub services: Vec<Service>,
    /// Fabric NIC address (first NIC).
    pub ip: Option<Cidr>,
    /// Fabric NIC default gateway.
    pub gw: Option<Ipv4Addr>,
    /// Publish NIC address (second NIC).
    pub pub_ip: Option<Cidr>,
    /// Publish NIC default gateway.
    pub pub_gw: Option<Ipv4Addr>,
    /// Endpoint the `ipc-bench` client talks to.
    pub peer: Option<u32>,
    /// Incarnation number; derived from the clock when absent.
    pub incarnation: Option<u32>,
    /// Sendrecs the bench client runs.
    pub bench_n: u32,
    /// Bytes the bench client vcopies.
    pub bench_vcopy: u32,
    /// Size of the echo service's vcopy buffer.
    pub buf: u32,
    /// Iterations of the in-guest local sendrec loop (0 = skip).
    pub local_n: u32,
    /// Seconds between counter lines on the console (0 = only on change, at most 1/s).
    pub stats: u32,
    /// How long the loop keeps polling after the last work before it halts (µs).
    pub spin_us: u32,
    /// virtio-mmio devices (microvm).
    pub mmio: Vec<MmioDevice>,
}

const KEYS: &str =
    "dc, ep, svc, ip, gw, pub_ip, pub_gw, peer, inc, n, vcopy, buf, local_n, stats, spin_us";

fn num<T: TryFrom<u64>>(key: &str, v: &str) -> Result<T, String> {
    let parsed = if let Some(hex) = v.strip_prefix("0x") {
        u64::from_str_radix(hex, 16)
    } else {
        v.parse::<u64>()
    };
    parsed
        .ok()
        .and_then(|n| T::try_from(n).ok())
        .ok_or_else(|| format!("{key}={v}: not a number in range"))
}

fn ip(key: &str, v: &str) -> Result<Ipv4Addr, String> {
    v.parse()
        .map_err(|_| format!("{key}={v}: not an IPv4 address"))
}

fn cidr(key: &str, v: &str) -> Result<Cidr, String> {
    let (a, p) = v.split_once('/').unwrap_or((v, "24"));
    let prefix: u8 = num(key, p)?;
    if prefix > 32 {
        return Err(format!("{key}={v}: prefix {prefix} > 32"));
    }
    Ok(Cidr {
        addr: ip(key, a)?,
        prefix,
    })
}

fn size(v: &str) -> Option<u64> {
    let (n, mult) = match v.as_bytes().last()? {
        b'K' | b'k' => (&v[..v.len() - 1], 1024),
        b'M' | b'm' => (&v[..v.len() - 1], 1024 * 1024),
        _ => (v, 1),
    };
    let n = match n.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16).ok()?,
        None => n.parse().ok()?,
    };
    n.checked_mul(mult)
}

fn mmio(v: &str) -> Result<MmioDevice, String> {
    let bad = || format!("virtio_mmio.device={v}: expected SIZE@BASE:IRQ");
    let (sz, rest) = v.split_once('@').ok_or_else(bad)?;
    let (base, irq) = rest.split_once(':').ok_or_else(bad)?;
    let base = base
        .strip_prefix("0x")
        .and_then(|h| u64::from_str_radix(h, 16).ok())
        .ok_or_else(bad)?;
    let irq: u8 = irq.parse().map_err(|_| bad())?;
    Ok(MmioDevice {
        base,
        size: size(sz).ok_or_else(bad)?,
        irq,
    })
}

impl Config {
    /// Parses and checks a command line; the error names the word at fault.
    pub fn parse(cmdline: &str) -> Result<Config, String> {
        let mut c = Config {
            dc: 0,
            endpoints: Vec::new(),
            services: Vec::new(),
            ip: None,
            gw: None,
            pub_ip: None,
            pub_gw: None,
            peer: None,
            incarnation: None,
            bench_n: 1000,
            bench_vcopy: 65536,
            buf: 16384,
            local_n: 0,
            stats: 0,
            spin_us: 300,
            mmio: Vec::new(),
        };
        let mut dc = None;
        for word in cmdline.split_ascii_whitespace() {
            let Some((k, v)) = word.split_once('=') else {
                return Err(format!("'{word}': expected key=value (keys: {KEYS})"));
            };
            match k {
                "dc" => dc = Some(num::<u16>(k, v)?),
                "ep" => {
                    for e in v.split(',') {
                        let ep: u32 = num(k, e)?;
                        if ep == 0 || ep == u32::MAX {
                            return Err(format!("ep={v}: endpoint {ep} is reserved"));
                        }
                        if c.endpoints.contains(&ep) {
                            return Err(format!("ep={v}: endpoint {ep} given twice"));
                        }
                        c.endpoints.push(ep);
                    }
                }
                "svc" => {
                    for s in v.split(',') {
                        c.services.push(match s {
                            "http" => Service::Http,
                            "echo" => Service::Echo,
                            "ipc-bench" => Service::IpcBench,
                            "udp-echo" => Service::UdpEcho,
                            _ => {
                                return Err(format!(
                                "svc={v}: unknown service '{s}' (http, echo, ipc-bench, udp-echo)"
                            ))
                            }
                        });
                    }
                }
                "ip" => c.ip = Some(cidr(k, v)?),
                "gw" => c.gw = Some(ip(k, v)?),
                "pub_ip" => c.pub_ip = Some(cidr(k, v)?),
                "pub_gw" => c.pub_gw = Some(ip(k, v)?),
                "peer" => c.peer = Some(num(k, v)?),
                "inc" => c.incarnation = Some(num(k, v)?),
                "n" => c.bench_n = num(k, v)?,
                "vcopy" => c.bench_vcopy = num(k, v)?,
                "buf" => c.buf = num(k, v)?,
                "local_n" => c.local_n = num(k, v)?,
                "stats" => c.stats = num(k, v)?,
                "spin_us" => c.spin_us = num(k, v)?,
                "virtio_mmio.device" => c.mmio.push(mmio(v)?),
                _ => return Err(format!("unknown key '{k}' in '{word}' (keys: {KEYS})")),
            }
        }
        c.dc = dc.ok_or_else(|| format!("missing dc=<id> (keys: {KEYS})"))?;
        if c.services.is_empty() {
            return Err("missing svc=<http,echo,ipc-bench>".into());
        }
        let ipc = c
            .services
            .iter()
            .any(|s| matches!(s, Service::Echo | Service::IpcBench));
        if ipc && c.endpoints.is_empty() {
            return Err("svc echo/ipc-bench need ep=<endpoint,...>".into());
        }
        if c.services.contains(&Service::IpcBench) && c.peer.is_none() {
            return Err("svc=ipc-bench needs peer=<endpoint>".into());
        }
        let ip_svc = c
            .services
            .iter()
            .any(|s| matches!(s, Service::Http | Service::UdpEcho));
        if ip_svc && c.ip.is_none() && c.pub_ip.is_none() {
            return Err("svc=http and svc=udp-echo need ip= or pub_ip=".into());
        }
        Ok(c)
    }
}
