//! Everything that can go wrong in a process pool, done for real: panics,
//! workers killed by signals, exits and crashes, values that fail to
//! (de)serialize, failing initializers, timeouts, termination, a mismatched
//! build, huge values, and a parent killed under its workers.

use std::time::{Duration, Instant};

use multiproc::{ErrorKind, Pool, Process};
use serde::de::{self, Deserializer};
use serde::ser::{self, Serializer};
use serde::{Deserialize, Serialize};

use crate::support::{
    announce_and_wait, announce_then_sleep, append_line, assert_faster, bounded, eventually,
    getpid, no_core_dump, pid_exists, read_lines, send_beacon, send_signal, sqr, wait_at_gate,
    wait_pid_gone, Beacon, Gate, TempDir, PROMPT, STARTUP,
};

fn exit_with(code: i32) -> u32 {
    std::process::exit(code)
}

fn abort_now(_: ()) -> u32 {
    no_core_dump();
    std::process::abort()
}

fn segfault_now(_: ()) -> u32 {
    no_core_dump();
    // An unmapped address (the first page is never mapped): a real fault.
    let bad = 16usize as *mut u32;
    // SAFETY: deliberately unsound: the write faults and this process dies of
    // SIGSEGV, which is what the task is for.
    unsafe { std::ptr::write_volatile(bad, 1) };
    0
}

/// Panics with a message that names the line it panics on.
fn panics_with_line(_: ()) -> u32 {
    panic!("deliberate panic on line {}", line!())
}

/// `x` and the pid that computed it; a negative `x` exits with code `-x`.
fn echo_or_exit(x: i32) -> (i32, u32) {
    if x < 0 {
        std::process::exit(-x);
    }
    (x, std::process::id())
}

fn sleep_then_pid(ms: u64) -> u32 {
    std::thread::sleep(Duration::from_millis(ms));
    std::process::id()
}

/// Logs `id`, sleeps `ms`, returns the pid.
fn logged_sleep_then_pid(id: u32, ms: u64, log: String) -> u32 {
    append_line(&log, &id.to_string());
    sleep_then_pid(ms)
}

/// Waits at the gate, then returns the pid.
fn gated_pid(gate: String) -> u32 {
    wait_at_gate(&gate);
    std::process::id()
}

/// A pool of one warmed-up worker, and that worker's pid.
fn one_worker() -> (Pool, u32) {
    let pool = Pool::new(1).unwrap();
    let pid = pool.apply(getpid, ()).unwrap();
    (pool, pid)
}

#[test]
fn task_panic_fails_only_its_task_and_the_worker_runs_the_next() {
    let (pool, pid) = one_worker();
    let err = pool.apply(panics_with_line, ()).unwrap_err();
    assert!(err.is_panic(), "{err:?}");
    assert_eq!(err.kind(), ErrorKind::TaskPanicked);
    let message = err.panic_message().unwrap();
    let line: u32 = message
        .strip_prefix("deliberate panic on line ")
        .and_then(|l| l.parse().ok())
        .unwrap_or_else(|| panic!("unexpected panic message {message:?}"));
    let location = err.location().expect("a panic location");
    assert!(
        location.starts_with(&format!("{}:{line}:", file!())),
        "location {location:?}, expected {}:{line}:<column>",
        file!()
    );
    assert_eq!(err.pid(), Some(pid));
    assert!(err.message().contains(message), "{err}");
    assert!(err.message().contains(&pid.to_string()), "{err}");
    assert_eq!(pool.apply(getpid, ()).unwrap(), pid, "the worker survives a panic");
}

