//! The crate's one error type: an opaque [`Error`] with a matchable [`ErrorKind`]
//! and predicates for the common questions.

use std::fmt;
use std::sync::Arc;

/// `Result<T, multiproc::Error>`.
///
/// # Examples
///
/// ```
/// fn first(q: &multiproc::Queue<u32>) -> multiproc::Result<u32> {
///     q.get_timeout(std::time::Duration::from_secs(1))
/// }
/// let q = multiproc::Queue::new()?;
/// q.put(3).unwrap();
/// assert_eq!(first(&q)?, 3);
/// # Ok::<(), multiproc::Error>(())
/// ```
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, for matching. New kinds may be added.
///
/// # Examples
///
/// ```
/// use multiproc::{ErrorKind, Pool};
///
/// fn boom(_: ()) { panic!("boom") }
///
/// let pool = Pool::new(1)?;
/// let err = pool.apply(boom, ()).unwrap_err();
/// assert_eq!(err.kind(), ErrorKind::TaskPanicked);
/// # Ok::<(), multiproc::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The task panicked; [`Error::panic_message`] and [`Error::location`] say where.
    TaskPanicked,
    /// The worker process running the task died (signal or exit code).
    WorkerDied,
    /// A time bound passed. The one rule for every timeout in the crate:
    /// any call given a time bound that passes reports `Timeout`, whatever
    /// it waited for — a `get`/`put`/`recv`/`wait` with a timeout (queues,
    /// pipes, futures, results, an `IMap::next_timeout`), the pool's
    /// per-task timeout, a per-call timeout (`pool.timeout(d).apply(..)`).
    /// Only the calls that do not wait at all (`get_nowait`, `put_nowait`)
    /// say why they could not proceed: [`Empty`](ErrorKind::Empty) or
    /// [`Full`](ErrorKind::Full).
    Timeout,
    /// The task was cancelled before it ran (the pool was terminated or dropped).
    Cancelled,
    /// The pool no longer accepts tasks (it was closed or terminated).
    PoolNotRunning,
    /// The operation needs a closed pool (`join` before `close`).
    PoolStillRunning,
    /// The pool's initializer failed in a worker.
    InitializerFailed,
    /// A value could not be serialized.
    Serialize,
    /// A value could not be deserialized.
    Deserialize,
    /// A worker is not the same build as its parent.
    BuildMismatch,
    /// An argument was out of range (0 workers, chunksize 0, …).
    InvalidArgument,
    /// The result was already taken by an earlier `get`.
    ResultTaken,
    /// The operation is not valid in the object's current state (e.g. `start` twice).
    InvalidState,
    /// A peer sent bytes that are not a valid frame.
    Protocol,
    /// A barrier was aborted, reset, or a wait on it timed out.
    BrokenBarrier,
    /// The other end of a pipe is closed in every process, or the queue was
    /// closed.
    Closed,
    /// A queue had no item, for a call that does not wait (`get_nowait`);
    /// a wait with a timeout reports [`Timeout`](ErrorKind::Timeout).
    Empty,
    /// A bounded queue had no free place, for a call that does not wait
    /// (`put_nowait`); a wait with a timeout reports
    /// [`Timeout`](ErrorKind::Timeout).
    Full,
    /// An operating-system call failed.
    Io,
    /// A [`connection`](crate::connection) peer failed the authentication
    /// handshake: its key differs, it spoke another protocol, or it did not
    /// finish in time.
    Authentication,
    /// A receive buffer was too short for the next message, which was kept
    /// for the next receive.
    BufferTooShort,
    /// A task's allocation failed under the pool's hard memory limit
    /// (`memory_limit`); its worker was replaced. The message names the limit.
    MemoryLimit,
}

#[derive(Debug)]
struct Inner {
    kind: ErrorKind,
    message: String,
    pid: Option<u32>,
    signal: Option<i32>,
    exit_code: Option<i32>,
    panic: Option<(String, Option<String>)>,
    /// Shared, so an error re-labelled with a pid keeps its source.
    io: Option<Arc<std::io::Error>>,
}

/// The error of every fallible multiproc operation.
///
/// Cheap to clone (a reference count), so a task's error can be handed to a
/// callback and still be returned by every later `get`.
///
/// # Examples
///
/// ```
/// use multiproc::{ErrorKind, Pool};
///
/// fn boom(_: ()) -> u32 { panic!("boom") }
///
/// let pool = Pool::new(1).unwrap();
/// let err = pool.apply(boom, ()).unwrap_err();
/// assert_eq!(err.kind(), ErrorKind::TaskPanicked);
/// assert_eq!(err.panic_message(), Some("boom"));
/// ```
#[derive(Clone)]
pub struct Error(Arc<Inner>);

