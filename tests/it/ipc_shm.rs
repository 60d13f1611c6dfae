//! `Value` and `Array` as CPython's `_TestValue` and `_TestArray` pin them
//! down (a child's writes are seen by the parent, with and without a lock,
//! `get_lock`, arrays from a size), and that shared resources are cleaned up:
//! nothing ever appears in /dev/shm, and every shared-memory file, mapping
//! and descriptor is gone from this process once its handles are dropped.

use std::collections::BTreeSet;
use std::time::Duration;

use multiproc::{
    pipe, pipe_one_way, Array, Barrier, BoundedSemaphore, Condition, Connection, ErrorKind, Event,
    JoinableQueue, Lock, Pool, Process, Queue, RLock, Semaphore, Value,
};

use crate::ipc_util::{
    bounded, dev_shm, fd_count, fd_targets, join_ok, memfd_count, memfd_mapping_count, send_beacon,
    start_daemon, Beacon, PROMPT, STARTUP,
};

// --- Value -------------------------------------------------------------------------

/// CPython's `codes_values`: ('i', 4343, 24234), ('d', 3.625, -4.25),
/// ('h', -232, 234), ('q', 2**33, 2**34), ('c', 'x', 'y').
type Values = (Value<i32>, Value<f64>, Value<i16>, Value<i64>, Value<u8>);

fn make_values(raw: bool) -> Values {
    if raw {
        (
            Value::new_raw(4343).unwrap(),
            Value::new_raw(3.625).unwrap(),
            Value::new_raw(-232).unwrap(),
            Value::new_raw(1 << 33).unwrap(),
            Value::new_raw(b'x').unwrap(),
        )
    } else {
        (
            Value::new(4343).unwrap(),
            Value::new(3.625).unwrap(),
            Value::new(-232).unwrap(),
            Value::new(1 << 33).unwrap(),
            Value::new(b'x').unwrap(),
        )
    }
}

/// CPython's `_TestValue._test`.
fn write_values((i, d, h, q, c): Values) {
    i.set(24234);
    d.set(-4.25);
    h.set(234);
    q.set(1 << 34);
    c.set(b'y');
}

/// CPython's `test_value` and `test_rawvalue`.
#[test]
fn values_a_child_writes_are_seen_by_the_parent() {
    if !crate::support::alone() {
        return;
    }
    for raw in [false, true] {
        let v = make_values(raw);
        assert_eq!(
            (v.0.get(), v.1.get(), v.2.get(), v.3.get(), v.4.get()),
            (4343, 3.625, -232, 1 << 33, b'x')
        );
        let mut p = start_daemon(Process::new(write_values, v.clone()));
        join_ok(&mut p);
        assert_eq!(
            (v.0.get(), v.1.get(), v.2.get(), v.3.get(), v.4.get()),
            (24234, -4.25, 234, 1 << 34, b'y')
        );
    }
}

/// CPython's `test_getobj_getlock`: a value has its lock unless made raw; a
/// raw value's `lock()` is an error, not a silent unlocked access.
#[test]
fn value_lock_and_get_lock() {
    if !crate::support::alone() {
        return;
    }
    let v = Value::new(5i32).unwrap();
    assert!(v.get_lock().is_some());
    {
        let mut g = v.lock().unwrap();
        assert_eq!(*g, 5);
        *g += 10;
        // Held: another thread cannot take the value's lock.
        let v2 = v.clone();
        let free =
            std::thread::spawn(move || v2.get_lock().unwrap().try_acquire().unwrap().is_some());
        assert!(!free.join().unwrap());
    }
    assert_eq!(v.get(), 15);
    assert!(
        v.get_lock().unwrap().try_acquire().unwrap().is_some(),
        "dropping the guard released it"
    );
    assert_eq!(format!("{v:?}"), "Value(15)");

    let raw = Value::new_raw(5i32).unwrap();
    assert!(raw.get_lock().is_none());
    let e = raw.lock().map(|_| ()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidState, "{e}");
    raw.set(6);
    assert_eq!(raw.get(), 6);

    let arr = Array::from_slice_raw(&[1u32, 2]).unwrap();
    assert!(arr.get_lock().is_none());
    assert_eq!(arr.lock().map(|_| ()).unwrap_err().kind(), ErrorKind::InvalidState);
}

fn add_under_value_lock(v: Value<u64>, n: u32) {
    for _ in 0..n {
        *v.lock().unwrap() += 1;
    }
}

