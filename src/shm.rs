//! Shared memory: regions that travel between processes as handles, and the
//! `Value` and `Array` of plain data built on them.
//!
//! # Why safe code cannot misuse the memory
//!
//! *Bounds.* A region's size is the size of its file, read when it is mapped,
//! and every file is sealed against shrinking and growing when it is made
//! ([`sys::memfd_sealed`]); a region that arrives without that seal is
//! refused, because a file that shrank under its mapping raises SIGBUS on the
//! next access. A handle's element count arrives in the message, so decoding
//! checks it against the region's size (and the element type's alignment
//! against the mapping's), and a mismatch is a `Deserialize` error naming the
//! type and both sizes: no length in a message is ever used unchecked.
//!
//! *Aliasing.* The elements are accessed in only two ways. Outside a guard,
//! every access is a copy made of relaxed atomic loads or stores of the
//! element's natural width ([`load`], [`store`]): concurrent `get`s and
//! `set`s from several threads are then not data races, and a torn element
//! is still a valid value because every bit pattern of a [`Plain`] (`Pod`) type is.
//! No reference to the elements exists outside a guard. A guard
//! ([`ArrayGuard`], [`ValueGuard`]) hands out `&mut` only while its thread
//! holds the array's lock, and every other access to the same memory in this
//! process waits for that lock: all handles to one array carry the same lock
//! (clones share it; a handle travels with it; an array made without a lock
//! never has a guard), `get`/`set`/`to_vec` of a locked array take it, a
//! second guard in the holding thread is refused (the mutex is
//! error-checking: `EDEADLK` becomes an error), `get`/`set` in the thread
//! that holds a guard are refused (see [`GUARDED`]), and
//! [`Lock::release`](crate::Lock::release) cannot release a lock a guard
//! holds. Other processes that cooperate take the same process-shared mutex.
//!
//! *Trust.* Sharing memory with a process lets it write that memory at any
//! time; what it writes is only ever read as `Plain` values, so a hostile
//! peer can make the values wrong, never make this process read or write
//! outside the memory it mapped.

use std::marker::PhantomData;
use std::mem::{align_of, size_of, MaybeUninit};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU16, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, ErrorKind, Result};
use crate::sync::{Lock, LockGuard};
use crate::{fdpass, sys};

/// Which file a region maps, the same in every mapping of it (device and
/// inode of the memfd): two handles decoded from two messages map the same
/// file at two addresses, and this is how they are known to be one.
pub(crate) type RegionId = (u64, u64);

struct Mapping {
    fd: OwnedFd,
    ptr: *mut u8,
    /// The file's size, fixed by its seals.
    len: usize,
    /// The mapped length (a zero-length file still gets one page).
    map_len: usize,
    id: RegionId,
}

// SAFETY: the mapping is plain shared memory; what is stored in it is
// accessed only through atomics, pthread mutexes or under a `Lock`.
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the mapping is ours and, with the last reference gone, unused.
        unsafe { sys::unmap(self.ptr, self.map_len) };
    }
}

/// A zero-filled region of shared memory. Clones share it; sending it to
/// another process maps the same memory there. It is freed when the last
/// process lets go of it, even if others were killed.
#[derive(Clone)]
pub(crate) struct Region(Arc<Mapping>);

impl Region {
    pub(crate) fn new(len: usize) -> Result<Region> {
        let fd =
            sys::memfd_sealed(len).map_err(|e| Error::io("could not create shared memory", e))?;
        Self::map(fd)
    }

    /// As [`Region::new`], its file named `name` (seen in `/proc`).
    pub(crate) fn new_named(name: &std::ffi::CStr, len: usize) -> Result<Region> {
        let fd = sys::memfd_sealed_named(name, len)
            .map_err(|e| Error::io("could not create shared memory", e))?;
        Self::map(fd)
    }

    /// Maps all of `fd`, whose size must be sealed.
    pub(crate) fn map(fd: OwnedFd) -> Result<Region> {
        let (len, id) = sys::file_len_and_id(fd.as_fd())
            .map_err(|e| Error::io("could not inspect shared memory", e))?;
        let map_len = len.max(1);
        let ptr = sys::map_shared(fd.as_fd(), map_len)
            .map_err(|e| Error::io("could not map shared memory", e))?;
        Ok(Region(Arc::new(Mapping { fd, ptr, len, map_len, id })))
    }

