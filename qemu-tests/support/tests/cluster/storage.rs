//! Section 7: the VOS factored over three nodes by `examples/web-dc-3node.toml` alone. The web server
//! (http, node 1) keeps its files on the file server (fs, node 2), which keeps its blocks on the disk
//! server (disk, node 3, on a volume of node 3): one image, three instances, endpoints 10 → 21 → 20, all
//! M3-IPC across the peer links. Deployed with `dvs apply` against node 1 (the CLI starts each instance on
//! the node its `node =` names, through that node's API), then used only through the published port:
//! node 1's address, port 8080, from the root namespace, as a client outside the cluster would.
//!
//! - a 10 MiB PUT read back byte-exact, in the listing, across a restart of all three instances, then
//!   DELETE;
//! - 20 concurrent clients, each with its own files (1 KiB to 8 MiB, seeded patterns), all byte-exact;
//! - the file server's machine killed (SIGKILL) in the middle of an upload and brought back by its
//!   restart policy: finished files intact, the cut-off upload absent or whole, 503 while fs was away,
//!   and no request left hanging past its timeout;
//! - the disk server stopped under the file server: the web server answers 503 (never hangs), and
//!   serves the same bytes again once the disk server is back.
//!
//! The fs server boots before its disk server is reachable each time the DC is applied (the manifest
//! starts web, fs, disk in this order): it must keep retrying its mount, answering errors meanwhile.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use dvs_test_support::http::{self, first_difference, pattern, HttpError, Request, Response};

use super::*;

/// The checks of this section.
pub const CHECKS: usize = 12;

/// The published port (`publish = ["0.0.0.0:8080:80"]` in the manifest).
const PORT: u16 = 8080;
/// The 10 MiB file.
const BIG: usize = 10 << 20;
/// Concurrent clients.
const CLIENTS: usize = 20;
/// The web server's call timeout to the file server (`fs_store::CALL_TIMEOUT`); a request must be
/// answered within it plus slack.
const CALL_TIMEOUT_S: u64 = 8;

/// Client `i`'s files: a small one (1 KiB · (i + 1)) and one of 1 KiB · 8192^(i / 19) (1 KiB for
/// client 0 up to 8 MiB for client 19), each with a pattern of its own.
fn client_files(i: usize) -> Vec<(String, usize, u64)> {
    let exp = i as f64 * 13.0 / (CLIENTS - 1) as f64;
    let big = (1024.0 * exp.exp2()).round() as usize;
    vec![
        (format!("/c/{i}/small.bin"), 1024 * (i + 1), 1000 + i as u64),
        (format!("/c/{i}/file.bin"), big, 2000 + i as u64),
    ]
}

fn mib_s(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / f64::from(1 << 20) / d.as_secs_f64().max(1e-9)
}

/// What one HTTP exchange came to, for messages.
fn seen(r: &Result<Response, HttpError>) -> String {
    match r {
        Ok(r) => format!(
            "{} ({} body bytes)",
            r.head.lines().next().unwrap_or(""),
            r.body.len()
        ),
        Err(e) => e.to_string(),
    }
}

struct Web<'a> {
    t: &'a Ctx<'a>,
    addr: SocketAddr,
}

