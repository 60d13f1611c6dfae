//! The Linux backend.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// Runs before `main` in every process of an executable that links multiproc:
/// a worker is diverted here into its task loop and never reaches `main`.
extern "C" fn before_main() {
    crate::worker::divert_if_worker();
}

// The dynamic loader calls every pointer in `.init_array` before `main`.
#[used]
#[link_section = ".init_array"]
static BEFORE_MAIN: extern "C" fn() = before_main;

/// Keeps the object file holding [`BEFORE_MAIN`] in every link that spawns.
pub(crate) fn keep_entry_linked() {
    std::hint::black_box(&BEFORE_MAIN);
}

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Asks the kernel to SIGKILL this process when the thread that spawned it
/// exits, then checks that the parent did not die before the request.
pub(crate) fn die_with_parent(expected_parent: u32) -> io::Result<()> {
    // SAFETY: prctl(PR_SET_PDEATHSIG) takes a signal number and touches no memory.
    check(unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) })?;
    // SAFETY: getppid cannot fail and touches no memory.
    let parent = unsafe { libc::getppid() };
    if parent as u32 != expected_parent {
        return Err(io::Error::other("the parent process exited before the worker started"));
    }
    Ok(())
}

/// True when this process runs with privileges its invoker does not have:
/// setuid or setgid, or file capabilities (the kernel's `AT_SECURE`). Such a
/// program must never let its environment decide what it runs.
pub(crate) fn runs_privileged() -> bool {
    // SAFETY: getauxval reads the process's auxiliary vector and touches no memory of ours.
    let secure = unsafe { libc::getauxval(libc::AT_SECURE) } != 0;
    // SAFETY: the id getters cannot fail and touch no memory.
    let (uid, euid, gid, egid) =
        unsafe { (libc::getuid(), libc::geteuid(), libc::getgid(), libc::getegid()) };
    secure || uid != euid || gid != egid
}

/// This process's parent, as the kernel knows it now.
pub(crate) fn parent_pid() -> u32 {
    // SAFETY: getppid cannot fail and touches no memory.
    unsafe { libc::getppid() as u32 }
}

/// This process's real user id.
pub(crate) fn user_id() -> u32 {
    // SAFETY: getuid cannot fail and touches no memory.
    unsafe { libc::getuid() }
}

