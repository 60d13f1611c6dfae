//! The MPI backend: the workers of a pool are the other ranks of an MPI job.
//!
//! Rank 0 runs `main`; every other rank is diverted before `main` (see
//! [`divert_if_rank`]) into [`rank::serve`], which runs the tasks it is sent
//! and answers with their outcomes. On rank 0 one *service thread* makes
//! every MPI call of the pool: it sends queued jobs to ranks with room, in
//! one message per rank per turn, and takes their results. The chunks are
//! the bytes `task::encode_chunk` makes for the process backend, so a rank
//! hands them to its own local worker processes as they came (crash
//! containment, the default), or runs them on its own thread
//! (`isolate(false)`: faster, but a crash there ends the whole MPI job).
//!
//! # How a process knows it is a rank
//!
//! MPI launchers put the rank in the environment: `OMPI_COMM_WORLD_RANK`
//! (Open MPI's `mpirun`), `PMIX_RANK` (PMIx, also `srun --mpi=pmix`),
//! `PMI_RANK` (MPICH's Hydra, `srun --mpi=pmi2`). Only a process whose
//! environment names a rank other than 0 initialises MPI before `main`; MPI
//! itself then says which rank it is, and a process that MPI calls rank 0
//! (a launcher that set a stale variable) returns to `main`. Rank 0
//! initialises MPI on the first [`world`](crate::mpi::Pool::world) call. A
//! program not started by a launcher gets a clear error from `world()`
//! rather than a pool with no workers.
//!
//! # Never hanging
//!
//! No MPI call here blocks: sends are `MPI_Isend`, receives are polled
//! (`MPI_Improbe`), and a thread with nothing to do sleeps on its own park
//! (see [`Backoff`]) instead of spinning inside a blocking receive, as Open
//! MPI does, which on an oversubscribed machine takes the CPU from the
//! tasks. At exit rank 0 tells every rank to finalize and finalizes under a
//! watchdog. When a whole rank dies, Open MPI (4.x and 5.x, default error
//! handler) ends the whole job, rank 0 included: nothing waits on a rank
//! that is gone.

pub(crate) mod comm;
mod rank;
mod runner;
mod wire;

pub(crate) use runner::MpiRunner;
pub(crate) use wire::PoolOptions;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::Thread;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use super::procs::JobDone;
use super::{Engine, Lifecycle, RunState, Ticket};
use crate::error::{Error, ErrorKind, Result};

/// The environment variables MPI launchers set to a process's rank.
const RANK_VARS: [&str; 4] =
    ["OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK", "MV2_COMM_WORLD_RANK"];

/// The rank the launcher's environment names, if any.
pub(crate) fn rank_hint() -> Option<u32> {
    RANK_VARS.iter().find_map(|v| std::env::var(v).ok()?.trim().parse().ok())
}

/// Before `main` (from the worker hook): a process that the launcher made
/// rank 1 or later serves tasks and exits; rank 0 arms the exit hook that
/// lets the other ranks go.
pub(crate) fn divert_if_rank() {
    let Some(hint) = rank_hint() else { return };
    if crate::sys::runs_privileged() {
        return;
    }
    if hint == 0 {
        arm_exit_hook();
        return;
    }
    let world = match comm::comm() {
        Ok(c) => c.world(),
        Err(e) => {
            report!(WARN, rank = hint, error: display = e; "multiproc: rank {hint} could not initialise MPI ({e}); running main");
            return;
        }
    };
    if world.rank == 0 {
        arm_exit_hook();
        return;
    }
    std::process::exit(rank::serve(world));
}

/// Sixteen bytes that differ between two builds: the crate version and a
/// hash of the executable code as mapped. Unlike the process backend's
/// check, it does not name the file (another node has its own copy).
pub(crate) fn build_print() -> [u8; 16] {
    static PRINT: OnceLock<[u8; 16]> = OnceLock::new();
    *PRINT.get_or_init(|| {
        use std::hash::{Hash, Hasher};
        let mut out = [0u8; 16];
        for (half, salt) in out.chunks_mut(8).zip([0x4d50_4931u64, 0x0062_7569_6c64_u64]) {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            salt.hash(&mut h);
            env!("CARGO_PKG_VERSION").hash(&mut h);
            for range in crate::sys::image().code() {
                // SAFETY: the range is an executable segment of this image,
                // mapped readable (r-x) for the life of the process.
                let code = unsafe {
                    std::slice::from_raw_parts(range.start as *const u8, range.end - range.start)
                };
                h.write(code);
            }
            half.copy_from_slice(&h.finish().to_le_bytes());
        }
        out
    })
}

