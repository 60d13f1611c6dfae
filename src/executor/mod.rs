//! `ProcessPoolExecutor` and `ThreadPoolExecutor`: Python's
//! `concurrent.futures` executors, on the same worker and scheduling code as
//! [`Pool`](crate::Pool) and [`ThreadPool`](crate::ThreadPool).

pub(crate) mod exit;
mod future;

use std::sync::{Arc, Weak};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::engine::procs::{Init, ProcEngine, ProcOptions};
use crate::engine::threads::{ThreadEngine, ThreadOptions};
use crate::engine::{Engine, RunState, Ticket};
#[cfg(doc)]
use crate::error::ErrorKind;
use crate::error::{Error, Result};
use crate::pool::map::OneShot;
use crate::pool::{Completion, IMap, With};
use crate::progress::Progress;
use crate::task::TaskFn;

pub use future::{
    as_completed, wait, AsCompleted, DoneAndNotDone, Future, ReturnWhen, ALL_COMPLETED,
    FIRST_COMPLETED, FIRST_EXCEPTION,
};

/// What both executors are: an engine, and its place in the exit hook.
pub(crate) struct Executor<E: Engine> {
    engine: Arc<E>,
    exit: exit::Release,
}

impl<E: Engine> Executor<E> {
    pub(crate) fn new(engine: Arc<E>) -> Self {
        let exit = exit::register(Arc::downgrade(&engine) as Weak<dyn Engine>);
        Executor { engine, exit }
    }

    /// Submits one call through `runner` (made with `ticket`) and returns its
    /// future; with `limit` (a bound, and the function's name for the
    /// error), the future fails with `Timeout` once it passes and the call
    /// is stopped (see `With::timeout`).
    fn submit<A, R: Send + 'static, C: OneShot<A, R>>(
        &self,
        runner: impl FnOnce(Arc<Ticket>) -> C,
        args: A,
        limit: Option<(Duration, &'static str)>,
    ) -> Result<Future<R>> {
        if self.engine.lifecycle().state() != RunState::Running {
            return Err(Error::not_running_because("executor", "it was shut down"));
        }
        self.engine.check_running()?;
        let ticket = Ticket::new();
        let engine = Arc::downgrade(&self.engine) as Weak<dyn Engine>;
        let arm = |completion: &Arc<Completion<R>>| match limit {
            Some((limit, task)) => {
                crate::pool::deadline::arm_one(limit, task, completion, &ticket, engine.clone())
            }
            None => Ok(()),
        };
        let completion = runner(ticket.clone()).run(args, arm)?;
        Ok(Future::new(completion, ticket, engine))
    }

    fn shutdown(&self, Shutdown { wait, cancel_futures }: Shutdown) {
        if cancel_futures {
            self.engine.cancel_queued();
        }
        if wait {
            // Closes, cuts off a `map` iterator still being read (its reader
            // may be this very thread) and waits for the workers.
            self.engine.finish();
            // The done-callbacks of the work waited for have run too.
            crate::pool::callbacks::flush();
        } else {
            self.engine.close();
        }
        // Waited or told not to wait: the exit hook leaves this executor be.
        self.exit.release();
    }
}

/// How an executor shuts down: the options of
/// [`ProcessPoolExecutor::shutdown_with`] and
/// [`ThreadPoolExecutor::shutdown_with`]. The default (wait, run what is
/// queued) is what [`shutdown`](ProcessPoolExecutor::shutdown) does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shutdown {
    /// Return once every worker has exited (after running what it was
    /// given) and the done-callbacks of that work have run. Without it, the
    /// end of the program no longer waits for this executor's work either:
    /// work still pending when the program exits is lost.
    pub wait: bool,
    /// Cancel the queued tasks instead of running them.
    pub cancel_futures: bool,
}

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown { wait: true, cancel_futures: false }
    }
}

impl<E: Engine> Drop for Executor<E> {
    /// Stops taking tasks without waiting; queued tasks still run.
    fn drop(&mut self) {
        self.engine.close();
    }
}

