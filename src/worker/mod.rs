//! The child side: the entry before `main`, the handshake, and the task loop.
//!
//! A parent starts a child by re-executing its own binary with the channel as
//! standard input and the role in the environment. The `.init_array` hook in
//! `sys` calls [`divert_if_worker`] before `main`; a child never returns from it.
//!
//! # Who may make this process a worker
//!
//! The environment alone never does: anyone who can start the program can set
//! it. A worker serves only the process that the kernel says made its channel:
//! the socket on standard input must be a Unix socket created (`SO_PEERCRED`)
//! by this process's parent, under this process's user id. That record is kept
//! by the kernel, travels with the inherited socket itself rather than through
//! the environment or argv, and cannot be forged by another user. A program
//! running with privileges its invoker lacks (setuid, setgid, file
//! capabilities) never diverts at all, so the environment of an unprivileged
//! user can never steer a privileged program. Whoever passes these checks is a
//! process of our own user that could run any code anyway; even so, a task
//! frame only ever names a checked task entry (`task::trampoline_at`), never a
//! raw address, and a worker never tells a peer its fingerprint.

use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::OnceLock;

use crate::engine::spin::Spin;
use crate::sys;
use crate::task::{self, Failure, FailureKind};
use crate::wire::{ring, Conn, Done, InitFailed, Mismatch, Ready, ToWorker};

pub(crate) const ENV_ROLE: &str = "MULTIPROC_ROLE";
pub(crate) const ENV_NAME: &str = "MULTIPROC_NAME";
pub(crate) const ROLE_POOL: &str = "pool";
pub(crate) const ROLE_PROCESS: &str = "process";
pub(crate) const ROLE_MANAGER: &str = "manager";
/// The fork server (`zygote`).
pub(crate) const ROLE_ZYGOTE: &str = "zygote";

/// Exit code of a child that found it is not the same build as its parent.
pub(crate) const EXIT_MISMATCH: i32 = 121;
/// Exit code of a child whose channel broke before it got its work, or whose
/// parent died before it started.
pub(crate) const EXIT_NO_PARENT: i32 = 122;
/// Exit code of a worker whose allocation failed under the pool's hard
/// memory limit (see `engine::procs::memory`).
pub(crate) const EXIT_MEMORY_LIMIT: i32 = 123;
/// Exit code of a worker that could not set the pool's memory limit.
pub(crate) const EXIT_NO_LIMIT: i32 = 124;

/// Who this process is, when it was started by multiproc.
pub(crate) struct Identity {
    pub(crate) name: String,
    pub(crate) parent: u32,
}

static IDENTITY: OnceLock<Identity> = OnceLock::new();

/// This process's identity if it is a multiproc child.
pub(crate) fn identity() -> Option<&'static Identity> {
    IDENTITY.get()
}

/// What the channel on standard input says about who started us.
#[derive(Debug, PartialEq, Eq)]
enum Channel {
    /// Made by our parent, under our user id: serve it.
    FromParent(u32),
    /// Made by a process of ours that is gone: our parent died before we
    /// started (we were re-parented). Exit quietly.
    Orphaned,
    /// Not a multiproc channel: standard input is no socket, or one made by
    /// another user or by a live process that is not our parent.
    Foreign(String),
}

fn examine_channel(stdin: BorrowedFd<'_>) -> Channel {
    let (peer, uid) = match sys::socket_peer(stdin) {
        Ok(p) => p,
        Err(_) => return Channel::Foreign("standard input is not a Unix socket".into()),
    };
    if uid != sys::user_id() {
        return Channel::Foreign(format!("the socket on standard input belongs to user {uid}"));
    }
    if peer == sys::parent_pid() {
        return Channel::FromParent(peer);
    }
    if peer != 0 && !sys::process_exists(peer) {
        return Channel::Orphaned;
    }
    Channel::Foreign(format!(
        "the socket on standard input was made by process {peer}, not by this process's parent"
    ))
}

