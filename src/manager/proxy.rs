//! Typed proxies: what a program holds for an object on a manager server.
//!
//! Every proxy is a server address, its key and an object number, so it is
//! `Serialize`/`Deserialize`: sent to a `Process`, a pool task or another
//! machine, it connects to the server again where it lands. Values cross as
//! their postcard encoding; the server stores bytes and never needs the
//! types, so a dict's keys are equal when their encodings are equal.

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::client::{check, decode, encode, reply_deadline, unexpected, Remote};
use super::proto::{wait_of, Op, Reply, Request};
use super::shared::{Method, Shared};
use super::transport::Stream;
use crate::error::{Error, ErrorKind, Result};

/// The object a proxy stands for.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Handle {
    pub(crate) remote: Remote,
    pub(crate) id: u64,
}

impl Handle {
    fn op(&self, op: Op) -> Result<Reply> {
        check(self.remote.call(&Request::Call { obj: self.id, op })?)
    }

    fn done(&self, op: Op) -> Result<()> {
        match self.op(op)? {
            Reply::Done => Ok(()),
            r => Err(unexpected(r)),
        }
    }

    fn count(&self, op: Op) -> Result<usize> {
        match self.op(op)? {
            Reply::Count(n) => Ok(usize::try_from(n).unwrap_or(usize::MAX)),
            r => Err(unexpected(r)),
        }
    }

    fn flag(&self, op: Op) -> Result<bool> {
        match self.op(op)? {
            Reply::Bool(b) => Ok(b),
            r => Err(unexpected(r)),
        }
    }

    fn value<T: DeserializeOwned>(&self, op: Op) -> Result<T> {
        match self.op(op)? {
            Reply::Value(v) => decode(&v),
            r => Err(unexpected(r)),
        }
    }

    fn maybe<T: DeserializeOwned>(&self, op: Op) -> Result<Option<T>> {
        match self.op(op)? {
            Reply::Maybe(v) => v.map(|v| decode(&v)).transpose(),
            r => Err(unexpected(r)),
        }
    }

    fn many<T: DeserializeOwned>(&self, op: Op) -> Result<Vec<T>> {
        match self.op(op)? {
            Reply::Many(v) => v.iter().map(|v| decode(v)).collect(),
            r => Err(unexpected(r)),
        }
    }

    fn pairs<K: DeserializeOwned, V: DeserializeOwned>(&self) -> Result<Vec<(K, V)>> {
        match self.op(Op::Snapshot)? {
            Reply::Pairs(v) => v.iter().map(|(k, v)| Ok((decode(k)?, decode(v)?))).collect(),
            r => Err(unexpected(r)),
        }
    }
}

macro_rules! proxy_serde {
    ($name:ident <$($t:ident),*>) => {
        impl<$($t),*> Clone for $name<$($t),*> {
            fn clone(&self) -> Self {
                $name { h: self.h.clone(), _t: PhantomData }
            }
        }
        impl<$($t),*> Serialize for $name<$($t),*> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
                self.h.serialize(s)
            }
        }
        impl<'de, $($t),*> Deserialize<'de> for $name<$($t),*> {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
                Ok($name { h: Handle::deserialize(d)?, _t: PhantomData })
            }
        }
        impl<$($t),*> std::fmt::Debug for $name<$($t),*> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($name)).field("handle", &self.h).finish()
            }
        }
    };
}

/// A `dict` on a manager server (Python's `DictProxy`), keys in insertion
/// order. Two keys are the same key when their encodings are the same bytes.
///
/// # Examples
///
/// ```
/// let manager = multiproc::Manager::start()?;
/// let d = manager.dict::<String, u32>()?;
/// d.insert("a".to_string(), 1)?;
/// assert_eq!(d.setdefault("b".to_string(), 2)?, 2);
/// assert_eq!(d.get(&"a".to_string())?, Some(1));
/// assert_eq!(d.keys()?, ["a", "b"]);
/// assert_eq!(d.remove(&"a".to_string())?, Some(1));
/// assert_eq!(d.len()?, 1);
/// # Ok::<(), multiproc::Error>(())
/// ```
pub struct DictProxy<K, V> {
    pub(crate) h: Handle,
    pub(crate) _t: PhantomData<fn() -> (K, V)>,
}
proxy_serde!(DictProxy<K, V>);

