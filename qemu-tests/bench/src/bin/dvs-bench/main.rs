//! `dvs-bench`: the helpers the bench scripts call.
//!   dvs-bench wait --node ADDR NAME ready|sendrecs|vcopy|local-sendrec [--timeout S]
//!       waits on the node's typed instance view (`guest.ready`, `guest.reports`, long-polling with
//!       `wait_after`) and prints the figure as `key=value` words; fails on a Failed report, a fatal
//!       record or a dead instance, saying which.
//!   dvs-bench wait ... hops|server-hops|loaded|timer-wake [--min-n N]
//!       the per-hop records of ipc-bench and of a server instance (the latest ServerHops with n ≥ N)
//!   dvs-bench proxy-timing --node ADDR (--save FILE | --since FILE)
//!       the switch's timing histograms (`/v1/counters` → `timing`): saved, or the window since the
//!       saved ones as key=value words (medians, p99, counts)
//!   dvs-bench settle --node ADDR [--ep DC:EP]...
//!       waits until the node's peer links are all up and the endpoints are in its directory
//!   dvs-bench put PART KEY=VALUE...      writes figures to target/bench/PART.json
//!   dvs-bench summary                    merges target/bench/*.json into target/bench/summary.json,
//!                                        with the data-path and http ratios under "ratios"
//!   dvs-bench merge PART SRC...          adds parts SRC to PART (bench-cluster's per-port-kind runs)
//!   dvs-bench breakdown                  the per-hop tables of one sendrec against the floors
//!   dvs-bench density [--max N]          the density benchmark (own daemon on 127.0.0.1:7170)
//!   dvs-bench http [--secs S] [--warmup S] [--targets nginx,aio,factored]
//!       the web server benchmark against nginx (scripts/bench-http.sh) → target/bench/http.json
//!   dvs-bench load ADDR PATH [--conns N] [--secs S] [--put BYTES] [--expect-len N]
//!       one case of the HTTP load generator against any server, printed

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand, ValueEnum};
use dvs_bench::{out_dir, Figures};
use dvs_vos_abi::Report;

mod datapath;
mod density;
mod http;
mod view;

/// Benchmark helpers of scripts/bench-*.sh.
#[derive(Parser, Debug)]
#[command(name = "dvs-bench")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Wait for an instance's Ready record or a report; print it as key=value words.
    Wait {
        /// The node's API (host:port).
        #[arg(long, env = "DVS_NODE", default_value = "127.0.0.1:7070")]
        node: String,
        /// Instance name.
        name: String,
        /// What to wait for.
        what: What,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
        /// server-hops: wait for a report covering at least this many requests.
        #[arg(long, default_value_t = 1)]
        min_n: u64,
    },
    /// The switch's timing histograms: save them, or print the window since saved ones.
    ProxyTiming {
        /// The node's API (host:port).
        #[arg(long, env = "DVS_NODE", default_value = "127.0.0.1:7070")]
        node: String,
        /// Write the histograms to this file.
        #[arg(long, conflicts_with = "since")]
        save: Option<std::path::PathBuf>,
        /// Print medians and p99 of the samples added since this file's histograms.
        #[arg(long)]
        since: Option<std::path::PathBuf>,
    },
    /// Wait until the node's peer links are up and the endpoints are in its directory.
    Settle {
        /// The node's API (host:port).
        #[arg(long, env = "DVS_NODE", default_value = "127.0.0.1:7070")]
        node: String,
        /// Endpoints to wait for, as DC:EP (repeatable).
        #[arg(long)]
        ep: Vec<String>,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 30)]
        timeout: u64,
    },
    /// Write figures (KEY=VALUE; numbers stay numbers) to target/bench/PART.json.
    Put {
        /// The part (file name without .json).
        part: String,
        /// The figures.
        figures: Vec<String>,
    },
    /// Merge target/bench/*.json into target/bench/summary.json.
    Summary,
    /// Add the figures of parts SRC to part PART (the SRC files go).
    Merge {
        /// The part that takes the figures.
        part: String,
        /// The parts merged into it.
        srcs: Vec<String>,
    },
    /// The per-hop breakdown of one sendrec and the floors, from cluster.json and vos.json.
    Breakdown,
    /// The density benchmark: idle VOS instances on one node until --max or < 1 GiB free.
    Density {
        /// Most instances to boot.
        #[arg(long, env = "DENSITY_MAX", default_value_t = 200)]
        max: usize,
    },
    /// The web server benchmark: the all-in-one and the three-node VOS against nginx.
    Http {
        /// Measurement window per case, seconds.
        #[arg(long, env = "BENCH_HTTP_SECS", default_value_t = 3.0)]
        secs: f64,
        /// Warm-up per case (not counted), seconds.
        #[arg(long, default_value_t = 0.5)]
        warmup: f64,
        /// Servers to run (nginx, aio, factored), comma-separated.
        #[arg(
            long,
            env = "BENCH_HTTP_TARGETS",
            value_delimiter = ',',
            default_value = "nginx,aio,factored"
        )]
        targets: Vec<String>,
    },
    /// One case of the HTTP load generator (keep-alive connections for a fixed window).
    Load {
        /// Server address (ip:port).
        addr: std::net::SocketAddr,
        /// Path to GET or PUT (PUT: connection i appends `.i`).
        path: String,
        /// Concurrent connections.
        #[arg(long, default_value_t = 1)]
        conns: usize,
        /// Window, seconds.
        #[arg(long, default_value_t = 3.0)]
        secs: f64,
        /// PUT a body of this many bytes instead of GET.
        #[arg(long)]
        put: Option<usize>,
        /// GET: the body length every response must have.
        #[arg(long)]
        expect_len: Option<u64>,
    },
}