/// Turns this process into a worker if its parent asked for one.
pub(crate) fn divert_if_worker() {
    let Some(role) = std::env::var_os(ENV_ROLE) else {
        // Not a local worker: perhaps a rank of an MPI job.
        #[cfg(feature = "mpi")]
        crate::engine::mpi::divert_if_rank();
        return;
    };
    let name = std::env::var(ENV_NAME).unwrap_or_default();
    // Our grandchildren are not workers unless we make them so.
    // SAFETY: this runs from `.init_array`, before `main` and before any
    // thread of this process exists, so no one can read the environment
    // while it changes.
    unsafe {
        std::env::remove_var(ENV_ROLE);
        std::env::remove_var(ENV_NAME);
    }
    let ignore = |why: &str| {
        report!(
            WARN, reason = why;
            "multiproc: ignoring {ENV_ROLE}={} in the environment ({why}); running the program \
             normally. Unset {ENV_ROLE} to silence this warning.",
            role.to_string_lossy()
        );
    };
    if sys::runs_privileged() {
        return ignore("a setuid, setgid or privileged program never becomes a worker");
    }
    let zygote = role.to_str() == Some(ROLE_ZYGOTE);
    let serve: fn(OwnedFd) -> i32 = match role.to_str() {
        Some(ROLE_ZYGOTE) => crate::zygote::serve,
        Some(r) => match server(r) {
            Some(s) => s,
            None => return ignore("not a role multiproc knows"),
        },
        None => return ignore("not a role multiproc knows"),
    };
    // SAFETY: descriptor 0 is open for the life of the process or the call
    // below fails cleanly with EBADF; it is only borrowed for one getsockopt.
    let stdin = unsafe { BorrowedFd::borrow_raw(0) };
    let parent = match examine_channel(stdin) {
        Channel::FromParent(pid) => pid,
        Channel::Orphaned => std::process::exit(EXIT_NO_PARENT),
        Channel::Foreign(why) => return ignore(&why),
    };
    // From here on this process is a worker. It starts with what a Rust
    // `main` would see (SIGPIPE ignored) and none of the descriptors its
    // parent leaked by accident: only the channel and standard streams.
    sys::ignore_sigpipe();
    sys::close_descriptors_from_3();
    if sys::die_with_parent(parent).is_err() {
        std::process::exit(EXIT_NO_PARENT);
    }
    // Started through `/proc/self/exe`, this process is named `exe`; it
    // takes the program's name, as a forked child would have it (the fork
    // server passes it on to its children). A name it cannot read leaves
    // `exe`: the name is for people, nothing depends on it.
    let _ = sys::take_name_of(parent);
    if !zygote {
        // The fork server has no identity of its own: its children get theirs.
        let _ = IDENTITY.set(Identity { name, parent });
    }
    let channel = match sys::take_channel_from_stdin() {
        Ok(fd) => fd,
        Err(_) => std::process::exit(EXIT_NO_PARENT),
    };
    // An exec'd child's exit handlers are its own (a forked child's are
    // the fork server's, and it skips them: `run_forked`); they run, but
    // neither they nor a stuck flush of its output keep it alive for long.
    sys::exit_bounded(serve(channel));
}

/// What serves `role` in a child.
fn server(role: &str) -> Option<fn(OwnedFd) -> i32> {
    match role {
        ROLE_POOL => Some(serve_pool),
        ROLE_PROCESS => Some(run_process),
        ROLE_MANAGER => Some(crate::manager::run_server_process),
        _ => None,
    }
}

/// Serves `role` in a child the fork server just forked, then exits.
pub(crate) fn run_forked(role: &str, name: String, parent: u32, channel: OwnedFd) -> ! {
    let _ = IDENTITY.set(Identity { name, parent });
    let code = server(role).map_or(EXIT_NO_PARENT, |serve| serve(channel));
    // As a forked child in Python ends: its own exit, not the fork server's.
    sys::exit_lean(code)
}

type Frame = (u8, crate::wire::Body, Vec<OwnedFd>);

/// Blocks until a whole frame is buffered; `None` at end of file or on
/// error. With `spin`, reads without blocking for a moment first
/// (`engine::spin`), so that a caller that sends the next task at once
/// finds this worker awake.
fn recv_frame(conn: &mut Conn, spin: bool) -> Option<Frame> {
    let mut looking = Spin::new();
    loop {
        if let Some(frame) = conn.next_frame() {
            return Some(frame);
        }
        let read = if spin && looking.again() { conn.read_some() } else { conn.read_blocking() };
        match read {
            Ok(false) => {}
            // Frames that arrived just before end of file still count.
            Ok(true) => return conn.next_frame(),
            Err(_) => return None,
        }
    }
}

fn serve_pool(channel: OwnedFd) -> i32 {
    let mut conn = Conn::new(channel);
    let Some((kind, body, mut fds)) = recv_frame(&mut conn, false) else {
        return EXIT_NO_PARENT;
    };
    // The fingerprint comes first whatever the rest of the frame is: a
    // parent of another build, whose INIT may be laid out otherwise, is told
    // it is a mismatch rather than seeing this worker vanish.
    let raw = conn.body(body);
    let other_build =
        kind == crate::wire::INIT && raw.get(..16).is_some_and(|fp| fp != task::fingerprint());
    let decoded = ToWorker::decode(kind, raw);
    let init = match decoded {
        Ok(ToWorker::Init(init)) if !other_build => Some(init),
        _ if other_build => None,
        _ => return EXIT_NO_PARENT,
    };
    let Some(init) = init else {
        // The body stays empty: a peer that does not know the fingerprint
        // learns nothing from failing.
        let _ = Mismatch.encode(conn.output());
        let _ = conn.flush_blocking();
        return EXIT_MISMATCH;
    };
    if init.memory_limit != 0
        && crate::engine::procs::memory::limit_self(init.memory_limit).is_err()
    {
        return EXIT_NO_LIMIT;
    }
    // A ring this worker cannot use is declined in READY: its results then
    // take the channel, as a parent without rings expects.
    let ring = match (init.results, fds.len()) {
        (true, 2..) => {
            let bell = fds.pop().expect("counted");
            let ring = fds.pop().expect("counted");
            ring::Writer::open(ring, bell).ok()
        }
        (true, _) => return EXIT_NO_PARENT,
        (false, _) => None,
    };
    if let Some(call) = init.init {
        let mut out = Vec::new();
        drop(task::run_chunk_at(call.entry, call.chunk, fds, &mut out));
        if let Some(Err(failure)) = task::ItemReader::new(&out).next() {
            let message = describe(&failure).into();
            let _ = InitFailed { message }.encode(conn.output());
            let _ = conn.flush_blocking();
            return 1;
        }
    }
    let _ = Ready { pid: std::process::id(), results: ring.is_some() }.encode(conn.output());
    if conn.flush_blocking().is_err() {
        return EXIT_NO_PARENT;
    }
    task_loop(&mut conn, ring);
    0
}

