//! Switch behaviour on plain byte vectors.

use super::*;
use crate::cluster::{DcInfo, DcLimit, NodeInfo};
use crate::counters::Histogram;
use m3ipc_core::wire::ethernet::ETH_HEADER_LEN;
use m3ipc_core::wire::{Kind, HEADER_LEN};
use proptest::prelude::*;

const N1: NodeId = NodeId(1);
const N2: NodeId = NodeId(2);
const DC1: DcId = DcId(1);
const DC2: DcId = DcId(2);
/// The switch's clock in tests: any origin will do.
const T0: Instant = Instant::from_micros(1_000_000);

/// `secs` seconds after [`T0`].
fn at(secs: u64) -> Instant {
    T0 + std::time::Duration::from_secs(secs)
}

fn cluster() -> ClusterMap {
    let node = |id: u16| NodeInfo {
        id,
        proxy: format!("127.0.0.1:{}", 7000 + id).parse().unwrap(),
        api: format!("127.0.0.1:{}", 8000 + id).parse().unwrap(),
    };
    ClusterMap {
        nodes: vec![node(1), node(2), node(3)],
        dcs: vec![
            DcInfo {
                id: 1,
                name: "one".into(),
                nodes: vec![1, 2, 3],
                limit: Default::default(),
                quota: Default::default(),
            },
            DcInfo {
                id: 2,
                name: "two".into(),
                nodes: vec![1, 2],
                limit: Default::default(),
                quota: Default::default(),
            },
        ],
    }
}

fn mac(n: u8) -> [u8; 6] {
    [0x02, 0, 0, 0, 0, n]
}

fn spec(name: &str, dc: DcId, eps: &[u32], m: u8) -> PortSpec {
    PortSpec {
        name: name.into(),
        dc,
        endpoints: eps.iter().map(|&e| Endpoint(e)).collect(),
        mac: Some(mac(m)),
        gen: 10,
        announce: Announce::Now,
    }
}

fn m3(kind: Kind, dc: DcId, src: u32, dst: u32, seq: u64) -> Bytes {
    m3_code(kind, 0, dc, src, dst, seq)
}

/// An M3-IPC frame with an error code (Error frames need one).
fn m3_code(kind: Kind, code: u16, dc: DcId, src: u32, dst: u32, seq: u64) -> Bytes {
    let payload = match kind {
        Kind::Send | Kind::SendRec | Kind::Reply => vec![0u8; 60],
        _ => vec![],
    };
    let repr = FrameRepr {
        kind,
        dc,
        flags: 0,
        src: Endpoint(src),
        dst: Endpoint(dst),
        seq,
        aux: 0,
        code,
        payload: &payload,
    };
    let mut buf = vec![0u8; ETH_HEADER_LEN + repr.buffer_len()];
    EthernetHeader {
        dst: [0xff; 6],
        src: mac(src as u8),
        ethertype: ETHERTYPE_M3IPC,
    }
    .emit(&mut buf)
    .unwrap();
    repr.emit(&mut buf[ETH_HEADER_LEN..]).unwrap();
    Bytes::from(buf)
}

fn lan(src: [u8; 6], dst: [u8; 6]) -> Bytes {
    let mut buf = vec![0u8; 60];
    EthernetHeader {
        dst,
        src,
        ethertype: 0x0806,
    }
    .emit(&mut buf)
    .unwrap();
    Bytes::from(buf)
}

fn answer(out: &Out) -> (Kind, u16, u32, u32, u64) {
    let bytes = match out {
        Out::Port(_, b) => b,
        Out::Peer { frame, .. } => frame,
        Out::Dir(..) => panic!("not a frame: {out:?}"),
    };
    let r = FrameRepr::parse(&bytes[ETH_HEADER_LEN..]).unwrap();
    (r.kind, r.code, r.src.0, r.dst.0, r.aux)
}

fn frames(out: Vec<Out>) -> Vec<Out> {
    out.into_iter()
        .filter(|o| !matches!(o, Out::Dir(..)))
        .collect()
}

/// Node 1 with ports a (DC 1, ep 10), b (DC 1, ep 20), c (DC 2, ep 30); node 2 holds ep 40 of DC 1.
fn node1() -> (Switch, PortId, PortId, PortId) {
    let mut s = Switch::new(N1, cluster());
    let mut out = vec![];
    let a = s.add_port(T0, spec("a", DC1, &[10], 10), &mut out).unwrap();
    let b = s.add_port(T0, spec("b", DC1, &[20], 20), &mut out).unwrap();
    let c = s.add_port(T0, spec("c", DC2, &[30], 30), &mut out).unwrap();
    s.peer_up(N2, &mut out);
    s.handle_dir(
        T0,
        N2,
        DirMsg::Snapshot(vec![Binding {
            dc: 1,
            ep: 40,
            gen: 5,
        }]),
    );
    (s, a, b, c)
}

#[test]
fn same_node_sendrec_goes_to_the_port() {
    let (mut s, a, b, _) = node1();
    let mut out = vec![];
    let f = m3(Kind::SendRec, DC1, 10, 20, 1);
    s.port_frame(T0, a, f.clone(), &mut out);
    assert_eq!(out, vec![Out::Port(b, f)]);
    assert_eq!(s.port_pending(b), 1);
    let mut out = vec![];
    s.port_frame(T0, b, m3(Kind::Reply, DC1, 20, 10, 1), &mut out);
    assert!(matches!(out[0], Out::Port(p, _) if p == a));
    assert_eq!(s.port_pending(b), 0);
}

#[test]
fn other_node_goes_to_the_peer_and_down_peer_is_unreachable() {
    let (mut s, a, _, _) = node1();
    let mut out = vec![];
    s.port_frame(T0, a, m3(Kind::SendRec, DC1, 10, 40, 7), &mut out);
    assert!(matches!(
        out[0],
        Out::Peer {
            node: N2,
            dc: DC1,
            hops: FIRST_HOPS,
            ..
        }
    ));
    // The link drops with the call in progress: the caller hears NodeUnreachable at once.
    let mut out = vec![];
    s.peer_down(N2, &mut out);
    assert_eq!(
        answer(&out[0]),
        (Kind::Error, ErrorCode::NodeUnreachable as u16, 40, 10, 7)
    );
    let mut out = vec![];
    s.port_frame(T0, a, m3(Kind::SendRec, DC1, 10, 40, 8), &mut out);
    assert_eq!(
        answer(&out[0]),
        (Kind::Error, ErrorCode::NodeUnreachable as u16, 40, 10, 8)
    );
    assert_eq!(s.stats().dcs[&1].refused.node_unreachable, 1);
}

