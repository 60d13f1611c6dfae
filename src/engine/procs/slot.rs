//! A worker slot: one thread that owns a succession of worker processes.
//!
//! The thread starts a worker, feeds it jobs from the pool's queue, reads its
//! results, enforces the per-task timeout, and when the worker dies (or has
//! run its quota of tasks) reaps it and starts a replacement. It waits in one
//! `poll` on the worker's channel, its pidfd and the slot's eventfd, so it
//! notices a dead worker at once (end of file on the channel, or the pidfd,
//! when a process the task forked keeps the channel open), and never blocks
//! on a write.
//!
//! A worker is not trusted: every frame it sends is checked (see
//! [`wire::Accept`] and the limits in `wire`), and one that breaks a rule fails
//! only the task it was running; the worker is killed and replaced.

use std::collections::VecDeque;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::lend::{self, How, Lent};
use super::{memory, Args, Job, ProcEngine as Core};
use crate::engine::spin::Spin;
use crate::engine::{cancelled, Engine, RunState};
use crate::error::{Error, ErrorKind};
use crate::spawn::{self, Child};
use crate::stats::RestartReason;
use crate::sys::{self, Interest};
use crate::wire::{self, ring, Accept, Body, Call, Conn, Done, FromWorker, Init, OnChannel, Task};
use crate::worker::{EXIT_MEMORY_LIMIT, EXIT_MISMATCH, ROLE_POOL};

/// How many workers in a row may fail to start by their own doing (an exit,
/// a crash, a broken handshake) before the pool gives up on starting them.
const STARTUP_ATTEMPTS: u32 = 3;
/// Pauses between starts while workers are killed from outside before they
/// are ready: from the first to the last, doubling.
const RESTART_PAUSE: (Duration, Duration) = (Duration::from_millis(1), Duration::from_millis(100));

/// Signals a process gets from outside (a user, a supervisor, the OOM
/// killer) rather than by its own doing: a worker that dies of one while
/// starting says nothing about the program, so the pool keeps starting
/// workers. The others are raised by what the process itself did (a fault,
/// an abort, a write to a closed pipe, a resource limit it ran into).
fn from_outside(signal: i32) -> bool {
    ![
        libc::SIGSEGV,
        libc::SIGABRT,
        libc::SIGBUS,
        libc::SIGILL,
        libc::SIGFPE,
        libc::SIGSYS,
        libc::SIGTRAP,
        libc::SIGPIPE,
        libc::SIGXCPU,
        libc::SIGXFSZ,
    ]
    .contains(&signal)
}

/// How long a worker told to exit (or found dead) gets before SIGKILL.
const EXIT_GRACE: Duration = Duration::from_secs(2);
/// Without a pidfd, how often an idle slot asks whether its worker exited.
const NO_PIDFD_CHECK: Duration = Duration::from_millis(50);

static WORKER_NUMBER: AtomicUsize = AtomicUsize::new(1);

/// How many jobs a worker may hold, from how long its jobs have been taking:
/// one at a time for slow jobs (so an idle worker is never starved by a busy
/// one), many for fast ones (so round trips overlap and frames batch).
pub(crate) fn depth(avg: Option<Duration>) -> usize {
    match avg {
        None => 1,
        Some(d) if d < Duration::from_micros(200) => 64,
        Some(d) if d < Duration::from_millis(2) => 8,
        Some(d) if d < Duration::from_millis(20) => 2,
        Some(_) => 1,
    }
}

enum End {
    /// The pool is done with this slot.
    Exit,
    /// Start a replacement worker.
    Respawn,
    /// The worker failed before it was ready, by its own doing (`how` it
    /// did): after [`STARTUP_ATTEMPTS`] of these in a row the pool stops.
    StartFailed(String),
    /// The worker was killed from outside before it was ready: start
    /// another after a pause.
    StartKilled,
}

