//! Pipes: [`pipe`], a pair of duplex [`Connection`]s, and [`pipe_one_way`],
//! a [`Receiver`] and a [`Sender`] whose wrong use is a compile error.

use parking_lot::{Mutex, MutexGuard};
use std::marker::PhantomData;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, ErrorKind, Result};
use crate::wire::{Body, Chunk, Conn, PipeMessage, Tail};
use crate::{fdpass, sys};

/// One end of a duplex [`pipe`], or a connection from a
/// [`connection::Listener`](crate::connection::Listener) or
/// [`connection::Client`](crate::connection::Client): Python's
/// `multiprocessing.connection.Connection`. Both ends send and receive; for
/// a pipe that carries messages one way only, see [`pipe_one_way`].
///
/// Messages are framed, of any size, and may carry handles (a `Queue`, a
/// `Lock`, an [`Fd`](crate::Fd)…). `recv` returns a [`ErrorKind::Closed`]
/// error once every copy of the other end is closed, in every process — it
/// never hangs on a dead peer — and a writer killed mid-message yields an
/// error, not a partial value.
///
/// Send a connection to another process before reading from it: data it has
/// already buffered stays behind.
///
/// A connection from a `Listener` or `Client` over TCP carries plain values
/// only: a value holding a handle fails to send with
/// [`ErrorKind::InvalidArgument`] (handles travel only between processes of
/// one machine). The connection itself can still be sent to a local
/// `Process` or task: its socket goes along.
///
/// Its descriptor ([`AsFd`], Python's `fileno()`) is the socket to poll for
/// input in an event loop of your own; reading or writing it directly breaks
/// the framing.
///
/// # Examples
///
/// ```
/// use multiproc::{pipe, Connection, Process};
///
/// fn double(c: Connection<u64>) { let n = c.recv().unwrap(); c.send(&(2 * n)).unwrap(); }
///
/// let (here, there) = pipe::<u64>()?;
/// let mut p = Process::new(double, there);
/// p.start()?;
/// here.send(&21)?;
/// assert_eq!(here.recv()?, 42);
/// p.join()?;
/// # Ok::<(), multiproc::Error>(())
/// ```
pub struct Connection<T> {
    /// Reading and writing have their own state (and descriptor), so a send
    /// never waits behind a receive blocked on the same end.
    reader: Mutex<Reader>,
    writer: Mutex<Conn>,
    /// The reading descriptor, which `reader` owns for the connection's
    /// whole life: [`connection::wait`](crate::connection::wait) polls it
    /// without taking the lock a blocked receiver holds.
    read_fd: RawFd,
    readable: bool,
    writable: bool,
    /// Over TCP: no descriptors can travel.
    remote: bool,
    _t: PhantomData<fn(T) -> T>,
}

/// The receiving half: the channel, and a message a too-short
/// [`Connection::recv_bytes_into`] gave back.
struct Reader {
    conn: Conn,
    kept: Option<(Vec<u8>, Vec<OwnedFd>)>,
}

/// Where the next message is: in the channel's buffer (its body range) or
/// given back earlier.
enum Next {
    Buffered(u8, Body, Vec<OwnedFd>),
    Kept(Vec<u8>, Vec<OwnedFd>),
}

/// The send buffer a pipe's sockets ask for (the kernel doubles it, and
/// caps it at `net.core.wmem_max`): a 1 MiB message goes out in one or two
/// writes instead of five or six, each a wake-up of both sides. Measured with
/// 1 MiB messages between two processes: 2.3 k context switches per 2048
/// messages instead of 20 k, CPU per byte the same or 5–20% lower; with
/// 4 MiB, fewer still but more CPU (more bytes in flight than the caches
/// hold). It bounds what a pipe holds in the kernel, not what it allocates.
const SEND_BUFFER: usize = 1 << 20;

/// A connected pair of duplex [`Connection`]s: each end sends and receives
/// (Python's `Pipe()`).
///
/// # Errors
/// When the socket pair cannot be created.
///
/// # Examples
///
/// ```
/// let (a, b) = multiproc::pipe::<String>()?;
/// a.send(&"ping".to_string())?;
/// assert_eq!(b.recv()?, "ping");
/// b.send(&"pong".to_string())?;
/// assert_eq!(a.recv()?, "pong");
/// # Ok::<(), multiproc::Error>(())
/// ```
pub fn pipe<T>() -> Result<(Connection<T>, Connection<T>)> {
    let (a, b) = socket_pair()?;
    Ok((Connection::new(a, true, true)?, Connection::new(b, true, true)?))
}

