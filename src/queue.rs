//! `Queue` and `JoinableQueue`: many producers and consumers in any processes.
//!
//! Items travel in a ring of records in shared memory (see `ring`), with a
//! robust process-shared mutex for each end: a put copies the item's bytes
//! in and then commits them under the put mutex, a get copies them out and
//! then takes them under the get mutex, so producers and consumers do not
//! wait for each other, a producer or consumer killed at any point loses at
//! most its own in-flight item, no item arrives twice, and each producer's
//! items arrive in the order it put them. A put or get that finds its mutex
//! free and nobody asleep makes no system call. Getters that find the ring empty look again
//! for a few microseconds, then sleep on a futex that a put wakes only when
//! the header says someone sleeps.
//!
//! What cannot live in shared memory, an item's descriptors (handles inside
//! it, or the anonymous shared-memory file an item too large for a record
//! travels in), goes as a message on a socket pair of kind SOCK_SEQPACKET,
//! sent under the put mutex and named by the item's record. Counters
//! (`qsize`, free places of a bounded queue, unfinished tasks) live in
//! shared memory and are waited on with futexes.
//!
//! A put never waits for a consumer on an unbounded queue: when the ring is
//! full, items wait in this process's outbox and a feeder thread moves them
//! into the ring, in order, as room frees up; while the outbox holds items,
//! every later put of this process goes behind them. Nor does it wait for
//! another process: a robust mutex covers a holder that dies, not one that
//! is stopped (SIGSTOP, a debugger) or starved, so a put that cannot take
//! the put mutex within a couple of milliseconds leaves its item to the feeder
//! as well, and the feeder's own waits for it are bounded. A process
//! flushes its outboxes when it exits, for a bounded time; the items it
//! gives up on leave `qsize` and a `JoinableQueue`'s count of unfinished
//! tasks.
//!
//! The feeder holds only the sending end of the socket: the receiving end
//! lives in the handles. Once every handle in every process is gone, no one
//! can ever take the items: the feeder sees the socket hang up, drops the
//! rest and ends, so a dropped queue costs no thread, no descriptor and no
//! wait at exit. While some process still holds a handle, the items wait for
//! it (at exit, as long as it keeps taking them).

use std::collections::VecDeque;
use std::marker::PhantomData;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, OnceLock, Weak};

use crossbeam_utils::CachePadded;
use parking_lot::{Condvar, Mutex};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, ErrorKind, Result};
use crate::shm::Cell;
use crate::{fdpass, sys};

mod ring;
use ring::{LockWait, Ring};

/// Items larger than this travel in a shared-memory file.
const INLINE_MAX: usize = 32 * 1024;
/// The largest item a queue carries. A receiver copies an item's file
/// whole, so without a bound a peer could hand it a huge sparse file and make
/// it allocate without limit; the same bound as a pool result.
const ITEM_MAX: usize = 2 << 30;
// An inline item fits one ring record.
const _: () = assert!(INLINE_MAX <= ring::RECORD_MAX);
const TAG_INLINE: u8 = 0;
/// How long a put waits for the put mutex before it leaves the item to
/// the feeder thread. A holder keeps the mutex for well under a
/// microsecond; one that keeps it this long is stopped (SIGSTOP, a
/// debugger) or starved of CPU, and an unbounded put never waits for it.
const PUT_LOCK_WAIT: Duration = Duration::from_millis(2);
const TAG_FILE: u8 = 1;

/// A queue's counters, in shared memory.
///
/// What puts write and what gets write sit on cache lines of their own: a
/// producer and a consumer in lockstep would otherwise pull one line back and
/// forth for every item. (So `qsize` is two counters, not one both write.)
#[repr(C)]
struct QueueMem {
    put: CachePadded<PutCounts>,
    /// Items taken off the ring, and items dropped before they reached it,
    /// wrapping: written by gets (and by a feeder that drops items).
    takes: CachePadded<AtomicU32>,
    /// The bound (0: none): written once, read by every put and get.
    maxsize: AtomicU32,
    /// Free places of a bounded queue (the futex word producers wait on).
    free: AtomicU32,
}

/// The counters a put writes.
#[repr(C)]
struct PutCounts {
    /// Items put, wrapping: `qsize` is `puts - takes`.
    puts: AtomicU32,
    /// Items put and not yet marked done (JoinableQueue).
    unfinished: AtomicU32,
}

/// Why a put did not happen; the value comes back.
///
/// # Examples
///
/// ```
/// let q = multiproc::Queue::<u32>::bounded(1)?;
/// q.put(1).unwrap();
/// match q.put_nowait(2) {
///     Err(multiproc::PutError::Full(v)) => assert_eq!(v, 2), // the value comes back
///     other => panic!("{other:?}"),
/// }
/// # Ok::<(), multiproc::Error>(())
/// ```
#[derive(Debug)]
pub enum PutError<T> {
    /// The bounded queue was full ([`Queue::put_nowait`]).
    Full(T),
    /// The bounded queue stayed full for the whole timeout
    /// ([`Queue::put_timeout`]), or its shared memory stayed locked by
    /// another process (one that is stopped, say) for that long.
    Timeout(T),
    /// This handle was closed.
    Closed(T),
    /// The value could not be encoded, or the queue could not be written.
    Failed(T, Error),
}

impl<T> PutError<T> {
    /// The value that was not put.
    pub fn into_inner(self) -> T {
        match self {
            PutError::Full(v)
            | PutError::Timeout(v)
            | PutError::Closed(v)
            | PutError::Failed(v, _) => v,
        }
    }

    /// The failure as a crate [`Error`], dropping the value.
    pub fn into_error(self) -> Error {
        match self {
            PutError::Full(_) => Error::new(ErrorKind::Full, "the queue is full"),
            PutError::Timeout(_) => Error::timeout(
                "the queue stayed full (no place freed up) or locked by another process \
                     within the timeout",
            ),
            PutError::Closed(_) => closed(),
            PutError::Failed(_, e) => e,
        }
    }
}

impl<T> std::fmt::Display for PutError<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PutError::Full(_) => f.write_str("the queue is full"),
            PutError::Timeout(_) => f.write_str(
                "the queue stayed full (no place freed up) or locked by another process within \
                 the timeout",
            ),
            PutError::Closed(_) => f.write_str("the queue handle is closed"),
            PutError::Failed(_, e) => write!(f, "{e}"),
        }
    }
}

