//! `AsyncResult`, and the one completion mechanism under it.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use crate::error::{Error, ErrorKind, Result};

type SuccessCb<T> = Box<dyn FnOnce(&T) + Send>;
type ErrorCb = Box<dyn FnOnce(&Error) + Send>;

enum Outcome<T> {
    Pending,
    Ready(Result<T>),
    Taken,
}

struct State<T> {
    outcome: Outcome<T>,
    on_success: Vec<SuccessCb<T>>,
    on_error: Vec<ErrorCb>,
    /// Run after the outcome is stored, without the lock held (so they may
    /// read the outcome): `Future` done-callbacks, `wait`, `as_completed`.
    on_done: Vec<Box<dyn FnOnce() + Send>>,
    /// Set once the outcome is stored *and* every hook has run: waiters wake
    /// only then, so `wait()` returning means the callbacks are done.
    settled: bool,
    /// The thread running the hooks: it may wait on this very outcome (a
    /// done-callback calling `result()`), and must not wait for itself.
    completer: Option<std::thread::ThreadId>,
    wakers: Vec<Waker>,
}

/// The shared cell a task's outcome is delivered into, once.
pub(crate) struct Completion<T> {
    state: Mutex<State<T>>,
    cond: Condvar,
}

fn report_callback_panic(payload: Box<dyn std::any::Any + Send>) {
    let msg = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(non-string payload)".into());
    eprintln!("multiproc: a result callback panicked: {msg}; the task's result is unaffected");
}

fn run_guarded(f: impl FnOnce()) {
    if let Err(p) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        report_callback_panic(p);
    }
}

impl<T> Completion<T> {
    pub(crate) fn new() -> Arc<Completion<T>> {
        Arc::new(Completion {
            state: Mutex::new(State {
                outcome: Outcome::Pending,
                on_success: Vec::new(),
                on_error: Vec::new(),
                on_done: Vec::new(),
                settled: false,
                completer: None,
                wakers: Vec::new(),
            }),
            cond: Condvar::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Delivers the outcome. Callbacks run here, before waiters wake, so that
    /// `get()` returning implies the callback has run. Later calls are ignored.
    pub(crate) fn complete(&self, result: Result<T>) {
        let mut st = self.lock();
        if !matches!(st.outcome, Outcome::Pending) {
            return;
        }
        // The lock is held while callbacks run: a callback attached meanwhile
        // from another thread then sees the outcome and runs itself, so none is
        // lost and none runs twice.
        match &result {
            Ok(v) => {
                for cb in st.on_success.drain(..) {
                    run_guarded(|| cb(v));
                }
            }
            Err(e) => {
                for cb in st.on_error.drain(..) {
                    run_guarded(|| cb(e));
                }
            }
        }
        st.on_success.clear();
        st.on_error.clear();
        st.outcome = Outcome::Ready(result);
        let hooks = std::mem::take(&mut st.on_done);
        if !hooks.is_empty() {
            // Hooks may read the outcome (a done-callback calling `result()`),
            // so they run without the lock; hooks attached meanwhile see the
            // stored outcome and run at once on their own thread.
            st.completer = Some(std::thread::current().id());
            drop(st);
            for hook in hooks {
                run_guarded(hook);
            }
            st = self.lock();
            st.completer = None;
        }
        st.settled = true;
        for w in st.wakers.drain(..) {
            w.wake();
        }
        drop(st);
        self.cond.notify_all();
    }

    /// Runs `f` once the outcome is stored (at once if it already is).
    pub(crate) fn on_done(&self, f: impl FnOnce() + Send + 'static) {
        let mut st = self.lock();
        if matches!(st.outcome, Outcome::Pending) {
            st.on_done.push(Box::new(f));
        } else {
            drop(st);
            run_guarded(f);
        }
    }

    /// Waits up to `timeout` (`None`: no bound); true once the outcome is stored.
    pub(crate) fn wait_done(&self, timeout: Option<Duration>) -> bool {
        let st = self.wait_until(timeout.and_then(crate::deadline_after));
        st.settled || !matches!(st.outcome, Outcome::Pending)
    }

    /// True once the outcome is stored.
    pub(crate) fn is_done(&self) -> bool {
        !matches!(self.lock().outcome, Outcome::Pending)
    }

    /// The error, if the task is done and failed.
    pub(crate) fn error(&self) -> Option<Error> {
        match &self.lock().outcome {
            Outcome::Ready(Err(e)) => Some(e.clone()),
            _ => None,
        }
    }

    /// Waits up to `timeout` (`None`: no bound) and returns a copy of the
    /// outcome, leaving it in place; `None` on timeout.
    pub(crate) fn peek(&self, timeout: Option<Duration>) -> Option<Result<T>>
    where
        T: Clone,
    {
        // Waits for the callbacks too, except on the thread running them.
        let st = self.wait_until(timeout.and_then(crate::deadline_after));
        match &st.outcome {
            Outcome::Ready(_)
                if !st.settled && st.completer != Some(std::thread::current().id()) =>
            {
                None
            }
            Outcome::Ready(r) => Some(r.clone()),
            Outcome::Pending => None,
            Outcome::Taken => Some(Err(Error::new(
                ErrorKind::ResultTaken,
                "the result of this task was already taken",
            ))),
        }
    }

    /// Registers `waker` unless the outcome is stored; true when it is.
    pub(crate) fn poll_ready(&self, waker: &Waker) -> bool {
        let mut st = self.lock();
        if st.settled {
            return true;
        }
        if !st.wakers.iter().any(|w| w.will_wake(waker)) {
            st.wakers.push(waker.clone());
        }
        false
    }

    fn wait_until(&self, deadline: Option<Instant>) -> MutexGuard<'_, State<T>> {
        let mut st = self.lock();
        let me = std::thread::current().id();
        while !st.settled && st.completer != Some(me) {
            match deadline {
                None => st = self.cond.wait(st).unwrap_or_else(|e| e.into_inner()),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        break;
                    }
                    st = self.cond.wait_timeout(st, d - now).unwrap_or_else(|e| e.into_inner()).0;
                }
            }
        }
        st
    }

