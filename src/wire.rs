//! Framing: the only place the bytes on a parent–worker channel are shaped.
//!
//! A frame is `[u32 body length, little endian][u8 kind][u8 descriptors][body]`;
//! a frame's descriptors (handles inside its values) travel as SCM_RIGHTS
//! attached to the first byte of its header. Bodies:
//!
//! | kind        | direction        | body                                          |
//! |-------------|------------------|-----------------------------------------------|
//! | `INIT`      | parent → worker  | fingerprint (16) · has initializer (1) · offset (8) · chunk |
//! | `TASK`      | parent → worker  | task id (8) · offset (8) · chunk               |
//! | `RUN`       | parent → process | fingerprint (16) · offset (8) · chunk          |
//! | `READY`     | worker → parent  | pid (4)                                        |
//! | `MISMATCH`  | worker → parent  | the worker's fingerprint (16)                 |
//! | `INIT_FAILED` | worker → parent | message (UTF-8)                              |
//! | `DONE`      | worker → parent  | task id (8) · outcomes                         |
//!
//! A chunk is a sequence of items made by `task::encode_item`; outcomes are one
//! item per argument. The parent closes the channel to tell a worker to exit.

use std::collections::VecDeque;
use std::io;
use std::ops::Range;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use crate::error::{Error, ErrorKind};
use crate::sys;

pub(crate) const INIT: u8 = 1;
pub(crate) const TASK: u8 = 2;
pub(crate) const RUN: u8 = 3;
pub(crate) const READY: u8 = 10;
pub(crate) const MISMATCH: u8 = 11;
pub(crate) const INIT_FAILED: u8 = 12;
pub(crate) const DONE: u8 = 13;

const HEADER: usize = 6;
const READ_CHUNK: usize = 64 * 1024;

/// One end of a framed, buffered channel over a Unix stream socket.
///
/// All reads and writes here are non-blocking unless named otherwise, so one
/// thread can serve both directions and never deadlock against a peer that is
/// itself blocked writing.
pub(crate) struct Conn {
    fd: OwnedFd,
    rbuf: Vec<u8>,
    rpos: usize,
    wbuf: Vec<u8>,
    wpos: usize,
    /// Descriptors to attach at these offsets of `wbuf` (frame starts).
    out_fds: VecDeque<(usize, Vec<OwnedFd>)>,
    /// Descriptors received and not yet claimed by a frame, in order.
    in_fds: VecDeque<OwnedFd>,
}

/// Reads a little-endian integer of `N` bytes at `at`.
pub(crate) fn le<const N: usize>(body: &[u8], at: usize) -> Option<[u8; N]> {
    body.get(at..at + N).map(|b| b.try_into().expect("slice of N bytes"))
}

impl Conn {
    pub(crate) fn new(fd: OwnedFd) -> Conn {
        Conn {
            fd,
            rbuf: Vec::new(),
            rpos: 0,
            wbuf: Vec::new(),
            wpos: 0,
            out_fds: VecDeque::new(),
            in_fds: VecDeque::new(),
        }
    }

    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Starts a frame of `kind` in the output buffer; returns its start for
    /// [`Conn::end_frame`]. The body is appended to [`Conn::out`] in between.
    pub(crate) fn begin_frame(&mut self, kind: u8) -> usize {
        if self.wpos == self.wbuf.len() {
            self.wbuf.clear();
            self.wpos = 0;
        }
        let start = self.wbuf.len();
        self.wbuf.extend_from_slice(&[0, 0, 0, 0, kind, 0]);
        start
    }

