//! `AsyncResult`, and the one completion mechanism under it.
//!
//! A task's outcome is stored once; then its callbacks run, on a callback
//! thread (see `callbacks`), never on the thread that delivered the outcome
//! and never with a lock held; only then is the result *settled*, and only a
//! settled result wakes its waiters: `get()` returning means every callback
//! attached before it returned has run.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::thread::ThreadId;
use std::time::{Duration, Instant};

use super::callbacks;
use crate::engine::spin::Spin;
use crate::error::{Error, ErrorKind, Result};

type SuccessCb<T> = Box<dyn FnOnce(&T) + Send>;
type ErrorCb = Box<dyn FnOnce(&Error) + Send>;
type Hook = Box<dyn FnOnce() + Send>;

enum Outcome<T> {
    Pending,
    Ready(Result<T>),
    /// The value is out with the thread running the success callbacks,
    /// which hand it `&T` without the lock held; it comes back after them.
    Lent,
    Taken,
}

/// Where the callbacks of a stored outcome are.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Delivery {
    /// No outcome yet.
    Open,
    /// Stored; the callbacks wait for a callback thread.
    Queued,
    /// This thread runs the callbacks. It may wait on this very result (a
    /// done-callback calling `result()`), and must not wait for itself.
    Running(ThreadId),
    /// The callbacks have run: waiters may return.
    Settled,
}

struct State<T> {
    outcome: Outcome<T>,
    /// What is attached to the result, allocated with the first of it: most
    /// results (`apply_async` then `get`) have none, and a smaller result
    /// costs the allocator less per task.
    hooks: Option<Box<Hooks<T>>>,
    delivery: Delivery,
    /// Threads blocked on the condvar: the condvar is notified (a system
    /// call) only when one is.
    sleepers: u32,
}

struct Hooks<T> {
    on_success: Vec<SuccessCb<T>>,
    on_error: Vec<ErrorCb>,
    /// `Future` done-callbacks: run after the success/error callbacks, with
    /// the outcome stored (they read it through the `Future`).
    on_done: Vec<Hook>,
    /// Internal, non-blocking notifications (`wait`, `as_completed`): run on
    /// the completing thread as soon as the outcome is stored, before the
    /// callbacks, as Python wakes its waiters before it runs callbacks.
    notify: Vec<Hook>,
    wakers: Vec<Waker>,
}

impl<T> State<T> {
    /// The hooks, allocated if there were none.
    fn hooks(&mut self) -> &mut Hooks<T> {
        self.hooks.get_or_insert_with(|| {
            Box::new(Hooks {
                on_success: Vec::new(),
                on_error: Vec::new(),
                on_done: Vec::new(),
                notify: Vec::new(),
                wakers: Vec::new(),
            })
        })
    }

    /// Takes one list of hooks, leaving it empty (nothing is allocated).
    fn take_list<H>(&mut self, list: impl FnOnce(&mut Hooks<T>) -> &mut Vec<H>) -> Vec<H> {
        self.hooks.as_deref_mut().map(|h| std::mem::take(list(h))).unwrap_or_default()
    }

    fn settled(&self) -> bool {
        self.delivery == Delivery::Settled
    }

    /// True when this thread may see the outcome: the result is settled, or
    /// this thread is running its callbacks.
    fn visible_to(&self, me: ThreadId) -> bool {
        self.settled() || self.delivery == Delivery::Running(me)
    }

    fn has_callbacks(&self) -> bool {
        let Some(h) = &self.hooks else { return false };
        let kind = match &self.outcome {
            Outcome::Ready(Ok(_)) => !h.on_success.is_empty(),
            Outcome::Ready(Err(_)) => !h.on_error.is_empty(),
            _ => false,
        };
        kind || !h.on_done.is_empty()
    }
}

/// The shared cell a task's outcome is delivered into, once.
///
/// `tail` is what a backend keeps in the same allocation: nothing (`()`)
/// for most, the task's closure for the thread backend's one call, so that
/// `apply_async` allocates once. Everyone who only waits for the outcome
/// holds `Arc<Completion<T>>`, the tail's type erased (an `Arc` of a
/// completion with a sized tail coerces to it).
pub(crate) struct Completion<T, X: ?Sized = dyn Send + Sync> {
    state: Mutex<State<T>>,
    cond: Condvar,
    /// Set when the state becomes settled: a waiter looks at it without the
    /// lock while it spins (`engine::spin`) before it sleeps on `cond`.
    settled: AtomicBool,
    /// Last, so that it may be unsized.
    tail: X,
}