/// A one-way pipe: the receiving end first, then the sending end (Python's
/// `Pipe(duplex=False)` order). A [`Receiver`] has no `send` and a
/// [`Sender`] no `recv`: using the wrong end does not compile.
///
/// # Errors
/// When the socket pair cannot be created.
///
/// # Examples
///
/// ```
/// use multiproc::{pipe_one_way, Process, Sender};
///
/// fn child(tx: Sender<String>) { tx.send(&"hello".to_string()).unwrap(); }
///
/// let (rx, tx) = pipe_one_way::<String>()?;
/// let mut p = Process::new(child, tx);
/// p.start()?;
/// assert_eq!(rx.recv()?, "hello");
/// p.join()?;
/// // The child's copy of the sender is gone and ours moved into the child:
/// assert_eq!(rx.recv().unwrap_err().kind(), multiproc::ErrorKind::Closed);
/// # Ok::<(), multiproc::Error>(())
/// ```
pub fn pipe_one_way<T>() -> Result<(Receiver<T>, Sender<T>)> {
    let (a, b) = socket_pair()?;
    Ok((Receiver(Connection::new(a, true, false)?), Sender(Connection::new(b, false, true)?)))
}

fn socket_pair() -> Result<(OwnedFd, OwnedFd)> {
    let (a, b) = UnixStream::pair().map_err(|e| Error::io("could not create a pipe", e))?;
    for end in [&a, &b] {
        // Best effort: the default holds what it holds.
        let _ = sys::set_send_buffer(end.as_fd(), SEND_BUFFER);
    }
    Ok((a.into(), b.into()))
}

impl<T> Connection<T> {
    fn new(fd: OwnedFd, readable: bool, writable: bool) -> Result<Self> {
        Self::with_remote(fd, readable, writable, false)
    }

    /// Refuses a message longer than `max_len` bytes at its header: receiving
    /// one ends the connection with an error instead of buffering it (a
    /// server's bound on what one client can make it hold).
    pub(crate) fn limit_messages(&self, max_len: u32) {
        self.lock().conn.set_accept(crate::wire::Accept::Any { max_len });
    }

    /// A duplex connection over a connected stream socket (Unix or TCP, in
    /// blocking mode); `remote` for TCP, which carries no descriptors.
    pub(crate) fn from_stream(fd: OwnedFd, remote: bool) -> Result<Self> {
        Self::with_remote(fd, true, true, remote)
    }

