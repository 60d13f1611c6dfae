//! `Queue` and `JoinableQueue` as CPython's `_TestQueue` pins them down (put
//! and get with and without blocking and timeouts, qsize/empty/full, a child
//! using a queue its parent has a feeder for, task_done/join, closed queues,
//! a value that cannot be pickled), and what this crate adds: a consumer
//! killed in `get` takes nothing with it, many producers' items arrive
//! exactly once and in each producer's order, large items travel through
//! shared memory, handles travel inside items, and queues travel to pool
//! tasks.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use multiproc::{ErrorKind, Event, JoinableQueue, Pool, Process, PutError, Queue};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::ipc_util::{
    assert_prompt, assert_waited, bounded, join_ok, memfd_count, send_beacon, start_daemon,
    thread_ids, timed, wait_child_blocked_in, wait_thread_blocked_in, Beacon, FUTEX, PROMPT,
    STARTUP,
};

const SHORT: Duration = Duration::from_millis(200);

// --- children ------------------------------------------------------------------

fn put_range(q: Queue<u64>, from: u64, to: u64) {
    for i in from..to {
        q.put(i).unwrap();
    }
}

/// CPython's `_test_put`: waits for the parent, then takes six items.
fn take_six(q: Queue<u32>, child_can_start: Event, parent_can_continue: Event) {
    child_can_start.wait();
    for _ in 0..6 {
        q.get_timeout(STARTUP).unwrap();
    }
    parent_can_continue.set();
}

/// CPython's `_test_get`: waits for the parent, then puts 2..=5.
fn put_two_to_five(q: Queue<u32>, child_can_start: Event, parent_can_continue: Event) {
    child_can_start.wait();
    for i in 2..=5 {
        q.put(i).unwrap();
    }
    parent_can_continue.set();
}

/// CPython's `_test_task_done`: takes items until `None`, marking each done.
fn mark_done_until_none(q: JoinableQueue<Option<u32>>) {
    while let Some(_item) = q.get().unwrap() {
        q.task_done().unwrap();
    }
    q.task_done().unwrap();
}

/// Gets one item and reports it with this process's pid.
fn get_one_and_report(q: Queue<u64>, beacon: String) {
    let v = q.get().unwrap();
    send_beacon(&beacon, &format!("{} {v}", std::process::id()));
}

/// Gets items until `u64::MAX`, reporting each.
fn get_all_and_report(q: Queue<u64>, beacon: String) {
    loop {
        let v = q.get().unwrap();
        if v == u64::MAX {
            return;
        }
        send_beacon(&beacon, &format!("{} {v}", std::process::id()));
    }
}

/// Takes `n` items and exits 0 when they are `0..n` in order.
fn expect_in_order(q: Queue<u64>, n: u64) {
    for i in 0..n {
        let v = q.get_timeout(STARTUP).unwrap();
        if v != i {
            eprintln!("expected {i}, got {v}");
            std::process::exit(3);
        }
    }
}

// --- CPython's _TestQueue ------------------------------------------------------

#[test]
fn qsize_empty_and_full_follow_puts_and_gets() {
    if !crate::support::alone() {
        return;
    }
    let q = Queue::<u32>::new().unwrap();
    assert_eq!((q.qsize(), q.empty(), q.full(), q.maxsize()), (0, true, false, 0));
    q.put(1).unwrap();
    assert_eq!((q.qsize(), q.empty()), (1, false));
    q.put(5).unwrap();
    assert_eq!(q.qsize(), 2);
    assert_eq!(q.get().unwrap(), 1);
    assert_eq!(q.qsize(), 1);
    assert_eq!(q.get().unwrap(), 5);
    assert_eq!((q.qsize(), q.empty()), (0, true));

    let b = Queue::<u32>::bounded(2).unwrap();
    assert_eq!(b.maxsize(), 2);
    b.put(1).unwrap();
    assert!(!b.full());
    b.put(2).unwrap();
    assert!(b.full());
    b.get().unwrap();
    assert!(!b.full());
}

