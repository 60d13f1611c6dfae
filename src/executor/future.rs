//! `Future`, `wait` and `as_completed`: Python's `concurrent.futures`
//! vocabulary on the pools' one completion mechanism.

use std::pin::Pin;
use std::sync::{mpsc, Arc, Condvar, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use crate::engine::{Engine, Ticket};
#[cfg(any(doc, test))]
use crate::error::ErrorKind;
use crate::error::{Error, Result};
use crate::pool::Completion;

struct Inner<R> {
    completion: Arc<Completion<R>>,
    ticket: Arc<Ticket>,
    /// The engine that can kill the job's worker.
    engine: Weak<dyn Engine>,
}

/// The pending result of a task submitted to an executor.
///
/// Cheap to clone: every clone is the same future. It can be waited on with
/// [`result`](Future::result), polled with [`done`](Future::done), given
/// callbacks with [`add_done_callback`](Future::add_done_callback), and
/// `.await`ed in any async runtime.
///
/// # Examples
///
/// ```
/// use multiproc::ProcessPoolExecutor;
///
/// fn square(x: u64) -> u64 { x * x }
///
/// let ex = ProcessPoolExecutor::new(2)?;
/// let fut = ex.submit(square, 8)?;
/// fut.add_done_callback(|f| println!("finished: {:?}", f.result()));
/// assert_eq!(fut.result()?, 64);
/// # Ok::<(), multiproc::Error>(())
/// ```
pub struct Future<R> {
    inner: Arc<Inner<R>>,
}

impl<R> Clone for Future<R> {
    fn clone(&self) -> Self {
        Future { inner: self.inner.clone() }
    }
}

impl<R: Send + 'static> Future<R> {
    pub(crate) fn new(
        completion: Arc<Completion<R>>,
        ticket: Arc<Ticket>,
        engine: Weak<dyn Engine>,
    ) -> Self {
        Future { inner: Arc::new(Inner { completion, ticket, engine }) }
    }

    /// True once the task has finished, failed or been cancelled.
    pub fn done(&self) -> bool {
        self.inner.completion.is_done()
    }

    /// True while a worker holds the task.
    pub fn running(&self) -> bool {
        self.inner.ticket.is_sent() && !self.done()
    }

    /// Cancels the task if no worker has taken it yet; true when the task is
    /// (now or already) cancelled. A running task is not stopped: see
    /// [`kill`](Future::kill).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use multiproc::ThreadPoolExecutor;
    ///
    /// fn nap(ms: u64) -> u64 { std::thread::sleep(Duration::from_millis(ms)); ms }
    ///
    /// let ex = ThreadPoolExecutor::new(1)?;
    /// let busy = ex.submit(nap, 300)?; // takes the only thread
    /// let queued = ex.submit(nap, 1)?;
    /// assert!(queued.cancel(), "still queued: cancelled");
    /// assert!(queued.cancelled() && queued.done());
    /// assert!(queued.result().unwrap_err().is_cancelled());
    /// assert_eq!(busy.result()?, 300);
    /// assert!(!busy.cancel(), "finished: too late to cancel");
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    pub fn cancel(&self) -> bool {
        if self.inner.ticket.cancel() {
            // The done-callbacks run here, before `cancel` returns, as in Python.
            self.inner.completion.complete_here(Err(cancelled_by_user()));
            return true;
        }
        self.cancelled()
    }

    /// Cancels the task even if it is running — something Python cannot do.
    /// In a process pool, the worker running the task is killed with SIGKILL
    /// and replaced (tasks queued behind it move to other workers), and the
    /// future fails with [`ErrorKind::Cancelled`]. A task still queued is
    /// simply cancelled. Threads cannot be killed: for a thread pool this is
    /// [`cancel`](Future::cancel). Returns false when the task had already
    /// finished.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use multiproc::ProcessPoolExecutor;
    ///
    /// fn nap(ms: u64) -> u64 { std::thread::sleep(Duration::from_millis(ms)); ms }
    ///
    /// let ex = ProcessPoolExecutor::new(1)?;
    /// let stuck = ex.submit(nap, 60_000)?;
    /// while !stuck.running() {
    ///     std::thread::sleep(Duration::from_millis(1));
    /// }
    /// assert!(stuck.kill(), "its worker is killed and replaced");
    /// assert!(stuck.result().unwrap_err().is_cancelled());
    /// // The executor goes on with a new worker.
    /// assert_eq!(ex.submit(nap, 1)?.result()?, 1);
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    pub fn kill(&self) -> bool {
        if self.cancel() {
            return true;
        }
        if self.done() {
            return false;
        }
        let Some(engine) = self.inner.engine.upgrade() else {
            return false;
        };
        engine.kill_running(&self.inner.ticket)
    }

    /// True when the task was cancelled (by [`cancel`](Future::cancel),
    /// [`kill`](Future::kill) or a shutdown that cancelled queued work).
    pub fn cancelled(&self) -> bool {
        self.inner.completion.error().is_some_and(|e| e.is_cancelled())
    }

    /// Waits for the task; `None` if it succeeded, else its error.
    pub fn exception(&self) -> Option<Error> {
        self.inner.completion.wait_done(None);
        self.inner.completion.error()
    }

    /// Waits at most `timeout` for the task; then as [`exception`](Future::exception).
    ///
    /// # Errors
    /// [`ErrorKind::Timeout`] when the task is not done in time.
    pub fn exception_timeout(&self, timeout: Duration) -> Result<Option<Error>> {
        if !self.inner.completion.wait_done(Some(timeout)) {
            return Err(Error::timeout(format!("the future was not done within {timeout:?}")));
        }
        Ok(self.inner.completion.error())
    }

    /// Waits until the task is done.
    pub fn wait(&self) {
        self.inner.completion.wait_done(None);
    }

    /// Runs `f` with this future once it is done: at once, on this thread, if
    /// it already is (or when called from one of its own done-callbacks);
    /// otherwise on a callback thread of the library — never on the thread
    /// that talks to the workers or runs the tasks, and with no lock held.
    ///
    /// The callbacks of one future run one after another in the order they
    /// were added, after the result is stored (so `f` may call
    /// [`result`](Future::result) or [`exception`](Future::exception), which
    /// return at once) and before `result()` returns to any other caller.
    /// Those of different futures run in the order the futures finished,
    /// except that a callback taking longer than a few milliseconds no longer
    /// holds up the others. A callback may do anything, including submitting
    /// to the same executor and waiting for that future, even with one
    /// worker. [`cancel`](Future::cancel) runs the callbacks on the
    /// cancelling thread before it returns. A callback that panics is
    /// reported on stderr and the other callbacks still run.
    ///
    /// # Examples
    ///
    /// ```
    /// let ex = multiproc::ThreadPoolExecutor::new(1)?;
    /// let fut = ex.submit(|x: u32| x * 2, 21)?;
    /// let (tx, rx) = std::sync::mpsc::channel();
    /// fut.add_done_callback(move |f| { let _ = tx.send(f.done()); });
    /// assert!(rx.recv_timeout(std::time::Duration::from_secs(10)).unwrap());
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    pub fn add_done_callback(&self, f: impl FnOnce(&Future<R>) + Send + 'static) {
        let me = self.clone();
        self.inner.completion.on_done(move || f(&me));
    }

    /// Waits for the task and moves its result out: the way to get a result
    /// that is not `Clone` (`.await` does the same). Clones of this future
    /// that ask for the result afterwards get an [`ErrorKind::ResultTaken`]
    /// error; a task's error is returned to every caller.
    ///
    /// # Errors
    /// The task's error: panicked, worker died, cancelled, (de)serialisation.
    ///
    /// # Examples
    ///
    /// ```
    /// use multiproc::ThreadPoolExecutor;
    ///
    /// struct Token(u32); // not Clone
    /// let ex = ThreadPoolExecutor::new(1)?;
    /// let f = ex.submit(|n: u32| Token(n), 7)?;
    /// assert_eq!(f.into_result()?.0, 7);
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    pub fn into_result(self) -> Result<R> {
        self.inner.completion.wait_take(None).expect("an unbounded wait ends with an outcome")
    }

    /// [`into_result`](Future::into_result), waiting at most `timeout`.
    ///
    /// # Errors
    /// [`ErrorKind::Timeout`] when the task is not done in time (the result
    /// stays: call this on a clone, `f.clone().into_result_timeout(..)`, to
    /// wait again), or the task's error.
    pub fn into_result_timeout(self, timeout: Duration) -> Result<R> {
        self.inner.completion.wait_take(Some(timeout)).unwrap_or_else(|| {
            Err(Error::timeout(format!("the future's result was not ready within {timeout:?}")))
        })
    }

    /// [`into_result`](Future::into_result) as something to `.await`: the
    /// result is moved out, so it need not be `Clone`.
    pub fn into_result_async(self) -> impl std::future::Future<Output = Result<R>> + Send {
        std::future::poll_fn(move |cx| {
            self.inner.completion.poll_take(cx.waker()).map_or(Poll::Pending, Poll::Ready)
        })
    }

    fn same(&self, other: &Future<R>) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    fn failed_not_cancelled(&self) -> bool {
        self.inner.completion.error().is_some_and(|e| !e.is_cancelled())
    }
}

