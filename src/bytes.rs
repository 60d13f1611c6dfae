//! `Bytes`: a byte buffer that crosses to another process as one blob.
//!
//! (What to use for large binary data is told in [`Bytes`]'s documentation.)

use std::fmt;
use std::ops::{Deref, DerefMut};

use serde::de::{self, Deserialize, Deserializer, SeqAccess, Visitor};
use serde::{Serialize, Serializer};

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
///   the socket, whatever its type.
/// - [`Array`](crate::Array) for data that several processes read or write
///   in place: passing one to a task or a process sends a handle, and the
///   other side maps the same pages; nothing is copied at all.
///
/// Derefs to `[u8]` (and mutably to `Vec<u8>`'s slice); converts from and into
/// `Vec<u8>` without a copy.
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
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Bytes(Vec<u8>);

impl Bytes {
    /// An empty buffer.
    pub fn new() -> Bytes {
        Bytes(Vec::new())
    }

    /// The bytes, as the `Vec` they are kept in.
    pub fn into_vec(self) -> Vec<u8> {
        self.0
    }

    /// The `Vec` the bytes are kept in, to grow or shrink it.
    pub fn as_mut_vec(&mut self) -> &mut Vec<u8> {
        &mut self.0
    }
}

impl fmt::Debug for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A buffer may hold megabytes: show its length and a few bytes.
        const SHOWN: usize = 16;
        write!(f, "Bytes({} bytes: {:02x?}", self.0.len(), &self.0[..self.0.len().min(SHOWN)])?;
        if self.0.len() > SHOWN {
            f.write_str("…")?;
        }
        f.write_str(")")
    }
}

impl Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl DerefMut for Bytes {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.0
    }
}

impl AsRef<[u8]> for Bytes {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl From<Vec<u8>> for Bytes {
    fn from(v: Vec<u8>) -> Bytes {
        Bytes(v)
    }
}

impl From<&[u8]> for Bytes {
    fn from(v: &[u8]) -> Bytes {
        Bytes(v.to_vec())
    }
}

impl From<Bytes> for Vec<u8> {
    fn from(b: Bytes) -> Vec<u8> {
        b.0
    }
}

impl Serialize for Bytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
        d.deserialize_byte_buf(BytesVisitor)
    }
}

struct BytesVisitor;

impl<'de> Visitor<'de> for BytesVisitor {
    type Value = Bytes;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a byte buffer")
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Bytes, E> {
        Ok(Bytes(v.to_vec()))
    }

    fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Bytes, E> {
        Ok(Bytes(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Bytes, E> {
        Ok(Bytes(v.as_bytes().to_vec()))
    }

    /// Formats that write bytes as a sequence (JSON, say) still decode.
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Bytes, A::Error> {
        // The hint comes from the input: bound what it may reserve.
        let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 16));
        while let Some(b) = seq.next_element()? {
            v.push(b);
        }
        Ok(Bytes(v))
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

    #[test]
    fn debug_shows_a_prefix() {
        let s = format!("{:?}", Bytes::from(vec![7u8; 1000]));
        assert!(s.starts_with("Bytes(1000 bytes: [07, 07") && s.ends_with("…)"), "{s}");
    }
}