/// CPython's `test_put`: a bounded queue refuses a seventh item at once or
/// after the timeout asked for, and takes more once a child has emptied it.
#[test]
fn bounded_queue_put_is_full_within_its_timeout() {
    if !crate::support::alone() {
        return;
    }
    const MAXSIZE: u32 = 6;
    let q = Queue::<u32>::bounded(MAXSIZE).unwrap();
    let (child_can_start, parent_can_continue) = (Event::new().unwrap(), Event::new().unwrap());
    let mut p = start_daemon(Process::new(
        take_six,
        (q.clone(), child_can_start.clone(), parent_can_continue.clone()),
    ));
    assert!(q.empty() && !q.full());
    q.put(1).unwrap();
    q.put(2).unwrap();
    q.put_timeout(3, STARTUP).unwrap();
    q.put_nowait(4).unwrap();
    q.put_timeout(5, Duration::ZERO).unwrap();
    q.put_nowait(6).unwrap();
    assert!(!q.empty() && q.full());
    assert_eq!(q.qsize(), 6);

    let (r, took) = timed(|| q.put_nowait(7));
    assert!(matches!(r, Err(PutError::Full(7))), "{r:?}");
    assert_prompt(took, "put_nowait on a full queue");
    let (r, took) = timed(|| q.put_timeout(7, Duration::ZERO));
    assert!(matches!(r, Err(PutError::Timeout(7))), "{r:?}");
    assert_prompt(took, "put with a zero timeout on a full queue");
    for t in [Duration::from_millis(100), SHORT] {
        let (r, took) = timed(|| q.put_timeout(7, t));
        let err = r.unwrap_err();
        assert!(matches!(err, PutError::Timeout(7)), "{err:?}");
        assert_eq!(err.into_error().kind(), ErrorKind::Timeout);
        assert_waited(took, t, "put_timeout on a full queue");
    }
    let err = q.put_nowait(8).unwrap_err();
    assert_eq!(err.to_string(), "the queue is full");
    assert_eq!(err.into_error().kind(), ErrorKind::Full);

    child_can_start.set();
    assert!(parent_can_continue.wait_timeout(STARTUP), "the child did not take six items");
    assert!(q.empty() && !q.full());
    assert_eq!(q.qsize(), 0);
    // Every place is free again.
    for i in 0..MAXSIZE {
        q.put_nowait(i).unwrap();
    }
    join_ok(&mut p);
}

/// A put blocked on a full queue goes through as soon as a consumer in
/// another process takes an item.
#[test]
fn blocked_put_wakes_when_a_child_takes_an_item() {
    if !crate::support::alone() {
        return;
    }
    let q = Queue::<u64>::bounded(1).unwrap();
    q.put(0).unwrap();
    let q2 = q.clone();
    let (tid_tx, tid_rx) = std::sync::mpsc::channel();
    let putter = std::thread::spawn(move || {
        tid_tx.send(crate::ipc_util::gettid()).unwrap();
        let r = q2.put(1);
        (r.is_ok(), Instant::now())
    });
    let tid = tid_rx.recv().unwrap();
    assert!(wait_thread_blocked_in(tid, FUTEX), "the put never blocked on the full queue");
    assert!(!putter.is_finished());
    let mut p = start_daemon(Process::new(expect_in_order, (q.clone(), 1)));
    join_ok(&mut p); // took 0
    let (ok, _) = bounded(PROMPT, "the blocked put", move || putter.join().unwrap());
    assert!(ok);
    assert_eq!(q.get_timeout(PROMPT).unwrap(), 1);
}

/// CPython's `test_get`: items a child puts arrive in order; an empty queue
/// raises Empty at once or after the timeout asked for.
#[test]
fn get_takes_a_childs_items_and_is_empty_within_its_timeout() {
    if !crate::support::alone() {
        return;
    }
    let q = Queue::<u32>::new().unwrap();
    let (child_can_start, parent_can_continue) = (Event::new().unwrap(), Event::new().unwrap());
    let mut p = start_daemon(Process::new(
        put_two_to_five,
        (q.clone(), child_can_start.clone(), parent_can_continue.clone()),
    ));
    assert!(q.empty());
    child_can_start.set();
    assert!(parent_can_continue.wait_timeout(STARTUP));
    assert!(!q.empty());
    assert_eq!(q.get().unwrap(), 2);
    assert_eq!(q.get_timeout(STARTUP).unwrap(), 3);
    assert_eq!(q.get_timeout(Duration::from_secs(1)).unwrap(), 4);
    assert_eq!(q.get_nowait().unwrap(), 5);
    assert!(q.empty());

    let (r, took) = timed(|| q.get_nowait());
    assert_eq!(r.unwrap_err().kind(), ErrorKind::Empty);
    assert_prompt(took, "get_nowait on an empty queue");
    let (r, took) = timed(|| q.get_timeout(Duration::ZERO));
    assert_eq!(r.unwrap_err().kind(), ErrorKind::Timeout);
    assert_prompt(took, "get with a zero timeout on an empty queue");
    for t in [Duration::from_millis(100), SHORT] {
        let (r, took) = timed(|| q.get_timeout(t));
        assert_eq!(r.unwrap_err().kind(), ErrorKind::Timeout);
        assert_waited(took, t, "get_timeout on an empty queue");
    }
    join_ok(&mut p);
}