fn describe(failure: &Failure) -> String {
    match &failure.location {
        Some(loc) => format!("panicked at {loc}: {}", failure.message),
        None => failure.message.clone(),
    }
}

/// Runs tasks until the parent closes the channel.
///
/// Each result is written as soon as its task ends, before the next task
/// starts: a result must never sit in this process while a later task runs,
/// because if that task kills the worker the parent must receive every
/// earlier result and blame only the task that was running.
///
/// With a results ring, a result goes there (`wire::ring`): it has then left
/// this process as surely as through the channel, for one copy instead of a
/// `send` and the parent's wake-up. A result too large for the ring, one
/// with descriptors, or one behind channel bytes the parent has not read,
/// takes the channel after a record in the ring that announces it. The
/// result of a CALL takes the channel unannounced: its caller reads it
/// there itself.
///
/// After a task whose sender waits for it (a CALL), the next one is looked
/// for without sleeping for a moment: see [`Task`](crate::wire::Task).
fn task_loop(conn: &mut Conn, mut ring: Option<ring::Writer>) {
    let mut waited = false;
    loop {
        let Some((kind, body, fds)) = recv_frame(conn, waited) else { return };
        // Large `Bytes` arguments view the task's body file, not copies.
        let _share = crate::bytes::share_from(conn.body_file(&body));
        let (b, out) = conn.body_and_output(body);
        let Ok(ToWorker::Task(t)) = ToWorker::decode(kind, b) else {
            return;
        };
        waited = t.waited;
        let id = t.id;
        let outcomes = |out: &mut Vec<u8>| task::run_chunk_at(t.call.entry, t.call.chunk, fds, out);
        if let Err(e) = Done::encode_with(out, t.id, outcomes) {
            // The results cannot travel: report that instead, for every item.
            let failure = Failure::new(FailureKind::Serialize, e.to_string());
            let n = task::ItemReader::new(t.call.chunk).count();
            let each = |out: &mut Vec<u8>| {
                task::encode_failures(&failure, n, out);
                Vec::new()
            };
            let _ = Done::encode_with(out, t.id, each);
        }
        if let Some(ring) = ring.as_mut().filter(|_| !waited) {
            // Only behind a channel the parent has read to its end: bytes
            // the task wrote there (a bug, or hostile code) are then read
            // before this result, and blamed on this task.
            let drained = sys::unread_sent(conn.fd()).is_ok_and(|n| n == 0);
            if drained && conn.plain_output().is_some_and(|frame| ring.put(frame)) {
                conn.discard_output();
                continue;
            }
            ring.announce(id);
        }
        if conn.flush_blocking().is_err() {
            return;
        }
    }
}

fn run_process(channel: OwnedFd) -> i32 {
    let mut conn = Conn::new(channel);
    let Some((kind, body, fds)) = recv_frame(&mut conn, false) else {
        return EXIT_NO_PARENT;
    };
    let Ok(ToWorker::Run(run)) = ToWorker::decode(kind, conn.body(body)) else {
        return EXIT_NO_PARENT;
    };
    if run.fingerprint != task::fingerprint() {
        report!(
            ERROR, pid = std::process::id();
            "multiproc: process {} is not the same build as its parent; it refuses to run",
            std::process::id()
        );
        return EXIT_MISMATCH;
    }
    let mut out = Vec::new();
    drop(task::run_chunk_at(run.call.entry, run.call.chunk, fds, &mut out));
    match task::ItemReader::new(&out).next() {
        Some(Err(failure)) => {
            let name = identity().map(|i| i.name.as_str()).unwrap_or("?");
            // The process's own output, as Python prints it: no event.
            eprintln!("Process {name} (pid {}): {}", std::process::id(), describe(&failure));
            1
        }
        _ => 0,
    }
}
