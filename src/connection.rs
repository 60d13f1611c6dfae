//! `connection`: Python's `multiprocessing.connection`: a [`Listener`] on a
//! Unix socket path or a TCP address, a [`Client`] that connects to it, both
//! proving they hold the same key before any message flows, and [`wait`]
//! over several connections.
//!
//! # The handshake
//!
//! Each side proves it knows the key without sending it, with HMAC-SHA256
//! over a fresh random nonce from the other side (Python 3.11 does the same
//! with MD5 and a 20-byte nonce, in three round trips; this one takes two):
//!
//! 1. the listener sends a challenge: a version tag and a 32-byte nonce `Nl`;
//! 2. the client answers `HMAC(key, "client" ‖ Nl)` and its own nonce `Nc`;
//! 3. the listener checks the answer in constant time and replies with a
//!    verdict: refused, or accepted with `HMAC(key, "listener" ‖ Nc ‖ Nl)`;
//! 4. the client checks that proof and sends its own verdict.
//!
//! Every handshake frame is read with a cap (a body of at most 128 bytes,
//! the header checked before the body is read) and under a deadline, so a
//! peer that sends garbage, a 4 GiB length, or nothing at all fails its own
//! handshake and holds up no one. The listener runs the handshakes of all
//! the clients that arrive together, so a silent client does not delay the
//! next.

use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::error::{Error, ErrorKind, Result};
use crate::pipe::Connection;

/// How long a peer has to complete the handshake unless told otherwise.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshakes a listener runs at once; more clients wait in the kernel's
/// backlog until one finishes or times out.
const MAX_PENDING: usize = 64;
/// The frame kind of every handshake message (in the pipe's frame layout).
const HELLO_KIND: u8 = 0xA5;
/// The largest handshake body read.
const MAX_BODY: usize = 128;
const HEADER: usize = 6;
const NONCE: usize = 32;
const DIGEST: usize = 32;
/// Opens the listener's challenge: the protocol and its version.
const TAG: &[u8; 8] = b"mpauth\x00\x01";
const ACCEPTED: u8 = 1;
const REFUSED: u8 = 0;

/// Where a [`Listener`] listens: a Unix socket path or a TCP address.
///
/// Serializable, so a process can be told where to connect.
///
/// # Examples
///
/// ```
/// use multiproc::connection::{Address, ToAddress};
///
/// let unix = "./app.sock".to_address()?; // a `/`: a Unix socket path
/// assert_eq!(unix, Address::Unix("./app.sock".into()));
/// assert_eq!(unix.to_string(), "unix:./app.sock");
/// let tcp = "127.0.0.1:5000".to_address()?;
/// assert_eq!(tcp, Address::Tcp("127.0.0.1:5000".parse().unwrap()));
/// # Ok::<(), multiproc::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Address {
    /// A Unix socket at this path: only this machine can connect, and
    /// connections carry handles (queues, locks, descriptors).
    Unix(PathBuf),
    /// A TCP address: other machines can connect; connections carry plain
    /// values only.
    Tcp(SocketAddr),
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Address::Unix(p) => write!(f, "unix:{}", p.display()),
            Address::Tcp(a) => write!(f, "tcp:{a}"),
        }
    }
}

/// What can name an [`Address`]: an `Address`, a `SocketAddr`, a `Path` or
/// `PathBuf`, a `(host, port)` pair, or a string. A string with a `/` in it
/// is a Unix socket path (write `./name` for one in the current directory);
/// any other string is a TCP `host:port`, resolved when it is used.
///
/// # Examples
///
/// ```
/// use multiproc::connection::{Address, ToAddress};
///
/// let a = ("127.0.0.1", 5000).to_address()?;
/// assert_eq!(a, "127.0.0.1:5000".to_address()?);
/// assert!(matches!(std::path::Path::new("/tmp/s").to_address()?, Address::Unix(_)));
/// # Ok::<(), multiproc::Error>(())
/// ```
pub trait ToAddress {
    /// The address, resolving a host name if there is one.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidArgument`] when a `host:port` does not resolve.
    fn to_address(&self) -> Result<Address>;
}

impl ToAddress for Address {
    fn to_address(&self) -> Result<Address> {
        Ok(self.clone())
    }
}

impl ToAddress for SocketAddr {
    fn to_address(&self) -> Result<Address> {
        Ok(Address::Tcp(*self))
    }
}

impl ToAddress for Path {
    fn to_address(&self) -> Result<Address> {
        Ok(Address::Unix(self.to_path_buf()))
    }
}

