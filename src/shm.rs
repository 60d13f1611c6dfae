//! Shared memory: regions that travel between processes as handles, and the
//! `Value` and `Array` of plain data built on them.

use std::marker::PhantomData;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, Result};
use crate::sync::{Lock, LockGuard};
use crate::{fdpass, sys};

struct Mapping {
    fd: OwnedFd,
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the mapping is plain shared memory; what is stored in it is
// accessed only through atomics, pthread mutexes or under a `Lock`.
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the mapping is ours and, with the last reference gone, unused.
        unsafe { sys::unmap(self.ptr, self.len) };
    }
}

/// A zero-filled region of shared memory. Clones share it; sending it to
/// another process maps the same memory there. It is freed when the last
/// process lets go of it, even if others were killed.
#[derive(Clone)]
pub(crate) struct Region(Arc<Mapping>);

impl Region {
    pub(crate) fn new(len: usize) -> Result<Region> {
        let fd = sys::memfd(len).map_err(|e| Error::io("could not create shared memory", e))?;
        Self::map(fd, len)
    }

    fn map(fd: OwnedFd, len: usize) -> Result<Region> {
        let ptr = sys::map_shared(fd.as_fd(), len.max(1))
            .map_err(|e| Error::io("could not map shared memory", e))?;
        Ok(Region(Arc::new(Mapping { fd, ptr, len: len.max(1) })))
    }

    pub(crate) fn ptr(&self) -> *mut u8 {
        self.0.ptr
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
        let len = sys::file_len(fd.as_fd()).map_err(D::Error::custom)?;
        Region::map(fd, len).map_err(D::Error::custom)
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
        Ok(Cell { region: Region::new(std::mem::size_of::<T>())?, _t: PhantomData })
    }

    pub(crate) fn ptr(&self) -> *mut T {
        self.region.ptr().cast()
    }
}

impl<T: Sync> Cell<T> {
    /// The shared value, for types made of atomics.
    pub(crate) fn get(&self) -> &T {
        // SAFETY: the region is at least size_of::<T>() bytes, page-aligned,
        // zero-initialised (valid for the atomics-only types used here), and
        // lives as long as `self`; T: Sync allows shared access.
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
        if region.0.len < std::mem::size_of::<T>() {
            return Err(D::Error::custom("shared memory region is smaller than its type"));
        }
        Ok(Cell { region, _t: PhantomData })
    }
}

/// Plain data that may live in shared memory: `Copy`, no pointers, and valid
/// for every bit pattern another process may write.
///
/// # Safety
/// Implement only for types with no padding-sensitive invariants, no
/// references or pointers, and no invalid bit patterns.
pub unsafe trait Plain: Copy + Send + Sync + 'static {}

macro_rules! plain {
    ($($t:ty),*) => { $(
        // SAFETY: a primitive number: every bit pattern is a valid value.
        unsafe impl Plain for $t {}
    )* };
}
plain!(u8, u16, u32, u64, u128, usize, i8, i16, i32, i64, i128, isize, f32, f64);
// SAFETY: an array of plain data is plain data.
unsafe impl<T: Plain, const N: usize> Plain for [T; N] {}

/// One value of plain data in shared memory, with an optional lock: Python's
/// `multiprocessing.Value`. Pass it to a process or a pool task; writes there
/// are seen here.
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
    /// are single volatile accesses; read-modify-write is not atomic.
    ///
    /// # Errors
    /// When shared memory cannot be created.
    pub fn new_raw(value: T) -> Result<Value<T>> {
        Ok(Value { array: Array::from_slice_raw(&[value])? })
    }

    /// The current value.
    pub fn get(&self) -> T {
        self.array.get(0).expect("a Value holds one element")
    }

    /// Stores `value`.
    pub fn set(&self, value: T) {
        self.array.set(0, value).expect("a Value holds one element")
    }

    /// Takes the value's lock and gives access to it.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidState`](crate::ErrorKind::InvalidState) for a value
    /// made with [`new_raw`](Value::new_raw).
    pub fn lock(&self) -> Result<ValueGuard<'_, T>> {
        let guard = self.array.lock()?;
        Ok(ValueGuard { guard })
    }

    /// The value's lock, if it has one.
    pub fn get_lock(&self) -> Option<&Lock> {
        self.array.get_lock()
    }
}