/// CPython's `test_fork`: the parent has put so much that its feeder thread
/// is running; a child given the queue puts more; every item of each arrives
/// in that producer's order.
#[test]
fn a_child_uses_a_queue_whose_parent_has_a_feeder_running() {
    if !crate::support::alone() {
        return;
    }
    const N: u64 = 20_000;
    let q = Queue::<u64>::new().unwrap();
    // Far more than the socket holds: the rest waits in the outbox.
    let (_, took) = timed(|| put_range(q.clone(), 0, N));
    assert!(took < STARTUP, "unbounded puts with no consumer took {took:?}");
    // A thread takes its name only once it runs: on a loaded machine that can
    // be a while after the put that started it.
    let feeder_running = || {
        std::fs::read_dir("/proc/self/task").unwrap().any(|t| {
            let comm = t.unwrap().path().join("comm");
            std::fs::read_to_string(comm).is_ok_and(|c| c.starts_with("multiproc-queue"))
        })
    };
    let since = std::time::Instant::now();
    while !feeder_running() && since.elapsed() < STARTUP {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(feeder_running(), "no feeder thread is running after {N} unconsumed puts");
    let mut p = start_daemon(Process::new(put_range, (q.clone(), N, 2 * N)));
    let (mut next_parent, mut next_child) = (0, N);
    for _ in 0..2 * N {
        let v = q.get_timeout(STARTUP).unwrap();
        if v < N {
            assert_eq!(v, next_parent, "the parent's items out of order");
            next_parent += 1;
        } else {
            assert_eq!(v, next_child, "the child's items out of order");
            next_child += 1;
        }
    }
    assert_eq!((next_parent, next_child), (N, 2 * N));
    assert_eq!(q.get_timeout(Duration::ZERO).unwrap_err().kind(), ErrorKind::Timeout);
    join_ok(&mut p);
}

/// CPython's `test_timeout`: a get with a 200 ms timeout waits that long.
#[test]
fn get_timeout_waits_at_least_its_timeout() {
    if !crate::support::alone() {
        return;
    }
    let q = Queue::<u8>::new().unwrap();
    let (r, took) = timed(|| q.get_timeout(SHORT));
    assert_eq!(r.unwrap_err().kind(), ErrorKind::Timeout);
    assert!(took >= Duration::from_millis(195), "returned after {took:?}");
}

/// CPython's `test_task_done`: four consumer processes mark items done and
/// `join` returns once all ten are.
#[test]
fn join_returns_once_every_item_is_marked_done() {
    if !crate::support::alone() {
        return;
    }
    let q = JoinableQueue::<Option<u32>>::new().unwrap();
    let mut workers: Vec<Process> =
        (0..4).map(|_| start_daemon(Process::new(mark_done_until_none, q.clone()))).collect();
    for i in 0..10 {
        q.put(Some(i)).unwrap();
    }
    let (done, took) = timed(|| q.join_timeout(STARTUP));
    assert!(done, "join did not return within {took:?}");
    for _ in &workers {
        q.put(None).unwrap();
    }
    assert!(q.join_timeout(STARTUP));
    for p in &mut workers {
        join_ok(p);
    }
    assert!(q.join_timeout(Duration::ZERO));
    q.join();
}

/// `join` waits while an item is put and not marked done — taken is not
/// enough — and returns as soon as it is.
#[test]
fn join_waits_for_task_done_not_for_get() {
    if !crate::support::alone() {
        return;
    }
    let q = JoinableQueue::<u32>::new().unwrap();
    assert!(q.join_timeout(Duration::ZERO), "an unused queue has nothing to wait for");
    q.put(1).unwrap();
    let (done, took) = timed(|| q.join_timeout(SHORT));
    assert!(!done);
    assert_waited(took, SHORT, "join_timeout with an unfinished item");
    assert_eq!(q.get().unwrap(), 1);
    assert!(!q.join_timeout(Duration::from_millis(50)), "taken but not done");
    let q2 = q.clone();
    let (tid_tx, tid_rx) = std::sync::mpsc::channel();
    let joiner = std::thread::spawn(move || {
        tid_tx.send(crate::ipc_util::gettid()).unwrap();
        q2.join();
        Instant::now()
    });
    assert!(wait_thread_blocked_in(tid_rx.recv().unwrap(), FUTEX), "join never blocked");
    let marked = Instant::now();
    q.task_done().unwrap();
    let returned = bounded(PROMPT, "join after task_done", move || joiner.join().unwrap());
    assert!(returned.duration_since(marked) < PROMPT);
}

#[test]
fn task_done_more_times_than_items_is_an_error() {
    if !crate::support::alone() {
        return;
    }
    let q = JoinableQueue::<u32>::new().unwrap();
    let e = q.task_done().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidState, "{e}");
    q.put(1).unwrap();
    q.put(2).unwrap();
    q.get().unwrap();
    q.get().unwrap();
    q.task_done().unwrap();
    q.task_done().unwrap();
    assert_eq!(q.task_done().unwrap_err().kind(), ErrorKind::InvalidState);
    assert!(q.join_timeout(Duration::ZERO));
    // The failed calls left the count alone.
    q.put(3).unwrap();
    assert!(!q.join_timeout(Duration::ZERO));
    q.get().unwrap();
    q.task_done().unwrap();
    assert!(q.join_timeout(Duration::ZERO));
}