impl ToAddress for PathBuf {
    fn to_address(&self) -> Result<Address> {
        Ok(Address::Unix(self.clone()))
    }
}

impl ToAddress for str {
    fn to_address(&self) -> Result<Address> {
        if self.contains('/') {
            return Ok(Address::Unix(PathBuf::from(self)));
        }
        resolve(self, self)
    }
}

impl ToAddress for String {
    fn to_address(&self) -> Result<Address> {
        self.as_str().to_address()
    }
}

impl ToAddress for (&str, u16) {
    fn to_address(&self) -> Result<Address> {
        resolve(*self, &format!("{}:{}", self.0, self.1))
    }
}

impl ToAddress for (std::net::IpAddr, u16) {
    fn to_address(&self) -> Result<Address> {
        Ok(Address::Tcp(SocketAddr::from(*self)))
    }
}

impl<A: ToAddress + ?Sized> ToAddress for &A {
    fn to_address(&self) -> Result<Address> {
        (**self).to_address()
    }
}

fn resolve(what: impl ToSocketAddrs, shown: &str) -> Result<Address> {
    let bad = |why: String| {
        Error::new(
            ErrorKind::InvalidArgument,
            format!(
                "`{shown}` is not a TCP address ({why}): write `host:port` for TCP, or a path \
                 with a `/` in it (`./name`) for a Unix socket"
            ),
        )
    };
    let mut addrs = what.to_socket_addrs().map_err(|e| bad(e.to_string()))?;
    addrs.next().map(Address::Tcp).ok_or_else(|| bad("it resolves to no address".into()))
}

fn check_key(authkey: &[u8]) -> Result<Vec<u8>> {
    if authkey.is_empty() {
        return Err(Error::new(
            ErrorKind::InvalidArgument,
            "an empty authkey proves nothing: give both sides the same secret (32 random bytes \
             is plenty)",
        ));
    }
    Ok(authkey.to_vec())
}

enum Socket {
    Unix(UnixListener),
    Tcp(TcpListener),
}

/// Accepts connections on an [`Address`] from clients that know its key
/// (Python's `multiprocessing.connection.Listener`).
///
/// `accept` returns only connections whose peer passed the handshake (see
/// the [module docs](self)); a peer that fails makes `accept` return an
/// [`ErrorKind::Authentication`] error, and the next `accept` serves the
/// next client. At most 64 handshakes run at once; more clients wait in
/// the kernel's backlog until one of those finishes or runs out of its
/// handshake timeout. The listener removes its Unix socket file when
/// dropped.
///
/// # Examples
///
/// ```
/// use multiproc::connection::{Client, Listener};
///
/// let listener = Listener::bind("127.0.0.1:0", b"secret")?;
/// let addr = listener.address().clone();
/// let client = std::thread::spawn(move || -> multiproc::Result<String> {
///     let conn = Client::connect::<String>(&addr, b"secret")?;
///     conn.send(&"ping".to_string())?;
///     conn.recv()
/// });
/// let conn = listener.accept::<String>()?;
/// assert_eq!(conn.recv()?, "ping");
/// conn.send(&"pong".to_string())?;
/// assert_eq!(client.join().unwrap()?, "pong");
/// # Ok::<(), multiproc::Error>(())
/// ```
pub struct Listener {
    socket: Socket,
    address: Address,
    key: Vec<u8>,
    handshake_timeout: Duration,
    pending: Mutex<Vec<Pending>>,
    /// The socket file this listener made, and its identity, so a drop
    /// removes it only if it is still that file.
    unlink: Option<(PathBuf, (u64, u64))>,
}

impl Listener {
    /// Listens on `addr` (a Unix socket path or a TCP address, see
    /// [`ToAddress`]); a TCP port 0 picks a free port, which
    /// [`address`](Listener::address) tells.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidArgument`] for an empty key or an address that
    /// does not resolve; [`ErrorKind::Io`] when the address is in use (for a
    /// Unix path, remove a stale socket file first) or cannot be bound.
    pub fn bind(addr: impl ToAddress, authkey: impl AsRef<[u8]>) -> Result<Listener> {
        let key = check_key(authkey.as_ref())?;
        let address = addr.to_address()?;
        let (socket, address, unlink) = match address {
            Address::Unix(path) => {
                let l = UnixListener::bind(&path).map_err(|e| {
                    Error::io(format!("could not listen on the Unix socket {}", path.display()), e)
                })?;
                let id = std::fs::symlink_metadata(&path).map(|m| (m.dev(), m.ino())).ok();
                let unlink = id.map(|id| (path.clone(), id));
                (Socket::Unix(l), Address::Unix(path), unlink)
            }
            Address::Tcp(a) => {
                let l = TcpListener::bind(a)
                    .map_err(|e| Error::io(format!("could not listen on TCP {a}"), e))?;
                let local = l.local_addr().map_err(|e| Error::io("could not read the port", e))?;
                (Socket::Tcp(l), Address::Tcp(local), None)
            }
        };
        let nonblocking = match &socket {
            Socket::Unix(l) => l.set_nonblocking(true),
            Socket::Tcp(l) => l.set_nonblocking(true),
        };
        nonblocking.map_err(|e| Error::io("could not set up the listening socket", e))?;
        Ok(Listener {
            socket,
            address,
            key,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            pending: Mutex::new(Vec::new()),
            unlink,
        })
    }

