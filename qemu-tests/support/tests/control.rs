//! The control plane on etcd, in the cluster fixture: three nodes as network namespaces, each with an etcd
//! member (a three-member etcd), their daemons on it with 3 s leases, mutual TLS on their peer links, real
//! VOS VMs. The checks change the
//! cluster while calls run and look at what callers see and what etcd says: a DC created and deleted live, a
//! fourth node joining under traffic, a node killed in the middle of calls (its callers get NodeUnreachable
//! within about a TTL, its instance runs again on a survivor, and a caller afterwards loses nothing), an etcd
//! member killed (nothing notices), and a node cut off the network (it loses its lease and stops; the
//! majority takes its endpoint over; healed and restarted, it does not run a second copy).
//!
//! Part of `make cluster-test` (root, QEMU, `images/vos.elf`, Debian's etcd-server); without
//! `DVS_CLUSTER_TEST=1` this target passes at once.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use dvs_hypervisor::instances::{InstanceSpec, InstanceView, RestartPolicy, State};
use dvs_instance::spec::Accel;
use dvs_test_support::api::describe;
use dvs_test_support::cluster::{is_root, Cluster, ClusterConfig, EtcdDef};
use dvs_test_support::runner::Runner;
use dvs_test_support::vos::{
    all_answered, bench_done, client, dvs_bin, expect, reports, root_dir, vos,
};
use dvs_test_support::wait::{eventually, Deadline};
use dvs_vos_abi::Report;
use m3ipc_core::ErrorCode;

const CHECKS: usize = 10;
/// The nodes' lease TTL (the default: it rides through an etcd leader election, about 1 s here).
const TTL_S: u64 = 3;

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// `s` with the restart policy `always` (the kind of instance a survivor starts again).
fn always(mut s: InstanceSpec) -> InstanceSpec {
    s.restart = RestartPolicy::Always;
    s
}

/// The first failure the instance's bench reported, if it was `code`.
fn failed_with_code(v: &InstanceView, code: ErrorCode) -> bool {
    reports(v).iter().any(|r| {
        matches!(r, Report::Failed { code: c, error, .. }
            if *c == code as u16 || error.contains(&format!("{code:?}")))
    })
}

struct T<'a> {
    c: &'a mut Cluster,
}

impl T<'_> {
    fn d(&self, kvm: u64) -> Deadline {
        self.c.deadline(secs(kvm))
    }

    fn wait(
        &self,
        node: u16,
        name: &str,
        what: &str,
        kvm: u64,
        pred: impl FnMut(&InstanceView) -> bool,
    ) -> Result<InstanceView, String> {
        dvs_test_support::vos::wait_for(self.c, node, name, what, kvm, pred)
    }

    fn ready(&self, node: u16, name: &str) -> Result<InstanceView, String> {
        dvs_test_support::vos::ready(self.c, node, name)
    }

    /// Runs `spec` on `node`, retrying while the node does not know its DC yet (a DC made a moment ago
    /// reaches each node through its etcd watch).
    fn run(&self, node: u16, spec: InstanceSpec) -> Result<(), String> {
        let api = self.c.api(node);
        eventually(
            self.d(10),
            &format!("node {node} to take {}", spec.name),
            || api.run(spec.clone()).map(|_| ()),
        )
        .map_err(|e| e.to_string())
    }

    /// The DCs node `n` routes (`dvs --json dc ls`).
    fn dcs(&self, n: u16) -> Result<Vec<u16>, String> {
        let out = self.c.cli_ok(n, &["--json", "dc", "ls"])?;
        let v: serde_json::Value =
            serde_json::from_str(&out).map_err(|e| format!("dc ls: {e}: {out}"))?;
        Ok(v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|d| d["id"].as_u64())
                    .filter_map(|id| u16::try_from(id).ok())
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Waits until etcd (as node `from` reads it) has endpoint `ep` of `dc` owned by a node other than
    /// `not`; returns that node.
    fn owner_moves(&self, from: u16, dc: u16, ep: u32, not: u16, kvm: u64) -> Result<u16, String> {
        eventually(
            self.d(kvm),
            &format!("etcd to give endpoint {ep} of DC {dc} to a node other than {not}"),
            || match owners(self.c, from, dc, ep)?.as_slice() {
                [n] if *n != not => Ok(*n),
                other => Err(format!("owners {other:?}")),
            },
        )
        .map_err(|e| e.to_string())
    }
}

