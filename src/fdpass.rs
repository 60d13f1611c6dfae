//! Descriptors that travel inside task arguments and results.
//!
//! A handle (a queue, a lock, a socket) is a descriptor. When a value is
//! encoded for another process, each handle in it adds a duplicate of its
//! descriptor to the message's list and writes the list index in its place;
//! the channel sends the list with the frame (SCM_RIGHTS). On the other side
//! the received descriptors are supplied to the decoder, and each handle
//! takes its own back by index. The lists live in thread-locals so that the
//! handles' serde impls need no extra parameters.

use std::cell::RefCell;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use serde::de::{self, Deserialize, Deserializer};
use serde::ser::{self, Serialize, Serializer};

thread_local! {
    static OUTGOING: RefCell<Option<Vec<OwnedFd>>> = const { RefCell::new(None) };
    static INCOMING: RefCell<Option<Vec<Option<OwnedFd>>>> = const { RefCell::new(None) };
}

/// Runs `f` (which encodes values) and returns the descriptors it attached.
///
/// Only the call of `f` is generic; the set-up around it is out of line, so
/// each of its many instances (one per value type) stays small.
pub(crate) fn collect<R>(f: impl FnOnce() -> R) -> (R, Vec<OwnedFd>) {
    let outer = begin_collect();
    let r = f();
    (r, end_collect(outer))
}

#[inline(never)]
fn begin_collect() -> Option<Vec<OwnedFd>> {
    OUTGOING.with(|o| o.borrow_mut().replace(Vec::new()))
}

#[inline(never)]
fn end_collect(outer: Option<Vec<OwnedFd>>) -> Vec<OwnedFd> {
    OUTGOING.with(|o| std::mem::replace(&mut *o.borrow_mut(), outer)).unwrap_or_default()
}

/// Runs `f` (which decodes values) with `fds` available to the handles in
/// them. Descriptors no handle took are closed afterwards.
pub(crate) fn supply<R>(fds: Vec<OwnedFd>, f: impl FnOnce() -> R) -> R {
    let outer = begin_supply(fds);
    let r = f();
    end_supply(outer);
    r
}

type Incoming = Option<Vec<Option<OwnedFd>>>;

#[inline(never)]
fn begin_supply(fds: Vec<OwnedFd>) -> Incoming {
    INCOMING.with(|i| i.borrow_mut().replace(fds.into_iter().map(Some).collect()))
}

#[inline(never)]
fn end_supply(outer: Incoming) {
    INCOMING.with(|i| *i.borrow_mut() = outer);
}

/// Encodes a descriptor: a duplicate travels with the message.
///
/// # Errors
/// When the value is not being sent to a multiproc process (e.g. a handle
/// written as JSON), or the descriptor cannot be duplicated.
pub(crate) fn serialize_fd<S: Serializer>(fd: BorrowedFd<'_>, s: S) -> Result<S::Ok, S::Error> {
    let index = OUTGOING.with(|o| -> Result<u32, String> {
        let mut o = o.borrow_mut();
        let list = o.as_mut().ok_or(
            "a multiproc handle can only be serialized as an argument or result of a \
             multiproc task or process",
        )?;
        let dup = fd
            .try_clone_to_owned()
            .map_err(|e| format!("could not duplicate a descriptor: {e}"))?;
        list.push(dup);
        Ok(list.len() as u32 - 1)
    });
    match index {
        Ok(i) => s.serialize_u32(i),
        Err(msg) => Err(ser::Error::custom(msg)),
    }
}

/// Decodes a descriptor written by [`serialize_fd`].
///
/// # Errors
/// When the value does not come from a multiproc message, or the index
/// names no descriptor that arrived with it.
pub(crate) fn deserialize_fd<'de, D: Deserializer<'de>>(d: D) -> Result<OwnedFd, D::Error> {
    let index = u32::deserialize(d)? as usize;
    INCOMING.with(|i| {
        let mut i = i.borrow_mut();
        let list = i.as_mut().ok_or_else(|| {
            de::Error::custom(
                "a multiproc handle can only be deserialized from a multiproc message",
            )
        })?;
        list.get_mut(index).and_then(Option::take).ok_or_else(|| {
            de::Error::custom(format!("descriptor {index} did not arrive with the message"))
        })
    })
}

/// Any owned descriptor (a `TcpStream`, a `File`, a `UnixStream`, …) wrapped
/// so that it can be an argument of a [`Process`](crate::Process) or a pool
/// task: the receiving process gets its own descriptor for the same open file.
///
/// # Examples
///
/// ```
/// use multiproc::{Fd, Pool};
/// use std::io::Write;
/// use std::os::unix::net::UnixStream;
///
/// fn greet(mut s: Fd<UnixStream>) { s.write_all(b"hi").unwrap(); }
///
/// let (a, mut b) = UnixStream::pair()?;
/// let pool = Pool::new(1)?;
/// pool.apply(greet, Fd::new(a))?;
/// let mut buf = [0; 2];
/// std::io::Read::read_exact(&mut b, &mut buf)?;
/// assert_eq!(&buf, b"hi");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Fd<T>(T);

impl<T> Fd<T> {
    /// Wraps `value` for sending.
    pub fn new(value: T) -> Fd<T> {
        Fd(value)
    }

    /// The wrapped value.
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> std::ops::Deref for Fd<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T> std::ops::DerefMut for Fd<T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.0
    }
}

impl<T: AsFd> Serialize for Fd<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        serialize_fd(self.0.as_fd(), s)
    }
}

impl<'de, T: From<OwnedFd>> Deserialize<'de> for Fd<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        deserialize_fd(d).map(|fd| Fd(T::from(fd)))
    }
}

impl<T: std::io::Read> std::io::Read for Fd<T> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(buf)
    }
}

impl<T: std::io::Write> std::io::Write for Fd<T> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}
