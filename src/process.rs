//! `Process`: one function run in a child process, as Python's
//! `multiprocessing.Process`; and `current_process`, `parent_process`,
//! `active_children`, `cpu_count`.

use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{Error, ErrorKind, Result};
use crate::spawn::{self, Child, ChildInfo};
use crate::sys;
use crate::task::{self, TaskFn};
use crate::wire::{self, Call, Conn};
use crate::worker::{self, ROLE_PROCESS};

static PROCESS_NUMBER: AtomicUsize = AtomicUsize::new(1);

/// A type whose value can be the body of a [`Process`]: Python's subclass of
/// `Process` with a `run` method. The value is sent to the child, which calls
/// `run` on it.
///
/// # Examples
///
/// ```
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct Greeter {
///     name: String,
/// }
///
/// impl multiproc::Run for Greeter {
///     fn run(self) {
///         println!("hello, {}", self.name);
///     }
/// }
///
/// let mut p = multiproc::Process::from_run(Greeter { name: "world".into() });
/// p.start()?;
/// p.join()?;
/// # Ok::<(), multiproc::Error>(())
/// ```
pub trait Run: Serialize + DeserializeOwned + 'static {
    /// The child's work.
    fn run(self);
}

fn call_run<T: Run>(value: T) {
    value.run()
}

struct Target {
    offset: i64,
    chunk: Vec<u8>,
    fds: Vec<std::os::fd::OwnedFd>,
    /// Why the arguments could not be encoded, if they could not.
    error: Option<Error>,
}

/// A function running in a child process.
///
/// Build it with [`Process::new`] (a function and its arguments) or
/// [`Process::from_run`] (a value of a [`Run`] type), then [`start`](Process::start)
/// it and [`join`](Process::join) it. [`exitcode`](Process::exitcode) follows
/// Python: 0 on success, 1 when the function panicked, N for `exit(N)`, minus
/// the signal number when killed.
///
/// The child is forked from a small fork server, a copy of this program
/// started once and kept before `main` (so it holds no state of yours); it
/// sees the environment and working directory the parent has at `start`.
/// Set `MULTIPROC_START=exec` to re-execute the program for every child
/// instead; that is also what happens under valgrind or where the kernel
/// cannot serve the fork server.
///
/// The child dies with its parent (no orphans). A non-daemon child still
/// running when the parent returns from `main` is waited for, as in Python; a
/// daemon child is killed.
///
/// # Examples
///
/// ```
/// use multiproc::Process;
///
/// fn greet(name: String) { println!("hello, {name}"); }
///
/// let mut p = Process::new(greet, "bob".to_string());
/// p.start()?;
/// p.join()?;
/// assert_eq!(p.exitcode(), Some(0));
/// # Ok::<(), multiproc::Error>(())
/// ```
pub struct Process {
    name: String,
    daemon: bool,
    target: Option<Target>,
    /// The child once started, behind a lock so `is_alive`/`exitcode` can
    /// reap it from `&self`.
    child: Option<Mutex<Started>>,
    /// Readable once the child has ended: its pidfd, opened at the first
    /// [`Process::sentinel`].
    sentinel: OnceLock<OwnedFd>,
}

/// A started child and, once it is reaped, its exit code.
struct Started {
    child: Child,
    exitcode: Option<i32>,
}

