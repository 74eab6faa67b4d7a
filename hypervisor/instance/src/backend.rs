//! Backends: how a [`VmSpec`] becomes a running [`Machine`]. [`crate::QemuBackend`] boots a real
//! VM; [`ProcessBackend`] runs a host program as the machine (test doubles named for their role).
//!
//! Every child gets its own process group and `PR_SET_PDEATHSIG(SIGKILL)`, and is killed and reaped
//! when its [`Machine`] is dropped: no machine outlives its host process. Children are forked from
//! one long-lived spawner thread, because the kernel sends the death signal when the *thread* that
//! forked the child ends, not the process.

use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};

use crate::confine::{Cgroup, ConfineError, Confinement};
use crate::machine::{ConsoleSetup, Machine};
use crate::spec::{ConsoleSink, VmSpec};
use crate::InstanceError;

/// The environment variable a [`ProcessBackend`] program finds its [`VmSpec`] in, as JSON.
pub const SPEC_ENV: &str = "DVS_VM_SPEC";

/// Starts machines.
pub trait VmBackend: Send + Sync {
    /// A short description for status output (`qemu (qemu-system-x86_64)`).
    fn describe(&self) -> String;
    /// Starts the machine of `spec`. With `spec.control` set, the control socket is listening
    /// before the machine starts.
    fn start(&self, spec: &VmSpec) -> Result<Machine, InstanceError>;
}

/// Runs a host program as the machine: for test doubles (a spoofing, flooding or garbage-sending
/// peer), never for "a VOS".
///
/// The program gets the [`VmSpec`] as JSON in [`SPEC_ENV`]; its stdout and stderr are the console;
/// it connects to `spec.control` and writes COBS-framed `ControlRecord`s like a guest; it speaks
/// Ethernet frames on the NIC sockets (e.g. through [`crate::port::StreamPort`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessBackend {
    /// The program.
    pub program: PathBuf,
    /// Its arguments (a role double's role and knobs).
    pub args: Vec<String>,
}

impl ProcessBackend {
    /// A backend running `program` without arguments.
    pub fn new(program: impl Into<PathBuf>) -> ProcessBackend {
        ProcessBackend {
            program: program.into(),
            args: Vec::new(),
        }
    }

    /// The same backend with `args` as the program's arguments.
    pub fn with_args(
        mut self,
        args: impl IntoIterator<Item = impl Into<String>>,
    ) -> ProcessBackend {
        self.args = args.into_iter().map(Into::into).collect();
        self
    }
}

impl VmBackend for ProcessBackend {
    fn describe(&self) -> String {
        format!("process ({})", self.program.display())
    }

    fn start(&self, spec: &VmSpec) -> Result<Machine, InstanceError> {
        let json = serde_json::to_string(spec).map_err(|e| InstanceError::SpecJson {
            name: spec.name.clone(),
            error: e.to_string(),
        })?;
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args).env(SPEC_ENV, json);
        spawn_machine(cmd, spec, "")
    }
}

/// Asks the kernel to SIGKILL `cmd`'s child when the thread that spawned it ends
/// (PR_SET_PDEATHSIG), and makes the child give up at once if that parent is already gone.
/// For helpers that start long-lived children outside a backend (test fixtures' daemons).
pub fn die_with_parent(cmd: &mut Command) {
    // SAFETY: the closure runs in the forked child before exec and calls only async-signal-safe
    // functions (prctl, getppid, _exit).
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            if libc::getppid() == 1 {
                libc::_exit(1); // the parent is already gone
            }
            Ok(())
        });
    }
}

/// Puts the child in its own process group and asks the kernel to SIGKILL it when its parent
/// thread ends.
fn guard(cmd: &mut Command) {
    die_with_parent(cmd);
    // SAFETY: runs in the forked child before exec; setpgid is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setpgid(0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

type SpawnJob = (Command, mpsc::Sender<std::io::Result<Child>>);

/// Forks `cmd` from the process-long spawner thread (see the module doc).
fn spawn_from_spawner(cmd: Command) -> std::io::Result<Child> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnJob>>> = OnceLock::new();
    let tx = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnJob>();
        let spawned = std::thread::Builder::new()
            .name("dvs-spawner".into())
            .stack_size(256 * 1024)
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            });
        if let Err(e) = spawned {
            eprintln!("dvs-instance: cannot start the spawner thread: {e}");
        }
        Mutex::new(tx)
    });
    let (reply_tx, reply_rx) = mpsc::channel();
    let sent = tx
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .send((cmd, reply_tx));
    if sent.is_err() {
        return Err(std::io::Error::other("the spawner thread is gone"));
    }
    reply_rx
        .recv()
        .map_err(|_| std::io::Error::other("the spawner thread is gone"))?
}

