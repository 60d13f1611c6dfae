//! The queue's shared-memory ring under real processes: producers and
//! consumers SIGKILLed mid-stream lose only their own in-flight item, each
//! producer's order holds across ring-full spills and large items, items with
//! handles interleave with small ones, a corrupted ring is an error (not a
//! hang), and nothing is left behind in descriptors or /dev/shm.

use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use multiproc::{Array, Bytes, ErrorKind, Lock, Process, Queue};

use crate::ipc_util::{fd_count, join_ok, memfd_count, start_daemon, PROMPT, STARTUP};

/// An item that is either small or carries a large payload (a shared-memory
/// file on the socket beside the ring).
type Item = (u64, Option<Bytes>);

fn large(i: u64) -> Option<Bytes> {
    (i % 10 == 3).then(|| Bytes::from(vec![(i % 251) as u8; 40 * 1024]))
}

fn check_payload(i: u64, payload: &Option<Bytes>) {
    match (large(i), payload) {
        (None, None) => {}
        (Some(want), Some(got)) => assert!(*want == **got, "item {i}'s payload is wrong"),
        (want, got) => {
            panic!("item {i}: payload {:?} where {:?} was due", got.is_some(), want.is_some())
        }
    }
}

fn nothing(_: ()) {}

/// Descriptor, memfd and /dev/shm counts once a first child has run (which
/// may leave lasting machinery open, a fork server's socket).
fn baseline() -> (usize, usize, usize) {
    let mut p = start_daemon(Process::new(nothing, ()));
    join_ok(&mut p);
    (fd_count(), memfd_count(), dev_shm_entries())
}

fn dev_shm_entries() -> usize {
    std::fs::read_dir("/dev/shm").map_or(0, |d| d.count())
}

/// Waits (bounded) until `f` holds.
fn eventually(what: &str, f: impl Fn() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < STARTUP, "{what} never happened");
        std::thread::sleep(Duration::from_millis(5));
    }
}

// --- killed producers ------------------------------------------------------------

fn produce_forever((q, round): (Queue<(u64, Item)>, u64)) {
    for i in 0.. {
        q.put((round, (i, large(i)))).unwrap();
    }
}

/// Producers SIGKILLed in the middle of a stream of puts (small items and
/// large ones, ring full or not): what arrives from each is exactly its items
/// 0..k for some k, in order, none twice, none missing before the last.
#[test]
fn a_producer_killed_mid_put_loses_only_what_it_had_not_committed() {
    if !crate::support::alone() {
        return;
    }
    let (fds, memfds, shm) = baseline();
    {
        let q = Queue::<(u64, Item)>::new().unwrap();
        let mut next = [0u64; 4];
        for round in 0..4u64 {
            let mut p = start_daemon(Process::new(produce_forever, (q.clone(), round)));
            // Take some of its items, then kill it mid-stream.
            let want = 200 + round * 300;
            while next[round as usize] < want {
                let (r, (i, payload)) = q.get_timeout(STARTUP).unwrap();
                assert_eq!(r, round, "an item of a producer already drained");
                assert_eq!(i, next[r as usize], "producer {r}'s items out of order");
                check_payload(i, &payload);
                next[r as usize] += 1;
            }
            // Let it fill the ring (and its outbox) before it dies.
            std::thread::sleep(Duration::from_millis(20 + 10 * round));
            p.kill().unwrap();
            assert!(p.join_timeout(PROMPT).unwrap());
            // Everything it committed is there, in order, then nothing.
            loop {
                match q.get_timeout(Duration::from_millis(300)) {
                    Ok((r, (i, payload))) => {
                        assert_eq!(r, round);
                        assert_eq!(i, next[r as usize], "producer {r}'s items out of order");
                        check_payload(i, &payload);
                        next[r as usize] += 1;
                    }
                    Err(e) => {
                        assert!(e.is_timeout(), "{e}");
                        break;
                    }
                }
            }
        }
        // The queue still works. (Its count still holds the items the
        // killed producers had in their outboxes: counted at put, never sent.)
        q.put((9, (0, large(3)))).unwrap();
        let (r, (_, payload)) = q.get_timeout(PROMPT).unwrap();
        assert_eq!(r, 9);
        check_payload(3, &payload);
    }
    eventually("every descriptor and memfd closed", || {
        fd_count() == fds && memfd_count() == memfds
    });
    assert_eq!(dev_shm_entries(), shm, "something was left in /dev/shm");
}