/// A JoinableQueue handed to a pool task: the task's task_done calls count.
#[test]
fn joinable_queue_in_pool_tasks() {
    if !crate::support::alone() {
        return;
    }
    fn drain(q: JoinableQueue<u32>, n: u32) -> u32 {
        let mut sum = 0;
        for _ in 0..n {
            sum += q.get_timeout(STARTUP).unwrap();
            q.task_done().unwrap();
        }
        sum
    }
    let q = JoinableQueue::<u32>::new().unwrap();
    for i in 1..=10 {
        q.put(i).unwrap();
    }
    let pool = Pool::new(2).unwrap();
    let a = pool.apply_async(drain, (q.clone(), 5));
    let b = pool.apply_async(drain, (q.clone(), 5));
    assert_eq!(a.get_timeout(STARTUP).unwrap() + b.get_timeout(STARTUP).unwrap(), 55);
    assert!(q.join_timeout(PROMPT));
}

/// CPython's `test_closed_queue_put_get_exceptions`: after `close`, put and
/// get fail here (the value comes back); items already put still reach a
/// consumer with its own handle.
#[test]
fn a_closed_handle_refuses_put_and_get_but_items_still_arrive() {
    if !crate::support::alone() {
        return;
    }
    let q = Queue::<u64>::new().unwrap();
    put_range(q.clone(), 0, 3);
    let other = Process::new(expect_in_order, (q.clone(), 3));
    q.close();
    match q.put(7) {
        Err(PutError::Closed(7)) => {}
        r => panic!("put on a closed queue: {r:?}"),
    }
    assert_eq!(q.put_nowait(8).unwrap_err().into_error().kind(), ErrorKind::Closed);
    assert_eq!(q.get().unwrap_err().kind(), ErrorKind::Closed);
    assert_eq!(q.get_nowait().unwrap_err().kind(), ErrorKind::Closed);
    let clone = q.clone();
    assert_eq!(clone.get_timeout(SHORT).unwrap_err().kind(), ErrorKind::Closed, "clones too");
    let mut p = start_daemon(other);
    join_ok(&mut p);

    let j = JoinableQueue::<u8>::new().unwrap();
    j.close();
    assert!(matches!(j.put(1), Err(PutError::Closed(1))));
    assert_eq!(j.get().unwrap_err().kind(), ErrorKind::Closed);
}

// --- values that cannot travel ------------------------------------------------------

/// Serializes as its number, except `Poison`, which refuses.
#[derive(Debug, PartialEq)]
enum Item {
    Good(u32),
    Poison,
}

impl Serialize for Item {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Item::Good(n) => s.serialize_u32(*n),
            Item::Poison => Err(serde::ser::Error::custom("this item refuses to be serialized")),
        }
    }
}

impl<'de> Deserialize<'de> for Item {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match u32::deserialize(d)? {
            13 => Err(serde::de::Error::custom("13 refuses to be deserialized")),
            n => Ok(Item::Good(n)),
        }
    }
}

/// CPython's `test_queue_feeder_donot_stop_onexc`: an item that cannot be
/// serialized fails its own put, with the value handed back; the queue, its
/// size and (bounded) its free places are as before.
#[test]
fn a_value_that_fails_to_serialize_fails_only_its_put() {
    if !crate::support::alone() {
        return;
    }
    let q = Queue::<Item>::new().unwrap();
    match q.put(Item::Poison) {
        Err(PutError::Failed(Item::Poison, e)) => {
            assert_eq!(e.kind(), ErrorKind::Serialize, "{e}");
            assert!(e.is_serialization());
            assert!(e.message().contains("Item"), "the error names the type: {e}");
        }
        r => panic!("put of an unserializable value: {r:?}"),
    }
    let err = q.put(Item::Poison).unwrap_err();
    assert!(err.to_string().contains("serialize"), "{err}");
    assert_eq!(err.into_inner(), Item::Poison);
    assert_eq!(q.qsize(), 0);
    q.put(Item::Good(1)).unwrap();
    assert_eq!(q.get_timeout(PROMPT).unwrap(), Item::Good(1));
    assert!(q.empty());

    let b = Queue::<Item>::bounded(1).unwrap();
    assert!(matches!(b.put_nowait(Item::Poison), Err(PutError::Failed(Item::Poison, _))));
    assert_eq!(b.qsize(), 0);
    b.put_nowait(Item::Good(2)).expect("the failed put must not have used the only place");
    assert_eq!(b.qsize(), 1);
    assert!(matches!(b.put_nowait(Item::Good(3)), Err(PutError::Full(Item::Good(3)))));
    assert_eq!(b.get_timeout(PROMPT).unwrap(), Item::Good(2));
    assert!(b.empty());
}