impl<R: Clone + Send + 'static> Future<R> {
    /// Waits for the task and returns (a copy of) its result; every call
    /// returns the same result.
    ///
    /// # Errors
    /// The task's error: panicked, worker died, cancelled, (de)serialisation.
    ///
    /// # Examples
    ///
    /// ```
    /// let ex = multiproc::ThreadPoolExecutor::new(1)?;
    /// let fut = ex.submit(|x: u32| x * 2, 21)?;
    /// assert_eq!(fut.result()?, 42);
    /// assert!(fut.done());
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    pub fn result(&self) -> Result<R> {
        self.inner.completion.peek(None).expect("an unbounded wait ends with an outcome")
    }

    /// Waits at most `timeout` for the result.
    ///
    /// # Errors
    /// [`ErrorKind::Timeout`] when the task is not done in time (the result
    /// is not lost), or the task's error.
    pub fn result_timeout(&self, timeout: Duration) -> Result<R> {
        self.inner.completion.peek(Some(timeout)).unwrap_or_else(|| {
            Err(Error::timeout(format!("the future's result was not ready within {timeout:?}")))
        })
    }
}

/// Awaiting a future that has no clone moves its result out; one with
/// clones hands out a copy, so every clone awaited gets the result. For a
/// result that is not `Clone`, await [`Future::into_result_async`].
impl<R: Clone + Send + 'static> std::future::Future for Future<R> {
    type Output = Result<R>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<R>> {
        let completion = &self.inner.completion;
        if Arc::strong_count(&self.inner) == 1 {
            // No clone can ask for the result afterwards: no copy is needed.
            return completion.poll_take(cx.waker()).map_or(Poll::Pending, Poll::Ready);
        }
        if completion.poll_ready(cx.waker()) {
            Poll::Ready(self.result())
        } else {
            Poll::Pending
        }
    }
}