/// The slot thread's body.
pub(crate) fn run(core: Arc<Core>, index: usize) {
    let mut early_deaths = 0;
    let mut pause = RESTART_PAUSE.0;
    loop {
        if core.lifecycle().is_stopped() || core.finished() {
            return;
        }
        let name = format!("PoolWorker-{}", WORKER_NUMBER.fetch_add(1, Ordering::Relaxed));
        let spawned = match spawn::spawn(ROLE_POOL, &name, true) {
            Ok(s) => s,
            Err(e) => return core.break_with(e),
        };
        let mut worker = Worker {
            index,
            pid: spawned.child.id(),
            pidfd: sys::pidfd_open(spawned.child.id()).ok(),
            child: spawned.child,
            conn: Conn::with_accept(
                spawned.channel,
                Accept::Only(if core.config.init.is_some() {
                    wire::HANDSHAKE
                } else {
                    wire::HANDSHAKE_NO_INIT
                }),
            ),
            inflight: VecDeque::new(),
            taken: Vec::new(),
            head_since: Instant::now(),
            avg: None,
            sent: 0,
            ready: false,
            exit: (None, None),
            unflushed_ends: VecDeque::new(),
            lend_failed: false,
            why: None,
            rss_checked: None,
            results: None,
            channel_due: false,
            ring_mark: 0,
            record: Vec::new(),
        };
        event!(DEBUG, pid = worker.pid, slot = index; "worker {} ({name}) started", worker.pid);
        // A worker that is starting will be free soon: busy slots leave
        // queued jobs for it rather than pipelining them.
        core.slots[index].vacant.store(true, Ordering::SeqCst);
        let end = worker.serve(&core);
        event!(DEBUG, pid = worker.pid, slot = index, signal = worker.exit.0, exit_code = worker.exit.1, replaced = matches!(end, End::Respawn); "worker {} exited", worker.pid);
        let why = if matches!(end, End::Exit) { None } else { worker.why };
        core.meters.ended(index, why);
        // A lent channel belongs to this worker only.
        *core.slots[index].offer.lock_lent() = None;
        core.slots[index].idle.store(false, Ordering::SeqCst);
        core.slots[index].vacant.store(false, Ordering::SeqCst);
        // What it held was delivered, failed or sent back to the queue.
        core.slots[index].held.store(0, Ordering::SeqCst);
        match end {
            End::Exit => return,
            End::Respawn => {
                event!(INFO, pid = worker.pid, slot = index; "worker {} is replaced", worker.pid);
                early_deaths = 0;
                pause = RESTART_PAUSE.0;
            }
            End::StartKilled => {
                // Waits the whole pause, on the slot's eventfd so that
                // terminate() is not delayed; other wake-ups (submissions)
                // are drained and do not cut the pause short.
                let until = Instant::now() + pause;
                let signal = &core.slots[index];
                loop {
                    let left = until.saturating_duration_since(Instant::now());
                    if left.is_zero() || core.lifecycle().is_stopped() {
                        break;
                    }
                    let wake = Interest { fd: signal.wake.fd(), read: true, write: false };
                    if let Ok([r]) = sys::poll([wake], Some(left)) {
                        if r.read {
                            signal.wake.drain();
                        }
                    }
                }
                pause = (pause * 2).min(RESTART_PAUSE.1);
            }
            End::StartFailed(how) => {
                early_deaths += 1;
                if early_deaths >= STARTUP_ATTEMPTS {
                    let err = match core.config.init {
                        Some(_) => Error::new(
                            ErrorKind::InitializerFailed,
                            format!(
                                "{STARTUP_ATTEMPTS} workers in a row failed while running the \
                                 initializer (the last, worker {}, {how}); the pool runs no \
                                 tasks: fix the initializer",
                                worker.pid
                            ),
                        ),
                        None => Error::new(
                            ErrorKind::WorkerDied,
                            format!(
                                "{STARTUP_ATTEMPTS} workers in a row failed before the handshake \
                                 (the last, worker {}, {how}); the pool stopped starting \
                                 workers: look for what ends the program before `main` (its \
                                 static initializers, the environment)",
                                worker.pid
                            ),
                        ),
                    };
                    event!(ERROR, pid = worker.pid, error: display = err; "{err}");
                    return core.break_with(err.with_pid(worker.pid));
                }
            }
        }
    }
}

struct Worker {
    index: usize,
    pid: u32,
    /// Readable once the worker has exited (`None` if the kernel has no
    /// pidfds; end of file on the channel then tells).
    pidfd: Option<OwnedFd>,
    child: Child,
    conn: Conn,
    inflight: VecDeque<Job>,
    /// Jobs just taken from the queue, on their way to `inflight` (kept
    /// for its buffer).
    taken: Vec<Job>,
    /// When the job at the head of `inflight` started (as far as we can know:
    /// the worker runs jobs in order, so when the one before it finished).
    head_since: Instant,
    avg: Option<Duration>,
    sent: usize,
    ready: bool,
    /// How the worker ended (signal, exit code), once reaped.
    exit: (Option<i32>, Option<i32>),
    /// Where in the output stream the frames of the last jobs sent end,
    /// while not all of their bytes have reached the socket.
    unflushed_ends: VecDeque<u64>,
    /// Set when the worker's channel could not be duplicated for lending:
    /// it is then never offered (see `offer`).
    lend_failed: bool,
    /// Why this worker is (to be) replaced; a soft memory cap sets it while
    /// the worker still finishes what it holds.
    why: Option<RestartReason>,
    /// When the resident set was last compared with the soft cap.
    rss_checked: Option<Instant>,
    /// The worker's results ring (`wire::ring`), unless it could not be
    /// made or the worker declined it.
    results: Option<ring::Reader>,
    /// The head's result is due on the channel: the ring announced it, or
    /// the head is a lent call handed back (its caller read the channel).
    channel_due: bool,
    /// Where the ring's published records ended just before the channel was
    /// last read: what ended before it was published before anything that
    /// read brought.
    ring_mark: u64,
    /// The body of the last record read from the ring.
    record: Vec<u8>,
}

