//! Shared memory and queues under hostile input and ordinary misuse (issue
//! 14, items 8, 9 and 18): a shared-memory handle whose length does not match
//! its memory, whose file may shrink, or that was made by someone else is
//! refused; no process can shrink shared memory another one has mapped; a
//! locked `Value`/`Array`'s `get`/`set` wait for the thread or process that
//! holds its guard, and nothing gives a second `&mut`; a queue dropped with
//! items no one can take costs no thread, no descriptor and no exit delay,
//! while items some process can still take are delivered at exit.
//!
//! Forged handles are built with [`Pun`], a value that is written as one type
//! and read back as another: the bytes and descriptors a hostile process
//! would send, through the ordinary `Queue` decoding path.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use multiproc::{Array, ErrorKind, Event, Fd, Process, Queue, Value};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::ipc_util::{
    bounded, eventually, fd_count, join_ok, start_daemon, thread_ids, PROMPT, STARTUP,
};

/// How long a blocked call must stay blocked to count as waiting.
const BLOCKED: Duration = Duration::from_millis(300);

// --- forging -----------------------------------------------------------------------

/// Written as an `A`, read back as a `B`.
enum Pun<A, B> {
    Sent(A),
    Got(B),
}

impl<A: Serialize, B> Serialize for Pun<A, B> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Pun::Sent(a) => a.serialize(s),
            Pun::Got(_) => Err(serde::ser::Error::custom("a received Pun is not sent again")),
        }
    }
}

impl<'de, A, B: Deserialize<'de>> Deserialize<'de> for Pun<A, B> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        B::deserialize(d).map(Pun::Got)
    }
}

/// Sends `a` through a queue and decodes it as a `B`, as a process receiving
/// those bytes and descriptors would.
fn pun<A: Serialize, B: for<'de> Deserialize<'de>>(a: A) -> multiproc::Result<B> {
    let q = Queue::<Pun<A, B>>::new().unwrap();
    q.put(Pun::Sent(a)).map_err(|e| e.into_error()).unwrap();
    match q.get_timeout(PROMPT)? {
        Pun::Got(b) => Ok(b),
        Pun::Sent(_) => unreachable!("decoding always gives Got"),
    }
}

/// An array or value handle as it travels: the region, the element count,
/// the width of the element accesses, the lock's region.
#[derive(Serialize)]
struct ForgedArray {
    region: Fd<OwnedFd>,
    len: u64,
    width: u8,
    lock: Option<Fd<OwnedFd>>,
}

/// The same, received: the descriptors of a real handle.
#[derive(Deserialize)]
struct StolenArray {
    region: Fd<OwnedFd>,
    _len: u64,
    _width: u8,
    _lock: Option<Fd<OwnedFd>>,
}

/// A memfd of `len` zero bytes; `sealed` as multiproc seals its own.
fn memfd(len: usize, sealed: bool) -> OwnedFd {
    let flags = libc::MFD_CLOEXEC | if sealed { libc::MFD_ALLOW_SEALING } else { 0 };
    // SAFETY: the name is a NUL-terminated literal; memfd_create returns a new fd.
    let fd = unsafe { libc::memfd_create(c"multiproc-forged".as_ptr(), flags) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: `fd` was just created and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ftruncate on a descriptor we own.
    assert_eq!(unsafe { libc::ftruncate(fd.as_raw_fd(), len as libc::off_t) }, 0);
    if sealed {
        let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
        // SAFETY: F_ADD_SEALS takes an open descriptor and a bit set.
        assert_eq!(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals) }, 0);
    }
    fd
}

/// A memfd holding `bytes`, sealed as multiproc seals a message: against
/// resizing and writes.
fn frozen_memfd(bytes: &[u8]) -> OwnedFd {
    let flags = libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING;
    // SAFETY: the name is a NUL-terminated literal; memfd_create returns a new fd.
    let fd = unsafe { libc::memfd_create(c"multiproc-forged".as_ptr(), flags) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: `fd` was just created and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: pwrite from a live buffer to a descriptor we own.
    let w = unsafe { libc::pwrite(fd.as_raw_fd(), bytes.as_ptr().cast(), bytes.len(), 0) };
    assert_eq!(w, bytes.len() as isize);
    let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;
    // SAFETY: F_ADD_SEALS takes an open descriptor and a bit set.
    assert_eq!(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals) }, 0);
    fd
}

