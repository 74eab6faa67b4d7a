//! The handle of one running machine, whatever backend started it: its exit, its control channel
//! (typed records, never console text) and its human console.
//!
//! The machine is watched by small background threads (one reaps the process, one accepts and
//! reads the control connection, two read a captured console), so a [`Machine`] does not belong to
//! any async runtime. Its `async` methods need a tokio runtime with the time driver (any flavour);
//! sync code can run them with [`Machine::block_on`].

use std::fmt;
use std::future::Future;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::confine::Cgroup;
use dvs_vos_abi::control::RecordError;
use dvs_vos_abi::{ControlRecord, Ready, RecordReader};
use tokio::sync::{mpsc, watch};

/// How a machine ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Exit {
    /// It exited with this status (QEMU: the guest's `isa-debug-exit` code `c` gives `2c+1`).
    Code(i32),
    /// It was killed by this signal.
    Signal(i32),
    /// The kernel killed it for its cgroup's memory limit ([`crate::Limits::memory_mib`]).
    MemoryLimit {
        /// The limit, MiB.
        limit_mib: u64,
    },
    /// It could not be waited for.
    Error(String),
}

impl Exit {
    /// True for exit status 0.
    pub fn success(&self) -> bool {
        matches!(self, Exit::Code(0))
    }

    fn of(status: std::io::Result<std::process::ExitStatus>) -> Exit {
        match status {
            Ok(s) => match (s.code(), s.signal()) {
                (Some(c), _) => Exit::Code(c),
                (None, Some(sig)) => Exit::Signal(sig),
                (None, None) => Exit::Error(format!("unknown wait status {s}")),
            },
            Err(e) => Exit::Error(format!("waiting for the machine: {e}")),
        }
    }
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exit::Code(c) => write!(f, "exited with status {c}"),
            Exit::Signal(s) => {
                let name = match *s {
                    libc::SIGKILL => " (SIGKILL)",
                    libc::SIGTERM => " (SIGTERM)",
                    libc::SIGSEGV => " (SIGSEGV)",
                    libc::SIGABRT => " (SIGABRT)",
                    libc::SIGINT => " (SIGINT)",
                    _ => "",
                };
                write!(f, "killed by signal {s}{name}")
            }
            Exit::MemoryLimit { limit_mib } => {
                write!(f, "killed by its memory limit ({limit_mib} MiB)")
            }
            Exit::Error(e) => f.write_str(e),
        }
    }
}

/// Why a machine did not become ready.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReadyError {
    /// The machine ended before it sent a Ready record.
    #[error("the machine {0} before it was ready")]
    Exited(Exit),
    /// The guest sent a Fatal record.
    #[error("the guest failed: {0}")]
    Fatal(String),
    /// The control channel closed (or there is none) while the machine still runs.
    #[error("the control channel closed before a Ready record")]
    ChannelClosed,
    /// No Ready record within the time given.
    #[error("no Ready record within {0:?}")]
    Timeout(Duration),
}

/// One thing that happened to a machine, in order: records first, the exit last.
// A record (Counters above all) is a few hundred bytes and an exit a few words; events are a
// handful per second, moved once each: boxing the record would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MachineEvent {
    /// A record (or a frame that did not decode) from the control channel.
    Record(Result<ControlRecord, RecordError>),
    /// The machine ended (and its control channel is drained). Repeats on every later call.
    Exited(Exit),
}

/// A cloneable view of a machine's exit, to wait on it while the [`Machine`] is borrowed elsewhere.
#[derive(Clone, Debug)]
pub struct ExitWatch(watch::Receiver<Option<Exit>>);

impl ExitWatch {
    /// Waits until the machine has ended (cancel-safe).
    pub async fn wait(&mut self) -> Exit {
        match self.0.wait_for(Option::is_some).await {
            Ok(v) => v
                .clone()
                .unwrap_or_else(|| Exit::Error("no exit status".into())),
            Err(_) => Exit::Error("the machine's waiter thread is gone".into()),
        }
    }

    /// The exit, if the machine has ended.
    pub fn get(&self) -> Option<Exit> {
        self.0.borrow().clone()
    }
}