fn report_callback_panic(payload: Box<dyn std::any::Any + Send>) {
    let msg = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(non-string payload)".into());
    report!(ERROR, panic = msg.as_str(); "multiproc: a result callback panicked: {msg}; the task's result is unaffected");
}

fn run_guarded(f: impl FnOnce()) {
    if let Err(p) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        report_callback_panic(p);
    }
}

impl<T: Send + 'static, X: ?Sized + Send + Sync + 'static> callbacks::Deliver
    for Arc<Completion<T, X>>
{
    fn deliver(&self) {
        let mut st = self.lock();
        if st.delivery != Delivery::Queued {
            return;
        }
        st.delivery = Delivery::Running(std::thread::current().id());
        drop(st);
        self.run_callbacks();
    }
}

impl<T: Send + 'static, X: ?Sized + Send + Sync + 'static> Completion<T, X> {
    /// Delivers the outcome; later calls are ignored. The callbacks run on a
    /// callback thread, so the caller (a pool's I/O or worker thread) goes on
    /// at once.
    pub(crate) fn complete(self: &Arc<Self>, result: Result<T>) {
        if self.store(result, false) {
            callbacks::queue(Box::new(self.clone()));
        }
    }

    /// As [`complete`](Self::complete), but runs the callbacks on this
    /// thread before returning (`Future::cancel`, as in Python).
    pub(crate) fn complete_here(&self, result: Result<T>) {
        if self.store(result, true) {
            self.run_callbacks();
        }
    }
}

impl<T> Completion<T> {
    /// A completion with nothing in its tail.
    pub(crate) fn new() -> Arc<Completion<T>> {
        Completion::with(())
    }
}

impl<T, X> Completion<T, X> {
    /// A completion that keeps `tail` in its allocation.
    pub(crate) fn with(tail: X) -> Arc<Completion<T, X>> {
        Arc::new(Completion {
            state: Mutex::new(State {
                outcome: Outcome::Pending,
                hooks: None,
                delivery: Delivery::Open,
                sleepers: 0,
            }),
            cond: Condvar::new(),
            settled: AtomicBool::new(false),
            tail,
        })
    }
}

impl<T, X: ?Sized> Completion<T, X> {
    /// What the backend keeps with this completion.
    pub(crate) fn tail(&self) -> &X {
        &self.tail
    }

    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stores the outcome (unless one is stored) and runs the notifications.
    /// True when callbacks wait to be run: then the delivery is `Queued`, or
    /// `Running` on this thread when `here`; otherwise it is settled.
    fn store(&self, result: Result<T>, here: bool) -> bool {
        let mut st = self.lock();
        if !matches!(st.outcome, Outcome::Pending) {
            return false;
        }
        st.outcome = Outcome::Ready(result);
        // With nothing attached (`apply_async` then `get`) there are no
        // hooks: the lists below are empty and nothing is allocated.
        let notify = st.take_list(|h| &mut h.notify);
        let callbacks = st.has_callbacks();
        let mut wakers = Vec::new();
        if callbacks {
            st.delivery = if here {
                Delivery::Running(std::thread::current().id())
            } else {
                Delivery::Queued
            };
        } else {
            wakers = self.settle(&mut st);
        }
        let sleepers = st.sleepers > 0;
        drop(st);
        wakers.into_iter().for_each(Waker::wake);
        // Callback threads that wait for this result may run its callbacks.
        if sleepers {
            self.cond.notify_all();
        }
        for n in notify {
            run_guarded(n);
        }
        callbacks
    }

    /// Marks the result settled (the lock is held); returns the async
    /// wakers, to be woken once the lock is let go.
    #[must_use = "the wakers must be woken"]
    fn settle(&self, st: &mut State<T>) -> Vec<Waker> {
        st.delivery = Delivery::Settled;
        self.settled.store(true, Ordering::Release);
        let Some(h) = st.hooks.as_deref_mut() else { return Vec::new() };
        h.on_success.clear();
        h.on_error.clear();
        std::mem::take(&mut h.wakers)
    }

