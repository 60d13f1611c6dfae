//! `ProcessPoolExecutor`, `ThreadPoolExecutor` and their futures, after
//! CPython's test_concurrent_futures: future states and done-callbacks,
//! submit / map / shutdown (with `cancel_futures`), map with a timeout,
//! `wait` with each `return_when`, `as_completed`, initializers, max tasks
//! per child, and what a process executor does when a worker dies — it fails
//! only the future that worker was running (Python breaks the whole
//! executor). Futures are also awaited under tokio and under a minimal
//! executor written here.

use std::collections::HashSet;
use std::future::Future as _;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

use multiproc::{
    as_completed, wait, ErrorKind, Future, ProcessPoolExecutor, ThreadPoolExecutor, ALL_COMPLETED,
    FIRST_COMPLETED, FIRST_EXCEPTION,
};
use serde::de::{self, Deserializer};
use serde::ser::{self, Serializer};
use serde::{Deserialize, Serialize};

use crate::support::{
    announce_and_wait, announce_then_sleep, append_line, assert_faster, bounded, eventually,
    getpid, pid_is_running, read_lines, send_signal, sqr, wait_at_gate, wait_pid_gone, Beacon,
    Gate, TempDir, PROMPT, STARTUP,
};

// --- process tasks ------------------------------------------------------------

fn pow(base: u64, exp: u32) -> u64 {
    base.pow(exp)
}

fn mul(a: u64, b: u64) -> u64 {
    a * b
}

/// Panics ("attempt to divide by zero") when `b` is 0.
fn div(a: u64, b: u64) -> u64 {
    a / b
}

fn echo3(a: u32, b: String, c: Vec<u8>) -> (u32, String, Vec<u8>) {
    (a, b, c)
}

fn panics(x: u64) -> u64 {
    panic!("task {x} failed on purpose")
}

fn exit_with(code: i32) -> u32 {
    std::process::exit(code)
}

/// Logs `id` to `log` and returns it.
fn logged(id: u32, log: String) -> u32 {
    append_line(&log, &id.to_string());
    id
}

/// Waits at `gate` when given one; returns the pid.
fn maybe_gated(gate: Option<String>) -> u32 {
    if let Some(gate) = gate {
        wait_at_gate(&gate);
    }
    std::process::id()
}

/// `a * b` and the pid that computed it.
fn mul_with_pid(a: u64, b: u64) -> (u64, u32) {
    (a * b, std::process::id())
}

/// Deserializes fine, refuses to serialize.
#[derive(Debug, Deserialize)]
struct NoSerialize(#[allow(dead_code)] u32);

impl Serialize for NoSerialize {
    fn serialize<S: Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        Err(ser::Error::custom("NoSerialize refuses to be serialized"))
    }
}

/// Serializes fine, refuses to deserialize.
#[derive(Debug, Serialize)]
struct NoDeserialize(u32);

impl<'de> Deserialize<'de> for NoDeserialize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let _ = u32::deserialize(d)?;
        Err(de::Error::custom("NoDeserialize refuses to be deserialized"))
    }
}

fn make_no_serialize(x: u32) -> NoSerialize {
    NoSerialize(x)
}

fn take_no_deserialize(x: NoDeserialize) -> u32 {
    x.0
}

// --- initializers (they run in the workers) ----------------------------------

/// Set by [`init_status`] in a worker; never set in the test process.
static INIT_STATUS: OnceLock<String> = OnceLock::new();

/// Logs the worker's pid, then records `status`.
fn init_status(status: String, log: String) {
    append_line(&log, &std::process::id().to_string());
    let _ = INIT_STATUS.set(status);
}

/// The pid and what the initializer recorded there.
fn get_init_status(_: ()) -> (u32, Option<String>) {
    (std::process::id(), INIT_STATUS.get().cloned())
}

/// Logs the worker's pid.
fn log_pid(log: String) {
    append_line(&log, &std::process::id().to_string());
}

/// Logs the worker's pid, then panics.
fn init_panics(log: String) {
    append_line(&log, &std::process::id().to_string());
    panic!("error in initializer")
}

/// Logs the worker's pid, then exits before the worker is ready.
fn init_exits(log: String) {
    append_line(&log, &std::process::id().to_string());
    std::process::exit(3)
}

// --- thread-executor helpers ---------------------------------------------------

/// A thread task that says it started, waits at `gate`, then returns `value`.
fn gated<T: Clone + Send + Sync + 'static>(
    gate: &Gate,
    value: T,
) -> (impl Fn(()) -> T + Send + Sync + 'static + use<T>, mpsc::Receiver<()>) {
    let (tx, rx) = mpsc::channel();
    let path = gate.path();
    let task = move |()| {
        let _ = tx.send(());
        wait_at_gate(&path);
        value.clone()
    };
    (task, rx)
}

/// A future of `ex` that returns `value` once its gate opens (or is dropped).
fn gated_future(ex: &ThreadPoolExecutor, value: &str) -> (Future<String>, Gate) {
    let gate = Gate::new();
    let (task, _started) = gated(&gate, value.to_string());
    (ex.submit(task, ()).unwrap(), gate)
}

/// Futures already settled each way, as CPython's tests keep ready-made: one
/// returned "ok", one panicked with "failed", one was cancelled while queued.
struct Settled {
    ok: Future<String>,
    failed: Future<String>,
    cancelled: Future<String>,
}

fn settled() -> Settled {
    let ex = ThreadPoolExecutor::new(1).unwrap();
    let mut gate = Gate::new();
    let (hold, _started) = gated(&gate, String::new());
    ex.submit(hold, ()).unwrap();
    // Behind the held task on the only thread: it cannot have started.
    let cancelled = ex.submit(|()| "ran".to_string(), ()).unwrap();
    assert!(cancelled.cancel(), "a queued future cancels");
    let ok = ex.submit(|()| "ok".to_string(), ()).unwrap();
    let failed = ex.submit(|()| -> String { panic!("failed") }, ()).unwrap();
    gate.open();
    assert_eq!(ok.result_timeout(PROMPT).unwrap(), "ok");
    assert!(failed.exception_timeout(PROMPT).unwrap().is_some());
    Settled { ok, failed, cancelled }
}

/// What a future settled to: its value, `panic: <message>`, or `cancelled`.
fn outcome(f: &Future<String>) -> String {
    match f.result_timeout(STARTUP) {
        Ok(v) => v,
        Err(e) if e.is_cancelled() => "cancelled".to_string(),
        Err(e) if e.is_panic() => format!("panic: {}", e.panic_message().unwrap_or_default()),
        Err(e) => panic!("unexpected error: {e:?}"),
    }
}

/// The outcomes of `fs`, sorted.
fn outcomes(fs: &[Future<String>]) -> Vec<String> {
    let mut out: Vec<String> = fs.iter().map(outcome).collect();
    out.sort();
    out
}

// --- a minimal executor ------------------------------------------------------------

/// Wakes a parked thread, and counts that it did.
struct ThreadWaker {
    thread: Thread,
    wakes: AtomicUsize,
}

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.wakes.fetch_add(1, Ordering::SeqCst);
        self.thread.unpark();
    }
}

fn thread_waker() -> (Arc<ThreadWaker>, Waker) {
    let w = Arc::new(ThreadWaker { thread: thread::current(), wakes: AtomicUsize::new(0) });
    (w.clone(), Waker::from(w))
}

/// Polls every future on this thread, parking between rounds, until all are
/// ready; fails the test after `limit`.
fn block_on_all<F: std::future::Future + Unpin>(
    mut futures: Vec<F>,
    limit: Duration,
) -> (Vec<F::Output>, usize) {
    let (counter, waker) = thread_waker();
    let mut cx = Context::from_waker(&waker);
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    let deadline = Instant::now() + limit;
    loop {
        for (f, out) in futures.iter_mut().zip(outputs.iter_mut()) {
            if out.is_none() {
                if let Poll::Ready(v) = Pin::new(f).poll(&mut cx) {
                    *out = Some(v);
                }
            }
        }
        if outputs.iter().all(Option::is_some) {
            let wakes = counter.wakes.load(Ordering::SeqCst);
            return (outputs.into_iter().map(Option::unwrap).collect(), wakes);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "the futures were not ready within {limit:?}");
        thread::park_timeout(left);
    }
}

// --- construction -------------------------------------------------------------------

#[test]
fn zero_workers_is_an_error_and_defaults_follow_python() {
    for err in [
        ProcessPoolExecutor::new(0).unwrap_err(),
        ProcessPoolExecutor::builder().max_workers(0).build().unwrap_err(),
        ProcessPoolExecutor::builder().max_workers(1).max_tasks_per_child(0).build().unwrap_err(),
        ThreadPoolExecutor::new(0).unwrap_err(),
        ThreadPoolExecutor::builder().max_workers(0).build().unwrap_err(),
    ] {
        assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err:?}");
    }
    assert_eq!(ProcessPoolExecutor::new(3).unwrap().max_workers(), 3);
    assert_eq!(ThreadPoolExecutor::new(3).unwrap().max_workers(), 3);
    let cpus = multiproc::cpu_count();
    assert_eq!(ProcessPoolExecutor::builder().build().unwrap().max_workers(), cpus);
    assert_eq!(ThreadPoolExecutor::builder().build().unwrap().max_workers(), (cpus + 4).min(32));
}

// --- submit and map -------------------------------------------------------------------

#[test]
fn process_submit_runs_fn_items_and_non_capturing_closures_in_a_worker() {
    let ex = ProcessPoolExecutor::new(2).unwrap();
    assert_eq!(ex.submit(pow, (2, 8)).unwrap().result_timeout(STARTUP).unwrap(), 256);
    assert_eq!(ex.submit(mul, (21, 2)).unwrap().result_timeout(STARTUP).unwrap(), 42);
    let product = ex.submit(|a: u64, b: u64| a * b, (2, 8)).unwrap();
    assert_eq!(product.result_timeout(STARTUP).unwrap(), 16);
    let args = (1u32, "two".to_string(), vec![3u8, 4]);
    assert_eq!(ex.submit(echo3, args.clone()).unwrap().result_timeout(STARTUP).unwrap(), args);
    let pid = ex.submit(getpid, ()).unwrap().result_timeout(STARTUP).unwrap();
    assert_ne!(pid, std::process::id(), "the task ran in a worker process");
}

#[test]
fn thread_submit_runs_capturing_closures_in_this_process() {
    let ex = ThreadPoolExecutor::new(2).unwrap();
    let base = 100;
    assert_eq!(ex.submit(move |x: i32| x + base, 1).unwrap().result_timeout(PROMPT).unwrap(), 101);
    let shared = Arc::new(AtomicUsize::new(0));
    let s = shared.clone();
    let pid = ex
        .submit(
            move |()| {
                s.fetch_add(1, Ordering::SeqCst);
                std::process::id()
            },
            (),
        )
        .unwrap()
        .result_timeout(PROMPT)
        .unwrap();
    assert_eq!(pid, std::process::id());
    assert_eq!(shared.load(Ordering::SeqCst), 1);
}

#[test]
fn map_yields_results_in_input_order() {
    let (got, empty, endless) = bounded(STARTUP, "process maps", || {
        let ex = ProcessPoolExecutor::new(2).unwrap();
        let got: Vec<u64> =
            ex.map(pow, (0..10u32).map(|i| (u64::from(i), i))).map(Result::unwrap).collect();
        let empty = ex.map(sqr, Vec::new()).count();
        // Lazy: an endless input is fine when only part of it is read.
        let endless: Vec<u64> = ex.map(sqr, 0..).take(20).map(Result::unwrap).collect();
        (got, empty, endless)
    });
    assert_eq!(got, (0..10u32).map(|i| u64::from(i).pow(i)).collect::<Vec<_>>());
    assert_eq!(empty, 0);
    assert_eq!(endless, (0..20).map(sqr).collect::<Vec<_>>());

    let got = bounded(PROMPT, "a thread map", || {
        let ex = ThreadPoolExecutor::new(3).unwrap();
        let offset = 7;
        ex.map(move |x: u64| x * x + offset, 0..200).map(Result::unwrap).collect::<Vec<_>>()
    });
    assert_eq!(got, (0..200).map(|x| x * x + 7).collect::<Vec<_>>());
}

