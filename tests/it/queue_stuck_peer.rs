//! A queue whose shared mutex is held by a process that is stopped
//! (SIGSTOP), not dead: the robust mutex does not help (its owner lives), so
//! every call must bound its own wait. An unbounded put hands its item to
//! the feeder and returns; a timed put or get gives up at its deadline; a
//! process exiting with items it cannot move exits in bounded time and says
//! how many it drops; once the holder is killed the queue works again and
//! nothing put is lost.

use std::time::{Duration, Instant};

use multiproc::{ErrorKind, JoinableQueue, Process, PutError, Queue};

use crate::ipc_util::{
    assert_waited, bounded, eventually, join_ok, send_signal, start_daemon, timed, TempDir, PROMPT,
    STARTUP,
};

/// Takes the queue's mutex and stops itself holding it; once continued it
/// lets go and exits.
fn hold_stopped(q: Queue<u64>) {
    q.__hold_lock_stopped().unwrap();
}

/// A child process stopped while holding a queue's mutex. SIGKILLed when
/// dropped (a failing test included), so no test leaves a stopped process.
struct StoppedHolder {
    p: Process,
    pid: u32,
}

impl StoppedHolder {
    fn start(q: &Queue<u64>) -> StoppedHolder {
        let p = start_daemon(Process::new(hold_stopped, q.clone()));
        let pid = p.pid().unwrap();
        let holder = StoppedHolder { p, pid };
        let stopped = || {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // The state follows the command's closing parenthesis.
            stat.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('T'))
        };
        assert!(eventually(STARTUP, stopped), "the holder {pid} never stopped");
        holder
    }

    /// Continues it: it lets go of the mutex and exits.
    fn cont(&mut self) {
        send_signal(self.pid, libc::SIGCONT);
        join_ok(&mut self.p);
    }

    /// Kills it holding the mutex (the next locker finds its owner dead).
    fn kill(&mut self) {
        send_signal(self.pid, libc::SIGKILL);
        assert!(self.p.join_timeout(STARTUP).unwrap(), "the killed holder was not reaped");
    }
}

impl Drop for StoppedHolder {
    fn drop(&mut self) {
        if self.p.exitcode().is_none() {
            // SAFETY: kill takes plain integers and touches no memory.
            unsafe { libc::kill(self.pid as libc::pid_t, libc::SIGKILL) };
            let _ = self.p.join_timeout(STARTUP);
        }
    }
}

const N: u64 = 200;

/// Unbounded puts behind a stopped holder return at once (each waits for
/// the mutex only briefly, then leaves its item to the feeder), and their
/// items arrive, in order, once the holder is continued.
#[test]
fn an_unbounded_put_does_not_wait_for_a_stopped_holder() {
    let q = Queue::<u64>::new().unwrap();
    let mut holder = StoppedHolder::start(&q);
    let q2 = q.clone();
    let took = bounded(STARTUP, "puts behind a stopped holder", move || {
        timed(|| (0..N).for_each(|i| q2.put(i).unwrap())).1
    });
    assert!(took < PROMPT, "{N} puts took {took:?} behind a stopped holder");
    assert_eq!(q.qsize(), N as usize);
    holder.cont();
    for i in 0..N {
        assert_eq!(q.get_timeout(STARTUP).unwrap(), i);
    }
    assert_eq!(q.get_nowait().unwrap_err().kind(), ErrorKind::Empty);
}