/// The methods both executors share, over their own task bounds.
macro_rules! executor_methods {
    (
        face: $executor:ty,
        runner: |$engine:ident, $f:ident| $make:expr,
        bounds: [$($bounds:tt)*],
        once: |$oengine:ident, $of:ident| $make_once:expr,
        once_bounds: [$($once_bounds:tt)*]
    ) => {
        impl $executor {
            /// The most workers this executor starts.
            pub fn max_workers(&self) -> usize {
                self.inner.engine.workers()
            }

            /// What each worker has done so far (see
            /// [`PoolStats`](crate::PoolStats)): one entry per worker the
            /// executor may start.
            pub fn stats(&self) -> crate::PoolStats {
                self.inner.engine.stats()
            }

            /// Schedules `f(args)` and returns its future.
            ///
            /// # Errors
            /// [`ErrorKind::PoolNotRunning`] after [`shutdown`](Self::shutdown).
            ///
            /// # Examples
            ///
            /// ```
            /// let ex = multiproc::ProcessPoolExecutor::new(1)?;
            /// let fut = ex.submit(|x: u64| x * x, 7)?;
            /// assert_eq!(fut.result()?, 49);
            /// # Ok::<(), multiproc::Error>(())
            /// ```
            pub fn submit<F, A, M>(&self, $of: F, args: A) -> Result<Future<F::Output>>
            where $($once_bounds)*
            {
                let $oengine = &self.inner.engine;
                self.inner.submit(|ticket| $make_once.with_ticket(ticket), args, None)
            }

            /// `f` over `items`, results in input order. Lazy: input is read
            /// with a bounded read-ahead. One item per task; see
            /// [`chunksize`](Self::chunksize) for more.
            ///
            /// # Examples
            ///
            /// ```
            /// let ex = multiproc::ProcessPoolExecutor::new(2)?;
            /// let squares: Vec<u64> = ex.map(|x: u64| x * x, 0..4).collect::<Result<_, _>>()?;
            /// assert_eq!(squares, vec![0, 1, 4, 9]);
            /// # Ok::<(), multiproc::Error>(())
            /// ```
            pub fn map<F, A, M>(
                &self,
                f: F,
                items: impl IntoIterator<Item = A> + 'static,
            ) -> IMap<F::Output>
            where $($bounds)*
            {
                self.map_inner(f, items, &With::new(self))
            }

            /// [`map`](Self::map) with `chunksize` items per task (Python's
            /// `map(.., chunksize=)`): `ex.chunksize(10).map(f, items)`.
            pub fn chunksize(&self, chunksize: usize) -> With<'_, Self> {
                With::new(self).chunksize(chunksize)
            }

            /// [`map`](Self::map) reporting progress to `hook`:
            /// `ex.progress(|done, total| ..).map(f, items)`. See [`With`].
            pub fn progress(&self, hook: impl Progress + 'static) -> With<'_, Self> {
                With::new(self).progress(hook)
            }

            /// `submit` and `map` with a deadline of `timeout` for the
            /// result, counted from the call: `ex.timeout(d).submit(f, x)`.
            /// When it passes the future fails with [`ErrorKind::Timeout`]
            /// and the task is stopped (cancelled if queued; in a process
            /// pool, its worker killed and replaced). See [`With`].
            ///
            /// # Examples
            ///
            /// ```
            /// use std::time::Duration;
            ///
            /// let ex = multiproc::ProcessPoolExecutor::new(1)?;
            /// let fut = ex.timeout(Duration::from_secs(10)).submit(|x: u64| x + 1, 1)?;
            /// assert_eq!(fut.result()?, 2);
            /// # Ok::<(), multiproc::Error>(())
            /// ```
            pub fn timeout(&self, timeout: Duration) -> With<'_, Self> {
                With::new(self).timeout(timeout)
            }

            fn map_inner<F, A, M>(
                &self,
                $f: F,
                items: impl IntoIterator<Item = A> + 'static,
                with: &With<'_, Self>,
            ) -> IMap<F::Output>
            where $($bounds)*
            {
                let $engine = &self.inner.engine;
                let Some(limit) = with.timeout else {
                    return IMap::new($make, items, with.chunksize, true, with.progress.clone());
                };
                let late = crate::pool::deadline::Late::Drop;
                match crate::pool::deadline::Timed::<_, F::Output>::new::<A>(
                    $make,
                    limit,
                    std::any::type_name::<F>(),
                    late,
                ) {
                    Ok(runner) => IMap::new(runner, items, with.chunksize, true, with.progress.clone())
                        .with_timeout(limit),
                    Err(e) => IMap::failed(e),
                }
            }

            /// [`map`](Self::map) with an overall `timeout`: results that
            /// arrive in time are yielded, then one timeout error, then the
            /// iteration ends; the tasks still queued are cancelled and
            /// those running have their workers killed (the same as
            /// `ex.timeout(timeout).map(f, items)`).
            pub fn map_timeout<F, A, M>(
                &self,
                f: F,
                items: impl IntoIterator<Item = A> + 'static,
                timeout: Duration,
            ) -> IMap<F::Output>
            where $($bounds)*
            {
                self.map_inner(f, items, &With::new(self).timeout(timeout))
            }

            /// Stops taking tasks and returns once every worker has exited
            /// after running what it was given, and the done-callbacks of
            /// that work have run (Python's `shutdown()`). For the other
            /// ways, see [`shutdown_with`](Self::shutdown_with).
            pub fn shutdown(&self) {
                self.inner.shutdown(Shutdown::default())
            }

            /// Stops taking tasks as `how` says: without
            /// [`wait`](Shutdown::wait) it returns at once, with
            /// [`cancel_futures`](Shutdown::cancel_futures) queued tasks are
            /// cancelled rather than run.
            pub fn shutdown_with(&self, how: Shutdown) {
                self.inner.shutdown(how)
            }
        }

        impl With<'_, $executor> {
            /// [`submit`]($executor::submit) with these settings (a
            /// [`timeout`](With::timeout); the map settings do nothing here).
            ///
            /// # Errors
            /// As `submit`.
            pub fn submit<F, A, M>(&self, $of: F, args: A) -> Result<Future<F::Output>>
            where $($once_bounds)*
            {
                let $oengine = &self.face.inner.engine;
                let limit = self.timeout.map(|d| (d, std::any::type_name::<F>()));
                self.face.inner.submit(|ticket| $make_once.with_ticket(ticket), args, limit)
            }

            /// [`map`]($executor::map) with these settings.
            pub fn map<F, A, M>(
                &self,
                f: F,
                items: impl IntoIterator<Item = A> + 'static,
            ) -> IMap<F::Output>
            where $($bounds)*
            {
                self.face.map_inner(f, items, self)
            }

            /// [`map_timeout`]($executor::map_timeout) with these settings.
            pub fn map_timeout<F, A, M>(
                &self,
                f: F,
                items: impl IntoIterator<Item = A> + 'static,
                timeout: Duration,
            ) -> IMap<F::Output>
            where $($bounds)*
            {
                let with = With {
                    face: self.face,
                    chunksize: self.chunksize,
                    progress: self.progress.clone(),
                    timeout: Some(timeout),
                };
                self.face.map_inner(f, items, &with)
            }
        }

        impl std::fmt::Debug for $executor {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($executor))
                    .field("max_workers", &self.max_workers())
                    .finish()
            }
        }
    };
}