#[test]
fn map_yields_a_failed_call_in_its_place_and_goes_on() {
    // CPython's test_map_exception raises at the third item; here the error
    // takes the item's place and the items after it still come.
    let got = bounded(STARTUP, "a map with a failing call", || {
        let ex = ProcessPoolExecutor::new(2).unwrap();
        ex.map(div, vec![(1, 2), (1, 3), (1, 0), (1, 5)]).collect::<Vec<_>>()
    });
    assert_eq!(got.len(), 4);
    assert_eq!(got[0].as_ref().unwrap(), &0);
    assert_eq!(got[1].as_ref().unwrap(), &0);
    let err = got[2].as_ref().unwrap_err();
    assert!(err.is_panic(), "{err:?}");
    assert!(err.panic_message().unwrap().contains("divide by zero"), "{err:?}");
    assert_eq!(got[3].as_ref().unwrap(), &0);
}

#[test]
fn map_timeout_yields_the_results_before_a_late_one_then_one_timeout_error() {
    let mut gate = Gate::new();
    let late = gate.path();
    let limit = Duration::from_secs(1);
    let (got, elapsed, warm) = bounded(STARTUP, "a map with a timeout", move || {
        let ex = ProcessPoolExecutor::new(1).unwrap();
        let warm = ex.submit(getpid, ()).unwrap().result_timeout(STARTUP).unwrap();
        let t = Instant::now();
        let got: Vec<_> =
            ex.map_timeout(maybe_gated, vec![None, None, Some(late), None], limit).collect();
        (got, t.elapsed(), warm)
    });
    gate.open();
    assert_eq!(got.len(), 3, "two results, the timeout error, then the end: {got:?}");
    assert_eq!(got[0].as_ref().unwrap(), &warm);
    assert_eq!(got[1].as_ref().unwrap(), &warm);
    let err = got[2].as_ref().unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    assert!(elapsed >= limit, "the timeout error came after {elapsed:?}, before {limit:?}");
    assert_faster(elapsed, limit + PROMPT, "a map reporting its timeout");
}

#[test]
fn map_timeout_cancels_the_calls_that_had_not_started() {
    // CPython's test_executor_map_current_future_cancel: after the timeout,
    // the calls still queued are cancelled; only the first task ever runs.
    let ex = ThreadPoolExecutor::new(1).unwrap();
    let log = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut gate = Gate::new();
    let (l, g) = (log.clone(), gate.path());
    let log_n_wait = move |ident: &'static str| {
        l.lock().unwrap().push(format!("{ident} started"));
        wait_at_gate(&g);
        l.lock().unwrap().push(format!("{ident} stopped"));
    };
    let first = ex.submit(log_n_wait.clone(), "first").unwrap();
    let (ex, err, rest) = bounded(PROMPT, "a map that times out at once", move || {
        let mut it = ex.map_timeout(log_n_wait, ["second", "third"], Duration::ZERO);
        let err = it.next().expect("an item").unwrap_err();
        let rest = it.count();
        (ex, err, rest)
    });
    assert!(err.is_timeout(), "{err:?}");
    assert_eq!(rest, 0, "the iteration ends after the timeout error");
    gate.open();
    first.result_timeout(PROMPT).unwrap();
    let ex = bounded(PROMPT, "shutdown(wait=true)", move || {
        ex.shutdown();
        ex
    });
    drop(ex);
    assert_eq!(*log.lock().unwrap(), ["first started", "first stopped"]);
}

#[test]
fn dropping_a_map_iterator_cancels_the_calls_that_had_not_started() {
    // Python's map is a generator whose close() cancels what has not started.
    let ex = ThreadPoolExecutor::new(2).unwrap();
    let log = Arc::new(Mutex::new(Vec::<&str>::new()));
    let mut first_gate = Gate::new();
    let mut gate = Gate::new();
    let (first, first_started) = gated(&first_gate, ());
    let first = ex.submit(first, ()).unwrap();
    first_started.recv_timeout(PROMPT).expect("the first call started");
    let (l, g) = (log.clone(), gate.path());
    let call = move |ident: &'static str| {
        l.lock().unwrap().push(ident);
        if ident != "a" {
            wait_at_gate(&g);
        }
        ident
    };
    // One thread is held by `first`: the map's calls run one at a time on
    // the other, and "b" holds it; "c" and "d" are still queued at the drop.
    let (ex, got) = bounded(PROMPT, "a map's first item", move || {
        let mut it = ex.map(call, ["a", "b", "c", "d"]);
        let got = it.next().expect("an item").unwrap();
        (ex, got)
    });
    assert_eq!(got, "a");
    gate.open();
    first_gate.open();
    first.result_timeout(PROMPT).unwrap();
    bounded(PROMPT, "shutdown(wait=true)", move || ex.shutdown());
    let ran = log.lock().unwrap().clone();
    assert!(!ran.contains(&"c") && !ran.contains(&"d"), "queued calls ran after the drop: {ran:?}");
}

// --- future states -------------------------------------------------------------------

#[test]
fn future_states_pending_running_finished() {
    let ex = ThreadPoolExecutor::new(1).unwrap();
    let mut gate = Gate::new();
    let (task, started) = gated(&gate, 7u64);
    let running = ex.submit(task, ()).unwrap();
    let pending = ex.submit(|()| 8u64, ()).unwrap();
    started.recv_timeout(PROMPT).expect("the first task started");
    assert!(running.running() && !running.done() && !running.cancelled());
    assert!(!pending.running() && !pending.done() && !pending.cancelled());
    assert!(format!("{running:?}").contains("\"running\""), "{running:?}");
    assert!(format!("{pending:?}").contains("\"pending\""), "{pending:?}");
    // A timed-out wait takes nothing away.
    assert!(running.result_timeout(Duration::ZERO).unwrap_err().is_timeout());
    assert!(running.exception_timeout(Duration::ZERO).unwrap_err().is_timeout());
    assert!(pending.result_timeout(Duration::ZERO).unwrap_err().is_timeout());
    assert!(pending.exception_timeout(Duration::ZERO).unwrap_err().is_timeout());
    gate.open();
    assert_eq!(running.result_timeout(PROMPT).unwrap(), 7);
    assert_eq!(pending.result_timeout(PROMPT).unwrap(), 8);
    for f in [&running, &pending] {
        assert!(f.done() && !f.running() && !f.cancelled());
        assert!(f.exception_timeout(Duration::ZERO).unwrap().is_none());
        assert!(f.exception().is_none());
        assert!(format!("{f:?}").contains("\"finished\""), "{f:?}");
    }
    // Every call returns the same result; clones are the same future.
    assert_eq!(running.result().unwrap(), 7);
    assert_eq!(running.clone().result_timeout(Duration::ZERO).unwrap(), 7);
}

#[test]
fn process_future_runs_while_its_worker_holds_it_and_cannot_be_cancelled_then() {
    let ex = ProcessPoolExecutor::new(1).unwrap();
    let beacon = Beacon::new();
    let mut gate = Gate::new();
    let f = ex.submit(announce_and_wait, (beacon.path(), gate.path())).unwrap();
    let pid = beacon.recv_pid(STARTUP, "the task's start");
    assert!(f.running() && !f.done() && !f.cancelled());
    assert!(!f.cancel(), "a running task is not cancelled");
    assert!(f.running() && !f.cancelled());
    gate.open();
    assert_eq!(f.result_timeout(PROMPT).unwrap(), pid);
    assert!(f.done() && !f.running() && !f.cancelled());
    assert!(!f.cancel(), "a finished task is not cancelled");
    assert!(f.exception().is_none());
}

#[test]
fn cancel_succeeds_only_while_pending_and_a_cancelled_call_never_runs() {
    let ex = ThreadPoolExecutor::new(1).unwrap();
    let mut gate = Gate::new();
    let (task, started) = gated(&gate, 1u64);
    let running = ex.submit(task, ()).unwrap();
    started.recv_timeout(PROMPT).expect("the first task started");
    let ran = Arc::new(AtomicBool::new(false));
    let r = ran.clone();
    let queued = ex
        .submit(
            move |()| {
                r.store(true, Ordering::SeqCst);
                2u64
            },
            (),
        )
        .unwrap();
    assert!(queued.cancel());
    assert!(queued.cancelled() && queued.done() && !queued.running());
    assert!(queued.cancel(), "cancelling again still reports it cancelled");
    let err = queued.result_timeout(Duration::ZERO).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Cancelled, "{err:?}");
    assert!(queued.result().unwrap_err().is_cancelled());
    assert!(queued.exception().is_some_and(|e| e.is_cancelled()));
    assert!(format!("{queued:?}").contains("\"cancelled\""), "{queued:?}");

    assert!(!running.cancel(), "a running call is not cancelled");
    assert!(running.running() && !running.cancelled());
    gate.open();
    assert_eq!(running.result_timeout(PROMPT).unwrap(), 1);
    assert!(!running.cancel() && !running.cancelled());
    // One thread, first in first out: this runs after the cancelled call's turn.
    assert_eq!(ex.submit(|()| 3u64, ()).unwrap().result_timeout(PROMPT).unwrap(), 3);
    assert!(!ran.load(Ordering::SeqCst), "the cancelled call ran");
}

#[test]
fn a_caller_blocked_in_result_wakes_on_success_and_on_cancel() {
    let ex = ThreadPoolExecutor::new(1).unwrap();
    let mut gate = Gate::new();
    let (task, started) = gated(&gate, 5u64);
    let running = ex.submit(task, ()).unwrap();
    started.recv_timeout(PROMPT).expect("the first task started");
    let queued = ex.submit(|()| 6u64, ()).unwrap();
    let (r, q) = (running.clone(), queued.clone());
    let on_running = thread::spawn(move || r.result_timeout(STARTUP));
    let on_queued = thread::spawn(move || q.result_timeout(STARTUP));
    assert!(queued.cancel());
    let got = bounded(PROMPT, "a waiter woken by cancel", move || on_queued.join().unwrap());
    assert!(got.unwrap_err().is_cancelled());
    gate.open();
    let got = bounded(PROMPT, "a waiter woken by the result", move || on_running.join().unwrap());
    assert_eq!(got.unwrap(), 5);
}

#[test]
fn exception_is_the_tasks_error_every_time_with_where_it_happened() {
    let ex = ProcessPoolExecutor::new(1).unwrap();
    let pid = ex.submit(getpid, ()).unwrap().result_timeout(STARTUP).unwrap();
    let f = ex.submit(panics, 3).unwrap();
    let err = f.exception_timeout(STARTUP).unwrap().expect("the task failed");
    assert!(err.is_panic(), "{err:?}");
    assert_eq!(err.panic_message(), Some("task 3 failed on purpose"));
    assert!(err.location().is_some_and(|l| l.starts_with(file!())), "{err:?}");
    assert_eq!(err.pid(), Some(pid));
    for again in [f.exception(), f.result().err(), f.result_timeout(Duration::ZERO).err()] {
        let again = again.expect("the same error again");
        assert_eq!(again.kind(), ErrorKind::TaskPanicked);
        assert_eq!(again.message(), err.message());
    }
    assert!(f.done() && !f.cancelled() && !f.running());
    // The worker survives a panic.
    assert_eq!(ex.submit(getpid, ()).unwrap().result_timeout(STARTUP).unwrap(), pid);
}

