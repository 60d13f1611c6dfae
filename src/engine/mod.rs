//! The engine: what every face (`Pool`, `ThreadPool`, the two executors)
//! talks to, and nothing else.
//!
//! A face makes a typed *runner* from an engine for one task function
//! ([`ChunkRunner`](crate::pool::map::ChunkRunner): run a chunk of items,
//! one outcome per item whatever happens) and drives the pool's life through
//! the [`Engine`] trait: close, terminate, join, cancel what is queued, kill
//! the worker running a job, hold a closed pool open for an iterator. The
//! run state and its rules are written once, in [`lifecycle`].
//!
//! Backends: [`procs`] (worker processes, one slot thread per worker),
//! [`threads`] (threads of this process) and, with the `mpi` feature, `mpi`
//! (the ranks of an MPI job). A new backend is one new module
//! implementing [`Engine`] and a runner; no face changes.

/// Calls the face-methods macro `$methods` for `$face`, a face of the
/// process backend, with that backend's task bounds and runner: each
/// backend states them once, for all its faces. A process backend runs one
/// call (`apply`, `submit`) as a chunk of one, with the same bounds.
macro_rules! procs_face {
    ($methods:ident, $face:ty) => {
        serde_face!($methods, $face, procs::ProcRunner);
    };
}

/// The faces of a backend whose tasks cross to another process as encoded
/// chunks (`procs`, `mpi`): a `fn` item or capture-free closure, serde
/// arguments and results, for maps and one calls alike.
macro_rules! serde_face {
    ($methods:ident, $face:ty, $($runner:ident)::+) => {
        $methods! {
            face: $face,
            runner: |engine, f| $crate::engine::$($runner)::+::<F, A, M>::new(engine, f),
            bounds: [
                F: $crate::task::TaskFn<A, M> + Copy,
                A: ::serde::Serialize + ::serde::de::DeserializeOwned + 'static,
                F::Output: ::serde::Serialize + ::serde::de::DeserializeOwned + Send + 'static,
                M: 'static,
            ],
            once: |engine, f| $crate::engine::$($runner)::+::<F, A, M>::new(engine, f),
            once_bounds: [
                F: $crate::task::TaskFn<A, M> + Copy,
                A: ::serde::Serialize + ::serde::de::DeserializeOwned + 'static,
                F::Output: ::serde::Serialize + ::serde::de::DeserializeOwned + Send + 'static,
                M: 'static,
            ]
        }
    };
}

/// As [`procs_face`], for the thread backend: any `Send` closure and values;
/// a map's function is shared by the threads (`Fn + Sync`), one call's is
/// run once (`FnOnce`).
macro_rules! threads_face {
    ($methods:ident, $face:ty) => {
        $methods! {
            face: $face,
            runner: |engine, f| $crate::engine::threads::ThreadRunner::new(engine, f),
            bounds: [
                F: $crate::task::TaskFn<A, M>,
                A: Send + 'static,
                F::Output: Send + 'static,
                M: 'static,
            ],
            once: |engine, f| $crate::engine::threads::ThreadOnce::new(engine, f),
            once_bounds: [
                F: $crate::task::TaskOnce<A, M>,
                A: Send + 'static,
                F::Output: Send + 'static,
                M: 'static,
            ]
        }
    };
}

/// As [`procs_face`], for the MPI backend: the same task bounds (a chunk
/// crosses to another rank as the bytes it would cross to a local worker).
#[cfg(feature = "mpi")]
macro_rules! mpi_face {
    ($methods:ident, $face:ty) => {
        serde_face!($methods, $face, mpi::MpiRunner);
    };
}