#[test]
fn unknown_and_other_dc_endpoints_are_refused() {
    let (mut s, a, _, c) = node1();
    let mut out = vec![];
    s.port_frame(T0, a, m3(Kind::Send, DC1, 10, 99, 1), &mut out);
    assert_eq!(answer(&out[0]).1, ErrorCode::UnknownDestination as u16);
    let mut out = vec![];
    s.port_frame(T0, c, m3(Kind::SendRec, DC2, 30, 10, 1), &mut out);
    assert_eq!(
        answer(&out[0]),
        (Kind::Error, ErrorCode::UnknownDestination as u16, 10, 30, 1),
        "an endpoint of another DC looks like one that does not exist"
    );
    assert_eq!(s.stats().dcs[&2].refused.other_dc, 1);
    assert!(matches!(out[0], Out::Port(p, _) if p == c));
    // Answers are never answered.
    let mut out = vec![];
    s.port_frame(T0, a, m3(Kind::Reply, DC1, 10, 99, 1), &mut out);
    assert!(out.is_empty());
}

#[test]
fn spoofed_and_malformed_frames_are_dropped_and_counted() {
    let (mut s, a, _, _) = node1();
    let mut out = vec![];
    s.port_frame(T0, a, m3(Kind::Send, DC1, 20, 10, 1), &mut out); // as b's endpoint
    s.port_frame(T0, a, m3(Kind::Send, DC2, 10, 30, 1), &mut out); // as another DC
    s.port_frame(T0, a, lan(mac(99), [0xff; 6]), &mut out); // as another MAC
    s.port_frame(T0, a, Bytes::from_static(&[1, 2, 3]), &mut out);
    let mut bad = m3(Kind::Send, DC1, 10, 20, 1).to_vec();
    bad[ETH_HEADER_LEN] = 0; // magic
    s.port_frame(T0, a, Bytes::from(bad), &mut out);
    assert!(out.is_empty(), "{out:?}");
    let c = s.port_counters(a).unwrap();
    assert_eq!((c.drops.spoofed, c.drops.malformed, c.rx.frames), (3, 2, 5));
}

#[test]
fn lan_floods_only_inside_the_dc_and_learns() {
    let (mut s, a, b, _) = node1();
    let mut out = vec![];
    s.port_frame(T0, a, lan(mac(10), [0xff; 6]), &mut out);
    assert_eq!(out.len(), 2, "{out:?}"); // b and node 2; not c (DC 2), not node 3 (down)
    assert!(matches!(out[0], Out::Port(p, _) if p == b));
    assert!(matches!(
        out[1],
        Out::Peer {
            node: N2,
            dc: DC1,
            ..
        }
    ));
    // b answers a unicast: a's MAC was learned, so no flood.
    let mut out = vec![];
    s.port_frame(T0, b, lan(mac(20), mac(10)), &mut out);
    assert_eq!(out, vec![Out::Port(a, lan(mac(20), mac(10)))]);
    // A frame from node 2 for DC 2 ports never reaches DC 1 ports.
    let mut out = vec![];
    s.peer_frame(T0, N2, DC2, 0, lan(mac(77), [0xff; 6]), &mut out);
    assert_eq!(out.len(), 1);
    assert!(matches!(out[0], Out::Port(3, _)));
}

#[test]
fn a_mac_that_left_a_node_floods_again() {
    let (mut s, a, _, _) = node1();
    let mut out = vec![];
    // Node 2 holds MAC 77 of DC 1; a's unicast to it goes to node 2 only.
    s.peer_frame(T0, N2, DC1, 0, lan(mac(77), [0xff; 6]), &mut out);
    let mut out = vec![];
    s.port_frame(T0, a, lan(mac(10), mac(77)), &mut out);
    assert_eq!(out.len(), 1);
    assert!(matches!(out[0], Out::Peer { node: N2, .. }));
    // It moved away from node 2: the next unicast floods the DC (and finds its new place).
    s.handle_dir(
        T0,
        N2,
        DirMsg::MacGone {
            dc: 1,
            mac: mac(77),
        },
    );
    let mut out = vec![];
    s.port_frame(T0, a, lan(mac(10), mac(77)), &mut out);
    assert_eq!(out.len(), 2, "{out:?}"); // port b and node 2 (node 3 is down)
}

#[test]
fn a_new_port_is_reachable_by_its_mac_before_it_speaks() {
    let (mut s, _, _, _) = node1();
    let mut out = vec![];
    let x = s.add_port(T0, spec("x", DC1, &[60], 60), &mut out).unwrap();
    let mut out = vec![];
    s.peer_frame(T0, N2, DC1, 0, lan(mac(77), mac(60)), &mut out);
    assert_eq!(out, vec![Out::Port(x, lan(mac(77), mac(60)))]);
    let mut out = vec![];
    s.remove_port(x, &mut out).unwrap();
    assert!(out
        .iter()
        .any(|o| matches!(o, Out::Dir(None, DirMsg::MacGone { dc: 1, .. }))));
}

/// A port of DC 1 holding endpoint `ep` with no assigned MAC: its MAC addresses are learned, not known.
fn free_port(s: &mut Switch, name: &str, ep: u32) -> PortId {
    let spec = PortSpec {
        mac: None,
        ..spec(name, DC1, &[ep], 0)
    };
    s.add_port(T0, spec, &mut vec![]).unwrap()
}

/// Where a unicast from port `from` to `dst` goes.
fn unicast(s: &mut Switch, now: Instant, from: PortId, src: u8, dst: u8) -> Vec<Out> {
    let mut out = vec![];
    s.port_frame(now, from, lan(mac(src), mac(dst)), &mut out);
    out
}

fn to_n2_only(out: &[Out]) -> bool {
    matches!(out, [Out::Peer { node: N2, .. }])
}

#[test]
fn learned_macs_age_out_unless_they_keep_sending() {
    let (mut s, a, _, _) = node1();
    s.peer_frame(at(0), N2, DC1, 0, lan(mac(77), [0xff; 6]), &mut vec![]);
    s.peer_frame(at(0), N2, DC1, 0, lan(mac(78), [0xff; 6]), &mut vec![]);
    assert!(to_n2_only(&unicast(&mut s, at(299), a, 10, 77)));
    // 78 keeps sending; 77 falls silent.
    s.peer_frame(at(200), N2, DC1, 0, lan(mac(78), [0xff; 6]), &mut vec![]);
    let out = unicast(&mut s, at(300), a, 10, 77);
    assert_eq!(
        out.len(),
        2,
        "aged out, so it floods to b and node 2: {out:?}"
    );
    assert!(to_n2_only(&unicast(&mut s, at(499), a, 10, 78)));
    assert_eq!(unicast(&mut s, at(500), a, 10, 78).len(), 2);
    let macs = s.stats().dcs[&1].macs;
    assert_eq!(
        (macs.learned, macs.aged, macs.entries),
        (2, 2, 2),
        "{macs:?}"
    );
}

