//! Async IPC under tokio and under a minimal hand-written executor, with
//! real processes: items and messages arrive, a peer killed with SIGKILL
//! mid-wait wakes the future with an error, a dropped future loses
//! nothing, and the executor's thread is never blocked.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

use multiproc::{pipe, pipe_one_way, ErrorKind, Event, Lock, Process, Queue, Receiver, Sender};

use crate::ipc_util::{join_ok, send_signal, start_daemon, PROMPT, STARTUP};

// --- a minimal executor -------------------------------------------------------------

struct Unpark(Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

/// Polls `f` on this thread, parking between polls, until it is ready;
/// fails the test past `limit`. Returns the output and how many times it
/// was polled.
fn block_on<F: Future>(f: F, limit: Duration) -> (F::Output, usize) {
    let mut f = std::pin::pin!(f);
    let waker = Waker::from(Arc::new(Unpark(thread::current())));
    let mut cx = Context::from_waker(&waker);
    let end = Instant::now() + limit;
    let mut polls = 0;
    loop {
        polls += 1;
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return (v, polls);
        }
        let left = end.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "the future did not finish within {limit:?}");
        thread::park_timeout(left);
    }
}

fn tokio_rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// Ticks every millisecond on the same single-threaded runtime: a future
/// that blocked its thread would stop the ticks.
async fn ticker(ticks: Arc<AtomicUsize>) {
    loop {
        tokio::time::sleep(Duration::from_millis(1)).await;
        ticks.fetch_add(1, Ordering::Relaxed);
    }
}

// --- children -------------------------------------------------------------------------

fn put_after(q: Queue<u64>, ms: u64, items: Vec<u64>) {
    thread::sleep(Duration::from_millis(ms));
    for i in items {
        q.put(i).unwrap();
    }
}

fn send_after(tx: Sender<String>, ms: u64) {
    thread::sleep(Duration::from_millis(ms));
    tx.send(&"late".to_string()).unwrap();
}

fn hold_and_sleep(tx: Sender<String>) {
    let _keep = tx;
    thread::sleep(Duration::from_secs(60));
}

fn set_after(e: Event, ms: u64) {
    thread::sleep(Duration::from_millis(ms));
    e.set();
}

fn lock_then_die(lock: Lock, taken: Event) {
    let g = lock.acquire().unwrap();
    taken.set();
    thread::sleep(Duration::from_secs(60));
    drop(g);
}

fn read_slowly(rx: Receiver<Vec<u8>>, back: Sender<usize>) {
    thread::sleep(Duration::from_millis(300));
    let v = rx.recv().unwrap();
    back.send(&v.len()).unwrap();
}

// --- Queue ----------------------------------------------------------------------------

#[test]
fn queue_get_async_under_tokio_does_not_block_the_runtime() {
    let q = Queue::<u64>::new().unwrap();
    let mut p = start_daemon(Process::new(put_after, (q.clone(), 300u64, vec![1, 2, 3])));
    let ticks = Arc::new(AtomicUsize::new(0));
    let got = tokio_rt().block_on(async {
        let t = tokio::spawn(ticker(ticks.clone()));
        let mut got = Vec::new();
        for _ in 0..3 {
            got.push(tokio::time::timeout(STARTUP, q.get_async()).await.unwrap().unwrap());
        }
        t.abort();
        got
    });
    assert_eq!(got, [1, 2, 3]);
    // 300 ms of waiting at 1 ms a tick (slower on a loaded machine): a
    // blocked thread would give none.
    assert!(ticks.load(Ordering::Relaxed) >= 5, "only {ticks:?} ticks while waiting");
    join_ok(&mut p);
}

#[test]
fn queue_get_async_dropped_by_a_timeout_loses_no_item() {
    let q = Queue::<u64>::new().unwrap();
    let rt = tokio_rt();
    rt.block_on(async {
        for _ in 0..20 {
            let r = tokio::time::timeout(Duration::from_millis(2), q.get_async()).await;
            assert!(r.is_err(), "nothing was put yet");
        }
    });
    let mut p = start_daemon(Process::new(put_after, (q.clone(), 0u64, (0..50).collect())));
    join_ok(&mut p);
    // Half by cancelled-and-retried async gets, half by the blocking get.
    let mut got = Vec::new();
    rt.block_on(async {
        while got.len() < 25 {
            if let Ok(v) = tokio::time::timeout(Duration::from_micros(200), q.get_async()).await {
                got.push(v.unwrap());
            }
        }
    });
    while got.len() < 50 {
        got.push(q.get_timeout(PROMPT).unwrap());
    }
    assert_eq!(got, (0..50).collect::<Vec<_>>());
    assert!(q.get_nowait().is_err());
}