impl Web<'_> {
    /// The timeout of one request moving `bytes` (KVM budget: 20 s plus 1 s per MiB).
    fn timeout(&self, bytes: usize) -> Duration {
        self.t.c.accel.timeout(secs(20 + (bytes >> 20) as u64))
    }

    fn call(&self, req: Request<'_>) -> Result<Response, HttpError> {
        let n = req.body.map_or(BIG, <[u8]>::len);
        http::exchange(self.addr, req, self.timeout(n), None)
    }

    fn put(&self, path: &str, data: &[u8]) -> Result<Response, String> {
        self.call(Request::put(path, data))
            .map_err(|e| format!("PUT {path} ({} bytes): {e}", data.len()))
    }

    /// PUT, expecting 201 (new) or 200 (replaced).
    fn put_ok(&self, path: &str, data: &[u8]) -> Result<(), String> {
        let r = self.put(path, data)?;
        expect(matches!(r.status, 200 | 201), || {
            format!(
                "PUT {path} ({} bytes): expected 201 or 200; got {}",
                data.len(),
                seen(&Ok(r.clone()))
            )
        })
    }

    fn get(&self, path: &str) -> Result<Response, String> {
        self.call(Request::get(path))
            .map_err(|e| format!("GET {path}: {e}"))
    }

    /// GET, expecting 200 and exactly `want`.
    fn get_exact(&self, path: &str, want: &[u8]) -> Result<(), String> {
        let r = self.get(path)?;
        expect(r.status == 200, || {
            format!("GET {path}: expected 200; got {}", seen(&Ok(r.clone())))
        })?;
        match first_difference(&r.body, want) {
            None => Ok(()),
            Some(at) => Err(format!(
                "GET {path}: {} bytes back for {} put; first difference at byte {at}",
                r.body.len(),
                want.len()
            )),
        }
    }

    /// Waits until GET `path` answers anything but 503 (the file server mounting, or away), with
    /// bounded re-tries; the response, and how many 503s came before it.
    fn until_not_503(&self, path: &str, kvm: u64) -> Result<(Response, usize), String> {
        let mut unavailable = 0;
        let r = eventually(
            self.t.d(kvm),
            &format!("GET {path} to answer other than 503"),
            || match self.get(path) {
                Ok(r) if r.status == 503 => {
                    unavailable += 1;
                    Err(seen(&Ok(r)))
                }
                Ok(r) => Ok(r),
                Err(e) => Err(e),
            },
        )
        .map_err(|e| e.to_string())?;
        Ok((r, unavailable))
    }

    /// The web instance's publish gateway and HTTP counters, for failure messages.
    fn state(&self) -> String {
        match self.t.c.api(1).instance("web") {
            Ok(v) => format!(
                "web's publish gateway: {:?}\nweb's counters: {}",
                v.publish,
                v.guest.counters.as_ref().map_or("none".into(), |c| format!(
                    "http_requests={} http_bad={} http_timeouts={} http_evicted={} http_busy={}",
                    c.http_requests, c.http_bad, c.http_timeouts, c.http_evicted, c.http_busy
                ))
            ),
            Err(e) => e,
        }
    }

    fn listing(&self, dir: &str) -> Result<String, String> {
        let r = self.get(dir)?;
        expect(r.status == 200, || {
            format!("listing {dir}: expected 200; got {}", seen(&Ok(r.clone())))
        })?;
        Ok(r.text())
    }
}

/// Applies the manifest and waits until the three instances are ready.
fn deploy(t: &Ctx, manifest: &str) -> Result<String, String> {
    let out = t.c.cli_ok(1, &["apply", manifest])?;
    for (n, name) in [(1, "web"), (2, "fs"), (3, "disk")] {
        t.ready(n, name)?;
    }
    Ok(out)
}