/// Exclusive access to a [`Value`] while its lock is held.
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
        let region = Region::new(std::mem::size_of_val(values))?;
        // SAFETY: the region holds at least `values.len()` Ts and is not yet shared.
        unsafe {
            std::ptr::copy_nonoverlapping(values.as_ptr(), region.ptr().cast::<T>(), values.len())
        };
        Ok(Array { region, len: values.len(), lock: None, _t: PhantomData })
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
                crate::ErrorKind::InvalidArgument,
                format!("index {i} is out of range for a shared array of {}", self.len),
            ));
        }
        Ok(())
    }

    /// Element `i` (a single volatile read).
    ///
    /// # Errors
    /// [`ErrorKind::InvalidArgument`](crate::ErrorKind::InvalidArgument) when
    /// `i` is out of range.
    pub fn get(&self, i: usize) -> Result<T> {
        self.check(i)?;
        // SAFETY: `i` is in range; T is Plain, so any bits another process
        // wrote form a valid T; volatile because other processes write it.
        Ok(unsafe { self.region.ptr().cast::<T>().add(i).read_volatile() })
    }

    /// Stores `value` at `i` (a single volatile write).
    ///
    /// # Errors
    /// [`ErrorKind::InvalidArgument`](crate::ErrorKind::InvalidArgument) when
    /// `i` is out of range.
    pub fn set(&self, i: usize, value: T) -> Result<()> {
        self.check(i)?;
        // SAFETY: `i` is in range of the mapping; volatile as above.
        unsafe { self.region.ptr().cast::<T>().add(i).write_volatile(value) };
        Ok(())
    }

    /// A copy of every element.
    pub fn to_vec(&self) -> Vec<T> {
        (0..self.len).map(|i| self.get(i).expect("in range")).collect()
    }

    /// Takes the array's lock and gives access to the elements.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidState`](crate::ErrorKind::InvalidState) for an
    /// array without a lock.
    pub fn lock(&self) -> Result<ArrayGuard<'_, T>> {
        let lock = self.lock.as_ref().ok_or_else(|| {
            Error::new(crate::ErrorKind::InvalidState, "this shared value was made without a lock")
        })?;
        let guard = lock.acquire()?;
        Ok(ArrayGuard { array: self, guard })
    }

    /// The array's lock, if it has one.
    pub fn get_lock(&self) -> Option<&Lock> {
        self.lock.as_ref()
    }
}

/// Exclusive access to an [`Array`]'s elements while its lock is held.
pub struct ArrayGuard<'a, T: Plain> {
    array: &'a Array<T>,
    guard: LockGuard<'a>,
}

impl<T: Plain> ArrayGuard<'_, T> {
    /// True when the lock's previous holder died holding it: the elements
    /// may be half-updated.
    pub fn previous_owner_died(&self) -> bool {
        self.guard.previous_owner_died()
    }
}

impl<T: Plain> std::ops::Deref for ArrayGuard<'_, T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        // SAFETY: the lock is held, so no cooperating process writes; the
        // region holds `len` valid Ts for as long as the array lives.
        unsafe { std::slice::from_raw_parts(self.array.region.ptr().cast::<T>(), self.array.len) }
    }
}

impl<T: Plain> std::ops::DerefMut for ArrayGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut [T] {
        // SAFETY: as above, and the lock makes this access exclusive.
        unsafe {
            std::slice::from_raw_parts_mut(self.array.region.ptr().cast::<T>(), self.array.len)
        }
    }
}

#[derive(Serialize, Deserialize)]
struct ArrayWire {
    region: Region,
    len: u64,
    lock: Option<Lock>,
}

impl<T: Plain> Serialize for Array<T> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        ArrayWire { region: self.region.clone(), len: self.len as u64, lock: self.lock.clone() }
            .serialize(s)
    }
}

impl<'de, T: Plain> Deserialize<'de> for Array<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let w = ArrayWire::deserialize(d)?;
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
        Ok(Value { array: Array::deserialize(d)? })
    }
}

impl<T: Plain + std::fmt::Debug> std::fmt::Debug for Value<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Value").field(&self.get()).finish()
    }
}

impl<T: Plain + std::fmt::Debug> std::fmt::Debug for Array<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Array").field(&self.to_vec()).finish()
    }
}
