//! Who can make a program a worker, and what a worker starts with.
//!
//! These run this test binary itself with a worker's environment, the way an
//! attacker (or a stray variable) would, and check that it runs `main` instead
//! of serving frames; and check that real workers see what a Rust `main`
//! sees: SIGPIPE ignored, no descriptors leaked from the parent.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use multiproc::{Pool, Process};

use crate::support::{bounded, TempDir};

const BOUND: Duration = Duration::from_secs(20);

/// Runs this test binary with `--list` (libtest prints the tests and exits 0
/// from `main`), under a worker's environment, with `stdin` as standard input.
fn run_listing(stdin: Stdio) -> Output {
    let exe = std::env::current_exe().unwrap();
    let child = Command::new(exe)
        .arg("--list")
        .env("MULTIPROC_ROLE", "pool")
        .env("MULTIPROC_NAME", "PoolWorker-forged")
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    bounded(BOUND, "the program under a forged worker environment", move || {
        child.wait_with_output().unwrap()
    })
}

fn ran_main(out: &Output) -> bool {
    out.status.code() == Some(0)
        && String::from_utf8_lossy(&out.stdout).contains("worker_trust::")
        && String::from_utf8_lossy(&out.stderr).contains("ignoring MULTIPROC_ROLE")
}

fn describe(out: &Output) -> String {
    format!(
        "status {:?}, stdout {} bytes, stderr: {}",
        out.status,
        out.stdout.len(),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn stray_role_in_an_ordinary_environment_is_ignored_with_a_warning() {
    if !crate::support::alone() {
        return;
    }
    let out = run_listing(Stdio::null());
    assert!(ran_main(&out), "expected main to run with a warning: {}", describe(&out));
}

#[test]
fn a_socket_made_by_a_process_that_is_not_the_parent_does_not_divert() {
    if !crate::support::alone() {
        return;
    }
    // The socket pair is made here, but the program's parent is a shell: the
    // kernel's record of the socket's maker names another live process.
    let (ours, theirs) = UnixStream::pair().unwrap();
    let exe = std::env::current_exe().unwrap();
    let child = Command::new("sh")
        .arg("-c")
        .arg("\"$0\" --list; exit $?")
        .arg(exe)
        .env("MULTIPROC_ROLE", "pool")
        .stdin(Stdio::from(OwnedFd::from(theirs)))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out =
        bounded(BOUND, "the program started by a shell", move || child.wait_with_output().unwrap());
    drop(ours);
    assert!(ran_main(&out), "expected main to run with a warning: {}", describe(&out));
}

/// A peer that is the real parent but does not know the build's fingerprint
/// gets an empty refusal (nothing to learn from) and the worker exits 121.
#[test]
fn a_worker_refusing_a_wrong_fingerprint_reveals_nothing() {
    if !crate::support::alone() {
        return;
    }
    let (mut ours, theirs) = UnixStream::pair().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new(exe)
        .env("MULTIPROC_ROLE", "pool")
        .stdin(Stdio::from(OwnedFd::from(theirs)))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // INIT: [len u32][kind 1][no fds][fingerprint 16][no initializer 1][offset 8]
    let mut frame = vec![];
    frame.extend_from_slice(&25u32.to_le_bytes());
    frame.extend_from_slice(&[1, 0]);
    frame.extend_from_slice(&[0x41; 16]);
    frame.extend_from_slice(&[0; 9]);
    ours.write_all(&frame).unwrap();
    ours.set_read_timeout(Some(BOUND)).unwrap();
    let mut reply = Vec::new();
    ours.read_to_end(&mut reply).unwrap();
    let status = bounded(BOUND, "the refusing worker's exit", move || child.wait().unwrap());
    assert_eq!(status.code(), Some(121), "{status:?}");
    // MISMATCH (kind 11) with an empty body, and nothing else.
    assert_eq!(reply, [0, 0, 0, 0, 11, 0], "the refusal carried bytes");
}

/// The attack in full: an unprivileged user makes the socket pair and starts
/// a setuid-root copy of a multiproc program as its child. The program must
/// run its `main`, not serve the user's frames. Needs root to make the copy.
#[test]
fn a_setuid_program_never_becomes_a_worker() {
    if !crate::support::alone() {
        return;
    }
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 || Command::new("python3").arg("-V").output().is_err() {
        eprintln!("skipped: needs root (to make a setuid copy) and python3");
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let dir = TempDir::new();
    std::fs::set_permissions(dir.file(""), std::fs::Permissions::from_mode(0o755)).unwrap();
    let copy = dir.file("setuid-copy");
    std::fs::copy(std::env::current_exe().unwrap(), &copy).unwrap();
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o4755)).unwrap();
    // The attacker: makes the pair, sets the environment (including the
    // variable older versions trusted), and hands the socket to the copy.
    let attacker = r#"
import os, socket, subprocess, sys
mine, theirs = socket.socketpair()
env = {"MULTIPROC_ROLE": "pool", "MULTIPROC_PARENT": str(os.getpid())}
p = subprocess.Popen([sys.argv[1], "--list"], stdin=theirs, env=env,
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
theirs.close()
out, err = p.communicate(timeout=15)
sys.stdout.write("code=%d\n" % p.returncode)
sys.stdout.write(out.decode(errors="replace"))
sys.stderr.write(err.decode(errors="replace"))
"#;
    let child = Command::new("python3")
        .arg("-c")
        .arg(attacker)
        .arg(&copy)
        .uid(65534)
        .gid(65534)
        .current_dir("/")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = bounded(BOUND, "the setuid copy", move || child.wait_with_output().unwrap());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stdout.starts_with("code=0\n") && stdout.contains("worker_trust::"),
        "the setuid copy did not run main: {stdout} / {stderr}"
    );
    assert!(stderr.contains("privileged program never becomes a worker"), "{stderr}");
}

// --- what a real worker starts with ------------------------------------------

/// The descriptors open in this process, as `fd -> target` lines.
fn open_descriptors(_: ()) -> Vec<String> {
    let mut out = vec![];
    for entry in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        if let Ok(target) = std::fs::read_link(entry.path()) {
            out.push(format!("{} -> {}", entry.file_name().to_string_lossy(), target.display()));
        }
    }
    out
}

