//! Workers that misbehave on purpose: tasks that write garbage, forged
//! frames or stray descriptors into their worker's channel, a task that
//! forks and lets its worker die, workers killed as they start, and a huge
//! result. Each must fail at most its own task; the pool goes on.

use std::collections::HashSet;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use multiproc::{pipe_one_way, ErrorKind, Pool, ProcessPoolExecutor};

use crate::support::{
    assert_faster, bounded, getpid, send_beacon, sqr, wait_pid_gone, Beacon, PROMPT, STARTUP,
};

// Frame kinds, as the wire format numbers them.
const READY: u8 = 10;
const MISMATCH: u8 = 11;
const INIT_FAILED: u8 = 12;
const DONE: u8 = 13;

// --- inside a worker -------------------------------------------------------

/// The worker's channel to its parent: the stream socket whose peer is the
/// parent process.
fn channel() -> OwnedFd {
    // SAFETY: getppid cannot fail and touches no memory.
    let parent = unsafe { libc::getppid() };
    for entry in std::fs::read_dir("/proc/self/fd").expect("list /proc/self/fd") {
        let Ok(fd) = entry.expect("a /proc/self/fd entry").file_name().to_string_lossy().parse()
        else {
            continue;
        };
        if fd <= 2 {
            continue;
        }
        let mut cred = libc::ucred { pid: 0, uid: 0, gid: 0 };
        let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into the live `cred`;
        // on a descriptor that is not a socket it fails and writes nothing.
        let r = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_PEERCRED,
                (&mut cred as *mut libc::ucred).cast(),
                &mut len,
            )
        };
        if r == 0 && cred.pid == parent {
            // SAFETY: dup takes an open descriptor and returns a new one.
            let dup = unsafe { libc::dup(fd) };
            assert!(dup >= 0, "dup the channel: {}", std::io::Error::last_os_error());
            // SAFETY: `dup` is a fresh descriptor owned by nobody else.
            return unsafe { OwnedFd::from_raw_fd(dup) };
        }
    }
    panic!("no channel to the parent found in /proc/self/fd");
}

fn write_raw(bytes: &[u8]) {
    let mut s = UnixStream::from(channel());
    s.write_all(bytes).expect("write into the channel");
}

pub(crate) fn header(len: u32, kind: u8, nfds: u8) -> Vec<u8> {
    let mut h = len.to_le_bytes().to_vec();
    h.extend_from_slice(&[kind, nfds]);
    h
}

/// Writes `bytes` into the channel with `fds` attached to them.
fn write_with_fds(bytes: &[u8], fds: &[RawFd]) {
    send_with_fds(channel().as_raw_fd(), bytes, fds);
}

/// Writes `bytes` into socket `chan` with `fds` attached to them.
fn send_with_fds(chan: RawFd, bytes: &[u8], fds: &[RawFd]) {
    let payload = std::mem::size_of_val(fds);
    // SAFETY: CMSG_SPACE is a pure computation on a length.
    let space = unsafe { libc::CMSG_SPACE(payload as u32) } as usize;
    let mut control = vec![0u64; space.div_ceil(8)];
    let mut iov =
        libc::iovec { iov_base: bytes.as_ptr() as *mut libc::c_void, iov_len: bytes.len() };
    // SAFETY: msghdr is plain data; all-zero is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    // SAFETY: `msg` has a control buffer of `space` bytes, room for one header.
    let cmsg = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    // SAFETY: `cmsg` points into `control`, whose data area holds `payload` bytes.
    unsafe {
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(payload as u32) as _;
        std::ptr::copy_nonoverlapping(fds.as_ptr(), libc::CMSG_DATA(cmsg).cast(), fds.len());
    }
    // SAFETY: `msg` and all it points to live until the call returns.
    let n = unsafe { libc::sendmsg(chan, &msg, libc::MSG_NOSIGNAL) };
    assert_eq!(n, bytes.len() as isize, "sendmsg: {}", std::io::Error::last_os_error());
}

/// Writes 1 to 64 bytes of noise (chosen by `seed`) into the channel.
pub(crate) fn write_garbage(seed: u64) -> u32 {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let len = 1 + (next() % 64) as usize;
    let bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
    write_raw(&bytes);
    std::process::id()
}

/// Writes a header and `body`, then waits far longer than any test: the
/// parent must judge the frame from what it has.
pub(crate) fn write_then_sleep((head, body): (Vec<u8>, Vec<u8>)) -> u32 {
    write_raw(&[head, body].concat());
    std::thread::sleep(Duration::from_secs(60));
    std::process::id()
}

/// Forges a frame of `kind` with `body`, then returns normally.
fn forge((kind, body): (u8, Vec<u8>)) -> u32 {
    write_raw(&[header(body.len() as u32, kind, 0), body].concat());
    std::process::id()
}

