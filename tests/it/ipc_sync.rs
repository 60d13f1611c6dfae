//! Locks, semaphores, events, conditions and barriers as CPython's
//! `_TestLock`, `_TestSemaphore`, `_TestEvent`, `_TestCondition` and
//! `_TestBarrier` pin them down, across processes, and what this crate adds:
//! a process that dies holding a `Lock` or `RLock` does not block the next
//! acquirer, which learns it from its guard; misuse (relocking a `Lock`,
//! releasing what is not held, over-releasing a `BoundedSemaphore`) is an
//! error rather than a deadlock.

use std::time::{Duration, Instant};

use multiproc::{
    Array, Barrier, BoundedSemaphore, Condition, ErrorKind, Event, Lock, Pool, Process, RLock,
    Semaphore, Value,
};

use crate::ipc_util::{
    assert_prompt, assert_waited, bounded, gettid, join_ok, send_beacon, start_daemon, timed,
    wait_child_blocked_in, wait_thread_blocked_in, Beacon, FUTEX, PROMPT, STARTUP,
};

const SHORT: Duration = Duration::from_millis(200);

/// Runs `f` on a new thread, hands back its thread id at once, and its
/// result through the join handle.
fn spawn_with_tid<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> (u32, std::thread::JoinHandle<T>) {
    let (tx, rx) = std::sync::mpsc::channel();
    let h = std::thread::spawn(move || {
        tx.send(gettid()).unwrap();
        f()
    });
    (rx.recv().unwrap(), h)
}

// --- children ------------------------------------------------------------------

/// Exits 0 if the lock was free (releasing it again), 1 if not.
fn try_lock_in_child(lock: Lock) {
    let free = lock.try_acquire().unwrap().is_some();
    std::process::exit(i32::from(!free));
}

/// Exits 0 if the lock was free (releasing it again), 1 if not.
fn try_rlock_in_child(lock: RLock) {
    let free = lock.try_acquire().unwrap().is_some();
    std::process::exit(i32::from(!free));
}

fn hold_lock_until_killed(lock: Lock, beacon: String) {
    assert!(lock.acquire_raw(true, None).unwrap());
    send_beacon(&beacon, "locked");
    std::thread::sleep(Duration::from_secs(60));
}

fn hold_rlock_twice_until_killed(lock: RLock, beacon: String) {
    assert!(lock.acquire_raw(true, None).unwrap());
    let _inner = lock.acquire().unwrap();
    send_beacon(&beacon, "locked");
    std::thread::sleep(Duration::from_secs(60));
}

fn hold_condition_until_killed(cond: Condition, beacon: String) {
    let _g = cond.acquire().unwrap();
    send_beacon(&beacon, "locked");
    std::thread::sleep(Duration::from_secs(60));
}

fn hold_lock_until_released(lock: Lock, locked: Event, release: Event) {
    let _g = lock.acquire().unwrap();
    locked.set();
    release.wait();
}

/// Takes the lock and returns without releasing it (the handle is dropped
/// as the function returns; then the process exits).
fn take_lock_and_return(lock: Lock) {
    assert!(lock.acquire_raw(true, None).unwrap());
}

/// Takes the lock and exits while still holding it and its handle.
fn take_lock_and_exit(lock: Lock) {
    assert!(lock.acquire_raw(true, None).unwrap());
    std::process::exit(0);
}

fn count_under_lock(lock: Lock, counter: Value<u64>, n: u32) {
    for _ in 0..n {
        let _g = lock.acquire().unwrap();
        counter.set(counter.get() + 1);
    }
}

// --- Lock and RLock --------------------------------------------------------------

/// CPython's `test_lock` (but for its non-blocking acquire by the holder, in
/// the next test) and `test_lock_context`.
#[test]
fn lock_acquire_and_release() {
    let lock = Lock::new().unwrap();
    assert!(lock.acquire_raw(true, None).unwrap());
    let l2 = lock.clone();
    let busy = std::thread::spawn(move || l2.acquire_raw(false, None).unwrap()).join().unwrap();
    assert!(!busy, "a held lock is not free");
    lock.release().unwrap();
    let e = lock.release().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidState, "{e}");

    {
        let g = lock.acquire().unwrap();
        assert!(!g.previous_owner_died());
        let l2 = lock.clone();
        let free = std::thread::spawn(move || l2.try_acquire().unwrap().is_some());
        assert!(!free.join().unwrap(), "a held lock is not free");
    }
    let g = lock.try_acquire().unwrap().expect("free after the guard is dropped");
    drop(g);
    assert!(lock.acquire_timeout(SHORT).unwrap().is_some());
    let mut p = start_daemon(Process::new(try_lock_in_child, lock.clone()));
    join_ok(&mut p);
}

/// CPython's `test_lock` checks `lock.acquire(False) == False` in the thread
/// that holds the lock: `acquire_raw` is documented as Python's
/// `acquire(block, timeout)`, so a non-blocking attempt by the holder is
/// `Ok(false)`, not an error.
#[test]
fn a_non_blocking_acquire_by_the_holder_returns_false() {
    let lock = Lock::new().unwrap();
    assert!(lock.acquire_raw(true, None).unwrap());
    let r = lock.acquire_raw(false, None);
    assert!(matches!(r, Ok(false)), "acquire_raw(false) by the holder: {r:?}");
    lock.release().unwrap();
}

/// Taking a `Lock` this thread already holds, blocking or with a timeout, is
/// an error, promptly — not a deadlock.
#[test]
fn relocking_a_lock_in_the_same_thread_is_an_error_not_a_deadlock() {
    let lock = Lock::new().unwrap();
    let (kinds, tried) = bounded(PROMPT, "relocking", move || {
        let _g = lock.acquire().unwrap();
        // Unbounded waits could never end: errors.
        let blocking = lock.acquire().map(|_| ()).unwrap_err().kind();
        let raw = lock.acquire_raw(true, None).unwrap_err().kind();
        // Bounded ones simply do not get the lock, as Python's acquire
        // with a timeout returns False.
        let timed = lock.acquire_timeout(SHORT).unwrap().is_none();
        let raw_timed = !lock.acquire_raw(true, Some(SHORT)).unwrap();
        let tried = lock.try_acquire().unwrap().is_none();
        ([blocking, raw], [timed, raw_timed, tried])
    });
    assert_eq!(kinds, [ErrorKind::InvalidState; 2]);
    assert_eq!(tried, [true; 3], "a bounded acquire by the holder took the lock again");
}

