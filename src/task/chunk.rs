//! The bytes of a chunk: the items of one task, going to a worker as
//! arguments and coming back as outcomes.
//!
//! ```text
//! n            u32 LE   items in the chunk
//! failed       u32 LE   how many of them are failures
//! payload_len  u64 LE
//! payload      the items' postcard encodings, back to back (a failed item
//!              holds its `Failure`)
//! lengths      n LEB128 varints, item i's `payload bytes << 1 | failed`
//! ```
//!
//! A chunk of primitive numbers (`u64`, `i32`, `f64`, …: see
//! [`Plain`]) whose items all succeeded is *plain*: `failed` is
//! [`PLAIN`], the payload is the items' little-endian bytes back to back and
//! there is no length table. Encoding it is one copy, and so is decoding it
//! in the parent. The reader checks that the payload is a whole number of
//! items of the type it expects, exactly `n` of them; a worker whose
//! results stop being plain (an item panicked) rewrites what it wrote so far
//! in the general form, which can say which items failed.
//!
//! The fast path reads a chunk as one value: when no item failed, the
//! payload is decoded from front to back by one decoder under one panic
//! guard, and the length table is not read at all. The table exists for the
//! failure path. When an item cannot be decoded (its `Deserialize` fails or
//! panics, or it lies about its own length) the decoder no longer knows where
//! the next item starts; rather than give up the rest of the chunk, or
//! decode the items before it a second time (which would run user code twice
//! and take passed descriptors twice), the walk goes on from the next item's
//! place in the table. So one bad value still fails only its own item, at
//! the price of about one byte per item on the wire.

use std::any::type_name;

use serde::de::{Deserialize, DeserializeOwned};
use serde::Serialize;
use smallvec::SmallVec;

use super::{catch_panic, Failure, FailureKind};
use crate::bytes::Plain;
use crate::codec::{self, CodecError, Encoder, SeqDecoder};
use crate::error::{Error, ErrorKind};
use crate::wire::INLINE;

const HEADER: usize = 16;

/// The `failed` word of a plain chunk (a count of failures can never reach
/// it: a chunk has fewer than `u32::MAX` items).
const PLAIN: u32 = u32::MAX;

/// Builds a chunk at the end of a buffer.
pub(crate) struct ChunkWriter<'a> {
    out: &'a mut Vec<u8>,
    /// Where the chunk's header is.
    start: usize,
    /// The end of the last whole item: what an item that panicked part-way
    /// through its encoding is cut back to.
    committed: usize,
    /// Where the last item began, in `out` and in `table`, and whether it
    /// was a failure: to take it back when a panic after its encoding (in a
    /// `Drop`) fails it.
    last: (usize, usize, bool),
    /// The length table.
    table: Table,
    n: usize,
    failed: usize,
    encoder: Encoder,
    /// The items so far are plain values written by [`raw`](Self::raw),
    /// with no table entries.
    plain: bool,
}

impl<'a> ChunkWriter<'a> {
    /// Starts a chunk of about `items` items at the end of `out`.
    pub(crate) fn new(out: &'a mut Vec<u8>, items: usize) -> ChunkWriter<'a> {
        let start = out.len();
        out.extend_from_slice(&[0; HEADER]);
        let committed = out.len();
        ChunkWriter {
            out,
            start,
            committed,
            last: (committed, 0, false),
            table: Table::with_capacity(items),
            n: 0,
            failed: 0,
            encoder: Encoder::new(),
            plain: false,
        }
    }

    /// Starts a plain chunk of `items` items of `size` bytes at the end of
    /// `out`: [`raw`](Self::raw) appends them, until the first failure
    /// makes it general ([`unplain`](Self::unplain)).
    fn new_plain(out: &'a mut Vec<u8>, items: usize, size: usize) -> ChunkWriter<'a> {
        out.reserve(HEADER + items.saturating_mul(size));
        let mut w = ChunkWriter::new(out, 0);
        w.plain = true;
        w
    }

    /// Appends one plain item's bytes.
    #[inline(always)]
    fn raw(&mut self, bytes: &[u8]) {
        debug_assert!(self.plain);
        self.out.extend_from_slice(bytes);
        self.committed = self.out.len();
        self.n += 1;
    }

    /// Makes a plain chunk general: its items so far are rewritten as
    /// postcard values with table entries, so that failures can follow.
    /// Nothing to do for a general chunk.
    fn unplain<T: Serialize>(&mut self, plain: Option<&Plain<T>>) {
        let Some(p) = plain.filter(|_| self.plain) else { return };
        self.plain = false;
        let body = self.start + HEADER;
        self.out.truncate(self.committed);
        let raw = self.out.split_off(body);
        self.committed = body;
        self.last = (body, 0, false);
        self.n = 0;
        self.table = Table::with_capacity(raw.len() / p.size());
        for item in raw.chunks_exact(p.size()) {
            // A primitive number: its encoding cannot fail.
            let _ = self.value(&p.read(item));
        }
    }

    #[inline(always)]
    fn commit(&mut self, failed: bool) {
        let len = self.out.len() - self.committed;
        self.last = (self.committed, self.table.len(), failed);
        self.table.push((len as u64) << 1 | u64::from(failed));
        self.committed = self.out.len();
        self.n += 1;
        self.failed += usize::from(failed);
    }

    /// Appends `value` as the next item. On an error nothing is appended; a
    /// panic in its `Serialize` leaves part of it, which [`fail_last`]
    /// (Self::fail_last) takes back.
    #[inline(always)]
    pub(crate) fn value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), String> {
        self.encoder.append(value, self.out)?;
        self.commit(false);
        Ok(())
    }

    /// Appends a failed item.
    pub(crate) fn failure(&mut self, failure: &Failure) {
        self.out.truncate(self.committed);
        // A `Failure` is plain data: its encoding cannot fail.
        let _ = self.encoder.append(failure, self.out);
        self.commit(true);
    }

    /// Fails item `index` with `failure` after a panic: whatever was written
    /// of it (part of its encoding, or all of it when the panic came later)
    /// is replaced, so the item has exactly one outcome.
    pub(crate) fn fail_last(&mut self, index: usize, failure: &Failure) {
        self.out.truncate(self.committed);
        if self.n > index {
            let (at, table_at, failed) = self.last;
            self.out.truncate(at);
            self.table.truncate(table_at);
            self.committed = at;
            self.n -= 1;
            self.failed -= usize::from(failed);
        }
        self.failure(failure);
    }

    /// Ends the chunk: appends the length table and fills in the header.
    pub(crate) fn finish(self) {
        self.out.truncate(self.committed);
        let payload_len = (self.committed - self.start - HEADER) as u64;
        // A chunk's items are bounded by its bytes, which no frame lets
        // exceed u32::MAX; saturate rather than wrap if one ever did.
        let n = u32::try_from(self.n).unwrap_or(u32::MAX);
        let failed = match self.plain {
            true => PLAIN,
            false => u32::try_from(self.failed).unwrap_or(u32::MAX - 1),
        };
        self.out[self.start..self.start + HEADER].copy_from_slice(&header(n, failed, payload_len));
        self.out.extend_from_slice(self.table.bytes());
    }
}

/// A chunk's header.
fn header(n: u32, failed: u32, payload_len: u64) -> [u8; HEADER] {
    let mut header = [0; HEADER];
    header[..4].copy_from_slice(&n.to_le_bytes());
    header[4..8].copy_from_slice(&failed.to_le_bytes());
    header[8..].copy_from_slice(&payload_len.to_le_bytes());
    header
}

/// A chunk's length table while it is built: on the stack for small chunks
/// (a one-item chunk is the `apply` hot path: no allocation for it), else
/// one vector reserved once. `SmallVec::push` asks on every byte where its
/// data lives; for a chunk of a million small items that question was a
/// third of the cost of writing the table, and a `Vec` never asks it.
enum Table {
    Small(SmallVec<[u8; SMALL_TABLE]>),
    Big(Vec<u8>),
}

const SMALL_TABLE: usize = 32;

impl Table {
    fn with_capacity(items: usize) -> Table {
        if items <= SMALL_TABLE {
            Table::Small(SmallVec::new())
        } else {
            // One byte per item of fewer than 64 bytes; more grows.
            Table::Big(Vec::with_capacity(items))
        }
    }

