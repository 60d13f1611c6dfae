//! A worker's results ring: its DONE frames in shared memory, not through
//! the channel.
//!
//! A worker writes each result before it reads its next task (see
//! `worker::task_loop`), so through the channel every task cost one `send`
//! in the worker, and most of a `recvmsg` and a wake-up in the parent: for
//! small tasks, most of the pool's time. The ring makes a result one copy
//! into memory both processes map; the parent is woken only when it sleeps.
//!
//! # Layout and who writes what
//!
//! One sealed memfd per worker (`multiproc-results` in `/proc/PID/maps`),
//! made by the parent: a header, then [`CAP`]
//! bytes of records. A record is a frame exactly as the channel carries it
//! (`[u32 body length][u8 kind][u8 descriptors = 0][body]`, see `conn`), of
//! kind DONE or ON_CHANNEL, wrapping at the ring's end. The header holds
//! byte positions that only grow:
//!
//! - `written`, stored by the worker after a record is wholly in place:
//!   a worker killed while copying a record has published nothing of it;
//! - `read`, stored by the parent after it copied a record out.
//!
//! # Sleeping and waking
//!
//! Two flags, each set by the side about to sleep and cleared by the other
//! side when it wakes it. Each side stores its position (or flag) and then
//! loads the other's, all `SeqCst`, so of two racing sides at least one sees
//! the other's store: a sleeper is never missed.
//!
//! - The parent's slot thread sleeps in `poll` with the ring's **doorbell**,
//!   an eventfd the worker got with the ring. Before it sleeps it sets
//!   `sleeping` and looks at `written` once more. The worker, after
//!   publishing a record, rings the bell only when it finds `sleeping` set
//!   (and clears it): a busy parent costs the worker no system call.
//! - A worker that finds no room waits on a futex on `room_wanted` (10 ms at
//!   a time; a worker whose parent died is killed by the kernel). The parent
//!   wakes it when it finds the flag set after storing `read`.
//!
//! # Order
//!
//! A result too large for a record ([`RECORD_MAX`]), or one that carries
//! descriptors (a memfd body, handles), still goes through the channel; the
//! worker first puts an ON_CHANNEL record naming its task in the ring. The
//! parent takes DONE frames from the channel only when such a record
//! announced one, so its results stay in the order the worker ran its
//! tasks, whichever way each came.
//!
//! # Trust
//!
//! The worker may write anything anywhere in the ring, at any time. The
//! parent keeps its own read position, checks the distance to `written`
//! against the ring's size, every record's kind, descriptor count and
//! length against the bytes published, and copies a record out before it
//! decodes it: a hostile worker can make its own results wrong or fail its
//! own tasks ([`Violation`]), never make the parent read outside the ring
//! or wait for bytes that never come.

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::SeqCst};
use std::time::Duration;

use crossbeam_utils::CachePadded;

use super::conn::{le, Output, Violation, HEADER};
use super::msg::{kind_name, OnChannel, DONE, ON_CHANNEL};
use crate::error::Result;
use crate::shm::Region;
use crate::sys::{self, EventFd};

/// Bytes of records in a ring (a power of two): room for a few hundred
/// small results, which is more than a worker is ever sent at once; the
/// pages a worker touches count in its resident set.
pub(crate) const CAP: usize = 64 * 1024;
/// Where the records start in the region (after the header).
const DATA: usize = 512;
/// The largest body a record holds; larger results take the channel.
pub(crate) const RECORD_MAX: usize = 16 * 1024;
/// How long a worker waiting for room sleeps before it looks again.
const ROOM_NAP: Duration = Duration::from_millis(10);

#[repr(C)]
struct Header {
    /// Bytes of records published: stored by the worker.
    written: CachePadded<AtomicU64>,
    /// Bytes of records consumed: stored by the parent.
    read: CachePadded<AtomicU64>,
    /// Set by the parent before it sleeps; cleared by who wakes it.
    sleeping: CachePadded<AtomicU32>,
    /// Set by the worker before it waits for room; cleared by who wakes it.
    room_wanted: CachePadded<AtomicU32>,
}

const _: () = assert!(std::mem::size_of::<Header>() <= DATA);

fn header(region: &Region) -> &Header {
    // SAFETY: the region is at least DATA bytes (checked when made or
    // opened), page-aligned, and its header is only ever accessed through
    // these atomics, which any bit pattern is valid for.
    unsafe { &*region.ptr().cast::<Header>() }
}

/// The parent's side: makes the ring, reads the records.
pub(crate) struct Reader {
    region: Region,
    doorbell: EventFd,
    /// The parent's own read position: the shared one is only told.
    read: u64,
}

