//! `Manager`: a server process holding shared objects, reached through
//! typed proxies (Python's `multiprocessing.Manager`).
//!
//! ```
//! use multiproc::manager::{DictProxy, ListProxy, Manager};
//! use multiproc::Process;
//!
//! fn work((name, d, l): (String, DictProxy<String, u32>, ListProxy<u32>)) {
//!     l.append(std::process::id()).unwrap();
//!     d.insert(name, std::process::id()).unwrap();
//! }
//!
//! let manager = Manager::start()?;
//! let d = manager.dict::<String, u32>()?;
//! let l = manager.list::<u32>()?;
//! let mut p = Process::new(work, ("child".to_string(), d.clone(), l.clone()));
//! p.start()?;
//! p.join()?;
//! assert_eq!(d.get(&"child".to_string())?, p.pid());
//! assert_eq!(l.to_vec()?, vec![p.pid().unwrap()]);
//! # Ok::<(), multiproc::Error>(())
//! ```
//!
//! [`Manager::start`] runs the server as a child of this program (the same
//! executable, diverted before `main`), on a Unix socket in a directory only
//! this user can enter, with a random key; it dies with this process.
//! [`Manager::serve`] runs a server in this process on any address (TCP for
//! other machines), and [`Manager::connect`] reaches one.
//!
//! # What the server trusts
//!
//! Every connection proves it holds the key (mutual HMAC-SHA256 challenge)
//! before its first request is read. After that, a request is a typed
//! message: each operation is compiled into the server, a user type's
//! methods are the ones its [`Shared`] impl declared, and every length,
//! count and nesting depth is bounded; a request that breaks a rule gets an
//! error reply and the server goes on. A proxy carries the key, as Python's
//! do when they travel between processes: give proxies only to code you
//! would give the key.
//!
//! Objects live as long as their server (there is no reference counting).
//! Values are stored as their postcard encoding, so the server need not know
//! their types, and two dict keys are equal when their encodings are equal.

mod client;
mod proto;
mod proxy;
mod server;
mod shared;
mod transport;

use crate::spawn::Child;
use std::collections::HashMap;
use std::marker::PhantomData;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

pub use proxy::{
    BarrierProxy, DictProxy, EventProxy, ListProxy, LockProxy, NamespaceProxy, Proxy,
    ProxyLockGuard, QueueProxy, SemaphoreProxy, ValueProxy,
};
pub use shared::{register, Method, Methods, Shared};
pub use transport::Address;

use client::{check, encode, unexpected, Remote};
use proto::{Kind, Reply, Request};
use proxy::Handle;
use transport::{Listener, Stream};

use crate::connection::ToAddress;

use crate::error::{Error, ErrorKind, Result};
use crate::{spawn, sys, task};

/// At most this many client connections at once per server.
const MAX_CONNECTIONS: usize = 512;
/// How long a local server has to start.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long `shutdown` waits for a local server to exit before killing it.
const EXIT_GRACE: Duration = Duration::from_millis(500);

/// A connection to a manager server, and the server itself when this
/// process started it. Creates shared objects and returns their proxies.
///
/// Dropping it (or [`shutdown`](Manager::shutdown)) stops a server it
/// started; proxies then fail with [`ErrorKind::Closed`]. It never hangs.
///
/// # Examples
///
/// ```
/// let mut m = multiproc::Manager::start()?;
/// let d = m.dict::<String, u32>()?;
/// d.insert("a".into(), 1)?;
/// assert_eq!(d.get(&"a".to_string())?, Some(1));
/// m.shutdown();
/// # Ok::<(), multiproc::Error>(())
/// ```
pub struct Manager {
    remote: Remote,
    local: Option<Local>,
}

struct Local {
    child: Child,
    channel: Option<UnixStream>,
    dir: PathBuf,
}

/// Builds a [`Manager`] whose server knows user types.
#[derive(Default)]
pub struct ManagerBuilder {
    registrations: Vec<i64>,
}