impl<T: std::fmt::Debug> std::error::Error for PutError<T> {}

fn closed() -> Error {
    Error::new(ErrorKind::Closed, "this queue handle was closed; no more put or get through it")
}

/// Items in order, their bytes back to back in one buffer: an item put
/// behind a busy feeder costs a copy and 8 bytes, not an allocation (and a
/// free on another thread).
#[derive(Default)]
struct Messages {
    bytes: Vec<u8>,
    /// Each item's end in `bytes`.
    ends: Vec<usize>,
    /// The descriptors of the items that have some, by item index (in
    /// order; most items have none).
    fds: VecDeque<(usize, Vec<OwnedFd>)>,
    /// The items before this one are sent (their descriptors closed).
    sent: usize,
}

impl Messages {
    /// A buffer larger than this after a burst is not kept for the next.
    const KEEP_MAX: usize = 1 << 20;

    /// Items not sent yet.
    fn len(&self) -> usize {
        self.ends.len() - self.sent
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn push(&mut self, bytes: &[u8], fds: Vec<OwnedFd>) {
        if !fds.is_empty() {
            self.fds.push_back((self.ends.len(), fds));
        }
        self.bytes.extend_from_slice(bytes);
        self.ends.push(self.bytes.len());
    }

    /// The `i`-th item not sent yet (`i < len()`).
    fn get(&self, i: usize) -> (&[u8], &[OwnedFd]) {
        let k = self.sent + i;
        let start = k.checked_sub(1).map_or(0, |before| self.ends[before]);
        let fds = match self.fds.binary_search_by_key(&k, |(at, _)| *at) {
            Ok(at) => &self.fds[at].1[..],
            Err(_) => &[][..],
        };
        (&self.bytes[start..self.ends[k]], fds)
    }

    /// The first `n` items not sent yet are sent: their descriptors (whose
    /// copies went with them) are closed now.
    fn advance(&mut self, n: usize) {
        self.sent += n.min(self.len());
        while self.fds.front().is_some_and(|(at, _)| *at < self.sent) {
            self.fds.pop_front();
        }
        if self.sent == self.ends.len() {
            self.clear();
        }
    }

    /// Drops every item; the buffers are kept unless a burst grew them.
    fn clear(&mut self) {
        self.ends.clear();
        self.bytes.clear();
        self.fds.clear();
        self.sent = 0;
        if self.bytes.capacity() > Self::KEEP_MAX {
            self.bytes = Vec::new();
        }
        if self.ends.capacity() * size_of::<usize>() > Self::KEEP_MAX {
            self.ends = Vec::new();
        }
    }
}

/// Items this process could not send yet, in order.
#[derive(Default)]
struct Outbox {
    items: Mutex<Unsent>,
    drained: Condvar,
}

/// What an outbox holds, under its mutex.
#[derive(Default)]
struct Unsent {
    /// Waiting for the feeder.
    queued: Messages,
    /// Taken by the feeder and not in the ring yet (they come before
    /// `queued`).
    feeding: usize,
    /// A feeder thread is at work: puts queue behind it.
    feeder: bool,
    /// The exit flush gave up on these items: the feeder drops them all,
    /// takes them out of the queue's counts and ends (see `flush_at_exit`).
    abandoned: bool,
    /// How many the feeder dropped when it found `abandoned`: fewer than
    /// the flush saw left when its last push still moved some.
    abandoned_dropped: Option<usize>,
}

impl Unsent {
    /// Items put here and not in the ring yet.
    fn len(&self) -> usize {
        self.queued.len() + self.feeding
    }
}

/// What a process's handles and its feeder thread share. Not the receiving
/// end (see the module comment): that is in [`Queue::rx`].
struct Shared {
    tx: OwnedFd,
    mem: Cell<QueueMem>,
    ring: Ring,
    /// Written after a put while async getters wait (see `aio`): no
    /// descriptor reports the ring itself.
    wake: Arc<sys::EventFd>,
    outbox: Arc<Outbox>,
    closed: AtomicBool,
}

impl Shared {
    fn new(tx: OwnedFd, mem: Cell<QueueMem>, ring: Ring, wake: sys::EventFd) -> Arc<Shared> {
        let outbox = Arc::new(Outbox::default());
        register_outbox(&outbox);
        let wake = Arc::new(wake);
        Arc::new(Shared { tx, mem, ring, wake, outbox, closed: AtomicBool::new(false) })
    }

    /// Takes `n` items that will never reach the ring out of the counts
    /// their puts added to: `qsize`, a `JoinableQueue`'s unfinished tasks
    /// (or its `join` would wait for them forever) and a bounded queue's
    /// free places.
    fn uncount(&self, n: usize) {
        if n == 0 {
            return;
        }
        let n = u32::try_from(n).unwrap_or(u32::MAX);
        let m = self.mem.get();
        let less = |c: u32| Some(c.saturating_sub(n));
        m.takes.fetch_add(n, Ordering::SeqCst);
        let _ = m.put.unfinished.fetch_update(Ordering::SeqCst, Ordering::SeqCst, less);
        if m.maxsize.load(Ordering::SeqCst) != 0 {
            m.free.fetch_add(n, Ordering::SeqCst);
            sys::futex_wake(&m.free, i32::try_from(n).unwrap_or(i32::MAX));
        }
        sys::futex_wake(&m.put.unfinished, i32::MAX);
    }

    /// Drops every item of this outbox not in the ring yet, the feeder's
    /// `batch` and those queued behind it, and takes them out of the counts.
    /// The number dropped.
    fn drop_unsent(&self, items: &mut Unsent, batch: &mut Messages) -> usize {
        let n = items.queued.len() + batch.len();
        items.queued.clear();
        batch.clear();
        items.feeding = 0;
        self.uncount(n);
        n
    }