/// How the console of a machine being adopted is wired.
pub(crate) enum ConsoleSetup {
    /// Stdout and stderr come through `pipe`, copied into the log at `path` ([`crate::console_log`]).
    File {
        /// The log.
        path: PathBuf,
        /// The read end of the machine's stdout and stderr.
        pipe: std::io::PipeReader,
    },
    /// Stdout and stderr are pipes; stderr lines get the prefix.
    Capture { stderr_prefix: &'static str },
}

struct Lines {
    lines: Mutex<Vec<String>>,
    count: watch::Sender<usize>,
}

impl Lines {
    fn get(&self) -> std::sync::MutexGuard<'_, Vec<String>> {
        self.lines.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// How long the records of an ended machine are still awaited.
const DRAIN: Duration = Duration::from_secs(2);

/// Records kept for [`Machine::seen`].
const SEEN_MAX: usize = 1024;

/// A running (or ended) machine. Dropping it kills its process group and reaps it.
pub struct Machine {
    pid: Option<u32>,
    exit_rx: watch::Receiver<Option<Exit>>,
    records: mpsc::UnboundedReceiver<Result<ControlRecord, RecordError>>,
    records_closed: bool,
    seen: Vec<ControlRecord>,
    console: Option<Arc<Lines>>,
    console_path: Option<PathBuf>,
    control: Option<(PathBuf, (u64, u64))>,
    /// The write end of a confined machine's watcher pipe: when it closes (this process ends),
    /// the watcher kills the machine.
    _lifeline: Option<std::os::fd::OwnedFd>,
    started: Instant,
    waiter: Option<JoinHandle<()>>,
}

fn thread(name: &str, f: impl FnOnce() + Send + 'static) -> Option<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(name.into())
        .stack_size(256 * 1024)
        .spawn(f)
        .map_err(|e| eprintln!("dvs-instance: cannot start thread {name}: {e}"))
        .ok()
}

fn read_lines(stream: impl Read + Send + 'static, lines: Arc<Lines>, prefix: &'static str) {
    thread("dvs-console", move || {
        let mut r = BufReader::new(stream);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match r.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            let text = String::from_utf8_lossy(&buf);
            let line = format!("{prefix}{}", text.trim_end_matches(['\n', '\r']));
            let n = {
                let mut g = lines.get();
                g.push(line);
                g.len()
            };
            lines.count.send_replace(n);
        }
    });
}

fn read_control(
    listener: UnixListener,
    tx: mpsc::UnboundedSender<Result<ControlRecord, RecordError>>,
) {
    thread("dvs-control", move || {
        // One connection: the machine's (or the waiter's wake-up after the machine ended, which
        // carries nothing).
        let Ok((mut conn, _)) = listener.accept() else {
            return;
        };
        drop(listener);
        let mut reader = RecordReader::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = match conn.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            for rec in reader.feed(&buf[..n]) {
                if tx.send(rec).is_err() {
                    return; // the Machine is gone
                }
            }
        }
    });
}

fn kill_group(pid: u32, sig: i32) {
    if let Ok(p) = i32::try_from(pid) {
        // SAFETY: kill(2) on the process group the child created with setpgid(0, 0).
        unsafe { libc::kill(-p, sig) };
    }
}

fn kill_one(pid: u32, sig: i32) {
    if let Ok(p) = i32::try_from(pid) {
        // SAFETY: kill(2) on the child, which is not reaped yet (the caller checked).
        unsafe { libc::kill(p, sig) };
    }
}