/// An item a consumer cannot decode fails that get only (and is consumed);
/// the next item is intact.
#[test]
fn an_item_that_fails_to_deserialize_fails_only_its_get() {
    if !crate::support::alone() {
        return;
    }
    let q = Queue::<Item>::new().unwrap();
    q.put(Item::Good(13)).unwrap();
    q.put(Item::Good(14)).unwrap();
    let e = q.get_timeout(PROMPT).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Deserialize, "{e}");
    assert_eq!(q.get_timeout(PROMPT).unwrap(), Item::Good(14));
    assert_eq!(q.qsize(), 0);
    assert_eq!(q.get_nowait().unwrap_err().kind(), ErrorKind::Empty);
}

/// An item with more handles than one message can carry (the kernel takes
/// 253) fails alone: at once if the socket has room, and also when it waits
/// in the outbox behind other items — the items put after it still arrive
/// and the queue's size stays true.
#[test]
fn an_item_with_too_many_handles_fails_alone_even_from_the_outbox() {
    if !crate::support::alone() {
        return;
    }
    let many: Vec<Event> = (0..300).map(|_| Event::new().unwrap()).collect();
    let q = Queue::<Vec<Event>>::new().unwrap();
    let r = q.put(many.clone());
    assert!(matches!(r, Err(PutError::Failed(_, _))), "{r:?}");
    assert_eq!(q.qsize(), 0);

    // The socket fills; the rest waits in the outbox for the feeder.
    for _ in 0..2000 {
        q.put(vec![]).unwrap();
    }
    let r = q.put(many);
    for _ in 0..10 {
        q.put(vec![]).unwrap();
    }
    let mut got = 0;
    while let Ok(v) = q.get_timeout(Duration::from_secs(1)) {
        assert!(v.is_empty(), "an item of 300 handles cannot have arrived");
        got += 1;
    }
    assert_eq!(got, 2010, "items put after the bad one were lost (its put returned {r:?})");
    assert_eq!(q.qsize(), 0);
}

/// A failing item that carries handles leaves no descriptor behind.
#[test]
fn a_failed_put_of_an_item_with_handles_leaks_no_descriptor() {
    if !crate::support::alone() {
        return;
    }
    let q = Queue::<(Queue<u8>, Item)>::new().unwrap();
    let inner = Queue::<u8>::new().unwrap();
    let before = crate::ipc_util::fd_count();
    for _ in 0..50 {
        let r = q.put((inner.clone(), Item::Poison));
        assert!(matches!(r, Err(PutError::Failed(_, _))));
    }
    assert_eq!(crate::ipc_util::fd_count(), before, "failed puts leaked descriptors");
}

// --- consumers that die --------------------------------------------------------

/// A consumer SIGKILLed while blocked in `get` takes nothing with it: items
/// put afterwards reach the consumers still alive, each exactly once.
#[test]
fn a_consumer_killed_while_blocked_in_get_loses_no_item() {
    if !crate::support::alone() {
        return;
    }
    let q = Queue::<u64>::new().unwrap();
    let beacon = Beacon::new();
    let mut doomed = start_daemon(Process::new(get_one_and_report, (q.clone(), beacon.path())));
    let mut survivor = start_daemon(Process::new(get_all_and_report, (q.clone(), beacon.path())));
    for p in [&doomed, &survivor] {
        assert!(wait_child_blocked_in(p.pid().unwrap(), FUTEX), "{p:?} never blocked in get");
    }
    doomed.kill().unwrap();
    assert!(doomed.join_timeout(PROMPT).unwrap());
    assert_eq!(doomed.exitcode(), Some(-libc::SIGKILL));

    for i in 0..100 {
        q.put(i).unwrap();
    }
    let survivor_pid = survivor.pid().unwrap().to_string();
    let mut got = HashSet::new();
    for _ in 0..100 {
        let msg = beacon.recv(STARTUP, "an item taken by the surviving consumer");
        let (pid, v) = msg.split_once(' ').unwrap();
        assert_eq!(pid, survivor_pid, "only the survivor can take items");
        assert!(got.insert(v.parse::<u64>().unwrap()), "{v} delivered twice");
    }
    assert_eq!(got, (0..100).collect::<HashSet<_>>());
    // The parent is a consumer too; the queue works for it.
    q.put(u64::MAX).unwrap();
    join_ok(&mut survivor);
    q.put(1000).unwrap();
    assert_eq!(q.get_timeout(PROMPT).unwrap(), 1000);
    assert_eq!(q.qsize(), 0);
    assert!(beacon.try_recv(Duration::ZERO).is_none());
}

