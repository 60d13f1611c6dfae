//! `Lock` and `RLock`: robust mutexes in shared memory.

use std::cell::UnsafeCell;
use std::marker::PhantomData;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result};
use crate::shm::Cell;
use crate::sys::{self, Locked, RawMutex};

#[repr(C)]
pub(crate) struct MutexMem {
    raw: UnsafeCell<RawMutex>,
}

/// The shared mutex under `Lock`, `RLock` and `Condition`.
#[derive(Clone, Serialize, Deserialize)]
pub(crate) struct Mutex {
    cell: Cell<MutexMem>,
}

impl Mutex {
    pub(crate) fn new(recursive: bool) -> Result<Mutex> {
        let cell = Cell::<MutexMem>::zeroed()?;
        // SAFETY: the region is fresh, private to this process until shared,
        // and large enough for a pthread mutex.
        unsafe { sys::mutex_init(cell.ptr().cast(), recursive) }
            .map_err(|e| Error::io("could not initialise a shared mutex", e))?;
        Ok(Mutex { cell })
    }

    /// Keeps this mutex's memory mapped while this process holds it without
    /// a guard: the kernel marks a dead owner's robust mutexes through that
    /// memory, so it must outlive every handle the holder dropped.
    pub(crate) fn pin_while_held(&self) {
        held().lock().push(self.clone());
    }

    /// Forgets one hold taken without a guard; false when there was none.
    pub(crate) fn unpin(&self) -> bool {
        let mut h = held().lock();
        if let Some(i) = h.iter().position(|m| m.id() == self.id()) {
            h.swap_remove(i);
            return true;
        }
        false
    }

    /// True when this process holds the mutex without a guard (`acquire_raw`).
    fn pinned(&self) -> bool {
        held().lock().iter().any(|m| m.id() == self.id())
    }

    pub(crate) fn raw(&self) -> *mut RawMutex {
        self.cell.ptr().cast()
    }

    /// Which mutex this is: the same for every handle and mapping of it.
    pub(crate) fn id(&self) -> crate::shm::RegionId {
        self.cell.id()
    }

    fn guard(&self, state: Locked) -> LockGuard<'_> {
        if state == Locked::OwnerDied {
            // Holds the dead owner recorded here are void: this thread owns it now.
            held().lock().retain(|m| m.id() != self.id());
        }
        LockGuard { raw: self.raw(), owner_died: state == Locked::OwnerDied, _lock: PhantomData }
    }

    /// The one place this mutex is locked: blocking (`None`), once
    /// (`Some(ZERO)`), or within a bound.
    fn take(&self, timeout: Option<Duration>) -> Result<Take<'_>> {
        // SAFETY: `raw` was initialised by `mutex_init` in the creating process.
        match unsafe { sys::mutex_lock(self.raw(), timeout) } {
            Ok(state @ (Locked::Acquired | Locked::OwnerDied)) => Ok(Take::Got(self.guard(state))),
            // An unbounded wait that ends without the lock is the OS's fault.
            Ok(Locked::NotFree) if timeout.is_none() => Err(Error::new(
                ErrorKind::InvalidState,
                "an unbounded wait for a shared lock returned without it",
            )),
            Ok(Locked::NotFree) => Ok(Take::NotFree),
            Ok(Locked::HeldByCaller) => Ok(Take::HeldByCaller),
            Err(e) => Err(Error::io("could not take a shared lock", e)),
        }
    }

    /// Locks without a bound; `Ok(None)` when the calling thread holds it
    /// already (the error-checking mutex's EDEADLK), for callers that then
    /// decide whether the access they guard may go ahead.
    pub(crate) fn lock_unless_owned(&self) -> Result<Option<LockGuard<'_>>> {
        match self.take(None)? {
            Take::Got(guard) => Ok(Some(guard)),
            Take::HeldByCaller | Take::NotFree => Ok(None),
        }
    }

    /// Locks with a bound (`None`: block; `Some(ZERO)`: try once).
    pub(crate) fn lock(&self, timeout: Option<Duration>) -> Result<Option<LockGuard<'_>>> {
        match self.take(timeout)? {
            Take::Got(guard) => Ok(Some(guard)),
            // The holder trying again with a bound simply does not get it
            // (Python's `acquire(False)` is False); only an unbounded wait,
            // which could never end, is an error.
            Take::NotFree | Take::HeldByCaller if timeout.is_some() => Ok(None),
            Take::NotFree | Take::HeldByCaller => Err(Error::new(
                ErrorKind::InvalidState,
                "this thread already holds the lock; a Lock is not reentrant (use an RLock)",
            )),
        }
    }

    /// Locks without a bound.
    pub(crate) fn lock_blocking(&self) -> Result<LockGuard<'_>> {
        self.lock(None)?.ok_or_else(|| {
            Error::new(ErrorKind::InvalidState, "an unbounded lock returned without a guard")
        })
    }

    /// Releases a hold taken without a guard. One taken through a guard
    /// is refused: the guard may be handing out `&mut` to shared memory
    /// (an `Array`'s), which must stay exclusive until the guard drops.
    pub(crate) fn unlock(&self) -> Result<()> {
        if !self.pinned() {
            return Err(Error::new(
                ErrorKind::InvalidState,
                "release of a lock this thread does not hold through acquire_raw() (a lock \
                 taken with acquire() is released by dropping its guard)",
            ));
        }
        release(self.raw())
    }
}

