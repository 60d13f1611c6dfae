//! `pipe` and `Connection` as CPython's `_TestConnection` and `_TestPoll` pin
//! them down (echo through a child, send/recv and send_bytes/recv_bytes, poll
//! with timeouts, one-way ends, EOF, descriptors in messages, messages that do
//! not merge), and what this crate adds: end of file once every copy of the
//! other end is closed in every process, a writer killed mid-message yields
//! an error rather than a hang or garbage, 64 MiB messages in both directions
//! at once, and `Fd` handing sockets and files to processes and pool tasks.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use multiproc::{
    pipe, pipe_one_way, Connection, ErrorKind, Event, Fd, Pool, Process, Queue, Receiver, Sender,
};
use serde::{Deserialize, Serialize, Serializer};

use crate::ipc_util::{
    assert_prompt, assert_waited, bounded, gettid, join_ok, send_signal, start_daemon, timed,
    wait_child_blocked_in, wait_thread_blocked_in, TempDir, POLL, PROMPT, RECV, STARTUP,
};

const STOP: &[u8] = b"STOP";
const MIB: usize = 1 << 20;

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(13).wrapping_add(seed)).collect()
}

#[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
enum Msg {
    Seq(Vec<Option<f64>>),
    Text(String),
    Nothing,
}

// --- children ---------------------------------------------------------------

/// CPython's `_echo`: sends back every message until `STOP`.
fn echo<T>(conn: Connection<T>) {
    loop {
        let m = conn.recv_bytes().unwrap();
        if m == STOP {
            return;
        }
        conn.send_bytes(&m).unwrap();
    }
}

fn send_then_wait(tx: Sender<String>, release: Event) {
    tx.send(&"hello".to_string()).unwrap();
    release.wait();
    tx.send(&"bye".to_string()).unwrap();
}

/// Sends 64 MiB through the socket itself, so that a kill can stop it
/// mid-message: a message this large would travel in a shared-memory file
/// (which arrives whole or not at all), but this process can open no more
/// descriptors, and so cannot make one.
fn send_huge(tx: Sender<Vec<u8>>) {
    forbid_new_descriptors();
    tx.send_bytes(&vec![0xAB; 64 * MIB]).unwrap();
}

/// Lowers this process's descriptor limit to the descriptors it has open.
fn forbid_new_descriptors() {
    // SAFETY: dup of stdin returns the lowest free descriptor number, which
    // we close at once; every number below it is in use.
    let lowest_free = unsafe { libc::dup(0) };
    assert!(lowest_free >= 0);
    // SAFETY: closing the descriptor dup just made.
    unsafe { libc::close(lowest_free) };
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit read or fill a live rlimit.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        lim.rlim_cur = lowest_free as libc::rlim_t;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
    }
}

/// Sums what arrives until end of file, then sends the sum back.
fn sum_until_closed(rx: Receiver<u32>, back: Sender<u32>) {
    let mut sum = 0;
    loop {
        match rx.recv() {
            Ok(n) => sum += n,
            Err(e) if e.kind() == ErrorKind::Closed => break,
            Err(e) => panic!("{e}"),
        }
    }
    back.send(&sum).unwrap();
}

/// Receives a pair of one-way ends, then forwards one value through them,
/// plus one.
fn forward_once(control: Connection<(Receiver<u32>, Sender<u32>)>) {
    let (rx, tx) = control.recv().unwrap();
    tx.send(&(rx.recv().unwrap() + 1)).unwrap();
}

fn send_strings(tx: Connection<Vec<u8>>, strings: Vec<Vec<u8>>) {
    for s in strings {
        tx.send_bytes(&s).unwrap();
    }
}

/// Sends 64 MiB and receives 64 MiB at the same time as the parent does the
/// same; exits 0 if what arrived is what the parent sent.
fn swap_64_mib(conn: Connection<Vec<u8>>) {
    conn.send_bytes(&pattern(64 * MIB, 2)).unwrap();
    let got = conn.recv_bytes().unwrap();
    if got != pattern(64 * MIB, 1) {
        std::process::exit(3);
    }
}

fn typed_echo(conn: Connection<Vec<u8>>) {
    let v = conn.recv().unwrap();
    conn.send(&v).unwrap();
}