    /// After a commit: wakes the async getters, if any waits.
    fn committed(&self) {
        if self.ring.async_waiters().load(Ordering::SeqCst) != 0 {
            self.wake.notify();
        }
    }
}

/// A FIFO queue shared by processes: Python's `multiprocessing.Queue`.
///
/// Clones are the same queue; pass one to a [`Process`](crate::Process) or a
/// pool task to use it there.
///
/// # Examples
///
/// ```
/// use multiproc::{Process, Queue};
///
/// fn produce(q: Queue<u32>) { for i in 0..3 { q.put(i).unwrap(); } }
///
/// let q = Queue::new()?;
/// let mut p = Process::new(produce, q.clone());
/// p.start()?;
/// let got: Vec<u32> = (0..3).map(|_| q.get().unwrap()).collect();
/// assert_eq!(got, vec![0, 1, 2]);
/// p.join()?;
/// # Ok::<(), multiproc::Error>(())
/// ```
pub struct Queue<T> {
    shared: Arc<Shared>,
    /// The receiving end, held by the handles alone (never by the feeder).
    rx: Arc<OwnedFd>,
    _t: PhantomData<fn(T) -> T>,
}

impl<T> Clone for Queue<T> {
    fn clone(&self) -> Self {
        Queue { shared: self.shared.clone(), rx: self.rx.clone(), _t: PhantomData }
    }
}

impl<T> Queue<T> {
    /// An unbounded queue.
    ///
    /// # Errors
    /// When the socket pair or shared memory cannot be created.
    ///
    /// # Examples
    ///
    /// ```
    /// let q = multiproc::Queue::<String>::new()?;
    /// q.put("hello".to_string()).unwrap();
    /// assert_eq!(q.get()?, "hello");
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    pub fn new() -> Result<Queue<T>> {
        Self::bounded(0)
    }

    /// A queue of at most `maxsize` items (0: unbounded, as in Python).
    ///
    /// # Errors
    /// As [`new`](Queue::new).
    ///
    /// # Examples
    ///
    /// ```
    /// let q = multiproc::Queue::<u32>::bounded(1)?;
    /// q.put(1).unwrap();
    /// assert!(q.put_nowait(2).is_err()); // full
    /// assert_eq!(q.get()?, 1);
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    pub fn bounded(maxsize: u32) -> Result<Queue<T>> {
        let (tx, rx) = sys::message_pair().map_err(|e| Error::io("could not create a queue", e))?;
        let mem = Cell::<QueueMem>::zeroed()?;
        mem.get().maxsize.store(maxsize, Ordering::SeqCst);
        mem.get().free.store(maxsize, Ordering::SeqCst);
        let ring = Ring::new()?;
        let wake = sys::EventFd::new()
            .map_err(|e| Error::io("could not create a queue's wake-up descriptor", e))?;
        Ok(Queue { shared: Shared::new(tx, mem, ring, wake), rx: Arc::new(rx), _t: PhantomData })
    }

    fn mem(&self) -> &QueueMem {
        self.shared.mem.get()
    }

    /// The number of items in the queue (approximate while others use it).
    pub fn qsize(&self) -> usize {
        let m = self.mem();
        // Takes first: every take follows its put, so puts read after it
        // are at least as many, unless another process wrote over the
        // counters (then this says 0, not four billion).
        let takes = m.takes.load(Ordering::SeqCst);
        let n = m.put.puts.load(Ordering::SeqCst).wrapping_sub(takes);
        if n > i32::MAX as u32 {
            0
        } else {
            n as usize
        }
    }

    /// True when the queue holds no item (approximate).
    pub fn empty(&self) -> bool {
        self.qsize() == 0
    }

    /// The number of items in the queue: [`qsize`](Self::qsize) by its Rust name.
    pub fn len(&self) -> usize {
        self.qsize()
    }

    /// True when the queue holds no item: [`empty`](Self::empty) by its Rust name.
    pub fn is_empty(&self) -> bool {
        self.empty()
    }

    /// True when a bounded queue is at its bound (approximate).
    pub fn full(&self) -> bool {
        let max = self.mem().maxsize.load(Ordering::SeqCst);
        max != 0 && self.qsize() >= max as usize
    }

    /// The bound, or 0 for none.
    pub fn maxsize(&self) -> u32 {
        self.mem().maxsize.load(Ordering::SeqCst)
    }

    /// Closes this process's handle (every clone of it here): later puts and
    /// gets through it fail. Items already put are still delivered.
    pub fn close(&self) {
        self.shared.closed.store(true, Ordering::SeqCst);
    }

    fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::SeqCst)
    }

    /// Takes a free place of a bounded queue; false when none came by the
    /// deadline (`None`: no deadline).
    fn take_place(&self, deadline: Option<Instant>) -> bool {
        let m = self.mem();
        if m.maxsize.load(Ordering::SeqCst) == 0 {
            return true;
        }
        loop {
            let f = m.free.load(Ordering::SeqCst);
            if f > 0 {
                if m.free.compare_exchange(f, f - 1, Ordering::SeqCst, Ordering::SeqCst).is_ok() {
                    return true;
                }
                continue;
            }
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if left == Some(Duration::ZERO) {
                return false;
            }
            sys::futex_wait(&m.free, 0, left);
        }
    }

    fn give_place(&self) {
        let m = self.mem();
        if m.maxsize.load(Ordering::SeqCst) != 0 {
            m.free.fetch_add(1, Ordering::SeqCst);
            sys::futex_wake(&m.free, 1);
        }
    }

    /// Puts one item in the ring now, or leaves it to the feeder thread
    /// (only then are its bytes copied out of the caller's buffer): when the
    /// ring is full, and when the put mutex stays busy for [`PUT_LOCK_WAIT`]
    /// (its holder is stopped or starved: a put does not wait for it).
    ///
    /// With a `deadline` (a timed put on a bounded queue) a busy mutex is
    /// waited for until then instead, and `Ok(false)` when it stayed busy:
    /// nothing was put. The outbox is let go between the waits, so the
    /// other threads' puts meanwhile wait for it at most one of them.
    /// `lock` bounds each wait for the mutex ([`PUT_LOCK_WAIT`], or not at
    /// all for a put that must not block its thread: `put_async`).
    fn send(
        &self,
        bytes: &[u8],
        fds: Vec<OwnedFd>,
        deadline: Option<Instant>,
        lock: LockWait,
    ) -> Result<bool> {
        let outbox = &self.shared.outbox;
        let tx = self.shared.tx.as_fd();
        let mut items = loop {
            let items = outbox.items.lock();
            // Only when no feeder is at work: it may be waiting for room
            // (or for the mutex) for an item it already took off the
            // outbox, which must not be overtaken.
            if items.feeder {
                break items;
            }
            match self.shared.ring.try_push(bytes, &fds, tx, lock)? {
                Some(true) => {
                    self.shared.committed();
                    return Ok(true);
                }
                // No room: the feeder waits for it.
                Some(false) => break items,
                None => match deadline {
                    None => break items,
                    Some(d) => {
                        drop(items);
                        if Instant::now() >= d {
                            return Ok(false);
                        }
                    }
                },
            }
        };
        items.queued.push(bytes, fds);
        if !items.feeder {
            items.feeder = true;
            // The feeder keeps the sending end alive until the outbox is sent,
            // even if every handle in this process is dropped meanwhile; once
            // no process holds the receiving end, it drops the rest and ends.
            let shared = self.shared.clone();
            std::thread::Builder::new()
                .name("multiproc-queue-feeder".into())
                .spawn(move || feed(shared))
                .map_err(|e| Error::io("could not start a queue feeder thread", e))?;
        }
        Ok(true)
    }

    /// Takes both of this queue's shared mutexes, stops this process
    /// (SIGSTOP) while holding them, and lets it go when the process is continued: the
    /// stalled peer of the tests. Not part of the API.
    #[doc(hidden)]
    pub fn __hold_lock_stopped(&self) -> Result<()> {
        self.shared.ring.hold_lock_stopped()
    }

    /// The descriptor readable after a put while async getters wait.
    pub(crate) fn wake_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.shared.wake.fd()
    }

    /// Clears the wake-up descriptor before a look at the ring.
    pub(crate) fn drain_wake(&self) {
        self.shared.wake.drain();
    }

    /// Counts an async getter as waiting until the guard drops.
    pub(crate) fn async_waiting(&self) -> AsyncWaiting<'_> {
        self.shared.ring.async_waiters().fetch_add(1, Ordering::SeqCst);
        AsyncWaiting { queue: self.shared.as_ref() }
    }

    /// After an async get took an item: items left and other async
    /// getters waiting, one of which may have missed the wake-up this one
    /// cleared: wake them again.
    pub(crate) fn pass_wake_on(&self) {
        let r = &self.shared.ring;
        if r.async_waiters().load(Ordering::SeqCst) > 1 && !r.looks_empty() {
            self.shared.wake.notify();
        }
    }

    /// Takes one item off the ring, its bytes into `buf`, or none
    /// (`Ok(None)`) when there is none now; `wait` bounds the wait for the
    /// get mutex.
    fn try_receive(&self, wait: LockWait, buf: &mut Vec<u8>) -> Result<Option<Vec<OwnedFd>>> {
        // Each record taken (ours, or a dead consumer's dropped one) leaves
        // the count and gives its place back inside `try_pop`, under the
        // get mutex: a consumer killed after its take must leave neither
        // `qsize` too high nor a bounded queue a place short (its producers
        // would then wait for a place that never comes).
        let left = || {
            let m = self.mem();
            m.takes.fetch_add(1, Ordering::SeqCst);
            self.give_place();
        };
        let Some(t) = self.shared.ring.try_pop(self.rx.as_fd(), wait, buf, &left)? else {
            return Ok(None);
        };
        Ok(Some(t.fds))
    }

    /// Takes the next item's bytes into `buf` and returns its descriptors.
    /// `timeout == Some(ZERO)` never waits, not even for a busy mutex.
    fn receive(&self, timeout: Option<Duration>, buf: &mut Vec<u8>) -> Result<Vec<OwnedFd>> {
        /// Glances at an empty ring before sleeping: a producer in another
        /// process often commits within microseconds, and a futex sleep and
        /// wake-up cost more than that on both sides.
        const SPINS: u32 = 200;
        const YIELDS: u32 = 20;
        /// A sleeping getter looks again at least this often: a wake-up
        /// taken by a getter that was then killed is not waited for
        /// forever. A live put wakes a sleeper at once (see `Ring::wait_put`).
        const SLEEP_MAX: Duration = Duration::from_millis(100);
        let deadline = timeout.and_then(crate::deadline_after);
        let wait = match (timeout, deadline) {
            (Some(Duration::ZERO), _) => LockWait::Try,
            (_, Some(d)) => LockWait::Until(d),
            (_, None) => LockWait::Forever,
        };
        let ring = &self.shared.ring;
        let mut idle = 0u32;
        loop {
            if let Some(fds) = self.try_receive(wait, buf)? {
                return Ok(fds);
            }
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if matches!(wait, LockWait::Try) || left == Some(Duration::ZERO) {
                return Err(Error::timeout(
                    "the queue stayed empty: no item came within the timeout",
                ));
            }
            if !ring.looks_empty() {
                // The mutex was busy: try again.
                continue;
            }
            idle += 1;
            if idle <= SPINS {
                std::hint::spin_loop();
            } else if idle <= SPINS + YIELDS {
                std::thread::yield_now();
            } else {
                ring.wait_put(left.map_or(SLEEP_MAX, |l| l.min(SLEEP_MAX)));
            }
        }
    }
}

/// An async getter counted as waiting (see [`Queue::async_waiting`]).
pub(crate) struct AsyncWaiting<'a> {
    queue: &'a Shared,
}

impl Drop for AsyncWaiting<'_> {
    fn drop(&mut self) {
        let _ =
            self.queue
                .ring
                .async_waiters()
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |c| c.checked_sub(1));
    }
}

