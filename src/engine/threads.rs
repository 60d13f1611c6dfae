//! The thread backend: the pool's tasks run on threads of this process.
//!
//! # The path of one task
//!
//! A submission is checked against the [`Lifecycle`] and pushed onto one
//! lock-free queue (a `crossbeam_deque::Injector`); no lock is taken on that
//! path. An idle thread takes the next job from the queue, runs it and looks
//! again; only a thread that finds the queue empty goes to sleep.
//!
//! # Sleep and wake-up
//!
//! A thread about to sleep takes the sleep lock, counts itself in
//! `Sleep::waiting` (mirrored in the atomic `sleepy`), and looks at the
//! queue and the lifecycle once more before it waits on the condvar. A
//! submitter pushes, then reads `sleepy` (both sides with a `SeqCst` fence
//! between their write and their read, so at least one sees the other): when
//! nobody sleeps, a submission costs no lock and no system call. When a
//! thread sleeps, the submitter takes the sleep lock, claims one sleeper
//! (`waiting - 1`, `woken + 1`) and wakes it; the claim is made at once, so
//! the submissions that follow while that thread wakes up do not wake it
//! again. Every change to the lifecycle is followed by [`wake_all`], which
//! takes the sleep lock, so a thread that looked at the lifecycle before the
//! change is already waiting and is woken.
//!
//! # Admitting vs draining
//!
//! The rule of [`lifecycle`](super::lifecycle) is kept without a queue lock:
//! a submitter counts itself in `admitting` before it checks the lifecycle
//! and leaves only after its push, and checks whether the pool stopped after
//! pushing (draining the queue itself if so: a `terminate()` whose drain ran
//! before the push would otherwise strand the job). A thread leaves a closed
//! pool only when, read in this order, the lifecycle says it is finished, no
//! submitter is admitting and the queue is empty: a submission admitted
//! before `close()` is therefore pushed before the last thread can leave.
//!
//! [`wake_all`]: Engine::wake_all

use std::marker::PhantomData;
use std::sync::atomic::{fence, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use crossbeam_deque::{Injector, Steal};

use super::spin::Spin;
use super::{Engine, Lifecycle, RunState, Ticket};
use crate::error::{Error, ErrorKind, Result};
use crate::pool::map::{unarmed, Arm, ChunkDone, ChunkRunner, OneShot};
use crate::pool::Completion;
use crate::task::{self, TaskFn, TaskOnce};

/// What the queue carries: called with `None` to run, or with the reason it
/// will not run.
enum Job {
    /// A chunk of a map: its items, function and callback in one box.
    Chunk(Box<dyn FnOnce(Option<Error>) + Send>),
    /// One call (`apply`, `apply_async`, `submit`): its closure is kept in
    /// the allocation of the completion its caller holds (see [`OneCall`]),
    /// so the call allocates once.
    One(Arc<dyn RunOne>),
}

impl Job {
    fn run(self, engine: &ThreadEngine, cancel: Option<Error>) {
        match self {
            Job::Chunk(f) => f(cancel),
            Job::One(task) => task.run(engine, cancel),
        }
    }
}

/// One call queued in its own completion.
trait RunOne: Send + Sync {
    /// Runs the call (`cancel` is `None`) or fails it with `cancel`, and
    /// completes the completion; called once.
    fn run(self: Arc<Self>, engine: &ThreadEngine, cancel: Option<Error>);
}

/// The tail of the completion of one call: the call, taken once by the
/// thread that runs it (or by the drain that fails it), and the ticket it
/// is tracked by (executor futures). The lock is never contended: only the
/// one holder of the queued job takes it, and only once. It is there because
/// the completion is shared with the caller, so the call can be moved out
/// only through `&self`: a lock is the safe way (an `UnsafeCell` taken
/// behind an atomic flag would need `unsafe` for a few instructions). A
/// `parking_lot` lock has no poisoning to handle and measured 11
/// instructions per task fewer than `std`'s under callgrind (`t3`).
struct OneCall<C> {
    call: parking_lot::Mutex<Option<C>>,
    ticket: Option<Arc<Ticket>>,
}

impl<R, C> RunOne for Completion<R, OneCall<C>>
where
    R: Send + 'static,
    C: FnOnce() -> R + Send + 'static,
{
    fn run(self: Arc<Self>, engine: &ThreadEngine, cancel: Option<Error>) {
        let tail = self.tail();
        let Some(call) = tail.call.lock().take() else {
            return; // never: a job is queued once and taken once
        };
        let outcome = match cancel {
            Some(e) => {
                drop(call);
                Err(e)
            }
            None => {
                if tail.ticket.as_ref().is_some_and(|t| !t.start()) {
                    // Cancelled while queued: `cancel` already completed it.
                    drop(call);
                    return engine.release(false);
                }
                let outcome = task::catch_panic(call).map_err(|fl| fl.into_error(None));
                engine.release(true);
                outcome
            }
        };
        self.complete(outcome)
    }
}
pub(crate) type Initializer = Arc<dyn Fn() + Send + Sync>;

/// What a thread-pool builder collects.
#[derive(Default)]
pub(crate) struct ThreadOptions {
    pub(crate) threads: Option<usize>,
    pub(crate) init: Option<Initializer>,
    /// Threads are named `{prefix}_{i}` from 0, as Python's
    /// `thread_name_prefix`; by default `ThreadPoolWorker-{i}` from 1.
    pub(crate) name_prefix: Option<String>,
}

impl ThreadOptions {
    /// The engine; `lazy` starts threads only as submissions need them
    /// (executors). `default` is the number of threads when none was set,
    /// and `threads_option` names the option that sets it, for the error.
    pub(crate) fn build(
        self,
        lazy: bool,
        default: usize,
        threads_option: &str,
    ) -> Result<Arc<ThreadEngine>> {
        let size = self.threads.unwrap_or(default);
        if size == 0 {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                format!("{threads_option} must be at least 1 (got 0)"),
            ));
        }
        ThreadEngine::new(size, self.init, lazy, self.name_prefix)
    }
}