#[test]
fn worker_killed_mid_task_fails_only_its_task() {
    let pool = Pool::new(1).unwrap();
    let beacon = Beacon::new();
    let r = pool.apply_async(announce_then_sleep, beacon.path());
    let pid = beacon.recv_pid(STARTUP, "the task's start");
    let t = Instant::now();
    send_signal(pid, libc::SIGKILL);
    let err = r.get_timeout(PROMPT).unwrap_err();
    assert_faster(t.elapsed(), PROMPT, "reporting a killed worker");
    assert!(err.is_worker_died(), "{err:?}");
    assert_eq!(err.pid(), Some(pid));
    assert_eq!(err.signal(), Some(libc::SIGKILL));
    assert_eq!(err.exit_code(), None);
    assert!(err.message().contains("SIGKILL"), "{err}");
    assert!(err.message().contains(&pid.to_string()), "{err}");
    let next = pool.apply(getpid, ()).unwrap();
    assert_ne!(next, pid, "a replacement worker runs the next task");
    assert!(eventually(PROMPT, || !pid_exists(pid)), "dead worker {pid} was not reaped");
}

#[test]
fn worker_exit_mid_task_fails_only_its_task() {
    let (pool, pid) = one_worker();
    let t = Instant::now();
    let err = pool.apply_async(exit_with, 3).get_timeout(PROMPT).unwrap_err();
    assert_faster(t.elapsed(), PROMPT, "reporting an exited worker");
    assert!(err.is_worker_died(), "{err:?}");
    assert_eq!(err.pid(), Some(pid));
    assert_eq!(err.exit_code(), Some(3));
    assert_eq!(err.signal(), None);
    assert!(err.message().contains("exited with code 3"), "{err}");
    assert!(err.message().contains(&pid.to_string()), "{err}");
    let next = pool.apply(getpid, ()).unwrap();
    assert_ne!(next, pid);
}

#[test]
fn worker_abort_fails_only_its_task() {
    let (pool, pid) = one_worker();
    let t = Instant::now();
    let err = pool.apply_async(abort_now, ()).get_timeout(PROMPT).unwrap_err();
    assert_faster(t.elapsed(), PROMPT, "reporting an aborted worker");
    assert!(err.is_worker_died(), "{err:?}");
    assert_eq!(err.pid(), Some(pid));
    assert_eq!(err.signal(), Some(libc::SIGABRT));
    assert!(err.message().contains("SIGABRT"), "{err}");
    assert!(err.message().contains(&pid.to_string()), "{err}");
    assert_ne!(pool.apply(getpid, ()).unwrap(), pid);
}

#[test]
fn worker_segfault_fails_only_its_task() {
    let (pool, pid) = one_worker();
    let t = Instant::now();
    let err = pool.apply_async(segfault_now, ()).get_timeout(PROMPT).unwrap_err();
    assert_faster(t.elapsed(), PROMPT, "reporting a crashed worker");
    assert!(err.is_worker_died(), "{err:?}");
    assert_eq!(err.pid(), Some(pid));
    assert_eq!(err.signal(), Some(libc::SIGSEGV));
    assert!(err.message().contains("SIGSEGV"), "{err}");
    assert!(err.message().contains(&pid.to_string()), "{err}");
    assert_ne!(pool.apply(getpid, ()).unwrap(), pid);
}

/// Logs `x`, then returns it with the pid that ran it; a negative `x` exits
/// with code `-x` instead.
fn logged_echo_or_exit(x: i32, log: String) -> (i32, u32) {
    append_line(&log, &x.to_string());
    echo_or_exit(x)
}

fn panics_with_a_number(_: ()) -> u32 {
    std::panic::panic_any(42u32)
}

#[test]
fn task_panic_with_a_non_string_payload_fails_only_its_task() {
    let (pool, pid) = one_worker();
    let err = pool.apply(panics_with_a_number, ()).unwrap_err();
    assert!(err.is_panic(), "{err:?}");
    assert!(err.panic_message().is_some());
    assert!(err.location().is_some_and(|l| l.starts_with(file!())), "{err:?}");
    assert_eq!(pool.apply(getpid, ()).unwrap(), pid);
}

