//! A worker slot: one thread that owns a succession of worker processes.
//!
//! The thread starts a worker, feeds it jobs from the pool's queue, reads its
//! results, enforces the per-task timeout, and when the worker dies (or has
//! run its quota of tasks) reaps it and starts a replacement. It waits in one
//! `poll` on the worker's channel and the slot's eventfd, so it notices a dead
//! worker (end of file on the channel) at once, and never blocks on a write.

use std::collections::VecDeque;
use std::process::Child;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::core::{cancelled, Core, Job, RunState};
use crate::error::{Error, ErrorKind};
use crate::spawn;
use crate::sys::{self, Interest};
use crate::wire::{self, le, Conn};
use crate::worker::{EXIT_MISMATCH, ROLE_POOL};

/// How many times in a row a worker may die before it is ready before the
/// pool gives up on starting workers.
const STARTUP_ATTEMPTS: u32 = 3;
/// How long a worker told to exit (or found dead) gets before SIGKILL.
const EXIT_GRACE: Duration = Duration::from_secs(2);

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
    /// Start a replacement worker; `early` when it died before being ready.
    Respawn { early: bool },
}

/// The slot thread's body.
pub(crate) fn run(core: Arc<Core>, index: usize) {
    let mut early_deaths = 0;
    loop {
        {
            let q = core.lock();
            if q.state == RunState::Terminated || q.broken.is_some() || q.finished() {
                return;
            }
        }
        let name = format!("PoolWorker-{}", WORKER_NUMBER.fetch_add(1, Ordering::Relaxed));
        let spawned = match spawn::spawn(ROLE_POOL, &name, true) {
            Ok(s) => s,
            Err(e) => return core.break_pool(e),
        };
        let mut worker = Worker {
            index,
            pid: spawned.child.id(),
            child: spawned.child,
            conn: Conn::new(spawned.channel),
            inflight: VecDeque::new(),
            head_since: Instant::now(),
            avg: None,
            sent: 0,
            ready: false,
            exit: (None, None),
            unflushed_ends: VecDeque::new(),
        };
        // A worker that is starting will be free soon: busy slots leave
        // queued jobs for it rather than pipelining them.
        core.slots[index].vacant.store(true, Ordering::SeqCst);
        let end = worker.serve(&core);
        core.slots[index].idle.store(false, Ordering::SeqCst);
        core.slots[index].vacant.store(false, Ordering::SeqCst);
        match end {
            End::Exit => return,
            End::Respawn { early: false } => early_deaths = 0,
            End::Respawn { early: true } => {
                early_deaths += 1;
                if early_deaths >= STARTUP_ATTEMPTS {
                    let how = match worker.exit {
                        (Some(sig), _) => format!("was killed by {}", sys::signal_name(sig)),
                        (None, Some(code)) => format!("exited with code {code}"),
                        (None, None) => "vanished".to_string(),
                    };
                    return core.break_pool(Error::new(
                        ErrorKind::InitializerFailed,
                        format!(
                            "{STARTUP_ATTEMPTS} workers in a row died while starting up, before \
                             running a task (the last, worker {}, {how}); the pool stopped \
                             starting workers",
                            worker.pid
                        ),
                    ));
                }
            }
        }
    }
}

struct Worker {
    index: usize,
    pid: u32,
    child: Child,
    conn: Conn,
    inflight: VecDeque<Job>,
    /// When the job at the head of `inflight` started (as far as we can know:
    /// the worker runs jobs in order, so when the one before it finished).
    head_since: Instant,
    avg: Option<Duration>,
    sent: usize,
    ready: bool,
    /// How the worker ended (signal, exit code), once reaped.
    exit: (Option<i32>, Option<i32>),
    /// Where in the output buffer the frames of the last jobs sent end,
    /// while not all of their bytes have reached the socket.
    unflushed_ends: VecDeque<usize>,
}