// --- waiting without spinning ----------------------------------------------

/// How a polling thread waits between two looks at MPI: it spins for a
/// while after the last message (a reply that is microseconds away is taken
/// at once), then yields (an oversubscribed core goes to the tasks), then
/// parks with a timeout that doubles up to the caller's `max`. `unpark` (a
/// submission, a local result) ends a park at once.
pub(crate) struct Backoff {
    since: Option<Instant>,
    naps: u32,
    spin: Duration,
}

impl Backoff {
    /// Spins `MULTIPROC_MPI_SPIN_US` microseconds (default 100; 0 never
    /// spins), then yields as long again.
    pub(crate) fn new() -> Backoff {
        let spin = std::env::var("MULTIPROC_MPI_SPIN_US").ok().and_then(|v| v.parse().ok());
        Backoff { since: None, naps: 0, spin: Duration::from_micros(spin.unwrap_or(100)) }
    }

    pub(crate) fn reset(&mut self) {
        self.since = None;
        self.naps = 0;
    }

    /// True while still in the spinning or yielding phase.
    pub(crate) fn spinning(&self) -> bool {
        self.since.is_none_or(|t| t.elapsed() < self.spin * 2)
    }

    pub(crate) fn wait(&mut self, max: Duration) {
        let idle = self.since.get_or_insert_with(Instant::now).elapsed();
        if idle < self.spin {
            std::hint::spin_loop();
        } else if idle < self.spin * 2 {
            std::thread::yield_now();
        } else {
            let step = self.naps.min(16);
            self.naps += 1;
            std::thread::park_timeout(Duration::from_micros(25 << step).min(max));
        }
    }
}

// --- rank 0: the engine ------------------------------------------------------

/// One chunk of work for a rank.
pub(crate) struct MpiJob {
    id: u64,
    offset: i64,
    chunk: Vec<u8>,
    done: JobDone,
    ticket: Option<Arc<Ticket>>,
}

impl MpiJob {
    fn fail(self, err: Error) {
        (self.done)(Err(err), None)
    }
}

struct Sent {
    job: MpiJob,
    rank: usize,
    at: Instant,
}

#[derive(Clone, Copy)]
struct Load {
    in_flight: usize,
    /// The last job came back within [`FAST`]: the rank gets a deep queue.
    fast: bool,
}

const FAST: Duration = Duration::from_millis(2);
/// Jobs a rank holds at once when its tasks are fast.
const DEEP: usize = 32;

struct State {
    queue: VecDeque<MpiJob>,
    sent: HashMap<u64, Sent>,
    /// Index 0 is rank 1.
    load: Vec<Load>,
}

/// The MPI backend's engine, on rank 0.
pub(crate) struct MpiEngine {
    lifecycle: Lifecycle,
    state: Mutex<State>,
    /// Signalled when the last queued or sent job completes.
    quiet: Condvar,
    options: PoolOptions,
    ranks: usize,
    /// `TERMINATE` must still go to the ranks.
    terminate_pending: AtomicBool,
    /// One per rank: a rank's busy time is the sum, over its jobs, of the
    /// time from sending the job to its result (jobs a rank holds at once
    /// overlap).
    meters: crate::stats::Meters,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

impl MpiEngine {
    fn slots(&self) -> usize {
        self.ranks * self.options.local_workers as usize
    }

    fn depth(&self, load: Load) -> usize {
        let local = self.options.local_workers as usize;
        if load.fast {
            DEEP * local
        } else {
            local + 1
        }
    }

    /// Queues a job, or fails it at once if the pool takes no tasks.
    pub(crate) fn submit(
        &self,
        offset: i64,
        chunk: Vec<u8>,
        done: JobDone,
        ticket: Option<Arc<Ticket>>,
        held: bool,
    ) {
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let job = MpiJob { id, offset, chunk, done, ticket };
        let mut s = self.state.lock();
        // Checked under the queue's lock: see the rule in `lifecycle`.
        if let Some(err) = self.lifecycle.refusal(held) {
            drop(s);
            return job.fail(err);
        }
        s.queue.push_back(job);
        drop(s);
        service().wake();
    }

