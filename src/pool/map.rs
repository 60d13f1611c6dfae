//! Chunking, `map` collection and the lazy `imap` iterators, written once for
//! both pools on top of [`ChunkRunner`].

use std::collections::{HashMap, VecDeque};
use std::mem::MaybeUninit;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::result::{AsyncResult, Completion};
use crate::engine::{Engine, Release, Ticket};
use crate::error::{Error, ErrorKind, Result};
use crate::progress::{Progress, Tracker};
use crate::task::Outcomes;

/// Called once with one outcome per item of a chunk.
pub(crate) type ChunkDone<R> = Box<dyn FnOnce(Outcomes<R>) + Send>;

/// `done`, counting its chunk's items on `tracker` first.
fn counted<R: 'static>(tracker: &Option<Arc<Tracker>>, done: ChunkDone<R>) -> ChunkDone<R> {
    match tracker {
        None => done,
        Some(tracker) => {
            let tracker = tracker.clone();
            Box::new(move |outcomes| {
                tracker.advance(outcomes.len() as u64);
                done(outcomes)
            })
        }
    }
}

/// Runs its release once, when the iterator's input ends or it is dropped.
struct Hold(Option<Release>);

impl Drop for Hold {
    fn drop(&mut self) {
        if let Some(release) = self.0.take() {
            release();
        }
    }
}

/// How a pool runs a chunk of items through one function: the typed half of
/// the engine seam (a backend's runner for one task function).
pub(crate) trait ChunkRunner<A, R> {
    /// The engine the chunks run on.
    type Engine: Engine;
    fn engine(&self) -> &Arc<Self::Engine>;
    /// Runs `items` as one task; `done` gets exactly one outcome per item,
    /// whatever happens to the pool or its workers.
    fn run_chunk(&self, items: Vec<A>, done: ChunkDone<R>);
    /// As `run_chunk`, for an iterator that was started while the pool ran:
    /// accepted after `close()` as long as its hold is open.
    /// The chunk is tracked by `ticket`, so the iterator can cancel it
    /// while it is still queued.
    fn run_chunk_held(&self, items: Vec<A>, done: ChunkDone<R>, ticket: Arc<Ticket>);
    /// Runs one item as its own task; the completion returned gets its
    /// outcome, whatever happens. `arm` sees the completion before the task
    /// is submitted (see [`Arm`]). By default a chunk of one; a backend may
    /// skip the chunk's vectors and callback (the thread pool's hot path)
    /// and make the completion itself.
    fn run_one(&self, item: A, arm: impl Arm<R>) -> Result<Arc<Completion<R>>>
    where
        R: Send + 'static,
    {
        let done = Completion::new();
        arm(&done)?;
        self.run_chunk(vec![item], complete_one(done.clone()));
        Ok(done)
    }
    /// Keeps a closed pool's workers for an iterator that will submit more;
    /// the returned closure lets go. `None` when the pool is not running.
    fn hold_open(&self) -> Option<Release> {
        self.engine().hold_open()
    }
    /// Fails when the pool takes no new tasks.
    fn check_running(&self) -> Result<()> {
        self.engine().check_running()
    }
    /// The pool's number of workers.
    fn workers(&self) -> usize {
        self.engine().workers()
    }
    /// Runs `args` as one task and waits for its outcome.
    fn apply(&self, args: A) -> Result<R>
    where
        R: Send + 'static,
        Self: Sized,
    {
        super::apply_via(self, args).get()
    }
}

/// How a face runs one call (`apply`, `apply_async`, executor `submit`):
/// by value, so a backend may take a function it can call only once. A
/// backend whose one call is a chunk of one implements it with
/// [`ChunkRunner::run_one`] and [`ChunkRunner::apply`].
pub(crate) trait OneShot<A, R>: Sized {
    /// Runs `args` as one task; the completion returned gets its outcome,
    /// whatever happens. The backend makes the completion, so that it may
    /// keep the task in the same allocation; `arm` sees it before the task
    /// is submitted (see [`Arm`]).
    fn run(self, args: A, arm: impl Arm<R>) -> Result<Arc<Completion<R>>>;
    /// Runs `args` as one task and waits for its outcome.
    fn apply(self, args: A) -> Result<R>;
}

/// What a face does with the completion of one call before the call is
/// submitted: arm its deadline. An error keeps the call from being
/// submitted and is the call's error.
pub(crate) trait Arm<R>: FnOnce(&Arc<Completion<R>>) -> Result<()> {}

impl<R, T: FnOnce(&Arc<Completion<R>>) -> Result<()>> Arm<R> for T {}

/// The [`Arm`] of a call without a deadline.
pub(crate) fn unarmed<R>(_: &Arc<Completion<R>>) -> Result<()> {
    Ok(())
}

/// The chunk callback of a chunk of one item: completes `done` with its
/// outcome.
pub(crate) fn complete_one<R: Send + 'static>(done: Arc<Completion<R>>) -> ChunkDone<R> {
    Box::new(move |mut outcomes| {
        done.complete(
            outcomes.pop().unwrap_or_else(|| {
                Err(Error::new(ErrorKind::Protocol, "a task returned no result"))
            }),
        )
    })
}

