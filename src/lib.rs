//! Process pools, thread pools and processes for Rust: what Python's
//! `multiprocessing` and `concurrent.futures` give Python programs, faster,
//! impossible to hang, and honest about failure. Linux only for now
//! (x86_64, aarch64); the plan for other systems is in `docs/portability.md`.
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
//! # The model
//!
//! **A worker is this same program.** A [`Pool`]'s workers and a
//! [`Process`] are processes running the executable the parent runs,
//! diverted before `main` into serving tasks: there is no setup line to
//! write, and it works the same in binaries, examples, tests, benches and
//! doctests. A worker proves it is the same build as its parent before it
//! runs anything, and it dies with its parent, even when the parent is
//! killed with SIGKILL.
//!
//! **A task is a function and its values.** A process task is a `fn` item or
//! a closure that captures nothing (a capturing closure is a compile error),
//! with arguments and a result that implement serde's `Serialize` and
//! `Deserialize`; several arguments are a tuple. State a worker needs goes in
//! as an argument, or once per worker through the pool's `initializer`.
//! Thread pools ([`ThreadPool`], [`ThreadPoolExecutor`]) take any
//! `Send + 'static` closure, `FnOnce` included.
//!
//! **Failures are values.** Every fallible call returns
//! [`Result`]`<T, `[`Error`]`>`, and [`Error::kind`] says what happened:
//! a panicking task is [`ErrorKind::TaskPanicked`] with its message and
//! location, and its worker goes on; a worker that is killed, crashes or
//! exits is [`ErrorKind::WorkerDied`] with its pid and signal or exit code,
//! fails only the task it was running, and is replaced; a time bound that
//! passed is [`ErrorKind::Timeout`]; a value that does not (de)serialize is
//! [`ErrorKind::Serialize`] or [`ErrorKind::Deserialize`] and fails only its
//! own task. No failure of one task breaks the pool.
//!
//! # What changes inside a worker
//!
//! - **Statics start fresh.** A worker starts from the program's initial
//!   state, not from the parent's: a global the parent changed at run time,
//!   a `OnceLock` it filled, a thread it started, none of them is in the
//!   worker. Pass what a task needs, or set it up in the initializer.
//! - **Signals** keep their default dispositions, except SIGPIPE, which is
//!   ignored as the Rust runtime ignores it before `main` (a write to a
//!   closed pipe is an error, not a death). A Ctrl-C in a terminal reaches
//!   the whole process group, workers included.
//! - **`panic = "abort"`** in the profile turns a panicking task into a
//!   worker that aborts: the task fails with [`ErrorKind::WorkerDied`]
//!   (SIGABRT) instead of [`ErrorKind::TaskPanicked`], and the worker is
//!   replaced. With the default `panic = "unwind"` the worker survives.
//! - **Standard output and error** are the parent's, so a task's
//!   `println!` shows where the parent's would; a pool worker's standard
//!   input is `/dev/null`.
//!
//! # Where callbacks run
//!
//! Result callbacks (`AsyncResult::callback`, `error_callback`,
//! `Future::add_done_callback`) run in the parent, on callback threads of
//! the library's own: never on the thread that talks to a worker, and never
//! with a lock of the pool held. They run in the order the results
//! arrived; a callback that blocks delays the next one by at most 10 ms,
//! and a callback may submit to the same pool and wait.
//!
//! # Passing handles
//!
//! [`Queue`], [`JoinableQueue`], [`Connection`], a one-way pipe's
//! [`Receiver`] and [`Sender`], [`Lock`], [`RLock`],
//! [`Semaphore`], [`Event`], [`Condition`], [`Barrier`], [`Value`],
//! [`Array`] and any descriptor wrapped in [`Fd`] are values: pass them as a task's or a
//! process's arguments, or through a queue, and the other process gets the
//! same object (its descriptors travel with the message). A process that
//! dies holding a [`Lock`] does not deadlock the others: the next acquirer
//! gets it and is told.
//!
//! # Large binary data
//!
//! Send buffers as [`Bytes`] (or `serde_bytes`), not `Vec<u8>`, which serde
//! encodes byte by byte; messages above 4 MiB travel in shared
//! memory by themselves; [`Array`] shares pages without copying at all. See
//! [`Bytes`] for the details.

#![deny(missing_docs)]

/// The README's Rust examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

#[macro_use]
mod events;
/// Entry points for the fuzz targets in `fuzz/`; not an API.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
#[path = "fuzz_api.rs"]
pub mod __fuzz;
mod aio;
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
mod spare;
mod spawn;
pub mod stats;
mod sync;
mod sys;
mod task;
mod wire;
mod worker;
mod zygote;

/// The crate behind [`Plain`]: `#[derive(Pod, Zeroable)]` makes a struct a
/// [`Value`] or [`Array`] element.
pub use bytemuck;
pub use bytes::Bytes;
pub use error::{Error, ErrorKind, Result};
pub use executor::{
    as_completed, wait, AsCompleted, DoneAndNotDone, Future, ProcessPoolExecutor,
    ProcessPoolExecutorBuilder, ReturnWhen, Shutdown, ThreadPoolExecutor,
    ThreadPoolExecutorBuilder, ALL_COMPLETED, FIRST_COMPLETED, FIRST_EXCEPTION,
};

/// Python's `concurrent.futures` vocabulary in one place, so this crate's
/// [`Future`] is not mistaken for `std::future::Future`:
/// `use multiproc::futures::{wait, as_completed, Future, FIRST_COMPLETED};`.
pub mod futures {
    pub use crate::executor::{
        as_completed, wait, AsCompleted, DoneAndNotDone, Future, ReturnWhen, Shutdown,
        ALL_COMPLETED, FIRST_COMPLETED, FIRST_EXCEPTION,
    };
}
pub use fdpass::Fd;
pub use manager::Manager;
pub use pipe::{pipe, pipe_one_way, Connection, Receiver, Sender};
pub use pool::{AsyncResult, IMap, Pool, PoolBuilder, ThreadPool, ThreadPoolBuilder, With};
pub use process::{
    active_children, cpu_count, current_process, parent_process, Process, ProcessInfo, Run,
};
pub use progress::Progress;
pub use queue::{JoinableQueue, PutError, Queue, QueueIter};
pub use shm::{Array, ArrayGuard, Plain, Value, ValueGuard};
pub use spawn::ChildInfo;
pub use stats::{PoolStats, RestartReason, Restarts, WorkerStats};
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
