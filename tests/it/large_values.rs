//! Large values travel in sealed shared-memory files: task arguments and
//! results, pipe messages and queue items arrive whole, and neither side
//! keeps a file, a mapping or a descriptor of one once it is done, even when
//! the other side is killed with messages in flight; nothing appears in
//! /dev/shm.

use std::time::Duration;

use multiproc::{pipe_one_way, Bytes, ErrorKind, Pool, Process, Queue, Receiver, Sender};

use crate::ipc_util::{
    bounded, dev_shm, eventually, fd_count, memfd_count, memfd_mapping_count, start_daemon, PROMPT,
    STARTUP,
};

const MIB: usize = 1 << 20;
/// Large enough to travel in a file (above 4 MiB).
const LARGE: usize = 6 * MIB;

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

/// The files, mappings and descriptors this process holds.
pub(crate) fn held() -> (usize, usize, usize) {
    (memfd_count(), memfd_mapping_count(), fd_count())
}

pub(crate) fn reversed(b: Bytes) -> Bytes {
    let mut v = b.into_vec();
    v.reverse();
    Bytes::from(v)
}

fn doubled(v: Vec<u8>) -> Vec<u8> {
    v.into_iter().map(|b| b.wrapping_mul(2)).collect()
}

#[test]
fn large_task_arguments_and_results_arrive_whole_and_leave_nothing() {
    if !crate::support::alone() {
        return;
    }
    let shm = dev_shm();
    // A first pool starts what lives as long as the process. The count is
    // taken with no pool alive: an idle worker's descriptors vary with its
    // state (one offered to the next `apply` holds two duplicates, made by
    // its slot thread in its own time).
    {
        let pool = Pool::new(1).unwrap();
        assert_eq!(pool.apply(reversed, Bytes::from(vec![1, 2])).unwrap().into_vec(), [2, 1]);
    }
    let before = held();
    let pool = Pool::new(1).unwrap();
    let data = pattern(LARGE, 3);
    let mut want = data.clone();
    want.reverse();
    for _ in 0..3 {
        let got = pool.apply(reversed, Bytes::from(data.clone())).unwrap();
        assert!(got.into_vec() == want, "a large result arrived changed");
    }
    // Serde's own `Vec<u8>` takes the same path (only its encoding is slower).
    let got = pool.map(doubled, vec![pattern(LARGE, 1), pattern(LARGE + 7, 2)]).unwrap();
    assert!(got[0] == doubled(pattern(LARGE, 1)) && got[1] == doubled(pattern(LARGE + 7, 2)));
    drop(pool);
    assert_eq!(held(), before, "files, mappings or descriptors left (memfds, maps, fds)");
    assert_eq!(dev_shm(), shm, "something appeared in /dev/shm");
}

fn send_large(tx: Sender<Bytes>) {
    for seed in 0..3 {
        tx.send(&Bytes::from(pattern(LARGE, seed))).unwrap();
    }
    tx.send_bytes(&pattern(LARGE, 9)).unwrap();
    // Stays alive with its messages in flight until it is killed.
    std::thread::sleep(Duration::from_secs(60));
}

#[test]
fn a_sender_killed_after_sending_large_messages_leaves_them_whole() {
    if !crate::support::alone() {
        return;
    }
    let (rx, tx) = pipe_one_way::<Bytes>().unwrap();
    let mut p = start_daemon(Process::new(send_large, tx));
    let before = held();
    let first = rx.recv_timeout(STARTUP).unwrap();
    assert!(first.into_vec() == pattern(LARGE, 0));
    // The others are in the socket (or still being written: wait for them).
    assert!(eventually(STARTUP, || rx.poll(Some(Duration::ZERO)).unwrap()));
    std::thread::sleep(Duration::from_millis(200));
    p.kill().unwrap();
    assert!(p.join_timeout(PROMPT).unwrap());
    // A message in a file arrives whole or not at all: what was sent is read.
    let mut got = 1;
    let rx = bounded(STARTUP, "reading what the killed sender sent", move || {
        loop {
            match rx.recv_bytes() {
                Ok(bytes) => {
                    // A `send` adds the encoding's length prefix.
                    let prefix = if got < 3 { 4 } else { 0 };
                    assert_eq!(bytes.len(), LARGE + prefix, "message {got}");
                    got += 1;
                }
                Err(e) => {
                    assert_eq!(e.kind(), ErrorKind::Closed, "{e}");
                    break;
                }
            }
        }
        assert_eq!(got, 4, "large messages lost");
        rx
    });
    drop(rx);
    let now = held();
    assert!(now.0 <= before.0 && now.1 <= before.1, "files left: {now:?}, before {before:?}");
}

fn never_reads(rx: Receiver<Bytes>) {
    let _keep = rx;
    std::thread::sleep(Duration::from_secs(60));
}

#[test]
fn a_receiver_killed_with_large_messages_in_flight_leaks_nothing() {
    if !crate::support::alone() {
        return;
    }
    let (rx, tx) = pipe_one_way::<Bytes>().unwrap();
    let mut p = start_daemon(Process::new(never_reads, rx));
    let before = held();
    // Each message is a file and a few bytes in the socket: sends do not
    // wait for a reader, and this side keeps no copy once sent.
    let msg = Bytes::from(pattern(LARGE, 5));
    for _ in 0..8 {
        tx.send(&msg).unwrap();
    }
    assert_eq!(held(), before, "the sender kept files, mappings or descriptors");
    p.kill().unwrap();
    assert!(p.join_timeout(PROMPT).unwrap());
    let err = tx.send(&msg).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Closed, "{err}");
    assert_eq!(held(), before, "a failed send kept its file");
}

fn put_large(q: Queue<Bytes>) {
    q.put(Bytes::from(pattern(LARGE, 4))).unwrap();
}

#[test]
fn a_large_queue_item_is_mapped_and_released() {
    if !crate::support::alone() {
        return;
    }
    let q = Queue::<Bytes>::new().unwrap();
    let before = held();
    let mut p = start_daemon(Process::new(put_large, q.clone()));
    let item = q.get_timeout(STARTUP).unwrap();
    assert!(item.into_vec() == pattern(LARGE, 4));
    assert!(p.join_timeout(STARTUP).unwrap());
    let now = held();
    assert_eq!((now.0, now.1), (before.0, before.1), "the item's file is still held");
}