/// The sleepers, under the sleep lock.
#[derive(Default)]
struct Sleep {
    /// Threads waiting on the condvar that nobody has claimed yet.
    waiting: usize,
    /// Wake-ups given and not yet taken by a waiting thread.
    woken: usize,
}

pub(crate) struct ThreadEngine {
    lifecycle: Lifecycle,
    queue: Injector<Job>,
    /// Submitters between their look at the lifecycle and their push.
    admitting: AtomicUsize,
    sleep: Mutex<Sleep>,
    /// `Sleep::waiting`, readable without the lock.
    sleepy: AtomicUsize,
    cond: Condvar,
    threads: Mutex<Vec<JoinHandle<()>>>,
    /// Threads started (lazy engines read it on every submission).
    started: AtomicUsize,
    size: usize,
    init: Option<Initializer>,
    /// Start threads only as submissions need them (executors).
    lazy: bool,
    /// See [`ThreadOptions::name_prefix`].
    name_prefix: Option<String>,
    /// Idle tokens (kept by lazy engines only). A thread adds one just
    /// before it delivers a job's result; a submission that takes one
    /// counts on that thread and starts none. Each token is taken once, so
    /// a job is never counted twice, once queued and once running (reading
    /// a queue length and a busy count one after the other did that, and
    /// started a second thread for a caller who only ever waited on one).
    idle: AtomicUsize,
    meters: crate::stats::Meters,
}

impl ThreadEngine {
    fn new(
        size: usize,
        init: Option<Initializer>,
        lazy: bool,
        name_prefix: Option<String>,
    ) -> Result<Arc<ThreadEngine>> {
        let engine = Arc::new(ThreadEngine {
            lifecycle: Lifecycle::new(),
            queue: Injector::new(),
            admitting: AtomicUsize::new(0),
            sleep: Mutex::new(Sleep::default()),
            sleepy: AtomicUsize::new(0),
            cond: Condvar::new(),
            threads: Mutex::new(Vec::new()),
            started: AtomicUsize::new(0),
            size,
            init,
            lazy,
            name_prefix,
            idle: AtomicUsize::new(0),
            meters: crate::stats::Meters::new(size),
        });
        if !lazy {
            for _ in 0..size {
                engine.start_thread()?;
            }
        }
        Ok(engine)
    }