/// The most items a default chunk holds. Python's rule alone makes a few
/// huge chunks of a long input (1M items on 2 workers: 8 of 125k), so the
/// workers start late, finish unevenly and the parent holds large buffers;
/// past some thousands of items a chunk's per-task cost is negligible.
/// Swept with bench/'s W2 (1M ints, 2 workers, load average 7-10, two
/// rounds of 3 repetitions): W2.default 78M/32M items/s at 4096, 36M/34M at
/// 8192, 99M/84M at 16384, 41M/81M at 32768, peak RSS 13.1, 13.6, 15.0 and
/// 17.2 MiB (procspawn's 21.2).
pub(crate) const MAX_DEFAULT_CHUNK: usize = 16384;

/// Python's rule, `ceil(len / (workers * 4))` and at least 1, capped at
/// [`MAX_DEFAULT_CHUNK`] items (which only long inputs reach).
pub(crate) fn default_chunksize(len: usize, workers: usize) -> usize {
    len.div_ceil(workers.max(1) * 4).clamp(1, MAX_DEFAULT_CHUNK)
}

/// How many chunks a `map` (see `submit_chunks`) or an `imap` keeps
/// submitted and not yet done while it reads its input: enough that every
/// worker has several queued behind the one it runs.
pub(crate) fn in_flight_chunks(workers: usize) -> usize {
    (workers * 8).max(16)
}

pub(crate) fn check_chunksize(chunksize: Option<usize>) -> Result<()> {
    if chunksize == Some(0) {
        return Err(Error::new(
            ErrorKind::InvalidArgument,
            "chunksize must be at least 1 (got 0); leave it unset for the default",
        ));
    }
    Ok(())
}

/// Reads up to `size` items from the input, under one panic guard. The
/// input may panic part-way: the items read before the panic are returned
/// with the panic as an error, so they still run and their results are
/// yielded before that error.
fn read_chunk<A>(input: &mut impl Iterator<Item = A>, size: usize) -> (Vec<A>, Option<Error>) {
    // Not the input's size_hint: it is the caller's word, and may be wrong.
    let mut chunk = Vec::with_capacity(size.min(1 << 16));
    let read = crate::task::catch_panic(|| {
        while chunk.len() < size {
            match input.next() {
                Some(item) => chunk.push(item),
                None => break,
            }
        }
    });
    (chunk, read.err().map(|f| Error::input_panicked(f.message, f.location)))
}

/// What `map_async` has gathered: the outputs, each in its final place.
///
/// Every chunk but the last holds exactly `size` items (the input is cut
/// into whole chunks until it ends), so chunk `i`'s outputs belong at
/// `i * size`. A chunk is written there when it arrives, in whatever order
/// the chunks finish: none waits in a side table for the chunks before it,
/// and no output is copied twice.
struct Collect<R> {
    /// Room for the outputs; the places of chunks that have not arrived are
    /// uninitialised.
    out: Vec<MaybeUninit<R>>,
    size: usize,
    /// How many outputs each chunk wrote, by chunk index; 0 until it
    /// arrives (a chunk has at least one item). Exactly these ranges of
    /// `out` are initialised.
    arrived: Vec<usize>,
    /// How many chunks have arrived.
    count: usize,
    /// How many chunks have come back, placed or not (the window's count).
    settled: usize,
    /// How many chunks there are, once the input has been read to its end.
    chunks: Option<usize>,
    /// The result has completed with an error: later values are dropped.
    failed: bool,
    /// While the caller waits for room in its window: the count of arrived
    /// chunks at which it reads on (`usize::MAX` when it does not wait).
    resume_at: usize,
}

impl<R> Collect<R> {
    fn new(len: usize, size: usize) -> Collect<R> {
        let mut out = Vec::new();
        // The whole output, if the allocator agrees (the length is the
        // input's word); otherwise it grows as chunks arrive.
        let _ = out.try_reserve_exact(len);
        // Chunks write all of it: in huge pages, that is a few page faults
        // rather than one per 4 KiB (most of a large map's first run).
        crate::sys::prefer_huge_pages(out.spare_capacity_mut());
        let mut arrived = Vec::new();
        let _ = arrived.try_reserve_exact(len.div_ceil(size.max(1)).min(1 << 20));
        Collect {
            out,
            size,
            arrived,
            count: 0,
            settled: 0,
            chunks: None,
            failed: false,
            resume_at: usize::MAX,
        }
    }