/// Sends 253 descriptors attached to a READY frame that declares none.
fn send_stray_fds(_: ()) -> u32 {
    let null = std::fs::File::open("/dev/null").expect("open /dev/null");
    let fds = vec![null.as_raw_fd(); 253];
    let mut frame = header(4, READY, 0);
    frame.extend_from_slice(&std::process::id().to_le_bytes());
    write_with_fds(&frame, &fds);
    std::process::id()
}

/// Forks a child that keeps the channel open for 20 s, tells the test its
/// pid, and exits the worker with code 3.
pub(crate) fn fork_then_exit(beacon: String) -> u32 {
    // SAFETY: fork in a worker; the child only sleeps and exits, both safe
    // after fork.
    let child = unsafe { libc::fork() };
    if child == 0 {
        // SAFETY: sleep and _exit are async-signal-safe.
        unsafe {
            libc::sleep(20);
            libc::_exit(0);
        }
    }
    send_beacon(&beacon, &child.to_string());
    std::process::exit(3)
}

fn big_string(len: usize) -> String {
    "a".repeat(len)
}

// --- in the test -----------------------------------------------------------

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").expect("list /proc/self/fd").count()
}

/// VmRSS of process `pid` in bytes.
fn rss(pid: &str) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("a VmRSS line");
    let kib: usize = line.split_whitespace().nth(1).expect("a number").parse().expect("kB");
    kib * 1024
}

#[track_caller]
pub(crate) fn assert_protocol_error(err: &multiproc::Error, pid: u32, what: &str) {
    assert_eq!(err.kind(), ErrorKind::Protocol, "{err:?}");
    assert_eq!(err.pid(), Some(pid), "{err:?}");
    let msg = err.message();
    assert!(msg.contains(&format!("worker {pid} sent")), "{msg}");
    assert!(msg.contains(what), "{msg} does not name {what:?}");
}

/// A pool of one warmed-up worker.
fn one_worker() -> (Pool, u32) {
    let pool = Pool::new(1).unwrap();
    let pid = pool.apply(getpid, ()).unwrap();
    (pool, pid)
}

#[test]
fn random_garbage_fails_only_its_task_and_the_pool_goes_on() {
    if !crate::support::alone() {
        return;
    }
    let pool = Pool::new(4).unwrap();
    let results: Vec<_> = (0..100).map(|seed| pool.apply_async(write_garbage, seed)).collect();
    for (seed, r) in results.into_iter().enumerate() {
        let err = r.get_timeout(STARTUP).expect_err("garbage passed for a result");
        assert_eq!(err.kind(), ErrorKind::Protocol, "trial {seed}: {err:?}");
    }
    let squares = bounded(STARTUP, "tasks after the garbage", move || pool.map(sqr, 0..20u64));
    assert_eq!(squares.unwrap(), (0..20u64).map(|x| x * x).collect::<Vec<_>>());
}

#[test]
fn a_header_declaring_4_gib_fails_its_task_at_once() {
    if !crate::support::alone() {
        return;
    }
    let (pool, pid) = one_worker();
    let started = Instant::now();
    let r = pool.apply_async(write_then_sleep, (header(u32::MAX, DONE, 0), Vec::new()));
    let err = r.get_timeout(STARTUP).expect_err("a 4 GiB header passed");
    assert_faster(started.elapsed(), PROMPT, "refusing a 4 GiB header");
    assert_protocol_error(&err, pid, "4294967295 bytes");
    assert!(wait_pid_gone(pid, PROMPT), "the lying worker {pid} still runs");
    assert_eq!(pool.apply(sqr, 7).unwrap(), 49);
}

#[test]
fn a_result_for_another_task_is_refused_before_its_body_arrives() {
    if !crate::support::alone() {
        return;
    }
    let (pool, pid) = one_worker();
    let started = Instant::now();
    let body = u64::MAX.to_le_bytes().to_vec();
    let r = pool.apply_async(write_then_sleep, (header(1000, DONE, 0), body));
    let err = r.get_timeout(STARTUP).expect_err("a result for another task passed");
    assert_faster(started.elapsed(), PROMPT, "refusing a result for another task");
    assert_protocol_error(&err, pid, &format!("a result for task {}", u64::MAX));
    assert_eq!(pool.apply(sqr, 7).unwrap(), 49);
}