impl Error {
    fn build(kind: ErrorKind, message: String) -> Inner {
        Inner { kind, message, pid: None, signal: None, exit_code: None, panic: None, io: None }
    }

    pub(crate) fn new(kind: ErrorKind, message: impl Into<String>) -> Error {
        Error(Arc::new(Self::build(kind, message.into())))
    }

    pub(crate) fn io(context: impl fmt::Display, err: std::io::Error) -> Error {
        let mut inner = Self::build(ErrorKind::Io, format!("{context}: {err}"));
        inner.io = Some(Arc::new(err));
        Error(Arc::new(inner))
    }

    pub(crate) fn panicked(message: String, location: Option<String>, pid: Option<u32>) -> Error {
        let text = match (&location, pid) {
            (Some(loc), Some(pid)) => format!("task panicked in worker {pid} at {loc}: {message}"),
            (Some(loc), None) => format!("task panicked at {loc}: {message}"),
            (None, Some(pid)) => format!("task panicked in worker {pid}: {message}"),
            (None, None) => format!("task panicked: {message}"),
        };
        let mut inner = Self::build(ErrorKind::TaskPanicked, text);
        inner.panic = Some((message, location));
        inner.pid = pid;
        Error(Arc::new(inner))
    }

    /// A panic in the caller's input iterator of a map (not in any task).
    pub(crate) fn input_panicked(message: String, location: Option<String>) -> Error {
        let at = location.as_deref().map(|l| format!(" at {l}")).unwrap_or_default();
        let text = format!(
            "the input iterator panicked{at}: {message}; the results of the items before it were \
             delivered and no later item was read (fix the iterator)"
        );
        let mut inner = Self::build(ErrorKind::TaskPanicked, text);
        inner.panic = Some((message, location));
        Error(Arc::new(inner))
    }

    pub(crate) fn worker_died(
        pid: u32,
        signal: Option<i32>,
        exit_code: Option<i32>,
        doing: &str,
    ) -> Error {
        let how = match (signal, exit_code) {
            (Some(sig), _) => format!("was killed by {}", crate::sys::signal_name(sig)),
            (None, Some(code)) => format!("exited with code {code}"),
            (None, None) => "closed its channel".to_string(),
        };
        let text = format!("worker {pid} {how} {doing}; the pool started a replacement");
        let mut inner = Self::build(ErrorKind::WorkerDied, text);
        inner.pid = Some(pid);
        inner.signal = signal;
        inner.exit_code = exit_code;
        Error(Arc::new(inner))
    }

    pub(crate) fn with_pid(self, pid: u32) -> Error {
        let mut inner = Self::build(self.0.kind, self.0.message.clone());
        inner.pid = Some(pid);
        inner.signal = self.0.signal;
        inner.exit_code = self.0.exit_code;
        inner.panic = self.0.panic.clone();
        inner.io = self.0.io.clone();
        Error(Arc::new(inner))
    }

    pub(crate) fn timeout(message: impl Into<String>) -> Error {
        Self::new(ErrorKind::Timeout, message)
    }

    /// The one "not running" error: `what` names the refusing face ("pool",
    /// "executor", "MPI rank") and `why` says how it stopped.
    pub(crate) fn not_running_because(what: &str, why: &str) -> Error {
        Self::new(
            ErrorKind::PoolNotRunning,
            format!("the {what} is not running: {why}, so it takes no new tasks; create a new one"),
        )
    }

    pub(crate) fn not_running() -> Error {
        Self::not_running_because("pool", "it was closed or terminated")
    }

    /// The one "cancelled" error: `task` names the task, `how` says what
    /// cancelled it and what became of it.
    pub(crate) fn cancelled(task: &str, how: &str) -> Error {
        Self::new(
            ErrorKind::Cancelled,
            format!("{task} was cancelled: {how}; resubmit it if its result is still needed"),
        )
    }

    /// The one build-mismatch error: `who` names the process that runs
    /// another build of the program than this one.
    pub(crate) fn build_mismatch(who: &str) -> Error {
        Self::new(
            ErrorKind::BuildMismatch,
            format!(
                "{who} runs another build of the program than this process, so it cannot run \
                 its tasks; rebuild once and run that one executable everywhere"
            ),
        )
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        self.0.kind
    }

