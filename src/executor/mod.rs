//! `ProcessPoolExecutor` and `ThreadPoolExecutor`: Python's
//! `concurrent.futures` executors, on the same worker and scheduling code as
//! [`Pool`](crate::Pool) and [`ThreadPool`](crate::ThreadPool).

pub(crate) mod exit;
mod future;

use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{Error, ErrorKind, Result};
use crate::pool::core::{Config, Core, Init, RunState, Ticket};
use crate::pool::thread::{ThreadCore, ThreadRunner};
use crate::pool::{apply_via, Completion, IMap, ProcRunner};
use crate::task::{self, TaskFn};

pub use future::{
    as_completed, wait, AsCompleted, DoneAndNotDone, Future, ReturnWhen, ALL_COMPLETED,
    FIRST_COMPLETED, FIRST_EXCEPTION,
};

fn shut_down_error() -> Error {
    Error::new(
        ErrorKind::PoolNotRunning,
        "cannot submit: the executor was shut down; create a new one",
    )
}

/// Submits one call and returns its future, tracked by a ticket.
fn submit_with<R: Send + 'static>(
    run: impl FnOnce(Arc<Ticket>) -> Arc<Completion<R>>,
    killer: Option<std::sync::Weak<Core>>,
) -> Future<R> {
    let ticket = Ticket::new();
    let completion = run(ticket.clone());
    Future::new(completion, ticket, killer)
}

/// A pool of worker processes with Python's `concurrent.futures` interface.
///
/// Workers start only as tasks need them (up to `max_workers`) and idle ones
/// are reused. Unlike Python's, a worker that dies breaks nothing but the one
/// task it was running: that future fails with an error naming the worker's
/// pid and signal or exit code, and a replacement takes the rest.
///
/// Dropping the executor does not wait and does not lose work: queued tasks
/// still run and their futures complete. Nor does the end of the program:
/// when `main` returns (or `std::process::exit` is called), the program
/// first waits for the work submitted to every executor not shut down with
/// `wait = false`, as Python does. Call
/// [`shutdown`](ProcessPoolExecutor::shutdown) to wait or to cancel.
///
/// # Examples
///
/// ```
/// use multiproc::ProcessPoolExecutor;
///
/// fn cube(x: i64) -> i64 { x * x * x }
///
/// let ex = ProcessPoolExecutor::new(2)?;
/// let futures: Vec<_> = (1..=3).map(|i| ex.submit(cube, i)).collect::<Result<_, _>>()?;
/// let cubes: Vec<i64> = futures.iter().map(|f| f.result().unwrap()).collect();
/// assert_eq!(cubes, vec![1, 8, 27]);
/// let squares: Vec<i64> = ex.map(|x: i64| x * x, 1..=3).map(Result::unwrap).collect();
/// assert_eq!(squares, vec![1, 4, 9]);
/// ex.shutdown(true, false);
/// # Ok::<(), multiproc::Error>(())
/// ```
pub struct ProcessPoolExecutor {
    core: Arc<Core>,
    exit: exit::Release,
}

/// Options for a [`ProcessPoolExecutor`].
#[derive(Default)]
#[must_use = "a builder does nothing until .build() is called"]
pub struct ProcessPoolExecutorBuilder {
    max_workers: Option<usize>,
    init: Option<Init>,
    max_tasks_per_child: Option<usize>,
}

impl ProcessPoolExecutorBuilder {
    /// At most this many worker processes (default: [`crate::cpu_count`]).
    pub fn max_workers(mut self, n: usize) -> Self {
        self.max_workers = Some(n);
        self
    }

    /// A function each worker runs once before its first task. If it panics,
    /// every task fails with [`ErrorKind::InitializerFailed`].
    pub fn initializer<F, A, M>(mut self, _f: F, args: A) -> Self
    where
        F: TaskFn<A, M> + Copy,
        A: Serialize + DeserializeOwned,
        F::Output: Serialize,
    {
        self.init = Some(Init::new::<F, A, M>(&args));
        self
    }

    /// Replace each worker after it has run `n` tasks.
    pub fn max_tasks_per_child(mut self, n: usize) -> Self {
        self.max_tasks_per_child = Some(n);
        self
    }

    /// Makes the executor (it starts no process until the first submit).
    ///
    /// # Errors
    /// [`ErrorKind::InvalidArgument`] for 0 workers or a quota of 0 tasks.
    pub fn build(self) -> Result<ProcessPoolExecutor> {
        let workers = self.max_workers.unwrap_or_else(crate::cpu_count);
        if workers == 0 {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                "max_workers must be at least 1 (got 0)",
            ));
        }
        if self.max_tasks_per_child == Some(0) {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                "max_tasks_per_child must be at least 1 (got 0)",
            ));
        }
        let core = Core::new(Config {
            processes: workers,
            init: self.init,
            max_tasks_per_child: self.max_tasks_per_child,
            task_timeout: None,
            fingerprint: task::fingerprint(),
            lazy: true,
        })?;
        let exit = exit::register(Arc::downgrade(&core) as std::sync::Weak<dyn exit::Finish>);
        Ok(ProcessPoolExecutor { core, exit })
    }
}