/// Read-modify-writes under a value's lock from 4 processes add up.
#[test]
fn increments_under_a_values_lock_add_up_across_processes() {
    if !crate::support::alone() {
        return;
    }
    let v = Value::new(0u64).unwrap();
    let mut ps: Vec<Process> = (0..4)
        .map(|_| start_daemon(Process::new(add_under_value_lock, (v.clone(), 2000))))
        .collect();
    for p in &mut ps {
        join_ok(p);
    }
    assert_eq!(v.get(), 8000);
}

fn hold_value_lock_until_killed(v: Value<u32>, beacon: String) {
    let mut g = v.lock().unwrap();
    *g = 1; // half-way through an update
    std::mem::forget(g);
    send_beacon(&beacon, "locked");
    std::thread::sleep(Duration::from_secs(60));
}

/// A value whose lock holder was killed: the next `lock()` gets it, and the
/// value's lock tells the first acquirer that the owner died.
#[test]
fn a_value_locked_by_a_killed_process_is_usable() {
    if !crate::support::alone() {
        return;
    }
    let v = Value::new(0u32).unwrap();
    let beacon = Beacon::new();
    let mut p =
        start_daemon(Process::new(hold_value_lock_until_killed, (v.clone(), beacon.path())));
    assert_eq!(beacon.recv(STARTUP, "the child's lock"), "locked");
    p.kill().unwrap();
    assert!(p.join_timeout(PROMPT).unwrap());
    let v2 = v.clone();
    let (died, seen) = bounded(PROMPT, "the value's lock after its holder died", move || {
        let g = v2.get_lock().unwrap().acquire().unwrap();
        let died = g.previous_owner_died();
        drop(g);
        (died, *v2.lock().unwrap())
    });
    assert!(died);
    assert_eq!(seen, 1);
}

/// Plain types beyond CPython's codes: u128, f32, usize and arrays.
#[test]
fn values_of_every_plain_type_round_trip() {
    if !crate::support::alone() {
        return;
    }
    type Plains = (Value<u128>, Value<f32>, Value<[u8; 16]>, Value<[i64; 3]>);
    fn write((a, b, c, d): Plains) {
        a.set(u128::MAX - 7);
        b.set(-0.5);
        c.set(*b"sixteen bytes!!!");
        d.set([i64::MIN, 0, i64::MAX]);
    }
    let vals = (
        Value::new(0u128).unwrap(),
        Value::new(0f32).unwrap(),
        Value::new([0u8; 16]).unwrap(),
        Value::new_raw([0i64; 3]).unwrap(),
    );
    let mut p = start_daemon(Process::new(write, vals.clone()));
    join_ok(&mut p);
    assert_eq!(vals.0.get(), u128::MAX - 7);
    assert_eq!(vals.1.get(), -0.5);
    assert_eq!(&vals.2.get(), b"sixteen bytes!!!");
    assert_eq!(vals.3.get(), [i64::MIN, 0, i64::MAX]);
}

// --- Array -------------------------------------------------------------------------

/// CPython's `_TestArray.f`: prefix sums in place, under the lock.
fn prefix_sums(arr: Array<i32>) {
    let mut g = arr.lock().unwrap();
    for i in 1..g.len() {
        g[i] += g[i - 1];
    }
}

/// The same for an array without a lock.
fn prefix_sums_raw(arr: Array<i32>) {
    for i in 1..arr.len() {
        arr.set(i, arr.get(i).unwrap() + arr.get(i - 1).unwrap()).unwrap();
    }
}

/// CPython's `test_array` and `test_rawarray`.
#[test]
fn arrays_a_child_writes_are_seen_by_the_parent() {
    if !crate::support::alone() {
        return;
    }
    for raw in [false, true] {
        let mut seq = vec![680, 626, 934, 821, 150, 233, 548, 982, 714, 831];
        let arr = if raw { Array::from_slice_raw(&seq) } else { Array::from_slice(&seq) }.unwrap();
        assert_eq!(arr.len(), seq.len());
        assert!(!arr.is_empty());
        assert_eq!(arr.get(3).unwrap(), seq[3]);
        assert_eq!(&arr.to_vec()[2..7], &seq[2..7]);
        for (i, v) in (4..8).zip([1, 2, 3, 4]) {
            arr.set(i, v).unwrap();
            seq[i] = v;
        }
        assert_eq!(arr.to_vec(), seq);
        for i in 1..seq.len() {
            seq[i] += seq[i - 1];
        }
        let mut p = start_daemon(if raw {
            Process::new(prefix_sums_raw, arr.clone())
        } else {
            Process::new(prefix_sums, arr.clone())
        });
        join_ok(&mut p);
        assert_eq!(arr.to_vec(), seq);
    }
}