/// The storage section, in order; `manifest` is examples/web-dc-3node.toml.
pub fn checks(t: &Ctx, r: &mut Runner, manifest: &Path) {
    let w = Web {
        t,
        addr: SocketAddr::new(t.c.node_ip(1), PORT),
    };
    let manifest = manifest.display().to_string();

    // ---- 7.1 deploy: one manifest, three nodes ----
    let applied = r.step(
        "dvs apply examples/web-dc-3node.toml (web on node 1, fs on 2, disk on 3); all ready",
        || deploy(t, &manifest),
    );
    if let Some(out) = &applied {
        for l in out.lines() {
            println!("-- apply: {l}");
        }
    }
    r.check("7_instances_run_where_the_manifest_puts_them", || {
        for (n, name) in [(1u16, "web"), (2, "fs"), (3, "disk")] {
            let v = t.c.api(n).instance(name)?;
            expect(v.node == n && v.state == State::Running, || {
                format!("expected {name} running on node {n}; got {}", describe(&v))
            })?;
        }
        // The web server's node routes its calls to fs on node 2, and fs's node to disk on node 3.
        t.placed(1, 3, 21, 2, 10)?;
        t.placed(2, 3, 20, 3, 10)
    });
    r.check("7_web_answers_once_fs_has_mounted_its_disk", || {
        // A file that is not there: 404 needs the file server's answer (503 while it is down; a
        // listing would say 200 with an empty list).
        let t0 = Instant::now();
        let (resp, unavailable) = w.until_not_503("/no-such-file", 60)?;
        println!(
            "-- first answer from fs through {}: {} after {:.2} s ({unavailable} x 503 before it)",
            w.addr,
            resp.head.lines().next().unwrap_or(""),
            t0.elapsed().as_secs_f64()
        );
        expect(resp.status == 404, || {
            format!(
                "GET /no-such-file: expected 404; got {}",
                seen(&Ok(resp.clone()))
            )
        })
    });

    // ---- 7.2 a 10 MiB file: PUT, GET, listing, restart of all three, DELETE ----
    let big = pattern(BIG, 0x5eed_0710);
    r.check("7_put_10mib_and_get_it_back_byte_exact", || {
        let t0 = Instant::now();
        let resp = w.put("/files/big.bin", &big)?;
        let put = t0.elapsed();
        expect(resp.status == 201, || {
            format!(
                "PUT /files/big.bin: expected 201; got {}",
                seen(&Ok(resp.clone()))
            )
        })?;
        let t0 = Instant::now();
        w.get_exact("/files/big.bin", &big)?;
        let got = t0.elapsed();
        println!(
            "-- 10 MiB through web (node 1) -> fs (node 2) -> disk (node 3): PUT {:.1} MiB/s ({:.2} s), GET {:.1} MiB/s ({:.2} s)",
            mib_s(BIG, put),
            put.as_secs_f64(),
            mib_s(BIG, got),
            got.as_secs_f64()
        );
        Ok(())
    });
    r.check("7_listing_shows_the_file_with_its_size", || {
        let list = w.listing("/files/")?;
        expect(list.contains(&format!("/files/big.bin</a> {BIG}")), || {
            format!(
                "expected /files/big.bin with {BIG} bytes in the listing of /files/; got:\n{list}"
            )
        })
    });
    let restarted = r.step(
        "restart web, fs and disk (dvs stop each; dvs apply)",
        || {
            for name in ["web", "fs", "disk"] {
                t.c.cli_ok(1, &["stop", name])?;
            }
            deploy(t, &manifest)
        },
    );
    if let Some(out) = &restarted {
        println!(
            "-- apply after the stops: {}",
            out.lines().last().unwrap_or("")
        );
    }
    r.check("7_10mib_file_survives_a_restart_of_all_three", || {
        let (resp, unavailable) = w.until_not_503("/files/big.bin", 60)?;
        if unavailable > 0 {
            println!("-- after the restart: {unavailable} x 503 until fs had mounted");
        }
        expect(resp.status == 200, || {
            format!(
                "GET /files/big.bin after the restart: expected 200; got {}",
                seen(&Ok(resp.clone()))
            )
        })?;
        w.get_exact("/files/big.bin", &big)
    });
    r.check("7_delete_then_404_and_gone_from_the_listing", || {
        let resp = w
            .call(Request::delete("/files/big.bin"))
            .map_err(|e| format!("DELETE /files/big.bin: {e}"))?;
        expect(resp.status == 204, || {
            format!("DELETE: expected 204; got {}", seen(&Ok(resp.clone())))
        })?;
        let resp = w.get("/files/big.bin")?;
        expect(resp.status == 404, || {
            format!(
                "GET after DELETE: expected 404; got {}",
                seen(&Ok(resp.clone()))
            )
        })?;
        let list = w.listing("/files/")?;
        expect(!list.contains("big.bin"), || {
            format!("big.bin still listed after DELETE:\n{list}")
        })
    });

    // ---- 7.3 20 concurrent clients ----
    r.check("7_20_concurrent_clients_all_byte_exact", || {
        let t0 = Instant::now();
        let errors = Mutex::new(Vec::new());
        let bytes = AtomicU64::new(0);
        std::thread::scope(|s| {
            for i in 0..CLIENTS {
                let (w, errors, bytes) = (&w, &errors, &bytes);
                s.spawn(move || {
                    for (path, len, seed) in client_files(i) {
                        let data = pattern(len, seed);
                        let r = w
                            .put_ok(&path, &data)
                            .and_then(|()| w.get_exact(&path, &data));
                        match r {
                            Ok(()) => {
                                bytes.fetch_add(len as u64, Ordering::Relaxed);
                            }
                            Err(e) => errors.lock().unwrap_or_else(|p| p.into_inner()).push(e),
                        }
                    }
                });
            }
        });
        let errors = errors.into_inner().unwrap_or_else(|p| p.into_inner());
        let moved = bytes.load(Ordering::Relaxed) as usize;
        println!(
            "-- {CLIENTS} clients, {} files, {:.1} MiB put and read back in {:.2} s ({:.1} MiB/s each way)",
            CLIENTS * 2,
            moved as f64 / f64::from(1 << 20),
            t0.elapsed().as_secs_f64(),
            mib_s(moved, t0.elapsed() / 2)
        );
        expect(errors.is_empty(), || {
            format!(
                "{} of {} files failed:\n{}",
                errors.len(),
                CLIENTS * 2,
                errors.join("\n")
            )
        })
    });

    // ---- 7.4 the file server killed in the middle of an upload ----
    let cut = pattern(16 << 20, 0x5eed_0740);
    let killed = r.step(
        "kill fs's machine (SIGKILL) 4 MiB into a 16 MiB upload, GETs polling meanwhile; fs restarted by its policy",
        || kill_fs_mid_upload(&w, &cut),
    );
    let k = killed.as_ref();
    r.check("7_killed_fs_is_restarted_by_its_policy", || {
        let k = k.ok_or("no outcome")?;
        let exit = k.after.last_exit.clone().unwrap_or_default();
        expect(
            k.after.boots > k.boots_before && exit.contains("signal 9"),
            || {
                format!(
                    "expected a new boot after a kill by signal 9; got {}",
                    describe(&k.after)
                )
            },
        )
    });
    r.check("7_web_answered_503_while_fs_was_away_and_nothing_hung", || {
        let k = k.ok_or("no outcome")?;
        let statuses: Vec<String> = k
            .polls
            .iter()
            .map(|p| format!("{} in {:.2} s", p.what, p.took.as_secs_f64()))
            .collect();
        let hung = k.polls.iter().any(|p| p.timed_out);
        let slowest = k.polls.iter().map(|p| p.took).max().unwrap_or_default();
        let limit = t.c.accel.timeout(secs(CALL_TIMEOUT_S + 4));
        let unavailable = k.polls.iter().filter(|p| p.status == Some(503)).count();
        println!(
            "-- fs back {:.2} s after the kill; meanwhile {} GETs, {unavailable} x 503, slowest {:.2} s; the cut upload: {}",
            k.outage.as_secs_f64(),
            k.polls.len(),
            slowest.as_secs_f64(),
            k.upload
        );
        let saw_503 = unavailable > 0 || k.upload_status == Some(503);
        expect(saw_503, || {
            format!(
                "expected a 503 while fs was away; GETs saw:\n{}\nthe upload: {}",
                statuses.join("\n"),
                k.upload
            )
        })?;
        expect(!hung && slowest < limit, || {
            format!(
                "a request took longer than {limit:?} (the call timeout plus slack):\n{}",
                statuses.join("\n")
            )
        })
    });
    r.check("7_cut_off_upload_is_absent_or_whole", || {
        let (resp, _) = w.until_not_503("/cut/cut.bin", 30)?;
        match resp.status {
            404 => Ok(()),
            200 => match first_difference(&resp.body, &cut) {
                None => Ok(()),
                Some(at) => Err(format!(
                    "the cut upload is visible but not whole: {} of {} bytes, first difference at {at}",
                    resp.body.len(),
                    cut.len()
                )),
            },
            _ => Err(format!(
                "GET /cut/cut.bin: expected 404 or the whole file; got {}",
                seen(&Ok(resp))
            )),
        }
    });
    r.check("7_finished_files_intact_after_the_fs_kill", || {
        let mut bad = Vec::new();
        for i in 0..CLIENTS {
            for (path, len, seed) in client_files(i) {
                if let Err(e) = w.get_exact(&path, &pattern(len, seed)) {
                    bad.push(e);
                }
            }
        }
        expect(bad.is_empty(), || bad.join("\n"))
    });

    // ---- 7.5 the disk server away under the file server ----
    r.check("7_disk_away_web_answers_503_then_same_bytes_again", || {
        let (path, len, seed) = client_files(CLIENTS - 1).remove(1);
        let want = pattern(len, seed);
        let limit = t.c.accel.timeout(secs(CALL_TIMEOUT_S + 4));
        t.c.cli_ok(1, &["stop", "disk"])?;
        // A PUT needs the disk (its data, fsync): 503 within the call timeout.
        let small = pattern(5000, 0x5eed_0750);
        let t0 = Instant::now();
        let resp = w
            .put("/files/while-away.bin", &small)
            .map_err(|e| format!("{e}\n{}", w.state()))?;
        let took = t0.elapsed();
        println!(
            "-- disk stopped: PUT -> {} in {:.2} s",
            seen(&Ok(resp.clone())),
            took.as_secs_f64()
        );
        expect(resp.status == 503 && took < limit, || {
            format!(
                "PUT with the disk server away: expected 503 within {limit:?}; got {} in {took:?}",
                seen(&Ok(resp.clone()))
            )
        })?;
        // A GET of a file: the failed PUT took the file system down, and its block cache with it,
        // so the data must come from the disk. The answer is a 503, or (when the head was out before the first read failed) a response cut
        // off by a reset; never a connection left hanging.
        let t0 = Instant::now();
        let r = w.call(Request::get(&path));
        let took = t0.elapsed();
        println!(
            "-- disk stopped: GET {path} -> {} in {:.2} s",
            seen(&r),
            took.as_secs_f64()
        );
        let ok = match &r {
            Ok(resp) => resp.status == 503,
            Err(HttpError::Broken { .. } | HttpError::Malformed(_)) => true,
            Err(_) => false,
        };
        expect(ok && took < limit, || {
            format!(
                "GET {path} with the disk server away: expected 503 or a cut-off response within {limit:?}; got {} in {took:?}\n{}",
                seen(&r),
                w.state()
            )
        })?;
        deploy(t, &manifest)?;
        let (resp, _) = w.until_not_503(&path, 60)?;
        expect(resp.status == 200 && resp.body == want, || {
            format!(
                "GET {path} after the disk server came back: {}",
                seen(&Ok(resp.clone()))
            )
        })?;
        w.put_ok("/files/after.bin", &small)?;
        w.get_exact("/files/after.bin", &small)
    });
}

