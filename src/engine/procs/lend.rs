//! A caller who waits for its result drives an idle worker itself.
//!
//! The usual path of a task crosses two thread hand-offs in the parent: the
//! submitter wakes the slot thread, which writes the task; the slot thread
//! reads the result and wakes the submitter. For `apply`, whose caller only
//! waits, both are waste: the caller can write the task and read the result
//! on its own thread, so one call costs what a socket round trip costs.
//!
//! # The protocol (leader/follower)
//!
//! A slot whose worker is ready and holds nothing, with nothing queued,
//! *offers* it: it parks the worker's channel (a duplicate descriptor, with
//! its own buffers) here and waits only on its eventfd and the worker's
//! pidfd, no longer reading the channel. [`Offer::state`] then moves:
//!
//! ```text
//!            slot offers              caller takes
//!   BUSY ──────────────────▶ OFFERED ──────────────▶ LENT
//!    ▲ ◀──────────────────── │  ▲ ◀───────────────── │ │
//!    │  slot wakes (CAS)        caller done (CAS)     │ │ slot wakes: RECALL
//!    │                                                ▼ │
//!    └──────── caller done: BUSY + wake ◀──────── RECALL
//! ```
//!
//! Each move is one compare-and-swap, so exactly one thread drives the
//! worker at any time. In the steady state of back-to-back `apply` calls
//! the slot thread never wakes: each caller takes the worker, runs its task
//! and offers it back.
//!
//! A call that goes wrong — the worker dies, breaks the protocol or runs
//! past the task timeout — is handed back to the slot thread as an ordinary
//! job with what happened ([`Returned`]); the slot then does what it does for
//! any job (reap, blame, replace, requeue what never reached the worker), so
//! failures are handled once, in `slot`. `terminate()` wakes the slot, which
//! finds the worker lent, kills it, and the caller sees the death.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::slot::wrong_result;
use super::Job;
use crate::engine::spin::Spin;
use crate::sys::{self, Interest};
use crate::wire::{self, Conn, Done, FromWorker};

pub(super) const BUSY: u8 = 0;
pub(super) const OFFERED: u8 = 1;
pub(super) const LENT: u8 = 2;
pub(super) const RECALL: u8 = 3;

/// What a lent worker's caller needs to drive it.
pub(super) struct Lent {
    pub(super) conn: Conn,
    pub(super) pid: u32,
    pub(super) pidfd: OwnedFd,
    pub(super) task_timeout: Option<Duration>,
}

/// How a lent call that went wrong ended.
pub(super) enum How {
    /// The worker died (or its channel failed).
    Died,
    TimedOut,
    /// The worker broke the protocol: what it sent.
    Protocol(String),
}

/// A lent call handed back to the slot: the job, whether its frame wholly
/// reached the worker (else it never ran and is requeued), and how it ended.
pub(super) struct Returned {
    pub(super) job: Job,
    pub(super) written: bool,
    pub(super) how: How,
}

/// One slot's offer of its idle worker.
pub(crate) struct Offer {
    pub(super) state: AtomicU8,
    pub(super) lent: Mutex<Option<Lent>>,
    pub(super) returned: Mutex<Option<Returned>>,
}

impl Offer {
    pub(super) fn new() -> Offer {
        Offer { state: AtomicU8::new(BUSY), lent: Mutex::new(None), returned: Mutex::new(None) }
    }

    fn cas(&self, from: u8, to: u8) -> bool {
        self.state.compare_exchange(from, to, Ordering::SeqCst, Ordering::SeqCst).is_ok()
    }

    /// Takes the worker if it is offered.
    pub(super) fn take(&self) -> bool {
        self.state.load(Ordering::Relaxed) == OFFERED && self.cas(OFFERED, LENT)
    }

    /// The slot wants its worker back: true when it has it at once (it was
    /// only offered), false when a caller holds it (the caller hands it back
    /// and wakes the slot).
    pub(super) fn withdraw(&self) -> bool {
        loop {
            match self.state.load(Ordering::SeqCst) {
                OFFERED if self.cas(OFFERED, BUSY) => return true,
                LENT if self.cas(LENT, RECALL) => return false,
                RECALL => return false,
                BUSY => return true,
                _ => continue,
            }
        }
    }

    /// The caller is done with the worker: offered again, unless the slot
    /// recalled it meanwhile (then true: the slot must be woken).
    pub(super) fn give_back(&self) -> bool {
        if self.cas(LENT, OFFERED) {
            return false;
        }
        self.state.store(BUSY, Ordering::SeqCst);
        true
    }

