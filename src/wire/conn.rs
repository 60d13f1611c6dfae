//! One end of a framed channel: framing, descriptor batches, the reader's
//! limits, and an output queue written with vectored sends.
//!
//! A frame is `[u32 body length, little endian][u8 kind][u8 descriptors][body]`;
//! a frame's descriptors (handles inside its values) travel as SCM_RIGHTS
//! attached to the first byte of its header. What a body holds is
//! [`super::msg`]'s business; here a body is bytes.
//!
//! The reader trusts nothing the peer sends. A header is checked as soon as
//! its 6 bytes are buffered (a kind the reader accepts, at most
//! [`sys::MAX_FDS_PER_MESSAGE`] descriptors, a length within the reader's
//! limit for that kind), and space is reserved only in step with the bytes
//! that actually arrive, so a header that lies about its length costs
//! nothing. Descriptors are matched to frames by stream position: Linux hands
//! over one SCM_RIGHTS batch per `recvmsg` of a stream socket, with the data
//! of that call, and a sender attaches a frame's descriptors to the frame's
//! first byte; so each batch must belong to the one frame that starts inside
//! the byte range of the `recvmsg` that brought it and declares exactly that
//! many descriptors. Anything else (a batch no frame claims, too many or too
//! few) is a [`Violation`]: the descriptors are closed and the channel reads
//! no further.
//!
//! The writer queues frames as pieces: ranges of its own buffer (headers,
//! small bodies, bodies encoded in place) and shared bodies ([`Chunk`]s too
//! large to be worth a copy), and hands up to [`MAX_PARTS`] of them to the
//! kernel in one `sendmsg`, so a large task's argument bytes are never copied
//! in this process. A send stops short of the next frame that carries
//! descriptors, so they always go with its first byte.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::ops::{Deref, Range};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use super::memfd::{self, Mapped};
use super::msg::kind_name;
use crate::error::{Error, ErrorKind};
use crate::sys;

/// The bytes of a frame header.
pub(crate) const HEADER: usize = 6;
/// The most pieces one `sendmsg` takes (well below the kernel's 1024).
pub(crate) const MAX_PARTS: usize = 32;
/// A body larger than this is queued shared, not copied (see [`Chunk`]):
/// below it a copy costs less than the shared allocation and a piece of
/// its own, and small frames batch in one buffer.
pub(crate) const SHARE_ABOVE: usize = 1024;
const READ_CHUNK: usize = 64 * 1024;
/// Once the frame at the head of the buffer is complete, one `read_some`
/// reads at most this much more, so a peer that writes without pause cannot
/// keep the reader from handling what it already has.
const READ_BUDGET: usize = 4 << 20;
/// Buffers that grew past this for a large frame are shrunk once empty, so
/// one large message does not pin its memory for the life of the channel.
const SHRINK_ABOVE: usize = 4 << 20;
/// A channel that owns its large bodies (see [`Conn::own_large_bodies`])
/// reads a body at least this long into a buffer of its own. Below it the
/// copy out of the read buffer costs less than an allocation of its own.
pub(crate) const OWN_ABOVE: usize = 64 * 1024;
/// The most an owned body reserves at once ahead of its bytes (virtual
/// space: pages are touched only as bytes arrive); a larger one grows as it
/// comes.
const OWN_RESERVE: usize = 4 << 20;
/// Received descriptors waiting for their frame to reach the head of the
/// buffer. Beyond this the reader stops reading until frames are consumed,
/// so a peer cannot fill this process's descriptor table.
const MAX_HELD_FDS: usize = 2 * sys::MAX_FDS_PER_MESSAGE;

/// What a peer sent that breaks the framing rules, in words that complete
/// "the peer sent …". The channel is unusable after one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Violation(pub(crate) String);

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Which frames a reader accepts: `(kind, largest body in bytes)` pairs, or
/// every kind up to one length.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Accept {
    Any { max_len: u32 },
    Only(&'static [(u8, u32)]),
}

impl Accept {
    fn max_len(self, kind: u8) -> Option<u32> {
        match self {
            Accept::Any { max_len } => Some(max_len),
            Accept::Only(kinds) => kinds.iter().find(|(k, _)| *k == kind).map(|(_, m)| *m),
        }
    }
}

/// Set in a header's kind byte when the frame's body is not in the stream
/// but in the first of its descriptors, a frozen file (see [`super::memfd`]);
/// the header's length is still the body's.
pub(crate) const IN_FILE: u8 = 0x80;

/// The bytes a frame takes in the stream after its header.
fn stream_len(kind_byte: u8, len: usize) -> usize {
    if kind_byte & IN_FILE != 0 {
        0
    } else {
        len
    }
}

/// Checks a frame header; returns its kind (without [`IN_FILE`]), body
/// length and descriptor count.
pub(crate) fn check_header(
    header: &[u8; HEADER],
    accept: Accept,
) -> Result<(u8, usize, usize), Violation> {
    let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes"));
    let (kind, nfds) = (header[4] & !IN_FILE, header[5] as usize);
    let Some(max_len) = accept.max_len(kind) else {
        return Err(Violation(format!(
            "a frame of {} (header bytes {header:02x?}), which is not valid at this point",
            kind_name(kind)
        )));
    };
    if nfds > sys::MAX_FDS_PER_MESSAGE {
        return Err(Violation(format!(
            "a {} frame declaring {nfds} descriptors (at most {} travel with one frame)",
            kind_name(kind),
            sys::MAX_FDS_PER_MESSAGE
        )));
    }
    if len > max_len {
        return Err(Violation(format!(
            "a {} frame header declaring {len} bytes, more than the {max_len} bytes allowed",
            kind_name(kind)
        )));
    }
    if header[4] & IN_FILE != 0 && nfds == 0 {
        return Err(Violation(format!(
            "a {} frame whose body is in a file, with no descriptor attached",
            kind_name(kind)
        )));
    }
    Ok((kind, len as usize, nfds))
}

/// Descriptors from one `recvmsg`, and the stream range `start..end` of the
/// bytes that call brought.
struct Batch {
    start: u64,
    end: u64,
    fds: Vec<OwnedFd>,
}

/// The checked header of the frame at the head of the read buffer.
struct Head {
    kind: u8,
    len: usize,
    fds: Vec<OwnedFd>,
    /// The body is in the first descriptor, not in the stream.
    in_file: bool,
}

impl Head {
    fn stream_len(&self) -> usize {
        if self.in_file {
            0
        } else {
            self.len
        }
    }
}

/// Where the body of a frame returned by [`Conn::try_next_frame`] is: read
/// it with [`Conn::body`], until the next read or frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Body {
    /// A range of the read buffer.
    Buf(Range<usize>),
    /// The frame's file, mapped (the number of the frame that brought it).
    Mapped(u64),
    /// A buffer of its own (the number of the frame that brought it).
    Owned(u64),
}

/// One end of a framed, buffered channel over a Unix stream socket.
///
/// All reads and writes here are non-blocking unless named otherwise, so one
/// thread can serve both directions and never deadlock against a peer that is
/// itself blocked writing.
pub(crate) struct Conn {
    fd: OwnedFd,
    rbuf: Vec<u8>,
    rpos: usize,
    out: Output,
    /// Descriptors received and not yet claimed by a frame, in order.
    batches: VecDeque<Batch>,
    /// How many descriptors `batches` holds.
    held: usize,
    /// The stream position of `rbuf[0]`: bytes read before it were consumed.
    rbase: u64,
    /// The header at `rpos`, once checked (and its descriptors claimed).
    head: Option<Head>,
    accept: Accept,
    /// Set at the first rule the peer broke; nothing is read after it.
    violation: Option<Violation>,
    /// Set when the last `read_some` stopped with input possibly left.
    more: bool,
    /// The body file of the last frame taken, mapped, with that frame's
    /// number; unmapped at the next frame or read.
    mapped: Option<(u64, Arc<Mapped>)>,
    /// Large bodies are read into buffers of their own (see
    /// [`Conn::own_large_bodies`]).
    own_bodies: bool,
    /// The body of the head frame so far, while it is read into a buffer of
    /// its own; the read buffer then ends with the frame's header.
    owning: Option<Vec<u8>>,
    /// The owned body of the last frame taken, with that frame's number.
    owned: Option<(u64, Vec<u8>)>,
    /// Frames taken so far.
    taken: u64,
}

