//! Timeouts everywhere, one convention: a per-call timeout (`.timeout(d)`)
//! on pools and executors is a deadline for the result counted from the
//! call; on expiry the result fails with `Timeout` and the call's work stops
//! (a worker process running it is killed and replaced). Every timed wait
//! reports `ErrorKind::Timeout`; only calls that do not wait say Empty/Full.

use std::time::{Duration, Instant};

use multiproc::{
    ErrorKind, Pool, ProcessPoolExecutor, PutError, Queue, ThreadPool, ThreadPoolExecutor,
};

use crate::support::{wait_pid_gone, PROMPT, STARTUP};

const LIMIT: Duration = Duration::from_millis(300);

fn nap_then_pid(ms: u64) -> u32 {
    std::thread::sleep(Duration::from_millis(ms));
    std::process::id()
}

fn pid(_: ()) -> u32 {
    std::process::id()
}

/// The call failed with `Timeout` no sooner than its limit and not long after.
fn assert_on_time(started: Instant, what: &str) {
    let took = started.elapsed();
    assert!(took >= LIMIT, "{what} gave up after {took:?}, before its {LIMIT:?}");
    assert!(took < LIMIT + STARTUP, "{what} took {took:?} to time out");
}

#[test]
fn pool_apply_with_a_timeout_kills_the_worker_and_the_pool_goes_on() {
    let pool = Pool::new(1).unwrap();
    let first = pool.apply(pid, ()).unwrap();
    let started = Instant::now();
    let err = pool.timeout(LIMIT).apply(nap_then_pid, 60_000).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    assert_on_time(started, "apply with a timeout");
    assert!(wait_pid_gone(first, STARTUP), "the worker {first} running the late task still lives");
    let started = Instant::now();
    let next = pool.timeout(STARTUP).apply(pid, ()).unwrap();
    assert_ne!(next, first, "a replacement runs the next task");
    assert!(started.elapsed() < STARTUP);
    // A call that finishes in time is not touched by its timeout.
    assert_eq!(pool.timeout(STARTUP).apply(nap_then_pid, 1).unwrap(), next);
}

#[test]
fn a_timed_call_still_queued_at_its_deadline_never_runs() {
    let pool = Pool::new(1).unwrap();
    let busy = pool.apply_async(nap_then_pid, 1500);
    let started = Instant::now();
    let queued = pool.timeout(LIMIT).apply_async(nap_then_pid, 0);
    let err = queued.get_timeout(STARTUP).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    assert_on_time(started, "a queued apply_async with a timeout");
    // The busy task was not the one killed.
    let worker = busy.get_timeout(STARTUP + PROMPT).unwrap();
    assert_eq!(pool.apply(pid, ()).unwrap(), worker, "the queued call was cancelled, not killed");
}

#[test]
fn pool_map_with_a_timeout_fails_the_whole_map_in_time() {
    let pool = Pool::new(2).unwrap();
    let started = Instant::now();
    let r = pool.timeout(LIMIT).chunksize(1).map(nap_then_pid, [0, 60_000, 60_000]);
    assert_eq!(r.unwrap_err().kind(), ErrorKind::Timeout);
    assert_on_time(started, "map with a timeout");
    // The pool goes on with fresh workers.
    let r = pool.timeout(STARTUP).map(nap_then_pid, [1, 1]).unwrap();
    assert_eq!(r.len(), 2);
}

#[test]
fn thread_pool_calls_with_a_timeout_return_in_time_though_threads_run_on() {
    let pool = ThreadPool::new(1).unwrap();
    let started = Instant::now();
    let err =
        pool.timeout(LIMIT).apply(|ms: u64| std::thread::sleep(Duration::from_millis(ms)), 1500);
    assert_eq!(err.unwrap_err().kind(), ErrorKind::Timeout);
    assert_on_time(started, "a thread pool's apply with a timeout");
    // The thread finishes its task, then serves the next one.
    assert_eq!(pool.timeout(STARTUP).apply(|x: u32| x + 1, 1).unwrap(), 2);
}

