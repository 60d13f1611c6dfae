//! `Barrier`: parties wait until all have arrived.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::lock::Mutex;
use super::remaining;
use crate::error::{Error, ErrorKind, Result};
use crate::shm::Cell;
use crate::sys;
use crate::task::{self, TaskFn};

#[repr(C)]
struct BarrierMem {
    parties: AtomicU32,
    /// Parties waiting now (changed under the mutex).
    count: AtomicU32,
    /// The futex word: bumped by every release, abort and reset.
    epoch: AtomicU32,
    /// Bumped by every release only.
    released: AtomicU32,
    /// Bumped by every reset only.
    resets: AtomicU32,
    broken: AtomicU32,
}

/// A barrier for a fixed number of parties across processes: Python's
/// `multiprocessing.Barrier`.
///
/// # Examples
///
/// ```
/// use multiproc::{Barrier, Process};
///
/// fn party(b: Barrier) { b.wait(None).unwrap(); }
///
/// let b = Barrier::new(2)?;
/// let mut p = Process::new(party, b.clone());
/// p.start()?;
/// let index = b.wait(None)?;
/// assert!(index < 2);
/// p.join()?;
/// # Ok::<(), multiproc::Error>(())
/// ```
///
/// With an action (Python's `Barrier(parties, action)`), the last party to
/// arrive runs it before any party is released:
///
/// ```
/// use multiproc::{Barrier, Process};
///
/// fn party(b: Barrier) { b.wait(None).unwrap(); }
/// fn all_here() { println!("every party has arrived"); }
///
/// let b = Barrier::with_action(2, all_here)?;
/// let mut p = Process::new(party, b.clone());
/// p.start()?;
/// b.wait(None)?;
/// p.join()?;
/// # Ok::<(), multiproc::Error>(())
/// ```
#[derive(Clone, Serialize, Deserialize)]
pub struct Barrier {
    mutex: Mutex,
    cell: Cell<BarrierMem>,
    /// The action's task entry (an offset checked where it runs, as a
    /// task's is: a handle from another process may carry any number).
    action: Option<i64>,
}

fn broken() -> Error {
    Error::new(
        ErrorKind::BrokenBarrier,
        "the barrier is broken (aborted, reset, or a wait timed out)",
    )
}

impl Barrier {
    /// A barrier for `parties` parties.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidArgument`] for 0 parties; shared memory failures.
    pub fn new(parties: u32) -> Result<Barrier> {
        if parties == 0 {
            return Err(Error::new(ErrorKind::InvalidArgument, "a barrier needs at least 1 party"));
        }
        let cell = Cell::<BarrierMem>::zeroed()?;
        cell.get().parties.store(parties, Ordering::SeqCst);
        Ok(Barrier { mutex: Mutex::new(false)?, cell, action: None })
    }

    /// A barrier for `parties` parties whose last party to arrive runs
    /// `action` before any is released, in its own process. If the action
    /// panics, that party's `wait` fails with the panic and the barrier
    /// breaks for the others (as in Python).
    ///
    /// `action` is a `fn` item or a closure that captures nothing, as a
    /// process pool's task is, so any process of this program can run it.
    ///
    /// # Errors
    /// As [`new`](Self::new).
    pub fn with_action<F, M>(parties: u32, _action: F) -> Result<Barrier>
    where
        F: TaskFn<(), M, Output = ()> + Copy,
    {
        let mut barrier = Barrier::new(parties)?;
        barrier.action = Some(task::trampoline_offset::<F, (), M>());
        Ok(barrier)
    }

    /// Runs the action, if there is one; its failure, if it fails.
    fn run_action(&self) -> Result<()> {
        let Some(offset) = self.action else {
            return Ok(());
        };
        let (chunk, fds) = task::encode_chunk(&[()]);
        let mut out = Vec::new();
        let fds = task::run_chunk_at(offset, &chunk, fds, &mut out);
        match task::decode_outcomes::<()>(&out, fds, 1, None).pop() {
            Some(Ok(())) => Ok(()),
            Some(Err(e)) => {
                Err(Error::new(e.kind(), format!("the barrier's action failed: {}", e.message())))
            }
            None => Err(Error::new(ErrorKind::Protocol, "the barrier's action returned nothing")),
        }
    }