/// A handle of `len` elements accessed `width` bytes at a time, over a
/// fresh memfd of `file_len` bytes, without a lock.
fn forged_as(len: u64, width: u8, file_len: usize, sealed: bool) -> ForgedArray {
    ForgedArray { region: Fd::new(memfd(file_len, sealed)), len, width, lock: None }
}

/// The same with the width of a `u64`.
fn forged(len: u64, file_len: usize, sealed: bool) -> ForgedArray {
    forged_as(len, 8, file_len, sealed)
}

#[track_caller]
fn assert_refused<T>(r: multiproc::Result<T>, what: &str) {
    match r {
        Ok(_) => panic!("{what} was accepted"),
        Err(e) => assert_eq!(e.kind(), ErrorKind::Deserialize, "{what}: {e}"),
    }
}

// --- item 8: shared-memory handles are checked against their memory ---------------

/// An 11-byte message made an `Array<u64>` of length 8 over an empty file,
/// whose `get`/`set` then crashed with SIGBUS. Any length that does not
/// match the memory is refused, whatever the lock.
#[test]
fn an_array_handle_longer_than_its_memory_is_refused() {
    if !crate::support::alone() {
        return;
    }
    assert_refused(pun::<_, Array<u64>>(forged(8, 0, true)), "8 u64s over 0 bytes");
    assert_refused(pun::<_, Array<u64>>(forged(8, 63, true)), "8 u64s over 63 bytes");
    assert_refused(pun::<_, Array<u64>>(forged(u64::MAX, 64, true)), "2^64-1 u64s");
    assert_refused(pun::<_, Array<u64>>(forged(1 << 61, 0, true)), "a length that overflows");
    let with_lock = ForgedArray {
        region: Fd::new(memfd(0, true)),
        len: 8,
        width: 8,
        lock: Some(Fd::new(memfd(4096, true))),
    };
    assert_refused(pun::<_, Array<u64>>(with_lock), "8 u64s over 0 bytes, with a lock");
    // The exact size is accepted, and usable.
    let a = pun::<_, Array<u64>>(forged(8, 64, true)).unwrap();
    a.set(7, 42).unwrap();
    assert_eq!(a.get(7).unwrap(), 42);
    assert_eq!(a.to_vec(), [0, 0, 0, 0, 0, 0, 0, 42]);
}

/// `Value::get` panicked on a handle of no elements: a value holds exactly one.
#[test]
fn a_value_handle_of_other_than_one_element_is_refused() {
    if !crate::support::alone() {
        return;
    }
    assert_refused(pun::<_, Value<u32>>(forged_as(0, 4, 0, true)), "a Value of 0 elements");
    assert_refused(pun::<_, Value<u32>>(forged_as(2, 4, 8, true)), "a Value of 2 elements");
    let v = pun::<_, Value<u32>>(forged_as(1, 4, 4, true)).unwrap();
    v.set(9);
    assert_eq!(v.get(), 9);
}

/// A real array sent as another element type describes other memory than
/// it has: refused rather than reinterpreted with the wrong length.
#[test]
fn an_array_received_as_another_element_type_is_refused() {
    if !crate::support::alone() {
        return;
    }
    let a = Array::from_slice(&[1u64, 2, 3]).unwrap();
    assert_refused(pun::<_, Array<u8>>(a.clone()), "3 u64s read as 3 u8s");
    assert_refused(pun::<_, Array<[u64; 2]>>(a.clone()), "3 u64s read as 3 [u64; 2]s");
    // Same size, other access width: two widths on one memory are refused.
    assert_refused(pun::<_, Array<[u32; 2]>>(a.clone()), "3 u64s read as 3 [u32; 2]s");
    assert_refused(pun::<_, Array<u64>>(forged_as(8, 4, 64, true)), "a forged width");
    // Same size and width: only the meaning of the bits differs.
    assert_eq!(pun::<_, Array<i64>>(a.clone()).unwrap().to_vec(), [1, 2, 3]);
    assert_eq!(pun::<_, Array<u64>>(a).unwrap().to_vec(), [1, 2, 3]);
}

