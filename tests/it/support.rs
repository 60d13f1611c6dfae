//! What the tests share: time bounds, scratch directories, and the real
//! signals tests and tasks synchronise on (a datagram beacon a task sends to,
//! a file-lock gate a task waits behind, a pidfd that reports a process's end).

use std::any::Any;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long a crash may take to reach the caller as an error.
pub(crate) const PROMPT: Duration = Duration::from_secs(2);
/// A bound for anything that includes starting worker processes.
pub(crate) const STARTUP: Duration = Duration::from_secs(10);

// --- tasks shared by several modules -------------------------------------

/// The pid of the process running the task.
pub(crate) fn getpid(_: ()) -> u32 {
    std::process::id()
}

pub(crate) fn sqr(x: u64) -> u64 {
    x * x
}

/// Sends this process's pid to `beacon`, then sleeps far longer than any test.
/// Tests kill the process (or its pool) before it wakes.
pub(crate) fn announce_then_sleep(beacon: String) -> u32 {
    send_beacon(&beacon, &std::process::id().to_string());
    std::thread::sleep(Duration::from_secs(60));
    std::process::id()
}

/// Tells the test it started (with its pid), then waits at the gate.
pub(crate) fn announce_and_wait(beacon: String, gate: String) -> u32 {
    send_beacon(&beacon, &std::process::id().to_string());
    wait_at_gate(&gate);
    std::process::id()
}

/// Keeps a process that is about to crash from writing a core file.
pub(crate) fn no_core_dump() {
    let zero = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: setrlimit reads a live rlimit struct and touches nothing else.
    unsafe { libc::setrlimit(libc::RLIMIT_CORE, &zero) };
    // SAFETY: prctl(PR_SET_DUMPABLE, 0) takes plain integers; it also stops a
    // core pattern that pipes to a helper from receiving a dump.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0 as libc::c_ulong) };
}

// --- time bounds ----------------------------------------------------------

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

/// Asserts that `elapsed` is below `limit`, naming `what`.
#[track_caller]
pub(crate) fn assert_faster(elapsed: Duration, limit: Duration, what: &str) {
    assert!(elapsed < limit, "{what} took {elapsed:?}, more than {limit:?}");
}

/// The text of a panic payload.
pub(crate) fn panic_text(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(not a string)".to_string()
    }
}

// --- scratch directories --------------------------------------------------

/// A fresh directory, removed when dropped.
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    pub(crate) fn new() -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        let path = std::env::temp_dir().join(format!(
            "multiproc-it-{}-{}-{nanos}",
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

/// Appends one line to the file at `path` (tasks use it as a log). One
/// write of the whole line, so lines from concurrent processes never
/// interleave.
pub(crate) fn append_line(path: &str, line: &str) {
    use std::io::Write;
    let mut f =
        std::fs::OpenOptions::new().create(true).append(true).open(path).expect("open the log");
    f.write_all(format!("{line}\n").as_bytes()).expect("write the log");
}

/// The lines of the file at `path`; none if it does not exist.
pub(crate) fn read_lines(path: &str) -> Vec<String> {
    match std::fs::read_to_string(path) {
        Ok(s) => s.lines().map(str::to_string).collect(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => panic!("read {path}: {e}"),
    }
}

// --- beacon: a task tells the test something ---------------------------------

/// A datagram socket the test listens on; tasks in any process send to it.
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

    /// The address to hand to tasks.
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

    /// The next message as a pid.
    pub(crate) fn recv_pid(&self, timeout: Duration, what: &str) -> u32 {
        let msg = self.recv(timeout, what);
        msg.parse().unwrap_or_else(|_| panic!("{what}: not a pid: {msg:?}"))
    }
}

/// Sends `msg` to the beacon at `path` (from any process).
pub(crate) fn send_beacon(path: &str, msg: &str) {
    let socket = UnixDatagram::unbound().expect("a datagram socket");
    socket.send_to(msg.as_bytes(), path).expect("send to the beacon");
}

// --- gate: a task waits until the test lets it go ---------------------------

/// A file the test holds an exclusive lock on; a task that calls
/// [`wait_at_gate`] blocks until the test calls [`Gate::open`] or drops it.
pub(crate) struct Gate {
    _dir: TempDir,
    path: String,
    file: Option<File>,
}

impl Gate {
    pub(crate) fn new() -> Gate {
        let dir = TempDir::new();
        let path = dir.file("gate");
        let file = File::create(&path).expect("create the gate");
        // SAFETY: flock takes an open descriptor and a constant.
        let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
        assert_eq!(r, 0, "lock the gate: {}", io::Error::last_os_error());
        Gate { _dir: dir, path, file: Some(file) }
    }

    /// The path to hand to tasks.
    pub(crate) fn path(&self) -> String {
        self.path.clone()
    }

    /// Lets every waiting (and future) task through.
    pub(crate) fn open(&mut self) {
        self.file = None;
    }
}

/// Blocks until the gate at `path` is opened. A gate already dropped (its
/// file removed with its directory) is open: a task that only starts after
/// the test let go of its gate must pass, not fail on the missing file.
pub(crate) fn wait_at_gate(path: &str) {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return,
        Err(e) => panic!("open the gate: {e}"),
    };
    // SAFETY: flock takes an open descriptor and a constant; it blocks until
    // the test releases its exclusive lock.
    let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH) };
    assert_eq!(r, 0, "wait at the gate: {}", io::Error::last_os_error());
}