procs_face!(executor_methods, ProcessPoolExecutor);

threads_face!(executor_methods, ThreadPoolExecutor);

#[cfg(feature = "mpi")]
mpi_face!(executor_methods, crate::mpi::ProcessPoolExecutor);

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
/// ex.shutdown();
/// # Ok::<(), multiproc::Error>(())
/// ```
pub struct ProcessPoolExecutor {
    inner: Executor<ProcEngine>,
}

/// Options for a [`ProcessPoolExecutor`].
///
/// # Examples
///
/// ```
/// let ex = multiproc::ProcessPoolExecutor::builder().max_workers(2).build()?;
/// assert_eq!(ex.max_workers(), 2);
/// # Ok::<(), multiproc::Error>(())
/// ```
#[derive(Default)]
#[must_use = "a builder does nothing until .build() is called"]
pub struct ProcessPoolExecutorBuilder {
    options: ProcOptions,
}

impl ProcessPoolExecutorBuilder {
    /// At most this many worker processes (default: [`crate::cpu_count`]).
    pub fn max_workers(mut self, n: usize) -> Self {
        self.options.workers = Some(n);
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
        self.options.init = Some(Init::new::<F, A, M>(&args));
        self
    }

    /// Replace each worker after it has run `n` tasks.
    pub fn max_tasks_per_child(mut self, n: usize) -> Self {
        self.options.max_tasks_per_child = Some(n);
        self
    }

    /// Fail a task that runs longer than `timeout` with
    /// [`ErrorKind::Timeout`]; its worker is killed and replaced and the
    /// executor goes on (Python's executors have no such option).
    pub fn task_timeout(mut self, timeout: Duration) -> Self {
        self.options.task_timeout = Some(timeout);
        self
    }

    memory_cap_options!();

    /// Makes the executor (it starts no process until the first submit).
    ///
    /// # Errors
    /// [`ErrorKind::InvalidArgument`] for 0 workers, a quota of 0 tasks or a
    /// zero timeout.
    pub fn build(self) -> Result<ProcessPoolExecutor> {
        let engine = self.options.build(true, "max_workers")?;
        Ok(ProcessPoolExecutor { inner: Executor::new(engine) })
    }
}

