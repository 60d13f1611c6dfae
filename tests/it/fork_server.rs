//! The fork server: children forked by it are the program's own children
//! (exit codes, signals, identity, handles, death with the parent), the
//! server dies with the program, and a killed server is replaced.

use std::time::{Duration, Instant};

use multiproc::{Pool, Process, Queue};

use crate::support::{
    announce_then_sleep, send_beacon, send_signal, wait_pid_gone, Beacon, PROMPT, STARTUP,
};

/// The fork servers among `parent`'s children (the server names itself
/// `multiproc-fork`; its children take the program's name back).
fn servers_of(parent: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    let mut found = Vec::new();
    for entry in dir.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid != Some(parent) {
            continue;
        }
        if stat.contains("(multiproc-fork)") {
            found.push(pid);
        }
    }
    found
}

/// True when `pid` was forked by a fork server rather than exec'd: its
/// environment block is the server's, which names the server's role.
fn forked(pid: u32) -> bool {
    // Just after the fork the child still bears the server's name.
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
    !stat.contains("(multiproc-fork)")
        && env.split(|&b| b == 0).any(|v| v == b"MULTIPROC_ROLE=zygote")
}

fn server() -> u32 {
    let found = servers_of(std::process::id());
    assert_eq!(found.len(), 1, "one fork server expected, found {found:?}");
    found[0]
}

fn exit_with(code: i32) {
    std::process::exit(code);
}

fn parent_pid_and_forked(_: ()) -> (u32, bool) {
    (std::os::unix::process::parent_id(), forked(std::process::id()))
}

fn name_and_parent(_: ()) -> (String, u32, u32) {
    let me = multiproc::current_process();
    let parent = multiproc::parent_process().expect("a parent");
    assert_eq!(me.pid, std::process::id());
    (me.name, parent.pid, std::os::unix::process::parent_id())
}

fn sleep_forever(_: ()) {
    std::thread::sleep(Duration::from_secs(60));
}

fn run_and_join(p: &mut Process) -> Option<i32> {
    p.start().unwrap();
    assert!(p.join_timeout(STARTUP).unwrap(), "the child did not exit in time");
    p.exitcode()
}

#[test]
fn forked_processes_report_exit_codes_and_signals_to_the_program() {
    if !crate::support::alone() {
        return;
    }
    assert_eq!(run_and_join(&mut Process::new(exit_with, 0)), Some(0));
    // The first start went through a fork server.
    let first = server();
    assert_eq!(run_and_join(&mut Process::new(exit_with, 7)), Some(7));
    assert_eq!(run_and_join(&mut Process::new(exit_with, 121)), Some(121));
    let mut p = Process::new(sleep_forever, ());
    p.set_daemon(true).unwrap();
    p.start().unwrap();
    let pid = p.pid().unwrap();
    assert!(crate::support::eventually(PROMPT, || forked(pid)), "the child was not forked");
    send_signal(pid, libc::SIGTERM);
    assert!(p.join_timeout(STARTUP).unwrap());
    assert_eq!(p.exitcode(), Some(-libc::SIGTERM));
    let mut q = Process::new(sleep_forever, ());
    q.set_daemon(true).unwrap();
    q.start().unwrap();
    q.kill().unwrap();
    assert!(q.join_timeout(STARTUP).unwrap());
    assert_eq!(q.exitcode(), Some(-libc::SIGKILL));
    // One server did all of it.
    assert_eq!(server(), first);
}

#[test]
fn a_forked_worker_is_a_child_of_the_program_with_its_own_identity() {
    if !crate::support::alone() {
        return;
    }
    let pool = Pool::new(2).unwrap();
    let me = std::process::id();
    assert_eq!(pool.apply(parent_pid_and_forked, ()).unwrap(), (me, true));
    let (name, parent, ppid) = pool.apply(name_and_parent, ()).unwrap();
    assert!(name.starts_with("PoolWorker-"), "{name}");
    assert_eq!((parent, ppid), (me, me));
    // The second worker may be just forked and still bear the server's
    // name for a moment (seen under load), so wait for it to take its own.
    assert!(
        crate::support::eventually(PROMPT, || servers_of(me).len() == 1),
        "one fork server expected, found {:?}",
        servers_of(me)
    );
    pool.close();
    pool.join().unwrap();
}

