//! Each DC's virtual LAN: a learning Ethernet switch per DC, spanning the DC's ports and nodes. Broadcasts and
//! unknown destinations flood only inside the DC; two DCs may use the same MAC and IP addresses. Learned
//! addresses age out after [`MacConfig::ageing`] without a frame (the caller's `now`, never a clock read here),
//! each DC keeps at most [`MacConfig::max_per_dc`] of them, and a port's or a peer's go when it goes.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use bytes::Bytes;
use m3ipc_core::wire::ethernet::EthernetHeader;
use m3ipc_core::{DcId, Instant};

use super::{Out, Switch, Via};
use crate::counters::{Drop, MacCounters};

/// The default bound on learned MAC addresses per DC (bounded memory): when a DC's table is full, the entry
/// seen longest ago makes room (counted as `evicted`).
pub const MAX_MACS_PER_DC: usize = 4096;
/// The default time after which a learned MAC address that sent nothing is forgotten (a Linux bridge's
/// default ageing time).
pub const MAC_AGEING: Duration = Duration::from_secs(300);
/// A learned entry's time stamp is renewed at most this often (or a quarter of the ageing time, if shorter), so
/// that a busy sender costs one hash lookup per frame, not a re-sort of the table; ageing is this coarse.
const REFRESH: Duration = Duration::from_secs(1);

/// How the per-DC MAC tables learn and forget.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MacConfig {
    /// A learned address that sent nothing for this long is forgotten (its frames flood again). Addresses the
    /// node assigned to a port ([`super::PortSpec::mac`]) never age; they go with their port.
    pub ageing: Duration,
    /// Learned addresses kept per DC; when full, the one seen longest ago is dropped. 0 learns nothing.
    pub max_per_dc: usize,
}