impl ProcessPoolExecutor {
    /// An executor of at most `max_workers` processes.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidArgument`] for 0.
    ///
    /// # Examples
    ///
    /// ```
    /// let ex = multiproc::ProcessPoolExecutor::new(2)?;
    /// assert_eq!(ex.submit(|x: u64| x + 1, 1)?.result()?, 2);
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    pub fn new(max_workers: usize) -> Result<Self> {
        Self::builder().max_workers(max_workers).build()
    }

    /// A builder (initializer, max tasks per child, per-task timeout).
    pub fn builder() -> ProcessPoolExecutorBuilder {
        ProcessPoolExecutorBuilder::default()
    }

    /// Stops the executor now (Python 3.14's `terminate_workers`): every
    /// worker is killed, every queued or running call's future fails with
    /// [`ErrorKind::Cancelled`], and nothing more runs. Returns at once.
    ///
    /// Python sends `SIGTERM` here and `SIGKILL` in
    /// [`kill_workers`](Self::kill_workers); a Rust worker has no handler a
    /// task could run on `SIGTERM`, so both kill with `SIGKILL`, which no
    /// task can block or delay.
    ///
    /// # Examples
    ///
    /// ```
    /// let ex = multiproc::ProcessPoolExecutor::new(1)?;
    /// let slow = ex.submit(|ms: u64| std::thread::sleep(std::time::Duration::from_millis(ms)), 60_000)?;
    /// ex.terminate_workers();
    /// assert_eq!(slow.result().unwrap_err().kind(), multiproc::ErrorKind::Cancelled);
    /// assert!(ex.submit(|x: u32| x, 1).is_err());
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    pub fn terminate_workers(&self) {
        self.inner.engine.terminate();
        // Nothing is left for the end of the program to wait for.
        self.inner.exit.release();
    }

    /// As [`terminate_workers`](Self::terminate_workers) (Python 3.14's
    /// `kill_workers`).
    pub fn kill_workers(&self) {
        self.terminate_workers()
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
    inner: Executor<ThreadEngine>,
}

/// Options for a [`ThreadPoolExecutor`].
///
/// # Examples
///
/// ```
/// let ex = multiproc::ThreadPoolExecutor::builder().max_workers(2).build()?;
/// assert_eq!(ex.submit(|x: u32| x + 1, 1)?.result()?, 2);
/// # Ok::<(), multiproc::Error>(())
/// ```
#[derive(Default)]
#[must_use = "a builder does nothing until .build() is called"]
pub struct ThreadPoolExecutorBuilder {
    options: ThreadOptions,
}

impl ThreadPoolExecutorBuilder {
    /// At most this many threads (default: `min(32, cpu_count + 4)`).
    pub fn max_workers(mut self, n: usize) -> Self {
        self.options.threads = Some(n);
        self
    }

    /// A function each thread runs once before its first task.
    pub fn initializer(mut self, f: impl Fn() + Send + Sync + 'static) -> Self {
        self.options.init = Some(Arc::new(f));
        self
    }

    /// Names the threads `{prefix}_0`, `{prefix}_1`, … (Python's
    /// `thread_name_prefix`), as debuggers, panics and logs show them.
    ///
    /// # Examples
    ///
    /// ```
    /// let ex = multiproc::ThreadPoolExecutor::builder().thread_name_prefix("fetch").build()?;
    /// let name = ex.submit(|| std::thread::current().name().map(String::from), ())?;
    /// assert_eq!(name.result()?.as_deref(), Some("fetch_0"));
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    pub fn thread_name_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.options.name_prefix = Some(prefix.into());
        self
    }

    /// Makes the executor (it starts no thread until the first submit).
    ///
    /// # Errors
    /// [`ErrorKind::InvalidArgument`] for 0 workers.
    pub fn build(self) -> Result<ThreadPoolExecutor> {
        let default = (crate::cpu_count() + 4).min(32);
        let engine = self.options.build(true, default, "max_workers")?;
        Ok(ThreadPoolExecutor { inner: Executor::new(engine) })
    }
}

impl ThreadPoolExecutor {
    /// An executor of at most `max_workers` threads.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidArgument`] for 0.
    ///
    /// # Examples
    ///
    /// ```
    /// let ex = multiproc::ThreadPoolExecutor::new(2)?;
    /// assert_eq!(ex.submit(|x: u64| x + 1, 1)?.result()?, 2);
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    pub fn new(max_workers: usize) -> Result<Self> {
        Self::builder().max_workers(max_workers).build()
    }

    /// A builder (initializer, max workers, thread names).
    pub fn builder() -> ThreadPoolExecutorBuilder {
        ThreadPoolExecutorBuilder::default()
    }
}
