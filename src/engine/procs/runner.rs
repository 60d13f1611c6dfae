//! Typed calls become jobs: a runner for one task function, and the options
//! every process-pool face (Pool, ProcessPoolExecutor) is built from.

use std::marker::PhantomData;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{Config, DeliverOne, JobDone, Outcomes, ProcEngine, Sink};
use crate::engine::Ticket;
use crate::error::{Error, ErrorKind, Result};
use crate::pool::map::{Arm, ChunkDone, ChunkRunner};
use crate::pool::Completion;
use crate::task::{self, TaskFn};

/// The initializer a worker runs before its first task.
pub(crate) struct Init {
    pub(crate) offset: i64,
    pub(crate) chunk: Vec<u8>,
    pub(crate) fds: Vec<OwnedFd>,
}

impl Init {
    /// `f(args)` encoded once, to be sent to every worker.
    pub(crate) fn new<F, A, M>(args: &A) -> Init
    where
        F: TaskFn<A, M> + Copy,
        A: Serialize + DeserializeOwned,
        F::Output: Serialize,
    {
        let (chunk, fds) = task::encode_chunk(std::slice::from_ref(args));
        Init { offset: task::trampoline_offset::<F, A, M>(), chunk, fds }
    }
}

/// What a process-pool builder collects; validated once, in [`build`](Self::build).
#[derive(Default)]
pub(crate) struct ProcOptions {
    pub(crate) workers: Option<usize>,
    pub(crate) init: Option<Init>,
    pub(crate) max_tasks_per_child: Option<usize>,
    pub(crate) task_timeout: Option<Duration>,
    pub(crate) max_memory_per_child: Option<u64>,
    pub(crate) memory_limit: Option<u64>,
    pub(crate) simulate_mismatch: bool,
}

impl ProcOptions {
    /// The engine; `lazy` starts workers only as submissions need them
    /// (executors) rather than all at once (pools). `workers_option` names
    /// the option that sets the number of workers, for the error.
    pub(crate) fn build(self, lazy: bool, workers_option: &str) -> Result<Arc<ProcEngine>> {
        let invalid = |msg: String| Error::new(ErrorKind::InvalidArgument, msg);
        let processes = self.workers.unwrap_or_else(crate::cpu_count);
        if processes == 0 {
            return Err(invalid(format!("{workers_option} must be at least 1 (got 0)")));
        }
        if self.max_tasks_per_child == Some(0) {
            return Err(invalid("max_tasks_per_child must be at least 1 (got 0)".into()));
        }
        if self.task_timeout == Some(Duration::ZERO) {
            return Err(invalid("task_timeout must be longer than zero".into()));
        }
        super::memory::check_caps(self.max_memory_per_child, self.memory_limit)?;
        let mut fingerprint = task::fingerprint();
        if self.simulate_mismatch {
            fingerprint[0] ^= 0xff;
        }
        ProcEngine::new(Config {
            processes,
            init: self.init,
            max_tasks_per_child: self.max_tasks_per_child,
            task_timeout: self.task_timeout,
            max_memory_per_child: self.max_memory_per_child,
            memory_limit: self.memory_limit,
            fingerprint,
            lazy,
        })
    }
}

/// Runs chunks of one function on a process pool.
pub(crate) struct ProcRunner<F, A, M> {
    engine: Arc<ProcEngine>,
    /// The task's trampoline offset and its function's name.
    entry: (i64, &'static str),
    ticket: Option<Arc<Ticket>>,
    _f: PhantomData<fn(F, A, M)>,
}

impl<F, A, M> ProcRunner<F, A, M>
where
    F: TaskFn<A, M> + Copy,
    A: Serialize + DeserializeOwned,
    F::Output: Serialize,
{
    pub(crate) fn new(engine: &Arc<ProcEngine>, _f: F) -> Self {
        ProcRunner {
            engine: engine.clone(),
            entry: (task::trampoline_offset::<F, A, M>(), std::any::type_name::<F>()),
            ticket: None,
            _f: PhantomData,
        }
    }

    /// Tracks the (single) job through `ticket`, for executor futures.
    pub(crate) fn with_ticket(mut self, ticket: Arc<Ticket>) -> Self {
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
        ticket: Option<Arc<Ticket>>,
    ) where
        A: Serialize,
    {
        let n = items.len();
        let encoded = task::encode_chunk(&items);
        drop(items);
        self.engine.submit(
            self.entry,
            encoded,
            job_done(n, done),
            ticket.or_else(|| self.ticket.clone()),
            held,
        );
    }
}

/// A chunk of one item delivers its outcome into the caller's result
/// directly: no callback box (a chunk's callback wrapped in
/// [`complete_one`](crate::pool::map::complete_one) is two), and no vector
/// for the one outcome.
impl<R: DeserializeOwned + Send + 'static> DeliverOne for Completion<R, ()> {
    fn deliver(self: Arc<Self>, outcome: Result<Outcomes<'_>>, pid: Option<u32>) {
        self.complete(match outcome {
            Ok((bytes, fds)) => task::decode_one(bytes, fds, pid),
            Err(e) => Err(e),
        })
    }
}

/// The completion of one call, and its sink. The completion is made here,
/// with its tail's type still known: only an `Arc` of a sized type can be
/// viewed as an `Arc<dyn DeliverOne>`.
fn one_done<R: DeserializeOwned + Send + 'static>() -> (Arc<Completion<R>>, Sink) {
    let done = Completion::with(());
    (done.clone(), Sink::One(done))
}

/// The job callback that decodes a chunk of `n` outcomes for `done`.
pub(crate) fn job_done<R: DeserializeOwned + Send + 'static>(
    n: usize,
    done: ChunkDone<R>,
) -> JobDone {
    Box::new(move |outcome, pid| match outcome {
        Ok((bytes, fds)) => done(task::decode_outcomes(bytes, fds, n, pid)),
        Err(e) => done((0..n).map(|_| Err(e.clone())).collect()),
    })
}

impl<F, A, M, R> ChunkRunner<A, R> for ProcRunner<F, A, M>
where
    F: TaskFn<A, M, Output = R> + Copy,
    A: Serialize,
    R: DeserializeOwned + Send + 'static,
{
    type Engine = ProcEngine;

    fn engine(&self) -> &Arc<ProcEngine> {
        &self.engine
    }

    fn run_chunk(&self, items: Vec<A>, done: ChunkDone<R>) {
        self.submit(items, done, false, None)
    }

    fn run_chunk_held(&self, items: Vec<A>, done: ChunkDone<R>, ticket: Arc<Ticket>) {
        self.submit(items, done, true, Some(ticket))
    }

    /// A chunk of one, encoded from the item itself (no vector for it) and
    /// completed by one callback.
    fn run_one(&self, item: A, arm: impl Arm<R>) -> Result<Arc<Completion<R>>> {
        let (done, sink) = one_done();
        arm(&done)?;
        let encoded = task::encode_one(&item);
        drop(item);
        self.engine.submit(self.entry, encoded, sink, self.ticket.clone(), false);
        Ok(done)
    }

    /// Runs the task on this thread when a worker is idle: no thread
    /// hand-off on either side of the round trip (see `lend`).
    fn apply(&self, args: A) -> Result<R> {
        let (completion, sink) = one_done();
        let encoded = task::encode_one(&args);
        drop(args);
        self.engine.run_waited(self.entry, encoded, sink);
        crate::pool::AsyncResult::new(completion).get()
    }
}

// One call is a chunk of one (with the lent-worker path for `apply`).
one_call_is_a_chunk!(ProcRunner);