/// Several consumers killed at once while blocked, the parent the only
/// consumer left: a bounded queue's places are all still there.
#[test]
fn killing_every_consumer_child_leaves_a_bounded_queue_whole() {
    if !crate::support::alone() {
        return;
    }
    let q = Queue::<u64>::bounded(4).unwrap();
    let beacon = Beacon::new();
    let mut consumers: Vec<Process> = (0..3)
        .map(|_| start_daemon(Process::new(get_one_and_report, (q.clone(), beacon.path()))))
        .collect();
    for p in &consumers {
        assert!(wait_child_blocked_in(p.pid().unwrap(), FUTEX), "{p:?} never blocked in get");
    }
    for p in &mut consumers {
        p.kill().unwrap();
    }
    for p in &mut consumers {
        assert!(p.join_timeout(PROMPT).unwrap());
    }
    for i in 0..4 {
        q.put_nowait(i).expect("all four places are free");
    }
    assert!(q.full());
    let got: Vec<u64> = (0..4).map(|_| q.get_timeout(PROMPT).unwrap()).collect();
    assert_eq!(got, vec![0, 1, 2, 3]);
    assert!(q.empty() && !q.full());
    assert!(beacon.try_recv(Duration::ZERO).is_none(), "a killed consumer reported an item");
}

// --- many producers ---------------------------------------------------------

const PRODUCERS: u64 = 8;
const PER_PRODUCER: u64 = 100_000;

fn produce_tagged(q: Queue<u64>, id: u64) {
    for i in 0..PER_PRODUCER {
        q.put((id << 32) | i).unwrap();
    }
}

/// Takes items until `u64::MAX` and hands back the ones it took, in order.
fn consume_until_sentinel(q: Queue<u64>, results: Queue<Vec<u64>>) {
    let mut got = Vec::new();
    loop {
        match q.get_timeout(Duration::from_secs(20)).unwrap() {
            u64::MAX => break,
            v => got.push(v),
        }
    }
    results.put(got).unwrap();
}

/// Checks one consumer's items: each producer's items in increasing order;
/// marks each seen, failing on a duplicate.
fn check_consumer(items: &[u64], seen: &mut [bool], who: &str) {
    let mut last: BTreeMap<u64, u64> = BTreeMap::new();
    for &v in items {
        let (id, seq) = (v >> 32, v & 0xffff_ffff);
        assert!(id < PRODUCERS && seq < PER_PRODUCER, "{who}: an item never put: {v:#x}");
        if let Some(&prev) = last.get(&id) {
            assert!(seq > prev, "{who}: producer {id}'s item {seq} arrived after its item {prev}");
        }
        last.insert(id, seq);
        let slot = &mut seen[(id * PER_PRODUCER + seq) as usize];
        assert!(!*slot, "{who}: producer {id}'s item {seq} arrived twice");
        *slot = true;
    }
}

/// 8 producer processes × 100,000 tagged items, consumed by the parent and a
/// child at once: every item arrives exactly once, and each consumer sees
/// each producer's items in the order they were put.
#[test]
fn eight_producers_times_100k_items_arrive_exactly_once_in_order() {
    if !crate::support::alone() {
        return;
    }
    let q = Queue::<u64>::new().unwrap();
    let results = Queue::<Vec<u64>>::new().unwrap();
    let started = Instant::now();
    let mut consumer =
        start_daemon(Process::new(consume_until_sentinel, (q.clone(), results.clone())));
    let mut producers: Vec<Process> = (0..PRODUCERS)
        .map(|id| start_daemon(Process::new(produce_tagged, (q.clone(), id))))
        .collect();

    let mut mine = Vec::with_capacity((PRODUCERS * PER_PRODUCER) as usize);
    let deadline = started + Duration::from_secs(40);
    let mut producing = producers.len();
    while producing > 0 {
        assert!(Instant::now() < deadline, "the producers did not finish in time");
        let check = match q.get_timeout(Duration::from_millis(100)) {
            Ok(v) => {
                mine.push(v);
                mine.len() % 4096 == 0
            }
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
                true
            }
        };
        if check {
            producing = producers.iter_mut().map(|p| usize::from(p.exitcode().is_none())).sum();
        }
    }
    // Each producer has exited, so all its items are on the queue (its
    // outbox is flushed before it exits). The child takes what is left.
    for p in &mut producers {
        join_ok(p);
    }
    q.put(u64::MAX).unwrap();
    let theirs = results.get_timeout(Duration::from_secs(20)).unwrap();
    join_ok(&mut consumer);
    let elapsed = started.elapsed();

    let mut seen = vec![false; (PRODUCERS * PER_PRODUCER) as usize];
    check_consumer(&mine, &mut seen, "the parent");
    check_consumer(&theirs, &mut seen, "the child");
    let missing = seen.iter().filter(|s| !**s).count();
    assert_eq!(missing, 0, "{missing} items never arrived");
    assert_eq!(mine.len() + theirs.len(), (PRODUCERS * PER_PRODUCER) as usize);
    assert_eq!(q.get_timeout(Duration::ZERO).unwrap_err().kind(), ErrorKind::Timeout);
    let total = PRODUCERS * PER_PRODUCER;
    eprintln!(
        "{total} items in {elapsed:?}: {:.0} items/s (parent took {}, child {})",
        total as f64 / elapsed.as_secs_f64(),
        mine.len(),
        theirs.len()
    );
    assert!(elapsed < Duration::from_secs(30), "{total} items took {elapsed:?}");
}

