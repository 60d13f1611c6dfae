//! The manager's server: the object table, and one thread per client
//! connection that decodes typed requests and applies them.
//!
//! Nothing a client sends names code: a request is a [`Request`] value, and
//! each operation is a match arm here (or a method a registered user type
//! declared, looked up by name in the table the server was built with).
//! A frame that does not decode gets an error reply and the connection goes
//! on; a frame longer than [`MAX_FRAME`] gets an error reply and the
//! connection is closed (its stream cannot be resynchronised).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, MutexGuard};

use super::proto::{message, Bytes, Code, Kind, Op, Reply, Request, Wait, MAX_FRAME};

/// The longest message a client may make the server read: one byte over
/// [`MAX_FRAME`], so the shortest oversized request is still read and
/// answered with an error (the connection goes on), while a longer one ends
/// its connection at its header. One client holds at most a message's worth
/// of the server's memory.
pub(super) const CONNECTION_LIMIT: u32 = MAX_FRAME as u32 + 1;
use super::shared::{self, UserObject};
use super::transport::{peer_alive, Stream};

/// At most this many objects live on one server.
const MAX_OBJECTS: usize = 1 << 20;
/// How often a blocked operation checks that its client is still there.
const ALIVE_CHECK: Duration = Duration::from_millis(20);

/// An insertion-ordered map of encoded keys to encoded values.
#[derive(Default)]
struct OrderedMap {
    by_key: HashMap<Bytes, (u64, Bytes)>,
    order: BTreeMap<u64, Bytes>,
    next: u64,
}

impl OrderedMap {
    fn get(&self, k: &[u8]) -> Option<&Bytes> {
        self.by_key.get(k).map(|(_, v)| v)
    }

    fn insert(&mut self, k: Bytes, v: Bytes) {
        match self.by_key.get_mut(&k) {
            Some(slot) => slot.1 = v,
            None => {
                let seq = self.next;
                self.next += 1;
                self.order.insert(seq, k.clone());
                self.by_key.insert(k, (seq, v));
            }
        }
    }

    fn remove(&mut self, k: &[u8]) -> Option<Bytes> {
        let (seq, v) = self.by_key.remove(k)?;
        self.order.remove(&seq);
        Some(v)
    }

    fn len(&self) -> usize {
        self.by_key.len()
    }

    fn clear(&mut self) {
        self.by_key.clear();
        self.order.clear();
    }

    fn pairs(&self) -> Vec<(Bytes, Bytes)> {
        self.order.values().map(|k| (k.clone(), self.by_key[k].1.clone())).collect()
    }
}

enum State {
    Dict(OrderedMap),
    List(Vec<Bytes>),
    Namespace(OrderedMap),
    Value(Bytes),
    Queue { items: VecDeque<Bytes>, maxsize: u64 },
    Lock { owner: Option<u64>, owner_died: bool },
    Event(bool),
    Semaphore { value: u64, bound: Option<u64> },
    Barrier { parties: u64, count: u64, generation: u64, broken: bool, reset_at: Option<u64> },
    User(Box<dyn UserObject>),
}

struct Object {
    state: Mutex<State>,
    changed: Condvar,
}

/// What a server holds: its objects.
pub(crate) struct Server {
    objects: Mutex<HashMap<u64, Arc<Object>>>,
    next_id: AtomicU64,
}

impl Server {
    pub(crate) fn new() -> Arc<Server> {
        Arc::new(Server { objects: Mutex::new(HashMap::new()), next_id: AtomicU64::new(1) })
    }

    /// Serves one authenticated client until it goes away.
    pub(crate) fn serve_client(self: &Arc<Self>, stream: &Stream) {
        stream.limit_messages(CONNECTION_LIMIT);
        let mut client = Client { server: self.clone(), id: next_client_id(), held: Vec::new() };
        client.run(stream);
        client.release_all();
    }

    fn object(&self, id: u64) -> Result<Arc<Object>, Reply> {
        self.objects.lock().get(&id).cloned().ok_or_else(|| {
            Reply::err(Code::NoSuchObject, format!("the manager has no object {id}"))
        })
    }