    /// True when a time bound passed.
    pub fn is_timeout(&self) -> bool {
        self.0.kind == ErrorKind::Timeout
    }

    /// True when the task panicked.
    pub fn is_panic(&self) -> bool {
        self.0.kind == ErrorKind::TaskPanicked
    }

    /// True when the worker process running the task died.
    pub fn is_worker_died(&self) -> bool {
        self.0.kind == ErrorKind::WorkerDied
    }

    /// True when the task was cancelled before it could finish.
    pub fn is_cancelled(&self) -> bool {
        self.0.kind == ErrorKind::Cancelled
    }

    /// True for a (de)serialisation failure in either direction.
    pub fn is_serialization(&self) -> bool {
        matches!(self.0.kind, ErrorKind::Serialize | ErrorKind::Deserialize)
    }

    /// The pid of the worker involved, when one was.
    pub fn pid(&self) -> Option<u32> {
        self.0.pid
    }

    /// The signal that killed the worker, for [`ErrorKind::WorkerDied`].
    pub fn signal(&self) -> Option<i32> {
        self.0.signal
    }

    /// The exit code of the worker, for [`ErrorKind::WorkerDied`].
    pub fn exit_code(&self) -> Option<i32> {
        self.0.exit_code
    }

    /// The panic message, for [`ErrorKind::TaskPanicked`].
    pub fn panic_message(&self) -> Option<&str> {
        self.0.panic.as_ref().map(|(m, _)| m.as_str())
    }

    /// Where the task panicked (`file:line:column`), for [`ErrorKind::TaskPanicked`].
    pub fn location(&self) -> Option<&str> {
        self.0.panic.as_ref().and_then(|(_, l)| l.as_deref())
    }

    /// The full message.
    pub fn message(&self) -> &str {
        &self.0.message
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.message)
    }
}

/// The kind, the message, and whichever of pid, signal, exit code and
/// operating-system error the failure has: what a `{:?}` in a log or an
/// `unwrap` should show.
impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Error");
        d.field("kind", &self.0.kind).field("message", &self.0.message);
        if let Some(pid) = self.0.pid {
            d.field("pid", &pid);
        }
        if let Some(sig) = self.0.signal {
            d.field("signal", &format_args!("{sig} ({})", crate::sys::signal_name(sig)));
        }
        if let Some(code) = self.0.exit_code {
            d.field("exit_code", &code);
        }
        if let Some(io) = &self.0.io {
            d.field("io", &format_args!("{:?}", io.kind()));
        }
        d.finish()
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.io.as_deref().map(|e| e as _)
    }
}

/// Keeps the operating system's error kind when there is one (`NotFound`,
/// `PermissionDenied`, …), so `?` into an `io::Result` loses nothing.
impl From<Error> for std::io::Error {
    fn from(e: Error) -> Self {
        let kind = e.0.io.as_ref().map_or(std::io::ErrorKind::Other, |io| io.kind());
        std::io::Error::new(kind, e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[test]
    fn debug_shows_the_pid_signal_and_exit_code_a_log_needs() {
        let killed = Error::worker_died(4242, Some(9), None, "while running a task");
        let shown = format!("{killed:?}");
        assert!(shown.contains("pid: 4242"), "{shown}");
        assert!(shown.contains("signal: 9 (SIGKILL)"), "{shown}");
        assert!(!shown.contains("exit_code"), "{shown}");
        let exited = Error::worker_died(7, None, Some(3), "while running a task");
        assert!(format!("{exited:?}").contains("exit_code: 3"), "{exited:?}");
    }

    #[test]
    fn a_pid_added_later_keeps_the_os_error_as_source_and_kind() {
        let denied = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        let e = Error::io("could not open the socket", denied).with_pid(12);
        assert_eq!(e.pid(), Some(12));
        let source = e.source().expect("the io error is kept as the source");
        assert_eq!(
            source.downcast_ref::<std::io::Error>().map(std::io::Error::kind),
            Some(std::io::ErrorKind::PermissionDenied)
        );
        assert!(format!("{e:?}").contains("io: PermissionDenied"), "{e:?}");
        let back: std::io::Error = e.into();
        assert_eq!(back.kind(), std::io::ErrorKind::PermissionDenied);
        let other: std::io::Error = Error::timeout("late").into();
        assert_eq!(other.kind(), std::io::ErrorKind::Other);
    }
}