impl<K: Serialize + DeserializeOwned, V: Serialize + DeserializeOwned> DictProxy<K, V> {
    /// `d[key]`, or `None` when there is no such key.
    pub fn get(&self, key: &K) -> Result<Option<V>> {
        self.h.maybe(Op::Get(encode(key)?))
    }
    /// `d[key] = value`.
    pub fn insert(&self, key: K, value: V) -> Result<()> {
        self.h.done(Op::Insert(encode(&key)?, encode(&value)?))
    }
    /// Same as [`insert`](Self::insert), Python's name.
    pub fn set(&self, key: K, value: V) -> Result<()> {
        self.insert(key, value)
    }
    /// `d.pop(key, None)`: removes the key and returns its value.
    pub fn remove(&self, key: &K) -> Result<Option<V>> {
        self.h.maybe(Op::Remove(encode(key)?))
    }
    /// `key in d`.
    pub fn contains_key(&self, key: &K) -> Result<bool> {
        self.h.flag(Op::Contains(encode(key)?))
    }
    /// `d.setdefault(key, default)`: the value for `key`, inserting `default` first
    /// if it has none. One atomic step on the server.
    pub fn setdefault(&self, key: K, default: V) -> Result<V> {
        self.h.value(Op::SetDefault(encode(&key)?, encode(&default)?))
    }
    /// `d.update(pairs)`, atomically.
    pub fn update(&self, pairs: impl IntoIterator<Item = (K, V)>) -> Result<()> {
        let pairs = pairs.into_iter().map(|(k, v)| Ok((encode(&k)?, encode(&v)?)));
        self.h.done(Op::Update(pairs.collect::<Result<_>>()?))
    }
    /// `len(d)`.
    pub fn len(&self) -> Result<usize> {
        self.h.count(Op::Len)
    }
    /// `len(d) == 0`.
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }
    /// `list(d.keys())`.
    pub fn keys(&self) -> Result<Vec<K>> {
        self.h.many(Op::Keys)
    }
    /// `list(d.values())`.
    pub fn values(&self) -> Result<Vec<V>> {
        self.h.many(Op::Values)
    }
    /// `list(d.items())`: a snapshot taken in one step.
    pub fn items(&self) -> Result<Vec<(K, V)>> {
        self.h.pairs()
    }
    /// `d.clear()`.
    pub fn clear(&self) -> Result<()> {
        self.h.done(Op::Clear)
    }
}

/// A `list` on a manager server (Python's `ListProxy`). Indices follow
/// Python: negative ones count from the end.
///
/// # Examples
///
/// ```
/// let manager = multiproc::Manager::start()?;
/// let l = manager.list::<u32>()?;
/// l.extend([1, 2, 3])?;
/// l.append(4)?;
/// assert_eq!(l.get(-1)?, 4);
/// assert_eq!(l.pop_at(0)?, 1);
/// assert_eq!(l.to_vec()?, [2, 3, 4]);
/// # Ok::<(), multiproc::Error>(())
/// ```
pub struct ListProxy<T> {
    pub(crate) h: Handle,
    pub(crate) _t: PhantomData<fn() -> T>,
}
proxy_serde!(ListProxy<T>);

impl<T: Serialize + DeserializeOwned> ListProxy<T> {
    /// `l[i]`.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidArgument`] when `i` is out of range.
    pub fn get(&self, i: i64) -> Result<T> {
        self.h.value(Op::Index(i))
    }
    /// `l[i] = value`.
    pub fn set(&self, i: i64, value: T) -> Result<()> {
        self.h.done(Op::SetIndex(i, encode(&value)?))
    }
    /// `l.append(value)`.
    pub fn append(&self, value: T) -> Result<()> {
        self.h.done(Op::Append(encode(&value)?))
    }
    /// `l.extend(values)`, atomically.
    pub fn extend(&self, values: impl IntoIterator<Item = T>) -> Result<()> {
        let vs = values.into_iter().map(|v| encode(&v)).collect::<Result<_>>()?;
        self.h.done(Op::Extend(vs))
    }
    /// `l.pop()`.
    pub fn pop(&self) -> Result<T> {
        self.h.value(Op::Pop(None))
    }
    /// `l.pop(i)`.
    pub fn pop_at(&self, i: i64) -> Result<T> {
        self.h.value(Op::Pop(Some(i)))
    }
    /// `l.insert(i, value)` (the index is clamped, as in Python).
    pub fn insert(&self, i: i64, value: T) -> Result<()> {
        self.h.done(Op::InsertAt(i, encode(&value)?))
    }
    /// `len(l)`.
    pub fn len(&self) -> Result<usize> {
        self.h.count(Op::Len)
    }
    /// `len(l) == 0`.
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }
    /// `list(l)`: a snapshot taken in one step.
    pub fn to_vec(&self) -> Result<Vec<T>> {
        self.h.many(Op::Snapshot)
    }
    /// `l.clear()`.
    pub fn clear(&self) -> Result<()> {
        self.h.done(Op::Clear)
    }
}