/// The memory-cap options of a process builder (`PoolBuilder`,
/// `ProcessPoolExecutorBuilder`), written once for both: each holds its
/// options in `self.options`, a `ProcOptions`.
macro_rules! memory_cap_options {
    () => {
        /// Soft cap: after a task, a worker whose resident set (RSS) is above
        /// `bytes` is replaced once it has finished the tasks it already
        /// holds; the task's result is delivered as usual. Billiard's
        /// `max_memory_per_child`. The replacement is counted in
        /// [`stats`](crate::stats) as [`RestartReason::MemoryCap`](crate::RestartReason).
        /// With this cap set, `apply` is run through the pool's thread rather
        /// than by the caller itself, so the worker is measured after each task.
        ///
        /// # Examples
        ///
        /// ```
        /// fn grow(mb: usize) -> usize {
        ///     let v = vec![1u8; mb << 20];
        ///     std::mem::forget(v); // the worker keeps it
        ///     mb
        /// }
        ///
        /// let pool = multiproc::Pool::builder().processes(1).max_memory_per_child(200 << 20).build()?;
        /// assert_eq!(pool.apply(grow, 300)?, 300); // delivered, then the worker is replaced
        /// assert_eq!(pool.apply(grow, 1)?, 1);
        /// assert_eq!(pool.stats().total().restarts.memory_cap, 1);
        /// # Ok::<(), multiproc::Error>(())
        /// ```
        pub fn max_memory_per_child(mut self, bytes: u64) -> Self {
            self.options.max_memory_per_child = Some(bytes);
            self
        }

        /// Hard cap: each worker's address space is limited to `bytes`
        /// (`RLIMIT_AS`, set in the worker), so a task that allocates past it
        /// fails with [`ErrorKind::MemoryLimit`](crate::ErrorKind::MemoryLimit),
        /// whose message names the cap; the worker is replaced and the pool
        /// goes on. What is and is not caught is listed in the crate's source
        /// (`engine/procs/memory.rs`): in short, allocations through Rust's
        /// allocator are; a kill by the kernel's OOM killer, a stack overflow
        /// or an abort of the task's own are reported as the crash they are.
        /// The address space counts every mapping (each thread's stack and
        /// allocator arena too): leave room above what a task keeps.
        ///
        /// # Errors
        /// `build` fails with [`ErrorKind::InvalidArgument`](crate::ErrorKind::InvalidArgument)
        /// below 64 MiB or above this process's own hard limit.
        ///
        /// # Examples
        ///
        /// ```
        /// use multiproc::ErrorKind;
        ///
        /// fn hog(_: ()) -> usize {
        ///     let mut kept = Vec::new();
        ///     loop {
        ///         kept.push(Vec::<u8>::with_capacity(64 << 20));
        ///     }
        /// }
        /// fn small(x: u32) -> u32 { x + 1 }
        ///
        /// let pool = multiproc::Pool::builder().processes(1).memory_limit(512 << 20).build()?;
        /// let err = pool.apply(hog, ()).unwrap_err();
        /// assert_eq!(err.kind(), ErrorKind::MemoryLimit);
        /// assert_eq!(pool.apply(small, 1)?, 2);
        /// # Ok::<(), multiproc::Error>(())
        /// ```
        pub fn memory_limit(mut self, bytes: u64) -> Self {
            self.options.memory_limit = Some(bytes);
            self
        }
    };
}

/// Implements [`OneShot`](crate::pool::map::OneShot) for a runner (generic over `F, A, M`) whose one
/// call is a chunk of one: [`ChunkRunner::run_one`] and
/// [`ChunkRunner::apply`], which a backend may speed up.
macro_rules! one_call_is_a_chunk {
    ($runner:ident) => {
        impl<F, A, M, R> $crate::pool::map::OneShot<A, R> for $runner<F, A, M>
        where
            Self: $crate::pool::map::ChunkRunner<A, R>,
            R: Send + 'static,
        {
            fn run(
                self,
                args: A,
                arm: impl $crate::pool::map::Arm<R>,
            ) -> $crate::error::Result<::std::sync::Arc<$crate::pool::Completion<R>>> {
                $crate::pool::map::ChunkRunner::run_one(&self, args, arm)
            }
            fn apply(self, args: A) -> $crate::error::Result<R> {
                $crate::pool::map::ChunkRunner::apply(&self, args)
            }
        }
    };
}

pub(crate) mod lifecycle;
#[cfg(feature = "mpi")]
pub(crate) mod mpi;
pub(crate) mod procs;
pub(crate) mod spin;
pub(crate) mod threads;

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;

use crate::error::{Error, Result};
pub(crate) use lifecycle::{cancelled, Lifecycle, RunState};

/// Lets go of a hold taken with [`Engine::hold_open`].
pub(crate) type Release = Box<dyn FnOnce() + Send>;

