//! The shared-memory ring a queue's items travel in.
//!
//! One sealed memfd holds a header and `CAP` bytes of records. The header's
//! `head` and `tail` are byte positions that only grow; the records between
//! them are the items put and not yet taken. Two robust, process-shared
//! mutexes guard it, one for each end: producers take the put mutex and
//! alone move `tail`, consumers take the get mutex and alone move `head`.
//! A put and a get therefore never wait for each other, and a producer and
//! a consumer in lockstep share only the lines of the two positions and of
//! the records, not a mutex word both write for every item. Each end reads
//! the other's position with acquire and publishes its own with release, so
//! a record's bytes are written before `tail` shows them and read before
//! `head` gives their room back. Every change is made in an order that
//! makes a death at any point harmless:
//!
//! - a put writes its record past `tail`, THEN moves `tail` over it: a
//!   producer killed mid-copy committed nothing;
//! - a get copies the record at `head` out, THEN moves `head` past it: a
//!   consumer killed mid-copy leaves the item for the next one.
//!
//! An item's descriptors (a large item's memfd, handles inside it) cannot
//! live in shared memory: they travel as a message on the queue's socket,
//! sent while holding the put mutex, and the record names that message by
//! an id that grows by one per message (the id is the message's bytes too).
//! Messages are sent and records committed in id order (both under the put
//! mutex), so the socket holds messages in id order, and no message of a
//! record still in the ring comes after one of a later record. The getter,
//! holding the get mutex, peeks at the socket's next message: an id below
//! the record's is an orphan of a producer killed between its send and its
//! commit (dropped); an id above it, or no message, means a consumer killed
//! between taking the message and moving `head` had it: that record was the
//! dead consumer's in-flight item and is dropped. (A message above it may
//! also be a later put's, sent meanwhile: the record's own would have come
//! first.) No item is delivered twice and none is stranded.
//!
//! Every header word can be written by any process holding the queue, so
//! every position and length read from it is checked before use: a corrupt
//! ring is an error naming what is wrong, never a read outside the ring.

use std::cell::UnsafeCell;
use std::collections::VecDeque;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crossbeam_utils::CachePadded;

use crate::error::{Error, ErrorKind, Result};
use crate::shm::Region;
use crate::sys::{self, Locked, RawMutex};

/// Bytes of records in a ring (a power of two).
pub(super) const CAP: usize = 256 * 1024;
/// Where the records start in the region (after the header).
const DATA: usize = 1024;
/// A record's header: length, kind, socket message id.
const RECORD_HEAD: usize = 16;
/// A feeder waiting for room is woken when the ring's records have
/// drained to this many bytes (any record fits then).
const LOW_WATER: u64 = (CAP / 2) as u64;
/// The largest item bytes a record may hold.
pub(super) const RECORD_MAX: usize = 32 * 1024 + 64;
const KIND_BYTES: u32 = 0;
const KIND_WITH_MESSAGE: u32 = 1;

#[repr(C)]
struct PutSide {
    tail: AtomicU64,
    /// `head` as a put last read it (it only grows, so the room it shows is
    /// there): a put reads the get side's line only when this shows too
    /// little room, not at every item.
    head_seen: AtomicU64,
    /// The id the next socket message gets.
    next_id: AtomicU64,
    /// Grows at every commit: the futex word sleeping getters wait on.
    put_seq: AtomicU32,
}

#[repr(C)]
struct GetSide {
    head: AtomicU64,
    /// Grows at every take: the futex word a feeder waits on for room.
    take_seq: AtomicU32,
}

#[repr(C)]
struct Sleepers {
    /// Getters asleep on `put_seq` (a put wakes one only if this is nonzero).
    get_waiters: AtomicU32,
    /// Nonzero while a feeder may be asleep on `take_seq`, waiting for
    /// room: the take that wakes feeders clears it, so one sleep costs one
    /// wake-up, not one per take until the feeder has run.
    space_wanted: AtomicU32,
    /// Async getters waiting on the queue's wake-up descriptor.
    async_waiters: AtomicU32,
}

#[repr(C)]
struct Header {
    /// Held by a put while it writes records and moves `tail`.
    put_mutex: CachePadded<UnsafeCell<RawMutex>>,
    /// Held by a get while it reads the record at `head` and moves it.
    get_mutex: CachePadded<UnsafeCell<RawMutex>>,
    put: CachePadded<PutSide>,
    get: CachePadded<GetSide>,
    sleepers: CachePadded<Sleepers>,
}

