//! The same pools across machines: the workers are the ranks of an MPI job
//! (feature `mpi`).
//!
//! Launch the program with `mpirun -n N` (or `srun` under Slurm). Rank 0
//! runs `main`; ranks 1..N never reach it: they are diverted before `main`,
//! as local workers are, and serve the pool rank 0 makes with
//! [`Pool::world`] or [`ProcessPoolExecutor::world`]. Every method of
//! [`crate::Pool`] and [`crate::ProcessPoolExecutor`] works unchanged.
//!
//! ```no_run
//! fn square(x: u64) -> u64 { x * x }
//!
//! let pool = multiproc::mpi::Pool::world()?;
//! assert_eq!(pool.map(square, 0..5)?, vec![0, 1, 4, 9, 16]);
//! # Ok::<(), multiproc::Error>(())
//! ```
//!
//! # Crash containment, and what it costs
//!
//! By default each rank runs its tasks in local worker processes of its own
//! (`local_workers`, default 1), so a task that panics, segfaults, aborts or
//! passes `task_timeout` fails alone and the rank replaces its worker; the
//! job goes on. That costs one local socket round trip per message on the
//! rank: measured here (`mpi-bench`, 4 ranks on 2 loaded cores), an `apply`
//! takes some 40-45 µs isolated against 15 µs on the rank (MPI floor 5 µs),
//! and 10,000 one-item tasks 38-50 ms against 9-26 ms. `isolate(false)` runs tasks on the rank's own thread instead:
//! faster for tiny tasks, but a task that crashes the process takes the
//! rank, and with Open MPI the whole job, with it; a per-task timeout needs
//! isolation.
//!
//! When a whole rank dies (killed, out of memory, its node lost) Open MPI
//! ends the whole job, rank 0 included, with its own message: nothing waits
//! for a rank that is gone.
//!
//! # Waiting without spinning
//!
//! Open MPI spins inside a blocking receive; with more ranks than cores
//! (`--oversubscribe`) that takes the CPU from the tasks. No call here
//! blocks inside MPI: each rank, and rank 0's service thread, polls with
//! `MPI_Improbe`, spins for `MULTIPROC_MPI_SPIN_US` microseconds (default
//! 100) after the last message, then yields as long, then sleeps with a
//! doubling timeout (up to 1-2 ms). An idle 4-rank job here used 0.3 s of CPU
//! in 2.7 s (mpi4py.futures: 3.1 s). `apply` on rank 0 sends its task to a
//! free rank itself and polls for the reply during the spin window, so a
//! short task takes no thread hand-off on rank 0.
//!
//! `Future::kill` is not available (returns false): a rank's task runs on
//! another machine.
//!
//! # Not launched by MPI
//!
//! `world()` fails with [`ErrorKind::InvalidState`] when the program was
//! not started by an MPI launcher, or by one with a single rank: there are
//! no workers to use. Use [`crate::Pool`] for one machine.
//!
//! One MPI pool at a time: the ranks serve one pool; a second `world()`
//! while another MPI pool is running fails with `InvalidState`.

use std::sync::Arc;
use std::time::Duration;

use crate::engine::mpi::{self, MpiEngine, PoolOptions};
use crate::error::{Error, ErrorKind, Result};
use crate::executor::Executor;

/// This process's rank and the size of its MPI job, if a launcher started it
/// (read from the launcher's environment; MPI is not initialised).
///
/// # Examples
///
/// ```
/// // Outside `mpirun` there is no rank; under it, only rank 0 reaches `main`.
/// match multiproc::mpi::launched_rank() {
///     None => println!("not an MPI job: use multiproc::Pool"),
///     Some(rank) => assert_eq!(rank, 0),
/// }
/// ```
pub fn launched_rank() -> Option<u32> {
    mpi::rank_hint()
}