impl Process {
    fn started(&self) -> Option<std::sync::MutexGuard<'_, Started>> {
        self.child.as_ref().map(|m| m.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// A process that will run `f(args)`. Several arguments go in a tuple.
    /// Arguments that fail to serialize make [`start`](Process::start) fail.
    ///
    /// # Examples
    ///
    /// ```
    /// fn greet(name: String) {
    ///     println!("hello, {name}");
    /// }
    ///
    /// let mut p = multiproc::Process::new(greet, "world".to_string());
    /// p.start()?;
    /// p.join()?;
    /// assert_eq!(p.exitcode(), Some(0));
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    pub fn new<F, A, M>(f: F, args: A) -> Process
    where
        F: TaskFn<A, M> + Copy,
        A: Serialize + DeserializeOwned,
        F::Output: Serialize,
    {
        let _ = f;
        let (chunk, fds) = task::encode_chunk(std::slice::from_ref(&args));
        let error = match task::ItemReader::new(&chunk).next() {
            Some(Err(failure)) => Some(failure.into_error(None)),
            _ => None,
        };
        Process {
            name: format!("Process-{}", PROCESS_NUMBER.fetch_add(1, Ordering::Relaxed)),
            daemon: false,
            target: Some(Target {
                offset: task::trampoline_offset::<F, A, M>(),
                chunk,
                fds,
                error,
            }),
            child: None,
            sentinel: OnceLock::new(),
        }
    }

    /// A process that will call `value.run()`.
    pub fn from_run<T: Run>(value: T) -> Process {
        Process::new(call_run::<T>, value)
    }

    /// Sets the name (before or after start; the child sees the name it had
    /// at start).
    pub fn set_name(&mut self, name: impl Into<String>) -> &mut Self {
        self.name = name.into();
        self
    }

    /// Makes the process a daemon: killed rather than awaited when the parent
    /// exits.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidState`] after [`start`](Self::start).
    pub fn set_daemon(&mut self, daemon: bool) -> Result<&mut Self> {
        if self.target.is_none() {
            return Err(Error::new(
                ErrorKind::InvalidState,
                "daemon can only be set before the process is started",
            ));
        }
        self.daemon = daemon;
        Ok(self)
    }

    /// The process's name (`Process-N` unless set).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the process is a daemon.
    pub fn daemon(&self) -> bool {
        self.daemon
    }

    /// The child's pid once started.
    pub fn pid(&self) -> Option<u32> {
        self.started().map(|s| s.child.id())
    }

    /// A descriptor that becomes readable when the process ends (Python's
    /// `sentinel`), and stays readable: poll it with your own event loop,
    /// or pass it to [`connection::wait`](crate::connection::wait) beside
    /// connections. It is the child's pidfd, opened at the first call; it
    /// does not reap the child ([`join`](Process::join) or
    /// [`exitcode`](Process::exitcode) still tell how it ended) and lives as
    /// long as this `Process`.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidState`] before [`start`](Process::start);
    /// [`ErrorKind::Io`] when the kernel has no pidfds (before Linux 5.3, or
    /// under valgrind).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use multiproc::{connection, pipe_one_way, Process};
    ///
    /// fn nap(ms: u64) { std::thread::sleep(Duration::from_millis(ms)) }
    ///
    /// let (rx, _tx) = pipe_one_way::<u32>()?;
    /// let mut p = Process::new(nap, 50u64);
    /// p.start()?;
    /// let ended = p.sentinel()?;
    /// // Whichever comes first: a message on `rx` (index 0) or the child's end (1).
    /// assert_eq!(connection::wait(&[&rx, &ended], Some(Duration::from_secs(10)))?, vec![1]);
    /// p.join()?;
    /// assert_eq!(p.exitcode(), Some(0));
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    pub fn sentinel(&self) -> Result<BorrowedFd<'_>> {
        use std::os::fd::AsFd;
        if let Some(fd) = self.sentinel.get() {
            return Ok(fd.as_fd());
        }
        let Some(started) = self.started() else {
            return Err(Error::new(
                ErrorKind::InvalidState,
                "a process has a sentinel only once it is started",
            ));
        };
        let pid = started.child.id();
        let fd = if started.exitcode.is_some() {
            // Reaped already, so the pid may name another process now: the
            // sentinel is a socket at end of file, readable for good.
            let (end, _) = std::os::unix::net::UnixStream::pair()
                .map_err(|e| Error::io("could not create a process sentinel", e))?;
            OwnedFd::from(end)
        } else {
            // Not reaped (that takes the lock held here), so the pid is still ours.
            sys::pidfd_open(pid)
                .map_err(|e| Error::io(format!("could not open a pidfd for process {pid}"), e))?
        };
        drop(started);
        Ok(self.sentinel.get_or_init(|| fd).as_fd())
    }

