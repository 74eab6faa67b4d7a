//! `make cluster-test`: three dvs nodes as network namespaces on one bridge, one daemon each, and the
//! cluster's checks as named tests, in order (they share the cluster; later ones kill nodes earlier ones
//! used). Every instance that a VOS can be is a real VOS VM (QEMU, KVM when /dev/kvm works, else TCG with
//! 3x the deadlines); role doubles (`dvs-double`, the `process` backend) only play what a VOS never does:
//! the ARP probes, the spoofer, the garbage sender and the console liar. Results come from the typed API:
//! instance views with the guest's control records (Ready, Counters, Reports), the proxy's counters and
//! directory. Waits are on events (long polls on an instance's revision) or bounded re-checks, never fixed
//! sleeps.
//!
//! Needs root, QEMU, `images/vos.elf` and the `dvs` binary next to this test's `dvs-double`
//! (`make cluster-test` builds them and sets `DVS_CLUSTER_TEST=1`; without it this target passes at once,
//! so `cargo test --workspace` boots no cluster). `DVS_ACCEL=kvm|tcg` overrides the accelerator;
//! `DVS_BIN` the dvs binary; `DVS_CLUSTER_ONLY=storage` runs only section 7 (the VOS factored over the
//! three nodes, `cluster/storage.rs`), for work on it.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use dvs_hypervisor::config::BackendKind;
use dvs_hypervisor::instances::{InstanceSpec, InstanceView, State};
use dvs_instance::spec::{mac_string, Accel};
use dvs_test_support::api::describe;
use dvs_test_support::cluster::{is_root, Cluster, ClusterConfig};
use dvs_test_support::runner::Runner;
use dvs_test_support::vos::{
    all_answered, bench_done, client, ended, expect, failure, reports, sendrecs_done, vos,
};
use dvs_test_support::wait::{eventually, Deadline};
use dvs_vos_abi::control::BenchStep;
use dvs_vos_abi::Report;
use m3ipc_core::ErrorCode;

#[path = "cluster/storage.rs"]
mod storage;

/// The checks of sections 1-6, in order (the runner prints `running N tests` from this count and
/// [`storage::CHECKS`]).
const CHECKS: usize = 33;

fn root_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn double_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_dvs-double"))
}

fn dvs_bin() -> PathBuf {
    std::env::var_os("DVS_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            double_bin()
                .parent()
                .map(|d| d.join("dvs"))
                .unwrap_or_else(|| PathBuf::from("dvs"))
        })
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// A role double (`dvs-double ROLE KNOBS...`, the node's process backend).
fn double(name: &str, dc: u16, eps: &[u32], ip: Option<&str>, role: &[&str]) -> InstanceSpec {
    let mut s = vos(name, dc, eps, &[], None, &[]);
    s.ip = ip.map(String::from);
    s.backend = Some(BackendKind::Process);
    s.process_args = role.iter().map(|s| s.to_string()).collect();
    s
}

/// Expects `v`'s first sendrec to `peer` to have failed with `code` (by its wire code, or its name).
fn failed_with(v: &InstanceView, peer: u32, code: ErrorCode) -> Result<(), String> {
    let ok = reports(v).iter().any(|r| {
        matches!(r, Report::Failed { step: BenchStep::Sendrec, index: 0, peer: p, code: c, error }
            if *p == peer && (*c == code as u16 || error.contains(&format!("{code:?}"))))
    });
    expect(ok, || {
        format!(
            "expected Report::Failed {{ Sendrec 0 to {peer}: {code:?} (code {}) }}; got {}",
            code as u16,
            describe(v)
        )
    })
}

/// The cluster as the checks use it: instance runs and waits with deadlines scaled for the accelerator.
struct Ctx<'a> {
    c: &'a Cluster,
}