#[test]
fn the_ageing_time_is_configurable_and_assigned_macs_never_age() {
    let cfg = MacConfig {
        ageing: std::time::Duration::from_secs(10),
        ..MacConfig::default()
    };
    let mut s = Switch::with_macs(N1, cluster(), cfg);
    assert_eq!(s.mac_config(), cfg);
    let mut out = vec![];
    let a = s.add_port(T0, spec("a", DC1, &[10], 10), &mut out).unwrap();
    let b = s.add_port(T0, spec("b", DC1, &[20], 20), &mut out).unwrap();
    s.peer_up(N2, &mut out);
    s.peer_frame(at(0), N2, DC1, 0, lan(mac(77), [0xff; 6]), &mut vec![]);
    assert!(to_n2_only(&unicast(&mut s, at(9), a, 10, 77)));
    assert_eq!(unicast(&mut s, at(10), a, 10, 77).len(), 2);
    // a's MAC was assigned by the node: still known after a day of silence.
    assert_eq!(
        unicast(&mut s, at(86_400), b, 20, 10),
        vec![Out::Port(a, lan(mac(20), mac(10)))]
    );
}

#[test]
fn macs_move_between_ports_and_peers() {
    let (mut s, a, _, _) = node1();
    let p = free_port(&mut s, "p", 50);
    let q = free_port(&mut s, "q", 51);
    // 88 speaks on port p, then on port q: it moved.
    s.port_frame(at(0), p, lan(mac(88), [0xff; 6]), &mut vec![]);
    s.port_frame(at(1), q, lan(mac(88), [0xff; 6]), &mut vec![]);
    assert_eq!(
        unicast(&mut s, at(2), a, 10, 88),
        vec![Out::Port(q, lan(mac(10), mac(88)))]
    );
    // A peer does not take over a MAC fresh on a local port...
    s.peer_frame(at(3), N2, DC1, 0, lan(mac(88), [0xff; 6]), &mut vec![]);
    assert_eq!(
        unicast(&mut s, at(4), a, 10, 88),
        vec![Out::Port(q, lan(mac(10), mac(88)))]
    );
    // ...but does once it aged out there.
    s.peer_frame(at(301), N2, DC1, 0, lan(mac(88), [0xff; 6]), &mut vec![]);
    assert!(to_n2_only(&unicast(&mut s, at(302), a, 10, 88)));
    // From a peer back to a port: at once.
    s.port_frame(at(303), p, lan(mac(88), [0xff; 6]), &mut vec![]);
    assert_eq!(
        unicast(&mut s, at(304), a, 10, 88),
        vec![Out::Port(p, lan(mac(10), mac(88)))]
    );
    // Nobody takes over a MAC the node assigned to a port (a's).
    s.peer_frame(at(305), N2, DC1, 0, lan(mac(10), [0xff; 6]), &mut vec![]);
    s.port_frame(at(305), p, lan(mac(10), [0xff; 6]), &mut vec![]);
    assert_eq!(
        unicast(&mut s, at(306), q, 50, 10),
        vec![Out::Port(a, lan(mac(50), mac(10)))]
    );
    let macs = s.stats().dcs[&1].macs;
    // Learned: 88 on p, 88 again on node 2 after it aged out on q, and 50 (q's source address).
    // Moved: 88 from p to q, and from node 2 to p.
    assert_eq!((macs.learned, macs.moved, macs.aged), (3, 2, 1), "{macs:?}");
}

#[test]
fn a_port_takes_its_macs_with_it() {
    let (mut s, a, _, _) = node1();
    let p = free_port(&mut s, "p", 50);
    s.port_frame(at(0), p, lan(mac(88), [0xff; 6]), &mut vec![]);
    s.port_frame(at(0), p, lan(mac(89), [0xff; 6]), &mut vec![]);
    let entries = |s: &Switch| s.stats().dcs[&1].macs.entries;
    assert_eq!(entries(&s), 4, "a's, b's, 88 and 89");
    s.remove_port(p, &mut vec![]).unwrap();
    assert_eq!(entries(&s), 2);
    assert_eq!(
        unicast(&mut s, at(1), a, 10, 88).len(),
        2,
        "floods: b and node 2"
    );
    // A removed port's assigned MAC goes too.
    s.remove_port(a, &mut vec![]).unwrap();
    assert_eq!(entries(&s), 1);
    // And a peer's MACs when its link drops.
    s.peer_frame(at(3), N2, DC1, 0, lan(mac(77), [0xff; 6]), &mut vec![]);
    assert_eq!(entries(&s), 2);
    s.peer_down(N2, &mut vec![]);
    assert_eq!(entries(&s), 1, "only b's is left");
}

#[test]
fn a_full_table_drops_the_entry_seen_longest_ago() {
    let cfg = MacConfig {
        max_per_dc: 3,
        ..MacConfig::default()
    };
    let mut s = Switch::with_macs(N1, cluster(), cfg);
    let mut out = vec![];
    let a = s.add_port(T0, spec("a", DC1, &[10], 10), &mut out).unwrap();
    s.add_port(T0, spec("b", DC1, &[20], 20), &mut out).unwrap();
    s.add_port(T0, spec("c", DC2, &[30], 30), &mut out).unwrap();
    s.peer_up(N2, &mut out);
    for (t, m) in [(1, 71), (2, 72), (3, 73), (4, 71)] {
        s.peer_frame(at(t), N2, DC1, 0, lan(mac(m), [0xff; 6]), &mut vec![]);
    }
    // DC 2's table is its own: a full DC 1 costs it nothing.
    s.peer_frame(at(4), N2, DC2, 0, lan(mac(71), [0xff; 6]), &mut vec![]);
    // 74 is new and the table is full: 72 (seen at 2 s; 71 was seen again at 4 s) makes room.
    s.peer_frame(at(5), N2, DC1, 0, lan(mac(74), [0xff; 6]), &mut vec![]);
    for m in [71, 73, 74] {
        assert!(to_n2_only(&unicast(&mut s, at(6), a, 10, m)), "{m} is kept");
    }
    let out = unicast(&mut s, at(6), a, 10, 72);
    assert_eq!(
        out.len(),
        2,
        "72 was dropped, so it floods to b and node 2: {out:?}"
    );
    let macs = s.stats().dcs[&1].macs;
    // Three learned plus a's and b's assigned MACs (assigned ones do not count against the bound).
    assert_eq!(
        (macs.learned, macs.evicted, macs.entries),
        (4, 1, 5),
        "{macs:?}"
    );
    let dc2 = s.stats().dcs[&2].macs;
    assert_eq!(
        (dc2.evicted, dc2.entries),
        (0, 2),
        "c's MAC and 71: {dc2:?}"
    );
}

#[test]
fn a_zero_bound_learns_nothing() {
    let cfg = MacConfig {
        max_per_dc: 0,
        ..MacConfig::default()
    };
    let mut s = Switch::with_macs(N1, cluster(), cfg);
    let mut out = vec![];
    let a = s.add_port(T0, spec("a", DC1, &[10], 10), &mut out).unwrap();
    s.add_port(T0, spec("b", DC1, &[20], 20), &mut out).unwrap();
    s.peer_up(N2, &mut out);
    s.peer_frame(at(0), N2, DC1, 0, lan(mac(77), [0xff; 6]), &mut vec![]);
    assert_eq!(s.stats().dcs[&1].macs.learned, 0);
    assert_eq!(
        unicast(&mut s, at(1), a, 10, 77).len(),
        2,
        "unknown: floods"
    );
}

