//! Worker insights: what each worker of a pool has done, from
//! [`Pool::stats`](crate::Pool::stats) and the same method on
//! [`ThreadPool`](crate::ThreadPool) and both executors.
//!
//! The numbers are always kept, so they are taken where they cost nothing
//! more than a few additions: the pool's own threads stamp each task when it
//! is handed to a worker and when its result comes back (times the pool
//! takes anyway), and nothing is asked of a worker process. A worker's
//! numbers are therefore the parent's view: a task's *busy* time runs from
//! when the worker could start it (it was sent to an idle worker, or the
//! task before it finished) to when its result arrived.

use std::fmt;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Why a worker process was replaced.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
///
/// fn nap(ms: u64) { std::thread::sleep(Duration::from_millis(ms)) }
///
/// let pool = multiproc::Pool::builder().processes(1).task_timeout(Duration::from_millis(50)).build()?;
/// assert!(pool.apply(nap, 5_000).unwrap_err().is_timeout());
/// assert_eq!(pool.stats().total().restarts.timeout, 1);
/// # Ok::<(), multiproc::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RestartReason {
    /// It had run its quota (`max_tasks_per_child`).
    MaxTasks,
    /// A task ran past the pool's `task_timeout`; the worker was killed.
    Timeout,
    /// It died: by a signal, or exiting with a code.
    Crashed {
        /// The signal that ended it, if one did.
        signal: Option<i32>,
        /// Its exit code, if it exited.
        exit_code: Option<i32>,
    },
    /// Its resident memory after a task exceeded `max_memory_per_child`.
    MemoryCap {
        /// The worker's resident set, in bytes, when it was measured.
        rss: u64,
        /// The cap, in bytes.
        cap: u64,
    },
    /// A task's allocation failed under the pool's `memory_limit`.
    MemoryLimit {
        /// The limit, in bytes.
        limit: u64,
    },
    /// Its running task was killed on request (`Future::kill`).
    Killed,
    /// It broke the pool's protocol and was killed.
    Protocol,
}

impl fmt::Display for RestartReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            RestartReason::MaxTasks => f.write_str("max tasks"),
            RestartReason::Timeout => f.write_str("timeout"),
            RestartReason::Crashed { signal: Some(sig), .. } => {
                write!(f, "crashed ({})", crate::sys::signal_name(sig))
            }
            RestartReason::Crashed { exit_code: Some(code), .. } => {
                write!(f, "crashed (exit code {code})")
            }
            RestartReason::Crashed { .. } => f.write_str("crashed"),
            RestartReason::MemoryCap { rss, cap } => {
                write!(f, "memory cap ({} over {})", Bytes(rss), Bytes(cap))
            }
            RestartReason::MemoryLimit { limit } => write!(f, "memory limit ({})", Bytes(limit)),
            RestartReason::Killed => f.write_str("killed"),
            RestartReason::Protocol => f.write_str("protocol"),
        }
    }
}

/// How often, and why, one worker (or all of them) was replaced.
///
/// # Examples
///
/// ```
/// let pool = multiproc::Pool::builder().processes(1).max_tasks_per_child(1).build()?;
/// pool.apply(|x: u32| x, 1)?;
/// pool.apply(|x: u32| x, 2)?;
/// assert!(pool.stats().total().restarts.max_tasks >= 1);
/// # Ok::<(), multiproc::Error>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Restarts {
    /// Replaced after their quota of tasks.
    pub max_tasks: u64,
    /// Killed for running past the task timeout.
    pub timeout: u64,
    /// Died by a signal or an exit.
    pub crashed: u64,
    /// Replaced for exceeding `max_memory_per_child` after a task.
    pub memory_cap: u64,
    /// Failed an allocation under `memory_limit`.
    pub memory_limit: u64,
    /// Killed on request with their task.
    pub killed: u64,
    /// Killed for breaking the protocol.
    pub protocol: u64,
    /// The most recent reasons, oldest first (at most
    /// [`Restarts::RECENT`]).
    pub recent: Vec<RestartReason>,
}

