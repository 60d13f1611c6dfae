//! `ThreadPool`: the pool API run by threads of this process.

use std::collections::VecDeque;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use super::core::{cancelled, RunState, Ticket};
use super::map::{ChunkDone, ChunkRunner};
use crate::error::{Error, ErrorKind, Result};
use crate::task::{self, TaskFn};

/// A job: called with `None` to run, or with the reason it will not run.
type Job = Box<dyn FnOnce(Option<Error>) + Send>;
type Initializer = Arc<dyn Fn() + Send + Sync>;

struct Queue {
    jobs: VecDeque<Job>,
    state: RunState,
    broken: Option<Error>,
    /// Iterators started while the pool ran that may submit after `close()`.
    holds: usize,
    holds_cut: bool,
}

impl Queue {
    fn refusal(&self, held: bool) -> Option<Error> {
        match (&self.broken, self.state) {
            (Some(e), _) => Some(e.clone()),
            (None, RunState::Running) => None,
            (None, RunState::Closed) if held && self.holds > 0 && !self.holds_cut => None,
            (None, _) => Some(Error::not_running()),
        }
    }
}

pub(crate) struct ThreadCore {
    queue: Mutex<Queue>,
    cond: Condvar,
    threads: Mutex<Vec<JoinHandle<()>>>,
    size: usize,
    init: Option<Initializer>,
    /// Start threads only as submissions need them (executors).
    lazy: bool,
    /// Threads running a job; a job gives its thread back just before it
    /// delivers its result, so a caller who submits again at once reuses it.
    busy: AtomicUsize,
}

impl ThreadCore {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn check_running(&self) -> Result<()> {
        let q = self.lock();
        match (&q.broken, q.state) {
            (Some(e), _) => Err(e.clone()),
            (None, RunState::Running) => Ok(()),
            (None, _) => Err(Error::not_running()),
        }
    }