/// Starts `cmd` as the machine of `spec`: binds the control socket first, wires the console,
/// guards the child, and hands it to a [`Machine`]. `stderr_prefix` marks captured stderr lines.
pub(crate) fn spawn_machine(
    mut cmd: Command,
    spec: &VmSpec,
    stderr_prefix: &'static str,
) -> Result<Machine, InstanceError> {
    let listener = match &spec.control {
        Some(path) => {
            match std::fs::remove_file(path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(InstanceError::Control {
                        path: path.clone(),
                        error: e,
                    })
                }
            }
            let l = UnixListener::bind(path).map_err(|e| InstanceError::Control {
                path: path.clone(),
                error: e,
            })?;
            Some((l, path.clone()))
        }
        None => None,
    };
    cmd.stdin(Stdio::null());
    let console = match &spec.console {
        ConsoleSink::File(path) => {
            // One pipe for stdout and stderr, copied into the file by this process (console_log.rs): the
            // machine never holds the file, and the log stays bounded and timed.
            let err = |e| InstanceError::Console {
                path: path.clone(),
                error: e,
            };
            let (pipe, writer) = std::io::pipe().map_err(err)?;
            cmd.stdout(writer.try_clone().map_err(err)?).stderr(writer);
            ConsoleSetup::File {
                path: path.clone(),
                pipe,
            }
        }
        ConsoleSink::Capture => {
            cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
            ConsoleSetup::Capture { stderr_prefix }
        }
    };
    let cgroup = match &spec.confine {
        Some(c) => Some(confine(&mut cmd, spec, c)?),
        None => None,
    };
    // After the cgroup join: a change of credentials would clear the death signal.
    guard(&mut cmd);
    // A confined QEMU drops to its uid once started, and that clears its death signal: a watcher
    // kills it when this process goes away instead.
    let lifeline = match &cgroup {
        Some(cg) => Some(watch_parent(&mut cmd).map_err(|e| {
            cg.remove();
            InstanceError::Spawn {
                name: spec.name.clone(),
                program: PathBuf::from(cmd.get_program()),
                error: e,
            }
        })?),
        None => None,
    };
    let program = PathBuf::from(cmd.get_program());
    let child = spawn_from_spawner(cmd).map_err(|e| {
        if let Some(cg) = &cgroup {
            cg.remove();
        }
        InstanceError::Spawn {
            name: spec.name.clone(),
            program,
            error: e,
        }
    })?;
    Ok(Machine::adopt(child, console, listener, cgroup, lifeline))
}

/// Has `cmd`'s child fork, just before it execs, a watcher that stays root and keeps the read end
/// of a pipe whose write end only this process holds (returned): when this process ends (the
/// write end closes, however it ends), the watcher SIGKILLs the machine; when the machine ends
/// first, the watcher dies with it (its own death signal). This stands in for the machine's death
/// signal, which the kernel clears when the machine changes its credentials (QEMU's `-runas`).
fn watch_parent(cmd: &mut Command) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills the two fds on success.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both fds are fresh and owned here.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let r = read.as_raw_fd();
    // The read end is closed in this process once the child has forked (the closure's copy goes
    // with the Command).
    let read = std::sync::Arc::new(read);
    // SAFETY: runs in the forked child before exec. The watcher (a fork of it that never execs)
    // makes only async-signal-safe calls: fork, prctl, getppid, getrlimit, close, read, kill, _exit.
    unsafe {
        cmd.pre_exec(move || {
            let _keep = &read;
            let machine = libc::getpid();
            match libc::fork() {
                -1 => return Err(std::io::Error::last_os_error()),
                0 => {}
                _ => return Ok(()), // the machine goes on to exec
            }
            libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            );
            if libc::getppid() != machine {
                libc::_exit(0);
            }
            // Keep only the read end: copies of other machines' write ends would keep their
            // watchers from ever seeing the end of this process.
            let mut lim = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            let top = if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
                lim.rlim_cur.min(65_536) as i32
            } else {
                1024
            };
            for fd in 0..top {
                if fd != r {
                    libc::close(fd);
                }
            }
            let mut b = [0u8; 1];
            loop {
                let n = libc::read(r, b.as_mut_ptr().cast(), 1);
                if n == 0 || (n < 0 && *libc::__errno_location() != libc::EINTR) {
                    break;
                }
            }
            if libc::getppid() == machine {
                libc::kill(machine, libc::SIGKILL);
            }
            libc::_exit(0);
        });
    }
    Ok(write)
}

/// Makes the machine's cgroup and chroot directory, and has the child join the cgroup before
/// it execs, so that everything the machine allocates is counted against its limits.
fn confine(
    cmd: &mut Command,
    spec: &VmSpec,
    c: &Confinement,
) -> Result<Arc<Cgroup>, InstanceError> {
    let err = |error| InstanceError::Confine {
        name: spec.name.clone(),
        error,
    };
    std::fs::create_dir_all(&c.root).map_err(|e| {
        err(ConfineError::Io {
            path: c.root.clone(),
            error: e,
        })
    })?;
    let cg = Arc::new(Cgroup::create(&c.cgroup, &c.limits).map_err(err)?);
    let joined = cg.clone();
    // SAFETY: runs in the forked child before exec; `join_in_child` makes only
    // async-signal-safe calls and does not allocate.
    unsafe {
        cmd.pre_exec(move || joined.join_in_child());
    }
    Ok(cg)
}