    /// Runs a job for a caller who waits for it (`apply`): when a rank
    /// holds nothing, the caller sends the job itself and polls for its
    /// result while `ready()` is false, for as long as a reply is likely to
    /// be microseconds away; no thread hand-off on rank 0 either way. Then
    /// (or when every rank is busy) the service thread takes over, and the
    /// caller waits for the result as usual.
    pub(crate) fn run_waited(
        &self,
        offset: i64,
        chunk: Vec<u8>,
        done: JobDone,
        ready: impl Fn() -> bool,
    ) {
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let job = MpiJob { id, offset, chunk, done, ticket: None };
        let mut s = self.state.lock();
        if let Some(err) = self.lifecycle.refusal(false) {
            drop(s);
            return job.fail(err);
        }
        let free = s.load.iter().position(|l| l.in_flight == 0);
        let (Some(r), true) = (free, s.queue.is_empty()) else {
            s.queue.push_back(job);
            drop(s);
            return service().wake();
        };
        let mut batch = Vec::with_capacity(job.chunk.len() + 32);
        wire::put_u32(&mut batch, 1);
        wire::put_task(&mut batch, id, offset, &job.chunk);
        s.load[r].in_flight += 1;
        s.sent.insert(id, Sent { job, rank: r, at: Instant::now() });
        drop(s);
        let Ok(mut c) = comm::comm() else { return };
        if let Err(e) = c.send(r as i32 + 1, wire::TASKS, batch) {
            drop(c);
            let lost = {
                let mut s = self.state.lock();
                s.load[r].in_flight = s.load[r].in_flight.saturating_sub(1);
                s.sent.remove(&id)
            };
            return lost.into_iter().for_each(|x| x.job.fail(e.clone()));
        }
        drop(c);
        // Poll for the reply ourselves while it is likely close; the service
        // thread may take it first, which completes the job just the same.
        let mut backoff = Backoff::new();
        while !ready() && backoff.spinning() {
            let got = match comm::comm_if_initialized() {
                Some(mut c) => {
                    c.progress();
                    c.receive(Some(r as i32 + 1), Some(wire::DONE)).ok().flatten()
                }
                None => return,
            };
            match got {
                Some(m) => {
                    if let Some(body) = &m.body {
                        self.take_results(m.source, body);
                    }
                }
                None => backoff.wait(Duration::ZERO),
            }
        }
        // The service thread now waits for it.
        service().wake();
    }

    fn idle(&self) -> bool {
        let s = self.state.lock();
        s.queue.is_empty() && s.sent.is_empty()
    }

    /// Sends queued jobs to ranks with room, one message per rank; true when
    /// anything was sent.
    fn dispatch(&self, c: &mut comm::Comm) -> bool {
        self.send_terminate(c);
        let mut s = self.state.lock();
        if s.queue.is_empty() || self.lifecycle.is_stopped() {
            return false;
        }
        let mut any = false;
        let now = Instant::now();
        for r in 0..self.ranks {
            if s.queue.is_empty() {
                break;
            }
            let load = s.load[r];
            let room = self.depth(load).saturating_sub(load.in_flight);
            let share = s.queue.len().div_ceil(self.ranks - r).max(1);
            let mut batch = Vec::new();
            let mut n = 0u32;
            wire::put_u32(&mut batch, 0);
            while (n as usize) < room.min(share) && batch.len() < comm::MAX_MESSAGE / 2 {
                let Some(job) = s.queue.pop_front() else { break };
                if !job.ticket.as_ref().is_none_or(|t| t.start()) {
                    continue; // cancelled while queued: already complete
                }
                if let Some(t) = &job.ticket {
                    t.slot.store(r, Ordering::SeqCst);
                }
                wire::put_task(&mut batch, job.id, job.offset, &job.chunk);
                n += 1;
                s.sent.insert(job.id, Sent { job, rank: r, at: now });
            }
            if n == 0 {
                continue;
            }
            batch[..4].copy_from_slice(&n.to_le_bytes());
            s.load[r].in_flight += n as usize;
            if let Err(e) = c.send(r as i32 + 1, wire::TASKS, batch) {
                // Nothing can reach that rank: its jobs fail.
                let lost: Vec<u64> =
                    s.sent.iter().filter(|(_, v)| v.rank == r).map(|(k, _)| *k).collect();
                let jobs: Vec<MpiJob> =
                    lost.iter().filter_map(|id| s.sent.remove(id)).map(|x| x.job).collect();
                s.load[r].in_flight = 0;
                drop(s);
                jobs.into_iter().for_each(|j| j.fail(e.clone()));
                return true;
            }
            any = true;
        }
        any
    }

