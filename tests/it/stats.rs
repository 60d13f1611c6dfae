//! `stats()`: what each worker did, counted from real tasks, real deaths and
//! real replacements, on every face.

use std::time::{Duration, Instant};

use multiproc::{
    ErrorKind, Pool, PoolStats, ProcessPoolExecutor, RestartReason, ThreadPool, ThreadPoolExecutor,
};

use crate::support::{announce_and_wait, announce_then_sleep, bounded, Beacon, Gate, STARTUP};

fn nap(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

/// Polls `stats` until `done` holds (a replacement is counted by the pool's
/// thread just after the result it follows was delivered).
fn stats_until(stats: impl Fn() -> PoolStats, done: impl Fn(&PoolStats) -> bool) -> PoolStats {
    let until = Instant::now() + STARTUP;
    loop {
        let s = stats();
        if done(&s) || Instant::now() > until {
            return s;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_pool_counts_each_workers_tasks_and_busy_time() {
    bounded(STARTUP, "stats of a map", || {
        let pool = Pool::new(2).unwrap();
        // Both workers up first: on a loaded machine a worker that starts
        // late could find the other has run all twenty.
        stats_until(|| pool.stats(), |s| s.workers.iter().all(|w| w.pid.is_some()));
        let started = Instant::now();
        assert_eq!(pool.chunksize(1).map(nap, vec![10u64; 20]).unwrap().len(), 20);
        let wall = started.elapsed();
        let s = pool.stats();
        assert_eq!(s.workers.len(), 2);
        let total = s.total();
        assert_eq!(total.tasks, 20, "{s}");
        // 200 ms of sleeping, split between the two workers.
        assert!(total.busy >= Duration::from_millis(190), "{s}");
        assert!(total.busy <= wall * 2 + Duration::from_millis(50), "{s} in {wall:?}");
        for w in &s.workers {
            assert!(w.pid.is_some(), "{s}");
            assert!(w.tasks > 0, "every worker ran some: {s}");
            assert_eq!(w.current_task_age, None, "{s}");
        }
        assert_eq!(total.restarts.total(), 0, "{s}");
        let table = s.to_string();
        assert!(table.contains("total") && table.contains("busy"), "{table}");
        // Idle time grows while nothing runs.
        std::thread::sleep(Duration::from_millis(50));
        assert!(pool.stats().total().idle >= total.idle + Duration::from_millis(80), "{s}");
    });
}

#[test]
fn a_killed_worker_is_counted_as_a_restart_with_its_signal() {
    bounded(STARTUP, "a killed worker in stats", || {
        let pool = Pool::new(1).unwrap();
        let beacon = Beacon::new();
        let r = pool.apply_async(announce_then_sleep, beacon.path());
        let pid = beacon.recv_pid(STARTUP, "the task's pid");
        // SAFETY: kill sends a signal to a pid; it touches no memory.
        assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
        let err = r.get_timeout(STARTUP).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::WorkerDied);
        let s = stats_until(|| pool.stats(), |s| s.total().restarts.crashed == 1);
        let w = &s.workers[0];
        assert_eq!(w.restarts.crashed, 1, "{s}");
        let killed = RestartReason::Crashed { signal: Some(libc::SIGKILL), exit_code: None };
        assert_eq!(w.restarts.recent, vec![killed], "{s}");
        assert!(s.to_string().contains("crashed (SIGKILL)"), "{s}");
        // The pool goes on, with a new worker.
        assert_eq!(pool.apply(nap, 1).unwrap(), 1);
        let s = pool.stats();
        assert!(s.workers[0].pid.is_some_and(|p| p != pid), "{s}");
        assert_eq!(s.workers[0].tasks, 1, "the killed task ran to no result: {s}");
    });
}

#[test]
fn the_running_task_has_an_age() {
    bounded(STARTUP, "current task age", || {
        let pool = Pool::new(1).unwrap();
        let (beacon, mut gate) = (Beacon::new(), Gate::new());
        let r = pool.apply_async(announce_and_wait, (beacon.path(), gate.path()));
        beacon.recv_pid(STARTUP, "the task's start");
        std::thread::sleep(Duration::from_millis(60));
        let s = pool.stats();
        let age = s.workers[0].current_task_age.expect("a task runs");
        assert!(age >= Duration::from_millis(50), "{s}");
        assert!(s.workers[0].busy.is_zero(), "busy counts finished tasks: {s}");
        gate.open();
        r.get_timeout(STARTUP).unwrap();
        assert_eq!(pool.stats().workers[0].current_task_age, None);
    });
}

fn die(_: u32) {
    std::process::abort()
}

/// A worker's death is counted before the task it ran fails: the caller
/// that sees the error sees the restart at once (it was counted just after,
/// so a look straight after the error sometimes missed it). The caller
/// watches without sleeping, so it looks within the pool thread's window.
#[test]
fn a_restart_is_counted_before_the_task_it_ended_fails() {
    bounded(STARTUP * 4, "restart counted before the failure", || {
        let pool = Pool::new(1).unwrap();
        for i in 1..=20 {
            let r = pool.apply_async(die, 0);
            while !r.ready() {
                std::hint::spin_loop();
            }
            let s = pool.stats();
            let err = r.get().unwrap_err();
            assert_eq!(err.kind(), ErrorKind::WorkerDied, "{err}");
            assert_eq!(s.total().restarts.crashed, i, "after death {i}: {s}");
        }
    });
}

#[test]
fn quota_and_timeout_replacements_are_counted_by_reason() {
    bounded(STARTUP, "restarts by reason", || {
        let pool = Pool::builder()
            .processes(1)
            .max_tasks_per_child(2)
            .task_timeout(Duration::from_millis(300))
            .build()
            .unwrap();
        for _ in 0..4 {
            assert_eq!(pool.apply(nap, 1).unwrap(), 1);
        }
        let s = stats_until(|| pool.stats(), |s| s.total().restarts.max_tasks == 2);
        assert_eq!(s.total().restarts.max_tasks, 2, "{s}");
        let err = pool.apply(nap, 5_000).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Timeout);
        let s = stats_until(|| pool.stats(), |s| s.total().restarts.timeout == 1);
        assert_eq!(s.total().restarts.timeout, 1, "{s}");
        assert_eq!(s.workers[0].restarts.recent.last(), Some(&RestartReason::Timeout), "{s}");
        assert_eq!(s.total().tasks, 4, "{s}");
    });
}

#[test]
fn every_face_has_stats() {
    bounded(STARTUP, "stats on every face", || {
        let threads = ThreadPool::new(2).unwrap();
        threads.chunksize(1).map(|x: u64| x + 1, 0..10).unwrap();
        let s = threads.stats();
        assert_eq!((s.workers.len(), s.total().tasks), (2, 10), "{s}");
        assert!(s.workers.iter().all(|w| w.pid.is_none()), "{s}");

        let ex = ProcessPoolExecutor::new(2).unwrap();
        let futures: Vec<_> = (0..3).map(|_| ex.submit(nap, 1).unwrap()).collect();
        for f in futures {
            assert_eq!(f.result_timeout(STARTUP).unwrap(), 1);
        }
        let s = ex.stats();
        assert_eq!((s.workers.len(), s.total().tasks), (2, 3), "{s}");

        let ex = ThreadPoolExecutor::new(2).unwrap();
        let futures: Vec<_> = (0..3).map(|i| ex.submit(move || i, ()).unwrap()).collect();
        for f in futures {
            f.result_timeout(STARTUP).unwrap();
        }
        assert_eq!(ex.stats().total().tasks, 3);
    });
}