/// Releasing a lock another thread holds is an error and leaves it held: the
/// documented behaviour of these owner-checked mutexes (CPython's
/// semaphore-based `Lock` lets any thread or process release it).
#[test]
fn releasing_a_lock_another_thread_holds_is_an_error() {
    let lock = Lock::new().unwrap();
    let (took_tx, took_rx) = std::sync::mpsc::channel();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let l2 = lock.clone();
    let holder = std::thread::spawn(move || {
        assert!(l2.acquire_raw(true, None).unwrap());
        took_tx.send(()).unwrap();
        go_rx.recv().unwrap();
        l2.release().unwrap();
    });
    took_rx.recv().unwrap();
    assert_eq!(lock.release().unwrap_err().kind(), ErrorKind::InvalidState);
    assert!(lock.try_acquire().unwrap().is_none(), "the failed release freed the lock");
    go_tx.send(()).unwrap();
    holder.join().unwrap();
    assert!(lock.try_acquire().unwrap().is_some());
}

/// Mutual exclusion across processes: 4 children × 2,000 unlocked
/// read-modify-writes of a shared counter, each under the lock, add up.
#[test]
fn lock_excludes_other_processes() {
    let lock = Lock::new().unwrap();
    let counter = Value::new_raw(0u64).unwrap();
    let mut ps: Vec<Process> = (0..4)
        .map(|_| {
            start_daemon(Process::new(count_under_lock, (lock.clone(), counter.clone(), 2000)))
        })
        .collect();
    for p in &mut ps {
        join_ok(p);
    }
    assert_eq!(counter.get(), 8000);
}

/// While another process holds the lock: try fails at once, a timed acquire
/// fails after its timeout, and a blocked acquire goes through as soon as it
/// is released.
#[test]
fn acquire_waits_for_another_process_to_release() {
    let lock = Lock::new().unwrap();
    let (locked, release) = (Event::new().unwrap(), Event::new().unwrap());
    let mut p = start_daemon(Process::new(
        hold_lock_until_released,
        (lock.clone(), locked.clone(), release.clone()),
    ));
    assert!(locked.wait_timeout(STARTUP));
    let (r, took) = timed(|| lock.try_acquire().unwrap().is_none());
    assert!(r);
    assert_prompt(took, "try_acquire of a held lock");
    let (r, took) = timed(|| lock.acquire_timeout(SHORT).unwrap().is_none());
    assert!(r);
    assert_waited(took, SHORT, "acquire_timeout of a held lock");
    let (r, took) = timed(|| lock.acquire_raw(true, Some(Duration::from_millis(100))).unwrap());
    assert!(!r);
    assert_waited(took, Duration::from_millis(100), "acquire_raw with a timeout");

    let l2 = lock.clone();
    let (tid, waiter) = spawn_with_tid(move || {
        let g = l2.acquire().unwrap();
        (g.previous_owner_died(), Instant::now())
    });
    assert!(wait_thread_blocked_in(tid, FUTEX), "acquire never blocked");
    let released = Instant::now();
    release.set();
    let (died, at) = bounded(STARTUP, "the blocked acquire", move || waiter.join().unwrap());
    assert!(!died, "the holder released the lock; it did not die");
    assert!(at.duration_since(released) < PROMPT);
    join_ok(&mut p);
}

/// `Duration::MAX` is "no bound" elsewhere in the crate (queues, events,
/// barriers): a timed acquire with it waits for a held lock, it does not
/// give up at once.
#[test]
fn acquire_timeout_of_duration_max_waits_for_the_lock() {
    let lock = Lock::new().unwrap();
    let (locked, release) = (Event::new().unwrap(), Event::new().unwrap());
    let mut p = start_daemon(Process::new(
        hold_lock_until_released,
        (lock.clone(), locked.clone(), release.clone()),
    ));
    assert!(locked.wait_timeout(STARTUP));
    let l2 = lock.clone();
    let (tid, waiter) = spawn_with_tid(move || {
        let (g, took) = timed(|| l2.acquire_timeout(Duration::MAX).unwrap());
        (g.is_some(), took)
    });
    // Blocked, or (wrongly) already given up.
    let pid = std::process::id();
    let settled = crate::ipc_util::eventually(STARTUP, || {
        waiter.is_finished() || crate::ipc_util::is_blocked_in(pid, tid, FUTEX)
    });
    let blocked = settled && !waiter.is_finished();
    release.set();
    let (got, took) =
        bounded(STARTUP, "acquire_timeout(Duration::MAX)", move || waiter.join().unwrap());
    assert!(got, "acquire_timeout(Duration::MAX) gave up after {took:?}");
    assert!(blocked);
    join_ok(&mut p);
}

/// A process SIGKILLed while holding a Lock: the acquirer blocked on it gets
/// it promptly, and its guard says the previous owner died. The lock then
/// works normally, in this process and in others.
#[test]
fn a_process_killed_holding_a_lock_does_not_block_the_next_acquirer() {
    let lock = Lock::new().unwrap();
    let beacon = Beacon::new();
    let mut holder =
        start_daemon(Process::new(hold_lock_until_killed, (lock.clone(), beacon.path())));
    assert_eq!(beacon.recv(STARTUP, "the child's lock"), "locked");
    assert!(lock.try_acquire().unwrap().is_none());
    let l2 = lock.clone();
    let (tid, waiter) = spawn_with_tid(move || {
        let g = l2.acquire().unwrap();
        (g.previous_owner_died(), Instant::now())
    });
    assert!(wait_thread_blocked_in(tid, FUTEX), "acquire never blocked");
    let killed = Instant::now();
    holder.kill().unwrap();
    let (died, at) =
        bounded(STARTUP, "acquire after the holder died", move || waiter.join().unwrap());
    assert!(died, "the guard must say the previous owner died");
    assert!(at.duration_since(killed) < PROMPT, "took {:?}", at.duration_since(killed));
    assert!(holder.join_timeout(PROMPT).unwrap());
    assert_eq!(holder.exitcode(), Some(-libc::SIGKILL));

    let g = lock.acquire_timeout(PROMPT).unwrap().expect("the lock is free");
    assert!(!g.previous_owner_died(), "only the first acquirer after the death is told");
    drop(g);
    let mut p = start_daemon(Process::new(try_lock_in_child, lock.clone()));
    join_ok(&mut p);
}

