//! `Pool::apply` runs its task on the caller's thread when a worker is idle
//! (the slot lends the worker to the caller, see `engine/procs/lend.rs`):
//! every way a task can go wrong there must end as it does on the pool's own
//! threads, and nothing may hang.

use std::sync::Arc;
use std::time::{Duration, Instant};

use multiproc::{ErrorKind, Pool};

use crate::hostile_worker::{assert_protocol_error, header, write_garbage, write_then_sleep};
use crate::support::{
    assert_faster, bounded, no_core_dump, send_signal, sqr, wait_pid_gone, PROMPT, STARTUP,
};

const DONE: u8 = 13;

fn pid(_: ()) -> u32 {
    std::process::id()
}

fn die(code: i32) -> u32 {
    std::process::exit(code)
}

fn segfault(_: ()) -> u32 {
    no_core_dump();
    // SAFETY: raising a signal touches no memory; this worker is meant to die.
    unsafe { libc::raise(libc::SIGSEGV) };
    0
}

fn boom(x: u32) -> u32 {
    panic!("boom {x}")
}

fn sleep_ms(ms: u64) -> u32 {
    std::thread::sleep(Duration::from_millis(ms));
    std::process::id()
}

/// A pool of `n` whose workers are all started and idle.
fn warm(n: usize) -> Arc<Pool> {
    let pool = Pool::new(n).unwrap();
    let _ = pool.chunksize(1).map(sleep_ms, vec![20; n]).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    Arc::new(pool)
}

#[test]
fn apply_round_trips_in_order_beside_async_tasks() {
    if !crate::support::alone() {
        return;
    }
    let pool = warm(2);
    for i in 0..500u64 {
        assert_eq!(pool.apply(|x: u64| x * 3, i).unwrap(), i * 3);
    }
    let pending: Vec<_> = (0..50u64).map(|i| pool.apply_async(|x: u64| x + 1, i)).collect();
    for i in 0..50u64 {
        assert_eq!(pool.apply(|x: u64| x * 3, i).unwrap(), i * 3);
    }
    for (i, r) in pending.into_iter().enumerate() {
        assert_eq!(r.get_timeout(STARTUP).unwrap(), i as u64 + 1);
    }
}