    /// Tells the ranks to stop this pool's tasks, once, if `terminate` asked.
    fn send_terminate(&self, c: &mut comm::Comm) {
        if self.terminate_pending.swap(false, Ordering::SeqCst) {
            for r in 1..=self.ranks {
                let _ = c.send(r as i32, wire::TERMINATE, Vec::new());
            }
        }
    }

    /// Completes the jobs of a DONE message from `source`.
    fn take_results(&self, source: i32, body: &[u8]) {
        let rank = match usize::try_from(source - 1) {
            Ok(r) if r < self.ranks => r,
            _ => return,
        };
        let mut r = wire::Reader::new(body);
        let Ok(n) = r.count(wire::MIN_DONE) else { return };
        let now = Instant::now();
        for _ in 0..n {
            let entry = (|| Ok::<_, Error>((r.u64()?, r.u32()?, r.u8()?, r.blob()?)))();
            let Ok((id, pid, how, bytes)) = entry else { return };
            let sent = {
                let mut s = self.state.lock();
                // A rank completes only jobs it was sent.
                match s.sent.get(&id) {
                    Some(x) if x.rank == rank => {}
                    _ => continue,
                }
                let sent = s.sent.remove(&id).expect("just found");
                self.meters.finished(rank, now.saturating_duration_since(sent.at), None);
                let load = &mut s.load[rank];
                load.in_flight = load.in_flight.saturating_sub(1);
                load.fast = now.duration_since(sent.at) < FAST;
                if s.queue.is_empty() && s.sent.is_empty() {
                    self.quiet.notify_all();
                }
                sent
            };
            let pid = (pid != 0).then_some(pid);
            let decoding = Instant::now();
            match how {
                wire::DONE_OUTCOMES => (sent.job.done)(Ok((bytes, Vec::new())), pid),
                _ => sent.job.fail(wire::decode_error(bytes, source)),
            }
            self.meters.decoded(rank, decoding.elapsed());
        }
    }
}

impl Engine for MpiEngine {
    fn lifecycle(&self) -> &Lifecycle {
        &self.lifecycle
    }

    fn workers(&self) -> usize {
        self.slots()
    }

    fn wake_all(&self) {
        service().wake();
    }

    /// Fails what is queued; once terminated, what the ranks hold too (the
    /// ranks are told to stop it, and a late result is dropped).
    fn fail_queued(&self, err: Error) {
        let terminated = self.lifecycle.state() == RunState::Terminated;
        let jobs: Vec<MpiJob> = {
            let mut s = self.state.lock();
            let mut jobs: Vec<MpiJob> = s.queue.drain(..).collect();
            if terminated || self.lifecycle.broken().is_some() {
                if !s.sent.is_empty() {
                    self.terminate_pending.store(true, Ordering::SeqCst);
                }
                jobs.extend(s.sent.drain().map(|(_, x)| x.job));
                s.load.iter_mut().for_each(|l| l.in_flight = 0);
            }
            self.quiet.notify_all();
            jobs
        };
        for j in jobs {
            if j.ticket.as_ref().is_none_or(|t| t.cancel() || t.is_sent()) {
                j.fail(err.clone());
            }
        }
    }

    /// Waits until a closed pool has run everything (a terminated one has
    /// nothing left: its jobs were failed).
    fn join_workers(&self) {
        let mut s = self.state.lock();
        loop {
            let empty = s.queue.is_empty() && s.sent.is_empty();
            if self.lifecycle.is_stopped() || (empty && self.lifecycle.finished(true)) {
                return;
            }
            self.quiet.wait_for(&mut s, Duration::from_millis(50));
        }
    }