#[test]
fn peers_outside_the_dc_are_refused() {
    let (mut s, _, _, _) = node1();
    let mut out = vec![];
    s.peer_frame(T0, NodeId(3), DC2, 0, lan(mac(77), [0xff; 6]), &mut out);
    s.peer_frame(T0, N2, DC1, 1, m3(Kind::Send, DC2, 40, 30, 1), &mut out);
    assert!(out.is_empty());
    assert_eq!(s.stats().peers[&2].drops.wrong_dc, 1);
    assert_eq!(s.stats().peers[&3].drops.wrong_dc, 1);
}

#[test]
fn removed_port_fails_calls_in_progress() {
    let (mut s, a, b, _) = node1();
    let mut out = vec![];
    s.port_frame(T0, a, m3(Kind::SendRec, DC1, 10, 20, 3), &mut out);
    let mut out = vec![];
    s.remove_port(b, &mut out).unwrap();
    assert!(out
        .iter()
        .any(|o| matches!(o, Out::Dir(None, DirMsg::Unbind { moved_to: None, .. }))));
    let f = frames(out);
    assert_eq!(
        answer(&f[0]),
        (Kind::Error, ErrorCode::DeadDestination as u16, 20, 10, 3)
    );
    let mut out = vec![];
    s.port_frame(T0, a, m3(Kind::SendRec, DC1, 10, 20, 4), &mut out);
    assert_eq!(answer(&out[0]).1, ErrorCode::UnknownDestination as u16);
}

#[test]
fn moved_endpoints_are_forwarded_and_newer_bindings_win() {
    let (mut s, a, b, _) = node1();
    let mut out = vec![];
    s.move_port(b, N2, 20, &mut out).unwrap();
    assert!(out.iter().any(|o| matches!(
        o,
        Out::Dir(
            None,
            DirMsg::Unbind {
                moved_to: Some(2),
                ..
            }
        )
    )));
    let mut out = vec![];
    s.port_frame(T0, a, m3(Kind::SendRec, DC1, 10, 20, 1), &mut out);
    assert!(matches!(out[0], Out::Peer { node: N2, .. }));
    // An older binding from node 3 does not take the endpoint back.
    s.handle_dir(
        T0,
        NodeId(3),
        DirMsg::Bind(Binding {
            dc: 1,
            ep: 20,
            gen: 15,
        }),
    );
    assert_eq!(s.lookup(DC1, Endpoint(20)).unwrap().node, N2);
    // Nor does a newer one: node 2 holds it and granted nothing.
    let bind25 = DirMsg::Bind(Binding {
        dc: 1,
        ep: 20,
        gen: 25,
    });
    s.handle_dir(T0, NodeId(3), bind25);
    assert_eq!(s.lookup(DC1, Endpoint(20)).unwrap().node, N2);
    assert_eq!(s.stats().peers[&3].dir_refused, 2, "both refused");
    // Node 2 hands it over to node 3 (its grant arriving after node 3's binding): now it moves.
    let grant = DirMsg::Handover {
        binding: Binding {
            dc: 1,
            ep: 20,
            gen: 25,
        },
        to: 3,
    };
    s.handle_dir(T0, N2, grant);
    assert_eq!(s.lookup(DC1, Endpoint(20)).unwrap().node, NodeId(3));
    assert_eq!(s.lookup(DC1, Endpoint(20)).unwrap().gen, 25);
    // A frame arriving from a peer with no hops left for a remote endpoint is refused with Migrated.
    let mut out = vec![];
    s.peer_frame(T0, N2, DC1, 0, m3(Kind::SendRec, DC1, 40, 20, 9), &mut out);
    assert_eq!(answer(&out[0]).0, Kind::Migrated);
}

#[test]
fn an_answer_coming_back_another_way_settles_the_call() {
    let (mut s, a, _, _) = node1();
    let mut out = vec![];
    s.port_frame(T0, a, m3(Kind::SendRec, DC1, 10, 40, 5), &mut out); // tracked towards node 2
    s.peer_up(NodeId(3), &mut out);
    // Endpoint 40 moved to node 3 (node 2 handed it over), which answers directly.
    let b = Binding {
        dc: 1,
        ep: 40,
        gen: 6,
    };
    s.handle_dir(T0, N2, DirMsg::Handover { binding: b, to: 3 });
    s.handle_dir(T0, NodeId(3), DirMsg::Bind(b));
    s.peer_frame(
        T0,
        NodeId(3),
        DC1,
        1,
        m3(Kind::Reply, DC1, 40, 10, 5),
        &mut out,
    );
    let mut out = vec![];
    s.peer_down(N2, &mut out);
    assert!(
        frames(out).is_empty(),
        "no NodeUnreachable for an answered call"
    );
}

#[test]
fn a_taking_over_port_announces_on_its_first_frame() {
    let mut s = Switch::new(N1, cluster());
    let mut out = vec![];
    let mut sp = spec("x", DC1, &[50], 50);
    sp.announce = Announce::OnFirstFrame;
    let x = s.add_port(T0, sp, &mut out).unwrap();
    assert!(out.is_empty());
    s.port_frame(T0, x, lan(mac(50), [0xff; 6]), &mut out);
    assert!(out
        .iter()
        .any(|o| matches!(o, Out::Dir(None, DirMsg::Bind(Binding { ep: 50, .. })))));
    assert!(matches!(
        s.add_port(T0, spec("y", DC1, &[50], 51), &mut out),
        Err(SwitchError::EndpointTaken { .. })
    ));
    assert!(matches!(
        s.add_port(T0, spec("z", DcId(9), &[1], 1), &mut out),
        Err(SwitchError::UnknownDc(_))
    ));
}

#[test]
fn preloaded_placements_make_a_down_node_unreachable_not_unknown() {
    let (old, a, _, _) = node1();
    let saved = old.placements();
    let mut s = Switch::new(N1, cluster());
    let mut out = vec![];
    let a2 = s.add_port(T0, spec("a", DC1, &[10], 10), &mut out).unwrap();
    s.preload(&saved);
    assert_eq!(s.lookup(DC1, Endpoint(40)).unwrap().node, N2);
    assert!(
        s.lookup(DC1, Endpoint(10)).unwrap().port.is_some(),
        "local ones stay local"
    );
    let mut out = vec![];
    s.port_frame(T0, a2, m3(Kind::SendRec, DC1, 10, 40, 1), &mut out);
    assert_eq!(answer(&out[0]).1, ErrorCode::NodeUnreachable as u16);
    let _ = a;
}