/// Recurses without end; `black_box` keeps the frames real.
fn overflow_the_stack(depth: u64) -> u64 {
    if depth == u64::MAX {
        return 0; // never reached: the stack runs out long before
    }
    let frame = std::hint::black_box([depth; 64]);
    overflow_the_stack(depth + 1) + frame[depth as usize % 64]
}

fn stack_overflow_now(_: ()) -> u64 {
    no_core_dump();
    overflow_the_stack(0)
}

#[test]
fn worker_stack_overflow_fails_only_its_task() {
    let (pool, pid) = one_worker();
    let err = pool.apply_async(stack_overflow_now, ()).get_timeout(STARTUP).unwrap_err();
    assert!(err.is_worker_died(), "{err:?}");
    assert_eq!(err.pid(), Some(pid));
    // SIGSEGV from the guard page, or SIGABRT where std's overflow handler
    // reports it first.
    assert!(matches!(err.signal(), Some(libc::SIGSEGV | libc::SIGABRT)), "{err:?}");
    assert_ne!(pool.apply(getpid, ()).unwrap(), pid);
}

#[test]
fn tasks_queued_behind_a_crashed_task_still_succeed() {
    let (pool, first) = one_worker();
    // Fast tasks first: the worker is then handed many tasks at a time, so
    // the tasks around the crashing one sit with the same worker when it dies.
    assert_eq!(pool.map(sqr, 0..500).unwrap().len(), 500);
    let dir = TempDir::new();
    let log = dir.file("ran.log");
    let inputs = [1, 2, -3, 4, 5, 6, 7, 8, 9, 10];
    let results: Vec<_> =
        inputs.iter().map(|&x| pool.apply_async(logged_echo_or_exit, (x, log.clone()))).collect();
    let outcomes: Vec<_> = results.into_iter().map(|r| r.get_timeout(STARTUP)).collect();
    for (x, outcome) in inputs.iter().zip(&outcomes) {
        match (x, outcome) {
            (-3, Err(e)) => {
                assert!(e.is_worker_died(), "{e:?}");
                assert_eq!(e.exit_code(), Some(3));
                assert_eq!(e.pid(), Some(first));
            }
            (-3, Ok(v)) => panic!("the crashing task returned {v:?}"),
            (_, Ok((y, _))) => assert_eq!(y, x),
            (_, Err(e)) => panic!("task {x} failed, but only task -3 crashed: {e:?}"),
        }
    }
    // Every task ran exactly once: none was lost with the worker, none that
    // had finished was run again.
    let mut ran = read_lines(&log);
    ran.sort();
    let mut want: Vec<String> = inputs.iter().map(|x| x.to_string()).collect();
    want.sort();
    assert_eq!(ran, want, "tasks that ran, by input");
    // What ran after the crash ran on a replacement.
    for (x, outcome) in inputs.iter().zip(&outcomes) {
        if let (4.., Ok((_, pid))) = (x, outcome) {
            assert_ne!(*pid, first, "task {x} ran on the dead worker?");
        }
    }
}

#[test]
fn finished_results_are_not_held_back_by_a_slow_task_behind_them() {
    let (pool, _) = one_worker();
    // Fast tasks first, so the worker is handed several tasks at a time.
    assert_eq!(pool.map(sqr, 0..500).unwrap().len(), 500);
    let mut gate = Gate::new();
    // Many fast tasks, so the slow one is usually sent before the worker
    // reaches the end of them.
    let fast: Vec<_> = (0..200).map(|i| pool.apply_async(sqr, i)).collect();
    let slow = pool.apply_async(gated_pid, gate.path());
    // The fast tasks finished long before the gate opens: their results must
    // not wait for the slow task that follows them on the same worker.
    for (i, r) in fast.into_iter().enumerate() {
        let got = r.get_timeout(PROMPT);
        assert_eq!(got.ok(), Some(sqr(i as u64)), "fast task {i} held back");
    }
    assert!(!slow.ready());
    gate.open();
    slow.get_timeout(STARTUP).unwrap();
}

