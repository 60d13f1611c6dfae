//! The fork server: a small copy of this program, started once (lazily) by
//! exec like a worker, that forks the children `Process::start` and pools
//! ask for. A fork of a process this small takes a fraction of what an exec
//! of the program costs (loading, relocating and starting the runtime anew).
//!
//! # Why forking here is safe
//!
//! The server is diverted before `main` like a worker (`worker`), so it never
//! runs the user's `main` and holds no user state; it checks that it has one
//! thread, and starts none. Its children are what an exec'd child would be at
//! the same point: the same binary before `main`, serving the same role.
//!
//! # Whose child a forked child is
//!
//! The server forks with `CLONE_PARENT` (`sys::fork_sibling`): each child is
//! a child of the program, exactly as if the program had started it. So the
//! program reaps it and gets its exit status and signal, and can open a pidfd
//! for it without a race (no one else can reap it first); the child's
//! parent-death signal names the program's spawner thread, the thread that
//! started the server (`spawn`), so the child dies with the program, as does
//! the server itself. Killing the server kills none of its children.
//!
//! # What a child inherits
//!
//! Each request carries the program's standard output and error, and the
//! child's channel (`SCM_RIGHTS`); everything a child gets through that
//! channel (the task, its `Fd`, `Queue`, `Lock` handles…) travels as from an
//! exec'd child's parent. The environment and working directory are the
//! server's, which are the program's when the server started: a request
//! made after either has changed first replaces the server. Resource limits,
//! the umask and the signal mask are the program's at the server's start.
//!
//! # How a child ends
//!
//! A forked child whose task has returned flushes Rust's standard output
//! and C's stdio, and `_exit`s with its code, as Python's forked children
//! do: the C library's exit would run the server's `atexit` list and every
//! library's destructors, a quarter of a child's page faults, for nothing of
//! its own. The flush is bounded (a full pipe that nobody reads, another
//! thread holding the output's lock): after 2 s the child exits with its
//! code all the same. A child that registered an exit hook of multiproc's
//! (a `Queue`'s flush, children of its own to join) exits the usual way,
//! through `std::process::exit`. So does every exec'd child, whose exit
//! handlers are its own; without hooks of multiproc's to wait for, its
//! exit is bounded by the same 2 s.
//!
//! # When the program execs instead
//!
//! - `MULTIPROC_START=exec` in the program's environment (read once);
//! - under an emulator (valgrind), which need not follow these forks;
//! - a kernel without `clone3` (before 5.3, or a seccomp filter that refuses
//!   it) or without `PR_GET_TID_ADDRESS`: the server exits at once and the
//!   program execs from then on;
//! - a name longer than [`MAX_NAME`] bytes, an unknown role, or a standard
//!   output or error that is closed: that child only;
//! - the server failed to fork (a process limit, say): that child only;
//! - another thread's request has held the server for over
//!   [`TURN_WITHIN`] (the server stopped answering it): that child only;
//! - the server died or stopped answering: it is replaced, once per request;
//!   a server that fails its very first request is not tried again.
//!
//! # The channel
//!
//! A `SOCK_SEQPACKET` pair: one message per request, one per reply. A
//! request is one role byte and the child's name (UTF-8, at most
//! [`MAX_NAME`] bytes) with exactly three descriptors: the child's channel,
//! standard output, standard error. A reply is eight bytes: an errno (0 for
//! success) and the child's pid, both little-endian. Each side bounds what
//! it reads; the program believes a pid only when the kernel says it is an
//! unreaped child of its own.

use std::ffi::CStr;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::OnceLock;
use std::time::Duration;

use parking_lot::Mutex;

use crate::spawn::{self, Channel, Child, Spawned};
use crate::sys::{self, Interest};
use crate::worker::{self, EXIT_NO_PARENT, ROLE_POOL, ROLE_PROCESS, ROLE_ZYGOTE};

/// The longest child name a request carries.
pub(crate) const MAX_NAME: usize = 1024;

/// How long the program waits for the server's reply before it gives up on
/// it (a fork takes well under a millisecond; this is for a server that
/// stopped without closing its channel).
const REPLY_WITHIN: Duration = Duration::from_secs(10);

/// How long a request waits for the server while another thread's request
/// has it before this child is exec'd instead. Requests take a fraction of
/// a millisecond each, so only a stopped or stuck server makes one wait
/// this long: then only the request that met it waits out [`REPLY_WITHIN`].
const TURN_WITHIN: Duration = Duration::from_millis(100);

/// The server's process name (as `ps` shows it).
const SERVER_NAME: &CStr = c"multiproc-fork";

/// The environment variable that turns the fork server off.
const ENV_START: &str = "MULTIPROC_START";