/// Puts a process's outbox in the ring in order, waiting for room as the
/// consumers make it.
fn feed(s: Arc<Shared>) {
    /// The longest wait for room before the feeder looks whether any
    /// process still holds the receiving end.
    const NAP: Duration = Duration::from_millis(5);
    /// The most items written to the ring under one hold of the put mutex
    /// (another producer's put waits for that hold to end; gets do not).
    const BATCH: usize = 256;
    // The feeder takes the outbox's whole contents at once and gives it its
    // own emptied buffers in exchange: two buffers between them, reused.
    let mut batch = Messages::default();
    loop {
        if batch.is_empty() {
            // (`feeding` is 0: it follows the batch's length.)
            let mut items = s.outbox.items.lock();
            if items.queued.is_empty() {
                items.feeder = false;
                s.outbox.drained.notify_all();
                return;
            }
            std::mem::swap(&mut batch, &mut items.queued);
            items.feeding = batch.len();
        }
        let sent = loop {
            let n = batch.len().min(BATCH);
            match s.ring.push_each_or_wait(n, |i| batch.get(i), s.tx.as_fd(), NAP) {
                Ok(moved) => {
                    let mut items = s.outbox.items.lock();
                    if moved > 0 {
                        s.committed();
                        batch.advance(moved);
                        items.feeding = batch.len();
                    }
                    if items.abandoned {
                        // The process is exiting without these items.
                        let n = s.drop_unsent(&mut items, &mut batch);
                        items.abandoned_dropped = Some(n);
                        items.feeder = false;
                        s.outbox.drained.notify_all();
                        return;
                    }
                    if moved > 0 {
                        drop(items);
                        s.outbox.drained.notify_all();
                        break Ok(());
                    }
                }
                Err(e) => break Err((e, false)),
            }
            let gone = sys::poll(
                [sys::Interest { fd: s.tx.as_fd(), read: false, write: false }],
                Some(Duration::ZERO),
            )
            .is_ok_and(|[r]| r.hangup);
            if gone {
                break Err((
                    Error::new(
                        ErrorKind::Closed,
                        "no process holds the queue's receiving end any more",
                    ),
                    true,
                ));
            }
        };
        if let Err((e, gone)) = sent {
            // These items cannot be delivered: take back what their puts counted.
            let dropped = if gone {
                // No one can ever read (every reader is gone): drop the rest too.
                s.drop_unsent(&mut s.outbox.items.lock(), &mut batch)
            } else {
                batch.advance(1);
                s.outbox.items.lock().feeding = batch.len();
                s.uncount(1);
                1
            };
            report!(ERROR, dropped = dropped, error: display = e; "multiproc: {dropped} queue item(s) could not be sent and were dropped: {e}");
            if gone {
                let mut items = s.outbox.items.lock();
                items.feeder = false;
                s.outbox.drained.notify_all();
                return;
            }
        }
    }
}

fn outboxes() -> &'static Mutex<Vec<Weak<Outbox>>> {
    static OUTBOXES: OnceLock<Mutex<Vec<Weak<Outbox>>>> = OnceLock::new();
    OUTBOXES.get_or_init(|| {
        // Items put by this process are delivered before it exits, as long
        // as consumers take them; if none is taken for a while, the rest is
        // dropped with a message rather than hanging the exit forever.
        extern "C" fn flush_at_exit() {
            const STALL: Duration = Duration::from_secs(5);
            let boxes = outboxes().lock().clone();
            for b in boxes.iter().filter_map(Weak::upgrade) {
                // A put holds the outbox while it tries the put mutex,
                // which is bounded (see `Queue::send`); the exit does not
                // count on it all the same.
                let Some(mut items) = b.items.try_lock_for(STALL) else {
                    report!(
                        ERROR, pid = std::process::id();
                        "multiproc: process {} exits with a queue outbox held by another thread \
                         for {STALL:?}; its items are dropped",
                        std::process::id()
                    );
                    continue;
                };
                let (mut left, mut since) = (items.len(), Instant::now());
                while items.feeder {
                    b.drained.wait_for(&mut items, Duration::from_millis(50));
                    if items.len() != left {
                        (left, since) = (items.len(), Instant::now());
                    } else if items.feeder && since.elapsed() >= STALL {
                        // The feeder drops them and takes them out of the
                        // queue's counts: left counted, they would keep
                        // `qsize` up and a `JoinableQueue::join` waiting
                        // forever. It looks at least once a nap (its waits
                        // for the ring are that short), so this wait is brief.
                        let left = items.len();
                        items.abandoned = true;
                        let until = Instant::now() + Duration::from_secs(1);
                        while items.feeder && Instant::now() < until {
                            b.drained.wait_for(&mut items, Duration::from_millis(50));
                        }
                        let counted = if items.feeder {
                            "; the feeder did not answer, so they still count in qsize"
                        } else {
                            ""
                        };
                        // What the feeder dropped, not what was left when
                        // it was told: its last push may have moved some.
                        let dropped = items.abandoned_dropped.unwrap_or(left);
                        report!(
                            ERROR, pid = std::process::id(), dropped = dropped;
                            "multiproc: process {} exits with {} queue item(s) that did not \
                             move into the queue for {STALL:?} (no one took any, or a stopped \
                             process holds the queue's lock); they are dropped{counted}",
                            std::process::id(),
                            dropped
                        );
                        break;
                    }
                }
            }
        }
        crate::sys::at_exit(flush_at_exit);
        Mutex::new(Vec::new())
    })
}

fn register_outbox(outbox: &Arc<Outbox>) {
    let mut all = outboxes().lock();
    all.retain(|w| w.strong_count() > 0);
    all.push(Arc::downgrade(outbox));
}