#[test]
fn task_timeout_fails_only_the_slow_task_not_the_ones_before_it() {
    let limit = Duration::from_millis(500);
    let pool = Pool::builder().processes(1).task_timeout(limit).build().unwrap();
    assert_eq!(pool.map(sqr, 0..500).unwrap().len(), 500);
    let dir = TempDir::new();
    let log = dir.file("ran.log");
    let fast: Vec<_> =
        (1..=5).map(|i| pool.apply_async(logged_sleep_then_pid, (i, 0, log.clone()))).collect();
    let slow = pool.apply_async(logged_sleep_then_pid, (99, 60_000, log.clone()));
    for (i, r) in fast.into_iter().enumerate() {
        if let Err(e) = r.get_timeout(STARTUP) {
            panic!("fast task {} failed: {e:?}", i + 1);
        }
    }
    let err = slow.get_timeout(STARTUP).unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    let mut ran = read_lines(&log);
    ran.sort();
    assert_eq!(ran, ["1", "2", "3", "4", "5", "99"], "tasks that ran, by id");
}

#[test]
fn terminate_unblocks_a_caller_waiting_in_map() {
    let pool = std::sync::Arc::new(Pool::new(2).unwrap());
    let beacon = Beacon::new();
    let mut gate = Gate::new();
    let inputs: Vec<(String, String)> = vec![(beacon.path(), gate.path()); 6];
    let p = pool.clone();
    let waiting = std::thread::spawn(move || p.chunksize(1).map(announce_and_wait, inputs));
    // Both workers are inside the map's tasks: the caller is blocked in map.
    beacon.recv_pid(STARTUP, "a map task's start");
    beacon.recv_pid(STARTUP, "a map task's start");
    let t = Instant::now();
    pool.terminate();
    let outcome = bounded(PROMPT, "a map interrupted by terminate", move || waiting.join());
    let err = outcome.expect("the map caller did not panic").unwrap_err();
    assert!(err.is_cancelled(), "{err:?}");
    assert_faster(t.elapsed(), PROMPT, "terminate reaching a blocked map");
    gate.open();
}

#[test]
fn idle_worker_killed_is_replaced_without_failing_anything() {
    let (pool, pid) = one_worker();
    send_signal(pid, libc::SIGKILL);
    assert!(wait_pid_gone(pid, PROMPT));
    let results: Vec<_> = (0..5).map(|i| pool.apply_async(sqr, i)).collect();
    for (i, r) in results.into_iter().enumerate() {
        assert_eq!(r.get_timeout(STARTUP).unwrap(), sqr(i as u64));
    }
    assert_ne!(pool.apply(getpid, ()).unwrap(), pid);
}

#[test]
fn crash_in_map_fails_the_map_and_crash_in_imap_fails_only_its_item() {
    let pool = Pool::new(2).unwrap();
    let err = pool.chunksize(1).map(echo_or_exit, vec![1, 2, -4, 5]).unwrap_err();
    assert!(err.is_worker_died(), "{err:?}");
    assert_eq!(err.exit_code(), Some(4));
    // Enough items around the crashing one that its worker holds several.
    let inputs: Vec<i32> = (0..200).map(|i| if i == 100 { -5 } else { i }).collect();
    let out: Vec<_> = pool.imap(echo_or_exit, inputs.clone()).collect();
    assert_eq!(out.len(), 200);
    for (x, r) in inputs.iter().zip(&out) {
        match (x, r) {
            (-5, Err(e)) => assert_eq!(e.exit_code(), Some(5), "{e:?}"),
            (-5, Ok(v)) => panic!("the crashing item returned {v:?}"),
            (_, Ok((y, _))) => assert_eq!(y, x),
            (_, Err(e)) => panic!("item {x} failed, but only item -5 crashed: {e:?}"),
        }
    }
    assert_eq!(pool.map(sqr, 0..4).unwrap(), vec![0, 1, 4, 9]);
}