    /// The address clients connect to (for TCP, with the actual port).
    pub fn address(&self) -> &Address {
        &self.address
    }

    /// How long each client has to complete the handshake from the moment
    /// it is accepted ([`DEFAULT_HANDSHAKE_TIMEOUT`] unless set).
    pub fn set_handshake_timeout(&mut self, timeout: Duration) {
        self.handshake_timeout = timeout;
    }

    /// Waits for the next client that passes the handshake.
    ///
    /// # Errors
    /// [`ErrorKind::Authentication`] when a client failed the handshake (a
    /// different key, another protocol, or no answer within the handshake
    /// timeout): the listener is fine, call `accept` again;
    /// [`ErrorKind::Io`] when the listening socket fails.
    pub fn accept<T>(&self) -> Result<Connection<T>> {
        self.accept_until(None)
    }

    /// As [`accept`](Listener::accept), waiting at most `timeout`.
    ///
    /// # Errors
    /// As `accept`, and [`ErrorKind::Timeout`] when no client completed the
    /// handshake in time (handshakes under way go on at the next accept).
    pub fn accept_timeout<T>(&self, timeout: Duration) -> Result<Connection<T>> {
        self.accept_until(crate::deadline_after(timeout))
    }

    fn accept_until<T>(&self, deadline: Option<Instant>) -> Result<Connection<T>> {
        let late = || Error::timeout("no client completed the handshake in time");
        let mut pending = match deadline {
            None => self.pending.lock(),
            Some(d) => self.pending.try_lock_until(d).ok_or_else(late)?,
        };
        loop {
            while pending.len() < MAX_PENDING {
                match self.accept_raw() {
                    Ok(Some((fd, remote, peer))) => {
                        let deadline = crate::deadline_after(self.handshake_timeout);
                        pending.push(Pending { hs: Server::new(fd)?, remote, peer, deadline });
                    }
                    Ok(None) => break,
                    Err(e) => return Err(e),
                }
            }
            let now = Instant::now();
            for i in 0..pending.len() {
                let p = &mut pending[i];
                let outcome = match p.hs.step(&self.key) {
                    Ok(false) if p.deadline.is_some_and(|d| d <= now) => Err(format!(
                        "did not complete the handshake within {:?} (a client of another \
                         protocol, or one that stopped answering)",
                        self.handshake_timeout
                    )),
                    Ok(false) => continue,
                    Ok(true) => Ok(()),
                    Err(why) => Err(why),
                };
                let p = pending.swap_remove(i);
                return match outcome {
                    Ok(()) => Connection::from_stream(p.hs.wire.fd, p.remote),
                    Err(why) => Err(Error::new(
                        ErrorKind::Authentication,
                        format!("the client at {} {why}; the listener goes on", p.peer),
                    )),
                };
            }
            let mut wake = deadline;
            let mut fds = Vec::with_capacity(pending.len() + 1);
            if pending.len() < MAX_PENDING {
                fds.push((self.socket_fd(), true, false));
            }
            for p in pending.iter() {
                fds.push((p.hs.wire.fd.as_fd(), true, p.hs.wire.has_output()));
                wake = earliest(wake, p.deadline);
            }
            let left = wake.map(|w| w.saturating_duration_since(Instant::now()));
            if deadline.is_some_and(|d| d <= Instant::now()) {
                return Err(late());
            }
            poll_many(&fds, left).map_err(|e| Error::io("could not poll a listener", e))?;
        }
    }