/// A `Namespace` on a manager server: named attributes of any serde type.
///
/// # Examples
///
/// ```
/// let manager = multiproc::Manager::start()?;
/// let ns = manager.namespace()?;
/// ns.set("rounds", &3u32)?;
/// ns.set("label", &"run-1".to_string())?;
/// assert_eq!(ns.get::<u32>("rounds")?, Some(3));
/// assert_eq!(ns.names()?, ["rounds", "label"]);
/// assert!(ns.remove("rounds")?);
/// assert_eq!(ns.get::<u32>("rounds")?, None);
/// # Ok::<(), multiproc::Error>(())
/// ```
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NamespaceProxy {
    pub(crate) h: Handle,
}

impl NamespaceProxy {
    /// `ns.name`, or `None` when it has no such attribute.
    pub fn get<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>> {
        self.h.maybe(Op::GetAttr(name.to_string()))
    }
    /// `ns.name = value`.
    pub fn set<T: Serialize>(&self, name: &str, value: &T) -> Result<()> {
        self.h.done(Op::SetAttr(name.to_string(), encode(value)?))
    }
    /// `del ns.name`; true when it was there.
    pub fn remove(&self, name: &str) -> Result<bool> {
        match self.h.op(Op::DelAttr(name.to_string()))? {
            Reply::Maybe(v) => Ok(v.is_some()),
            r => Err(unexpected(r)),
        }
    }
    /// The attribute names, in the order they were first set.
    pub fn names(&self) -> Result<Vec<String>> {
        match self.h.op(Op::Snapshot)? {
            Reply::Pairs(p) => {
                Ok(p.into_iter().map(|(k, _)| String::from_utf8_lossy(&k).into_owned()).collect())
            }
            r => Err(unexpected(r)),
        }
    }
}

/// A `Value` on a manager server: one value of any serde type.
///
/// # Examples
///
/// ```
/// let manager = multiproc::Manager::start()?;
/// let v = manager.value(vec![1u8])?;
/// v.set(vec![1, 2])?;
/// assert_eq!(v.swap(Vec::new())?, [1, 2]);
/// assert!(v.get()?.is_empty());
/// # Ok::<(), multiproc::Error>(())
/// ```
pub struct ValueProxy<T> {
    pub(crate) h: Handle,
    pub(crate) _t: PhantomData<fn() -> T>,
}
proxy_serde!(ValueProxy<T>);

impl<T: Serialize + DeserializeOwned> ValueProxy<T> {
    /// `v.value`.
    pub fn get(&self) -> Result<T> {
        self.h.value(Op::Load)
    }
    /// `v.value = value`.
    pub fn set(&self, value: T) -> Result<()> {
        self.h.done(Op::Store(encode(&value)?))
    }
    /// Stores `value` and returns the previous one, in one step.
    pub fn swap(&self, value: T) -> Result<T> {
        self.h.value(Op::Swap(encode(&value)?))
    }
}

/// A `Queue` on a manager server. Blocking calls wait on the server without
/// holding up its other clients.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
///
/// let manager = multiproc::Manager::start()?;
/// let q = manager.queue::<String>()?;
/// q.put("job".to_string())?;
/// assert_eq!(q.len()?, 1);
/// assert_eq!(q.get_timeout(Duration::from_secs(5))?, "job");
/// assert!(q.get_timeout(Duration::from_millis(10)).unwrap_err().is_timeout());
/// # Ok::<(), multiproc::Error>(())
/// ```
pub struct QueueProxy<T> {
    pub(crate) h: Handle,
    pub(crate) _t: PhantomData<fn() -> T>,
}
proxy_serde!(QueueProxy<T>);

/// A timed wait's `Empty` or `Full` (the server's word for "not in time")
/// as the crate's one [`ErrorKind::Timeout`].
fn timed_out(e: Error, kind: ErrorKind) -> Error {
    if e.kind() == kind {
        Error::timeout(e.message().to_string())
    } else {
        e
    }
}

