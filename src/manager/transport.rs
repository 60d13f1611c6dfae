//! The one seam between the manager and its connections: they are
//! [`connection`](crate::connection) listeners and clients, so every
//! connection has proved it holds the key (mutual HMAC-SHA256) before its
//! first request is read.

use std::error::Error as _;
use std::time::Duration;

use crate::connection::{self, Client};
use crate::error::{Error, ErrorKind, Result};

pub use crate::connection::Address;

/// An authenticated connection; requests and replies travel as byte messages.
pub(crate) type Stream = crate::Connection<()>;

/// How long an accept waits before it looks at the stop flag again.
const STOP_CHECK: Duration = Duration::from_millis(50);

/// A bound, listening socket that authenticates its clients.
pub(crate) struct Listener(connection::Listener);

impl Listener {
    pub(crate) fn bind(addr: &Address, authkey: &[u8]) -> Result<Listener> {
        connection::Listener::bind(addr.clone(), authkey).map(Listener)
    }

    /// The address it listens on (with the real port when bound to port 0).
    pub(crate) fn address(&self) -> Address {
        self.0.address().clone()
    }

    /// The next authenticated client; `Ok(None)` when none came within a
    /// short while or one failed its handshake (the listener goes on).
    pub(crate) fn accept(&self) -> Result<Option<Stream>> {
        match self.0.accept_timeout::<()>(STOP_CHECK) {
            Ok(c) => Ok(Some(c)),
            Err(e) if e.kind() == ErrorKind::Authentication => {
                event!(WARN, error: display = e; "manager: a client was refused: {e}");
                Ok(None)
            }
            Err(e) if e.kind() == ErrorKind::Timeout => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// Connects to `addr` and authenticates with `authkey`, within `within`
/// (the handshake's default bound when that is longer or `None`).
///
/// # Errors
/// [`ErrorKind::Closed`] when nothing listens there (what a proxy sees once
/// its server is gone); otherwise as [`Client::connect`].
pub(crate) fn connect(addr: &Address, authkey: &[u8], within: Option<Duration>) -> Result<Stream> {
    let bound = within.map_or(connection::DEFAULT_HANDSHAKE_TIMEOUT, |w| {
        w.min(connection::DEFAULT_HANDSHAKE_TIMEOUT)
    });
    let s = Client::connect_timeout::<()>(addr.clone(), authkey, bound).map_err(|e| {
        let io = e.source().and_then(|s| s.downcast_ref::<std::io::Error>());
        let refused = io.is_some_and(|io| {
            matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::NotFound
            )
        });
        // A server killed while we connected closes the socket mid-handshake.
        let hung_up = e.kind() == ErrorKind::Closed;
        if refused || hung_up {
            Error::new(ErrorKind::Closed, format!("the manager at {addr} is gone: {e}"))
        } else if e.kind() == ErrorKind::Timeout {
            Error::timeout(format!(
                "the manager at {addr} did not answer in time ({e}); it may be stopped or \
                 overloaded: check that its process runs"
            ))
        } else {
            e
        }
    })?;
    // A reply is at most one manager message: a longer one is refused at
    // its header, before any of it is buffered.
    s.limit_messages(super::proto::MAX_FRAME as u32);
    Ok(s)
}

/// Whether the peer of `s` is still there. A client never sends while it
/// waits for a reply, so input on the connection means it hung up (or broke
/// the protocol: it is treated as gone either way).
pub(crate) fn peer_alive(s: &Stream) -> bool {
    connection::wait(&[s], Some(Duration::ZERO)).map_or(true, |ready| ready.is_empty())
}

/// Shuts the connection down, waking a thread blocked reading it.
pub(crate) fn shut_down(s: &Stream) {
    if let Some((fd, _)) = s.wait_state() {
        crate::sys::shutdown(fd);
    }
}

/// A fresh random key.
pub(crate) fn random_key() -> Result<Vec<u8>> {
    let mut key = vec![0u8; 32];
    getrandom::fill(&mut key).map_err(|e| {
        Error::io("could not draw a random authkey", std::io::Error::other(e.to_string()))
    })?;
    Ok(key)
}