fn entry_offset<F, M>(_f: F) -> i64
where
    F: crate::TaskFn<(), M> + Copy,
    F::Output: Serialize,
{
    task::trampoline_offset::<F, (), M>()
}

impl ManagerBuilder {
    /// The server will hold objects of type `T` ([`Manager::shared`]).
    pub fn register<T: Shared>(mut self) -> Self {
        self.registrations.push(entry_offset(shared::register_task::<T>));
        self
    }

    /// Starts the server process.
    ///
    /// # Errors
    /// [`ErrorKind::Io`] when it cannot be started or does not come up.
    pub fn start(self) -> Result<Manager> {
        let dir = private_dir()?;
        let path = dir.join("manager.sock");
        let authkey = transport::random_key()?;
        let started = start_local(&path, &authkey, self.registrations);
        match started {
            Ok((child, channel)) => Ok(Manager {
                remote: Remote { addr: Address::Unix(path), authkey },
                local: Some(Local { child, channel: Some(channel), dir }),
            }),
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                Err(e)
            }
        }
    }
}

/// A directory under the runtime or temporary directory that only this
/// user can enter.
fn private_dir() -> Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    static N: AtomicU64 = AtomicU64::new(0);
    let base = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|p| p.is_dir())
        .unwrap_or_else(std::env::temp_dir);
    let salt = u64::from_le_bytes(transport::random_key()?[..8].try_into().unwrap_or_default());
    let n = N.fetch_add(1, Ordering::Relaxed);
    let dir = base.join(format!("multiproc-manager-{}-{n}-{salt:016x}", std::process::id()));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(|e| Error::io(format!("could not create {}", dir.display()), e))?;
    Ok(dir)
}

/// What the parent tells its server process.
#[derive(Serialize, Deserialize)]
struct Start {
    fingerprint: [u8; 16],
    path: PathBuf,
    authkey: Vec<u8>,
    registrations: Vec<i64>,
}

fn start_local(
    path: &std::path::Path,
    authkey: &[u8],
    registrations: Vec<i64>,
) -> Result<(Child, UnixStream)> {
    static N: AtomicUsize = AtomicUsize::new(1);
    let name = format!("SyncManager-{}", N.fetch_add(1, Ordering::Relaxed));
    let spawned = spawn::spawn(crate::worker::ROLE_MANAGER, &name, true)?;
    let mut child = spawned.child;
    let mut channel = UnixStream::from(spawned.channel);
    let start = Start {
        fingerprint: task::fingerprint(),
        path: path.to_path_buf(),
        authkey: authkey.to_vec(),
        registrations,
    };
    let fail = |child: &mut Child, e: Error| {
        let _ = child.kill();
        let _ = child.wait();
        spawn::unregister(child.id());
        e
    };
    let io = |e| Error::io(format!("could not start the manager process {name}"), e);
    if let Err(e) = proto::write_frame(&mut channel, &start) {
        return Err(fail(&mut child, e));
    }
    if let Err(e) = channel.set_read_timeout(Some(START_TIMEOUT)) {
        return Err(fail(&mut child, io(e)));
    }
    let mut buf = Vec::new();
    let answer: std::result::Result<(), String> = match proto::read_frame(&mut channel, &mut buf) {
        Ok(()) => crate::codec::decode(&buf).unwrap_or_else(|e| Err(format!("a bad answer: {e}"))),
        Err(_) => Err("it exited or did not answer in time".to_string()),
    };
    if let Err(why) = answer {
        let e =
            Error::new(ErrorKind::Io, format!("the manager process {name} did not start: {why}"));
        return Err(fail(&mut child, e));
    }
    let _ = channel.set_read_timeout(None);
    Ok((child, channel))
}