    /// Writes chunk `index`'s outputs in their place; an error for a chunk
    /// that does not fit the layout (which `submit_chunks` never makes).
    fn place(&mut self, index: usize, mut values: Vec<R>) -> Result<()> {
        let n = values.len();
        let bad = || Error::new(ErrorKind::Protocol, "map: a chunk's results do not fit its place");
        let start = index.checked_mul(self.size).ok_or_else(bad)?;
        let end = start.checked_add(n).ok_or_else(bad)?;
        if n == 0 || n > self.size || self.arrived.get(index).is_some_and(|&had| had != 0) {
            return Err(bad());
        }
        if self.out.len() < end {
            let more = end - self.out.len();
            self.out.reserve(more);
            // SAFETY: the capacity covers `end` (reserved above), and
            // `MaybeUninit` needs no initialisation; the places past the
            // old length are not marked arrived, so nothing reads them.
            unsafe { self.out.set_len(end) };
        }
        if self.arrived.len() <= index {
            self.arrived.resize(index + 1, 0);
        }
        // SAFETY: `start..end` is within `out` (its length was raised to at
        // least `end`), and holds no value yet (this chunk had not arrived,
        // and chunks' ranges are disjoint: each starts at its own multiple
        // of `size` and holds at most `size`). The values are moved out of
        // `values`, whose length is then 0, so they are dropped once only,
        // from their new place; the two vectors are distinct allocations.
        unsafe {
            std::ptr::copy_nonoverlapping(
                values.as_ptr(),
                self.out.as_mut_ptr().add(start).cast::<R>(),
                n,
            );
            values.set_len(0);
        }
        self.arrived[index] = n;
        self.count += 1;
        Ok(())
    }

    /// All the values, once every chunk has arrived (an error if they do
    /// not make one run, which `place` rules out).
    fn take_if_complete(&mut self) -> Option<Result<Vec<R>>> {
        let chunks = self.chunks?;
        if self.failed || self.count != chunks {
            return None;
        }
        // Every chunk arrived; all but the last are whole, so the outputs
        // are one run with no gap (checked: a gap would be uninitialised).
        let whole = self.arrived.len() == chunks
            && self.arrived.iter().rev().skip(1).all(|&n| n == self.size);
        let total = match self.arrived.last() {
            Some(&last) if whole => (chunks - 1) * self.size + last,
            None => 0,
            Some(_) => usize::MAX,
        };
        if total != self.out.len() {
            self.failed = true;
            self.clear();
            let msg = "map: the chunks' results do not make one run";
            return Some(Err(Error::new(ErrorKind::Protocol, msg)));
        }
        self.arrived.clear();
        let mut out = std::mem::ManuallyDrop::new(std::mem::take(&mut self.out));
        let (ptr, cap) = (out.as_mut_ptr().cast::<R>(), out.capacity());
        // SAFETY: the buffer was allocated by a `Vec<MaybeUninit<R>>`, which
        // has the layout of a `Vec<R>` of the same capacity; its first
        // `total` places, all of its length, are initialised (every chunk
        // arrived and they cover `0..total` with no gap, checked above).
        // `out` is not dropped and `arrived` is cleared, so the values have
        // one owner.
        Some(Ok(unsafe { Vec::from_raw_parts(ptr, total, cap) }))
    }

    /// Drops the outputs gathered so far (the call failed).
    fn clear(&mut self) {
        if std::mem::needs_drop::<R>() {
            for (index, &n) in self.arrived.iter().enumerate() {
                if n == 0 {
                    continue;
                }
                let start = index * self.size;
                // SAFETY: chunk `index` arrived, so `start..start + n` of
                // `out` holds its `n` values (see `place`); it is unmarked
                // below, so each is dropped once.
                unsafe {
                    let first = self.out.as_mut_ptr().add(start).cast::<R>();
                    std::ptr::drop_in_place(std::ptr::slice_from_raw_parts_mut(first, n));
                }
            }
        }
        self.arrived = Vec::new();
        self.out = Vec::new();
    }
}

impl<R> Drop for Collect<R> {
    fn drop(&mut self) {
        self.clear();
    }
}

/// Submits `items` in chunks as it reads them; the result completes with
/// every output in order, or with the first error to arrive.
///
/// Python's rule for the default chunksize needs the input's length: an input
/// whose `size_hint` is exact is chunked while it is read (so it is never
/// held twice), any other is read to its end first. A panic in the input
/// fails the call with an error naming the input; chunks read before it may
/// have run.
///
/// `waited`: the caller blocks on the result anyway (`map`, not
/// `map_async`), so this call returns only once the input has been read,
/// and reads it no faster than the chunks before it finish (see
/// `submit_chunks`).
pub(crate) fn map_async<A, R: Send + 'static>(
    runner: &impl ChunkRunner<A, R>,
    items: impl IntoIterator<Item = A>,
    chunksize: Option<usize>,
    progress: Option<Arc<dyn Progress>>,
    waited: bool,
) -> AsyncResult<Vec<R>> {
    let window = waited.then(|| in_flight_chunks(runner.workers()));
    if let Err(e) = check_chunksize(chunksize).and_then(|()| runner.check_running()) {
        return AsyncResult::failed(e);
    }
    let opened = crate::task::catch_panic(|| {
        let input = items.into_iter();
        let (low, high) = input.size_hint();
        (input, (Some(low) == high).then_some(low))
    });
    let (input, len) = match opened {
        Ok(opened) => opened,
        Err(f) => return AsyncResult::failed(Error::input_panicked(f.message, f.location)),
    };
    match len {
        Some(len) => submit_chunks(runner, input, len, chunksize, progress, window),
        None => match crate::task::catch_panic(|| input.collect::<Vec<A>>()) {
            Ok(all) => {
                let len = all.len();
                submit_chunks(runner, all.into_iter(), len, chunksize, progress, window)
            }
            Err(f) => AsyncResult::failed(Error::input_panicked(f.message, f.location)),
        },
    }
}