impl<T: Serialize + DeserializeOwned> QueueProxy<T> {
    fn put_op(&self, item: &T, block: bool, wait: Option<Duration>) -> Result<()> {
        self.h.done(Op::Put { item: encode(item)?, wait: wait_of(wait), block })
    }
    fn get_op(&self, block: bool, wait: Option<Duration>) -> Result<T> {
        self.h.value(Op::Take { wait: wait_of(wait), block })
    }
    /// Puts `item`, waiting while a bounded queue is full.
    pub fn put(&self, item: T) -> Result<()> {
        self.put_op(&item, true, None)
    }
    /// Puts `item`, waiting at most `timeout`; [`ErrorKind::Timeout`] after it.
    pub fn put_timeout(&self, item: T, timeout: Duration) -> Result<()> {
        self.put_op(&item, true, Some(timeout)).map_err(|e| timed_out(e, ErrorKind::Full))
    }
    /// Puts `item` or fails with [`ErrorKind::Full`] at once.
    pub fn put_nowait(&self, item: T) -> Result<()> {
        self.put_op(&item, false, None)
    }
    /// Takes the oldest item, waiting for one.
    pub fn get(&self) -> Result<T> {
        self.get_op(true, None)
    }
    /// Takes the oldest item, waiting at most `timeout`; [`ErrorKind::Timeout`] after it.
    pub fn get_timeout(&self, timeout: Duration) -> Result<T> {
        self.get_op(true, Some(timeout)).map_err(|e| timed_out(e, ErrorKind::Empty))
    }
    /// Takes the oldest item or fails with [`ErrorKind::Empty`] at once.
    pub fn get_nowait(&self) -> Result<T> {
        self.get_op(false, None)
    }
    /// How many items it holds.
    pub fn qsize(&self) -> Result<usize> {
        self.h.count(Op::Len)
    }
    /// Whether it holds none.
    pub fn empty(&self) -> Result<bool> {
        Ok(self.qsize()? == 0)
    }
    /// How many items it holds: [`qsize`](Self::qsize) by its Rust name.
    pub fn len(&self) -> Result<usize> {
        self.qsize()
    }
    /// Whether it holds none: [`empty`](Self::empty) by its Rust name.
    pub fn is_empty(&self) -> Result<bool> {
        self.empty()
    }
}

/// A connection kept by a lock proxy while it holds the lock: the server
/// knows a holder by its connection, and frees the lock (marked owner-died)
/// when that connection goes away with its process.
#[derive(Default)]
struct Held(Mutex<Option<Stream>>);

/// A `Lock` on a manager server. A process that dies holding it does not
/// deadlock the others: the next acquirer gets it with
/// [`ProxyLockGuard::previous_owner_died`] true.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
///
/// let manager = multiproc::Manager::start()?;
/// let lock = manager.lock()?;
/// {
///     let guard = lock.acquire()?;
///     assert!(!guard.previous_owner_died());
///     assert!(lock.locked()?);
///     // Another client (here a clone: its own connection) cannot take it.
///     assert!(lock.clone().acquire_timeout(Duration::from_millis(10))?.is_none());
/// }
/// assert!(!lock.locked()?, "the guard released it");
/// # Ok::<(), multiproc::Error>(())
/// ```
#[derive(Serialize, Deserialize)]
pub struct LockProxy {
    pub(crate) h: Handle,
    #[serde(skip)]
    held: Arc<Held>,
}

impl Clone for LockProxy {
    fn clone(&self) -> Self {
        LockProxy { h: self.h.clone(), held: Arc::default() }
    }
}

impl std::fmt::Debug for LockProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockProxy").field("handle", &self.h).finish()
    }
}

/// Holds a [`LockProxy`] until dropped (see [`LockProxy`] for an example).
#[must_use = "the lock is released when the guard is dropped"]
pub struct ProxyLockGuard<'a> {
    lock: &'a LockProxy,
    owner_died: bool,
}

impl ProxyLockGuard<'_> {
    /// True when the previous holder died holding the lock: what it
    /// protected may be half-updated.
    pub fn previous_owner_died(&self) -> bool {
        self.owner_died
    }
}

impl Drop for ProxyLockGuard<'_> {
    fn drop(&mut self) {
        let _ = self.lock.release();
    }
}

impl LockProxy {
    pub(crate) fn new(h: Handle) -> LockProxy {
        LockProxy { h, held: Arc::default() }
    }

