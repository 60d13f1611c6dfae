//! `AsyncResult`: callbacks (where, which, how often), waiting with and
//! without timeouts, state queries, and its `Future` implementation driven by
//! a minimal executor.

use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::Thread;
use std::time::{Duration, Instant};

use multiproc::{ErrorKind, Pool};

use crate::support::{bounded, getpid, sqr, wait_at_gate, Gate, PROMPT, STARTUP};

fn fails(x: u64) -> u64 {
    panic!("task {x} failed on purpose")
}

fn gated_sqr(x: u64, gate: String) -> u64 {
    wait_at_gate(&gate);
    x * x
}

/// Wakes a parked thread, and remembers that it did.
struct ThreadWaker {
    thread: Thread,
    woken: AtomicBool,
}

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.woken.store(true, Ordering::SeqCst);
        self.thread.unpark();
    }
}

fn thread_waker() -> (Arc<ThreadWaker>, Waker) {
    let w = Arc::new(ThreadWaker { thread: std::thread::current(), woken: AtomicBool::new(false) });
    (w.clone(), Waker::from(w))
}

/// Polls `fut` on this thread, parking between polls, for at most `limit`.
fn block_on<F: Future>(fut: F, limit: Duration) -> F::Output {
    let mut fut = pin!(fut);
    let (_, waker) = thread_waker();
    let mut cx = Context::from_waker(&waker);
    let deadline = Instant::now() + limit;
    loop {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "the future was not ready within {limit:?}");
        std::thread::park_timeout(left);
    }
}

/// Counts of success and error callbacks run.
#[derive(Default)]
struct Calls {
    ok: AtomicUsize,
    err: AtomicUsize,
}

impl Calls {
    fn get(&self) -> (usize, usize) {
        (self.ok.load(Ordering::SeqCst), self.err.load(Ordering::SeqCst))
    }
}

#[test]
fn callback_runs_in_the_parent_process_before_get_returns() {
    let pool = Pool::new(1).unwrap();
    let (tx, rx) = mpsc::channel();
    let worker = pool
        .apply_async(getpid, ())
        .callback(move |&worker: &u32| {
            tx.send((std::process::id(), worker)).unwrap();
        })
        .get()
        .unwrap();
    assert_ne!(worker, std::process::id());
    // get() returning means the callback has run.
    let (ran_in, saw) = rx.try_recv().expect("the callback ran before get returned");
    assert_eq!(ran_in, std::process::id());
    assert_eq!(saw, worker);
}

#[test]
fn exactly_one_kind_of_callback_runs_once() {
    let pool = Pool::new(2).unwrap();
    let attach = |r: multiproc::AsyncResult<u64>, calls: &Arc<Calls>| {
        let (a, b, c) = (calls.clone(), calls.clone(), calls.clone());
        r.callback(move |_| {
            a.ok.fetch_add(1, Ordering::SeqCst);
        })
        .callback(move |_| {
            b.ok.fetch_add(1, Ordering::SeqCst);
        })
        .error_callback(move |_| {
            c.err.fetch_add(1, Ordering::SeqCst);
        })
    };
    let ok = Arc::new(Calls::default());
    let r = attach(pool.apply_async(sqr, 3), &ok);
    assert_eq!(r.get().unwrap(), 9);
    let bad = Arc::new(Calls::default());
    let r = attach(pool.apply_async(fails, 3), &bad);
    r.wait();
    // Both callbacks of the success kind ran, once each; no error callback.
    assert_eq!(ok.get(), (2, 0));
    assert_eq!(bad.get(), (0, 1));
    // Later traffic on the pool does not run them again.
    assert_eq!(pool.map(sqr, 0..50).unwrap().len(), 50);
    assert_eq!(ok.get(), (2, 0));
    assert_eq!(bad.get(), (0, 1));
}

#[test]
fn error_callback_receives_the_tasks_error() {
    let pool = Pool::new(1).unwrap();
    let (tx, rx) = mpsc::channel();
    let r = pool.apply_async(fails, 7).error_callback(move |e| {
        tx.send((e.kind(), e.panic_message().map(str::to_string), std::process::id())).unwrap();
    });
    let err = r.get().unwrap_err();
    assert!(err.is_panic());
    let (kind, message, pid) = rx.try_recv().expect("the error callback ran");
    assert_eq!(kind, ErrorKind::TaskPanicked);
    assert_eq!(message.as_deref(), Some("task 7 failed on purpose"));
    assert_eq!(pid, std::process::id());
}

