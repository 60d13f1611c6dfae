//! `Condition`: a shared lock plus a futex sequence number to wait on.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::lock::{LockGuard, Mutex};
use super::remaining;
use crate::error::Result;
use crate::shm::Cell;
use crate::sys;

/// A condition variable shared by processes: Python's
/// `multiprocessing.Condition`. Take it with [`acquire`](Condition::acquire);
/// the guard waits and notifies.
///
/// Waiting uses a futex on a sequence number rather than a pthread
/// condition, so a waiter killed mid-wait cannot swallow a notification.
///
/// # Examples
///
/// ```
/// use multiproc::{Condition, Process, Value};
/// use std::time::Duration;
///
/// fn produce((c, v): (Condition, Value<u32>)) {
///     let g = c.acquire().unwrap();
///     v.set(42);
///     g.notify_all();
/// }
///
/// let (c, v) = (Condition::new()?, Value::new_raw(0u32)?);
/// let g = c.acquire()?;
/// let mut p = Process::new(produce, (c.clone(), v.clone()));
/// p.start()?;
/// let (_g, ok) = g.wait_for(|| v.get() == 42, Some(Duration::from_secs(10)))?;
/// assert!(ok);
/// p.join()?;
/// # Ok::<(), multiproc::Error>(())
/// ```
#[derive(Clone, Serialize, Deserialize)]
pub struct Condition {
    mutex: Mutex,
    seq: Cell<AtomicU32>,
}

/// The held lock of a [`Condition`].
///
/// # Examples
///
/// ```
/// use std::time::Duration;
///
/// let cond = multiproc::Condition::new()?;
/// let guard = cond.acquire()?;
/// let (_guard, notified) = guard.wait(Some(Duration::from_millis(10)))?;
/// assert!(!notified); // nobody called notify
/// # Ok::<(), multiproc::Error>(())
/// ```
#[must_use = "the condition's lock is released as soon as the guard is dropped"]
#[derive(Debug)]
pub struct ConditionGuard<'a> {
    cond: &'a Condition,
    guard: LockGuard<'a>,
}

impl Condition {
    /// A new condition with its own lock.
    ///
    /// # Errors
    /// When shared memory cannot be created.
    pub fn new() -> Result<Condition> {
        Ok(Condition { mutex: Mutex::new(false)?, seq: Cell::zeroed()? })
    }

    /// Takes the condition's lock.
    ///
    /// # Errors
    /// An OS error, or this thread already holds it.
    ///
    /// # Examples
    ///
    /// ```
    /// let cond = multiproc::Condition::new()?;
    /// let guard = cond.acquire()?;
    /// assert!(!guard.previous_owner_died());
    /// guard.notify_all(); // nobody waits: nothing happens
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    pub fn acquire(&self) -> Result<ConditionGuard<'_>> {
        let guard = self.mutex.lock_blocking()?;
        Ok(ConditionGuard { cond: self, guard })
    }
}

impl<'a> ConditionGuard<'a> {
    /// True when the lock's previous owner died holding it.
    pub fn previous_owner_died(&self) -> bool {
        self.guard.previous_owner_died()
    }

    /// Releases the lock, waits for a notification (or `timeout`), and takes
    /// the lock again. Returns the guard and false when it timed out.
    ///
    /// # Errors
    /// When the lock cannot be taken again.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let cond = multiproc::Condition::new()?;
    /// let guard = cond.acquire()?;
    /// // No one notifies: the wait ends at its timeout, with the lock taken again.
    /// let (_guard, notified) = guard.wait(Some(Duration::from_millis(10)))?;
    /// assert!(!notified);
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    pub fn wait(self, timeout: Option<Duration>) -> Result<(ConditionGuard<'a>, bool)> {
        let cond = self.cond;
        let seq = cond.seq.get().load(Ordering::SeqCst);
        drop(self.guard);
        let woken = sys::futex_wait(cond.seq.get(), seq, timeout);
        let guard = cond.mutex.lock_blocking()?;
        Ok((ConditionGuard { cond, guard }, woken))
    }

    /// Waits until `predicate` holds (checked under the lock), or `timeout`
    /// passes; returns the guard and the predicate's last value.
    ///
    /// # Errors
    /// As [`wait`](Self::wait).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use multiproc::{Condition, Value};
    ///
    /// let (cond, ready) = (Condition::new()?, Value::new(0u32)?);
    /// let (c, r) = (cond.clone(), ready.clone());
    /// let setter = std::thread::spawn(move || -> multiproc::Result<()> {
    ///     let guard = c.acquire()?;
    ///     r.set(1);
    ///     guard.notify_all();
    ///     Ok(())
    /// });
    /// let guard = cond.acquire()?;
    /// let (_guard, ok) = guard.wait_for(|| ready.get() == 1, Some(Duration::from_secs(10)))?;
    /// assert!(ok);
    /// setter.join().unwrap()?;
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    pub fn wait_for(
        mut self,
        mut predicate: impl FnMut() -> bool,
        timeout: Option<Duration>,
    ) -> Result<(ConditionGuard<'a>, bool)> {
        let deadline = timeout.and_then(crate::deadline_after);
        loop {
            if predicate() {
                return Ok((self, true));
            }
            let left = remaining(deadline);
            if left == Some(Duration::ZERO) {
                return Ok((self, false));
            }
            self = self.wait(left)?.0;
        }
    }

    /// Wakes up to `n` waiters.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let cond = multiproc::Condition::new()?;
    /// let other = cond.clone();
    /// let waiter = std::thread::spawn(move || -> multiproc::Result<bool> {
    ///     let guard = other.acquire()?;
    ///     Ok(guard.wait(Some(Duration::from_secs(10)))?.1)
    /// });
    /// // Notify until the waiter has woken (it may not be waiting yet).
    /// while !waiter.is_finished() {
    ///     cond.acquire()?.notify(1);
    ///     std::thread::sleep(Duration::from_millis(1));
    /// }
    /// assert!(waiter.join().unwrap()?, "woken by a notify, not by its timeout");
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    pub fn notify(&self, n: u32) {
        self.cond.seq.get().fetch_add(1, Ordering::SeqCst);
        sys::futex_wake(self.cond.seq.get(), n.min(i32::MAX as u32) as i32);
    }

    /// Wakes every waiter.
    pub fn notify_all(&self) {
        self.notify(u32::MAX);
    }
}

impl std::fmt::Debug for Condition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Condition")
    }
}
