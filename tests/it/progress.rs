//! Progress hooks on every map of every face: the count reaches the number
//! of items, in order, and the finish is heard once, also when the map fails
//! or its iterator is dropped early.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use multiproc::{ErrorKind, Pool, ProcessPoolExecutor, Progress, ThreadPool, ThreadPoolExecutor};

use crate::support::sqr;

/// Everything a hook heard.
#[derive(Default)]
struct Heard {
    updates: Vec<(u64, Option<u64>)>,
    finishes: Vec<(u64, Option<u64>)>,
}

#[derive(Clone, Default)]
struct Log(Arc<Mutex<Heard>>);

impl Progress for Log {
    fn update(&self, done: u64, total: Option<u64>) {
        self.0.lock().unwrap().updates.push((done, total));
    }
    fn finish(&self, done: u64, total: Option<u64>) {
        self.0.lock().unwrap().finishes.push((done, total));
    }
}

impl Log {
    /// Checks the updates rose from 0 to `done` in order, and the one finish.
    fn assert_ran(&self, done: u64, total: Option<u64>) {
        wait_finished(self);
        let heard = self.0.lock().unwrap();
        let counts: Vec<u64> = heard.updates.iter().map(|u| u.0).collect();
        assert_eq!(counts.first(), Some(&0), "starts at 0: {counts:?}");
        assert!(counts.windows(2).all(|w| w[0] <= w[1]), "in order: {counts:?}");
        assert_eq!(counts.last(), Some(&done), "{counts:?}");
        assert!(heard.updates.iter().all(|u| u.1 == total), "{:?}", heard.updates);
        assert_eq!(heard.finishes, vec![(done, total)]);
    }
}

fn panics_on_seven(x: u64) -> u64 {
    assert!(x != 7, "seven");
    x
}

/// The finish is heard once every chunk has completed, which the result (or
/// the end of the iteration) may precede by a moment.
fn wait_finished(log: &Log) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while log.0.lock().unwrap().finishes.is_empty() {
        assert!(std::time::Instant::now() < deadline, "the finish was never heard");
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn pool_map_counts_every_item_and_finishes_once() {
    let pool = Pool::new(2).unwrap();
    let log = Log::default();
    let out = pool.chunksize(7).progress(log.clone()).map(sqr, 0..100u64).unwrap();
    assert_eq!(out, (0..100u64).map(|x| x * x).collect::<Vec<_>>());
    wait_finished(&log);
    log.assert_ran(100, Some(100));
    // One update per chunk (15 of 7 items or fewer), plus the start.
    assert_eq!(log.0.lock().unwrap().updates.len(), 1 + 100usize.div_ceil(7));
}

#[test]
fn pool_imap_and_imap_unordered_count_as_results_arrive() {
    let pool = Pool::new(2).unwrap();
    for ordered in [true, false] {
        let log = Log::default();
        let with = pool.progress(log.clone());
        let it =
            if ordered { with.imap(sqr, 0..50u64) } else { with.imap_unordered(sqr, 0..50u64) };
        let mut got: Vec<u64> = it.map(Result::unwrap).collect();
        got.sort_unstable();
        assert_eq!(got, (0..50u64).map(|x| x * x).collect::<Vec<_>>());
        log.assert_ran(50, Some(50));
    }
}

#[test]
fn a_failing_map_still_counts_the_failed_items_and_finishes() {
    let pool = Pool::new(2).unwrap();
    let log = Log::default();
    let err = pool.chunksize(1).progress(log.clone()).map(panics_on_seven, 0..20u64).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::TaskPanicked);
    wait_finished(&log);
    log.assert_ran(20, Some(20));
}

#[test]
fn an_imap_dropped_early_finishes_short_of_its_total() {
    let pool = ThreadPool::new(2).unwrap();
    let log = Log::default();
    let mut it = pool.progress(log.clone()).imap(|x: u64| x, 0..10_000u64);
    assert_eq!(it.next().unwrap().unwrap(), 0);
    drop(it);
    wait_finished(&log);
    let heard = log.0.lock().unwrap();
    let (done, total) = heard.finishes[0];
    assert_eq!(heard.finishes.len(), 1);
    assert_eq!(total, Some(10_000));
    assert!((1..10_000).contains(&done), "done {done}: some ran, the rest was cancelled");
}

#[test]
fn an_input_of_unknown_length_reports_no_total() {
    let pool = ThreadPool::new(2).unwrap();
    let log = Log::default();
    let input = (0..30u64).filter(|x| x % 3 == 0);
    let n = pool.progress(log.clone()).imap(|x: u64| x, input).count();
    assert_eq!(n, 10);
    log.assert_ran(10, None);
}

#[test]
fn executors_map_with_chunksize_and_progress() {
    let ex = ProcessPoolExecutor::new(2).unwrap();
    let log = Log::default();
    let out: Vec<u64> =
        ex.chunksize(10).progress(log.clone()).map(sqr, 0..95u64).map(Result::unwrap).collect();
    assert_eq!(out, (0..95u64).map(|x| x * x).collect::<Vec<_>>());
    log.assert_ran(95, Some(95));
    assert_eq!(log.0.lock().unwrap().updates.len(), 1 + 10);

    let ex = ThreadPoolExecutor::new(2).unwrap();
    let log = Log::default();
    let out: Vec<u64> =
        ex.progress(log.clone()).map(|x: u64| x + 1, 0..40u64).map(Result::unwrap).collect();
    assert_eq!(out.len(), 40);
    log.assert_ran(40, Some(40));
}

#[test]
fn a_closure_hook_sees_the_count_and_a_panicking_hook_breaks_nothing() {
    let pool = Pool::new(2).unwrap();
    let last = Arc::new(Mutex::new((0u64, None)));
    let l = last.clone();
    let out = pool
        .chunksize(5)
        .progress(move |done, total| *l.lock().unwrap() = (done, total))
        .map(sqr, 0..40u64)
        .unwrap();
    assert_eq!(out.len(), 40);
    assert_eq!(*last.lock().unwrap(), (40, Some(40)));

    // The hook runs on the pool's own threads: its panic must not reach them.
    let out = pool
        .chunksize(5)
        .progress(|done: u64, _: Option<u64>| assert!(done < 10, "hook gives up"))
        .map(sqr, 0..40u64)
        .unwrap();
    assert_eq!(out, (0..40u64).map(|x| x * x).collect::<Vec<_>>());
    // And the pool is whole afterwards.
    assert_eq!(pool.apply(sqr, 9).unwrap(), 81);
}