// --- done-callbacks ---------------------------------------------------------------------

#[test]
fn done_callbacks_run_once_in_order_on_the_completing_thread_before_result_returns() {
    let ex = ProcessPoolExecutor::new(1).unwrap();
    let beacon = Beacon::new();
    let mut gate = Gate::new();
    let f = ex.submit(announce_and_wait, (beacon.path(), gate.path())).unwrap();
    let pid = beacon.recv_pid(STARTUP, "the task's start");
    let (tx, rx) = mpsc::channel();
    for i in 0..3 {
        let tx = tx.clone();
        f.add_done_callback(move |f| {
            let value = f.result_timeout(Duration::ZERO).ok();
            tx.send((i, f.done(), value, thread::current().id())).unwrap();
        });
    }
    assert!(rx.try_recv().is_err(), "no callback runs before the task is done");
    gate.open();
    assert_eq!(f.result_timeout(PROMPT).unwrap(), pid);
    // result() has returned, so every callback has run.
    let calls: Vec<_> = rx.try_iter().collect();
    assert_eq!(calls.len(), 3, "{calls:?}");
    for (n, (i, done, value, on)) in calls.into_iter().enumerate() {
        assert_eq!(i, n, "callbacks run in the order they were added");
        assert!(done);
        assert_eq!(value, Some(pid));
        assert_ne!(
            on,
            thread::current().id(),
            "a pending future's callback runs where it completes"
        );
    }
    assert_eq!(ex.submit(sqr, 3).unwrap().result_timeout(STARTUP).unwrap(), 9);
    assert!(rx.try_recv().is_err(), "callbacks run once");
}

#[test]
fn a_done_callback_can_read_its_futures_exception() {
    // CPython's test_done_callback_with_exception: the callback calls
    // exception() on the future it is handed.
    let ex = ThreadPoolExecutor::new(1).unwrap();
    let mut gate = Gate::new();
    let g = gate.path();
    let f = ex
        .submit(
            move |()| -> u64 {
                wait_at_gate(&g);
                panic!("test")
            },
            (),
        )
        .unwrap();
    let (tx, rx) = mpsc::channel();
    f.add_done_callback(move |f| {
        let err = f.exception();
        tx.send(err.map(|e| e.panic_message().map(str::to_string))).unwrap();
    });
    gate.open();
    let got = rx.recv_timeout(PROMPT).expect("exception() inside a done-callback returned");
    assert_eq!(got, Some(Some("test".to_string())));
    assert!(f.exception_timeout(PROMPT).unwrap().is_some_and(|e| e.is_panic()));
}

#[test]
fn a_process_executor_goes_on_after_a_callback_that_waits_on_its_future() {
    // The callback waits on the future it is handed (wait(), exception()):
    // the future is done, so that must return at once.
    let ex = ProcessPoolExecutor::new(1).unwrap();
    let beacon = Beacon::new();
    let mut gate = Gate::new();
    let f = ex.submit(announce_and_wait, (beacon.path(), gate.path())).unwrap();
    let pid = beacon.recv_pid(STARTUP, "the task's start");
    let (tx, rx) = mpsc::channel();
    f.add_done_callback(move |f| {
        f.wait();
        tx.send(f.exception().is_none()).unwrap();
    });
    gate.open();
    assert_eq!(rx.recv_timeout(PROMPT), Ok(true), "the callback returned");
    assert_eq!(f.result_timeout(PROMPT).unwrap(), pid);
    assert_eq!(ex.submit(sqr, 4).unwrap().result_timeout(PROMPT).unwrap(), 16);
}

#[test]
fn cancel_runs_the_done_callbacks_before_it_returns() {
    // CPython's test_done_callback_with_cancel.
    let ex = ThreadPoolExecutor::new(1).unwrap();
    let mut gate = Gate::new();
    let (task, started) = gated(&gate, 0u64);
    let _running = ex.submit(task, ()).unwrap();
    started.recv_timeout(PROMPT).expect("the first task started");
    let queued = ex.submit(|()| 1u64, ()).unwrap();
    let (tx, rx) = mpsc::channel();
    queued.add_done_callback(move |f| tx.send((f.cancelled(), thread::current().id())).unwrap());
    assert!(queued.cancel());
    let (was_cancelled, on) = rx.try_recv().expect("cancel() ran the callback");
    assert!(was_cancelled);
    assert_eq!(on, thread::current().id());
    gate.open();
}

#[test]
fn callbacks_added_to_a_done_future_run_at_once_on_the_caller() {
    // CPython's test_done_callback_already_{successful,failed,cancelled}.
    let s = settled();
    let here = thread::current().id();
    for (f, want) in [(&s.ok, "ok"), (&s.failed, "panic: failed"), (&s.cancelled, "cancelled")] {
        let (tx, rx) = mpsc::channel();
        f.add_done_callback(move |f| {
            let err = f.exception().map(|e| e.kind());
            tx.send((outcome(f), err, f.cancelled(), thread::current().id())).unwrap();
        });
        let (got, err, cancelled, on) = rx.try_recv().expect("the callback ran at once");
        assert_eq!(got, want);
        assert_eq!(on, here);
        assert_eq!(cancelled, want == "cancelled");
        let want_err = match want {
            "ok" => None,
            "cancelled" => Some(ErrorKind::Cancelled),
            _ => Some(ErrorKind::TaskPanicked),
        };
        assert_eq!(err, want_err);
    }
}

#[test]
fn a_panicking_done_callback_is_reported_and_the_others_still_run() {
    // CPython's test_done_callback_raises and ..._raises_already_succeeded.
    let ex = ThreadPoolExecutor::new(1).unwrap();
    let mut gate = Gate::new();
    let (task, _started) = gated(&gate, 5u64);
    let f = ex.submit(task, ()).unwrap();
    let calls = Arc::new(Mutex::new(Vec::new()));
    let (c1, c2) = (calls.clone(), calls.clone());
    f.add_done_callback(move |_| c1.lock().unwrap().push("first"));
    f.add_done_callback(|_| panic!("doh!"));
    f.add_done_callback(move |_| c2.lock().unwrap().push("last"));
    gate.open();
    assert_eq!(f.result_timeout(PROMPT).unwrap(), 5);
    assert_eq!(*calls.lock().unwrap(), ["first", "last"]);
    // On a done future the panic stays inside add_done_callback too.
    f.add_done_callback(|_| panic!("doh again!"));
    let c3 = calls.clone();
    f.add_done_callback(move |_| c3.lock().unwrap().push("after"));
    assert_eq!(*calls.lock().unwrap(), ["first", "last", "after"]);
    assert_eq!(f.result().unwrap(), 5, "the result is unaffected");
    // The thread that ran the panicking callback still serves.
    assert_eq!(ex.submit(|()| 6u64, ()).unwrap().result_timeout(PROMPT).unwrap(), 6);
}

#[test]
fn a_done_callback_may_add_another_which_runs_at_once() {
    let ex = ThreadPoolExecutor::new(1).unwrap();
    let mut gate = Gate::new();
    let (task, _started) = gated(&gate, 1u64);
    let f = ex.submit(task, ()).unwrap();
    let (tx, rx) = mpsc::channel();
    f.add_done_callback(move |f| {
        let tx2 = tx.clone();
        f.add_done_callback(move |_| tx2.send("inner").unwrap());
        tx.send("outer").unwrap();
    });
    gate.open();
    assert_eq!(f.result_timeout(PROMPT).unwrap(), 1);
    assert_eq!(rx.try_iter().collect::<Vec<_>>(), ["inner", "outer"]);
}

// --- wait -----------------------------------------------------------------------------

#[test]
fn wait_removes_duplicates() {
    // CPython's test_20369.
    let ex = ProcessPoolExecutor::new(1).unwrap();
    let f = ex.submit(sqr, 3).unwrap();
    let fs = vec![f.clone(), f.clone(), f];
    let r = bounded(STARTUP, "wait(ALL_COMPLETED)", move || wait(fs, None, ALL_COMPLETED));
    assert_eq!((r.done.len(), r.not_done.len()), (1, 0));
    assert_eq!(r.done[0].result().unwrap(), 9);

    let ex = ThreadPoolExecutor::new(1).unwrap();
    let (g, _gate) = gated_future(&ex, "g");
    let r = wait([g.clone(), g.clone(), g], Some(Duration::ZERO), FIRST_COMPLETED);
    assert_eq!((r.done.len(), r.not_done.len()), (0, 1));
}

#[test]
fn wait_first_completed_returns_when_one_finishes() {
    let ex = ThreadPoolExecutor::new(2).unwrap();
    let (f1, mut g1) = gated_future(&ex, "one");
    let (f2, g2) = gated_future(&ex, "two");
    let fs = vec![f1, f2];
    let waiter = thread::spawn(move || wait(fs, None, FIRST_COMPLETED));
    g1.open();
    let r = bounded(PROMPT, "wait(FIRST_COMPLETED)", move || waiter.join().unwrap());
    assert_eq!(outcomes(&r.done), ["one"]);
    assert_eq!(r.not_done.len(), 1);
    assert!(!r.not_done[0].done());
    drop(g2);
    assert_eq!(outcomes(&r.not_done), ["two"]);
}

#[test]
fn wait_first_completed_counts_futures_already_done_or_cancelled() {
    // CPython's test_first_completed_some_already_completed.
    let s = settled();
    let ex = ThreadPoolExecutor::new(1).unwrap();
    let (pending, _gate) = gated_future(&ex, "pending");
    let fs = vec![s.cancelled, s.ok, pending];
    let r = bounded(PROMPT, "wait(FIRST_COMPLETED)", move || wait(fs, None, FIRST_COMPLETED));
    assert_eq!(outcomes(&r.done), ["cancelled", "ok"]);
    assert_eq!(r.not_done.len(), 1);
    assert!(!r.not_done[0].done());
}

#[test]
fn wait_first_exception_returns_when_one_fails() {
    // CPython's test_first_exception.
    let ex = ThreadPoolExecutor::new(3).unwrap();
    let f1 = ex.submit(|()| "42".to_string(), ()).unwrap();
    assert_eq!(f1.result_timeout(PROMPT).unwrap(), "42");
    let mut g2 = Gate::new();
    let p = g2.path();
    let f2 = ex
        .submit(
            move |()| -> String {
                wait_at_gate(&p);
                panic!("this is an exception")
            },
            (),
        )
        .unwrap();
    let (f3, _g3) = gated_future(&ex, "three");
    let fs = vec![f1, f2, f3];
    let waiter = thread::spawn(move || wait(fs, None, FIRST_EXCEPTION));
    g2.open();
    let r = bounded(PROMPT, "wait(FIRST_EXCEPTION)", move || waiter.join().unwrap());
    assert_eq!(outcomes(&r.done), ["42", "panic: this is an exception"]);
    assert_eq!(r.not_done.len(), 1);
    assert!(!r.not_done[0].done());
}

#[test]
fn wait_first_exception_returns_at_once_for_a_failure_already_there() {
    // CPython's test_first_exception_some_already_complete and
    // test_first_exception_one_already_failed.
    let s = settled();
    let ex = ThreadPoolExecutor::new(1).unwrap();
    let (pending, _gate) = gated_future(&ex, "pending");
    let fs = vec![s.ok, s.cancelled, s.failed.clone(), pending.clone()];
    let r = bounded(PROMPT, "wait(FIRST_EXCEPTION)", move || wait(fs, None, FIRST_EXCEPTION));
    assert_eq!(outcomes(&r.done), ["cancelled", "ok", "panic: failed"]);
    assert_eq!(r.not_done.len(), 1);
    let fs = vec![s.failed, pending];
    let r = bounded(PROMPT, "wait(FIRST_EXCEPTION)", move || wait(fs, None, FIRST_EXCEPTION));
    assert_eq!(outcomes(&r.done), ["panic: failed"]);
    assert_eq!(r.not_done.len(), 1);
}

