//! Unlucky timing and ordinary programs: callbacks that block or call back
//! into their pool, input iterators that fail part-way, and executor work
//! still pending when the program ends.

use std::process::Command;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use multiproc::{
    AsyncResult, ErrorKind, Pool, Process, ProcessPoolExecutor, ThreadPool, ThreadPoolExecutor,
};

use crate::support::{bounded, sqr, wait_at_gate, Gate, TempDir, PROMPT, STARTUP};

/// Squares `x` once the test opens `gate`: the test attaches its callbacks
/// before the result can arrive, so they run where results are delivered
/// (a callback attached to a finished result runs at once on its caller).
fn gated_sqr(x: u64, gate: String) -> u64 {
    wait_at_gate(&gate);
    x * x
}

// --- callbacks that call back into their pool ----------------------------------

#[test]
fn a_pool_callback_may_submit_to_its_one_worker_and_wait() {
    if !crate::support::alone() {
        return;
    }
    let pool = Arc::new(Pool::new(1).unwrap());
    let (tx, rx) = mpsc::channel();
    let p = pool.clone();
    let mut gate = Gate::new();
    let r = pool.apply_async(gated_sqr, (2, gate.path())).callback(move |&v| {
        // Both wait for the pool's only worker, whose result thread delivered
        // the value this callback holds.
        let direct = p.apply(sqr, v);
        let (tx2, rx2) = mpsc::channel();
        let nested =
            p.apply_async(sqr, v + 1).callback(move |&w| tx2.send(w).unwrap()).get_timeout(STARTUP);
        let inner = rx2.try_recv().ok();
        tx.send((direct.ok(), nested.ok(), inner)).unwrap();
    });
    gate.open();
    let got = bounded(STARTUP, "get() of a result whose callback uses the pool", move || r.get());
    assert_eq!(got.unwrap(), 4);
    // get() returned, so the callback has run.
    let calls = rx.try_recv().expect("the callback ran before get returned");
    assert_eq!(calls, (Some(16), Some(25), Some(25)), "apply, apply_async().get(), its callback");
    assert_eq!(pool.map(sqr, 0..10).unwrap().len(), 10, "the pool still works");
}

#[test]
fn a_thread_pool_callback_may_submit_to_its_one_thread_and_wait() {
    if !crate::support::alone() {
        return;
    }
    let pool = Arc::new(ThreadPool::new(1).unwrap());
    let (tx, rx) = mpsc::channel();
    let p = pool.clone();
    let mut gate = Gate::new();
    let g = gate.path();
    let r = pool.apply_async(move |x: u64| gated_sqr(x, g.clone()) * 10, 1).callback(move |&v| {
        let direct = p.apply(|x: u64| x + 1, v);
        let (tx2, rx2) = mpsc::channel();
        let nested = p
            .apply_async(|x: u64| x + 2, v)
            .callback(move |&w| tx2.send(w).unwrap())
            .get_timeout(STARTUP);
        tx.send((direct.ok(), nested.ok(), rx2.try_recv().ok())).unwrap();
    });
    gate.open();
    let got =
        bounded(STARTUP, "a thread pool result whose callback uses the pool", move || r.get());
    assert_eq!(got.unwrap(), 10);
    assert_eq!(rx.try_recv().unwrap(), (Some(11), Some(12), Some(12)));
    assert_eq!(pool.map(|x: u64| x, 0..10).unwrap().len(), 10);
}

#[test]
fn a_process_executor_done_callback_may_submit_to_its_one_worker_and_wait() {
    if !crate::support::alone() {
        return;
    }
    let ex = Arc::new(ProcessPoolExecutor::new(1).unwrap());
    let (tx, rx) = mpsc::channel();
    let e = ex.clone();
    let mut gate = Gate::new();
    let f = ex.submit(gated_sqr, (3, gate.path())).unwrap();
    f.add_done_callback(move |f| {
        let v = f.result().unwrap();
        let direct = e.submit(sqr, v).unwrap().result_timeout(STARTUP);
        let nested = e.submit(sqr, v + 1).unwrap();
        let (tx2, rx2) = mpsc::channel();
        nested.add_done_callback(move |n| tx2.send(n.result().ok()).unwrap());
        let nested = nested.result_timeout(STARTUP);
        tx.send((direct.ok(), nested.ok(), rx2.try_recv().ok().flatten())).unwrap();
    });
    gate.open();
    let got =
        bounded(STARTUP, "a future whose done-callback uses the executor", move || f.result());
    assert_eq!(got.unwrap(), 9);
    assert_eq!(rx.try_recv().unwrap(), (Some(81), Some(100), Some(100)));
    assert_eq!(ex.submit(sqr, 5).unwrap().result_timeout(STARTUP).unwrap(), 25);
}