impl ProcessPoolExecutor {
    /// An executor of at most `max_workers` processes.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidArgument`] for 0.
    pub fn new(max_workers: usize) -> Result<Self> {
        Self::builder().max_workers(max_workers).build()
    }

    /// A builder (initializer, max tasks per child).
    pub fn builder() -> ProcessPoolExecutorBuilder {
        ProcessPoolExecutorBuilder::default()
    }

    /// The most workers this executor starts.
    pub fn max_workers(&self) -> usize {
        self.core.config.processes
    }

    /// Schedules `f(args)` and returns its future.
    ///
    /// # Errors
    /// [`ErrorKind::PoolNotRunning`] after [`shutdown`](Self::shutdown).
    pub fn submit<F, A, M>(&self, f: F, args: A) -> Result<Future<F::Output>>
    where
        F: TaskFn<A, M> + Copy,
        A: Serialize + DeserializeOwned + 'static,
        F::Output: Serialize + DeserializeOwned + Send + 'static,
        M: 'static,
    {
        let _ = f;
        if self.core.lock().state != RunState::Running {
            return Err(shut_down_error());
        }
        self.core.check_running()?;
        let core = &self.core;
        Ok(submit_with(
            |ticket| {
                apply_via(&ProcRunner::<F, A, M>::new(core).with_ticket(ticket), args)
                    .into_completion()
            },
            Some(Arc::downgrade(&self.core)),
        ))
    }

    /// `f` over `items`, results in input order. Lazy: input is read with a
    /// bounded read-ahead.
    pub fn map<F, A, M>(
        &self,
        f: F,
        items: impl IntoIterator<Item = A> + 'static,
    ) -> IMap<F::Output>
    where
        F: TaskFn<A, M> + Copy,
        A: Serialize + DeserializeOwned + 'static,
        F::Output: Serialize + DeserializeOwned + Send + 'static,
        M: 'static,
    {
        let _ = f;
        IMap::new(ProcRunner::<F, A, M>::new(&self.core), items, None, true)
    }

    /// [`map`](Self::map) with an overall `timeout`: results that arrive in
    /// time are yielded, then one timeout error, then the iteration ends.
    pub fn map_timeout<F, A, M>(
        &self,
        f: F,
        items: impl IntoIterator<Item = A> + 'static,
        timeout: Duration,
    ) -> IMap<F::Output>
    where
        F: TaskFn<A, M> + Copy,
        A: Serialize + DeserializeOwned + 'static,
        F::Output: Serialize + DeserializeOwned + Send + 'static,
        M: 'static,
    {
        self.map(f, items).with_timeout(timeout)
    }

    /// Stops taking tasks. With `cancel_futures`, queued tasks are cancelled;
    /// otherwise they still run. With `wait`, returns once every worker has
    /// exited (after running what it was given). Without `wait`, the end of
    /// the program no longer waits for this executor's work either: work
    /// still pending when the program exits is lost.
    pub fn shutdown(&self, wait: bool, cancel_futures: bool) {
        if cancel_futures {
            self.core.cancel_queued();
        }
        if wait {
            // Closes, cuts off a `map` iterator still being read (its reader
            // may be this very thread) and waits for the workers.
            exit::Finish::finish(&*self.core);
            // The done-callbacks of the work waited for have run too.
            crate::pool::callbacks::flush();
        } else {
            self.core.close();
        }
        // Waited or told not to wait: the exit hook leaves this executor be.
        self.exit.release();
    }
}

impl Drop for ProcessPoolExecutor {
    /// Stops taking tasks without waiting; queued tasks still run.
    fn drop(&mut self) {
        self.core.close();
    }
}

impl std::fmt::Debug for ProcessPoolExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessPoolExecutor").field("max_workers", &self.max_workers()).finish()
    }
}

/// A pool of threads with Python's `concurrent.futures` interface.
///
/// Threads start only as tasks need them (up to `max_workers`, by default
/// `min(32, cpu_count + 4)` as in Python) and idle ones are reused. Tasks may
/// be any `Send + 'static` closure. Dropping the executor does not wait:
/// queued tasks still run, and the end of the program waits for them unless
/// the executor was shut down with `wait = false`, as in Python.
///
/// # Examples
///
/// ```
/// use multiproc::ThreadPoolExecutor;
///
/// let base = 100;
/// let ex = ThreadPoolExecutor::new(2)?;
/// let f = ex.submit(move |x: i32| x + base, 1)?;
/// assert_eq!(f.result()?, 101);
/// # Ok::<(), multiproc::Error>(())
/// ```
pub struct ThreadPoolExecutor {
    core: Arc<ThreadCore>,
    exit: exit::Release,
}