    fn create(&self, kind: Kind, init: &[u8]) -> Reply {
        let state = match make_state(kind, init) {
            Ok(s) => s,
            Err(reply) => return reply,
        };
        let mut objects = self.objects.lock();
        if objects.len() >= MAX_OBJECTS {
            return Reply::err(Code::TooMany, "the manager holds too many objects");
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        objects.insert(id, Arc::new(Object { state: Mutex::new(state), changed: Condvar::new() }));
        Reply::Created(id)
    }
}

fn next_client_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

fn decode<'a, T: serde::Deserialize<'a>>(bytes: &'a [u8], what: &str) -> Result<T, Reply> {
    crate::codec::decode(bytes)
        .map_err(|e| Reply::err(Code::Protocol, format!("the initial {what} does not decode: {e}")))
}

fn make_state(kind: Kind, init: &[u8]) -> Result<State, Reply> {
    Ok(match kind {
        Kind::Dict | Kind::Namespace => {
            let pairs: Vec<(Bytes, Bytes)> = decode(init, "items")?;
            let mut map = OrderedMap::default();
            for (k, v) in pairs {
                map.insert(k, v);
            }
            if matches!(kind, Kind::Dict) {
                State::Dict(map)
            } else {
                State::Namespace(map)
            }
        }
        Kind::List => State::List(decode(init, "items")?),
        Kind::Value => State::Value(decode(init, "value")?),
        Kind::Queue { maxsize } => State::Queue { items: VecDeque::new(), maxsize },
        Kind::Lock => State::Lock { owner: None, owner_died: false },
        Kind::Event => State::Event(false),
        Kind::Semaphore { value, bound } => State::Semaphore { value, bound },
        Kind::Barrier { parties } => {
            if parties == 0 {
                return Err(Reply::err(Code::OutOfRange, "a barrier needs at least one party"));
            }
            State::Barrier { parties, count: 0, generation: 0, broken: false, reset_at: None }
        }
        Kind::User(name) => State::User(shared::create(&name, init)?),
    })
}

/// One client connection's state on the server.
struct Client {
    server: Arc<Server>,
    id: u64,
    /// Locks this client holds: released, marked owner-died, if it goes away.
    held: Vec<Arc<Object>>,
}

impl Client {
    fn run(&mut self, stream: &Stream) {
        loop {
            // Closed (the client went away) or a broken frame: either way
            // this connection is done.
            let Ok(buf) = stream.recv_bytes() else { return };
            let reply = if buf.len() > MAX_FRAME {
                let n = buf.len();
                Reply::err(
                    Code::Protocol,
                    format!("a request of {n} bytes is over the {MAX_FRAME}-byte limit"),
                )
            } else {
                match crate::codec::decode::<Request>(&buf) {
                    Ok(req) => self.handle(req, stream),
                    Err(e) => {
                        Reply::err(Code::Protocol, format!("a request that does not decode: {e}"))
                    }
                }
            };
            drop(buf);
            let bytes = message(&reply).or_else(|e| {
                message(&Reply::err(Code::Protocol, format!("the reply is too large: {e}")))
            });
            match bytes {
                Ok(b) if stream.send_bytes(&b).is_ok() => {}
                _ => return,
            }
        }
    }

    fn handle(&mut self, req: Request, stream: &Stream) -> Reply {
        match req {
            Request::Ping => Reply::Done,
            Request::Create { kind, init } => self.server.create(kind, &init),
            Request::Call { obj, op } => match self.server.object(obj) {
                Ok(o) => self.call(&o, op, stream),
                Err(reply) => reply,
            },
        }
    }

    /// Gives back what a client that went away held.
    fn release_all(&mut self) {
        for obj in self.held.drain(..) {
            let mut st = obj.state.lock();
            if let State::Lock { owner, owner_died } = &mut *st {
                if *owner == Some(self.id) {
                    *owner = None;
                    *owner_died = true;
                    obj.changed.notify_all();
                }
            }
        }
    }

    fn call(&mut self, obj: &Arc<Object>, op: Op, stream: &Stream) -> Reply {
        let mut st = obj.state.lock();
        match apply(&mut st, op) {
            Applied::Reply(r) => r,
            Applied::Changed(r) => {
                obj.changed.notify_all();
                r
            }
            Applied::Block(b) => self.block(obj, st, b, stream),
        }
    }

