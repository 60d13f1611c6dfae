//! One large buffer kept per thread between large messages.
//!
//! A message of megabytes is encoded into a buffer that, freshly allocated,
//! has no pages yet: the encoder faults in and the kernel zeroes every page
//! before the bytes are copied in, and the allocator hands the pages back
//! when the buffer is freed (a 16 MiB chunk of `Bytes`: 4096 faults in the
//! parent for each one). A buffer whose message has gone into its own
//! shared-memory file (`wire::Frozen`, a queue's large item) is no longer
//! needed; kept here instead of freed, it takes the next large encoding on
//! the same thread, whose pages are then already there.
//!
//! Only one buffer is kept per thread, only one of at least [`FROM`] bytes
//! and at most [`KEEP_MAX`], and all threads together keep at most
//! [`KEEP_TOTAL`]: a process whose threads once sent large messages holds
//! at most that much more memory than it did, however many threads it has.
//! A thread's buffer is freed when it exits.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The least growth that takes the spare buffer.
pub(crate) const FROM: usize = 1 << 20;

/// The largest buffer kept.
pub(crate) const KEEP_MAX: usize = 64 << 20;

/// The most bytes kept in spare buffers by all threads together.
pub(crate) const KEEP_TOTAL: usize = 2 * KEEP_MAX;

/// Bytes of capacity in spare buffers now, all threads together.
static KEPT: AtomicUsize = AtomicUsize::new(0);

/// A thread's spare buffer, its capacity counted in [`KEPT`] while kept.
#[derive(Default)]
struct Spare(Vec<u8>);

impl Spare {
    /// `v` kept, if the process's spare buffers leave room for it.
    fn keep(v: Vec<u8>) -> Option<Spare> {
        let cap = v.capacity();
        KEPT.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |k| {
            k.checked_add(cap).filter(|&total| total <= KEEP_TOTAL)
        })
        .ok()?;
        Some(Spare(v))
    }

    /// The buffer, no longer counted.
    fn into_vec(mut self) -> Vec<u8> {
        let v = std::mem::take(&mut self.0);
        KEPT.fetch_sub(v.capacity(), Ordering::SeqCst);
        v
    }
}

impl Drop for Spare {
    /// Freed (at a thread's exit, or replaced): no longer counted.
    fn drop(&mut self) {
        KEPT.fetch_sub(self.0.capacity(), Ordering::SeqCst);
    }
}

thread_local! {
    static SPARE: Cell<Spare> = const { Cell::new(Spare(Vec::new())) };
}

/// Makes room in `v` for `extra` more bytes, as `Vec::reserve` does, but
/// into this thread's spare buffer (its bytes so far copied there) when
/// that one is large enough and `v` is not.
#[inline]
pub(crate) fn reserve(v: &mut Vec<u8>, extra: usize) {
    let Some(need) = v.len().checked_add(extra) else { return v.reserve(extra) };
    if need <= v.capacity() {
        return;
    }
    if need >= FROM {
        // `try_with`: during a thread-local's destructor, no spare.
        if let Ok(spare) = SPARE.try_with(Cell::take) {
            if spare.0.capacity() >= need {
                let mut spare = spare.into_vec();
                spare.clear();
                spare.extend_from_slice(v);
                std::mem::swap(v, &mut spare);
            } else {
                let _ = SPARE.try_with(|s| s.set(spare));
            }
        }
    }
    v.reserve(extra);
}

/// Keeps `v`, emptied, as this thread's spare buffer, when it is larger
/// than the one kept now and within bounds; frees it otherwise.
pub(crate) fn give(mut v: Vec<u8>) {
    if v.capacity() < FROM || v.capacity() > KEEP_MAX {
        return;
    }
    v.clear();
    let _ = SPARE.try_with(|s| {
        let kept = s.take();
        if kept.0.capacity() >= v.capacity() {
            s.set(kept);
            return;
        }
        // The smaller one's share goes back first: `v` may take its place.
        drop(kept);
        if let Some(v) = Spare::keep(v) {
            s.set(v);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The process-wide budget is shared: these tests take turns (under
    /// `cargo test` they would otherwise run at once in one process).
    static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());

    #[test]
    fn a_given_buffer_takes_the_next_large_growth_with_its_bytes() {
        let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
        std::thread::spawn(|| {
            let big = Vec::<u8>::with_capacity(4 * FROM);
            let at = big.as_ptr();
            give(big);
            // Small growth leaves the spare alone.
            let mut v = vec![1u8, 2, 3];
            reserve(&mut v, 10);
            assert_ne!(v.as_ptr(), at);
            // Large growth takes it, and keeps what was written.
            reserve(&mut v, 2 * FROM);
            assert_eq!(v.as_ptr(), at);
            assert_eq!(v, [1, 2, 3]);
            // Taken: the next one allocates.
            let mut w = Vec::new();
            reserve(&mut w, 2 * FROM);
            assert_ne!(w.as_ptr(), at);
            // Too large to keep, and too small: freed.
            give(Vec::with_capacity(KEEP_MAX + 1));
            give(Vec::with_capacity(FROM - 1));
            let mut x = Vec::new();
            reserve(&mut x, FROM);
            assert!(x.capacity() < KEEP_MAX);
        })
        .join()
        .unwrap();
    }

    /// The spare buffers of all threads together stay within
    /// [`KEEP_TOTAL`]: a process whose many threads each once sent a large
    /// message does not keep a large buffer for each of them. A thread's
    /// exit gives its share back.
    #[test]
    fn spare_buffers_are_bounded_across_threads() {
        use std::sync::mpsc;
        let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
        // Capacity only: no page of these buffers is ever touched.
        let each = KEEP_MAX;
        let threads = KEEP_TOTAL / each + 1;
        let (kept_tx, kept_rx) = mpsc::channel();
        let (end_tx, end_rx) = mpsc::channel::<()>();
        let end_rx = std::sync::Arc::new(std::sync::Mutex::new(end_rx));
        let holders: Vec<_> = (0..threads)
            .map(|_| {
                let (kept_tx, end_rx) = (kept_tx.clone(), end_rx.clone());
                std::thread::spawn(move || {
                    let (kept, v) = give_and_take(each);
                    // Given back, and held until told to end.
                    give(v);
                    kept_tx.send(kept).unwrap();
                    let _ = end_rx.lock().unwrap().recv_timeout(std::time::Duration::from_secs(30));
                })
            })
            .collect();
        let kept = (0..threads)
            .filter(|_| kept_rx.recv_timeout(std::time::Duration::from_secs(30)).unwrap())
            .count();
        // At most (another test's thread of this process may hold a spare).
        assert!(kept <= KEEP_TOTAL / each, "{kept} threads kept a spare of {each} bytes");
        assert!(kept >= 1, "no thread kept a spare");
        drop(end_tx);
        for h in holders {
            h.join().unwrap();
        }
        // Every holder is gone: a new thread keeps one again.
        let kept = std::thread::spawn(move || give_and_take(each).0).join().unwrap();
        assert!(kept, "a spare freed by an ended thread still counts");
    }

    /// Gives a buffer of `capacity` (no page touched), then grows a new
    /// vector past [`FROM`]: whether the growth took the given buffer, and
    /// the grown vector.
    fn give_and_take(capacity: usize) -> (bool, Vec<u8>) {
        let big = Vec::<u8>::with_capacity(capacity);
        let at = big.as_ptr();
        give(big);
        let mut v = Vec::new();
        reserve(&mut v, FROM);
        (v.as_ptr() == at, v)
    }
}
