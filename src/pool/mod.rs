//! `Pool` (worker processes) and `ThreadPool` (threads), with one API.

pub(crate) mod callbacks;
pub(crate) mod map;
mod result;

use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use self::map::ChunkRunner;
use crate::engine::procs::{Init, ProcEngine, ProcOptions};
use crate::engine::threads::{ThreadEngine, ThreadOptions};
use crate::engine::Engine;
#[cfg(doc)]
use crate::error::ErrorKind;
use crate::error::Result;
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
    let completion = Completion::new();
    runner.run_one(args, completion.clone());
    AsyncResult::new(completion)
}

/// A pool seen with a fixed chunksize: `pool.chunksize(10).map(f, items)`.
///
/// A chunk of items travels as one task, which saves round trips for short
/// tasks. A chunksize of 0 makes every call fail with
/// [`ErrorKind::InvalidArgument`].
#[derive(Clone, Copy, Debug)]
pub struct Chunked<'a, P> {
    pool: &'a P,
    chunksize: usize,
}

macro_rules! pool_methods {
    (
        face: $pool:ty,
        runner: |$engine:ident, $f:ident| $make:expr,
        bounds: [$($bounds:tt)*]
    ) => {
        impl $pool {
            /// The number of workers.
            pub fn processes(&self) -> usize {
                self.engine.workers()
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
            pub fn apply<F, A, M>(&self, $f: F, args: A) -> Result<F::Output>
            where $($bounds)*
            {
                let $engine = &self.engine;
                $make.apply(args)
            }

            /// Submits `f(args)` and returns at once.
            pub fn apply_async<F, A, M>(&self, $f: F, args: A) -> AsyncResult<F::Output>
            where $($bounds)*
            {
                let $engine = &self.engine;
                if let Err(e) = $engine.check_running() {
                    return AsyncResult::failed(e);
                }
                apply_via(&$make, args)
            }

            /// Applies `f` to every item, in chunks of Python's default size,
            /// and returns the results in input order.
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
                self.map_async(f, items).get()
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
                self.map_inner(f, items, None)
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
            pub fn imap<F, A, M>(
                &self,
                f: F,
                items: impl IntoIterator<Item = A> + 'static,
            ) -> IMap<F::Output>
            where $($bounds)*
            {
                self.imap_inner(f, items, None, true)
            }

            /// Results in the order tasks finish. Reads `items` lazily, keeping
            /// a bounded number of tasks in flight.
            pub fn imap_unordered<F, A, M>(
                &self,
                f: F,
                items: impl IntoIterator<Item = A> + 'static,
            ) -> IMap<F::Output>
            where $($bounds)*
            {
                self.imap_inner(f, items, None, false)
            }

            /// The map family with `chunksize` items per task.
            pub fn chunksize(&self, chunksize: usize) -> Chunked<'_, Self> {
                Chunked { pool: self, chunksize }
            }

            fn map_inner<F, A, M>(
                &self,
                $f: F,
                items: impl IntoIterator<Item = A>,
                chunksize: Option<usize>,
            ) -> AsyncResult<Vec<F::Output>>
            where $($bounds)*
            {
                let $engine = &self.engine;
                if let Err(e) = $engine.check_running() {
                    return AsyncResult::failed(e);
                }
                map::map_async(&$make, items, chunksize)
            }

            fn imap_inner<F, A, M>(
                &self,
                $f: F,
                items: impl IntoIterator<Item = A> + 'static,
                chunksize: Option<usize>,
                ordered: bool,
            ) -> IMap<F::Output>
            where $($bounds)*
            {
                let $engine = &self.engine;
                IMap::new($make, items, chunksize, ordered)
            }
        }

        impl Chunked<'_, $pool> {
            /// [`map`]($pool::map) with this chunksize.
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
                self.map_async(f, items).get()
            }

            /// `map_async` with this chunksize.
            pub fn map_async<F, A, M>(
                &self,
                f: F,
                items: impl IntoIterator<Item = A>,
            ) -> AsyncResult<Vec<F::Output>>
            where $($bounds)*
            {
                self.pool.map_inner(f, items, Some(self.chunksize))
            }

            /// `starmap` with this chunksize.
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

            /// `starmap_async` with this chunksize.
            pub fn starmap_async<F, A, M>(
                &self,
                f: F,
                items: impl IntoIterator<Item = A>,
            ) -> AsyncResult<Vec<F::Output>>
            where $($bounds)*
            {
                self.map_async(f, items)
            }

            /// `imap` with this chunksize.
            pub fn imap<F, A, M>(
                &self,
                f: F,
                items: impl IntoIterator<Item = A> + 'static,
            ) -> IMap<F::Output>
            where $($bounds)*
            {
                self.pool.imap_inner(f, items, Some(self.chunksize), true)
            }

            /// `imap_unordered` with this chunksize.
            pub fn imap_unordered<F, A, M>(
                &self,
                f: F,
                items: impl IntoIterator<Item = A> + 'static,
            ) -> IMap<F::Output>
            where $($bounds)*
            {
                self.pool.imap_inner(f, items, Some(self.chunksize), false)
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
