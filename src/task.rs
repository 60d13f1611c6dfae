//! How a function crosses a process boundary.
//!
//! A worker is the same executable as its parent, so every function exists in
//! both at the same offset from any other function of the image. A task is sent
//! as the offset of a monomorphised *trampoline* (`run_chunk::<F, A, M>`) from a
//! fixed anchor, plus its encoded arguments. The worker adds the offset to its
//! own anchor, which is only sound because the worker has first proved it is the
//! same build (see [`fingerprint`]).
//!
//! The function value itself is never sent: tasks must be zero-sized (`fn` items
//! and closures that capture nothing), so the worker can conjure one. A closure
//! that captures is rejected at compile time by an assertion in
//! [`trampoline_offset`].

use std::cell::RefCell;
use std::panic::{self, AssertUnwindSafe};
use std::sync::OnceLock;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind};

mod chunk;

pub(crate) use chunk::{
    decode_one, decode_outcomes, encode_chunk, encode_failures, encode_one, ItemReader, Outcomes,
};

/// A function that can be run as a task with arguments `Args`.
///
/// It is implemented for every `Fn` of zero to six arguments: a one-argument
/// function takes its argument as is (`apply(square, 7)`), a function of several
/// arguments takes them as a tuple (`apply(add, (2, 3))`). `Marker` only tells
/// the implementations apart; it is always inferred.
///
/// Process pools also need the function to be [`Copy`] and zero-sized: a `fn`
/// item or a closure that captures nothing. A capturing closure fails to compile:
///
/// ```compile_fail
/// use multiproc::Pool;
/// let pool = Pool::new(1).unwrap();
/// let offset = 10u64;
/// // error: a task sent to a process must not capture anything
/// let _ = pool.apply(move |x: u64| x + offset, 1);
/// ```
///
/// # Examples
///
/// ```
/// fn add(a: u64, b: u64) -> u64 { a + b }
///
/// let pool = multiproc::Pool::new(1)?;
/// assert_eq!(pool.apply(add, (1, 2))?, 3); // a plain fn
/// assert_eq!(pool.apply(|x: u64| x + 1, 1)?, 2); // a closure that captures nothing
/// # Ok::<(), multiproc::Error>(())
/// ```
pub trait TaskFn<Args, Marker>: Send + Sync + 'static {
    /// What the function returns.
    type Output;
    /// Calls the function with the arguments unpacked.
    fn call(&self, args: Args) -> Self::Output;
}

impl<F, A, R> TaskFn<A, fn(A) -> R> for F
where
    F: Fn(A) -> R + Send + Sync + 'static,
{
    type Output = R;
    fn call(&self, args: A) -> R {
        self(args)
    }
}

impl<F, R> TaskFn<(), fn() -> R> for F
where
    F: Fn() -> R + Send + Sync + 'static,
{
    type Output = R;
    fn call(&self, _args: ()) -> R {
        self()
    }
}

macro_rules! impl_task_fn {
    ($($t:ident $v:ident),+) => {
        impl<Func, Ret, $($t),+> TaskFn<($($t,)+), fn($($t),+) -> Ret> for Func
        where
            Func: Fn($($t),+) -> Ret + Send + Sync + 'static,
        {
            type Output = Ret;
            fn call(&self, ($($v,)+): ($($t,)+)) -> Ret {
                self($($v),+)
            }
        }
    };
}

impl_task_fn!(A a, B b);
impl_task_fn!(A a, B b, C c);
impl_task_fn!(A a, B b, C c, D d);
impl_task_fn!(A a, B b, C c, D d, E e);
impl_task_fn!(A a, B b, C c, D d, E e, G g);

/// A function that a thread pool or thread executor runs once, as one call
/// (`apply`, `apply_async`, `submit`): any `FnOnce` of zero to six arguments,
/// so a closure may move what it captures out (`move || data`).
///
/// Arguments are passed as for [`TaskFn`]: one as is, several as a tuple.
///
/// # Examples
///
/// ```
/// let pool = multiproc::ThreadPool::new(1)?;
/// let words = vec![String::from("owned"), String::from("data")];
/// // Moves `words` out: FnOnce, not Fn.
/// let joined = pool.apply(move || words.join(" "), ())?;
/// assert_eq!(joined, "owned data");
/// # Ok::<(), multiproc::Error>(())
/// ```
pub trait TaskOnce<Args, Marker>: Send + 'static {
    /// What the function returns.
    type Output;
    /// Calls the function with the arguments unpacked, consuming it.
    fn call_once(self, args: Args) -> Self::Output;
}