impl Restarts {
    /// How many recent reasons are kept per worker.
    pub const RECENT: usize = 8;

    /// All restarts, whatever the reason.
    pub fn total(&self) -> u64 {
        [
            self.max_tasks,
            self.timeout,
            self.crashed,
            self.memory_cap,
            self.memory_limit,
            self.killed,
            self.protocol,
        ]
        .iter()
        .fold(0u64, |a, &b| a.saturating_add(b))
    }

    fn record(&mut self, why: RestartReason) {
        let n = match why {
            RestartReason::MaxTasks => &mut self.max_tasks,
            RestartReason::Timeout => &mut self.timeout,
            RestartReason::Crashed { .. } => &mut self.crashed,
            RestartReason::MemoryCap { .. } => &mut self.memory_cap,
            RestartReason::MemoryLimit { .. } => &mut self.memory_limit,
            RestartReason::Killed => &mut self.killed,
            RestartReason::Protocol => &mut self.protocol,
        };
        *n = n.saturating_add(1);
        if self.recent.len() == Self::RECENT {
            self.recent.remove(0);
        }
        self.recent.push(why);
    }

    fn add(&mut self, other: &Restarts) {
        self.max_tasks = self.max_tasks.saturating_add(other.max_tasks);
        self.timeout = self.timeout.saturating_add(other.timeout);
        self.crashed = self.crashed.saturating_add(other.crashed);
        self.memory_cap = self.memory_cap.saturating_add(other.memory_cap);
        self.memory_limit = self.memory_limit.saturating_add(other.memory_limit);
        self.killed = self.killed.saturating_add(other.killed);
        self.protocol = self.protocol.saturating_add(other.protocol);
    }
}

/// What one worker (a process slot, a thread, a rank) has done since the
/// pool started; a slot's numbers run on across the processes that replace
/// one another in it.
///
/// # Examples
///
/// ```
/// let pool = multiproc::ThreadPool::new(1)?;
/// pool.apply(|x: u32| x, 1)?;
/// let w = &pool.stats().workers[0];
/// assert_eq!(w.tasks, 1);
/// assert_eq!(w.pid, None); // a thread
/// # Ok::<(), multiproc::Error>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkerStats {
    /// The worker's process id now (`None` for threads, or between two
    /// processes).
    pub pid: Option<u32>,
    /// Tasks run to a result (a chunk of a `map` is one task).
    pub tasks: u64,
    /// Time spent running tasks.
    pub busy: Duration,
    /// Time the worker was ready but had no task.
    pub idle: Duration,
    /// Time this process spent decoding the worker's results and handing
    /// them over (waking the waiter, running callbacks), for results read by
    /// the pool's own threads (not by an `apply` caller that drove the
    /// worker itself). Zero for threads, whose results are not encoded.
    pub decoding: Duration,
    /// How long the task running now has been running.
    pub current_task_age: Option<Duration>,
    /// Replacements of this worker, and why.
    pub restarts: Restarts,
}

/// The insights of a whole pool: one [`WorkerStats`] per worker, and their
/// [`total`](PoolStats::total).
///
/// # Examples
///
/// ```
/// use multiproc::Pool;
///
/// fn square(x: u64) -> u64 { x * x }
///
/// let pool = Pool::new(2)?;
/// pool.chunksize(1).map(square, 0..20)?;
/// let stats = pool.stats();
/// assert_eq!(stats.workers.len(), 2);
/// assert_eq!(stats.total().tasks, 20);
/// println!("{stats}");
/// # Ok::<(), multiproc::Error>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PoolStats {
    /// One entry per worker slot, in the pool's order.
    pub workers: Vec<WorkerStats>,
    /// How long the pool has existed.
    pub uptime: Duration,
}

