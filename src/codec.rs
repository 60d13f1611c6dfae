//! The one way values become bytes for another process, and bytes from
//! another process become values.
//!
//! postcard does the encoding. This module wraps its serializer and
//! deserializer in adapters that forward every call unchanged (same bytes,
//! same fast paths, e.g. `deserialize_bytes` still hands out a borrowed
//! slice) and add what a decoder of untrusted bytes needs:
//!
//! - A nesting limit ([`MAX_DEPTH`]). Serde decodes nested values by
//!   recursion, so a hostile or unlucky message nested tens of thousands of
//!   levels deep would overflow the stack of whichever thread decodes it: in
//!   the parent that is a pool's slot thread, and the whole program dies.
//! - An element budget ([`MAX_EMPTY_ELEMENTS`]): a sequence of zero-sized
//!   elements costs no bytes, so a length field alone could otherwise keep a
//!   decoder looping for 2^64 elements.
//! - Error messages that survive. postcard's `Error::custom` keeps no text,
//!   so a user's "port must be below 1024" would reach the caller as "Serde
//!   Deserialization Error". Our adapters have their own error type, which
//!   keeps the message; where the inner postcard call needs an error of its
//!   own type, the real one waits in [`State::stash`] until the call returns.
//! - Panics in a user's `Serialize`/`Deserialize` are caught (silently, like
//!   a task's panic) and returned as [`CodecError::Panic`], so they fail one
//!   value instead of a thread or a whole worker.

use std::cell::{Cell, RefCell};
use std::fmt::{self, Display};

use serde::de::{self, DeserializeSeed, Deserializer, Visitor};
use serde::ser::{self, Serialize, Serializer};

use crate::task::{catch_panic, Failure};

/// How deep a decoded value may nest (every struct, enum, sequence, map,
/// option or box is one level).
///
/// Measured (a derived recursive enum decoded through these adapters, the
/// stack pointer compared at the top and at the leaf): 160 bytes a level
/// with this crate at opt-level 1 and its dependencies at 2 (our dev
/// profile), 112 in release, 884 with everything at opt-level 0. So 512
/// levels take at most ~0.45 MiB of the 2 MiB a spawned thread gets by
/// default (a slot thread's), leaving room for what the caller already uses
/// and for types whose own frames are larger. Real data nests a few dozen
/// levels; deeper data belongs in a `Vec`.
pub(crate) const MAX_DEPTH: usize = 512;

/// How many sequence or map elements one decode may yield beyond one per
/// byte of input. Elements that take input are bounded by the input's
/// length; only zero-sized ones need this.
pub(crate) const MAX_EMPTY_ELEMENTS: usize = 1 << 20;

/// Why a value could not be encoded or decoded.
#[derive(Debug)]
pub(crate) enum CodecError {
    /// The format or the value's own serde code reported an error.
    Serde(String),
    /// The value's own serde code panicked.
    Panic(Failure),
}

impl Display for CodecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CodecError::Serde(msg) => f.write_str(msg),
            CodecError::Panic(failure) => match &failure.location {
                Some(loc) => {
                    write!(f, "its serde implementation panicked at {loc}: {}", failure.message)
                }
                None => write!(f, "its serde implementation panicked: {}", failure.message),
            },
        }
    }
}

/// Decodes a `T` from `bytes`, which may come from anywhere.
///
/// Like `postcard::from_bytes`, bytes after the value are ignored.
pub(crate) fn decode<'de, T: de::Deserialize<'de>>(bytes: &'de [u8]) -> Result<T, CodecError> {
    match catch_panic(|| SeqDecoder::new(bytes).next()) {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(message)) => Err(CodecError::Serde(message)),
        Err(failure) => Err(CodecError::Panic(failure)),
    }
}

/// Appends the encoding of `value` to `out`; on failure `out` is as it was.
pub(crate) fn encode_into<T: Serialize + ?Sized>(
    value: &T,
    out: &mut Vec<u8>,
) -> Result<(), CodecError> {
    let start = out.len();
    match catch_panic(|| Encoder::new().append(value, &mut *out)) {
        Ok(Ok(())) => Ok(()),
        Ok(Err(message)) => Err(CodecError::Serde(message)),
        Err(failure) => {
            out.truncate(start);
            Err(CodecError::Panic(failure))
        }
    }
}

/// Decodes values that lie back to back in one buffer, with the limits
/// [`decode`] gives each of them, but no panic guard of its own: a chunk of
/// task items is decoded under one guard for many values (see `task`), so
/// a panic in a value's `Deserialize` unwinds to the caller.
pub(crate) struct SeqDecoder<'de> {
    rest: &'de [u8],
    state: State,
}

impl<'de> SeqDecoder<'de> {
    pub(crate) fn new(bytes: &'de [u8]) -> SeqDecoder<'de> {
        SeqDecoder { rest: bytes, state: State::new(bytes.len()) }
    }

    /// Decodes the next value. After an error (or a panic) the position is
    /// unknown: the decoder must not be used again.
    #[inline(always)]
    pub(crate) fn next<T: de::Deserialize<'de>>(&mut self) -> Result<T, String> {
        T::deserialize(TopDe { rest: &mut self.rest, state: &self.state }).map_err(|e| *e.0)
    }
}

/// Appends encodings of values to a buffer, with no panic guard of its own
/// (as [`SeqDecoder`], for chunks).
pub(crate) struct Encoder {
    state: State,
}

impl Encoder {
    pub(crate) fn new() -> Encoder {
        Encoder { state: State::new(0) }
    }

    /// Appends the encoding of `value` to `out`. On an error `out` is as it
    /// was; on a panic in the value's `Serialize` it holds part of the value
    /// and the caller must truncate it.
    #[inline(always)]
    pub(crate) fn append<T: Serialize + ?Sized>(
        &self,
        value: &T,
        out: &mut Vec<u8>,
    ) -> Result<(), String> {
        let start = out.len();
        let mut inner = postcard::Serializer { output: VecRef(&mut *out) };
        match value.serialize(TopSer { inner: &mut inner, state: &self.state }) {
            Ok(()) => Ok(()),
            Err(e) => {
                out.truncate(start);
                Err(*e.0)
            }
        }
    }
}

