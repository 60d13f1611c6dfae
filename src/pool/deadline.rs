//! Per-call timeouts (`pool.timeout(d)`, `executor.timeout(d)`): what they
//! mean and the one timer thread that enforces them.
//!
//! A per-call timeout is a deadline for the call's result, counted from the
//! call: when it passes, the result fails with [`ErrorKind::Timeout`]
//! (queued or not, running or not), and the call's work stops — what is
//! still queued never runs, and what is running in a worker process has its
//! worker killed and replaced, as the pool's `task_timeout` does. Threads
//! cannot be killed: a thread backend's running task goes on, and its late
//! result is dropped. A map's timeout bounds the whole map.
//!
//! The deadlines of every call live in one heap, served by one thread of
//! this process started at the first timed call. A timer holds only weak
//! references, and timers whose call is over are swept out whenever the
//! count has doubled since the last sweep: a loop of calls that finish in
//! time under a long timeout holds at most about twice the timers of the
//! calls still pending, not one per call until its deadline.
//!
//! [`ErrorKind::Timeout`]: crate::ErrorKind::Timeout

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use super::map::{ChunkDone, ChunkRunner};
use super::Completion;
use crate::engine::{Engine, Release, Ticket};
use crate::error::{Error, Result};
use crate::task::Outcomes;

/// What happens at a deadline, and whether it still matters.
trait Expiry: Send {
    /// False once the call is over (done in time, or dropped): the timer
    /// may then be swept out unrun.
    fn pending(&self) -> bool;
    fn expire(self: Box<Self>);
}

struct Timers {
    /// The process the timer thread runs in (a forked child has none).
    pid: u32,
    heap: BinaryHeap<Reverse<(Instant, u64)>>,
    actions: HashMap<u64, Box<dyn Expiry>>,
    next: u64,
    /// How many timers were left by the last sweep.
    swept_to: usize,
}

/// Fewer timers than this are never swept.
const SWEEP_FROM: usize = 64;

impl Timers {
    /// Drops the timers whose call is over, once their count has doubled
    /// since the last sweep (amortised: each timer is looked at O(1) times).
    fn sweep_if_grown(&mut self) {
        if self.actions.len() < SWEEP_FROM.max(self.swept_to * 2) {
            return;
        }
        self.actions.retain(|_, a| a.pending());
        let actions = &self.actions;
        self.heap.retain(|Reverse((_, id))| actions.contains_key(id));
        self.swept_to = self.actions.len();
    }
}

static TIMERS: Mutex<Option<Timers>> = Mutex::new(None);
static WAKE: Condvar = Condvar::new();

/// Runs `f` on the timer thread once `deadline` has passed.
fn at(deadline: Instant, f: impl Expiry + 'static) -> Result<()> {
    let mut timers = TIMERS.lock();
    let pid = std::process::id();
    if timers.as_ref().is_none_or(|t| t.pid != pid) {
        std::thread::Builder::new()
            .name("multiproc-timeouts".into())
            .spawn(serve)
            .map_err(|e| Error::io("could not start the timeout thread", e))?;
        *timers = Some(Timers {
            pid,
            heap: BinaryHeap::new(),
            actions: HashMap::new(),
            next: 0,
            swept_to: 0,
        });
    }
    let t = timers.as_mut().expect("just set");
    t.sweep_if_grown();
    let id = t.next;
    t.next += 1;
    let earliest = t.heap.peek().is_none_or(|Reverse((d, _))| deadline < *d);
    t.heap.push(Reverse((deadline, id)));
    t.actions.insert(id, Box::new(f));
    if earliest {
        WAKE.notify_all();
    }
    Ok(())
}

/// The timer thread: runs each action once its deadline has passed, with
/// no lock held.
fn serve() {
    let pid = std::process::id();
    let mut timers = TIMERS.lock();
    loop {
        let Some(t) = timers.as_mut().filter(|t| t.pid == pid) else {
            return;
        };
        let now = Instant::now();
        let mut due = Vec::new();
        while let Some(&Reverse((deadline, id))) = t.heap.peek() {
            if deadline > now {
                break;
            }
            t.heap.pop();
            due.extend(t.actions.remove(&id));
        }
        let next = t.heap.peek().map(|Reverse((d, _))| *d);
        if !due.is_empty() {
            drop(timers);
            for f in due {
                // An action only completes results and kills workers; a
                // panic there (a callback's allocation failing) must not
                // stop the other timeouts.
                let _ = crate::task::catch_panic(|| f.expire());
            }
            timers = TIMERS.lock();
            continue;
        }
        match next {
            Some(d) => {
                WAKE.wait_until(&mut timers, d);
            }
            None => WAKE.wait(&mut timers),
        }
    }
}

