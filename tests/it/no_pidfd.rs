//! Without pidfds (kernels before 5.3, valgrind 3.19): each test runs in a
//! `Process` that fails `pidfd_open` with ENOSYS (`seccomp`) for itself and
//! everything it starts, and checks there that waiting for a process's end
//! still works. The child panics (exit code 1, message on stderr) when a
//! check fails.

use std::time::Instant;

use multiproc::{ErrorKind, Pool, Process};

// The case `hostile_worker` runs with pidfds: the worker forks, then exits 3.
use crate::hostile_worker::fork_then_exit;
use crate::seccomp::refuse_pidfd_open;
use crate::support::{assert_faster, getpid, sqr, Beacon, PROMPT, STARTUP};

/// Runs `p` (a check that starts with [`no_pidfds_here`]); it must exit 0
/// in time.
fn without_pidfds(mut p: Process) {
    p.start().unwrap();
    assert!(p.join_timeout(STARTUP * 3).unwrap(), "the child without pidfds did not finish");
    assert_eq!(p.exitcode(), Some(0), "the check without pidfds failed (its stderr says why)");
}

fn no_pidfds_here() {
    refuse_pidfd_open().expect("install the seccomp filter");
    // SAFETY: pidfd_open takes a pid and flags; it is meant to fail here.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, libc::getpid(), 0) };
    let err = std::io::Error::last_os_error();
    assert!(fd < 0 && err.raw_os_error() == Some(libc::ENOSYS), "pidfd_open: {fd}, {err}");
}

fn worker_dies_while_its_forked_child_lives(_: ()) {
    no_pidfds_here();
    let pool = Pool::new(1).unwrap();
    let pid = pool.apply(getpid, ()).unwrap();
    let beacon = Beacon::new();
    let started = Instant::now();
    let r = pool.apply_async(fork_then_exit, beacon.path());
    let child = beacon.recv_pid(STARTUP, "the forked child's pid");
    let outcome = r.get_timeout(STARTUP);
    let took = started.elapsed();
    // SAFETY: kill takes plain integers; the forked child is ours to stop.
    unsafe { libc::kill(child as libc::pid_t, libc::SIGKILL) };
    let err = outcome.expect_err("the worker exited");
    assert_faster(took, PROMPT, "noticing the worker's death without a pidfd");
    assert_eq!(err.kind(), ErrorKind::WorkerDied, "{err:?}");
    assert_eq!((err.pid(), err.exit_code()), (Some(pid), Some(3)), "{err:?}");
    assert_eq!(pool.apply(sqr, 5).unwrap(), 25);
    pool.close();
    pool.join().unwrap();
}

#[test]
fn a_worker_that_dies_while_its_forked_child_lives_is_noticed_without_pidfds() {
    without_pidfds(Process::new(worker_dies_while_its_forked_child_lives, ()));
}

fn exit_with(code: i32) {
    std::process::exit(code);
}

fn join_waits_for_the_exit(_: ()) {
    no_pidfds_here();
    let mut p = Process::new(exit_with, 7);
    p.start().unwrap();
    p.join().expect("join without a pidfd");
    assert_eq!(p.exitcode(), Some(7));
    let mut q = Process::new(exit_with, 8);
    q.start().unwrap();
    let t = Instant::now();
    while !q.join_timeout(PROMPT).expect("join_timeout without a pidfd") {
        assert_faster(t.elapsed(), STARTUP, "a child's exit without a pidfd");
    }
    assert_eq!(q.exitcode(), Some(8));
}

#[test]
fn process_join_works_without_pidfds() {
    without_pidfds(Process::new(join_waits_for_the_exit, ()));
}