    fn lock_sleep(&self) -> MutexGuard<'_, Sleep> {
        self.sleep.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn start_thread(self: &Arc<Self>) -> Result<()> {
        let mut threads = self.threads.lock().unwrap_or_else(|e| e.into_inner());
        if threads.len() >= self.size {
            return Ok(());
        }
        let engine = self.clone();
        let index = threads.len();
        let h = std::thread::Builder::new()
            .name(match &self.name_prefix {
                Some(prefix) => format!("{prefix}_{}", threads.len()),
                None => format!("ThreadPoolWorker-{}", threads.len() + 1),
            })
            .spawn(move || engine.worker(index))
            .map_err(|e| Error::io("could not start a pool thread", e))?;
        threads.push(h);
        self.started.store(threads.len(), Ordering::SeqCst);
        Ok(())
    }

    fn submit(self: &Arc<Self>, job: Job, held: bool) {
        // See "Admitting vs draining" above.
        self.admitting.fetch_add(1, Ordering::SeqCst);
        if let Some(err) = self.lifecycle.refusal(held) {
            self.admitting.fetch_sub(1, Ordering::SeqCst);
            // A thread of a closed pool may wait for this submission.
            self.wake_all();
            return job.run(self, Some(err));
        }
        self.queue.push(job);
        self.admitting.fetch_sub(1, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        if self.lifecycle.is_stopped() {
            // Terminated or broken since the check: its drain may have run
            // before the push.
            let err = self.lifecycle.broken().unwrap_or_else(super::cancelled);
            return self.fail_queued(err);
        }
        if self.sleepy.load(Ordering::SeqCst) > 0 {
            self.wake_one();
        }
        if self.lazy
            && self
                .idle
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_err()
            && self.started.load(Ordering::SeqCst) < self.size
        {
            if let Err(e) = self.start_thread() {
                self.break_with(e);
            }
        }
    }

    /// Wakes one sleeping thread, if one still sleeps.
    fn wake_one(&self) {
        let mut s = self.lock_sleep();
        if s.waiting > 0 {
            s.waiting -= 1;
            s.woken += 1;
            self.sleepy.store(s.waiting, Ordering::SeqCst);
            drop(s);
            self.cond.notify_one();
        }
    }

    /// The next queued job, if any.
    fn pop(&self) -> Option<Job> {
        loop {
            match self.queue.steal() {
                Steal::Success(job) => return Some(job),
                Steal::Empty => return None,
                Steal::Retry => std::hint::spin_loop(),
            }
        }
    }

    /// True once this thread may leave: the pool is stopped, or it is closed,
    /// finished, admits nobody and has nothing queued (read in that order).
    fn may_leave(&self) -> bool {
        self.lifecycle.is_stopped()
            || (self.lifecycle.finished(true)
                && self.admitting.load(Ordering::SeqCst) == 0
                && self.queue.is_empty())
    }

    fn worker(&self, index: usize) {
        if let Some(init) = &self.init {
            if let Err(f) = task::catch_panic(|| init()) {
                let err = Error::new(
                    ErrorKind::InitializerFailed,
                    format!(
                        "initializer failed in thread {}: {}; fix the initializer",
                        std::thread::current().name().unwrap_or("(unnamed)"),
                        f.message
                    ),
                );
                return self.break_with(err);
            }
        }
        self.meters.ready(index, None, std::time::Instant::now());
        THREAD_SLOT.with(|s| s.set(index));
        // Counted as gone however the thread leaves.
        let _gone = Gone(&self.meters, index);
        loop {
            if self.lifecycle.is_stopped() {
                return;
            }
            if let Some(job) = self.pop() {
                self.meters.started_next(index);
                job.run(self, None);
                continue;
            }
            if self.may_leave() {
                return;
            }
            // A caller that submits again at once (`apply` in a loop)
            // finds this thread awake (`engine::spin`): no wake-up.
            if Spin::until(|| !self.queue.is_empty() || self.lifecycle.is_stopped()) {
                continue;
            }
            self.meters.paused(index);
            self.sleep_until_woken();
        }
    }

    /// Sleeps until a submission or a lifecycle change wakes this thread;
    /// returns at once if there is something to look at already.
    fn sleep_until_woken(&self) {
        let mut s = self.lock_sleep();
        s.waiting += 1;
        self.sleepy.store(s.waiting, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        if !self.queue.is_empty() || self.may_leave() {
            s.waiting -= 1;
            self.sleepy.store(s.waiting, Ordering::SeqCst);
            return;
        }
        loop {
            s = self.cond.wait(s).unwrap_or_else(|e| e.into_inner());
            if s.woken > 0 {
                s.woken -= 1;
                return;
            }
        }
    }

    /// Called by a job just before it delivers its result (`ran`: it ran,
    /// rather than finding itself cancelled).
    fn release(&self, ran: bool) {
        if ran {
            self.meters.finished_now(THREAD_SLOT.with(|s| s.get()));
        }
        if self.lazy {
            self.idle.fetch_add(1, Ordering::SeqCst);
        }
    }
}

thread_local! {
    /// The index of the pool thread this is, for its stats.
    static THREAD_SLOT: std::cell::Cell<usize> = const { std::cell::Cell::new(usize::MAX) };
}

/// Marks a pool thread gone in the stats when it leaves.
struct Gone<'a>(&'a crate::stats::Meters, usize);

impl Drop for Gone<'_> {
    fn drop(&mut self) {
        self.0.ended(self.1, None);
    }
}

