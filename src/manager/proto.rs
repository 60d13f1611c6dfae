//! The manager's wire: typed requests and replies, each one byte message of
//! a [`connection`](crate::connection) (and length-prefixed frames on the
//! channel between a parent and its server process).
//!
//! A message is a postcard value of at most [`MAX_FRAME`] bytes, decoded with
//! the crate's limited decoder (element budget, depth), so a peer's word
//! never sizes an allocation or indexes anything.

use std::io::{Read, Write};

use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result};

/// The largest frame either side accepts (request or reply).
pub(crate) const MAX_FRAME: usize = 16 << 20;

/// An encoded value: the server never needs to know its type. Two keys are
/// the same key when their encodings are the same bytes.
pub(crate) type Bytes = Vec<u8>;

/// What kind of object to create on the server.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) enum Kind {
    Dict,
    List,
    Namespace,
    Queue {
        maxsize: u64,
    },
    Value,
    Lock,
    Event,
    Semaphore {
        value: u64,
        bound: Option<u64>,
    },
    Barrier {
        parties: u64,
    },
    /// A registered user type, by its name.
    User(String),
}

/// A request from a client.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Request {
    /// Creates an object; `init` is its initial contents (see `server::create`).
    Create { kind: Kind, init: Bytes },
    /// An operation on object `obj`.
    Call { obj: u64, op: Op },
    /// Answers `Done`: a liveness probe.
    Ping,
}

/// Timeouts travel in microseconds; `None` waits without bound.
pub(crate) type Wait = Option<u64>;

/// How much longer than a timed operation's own wait a client waits for its
/// reply: a server answers a due timeout in well under a millisecond, so
/// a reply later than this means a server that is stopped or stuck.
pub(crate) const REPLY_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

impl Request {
    /// How long the client waits for this request's reply: a bounded or
    /// non-blocking operation, the caller's bound and [`REPLY_GRACE`];
    /// `None` for everything else (an unbounded wait, or an operation
    /// whose time is the user's, like a method call), which a server's
    /// death still ends (its connection closes).
    pub(crate) fn reply_within(&self) -> Option<std::time::Duration> {
        let Request::Call { op, .. } = self else { return None };
        let (wait, block) = match op {
            Op::Put { wait, block, .. }
            | Op::Take { wait, block }
            | Op::Acquire { wait, block } => (*wait, *block),
            Op::WaitSet { wait } | Op::BarrierWait { wait } => (*wait, true),
            _ => return None,
        };
        let own = match (block, wait) {
            (false, _) => std::time::Duration::ZERO,
            (true, Some(us)) => std::time::Duration::from_micros(us),
            (true, None) => return None,
        };
        Some(own.saturating_add(REPLY_GRACE))
    }
}

/// The operations objects answer. An operation the object's kind does not
/// have gets an error reply.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Op {
    // Containers.
    Len,
    Clear,
    Snapshot,
    // dict
    Get(Bytes),
    Insert(Bytes, Bytes),
    Remove(Bytes),
    Contains(Bytes),
    SetDefault(Bytes, Bytes),
    Keys,
    Values,
    Update(Vec<(Bytes, Bytes)>),
    // list
    Index(i64),
    SetIndex(i64, Bytes),
    Append(Bytes),
    Extend(Vec<Bytes>),
    Pop(Option<i64>),
    InsertAt(i64, Bytes),
    // namespace
    GetAttr(String),
    SetAttr(String, Bytes),
    DelAttr(String),
    // value
    Load,
    Store(Bytes),
    Swap(Bytes),
    // queue
    Put { item: Bytes, wait: Wait, block: bool },
    Take { wait: Wait, block: bool },
    // lock, semaphore
    Acquire { wait: Wait, block: bool },
    Release,
    Locked,
    // event
    Set,
    Unset,
    IsSet,
    WaitSet { wait: Wait },
    // barrier
    BarrierWait { wait: Wait },
    Abort,
    Reset,
    Waiting,
    // user types
    Method { name: String, args: Bytes },
}