/// The same for an RLock the dead process had taken twice: one acquire gets
/// it, and it is an ordinary RLock afterwards.
#[test]
fn a_process_killed_holding_an_rlock_does_not_block_the_next_acquirer() {
    let lock = RLock::new().unwrap();
    let beacon = Beacon::new();
    let mut holder =
        start_daemon(Process::new(hold_rlock_twice_until_killed, (lock.clone(), beacon.path())));
    assert_eq!(beacon.recv(STARTUP, "the child's lock"), "locked");
    assert!(lock.try_acquire().unwrap().is_none());
    let l2 = lock.clone();
    let (tid, waiter) = spawn_with_tid(move || {
        let g = l2.acquire_timeout(STARTUP).unwrap().expect("the lock within the bound");
        let died = g.previous_owner_died();
        let again = l2.acquire().unwrap(); // reentrant for its new owner
        drop(again);
        drop(g);
        (died, Instant::now())
    });
    assert!(wait_thread_blocked_in(tid, FUTEX), "acquire never blocked");
    let killed = Instant::now();
    holder.kill().unwrap();
    let (died, at) =
        bounded(STARTUP, "acquire after the holder died", move || waiter.join().unwrap());
    assert!(died, "the guard must say the previous owner died");
    assert!(at.duration_since(killed) < PROMPT);
    assert!(holder.join_timeout(PROMPT).unwrap());
    // Released as many times as taken: free for another process.
    let mut p = start_daemon(Process::new(try_rlock_in_child, lock.clone()));
    join_ok(&mut p);
    let g = lock.acquire().unwrap();
    assert!(!g.previous_owner_died());
}

/// A Condition's lock held by a killed process is handed on the same way.
#[test]
fn a_process_killed_holding_a_condition_does_not_block_the_next_acquirer() {
    let cond = Condition::new().unwrap();
    let beacon = Beacon::new();
    let mut holder =
        start_daemon(Process::new(hold_condition_until_killed, (cond.clone(), beacon.path())));
    assert_eq!(beacon.recv(STARTUP, "the child's lock"), "locked");
    holder.kill().unwrap();
    assert!(holder.join_timeout(PROMPT).unwrap());
    let c2 = cond.clone();
    let died = bounded(PROMPT, "acquire after the holder died", move || {
        let g = c2.acquire().unwrap();
        let died = g.previous_owner_died();
        g.notify_all();
        died
    });
    assert!(died);
}

/// A process that takes a Lock and returns without releasing it has exited
/// holding it: the next acquirer must get it (told that the owner died), as
/// for a killed holder, not wait forever.
#[test]
fn a_process_that_exits_holding_a_lock_does_not_block_the_next_acquirer() {
    let lock = Lock::new().unwrap();
    let mut p = start_daemon(Process::new(take_lock_and_return, lock.clone()));
    join_ok(&mut p);
    let l2 = lock.clone();
    let got = bounded(STARTUP, "acquire after the holder exited", move || {
        l2.acquire_timeout(Duration::from_secs(5)).unwrap().map(|g| g.previous_owner_died())
    });
    assert_eq!(got, Some(true), "the lock stayed held by a process that no longer exists");
}

/// The contrast to the test above: a process that exits holding the lock
/// while it still has the lock's handle hands it on.
#[test]
fn a_process_that_exits_holding_a_lock_and_its_handle_hands_it_on() {
    let lock = Lock::new().unwrap();
    let mut p = start_daemon(Process::new(take_lock_and_exit, lock.clone()));
    join_ok(&mut p);
    let l2 = lock.clone();
    let got = bounded(STARTUP, "acquire after the holder exited", move || {
        l2.acquire_timeout(Duration::from_secs(5)).unwrap().map(|g| g.previous_owner_died())
    });
    assert_eq!(got, Some(true));
}

/// CPython's `test_rlock`, and an RLock stays held (for other processes)
/// until released as many times as it was taken.
#[test]
fn rlock_is_reentrant() {
    let lock = RLock::new().unwrap();
    for _ in 0..3 {
        assert!(lock.acquire_raw(true, None).unwrap());
    }
    for _ in 0..3 {
        lock.release().unwrap();
    }
    assert_eq!(lock.release().unwrap_err().kind(), ErrorKind::InvalidState);

    let outer = lock.acquire().unwrap();
    let inner = lock.acquire().unwrap();
    assert!(lock.try_acquire().unwrap().is_some(), "the owner may take it again");
    let mut p = start_daemon(Process::new(try_rlock_in_child, lock.clone()));
    assert!(p.join_timeout(STARTUP).unwrap());
    assert_eq!(p.exitcode(), Some(1), "another process took a held RLock");
    drop(inner);
    let mut p = start_daemon(Process::new(try_rlock_in_child, lock.clone()));
    assert!(p.join_timeout(STARTUP).unwrap());
    assert_eq!(p.exitcode(), Some(1), "held once more: still not free");
    drop(outer);
    let mut p = start_daemon(Process::new(try_rlock_in_child, lock.clone()));
    join_ok(&mut p);
}

// --- Semaphore and BoundedSemaphore -------------------------------------------------

/// CPython's `_test_semaphore` on a semaphore of 2.
fn check_semaphore_of_two(sem: &Semaphore) {
    assert_eq!(sem.get_value(), 2);
    assert!(sem.acquire_raw(true, None));
    assert_eq!(sem.get_value(), 1);
    assert!(sem.acquire_raw(true, None));
    assert_eq!(sem.get_value(), 0);
    assert!(!sem.acquire_raw(false, None));
    assert_eq!(sem.get_value(), 0);
    sem.release().unwrap();
    assert_eq!(sem.get_value(), 1);
    sem.release().unwrap();
    assert_eq!(sem.get_value(), 2);
}

/// CPython's `test_semaphore`: a plain semaphore may be released past its
/// starting value.
#[test]
fn semaphore_counts_up_and_down() {
    let sem = Semaphore::new(2).unwrap();
    check_semaphore_of_two(&sem);
    sem.release().unwrap();
    assert_eq!(sem.get_value(), 3);
    sem.release().unwrap();
    assert_eq!(sem.get_value(), 4);
    {
        let _a = sem.acquire();
        let _b = sem.try_acquire().unwrap();
        assert_eq!(sem.get_value(), 2);
    }
    assert_eq!(sem.get_value(), 4, "guards give their units back");
}