#[test]
fn forged_handshake_frames_after_ready_fail_only_their_task() {
    if !crate::support::alone() {
        return;
    }
    let (pool, _) = one_worker();
    let cases = [
        (MISMATCH, Vec::new(), "MISMATCH"),
        (INIT_FAILED, b"forged".to_vec(), "INIT_FAILED"),
        (READY, 1234u32.to_le_bytes().to_vec(), "READY"),
    ];
    for (kind, body, name) in cases {
        let pid = pool.apply(getpid, ()).unwrap();
        let err = pool.apply_async(forge, (kind, body)).get_timeout(STARTUP).unwrap_err();
        assert_protocol_error(&err, pid, name);
        for i in 0..20u64 {
            let r = pool.apply_async(sqr, i).get_timeout(STARTUP);
            assert_eq!(r.unwrap(), i * i, "task {i} after a forged {name}");
        }
    }
}

#[test]
fn descriptors_sent_outside_a_frame_are_closed() {
    if !crate::support::alone() {
        return;
    }
    let (pool, _) = one_worker();
    let before = open_fds();
    for i in 0..20 {
        let r = pool.apply_async(send_stray_fds, ()).get_timeout(STARTUP);
        let err = r.expect_err("stray descriptors passed");
        assert_eq!(err.kind(), ErrorKind::Protocol, "message {i}: {err:?}");
    }
    assert_eq!(pool.apply(sqr, 3).unwrap(), 9);
    let after = open_fds();
    assert!(after <= before + 10, "open descriptors went from {before} to {after}");
}

#[test]
fn a_worker_that_dies_while_its_forked_child_lives_is_noticed() {
    if !crate::support::alone() {
        return;
    }
    let (pool, pid) = one_worker();
    let beacon = Beacon::new();
    let started = Instant::now();
    let r = pool.apply_async(fork_then_exit, beacon.path());
    let child: u32 = beacon.recv_pid(STARTUP, "the forked child's pid");
    let err = r.get_timeout(STARTUP).expect_err("the worker exited");
    let took = started.elapsed();
    // SAFETY: kill takes plain integers; the child is ours to stop.
    unsafe { libc::kill(child as libc::pid_t, libc::SIGKILL) };
    assert_faster(took, PROMPT, "noticing the worker's death");
    assert_eq!(err.kind(), ErrorKind::WorkerDied, "{err:?}");
    assert_eq!((err.pid(), err.exit_code()), (Some(pid), Some(3)), "{err:?}");
    assert_eq!(pool.apply(sqr, 5).unwrap(), 25);
}

/// Kills children of this process as they appear: each new one, up to
/// `count` kills, or every one seen every `every` until `stop` is set.
fn killer(
    count: usize,
    every: Option<Duration>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<usize> {
    std::thread::spawn(move || {
        let mut seen = HashSet::new();
        let mut kills = 0;
        let deadline = Instant::now() + STARTUP;
        while kills < count && !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
            for c in multiproc::active_children() {
                if kills < count && (every.is_some() || seen.insert(c.pid)) {
                    // SAFETY: kill takes plain integers; the pid is a live
                    // child of this process (it is reaped only after it dies).
                    if unsafe { libc::kill(c.pid as libc::pid_t, libc::SIGKILL) } == 0 {
                        kills += 1;
                    }
                }
            }
            std::thread::sleep(every.unwrap_or(Duration::from_micros(200)));
        }
        kills
    })
}

/// Waits until `run` succeeds and returns its value: a worker the killer hit
/// at the end of its run may still take a task before the pool has seen it
/// die (on a loaded machine the kernel can take a while to tear a killed
/// process down), and fails that task with `WorkerDied`; but a broken pool
/// never recovers, and any other error fails the test.
fn until_it_runs<T>(what: &str, mut run: impl FnMut() -> multiproc::Result<T>) -> T {
    let deadline = Instant::now() + STARTUP;
    loop {
        match run() {
            Ok(v) => return v,
            Err(e) if e.kind() == ErrorKind::WorkerDied && Instant::now() < deadline => {}
            Err(e) => panic!("{what}: {e:?}"),
        }
    }
}

fn squares_after(what: &str, pool: Pool) {
    let got = bounded(STARTUP * 2, "tasks after the kills", {
        let what = what.to_string();
        move || until_it_runs(&what, || pool.map(sqr, 0..20u64))
    });
    assert_eq!(got, (0..20u64).map(|x| x * x).collect::<Vec<_>>(), "{what}");
}

#[test]
fn workers_killed_as_they_start_do_not_break_the_pool() {
    if !crate::support::alone() {
        return;
    }
    let k = killer(12, None, Arc::new(AtomicBool::new(false)));
    let pool = Pool::new(4).unwrap();
    assert_eq!(k.join().unwrap(), 12, "the killer did not see 12 workers");
    let v =
        until_it_runs("a task after the kills", || pool.apply_async(sqr, 2).get_timeout(STARTUP));
    assert_eq!(v, 4);
    squares_after("a map after the kills", pool);
}

