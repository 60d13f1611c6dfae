//! Looking again for a moment before going to sleep.
//!
//! A thread that sleeps in the kernel (a blocking read, `poll`, a condvar)
//! must be woken by the other side, and on this kind of machine a wake-up
//! costs 5 to 50 µs: far more than the work of a small task and its two
//! messages. So the waits on the hot path look again for a short while
//! first, and only then sleep:
//!
//! - a caller of `Pool::apply` that has written its task to a lent worker
//!   looks for the result (`procs::lend`), and sends it as a CALL frame:
//!   the worker, having answered, looks for its next task (`worker`);
//! - a thread of a `ThreadPool` that finds the queue empty looks at it
//!   again (`threads`), and a caller of `ThreadPool::apply` looks at its
//!   result again (`pool::result`);
//! - a slot thread whose worker holds jobs looks at the worker's results
//!   ring (`procs::slot`): a look is a memory read, and a result found
//!   spares the worker its doorbell and the slot its wake-up (measured:
//!   `apply_async` ×100k about 12% faster, median of 6 pairs).
//!
//! A run of back-to-back `apply` calls then never sleeps on either side:
//! the round trip costs the system calls, not two wake-ups.
//!
//! Waits where the other side is busy anyway do not spin: a worker fed by
//! its slot thread, a caller collecting the results of many tasks
//! (`AsyncResult::get`). There the spinner would hold a core that the
//! threads making its results need (measured, when a look was a `recvmsg`:
//! `apply_async` ×100k ran about 1.3× slower with a slot thread's spin).
//!
//! The cost is bounded: at most [`WINDOW`] of one core per wait that does
//! end in a sleep. After a few quick looks a spinner yields between looks,
//! and stops at the first yield that gave its core to another thread: that
//! core is wanted, and the spinner would delay the work it waits for.

use std::time::{Duration, Instant};

/// How long a waiter looks again before it sleeps: a few wake-ups' worth.
pub(crate) const WINDOW: Duration = Duration::from_micros(50);

/// Looks that only pause the processor (`spin_loop`, 2, 4, 8, 16 times),
/// before looks that yield the core.
const QUICK: u32 = 4;

/// A yield that takes longer than this ran another thread.
const CONTENDED: Duration = Duration::from_micros(5);

/// One wait's looking-again: call [`Spin::again`] after each failed look.
pub(crate) struct Spin {
    start: Option<Instant>,
    looks: u32,
}

impl Spin {
    pub(crate) const fn new() -> Spin {
        Spin { start: None, looks: 0 }
    }

    /// After a look that found nothing: pauses, and returns true while the
    /// window lasts (look again), false once it is over (go to sleep).
    /// The clock is read once per call, from the first call on, so a wait
    /// whose first look succeeds never reads it.
    pub(crate) fn again(&mut self) -> bool {
        let now = Instant::now();
        let start = *self.start.get_or_insert(now);
        if now - start >= WINDOW {
            return false;
        }
        self.looks += 1;
        if self.looks <= QUICK {
            for _ in 0..1u32 << self.looks {
                std::hint::spin_loop();
            }
            return true;
        }
        std::thread::yield_now();
        // A yield that gave the core away for a while means another thread
        // was waiting to run on it: this core is wanted, so stop looking
        // and sleep (a spinner on a busy machine delays the very work it
        // waits for, and a pause that does not yield is worse: it keeps the
        // core from the other side for a whole time slice).
        now.elapsed() < CONTENDED
    }

    /// The waiter is going to look for a cheap condition for up to
    /// `WINDOW`: call `look` until it returns true (true) or the window is
    /// over (false).
    pub(crate) fn until(mut look: impl FnMut() -> bool) -> bool {
        let mut spin = Spin::new();
        loop {
            if look() {
                return true;
            }
            if !spin.again() {
                return false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spin_ends_after_its_window_and_a_success_ends_it_at_once() {
        let t = Instant::now();
        assert!(!Spin::until(|| false));
        let took = t.elapsed();
        // It may end early, at a yield that gave the core away (a busy
        // machine), but never later than a yield past the window.
        // Generous: a yield on a loaded machine may take a scheduling slice.
        assert!(took < Duration::from_millis(500), "spun for {took:?}");
        let mut looks = 0;
        assert!(Spin::until(|| {
            looks += 1;
            looks == 3
        }));
        assert_eq!(looks, 3);
    }
}
