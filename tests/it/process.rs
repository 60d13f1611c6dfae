//! `Process` as CPython's `_TestProcess` pins it down: lifecycle, exit codes,
//! terminate and kill, join with a timeout, identity inside the child,
//! `active_children`, nesting, and what happens to children when their parent
//! returns.

use std::time::{Duration, Instant};

use multiproc::{ErrorKind, Process, Run};
use serde::{Deserialize, Serialize};

use crate::support::{
    announce_then_sleep, assert_faster, no_core_dump, send_beacon, wait_pid_gone, Beacon, PROMPT,
    STARTUP,
};

fn say(beacon: String, msg: String) {
    send_beacon(&beacon, &msg);
}

fn exit_with(code: i32) {
    std::process::exit(code);
}

fn panic_in_child(_: ()) {
    panic!("the child panicked on purpose");
}

fn abort_in_child(_: ()) {
    no_core_dump();
    std::process::abort();
}

fn segfault_in_child(_: ()) {
    no_core_dump();
    let bad = 16usize as *mut u32;
    // SAFETY: deliberately unsound: the write faults and this process dies of
    // SIGSEGV, which is what the task is for.
    unsafe { std::ptr::write_volatile(bad, 1) };
}

/// Reports `name|pid|parent name|parent pid` as the child sees them.
fn report_identity(beacon: String) {
    let me = multiproc::current_process();
    let parent = multiproc::parent_process()
        .map_or_else(|| "-|0".to_string(), |p| format!("{}|{}", p.name, p.pid));
    send_beacon(&beacon, &format!("{}|{}|{parent}", me.name, me.pid));
}

/// Exits with 40 + `depth`, having started (and joined) a child of depth - 1.
fn nested(depth: i32) {
    if depth == 0 {
        std::process::exit(40);
    }
    let mut child = Process::new(nested, depth - 1);
    child.start().unwrap();
    child.join().unwrap();
    std::process::exit(child.exitcode().unwrap() + 1);
}

fn say_after_a_while(beacon: String) {
    std::thread::sleep(Duration::from_millis(300));
    send_beacon(&beacon, "grandchild done");
}

/// Starts a grandchild and returns without joining it.
fn leave_a_child_behind(beacon: String, daemon: bool) {
    let mut child = match daemon {
        true => Process::new(announce_then_sleep, beacon.clone()),
        false => Process::new(say_after_a_while, beacon.clone()),
    };
    child.set_daemon(daemon).unwrap();
    child.start().unwrap();
    send_beacon(&beacon, &format!("grandchild {}", child.pid().unwrap()));
}

#[derive(Serialize, Deserialize)]
struct Exiter {
    code: i32,
}

impl Run for Exiter {
    fn run(self) {
        std::process::exit(self.code);
    }
}

/// A sleeping child, a daemon so that nothing waits for it if a test fails.
fn sleeper(beacon: &Beacon) -> (Process, u32) {
    let mut p = Process::new(announce_then_sleep, beacon.path());
    p.set_daemon(true).unwrap();
    p.start().unwrap();
    let pid = beacon.recv_pid(STARTUP, "the sleeper's pid");
    assert_eq!(p.pid(), Some(pid));
    (p, pid)
}

#[test]
fn process_runs_its_function_and_exits_with_zero() {
    let beacon = Beacon::new();
    let mut p = Process::new(say, (beacon.path(), "hello from the child".to_string()));
    assert_eq!(p.pid(), None);
    assert_eq!(p.exitcode(), None);
    assert!(!p.is_alive());
    assert!(!p.daemon());
    p.start().unwrap();
    assert!(p.pid().is_some());
    assert_ne!(p.pid(), Some(std::process::id()));
    assert_eq!(beacon.recv(STARTUP, "the child's message"), "hello from the child");
    assert!(p.join_timeout(STARTUP).unwrap());
    assert_eq!(p.exitcode(), Some(0));
    assert!(!p.is_alive());
    p.join().unwrap();
    assert_eq!(p.exitcode(), Some(0), "joining again changes nothing");
}