impl Ctx<'_> {
    fn d(&self, kvm: u64) -> Deadline {
        self.c.deadline(secs(kvm))
    }

    fn run(&self, node: u16, spec: InstanceSpec) -> Result<(), String> {
        self.c.api(node).run(spec).map(|_| ())
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

    /// Waits until `name` runs (its Ready record arrived), failing if it ended instead.
    fn ready(&self, node: u16, name: &str) -> Result<InstanceView, String> {
        dvs_test_support::vos::ready(self.c, node, name)
    }

    fn bench(&self, node: u16, name: &str, kvm: u64) -> Result<InstanceView, String> {
        self.wait(
            node,
            name,
            "its bench to end (Report::Sendrecs or Failed)",
            kvm,
            bench_done,
        )
    }

    fn placed(&self, from: u16, dc: u16, ep: u32, on: u16, kvm: u64) -> Result<(), String> {
        let api = self.c.api(from);
        eventually(
            self.d(kvm),
            &format!("node {from}'s directory to place endpoint {ep} of DC {dc} on node {on}"),
            || match api.placed(dc, ep)? {
                Some(n) if n == on => Ok(()),
                other => Err(format!("placed on {other:?}")),
            },
        )
        .map_err(|e| e.to_string())
    }

    fn port_counter(
        &self,
        node: u16,
        port: &str,
        f: fn(&dvs_proxy::counters::PortCounters) -> u64,
    ) -> Result<u64, String> {
        let st = self.c.api(node).counters()?;
        st.ports.get(port).map(f).ok_or_else(|| {
            format!(
                "node {node} has no port '{port}' (ports: {:?})",
                st.ports.keys().collect::<Vec<_>>()
            )
        })
    }
}

fn main() -> ExitCode {
    if std::env::var_os("DVS_CLUSTER_TEST").is_none() {
        println!(
            "cluster-test: skipped (it boots a three-node cluster as root): `make cluster-test` runs it, \
             or set DVS_CLUSTER_TEST=1"
        );
        return ExitCode::SUCCESS;
    }
    let accel = Accel::detect();
    println!(
        "cluster-test: accelerator {} (DVS_ACCEL=kvm|tcg overrides{})",
        accel.name(),
        if accel == Accel::Tcg {
            "; TCG: deadlines x3"
        } else {
            ""
        }
    );
    if !is_root() {
        eprintln!("cluster-test: needs root (network namespaces, veth pairs, a bridge): run `sudo make cluster-test`");
        return ExitCode::FAILURE;
    }
    let image = root_dir().join("images/vos.elf");
    if !image.is_file() {
        eprintln!(
            "cluster-test: {} is missing: run `make images` first",
            image.display()
        );
        return ExitCode::FAILURE;
    }
    let mut cfg = ClusterConfig::new(3, dvs_bin())
        .dc(1, "alpha", &[1, 2, 3])
        .dc(2, "beta", &[1, 2])
        .dc(3, "web", &[1, 2, 3])
        .dc_with(
            4,
            "quota",
            &[1],
            "quota = { memory_mib = 300, cpu_percent = 300 }",
        );
    cfg.accel = accel;
    cfg.node_toml_extra = format!(
        "backend = \"qemu\"\nprocess_program = \"{}\"\n",
        double_bin().display()
    );
    let t0 = Instant::now();
    let mut cluster = match Cluster::up(cfg, secs(20)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cluster-test: bringing up the cluster failed: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "cluster-test: three nodes up in {:.1} s (work dir {})",
        t0.elapsed().as_secs_f64(),
        cluster.work_dir().display()
    );
    let only_storage = std::env::var("DVS_CLUSTER_ONLY").is_ok_and(|v| v == "storage");
    let mut r = Runner::new(if only_storage {
        storage::CHECKS
    } else {
        CHECKS + storage::CHECKS
    });
    if !only_storage {
        checks(&mut cluster, &mut r, &image);
    }
    storage::checks(
        &Ctx { c: &cluster },
        &mut r,
        &root_dir().join("examples/web-dc-3node.toml"),
    );
    if r.failed() > 0 {
        cluster.keep_logs();
    }
    let code = r.finish();
    drop(cluster);
    code
}