/// A bounded queue's timed put waits for the mutex until its deadline and
/// then fails as a put that found no place does, with its value back and
/// its place given back; an untimed put does not wait for the mutex at all.
#[test]
fn a_timed_put_gives_up_at_its_deadline_behind_a_stopped_holder() {
    const MAX: u32 = 4;
    const WAIT: Duration = Duration::from_millis(300);
    let q = Queue::<u64>::bounded(MAX).unwrap();
    let mut holder = StoppedHolder::start(&q);
    let q2 = q.clone();
    let (r, took) = bounded(STARTUP, "put_timeout behind a stopped holder", move || {
        timed(|| q2.put_timeout(5, WAIT))
    });
    match r {
        Err(PutError::Timeout(5)) => {}
        other => panic!("put_timeout behind a stopped holder: {other:?}"),
    }
    assert_waited(took, WAIT, "put_timeout behind a stopped holder");
    let q2 = q.clone();
    let (r, took) =
        bounded(STARTUP, "put_nowait behind a stopped holder", move || timed(|| q2.put_nowait(6)));
    assert!(matches!(r, Err(PutError::Full(6))), "put_nowait: {r:?}");
    assert!(took < PROMPT, "put_nowait took {took:?}");
    assert_eq!(q.qsize(), 0, "a put that failed is still counted");
    // An untimed put has a place: it leaves its item to the feeder.
    let q2 = q.clone();
    let took =
        bounded(STARTUP, "put behind a stopped holder", move || timed(|| q2.put(0).unwrap()).1);
    assert!(took < PROMPT, "put took {took:?}");
    holder.kill();
    // The failed puts gave their places back: MAX items fit, then no more.
    for i in 1..u64::from(MAX) {
        q.put_timeout(i, STARTUP).unwrap();
    }
    assert!(matches!(q.put_nowait(9), Err(PutError::Full(9))));
    for i in 0..u64::from(MAX) {
        assert_eq!(q.get_timeout(STARTUP).unwrap(), i);
    }
}

/// A timed get of a ring that holds an item gives up at its deadline while
/// a stopped process holds the mutex; a get_nowait does not wait for it.
#[test]
fn a_timed_get_gives_up_at_its_deadline_behind_a_stopped_holder() {
    const WAIT: Duration = Duration::from_millis(300);
    let q = Queue::<u64>::new().unwrap();
    q.put(1).unwrap();
    let mut holder = StoppedHolder::start(&q);
    let q2 = q.clone();
    let (r, took) = bounded(STARTUP, "get_timeout behind a stopped holder", move || {
        timed(|| q2.get_timeout(WAIT))
    });
    assert!(r.as_ref().is_err_and(|e| e.is_timeout()), "get_timeout: {r:?}");
    assert_waited(took, WAIT, "get_timeout behind a stopped holder");
    let q2 = q.clone();
    let (r, took) =
        bounded(STARTUP, "get_nowait behind a stopped holder", move || timed(|| q2.get_nowait()));
    assert_eq!(r.unwrap_err().kind(), ErrorKind::Empty);
    assert!(took < PROMPT, "get_nowait took {took:?}");
    holder.kill();
    assert_eq!(q.get_timeout(STARTUP).unwrap(), 1);
}

const EXIT_N: u64 = 50;

/// Sends its stderr to `path`, puts `EXIT_N` items (none can go in: the
/// mutex is held by a stopped process) and returns.
fn put_then_exit((q, path): (Queue<u64>, String)) {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::create(&path).unwrap();
    // SAFETY: plain descriptors; fd 2 now names the file.
    assert_eq!(unsafe { libc::dup2(f.as_raw_fd(), 2) }, 2);
    for i in 0..EXIT_N {
        q.put(i).unwrap();
    }
}

/// A process that exits with items it could not move into the queue (its
/// feeder is kept out by a stopped holder) exits after the flush's stall
/// limit, naming every item it drops: those in its outbox and the batch its
/// feeder had taken. The dropped items leave the queue's counts: once the
/// holder is gone, `qsize` is 0 and a `JoinableQueue::join` returns, where
/// it used to wait forever for tasks that no one could ever take.
#[test]
fn an_exit_behind_a_stopped_holder_is_bounded_and_names_what_it_drops() {
    if cfg!(feature = "tracing") {
        return; // The message goes to `tracing`, not to stderr.
    }
    let dir = TempDir::new();
    let path = dir.file("stderr");
    let joinable = JoinableQueue::<u64>::new().unwrap();
    let q: Queue<u64> = (*joinable).clone();
    let mut holder = StoppedHolder::start(&q);
    let mut p = start_daemon(Process::new(put_then_exit, (q.clone(), path.clone())));
    // The flush gives up after 5 s without progress.
    let t = Instant::now();
    assert!(p.join_timeout(Duration::from_secs(5) + STARTUP).unwrap(), "the exit flush hung");
    assert_eq!(p.exitcode(), Some(0));
    assert!(t.elapsed() >= Duration::from_secs(4), "the flush waited {:?}", t.elapsed());
    let err = std::fs::read_to_string(&path).unwrap();
    let dropped = crate::support::exit_flush_dropped(&err);
    assert_eq!(dropped, EXIT_N, "the message: {err:?}");
    holder.kill();
    // None of them went in, and none is counted.
    assert!(q.get_timeout(Duration::from_millis(300)).unwrap_err().is_timeout());
    assert_eq!(q.qsize(), 0);
    assert!(joinable.join_timeout(PROMPT), "join waits for the dropped items");
}