fn main() -> ExitCode {
    if std::env::var_os("DVS_CLUSTER_TEST").is_none() {
        println!("control-test: skipped (it boots a cluster on etcd as root): `make cluster-test` runs it");
        return ExitCode::SUCCESS;
    }
    let accel = Accel::detect();
    println!("control-test: accelerator {}", accel.name());
    if !is_root() {
        eprintln!("control-test: needs root (network namespaces)");
        return ExitCode::FAILURE;
    }
    let image = root_dir().join("images/vos.elf");
    if !image.is_file() {
        eprintln!("control-test: images/vos.elf is missing: run `make images` first");
        return ExitCode::FAILURE;
    }
    let mut r = Runner::new(CHECKS);
    let mut cfg = ClusterConfig::new(3, dvs_bin()).dc(1, "alpha", &[1, 2, 3]);
    cfg.accel = accel;
    cfg.subnet = "10.219.0".into();
    cfg.etcd = Some(EtcdDef {
        members: 3,
        lease_ttl_s: TTL_S,
    });
    cfg.peer_tls = true;
    let Some(mut cluster) = r.step("three nodes on a three-member etcd", || {
        Cluster::up(cfg, secs(40)).map_err(|e| e.to_string())
    }) else {
        return r.finish();
    };
    let img = image.display().to_string();
    let pushed = r.step("the image on every node", || {
        cluster
            .cli_ok(1, &["image", "push", "--all", &img])
            .map(|_| ())
    });
    if pushed.is_some() {
        checks(&mut r, &mut T { c: &mut cluster }, &img);
    }
    if r.failed() > 0 {
        cluster.keep_logs();
    }
    drop(cluster);
    r.finish()
}