impl Engine for ThreadEngine {
    fn lifecycle(&self) -> &Lifecycle {
        &self.lifecycle
    }

    fn workers(&self) -> usize {
        self.size
    }

    fn wake_all(&self) {
        // Taking the lock orders this wake-up after any thread's look at the
        // lifecycle: a thread either saw the change or is already waiting.
        let mut s = self.lock_sleep();
        s.woken += s.waiting;
        s.waiting = 0;
        self.sleepy.store(0, Ordering::SeqCst);
        drop(s);
        self.cond.notify_all();
    }

    fn fail_queued(&self, err: Error) {
        fence(Ordering::SeqCst);
        while let Some(job) = self.pop() {
            job.run(self, Some(err.clone()));
        }
    }

    fn join_workers(&self) {
        let handles = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|e| e.into_inner()));
        let me = std::thread::current().id();
        for h in handles {
            if h.thread().id() != me {
                let _ = h.join();
            }
        }
    }

    fn kill_running(&self, _ticket: &Ticket) -> bool {
        false
    }

    /// Queued tasks fail now, unless the pool was closed (they then still
    /// run); a running task finishes on its own thread, and nothing waits
    /// for it.
    fn stats(&self) -> crate::stats::PoolStats {
        self.meters.snapshot()
    }

    fn face_dropped(&self) {
        if self.lifecycle.state() != RunState::Closed {
            self.terminate();
        }
    }
}

/// Runs chunks of one function on a thread pool.
pub(crate) struct ThreadRunner<F, A, M> {
    engine: Arc<ThreadEngine>,
    f: Arc<F>,
    _f: PhantomData<fn(A, M)>,
}

impl<F, A, M> ThreadRunner<F, A, M> {
    pub(crate) fn new(engine: &Arc<ThreadEngine>, f: F) -> Self {
        ThreadRunner { engine: engine.clone(), f: Arc::new(f), _f: PhantomData }
    }
}

impl<F, A, M> ThreadRunner<F, A, M> {
    fn submit<R>(&self, items: Vec<A>, done: ChunkDone<R>, held: bool, ticket: Option<Arc<Ticket>>)
    where
        F: TaskFn<A, M, Output = R>,
        A: Send + 'static,
        R: Send + 'static,
    {
        let (f, engine) = (self.f.clone(), self.engine.clone());
        self.engine.submit(
            Job::Chunk(Box::new(move |cancel| {
                let outcomes = match cancel {
                    Some(e) => items.into_iter().map(|_| Err(e.clone())).collect(),
                    None => {
                        if ticket.as_ref().is_some_and(|t| !t.start()) {
                            // Cancelled while queued: `cancel` already completed it.
                            return engine.release(false);
                        }
                        let outcomes = items
                            .into_iter()
                            .map(|a| {
                                task::catch_panic(|| f.call(a)).map_err(|fl| fl.into_error(None))
                            })
                            .collect();
                        engine.release(true);
                        outcomes
                    }
                };
                done(outcomes)
            })),
            held,
        );
    }
}

