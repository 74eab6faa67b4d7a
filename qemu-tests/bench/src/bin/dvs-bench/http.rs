//! The web server benchmark against nginx (`bash scripts/bench-http.sh`, part of `make bench`):
//! GET of a 4 KiB and a 1 MiB file and PUT of a 1 MiB file, at 1 and 16 keep-alive connections
//! ([`dvs_bench::httpload`]), against
//! - `nginx`: one worker, serving the same files from a directory of its own, PUT through
//!   `ngx_http_dav_module` (`dav_methods PUT`);
//! - `aio`: the all-in-one VOS of `examples/web-dc.toml` (http + fs + disk in one instance, on a
//!   volume) on a node daemon of its own (fresh data dir, free ports, so it runs beside `make run`),
//!   through its published port;
//! - `factored`: `examples/web-dc-3node.toml` (web on node 1, fs on node 2, disk on node 3) on
//!   three nodes as network namespaces (the cluster fixture of dvs-test-support; needs root),
//!   through node 1's published port.
//!
//! For each case: requests/s, MiB/s of bodies, p50/p99 latency, failures by kind, and the CPU time
//! of the serving processes over the window divided by the requests (nginx: master + worker; a VOS:
//! the QEMU processes + the node daemons, from /proc/PID/stat). One table, the ratios to nginx and
//! the aim lines (all-in-one ≥ 0.5× nginx on 4 KiB GET requests/s and on 1 MiB GET MiB/s, printed,
//! not enforced). Figures go to `target/bench/http.json`; `dvs-bench summary` puts the ratios into
//! its `ratios` section.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use dvs_bench::httpload::{self, Case, Method, Outcome};
use dvs_bench::{clock_ticks_per_s, cpu_ticks, print_table, repo_root, Figures};
use dvs_test_support::cluster::{processes_mentioning, Cluster, ClusterConfig};

use crate::density::{dvs_binary, Daemon};

/// The servers, in the order they run.
pub const TARGETS: [&str; 3] = ["nginx", "aio", "factored"];

/// The file GET 4 KiB reads.
const SMALL: &str = "/bench-4k.bin";
/// The file GET 1 MiB reads.
const LARGE: &str = "/bench-1m.bin";

/// One case: figure key, label, method, body size.
const CASES: [(&str, &str, Method, usize); 3] = [
    ("get_4k", "GET 4 KiB", Method::Get, 4 << 10),
    ("get_1m", "GET 1 MiB", Method::Get, 1 << 20),
    ("put_1m", "PUT 1 MiB", Method::Put, 1 << 20),
];
/// Connection counts.
const CONNS: [usize; 2] = [1, 16];

/// Options of `dvs-bench http`.
#[derive(Clone, Debug)]
pub struct Opts {
    /// Measurement window per case.
    pub window: Duration,
    /// Warm-up per case (not counted).
    pub warmup: Duration,
    /// Which of [`TARGETS`] to run.
    pub targets: Vec<String>,
}

/// A server under load, torn down when dropped.
struct Server {
    /// Where to connect.
    addr: SocketAddr,
    /// The network namespace (under /run/netns) to connect from; `None`: this one.
    netns: Option<String>,
    /// The processes whose CPU time counts.
    pids: Box<dyn Fn() -> Vec<u32>>,
    /// What keeps it up (dropped last).
    _guard: Box<dyn std::any::Any>,
}