// --- killed consumers ------------------------------------------------------------

fn consume_and_mark((q, seen): (Queue<Item>, Array<u8>)) {
    loop {
        let (i, payload) = q.get().unwrap();
        check_payload(i, &payload);
        let was = seen.get(i as usize).unwrap();
        seen.set(i as usize, was.saturating_add(1)).unwrap();
    }
}

/// Consumers SIGKILLed in the middle of a stream of gets (the producer
/// putting small and large items all along): every item is taken exactly
/// once, except at most one per killed consumer (the one it had in hand),
/// and none twice.
#[test]
fn a_consumer_killed_mid_get_loses_at_most_its_own_item() {
    if !crate::support::alone() {
        return;
    }
    const N: u64 = 6000;
    const KILLS: usize = 5;
    let (fds, memfds, shm) = baseline();
    {
        let q = Queue::<Item>::new().unwrap();
        let seen = Array::<u8>::from_slice_raw(&vec![0u8; N as usize]).unwrap();
        let producer = {
            let q = q.clone();
            std::thread::spawn(move || {
                for i in 0..N {
                    // Keep the outbox short: every large item's file stays
                    // open here until it is in the ring.
                    let t = Instant::now();
                    while q.qsize() > 500 {
                        assert!(t.elapsed() < STARTUP, "the consumers stopped taking items");
                        std::thread::sleep(Duration::from_micros(200));
                    }
                    q.put((i, large(i))).unwrap();
                }
            })
        };
        let marked = |seen: &Array<u8>| seen.to_vec().iter().filter(|&&c| c > 0).count();
        for k in 0..KILLS {
            let mut c = start_daemon(Process::new(consume_and_mark, (q.clone(), seen.clone())));
            let goal = (k + 1) * N as usize / (KILLS + 2);
            eventually("the consumer took its share", || marked(&seen) >= goal);
            c.kill().unwrap();
            assert!(c.join_timeout(PROMPT).unwrap());
        }
        // The parent takes the rest.
        let mut quiet = 0;
        loop {
            match q.get_timeout(Duration::from_millis(500)) {
                Ok((i, payload)) => {
                    quiet = 0;
                    check_payload(i, &payload);
                    let was = seen.get(i as usize).unwrap();
                    seen.set(i as usize, was + 1).unwrap();
                }
                Err(e) => {
                    assert!(e.is_timeout(), "{e}");
                    // Nothing came for a while, the producer is done and
                    // nothing waits in its outbox (counted in qsize).
                    if producer.is_finished() && q.qsize() == 0 {
                        break;
                    }
                    // Every item is out, yet the count says otherwise: a
                    // killed consumer's take left it (it once did).
                    quiet += u32::from(producer.is_finished());
                    assert!(quiet < 4, "qsize() stays {} with nothing left to get", q.qsize());
                }
            }
        }
        producer.join().unwrap();
        let counts = seen.to_vec();
        let twice: Vec<usize> = (0..counts.len()).filter(|&i| counts[i] > 1).collect();
        assert!(twice.is_empty(), "delivered twice: {twice:?}");
        let lost: Vec<usize> = (0..counts.len()).filter(|&i| counts[i] == 0).collect();
        assert!(lost.len() <= KILLS, "lost {} items with {KILLS} kills: {lost:?}", lost.len());
    }
    eventually("every descriptor and memfd closed", || {
        fd_count() == fds && memfd_count() == memfds
    });
    assert_eq!(dev_shm_entries(), shm, "something was left in /dev/shm");
}

// --- order ------------------------------------------------------------------------

/// Producer id, its item number, maybe a 1 MiB payload.
type Mixed = (u64, u64, Option<Bytes>);

fn produce_mixed((q, id, n): (Queue<Mixed>, u64, u64)) {
    for i in 0..n {
        let payload = (i % 499 == 5).then(|| Bytes::from(vec![id as u8; 1 << 20]));
        q.put((id, i, payload)).unwrap();
    }
}

