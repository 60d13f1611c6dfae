//! The client side: authenticated connections to a server, reused per
//! process, and the round trip every proxy call makes.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::Instant;

use parking_lot::Mutex;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::proto::{message, Reply, Request};
use super::transport::{self, Address, Stream};
use crate::error::{Error, ErrorKind, Result};

/// How many idle connections to one server a process keeps.
const MAX_IDLE: usize = 8;

/// Where a server is and the key that opens it. Travels inside proxies.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq, Hash)]
pub(crate) struct Remote {
    pub(crate) addr: Address,
    pub(crate) authkey: Vec<u8>,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key stays out of debug output.
        f.debug_struct("Remote").field("addr", &self.addr).finish_non_exhaustive()
    }
}

fn idle() -> &'static Mutex<HashMap<Remote, Vec<Stream>>> {
    static IDLE: OnceLock<Mutex<HashMap<Remote, Vec<Stream>>>> = OnceLock::new();
    IDLE.get_or_init(Default::default)
}

impl Remote {
    /// A connection: an idle one, or a new one made by `deadline`.
    pub(crate) fn stream(&self, deadline: Option<Instant>) -> Result<Stream> {
        if let Some(s) = idle().lock().get_mut(self).and_then(Vec::pop) {
            return Ok(s);
        }
        let within = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        transport::connect(&self.addr, &self.authkey, within)
    }

    /// Gives back a connection that finished its last round trip cleanly.
    pub(crate) fn give_back(&self, s: Stream) {
        let mut idle = idle().lock();
        let list = idle.entry(self.clone()).or_default();
        if list.len() < MAX_IDLE {
            list.push(s);
        }
    }

    /// Forgets every idle connection to this server.
    pub(crate) fn forget(&self) {
        idle().lock().remove(self);
    }

    /// One request and its reply, on a pooled connection.
    pub(crate) fn call(&self, req: &Request) -> Result<Reply> {
        let deadline = reply_deadline(req);
        let mut s = self.stream(deadline)?;
        let reply = self.round_trip(&mut s, req, deadline)?;
        self.give_back(s);
        Ok(reply)
    }

    /// One request and its reply on `s`, by `deadline` (see
    /// [`reply_deadline`]). An error means `s` must be dropped.
    pub(crate) fn round_trip(
        &self,
        s: &mut Stream,
        req: &Request,
        deadline: Option<Instant>,
    ) -> Result<Reply> {
        s.send_bytes(&message(req)?).map_err(|e| self.gone(e))?;
        if let Some(deadline) = deadline {
            // A timed call keeps its promise even when the server cannot:
            // it stopped (SIGSTOP, a debugger) or is stuck. The caller drops
            // `s`, so a reply that comes later is never read as another's.
            let left = deadline.saturating_duration_since(Instant::now());
            if !s.poll(Some(left)).map_err(|e| self.gone(e))? {
                return Err(Error::timeout(format!(
                    "the manager at {} did not answer a timed call in time (its own bound \
                     and {:?} more); it may be stopped or overloaded: check that its \
                     process runs",
                    self.addr,
                    super::proto::REPLY_GRACE
                )));
            }
        }
        // The stream refuses a reply over MAX_FRAME at its header (see
        // `transport::connect`): a Protocol error, the stream dropped.
        let buf = s.recv_bytes().map_err(|e| match e.kind() {
            ErrorKind::Protocol => {
                self.forget();
                Error::new(
                    ErrorKind::Protocol,
                    format!("the manager at {} broke the protocol: {e}", self.addr),
                )
            }
            _ => self.gone(e),
        })?;
        crate::codec::decode::<Reply>(&buf).map_err(|e| {
            Error::new(
                ErrorKind::Protocol,
                format!("the manager at {} sent a reply that does not decode: {e}", self.addr),
            )
        })
    }

    fn gone(&self, e: Error) -> Error {
        self.forget();
        Error::new(
            ErrorKind::Closed,
            format!(
                "the manager at {} is gone or unreachable ({e}); its objects cannot be used",
                self.addr
            ),
        )
    }
}

/// When a client gives up waiting for `req`'s reply, counted from now
/// (`None`: it waits for the reply or the server's death).
pub(crate) fn reply_deadline(req: &Request) -> Option<Instant> {
    req.reply_within().map(|b| Instant::now() + b)
}

/// `reply` as a result: a server error becomes an [`Error`] of its kind.
pub(crate) fn check(reply: Reply) -> Result<Reply> {
    match reply {
        Reply::Err { code, message } => Err(Error::new(code.kind(), format!("manager: {message}"))),
        r => Ok(r),
    }
}

pub(crate) fn unexpected(reply: Reply) -> Error {
    Error::new(ErrorKind::Protocol, format!("the manager sent an unexpected reply: {reply:?}"))
}

pub(crate) fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>> {
    crate::codec::encode(value).map_err(|e| {
        Error::new(
            ErrorKind::Serialize,
            format!(
                "a {} for the manager could not be serialized: {e}",
                std::any::type_name::<T>()
            ),
        )
    })
}

pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    crate::codec::decode(bytes).map_err(|e| {
        Error::new(
            ErrorKind::Deserialize,
            format!(
                "a {} from the manager could not be deserialized: {e}",
                std::any::type_name::<T>()
            ),
        )
    })
}
