//! `ThreadPool`: the pool API run by threads of this process, with closures
//! that capture and values that are not serde types.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use multiproc::{ErrorKind, ThreadPool};

use crate::support::{assert_faster, bounded, PROMPT};

/// Not a serde type, not `Clone`: only a thread pool can carry it.
struct Opaque(Mutex<u64>);

/// A task that reports it started, then blocks until released (or ten
/// seconds pass), returning whether it was released.
fn blocker() -> (impl Fn(()) -> bool + Send + Sync + 'static, mpsc::Receiver<()>, mpsc::Sender<()>)
{
    let (started_tx, started_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let release_rx = Mutex::new(release_rx);
    let task = move |_: ()| {
        started_tx.send(()).unwrap();
        release_rx.lock().unwrap().recv_timeout(Duration::from_secs(10)).is_ok()
    };
    (task, started_rx, release_tx)
}

#[test]
fn thread_pool_runs_capturing_closures_with_the_whole_api() {
    let pool = ThreadPool::new(3).unwrap();
    let offset = 10u64;
    let add = move |x: u64| x + offset;
    assert_eq!(pool.apply(add, 1).unwrap(), 11);
    assert_eq!(pool.apply_async(add, 2).get().unwrap(), 12);
    let want: Vec<u64> = (0..100).map(|x| x + offset).collect();
    assert_eq!(pool.map(add, 0..100).unwrap(), want);
    assert_eq!(pool.chunksize(7).map(add, 0..100).unwrap(), want);
    assert_eq!(pool.map_async(add, 0..100).get().unwrap(), want);
    let got: Vec<u64> = pool.imap(add, 0..100).map(Result::unwrap).collect();
    assert_eq!(got, want);
    let mut got: Vec<u64> =
        pool.chunksize(9).imap_unordered(add, 0..100).map(Result::unwrap).collect();
    got.sort_unstable();
    assert_eq!(got, want);
    let mul = move |a: u64, b: u64| a * b + offset;
    assert_eq!(pool.starmap(mul, vec![(2, 3), (4, 5)]).unwrap(), vec![16, 30]);
    assert_eq!(pool.starmap_async(mul, vec![(1, 1)]).get().unwrap(), vec![11]);
    assert_eq!(pool.map(add, Vec::new()).unwrap(), Vec::<u64>::new());
    assert_eq!(pool.imap(add, Vec::new()).count(), 0);
}

#[test]
fn thread_pool_tasks_run_in_this_process_on_pool_threads() {
    let pool = ThreadPool::new(2).unwrap();
    assert_eq!(pool.processes(), 2);
    let (pid, name) = pool
        .apply(
            |_: ()| {
                let name = std::thread::current().name().map(str::to_string);
                (std::process::id(), name)
            },
            (),
        )
        .unwrap();
    assert_eq!(pid, std::process::id());
    let name = name.expect("pool threads are named");
    assert!(name.starts_with("ThreadPoolWorker-"), "{name}");
    let default = ThreadPool::builder().build().unwrap();
    assert_eq!(default.processes(), multiproc::cpu_count());
}

#[test]
fn thread_pool_carries_values_that_are_not_serde_types() {
    let pool = ThreadPool::new(2).unwrap();
    let shared = Arc::new(Opaque(Mutex::new(0)));
    let s = shared.clone();
    let bump = move |by: Arc<Opaque>| {
        *by.0.lock().unwrap() += 1;
        *s.0.lock().unwrap() += 1;
        Opaque(Mutex::new(7))
    };
    let inputs: Vec<Arc<Opaque>> = (0..10).map(|_| shared.clone()).collect();
    let out = pool.map(bump, inputs).unwrap();
    assert_eq!(out.len(), 10);
    assert!(out.iter().all(|o| *o.0.lock().unwrap() == 7));
    assert_eq!(*shared.0.lock().unwrap(), 20);
}

#[test]
fn thread_pool_task_panic_reports_message_and_location_and_the_thread_goes_on() {
    let pool = ThreadPool::new(1).unwrap();
    let thread_of = |_: ()| format!("{:?}", std::thread::current().id());
    let before = pool.apply(thread_of, ()).unwrap();
    let err = pool
        .apply(|x: u32| -> u32 { panic!("thread task {x} failed on line {}", line!()) }, 5)
        .unwrap_err();
    assert!(err.is_panic(), "{err:?}");
    let message = err.panic_message().expect("a panic message");
    let line = message
        .strip_prefix("thread task 5 failed on line ")
        .unwrap_or_else(|| panic!("unexpected panic message {message:?}"));
    let location = err.location().expect("a location");
    assert!(
        location.starts_with(&format!("{}:{line}:", file!())),
        "location {location}, expected line {line}"
    );
    assert!(err.message().contains(message), "{err}");
    assert_eq!(pool.apply(thread_of, ()).unwrap(), before, "the thread survived");
    // One failing item fails a map; imap yields it in place.
    let f = |x: u32| {
        assert!(x != 2, "two is bad");
        x
    };
    assert!(pool.map(f, 0..4).unwrap_err().is_panic());
    let out: Vec<_> = pool.imap(f, 0..4).collect();
    assert!(out[2].as_ref().unwrap_err().is_panic());
    assert_eq!(*out[3].as_ref().unwrap(), 3);
}

#[test]
fn thread_pool_initializer_runs_once_per_thread_before_tasks() {
    thread_local! {
        static READY: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }
    let runs = Arc::new(AtomicUsize::new(0));
    let r = runs.clone();
    let pool = ThreadPool::builder()
        .threads(3)
        .initializer(move || {
            r.fetch_add(1, Ordering::SeqCst);
            READY.with(|c| c.set(true));
        })
        .build()
        .unwrap();
    let seen = pool.chunksize(1).map(|_: u32| READY.with(|c| c.get()), 0..60).unwrap();
    assert!(seen.iter().all(|&ready| ready));
    pool.close();
    bounded(PROMPT, "thread pool join", move || pool.join()).unwrap();
    assert_eq!(runs.load(Ordering::SeqCst), 3);
}

#[test]
fn thread_pool_initializer_that_panics_fails_tasks() {
    let pool = ThreadPool::builder()
        .threads(2)
        .initializer(|| panic!("thread initializer failed on purpose"))
        .build()
        .unwrap();
    let err = pool.apply_async(|x: u32| x, 1).get_timeout(PROMPT).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InitializerFailed, "{err:?}");
    assert!(err.message().contains("thread initializer failed on purpose"), "{err}");
    assert_eq!(pool.map(|x: u32| x, 0..3).unwrap_err().kind(), ErrorKind::InitializerFailed);
    pool.close();
    bounded(PROMPT, "thread pool join", move || pool.join()).unwrap();
}

#[test]
fn thread_pool_misuse_is_reported() {
    assert_eq!(ThreadPool::new(0).unwrap_err().kind(), ErrorKind::InvalidArgument);
    let pool = ThreadPool::new(1).unwrap();
    assert_eq!(pool.join().unwrap_err().kind(), ErrorKind::PoolStillRunning);
    assert_eq!(
        pool.chunksize(0).map(|x: u32| x, 0..3).unwrap_err().kind(),
        ErrorKind::InvalidArgument
    );
    pool.close();
    assert_eq!(pool.apply(|x: u32| x, 1).unwrap_err().kind(), ErrorKind::PoolNotRunning);
    assert_eq!(pool.map(|x: u32| x, 0..3).unwrap_err().kind(), ErrorKind::PoolNotRunning);
    bounded(PROMPT, "thread pool join", move || pool.join()).unwrap();
}

#[test]
fn thread_pool_close_then_join_waits_for_queued_tasks() {
    let pool = ThreadPool::new(2).unwrap();
    let results: Vec<_> = (0..10u64)
        .map(|i| {
            pool.apply_async(
                |x: u64| {
                    std::thread::sleep(Duration::from_millis(10));
                    x * 2
                },
                i,
            )
        })
        .collect();
    pool.close();
    let pool = bounded(PROMPT * 5, "thread pool join", move || {
        pool.join().unwrap();
        pool
    });
    for (i, r) in results.into_iter().enumerate() {
        assert!(r.ready());
        assert_eq!(r.get().unwrap(), i as u64 * 2);
    }
    drop(pool);
}

#[test]
fn thread_pool_terminate_cancels_queued_tasks_and_lets_the_running_one_finish() {
    let pool = ThreadPool::new(1).unwrap();
    let (task, started, release) = blocker();
    let running = pool.apply_async(task, ());
    let queued: Vec<_> = (0..5u32).map(|i| pool.apply_async(|x: u32| x, i)).collect();
    started.recv_timeout(PROMPT).expect("the first task started");
    let t = Instant::now();
    pool.terminate();
    for r in queued {
        assert!(r.get_timeout(Duration::ZERO).unwrap_err().is_cancelled());
    }
    assert_faster(t.elapsed(), PROMPT, "cancelling queued tasks");
    assert!(!running.ready(), "a running thread task cannot be stopped");
    release.send(()).unwrap();
    assert!(running.get_timeout(PROMPT).unwrap(), "it ran to the end");
    bounded(PROMPT, "thread pool join after terminate", move || pool.join()).unwrap();
}

#[test]
fn thread_pool_drop_cancels_queued_tasks_without_waiting() {
    let pool = ThreadPool::new(1).unwrap();
    let (task, started, release) = blocker();
    let running = pool.apply_async(task, ());
    let queued: Vec<_> = (0..5u32).map(|i| pool.apply_async(|x: u32| x, i)).collect();
    started.recv_timeout(PROMPT).expect("the first task started");
    bounded(PROMPT, "dropping a busy thread pool", move || drop(pool));
    for r in queued {
        assert!(r.get_timeout(Duration::ZERO).unwrap_err().is_cancelled());
    }
    release.send(()).unwrap();
    assert!(running.get_timeout(PROMPT).unwrap());
}

#[test]
fn thread_pool_runs_tasks_on_distinct_threads() {
    let pool = ThreadPool::new(3).unwrap();
    let barrier = Arc::new(std::sync::Barrier::new(3));
    let b = barrier.clone();
    // Three tasks that can only finish together: they run at the same time.
    let ids = pool
        .chunksize(1)
        .map_async(
            move |_: u32| {
                b.wait();
                format!("{:?}", std::thread::current().id())
            },
            0..3,
        )
        .get_timeout(PROMPT)
        .unwrap();
    assert_eq!(ids.into_iter().collect::<HashSet<_>>().len(), 3);
}

#[test]
fn one_calls_take_fnonce_closures_that_move_their_captures_out() {
    let pool = ThreadPool::new(2).unwrap();
    // Not Clone, moved out of the closure: FnOnce only.
    let words = vec![String::from("moved"), String::from("out")];
    assert_eq!(pool.apply(move || words, ()).unwrap(), vec!["moved", "out"]);
    let (tx, rx) = std::sync::mpsc::channel::<u32>();
    // A Sender is Send but not Sync: an Fn + Sync bound would refuse it.
    let sent = pool.apply_async(move |x: u32| tx.send(x * 2).is_ok(), 21);
    assert!(sent.get().unwrap());
    assert_eq!(rx.recv_timeout(std::time::Duration::from_secs(10)).unwrap(), 42);
    let boxed = Box::new(7u64);
    assert_eq!(pool.apply(move |a: u64, b: u64| *boxed + a + b, (1, 2)).unwrap(), 10);

    let ex = multiproc::ThreadPoolExecutor::new(2).unwrap();
    let owned = String::from("future");
    let f = ex.submit(move || owned + "s", ()).unwrap();
    assert_eq!(f.result().unwrap(), "futures");
    // A panicking one-shot fails only its own call.
    let bad = pool.apply(move || -> u32 { panic!("once and gone") }, ());
    assert_eq!(bad.unwrap_err().kind(), multiproc::ErrorKind::TaskPanicked);
    assert_eq!(pool.apply(|x: u32| x + 1, 1).unwrap(), 2);
}

#[test]
fn one_calls_drop_their_captures_once_run_or_cancelled_while_their_results_are_held() {
    // A one call's closure lives in the allocation of its result: it must
    // still go as soon as the call ran or was failed, not with the result.
    let pool = ThreadPool::new(1).unwrap();
    let kept = Arc::new(1u32);
    let k = kept.clone();
    let ran = pool.apply_async(move |x: u32| x + *k, 1);
    assert!(ran.wait_timeout(PROMPT), "the call ran");
    assert_eq!(Arc::strong_count(&kept), 1, "a call that ran holds its captures no more");

    let (task, started, release) = blocker();
    let running = pool.apply_async(task, ());
    started.recv_timeout(PROMPT).expect("the blocking task started");
    let queued: Vec<_> = (0..3u32)
        .map(|i| {
            let k = kept.clone();
            pool.apply_async(move |x: u32| x + *k, i)
        })
        .collect();
    assert_eq!(Arc::strong_count(&kept), 4, "queued calls hold their captures");
    pool.terminate();
    assert_eq!(
        Arc::strong_count(&kept),
        1,
        "calls failed by terminate hold their captures no more"
    );
    for r in &queued {
        assert!(r.get_timeout(Duration::ZERO).unwrap_err().is_cancelled());
    }
    release.send(()).unwrap();
    assert!(running.get_timeout(PROMPT).unwrap());
    assert_eq!(ran.get().unwrap(), 2);
    bounded(PROMPT, "thread pool join after terminate", move || pool.join()).unwrap();
}

#[test]
fn one_calls_with_large_arguments_run_cancel_and_drop_their_captures() {
    // A call larger than what a result keeps inline is boxed on its own:
    // the same behaviour either way.
    let pool = ThreadPool::new(1).unwrap();
    let kept = Arc::new(1u32);
    let k = kept.clone();
    let sum = move |a: [u8; 4096]| a.iter().map(|&b| u32::from(b)).sum::<u32>() + *k;
    let r = pool.apply_async(sum, [7u8; 4096]);
    assert!(r.wait_timeout(PROMPT), "the call ran");
    assert_eq!(Arc::strong_count(&kept), 1, "a call that ran holds its captures no more");
    assert_eq!(r.get().unwrap(), 7 * 4096 + 1);
    let k = kept.clone();
    assert_eq!(pool.apply(move |a: [u8; 4096]| u32::from(a[4095]) + *k, [2u8; 4096]).unwrap(), 3);

    let ex = multiproc::ThreadPoolExecutor::new(1).unwrap();
    let (task, started, release) = blocker();
    let running = ex.submit(task, ()).unwrap();
    started.recv_timeout(PROMPT).expect("the blocking task started");
    let k = kept.clone();
    let queued = ex.submit(move |a: [u8; 4096]| u32::from(a[0]) + *k, [5u8; 4096]).unwrap();
    assert!(queued.cancel(), "a queued call cancels");
    assert!(queued.result().unwrap_err().is_cancelled());
    release.send(()).unwrap();
    assert!(running.result().unwrap());
    bounded(PROMPT, "executor shutdown", move || ex.shutdown());
    assert_eq!(Arc::strong_count(&kept), 1, "a cancelled call holds its captures no more");
}