    /// Attaches `fds` to the frame begun at `start`.
    pub(crate) fn attach_fds(&mut self, start: usize, fds: Vec<OwnedFd>) -> crate::Result<()> {
        if fds.is_empty() {
            return Ok(());
        }
        if fds.len() > sys::MAX_FDS_PER_MESSAGE {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                format!(
                    "a task carries {} handles; one message carries at most {}",
                    fds.len(),
                    sys::MAX_FDS_PER_MESSAGE
                ),
            ));
        }
        self.wbuf[start + 5] = fds.len() as u8;
        self.out_fds.push_back((start, fds));
        Ok(())
    }

    /// The output buffer, to append a frame body to.
    pub(crate) fn out(&mut self) -> &mut Vec<u8> {
        &mut self.wbuf
    }

    /// Closes the frame begun at `start` by writing its length.
    pub(crate) fn end_frame(&mut self, start: usize) -> crate::Result<()> {
        let len = self.wbuf.len() - start - HEADER;
        let Ok(len32) = u32::try_from(len) else {
            self.wbuf.truncate(start);
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                format!("a task of {len} bytes is too large: a frame holds at most 4 GiB"),
            ));
        };
        self.wbuf[start..start + 4].copy_from_slice(&len32.to_le_bytes());
        Ok(())
    }

    /// Appends a whole frame.
    pub(crate) fn push_frame(&mut self, kind: u8, parts: &[&[u8]]) -> crate::Result<()> {
        let start = self.begin_frame(kind);
        for p in parts {
            self.wbuf.extend_from_slice(p);
        }
        self.end_frame(start)
    }

    /// How far into the output buffer the peer has been handed bytes; valid
    /// as an offset until the buffer is next emptied.
    pub(crate) fn written(&self) -> usize {
        self.wpos
    }

    /// True while output is waiting to be written.
    pub(crate) fn has_output(&self) -> bool {
        self.wpos < self.wbuf.len()
    }

    /// Writes as much pending output as the socket takes without blocking.
    pub(crate) fn write_some(&mut self) -> io::Result<()> {
        while self.has_output() {
            // Descriptors go with the first byte of their frame, so a send
            // stops short of the next frame that carries some.
            let attach_here = self.out_fds.front().is_some_and(|(at, _)| *at == self.wpos);
            let next_mark = self
                .out_fds
                .iter()
                .map(|(at, _)| *at)
                .find(|&at| at > self.wpos)
                .unwrap_or(self.wbuf.len());
            let bytes = &self.wbuf[self.wpos..next_mark];
            let sent = if attach_here {
                let fds = &self.out_fds.front().expect("checked above").1;
                sys::send_with_fds(self.fd.as_fd(), bytes, fds, false)
            } else {
                sys::send(self.fd.as_fd(), bytes, false)
            };
            match sent {
                Ok(n) => {
                    if attach_here && n > 0 {
                        self.out_fds.pop_front();
                    }
                    self.wpos += n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        if !self.has_output() {
            self.wbuf.clear();
            self.wpos = 0;
        }
        Ok(())
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
            let [r] = sys::poll([sys::Interest { fd, read: true, write: true }], None)?;
            if r.read && self.read_some()? {
                return Err(io::ErrorKind::BrokenPipe.into());
            }
            if r.hangup && !r.read && !r.write {
                return Err(io::ErrorKind::BrokenPipe.into());
            }
        }
    }

    fn compact(&mut self) {
        if self.rpos > 0 && (self.rpos == self.rbuf.len() || self.rpos > self.rbuf.len() / 2) {
            self.rbuf.drain(..self.rpos);
            self.rpos = 0;
        }
    }

    /// How many more bytes the frame at the head of the buffer needs.
    fn wanted(&self) -> usize {
        let avail = self.rbuf.len() - self.rpos;
        match le::<4>(&self.rbuf, self.rpos) {
            Some(len) => (HEADER + u32::from_le_bytes(len) as usize).saturating_sub(avail),
            None => 0,
        }
    }

    fn recv_into(&mut self, wait: bool) -> io::Result<Option<usize>> {
        let chunk = self.wanted().max(READ_CHUNK);
        match sys::recv_append_with_fds(
            self.fd.as_fd(),
            &mut self.rbuf,
            chunk,
            wait,
            &mut self.in_fds,
        ) {
            Ok(n) => Ok(Some(n)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Reads everything available without blocking. Returns true at end of file.
    pub(crate) fn read_some(&mut self) -> io::Result<bool> {
        self.compact();
        loop {
            match self.recv_into(false)? {
                Some(0) => return Ok(true),
                Some(_) => continue,
                None => return Ok(false),
            }
        }
    }

    /// Blocks until at least one byte arrives, then reads what else is there.
    /// Returns true at end of file.
    pub(crate) fn read_blocking(&mut self) -> io::Result<bool> {
        self.compact();
        match self.recv_into(true)? {
            Some(0) => Ok(true),
            _ => self.read_some(),
        }
    }

    /// The next complete frame: its kind, the range of its body (valid until
    /// the next read) and the descriptors that came with it. `None` when no
    /// whole frame is buffered; a frame whose descriptors are missing comes
    /// with fewer, and decoding the handle that needed one reports it.
    pub(crate) fn next_frame(&mut self) -> Option<(u8, Range<usize>, Vec<OwnedFd>)> {
        let len = u32::from_le_bytes(le::<4>(&self.rbuf, self.rpos)?) as usize;
        if self.rbuf.len() - self.rpos < HEADER + len {
            return None;
        }
        let kind = self.rbuf[self.rpos + 4];
        let nfds = (self.rbuf[self.rpos + 5] as usize).min(self.in_fds.len());
        let fds = self.in_fds.drain(..nfds).collect();
        let body = self.rpos + HEADER..self.rpos + HEADER + len;
        self.rpos += HEADER + len;
        Some((kind, body, fds))
    }

    /// True when part of a frame is buffered (its writer stopped mid-frame).
    pub(crate) fn has_partial_input(&self) -> bool {
        self.rpos < self.rbuf.len() && self.input_idle()
    }

    /// True when buffered input holds no complete frame.
    pub(crate) fn input_idle(&self) -> bool {
        match le::<4>(&self.rbuf, self.rpos) {
            Some(len) => self.rbuf.len() - self.rpos < HEADER + u32::from_le_bytes(len) as usize,
            None => true,
        }
    }

    /// The body of a frame returned by [`Conn::next_frame`], and the output
    /// buffer, borrowed together.
    pub(crate) fn body_and_out(&mut self, body: Range<usize>) -> (&[u8], &mut Vec<u8>) {
        (&self.rbuf[body], &mut self.wbuf)
    }

    pub(crate) fn body(&self, body: Range<usize>) -> &[u8] {
        &self.rbuf[body]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    fn pair() -> (Conn, Conn) {
        let (a, b) = UnixStream::pair().unwrap();
        (Conn::new(a.into()), Conn::new(b.into()))
    }

    #[test]
    fn frames_round_trip_in_order() {
        let (mut a, mut b) = pair();
        a.push_frame(TASK, &[b"hello"]).unwrap();
        a.push_frame(DONE, &[b"", b"world"]).unwrap();
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
            b.push_frame(DONE, &[&vec![9u8; 8 << 20]]).unwrap();
            b.flush_blocking().unwrap();
            next_len(&mut b)
        });
        a.push_frame(TASK, &[&vec![7u8; 8 << 20]]).unwrap();
        a.flush_blocking().unwrap();
        assert_eq!(next_len(&mut a), 8 << 20);
        assert_eq!(t.join().unwrap(), 8 << 20);
    }

    #[test]
    fn end_of_file_is_reported() {
        let (a, mut b) = pair();
        drop(a);
        assert!(b.read_blocking().unwrap());
    }
}