/// A file opened without close-on-exec, as C libraries and careless code do.
fn leaky_file(dir: &TempDir) -> (std::fs::File, String) {
    let path = dir.file("leaky-descriptor");
    std::fs::write(&path, b"secret").unwrap();
    let f = std::fs::File::open(&path).unwrap();
    // SAFETY: clears FD_CLOEXEC on a descriptor this function owns.
    assert_eq!(unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETFD, 0) }, 0);
    (f, path)
}

#[test]
fn workers_do_not_inherit_descriptors_the_parent_leaked() {
    if !crate::support::alone() {
        return;
    }
    let dir = TempDir::new();
    let (_leak, path) = leaky_file(&dir);
    let pool = Pool::new(1).unwrap();
    let fds = pool.apply(open_descriptors, ()).unwrap();
    assert!(!fds.iter().any(|l| l.contains(&path)), "a worker inherited {path}: {fds:?}");
    // The standard streams, the channel, and its results ring with the
    // ring's doorbell (plus the listing's own descriptor): nothing else.
    let ours = |l: &String| {
        l.contains("/memfd:multiproc-results") || l.contains("[eventfd]") || l.contains("/proc/")
    };
    let rest: Vec<_> = fds.iter().filter(|l| !ours(l)).collect();
    assert!(rest.len() <= 4, "a worker holds more than its channel and ring: {fds:?}");
    assert!(fds.iter().filter(|l| ours(l)).count() <= 3, "{fds:?}");
}

fn exit_unless_only_standard_streams_and_channel(_: ()) {
    let fds = open_descriptors(());
    if fds.iter().any(|l| l.contains("leaky-descriptor")) {
        std::process::exit(9);
    }
}

#[test]
fn processes_do_not_inherit_descriptors_the_parent_leaked() {
    if !crate::support::alone() {
        return;
    }
    let dir = TempDir::new();
    let (_leak, _path) = leaky_file(&dir);
    let mut p = Process::new(exit_unless_only_standard_streams_and_channel, ());
    p.start().unwrap();
    assert!(p.join_timeout(BOUND).unwrap());
    assert_eq!(p.exitcode(), Some(0), "the process inherited the leaked descriptor");
}

/// Writes to a pipe whose reader is gone, as a Rust `main` would.
fn write_to_a_closed_pipe(_: ()) -> String {
    let mut fds = [0; 2];
    // SAFETY: pipe writes two new descriptors into `fds`.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: closes the read end, which this function owns.
    unsafe { libc::close(fds[0]) };
    // SAFETY: a one-byte write from a live buffer to the write end we own.
    let n = unsafe { libc::write(fds[1], b"x".as_ptr().cast(), 1) };
    let err = std::io::Error::last_os_error();
    // SAFETY: closes the write end, which this function owns.
    unsafe { libc::close(fds[1]) };
    assert_eq!(n, -1);
    format!("{:?}", err.kind())
}

#[test]
fn sigpipe_is_ignored_in_workers_as_in_main() {
    if !crate::support::alone() {
        return;
    }
    let pool = Pool::new(1).unwrap();
    let r = pool.apply(write_to_a_closed_pipe, ());
    assert_eq!(r.unwrap(), "BrokenPipe");
    // Same as in this process, which is a normal Rust program.
    assert_eq!(write_to_a_closed_pipe(()), "BrokenPipe");
}

fn write_to_a_closed_pipe_in_process(_: ()) {
    write_to_a_closed_pipe(());
}

#[test]
fn sigpipe_does_not_kill_a_process() {
    if !crate::support::alone() {
        return;
    }
    let mut p = Process::new(write_to_a_closed_pipe_in_process, ());
    p.start().unwrap();
    assert!(p.join_timeout(BOUND).unwrap());
    let code = p.exitcode();
    assert_eq!(code, Some(0), "killed by signal {:?}", code.map(|c| -c));
}