    fn with_remote(fd: OwnedFd, readable: bool, writable: bool, remote: bool) -> Result<Self> {
        let write_fd =
            fd.try_clone().map_err(|e| Error::io("could not duplicate a pipe end", e))?;
        Ok(Connection {
            read_fd: fd.as_raw_fd(),
            // Every message is given away whole, so a large one is read
            // straight into a buffer of its own.
            reader: Mutex::new(Reader { conn: Conn::new(fd).own_large_bodies(), kept: None }),
            writer: Mutex::new(if remote {
                Conn::new(write_fd).stream_only()
            } else {
                Conn::new(write_fd)
            }),
            readable,
            writable,
            remote,
            _t: PhantomData,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Reader> {
        self.reader.lock()
    }

    /// The descriptor to poll for input, and whether a message (or a
    /// violation to report) is already buffered; `None` for a sending-only
    /// end. A receiver busy on another thread counts as nothing buffered.
    pub(crate) fn wait_state(&self) -> Option<(BorrowedFd<'_>, bool)> {
        if !self.readable {
            return None;
        }
        let buffered = self.reader.try_lock().is_some_and(|r| {
            r.kept.is_some() || !r.conn.input_idle() || r.conn.violation().is_some()
        });
        // SAFETY: `read_fd` is owned by `self.reader`'s channel, which lives
        // (and keeps it open) as long as `self`, and the borrow is tied to
        // `self`.
        Some((unsafe { BorrowedFd::borrow_raw(self.read_fd) }, buffered))
    }

    fn lock_writer(&self) -> MutexGuard<'_, Conn> {
        self.writer.lock()
    }

    fn check(&self, write: bool) -> Result<()> {
        let ok = if write { self.writable } else { self.readable };
        if ok {
            return Ok(());
        }
        let what = if write { "send on the receiving end" } else { "receive on the sending end" };
        Err(Error::new(ErrorKind::InvalidState, format!("cannot {what} of a one-way pipe")))
    }

    fn send_frame(&self, msg: PipeMessage<impl Tail + Copy>, fds: Vec<OwnedFd>) -> Result<()> {
        self.check(true)?;
        let mut c = self.lock_writer();
        msg.encode(c.output(), fds)?;
        self.write_out(&mut c, |c| c.write_some().map(|()| !c.has_output()))
    }

    /// Sends a large message of raw bytes from where the caller keeps it,
    /// not copied into the output queue first: one copy (the kernel's) on
    /// this side.
    fn send_borrowed(&self, bytes: &[u8]) -> Result<()> {
        self.check(true)?;
        let mut c = self.lock_writer();
        let mut frame = c.borrowed_frame(crate::wire::PIPE_BYTES, bytes.len())?;
        self.write_out(&mut c, |c| c.write_borrowed(&mut frame, bytes))
    }

    /// Runs `step` (which writes what the socket takes now and says whether
    /// all is out) until all is out, waiting for the socket between steps.
    fn write_out(
        &self,
        c: &mut Conn,
        mut step: impl FnMut(&mut Conn) -> std::io::Result<bool>,
    ) -> Result<()> {
        // While the peer does not read, read what it sends into the receive
        // half (unless a receiver is busy with it), so that two ends sending
        // large messages to each other at once cannot both block forever.
        loop {
            match step(c) {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(e) => {
                    // Nothing more goes out on this end: let go of what waits.
                    c.discard_output();
                    return Err(closed_or_io(e, "send"));
                }
            }
            let [r] =
                sys::poll([sys::Interest { fd: c.fd(), read: self.readable, write: true }], None)
                    .map_err(|e| Error::io("could not poll a pipe", e))?;
            if r.read {
                if let Some(mut reader) = self.reader.try_lock() {
                    let _ = reader.conn.read_some();
                }
            }
            if r.hangup && !r.write && !r.read {
                c.discard_output();
                return Err(closed_or_io(std::io::ErrorKind::BrokenPipe.into(), "send"));
            }
        }
    }

    /// Sends raw bytes (Python's `send_bytes`).
    ///
    /// # Errors
    /// [`ErrorKind::Closed`] when the other end is gone.
    pub fn send_bytes(&self, bytes: &[u8]) -> Result<()> {
        if self.lock_writer().lends_well(bytes.len()) {
            return self.send_borrowed(bytes);
        }
        self.send_frame(PipeMessage::Bytes(bytes), Vec::new())
    }

    /// Waits for the next message and returns its bytes (Python's
    /// `recv_bytes`); a message sent with `send` yields its encoding.
    ///
    /// # Errors
    /// As [`recv`](Connection::recv).
    pub fn recv_bytes(&self) -> Result<Vec<u8>> {
        let (bytes, _) = self.recv_frame(None)?;
        Ok(bytes)
    }

    /// Waits for the next message and copies its bytes to the start of
    /// `buf`, returning their length (Python's `recv_bytes_into`; pass
    /// `&mut buf[offset..]` for an offset).
    ///
    /// # Errors
    /// [`ErrorKind::BufferTooShort`] when the message is longer than `buf`:
    /// nothing is copied and the message stays first in line, so the next
    /// `recv_bytes_into` with a large enough buffer, or `recv_bytes`, gets
    /// it. Otherwise as [`recv`](Connection::recv).
    ///
    /// # Examples
    ///
    /// ```
    /// use multiproc::{pipe, ErrorKind};
    ///
    /// let (a, b) = pipe::<()>()?;
    /// a.send_bytes(b"twelve bytes")?;
    /// let mut small = [0u8; 4];
    /// assert_eq!(b.recv_bytes_into(&mut small).unwrap_err().kind(), ErrorKind::BufferTooShort);
    /// let mut big = [0u8; 64];
    /// let n = b.recv_bytes_into(&mut big)?;
    /// assert_eq!(&big[..n], b"twelve bytes");
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    pub fn recv_bytes_into(&self, buf: &mut [u8]) -> Result<usize> {
        self.check(false)?;
        let mut r = self.lock();
        let (bytes, fds) = match Self::next_locked(&mut r, None)? {
            Next::Kept(bytes, fds) => (bytes, fds),
            Next::Buffered(kind, body, fds) => {
                let body = PipeMessage::decode(kind, r.conn.body(body)).bytes();
                if body.len() <= buf.len() {
                    buf[..body.len()].copy_from_slice(body);
                    let n = body.len();
                    r.conn.compact();
                    return Ok(n);
                }
                let bytes = body.to_vec();
                r.conn.compact();
                (bytes, fds)
            }
        };
        if bytes.len() <= buf.len() {
            buf[..bytes.len()].copy_from_slice(&bytes);
            return Ok(bytes.len());
        }
        let (len, room) = (bytes.len(), buf.len());
        r.kept = Some((bytes, fds));
        Err(Error::new(
            ErrorKind::BufferTooShort,
            format!(
                "the next message is {len} bytes and the buffer holds only {room}: nothing was \
                 copied and the message stays first in line; receive it with a buffer of at \
                 least {len} bytes or with recv_bytes"
            ),
        ))
    }

    /// The bytes of the next message, whatever its kind, and its handles.
    fn recv_frame(&self, timeout: Option<Duration>) -> Result<(Vec<u8>, Vec<OwnedFd>)> {
        self.check(false)?;
        let mut r = self.lock();
        match Self::next_locked(&mut r, timeout)? {
            Next::Kept(bytes, fds) => Ok((bytes, fds)),
            Next::Buffered(_, body, fds) => {
                // A message's bytes are its body, whatever its kind.
                let bytes = r.conn.take_body(body);
                // Gives back the buffer of a large message now, not at the
                // next receive.
                r.conn.compact();
                Ok((bytes, fds))
            }
        }
    }

    /// Waits for the next message and hands its bytes and handles to `f`,
    /// read where they are: a large body's mapped file is the source that
    /// large `Bytes` in it view instead of copying (see [`crate::Bytes`]).
    fn recv_with<R>(
        &self,
        timeout: Option<Duration>,
        f: impl FnOnce(&[u8], Vec<OwnedFd>) -> R,
    ) -> Result<R> {
        self.check(false)?;
        let mut r = self.lock();
        match Self::next_locked(&mut r, timeout)? {
            Next::Kept(bytes, fds) => Ok(f(&bytes, fds)),
            Next::Buffered(_, body, fds) => {
                let _share = crate::bytes::share_from(r.conn.body_file(&body));
                let out = f(r.conn.body(body), fds);
                r.conn.compact();
                Ok(out)
            }
        }
    }

    /// Waits for the next message: one given back by a too-short
    /// `recv_bytes_into`, else the next frame in the channel.
    fn next_locked(r: &mut Reader, timeout: Option<Duration>) -> Result<Next> {
        if let Some((bytes, fds)) = r.kept.take() {
            return Ok(Next::Kept(bytes, fds));
        }
        let deadline = timeout.and_then(crate::deadline_after);
        let c = &mut r.conn;
        loop {
            if let Some((kind, body, fds)) = next_frame(c)? {
                return Ok(Next::Buffered(kind, body, fds));
            }
            if let Some(d) = deadline {
                let left = d.saturating_duration_since(Instant::now());
                let [r] =
                    sys::poll([sys::Interest { fd: c.fd(), read: true, write: false }], Some(left))
                        .map_err(|e| Error::io("could not poll a pipe", e))?;
                if !r.read && !r.hangup {
                    return Err(Error::timeout(format!("no message arrived within {timeout:?}")));
                }
            }
            match c.read_blocking() {
                Ok(false) => {}
                Ok(true) => {
                    if let Some((kind, body, fds)) = next_frame(c)? {
                        return Ok(Next::Buffered(kind, body, fds));
                    }
                    return Err(end_of_file(c));
                }
                // Frames before the broken rule are still delivered.
                Err(_) if c.violation().is_some() => {}
                Err(e) => return Err(closed_or_io(e, "receive")),
            }
        }
    }

    /// The next message's bytes and handles if one is whole now, reading
    /// what the socket has without blocking: the receive step of
    /// `recv_bytes_async`.
    pub(crate) fn try_recv_frame(&self) -> Result<TryRecv<(Vec<u8>, Vec<OwnedFd>)>> {
        self.check(false)?;
        let Some(mut r) = self.reader.try_lock() else { return Ok(TryRecv::Busy) };
        Ok(match Self::try_next_locked(&mut r)? {
            None => TryRecv::Empty,
            Some(Next::Kept(bytes, fds)) => TryRecv::Frame((bytes, fds)),
            Some(Next::Buffered(_, body, fds)) => {
                let bytes = r.conn.take_body(body);
                r.conn.compact();
                TryRecv::Frame((bytes, fds))
            }
        })
    }

    /// As [`try_recv_frame`](Self::try_recv_frame), handing the message's
    /// bytes and handles to `f` where they are, as `recv_with` does: the
    /// receive step of `recv_async`.
    pub(crate) fn try_recv_with<R>(
        &self,
        f: impl FnOnce(&[u8], Vec<OwnedFd>) -> R,
    ) -> Result<TryRecv<R>> {
        self.check(false)?;
        let Some(mut r) = self.reader.try_lock() else { return Ok(TryRecv::Busy) };
        Ok(match Self::try_next_locked(&mut r)? {
            None => TryRecv::Empty,
            Some(Next::Kept(bytes, fds)) => TryRecv::Frame(f(&bytes, fds)),
            Some(Next::Buffered(_, body, fds)) => {
                let _share = crate::bytes::share_from(r.conn.body_file(&body));
                let out = f(r.conn.body(body), fds);
                r.conn.compact();
                TryRecv::Frame(out)
            }
        })
    }

    /// The next message if one is whole now (`None` when none is and the
    /// socket has nothing more), reading without blocking.
    fn try_next_locked(r: &mut Reader) -> Result<Option<Next>> {
        if let Some((bytes, fds)) = r.kept.take() {
            return Ok(Some(Next::Kept(bytes, fds)));
        }
        let c = &mut r.conn;
        let mut dry = false;
        loop {
            if let Some((kind, body, fds)) = next_frame(c)? {
                return Ok(Some(Next::Buffered(kind, body, fds)));
            }
            if dry {
                return Ok(None);
            }
            match c.read_some() {
                Ok(false) => dry = !c.has_more(),
                Ok(true) => {
                    return match next_frame(c)? {
                        Some((kind, body, fds)) => Ok(Some(Next::Buffered(kind, body, fds))),
                        None => Err(end_of_file(c)),
                    };
                }
                // Frames before the broken rule are still delivered.
                Err(_) if c.violation().is_some() => {}
                Err(e) => return Err(closed_or_io(e, "receive")),
            }
        }
    }

    /// The descriptor `recv_async` waits on; `None` for a sending-only end.
    pub(crate) fn recv_fd(&self) -> Option<BorrowedFd<'_>> {
        self.wait_state().map(|(fd, _)| fd)
    }

    /// Queues a value's frame on this end and writes what the socket takes
    /// now: the first step of `send_async`. `Ok(None)` when another thread
    /// is sending (nothing was queued and `fds` are left as they were);
    /// otherwise the stream position the message ends at, and how far it got.
    pub(crate) fn try_start_send(
        &self,
        bytes: &Chunk,
        fds: &mut Option<Vec<OwnedFd>>,
    ) -> Result<Option<(u64, TrySend)>> {
        self.check(true)?;
        let Some(mut c) = self.writer.try_lock() else { return Ok(None) };
        PipeMessage::Object(bytes).encode(c.output(), fds.take().unwrap_or_default())?;
        let end = c.queued();
        drop(c);
        self.try_continue_send(end).map(|s| Some((end, s)))
    }

    /// Writes queued output the socket takes now, until the message ending
    /// at `end` is out; reads what the peer sends meanwhile into the
    /// receiving half, as a blocking send does, so that two ends sending
    /// large messages to each other cannot both wait forever.
    pub(crate) fn try_continue_send(&self, end: u64) -> Result<TrySend> {
        let Some(mut c) = self.writer.try_lock() else { return Ok(TrySend::Busy) };
        if let Err(e) = c.write_some() {
            c.discard_output();
            return Err(closed_or_io(e, "send"));
        }
        if c.written() >= end {
            return Ok(TrySend::Done);
        }
        if self.readable {
            if let Some(mut reader) = self.reader.try_lock() {
                let was_idle = reader.conn.input_idle();
                let _ = reader.conn.read_some();
                if was_idle && !reader.conn.input_idle() {
                    // A receive waiting for the socket would not see it now.
                    drop(reader);
                    // SAFETY: as in `wait_state`.
                    crate::aio::wake_fd(unsafe { BorrowedFd::borrow_raw(self.read_fd) });
                }
            }
        }
        Ok(TrySend::Pending)
    }

    /// The descriptor `send_async` waits on, and whether to wait for input
    /// too (see [`Connection::try_continue_send`]).
    pub(crate) fn send_fd(&self) -> (BorrowedFd<'_>, bool) {
        let read = self.readable && self.reader.try_lock().is_some_and(|r| !r.conn.has_more());
        // SAFETY: as in `wait_state`: the descriptor belongs to `self`'s
        // channel (the write end duplicates the same socket), lives as long
        // as `self`, and the borrow is tied to `self`.
        (unsafe { BorrowedFd::borrow_raw(self.read_fd) }, read)
    }

    /// True when a message (or end of file) is ready within `timeout`
    /// (`None`: wait as long as it takes).
    ///
    /// # Errors
    /// An OS error.
    pub fn poll(&self, timeout: Option<Duration>) -> Result<bool> {
        self.check(false)?;
        let r = self.lock();
        if r.kept.is_some() || !r.conn.input_idle() {
            return Ok(true);
        }
        let [r] = sys::poll([sys::Interest { fd: r.conn.fd(), read: true, write: false }], timeout)
            .map_err(|e| Error::io("could not poll a pipe", e))?;
        Ok(r.read || r.hangup)
    }

    /// Closes this end (dropping it does the same).
    pub fn close(self) {}
}

/// What a receive that met end of file with no whole message reports.
fn end_of_file(c: &Conn) -> Error {
    if c.input_idle() && !c.has_partial_input() {
        Error::new(ErrorKind::Closed, "end of file: every copy of the pipe's other end is closed")
    } else {
        Error::new(
            ErrorKind::Protocol,
            "the pipe's writer closed (or died) in the middle of a message",
        )
    }
}

/// What one non-blocking receive step found (see `aio`).
pub(crate) enum TryRecv<R> {
    /// The next message (its bytes and handles, or what was made of them).
    Frame(R),
    /// No whole message yet, and the socket has nothing more now.
    Empty,
    /// Another thread is receiving on this end.
    Busy,
}

/// What one non-blocking send step did (see `aio`).
pub(crate) enum TrySend {
    /// Everything up to the message's end reached the kernel.
    Done,
    /// Part of it is queued on this end, to go out as the socket drains.
    Pending,
    /// Another thread is sending on this end.
    Busy,
}

/// The next whole message, or a `Protocol` error once the other end broke
/// the framing rules (the channel reads nothing more after that).
#[allow(clippy::type_complexity)]
fn next_frame(c: &mut Conn) -> Result<Option<(u8, Body, Vec<OwnedFd>)>> {
    c.try_next_frame().map_err(|v| {
        Error::new(
            ErrorKind::Protocol,
            format!(
                "the other end of a pipe sent {v}; the descriptors were closed and this end \
                 reads no more messages: only multiproc should write to a pipe's socket"
            ),
        )
    })
}

fn closed_or_io(e: std::io::Error, what: &str) -> Error {
    match e.kind() {
        std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset => Error::new(
            ErrorKind::Closed,
            format!("cannot {what}: every copy of the pipe's other end is closed"),
        ),
        _ => Error::io(format!("could not {what} on a pipe"), e),
    }
}

impl<T: Serialize> Connection<T> {
    /// Sends a value.
    ///
    /// # Errors
    /// [`ErrorKind::Serialize`] when the value cannot be encoded (nothing is
    /// sent); [`ErrorKind::Closed`] when the other end is gone.
    ///
    /// # Examples
    ///
    /// ```
    /// let (a, b) = multiproc::pipe::<String>()?;
    /// a.send(&"ping".to_string())?;
    /// assert_eq!(b.recv()?, "ping");
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    pub fn send(&self, value: &T) -> Result<()> {
        let (bytes, fds) = self.encode_value(value)?;
        // A large message is sent from where it was encoded, not copied.
        self.send_frame(PipeMessage::Object(&bytes), fds)
    }