/// Options for a [`ThreadPoolExecutor`].
#[derive(Default)]
#[must_use = "a builder does nothing until .build() is called"]
pub struct ThreadPoolExecutorBuilder {
    max_workers: Option<usize>,
    init: Option<Arc<dyn Fn() + Send + Sync>>,
}

impl ThreadPoolExecutorBuilder {
    /// At most this many threads (default: `min(32, cpu_count + 4)`).
    pub fn max_workers(mut self, n: usize) -> Self {
        self.max_workers = Some(n);
        self
    }

    /// A function each thread runs once before its first task.
    pub fn initializer(mut self, f: impl Fn() + Send + Sync + 'static) -> Self {
        self.init = Some(Arc::new(f));
        self
    }

    /// Makes the executor (it starts no thread until the first submit).
    ///
    /// # Errors
    /// [`ErrorKind::InvalidArgument`] for 0 workers.
    pub fn build(self) -> Result<ThreadPoolExecutor> {
        let n = self.max_workers.unwrap_or_else(|| (crate::cpu_count() + 4).min(32));
        let core = ThreadCore::new(n, self.init, true)?;
        let exit = exit::register(Arc::downgrade(&core) as std::sync::Weak<dyn exit::Finish>);
        Ok(ThreadPoolExecutor { core, exit })
    }
}

impl ThreadPoolExecutor {
    /// An executor of at most `max_workers` threads.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidArgument`] for 0.
    pub fn new(max_workers: usize) -> Result<Self> {
        Self::builder().max_workers(max_workers).build()
    }

    /// A builder (initializer, max workers).
    pub fn builder() -> ThreadPoolExecutorBuilder {
        ThreadPoolExecutorBuilder::default()
    }

    /// The most threads this executor starts.
    pub fn max_workers(&self) -> usize {
        self.core.size()
    }

    /// Schedules `f(args)` and returns its future.
    ///
    /// # Errors
    /// [`ErrorKind::PoolNotRunning`] after [`shutdown`](Self::shutdown).
    pub fn submit<F, A, M>(&self, f: F, args: A) -> Result<Future<F::Output>>
    where
        F: TaskFn<A, M>,
        A: Send + 'static,
        F::Output: Send + 'static,
        M: 'static,
    {
        if !self.core.is_running() {
            return Err(shut_down_error());
        }
        let core = &self.core;
        Ok(submit_with(
            |ticket| {
                apply_via(&ThreadRunner::new(core, f).with_ticket(ticket), args).into_completion()
            },
            None,
        ))
    }

    /// `f` over `items`, results in input order, read lazily.
    pub fn map<F, A, M>(
        &self,
        f: F,
        items: impl IntoIterator<Item = A> + 'static,
    ) -> IMap<F::Output>
    where
        F: TaskFn<A, M>,
        A: Send + 'static,
        F::Output: Send + 'static,
        M: 'static,
    {
        IMap::new(ThreadRunner::new(&self.core, f), items, None, true)
    }

    /// [`map`](Self::map) with an overall `timeout`.
    pub fn map_timeout<F, A, M>(
        &self,
        f: F,
        items: impl IntoIterator<Item = A> + 'static,
        timeout: Duration,
    ) -> IMap<F::Output>
    where
        F: TaskFn<A, M>,
        A: Send + 'static,
        F::Output: Send + 'static,
        M: 'static,
    {
        self.map(f, items).with_timeout(timeout)
    }

    /// Stops taking tasks; optionally cancels queued ones; optionally waits
    /// for the threads to finish. Without `wait`, the end of the program no
    /// longer waits for this executor's work.
    pub fn shutdown(&self, wait: bool, cancel_futures: bool) {
        if cancel_futures {
            self.core.cancel_queued();
        }
        if wait {
            // Closes, cuts off a `map` iterator still being read (its reader
            // may be this very thread) and waits for the workers.
            exit::Finish::finish(&*self.core);
            // The done-callbacks of the work waited for have run too.
            crate::pool::callbacks::flush();
        } else {
            self.core.close();
        }
        // Waited or told not to wait: the exit hook leaves this executor be.
        self.exit.release();
    }
}

impl Drop for ThreadPoolExecutor {
    fn drop(&mut self) {
        self.core.close();
    }
}

impl std::fmt::Debug for ThreadPoolExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThreadPoolExecutor").field("max_workers", &self.max_workers()).finish()
    }
}