// --- CPython's _TestConnection ----------------------------------------------

/// CPython's `test_connection`: objects and bytes echo through a child; poll
/// is false at once or after its timeout while nothing is there and true as
/// soon as something is; 16 MiB echo; after the child stops, EOF.
#[test]
fn messages_echo_through_a_child() {
    if !crate::support::alone() {
        return;
    }
    let (conn, child_conn) = pipe::<Msg>().unwrap();
    let mut p = start_daemon(Process::new(echo::<Msg>, child_conn));

    let seq = Msg::Seq(vec![Some(1.0), Some(2.25), None]);
    conn.send(&seq).unwrap();
    assert_eq!(conn.recv().unwrap(), seq);
    let text = Msg::Text("hello world".repeat(10));
    conn.send(&text).unwrap();
    assert_eq!(conn.recv_timeout(STARTUP).unwrap(), text);
    conn.send_bytes(b"hello world").unwrap();
    assert_eq!(conn.recv_bytes().unwrap(), b"hello world");
    // A message sent with `send` read with `recv_bytes` is its encoding,
    // and bytes sent back are read by `recv` as the value.
    conn.send(&Msg::Nothing).unwrap();
    let encoded = conn.recv_bytes().unwrap();
    conn.send_bytes(&encoded).unwrap();
    assert_eq!(conn.recv().unwrap(), Msg::Nothing);

    let (r, took) = timed(|| conn.poll(Some(Duration::ZERO)));
    assert!(!r.unwrap());
    assert_prompt(took, "poll(0) with nothing to read");
    let (r, took) = timed(|| conn.poll(Some(Duration::from_millis(100))));
    assert!(!r.unwrap());
    assert_waited(took, Duration::from_millis(100), "poll(100 ms) with nothing to read");

    conn.send(&Msg::Nothing).unwrap();
    let (r, took) = timed(|| conn.poll(Some(STARTUP)));
    assert!(r.unwrap());
    assert!(took < PROMPT, "poll took {took:?} to see the echo");
    assert!(conn.poll(Some(Duration::ZERO)).unwrap(), "poll consumes nothing");
    assert_eq!(conn.recv().unwrap(), Msg::Nothing);

    let big = pattern(16 * MIB, 7);
    conn.send_bytes(&big).unwrap();
    assert!(conn.recv_bytes().unwrap() == big, "16 MiB came back changed");

    conn.send_bytes(STOP).unwrap();
    let e = bounded(STARTUP, "recv after the child stopped", move || {
        let first = conn.recv().unwrap_err();
        let second = conn.recv_bytes().unwrap_err();
        (first.kind(), second.kind())
    });
    assert_eq!(e, (ErrorKind::Closed, ErrorKind::Closed));
    join_ok(&mut p);
}

/// A one-way pipe's ends work across real processes in both roles: a child
/// given the `Receiver` reads what the parent sends and answers through a
/// second pipe's `Sender`; both kinds of end travel inside messages too;
/// end of file reaches the child once the parent's sender is gone.
#[test]
fn one_way_ends_work_across_processes() {
    if !crate::support::alone() {
        return;
    }
    let (rx, tx) = pipe_one_way::<u32>().unwrap();
    let (back_rx, back_tx) = pipe_one_way::<u32>().unwrap();
    let mut p = start_daemon(Process::new(sum_until_closed, (rx, back_tx)));
    for i in 1..=10 {
        tx.send(&i).unwrap();
    }
    drop(tx);
    let sum = bounded(STARTUP, "the child's sum", move || back_rx.recv_timeout(STARTUP));
    assert_eq!(sum.unwrap(), 55);
    join_ok(&mut p);

    // Ends inside a message: the child gets a receiver and a sender through
    // a duplex control pipe and uses each the way its type allows.
    let (control, child_control) = pipe::<(Receiver<u32>, Sender<u32>)>().unwrap();
    let mut p = start_daemon(Process::new(forward_once, child_control));
    let (in_rx, in_tx) = pipe_one_way::<u32>().unwrap();
    let (out_rx, out_tx) = pipe_one_way::<u32>().unwrap();
    control.send(&(in_rx, out_tx)).unwrap();
    in_tx.send(&41).unwrap();
    assert_eq!(out_rx.recv_timeout(STARTUP).unwrap(), 42);
    join_ok(&mut p);
    // The child's copy of the sender went with it, and ours went to it.
    assert_eq!(out_rx.recv_timeout(STARTUP).unwrap_err().kind(), ErrorKind::Closed);
    assert!(format!("{out_rx:?}").starts_with("Receiver("), "{out_rx:?}");
    assert!(out_rx.as_fd().as_raw_fd() >= 0);
}

