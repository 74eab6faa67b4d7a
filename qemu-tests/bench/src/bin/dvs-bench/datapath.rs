//! The data-path figures of issue 11: the ratios of `summary.json` ([`ratios`]), the per-hop breakdown of one
//! sendrec (`dvs-bench breakdown`, from the figures bench-cluster.sh and vos-bench wrote) and `dvs-bench merge`.

use std::collections::BTreeMap;

use anyhow::Context;
use dvs_bench::{out_dir, print_table, Figures};
use serde_json::Value;

/// A number of a part, by key.
fn num(part: Option<&Value>, key: &str) -> Option<f64> {
    part?.get(key)?.as_f64()
}

fn round(v: f64, places: i32) -> f64 {
    let f = 10f64.powi(places);
    (v * f).round() / f
}

/// The port-kind prefixes present in cluster.json: "" (the default kind) and "vhost_user." etc.
fn prefixes(cluster: Option<&Value>) -> Vec<String> {
    let mut out = vec![String::new()];
    if let Some(Value::Object(m)) = cluster {
        for k in m.keys() {
            if let Some(p) = k.strip_suffix("vm_port") {
                if !p.is_empty() && !out.iter().any(|o| o == p) {
                    out.push(p.to_string());
                }
            }
        }
    }
    out
}

/// The data-path ratios (each the project's median over the baseline's of the same run; vcopy as a share of
/// TCP's throughput), per VM port kind (the default kind's unprefixed, the others' prefixed `vhost_user.`).
pub fn ratios(parts: &BTreeMap<String, Value>) -> Vec<(String, f64)> {
    let cluster = parts.get("cluster");
    let vos = parts.get("vos");
    let c = |k: &str| num(cluster, k);
    let mut out = Vec::new();
    let mut push = |k: String, a: Option<f64>, b: Option<f64>| {
        if let (Some(a), Some(b)) = (a, b) {
            if a > 0.0 && b > 0.0 {
                out.push((k, round(a / b, 3)));
            }
        }
    };
    for p in prefixes(cluster) {
        let x = c(&format!("{p}vm_vm_cross_node.median_ns"));
        push(
            format!("{p}xnode_sendrec_vs_tonic"),
            x,
            c("grpc_unary.median_ns"),
        );
        push(
            format!("{p}xnode_sendrec_vs_tcp"),
            x,
            c("tcp_pingpong.median_ns"),
        );
        push(
            format!("{p}xnode_sendrec_p99_vs_median"),
            c(&format!("{p}vm_vm_cross_node.p99_ns")),
            x,
        );
        push(
            format!("{p}local_sendrec_vs_tcp"),
            c(&format!("{p}vm_vm_same_node.median_ns")),
            c("tcp_local.median_ns"),
        );
        push(
            format!("{p}vcopy_vs_tcp"),
            c(&format!("{p}vcopy_push.mb_s")),
            c("tcp_throughput.mb_s"),
        );
        push(
            format!("{p}sendrec_during_vcopy_vs_idle"),
            c(&format!("{p}loaded_sendrec.median_ns")),
            x,
        );
    }
    let accel = if num(vos, "kvm.host_guest_sendrec.median_us").is_some() {
        "kvm"
    } else {
        "tcg"
    };
    push(
        "host_guest_vs_tcp".into(),
        num(vos, &format!("{accel}.host_guest_sendrec.median_us")),
        num(vos, "tcp_loopback.median_us"),
    );
    out
}

/// `dvs-bench merge PART SRC...`: the figures of the SRC parts added to PART (SRC files removed).
pub fn merge(part: &str, srcs: &[String]) -> anyhow::Result<()> {
    let dir = out_dir();
    let read = |name: &str| -> anyhow::Result<BTreeMap<String, Value>> {
        let path = dir.join(format!("{name}.json"));
        match std::fs::read_to_string(&path) {
            Ok(t) => {
                serde_json::from_str(&t).with_context(|| format!("parsing {}", path.display()))
            }
            Err(_) => Ok(BTreeMap::new()),
        }
    };
    let mut f = Figures(read(part)?);
    for s in srcs {
        for (k, v) in read(s)? {
            f.set(k, v);
        }
        let _ = std::fs::remove_file(dir.join(format!("{s}.json")));
    }
    f.write(part)
        .with_context(|| format!("writing {}/{part}.json", dir.display()))?;
    Ok(())
}