#[test]
fn exit_code_is_the_code_passed_to_exit() {
    for code in [0, 3, 42, 255] {
        let mut p = Process::new(exit_with, code);
        p.start().unwrap();
        assert!(p.join_timeout(STARTUP).unwrap());
        assert_eq!(p.exitcode(), Some(code));
    }
}

#[test]
fn exit_code_is_one_when_the_function_panics() {
    let mut p = Process::new(panic_in_child, ());
    p.start().unwrap();
    assert!(p.join_timeout(STARTUP).unwrap());
    assert_eq!(p.exitcode(), Some(1));
}

#[test]
fn exit_code_is_minus_the_signal_when_the_child_crashes() {
    let mut p = Process::new(abort_in_child, ());
    p.start().unwrap();
    assert!(p.join_timeout(STARTUP).unwrap());
    assert_eq!(p.exitcode(), Some(-libc::SIGABRT));
    let mut p = Process::new(segfault_in_child, ());
    p.start().unwrap();
    assert!(p.join_timeout(STARTUP).unwrap());
    assert_eq!(p.exitcode(), Some(-libc::SIGSEGV));
}

#[test]
fn from_run_calls_run_on_the_value_in_the_child() {
    let mut p = Process::from_run(Exiter { code: 17 });
    p.start().unwrap();
    assert!(p.join_timeout(STARTUP).unwrap());
    assert_eq!(p.exitcode(), Some(17));
}

#[test]
fn terminate_ends_the_child_with_minus_sigterm() {
    let beacon = Beacon::new();
    let (mut p, pid) = sleeper(&beacon);
    assert!(p.is_alive());
    assert_eq!(p.exitcode(), None);
    p.terminate().unwrap();
    let t = Instant::now();
    assert!(p.join_timeout(PROMPT).unwrap());
    assert_faster(t.elapsed(), PROMPT, "a terminated child exiting");
    assert_eq!(p.exitcode(), Some(-libc::SIGTERM));
    assert!(!p.is_alive());
    assert!(wait_pid_gone(pid, Duration::ZERO));
    // Signalling a finished process is harmless, as in Python.
    p.terminate().unwrap();
    p.kill().unwrap();
    assert_eq!(p.exitcode(), Some(-libc::SIGTERM));
}

#[test]
fn kill_ends_the_child_with_minus_sigkill() {
    let beacon = Beacon::new();
    let (mut p, _) = sleeper(&beacon);
    p.kill().unwrap();
    assert!(p.join_timeout(PROMPT).unwrap());
    assert_eq!(p.exitcode(), Some(-libc::SIGKILL));
    assert!(!p.is_alive());
}

#[test]
fn a_child_killed_from_outside_reports_the_signal() {
    let beacon = Beacon::new();
    let (mut p, pid) = sleeper(&beacon);
    crate::support::send_signal(pid, libc::SIGKILL);
    assert!(p.join_timeout(PROMPT).unwrap());
    assert_eq!(p.exitcode(), Some(-libc::SIGKILL));
}

#[test]
fn join_timeout_waits_at_most_the_timeout() {
    let beacon = Beacon::new();
    let (mut p, _) = sleeper(&beacon);
    let timeout = Duration::from_millis(200);
    let t = Instant::now();
    assert!(!p.join_timeout(timeout).unwrap());
    let elapsed = t.elapsed();
    assert!(elapsed >= timeout, "returned after {elapsed:?}");
    assert_faster(elapsed, timeout + PROMPT, "join_timeout");
    assert!(p.is_alive());
    assert_eq!(p.exitcode(), None);
    // A zero timeout only looks.
    let t = Instant::now();
    assert!(!p.join_timeout(Duration::ZERO).unwrap());
    assert_faster(t.elapsed(), Duration::from_millis(500), "join_timeout(0)");
    p.kill().unwrap();
    assert!(p.join_timeout(PROMPT).unwrap());
}