    pub(crate) fn ptr(&self) -> *mut u8 {
        self.0.ptr
    }

    /// The region's size in bytes.
    pub(crate) fn len(&self) -> usize {
        self.0.len
    }

    pub(crate) fn id(&self) -> RegionId {
        self.0.id
    }

    /// A descriptor of the region's file, to send to another process.
    pub(crate) fn dup_fd(&self) -> Result<OwnedFd> {
        self.0
            .fd
            .try_clone()
            .map_err(|e| Error::io("could not duplicate shared memory's handle", e))
    }

    /// Copies `src` into the ring of `cap` bytes (a power of two) that
    /// starts `at` bytes into the region, at stream position `pos`,
    /// wrapping at the ring's end.
    ///
    /// # Panics
    /// If the ring is not inside the region or `src` is longer than it.
    pub(crate) fn write_wrapping(&self, at: usize, cap: usize, pos: u64, src: &[u8]) {
        let (off, first) = self.wrap(at, cap, pos, src.len());
        // SAFETY: `wrap` checked that `at + cap <= len` and `src.len() <=
        // cap`, and `off + first <= cap`: both copies stay inside the ring,
        // which `src` (private memory) does not overlap.
        unsafe {
            let ring = self.ptr().add(at);
            std::ptr::copy_nonoverlapping(src.as_ptr(), ring.add(off), first);
            std::ptr::copy_nonoverlapping(src.as_ptr().add(first), ring, src.len() - first);
        }
    }

    /// Copies `dst.len()` bytes out of the ring (as [`Region::write_wrapping`]
    /// names it) at stream position `pos`, wrapping. Another process may
    /// write the ring meanwhile: the bytes may then be wrong, never read
    /// from outside it.
    pub(crate) fn read_wrapping(&self, at: usize, cap: usize, pos: u64, dst: &mut [u8]) {
        let (off, first) = self.wrap(at, cap, pos, dst.len());
        // SAFETY: as in `write_wrapping`.
        unsafe {
            let ring = self.ptr().add(at);
            std::ptr::copy_nonoverlapping(ring.add(off), dst.as_mut_ptr(), first);
            std::ptr::copy_nonoverlapping(ring, dst.as_mut_ptr().add(first), dst.len() - first);
        }
    }

    /// Where a copy of `len` bytes at `pos` starts in the ring, and how much
    /// of it fits before the ring's end.
    fn wrap(&self, at: usize, cap: usize, pos: u64, len: usize) -> (usize, usize) {
        assert!(cap.is_power_of_two() && at.checked_add(cap).is_some_and(|end| end <= self.len()));
        assert!(len <= cap, "a copy of {len} bytes into a ring of {cap}");
        let off = (pos as usize) & (cap - 1);
        (off, len.min(cap - off))
    }
}

impl Serialize for Region {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        fdpass::serialize_fd(self.0.fd.as_fd(), s)
    }
}

impl<'de> Deserialize<'de> for Region {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        use serde::de::Error as _;
        let fd = fdpass::deserialize_fd(d)?;
        if !sys::cannot_shrink(fd.as_fd()) {
            return Err(D::Error::custom(
                "a shared-memory handle arrived whose file is not sealed against shrinking \
                 (it was not made by multiproc, or not by this version): it is refused, since \
                 a file that shrinks under its mapping crashes the process with SIGBUS; send \
                 only handles multiproc made",
            ));
        }
        Region::map(fd).map_err(D::Error::custom)
    }
}

/// A shared region holding one `T` at its start.
pub(crate) struct Cell<T> {
    region: Region,
    _t: PhantomData<T>,
}

impl<T> Clone for Cell<T> {
    fn clone(&self) -> Self {
        Cell { region: self.region.clone(), _t: PhantomData }
    }
}

impl<T> Cell<T> {
    /// A zeroed `T` in fresh shared memory (`T` must be valid all-zero).
    pub(crate) fn zeroed() -> Result<Cell<T>> {
        Ok(Cell { region: Region::new(size_of::<T>())?, _t: PhantomData })
    }

