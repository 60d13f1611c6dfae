//! `Bytes`: a byte buffer that crosses to another process as one blob, and
//! that a receiver may read straight from the sender's shared memory.
//!
//! (What to use for large binary data is told in [`Bytes`]'s documentation.)

use std::any::TypeId;
use std::cell::RefCell;
use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, OnceLock};

use serde::de::{self, Deserialize, Deserializer, SeqAccess, Visitor};
use serde::{Serialize, Serializer};

use crate::wire::Mapped;

/// A byte buffer that serializes as one blob, not byte by byte: the type for
/// binary data sent to other processes.
///
/// # Large binary data
///
/// Serde sees a `Vec<u8>` as a sequence of `u8`s: every byte is encoded and
/// decoded on its own, which for megabytes costs more than moving them.
/// What to use instead:
///
/// - [`Bytes`] (or `serde_bytes::ByteBuf` / `#[serde(with = "serde_bytes")]`
///   on a field): encoded as a length and one copy of the bytes, as a task
///   argument or result, a queue item or a pipe message. Use it for any
///   buffer of more than a few hundred bytes.
/// - Nothing to do for size: a message larger than 4 MiB (a
///   task's arguments or results, a queue item, a pipe message) travels in a
///   sealed anonymous shared-memory file that the receiver maps, not through
///   the socket, whatever its type. A `Bytes` of 64 KiB or more decoded from
///   such a message (a task's argument in the worker, its result in the
///   parent, a queue item, a pipe message taken with `recv` or
///   `recv_async`) is not copied out of it at all: it is a read-only view
///   of the mapped pages ([`Bytes::is_shared`]), which stay mapped until
///   the last `Bytes` that views them is dropped. Writing to one (`DerefMut`,
///   [`as_mut_vec`](Bytes::as_mut_vec)) first copies it into a buffer of its
///   own.
/// - [`Array`](crate::Array) for data that several processes read or write
///   in place: passing one to a task or a process sends a handle, and the
///   other side maps the same pages; nothing is copied at all.
///
/// Derefs to `[u8]` (and mutably to a buffer of its own); converts from
/// `Vec<u8>`, and into one when it is not shared, without a copy.
///
/// # Examples
///
/// ```
/// use multiproc::{Bytes, Pool};
///
/// fn sum(buf: Bytes) -> u64 { buf.iter().map(|&b| u64::from(b)).sum() }
///
/// let pool = Pool::new(1)?;
/// let buf = Bytes::from(vec![1u8; 1 << 20]);
/// assert_eq!(pool.apply(sum, buf)?, 1 << 20);
/// # Ok::<(), multiproc::Error>(())
/// ```
#[derive(Clone, Default)]
pub struct Bytes(Repr);

#[derive(Clone)]
enum Repr {
    Own(Vec<u8>),
    /// `len` bytes at `start` of a message's mapped body file.
    Shared {
        map: Arc<Mapped>,
        start: usize,
        len: usize,
    },
}

impl Default for Repr {
    fn default() -> Repr {
        Repr::Own(Vec::new())
    }
}

impl Bytes {
    /// An empty buffer.
    pub fn new() -> Bytes {
        Bytes(Repr::Own(Vec::new()))
    }

    /// The bytes, as a `Vec`: the one they are kept in, or a copy of the
    /// shared memory they view.
    pub fn into_vec(self) -> Vec<u8> {
        match self.0 {
            Repr::Own(v) => v,
            Repr::Shared { .. } => self.to_vec(),
        }
    }

    /// The `Vec` the bytes are kept in, to grow or shrink it (made first,
    /// by a copy, when they view shared memory).
    pub fn as_mut_vec(&mut self) -> &mut Vec<u8> {
        if let Repr::Shared { .. } = self.0 {
            self.0 = Repr::Own(self.to_vec());
        }
        match &mut self.0 {
            Repr::Own(v) => v,
            Repr::Shared { .. } => unreachable!("made a vector above"),
        }
    }