/// Which records [`Reader::next`] may take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Take {
    /// Any.
    All,
    /// Only one that starts before this position (a [`Reader::published`]
    /// taken earlier): one published before then.
    Before(u64),
    /// Only an ON_CHANNEL record for this task.
    AnnounceOf(u64),
}

/// The kind of a record the parent read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Done,
    OnChannel,
}

impl Reader {
    /// A new ring, and the two descriptors (ring, doorbell) that a worker
    /// opens it from ([`Writer::open`]).
    pub(crate) fn new() -> Result<(Reader, [OwnedFd; 2])> {
        let region = Region::new_named(c"multiproc-results", DATA + CAP)?;
        let doorbell =
            EventFd::new().map_err(|e| crate::Error::io("could not make a ring's doorbell", e))?;
        let bell = doorbell
            .dup_fd()
            .map_err(|e| crate::Error::io("could not duplicate a ring's doorbell", e))?;
        let fds = [region.dup_fd()?, bell];
        Ok((Reader { region, doorbell, read: 0 }, fds))
    }

    /// The doorbell: readable when the worker rang it.
    pub(crate) fn doorbell(&self) -> &EventFd {
        &self.doorbell
    }

    /// Where the published records end now.
    pub(crate) fn published(&self) -> u64 {
        header(&self.region).written.load(SeqCst)
    }

    /// True when records are waiting.
    pub(crate) fn has_records(&self) -> bool {
        header(&self.region).written.load(SeqCst) != self.read
    }

    /// Asks to be woken by the doorbell from now on, unless records are
    /// waiting already (then returns false: do not sleep).
    pub(crate) fn sleep(&self) -> bool {
        let h = header(&self.region);
        h.sleeping.store(1, SeqCst);
        if h.written.load(SeqCst) != self.read {
            h.sleeping.store(0, SeqCst);
            return false;
        }
        true
    }

    /// Awake again: the worker need not ring.
    pub(crate) fn awake(&self) {
        let h = header(&self.region);
        if h.sleeping.load(SeqCst) != 0 {
            h.sleeping.store(0, SeqCst);
        }
    }

    /// The kind of the next record, its body put in `body`; `None` when
    /// none is published that `take` allows (then nothing is taken); or what
    /// is wrong with the ring (the worker broke the protocol; the ring is
    /// then of no further use).
    pub(crate) fn next(
        &mut self,
        take: Take,
        body: &mut Vec<u8>,
    ) -> std::result::Result<Option<Kind>, Violation> {
        let h = header(&self.region);
        let written = h.written.load(SeqCst);
        if let Take::Before(mark) = take {
            if (mark.wrapping_sub(self.read) as i64) <= 0 {
                return Ok(None);
            }
        }
        let waiting = written.wrapping_sub(self.read);
        if waiting == 0 {
            return Ok(None);
        }
        if waiting > CAP as u64 {
            return Err(Violation(format!(
                "a results ring that says {waiting} bytes are waiting; it holds {CAP}"
            )));
        }
        let cut_short = || {
            Violation(format!("a record cut short in its results ring ({waiting} bytes published)"))
        };
        if waiting < HEADER as u64 {
            return Err(cut_short());
        }
        let mut head = [0; HEADER];
        self.region.read_wrapping(DATA, CAP, self.read, &mut head);
        let len = u32::from_le_bytes(le::<4>(&head, 0).expect("HEADER is 6 bytes")) as usize;
        let (kind, fds) = (head[4], head[5]);
        if kind != DONE && kind != ON_CHANNEL {
            return Err(Violation(format!(
                "a record of {} in its results ring, which holds only DONE and ON_CHANNEL",
                kind_name(kind)
            )));
        }
        if fds != 0 {
            return Err(Violation(format!(
                "a record in its results ring that says it carries {fds} descriptors"
            )));
        }
        if len > RECORD_MAX {
            return Err(Violation(format!(
                "a record of {len} bytes in its results ring; a record holds at most {RECORD_MAX}"
            )));
        }
        if (HEADER + len) as u64 > waiting {
            return Err(cut_short());
        }
        body.resize(len, 0);
        self.region.read_wrapping(DATA, CAP, self.read + HEADER as u64, body);
        if let Take::AnnounceOf(id) = take {
            if kind != ON_CHANNEL || OnChannel::decode(body) != Ok(OnChannel { id }) {
                return Ok(None);
            }
        }
        self.read += (HEADER + len) as u64;
        h.read.store(self.read, SeqCst);
        if h.room_wanted.load(SeqCst) != 0 && h.room_wanted.swap(0, SeqCst) != 0 {
            sys::futex_wake(&h.room_wanted, 1);
        }
        Ok(Some(if kind == DONE { Kind::Done } else { Kind::OnChannel }))
    }
}

/// The worker's side: puts its results in the ring.
pub(crate) struct Writer {
    region: Region,
    doorbell: EventFd,
    /// The worker's own write position.
    written: u64,
}

