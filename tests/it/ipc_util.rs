//! What the IPC tests share: time bounds, a datagram beacon children report
//! on (independent of the primitives under test), pidfd waits, the kernel's
//! view of what a thread is blocked in, and counts of the descriptors and
//! shared-memory files a process holds.

use std::collections::BTreeSet;
use std::io;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use multiproc::Process;

/// How long something that should happen at once may take on a loaded machine.
pub(crate) const PROMPT: Duration = Duration::from_secs(3);
/// A bound for anything that includes starting processes.
pub(crate) const STARTUP: Duration = Duration::from_secs(10);

// --- time bounds ------------------------------------------------------------

/// Runs `f` on its own thread and fails the test if it has not returned
/// within `limit`. A panic in `f` is passed on.
pub(crate) fn bounded<T: Send + 'static>(
    limit: Duration,
    what: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name(format!("bounded: {what}"))
        .spawn(move || {
            let _ = tx.send(std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)));
        })
        .expect("start a thread");
    match rx.recv_timeout(limit) {
        Ok(Ok(v)) => v,
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
        Err(_) => panic!("{what} did not finish within {limit:?}"),
    }
}

/// Times `f`.
pub(crate) fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let t = Instant::now();
    let r = f();
    (r, t.elapsed())
}

/// Asserts that a wait of `asked` took at least `asked` (less 5 ms of clock
/// slack) and at most `asked + slack`.
#[track_caller]
pub(crate) fn assert_waited(elapsed: Duration, asked: Duration, what: &str) {
    let slack = Duration::from_secs(2);
    assert!(
        elapsed + Duration::from_millis(5) >= asked,
        "{what} returned after {elapsed:?}, before its {asked:?} timeout"
    );
    assert!(elapsed <= asked + slack, "{what} took {elapsed:?}, far beyond its {asked:?} timeout");
}

/// Asserts that something that should not wait returned promptly.
#[track_caller]
pub(crate) fn assert_prompt(elapsed: Duration, what: &str) {
    assert!(elapsed < Duration::from_secs(1), "{what} took {elapsed:?}; it should not wait");
}

/// Polls `cond` until it holds; false if it still does not after `limit`.
/// Only for states no descriptor signals.
pub(crate) fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

// --- scratch directories and the beacon ----------------------------------------