fn put_from_child(q: Queue<String>) {
    let me = std::process::id();
    q.put(format!("hello from {me} {}", forked(me))).unwrap();
}

#[test]
fn handles_travel_to_a_forked_child() {
    if !crate::support::alone() {
        return;
    }
    let q: Queue<String> = Queue::new().unwrap();
    let mut p = Process::new(put_from_child, q.clone());
    p.start().unwrap();
    let pid = p.pid().unwrap();
    let got = q.get_timeout(STARTUP).unwrap();
    assert_eq!(got, format!("hello from {pid} true"));
    assert!(p.join_timeout(STARTUP).unwrap());
    assert_eq!(p.exitcode(), Some(0));
    server();
}

#[test]
fn a_killed_fork_server_is_replaced_and_its_children_live_on() {
    if !crate::support::alone() {
        return;
    }
    let beacon = Beacon::new();
    let mut running = Process::new(announce_then_sleep, beacon.path());
    running.set_daemon(true).unwrap();
    running.start().unwrap();
    let child = beacon.recv_pid(STARTUP, "the sleeper's pid");
    assert!(forked(child));
    let old = server();
    send_signal(old, libc::SIGKILL);
    assert!(wait_pid_gone(old, PROMPT), "the server did not die");
    // Killing the server killed none of its children.
    assert!(running.is_alive());
    assert_eq!(running.pid(), Some(child));
    for round in 0..2 {
        let mut p = Process::new(sleep_forever, ());
        p.set_daemon(true).unwrap();
        p.start().unwrap();
        let pid = p.pid().unwrap();
        assert!(crate::support::eventually(PROMPT, || forked(pid)), "round {round}: not forked");
        p.kill().unwrap();
        assert!(p.join_timeout(STARTUP).unwrap());
        let new = server();
        assert_ne!(new, old);
        if round == 0 {
            // And once more: a server that worked before is replaced again.
            send_signal(new, libc::SIGKILL);
            assert!(wait_pid_gone(new, PROMPT));
        }
    }
    running.kill().unwrap();
    assert!(running.join_timeout(STARTUP).unwrap());
    assert_eq!(running.exitcode(), Some(-libc::SIGKILL));
}

fn report_env_and_dir(beacon: String) {
    let var = std::env::var("MULTIPROC_TEST_MARK").unwrap_or_default();
    let dir = std::env::current_dir().unwrap();
    let forked = forked(std::process::id());
    send_beacon(&beacon, &format!("{forked} {var} {}", dir.display()));
}

#[test]
fn a_child_sees_the_environment_and_directory_of_the_start_not_of_the_server() {
    if !crate::support::alone() {
        return;
    }
    let beacon = Beacon::new();
    assert_eq!(run_and_join(&mut Process::new(exit_with, 0)), Some(0));
    let first = server();
    // SAFETY: this test runs only alone in its process (`alone()` above); the
    // library's own threads read the environment through `std::env` only,
    // which takes the same lock as `set_var`.
    unsafe { std::env::set_var("MULTIPROC_TEST_MARK", "marked") };
    let dir = std::env::temp_dir().canonicalize().unwrap();
    std::env::set_current_dir(&dir).unwrap();
    assert_eq!(run_and_join(&mut Process::new(report_env_and_dir, beacon.path())), Some(0));
    assert_eq!(beacon.recv(STARTUP, "the child's view"), format!("true marked {}", dir.display()));
    // The old server, forked from the old surroundings, was replaced.
    assert_ne!(server(), first);
    assert!(wait_pid_gone(first, PROMPT));
}

/// In a child: starts a grandchild through its own fork server, reports the
/// grandchild's and the server's pids, then sleeps until killed.
fn start_grandchild_and_sleep(beacon: String) {
    let mut grandchild = Process::new(announce_then_sleep, beacon.clone());
    grandchild.set_daemon(true).unwrap();
    grandchild.start().unwrap();
    let servers = servers_of(std::process::id());
    let pid = grandchild.pid().unwrap_or(0);
    let forked = crate::support::eventually(PROMPT, || forked(pid));
    let server = if forked { servers.first().copied().unwrap_or(0) } else { 0 };
    send_beacon(&beacon, &format!("server {server}"));
    std::thread::sleep(Duration::from_secs(60));
}