#[test]
fn a_thread_executor_done_callback_may_submit_to_its_one_thread_and_wait() {
    if !crate::support::alone() {
        return;
    }
    let ex = Arc::new(ThreadPoolExecutor::new(1).unwrap());
    let (tx, rx) = mpsc::channel();
    let e = ex.clone();
    let mut gate = Gate::new();
    let g = gate.path();
    let f = ex.submit(move |x: u64| gated_sqr(x, g.clone()) / x, 7).unwrap();
    f.add_done_callback(move |f| {
        let v = f.result().unwrap();
        let direct = e.submit(move |()| v + 1, ()).unwrap().result_timeout(STARTUP);
        let nested = e.submit(move |()| v + 2, ()).unwrap();
        let (tx2, rx2) = mpsc::channel();
        nested.add_done_callback(move |n| tx2.send(n.result().ok()).unwrap());
        let nested = nested.result_timeout(STARTUP);
        tx.send((direct.ok(), nested.ok(), rx2.try_recv().ok().flatten())).unwrap();
    });
    gate.open();
    let got =
        bounded(STARTUP, "a thread future whose done-callback uses the executor", move || {
            f.result()
        });
    assert_eq!(got.unwrap(), 7);
    assert_eq!(rx.try_recv().unwrap(), (Some(8), Some(9), Some(9)));
}

// --- a blocked callback delays nothing else ------------------------------------

/// A callback that reports it started, then blocks until the test lets it go.
fn blocking_callback(
    started: mpsc::Sender<()>,
    release: mpsc::Receiver<()>,
) -> impl FnOnce(&u64) + Send + 'static {
    move |_| {
        started.send(()).unwrap();
        release.recv_timeout(STARTUP).expect("the test released the callback");
    }
}

#[test]
fn a_blocked_callback_stalls_neither_the_worker_nor_other_results() {
    if !crate::support::alone() {
        return;
    }
    let pool = Pool::new(1).unwrap();
    let (started_tx, started) = mpsc::channel();
    let (release, release_rx) = mpsc::channel();
    let mut gate = Gate::new();
    let first = pool
        .apply_async(gated_sqr, (1, gate.path()))
        .callback(blocking_callback(started_tx, release_rx));
    gate.open();
    started.recv_timeout(STARTUP).expect("the first callback started");
    // The result is not ready while its callback runs, and asking does not
    // wait for the callback (it holds no lock of the result).
    let (ready, first) =
        bounded(PROMPT, "ready() while the callback runs", move || (first.ready(), first));
    assert!(!ready, "a result is ready only after its callbacks");
    // The one worker goes on, and other results (with callbacks of their
    // own) arrive and are delivered meanwhile.
    let t0 = Instant::now();
    let (tx, rx) = mpsc::channel();
    let later: Vec<AsyncResult<u64>> = (2..12)
        .map(|i| {
            let tx = tx.clone();
            pool.apply_async(sqr, i).callback(move |&v| tx.send(v).unwrap())
        })
        .collect();
    let values = bounded(STARTUP, "results behind a blocked callback", move || {
        later.into_iter().map(|r| r.get()).collect::<Vec<_>>()
    });
    let took = t0.elapsed();
    let values: Vec<u64> = values.into_iter().map(Result::unwrap).collect();
    assert_eq!(values, (2..12).map(|i| i * i).collect::<Vec<_>>());
    let mut seen: Vec<u64> = rx.try_iter().collect();
    seen.sort_unstable();
    assert_eq!(seen, values, "their callbacks ran before their get() returned");
    assert!(took < STARTUP, "10 results behind a blocked callback took {took:?}");
    assert_eq!(pool.map(sqr, 0..100).unwrap().len(), 100, "maps run meanwhile too");
    assert!(!first.ready());
    release.send(()).unwrap();
    let got = bounded(STARTUP, "the first result once its callback returns", move || first.get());
    assert_eq!(got.unwrap(), 1);
}