    /// Runs the callbacks, none with the lock held, in the order they were
    /// attached (callbacks attached meanwhile included), then settles. The
    /// caller has set the delivery to `Running` on this thread.
    fn run_callbacks(&self) {
        loop {
            let mut st = self.lock();
            if let Outcome::Ready(Err(e)) = &st.outcome {
                if st.hooks.as_ref().is_some_and(|h| !h.on_error.is_empty()) {
                    let e = e.clone();
                    let batch = st.take_list(|h| &mut h.on_error);
                    drop(st);
                    for cb in batch {
                        run_guarded(|| cb(&e));
                    }
                    continue;
                }
            }
            if matches!(st.outcome, Outcome::Ready(Ok(_)))
                && st.hooks.as_ref().is_some_and(|h| !h.on_success.is_empty())
            {
                let batch = st.take_list(|h| &mut h.on_success);
                let Outcome::Ready(Ok(v)) = std::mem::replace(&mut st.outcome, Outcome::Lent)
                else {
                    unreachable!("the outcome was checked under the same lock")
                };
                drop(st);
                for cb in batch {
                    run_guarded(|| cb(&v));
                }
                self.lock().outcome = Outcome::Ready(Ok(v));
                continue;
            }
            if st.hooks.as_ref().is_some_and(|h| !h.on_done.is_empty()) {
                let batch = st.take_list(|h| &mut h.on_done);
                drop(st);
                for hook in batch {
                    run_guarded(hook);
                }
                continue;
            }
            let wakers = self.settle(&mut st);
            let sleepers = st.sleepers > 0;
            drop(st);
            if sleepers {
                self.cond.notify_all();
            }
            wakers.into_iter().for_each(Waker::wake);
            return;
        }
    }

    /// Runs `f` once the result is done: at once on this thread if it is
    /// settled or this thread runs its callbacks; otherwise with the other
    /// callbacks, after those attached before it.
    pub(crate) fn on_done(&self, f: impl FnOnce() + Send + 'static) {
        let mut st = self.lock();
        if st.visible_to(std::thread::current().id()) {
            drop(st);
            run_guarded(f);
        } else {
            st.hooks().on_done.push(Box::new(f));
        }
    }

    /// Queues a success callback, or runs it at once if the result is settled.
    /// Only the owner of the one `AsyncResult` over this completion calls
    /// this, so no `get` can observe the value while it is lent to `f`,
    /// which runs without the lock.
    fn attach_success(&self, f: SuccessCb<T>) {
        let mut st = self.lock();
        if !st.settled() {
            return st.hooks().on_success.push(f);
        }
        if let Outcome::Ready(Ok(_)) = &st.outcome {
            let Outcome::Ready(Ok(v)) = std::mem::replace(&mut st.outcome, Outcome::Lent) else {
                unreachable!("matched under the same lock")
            };
            drop(st);
            run_guarded(|| f(&v));
            self.lock().outcome = Outcome::Ready(Ok(v));
        }
    }

    /// Queues an error callback, or runs it at once if the result is settled.
    fn attach_error(&self, f: ErrorCb) {
        let mut st = self.lock();
        if !st.settled() {
            return st.hooks().on_error.push(f);
        }
        if let Outcome::Ready(Err(e)) = &st.outcome {
            let e = e.clone();
            drop(st);
            run_guarded(|| f(&e));
        }
    }

    /// Runs `f` on the completing thread as soon as the outcome is stored
    /// (at once if it is). `f` must be quick and never block.
    pub(crate) fn on_stored(&self, f: impl FnOnce() + Send + 'static) {
        let mut st = self.lock();
        if matches!(st.outcome, Outcome::Pending) {
            st.hooks().notify.push(Box::new(f));
        } else {
            drop(st);
            run_guarded(f);
        }
    }

    /// Waits up to `timeout` (`None`: no bound); true once the outcome is stored.
    pub(crate) fn wait_done(&self, timeout: Option<Duration>) -> bool {
        let st = self.wait_until(timeout.and_then(crate::deadline_after));
        st.settled() || !matches!(st.outcome, Outcome::Pending)
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
        if !st.visible_to(std::thread::current().id()) {
            return None;
        }
        match &st.outcome {
            Outcome::Ready(r) => Some(r.clone()),
            Outcome::Pending => None,
            Outcome::Lent => Some(Err(in_own_callback())),
            Outcome::Taken => Some(Err(Error::new(
                ErrorKind::ResultTaken,
                "the result of this task was already taken",
            ))),
        }
    }

    /// Registers `waker` unless the result is settled; true when it is.
    pub(crate) fn poll_ready(&self, waker: &Waker) -> bool {
        let mut st = self.lock();
        if st.settled() {
            return true;
        }
        let wakers = &mut st.hooks().wakers;
        if !wakers.iter().any(|w| w.will_wake(waker)) {
            wakers.push(waker.clone());
        }
        false
    }

