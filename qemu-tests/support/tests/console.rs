//! `make console-test`: the web console in a real browser. Two dvs nodes (the cluster fixture: network
//! namespaces, real VOS VMs) run the DC of `make run` (the web server on its file server on its disk server,
//! with a volume) plus an echo instance and a client calling it; headless Chromium, driven through
//! ChromeDriver (fantoccini), signs in with a `dvs console` link and checks what a user sees and does:
//! the running instances listed, a migration picked from the page, a stop from the page, a console log that
//! follows, and a read-only session without actions. Each action is checked through the API too, not only
//! on the page. A screenshot is saved to `target/artifacts/console.png`.
//!
//! Needs root, QEMU, `images/vos.elf`, the `dvs` binary, and Debian's `chromium` and `chromium-driver`
//! (scripts/setup.sh installs them). Without `DVS_CONSOLE_TEST=1` the target passes at once, so that
//! `cargo test --workspace` starts no browser.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::Duration;

use dvs_hypervisor::instances::State;
use dvs_instance::spec::Accel;
use dvs_test_support::cluster::{is_root, Cluster, ClusterConfig};
use dvs_test_support::runner::Runner;
use dvs_test_support::vos::{dvs_bin, root_dir};
use dvs_test_support::wait::{eventually, Deadline};
use fantoccini::{Client, ClientBuilder, Locator};

const CHECKS: usize = 9;

/// A free TCP port on loopback (for ChromeDriver).
fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("finding a free port: {e}"))
}

/// Headless Chromium through ChromeDriver; both end on drop.
struct Browser {
    rt: tokio::runtime::Runtime,
    client: Option<Client>,
    driver: Child,
    _profile: TempDir,
}