    pub(crate) fn ptr(&self) -> *mut T {
        self.region.ptr().cast()
    }

    /// Which shared memory this is, the same in every process and mapping.
    pub(crate) fn id(&self) -> RegionId {
        self.region.id()
    }
}

impl<T: Sync> Cell<T> {
    /// The shared value, for types made of atomics.
    pub(crate) fn get(&self) -> &T {
        // SAFETY: the region is at least size_of::<T>() bytes (checked when
        // made or decoded), page-aligned, zero-initialised (valid for the
        // atomics-only types used here), and lives as long as `self`; T: Sync
        // allows shared access.
        unsafe { &*self.ptr() }
    }
}

impl<T> Serialize for Cell<T> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        self.region.serialize(s)
    }
}

impl<'de, T> Deserialize<'de> for Cell<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        use serde::de::Error as _;
        let region = Region::deserialize(d)?;
        if region.len() < size_of::<T>() || align_of::<T>() > sys::page_size() {
            return Err(D::Error::custom(format!(
                "a shared `{}` arrived in a region of {} bytes; it needs {}",
                std::any::type_name::<T>(),
                region.len(),
                size_of::<T>()
            )));
        }
        Ok(Cell { region, _t: PhantomData })
    }
}

/// Plain data that may live in shared memory: every
/// [`bytemuck::Pod`] type that is `Send + Sync` — numbers, arrays of them,
/// and your own `#[repr(C)]` structs with `#[derive(Pod, Zeroable)]`, whose
/// derive checks at compile time that the struct has no padding, pointers
/// or invalid bit patterns. Nothing to implement, no `unsafe`.
///
/// A hostile process sharing the memory can write any bytes there; a `Pod`
/// type is valid for every bit pattern, so it can make the values wrong,
/// never undefined.
///
/// # Examples
///
/// ```
/// use bytemuck::{Pod, Zeroable};
/// use multiproc::{Array, Process, Value};
///
/// #[repr(C)]
/// #[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
/// struct Point {
///     x: f64,
///     y: f64,
///     id: u64,
/// }
///
/// fn shift(v: Value<Point>) {
///     let mut g = v.lock().unwrap();
///     g.x += 1.0;
///     g.id = 7;
/// }
///
/// let v = Value::new(Point { x: 1.0, y: 2.0, id: 0 })?;
/// let mut p = Process::new(shift, v.clone());
/// p.start()?;
/// p.join()?;
/// assert_eq!(v.get(), Point { x: 2.0, y: 2.0, id: 7 });
///
/// let a = Array::from_slice(&[Point::zeroed(); 3])?;
/// assert_eq!(a.get(2)?, Point::zeroed());
/// # Ok::<(), multiproc::Error>(())
/// ```
///
/// Without a direct dependency on `bytemuck`, derive through the
/// re-export: `#[derive(multiproc::bytemuck::Pod, multiproc::bytemuck::Zeroable)]`
/// with `#[bytemuck(crate = "multiproc::bytemuck")]` on the struct.
pub trait Plain: bytemuck::Pod + Send + Sync {}

impl<T: bytemuck::Pod + Send + Sync> Plain for T {}

/// The width of the atomic accesses that copy a `T`: the widest of 8, 4, 2
/// and 1 bytes that divides its size and that its alignment allows. One
/// width per type, so every access to an array's memory has the same size.
const fn grain<T>() -> usize {
    let (size, align) = (size_of::<T>(), align_of::<T>());
    if size % 8 == 0 && align >= align_of::<AtomicU64>() {
        8
    } else if size % 4 == 0 && align >= align_of::<AtomicU32>() {
        4
    } else if size % 2 == 0 && align >= align_of::<AtomicU16>() {
        2
    } else {
        1
    }
}

