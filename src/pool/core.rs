//! The process pool's shared state: the queue of jobs waiting for a worker,
//! the pool's run state, and how submitters wake the worker slots.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::error::{Error, ErrorKind, Result};
use crate::sys::EventFd;

/// Called once with a job's raw outcomes (or the reason it has none) and the
/// pid of the worker that ran it.
pub(crate) type JobDone = Box<dyn for<'a> FnOnce(Result<&'a [u8]>, Option<u32>) + Send>;

/// One chunk of work for a worker.
pub(crate) struct Job {
    pub(crate) id: u64,
    pub(crate) offset: i64,
    pub(crate) chunk: Vec<u8>,
    pub(crate) done: JobDone,
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
}

/// How a slot's thread is woken.
pub(crate) struct SlotSignal {
    pub(crate) wake: EventFd,
    /// Set by a slot that is parked with room for more work.
    pub(crate) wants_work: AtomicBool,
}

/// The initializer a worker runs before its first task.
#[derive(Clone)]
pub(crate) struct Init {
    pub(crate) offset: i64,
    pub(crate) chunk: Vec<u8>,
}

pub(crate) struct Config {
    pub(crate) processes: usize,
    pub(crate) init: Option<Init>,
    pub(crate) max_tasks_per_child: Option<usize>,
    pub(crate) task_timeout: Option<Duration>,
    pub(crate) fingerprint: [u8; 16],
}

pub(crate) struct Core {
    pub(crate) queue: Mutex<Queue>,
    pub(crate) slots: Vec<SlotSignal>,
    pub(crate) config: Config,
    pub(crate) threads: Mutex<Vec<JoinHandle<()>>>,
    next_id: AtomicU64,
}

impl Core {
    pub(crate) fn new(config: Config) -> Result<Arc<Core>> {
        let slots = (0..config.processes)
            .map(|_| {
                Ok(SlotSignal {
                    wake: EventFd::new().map_err(|e| Error::io("could not create an eventfd", e))?,
                    wants_work: AtomicBool::new(false),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Arc::new(Core {
            queue: Mutex::new(Queue { jobs: VecDeque::new(), state: RunState::Running, broken: None }),
            slots,
            config,
            threads: Mutex::new(Vec::new()),
            next_id: AtomicU64::new(1),
        }))
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
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
    pub(crate) fn submit(&self, offset: i64, chunk: Vec<u8>, done: JobDone) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let job = Job { id, offset, chunk, done };
        let mut q = self.lock();
        let refusal = match (&q.broken, q.state) {
            (Some(e), _) => Some(e.clone()),
            (None, RunState::Running) => None,
            (None, _) => Some(Error::not_running()),
        };
        if let Some(err) = refusal {
            drop(q);
            return job.fail(err, None);
        }
        q.jobs.push_back(job);
        drop(q);
        self.wake_one();
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
        let n = share.min(room);
        q.jobs.drain(..n).collect()
    }

    pub(crate) fn wake_one(&self) {
        for s in &self.slots {
            if s.wants_work.swap(false, Ordering::SeqCst) {
                s.wake.notify();
                return;
            }
        }
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