/// Once the stopped holder is killed, the next locker finds its owner dead
/// and takes the mutex: everything put meanwhile (waiting in the outbox)
/// arrives in order, and the queue works as before.
#[test]
fn a_killed_stopped_holder_frees_the_queue_and_nothing_put_is_lost() {
    let q = Queue::<u64>::new().unwrap();
    q.put(0).unwrap();
    let mut holder = StoppedHolder::start(&q);
    let q2 = q.clone();
    let took = bounded(STARTUP, "puts behind a stopped holder", move || {
        timed(|| (1..N).for_each(|i| q2.put(i).unwrap())).1
    });
    assert!(took < PROMPT, "{} puts took {took:?} behind a stopped holder", N - 1);
    // A get waiting for the mutex (without a deadline) when the holder dies.
    let q2 = q.clone();
    let getter = std::thread::spawn(move || q2.get());
    std::thread::sleep(Duration::from_millis(50));
    holder.kill();
    let first = bounded(STARTUP, "a get whose mutex holder was killed", move || getter.join());
    assert_eq!(first.unwrap().unwrap(), 0);
    for i in 1..N {
        assert_eq!(q.get_timeout(STARTUP).unwrap(), i);
    }
    assert_eq!(q.get_nowait().unwrap_err().kind(), ErrorKind::Empty);
    assert_eq!(q.qsize(), 0);
    q.put(N).unwrap();
    assert_eq!(q.get_timeout(STARTUP).unwrap(), N);
}

/// Times every poll of the future it wraps.
struct TimedPolls<F> {
    inner: std::pin::Pin<Box<F>>,
    polls: std::sync::Arc<std::sync::Mutex<Vec<Duration>>>,
}

impl<F: std::future::Future> std::future::Future for TimedPolls<F> {
    type Output = F::Output;
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        let t = Instant::now();
        let r = self.inner.as_mut().poll(cx);
        self.polls.lock().unwrap().push(t.elapsed());
        r
    }
}

/// `put_async` on a bounded queue whose mutex a stopped process holds does
/// not block the executor's thread: each poll tries the mutex without
/// waiting for it (a put waits up to 2 ms for it, which on an executor's
/// thread stalls every other task that long, poll after poll), and the put
/// completes once the holder is gone.
#[test]
fn put_async_behind_a_stopped_holder_does_not_block_its_executor() {
    let q = Queue::<u64>::bounded(4).unwrap();
    let mut holder = StoppedHolder::start(&q);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let polls = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let put = TimedPolls { inner: Box::pin(q.put_async(1)), polls: polls.clone() };
    let waited = rt.block_on(async { tokio::time::timeout(Duration::from_millis(300), put).await });
    assert!(waited.is_err(), "a put behind a stopped holder completed");
    let mut took = polls.lock().unwrap().clone();
    took.sort();
    assert!(took.len() >= 10, "put_async was polled only {} times in 300 ms", took.len());
    let median = took[took.len() / 2];
    assert!(median < Duration::from_micros(500), "a poll took {median:?} (median of {took:?})");
    assert_eq!(q.qsize(), 0, "a put that gave up left its item counted");
    holder.kill();
    let done = rt.block_on(async { tokio::time::timeout(STARTUP, q.put_async(2)).await });
    done.expect("put_async after the holder was killed").unwrap();
    assert_eq!(q.get_timeout(STARTUP).unwrap(), 2);
}