/// Copies the `T` at `p` out with relaxed atomic loads (see the module
/// comment: never a data race, and any bits form a valid `T`).
///
/// # Safety
/// `p` must be aligned and inside a live mapping for `size_of::<T>()` bytes.
unsafe fn load<T: Plain>(p: *const T) -> T {
    let mut out = MaybeUninit::<T>::uninit();
    let dst = out.as_mut_ptr().cast::<u8>();
    let g = grain::<T>();
    for k in 0..size_of::<T>() / g {
        // SAFETY: chunk `k` lies inside the `T` at `p` and inside `out`, and is
        // aligned to `g` because `T`'s alignment is at least `g` (see
        // `grain`); the mapping is live per the caller.
        unsafe {
            let (src, dst) = (p.cast::<u8>().add(k * g), dst.add(k * g));
            match g {
                8 => dst
                    .cast::<u64>()
                    .write(AtomicU64::from_ptr(src.cast_mut().cast()).load(RELAXED)),
                4 => dst
                    .cast::<u32>()
                    .write(AtomicU32::from_ptr(src.cast_mut().cast()).load(RELAXED)),
                2 => dst
                    .cast::<u16>()
                    .write(AtomicU16::from_ptr(src.cast_mut().cast()).load(RELAXED)),
                _ => dst.write(AtomicU8::from_ptr(src.cast_mut()).load(RELAXED)),
            }
        }
    }
    // SAFETY: every byte of `out` was written above, and every bit pattern
    // is a valid `T` (T: Plain).
    unsafe { out.assume_init() }
}

/// Copies `value` into the `T` at `p` with relaxed atomic stores.
///
/// # Safety
/// As [`load`].
unsafe fn store<T: Plain>(p: *mut T, value: T) {
    let src = (&value as *const T).cast::<u8>();
    let g = grain::<T>();
    for k in 0..size_of::<T>() / g {
        // SAFETY: as in `load`, with the roles of the two sides swapped.
        unsafe {
            let (src, dst) = (src.add(k * g), p.cast::<u8>().add(k * g));
            match g {
                8 => AtomicU64::from_ptr(dst.cast()).store(src.cast::<u64>().read(), RELAXED),
                4 => AtomicU32::from_ptr(dst.cast()).store(src.cast::<u32>().read(), RELAXED),
                2 => AtomicU16::from_ptr(dst.cast()).store(src.cast::<u16>().read(), RELAXED),
                _ => AtomicU8::from_ptr(dst).store(src.read(), RELAXED),
            }
        }
    }
}

const RELAXED: Ordering = Ordering::Relaxed;

/// The locks (by region, so that two mappings of one lock count as one) for
/// which a guard handing out `&mut` exists in this process. Only the thread
/// holding a lock can have a guard of it, so when `get` finds the lock
/// already held by its own thread, an entry here means a `&mut` may be live
/// and the access is refused; no entry means the thread took the lock
/// without a guard (`get_lock().acquire()`, Python's `with v.get_lock():`)
/// and no reference exists, so the access may proceed.
static GUARDED: parking_lot::Mutex<Vec<RegionId>> = parking_lot::Mutex::new(Vec::new());

fn guarded() -> parking_lot::MutexGuard<'static, Vec<RegionId>> {
    GUARDED.lock()
}

/// After taking a lock whose holder died: entries left for it belonged to
/// guards that will never be dropped (leaked with `mem::forget`).
fn forget_dead_guards(lock: RegionId) {
    guarded().retain(|&id| id != lock);
}

fn in_guard_error(what: &str) -> Error {
    Error::new(
        ErrorKind::InvalidState,
        format!(
            "{what} while this thread holds the shared memory's guard (from `lock()`): \
             read and write through the guard, or drop it first"
        ),
    )
}

/// One value of plain data in shared memory, with an optional lock: Python's
/// `multiprocessing.Value`. Pass it to a process or a pool task; writes there
/// are seen here.
///
/// A value made with [`new`](Value::new) has a lock, which [`get`](Value::get)
/// and [`set`](Value::set) take for the length of one access (as Python's
/// synchronized `value` does); [`lock`](Value::lock) holds it across a
/// read-modify-write.
///
/// # Examples
///
/// ```
/// use multiproc::{Process, Value};
///
/// fn add_ten(v: Value<i64>) {
///     let mut g = v.lock().unwrap();
///     *g += 10;
/// }
///
/// let v = Value::new(5i64)?;
/// let mut p = Process::new(add_ten, v.clone());
/// p.start()?;
/// p.join()?;
/// assert_eq!(v.get(), 15);
/// # Ok::<(), multiproc::Error>(())
/// ```
pub struct Value<T: Plain> {
    array: Array<T>,
}