    /// True when the bytes are a read-only view of a received message's
    /// shared memory, not a buffer of their own: a large `Bytes` decoded
    /// from a message that travelled in a shared-memory file. The whole
    /// file stays mapped while any `Bytes` viewing it lives.
    pub fn is_shared(&self) -> bool {
        matches!(self.0, Repr::Shared { .. })
    }
}

/// The least length of a `Bytes` decoded as a view of shared memory rather
/// than a copy: below it the copy costs less than keeping a whole message's
/// file mapped for it.
const SHARE_FROM: usize = 64 << 10;

thread_local! {
    /// The mapped body file being decoded on this thread, if any: what a
    /// `Bytes` decoded from its bytes may view instead of copying.
    static SOURCE: RefCell<Option<Arc<Mapped>>> = const { RefCell::new(None) };
}

/// While it lives, `Bytes` decoded on this thread from the bytes of `map`
/// view them instead of copying them (see [`SOURCE`]). Nests: the source
/// before is back when it is dropped.
pub(crate) fn share_from(map: Option<Arc<Mapped>>) -> ShareFrom {
    // `try_with`: in a thread-local's destructor run after `SOURCE`'s, no
    // source (everything is copied) rather than a panic, which would abort.
    ShareFrom(SOURCE.try_with(|s| s.replace(map)).ok().flatten())
}

/// See [`share_from`].
pub(crate) struct ShareFrom(Option<Arc<Mapped>>);

impl Drop for ShareFrom {
    fn drop(&mut self) {
        let before = self.0.take();
        let _ = SOURCE.try_with(|s| *s.borrow_mut() = before);
    }
}

/// `v` as a view of the mapping being decoded, when it is large enough and
/// lies inside it.
fn shared(v: &[u8]) -> Option<Bytes> {
    if v.len() < SHARE_FROM {
        return None;
    }
    SOURCE
        .try_with(|s| {
            let s = s.borrow();
            let map = s.as_ref()?;
            let start = map.offset_of(v)?;
            Some(Bytes(Repr::Shared { map: map.clone(), start, len: v.len() }))
        })
        .ok()
        .flatten()
}

impl fmt::Debug for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A buffer may hold megabytes: show its length and a few bytes.
        const SHOWN: usize = 16;
        write!(f, "Bytes({} bytes: {:02x?}", self.len(), &self[..self.len().min(SHOWN)])?;
        if self.len() > SHOWN {
            f.write_str("…")?;
        }
        f.write_str(")")
    }
}

impl Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match &self.0 {
            Repr::Own(v) => v,
            Repr::Shared { map, start, len } => &map.bytes()[*start..*start + *len],
        }
    }
}

impl DerefMut for Bytes {
    fn deref_mut(&mut self) -> &mut [u8] {
        self.as_mut_vec()
    }
}

impl AsRef<[u8]> for Bytes {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl PartialEq for Bytes {
    fn eq(&self, other: &Bytes) -> bool {
        **self == **other
    }
}

impl Eq for Bytes {}

impl PartialOrd for Bytes {
    fn partial_cmp(&self, other: &Bytes) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Bytes {
    fn cmp(&self, other: &Bytes) -> Ordering {
        (**self).cmp(&**other)
    }
}

impl Hash for Bytes {
    fn hash<H: Hasher>(&self, h: &mut H) {
        (**self).hash(h)
    }
}

impl From<Vec<u8>> for Bytes {
    fn from(v: Vec<u8>) -> Bytes {
        Bytes(Repr::Own(v))
    }
}

impl From<&[u8]> for Bytes {
    fn from(v: &[u8]) -> Bytes {
        Bytes(Repr::Own(v.to_vec()))
    }
}

impl From<Bytes> for Vec<u8> {
    fn from(b: Bytes) -> Vec<u8> {
        b.into_vec()
    }
}

impl Serialize for Bytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self)
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
        // `deserialize_bytes`, not `_byte_buf`: a format that reads from a
        // buffer hands out a borrow of it, which may be shared memory.
        d.deserialize_bytes(BytesVisitor)
    }
}

struct BytesVisitor;