/// A file that can shrink could shrink under the mapping: refused, as is a
/// descriptor that is no memfd at all.
#[test]
fn shared_memory_that_is_not_sealed_is_refused() {
    if !crate::support::alone() {
        return;
    }
    assert_refused(pun::<_, Array<u64>>(forged(8, 64, false)), "an unsealed memfd");
    assert_refused(pun::<_, Value<u64>>(forged(1, 8, false)), "an unsealed memfd as a Value");
    let (r, _w) = std::io::pipe().unwrap();
    let not_memfd = ForgedArray { region: Fd::new(OwnedFd::from(r)), len: 0, width: 8, lock: None };
    assert_refused(pun::<_, Array<u64>>(not_memfd), "a pipe as shared memory");
    // A lock or any other shared object is checked the same way.
    let unsealed_lock = ForgedArray {
        region: Fd::new(memfd(8, true)),
        len: 1,
        width: 8,
        lock: Some(Fd::new(memfd(4096, false))),
    };
    assert_refused(pun::<_, Value<u64>>(unsealed_lock), "a value whose lock is unsealed");
}

/// Any process holding a shared array's descriptor could shrink its file, and
/// the next access in every process that had mapped it died of SIGBUS. The
/// file's size is sealed: shrinking and growing fail, and the array stays
/// whole.
#[test]
fn no_process_can_shrink_or_grow_shared_memory() {
    if !crate::support::alone() {
        return;
    }
    let a = Array::from_slice(&[5u64; 8]).unwrap();
    let stolen: StolenArray = pun(a.clone()).unwrap();
    let fd = stolen.region.as_raw_fd();
    for size in [0, 8, 1 << 20] {
        // SAFETY: ftruncate on a descriptor this test owns.
        let r = unsafe { libc::ftruncate(fd, size) };
        let err = std::io::Error::last_os_error();
        assert_eq!(r, -1, "resizing the array's memory to {size} bytes succeeded");
        assert_eq!(err.raw_os_error(), Some(libc::EPERM), "resizing to {size}: {err}");
    }
    assert_eq!(a.get(7).unwrap(), 5);
    a.set(7, 6).unwrap();
    assert_eq!(a.to_vec(), [5, 5, 5, 5, 5, 5, 5, 6]);
}

/// An item too large for one message travels in a memfd, which the getter
/// maps; one that may shrink while mapped is refused (reading it would crash
/// with SIGBUS), and so is one that may still be written (its bytes could
/// change while they are decoded).
#[test]
fn a_large_queue_item_in_an_unsealed_file_is_refused() {
    if !crate::support::alone() {
        return;
    }
    #[derive(Deserialize)]
    struct Ends {
        tx: Fd<OwnedFd>,
        _rx: Fd<OwnedFd>,
        _mem: Fd<OwnedFd>,
        ring: Fd<OwnedFd>,
    }
    let q = Queue::<Vec<u8>>::new().unwrap();
    // The queue's own socket: whatever is written to it, its getters decode.
    let ends: Ends = pun(q.clone()).unwrap();
    let big = vec![7u8; 100_000];
    let mut body = Vec::new();
    // postcard: a length (varint), then the bytes.
    let mut n = big.len();
    while n >= 0x80 {
        body.push((n as u8) | 0x80);
        n >>= 7;
    }
    body.push(n as u8);
    body.extend_from_slice(&big);
    for (sealed, frozen) in [(false, false), (true, false), (false, true)] {
        let file = if frozen { frozen_memfd(&body) } else { memfd(body.len(), sealed) };
        if !frozen {
            // SAFETY: pwrite from a live buffer to a descriptor we own; a
            // sealed file may still be written, only not resized.
            let w = unsafe { libc::pwrite(file.as_raw_fd(), body.as_ptr().cast(), body.len(), 0) };
            assert_eq!(w, body.len() as isize);
        }
        // A large item: a record of one tag byte in the queue's ring, its
        // file a socket message the record names by id.
        let id = commit_record(&ends.ring, &[1]);
        send_with_fd(ends.tx.as_raw_fd(), &id.to_le_bytes(), file.as_raw_fd());
        let got = q.get_timeout(PROMPT);
        if frozen {
            assert_eq!(got.unwrap(), big, "a well-formed large item");
        } else {
            assert_refused(got, "a large item in a file that is not frozen");
        }
    }
}