/// Where a result's outcomes are: in the channel's input or a ring record.
enum Outcomes<'a> {
    Channel(Body),
    Ring(&'a [u8]),
}

impl Worker {
    fn serve(&mut self, core: &Core) -> End {
        let signal = &core.slots[self.index];
        let init = core.config.init.as_ref();
        let mut fds = match init.map_or(Ok(Vec::new()), |i| dup_all(&i.fds)) {
            Ok(fds) => fds,
            Err(e) => {
                core.break_with(e.clone());
                return self.shut_down(Some(e));
            }
        };
        // A worker that cannot have a ring (no memory for it, no room for
        // its descriptors beside the initializer's) sends its results on
        // the channel.
        if fds.len() + 2 <= sys::MAX_FDS_PER_MESSAGE {
            if let Ok((reader, ring_fds)) = ring::Reader::new() {
                fds.extend(ring_fds);
                self.results = Some(reader);
            }
        }
        let init = init.map(|i| Call { entry: i.offset, chunk: &i.chunk[..] });
        let memory_limit = core.config.memory_limit.unwrap_or(0);
        let results = self.results.is_some();
        let _ = Init { fingerprint: core.config.fingerprint, memory_limit, results, init }
            .encode(self.conn.output(), fds);
        let quota = core.config.max_tasks_per_child;
        loop {
            if let Some(err) = core.lifecycle().broken() {
                return self.shut_down(Some(err));
            }
            if core.lifecycle().is_stopped() {
                return self.shut_down(Some(cancelled()));
            }
            if self.head_kill_requested() {
                return self.killed_on_request(core);
            }
            self.count_held(core);
            let retiring = quota.is_some_and(|q| self.sent >= q) || self.why.is_some();
            let pace = self.pace();
            let busy = !self.inflight.is_empty();
            let room = if self.ready && !retiring && !(busy && core.other_vacant(self.index)) {
                let mut room = depth(pace).saturating_sub(self.inflight.len());
                if let Some(q) = quota {
                    room = room.min(q - self.sent);
                }
                room
            } else {
                0
            };
            if room > 0 {
                let mut taken = std::mem::take(&mut self.taken);
                core.take(self.index, room, &mut taken);
                for job in taken.drain(..) {
                    signal.idle.store(false, Ordering::SeqCst);
                    signal.vacant.store(false, Ordering::SeqCst);
                    self.send(core, job);
                }
                self.taken = taken;
                // A job that could not be sent was failed, not held.
                self.count_held(core);
            }
            if self.ready && self.inflight.is_empty() {
                let idle_closed = core.finished();
                if retiring || idle_closed {
                    if retiring && self.why.is_none() {
                        self.why = Some(RestartReason::MaxTasks);
                    }
                    self.exit_gracefully();
                    return if retiring { End::Respawn } else { End::Exit };
                }
            }
            if self.conn.write_some().is_err() {
                return self.died(core, "while receiving a task");
            }
            if self.conn.has_output() {
                let written = self.conn.written();
                self.unflushed_ends.retain(|&end| end > written);
            } else {
                self.unflushed_ends.clear();
            }
            let room_left = self.ready && !retiring && depth(pace) > self.inflight.len();
            if room_left {
                signal.wants_work.store(true, Ordering::SeqCst);
                if core.has_work_for(self.index) {
                    signal.wants_work.store(false, Ordering::SeqCst);
                    continue;
                }
            }
            let lendable = room_left
                && self.inflight.is_empty()
                && !self.results.as_ref().is_some_and(|r| r.has_records())
                && !self.conn.has_output()
                && !self.conn.has_more()
                && quota.is_none()
                && core.config.max_memory_per_child.is_none()
                && self.pidfd.is_some()
                && !self.lend_failed
                && core.lifecycle().state() == RunState::Running;
            if lendable {
                if let Some(end) = self.offer(core) {
                    return end;
                }
                signal.wants_work.store(false, Ordering::SeqCst);
                continue;
            }
            let deadline = match (core.config.task_timeout, self.inflight.is_empty()) {
                (Some(t), false) => Some(self.head_since + t),
                _ => None,
            };
            let mut timeout = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if self.conn.has_more() {
                // Input is waiting that the last read left for later.
                timeout = Some(Duration::ZERO);
            } else if self.pidfd.is_none() {
                timeout = Some(timeout.map_or(NO_PIDFD_CHECK, |t| t.min(NO_PIDFD_CHECK)));
            }
            // A worker holding jobs will put a result in the ring soon:
            // looking at the ring for a moment costs memory reads, where
            // sleeping costs the worker a doorbell and this thread a wake-up.
            let soon = !self.inflight.is_empty() && timeout != Some(Duration::ZERO);
            if let Some(results) = self.results.as_ref().filter(|_| soon) {
                Spin::until(|| results.has_records());
            }
            if self.results.as_ref().is_some_and(|r| !r.sleep()) {
                // Results came in the ring since the last look.
                timeout = Some(Duration::ZERO);
            }
            // Without a pidfd (or a ring) the eventfd stands in, asking for
            // nothing.
            let exit_fd = self.pidfd.as_ref().map_or(signal.wake.fd(), |p| p.as_fd());
            let bell_fd = self.results.as_ref().map_or(signal.wake.fd(), |r| r.doorbell().fd());
            let polled = sys::poll(
                [
                    Interest { fd: self.conn.fd(), read: true, write: self.conn.has_output() },
                    Interest { fd: signal.wake.fd(), read: true, write: false },
                    Interest { fd: exit_fd, read: self.pidfd.is_some(), write: false },
                    Interest { fd: bell_fd, read: self.results.is_some(), write: false },
                ],
                timeout,
            );
            signal.wants_work.store(false, Ordering::SeqCst);
            let [chan, wake, exited, bell] = match polled {
                Ok(r) => r,
                Err(_) => return self.died(core, "while the pool polled it"),
            };
            if wake.read {
                signal.wake.drain();
            }
            let mut ringing = false;
            if let Some(results) = &self.results {
                results.awake();
                if bell.read {
                    results.doorbell().drain();
                }
                ringing = results.has_records();
            }
            let input = chan.read || chan.hangup || self.conn.has_more();
            if input || ringing {
                let eof = if input { self.read_channel() } else { Ok(false) };
                if let Some(end) = self.handle_frames(core) {
                    return end;
                }
                if !matches!(eof, Ok(false)) {
                    return self.died(core, "");
                }
            }
            // The worker can be gone though its channel stays open (a
            // process the task forked holds a copy): what it wrote before
            // dying is delivered by `died`. Without a pidfd (kernels before
            // 5.3, valgrind) ask, whenever the channel brought nothing.
            let gone = match self.pidfd {
                Some(_) => exited.read || exited.hangup,
                None => !(chan.read || chan.hangup) && sys::has_exited(self.pid),
            };
            if gone {
                return self.died(core, "");
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return self.timed_out(core);
            }
        }
    }

