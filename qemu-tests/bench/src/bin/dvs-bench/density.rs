//! Density on one node (`bash scripts/bench-density.sh`): starts its own node daemon (API
//! 127.0.0.1:7170, proxy 7171, a fresh data dir, so it runs beside `make run`), boots idle VOS
//! instances (echo service) with `dvs run` until the limit or until less than 1 GiB of memory is
//! left, and prints one table: boot time per instance (`dvs run` to the Ready record in the
//! instance's typed view), host memory per instance, total idle CPU. Figures also go to
//! `target/bench/density.json`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use dvs_bench::{
    clock_ticks_per_s, cpu_ticks, median_p99_u64, mem_available_kib, repo_root, rss_kib, Figures,
};
use dvs_hypervisor::client::NodeClient;

const API: &str = "127.0.0.1:7170";

/// The daemon child: SIGTERM, then SIGKILL, on drop; the data dir removed after it.
/// A node daemon child of the bench: SIGTERM, then SIGKILL after 10 s, and its data directory
/// removed, on drop (the density and http benches share it).
pub(crate) struct Daemon {
    pub(crate) child: Child,
    pub(crate) dir: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the pid of our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The `dvs` binary built next to this one.
pub(crate) fn dvs_binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("current_exe")?;
    let p = exe.with_file_name("dvs");
    if !p.exists() {
        bail!(
            "{} missing: build it with `cargo build --release -p dvs-hypervisor --bin dvs`",
            p.display()
        );
    }
    Ok(p)
}

fn start_daemon(dvs: &Path) -> anyhow::Result<Daemon> {
    let dir = std::env::temp_dir().join(format!("dvs-density.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(
        dir.join("cluster.toml"),
        "[[node]]\nid = 1\napi = \"127.0.0.1:7170\"\nproxy = \"127.0.0.1:7171\"\n\
         [[dc]]\nid = 1\nname = \"density\"\nnodes = [1]\n",
    )?;
    std::fs::write(
        dir.join("node.toml"),
        "node = 1\ncluster = \"cluster.toml\"\ndata_dir = \"data\"\nbackend = \"qemu\"\naccel = \"auto\"\n",
    )?;
    let log = std::fs::File::create(dir.join("node.log"))?;
    let child = Command::new(dvs)
        .args(["node", "--config"])
        .arg(dir.join("node.toml"))
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", dvs.display()))?;
    Ok(Daemon { child, dir })
}

fn dvs_cli(dvs: &Path, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(dvs)
        .args(["--node", API])
        .arg("--credentials")
        .arg(std::env::temp_dir().join(format!(
            "dvs-density.{}/data/api/admin.toml",
            std::process::id()
        )))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running dvs {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "dvs {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Runs the benchmark with at most `max` instances.
pub fn run(max: usize) -> anyhow::Result<()> {
    let dvs = dvs_binary()?;
    let root = repo_root();
    let image = root.join("images/vos.elf");
    if !image.exists() {
        bail!("{} missing: run `make images`", image.display());
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let daemon = start_daemon(&dvs)?;
    let creds = daemon.dir.join("data/api/admin.toml");
    let connect = || {
        dvs_hypervisor::auth::Credentials::load(&creds)
            .map(|c| NodeClient::with_credentials(API, &c))
    };
    let up = Instant::now();
    let client = loop {
        if let Some(c) = connect().ok().filter(|c| rt.block_on(c.status()).is_ok()) {
            break c;
        }
        if up.elapsed() > Duration::from_secs(20) {
            let log = std::fs::read_to_string(daemon.dir.join("node.log")).unwrap_or_default();
            bail!("the density node did not answer on {API} in 20 s: {log}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let manifest = root.join("images/vos.manifest.json");
    dvs_cli(
        &dvs,
        &[
            "image",
            "push",
            &image.to_string_lossy(),
            "--manifest",
            &manifest.to_string_lossy(),
        ],
    )?;

    let avail0 = mem_available_kib().map_err(anyhow::Error::msg)?;
    let mut boots = Vec::new();
    let mut pids = Vec::new();
    eprintln!("density: booting up to {max} instances (progress every 20)");
    for i in 1..=max {
        if mem_available_kib().map_err(anyhow::Error::msg)? < 1024 * 1024 {
            eprintln!(
                "density: stopping at {} instances: less than 1 GiB of memory left",
                i - 1
            );
            break;
        }
        let name = format!("d{i}");
        let ep = (1000 + i).to_string();
        let t0 = Instant::now();
        dvs_cli(
            &dvs,
            &[
                "run", "vos", "--dc", "1", "--ep", &ep, "--svc", "echo", "--name", &name,
            ],
        )?;
        let ready = rt.block_on(crate::view::wait_for(
            &client,
            &name,
            Duration::from_secs(10),
            |v| v.guest.ready.as_ref().map(|_| v.pid),
        ));
        match ready {
            Ok(pid) => {
                boots.push(t0.elapsed().as_millis() as u64);
                pids.extend(pid);
            }
            Err(e) => {
                eprintln!("density: {name} did not become ready: {e:#}");
                break;
            }
        }
        if i % 20 == 0 {
            eprintln!("density: {i} running");
        }
    }
    let n = boots.len();
    if n == 0 {
        bail!("density: no instance booted");
    }
    std::thread::sleep(Duration::from_secs(2));
    let rss: u64 = pids.iter().filter_map(|&p| rss_kib(p).ok()).sum();
    let used = avail0.saturating_sub(mem_available_kib().map_err(anyhow::Error::msg)?);
    let ticks = |pids: &[u32]| -> u64 { pids.iter().filter_map(|&p| cpu_ticks(p).ok()).sum() };
    let c0 = ticks(&pids);
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(10));
    let c1 = ticks(&pids);
    let idle_pct =
        100.0 * c1.saturating_sub(c0) as f64 / clock_ticks_per_s() / t0.elapsed().as_secs_f64();
    let (first, last) = (boots[0], boots[n - 1]);
    let (median, p99) = median_p99_u64(boots);
    drop(daemon);

    let mut f = Figures::new();
    f.set("instances", n as u64);
    f.set("limit", max as u64);
    f.set("boot.median_ms", median);
    f.set("boot.p99_ms", p99);
    f.set("boot.first_ms", first);
    f.set("boot.last_ms", last);
    f.set("rss_per_instance_mib", rss / n as u64 / 1024);
    f.set(
        "mem_available_drop_per_instance_mib",
        used / n as u64 / 1024,
    );
    f.set("idle_cpu_total_pct", (idle_pct * 10.0).round() / 10.0);
    let row = |a: &str, b: String| println!("{a:<44} {b}");
    println!("== density: {n} idle VOS instances on one node ==");
    row("row", "figure".into());
    row("instances booted", format!("{n} (limit {max})"));
    row(
        "boot, dvs run -> Ready record, median / p99",
        format!("{median} / {p99} ms"),
    );
    row(
        "boot of the first / the last instance",
        format!("{first} / {last} ms"),
    );
    row(
        "host memory per instance (QEMU RSS)",
        format!("{} MiB", rss / n as u64 / 1024),
    );
    row(
        "host memory per instance (MemAvailable drop)",
        format!("{} MiB", used / n as u64 / 1024),
    );
    row(
        "total idle CPU of all instances (10 s)",
        format!("{idle_pct:.1}% of one core"),
    );
    f.write("density").context("writing the density figures")?;
    Ok(())
}
