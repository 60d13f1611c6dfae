//! `Event`: a flag in shared memory that processes wait on.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::remaining;
use crate::error::Result;
use crate::shm::Cell;
use crate::sys;

/// A flag processes can set, clear and wait for: Python's
/// `multiprocessing.Event`. A waiter that is killed leaves nothing behind.
///
/// # Examples
///
/// ```
/// use multiproc::Event;
/// use std::time::Duration;
///
/// let e = Event::new()?;
/// assert!(!e.wait_timeout(Duration::from_millis(10)));
/// e.set();
/// assert!(e.is_set() && e.wait_timeout(Duration::ZERO));
/// # Ok::<(), multiproc::Error>(())
/// ```
#[derive(Clone, Serialize, Deserialize)]
pub struct Event {
    cell: Cell<AtomicU32>,
}

impl Event {
    /// A new, clear event.
    ///
    /// # Errors
    /// When shared memory cannot be created.
    pub fn new() -> Result<Event> {
        Ok(Event { cell: Cell::zeroed()? })
    }

    /// Sets the flag and wakes every waiter.
    ///
    /// # Examples
    ///
    /// ```
    /// let ev = multiproc::Event::new()?;
    /// ev.set();
    /// assert!(ev.is_set());
    /// ev.wait(); // returns at once: the flag is set
    /// ev.clear();
    /// assert!(!ev.is_set());
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    pub fn set(&self) {
        self.cell.get().store(1, Ordering::SeqCst);
        sys::futex_wake(self.cell.get(), i32::MAX);
    }

    /// Clears the flag.
    pub fn clear(&self) {
        self.cell.get().store(0, Ordering::SeqCst);
    }

    /// Whether the flag is set.
    pub fn is_set(&self) -> bool {
        self.cell.get().load(Ordering::SeqCst) != 0
    }

    /// Blocks until the flag is set.
    ///
    /// # Examples
    ///
    /// ```
    /// use multiproc::{Event, Process};
    ///
    /// fn go(ev: Event) { ev.set() }
    ///
    /// let ev = Event::new()?;
    /// let mut p = Process::new(go, ev.clone());
    /// p.start()?;
    /// ev.wait(); // set by the child process
    /// p.join()?;
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    pub fn wait(&self) {
        while !self.wait_timeout(Duration::from_secs(3600)) {}
    }

    /// Blocks until the flag is set or `timeout` passes; returns the flag.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let ev = multiproc::Event::new()?;
    /// assert!(!ev.wait_timeout(Duration::from_millis(10)));
    /// ev.set();
    /// assert!(ev.wait_timeout(Duration::from_millis(10)));
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        let deadline = crate::deadline_after(timeout);
        loop {
            if self.is_set() {
                return true;
            }
            let left = remaining(deadline);
            if left == Some(Duration::ZERO) {
                return false;
            }
            sys::futex_wait(self.cell.get(), 0, left);
        }
    }
}

impl std::fmt::Debug for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Event").field("set", &self.is_set()).finish()
    }
}