/// CPython's `test_bounded_semaphore`, with the over-release CPython checks
/// where it can: an error, and the value stays.
#[test]
fn bounded_semaphore_refuses_to_be_released_past_its_start() {
    let sem = BoundedSemaphore::new(2).unwrap();
    check_semaphore_of_two(&sem);
    let e = sem.release().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidState, "{e}");
    assert_eq!(sem.get_value(), 2);
    let g = sem.acquire();
    assert_eq!(sem.get_value(), 1);
    drop(g);
    assert_eq!(sem.get_value(), 2);
    assert!(sem.release().is_err());
}

/// Python's `BoundedSemaphore(0).release()` raises ValueError: a bounded
/// semaphore that starts at 0 can never be released above 0.
#[test]
fn a_bounded_semaphore_of_zero_cannot_be_released() {
    let sem = BoundedSemaphore::new(0).unwrap();
    assert_eq!(sem.get_value(), 0);
    let r = sem.release();
    assert_eq!(sem.get_value(), 0, "released to {} (result {r:?})", sem.get_value());
    assert_eq!(r.unwrap_err().kind(), ErrorKind::InvalidState);
}

/// CPython's `_TestSemaphore.test_timeout`: a non-blocking acquire fails at
/// once whatever its timeout; a blocking one fails after its timeout.
#[test]
fn semaphore_acquire_timeouts() {
    let sem = Semaphore::new(0).unwrap();
    for (block, timeout) in [(false, None), (false, Some(SHORT))] {
        let (r, took) = timed(|| sem.acquire_raw(block, timeout));
        assert!(!r);
        assert_prompt(took, "a non-blocking acquire");
    }
    let (r, took) = timed(|| sem.acquire_raw(true, Some(SHORT)));
    assert!(!r);
    assert_waited(took, SHORT, "acquire_raw(true, 200 ms)");
    assert_eq!(sem.get_value(), 0);
}

/// A `try_acquire` or `acquire_timeout` that gets no unit must not change the
/// semaphore: no guard exists, so nothing may be given back.
#[test]
fn a_failed_guarded_acquire_leaves_the_semaphore_alone() {
    let sem = Semaphore::new(0).unwrap();
    assert!(sem.try_acquire().is_none());
    assert_eq!(sem.get_value(), 0, "a failed try_acquire released a unit it never took");
    let (r, took) = timed(|| sem.acquire_timeout(Duration::from_millis(100)).is_none());
    assert!(r);
    assert_waited(took, Duration::from_millis(100), "acquire_timeout(100 ms)");
    assert_eq!(sem.get_value(), 0, "a failed acquire_timeout released a unit it never took");
    assert!(sem.try_acquire().is_none(), "a semaphore of 0 handed out a unit");

    let held = Semaphore::new(1).unwrap();
    let _unit = held.acquire();
    for _ in 0..5 {
        assert!(held.try_acquire().is_none());
    }
    assert_eq!(held.get_value(), 0, "five failed tries made five units");
}

fn release_sem(sem: Semaphore) {
    sem.release().unwrap();
}

/// A release in another process wakes a blocked acquire here promptly.
#[test]
fn a_release_in_a_child_wakes_a_blocked_acquire() {
    let sem = Semaphore::new(0).unwrap();
    let s2 = sem.clone();
    let (tid, waiter) = spawn_with_tid(move || {
        let got = s2.acquire_raw(true, None);
        (got, Instant::now())
    });
    assert!(wait_thread_blocked_in(tid, FUTEX), "acquire never blocked");
    let mut p = start_daemon(Process::new(release_sem, sem.clone()));
    join_ok(&mut p);
    let (got, _) = bounded(PROMPT, "the blocked acquire", move || waiter.join().unwrap());
    assert!(got);
    assert_eq!(sem.get_value(), 0);
}

/// Holds a unit of `sem` for a moment, tracking how many holders there are.
fn use_semaphore(sem: Semaphore, stats: Array<u32>, rounds: u32) {
    for _ in 0..rounds {
        let _unit = sem.acquire();
        {
            let mut s = stats.lock().unwrap();
            s[0] += 1;
            s[1] = s[1].max(s[0]);
            s[2] += 1;
        }
        std::thread::sleep(Duration::from_millis(2)); // hold it a moment
        stats.lock().unwrap()[0] -= 1;
    }
}

/// A semaphore of 2 lets at most 2 of 5 processes in at once.
#[test]
fn a_semaphore_limits_how_many_processes_hold_it() {
    let sem = Semaphore::new(2).unwrap();
    let stats = Array::from_slice(&[0u32; 3]).unwrap(); // now, most, total
    let mut ps: Vec<Process> = (0..5)
        .map(|_| start_daemon(Process::new(use_semaphore, (sem.clone(), stats.clone(), 20))))
        .collect();
    for p in &mut ps {
        join_ok(p);
    }
    let s = stats.to_vec();
    assert_eq!(s[0], 0);
    assert!((1..=2).contains(&s[1]), "{} held a semaphore of 2 at once", s[1]);
    assert_eq!(s[2], 100);
    assert_eq!(sem.get_value(), 2);
}

// --- Event -------------------------------------------------------------------------

fn set_event(e: Event) {
    e.set();
}

fn wait_event(e: Event) {
    e.wait();
}

/// CPython's `test_event`.
#[test]
fn event_set_clear_and_wait() {
    let event = Event::new().unwrap();
    assert!(!event.is_set());
    let (r, took) = timed(|| event.wait_timeout(Duration::ZERO));
    assert!(!r);
    assert_prompt(took, "wait(0) on a clear event");
    let (r, took) = timed(|| event.wait_timeout(SHORT));
    assert!(!r);
    assert_waited(took, SHORT, "wait(200 ms) on a clear event");
    event.set();
    assert!(event.is_set());
    let (_, took) = timed(|| event.wait());
    assert_prompt(took, "wait() on a set event");
    let (r, took) = timed(|| event.wait_timeout(SHORT));
    assert!(r);
    assert_prompt(took, "wait(200 ms) on a set event");
    event.set();
    assert!(event.is_set(), "setting twice keeps it set");
    event.clear();
    assert!(!event.is_set());
    assert!(!event.wait_timeout(Duration::from_millis(50)));

    let e2 = event.clone();
    let (tid, waiter) = spawn_with_tid(move || {
        e2.wait();
        Instant::now()
    });
    assert!(wait_thread_blocked_in(tid, FUTEX), "wait() never blocked");
    let mut p = start_daemon(Process::new(set_event, event.clone()));
    join_ok(&mut p);
    bounded(PROMPT, "wait() after a child set the event", move || waiter.join().unwrap());
    assert!(event.is_set());
}