impl Default for MacConfig {
    /// 300 s ageing, [`MAX_MACS_PER_DC`] addresses per DC.
    fn default() -> MacConfig {
        MacConfig {
            ageing: MAC_AGEING,
            max_per_dc: MAX_MACS_PER_DC,
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    via: Via,
    /// When a frame from it was last seen (to [`REFRESH`]); `None` for a port's assigned MAC, which does not age.
    seen: Option<Instant>,
}

#[derive(Debug, Default)]
struct DcTable {
    entries: HashMap<[u8; 6], Entry>,
    /// The learned entries by the time they were last seen, oldest first (ageing and eviction order).
    order: BTreeSet<(Instant, [u8; 6])>,
    counters: MacCounters,
}

impl DcTable {
    fn remove(&mut self, mac: &[u8; 6]) -> Option<Entry> {
        let e = self.entries.remove(mac)?;
        if let Some(t) = e.seen {
            self.order.remove(&(t, *mac));
        }
        Some(e)
    }

    /// Forgets the learned entries not seen for `ageing` by `now`.
    fn expire(&mut self, now: Instant, ageing: Duration) {
        while let Some(&(t, mac)) = self.order.first() {
            if t + ageing > now {
                break;
            }
            self.order.pop_first();
            self.entries.remove(&mac);
            self.counters.aged += 1;
        }
    }

    fn live(&self, mac: &[u8; 6], now: Instant, ageing: Duration) -> Option<Entry> {
        self.entries
            .get(mac)
            .copied()
            .filter(|e| e.seen.is_none_or(|t| t + ageing > now))
    }
}

/// Learned MAC addresses, one table per DC, each bounded and ageing.
#[derive(Debug, Default)]
pub struct MacTables {
    cfg: MacConfig,
    dcs: HashMap<DcId, DcTable>,
}

impl MacTables {
    /// Empty tables that learn and forget as `cfg` says.
    pub fn new(cfg: MacConfig) -> MacTables {
        MacTables {
            cfg,
            dcs: HashMap::new(),
        }
    }

    /// How the tables learn and forget.
    pub fn config(&self) -> MacConfig {
        self.cfg
    }

    /// Records that the node assigned `mac` of `dc` to the port `via`: known from the start, never ages, never
    /// taken over by a frame from elsewhere, gone with the port ([`MacTables::forget`]).
    pub(super) fn assign(&mut self, dc: DcId, mac: [u8; 6], via: Via) {
        let table = self.dcs.entry(dc).or_default();
        table.remove(&mac);
        table.entries.insert(mac, Entry { via, seen: None });
        table.counters.entries = table.entries.len() as u64;
    }

    /// Learns at `now` that `mac` of `dc` sits behind `via`. A MAC assigned to a port is not taken over; one
    /// learned on a local port is not taken over by a peer until it ages out; otherwise the newest place wins
    /// (a move, counted). A new address in a full table evicts the one seen longest ago (counted).
    pub(super) fn learn(&mut self, now: Instant, dc: DcId, mac: [u8; 6], via: Via) {
        let MacConfig { ageing, max_per_dc } = self.cfg;
        let table = self.dcs.entry(dc).or_default();
        table.expire(now, ageing);
        match table.entries.get(&mac).copied() {
            Some(Entry { seen: None, .. }) => {}
            Some(Entry {
                via: Via::Port(_), ..
            }) if matches!(via, Via::Peer(_)) => {}
            Some(Entry {
                via: old,
                seen: Some(t),
            }) => {
                if old != via {
                    table.counters.moved += 1;
                } else if now.saturating_duration_since(t) < REFRESH.min(ageing / 4) {
                    return;
                }
                table.order.remove(&(t, mac));
                table.order.insert((now, mac));
                table.entries.insert(
                    mac,
                    Entry {
                        via,
                        seen: Some(now),
                    },
                );
            }
            None if max_per_dc == 0 => {}
            None => {
                if table.order.len() >= max_per_dc {
                    if let Some((_, oldest)) = table.order.pop_first() {
                        table.entries.remove(&oldest);
                        table.counters.evicted += 1;
                    }
                }
                table.order.insert((now, mac));
                table.entries.insert(
                    mac,
                    Entry {
                        via,
                        seen: Some(now),
                    },
                );
                table.counters.learned += 1;
            }
        }
        table.counters.entries = table.entries.len() as u64;
    }

    /// Where `mac` of `dc` is at `now`, if known and not aged out.
    pub(super) fn get(&self, now: Instant, dc: DcId, mac: &[u8; 6]) -> Option<Via> {
        let e = self.dcs.get(&dc)?.live(mac, now, self.cfg.ageing)?;
        Some(e.via)
    }

    /// Forgets `mac` of `dc` if it was learned behind `via`.
    pub fn forget_mac(&mut self, dc: DcId, mac: &[u8; 6], via: Via) {
        if let Some(table) = self.dcs.get_mut(&dc) {
            if table.entries.get(mac).is_some_and(|e| e.via == via) {
                table.remove(mac);
                table.counters.entries = table.entries.len() as u64;
            }
        }
    }

    /// Forgets every MAC behind `via` (a port removed, a peer down), assigned or learned.
    pub fn forget(&mut self, via: Via) {
        for table in self.dcs.values_mut() {
            let gone: Vec<[u8; 6]> = table
                .entries
                .iter()
                .filter(|(_, e)| e.via == via)
                .map(|(m, _)| *m)
                .collect();
            for mac in gone {
                table.remove(&mac);
            }
            table.counters.entries = table.entries.len() as u64;
        }
    }

    /// The table counters of every DC that has a table.
    pub fn counters(&self) -> impl Iterator<Item = (DcId, &MacCounters)> {
        self.dcs.iter().map(|(dc, t)| (*dc, &t.counters))
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
        now: Instant,
        out: &mut Vec<Out>,
    ) {
        self.dcs.entry(dc.0).or_default().lan.add(frame.len());
        self.macs.learn(now, dc, eth.src, from);
        let to = if eth.is_group() {
            None
        } else {
            self.macs.get(now, dc, &eth.dst)
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

#[cfg(test)]
mod props {
    use super::*;
    use m3ipc_core::NodeId;
    use proptest::prelude::*;

    proptest! {
        /// Whatever arrives, a table holds at most the bound of learned entries, its time order and its entries
        /// agree, and nothing older than the ageing time is reported.
        #[test]
        fn the_table_stays_bounded_and_consistent(
            steps in proptest::collection::vec((0u64..200_000, 0u8..40, 0u8..6, any::<bool>()), 1..300),
        ) {
            let cfg = MacConfig { ageing: Duration::from_secs(60), max_per_dc: 8 };
            let mut t = MacTables::new(cfg);
            let dc = DcId(1);
            t.assign(dc, [2, 0, 0, 0, 0, 255], Via::Port(99));
            let mut now = Instant::from_micros(0);
            for (dt_ms, m, via, forget) in steps {
                now = now + Duration::from_millis(dt_ms);
                let mac = [2, 0, 0, 0, 0, m];
                let via = if via < 3 { Via::Port(u32::from(via)) } else { Via::Peer(NodeId(u16::from(via))) };
                if forget {
                    t.forget(via);
                } else {
                    t.learn(now, dc, mac, via);
                }
                let table = &t.dcs[&dc];
                prop_assert!(table.order.len() <= cfg.max_per_dc);
                let learned = table.entries.values().filter(|e| e.seen.is_some()).count();
                prop_assert_eq!(learned, table.order.len());
                for &(at, mac) in &table.order {
                    prop_assert_eq!(table.entries.get(&mac).and_then(|e| e.seen), Some(at));
                }
                prop_assert_eq!(table.counters.entries, table.entries.len() as u64);
                if let Some(&(at, mac)) = table.order.first() {
                    let reported = t.get(now, dc, &mac).is_some();
                    prop_assert_eq!(reported, at + cfg.ageing > now);
                }
                prop_assert_eq!(t.get(now, dc, &[2, 0, 0, 0, 0, 255]), Some(Via::Port(99)));
            }
        }
    }
}
