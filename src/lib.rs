//! Process pools, thread pools and processes for Rust: what Python's
//! `multiprocessing` gives Python programs, faster and impossible to hang.
//!
//! ```
//! use multiproc::Pool;
//!
//! fn square(x: u64) -> u64 { x * x }
//!
//! let pool = Pool::new(2)?;
//! assert_eq!(pool.map(square, 0..5)?, vec![0, 1, 4, 9, 16]);
//! # Ok::<(), multiproc::Error>(())
//! ```
//!
//! Worker processes are this same executable, re-executed and diverted
//! before `main` runs: there is no setup line to write, and it works the same
//! in binaries, examples, tests, benches and doctests. A task is a `fn` item or
//! a closure that captures nothing, with serde arguments and result; a worker
//! proves it is the same build as its parent before it runs any.
//!
//! Nothing here blocks forever because a worker died: a crash fails only the
//! task the worker was running, with an error naming the pid and the signal or
//! exit code, and the pool starts a replacement.
//!
//! Linux only for now.
//!
//! # Large binary data
//!
//! Send buffers as [`Bytes`] (or `serde_bytes`), not `Vec<u8>`, which serde
//! encodes byte by byte; messages above 4 MiB travel in shared
//! memory by themselves; [`Array`] shares pages without copying at all. See
//! [`Bytes`] for the details.

#[macro_use]
mod events;
/// Entry points for the fuzz targets in `fuzz/`; not an API.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
#[path = "fuzz_api.rs"]
pub mod __fuzz;
mod bytes;
mod codec;
pub mod connection;
#[macro_use]
mod engine;
mod error;
mod executor;
mod fdpass;
pub mod manager;
#[cfg(feature = "mpi")]
pub mod mpi;
mod pipe;
mod pool;
mod process;
pub mod progress;
mod queue;
mod shm;
mod spawn;
mod sync;
mod sys;
mod task;
mod wire;
mod worker;
mod zygote;

pub use bytes::Bytes;
pub use error::{Error, ErrorKind, Result};
pub use executor::{
    as_completed, wait, AsCompleted, DoneAndNotDone, Future, ProcessPoolExecutor,
    ProcessPoolExecutorBuilder, ReturnWhen, ThreadPoolExecutor, ThreadPoolExecutorBuilder,
    ALL_COMPLETED, FIRST_COMPLETED, FIRST_EXCEPTION,
};
pub use fdpass::Fd;
pub use manager::Manager;
pub use pipe::{pipe, Connection};
pub use pool::{AsyncResult, IMap, Pool, PoolBuilder, ThreadPool, ThreadPoolBuilder, With};
pub use process::{
    active_children, cpu_count, current_process, parent_process, Process, ProcessInfo, Run,
};
pub use progress::Progress;
pub use queue::{JoinableQueue, PutError, Queue, QueueIter};
pub use shm::{Array, ArrayGuard, Plain, Value, ValueGuard};
pub use spawn::ChildInfo;
pub use sync::{
    Barrier, BoundedSemaphore, Condition, ConditionGuard, Event, Lock, LockGuard, RLock, Semaphore,
    SemaphoreGuard,
};
pub use task::{TaskFn, TaskOnce};

/// The instant `timeout` from now; `None` (no bound) when that is beyond
/// what the clock can represent, so `Duration::MAX` means "wait forever".
pub(crate) fn deadline_after(timeout: std::time::Duration) -> Option<std::time::Instant> {
    std::time::Instant::now().checked_add(timeout)
}