    /// A value's encoding and the handles it carries, checked for this end.
    pub(crate) fn encode_value(&self, value: &T) -> Result<(Chunk, Vec<OwnedFd>)> {
        let (bytes, fds) = fdpass::collect(|| crate::codec::encode(value));
        let bytes = bytes.map_err(|e| {
            Error::new(
                ErrorKind::Serialize,
                format!(
                    "could not serialize a `{}` to send on a pipe: {e}",
                    std::any::type_name::<T>()
                ),
            )
        })?;
        if self.remote && !fds.is_empty() {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                format!(
                    "a `{}` holding {} handle(s) (a Queue, Lock, Fd, Connection…) cannot be sent \
                     over a TCP connection: handles travel only between processes of one \
                     machine (use a Unix socket address, or send plain data)",
                    std::any::type_name::<T>(),
                    fds.len()
                ),
            ));
        }
        Ok((Chunk::from(bytes), fds))
    }
}

impl<T: DeserializeOwned> Connection<T> {
    /// Waits for the next value.
    ///
    /// # Errors
    /// [`ErrorKind::Closed`] at end of file; [`ErrorKind::Protocol`] when the
    /// writer died mid-message; [`ErrorKind::Deserialize`] for bytes that are
    /// not a `T`.
    pub fn recv(&self) -> Result<T> {
        self.recv_within(None)
    }