/// CPython's `test_context` and EOF: a dropped (or closed) end means EOF for
/// the other, every time, and a send to it is `Closed` (no SIGPIPE).
#[test]
fn the_other_end_dropped_means_closed_both_ways() {
    if !crate::support::alone() {
        return;
    }
    let (a, b) = pipe::<u32>().unwrap();
    b.send(&1729).unwrap();
    b.close();
    assert_eq!(a.recv().unwrap(), 1729, "a message sent before close still arrives");
    assert!(a.poll(Some(Duration::ZERO)).unwrap(), "end of file counts as ready");
    for _ in 0..3 {
        assert_eq!(a.recv().unwrap_err().kind(), ErrorKind::Closed);
    }
    assert_eq!(a.recv_bytes().unwrap_err().kind(), ErrorKind::Closed);
    assert_eq!(a.recv_timeout(Duration::from_millis(10)).unwrap_err().kind(), ErrorKind::Closed);
    assert_eq!(a.send(&1).unwrap_err().kind(), ErrorKind::Closed);
    assert_eq!(a.send_bytes(&[0; 1 << 20]).unwrap_err().kind(), ErrorKind::Closed);
}

/// `recv` reports `Closed` only once every copy of the other end is closed in
/// every process: not while an unstarted `Process` holds one for its child,
/// not while the child runs, and at once when the child exits.
#[test]
fn closed_only_once_every_copy_in_every_process_is_gone() {
    if !crate::support::alone() {
        return;
    }
    let (rx, tx) = pipe_one_way::<String>().unwrap();
    let release = Event::new().unwrap();
    let mut p = Process::new(send_then_wait, (tx, release.clone()));
    p.set_daemon(true).unwrap();
    // The unstarted process holds a copy of the writer for its child.
    let e = rx.recv_timeout(Duration::from_millis(100)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
    p.start().unwrap();
    assert_eq!(rx.recv_timeout(STARTUP).unwrap(), "hello");
    // The child holds the writer and is alive.
    let (r, took) = timed(|| rx.recv_timeout(Duration::from_millis(200)));
    assert_eq!(r.unwrap_err().kind(), ErrorKind::Timeout);
    assert_waited(took, Duration::from_millis(200), "recv_timeout while the child is alive");
    release.set();
    assert_eq!(rx.recv_timeout(STARTUP).unwrap(), "bye");
    let r = bounded(STARTUP, "recv after the child exited", move || rx.recv());
    assert_eq!(r.unwrap_err().kind(), ErrorKind::Closed);
    join_ok(&mut p);
}

/// A connection handed to a pool task is closed in the worker when the task
/// returns: the parent reads what it sent, then EOF.
#[test]
fn a_connection_given_to_a_pool_task_is_closed_when_it_returns() {
    if !crate::support::alone() {
        return;
    }
    fn send_three(tx: Sender<u32>) -> u32 {
        for i in 0..3 {
            tx.send(&i).unwrap();
        }
        std::process::id()
    }
    let pool = Pool::new(2).unwrap();
    let (rx, tx) = pipe_one_way::<u32>().unwrap();
    let worker = pool.apply(send_three, tx).unwrap();
    assert_ne!(worker, std::process::id());
    let got = bounded(STARTUP, "reading from the task", move || {
        let got: Vec<u32> = (0..3).map(|_| rx.recv().unwrap()).collect();
        (got, rx.recv().unwrap_err().kind())
    });
    assert_eq!(got, (vec![0, 1, 2], ErrorKind::Closed));
}

// --- writers that die ---------------------------------------------------------

/// A child killed while it is sending a 64 MiB message: the reader gets a
/// `Protocol` error (part of a message, then end of file), promptly, not a
/// hang and not a truncated value.
#[test]
fn a_writer_killed_mid_message_is_a_protocol_error() {
    if !crate::support::alone() {
        return;
    }
    let (rx, tx) = pipe_one_way::<Vec<u8>>().unwrap();
    let mut p = start_daemon(Process::new(send_huge, tx));
    // The first bytes are here; the rest cannot be, as nobody reads them.
    assert!(rx.poll(Some(STARTUP)).unwrap(), "the child never started sending");
    assert!(
        wait_child_blocked_in(p.pid().unwrap(), POLL),
        "the child is not waiting to send the rest of its message"
    );
    p.kill().unwrap();
    assert!(p.join_timeout(PROMPT).unwrap());
    assert_eq!(p.exitcode(), Some(-libc::SIGKILL));
    let (r, took) = bounded(STARTUP, "recv after the writer died", move || {
        timed(|| rx.recv_bytes().map(|v| v.len()))
    });
    assert_eq!(r.unwrap_err().kind(), ErrorKind::Protocol);
    assert!(took < PROMPT, "the error took {took:?}");
}

/// The same with the reader already blocked in `recv`, having drained all
/// the writer managed to send, when the writer (stopped, then) is killed.
#[test]
fn a_reader_blocked_in_recv_gets_an_error_when_the_writer_dies() {
    if !crate::support::alone() {
        return;
    }
    let (rx, tx) = pipe_one_way::<Vec<u8>>().unwrap();
    let mut p = start_daemon(Process::new(send_huge, tx));
    assert!(rx.poll(Some(STARTUP)).unwrap(), "the child never started sending");
    let pid = p.pid().unwrap();
    send_signal(pid, libc::SIGSTOP); // it sends nothing more
    let (tid_tx, tid_rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        tid_tx.send(gettid()).unwrap();
        let r = rx.recv_bytes().map(|v| v.len()).map_err(|e| e.kind());
        (r, Instant::now())
    });
    let tid = tid_rx.recv().unwrap();
    assert!(wait_thread_blocked_in(tid, RECV), "the reader never blocked in recv");
    let killed = Instant::now();
    p.kill().unwrap();
    let (r, returned) =
        bounded(STARTUP, "recv while the writer dies", move || reader.join().unwrap());
    assert_eq!(r, Err(ErrorKind::Protocol));
    assert!(returned.duration_since(killed) < PROMPT);
    assert!(p.join_timeout(PROMPT).unwrap());
}