#[test]
fn wait_first_exception_is_not_ended_by_a_cancellation_and_else_waits_for_all() {
    let s = settled();
    let ex = ThreadPoolExecutor::new(1).unwrap();
    let (pending, mut gate) = gated_future(&ex, "pending");
    let limit = Duration::from_millis(300);
    let t = Instant::now();
    let r = wait([s.cancelled.clone(), pending.clone()], Some(limit), FIRST_EXCEPTION);
    let elapsed = t.elapsed();
    assert!(elapsed >= limit, "wait returned after {elapsed:?}, before its timeout");
    assert_faster(elapsed, limit + PROMPT, "wait(FIRST_EXCEPTION) with a timeout");
    assert_eq!(outcomes(&r.done), ["cancelled"]);
    assert_eq!(r.not_done.len(), 1);
    // With no failure at all, it returns once everything is done.
    let fs = vec![s.cancelled, pending, s.ok];
    let waiter = thread::spawn(move || wait(fs, None, FIRST_EXCEPTION));
    gate.open();
    let r = bounded(PROMPT, "wait(FIRST_EXCEPTION)", move || waiter.join().unwrap());
    assert_eq!(outcomes(&r.done), ["cancelled", "ok", "pending"]);
    assert!(r.not_done.is_empty());
}

#[test]
fn wait_all_completed_waits_for_every_future() {
    // CPython's test_all_completed.
    let s = settled();
    let ex = ThreadPoolExecutor::new(2).unwrap();
    let f1 = ex.submit(|()| -> String { panic!("division by zero") }, ()).unwrap();
    let (f2, mut gate) = gated_future(&ex, "42");
    let fs = vec![s.ok, s.cancelled, s.failed, f1, f2];
    let waiter = thread::spawn(move || wait(fs, None, ALL_COMPLETED));
    gate.open();
    let r = bounded(PROMPT, "wait(ALL_COMPLETED)", move || waiter.join().unwrap());
    assert_eq!(
        outcomes(&r.done),
        ["42", "cancelled", "ok", "panic: division by zero", "panic: failed"]
    );
    assert!(r.not_done.is_empty());
}

#[test]
fn wait_timeout_returns_what_is_done_when_time_is_up() {
    // CPython's test_timeout.
    let s = settled();
    let ex = ThreadPoolExecutor::new(1).unwrap();
    let (pending, _gate) = gated_future(&ex, "pending");
    let fs = vec![s.cancelled, s.failed, s.ok, pending];
    let limit = Duration::from_millis(200);
    let t = Instant::now();
    let r = wait(fs.clone(), Some(limit), ALL_COMPLETED);
    let elapsed = t.elapsed();
    assert!(elapsed >= limit, "wait returned after {elapsed:?}, before its timeout");
    assert_faster(elapsed, limit + PROMPT, "wait(ALL_COMPLETED) with a timeout");
    assert_eq!(outcomes(&r.done), ["cancelled", "ok", "panic: failed"]);
    assert_eq!(r.not_done.len(), 1);
    assert!(!r.not_done[0].done());
    // A zero timeout polls.
    let t = Instant::now();
    let r = wait(fs, Some(Duration::ZERO), ALL_COMPLETED);
    assert_faster(t.elapsed(), PROMPT, "wait with a zero timeout");
    assert_eq!((r.done.len(), r.not_done.len()), (3, 1));
}

#[test]
fn wait_on_no_futures_returns_at_once() {
    for when in [FIRST_COMPLETED, FIRST_EXCEPTION, ALL_COMPLETED] {
        let r =
            bounded(PROMPT, "wait on nothing", move || wait(Vec::<Future<u64>>::new(), None, when));
        assert!(r.done.is_empty() && r.not_done.is_empty());
    }
}

#[test]
fn wait_all_completed_on_many_futures_released_together() {
    // CPython's test_pending_calls_race.
    let ex = ThreadPoolExecutor::new(8).unwrap();
    let mut gate = Gate::new();
    let fs: Vec<Future<usize>> = (0..100)
        .map(|i| {
            let g = gate.path();
            ex.submit(
                move |()| {
                    wait_at_gate(&g);
                    i
                },
                (),
            )
            .unwrap()
        })
        .collect();
    let waiting = fs.clone();
    let waiter = thread::spawn(move || wait(waiting, None, ALL_COMPLETED));
    gate.open();
    let r = bounded(STARTUP, "wait(ALL_COMPLETED) on 100 futures", move || waiter.join().unwrap());
    assert_eq!((r.done.len(), r.not_done.len()), (100, 0));
    let got: Vec<usize> = fs.iter().map(|f| f.result().unwrap()).collect();
    assert_eq!(got, (0..100).collect::<Vec<_>>());
}

// --- as_completed ------------------------------------------------------------------------

#[test]
fn as_completed_yields_finished_futures_first_then_each_as_it_finishes() {
    let s = settled();
    let ex = ThreadPoolExecutor::new(2).unwrap();
    let (f1, mut g1) = gated_future(&ex, "one");
    let (f2, mut g2) = gated_future(&ex, "two");
    let mut it = as_completed([f1, s.ok, f2, s.failed, s.cancelled], Some(STARTUP));
    let mut first: Vec<String> = (0..3).map(|_| outcome(&it.next().unwrap().unwrap())).collect();
    first.sort();
    assert_eq!(first, ["cancelled", "ok", "panic: failed"]);
    g2.open();
    assert_eq!(outcome(&it.next().unwrap().unwrap()), "two");
    g1.open();
    assert_eq!(outcome(&it.next().unwrap().unwrap()), "one");
    assert!(it.next().is_none());
}

#[test]
fn as_completed_without_timeout_yields_every_future_once() {
    // CPython's test_no_timeout.
    let s = settled();
    let ex = ThreadPoolExecutor::new(2).unwrap();
    let f1 = ex.submit(|()| (2 * 21).to_string(), ()).unwrap();
    let f2 = ex.submit(|()| (7 * 6).to_string(), ()).unwrap();
    let fs = vec![s.cancelled, s.failed, s.ok, f1, f2];
    let got = bounded(STARTUP, "as_completed without a timeout", move || {
        as_completed(fs, None).map(|f| f.unwrap()).collect::<Vec<_>>()
    });
    assert_eq!(outcomes(&got), ["42", "42", "cancelled", "ok", "panic: failed"]);
}

#[test]
fn as_completed_times_out_after_yielding_what_finished() {
    // CPython's test_future_times_out, with a zero and a short timeout.
    for timeout in [Duration::ZERO, Duration::from_millis(100)] {
        let s = settled();
        let ex = ThreadPoolExecutor::new(1).unwrap();
        let (pending, _gate) = gated_future(&ex, "pending");
        let t = Instant::now();
        let got: Vec<_> =
            as_completed([s.cancelled, s.failed, s.ok, pending], Some(timeout)).collect();
        let elapsed = t.elapsed();
        assert_eq!(got.len(), 4, "three futures, then the timeout error, then the end");
        let yielded: Vec<Future<String>> = got[..3].iter().map(|r| r.clone().unwrap()).collect();
        assert_eq!(outcomes(&yielded), ["cancelled", "ok", "panic: failed"]);
        let err = got[3].as_ref().unwrap_err();
        assert!(err.is_timeout(), "{err:?}");
        assert!(err.message().contains("1 (of 4) futures unfinished"), "{err}");
        assert!(elapsed >= timeout, "timed out after {elapsed:?}, before {timeout:?}");
        assert_faster(elapsed, timeout + PROMPT, "as_completed timing out");
    }
}

#[test]
fn as_completed_timeout_error_counts_the_unfinished_futures() {
    // CPython's test_correct_timeout_exception_msg.
    let s = settled();
    let ex = ThreadPoolExecutor::new(1).unwrap();
    let (running, _gate) = gated_future(&ex, "running");
    let pending = ex.submit(|()| "pending".to_string(), ()).unwrap();
    let got: Vec<_> =
        as_completed([s.cancelled, pending, running, s.ok], Some(Duration::ZERO)).collect();
    let err = got.last().unwrap().as_ref().unwrap_err();
    assert!(err.message().contains("2 (of 4) futures unfinished"), "{err}");
}

#[test]
fn as_completed_yields_a_future_given_several_times_once() {
    // CPython's test_duplicate_futures.
    let ex = ProcessPoolExecutor::new(1).unwrap();
    let mut gate = Gate::new();
    let f = ex.submit(maybe_gated, Some(gate.path())).unwrap();
    let it = as_completed(std::iter::repeat_n(f, 3), Some(STARTUP));
    gate.open();
    let got: Vec<_> = it.collect();
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(got[0].as_ref().unwrap().result().is_ok());
}

#[test]
fn finished_results_are_not_kept_alive_by_the_executor_or_the_iterators() {
    // CPython's test_no_stale_references, test_free_reference and
    // test_free_reference_yielded_future.
    let ex = ThreadPoolExecutor::new(2).unwrap();
    let arg = Arc::new(());
    let weak_arg = Arc::downgrade(&arg);
    drop(ex.submit(drop::<Arc<()>>, arg).unwrap());
    let captured = Arc::new(());
    let weak_captured = Arc::downgrade(&captured);
    drop(ex.submit(move |()| Arc::strong_count(&captured), ()).unwrap());
    assert!(
        eventually(PROMPT, || weak_arg.upgrade().is_none() && weak_captured.upgrade().is_none()),
        "the executor keeps a finished call's argument or closure alive"
    );

    let fs: Vec<Future<Arc<()>>> =
        (0..4).map(|_| ex.submit(|()| Arc::new(()), ()).unwrap()).collect();
    let mut it = as_completed(fs, Some(STARTUP));
    for _ in 0..4 {
        let f = it.next().unwrap().unwrap();
        let weak = Arc::downgrade(&f.result().unwrap());
        drop(f);
        assert!(
            eventually(PROMPT, || weak.upgrade().is_none()),
            "as_completed keeps a yielded future's result alive"
        );
    }
    assert!(it.next().is_none());

    bounded(PROMPT, "a thread map", || {
        let ex = ThreadPoolExecutor::new(2).unwrap();
        for v in ex.map(|_: u32| Arc::new(()), 0..10) {
            let weak = Arc::downgrade(&v.unwrap());
            assert!(weak.upgrade().is_none(), "map keeps a yielded result alive");
        }
    });
}

// --- shutdown and drop ----------------------------------------------------------------------

#[test]
fn submit_and_map_after_shutdown_are_refused() {
    let p = ProcessPoolExecutor::new(1).unwrap();
    assert_eq!(p.submit(sqr, 2).unwrap().result_timeout(STARTUP).unwrap(), 4);
    let p = bounded(STARTUP, "shutdown(wait=true)", move || {
        p.shutdown();
        p
    });
    assert_eq!(p.submit(sqr, 2).unwrap_err().kind(), ErrorKind::PoolNotRunning);
    let got: Vec<_> = p.map(sqr, 0..3).collect();
    assert_eq!(got.len(), 1, "one error, then the end: {got:?}");
    assert_eq!(got[0].as_ref().unwrap_err().kind(), ErrorKind::PoolNotRunning);
    p.shutdown(); // again: nothing to do

    let t = ThreadPoolExecutor::new(1).unwrap();
    assert_eq!(t.submit(|()| 1, ()).unwrap().result_timeout(PROMPT).unwrap(), 1);
    t.shutdown();
    assert_eq!(t.submit(|()| 1, ()).unwrap_err().kind(), ErrorKind::PoolNotRunning);
    let got: Vec<_> = t.map(|x: u64| x, 0..3).collect();
    assert_eq!(got.len(), 1, "one error, then the end: {got:?}");
    assert_eq!(got[0].as_ref().unwrap_err().kind(), ErrorKind::PoolNotRunning);
    t.shutdown();
}