fn inode(path: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

impl Machine {
    /// Takes over a spawned child: reaps it in the background, reads its control connection and
    /// its captured console.
    pub(crate) fn adopt(
        mut child: Child,
        console: ConsoleSetup,
        listener: Option<(UnixListener, PathBuf)>,
        cgroup: Option<Arc<Cgroup>>,
        lifeline: Option<std::os::fd::OwnedFd>,
    ) -> Machine {
        let pid = child.id();
        let (exit_tx, exit_rx) = watch::channel(None);
        let (rec_tx, records) = mpsc::unbounded_channel();
        let mut copied = None;
        let (lines, console_path) = match console {
            ConsoleSetup::File { path, pipe } => {
                let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
                let to = path.clone();
                thread("dvs-console-log", move || {
                    crate::console_log::copy(pipe, to);
                    let _ = done_tx.send(());
                });
                copied = Some(done_rx);
                (None, Some(path))
            }
            ConsoleSetup::Capture { stderr_prefix } => {
                let lines = Arc::new(Lines {
                    lines: Mutex::new(Vec::new()),
                    count: watch::channel(0).0,
                });
                if let Some(out) = child.stdout.take() {
                    read_lines(out, lines.clone(), "");
                }
                if let Some(err) = child.stderr.take() {
                    read_lines(err, lines.clone(), stderr_prefix);
                }
                (Some(lines), None)
            }
        };
        let control = listener.map(|(l, path)| {
            let id = inode(&path).unwrap_or_default();
            read_control(l, rec_tx);
            (path, id)
        });
        let wake = control.as_ref().map(|(p, _)| p.clone());
        let waiter = thread("dvs-waiter", move || {
            let mut exit = Exit::of(child.wait());
            // Whatever the machine left in its process group goes with it.
            kill_group(pid, libc::SIGKILL);
            if let Some(done) = copied {
                // What the machine wrote last is in its log before its end is reported (bounded: a process
                // outside its group may still hold the pipe).
                let _ = done.recv_timeout(std::time::Duration::from_secs(2));
            }
            if let Some(cg) = cgroup {
                if exit == Exit::Signal(libc::SIGKILL) && cg.oom_kills() > 0 {
                    exit = Exit::MemoryLimit {
                        limit_mib: cg.limits().memory_mib,
                    };
                }
                cg.remove();
            }
            if let Some(p) = wake {
                // Wakes the control thread if the machine never connected.
                let _ = UnixStream::connect(p);
            }
            exit_tx.send_replace(Some(exit));
        });
        if waiter.is_none() {
            kill_group(pid, libc::SIGKILL);
        }
        Machine {
            pid: Some(pid),
            exit_rx,
            records,
            records_closed: false,
            seen: Vec::new(),
            console: lines,
            console_path,
            control,
            _lifeline: lifeline,
            started: Instant::now(),
            waiter,
        }
    }

    /// Runs `fut` to completion on a current-thread tokio runtime of this thread (made on first
    /// use): for sync tests and tools. Must not be called from inside a tokio runtime. A future
    /// that needs the runtime when it is made (`tokio::time::timeout(..)`) must be made inside it:
    /// pass `async { tokio::time::timeout(..).await }`, not the `timeout(..)` itself.
    pub fn block_on<F: Future>(fut: F) -> F::Output {
        thread_local! {
            static RT: Option<tokio::runtime::Runtime> = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| eprintln!("dvs-instance: cannot build a tokio runtime: {e}"))
                .ok();
        }
        RT.with(|rt| match rt {
            Some(rt) => rt.block_on(fut),
            None => panic!("dvs-instance: no tokio runtime for Machine::block_on"),
        })
    }

    /// The process id of the machine's process (None for backends without one).
    pub fn pid(&self) -> Option<u32> {
        self.pid
    }

    /// When the machine was started.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// The console file, when the console goes to one.
    pub fn console_path(&self) -> Option<&Path> {
        self.console_path.as_deref()
    }

    /// The control socket path the host listens on, if there is a control channel.
    pub fn control_path(&self) -> Option<&Path> {
        self.control.as_ref().map(|(p, _)| p.as_path())
    }

    /// A handle to wait on the machine's exit while the machine is borrowed elsewhere.
    pub fn exit_watch(&self) -> ExitWatch {
        ExitWatch(self.exit_rx.clone())
    }

    /// Waits until the machine has ended (cancel-safe).
    pub async fn wait(&mut self) -> Exit {
        ExitWatch(self.exit_rx.clone()).wait().await
    }

    /// The exit, if the machine has ended.
    pub fn try_wait(&self) -> Option<Exit> {
        self.exit_rx.borrow().clone()
    }

    /// Stops the machine: SIGTERM, up to `grace` to end, then SIGKILL to its process group. Returns
    /// how it ended (at once if it already had).
    pub async fn stop(&mut self, grace: Duration) -> Exit {
        if let Some(e) = self.try_wait() {
            return e;
        }
        if let Some(pid) = self.pid {
            kill_one(pid, libc::SIGTERM);
        }
        match tokio::time::timeout(grace, self.wait()).await {
            Ok(e) => e,
            Err(_) => {
                self.kill();
                self.wait().await
            }
        }
    }

    /// Sends SIGKILL to the machine's process group (if it still runs); [`Machine::wait`] tells
    /// when it is gone.
    pub fn kill(&self) {
        if let (Some(pid), None) = (self.pid, self.try_wait()) {
            kill_group(pid, libc::SIGKILL);
            kill_one(pid, libc::SIGKILL);
        }
    }

    fn remember(&mut self, rec: &ControlRecord) {
        if self.seen.len() >= SEEN_MAX {
            self.seen.drain(..SEEN_MAX / 2);
        }
        self.seen.push(rec.clone());
    }

    /// The next record from the control channel (or a frame that did not decode); None once the
    /// channel is closed (or when there is none). Cancel-safe.
    pub async fn next_record(&mut self) -> Option<Result<ControlRecord, RecordError>> {
        if self.records_closed {
            return None;
        }
        let r = self.records.recv().await;
        match &r {
            Some(Ok(rec)) => self.remember(rec),
            Some(Err(_)) => {}
            None => self.records_closed = true,
        }
        r
    }

    /// A record while the channel is open (records still in flight when the machine ends are
    /// awaited for up to 2 s); None once it is closed.
    async fn step(&mut self) -> Option<Result<ControlRecord, RecordError>> {
        while !self.records_closed {
            let r = if self.try_wait().is_some() {
                tokio::time::timeout(DRAIN, self.records.recv())
                    .await
                    .unwrap_or(None)
            } else {
                tokio::select! {
                    biased;
                    r = self.records.recv() => r,
                    _ = self.exit_rx.wait_for(Option::is_some) => continue,
                }
            };
            match r {
                Some(Ok(rec)) => {
                    self.remember(&rec);
                    return Some(Ok(rec));
                }
                Some(Err(e)) => return Some(Err(e)),
                None => self.records_closed = true,
            }
        }
        None
    }

    /// The next event: a control record while the channel is open (records still in flight when
    /// the machine ends are delivered, for up to 2 s), then the exit. Cancel-safe.
    pub async fn next_event(&mut self) -> MachineEvent {
        match self.step().await {
            Some(r) => MachineEvent::Record(r),
            None => MachineEvent::Exited(self.wait().await),
        }
    }

    /// Waits for the Ready record, consuming the records before it (they stay in
    /// [`Machine::seen`]). At once if a Ready record was already seen. Frames that do not decode
    /// are skipped; a Fatal record, the machine's end or a closed channel end the wait.
    pub async fn ready(&mut self, timeout: Duration) -> Result<Ready, ReadyError> {
        if let Some(r) = self.seen.iter().rev().find_map(|r| match r {
            ControlRecord::Ready(r) => Some(r.clone()),
            _ => None,
        }) {
            return Ok(r);
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.records_closed {
                // The channel is closed: the machine ends (give it a moment to say how) or it runs
                // on without a way to tell it is ready.
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                return match tokio::time::timeout(left.min(Duration::from_millis(500)), self.wait())
                    .await
                {
                    Ok(e) => Err(ReadyError::Exited(e)),
                    Err(_) => Err(ReadyError::ChannelClosed),
                };
            }
            let ev = tokio::select! {
                ev = self.step() => ev,
                _ = tokio::time::sleep_until(deadline) => {
                    return match self.try_wait() {
                        Some(e) => Err(ReadyError::Exited(e)),
                        None => Err(ReadyError::Timeout(timeout)),
                    };
                }
            };
            match ev {
                Some(Ok(ControlRecord::Ready(r))) => return Ok(r),
                Some(Ok(ControlRecord::Fatal { reason })) => return Err(ReadyError::Fatal(reason)),
                Some(_) | None => {}
            }
        }
    }

    /// The records received so far through [`Machine::next_record`], [`Machine::next_event`] and
    /// [`Machine::ready`] (the last 512 to 1024 of them).
    pub fn seen(&self) -> &[ControlRecord] {
        &self.seen
    }

    /// The console lines so far (stderr lines prefixed by the backend, `qemu: ` for QEMU). Empty
    /// unless the console is captured.
    pub fn console_lines(&self) -> Vec<String> {
        self.console
            .as_ref()
            .map(|l| l.get().clone())
            .unwrap_or_default()
    }

    /// The number of console lines containing `pat` so far (captured consoles only).
    pub fn count_console(&self, pat: &str) -> usize {
        self.console
            .as_ref()
            .map_or(0, |l| l.get().iter().filter(|x| x.contains(pat)).count())
    }

    /// Waits for the first console line containing `pat` (captured consoles only): for boot tests
    /// of the human console, never for readiness.
    pub async fn wait_console(&self, pat: &str, timeout: Duration) -> Result<String, String> {
        self.wait_console_nth(pat, 0, timeout).await
    }

    /// Waits for the `nth` (0-based) console line containing `pat` (captured consoles only).
    pub async fn wait_console_nth(
        &self,
        pat: &str,
        nth: usize,
        timeout: Duration,
    ) -> Result<String, String> {
        let Some(lines) = &self.console else {
            return Err(format!(
                "the console is not captured (it goes to {})",
                self.console_path
                    .as_deref()
                    .map_or_else(|| "nowhere".into(), |p| p.display().to_string())
            ));
        };
        let mut count = lines.count.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            count.borrow_and_update();
            if let Some(l) = lines.get().iter().filter(|l| l.contains(pat)).nth(nth) {
                return Ok(l.clone());
            }
            let more = tokio::select! {
                r = count.changed() => r.is_ok(),
                _ = tokio::time::sleep_until(deadline) => false,
            };
            if !more {
                let status = self
                    .try_wait()
                    .map_or_else(|| "still running".into(), |e| e.to_string());
                return Err(format!(
                    "no console line with '{pat}' (#{nth}) within {timeout:?} (machine {status}); console:\n{}",
                    lines.get().join("\n")
                ));
            }
        }
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        self.kill();
        if let Some(w) = self.waiter.take() {
            let _ = w.join();
        }
        if let Some((path, id)) = &self.control {
            // Only our own socket: a later machine may have bound the same path.
            if inode(path) == Some(*id) {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

impl fmt::Debug for Machine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Machine")
            .field("pid", &self.pid)
            .field("exit", &self.try_wait())
            .field("control", &self.control_path())
            .field("console", &self.console_path)
            .finish()
    }
}