/// What [`Mutex::take`] got.
enum Take<'a> {
    Got(LockGuard<'a>),
    NotFree,
    /// An error-checking mutex this thread holds already.
    HeldByCaller,
}

/// The one place a mutex is unlocked (by a guard or by `release`).
fn release(raw: *mut RawMutex) -> Result<()> {
    // SAFETY: `raw` points at a mutex initialised by `mutex_init`, which
    // stays mapped while a guard or a pinned hold exists.
    match unsafe { sys::mutex_unlock(raw) } {
        Ok(true) => Ok(()),
        Ok(false) => {
            Err(Error::new(ErrorKind::InvalidState, "release of a lock this thread does not hold"))
        }
        Err(e) => Err(Error::io("could not release a shared lock", e)),
    }
}

/// Mutexes held without a guard, kept mapped until released.
fn held() -> &'static parking_lot::Mutex<Vec<Mutex>> {
    static HELD: parking_lot::Mutex<Vec<Mutex>> = parking_lot::Mutex::new(Vec::new());
    &HELD
}

/// Proof that a [`Lock`] or [`RLock`] is held; releases it when dropped.
///
/// # Examples
///
/// ```
/// let lock = multiproc::Lock::new()?;
/// {
///     let guard = lock.acquire()?;
///     assert!(!guard.previous_owner_died());
///     assert!(lock.try_acquire()?.is_none()); // held
/// } // released here
/// assert!(lock.try_acquire()?.is_some());
/// # Ok::<(), multiproc::Error>(())
/// ```
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct LockGuard<'a> {
    raw: *mut RawMutex,
    owner_died: bool,
    _lock: PhantomData<&'a Mutex>,
}

impl LockGuard<'_> {
    /// True when the process (or thread) that held the lock before died
    /// holding it. The lock is yours and usable; what it protected may be
    /// half-updated, so check it.
    pub fn previous_owner_died(&self) -> bool {
        self.owner_died
    }
}

impl Drop for LockGuard<'_> {
    fn drop(&mut self) {
        // The guard exists only while this thread holds the mutex.
        let _ = release(self.raw);
    }
}

impl std::fmt::Debug for LockGuard<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockGuard").field("previous_owner_died", &self.owner_died).finish()
    }
}

