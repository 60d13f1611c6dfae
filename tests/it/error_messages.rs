//! Error messages name what the user wrote: the function whose call timed
//! out or whose worker died (its `type_name`), never an internal task id
//! the user never saw.

use std::time::Duration;

use multiproc::{ErrorKind, Pool, ProcessPoolExecutor};

use crate::support::STARTUP;

/// Long enough to time out, short enough that a missed kill still ends.
fn sleeps_past_any_deadline(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

fn dies_without_a_word(code: i32) -> u32 {
    std::process::exit(code)
}

const NAME: &str = "sleeps_past_any_deadline";
const LIMIT: Duration = Duration::from_millis(200);

/// Asserts that `err` is a timeout whose message names the function and
/// says no internal id.
#[track_caller]
fn assert_names_the_function(err: &multiproc::Error, kind: ErrorKind, name: &str) {
    assert_eq!(err.kind(), kind, "{err}");
    let msg = err.to_string();
    assert!(msg.contains(name), "the message does not name `{name}`: {msg}");
    assert!(!msg.contains("task 1") && !msg.contains("task 0"), "an internal id: {msg}");
}

#[test]
fn a_pool_task_timeout_names_the_function() {
    let pool = Pool::builder().processes(1).task_timeout(LIMIT).build().unwrap();
    let err = pool.apply(sleeps_past_any_deadline, 60_000).unwrap_err();
    assert_names_the_function(&err, ErrorKind::Timeout, NAME);
    // The name is the whole path, as `type_name` gives it.
    assert!(err.to_string().contains("error_messages::sleeps_past_any_deadline"), "{err}");
}

#[test]
fn a_per_call_timeout_names_the_function() {
    let pool = Pool::new(1).unwrap();
    let err = pool.timeout(LIMIT).apply(sleeps_past_any_deadline, 60_000).unwrap_err();
    assert_names_the_function(&err, ErrorKind::Timeout, NAME);
    // A map through the same view, and an executor's submit.
    let err = pool.timeout(LIMIT).map(sleeps_past_any_deadline, [60_000]).unwrap_err();
    assert_names_the_function(&err, ErrorKind::Timeout, NAME);
    drop(pool);
    let ex = ProcessPoolExecutor::new(1).unwrap();
    let fut = ex.timeout(LIMIT).submit(sleeps_past_any_deadline, 60_000).unwrap();
    let err = fut.result_timeout(STARTUP).unwrap_err();
    assert_names_the_function(&err, ErrorKind::Timeout, NAME);
}

#[test]
fn a_dead_worker_names_the_function_it_was_running() {
    let pool = Pool::new(1).unwrap();
    let err = pool.apply(dies_without_a_word, 7).unwrap_err();
    assert_names_the_function(&err, ErrorKind::WorkerDied, "dies_without_a_word");
    assert!(err.to_string().contains('7'), "the exit code is missing: {err}");
    // The pool goes on with a new worker.
    assert_eq!(pool.apply(sleeps_past_any_deadline, 1).unwrap(), 1);
}