impl<F, A, R> TaskOnce<A, fn(A) -> R> for F
where
    F: FnOnce(A) -> R + Send + 'static,
{
    type Output = R;
    fn call_once(self, args: A) -> R {
        self(args)
    }
}

impl<F, R> TaskOnce<(), fn() -> R> for F
where
    F: FnOnce() -> R + Send + 'static,
{
    type Output = R;
    fn call_once(self, _args: ()) -> R {
        self()
    }
}

macro_rules! impl_task_once {
    ($($t:ident $v:ident),+) => {
        impl<Func, Ret, $($t),+> TaskOnce<($($t,)+), fn($($t),+) -> Ret> for Func
        where
            Func: FnOnce($($t),+) -> Ret + Send + 'static,
        {
            type Output = Ret;
            fn call_once(self, ($($v,)+): ($($t,)+)) -> Ret {
                self($($v),+)
            }
        }
    };
}

impl_task_once!(A a, B b);
impl_task_once!(A a, B b, C c);
impl_task_once!(A a, B b, C c, D d);
impl_task_once!(A a, B b, C c, D d, E e);
impl_task_once!(A a, B b, C c, D d, E e, G g);

/// Runs one chunk of items in the worker: `input` is a chunk as made by
/// [`encode_chunk`], `fds` the descriptors that came with it, `out`
/// receives the chunk of their outcomes; returns the outcomes' descriptors.
pub(crate) type Trampoline = fn(input: &[u8], fds: Fds, out: &mut Vec<u8>) -> Fds;

type Fds = Vec<std::os::fd::OwnedFd>;

// --- task entries -----------------------------------------------------------
//
// A worker must never jump to an address a peer chose. So what crosses the
// channel is not the address of a function but the offset of an *entry*: a
// constant object that the compiler emits for each monomorphised trampoline,
// holding a magic value and the trampoline's address. The worker accepts an
// offset only when the object it names
//
// 1. lies wholly inside a segment of this executable that is read-only once
//    relocated (so no task, argument or other data could have written it),
// 2. is aligned for `Entry` and carries `ENTRY_MAGIC`, and
// 3. holds an address inside this executable's code.
//
// Read-only data is fixed when the program is linked; the only aligned,
// read-only objects that start with the magic are entries, because the
// magic is compared against immediates (see `entry_at`), never stored as a
// standalone constant. So an accepted offset names a compiler-made entry and
// its `run` is a real trampoline: a forged offset is an error, never a jump.
// Offsets between two objects of one image are the same in every process
// running it, which the worker's fingerprint check establishes first.

/// One task entry point, as it sits in the image's read-only data.
#[repr(C)]
pub(crate) struct Entry {
    magic: [u64; 2],
    run: Trampoline,
}

const ENTRY_MAGIC: [u64; 2] = [0x6d75_6c74_6970_726f, 0x635f_656e_7472_7921];

/// The fixed point every entry offset is measured from.
static ANCHOR: Entry = Entry { magic: ENTRY_MAGIC, run: anchor };

/// The entry of the trampoline for `F`; one constant per instantiation.
struct EntryOf<F, A, M>(std::marker::PhantomData<(F, A, M)>);

impl<F, A, M> EntryOf<F, A, M>
where
    F: TaskFn<A, M> + Copy,
    A: DeserializeOwned,
    F::Output: Serialize,
{
    const ENTRY: &'static Entry = &Entry { magic: ENTRY_MAGIC, run: run_chunk::<F, A, M> };
}

/// A trampoline that does nothing; also fixes the code layout measured by
/// [`fingerprint`].
#[inline(never)]
fn anchor(_input: &[u8], _fds: Fds, _out: &mut Vec<u8>) -> Fds {
    Vec::new()
}

/// The offset of the entry for `F`'s trampoline from [`ANCHOR`].
///
/// Fails to compile when `F` is not zero-sized, i.e. when it captures state.
pub(crate) fn trampoline_offset<F, A, M>() -> i64
where
    F: TaskFn<A, M> + Copy,
    A: DeserializeOwned,
    F::Output: Serialize,
{
    const {
        assert!(
            std::mem::size_of::<F>() == 0,
            "multiproc: a task sent to a process must not capture anything; \
             pass state as an argument or through the pool's initializer"
        )
    };
    let entry: *const Entry = EntryOf::<F, A, M>::ENTRY;
    (entry as usize as i64).wrapping_sub(&ANCHOR as *const Entry as usize as i64)
}