impl<T: Plain> Clone for Value<T> {
    fn clone(&self) -> Self {
        Value { array: self.array.clone() }
    }
}

impl<T: Plain> Value<T> {
    /// A shared value guarded by its own [`Lock`].
    ///
    /// # Errors
    /// When shared memory cannot be created.
    pub fn new(value: T) -> Result<Value<T>> {
        Ok(Value { array: Array::from_slice(&[value])? })
    }

    /// A shared value with no lock (Python's `lock=False`): `get` and `set`
    /// are single unsynchronised (atomic, element-wide) accesses;
    /// read-modify-write is not atomic.
    ///
    /// # Errors
    /// When shared memory cannot be created.
    pub fn new_raw(value: T) -> Result<Value<T>> {
        Ok(Value { array: Array::from_slice_raw(&[value])? })
    }

    /// The current value (taking the lock, if the value has one).
    ///
    /// # Panics
    /// When this thread holds the value's guard from [`lock`](Value::lock)
    /// (read through the guard instead), or the lock fails at the OS level.
    ///
    /// # Examples
    ///
    /// ```
    /// use multiproc::{Process, Value};
    ///
    /// fn bump(v: Value<u64>) { v.set(v.get() + 1) }
    ///
    /// let v = Value::new(41u64)?;
    /// let mut p = Process::new(bump, v.clone());
    /// p.start()?;
    /// p.join()?;
    /// assert_eq!(v.get(), 42, "the child's set is seen here: the value is shared");
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    pub fn get(&self) -> T {
        self.array.get(0).unwrap_or_else(|e| panic!("Value::get: {e}"))
    }

    /// Stores `value` (taking the lock, if the value has one).
    ///
    /// # Panics
    /// As [`get`](Value::get).
    ///
    /// # Examples
    ///
    /// ```
    /// let v = multiproc::Value::new(0.5f64)?;
    /// v.set(2.5);
    /// assert_eq!(v.get(), 2.5);
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    pub fn set(&self, value: T) {
        self.array.set(0, value).unwrap_or_else(|e| panic!("Value::set: {e}"))
    }

    /// Takes the value's lock and gives access to it.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidState`](crate::ErrorKind::InvalidState) for a value
    /// made with [`new_raw`](Value::new_raw), or when this thread already
    /// holds the lock.
    pub fn lock(&self) -> Result<ValueGuard<'_, T>> {
        let guard = self.array.lock()?;
        Ok(ValueGuard { guard })
    }

    /// The value's lock, if it has one. Holding it (without a guard) makes a
    /// series of `get`s and `set`s in this thread one atomic step for every
    /// other user of the lock.
    pub fn get_lock(&self) -> Option<&Lock> {
        self.array.get_lock()
    }
}

/// Exclusive access to a [`Value`] while its lock is held.
///
/// # Examples
///
/// ```
/// let v = multiproc::Value::new(0u64)?;
/// {
///     let mut n = v.lock()?; // held across the read and the write
///     *n += 1;
/// }
/// assert_eq!(v.get(), 1);
/// # Ok::<(), multiproc::Error>(())
/// ```
pub struct ValueGuard<'a, T: Plain> {
    guard: ArrayGuard<'a, T>,
}

impl<T: Plain> ValueGuard<'_, T> {
    /// True when the lock's previous holder died holding it: the value may
    /// be half-updated.
    pub fn previous_owner_died(&self) -> bool {
        self.guard.previous_owner_died()
    }
}

impl<T: Plain> std::ops::Deref for ValueGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.guard[0]
    }
}

impl<T: Plain> std::ops::DerefMut for ValueGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.guard[0]
    }
}