/// A directory removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Browser {
    fn start() -> Result<Browser, String> {
        for (bin, pkg) in [
            ("/usr/bin/chromium", "chromium"),
            ("/usr/bin/chromedriver", "chromium-driver"),
        ] {
            if !Path::new(bin).is_file() {
                return Err(format!(
                    "{bin} is missing: install Debian's {pkg} (scripts/setup.sh does)"
                ));
            }
        }
        let port = free_port()?;
        let mut cmd = Command::new("/usr/bin/chromedriver");
        cmd.arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        dvs_instance::die_with_parent(&mut cmd);
        let driver = cmd
            .spawn()
            .map_err(|e| format!("starting chromedriver: {e}"))?;
        let profile = TempDir(
            std::env::temp_dir().join(format!("dvs-console-test-chromium.{}", std::process::id())),
        );
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("tokio runtime: {e}"))?;
        let mut b = Browser {
            rt,
            client: None,
            driver,
            _profile: profile,
        };
        let caps = serde_json::json!({
            "browserName": "chrome",
            "acceptInsecureCerts": true,
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    "--disable-dev-shm-usage", "--window-size=1400,1000",
                    format!("--user-data-dir={}", b._profile.0.display()),
                ],
            },
        });
        let serde_json::Value::Object(caps) = caps else {
            return Err("capabilities are not an object".into());
        };
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Deadline::after(Duration::from_secs(30));
        let client = b.rt.block_on(async {
            loop {
                let connected =
                    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
                        .capabilities(caps.clone())
                        .connect(&url)
                        .await;
                match connected {
                    Ok(c) => return Ok(c),
                    Err(e) if deadline.passed() => {
                        return Err(format!("chromedriver at {url}: {e}"))
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        })?;
        b.client = Some(client);
        Ok(b)
    }

    fn c(&self) -> Result<&Client, String> {
        self.client
            .as_ref()
            .ok_or_else(|| "no browser session".into())
    }

    fn goto(&self, url: &str) -> Result<(), String> {
        let c = self.c()?;
        self.rt
            .block_on(c.goto(url))
            .map_err(|e| format!("opening {url}: {e}"))
    }

    fn path(&self) -> Result<String, String> {
        let c = self.c()?;
        self.rt
            .block_on(c.current_url())
            .map(|u| u.path().to_string())
            .map_err(|e| format!("current URL: {e}"))
    }

    /// The text of every element matching `css`.
    fn texts(&self, css: &str) -> Result<Vec<String>, String> {
        let c = self.c()?;
        self.rt.block_on(async {
            let mut out = Vec::new();
            for e in c
                .find_all(Locator::Css(css))
                .await
                .map_err(|e| format!("finding {css}: {e}"))?
            {
                // An element the page's script just replaced is stale: skip it, the caller asks again.
                if let Ok(t) = e.text().await {
                    out.push(t);
                }
            }
            Ok(out)
        })
    }

    fn text(&self, css: &str) -> Result<String, String> {
        self.texts(css)?
            .into_iter()
            .next()
            .ok_or_else(|| format!("nothing on the page matches {css}"))
    }

    /// Attribute `name` of the first element matching `css`.
    fn attr(&self, css: &str, name: &str) -> Result<Option<String>, String> {
        let c = self.c()?;
        self.rt.block_on(async {
            c.find(Locator::Css(css))
                .await
                .map_err(|e| format!("finding {css}: {e}"))?
                .attr(name)
                .await
                .map_err(|e| format!("{css} [{name}]: {e}"))
        })
    }

    fn count(&self, css: &str) -> Result<usize, String> {
        let c = self.c()?;
        self.rt
            .block_on(c.find_all(Locator::Css(css)))
            .map(|v| v.len())
            .map_err(|e| format!("finding {css}: {e}"))
    }

    fn click(&self, css: &str) -> Result<(), String> {
        let c = self.c()?;
        self.rt.block_on(async {
            c.find(Locator::Css(css))
                .await
                .map_err(|e| format!("finding {css}: {e}"))?
                .click()
                .await
                .map_err(|e| format!("clicking {css}: {e}"))
        })
    }

    fn select(&self, css: &str, value: &str) -> Result<(), String> {
        let c = self.c()?;
        self.rt.block_on(async {
            c.find(Locator::Css(css))
                .await
                .map_err(|e| format!("finding {css}: {e}"))?
                .select_by_value(value)
                .await
                .map_err(|e| format!("selecting {value} in {css}: {e}"))
        })
    }

    fn screenshot(&self, to: &Path) -> Result<(), String> {
        let c = self.c()?;
        let png = self
            .rt
            .block_on(c.screenshot())
            .map_err(|e| format!("screenshot: {e}"))?;
        if let Some(dir) = to.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        std::fs::write(to, png).map_err(|e| format!("{}: {e}", to.display()))
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(c) = self.client.take() {
            let _ = self
                .rt
                .block_on(async { tokio::time::timeout(Duration::from_secs(5), c.close()).await });
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// The DC of `make run` (examples/web-dc.toml), plus an echo server and a client calling it.
fn manifest(root: &Path) -> String {
    format!(
        r#"[dc]
name = "web"

[[image]]
name = "vos"
path = "{}/images/vos.elf"

[[instance]]
name = "web"
image = "vos"
node = 1
endpoints = [10, 11, 20, 21]
services = ["http", "echo", "disk", "fs"]
args = ["disk_ep=20", "fs_ep=21"]
memory = 32
volumes = [{{ name = "web-data", size = "64M" }}]
ip = "10.1.0.2/24"
publish = ["8080:80"]
restart = "on-failure"

[[instance]]
name = "echo"
image = "vos"
node = 1
endpoints = [30]
services = ["echo"]

[[instance]]
name = "caller"
image = "vos"
node = 2
endpoints = [31]
services = ["ipc-bench"]
args = ["peer=30", "n=200000", "vcopy=0"]
"#,
        root.display()
    )
}

/// The message an action left on the page it led to (the browser may still be on its way there).
fn flash(b: &Browser, deadline: Deadline) -> Result<String, String> {
    eventually(
        deadline,
        "the page after the action to say how it went",
        || {
            b.text("#flash").map_err(|e| {
                let at = b.path().unwrap_or_default();
                let h1 = b.text("h1").unwrap_or_default();
                let why = b.text("p.err").unwrap_or_default();
                format!("{e} (at {at}, h1 {h1:?}: {why})")
            })
        },
    )
    .map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    if std::env::var_os("DVS_CONSOLE_TEST").is_none() {
        println!(
            "console-test: skipped (it boots a two-node cluster as root and a browser): `make console-test` \
             runs it, or set DVS_CONSOLE_TEST=1"
        );
        return ExitCode::SUCCESS;
    }
    let accel = Accel::detect();
    println!("console-test: accelerator {}", accel.name());
    if !is_root() {
        eprintln!("console-test: needs root (the cluster fixture's network namespaces)");
        return ExitCode::FAILURE;
    }
    let root = root_dir();
    if !root.join("images/vos.elf").is_file() {
        eprintln!("console-test: images/vos.elf is missing: run `make images` first");
        return ExitCode::FAILURE;
    }
    let mut r = Runner::new(CHECKS);
    let mut cfg = ClusterConfig::new(2, dvs_bin()).dc(1, "web", &[1, 2]);
    cfg.accel = accel;
    cfg.subnet = "10.218.0".into();
    let Some(mut cluster) = r.step("two nodes up", || {
        Cluster::up(cfg, Duration::from_secs(30)).map_err(|e| e.to_string())
    }) else {
        return r.finish();
    };
    checks(&mut r, &mut cluster, &root);
    if r.failed() > 0 {
        cluster.keep_logs();
    }
    drop(cluster);
    r.finish()
}

fn checks(r: &mut Runner, c: &mut Cluster, root: &Path) {
    let path = c.work_dir().join("web-dc.toml");
    let applied = r.step("apply the DC of make run", || {
        std::fs::write(&path, manifest(root)).map_err(|e| e.to_string())?;
        c.cli_ok(1, &["apply", &path.display().to_string()])?;
        for (node, name) in [(1, "web"), (1, "echo"), (2, "caller")] {
            c.api(node)
                .wait_view(name, "running", c.deadline(Duration::from_secs(30)), |v| {
                    v.state == State::Running
                })
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    });
    if applied.is_none() {
        return;
    }
    let Some(browser) = r.step("headless Chromium", Browser::start) else {
        return;
    };
    let base = format!("https://{}:7070", c.node_ip(1));
    let b = &browser;
    let page_wait = || c.deadline(Duration::from_secs(20));

    r.check("1_unauthenticated_browser_sees_sign_in", || {
        b.goto(&format!("{base}/console"))?;
        let h1 = b.text("h1")?;
        if h1 != "Not signed in" {
            return Err(format!("h1 = {h1:?}"));
        }
        if b.count("table")? != 0 {
            return Err("the sign-in page shows tables".into());
        }
        Ok(())
    });

    r.check("2_login_link_opens_the_console_and_works_once", || {
        let link = c.cli_ok(1, &["console", "--url-only"])?;
        let link = link.trim();
        b.goto(link)?;
        let at = b.path()?;
        if at != "/console" {
            return Err(format!("after the login link the browser is at {at}"));
        }
        let who = b.text("header .who")?;
        if who != "signed in: admin" {
            return Err(format!("header says {who:?}"));
        }
        // Used once, it opens nothing again (the browser signs in with a second link first, so that the
        // refusal cannot come from an old session).
        let again = c.cli_ok(1, &["console", "--url-only"])?;
        b.goto(again.trim())?;
        b.goto(link)?;
        let h1 = b.text("h1").unwrap_or_default();
        if h1 != "Not signed in" {
            return Err(format!("a used login link opened {h1:?}"));
        }
        // The browser still holds the session of the second link.
        b.goto(&format!("{base}/console"))?;
        b.text("#instances")?;
        Ok(())
    });

    r.check("3_page_lists_the_running_instances_of_the_dc", || {
        b.goto(&format!("{base}/console"))?;
        for (name, node) in [("web", "1"), ("echo", "1"), ("caller", "2")] {
            let row = format!("tr[data-instance=\"{name}\"]");
            let state = b.text(&format!("{row} .state"))?;
            let on = b.text(&format!("{row} td.node"))?;
            if state != "running" || on != node {
                return Err(format!(
                    "{name}: state {state:?} on node {on:?}, expected running on {node}"
                ));
            }
        }
        let nodes = b.count("section:first-of-type tbody tr")?;
        if nodes != 2 {
            return Err(format!("{nodes} node rows, expected 2"));
        }
        // The DC's chart draws once two counter samples came (the caller keeps calling across nodes).
        eventually(page_wait(), "the DC's rate chart to show frames", || {
            let rate = b.text(".dc[data-dc=\"1\"] .rate")?;
            match rate.split(' ').next().and_then(|n| n.parse::<f64>().ok()) {
                Some(x) if x > 0.0 => Ok(()),
                _ => Err(rate),
            }
        })
        .map_err(|e| e.to_string())?;
        eventually(page_wait(), "the DC's chart to have a few samples", || {
            let points = b
                .attr(".dc[data-dc=\"1\"] polyline", "points")?
                .unwrap_or_default();
            if points.split(' ').filter(|p| !p.is_empty()).count() >= 12 {
                Ok(())
            } else {
                Err(format!("points {points:?}"))
            }
        })
        .map_err(|e| e.to_string())?;
        b.screenshot(&root.join("target/artifacts/console.png"))
    });

    r.check("4_instance_page_follows_the_console_log", || {
        b.goto(&format!("{base}/console/instances/web"))?;
        let h1 = b.text("h1")?;
        if !h1.starts_with("web") {
            return Err(format!("h1 = {h1:?}"));
        }
        let api_log = c.api(1).logs("web")?;
        let last = api_log
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("")
            .trim()
            .to_string();
        eventually(
            page_wait(),
            "the page's log to hold the console's last line",
            || {
                let shown = b.text("pre#log")?;
                if !last.is_empty() && shown.contains(&last) {
                    Ok(())
                } else {
                    Err(format!(
                        "last line {last:?} not in the {} bytes shown",
                        shown.len()
                    ))
                }
            },
        )
        .map_err(|e| e.to_string())?;
        Ok(())
    });

    r.check("5_migrate_from_the_page_moves_the_instance", || {
        b.goto(&format!("{base}/console"))?;
        let form = "tr[data-instance=\"echo\"] form[action$=\"/migrate\"]";
        b.select(&format!("{form} select"), "2")?;
        b.click(&format!("{form} button"))?;
        let flash = flash(b, page_wait())?;
        if !flash.contains("migrated echo from node 1 to node 2") {
            return Err(format!("the page says {flash:?}"));
        }
        let v = c.api(2).instance("echo")?;
        if v.state != State::Running {
            return Err(format!("echo on node 2 is {:?}", v.state));
        }
        if c.api(1).instance("echo").is_ok() {
            return Err("echo is still on node 1".into());
        }
        let on = b.text("tr[data-instance=\"echo\"] td.node")?;
        if on != "2" {
            return Err(format!("the page shows echo on node {on}"));
        }
        Ok(())
    });

    r.check("6_stop_from_the_page_stops_the_instance", || {
        b.goto(&format!("{base}/console"))?;
        b.click("tr[data-instance=\"echo\"] form[action$=\"/stop\"] button")?;
        let flash = flash(b, page_wait())?;
        if !flash.contains("stopped echo (node 2)") {
            return Err(format!("the page says {flash:?}"));
        }
        for n in [1, 2] {
            if let Ok(v) = c.api(n).instance("echo") {
                return Err(format!("node {n} still has echo: {:?}", v.state));
            }
        }
        if b.count("tr[data-instance=\"echo\"]")? != 0 {
            return Err("the page still lists echo".into());
        }
        Ok(())
    });

    r.check("7_apply_a_manifest_from_the_page", || {
        b.goto(&format!("{base}/console"))?;
        let manifest =
            "[dc]\nname = \"web\"\n\n[[instance]]\nname = \"echo2\"\nimage = \"vos\"\nnode = 2\n\
                        endpoints = [40]\nservices = [\"echo\"]\n";
        let c0 = b.c()?;
        b.rt.block_on(c0.execute(
            "document.querySelector('textarea[name=manifest]').value = arguments[0];",
            vec![serde_json::Value::String(manifest.into())],
        ))
        .map_err(|e| format!("filling in the manifest: {e}"))?;
        b.click("form[action=\"/console/apply\"] button")?;
        let said = flash(b, page_wait())?;
        if !said.contains("created echo2 (node 2") || !said.contains("kept web") {
            return Err(format!("the page says {said:?}"));
        }
        c.api(2)
            .wait_view(
                "echo2",
                "running",
                c.deadline(Duration::from_secs(30)),
                |v| v.state == State::Running,
            )
            .map_err(|e| e.to_string())?;
        Ok(())
    });

    r.check("8_forged_form_without_the_session_token_changes_nothing", || {
        // A form posted with a wrong CSRF token (as a page of another site would): refused, web keeps running.
        b.goto(&format!("{base}/console"))?;
        let c0 = b.c()?;
        b.rt
            .block_on(c0.execute(
                "const f = document.querySelector('tr[data-instance=\"web\"] form[action$=\"/stop\"]');\
                 f.querySelector('input[name=csrf]').value = 'forged'; f.submit();",
                vec![],
            ))
            .map_err(|e| format!("submitting the forged form: {e}"))?;
        eventually(page_wait(), "the refusal page", || {
            let h1 = b.text("h1")?;
            let why = b.text("p.err").unwrap_or_default();
            if h1.starts_with("403") && why.contains("token") {
                Ok(())
            } else {
                Err(format!("{h1}: {why}"))
            }
        })
        .map_err(|e| e.to_string())?;
        let v = c.api(1).instance("web")?;
        if v.state != State::Running {
            return Err(format!("web is {:?} after the forged stop", v.state));
        }
        Ok(())
    });

    r.check("9_read_only_session_shows_no_actions", || {
        let ro = c.work_dir().join("n1/api/read-only.toml");
        let out = Command::new(dvs_bin())
            .arg("--node")
            .arg(format!("{}:7070", c.node_ip(1)))
            .arg("--credentials")
            .arg(&ro)
            .args(["console", "--url-only"])
            .output()
            .map_err(|e| format!("dvs console (read-only): {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "dvs console with read-only credentials: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        b.goto(String::from_utf8_lossy(&out.stdout).trim())?;
        let who = b.text("header .who")?;
        if who != "signed in: read-only" {
            return Err(format!("header says {who:?}"));
        }
        let rows = b.count("tr[data-instance]")?;
        let buttons = b.count("form[action*=\"/instances/\"] button")?;
        if rows < 2 || buttons != 0 {
            return Err(format!("{rows} instance rows, {buttons} action buttons"));
        }
        Ok(())
    });
}