#[test]
fn misuse_before_and_after_start_is_invalid_state() {
    let mut p = Process::new(exit_with, 0);
    assert_eq!(p.join().unwrap_err().kind(), ErrorKind::InvalidState);
    assert_eq!(p.join_timeout(Duration::ZERO).unwrap_err().kind(), ErrorKind::InvalidState);
    assert_eq!(p.terminate().unwrap_err().kind(), ErrorKind::InvalidState);
    assert_eq!(p.kill().unwrap_err().kind(), ErrorKind::InvalidState);
    p.start().unwrap();
    assert_eq!(p.start().unwrap_err().kind(), ErrorKind::InvalidState);
    assert_eq!(p.set_daemon(true).unwrap_err().kind(), ErrorKind::InvalidState);
    assert!(!p.daemon());
    assert!(p.join_timeout(STARTUP).unwrap());
    assert_eq!(p.start().unwrap_err().kind(), ErrorKind::InvalidState);
    assert_eq!(p.exitcode(), Some(0));
}

#[test]
fn names_are_unique_by_default_and_can_be_set() {
    let a = Process::new(exit_with, 0);
    let b = Process::new(exit_with, 0);
    for p in [&a, &b] {
        let n = p.name().strip_prefix("Process-").unwrap_or_else(|| panic!("{}", p.name()));
        assert!(n.parse::<u32>().is_ok(), "{}", p.name());
    }
    assert_ne!(a.name(), b.name());
    let mut c = Process::new(exit_with, 0);
    c.set_name("worker-of-the-month");
    assert_eq!(c.name(), "worker-of-the-month");
    let mut d = Process::new(exit_with, 0);
    d.set_daemon(true).unwrap();
    assert!(d.daemon());
}

#[test]
fn the_child_knows_its_name_pid_and_parent() {
    let beacon = Beacon::new();
    let mut p = Process::new(report_identity, beacon.path());
    p.set_name("reporter");
    p.start().unwrap();
    let msg = beacon.recv(STARTUP, "the child's identity");
    let fields: Vec<&str> = msg.split('|').collect();
    assert_eq!(
        fields,
        ["reporter", &p.pid().unwrap().to_string(), "MainProcess", &std::process::id().to_string()]
    );
    assert!(p.join_timeout(STARTUP).unwrap());
    assert_eq!(p.exitcode(), Some(0));
}

#[test]
fn the_main_process_is_main_process_without_a_parent() {
    let me = multiproc::current_process();
    assert_eq!(me.name, "MainProcess");
    assert_eq!(me.pid, std::process::id());
    assert_eq!(multiproc::parent_process(), None);
}

#[test]
fn cpu_count_is_the_available_parallelism() {
    let n = multiproc::cpu_count();
    assert!(n >= 1);
    assert_eq!(n, std::thread::available_parallelism().unwrap().get());
}

#[test]
fn active_children_lists_a_process_from_start_to_exit() {
    let beacon = Beacon::new();
    let mut p = Process::new(announce_then_sleep, beacon.path());
    p.set_name("listed");
    p.set_daemon(true).unwrap();
    let listed = |pid: u32| multiproc::active_children().into_iter().find(|c| c.pid == pid);
    p.start().unwrap();
    let pid = p.pid().unwrap();
    let info = listed(pid).expect("a started child is listed");
    assert_eq!(info.name, "listed");
    assert!(info.daemon);
    beacon.recv_pid(STARTUP, "the child's start");
    assert!(listed(pid).is_some());
    p.kill().unwrap();
    assert!(p.join_timeout(PROMPT).unwrap());
    assert!(listed(pid).is_none(), "a joined child is not listed");
}

