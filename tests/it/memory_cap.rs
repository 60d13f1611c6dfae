//! Memory caps: a soft cap on a worker's resident set after a task, and a
//! hard cap on its address space that turns a runaway allocation into
//! `ErrorKind::MemoryLimit`, on real allocations.

use std::time::{Duration, Instant};

use multiproc::{ErrorKind, Pool, ProcessPoolExecutor, RestartReason};

use crate::support::{bounded, no_core_dump, STARTUP};

const LIMIT: u64 = 512 << 20;

/// Allocates without bound (address space only: the pages are never
/// touched, so the machine's memory is not used up).
fn runaway(_: ()) -> usize {
    let mut kept: Vec<Vec<u8>> = Vec::new();
    loop {
        kept.push(Vec::with_capacity(32 << 20));
        std::hint::black_box(&kept);
    }
}

/// Keeps `mb` MiB resident in the worker (touched, and never freed).
fn grow(mb: usize) -> usize {
    let v = vec![1u8; mb << 20];
    let sum = v.iter().step_by(4096).map(|&b| b as usize).sum();
    std::mem::forget(v);
    sum
}

fn pid(_: ()) -> u32 {
    std::process::id()
}

#[test]
fn a_runaway_task_fails_with_memory_limit_and_the_pool_goes_on() {
    bounded(STARTUP, "hard memory cap", || {
        let pool = Pool::builder().processes(1).memory_limit(LIMIT).build().unwrap();
        let first = pool.apply(pid, ()).unwrap();
        let started = Instant::now();
        let err = pool.apply_async(runaway, ()).get_timeout(STARTUP).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::MemoryLimit, "{err}");
        assert!(err.to_string().contains(&LIMIT.to_string()), "names the cap: {err}");
        assert_eq!(err.pid(), Some(first), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
        // Replaced; the pool goes on, and so does the cap.
        let second = pool.apply(pid, ()).unwrap();
        assert_ne!(first, second);
        assert_eq!(pool.apply(grow, 16).unwrap(), 16 * 256);
        let err = pool.apply(runaway, ()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::MemoryLimit, "{err}");
        // Counted once the pool's thread has reaped the worker.
        let until = Instant::now() + STARTUP;
        let mut s = pool.stats();
        while s.total().restarts.memory_limit < 2 && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(5));
            s = pool.stats();
        }
        assert_eq!(s.total().restarts.memory_limit, 2, "{s}");
        assert_eq!(
            s.workers[0].restarts.recent.last(),
            Some(&RestartReason::MemoryLimit { limit: LIMIT }),
            "{s}"
        );
    });
}

#[test]
fn an_abort_that_is_not_an_allocation_failure_stays_a_crash() {
    fn abort(_: ()) -> u32 {
        no_core_dump();
        std::process::abort()
    }
    bounded(STARTUP, "abort under a cap", || {
        let pool = Pool::builder().processes(1).memory_limit(LIMIT).build().unwrap();
        let err = pool.apply(abort, ()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::WorkerDied, "{err}");
        assert_eq!(err.signal(), Some(libc::SIGABRT), "{err}");
        assert!(pool.apply(pid, ()).unwrap() > 0);
    });
}

#[test]
fn a_worker_over_the_soft_cap_is_replaced_after_its_task_which_is_delivered() {
    bounded(STARTUP, "soft memory cap", || {
        let pool = Pool::builder().processes(1).max_memory_per_child(200 << 20).build().unwrap();
        let first = pool.apply(pid, ()).unwrap();
        // Under the cap: the worker stays.
        assert_eq!(pool.apply(grow, 20).unwrap(), 20 * 256);
        assert_eq!(pool.apply(pid, ()).unwrap(), first);
        // Over it: the result comes back, then the worker is replaced.
        assert_eq!(pool.apply(grow, 250).unwrap(), 250 * 256);
        let second = pool.apply(pid, ()).unwrap();
        assert_ne!(first, second);
        let s = pool.stats();
        let w = &s.workers[0];
        assert_eq!(w.restarts.memory_cap, 1, "{s}");
        match w.restarts.recent.last() {
            Some(&RestartReason::MemoryCap { rss, cap }) => {
                assert_eq!(cap, 200 << 20);
                assert!(rss > cap, "{s}");
            }
            other => panic!("last restart {other:?}: {s}"),
        }
        assert!(s.to_string().contains("memory cap"), "{s}");
    });
}

#[test]
fn the_executor_builder_has_the_same_caps() {
    bounded(STARTUP, "executor memory caps", || {
        let ex = ProcessPoolExecutor::builder().max_workers(1).memory_limit(LIMIT).build().unwrap();
        let err = ex.submit(runaway, ()).unwrap().result_timeout(STARTUP).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::MemoryLimit, "{err}");
        assert_eq!(ex.submit(grow, 1).unwrap().result_timeout(STARTUP).unwrap(), 256);
    });
}

#[test]
fn caps_out_of_range_are_refused() {
    let err = Pool::builder().max_memory_per_child(0).build().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    let err = Pool::builder().memory_limit(1 << 20).build().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    assert!(err.to_string().contains("memory_limit"), "{err}");
    let err = ProcessPoolExecutor::builder().memory_limit(1 << 20).build().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
}