const _: () = assert!(size_of::<Header>() <= DATA);
const _: () = assert!(CAP.is_power_of_two() && RECORD_HEAD + RECORD_MAX <= CAP / 4);
const _: () = assert!(CAP as u64 - LOW_WATER >= (RECORD_HEAD + RECORD_MAX) as u64);

/// The most socket messages one get drops before the record's own (orphans
/// of producers killed between their send and their commit, or messages
/// that are not the queue's at all). Each dead producer leaves one orphan at
/// most, so more than this many in a row is a peer writing to the socket:
/// without a bound it could keep a getter in the loop, holding the get
/// mutex, for as long as it writes.
pub(super) const FOREIGN_MAX: usize = 64;

/// How long a get may wait for its mutex (or a put for its own).
#[derive(Clone, Copy, Debug)]
pub(super) enum LockWait {
    /// Not at all: two tries with a pause between them, no sleep (a
    /// holder keeps it for well under a microsecond, and a busy mutex means
    /// another get or put is under way: "nothing now" is a true answer, as
    /// Python's `get_nowait` gives when its lock is taken).
    Try,
    /// Until this instant.
    Until(Instant),
    /// For this long, counted from when the first quick tries failed (no
    /// clock is read when the mutex is free).
    For(Duration),
    /// As long as it takes: only for a caller that may block (a get
    /// without timeout), never for a put: a holder that is stopped, not
    /// dead, keeps the mutex for as long as it stays stopped.
    Forever,
}

/// What a get took off the ring (its bytes went to the caller's buffer).
pub(super) struct Taken {
    pub(super) fds: Vec<OwnedFd>,
}

/// A queue's ring. Clones share it.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "Region", into = "Region")]
pub(super) struct Ring {
    region: Region,
}

impl TryFrom<Region> for Ring {
    type Error = String;
    fn try_from(region: Region) -> std::result::Result<Ring, String> {
        if region.len() != DATA + CAP {
            return Err(format!(
                "a queue's ring arrived in a region of {} bytes; a ring is {} bytes",
                region.len(),
                DATA + CAP
            ));
        }
        Ok(Ring { region })
    }
}

impl From<Ring> for Region {
    fn from(r: Ring) -> Region {
        r.region
    }
}

/// Which of a ring's two mutexes (see the module's doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    Put,
    Get,
}

/// Holds one of a ring's mutexes; releases it when dropped.
struct Held<'a> {
    ring: &'a Ring,
    end: End,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        // SAFETY: the mutex was initialised by `Ring::new` and this guard
        // exists only while this thread holds it.
        let _ = unsafe { sys::mutex_unlock(self.ring.mutex(self.end)) };
    }
}

fn corrupt(what: String) -> Error {
    Error::new(
        ErrorKind::Protocol,
        format!("the queue's shared ring is corrupt ({what}); a process wrote over its memory"),
    )
}

/// A record's size in the ring: its header and its bytes rounded up to 8.
fn record_len(len: usize) -> u64 {
    (RECORD_HEAD + len.div_ceil(8) * 8) as u64
}

impl Ring {
    pub(super) fn new() -> Result<Ring> {
        let region = Region::new(DATA + CAP)?;
        let ring = Ring { region };
        for end in [End::Put, End::Get] {
            // SAFETY: the region is fresh, private to this process until
            // shared, page-aligned and large enough for the header.
            unsafe { sys::mutex_init(ring.mutex(end), false) }
                .map_err(|e| Error::io("could not initialise a queue's shared mutex", e))?;
        }
        Ok(ring)
    }

    fn mutex(&self, end: End) -> *mut RawMutex {
        let h = self.header();
        match end {
            End::Put => h.put_mutex.get(),
            End::Get => h.get_mutex.get(),
        }
    }

    fn header(&self) -> &Header {
        // SAFETY: the region is DATA + CAP bytes (checked when made or
        // decoded), page-aligned and zero-initialised, valid for a Header
        // (atomics and a pthread mutex initialised by its creator).
        unsafe { &*self.region.ptr().cast::<Header>() }
    }