#[test]
fn shutdown_wait_returns_once_queued_work_ran_and_the_workers_exited() {
    // CPython's test_hang_issue12364 and test_processes_terminate.
    let ex = ProcessPoolExecutor::new(2).unwrap();
    let beacon = Beacon::new();
    let mut gate = Gate::new();
    let held: Vec<_> = (0..2)
        .map(|_| ex.submit(announce_and_wait, (beacon.path(), gate.path())).unwrap())
        .collect();
    let pids: HashSet<u32> =
        (0..2).map(|_| beacon.recv_pid(STARTUP, "a held task's start")).collect();
    assert_eq!(pids.len(), 2, "both workers run a held task");
    let queued: Vec<_> = (0..20).map(|i| ex.submit(sqr, i).unwrap()).collect();
    let shutting = thread::spawn(move || {
        ex.shutdown();
        Instant::now()
    });
    let opened = Instant::now();
    gate.open();
    let returned = bounded(STARTUP, "shutdown(wait=true)", move || shutting.join().unwrap());
    assert!(returned >= opened, "shutdown(wait=true) returned before the held tasks could finish");
    for f in &held {
        assert!(f.done(), "shutdown(wait=true) returned before a held task was done");
        assert!(pids.contains(&f.result().unwrap()));
    }
    for (i, f) in queued.iter().enumerate() {
        assert!(f.done(), "shutdown(wait=true) returned before queued task {i} was done");
        assert_eq!(f.result().unwrap(), sqr(i as u64));
    }
    for pid in pids {
        assert!(!pid_is_running(pid), "worker {pid} runs after shutdown(wait=true) returned");
    }
}

#[test]
fn shutdown_without_wait_returns_at_once_and_queued_work_still_runs() {
    let ex = ProcessPoolExecutor::new(1).unwrap();
    let beacon = Beacon::new();
    let mut gate = Gate::new();
    let dir = TempDir::new();
    let log = dir.file("ran.log");
    let head = ex.submit(announce_and_wait, (beacon.path(), gate.path())).unwrap();
    let pid = beacon.recv_pid(STARTUP, "the task's start");
    let queued: Vec<_> = (0..5).map(|i| ex.submit(logged, (i, log.clone())).unwrap()).collect();
    let t = Instant::now();
    ex.shutdown_with(multiproc::Shutdown { wait: false, cancel_futures: false });
    assert_faster(t.elapsed(), PROMPT, "shutdown(wait=false)");
    assert!(!head.done());
    gate.open();
    assert_eq!(head.result_timeout(PROMPT).unwrap(), pid);
    for (i, f) in queued.iter().enumerate() {
        assert_eq!(f.result_timeout(STARTUP).unwrap(), i as u32);
    }
    let mut ran = read_lines(&log);
    ran.sort();
    assert_eq!(ran, ["0", "1", "2", "3", "4"]);
    assert!(wait_pid_gone(pid, PROMPT), "the worker exits once the queue is drained");
}

#[test]
fn a_map_started_before_shutdown_without_wait_still_yields_every_result() {
    // CPython's test_shutdown_no_wait: shutdown(wait=False) after map(); every
    // result of the map is still computed.
    let got = bounded(STARTUP, "a map after shutdown(wait=false)", || {
        let ex = ProcessPoolExecutor::new(2).unwrap();
        let it = ex.map(|x: i64| x.abs(), -5..5);
        ex.shutdown_with(multiproc::Shutdown { wait: false, cancel_futures: false });
        it.collect::<Vec<_>>()
    });
    let got: Vec<i64> = got.into_iter().map(|r| r.unwrap()).collect();
    assert_eq!(got, [5, 4, 3, 2, 1, 0, 1, 2, 3, 4]);
}

#[test]
fn a_map_iterator_outlives_its_dropped_executor() {
    // CPython's test_del_shutdown.
    let got = bounded(STARTUP, "a map after the executor was dropped", || {
        let ex = ProcessPoolExecutor::new(2).unwrap();
        let it = ex.map(|x: i64| x.abs(), -5..5);
        drop(ex);
        it.collect::<Vec<_>>()
    });
    let got: Vec<i64> = got.into_iter().map(|r| r.unwrap()).collect();
    assert_eq!(got, [5, 4, 3, 2, 1, 0, 1, 2, 3, 4]);
}

#[test]
fn shutdown_wait_is_not_held_by_a_map_iterator_still_being_read() {
    let (ex, first) = bounded(STARTUP, "a map's first item", || {
        let ex = ProcessPoolExecutor::new(2).unwrap();
        let mut it = ex.map(sqr, 0..);
        let first = it.next().unwrap().unwrap();
        // `it` is dropped here, unfinished: its hold on the workers goes.
        (ex, first)
    });
    assert_eq!(first, 0);
    bounded(PROMPT, "shutdown(wait=true) after an unfinished map", move || ex.shutdown());
}

#[test]
fn shutdown_cancel_futures_cancels_queued_calls_only_thread() {
    let ex = ThreadPoolExecutor::new(1).unwrap();
    let mut gate = Gate::new();
    let (task, started) = gated(&gate, 0usize);
    let head = ex.submit(task, ()).unwrap();
    started.recv_timeout(PROMPT).expect("the first task started");
    let ran = Arc::new(AtomicUsize::new(0));
    let queued: Vec<_> = (1..=10)
        .map(|i| {
            let r = ran.clone();
            ex.submit(
                move |()| {
                    r.fetch_add(1, Ordering::SeqCst);
                    i
                },
                (),
            )
            .unwrap()
        })
        .collect();
    let t = Instant::now();
    ex.shutdown_with(multiproc::Shutdown { wait: false, cancel_futures: true });
    assert_faster(t.elapsed(), PROMPT, "shutdown(wait=false, cancel_futures=true)");
    for f in &queued {
        assert!(f.cancelled() && f.done() && !f.running());
        assert!(f.result_timeout(Duration::ZERO).unwrap_err().is_cancelled());
        assert!(f.cancel(), "cancel() on a cancelled future reports it cancelled");
    }
    assert!(head.running(), "the running call is not cancelled");
    assert!(ex.submit(|()| 0usize, ()).is_err());
    gate.open();
    assert_eq!(head.result_timeout(PROMPT).unwrap(), 0);
    let ex = bounded(PROMPT, "shutdown(wait=true)", move || {
        ex.shutdown();
        ex
    });
    drop(ex);
    assert_eq!(ran.load(Ordering::SeqCst), 0, "a cancelled call ran");
}

#[test]
fn shutdown_cancel_futures_cancels_queued_calls_only_process() {
    // CPython's test_cancel_futures: one worker, many calls; the running one
    // and any its worker already holds finish, the rest are cancelled and
    // never run.
    let ex = ProcessPoolExecutor::new(1).unwrap();
    let beacon = Beacon::new();
    let mut gate = Gate::new();
    let dir = TempDir::new();
    let log = dir.file("ran.log");
    let head = ex.submit(announce_and_wait, (beacon.path(), gate.path())).unwrap();
    let pid = beacon.recv_pid(STARTUP, "the task's start");
    let queued: Vec<_> = (0..200).map(|i| ex.submit(logged, (i, log.clone())).unwrap()).collect();
    let t = Instant::now();
    ex.shutdown_with(multiproc::Shutdown { wait: false, cancel_futures: true });
    assert_faster(t.elapsed(), PROMPT, "shutdown(wait=false, cancel_futures=true)");
    let cancelled: HashSet<u32> = (0..200).filter(|&i| queued[i as usize].cancelled()).collect();
    assert!(cancelled.len() >= 100, "only {} of 200 queued calls were cancelled", cancelled.len());
    gate.open();
    assert_eq!(head.result_timeout(PROMPT).unwrap(), pid);
    let mut finished = Vec::new();
    for (i, f) in queued.iter().enumerate() {
        match f.result_timeout(STARTUP) {
            Ok(v) => {
                assert_eq!(v, i as u32);
                finished.push(v.to_string());
            }
            Err(e) => {
                assert!(e.is_cancelled(), "call {i}: {e:?}");
                assert!(cancelled.contains(&(i as u32)), "call {i} was cancelled late");
            }
        }
    }
    let mut ran = read_lines(&log);
    ran.sort();
    finished.sort();
    assert_eq!(ran, finished, "exactly the calls that were not cancelled ran");
    assert!(wait_pid_gone(pid, PROMPT), "the worker exits after the shutdown");
}

#[test]
fn shutdown_wait_after_cancelling_a_just_submitted_call_does_not_hang() {
    // CPython's test_hang_gh94440.
    let p = ProcessPoolExecutor::new(1).unwrap();
    assert_eq!(p.submit(sqr, 1).unwrap().result_timeout(STARTUP).unwrap(), 1);
    p.submit(sqr, 2).unwrap().cancel();
    bounded(PROMPT, "a process shutdown(wait=true)", move || p.shutdown());

    let t = ThreadPoolExecutor::new(1).unwrap();
    assert_eq!(t.submit(|()| 1, ()).unwrap().result_timeout(PROMPT).unwrap(), 1);
    t.submit(|()| 2, ()).unwrap().cancel();
    bounded(PROMPT, "a thread shutdown(wait=true)", move || t.shutdown());
}

#[test]
fn dropping_a_process_executor_does_not_wait_and_queued_work_completes() {
    let ex = ProcessPoolExecutor::new(1).unwrap();
    let beacon = Beacon::new();
    let mut gate = Gate::new();
    let dir = TempDir::new();
    let log = dir.file("ran.log");
    let head = ex.submit(announce_and_wait, (beacon.path(), gate.path())).unwrap();
    let pid = beacon.recv_pid(STARTUP, "the task's start");
    let queued: Vec<_> = (0..5).map(|i| ex.submit(logged, (i, log.clone())).unwrap()).collect();
    let t = Instant::now();
    drop(ex);
    assert_faster(t.elapsed(), PROMPT, "dropping the executor");
    assert!(!head.done());
    gate.open();
    assert_eq!(head.result_timeout(PROMPT).unwrap(), pid);
    for (i, f) in queued.iter().enumerate() {
        assert_eq!(f.result_timeout(STARTUP).unwrap(), i as u32);
    }
    let mut ran = read_lines(&log);
    ran.sort();
    assert_eq!(ran, ["0", "1", "2", "3", "4"]);
    assert!(wait_pid_gone(pid, PROMPT), "the worker of a dropped executor exits when done");
}

#[test]
fn dropping_a_thread_executor_does_not_wait_and_queued_work_completes() {
    let ex = ThreadPoolExecutor::new(1).unwrap();
    let mut gate = Gate::new();
    let (task, started) = gated(&gate, 0u64);
    let head = ex.submit(task, ()).unwrap();
    started.recv_timeout(PROMPT).expect("the first task started");
    let queued: Vec<_> = (1..=5u64).map(|i| ex.submit(move |()| i * 10, ()).unwrap()).collect();
    let t = Instant::now();
    drop(ex);
    assert_faster(t.elapsed(), PROMPT, "dropping the executor");
    assert!(!head.done());
    gate.open();
    assert_eq!(head.result_timeout(PROMPT).unwrap(), 0);
    for (i, f) in queued.iter().enumerate() {
        assert_eq!(f.result_timeout(PROMPT).unwrap(), (i as u64 + 1) * 10);
    }
}

// --- workers: lazy start, reuse, limits ---------------------------------------------------