    /// Reads what the channel has, first marking where the ring's records
    /// end (see [`Worker::handle_frames`]).
    fn read_channel(&mut self) -> std::io::Result<bool> {
        if let Some(results) = &self.results {
            self.ring_mark = results.published();
        }
        self.conn.read_some()
    }

    /// Tells the other slots how many jobs this worker holds (see
    /// `ProcEngine::take`).
    fn count_held(&self, core: &Core) {
        core.slots[self.index].held.store(self.inflight.len(), Ordering::SeqCst);
    }

    fn send(&mut self, core: &Core, job: Job) {
        if let Err(e) = write_task(&mut self.conn, &job, false) {
            return job.fail(e, None);
        }
        if let Some(t) = &job.ticket {
            t.slot.store(self.index, Ordering::SeqCst);
        }
        self.unflushed_ends.push_back(self.conn.queued());
        if self.inflight.is_empty() {
            self.head_since = Instant::now();
            core.meters.started(self.index, self.head_since);
        }
        self.inflight.push_back(job);
        self.sent += 1;
    }

    /// Offers the idle worker to callers who wait (see `lend`) until this
    /// slot is woken, then takes it back; `Some` when the worker is done
    /// (a lent call handed back a failure).
    fn offer(&mut self, core: &Core) -> Option<End> {
        let signal = &core.slots[self.index];
        let offer = &signal.offer;
        let pidfd = self.pidfd.as_ref().expect("only offered with a pidfd");
        {
            let mut lent = offer.lock_lent();
            if lent.is_none() {
                let (Ok(chan), Ok(exit)) = (self.conn.fd().try_clone_to_owned(), pidfd.try_clone())
                else {
                    // Out of descriptors: this worker is served the usual
                    // way only (its channel and pidfd polled as ever).
                    self.lend_failed = true;
                    return None;
                };
                *lent = Some(Lent {
                    conn: Conn::with_accept(chan, Accept::Only(wire::RUNNING)),
                    pid: self.pid,
                    pidfd: exit,
                    task_timeout: core.config.task_timeout,
                });
            }
        }
        offer.state.store(lend::OFFERED, Ordering::SeqCst);
        // Offered: wait for a reason to take it back (a submission, a change
        // of the pool's state, a kill request, the worker's death).
        let polled = sys::poll(
            [
                Interest { fd: signal.wake.fd(), read: true, write: false },
                Interest { fd: pidfd.as_fd(), read: true, write: false },
            ],
            None,
        );
        if matches!(polled, Ok([wake, _]) if wake.read) {
            signal.wake.drain();
        }
        // The worker died while offered (or the poll failed): once it is
        // back, its death is handled as any other, not offered again.
        let exited = !matches!(polled, Ok([_, exit]) if !exit.read && !exit.hangup);
        if !offer.withdraw() {
            // A caller drives the worker: wait until it hands it back. A
            // terminated pool does not wait for the call: the worker is
            // killed, and the caller sees it die.
            while offer.state.load(Ordering::SeqCst) != lend::BUSY {
                if core.lifecycle().is_stopped() {
                    let _ = sys::kill(self.pid, sys::SIGKILL);
                }
                let wake = Interest { fd: signal.wake.fd(), read: true, write: false };
                if let Ok([r]) = sys::poll([wake], None) {
                    if r.read {
                        signal.wake.drain();
                    }
                }
            }
        }
        let Some(lend::Returned { job, written, how }) = offer.take_returned() else {
            return exited.then(|| self.died(core, ""));
        };
        if core.lifecycle().is_stopped() {
            // Terminated (or broken) while lent: the call fails as the jobs
            // this slot held do.
            self.inflight.push_back(job);
            return Some(self.shut_down(core.lifecycle().broken()));
        }
        if written {
            self.head_since = Instant::now();
            core.meters.started(self.index, self.head_since);
            self.inflight.push_back(job);
            self.channel_due = true;
        } else {
            core.requeue(std::iter::once(job));
        }
        Some(match how {
            How::Died => self.died(core, ""),
            How::TimedOut => self.timed_out(core),
            How::Protocol(what) => self.protocol_error(core, &what),
        })
    }