/// One producer thread putting as fast as it can while a consumer process
/// keeps pace: the socket fills and drains over and over, so items go
/// directly, then through the outbox and its feeder thread, then directly
/// again. They must still arrive in the order they were put.
#[test]
fn one_producers_order_survives_the_outbox_filling_and_draining() {
    if !crate::support::alone() {
        return;
    }
    const N: u64 = 300_000;
    let q = Queue::<u64>::new().unwrap();
    let mut consumer = start_daemon(Process::new(expect_in_order, (q.clone(), N)));
    let (_, took) = timed(|| {
        for i in 0..N {
            q.put(i).unwrap();
        }
    });
    assert!(consumer.join_timeout(Duration::from_secs(30)).unwrap(), "the consumer hung");
    assert_eq!(consumer.exitcode(), Some(0), "items arrived out of order (see stderr)");
    eprintln!("{N} puts in {took:?}");
}

/// The socket is full and the feeder thread is asleep sending the one item
/// that overflowed (the outbox is otherwise empty). A consumer takes a few
/// items: there is room for a message again, but not enough for the kernel to
/// wake the feeder. The next put, from the same thread, must not be sent
/// directly ahead of the item the feeder still holds.
#[test]
fn an_item_put_while_the_feeder_is_blocked_does_not_overtake_its_item() {
    if !crate::support::alone() {
        return;
    }
    let q = Queue::<u64>::new().unwrap();
    let before = thread_ids();
    // The put that finds the socket full starts the feeder before it
    // returns, so the new thread is visible at once.
    let mut next = 0u64;
    let feeder = loop {
        assert!(next < 1_000_000, "the socket never filled");
        q.put(next).unwrap();
        next += 1;
        if let Some(&t) = thread_ids().difference(&before).next() {
            break t;
        }
    };
    assert!(
        wait_thread_blocked_in(feeder, FUTEX),
        "the feeder never waited for room for item {}",
        next - 1
    );
    for i in 0..10 {
        assert_eq!(q.get_timeout(PROMPT).unwrap(), i);
    }
    q.put(next).unwrap();
    let rest: Vec<u64> = (10..=next).map(|_| q.get_timeout(PROMPT).unwrap()).collect();
    assert_eq!(
        &rest[rest.len() - 2..],
        &[next - 1, next],
        "one thread's last two puts arrived in the wrong order"
    );
}

/// Items put by a child just before it returns are delivered: the child's
/// exit waits for its outbox.
#[test]
fn a_child_that_returns_right_after_putting_delivers_everything() {
    if !crate::support::alone() {
        return;
    }
    const N: u64 = 50_000;
    let q = Queue::<u64>::new().unwrap();
    let mut p = start_daemon(Process::new(put_range, (q.clone(), 0, N)));
    for i in 0..N {
        match q.get_timeout(STARTUP) {
            Ok(v) => assert_eq!(v, i),
            Err(e) => {
                panic!("item {i} of {N} never arrived ({e}); child: {p:?}, alive: {}", p.is_alive())
            }
        }
    }
    join_ok(&mut p);
    assert_eq!(q.get_nowait().unwrap_err().kind(), ErrorKind::Empty);
}

// --- large items, handles in items, pools ------------------------------------------

fn echo_blobs(q: Queue<Vec<u8>>, back: Queue<Vec<u8>>, n: usize) {
    for _ in 0..n {
        back.put(q.get_timeout(STARTUP).unwrap()).unwrap();
    }
}