// --- values that do not cross -------------------------------------------------

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
        u32::deserialize(d)?;
        Err(de::Error::custom("NoDeserialize refuses to be deserialized"))
    }
}

fn take_no_serialize(_: NoSerialize) -> u32 {
    std::process::id()
}

fn take_no_deserialize(_: NoDeserialize) -> u32 {
    std::process::id()
}

fn make_no_serialize(x: u32) -> NoSerialize {
    NoSerialize(x)
}

fn make_no_deserialize(x: u32) -> NoDeserialize {
    NoDeserialize(x)
}

/// Asserts `err` is a (de)serialization failure of `kind` whose message says
/// which type, which value and where.
#[track_caller]
fn assert_codec_error(err: &multiproc::Error, kind: ErrorKind, ty: &str, words: &[&str]) {
    assert_eq!(err.kind(), kind, "{err:?}");
    assert!(err.is_serialization());
    let msg = err.message();
    assert!(msg.contains(ty), "message does not name type {ty}: {msg}");
    for w in words {
        assert!(msg.contains(w), "message does not say {w:?}: {msg}");
    }
}

#[test]
fn argument_that_fails_to_serialize_fails_only_its_task() {
    let (pool, pid) = one_worker();
    let err = pool.apply(take_no_serialize, NoSerialize(1)).unwrap_err();
    assert_codec_error(&err, ErrorKind::Serialize, "NoSerialize", &["argument", "in the parent"]);
    assert_eq!(pool.apply(getpid, ()).unwrap(), pid, "no worker was harmed");
    // In a map it fails the map; in an imap only its item.
    let err = pool.map(take_no_serialize, vec![NoSerialize(1), NoSerialize(2)]).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Serialize);
    let out: Vec<_> = pool.imap(take_no_serialize, vec![NoSerialize(1)]).collect();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].as_ref().unwrap_err().kind(), ErrorKind::Serialize);
    assert_eq!(pool.apply(sqr, 4).unwrap(), 16);
}

#[test]
fn argument_that_fails_to_deserialize_in_the_worker_fails_only_its_task() {
    let (pool, pid) = one_worker();
    let err = pool.apply(take_no_deserialize, NoDeserialize(1)).unwrap_err();
    assert_codec_error(&err, ErrorKind::Deserialize, "NoDeserialize", &["argument", "worker"]);
    assert_eq!(err.pid(), Some(pid));
    assert_eq!(pool.apply(getpid, ()).unwrap(), pid);
}

#[test]
fn result_that_fails_to_serialize_in_the_worker_fails_only_its_task() {
    let (pool, pid) = one_worker();
    let err = pool.apply(make_no_serialize, 7).unwrap_err();
    assert_codec_error(&err, ErrorKind::Serialize, "NoSerialize", &["result", "worker"]);
    assert_eq!(err.pid(), Some(pid));
    assert_eq!(pool.apply(getpid, ()).unwrap(), pid);
}

#[test]
fn result_that_fails_to_deserialize_in_the_parent_fails_only_its_task() {
    let (pool, pid) = one_worker();
    let err = pool.apply(make_no_deserialize, 7).unwrap_err();
    assert_codec_error(&err, ErrorKind::Deserialize, "NoDeserialize", &["result", "in the parent"]);
    assert_eq!(pool.apply(getpid, ()).unwrap(), pid);
    // imap: only that item fails.
    let out: Vec<_> = pool.imap(make_no_deserialize, vec![1, 2]).collect();
    assert!(out.iter().all(|r| r.as_ref().unwrap_err().kind() == ErrorKind::Deserialize));
    let out: Vec<_> = pool.imap(sqr, vec![1, 2]).map(Result::unwrap).collect();
    assert_eq!(out, vec![1, 4]);
}

// --- initializers -----------------------------------------------------------

