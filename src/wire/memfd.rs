//! Large bodies out of band: a body above [`MEMFD_ABOVE`] bytes travels as
//! a frozen (size- and write-sealed) anonymous shared-memory file attached to
//! its frame, which the receiver maps read-only and decodes in place.
//!
//! Through the socket, a body is copied twice by the kernel (into the
//! socket's buffer and out of it) in 200-odd KiB steps, each a system call
//! and a wake-up on both sides. Through a file it is copied once, by the
//! sender into the file; the receiver's mapping reads the same pages. The
//! file has no name (nothing in /dev/shm), and it is freed when the last
//! descriptor and mapping are gone: the sender closes its descriptor once
//! the frame is sent, the receiver once it mapped it, and a message in
//! flight when either is killed dies with the socket. A pool job's task
//! frame is the one body written into its file when it is made, not when it
//! is sent (`conn::Frozen`): the parent keeps that file until the job is
//! done, so that a job whose worker died before reading it is sent again
//! from the same file, and the job's encoded bytes are freed at once.
//!
//! The receiver trusts nothing about the file: it must carry the seals
//! ([`sys::is_frozen`]) that keep its bytes and size fixed (a file that
//! could shrink would crash a reader with SIGBUS, one that could be written
//! would change under the decoder), and its size must be the body length the
//! frame header declared, which the reader already checked against its
//! limit for that kind of frame.

use std::os::fd::{AsFd, OwnedFd};

use super::conn::Violation;
use crate::sys;

/// Bodies larger than this travel in a file: the size at which the read
/// and write buffers stop being kept between messages (`SHRINK_ABOVE`), so
/// that through the socket every page of a body would be faulted in afresh
/// on both sides. Below it the socket is cheaper: a file costs a
/// memfd_create, an allocation and a free of every page, a mapping and an
/// unmapping per message. Measured with a pipe between two processes
/// (`send_bytes` to `recv_bytes`, bytes per CPU-second of both, this 2-core
/// machine under load): 1–3 MiB messages 1.7–3.8 GB/s through the socket,
/// 1.1–1.4 through a file; 4 and 16 MiB 0.6–0.7 through the socket,
/// 1.0–1.3 through a file. In a pool (`map` of `Bytes` of 8 or 32 MiB, 2
/// workers) the CPU cost is the same either way (0.35–0.5 GB per
/// CPU-second), but the wall time was 15–30% longer through files on this
/// loaded machine: the parent writes a whole file alone, where through the
/// socket the worker's side of the copy runs on the other core. Measure
/// again on a quiet machine before moving this.
pub(crate) const MEMFD_ABOVE: usize = 4 << 20;

/// A frozen file holding `parts` back to back; `None` when one cannot be
/// made here (a descriptor limit, a sandbox that forbids memfd_create): the
/// body then goes through the socket.
pub(crate) fn freeze(parts: &[&[u8]]) -> Option<OwnedFd> {
    sys::memfd_frozen(parts).ok()
}

/// A body mapped from a frozen file; unmapped when dropped.
pub(crate) struct Mapped {
    ptr: *const u8,
    len: usize,
    map_len: usize,
}

// SAFETY: a read-only mapping of a file no one can write (its seals are
// checked): nothing ever changes the bytes it points to, and it may be
// unmapped from any thread.
unsafe impl Send for Mapped {}
// SAFETY: as above: `&Mapped` only reads bytes that never change, so
// threads may read them at once (`Bytes` views shared across threads).
unsafe impl Sync for Mapped {}

impl Mapped {
    /// Maps `file`, which must be frozen and hold exactly `len` bytes. The
    /// descriptor is closed once the file is mapped.
    pub(crate) fn open(file: OwnedFd, len: usize, what: &str) -> Result<Mapped, Violation> {
        if !sys::is_frozen(file.as_fd()) {
            return Err(Violation(format!(
                "a {what} frame whose body file is not sealed against writes and resizing"
            )));
        }
        let size = sys::file_len(file.as_fd()).map_err(|e| {
            Violation(format!("a {what} frame whose body file cannot be read: {e}"))
        })?;
        if size != len {
            return Err(Violation(format!(
                "a {what} frame declaring {len} bytes with a body file of {size}"
            )));
        }
        // A sender writes every byte of its file; a sparse one would make
        // this side's mapping allocate pages the sender never paid for.
        let allocated = sys::file_allocated(file.as_fd()).unwrap_or(0);
        let whole_pages = (len as u64) & !4095;
        if allocated < whole_pages {
            return Err(Violation(format!(
                "a {what} frame whose body file of {len} bytes is sparse ({allocated} bytes \
                 written)"
            )));
        }
        // A zero-length mapping is refused by the kernel; one page of a
        // zero-length file is mapped and never read.
        let map_len = len.max(1);
        let ptr = sys::map_readonly(file.as_fd(), map_len).map_err(|e| {
            Violation(format!(
                "a {what} frame whose body file of {len} bytes cannot be mapped: {e}"
            ))
        })?;
        Ok(Mapped { ptr, len, map_len })
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        // SAFETY: `ptr` maps `len` readable bytes of a file sealed against
        // shrinking and writing, for as long as `self` lives.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    /// Where `part` starts in [`bytes`](Mapped::bytes), when it lies wholly
    /// inside them.
    pub(crate) fn offset_of(&self, part: &[u8]) -> Option<usize> {
        let (base, at) = (self.ptr as usize, part.as_ptr() as usize);
        let start = at.checked_sub(base)?;
        (start.checked_add(part.len())? <= self.len).then_some(start)
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        // SAFETY: the mapping is ours; borrows of its bytes end with `self`.
        unsafe { sys::unmap(self.ptr.cast_mut(), self.map_len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sealed file of 1 MiB whose pages were never written: mapping it
    /// would make the receiver allocate what the sender never paid for.
    #[test]
    fn a_sparse_body_file_is_refused_and_a_written_one_maps() {
        use rustix::fs::{MemfdFlags, SealFlags};
        let len = 1 << 20;
        let fd =
            rustix::fs::memfd_create(c"sparse", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)
                .unwrap();
        rustix::fs::ftruncate(&fd, len as u64).unwrap();
        let seals = SealFlags::SHRINK | SealFlags::GROW | SealFlags::WRITE | SealFlags::SEAL;
        rustix::fs::fcntl_add_seals(&fd, seals).unwrap();
        let Err(v) = Mapped::open(fd, len, "test") else { panic!("a sparse file was mapped") };
        assert!(v.0.contains("sparse"), "{}", v.0);

        let body = vec![0u8; len];
        let fd = sys::memfd_frozen(&[&body]).unwrap();
        let m = Mapped::open(fd, len, "test").unwrap_or_else(|v| panic!("{}", v.0));
        assert_eq!(m.bytes().len(), len);
    }
}