/// The dynamic loader's switch that binds every symbol at load time.
const ENV_LOADER_BIND: &str = "LD_BIND_NOW";

/// Set beside [`ENV_LOADER_BIND`] when the program added it for the server
/// only: the server then removes both before it forks, so its children see
/// the program's environment.
const ENV_BIND_ADDED: &str = "MULTIPROC_BIND_NOW";

/// Adds to the server's exec what makes its children start cheaper: the
/// loader binds every symbol of the program and its libraries once, in the
/// server, rather than lazily in every child at its first call of each. A
/// child then neither runs the loader's lookup nor faults in the loader's
/// code and the libraries' symbol tables: 1000 children fault 12% fewer
/// pages and use 9% less CPU, and an idle worker has 200-250 KiB fewer
/// pages resident. A program that sets the variable itself keeps its value.
/// A program that the loader cannot bind at once (a symbol missing that
/// nothing calls) has a server that dies at its start, and execs instead.
pub(crate) fn prepare_exec(cmd: &mut std::process::Command) {
    if std::env::var_os(ENV_LOADER_BIND).is_none() {
        cmd.env(ENV_LOADER_BIND, "1").env(ENV_BIND_ADDED, "1");
    }
}

/// Takes back in the server what [`prepare_exec`] added (its children fork
/// from this environment).
fn forget_bind_now() {
    if std::env::var_os(ENV_BIND_ADDED).is_some() {
        // SAFETY: the server is single-threaded (it starts no thread, by
        // design: it forks), so nothing reads the environment meanwhile.
        unsafe {
            std::env::remove_var(ENV_BIND_ADDED);
            std::env::remove_var(ENV_LOADER_BIND);
        }
    }
}

fn role_byte(role: &str) -> Option<u8> {
    match role {
        ROLE_POOL => Some(1),
        ROLE_PROCESS => Some(2),
        _ => None,
    }
}

fn role_of(byte: u8) -> Option<&'static str> {
    match byte {
        1 => Some(ROLE_POOL),
        2 => Some(ROLE_PROCESS),
        _ => None,
    }
}

// --- the program's side -------------------------------------------------------

/// What a forked child inherits from the server rather than from the
/// program at the time of the request: the working directory and the
/// environment, kept as a hash (keyed at random once per program, so no
/// environment can be built to collide with another): a request compares
/// eight bytes, not a copy of the whole environment.
#[derive(PartialEq, Eq, Clone, Copy)]
struct Surroundings(u64);

impl Surroundings {
    fn now() -> Surroundings {
        use std::hash::{BuildHasher, Hash, Hasher};
        static KEYS: OnceLock<std::collections::hash_map::RandomState> = OnceLock::new();
        let mut h = KEYS.get_or_init(Default::default).build_hasher();
        std::env::current_dir().ok().hash(&mut h);
        for (name, value) in std::env::vars_os() {
            name.hash(&mut h);
            value.hash(&mut h);
        }
        Surroundings(h.finish())
    }
}

/// A running fork server.
struct Server {
    process: Child,
    channel: OwnedFd,
    surroundings: Surroundings,
    /// It has forked at least one child.
    served: bool,
}

impl Server {
    fn start(surroundings: Surroundings) -> std::io::Result<Server> {
        let s = spawn::exec(ROLE_ZYGOTE, "", Channel::Packets)?;
        Ok(Server { process: s.child, channel: s.channel, surroundings, served: false })
    }

    /// Stops the server and reaps it (SIGKILL: it holds nothing). A child
    /// it forked whose reply the program never read (the server stopped
    /// answering after the fork, and the request timed out) is a child of
    /// the program that no one would ever reap: its reply, if the server
    /// sent it before it died, names it, and it is killed and reaped.
    fn stop(mut self) {
        let _ = sys::kill(self.process.id(), sys::SIGKILL);
        let _ = self.process.wait();
        for pid in unread_replies(&self.channel) {
            let mut child = Child::new(pid);
            let _ = child.kill();
            spawn::reap_in_background(child);
        }
    }
}

struct State {
    server: Option<Server>,
    /// The program execs every child from now on.
    off: bool,
}

fn state() -> &'static Mutex<State> {
    static STATE: OnceLock<Mutex<State>> = OnceLock::new();
    STATE.get_or_init(|| {
        let off = std::env::var_os(ENV_START).is_some_and(|v| v == "exec") || spawn::emulated();
        Mutex::new(State { server: None, off })
    })
}

/// How one request failed.
enum Failure {
    /// The server cannot serve this request but is fine (exec this child).
    Refused,
    /// The server is dead or misbehaving.
    Broken,
}