    fn socket_fd(&self) -> BorrowedFd<'_> {
        match &self.socket {
            Socket::Unix(l) => l.as_fd(),
            Socket::Tcp(l) => l.as_fd(),
        }
    }

    /// The next connection waiting in the backlog, if any: its socket (in
    /// blocking mode), whether it is TCP, and the peer's name.
    fn accept_raw(&self) -> Result<Option<(OwnedFd, bool, String)>> {
        let got = match &self.socket {
            Socket::Unix(l) => l.accept().map(|(s, _)| {
                let peer = match crate::sys::socket_peer(s.as_fd()) {
                    Ok((pid, _)) => format!("pid {pid}"),
                    Err(_) => "an unknown pid".to_string(),
                };
                (OwnedFd::from(s), false, peer)
            }),
            Socket::Tcp(l) => l.accept().map(|(s, a)| {
                tune_tcp(&s);
                (OwnedFd::from(s), true, a.to_string())
            }),
        };
        match got {
            Ok(c) => Ok(Some(c)),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(None),
            // The client gave up before we took it: nothing to report.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionAborted => Ok(None),
            Err(e) => Err(Error::io(format!("could not accept on {}", self.address), e)),
        }
    }

    /// Stops listening (dropping it does the same): clients whose handshake
    /// was under way see the connection close.
    pub fn close(self) {}
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Some((path, id)) = &self.unlink {
            let same = std::fs::symlink_metadata(path).is_ok_and(|m| (m.dev(), m.ino()) == *id);
            if same {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener").field("address", &self.address).finish_non_exhaustive()
    }
}

fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, None) => a,
        (None, b) => b,
    }
}

/// A handshake under way on the listener's side.
struct Pending {
    hs: Server,
    remote: bool,
    peer: String,
    deadline: Option<Instant>,
}

/// How long a TCP connection may be silent before the kernel probes its
/// peer, how often it then probes, and how many unanswered probes fail it:
/// a peer whose machine vanished fails a blocked call after about 35 s
/// instead of never (nothing would ever close such a connection).
const TCP_KEEPALIVE: (Duration, Duration, u32) =
    (Duration::from_secs(15), Duration::from_secs(5), 4);

/// Sets a TCP connection up as every connection of ours is: no delay for
/// small messages, and keep-alive probes ([`TCP_KEEPALIVE`]). Both are
/// best-effort: a connection without them still works.
fn tune_tcp(s: &TcpStream) {
    let _ = s.set_nodelay(true);
    let (idle, interval, count) = TCP_KEEPALIVE;
    let _ = crate::sys::keep_alive(s.as_fd(), idle, interval, count);
}

/// Connects to [`Listener`]s (Python's `multiprocessing.connection.Client`).
///
/// # Examples
///
/// ```
/// use multiproc::connection::{Client, Listener};
/// use multiproc::Connection;
///
/// let listener = Listener::bind("127.0.0.1:0", b"shared secret")?;
/// let addr = listener.address().clone();
/// let server = std::thread::spawn(move || -> multiproc::Result<()> {
///     let c: Connection<String> = listener.accept()?;
///     let line = c.recv()?;
///     c.send(&line.to_uppercase())
/// });
/// let c: Connection<String> = Client::connect(addr, b"shared secret")?;
/// c.send(&"hello".to_string())?;
/// assert_eq!(c.recv()?, "HELLO");
/// server.join().unwrap()?;
/// # Ok::<(), multiproc::Error>(())
/// ```
#[derive(Debug)]
pub struct Client(());

impl Client {
    /// Connects to `addr` and runs the handshake with `authkey`, within
    /// [`DEFAULT_HANDSHAKE_TIMEOUT`].
    ///
    /// # Errors
    /// [`ErrorKind::Authentication`] when the listener refused this key or
    /// could not prove it has it (the two sides were given different keys,
    /// or the address is not a multiproc listener); [`ErrorKind::Timeout`]
    /// when the handshake did not finish in time; [`ErrorKind::Closed`]
    /// when the listener hung up mid-handshake (it exited or was killed);
    /// [`ErrorKind::Io`] when the connection fails (nothing listens there);
    /// [`ErrorKind::InvalidArgument`] for an empty key or a bad address.
    pub fn connect<T>(addr: impl ToAddress, authkey: impl AsRef<[u8]>) -> Result<Connection<T>> {
        Self::connect_timeout(addr, authkey, DEFAULT_HANDSHAKE_TIMEOUT)
    }

