//! Large values travel in sealed shared-memory files: task arguments and
//! results, pipe messages and queue items arrive whole, and neither side
//! keeps a file, a mapping or a descriptor of one once it is done, even when
//! the other side is killed with messages in flight; nothing appears in
//! /dev/shm.

use std::time::Duration;

use multiproc::{pipe_one_way, Bytes, ErrorKind, Pool, Process, Queue, Receiver, Sender};

use crate::ipc_util::{
    bounded, dev_shm, eventually, fd_count, memfd_count, memfd_mapping_count,
    message_mapping_count, start_daemon, PROMPT, STARTUP,
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

/// `recv_async` decodes a message where it lies, as `recv` does: a large
/// `Bytes` in it views the message's file; `recv_bytes_async` still hands
/// back the bytes whole.
#[test]
fn a_large_bytes_received_async_views_its_file() {
    let (rx, tx) = pipe_one_way::<Bytes>().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (got, raw) = rt.block_on(async {
        tx.send_async(&Bytes::from(pattern(LARGE, 5))).await.unwrap();
        tx.send_bytes_async(&pattern(LARGE, 6)).await.unwrap();
        let limit = STARTUP;
        let got = tokio::time::timeout(limit, rx.recv_async()).await.unwrap().unwrap();
        let raw = tokio::time::timeout(limit, rx.recv_bytes_async()).await.unwrap().unwrap();
        (got, raw)
    });
    assert!(got.is_shared(), "a large message received async was copied out of its file");
    assert!(got.into_vec() == pattern(LARGE, 5));
    assert!(raw == pattern(LARGE, 6));
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
    assert!(first.is_shared(), "a large pipe message was copied out of its file");
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
    // Not copied out of the item's file: a view of its mapping, which lives
    // as long as the item does.
    assert!(item.is_shared(), "a large queue item was copied");
    assert!(*item == pattern(LARGE, 4));
    assert!(p.join_timeout(STARTUP).unwrap());
    assert_eq!(memfd_mapping_count(), before.1 + 1, "the item's mapping is gone while it lives");
    drop(item);
    let now = held();
    assert_eq!((now.0, now.1), (before.0, before.1), "the item's file is still held");
}

/// A large `Bytes` argument a task keeps beyond its call (see [`keep`]).
static KEPT: std::sync::Mutex<Option<Bytes>> = std::sync::Mutex::new(None);

/// Whether the argument views shared memory, the mappings of multiproc
/// files in this worker while it does, and its sum; keeps the argument.
fn keep(b: Bytes) -> (bool, usize, u64) {
    let sum = b.iter().map(|&x| u64::from(x)).sum();
    let shared = b.is_shared();
    *KEPT.lock().unwrap() = Some(b);
    (shared, message_mapping_count(), sum)
}

/// The mappings of multiproc files in this worker while it still keeps the
/// last argument, and once it has dropped it.
fn release(_: u8) -> (usize, usize) {
    let kept = message_mapping_count();
    *KEPT.lock().unwrap() = None;
    (kept, message_mapping_count())
}

/// Whether the argument viewed shared memory before and after a write to
/// it, and the first byte after it.
fn write_first(mut b: Bytes) -> (bool, bool, Bytes) {
    let before = b.is_shared();
    b[0] = b[0].wrapping_add(1);
    (before, b.is_shared(), b)
}

fn sum_of(b: &[u8]) -> u64 {
    b.iter().map(|&x| u64::from(x)).sum()
}

#[test]
fn a_large_bytes_argument_is_a_view_of_the_task_file_until_its_last_owner_drops_it() {
    if !crate::support::alone() {
        return;
    }
    let shm = dev_shm();
    let pool = Pool::new(1).unwrap();
    let data = pattern(LARGE, 5);
    // Through a file: decoded without a copy, as a view of its mapping.
    let (shared, maps, sum) = pool.apply(keep, Bytes::from(data.clone())).unwrap();
    assert!(shared, "a large argument was copied out of its file");
    assert_eq!(maps, 1, "the worker's mappings while it views the task's file");
    assert_eq!(sum, sum_of(&data), "the view holds other bytes than were sent");
    // The next frame ends the worker's own hold on the file; the kept view
    // keeps it mapped, and dropping that unmaps it.
    assert_eq!(pool.apply(release, 0).unwrap(), (1, 0), "mappings while kept, after the drop");
    // Through the socket: a buffer of its own.
    let small = pattern(MIB, 6);
    let (shared, _, sum) = pool.apply(keep, Bytes::from(small.clone())).unwrap();
    assert!(!shared && sum == sum_of(&small), "a 1 MiB argument: shared {shared}");
    assert_eq!(pool.apply(release, 0).unwrap(), (0, 0));
    // A write to a view copies it first; the file's bytes stay as sent.
    let (before, after, got) = pool.apply(write_first, Bytes::from(data.clone())).unwrap();
    assert!(before && !after, "shared before the write {before}, after {after}");
    assert_eq!(got[0], data[0].wrapping_add(1));
    assert!(got[1..] == data[1..], "a written view changed other bytes");
    // A large result, too, is a view of its file in the parent, whether
    // the caller or the worker's own thread read it.
    let before = memfd_mapping_count();
    let got = pool.apply(reversed, Bytes::from(data.clone())).unwrap();
    assert!(got.is_shared(), "a large result was copied out of its file");
    let mapped = pool.map(reversed, vec![Bytes::from(data.clone()); 2]).unwrap();
    assert!(mapped.iter().all(Bytes::is_shared), "a large map result was copied");
    assert!(got.iter().rev().eq(data.iter()) && mapped[1] == got);
    assert_eq!(memfd_mapping_count(), before + 3, "the results' mappings while they live");
    drop((got, mapped));
    assert_eq!(memfd_mapping_count(), before, "a result's mapping outlived it");
    drop(pool);
    assert_eq!(dev_shm(), shm, "something appeared in /dev/shm");
}