thread_local! {
    /// Each thread's buffer for the bytes of the item it puts or gets: no
    /// allocation per item (see [`with_scratch`]).
    static PUT_SCRATCH: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
    static GET_SCRATCH: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Runs `f` with this thread's buffer from `slot` (an empty one if a call
/// further up the stack has it), and keeps it afterwards unless it grew
/// beyond what an inline item needs.
fn with_scratch<R>(
    slot: &'static std::thread::LocalKey<std::cell::Cell<Vec<u8>>>,
    f: impl FnOnce(&mut Vec<u8>) -> R,
) -> R {
    // `try_with`: a put or get from another thread-local's destructor,
    // after this one is gone, uses a buffer of its own.
    let mut buf = slot.try_with(std::cell::Cell::take).unwrap_or_default();
    let r = f(&mut buf);
    if buf.capacity() <= 2 * INLINE_MAX {
        let _ = slot.try_with(|s| s.set(buf));
    } else {
        // A large item's buffer, its bytes gone into a file by now.
        crate::spare::give(buf);
    }
    r
}

/// Encodes `value` into `buf` as the queue's message bytes and returns the
/// descriptors that go with them.
fn encode<T: Serialize>(value: &T, buf: &mut Vec<u8>) -> Result<Vec<OwnedFd>> {
    buf.clear();
    buf.push(TAG_INLINE);
    let (done, mut fds) = fdpass::collect(|| crate::codec::encode_into(value, buf));
    done.map_err(|e| {
        Error::new(
            ErrorKind::Serialize,
            format!(
                "could not serialize a `{}` to put on a queue: {e}",
                std::any::type_name::<T>()
            ),
        )
    })?;
    if fds.len() + 1 > sys::MAX_FDS_PER_MESSAGE {
        return Err(Error::new(
            ErrorKind::InvalidArgument,
            format!(
                "an item carrying {} handles cannot be put: a queue item carries at most {}",
                fds.len(),
                sys::MAX_FDS_PER_MESSAGE - 1
            ),
        ));
    }
    if buf.len() <= INLINE_MAX {
        return Ok(fds);
    }
    if buf.len() - 1 > ITEM_MAX {
        return Err(Error::new(
            ErrorKind::InvalidArgument,
            format!(
                "an item of {} bytes cannot be put: a queue item holds at most {ITEM_MAX} bytes; \
                 send large data in parts, or share it through an `Array`",
                buf.len() - 1
            ),
        ));
    }
    // Too large for one message: the item goes in a frozen shared-memory
    // file, which the receiver maps (see `wire::Mapped`).
    let file = sys::memfd_frozen(&[&buf[1..]])
        .map_err(|e| Error::io("could not put a large item in shared memory", e))?;
    fds.insert(0, file);
    buf.clear();
    buf.push(TAG_FILE);
    Ok(fds)
}

fn decode<T: DeserializeOwned>(bytes: &[u8], mut fds: Vec<OwnedFd>) -> Result<T> {
    let fail = |e: String| {
        Error::new(
            ErrorKind::Deserialize,
            format!("an item on the queue is not a `{}`: {e}", std::any::type_name::<T>()),
        )
    };
    match bytes.first() {
        Some(&TAG_INLINE) => fdpass::supply(fds, || crate::codec::decode(&bytes[1..]))
            .map_err(|e| fail(e.to_string())),
        Some(&TAG_FILE) if !fds.is_empty() => {
            let file = fds.remove(0);
            let len = sys::file_len(file.as_fd())
                .map_err(|e| Error::io("could not read a queue item", e))?;
            if len > ITEM_MAX {
                return Err(fail(format!(
                    "its shared-memory file holds {len} bytes, more than the {ITEM_MAX} a queue \
                     item may; it is refused"
                )));
            }
            // Only a file sealed as multiproc seals its own is mapped: one
            // that may shrink or be written could change while it is read.
            let mapped = crate::wire::Mapped::open(file, len, "queue item").map_err(|v| {
                fail(format!("{v} (not put by multiproc, or by an older version); it is refused"))
            })?;
            // Large `Bytes` in the item view the file instead of copying it.
            let mapped = std::sync::Arc::new(mapped);
            let _share = crate::bytes::share_from(Some(mapped.clone()));
            fdpass::supply(fds, || crate::codec::decode(mapped.bytes()))
                .map_err(|e| fail(e.to_string()))
        }
        _ => Err(fail("malformed message".into())),
    }
}

/// [`decode`] for the fuzz targets, which cannot build a [`Message`].
#[cfg(feature = "fuzzing")]
pub(crate) fn decode_for_fuzz<T: DeserializeOwned>(bytes: Vec<u8>, fds: Vec<OwnedFd>) -> Result<T> {
    decode(&bytes, fds)
}

impl<T: Serialize> Queue<T> {
    fn put_within(
        &self,
        value: T,
        timeout: Option<Duration>,
        lock: LockWait,
    ) -> std::result::Result<(), PutError<T>> {
        if self.is_closed() {
            return Err(PutError::Closed(value));
        }
        with_scratch(&PUT_SCRATCH, |buf| {
            let fds = match encode(&value, buf) {
                Ok(fds) => fds,
                Err(e) => return Err(PutError::Failed(value, e)),
            };
            // Only a bounded queue's put has a deadline (for its place, and
            // for the put mutex): an unbounded queue's put never waits.
            let deadline = match timeout {
                Some(t) if self.maxsize() != 0 => crate::deadline_after(t),
                _ => None,
            };
            if !self.take_place(deadline) {
                return Err(PutError::Timeout(value));
            }
            let m = self.mem();
            m.put.unfinished.fetch_add(1, Ordering::SeqCst);
            m.put.puts.fetch_add(1, Ordering::SeqCst);
            let undo = || {
                m.put.puts.fetch_sub(1, Ordering::SeqCst);
                m.put.unfinished.fetch_sub(1, Ordering::SeqCst);
                self.give_place();
            };
            match self.send(buf, fds, deadline, lock) {
                Ok(true) => Ok(()),
                Ok(false) => {
                    undo();
                    Err(PutError::Timeout(value))
                }
                Err(e) => {
                    undo();
                    Err(PutError::Failed(value, e))
                }
            }
        })
    }

    /// Puts `value`, waiting for a free place if the queue is bounded and full.
    ///
    /// # Errors
    /// [`PutError::Closed`] after [`close`](Queue::close);
    /// [`PutError::Failed`] when the value cannot be encoded. The value comes back.
    ///
    /// # Examples
    ///
    /// ```
    /// let q = multiproc::Queue::<u32>::new()?;
    /// q.put(7).map_err(|e| e.into_error())?;
    /// assert_eq!(q.get()?, 7);
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    pub fn put(&self, value: T) -> std::result::Result<(), PutError<T>> {
        self.put_within(value, None, LockWait::For(PUT_LOCK_WAIT))
    }

    /// Puts `value`, waiting at most `timeout` for a free place.
    ///
    /// # Errors
    /// As [`put`](Queue::put), and [`PutError::Timeout`] when no place freed
    /// up in time (its error is [`ErrorKind::Timeout`], as for every timed
    /// wait), or when, on a bounded queue, its shared memory stayed locked
    /// by another process (a stopped one) that long. On an unbounded queue
    /// it is [`put`](Queue::put): it never waits.
    pub fn put_timeout(&self, value: T, timeout: Duration) -> std::result::Result<(), PutError<T>> {
        self.put_within(value, Some(timeout), LockWait::For(PUT_LOCK_WAIT))
    }

    /// Puts `value` only if there is a free place now (Python's `put_nowait`).
    ///
    /// # Errors
    /// As [`put`](Queue::put), and [`PutError::Full`] when the queue is full
    /// (or, a bounded queue, its shared memory stayed locked by another
    /// process for the couple of milliseconds a put waits for it).
    pub fn put_nowait(&self, value: T) -> std::result::Result<(), PutError<T>> {
        self.put_nowait_with(value, LockWait::For(PUT_LOCK_WAIT))
    }

    fn put_nowait_with(&self, value: T, lock: LockWait) -> std::result::Result<(), PutError<T>> {
        match self.put_within(value, Some(Duration::ZERO), lock) {
            Err(PutError::Timeout(v)) => Err(PutError::Full(v)),
            put => put,
        }
    }

    /// As [`put_nowait`](Queue::put_nowait), but a bounded queue's put does
    /// not wait for the put mutex at all: [`PutError::Full`] when it is
    /// busy too, for the caller to try again (`put_async`, whose thread is
    /// an executor's). An unbounded queue's put waits for it as briefly as
    /// ever, then leaves the item to the feeder, which never waits again.
    pub(crate) fn put_now(&self, value: T) -> std::result::Result<(), PutError<T>> {
        let lock = if self.maxsize() != 0 { LockWait::Try } else { LockWait::For(PUT_LOCK_WAIT) };
        self.put_nowait_with(value, lock)
    }
}

impl<T: DeserializeOwned> Queue<T> {
    fn get_within(&self, timeout: Option<Duration>) -> Result<T> {
        if self.is_closed() {
            return Err(closed());
        }
        with_scratch(&GET_SCRATCH, |buf| {
            // The item left the count, and gave its place back, with its
            // record (in `try_receive`).
            let fds = self.receive(timeout, buf)?;
            decode(buf, fds)
        })
    }

    /// Takes the next item, waiting as long as it takes.
    ///
    /// # Errors
    /// [`ErrorKind::Closed`] after [`close`](Queue::close);
    /// [`ErrorKind::Deserialize`] for an item that is not a `T` (it is consumed).
    ///
    /// # Examples
    ///
    /// ```
    /// let q = multiproc::Queue::<u32>::new()?;
    /// let mut p = multiproc::Process::new(|q: multiproc::Queue<u32>| q.put(42).unwrap(), q.clone());
    /// p.start()?;
    /// assert_eq!(q.get()?, 42); // put by the child process
    /// p.join()?;
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    pub fn get(&self) -> Result<T> {
        self.get_within(None)
    }

    /// Takes the next item, waiting at most `timeout`.
    ///
    /// # Errors
    /// [`ErrorKind::Timeout`] when none came in time (as every timed wait);
    /// as [`get`](Queue::get).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let q = multiproc::Queue::<u32>::new()?;
    /// assert!(q.get_timeout(Duration::from_millis(10)).unwrap_err().is_timeout());
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    pub fn get_timeout(&self, timeout: Duration) -> Result<T> {
        self.get_within(Some(timeout))
    }

    /// Takes an item only if one is there now (Python's `get_nowait`).
    ///
    /// # Errors
    /// [`ErrorKind::Empty`]; as [`get`](Queue::get).
    pub fn get_nowait(&self) -> Result<T> {
        self.get_within(Some(Duration::ZERO)).map_err(|e| {
            if e.is_timeout() {
                Error::new(ErrorKind::Empty, "the queue is empty")
            } else {
                e
            }
        })
    }

    /// The items as they come, waiting for each: Python's
    /// `iter(q.get, sentinel)`. It ends only once this handle is
    /// [closed](Queue::close) (looked at between items); a producer that
    /// means to end it sends a value the consumer reads as the end, or the
    /// consumer uses [`iter_timeout`](Queue::iter_timeout). An item that is
    /// not a `T` is yielded as its error, and the iteration goes on.
    pub fn iter(&self) -> QueueIter<'_, T> {
        QueueIter { queue: self, wait: None }
    }

    /// The items as they come, until none comes within `timeout` (or this
    /// handle is closed).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let q = multiproc::Queue::new()?;
    /// for i in 0..3 { q.put(i).unwrap(); }
    /// let got: Vec<u32> = q.iter_timeout(Duration::from_millis(50)).map(Result::unwrap).collect();
    /// assert_eq!(got, [0, 1, 2]);
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    pub fn iter_timeout(&self, timeout: Duration) -> QueueIter<'_, T> {
        QueueIter { queue: self, wait: Some(timeout) }
    }

    /// The items that are there now, without waiting (as crossbeam's
    /// `try_iter`).
    pub fn try_iter(&self) -> QueueIter<'_, T> {
        self.iter_timeout(Duration::ZERO)
    }
}