/// What [`kill_fs_mid_upload`] saw.
struct Killed {
    /// fs's boots before the kill.
    boots_before: u32,
    /// fs's view once it was back.
    after: InstanceView,
    /// From the kill until fs's new boot was running.
    outage: Duration,
    /// The cut upload's outcome, and its status if it got a response.
    upload: String,
    upload_status: Option<u16>,
    /// The polling GETs.
    polls: Vec<Poll>,
}

/// One polling GET.
struct Poll {
    /// What it came to.
    what: String,
    /// Its status, if it got a response.
    status: Option<u16>,
    /// It got no response within its timeout.
    timed_out: bool,
    /// How long it took.
    took: Duration,
}

/// Starts a 16 MiB PUT of /cut/cut.bin; once 4 MiB are sent, kills fs's machine with SIGKILL while a
/// poller GETs a small finished file back to back; waits until fs is back (its restart policy) and the
/// poller has had a 200 from a GET started after that (or its deadline passed).
fn kill_fs_mid_upload(w: &Web, cut: &[u8]) -> Result<Killed, String> {
    let t = w.t;
    let fs = t.c.api(2).instance("fs")?;
    let pid = fs
        .pid
        .ok_or_else(|| format!("fs has no pid: {}", describe(&fs)))?;
    let boots_before = fs.boots;
    let sent = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let back = AtomicBool::new(false);
    let poll_timeout = t.c.accel.timeout(secs(CALL_TIMEOUT_S + 4));
    let poll_deadline = t.d(60);
    std::thread::scope(|s| {
        let upload = s.spawn(|| {
            http::exchange(
                w.addr,
                Request::put("/cut/cut.bin", cut),
                w.timeout(cut.len()),
                Some(&sent),
            )
        });
        let started = eventually(t.d(30), "4 MiB of the upload to be sent", || {
            let n = sent.load(Ordering::Relaxed);
            if n >= 4 << 20 || upload.is_finished() {
                Ok(())
            } else {
                Err(format!("{n} bytes sent"))
            }
        });
        let poller = s.spawn(|| {
            let (path, _, _) = client_files(0).remove(0);
            let mut polls = Vec::new();
            while !poll_deadline.passed() && !stop.load(Ordering::Relaxed) {
                let fs_back = back.load(Ordering::Relaxed);
                let t0 = Instant::now();
                let r = http::exchange(w.addr, Request::get(&path), poll_timeout, None);
                let status = r.as_ref().ok().map(|r| r.status);
                polls.push(Poll {
                    what: seen(&r),
                    status,
                    timed_out: matches!(r, Err(HttpError::Timeout { .. })),
                    took: t0.elapsed(),
                });
                if fs_back && status == Some(200) {
                    break;
                }
            }
            polls
        });
        let killed_at = Instant::now();
        let killed = started.map_err(|e| e.to_string()).and_then(|()| {
            // SAFETY: kill(2) of the machine's pid as node 2's API shows it (QEMU, a child of its daemon).
            let rc = unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            expect(rc == 0, || format!("kill({pid}, SIGKILL) failed"))
        });
        let after = killed.and_then(|()| {
            t.wait(2, "fs", "a new boot, running", 30, |v| {
                v.boots > boots_before && v.state == State::Running
            })
        });
        let outage = killed_at.elapsed();
        // The poller ends on its own at its first 200 after fs is back, or at its deadline.
        back.store(true, Ordering::Relaxed);
        if after.is_err() {
            stop.store(true, Ordering::Relaxed);
        }
        let (upload, upload_status) = match upload.join() {
            Ok(r) => (seen(&r), r.ok().map(|r| r.status)),
            Err(_) => ("the uploader panicked".to_string(), None),
        };
        let polls = poller.join().unwrap_or_default();
        Ok(Killed {
            boots_before,
            after: after?,
            outage,
            upload,
            upload_status,
            polls,
        })
    })
}