    fn take(st: &mut State<T>) -> Option<Result<T>> {
        if !st.settled {
            return None;
        }
        match std::mem::replace(&mut st.outcome, Outcome::Taken) {
            Outcome::Pending => {
                st.outcome = Outcome::Pending;
                None
            }
            Outcome::Ready(Ok(v)) => Some(Ok(v)),
            Outcome::Ready(Err(e)) => {
                // Errors stay: every later `get` reports the same error.
                st.outcome = Outcome::Ready(Err(e.clone()));
                Some(Err(e))
            }
            Outcome::Taken => Some(Err(Error::new(
                ErrorKind::ResultTaken,
                "the result of this task was already taken by an earlier get",
            ))),
        }
    }
}

/// The pending outcome of a task submitted with `apply_async`, `map_async` or
/// `starmap_async`.
///
/// Wait for it with [`get`](AsyncResult::get) (or `.await` it: it is a
/// [`Future`]), poll it with [`ready`](AsyncResult::ready), and attach
/// [`callback`](AsyncResult::callback) / [`error_callback`](AsyncResult::error_callback)
/// that run in this process when it completes. Exactly one of the two kinds
/// runs, once per attached callback.
///
/// # Examples
///
/// ```
/// use multiproc::Pool;
/// use std::time::Duration;
///
/// fn slow_square(x: u64) -> u64 {
///     std::thread::sleep(Duration::from_millis(50));
///     x * x
/// }
///
/// let pool = Pool::new(2).unwrap();
/// let r = pool.apply_async(slow_square, 7).callback(|v| println!("got {v}"));
/// assert!(r.get_timeout(Duration::from_millis(1)).unwrap_err().is_timeout());
/// assert_eq!(r.get().unwrap(), 49); // the timed-out get lost nothing
/// ```
#[must_use = "an AsyncResult does nothing unless waited on or given a callback"]
pub struct AsyncResult<T> {
    inner: Arc<Completion<T>>,
}

impl<T> AsyncResult<T> {
    pub(crate) fn new(inner: Arc<Completion<T>>) -> Self {
        AsyncResult { inner }
    }

    /// The completion underneath, for the executors' `Future`.
    pub(crate) fn into_completion(self) -> Arc<Completion<T>> {
        self.inner
    }

    /// An already-failed result (a task that could not be submitted).
    pub(crate) fn failed(err: Error) -> Self {
        let c = Completion::new();
        c.complete(Err(err));
        AsyncResult { inner: c }
    }

    /// Waits for the task and returns its result.
    ///
    /// # Errors
    /// The task's own error: it panicked, its worker died, it timed out, it
    /// was cancelled, or a value failed to (de)serialize.
    pub fn get(self) -> Result<T> {
        let mut st = self.inner.wait_until(None);
        Completion::take(&mut st).expect("outcome is ready after an unbounded wait")
    }