    /// Waits until the result is settled (or visible to this thread), or
    /// `deadline` passes. A callback thread that finds the callbacks queued
    /// runs them itself: it may be the thread they are queued behind.
    fn wait_until(&self, deadline: Option<Instant>) -> MutexGuard<'_, State<T>> {
        let mut st = self.lock();
        let me = std::thread::current().id();
        while !st.visible_to(me) {
            if st.delivery == Delivery::Queued && callbacks::on_callback_thread() {
                st.delivery = Delivery::Running(me);
                drop(st);
                self.run_callbacks();
                st = self.lock();
                continue;
            }
            st.sleepers += 1;
            match deadline {
                None => st = self.cond.wait(st).unwrap_or_else(|e| e.into_inner()),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        st.sleepers -= 1;
                        break;
                    }
                    st = self.cond.wait_timeout(st, d - now).unwrap_or_else(|e| e.into_inner()).0;
                }
            }
            st.sleepers -= 1;
        }
        st
    }

    /// Waits for the result of a task submitted a moment ago by this
    /// caller, which does nothing else meanwhile (`ThreadPool::apply`), and
    /// moves the value out (or returns its error). A small task's result
    /// comes within microseconds, so the caller looks for it without
    /// sleeping for a moment first (`engine::spin`). Other waits do not: a
    /// caller collecting many results of a busy pool would take a core from
    /// the threads that make them.
    pub(crate) fn wait_take_soon(&self) -> Result<T> {
        if !callbacks::on_callback_thread() {
            Spin::until(|| self.settled.load(Ordering::Acquire));
        }
        self.wait_take(None).expect("an unbounded wait ends with the result settled")
    }

    /// Waits up to `timeout` (`None`: no bound) and moves the value out (an
    /// error stays for later callers); `None` on timeout.
    pub(crate) fn wait_take(&self, timeout: Option<Duration>) -> Option<Result<T>> {
        let mut st = self.wait_until(timeout.and_then(crate::deadline_after));
        Self::take(&mut st)
    }

    /// Moves the value out if the result is settled; otherwise registers
    /// `waker` and returns `None`.
    pub(crate) fn poll_take(&self, waker: &Waker) -> Option<Result<T>> {
        let mut st = self.lock();
        let taken = Self::take(&mut st);
        if taken.is_none() {
            let wakers = &mut st.hooks().wakers;
            if !wakers.iter().any(|w| w.will_wake(waker)) {
                wakers.push(waker.clone());
            }
        }
        taken
    }

    /// Moves the value out of a settled result; `None` while it is not.
    fn take(st: &mut State<T>) -> Option<Result<T>> {
        if !st.settled() {
            return (st.delivery == Delivery::Running(std::thread::current().id()))
                .then(|| Err(in_own_callback()));
        }
        match std::mem::replace(&mut st.outcome, Outcome::Taken) {
            Outcome::Pending | Outcome::Lent => {
                unreachable!("a settled result has an outcome and it is not lent")
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

fn in_own_callback() -> Error {
    Error::new(
        ErrorKind::InvalidState,
        "a callback waited for the result it is a callback of; the value is handed to the \
         callback itself, use that",
    )
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
/// # Callbacks
///
/// * **Where:** in this process, on a callback thread of the library — never
///   on the thread that talks to the workers, and never with a lock of the
///   pool or of the result held. A callback attached to a result that has
///   already finished runs at once, on the thread attaching it.
/// * **When:** after the task's outcome arrived and before the result counts
///   as ready: `get()`, `wait()` and `ready()` see the result only once every
///   callback attached to it has returned. [`Pool::join`](crate::Pool::join)
///   (and an executor's `shutdown` with `wait`) returns only after the
///   callbacks of every result that arrived before it ran, as in Python.
/// * **Order:** the callbacks of one result run one after another, in the
///   order they were attached; those of different results run in the order
///   the results arrived, except that a callback which takes longer than a
///   few milliseconds no longer holds up the others: the next results'
///   callbacks then run on another thread meanwhile.
/// * **What they may do:** anything, including submitting to the same pool
///   and waiting for that result (`pool.apply(..)`,
///   `pool.apply_async(..).callback(..).get()`), even with one worker; a
///   slow or blocked callback delays no worker and no other result. A panic
///   in a callback is reported on stderr and changes nothing else.
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

    /// An already-failed result (a task that could not be submitted).
    pub(crate) fn failed(err: Error) -> Self
    where
        T: Send + 'static,
    {
        let c = Completion::new();
        c.complete(Err(err));
        AsyncResult { inner: c }
    }

    /// Waits for the task and returns its result.
    ///
    /// # Errors
    /// The task's own error: it panicked, its worker died, it timed out, it
    /// was cancelled, or a value failed to (de)serialize.
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = multiproc::ThreadPool::new(1)?;
    /// let r = pool.apply_async(|x: u32| x + 1, 41);
    /// assert_eq!(r.get()?, 42);
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    pub fn get(self) -> Result<T> {
        self.inner.wait_take(None).expect("an unbounded wait ends with the result settled")
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
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let pool = multiproc::ThreadPool::new(1)?;
    /// let r = pool.apply_async(|x: u32| x + 1, 41);
    /// assert_eq!(r.get_timeout(Duration::from_secs(10))?, 42);
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    pub fn get_timeout(&self, timeout: Duration) -> Result<T> {
        let mut st = self.inner.wait_until(crate::deadline_after(timeout));
        Completion::<T>::take(&mut st).unwrap_or_else(|| {
            Err(Error::timeout(format!("the result was not ready within {timeout:?}")))
        })
    }

    /// Waits until the task has finished (successfully or not).
    pub fn wait(&self) {
        drop(self.inner.wait_until(None));
    }

    /// Waits at most `timeout`; returns true when the task has finished.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        self.inner.wait_until(crate::deadline_after(timeout)).settled()
    }

    /// True once the task has finished.
    pub fn ready(&self) -> bool {
        self.inner.lock().settled()
    }

    /// `None` while the task runs; then whether it succeeded.
    pub fn successful(&self) -> Option<bool> {
        let st = self.inner.lock();
        match &st.outcome {
            _ if !st.settled() => None,
            Outcome::Pending | Outcome::Lent => None,
            Outcome::Ready(r) => Some(r.is_ok()),
            Outcome::Taken => Some(true),
        }
    }

    /// Runs `f` with the value when the task succeeds, in this process, on
    /// a callback thread (or at once on this thread if the task has already
    /// finished); `get()` returns only after `f` has. What `f` does never
    /// changes what `get` returns. See [Callbacks](AsyncResult#callbacks)
    /// for where callbacks run, in what order, and what they may do.
    pub fn callback(self, f: impl FnOnce(&T) + Send + 'static) -> Self {
        self.inner.attach_success(Box::new(f));
        self
    }

    /// Runs `f` with the error when the task fails, in this process, on a
    /// callback thread (or at once on this thread if the task has already
    /// failed); `get()` returns only after `f` has. See
    /// [Callbacks](AsyncResult#callbacks).
    pub fn error_callback(self, f: impl FnOnce(&Error) + Send + 'static) -> Self {
        self.inner.attach_error(Box::new(f));
        self
    }
}

impl<T> Future for AsyncResult<T> {
    type Output = Result<T>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<T>> {
        match self.inner.poll_take(cx.waker()) {
            Some(r) => Poll::Ready(r),
            None => Poll::Pending,
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
                           // The callbacks run on a callback thread; a finished wait implies they ran.
        r.wait();
        assert_eq!(hits.load(Ordering::SeqCst), 5);
        assert_eq!(r.successful(), Some(true));
        assert_eq!(r.get().unwrap(), 5);
    }

    #[test]
    fn a_callback_waiting_for_a_later_results_callback_is_overtaken() {
        // Not a wait on a result (which a callback thread would help with):
        // only the elastic takeover lets the second callback run.
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let (first, second) = (Completion::<u32>::new(), Completion::<u32>::new());
        let r1 = AsyncResult::new(first.clone()).callback(move |_| {
            rx.recv_timeout(Duration::from_secs(10)).expect("the later callback ran meanwhile");
        });
        let r2 = AsyncResult::new(second.clone()).callback(move |_| tx.send(()).unwrap());
        first.complete(Ok(1));
        second.complete(Ok(2));
        assert!(r2.wait_timeout(Duration::from_secs(10)), "the second callback ran");
        assert!(r1.wait_timeout(Duration::from_secs(10)), "the first callback returned");
        assert_eq!((r1.get().unwrap(), r2.get().unwrap()), (1, 2));
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