impl<R: Send + 'static> std::fmt::Debug for Future<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = if self.cancelled() {
            "cancelled"
        } else if self.done() {
            "finished"
        } else if self.running() {
            "running"
        } else {
            "pending"
        };
        f.debug_struct("Future").field("state", &state).finish()
    }
}

fn cancelled_by_user() -> Error {
    Error::cancelled("this future's call", "Future::cancel was called before it ran")
}

/// When [`wait`] returns.
///
/// # Examples
///
/// ```
/// use multiproc::{wait, ThreadPoolExecutor, ALL_COMPLETED};
///
/// let ex = ThreadPoolExecutor::new(2)?;
/// let futs = vec![ex.submit(|x: u32| x, 1)?, ex.submit(|x: u32| x, 2)?];
/// let done = wait(futs, None, ALL_COMPLETED);
/// assert_eq!(done.done.len(), 2);
/// # Ok::<(), multiproc::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReturnWhen {
    /// As soon as any future is done or cancelled.
    FirstCompleted,
    /// As soon as any future fails (not counting cancellation), or all are done.
    FirstException,
    /// When every future is done.
    AllCompleted,
}

pub use ReturnWhen::{
    AllCompleted as ALL_COMPLETED, FirstCompleted as FIRST_COMPLETED,
    FirstException as FIRST_EXCEPTION,
};