    /// Acquires; `None` when `timeout` passed first (`Some(Duration::ZERO)`:
    /// do not wait). Returns whether the previous owner died.
    pub fn acquire_raw(&self, timeout: Option<Duration>) -> Result<Option<bool>> {
        let mut held = self.held.0.lock();
        let req = Request::Call {
            obj: self.h.id,
            op: Op::Acquire { wait: wait_of(timeout), block: true },
        };
        let deadline = reply_deadline(&req);
        let mut s = match held.take() {
            Some(s) => s,
            None => self.h.remote.stream(deadline)?,
        };
        let reply = check(self.h.remote.round_trip(&mut s, &req, deadline)?);
        match reply {
            Ok(Reply::Acquired { owner_died }) => {
                *held = Some(s);
                Ok(Some(owner_died))
            }
            Ok(Reply::Bool(false)) => {
                self.h.remote.give_back(s);
                Ok(None)
            }
            Ok(r) => Err(unexpected(r)),
            Err(e) => Err(e),
        }
    }

    /// Acquires, waiting as long as it takes; released when the guard drops.
    pub fn acquire(&self) -> Result<ProxyLockGuard<'_>> {
        match self.acquire_raw(None)? {
            Some(owner_died) => Ok(ProxyLockGuard { lock: self, owner_died }),
            None => {
                Err(Error::new(ErrorKind::Protocol, "the manager gave up an unbounded acquire"))
            }
        }
    }

    /// Acquires within `timeout`, or returns `None`.
    pub fn acquire_timeout(&self, timeout: Duration) -> Result<Option<ProxyLockGuard<'_>>> {
        Ok(self
            .acquire_raw(Some(timeout))?
            .map(|owner_died| ProxyLockGuard { lock: self, owner_died }))
    }

    /// Releases (any holder may, as with Python's `Lock`).
    ///
    /// # Errors
    /// [`ErrorKind::InvalidState`] when it is not locked.
    pub fn release(&self) -> Result<()> {
        let mut held = self.held.0.lock();
        let req = Request::Call { obj: self.h.id, op: Op::Release };
        match held.take() {
            Some(mut s) => {
                let reply = check(self.h.remote.round_trip(&mut s, &req, None)?)?;
                self.h.remote.give_back(s);
                match reply {
                    Reply::Done => Ok(()),
                    r => Err(unexpected(r)),
                }
            }
            None => self.h.done(Op::Release),
        }
    }

    /// Whether someone holds it.
    pub fn locked(&self) -> Result<bool> {
        self.h.flag(Op::Locked)
    }
}

/// An `Event` on a manager server.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
///
/// let manager = multiproc::Manager::start()?;
/// let ready = manager.event()?;
/// assert!(!ready.wait_timeout(Duration::from_millis(10))?);
/// ready.set()?;
/// assert!(ready.is_set()? && ready.wait()?);
/// ready.clear()?;
/// assert!(!ready.is_set()?);
/// # Ok::<(), multiproc::Error>(())
/// ```
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EventProxy {
    pub(crate) h: Handle,
}

impl EventProxy {
    /// Sets the flag and wakes every waiter.
    pub fn set(&self) -> Result<()> {
        self.h.done(Op::Set)
    }
    /// Clears the flag.
    pub fn clear(&self) -> Result<()> {
        self.h.done(Op::Unset)
    }
    /// Whether the flag is set.
    pub fn is_set(&self) -> Result<bool> {
        self.h.flag(Op::IsSet)
    }
    /// Waits until the flag is set.
    pub fn wait(&self) -> Result<bool> {
        self.h.flag(Op::WaitSet { wait: None })
    }
    /// Waits at most `timeout`; true when the flag was set.
    pub fn wait_timeout(&self, timeout: Duration) -> Result<bool> {
        self.h.flag(Op::WaitSet { wait: wait_of(Some(timeout)) })
    }
}

/// A `Semaphore` (or `BoundedSemaphore`) on a manager server.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
///
/// let manager = multiproc::Manager::start()?;
/// let slots = manager.bounded_semaphore(1)?;
/// slots.acquire()?;
/// assert!(!slots.acquire_timeout(Duration::from_millis(10))?);
/// slots.release()?;
/// assert_eq!(slots.value()?, 1);
/// // Bounded: one release too many is an error.
/// assert!(slots.release().is_err());
/// # Ok::<(), multiproc::Error>(())
/// ```
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SemaphoreProxy {
    pub(crate) h: Handle,
}

