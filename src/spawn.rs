//! Starting children, and the registry of the ones still running.
//!
//! A child is forked by the fork server (`zygote`) where it can serve, and
//! otherwise started by re-executing this program. Every exec happens on one
//! long-lived thread: the kernel's parent-death signal fires when the
//! *thread* that started a child exits, so a child started from a
//! short-lived thread (a pool's replacement logic, say) would be killed with
//! it. One spawner thread that lives as long as the process ties every
//! child's life to the process instead. The fork server is itself started
//! there, and its children count as started by that thread too.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::OnceLock;

use parking_lot::Mutex;

use crate::error::Error;
use crate::sys;
use crate::worker::{ENV_NAME, ENV_ROLE, ROLE_ZYGOTE};
use crate::zygote;

/// A child of this process, by pid: reaped through [`Child::wait`] or
/// [`Child::try_wait`], whichever way it was started.
#[derive(Debug)]
pub(crate) struct Child {
    pid: u32,
    status: Option<ExitStatus>,
}

impl Child {
    /// `pid` must be an unreaped child of this process.
    pub(crate) fn new(pid: u32) -> Child {
        Child { pid, status: None }
    }

    pub(crate) fn id(&self) -> u32 {
        self.pid
    }

    /// The exit status once the child has exited (reaping it), else `None`.
    pub(crate) fn try_wait(&mut self) -> std::io::Result<Option<ExitStatus>> {
        if self.status.is_none() {
            self.status = sys::reap(self.pid, false)?.map(ExitStatus::from_raw);
        }
        Ok(self.status)
    }

    /// Kills the child with `SIGKILL`, unless it was already reaped (its pid
    /// may then name another process).
    pub(crate) fn kill(&mut self) -> std::io::Result<()> {
        if self.status.is_some() {
            return Ok(());
        }
        sys::kill(self.pid, libc::SIGKILL)
    }

    /// Waits for the child to exit and reaps it.
    pub(crate) fn wait(&mut self) -> std::io::Result<ExitStatus> {
        if let Some(status) = self.status {
            return Ok(status);
        }
        let raw = sys::reap(self.pid, true)?.ok_or_else(|| std::io::Error::other("no status"))?;
        Ok(*self.status.insert(ExitStatus::from_raw(raw)))
    }
}

/// A started child and the parent's end of its channel.
pub(crate) struct Spawned {
    pub(crate) child: Child,
    pub(crate) channel: OwnedFd,
}

/// The kind of socket a child's channel is.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Channel {
    /// A byte stream: workers and processes.
    Stream,
    /// Messages with boundaries: the fork server.
    Packets,
}

struct Request {
    role: &'static str,
    name: String,
    channel: Channel,
    reply: mpsc::SyncSender<std::io::Result<Spawned>>,
}

fn spawner() -> &'static Mutex<mpsc::Sender<Request>> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Request>>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Request>();
        std::thread::Builder::new()
            .name("multiproc-spawner".into())
            .spawn(move || {
                for req in rx {
                    let _ = req.reply.send(start(req.role, &req.name, req.channel));
                }
            })
            .expect("multiproc: could not start the spawner thread");
        Mutex::new(tx)
    })
}

/// The file a child executes: this program.
///
/// `/proc/self/exe` is the file this process runs even when its path has
/// since been replaced or removed (a rebuild, an upgrade), so it is the
/// choice whenever it names the same file as the program's path. Under an
/// emulator that runs the program inside its own executable (valgrind), the
/// kernel's link names the emulator, while `current_exe` (a readlink the
/// emulator answers) names the program: then the program's path is run, and
/// the emulator follows the child. Decided once, at the first child.
fn program() -> &'static Path {
    static PROGRAM: OnceLock<PathBuf> = OnceLock::new();
    PROGRAM.get_or_init(|| {
        let own = PathBuf::from(sys::OWN_EXECUTABLE);
        let Ok(path) = std::env::current_exe() else {
            return own;
        };
        match (std::fs::metadata(&own), std::fs::metadata(&path)) {
            (Ok(a), Ok(b)) if (a.dev(), a.ino()) != (b.dev(), b.ino()) => path,
            _ => own,
        }
    })
}

