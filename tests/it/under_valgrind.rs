//! A multiproc program runs under valgrind, its children too: users reach
//! for it to find their own bugs. A child once died of SIGSEGV there before
//! its task began (the page size was read through an auxv walk that faults
//! under valgrind), leaving its parent waiting for an item that never came,
//! and a timed wait for a lock crashed the same way.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use multiproc::{Lock, Process, Queue};

use crate::ipc_util::{join_ok, STARTUP};

const INNER: &str = "under_valgrind::a_child_puts_and_a_timed_lock_wait_times_out";

fn put_answer(q: Queue<u64>) {
    q.put(42).unwrap();
}

fn hold_lock((lock, held): (Lock, Queue<u64>)) {
    let _guard = lock.acquire().unwrap();
    held.put(1).unwrap();
    std::thread::sleep(Duration::from_secs(30));
}

/// Runs here as an ordinary test, and under valgrind in the one below.
#[test]
fn a_child_puts_and_a_timed_lock_wait_times_out() {
    let q = Queue::new().unwrap();
    let mut p = Process::new(put_answer, q.clone());
    p.start().unwrap();
    assert_eq!(q.get_timeout(STARTUP * 3).unwrap(), 42, "the child's item never came");
    join_ok(&mut p);
    let lock = Lock::new().unwrap();
    let mut holder = Process::new(hold_lock, (lock.clone(), q.clone()));
    holder.start().unwrap();
    q.get_timeout(STARTUP * 3).expect("the holder never took the lock");
    assert!(lock.acquire_timeout(Duration::from_millis(50)).unwrap().is_none());
    holder.kill().unwrap();
    assert!(holder.join_timeout(STARTUP).unwrap());
}

#[test]
fn a_program_and_its_children_run_under_valgrind() {
    if std::env::var_os("MULTIPROC_UNDER_VALGRIND").is_some() {
        return;
    }
    let found =
        Command::new("valgrind").arg("--version").output().is_ok_and(|o| o.status.success());
    if !found {
        // CI installs it (.ci/run); a developer without it is told, not failed.
        assert!(std::env::var_os("CI").is_none(), "valgrind is not installed (CI needs it)");
        eprintln!("valgrind is not installed: this test checked nothing");
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new("valgrind")
        .args(["--tool=none", "--trace-children=yes", "-q"])
        .arg(exe)
        .args([INNER, "--exact", "--test-threads=1"])
        .env("MULTIPROC_TEST_ALONE", "1")
        .env("MULTIPROC_UNDER_VALGRIND", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "the test under valgrind did not end in 120 s:\n{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "under valgrind ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}