/// Two producers each put small items with 1 MiB items among them, fast
/// enough to fill the ring and spill into their outboxes: each one's items
/// arrive in its order, all of them.
#[test]
fn per_producer_order_holds_across_spills_and_large_items() {
    const N: u64 = 30_000;
    let q = Queue::<Mixed>::new().unwrap();
    let mut ps: Vec<Process> =
        (0..2).map(|id| start_daemon(Process::new(produce_mixed, (q.clone(), id, N)))).collect();
    // Let both get ahead of the consumer: the ring fills and outboxes form.
    std::thread::sleep(Duration::from_millis(100));
    let mut next = [0u64; 2];
    for _ in 0..2 * N {
        let (id, i, payload) = q.get_timeout(STARTUP).unwrap();
        assert_eq!(i, next[id as usize], "producer {id}'s items out of order");
        match payload {
            Some(b) => {
                assert_eq!(i % 499, 5);
                assert!(b.len() == 1 << 20 && b.iter().all(|&x| x == id as u8));
            }
            None => assert_ne!(i % 499, 5),
        }
        next[id as usize] += 1;
    }
    for p in &mut ps {
        join_ok(p);
    }
    assert!(q.get_nowait().is_err());
}

// --- handles ---------------------------------------------------------------------

fn produce_with_locks((q, lock, n): (Queue<(u64, Option<Lock>)>, Lock, u64)) {
    for i in 0..n {
        q.put((i, (i % 3 == 0).then(|| lock.clone()))).unwrap();
    }
}

/// Items carrying a `Lock` (a descriptor on the socket beside the ring)
/// interleaved with small ones arrive in order, each handle usable.
#[test]
fn items_with_handles_interleave_with_small_ones_in_order() {
    const N: u64 = 3000;
    let q = Queue::<(u64, Option<Lock>)>::new().unwrap();
    let lock = Lock::new().unwrap();
    let mut p = start_daemon(Process::new(produce_with_locks, (q.clone(), lock.clone(), N)));
    let guard = lock.acquire().unwrap();
    for want in 0..N {
        let (i, l) = q.get_timeout(STARTUP).unwrap();
        assert_eq!(i, want);
        assert_eq!(l.is_some(), i % 3 == 0, "item {i}");
        if let Some(l) = l {
            // The same lock: held here through the parent's own handle.
            assert!(l.try_acquire().unwrap().is_none(), "item {i}'s lock is not the lock");
        }
    }
    drop(guard);
    join_ok(&mut p);
}

// --- corruption --------------------------------------------------------------------

/// The ring's memfd in this process (the only multiproc memfd of its size).
fn ring_file() -> std::fs::File {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        let Ok(target) = std::fs::read_link(e.path()) else { continue };
        if !target.to_string_lossy().starts_with("/memfd:multiproc") {
            continue;
        }
        let Ok(f) = std::fs::OpenOptions::new().read(true).write(true).open(e.path()) else {
            continue;
        };
        if f.metadata().unwrap().len() == RING_LEN {
            found.push(f);
        }
    }
    assert_eq!(found.len(), 1, "one ring memfd expected");
    found.pop().unwrap()
}

/// Where the ring's parts are. The header's parts each have a line of 128
/// bytes (two cache lines, as x86-64 prefetches them in pairs): the put
/// mutex, the get mutex, the producers' words (tail first), the consumers'
/// (head first), the sleeper counts. Records start at DATA_AT.
const PUT_MUTEX_AT: usize = 0;
const GET_MUTEX_AT: usize = 128;
const TAIL_AT: u64 = 256;
const HEAD_AT: u64 = 384;
const DATA_AT: u64 = 1024;
const RING_LEN: u64 = DATA_AT + 256 * 1024;