fn init_that_panics(log: String) {
    append_line(&log, &std::process::id().to_string());
    panic!("the initializer failed on purpose");
}

fn init_that_exits(log: String) {
    append_line(&log, &std::process::id().to_string());
    std::process::exit(7);
}

#[test]
fn initializer_that_panics_fails_tasks_promptly_and_is_not_retried() {
    let dir = TempDir::new();
    let log = dir.file("init.log");
    let t = Instant::now();
    let pool =
        Pool::builder().processes(2).initializer(init_that_panics, log.clone()).build().unwrap();
    let err = pool.apply_async(sqr, 3).get_timeout(STARTUP).unwrap_err();
    assert_faster(t.elapsed(), STARTUP, "reporting a failed initializer");
    assert_eq!(err.kind(), ErrorKind::InitializerFailed, "{err:?}");
    assert!(err.message().contains("the initializer failed on purpose"), "{err}");
    // Later tasks fail at once with the same error.
    let t = Instant::now();
    assert_eq!(pool.apply(sqr, 3).unwrap_err().kind(), ErrorKind::InitializerFailed);
    assert_eq!(pool.map(sqr, 0..10).unwrap_err().kind(), ErrorKind::InitializerFailed);
    let first = pool.imap(sqr, 0..10).next().unwrap();
    assert_eq!(first.unwrap_err().kind(), ErrorKind::InitializerFailed);
    assert_faster(t.elapsed(), PROMPT, "refusing tasks of a broken pool");
    // join returns only once no slot can start a worker any more: the pool
    // gave up rather than respawning.
    pool.close();
    bounded(STARTUP, "join of a pool whose initializer fails", move || pool.join()).unwrap();
    let pids: Vec<u32> = read_lines(&log).iter().map(|l| l.parse().unwrap()).collect();
    assert!(
        (1..=2).contains(&pids.len()),
        "the initializer ran {} times for 2 workers",
        pids.len()
    );
    assert!(err.pid().is_some_and(|p| pids.contains(&p)), "{err:?} vs {pids:?}");
    for pid in pids {
        assert!(wait_pid_gone(pid, PROMPT), "worker {pid} still running");
    }
}

#[test]
fn initializer_that_exits_stops_the_pool_after_a_few_attempts() {
    let dir = TempDir::new();
    let log = dir.file("init.log");
    let pool =
        Pool::builder().processes(2).initializer(init_that_exits, log.clone()).build().unwrap();
    let err = pool.apply_async(sqr, 3).get_timeout(STARTUP).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InitializerFailed, "{err:?}");
    pool.close();
    bounded(STARTUP, "join of a pool whose workers die starting", move || pool.join()).unwrap();
    let runs = read_lines(&log).len();
    assert!((1..=2 * 5).contains(&runs), "the initializer ran {runs} times for 2 workers");
}

// --- time, termination ---------------------------------------------------------

#[test]
fn task_timeout_fails_the_slow_task_and_replaces_its_worker() {
    let limit = Duration::from_millis(500);
    let pool = Pool::builder().processes(2).task_timeout(limit).build().unwrap();
    // Warm up both workers so the limit does not race their start.
    let _ = pool.chunksize(1).map(sleep_then_pid, vec![50, 50]).unwrap();
    let t = Instant::now();
    let slow = pool.apply_async(sleep_then_pid, 60_000);
    let quick: Vec<_> = (0..6).map(|_| pool.apply_async(sleep_then_pid, 10)).collect();
    let err = slow.get_timeout(limit + STARTUP).unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    let elapsed = t.elapsed();
    assert!(elapsed >= limit, "timed out after {elapsed:?}, before {limit:?}");
    assert_faster(elapsed, limit + PROMPT, "the task timeout");
    let killed = err.pid().expect("the timed-out worker's pid");
    assert!(err.message().contains(&killed.to_string()), "{err}");
    for r in quick {
        r.get_timeout(STARTUP).expect("the other tasks succeed");
    }
    assert!(wait_pid_gone(killed, PROMPT), "timed-out worker {killed} still runs");
    let pids: Vec<u32> = pool.chunksize(1).map(sleep_then_pid, vec![1; 10]).unwrap();
    assert!(!pids.contains(&killed));
}