#[test]
fn apply_from_many_threads_at_once_gets_each_its_own_result() {
    if !crate::support::alone() {
        return;
    }
    let pool = warm(2);
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let pool = pool.clone();
            std::thread::spawn(move || {
                for i in 0..200u64 {
                    let x = t * 1000 + i;
                    assert_eq!(pool.apply(|x: u64| x * 3, x).unwrap(), x * 3);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn a_worker_that_dies_in_apply_fails_that_call_and_is_replaced() {
    if !crate::support::alone() {
        return;
    }
    let pool = warm(1);
    let first = pool.apply(pid, ()).unwrap();
    let p = pool.clone();
    let err = bounded(STARTUP, "apply of a dying task", move || p.apply(die, 7)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::WorkerDied, "{err}");
    assert_eq!(err.pid(), Some(first), "{err}");
    assert!(err.message().contains("code 7"), "{err}");
    let second = pool.apply(pid, ()).unwrap();
    assert_ne!(second, first);
    let err = pool.apply(segfault, ()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::WorkerDied, "{err}");
    assert!(err.message().contains("SIGSEGV"), "{err}");
    assert!(wait_pid_gone(second, PROMPT));
    assert_eq!(pool.apply(sqr, 9).unwrap(), 81);
}

#[test]
fn a_panic_in_apply_fails_the_call_and_the_worker_stays() {
    if !crate::support::alone() {
        return;
    }
    let pool = warm(1);
    let before = pool.apply(pid, ()).unwrap();
    let err = pool.apply(boom, 3).unwrap_err();
    assert!(err.is_panic(), "{err:?}");
    assert!(err.message().contains("boom 3"), "{err}");
    assert_eq!(pool.apply(pid, ()).unwrap(), before);
}

#[test]
fn an_idle_worker_killed_from_outside_is_replaced_before_the_next_apply() {
    if !crate::support::alone() {
        return;
    }
    let pool = warm(1);
    let victim = pool.apply(pid, ()).unwrap();
    send_signal(victim, libc::SIGKILL);
    assert!(wait_pid_gone(victim, PROMPT));
    // The slot notices the death while the worker is offered; the next call
    // runs on the replacement (or, had it raced the kill, fails alone).
    let started = Instant::now();
    let next = loop {
        match pool.apply(pid, ()) {
            Ok(p) => break p,
            Err(e) => assert_eq!(e.kind(), ErrorKind::WorkerDied, "{e}"),
        }
        assert!(started.elapsed() < STARTUP, "no replacement for {victim}");
    };
    assert_ne!(next, victim);
}

#[test]
fn task_timeout_applies_to_apply_too() {
    if !crate::support::alone() {
        return;
    }
    let limit = Duration::from_millis(400);
    let pool = Arc::new(Pool::builder().processes(1).task_timeout(limit).build().unwrap());
    let first = pool.apply(sleep_ms, 10).unwrap();
    let started = Instant::now();
    let p = pool.clone();
    let err =
        bounded(STARTUP, "apply past its timeout", move || p.apply(sleep_ms, 60_000)).unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    assert!(started.elapsed() >= limit);
    assert_faster(started.elapsed(), limit + PROMPT, "the timeout of apply");
    assert_eq!(err.pid(), Some(first));
    assert!(wait_pid_gone(first, PROMPT), "timed-out worker {first} still runs");
    assert_ne!(pool.apply(pid, ()).unwrap(), first);
}

#[test]
fn terminate_ends_an_apply_in_progress_on_another_thread() {
    if !crate::support::alone() {
        return;
    }
    let pool = warm(1);
    let worker = pool.apply(pid, ()).unwrap();
    let p = pool.clone();
    let call = std::thread::spawn(move || p.apply(sleep_ms, 60_000));
    std::thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    pool.terminate();
    let err =
        bounded(PROMPT * 2, "apply after terminate", move || call.join().unwrap()).unwrap_err();
    assert_faster(started.elapsed(), PROMPT, "terminate during apply");
    assert_eq!(err.kind(), ErrorKind::Cancelled, "{err}");
    assert!(wait_pid_gone(worker, PROMPT), "worker {worker} outlived terminate");
    bounded(PROMPT, "join after terminate", move || pool.join()).unwrap();
}

#[test]
fn a_hostile_worker_in_apply_fails_only_that_call() {
    if !crate::support::alone() {
        return;
    }
    let pool = warm(1);
    for seed in 0..20 {
        let p = pool.clone();
        let err = bounded(STARTUP, "apply of garbage", move || p.apply(write_garbage, seed))
            .expect_err("garbage passed for a result");
        assert_eq!(err.kind(), ErrorKind::Protocol, "trial {seed}: {err:?}");
    }
    let liar = pool.apply(pid, ()).unwrap();
    let started = Instant::now();
    let err = pool.apply(write_then_sleep, (header(u32::MAX, DONE, 0), Vec::new())).unwrap_err();
    assert_faster(started.elapsed(), PROMPT, "refusing a 4 GiB header in apply");
    assert_protocol_error(&err, liar, "4294967295 bytes");
    let liar = pool.apply(pid, ()).unwrap();
    let body = u64::MAX.to_le_bytes().to_vec();
    let err = pool.apply(write_then_sleep, (header(1000, DONE, 0), body)).unwrap_err();
    assert_faster(started.elapsed(), PROMPT * 2, "refusing another task's result in apply");
    assert_protocol_error(&err, liar, &format!("a result for task {}", u64::MAX));
    assert_eq!(pool.apply(sqr, 7).unwrap(), 49);
}

#[test]
fn an_idle_worker_killed_from_outside_is_replaced_without_any_call() {
    if !crate::support::alone() {
        return;
    }
    let pool = warm(1);
    let victim = pool.apply(pid, ()).unwrap();
    send_signal(victim, libc::SIGKILL);
    // The slot sees the death while the worker is offered and starts a
    // replacement on its own (it used to re-offer the dead worker in a loop).
    let replaced = crate::support::eventually(STARTUP, || {
        multiproc::active_children().iter().any(|c| c.pid != victim)
    });
    assert!(replaced, "no replacement for idle worker {victim} without a call");
    assert!(wait_pid_gone(victim, PROMPT), "dead worker {victim} was never reaped");
    assert_ne!(pool.apply(pid, ()).unwrap(), victim);
}
