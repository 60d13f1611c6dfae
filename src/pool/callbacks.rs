//! The threads that run result callbacks (`AsyncResult::callback`,
//! `error_callback`, `Future::add_done_callback`).
//!
//! A result arrives on a pool's I/O thread (a process pool's slot thread) or
//! on the pool thread that ran the task (a thread pool). Neither may run user
//! code: a callback that submits to the same pool and waits would wait for
//! the very thread it occupies, and a slow callback would stall a worker. So
//! the completing thread only queues the result here, and callback threads
//! run the callbacks, with no lock of the pool or of the result held.
//!
//! One callback thread at a time takes results from the queue, so callbacks
//! of different results run in the order the results arrived, as Python's
//! result-handler thread runs them. But a callback may block: on another
//! result whose own callbacks are queued behind it, on a lock, or just for a
//! long time. So the queue is elastic: a spare thread always waits beside the
//! busy ones, and when the queue has not moved for [`STALL`] it takes the next
//! result itself (and a new spare is started). A blocked callback therefore
//! delays the others by at most [`STALL`], and can never wait for a callback
//! that is queued behind it. On top of that, a callback thread that waits for
//! a result whose callbacks are queued runs them itself at once
//! ([`on_callback_thread`]), so a callback that submits a task with its own
//! callback and waits for it does not even pay the [`STALL`].
//!
//! Spare threads beyond the first leave after [`IDLE_EXIT`] without work; at
//! most [`MAX_THREADS`] exist at once, which bounds the cost of programs whose
//! callbacks all block forever (beyond that many, they queue).

use std::cell::Cell;
use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

/// How long the queue may stand still behind a busy callback before another
/// thread takes the next result.
pub(crate) const STALL: Duration = Duration::from_millis(10);
/// How long a spare callback thread waits for work before it leaves (one
/// thread always stays).
const IDLE_EXIT: Duration = Duration::from_secs(10);
/// The most callback threads that exist at once.
const MAX_THREADS: usize = 64;

/// A result whose callbacks wait for a thread.
pub(crate) trait Deliver: Send + Sync {
    /// Runs the callbacks unless another thread already took them.
    fn deliver(&self);
}

struct Runners {
    queue: VecDeque<(u64, Box<dyn Deliver>)>,
    /// The number the next queued result gets.
    next: u64,
    /// The numbers of the results queued or being delivered: [`flush`]
    /// waits for those below its mark to leave.
    pending: std::collections::BTreeSet<u64>,
    /// Threads that exist.
    threads: usize,
    /// Threads waiting on the condition variable.
    waiting: usize,
    /// Threads running callbacks.
    running: usize,
    /// When a thread last started on a result.
    last_start: Instant,
}

struct Dispatch {
    runners: Mutex<Runners>,
    cond: Condvar,
}

thread_local! {
    static ON_CALLBACK_THREAD: Cell<bool> = const { Cell::new(false) };
}

/// True on a callback thread: a wait there on a result whose callbacks are
/// queued runs them instead of waiting for another callback thread.
pub(crate) fn on_callback_thread() -> bool {
    ON_CALLBACK_THREAD.with(Cell::get)
}

fn dispatch() -> &'static Dispatch {
    static DISPATCH: OnceLock<Dispatch> = OnceLock::new();
    DISPATCH.get_or_init(|| Dispatch {
        runners: Mutex::new(Runners {
            queue: VecDeque::new(),
            next: 0,
            pending: std::collections::BTreeSet::new(),
            threads: 0,
            waiting: 0,
            running: 0,
            last_start: Instant::now(),
        }),
        cond: Condvar::new(),
    })
}

