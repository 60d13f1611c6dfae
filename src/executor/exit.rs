//! Executor work survives the end of `main`, as in Python.
//!
//! Python's `concurrent.futures` joins every executor's workers from an exit
//! hook, so work submitted and not cancelled completes even when the program
//! returns without `shutdown`. The same holds here: every executor is
//! registered when it is built, and a hook registered once with `atexit`
//! (which runs when `main` returns and on `std::process::exit`) closes each
//! executor still alive and waits for its workers to finish what they were
//! given, then for the callbacks of that work. A task whose worker dies
//! fails, which ends that wait too.
//!
//! An executor shut down with `wait = false` is released from the hook: the
//! caller asked not to wait, so the program exits at once (and its workers,
//! which die with their parent, take the pending work with them).
//!
//! The hook does nothing in a process that did not register it itself: a
//! copy made by `fork` inherits the registration but none of the threads
//! that would finish the work, and waiting there would never end. Worker
//! processes are new executables, so they inherit nothing; they wait only
//! for executors their own tasks built.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use crate::engine::Engine;

struct Entry {
    executor: Weak<dyn Engine>,
    released: Arc<AtomicBool>,
}

struct Registry {
    /// The process that registered the hook.
    pid: u32,
    entries: Vec<Entry>,
}

static REGISTRY: OnceLock<Mutex<Registry>> = OnceLock::new();

/// The registry, made (and the hook registered) by the first executor.
fn registry() -> &'static Mutex<Registry> {
    REGISTRY.get_or_init(|| {
        crate::sys::at_exit(at_exit);
        Mutex::new(Registry { pid: std::process::id(), entries: Vec::new() })
    })
}

/// Lets an executor leave the exit hook's wait: `shutdown(wait = false)`, or
/// a shutdown that has already waited.
#[derive(Debug)]
pub(crate) struct Release(Arc<AtomicBool>);

impl Release {
    pub(crate) fn release(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Makes the exit hook wait for `executor`'s work.
pub(crate) fn register(executor: Weak<dyn Engine>) -> Release {
    let released = Arc::new(AtomicBool::new(false));
    let mut r = registry().lock().unwrap_or_else(|e| e.into_inner());
    // Executors that are gone have nothing left to wait for.
    r.entries.retain(|e| e.executor.strong_count() > 0 && !e.released.load(Ordering::SeqCst));
    r.entries.push(Entry { executor, released: released.clone() });
    Release(released)
}

/// Runs at exit: finishes the work of every executor still alive and not
/// released, one after another.
extern "C" fn at_exit() {
    finish_all();
}

/// Finishes the work of every registered executor still alive and not
/// released, then waits for its callbacks; a second call finds nothing left.
/// For exit hooks that must run before workers are killed (a hook that
/// kills daemon children would otherwise kill executor workers first).
pub(crate) fn finish_all() {
    // A program that never built an executor has nothing to finish, and
    // must not register a hook while it is already exiting.
    let Some(registry) = REGISTRY.get() else { return };
    let executors: Vec<Arc<dyn Engine>> = {
        let mut r = registry.lock().unwrap_or_else(|e| e.into_inner());
        if r.pid != std::process::id() {
            return;
        }
        std::mem::take(&mut r.entries)
            .into_iter()
            .filter(|e| !e.released.load(Ordering::SeqCst))
            .filter_map(|e| e.executor.upgrade())
            .collect()
    };
    if executors.is_empty() {
        return;
    }
    for e in executors {
        e.finish();
    }
    // The work is done; its done-callbacks may still be queued.
    crate::pool::callbacks::wait_idle();
}