/// The trampoline whose entry is at `offset` from this image's [`ANCHOR`],
/// after checking that an entry really is there (see "task entries" above).
///
/// # Errors
/// A `Protocol` failure naming the offset when it names no entry.
pub(crate) fn trampoline_at(offset: i64) -> Result<Trampoline, Failure> {
    let refuse = |why: &str| {
        Failure::new(
            FailureKind::Protocol,
            format!(
                "the worker refused a task: offset {offset:#x} {why}, so it names no task \
                 entry of this build (a corrupt or forged task frame)"
            ),
        )
    };
    let addr = (&ANCHOR as *const Entry as usize as i64).wrapping_add(offset) as usize;
    let image = crate::sys::image();
    if addr % std::mem::align_of::<Entry>() != 0 {
        return Err(refuse("is misaligned"));
    }
    if !image.is_constant(addr, std::mem::size_of::<Entry>()) {
        return Err(refuse("points outside this executable's read-only data"));
    }
    let at = addr as *const u64;
    // SAFETY: `addr..addr + size_of::<Entry>()` lies inside a mapped,
    // read-only segment of this image (checked above) and is aligned for
    // `Entry`, hence for u64; any bit pattern is a valid u64.
    let (m0, m1, run) = unsafe { (at.read(), at.add(1).read(), at.add(2).cast::<usize>().read()) };
    // Immediates behind black_box: the magic must not appear in read-only
    // data as a constant of its own, or it would look like an entry.
    let magic = std::hint::black_box(0x6d75_6c74_6970_726f_u64);
    let magic2 = std::hint::black_box(0x635f_656e_7472_7921_u64);
    if m0 != magic || m1 != magic2 {
        return Err(refuse("does not hold a task entry"));
    }
    if !image.is_code(run) {
        return Err(refuse("holds an entry whose code is outside this executable"));
    }
    // SAFETY: by the argument under "task entries", an aligned read-only
    // object carrying the magic is a compiler-made `Entry`, whose `run` field
    // (just read as an integer) is a `Trampoline`.
    Ok(unsafe { std::mem::transmute::<usize, Trampoline>(run) })
}

fn run_chunk<F, A, M>(input: &[u8], fds: Fds, out: &mut Vec<u8>) -> Fds
where
    F: TaskFn<A, M> + Copy,
    A: DeserializeOwned,
    F::Output: Serialize,
{
    // SAFETY: `trampoline_offset` asserted at compile time that `F` is
    // zero-sized and it is `Copy`, so it holds no state and no invariant a
    // conjured value could break: this is a copy of the sender's `F`.
    let f: F = unsafe { std::mem::zeroed() };
    let numbers = crate::bytes::Plain::<A>::of().is_some()
        && crate::bytes::Plain::<F::Output>::of().is_some();
    if numbers && fds.is_empty() {
        // Numbers in, numbers out: no handle to take or to attach, so no
        // descriptor lists (the `apply_async(inc, x)` hot path).
        chunk::run(input, out, |args| f.call(args));
        return Vec::new();
    }
    let ((), out_fds) = crate::fdpass::collect(|| {
        crate::fdpass::supply(fds, || chunk::run(input, out, |args| f.call(args)))
    });
    out_fds
}

/// Runs the trampoline whose entry is at `offset` over `chunk`, with `fds`
/// for the handles in the arguments; returns the outcomes' descriptors. An
/// offset that names no entry runs nothing: every item fails instead.
pub(crate) fn run_chunk_at(
    offset: i64,
    chunk: &[u8],
    fds: Vec<std::os::fd::OwnedFd>,
    out: &mut Vec<u8>,
) -> Vec<std::os::fd::OwnedFd> {
    let trampoline = match trampoline_at(offset) {
        Ok(t) => t,
        Err(failure) => {
            encode_failures(&failure, ItemReader::new(chunk).count(), out);
            return Vec::new();
        }
    };
    trampoline(chunk, fds, out)
}

// --- failures that travel back from a worker ------------------------------

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) enum FailureKind {
    Panic,
    Serialize,
    Deserialize,
    Protocol,
}

