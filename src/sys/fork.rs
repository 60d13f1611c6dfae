//! The system calls of the fork server (`crate::zygote`): a fork whose child
//! belongs to the server's parent, the C library's per-thread state that such
//! a fork must carry over, and the messages on the server's socket.
//!
//! Why not `fork(2)`: the C library's fork makes the child a child of the
//! caller, and only the caller can then reap it or learn its exit status. The
//! fork server's children must belong to the program that asked for them, so
//! it clones with `CLONE_PARENT` itself, which the C library does not offer.
//! What the C library's fork would fix up in the child for the one thread it
//! has (the thread id it caches, the robust-mutex list registered with the
//! kernel) is fixed up here; the rest of its work (resetting locks that other
//! threads held) has nothing to do in a process of one thread.

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};

use rustix::io::Errno;

/// The C library's per-thread addresses that a forked child must hand back
/// to the kernel, read once in the fork server.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ForkState {
    /// Where the C library keeps this thread's id (the kernel's
    /// `clear_child_tid`): the child's id is written there at the fork.
    tid: usize,
    /// The thread's robust-mutex list head and its length: a fork forgets
    /// the registration, and without it a child that dies holding a
    /// process-shared robust `Lock` would leave it locked for good.
    robust_head: usize,
    robust_len: usize,
}

/// Reads what [`fork_sibling`] needs; an error where the kernel does not
/// tell (built without `CONFIG_CHECKPOINT_RESTORE`) or the C library
/// registered nothing.
pub(crate) fn fork_state() -> io::Result<ForkState> {
    let mut tid: *mut libc::c_int = std::ptr::null_mut();
    // rustix has neither PR_GET_TID_ADDRESS nor get_robust_list.
    // SAFETY: PR_GET_TID_ADDRESS writes one pointer to the address given,
    // which is `tid`, alive for the call.
    if unsafe { libc::prctl(libc::PR_GET_TID_ADDRESS, &mut tid as *mut *mut libc::c_int) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut head: *mut libc::c_void = std::ptr::null_mut();
    let mut len: libc::size_t = 0;
    // SAFETY: get_robust_list(0, ...) writes one pointer and one size to
    // the two addresses given, both alive for the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_get_robust_list,
            0 as libc::c_long,
            &mut head as *mut *mut libc::c_void,
            &mut len as *mut libc::size_t,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    if tid.is_null() || head.is_null() {
        return Err(io::Error::other("the C library registered no thread state"));
    }
    Ok(ForkState { tid: tid as usize, robust_head: head as usize, robust_len: len })
}

/// The kernel's `struct clone_args` (the first, 64-byte version).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
}

/// Forks this process so that the child is a child of this process's
/// parent, not of this process (`CLONE_PARENT`): the parent reaps it, gets
/// its exit status and can open a pidfd for it without a race (nobody else
/// can reap it first). Returns `Some(pid)` here and `None` in the child.
///
/// # Safety
/// The caller must be the only thread of its process, and `state` must come
/// from [`fork_state`] in this process: the child continues on a copy of
/// this thread as `fork` would, and nothing another thread held exists there.
pub(crate) unsafe fn fork_sibling(state: &ForkState) -> io::Result<Option<u32>> {
    let mut args = CloneArgs {
        flags: (libc::CLONE_PARENT | libc::CLONE_CHILD_SETTID | libc::CLONE_CHILD_CLEARTID) as u64,
        child_tid: state.tid as u64,
        // CLONE_PARENT takes no exit signal (the kernel refuses one): the
        // child's is this process's own, SIGCHLD.
        exit_signal: 0,
        ..CloneArgs::default()
    };
    // rustix has no clone; clone3 takes its arguments in one struct, the
    // same on every architecture.
    // SAFETY: `args` is a live clone_args of the size given; with no stack
    // and no CLONE_VM the child runs on its own copy of this thread's stack,
    // as after fork, and the caller guarantees there are no other threads.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &mut args as *mut CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    match pid {
        0 => {
            // SAFETY: the head is this thread's list in the C library's
            // thread block, copied into the child at the same address.
            unsafe {
                libc::syscall(libc::SYS_set_robust_list, state.robust_head, state.robust_len)
            };
            Ok(None)
        }
        p if p > 0 => Ok(Some(p as u32)),
        _ => Err(io::Error::last_os_error()),
    }
}

/// Sends one message with `fds` attached, without raising SIGPIPE; blocks.
pub(crate) fn send_packet(
    fd: BorrowedFd<'_>,
    buf: &[u8],
    fds: &[BorrowedFd<'_>],
) -> io::Result<()> {
    use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
    let mut space = [std::mem::MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(4))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if fds.len() > 4 || (!fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds))) {
        return Err(Errno::INVAL.into());
    }
    let parts = [io::IoSlice::new(buf)];
    loop {
        match rustix::net::sendmsg(fd, &parts, &mut control, SendFlags::NOSIGNAL) {
            Err(Errno::INTR) => {}
            Ok(n) if n == buf.len() => return Ok(()),
            Ok(_) => return Err(io::ErrorKind::WriteZero.into()),
            Err(e) => return Err(e.into()),
        }
    }
}

/// Receives one message into `buf` and at most four descriptors into `fds`
/// (close-on-exec); blocks. `Ok(Some(0))` with no descriptors is end of
/// file. A message longer than `buf`, or with more descriptors, is consumed
/// and dropped (what did arrive of it is closed): `Ok(None)`.
pub(crate) fn recv_packet(
    fd: BorrowedFd<'_>,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
) -> io::Result<Option<usize>> {
    use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags};
    let mut space = [std::mem::MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(4))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let got = loop {
        let mut parts = [io::IoSliceMut::new(buf)];
        match rustix::net::recvmsg(fd, &mut parts, &mut control, RecvFlags::CMSG_CLOEXEC) {
            Err(Errno::INTR) => {}
            r => break r?,
        }
    };
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = message {
            fds.extend(received);
        }
    }
    if got.flags.intersects(ReturnFlags::TRUNC | ReturnFlags::CTRUNC) {
        fds.clear();
        return Ok(None);
    }
    Ok(Some(got.bytes))
}

/// True when `pid` is a child of this process that nobody has reaped.
pub(crate) fn is_own_child(pid: u32) -> bool {
    use rustix::process::{WaitId, WaitIdOptions};
    let Ok(pid) = super::pid_of(pid) else { return false };
    let options = WaitIdOptions::EXITED | WaitIdOptions::NOHANG | WaitIdOptions::NOWAIT;
    loop {
        match rustix::process::waitid(WaitId::Pid(pid), options) {
            Err(Errno::INTR) => {}
            r => return r.is_ok(),
        }
    }
}

/// Reaps child `pid`, waiting for it to exit unless `hang` is false (then
/// `None` while it runs). The raw wait status, as `ExitStatus::from_raw` takes it.
pub(crate) fn reap(pid: u32, hang: bool) -> io::Result<Option<i32>> {
    use rustix::process::WaitOptions;
    let pid = super::pid_of(pid)?;
    let options = if hang { WaitOptions::empty() } else { WaitOptions::NOHANG };
    loop {
        match rustix::process::waitpid(Some(pid), options) {
            Err(Errno::INTR) => {}
            r => return Ok(r?.map(|(_, status)| status.as_raw())),
        }
    }
}

/// The number of threads of this process, as the kernel counts them.
pub(crate) fn thread_count() -> io::Result<usize> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
        .ok_or_else(|| io::Error::other("/proc/self/status names no thread count"))
}