// --- large messages -----------------------------------------------------------

/// 64 MiB through `send_bytes` and back, and 64 MiB as a typed `Vec<u8>`
/// through `send` and back.
#[test]
fn sixty_four_mib_messages_round_trip() {
    if !crate::support::alone() {
        return;
    }
    let (conn, child_conn) = pipe::<Vec<u8>>().unwrap();
    let mut p = start_daemon(Process::new(echo::<Vec<u8>>, child_conn));
    let big = pattern(64 * MIB, 3);
    let (_, took) = timed(|| {
        conn.send_bytes(&big).unwrap();
        let back = conn.recv_bytes().unwrap();
        assert_eq!(back.len(), big.len());
        assert!(back == big, "64 MiB came back changed");
    });
    eprintln!("64 MiB send_bytes round trip: {took:?}");
    conn.send_bytes(STOP).unwrap();
    join_ok(&mut p);

    let (conn, child_conn) = pipe::<Vec<u8>>().unwrap();
    let mut p = start_daemon(Process::new(typed_echo, child_conn));
    let (_, took) = timed(|| {
        conn.send(&big).unwrap();
        assert!(conn.recv_timeout(STARTUP).unwrap() == big, "64 MiB came back changed");
    });
    eprintln!("64 MiB typed round trip: {took:?}");
    join_ok(&mut p);
}