/// What `wait` waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum What {
    /// The Ready record.
    Ready,
    /// A Sendrecs report: n, median_ns, p99_ns, ops_per_s.
    Sendrecs,
    /// A Vcopy report: bytes, push_us, pull_us, push_mb_s, pull_mb_s.
    Vcopy,
    /// A LocalSendrec report: calls, ns_per_call.
    LocalSendrec,
    /// A Hops report: n, issue_to_tx_ns, tx_to_rx_ns, rx_to_woken_ns, halted_permille, wake_to_rx_ns.
    Hops,
    /// The latest ServerHops report (n ≥ --min-n): n, rx_to_tx_ns, rx_to_tx_p99_ns, halted_permille,
    /// wake_to_rx_ns.
    ServerHops,
    /// A LoadedSendrecs report: n, median_ns, p99_ns, vcopy_bytes, vcopy_us.
    Loaded,
    /// A TimerWake report: n, median_ns, p99_ns.
    TimerWake,
}

/// The `key=value` words of a report `what` takes.
fn pick(what: What, r: &Report) -> Option<String> {
    match (what, r) {
        (
            What::Sendrecs,
            Report::Sendrecs {
                n,
                median_ns,
                p99_ns,
                ops_per_s,
            },
        ) => Some(format!(
            "n={n} median_ns={median_ns} p99_ns={p99_ns} ops_per_s={ops_per_s}"
        )),
        (
            What::Vcopy,
            Report::Vcopy {
                bytes,
                push_us,
                pull_us,
            },
        ) => Some(format!(
            "bytes={bytes} push_us={push_us} pull_us={pull_us} push_mb_s={} pull_mb_s={}",
            bytes / (*push_us).max(1),
            bytes / (*pull_us).max(1)
        )),
        (What::LocalSendrec, Report::LocalSendrec { calls, ns_per_call }) => {
            Some(format!("calls={calls} ns_per_call={ns_per_call}"))
        }
        (
            What::Hops,
            Report::Hops {
                n,
                issue_to_tx_ns,
                tx_to_rx_ns,
                rx_to_woken_ns,
                halted_permille,
                wake_to_rx_ns,
            },
        ) => Some(format!(
            "n={n} issue_to_tx_ns={issue_to_tx_ns} tx_to_rx_ns={tx_to_rx_ns} rx_to_woken_ns={rx_to_woken_ns} halted_permille={halted_permille} wake_to_rx_ns={wake_to_rx_ns}"
        )),
        (
            What::ServerHops,
            Report::ServerHops {
                n,
                rx_to_tx_ns,
                rx_to_tx_p99_ns,
                halted_permille,
                wake_to_rx_ns,
            },
        ) => Some(format!(
            "n={n} rx_to_tx_ns={rx_to_tx_ns} rx_to_tx_p99_ns={rx_to_tx_p99_ns} halted_permille={halted_permille} wake_to_rx_ns={wake_to_rx_ns}"
        )),
        (
            What::Loaded,
            Report::LoadedSendrecs {
                n,
                median_ns,
                p99_ns,
                vcopy_bytes,
                vcopy_us,
            },
        ) => Some(format!(
            "n={n} median_ns={median_ns} p99_ns={p99_ns} vcopy_bytes={vcopy_bytes} vcopy_us={vcopy_us} vcopy_mb_s={}",
            vcopy_bytes / (*vcopy_us).max(1)
        )),
        (
            What::TimerWake,
            Report::TimerWake {
                n,
                median_ns,
                p99_ns,
            },
        ) => Some(format!("n={n} median_ns={median_ns} p99_ns={p99_ns}")),
        _ => None,
    }
}

