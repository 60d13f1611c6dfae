//! `Pool` (worker processes) and `ThreadPool` (threads), with one API.

pub(crate) mod callbacks;
pub(crate) mod deadline;
pub(crate) mod map;
mod result;

use std::sync::{Arc, Weak};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use self::map::{ChunkRunner, OneShot};
use crate::engine::procs::{Init, ProcEngine, ProcOptions};
use crate::engine::threads::{ThreadEngine, ThreadOptions};
use crate::engine::{Engine, Ticket};
#[cfg(doc)]
use crate::error::ErrorKind;
use crate::error::Result;
use crate::progress::Progress;
use crate::task::TaskFn;

pub use self::map::IMap;
pub use self::result::AsyncResult;

pub(crate) use self::result::Completion;

/// A pool of worker processes: Python's `multiprocessing.Pool`.
///
/// Workers are this same executable, started in parallel and diverted before
/// `main` runs; each has one long-lived channel to the pool and holds a few
/// tasks at a time. A worker that panics survives; a worker that dies (signal,
/// `exit`, abort) fails only the task it was running, and is replaced.
///
/// Tasks are `fn` items or closures that capture nothing, whose arguments and
/// result are serde types. A function of several arguments takes them as a
/// tuple.
///
/// # Examples
///
/// ```
/// use multiproc::Pool;
///
/// fn square(x: u64) -> u64 { x * x }
/// fn add(a: u64, b: u64) -> u64 { a + b }
///
/// let pool = Pool::new(2)?;
/// assert_eq!(pool.map(square, 0..5)?, vec![0, 1, 4, 9, 16]);
/// assert_eq!(pool.apply(add, (2, 3))?, 5);
/// assert_eq!(pool.apply_async(square, 7).get()?, 49);
/// let n: u64 = pool.imap_unordered(|x: u64| x + 1, 0..100).map(|r| r.unwrap()).sum();
/// assert_eq!(n, 5050);
/// pool.close();
/// pool.join()?;
/// # Ok::<(), multiproc::Error>(())
/// ```
pub struct Pool {
    engine: Arc<ProcEngine>,
}

/// Options for a [`Pool`]: `Pool::builder().processes(4).build()`.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
///
/// let pool = multiproc::Pool::builder()
///     .processes(2)
///     .max_tasks_per_child(100)
///     .task_timeout(Duration::from_secs(30))
///     .build()?;
/// assert_eq!(pool.processes(), 2);
/// # Ok::<(), multiproc::Error>(())
/// ```
#[derive(Default)]
#[must_use = "a builder does nothing until .build() is called"]
pub struct PoolBuilder {
    options: ProcOptions,
}

impl PoolBuilder {
    /// The number of worker processes (default: [`crate::cpu_count`]).
    pub fn processes(mut self, n: usize) -> Self {
        self.options.workers = Some(n);
        self
    }

    /// A function each worker runs once, before its first task, with `args`.
    /// If it panics, the pool fails every task with
    /// [`ErrorKind::InitializerFailed`] rather than starting workers forever.
    pub fn initializer<F, A, M>(mut self, _f: F, args: A) -> Self
    where
        F: TaskFn<A, M> + Copy,
        A: Serialize + DeserializeOwned,
        F::Output: Serialize,
    {
        self.options.init = Some(Init::new::<F, A, M>(&args));
        self
    }

    /// Replace each worker after it has run `n` tasks (a chunk of a `map` is
    /// one task), as Python's `maxtasksperchild`.
    pub fn max_tasks_per_child(mut self, n: usize) -> Self {
        self.options.max_tasks_per_child = Some(n);
        self
    }

    /// Fail a task that runs longer than `timeout` with
    /// [`ErrorKind::Timeout`]; its worker is killed and replaced and the pool
    /// goes on.
    pub fn task_timeout(mut self, timeout: Duration) -> Self {
        self.options.task_timeout = Some(timeout);
        self
    }

    memory_cap_options!();

    /// Makes the pool's workers see a parent of another build. For testing
    /// the build check only.
    #[doc(hidden)]
    pub fn simulate_build_mismatch(mut self) -> Self {
        self.options.simulate_mismatch = true;
        self
    }