#[test]
fn a_slow_callback_does_not_delay_results_from_other_workers() {
    if !crate::support::alone() {
        return;
    }
    let pool = Pool::new(2).unwrap();
    // Both workers started and warm.
    assert_eq!(pool.map(sqr, 0..4).unwrap().len(), 4);
    let (started_tx, started) = mpsc::channel();
    let mut gate = Gate::new();
    let slow = pool.apply_async(gated_sqr, (1, gate.path())).callback(move |_| {
        started_tx.send(()).unwrap();
        std::thread::sleep(Duration::from_millis(500));
    });
    gate.open();
    started.recv_timeout(STARTUP).expect("the slow callback started");
    let t0 = Instant::now();
    for i in 2..12u64 {
        let (tx, rx) = mpsc::channel();
        let r = pool.apply_async(sqr, i).callback(move |&v| tx.send(v).unwrap());
        assert_eq!(r.get_timeout(STARTUP).unwrap(), i * i);
        assert_eq!(rx.try_recv(), Ok(i * i), "get() returned after the callback");
    }
    let took = t0.elapsed();
    // 10 round trips take a few milliseconds; behind the slow callback they
    // would take its 500 ms.
    assert!(took < Duration::from_millis(400), "10 results beside a slow callback took {took:?}");
    assert!(!slow.ready(), "the slow callback is still running");
    assert_eq!(slow.get_timeout(STARTUP).unwrap(), 1);
}

// --- input iterators that fail part-way -------------------------------------------

/// 0..10, except that reading item 3 panics.
fn breaks_at_3() -> impl Iterator<Item = u64> + 'static {
    (0..10u64).map(|i| if i == 3 { panic!("the input broke at item 3") } else { i })
}

#[track_caller]
fn assert_input_error(e: &multiproc::Error) {
    assert_eq!(e.kind(), ErrorKind::TaskPanicked, "{e}");
    assert_eq!(e.panic_message(), Some("the input broke at item 3"), "{e}");
    assert!(e.message().contains("input iterator"), "the error names the input: {e}");
    assert!(e.location().is_some_and(|l| l.contains("hostile_timing.rs")), "{e}");
}

/// An ordered iteration over `breaks_at_3`: 0, 1, 4, then the input's error.
#[track_caller]
fn assert_ordered(items: Vec<multiproc::Result<u64>>, what: &str) {
    assert_eq!(items.len(), 4, "{what}: {items:?}");
    let oks: Vec<u64> = items[..3].iter().map(|r| *r.as_ref().unwrap()).collect();
    assert_eq!(oks, [0, 1, 4], "{what}");
    assert_input_error(items[3].as_ref().unwrap_err());
}

/// An unordered one: 0, 1, 4 in some order, then the input's error.
#[track_caller]
fn assert_unordered(items: Vec<multiproc::Result<u64>>, what: &str) {
    assert_eq!(items.len(), 4, "{what}: {items:?}");
    let mut oks: Vec<u64> = items[..3].iter().map(|r| *r.as_ref().unwrap()).collect();
    oks.sort_unstable();
    assert_eq!(oks, [0, 1, 4], "{what}");
    assert_input_error(items[3].as_ref().unwrap_err());
}

#[test]
fn pool_imap_yields_the_results_before_a_failing_input_then_its_error() {
    if !crate::support::alone() {
        return;
    }
    let pool = Arc::new(Pool::new(2).unwrap());
    for chunksize in [1, 2, 3, 100] {
        let p = pool.clone();
        let (ordered, unordered) = bounded(STARTUP, "imap over a failing input", move || {
            let c = p.chunksize(chunksize);
            (c.imap(sqr, breaks_at_3()).collect(), c.imap_unordered(sqr, breaks_at_3()).collect())
        });
        assert_ordered(ordered, &format!("imap, chunksize {chunksize}"));
        assert_unordered(unordered, &format!("imap_unordered, chunksize {chunksize}"));
    }
    assert_ordered(pool.imap(sqr, breaks_at_3()).collect(), "imap, default chunksize");
    assert_unordered(pool.imap_unordered(sqr, breaks_at_3()).collect(), "imap_unordered");
    // map reads its whole input first, so it fails as a whole.
    assert_input_error(&pool.map(sqr, breaks_at_3()).unwrap_err());
    assert_input_error(&pool.chunksize(2).map(sqr, breaks_at_3()).unwrap_err());
    let pairs = breaks_at_3().map(|i| (i, 1u64));
    assert_input_error(&pool.starmap(|a: u64, b: u64| a + b, pairs).unwrap_err());
    let (tx, rx) = mpsc::channel();
    let r = pool.map_async(sqr, breaks_at_3()).error_callback(move |e| tx.send(e.clone()).unwrap());
    assert_input_error(&r.get_timeout(STARTUP).unwrap_err());
    assert_input_error(&rx.try_recv().expect("the error callback ran"));
    // The pool goes on.
    assert_eq!(pool.map(sqr, 0..5).unwrap(), [0, 1, 4, 9, 16]);
    assert_eq!(pool.imap(sqr, 0..3).map(Result::unwrap).collect::<Vec<_>>(), [0, 1, 4]);
}