impl Worker {
    fn serve(&mut self, core: &Core) -> End {
        let signal = &core.slots[self.index];
        let mut init = Vec::with_capacity(25);
        init.extend_from_slice(&core.config.fingerprint);
        match &core.config.init {
            Some(i) => {
                init.push(1);
                init.extend_from_slice(&i.offset.to_le_bytes());
                init.extend_from_slice(&i.chunk);
            }
            None => init.extend_from_slice(&[0; 9]),
        }
        let start = self.conn.begin_frame(wire::INIT);
        self.conn.out().extend_from_slice(&init);
        let _ = self.conn.end_frame(start);
        if let Some(i) = &core.config.init {
            match dup_all(&i.fds) {
                Ok(fds) => {
                    let _ = self.conn.attach_fds(start, fds);
                }
                Err(e) => {
                    core.break_pool(e.clone());
                    return self.shut_down(Some(e));
                }
            }
        }
        let quota = core.config.max_tasks_per_child;
        loop {
            let (state, broken) = {
                let q = core.lock();
                (q.state, q.broken.clone())
            };
            if let Some(err) = broken {
                return self.shut_down(Some(err));
            }
            if state == RunState::Terminated {
                return self.shut_down(Some(cancelled()));
            }
            if self.head_kill_requested() {
                return self.killed_on_request(core);
            }
            let retiring = quota.is_some_and(|q| self.sent >= q);
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
                for job in core.take(room) {
                    signal.idle.store(false, Ordering::SeqCst);
                    signal.vacant.store(false, Ordering::SeqCst);
                    self.send(job);
                }
            }
            if self.ready && self.inflight.is_empty() {
                let idle_closed = core.lock().finished();
                if retiring || idle_closed {
                    self.exit_gracefully();
                    return if retiring { End::Respawn { early: false } } else { End::Exit };
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
            let room_left = self.ready
                && !retiring
                && depth(pace) > self.inflight.len()
                && state != RunState::Terminated;
            if room_left {
                signal.wants_work.store(true, Ordering::SeqCst);
                if !core.lock().jobs.is_empty() {
                    signal.wants_work.store(false, Ordering::SeqCst);
                    continue;
                }
            }
            let deadline = match (core.config.task_timeout, self.inflight.is_empty()) {
                (Some(t), false) => Some(self.head_since + t),
                _ => None,
            };
            let timeout = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            let polled = sys::poll(
                [
                    Interest { fd: self.conn.fd(), read: true, write: self.conn.has_output() },
                    Interest { fd: signal.wake.fd(), read: true, write: false },
                ],
                timeout,
            );
            signal.wants_work.store(false, Ordering::SeqCst);
            let [chan, wake] = match polled {
                Ok(r) => r,
                Err(_) => return self.died(core, "while the pool polled it"),
            };
            if wake.read {
                signal.wake.drain();
            }
            if chan.read || chan.hangup {
                let eof = self.conn.read_some();
                if let Some(end) = self.handle_frames(core) {
                    return end;
                }
                if !matches!(eof, Ok(false)) {
                    return self.died(core, "");
                }
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return self.timed_out(core);
            }
        }
    }

    fn send(&mut self, job: Job) {
        let start = self.conn.begin_frame(wire::TASK);
        let out = self.conn.out();
        out.extend_from_slice(&job.id.to_le_bytes());
        out.extend_from_slice(&job.offset.to_le_bytes());
        out.extend_from_slice(&job.chunk);
        let attached = dup_all(&job.fds).and_then(|fds| self.conn.attach_fds(start, fds));
        if let Err(e) = self.conn.end_frame(start).and(attached) {
            self.conn.out().truncate(start);
            return job.fail(e, None);
        }
        if let Some(t) = &job.ticket {
            t.slot.store(self.index, Ordering::SeqCst);
        }
        self.unflushed_ends.push_back(self.conn.out().len());
        if self.inflight.is_empty() {
            self.head_since = Instant::now();
        }
        self.inflight.push_back(job);
        self.sent += 1;
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
        let _ = sys::kill(self.pid, sys::SIGKILL);
        self.reap(EXIT_GRACE);
        let id = self.inflight.front().map(|j| j.id).unwrap_or(0);
        let err = Error::new(
            ErrorKind::Cancelled,
            format!(
                "task {id} was cancelled while running: its worker {} was killed and replaced",
                self.pid
            ),
        )
        .with_pid(self.pid);
        self.fail_head_requeue_rest(core, err);
        End::Respawn { early: false }
    }

    /// Handles every complete frame buffered; `Some` when the worker is done.
    fn handle_frames(&mut self, core: &Core) -> Option<End> {
        let signal = &core.slots[self.index];
        while let Some((kind, body, fds)) = self.conn.next_frame() {
            let b = self.conn.body(body);
            match kind {
                wire::READY => {
                    self.ready = true;
                    signal.idle.store(self.inflight.is_empty(), Ordering::SeqCst);
                    signal.vacant.store(self.inflight.is_empty(), Ordering::SeqCst);
                }
                wire::DONE => {
                    let id = le::<8>(b, 0).map(u64::from_le_bytes);
                    let Some(job) = self.inflight.pop_front() else {
                        return Some(self.protocol_error(core, "a result for no task"));
                    };
                    if id != Some(job.id) {
                        self.inflight.push_front(job);
                        return Some(self.protocol_error(core, "a result out of order"));
                    }
                    let now = Instant::now();
                    let took = now - self.head_since;
                    self.avg = Some(match self.avg {
                        None => took,
                        Some(a) => (a * 3 + took) / 4,
                    });
                    self.head_since = now;
                    if self.inflight.is_empty() {
                        signal.idle.store(true, Ordering::SeqCst);
                        signal.vacant.store(true, Ordering::SeqCst);
                    }
                    (job.done)(Ok((&b[8..], fds)), Some(self.pid));
                }
                wire::MISMATCH => {
                    let err = Error::new(
                        ErrorKind::BuildMismatch,
                        format!(
                            "worker {} is not the same build as this process, so it cannot \
                             run its tasks; rebuild and restart the program",
                            self.pid
                        ),
                    );
                    core.break_pool(err.clone());
                    return Some(self.shut_down(Some(err)));
                }
                wire::INIT_FAILED => {
                    let msg = String::from_utf8_lossy(b).into_owned();
                    let err = Error::new(
                        ErrorKind::InitializerFailed,
                        format!(
                            "initializer failed in worker {}: {msg}; the pool runs no tasks",
                            self.pid
                        ),
                    )
                    .with_pid(self.pid);
                    core.break_pool(err.clone());
                    return Some(self.shut_down(Some(err)));
                }
                _ => return Some(self.protocol_error(core, "an unknown frame")),
            }
        }
        None
    }

    fn protocol_error(&mut self, core: &Core, what: &str) -> End {
        let _ = sys::kill(self.pid, sys::SIGKILL);
        let _ = self.reap(Duration::ZERO);
        let err = Error::new(
            ErrorKind::Protocol,
            format!("worker {} sent {what}; it was killed and replaced", self.pid),
        )
        .with_pid(self.pid);
        self.fail_head_requeue_rest(core, err);
        End::Respawn { early: !self.ready }
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
        let _ = self.conn.read_some();
        if let Some(end) = self.handle_frames(core) {
            return end;
        }
        // Jobs whose frames never fully reached the socket were never read:
        // they go back to the queue instead of failing with the worker.
        let written = self.conn.written();
        let unread = self.unflushed_ends.iter().filter(|&&end| end > written).count();
        let unread = unread.min(self.inflight.len());
        let keep = self.inflight.len() - unread;
        core.requeue(self.inflight.split_off(keep).into_iter());
        let (signal, code) = self.reap(EXIT_GRACE);
        if !self.ready {
            if code == Some(EXIT_MISMATCH) {
                let err = Error::new(
                    ErrorKind::BuildMismatch,
                    format!("worker {} is not the same build as this process", self.pid),
                );
                core.break_pool(err.clone());
                return self.shut_down(Some(err));
            }
            return End::Respawn { early: true };
        }
        let what = match self.inflight.front() {
            Some(job) if doing.is_empty() => format!("while running task {}", job.id),
            _ if doing.is_empty() => "while idle".to_string(),
            _ => doing.to_string(),
        };
        let err = Error::worker_died(self.pid, signal, code, &what);
        self.fail_head_requeue_rest(core, err);
        End::Respawn { early: false }
    }

    fn timed_out(&mut self, core: &Core) -> End {
        let _ = sys::kill(self.pid, sys::SIGKILL);
        self.reap(EXIT_GRACE);
        let limit = core.config.task_timeout.unwrap_or_default();
        let id = self.inflight.front().map(|j| j.id).unwrap_or(0);
        let err = Error::timeout(format!(
            "task {id} did not finish within {limit:?}; its worker {} was killed and replaced",
            self.pid
        ))
        .with_pid(self.pid);
        self.fail_head_requeue_rest(core, err);
        End::Respawn { early: false }
    }

    /// The worker runs its jobs in order, so only the head had started: it
    /// fails, and the rest go back to the queue for another worker.
    fn fail_head_requeue_rest(&mut self, core: &Core, err: Error) {
        if let Some(head) = self.inflight.pop_front() {
            head.fail(err, Some(self.pid));
        }
        core.requeue(std::mem::take(&mut self.inflight).into_iter());
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
    fn depth_is_one_until_jobs_prove_fast() {
        assert_eq!(depth(None), 1);
        assert_eq!(depth(Some(Duration::from_micros(10))), 64);
        assert_eq!(depth(Some(Duration::from_millis(1))), 8);
        assert_eq!(depth(Some(Duration::from_secs(2))), 1);
    }
}