    /// As [`connect`](Client::connect), with `timeout` for connecting and
    /// the handshake together.
    ///
    /// # Errors
    /// As `connect`.
    pub fn connect_timeout<T>(
        addr: impl ToAddress,
        authkey: impl AsRef<[u8]>,
        timeout: Duration,
    ) -> Result<Connection<T>> {
        let key = check_key(authkey.as_ref())?;
        let address = addr.to_address()?;
        let deadline = crate::deadline_after(timeout);
        let failed = |e| Error::io(format!("could not connect to {address}"), e);
        let (fd, remote): (OwnedFd, bool) = match &address {
            Address::Unix(p) => (
                crate::sys::connect_unix(p, deadline).map_err(|e| {
                    if e.kind() == std::io::ErrorKind::TimedOut {
                        Error::timeout(format!(
                            "could not connect to {address} within {timeout:?}: its backlog of \
                             connections not yet accepted stayed full (is it accepting?)"
                        ))
                    } else {
                        failed(e)
                    }
                })?,
                false,
            ),
            Address::Tcp(a) => {
                let s = TcpStream::connect_timeout(a, timeout).map_err(failed)?;
                tune_tcp(&s);
                (s.into(), true)
            }
        };
        let mut hs = ClientSide { wire: Wire::new(fd), state: ClientState::AwaitChallenge };
        loop {
            let done = hs.step(&key).map_err(|why| {
                let kind = if why.starts_with(HUNG_UP) {
                    ErrorKind::Closed
                } else {
                    ErrorKind::Authentication
                };
                Error::new(kind, format!("the listener at {address} {why}"))
            })?;
            if done {
                return Connection::from_stream(hs.wire.fd, remote);
            }
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if left == Some(Duration::ZERO) {
                return Err(Error::timeout(format!(
                    "the listener at {address} did not complete the handshake within {timeout:?}"
                )));
            }
            let fds = [(hs.wire.fd.as_fd(), true, hs.wire.has_output())];
            poll_many(&fds, left).map_err(|e| Error::io("could not poll a connection", e))?;
        }
    }
}

// --- the handshake ------------------------------------------------------------

type HmacSha256 = Hmac<Sha256>;

fn nonce() -> std::result::Result<[u8; NONCE], String> {
    let mut n = [0u8; NONCE];
    getrandom::fill(&mut n)
        .map_err(|e| format!("could not be challenged: no random bytes ({e})"))?;
    Ok(n)
}

fn mac(key: &[u8], parts: &[&[u8]]) -> HmacSha256 {
    let mut m = HmacSha256::new_from_slice(key).expect("HMAC takes a key of any length");
    for p in parts {
        m.update(p);
    }
    m
}

/// A socket read and written one small frame at a time, never past the
/// frame: what follows the handshake belongs to the connection.
struct Wire {
    fd: OwnedFd,
    input: Vec<u8>,
    output: Vec<u8>,
    sent: usize,
}

/// How a handshake failure begins when the peer went away mid-handshake
/// (it exited or was killed): to a client that is [`ErrorKind::Closed`],
/// not a refusal of its key, which always comes as a verdict.
const HUNG_UP: &str = "closed the connection during the handshake";

impl Wire {
    fn new(fd: OwnedFd) -> Wire {
        Wire { fd, input: Vec::new(), output: Vec::new(), sent: 0 }
    }

    fn queue(&mut self, body: &[&[u8]]) {
        let len: usize = body.iter().map(|b| b.len()).sum();
        self.output.extend_from_slice(&(len as u32).to_le_bytes());
        self.output.extend_from_slice(&[HELLO_KIND, 0]);
        for b in body {
            self.output.extend_from_slice(b);
        }
    }

    fn has_output(&self) -> bool {
        self.sent < self.output.len()
    }

    /// Writes what the socket takes now.
    fn flush(&mut self) -> std::result::Result<(), String> {
        while self.has_output() {
            match crate::sys::send(self.fd.as_fd(), &self.output[self.sent..], false) {
                Ok(n) => self.sent += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(format!("{HUNG_UP} ({e})")),
            }
        }
        self.output.clear();
        self.sent = 0;
        Ok(())
    }