    /// Starts the workers (in parallel; this does not wait for them).
    ///
    /// # Errors
    /// [`ErrorKind::InvalidArgument`] for 0 processes, a quota of 0 tasks, or
    /// a zero timeout; [`ErrorKind::Io`] when the pool's threads cannot start.
    pub fn build(self) -> Result<Pool> {
        Ok(Pool { engine: self.options.build(false, "processes")? })
    }
}

/// Submits one item as its own task; the result completes with its outcome.
pub(crate) fn apply_via<A, R: Send + 'static>(
    runner: &impl ChunkRunner<A, R>,
    args: A,
) -> AsyncResult<R> {
    match runner.run_one(args, map::unarmed) {
        Ok(completion) => AsyncResult::new(completion),
        Err(e) => AsyncResult::failed(e),
    }
}

/// A pool or executor seen with settings for the maps called through it:
/// `pool.chunksize(10).progress(hook).map(f, items)`.
///
/// - [`chunksize`](With::chunksize): items per task. A chunk travels as one
///   task, which saves round trips for short tasks. A chunksize of 0 makes
///   every call fail with [`ErrorKind::InvalidArgument`].
/// - [`progress`](With::progress): a [`Progress`] hook told how many items
///   have finished, from the pool's threads, as chunks complete.
/// - [`timeout`](With::timeout): a deadline for the call's result, counted
///   from the call, for one call (`apply`, `apply_async`, an executor's
///   `submit`) and the map family alike. When it passes the result fails
///   with [`ErrorKind::Timeout`] and the call's work stops: what is still
///   queued never runs, and a task running in a worker process has its
///   worker killed and replaced (as the pool's `task_timeout`, but for this
///   call only, and counted from the call rather than from the task's
///   start). A thread cannot be killed: its task runs on and its result is
///   dropped. A map's timeout bounds the whole map; an `imap` yields the
///   results that came in time, then one timeout error, then ends.
///
/// # Examples
///
/// ```
/// let pool = multiproc::ThreadPool::new(2)?;
/// let done = std::sync::atomic::AtomicU64::new(0);
/// let done = std::sync::Arc::new(done);
/// let seen = done.clone();
/// let hook = move |n: u64, _: Option<u64>| seen.store(n, std::sync::atomic::Ordering::Relaxed);
/// let squares = pool.chunksize(25).progress(hook).map(|x: u64| x * x, 0..1000)?;
/// assert_eq!(squares[999], 998_001);
/// assert_eq!(done.load(std::sync::atomic::Ordering::Relaxed), 1000);
/// # Ok::<(), multiproc::Error>(())
/// ```
#[derive(Clone)]
#[must_use = "settings do nothing until a map is called through them"]
pub struct With<'a, P> {
    pub(crate) face: &'a P,
    pub(crate) chunksize: Option<usize>,
    pub(crate) progress: Option<Arc<dyn Progress>>,
    pub(crate) timeout: Option<Duration>,
}

impl<'a, P> With<'a, P> {
    pub(crate) fn new(face: &'a P) -> Self {
        With { face, chunksize: None, progress: None, timeout: None }
    }

    /// A deadline of `timeout` from the call for the result of each call
    /// made through this view; see [`With`] for what happens when it passes.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use multiproc::{ErrorKind, Pool};
    ///
    /// fn nap(ms: u64) -> u64 { std::thread::sleep(Duration::from_millis(ms)); ms }
    ///
    /// let pool = Pool::new(1)?;
    /// let err = pool.timeout(Duration::from_millis(100)).apply(nap, 60_000).unwrap_err();
    /// assert_eq!(err.kind(), ErrorKind::Timeout);
    /// // The worker that ran it was killed and replaced: the pool goes on.
    /// assert_eq!(pool.timeout(Duration::from_secs(30)).apply(nap, 1)?, 1);
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// `chunksize` items per task (default: the face's own rule).
    pub fn chunksize(mut self, chunksize: usize) -> Self {
        self.chunksize = Some(chunksize);
        self
    }

    /// Reports the map's progress to `hook`: a closure
    /// `Fn(done: u64, total: Option<u64>)`, anything implementing
    /// [`Progress`], or with the `progress` feature an
    /// `indicatif::ProgressBar` (see `multiproc::progress::bar`).
    pub fn progress(mut self, hook: impl Progress + 'static) -> Self {
        self.progress = Some(Arc::new(hook));
        self
    }
}