#[test]
fn terminate_resolves_every_pending_result_as_cancelled() {
    let pool = Pool::new(2).unwrap();
    let beacon = Beacon::new();
    let running: Vec<_> =
        (0..2).map(|_| pool.apply_async(announce_then_sleep, beacon.path())).collect();
    let queued: Vec<_> = (0..20).map(|i| pool.apply_async(sqr, i)).collect();
    let mapped = pool.map_async(sqr, 0..100);
    let pids =
        [beacon.recv_pid(STARTUP, "a running task"), beacon.recv_pid(STARTUP, "a running task")];
    let t = Instant::now();
    pool.terminate();
    let outcomes = running
        .iter()
        .map(|r| r.get_timeout(PROMPT).map(drop))
        .chain(queued.iter().map(|r| r.get_timeout(PROMPT).map(drop)));
    for outcome in outcomes {
        let err = outcome.unwrap_err();
        assert!(err.is_cancelled(), "{err:?}");
    }
    assert!(mapped.get_timeout(PROMPT).unwrap_err().is_cancelled());
    assert_faster(t.elapsed(), PROMPT, "cancelling every pending task");
    bounded(PROMPT, "join after terminate", move || pool.join()).unwrap();
    for pid in pids {
        // join() returns once the workers are reaped: no zombie is left.
        assert!(!pid_exists(pid), "worker {pid} survived terminate and join");
    }
}

#[test]
fn dropping_the_pool_resolves_every_pending_result_as_cancelled() {
    let pool = Pool::new(2).unwrap();
    let beacon = Beacon::new();
    let running: Vec<_> =
        (0..2).map(|_| pool.apply_async(announce_then_sleep, beacon.path())).collect();
    let queued: Vec<_> = (0..20).map(|i| pool.apply_async(sqr, i)).collect();
    beacon.recv_pid(STARTUP, "a running task");
    beacon.recv_pid(STARTUP, "a running task");
    let t = Instant::now();
    bounded(PROMPT, "dropping a busy pool", move || drop(pool));
    let outcomes = running
        .iter()
        .map(|r| r.get_timeout(Duration::ZERO).map(drop))
        .chain(queued.iter().map(|r| r.get_timeout(Duration::ZERO).map(drop)));
    for outcome in outcomes {
        let err = outcome.unwrap_err();
        assert!(err.is_cancelled(), "{err:?}");
    }
    assert_faster(t.elapsed(), PROMPT, "dropping a busy pool");
}

// --- build identity -------------------------------------------------------------

#[test]
fn build_mismatch_fails_tasks_without_hanging() {
    let pool = Pool::builder().processes(2).simulate_build_mismatch().build().unwrap();
    let err = pool.apply_async(sqr, 2).get_timeout(STARTUP).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::BuildMismatch, "{err:?}");
    assert!(err.message().contains("build"), "{err}");
    let t = Instant::now();
    assert_eq!(pool.map(sqr, 0..5).unwrap_err().kind(), ErrorKind::BuildMismatch);
    assert_faster(t.elapsed(), PROMPT, "refusing tasks after a mismatch");
    pool.close();
    bounded(STARTUP, "join after a build mismatch", move || pool.join()).unwrap();
}

// --- size -----------------------------------------------------------------------

fn invert(v: Vec<u8>) -> Vec<u8> {
    v.into_iter().map(|b| !b).collect()
}