/// The encoding of `value`.
pub(crate) fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::new();
    encode_into(value, &mut out)?;
    Ok(out)
}

/// Writes postcard output straight into a borrowed buffer.
struct VecRef<'a>(&'a mut Vec<u8>);

impl postcard::ser_flavors::Flavor for VecRef<'_> {
    type Output = ();
    #[inline]
    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.0.push(data);
        Ok(())
    }
    #[inline]
    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        // Most calls carry one varint: a copy loop the compiler sees whole
        // beats a call to memcpy for a few bytes. A blob (`Bytes`, a string)
        // is one memcpy.
        if data.len() > 16 {
            // Megabytes go into a buffer whose pages exist already.
            if data.len() >= crate::spare::FROM {
                crate::spare::reserve(self.0, data.len());
            }
            self.0.extend_from_slice(data);
        } else {
            self.0.extend(data.iter().copied());
        }
        Ok(())
    }
    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

/// The error of our adapters: unlike postcard's, it keeps the message.
///
/// One pointer wide on purpose: it sits in the `Result` of every adapter
/// call, so its size is paid in every level's stack frame (measured: a
/// `String` here costs 224 bytes a level in release, a box 112).
#[derive(Debug)]
#[allow(clippy::box_collection)]
pub(crate) struct Message(Box<String>);

impl Display for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Message {}

impl de::Error for Message {
    fn custom<T: Display>(msg: T) -> Self {
        Message(Box::new(msg.to_string()))
    }
}

impl ser::Error for Message {
    fn custom<T: Display>(msg: T) -> Self {
        Message(Box::new(msg.to_string()))
    }
}

/// What one encode or decode shares across its adapters.
struct State {
    depth: Cell<usize>,
    elements_left: Cell<usize>,
    /// Our error, parked while it travels through postcard as a postcard
    /// error (which cannot carry it).
    stash: RefCell<Option<Message>>,
}

impl State {
    fn new(input_len: usize) -> State {
        State {
            depth: Cell::new(0),
            elements_left: Cell::new(input_len.saturating_add(MAX_EMPTY_ELEMENTS)),
            stash: RefCell::new(None),
        }
    }

    /// One level deeper, until the returned guard is dropped.
    #[inline]
    fn enter(&self) -> Result<Depth<'_>, Message> {
        let depth = self.depth.get() + 1;
        if depth > MAX_DEPTH {
            return Err(Message(Box::new(format!(
                "the value is nested more than {MAX_DEPTH} levels deep, the most multiproc \
                 decodes (deeper would risk overflowing the decoding thread's stack); send \
                 deeply nested data flattened, e.g. as a Vec of nodes"
            ))));
        }
        self.depth.set(depth);
        Ok(Depth(self))
    }

    /// Counts one sequence or map element.
    #[inline]
    fn element(&self) -> Result<(), Message> {
        match self.elements_left.get().checked_sub(1) {
            Some(left) => {
                self.elements_left.set(left);
                Ok(())
            }
            None => Err(Message(Box::new(format!(
                "the value has more elements than its input has bytes, plus \
                 {MAX_EMPTY_ELEMENTS}, the most multiproc decodes (a length that claims more \
                 is corrupt or hostile); send fewer zero-sized elements"
            )))),
        }
    }

    /// The error a postcard call returned: ours if we parked one.
    #[inline]
    fn unpark(&self, e: impl Display) -> Message {
        self.stash.borrow_mut().take().unwrap_or_else(|| Message(Box::new(e.to_string())))
    }
}

/// Parks `e` and gives the inner deserializer an error of its own type to
/// pass up to us (for the message a postcard error cannot carry).
fn park_de<E: de::Error>(state: &State, e: Message) -> E {
    let theirs = E::custom(&e.0);
    *state.stash.borrow_mut() = Some(e);
    theirs
}

/// As [`park_de`], for the inner serializer.
fn park_ser<E: ser::Error>(state: &State, e: Message) -> E {
    let theirs = E::custom(&e.0);
    *state.stash.borrow_mut() = Some(e);
    theirs
}

struct Depth<'s>(&'s State);

impl Drop for Depth<'_> {
    fn drop(&mut self) {
        self.0.depth.set(self.0.depth.get() - 1);
    }
}

// --- decoding -------------------------------------------------------------
//
// Every adapter method is `#[inline]`: they are generic and small, and
// without the hint they stay separate calls in other codegen units. Measured
// on a `Vec` of 1M `u64` in release: postcard alone 4.1 ms, through the
// adapters 12.8 ms without the hints, 5.2 ms with them.

/// A deserializer that counts nesting and keeps error messages.
struct Limited<'s, D> {
    inner: D,
    state: &'s State,
}

/// A visitor handed to the inner deserializer: it wraps what the inner one
/// gives the user's visitor so that nested values go through [`Limited`].
struct Wrap<'s, V> {
    inner: V,
    state: &'s State,
}

/// Wraps the inner deserializer's sequence, map and enum access.
struct Access<'s, A> {
    inner: A,
    state: &'s State,
}

/// Wraps a seed so that the deserializer it gets is [`Limited`].
struct Seed<'s, T> {
    inner: T,
    state: &'s State,
}

/// The methods for values that hold no other value: they cannot nest, so
/// they skip the depth count.
macro_rules! leaf_methods {
    ($($method:ident($($arg:ident: $ty:ty),*);)*) => {$(
        #[inline]
        fn $method<V: Visitor<'de>>(self $(, $arg: $ty)*, visitor: V)
            -> Result<V::Value, Message>
        {
            let state = self.state;
            self.inner
                .$method($($arg,)* Wrap { inner: visitor, state })
                .map_err(|e| state.unpark(e))
        }
    )*};
}