impl<P: std::fmt::Debug> std::fmt::Debug for With<'_, P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("With")
            .field("face", self.face)
            .field("chunksize", &self.chunksize)
            .field("progress", &self.progress.is_some())
            .field("timeout", &self.timeout)
            .finish()
    }
}

macro_rules! pool_methods {
    (
        face: $pool:ty,
        runner: |$engine:ident, $f:ident| $make:expr,
        bounds: [$($bounds:tt)*],
        once: |$oengine:ident, $of:ident| $make_once:expr,
        once_bounds: [$($once_bounds:tt)*]
    ) => {
        impl $pool {
            /// The number of workers.
            pub fn processes(&self) -> usize {
                self.engine.workers()
            }

            /// What each worker has done so far: tasks run, time busy, idle
            /// and decoding results, restarts and why, the age of the task
            /// running now. Always kept; its `Display` is a table. See
            /// [`PoolStats`](crate::PoolStats).
            ///
            /// # Examples
            ///
            /// ```
            /// let pool = multiproc::Pool::new(1)?;
            /// pool.apply(|x: u32| x + 1, 1)?;
            /// println!("{}", pool.stats()); // a table, one row per worker
            /// # Ok::<(), multiproc::Error>(())
            /// ```
            pub fn stats(&self) -> crate::PoolStats {
                self.engine.stats()
            }

            /// Stops taking tasks; queued tasks still run. Then call
            /// [`join`](Self::join).
            pub fn close(&self) {
                self.engine.close();
            }

            /// Fails every queued task with [`ErrorKind::Cancelled`] and runs
            /// nothing more. A process pool kills its workers at once (their
            /// running tasks fail with `Cancelled` too); a thread pool lets
            /// running tasks finish, as threads cannot be killed. Nothing
            /// blocks.
            pub fn terminate(&self) {
                self.engine.terminate();
            }

            /// Waits until every worker has exited: after
            /// [`close`](Self::close), once every queued task has run; after
            /// [`terminate`](Self::terminate), at once. As in Python, the
            /// callbacks of the pool's results have run when it returns.
            ///
            /// # Errors
            /// [`ErrorKind::PoolStillRunning`] when neither was called first,
            /// or when an `imap` iterator started before `close()` still has
            /// input to submit.
            pub fn join(&self) -> Result<()> {
                self.engine.join()
            }

            /// Runs `f(args)` in the pool and waits for its result.
            ///
            /// # Errors
            /// The task's error (see [`AsyncResult::get`]) or
            /// [`ErrorKind::PoolNotRunning`].
            ///
            /// # Examples
            ///
            /// ```
            /// fn add(a: u64, b: u64) -> u64 { a + b }
            ///
            /// let pool = multiproc::Pool::new(1)?;
            /// assert_eq!(pool.apply(add, (2, 3))?, 5); // several arguments: a tuple
            /// # Ok::<(), multiproc::Error>(())
            /// ```
            pub fn apply<F, A, M>(&self, $of: F, args: A) -> Result<F::Output>
            where $($once_bounds)*
            {
                let $oengine = &self.engine;
                OneShot::apply($make_once, args)
            }

            /// Submits `f(args)` and returns at once.
            ///
            /// # Examples
            ///
            /// ```
            /// let pool = multiproc::Pool::new(1)?;
            /// let r = pool.apply_async(|x: u64| x * x, 7);
            /// assert_eq!(r.get()?, 49);
            /// # Ok::<(), multiproc::Error>(())
            /// ```
            pub fn apply_async<F, A, M>(&self, $of: F, args: A) -> AsyncResult<F::Output>
            where $($once_bounds)*
            {
                let $oengine = &self.engine;
                if let Err(e) = $oengine.check_running() {
                    return AsyncResult::failed(e);
                }
                match OneShot::run($make_once, args, $crate::pool::map::unarmed) {
                    Ok(completion) => AsyncResult::new(completion),
                    Err(e) => AsyncResult::failed(e),
                }
            }

            /// Applies `f` to every item, in chunks of Python's default size,
            /// and returns the results in input order.
            ///
            /// The input is read while the tasks run, a bounded number of
            /// chunks ahead of the results (a few per worker), so a long
            /// input is never held all at once in its encoded form; the
            /// chunks already read still run if the pool is closed meanwhile.
            /// Every item runs, even after a task error (as in Python).
            ///
            /// # Errors
            /// The first task error to arrive fails the whole call; an input
            /// iterator that panics fails it with an
            /// [`ErrorKind::TaskPanicked`] error naming the input (chunks read
            /// before the panic may have run).
            pub fn map<F, A, M>(
                &self,
                f: F,
                items: impl IntoIterator<Item = A>,
            ) -> Result<Vec<F::Output>>
            where $($bounds)*
            {
                self.map_inner(f, items, &With::new(self), true).get()
            }

            /// Like [`map`](Self::map) but returns at once; a success callback
            /// gets the whole `Vec`.
            pub fn map_async<F, A, M>(
                &self,
                f: F,
                items: impl IntoIterator<Item = A>,
            ) -> AsyncResult<Vec<F::Output>>
            where $($bounds)*
            {
                self.map_inner(f, items, &With::new(self), false)
            }

            /// Like [`map`](Self::map) for functions of several arguments,
            /// given as tuples.
            ///
            /// # Errors
            /// As [`map`](Self::map).
            pub fn starmap<F, A, M>(
                &self,
                f: F,
                items: impl IntoIterator<Item = A>,
            ) -> Result<Vec<F::Output>>
            where $($bounds)*
            {
                self.map(f, items)
            }

            /// Like [`map_async`](Self::map_async) for functions of several
            /// arguments, given as tuples.
            pub fn starmap_async<F, A, M>(
                &self,
                f: F,
                items: impl IntoIterator<Item = A>,
            ) -> AsyncResult<Vec<F::Output>>
            where $($bounds)*
            {
                self.map_async(f, items)
            }

            /// Results in input order as they become available. Reads `items`
            /// lazily, keeping a bounded number of tasks in flight.
            ///
            /// # Examples
            ///
            /// ```
            /// let pool = multiproc::Pool::new(2)?;
            /// let squares: Vec<u64> = pool.imap(|x: u64| x * x, 0..5).collect::<Result<_, _>>()?;
            /// assert_eq!(squares, vec![0, 1, 4, 9, 16]);
            /// # Ok::<(), multiproc::Error>(())
            /// ```
            pub fn imap<F, A, M>(
                &self,
                f: F,
                items: impl IntoIterator<Item = A> + 'static,
            ) -> IMap<F::Output>
            where $($bounds)*
            {
                self.imap_inner(f, items, &With::new(self), true)
            }

            /// Results in the order tasks finish. Reads `items` lazily, keeping
            /// a bounded number of tasks in flight.
            ///
            /// # Examples
            ///
            /// ```
            /// let pool = multiproc::Pool::new(2)?;
            /// let sum: u64 = pool.imap_unordered(|x: u64| x + 1, 0..100).map(|r| r.unwrap()).sum();
            /// assert_eq!(sum, 5050);
            /// # Ok::<(), multiproc::Error>(())
            /// ```
            pub fn imap_unordered<F, A, M>(
                &self,
                f: F,
                items: impl IntoIterator<Item = A> + 'static,
            ) -> IMap<F::Output>
            where $($bounds)*
            {
                self.imap_inner(f, items, &With::new(self), false)
            }

            /// The map family with `chunksize` items per task:
            /// `pool.chunksize(10).map(f, items)`.
            pub fn chunksize(&self, chunksize: usize) -> With<'_, Self> {
                With::new(self).chunksize(chunksize)
            }

            /// The map family reporting progress to `hook`:
            /// `pool.progress(|done, total| ..).map(f, items)`. See [`With`].
            pub fn progress(&self, hook: impl Progress + 'static) -> With<'_, Self> {
                With::new(self).progress(hook)
            }

            /// Every call through the view with a deadline of `timeout`
            /// for its result: `pool.timeout(d).apply(f, x)`,
            /// `pool.timeout(d).map(f, items)`. See [`With`].
            ///
            /// # Examples
            ///
            /// ```
            /// use std::time::Duration;
            ///
            /// fn nap(ms: u64) -> u64 { std::thread::sleep(Duration::from_millis(ms)); ms }
            ///
            /// let pool = multiproc::Pool::new(1)?;
            /// assert_eq!(pool.timeout(Duration::from_secs(10)).apply(nap, 1)?, 1);
            /// let late = pool.timeout(Duration::from_millis(50)).apply(nap, 5_000);
            /// assert!(late.unwrap_err().is_timeout()); // the worker was killed and replaced
            /// # Ok::<(), multiproc::Error>(())
            /// ```
            pub fn timeout(&self, timeout: Duration) -> With<'_, Self> {
                With::new(self).timeout(timeout)
            }

            fn map_inner<F, A, M>(
                &self,
                $f: F,
                items: impl IntoIterator<Item = A>,
                with: &With<'_, Self>,
                waited: bool,
            ) -> AsyncResult<Vec<F::Output>>
            where $($bounds)*
            {
                let $engine = &self.engine;
                if let Err(e) = $engine.check_running() {
                    return AsyncResult::failed(e);
                }
                let Some(limit) = with.timeout else {
                    return map::map_async(&$make, items, with.chunksize, with.progress.clone(), waited);
                };
                match deadline::Timed::<_, F::Output>::new::<A>(
                    $make,
                    limit,
                    std::any::type_name::<F>(),
                    deadline::Late::Fail,
                ) {
                    Ok(runner) => map::map_async(&runner, items, with.chunksize, with.progress.clone(), waited),
                    Err(e) => AsyncResult::failed(e),
                }
            }

            fn imap_inner<F, A, M>(
                &self,
                $f: F,
                items: impl IntoIterator<Item = A> + 'static,
                with: &With<'_, Self>,
                ordered: bool,
            ) -> IMap<F::Output>
            where $($bounds)*
            {
                let $engine = &self.engine;
                let Some(limit) = with.timeout else {
                    return IMap::new($make, items, with.chunksize, ordered, with.progress.clone());
                };
                match deadline::Timed::<_, F::Output>::new::<A>(
                    $make,
                    limit,
                    std::any::type_name::<F>(),
                    deadline::Late::Drop,
                ) {
                    Ok(runner) => {
                        IMap::new(runner, items, with.chunksize, ordered, with.progress.clone())
                            .with_timeout(limit)
                    }
                    Err(e) => IMap::failed(e),
                }
            }
        }

        impl With<'_, $pool> {
            /// [`apply`]($pool::apply) with these settings (a
            /// [`timeout`](With::timeout); the map settings do nothing here).
            ///
            /// # Errors
            /// As `apply`, and [`ErrorKind::Timeout`] when the timeout passed.
            pub fn apply<F, A, M>(&self, f: F, args: A) -> Result<F::Output>
            where $($once_bounds)*
            {
                if self.timeout.is_none() {
                    return self.face.apply(f, args);
                }
                self.apply_async(f, args).get()
            }

            /// [`apply_async`]($pool::apply_async) with these settings.
            pub fn apply_async<F, A, M>(&self, $of: F, args: A) -> AsyncResult<F::Output>
            where $($once_bounds)*
            {
                let Some(limit) = self.timeout else {
                    return self.face.apply_async($of, args);
                };
                let $oengine = &self.face.engine;
                if let Err(e) = $oengine.check_running() {
                    return AsyncResult::failed(e);
                }
                let ticket = Ticket::new();
                let engine = Arc::downgrade($oengine) as Weak<dyn Engine>;
                let task = std::any::type_name::<F>();
                let armed = ticket.clone();
                let arm = move |c: &_| deadline::arm_one(limit, task, c, &armed, engine);
                match OneShot::run($make_once.with_ticket(ticket), args, arm) {
                    Ok(completion) => AsyncResult::new(completion),
                    Err(e) => AsyncResult::failed(e),
                }
            }

            /// [`map`]($pool::map) with these settings.
            ///
            /// # Errors
            /// As `map`, and [`ErrorKind::InvalidArgument`] for chunksize 0.
            pub fn map<F, A, M>(
                &self,
                f: F,
                items: impl IntoIterator<Item = A>,
            ) -> Result<Vec<F::Output>>
            where $($bounds)*
            {
                self.face.map_inner(f, items, self, true).get()
            }

            /// `map_async` with these settings.
            pub fn map_async<F, A, M>(
                &self,
                f: F,
                items: impl IntoIterator<Item = A>,
            ) -> AsyncResult<Vec<F::Output>>
            where $($bounds)*
            {
                self.face.map_inner(f, items, self, false)
            }

            /// `starmap` with these settings.
            ///
            /// # Errors
            /// As `map`.
            pub fn starmap<F, A, M>(
                &self,
                f: F,
                items: impl IntoIterator<Item = A>,
            ) -> Result<Vec<F::Output>>
            where $($bounds)*
            {
                self.map(f, items)
            }

            /// `starmap_async` with these settings.
            pub fn starmap_async<F, A, M>(
                &self,
                f: F,
                items: impl IntoIterator<Item = A>,
            ) -> AsyncResult<Vec<F::Output>>
            where $($bounds)*
            {
                self.map_async(f, items)
            }

            /// `imap` with these settings.
            pub fn imap<F, A, M>(
                &self,
                f: F,
                items: impl IntoIterator<Item = A> + 'static,
            ) -> IMap<F::Output>
            where $($bounds)*
            {
                self.face.imap_inner(f, items, self, true)
            }

            /// `imap_unordered` with these settings.
            pub fn imap_unordered<F, A, M>(
                &self,
                f: F,
                items: impl IntoIterator<Item = A> + 'static,
            ) -> IMap<F::Output>
            where $($bounds)*
            {
                self.face.imap_inner(f, items, self, false)
            }
        }
    };
}