#[test]
fn workers_start_lazily_and_sequential_calls_reuse_one_idle_worker() {
    // CPython's test_idle_process_reuse_one.
    let dir = TempDir::new();
    let log = dir.file("workers.log");
    let ex = ProcessPoolExecutor::builder()
        .max_workers(4)
        .initializer(log_pid, log.clone())
        .build()
        .unwrap();
    assert!(read_lines(&log).is_empty(), "a worker started before the first submit");
    let pids: Vec<u32> =
        (0..3).map(|_| ex.submit(getpid, ()).unwrap().result_timeout(STARTUP).unwrap()).collect();
    assert!(pids.iter().all(|&p| p == pids[0]), "three sequential calls used {pids:?}");
    bounded(STARTUP, "shutdown(wait=true)", move || ex.shutdown());
    assert_eq!(read_lines(&log), [pids[0].to_string()], "workers started");
}

/// A thread executor whose initializer counts the threads it starts.
fn counted_thread_executor(max_workers: Option<usize>) -> (ThreadPoolExecutor, Arc<AtomicUsize>) {
    let starts = Arc::new(AtomicUsize::new(0));
    let s = starts.clone();
    let mut b = ThreadPoolExecutor::builder();
    if let Some(n) = max_workers {
        b = b.max_workers(n);
    }
    let ex = b
        .initializer(move || {
            s.fetch_add(1, Ordering::SeqCst);
        })
        .build()
        .unwrap();
    (ex, starts)
}

#[test]
fn sequential_calls_reuse_one_idle_thread() {
    // CPython's test_idle_thread_reuse.
    let (ex, starts) = counted_thread_executor(None);
    let ids: Vec<_> = (0..3)
        .map(|_| {
            ex.submit(|()| thread::current().id(), ()).unwrap().result_timeout(PROMPT).unwrap()
        })
        .collect();
    assert!(ids.iter().all(|&t| t == ids[0]), "three sequential calls used {ids:?}");
    bounded(PROMPT, "shutdown(wait=true)", move || ex.shutdown());
    assert_eq!(starts.load(Ordering::SeqCst), 1, "threads started");
}

#[test]
fn a_thread_executor_never_starts_a_second_thread_for_sequential_calls() {
    // Regression: the submitter read the queue's length and then the busy
    // count; a thread spinning for work could take the job in between, so
    // the one job counted twice and a second thread started (seen once in
    // CI). Many short rounds make that window likely to be hit.
    for round in 0..2000 {
        let (ex, starts) = counted_thread_executor(Some(4));
        for _ in 0..4 {
            ex.submit(|()| (), ()).unwrap().result_timeout(PROMPT).unwrap();
        }
        ex.shutdown();
        assert_eq!(starts.load(Ordering::SeqCst), 1, "threads started in round {round}");
    }
}

#[test]
fn a_call_submitted_while_the_only_worker_is_busy_starts_a_second_worker() {
    // max_workers=2, one warm worker: a second call submitted while the
    // first runs must run beside it on a second worker, not wait behind it.
    // Whether a busy worker grabs the call first is a race, so a few rounds.
    for round in 0..5 {
        let ex = ProcessPoolExecutor::new(2).unwrap();
        // Fast calls, one at a time: one worker, which now takes calls eagerly.
        for i in 0..3 {
            assert_eq!(ex.submit(sqr, i).unwrap().result_timeout(STARTUP).unwrap(), sqr(i));
        }
        let (b1, b2) = (Beacon::new(), Beacon::new());
        let mut gate = Gate::new();
        let first = ex.submit(announce_and_wait, (b1.path(), gate.path())).unwrap();
        let second = ex.submit(announce_and_wait, (b2.path(), gate.path())).unwrap();
        let pid1 = b1.recv_pid(STARTUP, "the first call's start");
        let started = b2.try_recv(STARTUP);
        gate.open();
        let pid2: u32 = started
            .unwrap_or_else(|| {
                panic!(
                    "round {round}: the second call did not start while the first ran; it \
                     waited behind it on worker {pid1} (running() = {})",
                    second.running()
                )
            })
            .parse()
            .expect("a pid");
        assert_ne!(pid1, pid2);
        assert_eq!(first.result_timeout(PROMPT).unwrap(), pid1);
        assert_eq!(second.result_timeout(PROMPT).unwrap(), pid2);
    }
}

#[test]
fn a_saturated_executor_runs_exactly_max_workers_workers() {
    // CPython's test_saturation and test_idle_process_reuse_multiple.
    let dir = TempDir::new();
    let log = dir.file("workers.log");
    let ex = ProcessPoolExecutor::builder()
        .max_workers(3)
        .initializer(log_pid, log.clone())
        .build()
        .unwrap();
    let beacon = Beacon::new();
    let mut gate = Gate::new();
    let held: Vec<_> = (0..3)
        .map(|_| ex.submit(announce_and_wait, (beacon.path(), gate.path())).unwrap())
        .collect();
    let more: Vec<_> = (0..45).map(|_| ex.submit(getpid, ()).unwrap()).collect();
    let pids: HashSet<u32> =
        (0..3).map(|_| beacon.recv_pid(STARTUP, "a held call's start")).collect();
    assert_eq!(pids.len(), 3, "three held calls on three workers");
    gate.open();
    for f in held.iter().chain(&more) {
        let pid = f.result_timeout(STARTUP).unwrap();
        assert!(pids.contains(&pid), "a call ran on a fourth worker, {pid}");
    }
    bounded(STARTUP, "shutdown(wait=true)", move || ex.shutdown());
    assert_eq!(read_lines(&log).len(), 3, "workers started: {:?}", read_lines(&log));
}

#[test]
fn a_saturated_thread_executor_runs_exactly_max_workers_threads() {
    let (ex, starts) = counted_thread_executor(Some(4));
    let mut gate = Gate::new();
    let (tx, rx) = mpsc::channel();
    let held: Vec<_> = (0..4)
        .map(|_| {
            let (tx, g) = (tx.clone(), gate.path());
            ex.submit(
                move |()| {
                    tx.send(thread::current().id()).unwrap();
                    wait_at_gate(&g);
                    thread::current().id()
                },
                (),
            )
            .unwrap()
        })
        .collect();
    let more: Vec<_> =
        (0..60).map(|_| ex.submit(|()| thread::current().id(), ()).unwrap()).collect();
    let ids: HashSet<_> =
        (0..4).map(|_| rx.recv_timeout(PROMPT).expect("a held call's start")).collect();
    assert_eq!(ids.len(), 4);
    gate.open();
    for f in held.iter().chain(&more) {
        assert!(ids.contains(&f.result_timeout(PROMPT).unwrap()), "a call ran on a fifth thread");
    }
    bounded(PROMPT, "shutdown(wait=true)", move || ex.shutdown());
    assert_eq!(starts.load(Ordering::SeqCst), 4, "threads started");
}

#[test]
fn submits_from_many_threads_share_max_workers_workers() {
    let dir = TempDir::new();
    let log = dir.file("workers.log");
    let ex = Arc::new(
        ProcessPoolExecutor::builder()
            .max_workers(2)
            .initializer(log_pid, log.clone())
            .build()
            .unwrap(),
    );
    let submitters: Vec<_> = (0..4u64)
        .map(|t| {
            let ex = ex.clone();
            thread::spawn(move || {
                (0..25u64).map(|i| ex.submit(mul_with_pid, (t, i)).unwrap()).collect::<Vec<_>>()
            })
        })
        .collect();
    let mut pids = HashSet::new();
    for (t, s) in submitters.into_iter().enumerate() {
        for (i, f) in s.join().unwrap().into_iter().enumerate() {
            let (product, pid) = f.result_timeout(STARTUP).unwrap();
            assert_eq!(product, (t * i) as u64);
            pids.insert(pid);
        }
    }
    assert!(pids.len() <= 2, "calls ran on {pids:?}");
    let ex = Arc::into_inner(ex).expect("the submitters are gone");
    bounded(STARTUP, "shutdown(wait=true)", move || ex.shutdown());
    assert!(read_lines(&log).len() <= 2, "workers started: {:?}", read_lines(&log));
}

// --- initializers ----------------------------------------------------------------------

#[test]
fn initializer_runs_in_each_worker_before_its_calls() {
    // CPython's InitializerMixin.test_initializer.
    let dir = TempDir::new();
    let log = dir.file("workers.log");
    let ex = ProcessPoolExecutor::builder()
        .max_workers(2)
        .initializer(init_status, ("initialized".to_string(), log.clone()))
        .build()
        .unwrap();
    let fs: Vec<_> = (0..10).map(|_| ex.submit(get_init_status, ()).unwrap()).collect();
    let mut pids = HashSet::new();
    for f in fs {
        let (pid, status) = f.result_timeout(STARTUP).unwrap();
        assert_eq!(status.as_deref(), Some("initialized"));
        pids.insert(pid.to_string());
    }
    assert!(INIT_STATUS.get().is_none(), "the initializer ran in the test process");
    bounded(STARTUP, "shutdown(wait=true)", move || ex.shutdown());
    let initialized: HashSet<String> = read_lines(&log).into_iter().collect();
    assert!(pids.is_subset(&initialized), "calls ran on {pids:?}, initialized {initialized:?}");
}

#[test]
fn a_failing_initializer_breaks_the_executor_without_respawning_forever() {
    // CPython's FailingInitializerMixin.test_initializer.
    let dir = TempDir::new();
    let log = dir.file("workers.log");
    let ex = ProcessPoolExecutor::builder()
        .max_workers(2)
        .initializer(init_panics, log.clone())
        .build()
        .unwrap();
    let fs: Vec<_> = (0..4).filter_map(|i| ex.submit(sqr, i).ok()).collect();
    for f in &fs {
        let err = f.exception_timeout(STARTUP).unwrap().expect("the call failed");
        assert_eq!(err.kind(), ErrorKind::InitializerFailed, "{err:?}");
        assert!(err.message().contains("error in initializer"), "{err}");
    }
    if fs.is_empty() {
        // Already broken at the first submit: nothing was accepted.
        assert!(!read_lines(&log).is_empty());
    }
    // Once a call has failed so, or submits were refused, it stays broken.
    let err = ex.submit(sqr, 9).map(|_| ()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InitializerFailed, "{err:?}");
    let got: Vec<_> = bounded(PROMPT, "a map on a broken executor", || {
        let dir = TempDir::new();
        let log = dir.file("workers.log");
        let ex = ProcessPoolExecutor::builder()
            .max_workers(1)
            .initializer(init_panics, log)
            .build()
            .unwrap();
        let _ = ex.submit(sqr, 0).map(|f| f.exception());
        ex.map(sqr, 0..3).collect::<Vec<_>>()
    });
    assert_eq!(got.len(), 1, "one error, then the end: {got:?}");
    assert_eq!(got[0].as_ref().unwrap_err().kind(), ErrorKind::InitializerFailed);
    // The workers are not started again and again: shutdown finds them gone.
    bounded(PROMPT, "shutdown(wait=true) of a broken executor", move || ex.shutdown());
    let started = read_lines(&log).len();
    assert!((1..=2).contains(&started), "{started} workers ran the failing initializer");
}

#[test]
fn an_initializer_that_kills_its_worker_is_not_retried_forever() {
    let dir = TempDir::new();
    let log = dir.file("workers.log");
    let ex = ProcessPoolExecutor::builder()
        .max_workers(1)
        .initializer(init_exits, log.clone())
        .build()
        .unwrap();
    if let Ok(f) = ex.submit(sqr, 2) {
        let err = f.exception_timeout(STARTUP).unwrap().expect("the call failed");
        assert_eq!(err.kind(), ErrorKind::InitializerFailed, "{err:?}");
        assert!(err.message().contains("exited with code 3"), "{err}");
    }
    assert_eq!(ex.submit(sqr, 2).map(|_| ()).unwrap_err().kind(), ErrorKind::InitializerFailed);
    bounded(PROMPT, "shutdown(wait=true) of a broken executor", move || ex.shutdown());
    let started = read_lines(&log).len();
    assert!((1..=3).contains(&started), "{started} workers ran the initializer");
}