    /// How long jobs take here: the running average, or the time the
    /// current job has been running if that is longer (a fast worker that
    /// meets a slow job stops taking more at once).
    fn pace(&self) -> Option<Duration> {
        // Unknown until a job has finished here: one at a time until then.
        let avg = self.avg?;
        if self.inflight.is_empty() {
            return Some(avg);
        }
        Some(avg.max(self.head_since.elapsed()))
    }

    fn head_kill_requested(&self) -> bool {
        let head = self.inflight.front().and_then(|j| j.ticket.as_ref());
        head.is_some_and(|t| t.kill.load(Ordering::SeqCst))
    }

    fn killed_on_request(&mut self, core: &Core) -> End {
        self.why = Some(RestartReason::Killed);
        let _ = sys::kill(self.pid, sys::SIGKILL);
        self.reap(EXIT_GRACE);
        let (id, name) = self.inflight.front().map(|j| (j.id, j.name)).unwrap_or((0, "?"));
        event!(INFO, pid = self.pid, task = id, signal = sys::SIGKILL; "worker {} killed: its task {name} was cancelled while running", self.pid);
        let err = Error::cancelled(
            &format!("task {name}"),
            &format!("it was running, so its worker {} was killed and replaced", self.pid),
        )
        .with_pid(self.pid);
        self.fail_head_requeue_rest(core, err);
        End::Respawn
    }