    pub(crate) fn new(
        size: usize,
        init: Option<Initializer>,
        lazy: bool,
    ) -> Result<Arc<ThreadCore>> {
        if size == 0 {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                "a pool needs at least 1 thread (got 0)",
            ));
        }
        let core = Arc::new(ThreadCore {
            queue: Mutex::new(Queue {
                jobs: VecDeque::new(),
                state: RunState::Running,
                broken: None,
                holds: 0,
                holds_cut: false,
            }),
            cond: Condvar::new(),
            threads: Mutex::new(Vec::new()),
            size,
            init,
            lazy,
            busy: AtomicUsize::new(0),
        });
        if !lazy {
            for _ in 0..size {
                core.start_thread()?;
            }
        }
        Ok(core)
    }

    fn start_thread(self: &Arc<Self>) -> Result<()> {
        let mut threads = self.threads.lock().unwrap_or_else(|e| e.into_inner());
        if threads.len() >= self.size {
            return Ok(());
        }
        let core = self.clone();
        let h = std::thread::Builder::new()
            .name(format!("ThreadPoolWorker-{}", threads.len() + 1))
            .spawn(move || core.worker())
            .map_err(|e| Error::io("could not start a pool thread", e))?;
        threads.push(h);
        Ok(())
    }

    pub(crate) fn size(&self) -> usize {
        self.size
    }

    /// Stops taking tasks; queued ones still run.
    pub(crate) fn close(&self) {
        self.stop(Some(RunState::Closed), None);
    }

    /// Fails the queued tasks; running ones finish.
    pub(crate) fn terminate(&self) {
        self.stop(Some(RunState::Terminated), None);
    }

    /// Fails the queued tasks and stops taking new ones; running and ... none
    /// queued remain.
    pub(crate) fn cancel_queued(&self) {
        let jobs: Vec<Job> = self.lock().jobs.drain(..).collect();
        for j in jobs {
            j(Some(cancelled()));
        }
    }

    /// Waits for the threads (all but the caller's own).
    pub(crate) fn join_threads(&self) {
        let handles = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|e| e.into_inner()));
        let me = std::thread::current().id();
        for h in handles {
            if h.thread().id() != me {
                let _ = h.join();
            }
        }
    }

    pub(crate) fn is_running(&self) -> bool {
        self.lock().state == RunState::Running
    }

    /// Keeps threads after `close()` until the returned release runs.
    pub(crate) fn hold_open(self: &Arc<Self>) -> Option<super::map::Release> {
        let mut q = self.lock();
        if q.state != RunState::Running || q.broken.is_some() {
            return None;
        }
        q.holds += 1;
        let core = self.clone();
        Some(Box::new(move || {
            core.lock().holds -= 1;
            core.cond.notify_all();
        }))
    }

    /// Lets a closed pool stop waiting for iterators (executor shutdown).
    pub(crate) fn cut_holds(&self) {
        self.lock().holds_cut = true;
        self.cond.notify_all();
    }

    fn has_holds(&self) -> bool {
        let q = self.lock();
        q.holds > 0 && !q.holds_cut
    }

    fn submit(self: &Arc<Self>, job: Job, held: bool) {
        let mut q = self.lock();
        match q.refusal(held) {
            Some(err) => {
                drop(q);
                job(Some(err));
            }
            None => {
                q.jobs.push_back(job);
                let queued = q.jobs.len();
                drop(q);
                self.cond.notify_one();
                let started = self.threads.lock().map_or(self.size, |t| t.len());
                if self.lazy && self.busy.load(Ordering::SeqCst) + queued > started {
                    if let Err(e) = self.start_thread() {
                        self.stop(None, Some(e));
                    }
                }
            }
        }
    }

    /// Stops the pool and fails what is queued with `err`.
    fn stop(&self, state: Option<RunState>, broken: Option<Error>) {
        let mut q = self.lock();
        if let Some(s) = state {
            q.state = s;
        }
        if q.broken.is_none() {
            q.broken = broken;
        }
        let reason = q.broken.clone().unwrap_or_else(cancelled);
        let jobs: Vec<Job> = if q.state == RunState::Closed && q.broken.is_none() {
            Vec::new()
        } else {
            q.jobs.drain(..).collect()
        };
        drop(q);
        self.cond.notify_all();
        for j in jobs {
            j(Some(reason.clone()));
        }
    }

    fn worker(&self) {
        if let Some(init) = &self.init {
            if let Err(f) = task::catch_panic(|| init()) {
                let err = Error::new(
                    ErrorKind::InitializerFailed,
                    format!(
                        "initializer failed in thread {:?}: {}",
                        std::thread::current().name(),
                        f.message
                    ),
                );
                return self.stop(None, Some(err));
            }
        }
        loop {
            let mut q = self.lock();
            let job = loop {
                if q.state == RunState::Terminated || q.broken.is_some() {
                    return;
                }
                if let Some(job) = q.jobs.pop_front() {
                    break job;
                }
                if q.state == RunState::Closed && (q.holds == 0 || q.holds_cut) {
                    return;
                }
                q = self.cond.wait(q).unwrap_or_else(|e| e.into_inner());
            };
            self.busy.fetch_add(1, Ordering::SeqCst);
            drop(q);
            job(None);
        }
    }

    /// Called by a job just before it delivers its result.
    fn release(&self) {
        self.busy.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A pool of threads with the same API as [`crate::Pool`]: Python's
/// `multiprocessing.pool.ThreadPool`.
///
/// Tasks may be any `Send + 'static` closure, capturing or not, and need no
/// serde. A task that panics fails with its message and location; the thread
/// goes on. Threads cannot be killed, so [`terminate`](ThreadPool::terminate)
/// fails the queued tasks but lets running ones finish, and dropping the pool
/// does not wait for them.
///
/// # Examples
///
/// ```
/// use multiproc::ThreadPool;
///
/// let offset = 10;
/// let pool = ThreadPool::new(2)?;
/// assert_eq!(pool.map(move |x: u32| x + offset, 0..3)?, vec![10, 11, 12]);
/// # Ok::<(), multiproc::Error>(())
/// ```
pub struct ThreadPool {
    pub(super) core: Arc<ThreadCore>,
}

/// Options for a [`ThreadPool`].
#[derive(Default)]
#[must_use = "a builder does nothing until .build() is called"]
pub struct ThreadPoolBuilder {
    threads: Option<usize>,
    init: Option<Initializer>,
}

impl ThreadPoolBuilder {
    /// The number of threads (default: [`crate::cpu_count`]).
    pub fn threads(mut self, n: usize) -> Self {
        self.threads = Some(n);
        self
    }

    /// Same as [`threads`](Self::threads), by `Pool`'s name.
    pub fn processes(self, n: usize) -> Self {
        self.threads(n)
    }

    /// A function each thread runs once before its first task. If it panics,
    /// every task fails with [`ErrorKind::InitializerFailed`].
    pub fn initializer(mut self, f: impl Fn() + Send + Sync + 'static) -> Self {
        self.init = Some(Arc::new(f));
        self
    }

    /// Starts the threads.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidArgument`] for 0 threads; [`ErrorKind::Io`] when a
    /// thread cannot start.
    pub fn build(self) -> Result<ThreadPool> {
        let size = self.threads.unwrap_or_else(crate::cpu_count);
        Ok(ThreadPool { core: ThreadCore::new(size, self.init, false)? })
    }
}

impl ThreadPool {
    /// A pool of `threads` threads.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidArgument`] for 0 threads.
    pub fn new(threads: usize) -> Result<ThreadPool> {
        ThreadPool::builder().threads(threads).build()
    }

    /// A builder for a pool with an initializer.
    pub fn builder() -> ThreadPoolBuilder {
        ThreadPoolBuilder::default()
    }

    /// The number of threads.
    pub fn processes(&self) -> usize {
        self.core.size
    }

    /// Stops taking tasks; queued tasks still run.
    pub fn close(&self) {
        self.core.close();
    }

    /// Fails every queued task with [`ErrorKind::Cancelled`]; running tasks
    /// finish (threads cannot be killed).
    pub fn terminate(&self) {
        self.core.terminate();
    }

    /// Waits for the threads to finish.
    ///
    /// # Errors
    /// [`ErrorKind::PoolStillRunning`] before `close` or `terminate`.
    pub fn join(&self) -> Result<()> {
        if self.core.is_running() {
            return Err(super::still_running());
        }
        if self.core.has_holds() {
            return Err(super::unfinished_iterator());
        }
        self.core.join_threads();
        // As in Python, join returns once the callbacks of the pool's
        // results have run too.
        super::callbacks::flush();
        Ok(())
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        // Queued tasks fail now; a running task finishes on its own thread.
        if self.core.lock().state != RunState::Closed {
            self.terminate();
        }
    }
}

impl std::fmt::Debug for ThreadPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThreadPool").field("threads", &self.core.size).finish()
    }
}