    /// Waits at most `timeout` for the next value.
    ///
    /// # Errors
    /// As [`recv`](Connection::recv), and [`ErrorKind::Timeout`].
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let (_a, b) = multiproc::pipe::<u32>()?;
    /// assert!(b.recv_timeout(Duration::from_millis(10)).unwrap_err().is_timeout());
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    pub fn recv_timeout(&self, timeout: Duration) -> Result<T> {
        self.recv_within(Some(timeout))
    }

    fn recv_within(&self, timeout: Option<Duration>) -> Result<T> {
        self.recv_with(timeout, Self::decode_value)?
    }

    /// The value a message's bytes and handles encode.
    pub(crate) fn decode_value(bytes: &[u8], fds: Vec<OwnedFd>) -> Result<T> {
        fdpass::supply(fds, || crate::codec::decode(bytes)).map_err(|e| {
            Error::new(
                ErrorKind::Deserialize,
                format!("a message on a pipe is not a `{}`: {e}", std::any::type_name::<T>()),
            )
        })
    }
}

#[derive(Serialize, Deserialize)]
struct Wire {
    readable: bool,
    writable: bool,
    remote: bool,
}

impl<T> Serialize for Connection<T> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple;
        let r = self.lock();
        let mut t = s.serialize_tuple(2)?;
        let wire = Wire { readable: self.readable, writable: self.writable, remote: self.remote };
        t.serialize_element(&wire)?;
        t.serialize_element(&FdRef(r.conn.fd()))?;
        t.end()
    }
}

