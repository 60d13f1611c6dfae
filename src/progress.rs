//! Progress of a long `map`: a hook told how many items have finished.
//!
//! A map, `imap` or executor `map` seen through [`progress`] reports to a
//! [`Progress`] hook: once at the start (0 done), once per finished chunk,
//! and once at the end ([`Progress::finish`]). The hook may be a closure
//! `Fn(done, total)` driving the user's own UI or, with the `progress`
//! feature, an `indicatif::ProgressBar` (see `bar`, behind that feature).
//!
//! [`progress`]: crate::Pool::progress

use std::sync::Arc;

use parking_lot::Mutex;

/// Told how far a map has got.
///
/// Calls come from the pool's own threads as chunks finish (and from the
/// caller's, in `apply`-like paths), one at a time and in order of `done`:
/// keep them short, as the pool waits for them. A hook that panics is not
/// called again for that map; the map itself is unaffected.
///
/// # Examples
///
/// ```
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use std::sync::Arc;
///
/// let seen = Arc::new(AtomicU64::new(0));
/// let hook = {
///     let seen = seen.clone();
///     move |done: u64, _total: Option<u64>| seen.store(done, Ordering::Relaxed)
/// };
/// let pool = multiproc::ThreadPool::new(2)?;
/// let squares = pool.progress(hook).map(|x: u64| x * x, 0..100)?;
/// assert_eq!(squares.len(), 100);
/// assert_eq!(seen.load(Ordering::Relaxed), 100);
/// # Ok::<(), multiproc::Error>(())
/// ```
pub trait Progress: Send + Sync {
    /// `done` items have finished (successfully or not) out of `total`, when
    /// the input's length is known.
    fn update(&self, done: u64, total: Option<u64>);

    /// The map is over: every submitted item finished or was dropped (the
    /// map failed, or its iterator was dropped early). By default, nothing.
    fn finish(&self, done: u64, total: Option<u64>) {
        let _ = (done, total);
    }
}

impl<F: Fn(u64, Option<u64>) + Send + Sync> Progress for F {
    fn update(&self, done: u64, total: Option<u64>) {
        self(done, total)
    }
}

/// One map's count, shared by its chunks' completions. The last one to go
/// (the map's result or iterator, or the last chunk) reports the finish.
pub(crate) struct Tracker {
    hook: Arc<dyn Progress>,
    total: Option<u64>,
    /// Items done, and whether the hook still runs (it is dropped after a
    /// panic). Held while the hook runs, so calls are serial and in order.
    state: Mutex<(u64, bool)>,
}

impl Tracker {
    /// Starts counting: tells the hook that 0 of `total` are done.
    pub(crate) fn start(hook: Arc<dyn Progress>, total: Option<u64>) -> Arc<Tracker> {
        let tracker = Tracker { hook, total, state: Mutex::new((0, true)) };
        tracker.advance(0);
        Arc::new(tracker)
    }

    /// `n` more items are done.
    pub(crate) fn advance(&self, n: u64) {
        let mut state = self.state.lock();
        state.0 = state.0.saturating_add(n);
        if state.1 {
            let (done, total) = (state.0, self.total);
            state.1 = guarded(|| self.hook.update(done, total));
        }
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        let (done, alive) = *self.state.get_mut();
        if alive {
            let (hook, total) = (&self.hook, self.total);
            guarded(|| hook.finish(done, total));
        }
    }
}

/// Runs a hook call; false when it panicked (reported once, on stderr).
fn guarded(f: impl FnOnce()) -> bool {
    match crate::task::catch_panic(f) {
        Ok(()) => true,
        Err(failure) => {
            report!(
                ERROR, panic = failure.message.as_str();
                "multiproc: a progress hook panicked: {}; it is not called again for this map, \
                 which goes on",
                failure.message
            );
            false
        }
    }
}

#[cfg(feature = "progress")]
impl Progress for indicatif::ProgressBar {
    fn update(&self, done: u64, total: Option<u64>) {
        if total.is_some() && self.length() != total {
            self.set_length(total.unwrap_or(0));
        }
        self.set_position(done);
    }

    fn finish(&self, done: u64, total: Option<u64>) {
        match total {
            Some(total) if done < total => self.abandon(),
            _ => indicatif::ProgressBar::finish(self),
        }
    }
}

/// A progress bar with the count, the rate and the time left, drawn on
/// standard error (and not at all when that is not a terminal):
/// `pool.progress(multiproc::progress::bar()).map(f, items)`.
///
/// The bar learns its length from the map; keep a clone to style it further
/// or to print above it with [`indicatif::ProgressBar::println`].
#[cfg(feature = "progress")]
pub fn bar() -> indicatif::ProgressBar {
    let style = indicatif::ProgressStyle::with_template(
        "{wide_bar} {human_pos}/{human_len} items  {per_sec}  {elapsed} elapsed, ETA {eta}",
    )
    .expect("the template is valid");
    indicatif::ProgressBar::no_length().with_style(style)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    #[test]
    fn counts_in_order_and_finishes_once() {
        /// (finished, done, total) per call.
        type Calls = Vec<(bool, u64, Option<u64>)>;
        let log = Arc::new(Mutex::new(Vec::new()));
        struct Log(Arc<Mutex<Calls>>);
        impl Progress for Log {
            fn update(&self, done: u64, total: Option<u64>) {
                self.0.lock().push((false, done, total));
            }
            fn finish(&self, done: u64, total: Option<u64>) {
                self.0.lock().push((true, done, total));
            }
        }
        let t = Tracker::start(Arc::new(Log(log.clone())), Some(5));
        t.advance(2);
        t.advance(3);
        drop(t);
        let log = log.lock().clone();
        assert_eq!(
            log,
            vec![(false, 0, Some(5)), (false, 2, Some(5)), (false, 5, Some(5)), (true, 5, Some(5))]
        );
    }

    #[test]
    fn a_panicking_hook_is_dropped_and_the_count_goes_on() {
        let calls = Arc::new(AtomicU64::new(0));
        let c = calls.clone();
        let t = Tracker::start(
            Arc::new(move |done: u64, _| {
                c.fetch_add(1, Ordering::Relaxed);
                if done == 1 {
                    panic!("hook failed");
                }
            }),
            None,
        );
        t.advance(1);
        t.advance(1);
        assert_eq!(calls.load(Ordering::Relaxed), 2, "not called after its panic");
        assert_eq!(t.state.lock().0, 2);
    }
}