procs_face!(pool_methods, Pool);

threads_face!(pool_methods, ThreadPool);

#[cfg(feature = "mpi")]
mpi_face!(pool_methods, crate::mpi::Pool);

impl Pool {
    /// A pool of `processes` workers.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidArgument`] for 0 processes.
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = multiproc::Pool::new(2)?;
    /// assert_eq!(pool.map(|x: u64| x * 2, 0..3)?, vec![0, 2, 4]);
    /// pool.close();
    /// pool.join()?;
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    pub fn new(processes: usize) -> Result<Pool> {
        Pool::builder().processes(processes).build()
    }

    /// A builder for a pool with options (initializer, max tasks per child,
    /// per-task timeout).
    pub fn builder() -> PoolBuilder {
        PoolBuilder::default()
    }
}

impl Drop for Pool {
    /// Terminates the pool, as Python's `with Pool() as p:` does on exit:
    /// pending results fail with [`ErrorKind::Cancelled`].
    fn drop(&mut self) {
        self.engine.face_dropped();
    }
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("processes", &self.processes())
            .field("state", &self.engine.lifecycle().state())
            .finish()
    }
}

/// A pool of threads with the same API as [`Pool`]: Python's
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
    engine: Arc<ThreadEngine>,
}

/// Options for a [`ThreadPool`].
///
/// # Examples
///
/// ```
/// let pool = multiproc::ThreadPool::builder().threads(2).build()?;
/// assert_eq!(pool.apply(|x: u32| x + 1, 1)?, 2);
/// # Ok::<(), multiproc::Error>(())
/// ```
#[derive(Default)]
#[must_use = "a builder does nothing until .build() is called"]
pub struct ThreadPoolBuilder {
    options: ThreadOptions,
}

impl ThreadPoolBuilder {
    /// The number of threads (default: [`crate::cpu_count`]).
    pub fn threads(mut self, n: usize) -> Self {
        self.options.threads = Some(n);
        self
    }

    /// Same as [`threads`](Self::threads), by `Pool`'s name.
    pub fn processes(self, n: usize) -> Self {
        self.threads(n)
    }

    /// A function each thread runs once before its first task. If it panics,
    /// every task fails with [`ErrorKind::InitializerFailed`].
    pub fn initializer(mut self, f: impl Fn() + Send + Sync + 'static) -> Self {
        self.options.init = Some(Arc::new(f));
        self
    }

    /// Starts the threads.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidArgument`] for 0 threads; [`ErrorKind::Io`] when a
    /// thread cannot start.
    pub fn build(self) -> Result<ThreadPool> {
        Ok(ThreadPool { engine: self.options.build(false, crate::cpu_count(), "threads")? })
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
}

impl Drop for ThreadPool {
    /// Queued tasks fail now unless the pool was closed; a running task
    /// finishes on its own thread.
    fn drop(&mut self) {
        self.engine.face_dropped();
    }
}

impl std::fmt::Debug for ThreadPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThreadPool").field("threads", &self.processes()).finish()
    }
}