/// What [`wait`] returns: the futures that are done and those that are not.
///
/// # Examples
///
/// ```
/// use multiproc::{wait, ThreadPoolExecutor, FIRST_COMPLETED};
///
/// let ex = ThreadPoolExecutor::new(1)?;
/// let fut = ex.submit(|x: u32| x, 1)?;
/// let r = wait(vec![fut], None, FIRST_COMPLETED);
/// assert_eq!((r.done.len(), r.not_done.len()), (1, 0));
/// # Ok::<(), multiproc::Error>(())
/// ```
#[derive(Debug)]
pub struct DoneAndNotDone<R: Send + 'static> {
    /// Done, failed or cancelled.
    pub done: Vec<Future<R>>,
    /// Still pending or running.
    pub not_done: Vec<Future<R>>,
}

fn dedup<R: Send + 'static>(futures: impl IntoIterator<Item = Future<R>>) -> Vec<Future<R>> {
    let mut out: Vec<Future<R>> = Vec::new();
    for f in futures {
        if !out.iter().any(|g| g.same(&f)) {
            out.push(f);
        }
    }
    out
}

/// Waits until the futures meet `return_when`, or `timeout` passes, and
/// splits them into done and not done (each future once, duplicates removed).
///
/// # Examples
///
/// ```
/// use multiproc::{wait, ThreadPoolExecutor, ALL_COMPLETED};
///
/// let ex = ThreadPoolExecutor::new(2)?;
/// let fs: Vec<_> = (0..4).map(|i| ex.submit(move |()| i * 2, ()).unwrap()).collect();
/// let r = wait(fs, None, ALL_COMPLETED);
/// assert_eq!((r.done.len(), r.not_done.len()), (4, 0));
/// # Ok::<(), multiproc::Error>(())
/// ```
pub fn wait<R: Send + 'static>(
    futures: impl IntoIterator<Item = Future<R>>,
    timeout: Option<Duration>,
    return_when: ReturnWhen,
) -> DoneAndNotDone<R> {
    let futures = dedup(futures);
    let signal = Arc::new((Mutex::new(0u64), Condvar::new()));
    for f in &futures {
        let s = signal.clone();
        f.inner.completion.on_stored(move || {
            *s.0.lock().unwrap_or_else(|e| e.into_inner()) += 1;
            s.1.notify_all();
        });
    }
    let deadline = timeout.and_then(crate::deadline_after);
    let mut seen = signal.0.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let done = futures.iter().filter(|f| f.done()).count();
        let met = match return_when {
            ReturnWhen::FirstCompleted => done > 0,
            ReturnWhen::FirstException => {
                done == futures.len() || futures.iter().any(Future::failed_not_cancelled)
            }
            ReturnWhen::AllCompleted => done == futures.len(),
        };
        if met || futures.is_empty() {
            break;
        }
        seen = match deadline {
            None => signal.1.wait(seen).unwrap_or_else(|e| e.into_inner()),
            Some(d) => {
                let now = Instant::now();
                if now >= d {
                    break;
                }
                signal.1.wait_timeout(seen, d - now).unwrap_or_else(|e| e.into_inner()).0
            }
        };
    }
    drop(seen);
    let (done, not_done) = futures.into_iter().partition(Future::done);
    DoneAndNotDone { done, not_done }
}

/// Yields each future once, as it finishes (those already done first); if
/// `timeout` passes first, yields one timeout error naming how many are
/// unfinished, then ends.
///
/// # Examples
///
/// ```
/// use multiproc::{as_completed, ThreadPoolExecutor};
///
/// let ex = ThreadPoolExecutor::new(2)?;
/// let fs: Vec<_> = (1..=3u64).map(|i| ex.submit(move |()| i * 10, ()).unwrap()).collect();
/// let total: u64 = as_completed(fs, None).map(|f| f.unwrap().result().unwrap()).sum();
/// assert_eq!(total, 60);
/// # Ok::<(), multiproc::Error>(())
/// ```
pub fn as_completed<R: Send + 'static>(
    futures: impl IntoIterator<Item = Future<R>>,
    timeout: Option<Duration>,
) -> AsCompleted<R> {
    let futures = dedup(futures);
    let (tx, rx) = mpsc::channel();
    for (i, f) in futures.iter().enumerate() {
        let tx = tx.clone();
        f.inner.completion.on_stored(move || {
            let _ = tx.send(i);
        });
    }
    let total = futures.len();
    AsCompleted {
        futures: futures.into_iter().map(Some).collect(),
        rx,
        left: total,
        deadline: timeout.and_then(|t| crate::deadline_after(t).map(|d| (d, t))),
    }
}

