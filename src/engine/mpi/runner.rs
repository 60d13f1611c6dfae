//! Typed calls become MPI jobs: the same encoded chunks as the process
//! backend's, so a rank hands them to its local workers unchanged.

use std::marker::PhantomData;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::MpiEngine;
use crate::engine::procs::job_done;
use crate::engine::Ticket;
use crate::error::{Error, ErrorKind};
use crate::pool::map::{ChunkDone, ChunkRunner};
use crate::task::{self, TaskFn};

/// Runs chunks of one function on the ranks of an MPI job.
pub(crate) struct MpiRunner<F, A, M> {
    engine: Arc<MpiEngine>,
    offset: i64,
    ticket: Option<Arc<Ticket>>,
    _f: PhantomData<fn(F, A, M)>,
}

impl<F, A, M> MpiRunner<F, A, M>
where
    F: TaskFn<A, M> + Copy,
    A: Serialize + DeserializeOwned,
    F::Output: Serialize,
{
    pub(crate) fn new(engine: &Arc<MpiEngine>, _f: F) -> Self {
        MpiRunner {
            engine: engine.clone(),
            offset: task::trampoline_offset::<F, A, M>(),
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

impl<F, A: Serialize, M> MpiRunner<F, A, M> {
    fn submit<R: DeserializeOwned + Send + 'static>(
        &self,
        items: Vec<A>,
        done: ChunkDone<R>,
        held: bool,
        ticket: Option<Arc<Ticket>>,
    ) {
        let n = items.len();
        let (chunk, fds) = task::encode_chunk(&items);
        drop(items);
        if let Some(e) = refused(&chunk, &fds) {
            return done((0..n).map(|_| Err(e.clone())).collect());
        }
        self.engine.submit(
            self.offset,
            chunk,
            job_done(n, done),
            ticket.or_else(|| self.ticket.clone()),
            held,
        );
    }
}

impl<F, A, M, R> ChunkRunner<A, R> for MpiRunner<F, A, M>
where
    F: TaskFn<A, M, Output = R> + Copy,
    A: Serialize,
    R: DeserializeOwned + Send + 'static,
{
    type Engine = MpiEngine;

    fn engine(&self) -> &Arc<MpiEngine> {
        &self.engine
    }

    fn run_chunk(&self, items: Vec<A>, done: ChunkDone<R>) {
        self.submit(items, done, false, None)
    }

    fn run_chunk_held(&self, items: Vec<A>, done: ChunkDone<R>, ticket: Arc<Ticket>) {
        self.submit(items, done, true, Some(ticket))
    }

    /// Sends the task and polls for its result on this thread when a rank
    /// is free (see `MpiEngine::run_waited`).
    fn apply(&self, args: A) -> crate::error::Result<R> {
        let completion = crate::pool::Completion::new();
        let result = crate::pool::AsyncResult::new(completion.clone());
        let (chunk, fds) = task::encode_chunk(std::slice::from_ref(&args));
        drop(args);
        let done = crate::pool::map::complete_one(completion);
        if let Some(e) = refused(&chunk, &fds) {
            return Err(e);
        }
        self.engine.run_waited(self.offset, chunk, job_done(1, done), || result.ready());
        result.get()
    }
}

// One call is a chunk of one (with the polled path for `apply`).
one_call_is_a_chunk!(MpiRunner);

/// Why an encoded chunk cannot travel to a rank, if it cannot: it holds a
/// descriptor, or it is larger than one batch message may be (a rank drops
/// an oversized message, so the job would never be answered).
fn refused(chunk: &[u8], fds: &[std::os::fd::OwnedFd]) -> Option<Error> {
    if !fds.is_empty() {
        return Some(Error::new(
            ErrorKind::Serialize,
            "a task's argument holds a file descriptor (multiproc::Fd), which cannot travel \
             between MPI ranks",
        ));
    }
    let max = super::comm::MAX_MESSAGE / 2;
    (chunk.len() > max).then(|| {
        Error::new(
            ErrorKind::Serialize,
            format!(
                "a task's arguments encode to {} bytes, more than the {max} bytes one message to \
                 an MPI rank carries; pass large data through shared storage instead",
                chunk.len()
            ),
        )
    })
}