/// Reads `N` bytes at `at` (a little-endian integer's), if the body has them.
pub(crate) fn le<const N: usize>(body: &[u8], at: usize) -> Option<[u8; N]> {
    body.get(at..at + N).map(|b| b.try_into().expect("slice of N bytes"))
}

impl Conn {
    /// A channel that accepts frames of any kind up to the 4 GiB the format
    /// allows (pipes, and a worker reading its parent).
    pub(crate) fn new(fd: OwnedFd) -> Conn {
        Conn::with_accept(fd, Accept::Any { max_len: u32::MAX })
    }

    /// Sends every body in the stream, never in a file: for a socket that
    /// carries no descriptors (TCP).
    pub(crate) fn stream_only(mut self) -> Conn {
        self.out.stream_only = true;
        self
    }

    /// A channel that accepts only the frames `accept` names.
    pub(crate) fn with_accept(fd: OwnedFd, accept: Accept) -> Conn {
        Conn {
            fd,
            rbuf: Vec::new(),
            rpos: 0,
            out: Output::default(),
            batches: VecDeque::new(),
            held: 0,
            rbase: 0,
            head: None,
            accept,
            violation: None,
            more: false,
            mapped: None,
            own_bodies: false,
            owning: None,
            owned: None,
            taken: 0,
        }
    }

    /// Reads every body of [`OWN_ABOVE`] bytes or more that is not whole
    /// yet straight into a buffer of its own, which [`Conn::take_body`]
    /// hands over without a copy: for a reader that gives each message away
    /// (a pipe's `recv_bytes`), where a body in the shared read buffer
    /// would be copied out once more.
    pub(crate) fn own_large_bodies(mut self) -> Conn {
        self.own_bodies = true;
        self
    }

    /// Changes which frames are accepted from the next frame on (one not yet
    /// checked); a protocol moves from one phase to another this way.
    pub(crate) fn set_accept(&mut self, accept: Accept) {
        self.accept = accept;
    }

    /// The rule the peer broke, if it broke one.
    pub(crate) fn violation(&self) -> Option<&Violation> {
        self.violation.as_ref()
    }

    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The output queue, to encode messages into (see [`super::msg`]).
    pub(crate) fn output(&mut self) -> &mut Output {
        &mut self.out
    }

    /// The stream position just past the last byte handed to the kernel:
    /// the bytes of every frame queued before it reached the peer's socket.
    pub(crate) fn written(&self) -> u64 {
        self.out.written
    }

    /// The stream position just past the last byte queued: where the frame
    /// queued last ends (compare with [`Conn::written`]).
    pub(crate) fn queued(&self) -> u64 {
        self.out.queued
    }

    /// True while output is waiting to be written.
    pub(crate) fn has_output(&self) -> bool {
        !self.out.pieces.is_empty()
    }

    /// The output queued, when it is plain bytes that nothing of was sent
    /// yet: frames without descriptors whose bodies are in the buffer (not
    /// shared with their owner, not in a file). A worker puts such a result
    /// in its results ring (`wire::ring`) and then discards it here.
    pub(crate) fn plain_output(&self) -> Option<&[u8]> {
        self.out.plain()
    }

    /// Drops the output not written yet (and the files and descriptors it
    /// holds): for a channel whose peer is gone.
    pub(crate) fn discard_output(&mut self) {
        self.out.pieces.clear();
        self.out.buf.clear();
        self.out.first_sent = 0;
    }

    /// Writes as much pending output as the socket takes without blocking.
    pub(crate) fn write_some(&mut self) -> io::Result<()> {
        self.out.write_some(self.fd.as_fd())
    }

    /// True when a body of `len` bytes is worth sending borrowed (see
    /// [`Conn::borrowed_frame`]): large, and going in the stream, not in a
    /// file of its own.
    pub(crate) fn lends_well(&self, len: usize) -> bool {
        len >= OWN_ABOVE && (self.out.stream_only || len <= memfd::MEMFD_ABOVE)
    }

    /// Starts a frame of `kind` whose body of `len` bytes its caller keeps
    /// and passes to every [`Conn::write_borrowed`] until it is out: sent
    /// straight from where it is, with no copy into the output queue (a
    /// pipe's `send_bytes`). Nothing else may be queued until it is out.
    pub(crate) fn borrowed_frame(&mut self, kind: u8, len: usize) -> crate::Result<Borrowed> {
        let len32 = u32::try_from(len).map_err(|_| {
            Error::new(
                ErrorKind::InvalidArgument,
                format!("a message of {len} bytes is too large: a frame holds at most 4 GiB"),
            )
        })?;
        let mut header = [0u8; HEADER];
        header[..4].copy_from_slice(&len32.to_le_bytes());
        header[4] = kind;
        self.out.queued += (HEADER + len) as u64;
        Ok(Borrowed { header, sent: 0, len })
    }