/// The iterator returned by [`as_completed`].
///
/// # Examples
///
/// ```
/// use multiproc::{as_completed, ThreadPoolExecutor};
///
/// let ex = ThreadPoolExecutor::new(2)?;
/// let futs = vec![ex.submit(|x: u32| x, 1)?, ex.submit(|x: u32| x, 2)?];
/// let mut sum = 0;
/// for fut in as_completed(futs, None) {
///     sum += fut?.result()?;
/// }
/// assert_eq!(sum, 3);
/// # Ok::<(), multiproc::Error>(())
/// ```
#[derive(Debug)]
pub struct AsCompleted<R: Send + 'static> {
    futures: Vec<Option<Future<R>>>,
    rx: mpsc::Receiver<usize>,
    left: usize,
    deadline: Option<(Instant, Duration)>,
}

impl<R: Send + 'static> Iterator for AsCompleted<R> {
    type Item = Result<Future<R>>;

    fn next(&mut self) -> Option<Result<Future<R>>> {
        if self.left == 0 {
            return None;
        }
        let got = match self.deadline {
            None => self.rx.recv().ok(),
            Some((d, limit)) => {
                match self.rx.recv_timeout(d.saturating_duration_since(Instant::now())) {
                    Ok(i) => Some(i),
                    Err(_) => {
                        let left = std::mem::take(&mut self.left);
                        return Some(Err(Error::timeout(format!(
                            "{left} (of {}) futures unfinished after {limit:?}",
                            self.futures.len()
                        ))));
                    }
                }
            }
        };
        let f = got.and_then(|i| self.futures[i].take())?;
        self.left -= 1;
        Some(Ok(f))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ThreadPoolExecutor;

    /// A result that cannot be cloned.
    #[derive(Debug, PartialEq)]
    struct Token(u32);

    #[test]
    fn a_result_that_is_not_clone_is_moved_out_once() {
        let ex = ThreadPoolExecutor::new(1).unwrap();
        let f = ex.submit(|n: u32| Token(n), 7).unwrap();
        let other = f.clone();
        assert_eq!(f.into_result().unwrap(), Token(7));
        let again = other.into_result_timeout(Duration::from_secs(10)).unwrap_err();
        assert_eq!(again.kind(), ErrorKind::ResultTaken);
        ex.shutdown();
    }

    #[test]
    fn an_error_is_returned_to_every_taker() {
        let ex = ThreadPoolExecutor::new(1).unwrap();
        let f = ex.submit(|()| -> Token { panic!("no token") }, ()).unwrap();
        let other = f.clone();
        assert_eq!(f.into_result().unwrap_err().kind(), ErrorKind::TaskPanicked);
        assert_eq!(other.into_result().unwrap_err().kind(), ErrorKind::TaskPanicked);
        ex.shutdown();
    }

    #[test]
    fn a_timed_out_into_result_leaves_the_result_for_a_clone() {
        let ex = ThreadPoolExecutor::new(1).unwrap();
        let (tx, rx) = mpsc::channel::<()>();
        let rx = Mutex::new(rx);
        let f = ex
            .submit(
                move |()| {
                    let _ = rx.lock().unwrap().recv_timeout(Duration::from_secs(10));
                    Token(3)
                },
                (),
            )
            .unwrap();
        let err = f.clone().into_result_timeout(Duration::from_millis(10)).unwrap_err();
        assert!(err.is_timeout());
        tx.send(()).unwrap();
        assert_eq!(f.into_result_timeout(Duration::from_secs(10)).unwrap(), Token(3));
        ex.shutdown();
    }

    #[test]
    fn into_result_async_moves_a_result_that_is_not_clone() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        let ex = ThreadPoolExecutor::new(1).unwrap();
        let f = ex.submit(|n: u32| Token(n + 1), 1).unwrap();
        let got = rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(10), f.into_result_async())
                .await
                .expect("in time")
        });
        assert_eq!(got.unwrap(), Token(2));
        ex.shutdown();
    }
}