    /// Handles every result in the ring and every complete frame buffered;
    /// `Some` when the worker is done.
    ///
    /// Ring records are taken in order until one announces that the next
    /// result is on the channel; then the channel's next DONE is that
    /// result, and only then do ring records resume (see `wire::ring`).
    ///
    /// Once the worker is ready, channel input that no record announced is
    /// a breach, blamed on the task that was running when it was written.
    /// A worker puts a result in the ring only when the parent has read
    /// the channel to its end, so that task is found thus: while channel
    /// input is waiting, only records published before the read that
    /// brought it are taken (earlier tasks' results, or the culprit's own
    /// announcement); then one more only if it announces the head's result;
    /// and if still nothing announced the input, the head is the culprit.
    fn handle_frames(&mut self, core: &Core) -> Option<End> {
        let signal = &core.slots[self.index];
        let mut finished = false;
        // When the results handled here arrived, as far as this thread can
        // tell: one clock reading for every result of one wake-up.
        let mut arrived = None;
        let mut announce_looked = false;
        loop {
            if let Some(results) = self.results.as_mut().filter(|_| !self.channel_due) {
                let take = match (self.conn.has_input(), self.inflight.front()) {
                    (false, _) => ring::Take::All,
                    (true, Some(head)) if announce_looked => ring::Take::AnnounceOf(head.id),
                    (true, _) => ring::Take::Before(self.ring_mark),
                };
                let mut record = std::mem::take(&mut self.record);
                let taken = results.next(take, &mut record);
                let broken = match taken {
                    Err(ref v) => Some(v.0.clone()),
                    Ok(None) => None,
                    Ok(Some(ring::Kind::Done)) => match Done::decode(&record) {
                        Ok(done) => {
                            finished = true;
                            let outcomes = Outcomes::Ring(done.outcomes);
                            self.deliver(core, done.id, outcomes, Vec::new(), &mut arrived)
                        }
                        Err(v) => Some(v.0),
                    },
                    Ok(Some(ring::Kind::OnChannel)) => match OnChannel::decode(&record) {
                        Ok(OnChannel { id }) => {
                            self.channel_due = true;
                            self.wrong_result(Some(id)).map(|what| format!("word of {what}"))
                        }
                        Err(v) => Some(v.0),
                    },
                };
                self.record = record;
                if let Some(what) = broken {
                    return Some(self.protocol_error(core, &what));
                }
                if matches!(taken, Ok(Some(_))) {
                    continue;
                }
                if take != ring::Take::All && !announce_looked {
                    announce_looked = true;
                    continue;
                }
                if self.ready && take != ring::Take::All {
                    return Some(self.unannounced_input(core));
                }
            }
            let (kind, body, fds) = match self.conn.try_next_frame() {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(v) => return Some(self.protocol_error(core, &v.0)),
            };
            announce_looked = false;
            // Large `Bytes` results view the result's file, not copies.
            let _share = crate::bytes::share_from(self.conn.body_file(&body));
            let msg = match FromWorker::decode(kind, self.conn.body(body.clone())) {
                Ok(msg) => msg,
                Err(v) => return Some(self.protocol_error(core, &v.0)),
            };
            match msg {
                FromWorker::Ready(ready) => {
                    self.ready = true;
                    if !ready.results {
                        self.results = None;
                    }
                    core.meters.ready(self.index, Some(self.pid), Instant::now());
                    self.conn.set_accept(Accept::Only(wire::RUNNING));
                    signal.idle.store(self.inflight.is_empty(), Ordering::SeqCst);
                    signal.vacant.store(self.inflight.is_empty(), Ordering::SeqCst);
                }
                FromWorker::Done(done) => {
                    let id = done.id;
                    if self.results.is_some() && !self.channel_due {
                        let what = format!(
                            "a result for task {id} on its channel that its results ring did not \
                             announce"
                        );
                        return Some(self.protocol_error(core, &what));
                    }
                    self.channel_due = false;
                    finished = true;
                    if let Some(what) =
                        self.deliver(core, id, Outcomes::Channel(body), fds, &mut arrived)
                    {
                        return Some(self.protocol_error(core, &what));
                    }
                }
                FromWorker::Mismatch(_) => {
                    let err = Error::build_mismatch(&format!("worker {}", self.pid));
                    core.break_with(err.clone());
                    return Some(self.shut_down(Some(err)));
                }
                FromWorker::InitFailed(failed) => {
                    let msg = failed.message;
                    event!(ERROR, pid = self.pid, error: display = msg; "initializer failed in worker {}: {msg}", self.pid);
                    let err = Error::new(
                        ErrorKind::InitializerFailed,
                        format!(
                            "initializer failed in worker {}: {msg}; the pool runs no tasks",
                            self.pid
                        ),
                    )
                    .with_pid(self.pid);
                    core.break_with(err.clone());
                    return Some(self.shut_down(Some(err)));
                }
            }
        }
        // A result is judged by its task id as soon as that has arrived, so
        // a bogus length cannot make the slot wait for the rest.
        if let Some((wire::DONE, start)) = self.conn.partial_head() {
            if let Some(id) = Done::id_of_partial(start) {
                if let Some(what) = self.wrong_result(Some(id)) {
                    return Some(self.protocol_error(core, &format!("the start of {what}")));
                }
            }
        }
        // Gives back the buffer of a large result once it is consumed.
        self.conn.compact();
        if let Some(at) = arrived {
            // The time decoding and delivering them took, all of them.
            core.meters.decoded(self.index, at.elapsed());
        }
        if finished {
            self.check_rss(core);
        }
        None
    }

    /// Fails the head for channel input that the ring did not announce,
    /// naming the input as well as it can.
    fn unannounced_input(&mut self, core: &Core) -> End {
        let what = match self.conn.try_next_frame() {
            Err(v) => v.0,
            Ok(Some((kind, body, _))) => match FromWorker::decode(kind, self.conn.body(body)) {
                Ok(FromWorker::Done(done)) => format!(
                    "a result for task {} on its channel that its results ring did not announce",
                    done.id
                ),
                Ok(_) => format!("an unexpected {} frame", wire::kind_name(kind)),
                Err(v) => v.0,
            },
            Ok(None) => match self.conn.partial_head() {
                Some((wire::DONE, start)) if Done::id_of_partial(start).is_some() => format!(
                    "the start of a result for task {} on its channel that its results ring did \
                     not announce",
                    Done::id_of_partial(start).unwrap_or_default()
                ),
                _ => "bytes on its channel that its results ring did not announce".to_string(),
            },
        };
        self.protocol_error(core, &what)
    }

    /// Completes the head job with its result, `outcomes` of task `id`;
    /// `Some` (and nothing completed) when the result is not the head's.
    fn deliver(
        &mut self,
        core: &Core,
        id: u64,
        outcomes: Outcomes<'_>,
        fds: Vec<OwnedFd>,
        arrived: &mut Option<Instant>,
    ) -> Option<String> {
        if let Some(what) = self.wrong_result(Some(id)) {
            return Some(what);
        }
        let signal = &core.slots[self.index];
        let job = self.inflight.pop_front().expect("checked by wrong_result");
        self.count_held(core);
        let now = *arrived.get_or_insert_with(Instant::now);
        let took = now - self.head_since;
        self.avg = Some(match self.avg {
            None => took,
            Some(a) => (a * 3 + took) / 4,
        });
        self.head_since = now;
        let next = (!self.inflight.is_empty()).then_some(now);
        core.meters.finished(self.index, took, next);
        if self.inflight.is_empty() {
            signal.idle.store(true, Ordering::SeqCst);
            signal.vacant.store(true, Ordering::SeqCst);
        }
        let outcomes = match outcomes {
            Outcomes::Ring(outcomes) => outcomes,
            Outcomes::Channel(body) => match Done::decode(self.conn.body(body)) {
                Ok(done) => done.outcomes,
                Err(_) => unreachable!("decoded by the caller"),
            },
        };
        job.done.call(Ok((outcomes, fds)), Some(self.pid));
        None
    }