/// A task's failure as it crosses from a worker to its parent.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Failure {
    pub(crate) kind: FailureKind,
    pub(crate) message: String,
    pub(crate) location: Option<String>,
}

impl Failure {
    pub(crate) fn new(kind: FailureKind, message: String) -> Failure {
        Failure { kind, message, location: None }
    }

    pub(crate) fn into_error(self, pid: Option<u32>) -> Error {
        let err = match self.kind {
            FailureKind::Panic => return Error::panicked(self.message, self.location, pid),
            FailureKind::Serialize => Error::new(ErrorKind::Serialize, self.message),
            FailureKind::Deserialize => Error::new(ErrorKind::Deserialize, self.message),
            FailureKind::Protocol => Error::new(ErrorKind::Protocol, self.message),
        };
        match pid {
            Some(pid) => err.with_pid(pid),
            None => err,
        }
    }
}

// --- panics ---------------------------------------------------------------

thread_local! {
    /// Set while this thread runs a task: the panic hook then records the
    /// panic here instead of printing it, since the task's caller reports it.
    static CAPTURE: RefCell<Captured> = const { RefCell::new(None) };
}

fn install_hook() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            let captured = CAPTURE.with(|c| {
                let mut c = c.borrow_mut();
                match c.as_mut() {
                    Some(slot) => {
                        let loc = info
                            .location()
                            .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()))
                            .unwrap_or_default();
                        *slot = Some((payload_message(info.payload()), loc));
                        true
                    }
                    None => false,
                }
            });
            if !captured {
                previous(info);
            }
        }));
    });
}

fn payload_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(a panic payload that is not a string)".to_string()
    }
}

/// Runs `f`, turning a panic into a [`Failure`] with its message and location.
///
/// Only the `catch_unwind` is generic: the capture around it is out of line,
/// so each of the many instances (one per task type and call site) stays a
/// few instructions of code to generate and link.
pub(crate) fn catch_panic<R>(f: impl FnOnce() -> R) -> Result<R, Failure> {
    let outer = Capture::begin();
    let result = panic::catch_unwind(AssertUnwindSafe(f));
    let captured = outer.end();
    result.map_err(|payload| captured.into_failure(payload))
}

/// What the panic hook captured for one [`catch_panic`], and what an outer
/// one had captured before (restored when the inner one ends).
type Captured = Option<Option<(String, String)>>;

/// The capture of an enclosing [`catch_panic`], set aside while `f` runs.
struct Capture(Captured);

impl Capture {
    #[inline(never)]
    fn begin() -> Capture {
        install_hook();
        Capture(CAPTURE.with(|c| c.borrow_mut().replace(None)))
    }

    /// Restores the enclosing capture; returns this one's.
    #[inline(never)]
    fn end(self) -> Capture {
        Capture(CAPTURE.with(|c| std::mem::replace(&mut *c.borrow_mut(), self.0)))
    }

    #[inline(never)]
    fn into_failure(self, payload: Box<dyn std::any::Any + Send>) -> Failure {
        let (message, location) = match self.0.flatten() {
            Some((m, l)) => (m, if l.is_empty() { None } else { Some(l) }),
            None => (payload_message(&*payload), None),
        };
        Failure { kind: FailureKind::Panic, message, location }
    }
}

// --- build identity -------------------------------------------------------