#[test]
fn thread_initializer_runs_once_per_thread_and_its_failure_fails_the_calls() {
    let (ex, starts) = counted_thread_executor(Some(2));
    let fs: Vec<_> = (0..20u64).map(|i| ex.submit(move |()| i, ()).unwrap()).collect();
    for (i, f) in fs.iter().enumerate() {
        assert_eq!(f.result_timeout(PROMPT).unwrap(), i as u64);
    }
    bounded(PROMPT, "shutdown(wait=true)", move || ex.shutdown());
    let n = starts.load(Ordering::SeqCst);
    assert!((1..=2).contains(&n), "the initializer ran {n} times");

    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let ex = ThreadPoolExecutor::builder()
        .max_workers(2)
        .initializer(move || {
            c.fetch_add(1, Ordering::SeqCst);
            panic!("error in initializer");
        })
        .build()
        .unwrap();
    for i in 0..5u64 {
        match ex.submit(move |()| i, ()) {
            Ok(f) => {
                let err = f.exception_timeout(PROMPT).unwrap().expect("the call failed");
                assert_eq!(err.kind(), ErrorKind::InitializerFailed, "{err:?}");
                assert!(err.message().contains("error in initializer"), "{err}");
            }
            Err(err) => assert_eq!(err.kind(), ErrorKind::InitializerFailed, "{err:?}"),
        }
    }
    bounded(PROMPT, "shutdown(wait=true) of a broken executor", move || ex.shutdown());
    let n = calls.load(Ordering::SeqCst);
    assert!((1..=2).contains(&n), "the failing initializer ran {n} times");
}

// --- max_tasks_per_child ---------------------------------------------------------------

#[test]
fn max_tasks_per_child_replaces_a_worker_after_its_quota() {
    // CPython's test_max_tasks_per_child.
    let dir = TempDir::new();
    let log = dir.file("workers.log");
    let ex = ProcessPoolExecutor::builder()
        .max_workers(1)
        .max_tasks_per_child(3)
        .initializer(log_pid, log.clone())
        .build()
        .unwrap();
    let pids: Vec<u32> =
        (0..4).map(|_| ex.submit(getpid, ()).unwrap().result_timeout(STARTUP).unwrap()).collect();
    assert_eq!(pids[1], pids[0]);
    assert_eq!(pids[2], pids[0]);
    assert_ne!(pids[3], pids[0], "the fourth call ran on the retired worker");
    assert!(wait_pid_gone(pids[0], PROMPT), "the retired worker exited");
    bounded(STARTUP, "shutdown(wait=true)", move || ex.shutdown());
    assert_eq!(read_lines(&log), [pids[0].to_string(), pids[3].to_string()]);
}

#[test]
fn max_tasks_per_child_of_one_with_an_early_shutdown_runs_every_call() {
    // CPython's test_max_tasks_early_shutdown.
    let ex = ProcessPoolExecutor::builder().max_workers(3).max_tasks_per_child(1).build().unwrap();
    let fs: Vec<_> = (0..6u64).map(|i| ex.submit(mul_with_pid, (i, i)).unwrap()).collect();
    bounded(STARTUP, "shutdown(wait=true)", move || ex.shutdown());
    let mut pids = HashSet::new();
    for (i, f) in fs.iter().enumerate() {
        assert!(f.done(), "shutdown(wait=true) returned before call {i} was done");
        let (product, pid) = f.result().unwrap();
        assert_eq!(product, (i * i) as u64);
        pids.insert(pid);
    }
    assert_eq!(pids.len(), 6, "each call had a worker of its own");
}

// --- workers that die ---------------------------------------------------------------------

#[test]
fn a_worker_killed_with_sigkill_fails_only_the_future_it_was_running() {
    // CPython's test_killed_child breaks the whole executor; here only the
    // killed worker's call fails and the executor goes on.
    let ex = ProcessPoolExecutor::new(2).unwrap();
    let (b1, b2) = (Beacon::new(), Beacon::new());
    let mut gate = Gate::new();
    let victim = ex.submit(announce_then_sleep, b1.path()).unwrap();
    let other = ex.submit(announce_and_wait, (b2.path(), gate.path())).unwrap();
    let pid = b1.recv_pid(STARTUP, "the victim's start");
    let other_pid = b2.recv_pid(STARTUP, "the other call's start");
    assert_ne!(pid, other_pid);
    let queued: Vec<_> = (0..10).map(|i| ex.submit(sqr, i).unwrap()).collect();
    let t = Instant::now();
    send_signal(pid, libc::SIGKILL);
    let err = victim.exception_timeout(PROMPT).unwrap().expect("the victim failed");
    assert_faster(t.elapsed(), PROMPT, "reporting a killed worker");
    assert!(err.is_worker_died(), "{err:?}");
    assert_eq!(err.pid(), Some(pid));
    assert_eq!(err.signal(), Some(libc::SIGKILL));
    assert!(err.message().contains("SIGKILL"), "{err}");
    assert!(victim.done() && !victim.cancelled() && !victim.running());
    for (i, f) in queued.iter().enumerate() {
        assert_eq!(f.result_timeout(STARTUP).unwrap(), sqr(i as u64), "queued call {i}");
    }
    assert!(!other.done(), "the other worker's call is untouched");
    gate.open();
    assert_eq!(other.result_timeout(PROMPT).unwrap(), other_pid);
    let later = ex.submit(getpid, ()).unwrap().result_timeout(STARTUP).unwrap();
    assert_ne!(later, pid);
    assert!(wait_pid_gone(pid, PROMPT));
}

#[test]
fn calls_a_killed_worker_held_behind_its_running_one_still_succeed() {
    // Fast calls first: the worker then takes several calls at a time, so
    // calls queued around the slow one sit with it when it is killed.
    let ex = bounded(STARTUP, "a warm-up map", || {
        let ex = ProcessPoolExecutor::new(1).unwrap();
        assert_eq!(ex.map(sqr, 0..500).filter(Result::is_ok).count(), 500);
        ex
    });
    let dir = TempDir::new();
    let log = dir.file("ran.log");
    let beacon = Beacon::new();
    let before: Vec<_> = (0..5).map(|i| ex.submit(logged, (i, log.clone())).unwrap()).collect();
    let victim = ex.submit(announce_then_sleep, beacon.path()).unwrap();
    let after: Vec<_> = (5..10).map(|i| ex.submit(logged, (i, log.clone())).unwrap()).collect();
    let pid = beacon.recv_pid(STARTUP, "the victim's start");
    send_signal(pid, libc::SIGKILL);
    let err = victim.exception_timeout(PROMPT).unwrap().expect("the victim failed");
    assert!(err.is_worker_died(), "{err:?}");
    assert_eq!(err.signal(), Some(libc::SIGKILL));
    for (i, f) in before.iter().chain(&after).enumerate() {
        assert_eq!(f.result_timeout(STARTUP).unwrap(), i as u32, "call {i}");
    }
    // Each ran once: none was lost with the worker, none run twice.
    let mut ran = read_lines(&log);
    ran.sort();
    let mut want: Vec<String> = (0..10).map(|i| i.to_string()).collect();
    want.sort();
    assert_eq!(ran, want);
}

#[test]
fn a_call_that_exits_or_panics_fails_only_its_future() {
    // CPython's test_deadlock cases (exit in a task, error in a task) break
    // the executor; here each fails its own future and the executor goes on.
    let ex = ProcessPoolExecutor::new(1).unwrap();
    let pid = ex.submit(getpid, ()).unwrap().result_timeout(STARTUP).unwrap();
    let err = ex.submit(exit_with, 3).unwrap().exception_timeout(PROMPT).unwrap();
    let err = err.expect("the call failed");
    assert!(err.is_worker_died(), "{err:?}");
    assert_eq!(err.exit_code(), Some(3));
    assert_eq!(err.pid(), Some(pid));
    assert!(err.message().contains("exited with code 3"), "{err}");
    let next = ex.submit(getpid, ()).unwrap().result_timeout(STARTUP).unwrap();
    assert_ne!(next, pid, "a replacement worker runs the next call");
    let err = ex.submit(panics, 1).unwrap().result_timeout(STARTUP).unwrap_err();
    assert!(err.is_panic(), "{err:?}");
    assert_eq!(ex.submit(getpid, ()).unwrap().result_timeout(STARTUP).unwrap(), next);
}

#[test]
fn values_that_cannot_cross_fail_only_their_future() {
    // CPython's test_deadlock pickling cases: a result that cannot be
    // serialized in the worker, an argument that cannot be deserialized there.
    let ex = ProcessPoolExecutor::new(1).unwrap();
    let pid = ex.submit(getpid, ()).unwrap().result_timeout(STARTUP).unwrap();
    let err = ex.submit(make_no_serialize, 1).unwrap().exception_timeout(STARTUP).unwrap();
    let err = err.expect("the result could not be sent");
    assert_eq!(err.kind(), ErrorKind::Serialize, "{err:?}");
    assert!(err.is_serialization());
    let err = ex.submit(take_no_deserialize, NoDeserialize(2)).unwrap().result_timeout(STARTUP);
    let err = err.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Deserialize, "{err:?}");
    assert_eq!(ex.submit(getpid, ()).unwrap().result_timeout(STARTUP).unwrap(), pid);
}

#[test]
fn kill_cancels_a_running_call_and_the_executor_goes_on() {
    let ex = ProcessPoolExecutor::new(1).unwrap();
    let beacon = Beacon::new();
    let victim = ex.submit(announce_then_sleep, beacon.path()).unwrap();
    let pid = beacon.recv_pid(STARTUP, "the victim's start");
    let behind = ex.submit(getpid, ()).unwrap();
    let (tx, rx) = mpsc::channel();
    victim.add_done_callback(move |f| tx.send(f.cancelled()).unwrap());
    assert!(victim.running());
    assert!(!victim.cancel(), "cancel() does not stop a running call");
    let t = Instant::now();
    assert!(victim.kill());
    let err = victim.exception_timeout(PROMPT).unwrap().expect("the victim failed");
    assert_faster(t.elapsed(), PROMPT, "kill()");
    assert!(err.is_cancelled(), "{err:?}");
    assert_eq!(err.pid(), Some(pid));
    assert!(victim.cancelled() && victim.done() && !victim.running());
    assert!(victim.result().unwrap_err().is_cancelled());
    assert_eq!(rx.recv_timeout(PROMPT), Ok(true), "the callback saw a cancelled future");
    assert!(wait_pid_gone(pid, PROMPT), "the killed worker is gone");
    let next = behind.result_timeout(STARTUP).unwrap();
    assert_ne!(next, pid, "the call behind ran on a replacement");
    assert!(!behind.kill(), "kill() on a finished call");
    assert_eq!(ex.submit(sqr, 6).unwrap().result_timeout(STARTUP).unwrap(), 36);
}

#[test]
fn calls_held_behind_a_killed_call_still_succeed() {
    // As with SIGKILL above, but through Future::kill: the worker holds
    // several calls when the running one is killed.
    let ex = bounded(STARTUP, "a warm-up map", || {
        let ex = ProcessPoolExecutor::new(1).unwrap();
        assert_eq!(ex.map(sqr, 0..500).filter(Result::is_ok).count(), 500);
        ex
    });
    let beacon = Beacon::new();
    let victim = ex.submit(announce_then_sleep, beacon.path()).unwrap();
    let behind: Vec<_> = (0..5).map(|i| ex.submit(sqr, i).unwrap()).collect();
    let pid = beacon.recv_pid(STARTUP, "the victim's start");
    assert!(victim.kill());
    assert!(victim.exception_timeout(PROMPT).unwrap().is_some_and(|e| e.is_cancelled()));
    for (i, f) in behind.iter().enumerate() {
        assert_eq!(
            f.result_timeout(STARTUP).unwrap(),
            sqr(i as u64),
            "call {i} behind the killed one"
        );
    }
    assert!(wait_pid_gone(pid, PROMPT));
}

