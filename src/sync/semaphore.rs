//! `Semaphore` and `BoundedSemaphore`: a counter in shared memory with futex
//! waits. A process that dies holding units does not give them back (as in
//! Python); no one blocks on anything but the counter.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::remaining;
use crate::error::{Error, ErrorKind, Result};
use crate::shm::Cell;
use crate::sys;

#[repr(C)]
struct SemMem {
    value: AtomicU32,
    waiters: AtomicU32,
    /// The most `value` may reach, when `bounded` is 1.
    max: AtomicU32,
    bounded: AtomicU32,
}

/// A counting semaphore shared by processes: Python's
/// `multiprocessing.Semaphore`.
///
/// # Examples
///
/// ```
/// use multiproc::Semaphore;
///
/// let s = Semaphore::new(2)?;
/// let a = s.acquire();
/// let b = s.acquire();
/// assert!(s.try_acquire().is_none());
/// drop(a);
/// assert!(s.try_acquire().is_some());
/// # drop(b);
/// # Ok::<(), multiproc::Error>(())
/// ```
#[derive(Clone, Serialize, Deserialize)]
pub struct Semaphore {
    cell: Cell<SemMem>,
}

/// Gives its unit back to the [`Semaphore`] when dropped.
///
/// # Examples
///
/// ```
/// let sem = multiproc::Semaphore::new(1)?;
/// let unit = sem.acquire();
/// assert!(sem.try_acquire().is_none());
/// drop(unit); // given back
/// assert_eq!(sem.get_value(), 1);
/// # Ok::<(), multiproc::Error>(())
/// ```
#[must_use = "the unit is given back as soon as the guard is dropped"]
#[derive(Debug)]
pub struct SemaphoreGuard<'a> {
    sem: &'a Semaphore,
}

impl Drop for SemaphoreGuard<'_> {
    fn drop(&mut self) {
        let _ = self.sem.release();
    }
}

impl Semaphore {
    /// A semaphore with `value` units.
    ///
    /// # Errors
    /// When shared memory cannot be created.
    pub fn new(value: u32) -> Result<Semaphore> {
        let cell = Cell::<SemMem>::zeroed()?;
        cell.get().value.store(value, Ordering::SeqCst);
        Ok(Semaphore { cell })
    }

    fn mem(&self) -> &SemMem {
        self.cell.get()
    }

    fn take(&self, timeout: Option<Duration>) -> bool {
        let deadline = timeout.and_then(crate::deadline_after);
        let m = self.mem();
        loop {
            let v = m.value.load(Ordering::SeqCst);
            if v > 0 {
                if m.value.compare_exchange(v, v - 1, Ordering::SeqCst, Ordering::SeqCst).is_ok() {
                    return true;
                }
                continue;
            }
            let left = remaining(deadline);
            if left == Some(Duration::ZERO) {
                return false;
            }
            m.waiters.fetch_add(1, Ordering::SeqCst);
            sys::futex_wait(&m.value, 0, left);
            m.waiters.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Blocks until a unit is free and takes it.
    ///
    /// # Examples
    ///
    /// ```
    /// let sem = multiproc::Semaphore::new(2)?;
    /// let a = sem.acquire();
    /// let b = sem.acquire();
    /// assert_eq!(sem.get_value(), 0);
    /// drop((a, b)); // each guard gives its unit back
    /// assert_eq!(sem.get_value(), 2);
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    pub fn acquire(&self) -> SemaphoreGuard<'_> {
        self.take(None);
        SemaphoreGuard { sem: self }
    }

    /// Takes a unit if one is free at once.
    ///
    /// # Examples
    ///
    /// ```
    /// let sem = multiproc::Semaphore::new(1)?;
    /// let held = sem.try_acquire().expect("a unit is free");
    /// assert!(sem.try_acquire().is_none());
    /// drop(held);
    /// assert!(sem.try_acquire().is_some());
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    pub fn try_acquire(&self) -> Option<SemaphoreGuard<'_>> {
        self.take(Some(Duration::ZERO)).then(|| SemaphoreGuard { sem: self })
    }