/// The body of a manager server process (role `manager`).
pub(crate) fn run_server_process(channel: OwnedFd) -> i32 {
    let mut channel = UnixStream::from(channel);
    let mut buf = Vec::new();
    if proto::read_frame(&mut channel, &mut buf).is_err() {
        return crate::worker::EXIT_NO_PARENT;
    }
    let Ok(start) = crate::codec::decode::<Start>(&buf) else {
        return crate::worker::EXIT_NO_PARENT;
    };
    if start.fingerprint != task::fingerprint() {
        return crate::worker::EXIT_MISMATCH;
    }
    let answer = (|| -> std::result::Result<ServerThread, String> {
        let (chunk, _) = task::encode_chunk(&[()]);
        for offset in start.registrations {
            let mut out = Vec::new();
            drop(task::run_chunk_at(offset, &chunk, Vec::new(), &mut out));
            if let Some(Err(f)) = task::ItemReader::new(&out).next() {
                return Err(format!("registering a type failed: {}", f.message));
            }
        }
        let addr = Address::Unix(start.path);
        let listener = Listener::bind(&addr, &start.authkey).map_err(|e| e.to_string())?;
        ServerThread::spawn(listener).map_err(|e| e.to_string())
    })();
    let ok = answer.as_ref().map(drop).map_err(Clone::clone);
    if proto::write_frame(&mut channel, &ok).is_err() || ok.is_err() {
        return 1;
    }
    // Serve until the parent closes the channel (shutdown) or dies.
    let mut byte = [0u8; 64];
    loop {
        match std::io::Read::read(&mut channel, &mut byte) {
            Ok(0) => return 0,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return 0,
        }
    }
}

/// A server's accept loop, on a thread of its own.
struct ServerThread {
    addr: Address,
    stop: Arc<AtomicBool>,
    live: Live,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// The connections a server serves, to shut them down when it stops.
type Live = Arc<Mutex<HashMap<u64, Arc<Stream>>>>;

impl ServerThread {
    fn spawn(listener: Listener) -> Result<ServerThread> {
        let addr = listener.address();
        let stop = Arc::new(AtomicBool::new(false));
        let live: Live = Arc::default();
        let server = server::Server::new();
        let (stop2, live2) = (stop.clone(), live.clone());
        let thread = std::thread::Builder::new()
            .name("multiproc-manager".into())
            .spawn(move || accept_loop(listener, server, stop2, live2))
            .map_err(|e| Error::io("could not start the manager's thread", e))?;
        Ok(ServerThread { addr, stop, live, thread: Some(thread) })
    }

    /// Stops accepting (within the accept loop's stop check) and shuts
    /// every client connection down.
    fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        for s in self.live.lock().values() {
            transport::shut_down(s);
        }
    }
}