/// Several processes blocked in `wait` all wake on one `set`.
#[test]
fn one_set_wakes_every_waiting_process() {
    let event = Event::new().unwrap();
    let mut ps: Vec<Process> =
        (0..3).map(|_| start_daemon(Process::new(wait_event, event.clone()))).collect();
    for p in &ps {
        assert!(wait_child_blocked_in(p.pid().unwrap(), FUTEX), "{p:?} never waited");
    }
    let set_at = Instant::now();
    event.set();
    for p in &mut ps {
        join_ok(p);
    }
    assert!(set_at.elapsed() < STARTUP);
}

// --- Condition ----------------------------------------------------------------------

/// CPython's `_TestCondition.f`: takes the lock, says it is about to sleep,
/// waits, says it woke. Exits 0 if `wait` reported what was expected (a
/// notification when there is no timeout, a timeout when there is one).
fn cond_waiter(cond: Condition, sleeping: Semaphore, woken: Semaphore, timeout_ms: Option<u64>) {
    let g = cond.acquire().unwrap();
    sleeping.release().unwrap();
    let (g, notified) = g.wait(timeout_ms.map(Duration::from_millis)).unwrap();
    woken.release().unwrap();
    drop(g);
    if notified != timeout_ms.is_none() {
        std::process::exit(4);
    }
}

/// Starts a waiter in a child process; returns it and the thread to watch.
fn child_waiter(
    cond: &Condition,
    sleeping: &Semaphore,
    woken: &Semaphore,
    timeout_ms: Option<u64>,
) -> (Process, u32) {
    let p = start_daemon(Process::new(
        cond_waiter,
        (cond.clone(), sleeping.clone(), woken.clone(), timeout_ms),
    ));
    let pid = p.pid().unwrap();
    (p, pid)
}

/// Starts a waiter on a thread of this process.
fn thread_waiter(
    cond: &Condition,
    sleeping: &Semaphore,
    woken: &Semaphore,
    timeout_ms: Option<u64>,
) -> (u32, std::thread::JoinHandle<()>) {
    let (c, s, w) = (cond.clone(), sleeping.clone(), woken.clone());
    spawn_with_tid(move || {
        let g = c.acquire().unwrap();
        s.release().unwrap();
        let (g, notified) = g.wait(timeout_ms.map(Duration::from_millis)).unwrap();
        w.release().unwrap();
        drop(g);
        assert_eq!(notified, timeout_ms.is_none());
    })
}

/// Waits until `n` waiters have said they sleep and each is asleep in the
/// kernel.
fn wait_for_sleepers(sleeping: &Semaphore, n: usize, threads: &[(u32, u32)]) {
    for _ in 0..n {
        assert!(sleeping.acquire_raw(true, Some(STARTUP)), "a waiter never started");
    }
    for &(pid, tid) in threads {
        assert!(
            crate::ipc_util::wait_blocked_in(pid, tid, FUTEX, STARTUP),
            "waiter {pid}/{tid} never slept"
        );
    }
}

/// Asserts that no more waiters wake within a moment (a negative: it can only
/// be observed over some time).
fn assert_no_more_woken(woken: &Semaphore) {
    assert!(woken.acquire_timeout(Duration::from_millis(300)).is_none(), "a waiter woke too many");
}

/// CPython's `test_notify`: one waiter in a child and one in a thread;
/// each `notify(1)` wakes exactly one.
#[test]
fn notify_wakes_one_waiter_at_a_time() {
    let cond = Condition::new().unwrap();
    let (sleeping, woken) = (Semaphore::new(0).unwrap(), Semaphore::new(0).unwrap());
    let (mut p, pid) = child_waiter(&cond, &sleeping, &woken, None);
    let (tid, t) = thread_waiter(&cond, &sleeping, &woken, None);
    wait_for_sleepers(&sleeping, 2, &[(pid, pid), (std::process::id(), tid)]);
    assert_eq!(woken.get_value(), 0);

    cond.acquire().unwrap().notify(1);
    assert!(woken.acquire_raw(true, Some(STARTUP)), "notify woke no one");
    assert_no_more_woken(&woken);
    cond.acquire().unwrap().notify(1);
    assert!(woken.acquire_raw(true, Some(STARTUP)), "the second notify woke no one");
    join_ok(&mut p);
    bounded(PROMPT, "the waiting thread", move || t.join().unwrap());
}

/// CPython's `test_notify_all`: waiters with a timeout all time out (and the
/// condition still works); waiters without one all wake on `notify_all`.
#[test]
fn notify_all_wakes_every_waiter() {
    let cond = Condition::new().unwrap();
    let (sleeping, woken) = (Semaphore::new(0).unwrap(), Semaphore::new(0).unwrap());
    let mut timing_out: Vec<Process> =
        (0..2).map(|_| child_waiter(&cond, &sleeping, &woken, Some(100)).0).collect();
    let (_, t) = thread_waiter(&cond, &sleeping, &woken, Some(100));
    for _ in 0..3 {
        assert!(sleeping.acquire_raw(true, Some(STARTUP)));
    }
    for _ in 0..3 {
        assert!(woken.acquire_raw(true, Some(STARTUP)), "a waiter with a timeout never woke");
    }
    for p in &mut timing_out {
        join_ok(p);
    }
    t.join().unwrap();
    assert_eq!(woken.get_value(), 0);

    let mut watch = Vec::new();
    let mut children = Vec::new();
    for _ in 0..2 {
        let (p, pid) = child_waiter(&cond, &sleeping, &woken, None);
        watch.push((pid, pid));
        children.push(p);
    }
    let (tid, t) = thread_waiter(&cond, &sleeping, &woken, None);
    watch.push((std::process::id(), tid));
    wait_for_sleepers(&sleeping, 3, &watch);
    assert_eq!(woken.get_value(), 0, "a waiter woke without a notification");
    cond.acquire().unwrap().notify_all();
    for _ in 0..3 {
        assert!(woken.acquire_raw(true, Some(STARTUP)), "notify_all left a waiter asleep");
    }
    for p in &mut children {
        join_ok(p);
    }
    bounded(PROMPT, "the waiting thread", move || t.join().unwrap());
}

