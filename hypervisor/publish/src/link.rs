//! The publish link as a smoltcp [`Device`]: the bytes of QEMU's `-netdev stream` (a 4-byte
//! big-endian length before every Ethernet frame) in one receive buffer, frames handed to smoltcp
//! in place, and frames from smoltcp written length-prefixed into one transmit buffer that goes to
//! the socket in one write. Every frame from the guest passes [`Filter::check`] first: only ARP
//! for the gateway and TCP segments from the guest to the gateway that are not a new connection
//! reach the stack.

use smoltcp::phy::{self, Checksum, Device, DeviceCapabilities, Medium};
use smoltcp::time::Instant;
use smoltcp::wire::{
    ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol, IpProtocol, Ipv4Address,
    Ipv4Packet, TcpPacket,
};

/// Longest frame the link carries; a longer length prefix ends the link.
pub const MAX_FRAME: usize = 65535;
/// Largest frame sent to the guest (Ethernet header and a 1500-byte IP packet).
pub const MTU: usize = 1514;

/// What [`Filter::check`] says of a frame from the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// For the stack.
    Pass,
    /// Malformed: truncated, bad checksum, bad header.
    Bad,
    /// Well-formed but not for the gateway (another protocol or address, a guest-opened connection).
    Ignored,
}

/// Which frames from the guest the stack may see.
#[derive(Clone, Copy, Debug)]
pub struct Filter {
    /// The gateway's MAC.
    pub mac: EthernetAddress,
    /// The gateway's address.
    pub ip: Ipv4Address,
    /// The guest's address.
    pub guest: Ipv4Address,
}

impl Filter {
    /// Checks one frame from the guest (headers and the TCP checksum; the stack does not verify
    /// checksums again).
    pub fn check(&self, f: &[u8]) -> Verdict {
        let Ok(eth) = EthernetFrame::new_checked(f) else {
            return Verdict::Bad;
        };
        let dst = eth.dst_addr();
        if dst != self.mac && !dst.is_broadcast() {
            return Verdict::Ignored;
        }
        match eth.ethertype() {
            EthernetProtocol::Arp => {
                match ArpPacket::new_checked(eth.payload()).and_then(|p| ArpRepr::parse(&p)) {
                    Ok(ArpRepr::EthernetIpv4 {
                        source_protocol_addr,
                        target_protocol_addr,
                        ..
                    }) if target_protocol_addr == self.ip && source_protocol_addr == self.guest => {
                        Verdict::Pass
                    }
                    Ok(_) => Verdict::Ignored,
                    Err(_) => Verdict::Bad,
                }
            }
            EthernetProtocol::Ipv4 => {
                let Ok(ip) = Ipv4Packet::new_checked(eth.payload()) else {
                    return Verdict::Bad;
                };
                if ip.version() != 4 || !ip.verify_checksum() {
                    return Verdict::Bad;
                }
                if ip.dst_addr() != self.ip
                    || ip.src_addr() != self.guest
                    || ip.next_header() != IpProtocol::Tcp
                    || ip.more_frags()
                    || ip.frag_offset() != 0
                {
                    return Verdict::Ignored;
                }
                let Ok(tcp) = TcpPacket::new_checked(ip.payload()) else {
                    return Verdict::Bad;
                };
                if !tcp.verify_checksum(&self.guest.into(), &self.ip.into()) {
                    return Verdict::Bad;
                }
                if tcp.syn() && !tcp.ack() {
                    // The guest opening a connection: the gateway accepts none.
                    return Verdict::Ignored;
                }
                Verdict::Pass
            }
            _ => Verdict::Ignored,
        }
    }
}

/// Frames counted by the device since the last look.
#[derive(Clone, Copy, Debug, Default)]
pub struct FrameCounts {
    /// Malformed frames dropped.
    pub bad: u64,
    /// Frames dropped as not for the gateway.
    pub ignored: u64,
}