    /// Appends `v` as a LEB128 varint.
    #[inline(always)]
    fn push(&mut self, mut v: u64) {
        match self {
            Table::Big(t) => {
                while v >= 0x80 {
                    t.push(v as u8 | 0x80);
                    v >>= 7;
                }
                t.push(v as u8);
            }
            Table::Small(t) => {
                while v >= 0x80 {
                    t.push(v as u8 | 0x80);
                    v >>= 7;
                }
                t.push(v as u8);
            }
        }
    }

    fn len(&self) -> usize {
        self.bytes().len()
    }

    fn truncate(&mut self, len: usize) {
        match self {
            Table::Big(t) => t.truncate(len),
            Table::Small(t) => t.truncate(len),
        }
    }

    fn bytes(&self) -> &[u8] {
        match self {
            Table::Big(t) => t,
            Table::Small(t) => t,
        }
    }
}

/// Reads one varint from the front of `bytes`; `None` when it is cut short
/// or longer than a u64.
fn take_varint(bytes: &mut &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let (&b, rest) = bytes.split_first()?;
        *bytes = rest;
        v |= u64::from(b & 0x7f).checked_shl(shift)?;
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

fn malformed() -> Failure {
    Failure::new(FailureKind::Protocol, "malformed item in a task frame".to_string())
}

/// A chunk's parts, with its header checked.
struct Chunk<'a> {
    n: usize,
    failed: usize,
    payload: &'a [u8],
    table: &'a [u8],
    /// Items of one plain type, back to back, no table (`failed` is 0).
    plain: bool,
}

impl<'a> Chunk<'a> {
    fn parse(bytes: &'a [u8]) -> Result<Chunk<'a>, Failure> {
        let (Some(header), Some(rest)) = (bytes.get(..HEADER), bytes.get(HEADER..)) else {
            return Err(malformed());
        };
        let word = |at: usize| u32::from_le_bytes(header[at..at + 4].try_into().unwrap());
        let (n, failed) = (word(0) as usize, word(4) as usize);
        let payload_len = u64::from_le_bytes(header[8..].try_into().unwrap());
        let payload_len = usize::try_from(payload_len).map_err(|_| malformed())?;
        if payload_len > rest.len() {
            return Err(malformed());
        }
        let (payload, table) = rest.split_at(payload_len);
        if failed == PLAIN as usize {
            // No table; every plain item has at least one byte, which bounds
            // the items a peer can claim by what it sent (the reader checks
            // the exact size for its type).
            if !table.is_empty() || n > payload.len() {
                return Err(malformed());
            }
            return Ok(Chunk { n, failed: 0, payload, table, plain: true });
        }
        // Every item has a table entry of at least one byte: this bounds the
        // items a peer can claim, even zero-sized ones, by what it sent.
        if table.len() < n {
            return Err(malformed());
        }
        Ok(Chunk { n, failed, payload, table, plain: false })
    }

    /// The payload of a plain chunk as `T`s, when it holds exactly `n` of
    /// them.
    fn plain_items<T>(&self) -> Option<(Plain<T>, &'a [u8])> {
        let p = Plain::<T>::of().filter(|_| self.plain)?;
        (self.n.checked_mul(p.size()) == Some(self.payload.len())).then_some((p, self.payload))
    }
}

/// Walks the items of a chunk by its length table. A malformed chunk yields
/// one failure and stops.
pub(crate) struct ItemReader<'a> {
    left: usize,
    payload: &'a [u8],
    table: &'a [u8],
    /// A plain chunk's item size: items are cut from the payload, not by
    /// the table.
    plain: Option<usize>,
}

impl<'a> ItemReader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> ItemReader<'a> {
        match Chunk::parse(bytes) {
            Ok(c) => ItemReader::from(&c, 0),
            // One item, which `next` finds malformed.
            Err(_) => ItemReader::broken(),
        }
    }

