//! Memory caps on worker processes: a soft cap on the resident set, checked
//! by the pool after tasks, and a hard cap on the address space, set in the
//! worker itself.
//!
//! # The hard cap, and how a death is blamed on it
//!
//! The worker sets `RLIMIT_AS` on itself before its initializer runs. A task
//! that then asks for more fails its allocation; Rust's allocation-failure
//! path prints "memory allocation of N bytes failed" and calls `abort()`. The
//! worker has a `SIGABRT` handler (async-signal-safe: it reads `errno` and
//! calls `_exit`) that tells that abort from the others: the failed
//! `malloc`/`mmap` left `errno` at `ENOMEM`, and nothing on the path from
//! there to `abort()` changes it when it succeeds. The handler then exits with
//! [`EXIT_MEMORY_LIMIT`], which the pool reads as "out of memory under the
//! cap" and reports as `ErrorKind::MemoryLimit` naming the cap.
//!
//! Caught: any allocation through the global allocator (the standard
//! collections, `Box`, `String`, serde buffers) that fails under the cap, in
//! a task or in the worker's own reading of a task too big for it.
//!
//! Not caught, reported as the crash it is (`WorkerDied`): an abort with
//! `errno` at another value (an abort of the task's own, a double panic, or
//! an allocation failure whose message could not be written because standard
//! error is closed); memory the kernel refuses later rather than at the
//! allocation (the OOM killer's `SIGKILL` under overcommit, which this cap
//! prevents only for the address space it bounds); a stack overflow
//! (`SIGSEGV`). A task that exits by itself with code 123 is taken for one
//! that ran out of memory. `RLIMIT_AS` bounds virtual memory, so each thread
//! a task starts (its stack, its allocator arena) counts against it too.

use std::time::Duration;

use crate::error::{Error, ErrorKind, Result};
use crate::worker::EXIT_MEMORY_LIMIT;

/// The smallest hard cap a worker can start under.
pub(crate) const MIN_LIMIT: u64 = 64 << 20;

/// Checks the caps a builder was given.
pub(crate) fn check_caps(soft: Option<u64>, hard: Option<u64>) -> Result<()> {
    let invalid = |msg: String| Err(Error::new(ErrorKind::InvalidArgument, msg));
    if soft == Some(0) {
        return invalid("max_memory_per_child must be more than 0 bytes".into());
    }
    if let Some(limit) = hard {
        if limit < MIN_LIMIT {
            return invalid(format!(
                "memory_limit must be at least {MIN_LIMIT} bytes (64 MiB), the least a worker \
                 starts in (got {limit})"
            ));
        }
        let max = rustix::process::getrlimit(rustix::process::Resource::As).maximum;
        if max.is_some_and(|m| limit > m) {
            return invalid(format!(
                "memory_limit {limit} is above this process's hard RLIMIT_AS ({} bytes), which \
                 a worker cannot raise",
                max.unwrap_or_default()
            ));
        }
    }
    Ok(())
}

/// The resident set of process `pid`, in bytes, as the kernel counts it;
/// `None` when it cannot be read (the process is gone).
pub(crate) fn rss(pid: u32) -> Option<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_ascii_whitespace().nth(1)?.parse().ok()?;
    Some(pages.saturating_mul(crate::sys::page_size() as u64))
}

/// The error of a task whose worker ran out of memory under `limit`.
pub(crate) fn limit_error(limit: u64, pid: u32, task: &str) -> Error {
    Error::new(
        ErrorKind::MemoryLimit,
        format!(
            "task {task} failed to allocate memory under the pool's memory_limit of {limit} bytes \
             ({} MiB); its worker {pid} was replaced (raise memory_limit or use less memory \
             per task)",
            limit >> 20
        ),
    )
    .with_pid(pid)
}

/// In a worker: caps its own address space at `limit` bytes and makes an
/// allocation failure exit with [`EXIT_MEMORY_LIMIT`].
pub(crate) fn limit_self(limit: u64) -> std::io::Result<()> {
    crate::sys::cap_address_space(limit)?;
    crate::sys::exit_when_abort_follows_enomem(EXIT_MEMORY_LIMIT)
}

/// How long after a task the soft cap is looked at again at most, for a
/// worker kept busy by a pipeline of fast tasks.
pub(crate) const RSS_EVERY: Duration = Duration::from_millis(10);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_are_checked() {
        assert!(check_caps(Some(0), None).is_err());
        assert!(check_caps(None, Some(1 << 20)).is_err());
        assert!(check_caps(Some(1), Some(MIN_LIMIT)).is_ok());
    }

    #[test]
    fn the_resident_set_of_this_process_is_read() {
        let r = rss(std::process::id()).unwrap();
        assert!(r > 1 << 20, "{r}");
        assert_eq!(rss(u32::MAX), None);
    }
}