    fn mem(&self) -> &BarrierMem {
        self.cell.get()
    }

    fn wake_all(&self) {
        self.mem().epoch.fetch_add(1, Ordering::SeqCst);
        sys::futex_wake(&self.mem().epoch, i32::MAX);
    }

    /// Waits until every party has called `wait`; returns this party's
    /// arrival index (0 for the first, `parties - 1` for the last). A timeout
    /// breaks the barrier for everyone.
    ///
    /// # Errors
    /// [`ErrorKind::BrokenBarrier`] when the barrier is or becomes broken.
    ///
    /// # Examples
    ///
    /// ```
    /// let b = multiproc::Barrier::new(2)?;
    /// let other = b.clone();
    /// let t = std::thread::spawn(move || other.wait(None));
    /// b.wait(None)?;
    /// t.join().unwrap()?;
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    pub fn wait(&self, timeout: Option<Duration>) -> Result<u32> {
        let deadline = timeout.and_then(crate::deadline_after);
        let m = self.mem();
        let guard = self.mutex.lock_blocking()?;
        if m.broken.load(Ordering::SeqCst) != 0 {
            return Err(broken());
        }
        let index = m.count.fetch_add(1, Ordering::SeqCst);
        if index + 1 == m.parties.load(Ordering::SeqCst) {
            if let Err(e) = self.run_action() {
                m.count.store(0, Ordering::SeqCst);
                m.broken.store(1, Ordering::SeqCst);
                drop(guard);
                self.wake_all();
                return Err(e);
            }
            m.count.store(0, Ordering::SeqCst);
            m.released.fetch_add(1, Ordering::SeqCst);
            drop(guard);
            self.wake_all();
            return Ok(index);
        }
        let (released, resets) =
            (m.released.load(Ordering::SeqCst), m.resets.load(Ordering::SeqCst));
        drop(guard);
        loop {
            let epoch = m.epoch.load(Ordering::SeqCst);
            if m.released.load(Ordering::SeqCst) != released {
                return Ok(index);
            }
            if m.broken.load(Ordering::SeqCst) != 0 || m.resets.load(Ordering::SeqCst) != resets {
                return Err(broken());
            }
            let left = remaining(deadline);
            if left == Some(Duration::ZERO) {
                self.abort();
                return Err(broken());
            }
            sys::futex_wait(&m.epoch, epoch, left);
        }
    }

    /// Breaks the barrier: current and future waiters fail until
    /// [`reset`](Self::reset).
    ///
    /// # Examples
    ///
    /// ```
    /// let barrier = multiproc::Barrier::new(2)?;
    /// barrier.abort();
    /// assert!(barrier.broken());
    /// assert_eq!(barrier.wait(None).unwrap_err().kind(), multiproc::ErrorKind::BrokenBarrier);
    /// barrier.reset()?;
    /// assert!(!barrier.broken());
    /// assert_eq!((barrier.parties(), barrier.n_waiting()), (2, 0));
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    pub fn abort(&self) {
        self.mem().broken.store(1, Ordering::SeqCst);
        self.wake_all();
    }

    /// Returns the barrier to its empty state; parties waiting now fail with
    /// [`ErrorKind::BrokenBarrier`].
    ///
    /// # Errors
    /// When the barrier's lock cannot be taken.
    pub fn reset(&self) -> Result<()> {
        let m = self.mem();
        let guard = self.mutex.lock(None)?;
        m.resets.fetch_add(1, Ordering::SeqCst);
        m.count.store(0, Ordering::SeqCst);
        m.broken.store(0, Ordering::SeqCst);
        drop(guard);
        self.wake_all();
        Ok(())
    }

    /// The number of parties the barrier waits for.
    pub fn parties(&self) -> u32 {
        self.mem().parties.load(Ordering::SeqCst)
    }

    /// The number of parties waiting now.
    pub fn n_waiting(&self) -> u32 {
        self.mem().count.load(Ordering::SeqCst)
    }

    /// Whether the barrier is broken.
    pub fn broken(&self) -> bool {
        self.mem().broken.load(Ordering::SeqCst) != 0
    }
}

impl std::fmt::Debug for Barrier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Barrier")
            .field("parties", &self.parties())
            .field("broken", &self.broken())
            .finish()
    }
}