    fn kill_running(&self, _ticket: &Ticket) -> bool {
        false
    }

    fn face_dropped(&self) {
        self.terminate();
    }

    /// One entry per rank (each runs `local_workers` tasks at once).
    fn stats(&self) -> crate::stats::PoolStats {
        self.meters.snapshot()
    }
}

// --- rank 0: the service thread -------------------------------------------

struct Service {
    thread: Thread,
    current: Mutex<Option<Arc<MpiEngine>>>,
    world: comm::World,
}

static SERVICE: StartOnce<Service> = StartOnce::new();
static EXITING: AtomicBool = AtomicBool::new(false);

fn service() -> &'static Service {
    SERVICE.get().expect("an MPI engine exists only once the service started")
}

/// A value made at most once per process, whose making can fail. A failure
/// that every later try would meet again (this process is not rank 0, a
/// rank runs another build, MPI itself failed) is kept and returned to every
/// later call. A timeout is not kept: a rank that did not answer the
/// handshake in time may only have been slow to start, and the next pool
/// asks again; nor is a failure to start a thread (resources may free up).
struct StartOnce<T> {
    made: OnceLock<T>,
    /// Held while one call makes the value; the failure kept, if any.
    failed: Mutex<Option<Error>>,
}

impl<T> StartOnce<T> {
    const fn new() -> StartOnce<T> {
        StartOnce { made: OnceLock::new(), failed: Mutex::new(None) }
    }

    fn get(&self) -> Option<&T> {
        self.made.get()
    }

    fn get_or_try(&self, make: impl FnOnce() -> Result<T, Failed>) -> Result<&T> {
        if let Some(v) = self.made.get() {
            return Ok(v);
        }
        let mut failed = self.failed.lock();
        if let Some(v) = self.made.get() {
            return Ok(v);
        }
        if let Some(e) = failed.as_ref() {
            return Err(e.clone());
        }
        match make() {
            Ok(v) => Ok(self.made.get_or_init(|| v)),
            Err(Failed { error, for_good }) => {
                if for_good {
                    *failed = Some(error.clone());
                }
                Err(error)
            }
        }
    }
}

/// Why a [`StartOnce`] could not make its value, and whether every later
/// try would fail the same way. From an error: for good unless it is a
/// timeout.
struct Failed {
    error: Error,
    for_good: bool,
}

impl From<Error> for Failed {
    fn from(error: Error) -> Failed {
        let for_good = error.kind() != ErrorKind::Timeout;
        Failed { error, for_good }
    }
}

impl Service {
    fn wake(&self) {
        self.thread.unpark();
    }
}

/// Starts MPI on rank 0, checks that every rank is this build, and starts
/// the service thread (once per process; see [`StartOnce`] for what a
/// failure leaves behind).
fn start() -> Result<&'static Service> {
    SERVICE.get_or_try(|| {
        let world = {
            let mut c = comm::comm()?;
            let world = c.world();
            if world.rank != 0 {
                let only = Error::new(ErrorKind::InvalidState, "only MPI rank 0 makes pools");
                return Err(only.into());
            }
            handshake(&mut c)?;
            world
        };
        arm_exit_hook();
        let thread = std::thread::Builder::new()
            .name("multiproc-mpi".into())
            .spawn(serve_ranks)
            .map_err(|e| Failed {
                error: Error::io("could not start the MPI service thread", e),
                for_good: false,
            })?;
        Ok(Service { thread: thread.thread().clone(), current: Mutex::new(None), world })
    })
}