// --- processes ---------------------------------------------------------------

/// Waits until process `pid` (any process, not only a child) has ended, using
/// a pidfd, which becomes readable when it exits. Returns false on timeout.
/// Without pidfds (valgrind, `no-pidfd` in the bench crate) it asks `/proc`.
pub(crate) fn wait_pid_gone(pid: u32, timeout: Duration) -> bool {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::ENOSYS) {
            let deadline = Instant::now() + timeout;
            while pid_is_running(pid) {
                if Instant::now() >= deadline {
                    return false;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            return true;
        }
        assert_eq!(err.raw_os_error(), Some(libc::ESRCH), "pidfd_open({pid}): {err}");
        return true;
    }
    // SAFETY: `fd` was just returned by the kernel and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let deadline = Instant::now() + timeout;
    loop {
        let mut p = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        let left = deadline.saturating_duration_since(Instant::now());
        let ms = left.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: `p` is one live pollfd.
        let n = unsafe { libc::poll(&mut p, 1, ms) };
        if n > 0 {
            return true;
        }
        if n == 0 {
            return false;
        }
        let err = io::Error::last_os_error();
        assert_eq!(err.kind(), io::ErrorKind::Interrupted, "poll a pidfd: {err}");
    }
}

/// True while process `pid` exists and has not exited (a zombie counts as
/// gone: it runs nothing, and reaping it is its parent's business).
pub(crate) fn pid_is_running(pid: u32) -> bool {
    match std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("stat")) {
        // The state follows the command name, which is in parentheses.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// Sends `sig` to `pid`.
pub(crate) fn send_signal(pid: u32, sig: i32) {
    // SAFETY: kill takes plain integers and touches no memory.
    let r = unsafe { libc::kill(pid as libc::pid_t, sig) };
    assert_eq!(r, 0, "kill({pid}, {sig}): {}", io::Error::last_os_error());
}

/// True while `/proc/<pid>` exists: the process runs, or is a zombie nobody
/// has reaped yet.
pub(crate) fn pid_exists(pid: u32) -> bool {
    Path::new("/proc").join(pid.to_string()).exists()
}

/// Polls `cond` until it holds; false if it still does not after `limit`.
/// Only for conditions no descriptor can signal (a child being reaped).
pub(crate) fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

// --- a process of the test's own -------------------------------------------

/// Whether the calling test should run its body here.
///
/// Under nextest every test has a process of its own. Under `cargo test` the
/// tests share one, so a test that reads process-wide state (its open
/// descriptors, mappings, threads, environment or working directory) would
/// see its neighbours'. Such a test calls this first: under `cargo test` it
/// runs the same test again in a child process, alone, asserts that it passed
/// and returns `false`; in the child, or under nextest, it returns `true`.
#[track_caller]
pub(crate) fn alone() -> bool {
    const MARK: &str = "MULTIPROC_TEST_ALONE";
    let own_process = std::env::var_os("NEXTEST_EXECUTION_MODE")
        .is_some_and(|m| m == "process-per-test")
        || std::env::var_os(MARK).is_some();
    if own_process {
        return true;
    }
    rerun_with(&[(MARK, "1")]);
    false
}

/// Runs the calling test again in a copy of this binary, alone, with `env`
/// added to its environment, and asserts that it passed there. The test
/// tells the copy from itself by what `env` sets.
#[track_caller]
pub(crate) fn rerun_with(env: &[(&str, &str)]) {
    let name = std::thread::current()
        .name()
        .expect("called on the test's own thread (libtest names it after the test)")
        .to_string();
    let exe = std::env::current_exe().expect("the test binary's path");
    let out = std::process::Command::new(exe)
        .args([name.as_str(), "--exact", "--test-threads=1"])
        .envs(env.iter().copied())
        .output()
        .expect("run the test in a process of its own");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "{name}, run again with {env:?}, failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The count of items a process's exit flush reports it dropped, read from
/// its standard error (`… exits with N queue item(s) …`).
pub(crate) fn exit_flush_dropped(stderr: &str) -> u64 {
    stderr
        .split("exits with ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exit-flush message naming a count in: {stderr:?}"))
}
