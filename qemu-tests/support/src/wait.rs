//! Waiting on events with deadlines, never with a fixed sleep: [`eventually`] re-checks a condition with a
//! bounded backoff (for proxy state that has no change feed: peer links, the directory, counters) until it
//! holds or the deadline passes; the error says what was waited for and what was seen last.

use std::fmt;
use std::time::{Duration, Instant};

/// A point in time by which something must have happened, with the budget it was made from (for messages).
#[derive(Clone, Copy, Debug)]
pub struct Deadline {
    at: Instant,
    budget: Duration,
}

impl Deadline {
    /// `budget` from now.
    pub fn after(budget: Duration) -> Deadline {
        Deadline {
            at: Instant::now() + budget,
            budget,
        }
    }

    /// Time left (zero once passed).
    pub fn remaining(&self) -> Duration {
        self.at.saturating_duration_since(Instant::now())
    }

    /// True once the deadline has passed.
    pub fn passed(&self) -> bool {
        Instant::now() >= self.at
    }

    /// The budget the deadline was made with.
    pub fn budget(&self) -> Duration {
        self.budget
    }
}

/// A wait that did not end as hoped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaitError {
    /// What was waited for.
    pub what: String,
    /// How long.
    pub waited: Duration,
    /// The last thing seen instead.
    pub last: String,
}

impl fmt::Display for WaitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "timed out after {:.1} s waiting for {}; last seen: {}",
            self.waited.as_secs_f64(),
            self.what,
            self.last
        )
    }
}

impl std::error::Error for WaitError {}

/// The first and the largest pause between two checks of [`eventually`].
pub const BACKOFF: (Duration, Duration) = (Duration::from_millis(5), Duration::from_millis(200));

/// Checks `check` until it returns `Ok(value)`; `Err(seen)` means "not yet, this is what I saw". Pauses
/// between checks start at 5 ms and double up to 200 ms, and never run past `deadline`. At the deadline the
/// error names `what` and the last `seen`.
pub fn eventually<T>(
    deadline: Deadline,
    what: &str,
    mut check: impl FnMut() -> Result<T, String>,
) -> Result<T, WaitError> {
    let started = Instant::now();
    let mut pause = BACKOFF.0;
    loop {
        let last = match check() {
            Ok(v) => return Ok(v),
            Err(seen) => seen,
        };
        let left = deadline.remaining();
        if left.is_zero() {
            return Err(WaitError {
                what: what.to_string(),
                waited: started.elapsed(),
                last,
            });
        }
        std::thread::sleep(pause.min(left));
        pause = (pause * 2).min(BACKOFF.1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_as_soon_as_the_check_holds() {
        let mut n = 0;
        let t = Instant::now();
        let v = eventually(Deadline::after(Duration::from_secs(5)), "n = 3", || {
            n += 1;
            if n == 3 {
                Ok(n)
            } else {
                Err(format!("n = {n}"))
            }
        });
        assert_eq!(v, Ok(3));
        assert!(t.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn says_what_it_waited_for_and_what_it_saw() {
        let e = eventually(
            Deadline::after(Duration::from_millis(50)),
            "the sky to fall",
            || Err::<(), _>("blue sky".to_string()),
        )
        .unwrap_err();
        assert_eq!(e.what, "the sky to fall");
        assert_eq!(e.last, "blue sky");
        assert!(e.waited >= Duration::from_millis(50));
        let msg = e.to_string();
        assert!(
            msg.contains("the sky to fall") && msg.contains("blue sky"),
            "{msg}"
        );
    }
}