#[test]
fn a_child_can_start_its_own_children() {
    // CPython's test_recursion.
    let mut p = Process::new(nested, 2);
    p.start().unwrap();
    assert!(p.join_timeout(STARTUP).unwrap());
    assert_eq!(p.exitcode(), Some(42));
}

#[test]
fn many_processes_run_and_report_their_own_exit_codes() {
    let mut ps: Vec<Process> = (0..20).map(|i| Process::new(exit_with, i % 7)).collect();
    for p in &mut ps {
        p.start().unwrap();
    }
    for (i, p) in ps.iter_mut().enumerate() {
        assert!(p.join_timeout(STARTUP).unwrap(), "process {i} did not exit");
        assert_eq!(p.exitcode(), Some(i as i32 % 7));
    }
}

#[test]
fn a_non_daemon_child_is_awaited_when_its_parent_returns() {
    let beacon = Beacon::new();
    let mut p = Process::new(leave_a_child_behind, (beacon.path(), false));
    p.start().unwrap();
    let mut messages = vec![beacon.recv(STARTUP, "the grandchild's pid")];
    assert!(p.join_timeout(STARTUP).unwrap());
    assert_eq!(p.exitcode(), Some(0));
    // The parent exited only after its child had finished and reported, so
    // the report is already waiting.
    while let Some(m) = beacon.try_recv(Duration::from_millis(1)) {
        messages.push(m);
    }
    assert!(messages.iter().any(|m| m.starts_with("grandchild ")), "{messages:?}");
    assert!(messages.iter().any(|m| m == "grandchild done"), "{messages:?}");
}

#[test]
fn a_daemon_child_is_killed_when_its_parent_returns() {
    let beacon = Beacon::new();
    let mut p = Process::new(leave_a_child_behind, (beacon.path(), true));
    p.start().unwrap();
    let mut grandchild = None;
    while grandchild.is_none() {
        // The grandchild announces itself too; the parent's message names it.
        let msg = beacon.recv(STARTUP, "the grandchild's pid");
        grandchild = msg.strip_prefix("grandchild ").map(|p| p.parse::<u32>().unwrap());
    }
    let grandchild = grandchild.unwrap();
    // The grandchild sleeps for a minute: the parent does not wait for it.
    assert!(p.join_timeout(STARTUP).unwrap());
    assert_eq!(p.exitcode(), Some(0));
    assert!(wait_pid_gone(grandchild, PROMPT), "daemon {grandchild} outlived its parent");
}

#[test]
fn dropping_a_started_process_handle_leaves_no_zombie() {
    let mut p = Process::new(exit_with, 0);
    p.start().unwrap();
    let pid = p.pid().unwrap();
    drop(p);
    assert!(wait_pid_gone(pid, STARTUP));
    assert!(
        crate::support::eventually(PROMPT, || !crate::support::pid_exists(pid)),
        "child {pid} was never reaped"
    );
}

#[derive(Debug, Deserialize)]
struct NoSerialize;

impl Serialize for NoSerialize {
    fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom("NoSerialize refuses to be serialized"))
    }
}

fn take_no_serialize(_: NoSerialize) {}

#[test]
fn argument_that_fails_to_serialize_is_reported_by_start() {
    // As Python's start() raises when the target's arguments cannot be
    // pickled: the error is known in the parent before any child exists.
    let mut p = Process::new(take_no_serialize, NoSerialize);
    match p.start() {
        Err(e) => {
            assert_eq!(e.kind(), ErrorKind::Serialize, "{e:?}");
            assert!(e.message().contains("NoSerialize"), "{e}");
            assert_eq!(p.pid(), None, "no child for a task that cannot be sent");
        }
        Ok(()) => {
            assert!(p.join_timeout(STARTUP).unwrap());
            panic!(
                "start() succeeded; the child then exited with {:?} and the \
                 serialization error went only to the child's stderr",
                p.exitcode()
            );
        }
    }
}