/// One row of a breakdown: what, µs, the floor's name and µs.
struct Row {
    what: String,
    us: Option<f64>,
    floor: Option<(&'static str, f64)>,
}

fn row(what: &str, ns: Option<f64>, floor: Option<(&'static str, f64)>) -> Row {
    Row {
        what: what.into(),
        us: ns.map(|n| n / 1000.0),
        floor,
    }
}

/// The floors of this machine measured in the same `make bench` run (vos.json), µs.
struct Floors {
    /// Host↔guest sendrec through QEMU's I/O thread with a polling guest: the backend's round trip.
    qemu_rtt: Option<f64>,
    /// Raw unix datagram socket round trip between two host threads.
    unix_rtt: Option<f64>,
    /// The same host↔guest sendrec when the guest halted before each call.
    halted_rtt: Option<f64>,
    /// KVM ioeventfd → host → irqfd → halted vCPU round trip of a minimal VM.
    kvm_irq_rtt: Option<f64>,
    /// The guest's timer wake-up lateness (APIC timer, halted).
    timer_wake: Option<f64>,
}

impl Floors {
    fn new(vos: Option<&Value>, cluster: Option<&Value>, p: &str) -> Floors {
        let accel = if num(vos, "kvm.host_guest_sendrec.median_us").is_some() {
            "kvm"
        } else {
            "tcg"
        };
        let v = |k: &str| num(vos, &format!("{accel}.{k}"));
        Floors {
            qemu_rtt: v("host_guest_sendrec_polling.median_us"),
            unix_rtt: num(vos, "unix_dgram.median_us"),
            halted_rtt: v("host_guest_sendrec_halted.median_us"),
            kvm_irq_rtt: num(vos, "kvm_floor.irqfd_rtt.median_us"),
            timer_wake: num(cluster, &format!("{p}timer_wake.median_ns")).map(|n| n / 1000.0),
        }
    }
}

/// The cross-node and same-node breakdowns of kind prefix `p`.
fn tables(cluster: Option<&Value>, fl: &Floors, p: &str) -> Vec<(String, Vec<Row>)> {
    let c = |k: &str| num(cluster, &format!("{p}{k}"));
    let g = |k: &str| num(cluster, k);
    let twice = |v: Option<f64>| v.map(|x| 2.0 * x);
    let mut out = Vec::new();
    // Cross node: A (node 1) → proxy 1 → peer link → proxy 3 → B (node 3) and back.
    let total = c("vm_vm_cross_node.median_ns");
    let tcp = g("tcp_pingpong.median_ns");
    let parts = [
        c("hops.cross.client.issue_to_tx_ns"),
        c("hops.cross.proxy1.port_to_peer_write.median_ns"),
        tcp,
        c("hops.cross.proxy3.peer_frame.median_ns"),
        c("hops.cross.server.rx_to_tx_ns"),
        c("hops.cross.proxy3.port_to_peer_write.median_ns"),
        c("hops.cross.proxy1.peer_frame.median_ns"),
        c("hops.cross.client.rx_to_woken_ns"),
    ];
    let left = rest(total, &parts);
    let qemu2 = twice(fl.qemu_rtt).map(|v| ("2 x host↔guest RTT, polling guest", v));
    let rows = vec![
        row(
            "whole sendrec (median)",
            total,
            qemu2.map(|(n, v)| (n, v + tcp.unwrap_or(0.0) / 1000.0)),
        ),
        row(
            "guest A: call issued → request handed to the NIC (notify incl.)",
            parts[0],
            None,
        ),
        row(
            "proxy 1: VM port → peer socket write (switch, queue, batch)",
            parts[1],
            None,
        ),
        row(
            "peer link, both ways (raw TCP RTT, same namespaces)",
            parts[2],
            tcp.map(|t| ("raw TCP RTT", t / 1000.0)),
        ),
        row("proxy 3: peer frame through the switch", parts[3], None),
        row(
            "guest B: request seen → reply handed to the NIC",
            parts[4],
            None,
        ),
        row("proxy 3: VM port → peer socket write", parts[5], None),
        row("proxy 1: peer frame through the switch", parts[6], None),
        row("guest A: reply seen → calling task runs", parts[7], None),
        row(
            "rest: the backends (QEMU netdev ×4, sockets, vCPU wake-ups)",
            left,
            qemu2,
        ),
        row(
            "  guest A: outside the guest (request out → reply seen)",
            c("hops.cross.client.tx_to_rx_ns"),
            None,
        ),
        row(
            "  guest A halted during the call, ‰ / its wake → reply seen",
            c("hops.cross.client.halted_permille").map(|v| v * 1000.0),
            None,
        ),
        row(
            "  guest A: wake-up → reply seen (halted calls)",
            c("hops.cross.client.wake_to_rx_ns"),
            fl.timer_wake.map(|t| ("guest timer wake-up", t)),
        ),
        row(
            "  guest B halted before the request, ‰",
            c("hops.cross.server.halted_permille").map(|v| v * 1000.0),
            None,
        ),
        row(
            "  guest B: wake-up → request seen",
            c("hops.cross.server.wake_to_rx_ns"),
            fl.timer_wake.map(|t| ("guest timer wake-up", t)),
        ),
    ];
    out.push((format!("cross-node VM→VM sendrec{}", kind_name(p)), rows));
    // Same node: A → proxy → B and back.
    let total = c("vm_vm_same_node.median_ns");
    let sw = c("hops.local.proxy1.port_frame.median_ns");
    let parts = [
        c("hops.local.client.issue_to_tx_ns"),
        twice(sw),
        c("hops.local.server.rx_to_tx_ns"),
        c("hops.local.client.rx_to_woken_ns"),
    ];
    let left = rest(total, &parts);
    let rows = vec![
        row("whole sendrec (median)", total, qemu2),
        row(
            "guest A: call issued → request handed to the NIC (notify incl.)",
            parts[0],
            None,
        ),
        row(
            "proxy: request and reply through the switch (2 x median)",
            parts[1],
            None,
        ),
        row(
            "guest B: request seen → reply handed to the NIC",
            parts[2],
            None,
        ),
        row("guest A: reply seen → calling task runs", parts[3], None),
        row(
            "rest: the backends (QEMU netdev ×4, sockets, proxy I/O, vCPU wake-ups)",
            left,
            qemu2,
        ),
        row(
            "  guest A: outside the guest (request out → reply seen)",
            c("hops.local.client.tx_to_rx_ns"),
            None,
        ),
        row(
            "  guest A halted during the call, ‰",
            c("hops.local.client.halted_permille").map(|v| v * 1000.0),
            None,
        ),
        row(
            "  guest B halted before the request, ‰",
            c("hops.local.server.halted_permille").map(|v| v * 1000.0),
            None,
        ),
    ];
    out.push((format!("same-node VM→VM sendrec{}", kind_name(p)), rows));
    out
}

fn kind_name(p: &str) -> String {
    match p.strip_suffix('.') {
        Some(k) => format!(" ({k} VM ports)"),
        None => String::new(),
    }
}

/// `total` minus the parts that were measured (None without a total).
fn rest(total: Option<f64>, parts: &[Option<f64>]) -> Option<f64> {
    total.map(|t| t - parts.iter().flatten().sum::<f64>())
}

/// `dvs-bench breakdown`: prints the per-hop tables and the floors, writes target/bench/breakdown.json.
pub fn breakdown() -> anyhow::Result<()> {
    let dir = out_dir();
    let read = |name: &str| -> Option<Value> {
        serde_json::from_str(&std::fs::read_to_string(dir.join(format!("{name}.json"))).ok()?).ok()
    };
    let (cluster, vos) = (read("cluster"), read("vos"));
    let mut figs = Figures::new();
    let f0 = Floors::new(vos.as_ref(), cluster.as_ref(), "");
    println!("floors of this machine (vos-bench and bench-cluster of this run; µs, medians):");
    let floors = [
        (
            "raw unix datagram socket RTT",
            f0.unix_rtt,
            "unix_dgram_rtt_us",
        ),
        (
            "host↔guest sendrec, polling guest (QEMU I/O thread both ways)",
            f0.qemu_rtt,
            "qemu_polling_rtt_us",
        ),
        (
            "host↔guest sendrec, halted guest (+ interrupt wake-up)",
            f0.halted_rtt,
            "qemu_halted_rtt_us",
        ),
        (
            "minimal KVM VM: ioeventfd → host → irqfd → halted vCPU",
            f0.kvm_irq_rtt,
            "kvm_irqfd_rtt_us",
        ),
        (
            "guest timer wake-up (APIC timer, halted), lateness",
            f0.timer_wake,
            "timer_wake_us",
        ),
    ];
    let mut rows = Vec::new();
    for (what, v, key) in floors {
        rows.push([
            what.to_string(),
            v.map_or("missing".into(), |v| format!("{v:.1}")),
        ]);
        if let Some(v) = v {
            figs.set(format!("floor.{key}"), round(v, 1));
        }
    }
    if let (Some(q), Some(u)) = (f0.qemu_rtt, f0.unix_rtt) {
        rows.push([
            "  QEMU I/O-thread hop (polling RTT − unix RTT) / 2".into(),
            format!("{:.1}", (q - u) / 2.0),
        ]);
        figs.set("floor.qemu_hop_us", round((q - u) / 2.0, 1));
    }
    if let (Some(h), Some(q)) = (f0.halted_rtt, f0.qemu_rtt) {
        rows.push([
            "  waking a halted guest instead of a polling one".into(),
            format!("{:.1}", h - q),
        ]);
        figs.set("floor.halted_wake_us", round(h - q, 1));
    }
    print_table(["floor", "µs"], &rows);
    for p in prefixes(cluster.as_ref()) {
        let fl = Floors::new(vos.as_ref(), cluster.as_ref(), &p);
        for (title, rows) in tables(cluster.as_ref(), &fl, &p) {
            println!();
            println!("{title}: where the time goes (medians of each piece; µs)");
            let cells: Vec<[String; 4]> = rows
                .iter()
                .map(|r| {
                    let us = r.us.map_or("-".into(), |v| format!("{v:.1}"));
                    let (name, ratio) = match (r.floor, r.us) {
                        (Some((n, f)), Some(v)) if f > 0.0 => {
                            (format!("{n} {f:.1}"), format!("{:.2}x", v / f))
                        }
                        (Some((n, f)), None) => (format!("{n} {f:.1}"), "-".into()),
                        _ => (String::new(), String::new()),
                    };
                    [r.what.clone(), us, name, ratio]
                })
                .collect();
            print_table(["piece", "µs", "floor (µs)", "÷ floor"], &cells);
            for r in &rows {
                if let Some(v) = r.us {
                    let key = format!("{p}{title}.{}", r.what)
                        .chars()
                        .map(|ch| {
                            if ch.is_alphanumeric() || ch == '.' {
                                ch
                            } else {
                                '_'
                            }
                        })
                        .collect::<String>();
                    figs.set(key, round(v, 2));
                }
            }
        }
    }
    println!(
        "(guest pieces from the guests' own TSC stamps, proxy pieces from the switch's timing histograms, the \
         peer link as the raw TCP RTT; the rest is the backends: the difference)"
    );
    figs.write("breakdown")
        .with_context(|| format!("writing {}/breakdown.json", dir.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_per_kind() {
        let mut parts = BTreeMap::new();
        parts.insert(
            "cluster".to_string(),
            serde_json::json!({
                "vm_port": "stream", "vhost_user.vm_port": "vhost-user",
                "vm_vm_cross_node.median_ns": 400_000, "vm_vm_cross_node.p99_ns": 800_000,
                "vhost_user.vm_vm_cross_node.median_ns": 200_000,
                "grpc_unary.median_ns": 100_000, "tcp_pingpong.median_ns": 50_000,
                "vm_vm_same_node.median_ns": 300_000, "tcp_local.median_ns": 10_000,
                "vcopy_push.mb_s": 50, "tcp_throughput.mb_s": 1000,
                "loaded_sendrec.median_ns": 800_000,
            }),
        );
        parts.insert(
            "vos".to_string(),
            serde_json::json!({ "kvm.host_guest_sendrec.median_us": 40.0, "tcp_loopback.median_us": 5.0 }),
        );
        let r: BTreeMap<String, f64> = ratios(&parts).into_iter().collect();
        assert_eq!(r["xnode_sendrec_vs_tonic"], 4.0);
        assert_eq!(r["xnode_sendrec_vs_tcp"], 8.0);
        assert_eq!(r["xnode_sendrec_p99_vs_median"], 2.0);
        assert_eq!(r["local_sendrec_vs_tcp"], 30.0);
        assert_eq!(r["vcopy_vs_tcp"], 0.05);
        assert_eq!(r["sendrec_during_vcopy_vs_idle"], 2.0);
        assert_eq!(r["host_guest_vs_tcp"], 8.0);
        assert_eq!(r["vhost_user.xnode_sendrec_vs_tcp"], 4.0);
        assert!(!r.contains_key("vhost_user.vcopy_vs_tcp"), "{r:?}");
    }

    #[test]
    fn the_rest_is_what_is_left() {
        assert_eq!(rest(Some(10.0), &[Some(3.0), None, Some(2.0)]), Some(5.0));
        assert_eq!(rest(None, &[Some(1.0)]), None);
    }
}
