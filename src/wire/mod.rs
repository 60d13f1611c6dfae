//! The wire: the only place the bytes on a channel between processes are
//! shaped.
//!
//! - [`conn`]: framing. A frame is `[u32 body length, little endian][u8
//!   kind][u8 descriptors][body]`, its descriptors attached to its first
//!   byte; the reader checks every header against per-kind limits
//!   ([`Accept`]) before it waits for a body. Writes are vectored, so a
//!   large body is sent from where its owner keeps it.
//! - [`msg`]: every message of the parent–worker protocol (and a pipe's),
//!   each a type with its encoder beside its decoder:
//!
//! | kind          | direction        | body                                                        |
//! |---------------|------------------|-------------------------------------------------------------|
//! | `INIT`        | parent → worker  | fingerprint (16) · has initializer (1) · entry (i64) · memory limit (u64) · results ring (1) · chunk |
//! | `TASK`        | parent → worker  | task id (u64) · entry (i64) · chunk                         |
//! | `CALL`        | parent → worker  | as `TASK`, from a caller that waits for it (the worker then spins) |
//! | `RUN`         | parent → process | fingerprint (16) · entry (i64) · chunk                      |
//! | `READY`       | worker → parent  | pid (u32) · uses the results ring (1)                        |
//! | `MISMATCH`    | worker → parent  | nothing                                                     |
//! | `INIT_FAILED` | worker → parent  | message (UTF-8)                                             |
//! | `DONE`        | worker → parent  | task id (u64) · outcomes                                    |
//! | `ON_CHANNEL`  | worker → parent, in its results ring | task id (u64): that result is the next DONE on the channel |
//!
//! - [`ring`]: a worker's results ring. Once READY, a worker puts its DONE
//!   frames in shared memory both processes map, and the parent is woken
//!   through a doorbell only when it sleeps; a result that cannot go there
//!   takes the channel, announced in the ring so that the order holds.
//!
//! The parent closes the channel to tell a worker to exit.
//!
//! One style: a message's head is fixed-width little-endian fields (at
//! fixed offsets known only to `msg`), and its tail is opaque bytes that end
//! the body. Values (the items of a chunk and its outcomes, made by
//! `task`) are postcard through `codec`, and postcard is used for nothing
//! else. The heads stay fixed-width because TASK and DONE are the hot path
//! (100k+ a second): encoding and decoding a TASK head (id, entry) costs
//! about 8 ns fixed-width and about 65 ns as postcard through `codec` (its
//! guards included; measured side by side, 2M heads, this 2-core machine),
//! and a varint head would save a few bytes of a frame that costs a system
//! call either way.

mod conn;
mod memfd;
mod msg;
pub(crate) mod ring;

pub(crate) use conn::{Accept, Body, Chunk, Conn, Frozen, Tail, INLINE};
pub(crate) use memfd::Mapped;
pub(crate) use msg::*;
