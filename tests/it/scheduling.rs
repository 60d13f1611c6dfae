//! How a process pool spreads work over its workers: slow tasks that follow
//! fast ones are split evenly, not piled on the worker that woke first.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use multiproc::Pool;

use crate::support::{bounded, STARTUP};

/// `x` with the pid of the worker that computed it.
fn with_pid(x: u64) -> (u64, u32) {
    (x, std::process::id())
}

/// Sleeps `ms`, then says which worker did.
fn sleep_then_pid(ms: u64) -> u32 {
    std::thread::sleep(Duration::from_millis(ms));
    std::process::id()
}

/// Runs many fast tasks until both workers of `pool` have run some, so each
/// has a fast pace (the pool would let it hold many jobs at once).
fn warm_both(pool: &Pool) {
    let end = Instant::now() + STARTUP;
    loop {
        let out = pool.chunksize(1).map(with_pid, 0..256).unwrap();
        let mut pids: Vec<u32> = out.iter().map(|&(_, pid)| pid).collect();
        pids.sort_unstable();
        pids.dedup();
        if pids.len() == 2 {
            return;
        }
        assert!(Instant::now() < end, "only {pids:?} ran tasks within {STARTUP:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Issue 8's W6: after a warm-up of fast tasks, eight slow ones split 7/1
/// between two workers (the slot that woke first took half the queue, then
/// the share of what was left, before its pace noticed the tasks were slow).
/// Each worker must now run its half, give or take one, and the map must
/// take about half the serial time.
#[test]
fn slow_tasks_after_fast_ones_split_evenly() {
    const N: usize = 8;
    const MS: u64 = 200;
    bounded(Duration::from_secs(40), "slow tasks after fast ones", || {
        let pool = Pool::new(2).unwrap();
        // Several rounds: the split depends on which slot wakes first.
        for round in 0..3 {
            warm_both(&pool);
            let t = Instant::now();
            let pids = pool.chunksize(1).map(sleep_then_pid, vec![MS; N]).unwrap();
            let took = t.elapsed();
            let mut per_worker = BTreeMap::new();
            for pid in pids {
                *per_worker.entry(pid).or_insert(0usize) += 1;
            }
            assert_eq!(per_worker.len(), 2, "round {round}: one worker ran all: {per_worker:?}");
            for (&pid, &ran) in &per_worker {
                assert!(
                    ran >= N / 2 - 1,
                    "round {round}: worker {pid} ran {ran} of {N} slow tasks: {per_worker:?}"
                );
            }
            // Even: N/2 * MS = 0.8 s; serial 1.6 s; a 6/2 split 1.2 s.
            let limit = Duration::from_millis(MS * N as u64 * 3 / 4);
            assert!(took < limit, "round {round}: {N} tasks of {MS} ms took {took:?} on 2 workers");
        }
    });
}