#[test]
fn callbacks_attached_after_completion_run_at_once_on_the_caller() {
    let pool = Pool::new(1).unwrap();
    let here = std::thread::current().id();
    let r = pool.apply_async(sqr, 4);
    assert!(r.wait_timeout(STARTUP));
    let (tx, rx) = mpsc::channel();
    let tx2 = tx.clone();
    let r = r
        .callback(move |v| tx.send((*v, std::thread::current().id())).unwrap())
        .error_callback(move |_| tx2.send((0, std::thread::current().id())).unwrap());
    assert_eq!(rx.try_recv().unwrap(), (16, here));
    assert!(rx.try_recv().is_err(), "only the success callback runs");
    assert_eq!(r.get().unwrap(), 16);

    let r = pool.apply_async(fails, 1);
    r.wait();
    let (tx, rx) = mpsc::channel();
    let _r =
        r.error_callback(move |e| tx.send((e.is_panic(), std::thread::current().id())).unwrap());
    assert_eq!(rx.try_recv().unwrap(), (true, here));
}

#[test]
fn error_callback_runs_for_a_task_refused_by_a_closed_pool() {
    let pool = Pool::new(1).unwrap();
    pool.close();
    let (tx, rx) = mpsc::channel();
    let r = pool
        .apply_async(sqr, 1)
        .callback(|_| panic!("no success callback for a refused task"))
        .error_callback(move |e| tx.send(e.kind()).unwrap());
    assert_eq!(rx.try_recv().unwrap(), ErrorKind::PoolNotRunning);
    assert_eq!(r.successful(), Some(false));
}

#[test]
fn map_async_callbacks_get_the_whole_vec_or_the_error() {
    // CPython's test_map_async_callbacks.
    let pool = Pool::new(2).unwrap();
    let (tx, rx) = mpsc::channel::<Result<Vec<u64>, ErrorKind>>();
    let (t1, t2) = (tx.clone(), tx.clone());
    pool.map_async(sqr, 0..5)
        .callback(move |v| t1.send(Ok(v.clone())).unwrap())
        .error_callback(move |e| t2.send(Err(e.kind())).unwrap())
        .wait();
    assert_eq!(rx.try_recv().unwrap(), Ok(vec![0, 1, 4, 9, 16]));
    assert!(rx.try_recv().is_err());
    let (t1, t2) = (tx.clone(), tx);
    let r = pool
        .chunksize(1)
        .map_async(fails, 0..5)
        .callback(move |v| t1.send(Ok(v.clone())).unwrap())
        .error_callback(move |e| t2.send(Err(e.kind())).unwrap());
    r.wait();
    assert_eq!(rx.try_recv().unwrap(), Err(ErrorKind::TaskPanicked));
    // Several items failed; the error callback still ran once.
    assert!(pool.map(sqr, 0..20).is_ok());
    assert!(rx.try_recv().is_err(), "one call, once");
    assert!(r.get().unwrap_err().is_panic());
}

#[test]
fn a_panicking_callback_changes_nothing() {
    let pool = Pool::new(1).unwrap();
    let r = pool.apply_async(sqr, 5).callback(|_| panic!("the success callback failed on purpose"));
    assert_eq!(r.get().unwrap(), 25);
    let r = pool
        .apply_async(fails, 5)
        .error_callback(|_| panic!("the error callback failed on purpose"));
    assert!(r.get().unwrap_err().is_panic());
    // The thread that ran the callbacks still delivers results.
    for i in 0..5 {
        assert_eq!(pool.apply_async(sqr, i).get_timeout(STARTUP).unwrap(), i * i);
    }
}