impl Dispatch {
    fn lock(&self) -> MutexGuard<'_, Runners> {
        self.runners.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts a callback thread, already counted in `threads`; false (and
    /// the count given back) when the system refuses.
    fn start_thread(&'static self) -> bool {
        let started = std::thread::Builder::new()
            .name("multiproc-callbacks".into())
            .spawn(move || self.serve());
        if started.is_err() {
            self.lock().threads -= 1;
        }
        started.is_ok()
    }

    fn serve(&'static self) {
        ON_CALLBACK_THREAD.with(|c| c.set(true));
        let mut r = self.lock();
        loop {
            let stalled = r.running == 0 || r.last_start.elapsed() >= STALL;
            if stalled && !r.queue.is_empty() {
                let (seq, next) = r.queue.pop_front().expect("the queue is not empty");
                r.running += 1;
                r.last_start = Instant::now();
                // Keep a spare waiting beside the busy threads, to take over
                // if this callback blocks.
                let spare = r.waiting == 0 && r.threads < MAX_THREADS;
                if spare {
                    r.threads += 1;
                }
                drop(r);
                if spare {
                    self.start_thread();
                }
                next.deliver();
                drop(next);
                r = self.lock();
                r.running -= 1;
                r.pending.remove(&seq);
                // Someone may wait for the callbacks to be done: `flush`
                // when the oldest pending result has gone, `wait_idle` when
                // nothing is left.
                let was_oldest = r.pending.first().is_none_or(|&s| s > seq);
                if was_oldest || (r.running == 0 && r.queue.is_empty()) {
                    self.cond.notify_all();
                }
                continue;
            }
            r.waiting += 1;
            if r.queue.is_empty() {
                let (g, timeout) =
                    self.cond.wait_timeout(r, IDLE_EXIT).unwrap_or_else(|e| e.into_inner());
                r = g;
                r.waiting -= 1;
                if timeout.timed_out() && r.queue.is_empty() && r.threads > 1 {
                    r.threads -= 1;
                    return;
                }
            } else {
                // Work is queued behind a busy thread: look again when it
                // would count as stalled.
                let left =
                    STALL.saturating_sub(r.last_start.elapsed()).max(Duration::from_millis(1));
                r = self.cond.wait_timeout(r, left).unwrap_or_else(|e| e.into_inner()).0;
                r.waiting -= 1;
            }
        }
    }
}

/// Queues `result` for a callback thread (a box, not an `Arc`: a result's
/// handle may be a pointer to an unsized `Completion`, which no `Arc<dyn _>`
/// can view).
pub(crate) fn queue(result: Box<dyn Deliver>) {
    let d = dispatch();
    let mut r = d.lock();
    let seq = r.next;
    r.next += 1;
    r.pending.insert(seq);
    r.queue.push_back((seq, result));
    let first = r.threads == 0;
    if first {
        r.threads = 1;
    }
    drop(r);
    if first && !d.start_thread() {
        // No thread can be started at all: run the callbacks here rather
        // than lose them.
        let queued: Vec<_> = d.lock().queue.drain(..).collect();
        for (seq, q) in queued {
            q.deliver();
            d.lock().pending.remove(&seq);
        }
        d.cond.notify_all();
        return;
    }
    d.cond.notify_one();
}

/// Waits until every queued callback has run and no callback thread is busy:
/// the program's exit waits for the done-callbacks of the executor work it
/// waited for, as Python's does. A callback that never returns makes this
/// wait forever, as it would in Python.
pub(crate) fn wait_idle() {
    if on_callback_thread() {
        // A callback is exiting the program: it would wait for itself.
        return;
    }
    let d = dispatch();
    let mut r = d.lock();
    while r.running > 0 || !r.queue.is_empty() {
        r = d.cond.wait(r).unwrap_or_else(|e| e.into_inner());
    }
}

/// Waits until the callbacks of every result queued so far have run (not
/// those queued later): what a pool's `join` adds after its workers are done,
/// so that, as in Python, every callback of the pool's tasks has run when
/// `join` returns. On a callback thread it returns at once: the callback
/// calling it may be one of those it would wait for.
pub(crate) fn flush() {
    if on_callback_thread() {
        return;
    }
    let d = dispatch();
    let mut r = d.lock();
    let mark = r.next;
    while r.pending.first().is_some_and(|&s| s < mark) {
        r = d.cond.wait(r).unwrap_or_else(|e| e.into_inner());
    }
}