impl<'de> Visitor<'de> for BytesVisitor {
    type Value = Bytes;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a byte buffer")
    }

    fn visit_borrowed_bytes<E: de::Error>(self, v: &'de [u8]) -> Result<Bytes, E> {
        Ok(shared(v).unwrap_or_else(|| Bytes::from(v)))
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Bytes, E> {
        Ok(Bytes::from(v))
    }

    fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Bytes, E> {
        Ok(Bytes::from(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Bytes, E> {
        Ok(Bytes::from(v.as_bytes()))
    }

    /// Formats that write bytes as a sequence (JSON, say) still decode.
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Bytes, A::Error> {
        // The hint comes from the input: bound what it may reserve.
        let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 16));
        while let Some(b) = seq.next_element()? {
            v.push(b);
        }
        Ok(Bytes::from(v))
    }
}

// --- serde's byte vectors, recognised by the codec -------------------------
//
// Serde writes a `Vec<u8>` (or a `&[u8]`) as a sequence of `u8`s, and
// postcard encodes that sequence exactly as it encodes a byte string: a
// varint length and the bytes. Only the way there differs: one serializer
// call per byte (9 instructions a byte to encode, 24 to decode, measured with
// callgrind on 8 MiB buffers) against one copy. The codec asks the two
// functions below whether a sequence it is handed is serde's byte vector, and
// if so moves it as a byte string; the bytes on the wire are the same.

/// The `TypeId` of `T` with its lifetimes erased, for any `T`, where
/// `TypeId::of` wants `T: 'static`. Two types that differ only in their
/// lifetimes get the same id; the callers only ever compare against types
/// without lifetimes of their own (`u8`, serde's visitor for `Vec<u8>`).
fn type_id_erased<T: ?Sized>() -> TypeId {
    trait Id {
        fn id(&self) -> TypeId
        where
            Self: 'static;
    }
    impl<T: ?Sized> Id for PhantomData<T> {
        fn id(&self) -> TypeId
        where
            Self: 'static,
        {
            TypeId::of::<T>()
        }
    }
    let marker = PhantomData::<T>;
    let short: &dyn Id = &marker;
    // SAFETY: only the lifetime bound of the trait object changes (same
    // pointer, same vtable); `id` reads nothing through the reference, and
    // `TypeId::of` does not depend on lifetimes at all.
    let long: &(dyn Id + 'static) = unsafe { std::mem::transmute(short) };
    long.id()
}

/// The bytes a sequence's iterator walks over, when it walks over a slice
/// of bytes (serde's `Serialize` for `Vec<u8>`, `&[u8]`, `[u8; N]`,
/// `Box<[u8]>` hands `collect_seq` such an iterator).
pub(crate) fn byte_slice<It: Iterator>(iter: &It) -> Option<&[u8]> {
    if type_id_erased::<It>() != TypeId::of::<std::slice::Iter<'static, u8>>() {
        return None;
    }
    // SAFETY: `It` is `slice::Iter<'x, u8>` for some 'x (the ids match up to
    // lifetimes), and 'x outlives the borrow of `iter`: reading it as an
    // iterator over that shorter borrow is a covariant shortening.
    let iter = unsafe { &*(iter as *const It).cast::<std::slice::Iter<'_, u8>>() };
    Some(iter.as_slice())
}

/// The items of `iter` collected into one buffer when they are bytes (`u8`
/// or `&u8`); else `iter` back, untouched.
pub(crate) fn collect_bytes<It: Iterator>(iter: It) -> Result<Vec<u8>, It> {
    let id = type_id_erased::<It::Item>();
    if id == TypeId::of::<u8>() {
        // SAFETY: the item type is `u8` (no lifetimes to erase).
        Ok(iter.map(|b| unsafe { std::mem::transmute_copy::<It::Item, u8>(&b) }).collect())
    } else if id == TypeId::of::<&'static u8>() {
        // SAFETY: the item type is `&'x u8` for some 'x; the byte is read
        // while the item, and so its borrow, is alive.
        Ok(iter.map(|b| unsafe { *std::mem::transmute_copy::<It::Item, &u8>(&b) }).collect())
    } else {
        Err(iter)
    }
}

/// The id of the visitor serde's `Deserialize for Vec<u8>` hands a
/// deserializer's `deserialize_seq`, learnt once by asking it to decode
/// from a deserializer that only records what it was handed. `None` if it
/// asked for something else (a later serde): then nothing is recognised.
fn byte_vec_visitor_id() -> Option<TypeId> {
    use serde::de::value::Error;
    use std::cell::Cell;

    struct Probe<'c>(&'c Cell<Option<TypeId>>);

    impl<'de> Deserializer<'de> for Probe<'_> {
        type Error = Error;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Error> {
            Err(de::Error::custom("a probe"))
        }
        fn deserialize_seq<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Error> {
            self.0.set(Some(type_id_erased::<V>()));
            Err(de::Error::custom("a probe"))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
            bytes byte_buf option unit unit_struct newtype_struct tuple
            tuple_struct map struct enum identifier ignored_any
        }
    }

    static ID: OnceLock<Option<TypeId>> = OnceLock::new();
    *ID.get_or_init(|| {
        let seen = Cell::new(None);
        let _ = Vec::<u8>::deserialize(Probe(&seen));
        seen.get()
    })
}