#[test]
fn get_timeout_expires_and_a_later_get_still_returns_the_value() {
    // CPython's test_async_timeout, without losing the result.
    let pool = Pool::new(1).unwrap();
    let mut gate = Gate::new();
    let r = pool.apply_async(gated_sqr, (6, gate.path()));
    assert!(!r.ready());
    assert_eq!(r.successful(), None);
    let timeout = Duration::from_millis(200);
    let t = Instant::now();
    let err = r.get_timeout(timeout).unwrap_err();
    let elapsed = t.elapsed();
    assert!(err.is_timeout(), "{err:?}");
    assert_eq!(err.kind(), ErrorKind::Timeout);
    assert!(elapsed >= timeout, "gave up after {elapsed:?}");
    assert!(elapsed < timeout + PROMPT, "gave up after {elapsed:?}");
    assert!(!r.wait_timeout(Duration::from_millis(10)));
    assert!(!r.ready());
    gate.open();
    assert!(r.wait_timeout(STARTUP));
    assert!(r.ready());
    assert_eq!(r.successful(), Some(true));
    assert_eq!(r.get().unwrap(), 36);
}

#[test]
fn a_value_is_taken_once_and_an_error_is_returned_every_time() {
    let pool = Pool::new(1).unwrap();
    let r = pool.apply_async(sqr, 3);
    assert_eq!(r.get_timeout(STARTUP).unwrap(), 9);
    assert_eq!(r.successful(), Some(true));
    let again = r.get_timeout(Duration::ZERO).unwrap_err();
    assert_eq!(again.kind(), ErrorKind::ResultTaken);
    assert_eq!(r.get().unwrap_err().kind(), ErrorKind::ResultTaken);

    let r = pool.apply_async(fails, 3);
    let first = r.get_timeout(STARTUP).unwrap_err();
    assert_eq!(r.successful(), Some(false));
    let second = r.get_timeout(Duration::ZERO).unwrap_err();
    assert!(first.is_panic() && second.is_panic());
    assert_eq!(first.message(), second.message());
    assert!(r.get().unwrap_err().is_panic());
}

#[test]
fn async_result_is_a_future() {
    let pool = Pool::new(2).unwrap();
    assert_eq!(block_on(pool.apply_async(sqr, 7), STARTUP).unwrap(), 49);
    let err = block_on(pool.apply_async(fails, 7), STARTUP).unwrap_err();
    assert!(err.is_panic());
    let a = pool.apply_async(sqr, 2);
    let b = pool.map_async(sqr, 0..4);
    let total =
        block_on(async move { a.await.unwrap() + b.await.unwrap().iter().sum::<u64>() }, STARTUP);
    assert_eq!(total, 4 + 14);
    // A result refused at submission is ready at the first poll.
    pool.close();
    let err = block_on(pool.apply_async(sqr, 1), PROMPT).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PoolNotRunning);
}

#[test]
fn a_pending_future_wakes_its_task_when_the_result_arrives() {
    let pool = Pool::new(1).unwrap();
    let mut gate = Gate::new();
    let mut fut = pin!(pool.apply_async(gated_sqr, (9, gate.path())));
    let (flag, waker) = thread_waker();
    let mut cx = Context::from_waker(&waker);
    // The task waits at the gate, so the first poll must find it pending.
    assert!(fut.as_mut().poll(&mut cx).is_pending());
    assert!(fut.as_mut().poll(&mut cx).is_pending(), "polling again is fine");
    assert!(!flag.woken.load(Ordering::SeqCst));
    gate.open();
    let deadline = Instant::now() + STARTUP;
    while !flag.woken.load(Ordering::SeqCst) {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "the waker was not called within {STARTUP:?}");
        std::thread::park_timeout(left);
    }
    match fut.as_mut().poll(&mut cx) {
        Poll::Ready(v) => assert_eq!(v.unwrap(), 81),
        Poll::Pending => panic!("woken but not ready"),
    }
}

#[test]
fn a_huge_timeout_means_no_bound_rather_than_a_panic() {
    // As std's `recv_timeout(Duration::MAX)`: a timeout too large to add to
    // the clock waits without a bound.
    let pool = Pool::new(1).unwrap();
    let r = pool.apply_async(sqr, 3);
    let r = bounded(STARTUP, "wait_timeout(Duration::MAX)", move || {
        assert!(r.wait_timeout(Duration::MAX));
        r
    });
    let got = bounded(STARTUP, "get_timeout(Duration::MAX)", move || r.get_timeout(Duration::MAX));
    assert_eq!(got.unwrap(), 9);
}