#[test]
fn a_64_mib_argument_and_result_round_trip() {
    let len = 64 << 20;
    let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
    let pool = Pool::new(1).unwrap();
    let out = bounded(Duration::from_secs(30), "a 64 MiB round trip", move || {
        pool.apply(invert, data).unwrap()
    });
    assert_eq!(out.len(), len);
    assert!(out.iter().enumerate().all(|(i, &b)| b == !((i % 251) as u8)));
}

// --- orphans ------------------------------------------------------------------

/// Body of a child process: starts a pool of two workers, has each report
/// its pid to `beacon` and sleep, and waits for them forever.
fn pool_parent(beacon: String) {
    let pool = Pool::new(2).unwrap();
    let a = pool.apply_async(announce_then_sleep, beacon.clone());
    let b = pool.apply_async(announce_then_sleep, beacon.clone());
    send_beacon(&beacon, &format!("parent {}", std::process::id()));
    let _ = a.get();
    let _ = b.get();
}

#[test]
fn workers_die_when_their_parent_is_killed() {
    let beacon = Beacon::new();
    let mut parent = Process::new(pool_parent, beacon.path());
    parent.set_daemon(true).unwrap();
    parent.start().unwrap();
    let parent_pid = parent.pid().unwrap();
    let mut workers = Vec::new();
    while workers.len() < 2 {
        let msg = beacon.recv(STARTUP, "a worker's pid");
        match msg.strip_prefix("parent ") {
            Some(p) => assert_eq!(p.parse::<u32>().unwrap(), parent_pid),
            None => workers.push(msg.parse::<u32>().unwrap()),
        }
    }
    assert_ne!(workers[0], workers[1]);
    for &w in &workers {
        assert!(crate::support::pid_is_running(w), "worker {w} should be running");
    }
    parent.kill().unwrap();
    assert!(parent.join_timeout(PROMPT).unwrap());
    assert_eq!(parent.exitcode(), Some(-libc::SIGKILL));
    let t = Instant::now();
    for w in workers {
        assert!(wait_pid_gone(w, PROMPT), "worker {w} outlived its killed parent");
    }
    assert_faster(t.elapsed(), PROMPT, "workers of a killed parent dying");
}

/// Exits when the buffer starts with 0xff; otherwise its length and sum.
fn sum_or_exit(buf: Vec<u8>) -> (usize, u64) {
    if buf.first() == Some(&0xff) {
        std::process::exit(3);
    }
    (buf.len(), buf.iter().map(|&b| u64::from(b)).sum())
}

#[test]
fn large_arguments_queued_behind_a_crashed_task_are_sent_again_intact() {
    // Arguments this large are sent from the job's own buffer, shared with
    // the channel's output queue: those the dead worker held, or that never
    // reached its socket, must reach the replacement unchanged.
    let (pool, first) = one_worker();
    // Fast tasks first: the worker is then handed many tasks at a time, more
    // than its socket holds, so some are still queued when it dies.
    assert_eq!(pool.map(sqr, 0..500).unwrap().len(), 500);
    let bufs: Vec<Vec<u8>> = (0..12u8)
        .map(|i| {
            let mut b: Vec<u8> = (0..(64 << 10) + usize::from(i)).map(|j| (j as u8) ^ i).collect();
            b[0] = if i == 2 { 0xff } else { i };
            b
        })
        .collect();
    let results: Vec<_> = bufs.iter().map(|b| pool.apply_async(sum_or_exit, b.clone())).collect();
    for (i, (b, r)) in bufs.iter().zip(results).enumerate() {
        match r.get_timeout(STARTUP) {
            Ok(got) => {
                assert_ne!(i, 2, "the crashing task returned {got:?}");
                assert_eq!(got, (b.len(), b.iter().map(|&x| u64::from(x)).sum()), "task {i}");
            }
            Err(e) => {
                assert_eq!(i, 2, "task {i} failed, but only task 2 crashed: {e:?}");
                assert!(e.is_worker_died(), "{e:?}");
                assert_eq!(e.pid(), Some(first));
            }
        }
    }
}