impl PoolStats {
    /// The sum over every worker; the current task age is the oldest.
    pub fn total(&self) -> WorkerStats {
        let mut t = WorkerStats::default();
        for w in &self.workers {
            t.tasks = t.tasks.saturating_add(w.tasks);
            t.busy = t.busy.saturating_add(w.busy);
            t.idle = t.idle.saturating_add(w.idle);
            t.decoding = t.decoding.saturating_add(w.decoding);
            t.current_task_age = t.current_task_age.max(w.current_task_age);
            t.restarts.add(&w.restarts);
        }
        t
    }
}

/// A duration as a table shows it: three significant figures or so.
struct Dur(Duration);

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.0.as_secs_f64();
        let text = if s >= 100.0 {
            format!("{s:.0}s")
        } else if s >= 1.0 {
            format!("{s:.2}s")
        } else if s >= 1e-3 {
            format!("{:.1}ms", s * 1e3)
        } else {
            format!("{:.0}us", s * 1e6)
        };
        f.pad(&text)
    }
}

struct Bytes(u64);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0 as f64;
        let text = if b >= (1u64 << 30) as f64 {
            format!("{:.1} GiB", b / (1u64 << 30) as f64)
        } else if b >= (1u64 << 20) as f64 {
            format!("{:.1} MiB", b / (1u64 << 20) as f64)
        } else {
            format!("{} KiB", self.0 / 1024)
        };
        f.pad(&text)
    }
}

impl fmt::Display for PoolStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:<7} {:>8} {:>9} {:>9} {:>9} {:>9} {:>8} {:>11}",
            "worker", "pid", "tasks", "busy", "idle", "decoding", "restarts", "running for"
        )?;
        let row = |f: &mut fmt::Formatter<'_>, name: &str, w: &WorkerStats| {
            let pid = w.pid.map_or("-".to_string(), |p| p.to_string());
            let age = w.current_task_age.map_or("-".to_string(), |a| Dur(a).to_string());
            writeln!(
                f,
                "{:<7} {:>8} {:>9} {:>9} {:>9} {:>9} {:>8} {:>11}",
                name,
                pid,
                w.tasks,
                Dur(w.busy),
                Dur(w.idle),
                Dur(w.decoding),
                w.restarts.total(),
                age
            )
        };
        for (i, w) in self.workers.iter().enumerate() {
            row(f, &i.to_string(), w)?;
        }
        row(f, "total", &self.total())?;
        for (i, w) in self.workers.iter().enumerate() {
            if w.restarts.recent.is_empty() {
                continue;
            }
            let recent: Vec<String> = w.restarts.recent.iter().map(|r| r.to_string()).collect();
            writeln!(f, "worker {i} restarts (latest last): {}", recent.join(", "))?;
        }
        write!(f, "uptime {}", Dur(self.uptime))
    }
}

/// The live counters of one worker slot, written by the thread that drives
/// it (a slot thread, a lent `apply` caller, a pool thread) and read by
/// `stats()` at any time, without a lock on the task path.
#[derive(Default)]
pub(crate) struct Meter {
    tasks: AtomicU64,
    busy_ns: AtomicU64,
    decoding_ns: AtomicU64,
    /// When the running task started, in ns since the epoch plus one; 0
    /// when none runs.
    running_since: AtomicU64,
    /// Ready time of the processes that have ended, in ns.
    alive_ns: AtomicU64,
    /// When the current worker became ready (as `running_since`).
    alive_since: AtomicU64,
    /// When this slot's last task ended (as `running_since`), kept by a pool
    /// thread for the start of its next task when it finds one at once: one
    /// clock read per task instead of two. 0 when there is none to reuse.
    last_end: AtomicU64,
    pid: AtomicU32,
    restarts: Mutex<Restarts>,
}