/// CPython's `test_notify_n`: `notify(2)` wakes two of three; `notify(4)`
/// the last.
#[test]
fn notify_n_wakes_n_waiters() {
    let cond = Condition::new().unwrap();
    let (sleeping, woken) = (Semaphore::new(0).unwrap(), Semaphore::new(0).unwrap());
    let mut children = Vec::new();
    let mut watch = Vec::new();
    for _ in 0..2 {
        let (p, pid) = child_waiter(&cond, &sleeping, &woken, None);
        watch.push((pid, pid));
        children.push(p);
    }
    let (tid, t) = thread_waiter(&cond, &sleeping, &woken, None);
    watch.push((std::process::id(), tid));
    wait_for_sleepers(&sleeping, 3, &watch);

    cond.acquire().unwrap().notify(2);
    for _ in 0..2 {
        assert!(woken.acquire_raw(true, Some(STARTUP)), "notify(2) woke fewer than 2");
    }
    assert_no_more_woken(&woken);
    cond.acquire().unwrap().notify(4);
    assert!(woken.acquire_raw(true, Some(STARTUP)), "the last waiter never woke");
    for p in &mut children {
        join_ok(p);
    }
    bounded(PROMPT, "the waiting thread", move || t.join().unwrap());
}

/// CPython's `_TestCondition.test_timeout` and the first half of
/// `test_wait_result`: an unnotified wait reports a timeout, after it.
#[test]
fn condition_wait_times_out() {
    let cond = Condition::new().unwrap();
    let g = cond.acquire().unwrap();
    let ((g, notified), took) = timed(|| g.wait(Some(Duration::ZERO)).unwrap());
    assert!(!notified);
    assert_prompt(took, "wait(0)");
    let ((g, notified), took) = timed(|| g.wait(Some(SHORT)).unwrap());
    assert!(!notified);
    assert_waited(took, SHORT, "wait(200 ms)");
    let ((_g, ok), took) = timed(|| g.wait_for(|| false, Some(SHORT)).unwrap());
    assert!(!ok);
    assert_waited(took, SHORT, "wait_for(false, 200 ms)");
}

fn notify_once(cond: Condition) {
    cond.acquire().unwrap().notify(1);
}

/// CPython's `test_wait_result`: a wait that a child's notify ends reports
/// that it was notified.
#[test]
fn condition_wait_reports_a_notification() {
    let cond = Condition::new().unwrap();
    let g = cond.acquire().unwrap();
    // The child cannot notify before this wait: it needs the lock first.
    let mut p = start_daemon(Process::new(notify_once, cond.clone()));
    let (_g, notified) = g.wait(Some(Duration::from_secs(20))).unwrap();
    assert!(notified);
    join_ok(&mut p);
}

/// CPython's `_test_waitfor_f`: state 0, notify, then wait for state 4.
fn wait_for_four(cond: Condition, state: Value<i32>) {
    let g = cond.acquire().unwrap();
    state.set(0);
    g.notify(1);
    let (_g, ok) = g.wait_for(|| state.get() == 4, None).unwrap();
    if !ok || state.get() != 4 {
        std::process::exit(1);
    }
}

/// CPython's `test_waitfor`: the parent and a child wait for each other's
/// changes to shared state.
#[test]
fn wait_for_across_processes() {
    let cond = Condition::new().unwrap();
    let state = Value::new(-1i32).unwrap();
    let mut p = start_daemon(Process::new(wait_for_four, (cond.clone(), state.clone())));
    {
        let g = cond.acquire().unwrap();
        let (_g, ok) = g.wait_for(|| state.get() == 0, Some(STARTUP)).unwrap();
        assert!(ok);
        assert_eq!(state.get(), 0);
    }
    for _ in 0..4 {
        let g = cond.acquire().unwrap();
        state.set(state.get() + 1);
        g.notify(1);
    }
    join_ok(&mut p);
}

/// CPython's `_test_waitfor_timeout_f`: waits 100 ms for a state that never
/// comes; exits 0 if it timed out after roughly that long.
fn wait_for_four_with_timeout(cond: Condition, state: Value<i32>, sem: Semaphore) {
    sem.release().unwrap();
    let g = cond.acquire().unwrap();
    let expected = Duration::from_millis(100);
    let start = Instant::now();
    let (_g, ok) = g.wait_for(|| state.get() == 4, Some(expected)).unwrap();
    let dt = start.elapsed();
    if ok || dt < expected.mul_f64(0.6) || dt > expected * 30 {
        eprintln!("wait_for returned {ok} after {dt:?}");
        std::process::exit(1);
    }
}

/// CPython's `test_waitfor_timeout`: notifications that never make the
/// predicate true do not end a `wait_for` before its timeout.
#[test]
fn wait_for_times_out_when_the_state_never_comes() {
    let cond = Condition::new().unwrap();
    let state = Value::new(0i32).unwrap();
    let sem = Semaphore::new(0).unwrap();
    let mut p = start_daemon(Process::new(
        wait_for_four_with_timeout,
        (cond.clone(), state.clone(), sem.clone()),
    ));
    assert!(sem.acquire_raw(true, Some(STARTUP)));
    for _ in 0..3 {
        let g = cond.acquire().unwrap();
        state.set(state.get() + 1);
        g.notify(1);
    }
    join_ok(&mut p);
}

// --- Barrier ---------------------------------------------------------------------

const PARTIES: u32 = 4;

/// Runs `f` as party 1..PARTIES in children and as party 0 here; fails if
/// any child fails.
fn run_parties<F, A>(f: F, args: impl Fn(u32) -> A)
where
    F: Fn(A) + Copy + Send + Sync + 'static,
    A: serde::Serialize + serde::de::DeserializeOwned,
{
    let mut ps: Vec<Process> =
        (1..PARTIES).map(|i| start_daemon(Process::new(f, args(i)))).collect();
    f(args(0));
    for p in &mut ps {
        join_ok(p);
    }
}

/// Adds one to `results[i]`.
fn bump(results: &Array<u32>, i: usize) {
    results.lock().unwrap()[i] += 1;
}