/// The error of a call to `task` (a function's `type_name`) that passed
/// its timeout: the name is what tells a user which call it was.
fn timed_out(limit: Duration, task: &str) -> Error {
    Error::timeout(format!(
        "the call to {task} did not finish within its {limit:?} timeout; what was left of it \
         was cancelled (a worker process running it was killed and replaced): raise the \
         timeout, or split the work into shorter calls"
    ))
}

/// Stops a job: cancels it if queued, kills its worker if running (false
/// where the backend cannot: threads).
fn stop(ticket: &Ticket, engine: &Weak<dyn Engine>) {
    if !ticket.cancel() {
        if let Some(engine) = engine.upgrade() {
            engine.kill_running(ticket);
        }
    }
}

/// Bounds one call (`apply`, `apply_async`, `submit`) submitted with
/// `ticket` and completing `completion`: see the module doc. `task` names
/// the called function in the timeout's message.
pub(crate) fn arm_one<R: Send + 'static>(
    limit: Duration,
    task: &'static str,
    completion: &Arc<Completion<R>>,
    ticket: &Arc<Ticket>,
    engine: Weak<dyn Engine>,
) -> Result<()> {
    let Some(deadline) = crate::deadline_after(limit) else {
        return Ok(()); // never
    };
    let (completion, ticket) = (Arc::downgrade(completion), Arc::downgrade(ticket));
    at(deadline, OneCall { completion, ticket, engine, limit, task })
}

/// The deadline of one call.
struct OneCall<R> {
    completion: Weak<Completion<R>>,
    ticket: Weak<Ticket>,
    engine: Weak<dyn Engine>,
    limit: Duration,
    task: &'static str,
}

impl<R: Send + 'static> Expiry for OneCall<R> {
    fn pending(&self) -> bool {
        self.completion.upgrade().is_some_and(|c| !c.is_done())
    }

    fn expire(self: Box<Self>) {
        let Some(completion) = self.completion.upgrade() else { return };
        if completion.is_done() {
            return;
        }
        completion.complete(Err(timed_out(self.limit, self.task)));
        if let Some(ticket) = self.ticket.upgrade() {
            stop(&ticket, &self.engine);
        }
    }
}

/// What a [`Timed`] runner does with a chunk's callback once the deadline
/// has passed.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Late {
    /// Calls it with a timeout error per item (`map`: the first error
    /// fails the whole map).
    Fail,
    /// Drops it (an `imap`: the iterator's own deadline yields the one
    /// timeout, and nothing late arrives after it).
    Drop,
}

struct Chunk<R> {
    ticket: Arc<Ticket>,
    len: usize,
    done: ChunkDone<R>,
}

struct Calls<R> {
    expired: bool,
    live: HashMap<u64, Chunk<R>>,
    next: u64,
}

/// A runner whose chunks all stop at one deadline (a map's per-call
/// timeout): each is submitted with a ticket; at the deadline every chunk
/// not finished is cancelled or has its worker killed, and its callback is
/// answered as `late` says; chunks submitted later are answered at once.
pub(crate) struct Timed<Rn, R> {
    inner: Rn,
    calls: Arc<Mutex<Calls<R>>>,
    late: Late,
    limit: Duration,
    task: &'static str,
}

fn timeouts<R>(len: usize, limit: Duration, task: &str) -> Outcomes<R> {
    (0..len).map(|_| Err(timed_out(limit, task))).collect()
}