#[test]
fn queue_get_async_on_a_minimal_executor_sleeps_until_the_item() {
    let q = Queue::<u64>::new().unwrap();
    let mut p = start_daemon(Process::new(put_after, (q.clone(), 200u64, vec![7])));
    let (v, polls) = block_on(q.get_async(), STARTUP);
    assert_eq!(v.unwrap(), 7);
    // Woken when the item came, not spinning meanwhile.
    assert!(polls <= 5, "polled {polls} times for one item");
    join_ok(&mut p);
}

#[test]
fn bounded_queue_put_async_waits_for_a_free_place() {
    let q = Queue::<u64>::bounded(1).unwrap();
    q.put(0).unwrap();
    let consumer = q.clone();
    let t = thread::spawn(move || {
        thread::sleep(Duration::from_millis(100));
        consumer.get_timeout(PROMPT).unwrap()
    });
    let started = Instant::now();
    let (r, _) = block_on(q.put_async(1), STARTUP);
    r.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(90), "put into a full queue at once");
    assert_eq!(t.join().unwrap(), 0);
    assert_eq!(q.get_timeout(PROMPT).unwrap(), 1);
}

// --- Connection -----------------------------------------------------------------------

#[test]
fn recv_async_gets_a_message_from_a_child_on_both_executors() {
    let (rx, tx) = pipe_one_way::<String>().unwrap();
    let mut p = start_daemon(Process::new(send_after, (tx, 100u64)));
    let got = tokio_rt().block_on(async { tokio::time::timeout(STARTUP, rx.recv_async()).await });
    let got = got.unwrap();
    assert_eq!(got.unwrap(), "late");
    join_ok(&mut p);

    let (rx, tx) = pipe_one_way::<String>().unwrap();
    let mut p = start_daemon(Process::new(send_after, (tx, 100u64)));
    let (got, polls) = block_on(rx.recv_async(), STARTUP);
    assert_eq!(got.unwrap(), "late");
    assert!(polls <= 5, "polled {polls} times for one message");
    join_ok(&mut p);
}

#[test]
fn recv_async_wakes_with_closed_when_the_peer_is_killed_mid_wait() {
    let (rx, tx) = pipe_one_way::<String>().unwrap();
    let mut p = start_daemon(Process::new(hold_and_sleep, tx));
    let pid = p.pid().unwrap();
    let killer = thread::spawn(move || {
        thread::sleep(Duration::from_millis(300));
        send_signal(pid, libc::SIGKILL);
    });
    let started = Instant::now();
    let (r, _) = block_on(rx.recv_async(), STARTUP);
    assert_eq!(r.unwrap_err().kind(), ErrorKind::Closed);
    assert!(started.elapsed() >= Duration::from_millis(250));
    killer.join().unwrap();
    assert!(p.join_timeout(STARTUP).unwrap());
    assert_eq!(p.exitcode(), Some(-libc::SIGKILL));

    // The same under tokio.
    let (rx, tx) = pipe_one_way::<String>().unwrap();
    let mut p = start_daemon(Process::new(hold_and_sleep, tx));
    let pid = p.pid().unwrap();
    let r = tokio_rt().block_on(async {
        let kill = async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            send_signal(pid, libc::SIGKILL);
            std::future::pending::<()>().await
        };
        tokio::select! {
            r = rx.recv_async() => r,
            () = kill => unreachable!(),
            () = tokio::time::sleep(STARTUP) => panic!("recv_async did not wake"),
        }
    });
    assert_eq!(r.unwrap_err().kind(), ErrorKind::Closed);
    let code = tokio_rt().block_on(async {
        p.join_async().await.unwrap();
        p.exitcode()
    });
    assert_eq!(code, Some(-libc::SIGKILL));
}