/// Writes a record of `bytes` whose descriptors are a socket message into a
/// queue's ring (its memfd), as a put does, and returns the message's id.
/// Nothing else uses the queue meanwhile, so its mutex is not taken.
fn commit_record(ring: &Fd<OwnedFd>, bytes: &[u8]) -> u64 {
    use std::os::unix::fs::FileExt;
    const DATA: u64 = 1024;
    const CAP: u64 = 256 * 1024;
    // The header: lines of 128 bytes, the put mutex's, the get mutex's, then
    // the producers' (tail, the head a put last saw, the next message id),
    // then the consumers' (head).
    const TAIL_AT: u64 = 256;
    const ID_AT: u64 = 272;
    let file = std::fs::File::from(ring.try_clone().unwrap());
    let word = |off: u64| {
        let mut b = [0u8; 8];
        file.read_exact_at(&mut b, off).unwrap();
        u64::from_le_bytes(b)
    };
    let (tail, id) = (word(TAIL_AT), word(ID_AT));
    file.write_all_at(&(id + 1).to_le_bytes(), ID_AT).unwrap();
    let mut rec = Vec::new();
    rec.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    rec.extend_from_slice(&1u32.to_le_bytes());
    rec.extend_from_slice(&id.to_le_bytes());
    rec.extend_from_slice(bytes);
    rec.resize(16 + bytes.len().div_ceil(8) * 8, 0);
    assert!(tail % CAP + rec.len() as u64 <= CAP, "the test writes no record that wraps");
    file.write_all_at(&rec, DATA + tail % CAP).unwrap();
    file.write_all_at(&(tail + rec.len() as u64).to_le_bytes(), TAIL_AT).unwrap();
    id
}

/// Writes one message carrying one descriptor on a queue's socket (the
/// other end of the pair delivers it to the queue's getters).
fn send_with_fd(sock: i32, bytes: &[u8], fd: i32) {
    // SAFETY: the msghdr and everything it points to (one iovec over
    // `bytes`, a control buffer sized by CMSG_SPACE for one descriptor) live
    // until sendmsg returns.
    unsafe {
        let mut iov = libc::iovec { iov_base: bytes.as_ptr() as *mut _, iov_len: bytes.len() };
        let space = libc::CMSG_SPACE(4) as usize;
        let mut control = vec![0u64; space.div_ceil(8)];
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(4) as _;
        libc::CMSG_DATA(cmsg).cast::<i32>().write_unaligned(fd);
        let n = libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL);
        assert_eq!(n, bytes.len() as isize, "sendmsg: {}", std::io::Error::last_os_error());
    }
}

// --- item 9: a guard's `&mut` is never aliased --------------------------------------

/// Runs `f` on a thread; returns whether it was still blocked after
/// [`BLOCKED`], and a receiver that yields once it finishes.
fn blocks(f: impl FnOnce() + Send + 'static) -> (bool, mpsc::Receiver<()>) {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        f();
        let _ = tx.send(());
    });
    let blocked = rx.recv_timeout(BLOCKED).is_err();
    (blocked, rx)
}

/// `set` wrote without the lock while another thread's guard held `&mut` to
/// the same memory (undefined behaviour in safe code). Now `get`, `set` and
/// `to_vec` of a locked value or array wait for the guard to drop.
#[test]
fn get_and_set_wait_for_another_threads_guard() {
    if !crate::support::alone() {
        return;
    }
    let v = Value::new(0u64).unwrap();
    let mut g = v.lock().unwrap();
    let v2 = v.clone();
    let (blocked, done) = blocks(move || v2.set(5));
    assert!(blocked, "Value::set did not wait for the guard held by another thread");
    *g = 1;
    drop(g);
    done.recv_timeout(PROMPT).expect("Value::set finished once the guard dropped");
    assert_eq!(v.get(), 5, "the set came after the guard's write");

    let a = Array::from_slice(&[1u32, 2, 3]).unwrap();
    let mut g = a.lock().unwrap();
    let a2 = a.clone();
    let (seen_tx, seen) = mpsc::channel();
    let (blocked, done) = blocks(move || {
        let _ = seen_tx.send((a2.get(0).unwrap(), a2.to_vec()));
    });
    assert!(blocked, "Array::get did not wait for the guard held by another thread");
    g[0] = 10;
    drop(g);
    done.recv_timeout(PROMPT).expect("Array::get finished once the guard dropped");
    assert_eq!(seen.recv().unwrap(), (10, vec![10, 2, 3]));
}