/// Runs chunks of one function on a thread pool.
pub(crate) struct ThreadRunner<F, A, M> {
    core: Arc<ThreadCore>,
    f: Arc<F>,
    ticket: Option<Arc<Ticket>>,
    _f: PhantomData<fn(A, M)>,
}

impl<F, A, M> ThreadRunner<F, A, M> {
    pub(crate) fn new(core: &Arc<ThreadCore>, f: F) -> Self {
        ThreadRunner { core: core.clone(), f: Arc::new(f), ticket: None, _f: PhantomData }
    }

    /// Tracks the (single) job through `ticket`, for executor futures.
    pub(crate) fn with_ticket(mut self, ticket: Arc<Ticket>) -> Self {
        self.ticket = Some(ticket);
        self
    }
}

impl<F, A, M> ThreadRunner<F, A, M> {
    fn submit<R>(&self, items: Vec<A>, done: ChunkDone<R>, held: bool, ticket: Option<Arc<Ticket>>)
    where
        F: TaskFn<A, M, Output = R>,
        A: Send + 'static,
        R: Send + 'static,
    {
        let ticket = ticket.or_else(|| self.ticket.clone());
        let (f, core) = (self.f.clone(), self.core.clone());
        self.core.submit(
            Box::new(move |cancel| {
                let outcomes = match cancel {
                    Some(e) => items.into_iter().map(|_| Err(e.clone())).collect(),
                    None => {
                        if ticket.as_ref().is_some_and(|t| !t.start()) {
                            // Cancelled while queued: `cancel` already completed it.
                            return core.release();
                        }
                        let outcomes = items
                            .into_iter()
                            .map(|a| {
                                task::catch_panic(|| f.call(a)).map_err(|fl| fl.into_error(None))
                            })
                            .collect();
                        core.release();
                        outcomes
                    }
                };
                done(outcomes)
            }),
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
    fn run_chunk(&self, items: Vec<A>, done: ChunkDone<R>) {
        self.submit(items, done, false, None)
    }

    fn run_chunk_held(&self, items: Vec<A>, done: ChunkDone<R>, ticket: Arc<Ticket>) {
        self.submit(items, done, true, Some(ticket))
    }

    fn hold_open(&self) -> Option<super::map::Release> {
        self.core.hold_open()
    }

    fn check_running(&self) -> Result<()> {
        self.core.check_running()
    }

    fn workers(&self) -> usize {
        self.core.size
    }
}