/// Asks each rank whether it is this build (bounded wait).
fn handshake(c: &mut comm::Comm) -> Result<()> {
    let size = c.world().size;
    for r in 1..size {
        c.send(r, wire::HELLO, build_print().to_vec())?;
    }
    let mut answered = vec![false; size as usize];
    let mut other = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut left = size - 1;
    while left > 0 {
        match c.receive(None, Some(wire::HELLO_REPLY))? {
            Some(m) if m.tag == wire::HELLO_REPLY && m.source > 0 && m.source < size => {
                if !std::mem::replace(&mut answered[m.source as usize], true) {
                    left -= 1;
                    if m.body.as_deref() != Some(&[1]) {
                        other.push(m.source);
                    }
                }
            }
            Some(_) => {}
            None if Instant::now() > deadline => {
                let silent: Vec<String> =
                    (1..size).filter(|r| !answered[*r as usize]).map(|r| r.to_string()).collect();
                return Err(Error::timeout(format!(
                    "MPI ranks {} did not answer within 60 s; are they running this program? \
                     (the next pool asks them again)",
                    silent.join(", ")
                )));
            }
            None => std::thread::sleep(Duration::from_micros(100)),
        }
    }
    c.progress();
    if other.is_empty() {
        return Ok(());
    }
    other.sort_unstable();
    let names: Vec<String> = other.iter().map(|r| r.to_string()).collect();
    let who = match names.as_slice() {
        [one] => format!("MPI rank {one}"),
        _ => format!("each of MPI ranks {}", names.join(", ")),
    };
    Err(Error::build_mismatch(&who))
}

/// Makes the engine of a new pool with `options`; one MPI pool at a time.
pub(crate) fn new_engine(options: PoolOptions) -> Result<Arc<MpiEngine>> {
    let service = start()?;
    let ranks = (service.world.size - 1) as usize;
    let mut current = service.current.lock();
    if let Some(old) = current.as_ref() {
        if old.lifecycle.state() == RunState::Running || !old.idle() {
            return Err(Error::new(
                ErrorKind::InvalidState,
                "another MPI pool is still running or has work: the ranks serve one pool at a \
                 time; close, shut down or drop it first",
            ));
        }
    }
    let engine = Arc::new(MpiEngine {
        lifecycle: Lifecycle::new(),
        state: Mutex::new(State {
            queue: VecDeque::new(),
            sent: HashMap::new(),
            load: vec![Load { in_flight: 0, fast: false }; ranks],
        }),
        quiet: Condvar::new(),
        options,
        ranks,
        terminate_pending: AtomicBool::new(false),
        meters: {
            let meters = crate::stats::Meters::new(ranks);
            (0..ranks).for_each(|r| meters.ready(r, None, Instant::now()));
            meters
        },
    });
    {
        let mut c = comm::comm()?;
        // The old pool's TERMINATE goes before the new POOL, or the ranks
        // would wait for the old tasks before starting the new pool.
        if let Some(old) = current.as_ref() {
            old.send_terminate(&mut c);
        }
        let body = options.encode();
        for r in 1..=ranks {
            c.send(r as i32, wire::POOL, body.clone())?;
        }
    }
    *current = Some(engine.clone());
    Ok(engine)
}

/// The service thread: results in, jobs out, until the program exits.
fn serve_ranks() {
    let mut backoff = Backoff::new();
    let mut messages = Vec::new();
    loop {
        if EXITING.load(Ordering::SeqCst) {
            return;
        }
        let engine = SERVICE.get().and_then(|s| s.current.lock().clone());
        let mut active = false;
        let sends_left;
        {
            let Some(mut c) = comm::comm_if_initialized() else { return };
            while messages.len() < 64 {
                match c.receive(None, Some(wire::DONE)) {
                    Ok(Some(m)) => messages.push(m),
                    _ => break,
                }
            }
            sends_left = !c.progress();
        }
        for m in messages.drain(..) {
            active = true;
            if let (Some(e), wire::DONE, Some(body)) = (&engine, m.tag, &m.body) {
                e.take_results(m.source, body);
            }
        }
        let mut waiting = false;
        if let Some(e) = &engine {
            if let Some(mut c) = comm::comm_if_initialized() {
                active |= e.dispatch(&mut c);
            }
            waiting = !e.state.lock().sent.is_empty();
        }
        if active {
            backoff.reset();
        } else if waiting || sends_left {
            backoff.wait(Duration::from_millis(1));
        } else {
            // Nothing out there: sleep until a submission.
            std::thread::park_timeout(Duration::from_millis(100));
            backoff.reset();
        }
    }
}