#[test]
fn a_corrupted_ring_is_an_error_not_a_hang() {
    if !crate::support::alone() {
        return;
    }
    let q = Queue::<u64>::new().unwrap();
    q.put(1).unwrap();
    let ring = ring_file();
    // A record length beyond any record.
    let data = DATA_AT;
    let mut len = [0u8; 4];
    ring.read_exact_at(&mut len, data).unwrap();
    assert_ne!(u32::from_le_bytes(len), 0, "the first record is where it was expected");
    ring.write_all_at(&u32::MAX.to_le_bytes(), data).unwrap();
    let t = Instant::now();
    let e = q.get_timeout(PROMPT).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Protocol, "{e}");
    assert!(e.to_string().contains("corrupt"), "{e}");
    assert!(t.elapsed() < PROMPT, "took {:?}", t.elapsed());

    // Head and tail far apart: gets and puts both fail, promptly.
    ring.write_all_at(&0u64.to_le_bytes(), HEAD_AT).unwrap();
    ring.write_all_at(&u64::MAX.to_le_bytes(), TAIL_AT).unwrap();
    let t = Instant::now();
    let e = q.get_timeout(PROMPT).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Protocol, "{e}");
    let e = q.put(2).unwrap_err().into_error();
    assert_eq!(e.kind(), ErrorKind::Protocol, "{e}");
    assert!(t.elapsed() < PROMPT, "took {:?}", t.elapsed());
}

// --- review findings ----------------------------------------------------------------

/// Maps the ring's memfd here; the pointer stays valid for the test.
fn map_ring(ring: &std::fs::File) -> *mut u8 {
    use std::os::fd::AsRawFd;
    // SAFETY: a fresh shared mapping of the ring's whole file.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            RING_LEN as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            ring.as_raw_fd(),
            0,
        )
    };
    assert_ne!(p, libc::MAP_FAILED);
    p.cast()
}

/// Holds the ring's mutex at `at` on a thread of its own (as a put or get
/// in another process would) until the returned sender is dropped or sent to.
fn hold_ring_mutex(
    base: usize,
    at: usize,
) -> (std::sync::mpsc::Sender<()>, std::thread::JoinHandle<()>) {
    let (held_tx, held_rx) = std::sync::mpsc::channel();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let holder = std::thread::spawn(move || {
        let m = (base + at) as *mut libc::pthread_mutex_t;
        // SAFETY: one of the ring's mutexes, initialised by the queue,
        // mapped by the caller for the whole test.
        assert_eq!(unsafe { libc::pthread_mutex_lock(m) }, 0);
        held_tx.send(()).unwrap();
        let _ = go_rx.recv_timeout(Duration::from_secs(10));
        // SAFETY: this thread holds it.
        assert_eq!(unsafe { libc::pthread_mutex_unlock(m) }, 0);
    });
    held_rx.recv().unwrap();
    (go_tx, holder)
}

#[test]
fn get_nowait_does_not_wait_for_a_busy_ring_mutex() {
    if !crate::support::alone() {
        return;
    }
    let q = Queue::<u64>::new().unwrap();
    q.put(7).unwrap();
    let base = map_ring(&ring_file()) as usize;
    let (go, holder) = hold_ring_mutex(base, GET_MUTEX_AT);
    let t = Instant::now();
    for _ in 0..20 {
        let e = q.get_nowait().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Empty, "{e}");
    }
    // It waited 10 ms for the mutex per call before: 200 ms at least.
    assert!(t.elapsed() < Duration::from_millis(100), "20 get_nowait took {:?}", t.elapsed());
    // A timed get waits for it no longer than its timeout.
    let t = Instant::now();
    let e = q.get_timeout(Duration::from_millis(30)).unwrap_err();
    assert!(e.is_timeout(), "{e}");
    assert!(t.elapsed() < PROMPT, "took {:?}", t.elapsed());
    go.send(()).unwrap();
    holder.join().unwrap();
    assert_eq!(q.get_nowait().unwrap(), 7);
}

#[test]
fn a_get_does_not_wait_for_a_put_in_progress() {
    if !crate::support::alone() {
        return;
    }
    let q = Queue::<u64>::new().unwrap();
    q.put(7).unwrap();
    q.put(8).unwrap();
    let base = map_ring(&ring_file()) as usize;
    // A put holds its mutex (here for as long as the test likes): gets take
    // the other one and go on reading what was committed.
    let (go, holder) = hold_ring_mutex(base, PUT_MUTEX_AT);
    assert_eq!(q.get_nowait().unwrap(), 7);
    assert_eq!(q.get_timeout(PROMPT).unwrap(), 8);
    // This put cannot take the ring now: it goes to the feeder, which
    // commits it once the mutex is free; nothing is lost or reordered.
    q.put(9).unwrap();
    let e = q.get_timeout(Duration::from_millis(30)).unwrap_err();
    assert!(e.is_timeout(), "{e}");
    go.send(()).unwrap();
    holder.join().unwrap();
    assert_eq!(q.get_timeout(PROMPT).unwrap(), 9);
}