/// The items of a [`Queue`], each a `Result` (an item that is not a `T` is
/// its error): see [`Queue::iter`], [`Queue::iter_timeout`]
/// and [`Queue::try_iter`].
///
/// # Examples
///
/// ```
/// let q = multiproc::Queue::<u32>::new()?;
/// for i in 0..3 {
///     q.put(i).unwrap();
/// }
/// let got: Vec<u32> = q.try_iter().collect::<Result<_, _>>()?;
/// assert_eq!(got, vec![0, 1, 2]);
/// # Ok::<(), multiproc::Error>(())
/// ```
#[must_use = "iterators are lazy and do nothing unless consumed"]
pub struct QueueIter<'a, T> {
    queue: &'a Queue<T>,
    /// How long to wait for each item; `None` for as long as it takes.
    wait: Option<Duration>,
}

impl<T: DeserializeOwned> Iterator for QueueIter<'_, T> {
    type Item = Result<T>;

    fn next(&mut self) -> Option<Result<T>> {
        if self.queue.is_closed() {
            return None;
        }
        match self.queue.get_within(self.wait) {
            Err(e) if matches!(e.kind(), ErrorKind::Timeout | ErrorKind::Closed) => None,
            item => Some(item),
        }
    }
}

impl<T> std::fmt::Debug for QueueIter<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueIter").field("wait", &self.wait).finish()
    }
}

#[derive(Serialize, Deserialize)]
struct Wire {
    tx: crate::Fd<OwnedFd>,
    rx: crate::Fd<OwnedFd>,
    mem: Cell<QueueMem>,
    ring: Ring,
    wake: crate::Fd<OwnedFd>,
}

impl<T> Serialize for Queue<T> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::Error as _;
        let dup = |fd: &OwnedFd| fd.try_clone().map(crate::Fd::new).map_err(S::Error::custom);
        Wire {
            tx: dup(&self.shared.tx)?,
            rx: dup(&self.rx)?,
            mem: self.shared.mem.clone(),
            ring: self.shared.ring.clone(),
            wake: crate::Fd::new(
                self.shared.wake.fd().try_clone_to_owned().map_err(S::Error::custom)?,
            ),
        }
        .serialize(s)
    }
}