#[test]
fn forked_children_and_their_server_die_with_a_killed_parent() {
    if !crate::support::alone() {
        return;
    }
    let beacon = Beacon::new();
    let mut parent = Process::new(start_grandchild_and_sleep, beacon.path());
    parent.set_daemon(true).unwrap();
    parent.start().unwrap();
    let mut grandchild = 0;
    let mut server = 0;
    for _ in 0..2 {
        let msg = beacon.recv(STARTUP, "the grandchild's or the server's pid");
        match msg.strip_prefix("server ") {
            Some(s) => server = s.parse().unwrap(),
            None => grandchild = msg.parse().unwrap(),
        }
    }
    assert!(server != 0 && grandchild != 0, "server {server}, grandchild {grandchild}");
    let stat = std::fs::read_to_string(format!("/proc/{grandchild}/stat")).unwrap();
    let ppid: u32 =
        stat.rsplit_once(')').unwrap().1.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert_eq!(ppid, parent.pid().unwrap(), "the grandchild is its parent's child");
    parent.kill().unwrap();
    assert!(wait_pid_gone(grandchild, PROMPT), "the grandchild outlived its parent");
    assert!(wait_pid_gone(server, PROMPT), "the fork server outlived its parent");
    assert!(parent.join_timeout(STARTUP).unwrap());
}

#[test]
fn many_forked_processes_start_and_exit() {
    if !crate::support::alone() {
        return;
    }
    let mut procs: Vec<Process> = (0..200).map(|i| Process::new(exit_with, i % 50)).collect();
    for p in &mut procs {
        p.start().unwrap();
    }
    for (i, p) in procs.iter_mut().enumerate() {
        assert!(p.join_timeout(STARTUP).unwrap());
        assert_eq!(p.exitcode(), Some((i % 50) as i32));
    }
    assert_eq!(servers_of(std::process::id()).len(), 1);
}

fn report_loader_env(beacon: String) {
    let get = |v: &str| std::env::var(v).unwrap_or_else(|_| "-".into());
    let forked = forked(std::process::id());
    send_beacon(&beacon, &format!("{forked} {} {}", get("LD_BIND_NOW"), get("MULTIPROC_BIND_NOW")));
}

/// The server binds the loader's symbols at its start (`LD_BIND_NOW`, so
/// its children need not): a child never sees that setting unless the
/// program has it itself, and then sees the program's value.
#[test]
fn a_child_sees_the_loader_setting_of_the_program_not_of_the_server() {
    if !crate::support::alone() {
        return;
    }
    let beacon = Beacon::new();
    assert_eq!(run_and_join(&mut Process::new(report_loader_env, beacon.path())), Some(0));
    assert_eq!(beacon.recv(STARTUP, "the child's view"), "true - -");
    let server_env = std::fs::read(format!("/proc/{}/environ", server())).unwrap();
    assert!(
        server_env.split(|&b| b == 0).any(|v| v == b"LD_BIND_NOW=1"),
        "the server was started without LD_BIND_NOW"
    );
    // SAFETY: this test runs only alone in its process (`alone()` above); the
    // library's own threads read the environment through `std::env` only,
    // which takes the same lock as `set_var`.
    unsafe { std::env::set_var("LD_BIND_NOW", "") };
    assert_eq!(run_and_join(&mut Process::new(report_loader_env, beacon.path())), Some(0));
    assert_eq!(beacon.recv(STARTUP, "the child's view"), "true  -");
}

