//! Each DC's virtual LAN: a learning Ethernet switch per DC, spanning the DC's ports and nodes. Broadcasts and
//! unknown destinations flood only inside the DC; two DCs may use the same MAC and IP addresses.

use std::collections::HashMap;

use bytes::Bytes;
use m3ipc_core::wire::ethernet::EthernetHeader;
use m3ipc_core::DcId;

use super::{Out, Switch, Via};
use crate::counters::Drop;

/// At most this many MAC addresses are learned per DC (bounded memory); past it, unknown ones flood.
pub const MAX_MACS_PER_DC: usize = 4096;

/// Learned MAC addresses, one table per DC.
#[derive(Debug, Default)]
pub struct MacTables(HashMap<DcId, HashMap<[u8; 6], Via>>);

impl MacTables {
    /// Learns that `mac` of `dc` sits behind `via`. A MAC learned on a local port is not taken over by a peer.
    pub(super) fn learn(&mut self, dc: DcId, mac: [u8; 6], via: Via) {
        let table = self.0.entry(dc).or_default();
        match table.get(&mac) {
            Some(Via::Port(_)) if matches!(via, Via::Peer(_)) => {}
            Some(_) => {
                table.insert(mac, via);
            }
            None if table.len() < MAX_MACS_PER_DC => {
                table.insert(mac, via);
            }
            None => {}
        }
    }

    fn get(&self, dc: DcId, mac: &[u8; 6]) -> Option<Via> {
        self.0.get(&dc)?.get(mac).copied()
    }

    /// Forgets `mac` of `dc` if it was learned behind `via`.
    pub fn forget_mac(&mut self, dc: DcId, mac: &[u8; 6], via: Via) {
        if let Some(table) = self.0.get_mut(&dc) {
            if table.get(mac) == Some(&via) {
                table.remove(mac);
            }
        }
    }

    /// Forgets every MAC learned behind `via` (a port removed, a peer down).
    pub fn forget(&mut self, via: Via) {
        for table in self.0.values_mut() {
            table.retain(|_, v| *v != via);
        }
    }
}

impl Switch {
    /// Switches one LAN frame of `dc` that came in through `from`.
    pub(super) fn switch_lan(
        &mut self,
        from: Via,
        dc: DcId,
        eth: EthernetHeader,
        frame: Bytes,
        out: &mut Vec<Out>,
    ) {
        self.dcs.entry(dc.0).or_default().lan.add(frame.len());
        self.macs.learn(dc, eth.src, from);
        let to = if eth.is_group() {
            None
        } else {
            self.macs.get(dc, &eth.dst)
        };
        match to {
            Some(via) if via == from => {}
            Some(Via::Port(port)) => self.deliver(port, frame, out),
            Some(Via::Peer(node)) if matches!(from, Via::Port(_)) => {
                if self.peer_is_up(node) {
                    out.push(Out::Peer {
                        node,
                        dc,
                        hops: 0,
                        frame,
                    });
                } else {
                    self.count_drop(from, Drop::NoRoute);
                }
            }
            _ => self.flood(from, dc, frame, out),
        }
    }

    /// Sends a frame to every other port of `dc` here and, when it came from a port, to every node `dc` spans.
    fn flood(&mut self, from: Via, dc: DcId, frame: Bytes, out: &mut Vec<Out>) {
        let mut ports: Vec<u32> = self
            .ports
            .iter()
            .filter(|(id, p)| p.spec.dc == dc && from != Via::Port(**id))
            .map(|(id, _)| *id)
            .collect();
        ports.sort_unstable();
        for port in ports {
            self.deliver(port, frame.clone(), out);
        }
        if matches!(from, Via::Port(_)) {
            let nodes: Vec<_> = self
                .cluster
                .dc_nodes(dc)
                .filter(|&n| n != self.node && self.peer_is_up(n))
                .collect();
            for node in nodes {
                out.push(Out::Peer {
                    node,
                    dc,
                    hops: 0,
                    frame: frame.clone(),
                });
            }
        }
    }
}