/// A fixed-length array of plain data in shared memory, with an optional
/// lock: Python's `multiprocessing.Array`.
///
/// An array made with [`from_slice`](Array::from_slice) has a lock, which
/// [`get`](Array::get), [`set`](Array::set) and [`to_vec`](Array::to_vec)
/// take for the length of one call; [`lock`](Array::lock) holds it and gives
/// the elements as a slice.
///
/// # Examples
///
/// ```
/// use multiproc::{Array, Pool};
///
/// fn fill(a: Array<u32>) { for i in 0..a.len() { a.set(i, i as u32 * 2).unwrap(); } }
///
/// let a = Array::from_slice(&[0u32; 4])?;
/// Pool::new(1)?.apply(fill, a.clone())?;
/// assert_eq!(a.to_vec(), vec![0, 2, 4, 6]);
/// # Ok::<(), multiproc::Error>(())
/// ```
///
/// A guard is the only way to a reference, and while it lives the other
/// ways in are closed:
///
/// ```
/// use multiproc::{Array, ErrorKind};
///
/// let a = Array::from_slice(&[1u8, 2, 3])?;
/// let mut g = a.lock()?;
/// g[0] = 7;
/// assert_eq!(a.get(0).unwrap_err().kind(), ErrorKind::InvalidState);
/// assert!(a.lock().is_err());
/// drop(g);
/// assert_eq!(a.get(0)?, 7);
/// # Ok::<(), multiproc::Error>(())
/// ```
pub struct Array<T: Plain> {
    region: Region,
    len: usize,
    lock: Option<Lock>,
    _t: PhantomData<T>,
}

impl<T: Plain> Clone for Array<T> {
    fn clone(&self) -> Self {
        Array {
            region: self.region.clone(),
            len: self.len,
            lock: self.lock.clone(),
            _t: PhantomData,
        }
    }
}

impl<T: Plain> Array<T> {
    /// A shared copy of `values`, guarded by its own [`Lock`].
    ///
    /// # Errors
    /// When shared memory cannot be created.
    pub fn from_slice(values: &[T]) -> Result<Array<T>> {
        let mut a = Self::from_slice_raw(values)?;
        a.lock = Some(Lock::new()?);
        Ok(a)
    }

    /// A shared copy of `values` with no lock.
    ///
    /// # Errors
    /// When shared memory cannot be created.
    pub fn from_slice_raw(values: &[T]) -> Result<Array<T>> {
        Self::check_alignment().map_err(|m| Error::new(ErrorKind::InvalidArgument, m))?;
        let region = Region::new(std::mem::size_of_val(values))?;
        // SAFETY: the region holds at least `values.len()` Ts, is page-aligned
        // (enough for T, checked above) and is not yet shared.
        unsafe {
            std::ptr::copy_nonoverlapping(values.as_ptr(), region.ptr().cast::<T>(), values.len())
        };
        Ok(Array { region, len: values.len(), lock: None, _t: PhantomData })
    }

    /// A mapping starts on a page: enough alignment for any reasonable `T`.
    fn check_alignment() -> std::result::Result<(), String> {
        if align_of::<T>() > sys::page_size() {
            return Err(format!(
                "`{}` needs an alignment of {} bytes; shared memory is aligned to a page ({} bytes)",
                std::any::type_name::<T>(),
                align_of::<T>(),
                sys::page_size()
            ));
        }
        Ok(())
    }