/// A fork server that stops answering (here: stopped with SIGSTOP) holds up
/// only the start that met it, for the reply's bound, after which the server
/// is replaced; a start from another thread meanwhile does not wait for it
/// but execs its child at once.
#[test]
fn a_stopped_fork_server_holds_up_only_the_start_that_met_it() {
    if !crate::support::alone() {
        return;
    }
    let mut warm = Process::new(exit_with, 0);
    assert_eq!(run_and_join(&mut warm), Some(0));
    let stopped = server();
    send_signal(stopped, libc::SIGSTOP);
    let going = std::sync::Arc::new(std::sync::Barrier::new(2));
    let go = going.clone();
    let first = std::thread::spawn(move || {
        go.wait();
        let t = Instant::now();
        let mut p = Process::new(exit_with, 0);
        p.set_daemon(true).unwrap();
        p.start().unwrap();
        (p, t.elapsed())
    });
    // Let the first start send its request and wait for the reply.
    going.wait();
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    let mut second = Process::new(exit_with, 3);
    second.start().unwrap();
    let took = t.elapsed();
    assert!(took < PROMPT, "a start behind a stopped server waited {took:?}");
    assert!(!forked(second.pid().unwrap()), "the start behind a stopped server was not exec'd");
    assert!(second.join_timeout(STARTUP).unwrap());
    assert_eq!(second.exitcode(), Some(3));
    // The first start waits out the reply's bound, then the server is
    // replaced and its child forked by the new one.
    let (mut p, waited) = crate::support::bounded(
        Duration::from_secs(10) + STARTUP,
        "the start that met the stopped server",
        move || first.join().unwrap(),
    );
    assert!(waited >= Duration::from_secs(9), "the first start waited only {waited:?}");
    assert!(p.join_timeout(STARTUP).unwrap());
    assert_eq!(p.exitcode(), Some(0));
    assert!(wait_pid_gone(stopped, PROMPT), "the stopped server was not stopped for good");
    assert_ne!(server(), stopped);
}

/// Set in the copy of this test binary that `forked_children_flush_*`
/// runs: there the test acts as the program whose output is read.
const LEAN_EXIT_ROLE: &str = "MULTIPROC_TEST_LEAN_EXIT";

fn print_unterminated(fill_first: bool) {
    if fill_first {
        // Fill the pipe the program's reader is not reading: every later
        // write to standard output blocks until it reads.
        // The pipe is shared with the program (one open file), so it is
        // non-blocking only while it is filled.
        use rustix::fs::{fcntl_getfl, fcntl_setfl, OFlags};
        let out = rustix::stdio::stdout();
        let flags = fcntl_getfl(out).unwrap();
        fcntl_setfl(out, flags | OFlags::NONBLOCK).unwrap();
        while rustix::io::write(out, &[b'.'; 4096]).is_ok() {}
        fcntl_setfl(out, flags).unwrap();
    }
    // No newline: both stay in their buffers until the exit flushes them.
    print!("rust-part");
    // SAFETY: a C string literal, no format directives.
    unsafe { libc::printf(c"|c-part".as_ptr()) };
}

/// The program side, run in a copy of this binary: starts the child, joins
/// it, and says on standard error how long the join took.
fn lean_exit_program(fill_first: bool) {
    let mut p = Process::new(print_unterminated, fill_first);
    let t = Instant::now();
    p.start().unwrap();
    assert!(p.join_timeout(STARTUP).unwrap(), "the child did not exit");
    eprintln!("joined in {} ms, exit code {:?}", t.elapsed().as_millis(), p.exitcode());
}