/// Sixteen bytes that differ between two builds of the executable.
///
/// Made from the identity of the executable file (device, inode, size and
/// modification time of `/proc/self/exe`, which a worker re-executes, so a
/// rebuilt binary on disk cannot be confused with the one running), the crate
/// version, and the layout of this crate's code in the image.
pub(crate) fn fingerprint() -> [u8; 16] {
    static PRINT: OnceLock<[u8; 16]> = OnceLock::new();
    *PRINT.get_or_init(|| {
        use std::hash::{Hash, Hasher};
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(crate::sys::OWN_EXECUTABLE).ok();
        let ident = meta.map(|m| (m.dev(), m.ino(), m.size(), m.mtime(), m.mtime_nsec()));
        let layout = {
            let a: Trampoline = anchor;
            let b: fn() -> [u8; 16] = fingerprint;
            (b as usize).wrapping_sub(a as usize)
        };
        let mut out = [0u8; 16];
        for (i, half) in out.chunks_mut(8).enumerate() {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            (i, ident, layout, env!("CARGO_PKG_VERSION")).hash(&mut h);
            half.copy_from_slice(&h.finish().to_le_bytes());
        }
        out
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add(a: u64, b: u64) -> u64 {
        a + b
    }

    fn run<F, A, M>(_f: F, args: Vec<A>) -> Vec<crate::Result<F::Output>>
    where
        F: TaskFn<A, M> + Copy,
        A: Serialize + DeserializeOwned,
        F::Output: Serialize + DeserializeOwned,
    {
        let (input, fds) = encode_chunk(&args);
        let mut out = Vec::new();
        let fds = run_chunk_at(trampoline_offset::<F, A, M>(), &input, fds, &mut out);
        decode_outcomes(&out, fds, args.len(), None).into_iter().collect()
    }

    #[test]
    fn trampoline_runs_multi_argument_functions() {
        let out = run(add, vec![(1u64, 2u64), (3, 4)]);
        assert_eq!(out.into_iter().map(|r| r.unwrap()).collect::<Vec<_>>(), vec![3, 7]);
    }

    #[test]
    fn panic_in_one_item_fails_only_that_item() {
        let out = run(|x: u32| if x == 1 { panic!("bad {x}") } else { x }, vec![0u32, 1, 2]);
        assert_eq!(*out[0].as_ref().unwrap(), 0);
        let err = out[1].as_ref().unwrap_err();
        assert!(err.is_panic());
        assert_eq!(err.panic_message(), Some("bad 1"));
        assert!(err.location().unwrap().contains("task.rs"), "{err}");
        assert_eq!(*out[2].as_ref().unwrap(), 2);
    }

    /// The entry offset of `f`'s trampoline, its types inferred.
    pub(crate) fn offset_of<F, A, M>(_f: F) -> i64
    where
        F: TaskFn<A, M> + Copy,
        A: DeserializeOwned,
        F::Output: Serialize,
    {
        trampoline_offset::<F, A, M>()
    }

    #[test]
    fn only_offsets_of_task_entries_are_accepted() {
        let real = offset_of(add);
        assert!(trampoline_at(real).is_ok());
        assert!(trampoline_at(0).is_ok(), "the anchor is an entry too");
        let anchor_entry = &ANCHOR as *const Entry as usize as i64;
        // Code of this image, a function that is not an entry.
        let code = (add as fn(u64, u64) -> u64) as usize as i64 - anchor_entry;
        for forged in [0x4141_0000, -0x4141_0000, real + 1, real + 8, code, i64::MIN, i64::MAX] {
            let err = trampoline_at(forged).err().unwrap_or_else(|| panic!("{forged:#x} accepted"));
            assert_eq!(err.kind, FailureKind::Protocol);
            assert!(err.message.contains("names no task entry"), "{}", err.message);
        }
    }

    #[test]
    fn a_forged_offset_fails_every_item_and_runs_nothing() {
        let (input, fds) = encode_chunk(&[1u32, 2, 3]);
        let mut out = Vec::new();
        let fds = run_chunk_at(0x4141_0000, &input, fds, &mut out);
        let outcomes: Vec<_> = decode_outcomes::<u32>(&out, fds, 3, None).into_iter().collect();
        assert_eq!(outcomes.len(), 3);
        assert!(outcomes
            .iter()
            .all(|o| o.as_ref().is_err_and(|e| e.kind() == ErrorKind::Protocol)));
    }

    #[test]
    fn fingerprint_is_stable_within_a_process() {
        assert_eq!(fingerprint(), fingerprint());
    }
}

/// The parent's and a worker's share of one `map` chunk of 125,000 items,
/// run in one process: a test that a chunk of the default size round-trips,
/// and the measurement `valgrind --tool=callgrind` counts per item
/// (`cargo test --release --lib chunk_micro`).
#[cfg(test)]
mod micro {
    use super::*;

    fn inc(x: u64) -> u64 {
        x + 1
    }

    #[test]
    fn chunk_micro() {
        let n = 125_000u64;
        let items: Vec<u64> = (0..n).collect();
        let offset = super::tests::offset_of(inc);
        let (input, fds) = encode_chunk(&items);
        let mut out = Vec::new();
        let fds = run_chunk_at(offset, &input, fds, &mut out);
        let got = decode_outcomes::<u64>(&out, fds, items.len(), None).into_values().unwrap();
        assert_eq!(got.len(), n as usize);
        assert!(got.iter().enumerate().all(|(i, r)| *r == i as u64 + 1));
    }
}
