//! A cooperative executor: services and M3-IPC waits are async tasks, all polled once per
//! turn of the main loop (the loop halts the CPU when no task, device or timer has work).

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::cell::Cell;
use core::future::Future;
use core::pin::Pin;
use core::task::{Context, Poll, Waker};

type Task = Pin<Box<dyn Future<Output = ()>>>;

/// The task list.
#[derive(Default)]
pub struct Executor {
    tasks: Vec<Task>,
}

struct Shared {
    progress: Cell<bool>,
    wake_at: Cell<u64>,
}

// SAFETY: the kernel has one CPU and no preemption; these cells are never shared across threads.
unsafe impl Sync for Shared {}

static SHARED: Shared = Shared {
    progress: Cell::new(false),
    wake_at: Cell::new(u64::MAX),
};

/// Tells the main loop that a task made progress (so it polls again instead of halting).
pub fn progress() {
    SHARED.progress.set(true);
}

/// Tells the main loop that a task wants to run again at `us` (kernel clock) at the latest.
pub fn wake_at(us: u64) {
    if us < SHARED.wake_at.get() {
        SHARED.wake_at.set(us);
    }
}

impl Executor {
    /// Adds a task.
    pub fn spawn(&mut self, f: impl Future<Output = ()> + 'static) {
        self.tasks.push(Box::pin(f));
    }

    /// Polls every task, again while they make progress (at most `ROUNDS` times, so that
    /// devices are not starved); returns (whether any made progress, earliest wake-up wanted).
    pub fn run_once(&mut self) -> (bool, u64) {
        const ROUNDS: usize = 32;
        SHARED.wake_at.set(u64::MAX);
        let mut cx = Context::from_waker(Waker::noop());
        let mut any = false;
        for _ in 0..ROUNDS {
            SHARED.progress.set(false);
            self.tasks
                .retain_mut(|t| t.as_mut().poll(&mut cx).is_pending());
            if !SHARED.progress.get() {
                break;
            }
            any = true;
        }
        (any, SHARED.wake_at.get())
    }

    /// Number of live tasks.
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    /// Whether no task is left.
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }
}

/// Yields to the other tasks once.
pub fn yield_now() -> impl Future<Output = ()> {
    let mut yielded = false;
    core::future::poll_fn(move |_| {
        if yielded {
            Poll::Ready(())
        } else {
            yielded = true;
            Poll::Pending
        }
    })
}

/// Sleeps until the kernel clock reaches `until_us`.
pub fn sleep_until(until_us: u64) -> impl Future<Output = ()> {
    core::future::poll_fn(move |_| {
        if crate::arch::time::now_us() >= until_us {
            Poll::Ready(())
        } else {
            wake_at(until_us);
            Poll::Pending
        }
    })
}