/// The options of an MPI pool or executor.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use multiproc::{mpi, ErrorKind};
///
/// let builder = mpi::Pool::builder().local_workers(2).task_timeout(Duration::from_secs(60));
/// // Options are checked first: a timeout needs tasks isolated in processes.
/// let bad = mpi::Pool::builder().isolate(false).task_timeout(Duration::from_secs(1)).build();
/// assert_eq!(bad.unwrap_err().kind(), ErrorKind::InvalidArgument);
/// if mpi::launched_rank().is_none() {
///     // Not started by `mpirun`: no ranks to use.
///     assert_eq!(builder.build().unwrap_err().kind(), ErrorKind::InvalidState);
/// }
/// # Ok::<(), multiproc::Error>(())
/// ```
#[derive(Clone, Debug)]
#[must_use = "a builder does nothing until .build() is called"]
pub struct WorldBuilder {
    isolate: bool,
    local_workers: usize,
    task_timeout: Option<Duration>,
    max_tasks_per_child: Option<usize>,
}

impl Default for WorldBuilder {
    fn default() -> Self {
        WorldBuilder {
            isolate: true,
            local_workers: 1,
            task_timeout: None,
            max_tasks_per_child: None,
        }
    }
}

impl WorldBuilder {
    /// Run each rank's tasks in local worker processes (`true`, the
    /// default: a crash fails one task), or on the rank's own thread.
    pub fn isolate(mut self, yes: bool) -> Self {
        self.isolate = yes;
        self
    }

    /// Worker processes per rank (default 1: one rank per core is the usual
    /// MPI layout). Needs isolation.
    pub fn local_workers(mut self, n: usize) -> Self {
        self.local_workers = n;
        self
    }

    /// Fail a task that runs longer than `timeout` with
    /// [`ErrorKind::Timeout`]; its local worker is killed and replaced.
    /// Needs isolation.
    pub fn task_timeout(mut self, timeout: Duration) -> Self {
        self.task_timeout = Some(timeout);
        self
    }

    /// Replace each local worker after `n` tasks.
    pub fn max_tasks_per_child(mut self, n: usize) -> Self {
        self.max_tasks_per_child = Some(n);
        self
    }

    fn engine(self) -> Result<Arc<MpiEngine>> {
        let invalid = |m: &str| Err(Error::new(ErrorKind::InvalidArgument, m));
        if self.local_workers == 0 {
            return invalid("local_workers must be at least 1 (got 0)");
        }
        if self.task_timeout == Some(Duration::ZERO) {
            return invalid("task_timeout must be longer than zero");
        }
        if self.max_tasks_per_child == Some(0) {
            return invalid("max_tasks_per_child must be at least 1 (got 0)");
        }
        if !self.isolate
            && (self.task_timeout.is_some()
                || self.local_workers != 1
                || self.max_tasks_per_child.is_some())
        {
            return invalid(
                "task_timeout, local_workers and max_tasks_per_child need isolate(true): a rank \
                 can only stop or replace a task that runs in a process of its own",
            );
        }
        match mpi::rank_hint() {
            None => {
                return Err(Error::new(
                    ErrorKind::InvalidState,
                    "this program was not started by an MPI launcher (mpirun -n N, mpiexec or \
                     srun), so it has no MPI ranks to use as workers; launch it with one, or use \
                     multiproc::Pool for the cores of this machine",
                ))
            }
            Some(0) => {}
            Some(r) => {
                return Err(Error::new(
                    ErrorKind::InvalidState,
                    format!("only rank 0 makes MPI pools (this is rank {r})"),
                ))
            }
        }
        let options = PoolOptions {
            isolate: self.isolate,
            local_workers: u32::try_from(self.local_workers).unwrap_or(u32::MAX).min(1024),
            task_timeout: self.task_timeout,
            max_tasks_per_child: self.max_tasks_per_child.map(|n| n as u64),
        };
        let engine = mpi::new_engine(options)?;
        if crate::engine::Engine::workers(&*engine) == 0 {
            return Err(Error::new(
                ErrorKind::InvalidState,
                "the MPI job has a single rank, so no rank is left to be a worker; launch it \
                 with mpirun -n 2 or more",
            ));
        }
        Ok(engine)
    }