/// Who made the Unix socket at `fd` (for a socket pair: the process that
/// called `socketpair`), as the kernel recorded it: `(pid, uid)`. An error
/// when `fd` is not a Unix socket.
pub(crate) fn socket_peer(fd: BorrowedFd<'_>) -> io::Result<(u32, u32)> {
    // SAFETY: ucred is plain data; all-zero is a valid value.
    let mut cred: libc::ucred = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` is a live ucred and `len` its size, as SO_PEERCRED requires.
    check(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    })?;
    Ok((cred.pid as u32, cred.uid))
}

/// True while a process with id `pid` exists.
pub(crate) fn process_exists(pid: u32) -> bool {
    // SAFETY: signal 0 only checks that `pid` exists; it touches no memory.
    let r = unsafe { libc::kill(pid as libc::pid_t, 0) };
    r == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Closes every descriptor from 3 up: what a worker inherited by accident
/// from its parent (anything opened without close-on-exec). Falls back to
/// walking `/proc/self/fd` where `close_range` is missing (Linux < 5.9).
pub(crate) fn close_descriptors_from_3() {
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

/// Sends `signal` to `pid`.
pub(crate) fn kill(pid: u32, signal: i32) -> io::Result<()> {
    // SAFETY: kill takes plain integers and touches no memory.
    check(unsafe { libc::kill(pid as libc::pid_t, signal) }).map(drop)
}

pub(crate) const SIGTERM: i32 = libc::SIGTERM;
pub(crate) const SIGKILL: i32 = libc::SIGKILL;

/// Writes without raising SIGPIPE; `wait == false` never blocks.
pub(crate) fn send(fd: BorrowedFd<'_>, buf: &[u8], wait: bool) -> io::Result<usize> {
    let flags = libc::MSG_NOSIGNAL | if wait { 0 } else { libc::MSG_DONTWAIT };
    loop {
        // SAFETY: `buf` is valid for `buf.len()` bytes and `fd` is open.
        let n = unsafe { libc::send(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len(), flags) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Shuts a socket down in both directions: the peer reads end of file.
pub(crate) fn shutdown(fd: BorrowedFd<'_>) {
    // SAFETY: shutdown takes an open descriptor and a constant; failure (the
    // peer already gone) needs no handling.
    unsafe { libc::shutdown(fd.as_raw_fd(), libc::SHUT_RDWR) };
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

/// Waits until one of `fds` is ready or `timeout` passes (`None`: no bound).
pub(crate) fn poll<const N: usize>(
    fds: [Interest<'_>; N],
    timeout: Option<Duration>,
) -> io::Result<[Ready; N]> {
    let mut raw: [libc::pollfd; N] = std::array::from_fn(|i| libc::pollfd {
        fd: fds[i].fd.as_raw_fd(),
        events: (if fds[i].read { libc::POLLIN } else { 0 })
            | (if fds[i].write { libc::POLLOUT } else { 0 }),
        revents: 0,
    });
    let ms = match timeout {
        None => -1,
        // Round up so a wait never returns before its deadline.
        Some(d) => d.as_micros().div_ceil(1000).min(i32::MAX as u128) as libc::c_int,
    };
    loop {
        // SAFETY: `raw` is an array of N initialised pollfd structs.
        let n = unsafe { libc::poll(raw.as_mut_ptr(), N as libc::nfds_t, ms) };
        if n >= 0 {
            break;
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
    Ok(std::array::from_fn(|i| {
        let r = raw[i].revents;
        Ready {
            read: r & libc::POLLIN != 0,
            write: r & libc::POLLOUT != 0,
            hangup: r & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0,
        }
    }))
}

/// A counter the kernel can wait on: the way other threads wake a poll loop.
pub(crate) struct EventFd(OwnedFd);

impl EventFd {
    pub(crate) fn new() -> io::Result<EventFd> {
        // SAFETY: eventfd takes plain integers and returns a new descriptor.
        let fd = check(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) })?;
        // SAFETY: `fd` was just returned by eventfd and is owned by nobody else.
        Ok(EventFd(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    pub(crate) fn notify(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to an open eventfd. It can only
        // fail when the counter would overflow, and then a wake-up is pending anyway.
        unsafe { libc::write(self.0.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }

    pub(crate) fn drain(&self) {
        let mut v: u64 = 0;
        // SAFETY: reads 8 bytes into a live u64 from an open non-blocking eventfd;
        // EAGAIN (nothing pending) is the only expected failure and is harmless.
        unsafe { libc::read(self.0.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
    }

    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.0.as_fd()
    }
}

/// Takes the channel a parent handed over as standard input, and puts
/// `/dev/null` in its place so that user code reading stdin cannot eat frames.
pub(crate) fn take_channel_from_stdin() -> io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC duplicates fd 0 into a new descriptor >= 3.
    let fd = check(unsafe { libc::fcntl(0, libc::F_DUPFD_CLOEXEC, 3) })?;
    // SAFETY: `fd` is a fresh descriptor owned by nobody else.
    let channel = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: the path is a NUL-terminated literal.
    let null =
        check(unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) })?;
    // SAFETY: both descriptors are open; dup2 replaces fd 0 atomically.
    let dup = check(unsafe { libc::dup2(null, 0) });
    // SAFETY: `null` is open and no longer needed (fd 0 is its copy).
    unsafe { libc::close(null) };
    dup?;
    Ok(channel)
}

/// A descriptor that becomes readable when process `pid` exits.
pub(crate) fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by the kernel and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Waits up to `timeout` for child `pid` to exit, without reaping it.
/// Returns true once it has exited.
pub(crate) fn wait_exit(pid: u32, timeout: Option<Duration>) -> io::Result<bool> {
    let fd = match pidfd_open(pid) {
        Ok(fd) => fd,
        // The process is already gone from the pid table (reaped elsewhere).
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => return Ok(true),
        Err(e) => return Err(e),
    };
    use std::os::fd::AsFd;
    let [r] = poll([Interest { fd: fd.as_fd(), read: true, write: false }], timeout)?;
    Ok(r.read || r.hangup)
}

/// True when child `pid` has exited (it stays unreaped).
pub(crate) fn has_exited(pid: u32) -> bool {
    // SAFETY: siginfo_t is plain data; all-zero is a valid value.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: `info` is a live siginfo_t; WNOWAIT leaves the child unreaped.
    let r = unsafe {
        libc::waitid(
            libc::P_PID,
            pid as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        )
    };
    // SAFETY: waitid filled `info` (or left it zeroed, meaning still running).
    r != 0 || unsafe { info.si_pid() } != 0
}

/// The conventional name of a signal, e.g. `SIGKILL`.
pub(crate) fn signal_name(sig: i32) -> String {
    let name = match sig {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        _ => return format!("signal {sig}"),
    };
    name.to_string()
}

// --- descriptor passing -----------------------------------------------------

/// The most descriptors one message may carry (the kernel's SCM_MAX_FD).
pub(crate) const MAX_FDS_PER_MESSAGE: usize = 253;

/// Sends `buf` with `fds` attached (SCM_RIGHTS), without raising SIGPIPE.
/// `wait == false` never blocks.
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
    if fds.len() > MAX_FDS_PER_MESSAGE {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "too many descriptors"));
    }
    // Room for MAX_FDS_PER_MESSAGE descriptors, on the stack: no allocation
    // per send.
    let mut control = [0u64; 136];
    let payload = std::mem::size_of_val(fds);
    // SAFETY: CMSG_SPACE is a pure computation on a length.
    let space = unsafe { libc::CMSG_SPACE(payload as u32) } as usize;
    debug_assert!(space <= std::mem::size_of_val(&control));
    // SAFETY: msghdr is plain data; all-zero is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    // `IoSlice` is ABI-compatible with `iovec` on Unix (std documents it);
    // sendmsg only reads through the pointer.
    msg.msg_iov = parts.as_ptr() as *mut libc::iovec;
    msg.msg_iovlen = parts.len() as _;
    if !fds.is_empty() {
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        // SAFETY: `msg` points at a control buffer of `space` bytes, enough
        // for one header, so CMSG_FIRSTHDR returns a valid pointer into it.
        let cmsg = unsafe { libc::CMSG_FIRSTHDR(&msg) };
        // SAFETY: `cmsg` points into `control` (see above); the data area
        // holds `payload` bytes, as CMSG_SPACE reserved.
        let data = unsafe {
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(payload as u32) as _;
            libc::CMSG_DATA(cmsg).cast::<RawFd>()
        };
        for (i, f) in fds.iter().enumerate() {
            // SAFETY: the data area holds `fds.len()` descriptors (above);
            // it may be unaligned for an int.
            unsafe { data.add(i).write_unaligned(f.as_raw_fd()) };
        }
    }
    let flags = libc::MSG_NOSIGNAL | if wait { 0 } else { libc::MSG_DONTWAIT };
    loop {
        // SAFETY: `msg` and everything it points to live until the call returns.
        let n = unsafe { libc::sendmsg(fd.as_raw_fd(), &msg, flags) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Reads at most `max` bytes onto the end of `buf` without initialising the
/// space first (a large frame would otherwise be zeroed once per read), and
/// collects descriptors that arrive with the data into `fds` (each marked
/// close-on-exec). `wait == false` never blocks. `Ok(0)` is end of file.
pub(crate) fn recv_append_with_fds(
    fd: BorrowedFd<'_>,
    buf: &mut Vec<u8>,
    max: usize,
    wait: bool,
    fds: &mut std::collections::VecDeque<OwnedFd>,
) -> io::Result<usize> {
    buf.reserve(max);
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
        return Err(io::Error::other("descriptors attached to a message were lost (too many)"));
    }
    Ok(n)
}

// --- shared memory ------------------------------------------------------------

/// The size of the file behind `fd`.
pub(crate) fn file_len(fd: BorrowedFd<'_>) -> io::Result<usize> {
    // SAFETY: stat is plain data; all-zero is valid.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a live stat struct and `fd` is open.
    check(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) })?;
    Ok(st.st_size as usize)
}

/// Maps `len` bytes of `fd` shared, readable and writable.
pub(crate) fn map_shared(fd: BorrowedFd<'_>, len: usize) -> io::Result<*mut u8> {
    // SAFETY: a fresh shared mapping of an open file; the kernel picks the address.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd.as_raw_fd(),
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    Ok(p.cast())
}

/// Unmaps a mapping made by [`map_shared`].
///
/// # Safety
/// `ptr`/`len` must be a live mapping from [`map_shared`] that nothing uses.
pub(crate) unsafe fn unmap(ptr: *mut u8, len: usize) {
    // SAFETY: guaranteed by the caller.
    unsafe { libc::munmap(ptr.cast(), len) };
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
    let ts = timeout.map(|d| libc::timespec {
        tv_sec: d.as_secs().min(i64::MAX as u64) as libc::time_t,
        tv_nsec: d.subsec_nanos() as libc::c_long,
    });
    let ts_ptr = ts.as_ref().map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: `word` is a live, aligned u32; FUTEX_WAIT only reads it, and the
    // timeout (relative) points to a live timespec or is null.
    let r = unsafe {
        libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAIT, expected, ts_ptr, 0, 0)
    };
    !(r < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ETIMEDOUT))
}

/// Wakes up to `n` waiters on `word`.
pub(crate) fn futex_wake(word: &std::sync::atomic::AtomicU32, n: i32) {
    // SAFETY: `word` is a live, aligned u32; FUTEX_WAKE does not access it.
    unsafe { libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE, n, 0, 0, 0) };
}

// --- robust, process-shared mutexes ---------------------------------------------

/// The memory of a process-shared mutex; lives in shared memory.
pub(crate) type RawMutex = libc::pthread_mutex_t;

/// What a successful lock found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Locked {
    Acquired,
    /// The previous owner died holding it; the caller now owns it and the
    /// mutex has been made consistent again.
    OwnerDied,
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
/// timeout. `Ok(None)` when it was not free in time.
///
/// # Safety
/// `m` must point to a mutex initialised by [`mutex_init`].
pub(crate) unsafe fn mutex_lock(
    m: *mut RawMutex,
    timeout: Option<Duration>,
) -> io::Result<Option<Locked>> {
    let code = match timeout {
        // SAFETY: `m` is an initialised mutex per the caller.
        None => unsafe { libc::pthread_mutex_lock(m) },
        // SAFETY: as above.
        Some(Duration::ZERO) => unsafe { libc::pthread_mutex_trylock(m) },
        // A bound beyond a century is no bound (and would overflow time_t).
        // SAFETY: as above.
        Some(d) if d.as_secs() > 100 * 365 * 86_400 => unsafe { libc::pthread_mutex_lock(m) },
        Some(d) => {
            // SAFETY: timespec is plain data; clock_gettime fills it.
            let mut now: libc::timespec = unsafe { std::mem::zeroed() };
            // SAFETY: `now` is a live timespec.
            unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut now) };
            let total = now.tv_nsec as u128 + d.subsec_nanos() as u128;
            let deadline = libc::timespec {
                tv_sec: now.tv_sec.saturating_add(
                    d.as_secs() as libc::time_t + (total / 1_000_000_000) as libc::time_t,
                ),
                tv_nsec: (total % 1_000_000_000) as libc::c_long,
            };
            // SAFETY: `m` is initialised per the caller; `deadline` is live.
            unsafe { libc::pthread_mutex_timedlock(m, &deadline) }
        }
    };
    match code {
        0 => Ok(Some(Locked::Acquired)),
        libc::EBUSY | libc::ETIMEDOUT => Ok(None),
        libc::EOWNERDEAD => {
            // SAFETY: we own the mutex after EOWNERDEAD, as consistent requires.
            err(unsafe { libc::pthread_mutex_consistent(m) })?;
            Ok(Some(Locked::OwnerDied))
        }
        e => Err(io::Error::from_raw_os_error(e)),
    }
}

/// Unlocks `m`; an error when the calling thread does not hold it.
///
/// # Safety
/// `m` must point to a mutex initialised by [`mutex_init`].
pub(crate) unsafe fn mutex_unlock(m: *mut RawMutex) -> io::Result<()> {
    // SAFETY: `m` is initialised per the caller; an error-checking or
    // recursive mutex reports EPERM when this thread is not the owner.
    err(unsafe { libc::pthread_mutex_unlock(m) })
}

/// A connected pair of message sockets: every send is one message, received
/// whole by exactly one reader, whichever process it is in.
pub(crate) fn message_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: socketpair writes two new descriptors into `fds`.
    check(unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    })?;
    // SAFETY: both descriptors were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

// --- sealed shared memory ---------------------------------------------------------

/// The seals every multiproc shared-memory file carries: its size is fixed
/// for good. A memfd can be resized by any process holding a descriptor of
/// it, and a mapping whose file shrank under it raises SIGBUS on access; with
/// these seals no process (the creator included) can shrink or grow it, nor
/// lift the seals.
const FIXED_SIZE_SEALS: libc::c_int = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;

/// An anonymous shared-memory file of `len` zero bytes whose size is sealed
/// (see [`FIXED_SIZE_SEALS`]). It has no name anywhere (nothing in /dev/shm
/// to leak or for another user to open) and vanishes when the last
/// descriptor and mapping of it are gone, in whichever process.
pub(crate) fn memfd_sealed(len: usize) -> io::Result<OwnedFd> {
    let flags = libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING;
    // SAFETY: the name is a NUL-terminated literal; memfd_create returns a new fd.
    let fd = check(unsafe { libc::memfd_create(c"multiproc".as_ptr(), flags) })?;
    // SAFETY: `fd` was just created and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let len = libc::off_t::try_from(len)
        .map_err(|_| io::Error::other(format!("{len} bytes is too large for shared memory")))?;
    // SAFETY: ftruncate on a descriptor we own.
    check(unsafe { libc::ftruncate(fd.as_raw_fd(), len) })?;
    // SAFETY: F_ADD_SEALS takes an open descriptor and a bit set; no memory.
    check(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, FIXED_SIZE_SEALS) })?;
    Ok(fd)
}

/// True when the file behind `fd` can never shrink (it carries F_SEAL_SHRINK),
/// so mapping all of its current length is safe from SIGBUS. False for a file
/// that may shrink, or one that cannot carry seals at all (not a memfd).
pub(crate) fn cannot_shrink(fd: BorrowedFd<'_>) -> bool {
    // SAFETY: F_GET_SEALS takes an open descriptor and touches no memory; on
    // a file that does not support seals it fails with EINVAL.
    let seals = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) };
    seals >= 0 && seals & libc::F_SEAL_SHRINK != 0
}

/// The system's memory page size: every mapping starts on a page boundary.
pub(crate) fn page_size() -> usize {
    // SAFETY: sysconf takes a constant and touches no memory.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if n > 0 {
        n as usize
    } else {
        4096
    }
}

/// The size of the file behind `fd`, and its identity (device and inode),
/// which is the same in every process and every descriptor of it.
pub(crate) fn file_len_and_id(fd: BorrowedFd<'_>) -> io::Result<(usize, (u64, u64))> {
    // SAFETY: stat is plain data; all-zero is valid.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a live stat struct and `fd` is open.
    check(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) })?;
    let len = usize::try_from(st.st_size).map_err(|_| {
        io::Error::other(format!("a file of {} bytes cannot be mapped", st.st_size))
    })?;
    Ok((len, (st.st_dev as u64, st.st_ino as u64)))
}
