//! A tiny ordered check runner for `harness = false` test targets whose checks share one expensive fixture
//! and must run in order (a cluster: the later checks kill nodes the earlier ones used). It prints what
//! libtest prints: `test NAME ... ok <1.234s>` / `test NAME ... FAILED <1.234s>` (the time as with libtest's
//! `--report-time`), a `failures:` list with each message, and
//! `test result: ok. N passed; M failed; 0 ignored; 0 measured; 0 filtered out; finished in Xs`. Set-up
//! steps print `-- step 'WHAT' <1.234s>`, so a slow run shows where its time went.
//!
//! A check that fails (or panics) is counted and the run goes on. A *step* (set-up between checks: start an
//! instance, wait for it) that fails stops the run: every later check is reported FAILED with "not run:
//! step ... failed", because it would only test the wreck of the first failure.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::process::ExitCode;
use std::time::Instant;

/// The runner: call [`Runner::check`] and [`Runner::step`] in order, then [`Runner::finish`].
#[derive(Debug)]
pub struct Runner {
    started: Instant,
    passed: usize,
    failures: Vec<(String, String)>,
    aborted: Option<String>,
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "panicked".to_string()
    }
}

impl Runner {
    /// A runner for `planned` checks (printed as `running N tests`, as libtest does).
    pub fn new(planned: usize) -> Runner {
        println!("\nrunning {planned} tests");
        Runner {
            started: Instant::now(),
            passed: 0,
            failures: Vec::new(),
            aborted: None,
        }
    }

    /// Runs one named check: `Ok` passes, `Err(message)` or a panic fails it with that message.
    pub fn check(&mut self, name: &str, f: impl FnOnce() -> Result<(), String>) {
        let t0 = Instant::now();
        let result = match &self.aborted {
            Some(why) => Err(format!("not run: {why}")),
            None => catch_unwind(AssertUnwindSafe(f))
                .unwrap_or_else(|p| Err(format!("panicked: {}", panic_message(&*p)))),
        };
        match result {
            Ok(()) => {
                println!("test {name} ... ok <{:.3}s>", t0.elapsed().as_secs_f64());
                self.passed += 1;
            }
            Err(msg) => {
                println!(
                    "test {name} ... FAILED <{:.3}s>",
                    t0.elapsed().as_secs_f64()
                );
                for line in msg.lines() {
                    println!("    {line}");
                }
                self.failures.push((name.to_string(), msg));
            }
        }
    }

    /// Runs a set-up step. On failure (or panic) the run is aborted: it returns None now, and every later
    /// step returns None and every later check fails as not run.
    pub fn step<T>(&mut self, what: &str, f: impl FnOnce() -> Result<T, String>) -> Option<T> {
        if self.aborted.is_some() {
            return None;
        }
        let t0 = Instant::now();
        let r = catch_unwind(AssertUnwindSafe(f))
            .unwrap_or_else(|p| Err(format!("panicked: {}", panic_message(&*p))));
        match r {
            Ok(v) => {
                println!("-- step '{what}' <{:.3}s>", t0.elapsed().as_secs_f64());
                Some(v)
            }
            Err(msg) => {
                println!("step '{what}' FAILED: {msg}");
                self.aborted = Some(format!("step '{what}' failed: {msg}"));
                None
            }
        }
    }

    /// True once a step failed.
    pub fn aborted(&self) -> bool {
        self.aborted.is_some()
    }

    /// Checks that failed so far.
    pub fn failed(&self) -> usize {
        self.failures.len()
    }

    /// Prints the failures and the result line; the exit code is non-zero when anything failed.
    pub fn finish(self) -> ExitCode {
        let secs = self.started.elapsed().as_secs_f64();
        if !self.failures.is_empty() {
            println!("\nfailures:\n");
            for (name, msg) in &self.failures {
                println!("---- {name} ----\n{msg}\n");
            }
            println!("failures:");
            for (name, _) in &self.failures {
                println!("    {name}");
            }
        }
        let ok = self.failures.is_empty();
        println!(
            "\ntest result: {}. {} passed; {} failed; 0 ignored; 0 measured; 0 filtered out; finished in {secs:.2}s\n",
            if ok { "ok" } else { "FAILED" },
            self.passed,
            self.failures.len()
        );
        if ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_passes_failures_and_panics() {
        let mut r = Runner::new(3);
        r.check("a", || Ok(()));
        r.check("b", || Err("expected 1, got 2".into()));
        r.check("c", || panic!("boom"));
        assert_eq!(r.passed, 1);
        assert_eq!(r.failed(), 2);
        assert!(r.failures[1].1.contains("boom"));
    }

    #[test]
    fn a_failed_step_fails_what_follows() {
        let mut r = Runner::new(2);
        assert_eq!(r.step("ok step", || Ok(5)), Some(5));
        assert_eq!(r.step::<()>("bad step", || Err("no".into())), None);
        assert!(r.aborted());
        let mut ran = false;
        r.check("later", || {
            ran = true;
            Ok(())
        });
        assert!(!ran);
        assert_eq!(r.failed(), 1);
        assert!(r.failures[0].1.contains("bad step"));
    }
}