    /// Runs a blocking operation: waits on the object's condition, checking
    /// that the client is still there, until it can go on or its time is up.
    fn block(
        &mut self,
        obj: &Arc<Object>,
        mut st: MutexGuard<'_, State>,
        b: Blocking,
        stream: &Stream,
    ) -> Reply {
        // The client's number: a wait too long to add to now is no limit.
        let deadline = b.wait().and_then(|us| crate::deadline_after(Duration::from_micros(us)));
        let generation = match &mut *st {
            State::Barrier { parties, count, generation, broken, .. } => {
                if *broken {
                    return broken_barrier();
                }
                let index = *count;
                *count += 1;
                if *count == *parties {
                    *count = 0;
                    *generation += 1;
                    obj.changed.notify_all();
                    return Reply::Count(index);
                }
                Some((*generation, index))
            }
            _ => None,
        };
        let mut waited = false;
        loop {
            // Once it has waited, an operation checks that its client is
            // still there before it completes: an item taken for a client
            // that died would be lost.
            if waited && !peer_alive(stream) {
                return self.give_up(obj, &mut st, &b, false);
            }
            if let Some(reply) = self.try_blocking(obj, &mut st, &b, generation) {
                return reply;
            }
            let now = Instant::now();
            if deadline.is_some_and(|d| now >= d) {
                return self.give_up(obj, &mut st, &b, true);
            }
            let slice = deadline.map_or(ALIVE_CHECK, |d| (d - now).min(ALIVE_CHECK));
            obj.changed.wait_for(&mut st, slice);
            waited = true;
        }
    }

    /// The blocking operation's reply if it can complete now.
    fn try_blocking(
        &mut self,
        obj: &Arc<Object>,
        st: &mut State,
        b: &Blocking,
        generation: Option<(u64, u64)>,
    ) -> Option<Reply> {
        match (b, st) {
            (Blocking::Put(item, _), State::Queue { items, maxsize }) => {
                if *maxsize == 0 || (items.len() as u64) < *maxsize {
                    items.push_back(item.clone());
                    obj.changed.notify_all();
                    return Some(Reply::Done);
                }
                None
            }
            (Blocking::Take(_), State::Queue { items, .. }) => {
                let item = items.pop_front()?;
                obj.changed.notify_all();
                Some(Reply::Value(item))
            }
            (Blocking::Acquire(_), State::Lock { owner, owner_died }) => {
                if owner.is_some() {
                    return None;
                }
                *owner = Some(self.id);
                self.held.retain(|o| !Arc::ptr_eq(o, obj));
                self.held.push(obj.clone());
                Some(Reply::Acquired { owner_died: std::mem::take(owner_died) })
            }
            (Blocking::Acquire(_), State::Semaphore { value, .. }) => {
                if *value == 0 {
                    return None;
                }
                *value -= 1;
                Some(Reply::Acquired { owner_died: false })
            }
            (Blocking::EventWait(_), State::Event(set)) => set.then_some(Reply::Bool(true)),
            (Blocking::Barrier(_), State::Barrier { generation: g, broken, reset_at, .. }) => {
                let (mine, index) = generation?;
                if *g != mine {
                    return Some(if *reset_at == Some(mine) {
                        broken_barrier()
                    } else {
                        Reply::Count(index)
                    });
                }
                broken.then(broken_barrier)
            }
            _ => Some(Reply::err(Code::WrongKind, "this operation does not apply to this object")),
        }
    }

