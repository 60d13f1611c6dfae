//! `Pool` (worker processes) and `ThreadPool` (threads), with one API.

pub(crate) mod callbacks;
pub(crate) mod core;
pub(crate) mod map;
mod result;
mod slot;
pub(crate) mod thread;

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use self::core::{Config, Core, Init, RunState};
use self::map::{ChunkDone, ChunkRunner};
use crate::error::{Error, ErrorKind, Result};
use crate::task::{self, TaskFn};

pub use self::map::IMap;
pub use self::result::AsyncResult;
pub use self::thread::{ThreadPool, ThreadPoolBuilder};

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
    core: Arc<Core>,
}

/// Options for a [`Pool`]: `Pool::builder().processes(4).build()`.
#[derive(Default)]
#[must_use = "a builder does nothing until .build() is called"]
pub struct PoolBuilder {
    processes: Option<usize>,
    init: Option<Init>,
    max_tasks_per_child: Option<usize>,
    task_timeout: Option<Duration>,
    simulate_mismatch: bool,
}

impl PoolBuilder {
    /// The number of worker processes (default: [`crate::cpu_count`]).
    pub fn processes(mut self, n: usize) -> Self {
        self.processes = Some(n);
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
        self.init = Some(Init::new::<F, A, M>(&args));
        self
    }

    /// Replace each worker after it has run `n` tasks (a chunk of a `map` is
    /// one task), as Python's `maxtasksperchild`.
    pub fn max_tasks_per_child(mut self, n: usize) -> Self {
        self.max_tasks_per_child = Some(n);
        self
    }

    /// Fail a task that runs longer than `timeout` with
    /// [`ErrorKind::Timeout`]; its worker is killed and replaced and the pool
    /// goes on.
    pub fn task_timeout(mut self, timeout: Duration) -> Self {
        self.task_timeout = Some(timeout);
        self
    }

    /// Makes the pool's workers see a parent of another build. For testing
    /// the build check only.
    #[doc(hidden)]
    pub fn simulate_build_mismatch(mut self) -> Self {
        self.simulate_mismatch = true;
        self
    }

    /// Starts the workers (in parallel; this does not wait for them).
    ///
    /// # Errors
    /// [`ErrorKind::InvalidArgument`] for 0 processes, a quota of 0 tasks, or
    /// a zero timeout; [`ErrorKind::Io`] when the pool's threads cannot start.
    pub fn build(self) -> Result<Pool> {
        let processes = self.processes.unwrap_or_else(crate::cpu_count);
        if processes == 0 {
            return Err(invalid("a pool needs at least 1 process (got 0)"));
        }
        if self.max_tasks_per_child == Some(0) {
            return Err(invalid("max_tasks_per_child must be at least 1 (got 0)"));
        }
        if self.task_timeout == Some(Duration::ZERO) {
            return Err(invalid("task_timeout must be longer than zero"));
        }
        let mut fingerprint = task::fingerprint();
        if self.simulate_mismatch {
            fingerprint[0] ^= 0xff;
        }
        let core = Core::new(Config {
            processes,
            init: self.init,
            max_tasks_per_child: self.max_tasks_per_child,
            task_timeout: self.task_timeout,
            fingerprint,
            lazy: false,
        })?;
        let pool = Pool { core };
        while pool.core.start_slot()? {}
        Ok(pool)
    }
}

fn invalid(msg: &str) -> Error {
    Error::new(ErrorKind::InvalidArgument, msg)
}

/// Runs chunks of one function on a process pool.
pub(crate) struct ProcRunner<F, A, M> {
    core: Arc<Core>,
    offset: i64,
    ticket: Option<Arc<core::Ticket>>,
    _f: PhantomData<fn(F, A, M)>,
}

impl<F, A, M> ProcRunner<F, A, M>
where
    F: TaskFn<A, M> + Copy,
    A: Serialize + DeserializeOwned,
    F::Output: Serialize,
{
    pub(crate) fn new(core: &Arc<Core>) -> Self {
        ProcRunner {
            core: core.clone(),
            offset: task::trampoline_offset::<F, A, M>(),
            ticket: None,
            _f: PhantomData,
        }
    }

    /// Tracks the (single) job through `ticket`, for executor futures.
    pub(crate) fn with_ticket(mut self, ticket: Arc<core::Ticket>) -> Self {
        self.ticket = Some(ticket);
        self
    }
}

impl<F, A, M> ProcRunner<F, A, M> {
    fn submit<R: DeserializeOwned + Send + 'static>(
        &self,
        items: Vec<A>,
        done: ChunkDone<R>,
        held: bool,
        ticket: Option<Arc<core::Ticket>>,
    ) where
        A: Serialize,
    {
        let n = items.len();
        let encoded = task::encode_chunk(&items);
        drop(items);
        self.core.submit(
            self.offset,
            encoded,
            Box::new(move |outcome, pid| match outcome {
                Ok((bytes, fds)) => done(task::decode_outcomes(bytes, fds, n, pid)),
                Err(e) => done((0..n).map(|_| Err(e.clone())).collect()),
            }),
            ticket.or_else(|| self.ticket.clone()),
            held,
        );
    }
}

