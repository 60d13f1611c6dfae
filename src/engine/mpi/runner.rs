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
        if !fds.is_empty() {
            let e = Error::new(
                ErrorKind::Serialize,
                "a task's argument holds a file descriptor (multiproc::Fd), which cannot travel \
                 between MPI ranks",
            );
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
}
