//! A pool's run state, written once for every backend.
//!
//! A pool is *running*, *closed* (takes no new tasks, runs what it was
//! given) or *terminated* (runs nothing more); independently it may be
//! *broken* (it cannot run tasks at all: an initializer failed, a worker is
//! another build, no worker could start), which fails every task with the
//! reason. A lazy `imap` iterator started while the pool ran may keep
//! submitting after `close()`: it takes a *hold*, and a closed pool keeps its
//! workers until every hold is released, or cut by an executor's shutdown.
//!
//! The state, the cut flag and the hold count share one atomic word, so a
//! worker deciding whether a closed pool is finished reads them in one
//! snapshot, and taking a hold cannot slip between a check and `close()`.
//!
//! # The rule engines follow
//!
//! A submission is checked with [`Lifecycle::refusal`] and put in the
//! engine's queue *atomically with respect to the engine draining that
//! queue* (both under the queue's lock), or the engine checks again after
//! enqueueing and drains itself. Either way a task admitted just before
//! `terminate()` or a break is failed by the drain rather than stranded in a
//! queue nobody reads.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use crate::error::{Error, ErrorKind, Result};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum RunState {
    Running,
    Closed,
    Terminated,
}

const STATE_MASK: u64 = 0b11;
const CLOSED: u64 = 1;
const TERMINATED: u64 = 2;
const HOLDS_CUT: u64 = 0b100;
const ONE_HOLD: u64 = 0b1000;

pub(crate) struct Lifecycle {
    /// State (2 bits), holds cut (1 bit), hold count (the rest).
    word: AtomicU64,
    broken: OnceLock<Error>,
}

fn state_of(word: u64) -> RunState {
    match word & STATE_MASK {
        0 => RunState::Running,
        CLOSED => RunState::Closed,
        _ => RunState::Terminated,
    }
}

/// True when `word` has holds that still keep a closed pool's workers.
fn held(word: u64) -> bool {
    word >= ONE_HOLD && word & HOLDS_CUT == 0
}

impl Lifecycle {
    pub(crate) fn new() -> Lifecycle {
        Lifecycle { word: AtomicU64::new(0), broken: OnceLock::new() }
    }

    pub(crate) fn state(&self) -> RunState {
        state_of(self.word.load(Ordering::SeqCst))
    }

    /// Why the pool cannot run tasks at all, once it cannot.
    pub(crate) fn broken(&self) -> Option<Error> {
        self.broken.get().cloned()
    }

    /// True once the pool runs nothing more: terminated or broken.
    pub(crate) fn is_stopped(&self) -> bool {
        self.state() == RunState::Terminated || self.broken.get().is_some()
    }

    /// Why a submission is refused, if it is. A `held` submission comes from
    /// an iterator that holds the pool open.
    pub(crate) fn refusal(&self, held_open: bool) -> Option<Error> {
        if let Some(e) = self.broken.get() {
            return Some(e.clone());
        }
        let word = self.word.load(Ordering::SeqCst);
        match state_of(word) {
            RunState::Running => None,
            RunState::Closed if held_open && held(word) => None,
            _ => Some(Error::not_running()),
        }
    }

    /// Fails unless the pool takes new tasks.
    pub(crate) fn check_running(&self) -> Result<()> {
        self.refusal(false).map_or(Ok(()), Err)
    }

    /// Running → closed; false when it was not running.
    pub(crate) fn close(&self) -> bool {
        self.word
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |w| {
                (state_of(w) == RunState::Running).then_some(w | CLOSED)
            })
            .is_ok()
    }

    pub(crate) fn terminate(&self) {
        self.word
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |w| {
                Some((w & !STATE_MASK) | TERMINATED)
            })
            .ok();
    }

    /// Marks the pool broken by `err`; the first reason stays.
    pub(crate) fn break_with(&self, err: Error) {
        let _ = self.broken.set(err);
    }

    /// Takes a hold if the pool is running (and not broken).
    pub(crate) fn hold(&self) -> bool {
        if self.broken.get().is_some() {
            return false;
        }
        self.word
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |w| {
                (state_of(w) == RunState::Running).then_some(w + ONE_HOLD)
            })
            .is_ok()
    }

    pub(crate) fn release_hold(&self) {
        self.word.fetch_sub(ONE_HOLD, Ordering::SeqCst);
    }

    /// Holds no longer keep a closed pool's workers (executor shutdown).
    pub(crate) fn cut_holds(&self) {
        self.word.fetch_or(HOLDS_CUT, Ordering::SeqCst);
    }

    /// True once a closed pool whose queue is empty (`queue_empty`, read
    /// under the queue's lock) has nothing left to run or wait for.
    pub(crate) fn finished(&self, queue_empty: bool) -> bool {
        let word = self.word.load(Ordering::SeqCst);
        state_of(word) == RunState::Closed && queue_empty && !held(word)
    }

    /// Fails when `join()` would wait for ever: the pool still runs, or an
    /// iterator holds it open.
    pub(crate) fn check_joinable(&self) -> Result<()> {
        let word = self.word.load(Ordering::SeqCst);
        match state_of(word) {
            RunState::Running => Err(Error::new(
                ErrorKind::PoolStillRunning,
                "join() was called on a running pool; call close() or terminate() first",
            )),
            RunState::Closed if held(word) => Err(Error::new(
                ErrorKind::PoolStillRunning,
                "join() would wait for an imap iterator started before close() that still has \
                 input; consume or drop it first",
            )),
            _ => Ok(()),
        }
    }
}

/// The error of a task that a terminated pool will not run.
pub(crate) fn cancelled() -> Error {
    Error::cancelled("this task", "its pool was terminated before the task finished")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_closed_pool_takes_held_submissions_until_the_holds_go() {
        let l = Lifecycle::new();
        assert!(l.hold());
        assert!(l.close());
        assert!(!l.close(), "closing twice changes nothing");
        assert!(l.refusal(true).is_none());
        assert!(l.refusal(false).is_some());
        assert!(!l.finished(true));
        assert!(l.check_joinable().is_err());
        l.release_hold();
        assert!(l.finished(true));
        assert!(!l.finished(false));
        assert!(l.refusal(true).is_some());
        assert!(l.check_joinable().is_ok());
    }

    #[test]
    fn cut_holds_keep_nothing() {
        let l = Lifecycle::new();
        assert!(l.hold());
        l.close();
        l.cut_holds();
        assert!(l.finished(true));
        assert!(l.refusal(true).is_some());
    }

    #[test]
    fn no_hold_is_taken_after_close_or_a_break() {
        let l = Lifecycle::new();
        l.close();
        assert!(!l.hold());
        let b = Lifecycle::new();
        b.break_with(Error::new(ErrorKind::InitializerFailed, "x"));
        assert!(!b.hold());
        assert!(b.is_stopped());
        assert_eq!(b.check_running().unwrap_err().kind(), ErrorKind::InitializerFailed);
    }

    #[test]
    fn terminate_wins_over_close_and_keeps_the_holds_count() {
        let l = Lifecycle::new();
        assert!(l.hold());
        l.terminate();
        assert_eq!(l.state(), RunState::Terminated);
        assert!(!l.close());
        l.release_hold();
        assert_eq!(l.state(), RunState::Terminated);
        assert!(l.check_joinable().is_ok());
    }
}