    /// One item, which `entry` finds malformed.
    fn broken() -> ItemReader<'a> {
        ItemReader { left: 1, payload: &[], table: &[], plain: None }
    }

    /// The items of `chunk` from item `skip` on.
    fn from(chunk: &Chunk<'a>, skip: usize) -> ItemReader<'a> {
        let plain = match chunk.plain {
            // Items of one size, which must divide the payload.
            true if chunk.n > 0 && chunk.payload.len() % chunk.n == 0 => {
                Some(chunk.payload.len() / chunk.n)
            }
            true => return ItemReader::broken(),
            false => None,
        };
        let mut reader =
            ItemReader { left: chunk.n, payload: chunk.payload, table: chunk.table, plain };
        for _ in 0..skip {
            if reader.entry().is_none() {
                return ItemReader::broken();
            }
        }
        reader
    }

    /// The next item's bytes and whether it is a failure.
    fn entry(&mut self) -> Option<(&'a [u8], bool)> {
        self.left = self.left.checked_sub(1)?;
        if let Some(size) = self.plain {
            let (body, rest) = self.payload.split_at_checked(size)?;
            self.payload = rest;
            return Some((body, false));
        }
        let v = take_varint(&mut self.table)?;
        let len = usize::try_from(v >> 1).ok().filter(|&len| len <= self.payload.len())?;
        let (body, rest) = self.payload.split_at(len);
        self.payload = rest;
        Some((body, v & 1 == 1))
    }
}

impl<'a> Iterator for ItemReader<'a> {
    type Item = Result<&'a [u8], Failure>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        Some(match self.entry() {
            Some((body, false)) => Ok(body),
            Some((body, true)) => Err(codec::decode(body).unwrap_or_else(|_| malformed())),
            None => {
                self.left = 0;
                Err(malformed())
            }
        })
    }
}

/// One item of a chunk, as [`walk`] hands it over.
enum Item<T> {
    Value(T),
    /// Its `Deserialize` failed, with this message.
    Undecodable(String),
    /// It panicked: in its `Deserialize`, or in what the caller did with it.
    Panicked(Failure),
    /// It was a failure (or malformed) when it arrived.
    Failed(Failure),
}

/// Decodes up to `limit` items of `chunk` as `T`s, giving each one's outcome
/// to `each` (item by item, in order, exactly once), and returns how many it
/// gave: fewer than `limit` when the chunk has fewer items or is malformed.
///
/// `each` runs under the walk's panic guard, which covers the whole run of
/// items after the last panic; a panic fails only the item it happened in,
/// and the walk goes on under a fresh guard.
fn walk<'de, T, E>(chunk: &Chunk<'de>, limit: usize, mut each: E) -> usize
where
    T: Deserialize<'de>,
    E: FnMut(usize, Item<T>),
{
    let n = limit.min(chunk.n);
    if chunk.plain {
        return walk_plain(chunk, n, each);
    }
    let mut next = 0;
    // Items back to back: the fast path, while it knows where item `next`
    // starts (and only when no item failed).
    let mut seq = (chunk.failed == 0).then(|| SeqDecoder::new(chunk.payload));
    // Items by the table, positioned at item `next`, once off the fast path.
    let mut table: Option<ItemReader<'de>> = None;
    let mut stopped = false;
    while next < n && !stopped {
        // Whether item `next` was decoded, so that `seq` is past it.
        let mut decoded = false;
        let run = catch_panic(|| {
            while next < n {
                decoded = false;
                if let Some(decoder) = seq.as_mut() {
                    match decoder.next::<T>() {
                        Ok(value) => {
                            decoded = true;
                            each(next, Item::Value(value));
                        }
                        Err(e) => {
                            seq = None;
                            table = Some(ItemReader::from(chunk, next + 1));
                            each(next, Item::Undecodable(e));
                        }
                    }
                } else {
                    let reader = table.get_or_insert_with(|| ItemReader::from(chunk, next));
                    match reader.entry() {
                        Some((body, false)) => match SeqDecoder::new(body).next::<T>() {
                            Ok(value) => each(next, Item::Value(value)),
                            Err(e) => each(next, Item::Undecodable(e)),
                        },
                        Some((body, true)) => {
                            let failure = codec::decode(body).unwrap_or_else(|_| malformed());
                            each(next, Item::Failed(failure));
                        }
                        None => {
                            // The table ends or lies: nothing after this
                            // item can be found.
                            each(next, Item::Failed(malformed()));
                            next += 1;
                            stopped = true;
                            return;
                        }
                    }
                }
                next += 1;
            }
        });
        match run {
            Ok(()) => break,
            Err(failure) => {
                if seq.is_some() && !decoded {
                    // It panicked inside its own `Deserialize`: where the
                    // next item starts is now only in the table.
                    seq = None;
                    table = Some(ItemReader::from(chunk, next + 1));
                }
                each(next, Item::Panicked(failure));
                next += 1;
            }
        }
    }
    next
}

/// [`walk`] over a plain chunk: its items cannot fail to decode, so only a
/// panic in `each` leaves the run of items, and the walk goes on after the
/// item it happened in. A chunk that is not `n` items of `T` is malformed:
/// one failure, and the walk stops.
fn walk_plain<'de, T, E>(chunk: &Chunk<'de>, n: usize, mut each: E) -> usize
where
    E: FnMut(usize, Item<T>),
{
    let Some((p, payload)) = chunk.plain_items::<T>() else {
        if n > 0 {
            each(0, Item::Failed(malformed()));
        }
        return n.min(1);
    };
    let mut items = payload.chunks_exact(p.size()).take(n);
    let mut next = 0;
    while next < n {
        let run = catch_panic(|| {
            for item in items.by_ref() {
                each(next, Item::Value(p.read(item)));
                next += 1;
            }
        });
        match run {
            Ok(()) => break,
            Err(failure) => {
                each(next, Item::Panicked(failure));
                next += 1;
            }
        }
    }
    next
}