    /// The number of elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True for an array of no elements.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn check(&self, i: usize) -> Result<()> {
        if i >= self.len {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                format!("index {i} is out of range for a shared array of {}", self.len),
            ));
        }
        Ok(())
    }

    /// Element `i`'s place: inside the mapping when `i < len`, because
    /// creating or decoding the array checked that the region holds `len` Ts.
    fn at(&self, i: usize) -> *mut T {
        debug_assert!(i < self.len);
        self.region.ptr().cast::<T>().wrapping_add(i)
    }

    /// Runs `f`, which copies elements in or out, under the lock if there
    /// is one (see the module comment for why this makes the guard sound).
    fn access<R>(&self, what: &str, f: impl FnOnce() -> R) -> Result<R> {
        let Some(lock) = &self.lock else { return Ok(f()) };
        let mutex = lock.mutex();
        match mutex.lock_unless_owned()? {
            Some(guard) => {
                if guard.previous_owner_died() {
                    forget_dead_guards(mutex.id());
                }
                let r = f();
                drop(guard);
                Ok(r)
            }
            // This thread holds the lock already: through a guard (a `&mut`
            // may be live, so no) or through `get_lock()` (no reference, so yes).
            None if guarded().contains(&mutex.id()) => Err(in_guard_error(what)),
            None => Ok(f()),
        }
    }

    /// Element `i` (taking the lock, if the array has one).
    ///
    /// # Errors
    /// [`ErrorKind::InvalidArgument`](crate::ErrorKind::InvalidArgument) when
    /// `i` is out of range;
    /// [`ErrorKind::InvalidState`](crate::ErrorKind::InvalidState) when this
    /// thread holds the array's guard from [`lock`](Array::lock).
    pub fn get(&self, i: usize) -> Result<T> {
        self.check(i)?;
        // SAFETY: `at(i)` is in range and aligned (T's alignment divides the
        // page the mapping starts on and size_of::<T>()).
        self.access("Array::get", || unsafe { load(self.at(i)) })
    }

    /// Stores `value` at `i` (taking the lock, if the array has one).
    ///
    /// # Errors
    /// As [`get`](Array::get).
    pub fn set(&self, i: usize, value: T) -> Result<()> {
        self.check(i)?;
        // SAFETY: as in `get`.
        self.access("Array::set", || unsafe { store(self.at(i), value) })
    }

    /// A copy of every element (taken under the lock at once, if the array
    /// has one).
    ///
    /// # Panics
    /// When this thread holds the array's guard from [`lock`](Array::lock)
    /// (copy through the guard instead), or the lock fails at the OS level.
    pub fn to_vec(&self) -> Vec<T> {
        self.access("Array::to_vec", || {
            // SAFETY: as in `get`, for every index below `len`.
            (0..self.len).map(|i| unsafe { load(self.at(i)) }).collect()
        })
        .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Takes the array's lock and gives access to the elements.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidState`](crate::ErrorKind::InvalidState) for an
    /// array without a lock, or when this thread already holds the lock (a
    /// second guard would be a second `&mut` to the same elements).
    pub fn lock(&self) -> Result<ArrayGuard<'_, T>> {
        let lock = self.lock.as_ref().ok_or_else(|| {
            Error::new(ErrorKind::InvalidState, "this shared value was made without a lock")
        })?;
        let mutex = lock.mutex();
        let guard = mutex.lock_unless_owned()?.ok_or_else(|| {
            Error::new(
                ErrorKind::InvalidState,
                "this thread already holds the shared memory's lock (a guard, or \
                 `get_lock()`): release it before taking a guard",
            )
        })?;
        let id = mutex.id();
        if guard.previous_owner_died() {
            forget_dead_guards(id);
        }
        guarded().push(id);
        Ok(ArrayGuard { array: self, guard, id })
    }

    /// The array's lock, if it has one. Holding it (without a guard) makes a
    /// series of `get`s and `set`s in this thread one atomic step for every
    /// other user of the lock.
    pub fn get_lock(&self) -> Option<&Lock> {
        self.lock.as_ref()
    }
}

/// Exclusive access to an [`Array`]'s elements while its lock is held.
///
/// # Examples
///
/// ```
/// let a = multiproc::Array::from_slice(&[1u32, 2, 3])?;
/// {
///     let mut xs = a.lock()?;
///     xs[0] = 10;
/// }
/// assert_eq!(a.to_vec(), vec![10, 2, 3]);
/// # Ok::<(), multiproc::Error>(())
/// ```
pub struct ArrayGuard<'a, T: Plain> {
    array: &'a Array<T>,
    guard: LockGuard<'a>,
    id: RegionId,
}

impl<T: Plain> ArrayGuard<'_, T> {
    /// True when the lock's previous holder died holding it: the elements
    /// may be half-updated.
    pub fn previous_owner_died(&self) -> bool {
        self.guard.previous_owner_died()
    }
}

impl<T: Plain> Drop for ArrayGuard<'_, T> {
    fn drop(&mut self) {
        // Before the lock is released (the `guard` field drops after this).
        let mut g = guarded();
        if let Some(i) = g.iter().position(|&id| id == self.id) {
            g.swap_remove(i);
        }
    }
}