#[test]
fn executor_workers_killed_as_they_start_do_not_break_it() {
    if !crate::support::alone() {
        return;
    }
    let k = killer(12, None, Arc::new(AtomicBool::new(false)));
    let ex = ProcessPoolExecutor::new(4).unwrap();
    let early: Vec<_> = (0..8u64).map(|i| ex.submit(sqr, i).unwrap()).collect();
    assert_eq!(k.join().unwrap(), 12, "the killer did not see 12 workers");
    for f in early {
        if let Err(err) = f.result_timeout(STARTUP) {
            // A worker killed after its handshake fails the task it ran.
            assert_eq!(err.kind(), ErrorKind::WorkerDied, "{err:?}");
        }
    }
    let v = until_it_runs("a task after the kills", || ex.submit(sqr, 2)?.result_timeout(STARTUP));
    assert_eq!(v, 4);
    for i in 0..8u64 {
        let v =
            until_it_runs("tasks after the kills", || ex.submit(sqr, i)?.result_timeout(STARTUP));
        assert_eq!(v, i * i);
    }
}

#[test]
fn a_kill_storm_every_3_ms_does_not_break_the_pool() {
    if !crate::support::alone() {
        return;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let k = killer(usize::MAX, Some(Duration::from_millis(3)), stop.clone());
    let pool = Pool::new(4).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::SeqCst);
    assert!(k.join().unwrap() > 0, "the storm killed nothing");
    let v =
        until_it_runs("a task after the storm", || pool.apply_async(sqr, 2).get_timeout(STARTUP));
    assert_eq!(v, 4);
    squares_after("a map after the storm", pool);
}

#[test]
fn a_large_result_leaves_no_large_buffers_behind() {
    if !crate::support::alone() {
        return;
    }
    const LEN: usize = 256 << 20;
    let (pool, pid) = one_worker();
    let (parent_before, worker_before) = (rss("self"), rss(&pid.to_string()));
    let s = pool.apply_async(big_string, LEN).get_timeout(STARTUP).unwrap();
    assert_eq!(s.len(), LEN);
    drop(s);
    // One more round trip: both sides have finished with the large frame.
    assert_eq!(pool.apply(getpid, ()).unwrap(), pid);
    let (parent_after, worker_after) = (rss("self"), rss(&pid.to_string()));
    let limit = 64 << 20;
    assert!(
        parent_after < parent_before + limit,
        "parent: {parent_before} bytes resident before, {parent_after} after"
    );
    assert!(
        worker_after < worker_before + limit,
        "worker: {worker_before} bytes resident before, {worker_after} after"
    );
}

/// This process's sockets: (descriptor, inode), by descriptor.
fn sockets() -> Vec<(RawFd, String)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc/self/fd").expect("list /proc/self/fd") {
        let path = entry.expect("a /proc/self/fd entry").path();
        let Ok(fd) = path.file_name().unwrap().to_string_lossy().parse::<RawFd>() else {
            continue;
        };
        let target = std::fs::read_link(&path).ok().map(|t| t.to_string_lossy().into_owned());
        if let Some(t) = target.filter(|t| t.starts_with("socket:")) {
            found.push((fd, t));
        }
    }
    found.sort();
    found
}

#[test]
fn a_pipe_refuses_descriptors_no_message_declares() {
    if !crate::support::alone() {
        return;
    }
    let before: HashSet<String> = sockets().into_iter().map(|(_, inode)| inode).collect();
    let (rx, tx) = pipe_one_way::<Vec<u8>>().unwrap();
    // The receiving end is made first: the lowest new socket is one of its
    // copies; a socket of the other inode is the sending end's.
    let new: Vec<_> = sockets().into_iter().filter(|(_, i)| !before.contains(i)).collect();
    let rx_inode = new.first().expect("the pipe's sockets").1.clone();
    let tx_fd = new.iter().find(|(_, inode)| *inode != rx_inode).expect("the sending end").0;
    let null = std::fs::File::open("/dev/null").unwrap();
    let fds_before = open_fds();
    // A whole byte message (kind 2) that declares no descriptors, with 3.
    let mut frame = header(3, 2, 0);
    frame.extend_from_slice(b"abc");
    send_with_fds(tx_fd, &frame, &[null.as_raw_fd(); 3]);
    let err = bounded(PROMPT, "recv of a message with stray descriptors", move || {
        rx.recv_bytes().unwrap_err()
    });
    assert_eq!(err.kind(), ErrorKind::Protocol, "{err:?}");
    assert!(err.message().contains("3 descriptors attached to no frame"), "{err}");
    // The receiving end was dropped with the closure; the strays were closed
    // at once, so only the end's own two copies are gone.
    assert!(open_fds() <= fds_before - 2, "the stray descriptors stayed open");
    drop(tx);
}