    /// The next whole frame's body, reading only what it needs.
    fn frame(&mut self) -> std::result::Result<Option<Vec<u8>>, String> {
        loop {
            let want = match self.input.get(..HEADER) {
                None => HEADER,
                Some(h) => {
                    let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
                    if h[4] != HELLO_KIND || h[5] != 0 || len > MAX_BODY {
                        return Err(format!(
                            "sent bytes that are not a multiproc handshake (header {h:02x?}; a \
                             handshake frame has kind {HELLO_KIND:#x} and at most {MAX_BODY} \
                             bytes)"
                        ));
                    }
                    if self.input.len() == HEADER + len {
                        let body = self.input[HEADER..].to_vec();
                        self.input.clear();
                        return Ok(Some(body));
                    }
                    HEADER + len
                }
            };
            let mut buf = [0u8; HEADER + MAX_BODY];
            let room = &mut buf[..want - self.input.len()];
            match recv_now(self.fd.as_fd(), room) {
                Ok(0) => return Err(HUNG_UP.into()),
                Ok(n) => self.input.extend_from_slice(&room[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) => return Err(format!("{HUNG_UP} ({e})")),
            }
        }
    }
}

fn recv_now(fd: BorrowedFd<'_>, buf: &mut [u8]) -> std::io::Result<usize> {
    loop {
        match rustix::net::recv(fd, &mut *buf, rustix::net::RecvFlags::DONTWAIT) {
            Ok((n, _)) => return Ok(n),
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

enum ServerState {
    AwaitAnswer { nonce: [u8; NONCE] },
    AwaitVerdict,
}

/// The listener's side of one handshake.
struct Server {
    wire: Wire,
    state: ServerState,
}

impl Server {
    fn new(fd: OwnedFd) -> Result<Server> {
        let nonce = nonce().map_err(|e| Error::new(ErrorKind::Io, format!("a listener {e}")))?;
        let mut wire = Wire::new(fd);
        wire.queue(&[TAG, &nonce]);
        Ok(Server { wire, state: ServerState::AwaitAnswer { nonce } })
    }

    /// Moves the handshake on as far as the input allows; true once the
    /// client is authenticated and has accepted this side's proof.
    fn step(&mut self, key: &[u8]) -> std::result::Result<bool, String> {
        loop {
            self.wire.flush()?;
            let Some(body) = self.wire.frame()? else { return Ok(false) };
            match self.state {
                ServerState::AwaitAnswer { nonce } => {
                    if body.len() != DIGEST + NONCE {
                        return Err(format!(
                            "answered the challenge with {} bytes instead of {}",
                            body.len(),
                            DIGEST + NONCE
                        ));
                    }
                    let (digest, theirs) = body.split_at(DIGEST);
                    if mac(key, &[b"client", &nonce]).verify_slice(digest).is_err() {
                        self.wire.queue(&[&[REFUSED]]);
                        let _ = self.wire.flush();
                        return Err("failed authentication: its answer does not match this \
                                    listener's key (the two sides were given different authkeys)"
                            .into());
                    }
                    let proof = mac(key, &[b"listener", theirs, &nonce]).finalize().into_bytes();
                    self.wire.queue(&[&[ACCEPTED], &proof]);
                    self.state = ServerState::AwaitVerdict;
                }
                ServerState::AwaitVerdict => {
                    return match body.as_slice() {
                        [ACCEPTED] if !self.wire.has_output() => Ok(true),
                        [REFUSED] => Err("refused this listener's proof of the key (the two \
                                          sides were given different authkeys)"
                            .into()),
                        _ => Err("sent a malformed verdict in the handshake".into()),
                    };
                }
            }
        }
    }
}

enum ClientState {
    AwaitChallenge,
    AwaitVerdict { theirs: [u8; NONCE], ours: [u8; NONCE] },
    Accepted,
}

struct ClientSide {
    wire: Wire,
    state: ClientState,
}

impl ClientSide {
    /// Moves the handshake on; true once both sides are authenticated and
    /// this side's verdict is sent.
    fn step(&mut self, key: &[u8]) -> std::result::Result<bool, String> {
        loop {
            self.wire.flush()?;
            if let ClientState::Accepted = self.state {
                return Ok(!self.wire.has_output());
            }
            let Some(body) = self.wire.frame()? else { return Ok(false) };
            match self.state {
                ClientState::AwaitChallenge => {
                    let Some(theirs) = body.strip_prefix(TAG.as_slice()) else {
                        return Err("sent a challenge of another protocol or version (is it a \
                                    multiproc listener of the same version?)"
                            .into());
                    };
                    let theirs: [u8; NONCE] = theirs
                        .try_into()
                        .map_err(|_| "sent a challenge of the wrong length".to_string())?;
                    let ours = nonce()?;
                    let answer = mac(key, &[b"client", &theirs]).finalize().into_bytes();
                    self.wire.queue(&[&answer, &ours]);
                    self.state = ClientState::AwaitVerdict { theirs, ours };
                }
                ClientState::AwaitVerdict { theirs, ours } => match body.split_first() {
                    Some((&REFUSED, [])) => {
                        return Err("refused this client's key (the two sides were given \
                                    different authkeys)"
                            .into())
                    }
                    Some((&ACCEPTED, proof)) if proof.len() == DIGEST => {
                        if mac(key, &[b"listener", &ours, &theirs]).verify_slice(proof).is_err() {
                            self.wire.queue(&[&[REFUSED]]);
                            let _ = self.wire.flush();
                            return Err("could not prove it knows the key (the two sides were \
                                        given different authkeys)"
                                .into());
                        }
                        self.wire.queue(&[&[ACCEPTED]]);
                        self.state = ClientState::Accepted;
                    }
                    _ => return Err("sent a malformed verdict in the handshake".into()),
                },
                ClientState::Accepted => unreachable!("returned above"),
            }
        }
    }
}

// --- wait ---------------------------------------------------------------------

/// What [`wait`] can wait on: a [`Connection`] or a
/// [`Receiver`](crate::Receiver) (ready when a message or end of file is
/// there to receive), a [`Listener`] (ready when a client is
/// waiting to be accepted; `accept` then runs its handshake, which the
/// handshake timeout bounds).
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use multiproc::connection::{self, Listener, Waitable};
///
/// let (rx, tx) = multiproc::pipe_one_way::<u8>()?;
/// let listener = Listener::bind("127.0.0.1:0", b"key")?;
/// let objects: [&dyn Waitable; 2] = [&rx, &listener];
/// tx.send(&1)?;
/// assert_eq!(connection::wait(&objects, Some(Duration::from_secs(5)))?, vec![0]);
/// # Ok::<(), multiproc::Error>(())
/// ```
pub trait Waitable: sealed::Sealed {
    #[doc(hidden)]
    /// Adds the descriptors to poll; true when already ready.
    fn add_fds<'a>(&'a self, fds: &mut Vec<BorrowedFd<'a>>) -> bool;
}

mod sealed {
    pub trait Sealed {}
    impl<T> Sealed for crate::Connection<T> {}
    impl<T> Sealed for crate::Receiver<T> {}
    impl Sealed for super::Listener {}
    impl Sealed for std::os::fd::BorrowedFd<'_> {}
}

impl<T> Waitable for Connection<T> {
    fn add_fds<'a>(&'a self, fds: &mut Vec<BorrowedFd<'a>>) -> bool {
        match self.wait_state() {
            Some((fd, ready)) => {
                fds.push(fd);
                ready
            }
            None => false,
        }
    }
}

impl<T> Waitable for crate::Receiver<T> {
    fn add_fds<'a>(&'a self, fds: &mut Vec<BorrowedFd<'a>>) -> bool {
        self.inner().add_fds(fds)
    }
}

/// Any descriptor, ready when it is readable or hangs up: a
/// [`Process::sentinel`](crate::Process::sentinel), or a socket of your own.
impl Waitable for BorrowedFd<'_> {
    fn add_fds<'a>(&'a self, fds: &mut Vec<BorrowedFd<'a>>) -> bool {
        fds.push(*self);
        false
    }
}