#[test]
fn snapshot_replaces_what_a_node_held() {
    let (mut s, _, _, _) = node1();
    s.handle_dir(
        T0,
        N2,
        DirMsg::Snapshot(vec![Binding {
            dc: 1,
            ep: 41,
            gen: 6,
        }]),
    );
    assert!(s.lookup(DC1, Endpoint(40)).is_none());
    assert_eq!(s.lookup(DC1, Endpoint(41)).unwrap().node, N2);
    // Node 3 may not bind in DC 2, which does not span it.
    s.handle_dir(
        T0,
        NodeId(3),
        DirMsg::Bind(Binding {
            dc: 2,
            ep: 42,
            gen: 6,
        }),
    );
    assert!(s.lookup(DC2, Endpoint(42)).is_none());
}

fn m3_frame_strategy() -> impl Strategy<Value = Vec<u8>> {
    (
        any::<u8>(),
        0u16..4,
        any::<u16>(),
        0u32..64,
        0u32..64,
        any::<u64>(),
        proptest::collection::vec(any::<u8>(), 0..80),
    )
        .prop_map(|(kind, dc, flags, src, dst, seq, payload)| {
            let mut f = vec![0u8; ETH_HEADER_LEN + HEADER_LEN];
            f[12..14].copy_from_slice(&ETHERTYPE_M3IPC.to_be_bytes());
            let h = &mut f[ETH_HEADER_LEN..];
            h[0..2].copy_from_slice(&0x4D33u16.to_be_bytes());
            h[2] = 1;
            h[3] = kind % 15;
            h[4..6].copy_from_slice(&dc.to_be_bytes());
            h[6..8].copy_from_slice(&(flags & 7).to_be_bytes());
            h[8..12].copy_from_slice(&src.to_be_bytes());
            h[12..16].copy_from_slice(&dst.to_be_bytes());
            h[16..24].copy_from_slice(&seq.to_be_bytes());
            h[32..34].copy_from_slice(&(payload.len() as u16).to_be_bytes());
            f.extend_from_slice(&payload);
            f
        })
}

proptest! {
    #[test]
    fn any_bytes_from_a_port_or_peer_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200), dc in 0u16..4, hops in 0u8..3) {
        let (mut s, a, _, _) = node1();
        let mut out = vec![];
        s.port_frame(T0, a, Bytes::from(bytes.clone()), &mut out);
        s.peer_frame(T0, N2, DcId(dc), hops, Bytes::from(bytes), &mut out);
    }

    #[test]
    fn nothing_leaves_a_port_as_another_endpoint(frame in m3_frame_strategy()) {
        let (mut s, a, _, _) = node1();
        let mut out = vec![];
        s.port_frame(T0, a, Bytes::from(frame.clone()), &mut out);
        let sent_as_a = FrameRepr::parse(&frame[ETH_HEADER_LEN..]).is_ok_and(|r| r.dc == DC1 && r.src == Endpoint(10));
        for o in &out {
            match o {
                Out::Port(p, _) if *p == a => {} // an Error frame back to the sender
                Out::Dir(..) => {}
                _ => prop_assert!(sent_as_a, "{o:?} left for {frame:?}"),
            }
        }
        let c = s.port_counters(a).unwrap();
        prop_assert_eq!(c.rx.frames, 1);
    }
}

const N3: NodeId = NodeId(3);

fn bind(ep: u32, gen: u64) -> DirMsg {
    DirMsg::Bind(Binding { dc: 1, ep, gen })
}

#[test]
fn a_bind_cannot_steal_another_nodes_endpoint() {
    let (mut s, _, _, _) = node1();
    let before = s.placements();
    // Node 3 claims node 1's endpoint 10 and node 2's endpoint 40 with the largest generation there is, by
    // every message it has.
    s.handle_dir(T0, N3, bind(10, u64::MAX));
    s.handle_dir(T0, N3, bind(40, u64::MAX));
    s.handle_dir(
        T0,
        N3,
        DirMsg::Snapshot(vec![
            Binding {
                dc: 1,
                ep: 10,
                gen: u64::MAX,
            },
            Binding {
                dc: 1,
                ep: 40,
                gen: u64::MAX,
            },
        ]),
    );
    let unbind = |ep| DirMsg::Unbind {
        binding: Binding {
            dc: 1,
            ep,
            gen: u64::MAX,
        },
        moved_to: Some(3),
    };
    s.handle_dir(T0, N3, unbind(10));
    s.handle_dir(T0, N3, unbind(40));
    // A grant for itself, from itself, is not the holder's grant.
    let grant = DirMsg::Handover {
        binding: Binding {
            dc: 1,
            ep: 40,
            gen: 1,
        },
        to: 3,
    };
    s.handle_dir(T0, N3, grant);
    s.handle_dir(T0, N3, bind(40, u64::MAX));
    assert_eq!(s.placements(), before, "the directory is unchanged");
    assert!(s.lookup(DC1, Endpoint(10)).unwrap().port.is_some());
    assert_eq!(s.stats().peers[&3].dir_refused, 6);
    // An endpoint nobody holds is node 3's to bind.
    s.handle_dir(T0, N3, bind(70, 1));
    assert_eq!(s.lookup(DC1, Endpoint(70)).unwrap().node, N3);
}

#[test]
fn a_granted_move_is_accepted_from_the_new_place_only() {
    let (mut s, _, b, _) = node1();
    let mut out = vec![];
    s.grant_move(b, N2, 30, &mut out).unwrap();
    assert!(out.iter().any(|o| matches!(
        o,
        Out::Dir(
            None,
            DirMsg::Handover {
                binding: Binding {
                    ep: 20,
                    gen: 30,
                    ..
                },
                to: 2
            }
        )
    )));
    s.handle_dir(T0, N3, bind(20, 31));
    s.handle_dir(T0, N2, bind(20, 29));
    assert!(
        s.lookup(DC1, Endpoint(20)).unwrap().port.is_some(),
        "not node 3, not below the grant"
    );
    s.handle_dir(T0, N2, bind(20, 30));
    assert_eq!(s.lookup(DC1, Endpoint(20)).unwrap().node, N2);
    // A peer link coming up meanwhile learns of grants still open.
    let (mut s, a, _, _) = node1();
    s.grant_move(a, N3, 40, &mut vec![]).unwrap();
    let mut out = vec![];
    s.peer_up(N3, &mut out);
    assert!(out
        .iter()
        .any(|o| matches!(o, Out::Dir(Some(N3), DirMsg::Handover { to: 3, .. }))));
    // DC 2 does not span node 3: no grant there.
    let (mut s, _, _, c) = node1();
    assert!(s.grant_move(c, N3, 40, &mut vec![]).is_err());
}