/// Encodes `items` as one chunk, with the descriptors of any handles in them.
/// An item that cannot be serialized becomes a failed item, so it fails its
/// own task only; one whose `Serialize` panics fails it as a panic.
pub(crate) fn encode_chunk<T: Serialize>(items: &[T]) -> (Vec<u8>, Vec<std::os::fd::OwnedFd>) {
    // Primitive numbers: the header and one copy; no descriptors in them.
    if let Some(p) = Plain::<T>::of().filter(|_| !items.is_empty() && items.len() < PLAIN as usize)
    {
        let bytes = p.bytes_of(items);
        let mut chunk = Vec::with_capacity(HEADER + bytes.len());
        let mut w = ChunkWriter::new(&mut chunk, 0);
        w.plain = true;
        w.out.extend_from_slice(bytes);
        w.committed = w.out.len();
        w.n = items.len();
        w.finish();
        return (chunk, Vec::new());
    }
    // Room for the header, small items and their table entries: no
    // reallocation for a chunk of small values.
    let item = std::mem::size_of::<T>().min(64) + 2;
    let mut chunk = Vec::with_capacity(HEADER + item * items.len() + 8);
    let ((), fds) = crate::fdpass::collect(|| {
        let mut w = ChunkWriter::new(&mut chunk, items.len());
        let mut next = 0;
        while next < items.len() {
            let run = catch_panic(|| {
                for item in &items[next..] {
                    if let Err(e) = w.value(item) {
                        w.failure(&Failure::new(
                            FailureKind::Serialize,
                            format!(
                                "could not serialize the task's argument (type `{}`) in the \
                                 parent: {e}",
                                type_name::<T>()
                            ),
                        ));
                    }
                    next += 1;
                }
            });
            if let Err(failure) = run {
                w.fail_last(next, &failure);
                next += 1;
            }
        }
        w.finish();
    });
    (chunk, fds)
}

/// The chunk of the one item `item` (one call: `apply`, `apply_async`, an
/// executor's `submit`), as a job keeps it: one primitive number is held in
/// the chunk itself, with no allocation; anything else as
/// [`encode_chunk`] makes it.
pub(crate) fn encode_one<T: Serialize>(
    item: &T,
) -> (crate::wire::Chunk, Vec<std::os::fd::OwnedFd>) {
    if let Some(p) = Plain::<T>::of().filter(|_| HEADER + size_of::<T>() <= INLINE) {
        let mut bytes = [0; INLINE];
        bytes[..HEADER].copy_from_slice(&header(1, PLAIN, size_of::<T>() as u64));
        bytes[HEADER..HEADER + size_of::<T>()]
            .copy_from_slice(p.bytes_of(std::slice::from_ref(item)));
        let len = (HEADER + size_of::<T>()) as u8;
        return (crate::wire::Chunk::Inline { len, bytes }, Vec::new());
    }
    let (chunk, fds) = encode_chunk(std::slice::from_ref(item));
    (chunk.into(), fds)
}

/// Appends a chunk of `count` items that all fail with `failure`.
pub(crate) fn encode_failures(failure: &Failure, count: usize, out: &mut Vec<u8>) {
    let mut w = ChunkWriter::new(out, count);
    for _ in 0..count {
        w.failure(failure);
    }
    w.finish();
}

/// Runs `call` on every argument of the chunk `input` (in a worker) and
/// appends the chunk of its outcomes to `out`: one outcome per item, under
/// one panic guard for the whole loop (see [`walk`]).
pub(super) fn run<A, R>(input: &[u8], out: &mut Vec<u8>, mut call: impl FnMut(A) -> R)
where
    A: DeserializeOwned,
    R: Serialize,
{
    let chunk = match Chunk::parse(input) {
        Ok(chunk) => chunk,
        Err(failure) => return encode_failures(&failure, 1, out),
    };
    // Primitive results are written as a plain chunk while every item
    // succeeds (a chunk of one too: its header is all the table it needs).
    let plain = Plain::<R>::of().filter(|_| chunk.n > 0 && chunk.n < PLAIN as usize);
    let mut w = match &plain {
        Some(p) => ChunkWriter::new_plain(out, chunk.n, p.size()),
        None => ChunkWriter::new(out, chunk.n),
    };
    let plain = plain.as_ref();
    if let (Some(pr), Some((pa, payload))) = (plain, chunk.plain_items::<A>()) {
        // Numbers to numbers (`map(inc, 0..n)`): one loop, no item enum,
        // no callback; a panic fails its item and the loop goes on.
        let mut items = payload.chunks_exact(pa.size());
        let mut next = 0;
        while next < chunk.n {
            let run = catch_panic(|| {
                for item in items.by_ref() {
                    let result = call(pa.read(item));
                    if w.plain {
                        w.raw(pr.bytes_of(std::slice::from_ref(&result)));
                    } else {
                        // A primitive number: its encoding cannot fail.
                        let _ = w.value(&result);
                    }
                    next += 1;
                }
            });
            match run {
                Ok(()) => break,
                Err(failure) => {
                    w.unplain(plain);
                    w.fail_last(next, &failure);
                    next += 1;
                }
            }
        }
        return w.finish();
    }
    walk::<A, _>(&chunk, chunk.n, |index, item| match item {
        Item::Value(args) => {
            // The result is dropped inside the guard too: a panic in its
            // `Drop` fails this item (`fail_last` replaces its outcome).
            let result = call(args);
            if let Some(p) = plain.filter(|_| w.plain) {
                // A primitive number: nothing can fail, nothing to drop.
                w.raw(p.bytes_of(std::slice::from_ref(&result)));
                return;
            }
            w.unplain(plain);
            if let Err(e) = w.value(&result) {
                w.failure(&Failure::new(
                    FailureKind::Serialize,
                    format!(
                        "the worker could not serialize the task's result (type `{}`): {e}",
                        type_name::<R>()
                    ),
                ));
            }
        }
        Item::Undecodable(e) => {
            w.unplain(plain);
            w.failure(&Failure::new(
                FailureKind::Deserialize,
                format!(
                    "the worker could not deserialize the task's argument (type `{}`): {e}",
                    type_name::<A>()
                ),
            ))
        }
        Item::Failed(failure) => {
            w.unplain(plain);
            w.failure(&failure)
        }
        Item::Panicked(failure) => {
            w.unplain(plain);
            w.fail_last(index, &failure)
        }
    });
    w.finish();
}