fn blob(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

/// Items around the inline limit (32 KiB) and far above it (16 MiB, in shared
/// memory) survive a round trip through a child intact, and the parent holds
/// no shared-memory file once it has taken them.
#[test]
fn large_items_round_trip_through_a_child_intact() {
    if !crate::support::alone() {
        return;
    }
    let sizes: Vec<usize> =
        [0usize, 1, 32 * 1024 - 16, 32 * 1024, 32 * 1024 + 16, 1 << 20, 16 << 20]
            .into_iter()
            .flat_map(|s| [s, s.saturating_sub(1), s + 1])
            .collect();
    let (out, back) = (Queue::<Vec<u8>>::new().unwrap(), Queue::<Vec<u8>>::new().unwrap());
    let memfds = memfd_count();
    let mut p = start_daemon(Process::new(echo_blobs, (out.clone(), back.clone(), sizes.len())));
    for (i, &len) in sizes.iter().enumerate() {
        out.put(blob(len, i as u8)).unwrap();
    }
    for (i, &len) in sizes.iter().enumerate() {
        let got = back.get_timeout(STARTUP).unwrap();
        assert_eq!(got.len(), len);
        assert!(got == blob(len, i as u8), "item {i} of {len} bytes came back changed");
    }
    join_ok(&mut p);
    assert_eq!(memfd_count(), memfds, "large items left shared-memory files open");
}

fn forward_through_inner(q: Queue<(Queue<u32>, Event, Vec<u8>)>) {
    let (inner, done, payload) = q.get_timeout(STARTUP).unwrap();
    inner.put(payload.len() as u32).unwrap();
    done.set();
}

/// Handles travel inside items, in small and in large (shared-memory) ones.
#[test]
fn handles_travel_inside_items() {
    if !crate::support::alone() {
        return;
    }
    let q = Queue::<(Queue<u32>, Event, Vec<u8>)>::new().unwrap();
    for len in [10usize, 4 << 20] {
        let (inner, done) = (Queue::<u32>::new().unwrap(), Event::new().unwrap());
        let mut p = start_daemon(Process::new(forward_through_inner, q.clone()));
        q.put((inner.clone(), done.clone(), vec![7; len])).unwrap();
        assert!(done.wait_timeout(STARTUP));
        assert_eq!(inner.get_timeout(PROMPT).unwrap(), len as u32);
        join_ok(&mut p);
    }
}

fn pool_put(q: Queue<u64>, from: u64) -> u32 {
    put_range(q, from, from + 1000);
    std::process::id()
}

fn pool_make_queue(x: u64) -> Queue<u64> {
    let q = Queue::new().unwrap();
    q.put(x * 2).unwrap();
    q
}

/// Queues passed to pool tasks work there, and a queue a task creates comes
/// back to the parent as its result, item included.
#[test]
fn queues_travel_to_pool_tasks_and_back() {
    if !crate::support::alone() {
        return;
    }
    let pool = Pool::new(2).unwrap();
    let q = Queue::<u64>::new().unwrap();
    pool.apply(pool_put, (q.clone(), 0)).unwrap();
    let rs: Vec<_> = (1..4).map(|k| pool.apply_async(pool_put, (q.clone(), k * 1000))).collect();
    for r in rs {
        r.get_timeout(STARTUP).unwrap();
    }
    let mut got: Vec<u64> = (0..4000).map(|_| q.get_timeout(STARTUP).unwrap()).collect();
    got.sort_unstable();
    assert_eq!(got, (0..4000).collect::<Vec<_>>());
    assert!(q.get_nowait().is_err());

    let made = pool.apply(pool_make_queue, 21).unwrap();
    assert_eq!(made.get_timeout(PROMPT).unwrap(), 42);
    made.put(5).unwrap();
    assert_eq!(made.get_timeout(PROMPT).unwrap(), 5);
}

/// A consumer blocked in `get` in another process is woken by a put here.
#[test]
fn a_blocked_get_in_a_child_wakes_on_put() {
    if !crate::support::alone() {
        return;
    }
    let q = Queue::<u64>::new().unwrap();
    let beacon = Beacon::new();
    let mut p = start_daemon(Process::new(get_one_and_report, (q.clone(), beacon.path())));
    assert!(wait_child_blocked_in(p.pid().unwrap(), FUTEX), "the child never blocked in get");
    let put_at = Instant::now();
    q.put(99).unwrap();
    let msg = beacon.recv(PROMPT, "the item");
    assert!(put_at.elapsed() < PROMPT);
    assert_eq!(msg, format!("{} 99", p.pid().unwrap()));
    join_ok(&mut p);
}

// --- iterators -------------------------------------------------------------------

#[test]
fn try_iter_takes_what_is_there_and_iter_timeout_waits_for_a_child_until_quiet() {
    if !crate::support::alone() {
        return;
    }
    bounded(STARTUP * 2, "queue iterators", || {
        let q = Queue::<u64>::new().unwrap();
        for i in 0..5 {
            q.put(i).unwrap();
        }
        // A few small items fit the socket buffer: they are in the queue
        // once `put` returns (no outbox in between).
        let now: Vec<u64> = q.try_iter().map(Result::unwrap).collect();
        assert_eq!(now, [0, 1, 2, 3, 4]);
        assert_eq!(q.try_iter().count(), 0, "nothing left");

        let mut p = start_daemon(Process::new(put_range, (q.clone(), 100, 150)));
        // Waits for the child's items, then ends once none comes for a while.
        let got: Vec<u64> = q.iter_timeout(STARTUP).take(50).map(Result::unwrap).collect();
        assert_eq!(got, (100..150).collect::<Vec<_>>(), "one producer's order is kept");
        join_ok(&mut p);
        let t = Instant::now();
        assert_eq!(q.iter_timeout(SHORT).count(), 0);
        assert!(t.elapsed() >= SHORT, "it waited for the timeout");
    });
}

#[test]
fn iter_ends_once_the_handle_is_closed() {
    if !crate::support::alone() {
        return;
    }
    bounded(PROMPT * 3, "queue iter and close", || {
        let q = Queue::<u32>::new().unwrap();
        for i in 0..10 {
            q.put(i).unwrap();
        }
        let mut seen = Vec::new();
        for item in q.iter() {
            seen.push(item.unwrap());
            if seen.len() == 3 {
                q.close();
            }
        }
        assert_eq!(seen, [0, 1, 2]);
    });
}