impl<'de, T> Deserialize<'de> for Queue<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        use serde::de::Error as _;
        let w = Wire::deserialize(d)?;
        let wake = sys::EventFd::adopt(w.wake.into_inner()).map_err(D::Error::custom)?;
        Ok(Queue {
            shared: Shared::new(w.tx.into_inner(), w.mem, w.ring, wake),
            rx: Arc::new(w.rx.into_inner()),
            _t: PhantomData,
        })
    }
}

impl<T> std::fmt::Debug for Queue<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("qsize", &self.qsize())
            .field("maxsize", &self.maxsize())
            .finish()
    }
}

/// A [`Queue`] whose consumers mark items done, so that producers can wait
/// for all of them: Python's `multiprocessing.JoinableQueue`.
///
/// # Examples
///
/// ```
/// use multiproc::{JoinableQueue, Process};
///
/// fn consume(q: JoinableQueue<u32>) {
///     loop {
///         let _item = q.get().unwrap();
///         q.task_done().unwrap();
///     }
/// }
///
/// let q = JoinableQueue::new()?;
/// let mut p = Process::new(consume, q.clone());
/// p.set_daemon(true)?;
/// p.start()?;
/// for i in 0..5 { q.put(i).unwrap(); }
/// q.join(); // every item taken and marked done
/// assert!(q.task_done().is_err()); // more task_done than items
/// # Ok::<(), multiproc::Error>(())
/// ```
pub struct JoinableQueue<T>(Queue<T>);

impl<T> Clone for JoinableQueue<T> {
    fn clone(&self) -> Self {
        JoinableQueue(self.0.clone())
    }
}

impl<T> JoinableQueue<T> {
    /// An unbounded joinable queue.
    ///
    /// # Errors
    /// As [`Queue::new`].
    pub fn new() -> Result<Self> {
        Ok(JoinableQueue(Queue::new()?))
    }

    /// A joinable queue of at most `maxsize` items (0: unbounded).
    ///
    /// # Errors
    /// As [`Queue::new`].
    pub fn bounded(maxsize: u32) -> Result<Self> {
        Ok(JoinableQueue(Queue::bounded(maxsize)?))
    }

    /// Marks one taken item as done.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidState`] when called more times than items were put.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let q = multiproc::JoinableQueue::<u32>::new()?;
    /// q.put(1).unwrap();
    /// assert_eq!(q.get()?, 1);
    /// q.task_done()?; // every item put is now done
    /// assert!(q.join_timeout(Duration::from_secs(1)));
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    pub fn task_done(&self) -> Result<()> {
        let u = &self.0.mem().put.unfinished;
        match u.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |c| c.checked_sub(1)) {
            Ok(1) => {
                sys::futex_wake(u, i32::MAX);
                Ok(())
            }
            Ok(_) => Ok(()),
            Err(_) => Err(Error::new(
                ErrorKind::InvalidState,
                "task_done() was called more times than there were items put on the queue",
            )),
        }
    }

    /// Blocks until every item put has been marked done.
    pub fn join(&self) {
        self.join_within(None);
    }

    /// As [`join`](Self::join), for at most `timeout`; true when all are done.
    pub fn join_timeout(&self, timeout: Duration) -> bool {
        self.join_within(Some(timeout))
    }

    fn join_within(&self, timeout: Option<Duration>) -> bool {
        let deadline = timeout.and_then(crate::deadline_after);
        let u = &self.0.mem().put.unfinished;
        loop {
            let n = u.load(Ordering::SeqCst);
            if n == 0 {
                return true;
            }
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if left == Some(Duration::ZERO) {
                return false;
            }
            sys::futex_wait(u, n, left);
        }
    }
}

impl<T> std::ops::Deref for JoinableQueue<T> {
    type Target = Queue<T>;
    fn deref(&self) -> &Queue<T> {
        &self.0
    }
}

impl<T> Serialize for JoinableQueue<T> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de, T> Deserialize<'de> for JoinableQueue<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        Queue::deserialize(d).map(JoinableQueue)
    }
}

impl<T> std::fmt::Debug for JoinableQueue<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("JoinableQueue").field(&self.0).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fd() -> (OwnedFd, std::os::unix::net::UnixStream) {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        (a.into(), b)
    }

    /// The peer of a closed descriptor reads end of file.
    fn is_closed(peer: &std::os::unix::net::UnixStream) -> bool {
        use std::io::Read;
        peer.set_nonblocking(true).unwrap();
        matches!((&*peer).read(&mut [0u8; 1]), Ok(0))
    }

    /// Items come out as they went in, each with its own descriptors; a
    /// sent item's descriptors are closed at once; emptied, the buffers are
    /// reused, unless a burst made them large.
    #[test]
    fn messages_keep_items_and_their_descriptors_in_order() {
        let mut m = Messages::default();
        let (a, peer_a) = fd();
        let (b, peer_b) = fd();
        m.push(b"one", Vec::new());
        m.push(b"", vec![a]);
        m.push(b"three", Vec::new());
        m.push(b"four", vec![b]);
        assert_eq!(m.len(), 4);
        let got: Vec<(Vec<u8>, usize)> =
            (0..4).map(|i| m.get(i)).map(|(b, f)| (b.to_vec(), f.len())).collect();
        assert_eq!(
            got,
            [(b"one".to_vec(), 0), (Vec::new(), 1), (b"three".to_vec(), 0), (b"four".to_vec(), 1)]
        );
        m.advance(2);
        assert!(is_closed(&peer_a), "a sent item's descriptor stayed open");
        assert!(!is_closed(&peer_b));
        assert_eq!(m.len(), 2);
        assert!(m.get(0).0 == b"three" && m.get(0).1.is_empty());
        assert_eq!(m.get(1).0, b"four");
        m.advance(2);
        assert!(m.is_empty() && is_closed(&peer_b));
        assert!(m.bytes.capacity() > 0, "the buffer was not kept");
        for _ in 0..200_000 {
            m.push(b"0123456789", Vec::new());
        }
        m.advance(usize::MAX);
        assert!(m.is_empty());
        assert_eq!(m.bytes.capacity(), 0, "a burst's 2 MB buffer was kept");
        assert_eq!(m.ends.capacity(), 0);
    }
}