/// True when this program runs inside an emulator (see [`program`]), which
/// need not follow a fork server's unusual forks.
pub(crate) fn emulated() -> bool {
    program() != Path::new(sys::OWN_EXECUTABLE)
}

fn start(role: &'static str, name: &str, channel: Channel) -> std::io::Result<Spawned> {
    let (ours, theirs): (OwnedFd, OwnedFd) = match channel {
        Channel::Stream => {
            let (a, b) = UnixStream::pair()?;
            (a.into(), b.into())
        }
        Channel::Packets => sys::message_pair()?,
    };
    let mut cmd = Command::new(program());
    if let Some(arg0) = std::env::args_os().next() {
        cmd.arg0(arg0);
    }
    cmd.env(ENV_ROLE, role).env(ENV_NAME, name).stdin(Stdio::from(theirs));
    if role == ROLE_ZYGOTE {
        zygote::prepare_exec(&mut cmd);
    }
    // Dropping the standard library's handle neither waits nor kills: the
    // pid is reaped through our own `Child`.
    let child = Child::new(cmd.spawn()?.id());
    Ok(Spawned { child, channel: ours })
}

/// Starts a child of `role` named `name` by exec, on the spawner thread.
pub(crate) fn exec(role: &'static str, name: &str, channel: Channel) -> std::io::Result<Spawned> {
    let (reply, rx) = mpsc::sync_channel(1);
    let req = Request { role, name: name.to_string(), channel, reply };
    let sent = spawner().lock().send(req);
    sent.ok()
        .and_then(|()| rx.recv().ok())
        .unwrap_or_else(|| Err(std::io::Error::other("the spawner thread is gone")))
}

/// Starts a child of `role` named `name` (forked by the fork server where it
/// can serve, else by exec), and registers it.
pub(crate) fn spawn(role: &'static str, name: &str, daemon: bool) -> crate::Result<Spawned> {
    sys::keep_entry_linked();
    let spawned = match zygote::fork(role, name) {
        Some(s) => s,
        None => exec(role, name, Channel::Stream)
            .map_err(|e| Error::io(format!("could not start child process {name}"), e))?,
    };
    register(spawned.child.id(), name, daemon);
    Ok(spawned)
}

/// A live child as [`crate::active_children`] reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChildInfo {
    /// The child's process id.
    pub pid: u32,
    /// The child's name (`Process-3`, `PoolWorker-1`, …).
    pub name: String,
    /// Whether the child is a daemon (killed, not awaited, when the parent exits).
    pub daemon: bool,
}

fn registry() -> &'static Mutex<HashMap<u32, ChildInfo>> {
    static REGISTRY: OnceLock<Mutex<HashMap<u32, ChildInfo>>> = OnceLock::new();
    REGISTRY.get_or_init(Default::default)
}

fn register(pid: u32, name: &str, daemon: bool) {
    let info = ChildInfo { pid, name: name.to_string(), daemon };
    registry().lock().insert(pid, info);
}

/// Forgets a child that has been reaped.
pub(crate) fn unregister(pid: u32) {
    registry().lock().remove(&pid);
}

/// The registered children that have not exited, sorted by pid.
pub(crate) fn live_children() -> Vec<ChildInfo> {
    let reg = registry().lock();
    let mut live: Vec<ChildInfo> =
        reg.values().filter(|c| !sys::has_exited(c.pid)).cloned().collect();
    live.sort_by_key(|c| c.pid);
    live
}

/// Reaps `child` without blocking the caller: on a background thread if it
/// is still running. Used where a handle is dropped.
pub(crate) fn reap_in_background(mut child: Child) {
    if let Ok(Some(_)) = child.try_wait() {
        unregister(child.id());
        return;
    }
    let _ = std::thread::Builder::new().name("multiproc-reaper".into()).spawn(move || {
        let _ = child.wait();
        unregister(child.id());
    });
}