/// `map_async` over an input of `len` items (its word: the input may end
/// sooner or later).
///
/// With a `window` (a caller who waits for the result anyway: `map`), the
/// input is read as the chunks before it finish, at most `window` chunks
/// being submitted and not yet done; a long map then never holds its whole
/// input encoded at once. Those chunks are held, so that a `close()` from
/// another thread while the map reads its input does not refuse the rest
/// (as every chunk of an unwindowed map was admitted before `close`).
fn submit_chunks<A, R: Send + 'static>(
    runner: &impl ChunkRunner<A, R>,
    mut input: impl Iterator<Item = A>,
    len: usize,
    chunksize: Option<usize>,
    progress: Option<Arc<dyn Progress>>,
    window: Option<usize>,
) -> AsyncResult<Vec<R>> {
    let tracker = progress.map(|hook| Tracker::start(hook, Some(len as u64)));
    let completion = Completion::new();
    let result = AsyncResult::new(completion.clone());
    let size = chunksize.unwrap_or_else(|| default_chunksize(len, runner.workers()));
    let collect = Mutex::new(Collect::new(len, size));
    let gather = Arc::new(Gather { collect, room: Condvar::new() });
    let hold = window.and_then(|_| runner.hold_open()).map(|r| Hold(Some(r)));
    let mut index = 0;
    let error = loop {
        if let Some(window) = window {
            let mut c = gather.lock();
            if index - c.settled >= window.max(1) {
                // Wait until half the window is free: one wake-up per
                // half window of chunks, not one per chunk.
                let resume = index - window / 2;
                c.resume_at = resume;
                while c.settled < resume {
                    c = gather.room.wait(c).unwrap_or_else(|e| e.into_inner());
                }
                c.resume_at = usize::MAX;
            }
            // Read on after a failure too: every item runs, as in
            // `map_async` (and Python's `map`), whatever the result.
        }
        let (chunk, error) = read_chunk(&mut input, size);
        if chunk.is_empty() {
            break error;
        }
        let (gather, completion) = (gather.clone(), completion.clone());
        let done = counted(
            &tracker,
            Box::new(move |outcomes: Outcomes<R>| {
                let values = outcomes.into_values();
                let mut c = gather.lock();
                c.settled += 1;
                let all = if c.failed {
                    // The values are dropped; the chunk still counts for
                    // the window.
                    None
                } else {
                    match values.and_then(|values| c.place(index, values)) {
                        Ok(()) => c.take_if_complete(),
                        Err(e) => {
                            c.failed = true;
                            c.clear();
                            Some(Err(e))
                        }
                    }
                };
                if c.settled >= c.resume_at {
                    gather.room.notify_one();
                }
                drop(c);
                if let Some(all) = all {
                    completion.complete(all);
                }
            }),
        );
        match hold {
            Some(_) => runner.run_chunk_held(chunk, done, Ticket::new()),
            None => runner.run_chunk(chunk, done),
        }
        index += 1;
        if error.is_some() {
            break error;
        }
    };
    // The input is dropped before the result can complete, and the pool let
    // go once it has.
    drop(input);
    drop(hold);
    let mut c = gather.lock();
    if let Some(e) = error {
        c.failed = true;
        c.clear();
        drop(c);
        completion.complete(Err(e));
        return result;
    }
    if c.failed {
        return result;
    }
    c.chunks = Some(index);
    if let Some(all) = c.take_if_complete() {
        drop(c);
        completion.complete(all);
    }
    result
}

/// A map's outputs and the caller waiting for room in its window.
struct Gather<R> {
    collect: Mutex<Collect<R>>,
    /// Signalled when a chunk arrives that lets a waiting caller read on
    /// (`Collect::resume_at`), or the map fails.
    room: Condvar,
}

impl<R> Gather<R> {
    fn lock(&self) -> std::sync::MutexGuard<'_, Collect<R>> {
        self.collect.lock().unwrap_or_else(|e| e.into_inner())
    }
}

struct Arrived<R> {
    by_index: HashMap<usize, Outcomes<R>>,
    in_order_of_arrival: VecDeque<Outcomes<R>>,
}

struct Shared<R> {
    arrived: Mutex<Arrived<R>>,
    cond: Condvar,
}

/// What one call of the feeder did.
struct Fed {
    /// A chunk was submitted (its `done` was used).
    submitted: bool,
    /// Why the input failed, if it did.
    error: Option<Error>,
}

impl Fed {
    /// The input has ended: it ran out (nothing was left to submit) or failed.
    fn ended(&self) -> bool {
        !self.submitted || self.error.is_some()
    }
}

