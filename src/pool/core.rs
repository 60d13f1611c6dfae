//! The process pool's shared state: the queue of jobs waiting for a worker,
//! the pool's run state, and how submitters wake the worker slots.

use std::collections::VecDeque;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::error::{Error, ErrorKind, Result};
use crate::sys::EventFd;

/// A job's raw outcomes and the descriptors that came with them.
pub(crate) type Outcomes<'a> = (&'a [u8], Vec<OwnedFd>);

/// Called once with a job's raw outcomes (or the reason it has none) and the
/// pid of the worker that ran it.
pub(crate) type JobDone = Box<dyn for<'a> FnOnce(Result<Outcomes<'a>>, Option<u32>) + Send>;

/// Where a job is, for `Future::running`, `cancel` and `kill`.
pub(crate) struct Ticket {
    phase: AtomicU8,
    /// Set by `Future::kill`: the slot kills the worker running this job.
    pub(crate) kill: AtomicBool,
    /// The slot that holds the job once it is sent.
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
    fn unsend(&self) {
        let _ = self.phase.compare_exchange(SENT, QUEUED, Ordering::SeqCst, Ordering::SeqCst);
    }

    pub(crate) fn is_sent(&self) -> bool {
        self.phase.load(Ordering::SeqCst) == SENT
    }
}

/// One chunk of work for a worker.
pub(crate) struct Job {
    pub(crate) id: u64,
    pub(crate) offset: i64,
    pub(crate) chunk: crate::wire::Chunk,
    /// Handles inside the arguments; duplicates are sent, so the job can be
    /// sent again if its worker dies before running it.
    pub(crate) fds: Vec<OwnedFd>,
    pub(crate) done: JobDone,
    pub(crate) ticket: Option<Arc<Ticket>>,
}

