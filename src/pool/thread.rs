//! `ThreadPool`: the pool API run by threads of this process.

use std::collections::VecDeque;
use std::marker::PhantomData;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use super::core::{cancelled, RunState};
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
}

pub(crate) struct ThreadCore {
    queue: Mutex<Queue>,
    cond: Condvar,
    threads: Mutex<Vec<JoinHandle<()>>>,
    size: usize,
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

    fn submit(&self, job: Job) {
        let mut q = self.lock();
        let refusal = match (&q.broken, q.state) {
            (Some(e), _) => Some(e.clone()),
            (None, RunState::Running) => None,
            (None, _) => Some(Error::not_running()),
        };
        match refusal {
            Some(err) => {
                drop(q);
                job(Some(err));
            }
            None => {
                q.jobs.push_back(job);
                drop(q);
                self.cond.notify_one();
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
        let jobs: Vec<Job> =
            if q.state == RunState::Closed && q.broken.is_none() { Vec::new() } else { q.jobs.drain(..).collect() };
        drop(q);
        self.cond.notify_all();
        for j in jobs {
            j(Some(reason.clone()));
        }
    }

    fn worker(&self, init: Option<Initializer>) {
        if let Some(init) = init {
            if let Err(f) = task::catch_panic(|| init()) {
                let err = Error::new(
                    ErrorKind::InitializerFailed,
                    format!("initializer failed in thread {:?}: {}", std::thread::current().name(), f.message),
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
                if q.state == RunState::Closed {
                    return;
                }
                q = self.cond.wait(q).unwrap_or_else(|e| e.into_inner());
            };
            drop(q);
            job(None);
        }
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
        if size == 0 {
            return Err(Error::new(ErrorKind::InvalidArgument, "a pool needs at least 1 thread (got 0)"));
        }
        let core = Arc::new(ThreadCore {
            queue: Mutex::new(Queue { jobs: VecDeque::new(), state: RunState::Running, broken: None }),
            cond: Condvar::new(),
            threads: Mutex::new(Vec::new()),
            size,
        });
        let mut handles = Vec::with_capacity(size);
        for i in 0..size {
            let (core, init) = (core.clone(), self.init.clone());
            let h = std::thread::Builder::new()
                .name(format!("ThreadPoolWorker-{}", i + 1))
                .spawn(move || core.worker(init))
                .map_err(|e| Error::io("could not start a pool thread", e))?;
            handles.push(h);
        }
        *core.threads.lock().unwrap_or_else(|e| e.into_inner()) = handles;
        Ok(ThreadPool { core })
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
        self.core.stop(Some(RunState::Closed), None);
    }

    /// Fails every queued task with [`ErrorKind::Cancelled`]; running tasks
    /// finish (threads cannot be killed).
    pub fn terminate(&self) {
        self.core.stop(Some(RunState::Terminated), None);
    }

    /// Waits for the threads to finish.
    ///
    /// # Errors
    /// [`ErrorKind::PoolStillRunning`] before `close` or `terminate`.
    pub fn join(&self) -> Result<()> {
        if self.core.lock().state == RunState::Running {
            return Err(super::still_running());
        }
        let handles = std::mem::take(&mut *self.core.threads.lock().unwrap_or_else(|e| e.into_inner()));
        let me = std::thread::current().id();
        for h in handles {
            if h.thread().id() != me {
                let _ = h.join();
            }
        }
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
    pub(super) core: Arc<ThreadCore>,
    f: Arc<F>,
    _f: PhantomData<fn(A, M)>,
}

impl<F, A, M> ThreadRunner<F, A, M> {
    pub(crate) fn new(core: &Arc<ThreadCore>, f: F) -> Self {
        ThreadRunner { core: core.clone(), f: Arc::new(f), _f: PhantomData }
    }
}

impl<F, A, M, R> ChunkRunner<A, R> for ThreadRunner<F, A, M>
where
    F: TaskFn<A, M, Output = R>,
    A: Send + 'static,
    R: Send + 'static,
{
    fn run_chunk(&self, items: Vec<A>, done: ChunkDone<R>) {
        let f = self.f.clone();
        self.core.submit(Box::new(move |cancel| {
            let outcomes = match cancel {
                Some(e) => items.into_iter().map(|_| Err(e.clone())).collect(),
                None => items
                    .into_iter()
                    .map(|a| task::catch_panic(|| f.call(a)).map_err(|fl| fl.into_error(None)))
                    .collect(),
            };
            done(outcomes)
        }));
    }

    fn check_running(&self) -> Result<()> {
        self.core.check_running()
    }

    fn workers(&self) -> usize {
        self.core.size
    }
}