fn wait(node: &str, name: &str, what: What, timeout: Duration, min_n: u64) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let client = dvs_hypervisor::client::NodeClient::new(node);
    let line = rt.block_on(view::wait_for(&client, name, timeout, |v| {
        if what == What::Ready {
            return v
                .guest
                .ready
                .as_ref()
                .map(|r| format!("ready init_us={} tsc_mhz={}", r.init_us, r.tsc_mhz));
        }
        if what == What::ServerHops {
            // Sent again as requests come in: the latest one, once it covers enough of them.
            return v.guest.reports.iter().rev().find_map(|r| match r {
                Report::ServerHops { n, .. } if *n >= min_n => pick(what, r),
                _ => None,
            });
        }
        v.guest.reports.iter().find_map(|r| pick(what, r))
    }))?;
    println!("{line}");
    Ok(())
}

/// `proxy-timing`: the switch's histograms saved to a file, or the window since a saved copy.
fn proxy_timing(
    node: &str,
    save: Option<std::path::PathBuf>,
    since: Option<std::path::PathBuf>,
) -> anyhow::Result<()> {
    use dvs_proxy::counters::{Latency, SwitchTiming};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let client = dvs_hypervisor::client::NodeClient::new(node);
    let v = rt.block_on(client.get_json("/v1/counters"))?;
    let now: SwitchTiming = serde_json::from_value(v.get("timing").cloned().unwrap_or_default())
        .context("the node's counters have no switch timing")?;
    if let Some(path) = save {
        return std::fs::write(&path, serde_json::to_string(&now)?)
            .with_context(|| format!("writing {}", path.display()));
    }
    let before: SwitchTiming = match since {
        Some(path) => serde_json::from_str(
            &std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?,
        )
        .with_context(|| format!("parsing {}", path.display()))?,
        None => SwitchTiming::default(),
    };
    let words = |key: &str, a: &Latency, b: &Latency| {
        let w = a.since(b);
        format!(
            "{key}.n={} {key}.median_ns={} {key}.p99_ns={}",
            w.count,
            w.quantile_ns(0.5).unwrap_or(0),
            w.quantile_ns(0.99).unwrap_or(0)
        )
    };
    println!(
        "{} {} {}",
        words("port_frame", &now.port_frame, &before.port_frame),
        words("peer_frame", &now.peer_frame, &before.peer_frame),
        words(
            "port_to_peer_write",
            &now.port_to_peer_write,
            &before.port_to_peer_write
        )
    );
    Ok(())
}