impl Waitable for Listener {
    fn add_fds<'a>(&'a self, fds: &mut Vec<BorrowedFd<'a>>) -> bool {
        fds.push(self.socket_fd());
        false
    }
}

/// Waits until at least one of `objects` is ready or `timeout` passes
/// (`None`: no bound), and returns the indices of those ready, in order
/// (Python's `multiprocessing.connection.wait`; empty after a timeout).
///
/// With nothing to wait on and no timeout, `wait` returns an empty list at
/// once instead of waiting forever.
///
/// # Errors
/// [`ErrorKind::Io`] when polling fails.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use multiproc::{connection, pipe_one_way};
///
/// let (a_rx, a_tx) = pipe_one_way::<u32>()?;
/// let (b_rx, b_tx) = pipe_one_way::<u32>()?;
/// b_tx.send(&7)?;
/// assert_eq!(connection::wait(&[&a_rx, &b_rx], Some(Duration::from_secs(5)))?, vec![1]);
/// assert_eq!(b_rx.recv()?, 7);
/// assert!(connection::wait(&[&a_rx, &b_rx], Some(Duration::from_millis(10)))?.is_empty());
/// # drop((a_tx, b_tx));
/// # Ok::<(), multiproc::Error>(())
/// ```
pub fn wait(objects: &[&dyn Waitable], timeout: Option<Duration>) -> Result<Vec<usize>> {
    let mut fds = Vec::new();
    let mut owner = Vec::new();
    let mut ready = Vec::new();
    for (i, o) in objects.iter().enumerate() {
        let before = fds.len();
        if o.add_fds(&mut fds) {
            ready.push(i);
        }
        owner.extend(std::iter::repeat_n(i, fds.len() - before));
    }
    // With nothing to poll (no objects, or only sending ends), nothing can
    // become ready: an unbounded wait would never return.
    if !ready.is_empty() || (fds.is_empty() && timeout.is_none()) {
        return Ok(ready);
    }
    let polled: Vec<_> = fds.into_iter().map(|fd| (fd, true, false)).collect();
    let seen = poll_many(&polled, timeout).map_err(|e| Error::io("could not poll", e))?;
    for (k, hit) in seen.into_iter().enumerate() {
        if hit && ready.last() != Some(&owner[k]) {
            ready.push(owner[k]);
        }
    }
    Ok(ready)
}