    /// Starts the child and returns at once.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidState`] when called twice; [`ErrorKind::Io`] when
    /// the child cannot be started.
    ///
    /// # Examples
    ///
    /// ```
    /// let mut p = multiproc::Process::new(|()| {}, ());
    /// p.start()?;
    /// assert!(p.pid().is_some());
    /// p.join()?;
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    pub fn start(&mut self) -> Result<()> {
        let Some(target) = self.target.take() else {
            return Err(Error::new(ErrorKind::InvalidState, "a process can be started only once"));
        };
        if let Some(e) = target.error {
            return Err(e);
        }
        ensure_exit_hook();
        let spawned = spawn::spawn(ROLE_PROCESS, &self.name, self.daemon)?;
        self.child = Some(Mutex::new(Started { child: spawned.child, exitcode: None }));
        let mut conn = Conn::new(spawned.channel);
        let call = Call { entry: target.offset, chunk: &target.chunk[..] };
        let run = wire::Run { fingerprint: task::fingerprint(), call };
        run.encode(conn.output(), target.fds)?;
        // The child reads its frame first thing; a child that died before
        // reading shows up as its exit code, so a failed write is not an error.
        let _ = conn.flush_blocking();
        Ok(())
    }

    fn poll_exit(&self, timeout: Option<Duration>) -> Result<bool> {
        use std::os::unix::process::ExitStatusExt;
        let pid = match self.started() {
            None => return Ok(false),
            Some(s) if s.exitcode.is_some() => return Ok(true),
            Some(s) => s.child.id(),
        };
        // Waits without the lock (so `&self` callers are not blocked); the
        // child is not reaped before `try_wait` below, so `pid` is still ours.
        if timeout != Some(Duration::ZERO) {
            let exited = sys::wait_exit(pid, timeout)
                .map_err(|e| Error::io(format!("could not wait for process {pid}"), e))?;
            if !exited {
                return Ok(false);
            }
        }
        let Some(mut started) = self.started() else { return Ok(false) };
        if started.exitcode.is_some() {
            return Ok(true);
        }
        match started.child.try_wait() {
            Ok(Some(status)) => {
                started.exitcode = status.code().or_else(|| status.signal().map(|s| -s));
                spawn::unregister(pid);
                Ok(true)
            }
            Ok(None) => Ok(false),
            Err(e) => Err(Error::io(format!("could not wait for process {pid}"), e)),
        }
    }

    /// Waits for the process to exit.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidState`] before [`start`](Self::start).
    pub fn join(&mut self) -> Result<()> {
        self.require_started()?;
        while !self.poll_exit(None)? {}
        Ok(())
    }

    /// Waits at most `timeout`; returns true when the process has exited.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidState`] before [`start`](Self::start).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let mut p = multiproc::Process::new(|()| std::thread::sleep(Duration::from_secs(30)), ());
    /// p.start()?;
    /// assert!(!p.join_timeout(Duration::from_millis(10))?); // still running
    /// p.kill()?;
    /// assert!(p.join_timeout(Duration::from_secs(10))?);
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    pub fn join_timeout(&mut self, timeout: Duration) -> Result<bool> {
        self.require_started()?;
        self.poll_exit(Some(timeout))
    }

    fn require_started(&self) -> Result<()> {
        if self.child.is_none() {
            return Err(Error::new(
                ErrorKind::InvalidState,
                "a process must be started before it is joined",
            ));
        }
        Ok(())
    }

    /// True from [`start`](Self::start) until the child exits.
    pub fn is_alive(&self) -> bool {
        self.child.is_some() && !self.poll_exit(Some(Duration::ZERO)).unwrap_or(true)
    }

    /// Python's exit code: `None` before start and while running.
    pub fn exitcode(&self) -> Option<i32> {
        let _ = self.poll_exit(Some(Duration::ZERO));
        self.started().and_then(|s| s.exitcode)
    }