#[test]
fn thread_pool_imap_yields_the_results_before_a_failing_input_then_its_error() {
    if !crate::support::alone() {
        return;
    }
    let pool = ThreadPool::new(2).unwrap();
    for chunksize in [1, 2, 3, 100] {
        let c = pool.chunksize(chunksize);
        assert_ordered(c.imap(sqr, breaks_at_3()).collect(), &format!("chunksize {chunksize}"));
        assert_unordered(
            c.imap_unordered(sqr, breaks_at_3()).collect(),
            &format!("unordered, chunksize {chunksize}"),
        );
        assert_input_error(&c.map(sqr, breaks_at_3()).unwrap_err());
    }
    assert_input_error(&pool.map(sqr, breaks_at_3()).unwrap_err());
    assert_eq!(pool.map(sqr, 0..3).unwrap(), [0, 1, 4]);
}

#[test]
fn executor_map_yields_the_results_before_a_failing_input_then_its_error() {
    if !crate::support::alone() {
        return;
    }
    let ex = ProcessPoolExecutor::new(2).unwrap();
    let got = bounded(STARTUP, "executor map over a failing input", move || {
        let got: Vec<_> = ex.map(sqr, breaks_at_3()).collect();
        let after = ex.submit(sqr, 6).unwrap().result();
        (got, after)
    });
    assert_ordered(got.0, "ProcessPoolExecutor::map");
    assert_eq!(got.1.unwrap(), 36, "the executor goes on");
    let ex = ThreadPoolExecutor::new(2).unwrap();
    assert_ordered(ex.map(sqr, breaks_at_3()).collect(), "ThreadPoolExecutor::map");
    assert_eq!(ex.submit(sqr, 6).unwrap().result_timeout(STARTUP).unwrap(), 36);
}

// --- executor work pending at exit ----------------------------------------------------

/// Sleeps, then writes `done` into the file at `path`.
fn write_after(path: String, ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
    std::fs::write(path, "done").expect("write the marker file");
}

fn do_nothing(_: ()) {}

/// The body of a child process: submits `write_after` and ends without
/// `shutdown`, in the way `how` names.
fn submit_and_end(path: String, how: String) {
    match how.as_str() {
        "process: return" => {
            let ex = ProcessPoolExecutor::new(1).unwrap();
            drop(ex.submit(write_after, (path, 200)).unwrap());
        }
        "process: exit" => {
            let ex = ProcessPoolExecutor::new(1).unwrap();
            drop(ex.submit(write_after, (path, 200)).unwrap());
            // The executor is still alive (never dropped) when exit runs.
            std::process::exit(0);
        }
        "process: done-callback" => {
            // The task leaves its own file; the marker is the callback's.
            let ex = ProcessPoolExecutor::new(1).unwrap();
            let f = ex.submit(write_after, (format!("{path}.task"), 200)).unwrap();
            f.add_done_callback(move |f| {
                assert!(f.exception().is_none());
                // Slow enough to still run when the workers are gone.
                std::thread::sleep(Duration::from_millis(300));
                std::fs::write(&path, "done").expect("write the marker file");
            });
        }
        "thread: return" => {
            let ex = ThreadPoolExecutor::new(1).unwrap();
            drop(ex.submit(write_after, (path, 200)).unwrap());
        }
        "process: then a Process" => {
            // The Process registers its own exit hook after the executor's;
            // hooks run in reverse, and that one kills daemon children.
            let ex = ProcessPoolExecutor::new(1).unwrap();
            drop(ex.submit(write_after, (path, 200)).unwrap());
            let mut p = Process::new(do_nothing, ());
            p.start().unwrap();
            p.join().unwrap();
        }
        "process: shutdown without wait" => {
            let ex = ProcessPoolExecutor::new(1).unwrap();
            drop(ex.submit(write_after, (path, 30_000)).unwrap());
            ex.shutdown_with(multiproc::Shutdown { wait: false, cancel_futures: false });
        }
        "thread: shutdown without wait" => {
            let ex = ThreadPoolExecutor::new(1).unwrap();
            drop(ex.submit(write_after, (path, 30_000)).unwrap());
            ex.shutdown_with(multiproc::Shutdown { wait: false, cancel_futures: false });
        }
        other => panic!("unknown ending {other:?}"),
    }
}

