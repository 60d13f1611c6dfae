//! The thread backend: the pool's tasks run on threads of this process.
//!
//! Jobs wait in one queue under a mutex; idle threads sleep on its condvar.
//! The run state lives in the shared [`Lifecycle`]; a thread reads it under
//! the queue's lock and every change to it is followed by [`wake_all`]
//! (which takes that lock), so no change is missed by a thread about to
//! sleep.
//!
//! [`wake_all`]: Engine::wake_all

use std::collections::VecDeque;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use super::{Engine, Lifecycle, RunState, Ticket};
use crate::error::{Error, ErrorKind, Result};
use crate::pool::map::{ChunkDone, ChunkRunner};
use crate::task::{self, TaskFn};

/// A job: called with `None` to run, or with the reason it will not run.
type Job = Box<dyn FnOnce(Option<Error>) + Send>;
pub(crate) type Initializer = Arc<dyn Fn() + Send + Sync>;

/// What a thread-pool builder collects.
#[derive(Default)]
pub(crate) struct ThreadOptions {
    pub(crate) threads: Option<usize>,
    pub(crate) init: Option<Initializer>,
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
        ThreadEngine::new(size, self.init, lazy)
    }
}

pub(crate) struct ThreadEngine {
    lifecycle: Lifecycle,
    queue: Mutex<VecDeque<Job>>,
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

impl ThreadEngine {
    fn new(size: usize, init: Option<Initializer>, lazy: bool) -> Result<Arc<ThreadEngine>> {
        let engine = Arc::new(ThreadEngine {
            lifecycle: Lifecycle::new(),
            queue: Mutex::new(VecDeque::new()),
            cond: Condvar::new(),
            threads: Mutex::new(Vec::new()),
            size,
            init,
            lazy,
            busy: AtomicUsize::new(0),
        });
        if !lazy {
            for _ in 0..size {
                engine.start_thread()?;
            }
        }
        Ok(engine)
    }

    fn lock(&self) -> MutexGuard<'_, VecDeque<Job>> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn start_thread(self: &Arc<Self>) -> Result<()> {
        let mut threads = self.threads.lock().unwrap_or_else(|e| e.into_inner());
        if threads.len() >= self.size {
            return Ok(());
        }
        let engine = self.clone();
        let h = std::thread::Builder::new()
            .name(format!("ThreadPoolWorker-{}", threads.len() + 1))
            .spawn(move || engine.worker())
            .map_err(|e| Error::io("could not start a pool thread", e))?;
        threads.push(h);
        Ok(())
    }

    fn submit(self: &Arc<Self>, job: Job, held: bool) {
        let mut q = self.lock();
        // Checked under the queue's lock: see the rule in `lifecycle`.
        if let Some(err) = self.lifecycle.refusal(held) {
            drop(q);
            return job(Some(err));
        }
        q.push_back(job);
        let queued = q.len();
        drop(q);
        self.cond.notify_one();
        let started = self.threads.lock().map_or(self.size, |t| t.len());
        if self.lazy && self.busy.load(Ordering::SeqCst) + queued > started {
            if let Err(e) = self.start_thread() {
                self.break_with(e);
            }
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
                return self.break_with(err);
            }
        }
        loop {
            let mut q = self.lock();
            let job = loop {
                if self.lifecycle.is_stopped() {
                    return;
                }
                if let Some(job) = q.pop_front() {
                    break job;
                }
                if self.lifecycle.finished(true) {
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
        drop(self.lock());
        self.cond.notify_all();
    }

    fn fail_queued(&self, err: Error) {
        let jobs: Vec<Job> = self.lock().drain(..).collect();
        for j in jobs {
            j(Some(err.clone()));
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
    ticket: Option<Arc<Ticket>>,
    _f: PhantomData<fn(A, M)>,
}

impl<F, A, M> ThreadRunner<F, A, M> {
    pub(crate) fn new(engine: &Arc<ThreadEngine>, f: F) -> Self {
        ThreadRunner { engine: engine.clone(), f: Arc::new(f), ticket: None, _f: PhantomData }
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
        let (f, engine) = (self.f.clone(), self.engine.clone());
        self.engine.submit(
            Box::new(move |cancel| {
                let outcomes = match cancel {
                    Some(e) => items.into_iter().map(|_| Err(e.clone())).collect(),
                    None => {
                        if ticket.as_ref().is_some_and(|t| !t.start()) {
                            // Cancelled while queued: `cancel` already completed it.
                            return engine.release();
                        }
                        let outcomes = items
                            .into_iter()
                            .map(|a| {
                                task::catch_panic(|| f.call(a)).map_err(|fl| fl.into_error(None))
                            })
                            .collect();
                        engine.release();
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
}