/// CLOCK_MONOTONIC in nanoseconds: the same clock in every process.
fn mono_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a live timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Puts the time, `n` times, each after a pause long enough for the
/// parent's get to be asleep on the futex.
fn put_times_after_pauses((q, n): (Queue<u64>, u32)) {
    for _ in 0..n {
        std::thread::sleep(Duration::from_millis(25));
        q.put(mono_ns()).unwrap();
    }
}

#[test]
fn a_sleeping_get_wakes_at_a_put_not_at_its_poll() {
    let q = Queue::<u64>::new().unwrap();
    let n = 16;
    let mut p = Process::new(put_times_after_pauses, (q.clone(), n));
    p.start().unwrap();
    let mut late: Vec<u64> = (0..n)
        .map(|_| {
            let sent = q.get_timeout(STARTUP).unwrap();
            mono_ns().saturating_sub(sent) / 1000
        })
        .collect();
    join_ok(&mut p);
    late.sort_unstable();
    // A wake-up that relied on the getter's 100 ms poll would come 50 ms
    // late on average; a futex wake takes microseconds (milliseconds on a
    // loaded machine).
    let median = late[late.len() / 2];
    assert!(median < 10_000, "wake-up delays in us: {late:?}");
}

// --- many producers, many consumers -------------------------------------------------

/// Producer id, item number, maybe a handle, inline padding of varying size,
/// maybe a payload too large for a record (a memfd beside the ring).
type Crowd = (u64, u64, Option<Lock>, Bytes, Option<Bytes>);

const CROWD_N: u64 = 2000;
const CROWD_PRODUCERS: u64 = 3;
const CROWD_CONSUMERS: usize = 2;

fn crowd_item(id: u64, i: u64, lock: &Lock) -> Crowd {
    let pad = Bytes::from(vec![(i % 251) as u8; ((i * 37 + id * 11) % 3000) as usize]);
    let big = (i % 13 == 7).then(|| Bytes::from(vec![id as u8 ^ (i % 7) as u8; 40 * 1024]));
    (id, i, (i % 5 == 1).then(|| lock.clone()), pad, big)
}

fn check_crowd((id, i, lock, pad, big): &Crowd) {
    assert!(*id < CROWD_PRODUCERS && *i < CROWD_N, "item ({id}, {i}) was never put");
    assert_eq!(lock.is_some(), i % 5 == 1, "item ({id}, {i})'s handle");
    assert_eq!(pad.len() as u64, (i * 37 + id * 11) % 3000, "item ({id}, {i})'s padding");
    assert!(pad.iter().all(|&b| b == (i % 251) as u8), "item ({id}, {i})'s padding");
    match big {
        Some(b) => {
            assert_eq!(i % 13, 7, "item ({id}, {i}) has a payload");
            assert!(b.len() == 40 * 1024 && b.iter().all(|&x| x == *id as u8 ^ (i % 7) as u8));
        }
        None => assert_ne!(i % 13, 7, "item ({id}, {i}) lost its payload"),
    }
}

fn crowd_produce((q, id, lock): (Queue<Crowd>, u64, Lock)) {
    // Far faster than the consumers: the ring fills and the feeder writes
    // batches; the rest goes at exit, in this process's exit flush.
    for i in 0..CROWD_N {
        q.put(crowd_item(id, i, &lock)).unwrap();
    }
}

fn crowd_consume((q, seen): (Queue<Crowd>, Array<u8>)) {
    let mut last = [None::<u64>; CROWD_PRODUCERS as usize];
    loop {
        let item = q.get_timeout(STARTUP).unwrap();
        if item.0 == u64::MAX {
            return;
        }
        check_crowd(&item);
        let (id, i) = (item.0 as usize, item.1);
        // What one consumer sees of a producer is in that producer's order.
        assert!(last[id].is_none_or(|l| l < i), "producer {id}: {i} after {:?}", last[id]);
        last[id] = Some(i);
        let at = id * CROWD_N as usize + i as usize;
        seen.set(at, seen.get(at).unwrap().saturating_add(1)).unwrap();
    }
}

