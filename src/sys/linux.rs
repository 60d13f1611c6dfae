//! The Linux backend.
//!
//! Every system call goes through `rustix` where it offers a safe wrapper.
//! `libc` remains for what rustix lacks or cannot do safely here, each named
//! where it is used: the robust process-shared pthread mutex,
//! `dl_iterate_phdr`, `getauxval(AT_SECURE)`, the SIGPIPE disposition,
//! `close_range`, `SO_PEERCRED` (rustix's credential type cannot hold the pid
//! 0 the kernel reports for a peer outside our pid namespace) and `recvmsg`
//! into uninitialised memory (rustix reads only into initialised buffers, and
//! zeroing the read chunk first would cost more than the call).

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use rustix::io::Errno;
use rustix::process::{Pid, Signal};

/// Runs before `main` in every process of an executable that links multiproc:
/// a worker is diverted here into its task loop and never reaches `main`.
extern "C" fn before_main() {
    crate::worker::divert_if_worker();
}

// The dynamic loader calls every pointer in `.init_array` before `main`.
#[used]
#[unsafe(link_section = ".init_array")]
static BEFORE_MAIN: extern "C" fn() = before_main;

/// Keeps the object file holding [`BEFORE_MAIN`] in every link that spawns.
pub(crate) fn keep_entry_linked() {
    std::hint::black_box(&BEFORE_MAIN);
}

/// Retries `call` while a signal interrupts it (EINTR).
fn retry<T>(mut call: impl FnMut() -> rustix::io::Result<T>) -> io::Result<T> {
    loop {
        match call() {
            Err(Errno::INTR) => {}
            r => return r.map_err(io::Error::from),
        }
    }
}

/// A process id as the kernel takes it; EINVAL for 0 or one beyond `pid_t`
/// (which `kill` would otherwise read as a process group, or as all of them).
pub(crate) fn pid_of(pid: u32) -> io::Result<Pid> {
    i32::try_from(pid).ok().and_then(Pid::from_raw).ok_or_else(|| Errno::INVAL.into())
}

/// Asks the kernel to SIGKILL this process when the thread that spawned it
/// exits, then checks that the parent did not die before the request.
pub(crate) fn die_with_parent(expected_parent: u32) -> io::Result<()> {
    rustix::process::set_parent_process_death_signal(Some(Signal::KILL))?;
    if parent_pid() != expected_parent {
        return Err(io::Error::other("the parent process exited before the worker started"));
    }
    Ok(())
}

/// Gives this thread the name process `pid` bears (its main thread's, as
/// `ps`, `top` and `pgrep` show it, at most 15 bytes). Called on a worker's
/// main thread, it names the worker after the program, rather than after
/// the path it was started by (`/proc/self/exe`, which would read `exe`).
pub(crate) fn take_name_of(pid: u32) -> io::Result<()> {
    use std::io::Read;
    // The kernel writes at most 15 bytes and a newline; reading a little
    // more tells a longer (foreign) file from a whole name.
    let mut read = Vec::with_capacity(32);
    std::fs::File::open(format!("/proc/{pid}/comm"))?.take(32).read_to_end(&mut read)?;
    let name = read.strip_suffix(b"\n").unwrap_or(&read);
    if name.is_empty() || name.len() > 15 {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "not a process name"));
    }
    let name = std::ffi::CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "not a process name"))?;
    rustix::thread::set_name(&name)?;
    Ok(())
}

/// True when this process runs with privileges its invoker does not have:
/// setuid or setgid, or file capabilities (the kernel's `AT_SECURE`). Such a
/// program must never let its environment decide what it runs.
pub(crate) fn runs_privileged() -> bool {
    // rustix keeps its copy of AT_SECURE private, so ask libc.
    // SAFETY: getauxval reads the process's auxiliary vector and touches no memory of ours.
    let secure = unsafe { libc::getauxval(libc::AT_SECURE) } != 0;
    use rustix::process::{getegid, geteuid, getgid, getuid};
    secure || getuid() != geteuid() || getgid() != getegid()
}

/// This process's parent, as the kernel knows it now (0 when it has none in
/// this pid namespace).
pub(crate) fn parent_pid() -> u32 {
    Pid::as_raw(rustix::process::getppid()) as u32
}

/// This process's real user id.
pub(crate) fn user_id() -> u32 {
    rustix::process::getuid().as_raw()
}