/// The link's buffers as a smoltcp device.
pub struct LinkDevice {
    /// Bytes read from the link; `rx[rx_pos..]` is not consumed yet.
    pub rx: Vec<u8>,
    /// How much of `rx` the stack has taken.
    pub rx_pos: usize,
    /// Length-prefixed frames to write; `tx[tx_pos..]` is not written yet.
    pub tx: Vec<u8>,
    /// How much of `tx` has been written.
    pub tx_pos: usize,
    /// No more frames are taken from the stack while this much waits to be written.
    pub tx_limit: usize,
    /// Which frames pass.
    pub filter: Filter,
    /// Dropped frames.
    pub counts: FrameCounts,
    /// Set when the link carried a bad length prefix: it must be dropped.
    pub broken: Option<usize>,
}

impl LinkDevice {
    /// An empty device.
    pub fn new(filter: Filter, tx_limit: usize) -> LinkDevice {
        LinkDevice {
            rx: Vec::with_capacity(256 << 10),
            rx_pos: 0,
            tx: Vec::with_capacity(tx_limit + MAX_FRAME),
            tx_pos: 0,
            tx_limit,
            filter,
            counts: FrameCounts::default(),
            broken: None,
        }
    }

    /// Forgets everything buffered (a new link).
    pub fn clear(&mut self) {
        self.rx.clear();
        self.rx_pos = 0;
        self.tx.clear();
        self.tx_pos = 0;
        self.broken = None;
    }

    /// Drops the consumed part of `rx` and the written part of `tx`.
    pub fn compact(&mut self) {
        if self.rx_pos > 0 {
            self.rx.drain(..self.rx_pos);
            self.rx_pos = 0;
        }
        if self.tx_pos == self.tx.len() {
            self.tx.clear();
            self.tx_pos = 0;
        } else if self.tx_pos > self.tx_limit / 2 {
            self.tx.drain(..self.tx_pos);
            self.tx_pos = 0;
        }
    }

    /// Bytes waiting to be written.
    pub fn tx_pending(&self) -> &[u8] {
        &self.tx[self.tx_pos..]
    }
}

/// A frame from the link, in place.
pub struct Rx<'a>(&'a [u8]);

impl phy::RxToken for Rx<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(self.0)
    }
}

/// Room for one frame at the end of the transmit buffer.
pub struct Tx<'a>(&'a mut Vec<u8>);

impl phy::TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let start = self.0.len();
        // len <= MTU: the stack is told so by the capabilities.
        self.0.extend_from_slice(&(len as u32).to_be_bytes());
        self.0.resize(start + 4 + len, 0);
        f(&mut self.0[start + 4..])
    }
}

impl Device for LinkDevice {
    type RxToken<'a> = Rx<'a>;
    type TxToken<'a> = Tx<'a>;

    fn receive(&mut self, _now: Instant) -> Option<(Rx<'_>, Tx<'_>)> {
        let LinkDevice {
            rx,
            rx_pos,
            tx,
            filter,
            counts,
            broken,
            ..
        } = self;
        let rx: &Vec<u8> = rx;
        loop {
            if broken.is_some() {
                return None;
            }
            let avail = &rx[*rx_pos..];
            if avail.len() < 4 {
                return None;
            }
            let len = u32::from_be_bytes([avail[0], avail[1], avail[2], avail[3]]) as usize;
            if len == 0 || len > MAX_FRAME {
                *broken = Some(len);
                return None;
            }
            if avail.len() < 4 + len {
                return None;
            }
            let frame = &rx[*rx_pos + 4..*rx_pos + 4 + len];
            *rx_pos += 4 + len;
            match filter.check(frame) {
                Verdict::Pass => return Some((Rx(frame), Tx(tx))),
                Verdict::Bad => counts.bad += 1,
                Verdict::Ignored => counts.ignored += 1,
            }
        }
    }

    fn transmit(&mut self, _now: Instant) -> Option<Tx<'_>> {
        (self.tx.len() - self.tx_pos < self.tx_limit).then_some(Tx(&mut self.tx))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = MTU;
        caps.max_burst_size = None;
        // Received checksums are verified by the filter; sent ones are computed.
        caps.checksum.ipv4 = Checksum::Tx;
        caps.checksum.tcp = Checksum::Tx;
        caps
    }
}