fn checks(cl: &mut Cluster, r: &mut Runner, image: &Path) {
    let mut t = Ctx { c: cl };

    // ---- 1. the image, pushed to all three nodes through the API (`dvs image push --all`) and verified ----
    let sha = r.step("push the image to every node", || {
        let bytes = std::fs::read(image).map_err(|e| format!("{}: {e}", image.display()))?;
        let img = image.display().to_string();
        t.c.cli_ok(1, &["image", "push", "--all", &img])?;
        Ok(dvs_hypervisor::images::sha256_hex(&bytes))
    });
    for n in 1..=3u16 {
        r.check(&format!("1_image_verified_on_node_{n}"), || {
            let sha = sha.as_deref().unwrap_or_default();
            let check = t.c.api(n).image(sha)?;
            expect(check.verified, || {
                format!("node {n} holds {sha} but it does not re-hash: {check:?}")
            })
        });
    }

    // ---- 2. DC 1 spans three nodes, DC 2 two; instances deployed with `dvs apply` ----
    let dcs = r
        .step("dvs dc ls", || t.c.cli_ok(1, &["dc", "ls"]))
        .unwrap_or_default();
    let spans = |id: &str, name: &str, nodes: &str| -> Result<(), String> {
        let ok = dcs.lines().any(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            w.len() >= 3 && w[0] == id && w[1] == name && w[2] == nodes
        });
        expect(ok, || {
            format!("expected a line `{id} {name} {nodes} ...` in `dvs dc ls`; got:\n{dcs}")
        })
    };
    r.check("2_dc_alpha_spans_nodes_1_2_3", || {
        spans("1", "alpha", "1,2,3")
    });
    r.check("2_dc_beta_spans_nodes_1_2", || spans("2", "beta", "1,2"));
    let work = t.c.work_dir().to_path_buf();
    let alpha = work.join("alpha.toml");
    let beta = work.join("beta.toml");
    let apply2 = r.step("dvs apply alpha.toml, beta.toml, alpha.toml again", || {
        let echo = |name: &str, node: u16, ep: u32, args: &str| {
            format!(
                "[[instance]]\nname = \"{name}\"\nimage = \"vos\"\nnode = {node}\nendpoints = [{ep}]\n\
                 services = [\"echo\"]\nmemory = 48\nargs = [{args}]\nrestart = \"on-failure\"\n"
            )
        };
        let text = format!(
            "[dc]\nname = \"alpha\"\n{}{}{}",
            echo("echo1", 1, 101, "\"buf=16777216\", \"stats=1\""),
            echo("echo2", 2, 201, "\"stats=1\""),
            echo("echo3", 3, 301, "\"buf=16777216\", \"stats=1\"")
        );
        std::fs::write(&alpha, text).map_err(|e| e.to_string())?;
        // The same endpoint number as echo1 of DC 1: each DC has its own space.
        std::fs::write(
            &beta,
            "[dc]\nid = 2\n[[instance]]\nname = \"b-echo\"\nimage = \"vos\"\nnode = 2\nendpoints = [101]\n\
             services = [\"echo\"]\nmemory = 48\n",
        )
        .map_err(|e| e.to_string())?;
        let (a, b) = (alpha.display().to_string(), beta.display().to_string());
        t.c.cli_ok(1, &["apply", &a])?;
        t.c.cli_ok(1, &["apply", &b])?;
        for (n, name) in [(1, "echo1"), (2, "echo2"), (3, "echo3"), (2, "b-echo")] {
            t.ready(n, name)?;
        }
        t.c.cli_ok(1, &["apply", &a])
    });
    r.check("2_apply_again_changes_nothing", || {
        let out = apply2.clone().unwrap_or_default();
        expect(out.contains("0 change(s)"), || {
            format!("expected `0 change(s)` from the second apply; got:\n{out}")
        })
    });
    r.check("2_console_ready_line_is_not_readiness", || {
        t.run(1, double("liar", 1, &[141], None, &["console-liar"]))?;
        // Its one Counters record comes after its console line: once the view shows it, the daemon has
        // read the channel past the lie.
        let v = t.wait(1, "liar", "its Counters record", 15, |v| {
            v.guest.counters.is_some() || ended(v)
        })?;
        let log = t.c.api(1).logs("liar")?;
        t.c.api(1).stop("liar")?;
        expect(log.contains("dvs: ready"), || {
            format!("expected `dvs: ready` on liar's console; got:\n{log}")
        })?;
        expect(
            v.state == State::Starting && v.guest.ready.is_none(),
            || format!("expected state starting and no Ready; got {}", describe(&v)),
        )
    });

    // ---- 3. cross-node and same-node sendrec, notify, 16 MiB vcopy ----
    let benches = r.step(
        "bx (node 1 -> 301 on node 3, 16 MiB vcopy) and bl (node 1 -> 101)",
        || {
            t.placed(1, 1, 301, 3, 10)?;
            let mut bx = client("bx", 1, 111, 301, 1000, &["vcopy=16777216"]);
            bx.memory = Some(48);
            t.run(1, bx)?;
            t.run(1, client("bl", 1, 121, 101, 1000, &[]))?;
            let bx = t.wait(1, "bx", "Report::Vcopy or Failed", 60, |v| {
                reports(v).iter().any(|r| matches!(r, Report::Vcopy { .. }))
                    || failure(v).is_some()
                    || ended(v)
            })?;
            let bl = t.bench(1, "bl", 60)?;
            for v in [&bx, &bl] {
                println!("-- {}: {:?}", v.spec.name, reports(v));
            }
            Ok((bx, bl))
        },
    );
    let (bx, bl) = benches.unzip();
    r.check("3_cross_node_sendrecs_all_answered", || {
        all_answered(bx.as_ref().ok_or("no bx")?, 1000)
    });
    r.check("3_same_node_sendrecs_all_answered", || {
        all_answered(bl.as_ref().ok_or("no bl")?, 1000)
    });
    r.check("3_vcopy_16mib_cross_node_verified", || {
        let v = bx.as_ref().ok_or("no bx")?;
        let ok = reports(v).iter().any(|r| {
            matches!(
                r,
                Report::Vcopy {
                    bytes: 16_777_216,
                    ..
                }
            )
        });
        expect(ok, || {
            format!(
                "expected Report::Vcopy {{ bytes: 16777216 }}; got {}",
                describe(v)
            )
        })
    });
    for (name, v) in [("cross_node", &bx), ("same_node", &bl)] {
        r.check(&format!("3_no_bench_failures_{name}"), || {
            let v = v.as_ref().ok_or("no view")?;
            expect(failure(v).is_none(), || {
                format!("expected no Report::Failed; got {}", describe(v))
            })
        });
    }
    r.check("3_frames_counted_on_both_sides", || {
        let sent = t.port_counter(1, "bx", |p| p.rx.frames)?;
        let got = t.port_counter(3, "echo3", |p| p.tx.frames)?;
        let st = t.c.api(1).counters()?;
        if let Some(p) = st.peers.get(&3) {
            println!("-- peer link node 1 -> node 3: {p:?}");
        }
        println!("-- counted: node 1 port bx sent {sent} frames, node 3 port echo3 received {got}");
        expect(sent >= 1000 && got >= 1000, || {
            format!("expected >= 1000 frames sent by bx (node 1) and delivered to echo3 (node 3); got {sent} and {got}")
        })
    });
    r.check("3_notify_delivered_and_coalesced", || {
        t.run(3, vos("ntf-echo", 1, &[302], &["echo"], None, &["stats=1"]))?;
        t.ready(3, "ntf-echo")?;
        t.placed(1, 1, 302, 3, 10)?;
        t.run(1, client("ntf", 1, 131, 302, 1, &["notify_n=100"]))?;
        let ntf = t.wait(1, "ntf", "Report::Notifies", 20, |v| {
            reports(v)
                .iter()
                .any(|r| matches!(r, Report::Notifies { .. }))
                || failure(v).is_some()
                || ended(v)
        })?;
        expect(
            reports(&ntf).contains(&Report::Notifies { sent: 100 }),
            || {
                format!(
                    "expected Report::Notifies {{ sent: 100 }}; got {}",
                    describe(&ntf)
                )
            },
        )?;
        let notified =
            |v: &InstanceView| v.guest.counters.as_ref().map_or(0, |c| c.notify_received);
        let v = t.wait(
            3,
            "ntf-echo",
            "counters with notify_received >= 1",
            20,
            |v| notified(v) >= 1,
        )?;
        // Settle: the echo sends counters when they change (at most once a second, stats=1); wait until a
        // stats interval passes with no new count, each change waking the wait at once.
        let mut last = notified(&v);
        let mut rev = v.rev;
        loop {
            let quiet = Deadline::after(t.c.accel.timeout(Duration::from_millis(1500)));
            match t
                .c
                .api(3)
                .wait_view("ntf-echo", "a change of notify_received", quiet, |v| {
                    v.rev > rev && notified(v) != last
                }) {
                Ok(v) => {
                    last = notified(&v);
                    rev = v.rev;
                }
                Err(_) => break,
            }
        }
        println!("-- notify: 100 sent back to back, {last} delivered (pending ones coalesce)");
        expect((1..100).contains(&last), || {
            format!("expected 1 <= notify_received < 100; got {last}")
        })
    });

    // ---- 4. isolation ----
    r.check("4_machines_confined_unprivileged_in_their_cgroups", || {
        let mut uids = std::collections::BTreeSet::new();
        let running: Vec<_> =
            t.c.api(1)
                .instances()?
                .into_iter()
                .filter(|v| v.state == State::Running && v.pid.is_some())
                // QEMU instances: host-program doubles are not machines to confine.
                .filter(|v| v.spec.backend != Some(BackendKind::Process))
                .collect();
        expect(!running.is_empty(), || {
            "no running QEMU instance on node 1".into()
        })?;
        for v in &running {
            let pid = v.pid.unwrap_or_default();
            let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
                .map_err(|e| format!("{}: /proc/{pid}/status: {e}", v.spec.name))?;
            let field = |f: &str| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(&format!("{f}:")))
                    .map(|v| v.split_whitespace().map(String::from).collect::<Vec<_>>())
                    .unwrap_or_default()
            };
            let cgroups =
                std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
            let uid = field("Uid");
            let in_cgroup = cgroups
                .lines()
                .any(|l| l.contains("/dvs/1.") && l.ends_with(&format!("/{}", v.spec.name)));
            println!(
                "-- {} (pid {pid}): uid {uid:?} seccomp {:?} in its cgroup {in_cgroup}",
                v.spec.name,
                field("Seccomp")
            );
            expect(
                uid.first().is_some_and(|u| u != "0")
                    && uid.iter().all(|u| Some(u) == uid.first())
                    && field("Seccomp") == ["2"]
                    && in_cgroup
                    && uids.insert(uid[0].clone()),
                || {
                    format!(
                        "{} is not confined (or shares a uid):\n{status}\n{cgroups}",
                        v.spec.name
                    )
                },
            )?;
        }
        Ok(())
    });
    r.check("4_dc_quota_refuses_what_does_not_fit", || {
        let mut q1 = vos("q1", 4, &[10], &["echo"], Some(32), &[]);
        q1.limits.memory_mib = Some(200);
        t.run(1, q1)?;
        let v = t.wait(1, "q1", "running", 20, |v| v.state == State::Running)?;
        let mut q2 = vos("q2", 4, &[11], &["echo"], Some(32), &[]);
        q2.limits.memory_mib = Some(150);
        let refused = t.run(1, q2);
        println!("-- q2 (150 MiB beside q1's 200 in a DC of 300): {refused:?}");
        expect(
            refused
                .as_ref()
                .is_err_and(|e| e.contains("past its quota of 300 MiB")),
            || format!("expected a quota refusal, got {refused:?}"),
        )?;
        // The kernel holds the DC's machines to the quota too: the DC's cgroup above q1's.
        let pid = v.pid.unwrap_or_default();
        let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
        let mem = cgroups
            .lines()
            .find(|l| l.contains(":memory:") || l.starts_with("0::"))
            .and_then(|l| l.rsplit_once(':'))
            .map(|(_, p)| p.trim_end_matches("/q1").to_string())
            .unwrap_or_default();
        let root = if cgroups.contains(":memory:") {
            "/sys/fs/cgroup/memory"
        } else {
            "/sys/fs/cgroup"
        };
        let limit = ["memory.limit_in_bytes", "memory.max"]
            .iter()
            .find_map(|f| std::fs::read_to_string(format!("{root}{mem}/{f}")).ok())
            .unwrap_or_default();
        println!("-- DC 4's cgroup {mem}: memory limit {}", limit.trim());
        t.c.api(1).stop("q1")?;
        expect(
            mem.ends_with("/dc4") && limit.trim() == (300u64 << 20).to_string(),
            || format!("DC 4's cgroup {mem:?} limit {limit:?}; q1's cgroups:\n{cgroups}"),
        )
    });
    r.check("4_other_dc_endpoint_looks_unknown", || {
        t.run(1, client("xdc", 2, 511, 301, 1, &[]))?;
        let v = t.bench(1, "xdc", 30)?;
        failed_with(&v, 301, ErrorCode::UnknownDestination)
    });
    // LAN hosts: real VOS instances with a fabric address (they answer ARP). 10.1.0.3 only in DC 1,
    // 10.1.0.1 in both DCs.
    let lan = r.step(
        "LAN hosts lan-a, lan-c (DC 1), lan-b (DC 2) and three ARP probes",
        || {
            let host = |name: &str, dc: u16, ip: &str| {
                let mut s = vos(name, dc, &[], &["udp-echo"], None, &[]);
                s.ip = Some(ip.into());
                s
            };
            t.run(3, host("lan-a", 1, "10.1.0.3/24"))?;
            t.run(1, host("lan-c", 1, "10.1.0.1/24"))?;
            t.run(2, host("lan-b", 2, "10.1.0.1/24"))?;
            let a = t.ready(3, "lan-a")?;
            t.ready(1, "lan-c")?;
            let b = t.ready(2, "lan-b")?;
            t.run(
                1,
                double(
                    "probe2",
                    2,
                    &[],
                    Some("10.1.0.9/24"),
                    &["arp-probe", "ask=10.1.0.3"],
                ),
            )?;
            t.run(
                1,
                double(
                    "probe2b",
                    2,
                    &[],
                    Some("10.1.0.8/24"),
                    &["arp-probe", "ask=10.1.0.1"],
                ),
            )?;
            t.run(
                1,
                double(
                    "probe1",
                    1,
                    &[],
                    Some("10.1.0.9/24"),
                    &["arp-probe", "ask=10.1.0.3"],
                ),
            )?;
            let mut answers = Vec::new();
            for p in ["probe2", "probe2b", "probe1"] {
                let v = t.wait(1, p, "Report::Arp", 20, |v| {
                    reports(v).iter().any(|r| matches!(r, Report::Arp { .. })) || ended(v)
                })?;
                let answer = reports(&v).iter().find_map(|r| match r {
                    Report::Arp { answer, .. } => Some(answer.map(|m| mac_string(&m))),
                    _ => None,
                });
                println!("-- {p}: {answer:?}");
                answers.push(
                    answer.ok_or_else(|| format!("{p} sent no Report::Arp: {}", describe(&v)))?,
                );
            }
            Ok((answers, a.mac, b.mac))
        },
    );
    let (answers, amac, bmac) = match lan {
        Some((ans, a, b)) => (ans, a, b),
        None => (vec![None, None, None], String::new(), String::new()),
    };
    r.check("4_dc2_cannot_arp_dc1_addresses", || {
        expect(answers[0].is_none(), || {
            format!(
                "expected no answer to DC 2's who-has 10.1.0.3; got {:?}",
                answers[0]
            )
        })
    });
    r.check("4_same_ip_in_dc2_answers_with_dc2_instance", || {
        expect(answers[1].as_deref() == Some(bmac.as_str()), || {
            format!(
                "expected 10.1.0.1 in DC 2 to be lan-b ({bmac}); got {:?}",
                answers[1]
            )
        })
    });
    r.check("4_dc1_resolves_its_own_address_across_nodes", || {
        expect(answers[2].as_deref() == Some(amac.as_str()), || {
            format!(
                "expected 10.1.0.3 in DC 1 to be lan-a ({amac}, node 3); got {:?}",
                answers[2]
            )
        })
    });
    r.check("4_spoofed_frames_dropped_and_counted", || {
        t.run(1, double("spoofer", 1, &[151], None, &["spoofer", "as=301", "to=301", "count=10"]))?;
        t.wait(1, "spoofer", "Report::Injected", 15, |v| {
            reports(v).iter().any(|r| matches!(r, Report::Injected { .. })) || ended(v)
        })?;
        let n = eventually(t.d(5), "node 1 to count 10 spoofed frames at port spoofer", || {
            let n = t.port_counter(1, "spoofer", |p| p.drops.spoofed)?;
            if n >= 10 { Ok(n) } else { Err(format!("drops.spoofed = {n}")) }
        })
        .map_err(|e| e.to_string())?;
        println!("-- the spoofer sent 10 frames as endpoint 301; node 1 dropped {n} (counted on its port)");
        Ok(())
    });
    r.check("4_nothing_spoofed_reached_echo3", || {
        let n = t.port_counter(3, "echo3", |p| p.drops.spoofed)?;
        let echo3 = t.c.api(3).instance("echo3")?;
        let served = echo3.guest.counters.as_ref().map_or(0, |c| c.spoofed);
        expect(n == 0 && served == 0, || {
            format!("expected 0 spoofed frames at echo3; proxy counted {n}, guest {served}")
        })
    });

    r.check("4_garbage_frames_dropped_as_malformed", || {
        // 32 frames, a quarter of each kind: bad magic, truncated header, runt, unknown EtherType (the
        // last is LAN traffic, switched, not dropped).
        t.run(
            1,
            double("garbage", 1, &[152], None, &["garbage", "count=32"]),
        )?;
        t.wait(1, "garbage", "Report::Injected", 15, |v| {
            reports(v)
                .iter()
                .any(|r| matches!(r, Report::Injected { .. }))
                || ended(v)
        })?;
        eventually(
            t.d(5),
            "node 1 to count 24 malformed frames at port garbage",
            || {
                let n = t.port_counter(1, "garbage", |p| p.drops.malformed)?;
                if n >= 24 {
                    Ok(())
                } else {
                    Err(format!("drops.malformed = {n}"))
                }
            },
        )
        .map_err(|e| e.to_string())
    });

    // ---- 5. faults: node 2's daemon dies, then comes back ----
    let killed = t.c.machine_pids(2);
    if !r.aborted() {
        let status = cl.kill_node(2);
        println!("-- node 2's daemon killed ({status}); its machines were {killed:?}");
    }
    t = Ctx { c: cl };
    r.step("node 1 sees node 2 down", || {
        t.c.wait_peer(1, 2, false, t.d(10))
            .map_err(|e| e.to_string())
    });
    r.check("5_no_machine_outlives_its_daemon", || {
        eventually(t.d(5), "node 2's machines to end with its daemon", || {
            let left = t.c.machine_pids(2);
            if left.is_empty() {
                Ok(())
            } else {
                Err(format!("still running: {left:?} (of {killed:?})"))
            }
        })
        .map_err(|e| e.to_string())
    });
    r.check("5_calls_to_down_node_fail_unreachable", || {
        let t0 = Instant::now();
        t.run(1, client("f1", 1, 161, 201, 1, &[]))?;
        let v = t.bench(1, "f1", 30)?;
        println!(
            "-- call to node 2 while it is down: {:?} (boot + call: {} ms)",
            failure(&v),
            t0.elapsed().as_millis()
        );
        failed_with(&v, 201, ErrorCode::NodeUnreachable)
    });
    r.check("5_traffic_between_nodes_1_and_3_goes_on", || {
        t.run(1, client("f2", 1, 171, 301, 1000, &[]))?;
        all_answered(&t.bench(1, "f2", 60)?, 1000)
    });
    // Node 1 restarts while node 2 is still down: it remembers where 201 was (directory.json), so calls to
    // it still fail with "unreachable", not "unknown destination".
    r.step("stop the clients, restart node 1's daemon", || {
        for b in ["bx", "bl", "ntf", "xdc", "f1", "f2"] {
            t.c.api(1).stop(b)?;
        }
        Ok(())
    });
    if !r.aborted() {
        let st = cl.stop_node(1, secs(5));
        println!("-- node 1's daemon stopped: {st}");
        let started = cl.start_node(1).map_err(|e| e.to_string());
        t = Ctx { c: cl };
        r.step("node 1 back, sees node 3", || {
            started?;
            t.c.wait_api(1, t.d(20)).map_err(|e| e.to_string())?;
            t.c.wait_peer(1, 3, true, t.d(20))
                .map_err(|e| e.to_string())
        });
    }
    r.check("5_restarted_node_still_knows_down_nodes_endpoints", || {
        t.run(1, client("f1b", 1, 163, 201, 1, &[]))?;
        failed_with(&t.bench(1, "f1b", 30)?, 201, ErrorCode::NodeUnreachable)
    });
    if !r.aborted() {
        let started = cl.start_node(2).map_err(|e| e.to_string());
        t = Ctx { c: cl };
        r.step("node 2 back, echo2 restored and placed on node 2", || {
            started?;
            t.c.wait_api(2, t.d(20)).map_err(|e| e.to_string())?;
            t.c.wait_peer(1, 2, true, t.d(20))
                .map_err(|e| e.to_string())?;
            t.ready(2, "echo2")?;
            t.placed(1, 1, 201, 2, 10)
        });
    }
    r.check("5_calls_succeed_after_node_2_restarts", || {
        t.run(1, client("f3", 1, 181, 201, 100, &[]))?;
        all_answered(&t.bench(1, "f3", 30)?, 100)
    });

    // ---- 5b. a machine dies: reported failed, restarted by its policy (on-failure), calls work again ----
    r.check("5b_killed_machine_reported_failed_and_restarted", || {
        let v = t.c.api(1).instance("echo1")?;
        let pid = v
            .pid
            .ok_or_else(|| format!("echo1 has no pid: {}", describe(&v)))?;
        let boots = v.boots;
        // SAFETY: kill(2) of the machine's pid as the API shows it (QEMU, a child of node 1's daemon).
        unsafe {
            libc::kill(pid as i32, libc::SIGKILL);
        }
        let v = t.wait(1, "echo1", "a new boot, running", 30, |v| {
            v.boots > boots && v.state == State::Running
        })?;
        println!(
            "-- echo1's machine was killed: {:?}; now boot {}",
            v.last_exit, v.boots
        );
        let exit = v.last_exit.clone().unwrap_or_default();
        expect(exit.contains("signal 9"), || {
            format!("expected last_exit to say signal 9; got {}", describe(&v))
        })
    });
    r.check("5b_calls_to_restarted_instance_succeed", || {
        t.run(1, client("f4", 1, 185, 101, 100, &[]))?;
        all_answered(&t.bench(1, "f4", 30)?, 100)
    });

    // ---- 6. migration of echo2 (node 2 -> 3 -> 1 -> 3) under a sendrec loop from node 1 ----
    let n: u32 = if t.c.accel == Accel::Tcg { 2000 } else { 10000 };
    let moves = r.step("migrate echo2 2 -> 3 -> 1 -> 3 while mc calls it", || {
        t.run(1, client("mc", 1, 191, 201, n, &[]))?;
        t.ready(1, "mc")?;
        let mut results = Vec::new();
        let mut seen = 0;
        for (from, to) in [(2u16, 3u16), (3, 1), (1, 3)] {
            // Let the client make progress before each move (its port's frame count, not a timer).
            let target = seen + u64::from(n / 20);
            seen = eventually(t.d(20), &format!("mc to send {target} frames"), || {
                let f = t.port_counter(1, "mc", |p| p.rx.frames)?;
                if f >= target {
                    Ok(f)
                } else {
                    Err(format!("{f} frames"))
                }
            })
            .map_err(|e| e.to_string())?;
            let m = t.c.api(from).migrate("echo2", to)?;
            println!(
                "-- migrated echo2 {} -> {} in {} ms ({} calls in flight refused)",
                m.from, m.to, m.took_ms, m.refused_in_flight
            );
            results.push((m.from, m.to));
        }
        let mc = t.bench(1, "mc", 120)?;
        Ok((results, mc))
    });
    let (results, mc) = moves.unzip();
    r.check("6_three_migrations_completed", || {
        let got = results.clone().unwrap_or_default();
        expect(got == [(2, 3), (3, 1), (1, 3)], || {
            format!("expected moves [(2, 3), (3, 1), (1, 3)]; got {got:?}")
        })
    });
    r.check("6_echo2_runs_on_node_3", || {
        let v = t.ready(3, "echo2")?;
        expect(v.node == 3, || describe(&v))
    });
    r.check("6_sendrecs_across_moves_all_answered", || {
        let v = mc.as_ref().ok_or("no mc")?;
        expect(sendrecs_done(v) == Some(n), || {
            format!(
                "expected Report::Sendrecs {{ n: {n} }}; got {}",
                describe(v)
            )
        })
    });
    r.check("6_no_bench_failure", || {
        let v = mc.as_ref().ok_or("no mc")?;
        expect(failure(v).is_none(), || {
            format!("expected no Report::Failed; got {}", describe(v))
        })
    });
    r.check("6_directory_places_201_on_node_3", || {
        t.placed(1, 1, 201, 3, 5)
    });
}