#[test]
fn kill_on_a_queued_call_cancels_it_and_a_thread_call_cannot_be_killed() {
    let ex = ProcessPoolExecutor::new(1).unwrap();
    let beacon = Beacon::new();
    let mut gate = Gate::new();
    let dir = TempDir::new();
    let log = dir.file("ran.log");
    let head = ex.submit(announce_and_wait, (beacon.path(), gate.path())).unwrap();
    let pid = beacon.recv_pid(STARTUP, "the head's start");
    // Many queued calls: the worker may already hold some of them.
    let queued: Vec<_> = (0..100).map(|i| ex.submit(logged, (i, log.clone())).unwrap()).collect();
    let last = queued.last().unwrap();
    assert!(!last.running(), "the last of 100 queued calls is not held yet");
    assert!(last.kill());
    assert!(last.cancelled() && last.done());
    gate.open();
    assert_eq!(head.result_timeout(PROMPT).unwrap(), pid);
    for f in &queued[..99] {
        f.result_timeout(STARTUP).unwrap();
    }
    bounded(STARTUP, "shutdown(wait=true)", move || ex.shutdown());
    assert!(!read_lines(&log).contains(&"99".to_string()), "the killed queued call ran");

    let ex = ThreadPoolExecutor::new(1).unwrap();
    let mut gate = Gate::new();
    let (task, started) = gated(&gate, 1u64);
    let running = ex.submit(task, ()).unwrap();
    started.recv_timeout(PROMPT).expect("the thread call started");
    let queued = ex.submit(|()| 2u64, ()).unwrap();
    assert!(!running.kill(), "a thread cannot be killed");
    assert!(running.running());
    assert!(queued.kill());
    assert!(queued.cancelled());
    gate.open();
    assert_eq!(running.result_timeout(PROMPT).unwrap(), 1);
}

// --- awaiting futures -----------------------------------------------------------------

#[test]
fn a_future_awaited_on_a_single_threaded_tokio_runtime_does_not_block_it() {
    bounded(STARTUP, "a current-thread tokio runtime", || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        rt.block_on(async {
            let ex = ProcessPoolExecutor::new(1).unwrap();
            let beacon = Beacon::new();
            let mut gate = Gate::new();
            let fut = ex.submit(announce_and_wait, (beacon.path(), gate.path())).unwrap();
            let waiting = tokio::spawn(fut.clone());
            let pid = beacon.recv_pid(STARTUP, "the task's start");
            // The only runtime thread keeps running other tasks while one
            // awaits the call.
            let ticks = tokio::spawn(async {
                for _ in 0..5 {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                5
            });
            assert_eq!(ticks.await.unwrap(), 5);
            assert!(!waiting.is_finished());
            gate.open();
            assert_eq!(waiting.await.unwrap().unwrap(), pid);
            assert_eq!(fut.await.unwrap(), pid, "an awaited future that is done is ready");
        });
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn futures_awaited_under_tokio_alongside_other_tasks() {
    let run = async {
        let ex = ProcessPoolExecutor::new(2).unwrap();
        let handles: Vec<_> = (0..8u64).map(|i| tokio::spawn(ex.submit(sqr, i).unwrap())).collect();
        let mut got = Vec::new();
        for h in handles {
            got.push(h.await.unwrap().unwrap());
        }
        assert_eq!(got, (0..8).map(sqr).collect::<Vec<_>>());
        let err = ex.submit(panics, 4).unwrap().await.unwrap_err();
        assert!(err.is_panic(), "{err:?}");
        // A future can lose a select and be awaited later: nothing is lost.
        let beacon = Beacon::new();
        let mut gate = Gate::new();
        let slow = ex.submit(announce_and_wait, (beacon.path(), gate.path())).unwrap();
        tokio::select! {
            r = slow.clone() => panic!("the gated call finished early: {r:?}"),
            () = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
        gate.open();
        let pid = slow.await.unwrap();
        assert_ne!(pid, std::process::id());
        // A cancelled thread-executor future resolves to its error.
        let tex = ThreadPoolExecutor::new(1).unwrap();
        let mut tgate = Gate::new();
        let (task, _started) = gated(&tgate, 0u64);
        let _held = tex.submit(task, ()).unwrap();
        let queued = tex.submit(|()| 1u64, ()).unwrap();
        let waiting = tokio::spawn(queued.clone());
        tokio::task::yield_now().await;
        assert!(queued.cancel());
        assert!(waiting.await.unwrap().unwrap_err().is_cancelled());
        tgate.open();
    };
    tokio::time::timeout(STARTUP, run).await.expect("the futures resolved in time");
}

#[test]
fn futures_awaited_by_a_minimal_executor_wake_it() {
    let p = ProcessPoolExecutor::new(1).unwrap();
    let t = ThreadPoolExecutor::new(1).unwrap();
    let beacon = Beacon::new();
    let mut pgate = Gate::new();
    let mut tgate = Gate::new();
    let pf = p.submit(announce_and_wait, (beacon.path(), pgate.path())).unwrap();
    let pid = beacon.recv_pid(STARTUP, "the process call's start");
    let (task, started) = gated(&tgate, 7u32);
    let tf = t.submit(task, ()).unwrap();
    started.recv_timeout(PROMPT).expect("the thread call started");

    // Pending: a poll registers its waker. Polled again with another
    // waker, completion must wake that one, the latest.
    let (first, first_waker) = thread_waker();
    let (latest, latest_waker) = thread_waker();
    let (mut a, b) = (pf.clone(), tf.clone());
    assert!(Pin::new(&mut a).poll(&mut Context::from_waker(&first_waker)).is_pending());
    let mut cx = Context::from_waker(&latest_waker);
    assert!(Pin::new(&mut a).poll(&mut cx).is_pending());
    assert_eq!(first.wakes.load(Ordering::SeqCst) + latest.wakes.load(Ordering::SeqCst), 0);
    pgate.open();
    let deadline = Instant::now() + PROMPT;
    while latest.wakes.load(Ordering::SeqCst) == 0 {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "completion did not wake the latest waker");
        thread::park_timeout(left);
    }
    match Pin::new(&mut a).poll(&mut cx) {
        Poll::Ready(r) => assert_eq!(r.unwrap(), pid),
        Poll::Pending => panic!("woken, but still pending"),
    }
    // Poll before the gate opens: a call that finished before its first poll
    // would owe no wake-up at all.
    let mut b = b;
    let (woken, waker) = thread_waker();
    assert!(Pin::new(&mut b).poll(&mut Context::from_waker(&waker)).is_pending());
    tgate.open();
    let deadline = Instant::now() + PROMPT;
    while woken.wakes.load(Ordering::SeqCst) == 0 {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "the thread call's completion did not wake its waker");
        thread::park_timeout(left);
    }
    let (outs, _) = block_on_all(vec![b], PROMPT);
    assert_eq!(outs.into_iter().map(|r| r.unwrap()).collect::<Vec<_>>(), [7]);

    // A failed call and several calls at once.
    let fs: Vec<_> = (0..4u64).map(|i| p.submit(sqr, i).unwrap()).collect();
    let (outs, _) = block_on_all(fs, STARTUP);
    assert_eq!(outs.into_iter().map(|r| r.unwrap()).collect::<Vec<_>>(), [0, 1, 4, 9]);
    let (outs, _) = block_on_all(vec![p.submit(panics, 2).unwrap()], STARTUP);
    assert!(outs[0].as_ref().unwrap_err().is_panic());
}

fn sleep_for_ms(ms: u64) -> u32 {
    thread::sleep(Duration::from_millis(ms));
    std::process::id()
}

#[test]
fn process_executor_task_timeout_fails_the_slow_call_and_goes_on() {
    let limit = Duration::from_millis(500);
    let ex = ProcessPoolExecutor::builder().max_workers(2).task_timeout(limit).build().unwrap();
    // Both workers started and warm, so the limit does not race their start.
    let warm: Vec<_> = (0..2).map(|_| ex.submit(sleep_for_ms, 50).unwrap()).collect();
    for f in &warm {
        f.result_timeout(STARTUP).unwrap();
    }
    let t = Instant::now();
    let slow = ex.submit(sleep_for_ms, 60_000).unwrap();
    let quick: Vec<_> = (0..4).map(|_| ex.submit(sleep_for_ms, 10).unwrap()).collect();
    let err = slow.result_timeout(limit + STARTUP).unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    assert!(t.elapsed() >= limit, "timed out after {:?}, before {limit:?}", t.elapsed());
    assert_faster(t.elapsed(), limit + PROMPT, "the executor's task timeout");
    let killed = err.pid().expect("the timed-out worker's pid");
    for f in quick {
        f.result_timeout(STARTUP).expect("the other calls succeed");
    }
    assert!(wait_pid_gone(killed, PROMPT), "timed-out worker {killed} still runs");
    let after = ex.submit(sleep_for_ms, 1).unwrap().result_timeout(STARTUP).unwrap();
    assert_ne!(after, killed);
    let zero = ProcessPoolExecutor::builder().task_timeout(Duration::ZERO).build().unwrap_err();
    assert_eq!(zero.kind(), ErrorKind::InvalidArgument);
}

#[test]
fn terminate_workers_kills_the_running_call_and_cancels_the_queued_ones() {
    let ex = ProcessPoolExecutor::new(1).unwrap();
    let beacon = Beacon::new();
    let running = ex.submit(announce_then_sleep, beacon.path()).unwrap();
    let queued = ex.submit(sqr, 3).unwrap();
    let pid = beacon.recv_pid(STARTUP, "the first call to start");
    let t = Instant::now();
    ex.terminate_workers();
    assert_faster(t.elapsed(), PROMPT, "terminate_workers");
    assert_eq!(running.map_kind(), Some(ErrorKind::Cancelled));
    assert_eq!(queued.map_kind(), Some(ErrorKind::Cancelled));
    assert!(wait_pid_gone(pid, STARTUP), "worker {pid} outlived terminate_workers");
    assert_eq!(ex.submit(sqr, 2).unwrap_err().kind(), ErrorKind::PoolNotRunning);
    // kill_workers on an executor already stopped is harmless.
    ex.kill_workers();
}

/// The error kind a future ends with, waiting at most ten seconds.
trait MapKind {
    fn map_kind(&self) -> Option<ErrorKind>;
}

impl<T: Clone + Send + 'static> MapKind for Future<T> {
    fn map_kind(&self) -> Option<ErrorKind> {
        self.result_timeout(Duration::from_secs(10)).err().map(|e| e.kind())
    }
}

#[test]
fn thread_name_prefix_names_the_executors_threads_as_python_does() {
    let ex = ThreadPoolExecutor::builder().max_workers(2).thread_name_prefix("dl").build().unwrap();
    // The first call starts the first thread (threads start as needed).
    let first = ex.submit(|| thread::current().name().unwrap().to_string(), ()).unwrap();
    assert_eq!(first.result().unwrap(), "dl_0");
    let names: HashSet<String> = (0..20)
        .map(|_| ex.submit(|| thread::current().name().unwrap().to_string(), ()).unwrap())
        .collect::<Vec<_>>()
        .into_iter()
        .map(|f| f.result().unwrap())
        .collect();
    assert!(names.iter().all(|n| n == "dl_0" || n == "dl_1"), "{names:?}");
}