/// Polls `(fd, read, write)` entries; returns which had any event (input,
/// room to write, hang-up or error). The bound is kept: it never returns
/// early with nothing ready, whatever signals arrive.
fn poll_many(
    fds: &[(BorrowedFd<'_>, bool, bool)],
    timeout: Option<Duration>,
) -> std::io::Result<Vec<bool>> {
    use rustix::event::{PollFd, PollFlags};
    let deadline = timeout.and_then(crate::deadline_after);
    let mut raw: Vec<PollFd<'_>> = fds
        .iter()
        .map(|(fd, r, w)| {
            let mut events = PollFlags::empty();
            events.set(PollFlags::IN, *r);
            events.set(PollFlags::OUT, *w);
            PollFd::from_borrowed_fd(*fd, events)
        })
        .collect();
    loop {
        let left = match (timeout, deadline) {
            (None, _) => None,
            (Some(_), Some(d)) => Some(d.saturating_duration_since(Instant::now())),
            (Some(_), None) => None,
        };
        let ts = left.map(|d| rustix::time::Timespec {
            tv_sec: d.as_secs().min(i64::MAX as u64) as i64,
            tv_nsec: d.subsec_nanos().into(),
        });
        match rustix::event::poll(&mut raw, ts.as_ref()) {
            Ok(_) => return Ok(raw.iter().map(|p| !p.revents().is_empty()).collect()),
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A peer whose machine vanishes never closes its TCP connection: only
    /// keep-alive probes turn a call blocked on it into an error. Both ends
    /// of every TCP connection have them.
    #[test]
    fn both_ends_of_a_tcp_connection_probe_a_silent_peer() {
        let l = Listener::bind("127.0.0.1:0", b"key").unwrap();
        let addr = l.address().clone();
        let client = std::thread::spawn(move || Client::connect::<u8>(addr, b"key").unwrap());
        let server = l.accept::<u8>().unwrap();
        let client = client.join().unwrap();
        let (idle, interval, count) = TCP_KEEPALIVE;
        for (end, c) in [("accepted", &server), ("connected", &client)] {
            let fd = c.recv_fd().expect("a readable end");
            let got = crate::sys::keep_alive_of(fd).unwrap();
            assert_eq!(got, (true, idle, interval, count), "the {end} end");
        }
        // Within a minute, as the constant's documentation promises.
        assert!(idle + interval * count <= Duration::from_secs(60));
    }

    /// A blocking connect waits for as long as a Unix listener's backlog is
    /// full; `connect_timeout` must give up at its bound all the same.
    #[test]
    fn a_unix_connect_gives_up_at_its_timeout_while_the_backlog_stays_full() {
        use rustix::net::{self, AddressFamily, SocketAddrUnix, SocketType};
        let dir = std::env::temp_dir().join(format!("mp-backlog-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("sock");
        let _ = std::fs::remove_file(&path);
        // A listener that never accepts, with room for one waiting connection.
        let l = net::socket(AddressFamily::UNIX, SocketType::STREAM, None).unwrap();
        net::bind(&l, &SocketAddrUnix::new(&path).unwrap()).unwrap();
        net::listen(&l, 0).unwrap();
        let addr = Address::Unix(path.clone());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for _ in 0..2 {
                let t = Instant::now();
                let r =
                    Client::connect_timeout::<u8>(addr.clone(), b"key", Duration::from_millis(300));
                let _ = tx.send((r.map(|_| ()), t.elapsed()));
            }
        });
        for attempt in 0..2 {
            let (r, took) = rx
                .recv_timeout(Duration::from_secs(10))
                .unwrap_or_else(|_| panic!("attempt {attempt} still blocked after 10 s"));
            let e = r.expect_err("nothing accepts");
            assert!(e.is_timeout(), "attempt {attempt}: {e}");
            assert!(took < Duration::from_secs(5), "attempt {attempt} took {took:?}");
        }
        drop(l);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