macro_rules! lock_type {
    ($(#[$doc:meta])* $name:ident, recursive: $rec:expr) => {
        $(#[$doc])*
        #[derive(Clone, Serialize, Deserialize)]
        pub struct $name {
            mutex: Mutex,
        }

        impl $name {
            /// A new, free lock in shared memory.
            ///
            /// # Errors
            /// When shared memory cannot be created.
            pub fn new() -> Result<Self> {
                Ok($name { mutex: Mutex::new($rec)? })
            }

            /// Blocks until the lock is free and takes it.
            ///
            /// # Errors
            /// An OS error, or (for `Lock`) this thread already holds it.
            ///
            /// # Examples
            ///
            /// ```
            #[doc = concat!(" let lock = multiproc::", stringify!($name), "::new()?;")]
            /// let guard = lock.acquire()?;
            /// assert!(!guard.previous_owner_died());
            /// drop(guard); // releases it
            /// assert!(lock.try_acquire()?.is_some());
            /// # Ok::<(), multiproc::Error>(())
            /// ```
            pub fn acquire(&self) -> Result<LockGuard<'_>> {
                self.mutex.lock_blocking()
            }

            /// Takes the lock if it is free at once.
            ///
            /// # Errors
            /// As [`acquire`](Self::acquire).
            ///
            /// # Examples
            ///
            /// ```
            #[doc = concat!(" let lock = multiproc::", stringify!($name), "::new()?;")]
            /// let held = lock.acquire()?;
            /// let other = lock.clone();
            /// // Another thread (or process) finds it taken, and does not wait.
            /// let taken = std::thread::spawn(move || other.try_acquire().map(|g| g.is_none()));
            /// assert!(taken.join().unwrap()?);
            /// drop(held);
            /// # Ok::<(), multiproc::Error>(())
            /// ```
            pub fn try_acquire(&self) -> Result<Option<LockGuard<'_>>> {
                self.mutex.lock(Some(Duration::ZERO))
            }

            /// Takes the lock if it becomes free within `timeout`.
            ///
            /// # Errors
            /// As [`acquire`](Self::acquire).
            ///
            /// # Examples
            ///
            /// ```
            /// use std::time::Duration;
            ///
            #[doc = concat!(" let lock = multiproc::", stringify!($name), "::new()?;")]
            /// let held = lock.acquire()?;
            /// let other = lock.clone();
            /// let late = std::thread::spawn(move || {
            ///     other.acquire_timeout(Duration::from_millis(10)).map(|g| g.is_none())
            /// });
            /// assert!(late.join().unwrap()?, "not free within 10 ms");
            /// drop(held);
            /// assert!(lock.acquire_timeout(Duration::from_secs(5))?.is_some());
            /// # Ok::<(), multiproc::Error>(())
            /// ```
            pub fn acquire_timeout(&self, timeout: Duration) -> Result<Option<LockGuard<'_>>> {
                self.mutex.lock(Some(timeout))
            }

            /// Python's `acquire(block, timeout)`: takes the lock and keeps it
            /// until [`release`](Self::release); true when taken.
            ///
            /// # Errors
            /// As [`acquire`](Self::acquire).
            ///
            /// # Examples
            ///
            /// ```
            #[doc = concat!(" let lock = multiproc::", stringify!($name), "::new()?;")]
            /// assert!(lock.acquire_raw(true, None)?);
            /// // Held with no guard, until `release`.
            /// lock.release()?;
            /// # Ok::<(), multiproc::Error>(())
            /// ```
            pub fn acquire_raw(&self, block: bool, timeout: Option<Duration>) -> Result<bool> {
                let bound = if block { timeout } else { Some(Duration::ZERO) };
                let Some(guard) = self.mutex.lock(bound)? else { return Ok(false) };
                std::mem::forget(guard);
                self.mutex.pin_while_held();
                Ok(true)
            }

            /// Releases a lock taken with [`acquire_raw`](Self::acquire_raw).
            ///
            /// # Errors
            /// [`ErrorKind::InvalidState`] when this thread does not hold it
            /// through `acquire_raw` (a hold through a guard ends when the
            /// guard drops, never here: an `Array`'s guard lends `&mut`).
            ///
            /// # Examples
            ///
            /// ```
            #[doc = concat!(" let lock = multiproc::", stringify!($name), "::new()?;")]
            /// assert!(lock.acquire_raw(false, None)?);
            /// lock.release()?;
            /// // Not held any more: a second release is an error, not a silent no-op.
            /// assert_eq!(lock.release().unwrap_err().kind(), multiproc::ErrorKind::InvalidState);
            /// # Ok::<(), multiproc::Error>(())
            /// ```
            pub fn release(&self) -> Result<()> {
                self.mutex.unlock()?;
                self.mutex.unpin();
                Ok(())
            }

            /// The shared mutex, for the shared memory this lock guards.
            #[allow(dead_code)] // only a `Lock` guards shared memory, not an `RLock`
            pub(crate) fn mutex(&self) -> &Mutex {
                &self.mutex
            }
        }

        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(stringify!($name))
            }
        }
    };
}

lock_type! {
    /// A mutual-exclusion lock shared by processes: Python's
    /// `multiprocessing.Lock`, as a robust mutex in shared memory.
    ///
    /// Taking a free lock costs no system call. If a process dies holding the
    /// lock, the next one to take it gets it, and its guard says so
    /// ([`LockGuard::previous_owner_died`]) — no one deadlocks.
    ///
    /// # Examples
    ///
    /// ```
    /// use multiproc::{Lock, Process};
    ///
    /// fn work(lock: Lock) {
    ///     let _g = lock.acquire().unwrap();
    ///     println!("in the critical section");
    /// }
    ///
    /// let lock = Lock::new()?;
    /// let mut p = Process::new(work, lock.clone());
    /// p.start()?;
    /// p.join()?;
    /// assert!(lock.try_acquire()?.is_some());
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    Lock, recursive: false
}

lock_type! {
    /// A reentrant lock shared by processes: Python's `multiprocessing.RLock`.
    /// The thread that holds it may take it again; it is free once released
    /// as many times as it was taken.
    RLock, recursive: true
}
