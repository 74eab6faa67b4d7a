//! Synchronous code that waits for asynchronous I/O: a job runs on a stack of its own
//! (a stackful coroutine), and each time it needs I/O it switches back to the async task that
//! started it, which awaits the I/O (every other task, the NICs and the engine keep running,
//! including a disk server in the same instance) and then switches back into the job.
//!
//! The file server uses it: `dvs-fs` has a synchronous API over a synchronous `BlockDevice`,
//! while M3-IPC calls are futures. Polling the engine from inside the device call instead would
//! stall every other task for the length of each disk round trip, and could never complete a
//! call to a disk server in the same instance (its task would not run).
//!
//! The switch saves the callee-saved registers of the System V ABI (`rbx`, `rbp`, `r12`–`r15`)
//! and the stack pointer; the target has no SSE state to keep (`x86_64-unknown-none` is
//! soft-float) and ring 3 runs with interrupts off, so nothing else can observe the switch. The
//! lowest bytes of the job stack carry a canary that is checked after every switch back: an
//! overflow stops the kernel with a clear message rather than corrupting the heap silently.

use alloc::boxed::Box;
use alloc::rc::Rc;
use alloc::vec;
use core::arch::global_asm;
use core::cell::Cell;

// dvs_stack_switch(save: *mut usize, to: usize): pushes the callee-saved registers, stores the
// stack pointer at *save, loads `to` and pops the registers saved there.
// dvs_stack_start: the first "return address" of a fresh stack: calls r13(r12), never returns.
global_asm!(
    ".global dvs_stack_switch",
    "dvs_stack_switch:",
    "push rbp",
    "push rbx",
    "push r12",
    "push r13",
    "push r14",
    "push r15",
    "mov [rdi], rsp",
    "mov rsp, rsi",
    "pop r15",
    "pop r14",
    "pop r13",
    "pop r12",
    "pop rbx",
    "pop rbp",
    "ret",
    ".global dvs_stack_start",
    "dvs_stack_start:",
    "mov rdi, r12",
    "call r13",
    "ud2",
);

extern "C" {
    fn dvs_stack_switch(save: *mut usize, to: usize);
    fn dvs_stack_start();
}

/// Words at the bottom of the job stack that must keep [`CANARY`].
const CANARY_WORDS: usize = 64;
const CANARY: u64 = 0xdead_57ac_c0de_f00d;

/// The state shared by the async side and the job stack.
struct Inner {
    /// The job stack (u64 words, so its ends are 8-byte aligned): a raw allocation, since it
    /// is written through the stack pointer behind the compiler's back.
    stack: *mut u64,
    /// Its length in words.
    words: usize,
    /// The job's saved stack pointer while it is suspended.
    job_sp: Cell<usize>,
    /// The async side's saved stack pointer while the job runs.
    caller_sp: Cell<usize>,
    /// The job being run (a type-erased `FnMut` that lives in the caller's future).
    job: Cell<Option<*mut (dyn FnMut() + 'static)>>,
    /// True while execution is on the job stack.
    on_stack: Cell<bool>,
    /// True once the current job has returned.
    finished: Cell<bool>,
    /// A job was abandoned half-way (its future dropped): the stack is never entered again.
    poisoned: Cell<bool>,
}

/// A job stack and the means to run synchronous jobs on it; see the module documentation.
pub struct Blocking {
    inner: Rc<Inner>,
}

/// Lets code running on the job stack give control back to the async side.
#[derive(Clone)]
pub struct Suspender {
    inner: Rc<Inner>,
}

extern "C" fn job_entry(inner: *const Inner) -> ! {
    // SAFETY: `inner` points into the Rc the Blocking holds for as long as this stack exists;
    // only shared references are made (every field is a Cell).
    let inner = unsafe { &*inner };
    loop {
        if let Some(job) = inner.job.get() {
            // SAFETY: `run` keeps the closure alive and unmoved until `finished` is seen.
            unsafe { (*job)() };
        }
        inner.job.set(None);
        inner.finished.set(true);
        inner.on_stack.set(false);
        // SAFETY: back to the async side, whose stack pointer `enter` saved.
        unsafe { dvs_stack_switch(inner.job_sp.as_ptr(), inner.caller_sp.get()) };
    }
}

impl Blocking {
    /// A job stack of `bytes` bytes (rounded up to 16).
    pub fn new(bytes: usize) -> Blocking {
        let words = bytes.div_ceil(16) * 2 + CANARY_WORDS;
        let mut stack = vec![0u64; words];
        for w in &mut stack[..CANARY_WORDS] {
            *w = CANARY;
        }
        let stack = Box::into_raw(stack.into_boxed_slice()) as *mut u64;
        let inner = Rc::new(Inner {
            stack,
            words,
            job_sp: Cell::new(0),
            caller_sp: Cell::new(0),
            job: Cell::new(None),
            on_stack: Cell::new(false),
            finished: Cell::new(false),
            poisoned: Cell::new(false),
        });
        // The first frame: six zero registers to pop (r13 = job_entry, r12 = inner), then
        // dvs_stack_start as the return address. After that `ret` the stack pointer must be
        // 16-byte aligned, so that `call r13` enters job_entry as the ABI wants.
        let base = inner.stack as usize;
        let top = (base + words * 8) & !15;
        let sp = top - 16 - 7 * 8;
        let frame: [usize; 7] = [
            0,                                     // r15
            0,                                     // r14
            job_entry as *const () as usize,       // r13
            Rc::as_ptr(&inner) as usize,           // r12
            0,                                     // rbx
            0,                                     // rbp
            dvs_stack_start as *const () as usize, // return address
        ];
        for (i, v) in frame.iter().enumerate() {
            // SAFETY: sp..sp+56 lies inside the stack allocation (top - 72 ≥ base + canary).
            unsafe { ((sp + i * 8) as *mut usize).write(*v) };
        }
        inner.job_sp.set(sp);
        Blocking { inner }
    }

