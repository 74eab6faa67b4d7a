//! Routing of M3-IPC frames by (DC, destination endpoint), and the Error/Migrated answers of the proxy.

use bytes::Bytes;
use m3ipc_core::wire::ethernet::{EthernetHeader, ETH_HEADER_LEN};
use m3ipc_core::wire::{FrameRepr, Kind, ETHERTYPE_M3IPC};
use m3ipc_core::{DcId, Endpoint, ErrorCode, Instant};

use super::{Out, Switch, Via, PROXY_MAC};
use crate::counters::Drop;
use crate::placement::Place;

/// How a frame reached the switch: through which port or peer, when, and how many more times it may be
/// forwarded between nodes.
#[derive(Clone, Copy, Debug)]
pub(super) struct Arrival {
    /// The port or peer it came from.
    pub from: Via,
    /// When.
    pub now: Instant,
    /// Forwards left.
    pub hops: u8,
}

impl Switch {
    /// Routes one checked M3-IPC frame that came in as `arrival` says.
    pub(super) fn route_m3(
        &mut self,
        arrival: Arrival,
        eth: EthernetHeader,
        repr: &FrameRepr,
        frame: Bytes,
        out: &mut Vec<Out>,
    ) {
        let Arrival { from, now, hops } = arrival;
        // An answer settles its call wherever the call went (after a redirect it comes back another way).
        if matches!(
            repr.kind,
            Kind::Reply | Kind::Delivered | Kind::Error | Kind::VcopyFin
        ) {
            let mut settled = None;
            for pending in self.pending.values_mut() {
                settled = pending.settle(repr).or(settled);
            }
            if let Some(call) = settled {
                let calls = &mut self.dcs.entry(repr.dc.0).or_default().calls;
                let took = now.as_micros().saturating_sub(call.since.as_micros());
                match (repr.kind, call.kind) {
                    (Kind::Error, _) => calls.failed += 1,
                    (_, Kind::SendRec) => calls.sendrec.observe(took),
                    (_, Kind::Send) => calls.send.observe(took),
                    (_, Kind::VcopyOpen) => calls.vcopy.observe(took),
                    _ => {}
                }
            }
        }
        let dc = repr.dc;
        self.dcs.entry(dc.0).or_default().m3ipc.add(frame.len());
        match self.places.get(&(dc, repr.dst)).copied() {
            Some(Place {
                port: Some(port), ..
            }) => {
                self.pending
                    .entry(Via::Port(port))
                    .or_default()
                    .track(now, repr, eth);
                self.deliver(port, frame, out);
            }
            Some(Place { node, .. }) if node == self.node => {
                self.refuse(from, eth, repr, ErrorCode::UnknownDestination, out)
            }
            Some(Place { node, .. }) => {
                if matches!(from, Via::Peer(_)) && hops == 0 {
                    // Directories disagree for now (an endpoint is moving): let the engine resend later.
                    self.count_drop(from, Drop::Loop);
                    return self.refuse(from, eth, repr, ErrorCode::Migrated, out);
                }
                if !self.peer_is_up(node) {
                    return self.refuse(from, eth, repr, ErrorCode::NodeUnreachable, out);
                }
                let hops = if matches!(from, Via::Peer(_)) {
                    hops - 1
                } else {
                    hops
                };
                if matches!(from, Via::Port(_)) {
                    self.pending
                        .entry(Via::Peer(node))
                        .or_default()
                        .track(now, repr, eth);
                }
                out.push(Out::Peer {
                    node,
                    dc,
                    hops,
                    frame,
                });
            }
            // An endpoint of another DC gets the same answer as one that does not exist: the
            // caller learns nothing about other DCs. The operator's counters tell them apart.
            None => {
                if self.exists_in_other_dc(dc, repr.dst) {
                    self.dcs.entry(dc.0).or_default().refused.other_dc += 1;
                }
                self.refuse(from, eth, repr, ErrorCode::UnknownDestination, out)
            }
        }
    }

    fn exists_in_other_dc(&self, dc: DcId, ep: Endpoint) -> bool {
        self.cluster
            .dcs
            .iter()
            .any(|d| d.id != dc.0 && self.places.contains_key(&(DcId(d.id), ep)))
    }

    /// Hands a frame to a local port.
    pub(super) fn deliver(&mut self, port: u32, frame: Bytes, out: &mut Vec<Out>) {
        if let Some(p) = self.ports.get_mut(&port) {
            p.counters.tx.add(frame.len());
            out.push(Out::Port(port, frame));
        }
    }

    /// Answers a frame that cannot go on with an Error (or Migrated) frame back the way it came. Answers are
    /// never answered, so two routers cannot bounce errors between them.
    fn refuse(
        &mut self,
        from: Via,
        eth: EthernetHeader,
        repr: &FrameRepr,
        code: ErrorCode,
        out: &mut Vec<Out>,
    ) {
        let dc = repr.dc;
        self.count_drop(from, Drop::NoRoute);
        let c = self.dcs.entry(dc.0).or_default();
        c.drops.add(Drop::NoRoute);
        if !repr.wants_error_reply() {
            return;
        }
        let r = &mut c.refused;
        match code {
            ErrorCode::NodeUnreachable => r.node_unreachable += 1,
            ErrorCode::DeadDestination => r.dead_destination += 1,
            ErrorCode::Migrated => r.migrated += 1,
            _ => r.unknown_destination += 1,
        }
        let answer = if code == ErrorCode::Migrated {
            repr.migrated_reply()
        } else {
            repr.error_reply(code)
        };
        let Some(bytes) = answer_frame(eth, &answer) else {
            return;
        };
        match from {
            Via::Port(port) => self.deliver(port, bytes, out),
            Via::Peer(node) => out.push(Out::Peer {
                node,
                dc,
                hops: 1,
                frame: bytes,
            }),
        }
    }

    /// Fails every call in progress through `via` with `code`, answering each caller where it is.
    pub(super) fn fail_pending(&mut self, via: Via, code: ErrorCode, out: &mut Vec<Out>) {
        let Some(mut pending) = self.pending.remove(&via) else {
            return;
        };
        for (dc, src, call) in pending.drain() {
            let request = call.request(dc, src);
            let answer = if code == ErrorCode::Migrated {
                request.migrated_reply()
            } else {
                request.error_reply(code)
            };
            let Some(bytes) = answer_frame(call.eth, &answer) else {
                continue;
            };
            match self.places.get(&(dc, src)).copied() {
                Some(Place {
                    port: Some(port), ..
                }) => self.deliver(port, bytes, out),
                Some(Place { node, .. }) if node != self.node && self.peer_is_up(node) => {
                    out.push(Out::Peer {
                        node,
                        dc,
                        hops: 1,
                        frame: bytes,
                    })
                }
                _ => {}
            }
        }
    }
}

/// An Ethernet frame carrying `answer` back to the sender of a frame with header `eth`.
fn answer_frame(eth: EthernetHeader, answer: &FrameRepr) -> Option<Bytes> {
    let src = if eth.dst[0] & 1 == 1 {
        PROXY_MAC
    } else {
        eth.dst
    };
    let header = EthernetHeader {
        dst: eth.src,
        src,
        ethertype: ETHERTYPE_M3IPC,
    };
    let mut buf = vec![0u8; ETH_HEADER_LEN + answer.buffer_len()];
    header.emit(&mut buf).ok()?;
    answer.emit(&mut buf[ETH_HEADER_LEN..]).ok()?;
    Some(Bytes::from(buf))
}