fn array_len(a: Array<u64>) -> usize {
    a.len()
}

/// CPython's `test_array_from_size`, an empty array, and indices out of range.
#[test]
fn arrays_from_a_size_empty_arrays_and_bad_indices() {
    if !crate::support::alone() {
        return;
    }
    let zeros = Array::from_slice(&[0u64; 10]).unwrap();
    assert_eq!(zeros.to_vec(), vec![0; 10]);
    assert_eq!(zeros.get(10).unwrap_err().kind(), ErrorKind::InvalidArgument);
    assert_eq!(zeros.set(10, 1).unwrap_err().kind(), ErrorKind::InvalidArgument);
    assert_eq!(zeros.get(usize::MAX).unwrap_err().kind(), ErrorKind::InvalidArgument);
    assert_eq!(zeros.to_vec(), vec![0; 10], "a failed set changed nothing");

    let empty = Array::<u64>::from_slice(&[]).unwrap();
    assert!(empty.is_empty());
    assert_eq!(empty.len(), 0);
    assert!(empty.to_vec().is_empty());
    assert_eq!(empty.get(0).unwrap_err().kind(), ErrorKind::InvalidArgument);
    assert!(empty.lock().unwrap().is_empty());
    let pool = Pool::new(1).unwrap();
    assert_eq!(pool.apply(array_len, empty.clone()).unwrap(), 0);
    assert_eq!(pool.apply(array_len, zeros.clone()).unwrap(), 10);
}

fn fill_in_pool(a: Array<u32>) -> u32 {
    for i in 0..a.len() {
        a.set(i, i as u32 * 2).unwrap();
    }
    a.len() as u32
}

fn bump_slot((a, slot, n): (Array<u64>, usize, u32)) {
    for _ in 0..n {
        let mut g = a.lock().unwrap();
        g[slot] += 1;
        g[0] += 1;
    }
}

/// Arrays handed to pool tasks and processes: their writes land here, and
/// updates under the array's lock from several processes add up.
#[test]
fn arrays_travel_to_pool_tasks_and_processes() {
    if !crate::support::alone() {
        return;
    }
    let a = Array::from_slice(&[0u32; 4]).unwrap();
    assert_eq!(Pool::new(1).unwrap().apply(fill_in_pool, a.clone()).unwrap(), 4);
    assert_eq!(a.to_vec(), vec![0, 2, 4, 6]);

    let counts = Array::from_slice(&[0u64; 4]).unwrap();
    let mut ps: Vec<Process> = (1..4)
        .map(|slot| start_daemon(Process::new(bump_slot, (counts.clone(), slot, 1000))))
        .collect();
    for p in &mut ps {
        join_ok(p);
    }
    assert_eq!(counts.to_vec(), vec![3000, 1000, 1000, 1000]);
}

// --- cleanup -----------------------------------------------------------------------

/// One of every shared object.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
struct Everything {
    queue: Queue<Vec<u8>>,
    joinable: JoinableQueue<u32>,
    bounded: Queue<u32>,
    lock: Lock,
    rlock: RLock,
    sem: Semaphore,
    bsem: BoundedSemaphore,
    event: Event,
    cond: Condition,
    barrier: Barrier,
    value: Value<u64>,
    array: Array<u32>,
}

impl Everything {
    fn new() -> Everything {
        Everything {
            queue: Queue::new().unwrap(),
            joinable: JoinableQueue::new().unwrap(),
            bounded: Queue::bounded(2).unwrap(),
            lock: Lock::new().unwrap(),
            rlock: RLock::new().unwrap(),
            sem: Semaphore::new(1).unwrap(),
            bsem: BoundedSemaphore::new(1).unwrap(),
            event: Event::new().unwrap(),
            cond: Condition::new().unwrap(),
            barrier: Barrier::new(2).unwrap(),
            value: Value::new(0).unwrap(),
            array: Array::from_slice(&[0; 8]).unwrap(),
        }
    }
}

/// Uses every object once (in whichever process it runs), and sends a large
/// item (shared-memory path) and a small one.
fn use_everything(e: Everything, conn: Connection<Vec<u8>>) {
    let big = e.queue.get_timeout(STARTUP).unwrap();
    e.queue.put(big).unwrap();
    e.joinable.put(1).unwrap();
    e.bounded.put(2).unwrap();
    drop(e.lock.acquire().unwrap());
    drop(e.rlock.acquire().unwrap());
    drop(e.sem.acquire());
    drop(e.bsem.acquire());
    e.event.set();
    e.cond.acquire().unwrap().notify_all();
    e.barrier.wait(Some(STARTUP)).unwrap();
    *e.value.lock().unwrap() += 1;
    e.array.set(3, 3).unwrap();
    conn.send_bytes(&vec![1; 1 << 20]).unwrap();
}