#[test]
fn a_third_node_follows_a_move_whatever_order_the_messages_come_in() {
    for grant_first in [true, false] {
        // Node 3's view: node 1 holds endpoint 10 and moves it to node 2.
        let mut s = Switch::new(N3, cluster());
        s.handle_dir(T0, N1, bind(10, 5));
        let grant = DirMsg::Handover {
            binding: Binding {
                dc: 1,
                ep: 10,
                gen: 9,
            },
            to: 2,
        };
        if grant_first {
            s.handle_dir(T0, N1, grant);
            s.handle_dir(T0, N2, bind(10, 9));
        } else {
            s.handle_dir(T0, N2, bind(10, 9));
            assert_eq!(s.lookup(DC1, Endpoint(10)).unwrap().node, N1);
            s.handle_dir(T0, N1, grant);
        }
        assert_eq!(
            s.lookup(DC1, Endpoint(10)).unwrap().node,
            N2,
            "grant first: {grant_first}"
        );
        // The old holder's Unbind comes late and changes nothing.
        let late = DirMsg::Unbind {
            binding: Binding {
                dc: 1,
                ep: 10,
                gen: 5,
            },
            moved_to: Some(2),
        };
        s.handle_dir(T0, N1, late);
        assert_eq!(
            s.lookup(DC1, Endpoint(10)).unwrap(),
            Place {
                node: N2,
                gen: 9,
                port: None
            }
        );
    }
    // Without any grant, the holder's own handover (Unbind with moved_to) moves it, keeping the newcomer's
    // generation if its binding came first.
    let mut s = Switch::new(N3, cluster());
    s.handle_dir(T0, N1, bind(10, 5));
    s.handle_dir(T0, N2, bind(10, 9));
    let unbind = DirMsg::Unbind {
        binding: Binding {
            dc: 1,
            ep: 10,
            gen: 5,
        },
        moved_to: Some(2),
    };
    s.handle_dir(T0, N1, unbind);
    assert_eq!(
        s.lookup(DC1, Endpoint(10)).unwrap(),
        Place {
            node: N2,
            gen: 9,
            port: None
        }
    );
}

#[test]
fn a_peer_frame_from_a_source_the_peer_does_not_hold_is_dropped() {
    let (mut s, _, b, _) = node1();
    for (src, hops) in [(10, FIRST_HOPS), (99, FIRST_HOPS), (10, 1), (99, 0)] {
        let mut out = vec![];
        s.peer_frame(
            T0,
            N2,
            DC1,
            hops,
            m3(Kind::SendRec, DC1, src, 20, 1),
            &mut out,
        );
        assert!(out.is_empty(), "as {src} with {hops} hops: {out:?}");
    }
    let st = s.stats();
    assert_eq!(st.peers[&2].drops.peer_spoofed, 4);
    assert_eq!(st.dcs[&1].drops.peer_spoofed, 4);
    assert_eq!(s.port_counters(b).unwrap().tx.frames, 0);
    // Its own endpoint 40 gets through.
    let mut out = vec![];
    let f = m3(Kind::SendRec, DC1, 40, 20, 2);
    s.peer_frame(T0, N2, DC1, FIRST_HOPS, f.clone(), &mut out);
    assert_eq!(out, vec![Out::Port(b, f)]);
    // A LAN frame from node 2 as one of this node's MACs is dropped; one as any other MAC is switched.
    let mut out = vec![];
    s.peer_frame(T0, N2, DC1, 0, lan(mac(10), mac(20)), &mut out);
    assert!(out.is_empty());
    assert_eq!(s.stats().peers[&2].drops.peer_spoofed, 5);
    s.peer_frame(T0, N2, DC1, 0, lan(mac(41), mac(20)), &mut out);
    assert_eq!(out.len(), 1);
}

#[test]
fn the_old_place_may_answer_and_forward_for_a_while_after_a_move() {
    // Node 1's view: node 2's endpoint 40 moves to node 3; node 2 answers a call that was in progress there
    // (Migrated, with 40 as the source) and forwards a late frame.
    let (mut s, a, _, _) = node1();
    s.peer_up(N3, &mut vec![]);
    let b = Binding {
        dc: 1,
        ep: 40,
        gen: 6,
    };
    s.handle_dir(T0, N2, DirMsg::Handover { binding: b, to: 3 });
    s.handle_dir(T0, N3, DirMsg::Bind(b));
    let mut out = vec![];
    s.peer_frame(
        at(1),
        N2,
        DC1,
        1,
        m3(Kind::Migrated, DC1, 40, 10, 3),
        &mut out,
    );
    assert!(matches!(out[..], [Out::Port(p, _)] if p == a), "{out:?}");
    // Not with a fresh frame's hops, and not after the grace time.
    let mut out = vec![];
    s.peer_frame(
        at(1),
        N2,
        DC1,
        FIRST_HOPS,
        m3(Kind::Migrated, DC1, 40, 10, 4),
        &mut out,
    );
    s.peer_frame(
        at(11),
        N2,
        DC1,
        1,
        m3(Kind::Migrated, DC1, 40, 10, 5),
        &mut out,
    );
    assert!(out.is_empty(), "{out:?}");
    // This node takes over endpoint 50 from node 2: node 2 forwards late calls to it, from callers elsewhere.
    s.handle_dir(T0, N2, bind(50, 5));
    s.handle_dir(T0, N3, bind(60, 5));
    let mut sp = spec("x", DC1, &[50], 50);
    sp.gen = 7;
    let x = s.add_port(at(20), sp, &mut vec![]).unwrap();
    let mut out = vec![];
    s.peer_frame(
        at(21),
        N2,
        DC1,
        1,
        m3(Kind::SendRec, DC1, 60, 50, 1),
        &mut out,
    );
    assert!(matches!(out[..], [Out::Port(p, _)] if p == x), "{out:?}");
}

fn binding_strategy() -> impl Strategy<Value = Binding> {
    (1u16..3, 0u32..80, any::<u64>()).prop_map(|(dc, ep, gen)| Binding { dc, ep, gen })
}

fn dir_msg_strategy() -> impl Strategy<Value = DirMsg> {
    prop_oneof![
        binding_strategy().prop_map(DirMsg::Bind),
        proptest::collection::vec(binding_strategy(), 0..4).prop_map(DirMsg::Snapshot),
        (binding_strategy(), proptest::option::of(0u16..5))
            .prop_map(|(binding, moved_to)| DirMsg::Unbind { binding, moved_to }),
        (binding_strategy(), 0u16..5).prop_map(|(binding, to)| DirMsg::Handover { binding, to }),
    ]
}

proptest! {
    /// Whatever node 3 says, the endpoints held by node 1 (here) and node 2 stay where they are, and no frame
    /// from node 3 as one of them gets anywhere.
    #[test]
    fn a_peer_cannot_take_or_speak_for_others_endpoints(
        msgs in proptest::collection::vec(dir_msg_strategy(), 0..24),
        frame in m3_frame_strategy(),
        hops in 0u8..3,
    ) {
        let (mut s, _, _, _) = node1();
        let held: Vec<_> = s.placements().into_iter().filter(|p| p.node != 3).collect();
        for m in msgs {
            s.handle_dir(T0, N3, m);
        }
        for p in &held {
            let now = s.lookup(DcId(p.dc), Endpoint(p.ep)).map(|l| l.node.0);
            prop_assert_eq!(now, Some(p.node), "{:?}", p);
        }
        let mut out = vec![];
        s.peer_frame(T0, N3, DC1, hops, Bytes::from(frame.clone()), &mut out);
        if let Ok(r) = FrameRepr::parse(&frame[ETH_HEADER_LEN..]) {
            if held.iter().any(|p| p.dc == r.dc.0 && p.ep == r.src.0) {
                prop_assert!(out.is_empty(), "{:?}", out);
            }
        }
    }
}