fn accept_loop(listener: Listener, server: Arc<server::Server>, stop: Arc<AtomicBool>, live: Live) {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let connections = Arc::new(AtomicUsize::new(0));
    while !stop.load(Ordering::SeqCst) {
        let stream = match listener.accept() {
            Ok(Some(s)) => Arc::new(s),
            Ok(None) => continue,
            Err(_) => {
                // Out of descriptors, say: go on after a breath rather than spin.
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
        };
        if connections.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            connections.fetch_sub(1, Ordering::SeqCst);
            event!(WARN, limit = MAX_CONNECTIONS; "manager: a client was refused: {MAX_CONNECTIONS} connections are open");
            continue; // dropped: refused
        }
        let id = NEXT.fetch_add(1, Ordering::Relaxed);
        live.lock().insert(id, stream.clone());
        let server = server.clone();
        let (live2, connections2) = (live.clone(), connections.clone());
        let spawned =
            std::thread::Builder::new().name("multiproc-manager-client".into()).spawn(move || {
                server.serve_client(&stream);
                live2.lock().remove(&id);
                connections2.fetch_sub(1, Ordering::SeqCst);
            });
        if spawned.is_err() {
            // The closure was dropped: the client sees a closed connection.
            live.lock().remove(&id);
            connections.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// A server running in this process ([`Manager::serve`]).
pub struct ManagerServer {
    inner: ServerThread,
}

impl ManagerServer {
    /// The address it listens on (with the real port when bound to port 0).
    pub fn address(&self) -> &Address {
        &self.inner.addr
    }

    /// Serves until the process ends.
    pub fn serve_forever(mut self) -> ! {
        if let Some(t) = self.inner.thread.take() {
            let _ = t.join();
        }
        loop {
            std::thread::park();
        }
    }

    /// Stops accepting and closes every client connection.
    pub fn shutdown(mut self) {
        self.inner.stop();
    }
}

impl Drop for ManagerServer {
    fn drop(&mut self) {
        self.inner.stop();
    }
}

impl Manager {
    /// Starts a server process with the built-in types; see
    /// [`builder`](Manager::builder) to add user types.
    ///
    /// # Errors
    /// [`ErrorKind::Io`] when it cannot be started.
    pub fn start() -> Result<Manager> {
        ManagerBuilder::default().start()
    }

    /// A builder, to [`register`](ManagerBuilder::register) user types.
    pub fn builder() -> ManagerBuilder {
        ManagerBuilder::default()
    }

    /// Serves on `addr` (`"127.0.0.1:5000"`, a Unix socket path, …) from this
    /// process, for clients with `authkey`: Python's `BaseManager.get_server()`.
    /// User types must be [`register`]ed in this process first.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidArgument`] for a bad address or an empty key;
    /// [`ErrorKind::Io`] when it cannot listen.
    pub fn serve(addr: impl ToAddress, authkey: &[u8]) -> Result<ManagerServer> {
        let listener = Listener::bind(&addr.to_address()?, authkey)?;
        Ok(ManagerServer { inner: ServerThread::spawn(listener)? })
    }

    /// Connects to the server at `addr` with `authkey`.
    ///
    /// # Errors
    /// [`ErrorKind::Closed`] when nothing listens there;
    /// [`ErrorKind::Authentication`] when the key is wrong.
    pub fn connect(addr: impl ToAddress, authkey: &[u8]) -> Result<Manager> {
        let addr = addr.to_address()?;
        let remote = Remote { addr, authkey: authkey.to_vec() };
        match check(remote.call(&Request::Ping)?)? {
            Reply::Done => Ok(Manager { remote, local: None }),
            r => Err(unexpected(r)),
        }
    }

    /// The server's address.
    pub fn address(&self) -> &Address {
        &self.remote.addr
    }

    /// The key that opens the server.
    pub fn authkey(&self) -> &[u8] {
        &self.remote.authkey
    }

    /// The pid of the server process, when this manager started it.
    pub fn pid(&self) -> Option<u32> {
        self.local.as_ref().map(|l| l.child.id())
    }

    fn create(&self, kind: Kind, init: Vec<u8>) -> Result<Handle> {
        match check(self.remote.call(&Request::Create { kind, init })?)? {
            Reply::Created(id) => Ok(Handle { remote: self.remote.clone(), id }),
            r => Err(unexpected(r)),
        }
    }

    /// A new empty `dict`.
    pub fn dict<K, V>(&self) -> Result<DictProxy<K, V>> {
        let none: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        Ok(DictProxy { h: self.create(Kind::Dict, encode(&none)?)?, _t: PhantomData })
    }

    /// A new `dict` holding `items` (Python's `manager.dict({...})`).
    pub fn dict_from<K: Serialize, V: Serialize>(
        &self,
        items: impl IntoIterator<Item = (K, V)>,
    ) -> Result<DictProxy<K, V>> {
        let pairs: Vec<(Vec<u8>, Vec<u8>)> = items
            .into_iter()
            .map(|(k, v)| Ok((encode(&k)?, encode(&v)?)))
            .collect::<Result<_>>()?;
        Ok(DictProxy { h: self.create(Kind::Dict, encode(&pairs)?)?, _t: PhantomData })
    }

    /// A new empty `list`.
    pub fn list<T>(&self) -> Result<ListProxy<T>> {
        Ok(ListProxy {
            h: self.create(Kind::List, encode(&Vec::<Vec<u8>>::new())?)?,
            _t: PhantomData,
        })
    }

    /// A new `list` holding `items`.
    pub fn list_from<T: Serialize>(
        &self,
        items: impl IntoIterator<Item = T>,
    ) -> Result<ListProxy<T>> {
        let items: Vec<Vec<u8>> = items.into_iter().map(|v| encode(&v)).collect::<Result<_>>()?;
        Ok(ListProxy { h: self.create(Kind::List, encode(&items)?)?, _t: PhantomData })
    }

    /// A new empty `Namespace`.
    pub fn namespace(&self) -> Result<NamespaceProxy> {
        Ok(NamespaceProxy {
            h: self.create(Kind::Namespace, encode(&Vec::<(Vec<u8>, Vec<u8>)>::new())?)?,
        })
    }

    /// A new unbounded `Queue`.
    pub fn queue<T>(&self) -> Result<QueueProxy<T>> {
        self.queue_bounded(0)
    }

    /// A new `Queue` of at most `maxsize` items (0: unbounded).
    pub fn queue_bounded<T>(&self, maxsize: usize) -> Result<QueueProxy<T>> {
        Ok(QueueProxy {
            h: self.create(Kind::Queue { maxsize: maxsize as u64 }, Vec::new())?,
            _t: PhantomData,
        })
    }

    /// A new `Value` holding `value`.
    pub fn value<T: Serialize>(&self, value: T) -> Result<ValueProxy<T>> {
        Ok(ValueProxy { h: self.create(Kind::Value, encode(&encode(&value)?)?)?, _t: PhantomData })
    }

    /// A new `Lock`.
    pub fn lock(&self) -> Result<LockProxy> {
        Ok(LockProxy::new(self.create(Kind::Lock, Vec::new())?))
    }

    /// A new `Event`, clear.
    pub fn event(&self) -> Result<EventProxy> {
        Ok(EventProxy { h: self.create(Kind::Event, Vec::new())? })
    }

    /// A new `Semaphore` with `value` units.
    pub fn semaphore(&self, value: usize) -> Result<SemaphoreProxy> {
        let kind = Kind::Semaphore { value: value as u64, bound: None };
        Ok(SemaphoreProxy { h: self.create(kind, Vec::new())? })
    }

    /// A new `BoundedSemaphore`: releasing above `value` is an error.
    pub fn bounded_semaphore(&self, value: usize) -> Result<SemaphoreProxy> {
        let kind = Kind::Semaphore { value: value as u64, bound: Some(value as u64) };
        Ok(SemaphoreProxy { h: self.create(kind, Vec::new())? })
    }

    /// A new `Barrier` for `parties` parties.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidArgument`] for 0 parties.
    pub fn barrier(&self, parties: usize) -> Result<BarrierProxy> {
        Ok(BarrierProxy { h: self.create(Kind::Barrier { parties: parties as u64 }, Vec::new())? })
    }

    /// A new object of the registered user type `T`, made by `T::create(init)`.
    ///
    /// # Errors
    /// [`ErrorKind::Protocol`] when the server has no type `T::NAME`.
    pub fn shared<T: Shared>(&self, init: T::Init) -> Result<Proxy<T>> {
        Ok(Proxy {
            h: self.create(Kind::User(T::NAME.to_string()), encode(&init)?)?,
            _t: PhantomData,
        })
    }

    /// Stops the server this manager started (a no-op for a connected one).
    /// Bounded: the server gets a moment to exit, then is killed.
    pub fn shutdown(&mut self) {
        self.remote.forget();
        let Some(mut local) = self.local.take() else { return };
        drop(local.channel.take());
        let pid = local.child.id();
        if !matches!(sys::wait_exit(pid, Some(EXIT_GRACE)), Ok(true)) {
            let _ = sys::kill(pid, sys::SIGKILL);
        }
        let _ = local.child.wait();
        spawn::unregister(pid);
        let _ = std::fs::remove_dir_all(&local.dir);
    }
}

impl Drop for Manager {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl std::fmt::Debug for Manager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manager")
            .field("address", &self.remote.addr)
            .field("pid", &self.pid())
            .finish()
    }
}

#[cfg(test)]
mod tests;