    /// Writes queued output, then as much of `frame` (begun with
    /// [`Conn::borrowed_frame`], whose body is `body`) as the socket takes
    /// without blocking; true once all of it is out.
    pub(crate) fn write_borrowed(&mut self, frame: &mut Borrowed, body: &[u8]) -> io::Result<bool> {
        debug_assert_eq!(body.len(), frame.len, "the body a borrowed frame was begun with");
        self.write_some()?;
        while !self.has_output() && frame.sent < HEADER + body.len() {
            let header = &frame.header[frame.sent.min(HEADER)..];
            let body = &body[frame.sent.saturating_sub(HEADER)..];
            let parts = [IoSlice::new(header), IoSlice::new(body)];
            match sys::send_parts_with_fds(self.fd.as_fd(), &parts, &[], false) {
                Ok(0) => break,
                Ok(n) => {
                    frame.sent += n;
                    self.out.written += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        Ok(frame.sent == HEADER + body.len())
    }

    /// Writes all pending output, blocking; reads incoming data meanwhile so a
    /// peer that is blocked writing to us cannot deadlock us.
    pub(crate) fn flush_blocking(&mut self) -> io::Result<()> {
        loop {
            self.write_some()?;
            if !self.has_output() {
                return Ok(());
            }
            let fd = self.fd.as_fd();
            // Not reading while descriptors are held back: the peer's data
            // would only wake this loop again without being read.
            let read = self.held < MAX_HELD_FDS;
            let [r] = sys::poll([sys::Interest { fd, read, write: true }], None)?;
            if r.read && self.read_some()? {
                return Err(io::ErrorKind::BrokenPipe.into());
            }
            if r.hangup && !r.read && !r.write {
                return Err(io::ErrorKind::BrokenPipe.into());
            }
        }
    }

    /// Drops consumed input; gives back the memory of a large frame once
    /// it is consumed. Invalidates body ranges.
    pub(crate) fn compact(&mut self) {
        // The file of a large body is given back as soon as it is done with.
        self.mapped = None;
        self.owned = None;
        if self.rpos > 0 && (self.rpos == self.rbuf.len() || self.rpos > self.rbuf.len() / 2) {
            self.rbuf.drain(..self.rpos);
            self.rbase += self.rpos as u64;
            self.rpos = 0;
        }
        if self.rbuf.capacity() > SHRINK_ABOVE && self.rbuf.len() <= self.rbuf.capacity() / 8 {
            self.rbuf.shrink_to(READ_CHUNK.max(self.rbuf.len()));
        }
    }

    fn violate(&mut self, v: Violation) {
        if self.violation.is_none() {
            self.violation = Some(v);
        }
        // Close whatever the peer sent; nothing on this channel is used again.
        self.batches.clear();
        self.held = 0;
        self.head = None;
        self.owning = None;
    }

    /// Checks the header at the head of the buffer once it is all there,
    /// claims its descriptors, and closes descriptors no frame can claim.
    fn check_head(&mut self) {
        if self.violation.is_some() {
            return;
        }
        let start = self.rbase + self.rpos as u64;
        if self.head.is_none() {
            let Some(header) = le::<HEADER>(&self.rbuf, self.rpos) else {
                // Only a batch that began at or before this frame's first
                // byte can still be claimed (by this frame).
                if let Some(b) = self.batches.iter().find(|b| b.end <= start) {
                    let n = b.fds.len();
                    return self.violate(stray(n));
                }
                return;
            };
            let (kind, len, nfds) = match check_header(&header, self.accept) {
                Ok(h) => h,
                Err(v) => return self.violate(v),
            };
            let in_file = header[4] & IN_FILE != 0;
            // A batch that ended before this frame belonged to no frame.
            if let Some(b) = self.batches.front().filter(|b| b.end <= start) {
                let n = b.fds.len();
                return self.violate(stray(n));
            }
            let mut fds = Vec::new();
            if nfds > 0 {
                let carried = self.batches.front().filter(|b| b.start <= start);
                let got = carried.map_or(0, |b| b.fds.len());
                if got != nfds {
                    return self.violate(Violation(format!(
                        "a {} frame declaring {nfds} descriptors with {got} attached to its \
                         first byte",
                        kind_name(kind)
                    )));
                }
                let b = self.batches.pop_front().expect("checked above");
                self.held -= b.fds.len();
                fds = b.fds;
            }
            self.head = Some(Head { kind, len, fds, in_file });
            let body_at = self.rpos + HEADER;
            if self.own_bodies && !in_file && len >= OWN_ABOVE && self.rbuf.len() < body_at + len {
                // The read buffer ends inside this body: what follows of
                // it goes to a buffer of its own.
                let mut own = Vec::new();
                if own.try_reserve_exact(len.min(OWN_RESERVE)).is_ok() {
                    own.extend_from_slice(&self.rbuf[body_at..]);
                    self.rbuf.truncate(body_at);
                    self.owning = Some(own);
                }
            }
        }
        // The next frame starts at `end`: a batch that ends at or before it
        // holds no frame's first byte but this one's, which is settled.
        let len = self.head.as_ref().map_or(0, Head::stream_len);
        let end = start + (HEADER + len) as u64;
        if let Some(b) = self.batches.iter().find(|b| b.end <= end) {
            let n = b.fds.len();
            self.violate(stray(n));
        }
    }

    /// Bytes the head frame still needs (0 while its header is incomplete),
    /// and the bytes of it already buffered.
    fn head_progress(&self) -> (usize, usize) {
        let avail = self.rbuf.len() - self.rpos + self.owning.as_ref().map_or(0, Vec::len);
        match &self.head {
            Some(h) => ((HEADER + h.stream_len()).saturating_sub(avail), avail),
            None => (0, avail),
        }
    }

    fn recv_into(&mut self, wait: bool) -> io::Result<Option<usize>> {
        // Reserve only as much ahead as has arrived of this frame (doubling
        // as it comes), so a header that lies about its length reserves
        // little, and a real large frame still grows in few steps.
        let (wanted, have) = self.head_progress();
        let chunk = wanted.min(have).max(READ_CHUNK);
        let mut fds = VecDeque::new();
        let owning = self.owning.as_ref().map_or(0, Vec::len);
        let at = self.rbase + (self.rbuf.len() + owning) as u64;
        // An owned body is read up to its end and no further.
        let (buf, chunk) = match &mut self.owning {
            // Whole: nothing to read until it is taken.
            Some(_) if wanted == 0 => return Ok(None),
            Some(own) => (own, wanted),
            None => (&mut self.rbuf, chunk),
        };
        match sys::recv_append_with_fds(self.fd.as_fd(), buf, chunk, wait, &mut fds) {
            Ok(n) => {
                if !fds.is_empty() {
                    self.held += fds.len();
                    self.batches.push_back(Batch {
                        start: at,
                        end: at + n.max(1) as u64,
                        fds: fds.into_iter().collect(),
                    });
                }
                self.check_head();
                Ok(Some(n))
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn violation_error(&self) -> Option<io::Error> {
        let v = self.violation.as_ref()?;
        Some(io::Error::new(io::ErrorKind::InvalidData, v.0.clone()))
    }

    /// Reads what is available without blocking: the rest of the head
    /// frame, then at most [`READ_BUDGET`] more (see [`Conn::has_more`]).
    /// Returns true at end of file; an `InvalidData` error once the peer
    /// broke a rule (the frames before it can still be taken).
    pub(crate) fn read_some(&mut self) -> io::Result<bool> {
        self.compact();
        self.more = false;
        let mut read = 0;
        loop {
            if let Some(e) = self.violation_error() {
                return Err(e);
            }
            let (wanted, _) = self.head_progress();
            let head_whole = self.head.is_some() && wanted == 0;
            // A whole owned body is taken before anything more is read.
            let owned_whole = head_whole && self.owning.is_some();
            if head_whole && (read >= READ_BUDGET || self.held >= MAX_HELD_FDS || owned_whole) {
                self.more = true;
                return Ok(false);
            }
            match self.recv_into(false)? {
                Some(0) => return Ok(true),
                Some(n) => read += n,
                None => return self.violation_error().map_or(Ok(false), Err),
            }
        }
    }

    /// True when the last [`Conn::read_some`] stopped before the socket ran
    /// dry (a budget, or descriptors held back): call it again once the
    /// buffered frames are handled.
    pub(crate) fn has_more(&self) -> bool {
        self.more
    }

    /// Blocks until at least one byte arrives, then reads what else is there.
    /// Returns true at end of file.
    pub(crate) fn read_blocking(&mut self) -> io::Result<bool> {
        self.compact();
        if let Some(e) = self.violation_error() {
            return Err(e);
        }
        match self.recv_into(true)? {
            Some(0) => Ok(true),
            _ => self.read_some(),
        }
    }

    /// The next complete frame: its kind, the range of its body (valid until
    /// the next read) and the descriptors that came with it. `None` when no
    /// whole frame is buffered, or the peer broke a rule (see
    /// [`Conn::try_next_frame`], which tells the two apart).
    pub(crate) fn next_frame(&mut self) -> Option<(u8, Body, Vec<OwnedFd>)> {
        self.try_next_frame().ok().flatten()
    }

    /// The next complete frame, `Ok(None)` when none is whole yet, or the
    /// rule the peer broke at this point of the stream.
    #[allow(clippy::type_complexity)]
    pub(crate) fn try_next_frame(&mut self) -> Result<Option<(u8, Body, Vec<OwnedFd>)>, Violation> {
        self.check_head();
        if let Some(v) = &self.violation {
            return Err(v.clone());
        }
        let (wanted, _) = self.head_progress();
        if wanted > 0 || self.head.is_none() {
            return Ok(None);
        }
        let head = self.head.take().expect("checked above");
        self.mapped = None;
        self.owned = None;
        self.taken += 1;
        if let Some(own) = self.owning.take() {
            // Only the header is in the read buffer.
            self.rpos += HEADER;
            self.owned = Some((self.taken, own));
            return Ok(Some((head.kind, Body::Owned(self.taken), head.fds)));
        }
        let body = self.rpos + HEADER..self.rpos + HEADER + head.stream_len();
        self.rpos += HEADER + head.stream_len();
        if !head.in_file {
            return Ok(Some((head.kind, Body::Buf(body), head.fds)));
        }
        let mut fds = head.fds;
        let file = fds.remove(0);
        match Mapped::open(file, head.len, &kind_name(head.kind)) {
            Ok(m) => {
                self.mapped = Some((self.taken, Arc::new(m)));
                Ok(Some((head.kind, Body::Mapped(self.taken), fds)))
            }
            Err(v) => {
                self.violate(v.clone());
                Err(v)
            }
        }
    }

    /// The kind of the incomplete frame at the head of the buffer and the
    /// part of its body already buffered, once its header is checked: lets a
    /// reader judge a frame by its first bytes instead of waiting for all of
    /// it.
    pub(crate) fn partial_head(&mut self) -> Option<(u8, &[u8])> {
        self.check_head();
        let h = self.head.as_ref()?;
        if let Some(own) = &self.owning {
            return Some((h.kind, own));
        }
        let from = (self.rpos + HEADER).min(self.rbuf.len());
        let to = (self.rpos + HEADER + h.stream_len()).min(self.rbuf.len());
        Some((h.kind, &self.rbuf[from..to]))
    }

    /// True when any input is buffered and not yet taken as a frame (or the
    /// peer broke a rule).
    pub(crate) fn has_input(&self) -> bool {
        self.rpos < self.rbuf.len() || self.owning.is_some() || self.violation.is_some()
    }

    /// True when part of a frame is buffered (its writer stopped mid-frame).
    pub(crate) fn has_partial_input(&self) -> bool {
        self.rpos < self.rbuf.len() && self.input_idle()
    }

    /// True when buffered input holds no complete frame.
    pub(crate) fn input_idle(&self) -> bool {
        if let (Some(own), Some(h)) = (&self.owning, &self.head) {
            return own.len() < h.len;
        }
        match le::<HEADER>(&self.rbuf, self.rpos) {
            Some(h) => {
                let len = u32::from_le_bytes(h[..4].try_into().expect("4 bytes")) as usize;
                self.rbuf.len() - self.rpos < HEADER + stream_len(h[4], len)
            }
            None => true,
        }
    }

    /// The body of a frame returned by [`Conn::next_frame`], and the output
    /// queue, borrowed together (to answer a frame while reading it).
    pub(crate) fn body_and_output(&mut self, body: Body) -> (&[u8], &mut Output) {
        let bytes = match body {
            Body::Buf(r) => &self.rbuf[r],
            Body::Mapped(n) => Conn::mapped_bytes(&self.mapped, n),
            Body::Owned(n) => Conn::owned_bytes(&self.owned, n),
        };
        (bytes, &mut self.out)
    }

    pub(crate) fn body(&self, body: Body) -> &[u8] {
        match body {
            Body::Buf(r) => &self.rbuf[r],
            Body::Mapped(n) => Conn::mapped_bytes(&self.mapped, n),
            Body::Owned(n) => Conn::owned_bytes(&self.owned, n),
        }
    }

    /// The bytes of a frame's body, as [`Conn::body`] reads them, given
    /// away: an owned body without a copy, any other copied out.
    pub(crate) fn take_body(&mut self, body: Body) -> Vec<u8> {
        match (body, self.owned.take()) {
            (Body::Owned(n), Some((m, own))) if n == m => own,
            (body, owned) => {
                self.owned = owned;
                self.body(body).to_vec()
            }
        }
    }

    fn owned_bytes(owned: &Option<(u64, Vec<u8>)>, frame: u64) -> &[u8] {
        match owned {
            Some((n, own)) if *n == frame => own,
            _ => panic!("the body of frame {frame} was read after the next read or frame"),
        }
    }

    /// The mapped file of a frame's body, when it came in one: to keep
    /// views of its bytes after the next frame (see [`crate::Bytes`]).
    pub(crate) fn body_file(&self, body: &Body) -> Option<Arc<Mapped>> {
        match (body, &self.mapped) {
            (Body::Mapped(n), Some((m, file))) if n == m => Some(file.clone()),
            _ => None,
        }
    }

    fn mapped_bytes(mapped: &Option<(u64, Arc<Mapped>)>, frame: u64) -> &[u8] {
        match mapped {
            Some((n, m)) if *n == frame => m.bytes(),
            // A caller's bug, not the peer's: bodies are read before the
            // next frame is taken.
            _ => panic!("the body of frame {frame} was read after the next read or frame"),
        }
    }
}

/// The bytes a frame ends with, kept by their owner while the output queue
/// sends them: a job's encoded arguments (a job goes to another worker when
/// its worker dies before reading it, so they stay with the job), a pipe's
/// message. A small chunk is copied into the output buffer (where it
/// batches with other frames into one piece); a large one is shared with
/// the queue and never copied in this process. The smallest (one number,
/// the `apply_async` hot path) live in the chunk itself: no allocation.
#[derive(Debug)]
pub(crate) enum Chunk {
    Inline { len: u8, bytes: [u8; INLINE] },
    Small(Vec<u8>),
    Large(Arc<Vec<u8>>),
}

/// The most bytes a chunk holds in itself (`Chunk::Inline`: one primitive
/// number and its chunk header).
pub(crate) const INLINE: usize = 32;

impl From<Vec<u8>> for Chunk {
    fn from(bytes: Vec<u8>) -> Chunk {
        if bytes.len() > SHARE_ABOVE {
            Chunk::Large(Arc::new(bytes))
        } else {
            Chunk::Small(bytes)
        }
    }
}

impl Deref for Chunk {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Chunk::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Chunk::Small(b) => b,
            Chunk::Large(b) => b,
        }
    }
}

/// The tail of a frame's body: bytes a message ends with and does not
/// look into (a chunk, outcomes, a pipe message).
pub(crate) trait Tail {
    /// Appends the bytes to `out`: copied into its buffer, or shared.
    fn queue(&self, out: &mut Output);
}

impl Tail for &[u8] {
    fn queue(&self, out: &mut Output) {
        // A body that will travel in a file goes there from where it is,
        // not through the buffer first.
        let head = &out.buf[out.frame_start + HEADER..];
        if !out.stream_only && head.len() + self.len() > memfd::MEMFD_ABOVE {
            if let Some(file) = memfd::freeze(&[head, self]) {
                let len = head.len() + self.len();
                out.buf.truncate(out.frame_start + HEADER);
                out.frozen = Some((file, len));
                return;
            }
        }
        out.buf.extend_from_slice(self);
    }
}

impl Tail for &Chunk {
    fn queue(&self, out: &mut Output) {
        match self {
            Chunk::Inline { .. } | Chunk::Small(_) => out.buf.extend_from_slice(self),
            Chunk::Large(b) => out.shared = Some(b.clone()),
        }
    }
}

/// A frame's whole body written once into a frozen file (see
/// [`super::memfd`]) and sent as it is, as often as needed: each send passes
/// a duplicate of its descriptor, and no send copies a byte of it. For a
/// large job's task frame, made as soon as the job is: the bytes it was
/// encoded into are freed at once (so the next job's encoding reuses that
/// memory instead of faulting in fresh pages), and sending the job again
/// after its worker died costs no copy either.
///
/// Each one holds a descriptor for as long as its job waits, so at most
/// [`MAX_FROZEN`] exist at once in a process: a `map` of thousands of large
/// items must not use up the descriptor table (beyond the cap a job keeps
/// its bytes, and its file is made when it is sent, as before).
#[derive(Debug)]
pub(crate) struct Frozen {
    file: OwnedFd,
    len: usize,
    /// The count of bodies alive this one is in ([`FROZEN_ALIVE`]).
    alive: &'static AtomicUsize,
}

/// The most [`Frozen`] bodies alive at once in this process.
pub(crate) const MAX_FROZEN: usize = 64;
static FROZEN_ALIVE: AtomicUsize = AtomicUsize::new(0);

impl Frozen {
    /// `parts` back to back in a frozen file, when together they are large
    /// enough to travel in one (above [`memfd::MEMFD_ABOVE`]) and fit a
    /// frame; `None` otherwise, when [`MAX_FROZEN`] are alive, or when no
    /// file can be made here.
    pub(crate) fn of(parts: &[&[u8]]) -> Option<Frozen> {
        Frozen::of_within(parts, &FROZEN_ALIVE, MAX_FROZEN)
    }

    fn of_within(parts: &[&[u8]], alive: &'static AtomicUsize, cap: usize) -> Option<Frozen> {
        let len = parts.iter().try_fold(0usize, |sum, p| sum.checked_add(p.len()))?;
        if len <= memfd::MEMFD_ABOVE || u32::try_from(len).is_err() {
            return None;
        }
        alive.fetch_update(Relaxed, Relaxed, |n| (n < cap).then_some(n + 1)).ok()?;
        match memfd::freeze(parts) {
            Some(file) => Some(Frozen { file, len, alive }),
            None => {
                alive.fetch_sub(1, Relaxed);
                None
            }
        }
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        self.alive.fetch_sub(1, Relaxed);
    }
}

/// A frame whose body its sender keeps (see [`Conn::borrowed_frame`]): its
/// header, and how much of header and body has gone out.
pub(crate) struct Borrowed {
    header: [u8; HEADER],
    sent: usize,
    len: usize,
}

/// Bytes a piece of output holds.
enum Bytes {
    /// A range of [`Output::buf`].
    Buf(Range<usize>),
    /// A body shared with its owner.
    Shared(Arc<Vec<u8>>),
}

/// A run of output bytes that one `sendmsg` can take in one part.
struct Piece {
    bytes: Bytes,
    /// Sent with the piece's first byte, which is the first of a frame.
    fds: Vec<OwnedFd>,
}

/// The output side of a channel: frames queued in order, as pieces.
#[derive(Default)]
pub(crate) struct Output {
    /// Headers and copied bodies, back to back; emptied once all is sent.
    buf: Vec<u8>,
    pieces: VecDeque<Piece>,
    /// How much of the first piece has been sent.
    first_sent: usize,
    /// A shared body the frame being built ends with (see [`Tail::queue`]).
    shared: Option<Arc<Vec<u8>>>,
    /// Where the frame being built starts in `buf`.
    frame_start: usize,
    /// The file the body of the frame being built was put in already, and
    /// the body's length.
    frozen: Option<(OwnedFd, usize)>,
    /// Stream positions: bytes handed to the kernel, and bytes queued.
    written: u64,
    queued: u64,
    /// Every body goes in the stream, however large: the socket carries no
    /// descriptors (TCP).
    stream_only: bool,
}

impl Output {
    /// Starts a frame of `kind`; its body is appended with [`Output::buf`] or
    /// a [`Tail`], and [`Output::end_frame`] closes it. Returns its start.
    pub(crate) fn begin_frame(&mut self, kind: u8) -> usize {
        if self.pieces.is_empty() {
            self.buf.clear();
            self.first_sent = 0;
        }
        self.shared = None;
        self.frozen = None;
        let start = self.buf.len();
        self.frame_start = start;
        self.buf.extend_from_slice(&[0, 0, 0, 0, kind, 0]);
        start
    }

    /// The buffer the body of the frame being built is appended to.
    pub(crate) fn buf(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }

    /// Appends `tail` to the frame being built; nothing may follow it.
    pub(crate) fn tail(&mut self, tail: impl Tail) {
        tail.queue(self);
    }

    /// Closes the frame begun at `start`: writes its length and descriptor
    /// count and queues it with `fds`. A frame that cannot travel (over
    /// 4 GiB, too many descriptors) is taken back whole, and the error says
    /// why.
    pub(crate) fn end_frame(&mut self, start: usize, mut fds: Vec<OwnedFd>) -> crate::Result<()> {
        let mut shared = self.shared.take();
        let frozen = self.frozen.take();
        let in_buf = self.buf.len() - start;
        let len = match &frozen {
            Some((_, len)) => *len,
            None => in_buf - HEADER + shared.as_ref().map_or(0, |s| s.len()),
        };
        let fail = |out: &mut Output, message: String| {
            out.buf.truncate(start);
            Err(Error::new(ErrorKind::InvalidArgument, message))
        };
        let Ok(len32) = u32::try_from(len) else {
            return fail(
                self,
                format!("a task of {len} bytes is too large: a frame holds at most 4 GiB"),
            );
        };
        if fds.len() > sys::MAX_FDS_PER_MESSAGE {
            return fail(
                self,
                format!(
                    "a task carries {} handles; one message carries at most {}",
                    fds.len(),
                    sys::MAX_FDS_PER_MESSAGE
                ),
            );
        }
        // A large body goes in a file of its own, if one can be made.
        let mut stream_len = len;
        if let Some((file, len)) = frozen {
            if !self.stream_only && fds.len() < sys::MAX_FDS_PER_MESSAGE {
                self.buf[start + 4] |= IN_FILE;
                fds.insert(0, file);
                stream_len = 0;
            } else {
                // No room for the file beside the frame's handles (rare:
                // 253 handles), or a socket that carries no descriptors: its
                // body goes in the stream after all.
                match Mapped::open(file, len, "") {
                    Ok(m) => self.buf.extend_from_slice(m.bytes()),
                    Err(v) => return fail(self, format!("a large message was lost: {v}")),
                }
            }
        } else if !self.stream_only
            && len > memfd::MEMFD_ABOVE
            && fds.len() < sys::MAX_FDS_PER_MESSAGE
        {
            let tail = shared.as_deref().map_or(&[][..], |s| &s[..]);
            if let Some(file) = memfd::freeze(&[&self.buf[start + HEADER..], tail]) {
                self.buf.truncate(start + HEADER);
                self.buf[start + 4] |= IN_FILE;
                fds.insert(0, file);
                shared = None;
                stream_len = 0;
            }
        }
        self.buf[start..start + 4].copy_from_slice(&len32.to_le_bytes());
        self.buf[start + 5] = fds.len() as u8;
        let end = self.buf.len();
        match self.pieces.back_mut() {
            // Frames without descriptors join the buffer piece before them.
            Some(Piece { bytes: Bytes::Buf(r), .. }) if fds.is_empty() && r.end == start => {
                r.end = end;
            }
            _ => self.pieces.push_back(Piece { bytes: Bytes::Buf(start..end), fds }),
        }
        if let Some(s) = shared.filter(|s| !s.is_empty()) {
            self.pieces.push_back(Piece { bytes: Bytes::Shared(s), fds: Vec::new() });
        }
        self.queued += (HEADER + stream_len) as u64;
        Ok(())
    }

    /// Queues a whole frame of `kind` whose body is the frozen file `body`
    /// (see [`Frozen`]); `body` itself stays with its owner.
    pub(crate) fn push_frozen(
        &mut self,
        kind: u8,
        body: &Frozen,
        fds: Vec<OwnedFd>,
    ) -> crate::Result<()> {
        let file = body
            .file
            .try_clone()
            .map_err(|e| Error::io("could not duplicate a large message's file to send", e))?;
        let start = self.begin_frame(kind);
        self.frozen = Some((file, body.len));
        self.end_frame(start, fds)
    }

    /// Queues a whole frame of `kind` whose body is `body`.
    pub(crate) fn push_frame(
        &mut self,
        kind: u8,
        body: impl Tail,
        fds: Vec<OwnedFd>,
    ) -> crate::Result<()> {
        let start = self.begin_frame(kind);
        self.tail(body);
        self.end_frame(start, fds)
    }

    /// See [`Conn::plain_output`].
    pub(crate) fn plain(&self) -> Option<&[u8]> {
        match (self.pieces.front(), self.pieces.len(), self.first_sent) {
            (Some(Piece { bytes: Bytes::Buf(r), fds }), 1, 0) if fds.is_empty() => {
                Some(&self.buf[r.clone()])
            }
            _ => None,
        }
    }

    fn piece_bytes<'a>(buf: &'a [u8], p: &'a Piece) -> &'a [u8] {
        match &p.bytes {
            Bytes::Buf(r) => &buf[r.clone()],
            Bytes::Shared(s) => s,
        }
    }

    fn write_some(&mut self, fd: BorrowedFd<'_>) -> io::Result<()> {
        while let Some(first) = self.pieces.front() {
            let mut parts = [IoSlice::new(&[]); MAX_PARTS];
            let mut n = 0;
            for (i, p) in self.pieces.iter().enumerate().take(MAX_PARTS) {
                // Descriptors go with the first byte of their frame, so a
                // send stops short of the next frame that carries some.
                if i > 0 && !p.fds.is_empty() {
                    break;
                }
                let bytes = Output::piece_bytes(&self.buf, p);
                parts[n] = IoSlice::new(if i == 0 { &bytes[self.first_sent..] } else { bytes });
                n += 1;
            }
            let sent = match (n, first.fds.is_empty()) {
                (1, true) => sys::send(fd, &parts[0], false),
                _ => sys::send_parts_with_fds(fd, &parts[..n], &first.fds, false),
            };
            match sent {
                Ok(0) => break,
                Ok(sent) => self.advance(sent),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        if self.pieces.is_empty() {
            self.buf.clear();
            self.first_sent = 0;
            if self.buf.capacity() > SHRINK_ABOVE {
                self.buf.shrink_to(READ_CHUNK);
            }
        }
        Ok(())
    }

    /// Drops the first `sent` bytes of the queue.
    fn advance(&mut self, mut sent: usize) {
        self.written += sent as u64;
        if let Some(first) = self.pieces.front_mut() {
            // They have been passed on with the piece's first byte.
            first.fds.clear();
        }
        while let Some(first) = self.pieces.front() {
            let left = Output::piece_bytes(&self.buf, first).len() - self.first_sent;
            if sent < left {
                self.first_sent += sent;
                return;
            }
            sent -= left;
            self.first_sent = 0;
            self.pieces.pop_front();
        }
    }
}

fn stray(n: usize) -> Violation {
    Violation(format!("{n} descriptors attached to no frame that declared them"))
}

#[cfg(test)]
mod tests {
    use super::super::msg::{DONE, READY, TASK};
    use super::*;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;

    fn pair() -> (Conn, Conn) {
        let (a, b) = UnixStream::pair().unwrap();
        (Conn::new(a.into()), Conn::new(b.into()))
    }

    #[test]
    fn frames_round_trip_in_order() {
        let (mut a, mut b) = pair();
        a.output().push_frame(TASK, &b"hello"[..], Vec::new()).unwrap();
        a.output().push_frame(DONE, &b"world"[..], Vec::new()).unwrap();
        a.flush_blocking().unwrap();
        assert!(!b.read_blocking().unwrap());
        let (k, r, _) = b.next_frame().unwrap();
        assert_eq!((k, b.body(r)), (TASK, &b"hello"[..]));
        let (k, r, _) = b.next_frame().unwrap();
        assert_eq!((k, b.body(r)), (DONE, &b"world"[..]));
        assert!(b.next_frame().is_none());
    }

    #[test]
    fn large_frames_cross_while_both_sides_write() {
        // Each side writes 8 MiB before reading: flush_blocking must read while
        // it writes or both would block forever.
        fn next_len(c: &mut Conn) -> usize {
            loop {
                // The frame may have arrived whole while this side was writing.
                if let Some((_, r, _)) = c.next_frame() {
                    return c.body(r).len();
                }
                if c.read_blocking().unwrap() {
                    // End of file: the last read may still have completed it.
                    let (_, r, _) = c.next_frame().expect("end of file before the frame");
                    return c.body(r).len();
                }
            }
        }
        let (mut a, mut b) = pair();
        let t = std::thread::spawn(move || {
            b.output().push_frame(DONE, &vec![9u8; 8 << 20][..], Vec::new()).unwrap();
            b.flush_blocking().unwrap();
            next_len(&mut b)
        });
        a.output().push_frame(TASK, &vec![7u8; 8 << 20][..], Vec::new()).unwrap();
        a.flush_blocking().unwrap();
        assert_eq!(next_len(&mut a), 8 << 20);
        assert_eq!(t.join().unwrap(), 8 << 20);
    }

    /// A socket to write raw bytes into, and a checked reader on the other end.
    fn raw_pair(accept: Accept) -> (OwnedFd, Conn) {
        let (a, b) = UnixStream::pair().unwrap();
        (a.into(), Conn::with_accept(b.into(), accept))
    }

    fn header(len: u32, kind: u8, nfds: u8) -> Vec<u8> {
        let mut h = len.to_le_bytes().to_vec();
        h.extend_from_slice(&[kind, nfds]);
        h
    }

    /// A descriptor whose closing the test can see: the peer of the returned
    /// stream reads end of file once every copy is closed.
    fn watched_fd() -> (OwnedFd, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        (a.into(), b)
    }

    fn is_closed(peer: &UnixStream) -> bool {
        use std::io::Read;
        peer.set_read_timeout(Some(std::time::Duration::from_secs(2))).unwrap();
        matches!((&*peer).read(&mut [0u8; 1]), Ok(0))
    }

    const DONE_ONLY: Accept = Accept::Only(&[(DONE, 1 << 20)]);

    #[test]
    fn headers_are_checked_for_kind_descriptors_and_length() {
        let ok = check_header(&[3, 0, 0, 0, DONE, 2], DONE_ONLY);
        assert_eq!(ok, Ok((DONE, 3, 2)));
        let kind = check_header(&[3, 0, 0, 0, READY, 0], DONE_ONLY).unwrap_err();
        assert!(kind.0.contains("READY") && kind.0.contains("not valid"), "{kind}");
        let fds = check_header(&[3, 0, 0, 0, DONE, 254], DONE_ONLY).unwrap_err();
        assert!(fds.0.contains("254 descriptors"), "{fds}");
        let len = check_header(&[0xff, 0xff, 0xff, 0xff, DONE, 0], DONE_ONLY).unwrap_err();
        assert!(len.0.contains("4294967295 bytes"), "{len}");
        let any = Accept::Any { max_len: u32::MAX };
        assert!(check_header(&[0xff, 0xff, 0xff, 0xff, 99, 0], any).is_ok());
    }

    #[test]
    fn a_lying_header_is_refused_as_soon_as_it_arrives() {
        let (w, mut r) = raw_pair(DONE_ONLY);
        sys::send(w.as_fd(), &header(u32::MAX, DONE, 0), true).unwrap();
        let err = r.read_blocking().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(r.try_next_frame().unwrap_err().0.contains("4294967295"));
        // Later reads fail the same way instead of waiting for the body.
        assert!(r.read_some().is_err());
    }

    #[test]
    fn a_huge_declared_length_reserves_only_what_arrives() {
        let (w, mut r) = raw_pair(Accept::Any { max_len: u32::MAX });
        let mut bytes = header(u32::MAX, 7, 0);
        bytes.extend_from_slice(&[1; 1000]);
        sys::send(w.as_fd(), &bytes, true).unwrap();
        assert!(!r.read_blocking().unwrap());
        assert!(r.try_next_frame().unwrap().is_none());
        assert!(r.rbuf.capacity() <= 2 * READ_CHUNK, "reserved {}", r.rbuf.capacity());
    }

    #[test]
    fn descriptors_go_to_the_frame_that_starts_in_their_read() {
        let (w, mut r) = raw_pair(Accept::Any { max_len: 1 << 20 });
        // A frame with none, then one with two, in one write carrying both
        // descriptors; then a frame with none.
        let (fd1, peer1) = watched_fd();
        let (fd2, _peer2) = watched_fd();
        let mut bytes = header(1, 5, 0);
        bytes.push(b'a');
        bytes.extend(header(2, 6, 2));
        bytes.extend_from_slice(b"bc");
        sys::send_with_fds(w.as_fd(), &bytes, &[fd1, fd2], true).unwrap();
        let mut tail = header(0, 7, 0);
        tail.extend(header(0, 8, 0));
        sys::send(w.as_fd(), &tail, true).unwrap();
        let mut got = Vec::new();
        while got.len() < 4 {
            assert!(!r.read_blocking().unwrap());
            while let Some((kind, body, fds)) = r.try_next_frame().unwrap() {
                got.push((kind, r.body(body).to_vec(), fds.len()));
            }
        }
        let want = [(5, b"a".to_vec(), 0), (6, b"bc".to_vec(), 2), (7, vec![], 0), (8, vec![], 0)];
        assert_eq!(got, want);
        drop(peer1);
    }

    #[test]
    fn descriptors_no_frame_declares_are_closed_and_refused() {
        let (w, mut r) = raw_pair(Accept::Any { max_len: 1 << 20 });
        let (fd, peer) = watched_fd();
        let mut bytes = header(1, 5, 0);
        bytes.push(b'a');
        sys::send_with_fds(w.as_fd(), &bytes, &[fd], true).unwrap();
        let _ = r.read_blocking();
        let v = r.try_next_frame().unwrap_err();
        assert!(v.0.contains("1 descriptors attached to no frame"), "{v}");
        assert!(is_closed(&peer), "the stray descriptor is still open");
    }

    #[test]
    fn descriptors_in_the_middle_of_a_frame_are_refused() {
        let (w, mut r) = raw_pair(Accept::Any { max_len: 1 << 20 });
        let (fd, peer) = watched_fd();
        let mut bytes = header(8, 5, 0);
        bytes.extend_from_slice(b"1234");
        sys::send(w.as_fd(), &bytes, true).unwrap();
        assert!(!r.read_blocking().unwrap());
        sys::send_with_fds(w.as_fd(), b"5678", &[fd], true).unwrap();
        let _ = r.read_blocking();
        assert!(r.try_next_frame().is_err());
        assert!(is_closed(&peer), "the stray descriptor is still open");
    }

    #[test]
    fn a_frame_must_carry_exactly_the_descriptors_it_declares() {
        for (declared, sent) in [(2u8, 1usize), (1, 2), (1, 0)] {
            let (w, mut r) = raw_pair(Accept::Any { max_len: 1 << 20 });
            let fds: Vec<OwnedFd> = (0..sent).map(|_| watched_fd().0).collect();
            let mut bytes = header(1, 5, declared);
            bytes.push(b'a');
            sys::send_with_fds(w.as_fd(), &bytes, &fds, true).unwrap();
            let _ = r.read_blocking();
            let v = r.try_next_frame().unwrap_err();
            assert!(v.0.contains(&format!("declaring {declared} descriptors")), "{v}");
        }
    }

    #[test]
    fn buffers_shrink_after_a_large_frame() {
        let (mut a, mut b) = pair();
        let t = std::thread::spawn(move || {
            b.output().push_frame(DONE, &vec![9u8; 16 << 20][..], Vec::new()).unwrap();
            b.flush_blocking().unwrap();
            b.out.buf.capacity()
        });
        let len = loop {
            if let Some((_, r, _)) = a.next_frame() {
                break a.body(r).len();
            }
            if a.read_blocking().unwrap() {
                // The writer is done and gone: its last read completed it.
                let (_, r, _) = a.next_frame().expect("end of file before the frame");
                break a.body(r).len();
            }
        };
        assert_eq!(len, 16 << 20);
        a.compact();
        assert!(a.rbuf.capacity() <= SHRINK_ABOVE, "reader kept {}", a.rbuf.capacity());
        let kept = t.join().unwrap();
        assert!(kept <= SHRINK_ABOVE, "writer kept {kept}");
    }

    /// Reads every frame until end of file: kind, body, descriptor count.
    fn read_all(c: &mut Conn) -> Vec<(u8, Vec<u8>, usize)> {
        read_all_mapped(c).into_iter().map(|(kind, body, fds, _)| (kind, body, fds)).collect()
    }

    /// Every frame until end of file: kind, body, descriptors, and whether
    /// the body was mapped from a file.
    fn read_all_mapped(c: &mut Conn) -> Vec<(u8, Vec<u8>, usize, bool)> {
        let mut got = Vec::new();
        loop {
            let eof = c.read_blocking().unwrap();
            while let Some((kind, body, fds)) = c.try_next_frame().unwrap() {
                let mapped = matches!(body, Body::Mapped(_));
                got.push((kind, c.body(body).to_vec(), fds.len(), mapped));
            }
            if eof {
                return got;
            }
        }
    }

    #[test]
    fn shared_bodies_small_frames_and_descriptors_arrive_in_order() {
        // Frames mixing copied and shared bodies, some with descriptors,
        // sent through a small socket buffer so that sends stop mid-piece.
        let (a, b) = UnixStream::pair().unwrap();
        let size = 4096i32;
        // SAFETY: setsockopt reads `size` for its stated length.
        unsafe {
            let p = (&size as *const i32).cast();
            libc::setsockopt(a.as_raw_fd(), libc::SOL_SOCKET, libc::SO_SNDBUF, p, 4);
        }
        let (mut a, mut b) = (Conn::new(a.into()), Conn::new(b.into()));
        let big = |n: usize, seed: u8| -> Chunk {
            Chunk::from((0..n).map(|i| (i as u8).wrapping_add(seed)).collect::<Vec<u8>>())
        };
        let chunks = [big(10, 1), big(200_000, 2), big(3000, 3), big(0, 4), big(70_000, 5)];
        let fd_counts = [0, 2, 1, 0, 3];
        let reader = std::thread::spawn(move || read_all(&mut b));
        for (round, (chunk, &n)) in chunks.iter().zip(&fd_counts).enumerate() {
            let fds: Vec<OwnedFd> = (0..n).map(|_| watched_fd().0).collect();
            let o = a.output();
            let start = o.begin_frame(5 + round as u8);
            o.buf().push(round as u8);
            o.tail(chunk);
            o.end_frame(start, fds).unwrap();
            // Some of it goes now, the rest with the next frames.
            a.write_some().unwrap();
            assert!(a.written() <= a.queued());
        }
        // A body above the file threshold takes no stream bytes.
        let in_stream = |c: &Chunk| if 1 + c.len() > memfd::MEMFD_ABOVE { 0 } else { 1 + c.len() };
        let total: usize = chunks.iter().map(|c| HEADER + in_stream(c)).sum();
        assert_eq!(a.queued(), total as u64);
        a.flush_blocking().unwrap();
        assert_eq!(a.written(), total as u64);
        drop(a);
        let got = reader.join().unwrap();
        assert_eq!(got.len(), chunks.len());
        for (round, ((kind, body, n), chunk)) in got.iter().zip(&chunks).enumerate() {
            assert_eq!((*kind, *n, body[0]), (5 + round as u8, fd_counts[round], round as u8));
            assert!(body[1..] == chunk[..], "frame {round} arrived changed");
        }
    }

    #[test]
    fn a_large_chunk_is_queued_shared_not_copied() {
        let (a, b) = UnixStream::pair().unwrap();
        let (mut a, mut b) = (Conn::new(a.into()), Conn::new(b.into()));
        let chunk = Chunk::from(vec![1u8; 64 << 10]);
        let Chunk::Large(shared) = &chunk else { panic!("a 64 KiB chunk is not shared") };
        a.output().push_frame(9, &chunk, Vec::new()).unwrap();
        assert_eq!(Arc::strong_count(shared), 2, "the queue holds the chunk itself");
        assert!(a.out.buf.len() < 64, "the body was copied: {} bytes", a.out.buf.len());
        let reader = std::thread::spawn(move || read_all(&mut b));
        a.flush_blocking().unwrap();
        assert_eq!(Arc::strong_count(shared), 1, "the queue let go once it was sent");
        drop(a);
        assert_eq!(reader.join().unwrap()[0].1.len(), 64 << 10);
    }

    #[test]
    fn written_stops_short_of_frames_the_socket_did_not_take() {
        // The slot tells which jobs never reached the worker by comparing
        // where their frames end with `written`.
        let (a, _b) = UnixStream::pair().unwrap();
        let mut a = Conn::new(a.into());
        let mut ends = Vec::new();
        for _ in 0..64 {
            a.output().push_frame(9, &Chunk::from(vec![0u8; 100_000]), Vec::new()).unwrap();
            ends.push(a.queued());
        }
        a.write_some().unwrap();
        let written = a.written();
        assert!(a.has_output() && written > 0, "the socket took {written} bytes");
        let unsent = ends.iter().filter(|&&end| end > written).count();
        assert!(unsent > 0 && unsent < 64, "{unsent} frames unsent");
    }

    #[test]
    fn a_large_body_travels_in_a_frozen_file() {
        let (a, b) = UnixStream::pair().unwrap();
        let (mut a, mut b) = (Conn::new(a.into()), Conn::new(b.into()));
        let body: Vec<u8> = (0..memfd::MEMFD_ABOVE + 5).map(|i| i as u8).collect();
        let (extra, _peer) = watched_fd();
        // From a borrowed slice, from a shared chunk, and a small one.
        a.output().push_frame(9, &body[..], vec![extra]).unwrap();
        a.output().push_frame(8, &Chunk::from(body.clone()), Vec::new()).unwrap();
        a.output().push_frame(7, &b"small"[..], Vec::new()).unwrap();
        assert_eq!(a.queued(), (3 * HEADER + 5) as u64, "large bodies took stream bytes");
        a.flush_blocking().unwrap();
        drop(a);
        let got = read_all_mapped(&mut b);
        let want = [
            (9, body.clone(), 1, true),
            (8, body.clone(), 0, true),
            (7, b"small".to_vec(), 0, false),
        ];
        assert!(got == want, "frames arrived changed");
        assert!(b.rbuf.capacity() <= 2 * READ_CHUNK, "a file body went through the buffer");
    }

    /// A frozen body is made only above the file threshold; it is sent as
    /// often as asked, each time whole and in a file of its own, and still
    /// whole through a socket that carries no descriptors; its owner keeps
    /// it, and the queue holds no duplicate of it once the frames are out.
    #[test]
    fn a_frozen_body_is_sent_as_often_as_asked_and_kept_by_its_owner() {
        let small = vec![5u8; memfd::MEMFD_ABOVE - 8];
        assert!(Frozen::of(&[&[0u8; 8], &small]).is_none(), "a body at the threshold was frozen");
        let body: Vec<u8> = (0..memfd::MEMFD_ABOVE + 1).map(|i| (i * 13) as u8).collect();
        let frozen = Frozen::of(&[&body[..10], &body[10..]]).expect("a frozen body");
        assert_eq!(frozen.len, body.len());
        for stream_only in [false, true] {
            let (a, b) = UnixStream::pair().unwrap();
            let mut a = Conn::new(a.into());
            if stream_only {
                a = a.stream_only();
            }
            let mut b = Conn::new(b.into());
            let (extra, peer) = watched_fd();
            let o = a.output();
            o.push_frozen(9, &frozen, vec![extra]).unwrap();
            o.push_frame(7, &b"between"[..], Vec::new()).unwrap();
            o.push_frozen(8, &frozen, Vec::new()).unwrap();
            let reader = std::thread::spawn(move || read_all_mapped(&mut b));
            a.flush_blocking().unwrap();
            assert!(a.out.pieces.is_empty() && a.out.frozen.is_none());
            drop(a);
            let got = reader.join().unwrap();
            let in_file = !stream_only;
            let want = [
                (9, body.clone(), 1, in_file),
                (7, b"between".to_vec(), 0, false),
                (8, body.clone(), 0, in_file),
            ];
            assert!(got == want, "frames arrived changed (stream only: {stream_only})");
            assert!(is_closed(&peer), "the frame's descriptor is still open");
        }
        // Still the owner's, and still frozen.
        assert!(sys::is_frozen(frozen.file.as_fd()));
        assert_eq!(sys::file_len(frozen.file.as_fd()).unwrap(), body.len());
    }

    /// Past the cap no body is frozen, and one freed makes room again.
    #[test]
    fn frozen_bodies_are_capped() {
        static ALIVE: AtomicUsize = AtomicUsize::new(0);
        let body = vec![1u8; memfd::MEMFD_ABOVE + 1];
        let kept: Vec<Frozen> =
            std::iter::from_fn(|| Frozen::of_within(&[&body], &ALIVE, 2)).take(3).collect();
        assert_eq!(kept.len(), 2, "bodies made under a cap of 2");
        assert_eq!(ALIVE.load(Relaxed), 2);
        drop(kept);
        assert_eq!(ALIVE.load(Relaxed), 0, "dropped bodies still counted");
        assert!(Frozen::of_within(&[&body], &ALIVE, 2).is_some(), "no room after a drop");
        assert_eq!(ALIVE.load(Relaxed), 0);
    }

    #[test]
    fn a_body_file_that_is_not_frozen_or_not_its_size_is_refused() {
        use rustix::fs::{MemfdFlags, SealFlags};
        let file = |len: usize, seals: SealFlags| -> OwnedFd {
            let fd =
                rustix::fs::memfd_create(c"multiproc-forged", MemfdFlags::ALLOW_SEALING).unwrap();
            rustix::fs::ftruncate(&fd, len as u64).unwrap();
            rustix::fs::fcntl_add_seals(&fd, seals).unwrap();
            fd
        };
        let size = SealFlags::SHRINK | SealFlags::GROW;
        let frozen = size | SealFlags::WRITE;
        for (fd, len, refused) in [
            (file(100, size), 100, "not sealed against writes"),
            (file(100, SealFlags::empty()), 100, "not sealed against writes"),
            (file(100, frozen), 99, "declaring 99 bytes with a body file of 100"),
            (file(100, frozen), 100, ""),
        ] {
            let (w, mut r) = raw_pair(Accept::Any { max_len: 1 << 20 });
            sys::send_with_fds(w.as_fd(), &header(len, 5 | IN_FILE, 1), &[fd], true).unwrap();
            let _ = r.read_blocking();
            match r.try_next_frame() {
                Ok(Some((5, body, fds))) if refused.is_empty() => {
                    assert!(fds.is_empty());
                    assert_eq!(r.body(body), &[0u8; 100][..]);
                }
                Err(v) => assert!(v.0.contains(refused), "{v} is not {refused:?}"),
                other => panic!("{:?}", other.map(|f| f.map(|f| f.0))),
            }
        }
        // A file body without a descriptor, and one over the reader's limit.
        let v = check_header(&[5, 0, 0, 0, 5 | IN_FILE, 0], Accept::Any { max_len: 10 });
        assert!(v.unwrap_err().0.contains("no descriptor"));
        let v = check_header(&[11, 0, 0, 0, 5 | IN_FILE, 1], Accept::Any { max_len: 10 });
        assert!(v.unwrap_err().0.contains("more than the 10 bytes"));
    }

    #[test]
    fn end_of_file_is_reported() {
        let (a, mut b) = pair();
        drop(a);
        assert!(b.read_blocking().unwrap());
    }

    /// A reader that owns its large bodies: a body of at least
    /// [`OWN_ABOVE`] bytes that arrives in parts is read into a buffer of
    /// its own, up to its end and no further, and handed over whole; small
    /// frames around it come out of the read buffer as before, and one sent
    /// borrowed arrives like any other.
    #[test]
    fn large_bodies_are_owned_and_frames_around_them_unchanged() {
        let (a, b) = UnixStream::pair().unwrap();
        let (mut w, mut r) = (Conn::new(a.into()), Conn::new(b.into()).own_large_bodies());
        let big: Vec<u8> = (0..3 * OWN_ABOVE + 5).map(|i| (i * 7) as u8).collect();
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            let mut owned = 0;
            while got.len() < 4 {
                while let Some((kind, body, _)) = r.try_next_frame().unwrap() {
                    owned += usize::from(matches!(body, Body::Owned(_)));
                    got.push((kind, r.take_body(body)));
                }
                if got.len() < 4 {
                    assert!(!r.read_blocking().unwrap(), "end of file before every frame");
                }
            }
            (got, owned)
        });
        w.output().push_frame(DONE, &big[..], Vec::new()).unwrap();
        w.output().push_frame(TASK, &b"small"[..], Vec::new()).unwrap();
        w.flush_blocking().unwrap();
        assert!(w.lends_well(big.len()) && !w.lends_well(OWN_ABOVE - 1));
        let mut frame = w.borrowed_frame(READY, big.len()).unwrap();
        while !w.write_borrowed(&mut frame, &big).unwrap() {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        w.output().push_frame(TASK, &b"after"[..], Vec::new()).unwrap();
        w.flush_blocking().unwrap();
        assert_eq!(w.written(), w.queued());
        let (got, owned) = reader.join().unwrap();
        assert!(got[0] == (DONE, big.clone()), "the large body arrived changed");
        assert_eq!(got[1], (TASK, b"small".to_vec()));
        assert!(got[2] == (READY, big), "the borrowed body arrived changed");
        assert_eq!(got[3], (TASK, b"after".to_vec()));
        // The first frame's header came with the first read, which reads no
        // more than READ_CHUNK: its body was read into a buffer of its own.
        assert!(owned >= 1, "no body was owned");
    }

    /// A writer that stops inside an owned body: the reader sees a partial
    /// frame, not a whole one, and end of file after it.
    #[test]
    fn a_body_cut_short_is_partial_input() {
        let (w, mut r) = raw_pair(Accept::Any { max_len: u32::MAX });
        let mut r = {
            r.own_bodies = true;
            r
        };
        let mut bytes = header((2 * OWN_ABOVE) as u32, 7, 0);
        bytes.extend_from_slice(&vec![1; OWN_ABOVE + 10]);
        sys::send(w.as_fd(), &bytes, true).unwrap();
        drop(w);
        let mut eof = false;
        while !eof {
            assert!(r.try_next_frame().unwrap().is_none());
            eof = r.read_blocking().unwrap();
        }
        assert!(r.try_next_frame().unwrap().is_none());
        assert!(r.input_idle() && r.has_partial_input());
        let (kind, part) = r.partial_head().unwrap();
        assert_eq!((kind, part.len()), (7, OWN_ABOVE + 10));
    }
}