/// Forks a child of `role` named `name` through the fork server; `None`
/// where the server cannot serve (the caller execs instead).
pub(crate) fn fork(role: &str, name: &str) -> Option<Spawned> {
    let role = role_byte(role)?;
    if name.len() > MAX_NAME {
        return None;
    }
    // Not our turn within TURN_WITHIN: exec this child.
    let mut state = state().try_lock_for(TURN_WITHIN)?;
    if state.off {
        return None;
    }
    let here = Surroundings::now();
    if state.server.as_ref().is_some_and(|s| s.surroundings != here) {
        if let Some(old) = state.server.take() {
            old.stop();
        }
    }
    for _ in 0..2 {
        if state.server.is_none() {
            match Server::start(here) {
                Ok(s) => state.server = Some(s),
                Err(_) => {
                    state.off = true;
                    return None;
                }
            }
        }
        let server = state.server.as_mut()?;
        match ask(server, role, name) {
            Ok(spawned) => {
                server.served = true;
                return Some(spawned);
            }
            Err(Failure::Refused) => return None,
            Err(Failure::Broken) => {
                let served = server.served;
                if let Some(dead) = state.server.take() {
                    dead.stop();
                }
                if !served {
                    // A server that never worked will not work next time.
                    state.off = true;
                    return None;
                }
                // It worked before and died since: start one more, once.
            }
        }
    }
    None
}

/// The pids in the replies still queued on a dead server's channel that
/// name unreaped children of ours. Never blocks: a child the server forked
/// a moment before it died may still hold the server's end open.
fn unread_replies(channel: &OwnedFd) -> Vec<u32> {
    let mut pids = Vec::new();
    // A server sends one reply per request, and the program sends one
    // request at a time: more than a few replies queued is not ours.
    for _ in 0..4 {
        let ready = Interest { fd: channel.as_fd(), read: true, write: false };
        match sys::poll([ready], Some(Duration::ZERO)) {
            Ok([r]) if r.read => {}
            _ => break,
        }
        let mut reply = [0u8; 8];
        let mut fds = Vec::new();
        match sys::recv_packet(channel.as_fd(), &mut reply, &mut fds) {
            Ok(Some(8)) if fds.is_empty() => {}
            _ => break,
        }
        let (errno, pid) = parse_reply(reply);
        if errno == 0 && sys::is_own_child(pid) {
            pids.push(pid);
        }
    }
    pids
}

/// A reply's errno and pid.
fn parse_reply(reply: [u8; 8]) -> (i32, u32) {
    let errno = i32::from_le_bytes([reply[0], reply[1], reply[2], reply[3]]);
    let pid = u32::from_le_bytes([reply[4], reply[5], reply[6], reply[7]]);
    (errno, pid)
}

/// One request and its reply.
fn ask(server: &Server, role: u8, name: &str) -> Result<Spawned, Failure> {
    let (ours, theirs) = UnixStream::pair().map_err(|_| Failure::Refused)?;
    let mut msg = Vec::with_capacity(1 + name.len());
    msg.push(role);
    msg.extend_from_slice(name.as_bytes());
    let fds = [theirs.as_fd(), rustix::stdio::stdout(), rustix::stdio::stderr()];
    match sys::send_packet(server.channel.as_fd(), &msg, &fds) {
        Ok(()) => {}
        // Our standard output or error is closed: an exec'd child copes.
        Err(e) if e.raw_os_error() == Some(libc::EBADF) => return Err(Failure::Refused),
        Err(_) => return Err(Failure::Broken),
    }
    drop(theirs);
    let ready = Interest { fd: server.channel.as_fd(), read: true, write: false };
    match sys::poll([ready], Some(REPLY_WITHIN)) {
        Ok([r]) if r.read || r.hangup => {}
        _ => return Err(Failure::Broken),
    }
    let mut reply = [0u8; 8];
    let mut fds = Vec::new();
    match sys::recv_packet(server.channel.as_fd(), &mut reply, &mut fds) {
        Ok(Some(8)) if fds.is_empty() => {}
        _ => return Err(Failure::Broken),
    }
    let (errno, pid) = parse_reply(reply);
    if errno != 0 {
        return Err(Failure::Refused);
    }
    if !sys::is_own_child(pid) {
        return Err(Failure::Broken);
    }
    Ok(Spawned { child: Child::new(pid), channel: ours.into() })
}

// --- the server's side --------------------------------------------------------

/// A parsed request: the role, the name, and the child's channel, standard
/// output and standard error.
struct Request {
    role: &'static str,
    name: String,
    fds: [OwnedFd; 3],
}

fn parse(msg: &[u8], fds: Vec<OwnedFd>) -> Option<Request> {
    let (&role, name) = msg.split_first()?;
    let role = role_of(role)?;
    let name = std::str::from_utf8(name).ok()?.to_string();
    let fds: [OwnedFd; 3] = fds.try_into().ok()?;
    Some(Request { role, name, fds })
}