    fn lock(&self, end: End, timeout: Option<Duration>) -> Result<Option<Held<'_>>> {
        // SAFETY: the mutex was initialised by `Ring::new` in the creator.
        match unsafe { sys::mutex_lock(self.mutex(end), timeout) } {
            // A dead owner left nothing half-done: every change is
            // committed by one store, after the copy it publishes.
            Ok(Locked::Acquired | Locked::OwnerDied) => Ok(Some(Held { ring: self, end })),
            Ok(Locked::NotFree) if timeout.is_some() => Ok(None),
            Ok(_) => Err(Error::new(
                ErrorKind::InvalidState,
                "the queue's shared mutex could not be taken (held by this thread already)",
            )),
            Err(e) => Err(Error::io("could not take a queue's shared mutex", e)),
        }
    }

    /// Takes the mutex within `wait`; `None` when it stayed busy. A busy
    /// mutex is held for well under a microsecond, so it is looked at again
    /// while spinning briefly; after that the wait sleeps in the mutex
    /// itself (woken by the unlock, or by the owner's death: it is robust),
    /// bounded by the deadline.
    fn lock_within(&self, end: End, wait: LockWait) -> Result<Option<Held<'_>>> {
        const SPINS: u32 = 64;
        for tries in 1..=SPINS {
            if let Some(held) = self.lock(end, Some(Duration::ZERO))? {
                return Ok(Some(held));
            }
            if matches!(wait, LockWait::Try) && tries >= 2 {
                return Ok(None);
            }
            for _ in 0..16 {
                std::hint::spin_loop();
            }
        }
        match wait {
            LockWait::Try => Ok(None),
            LockWait::Until(d) => self.lock(end, Some(d.saturating_duration_since(Instant::now()))),
            LockWait::For(d) => self.lock(end, Some(d)),
            LockWait::Forever => self.lock(end, None),
        }
    }

    /// Takes both mutexes, stops this process (SIGSTOP) while holding them,
    /// and lets them go once continued: a test's stalled peer.
    pub(super) fn hold_lock_stopped(&self) -> Result<()> {
        let put = self.lock(End::Put, None)?;
        let get = self.lock(End::Get, None)?;
        let stopped = sys::kill(std::process::id(), sys::SIGSTOP)
            .map_err(|e| Error::io("could not stop this process", e));
        drop((get, put));
        stopped
    }

    /// Head and tail, checked: `head <= tail <= head + CAP`.
    fn bounds(&self) -> Result<(u64, u64)> {
        let h = self.header();
        let head = h.get.head.load(Ordering::Acquire);
        let tail = h.put.tail.load(Ordering::Acquire);
        let used = tail.wrapping_sub(head);
        if used > CAP as u64 {
            return Err(corrupt(format!(
                "head {head} and tail {tail} are not 0 to {CAP} bytes apart"
            )));
        }
        Ok((head, tail))
    }

    /// Copies `src` (at most CAP bytes) into the ring at `pos`, wrapping.
    fn write_at(&self, pos: u64, src: &[u8]) {
        self.region.write_wrapping(DATA, CAP, pos, src);
    }

    /// Copies `dst.len()` (at most CAP) bytes out of the ring at `pos`, wrapping.
    fn read_at(&self, pos: u64, dst: &mut [u8]) {
        self.region.read_wrapping(DATA, CAP, pos, dst);
    }

    /// The count of async getters waiting for the wake-up descriptor.
    pub(super) fn async_waiters(&self) -> &AtomicU32 {
        &self.header().sleepers.async_waiters
    }

    /// True when no record is there (a glance, without the mutex).
    pub(super) fn looks_empty(&self) -> bool {
        let h = self.header();
        h.get.head.load(Ordering::SeqCst) == h.put.tail.load(Ordering::SeqCst)
    }

    /// Puts one record of `bytes` (at most [`RECORD_MAX`]), its `fds` sent
    /// on `tx` as the record's message, waiting for the mutex as `wait`
    /// says. False when there is no room now (in the ring, or for the
    /// message in the socket); `None` when the mutex stayed busy.
    pub(super) fn try_push(
        &self,
        bytes: &[u8],
        fds: &[OwnedFd],
        tx: BorrowedFd<'_>,
        wait: LockWait,
    ) -> Result<Option<bool>> {
        Ok(self.try_push_each(1, |_| (bytes, fds), tx, wait)?.map(|n| n == 1))
    }

    /// Puts the records `item(0)`, `item(1)`, … `item(n - 1)` in order,
    /// under one hold of the mutex, as many as there is room for now; how
    /// many went in, or `None` when the mutex stayed busy for all of
    /// `wait`. Each is committed on its own (its own `tail` store), so a
    /// producer killed mid-batch leaves the records before it whole and at
    /// most one socket message orphaned, as a single put does.
    pub(super) fn try_push_each<'a>(
        &self,
        n: usize,
        item: impl Fn(usize) -> (&'a [u8], &'a [OwnedFd]),
        tx: BorrowedFd<'_>,
        wait: LockWait,
    ) -> Result<Option<usize>> {
        let h = self.header();
        let mut pushed = 0;
        {
            // A holder keeps the mutex for well under a microsecond: spin
            // for it first, so that neither side sleeps in the kernel and
            // has to be woken by the other's unlock. A holder that keeps
            // it longer is stopped or starved: the wait is bounded, and the
            // caller hands the item to its feeder or gives up.
            let Some(_held) = self.lock_within(End::Put, wait)? else { return Ok(None) };
            let mut tail = h.put.tail.load(Ordering::Acquire);
            let mut head = h.put.head_seen.load(Ordering::Relaxed);
            while pushed < n {
                let (bytes, fds) = item(pushed);
                debug_assert!(bytes.len() <= RECORD_MAX);
                let need = record_len(bytes.len());
                // (A `head_seen` written over shows more than CAP used, or
                // a head past the tail: the fresh look checks the real one.)
                let room = |head: u64| (CAP as u64).checked_sub(tail.wrapping_sub(head));
                if room(head).is_none_or(|r| r < need) {
                    head = self.bounds()?.0;
                    h.put.head_seen.store(head, Ordering::Relaxed);
                    if room(head).is_none_or(|r| r < need) {
                        break;
                    }
                }
                let (kind, id) = if fds.is_empty() {
                    (KIND_BYTES, 0)
                } else {
                    // The id is spent before the send: a producer killed after
                    // the send leaves an orphan no later message shares an id with.
                    let id = h.put.next_id.load(Ordering::Relaxed);
                    h.put.next_id.store(id.wrapping_add(1), Ordering::Relaxed);
                    match sys::send_with_fds(tx, &id.to_le_bytes(), fds, false) {
                        Ok(_) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        // Those before it went in; this one fails at the
                        // next call, alone.
                        Err(_) if pushed > 0 => break,
                        Err(e) => return Err(Error::io("could not put on the queue", e)),
                    }
                    (KIND_WITH_MESSAGE, id)
                };
                let mut rec = [0u8; RECORD_HEAD];
                rec[0..4].copy_from_slice(&(bytes.len() as u32).to_le_bytes());
                rec[4..8].copy_from_slice(&kind.to_le_bytes());
                rec[8..16].copy_from_slice(&id.to_le_bytes());
                self.write_at(tail, &rec);
                self.write_at(tail + RECORD_HEAD as u64, bytes);
                // The commit: only now is the record there.
                tail += need;
                h.put.tail.store(tail, Ordering::Release);
                pushed += 1;
            }
            if pushed > 0 {
                h.put.put_seq.fetch_add(1, Ordering::SeqCst);
            }
        }
        // One getter per record, as one put each would: a batch woke one
        // sleeper for all its records, and the other consumers slept on
        // (up to their poll) while the ring held work for them.
        if pushed > 0 && h.sleepers.get_waiters.load(Ordering::SeqCst) != 0 {
            sys::futex_wake(&h.put.put_seq, i32::try_from(pushed).unwrap_or(i32::MAX));
        }
        Ok(Some(pushed))
    }

    /// Takes the record at the head, if any, its bytes into `buf` (cleared
    /// first); waits for the mutex as `wait` says (`None` also when it
    /// stayed busy).
    pub(super) fn try_pop(
        &self,
        rx: BorrowedFd<'_>,
        wait: LockWait,
        buf: &mut Vec<u8>,
        left: &dyn Fn(),
    ) -> Result<Option<Taken>> {
        if self.looks_empty() {
            return Ok(None);
        }
        let h = self.header();
        let Some(_held) = self.lock_within(End::Get, wait)? else { return Ok(None) };
        loop {
            let (head, tail) = self.bounds()?;
            if head == tail {
                return Ok(None);
            }
            let mut rec = [0u8; RECORD_HEAD];
            if tail - head < RECORD_HEAD as u64 {
                return Err(corrupt(format!("a record of {} bytes at {head}", tail - head)));
            }
            self.read_at(head, &mut rec);
            let len = u32::from_le_bytes(rec[0..4].try_into().expect("4 bytes")) as usize;
            let kind = u32::from_le_bytes(rec[4..8].try_into().expect("4 bytes"));
            let id = u64::from_le_bytes(rec[8..16].try_into().expect("8 bytes"));
            if len > RECORD_MAX || record_len(len) > tail - head || kind > KIND_WITH_MESSAGE {
                return Err(corrupt(format!(
                    "the record at {head} says {len} bytes of kind {kind}, with {} bytes committed",
                    tail - head
                )));
            }
            buf.clear();
            buf.resize(len, 0);
            self.read_at(head + RECORD_HEAD as u64, buf);
            let fds = if kind == KIND_WITH_MESSAGE {
                self.take_message(rx, id, FOREIGN_MAX)?
            } else {
                Some(Vec::new())
            };
            // The take: only now is the record gone, and it leaves the
            // queue (`left`: its count, a bounded queue's place) in the
            // same breath, under the mutex, so a consumer killed after its
            // take loses its item but leaves no count or place behind.
            h.get.head.store(head + record_len(len), Ordering::Release);
            left();
            h.get.take_seq.fetch_add(1, Ordering::SeqCst);
            // A feeder waits for room only when the ring was full; it is
            // woken once the ring has drained to half, so that it then
            // writes half a ring in a few holds of the mutex, and a fast
            // producer does not cost its consumer a wake-up per item.
            let wanted = &h.sleepers.space_wanted;
            if wanted.load(Ordering::SeqCst) != 0
                && tail - (head + record_len(len)) <= LOW_WATER
                && wanted.swap(0, Ordering::SeqCst) != 0
            {
                sys::futex_wake(&h.get.take_seq, i32::MAX);
            }
            // `None`: a dead consumer's in-flight item, gone with it; the
            // next record may be ours.
            if let Some(fds) = fds {
                return Ok(Some(Taken { fds }));
            }
        }
    }

    /// Receives the socket message `id` and its descriptors; `None` when a
    /// consumer that died had taken it. Drops at most `foreign_max`
    /// messages before it (see [`FOREIGN_MAX`]).
    fn take_message(
        &self,
        rx: BorrowedFd<'_>,
        id: u64,
        foreign_max: usize,
    ) -> Result<Option<Vec<OwnedFd>>> {
        for _ in 0..=foreign_max {
            let mut word = [0u8; 8];
            let n = match sys::peek_message(rx, &mut word) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) => return Err(Error::io("could not get from the queue", e)),
            };
            let got = u64::from_le_bytes(word);
            if n == 8 && got > id {
                return Ok(None);
            }
            // Ours, an orphan (a producer died before its commit), or not
            // one of ours at all: take it off; only ours is kept.
            let mut buf = Vec::new();
            let mut fds = VecDeque::new();
            match sys::recv_append_with_fds(rx, &mut buf, 8, false, &mut fds) {
                Ok(_) if n == 8 && buf == word && got == id => return Ok(Some(fds.into())),
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(None),
                // Too many descriptors: that message is dropped, not ours.
                Err(e) if e.kind() == std::io::ErrorKind::Other => {}
                Err(e) => return Err(Error::io("could not get from the queue", e)),
            }
        }
        Err(corrupt(format!(
            "more than {foreign_max} messages on its socket came before the one of the record \
             at the head, which a queue's own puts never leave (each producer killed mid-put \
             leaves one): a process is writing to the queue's socket; stop it, or make a new \
             queue"
        )))
    }

    /// Sleeps until a put may have come, at most `timeout`; wakes early if
    /// the ring is not empty any more.
    pub(super) fn wait_put(&self, timeout: Duration) {
        let h = self.header();
        h.sleepers.get_waiters.fetch_add(1, Ordering::SeqCst);
        let seq = h.put.put_seq.load(Ordering::SeqCst);
        if self.looks_empty() {
            sys::futex_wait(&h.put.put_seq, seq, Some(timeout));
        }
        h.sleepers.get_waiters.fetch_sub(1, Ordering::SeqCst);
    }

    /// Pushes as [`try_push_each`](Self::try_push_each), waiting for the
    /// mutex at most `nap`; when none fits, sleeps until the ring has
    /// drained to [`LOW_WATER`] bytes, at most `nap`, and returns 0. Returns
    /// 0 too when the mutex stayed busy: no call here waits longer than
    /// about two naps, so a feeder looks around (for its readers' end)
    /// even while a stopped process holds the mutex.
    pub(super) fn push_each_or_wait<'a>(
        &self,
        n: usize,
        item: impl Fn(usize) -> (&'a [u8], &'a [OwnedFd]),
        tx: BorrowedFd<'_>,
        nap: Duration,
    ) -> Result<usize> {
        match self.try_push_each(n, &item, tx, LockWait::For(nap))? {
            Some(0) => {}
            Some(pushed) => return Ok(pushed),
            None => return Ok(0),
        }
        let h = self.header();
        // Wanted before the second look: a take after that look sees it
        // and wakes this feeder; one before it has moved `take_seq` (the
        // sleep then returns at once) or made the room that look finds.
        h.sleepers.space_wanted.store(1, Ordering::SeqCst);
        let seq = h.get.take_seq.load(Ordering::SeqCst);
        // (The mutex was just free: a short wait for it.)
        let r = self.try_push_each(n, &item, tx, LockWait::For(nap));
        if matches!(r, Ok(Some(0))) {
            sys::futex_wait(&h.get.take_seq, seq, Some(nap));
        }
        Ok(r?.unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    /// A hostile peer's messages ahead of a record's own: at most the bound
    /// is dropped, then the get fails naming why, instead of looping under
    /// the get mutex for as long as the peer writes.
    #[test]
    fn foreign_messages_before_a_record_are_bounded() {
        let ring = Ring::new().unwrap();
        let (tx, rx) = sys::message_pair().unwrap();
        // Not 8 bytes: no id of a record.
        for _ in 0..4 {
            sys::send_with_fds(tx.as_fd(), b"bad", &[], false).unwrap();
        }
        let fd = rx.try_clone().unwrap();
        assert_eq!(ring.try_push(b"x", &[fd], tx.as_fd(), LockWait::Forever).unwrap(), Some(true));
        let _held = ring.lock(End::Get, None).unwrap().unwrap();
        let e = ring.take_message(rx.as_fd(), 0, 2).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Protocol, "{e}");
        assert!(e.to_string().contains("more than 2 messages"), "{e}");
        // Within the bound, the foreign one left is dropped and the record's
        // message is found.
        let fds = ring.take_message(rx.as_fd(), 0, 2).unwrap().expect("the record's message");
        assert_eq!(fds.len(), 1);
    }

    fn pop(ring: &Ring, rx: BorrowedFd<'_>) -> Option<Vec<u8>> {
        let mut buf = Vec::new();
        ring.try_pop(rx, LockWait::Forever, &mut buf, &|| {}).unwrap().map(|_| buf)
    }

    /// A batch goes in in order, as far as it fits, and comes out in order.
    #[test]
    fn a_batch_goes_in_as_far_as_it_fits_and_in_order() {
        let ring = Ring::new().unwrap();
        let (tx, rx) = sys::message_pair().unwrap();
        let items: Vec<Vec<u8>> = (0..300u32).map(|i| vec![i as u8; 1000]).collect();
        // 1016 bytes a record: 258 fit in the ring.
        let fit = CAP / record_len(1000) as usize;
        let n = ring
            .try_push_each(items.len(), |i| (&items[i][..], &[][..]), tx.as_fd(), LockWait::Forever)
            .unwrap();
        assert_eq!(n, Some(fit));
        let more = ring.try_push_each(1, |_| (&[1u8][..], &[][..]), tx.as_fd(), LockWait::Forever);
        assert_eq!(more.unwrap(), Some(0));
        for (i, want) in items.iter().take(fit).enumerate() {
            assert_eq!(pop(&ring, rx.as_fd()).as_ref(), Some(want), "record {i}");
        }
        assert!(pop(&ring, rx.as_fd()).is_none());
    }

    /// A batch of records wakes as many sleeping getters as it has records,
    /// not one: the others would sleep out their timeout with items there.
    #[test]
    fn a_batch_wakes_a_sleeping_getter_per_record() {
        const GETTERS: usize = 3;
        let ring = Ring::new().unwrap();
        let (tx, _rx) = sys::message_pair().unwrap();
        let (woke_tx, woke_rx) = std::sync::mpsc::channel();
        let getters: Vec<_> = (0..GETTERS)
            .map(|_| {
                let (ring, woke) = (ring.clone(), woke_tx.clone());
                std::thread::spawn(move || {
                    // Far longer than the bound below: only a wake-up ends it.
                    ring.wait_put(Duration::from_secs(30));
                    woke.send(()).unwrap();
                })
            })
            .collect();
        let h = ring.header();
        let deadline = Instant::now() + Duration::from_secs(10);
        while h.sleepers.get_waiters.load(Ordering::SeqCst) < GETTERS as u32 {
            assert!(Instant::now() < deadline, "the getters never waited");
            std::thread::sleep(Duration::from_millis(1));
        }
        // Let them reach the futex (one that has not returns at once anyway).
        std::thread::sleep(Duration::from_millis(50));
        let items: Vec<Vec<u8>> = (0..GETTERS as u8).map(|i| vec![i; 8]).collect();
        let n = ring
            .try_push_each(GETTERS, |i| (&items[i][..], &[][..]), tx.as_fd(), LockWait::Forever)
            .unwrap()
            .unwrap();
        assert_eq!(n, GETTERS);
        for k in 0..GETTERS {
            woke_rx.recv_timeout(Duration::from_secs(10)).unwrap_or_else(|_| {
                panic!("{k} of {GETTERS} sleeping getters woke for {n} records")
            });
        }
        for g in getters {
            g.join().unwrap();
        }
    }

    /// A feeder waiting for room sleeps until the ring has drained to half,
    /// not at every take: a consumer of a fast producer pays no wake-up per
    /// item.
    #[test]
    fn a_feeder_waiting_for_room_wakes_at_half_not_at_every_take() {
        let ring = Ring::new().unwrap();
        let (tx, rx) = sys::message_pair().unwrap();
        let item = vec![7u8; 1000];
        while ring.try_push(&item, &[], tx.as_fd(), LockWait::Forever).unwrap() == Some(true) {}
        let used = |r: &Ring| {
            let (head, tail) = r.bounds().unwrap();
            tail - head
        };
        let (woke_tx, woke_rx) = std::sync::mpsc::channel();
        let feeder = {
            let (ring, tx) = (ring.clone(), tx.try_clone().unwrap());
            let big = vec![1u8; RECORD_MAX];
            std::thread::spawn(move || {
                let t = Instant::now();
                let n = ring
                    .push_each_or_wait(
                        1,
                        |_| (&big[..], &[][..]),
                        tx.as_fd(),
                        Duration::from_secs(20),
                    )
                    .unwrap();
                woke_tx.send((n, t.elapsed())).unwrap();
            })
        };
        // Until the feeder sleeps (it says it wants room first).
        let h = ring.header();
        let deadline = Instant::now() + Duration::from_secs(10);
        while h.sleepers.space_wanted.load(Ordering::SeqCst) == 0 {
            assert!(Instant::now() < deadline, "the feeder never waited");
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_millis(50));
        // Takes that leave more than half the ring used wake no one, though
        // the big record would fit after the first few.
        while used(&ring) - record_len(1000) > LOW_WATER {
            pop(&ring, rx.as_fd()).unwrap();
        }
        assert!(
            woke_rx.recv_timeout(Duration::from_millis(300)).is_err(),
            "the feeder was woken before the ring drained to half"
        );
        // The take that reaches half wakes it at once, and clears the want:
        // the takes after it make no system call for it.
        pop(&ring, rx.as_fd()).unwrap();
        assert_eq!(h.sleepers.space_wanted.load(Ordering::SeqCst), 0, "the want was not cleared");
        let (n, took) =
            woke_rx.recv_timeout(Duration::from_secs(10)).expect("the feeder was not woken");
        assert_eq!(n, 0, "a woken feeder returns to try again");
        assert!(took < Duration::from_secs(15), "the feeder slept {took:?}, its whole nap");
        feeder.join().unwrap();
        let big = vec![1u8; RECORD_MAX];
        assert_eq!(ring.try_push(&big, &[], tx.as_fd(), LockWait::Forever).unwrap(), Some(true));
    }
}