    /// The reply when a blocking operation ends without completing.
    fn give_up(
        &mut self,
        obj: &Arc<Object>,
        st: &mut State,
        b: &Blocking,
        timed_out: bool,
    ) -> Reply {
        match (b, st) {
            (Blocking::EventWait(_), State::Event(_)) => Reply::Bool(false),
            (Blocking::Acquire(_), _) => Reply::Bool(false),
            (Blocking::Barrier(_), State::Barrier { broken, .. }) => {
                // As Python's Barrier: a wait that times out breaks it for all.
                *broken = true;
                obj.changed.notify_all();
                if timed_out {
                    Reply::err(
                        Code::BrokenBarrier,
                        "the barrier wait timed out; the barrier is broken",
                    )
                } else {
                    broken_barrier()
                }
            }
            (Blocking::Put(..), _) => Reply::err(Code::Full, "the queue stayed full"),
            (Blocking::Take(_), _) => Reply::err(Code::Empty, "the queue stayed empty"),
            _ => Reply::err(Code::Timeout, "timed out"),
        }
    }
}

fn broken_barrier() -> Reply {
    Reply::err(Code::BrokenBarrier, "the barrier is broken (aborted, reset or a wait timed out)")
}

enum Blocking {
    Put(Bytes, Wait),
    Take(Wait),
    Acquire(Wait),
    EventWait(Wait),
    Barrier(Wait),
}

impl Blocking {
    fn wait(&self) -> Wait {
        match self {
            Blocking::Put(_, w)
            | Blocking::Take(w)
            | Blocking::Acquire(w)
            | Blocking::EventWait(w)
            | Blocking::Barrier(w) => *w,
        }
    }
}

enum Applied {
    /// Done; nothing others wait for changed.
    Reply(Reply),
    /// Done; waiters must look again.
    Changed(Reply),
    /// Must wait.
    Block(Blocking),
}

/// Python's index rule: negative counts from the end; out of range is `None`.
fn index_of(i: i64, len: usize) -> Option<usize> {
    let len = len as i64;
    let i = if i < 0 { i.checked_add(len)? } else { i };
    (0..len).contains(&i).then_some(i as usize)
}

fn out_of_range(i: i64, len: usize) -> Reply {
    Reply::err(Code::OutOfRange, format!("list index {i} out of range (length {len})"))
}

fn wrong_kind() -> Reply {
    Reply::err(Code::WrongKind, "this operation does not apply to this object")
}

fn apply(st: &mut State, op: Op) -> Applied {
    use Applied::{Block, Changed, Reply as R};
    match (st, op) {
        (State::Dict(m) | State::Namespace(m), Op::Len) => R(Reply::Count(m.len() as u64)),
        (State::List(l), Op::Len) => R(Reply::Count(l.len() as u64)),
        (State::Queue { items, .. }, Op::Len) => R(Reply::Count(items.len() as u64)),
        (State::Dict(m) | State::Namespace(m), Op::Clear) => {
            m.clear();
            R(Reply::Done)
        }
        (State::List(l), Op::Clear) => {
            l.clear();
            R(Reply::Done)
        }
        (State::Dict(m) | State::Namespace(m), Op::Snapshot) => R(Reply::Pairs(m.pairs())),
        (State::List(l), Op::Snapshot) => R(Reply::Many(l.clone())),
        (State::Queue { items, .. }, Op::Snapshot) => {
            R(Reply::Many(items.iter().cloned().collect()))
        }
        (State::Dict(m), Op::Get(k)) => R(Reply::Maybe(m.get(&k).cloned())),
        (State::Dict(m), Op::Insert(k, v)) => {
            m.insert(k, v);
            R(Reply::Done)
        }
        (State::Dict(m), Op::Remove(k)) => R(Reply::Maybe(m.remove(&k))),
        (State::Dict(m), Op::Contains(k)) => R(Reply::Bool(m.get(&k).is_some())),
        (State::Dict(m), Op::SetDefault(k, v)) => {
            if let Some(old) = m.get(&k) {
                return R(Reply::Value(old.clone()));
            }
            m.insert(k, v.clone());
            R(Reply::Value(v))
        }
        (State::Dict(m), Op::Keys) => R(Reply::Many(m.order.values().cloned().collect())),
        (State::Dict(m), Op::Values) => {
            R(Reply::Many(m.order.values().map(|k| m.by_key[k].1.clone()).collect()))
        }
        (State::Dict(m), Op::Update(pairs)) => {
            for (k, v) in pairs {
                m.insert(k, v);
            }
            R(Reply::Done)
        }
        (State::List(l), Op::Index(i)) => match index_of(i, l.len()) {
            Some(at) => R(Reply::Value(l[at].clone())),
            None => R(out_of_range(i, l.len())),
        },
        (State::List(l), Op::SetIndex(i, v)) => match index_of(i, l.len()) {
            Some(at) => {
                l[at] = v;
                R(Reply::Done)
            }
            None => R(out_of_range(i, l.len())),
        },
        (State::List(l), Op::Append(v)) => {
            l.push(v);
            R(Reply::Done)
        }
        (State::List(l), Op::Extend(vs)) => {
            l.extend(vs);
            R(Reply::Done)
        }
        (State::List(l), Op::Pop(i)) => {
            if l.is_empty() {
                return R(Reply::err(Code::OutOfRange, "pop from an empty list"));
            }
            match index_of(i.unwrap_or(-1), l.len()) {
                Some(at) => R(Reply::Value(l.remove(at))),
                None => R(out_of_range(i.unwrap_or(-1), l.len())),
            }
        }
        (State::List(l), Op::InsertAt(i, v)) => {
            // Python's list.insert clamps the index.
            let len = l.len() as i64;
            let at = if i < 0 { (i.saturating_add(len)).max(0) } else { i.min(len) };
            l.insert(at as usize, v);
            R(Reply::Done)
        }
        (State::Namespace(m), Op::GetAttr(name)) => {
            R(Reply::Maybe(m.get(name.as_bytes()).cloned()))
        }
        (State::Namespace(m), Op::SetAttr(name, v)) => {
            m.insert(name.into_bytes(), v);
            R(Reply::Done)
        }
        (State::Namespace(m), Op::DelAttr(name)) => R(Reply::Maybe(m.remove(name.as_bytes()))),
        (State::Value(v), Op::Load) => R(Reply::Value(v.clone())),
        (State::Value(v), Op::Store(new)) => {
            *v = new;
            R(Reply::Done)
        }
        (State::Value(v), Op::Swap(new)) => R(Reply::Value(std::mem::replace(v, new))),
        (State::Queue { items, maxsize }, Op::Put { item, wait, block }) => {
            if *maxsize == 0 || (items.len() as u64) < *maxsize {
                items.push_back(item);
                Changed(Reply::Done)
            } else if block {
                Block(Blocking::Put(item, wait))
            } else {
                R(Reply::err(Code::Full, "the queue is full"))
            }
        }
        (State::Queue { items, .. }, Op::Take { wait, block }) => match items.pop_front() {
            Some(item) => Changed(Reply::Value(item)),
            None if block => Block(Blocking::Take(wait)),
            None => R(Reply::err(Code::Empty, "the queue is empty")),
        },
        (State::Lock { .. } | State::Semaphore { .. }, Op::Acquire { wait, block }) => {
            Block(Blocking::Acquire(if block { wait } else { Some(0) }))
        }
        (State::Lock { owner, .. }, Op::Release) => {
            if owner.take().is_none() {
                return R(Reply::err(Code::NotOwner, "release of an unlocked lock"));
            }
            Changed(Reply::Done)
        }
        (State::Lock { owner, .. }, Op::Locked) => R(Reply::Bool(owner.is_some())),
        (State::Semaphore { value, bound }, Op::Release) => {
            if bound.is_some_and(|b| *value >= b) {
                return R(Reply::err(
                    Code::OutOfRange,
                    "a bounded semaphore released too many times",
                ));
            }
            *value += 1;
            Changed(Reply::Done)
        }
        (State::Semaphore { value, .. }, Op::Len) => R(Reply::Count(*value)),
        (State::Event(set), Op::Set) => {
            *set = true;
            Changed(Reply::Done)
        }
        (State::Event(set), Op::Unset) => {
            *set = false;
            R(Reply::Done)
        }
        (State::Event(set), Op::IsSet) => R(Reply::Bool(*set)),
        (State::Event(_), Op::WaitSet { wait }) => Block(Blocking::EventWait(wait)),
        (State::Barrier { .. }, Op::BarrierWait { wait }) => Block(Blocking::Barrier(wait)),
        (State::Barrier { broken, .. }, Op::Abort) => {
            *broken = true;
            Changed(Reply::Done)
        }
        (State::Barrier { count, generation, broken, reset_at, .. }, Op::Reset) => {
            if *count > 0 {
                *reset_at = Some(*generation);
            }
            *count = 0;
            *generation += 1;
            *broken = false;
            Changed(Reply::Done)
        }
        (State::Barrier { count, .. }, Op::Waiting) => R(Reply::Count(*count)),
        (State::Barrier { parties, .. }, Op::Len) => R(Reply::Count(*parties)),
        (State::User(obj), Op::Method { name, args }) => R(obj.call(&name, &args)),
        _ => R(wrong_kind()),
    }
}