/// Where a deserializer's `deserialize_seq` was handed the visitor of
/// serde's `Vec<u8>`: a visitor that makes the same value from a byte
/// string, which the deserializer can hand over in one piece.
pub(crate) fn byte_vec_visitor<'de, V: Visitor<'de>>() -> Option<ByteVec<V>> {
    (byte_vec_visitor_id() == Some(type_id_erased::<V>())).then_some(ByteVec(PhantomData))
}

/// Made only by [`byte_vec_visitor`]: `V` is serde's visitor for `Vec<u8>`,
/// whose value is a `Vec<u8>`.
pub(crate) struct ByteVec<V>(PhantomData<V>);

impl<V> ByteVec<V> {
    fn value<'de>(v: Vec<u8>) -> V::Value
    where
        V: Visitor<'de>,
    {
        assert_eq!(std::mem::size_of::<V::Value>(), std::mem::size_of::<Vec<u8>>());
        let v = std::mem::ManuallyDrop::new(v);
        // SAFETY: `V` is serde's `Vec<u8>` visitor (checked where this was
        // made), so `V::Value` is `Vec<u8>`: this moves the vector out.
        unsafe { std::ptr::read((&*v as *const Vec<u8>).cast::<V::Value>()) }
    }
}

impl<'de, V: Visitor<'de>> Visitor<'de> for ByteVec<V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a sequence of bytes")
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<V::Value, E> {
        Ok(Self::value(v.to_vec()))
    }

    fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<V::Value, E> {
        Ok(Self::value(v))
    }
}

// --- plain numbers, moved as their bytes ----------------------------------
//
// A chunk of a million `u64`s encoded item by item costs a serializer call
// and a varint each way per item; the same chunk as its memory is one copy.
// `Plain` tells the chunk code (`task::chunk`) that an item type is a
// primitive number, whose in-memory bytes on a little-endian machine are
// exactly its little-endian encoding, with no padding and no invalid bit
// pattern: such a chunk travels as a length and the raw bytes.

/// Made only by [`Plain::of`]: `T` is one of the primitive integer or float
/// types (`u8`..`u128`, `i8`..`i128`, `usize`, `isize`, `f32`, `f64`) and
/// the machine is little-endian. Its methods move `T`s to and from bytes.
pub(crate) struct Plain<T>(PhantomData<fn() -> T>);

impl<T> Plain<T> {
    /// `Some` when `T` is a primitive number (and the machine little-endian:
    /// elsewhere nothing is plain, and every chunk takes the general path).
    #[inline]
    pub(crate) fn of() -> Option<Plain<T>> {
        if !cfg!(target_endian = "little") {
            return None;
        }
        let id = type_id_erased::<T>();
        let is = |ids: &[TypeId]| ids.contains(&id);
        // The size is known at compile time: only its row is compared.
        let plain = match std::mem::size_of::<T>() {
            1 => is(&[TypeId::of::<u8>(), TypeId::of::<i8>()]),
            2 => is(&[TypeId::of::<u16>(), TypeId::of::<i16>()]),
            4 => is(&[TypeId::of::<u32>(), TypeId::of::<i32>(), TypeId::of::<f32>()]),
            8 => is(&[
                TypeId::of::<u64>(),
                TypeId::of::<i64>(),
                TypeId::of::<f64>(),
                TypeId::of::<usize>(),
                TypeId::of::<isize>(),
            ]),
            16 => is(&[TypeId::of::<u128>(), TypeId::of::<i128>()]),
            _ => false,
        };
        plain.then_some(Plain(PhantomData))
    }