struct FdRef<'a>(std::os::fd::BorrowedFd<'a>);

impl Serialize for FdRef<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        fdpass::serialize_fd(self.0.as_fd(), s)
    }
}

struct FdOwned(OwnedFd);

impl<'de> Deserialize<'de> for FdOwned {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        fdpass::deserialize_fd(d).map(FdOwned)
    }
}

impl<'de, T> Deserialize<'de> for Connection<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        decode_end(d, (true, true), "a duplex `Connection`")
    }
}

/// Decodes a pipe end whose `(readable, writable)` must be `dirs`: a
/// message that claims another kind of end (a peer's lie, or a mismatch
/// between the types the two sides use) fails to decode.
fn decode_end<'de, D: Deserializer<'de>, T>(
    d: D,
    dirs: (bool, bool),
    what: &str,
) -> std::result::Result<Connection<T>, D::Error> {
    use serde::de::Error as _;
    let (w, fd) = <(Wire, FdOwned)>::deserialize(d)?;
    if (w.readable, w.writable) != dirs {
        return Err(D::Error::custom(format!(
            "the message holds a pipe end that receives: {}, sends: {}, where {what} was \
             expected (both sides must use the same type for it)",
            w.readable, w.writable
        )));
    }
    Connection::with_remote(fd.0, w.readable, w.writable, w.remote).map_err(D::Error::custom)
}