    /// The handle the job's code uses to wait.
    pub fn suspender(&self) -> Suspender {
        Suspender {
            inner: self.inner.clone(),
        }
    }

    /// Whether the stack was abandoned and can run nothing more.
    pub fn is_poisoned(&self) -> bool {
        self.inner.poisoned.get()
    }

    /// Switches onto the job stack until the job suspends or finishes.
    fn enter(&self) {
        let inner = &*self.inner;
        inner.on_stack.set(true);
        // SAFETY: job_sp is the stack pointer saved by the job's last switch out (or the
        // prepared first frame); the job switches back to caller_sp.
        unsafe { dvs_stack_switch(inner.caller_sp.as_ptr(), inner.job_sp.get()) };
        // SAFETY: the canary words are the first CANARY_WORDS of the live allocation.
        let intact =
            (0..CANARY_WORDS).all(|i| unsafe { inner.stack.add(i).read_volatile() } == CANARY);
        if !intact {
            panic!("the fs job stack overflowed its {} bytes", inner.words * 8);
        }
    }

    /// Runs `job` on the job stack. Whenever it suspends (through a [`Suspender`]), `io` is
    /// awaited — it does what the job asked for and leaves the answer where the job will find
    /// it — and the job resumes. `None` if the stack is poisoned (an earlier call's future was
    /// dropped half-way).
    pub async fn run<R, F, Fut>(&self, job: impl FnOnce() -> R, mut io: F) -> Option<R>
    where
        F: FnMut() -> Fut,
        Fut: core::future::Future<Output = ()>,
    {
        if self.is_poisoned() || self.inner.job.get().is_some() {
            return None;
        }
        let mut slot: Option<R> = None;
        let mut job = Some(job);
        let mut call = || {
            if let Some(j) = job.take() {
                slot = Some(j());
            }
        };
        let erased: *mut (dyn FnMut() + '_) = &mut call;
        // SAFETY: only the lifetime is erased. The closure stays where it is (this future is
        // pinned while polled) and alive until `finished`; if the future is dropped before, the
        // guard poisons the stack so the pointer is never used again.
        let erased: *mut (dyn FnMut() + 'static) = unsafe { core::mem::transmute(erased) };
        let guard = Guard(&self.inner);
        self.inner.finished.set(false);
        self.inner.job.set(Some(erased));
        self.enter();
        while !self.inner.finished.get() {
            io().await;
            self.enter();
        }
        core::mem::forget(guard);
        slot
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // A stack abandoned in the middle of a job may hold frames that point anywhere: it is
        // leaked, never freed. Otherwise it is given back.
        if self.poisoned.get() || self.job.get().is_some() {
            return;
        }
        let slice = core::ptr::slice_from_raw_parts_mut(self.stack, self.words);
        // SAFETY: made by Box::into_raw of a boxed slice of `words` words, freed once, here.
        drop(unsafe { Box::from_raw(slice) });
    }
}

/// Poisons the stack if a `run` future is dropped before its job finished.
struct Guard<'a>(&'a Rc<Inner>);

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        self.0.poisoned.set(true);
    }
}

impl Suspender {
    /// Gives control back to the async side, which resumes this code once it has done the I/O
    /// the caller asked for. False (and nothing happens) if not called on the job stack.
    pub fn suspend(&self) -> bool {
        let inner = &*self.inner;
        if !inner.on_stack.get() {
            return false;
        }
        inner.on_stack.set(false);
        // SAFETY: on the job stack; caller_sp is the async side's, saved by `enter`.
        unsafe { dvs_stack_switch(inner.job_sp.as_ptr(), inner.caller_sp.get()) };
        inner.on_stack.set(true);
        true
    }
}