fn checks(r: &mut Runner, t: &mut T<'_>, img: &str) {
    r.check("1_three_nodes_hold_leases_on_etcd", || {
        for n in 1..=3 {
            let v = t.c.api(n).control()?;
            let alive: Vec<u16> = v
                .members
                .iter()
                .filter(|m| m.alive)
                .map(|m| m.node.id)
                .collect();
            expect(v.mode == "etcd" && alive == [1, 2, 3], || {
                format!("node {n}: mode {}, alive {alive:?}", v.mode)
            })?;
            expect(v.lease_ttl_s == TTL_S && v.lease != 0, || {
                format!("node {n}: lease {} ttl {}", v.lease, v.lease_ttl_s)
            })?;
        }
        Ok(())
    });

    r.check("1b_peer_links_are_mutual_tls_and_a_plain_peer_is_refused", || {
        use std::io::{Read, Write};
        let before = t.c.api(1).counters()?.links.tls_refused;
        let addr = std::net::SocketAddr::new(t.c.node_ip(1), 7071);
        let mut s = std::net::TcpStream::connect_timeout(&addr, secs(2))
            .map_err(|e| format!("connecting to {addr}: {e}"))?;
        s.set_read_timeout(Some(secs(5))).map_err(|e| e.to_string())?;
        // What a peer without TLS would send first: its Hello, in the clear.
        let _ = s.write_all(b"DVS1 hello from node 2\n");
        let mut buf = [0u8; 64];
        let answered = matches!(s.read(&mut buf), Ok(n) if n > 0);
        drop(s);
        eventually(t.d(5), "node 1 to count the refused link", || {
            let now = t.c.api(1).counters()?.links.tls_refused;
            if now > before {
                Ok(())
            } else {
                Err(format!("tls_refused {now} (was {before}); the plain client got an answer: {answered}"))
            }
        })
        .map_err(|e| e.to_string())?;
        // And the real links are up, over TLS.
        let st = t.c.api(1).status()?;
        expect(st.peers.get(&2) == Some(&true) && st.peers.get(&3) == Some(&true), || {
            format!("node 1's peers: {:?}", st.peers)
        })
    });

    r.check(
        "1c_a_guest_reaches_its_dc_lan_and_nothing_of_its_host",
        || {
            let mut web = vos("probe-web", 1, &[], &["http"], None, &[]);
            web.ip = Some("10.1.0.2/24".into());
            t.run(2, web)?;
            t.ready(2, "probe-web")?;
            let (ip1, ip2) = (t.c.node_ip(1), t.c.node_ip(2));
            // The first target is the positive control: a web server on the DC's LAN. The rest are the host's:
            // the node APIs, etcd, the host's loopback, QEMU user networking's host alias, a LAN gateway.
            let targets = [
                "10.1.0.2:80".to_string(),
                format!("{ip1}:7070"),
                format!("{ip2}:7070"),
                format!("{ip1}:2379"),
                "127.0.0.1:7070".into(),
                "10.0.2.2:7070".into(),
                "10.1.0.1:7070".into(),
            ];
            let args: Vec<String> = targets.iter().map(|t| format!("probe={t}")).collect();
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let mut probe = vos("prober", 1, &[], &["net-probe"], None, &args);
            probe.ip = Some("10.1.0.3/24".into());
            t.run(1, probe)?;
            let v = t.wait(1, "prober", "a report per target", 60, |v| {
                reports(v)
                    .iter()
                    .filter(|r| matches!(r, Report::Probe { .. }))
                    .count()
                    >= targets.len()
                    || v.guest.fatal.is_some()
            })?;
            let seen: Vec<(String, bool, String)> = reports(&v)
                .iter()
                .filter_map(|r| match r {
                    Report::Probe {
                        target,
                        port,
                        reached,
                        detail,
                    } => Some((
                        format!(
                            "{}.{}.{}.{}:{port}",
                            target[0], target[1], target[2], target[3]
                        ),
                        *reached,
                        detail.clone(),
                    )),
                    _ => None,
                })
                .collect();
            for (i, want) in targets.iter().enumerate() {
                let got = seen.iter().find(|(t, ..)| t == want);
                let should = i == 0;
                expect(got.is_some_and(|(_, r, _)| *r == should), || {
                    format!("{want}: expected reached={should}, got {got:?} (all: {seen:?})")
                })?;
            }
            println!("    probes: {seen:?}");
            t.c.api(1).stop("prober")?;
            t.c.api(2).stop("probe-web")
        },
    );

    r.check(
        "2_dc_created_live_carries_calls_and_is_deleted_live",
        || {
            t.c.cli_ok(
                1,
                &["dc", "create", "beta", "--id", "2", "--nodes", "1,2,3"],
            )?;
            t.run(2, vos("b-echo", 2, &[50], &["echo"], None, &[]))?;
            t.ready(2, "b-echo")?;
            t.run(3, client("b-call", 2, 51, 50, 500, &[]))?;
            let v = t.wait(3, "b-call", "its bench to end", 60, bench_done)?;
            all_answered(&v, 500)?;
            t.c.api(3).stop("b-call")?;
            t.c.api(2).stop("b-echo")?;
            t.c.cli_ok(1, &["dc", "delete", "beta"])?;
            eventually(t.d(10), "every node to drop DC 2", || {
                for n in 1..=3 {
                    let dcs = t.dcs(n)?;
                    if dcs.contains(&2) {
                        return Err(format!("node {n} still has DC 2: {dcs:?}"));
                    }
                }
                Ok(())
            })
            .map_err(|e| e.to_string())
        },
    );

    r.check("3_fourth_node_joins_while_calls_run", || {
        t.run(2, vos("a-echo", 1, &[10], &["echo"], None, &[]))?;
        t.ready(2, "a-echo")?;
        t.run(1, client("a-call", 1, 11, 10, 20_000, &[]))?;
        t.ready(1, "a-call")?;
        let n4 = t.c.add_node(secs(30)).map_err(|e| e.to_string())?;
        expect(n4 == 4, || format!("the new node is {n4}"))?;
        for n in 1..=3 {
            t.c.wait_peer(n, 4, true, t.d(20))
                .map_err(|e| e.to_string())?;
        }
        t.c.cli_ok(4, &["image", "push", img])?;
        t.c.cli_ok(1, &["dc", "create", "grow", "--id", "3", "--nodes", "1,4"])?;
        t.run(4, vos("g-echo", 3, &[60], &["echo"], None, &[]))?;
        t.ready(4, "g-echo")?;
        t.run(1, client("g-call", 3, 61, 60, 1000, &[]))?;
        let v = t.wait(1, "g-call", "its bench to end", 60, bench_done)?;
        all_answered(&v, 1000)?;
        let v = t.wait(1, "a-call", "its bench to end", 120, bench_done)?;
        all_answered(&v, 20_000)?;
        for (n, name) in [(1, "g-call"), (1, "a-call"), (2, "a-echo")] {
            t.c.api(n).stop(name)?;
        }
        Ok(())
    });

    r.check(
        "4_killed_node_fails_its_callers_within_a_ttl_and_its_instance_moves",
        || {
            t.run(3, always(vos("k-echo", 1, &[20], &["echo"], None, &[])))?;
            t.ready(3, "k-echo")?;
            // Long enough to be running at the kill (the client keeps 8 bytes per call for its percentiles).
            t.run(1, client("k-call", 1, 21, 20, 200_000, &[]))?;
            t.ready(1, "k-call")?;
            // Calls are flowing: node 3's proxy has delivered hundreds of frames to k-echo.
            let api3 = t.c.api(3);
            eventually(t.d(10), "k-echo to be receiving calls", || {
                let st = api3.counters()?;
                match st.ports.get("k-echo").map(|p| p.tx.frames) {
                    Some(n) if n > 200 => Ok(()),
                    other => Err(format!(
                        "frames delivered to k-echo: {other:?}; the caller: {}",
                        t.c.api(1)
                            .instance("k-call")
                            .map(|v| describe(&v))
                            .unwrap_or_default()
                    )),
                }
            })
            .map_err(|e| e.to_string())?;
            let killed = Instant::now();
            t.c.kill_node(3);
            let v = t.wait(1, "k-call", "its bench to fail", 20, bench_done)?;
            let took = killed.elapsed();
            expect(failed_with_code(&v, ErrorCode::NodeUnreachable), || {
                format!("k-call ended without NodeUnreachable: {}", describe(&v))
            })?;
            println!(
                "    the caller got NodeUnreachable {:.2} s after the kill (TTL {TTL_S} s)",
                took.as_secs_f64()
            );
            expect(took <= secs(TTL_S) + Duration::from_millis(1500), || {
                format!("the caller learnt of the kill after {took:?} (TTL {TTL_S} s)")
            })?;
            let on = t.owner_moves(1, 1, 20, 3, 30)?;
            t.ready(on, "k-echo")?;
            t.c.api(1).stop("k-call")?;
            t.run(1, client("k-call2", 1, 22, 20, 10_000, &[]))?;
            let v = t.wait(1, "k-call2", "its bench to end", 120, bench_done)?;
            all_answered(&v, 10_000)?;
            t.c.api(1).stop("k-call2")
        },
    );

    r.check("5_one_etcd_member_down_the_cluster_keeps_working", || {
        t.c.kill_etcd(2);
        // Three TTLs with one member of three gone: no node may lose its lease. A read while etcd elects a
        // new leader may fail (502, "leader changed"); every read that answers must show all three alive.
        let until = t.d(3 * TTL_S + 1);
        let mut answered = [0u32; 3];
        while !until.passed() {
            for (i, n) in [1u16, 2, 4].into_iter().enumerate() {
                expect(t.c.daemon_exited(n).is_none(), || {
                    format!("node {n}'s daemon stopped")
                })?;
                let Ok(v) = t.c.api(n).control() else {
                    continue;
                };
                answered[i] += 1;
                let alive: Vec<u16> = v
                    .members
                    .iter()
                    .filter(|m| m.alive)
                    .map(|m| m.node.id)
                    .collect();
                expect([1, 2, 4].iter().all(|m| alive.contains(m)), || {
                    format!("node {n} sees alive {alive:?} with etcd member 2 down")
                })?;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        expect(answered.iter().all(|&a| a >= 3), || {
            format!("reads answered per node: {answered:?}")
        })?;
        t.c.cli_ok(1, &["dc", "create", "gamma", "--id", "4", "--nodes", "1,2"])?;
        t.c.cli_ok(2, &["dc", "delete", "gamma"]).map(|_| ())
    });

    r.check(
        "6_partitioned_node_loses_its_lease_and_the_majority_takes_over",
        || {
            t.run(4, always(vos("p-echo", 3, &[62], &["echo"], None, &[])))?;
            t.ready(4, "p-echo")?;
            t.c.set_link(4, false).map_err(|e| e.to_string())?;
            // The majority side: node 1 (of DC 3's nodes 1 and 4) takes the endpoint over.
            let on = t.owner_moves(1, 3, 62, 4, 30)?;
            expect(on == 1, || format!("endpoint 62 went to node {on}"))?;
            t.ready(1, "p-echo")?;
            // The minority side: node 4 lost its lease and stopped, its machines with it.
            eventually(t.d(20), "node 4's daemon to stop", || {
                match t.c.daemon_exited(4) {
                    Some(_) => Ok(()),
                    None => Err("still running".into()),
                }
            })
            .map_err(|e| e.to_string())?;
            eventually(t.d(10), "node 4's machines to be gone", || {
                let pids = t.c.machine_pids(4);
                if pids.is_empty() {
                    Ok(())
                } else {
                    Err(format!("machines {pids:?}"))
                }
            })
            .map_err(|e| e.to_string())?;
            // Healed and restarted, node 4 rejoins and does not run a second copy.
            t.c.set_link(4, true).map_err(|e| e.to_string())?;
            t.c.restart_node(4, secs(30)).map_err(|e| e.to_string())?;
            t.c.wait_peer(1, 4, true, t.d(20))
                .map_err(|e| e.to_string())?;
            let copies: Vec<String> = t
                .c
                .api(4)
                .instances()?
                .into_iter()
                .filter(|i| {
                    i.spec.name == "p-echo" && matches!(i.state, State::Running | State::Starting)
                })
                .map(|i| describe(&i))
                .collect();
            expect(copies.is_empty(), || {
                format!("node 4 runs p-echo again: {copies:?}")
            })?;
            let owner = t.owner_moves(4, 3, 62, 4, 10)?;
            expect(owner == 1, || format!("owner {owner}"))?;
            // Node 4's directory learns where endpoint 62 lives again (node 1 announces it over the new link).
            let api4 = t.c.api(4);
            eventually(
                t.d(10),
                "node 4 to place endpoint 62 on node 1",
                || match api4.placed(3, 62)? {
                    Some(1) => Ok(()),
                    other => Err(format!("placed on {other:?}")),
                },
            )
            .map_err(|e| e.to_string())?;
            t.run(4, client("p-call", 3, 63, 62, 1000, &[]))?;
            let v = t.wait(4, "p-call", "its bench to end", 60, bench_done)?;
            all_answered(&v, 1000)?;
            t.c.api(4).stop("p-call")
        },
    );

    r.check(
        "7_drained_node_is_empty_and_its_endpoints_answer_elsewhere",
        || {
            let before: Vec<(String, u16, Vec<u32>)> =
                t.c.api(1)
                    .instances()?
                    .into_iter()
                    .map(|i| (i.spec.name, i.spec.dc, i.spec.endpoints))
                    .collect();
            expect(!before.is_empty(), || "node 1 has nothing to drain".into())?;
            let out = t.c.cli_ok(1, &["node", "drain", "1"])?;
            expect(out.contains("node 1 is empty"), || {
                format!("dvs node drain said: {out}")
            })?;
            let left = t.c.api(1).instances()?;
            expect(left.is_empty(), || format!("node 1 still has {left:?}"))?;
            // Each endpoint answers where it went: a caller on node 4 (DC 3) or node 2 (DC 1) per endpoint.
            for (i, (name, dc, eps)) in before.iter().enumerate() {
                let from = if *dc == 3 { 4 } else { 2 };
                let Some(&ep) = eps.first() else { continue };
                let caller = format!("d-call-{i}");
                t.run(from, client(&caller, *dc, 70 + i as u32, ep, 500, &[]))?;
                let v = t.wait(from, &caller, "its bench to end", 60, bench_done)?;
                all_answered(&v, 500)
                    .map_err(|e| format!("calling {name}'s endpoint {ep}: {e}"))?;
                t.c.api(from).stop(&caller)?;
            }
            Ok(())
        },
    );

    r.check("8_randomized_schedule_keeps_one_owner_and_one_copy", || {
        schedule(t)
    });
}

/// splitmix64: a small seeded generator, so that a schedule can be run again from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// The echo servers of the schedule: (name, endpoint).
const ECHOES: [(&str, u32); 3] = [("s-echo-0", 80), ("s-echo-1", 81), ("s-echo-2", 82)];
/// The schedule's DC.
const SDC: u16 = 5;

/// A seeded schedule (`DVS_SCHEDULE_SEED`, `DVS_SCHEDULE_STEPS`; printed, so that a failure can be run again)
/// of migrations, node kills and restarts, and partitions of node 4, over three `always` echo servers in a DC
/// on all four nodes. After each step, once it settles: every echo endpoint has exactly one owner in etcd, a
/// live node, which runs the echo, and no other live node runs a copy. Every few steps and at the end, a
/// caller's sendrecs to each endpoint are all answered (none lost; the client checks each reply's content).
fn schedule(t: &mut T<'_>) -> Result<(), String> {
    let seed = std::env::var("DVS_SCHEDULE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20261204u64);
    let steps: usize = std::env::var("DVS_SCHEDULE_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(80);
    println!("    schedule: seed {seed}, {steps} steps (DVS_SCHEDULE_SEED / DVS_SCHEDULE_STEPS)");
    let mut rng = Rng(seed);
    // Every node up, every etcd member up, a DC on all four.
    t.c.restart_etcd(2, secs(20)).map_err(|e| e.to_string())?;
    t.c.restart_node(3, secs(30)).map_err(|e| e.to_string())?;
    for n in 1..=4 {
        for m in (n + 1)..=4 {
            t.c.wait_peer(n, m, true, t.d(20))
                .map_err(|e| e.to_string())?;
        }
    }
    t.c.cli_ok(
        1,
        &["dc", "create", "chaos", "--id", "5", "--nodes", "1,2,3,4"],
    )?;
    for (i, (name, ep)) in ECHOES.iter().enumerate() {
        let on = 1 + (i as u16 % 4);
        t.run(on, always(vos(name, SDC, &[*ep], &["echo"], None, &[])))?;
        t.ready(on, name)?;
    }
    let mut down: Option<u16> = None;
    let mut log = Vec::new();
    let (mut migrations, mut refused) = (0u32, 0u32);
    for step in 0..steps {
        let roll = rng.below(10);
        let what = if let (Some(n), true) = (down, roll >= 6) {
            t.c.restart_node(n, secs(30))
                .map_err(|e| format!("step {step}: {e}"))?;
            down = None;
            links_up(t, n).map_err(|e| format!("step {step}: {e}"))?;
            format!("restart node {n}")
        } else if down.is_none() && roll >= 8 {
            let n = 2 + rng.below(3) as u16;
            t.c.kill_node(n);
            down = Some(n);
            format!("kill node {n}")
        } else if down.is_none() && roll == 7 {
            // Node 4 holds no etcd member: cutting it off leaves etcd its quorum.
            t.c.set_link(4, false).map_err(|e| e.to_string())?;
            eventually(t.d(20), "node 4's daemon to stop", || {
                t.c.daemon_exited(4)
                    .map(|_| ())
                    .ok_or_else(|| "running".to_string())
            })
            .map_err(|e| format!("step {step}: {e}"))?;
            t.c.set_link(4, true).map_err(|e| e.to_string())?;
            t.c.restart_node(4, secs(30))
                .map_err(|e| format!("step {step}: {e}"))?;
            links_up(t, 4).map_err(|e| format!("step {step}: {e}"))?;
            "partition node 4, heal, restart it".to_string()
        } else {
            let (name, ep) = ECHOES[rng.below(ECHOES.len())];
            let from = owner(t, ep)?;
            let live: Vec<u16> = (1..=4).filter(|n| Some(*n) != down && *n != from).collect();
            let to = live[rng.below(live.len())];
            // A move may be refused (the destination just came back and is not reachable from the source
            // yet): the instance then stays where it was, which the check after the step holds it to.
            migrations += 1;
            match t.c.api(from).migrate(name, to) {
                Ok(_) => format!("migrate {name} {from} -> {to}"),
                Err(e) => {
                    refused += 1;
                    format!("migrate {name} {from} -> {to} refused ({e})")
                }
            }
        };
        log.push(format!("{step}: {what}"));
        settle(t, down).map_err(|e| {
            format!(
                "after step {step} ({what}): {e}\nschedule so far:\n{}",
                log.join("\n")
            )
        })?;
        if step % 8 == 7 || step + 1 == steps {
            call_all(t, down, step).map_err(|e| {
                format!(
                    "after step {step} ({what}): {e}\nschedule so far:\n{}",
                    log.join("\n")
                )
            })?;
        }
    }
    println!(
        "    schedule done ({migrations} migrations, {refused} refused): {}",
        log.join("; ")
    );
    expect(refused * 4 <= migrations, || {
        format!("{refused} of {migrations} migrations were refused")
    })
}

/// Waits until every other node's peer link to node `n` (just restarted) is up again.
fn links_up(t: &T<'_>, n: u16) -> Result<(), String> {
    for m in (1..=4).filter(|m| *m != n) {
        t.c.wait_peer(m, n, true, t.d(20))
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// The node etcd says owns echo endpoint `ep` of the schedule's DC (one owner, or an error).
fn owner(t: &T<'_>, ep: u32) -> Result<u16, String> {
    match owners(t.c, 1, SDC, ep)?.as_slice() {
        [n] => Ok(*n),
        other => Err(format!("endpoint {ep} has owners {other:?}")),
    }
}

/// The nodes that own endpoint `ep` of `dc` in etcd, as node `from` reads it.
fn owners(c: &Cluster, from: u16, dc: u16, ep: u32) -> Result<Vec<u16>, String> {
    Ok(c.api(from)
        .control()?
        .owners
        .iter()
        .filter(|o| o.dc == dc && o.ep == ep)
        .map(|o| o.node)
        .collect())
}

/// Waits until every echo endpoint has one owner, a live node running that echo, and no live copy elsewhere.
fn settle(t: &T<'_>, down: Option<u16>) -> Result<(), String> {
    eventually(t.d(30), "one owner and one live copy of every echo", || {
        let live: Vec<u16> = (1..=4).filter(|n| Some(*n) != down).collect();
        let mut copies: Vec<(String, u16)> = Vec::new();
        for &n in &live {
            for i in t.c.api(n).instances()? {
                if ECHOES.iter().any(|(e, _)| *e == i.spec.name)
                    && matches!(i.state, State::Running | State::Starting)
                {
                    copies.push((i.spec.name.clone(), n));
                }
            }
        }
        for (name, ep) in ECHOES {
            let on = owner(t, ep)?;
            let here: Vec<u16> = copies
                .iter()
                .filter(|(c, _)| c == name)
                .map(|(_, n)| *n)
                .collect();
            if here != [on] || !live.contains(&on) {
                return Err(format!(
                    "{name}: owner node {on}, live copies on {here:?} (down: {down:?})"
                ));
            }
        }
        Ok(())
    })
    .map_err(|e| e.to_string())
}

/// A caller on a live node for each echo endpoint: 200 sendrecs, all answered.
fn call_all(t: &T<'_>, down: Option<u16>, step: usize) -> Result<(), String> {
    let from = if down == Some(1) { 2 } else { 1 };
    for (i, (name, ep)) in ECHOES.iter().enumerate() {
        let caller = format!("s-call-{step}-{i}");
        t.run(from, client(&caller, SDC, 90 + i as u32, *ep, 200, &[]))?;
        let v = t.wait(from, &caller, "its bench to end", 60, bench_done)?;
        all_answered(&v, 200).map_err(|e| format!("calling {name}: {e}"))?;
        t.c.api(from).stop(&caller)?;
    }
    Ok(())
}