// ---- per-DC rate limit ----

/// Node 1 with DC 1 limited to 100 frames/s, burst 10 (and `burst_bytes`), DC 2 at the defaults; ports a, b of
/// DC 1 (ep 10, 20) and c, d of DC 2 (ep 30, 31).
fn limited(burst_bytes: u64) -> (Switch, [PortId; 4]) {
    let mut map = cluster();
    map.dcs[0].limit = DcLimit {
        frames_per_s: 100,
        burst_frames: 10,
        burst_bytes,
        ..DcLimit::default()
    };
    let mut s = Switch::new(N1, map);
    let mut out = Vec::new();
    let a = s.add_port(T0, spec("a", DC1, &[10], 10), &mut out).unwrap();
    let b = s.add_port(T0, spec("b", DC1, &[20], 20), &mut out).unwrap();
    let c = s.add_port(T0, spec("c", DC2, &[30], 30), &mut out).unwrap();
    let d = s.add_port(T0, spec("d", DC2, &[31], 31), &mut out).unwrap();
    (s, [a, b, c, d])
}

/// Sends `n` Sends from `src` (port `from`) to `dst` at `now`; how many reached port `to`.
#[allow(clippy::too_many_arguments)]
fn send_n(
    s: &mut Switch,
    now: Instant,
    from: PortId,
    to: PortId,
    dc: DcId,
    src: u32,
    dst: u32,
    n: u64,
) -> usize {
    let mut out = Vec::new();
    for seq in 0..n {
        s.port_frame(now, from, m3(Kind::Send, dc, src, dst, seq), &mut out);
    }
    out.iter()
        .filter(|o| matches!(o, Out::Port(p, _) if *p == to))
        .count()
}

fn rate_limited(s: &Switch, port: &str, dc: DcId) -> (u64, u64) {
    let st = s.stats();
    (
        st.ports[port].drops.rate_limited,
        st.dcs.get(&dc.0).map_or(0, |d| d.drops.rate_limited),
    )
}

#[test]
fn a_flooding_dc_is_limited_and_counted_while_another_dc_passes() {
    let (mut s, [a, b, c, d]) = limited(0);
    let mut to_b = 0;
    let mut to_d = 0;
    // Interleaved in the same instant: DC 1 floods, DC 2 sends as much.
    for _ in 0..100 {
        to_b += send_n(&mut s, T0, a, b, DC1, 10, 20, 10);
        to_d += send_n(&mut s, T0, c, d, DC2, 30, 31, 10);
    }
    assert_eq!(to_b, 10, "DC 1 gets its burst, no more");
    assert_eq!(rate_limited(&s, "a", DC1), (990, 990));
    assert_eq!(to_d, 1000, "DC 2's frames all pass");
    assert_eq!(rate_limited(&s, "c", DC2), (0, 0));
    assert_eq!(s.stats().dcs[&DC1.0].drops.total(), 990);
    assert_eq!(s.stats().ports["a"].drops.to_string(), "rate_limited=990");
}

#[test]
fn a_flooding_peer_is_held_to_twice_the_dc_limit_and_counted() {
    let (mut s, [_, _, c, _]) = limited(0);
    let mut out = Vec::new();
    // Node 2 floods DC 1 (limit 100/s, burst 10): twice the burst passes, the rest is dropped as rate-limited,
    // on the peer's counters and the DC's.
    for _ in 0..100 {
        s.peer_frame(T0, N2, DC1, 0, lan(mac(77), [0xff; 6]), &mut out);
    }
    let st = s.stats();
    assert_eq!(st.dcs[&DC1.0].drops.rate_limited, 80);
    assert_eq!(st.peers[&N2.0].drops.rate_limited, 80);
    // The same peer's frames of DC 2 (at the defaults) all pass, to DC 2's ports.
    let mut out = Vec::new();
    for _ in 0..100 {
        s.peer_frame(T0, N2, DC2, 0, lan(mac(78), [0xff; 6]), &mut out);
    }
    assert_eq!(
        out.iter()
            .filter(|o| matches!(o, Out::Port(p, _) if *p == c))
            .count(),
        100
    );
    assert_eq!(
        s.stats()
            .dcs
            .get(&DC2.0)
            .map_or(0, |d| d.drops.rate_limited),
        0
    );
    // Time refills node 2's bucket for DC 1.
    let mut out = Vec::new();
    s.peer_frame(at(1_000), N2, DC1, 0, lan(mac(77), [0xff; 6]), &mut out);
    assert!(!out.is_empty());
}

#[test]
fn the_bucket_refills_with_time_up_to_the_burst() {
    let (mut s, [a, b, ..]) = limited(0);
    assert_eq!(send_n(&mut s, T0, a, b, DC1, 10, 20, 20), 10);
    assert_eq!(send_n(&mut s, T0, a, b, DC1, 10, 20, 5), 0, "empty");
    // 100 frames/s: 50 ms bring 5 frames.
    let t = T0 + std::time::Duration::from_millis(50);
    assert_eq!(send_n(&mut s, t, a, b, DC1, 10, 20, 20), 5);
    // A time going backwards brings nothing.
    assert_eq!(send_n(&mut s, T0, a, b, DC1, 10, 20, 5), 0);
    // A long quiet spell fills the bucket only up to its burst.
    assert_eq!(send_n(&mut s, at(100), a, b, DC1, 10, 20, 50), 10);
    assert_eq!(rate_limited(&s, "a", DC1).0, 10 + 5 + 15 + 5 + 40);
}

#[test]
fn a_burst_at_the_limit_passes_and_one_more_frame_does_not() {
    let (mut s, [a, b, ..]) = limited(0);
    // Spread at exactly the rate (one frame each 10 ms), nothing is dropped however long it goes on.
    for i in 0..300 {
        let t = T0 + std::time::Duration::from_millis(10 * i);
        assert_eq!(send_n(&mut s, t, a, b, DC1, 10, 20, 1), 1, "frame {i}");
    }
    // Then a full burst: after 100 ms of quiet, 10 frames at once pass, the 11th is dropped.
    let t = T0 + std::time::Duration::from_millis(10 * 299 + 100);
    assert_eq!(send_n(&mut s, t, a, b, DC1, 10, 20, 10), 10);
    assert_eq!(send_n(&mut s, t, a, b, DC1, 10, 20, 1), 0);
    assert_eq!(rate_limited(&s, "a", DC1), (1, 1));
}