impl SemaphoreProxy {
    fn acquire_op(&self, wait: Option<Duration>) -> Result<bool> {
        match self.h.op(Op::Acquire { wait: wait_of(wait), block: true })? {
            Reply::Acquired { .. } => Ok(true),
            Reply::Bool(b) => Ok(b),
            r => Err(unexpected(r)),
        }
    }
    /// Takes one unit, waiting for one.
    pub fn acquire(&self) -> Result<()> {
        self.acquire_op(None).map(drop)
    }
    /// Takes one unit within `timeout`; false when none came.
    pub fn acquire_timeout(&self, timeout: Duration) -> Result<bool> {
        self.acquire_op(Some(timeout))
    }
    /// Gives one unit back.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidArgument`] for a bounded semaphore released above its bound.
    pub fn release(&self) -> Result<()> {
        self.h.done(Op::Release)
    }
    /// The units available now.
    pub fn value(&self) -> Result<usize> {
        self.h.count(Op::Len)
    }
}

/// A `Barrier` on a manager server.
///
/// # Examples
///
/// ```
/// let manager = multiproc::Manager::start()?;
/// let barrier = manager.barrier(2)?;
/// let other = barrier.clone();
/// let t = std::thread::spawn(move || other.wait());
/// let mine = barrier.wait()?;
/// let theirs = t.join().unwrap()?;
/// assert_eq!(mine + theirs, 1, "arrival indices 0 and 1");
/// assert_eq!(barrier.parties()?, 2);
/// # Ok::<(), multiproc::Error>(())
/// ```
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BarrierProxy {
    pub(crate) h: Handle,
}

impl BarrierProxy {
    /// Waits for all parties; returns this party's arrival index (0 first).
    ///
    /// # Errors
    /// [`ErrorKind::BrokenBarrier`] when the barrier is or becomes broken.
    pub fn wait(&self) -> Result<usize> {
        self.h.count(Op::BarrierWait { wait: None })
    }
    /// As [`wait`](Self::wait), at most `timeout`; a timeout breaks the barrier.
    pub fn wait_timeout(&self, timeout: Duration) -> Result<usize> {
        self.h.count(Op::BarrierWait { wait: wait_of(Some(timeout)) })
    }
    /// Breaks the barrier: current and later waiters fail.
    pub fn abort(&self) -> Result<()> {
        self.h.done(Op::Abort)
    }
    /// Back to the initial state; current waiters fail.
    pub fn reset(&self) -> Result<()> {
        self.h.done(Op::Reset)
    }
    /// How many parties wait now.
    pub fn n_waiting(&self) -> Result<usize> {
        self.h.count(Op::Waiting)
    }
    /// How many parties it needs.
    pub fn parties(&self) -> Result<usize> {
        self.h.count(Op::Len)
    }
}

/// An object of a registered user type `T` on a manager server; its
/// methods are remote calls.
///
/// # Examples
///
/// ```
/// use multiproc::manager::{Manager, Method, Methods, Shared};
///
/// struct Log(Vec<String>);
/// const PUSH: Method<Log, String, usize> = Method::new("push");
///
/// impl Shared for Log {
///     const NAME: &'static str = "Log";
///     type Init = ();
///     fn create((): ()) -> Log { Log(Vec::new()) }
///     fn methods(m: &mut Methods<Log>) {
///         m.add(PUSH, |log, line| { log.0.push(line); log.0.len() });
///     }
/// }
///
/// let manager = Manager::builder().register::<Log>().start()?;
/// let log = manager.shared::<Log>(())?;
/// assert_eq!(log.call(PUSH, "started".to_string())?, 1);
/// assert_eq!(log.clone().call(PUSH, "done".to_string())?, 2);
/// # Ok::<(), multiproc::Error>(())
/// ```
pub struct Proxy<T> {
    pub(crate) h: Handle,
    pub(crate) _t: PhantomData<fn() -> T>,
}
proxy_serde!(Proxy<T>);

impl<T: Shared> Proxy<T> {
    /// Calls `method` with `args` on the server's object, atomically.
    pub fn call<A: Serialize, R: DeserializeOwned>(
        &self,
        method: Method<T, A, R>,
        args: A,
    ) -> Result<R> {
        self.h.value(Op::Method { name: method.name().to_string(), args: encode(&args)? })
    }
}