impl Writer {
    /// Opens the ring that INIT brought (its two descriptors, as
    /// [`Reader::new`] made them), or says why it cannot be used.
    pub(crate) fn open(ring: OwnedFd, doorbell: OwnedFd) -> std::result::Result<Writer, String> {
        let region = Region::map(ring).map_err(|e| e.to_string())?;
        if region.len() != DATA + CAP {
            return Err(format!("a results ring of {} bytes, not {}", region.len(), DATA + CAP));
        }
        let doorbell = EventFd::adopt(doorbell).map_err(|e| e.to_string())?;
        let written = header(&region).written.load(SeqCst);
        Ok(Writer { region, doorbell, written })
    }

    /// Puts `frame`, a whole DONE or ON_CHANNEL frame without descriptors
    /// as the channel's output holds it, in the ring (waiting for room if
    /// need be), and wakes the parent if it sleeps. False, and nothing
    /// written, when the frame is larger than a record may be.
    pub(crate) fn put(&mut self, frame: &[u8]) -> bool {
        debug_assert!(frame.len() >= HEADER && matches!(frame[4], DONE | ON_CHANNEL));
        if frame.len() > HEADER + RECORD_MAX {
            return false;
        }
        self.wait_for_room(frame.len());
        self.region.write_wrapping(DATA, CAP, self.written, frame);
        self.written += frame.len() as u64;
        let h = header(&self.region);
        h.written.store(self.written, SeqCst);
        if h.sleeping.load(SeqCst) != 0 && h.sleeping.swap(0, SeqCst) != 0 {
            self.doorbell.notify();
        }
        true
    }

    /// Puts an ON_CHANNEL record for task `id` in the ring: its result is
    /// the next DONE on the channel.
    pub(crate) fn announce(&mut self, id: u64) {
        let mut out = Output::default();
        OnChannel { id }.encode(&mut out).expect("an 8-byte frame always travels");
        let put = self.put(out.plain().expect("a frame without descriptors is plain"));
        debug_assert!(put);
    }