fn settle(node: &str, eps: &[String], timeout: Duration) -> anyhow::Result<()> {
    let mut want = Vec::new();
    for e in eps {
        let parsed = e
            .split_once(':')
            .and_then(|(d, p)| Some((d.parse::<u16>().ok()?, p.parse::<u32>().ok()?)));
        want.push(parsed.with_context(|| format!("--ep '{e}': not DC:EP"))?);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let client = dvs_hypervisor::client::NodeClient::new(node);
    let deadline = Instant::now() + timeout;
    loop {
        let missing: anyhow::Result<String> = rt.block_on(async {
            let status = client.status().await?;
            let down: Vec<u16> = status
                .peers
                .iter()
                .filter(|(_, up)| !**up)
                .map(|(id, _)| *id)
                .collect();
            let dir = client.directory().await?;
            let absent: Vec<String> = want
                .iter()
                .filter(|(d, e)| !dir.iter().any(|p| p.dc == *d && p.ep == *e))
                .map(|(d, e)| format!("{d}:{e}"))
                .collect();
            Ok(match (down.is_empty(), absent.is_empty()) {
                (true, true) => String::new(),
                _ => format!("peers down {down:?}, endpoints not in the directory {absent:?}"),
            })
        });
        let missing = match missing {
            Ok(m) => m,
            Err(e) => format!("{e:#}"),
        };
        if missing.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("node {node} not settled after {timeout:?}: {missing}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn put(part: &str, words: &[String]) -> anyhow::Result<()> {
    let mut f = Figures::new();
    for w in words {
        let (k, v) = w
            .split_once('=')
            .with_context(|| format!("'{w}' is not KEY=VALUE"))?;
        let value = if let Ok(n) = v.parse::<u64>() {
            serde_json::json!(n)
        } else if let Some(n) = v.parse::<f64>().ok().filter(|n| n.is_finite()) {
            serde_json::json!(n)
        } else {
            serde_json::Value::String(v.into())
        };
        f.set(k, value);
    }
    f.write(part)
        .with_context(|| format!("writing {}/{part}.json", out_dir().display()))?;
    Ok(())
}

/// Merges every part into `summary.json`:
/// `{ "generated_unix": .., "host": { "cores": .., "accel": .. }, "parts": { PART: {..} } }`.
fn summary() -> anyhow::Result<()> {
    let dir = out_dir();
    let mut parts = BTreeMap::new();
    let entries = std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))?;
    for e in entries {
        let path = e?.path();
        let Some(stem) = path.file_stem().and_then(|s| s.to_str()) else {
            continue;
        };
        if path.extension().and_then(|s| s.to_str()) != Some("json") || stem == "summary" {
            continue;
        }
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let v: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        parts.insert(stem.to_string(), v);
    }
    if parts.is_empty() {
        bail!("no benchmark parts in {}", dir.display());
    }
    let generated = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let accel = dvs_instance::Accel::detect().name();
    let mut ratios = serde_json::Map::new();
    for (k, v) in datapath::ratios(&parts) {
        ratios.insert(k, serde_json::json!(v));
    }
    if let Some(h) = parts.get("http") {
        for (k, v) in http::ratios(h) {
            ratios.insert(k, serde_json::json!(v));
        }
    }
    let out = serde_json::json!({
        "generated_unix": generated,
        "host": { "cores": cores, "accel": accel },
        "parts": parts,
        "ratios": ratios,
    });
    let path = dir.join("summary.json");
    std::fs::write(&path, serde_json::to_string_pretty(&out)? + "\n")
        .with_context(|| format!("writing {}", path.display()))?;
    println!(
        "summary: {} ({} parts: {})",
        path.display(),
        parts.len(),
        parts.keys().cloned().collect::<Vec<_>>().join(", ")
    );
    Ok(())
}

fn secs_arg(s: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(s).map_err(|e| anyhow::anyhow!("{s} s: {e}"))
}

fn load(
    addr: std::net::SocketAddr,
    path: &str,
    conns: usize,
    window: Duration,
    put: Option<usize>,
    expect_len: Option<u64>,
) -> anyhow::Result<()> {
    use dvs_bench::httpload::{run, Case, Method};
    let method = if put.is_some() {
        Method::Put
    } else {
        Method::Get
    };
    let paths = match put {
        Some(_) => (0..conns.max(1)).map(|i| format!("{path}.{i}")).collect(),
        None => vec![path.to_string()],
    };
    let case = Case {
        addr,
        host: addr.ip().to_string(),
        method,
        paths,
        body: std::sync::Arc::new(vec![b'x'; put.unwrap_or(0)]),
        expect_len,
        ok_status: vec![200, 201, 204],
        conns,
        warmup: Duration::from_millis(200),
        window,
        io_timeout: Duration::from_secs(5),
    };
    let o = run(&case, || 0.0);
    println!(
        "requests={} rps={:.1} mib_s={:.2} p50_us={} p99_us={} failures: {}{}",
        o.requests,
        o.rps(),
        o.mib_s(),
        o.quantile_us(0.5),
        o.quantile_us(0.99),
        o.errors,
        o.errors
            .first
            .as_deref()
            .map(|f| format!(" (first: {f})"))
            .unwrap_or_default()
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Wait {
            node,
            name,
            what,
            timeout,
            min_n,
        } => {
            let t0 = Instant::now();
            wait(&node, &name, what, Duration::from_secs(timeout), min_n)
                .with_context(|| format!("waiting {:?} for {name}'s {what:?}", t0.elapsed()))
        }
        Cmd::ProxyTiming { node, save, since } => proxy_timing(&node, save, since),
        Cmd::Settle { node, ep, timeout } => settle(&node, &ep, Duration::from_secs(timeout)),
        Cmd::Put { part, figures } => put(&part, &figures),
        Cmd::Summary => summary(),
        Cmd::Merge { part, srcs } => datapath::merge(&part, &srcs),
        Cmd::Breakdown => datapath::breakdown(),
        Cmd::Density { max } => density::run(max),
        Cmd::Http {
            secs,
            warmup,
            targets,
        } => http::run(&http::Opts {
            window: secs_arg(secs)?,
            warmup: secs_arg(warmup)?,
            targets,
        }),
        Cmd::Load {
            addr,
            path,
            conns,
            secs,
            put,
            expect_len,
        } => load(addr, &path, conns, secs_arg(secs)?, put, expect_len),
    }
}