/// Decodes the outcomes of a chunk of `n` items run by worker `pid`.
pub(crate) fn decode_outcomes<R: DeserializeOwned>(
    bytes: &[u8],
    fds: Vec<std::os::fd::OwnedFd>,
    n: usize,
    pid: Option<u32>,
) -> Outcomes<R> {
    if fds.is_empty() && Plain::<R>::of().is_some() {
        // Numbers hold no handles: no descriptor list to install.
        return decode_items(bytes, n, pid);
    }
    crate::fdpass::supply(fds, || decode_items(bytes, n, pid))
}

/// Decodes the outcome of a chunk of one item run by worker `pid`: as
/// [`decode_outcomes`] with `n == 1`, without a vector for the one outcome
/// (the `apply`/`apply_async` hot path).
pub(crate) fn decode_one<R: DeserializeOwned>(
    bytes: &[u8],
    fds: Vec<std::os::fd::OwnedFd>,
    pid: Option<u32>,
) -> crate::Result<R> {
    let decode = || {
        let chunk = Chunk::parse(bytes).map_err(|failure| failure.into_error(pid))?;
        if let Some((p, payload)) = chunk.plain_items::<R>().filter(|_| chunk.n == 1) {
            // One number: nothing in reading it can fail or panic.
            return Ok(p.read(payload));
        }
        let mut one = None;
        walk::<R, _>(&chunk, 1, |_, item| one = Some(outcome(item, pid)));
        one.unwrap_or_else(|| {
            Err(Error::new(
                ErrorKind::Protocol,
                format!("a worker returned {} results for a chunk of 1 items", chunk.n),
            ))
        })
    };
    if fds.is_empty() && Plain::<R>::of().is_some() {
        // Numbers hold no handles: no descriptor list to install.
        return decode();
    }
    crate::fdpass::supply(fds, decode)
}

/// The outcome of one decoded result.
fn outcome<R>(item: Item<R>, pid: Option<u32>) -> crate::Result<R> {
    let undecodable = |e: CodecError| {
        Error::new(
            ErrorKind::Deserialize,
            format!(
                "could not deserialize the task's result (type `{}`) in the parent: {e}",
                type_name::<R>()
            ),
        )
    };
    match item {
        Item::Value(value) => Ok(value),
        Item::Undecodable(e) => Err(undecodable(CodecError::Serde(e))),
        Item::Panicked(failure) => Err(undecodable(CodecError::Panic(failure))),
        Item::Failed(failure) => Err(failure.into_error(pid)),
    }
}

fn decode_items<R: DeserializeOwned>(bytes: &[u8], n: usize, pid: Option<u32>) -> Outcomes<R> {
    let mut outcomes = Outcomes::with_capacity(n);
    // Only the `n` items the chunk had are decoded; a lying worker's extra
    // items are merely counted, for the error.
    let returned = match Chunk::parse(bytes) {
        Err(failure) => {
            if n > 0 {
                outcomes.push(Err(failure.into_error(pid)));
            }
            1
        }
        Ok(chunk) if chunk.n == n && chunk.plain_items::<R>().is_some() => {
            // Primitive results, all succeeded: one copy.
            if let Some((p, payload)) = chunk.plain_items::<R>() {
                outcomes.values = p.to_vec(payload).unwrap_or_default();
            }
            n
        }
        Ok(chunk) => {
            // A result whose `Deserialize` fails or panics, or that nests
            // too deep, fails only its own task.
            let given = walk::<R, _>(&chunk, n, |_, item| match item {
                Item::Value(value) => outcomes.values.push(value),
                other => outcomes.push(outcome(other, pid)),
            });
            if given < n.min(chunk.n) {
                given
            } else {
                chunk.n
            }
        }
    };
    if outcomes.len() < n {
        let err = Error::new(
            ErrorKind::Protocol,
            format!("a worker returned {returned} results for a chunk of {n} items"),
        );
        while outcomes.len() < n {
            outcomes.push(Err(err.clone()));
        }
    }
    outcomes
}

/// The outcomes of a chunk, in item order.
///
/// The values and the failures are kept apart, so that a chunk whose items
/// all succeeded hands its values on as they are.
pub(crate) struct Outcomes<R> {
    values: Vec<R>,
    /// Each failure with its position among all the outcomes, ascending.
    failures: Vec<(usize, Error)>,
}

impl<R> Outcomes<R> {
    pub(crate) fn with_capacity(n: usize) -> Outcomes<R> {
        Outcomes { values: Vec::with_capacity(n), failures: Vec::new() }
    }

    /// Appends the next outcome.
    #[inline]
    pub(crate) fn push(&mut self, outcome: crate::Result<R>) {
        match outcome {
            Ok(value) => self.values.push(value),
            Err(e) => self.failures.push((self.len(), e)),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.values.len() + self.failures.len()
    }

    /// Takes the last outcome.
    pub(crate) fn pop(&mut self) -> Option<crate::Result<R>> {
        let last = self.len().checked_sub(1)?;
        match self.failures.last() {
            Some((at, _)) if *at == last => self.failures.pop().map(|(_, e)| Err(e)),
            _ => self.values.pop().map(Ok),
        }
    }

    /// Every value in order, or else the first failure.
    pub(crate) fn into_values(self) -> crate::Result<Vec<R>> {
        match self.failures.into_iter().next() {
            Some((_, e)) => Err(e),
            None => Ok(self.values),
        }
    }
}

impl<R> FromIterator<crate::Result<R>> for Outcomes<R> {
    fn from_iter<I: IntoIterator<Item = crate::Result<R>>>(iter: I) -> Self {
        let iter = iter.into_iter();
        let mut outcomes = Outcomes::with_capacity(iter.size_hint().0);
        for outcome in iter {
            outcomes.push(outcome);
        }
        outcomes
    }
}

impl<R> IntoIterator for Outcomes<R> {
    type Item = crate::Result<R>;
    type IntoIter = OutcomesIter<R>;

