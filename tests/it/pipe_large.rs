//! Large pipe messages that travel in the socket (64 KiB to 4 MiB): sent
//! from the caller's bytes and read into a buffer of their own. Every size
//! around the threshold arrives whole and in order between small ones, a
//! short `recv_bytes_into` keeps such a message first in line, and a writer
//! killed in the middle of one (real SIGKILL) is a `Protocol` error, with no
//! descriptor or shared-memory file left behind.

use multiproc::{pipe, pipe_one_way, ErrorKind, Process, Receiver, Sender};

use crate::ipc_util::{
    bounded, fd_count, gettid, join_ok, memfd_count, start_daemon, timed, wait_child_blocked_in,
    wait_thread_blocked_in, POLL, PROMPT, STARTUP,
};

const KIB: usize = 1 << 10;
const MIB: usize = 1 << 20;

/// The sizes to try: on both sides of the 64 KiB threshold, and up to the
/// 4 MiB above which a message goes in a file instead.
const SIZES: &[usize] =
    &[1, 64 * KIB - 1, 64 * KIB, 64 * KIB + 1, 200 * KIB, MIB, 3 * MIB + 7, 4 * MIB];

fn pattern(len: usize, seed: usize) -> Vec<u8> {
    (0..len).map(|i| (i.wrapping_mul(31) ^ seed) as u8).collect()
}

/// Sends every size in order, each followed by a small message naming it.
fn send_sizes(tx: Sender<()>) {
    for (i, &len) in SIZES.iter().enumerate() {
        tx.send_bytes(&pattern(len, i)).unwrap();
        tx.send_bytes(format!("after {len}").as_bytes()).unwrap();
    }
}

#[test]
fn messages_around_the_threshold_arrive_whole_and_in_order() {
    let (rx, tx) = pipe_one_way::<()>().unwrap();
    let mut p = Process::new(send_sizes, tx);
    p.start().unwrap();
    let got = bounded(STARTUP, "receive every size", move || {
        let mut got = Vec::new();
        for _ in SIZES {
            let big = rx.recv_bytes().unwrap();
            let small = rx.recv_bytes().unwrap();
            got.push((big, small));
        }
        got
    });
    for (i, (&len, (big, small))) in SIZES.iter().zip(got).enumerate() {
        assert!(big == pattern(len, i), "the message of {len} bytes arrived changed");
        assert_eq!(small, format!("after {len}").as_bytes());
    }
    join_ok(&mut p);
}

/// Within one process (no child): both ends' buffers, `poll`, and a short
/// `recv_bytes_into` that leaves a large message first in line.
#[test]
fn a_large_message_waits_for_a_buffer_that_holds_it() {
    let (a, b) = pipe::<()>().unwrap();
    let big = pattern(MIB, 9);
    let t = std::thread::spawn(move || {
        a.send_bytes(&big).unwrap();
        a.send_bytes(b"next").unwrap();
        a
    });
    assert!(b.poll(Some(STARTUP)).unwrap());
    let mut small = vec![0u8; 64 * KIB];
    let err = b.recv_bytes_into(&mut small).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::BufferTooShort);
    let mut whole = vec![0u8; 2 * MIB];
    let n = b.recv_bytes_into(&mut whole).unwrap();
    assert!(n == MIB && whole[..n] == pattern(MIB, 9), "the kept message changed");
    assert_eq!(b.recv_bytes().unwrap(), b"next");
    let _a = t.join().unwrap();
    // And back the other way, received with `recv_bytes_into` at once.
    let back = pattern(300 * KIB, 4);
    _a.send_bytes(&back).unwrap();
    let n = b.recv_bytes_into(&mut whole).unwrap();
    assert!(whole[..n] == back[..], "the second message changed");
}

/// Sends one 3 MiB message (more than the socket holds, less than goes in
/// a file), which blocks until the reader reads.
fn send_three_mib(tx: Sender<()>) {
    tx.send_bytes(&vec![0x5A; 3 * MIB]).unwrap();
}

/// The writer is killed (SIGKILL) in the middle of a 3 MiB message sent
/// from its own bytes: the reader, which has part of it in a buffer of its
/// own, gets a `Protocol` error promptly, and nothing is left open.
#[test]
fn a_writer_killed_mid_large_message_is_a_protocol_error() {
    if !crate::support::alone() {
        return;
    }
    // The fork server (started at the first child) keeps a descriptor.
    let mut first = Process::new(|()| {}, ());
    first.start().unwrap();
    join_ok(&mut first);
    let fds_before = fd_count();
    let memfds_before = memfd_count();
    let (rx, tx) = pipe_one_way::<()>().unwrap();
    let mut p = start_daemon(Process::new(send_three_mib, tx));
    assert!(rx.poll(Some(STARTUP)).unwrap(), "the child never started sending");
    assert!(
        wait_child_blocked_in(p.pid().unwrap(), POLL),
        "the child is not waiting to send the rest of its message"
    );
    p.kill().unwrap();
    assert!(p.join_timeout(PROMPT).unwrap());
    assert_eq!(p.exitcode(), Some(-libc::SIGKILL));
    let (r, took) = bounded(STARTUP, "recv after the writer died", move || {
        let r = timed(|| rx.recv_bytes().map(|v| v.len()).map_err(|e| e.kind()));
        drop(rx);
        r
    });
    assert_eq!(r, Err(ErrorKind::Protocol));
    assert!(took < PROMPT, "the error took {took:?}");
    assert_eq!(fd_count(), fds_before, "descriptors were left open");
    assert_eq!(memfd_count(), memfds_before, "a shared-memory file was left open");
}

/// Holds the reading end without reading, until it is killed.
fn never_read(rx: Receiver<()>) {
    std::thread::sleep(std::time::Duration::from_secs(60));
    drop(rx);
}

/// The reader is killed (SIGKILL) while the parent sends it 3 MiB from the
/// caller's bytes: the send fails with `Closed` promptly instead of waiting
/// for a reader that is gone.
#[test]
fn a_reader_killed_mid_large_message_fails_the_send() {
    if !crate::support::alone() {
        return;
    }
    let (rx, tx) = pipe_one_way::<()>().unwrap();
    let mut p = start_daemon(Process::new(never_read, rx));
    let big = vec![0x33; 3 * MIB];
    let (tid_tx, tid_rx) = std::sync::mpsc::channel();
    let sender = std::thread::spawn(move || {
        tid_tx.send(gettid()).unwrap();
        let r = tx.send_bytes(&big).map_err(|e| e.kind());
        (r, std::time::Instant::now())
    });
    // More than the socket holds: the send waits for room.
    let tid = tid_rx.recv().unwrap();
    assert!(wait_thread_blocked_in(tid, POLL), "the send never waited for the reader");
    let killed = std::time::Instant::now();
    p.kill().unwrap();
    let (r, returned) =
        bounded(STARTUP, "send while the reader dies", move || sender.join().unwrap());
    assert_eq!(r, Err(ErrorKind::Closed));
    assert!(returned.duration_since(killed) < PROMPT, "the send took {:?}", returned - killed);
    assert!(p.join_timeout(PROMPT).unwrap());
}
