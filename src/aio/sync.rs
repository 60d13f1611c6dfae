//! `Event::wait_async`, `Lock::acquire_async`, `RLock::acquire_async` and
//! `Process::join_async`.

use std::future::poll_fn;
use std::task::Poll;
use std::time::Duration;

use super::{Ready, Wait};
use crate::error::Result;
use crate::sync::{Event, Lock, LockGuard, RLock};
use crate::Process;

impl Event {
    /// Waits until the flag is set, as [`wait`](Event::wait), without
    /// blocking the executor's thread.
    ///
    /// The flag is a word in shared memory, set from any process: the
    /// future looks at it again after naps that grow from 50 us to 2 ms, so
    /// it sees a `set` within 2 ms at worst (see the `aio` module for why
    /// not a helper thread). Cancel-safe: it takes nothing.
    ///
    /// # Examples
    ///
    /// ```
    /// use multiproc::{Event, Process};
    ///
    /// fn set_it(e: Event) { e.set(); }
    ///
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// let e = Event::new()?;
    /// let mut p = Process::new(set_it, e.clone());
    /// p.start()?;
    /// e.wait_async().await;
    /// assert!(e.is_set());
    /// p.join_async().await?;
    /// # Ok::<(), multiproc::Error>(())
    /// # }).unwrap();
    /// ```
    pub async fn wait_async(&self) {
        let mut wait = Wait::new();
        poll_fn(|cx| {
            if self.is_set() {
                return Poll::Ready(());
            }
            // Without the reactor (no thread could be started) the wait
            // falls back to a blocking nap here, rather than never waking.
            if wait.retry(cx).is_err() {
                let _ = self.wait_timeout(Duration::from_millis(2));
                cx.waker().wake_by_ref();
            }
            Poll::Pending
        })
        .await
    }
}

macro_rules! acquire_async {
    ($name:ident, $example:literal) => {
        impl $name {
            /// Waits until the lock is free and takes it, as
            /// [`acquire`](Self::acquire), without blocking the executor's
            /// thread.
            ///
            /// The lock is a robust mutex in shared memory, owned by the
            /// thread that takes it: the future tries it on each poll, after
            /// naps that grow from 50 us to 2 ms (see the `aio` module). The
            /// guard releases the lock on the thread that took it (it is not
            /// `Send`), so hold it across an `.await` only on a
            /// single-threaded executor or a `LocalSet`.
            ///
            /// While another task of this thread holds the guard, the
            /// future waits for it to be dropped (a blocking `acquire`
            /// would have failed); a task that awaits a lock it holds
            /// itself waits forever, so don't.
            ///
            /// *Cancel safety*: the lock is taken only in the poll that
            /// returns its guard; dropping the future leaves it free.
            ///
            /// # Errors
            /// An OS error from the mutex.
            ///
            /// # Examples
            ///
            /// ```
            #[doc = $example]
            /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
            /// let lock = L::new()?;
            /// let g = lock.acquire_async().await?;
            /// assert!(!g.previous_owner_died());
            /// drop(g);
            /// assert!(lock.try_acquire()?.is_some());
            /// # Ok::<(), multiproc::Error>(())
            /// # }).unwrap();
            /// ```
            pub async fn acquire_async(&self) -> Result<LockGuard<'_>> {
                let mut wait = Wait::new();
                poll_fn(|cx| match self.try_acquire() {
                    Ok(Some(g)) => Poll::Ready(Ok(g)),
                    Err(e) => Poll::Ready(Err(e)),
                    Ok(None) => match wait.retry(cx) {
                        Ok(()) => Poll::Pending,
                        Err(e) => Poll::Ready(Err(e)),
                    },
                })
                .await
            }
        }
    };
}

acquire_async!(Lock, "use multiproc::Lock as L;");
acquire_async!(RLock, "use multiproc::RLock as L;");

impl Process {
    /// Waits for the process to exit, as [`join`](Process::join), without
    /// blocking the executor's thread: the future waits on the process's
    /// [`sentinel`](Process::sentinel). Cancel-safe.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidState`](crate::ErrorKind::InvalidState) before
    /// [`start`](Process::start); an OS error.
    ///
    /// # Examples
    ///
    /// ```
    /// use multiproc::Process;
    ///
    /// fn quit(code: i32) { std::process::exit(code) }
    ///
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// let mut p = Process::new(quit, 3);
    /// p.start()?;
    /// p.join_async().await?;
    /// assert_eq!(p.exitcode(), Some(3));
    /// # Ok::<(), multiproc::Error>(())
    /// # }).unwrap();
    /// ```
    pub async fn join_async(&mut self) -> Result<()> {
        let mut wait = Wait::new();
        poll_fn(|cx| {
            match self.join_timeout(Duration::ZERO) {
                Ok(true) => return Poll::Ready(Ok(())),
                Ok(false) => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
            let armed = match self.sentinel() {
                Ok(fd) => wait.fd(cx, fd, Ready::Read),
                Err(e) => Err(e),
            };
            match armed {
                Ok(()) => Poll::Pending,
                Err(e) => Poll::Ready(Err(e)),
            }
        })
        .await
    }
}