    fn into_iter(self) -> OutcomesIter<R> {
        OutcomesIter {
            at: 0,
            values: self.values.into_iter(),
            failures: self.failures.into_iter().peekable(),
        }
    }
}

/// The outcomes of a chunk, one by one in item order.
pub(crate) struct OutcomesIter<R> {
    at: usize,
    values: std::vec::IntoIter<R>,
    failures: std::iter::Peekable<std::vec::IntoIter<(usize, Error)>>,
}

impl<R> Iterator for OutcomesIter<R> {
    type Item = crate::Result<R>;

    fn next(&mut self) -> Option<crate::Result<R>> {
        let failed_here = self.failures.peek().is_some_and(|(i, _)| *i == self.at);
        let next = match failed_here {
            true => self.failures.next().map(|(_, e)| Err(e)),
            false => self.values.next().map(Ok),
        }
        .or_else(|| self.failures.next().map(|(_, e)| Err(e)))?;
        self.at += 1;
        Some(next)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.values.len() + self.failures.len();
        (n, Some(n))
    }
}

impl<R> ExactSizeIterator for OutcomesIter<R> {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::run_chunk_at;
    use crate::task::tests::offset_of;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Runs `args` through `f` as a worker would and decodes the outcomes as
    /// the parent does, as `R`.
    fn round_trip<A: Serialize, R: DeserializeOwned>(
        offset: i64,
        args: &[A],
    ) -> Vec<crate::Result<R>> {
        let (input, fds) = encode_chunk(args);
        let mut out = Vec::new();
        let fds = run_chunk_at(offset, &input, fds, &mut out);
        decode_outcomes::<R>(&out, fds, args.len(), None).into_iter().collect()
    }

    static RUNS: [AtomicUsize; 10] = [const { AtomicUsize::new(0) }; 10];

    fn panics_at_3(x: usize) -> usize {
        RUNS[x].fetch_add(1, Ordering::SeqCst);
        if x == 3 || x == 7 {
            panic!("item {x} panics");
        }
        x * 10
    }

    #[test]
    fn a_panic_mid_chunk_fails_only_its_item_and_every_item_runs_once() {
        let items: Vec<usize> = (0..10).collect();
        let out = round_trip::<usize, usize>(offset_of(panics_at_3), &items);
        assert_eq!(out.len(), 10);
        for (i, o) in out.iter().enumerate() {
            match i {
                3 | 7 => {
                    let err = o.as_ref().unwrap_err();
                    assert_eq!(err.panic_message(), Some(&*format!("item {i} panics")), "{err}");
                }
                _ => assert_eq!(*o.as_ref().unwrap(), i * 10),
            }
            assert_eq!(RUNS[i].load(Ordering::SeqCst), 1, "item {i} ran once");
        }
    }

    /// Encodes as a u32; decoding it fails (odd) or panics (multiple of 5
    /// above 0), after reading its bytes.
    #[derive(Debug, Serialize)]
    struct Picky(u32);

    impl<'de> Deserialize<'de> for Picky {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Picky, D::Error> {
            let v = u32::deserialize(d)?;
            if v % 2 == 1 {
                return Err(serde::de::Error::custom(format!("picky refuses {v}")));
            }
            if v > 0 && v % 5 == 0 {
                panic!("picky panics at {v}");
            }
            Ok(Picky(v))
        }
    }

    fn echo(p: Picky) -> Picky {
        p
    }

    fn same(x: u32) -> u32 {
        x
    }

    /// Results that the parent decodes as `Picky` (the worker writes them
    /// as the `u32` inside: the same bytes, in the general form).
    fn picky(x: u32) -> Picky {
        Picky(x)
    }

    #[test]
    fn a_result_that_fails_or_panics_in_deserialize_fails_only_its_item() {
        // Results decoded as `Picky` in the parent.
        let items: Vec<u32> = vec![0, 2, 3, 4, 10, 12, 14, 15, 16];
        let out = round_trip::<u32, Picky>(offset_of(picky), &items);
        assert_eq!(out.len(), items.len());
        for (o, &v) in out.iter().zip(&items) {
            match o {
                Ok(p) => assert_eq!(p.0, v),
                Err(e) => {
                    assert_eq!(e.kind(), ErrorKind::Deserialize, "{e}");
                    let why = if v % 2 == 1 {
                        format!("picky refuses {v}")
                    } else {
                        format!("picky panics at {v}")
                    };
                    assert!(e.message().contains(&why), "{v}: {e}");
                    assert!(v % 2 == 1 || v % 5 == 0, "{v} failed: {e}");
                }
            }
        }
        assert_eq!(out.iter().filter(|o| o.is_ok()).count(), 6);
    }

    #[test]
    fn an_argument_that_fails_or_panics_in_deserialize_fails_only_its_item() {
        let items: Vec<Picky> = [0, 2, 3, 4, 10, 12].into_iter().map(Picky).collect();
        let out = round_trip::<Picky, u32>(offset_of(echo), &items);
        let got: Vec<_> =
            out.iter().map(|o| o.as_ref().map(|_| ()).map_err(|e| e.kind())).collect();
        assert_eq!(
            got,
            [
                Ok(()),
                Ok(()),
                Err(ErrorKind::Deserialize),
                Ok(()),
                Err(ErrorKind::TaskPanicked),
                Ok(())
            ]
        );
        assert_eq!(out[5].as_ref().unwrap(), &12);
    }

    /// Its `Drop` panics after it was serialized.
    #[derive(Serialize)]
    struct DropBomb(u32);

    impl Drop for DropBomb {
        fn drop(&mut self) {
            if self.0 == 1 && !std::thread::panicking() {
                panic!("drop bomb");
            }
        }
    }

    fn bomb(x: u32) -> DropBomb {
        DropBomb(x)
    }

    #[test]
    fn a_panic_after_a_result_was_written_replaces_it() {
        let out = round_trip::<u32, u32>(offset_of(bomb), &[0, 1, 2]);
        assert_eq!(out.len(), 3);
        assert_eq!(*out[0].as_ref().unwrap(), 0);
        assert_eq!(out[1].as_ref().unwrap_err().panic_message(), Some("drop bomb"));
        assert_eq!(*out[2].as_ref().unwrap(), 2);
    }

