//! Locks, semaphores, events, conditions and barriers that work across
//! processes: each lives in shared memory and travels to a `Process` or a
//! pool task as an argument.

mod barrier;
mod condition;
mod event;
mod lock;
mod semaphore;

pub use barrier::Barrier;
pub use condition::{Condition, ConditionGuard};
pub use event::Event;
pub use lock::{Lock, LockGuard, RLock};
pub use semaphore::{BoundedSemaphore, Semaphore, SemaphoreGuard};

use std::time::{Duration, Instant};

/// What is left of `timeout` at `start`; `None` stays unbounded.
fn remaining(deadline: Option<Instant>) -> Option<Duration> {
    deadline.map(|d| d.saturating_duration_since(Instant::now()))
}