    fn wait_for_room(&self, len: usize) {
        let h = header(&self.region);
        loop {
            let read = h.read.load(SeqCst);
            // A parent that wrote nonsense has no room for anyone: the
            // worker waits, and dies with it.
            let used = self.written.wrapping_sub(read);
            if used <= (CAP - len) as u64 {
                return;
            }
            h.room_wanted.store(1, SeqCst);
            if h.read.load(SeqCst) == read {
                sys::futex_wait(&h.room_wanted, 1, Some(ROOM_NAP));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::conn::Conn;
    use super::super::msg::{Done, OnChannel};
    use super::*;
    use std::os::unix::net::UnixStream;

    fn pair() -> (Reader, Writer) {
        let (reader, [ring, bell]) = Reader::new().unwrap();
        (reader, Writer::open(ring, bell).unwrap())
    }

    /// The next record: its kind and body.
    fn next(r: &mut Reader) -> std::result::Result<Option<(Kind, Vec<u8>)>, Violation> {
        let mut body = vec![0xEE; 3];
        Ok(r.next(Take::All, &mut body)?.map(|k| (k, body)))
    }

    /// The bytes of one frame as a worker's channel output holds them.
    fn frame(encode: impl FnOnce(&mut Conn)) -> Vec<u8> {
        let mut conn = Conn::new(UnixStream::pair().unwrap().0.into());
        encode(&mut conn);
        conn.plain_output().expect("a plain frame").to_vec()
    }

    fn done(id: u64, outcomes: &[u8]) -> Vec<u8> {
        frame(|c| Done { id, outcomes }.encode(c.output(), Vec::new()).unwrap())
    }

    #[test]
    fn records_arrive_whole_and_in_order_across_the_wrap() {
        let (mut reader, mut writer) = pair();
        // Odd sizes, so that records straddle the ring's end many times.
        for i in 0..5_000u64 {
            let body: Vec<u8> = (0..(i % 97) as u8).collect();
            assert!(writer.put(&done(i, &body)));
            if i % 3 == 0 {
                writer.announce(i);
            }
            let Ok(Some((Kind::Done, got))) = next(&mut reader) else { panic!("record {i}") };
            assert_eq!(Done::decode(&got).unwrap(), Done { id: i, outcomes: &body[..] });
            if i % 3 == 0 {
                let Ok(Some((Kind::OnChannel, got))) = next(&mut reader) else {
                    panic!("marker {i}")
                };
                assert_eq!(OnChannel::decode(&got), Ok(OnChannel { id: i }));
            }
            assert_eq!(next(&mut reader), Ok(None));
        }
    }

    #[test]
    fn a_limited_take_leaves_the_records_it_may_not_take() {
        let (mut reader, mut writer) = pair();
        let mut body = Vec::new();
        writer.put(&done(1, b"a"));
        let mark = reader.published();
        writer.announce(2);
        writer.put(&done(3, b"c"));
        assert_eq!(reader.next(Take::Before(mark), &mut body), Ok(Some(Kind::Done)));
        assert_eq!(reader.next(Take::Before(mark), &mut body), Ok(None));
        assert_eq!(reader.next(Take::AnnounceOf(3), &mut body), Ok(None));
        assert_eq!(reader.next(Take::AnnounceOf(2), &mut body), Ok(Some(Kind::OnChannel)));
        assert_eq!(reader.next(Take::AnnounceOf(3), &mut body), Ok(None));
        assert_eq!(reader.next(Take::All, &mut body), Ok(Some(Kind::Done)));
        assert_eq!(Done::decode(&body).unwrap(), Done { id: 3, outcomes: &b"c"[..] });
        assert_eq!(reader.next(Take::All, &mut body), Ok(None));
    }

    #[test]
    fn a_frame_over_the_record_limit_is_refused_and_writes_nothing() {
        let (mut reader, mut writer) = pair();
        assert!(!writer.put(&done(1, &vec![0; RECORD_MAX])));
        assert_eq!(next(&mut reader), Ok(None));
        assert!(writer.put(&done(2, &vec![0; RECORD_MAX - 8])));
        assert!(matches!(next(&mut reader), Ok(Some((Kind::Done, _)))));
    }

    #[test]
    fn a_sleeping_reader_is_rung_once_and_a_busy_one_never() {
        let (mut reader, mut writer) = pair();
        let rung = |r: &Reader| {
            let fd = r.doorbell().fd();
            let [p] =
                sys::poll([sys::Interest { fd, read: true, write: false }], Some(Duration::ZERO))
                    .unwrap();
            r.doorbell().drain();
            p.read
        };
        writer.put(&done(1, b""));
        assert!(!rung(&reader), "an awake reader was rung");
        assert!(!reader.sleep(), "slept with a record waiting");
        next(&mut reader).unwrap();
        assert!(reader.sleep());
        writer.put(&done(2, b""));
        writer.put(&done(3, b""));
        assert!(rung(&reader), "a sleeping reader was not rung");
        writer.put(&done(4, b""));
        assert!(!rung(&reader), "rung twice for one sleep");
    }

    #[test]
    fn a_full_ring_holds_the_writer_until_the_reader_makes_room() {
        let (mut reader, mut writer) = pair();
        let big = done(0, &vec![7; RECORD_MAX - 8]);
        let fits = CAP / big.len();
        for _ in 0..fits {
            assert!(writer.put(&big));
        }
        let t0 = std::time::Instant::now();
        let writer = std::thread::spawn(move || {
            writer.put(&big);
            t0.elapsed()
        });
        std::thread::sleep(Duration::from_millis(100));
        assert!(!writer.is_finished(), "a write into a full ring did not wait");
        next(&mut reader).unwrap();
        let waited = writer.join().unwrap();
        assert!(waited >= Duration::from_millis(100), "{waited:?}");
        assert!(waited < Duration::from_secs(5), "not woken when room was made: {waited:?}");
        for _ in 0..fits {
            assert!(matches!(next(&mut reader), Ok(Some((Kind::Done, _)))));
        }
        assert_eq!(next(&mut reader), Ok(None));
    }

    /// What a hostile worker can write into its ring, and what the parent
    /// makes of it: a clear violation, never a read outside the ring.
    #[test]
    fn a_corrupt_ring_is_a_violation_naming_what_is_wrong() {
        let write_head = |r: &Reader, written: u64, record: &[u8]| {
            r.region.write_wrapping(DATA, CAP, r.read, record);
            header(&r.region).written.store(written, SeqCst);
        };
        let cases: [(u64, Vec<u8>, &str); 6] = [
            (CAP as u64 + 1, Vec::new(), "it holds"),
            (3, vec![0; 3], "cut short"),
            (6, vec![0, 0, 0, 0, 2, 0], "of TASK"),
            (14, [&8u32.to_le_bytes()[..], &[DONE, 1], &[0; 8]].concat(), "descriptors"),
            (6, [&u32::MAX.to_le_bytes()[..], &[DONE, 0]].concat(), "at most"),
            (10, [&8u32.to_le_bytes()[..], &[DONE, 0], &[0; 4]].concat(), "cut short"),
        ];
        for (written, record, says) in cases {
            let (mut reader, _writer) = pair();
            write_head(&reader, written, &record);
            match next(&mut reader) {
                Err(v) => assert!(v.0.contains(says), "{written}: {v}"),
                Ok(r) => panic!("{written}: a corrupt ring gave {r:?}"),
            }
        }
    }
}