    /// After a task: marks the worker for replacement when its resident
    /// set exceeds the soft cap (it finishes what it holds first). Looked at
    /// when the worker runs dry, and at most every [`memory::RSS_EVERY`]
    /// while it is kept busy.
    fn check_rss(&mut self, core: &Core) {
        let Some(cap) = core.config.max_memory_per_child else { return };
        let now = Instant::now();
        let due = self.rss_checked.is_none_or(|at| now - at >= memory::RSS_EVERY);
        if self.why.is_some() || !(self.inflight.is_empty() || due) {
            return;
        }
        self.rss_checked = Some(now);
        if let Some(rss) = memory::rss(self.pid).filter(|&rss| rss > cap) {
            self.why = Some(RestartReason::MemoryCap { rss, cap });
        }
    }

    /// What is wrong with a result for task `id`, if anything: the worker
    /// runs its tasks in order, so it must be the oldest one sent.
    fn wrong_result(&self, id: Option<u64>) -> Option<String> {
        wrong_result(id, self.inflight.front().map(|j| j.id))
    }

    fn protocol_error(&mut self, core: &Core, what: &str) -> End {
        self.why = Some(RestartReason::Protocol);
        let _ = sys::kill(self.pid, sys::SIGKILL);
        let _ = self.reap(Duration::ZERO);
        if !self.ready {
            core.requeue(std::mem::take(&mut self.inflight).into_iter());
            return End::StartFailed(format!("sent {what}"));
        }
        let err = Error::new(
            ErrorKind::Protocol,
            format!(
                "worker {} sent {what}; it broke the pool's protocol, so it was killed and \
                 replaced (a task that writes to the worker's channel causes this)",
                self.pid
            ),
        )
        .with_pid(self.pid);
        self.fail_head_requeue_rest(core, err);
        End::Respawn
    }

    /// Waits for the worker to exit (killing it after `grace`) and reaps it.
    /// Returns its signal and exit code.
    fn reap(&mut self, grace: Duration) -> (Option<i32>, Option<i32>) {
        use std::os::unix::process::ExitStatusExt;
        if !matches!(sys::wait_exit(self.pid, Some(grace)), Ok(true)) {
            let _ = sys::kill(self.pid, sys::SIGKILL);
        }
        let status = self.child.wait();
        spawn::unregister(self.pid);
        self.exit = match status {
            Ok(s) => (s.signal(), s.code()),
            Err(_) => (None, None),
        };
        self.exit
    }

    fn exit_gracefully(&mut self) {
        // End of file on its channel tells the worker to exit.
        sys::shutdown(self.conn.fd());
        self.reap(EXIT_GRACE);
    }

    /// Kills the worker and fails what it held with `err` (termination, a
    /// broken pool).
    fn shut_down(&mut self, err: Option<Error>) -> End {
        let _ = sys::kill(self.pid, sys::SIGKILL);
        self.reap(EXIT_GRACE);
        let err = err.unwrap_or_else(cancelled);
        for job in self.inflight.drain(..) {
            job.fail(err.clone(), Some(self.pid));
        }
        End::Exit
    }

    fn died(&mut self, core: &Core, doing: &str) -> End {
        // Results the worker wrote before it died are still in the socket:
        // deliver them first, so only the job it was running is blamed.
        loop {
            let read = self.read_channel();
            if let Some(end) = self.handle_frames(core) {
                return end;
            }
            if !matches!(read, Ok(false)) || !self.conn.has_more() {
                break;
            }
        }
        // Jobs whose frames never fully reached the socket were never read:
        // they go back to the queue instead of failing with the worker.
        let written = self.conn.written();
        let unread = self.unflushed_ends.iter().filter(|&&end| end > written).count();
        let unread = unread.min(self.inflight.len());
        let keep = self.inflight.len() - unread;
        core.requeue(self.inflight.split_off(keep).into_iter());
        let (signal, code) = self.reap(EXIT_GRACE);
        let limit = core.config.memory_limit.filter(|_| code == Some(EXIT_MEMORY_LIMIT));
        self.why = Some(match limit {
            Some(limit) => RestartReason::MemoryLimit { limit },
            None => RestartReason::Crashed { signal, exit_code: code },
        });
        if !self.ready {
            if code == Some(EXIT_MISMATCH) {
                let err = Error::build_mismatch(&format!("worker {}", self.pid));
                core.break_with(err.clone());
                return self.shut_down(Some(err));
            }
            return match (signal, code) {
                (Some(sig), _) if from_outside(sig) => End::StartKilled,
                (Some(sig), _) => End::StartFailed(format!("died of {}", sys::signal_name(sig))),
                _ if limit.is_some() => End::StartFailed(format!(
                    "ran out of memory under the pool's memory_limit of {} bytes",
                    limit.unwrap_or_default()
                )),
                (None, Some(code)) => End::StartFailed(format!("exited with code {code}")),
                (None, None) => End::StartFailed("vanished".to_string()),
            };
        }
        let what = match self.inflight.front() {
            Some(job) if doing.is_empty() => format!("while running task {}", job.name),
            _ if doing.is_empty() => "while idle".to_string(),
            _ => doing.to_string(),
        };
        let err = match (limit, self.inflight.front()) {
            (Some(limit), Some(job)) => memory::limit_error(limit, self.pid, job.name),
            _ => Error::worker_died(self.pid, signal, code, &what),
        };
        event!(WARN, pid = self.pid, signal = signal, exit_code = code; "{err}");
        self.fail_head_requeue_rest(core, err);
        End::Respawn
    }