#[test]
fn recv_async_dropped_by_a_timeout_loses_no_message() {
    let (a, b) = pipe::<u32>().unwrap();
    let rt = tokio_rt();
    let r = rt
        .block_on(async { tokio::time::timeout(Duration::from_millis(20), b.recv_async()).await });
    assert!(r.is_err());
    for i in 0..100 {
        a.send(&i).unwrap();
    }
    let mut got = Vec::new();
    rt.block_on(async {
        while got.len() < 50 {
            if let Ok(v) = tokio::time::timeout(Duration::from_micros(100), b.recv_async()).await {
                got.push(v.unwrap());
            }
        }
    });
    while got.len() < 100 {
        got.push(b.recv_timeout(PROMPT).unwrap());
    }
    assert_eq!(got, (0..100).collect::<Vec<_>>());
}

#[test]
fn send_async_of_a_message_larger_than_the_socket_waits_for_a_slow_reader() {
    let (rx, tx) = pipe_one_way::<Vec<u8>>().unwrap();
    let (back_rx, back_tx) = pipe_one_way::<usize>().unwrap();
    let mut p = start_daemon(Process::new(read_slowly, (rx, back_tx)));
    let big = vec![5u8; 3 << 20];
    let ticks = Arc::new(AtomicUsize::new(0));
    let n = tokio_rt().block_on(async {
        let t = tokio::spawn(ticker(ticks.clone()));
        tokio::time::timeout(STARTUP, tx.send_async(&big)).await.unwrap().unwrap();
        let n = tokio::time::timeout(STARTUP, back_rx.recv_async()).await.unwrap().unwrap();
        t.abort();
        n
    });
    assert_eq!(n, 3 << 20);
    assert!(ticks.load(Ordering::Relaxed) >= 5, "the runtime was blocked: {ticks:?} ticks");
    join_ok(&mut p);
}

#[test]
fn send_async_to_a_dead_reader_fails_closed() {
    let (rx, tx) = pipe_one_way::<Vec<u8>>().unwrap();
    drop(rx);
    let (r, _) = block_on(tx.send_async(&vec![1u8; 1 << 20]), PROMPT);
    assert_eq!(r.unwrap_err().kind(), ErrorKind::Closed);
}

// --- Event, Lock, Process ---------------------------------------------------------------

#[test]
fn event_wait_async_sees_a_set_from_a_child_promptly() {
    let e = Event::new().unwrap();
    let mut p = start_daemon(Process::new(set_after, (e.clone(), 200u64)));
    let ((), polls) = block_on(e.wait_async(), STARTUP);
    assert!(e.is_set());
    // Naps doubling to 2 ms: 200 ms of waiting takes about 100 polls, not thousands.
    assert!(polls < 400, "polled {polls} times");
    join_ok(&mut p);
}

#[test]
fn lock_acquire_async_gets_a_lock_whose_holder_was_killed() {
    let lock = Lock::new().unwrap();
    let taken = Event::new().unwrap();
    let mut p = start_daemon(Process::new(lock_then_die, (lock.clone(), taken.clone())));
    assert!(taken.wait_timeout(STARTUP));
    let pid = p.pid().unwrap();
    let killer = thread::spawn(move || {
        thread::sleep(Duration::from_millis(200));
        send_signal(pid, libc::SIGKILL);
    });
    let started = Instant::now();
    let (g, _) = block_on(lock.acquire_async(), STARTUP);
    let g = g.unwrap();
    assert!(g.previous_owner_died());
    assert!(started.elapsed() >= Duration::from_millis(150));
    drop(g);
    killer.join().unwrap();
    assert!(tokio_rt().block_on(async { lock.acquire_async().await.is_ok() }));
    assert!(p.join_timeout(STARTUP).unwrap());
}

#[test]
fn join_async_waits_for_the_exit_without_blocking() {
    fn quit_after(ms: u64) {
        thread::sleep(Duration::from_millis(ms));
        std::process::exit(4);
    }
    let mut p = start_daemon(Process::new(quit_after, 200u64));
    let ((), polls) = block_on(async { p.join_async().await.unwrap() }, STARTUP);
    assert!(polls <= 5, "polled {polls} times");
    assert_eq!(p.exitcode(), Some(4));
}