impl Job {
    pub(crate) fn fail(self, err: Error, pid: Option<u32>) {
        (self.done)(Err(err), pid)
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum RunState {
    Running,
    Closed,
    Terminated,
}

pub(crate) struct Queue {
    pub(crate) jobs: VecDeque<Job>,
    pub(crate) state: RunState,
    /// Set when the pool cannot run tasks at all (initializer failed, build
    /// mismatch, no process could be started); every task fails with it.
    pub(crate) broken: Option<Error>,
    /// Iterators started while the pool ran that may still submit after
    /// `close()`; workers stay until they are done (or cut off).
    pub(crate) holds: usize,
    /// Set by an executor's shutdown: holds no longer keep workers.
    pub(crate) holds_cut: bool,
}

impl Queue {
    /// True once a closed pool has nothing left to run or wait for.
    pub(crate) fn finished(&self) -> bool {
        self.state == RunState::Closed
            && self.jobs.is_empty()
            && (self.holds == 0 || self.holds_cut)
    }

    /// Why a submission is refused, if it is.
    fn refusal(&self, held: bool) -> Option<Error> {
        match (&self.broken, self.state) {
            (Some(e), _) => Some(e.clone()),
            (None, RunState::Running) => None,
            (None, RunState::Closed) if held && self.holds > 0 && !self.holds_cut => None,
            (None, _) => Some(Error::not_running()),
        }
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
}

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
        F: crate::task::TaskFn<A, M> + Copy,
        A: serde::Serialize + serde::de::DeserializeOwned,
        F::Output: serde::Serialize,
    {
        let (chunk, fds) = crate::task::encode_chunk(std::slice::from_ref(args));
        Init { offset: crate::task::trampoline_offset::<F, A, M>(), chunk, fds }
    }
}

pub(crate) struct Config {
    pub(crate) processes: usize,
    pub(crate) init: Option<Init>,
    pub(crate) max_tasks_per_child: Option<usize>,
    pub(crate) task_timeout: Option<Duration>,
    pub(crate) fingerprint: [u8; 16],
    /// Start workers only as submissions need them (executors), rather than
    /// all at once (pools).
    pub(crate) lazy: bool,
}

pub(crate) struct Core {
    pub(crate) queue: Mutex<Queue>,
    pub(crate) slots: Vec<SlotSignal>,
    pub(crate) config: Config,
    pub(crate) threads: Mutex<Vec<JoinHandle<()>>>,
    started: AtomicUsize,
    next_id: AtomicU64,
}

impl Core {
    pub(crate) fn new(config: Config) -> Result<Arc<Core>> {
        let slots = (0..config.processes)
            .map(|_| {
                Ok(SlotSignal {
                    wake: EventFd::new()
                        .map_err(|e| Error::io("could not create an eventfd", e))?,
                    wants_work: AtomicBool::new(false),
                    idle: AtomicBool::new(false),
                    vacant: AtomicBool::new(false),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Arc::new(Core {
            queue: Mutex::new(Queue {
                jobs: VecDeque::new(),
                state: RunState::Running,
                broken: None,
                holds: 0,
                holds_cut: false,
            }),
            slots,
            config,
            threads: Mutex::new(Vec::new()),
            started: AtomicUsize::new(0),
            next_id: AtomicU64::new(1),
        }))
    }

    /// Starts the thread of the next slot, which starts its worker; false
    /// when every slot has one.
    pub(crate) fn start_slot(self: &Arc<Self>) -> Result<bool> {
        let mut threads = self.threads.lock().unwrap_or_else(|e| e.into_inner());
        let index = self.started.load(Ordering::SeqCst);
        if index >= self.slots.len() {
            return Ok(false);
        }
        // Starting means free soon: busy slots leave queued jobs for it.
        self.slots[index].vacant.store(true, Ordering::SeqCst);
        let core = self.clone();
        let handle = std::thread::Builder::new()
            .name(format!("multiproc-slot-{index}"))
            .spawn(move || super::slot::run(core, index))
            .map_err(|e| Error::io("could not start a pool thread", e))?;
        threads.push(handle);
        self.started.store(index + 1, Ordering::SeqCst);
        Ok(true)
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps workers after `close()` until the returned release runs.
    pub(crate) fn hold_open(self: &Arc<Self>) -> Option<super::map::Release> {
        let mut q = self.lock();
        if q.state != RunState::Running || q.broken.is_some() {
            return None;
        }
        q.holds += 1;
        let core = self.clone();
        Some(Box::new(move || {
            core.lock().holds -= 1;
            core.wake_all();
        }))
    }

    /// Lets closed pools stop waiting for iterators (executor shutdown).
    pub(crate) fn cut_holds(&self) {
        self.lock().holds_cut = true;
        self.wake_all();
    }

    /// Fails unless the pool takes new tasks.
    pub(crate) fn check_running(&self) -> Result<()> {
        let q = self.lock();
        match (&q.broken, q.state) {
            (Some(e), _) => Err(e.clone()),
            (None, RunState::Running) => Ok(()),
            (None, _) => Err(Error::not_running()),
        }
    }

    /// Queues a job, or fails it at once if the pool takes no tasks.
    pub(crate) fn submit(
        self: &Arc<Self>,
        offset: i64,
        (chunk, fds): (Vec<u8>, Vec<OwnedFd>),
        done: JobDone,
        ticket: Option<Arc<Ticket>>,
        held: bool,
    ) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let job = Job { id, offset, chunk: chunk.into(), fds, done, ticket };
        let mut q = self.lock();
        if let Some(err) = q.refusal(held) {
            drop(q);
            return job.fail(err, None);
        }
        // Each idle worker answers for one submission: a burst of submissions
        // finds one idle worker and starts more, up to the limit. Looked at
        // before the job is queued, as the worker may take it at once.
        let idle_found =
            self.config.lazy && self.slots.iter().any(|s| s.idle.swap(false, Ordering::SeqCst));
        if self.config.lazy && !idle_found {
            // The worker about to start counts as free from now on, so a busy
            // one does not take this job first.
            if let Some(next) = self.slots.get(self.started.load(Ordering::SeqCst)) {
                next.vacant.store(true, Ordering::SeqCst);
            }
        }
        q.jobs.push_back(job);
        drop(q);
        self.wake_one();
        if self.config.lazy && !idle_found {
            if let Err(e) = self.start_slot() {
                self.break_pool(e);
            }
        }
    }

    /// Puts jobs that never started back at the head of the queue.
    pub(crate) fn requeue(&self, jobs: impl DoubleEndedIterator<Item = Job>) {
        let mut q = self.lock();
        if q.state == RunState::Terminated || q.broken.is_some() {
            let err = q.broken.clone().unwrap_or_else(cancelled);
            drop(q);
            jobs.for_each(|j| j.fail(err.clone(), None));
            return;
        }
        for job in jobs.rev() {
            if let Some(t) = &job.ticket {
                t.unsend();
            }
            q.jobs.push_front(job);
        }
        drop(q);
        self.wake_all();
    }

    /// Takes up to `room` jobs, leaving a fair share for the other slots.
    pub(crate) fn take(&self, room: usize) -> Vec<Job> {
        let mut q = self.lock();
        if q.state == RunState::Terminated || q.broken.is_some() {
            return Vec::new();
        }
        let share = q.jobs.len().div_ceil(self.slots.len());
        let mut taken = Vec::with_capacity(share.min(room));
        while taken.len() < share.min(room) {
            let Some(job) = q.jobs.pop_front() else { break };
            // A job cancelled while queued was already completed by `cancel`.
            if job.ticket.as_ref().is_none_or(|t| t.start()) {
                taken.push(job);
            }
        }
        taken
    }

    /// Fails every queued job with [`cancelled`] (`shutdown(cancel_futures)`).
    pub(crate) fn cancel_queued(&self) {
        let jobs: Vec<Job> = self.lock().jobs.drain(..).collect();
        for j in jobs {
            if j.ticket.as_ref().is_none_or(|t| t.cancel()) {
                j.fail(cancelled(), None);
            }
        }
    }

    /// Wakes one parked slot with room, a vacant one first.
    pub(crate) fn wake_one(&self) {
        for vacant_only in [true, false] {
            for s in &self.slots {
                if (!vacant_only || s.vacant.load(Ordering::SeqCst))
                    && s.wants_work.swap(false, Ordering::SeqCst)
                {
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

    pub(crate) fn wake_all(&self) {
        for s in &self.slots {
            s.wake.notify();
        }
    }

    /// Marks the pool unusable and fails everything queued with `err`.
    pub(crate) fn break_pool(&self, err: Error) {
        let mut q = self.lock();
        if q.broken.is_none() {
            q.broken = Some(err.clone());
        }
        let jobs: Vec<Job> = q.jobs.drain(..).collect();
        drop(q);
        for j in jobs {
            j.fail(err.clone(), None);
        }
        self.wake_all();
    }

    pub(crate) fn close(&self) {
        let mut q = self.lock();
        if q.state == RunState::Running {
            q.state = RunState::Closed;
        }
        drop(q);
        self.wake_all();
    }

    pub(crate) fn terminate(&self) {
        let mut q = self.lock();
        q.state = RunState::Terminated;
        let jobs: Vec<Job> = q.jobs.drain(..).collect();
        drop(q);
        for j in jobs {
            j.fail(cancelled(), None);
        }
        self.wake_all();
    }

    /// Waits for every slot thread (except the caller's own) to finish.
    pub(crate) fn join_threads(&self) {
        let handles: Vec<JoinHandle<()>> =
            std::mem::take(&mut *self.threads.lock().unwrap_or_else(|e| e.into_inner()));
        let me = std::thread::current().id();
        for h in handles {
            if h.thread().id() != me {
                let _ = h.join();
            }
        }
    }
}

pub(crate) fn cancelled() -> Error {
    Error::new(
        ErrorKind::Cancelled,
        "the pool was terminated before this task finished; resubmit it to a running pool",
    )
}