    fn timed_out(&mut self, core: &Core) -> End {
        self.why = Some(RestartReason::Timeout);
        let _ = sys::kill(self.pid, sys::SIGKILL);
        self.reap(EXIT_GRACE);
        let limit = core.config.task_timeout.unwrap_or_default();
        let (id, name) = self.inflight.front().map(|j| (j.id, j.name)).unwrap_or((0, "?"));
        event!(WARN, pid = self.pid, task = id, signal = sys::SIGKILL, timeout_ms = limit.as_millis() as u64; "task {name} timed out after {limit:?}: its worker {} was killed", self.pid);
        let err = Error::timeout(format!(
            "task {name} did not finish within the pool's task_timeout of {limit:?}; its worker \
             {} was killed and replaced (raise task_timeout or split the task)",
            self.pid
        ))
        .with_pid(self.pid);
        self.fail_head_requeue_rest(core, err);
        End::Respawn
    }

    /// The worker runs its jobs in order, so only the head had started: it
    /// fails, and the rest go back to the queue for another worker.
    /// The worker is gone, for the reason in `why`: that restart is counted
    /// first, so a caller woken by the failure finds it in `stats()`.
    fn fail_head_requeue_rest(&mut self, core: &Core, err: Error) {
        core.meters.ended(self.index, self.why.take());
        if let Some(head) = self.inflight.pop_front() {
            head.fail(err, Some(self.pid));
        }
        core.requeue(std::mem::take(&mut self.inflight).into_iter());
    }
}

/// What is wrong with a result for task `id` from a worker running task
/// `running`, if anything: a worker runs its tasks in order, so a result
/// must be for the oldest task sent. Shared by the slot and a lent call.
pub(super) fn wrong_result(id: Option<u64>, running: Option<u64>) -> Option<String> {
    let Some(id) = id else {
        return Some("a result too short to name its task".to_string());
    };
    match running {
        None => Some(format!("a result for task {id} while it held no task")),
        Some(running) if running != id => {
            Some(format!("a result for task {id} while it was running task {running}"))
        }
        Some(_) => None,
    }
}

/// Puts `job`'s task frame in `conn`'s output, or nothing when it cannot
/// travel; `waited` when the writer is a caller that waits for the result
/// itself (see [`Task`]).
pub(super) fn write_task(conn: &mut Conn, job: &Job, waited: bool) -> crate::Result<()> {
    let fds = dup_all(&job.fds)?;
    match &job.args {
        Args::Chunk(chunk) => {
            let call = Call { entry: job.offset, chunk };
            Task { id: job.id, call, waited }.encode(conn.output(), fds)
        }
        Args::Frozen(body) => Task::encode_frozen(conn.output(), body, fds, waited),
    }
}

/// Duplicates of `fds` to send, keeping the originals for a resend.
fn dup_all(fds: &[std::os::fd::OwnedFd]) -> crate::Result<Vec<std::os::fd::OwnedFd>> {
    fds.iter()
        .map(|fd| fd.try_clone().map_err(|e| Error::io("could not duplicate a handle to send", e)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_deaths_from_outside_keep_the_pool_starting_workers() {
        for sig in [libc::SIGKILL, libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGQUIT] {
            assert!(from_outside(sig), "{}", sys::signal_name(sig));
        }
        for sig in [libc::SIGSEGV, libc::SIGABRT, libc::SIGBUS, libc::SIGILL, libc::SIGFPE] {
            assert!(!from_outside(sig), "{}", sys::signal_name(sig));
        }
    }

    #[test]
    fn depth_is_one_until_jobs_prove_fast() {
        assert_eq!(depth(None), 1);
        assert_eq!(depth(Some(Duration::from_micros(10))), 64);
        assert_eq!(depth(Some(Duration::from_millis(1))), 8);
        assert_eq!(depth(Some(Duration::from_secs(2))), 1);
    }
}