type Feeder<R> = Box<dyn FnMut(ChunkDone<R>, Arc<Ticket>) -> Fed>;

/// The iterator returned by `imap` and `imap_unordered`.
///
/// It reads its input lazily: at most a bounded number of chunks are in
/// flight, and the next input is read only as results are consumed, so an
/// endless or huge input never sits in memory. Each item is a `Result`: a task
/// that fails yields its error in its place and the iteration goes on.
///
/// An input iterator that panics ends the iteration: the results of every
/// item read before the panic are yielded first, then one
/// [`ErrorKind::TaskPanicked`] error that names the input iterator and
/// carries its panic message and location; the pool goes on.
///
/// # Examples
///
/// ```
/// let pool = multiproc::ThreadPool::new(2)?;
/// let mut it = pool.imap(|x: u32| x * 10, 0..3);
/// assert_eq!(it.next().transpose()?, Some(0));
/// assert_eq!(it.collect::<Result<Vec<_>, _>>()?, vec![10, 20]);
/// # Ok::<(), multiproc::Error>(())
/// ```
#[must_use = "iterators are lazy and do nothing unless consumed"]
pub struct IMap<R> {
    shared: Arc<Shared<R>>,
    feeder: Option<Feeder<R>>,
    ordered: bool,
    window: usize,
    submitted: usize,
    consumed: usize,
    current: VecDeque<Result<R>>,
    pending_error: Option<Error>,
    /// The input iterator's own failure, yielded once every chunk read
    /// before it has been yielded (Python yields the results before the
    /// failing item, then raises).
    input_error: Option<Error>,
    /// Keeps the pool's workers while this iterator still has input, so that
    /// an `imap` started before `close()` yields every result, as in Python.
    /// Declared after `feeder`, so it is released after the input is gone.
    hold: Option<Hold>,
    /// The chunks submitted and not yet consumed, to cancel the queued ones
    /// when the iteration stops early (timeout, drop), as Python does.
    tickets: VecDeque<Arc<Ticket>>,
    /// An overall bound (executor `map` with a timeout).
    deadline: Option<(Instant, Duration)>,
    /// Counts finished chunks for a progress hook.
    tracker: Option<Arc<Tracker>>,
}

impl<R: Send + 'static> IMap<R> {
    pub(crate) fn new<A: 'static>(
        runner: impl ChunkRunner<A, R> + 'static,
        input: impl IntoIterator<Item = A> + 'static,
        chunksize: Option<usize>,
        ordered: bool,
        progress: Option<Arc<dyn Progress>>,
    ) -> IMap<R> {
        let shared = Arc::new(Shared {
            arrived: Mutex::new(Arrived {
                by_index: HashMap::new(),
                in_order_of_arrival: VecDeque::new(),
            }),
            cond: Condvar::new(),
        });
        let window = in_flight_chunks(runner.workers());
        let mut imap = IMap {
            shared,
            feeder: None,
            ordered,
            window,
            submitted: 0,
            consumed: 0,
            current: VecDeque::new(),
            pending_error: None,
            input_error: None,
            hold: None,
            tickets: VecDeque::new(),
            deadline: None,
            tracker: None,
        };
        if let Err(e) = check_chunksize(chunksize).and_then(|()| runner.check_running()) {
            imap.pending_error = Some(e);
            return imap;
        }
        let size = chunksize.unwrap_or(1);
        let mut input = input.into_iter();
        let hint = crate::task::catch_panic(|| input.size_hint()).unwrap_or((0, None));
        let total = match hint {
            (low, Some(high)) if low == high => Some(low as u64),
            _ => None,
        };
        imap.tracker = progress.map(|hook| Tracker::start(hook, total));
        imap.hold = runner.hold_open().map(|r| Hold(Some(r)));
        imap.feeder = Some(Box::new(move |done, ticket| {
            let (chunk, error) = read_chunk(&mut input, size);
            let submitted = !chunk.is_empty();
            if submitted {
                runner.run_chunk_held(chunk, done, ticket);
            }
            Fed { submitted, error }
        }));
        imap
    }

    /// An iterator that yields `err`, then ends (a call that could not start).
    pub(crate) fn failed(err: Error) -> IMap<R> {
        let shared = Arc::new(Shared {
            arrived: Mutex::new(Arrived {
                by_index: HashMap::new(),
                in_order_of_arrival: VecDeque::new(),
            }),
            cond: Condvar::new(),
        });
        IMap {
            shared,
            feeder: None,
            ordered: true,
            window: 1,
            submitted: 0,
            consumed: 0,
            current: VecDeque::new(),
            pending_error: Some(err),
            input_error: None,
            hold: None,
            tickets: VecDeque::new(),
            deadline: None,
            tracker: None,
        }
    }

    /// The next result, waiting at most `timeout` for it (Python's
    /// `IMapIterator.next(timeout)`): `Some(Err(e))` with
    /// [`ErrorKind::Timeout`] when it is not ready in time, and the
    /// iteration goes on (the result is yielded by a later call); `None`
    /// at the end.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let pool = multiproc::ThreadPool::new(1)?;
    /// let mut it = pool.imap(|ms: u64| { std::thread::sleep(Duration::from_millis(ms)); ms }, [300]);
    /// assert!(it.next_timeout(Duration::from_millis(10)).unwrap().unwrap_err().is_timeout());
    /// assert_eq!(it.next_timeout(Duration::from_secs(30)).unwrap()?, 300);
    /// assert!(it.next_timeout(Duration::ZERO).is_none());
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    pub fn next_timeout(&mut self, timeout: Duration) -> Option<Result<R>> {
        self.next_within(crate::deadline_after(timeout).map(|d| (d, timeout)))
    }

    /// Bounds the whole iteration by `timeout` from now: results that are
    /// late yield one timeout error, then the iteration ends.
    pub(crate) fn with_timeout(mut self, timeout: Duration) -> Self {
        self.deadline = crate::deadline_after(timeout).map(|d| (d, timeout));
        self
    }

    fn top_up(&mut self) {
        while self.submitted - self.consumed < self.window {
            let Some(feed) = self.feeder.as_mut() else {
                return;
            };
            let index = self.submitted;
            let shared = self.shared.clone();
            let ordered = self.ordered;
            let done: ChunkDone<R> = Box::new(move |outcomes| {
                let mut a = shared.arrived.lock().unwrap_or_else(|e| e.into_inner());
                if ordered {
                    a.by_index.insert(index, outcomes);
                } else {
                    a.in_order_of_arrival.push_back(outcomes);
                }
                drop(a);
                shared.cond.notify_all();
            });
            let ticket = Ticket::new();
            let fed = feed(counted(&self.tracker, done), ticket.clone());
            if fed.submitted {
                self.tickets.push_back(ticket);
                self.submitted += 1;
            }
            if fed.ended() {
                // The input is dropped here, which may let the pool's workers
                // go (its hold); a failed input is reported after the chunks
                // read before it.
                self.feeder = None;
                self.hold = None;
                self.input_error = fed.error;
            }
        }
    }
}