/// CPython's `multipass` and `_test_wait_return_f`: three passes, recording
/// each party's index per pass.
fn barrier_passes((barrier, indices, party): (Barrier, Array<u32>, u32)) {
    for pass in 0..3 {
        let i = barrier.wait(Some(STARTUP)).unwrap();
        indices.set((pass * PARTIES + party) as usize, i).unwrap();
    }
}

/// CPython's `test_barrier` and `test_wait_return`: each pass hands out the
/// indices 0..parties once each (so exactly one party gets 0).
#[test]
fn barrier_hands_out_each_index_once_per_pass() {
    let barrier = Barrier::new(PARTIES).unwrap();
    assert_eq!((barrier.parties(), barrier.n_waiting(), barrier.broken()), (PARTIES, 0, false));
    let indices = Array::from_slice(&[u32::MAX; 3 * PARTIES as usize]).unwrap();
    run_parties(barrier_passes, |party| (barrier.clone(), indices.clone(), party));
    let all = indices.to_vec();
    for pass in all.chunks(PARTIES as usize) {
        let mut sorted = pass.to_vec();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..PARTIES).collect::<Vec<_>>(), "indices of a pass: {pass:?}");
    }
    assert!(!barrier.broken());
    assert_eq!(barrier.n_waiting(), 0);
}

/// The actions run in this process (each process has its own count).
static ACTIONS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

fn count_action() {
    ACTIONS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
}

/// Three passes; records each party's index per pass, then how many actions
/// its own process ran.
fn barrier_action_passes(
    (barrier, indices, actions, party): (Barrier, Array<u32>, Array<u32>, u32),
) {
    for pass in 0..3 {
        let i = barrier.wait(Some(STARTUP)).unwrap();
        indices.set((pass * PARTIES + party) as usize, i).unwrap();
    }
    actions.set(party as usize, ACTIONS.load(std::sync::atomic::Ordering::SeqCst)).unwrap();
}

/// Python's `Barrier(parties, action)`: the last party to arrive runs the
/// action, in its own process, once per pass.
#[test]
fn barrier_action_runs_once_per_pass_in_the_last_arrivers_process() {
    ACTIONS.store(0, std::sync::atomic::Ordering::SeqCst);
    let barrier = Barrier::with_action(PARTIES, count_action).unwrap();
    let indices = Array::from_slice(&[u32::MAX; 3 * PARTIES as usize]).unwrap();
    let actions = Array::from_slice(&[u32::MAX; PARTIES as usize]).unwrap();
    run_parties(barrier_action_passes, |party| {
        (barrier.clone(), indices.clone(), actions.clone(), party)
    });
    let (indices, actions) = (indices.to_vec(), actions.to_vec());
    for party in 0..PARTIES as usize {
        let last_arrivals =
            indices.chunks(PARTIES as usize).filter(|pass| pass[party] == PARTIES - 1).count();
        assert_eq!(
            actions[party] as usize, last_arrivals,
            "party {party}: {indices:?} {actions:?}"
        );
    }
    assert_eq!(actions.iter().sum::<u32>(), 3);
}

fn panicking_action() {
    panic!("the action gives up");
}

/// The party whose action panics gets the panic; the others see the barrier
/// broken, as in Python.
#[test]
fn a_panicking_barrier_action_breaks_the_barrier() {
    let barrier = Barrier::with_action(3, panicking_action).unwrap();
    let waiters: Vec<_> = (0..2)
        .map(|_| {
            let b = barrier.clone();
            std::thread::spawn(move || b.wait(Some(STARTUP)))
        })
        .collect();
    while barrier.n_waiting() < 2 {
        std::thread::sleep(Duration::from_millis(1));
    }
    let mine = barrier.wait(Some(STARTUP)).unwrap_err();
    assert_eq!(mine.kind(), ErrorKind::TaskPanicked, "{mine}");
    assert!(mine.message().contains("the action gives up"), "{mine}");
    for w in waiters {
        assert_eq!(w.join().unwrap().unwrap_err().kind(), ErrorKind::BrokenBarrier);
    }
    assert!(barrier.broken());
}

/// CPython's `_test_thousand_f`, checked through shared state rather than a
/// shared pipe: before pass `i` completes, every party has counted itself
/// for it, and no party has got beyond pass `i + 1`.
fn barrier_thousand_passes((barrier, count, passes): (Barrier, Value<u64>, u32)) {
    let n = u64::from(PARTIES);
    for i in 0..u64::from(passes) {
        *count.lock().unwrap() += 1;
        barrier.wait(Some(STARTUP)).unwrap();
        let c = count.get();
        assert!(n * (i + 1) <= c && c < n * (i + 2), "pass {i}: count {c}");
    }
}

/// CPython's `test_thousand`: a thousand passes of 4 processes.
#[test]
fn a_thousand_passes_keep_every_party_in_step() {
    let barrier = Barrier::new(PARTIES).unwrap();
    let count = Value::new(0u64).unwrap();
    let (_, took) = timed(|| {
        run_parties(barrier_thousand_passes, |_| (barrier.clone(), count.clone(), 1000));
    });
    assert_eq!(count.get(), u64::from(PARTIES) * 1000);
    eprintln!("1000 barrier passes of {PARTIES} processes: {took:?}");
}

/// CPython's `test_single_thread`, and no barrier of zero parties.
#[test]
fn a_barrier_of_one_never_waits() {
    let b = Barrier::new(1).unwrap();
    assert_eq!(b.wait(None).unwrap(), 0);
    assert_eq!(b.wait(Some(Duration::ZERO)).unwrap(), 0);
    assert_eq!(Barrier::new(0).unwrap_err().kind(), ErrorKind::InvalidArgument);
}

/// CPython's `_test_abort_f`: the middle party aborts instead of waiting a
/// second time; the others' second wait fails.
fn barrier_abort_party((barrier, results): (Barrier, Array<u32>)) {
    let i = barrier.wait(Some(STARTUP)).unwrap();
    if i == PARTIES / 2 {
        barrier.abort();
        return;
    }
    match barrier.wait(None) {
        Ok(_) => bump(&results, 0),
        Err(e) if e.kind() == ErrorKind::BrokenBarrier => bump(&results, 1),
        Err(e) => panic!("{e}"),
    }
}