fn use_everything_in_pool((e, conn): (Everything, Connection<Vec<u8>>)) -> u32 {
    use_everything(e, conn);
    std::process::id()
}

/// Runs the whole exercise: every object used here, in a child process and
/// in a pool task, with large and small items both ways.
fn exercise(during: impl Fn()) {
    let e = Everything::new();
    let (mine, theirs) = pipe::<Vec<u8>>().unwrap();
    let mut p = start_daemon(Process::new(use_everything, (e.clone(), theirs)));
    e.queue.put(vec![7; 4 << 20]).unwrap();
    e.barrier.wait(Some(STARTUP)).unwrap();
    assert_eq!(mine.recv_bytes().unwrap().len(), 1 << 20);
    assert_eq!(e.queue.get_timeout(STARTUP).unwrap().len(), 4 << 20);
    join_ok(&mut p);
    during();

    let pool = Pool::new(1).unwrap();
    let (mine2, theirs2) = pipe::<Vec<u8>>().unwrap();
    let r = pool.apply_async(use_everything_in_pool, (e.clone(), theirs2));
    e.queue.put(vec![8; 4 << 20]).unwrap();
    e.barrier.wait(Some(STARTUP)).unwrap();
    assert_eq!(mine2.recv_bytes().unwrap().len(), 1 << 20);
    r.get_timeout(STARTUP).unwrap();
    assert_eq!(e.queue.get_timeout(STARTUP).unwrap().len(), 4 << 20);
    during();
    drop(pool);

    assert_eq!(e.value.get(), 2);
    assert_eq!(e.joinable.qsize() + e.bounded.qsize(), 4);
    for _ in 0..2 {
        e.joinable.get_timeout(PROMPT).unwrap();
        e.joinable.task_done().unwrap();
        e.bounded.get_timeout(PROMPT).unwrap();
    }
    assert!(e.joinable.join_timeout(PROMPT));
    // Items left on a queue that is then dropped, large and small.
    e.queue.put(vec![9; 1 << 20]).unwrap();
    e.bounded.put(3).unwrap();
    during();
}

/// Nothing any of the shared objects does creates a file in /dev/shm: not
/// while they are in use, not after.
#[test]
fn nothing_appears_in_dev_shm() {
    if !crate::support::alone() {
        return;
    }
    let before = dev_shm();
    let check = |when: &str| {
        let now = dev_shm();
        let new: BTreeSet<_> = now.difference(&before).collect();
        assert!(new.is_empty(), "new in /dev/shm {when}: {new:?}");
    };
    exercise(|| check("while the objects are in use"));
    check("after the objects were dropped");
}

/// Once every handle is dropped, this process holds no shared-memory file,
/// no mapping of one and no other descriptor it did not hold before.
#[test]
fn shared_memory_and_descriptors_are_released_with_the_handles() {
    if !crate::support::alone() {
        return;
    }
    // A first round starts whatever lives as long as the process (the
    // spawner thread and the like).
    exercise(|| {});
    let (memfds, maps, fds) = (memfd_count(), memfd_mapping_count(), fd_count());
    let targets = fd_targets();

    exercise(|| {
        assert!(memfd_count() > memfds, "the objects' shared memory is not visible here");
        assert!(memfd_mapping_count() > maps);
    });
    let released = (memfd_count(), memfd_mapping_count(), fd_count());
    let mut now = fd_targets();
    now.retain(|t| !targets.contains(t));
    assert_eq!(released.0, memfds, "shared-memory files still open; new descriptors: {now:?}");
    assert_eq!(released.1, maps, "shared-memory mappings still mapped");
    assert_eq!(released.2, fds, "descriptors still open: {now:?}");

    // Each kind alone, including a queue item in shared memory.
    let q = Queue::<Vec<u8>>::new().unwrap();
    q.put(vec![1; 1 << 20]).unwrap();
    assert_eq!(q.get_timeout(PROMPT).unwrap().len(), 1 << 20);
    drop(q);
    drop(pipe_one_way::<u8>().unwrap());
    drop(Everything::new());
    assert_eq!((memfd_count(), memfd_mapping_count(), fd_count()), (memfds, maps, fds));
}