impl<R> IMap<R> {
    /// Stops the iteration: reads no more input and cancels the chunks still
    /// queued (those already running finish, and their results are dropped).
    fn cancel_rest(&mut self) {
        self.feeder = None;
        self.hold = None;
        self.input_error = None;
        self.tracker = None;
        for t in self.tickets.drain(..) {
            t.cancel();
        }
    }
}

impl<R> Drop for IMap<R> {
    fn drop(&mut self) {
        self.cancel_rest();
    }
}

impl<R: Send + 'static> Iterator for IMap<R> {
    type Item = Result<R>;

    fn next(&mut self) -> Option<Result<R>> {
        self.next_within(None)
    }
}

impl<R: Send + 'static> IMap<R> {
    /// The next result; `wait` bounds this one call (the iteration goes on
    /// after it passes), as [`next_timeout`](IMap::next_timeout).
    fn next_within(&mut self, wait: Option<(Instant, Duration)>) -> Option<Result<R>> {
        loop {
            if let Some(item) = self.current.pop_front() {
                return Some(item);
            }
            if let Some(e) = self.pending_error.take() {
                return Some(Err(e));
            }
            self.top_up();
            if self.consumed == self.submitted {
                // The end (or the input's error, then the end): the hook
                // hears its finish now, not when the iterator is dropped.
                self.tracker = None;
                return self.input_error.take().map(Err);
            }
            let mut a = self.shared.arrived.lock().unwrap_or_else(|e| e.into_inner());
            let chunk = loop {
                let got = if self.ordered {
                    a.by_index.remove(&self.consumed)
                } else {
                    a.in_order_of_arrival.pop_front()
                };
                if got.is_none() {
                    if let Some((until, limit)) = wait {
                        let now = Instant::now();
                        let whole = self.deadline.is_some_and(|(d, _)| d <= until);
                        if now >= until && !whole {
                            return Some(Err(Error::timeout(format!(
                                "imap: the next result was not ready within {limit:?}"
                            ))));
                        }
                        if !whole {
                            a = self
                                .shared
                                .cond
                                .wait_timeout(a, until - now)
                                .unwrap_or_else(|e| e.into_inner())
                                .0;
                            continue;
                        }
                    }
                }
                match (got, self.deadline) {
                    (Some(c), _) => break c,
                    // Every submitted chunk is completed by its pool, even on
                    // crash, termination or drop, so this wait always ends.
                    (None, None) => a = self.shared.cond.wait(a).unwrap_or_else(|e| e.into_inner()),
                    (None, Some((deadline, limit))) => {
                        let now = Instant::now();
                        if now >= deadline {
                            drop(a);
                            self.cancel_rest();
                            self.consumed = self.submitted;
                            return Some(Err(Error::timeout(format!(
                                "map: the next result was not ready within the {limit:?} timeout"
                            ))));
                        }
                        a = self
                            .shared
                            .cond
                            .wait_timeout(a, deadline - now)
                            .unwrap_or_else(|e| e.into_inner())
                            .0;
                    }
                }
            };
            drop(a);
            self.consumed += 1;
            self.tickets.pop_front();
            self.current.extend(chunk);
        }
    }
}