/// Who made the Unix socket at `fd` (for a socket pair: the process that
/// called `socketpair`), as the kernel recorded it: `(pid, uid)`. An error
/// when `fd` is not a Unix socket. The pid is 0 when that process is outside
/// our pid namespace.
pub(crate) fn socket_peer(fd: BorrowedFd<'_>) -> io::Result<(u32, u32)> {
    // libc, not rustix: rustix's `UCred` holds the pid as a non-zero `Pid`,
    // and whoever started us chooses the socket, so the kernel's 0 is possible.
    let mut cred = MaybeUninit::<libc::ucred>::zeroed();
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` is a live ucred and `len` its size, as SO_PEERCRED requires.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            cred.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: zeroed is a valid ucred, and getsockopt wrote at most `len` bytes of one.
    let cred = unsafe { cred.assume_init() };
    Ok((cred.pid as u32, cred.uid))
}

/// Turns on TCP keep-alive probes on `fd`: after `idle` without traffic, a
/// probe every `interval`; after `count` unanswered probes the kernel fails
/// the socket (`ETIMEDOUT`), so a read blocked on a peer whose machine
/// vanished (powered off, cable cut: nothing ever closes the connection)
/// returns an error instead of waiting forever.
pub(crate) fn keep_alive(
    fd: BorrowedFd<'_>,
    idle: Duration,
    interval: Duration,
    count: u32,
) -> io::Result<()> {
    use rustix::net::sockopt;
    sockopt::set_socket_keepalive(fd, true)?;
    sockopt::set_tcp_keepidle(fd, idle)?;
    sockopt::set_tcp_keepintvl(fd, interval)?;
    sockopt::set_tcp_keepcnt(fd, count)?;
    Ok(())
}

/// The keep-alive settings of `fd`: `(on, idle, interval, count)`.
#[cfg(test)]
pub(crate) fn keep_alive_of(fd: BorrowedFd<'_>) -> io::Result<(bool, Duration, Duration, u32)> {
    use rustix::net::sockopt;
    Ok((
        sockopt::socket_keepalive(fd)?,
        sockopt::tcp_keepidle(fd)?,
        sockopt::tcp_keepintvl(fd)?,
        sockopt::tcp_keepcnt(fd)?,
    ))
}

/// Connects a Unix stream socket to `path`, giving up at `deadline` (none:
/// no bound). A blocking `connect` waits for as long as the listener's
/// backlog is full, whatever bound the caller has; here the socket connects
/// without blocking, and a full backlog (`EAGAIN`) is retried with short
/// naps until the deadline, which fails with `TimedOut`. The socket
/// returned blocks, as `UnixStream::connect`'s does.
pub(crate) fn connect_unix(
    path: &std::path::Path,
    deadline: Option<std::time::Instant>,
) -> io::Result<OwnedFd> {
    use rustix::net::{self, AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
    let fd = net::socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )?;
    let addr = SocketAddrUnix::new(path)?;
    let mut nap = Duration::from_micros(100);
    loop {
        match net::connect(&fd, &addr) {
            Ok(()) => break,
            Err(rustix::io::Errno::INTR) => continue,
            Err(rustix::io::Errno::AGAIN) => {
                let now = std::time::Instant::now();
                let left = deadline.map(|d| d.saturating_duration_since(now));
                if left == Some(Duration::ZERO) {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the listener's backlog stayed full",
                    ));
                }
                std::thread::sleep(left.map_or(nap, |l| l.min(nap)));
                nap = (nap * 2).min(Duration::from_millis(5));
            }
            Err(e) => return Err(e.into()),
        }
    }
    rustix::io::ioctl_fionbio(&fd, false)?;
    Ok(fd)
}

/// True while a process with id `pid` exists.
pub(crate) fn process_exists(pid: u32) -> bool {
    match pid_of(pid) {
        // Signal 0 only checks that `pid` exists; EPERM means it does, owned by another user.
        Ok(pid) => matches!(rustix::process::test_kill_process(pid), Ok(()) | Err(Errno::PERM)),
        Err(_) => false,
    }
}

/// Closes every descriptor from 3 up: what a worker inherited by accident
/// from its parent (anything opened without close-on-exec). Falls back to
/// walking `/proc/self/fd` where `close_range` is missing (Linux < 5.9).
pub(crate) fn close_descriptors_from_3() {
    // rustix has no close_range, and closing descriptors we do not own is
    // unsafe in any wrapper.
    // SAFETY: close_range takes plain integers; closing descriptors nobody in
    // this process uses yet (it runs before `main`) breaks nothing.
    let r = unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    if r == 0 {
        return;
    }
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else { return };
    // Collect first: closing while iterating would close the directory's own fd.
    let fds: Vec<RawFd> =
        dir.flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).collect();
    for fd in fds.into_iter().filter(|&fd| fd >= 3) {
        // SAFETY: as above; a descriptor that is already gone (the directory
        // handle) gives EBADF, which is harmless.
        unsafe { libc::close(fd) };
    }
}

/// Ignores SIGPIPE, as the Rust runtime does before `main`: a write to a
/// closed pipe or socket then fails with `EPIPE` instead of killing us.
pub(crate) fn ignore_sigpipe() {
    // rustix sets signal dispositions only in its unstable runtime module.
    // SAFETY: installs the SIG_IGN disposition; no handler code runs.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
}

/// Address ranges of this executable's image, as the loader mapped it.
#[derive(Debug, Default)]
pub(crate) struct Image {
    /// Executable segments.
    code: Vec<std::ops::Range<usize>>,
    /// Segments that are read-only once relocated: read-only `PT_LOAD`s and
    /// the `PT_GNU_RELRO` range.
    constant: Vec<std::ops::Range<usize>>,
}

impl Image {
    /// True when `addr..addr + len` lies inside one read-only segment.
    pub(crate) fn is_constant(&self, addr: usize, len: usize) -> bool {
        let end = addr.checked_add(len);
        self.constant.iter().any(|r| addr >= r.start && end.is_some_and(|e| e <= r.end))
    }

    /// True when `addr` lies inside an executable segment.
    pub(crate) fn is_code(&self, addr: usize) -> bool {
        self.code.iter().any(|r| r.contains(&addr))
    }

    /// The executable segments (hashed by the MPI backend's build check).
    #[cfg(feature = "mpi")]
    pub(crate) fn code(&self) -> &[std::ops::Range<usize>] {
        &self.code
    }
}

/// The main executable's segments (read once from the loader).
pub(crate) fn image() -> &'static Image {
    static IMAGE: std::sync::OnceLock<Image> = std::sync::OnceLock::new();
    IMAGE.get_or_init(|| {
        unsafe extern "C" fn visit(
            info: *mut libc::dl_phdr_info,
            _size: libc::size_t,
            data: *mut libc::c_void,
        ) -> libc::c_int {
            // SAFETY: the loader passes a valid dl_phdr_info for the duration
            // of the call, and `data` is the `Image` handed to dl_iterate_phdr.
            let (info, image) = unsafe { (&*info, &mut *data.cast::<Image>()) };
            // SAFETY: `dlpi_phdr` points at `dlpi_phnum` program headers.
            let headers =
                unsafe { std::slice::from_raw_parts(info.dlpi_phdr, info.dlpi_phnum as usize) };
            let base = info.dlpi_addr as usize;
            for h in headers {
                let range = base + h.p_vaddr as usize..base + (h.p_vaddr + h.p_memsz) as usize;
                if h.p_type == libc::PT_LOAD && h.p_flags & libc::PF_X != 0 {
                    image.code.push(range);
                } else if (h.p_type == libc::PT_LOAD && h.p_flags & libc::PF_W == 0)
                    || h.p_type == libc::PT_GNU_RELRO
                {
                    image.constant.push(range);
                }
            }
            // The first object visited is the main program: stop there.
            1
        }
        let mut image = Image::default();
        // SAFETY: `visit` matches the callback type and only touches `image`,
        // which outlives the call.
        unsafe { libc::dl_iterate_phdr(Some(visit), (&mut image as *mut Image).cast()) };
        image
    })
}

/// Sends `signal` (one of the named signals) to `pid`.
pub(crate) fn kill(pid: u32, signal: i32) -> io::Result<()> {
    let signal = Signal::from_named_raw(signal).ok_or(Errno::INVAL)?;
    rustix::process::kill_process(pid_of(pid)?, signal).map_err(Into::into)
}

pub(crate) const SIGTERM: i32 = Signal::TERM.as_raw();
pub(crate) const SIGKILL: i32 = Signal::KILL.as_raw();
pub(crate) const SIGSTOP: i32 = Signal::STOP.as_raw();

/// Flags for a send that never raises SIGPIPE; `wait == false` never blocks.
fn send_flags(wait: bool) -> rustix::net::SendFlags {
    use rustix::net::SendFlags;
    SendFlags::NOSIGNAL | if wait { SendFlags::empty() } else { SendFlags::DONTWAIT }
}

/// Writes without raising SIGPIPE; `wait == false` never blocks.
pub(crate) fn send(fd: BorrowedFd<'_>, buf: &[u8], wait: bool) -> io::Result<usize> {
    retry(|| rustix::net::send(fd, buf, send_flags(wait)))
}

/// How many bytes this process sent on the stream socket `fd` that its peer
/// has not read yet (`SIOCOUTQ`, which Linux numbers as `TIOCOUTQ`; a Unix
/// socket charges them to the sender until the receiver takes them).
pub(crate) fn unread_sent(fd: BorrowedFd<'_>) -> io::Result<usize> {
    let mut n: libc::c_int = 0;
    // SAFETY: SIOCOUTQ writes one int through the pointer, which points at
    // `n`; a descriptor that is not a socket fails with ENOTTY.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCOUTQ, &mut n) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n.max(0) as usize)
}

/// Shuts a socket down in both directions: the peer reads end of file.
pub(crate) fn shutdown(fd: BorrowedFd<'_>) {
    // Failure (the peer already gone) needs no handling.
    let _ = rustix::net::shutdown(fd, rustix::net::Shutdown::Both);
}

/// What to wait for on one descriptor.
pub(crate) struct Interest<'a> {
    pub(crate) fd: BorrowedFd<'a>,
    pub(crate) read: bool,
    pub(crate) write: bool,
}

/// What [`poll`] saw on one descriptor.
#[derive(Clone, Copy, Default, Debug)]
pub(crate) struct Ready {
    pub(crate) read: bool,
    pub(crate) write: bool,
    /// Hang-up or error: the peer is gone.
    pub(crate) hangup: bool,
}

/// `d` as the kernel's relative timeout; a bound beyond `i64` seconds is
/// clamped (it is no bound in practice).
fn timespec(d: Duration) -> rustix::time::Timespec {
    rustix::time::Timespec {
        tv_sec: d.as_secs().min(i64::MAX as u64) as i64,
        tv_nsec: d.subsec_nanos().into(),
    }
}

/// Waits until one of `fds` is ready or `timeout` passes (`None`: no bound).
/// The bound is kept to the nanosecond: the wait never returns early.
pub(crate) fn poll<const N: usize>(
    fds: [Interest<'_>; N],
    timeout: Option<Duration>,
) -> io::Result<[Ready; N]> {
    use rustix::event::{PollFd, PollFlags};
    let mut raw: [PollFd<'_>; N] = std::array::from_fn(|i| {
        let mut events = PollFlags::empty();
        events.set(PollFlags::IN, fds[i].read);
        events.set(PollFlags::OUT, fds[i].write);
        PollFd::from_borrowed_fd(fds[i].fd, events)
    });
    let ts = timeout.map(timespec);
    retry(|| rustix::event::poll(&mut raw, ts.as_ref()))?;
    Ok(std::array::from_fn(|i| {
        let r = raw[i].revents();
        Ready {
            read: r.contains(PollFlags::IN),
            write: r.contains(PollFlags::OUT),
            hangup: r.intersects(PollFlags::HUP | PollFlags::ERR | PollFlags::NVAL),
        }
    }))
}

/// One descriptor of a poll loop that keeps descriptors by number (the
/// async reactor): `ready` is set when it is ready as asked, hangs up or
/// errs.
pub(crate) struct PollNumber {
    pub(crate) fd: RawFd,
    pub(crate) read: bool,
    pub(crate) write: bool,
    pub(crate) ready: bool,
}

/// [`poll`] over descriptors known by number, any count of them. A
/// descriptor its owner closed meanwhile is reported ready (invalid or,
/// reused, spuriously ready): a poll loop built on this must treat
/// readiness as a hint to try again, never as a promise.
pub(crate) fn poll_numbers(fds: &mut [PollNumber], timeout: Option<Duration>) -> io::Result<()> {
    use rustix::event::{PollFd, PollFlags};
    let mut raw: Vec<PollFd<'_>> = fds
        .iter()
        .map(|f| {
            let mut events = PollFlags::empty();
            events.set(PollFlags::IN, f.read);
            events.set(PollFlags::OUT, f.write);
            // SAFETY: `poll` only passes the number to the kernel, which
            // answers POLLNVAL for a closed one; nothing is read or closed
            // through this borrow, which ends with the call.
            PollFd::from_borrowed_fd(unsafe { BorrowedFd::borrow_raw(f.fd) }, events)
        })
        .collect();
    let ts = timeout.map(timespec);
    retry(|| rustix::event::poll(&mut raw, ts.as_ref()))?;
    for (f, r) in fds.iter_mut().zip(&raw) {
        f.ready = !r.revents().is_empty();
    }
    Ok(())
}

/// A counter the kernel can wait on: the way other threads wake a poll loop.
pub(crate) struct EventFd(OwnedFd);

impl EventFd {
    pub(crate) fn new() -> io::Result<EventFd> {
        use rustix::event::EventfdFlags;
        let fd = rustix::event::eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?;
        Ok(EventFd(fd))
    }

    pub(crate) fn notify(&self) {
        // It can only fail when the counter would overflow, and then a
        // wake-up is pending anyway.
        let _ = rustix::io::write(&self.0, &1u64.to_ne_bytes());
    }

    pub(crate) fn drain(&self) {
        // EAGAIN (nothing pending) is the only expected failure and is harmless.
        let _ = rustix::io::read(&self.0, &mut [0u8; 8]);
    }

    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }

    /// A descriptor of the same counter, to send to another process.
    pub(crate) fn dup_fd(&self) -> io::Result<OwnedFd> {
        self.0.try_clone()
    }

    /// One that arrived from another process: refused unless it is
    /// non-blocking, so that `notify` can never block on what a peer sent.
    pub(crate) fn adopt(fd: OwnedFd) -> io::Result<EventFd> {
        if !rustix::fs::fcntl_getfl(&fd)?.contains(rustix::fs::OFlags::NONBLOCK) {
            return Err(io::Error::other("a wake-up descriptor that may block was refused"));
        }
        Ok(EventFd(fd))
    }
}

/// Takes the channel a parent handed over as standard input, and puts
/// `/dev/null` in its place so that user code reading stdin cannot eat frames.
pub(crate) fn take_channel_from_stdin() -> io::Result<OwnedFd> {
    use rustix::fs::{Mode, OFlags};
    let channel = rustix::io::fcntl_dupfd_cloexec(rustix::stdio::stdin(), 3)?;
    let null = rustix::fs::open(c"/dev/null", OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())?;
    // dup2 replaces fd 0 atomically; `null` itself closes on return.
    rustix::stdio::dup2_stdin(&null)?;
    Ok(channel)
}

/// A descriptor that becomes readable when process `pid` exits.
pub(crate) fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    Ok(rustix::process::pidfd_open(pid_of(pid)?, rustix::process::PidfdFlags::empty())?)
}

/// Waits up to `timeout` for child `pid` to exit, without reaping it.
/// Returns true once it has exited.
pub(crate) fn wait_exit(pid: u32, timeout: Option<Duration>) -> io::Result<bool> {
    let fd = match pidfd_open(pid) {
        Ok(fd) => fd,
        // The process is already gone from the pid table (reaped elsewhere).
        Err(e) if e.raw_os_error() == Some(Errno::SRCH.raw_os_error()) => return Ok(true),
        // No pidfds (a kernel before 5.3, or valgrind): ask until it has.
        Err(e) if e.raw_os_error() == Some(Errno::NOSYS.raw_os_error()) => {
            return Ok(wait_exit_polling(pid, timeout));
        }
        Err(e) => return Err(e),
    };
    let [r] = poll([Interest { fd: fd.as_fd(), read: true, write: false }], timeout)?;
    Ok(r.read || r.hangup)
}

/// [`wait_exit`] without a pidfd: asks [`has_exited`], napping 50 us at
/// first and doubling up to 10 ms, until `timeout` runs out.
fn wait_exit_polling(pid: u32, timeout: Option<Duration>) -> bool {
    let end = timeout.map(|t| std::time::Instant::now() + t);
    let mut nap = Duration::from_micros(50);
    loop {
        if has_exited(pid) {
            return true;
        }
        let left = end.map(|e| e.saturating_duration_since(std::time::Instant::now()));
        if left == Some(Duration::ZERO) {
            return false;
        }
        std::thread::sleep(left.map_or(nap, |l| l.min(nap)));
        nap = (nap * 2).min(Duration::from_millis(10));
    }
}

/// True when child `pid` has exited (it stays unreaped). An error (no such
/// child: reaped already) counts as exited.
pub(crate) fn has_exited(pid: u32) -> bool {
    use rustix::process::{WaitId, WaitIdOptions};
    let Ok(pid) = pid_of(pid) else { return true };
    // WNOWAIT leaves the child unreaped; no status yet means it is still running.
    let options = WaitIdOptions::EXITED | WaitIdOptions::NOHANG | WaitIdOptions::NOWAIT;
    !matches!(rustix::process::waitid(WaitId::Pid(pid), options), Ok(None))
}

/// The conventional name of a signal, e.g. `SIGKILL`.
pub(crate) fn signal_name(sig: i32) -> String {
    let name = match Signal::from_named_raw(sig) {
        Some(Signal::HUP) => "SIGHUP",
        Some(Signal::INT) => "SIGINT",
        Some(Signal::QUIT) => "SIGQUIT",
        Some(Signal::ILL) => "SIGILL",
        Some(Signal::TRAP) => "SIGTRAP",
        Some(Signal::ABORT) => "SIGABRT",
        Some(Signal::BUS) => "SIGBUS",
        Some(Signal::FPE) => "SIGFPE",
        Some(Signal::KILL) => "SIGKILL",
        Some(Signal::USR1) => "SIGUSR1",
        Some(Signal::SEGV) => "SIGSEGV",
        Some(Signal::USR2) => "SIGUSR2",
        Some(Signal::PIPE) => "SIGPIPE",
        Some(Signal::ALARM) => "SIGALRM",
        Some(Signal::TERM) => "SIGTERM",
        _ => return format!("signal {sig}"),
    };
    name.to_string()
}

// --- descriptor passing -----------------------------------------------------

/// The most descriptors one message may carry (the kernel's SCM_MAX_FD).
pub(crate) const MAX_FDS_PER_MESSAGE: usize = 253;

/// Control-message space for [`MAX_FDS_PER_MESSAGE`] descriptors.
const FDS_SPACE: usize = rustix::cmsg_space!(ScmRights(MAX_FDS_PER_MESSAGE));

/// Sends `buf` with `fds` attached (SCM_RIGHTS), without raising SIGPIPE.
/// `wait == false` never blocks. More than [`MAX_FDS_PER_MESSAGE`]
/// descriptors is EINVAL, as the kernel says.
pub(crate) fn send_with_fds(
    fd: BorrowedFd<'_>,
    buf: &[u8],
    fds: &[OwnedFd],
    wait: bool,
) -> io::Result<usize> {
    send_parts_with_fds(fd, &[io::IoSlice::new(buf)], fds, wait)
}

/// Sends `parts` one after the other in one `sendmsg` (a frame's header and
/// a body kept elsewhere need no copy into one buffer), with `fds` attached
/// to the first byte (SCM_RIGHTS), without raising SIGPIPE. `wait == false`
/// never blocks. Returns how many bytes, counted across the parts, were sent.
pub(crate) fn send_parts_with_fds(
    fd: BorrowedFd<'_>,
    parts: &[io::IoSlice<'_>],
    fds: &[OwnedFd],
    wait: bool,
) -> io::Result<usize> {
    use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage};
    if fds.len() > MAX_FDS_PER_MESSAGE {
        return Err(Errno::INVAL.into());
    }
    let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(AsFd::as_fd).collect();
    // Room for MAX_FDS_PER_MESSAGE descriptors, on the stack.
    let mut space = [MaybeUninit::<u8>::uninit(); FDS_SPACE];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !borrowed.is_empty() && !control.push(SendAncillaryMessage::ScmRights(&borrowed)) {
        return Err(Errno::INVAL.into());
    }
    retry(|| rustix::net::sendmsg(fd, parts, &mut control, send_flags(wait)))
}

/// Reads at most `max` bytes onto the end of `buf` without initialising the
/// space first (a large frame would otherwise be zeroed once per read), and
/// collects descriptors that arrive with the data into `fds` (each marked
/// close-on-exec). `wait == false` never blocks. `Ok(0)` is end of file.
///
/// libc, not rustix: rustix's `recvmsg` reads only into initialised memory,
/// and zeroing the 64 KiB read chunk before each read costs more than the
/// call itself.
pub(crate) fn recv_append_with_fds(
    fd: BorrowedFd<'_>,
    buf: &mut Vec<u8>,
    max: usize,
    wait: bool,
    fds: &mut std::collections::VecDeque<OwnedFd>,
) -> io::Result<usize> {
    buf.reserve(max);
    let had = fds.len();
    let spare = buf.spare_capacity_mut();
    let len = spare.len().min(max);
    // SAFETY: CMSG_SPACE is a pure computation on a length.
    let space = unsafe { libc::CMSG_SPACE((MAX_FDS_PER_MESSAGE * 4) as u32) } as usize;
    let mut control = [0u64; 136];
    debug_assert!(space <= std::mem::size_of_val(&control));
    let mut iov = libc::iovec { iov_base: spare.as_mut_ptr().cast(), iov_len: len };
    // SAFETY: msghdr is plain data; all-zero is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    let flags = libc::MSG_CMSG_CLOEXEC | if wait { 0 } else { libc::MSG_DONTWAIT };
    let n = loop {
        // SAFETY: `msg` points at live buffers of the lengths it states.
        let n = unsafe { libc::recvmsg(fd.as_raw_fd(), &mut msg, flags) };
        if n >= 0 {
            break n as usize;
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    };
    // SAFETY: recvmsg initialised the first `n` bytes of the spare capacity.
    unsafe { buf.set_len(buf.len() + n) };
    // SAFETY: `msg` was filled by recvmsg; CMSG_FIRSTHDR reads its control fields.
    let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    while !cmsg.is_null() {
        // SAFETY: `cmsg` is non-null and points into `control`, as the
        // CMSG_* walk guarantees for a buffer recvmsg filled.
        let (level, kind, clen) =
            unsafe { ((*cmsg).cmsg_level, (*cmsg).cmsg_type, (*cmsg).cmsg_len) };
        if level == libc::SOL_SOCKET && kind == libc::SCM_RIGHTS {
            // SAFETY: as above; CMSG_LEN(0) is a pure computation.
            let header = unsafe { libc::CMSG_LEN(0) } as usize;
            let count = clen.saturating_sub(header as _) as usize / 4;
            for i in 0..count {
                // SAFETY: the data area holds `count` descriptors; read_unaligned
                // copes with the buffer's alignment.
                let raw = unsafe { libc::CMSG_DATA(cmsg).cast::<RawFd>().add(i).read_unaligned() };
                // SAFETY: the kernel just installed `raw` in this process for us.
                fds.push_back(unsafe { OwnedFd::from_raw_fd(raw) });
            }
        }
        // SAFETY: `msg` and `cmsg` are valid as above.
        cmsg = unsafe { libc::CMSG_NXTHDR(&msg, cmsg) };
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        // Some of the message's descriptors did not arrive (too many, or our
        // descriptor limit reached): those that did are closed here, not
        // left for a caller to mistake for the message's.
        fds.truncate(had);
        return Err(io::Error::other("descriptors attached to a message were lost (too many)"));
    }
    Ok(n)
}

/// Reads the start of the next message on `fd` into `buf` without taking it
/// off the socket and without receiving its descriptors (they stay with the
/// message), and returns the message's whole length. Never blocks.
pub(crate) fn peek_message(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    let flags = libc::MSG_PEEK | libc::MSG_DONTWAIT | libc::MSG_TRUNC;
    loop {
        // SAFETY: `buf` is live and writable for the length given; with no
        // control buffer no descriptor is installed.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), flags) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

// --- shared memory ------------------------------------------------------------

/// The size of the file behind `fd`.
pub(crate) fn file_len(fd: BorrowedFd<'_>) -> io::Result<usize> {
    Ok(file_len_and_id(fd)?.0)
}

/// The bytes of storage really behind `fd` (its allocated blocks), which a
/// sparse file keeps far below its length.
pub(crate) fn file_allocated(fd: BorrowedFd<'_>) -> io::Result<u64> {
    Ok(u64::try_from(rustix::fs::fstat(fd)?.st_blocks).unwrap_or(0).saturating_mul(512))
}

/// Maps `len` bytes of `fd` shared, readable and writable.
pub(crate) fn map_shared(fd: BorrowedFd<'_>, len: usize) -> io::Result<*mut u8> {
    use rustix::mm::{MapFlags, ProtFlags};
    // SAFETY: a fresh shared mapping of an open file at an address the kernel
    // picks: it overlaps nothing that exists.
    let p = unsafe {
        rustix::mm::mmap(
            std::ptr::null_mut(),
            len,
            ProtFlags::READ | ProtFlags::WRITE,
            MapFlags::SHARED,
            fd,
            0,
        )
    }?;
    Ok(p.cast())
}

/// Unmaps a mapping made by [`map_shared`].
///
/// # Safety
/// `ptr`/`len` must be a live mapping from [`map_shared`] that nothing uses.
pub(crate) unsafe fn unmap(ptr: *mut u8, len: usize) {
    // SAFETY: guaranteed by the caller.
    let _ = unsafe { rustix::mm::munmap(ptr.cast(), len) };
}

// --- futexes ------------------------------------------------------------------

/// Sleeps while `*word == expected`, at most `timeout`. Shared (not private)
/// futex operations, so waiters and wakers may be in different processes.
/// Returns false when the timeout passed.
pub(crate) fn futex_wait(
    word: &std::sync::atomic::AtomicU32,
    expected: u32,
    timeout: Option<Duration>,
) -> bool {
    use rustix::thread::futex;
    let ts = timeout.map(timespec);
    // The relative timeout is not restarted after EINTR: the caller re-checks
    // its word and its own deadline, as after any wake-up.
    futex::wait(word, futex::Flags::empty(), expected, ts.as_ref()) != Err(Errno::TIMEDOUT)
}

/// Wakes up to `n` waiters on `word`.
pub(crate) fn futex_wake(word: &std::sync::atomic::AtomicU32, n: i32) {
    use rustix::thread::futex;
    let _ = futex::wake(word, futex::Flags::empty(), n.max(0) as u32);
}

// --- robust, process-shared mutexes ---------------------------------------------

/// The memory of a process-shared mutex; lives in shared memory.
pub(crate) type RawMutex = libc::pthread_mutex_t;

/// What an attempt to lock found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Locked {
    Acquired,
    /// The previous owner died holding it; the caller now owns it and the
    /// mutex has been made consistent again.
    OwnerDied,
    /// Not free within the bound.
    NotFree,
    /// An error-checking mutex the calling thread holds already (EDEADLK).
    HeldByCaller,
}

/// Initialises a robust, process-shared mutex at `m`; recursive or
/// error-checking (relocking or unlocking by a non-owner is an error).
///
/// # Safety
/// `m` must point to writable memory for a `RawMutex` that nothing uses yet.
pub(crate) unsafe fn mutex_init(m: *mut RawMutex, recursive: bool) -> io::Result<()> {
    // SAFETY: the attribute object is initialised by pthread_mutexattr_init
    // before use and destroyed after; `m` is valid per the caller.
    unsafe {
        let mut attr: libc::pthread_mutexattr_t = std::mem::zeroed();
        err(libc::pthread_mutexattr_init(&mut attr))?;
        let kind =
            if recursive { libc::PTHREAD_MUTEX_RECURSIVE } else { libc::PTHREAD_MUTEX_ERRORCHECK };
        let r = err(libc::pthread_mutexattr_settype(&mut attr, kind))
            .and_then(|()| {
                err(libc::pthread_mutexattr_setpshared(&mut attr, libc::PTHREAD_PROCESS_SHARED))
            })
            .and_then(|()| {
                err(libc::pthread_mutexattr_setrobust(&mut attr, libc::PTHREAD_MUTEX_ROBUST))
            })
            .and_then(|()| err(libc::pthread_mutex_init(m, &attr)));
        libc::pthread_mutexattr_destroy(&mut attr);
        r
    }
}

fn err(code: libc::c_int) -> io::Result<()> {
    if code == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(code))
    }
}

/// Locks `m`: blocking (`None`), not at all (`Some(ZERO)`), or until a
/// timeout.
///
/// # Safety
/// `m` must point to a mutex initialised by [`mutex_init`].
pub(crate) unsafe fn mutex_lock(m: *mut RawMutex, timeout: Option<Duration>) -> io::Result<Locked> {
    let code = match timeout {
        // SAFETY: `m` is an initialised mutex per the caller.
        None => unsafe { libc::pthread_mutex_lock(m) },
        // SAFETY: as above.
        Some(Duration::ZERO) => unsafe { libc::pthread_mutex_trylock(m) },
        // A bound beyond a century is no bound (and would overflow time_t).
        // SAFETY: as above.
        Some(d) if d.as_secs() > 100 * 365 * 86_400 => unsafe { libc::pthread_mutex_lock(m) },
        Some(d) => {
            // pthread_mutex_timedlock takes an absolute CLOCK_REALTIME deadline.
            // (Read through libc, as std does: rustix's own vDSO lookup
            // faults in a process run under valgrind.)
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            let total = now.subsec_nanos() as u128 + d.subsec_nanos() as u128;
            let deadline = libc::timespec {
                tv_sec: (now.as_secs() as libc::time_t).saturating_add(
                    d.as_secs() as libc::time_t + (total / 1_000_000_000) as libc::time_t,
                ),
                tv_nsec: (total % 1_000_000_000) as libc::c_long,
            };
            // SAFETY: `m` is initialised per the caller; `deadline` is live.
            unsafe { libc::pthread_mutex_timedlock(m, &deadline) }
        }
    };
    match code {
        0 => Ok(Locked::Acquired),
        libc::EBUSY | libc::ETIMEDOUT => Ok(Locked::NotFree),
        libc::EDEADLK => Ok(Locked::HeldByCaller),
        libc::EOWNERDEAD => {
            // SAFETY: we own the mutex after EOWNERDEAD, as consistent requires.
            err(unsafe { libc::pthread_mutex_consistent(m) })?;
            Ok(Locked::OwnerDied)
        }
        e => Err(io::Error::from_raw_os_error(e)),
    }
}

/// Unlocks `m`; `Ok(false)` when the calling thread does not hold it.
///
/// # Safety
/// `m` must point to a mutex initialised by [`mutex_init`].
pub(crate) unsafe fn mutex_unlock(m: *mut RawMutex) -> io::Result<bool> {
    // SAFETY: `m` is initialised per the caller; an error-checking or
    // recursive mutex reports EPERM when this thread is not the owner.
    match unsafe { libc::pthread_mutex_unlock(m) } {
        0 => Ok(true),
        libc::EPERM => Ok(false),
        e => Err(io::Error::from_raw_os_error(e)),
    }
}

/// Asks for a send buffer of `bytes` on socket `fd` (`SO_SNDBUF`; the kernel
/// doubles the value and caps it at `net.core.wmem_max`).
pub(crate) fn set_send_buffer(fd: BorrowedFd<'_>, bytes: usize) -> io::Result<()> {
    Ok(rustix::net::sockopt::set_socket_send_buffer_size(fd, bytes)?)
}

/// A connected pair of message sockets: every send is one message, received
/// whole by exactly one reader, whichever process it is in.
pub(crate) fn message_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    use rustix::net::{AddressFamily, SocketFlags, SocketType};
    let pair = rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )?;
    Ok(pair)
}

// --- sealed shared memory ---------------------------------------------------------

/// The seals every multiproc shared-memory file carries: its size is fixed
/// for good. A memfd can be resized by any process holding a descriptor of
/// it, and a mapping whose file shrank under it raises SIGBUS on access; with
/// these seals no process (the creator included) can shrink or grow it, nor
/// lift the seals.
const FIXED_SIZE_SEALS: rustix::fs::SealFlags = rustix::fs::SealFlags::SHRINK
    .union(rustix::fs::SealFlags::GROW)
    .union(rustix::fs::SealFlags::SEAL);

/// An anonymous shared-memory file of `len` zero bytes whose size is sealed
/// (see [`FIXED_SIZE_SEALS`]). It has no name anywhere (nothing in /dev/shm
/// to leak or for another user to open) and vanishes when the last
/// descriptor and mapping of it are gone, in whichever process.
pub(crate) fn memfd_sealed(len: usize) -> io::Result<OwnedFd> {
    memfd_sealed_named(c"multiproc", len)
}

/// As [`memfd_sealed`], under `name` (shown in `/proc/PID/maps` and `fd/`).
pub(crate) fn memfd_sealed_named(name: &std::ffi::CStr, len: usize) -> io::Result<OwnedFd> {
    use rustix::fs::MemfdFlags;
    let fd = rustix::fs::memfd_create(name, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)?;
    let len = u64::try_from(len)
        .ok()
        .filter(|&l| l <= i64::MAX as u64)
        .ok_or_else(|| io::Error::other(format!("{len} bytes is too large for shared memory")))?;
    rustix::fs::ftruncate(&fd, len)?;
    rustix::fs::fcntl_add_seals(&fd, FIXED_SIZE_SEALS)?;
    Ok(fd)
}

/// The seals of a frozen file: its size and its bytes are fixed for good.
const FROZEN_SEALS: rustix::fs::SealFlags = FIXED_SIZE_SEALS.union(rustix::fs::SealFlags::WRITE);

/// An anonymous shared-memory file holding `parts` back to back, sealed so
/// that no process can ever change its size or its bytes again (see
/// [`is_frozen`]): a message the receiver may map and read in place.
pub(crate) fn memfd_frozen(parts: &[&[u8]]) -> io::Result<OwnedFd> {
    use rustix::fs::MemfdFlags;
    let fd = rustix::fs::memfd_create(
        c"multiproc-msg",
        MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
    )?;
    let len: usize = parts.iter().map(|p| p.len()).sum();
    rustix::fs::ftruncate(&fd, len as u64)?;
    // All parts in one call (a frame's head and its chunk: a call each
    // cost a system call and wrote the first page twice); at most IOV_MAX
    // slices a call, the rest after.
    const IOV_MAX: usize = 1024;
    let mut slices: Vec<io::IoSlice<'_>> =
        parts.iter().filter(|p| !p.is_empty()).map(|p| io::IoSlice::new(p)).collect();
    let (mut left, mut at) = (&mut slices[..], 0u64);
    while !left.is_empty() {
        let n = left.len().min(IOV_MAX);
        match retry(|| rustix::io::pwritev(&fd, &left[..n], at))? {
            0 => return Err(io::ErrorKind::WriteZero.into()),
            wrote => {
                at += wrote as u64;
                io::IoSlice::advance_slices(&mut left, wrote);
            }
        }
    }
    // No writable mapping of it exists, so the write seal takes.
    rustix::fs::fcntl_add_seals(&fd, FROZEN_SEALS)?;
    Ok(fd)
}

/// True when the file behind `fd` carries the seals of [`memfd_frozen`]: no
/// one can shrink it (no SIGBUS for a mapping of its length) or write it (no
/// bytes change under a reader), whoever made it.
pub(crate) fn is_frozen(fd: BorrowedFd<'_>) -> bool {
    let need = FROZEN_SEALS.difference(rustix::fs::SealFlags::SEAL);
    rustix::fs::fcntl_get_seals(fd).is_ok_and(|s| s.contains(need))
}

/// Maps `len` bytes of `fd` read-only, its pages faulted in at once (one
/// system call instead of one fault per page).
pub(crate) fn map_readonly(fd: BorrowedFd<'_>, len: usize) -> io::Result<*const u8> {
    use rustix::mm::{MapFlags, ProtFlags};
    // SAFETY: a fresh read-only mapping at an address the kernel picks: it
    // overlaps nothing that exists.
    let p = unsafe {
        rustix::mm::mmap(
            std::ptr::null_mut(),
            len,
            ProtFlags::READ,
            MapFlags::SHARED | MapFlags::POPULATE,
            fd,
            0,
        )
    }?;
    Ok(p.cast_const().cast())
}

/// True when the file behind `fd` can never shrink (it carries F_SEAL_SHRINK),
/// so mapping all of its current length is safe from SIGBUS. False for a file
/// that may shrink, or one that cannot carry seals at all (not a memfd).
pub(crate) fn cannot_shrink(fd: BorrowedFd<'_>) -> bool {
    rustix::fs::fcntl_get_seals(fd).is_ok_and(|s| s.contains(rustix::fs::SealFlags::SHRINK))
}

/// The system's memory page size: every mapping starts on a page boundary.
pub(crate) fn page_size() -> usize {
    // Read through libc, not rustix: rustix finds it by walking the auxv
    // and checking the vDSO's ELF header, which faults in a process run
    // under valgrind (a child of a traced program).
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size).ok().filter(|s| s.is_power_of_two()).unwrap_or(4096)
}

/// The size of a transparent huge page on x86-64 and 4 KiB-page arm64.
const HUGE_PAGE: usize = 2 << 20;

/// Asks the kernel to back the whole 2 MiB pages inside `buf` (memory this
/// process is about to write end to end) with transparent huge pages:
/// filling 8 MiB then takes 4 page faults instead of 2048, which on this
/// kind of VM is 6× faster. Only advice: where the kernel offers no huge
/// pages (`transparent_hugepage=never`) or none are free, nothing changes,
/// and the contents are never touched. A buffer with no whole huge page
/// inside is left alone.
pub(crate) fn prefer_huge_pages<T>(buf: &mut [MaybeUninit<T>]) {
    let start = buf.as_mut_ptr() as usize;
    let end = start.saturating_add(std::mem::size_of_val(buf));
    let first = start.next_multiple_of(HUGE_PAGE);
    let last = end & !(HUGE_PAGE - 1);
    if last > first {
        // SAFETY: `first..last` lies inside `buf`, which this process owns
        // for the call; MADV_HUGEPAGE changes how later faults are served,
        // not what the memory holds.
        let _ = unsafe {
            rustix::mm::madvise(first as *mut _, last - first, rustix::mm::Advice::LinuxHugepage)
        };
    }
}
/// The size of the file behind `fd`, and its identity (device and inode),
/// which is the same in every process and every descriptor of it.
pub(crate) fn file_len_and_id(fd: BorrowedFd<'_>) -> io::Result<(usize, (u64, u64))> {
    let st = rustix::fs::fstat(fd)?;
    let len = usize::try_from(st.st_size).map_err(|_| {
        io::Error::other(format!("a file of {} bytes cannot be mapped", st.st_size))
    })?;
    Ok((len, (st.st_dev, st.st_ino)))
}

/// The file this process runs, as the kernel knows it: valid even when the
/// program's path has since been replaced or removed.
pub(crate) const OWN_EXECUTABLE: &str = "/proc/self/exe";

/// Set once this process has registered an exit hook of its own.
static EXIT_HOOKED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Runs `hook` when the program exits normally (after `main` returns or at
/// `std::process::exit`), in reverse order of registration, as C's `atexit`.
pub(crate) fn at_exit(hook: extern "C" fn()) {
    EXIT_HOOKED.store(true, std::sync::atomic::Ordering::SeqCst);
    // SAFETY: `hook` is a plain `extern "C" fn()`, which lives for the whole
    // program as atexit requires; registering reads nothing else.
    unsafe { libc::atexit(hook) };
}

/// The exit code of an exit that ran out of time ([`exit_lean`],
/// [`exit_bounded`]).
static EXIT_ALARM_CODE: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

/// How long [`exit_lean`] and [`exit_bounded`] let an exit take.
const EXIT_WITHIN: Duration = Duration::from_secs(2);

/// Arms an alarm that ends the process with `code` after
/// [`EXIT_WITHIN`]; false when it cannot be set.
fn arm_exit_alarm(code: i32) -> bool {
    extern "C" fn on_alarm(_: libc::c_int) {
        exit_now(EXIT_ALARM_CODE.load(std::sync::atomic::Ordering::SeqCst));
    }
    EXIT_ALARM_CODE.store(code, std::sync::atomic::Ordering::SeqCst);
    let within = libc::timeval {
        tv_sec: EXIT_WITHIN.as_secs() as libc::time_t,
        tv_usec: EXIT_WITHIN.subsec_micros() as libc::suseconds_t,
    };
    let timer =
        libc::itimerval { it_interval: libc::timeval { tv_sec: 0, tv_usec: 0 }, it_value: within };
    // SAFETY: the handler reads an atomic and calls `_exit`, both
    // async-signal-safe. `setitimer` reads the value it is given.
    unsafe {
        on_signal(libc::SIGALRM, on_alarm).is_ok()
            && libc::setitimer(libc::ITIMER_REAL, &timer, std::ptr::null_mut()) == 0
    }
}

/// Ends a process that has registered no exit hook of multiproc's with
/// `code`, as `std::process::exit` would, but without the C library's exit:
/// Rust's standard output and every C stream are flushed, then the process
/// `_exit`s. What that leaves out (the `atexit` list, the libraries'
/// destructors, the thread-local destructors) is, in a child forked by the
/// fork server, mostly the fork server's, as in Python's forked children,
/// and skipping it spares such a child a quarter of its page faults.
///
/// The flush is bounded: another thread may hold the standard output's lock,
/// or its reader may have stopped reading. After [`EXIT_WITHIN`] an
/// alarm ends the process with `code` all the same (what was still buffered
/// is lost, as `std::process::exit` drops it when the lock is held).
/// Where there are hooks to run, or the alarm cannot be set, the process
/// exits the usual way instead (`std::process::exit`).
pub(crate) fn exit_lean(code: i32) -> ! {
    if !EXIT_HOOKED.load(std::sync::atomic::Ordering::SeqCst) && arm_exit_alarm(code) {
        let _ = std::io::Write::flush(&mut std::io::stdout());
        // SAFETY: fflush(NULL) flushes every C stream; it takes no pointer of ours.
        unsafe { libc::fflush(std::ptr::null_mut()) };
        exit_now(code)
    }
    std::process::exit(code)
}

/// Ends the process with `code` through `std::process::exit` (the
/// process's own exit handlers run, its output is flushed), in bounded
/// time where it has registered no exit hook of multiproc's: after
/// [`EXIT_WITHIN`] an alarm ends it with `code` all the same, so that
/// a flush into a pipe nobody reads, or an exit handler that never
/// returns, cannot keep it alive. Hooks (a queue's flush, which has its own
/// bound; children to join, which may rightly take long) are waited for.
pub(crate) fn exit_bounded(code: i32) -> ! {
    if !EXIT_HOOKED.load(std::sync::atomic::Ordering::SeqCst) {
        arm_exit_alarm(code);
    }
    std::process::exit(code)
}

/// Caps this process's address space at `limit` bytes (`RLIMIT_AS`),
/// keeping the hard limit as it is.
pub(crate) fn cap_address_space(limit: u64) -> io::Result<()> {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let old = getrlimit(Resource::As);
    setrlimit(Resource::As, Rlimit { current: Some(limit), maximum: old.maximum })?;
    Ok(())
}

/// Ends the process at once with `code`: no `atexit` hooks, no flushing,
/// no destructors (`_exit`). Async-signal-safe, so a signal handler may
/// call it; for a process that must not run its exit hooks again, or whose
/// exit hooks are what is stuck.
pub(crate) fn exit_now(code: i32) -> ! {
    // SAFETY: `_exit` takes any code, touches no memory of ours, and never
    // returns.
    unsafe { libc::_exit(code) }
}

/// The exit code of an abort that follows a failed allocation (see
/// [`exit_when_abort_follows_enomem`]).
static ENOMEM_ABORT_EXIT: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

/// Makes an abort raised while `errno` is `ENOMEM` (Rust's reaction to a
/// failed allocation) exit with `code` instead, so the parent can tell a
/// task that ran out of memory from any other abort.
pub(crate) fn exit_when_abort_follows_enomem(code: i32) -> io::Result<()> {
    ENOMEM_ABORT_EXIT.store(code, std::sync::atomic::Ordering::SeqCst);
    // SAFETY: the handler only reads errno and an atomic and calls `_exit`,
    // all async-signal-safe, and returns otherwise, after which `abort()`
    // restores the default action and raises the signal again.
    unsafe { on_signal(libc::SIGABRT, on_abort) }
}

/// Installs `handler` for `signal` (no flags, nothing else blocked while it
/// runs), replacing whatever handled it before.
///
/// # Safety
///
/// `handler` runs between any two instructions of any thread: it may call
/// only async-signal-safe functions and touch only atomics or memory no
/// other code uses.
unsafe fn on_signal(signal: libc::c_int, handler: extern "C" fn(libc::c_int)) -> io::Result<()> {
    // SAFETY: an all-zero `sigaction` is a valid value (no flags, empty
    // mask) that is then filled in; `sigaction` reads it and keeps nothing
    // of ours but the handler, whose safety the caller vouches for.
    unsafe {
        let mut act: libc::sigaction = std::mem::zeroed();
        act.sa_sigaction = handler as libc::sighandler_t;
        libc::sigemptyset(&mut act.sa_mask);
        if libc::sigaction(signal, &act, std::ptr::null_mut()) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

extern "C" fn on_abort(_: libc::c_int) {
    // SAFETY: errno is this thread's, readable at any time.
    let errno = unsafe { *libc::__errno_location() };
    if errno == libc::ENOMEM {
        exit_now(ENOMEM_ABORT_EXIT.load(std::sync::atomic::Ordering::SeqCst));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn kill_refuses_pids_the_kernel_would_read_as_groups() {
        // kill(0) signals our own process group and kill(-1) every process
        // we may signal: neither may ever come from a u32 pid.
        assert!(kill(0, SIGTERM).is_err());
        assert!(kill(u32::MAX, SIGTERM).is_err());
        assert!(kill(std::process::id(), 0).is_err(), "0 is no named signal");
        assert!(!process_exists(0));
        assert!(process_exists(std::process::id()));
    }

    #[test]
    fn poll_never_returns_before_its_bound() {
        let (a, _b) = message_pair().unwrap();
        for wait in [Duration::from_micros(1500), Duration::from_millis(3)] {
            let start = Instant::now();
            let [r] =
                poll([Interest { fd: a.as_fd(), read: true, write: false }], Some(wait)).unwrap();
            assert!(!r.read && !r.hangup);
            assert!(start.elapsed() >= wait, "woke after {:?} of {wait:?}", start.elapsed());
        }
    }

    #[test]
    fn futex_wait_reports_a_timeout_and_a_changed_word() {
        let word = std::sync::atomic::AtomicU32::new(7);
        let start = Instant::now();
        assert!(!futex_wait(&word, 7, Some(Duration::from_millis(5))));
        assert!(start.elapsed() >= Duration::from_millis(5));
        // A word that no longer holds the expected value returns at once.
        assert!(futex_wait(&word, 8, None));
    }

    #[test]
    fn descriptors_travel_with_their_message() {
        let (a, b) = message_pair().unwrap();
        let sent: Vec<OwnedFd> = (0..3).map(|_| EventFd::new().unwrap().0).collect();
        assert_eq!(send_with_fds(a.as_fd(), b"xyz", &sent, true).unwrap(), 3);
        let (mut buf, mut fds) = (Vec::new(), std::collections::VecDeque::new());
        assert_eq!(recv_append_with_fds(b.as_fd(), &mut buf, 64, true, &mut fds).unwrap(), 3);
        assert_eq!(buf, b"xyz");
        assert_eq!(fds.len(), 3);
        for fd in &fds {
            let flags = rustix::io::fcntl_getfd(fd).unwrap();
            assert!(flags.contains(rustix::io::FdFlags::CLOEXEC), "received without CLOEXEC");
        }
        let too_many: Vec<OwnedFd> =
            (0..=MAX_FDS_PER_MESSAGE).map(|_| sent[0].try_clone().unwrap()).collect();
        assert!(send_with_fds(a.as_fd(), b"x", &too_many, false).is_err());
    }

    #[test]
    fn frozen_files_hold_their_parts_and_change_no_more() {
        let data: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        let file = memfd_frozen(&[&data[..1000], &[], &data[1000..]]).unwrap();
        assert_eq!(file_len(file.as_fd()).unwrap(), data.len());
        assert!(is_frozen(file.as_fd()) && cannot_shrink(file.as_fd()));
        let p = map_readonly(file.as_fd(), data.len()).unwrap();
        // SAFETY: `p` maps `data.len()` readable bytes until the unmap below.
        let mapped = unsafe { std::slice::from_raw_parts(p, data.len()) };
        assert!(mapped == &data[..]);
        // No one can write it, resize it or map it writable.
        assert!(rustix::io::pwrite(&file, b"x", 0).is_err());
        assert!(rustix::fs::ftruncate(&file, 10).is_err());
        assert!(map_shared(file.as_fd(), data.len()).is_err());
        // SAFETY: the mapping above, no longer used.
        unsafe { unmap(p.cast_mut(), data.len()) };
        // A file sealed only against resizing is not frozen.
        assert!(!is_frozen(memfd_sealed(10).unwrap().as_fd()));
    }

    /// Parts are written in one call while they fit one: more parts than
    /// that, empty ones among them, and files of nothing, come out whole
    /// and in order.
    #[test]
    fn frozen_files_of_many_parts_hold_them_in_order() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7) as u8).collect();
        let cuts = [0, 0, 1, 2, 2, 100, 4096, 4097, 9000, 9000, 70_000, 150_000, 299_999, 300_000];
        let parts: Vec<&[u8]> = cuts.windows(2).map(|w| &data[w[0]..w[1]]).collect();
        assert!(parts.len() > 8 && parts.iter().any(|p| p.is_empty()));
        for parts in [&parts[..], &parts[..3], &[][..], &[&[][..], &[][..]][..]] {
            let want = parts.concat();
            let file = memfd_frozen(parts).unwrap();
            assert_eq!(file_len(file.as_fd()).unwrap(), want.len());
            let mut got = vec![0u8; want.len()];
            let n = rustix::io::pread(&file, &mut got, 0).unwrap();
            assert!(n == want.len() && got == want, "{} parts came out changed", parts.len());
        }
    }

    /// Set in the copy of this test binary that runs the truncation test:
    /// it lowers its own descriptor limit, which no other test may share.
    const CTRUNC_CHILD: &str = "MULTIPROC_TEST_CTRUNC_CHILD";

    #[test]
    fn descriptors_of_a_truncated_message_are_closed_and_reported() {
        if std::env::var_os(CTRUNC_CHILD).is_some() {
            return truncated_in_this_process();
        }
        let name = "sys::imp::tests::descriptors_of_a_truncated_message_are_closed_and_reported";
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", name, "--test-threads=1", "--nocapture"])
            .env(CTRUNC_CHILD, "1")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
        assert!(text.contains("1 passed"), "the child ran no test: {text}");
    }

    /// The huge-page advice keeps what the buffer holds, asks nothing of a
    /// buffer with no whole huge page inside, and where the kernel offers
    /// huge pages on request, the buffer is then filled in huge pages.
    #[test]
    fn huge_page_advice_keeps_contents_and_takes_effect() {
        use std::mem::MaybeUninit;
        let mut small = vec![MaybeUninit::new(7u8); 4096];
        prefer_huge_pages(&mut small);
        // SAFETY: every element was initialised above.
        assert!(small.iter().all(|b| unsafe { b.assume_init() } == 7));

        let len = 8 << 20;
        let mut big: Vec<MaybeUninit<u64>> = Vec::with_capacity(len);
        big.extend((0..len / 2).map(|i| MaybeUninit::new(i as u64)));
        prefer_huge_pages(big.spare_capacity_mut());
        prefer_huge_pages(&mut big[..]);
        big.extend((len / 2..len).map(|i| MaybeUninit::new(i as u64)));
        // SAFETY: all `len` elements were written.
        assert!(big.iter().enumerate().all(|(i, v)| unsafe { v.assume_init() } == i as u64));

        let mode = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled");
        if !mode.is_ok_and(|m| m.contains("[madvise]") || m.contains("[always]")) {
            eprintln!("transparent huge pages are off here: only the contents were checked");
            return;
        }
        let start = big.as_ptr() as usize;
        let end = start + len * 8;
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut inside = false;
        let mut huge_kib = 0u64;
        for line in smaps.lines() {
            let first = line.split_whitespace().next().unwrap_or("");
            if let Some((a, b)) = first.split_once('-') {
                if let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
                {
                    inside = a < end && b > start;
                    continue;
                }
            }
            if inside {
                if let Some(kib) = line.strip_prefix("AnonHugePages:") {
                    huge_kib += kib.trim().trim_end_matches("kB").trim().parse::<u64>().unwrap();
                }
            }
        }
        // 64 MiB holds at least 30 whole huge pages: one is enough to show
        // that the advice reached the kernel.
        assert!(huge_kib >= 2048, "no huge page backs the advised buffer ({huge_kib} KiB)");
    }

    fn truncated_in_this_process() {
        use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
        let (a, b) = message_pair().unwrap();
        let sent: Vec<OwnedFd> = (0..3).map(|_| EventFd::new().unwrap().0).collect();
        send_with_fds(a.as_fd(), b"m", &sent, true).unwrap();
        drop(sent);
        let (mut buf, mut fds) = (Vec::with_capacity(64), std::collections::VecDeque::new());
        fds.reserve(8);
        // Leave exactly one free descriptor below a lowered limit: the kernel
        // installs one of the three and reports the message truncated.
        let old = getrlimit(Resource::Nofile);
        let highest = rustix::io::fcntl_dupfd_cloexec(&a, 0).unwrap();
        let limit = highest.as_raw_fd() as u64 + 16;
        drop(highest);
        setrlimit(Resource::Nofile, Rlimit { current: Some(limit), maximum: old.maximum }).unwrap();
        let mut filler = Vec::new();
        while let Ok(fd) = rustix::io::fcntl_dupfd_cloexec(&a, 0) {
            filler.push(fd);
        }
        filler.pop();
        let err = recv_append_with_fds(b.as_fd(), &mut buf, 64, true, &mut fds).unwrap_err();
        assert!(err.to_string().contains("were lost"), "{err}");
        assert!(fds.is_empty(), "descriptors of a truncated message were handed out");
        // The one that arrived was closed: its slot is free again.
        let again = rustix::io::fcntl_dupfd_cloexec(&a, 0);
        assert!(again.is_ok(), "the descriptor that arrived was left open");
        drop((again, filler));
        setrlimit(Resource::Nofile, old).unwrap();
    }
}