/// Error codes that travel; each maps to an [`ErrorKind`].
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) enum Code {
    Protocol,
    NoSuchObject,
    WrongKind,
    NotRegistered,
    OutOfRange,
    Timeout,
    Empty,
    Full,
    BrokenBarrier,
    NotOwner,
    TooMany,
}

impl Code {
    pub(crate) fn kind(self) -> ErrorKind {
        match self {
            Code::Protocol | Code::WrongKind | Code::NotRegistered => ErrorKind::Protocol,
            Code::NoSuchObject | Code::OutOfRange => ErrorKind::InvalidArgument,
            Code::Timeout => ErrorKind::Timeout,
            Code::Empty => ErrorKind::Empty,
            Code::Full => ErrorKind::Full,
            Code::BrokenBarrier => ErrorKind::BrokenBarrier,
            Code::NotOwner => ErrorKind::InvalidState,
            Code::TooMany => ErrorKind::Io,
        }
    }
}

/// A reply from the server.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Reply {
    Done,
    Created(u64),
    Bool(bool),
    Count(u64),
    Value(Bytes),
    Maybe(Option<Bytes>),
    Many(Vec<Bytes>),
    Pairs(Vec<(Bytes, Bytes)>),
    /// A lock or semaphore was acquired; true when its previous owner died
    /// holding it.
    Acquired {
        owner_died: bool,
    },
    Err {
        code: Code,
        message: String,
    },
}

impl Reply {
    pub(crate) fn err(code: Code, message: impl Into<String>) -> Reply {
        Reply::Err { code, message: message.into() }
    }
}

/// The encoding of `value` as one message, within [`MAX_FRAME`].
pub(crate) fn message<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    let buf = crate::codec::encode(value)
        .map_err(|e| Error::new(ErrorKind::Serialize, format!("a manager message: {e}")))?;
    if buf.len() > MAX_FRAME {
        return Err(Error::new(
            ErrorKind::InvalidArgument,
            format!("a manager message of {} bytes is over the {MAX_FRAME}-byte limit", buf.len()),
        ));
    }
    Ok(buf)
}

/// Writes one frame holding `value` (the parent's channel to its server).
pub(crate) fn write_frame<W: Write, T: Serialize>(w: &mut W, value: &T) -> Result<()> {
    let mut buf = vec![0u8; 4];
    crate::codec::encode_into(value, &mut buf)
        .map_err(|e| Error::new(ErrorKind::Serialize, format!("a manager message: {e}")))?;
    let len = buf.len() - 4;
    if len > MAX_FRAME {
        return Err(Error::new(
            ErrorKind::InvalidArgument,
            format!("a manager message of {len} bytes is over the {MAX_FRAME}-byte limit"),
        ));
    }
    buf[..4].copy_from_slice(&(len as u32).to_le_bytes());
    w.write_all(&buf).map_err(|e| Error::io("could not write to the manager connection", e))?;
    Ok(())
}

/// Reads one frame's body into `buf` (replacing its contents). A length
/// over [`MAX_FRAME`] is an error before anything is allocated.
pub(crate) fn read_frame<R: Read>(r: &mut R, buf: &mut Vec<u8>) -> std::io::Result<()> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len)?;
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("a frame of {len} bytes is over the {MAX_FRAME}-byte limit"),
        ));
    }
    buf.clear();
    // Read in steps so that a peer announcing a long frame and sending
    // little makes us hold only what it sent.
    let mut left = len;
    while left > 0 {
        let step = left.min(64 << 10);
        let start = buf.len();
        buf.resize(start + step, 0);
        r.read_exact(&mut buf[start..])?;
        left -= step;
    }
    Ok(())
}

/// `duration` in the microseconds a [`Wait`] holds.
pub(crate) fn wait_of(duration: Option<std::time::Duration>) -> Wait {
    duration.map(|d| d.as_micros().min(u64::MAX as u128) as u64)
}