#[test]
fn imap_with_a_timeout_yields_what_came_in_time_then_one_timeout() {
    let pool = ThreadPool::new(2).unwrap();
    let started = Instant::now();
    let got: Vec<_> = pool
        .timeout(LIMIT)
        .imap(
            |ms: u64| {
                std::thread::sleep(Duration::from_millis(ms));
                ms
            },
            [0, 0, 1500, 0],
        )
        .collect();
    assert_on_time(started, "imap with a timeout");
    assert_eq!(got.len(), 3, "{got:?}");
    assert_eq!(*got[0].as_ref().unwrap(), 0);
    assert_eq!(*got[1].as_ref().unwrap(), 0);
    assert_eq!(got[2].as_ref().unwrap_err().kind(), ErrorKind::Timeout);
}

#[test]
fn imap_next_timeout_times_out_one_call_and_the_iteration_goes_on() {
    let pool = Pool::new(1).unwrap();
    let mut it = pool.imap(nap_then_pid, [800, 0]);
    let started = Instant::now();
    let r = it.next_timeout(Duration::from_millis(50)).expect("not the end");
    assert_eq!(r.unwrap_err().kind(), ErrorKind::Timeout);
    assert!(started.elapsed() < Duration::from_millis(800), "next_timeout waited for the task");
    let a = it.next_timeout(STARTUP).expect("the first result").unwrap();
    let b = it.next_timeout(STARTUP).expect("the second result").unwrap();
    assert_eq!(a, b, "nothing was killed");
    assert!(it.next_timeout(Duration::ZERO).is_none());
}

#[test]
fn executor_submit_with_a_timeout_kills_the_worker() {
    let ex = ProcessPoolExecutor::new(1).unwrap();
    let first = ex.submit(pid, ()).unwrap().result().unwrap();
    let started = Instant::now();
    let f = ex.timeout(LIMIT).submit(nap_then_pid, 60_000).unwrap();
    let err = f.result().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    assert_on_time(started, "submit with a timeout");
    assert!(wait_pid_gone(first, STARTUP), "the worker {first} running the late task still lives");
    assert_ne!(ex.submit(pid, ()).unwrap().result().unwrap(), first);
    let t = ThreadPoolExecutor::new(1).unwrap();
    let started = Instant::now();
    let f = t.timeout(LIMIT).submit(|ms: u64| std::thread::sleep(Duration::from_millis(ms)), 1500);
    assert_eq!(f.unwrap().result().unwrap_err().kind(), ErrorKind::Timeout);
    assert_on_time(started, "a thread executor's submit with a timeout");
}

#[test]
fn executor_map_with_a_timeout_yields_in_time_results_then_one_timeout() {
    let ex = ProcessPoolExecutor::new(2).unwrap();
    let started = Instant::now();
    let got: Vec<_> = ex.timeout(STARTUP).map(nap_then_pid, [0, 0]).collect();
    assert!(got.iter().all(Result::is_ok), "{got:?}");
    let got: Vec<_> = ex.map_timeout(nap_then_pid, [0, 60_000], LIMIT + STARTUP).collect();
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(got[0].is_ok());
    assert_eq!(got[1].as_ref().unwrap_err().kind(), ErrorKind::Timeout);
    assert!(started.elapsed() < 3 * STARTUP);
}

#[test]
fn every_timed_queue_wait_reports_timeout_and_nowait_reports_empty_or_full() {
    let q = Queue::<u32>::bounded(1).unwrap();
    assert_eq!(q.get_nowait().unwrap_err().kind(), ErrorKind::Empty);
    let started = Instant::now();
    let err = q.get_timeout(Duration::from_millis(50)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout);
    assert!(err.is_timeout());
    assert!(started.elapsed() >= Duration::from_millis(50));
    q.put(1).unwrap();
    assert!(matches!(q.put_nowait(2), Err(PutError::Full(2))));
    let err = q.put_timeout(3, Duration::from_millis(50)).unwrap_err();
    assert!(matches!(err, PutError::Timeout(3)), "{err:?}");
    assert_eq!(err.into_error().kind(), ErrorKind::Timeout);
    // iter_timeout ends at its first timeout.
    assert_eq!(
        q.iter_timeout(Duration::from_millis(20)).map(Result::unwrap).collect::<Vec<_>>(),
        [1]
    );
}