#[test]
fn the_byte_bucket_limits_too() {
    let len = m3(Kind::Send, DC1, 10, 20, 0).len() as u64;
    // Frames plenty, bytes scarce: a byte burst of one largest frame, refilled at 1000 bytes/s.
    let burst = crate::port::MAX_ETH_FRAME as u64;
    let fit = burst / len;
    let mut map = cluster();
    map.dcs[0].limit = DcLimit {
        frames_per_s: 1_000_000,
        burst_frames: 1_000_000,
        bytes_per_s: 1000,
        burst_bytes: burst,
    };
    let mut s = Switch::new(N1, map);
    let mut out = Vec::new();
    let a = s.add_port(T0, spec("a", DC1, &[10], 10), &mut out).unwrap();
    let b = s.add_port(T0, spec("b", DC1, &[20], 20), &mut out).unwrap();
    assert_eq!(send_n(&mut s, T0, a, b, DC1, 10, 20, fit + 5) as u64, fit);
    assert_eq!(rate_limited(&s, "a", DC1), (5, 5));
    // One frame's bytes come back in len ms.
    let t = T0 + std::time::Duration::from_millis(len);
    assert_eq!(send_n(&mut s, t, a, b, DC1, 10, 20, 2), 1);
}

#[test]
fn the_default_limit_is_not_hit_by_a_normal_burst() {
    let (mut s, [_, _, c, d]) = limited(0);
    assert_eq!(send_n(&mut s, T0, c, d, DC2, 30, 31, 5000), 5000);
    assert_eq!(rate_limited(&s, "c", DC2), (0, 0));
}

#[test]
fn a_limit_reads_from_the_cluster_file_and_defaults_when_absent() {
    let map: ClusterMap = toml::from_str(
        r#"
        [[node]]
        id = 1
        proxy = "127.0.0.1:7001"
        api = "127.0.0.1:8001"
        [[dc]]
        id = 1
        name = "one"
        nodes = [1]
        limit = { frames_per_s = 100, burst_frames = 0 }
        [[dc]]
        id = 2
        name = "two"
        nodes = [1]
        "#,
    )
    .unwrap();
    assert_eq!(map.dcs[0].limit.frames_per_s, 100);
    assert_eq!(
        map.dcs[0].limit.effective(),
        (
            100,
            crate::cluster::DEFAULT_BYTES_PER_S,
            10,
            crate::cluster::DEFAULT_BYTES_PER_S / 10
        )
    );
    assert_eq!(map.dcs[1].limit, DcLimit::default());
}

#[test]
fn call_times_are_measured_from_the_first_request_to_its_answer() {
    let (mut s, a, b, _) = node1();
    let mut out = vec![];
    let ms = |n: u64| T0 + std::time::Duration::from_millis(n);
    // A same-node SendRec 10 → 20, retransmitted once, answered 3 ms after the first copy.
    s.port_frame(T0, a, m3(Kind::SendRec, DC1, 10, 20, 7), &mut out);
    s.port_frame(ms(2), a, m3(Kind::SendRec, DC1, 10, 20, 7), &mut out);
    s.port_frame(ms(3), b, m3(Kind::Reply, DC1, 20, 10, 7), &mut out);
    // A cross-node Send 10 → 40 answered by Delivered after 40 ms, then an Error for another call.
    s.port_frame(ms(10), a, m3(Kind::Send, DC1, 10, 40, 8), &mut out);
    s.peer_frame(
        ms(50),
        N2,
        DC1,
        1,
        m3(Kind::Delivered, DC1, 40, 10, 8),
        &mut out,
    );
    s.port_frame(ms(60), a, m3(Kind::SendRec, DC1, 10, 40, 9), &mut out);
    let error = ErrorCode::DeadDestination as u16;
    s.peer_frame(
        ms(61),
        N2,
        DC1,
        1,
        m3_code(Kind::Error, error, DC1, 40, 10, 9),
        &mut out,
    );
    // An answer nobody waits for is not a call.
    s.port_frame(ms(70), b, m3(Kind::Reply, DC1, 20, 10, 99), &mut out);
    let calls = &s.stats().dcs[&1].calls;
    assert_eq!((calls.sendrec.count, calls.sendrec.sum_us), (1, 3_000));
    assert_eq!((calls.send.count, calls.send.sum_us), (1, 40_000));
    assert_eq!((calls.vcopy.count, calls.failed), (0, 1));
    let buckets = calls.sendrec.buckets_seconds();
    assert_eq!(buckets.len(), Histogram::BOUNDS_US.len() + 1);
    // 3 ms falls in the (2.5 ms, 5 ms] bucket and no other.
    assert!(buckets.iter().all(|&(le, n)| n == u64::from(le == 0.005)));
    assert_eq!(buckets.last(), Some(&(f64::INFINITY, 0)));
}

#[test]
fn histogram_buckets_hold_their_bounds_and_the_rest() {
    let mut h = Histogram::default();
    for us in [0, 10, 11, 10_000_000, u64::MAX] {
        h.observe(us);
    }
    assert_eq!(h.buckets[0], 2, "0 and 10 µs are at most 10 µs");
    assert_eq!(h.buckets[1], 1);
    assert_eq!(h.buckets[Histogram::BOUNDS_US.len() - 1], 1, "10 s");
    assert_eq!(
        h.buckets[Histogram::BOUNDS_US.len()],
        1,
        "above every bound"
    );
    assert_eq!(h.count, 5);
    assert_eq!(h.sum_us, u64::MAX, "the sum saturates");
}

#[test]
fn a_dead_nodes_endpoints_may_be_bound_by_another_node() {
    let (mut s, a, _, _) = node1();
    let mut out = vec![];
    s.peer_up(NodeId(3), &mut out);
    // Endpoint 40 is node 2's; node 3 binds it with a newer generation: refused while node 2 lives.
    let b = Binding {
        dc: 1,
        ep: 40,
        gen: 50,
    };
    s.handle_dir(T0, NodeId(3), DirMsg::Bind(b));
    assert_eq!(s.lookup(DC1, Endpoint(40)).unwrap().node, N2);
    // A call to it is in progress when the directory says node 2 is dead: it fails at once, and the
    // binding node 3 sent before is applied.
    s.port_frame(T0, a, m3(Kind::SendRec, DC1, 10, 40, 5), &mut out);
    let mut out = vec![];
    s.set_node_dead(T0, N2, true, &mut out);
    let out = frames(out);
    assert_eq!(
        answer(&out[0]),
        (Kind::Error, ErrorCode::NodeUnreachable as u16, 40, 10, 5)
    );
    assert_eq!(s.lookup(DC1, Endpoint(40)).unwrap().node, NodeId(3));
    // A later binding from node 3 is accepted too; alive again, node 2 cannot take it back unasked.
    s.set_node_dead(T0, N2, false, &mut vec![]);
    s.handle_dir(T0, N2, DirMsg::Bind(Binding { gen: 99, ..b }));
    assert_eq!(s.lookup(DC1, Endpoint(40)).unwrap().node, NodeId(3));
}