    /// Waits at most `timeout` for the result.
    ///
    /// A timeout takes nothing away: a later `get` still returns the result.
    /// A success moves the value out, so a later `get` returns an
    /// [`ErrorKind::ResultTaken`] error; a task's error is returned every time.
    ///
    /// # Errors
    /// [`ErrorKind::Timeout`] when the task is not done in time, or the task's
    /// own error.
    pub fn get_timeout(&self, timeout: Duration) -> Result<T> {
        let mut st = self.inner.wait_until(crate::deadline_after(timeout));
        Completion::take(&mut st).unwrap_or_else(|| {
            Err(Error::timeout(format!("the result was not ready within {timeout:?}")))
        })
    }

    /// Waits until the task has finished (successfully or not).
    pub fn wait(&self) {
        drop(self.inner.wait_until(None));
    }

    /// Waits at most `timeout`; returns true when the task has finished.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        self.inner.wait_until(crate::deadline_after(timeout)).settled
    }

    /// True once the task has finished.
    pub fn ready(&self) -> bool {
        self.inner.lock().settled
    }

    /// `None` while the task runs; then whether it succeeded.
    pub fn successful(&self) -> Option<bool> {
        let st = self.inner.lock();
        match &st.outcome {
            _ if !st.settled => None,
            Outcome::Pending => None,
            Outcome::Ready(r) => Some(r.is_ok()),
            Outcome::Taken => Some(true),
        }
    }

    /// Runs `f` with the value when the task succeeds, in this process (on
    /// the pool's result thread, or at once on this thread if it already has).
    /// What `f` does never changes what `get` returns. A panic in `f` is
    /// reported on stderr and harms nothing else.
    pub fn callback(self, f: impl FnOnce(&T) + Send + 'static) -> Self {
        let mut st = self.inner.lock();
        match &st.outcome {
            Outcome::Pending => st.on_success.push(Box::new(f)),
            Outcome::Ready(Ok(v)) => run_guarded(|| f(v)),
            Outcome::Ready(Err(_)) | Outcome::Taken => {}
        }
        drop(st);
        self
    }

    /// Runs `f` with the error when the task fails, in this process. A panic
    /// in `f` is reported on stderr and harms nothing else.
    pub fn error_callback(self, f: impl FnOnce(&Error) + Send + 'static) -> Self {
        let mut st = self.inner.lock();
        match &st.outcome {
            Outcome::Pending => st.on_error.push(Box::new(f)),
            Outcome::Ready(Err(e)) => {
                let e = e.clone();
                drop(st);
                run_guarded(|| f(&e));
                return self;
            }
            Outcome::Ready(Ok(_)) | Outcome::Taken => {}
        }
        drop(st);
        self
    }
}

impl<T> Future for AsyncResult<T> {
    type Output = Result<T>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<T>> {
        let mut st = self.inner.lock();
        match Completion::take(&mut st) {
            Some(r) => Poll::Ready(r),
            None => {
                if !st.wakers.iter().any(|w| w.will_wake(cx.waker())) {
                    st.wakers.push(cx.waker().clone());
                }
                Poll::Pending
            }
        }
    }
}

impl<T> std::fmt::Debug for AsyncResult<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncResult").field("ready", &self.ready()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn callbacks_run_once_and_only_the_matching_kind() {
        let hits = Arc::new(AtomicUsize::new(0));
        let c = Completion::<u32>::new();
        let (h1, h2) = (hits.clone(), hits.clone());
        let r = AsyncResult::new(c.clone())
            .callback(move |v| {
                h1.fetch_add(*v as usize, Ordering::SeqCst);
            })
            .error_callback(move |_| {
                h2.fetch_add(100, Ordering::SeqCst);
            });
        c.complete(Ok(5));
        c.complete(Ok(7)); // ignored
        assert_eq!(hits.load(Ordering::SeqCst), 5);
        assert_eq!(r.successful(), Some(true));
        assert_eq!(r.get().unwrap(), 5);
    }

    #[test]
    fn a_panicking_callback_does_not_change_the_result() {
        let c = Completion::<u32>::new();
        let r = AsyncResult::new(c.clone()).callback(|_| panic!("callback bug"));
        c.complete(Ok(3));
        assert_eq!(r.get().unwrap(), 3);
    }

    #[test]
    fn timed_out_get_keeps_the_result_and_errors_repeat() {
        let c = Completion::<u32>::new();
        let r = AsyncResult::new(c.clone());
        assert_eq!(r.successful(), None);
        assert!(r.get_timeout(Duration::from_millis(10)).unwrap_err().is_timeout());
        c.complete(Err(Error::new(ErrorKind::Cancelled, "x")));
        assert!(r.get_timeout(Duration::ZERO).unwrap_err().is_cancelled());
        assert!(r.get().unwrap_err().is_cancelled());
    }
}