    /// The caller's call went wrong: the worker goes back to the slot, which
    /// must be woken to deal with what was handed back.
    pub(super) fn give_back_failed(&self) {
        self.state.store(BUSY, Ordering::SeqCst);
    }

    pub(super) fn lock_lent(&self) -> std::sync::MutexGuard<'_, Option<Lent>> {
        self.lent.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn hand_back(&self, returned: Returned) {
        *self.returned.lock().unwrap_or_else(|e| e.into_inner()) = Some(returned);
    }

    pub(super) fn take_returned(&self) -> Option<Returned> {
        self.returned.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// Runs `job` on the lent worker, on the caller's thread; `frame` puts its
/// task frame in the output (or fails, leaving none). `Ok(())` when the job
/// is complete (its `done` has run); otherwise what went wrong, with the
/// job, for the slot.
// The error hands the job itself back (moved, not copied on the hot path):
// boxing it would cost an allocation per lent call.
#[allow(clippy::result_large_err)]
pub(super) fn run(
    lent: &mut Lent,
    job: Job,
    frame: impl FnOnce(&mut Conn, &Job) -> crate::Result<()>,
) -> Result<(), Returned> {
    let conn = &mut lent.conn;
    let failed = |job, written, how| Err(Returned { job, written, how });
    if let Err(e) = frame(conn, &job) {
        // The arguments cannot travel (their descriptors could not be
        // duplicated): this job fails; the worker is fine.
        job.fail(e, None);
        return Ok(());
    }
    let deadline = lent.task_timeout.map(|t| Instant::now() + t);
    // Set once the worker is gone; what it wrote before is still read.
    let mut ended = false;
    // The result of a small task comes back within microseconds: look for
    // it without sleeping for a moment first (`engine::spin`).
    let mut spin = Spin::new();
    loop {
        if !ended && conn.write_some().is_err() {
            ended = true;
        }
        match conn.try_next_frame() {
            Ok(Some((kind, body, fds))) => {
                // Large `Bytes` results view the result's file, not copies.
                let _share = crate::bytes::share_from(conn.body_file(&body));
                let done = match FromWorker::decode(kind, conn.body(body)) {
                    Ok(FromWorker::Done(done)) => done,
                    // After READY a worker sends only results.
                    Ok(_) => return failed(job, true, How::Protocol(wire::kind_name(kind))),
                    Err(v) => return failed(job, true, How::Protocol(v.0)),
                };
                if let Some(what) = wrong_result(Some(done.id), Some(job.id)) {
                    return failed(job, true, How::Protocol(what));
                }
                job.done.call(Ok((done.outcomes, fds)), Some(lent.pid));
                conn.compact();
                return Ok(());
            }
            Ok(None) => {}
            Err(v) => return failed(job, true, How::Protocol(v.0)),
        }
        // A result is judged by its task id as soon as that has arrived, so
        // a bogus length cannot make the caller wait for the rest.
        if let Some((wire::DONE, start)) = conn.partial_head() {
            if let Some(id) = Done::id_of_partial(start) {
                if let Some(what) = wrong_result(Some(id), Some(job.id)) {
                    return failed(job, true, How::Protocol(format!("the start of {what}")));
                }
            }
        }
        if ended {
            return failed(job, !conn.has_output(), How::Died);
        }
        let mut timeout = match deadline {
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return failed(job, true, How::TimedOut);
                }
                Some(left)
            }
            None => None,
        };
        if conn.has_more() {
            timeout = Some(Duration::ZERO);
        } else if !conn.has_output() && spin.again() {
            ended |= !matches!(conn.read_some(), Ok(false));
            continue;
        }
        let polled = sys::poll(
            [
                Interest { fd: conn.fd(), read: true, write: conn.has_output() },
                Interest { fd: lent.pidfd.as_fd(), read: true, write: false },
            ],
            timeout,
        );
        let Ok([chan, exited]) = polled else {
            return failed(job, !conn.has_output(), How::Died);
        };
        if chan.read || chan.hangup || conn.has_more() {
            ended |= !matches!(conn.read_some(), Ok(false));
        }
        if exited.read || exited.hangup {
            // Gone, though a process it forked may hold the channel open:
            // what it wrote is in the socket already.
            while matches!(conn.read_some(), Ok(false)) && conn.has_more() {}
            ended = true;
        }
    }
}