    fn signal(&mut self, sig: i32) -> Result<()> {
        if self.poll_exit(Some(Duration::ZERO))? {
            return Ok(()); // already exited: nothing to signal (as in Python)
        }
        match self.pid() {
            // Not reaped yet, so the pid cannot have been reused.
            Some(pid) => sys::kill(pid, sig)
                .map_err(|e| Error::io(format!("could not signal process {pid}"), e)),
            None => Err(Error::new(ErrorKind::InvalidState, "the process was not started")),
        }
    }

    /// Sends SIGTERM; the exit code becomes -15 once it is gone.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidState`] before [`start`](Self::start).
    pub fn terminate(&mut self) -> Result<()> {
        self.signal(sys::SIGTERM)
    }

    /// Sends SIGKILL; the exit code becomes -9 once it is gone.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidState`] before [`start`](Self::start).
    pub fn kill(&mut self) -> Result<()> {
        self.signal(sys::SIGKILL)
    }
}

impl Drop for Process {
    /// Dropping the handle does not stop the child; it is reaped in the
    /// background so it never lingers as a zombie.
    fn drop(&mut self) {
        if let Some(started) = self.child.take() {
            let started = started.into_inner().unwrap_or_else(|p| p.into_inner());
            if started.exitcode.is_none() {
                spawn::reap_in_background(started.child);
            }
        }
    }
}

impl std::fmt::Debug for Process {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Process")
            .field("name", &self.name)
            .field("pid", &self.pid())
            .field("daemon", &self.daemon)
            .field("exitcode", &self.started().and_then(|s| s.exitcode))
            .finish()
    }
}

/// Runs when the parent returns from `main`: waits for non-daemon children
/// and kills daemon ones, as Python does at interpreter exit.
extern "C" fn at_exit() {
    // Executors' workers are daemon children: let the executors finish the
    // work they were given first, whichever hook was registered first.
    crate::executor::exit::finish_all();
    let children = spawn::live_children();
    for c in children.iter().filter(|c| c.daemon) {
        let _ = sys::kill(c.pid, sys::SIGKILL);
    }
    for c in children.iter().filter(|c| !c.daemon) {
        let _ = sys::wait_exit(c.pid, None);
    }
}

fn ensure_exit_hook() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        crate::sys::at_exit(at_exit);
    });
}

/// Who a process is: its name and pid.
///
/// # Examples
///
/// ```
/// let me = multiproc::current_process();
/// assert_eq!(me.pid, std::process::id());
/// assert!(multiproc::parent_process().is_none()); // not started by multiproc
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessInfo {
    /// `MainProcess` for the program, else the name it was started with.
    pub name: String,
    /// The process id.
    pub pid: u32,
}

/// This process: `MainProcess`, or the name a multiproc parent gave it.
///
/// # Examples
///
/// ```
/// assert_eq!(multiproc::current_process().name, "MainProcess");
/// ```
pub fn current_process() -> ProcessInfo {
    let name = worker::identity().map_or_else(|| "MainProcess".to_string(), |i| i.name.clone());
    ProcessInfo { name, pid: std::process::id() }
}

/// The process that started this one through multiproc, if any.
pub fn parent_process() -> Option<ProcessInfo> {
    worker::identity().map(|i| ProcessInfo {
        name: if i.parent == 0 { String::new() } else { "MainProcess".to_string() },
        pid: i.parent,
    })
}

/// The children started by this process (processes and pool workers) that
/// are still running.
///
/// # Examples
///
/// ```
/// let mut p = multiproc::Process::new(|()| std::thread::sleep(std::time::Duration::from_secs(30)), ());
/// p.start()?;
/// assert!(multiproc::active_children().iter().any(|c| Some(c.pid) == p.pid()));
/// p.kill()?;
/// p.join()?;
/// # Ok::<(), multiproc::Error>(())
/// ```
pub fn active_children() -> Vec<ChildInfo> {
    spawn::live_children()
}

/// The number of CPUs this process may run on.
///
/// # Examples
///
/// ```
/// assert!(multiproc::cpu_count() >= 1);
/// ```
pub fn cpu_count() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