    /// The bytes of one item.
    #[inline(always)]
    pub(crate) fn size(&self) -> usize {
        std::mem::size_of::<T>()
    }

    /// The little-endian bytes of `items`, borrowed.
    #[inline(always)]
    pub(crate) fn bytes_of<'a>(&self, items: &'a [T]) -> &'a [u8] {
        // SAFETY: `T` is a primitive number (this token exists): no padding,
        // so every byte of the slice is initialised; u8 has no alignment.
        unsafe { std::slice::from_raw_parts(items.as_ptr().cast::<u8>(), size_of_val(items)) }
    }

    /// The item whose bytes are `bytes`, which must be exactly one item's.
    #[inline(always)]
    pub(crate) fn read(&self, bytes: &[u8]) -> T {
        assert_eq!(bytes.len(), self.size(), "one plain item's bytes");
        // SAFETY: `bytes` holds `size_of::<T>()` bytes (asserted); every bit
        // pattern is a valid primitive number; `read_unaligned` copies, so
        // the bytes need no alignment.
        unsafe { bytes.as_ptr().cast::<T>().read_unaligned() }
    }

    /// The items whose bytes are `bytes`, copied into a vector (aligned for
    /// `T`, whatever the alignment of `bytes`); `None` when `bytes` is not a
    /// whole number of items.
    pub(crate) fn to_vec(&self, bytes: &[u8]) -> Option<Vec<T>> {
        if bytes.len() % self.size() != 0 {
            return None;
        }
        let n = bytes.len() / self.size();
        let mut v = Vec::<T>::with_capacity(n);
        // SAFETY: the vector has room for `n` items, `n * size_of::<T>()`
        // bytes, exactly `bytes.len()`; the regions are distinct
        // allocations; after the copy its first `n` items are initialised,
        // and any bit pattern is a valid primitive number.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), v.as_mut_ptr().cast::<u8>(), bytes.len());
            v.set_len(n);
        }
        Some(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_as_one_blob_like_serde_bytes() {
        let data: Vec<u8> = (0..=255).collect();
        let ours = crate::codec::encode(&Bytes::from(data.clone())).unwrap();
        // A varint length (256) and the bytes, as `serde_bytes` writes them
        // (the same bytes as a `Vec<u8>`'s, made by one copy instead of a
        // call per byte).
        assert_eq!(ours, [&[0x80, 0x02][..], &data].concat());
        assert_eq!(crate::codec::encode(&data).unwrap(), ours);
        let back: Bytes = crate::codec::decode(&ours).unwrap();
        assert_eq!(back.into_vec(), data);
    }

    #[test]
    fn a_lying_length_is_an_error_not_an_allocation() {
        // Claims u32::MAX bytes and carries three.
        let bytes = [0xff, 0xff, 0xff, 0xff, 0x0f, 1, 2, 3];
        assert!(crate::codec::decode::<Bytes>(&bytes).is_err());
    }

    /// The byte-vector fast path writes what postcard writes for a
    /// sequence of `u8`s, and reads it back, for every shape serde hands it.
    #[test]
    fn byte_sequences_keep_postcards_encoding() {
        use std::collections::VecDeque;
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
        let theirs = postcard::to_allocvec(&data).unwrap();
        assert_eq!(crate::codec::encode(&data).unwrap(), theirs);
        assert_eq!(crate::codec::encode(&data[..]).unwrap(), theirs);
        assert_eq!(crate::codec::encode(&Box::<[u8]>::from(&data[..])).unwrap(), theirs);
        let deque: VecDeque<u8> = data.iter().copied().collect();
        assert_eq!(crate::codec::encode(&deque).unwrap(), postcard::to_allocvec(&deque).unwrap());
        let back: Vec<u8> = crate::codec::decode(&theirs).unwrap();
        assert_eq!(back, data);
        let back: VecDeque<u8> = crate::codec::decode(&theirs).unwrap();
        assert_eq!(back, deque);
        // Nested, and beside other values.
        let nested = (vec![data.clone(), Vec::new(), vec![1u8]], 7u16, data.clone());
        let bytes = crate::codec::encode(&nested).unwrap();
        assert_eq!(bytes, postcard::to_allocvec(&nested).unwrap());
        let back: (Vec<Vec<u8>>, u16, Vec<u8>) = crate::codec::decode(&bytes).unwrap();
        assert_eq!(back, nested);
        // Other element types are untouched.
        let wide: Vec<u16> = (0..300).collect();
        let bytes = crate::codec::encode(&wide).unwrap();
        assert_eq!(bytes, postcard::to_allocvec(&wide).unwrap());
        assert_eq!(crate::codec::decode::<Vec<u16>>(&bytes).unwrap(), wide);
        // A length beyond the input is an error, not an allocation.
        let lying = [0xff, 0xff, 0xff, 0xff, 0x0f, 1, 2, 3];
        assert!(crate::codec::decode::<Vec<u8>>(&lying).is_err());
    }

    /// A type of the user's that makes a `Vec<u8>` from a sequence with a
    /// visitor of its own is not mistaken for serde's `Vec<u8>`.
    #[test]
    fn a_users_own_sequence_visitor_is_left_alone() {
        /// Bytes written as a sequence of `u16`s, halved on the way back.
        #[derive(Debug, PartialEq)]
        struct Halves(Vec<u8>);
        impl Serialize for Halves {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_seq(self.0.iter().map(|&b| u16::from(b) * 2))
            }
        }
        impl<'de> Deserialize<'de> for Halves {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Halves, D::Error> {
                struct V;
                impl<'de> Visitor<'de> for V {
                    type Value = Vec<u8>;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str("u16s")
                    }
                    fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Vec<u8>, A::Error> {
                        let mut v = Vec::new();
                        while let Some(x) = a.next_element::<u16>()? {
                            v.push((x / 2) as u8);
                        }
                        Ok(v)
                    }
                }
                d.deserialize_seq(V).map(Halves)
            }
        }
        let h = Halves(vec![1, 200, 255]);
        let bytes = crate::codec::encode(&h).unwrap();
        assert_eq!(bytes, postcard::to_allocvec(&h).unwrap());
        assert_eq!(crate::codec::decode::<Halves>(&bytes).unwrap(), h);
    }

    /// Decoded from a mapped file while it is the source: large `Bytes` in
    /// it view it, small ones and ones from other bytes are copied, and a
    /// view outlives both the source and the decoder's own hold.
    #[test]
    fn large_bytes_from_the_mapped_source_view_it() {
        let big: Vec<u8> = (0..SHARE_FROM as u32 + 5).map(|i| (i % 251) as u8).collect();
        let value = (7u32, Bytes::from(big.clone()), Bytes::from(vec![1u8, 2, 3]));
        let body = crate::codec::encode(&value).unwrap();
        let file = crate::sys::memfd_frozen(&[&body]).unwrap();
        let map =
            Arc::new(Mapped::open(file, body.len(), "test").unwrap_or_else(|v| panic!("{}", v.0)));
        // Not the source: copies.
        let copied: (u32, Bytes, Bytes) = crate::codec::decode(map.bytes()).unwrap();
        assert!(!copied.1.is_shared());
        let (n, large, small): (u32, Bytes, Bytes) = {
            let _source = share_from(Some(map.clone()));
            // The same bytes, elsewhere: not inside the source, copied.
            let elsewhere: (u32, Bytes, Bytes) = crate::codec::decode(&body).unwrap();
            assert!(!elsewhere.1.is_shared());
            {
                // Nested: another source, then this one back.
                let _other = share_from(None);
                let inner: (u32, Bytes, Bytes) = crate::codec::decode(map.bytes()).unwrap();
                assert!(!inner.1.is_shared());
            }
            crate::codec::decode(map.bytes()).unwrap()
        };
        assert_eq!(n, 7);
        assert!(large.is_shared() && !small.is_shared());
        assert_eq!(large, copied.1);
        assert_eq!(&*small, [1, 2, 3]);
        // The view keeps the mapping alive.
        drop(map);
        assert!(*large == big[..]);
        let clone = large.clone();
        assert!(clone.is_shared() && clone == large);
        // Writing copies first.
        let mut written = large.clone();
        written[0] ^= 0xff;
        assert!(!written.is_shared() && large.is_shared());
        assert_eq!(written[0], big[0] ^ 0xff);
        assert_eq!(large[0], big[0]);
        assert!(clone.into_vec() == big);
        // Out of scope: copies again.
        let after: (u32, Bytes, Bytes) = crate::codec::decode(&body).unwrap();
        assert!(!after.1.is_shared());
    }

    /// A decode in a thread-local's destructor that runs after this
    /// module's own (`SOURCE`'s) is gone: a copy, not a panic (which would
    /// abort the process from a thread-local destructor).
    #[test]
    fn a_decode_after_the_source_is_gone_copies() {
        use std::sync::atomic::{AtomicU8, Ordering};
        /// 0: not run, 1: decoded a copy, 2: anything else.
        static SEEN: AtomicU8 = AtomicU8::new(0);
        struct Late;
        impl Drop for Late {
            fn drop(&mut self) {
                let body = crate::codec::encode(&Bytes::from(vec![3u8; SHARE_FROM])).unwrap();
                let _source = share_from(None);
                let got: Result<Bytes, _> = crate::codec::decode(&body);
                let copied = got.is_ok_and(|b| !b.is_shared() && b.len() == SHARE_FROM);
                SEEN.store(if copied { 1 } else { 2 }, Ordering::SeqCst);
            }
        }
        thread_local! {
            static LATE: RefCell<Option<Late>> = const { RefCell::new(None) };
        }
        std::thread::spawn(|| {
            // Registered first, so destroyed after `SOURCE` (destructors run
            // in the reverse order of registration).
            LATE.with(|l| *l.borrow_mut() = Some(Late));
            drop(share_from(None));
        })
        .join()
        .unwrap();
        assert_eq!(SEEN.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn debug_shows_a_prefix() {
        let s = format!("{:?}", Bytes::from(vec![7u8; 1000]));
        assert!(s.starts_with("Bytes(1000 bytes: [07, 07") && s.ends_with("…)"), "{s}");
    }

    #[test]
    fn plain_numbers_are_recognised_and_move_as_their_bytes() {
        assert!(Plain::<u64>::of().is_some() && Plain::<f32>::of().is_some());
        assert!(Plain::<i128>::of().is_some() && Plain::<u8>::of().is_some());
        assert!(Plain::<usize>::of().is_some());
        // Not numbers, or not every bit pattern valid, or padded.
        assert!(Plain::<bool>::of().is_none() && Plain::<char>::of().is_none());
        assert!(Plain::<[u8; 8]>::of().is_none() && Plain::<(u32, u32)>::of().is_none());
        assert!(Plain::<&'static u64>::of().is_none() && Plain::<Bytes>::of().is_none());
        let p = Plain::<i32>::of().unwrap();
        let items = [-1i32, 7, i32::MIN];
        let bytes = p.bytes_of(&items);
        assert_eq!(
            bytes,
            [(-1i32).to_le_bytes(), 7i32.to_le_bytes(), i32::MIN.to_le_bytes()].concat()
        );
        // From a misaligned place in a buffer, into an aligned vector.
        let shifted = [&[0u8][..], bytes].concat();
        assert_eq!(p.to_vec(&shifted[1..]).unwrap(), items);
        assert_eq!(p.read(&shifted[5..9]), 7);
        assert!(p.to_vec(&shifted[..6]).is_none());
        assert_eq!(p.to_vec(&[]).unwrap(), Vec::<i32>::new());
        let f = Plain::<f64>::of().unwrap();
        assert_eq!(f.to_vec(&1.5f64.to_le_bytes()).unwrap(), [1.5]);
    }
}
