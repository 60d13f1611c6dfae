//! The process backend: worker processes, one slot thread each.
//!
//! Here are the queue of jobs waiting for a worker and how submitters wake
//! the slots; [`slot`] is one slot's thread (start a worker, feed it, read
//! its results, replace it when it dies); [`runner`] turns typed calls into
//! jobs.

mod lend;
pub(crate) mod memory;
mod runner;
mod slot;

#[cfg(feature = "mpi")]
pub(crate) use runner::job_done;
pub(crate) use runner::{Init, ProcOptions, ProcRunner};

use std::collections::VecDeque;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{cancelled, Engine, Lifecycle, Ticket};
use crate::error::{Error, Result};
use crate::sys::EventFd;

/// A job's raw outcomes and the descriptors that came with them.
pub(crate) type Outcomes<'a> = (&'a [u8], Vec<OwnedFd>);

/// Called once with a job's raw outcomes (or the reason it has none) and the
/// pid of the worker that ran it.
pub(crate) type JobDone = Box<dyn for<'a> FnOnce(Result<Outcomes<'a>>, Option<u32>) + Send>;

/// A job's outcome for one waiting result (`apply`, `apply_async`, an
/// executor's `submit`), delivered by the result itself: the completion is
/// shared with its caller already, so the job needs no box of its own.
pub(crate) trait DeliverOne: Send + Sync {
    fn deliver(self: Arc<Self>, outcome: Result<Outcomes<'_>>, pid: Option<u32>);
}

/// Where a job's outcome goes: called exactly once.
pub(crate) enum Sink {
    /// A chunk's callback.
    Call(JobDone),
    /// One call's result, with no callback allocated for it.
    One(Arc<dyn DeliverOne>),
}

impl Sink {
    pub(crate) fn call(self, outcome: Result<Outcomes<'_>>, pid: Option<u32>) {
        match self {
            Sink::Call(f) => f(outcome, pid),
            Sink::One(result) => result.deliver(outcome, pid),
        }
    }
}

impl From<JobDone> for Sink {
    fn from(f: JobDone) -> Sink {
        Sink::Call(f)
    }
}

/// One chunk of work for a worker.
pub(crate) struct Job {
    pub(crate) id: u64,
    /// The task function's type name, for messages that name the task.
    pub(crate) name: &'static str,
    pub(crate) offset: i64,
    pub(crate) args: Args,
    /// Handles inside the arguments; duplicates are sent, so the job can be
    /// sent again if its worker dies before running it.
    pub(crate) fds: Vec<OwnedFd>,
    pub(crate) done: Sink,
    pub(crate) ticket: Option<Arc<Ticket>>,
}

/// A job's encoded arguments, kept until its outcomes are in.
pub(crate) enum Args {
    /// The chunk, which each send puts after the task frame's head.
    Chunk(crate::wire::Chunk),
    /// A large chunk's whole task frame body (head and chunk), written into
    /// a frozen file when the job was made (see [`crate::wire::Frozen`]).
    Frozen(crate::wire::Frozen),
}

impl Job {
    pub(crate) fn fail(self, err: Error, pid: Option<u32>) {
        self.done.call(Err(err), pid)
    }
}

/// How a slot's thread is woken.
pub(crate) struct SlotSignal {
    pub(crate) wake: EventFd,
    /// Set by a slot that is parked with room for more work.
    pub(crate) wants_work: AtomicBool,
    /// Set while the slot's worker is ready and holds no job. Set before the
    /// last result is delivered, so a caller who submits again at once finds
    /// this worker instead of starting another.
    pub(crate) idle: AtomicBool,
    /// True while the slot's worker is ready and holds no job: busy slots
    /// leave queued jobs to vacant ones rather than pipelining them.
    pub(crate) vacant: AtomicBool,
    /// How many jobs the slot's worker holds (sent to it, not yet done):
    /// with the queue's length, the pool's outstanding work, of which no
    /// slot takes more than its fair share (see [`ProcEngine::take`]).
    pub(crate) held: AtomicUsize,
    /// The slot's idle worker, offered to a caller who waits (see `lend`).
    offer: lend::Offer,
}

pub(crate) struct Config {
    pub(crate) processes: usize,
    pub(crate) init: Option<Init>,
    pub(crate) max_tasks_per_child: Option<usize>,
    pub(crate) task_timeout: Option<Duration>,
    /// Soft cap: a worker whose resident set exceeds this many bytes after
    /// a task is replaced (its result is delivered).
    pub(crate) max_memory_per_child: Option<u64>,
    /// Hard cap: the address space a worker may have (`RLIMIT_AS`).
    pub(crate) memory_limit: Option<u64>,
    pub(crate) fingerprint: [u8; 16],
    /// Start workers only as submissions need them (executors), rather than
    /// all at once (pools).
    pub(crate) lazy: bool,
}

/// The process backend's engine.
pub(crate) struct ProcEngine {
    lifecycle: Lifecycle,
    /// Jobs waiting for a worker.
    queue: Mutex<VecDeque<Job>>,
    pub(crate) slots: Vec<SlotSignal>,
    pub(crate) config: Config,
    threads: Mutex<Vec<JoinHandle<()>>>,
    started: AtomicUsize,
    next_id: AtomicU64,
    pub(crate) meters: crate::stats::Meters,
}

impl ProcEngine {
    pub(crate) fn new(config: Config) -> Result<Arc<ProcEngine>> {
        let slots = (0..config.processes)
            .map(|_| {
                Ok(SlotSignal {
                    wake: EventFd::new()
                        .map_err(|e| Error::io("could not create an eventfd", e))?,
                    wants_work: AtomicBool::new(false),
                    idle: AtomicBool::new(false),
                    vacant: AtomicBool::new(false),
                    held: AtomicUsize::new(0),
                    offer: lend::Offer::new(),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let lazy = config.lazy;
        let meters = crate::stats::Meters::new(config.processes);
        let engine = Arc::new(ProcEngine {
            lifecycle: Lifecycle::new(),
            queue: Mutex::new(VecDeque::new()),
            slots,
            config,
            threads: Mutex::new(Vec::new()),
            started: AtomicUsize::new(0),
            next_id: AtomicU64::new(1),
            meters,
        });
        if !lazy {
            while engine.start_slot()? {}
        }
        Ok(engine)
    }

    /// Starts the thread of the next slot, which starts its worker; false
    /// when every slot has one.
    fn start_slot(self: &Arc<Self>) -> Result<bool> {
        let mut threads = self.threads.lock().unwrap_or_else(|e| e.into_inner());
        let index = self.started.load(Ordering::SeqCst);
        if index >= self.slots.len() {
            return Ok(false);
        }
        // Starting means free soon: busy slots leave queued jobs for it.
        self.slots[index].vacant.store(true, Ordering::SeqCst);
        let engine = self.clone();
        let handle = std::thread::Builder::new()
            .name(format!("multiproc-slot-{index}"))
            .spawn(move || slot::run(engine, index))
            .map_err(|e| Error::io("could not start a pool thread", e))?;
        threads.push(handle);
        self.started.store(index + 1, Ordering::SeqCst);
        Ok(true)
    }

    fn lock(&self) -> MutexGuard<'_, VecDeque<Job>> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// True once a closed pool has nothing left to run or wait for.
    pub(crate) fn finished(&self) -> bool {
        let q = self.lock();
        self.lifecycle.finished(q.is_empty())
    }

    /// Queues a job, or fails it at once if the pool takes no tasks.
    pub(crate) fn submit(
        self: &Arc<Self>,
        (offset, name): (i64, &'static str),
        chunk: (impl Into<crate::wire::Chunk>, Vec<OwnedFd>),
        done: impl Into<Sink>,
        ticket: Option<Arc<Ticket>>,
        held: bool,
    ) {
        let job = self.job((offset, name), (chunk.0.into(), chunk.1), done.into(), ticket);
        self.submit_job(job, held)
    }

    fn job(
        &self,
        (offset, name): (i64, &'static str),
        (chunk, fds): (crate::wire::Chunk, Vec<OwnedFd>),
        done: Sink,
        ticket: Option<Arc<Ticket>>,
    ) -> Job {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        // A chunk that will travel in a file goes there now, and the bytes
        // it was encoded into are freed before the next job is encoded.
        let task = crate::wire::Task {
            id,
            call: crate::wire::Call { entry: offset, chunk: &chunk[..] },
            waited: false,
        };
        let args = match task.freeze() {
            Some(frozen) => {
                // Its bytes are in the file: their buffer takes the next
                // large encoding on this thread.
                if let crate::wire::Chunk::Large(bytes) = chunk {
                    if let Ok(bytes) = Arc::try_unwrap(bytes) {
                        crate::spare::give(bytes);
                    }
                }
                Args::Frozen(frozen)
            }
            None => Args::Chunk(chunk),
        };
        Job { id, name, offset, args, fds, done, ticket }
    }

    /// Runs a job for a caller who will wait for it: on this thread, on an
    /// idle worker if one is offered (see `lend`), else queued as usual.
    pub(crate) fn run_waited(
        self: &Arc<Self>,
        entry: (i64, &'static str),
        chunk: (impl Into<crate::wire::Chunk>, Vec<OwnedFd>),
        done: impl Into<Sink>,
    ) {
        let job = self.job(entry, (chunk.0.into(), chunk.1), done.into(), None);
        if let Some(err) = self.lifecycle.refusal(false) {
            return job.fail(err, None);
        }
        for (index, s) in self.slots.iter().enumerate() {
            if !s.offer.take() {
                continue;
            }
            s.vacant.store(false, Ordering::SeqCst);
            let unwinding = GiveBackOnUnwind(s);
            let start = Instant::now();
            self.meters.started(index, start);
            let ran = match s.offer.lock_lent().as_mut() {
                Some(lent) => lend::run(lent, job, |conn, job| slot::write_task(conn, job, true)),
                None => Err(lend::Returned { job, written: false, how: lend::How::Died }),
            };
            match ran {
                Ok(()) => {
                    self.meters.finished(index, start.elapsed(), None);
                    std::mem::forget(unwinding);
                    s.vacant.store(true, Ordering::SeqCst);
                    if s.offer.give_back() {
                        s.wake.notify();
                    }
                    return;
                }
                Err(returned) => {
                    std::mem::forget(unwinding);
                    s.offer.hand_back(returned);
                    s.offer.give_back_failed();
                    s.wake.notify();
                    return;
                }
            }
        }
        self.submit_job(job, false)
    }

    fn submit_job(self: &Arc<Self>, job: Job, held: bool) {
        let mut q = self.lock();
        // Checked under the queue's lock: see the rule in `lifecycle`.
        if let Some(err) = self.lifecycle.refusal(held) {
            drop(q);
            return job.fail(err, None);
        }
        let lazy = self.config.lazy;
        // Each idle worker answers for one submission: a burst of submissions
        // finds one idle worker and starts more, up to the limit. Looked at
        // before the job is queued, as the worker may take it at once.
        let idle_found = lazy && self.slots.iter().any(|s| s.idle.swap(false, Ordering::SeqCst));
        if lazy && !idle_found {
            // The worker about to start counts as free from now on, so a busy
            // one does not take this job first.
            if let Some(next) = self.slots.get(self.started.load(Ordering::SeqCst)) {
                next.vacant.store(true, Ordering::SeqCst);
            }
        }
        q.push_back(job);
        let queued = q.len();
        drop(q);
        self.wake_one(queued);
        if lazy && !idle_found {
            if let Err(e) = self.start_slot() {
                self.break_with(e);
            }
        }
    }

    /// Puts jobs that never started back at the head of the queue.
    pub(crate) fn requeue(&self, jobs: impl DoubleEndedIterator<Item = Job>) {
        let mut q = self.lock();
        if self.lifecycle.is_stopped() {
            drop(q);
            let err = self.lifecycle.broken().unwrap_or_else(cancelled);
            jobs.for_each(|j| j.fail(err.clone(), None));
            return;
        }
        for job in jobs.rev() {
            if let Some(t) = &job.ticket {
                t.unsend();
            }
            q.push_front(job);
        }
        drop(q);
        self.wake_all();
    }

    /// How many more jobs slot `me` may take when `queued` wait: its fair
    /// share of all the pool's outstanding work (queued, and held by every
    /// slot), less what it holds. A slot that wakes first after a burst of
    /// submissions thus cannot take the lot before its pace shows the jobs
    /// are slow: jobs sent to a worker stay with it, however long the one
    /// before them runs.
    fn allowance(&self, me: usize, queued: usize) -> usize {
        let mut outstanding = queued;
        let mut mine = 0;
        for (i, s) in self.slots.iter().enumerate() {
            let held = s.held.load(Ordering::SeqCst);
            outstanding += held;
            if i == me {
                mine = held;
            }
        }
        outstanding.div_ceil(self.slots.len()).saturating_sub(mine).min(queued)
    }

    /// True when jobs wait that slot `me` may take.
    pub(crate) fn has_work_for(&self, me: usize) -> bool {
        let q = self.lock();
        self.allowance(me, q.len()) > 0
    }

    /// Takes up to `room` jobs for slot `me` into `taken` (empty: a buffer
    /// the slot keeps, so a turn allocates nothing), leaving the other
    /// slots their fair share of the outstanding work (see `allowance`).
    pub(crate) fn take(&self, me: usize, room: usize, taken: &mut Vec<Job>) {
        debug_assert!(taken.is_empty());
        let mut q = self.lock();
        if self.lifecycle.is_stopped() {
            return;
        }
        let want = self.allowance(me, q.len()).min(room);
        taken.reserve(want);
        while taken.len() < want {
            let Some(job) = q.pop_front() else { break };
            // A job cancelled while queued was already completed by `cancel`.
            if job.ticket.as_ref().is_none_or(|t| t.start()) {
                taken.push(job);
            }
        }
        // Counted before the lock goes, so the next slot's share sees them.
        self.slots[me].held.fetch_add(taken.len(), Ordering::SeqCst);
    }

    /// Wakes one parked slot with room, a vacant one first, else one whose
    /// fair share lets it take one of the `queued` jobs. A slot left asleep
    /// for want of a share holds jobs, so it wakes on its next result and
    /// looks at the queue again.
    fn wake_one(&self, queued: usize) {
        for vacant_only in [true, false] {
            for (i, s) in self.slots.iter().enumerate() {
                // Busy slots (the usual case under a burst) cost one load.
                if !s.wants_work.load(Ordering::SeqCst) {
                    continue;
                }
                let may = if vacant_only {
                    s.vacant.load(Ordering::SeqCst)
                } else {
                    self.allowance(i, queued) > 0
                };
                if may && s.wants_work.swap(false, Ordering::SeqCst) {
                    s.wake.notify();
                    return;
                }
            }
        }
    }

    /// True when a slot other than `me` is vacant.
    pub(crate) fn other_vacant(&self, me: usize) -> bool {
        self.slots.iter().enumerate().any(|(i, s)| i != me && s.vacant.load(Ordering::SeqCst))
    }
}

/// Gives a lent worker back to its slot if the caller's thread unwinds
/// mid-call (a panic in the result's delivery), so the slot is never left
/// waiting for a call that will not end; the slot then finds nothing handed
/// back and serves the worker as usual.
struct GiveBackOnUnwind<'a>(&'a SlotSignal);

impl Drop for GiveBackOnUnwind<'_> {
    fn drop(&mut self) {
        self.0.offer.give_back_failed();
        self.0.wake.notify();
    }
}

impl Engine for ProcEngine {
    fn lifecycle(&self) -> &Lifecycle {
        &self.lifecycle
    }

    fn workers(&self) -> usize {
        self.config.processes
    }

    fn wake_all(&self) {
        for s in &self.slots {
            s.wake.notify();
        }
    }

    fn fail_queued(&self, err: Error) {
        let jobs: Vec<Job> = self.lock().drain(..).collect();
        for j in jobs {
            if j.ticket.as_ref().is_none_or(|t| t.cancel()) {
                j.fail(err.clone(), None);
            }
        }
    }

    fn join_workers(&self) {
        let handles: Vec<JoinHandle<()>> =
            std::mem::take(&mut *self.threads.lock().unwrap_or_else(|e| e.into_inner()));
        let me = std::thread::current().id();
        for h in handles {
            if h.thread().id() != me {
                let _ = h.join();
            }
        }
    }

    fn kill_running(&self, ticket: &Ticket) -> bool {
        ticket.kill.store(true, Ordering::SeqCst);
        if let Some(s) = self.slots.get(ticket.slot.load(Ordering::SeqCst)) {
            s.wake.notify();
        }
        true
    }

    /// Terminates, as Python's `with Pool() as p:` does on exit, and reaps
    /// the workers.
    fn face_dropped(&self) {
        self.terminate();
        self.join_workers();
    }

    fn stats(&self) -> crate::stats::PoolStats {
        self.meters.snapshot()
    }
}