macro_rules! limited_methods {
    ($($method:ident($($arg:ident: $ty:ty),*);)*) => {$(
        #[inline]
        fn $method<V: Visitor<'de>>(self $(, $arg: $ty)*, visitor: V)
            -> Result<V::Value, Message>
        {
            let state = self.state;
            let _depth = state.enter()?;
            self.inner
                .$method($($arg,)* Wrap { inner: visitor, state })
                .map_err(|e| state.unpark(e))
        }
    )*};
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for Limited<'_, D> {
    type Error = Message;

    leaf_methods! {
        deserialize_bool();
        deserialize_i8();
        deserialize_i16();
        deserialize_i32();
        deserialize_i64();
        deserialize_i128();
        deserialize_u8();
        deserialize_u16();
        deserialize_u32();
        deserialize_u64();
        deserialize_u128();
        deserialize_f32();
        deserialize_f64();
        deserialize_char();
        deserialize_str();
        deserialize_string();
        deserialize_bytes();
        deserialize_byte_buf();
        deserialize_unit();
        deserialize_unit_struct(name: &'static str);
    }

    limited_methods! {
        deserialize_any();
        deserialize_option();
        deserialize_newtype_struct(name: &'static str);
        deserialize_tuple(len: usize);
        deserialize_tuple_struct(name: &'static str, len: usize);
        deserialize_map();
        deserialize_struct(name: &'static str, fields: &'static [&'static str]);
        deserialize_enum(name: &'static str, variants: &'static [&'static str]);
        deserialize_identifier();
        deserialize_ignored_any();
    }

    #[inline]
    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Message> {
        let state = self.state;
        let _depth = state.enter()?;
        // A `Vec<u8>`: postcard wrote its bytes as a byte string would be.
        if let Some(bytes) = crate::bytes::byte_vec_visitor::<V>() {
            return self.inner.deserialize_byte_buf(bytes).map_err(|e| state.unpark(e));
        }
        self.inner.deserialize_seq(Wrap { inner: visitor, state }).map_err(|e| state.unpark(e))
    }

    #[inline]
    fn is_human_readable(&self) -> bool {
        self.inner.is_human_readable()
    }
}

macro_rules! wrap_values {
    ($($method:ident($ty:ty);)*) => {$(
        #[inline]
        fn $method<E: de::Error>(self, v: $ty) -> Result<V::Value, E> {
            let state = self.state;
            self.inner.$method(v).map_err(|e| park_de(state, e))
        }
    )*};
}

impl<'de, V: Visitor<'de>> Visitor<'de> for Wrap<'_, V> {
    type Value = V::Value;

    #[inline]
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.expecting(f)
    }

    wrap_values! {
        visit_bool(bool);
        visit_i8(i8);
        visit_i16(i16);
        visit_i32(i32);
        visit_i64(i64);
        visit_i128(i128);
        visit_u8(u8);
        visit_u16(u16);
        visit_u32(u32);
        visit_u64(u64);
        visit_u128(u128);
        visit_f32(f32);
        visit_f64(f64);
        visit_char(char);
        visit_str(&str);
        visit_borrowed_str(&'de str);
        visit_string(String);
        visit_bytes(&[u8]);
        visit_borrowed_bytes(&'de [u8]);
        visit_byte_buf(Vec<u8>);
    }

    #[inline]
    fn visit_none<E: de::Error>(self) -> Result<V::Value, E> {
        let state = self.state;
        self.inner.visit_none().map_err(|e| park_de(state, e))
    }

    #[inline]
    fn visit_unit<E: de::Error>(self) -> Result<V::Value, E> {
        let state = self.state;
        self.inner.visit_unit().map_err(|e| park_de(state, e))
    }

    #[inline]
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<V::Value, D::Error> {
        let state = self.state;
        self.inner.visit_some(Limited { inner: d, state }).map_err(|e| park_de(state, e))
    }

    #[inline]
    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<V::Value, D::Error> {
        let state = self.state;
        self.inner.visit_newtype_struct(Limited { inner: d, state }).map_err(|e| park_de(state, e))
    }

    #[inline]
    fn visit_seq<A: de::SeqAccess<'de>>(self, seq: A) -> Result<V::Value, A::Error> {
        let state = self.state;
        self.inner.visit_seq(Access { inner: seq, state }).map_err(|e| park_de(state, e))
    }

    #[inline]
    fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<V::Value, A::Error> {
        let state = self.state;
        self.inner.visit_map(Access { inner: map, state }).map_err(|e| park_de(state, e))
    }

    #[inline]
    fn visit_enum<A: de::EnumAccess<'de>>(self, data: A) -> Result<V::Value, A::Error> {
        let state = self.state;
        self.inner.visit_enum(Access { inner: data, state }).map_err(|e| park_de(state, e))
    }
}

impl<'de, T: DeserializeSeed<'de>> DeserializeSeed<'de> for Seed<'_, T> {
    type Value = T::Value;

    #[inline]
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<T::Value, D::Error> {
        let state = self.state;
        self.inner.deserialize(Limited { inner: d, state }).map_err(|e| park_de(state, e))
    }
}

impl<'de, A: de::SeqAccess<'de>> de::SeqAccess<'de> for Access<'_, A> {
    type Error = Message;

    #[inline]
    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Message> {
        let state = self.state;
        state.element()?;
        self.inner.next_element_seed(Seed { inner: seed, state }).map_err(|e| state.unpark(e))
    }

    #[inline]
    fn size_hint(&self) -> Option<usize> {
        self.inner.size_hint()
    }
}

impl<'de, A: de::MapAccess<'de>> de::MapAccess<'de> for Access<'_, A> {
    type Error = Message;

    #[inline]
    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Message> {
        let state = self.state;
        state.element()?;
        self.inner.next_key_seed(Seed { inner: seed, state }).map_err(|e| state.unpark(e))
    }

    #[inline]
    fn next_value_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<T::Value, Message> {
        let state = self.state;
        self.inner.next_value_seed(Seed { inner: seed, state }).map_err(|e| state.unpark(e))
    }

    #[inline]
    fn size_hint(&self) -> Option<usize> {
        self.inner.size_hint()
    }
}

impl<'de, 's, A: de::EnumAccess<'de>> de::EnumAccess<'de> for Access<'s, A> {
    type Error = Message;
    type Variant = Access<'s, A::Variant>;

    #[inline]
    fn variant_seed<T: DeserializeSeed<'de>>(
        self,
        seed: T,
    ) -> Result<(T::Value, Self::Variant), Message> {
        let state = self.state;
        match self.inner.variant_seed(Seed { inner: seed, state }) {
            Ok((value, variant)) => Ok((value, Access { inner: variant, state })),
            Err(e) => Err(state.unpark(e)),
        }
    }
}

impl<'de, A: de::VariantAccess<'de>> de::VariantAccess<'de> for Access<'_, A> {
    type Error = Message;

    #[inline]
    fn unit_variant(self) -> Result<(), Message> {
        let state = self.state;
        self.inner.unit_variant().map_err(|e| state.unpark(e))
    }

    #[inline]
    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, Message> {
        let state = self.state;
        self.inner.newtype_variant_seed(Seed { inner: seed, state }).map_err(|e| state.unpark(e))
    }

    #[inline]
    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, Message> {
        let state = self.state;
        self.inner.tuple_variant(len, Wrap { inner: visitor, state }).map_err(|e| state.unpark(e))
    }

    #[inline]
    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Message> {
        let state = self.state;
        self.inner
            .struct_variant(fields, Wrap { inner: visitor, state })
            .map_err(|e| state.unpark(e))
    }
}

// --- encoding -------------------------------------------------------------

/// A serializer that keeps error messages.
struct Checked<'s, S> {
    inner: S,
    state: &'s State,
}

/// A value handed to the inner serializer: it serializes through [`Checked`].
struct Nested<'s, 'v, T: ?Sized> {
    inner: &'v T,
    state: &'s State,
}

/// Wraps the inner serializer's compound serializers.
struct Compound<'s, C> {
    inner: C,
    state: &'s State,
}

impl<T: Serialize + ?Sized> Serialize for Nested<'_, '_, T> {
    #[inline]
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let state = self.state;
        self.inner.serialize(Checked { inner: s, state }).map_err(|e| park_ser(state, e))
    }
}

macro_rules! checked_values {
    ($($method:ident($ty:ty);)*) => {$(
        #[inline]
        fn $method(self, v: $ty) -> Result<S::Ok, Message> {
            let state = self.state;
            self.inner.$method(v).map_err(|e| state.unpark(e))
        }
    )*};
}

macro_rules! checked_compounds {
    ($($method:ident($($arg:ident: $ty:ty),*) -> $assoc:ident;)*) => {$(
        #[inline]
        fn $method(self $(, $arg: $ty)*) -> Result<Self::$assoc, Message> {
            let state = self.state;
            match self.inner.$method($($arg),*) {
                Ok(inner) => Ok(Compound { inner, state }),
                Err(e) => Err(state.unpark(e)),
            }
        }
    )*};
}

impl<'s, S: Serializer> Serializer for Checked<'s, S> {
    type Ok = S::Ok;
    type Error = Message;
    type SerializeSeq = Compound<'s, S::SerializeSeq>;
    type SerializeTuple = Compound<'s, S::SerializeTuple>;
    type SerializeTupleStruct = Compound<'s, S::SerializeTupleStruct>;
    type SerializeTupleVariant = Compound<'s, S::SerializeTupleVariant>;
    type SerializeMap = Compound<'s, S::SerializeMap>;
    type SerializeStruct = Compound<'s, S::SerializeStruct>;
    type SerializeStructVariant = Compound<'s, S::SerializeStructVariant>;

    checked_values! {
        serialize_bool(bool);
        serialize_i8(i8);
        serialize_i16(i16);
        serialize_i32(i32);
        serialize_i64(i64);
        serialize_i128(i128);
        serialize_u8(u8);
        serialize_u16(u16);
        serialize_u32(u32);
        serialize_u64(u64);
        serialize_u128(u128);
        serialize_f32(f32);
        serialize_f64(f64);
        serialize_char(char);
        serialize_str(&str);
        serialize_bytes(&[u8]);
        serialize_unit_struct(&'static str);
    }

    checked_compounds! {
        serialize_seq(len: Option<usize>) -> SerializeSeq;
        serialize_tuple(len: usize) -> SerializeTuple;
        serialize_tuple_struct(name: &'static str, len: usize) -> SerializeTupleStruct;
        serialize_tuple_variant(name: &'static str, index: u32, variant: &'static str, len: usize)
            -> SerializeTupleVariant;
        serialize_map(len: Option<usize>) -> SerializeMap;
        serialize_struct(name: &'static str, len: usize) -> SerializeStruct;
        serialize_struct_variant(
            name: &'static str, index: u32, variant: &'static str, len: usize
        ) -> SerializeStructVariant;
    }

    #[inline]
    fn serialize_none(self) -> Result<S::Ok, Message> {
        let state = self.state;
        self.inner.serialize_none().map_err(|e| state.unpark(e))
    }

    #[inline]
    fn serialize_unit(self) -> Result<S::Ok, Message> {
        let state = self.state;
        self.inner.serialize_unit().map_err(|e| state.unpark(e))
    }

    #[inline]
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<S::Ok, Message> {
        let state = self.state;
        self.inner.serialize_some(&Nested { inner: value, state }).map_err(|e| state.unpark(e))
    }

    #[inline]
    fn serialize_unit_variant(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
    ) -> Result<S::Ok, Message> {
        let state = self.state;
        self.inner.serialize_unit_variant(name, index, variant).map_err(|e| state.unpark(e))
    }

    #[inline]
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        name: &'static str,
        value: &T,
    ) -> Result<S::Ok, Message> {
        let state = self.state;
        self.inner
            .serialize_newtype_struct(name, &Nested { inner: value, state })
            .map_err(|e| state.unpark(e))
    }

    #[inline]
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<S::Ok, Message> {
        let state = self.state;
        self.inner
            .serialize_newtype_variant(name, index, variant, &Nested { inner: value, state })
            .map_err(|e| state.unpark(e))
    }

    /// Bytes (a `Vec<u8>`, a `&[u8]`...) go as one byte string: postcard
    /// writes a sequence of `u8`s and a byte string alike.
    #[inline]
    fn collect_seq<I>(self, items: I) -> Result<S::Ok, Message>
    where
        I: IntoIterator,
        I::Item: Serialize,
    {
        use ser::SerializeSeq;
        let items = items.into_iter();
        if let Some(bytes) = crate::bytes::byte_slice(&items) {
            return self.serialize_bytes(bytes);
        }
        let items = match crate::bytes::collect_bytes(items) {
            Ok(bytes) => return self.serialize_bytes(&bytes),
            Err(items) => items,
        };
        let len = match items.size_hint() {
            (lo, Some(hi)) if lo == hi => Some(lo),
            _ => None,
        };
        let mut seq = self.serialize_seq(len)?;
        for item in items {
            seq.serialize_element(&item)?;
        }
        seq.end()
    }

    #[inline]
    fn collect_str<T: Display + ?Sized>(self, value: &T) -> Result<S::Ok, Message> {
        let state = self.state;
        self.inner.collect_str(value).map_err(|e| state.unpark(e))
    }

    #[inline]
    fn is_human_readable(&self) -> bool {
        self.inner.is_human_readable()
    }
}

macro_rules! compound {
    ($trait:ident { $($method:ident($($key:ident: $kty:ty),*);)* }) => {
        impl<C: ser::$trait> ser::$trait for Compound<'_, C> {
            type Ok = C::Ok;
            type Error = Message;

            $(
                #[inline]
                fn $method<T: Serialize + ?Sized>(&mut self $(, $key: $kty)*, value: &T)
                    -> Result<(), Message>
                {
                    let state = self.state;
                    ser::$trait::$method(&mut self.inner $(, $key)*, &Nested { inner: value, state })
                        .map_err(|e| state.unpark(e))
                }
            )*


            #[inline]
            fn end(self) -> Result<C::Ok, Message> {
                let state = self.state;
                ser::$trait::end(self.inner).map_err(|e| state.unpark(e))
            }
        }
    };
}

compound!(SerializeSeq { serialize_element(); });
compound!(SerializeTuple { serialize_element(); });
compound!(SerializeTupleStruct { serialize_field(); });
compound!(SerializeTupleVariant { serialize_field(); });
compound!(SerializeMap { serialize_key(); serialize_value(); });
compound!(SerializeStruct { serialize_field(key: &'static str); });
compound!(SerializeStructVariant { serialize_field(key: &'static str); });

// --- top-level leaves -----------------------------------------------------
//
// A chunk of `map` items is mostly top-level numbers. Through postcard and
// the adapters above, one `u64` costs about 70 instructions to encode (a
// varint into a stack buffer, then a copy into the output) and as many to
// decode (a fresh deserializer, a pop per byte through a `Result`, the
// visitor's wrapper). The top level gets its own serializer and
// deserializer: numbers and booleans are written and read here, byte for
// byte as postcard does (the tests hold both to postcard's bytes), and every
// other method is the adapters' above, unchanged. A decode that meets
// anything unusual (an overlong varint, a byte that is no bool, the end of
// the input) leaves it to postcard, so its errors are postcard's own.

type PostcardSer<'v> = postcard::Serializer<VecRef<'v>>;

/// The serializer of a top-level value: leaves straight into the buffer.
struct TopSer<'s, 'o, 'v> {
    inner: &'o mut PostcardSer<'v>,
    state: &'s State,
}

impl<'s, 'o, 'v> TopSer<'s, 'o, 'v> {
    #[inline]
    fn checked(self) -> Checked<'s, &'o mut PostcardSer<'v>> {
        Checked { inner: self.inner, state: self.state }
    }

    #[inline(always)]
    fn varint(self, v: u64) -> Result<(), Message> {
        put_varint(self.inner.output.0, v);
        Ok(())
    }

    #[inline]
    fn raw(self, bytes: &[u8]) -> Result<(), Message> {
        self.inner.output.0.extend_from_slice(bytes);
        Ok(())
    }
}

/// Appends `v` as a LEB128 varint, as postcard writes every unsigned
/// integer wider than a byte.
#[inline(always)]
fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    out.reserve(10);
    let len = out.len();
    let mut n = 0;
    // SAFETY: `reserve(10)` left room for at least 10 bytes after `len`,
    // and a u64's varint is at most 10 bytes (`n < 10` on every write: each
    // turn of the loop drops 7 of the 64 bits); the bytes are written before
    // the length covers them.
    unsafe {
        let at = out.as_mut_ptr().add(len);
        while v >= 0x80 {
            at.add(n).write(v as u8 | 0x80);
            v >>= 7;
            n += 1;
        }
        at.add(n).write(v as u8);
        out.set_len(len + n + 1);
    }
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

macro_rules! top_forward_ser {
    ($($method:ident($($arg:ident: $ty:ty),*) -> $ret:ty;)*) => {$(
        #[inline]
        fn $method(self $(, $arg: $ty)*) -> $ret {
            self.checked().$method($($arg),*)
        }
    )*};
}

type TopChecked<'s, 'o, 'v> = Checked<'s, &'o mut PostcardSer<'v>>;

impl<'s, 'o, 'v> Serializer for TopSer<'s, 'o, 'v> {
    type Ok = ();
    type Error = Message;
    type SerializeSeq = <TopChecked<'s, 'o, 'v> as Serializer>::SerializeSeq;
    type SerializeTuple = <TopChecked<'s, 'o, 'v> as Serializer>::SerializeTuple;
    type SerializeTupleStruct = <TopChecked<'s, 'o, 'v> as Serializer>::SerializeTupleStruct;
    type SerializeTupleVariant = <TopChecked<'s, 'o, 'v> as Serializer>::SerializeTupleVariant;
    type SerializeMap = <TopChecked<'s, 'o, 'v> as Serializer>::SerializeMap;
    type SerializeStruct = <TopChecked<'s, 'o, 'v> as Serializer>::SerializeStruct;
    type SerializeStructVariant = <TopChecked<'s, 'o, 'v> as Serializer>::SerializeStructVariant;

    #[inline]
    fn serialize_bool(self, v: bool) -> Result<(), Message> {
        self.raw(&[u8::from(v)])
    }
    #[inline]
    fn serialize_u8(self, v: u8) -> Result<(), Message> {
        self.raw(&[v])
    }
    #[inline]
    fn serialize_i8(self, v: i8) -> Result<(), Message> {
        self.raw(&v.to_le_bytes())
    }
    #[inline]
    fn serialize_u16(self, v: u16) -> Result<(), Message> {
        self.varint(u64::from(v))
    }
    #[inline]
    fn serialize_u32(self, v: u32) -> Result<(), Message> {
        self.varint(u64::from(v))
    }
    #[inline]
    fn serialize_u64(self, v: u64) -> Result<(), Message> {
        self.varint(v)
    }
    #[inline]
    fn serialize_i16(self, v: i16) -> Result<(), Message> {
        self.varint(zigzag(i64::from(v)))
    }
    #[inline]
    fn serialize_i32(self, v: i32) -> Result<(), Message> {
        self.varint(zigzag(i64::from(v)))
    }
    #[inline]
    fn serialize_i64(self, v: i64) -> Result<(), Message> {
        self.varint(zigzag(v))
    }
    #[inline]
    fn serialize_f32(self, v: f32) -> Result<(), Message> {
        self.raw(&v.to_le_bytes())
    }
    #[inline]
    fn serialize_f64(self, v: f64) -> Result<(), Message> {
        self.raw(&v.to_le_bytes())
    }

    top_forward_ser! {
        serialize_i128(v: i128) -> Result<(), Message>;
        serialize_u128(v: u128) -> Result<(), Message>;
        serialize_char(v: char) -> Result<(), Message>;
        serialize_str(v: &str) -> Result<(), Message>;
        serialize_bytes(v: &[u8]) -> Result<(), Message>;
        serialize_none() -> Result<(), Message>;
        serialize_unit() -> Result<(), Message>;
        serialize_unit_struct(name: &'static str) -> Result<(), Message>;
        serialize_unit_variant(name: &'static str, index: u32, variant: &'static str)
            -> Result<(), Message>;
        serialize_seq(len: Option<usize>) -> Result<Self::SerializeSeq, Message>;
        serialize_tuple(len: usize) -> Result<Self::SerializeTuple, Message>;
        serialize_tuple_struct(name: &'static str, len: usize)
            -> Result<Self::SerializeTupleStruct, Message>;
        serialize_tuple_variant(name: &'static str, index: u32, variant: &'static str, len: usize)
            -> Result<Self::SerializeTupleVariant, Message>;
        serialize_map(len: Option<usize>) -> Result<Self::SerializeMap, Message>;
        serialize_struct(name: &'static str, len: usize)
            -> Result<Self::SerializeStruct, Message>;
        serialize_struct_variant(
            name: &'static str, index: u32, variant: &'static str, len: usize
        ) -> Result<Self::SerializeStructVariant, Message>;
    }

    #[inline]
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), Message> {
        self.checked().serialize_some(value)
    }

    #[inline]
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        name: &'static str,
        value: &T,
    ) -> Result<(), Message> {
        self.checked().serialize_newtype_struct(name, value)
    }

    #[inline]
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<(), Message> {
        self.checked().serialize_newtype_variant(name, index, variant, value)
    }

    /// A top-level `Vec<u8>` (a task's argument) moves as one byte string
    /// too (see [`Checked`]'s `collect_seq`): serde's default would write it
    /// a byte at a time.
    #[inline]
    fn collect_seq<I>(self, items: I) -> Result<(), Message>
    where
        I: IntoIterator,
        I::Item: Serialize,
    {
        self.checked().collect_seq(items)
    }

    #[inline]
    fn collect_str<T: Display + ?Sized>(self, value: &T) -> Result<(), Message> {
        self.checked().collect_str(value)
    }

    #[inline]
    fn is_human_readable(&self) -> bool {
        false
    }
}

/// The deserializer of a top-level value: leaves read here, the rest by
/// postcard through [`Limited`], from where the last value ended.
struct TopDe<'s, 'r, 'de> {
    rest: &'r mut &'de [u8],
    state: &'s State,
}

/// Reads a varint of at most `max - 1` bytes (so it cannot overflow a type
/// whose varint is at most `max` bytes); `None` for anything else (longer,
/// cut short), which postcard then reads and judges.
#[inline(always)]
fn take_short_varint(bytes: &[u8], max: usize) -> Option<(u64, usize)> {
    let mut v = 0u64;
    let mut i = 0;
    while i + 1 < max && i < bytes.len() {
        let b = bytes[i];
        v |= u64::from(b & 0x7f) << (7 * i);
        i += 1;
        if b & 0x80 == 0 {
            return Some((v, i));
        }
    }
    None
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

impl<'s, 'de> TopDe<'s, '_, 'de> {
    /// Decodes by postcard through the adapters, from `rest`.
    #[inline]
    fn slow<T>(
        self,
        f: impl FnOnce(
            Limited<'s, &mut postcard::Deserializer<'de, postcard::de_flavors::Slice<'de>>>,
        ) -> Result<T, Message>,
    ) -> Result<T, Message> {
        // Each value gets the element budget a lone `decode` of the rest
        // would; the depth is back at 0 after every value.
        self.state.elements_left.set(self.rest.len().saturating_add(MAX_EMPTY_ELEMENTS));
        let mut inner = postcard::Deserializer::from_bytes(self.rest);
        let value = f(Limited { inner: &mut inner, state: self.state })?;
        // A slice deserializer's remainder is always there.
        *self.rest = inner.finalize().unwrap_or_default();
        Ok(value)
    }

    /// A varint of a type whose varint is at most `max` bytes, if short.
    #[inline(always)]
    fn varint(&mut self, max: usize) -> Option<u64> {
        let (v, used) = take_short_varint(self.rest, max)?;
        *self.rest = &self.rest[used..];
        Some(v)
    }

    #[inline]
    fn fixed<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (bytes, rest) = self.rest.split_first_chunk::<N>()?;
        *self.rest = rest;
        Some(*bytes)
    }
}

macro_rules! top_varint_de {
    ($($method:ident, $visit:ident, $max:expr, |$v:ident| $convert:expr;)*) => {$(
        #[inline]
        fn $method<V: Visitor<'de>>(mut self, visitor: V) -> Result<V::Value, Message> {
            match self.varint($max) {
                Some($v) => visitor.$visit($convert),
                None => self.slow(|d| d.$method(visitor)),
            }
        }
    )*};
}

macro_rules! top_forward_de {
    ($($method:ident($($arg:ident: $ty:ty),*);)*) => {$(
        #[inline]
        fn $method<V: Visitor<'de>>(self $(, $arg: $ty)*, visitor: V)
            -> Result<V::Value, Message>
        {
            self.slow(|d| d.$method($($arg,)* visitor))
        }
    )*};
}

impl<'de> Deserializer<'de> for TopDe<'_, '_, 'de> {
    type Error = Message;

    // The casts cannot truncate: a varint of fewer than `max` bytes holds
    // at most 7 * (max - 1) bits (14 for u16, 28 for u32).
    top_varint_de! {
        deserialize_u16, visit_u16, 3, |v| v as u16;
        deserialize_u32, visit_u32, 5, |v| v as u32;
        deserialize_u64, visit_u64, 10, |v| v;
        deserialize_i16, visit_i16, 3, |v| unzigzag(v) as i16;
        deserialize_i32, visit_i32, 5, |v| unzigzag(v) as i32;
        deserialize_i64, visit_i64, 10, |v| unzigzag(v);
    }

    #[inline]
    fn deserialize_bool<V: Visitor<'de>>(mut self, visitor: V) -> Result<V::Value, Message> {
        match self.rest.first() {
            Some(&b @ (0 | 1)) => {
                self.fixed::<1>();
                visitor.visit_bool(b == 1)
            }
            _ => self.slow(|d| d.deserialize_bool(visitor)),
        }
    }

    #[inline]
    fn deserialize_u8<V: Visitor<'de>>(mut self, visitor: V) -> Result<V::Value, Message> {
        match self.fixed::<1>() {
            Some([b]) => visitor.visit_u8(b),
            None => self.slow(|d| d.deserialize_u8(visitor)),
        }
    }

    #[inline]
    fn deserialize_i8<V: Visitor<'de>>(mut self, visitor: V) -> Result<V::Value, Message> {
        match self.fixed::<1>() {
            Some(b) => visitor.visit_i8(i8::from_le_bytes(b)),
            None => self.slow(|d| d.deserialize_i8(visitor)),
        }
    }

    #[inline]
    fn deserialize_f32<V: Visitor<'de>>(mut self, visitor: V) -> Result<V::Value, Message> {
        match self.fixed::<4>() {
            Some(b) => visitor.visit_f32(f32::from_le_bytes(b)),
            None => self.slow(|d| d.deserialize_f32(visitor)),
        }
    }

    #[inline]
    fn deserialize_f64<V: Visitor<'de>>(mut self, visitor: V) -> Result<V::Value, Message> {
        match self.fixed::<8>() {
            Some(b) => visitor.visit_f64(f64::from_le_bytes(b)),
            None => self.slow(|d| d.deserialize_f64(visitor)),
        }
    }

    top_forward_de! {
        deserialize_i128();
        deserialize_u128();
        deserialize_char();
        deserialize_str();
        deserialize_string();
        deserialize_bytes();
        deserialize_byte_buf();
        deserialize_unit();
        deserialize_unit_struct(name: &'static str);
        deserialize_any();
        deserialize_option();
        deserialize_newtype_struct(name: &'static str);
        deserialize_seq();
        deserialize_tuple(len: usize);
        deserialize_tuple_struct(name: &'static str, len: usize);
        deserialize_map();
        deserialize_struct(name: &'static str, fields: &'static [&'static str]);
        deserialize_enum(name: &'static str, variants: &'static [&'static str]);
        deserialize_identifier();
        deserialize_ignored_any();
    }

    #[inline]
    fn is_human_readable(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::{Deserialize, Serialize};

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    enum Shape {
        Dot,
        Line(u32, i64),
        Named { name: String, tags: Vec<String> },
        Wrapped(Option<Box<Shape>>),
    }

    type Mixed = (Vec<Shape>, std::collections::BTreeMap<u8, u128>, (char, f32, f64, i128, ()));

    #[test]
    fn bytes_are_postcards_own() {
        let value = (
            vec![
                Shape::Dot,
                Shape::Line(7, -3),
                Shape::Named { name: "n".into(), tags: vec!["a".into(), "b".into()] },
                Shape::Wrapped(Some(Box::new(Shape::Wrapped(None)))),
            ],
            std::collections::BTreeMap::from([(1u8, 2u128), (3, u128::MAX)]),
            ('x', 1.5f32, -2.25f64, i128::MIN, ()),
        );
        let ours = encode(&value).unwrap();
        assert_eq!(ours, postcard::to_stdvec(&value).unwrap());
        let back: Mixed = decode(&ours).unwrap();
        assert_eq!(back, value);
    }

    #[test]
    fn byte_slices_are_borrowed() {
        // `&[u8]` and `&str` can only decode from a borrowed slice: postcard's
        // fast path must still reach them through the adapters.
        let bytes = encode(&(&b"abc"[..], "de")).unwrap();
        let (b, s): (&[u8], &str) = decode(&bytes).unwrap();
        assert_eq!((b, s), (&b"abc"[..], "de"));
        assert!(std::ptr::eq(b.as_ptr(), bytes[1..].as_ptr()));
    }

    /// A `Vec<u8>` that is the whole value (a task's argument) is written
    /// as one byte string, not a byte at a time: one copy reserves what it
    /// needs, where pushes one by one leave the vector a power of two
    /// (the top-level serializer once lacked the fast path the nested one
    /// had: 8 MiB arguments cost 9 instructions a byte).
    #[test]
    fn a_top_level_byte_vector_is_copied_in_one_piece() {
        let n = 1_000_000;
        let v = vec![3u8; n];
        for out in [encode(&v).unwrap(), encode(&(7u8, &v)).unwrap()] {
            assert!(out.capacity() < n + 64, "grown by pushes: capacity {}", out.capacity());
        }
        assert_eq!(encode(&v).unwrap(), postcard::to_allocvec(&v).unwrap());
    }

    #[test]
    fn depth_is_limited() {
        // `Option<Option<…>>` 600 deep: `Some` is byte 1, then a final `None`.
        let mut bytes = vec![1u8; 600];
        bytes.push(0);
        // A type that nests as deep as its input says.
        struct Deep;
        impl<'de> Deserialize<'de> for Deep {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Deep, D::Error> {
                Option::<Deep>::deserialize(d).map(|_| Deep)
            }
        }
        let err = decode::<Deep>(&bytes).map(|_| ()).unwrap_err().to_string();
        assert!(err.contains("nested more than 512 levels"), "{err}");
        let ok = [&[1u8; 500][..], &[0]].concat();
        assert!(decode::<Deep>(&ok).is_ok());
    }

    #[test]
    fn custom_messages_survive_both_ways() {
        #[derive(Debug)]
        struct Picky;
        impl Serialize for Picky {
            fn serialize<S: Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
                Err(ser::Error::custom("picky says no"))
            }
        }
        impl<'de> Deserialize<'de> for Picky {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Picky, D::Error> {
                u8::deserialize(d)?;
                Err(de::Error::custom("picky refuses"))
            }
        }
        let mut out = vec![9];
        let err = encode_into(&vec![Picky], &mut out).unwrap_err().to_string();
        assert_eq!(err, "picky says no");
        assert_eq!(out, [9], "a failed encode leaves the buffer as it was");
        let err = decode::<Vec<Picky>>(&[1, 0]).unwrap_err().to_string();
        assert_eq!(err, "picky refuses");
        // postcard's own errors still read as postcard's.
        let err = decode::<String>(&[5, b'a']).unwrap_err().to_string();
        assert!(!err.is_empty());
    }

    #[test]
    fn zero_sized_elements_are_bounded() {
        // A `Vec<()>` claiming u64::MAX elements, in ten bytes.
        let mut bytes = vec![0xff; 9];
        bytes.push(0x01);
        let err = decode::<Vec<()>>(&bytes).unwrap_err().to_string();
        assert!(err.contains("more elements"), "{err}");
        assert_eq!(decode::<Vec<()>>(&encode(&vec![(); 1000]).unwrap()).unwrap().len(), 1000);
    }

    #[test]
    fn panics_are_caught() {
        struct Boom;
        impl<'de> Deserialize<'de> for Boom {
            fn deserialize<D: Deserializer<'de>>(_: D) -> Result<Boom, D::Error> {
                panic!("boom in deserialize")
            }
        }
        match decode::<Boom>(&[]) {
            Err(CodecError::Panic(f)) => assert_eq!(f.message, "boom in deserialize"),
            other => panic!("{:?}", other.map(|_| ())),
        }
    }
}

#[cfg(test)]
mod top_level_tests {
    use super::*;

    fn same_as_postcard<T>(values: &[T])
    where
        T: Serialize + de::DeserializeOwned + PartialEq + fmt::Debug,
    {
        for v in values {
            let ours = encode(v).unwrap();
            assert_eq!(ours, postcard::to_stdvec(v).unwrap(), "{v:?}");
            assert_eq!(&decode::<T>(&ours).unwrap(), v);
            // Followed by more bytes, as in a chunk: exactly its own are read.
            let mut two = ours.clone();
            two.extend_from_slice(&ours);
            let mut seq = SeqDecoder::new(&two);
            assert_eq!(&seq.next::<T>().unwrap(), v);
            assert_eq!(&seq.next::<T>().unwrap(), v);
            assert!(seq.rest.is_empty());
        }
    }

    #[test]
    fn top_level_leaves_are_postcards_bytes() {
        let edges = |max: u64| {
            let mut v = vec![0, 1, 0x7f, 0x80, 0x3fff, 0x4000, max - 1, max];
            v.extend((0..64).map(|s| 1u64 << s).filter(|&x| x <= max));
            v
        };
        same_as_postcard(&edges(u16::MAX.into()).iter().map(|&v| v as u16).collect::<Vec<_>>());
        same_as_postcard(&edges(u32::MAX.into()).iter().map(|&v| v as u32).collect::<Vec<_>>());
        same_as_postcard(&edges(u64::MAX));
        same_as_postcard(&edges(u64::MAX).iter().map(|&v| v as usize).collect::<Vec<_>>());
        let signed = |v: &[u64]| {
            v.iter().flat_map(|&x| [x as i64, (x as i64).wrapping_neg()]).collect::<Vec<_>>()
        };
        let s = signed(&edges(u64::MAX));
        same_as_postcard(&s);
        same_as_postcard(&s.iter().map(|&v| v as i32).collect::<Vec<_>>());
        same_as_postcard(&s.iter().map(|&v| v as i16).collect::<Vec<_>>());
        same_as_postcard(&[i64::MIN, i64::MAX, i32::MIN as i64]);
        same_as_postcard(&[0u8, 1, 0x80, 0xff]);
        same_as_postcard(&[0i8, -1, i8::MIN, i8::MAX]);
        same_as_postcard(&[true, false]);
        same_as_postcard(&[0.0f64, -1.5, f64::MAX, f64::MIN_POSITIVE, f64::INFINITY]);
        same_as_postcard(&[0.0f32, -1.5, f32::MAX]);
        // Values that are not leaves go through postcard as before.
        same_as_postcard(&[Some(3u64), None]);
        same_as_postcard(&[(1u64, -2i32, "x".to_string())]);
        same_as_postcard(&["", "text"].map(String::from));
    }

    #[test]
    fn top_level_leaves_refuse_what_postcard_refuses() {
        // Overlong varints, values too wide for the type, input cut short,
        // a byte that is no bool: each fails, and none reads past the input.
        let cases: [(&[u8], &str); 7] = [
            (&[0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x02], "u64"),
            (&[0xff; 11], "u64"),
            (&[0x80, 0x80, 0x80, 0x80, 0x10], "u32"),
            (&[0x80, 0x80, 0x04], "u16"),
            (&[0x80], "u64"),
            (&[], "u8"),
            (&[2], "bool"),
        ];
        for (bytes, ty) in cases {
            let failed = match ty {
                "u64" => decode::<u64>(bytes).is_err() && decode::<i64>(bytes).is_err(),
                "u32" => decode::<u32>(bytes).is_err() && decode::<i32>(bytes).is_err(),
                "u16" => decode::<u16>(bytes).is_err() && decode::<i16>(bytes).is_err(),
                "u8" => decode::<u8>(bytes).is_err() && decode::<f64>(bytes).is_err(),
                _ => decode::<bool>(bytes).is_err(),
            };
            assert!(failed, "{bytes:?} as {ty}");
            if ty != "bool" && !bytes.is_empty() {
                assert!(postcard::from_bytes::<u64>(bytes).is_err() || ty != "u64");
            }
        }
        // The longest valid varints are postcard's to read, and still read.
        let max = postcard::to_stdvec(&u64::MAX).unwrap();
        assert_eq!(max.len(), 10);
        assert_eq!(decode::<u64>(&max).unwrap(), u64::MAX);
        let max = postcard::to_stdvec(&u32::MAX).unwrap();
        assert_eq!(decode::<u32>(&max).unwrap(), u32::MAX);
    }
}
