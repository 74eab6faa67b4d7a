//! Networking: one `Port` per NIC (the virtio-net device, its smoltcp interface and sockets),
//! and the Ethernet demultiplexer that hands M3-IPC frames (EtherType 0x88B5) to the IPC layer
//! before smoltcp sees anything.

pub mod phy;

use crate::config::{self, BootConfig, IpConfig};
use crate::drivers::net::{Nic, RxSlot};
use alloc::collections::VecDeque;
use alloc::rc::Rc;
use alloc::vec;
use alloc::vec::Vec;
use core::cell::RefCell;
use core::net::Ipv4Addr;
use smoltcp::iface::{Config as IfaceConfig, Interface, PollResult, SocketSet};
use smoltcp::time::Instant;
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol,
    EthernetRepr, HardwareAddress, IpCidr, Ipv4Address,
};

/// EtherType of M3-IPC frames.
pub const ETHERTYPE_M3IPC: u16 = 0x88B5;

/// Counters of the demultiplexer.
#[derive(Clone, Copy, Debug, Default)]
pub struct DemuxStats {
    /// M3-IPC frames handed to the IPC layer.
    pub m3ipc: u64,
    /// Frames handed to smoltcp.
    pub ip: u64,
    /// Frames too short for an Ethernet header.
    pub runt: u64,
}

/// A NIC with its IP interface.
pub struct Port {
    /// The device (shared with the smoltcp adapter's tokens).
    pub nic: RefCell<Nic>,
    /// Received non-M3-IPC frames waiting for smoltcp.
    pub ip_rx: RefCell<VecDeque<RxSlot>>,
    /// The smoltcp interface, if this port has an IPv4 address.
    pub iface: Option<Interface>,
    /// The sockets of that interface.
    pub sockets: SocketSet<'static>,
    /// This port's IPv4 address.
    pub addr: Option<Ipv4Addr>,
    /// Demultiplexer counters.
    pub demux: DemuxStats,
}

impl Port {
    /// Wraps `nic`; with `ip`, brings up a smoltcp interface with that address and gateway.
    pub fn new(nic: Nic, ip: Option<IpConfig>, seed: u64, now_us: u64) -> Port {
        let mut port = Port {
            nic: RefCell::new(nic),
            ip_rx: RefCell::new(VecDeque::new()),
            iface: None,
            sockets: SocketSet::new(vec![]),
            addr: ip.map(|c| Ipv4Addr::from(c.cidr.addr)),
            demux: DemuxStats::default(),
        };
        if let Some(IpConfig { cidr, gateway }) = ip {
            let mac = port.nic.borrow().mac;
            let mut cfg = IfaceConfig::new(HardwareAddress::Ethernet(EthernetAddress(mac)));
            cfg.random_seed = seed;
            let mut dev = phy::Phy {
                nic: &port.nic,
                ip_rx: &port.ip_rx,
            };
            let mut iface = Interface::new(cfg, &mut dev, Instant::from_micros(now_us as i64));
            iface.update_ip_addrs(|a| {
                let _ = a.push(IpCidr::new(Ipv4Addr::from(cidr.addr).into(), cidr.prefix));
            });
            if let Some(gw) = gateway {
                let _ = iface
                    .routes_mut()
                    .add_default_ipv4_route(Ipv4Addr::from(gw));
            }
            port.iface = Some(iface);
        }
        port
    }

    /// Collects received frames: M3-IPC frames go to `m3ipc` (whole Ethernet frame), the rest
    /// queue for smoltcp. Returns whether anything arrived.
    pub fn pump(&mut self, m3ipc: &mut dyn FnMut(&[u8])) -> bool {
        let nic = self.nic.get_mut();
        if !nic.poll() {
            return false;
        }
        let ip_rx = self.ip_rx.get_mut();
        while let Some(slot) = nic.next_rx() {
            let frame = nic.frame(&slot);
            if frame.len() < 14 {
                self.demux.runt += 1;
                nic.recycle(slot);
            } else if u16::from_be_bytes([frame[12], frame[13]]) == ETHERTYPE_M3IPC {
                self.demux.m3ipc += 1;
                m3ipc(frame);
                nic.recycle(slot);
            } else if self.iface.is_some() {
                self.demux.ip += 1;
                ip_rx.push_back(slot);
            } else {
                nic.recycle(slot);
            }
        }
        true
    }