fn hold_guard_until(v: Value<u32>, locked: Event, release: Event) {
    let mut g = v.lock().unwrap();
    locked.set();
    assert!(release.wait_timeout(STARTUP), "the parent never released the child");
    *g = 7;
}

/// Across processes the process-shared mutex serialises the guard in one
/// and `set` in the other.
#[test]
fn set_waits_for_a_guard_held_in_another_process() {
    if !crate::support::alone() {
        return;
    }
    let v = Value::new(0u32).unwrap();
    let (locked, release) = (Event::new().unwrap(), Event::new().unwrap());
    let mut p =
        start_daemon(Process::new(hold_guard_until, (v.clone(), locked.clone(), release.clone())));
    assert!(locked.wait_timeout(STARTUP), "the child never took its guard");
    let v2 = v.clone();
    let (blocked, done) = blocks(move || v2.set(9));
    assert!(blocked, "Value::set did not wait for the guard held by the child");
    release.set();
    done.recv_timeout(STARTUP).expect("Value::set finished once the child's guard dropped");
    join_ok(&mut p);
    assert_eq!(v.get(), 9, "the set came after the child's write");
}

/// In the thread that holds a guard, nothing else reaches the memory: a
/// second guard, `get`/`set` and releasing the lock by hand are refused (a
/// panic for `Value`, whose `get` returns no `Result`).
#[test]
fn the_thread_holding_a_guard_gets_no_second_way_in() {
    if !crate::support::alone() {
        return;
    }
    let a = Array::from_slice(&[1u32, 2]).unwrap();
    let mut g = a.lock().unwrap();
    g[1] = 20;
    assert_eq!(a.lock().map(drop).unwrap_err().kind(), ErrorKind::InvalidState);
    assert_eq!(a.get(0).unwrap_err().kind(), ErrorKind::InvalidState);
    assert_eq!(a.set(0, 3).unwrap_err().kind(), ErrorKind::InvalidState);
    let e = a.get_lock().unwrap().release().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidState, "{e}");
    // Still held: another thread cannot take it.
    let a2 = a.clone();
    let free = bounded(PROMPT, "try_acquire", move || {
        a2.get_lock().unwrap().try_acquire().unwrap().is_some()
    });
    assert!(!free, "release() freed a lock that a guard holds");
    g[0] = 10;
    drop(g);
    assert_eq!(a.to_vec(), [10, 20]);

    let v = Value::new(1u8).unwrap();
    let g = v.lock().unwrap();
    let v2 = v.clone();
    let r = std::panic::catch_unwind(move || v2.get());
    let msg = crate::support::panic_text(&*r.expect_err("Value::get inside a guard"));
    assert!(msg.contains("guard"), "the panic names the cause: {msg}");
    drop(g);
    assert_eq!(v.get(), 1);
}

/// Python's `with v.get_lock(): v.value += 1`: holding the lock without a
/// guard, the holder's `get`/`set` work (no reference exists), and other
/// threads wait.
#[test]
fn get_and_set_work_while_holding_the_lock_without_a_guard() {
    if !crate::support::alone() {
        return;
    }
    let v = Value::new(1u64).unwrap();
    let held = v.get_lock().unwrap().acquire().unwrap();
    v.set(v.get() + 1);
    let v2 = v.clone();
    let (blocked, done) = blocks(move || v2.set(v2.get() * 10));
    assert!(blocked, "another thread's get did not wait for the lock");
    v.set(v.get() + 1);
    drop(held);
    done.recv_timeout(PROMPT).expect("the other thread ran once the lock was free");
    assert_eq!(v.get(), 30);

    assert!(v.get_lock().unwrap().acquire_raw(true, None).unwrap());
    v.set(4);
    assert!(v.lock().is_err(), "a guard while this thread holds the lock");
    v.get_lock().unwrap().release().unwrap();
    assert_eq!(*v.lock().unwrap(), 4);
}