/// The meters of one pool.
pub(crate) struct Meters {
    epoch: Instant,
    slots: Vec<Meter>,
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Meters {
    pub(crate) fn new(workers: usize) -> Meters {
        Meters { epoch: Instant::now(), slots: (0..workers).map(|_| Meter::default()).collect() }
    }

    /// The stamp of `at` (never 0).
    fn stamp(&self, at: Instant) -> u64 {
        nanos(at.saturating_duration_since(self.epoch)).saturating_add(1)
    }

    fn meter(&self, slot: usize) -> Option<&Meter> {
        self.slots.get(slot)
    }

    /// A task started on `slot` at `at` (its predecessor's result arrived,
    /// or it was sent to an idle worker).
    pub(crate) fn started(&self, slot: usize, at: Instant) {
        if let Some(m) = self.meter(slot) {
            m.running_since.store(self.stamp(at), Ordering::Relaxed);
        }
    }

    /// A task of `slot` ended after `busy`; `next` says when the next one
    /// started, if one is waiting.
    pub(crate) fn finished(&self, slot: usize, busy: Duration, next: Option<Instant>) {
        if let Some(m) = self.meter(slot) {
            m.tasks.fetch_add(1, Ordering::Relaxed);
            m.busy_ns.fetch_add(nanos(busy), Ordering::Relaxed);
            m.running_since.store(next.map_or(0, |at| self.stamp(at)), Ordering::Relaxed);
        }
    }

    /// The task `slot` started (see [`Meters::started`]) ends now.
    pub(crate) fn finished_now(&self, slot: usize) {
        if let Some(m) = self.meter(slot) {
            let since = m.running_since.swap(0, Ordering::Relaxed);
            let now = self.stamp(Instant::now());
            m.last_end.store(now, Ordering::Relaxed);
            m.tasks.fetch_add(1, Ordering::Relaxed);
            m.busy_ns
                .fetch_add(if since == 0 { 0 } else { now - since.min(now) }, Ordering::Relaxed);
        }
    }

    /// A pool thread starts its next task straight after the last one
    /// ended: the task starts when that one ended (the moment in between,
    /// taking the task off the queue, counts as busy). Without such an end
    /// to reuse (the first task, or after [`Meters::paused`]), it starts now.
    pub(crate) fn started_next(&self, slot: usize) {
        if let Some(m) = self.meter(slot) {
            let at = match m.last_end.swap(0, Ordering::Relaxed) {
                0 => self.stamp(Instant::now()),
                end => end,
            };
            m.running_since.store(at, Ordering::Relaxed);
        }
    }

    /// A pool thread goes to sleep: its next task does not follow the last
    /// one at once.
    pub(crate) fn paused(&self, slot: usize) {
        if let Some(m) = self.meter(slot) {
            m.last_end.store(0, Ordering::Relaxed);
        }
    }

    /// Time spent decoding and delivering a result of `slot`.
    pub(crate) fn decoded(&self, slot: usize, took: Duration) {
        if let Some(m) = self.meter(slot) {
            m.decoding_ns.fetch_add(nanos(took), Ordering::Relaxed);
        }
    }

    /// `slot`'s worker `pid` is ready (`None`: a thread) at `at`.
    pub(crate) fn ready(&self, slot: usize, pid: Option<u32>, at: Instant) {
        if let Some(m) = self.meter(slot) {
            m.pid.store(pid.unwrap_or(0), Ordering::Relaxed);
            m.alive_since.store(self.stamp(at), Ordering::Relaxed);
        }
    }

    /// `slot`'s worker is gone; `why`, when it is replaced.
    pub(crate) fn ended(&self, slot: usize, why: Option<RestartReason>) {
        let Some(m) = self.meter(slot) else { return };
        let now = self.stamp(Instant::now());
        let since = m.alive_since.swap(0, Ordering::Relaxed);
        if since != 0 {
            m.alive_ns.fetch_add(now.saturating_sub(since), Ordering::Relaxed);
        }
        m.pid.store(0, Ordering::Relaxed);
        m.running_since.store(0, Ordering::Relaxed);
        if let Some(why) = why {
            m.restarts.lock().unwrap_or_else(|e| e.into_inner()).record(why);
        }
    }

    /// A snapshot.
    pub(crate) fn snapshot(&self) -> PoolStats {
        let now = self.stamp(Instant::now());
        let workers = self
            .slots
            .iter()
            .map(|m| {
                let ns = |a: &AtomicU64| Duration::from_nanos(a.load(Ordering::Relaxed));
                let busy = ns(&m.busy_ns);
                let since = m.alive_since.load(Ordering::Relaxed);
                let alive = m.alive_ns.load(Ordering::Relaxed).saturating_add(match since {
                    0 => 0,
                    s => now.saturating_sub(s),
                });
                let running = m.running_since.load(Ordering::Relaxed);
                let age = (running != 0).then(|| Duration::from_nanos(now.saturating_sub(running)));
                // The running task's time so far is busy, not idle.
                let busy_now = busy.saturating_add(age.unwrap_or_default());
                WorkerStats {
                    pid: match m.pid.load(Ordering::Relaxed) {
                        0 => None,
                        p => Some(p),
                    },
                    tasks: m.tasks.load(Ordering::Relaxed),
                    busy,
                    idle: Duration::from_nanos(alive).saturating_sub(busy_now),
                    decoding: ns(&m.decoding_ns),
                    current_task_age: age,
                    restarts: m.restarts.lock().unwrap_or_else(|e| e.into_inner()).clone(),
                }
            })
            .collect();
        PoolStats { workers, uptime: Duration::from_nanos(now.saturating_sub(1)) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_meter_counts_tasks_busy_and_idle_time_and_restarts() {
        let m = Meters::new(2);
        let t0 = Instant::now();
        m.ready(0, Some(42), t0);
        m.started(0, t0);
        m.finished(0, Duration::from_millis(3), None);
        m.decoded(0, Duration::from_micros(5));
        m.ended(0, Some(RestartReason::Crashed { signal: Some(9), exit_code: None }));
        m.ended(1, Some(RestartReason::MaxTasks));
        let s = m.snapshot();
        assert_eq!(s.workers[0].tasks, 1);
        assert_eq!(s.workers[0].busy, Duration::from_millis(3));
        assert_eq!(s.workers[0].pid, None);
        assert_eq!(s.workers[0].current_task_age, None);
        assert_eq!(s.total().restarts.total(), 2);
        assert_eq!(s.total().restarts.crashed, 1);
        assert!(s.to_string().contains("crashed (SIGKILL)"), "{s}");
        // Out-of-range slots are ignored, never indexed.
        m.finished(7, Duration::MAX, None);
        assert_eq!(m.snapshot().total().tasks, 1);
    }

    #[test]
    fn a_task_started_straight_after_another_starts_when_it_ended() {
        let m = Meters::new(1);
        m.ready(0, None, Instant::now());
        m.started_next(0);
        std::thread::sleep(Duration::from_millis(5));
        m.finished_now(0);
        let end = m.slots[0].last_end.load(Ordering::Relaxed);
        assert_ne!(end, 0);
        // At once: the next task's start is the last one's end, not a new clock read.
        m.started_next(0);
        assert_eq!(m.slots[0].running_since.load(Ordering::Relaxed), end);
        m.finished_now(0);
        // After a pause, the start is read from the clock again.
        m.paused(0);
        std::thread::sleep(Duration::from_millis(5));
        m.started_next(0);
        let start = m.slots[0].running_since.load(Ordering::Relaxed);
        assert!(start >= end + 5_000_000, "{start} vs {end}");
        let s = m.snapshot();
        assert_eq!(s.workers[0].tasks, 2);
        assert!(s.workers[0].busy >= Duration::from_millis(5), "{:?}", s.workers[0].busy);
    }

    #[test]
    fn restarts_keep_only_the_recent_reasons() {
        let mut r = Restarts::default();
        for _ in 0..20 {
            r.record(RestartReason::Timeout);
        }
        r.record(RestartReason::Protocol);
        assert_eq!(r.recent.len(), Restarts::RECENT);
        assert_eq!(r.recent.last(), Some(&RestartReason::Protocol));
        assert_eq!(r.total(), 21);
    }
}