    /// Runs smoltcp if it has input or a timer due; true if socket state may have changed.
    pub fn poll_ip(&mut self, now_us: u64, force: bool) -> bool {
        let Some(iface) = self.iface.as_mut() else {
            return false;
        };
        let now = Instant::from_micros(now_us as i64);
        let due = iface.poll_at(now, &self.sockets).is_some_and(|t| t <= now);
        if !force && !due && self.ip_rx.get_mut().is_empty() {
            return false;
        }
        let mut dev = phy::Phy {
            nic: &self.nic,
            ip_rx: &self.ip_rx,
        };
        iface.poll(now, &mut dev, &mut self.sockets) == PollResult::SocketStateChanged
    }

    /// When smoltcp next needs a poll, in microseconds on the kernel clock.
    pub fn poll_at_us(&mut self, now_us: u64) -> Option<u64> {
        let iface = self.iface.as_mut()?;
        iface
            .poll_at(Instant::from_micros(now_us as i64), &self.sockets)
            .map(|t| t.total_micros().max(0) as u64)
    }

    /// Announces this port's address (gratuitous ARP), so peers and QEMU's user network
    /// learn the MAC without an ARP round trip.
    pub fn gratuitous_arp(&mut self) {
        let Some(addr) = self.addr else { return };
        let nic = self.nic.get_mut();
        let mac = EthernetAddress(nic.mac);
        let ip: Ipv4Address = addr;
        let arp = ArpRepr::EthernetIpv4 {
            operation: ArpOperation::Request,
            source_hardware_addr: mac,
            source_protocol_addr: ip,
            target_hardware_addr: EthernetAddress([0; 6]),
            target_protocol_addr: ip,
        };
        let eth = EthernetRepr {
            src_addr: mac,
            dst_addr: EthernetAddress::BROADCAST,
            ethertype: EthernetProtocol::Arp,
        };
        let len = eth.buffer_len() + arp.buffer_len();
        nic.send(len, |buf| {
            let mut frame = EthernetFrame::new_unchecked(buf);
            eth.emit(&mut frame);
            arp.emit(&mut ArpPacket::new_unchecked(frame.payload_mut()));
        });
    }
}

/// All ports; the first is the DC fabric NIC, the second (if any) the publish NIC.
#[derive(Default)]
pub struct Net {
    /// The ports, in discovery order.
    pub ports: Vec<Port>,
}

/// Shared handle to the ports (the main loop and the IP services hold one).
pub type NetRef = Rc<RefCell<Net>>;

/// The MAC the fabric frames come from when there is no NIC at all (local IPC only).
const NO_NIC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 1];

impl Net {
    /// One port per NIC, each with the address `cfg` gives it ([`config::nic_ip`]); every
    /// port with an address announces it (gratuitous ARP). `seed` seeds smoltcp.
    pub fn new(nics: Vec<Nic>, cfg: &BootConfig, seed: u64, now_us: u64) -> Net {
        let count = nics.len();
        let mut ports: Vec<Port> = nics
            .into_iter()
            .enumerate()
            .map(|(i, nic)| Port::new(nic, config::nic_ip(cfg, i, count), seed ^ i as u64, now_us))
            .collect();
        for p in ports.iter_mut() {
            p.gratuitous_arp();
        }
        Net { ports }
    }

    /// The fabric NIC's MAC (M3-IPC frames are sent from it).
    pub fn fabric_mac(&self) -> [u8; 6] {
        self.ports
            .first()
            .map(|p| p.nic.borrow().mac)
            .unwrap_or(NO_NIC_MAC)
    }

    /// The MACs of all NICs, fabric first.
    pub fn macs(&self) -> Vec<[u8; 6]> {
        self.ports.iter().map(|p| p.nic.borrow().mac).collect()
    }
}
