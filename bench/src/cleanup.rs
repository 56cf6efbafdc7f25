//! Undoing what a run started (mounts, processes, the network namespace), also on
//! Ctrl-C, SIGTERM and panic, whatever phase the run is in.
//!
//! Every resource registers an undo action in one process-wide list and holds a
//! [`Guard`] whose drop runs (and unregisters) that action. Every step that starts
//! processes, mounts or the namespace runs inside [`starting`], which refuses to begin
//! once a signal arrived. A signal handler only sets a flag; a watcher thread notices it
//! and then:
//!
//! 1. sweeps once (the sweep installed with [`install`]: stop every process of the run,
//!    unmount its mounts, delete the namespace), which also cuts short a step that is
//!    still starting things (a killed `alces local up` returns at once);
//! 2. waits until no step is starting anything, and keeps any new one from beginning;
//! 3. runs every registered action, newest first;
//! 4. sweeps again (whatever a step started between 1 and 2) and exits with status 130.
//!
//! A panic hook runs the registered actions before the default hook reports the panic.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use parking_lot::Mutex;

type Action = Box<dyn FnOnce() + Send>;

struct Entry {
    id: u64,
    what: String,
    action: Action,
}

fn registry() -> &'static Mutex<Vec<Entry>> {
    static R: OnceLock<Mutex<Vec<Entry>>> = OnceLock::new();
    R.get_or_init(|| Mutex::new(Vec::new()))
}

/// Held while an undo action is taken from the registry and run, so the signal watcher
/// and the main thread never run actions at the same time and neither exits while the
/// other is half-way through one.
fn running() -> &'static Mutex<()> {
    static R: OnceLock<Mutex<()>> = OnceLock::new();
    R.get_or_init(|| Mutex::new(()))
}

/// Held by a step that starts processes, mounts or the namespace ([`starting`]), and
/// by the signal watcher from when it has swept once until the process exits.
fn starting_lock() -> &'static Mutex<()> {
    static S: OnceLock<Mutex<()>> = OnceLock::new();
    S.get_or_init(|| Mutex::new(()))
}

type Sweep = Box<dyn Fn() + Send + Sync>;

fn sweep_slot() -> &'static Mutex<Option<Sweep>> {
    static S: OnceLock<Mutex<Option<Sweep>>> = OnceLock::new();
    S.get_or_init(|| Mutex::new(None))
}

fn sweep() {
    if let Some(s) = sweep_slot().lock().as_ref() {
        s();
    }
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);
static SIGNALLED: AtomicBool = AtomicBool::new(false);

/// Runs its undo action when dropped (or earlier, with [`Guard::run`]).
#[must_use = "dropping the guard undoes the resource at once"]
pub struct Guard {
    id: u64,
}

impl Guard {
    /// Registers `action` (described by `what` in logs) to undo a resource.
    pub fn new(what: impl Into<String>, action: impl FnOnce() + Send + 'static) -> Guard {
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        registry().lock().push(Entry {
            id,
            what: what.into(),
            action: Box::new(action),
        });
        Guard { id }
    }

    /// Runs the undo action now.
    pub fn run(self) {
        drop(self);
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let _running = running().lock();
        let entry = {
            let mut r = registry().lock();
            r.iter().position(|e| e.id == self.id).map(|i| r.remove(i))
        };
        if let Some(e) = entry {
            (e.action)();
        }
    }
}

/// Runs every registered undo action, newest first; returns once none is left and none
/// is running.
pub fn run_all() {
    loop {
        let _running = running().lock();
        let entry = registry().lock().pop();
        match entry {
            Some(e) => {
                eprintln!("alces-bench: cleaning up {}", e.what);
                (e.action)();
            }
            None => break,
        }
    }
}

/// Runs `step`, which starts processes, mounts or the namespace (and registers their
/// [`Guard`]s), unless a signal already arrived; the signal watcher waits for a step
/// under way to end before it cleans up, so nothing a step starts is missed.
pub fn starting<T>(what: &str, step: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
    let _starting = starting_lock().lock();
    if interrupted() {
        anyhow::bail!("interrupted before {what}");
    }
    step()
}

/// True once SIGINT or SIGTERM arrived; long loops stop early when it is set.
pub fn interrupted() -> bool {
    SIGNALLED.load(Ordering::Relaxed)
}

extern "C" fn on_signal(_sig: libc::c_int) {
    SIGNALLED.store(true, Ordering::SeqCst);
}

/// Installs the SIGINT/SIGTERM handler, its watcher thread and the panic hook;
/// `sweep` stops and removes everything of the run that may be left (processes,
/// mounts, the namespace), whether or not a guard was registered for it yet.
pub fn install(sweep_fn: impl Fn() + Send + Sync + 'static) {
    *sweep_slot().lock() = Some(Box::new(sweep_fn));
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_signal as *const () as usize;
        sa.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(libc::SIGINT, &sa, std::ptr::null_mut());
        libc::sigaction(libc::SIGTERM, &sa, std::ptr::null_mut());
    }
    std::thread::spawn(|| loop {
        std::thread::sleep(Duration::from_millis(100));
        if SIGNALLED.load(Ordering::SeqCst) {
            eprintln!("alces-bench: interrupted, cleaning up");
            sweep();
            // Keep the main thread from starting anything new while the process ends.
            let _starting = starting_lock().lock();
            run_all();
            sweep();
            let _running = running().lock();
            std::process::exit(130);
        }
    });
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default(info);
        run_all();
    }));
}