impl<R> std::fmt::Debug for IMap<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IMap")
            .field("ordered", &self.ordered)
            .field("in_flight", &(self.submitted - self.consumed))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::threads::ThreadEngine;
    use std::cell::Cell;
    use std::rc::Rc;

    /// Runs chunks inline on the caller's thread: the scheduler-free runner
    /// (its engine, two idle threads, is there for the pool's state only).
    #[derive(Clone)]
    struct Inline(Arc<ThreadEngine>);

    fn inline() -> Inline {
        let options = crate::engine::threads::ThreadOptions::default();
        Inline(options.build(false, 2, "threads").unwrap())
    }

    impl ChunkRunner<u64, u64> for Inline {
        type Engine = ThreadEngine;
        fn engine(&self) -> &Arc<ThreadEngine> {
            &self.0
        }
        fn run_chunk_held(&self, items: Vec<u64>, done: ChunkDone<u64>, _: Arc<Ticket>) {
            self.run_chunk(items, done)
        }
        fn run_chunk(&self, items: Vec<u64>, done: ChunkDone<u64>) {
            done(
                items
                    .into_iter()
                    .map(|x| {
                        if x == 13 {
                            Err(Error::new(ErrorKind::TaskPanicked, "13"))
                        } else {
                            Ok(x * 2)
                        }
                    })
                    .collect(),
            )
        }
    }

    fn map_async_plain(
        runner: &Inline,
        items: impl IntoIterator<Item = u64>,
        chunksize: Option<usize>,
    ) -> AsyncResult<Vec<u64>> {
        map_async(runner, items, chunksize, None, false)
    }

    #[test]
    fn default_chunksize_follows_python_up_to_a_cap() {
        assert_eq!(default_chunksize(1000, 5), 50);
        assert_eq!(default_chunksize(1001, 5), 51);
        assert_eq!(default_chunksize(3, 4), 1);
        assert_eq!(default_chunksize(0, 4), 1);
        // Python's rule up to the cap, the cap past it.
        let most = MAX_DEFAULT_CHUNK * 8;
        assert_eq!(default_chunksize(most, 2), MAX_DEFAULT_CHUNK);
        assert_eq!(default_chunksize(most - 8, 2), MAX_DEFAULT_CHUNK - 1);
        assert_eq!(default_chunksize(1_000_000, 2), MAX_DEFAULT_CHUNK);
        // W2's map (1M items, 2 workers): 62 chunks of 16384, 31 a worker.
        assert_eq!(default_chunksize(1_000_000, 2), 16384);
        assert_eq!(default_chunksize(usize::MAX, 1), MAX_DEFAULT_CHUNK);
    }

    #[test]
    fn map_keeps_order_and_fails_whole() {
        let r = map_async_plain(&inline(), 0..10, Some(3)).get().unwrap();
        assert_eq!(r, (0..10).map(|x| x * 2).collect::<Vec<_>>());
        assert!(map_async_plain(&inline(), 0..20, None).get().is_err());
        assert!(map_async_plain(&inline(), Vec::<u64>::new(), None).get().unwrap().is_empty());
        let e = map_async_plain(&inline(), vec![1], Some(0)).get().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    }

    /// A live value of a map's result: counts how many exist, so a test
    /// sees each dropped exactly once.
    #[derive(Debug)]
    struct Live(Arc<std::sync::atomic::AtomicIsize>, u64);

    impl Live {
        fn new(count: &Arc<std::sync::atomic::AtomicIsize>, x: u64) -> Live {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Live(count.clone(), x)
        }
    }

    impl Drop for Live {
        fn drop(&mut self) {
            self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    type Parked = Vec<(Vec<u64>, ChunkDone<Live>)>;

    /// Keeps the chunks it is given until the test completes them, in
    /// whatever order it likes: chunks that finish out of order.
    #[derive(Clone)]
    struct Deferred(Arc<ThreadEngine>, Arc<Mutex<Parked>>);

    impl ChunkRunner<u64, Live> for Deferred {
        type Engine = ThreadEngine;
        fn engine(&self) -> &Arc<ThreadEngine> {
            &self.0
        }
        fn run_chunk_held(&self, items: Vec<u64>, done: ChunkDone<Live>, _: Arc<Ticket>) {
            self.run_chunk(items, done)
        }
        fn run_chunk(&self, items: Vec<u64>, done: ChunkDone<Live>) {
            self.1.lock().unwrap().push((items, done));
        }
    }

    /// Completes every parked chunk, last submitted first; the items of
    /// chunk `fail` (if any) fail.
    fn complete_in_reverse(
        parked: &Mutex<Parked>,
        count: &Arc<std::sync::atomic::AtomicIsize>,
        fail: Option<usize>,
    ) {
        let chunks = std::mem::take(&mut *parked.lock().unwrap());
        for (i, (items, done)) in chunks.into_iter().enumerate().rev() {
            done(
                items
                    .into_iter()
                    .map(|x| match fail {
                        Some(f) if f == i => Err(Error::new(ErrorKind::TaskPanicked, "failed")),
                        _ => Ok(Live::new(count, x * 2)),
                    })
                    .collect(),
            );
        }
    }

    #[test]
    fn map_places_chunks_that_finish_out_of_order() {
        let count = Arc::new(std::sync::atomic::AtomicIsize::new(0));
        let runner = Deferred(inline().0, Arc::new(Mutex::new(Vec::new())));
        // 10 chunks of 3 and a last one of 2, completed last first.
        let result = map_async(&runner, 0..32, Some(3), None, false);
        assert_eq!(runner.1.lock().unwrap().len(), 11);
        complete_in_reverse(&runner.1, &count, None);
        let out = result.get().unwrap();
        assert_eq!(
            out.iter().map(|v| v.1).collect::<Vec<_>>(),
            (0..32).map(|x| x * 2).collect::<Vec<_>>()
        );
        assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 32);
        drop(out);
        assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 0, "every value dropped once");
    }

    #[test]
    fn a_failed_map_drops_each_value_it_had_placed_once() {
        let count = Arc::new(std::sync::atomic::AtomicIsize::new(0));
        let runner = Deferred(inline().0, Arc::new(Mutex::new(Vec::new())));
        let result = map_async(&runner, 0..32, Some(3), None, false);
        // Chunks 10..5 are placed, then chunk 4 fails; 3..0 arrive after.
        complete_in_reverse(&runner.1, &count, Some(4));
        assert_eq!(result.get().unwrap_err().message(), "failed");
        assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 0, "no value leaked");
    }

    /// Runs each chunk on a thread of its own after a pause, counting the
    /// chunks submitted and not yet done.
    #[derive(Clone)]
    struct Threaded(
        Arc<ThreadEngine>,
        Arc<(std::sync::atomic::AtomicUsize, std::sync::atomic::AtomicUsize)>,
    );

    impl ChunkRunner<u64, u64> for Threaded {
        type Engine = ThreadEngine;
        fn engine(&self) -> &Arc<ThreadEngine> {
            &self.0
        }
        fn run_chunk_held(&self, items: Vec<u64>, done: ChunkDone<u64>, _: Arc<Ticket>) {
            self.run_chunk(items, done)
        }
        fn run_chunk(&self, items: Vec<u64>, done: ChunkDone<u64>) {
            use std::sync::atomic::Ordering::SeqCst;
            let flight = self.1.clone();
            let now = flight.0.fetch_add(1, SeqCst) + 1;
            flight.1.fetch_max(now, SeqCst);
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(10));
                flight.0.fetch_sub(1, SeqCst);
                done(items.into_iter().map(|x| Ok(x + 1)).collect())
            });
        }
    }

    #[test]
    fn a_waited_map_keeps_a_bounded_window_of_chunks_in_flight() {
        use std::sync::atomic::Ordering::SeqCst;
        let engine = inline().0;
        let window = in_flight_chunks(2);
        let runner = Threaded(engine.clone(), Default::default());
        let out = map_async(&runner, 0..2000, Some(4), None, true).get().unwrap();
        assert_eq!(out, (1..=2000).collect::<Vec<u64>>());
        let most = runner.1 .1.load(SeqCst);
        assert!(most <= window, "{most} chunks in flight, window {window}");
        // Not waited (`map_async`): every chunk is submitted as it is read.
        let runner = Threaded(engine, Default::default());
        let out = map_async(&runner, 0..2000, Some(4), None, false).get().unwrap();
        assert_eq!(out.len(), 2000);
        assert!(runner.1 .1.load(SeqCst) > window, "the unwaited map was windowed");
    }

    #[test]
    fn a_waited_map_runs_every_item_after_an_error() {
        let pulled = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let p = pulled.clone();
        let input = (0..100_000u64).inspect(move |_| {
            p.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        });
        // Item 13 fails (see `Inline`), in the fifth chunk of 3.
        let e = map_async(&inline(), input, Some(3), None, true).get().unwrap_err();
        assert_eq!(e.message(), "13");
        assert_eq!(pulled.load(std::sync::atomic::Ordering::SeqCst), 100_000);
    }

    #[test]
    fn imap_reads_input_lazily() {
        let pulled = Rc::new(Cell::new(0u64));
        let p = pulled.clone();
        let input = (0..u64::MAX).inspect(move |_| p.set(p.get() + 1));
        let mut it = IMap::new(inline(), input, Some(2), true, None);
        assert_eq!(it.next().unwrap().unwrap(), 0);
        // A bounded window of chunks, not the whole (endless) input.
        assert!(pulled.get() <= 2 * 16 + 2, "pulled {}", pulled.get());
        let rest: Vec<_> = it.take(20).collect();
        assert_eq!(rest[12].as_ref().unwrap_err().message(), "13");
        assert_eq!(*rest[13].as_ref().unwrap(), 28);
    }
}