/// CPython's `test_abort`.
#[test]
fn abort_breaks_the_barrier_for_every_waiter() {
    let barrier = Barrier::new(PARTIES).unwrap();
    let results = Array::from_slice(&[0u32; 2]).unwrap();
    run_parties(barrier_abort_party, |_| (barrier.clone(), results.clone()));
    assert_eq!(results.to_vec(), vec![0, PARTIES - 1]);
    assert!(barrier.broken());
    let (r, took) = timed(|| barrier.wait(None));
    assert_eq!(r.unwrap_err().kind(), ErrorKind::BrokenBarrier);
    assert_prompt(took, "wait on a broken barrier");
}

/// CPython's `_test_reset_f`: the middle party resets the barrier once the
/// others wait on it; they fail, then all pass it again.
fn barrier_reset_party((barrier, results): (Barrier, Array<u32>)) {
    let i = barrier.wait(Some(STARTUP)).unwrap();
    if i == PARTIES / 2 {
        assert!(
            crate::ipc_util::eventually(STARTUP, || barrier.n_waiting() == PARTIES - 1),
            "the others never all waited"
        );
        barrier.reset().unwrap();
    } else {
        match barrier.wait(None) {
            Ok(_) => bump(&results, 0),
            Err(e) if e.kind() == ErrorKind::BrokenBarrier => bump(&results, 1),
            Err(e) => panic!("{e}"),
        }
    }
    barrier.wait(Some(STARTUP)).unwrap();
    bump(&results, 2);
}

/// CPython's `test_reset`.
#[test]
fn reset_fails_the_waiters_and_leaves_the_barrier_usable() {
    let barrier = Barrier::new(PARTIES).unwrap();
    let results = Array::from_slice(&[0u32; 3]).unwrap();
    run_parties(barrier_reset_party, |_| (barrier.clone(), results.clone()));
    assert_eq!(results.to_vec(), vec![0, PARTIES - 1, PARTIES]);
    assert!(!barrier.broken());
}

/// CPython's `_test_abort_and_reset_f`.
fn barrier_abort_and_reset_party((barrier, barrier2, results): (Barrier, Barrier, Array<u32>)) {
    let i = barrier.wait(Some(STARTUP)).unwrap();
    if i == PARTIES / 2 {
        barrier.abort();
    } else {
        match barrier.wait(None) {
            Ok(_) => bump(&results, 0),
            Err(e) if e.kind() == ErrorKind::BrokenBarrier => bump(&results, 1),
            Err(e) => panic!("{e}"),
        }
    }
    // Everyone has left the broken barrier before it is reset, and no one
    // enters it again before the reset.
    if barrier2.wait(Some(STARTUP)).unwrap() == PARTIES / 2 {
        barrier.reset().unwrap();
    }
    barrier2.wait(Some(STARTUP)).unwrap();
    barrier.wait(Some(STARTUP)).unwrap();
    bump(&results, 2);
}

/// CPython's `test_abort_and_reset`.
#[test]
fn an_aborted_barrier_works_again_after_reset() {
    let (barrier, barrier2) = (Barrier::new(PARTIES).unwrap(), Barrier::new(PARTIES).unwrap());
    let results = Array::from_slice(&[0u32; 3]).unwrap();
    run_parties(barrier_abort_and_reset_party, |_| {
        (barrier.clone(), barrier2.clone(), results.clone())
    });
    assert_eq!(results.to_vec(), vec![0, PARTIES - 1, PARTIES]);
    assert!(!barrier.broken());
}

/// Waits with a timeout on a barrier the last party never reaches; exits 0
/// when the wait failed as broken.
fn barrier_wait_times_out(barrier: Barrier) {
    match barrier.wait(Some(Duration::from_millis(300))) {
        Err(e) if e.kind() == ErrorKind::BrokenBarrier => {}
        r => {
            eprintln!("wait returned {r:?}");
            std::process::exit(1);
        }
    }
}

/// CPython's `test_timeout`: a wait that times out breaks the barrier for
/// every party, including those that arrive later.
#[test]
fn a_timed_out_wait_breaks_the_barrier() {
    let barrier = Barrier::new(3).unwrap();
    let started = Instant::now();
    let mut ps: Vec<Process> = (0..2)
        .map(|_| start_daemon(Process::new(barrier_wait_times_out, barrier.clone())))
        .collect();
    for p in &mut ps {
        join_ok(p);
    }
    assert!(started.elapsed() >= Duration::from_millis(295));
    assert!(barrier.broken());
    let (r, took) = timed(|| barrier.wait(Some(STARTUP)));
    assert_eq!(r.unwrap_err().kind(), ErrorKind::BrokenBarrier, "the late party");
    assert_prompt(took, "wait on a broken barrier");
    barrier.reset().unwrap();
    assert!(!barrier.broken());
    assert_eq!(barrier.n_waiting(), 0);
    // A single waiter's own timeout, measured.
    let b2 = Barrier::new(2).unwrap();
    let (r, took) = timed(|| b2.wait(Some(SHORT)));
    assert_eq!(r.unwrap_err().kind(), ErrorKind::BrokenBarrier);
    assert_waited(took, SHORT, "a barrier wait with a 200 ms timeout");
    assert!(b2.broken());
}

fn barrier_party_in_pool(b: Barrier) -> u32 {
    b.wait(Some(STARTUP)).unwrap()
}

/// Barriers, events and locks handed to pool tasks.
#[test]
fn sync_handles_travel_to_pool_tasks() {
    fn lock_and_set((lock, e): (Lock, Event)) -> bool {
        let g = lock.acquire().unwrap();
        e.set();
        !g.previous_owner_died()
    }
    let pool = Pool::new(2).unwrap();
    let b = Barrier::new(3).unwrap();
    let rs: Vec<_> = (0..2).map(|_| pool.apply_async(barrier_party_in_pool, b.clone())).collect();
    let mine = b.wait(Some(STARTUP)).unwrap();
    let mut all: Vec<u32> = rs.into_iter().map(|r| r.get_timeout(STARTUP).unwrap()).collect();
    all.push(mine);
    all.sort_unstable();
    assert_eq!(all, vec![0, 1, 2]);

    let (lock, e) = (Lock::new().unwrap(), Event::new().unwrap());
    assert!(pool.apply(lock_and_set, (lock.clone(), e.clone())).unwrap());
    assert!(e.is_set());
    assert!(lock.try_acquire().unwrap().is_some(), "the task released the lock");
}