/// Both ends send 64 MiB at the same time, then read: neither blocks the
/// other forever (each keeps reading while it writes).
#[test]
fn sixty_four_mib_both_ways_at_once_does_not_deadlock() {
    if !crate::support::alone() {
        return;
    }
    let (conn, child_conn) = pipe::<Vec<u8>>().unwrap();
    let mut p = start_daemon(Process::new(swap_64_mib, child_conn));
    let got = bounded(Duration::from_secs(20), "the swap", move || {
        conn.send_bytes(&pattern(64 * MIB, 1)).unwrap();
        conn.recv_bytes().unwrap()
    });
    assert!(got == pattern(64 * MIB, 2), "the child's 64 MiB arrived changed");
    join_ok(&mut p);
}

// --- CPython's _TestPoll ------------------------------------------------------------

/// CPython's `test_empty_string`, `test_strings` and `test_dont_merge`: empty
/// messages are messages; poll says so without consuming; messages a child
/// sends arrive one by one, never merged.
#[test]
fn poll_sees_each_message_and_messages_never_merge() {
    if !crate::support::alone() {
        return;
    }
    let (a, b) = pipe::<Vec<u8>>().unwrap();
    assert!(!a.poll(Some(Duration::ZERO)).unwrap());
    b.send_bytes(b"").unwrap();
    assert!(a.poll(Some(Duration::ZERO)).unwrap());
    assert!(a.poll(Some(Duration::ZERO)).unwrap());
    assert_eq!(a.recv_bytes().unwrap(), b"");
    assert!(!a.poll(Some(Duration::ZERO)).unwrap());

    let strings: Vec<Vec<u8>> = [&b"hello"[..], b"", b"a", b"b", b"", b"bye", b"", b"lop"]
        .iter()
        .map(|s| s.to_vec())
        .collect();
    let mut p = start_daemon(Process::new(send_strings, (b, strings.clone())));
    for s in &strings {
        assert!(a.poll(Some(STARTUP)).unwrap());
        assert_eq!(&a.recv_bytes().unwrap(), s);
    }
    join_ok(&mut p);
    assert!(a.poll(Some(STARTUP)).unwrap(), "end of file is ready");
    assert_eq!(a.recv_bytes().unwrap_err().kind(), ErrorKind::Closed);

    let (a, b) = pipe::<Vec<u8>>().unwrap();
    let parts = vec![b"a".to_vec(), b"b".to_vec(), b"cd".to_vec()];
    let mut p = start_daemon(Process::new(send_strings, (b, parts)));
    assert_eq!(a.recv_bytes().unwrap(), b"a");
    assert!(a.poll(Some(STARTUP)).unwrap());
    assert!(a.poll(Some(STARTUP)).unwrap());
    assert_eq!(a.recv_bytes().unwrap(), b"b");
    assert!(a.poll(Some(STARTUP)).unwrap());
    assert!(a.poll(Some(Duration::ZERO)).unwrap());
    assert_eq!(a.recv_bytes().unwrap(), b"cd");
    join_ok(&mut p);
}

/// `poll(None)` blocks until a message comes; `recv_timeout` waits its
/// timeout and then reports `Timeout`, and the pipe still works after.
#[test]
fn blocking_poll_and_recv_timeout() {
    if !crate::support::alone() {
        return;
    }
    let (a, b) = pipe::<u32>().unwrap();
    let (r, took) = timed(|| a.recv_timeout(Duration::from_millis(150)));
    assert_eq!(r.unwrap_err().kind(), ErrorKind::Timeout);
    assert_waited(took, Duration::from_millis(150), "recv_timeout on an idle pipe");
    let (tid_tx, tid_rx) = std::sync::mpsc::channel();
    let poller = std::thread::spawn(move || {
        tid_tx.send(gettid()).unwrap();
        let r = a.poll(None).unwrap();
        (r, a)
    });
    assert!(wait_thread_blocked_in(tid_rx.recv().unwrap(), POLL), "poll(None) did not block");
    b.send(&5).unwrap();
    let (ready, a) = bounded(PROMPT, "poll(None) after a send", move || poller.join().unwrap());
    assert!(ready);
    assert_eq!(a.recv().unwrap(), 5);
}