/// The MPI floor: the mean round trip of a `bytes`-byte message between
/// rank 0 and rank 1 through the same calls the pool makes (rank 1 answers
/// from its serving loop), over `rounds` rounds after a warm-up.
pub(crate) fn ping_pong(rounds: usize, bytes: usize) -> Result<Duration> {
    let service = start()?;
    if service.world.size < 2 {
        return Err(Error::new(ErrorKind::InvalidState, "ping-pong needs two ranks"));
    }
    let mut c = comm::comm()?;
    let body = vec![0u8; bytes];
    let round = |c: &mut comm::Comm| -> Result<()> {
        c.send(1, wire::PING, body.clone())?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if c.receive(Some(1), Some(wire::PONG))?.is_some() {
                c.progress();
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(Error::timeout("rank 1 did not answer a ping within 10 s"));
            }
        }
    };
    for _ in 0..rounds.min(1000) {
        round(&mut c)?;
    }
    let t = Instant::now();
    for _ in 0..rounds {
        round(&mut c)?;
    }
    Ok(t.elapsed() / rounds.max(1) as u32)
}

// --- rank 0: the end of the program ------------------------------------------

static HOOK: OnceLock<u32> = OnceLock::new();

fn arm_exit_hook() {
    HOOK.get_or_init(|| {
        crate::sys::at_exit(at_exit);
        std::process::id()
    });
}

/// Rank 0's exit: the executors' work is finished first, then every rank is
/// told to exit, and MPI is finalized. A rank that never answers cannot keep
/// rank 0: after 20 s it exits with code 1, and the launcher ends the job.
extern "C" fn at_exit() {
    if HOOK.get() != Some(&std::process::id()) {
        return;
    }
    crate::executor::exit::finish_all();
    if let Some(s) = SERVICE.get() {
        if let Some(e) = s.current.lock().clone() {
            e.terminate();
        }
    }
    EXITING.store(true, Ordering::SeqCst);
    std::thread::spawn(|| {
        std::thread::sleep(Duration::from_secs(20));
        report!(ERROR, ; "multiproc: MPI_Finalize did not return within 20 s; exiting");
        // At once: the exit hooks are what is stuck.
        crate::sys::exit_now(1);
    });
    // Ranks wait for their EXIT even when rank 0 never made a pool.
    let Ok(mut c) = comm::comm() else { return };
    for r in 1..c.world().size {
        let _ = c.send(r, wire::EXIT, Vec::new());
    }
    c.flush(Duration::from_secs(10));
    c.finalize();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    /// A handshake that timed out is tried again by the next call (a rank
    /// may only have been slow to start); once made, the value stays.
    #[test]
    fn a_start_that_timed_out_is_tried_again() {
        let once = StartOnce::<u32>::new();
        let tries = Cell::new(0);
        let timed_out = once.get_or_try(|| {
            tries.set(tries.get() + 1);
            Err(Error::timeout("MPI ranks 1 did not answer within 60 s").into())
        });
        assert_eq!(timed_out.unwrap_err().kind(), ErrorKind::Timeout);
        assert!(once.get().is_none());
        let made = once.get_or_try(|| {
            tries.set(tries.get() + 1);
            Ok(7)
        });
        assert_eq!(made.copied().unwrap(), 7);
        assert_eq!(once.get_or_try(|| unreachable!("made once")).copied().unwrap(), 7);
        assert_eq!(tries.get(), 2);
    }

    /// A failure that every try would meet again is kept: later calls get
    /// the same error without trying.
    #[test]
    fn a_start_that_failed_for_good_is_not_tried_again() {
        let once = StartOnce::<u32>::new();
        let first = once.get_or_try(|| Err(Error::build_mismatch("MPI rank 1").into()));
        let kind = first.unwrap_err().kind();
        let again = once.get_or_try(|| unreachable!("a kept failure is not retried"));
        assert_eq!(again.unwrap_err().kind(), kind);
        assert!(once.get().is_none());
    }

    /// A failure its maker marks as passing (a thread that could not
    /// start) is not kept either.
    #[test]
    fn a_start_that_failed_for_now_is_tried_again() {
        let once = StartOnce::<u32>::new();
        let error = Error::io("could not start the MPI service thread", std::io::Error::other("x"));
        let first = once.get_or_try(|| Err(Failed { error, for_good: false }));
        assert_eq!(first.unwrap_err().kind(), ErrorKind::Io);
        assert_eq!(once.get_or_try(|| Ok(3)).copied().unwrap(), 3);
    }
}