fn reply(channel: &OwnedFd, errno: i32, pid: u32) -> std::io::Result<()> {
    let mut msg = [0u8; 8];
    msg[..4].copy_from_slice(&errno.to_le_bytes());
    msg[4..].copy_from_slice(&pid.to_le_bytes());
    sys::send_packet(channel.as_fd(), &msg, &[])
}

/// The server's loop: one fork per request until the program closes the
/// channel. Returns the exit code.
pub(crate) fn serve(channel: OwnedFd) -> i32 {
    let parent = sys::parent_pid();
    // A constructor of some library may have started a thread: then a fork
    // could copy a lock that thread holds, so do not serve.
    if sys::thread_count().ok() != Some(1) {
        return 0;
    }
    let Ok(state) = sys::fork_state() else { return 0 };
    // Worked out once here rather than in every child (a stat of the
    // executable and a hash): the children's pages stay fewer, and their
    // start shorter. The server runs the same file as its children.
    let _ = crate::task::fingerprint();
    let _ = sys::image();
    forget_bind_now();
    // Named so that `ps` (and a test) tells the server from its children,
    // which take the program's name back.
    let name = rustix::thread::name().ok();
    let _ = rustix::thread::set_name(SERVER_NAME);
    let mut buf = [0u8; 1 + MAX_NAME];
    loop {
        let mut fds = Vec::new();
        let request = match sys::recv_packet(channel.as_fd(), &mut buf, &mut fds) {
            Ok(Some(0)) if fds.is_empty() => return 0,
            Ok(Some(n)) => parse(&buf[..n], std::mem::take(&mut fds)),
            Ok(None) => None,
            Err(_) => return 0,
        };
        let answer = match request {
            None => (libc::EINVAL, 0),
            // SAFETY: this process has one thread (checked above, and it
            // starts none), and `state` was read in it.
            Some(req) => match unsafe { sys::fork_sibling(&state) } {
                Ok(None) => become_child(req, channel, parent, name.as_deref()),
                Ok(Some(pid)) => (0, pid),
                Err(e) => (e.raw_os_error().unwrap_or(libc::EIO), 0),
            },
        };
        if reply(&channel, answer.0, answer.1).is_err() {
            return 0;
        }
    }
}

/// The forked child: drops the server's channel, takes the program's
/// standard streams and serves its role.
fn become_child(req: Request, server: OwnedFd, parent: u32, name: Option<&CStr>) -> ! {
    drop(server);
    if let Some(name) = name {
        let _ = rustix::thread::set_name(name);
    }
    // Our parent is the program (CLONE_PARENT): die with it, unless it
    // already died while we were forked.
    if sys::die_with_parent(parent).is_err() {
        std::process::exit(EXIT_NO_PARENT);
    }
    let [channel, out, err] = req.fds;
    if rustix::stdio::dup2_stdout(&out).is_err() || rustix::stdio::dup2_stderr(&err).is_err() {
        std::process::exit(EXIT_NO_PARENT);
    }
    drop((out, err));
    worker::run_forked(req.role, req.name, parent, channel)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn sleeper() -> u32 {
        std::process::Command::new("sleep").arg("30").spawn().unwrap().id()
    }

    /// A server that forked a child and replied, but whose reply the program
    /// stopped waiting for: stopping the server kills and reaps the child
    /// the reply names, which would otherwise stay a zombie of the program.
    #[test]
    fn stopping_a_server_reaps_the_child_of_an_unread_reply() {
        let (ours, theirs) = sys::message_pair().unwrap();
        let server = Server {
            process: Child::new(sleeper()),
            channel: ours,
            surroundings: Surroundings(0),
            served: true,
        };
        let orphan = sleeper();
        let mut reply = [0u8; 8];
        reply[4..].copy_from_slice(&orphan.to_le_bytes());
        sys::send_packet(theirs.as_fd(), &reply, &[]).unwrap();
        // A reply naming a process that is not our child is ignored.
        reply[4..].copy_from_slice(&1u32.to_le_bytes());
        sys::send_packet(theirs.as_fd(), &reply, &[]).unwrap();
        // `theirs` stays open, as a just-forked child's copy would: the
        // drain must not wait for end of file.
        let t = Instant::now();
        server.stop();
        assert!(t.elapsed() < Duration::from_secs(5), "stop took {:?}", t.elapsed());
        let end = Instant::now() + Duration::from_secs(20);
        while sys::is_own_child(orphan) {
            assert!(Instant::now() < end, "child {orphan} was neither killed nor reaped");
            std::thread::sleep(Duration::from_millis(10));
        }
        drop(theirs);
    }
}