// --- item 18: a dropped queue costs nothing; live readers still get everything ------

/// An item big enough that a few hundred fill a queue's socket buffer, so
/// the rest wait in the outbox for the feeder thread.
fn item(i: u32) -> Vec<u8> {
    let mut v = vec![(i % 251) as u8; 1024];
    v[..4].copy_from_slice(&i.to_le_bytes());
    v
}

const ITEMS: u32 = 1000;

/// Feeder threads running in this process. A new thread names itself once
/// it runs, so a count right after a put may lag: wait with [`feeders_are`].
fn feeder_threads() -> usize {
    thread_ids()
        .into_iter()
        .filter(|t| {
            std::fs::read_to_string(format!("/proc/self/task/{t}/comm"))
                .is_ok_and(|c| c.starts_with("multiproc-queue"))
        })
        .count()
}

/// True once exactly `n` feeder threads run (within [`PROMPT`]).
fn feeders_are(n: usize) -> bool {
    eventually(PROMPT, || feeder_threads() == n)
}

/// Fills three queues no other process has and drops them.
fn fill_and_drop_three_queues(_: ()) {
    let queues: Vec<Queue<Vec<u8>>> = (0..3).map(|_| Queue::new().unwrap()).collect();
    for q in &queues {
        for i in 0..ITEMS {
            q.put(item(i)).unwrap();
        }
    }
    assert!(feeders_are(3), "the outboxes were not in use");
}

/// Each queue dropped with items no one could take held its process's exit
/// for 5 s (three queues: 15 s). Now they are discarded at once.
#[test]
fn a_process_dropping_queues_no_one_can_read_exits_at_once() {
    if !crate::support::alone() {
        return;
    }
    let start = Instant::now();
    let mut p = start_daemon(Process::new(fill_and_drop_three_queues, ()));
    assert!(p.join_timeout(Duration::from_secs(30)).unwrap(), "the child never exited");
    let took = start.elapsed();
    assert_eq!(p.exitcode(), Some(0), "the child failed");
    assert!(took < Duration::from_secs(4), "the child took {took:?} to exit (was 15 s)");
}

/// The feeder thread and the queue's three descriptors went on living after
/// the last handle was dropped; now they are gone.
#[test]
fn a_dropped_queue_leaves_no_thread_or_descriptor() {
    if !crate::support::alone() {
        return;
    }
    let fds = fd_count();
    assert_eq!(feeder_threads(), 0);
    let q = Queue::<Vec<u8>>::new().unwrap();
    for i in 0..ITEMS {
        q.put(item(i)).unwrap();
    }
    assert!(feeders_are(1), "the outbox was not in use");
    drop(q);
    assert!(
        eventually(PROMPT, || feeder_threads() == 0 && fd_count() == fds),
        "after the drop: {} feeder thread(s), {} descriptors (before: {fds})",
        feeder_threads(),
        fd_count()
    );
}

fn fill_and_return(q: Queue<Vec<u8>>) {
    for i in 0..ITEMS {
        q.put(item(i)).unwrap();
    }
    assert!(feeders_are(1), "the outbox was not in use");
}

/// A queue whose reader is alive in another process: the producer's exit
/// still waits for every item, even when the reader starts late.
#[test]
fn a_live_reader_in_another_process_still_gets_everything_at_exit() {
    if !crate::support::alone() {
        return;
    }
    let q = Queue::<Vec<u8>>::new().unwrap();
    let mut p = start_daemon(Process::new(fill_and_return, q.clone()));
    assert!(
        eventually(STARTUP, || q.full() || q.qsize() == ITEMS as usize),
        "the child never put its items"
    );
    std::thread::sleep(BLOCKED);
    assert!(p.is_alive(), "the child exited with items still in its outbox");
    for i in 0..ITEMS {
        assert_eq!(q.get_timeout(STARTUP).unwrap(), item(i), "item {i}");
    }
    join_ok(&mut p);
    assert_eq!(q.get_nowait().unwrap_err().kind(), ErrorKind::Empty);
}