    /// Makes the pool: rank 0 checks that every rank runs this build.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidState`] when not launched by MPI (or with one
    /// rank, or while another MPI pool runs), [`ErrorKind::BuildMismatch`]
    /// when a rank runs another executable, [`ErrorKind::InvalidArgument`]
    /// for a zero option.
    pub fn build(self) -> Result<Pool> {
        Ok(Pool { engine: self.engine()? })
    }

    /// As [`build`](Self::build), an executor.
    ///
    /// # Errors
    /// As [`build`](Self::build).
    pub fn build_executor(self) -> Result<ProcessPoolExecutor> {
        Ok(ProcessPoolExecutor { inner: Executor::new(self.engine()?) })
    }
}

/// [`crate::Pool`] whose workers are the other ranks of the MPI job.
///
/// # Examples
///
/// Not run here: it needs a launcher (`mpirun -n 4 target/release/app`).
///
/// ```no_run
/// use multiproc::mpi;
///
/// fn square(x: u64) -> u64 { x * x }
///
/// let pool = mpi::Pool::builder().local_workers(2).build()?;
/// assert_eq!(pool.map(square, 0..100)?.len(), 100);
/// assert_eq!(pool.apply(square, 7)?, 49);
/// # Ok::<(), multiproc::Error>(())
/// ```
pub struct Pool {
    pub(crate) engine: Arc<MpiEngine>,
}

impl Pool {
    /// A pool of every other rank of the job, with the default options.
    ///
    /// # Errors
    /// As [`WorldBuilder::build`].
    ///
    /// # Examples
    ///
    /// ```
    /// use multiproc::{mpi, ErrorKind};
    ///
    /// // A program that may or may not run under `mpirun`:
    /// match mpi::Pool::world() {
    ///     Ok(pool) => println!("{} ranks serve", pool.processes()),
    ///     Err(e) if e.kind() == ErrorKind::InvalidState => println!("one machine: {e}"),
    ///     Err(e) => return Err(e),
    /// }
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    pub fn world() -> Result<Pool> {
        WorldBuilder::default().build()
    }

    /// The options (isolation, local workers, task timeout).
    pub fn builder() -> WorldBuilder {
        WorldBuilder::default()
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        crate::engine::Engine::face_dropped(&*self.engine);
    }
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("mpi::Pool").field("processes", &self.processes()).finish()
    }
}

/// [`crate::ProcessPoolExecutor`] whose workers are the other ranks.
///
/// # Examples
///
/// Not run here: it needs a launcher (`mpirun -n 4 target/release/app`).
///
/// ```no_run
/// fn square(x: u64) -> u64 { x * x }
///
/// let ex = multiproc::mpi::ProcessPoolExecutor::world()?;
/// let fut = ex.submit(square, 7)?;
/// assert_eq!(fut.result()?, 49);
/// # Ok::<(), multiproc::Error>(())
/// ```
pub struct ProcessPoolExecutor {
    pub(crate) inner: Executor<MpiEngine>,
}

impl ProcessPoolExecutor {
    /// An executor over every other rank, with the default options.
    ///
    /// # Errors
    /// As [`WorldBuilder::build`].
    pub fn world() -> Result<ProcessPoolExecutor> {
        WorldBuilder::default().build_executor()
    }
}

/// The mean MPI round trip of a `bytes`-byte message between rank 0 and
/// rank 1, through the calls the pool makes: the floor the benchmark
/// compares `apply` with. Not an API.
#[doc(hidden)]
pub fn __ping_pong(rounds: usize, bytes: usize) -> Result<Duration> {
    mpi::ping_pong(rounds, bytes)
}