impl<T> AsFd for Connection<T> {
    /// The connection's socket (Python's `fileno()`); see [`Connection`].
    fn as_fd(&self) -> BorrowedFd<'_> {
        // SAFETY: `read_fd` is owned by `self.reader`'s channel, which keeps
        // it open as long as `self` lives; the borrow is tied to `self`.
        unsafe { BorrowedFd::borrow_raw(self.read_fd) }
    }
}

impl<T> std::fmt::Debug for Connection<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("readable", &self.readable)
            .field("writable", &self.writable)
            .field("remote", &self.remote)
            .finish()
    }
}

// --- one-way ends ------------------------------------------------------------

/// The receiving end of a [`pipe_one_way`]: it has the receive half of
/// [`Connection`]'s methods and no `send`.
///
/// `recv` returns an [`ErrorKind::Closed`] error once every copy of the
/// [`Sender`] is closed, in every process; a sender killed mid-message
/// yields an error, not a partial value. Pass it to a process or task as an
/// argument, or through a queue or pipe, like any handle; send it before
/// reading from it (data it has already buffered stays behind). Its
/// descriptor ([`AsFd`], Python's `fileno()`) is readable when a message
/// or end of file is there; [`connection::wait`](crate::connection::wait)
/// takes it too.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
///
/// let (rx, tx) = multiproc::pipe_one_way::<u32>()?;
/// assert!(!rx.poll(Some(Duration::ZERO))?);
/// tx.send(&7)?;
/// assert!(rx.poll(Some(Duration::from_secs(5)))?);
/// assert_eq!(rx.recv()?, 7);
/// # Ok::<(), multiproc::Error>(())
/// ```
///
/// Sending on it does not compile:
///
/// ```compile_fail,E0599
/// let (rx, _tx) = multiproc::pipe_one_way::<u32>()?;
/// rx.send(&1)?;
/// # Ok::<(), multiproc::Error>(())
/// ```
pub struct Receiver<T>(pub(crate) Connection<T>);

/// The sending end of a [`pipe_one_way`]: it has the send half of
/// [`Connection`]'s methods and no `recv`.
///
/// A send fails with [`ErrorKind::Closed`] once every copy of the
/// [`Receiver`] is closed. Pass it to a process or task like any handle.
///
/// # Examples
///
/// ```
/// let (rx, tx) = multiproc::pipe_one_way::<Vec<u8>>()?;
/// tx.send(&vec![1, 2, 3])?;
/// tx.send_bytes(b"raw")?;
/// drop(tx);
/// assert_eq!(rx.recv()?, [1, 2, 3]);
/// assert_eq!(rx.recv_bytes()?, b"raw");
/// assert_eq!(rx.recv().unwrap_err().kind(), multiproc::ErrorKind::Closed);
/// # Ok::<(), multiproc::Error>(())
/// ```
///
/// Receiving on it does not compile:
///
/// ```compile_fail,E0599
/// let (_rx, tx) = multiproc::pipe_one_way::<u32>()?;
/// let n = tx.recv()?;
/// # Ok::<(), multiproc::Error>(())
/// ```
pub struct Sender<T>(pub(crate) Connection<T>);

impl<T> Receiver<T> {
    /// Waits for the next message and returns its bytes, as
    /// [`Connection::recv_bytes`].
    ///
    /// # Errors
    /// As [`recv`](Receiver::recv).
    pub fn recv_bytes(&self) -> Result<Vec<u8>> {
        self.0.recv_bytes()
    }

    /// Waits for the next message and copies its bytes to the start of
    /// `buf`, returning their length, as [`Connection::recv_bytes_into`].
    ///
    /// # Errors
    /// [`ErrorKind::BufferTooShort`] when the message is longer than `buf`
    /// (nothing is copied and the message stays first in line); otherwise
    /// as [`recv`](Receiver::recv).
    ///
    /// # Examples
    ///
    /// ```
    /// let (rx, tx) = multiproc::pipe_one_way::<()>()?;
    /// tx.send_bytes(b"abc")?;
    /// let mut buf = [0u8; 8];
    /// let n = rx.recv_bytes_into(&mut buf)?;
    /// assert_eq!(&buf[..n], b"abc");
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    pub fn recv_bytes_into(&self, buf: &mut [u8]) -> Result<usize> {
        self.0.recv_bytes_into(buf)
    }