/// A pool's engine, as the faces see it.
pub(crate) trait Engine: Send + Sync + 'static {
    fn lifecycle(&self) -> &Lifecycle;

    /// The most workers the pool runs at once.
    fn workers(&self) -> usize;

    /// Makes every worker look at the lifecycle again.
    fn wake_all(&self);

    /// Fails every queued job with `err` (a job whose ticket was cancelled
    /// is already complete and is only dropped).
    fn fail_queued(&self, err: Error);

    /// Waits for the workers to exit (not for the caller itself, when it is
    /// one of them).
    fn join_workers(&self);

    /// Kills the worker running the job of `ticket`, failing it with
    /// `Cancelled`; false when the backend cannot (threads).
    fn kill_running(&self, ticket: &Ticket) -> bool;

    /// What dropping the face does.
    fn face_dropped(&self);

    /// What each worker has done (see [`crate::stats`]).
    fn stats(&self) -> crate::stats::PoolStats;

    // --- written once, for every backend ---------------------------------

    fn check_running(&self) -> Result<()> {
        self.lifecycle().check_running()
    }

    /// Stops taking tasks; queued tasks still run.
    fn close(&self) {
        self.lifecycle().close();
        self.wake_all();
    }

    /// Fails every queued task with `Cancelled` and runs nothing more; the
    /// woken workers stop their running jobs where the backend can
    /// (processes are killed; threads finish their job).
    fn terminate(&self) {
        self.lifecycle().terminate();
        self.fail_queued(cancelled());
        self.wake_all();
    }

    /// Marks the pool unusable: everything queued, and every later
    /// submission, fails with `err`.
    fn break_with(&self, err: Error) {
        self.lifecycle().break_with(err);
        let err = self.lifecycle().broken().expect("just set");
        self.fail_queued(err);
        self.wake_all();
    }

    /// Cancels every queued task (`shutdown(cancel_futures = true)`).
    fn cancel_queued(&self) {
        self.fail_queued(cancelled());
    }

    /// Waits until every worker has exited, then for the callbacks of the
    /// pool's results, as Python's `join` does.
    fn join(&self) -> Result<()> {
        self.lifecycle().check_joinable()?;
        self.join_workers();
        crate::pool::callbacks::flush();
        Ok(())
    }

    /// Takes no new work and waits until the work given has run; a `map`
    /// iterator nobody reads any more keeps no worker (executor shutdown and
    /// the exit hook).
    fn finish(&self) {
        self.close();
        self.lifecycle().cut_holds();
        self.wake_all();
        self.join_workers();
    }

    /// Keeps a closed pool's workers until the returned release runs, for an
    /// iterator that will submit more; `None` when the pool is not running.
    fn hold_open(self: &Arc<Self>) -> Option<Release>
    where
        Self: Sized,
    {
        if !self.lifecycle().hold() {
            return None;
        }
        let engine = self.clone();
        Some(Box::new(move || {
            engine.lifecycle().release_hold();
            engine.wake_all();
        }))
    }
}

/// Where a job is, for `Future::running`, `cancel` and `kill`.
pub(crate) struct Ticket {
    phase: AtomicU8,
    /// Set by `Future::kill`: the backend kills the worker running this job.
    pub(crate) kill: AtomicBool,
    /// The worker (slot) that holds the job once it is sent.
    pub(crate) slot: AtomicUsize,
}

const QUEUED: u8 = 0;
const SENT: u8 = 1;
const CANCELLED: u8 = 2;

impl Ticket {
    pub(crate) fn new() -> Arc<Ticket> {
        Arc::new(Ticket {
            phase: AtomicU8::new(QUEUED),
            kill: AtomicBool::new(false),
            slot: AtomicUsize::new(usize::MAX),
        })
    }

    /// Moves a queued job to cancelled; false once it was sent.
    pub(crate) fn cancel(&self) -> bool {
        self.phase.compare_exchange(QUEUED, CANCELLED, Ordering::SeqCst, Ordering::SeqCst).is_ok()
    }

    /// Moves a queued job to sent; false when it was cancelled first.
    pub(crate) fn start(&self) -> bool {
        self.phase.compare_exchange(QUEUED, SENT, Ordering::SeqCst, Ordering::SeqCst).is_ok()
    }

    /// Back to queued, for a job returned to the queue unstarted.
    pub(crate) fn unsend(&self) {
        let _ = self.phase.compare_exchange(SENT, QUEUED, Ordering::SeqCst, Ordering::SeqCst);
    }

    pub(crate) fn is_sent(&self) -> bool {
        self.phase.load(Ordering::SeqCst) == SENT
    }
}