/// Deterministic bytes that do not compress (xorshift64).
fn content(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Runs `f` on a thread of its own that first enters network namespace `ns` (/run/netns/NS; the
/// threads it spawns are in it too), or here when `ns` is `None`.
fn in_netns<T: Send>(ns: Option<&str>, f: impl FnOnce() -> T + Send) -> anyhow::Result<T> {
    let Some(ns) = ns else {
        return Ok(f());
    };
    let path = format!("/run/netns/{ns}");
    let file = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
    std::thread::scope(|s| {
        s.spawn(move || {
            use std::os::fd::AsRawFd;
            // SAFETY: setns(2) on an open namespace file; it changes only this thread's namespace.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                bail!("setns {path}: {}", std::io::Error::last_os_error());
            }
            Ok(f())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the thread in {ns} panicked"))?
    })
}

/// Console lines cut to 160 characters each.
fn clip(text: &str) -> String {
    text.lines()
        .map(|l| match l.char_indices().nth(160) {
            Some((i, _)) => format!("  {}…", &l[..i]),
            None => format!("  {l}"),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Today's date (UTC) as `date -u +%F` prints it; empty if that fails.
fn today() -> String {
    Command::new("date")
        .args(["-u", "+%F"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// CPU seconds of `pids` by process name (`/proc/PID/comm`: qemu-system-x86, dvs, nginx), and of
/// this process (the load generator) as `client`. A process that is gone counts 0.
fn cpu_by_name(pids: &[u32]) -> BTreeMap<String, f64> {
    let hz = clock_ticks_per_s();
    let mut m = BTreeMap::new();
    for p in pids {
        let Ok(t) = cpu_ticks(*p) else { continue };
        let name = std::fs::read_to_string(format!("/proc/{p}/comm"))
            .map(|c| c.trim().to_string())
            .unwrap_or_else(|_| "other".into());
        *m.entry(name).or_insert(0.0) += t as f64 / hz;
    }
    let me = cpu_ticks(std::process::id()).unwrap_or(0) as f64 / hz;
    m.insert("client".into(), me);
    m
}

/// Polls GET `path` until it answers `want` (or `deadline`); the last failure otherwise.
fn wait_http(addr: SocketAddr, path: &str, want: u16, budget: Duration) -> Result<(), String> {
    let deadline = Instant::now() + budget;
    let mut last;
    loop {
        match httpload::once(
            addr,
            "bench",
            Method::Get,
            path,
            b"",
            Duration::from_secs(2),
        ) {
            Ok((st, _)) if st == want => return Ok(()),
            Ok((st, body)) => {
                last = format!(
                    "status {st}: {}",
                    String::from_utf8_lossy(&body[..body.len().min(200)])
                )
            }
            Err(e) => last = e,
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "GET {path} on {addr} did not answer {want} in {budget:?} (last: {last})"
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// PUTs the two files and reads them back.
fn put_files(addr: SocketAddr, small: &[u8], large: &[u8]) -> anyhow::Result<()> {
    for (path, body) in [(SMALL, small), (LARGE, large)] {
        let t = Duration::from_secs(30);
        let (st, text) = httpload::once(addr, "bench", Method::Put, path, body, t)
            .map_err(anyhow::Error::msg)?;
        if !matches!(st, 200 | 201 | 204) {
            bail!(
                "PUT {path}: status {st}: {}",
                String::from_utf8_lossy(&text)
            );
        }
        let (st, got) =
            httpload::once(addr, "bench", Method::Get, path, b"", t).map_err(anyhow::Error::msg)?;
        if st != 200 || got != body {
            bail!(
                "GET {path} after PUT: status {st}, {} bytes, want {} bytes as put",
                got.len(),
                body.len()
            );
        }
    }
    Ok(())
}

// ---- nginx ----

struct Nginx {
    child: Child,
    dir: PathBuf,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the pid of our own child (not reaped yet). SIGQUIT: graceful stop.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGQUIT) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The nginx binary: `$NGINX`, else `nginx` on PATH, else /usr/sbin/nginx.
fn nginx_binary() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("NGINX") {
        return Ok(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin")])
        .map(|d| d.join("nginx"))
        .find(|p| p.is_file())
        .context("nginx is not installed (Debian: apt-get install nginx; scripts/bench-http.sh installs it when run as root)")
}

/// Children of `pid` (from /proc/*/stat's ppid).
fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return out;
    };
    for p in procs.flatten() {
        let Some(child) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let stat = std::fs::read_to_string(p.path().join("stat")).unwrap_or_default();
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, r)| r.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u32>().ok());
        if ppid == Some(pid) {
            out.push(child);
        }
    }
    out
}

/// Whether nginx was built with the WebDAV module (`nginx -V`).
fn nginx_has_dav(bin: &Path) -> bool {
    Command::new(bin)
        .arg("-V")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stderr).contains("http_dav_module")
                || String::from_utf8_lossy(&o.stdout).contains("http_dav_module")
        })
        .unwrap_or(false)
}

fn start_nginx(small: &[u8], large: &[u8]) -> anyhow::Result<(Server, bool)> {
    let bin = nginx_binary()?;
    let dav = nginx_has_dav(&bin);
    let dir = std::env::temp_dir().join(format!("dvs-bench-nginx.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let www = dir.join("www");
    std::fs::create_dir_all(&www).with_context(|| format!("creating {}", www.display()))?;
    for sub in ["body", "proxy", "fastcgi", "uwsgi", "scgi"] {
        std::fs::create_dir_all(dir.join("tmp").join(sub))?;
    }
    std::fs::write(www.join(&SMALL[1..]), small)?;
    std::fs::write(www.join(&LARGE[1..]), large)?;
    // The worker drops to nobody when the master runs as root: let it read and write the files.
    let _ = Command::new("chmod")
        .arg("-R")
        .arg("a+rwX")
        .arg(&dir)
        .status();
    let port = free_port()?;
    let d = dir.display();
    // Run as root, the master starts its worker as nobody:nogroup (Debian has no group `nobody`).
    let user = if dvs_test_support::cluster::is_root() {
        "user nobody nogroup;"
    } else {
        ""
    };
    let put = if dav {
        "dav_methods PUT; create_full_put_path on; dav_access user:rw group:rw all:r;"
    } else {
        ""
    };
    let conf = format!(
        "{user}\nworker_processes 1;\ndaemon off;\nmaster_process on;\npid {d}/nginx.pid;\n\
         error_log {d}/error.log warn;\n\
         events {{ worker_connections 1024; }}\n\
         http {{\n  access_log off;\n  sendfile on;\n  tcp_nopush on;\n  tcp_nodelay on;\n\
           keepalive_timeout 60s;\n  keepalive_requests 1000000;\n  default_type application/octet-stream;\n\
           client_max_body_size 2m;\n  client_body_buffer_size 128k;\n\
           client_body_temp_path {d}/tmp/body;\n  proxy_temp_path {d}/tmp/proxy;\n\
           fastcgi_temp_path {d}/tmp/fastcgi;\n  uwsgi_temp_path {d}/tmp/uwsgi;\n  scgi_temp_path {d}/tmp/scgi;\n\
           server {{\n    listen 127.0.0.1:{port};\n    root {d}/www;\n    location / {{ {put} }}\n  }}\n}}\n"
    );
    std::fs::write(dir.join("nginx.conf"), conf)?;
    let log = std::fs::File::create(dir.join("stderr.log"))?;
    let child = Command::new(&bin)
        .arg("-p")
        .arg(&dir)
        .arg("-c")
        .arg(dir.join("nginx.conf"))
        .arg("-e")
        .arg(dir.join("error.log"))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let master = child.id();
    let guard = Nginx { child, dir };
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    if let Err(e) = wait_http(addr, SMALL, 200, Duration::from_secs(10)) {
        let log = std::fs::read_to_string(guard.dir.join("error.log")).unwrap_or_default()
            + &std::fs::read_to_string(guard.dir.join("stderr.log")).unwrap_or_default();
        bail!("nginx did not come up: {e}\n{log}");
    }
    let server = Server {
        addr,
        netns: None,
        pids: Box::new(move || {
            let mut p = vec![master];
            p.extend(children(master));
            p
        }),
        _guard: Box::new(guard),
    };
    Ok((server, dav))
}

// ---- the all-in-one VOS on a node daemon of its own ----

fn dvs_cli(dvs: &Path, api: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(dvs)
        .args(["--node", api])
        .arg("--credentials")
        .arg(std::env::temp_dir().join(format!(
            "dvs-bench-http.{}/data/api/admin.toml",
            std::process::id()
        )))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running dvs {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "dvs {} failed ({}): {}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The manifest `src` with its image path made absolute and `from` → `to` (each must be there).
fn manifest_copy(src: &Path, edits: &[(&str, String)]) -> anyhow::Result<String> {
    let mut text =
        std::fs::read_to_string(src).with_context(|| format!("reading {}", src.display()))?;
    for (from, to) in edits {
        if !text.contains(from) {
            bail!(
                "{}: `{from}` not found (the bench rewrites it)",
                src.display()
            );
        }
        text = text.replace(from, to);
    }
    Ok(text)
}

fn start_aio(dvs: &Path, small: &[u8], large: &[u8]) -> anyhow::Result<Server> {
    let root = repo_root();
    let dir = std::env::temp_dir().join(format!("dvs-bench-http.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let (api_port, proxy_port, web_port) = (free_port()?, free_port()?, free_port()?);
    let api = format!("127.0.0.1:{api_port}");
    std::fs::write(
        dir.join("cluster.toml"),
        format!(
            "[[node]]\nid = 1\napi = \"{api}\"\nproxy = \"127.0.0.1:{proxy_port}\"\n\
             [[dc]]\nid = 1\nname = \"web\"\nnodes = [1]\n"
        ),
    )?;
    std::fs::write(
        dir.join("node.toml"),
        "node = 1\ncluster = \"cluster.toml\"\ndata_dir = \"data\"\nbackend = \"qemu\"\naccel = \"auto\"\n",
    )?;
    let image = root.join("images/vos.elf");
    let manifest = manifest_copy(
        &root.join("examples/web-dc.toml"),
        &[
            ("\"../images/vos.elf\"", format!("\"{}\"", image.display())),
            ("\"8080:80\"", format!("\"{web_port}:80\"")),
        ],
    )?;
    std::fs::write(dir.join("web-dc.toml"), manifest)?;
    let log = std::fs::File::create(dir.join("node.log"))?;
    let mut cmd = Command::new(dvs);
    cmd.args(["node", "--config"])
        .arg(dir.join("node.toml"))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    dvs_instance::die_with_parent(&mut cmd);
    let child = cmd
        .spawn()
        .with_context(|| format!("starting {}", dvs.display()))?;
    let daemon_pid = child.id();
    let daemon = Daemon { child, dir };
    let up = Instant::now();
    while dvs_cli(dvs, &api, &["node", "status"]).is_err() {
        if up.elapsed() > Duration::from_secs(20) {
            let log = std::fs::read_to_string(daemon.dir.join("node.log")).unwrap_or_default();
            bail!("the bench node did not answer on {api} in 20 s: {log}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let m = daemon.dir.join("web-dc.toml");
    dvs_cli(dvs, &api, &["apply", &m.to_string_lossy()])?;
    let addr: SocketAddr = ([127, 0, 0, 1], web_port).into();
    if let Err(e) = wait_http(addr, "/", 200, Duration::from_secs(90)) {
        let logs = dvs_cli(dvs, &api, &["logs", "web", "--tail", "5"]).unwrap_or_default();
        bail!(
            "the all-in-one web server: {e}\nits console, last lines:\n{}",
            clip(&logs)
        );
    }
    put_files(addr, small, large)?;
    let marker = format!("{}/", daemon.dir.display());
    Ok(Server {
        addr,
        netns: None,
        pids: Box::new(move || {
            let mut p = vec![daemon_pid];
            p.extend(processes_mentioning(&marker));
            p.sort_unstable();
            p.dedup();
            p
        }),
        _guard: Box::new(daemon),
    })
}

// ---- the factored VOS on three nodes ----

fn start_factored(dvs: &Path, small: &[u8], large: &[u8]) -> anyhow::Result<Server> {
    if !dvs_test_support::cluster::is_root() {
        bail!("needs root (network namespaces); run scripts/bench-http.sh as root");
    }
    let root = repo_root();
    let mut cfg = ClusterConfig::new(3, dvs.to_path_buf()).dc(1, "web", &[1, 2, 3]);
    // Apart from the cluster test's 10.217.0 and bench-cluster's 10.218.0.
    cfg.subnet = "10.219.0".into();
    cfg.node_toml_extra = "backend = \"qemu\"\n".into();
    let subnet = cfg.subnet.clone();
    let cluster = Cluster::up(cfg, Duration::from_secs(30)).map_err(|e| anyhow::anyhow!("{e}"))?;
    let manifest = root.join("examples/web-dc-3node.toml");
    let text = std::fs::read_to_string(&manifest)
        .with_context(|| format!("reading {}", manifest.display()))?;
    // The web server's published port on node 1, as the manifest says (`[ADDR:]HOST:GUEST`).
    let publish = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("publish"))
        .and_then(|l| l.split('"').nth(1))
        .map(str::to_string)
        .with_context(|| format!("{}: no publish = [\"..\"]", manifest.display()))?;
    let port = publish
        .rsplit(':')
        .nth(1)
        .and_then(|p| p.parse::<u16>().ok())
        .with_context(|| {
            format!(
                "{}: publish {publish:?} is not [ADDR:]HOST:GUEST",
                manifest.display()
            )
        })?;
    let mut addr: SocketAddr = format!("{subnet}.1:{port}").parse()?;
    let mut netns = None;
    if let Err(e) = cluster.cli_ok(1, &["apply", &manifest.to_string_lossy()]) {
        // A dvs without the `ADDR:HOST:GUEST` syntax publishes on node 1's loopback only: apply the
        // manifest with `HOST:GUEST` and connect from inside node 1's namespace.
        if !e.contains("is not a port") {
            bail!("{e}");
        }
        let copy = cluster.work_dir().join("web-dc-3node.toml");
        let image = root.join("images/vos.elf");
        let text = manifest_copy(
            &manifest,
            &[
                ("\"../images/vos.elf\"", format!("\"{}\"", image.display())),
                (&format!("\"{publish}\""), format!("\"{port}:80\"")),
            ],
        )?;
        std::fs::write(&copy, text)?;
        cluster
            .cli_ok(1, &["apply", &copy.to_string_lossy()])
            .map_err(anyhow::Error::msg)?;
        let ns = format!("dvsct{}-1", std::process::id());
        println!(
            "bench-http: this dvs cannot publish on {publish:?} ({}); published on node 1's 127.0.0.1:{port}, the load runs in namespace {ns}",
            e.lines().last().unwrap_or("")
        );
        netns = Some(ns);
        addr = ([127, 0, 0, 1], port).into();
    }
    let ns = netns.as_deref();
    if let Err(e) = in_netns(ns, || wait_http(addr, "/", 200, Duration::from_secs(120)))? {
        let logs = cluster
            .cli(1, &["logs", "web", "--tail", "5"])
            .map(|o| clip(&String::from_utf8_lossy(&o.stdout)))
            .unwrap_or_default();
        bail!("the factored web server: {e}\nweb's console, last lines:\n{logs}");
    }
    in_netns(ns, || put_files(addr, small, large))??;
    let marker = format!("{}/", cluster.work_dir().display());
    Ok(Server {
        addr,
        netns,
        // The three daemons and the three QEMUs (all name the fixture's work dir).
        pids: Box::new(move || processes_mentioning(&marker)),
        _guard: Box::new(cluster),
    })
}

// ---- measuring and reporting ----

/// One measured case.
struct Row {
    target: &'static str,
    case: usize,
    conns: usize,
    out: Outcome,
}

impl Row {
    fn key(&self) -> String {
        format!("{}.{}.c{}", self.target, CASES[self.case].0, self.conns)
    }

    fn cpu_us_per_req(&self) -> f64 {
        if self.out.requests == 0 {
            f64::NAN
        } else {
            self.out.cpu * 1e6 / self.out.requests as f64
        }
    }
}

fn measure(
    target: &'static str,
    s: &Server,
    opts: &Opts,
    put_ok: bool,
    rows: &mut Vec<Row>,
    figs: &mut Figures,
) {
    let body = Arc::new(content(1 << 20, 7));
    for (ci, (key, label, method, size)) in CASES.iter().enumerate() {
        if *method == Method::Put && !put_ok {
            figs.set(
                format!("{target}.{key}"),
                "not measured: this nginx has no ngx_http_dav_module (PUT)",
            );
            continue;
        }
        for &conns in &CONNS {
            let case = Case {
                addr: s.addr,
                host: "bench".into(),
                method: *method,
                paths: match method {
                    Method::Get if *size == 4 << 10 => vec![SMALL.into()],
                    Method::Get => vec![LARGE.into()],
                    Method::Put => (0..conns).map(|i| format!("/put-{i}.bin")).collect(),
                },
                body: if *method == Method::Put {
                    body.clone()
                } else {
                    Arc::new(Vec::new())
                },
                expect_len: (*method == Method::Get).then_some(*size as u64),
                ok_status: vec![200, 201, 204],
                conns,
                warmup: opts.warmup,
                window: opts.window,
                io_timeout: Duration::from_secs(5),
            };
            let pids = (s.pids)();
            let mut samples = Vec::new();
            let run = || {
                httpload::run(&case, || {
                    let m = cpu_by_name(&pids);
                    let serving = m
                        .iter()
                        .filter(|(k, _)| *k != "client")
                        .map(|(_, v)| v)
                        .sum();
                    samples.push(m);
                    serving
                })
            };
            let out = match in_netns(s.netns.as_deref(), run) {
                Ok(o) => o,
                Err(e) => {
                    println!("bench-http: {target} {label} x{conns}: {e:#}");
                    figs.set(
                        format!("{target}.{key}.c{conns}"),
                        format!("not measured: {e:#}"),
                    );
                    continue;
                }
            };
            // CPU over the window by process name (the first and the last sample).
            let mut split = BTreeMap::new();
            if let (Some(a), Some(b)) = (samples.first(), samples.last()) {
                for (name, v) in b {
                    split.insert(
                        name.clone(),
                        (v - a.get(name).copied().unwrap_or(0.0)).max(0.0),
                    );
                }
            }
            let row = Row {
                target,
                case: ci,
                conns,
                out,
            };
            let per_req = |v: f64| v * 1e6 / row.out.requests.max(1) as f64;
            let split_text: Vec<String> = split
                .iter()
                .map(|(n, v)| format!("{n} {:.0}", per_req(*v)))
                .collect();
            let o = &row.out;
            println!(
                "bench-http: {target:8} {label} x{conns:<2}: {:>8.0} req/s {:>7.1} MiB/s p99 {:>7.2} ms, CPU {:>6.0} µs/req ({}), failures: {}{}",
                o.rps(),
                o.mib_s(),
                o.quantile_us(0.99) as f64 / 1000.0,
                row.cpu_us_per_req(),
                split_text.join(", "),
                o.errors,
                o.errors.first.as_deref().map(|f| format!(" (first: {f})")).unwrap_or_default()
            );
            let k = row.key();
            figs.set(format!("{k}.requests"), o.requests);
            figs.set(format!("{k}.rps"), round(o.rps(), 1));
            figs.set(format!("{k}.mib_s"), round(o.mib_s(), 2));
            figs.set(format!("{k}.p50_us"), o.quantile_us(0.5));
            figs.set(format!("{k}.p99_us"), o.quantile_us(0.99));
            figs.set(format!("{k}.errors"), o.errors.total());
            figs.set(format!("{k}.connect_errors"), o.errors.connect);
            let cpu = row.cpu_us_per_req();
            if cpu.is_finite() {
                figs.set(format!("{k}.cpu_us_per_req"), round(cpu, 1));
                for (name, v) in &split {
                    let name = name.replace(|c: char| !c.is_ascii_alphanumeric(), "_");
                    figs.set(format!("{k}.cpu_us_per_req.{name}"), round(per_req(*v), 1));
                }
            }
            rows.push(row);
        }
    }
}

fn round(v: f64, digits: i32) -> f64 {
    let m = 10f64.powi(digits);
    (v * m).round() / m
}

fn fmt_num(v: f64) -> String {
    if !v.is_finite() {
        "-".into()
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn ratio(a: f64, b: f64) -> String {
    if a.is_finite() && b.is_finite() && b > 0.0 {
        let r = a / b;
        if r < 0.1 {
            format!("{r:.4}x")
        } else {
            format!("{r:.2}x")
        }
    } else {
        "-".into()
    }
}

/// Runs the benchmark.
pub fn run(opts: &Opts) -> anyhow::Result<()> {
    let small = content(4 << 10, 1);
    let large = content(1 << 20, 2);
    let mut rows = Vec::new();
    let mut figs = Figures::new();
    figs.set("window_ms", opts.window.as_millis() as u64);
    figs.set("warmup_ms", opts.warmup.as_millis() as u64);
    let mut notes = Vec::new();
    let want = |t: &str| opts.targets.iter().any(|x| x == t);
    let dvs = dvs_binary();
    for target in TARGETS {
        if !want(target) {
            continue;
        }
        let t0 = Instant::now();
        let up: anyhow::Result<(Server, bool)> = match target {
            "nginx" => start_nginx(&small, &large),
            "aio" => dvs
                .as_ref()
                .map_err(|e| anyhow::anyhow!("{e:#}"))
                .and_then(|d| start_aio(d, &small, &large))
                .map(|s| (s, true)),
            _ => dvs
                .as_ref()
                .map_err(|e| anyhow::anyhow!("{e:#}"))
                .and_then(|d| start_factored(d, &small, &large))
                .map(|s| (s, true)),
        };
        match up {
            Ok((server, put_ok)) => {
                println!(
                    "bench-http: {target} up on {} in {:.1} s",
                    server.addr,
                    t0.elapsed().as_secs_f64()
                );
                if !put_ok {
                    notes.push(format!(
                        "{target}: no ngx_http_dav_module, PUT not measured"
                    ));
                }
                measure(target, &server, opts, put_ok, &mut rows, &mut figs);
                drop(server);
            }
            Err(e) => {
                let why = format!("{e:#}");
                println!("bench-http: {target}: not measured: {why}");
                let first = why.lines().next().unwrap_or("").to_string();
                figs.set(target, format!("not measured: {first}"));
                notes.push(format!("{target}: not measured: {first}"));
            }
        }
    }

    let base = |r: &Row| {
        rows.iter()
            .find(|b| b.target == "nginx" && b.case == r.case && b.conns == r.conns)
    };
    let label = |t: &str| match t {
        "nginx" => "nginx (1 worker)",
        "aio" => "VOS all-in-one",
        _ => "VOS 3 nodes",
    };
    let table: Vec<[String; 10]> = rows
        .iter()
        .map(|r| {
            let o = &r.out;
            let b = base(r);
            let (tput, base_tput) = if CASES[r.case].3 >= 1 << 20 {
                (o.mib_s(), b.map(|b| b.out.mib_s()))
            } else {
                (o.rps(), b.map(|b| b.out.rps()))
            };
            [
                label(r.target).into(),
                CASES[r.case].1.into(),
                r.conns.to_string(),
                fmt_num(o.rps()),
                fmt_num(o.mib_s()),
                fmt_num(o.quantile_us(0.99) as f64 / 1000.0),
                fmt_num(r.cpu_us_per_req()),
                o.errors.total().to_string(),
                if r.target == "nginx" {
                    "1".into()
                } else {
                    ratio(tput, base_tput.unwrap_or(f64::NAN))
                },
                if r.target == "nginx" {
                    "1".into()
                } else {
                    ratio(r.cpu_us_per_req(), b.map_or(f64::NAN, Row::cpu_us_per_req))
                },
            ]
        })
        .collect();
    println!();
    println!(
        "web server benchmark — {}, {} cores, accel {}, {:.1} s per case after {:.1} s warm-up",
        today(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        dvs_instance::Accel::detect().name(),
        opts.window.as_secs_f64(),
        opts.warmup.as_secs_f64()
    );
    print_table(
        [
            "server",
            "case",
            "conns",
            "req/s",
            "MiB/s",
            "p99 ms",
            "CPU µs/req",
            "failed",
            "× nginx (thr.)",
            "× nginx CPU/req",
        ],
        &table,
    );
    println!("(× nginx (thr.): requests/s for 4 KiB, MiB/s for 1 MiB; CPU: the serving processes' user+system time per request — nginx: master+worker; VOS: QEMU + node daemon(s), split by process in http.json; the load generator runs on the same cores)");
    for n in &notes {
        println!("note: {n}");
    }
    for (ci, what) in [(0usize, "requests/s"), (1, "MiB/s")] {
        for conns in CONNS {
            let find = |t: &str| {
                rows.iter()
                    .find(|r| r.target == t && r.case == ci && r.conns == conns)
            };
            let v = |r: &Row| {
                if ci == 0 {
                    r.out.rps()
                } else {
                    r.out.mib_s()
                }
            };
            let line = match (find("aio"), find("nginx")) {
                (Some(a), Some(n)) if v(n) > 0.0 => {
                    let x = v(a) / v(n);
                    format!("{x:.2}x — {}", if x >= 0.5 { "meets" } else { "misses" })
                }
                _ => "not measured".into(),
            };
            println!(
                "aim: all-in-one {} x{conns} {what} >= 0.5x nginx: {line}",
                CASES[ci].1
            );
        }
    }
    let path = figs.write("http").context("writing http.json")?;
    println!("bench-http: figures in {}", path.display());
    Ok(())
}

/// The ratios of the `http` part for the summary: for each VOS case that nginx also ran,
/// throughput (requests/s; MiB/s is the same ratio at a fixed size) and CPU per request.
pub fn ratios(http: &serde_json::Value) -> Vec<(String, f64)> {
    let mut out = Vec::new();
    let num = |k: String| http.get(&k).and_then(serde_json::Value::as_f64);
    for target in ["aio", "factored"] {
        for (key, ..) in CASES {
            for conns in CONNS {
                let k = |t: &str, f: &str| format!("{t}.{key}.c{conns}.{f}");
                for (field, name) in [("rps", "throughput"), ("cpu_us_per_req", "cpu_per_req")] {
                    if let (Some(a), Some(b)) = (num(k(target, field)), num(k("nginx", field))) {
                        if b > 0.0 {
                            out.push((
                                format!("http.{target}_vs_nginx.{key}.c{conns}.{name}"),
                                round(a / b, 3),
                            ));
                        }
                    }
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_from_figures() {
        let v = serde_json::json!({
            "nginx.get_4k.c1.rps": 1000.0, "aio.get_4k.c1.rps": 250.0,
            "nginx.get_4k.c1.cpu_us_per_req": 10.0, "aio.get_4k.c1.cpu_us_per_req": 40.0,
            "factored": "not measured: needs root",
        });
        let r = ratios(&v);
        assert!(r.contains(&("http.aio_vs_nginx.get_4k.c1.throughput".into(), 0.25)));
        assert!(r.contains(&("http.aio_vs_nginx.get_4k.c1.cpu_per_req".into(), 4.0)));
        assert_eq!(r.len(), 2);
    }

    #[test]
    fn content_is_deterministic_and_not_flat() {
        let a = content(4096, 1);
        assert_eq!(a, content(4096, 1));
        assert_ne!(a, content(4096, 2));
        assert!(a.iter().collect::<std::collections::BTreeSet<_>>().len() > 200);
    }
}