/// Runs `test` in a copy of this binary as the program (which starts every
/// child by exec where `by_exec`), its standard output a pipe read only
/// once its standard error says the join is over.
fn run_lean_exit_program(test: &str, by_exec: bool) -> (String, String) {
    use std::io::{BufRead, Read};
    let exe = std::env::current_exe().unwrap();
    let mut program = std::process::Command::new(exe);
    if by_exec {
        program.env("MULTIPROC_START", "exec");
    }
    let mut child = program
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(LEAN_EXIT_ROLE, "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut report = String::new();
    let mut line = String::new();
    while stderr.read_line(&mut line).unwrap() > 0 {
        if line.starts_with("joined in") {
            report = line.clone();
            break;
        }
        line.clear();
    }
    let mut out = String::new();
    child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    let mut rest = String::new();
    stderr.read_to_string(&mut rest).unwrap();
    assert!(child.wait().unwrap().success(), "the program failed: {report}{rest}");
    (report, out)
}

fn join_ms(report: &str) -> u128 {
    report
        .strip_prefix("joined in ")
        .and_then(|r| r.split(' ').next())
        .and_then(|ms| ms.parse().ok())
        .unwrap_or_else(|| panic!("no join time in {report:?}"))
}

/// A forked child ends without the C library's exit (the fork server's
/// exit handlers are not its own), but what it printed still comes out:
/// Rust's buffered standard output and C's stdio, neither ending in a newline.
#[test]
fn forked_children_flush_their_rust_and_c_output_at_exit() {
    if std::env::var_os(LEAN_EXIT_ROLE).is_some() {
        return lean_exit_program(false);
    }
    let (report, out) = run_lean_exit_program(
        "fork_server::forked_children_flush_their_rust_and_c_output_at_exit",
        false,
    );
    assert!(report.contains("exit code Some(0)"), "{report}");
    assert!(out.contains("rust-part|c-part"), "the child's output was lost: {out:?}");
}

/// A child whose exit flush cannot finish (its standard output is a full
/// pipe nobody reads) still exits, with its own code, within the flush's
/// bound (2 s) rather than never.
#[test]
fn forked_children_exit_in_bounded_time_when_their_output_is_stuck() {
    stuck_exit_is_bounded(
        "fork_server::forked_children_exit_in_bounded_time_when_their_output_is_stuck",
        false,
    );
}

/// The same for a child started by exec, whose exit is the usual one (its
/// own exit handlers run): it is bounded alike.
#[test]
fn execd_children_exit_in_bounded_time_when_their_output_is_stuck() {
    stuck_exit_is_bounded(
        "fork_server::execd_children_exit_in_bounded_time_when_their_output_is_stuck",
        true,
    );
}

/// The body of the two tests above: `test` is the test's own name, run
/// again as the program whose child gets stuck.
fn stuck_exit_is_bounded(test: &str, by_exec: bool) {
    if std::env::var_os(LEAN_EXIT_ROLE).is_some() {
        return lean_exit_program(true);
    }
    let (report, out) = run_lean_exit_program(test, by_exec);
    assert!(report.contains("exit code Some(0)"), "{report}");
    let ms = join_ms(&report);
    assert!((1500..8000).contains(&ms), "the stuck child took {ms} ms to exit");
    // The pipe's fill arrived; the words buffered behind it were dropped.
    assert!(out.contains("...."), "the fill is missing: {:?}", &out[..out.len().min(80)]);
    assert!(!out.contains("rust-part"), "a flush that never finished wrote its words");
}

/// Set in a copy of this binary that starts every child by exec.
const EXEC_ROLE: &str = "MULTIPROC_TEST_NAMES_BY_EXEC";

/// What `ps` names process `pid` (`None` once it is gone).
fn comm_of(pid: u32) -> Option<String> {
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    Some(comm.trim_end().to_string())
}

fn own_comm(_: ()) -> (String, bool) {
    (comm_of(std::process::id()).unwrap(), forked(std::process::id()))
}

/// Children show in `ps`, `top` and `pgrep` under the program's name, as
/// Python's do, whether forked or exec'd, a `Process` or a pool worker; not
/// as `exe`, the name of the path they are started by (`/proc/self/exe`).
#[test]
fn children_bear_the_program_name() {
    let by_exec = std::env::var_os(EXEC_ROLE).is_some();
    if !by_exec {
        crate::support::rerun_with(&[(EXEC_ROLE, "1"), ("MULTIPROC_START", "exec")]);
    }
    let program = comm_of(std::process::id()).unwrap();
    assert_ne!(program, "exe", "the test binary itself is named exe");

    let pool = Pool::new(1).unwrap();
    let (worker, worker_forked) = pool.apply(own_comm, ()).unwrap();
    assert_eq!(worker, program, "a pool worker's name");
    assert_eq!(worker_forked, !by_exec, "how the worker was started");

    let mut p = Process::new(sleep_forever, ());
    p.start().unwrap();
    let pid = p.pid().unwrap();
    // Just after its start a child bears its starter's name (the fork
    // server's, or the path's) for a moment.
    let end = Instant::now() + STARTUP;
    let mut seen = comm_of(pid);
    while seen.as_deref() != Some(program.as_str()) && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(5));
        seen = comm_of(pid);
    }
    p.kill().unwrap();
    p.join().unwrap();
    assert_eq!(seen.as_deref(), Some(program.as_str()), "a process's name");
}