impl<Rn, R: Send + 'static> Timed<Rn, R> {
    /// Wraps `inner`, which runs `task` (named in the timeout's message);
    /// its deadline is `limit` from now.
    pub(crate) fn new<A>(inner: Rn, limit: Duration, task: &'static str, late: Late) -> Result<Self>
    where
        Rn: ChunkRunner<A, R>,
    {
        let calls = Arc::new(Mutex::new(Calls { expired: false, live: HashMap::new(), next: 0 }));
        if let Some(deadline) = crate::deadline_after(limit) {
            let calls = Arc::downgrade(&calls);
            let engine = Arc::downgrade(inner.engine()) as Weak<dyn Engine>;
            at(deadline, MapCall { calls, engine, late, limit, task })?;
        }
        Ok(Timed { inner, calls, late, limit, task })
    }
}

/// The deadline of a map's chunks.
struct MapCall<R> {
    calls: Weak<Mutex<Calls<R>>>,
    engine: Weak<dyn Engine>,
    late: Late,
    limit: Duration,
    task: &'static str,
}

impl<R: Send + 'static> Expiry for MapCall<R> {
    fn pending(&self) -> bool {
        self.calls.strong_count() > 0
    }

    fn expire(self: Box<Self>) {
        let Some(calls) = self.calls.upgrade() else { return };
        let live = {
            let mut c = calls.lock();
            c.expired = true;
            std::mem::take(&mut c.live)
        };
        for chunk in live.into_values() {
            stop(&chunk.ticket, &self.engine);
            if self.late == Late::Fail {
                (chunk.done)(timeouts(chunk.len, self.limit, self.task));
            }
        }
    }
}

impl<A, R, Rn> ChunkRunner<A, R> for Timed<Rn, R>
where
    R: Send + 'static,
    Rn: ChunkRunner<A, R>,
{
    type Engine = Rn::Engine;

    fn engine(&self) -> &Arc<Self::Engine> {
        self.inner.engine()
    }

    fn run_chunk(&self, items: Vec<A>, done: ChunkDone<R>) {
        self.run_chunk_held(items, done, Ticket::new())
    }

    fn run_chunk_held(&self, items: Vec<A>, done: ChunkDone<R>, ticket: Arc<Ticket>) {
        let len = items.len();
        let id = {
            let mut c = self.calls.lock();
            if c.expired {
                drop(c);
                ticket.cancel();
                if self.late == Late::Fail {
                    done(timeouts(len, self.limit, self.task));
                }
                return;
            }
            let id = c.next;
            c.next += 1;
            c.live.insert(id, Chunk { ticket: ticket.clone(), len, done });
            id
        };
        let calls = self.calls.clone();
        let relay: ChunkDone<R> = Box::new(move |outcomes| {
            // Answered here unless the deadline came first.
            let chunk = calls.lock().live.remove(&id);
            if let Some(chunk) = chunk {
                (chunk.done)(outcomes);
            }
        });
        self.inner.run_chunk_held(items, relay, ticket);
    }

    fn hold_open(&self) -> Option<Release> {
        self.inner.hold_open()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// A timer whose call is over as soon as the test says so.
    struct Probe(Arc<AtomicBool>);

    impl Expiry for Probe {
        fn pending(&self) -> bool {
            !self.0.load(Ordering::SeqCst)
        }
        fn expire(self: Box<Self>) {}
    }

    fn timers_held() -> usize {
        TIMERS.lock().as_ref().map_or(0, |t| t.actions.len() + t.heap.len())
    }

    #[test]
    fn timers_of_calls_over_in_time_do_not_pile_up_until_their_deadline() {
        let far = Instant::now() + Duration::from_secs(3600);
        let before = timers_held();
        for _ in 0..10_000 {
            at(far, Probe(Arc::new(AtomicBool::new(true)))).unwrap();
        }
        // Swept whenever the count doubles: at most about twice the
        // (zero) pending timers, plus the sweep's floor, per map and heap.
        let held = timers_held().saturating_sub(before);
        assert!(held <= 4 * SWEEP_FROM, "{held} timers held for 10,000 finished calls");
        // A pending one is kept through every sweep.
        let live = Arc::new(AtomicBool::new(false));
        at(far, Probe(live.clone())).unwrap();
        for _ in 0..1_000 {
            at(far, Probe(Arc::new(AtomicBool::new(true)))).unwrap();
        }
        let t = TIMERS.lock();
        assert!(t.as_ref().unwrap().actions.values().any(|a| a.pending()));
    }
}