    #[test]
    fn a_worker_that_lies_about_its_results_fails_the_missing_ones() {
        let (chunk, _) = encode_chunk(&[1u64, 2, 3]);
        // Claims 3 results for a chunk of 5.
        let out: Vec<_> =
            decode_outcomes::<u64>(&chunk, Vec::new(), 5, Some(9)).into_iter().collect();
        assert_eq!(out.len(), 5);
        assert_eq!(out[..3].iter().map(|o| *o.as_ref().unwrap()).collect::<Vec<_>>(), [1, 2, 3]);
        let err = out[4].as_ref().unwrap_err();
        assert!(err.message().contains("returned 3 results for a chunk of 5"), "{err}");
        // Claims more: only the chunk's own items are decoded.
        let out = decode_outcomes::<u64>(&chunk, Vec::new(), 2, None).into_values().unwrap();
        assert_eq!(out, [1, 2]);
    }

    #[test]
    fn malformed_chunks_fail_their_items_without_reading_past_the_bytes() {
        let (chunk, _) = encode_chunk(&[1u64, 300, 70_000]);
        for cut in 0..chunk.len() {
            let out: Vec<_> =
                decode_outcomes::<u64>(&chunk[..cut], Vec::new(), 3, None).into_iter().collect();
            assert_eq!(out.len(), 3, "cut at {cut}");
        }
        // A header claiming 2^32 - 1 zero-sized items in a few bytes.
        let mut forged = chunk.clone();
        forged[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(ItemReader::new(&forged).all(|i| i.is_err()));
        let out: Vec<_> = decode_outcomes::<()>(&forged, Vec::new(), 3, None).into_iter().collect();
        assert!(out.iter().all(|o| o.as_ref().is_err_and(|e| e.kind() == ErrorKind::Protocol)));
        // A table whose lengths run past the payload, behind a failed item.
        let mut lying = chunk.clone();
        lying[4..8].copy_from_slice(&1u32.to_le_bytes());
        let table = lying.len() - 3;
        lying[table] = 0x7f;
        let out: Vec<_> = decode_outcomes::<u64>(&lying, Vec::new(), 3, None).into_iter().collect();
        assert_eq!(out.len(), 3);
        assert!(out.iter().all(|o| o.is_err()), "{out:?}");
    }

    fn double(x: i64) -> i64 {
        x.wrapping_mul(2)
    }

    fn halve(x: u32) -> f64 {
        f64::from(x) / 2.0
    }

    #[test]
    fn chunks_of_numbers_travel_as_their_bytes_both_ways() {
        let items: Vec<i64> = (-500..500).map(|i| i * 1_000_003).collect();
        let (input, fds) = encode_chunk(&items);
        assert!(fds.is_empty());
        // The header, then the items' memory: no table, no varints.
        assert_eq!(input.len(), HEADER + 8 * items.len());
        assert_eq!(&input[4..8], &PLAIN.to_le_bytes());
        assert_eq!(&input[HEADER..HEADER + 8], &items[0].to_le_bytes());
        let mut out = Vec::new();
        run_chunk_at(offset_of(double), &input, fds, &mut out);
        assert_eq!(out.len(), HEADER + 8 * items.len(), "the results are plain too");
        let back = decode_outcomes::<i64>(&out, Vec::new(), items.len(), None);
        assert_eq!(back.into_values().unwrap(), items.iter().map(|&x| x * 2).collect::<Vec<_>>());
        // Of another width and kind, and a chunk of one.
        let out = round_trip::<u32, f64>(offset_of(halve), &[0, 3, u32::MAX]);
        let out: Vec<f64> = out.into_iter().map(|o| o.unwrap()).collect();
        assert_eq!(out, [0.0, 1.5, f64::from(u32::MAX) / 2.0]);
        let (one, _) = encode_chunk(&[7i64]);
        assert_eq!(one.len(), HEADER + 8);
        let mut out = Vec::new();
        run_chunk_at(offset_of(double), &one, Vec::new(), &mut out);
        assert_eq!(decode_one::<i64>(&out, Vec::new(), None).unwrap(), 14);
        // A process's arguments are read item by item the same way.
        assert!(ItemReader::new(&input).all(|i| i.is_ok_and(|b| b.len() == 8)));
        assert_eq!(ItemReader::new(&input).count(), items.len());
    }

    /// As `panics_at_3`, without touching its counters: tests share one
    /// process under `cargo test`, and `RUNS` counts one test's runs only.
    fn panics_at_3_uncounted(x: usize) -> usize {
        if x == 3 || x == 7 {
            panic!("item {x} panics");
        }
        x * 10
    }

    #[test]
    fn a_panic_in_a_plain_chunk_rewrites_it_and_fails_only_its_item() {
        // `usize` items and results: plain until item 3 panics.
        let items: Vec<usize> = (0..10).collect();
        let (input, _) = encode_chunk(&items);
        let mut out = Vec::new();
        run_chunk_at(offset_of(panics_at_3_uncounted), &input, Vec::new(), &mut out);
        assert_ne!(&out[4..8], &PLAIN.to_le_bytes(), "two items failed: not plain");
        let out: Vec<_> =
            decode_outcomes::<usize>(&out, Vec::new(), 10, None).into_iter().collect();
        for (i, o) in out.iter().enumerate() {
            match i {
                3 | 7 => assert!(o.as_ref().unwrap_err().panic_message().is_some()),
                _ => assert_eq!(*o.as_ref().unwrap(), i * 10),
            }
        }
    }

    #[test]
    fn plain_chunks_that_lie_fail_their_items_without_reading_past_the_bytes() {
        let (chunk, _) = encode_chunk(&[1u64, 2, 3]);
        // Cut anywhere: every item still gets an outcome, none is read past.
        for cut in 0..chunk.len() {
            let out: Vec<_> =
                decode_outcomes::<u64>(&chunk[..cut], Vec::new(), 3, None).into_iter().collect();
            assert_eq!(out.len(), 3, "cut at {cut}");
            assert!(out.iter().all(|o| o.is_err()), "cut at {cut}: {out:?}");
            let _ = ItemReader::new(&chunk[..cut]).count();
        }
        let outcomes = |bytes: &[u8], n| -> Vec<crate::Result<u64>> {
            decode_outcomes::<u64>(bytes, Vec::new(), n, None).into_iter().collect()
        };
        // A count that does not match the bytes, either way.
        for claimed in [2u32, 4, 24, u32::MAX - 1] {
            let mut forged = chunk.clone();
            forged[..4].copy_from_slice(&claimed.to_le_bytes());
            let out = outcomes(&forged, 3);
            assert!(out.iter().all(|o| o.is_err()), "{claimed}: {out:?}");
            // Without the type the reader only cuts the bytes evenly.
            assert!(ItemReader::new(&forged).count() <= claimed as usize);
        }
        // Bytes after a plain payload (no table belongs there).
        let trailing = [&chunk[..], &[0]].concat();
        assert!(outcomes(&trailing, 3).iter().all(|o| o.is_err()));
        // The same bytes read as another type: a width that does not divide
        // them, or a type that is not plain.
        let as_u16: Vec<_> =
            decode_outcomes::<u16>(&chunk, Vec::new(), 3, None).into_iter().collect();
        assert!(as_u16.iter().all(|o| o.is_err()));
        let as_string: Vec<_> =
            decode_outcomes::<String>(&chunk, Vec::new(), 3, None).into_iter().collect();
        assert!(as_string.iter().all(|o| o.is_err()));
        assert!(decode_one::<String>(&chunk, Vec::new(), None).is_err());
        // A worker given a plain chunk its function cannot read fails it.
        let mut out = Vec::new();
        run_chunk_at(offset_of(echo), &chunk, Vec::new(), &mut out);
        let out: Vec<_> = decode_outcomes::<u32>(&out, Vec::new(), 3, None).into_iter().collect();
        assert!(out.iter().all(|o| o.is_err()), "{out:?}");
    }

    /// `decode_one` is `decode_outcomes` with `n == 1`, outcome for outcome.
    fn one_agrees<R: DeserializeOwned + std::fmt::Debug>(bytes: &[u8]) {
        let one = decode_one::<R>(bytes, Vec::new(), Some(7));
        let mut all = decode_outcomes::<R>(bytes, Vec::new(), 1, Some(7));
        assert_eq!(all.len(), 1);
        match (one, all.pop().unwrap()) {
            (Ok(a), Ok(b)) => assert_eq!(format!("{a:?}"), format!("{b:?}")),
            (Err(a), Err(b)) => {
                assert_eq!((a.kind(), a.message(), a.pid()), (b.kind(), b.message(), b.pid()))
            }
            (a, b) => panic!("decode_one gave {a:?}, decode_outcomes {b:?}"),
        }
    }

    #[test]
    fn one_outcome_decodes_as_a_chunk_of_one_does() {
        for v in [0u64, 1, 300, u64::MAX] {
            let (chunk, _) = encode_chunk(&[v]);
            one_agrees::<u64>(&chunk);
            for cut in 0..chunk.len() {
                one_agrees::<u64>(&chunk[..cut]);
            }
        }
        // No items, more items than asked for, a failed item.
        one_agrees::<u64>(&encode_chunk::<u64>(&[]).0);
        one_agrees::<u64>(&encode_chunk(&[5u64, 6]).0);
        let mut failed = Vec::new();
        encode_failures(&Failure::new(FailureKind::Panic, "boom".into()), 1, &mut failed);
        one_agrees::<u64>(&failed);
        assert!(decode_one::<u64>(&failed, Vec::new(), None).is_err());
        // Results that refuse or panic in their `Deserialize`.
        for v in [0u32, 3, 4, 10] {
            let out = round_trip::<u32, u32>(offset_of(same), &[v]);
            assert_eq!(out[0].as_ref().unwrap(), &v);
            let (chunk, _) = encode_chunk(&[Picky(v)]);
            one_agrees::<Picky>(&chunk);
            let (plain, _) = encode_chunk(&[v]);
            one_agrees::<Picky>(&plain);
        }
        let (none, _) = encode_chunk::<u64>(&[]);
        let err = decode_one::<u64>(&none, Vec::new(), None).unwrap_err();
        assert!(err.message().contains("returned 0 results for a chunk of 1"), "{err}");
    }

    #[test]
    fn outcomes_keep_item_order_with_failures_anywhere() {
        let e = |m: &str| Error::new(ErrorKind::Protocol, m);
        let items = vec![Err(e("a")), Ok(1), Ok(2), Err(e("b")), Ok(3), Err(e("c"))];
        let outcomes: Outcomes<u32> = items.into_iter().collect();
        assert_eq!(outcomes.len(), 6);
        let back: Vec<_> =
            outcomes.into_iter().map(|o| o.map_err(|e| e.message().to_string())).collect();
        assert_eq!(back, [Err("a".into()), Ok(1), Ok(2), Err("b".into()), Ok(3), Err("c".into())]);
        let mut o: Outcomes<u32> = vec![Ok(1), Err(e("x"))].into_iter().collect();
        assert!(o.pop().unwrap().is_err());
        assert_eq!(o.pop().unwrap().unwrap(), 1);
        assert!(o.pop().is_none());
    }

    #[test]
    fn one_call_chunks_are_the_same_bytes_inline_or_not() {
        fn same<T: Serialize + Copy>(v: T, inline: bool) {
            let (one, fds) = encode_one(&v);
            assert!(fds.is_empty());
            assert_eq!(matches!(one, crate::wire::Chunk::Inline { .. }), inline);
            assert_eq!(&*one, &encode_chunk(&[v]).0[..], "{}", type_name::<T>());
        }
        same(u64::MAX - 3, true);
        same(-7i8, true);
        same(1.5f64, true);
        same(i128::MIN + 1, true);
        // Not one number: encoded as any chunk is.
        same((1u32, 2u32), false);
        same([9u8; 20], false);
        // Read back as the worker reads its arguments.
        let (one, _) = encode_one(&41u64);
        let mut out = Vec::new();
        run_chunk_at(crate::task::tests::offset_of(same_u64), &one, Vec::new(), &mut out);
        assert_eq!(decode_one::<u64>(&out, Vec::new(), None).unwrap(), 41);
    }

    fn same_u64(x: u64) -> u64 {
        x
    }
}