/// Three producer processes outpace two consumer processes with items of
/// mixed sizes, some carrying a handle, some a large payload: the ring stays
/// full, each producer's feeder writes batches and its exit flush waits for
/// the consumers; every item arrives exactly once, each consumer sees every
/// producer's items in order, and every producer exits in time.
#[test]
fn many_producers_and_consumers_under_a_full_ring_get_each_item_once_in_order() {
    let q = Queue::<Crowd>::new().unwrap();
    let lock = Lock::new().unwrap();
    let seen =
        Array::<u8>::from_slice_raw(&vec![0u8; (CROWD_N * CROWD_PRODUCERS) as usize]).unwrap();
    // Consumers first: asleep on an empty ring when the producers start.
    let mut consumers: Vec<Process> = (0..CROWD_CONSUMERS)
        .map(|_| start_daemon(Process::new(crowd_consume, (q.clone(), seen.clone()))))
        .collect();
    let mut producers: Vec<Process> = (0..CROWD_PRODUCERS)
        .map(|id| start_daemon(Process::new(crowd_produce, (q.clone(), id, lock.clone()))))
        .collect();
    for p in &mut producers {
        // Its exit flush ends once the consumers took its outbox.
        join_ok(p);
    }
    // Every item is in the ring now: the stops come after all of them.
    for _ in 0..CROWD_CONSUMERS {
        q.put((u64::MAX, 0, None, Bytes::from(Vec::new()), None)).unwrap();
    }
    for c in &mut consumers {
        join_ok(c);
    }
    let counts = seen.to_vec();
    let wrong: Vec<(usize, u8)> =
        counts.iter().enumerate().filter(|&(_, &c)| c != 1).map(|(i, &c)| (i, c)).collect();
    assert!(wrong.is_empty(), "(producer * {CROWD_N} + item, times delivered): {wrong:?}");
    assert!(q.get_nowait().is_err(), "an item left over");
    assert_eq!(q.qsize(), 0);
}

// --- the exit flush -----------------------------------------------------------------

const STALLED_N: u64 = 1000;

/// Sends its stderr to `path`, then puts far more than the ring holds and
/// returns: its exit flush waits for a consumer that never takes.
fn spill_then_exit((q, path): (Queue<(u64, Bytes)>, String)) {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::create(&path).unwrap();
    // SAFETY: plain descriptors; fd 2 now names the file.
    assert_eq!(unsafe { libc::dup2(f.as_raw_fd(), 2) }, 2);
    for i in 0..STALLED_N {
        q.put((i, Bytes::from(vec![i as u8; 1000]))).unwrap();
    }
}

/// A producer whose consumer takes nothing exits after the flush's stall
/// limit, naming how many items it drops: those waiting in its outbox and
/// those its feeder had taken off it, which with what is in the ring make
/// every item it put.
#[test]
fn a_stalled_exit_flush_gives_up_and_names_every_item_it_drops() {
    if cfg!(feature = "tracing") {
        return; // The message goes to `tracing`, not to stderr.
    }
    let dir = crate::ipc_util::TempDir::new();
    let path = dir.file("stderr");
    let q = Queue::<(u64, Bytes)>::new().unwrap();
    let mut p = start_daemon(Process::new(spill_then_exit, (q.clone(), path.clone())));
    // The flush gives up after 5 s without progress.
    assert!(p.join_timeout(Duration::from_secs(30)).unwrap(), "the exit flush hung");
    assert_eq!(p.exitcode(), Some(0));
    let err = std::fs::read_to_string(&path).unwrap();
    let dropped = crate::support::exit_flush_dropped(&err);
    // What did go in is there, in order, then nothing.
    let mut got = 0;
    while let Ok((i, b)) = q.get_timeout(Duration::from_millis(300)) {
        assert_eq!(i, got, "items out of order");
        assert!(b.len() == 1000 && b.iter().all(|&x| x == i as u8), "item {i}'s bytes");
        got += 1;
    }
    assert!(got > 0 && dropped > 0, "{got} in the ring, {dropped} dropped");
    assert_eq!(got + dropped, STALLED_N, "{got} in the ring, the message said {dropped} dropped");
}