impl<F, A, M, R> ChunkRunner<A, R> for ThreadRunner<F, A, M>
where
    F: TaskFn<A, M, Output = R>,
    A: Send + 'static,
    R: Send + 'static,
{
    type Engine = ThreadEngine;

    fn engine(&self) -> &Arc<ThreadEngine> {
        &self.engine
    }

    fn run_chunk(&self, items: Vec<A>, done: ChunkDone<R>) {
        self.submit(items, done, false, None)
    }

    fn run_chunk_held(&self, items: Vec<A>, done: ChunkDone<R>, ticket: Arc<Ticket>) {
        self.submit(items, done, true, Some(ticket))
    }

    /// One allocation: the completion, which holds the job (no item or
    /// outcome vector, no chunk callback).
    fn run_one(&self, item: A, arm: impl Arm<R>) -> Result<Arc<Completion<R>>> {
        let f = self.f.clone();
        submit_one(&self.engine, None, move || f.call(item), arm)
    }
}

/// Runs one call of a function that may be called only once (`FnOnce`):
/// `apply`, `apply_async` and executor `submit` on the thread backend.
pub(crate) struct ThreadOnce<F, A, M> {
    engine: Arc<ThreadEngine>,
    f: F,
    ticket: Option<Arc<Ticket>>,
    _f: PhantomData<fn(A, M)>,
}

impl<F, A, M> ThreadOnce<F, A, M> {
    pub(crate) fn new(engine: &Arc<ThreadEngine>, f: F) -> Self {
        ThreadOnce { engine: engine.clone(), f, ticket: None, _f: PhantomData }
    }

    /// Tracks the job through `ticket`, for executor futures.
    pub(crate) fn with_ticket(mut self, ticket: Arc<Ticket>) -> Self {
        self.ticket = Some(ticket);
        self
    }
}

impl<F, A, M, R> OneShot<A, R> for ThreadOnce<F, A, M>
where
    F: TaskOnce<A, M, Output = R>,
    A: Send + 'static,
    R: Send + 'static,
{
    fn run(self, args: A, arm: impl Arm<R>) -> Result<Arc<Completion<R>>> {
        let f = self.f;
        submit_one(&self.engine, self.ticket, move || f.call_once(args), arm)
    }

    fn apply(self, args: A) -> Result<R> {
        self.run(args, unarmed)?.wait_take_soon()
    }
}

/// The largest call (its closure with its captures and arguments, by
/// value) kept in its completion's allocation. The space stays allocated
/// as long as the caller holds the result, after the call has run: a larger
/// call gets a box of its own, freed once it has run, so that results
/// kept pending do not keep the calls' memory too.
const INLINE_CALL: usize = 256;

/// Queues `call` as one job, in one allocation with the completion it
/// returns (unless it is larger than [`INLINE_CALL`]); the completion gets
/// the call's outcome whatever happens: cancelled with the pool's error, or
/// skipped when `ticket` was cancelled while it was queued. `arm` sees the
/// completion first; its error keeps the call from being queued.
fn submit_one<R: Send + 'static, C: FnOnce() -> R + Send + 'static>(
    engine: &Arc<ThreadEngine>,
    ticket: Option<Arc<Ticket>>,
    call: C,
    arm: impl Arm<R>,
) -> Result<Arc<Completion<R>>> {
    if std::mem::size_of::<C>() > INLINE_CALL {
        return queue_one(engine, ticket, Box::new(call), arm);
    }
    queue_one(engine, ticket, call, arm)
}

fn queue_one<R: Send + 'static, C: FnOnce() -> R + Send + 'static>(
    engine: &Arc<ThreadEngine>,
    ticket: Option<Arc<Ticket>>,
    call: C,
    arm: impl Arm<R>,
) -> Result<Arc<Completion<R>>> {
    let task = Completion::with(OneCall { call: parking_lot::Mutex::new(Some(call)), ticket });
    let done: Arc<Completion<R>> = task.clone();
    arm(&done)?;
    engine.submit(Job::One(task), false);
    Ok(done)
}