/// Runs `submit_and_end` in a child process; returns how long it took to
/// exit, and whether the work left a marker file.
fn run_child(how: &str) -> (Duration, bool) {
    let dir = TempDir::new();
    let path = dir.file("marker");
    let mut p = Process::new(submit_and_end, (path.clone(), how.to_string()));
    let t0 = Instant::now();
    p.start().unwrap();
    assert!(p.join_timeout(STARTUP).unwrap(), "{how}: the child did not exit in time");
    let took = t0.elapsed();
    assert_eq!(p.exitcode(), Some(0), "{how}: the child failed");
    (took, std::fs::read_to_string(&path).is_ok_and(|s| s == "done"))
}

#[test]
fn executor_work_completes_when_the_program_ends_without_shutdown() {
    if !crate::support::alone() {
        return;
    }
    for how in [
        "process: return",
        "process: exit",
        "process: done-callback",
        "thread: return",
        "process: then a Process",
    ] {
        let (_, done) = run_child(how);
        assert!(done, "{how}: the submitted work was lost at exit");
    }
}

#[test]
fn shutdown_without_wait_still_lets_the_program_exit_at_once() {
    if !crate::support::alone() {
        return;
    }
    for how in ["process: shutdown without wait", "thread: shutdown without wait"] {
        let (took, done) = run_child(how);
        assert!(!done, "{how}: the 30 s task cannot have finished");
        assert!(took < Duration::from_secs(5), "{how}: the child took {took:?} to exit");
    }
}

/// Set in the environment of this test binary run as a child program.
const CHILD_ENV: &str = "MULTIPROC_TEST_EXECUTOR_AT_EXIT";

#[test]
fn child_main_returns_with_executor_work_pending() {
    if !crate::support::alone() {
        return;
    }
    // A no-op unless this binary runs as the child of the test below: then
    // the test harness's `main` returns right after this test.
    let Ok(path) = std::env::var(CHILD_ENV) else { return };
    let ex = ProcessPoolExecutor::new(1).unwrap();
    drop(ex.submit(write_after, (path, 200)).unwrap());
}

#[test]
fn executor_work_completes_when_main_returns() {
    if !crate::support::alone() {
        return;
    }
    let dir = TempDir::new();
    let path = dir.file("marker");
    let exe = std::env::current_exe().expect("the test binary's path");
    let mut child = Command::new(exe)
        .args(["--exact", "hostile_timing::child_main_returns_with_executor_work_pending"])
        .args(["--test-threads", "1", "-q"])
        .env(CHILD_ENV, &path)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("run the test binary as a child");
    let status = bounded(STARTUP, "the child program", move || child.wait());
    assert!(status.unwrap().success());
    assert_eq!(std::fs::read_to_string(&path).ok().as_deref(), Some("done"), "work lost at exit");
}

// --- join waits for the callbacks ----------------------------------------------------

/// Callbacks that take a while, each adding its value to `seen` at the end.
fn slow_recorder(
    seen: &Arc<std::sync::Mutex<Vec<u64>>>,
) -> impl FnOnce(&u64) + Send + 'static + use<> {
    let seen = seen.clone();
    move |&v| {
        std::thread::sleep(Duration::from_millis(50));
        seen.lock().unwrap().push(v);
    }
}

/// Python's `pool.join()` returns after the result handler has run every
/// callback; callbacks now run on their own threads, and join still waits.
#[test]
fn join_returns_after_every_callback_of_the_pools_results() {
    if !crate::support::alone() {
        return;
    }
    let pool = Pool::new(2).unwrap();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    for i in 1..5 {
        drop(pool.apply_async(sqr, i).callback(slow_recorder(&seen)));
    }
    pool.close();
    pool.join().unwrap();
    let mut got = seen.lock().unwrap().clone();
    got.sort();
    assert_eq!(got, [1, 4, 9, 16], "join returned before the callbacks ran");

    let pool = ThreadPool::new(2).unwrap();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    for i in 1..5 {
        drop(pool.apply_async(move |x: u64| x + i, 0).callback(slow_recorder(&seen)));
    }
    pool.close();
    pool.join().unwrap();
    assert_eq!(seen.lock().unwrap().len(), 4, "thread pool join returned before the callbacks");
}

#[test]
fn shutdown_with_wait_returns_after_the_done_callbacks() {
    if !crate::support::alone() {
        return;
    }
    let ex = ProcessPoolExecutor::new(2).unwrap();
    let seen = Arc::new(std::sync::Mutex::new(0));
    for i in 1..5u64 {
        let seen = seen.clone();
        ex.submit(sqr, i).unwrap().add_done_callback(move |_| {
            std::thread::sleep(Duration::from_millis(50));
            *seen.lock().unwrap() += 1;
        });
    }
    ex.shutdown();
    assert_eq!(*seen.lock().unwrap(), 4, "shutdown(wait) returned before the done-callbacks");
}