impl<F, A, M, R> ChunkRunner<A, R> for ProcRunner<F, A, M>
where
    F: TaskFn<A, M, Output = R> + Copy,
    A: Serialize,
    R: DeserializeOwned + Send + 'static,
{
    fn run_chunk(&self, items: Vec<A>, done: ChunkDone<R>) {
        self.submit(items, done, false, None)
    }

    fn run_chunk_held(&self, items: Vec<A>, done: ChunkDone<R>, ticket: Arc<core::Ticket>) {
        self.submit(items, done, true, Some(ticket))
    }

    fn hold_open(&self) -> Option<map::Release> {
        self.core.hold_open()
    }

    fn check_running(&self) -> Result<()> {
        self.core.check_running()
    }

    fn workers(&self) -> usize {
        self.core.config.processes
    }
}

/// Submits one item as its own task; the result completes with its outcome.
pub(crate) fn apply_via<A, R: Send + 'static>(
    runner: &impl ChunkRunner<A, R>,
    args: A,
) -> AsyncResult<R> {
    let completion = Completion::new();
    let c = completion.clone();
    runner.run_chunk(
        vec![args],
        Box::new(move |mut outcomes| {
            c.complete(outcomes.pop().unwrap_or_else(|| {
                Err(Error::new(ErrorKind::Protocol, "a task returned no result"))
            }))
        }),
    );
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
        pool: $pool:ty,
        runner: |$core:ident, $f:ident| $make:expr,
        bounds: [$($bounds:tt)*]
    ) => {
        impl $pool {
            /// Runs `f(args)` in the pool and waits for its result.
            ///
            /// # Errors
            /// The task's error (see [`AsyncResult::get`]) or
            /// [`ErrorKind::PoolNotRunning`].
            pub fn apply<F, A, M>(&self, f: F, args: A) -> Result<F::Output>
            where $($bounds)*
            {
                self.apply_async(f, args).get()
            }

            /// Submits `f(args)` and returns at once.
            pub fn apply_async<F, A, M>(&self, $f: F, args: A) -> AsyncResult<F::Output>
            where $($bounds)*
            {
                let $core = &self.core;
                if let Err(e) = $core.check_running() {
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
            /// [`ErrorKind::TaskPanicked`] error naming the input (the input
            /// is read to the end before any task runs).
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
                let $core = &self.core;
                if let Err(e) = $core.check_running() {
                    return AsyncResult::failed(e);
                }
                match map::collect_input(items) {
                    Ok(items) => map::map_async(&$make, items, chunksize),
                    Err(e) => AsyncResult::failed(e),
                }
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
                let $core = &self.core;
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

pool_methods! {
    pool: Pool,
    runner: |core, f| { let _ = f; ProcRunner::<F, A, M>::new(core) },
    bounds: [
        F: TaskFn<A, M> + Copy,
        A: Serialize + DeserializeOwned + 'static,
        F::Output: Serialize + DeserializeOwned + Send + 'static,
        M: 'static,
    ]
}

pool_methods! {
    pool: ThreadPool,
    runner: |core, f| thread::ThreadRunner::new(core, f),
    bounds: [
        F: TaskFn<A, M>,
        A: Send + 'static,
        F::Output: Send + 'static,
        M: 'static,
    ]
}

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

    /// The number of worker processes.
    pub fn processes(&self) -> usize {
        self.core.config.processes
    }

    /// Stops taking tasks; queued tasks still run. Then call [`join`](Self::join).
    pub fn close(&self) {
        self.core.close();
    }

    /// Kills the workers at once. Every pending task fails with
    /// [`ErrorKind::Cancelled`]; nothing blocks.
    pub fn terminate(&self) {
        self.core.terminate();
    }

    /// Waits until every worker has exited: after [`close`](Self::close), once
    /// every queued task has run; after [`terminate`](Self::terminate), at once.
    ///
    /// # Errors
    /// [`ErrorKind::PoolStillRunning`] when neither was called first.
    pub fn join(&self) -> Result<()> {
        let q = self.core.lock();
        if q.state == RunState::Running {
            return Err(still_running());
        }
        if q.state == RunState::Closed && q.holds > 0 {
            return Err(unfinished_iterator());
        }
        drop(q);
        self.core.join_threads();
        // As in Python, join returns once the callbacks of the pool's
        // results have run too.
        callbacks::flush();
        Ok(())
    }
}

pub(crate) fn unfinished_iterator() -> Error {
    Error::new(
        ErrorKind::PoolStillRunning,
        "join() would wait for an imap iterator started before close() that still has input; \
         consume or drop it first",
    )
}

pub(crate) fn still_running() -> Error {
    Error::new(
        ErrorKind::PoolStillRunning,
        "join() was called on a running pool; call close() or terminate() first",
    )
}

impl Drop for Pool {
    /// Terminates the pool, as Python's `with Pool() as p:` does on exit:
    /// pending results fail with [`ErrorKind::Cancelled`].
    fn drop(&mut self) {
        self.core.terminate();
        self.core.join_threads();
    }
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.core.lock().state;
        f.debug_struct("Pool")
            .field("processes", &self.core.config.processes)
            .field("state", &state)
            .finish()
    }
}