    /// Takes a unit if one frees up within `timeout`.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let sem = multiproc::Semaphore::new(0)?;
    /// assert!(sem.acquire_timeout(Duration::from_millis(10)).is_none());
    /// sem.release()?;
    /// assert!(sem.acquire_timeout(Duration::from_secs(5)).is_some());
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    pub fn acquire_timeout(&self, timeout: Duration) -> Option<SemaphoreGuard<'_>> {
        self.take(Some(timeout)).then(|| SemaphoreGuard { sem: self })
    }

    /// Python's `acquire(block, timeout)`: takes a unit without a guard;
    /// give it back with [`release`](Self::release). True when taken.
    ///
    /// # Examples
    ///
    /// ```
    /// let sem = multiproc::Semaphore::new(1)?;
    /// assert!(sem.acquire_raw(true, None));
    /// assert!(!sem.acquire_raw(false, None), "none left, and told not to wait");
    /// sem.release()?;
    /// assert_eq!(sem.get_value(), 1);
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    pub fn acquire_raw(&self, block: bool, timeout: Option<Duration>) -> bool {
        self.take(if block { timeout } else { Some(Duration::ZERO) })
    }

    /// Gives a unit back.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidState`] for a [`BoundedSemaphore`] released more
    /// times than it was acquired.
    ///
    /// # Examples
    ///
    /// ```
    /// let sem = multiproc::BoundedSemaphore::new(1)?;
    /// assert!(sem.acquire_raw(true, None));
    /// sem.release()?;
    /// // A bounded semaphore refuses one release too many.
    /// assert_eq!(sem.release().unwrap_err().kind(), multiproc::ErrorKind::InvalidState);
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    pub fn release(&self) -> Result<()> {
        let m = self.mem();
        let max = m.max.load(Ordering::SeqCst);
        let bounded = m.bounded.load(Ordering::SeqCst) != 0;
        loop {
            let v = m.value.load(Ordering::SeqCst);
            if bounded && v >= max {
                return Err(Error::new(
                    ErrorKind::InvalidState,
                    format!("a BoundedSemaphore of {max} was released more times than acquired"),
                ));
            }
            if m.value.compare_exchange(v, v + 1, Ordering::SeqCst, Ordering::SeqCst).is_ok() {
                break;
            }
        }
        if m.waiters.load(Ordering::SeqCst) > 0 {
            sys::futex_wake(&m.value, 1);
        }
        Ok(())
    }

    /// The number of free units now.
    ///
    /// # Examples
    ///
    /// ```
    /// let sem = multiproc::Semaphore::new(3)?;
    /// let _one = sem.acquire();
    /// assert_eq!(sem.get_value(), 2);
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    pub fn get_value(&self) -> u32 {
        self.mem().value.load(Ordering::SeqCst)
    }
}

impl std::fmt::Debug for Semaphore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Semaphore").field("value", &self.get_value()).finish()
    }
}

/// A [`Semaphore`] that refuses to be released above its starting value:
/// Python's `multiprocessing.BoundedSemaphore`.
///
/// # Examples
///
/// ```
/// let sem = multiproc::BoundedSemaphore::new(1)?;
/// assert!(sem.release().is_err()); // above its initial value
/// drop(sem.acquire());
/// # Ok::<(), multiproc::Error>(())
/// ```
#[derive(Clone, Serialize, Deserialize, Debug)]
pub struct BoundedSemaphore(Semaphore);

impl BoundedSemaphore {
    /// A bounded semaphore with `value` units.
    ///
    /// # Errors
    /// When shared memory cannot be created.
    ///
    /// # Examples
    ///
    /// ```
    /// let sem = multiproc::BoundedSemaphore::new(2)?;
    /// assert_eq!(sem.get_value(), 2);
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    pub fn new(value: u32) -> Result<BoundedSemaphore> {
        let s = Semaphore::new(value)?;
        s.mem().max.store(value, Ordering::SeqCst);
        s.mem().bounded.store(1, Ordering::SeqCst);
        Ok(BoundedSemaphore(s))
    }
}

impl std::ops::Deref for BoundedSemaphore {
    type Target = Semaphore;
    fn deref(&self) -> &Semaphore {
        &self.0
    }
}