impl<T: Plain> std::ops::Deref for ArrayGuard<'_, T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        // SAFETY: the lock is held, so nothing else in this process touches
        // the elements (module comment); the region holds `len` valid Ts for
        // as long as the array lives, aligned as `get` explains.
        unsafe { std::slice::from_raw_parts(self.array.region.ptr().cast::<T>(), self.array.len) }
    }
}

impl<T: Plain> std::ops::DerefMut for ArrayGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut [T] {
        // SAFETY: as above; the guard is borrowed mutably, so this is the
        // only reference it hands out.
        unsafe {
            std::slice::from_raw_parts_mut(self.array.region.ptr().cast::<T>(), self.array.len)
        }
    }
}

/// An array handle as it travels. `len` and `width` are the sender's claims,
/// checked on arrival: `len` against the region's real (sealed) size,
/// `width` (the [`grain`] of the sender's element type) against the
/// receiver's, so that a handle received as another element type of the same
/// size (`u64` as `[u32; 2]`) cannot mix atomic accesses of two widths on one
/// memory in one process (not allowed by Rust's memory model). Whether
/// a lock travels is the sender's word too, but only a forged handle lacks
/// the lock its array was made with, and a process that can forge handles
/// to some memory can write that memory anyway (module comment, *Trust*).
#[derive(Serialize, Deserialize)]
struct ArrayWire {
    region: Region,
    len: u64,
    width: u8,
    lock: Option<Lock>,
}

impl<T: Plain> Serialize for Array<T> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        ArrayWire {
            region: self.region.clone(),
            len: self.len as u64,
            width: grain::<T>() as u8,
            lock: self.lock.clone(),
        }
        .serialize(s)
    }
}

impl<'de, T: Plain> Deserialize<'de> for Array<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        use serde::de::Error as _;
        let w = ArrayWire::deserialize(d)?;
        Self::check_alignment().map_err(D::Error::custom)?;
        let bytes = usize::try_from(w.len).ok().and_then(|n| n.checked_mul(size_of::<T>()));
        if bytes != Some(w.region.len()) {
            return Err(D::Error::custom(format!(
                "a shared `Array<{}>` of {} elements ({} bytes each) arrived in a region of {} \
                 bytes: the handle does not describe its memory (sent as another element type, \
                 or forged)",
                std::any::type_name::<T>(),
                w.len,
                size_of::<T>(),
                w.region.len()
            )));
        }
        if usize::from(w.width) != grain::<T>() {
            return Err(D::Error::custom(format!(
                "a shared `Array<{}>` arrived whose elements are accessed {} bytes at a time; \
                 `{}` is accessed {} bytes at a time: it was sent as another element type",
                std::any::type_name::<T>(),
                w.width,
                std::any::type_name::<T>(),
                grain::<T>()
            )));
        }
        Ok(Array { region: w.region, len: w.len as usize, lock: w.lock, _t: PhantomData })
    }
}

impl<T: Plain> Serialize for Value<T> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        self.array.serialize(s)
    }
}

impl<'de, T: Plain> Deserialize<'de> for Value<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        use serde::de::Error as _;
        let array = Array::deserialize(d)?;
        if array.len != 1 {
            return Err(D::Error::custom(format!(
                "a shared `Value<{}>` arrived holding {} elements; a Value holds exactly one",
                std::any::type_name::<T>(),
                array.len
            )));
        }
        Ok(Value { array })
    }
}

impl<T: Plain + std::fmt::Debug> std::fmt::Debug for Value<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.array.get(0) {
            Ok(v) => f.debug_tuple("Value").field(&v).finish(),
            Err(_) => f.write_str("Value(<locked by this thread's guard>)"),
        }
    }
}

impl<T: Plain + std::fmt::Debug> std::fmt::Debug for Array<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let all: Result<Vec<T>> = self.access("Debug", || {
            // SAFETY: as in `get`, for every index below `len`.
            (0..self.len).map(|i| unsafe { load(self.at(i)) }).collect()
        });
        match all {
            Ok(v) => f.debug_tuple("Array").field(&v).finish(),
            Err(_) => f.write_str("Array(<locked by this thread's guard>)"),
        }
    }
}
