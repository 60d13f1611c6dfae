//! `Process::sentinel`: a descriptor that becomes readable when the process
//! ends, by exit or by SIGKILL, usable with `connection::wait` and poll.

use std::os::fd::{AsRawFd, BorrowedFd};
use std::time::{Duration, Instant};

use multiproc::{connection, pipe_one_way, ErrorKind, Process};

use crate::ipc_util::{send_signal, start_daemon, STARTUP};

fn nap(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
}

/// True when `fd` is readable within `timeout`.
fn readable(fd: BorrowedFd<'_>, timeout: Duration) -> bool {
    let mut p = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    // SAFETY: one live pollfd.
    let n = unsafe { libc::poll(&mut p, 1, timeout.as_millis() as libc::c_int) };
    n == 1 && p.revents & libc::POLLIN != 0
}

#[test]
fn sentinel_becomes_readable_when_the_process_exits() {
    let mut p = start_daemon(Process::new(nap, 300u64));
    let s = p.sentinel().unwrap();
    assert!(!readable(s, Duration::from_millis(50)), "readable while the child runs");
    let started = Instant::now();
    assert!(readable(s, STARTUP));
    assert!(started.elapsed() >= Duration::from_millis(150));
    // It does not reap: the exit code is still there to collect.
    assert!(p.join_timeout(STARTUP).unwrap());
    assert_eq!(p.exitcode(), Some(0));
    // And it stays readable, as a fresh one after the reaping is.
    assert!(readable(p.sentinel().unwrap(), Duration::ZERO));
}

#[test]
fn sentinel_of_a_killed_process_wakes_connection_wait() {
    let (rx, _tx) = pipe_one_way::<u32>().unwrap();
    let mut p = start_daemon(Process::new(nap, 60_000u64));
    let pid = p.pid().unwrap();
    {
        let s = p.sentinel().unwrap();
        assert!(connection::wait(&[&rx, &s], Some(Duration::from_millis(50))).unwrap().is_empty());
        send_signal(pid, libc::SIGKILL);
        assert_eq!(connection::wait(&[&rx, &s], Some(STARTUP)).unwrap(), vec![1]);
    }
    assert!(p.join_timeout(STARTUP).unwrap());
    assert_eq!(p.exitcode(), Some(-libc::SIGKILL));
}

#[test]
fn sentinel_of_a_reaped_process_is_readable_and_of_an_unstarted_one_an_error() {
    let p = Process::new(nap, 0u64);
    assert_eq!(p.sentinel().unwrap_err().kind(), ErrorKind::InvalidState);
    let mut p = start_daemon(Process::new(nap, 0u64));
    p.join().unwrap();
    assert!(readable(p.sentinel().unwrap(), Duration::ZERO));
}