/// A fresh directory, removed when dropped.
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    pub(crate) fn new() -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        let path = std::env::temp_dir().join(format!(
            "multiproc-ipc-{}-{}-{nanos}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir(&path).expect("create a scratch directory");
        TempDir(path)
    }

    pub(crate) fn file(&self, name: &str) -> String {
        self.0.join(name).to_str().expect("utf-8 path").to_string()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A datagram socket the test listens on; children send to it. It does not
/// use multiproc, so it can report on multiproc primitives that misbehave.
pub(crate) struct Beacon {
    _dir: TempDir,
    path: String,
    socket: UnixDatagram,
}

impl Beacon {
    pub(crate) fn new() -> Beacon {
        let dir = TempDir::new();
        let path = dir.file("beacon");
        let socket = UnixDatagram::bind(&path).expect("bind the beacon");
        Beacon { _dir: dir, path, socket }
    }

    /// The address to hand to children.
    pub(crate) fn path(&self) -> String {
        self.path.clone()
    }

    /// The next message; fails the test if none arrives within `timeout`.
    pub(crate) fn recv(&self, timeout: Duration, what: &str) -> String {
        self.try_recv(timeout).unwrap_or_else(|| panic!("no {what} arrived within {timeout:?}"))
    }

    /// The next message, or `None` after `timeout`.
    pub(crate) fn try_recv(&self, timeout: Duration) -> Option<String> {
        let timeout = timeout.max(Duration::from_millis(1));
        self.socket.set_read_timeout(Some(timeout)).expect("set a read timeout");
        let mut buf = [0u8; 4096];
        match self.socket.recv(&mut buf) {
            Ok(n) => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                None
            }
            Err(e) => panic!("beacon: {e}"),
        }
    }
}

/// Sends `msg` to the beacon at `path` (from any process).
pub(crate) fn send_beacon(path: &str, msg: &str) {
    let socket = UnixDatagram::unbound().expect("a datagram socket");
    socket.send_to(msg.as_bytes(), path).expect("send to the beacon");
}

// --- processes and threads -------------------------------------------------------

/// Starts `p` as a daemon, so a failing test never waits for it at exit (and
/// it dies with the test process in any case).
pub(crate) fn start_daemon(mut p: Process) -> Process {
    p.set_daemon(true).unwrap();
    p.start().unwrap();
    p
}

/// Waits (bounded) for `p` to exit, and asserts that it exited with 0.
#[track_caller]
pub(crate) fn join_ok(p: &mut Process) {
    assert!(p.join_timeout(STARTUP).unwrap(), "{p:?} did not exit in time");
    assert_eq!(p.exitcode(), Some(0), "{p:?} failed");
}

/// Sends `sig` to `pid`.
pub(crate) fn send_signal(pid: u32, sig: i32) {
    // SAFETY: kill takes plain integers and touches no memory.
    let r = unsafe { libc::kill(pid as libc::pid_t, sig) };
    assert_eq!(r, 0, "kill({pid}, {sig}): {}", io::Error::last_os_error());
}

/// The calling thread's id.
pub(crate) fn gettid() -> u32 {
    // SAFETY: gettid takes no arguments and cannot fail.
    unsafe { libc::gettid() as u32 }
}

/// The ids of this process's threads.
pub(crate) fn thread_ids() -> BTreeSet<u32> {
    std::fs::read_dir("/proc/self/task")
        .expect("list /proc/self/task")
        .filter_map(|t| t.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// System calls that wait on a descriptor (what a blocked `get`, `recv` or
/// `poll` sleeps in).
pub(crate) const POLL: &[libc::c_long] = &[
    #[cfg(target_arch = "x86_64")]
    libc::SYS_poll,
    libc::SYS_ppoll,
];
/// What a thread blocked on a lock, semaphore, event, condition or barrier
/// sleeps in. A futex wait counts only when its word lies in multiproc
/// shared memory: threads also sleep briefly on private futexes (the
/// allocator's, the standard library's), which says nothing about the
/// primitive under test.
pub(crate) const FUTEX: &[libc::c_long] = &[libc::SYS_futex];
/// What a thread blocked reading a socket sleeps in.
pub(crate) const RECV: &[libc::c_long] = &[libc::SYS_recvmsg, libc::SYS_recvfrom];

/// Waits until thread `tid` of process `pid` is asleep inside one of
/// `syscalls`, as the kernel reports it (`/proc/PID/task/TID/syscall` and the
/// thread's state). This is the real signal that a child (or a thread of
/// this process) has got as far as blocking in a call. False on timeout.
pub(crate) fn wait_blocked_in(
    pid: u32,
    tid: u32,
    syscalls: &[libc::c_long],
    timeout: Duration,
) -> bool {
    eventually(timeout, || is_blocked_in(pid, tid, syscalls))
}

/// True when thread `tid` of process `pid` is asleep inside one of
/// `syscalls` now.
pub(crate) fn is_blocked_in(pid: u32, tid: u32, syscalls: &[libc::c_long]) -> bool {
    let base = format!("/proc/{pid}/task/{tid}");
    let Ok(sc) = std::fs::read_to_string(format!("{base}/syscall")) else { return false };
    let Some(nr) = sc.split_whitespace().next().and_then(|n| n.parse::<libc::c_long>().ok()) else {
        return false; // "running"
    };
    if !syscalls.contains(&nr) {
        return false;
    }
    if nr == libc::SYS_futex {
        let word = sc.split_whitespace().nth(1).and_then(parse_hex);
        if !word.is_some_and(|w| in_shared_memory(pid, w)) {
            return false;
        }
    }
    let Ok(stat) = std::fs::read_to_string(format!("{base}/stat")) else { return false };
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .is_some_and(|state| state == "S")
}

fn parse_hex(s: &str) -> Option<u64> {
    u64::from_str_radix(s.trim_start_matches("0x"), 16).ok()
}

/// True when `addr` lies in one of process `pid`'s mappings of multiproc
/// shared memory.
fn in_shared_memory(pid: u32, addr: u64) -> bool {
    let Ok(maps) = std::fs::read_to_string(format!("/proc/{pid}/maps")) else { return false };
    maps.lines().filter(|l| l.contains("/memfd:multiproc")).any(|l| {
        let range = l.split_whitespace().next().unwrap_or("");
        let (lo, hi) = range.split_once('-').unwrap_or(("", ""));
        matches!((parse_hex(lo), parse_hex(hi)), (Some(lo), Some(hi)) if (lo..hi).contains(&addr))
    })
}

/// As [`wait_blocked_in`] for the main thread of a child process (where a
/// `Process` runs its function).
pub(crate) fn wait_child_blocked_in(pid: u32, syscalls: &[libc::c_long]) -> bool {
    wait_blocked_in(pid, pid, syscalls, STARTUP)
}

/// As [`wait_blocked_in`] for a thread of this process.
pub(crate) fn wait_thread_blocked_in(tid: u32, syscalls: &[libc::c_long]) -> bool {
    wait_blocked_in(std::process::id(), tid, syscalls, STARTUP)
}

// --- descriptors and shared memory -------------------------------------------------

/// The targets of this process's open descriptors.
pub(crate) fn fd_targets() -> Vec<String> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc/self/fd").expect("list /proc/self/fd") {
        let entry = entry.expect("read /proc/self/fd");
        if let Ok(target) = std::fs::read_link(entry.path()) {
            out.push(target.to_string_lossy().into_owned());
        }
    }
    out
}

/// How many anonymous shared-memory files (multiproc's memfds) this process
/// has open.
pub(crate) fn memfd_count() -> usize {
    fd_targets().iter().filter(|t| t.starts_with("/memfd:multiproc")).count()
}

/// How many descriptors this process has open.
pub(crate) fn fd_count() -> usize {
    fd_targets().len()
}

/// How many message and shared-memory files of multiproc this worker has
/// mapped, leaving out its results ring (which lives as long as it does).
pub(crate) fn message_mapping_count() -> usize {
    std::fs::read_to_string("/proc/self/maps")
        .expect("read /proc/self/maps")
        .lines()
        .filter(|l| l.contains("/memfd:multiproc") && !l.contains("/memfd:multiproc-results"))
        .count()
}

/// How many multiproc shared-memory files this process has mapped (a mapping
/// outlives its descriptor, so this is the other half of "freed").
pub(crate) fn memfd_mapping_count() -> usize {
    std::fs::read_to_string("/proc/self/maps")
        .expect("read /proc/self/maps")
        .lines()
        .filter(|l| l.contains("/memfd:multiproc"))
        .count()
}

/// The names in /dev/shm.
pub(crate) fn dev_shm() -> BTreeSet<String> {
    match std::fs::read_dir("/dev/shm") {
        Ok(dir) => {
            dir.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into()).collect()
        }
        Err(_) => BTreeSet::new(),
    }
}