    /// True when a message (or end of file) is ready within `timeout`
    /// (`None`: wait as long as it takes), as [`Connection::poll`].
    ///
    /// # Errors
    /// An OS error.
    pub fn poll(&self, timeout: Option<Duration>) -> Result<bool> {
        self.0.poll(timeout)
    }

    /// Closes this end (dropping it does the same).
    pub fn close(self) {}

    /// The connection under this end, for `connection::wait` and `aio`.
    pub(crate) fn inner(&self) -> &Connection<T> {
        &self.0
    }
}

impl<T: DeserializeOwned> Receiver<T> {
    /// Waits for the next value.
    ///
    /// # Errors
    /// [`ErrorKind::Closed`] once every copy of the sender is closed;
    /// [`ErrorKind::Protocol`] when the sender died mid-message;
    /// [`ErrorKind::Deserialize`] for bytes that are not a `T`.
    pub fn recv(&self) -> Result<T> {
        self.0.recv()
    }

    /// Waits at most `timeout` for the next value.
    ///
    /// # Errors
    /// As [`recv`](Receiver::recv), and [`ErrorKind::Timeout`].
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let (rx, _tx) = multiproc::pipe_one_way::<u32>()?;
    /// assert!(rx.recv_timeout(Duration::from_millis(10)).unwrap_err().is_timeout());
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    pub fn recv_timeout(&self, timeout: Duration) -> Result<T> {
        self.0.recv_timeout(timeout)
    }
}

impl<T> Sender<T> {
    /// Sends raw bytes, as [`Connection::send_bytes`].
    ///
    /// # Errors
    /// [`ErrorKind::Closed`] when every copy of the receiver is gone.
    pub fn send_bytes(&self, bytes: &[u8]) -> Result<()> {
        self.0.send_bytes(bytes)
    }

    /// Closes this end (dropping it does the same); once every copy is
    /// closed, the receiver reads end of file.
    pub fn close(self) {}

    /// The connection under this end, for `aio`.
    pub(crate) fn inner(&self) -> &Connection<T> {
        &self.0
    }
}

impl<T: Serialize> Sender<T> {
    /// Sends a value.
    ///
    /// # Errors
    /// [`ErrorKind::Serialize`] when the value cannot be encoded (nothing is
    /// sent); [`ErrorKind::Closed`] when every copy of the receiver is gone.
    pub fn send(&self, value: &T) -> Result<()> {
        self.0.send(value)
    }
}

impl<T> AsFd for Receiver<T> {
    /// The socket (Python's `fileno()`): readable when a message or end of
    /// file is there.
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

impl<T> AsFd for Sender<T> {
    /// The socket (Python's `fileno()`): writable when a send would not
    /// block.
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

impl<T> Serialize for Receiver<T> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de, T> Deserialize<'de> for Receiver<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        decode_end(d, (true, false), "a `Receiver`").map(Receiver)
    }
}

impl<T> Serialize for Sender<T> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de, T> Deserialize<'de> for Sender<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        decode_end(d, (false, true), "a `Sender`").map(Sender)
    }
}

impl<T> std::fmt::Debug for Receiver<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Receiver").field(&self.0.as_fd().as_raw_fd()).finish()
    }
}

impl<T> std::fmt::Debug for Sender<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Sender").field(&self.0.as_fd().as_raw_fd()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes a pipe end of type `E` from the wire `(readable, writable,
    /// remote)` and one socket, as a message from a peer would carry it.
    fn decode_as<E: DeserializeOwned>(dirs: (bool, bool)) -> Result<E> {
        let (_peer, fd) = socket_pair()?;
        let encoded = crate::codec::encode(&((dirs.0, dirs.1, false), 0u32)).unwrap();
        fdpass::supply(vec![fd], || crate::codec::decode::<E>(&encoded))
            .map_err(|e| Error::new(ErrorKind::Deserialize, e.to_string()))
    }

    /// A message that claims a different kind of end than the type that
    /// decodes it is refused, so a `Receiver` is always a receiving end and
    /// a `Sender` a sending one, whatever a peer writes.
    #[test]
    fn an_end_decodes_only_as_its_own_kind() {
        assert!(decode_as::<Receiver<u32>>((true, false)).is_ok());
        assert!(decode_as::<Sender<u32>>((false, true)).is_ok());
        assert!(decode_as::<Connection<u32>>((true, true)).is_ok());
        for dirs in [(false, true), (true, true), (false, false)] {
            let e = decode_as::<Receiver<u32>>(dirs).unwrap_err();
            assert!(e.to_string().contains("where a `Receiver` was expected"), "{e}");
        }
        for dirs in [(true, false), (true, true), (false, false)] {
            assert!(decode_as::<Sender<u32>>(dirs).is_err(), "{dirs:?}");
        }
        for dirs in [(true, false), (false, true), (false, false)] {
            assert!(decode_as::<Connection<u32>>(dirs).is_err(), "{dirs:?}");
        }
    }
}