/// One thread waits in `recv` on a duplex end for a reply while another
/// sends the request on the same end (as CPython allows): the send must not
/// wait for the recv, or neither ever completes.
#[test]
fn a_send_is_not_held_up_by_a_recv_waiting_on_the_same_end() {
    if !crate::support::alone() {
        return;
    }
    let (a, b) = pipe::<u32>().unwrap();
    let a = std::sync::Arc::new(a);
    let a2 = a.clone();
    let (tid, reader) = {
        let (tx, rx) = std::sync::mpsc::channel();
        let h = std::thread::spawn(move || {
            tx.send(gettid()).unwrap();
            a2.recv_timeout(STARTUP)
        });
        (rx.recv().unwrap(), h)
    };
    assert!(wait_thread_blocked_in(tid, POLL), "the reader never waited");
    let sent = bounded(PROMPT, "a send while another thread waits in recv", move || {
        a.send(&1).map_err(|e| e.kind())
    });
    assert_eq!(sent, Ok(()));
    assert_eq!(b.recv_timeout(PROMPT).unwrap(), 1);
    b.send(&2).unwrap();
    let got = bounded(PROMPT, "the reply", move || reader.join().unwrap());
    assert_eq!(got.unwrap(), 2);
}

// --- values that cannot travel ---------------------------------------------------

#[derive(Debug, PartialEq, Deserialize)]
struct Refuses(u32);

impl Serialize for Refuses {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            13 => Err(serde::ser::Error::custom("13 refuses to be serialized")),
            n => s.serialize_u32(n),
        }
    }
}

/// A value that cannot be serialized fails its send and sends nothing; bytes
/// that are not a `T` fail that recv only; the framing survives both.
#[test]
fn a_bad_message_fails_only_itself() {
    if !crate::support::alone() {
        return;
    }
    let (a, b) = pipe::<Refuses>().unwrap();
    let e = b.send(&Refuses(13)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Serialize, "{e}");
    assert!(!a.poll(Some(Duration::ZERO)).unwrap(), "a failed send must send nothing");
    b.send(&Refuses(1)).unwrap();
    assert_eq!(a.recv().unwrap(), Refuses(1));

    let (a, b) = pipe::<String>().unwrap();
    b.send_bytes(&[0xff, 0xff, 0xff, 0xff, 0xff, 0x01]).unwrap();
    b.send(&"intact".to_string()).unwrap();
    let e = a.recv().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Deserialize, "{e}");
    assert_eq!(a.recv().unwrap(), "intact");

    // CPython's `test_missing_fd_transfer`: a message that names a
    // descriptor but carries none is an error for that message only.
    let (a, b) = pipe::<Fd<std::fs::File>>().unwrap();
    b.send_bytes(&[0]).unwrap();
    let e = a.recv().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Deserialize, "{e}");
    let dir = TempDir::new();
    b.send(&Fd::new(std::fs::File::create(dir.file("f")).unwrap())).unwrap();
    let mut f = a.recv().unwrap();
    f.write_all(b"ok").unwrap();
    assert_eq!(std::fs::read_to_string(dir.file("f")).unwrap(), "ok");
}

// --- descriptors ------------------------------------------------------------------

fn write_into_received_file(conn: Connection<Fd<std::fs::File>>) {
    let mut f = conn.recv().unwrap();
    f.write_all(b"written by the child").unwrap();
}

/// CPython's `test_fd_transfer` and `test_large_fd_transfer`: an open file
/// sent over a pipe is usable in the child, also from a descriptor number
/// above 256.
#[test]
fn open_files_travel_over_a_pipe() {
    if !crate::support::alone() {
        return;
    }
    let dir = TempDir::new();
    for high in [false, true] {
        let path = dir.file(&format!("out-{high}"));
        let file = std::fs::File::create(&path).unwrap();
        let file = if high {
            // SAFETY: fcntl(F_DUPFD_CLOEXEC) returns a new descriptor ≥ 300 or -1.
            let fd = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 300) };
            assert!(fd >= 300, "{}", std::io::Error::last_os_error());
            // SAFETY: `fd` is a fresh descriptor nobody else owns.
            std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) })
        } else {
            file
        };
        let (parent, child) = pipe::<Fd<std::fs::File>>().unwrap();
        let mut p = start_daemon(Process::new(write_into_received_file, child));
        parent.send(&Fd::new(file)).unwrap();
        join_ok(&mut p);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "written by the child");
    }
}

