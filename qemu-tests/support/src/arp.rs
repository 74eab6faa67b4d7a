//! ARP over Ethernet for IPv4: the few frames the role doubles build and read.

use std::net::Ipv4Addr;

use m3ipc_core::wire::ethernet::{EthernetHeader, BROADCAST, ETH_HEADER_LEN};

/// The ARP EtherType.
pub const ETHERTYPE_ARP: u16 = 0x0806;

/// ARP operation: request.
pub const REQUEST: u16 = 1;
/// ARP operation: reply.
pub const REPLY: u16 = 2;

/// One ARP packet (Ethernet/IPv4 only).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Arp {
    /// [`REQUEST`] or [`REPLY`].
    pub op: u16,
    /// Sender MAC.
    pub sha: [u8; 6],
    /// Sender IPv4.
    pub spa: Ipv4Addr,
    /// Target MAC.
    pub tha: [u8; 6],
    /// Target IPv4.
    pub tpa: Ipv4Addr,
}

impl Arp {
    /// A who-has request from `mac`/`me` for `target`, broadcast.
    pub fn who_has(mac: [u8; 6], me: Ipv4Addr, target: Ipv4Addr) -> Arp {
        Arp {
            op: REQUEST,
            sha: mac,
            spa: me,
            tha: [0; 6],
            tpa: target,
        }
    }

    /// The Ethernet frame (padded to 60 bytes); requests go to broadcast, replies to `tha`.
    pub fn to_frame(&self) -> Vec<u8> {
        let dst = if self.op == REQUEST {
            BROADCAST
        } else {
            self.tha
        };
        let mut f = vec![0u8; ETH_HEADER_LEN];
        f[0..6].copy_from_slice(&dst);
        f[6..12].copy_from_slice(&self.sha);
        f[12..14].copy_from_slice(&ETHERTYPE_ARP.to_be_bytes());
        f.extend_from_slice(&[0, 1, 8, 0, 6, 4]);
        f.extend_from_slice(&self.op.to_be_bytes());
        f.extend_from_slice(&self.sha);
        f.extend_from_slice(&self.spa.octets());
        f.extend_from_slice(&self.tha);
        f.extend_from_slice(&self.tpa.octets());
        f.resize(60, 0);
        f
    }

    /// Reads an Ethernet frame as ARP for IPv4 over Ethernet; None for anything else.
    pub fn parse(frame: &[u8]) -> Option<Arp> {
        let (eth, p) = EthernetHeader::parse(frame).ok()?;
        if eth.ethertype != ETHERTYPE_ARP || p.len() < 28 || p[0..6] != [0, 1, 8, 0, 6, 4] {
            return None;
        }
        let mac = |at: usize| -> [u8; 6] {
            let mut m = [0u8; 6];
            m.copy_from_slice(&p[at..at + 6]);
            m
        };
        let ip = |at: usize| Ipv4Addr::new(p[at], p[at + 1], p[at + 2], p[at + 3]);
        Some(Arp {
            op: u16::from_be_bytes([p[6], p[7]]),
            sha: mac(8),
            spa: ip(14),
            tha: mac(18),
            tpa: ip(24),
        })
    }

    /// The reply to this packet if it asks for `me` (answered as `mac`).
    pub fn answer(&self, mac: [u8; 6], me: Ipv4Addr) -> Option<Arp> {
        (self.op == REQUEST && self.tpa == me).then_some(Arp {
            op: REPLY,
            sha: mac,
            spa: me,
            tha: self.sha,
            tpa: self.spa,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_and_get_answered() {
        let me = Ipv4Addr::new(10, 1, 0, 9);
        let them = Ipv4Addr::new(10, 1, 0, 3);
        let req = Arp::who_has([2, 0, 0, 0, 0, 9], me, them);
        let frame = req.to_frame();
        assert_eq!(frame.len(), 60);
        assert_eq!(frame[0..6], BROADCAST);
        assert_eq!(Arp::parse(&frame), Some(req));
        let rep = req.answer([2, 0, 0, 0, 0, 3], them).unwrap();
        assert_eq!(rep.op, REPLY);
        assert_eq!(rep.tpa, me);
        assert_eq!(Arp::parse(&rep.to_frame()), Some(rep));
        assert_eq!(req.answer([2; 6], me), None, "not asking for that address");
        assert_eq!(Arp::parse(&frame[..30]), None, "truncated");
    }
}