fn use_forwarded(control: Connection<(Connection<u32>, Queue<u32>)>) {
    let (conn, q) = control.recv().unwrap();
    let v = conn.recv().unwrap();
    conn.send(&(v + 1)).unwrap();
    q.put(v * 10).unwrap();
}

/// Handles in messages: a connection and a queue sent over a connection
/// work in the child that receives them.
#[test]
fn connections_and_queues_travel_over_a_pipe() {
    if !crate::support::alone() {
        return;
    }
    let (control, child_control) = pipe::<(Connection<u32>, Queue<u32>)>().unwrap();
    let mut p = start_daemon(Process::new(use_forwarded, child_control));
    let (mine, theirs) = pipe::<u32>().unwrap();
    let q = Queue::<u32>::new().unwrap();
    control.send(&(theirs, q.clone())).unwrap();
    mine.send(&41).unwrap();
    assert_eq!(mine.recv_timeout(STARTUP).unwrap(), 42);
    assert_eq!(q.get_timeout(STARTUP).unwrap(), 410);
    join_ok(&mut p);
    // `theirs` moved to the child, which has exited: nothing holds it now.
    let r = bounded(PROMPT, "recv on the forwarded pipe", move || mine.recv());
    assert_eq!(r.unwrap_err().kind(), ErrorKind::Closed);
}

fn tcp_write(mut s: Fd<TcpStream>) -> u32 {
    s.write_all(format!("tcp from {}", std::process::id()).as_bytes()).unwrap();
    std::process::id()
}

fn unix_echo_upper(mut s: Fd<UnixStream>) -> String {
    let mut buf = [0u8; 5];
    s.read_exact(&mut buf).unwrap();
    let up = String::from_utf8_lossy(&buf).to_uppercase();
    s.write_all(up.as_bytes()).unwrap();
    up
}

/// `Fd<TcpStream>` and `Fd<UnixStream>` handed to pool tasks: the task reads
/// and writes the socket, and its copy is closed when it returns (the peer
/// reads end of file).
#[test]
fn sockets_travel_to_pool_tasks_as_fd() {
    if !crate::support::alone() {
        return;
    }
    let pool = Pool::new(2).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (server, _) = listener.accept().unwrap();
    let pid = pool.apply(tcp_write, Fd::new(server)).unwrap();
    let got = bounded(STARTUP, "reading the TCP stream", move || {
        let mut s = String::new();
        client.read_to_string(&mut s).unwrap();
        s
    });
    assert_eq!(got, format!("tcp from {pid}"));

    let (ours, theirs) = UnixStream::pair().unwrap();
    (&ours).write_all(b"hello").unwrap();
    assert_eq!(pool.apply(unix_echo_upper, Fd::new(theirs)).unwrap(), "HELLO");
    let got = bounded(STARTUP, "reading the unix stream", move || {
        let mut s = String::new();
        (&ours).read_to_string(&mut s).unwrap();
        s
    });
    assert_eq!(got, "HELLO");
}

fn write_to_fd(mut s: Fd<UnixStream>) {
    s.write_all(b"from a process").unwrap();
}

/// `Fd` as a `Process` argument, and through a queue.
#[test]
fn fds_travel_to_processes_and_through_queues() {
    if !crate::support::alone() {
        return;
    }
    let (mut ours, theirs) = UnixStream::pair().unwrap();
    let mut p = start_daemon(Process::new(write_to_fd, Fd::new(theirs)));
    join_ok(&mut p);
    let mut s = String::new();
    ours.set_read_timeout(Some(STARTUP)).unwrap();
    ours.read_to_string(&mut s).unwrap();
    assert_eq!(s, "from a process");

    let q = Queue::<Fd<UnixStream>>::new().unwrap();
    let (mut ours, theirs) = UnixStream::pair().unwrap();
    q.put(Fd::new(theirs)).unwrap();
    let mut got = q.get_timeout(PROMPT).unwrap();
    got.write_all(b"via a queue").unwrap();
    drop(got);
    let mut s = String::new();
    ours.set_read_timeout(Some(PROMPT)).unwrap();
    ours.read_to_string(&mut s).unwrap();
    assert_eq!(s, "via a queue");
}
