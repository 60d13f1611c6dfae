//! Entry points for the fuzz targets in `fuzz/` (cargo feature `fuzzing`).
//!
//! Each runs one decoder that the parent runs on bytes another process sent,
//! the same code on the same path, fed the fuzzer's bytes instead. Not an
//! API: it exists for `fuzz/` and may change at any time.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;

use serde::Deserialize;

use crate::{codec, fdpass, sys, task, wire, Array, Fd, Value};

/// The most bytes a target writes into a socket before reading: below the
/// socket's buffer, so one thread can write and then read.
const SOCKET_INPUT_MAX: usize = 64 * 1024;

/// A result type with every shape serde has: recursion, enums, options,
/// strings, bytes, maps, floats.
#[derive(Deserialize)]
#[allow(dead_code)]
enum Tree {
    Leaf(u64),
    Node(Vec<Tree>),
    Named { name: String, kid: Box<Option<Tree>> },
    Unit,
}

type Mixed = (String, Vec<u8>, Option<Tree>, BTreeMap<u16, String>, f64, char, i128);

/// `count` shared-memory files of sizes taken from `sizes` (one byte each,
/// in units of 8 bytes), to supply as received descriptors.
fn memfds(count: usize, sizes: &[u8]) -> Vec<OwnedFd> {
    (0..count)
        .filter_map(|i| sys::memfd_sealed(sizes.get(i).copied().unwrap_or(0) as usize * 8).ok())
        .collect()
}

/// Feeds `bytes` to the parent's frame splitter ([`wire::Conn`]) through a
/// real socket, as a worker's channel would deliver them, and runs every
/// message decoder on every frame. Returns how many frames it found.
pub fn frames(bytes: &[u8]) -> usize {
    let bytes = &bytes[..bytes.len().min(SOCKET_INPUT_MAX)];
    let Ok((mut tx, rx)) = UnixStream::pair() else { return 0 };
    if tx.write_all(bytes).is_err() {
        return 0;
    }
    drop(tx);
    let mut conn = wire::Conn::new(rx.into());
    let mut found = 0;
    loop {
        while let Some((kind, body, _fds)) = conn.next_frame() {
            wire::decode_all(kind, conn.body(body));
            found += 1;
        }
        match conn.read_blocking() {
            Ok(false) => {}
            Ok(true) => {
                while let Some((kind, body, _fds)) = conn.next_frame() {
                    wire::decode_all(kind, conn.body(body));
                    found += 1;
                }
                return found;
            }
            Err(_) => return found,
        }
    }
}

/// Decodes `bytes` as the outcomes of a chunk, as the parent does with a
/// `DONE` frame's body, for several result types. The first byte is the
/// chunk's item count, the second the number of descriptors that "arrived"
/// with the frame (0 to 7, shared-memory files sized by the next bytes);
/// the rest is the body.
pub fn task_outcomes(data: &[u8]) {
    let [n, fds, rest @ ..] = data else { return };
    let n = (*n % 16) as usize;
    let fds = (*fds % 8) as usize;
    let supplied = || memfds(fds, rest);
    drop(task::decode_outcomes::<Mixed>(rest, supplied(), n, Some(1)));
    drop(task::decode_outcomes::<Vec<()>>(rest, supplied(), n, Some(1)));
    drop(task::decode_outcomes::<(u32, Fd<std::fs::File>)>(rest, supplied(), n, Some(1)));
    // Handles are only decoded here (a shared-memory handle's own checks are
    // fuzzed by `shm_handle`).
    drop(task::decode_outcomes::<(Array<u8>, Value<u64>)>(rest, supplied(), n, Some(1)));
}

/// Decodes `data` as a message taken off a queue: the first byte is the
/// number of descriptors that came with it (0 to 3, shared-memory files whose
/// content is the message's bytes, as the queue sends large items), the rest
/// the message.
pub fn queue_message(data: &[u8]) {
    let [fds, rest @ ..] = data else { return };
    let with_file = || -> Vec<OwnedFd> {
        (0..(*fds % 4) as usize)
            .filter_map(|_| {
                let fd = sys::memfd_sealed(rest.len()).ok()?;
                let mut file = std::fs::File::from(fd);
                file.write_all(rest).ok()?;
                Some(file.into())
            })
            .collect()
    };
    let _ = crate::queue::decode_for_fuzz::<Mixed>(rest.to_vec(), with_file());
    let _ = crate::queue::decode_for_fuzz::<Vec<String>>(rest.to_vec(), with_file());
    let _ = crate::queue::decode_for_fuzz::<Fd<std::fs::File>>(rest.to_vec(), with_file());
}

/// Writes `bytes` raw into the socket under a pipe's receiving end, as a
/// hostile or dying peer could, and receives until the pipe reports an
/// error (end of file included).
pub fn pipe_message(bytes: &[u8]) {
    let bytes = &bytes[..bytes.len().min(SOCKET_INPUT_MAX)];
    let Ok((mut tx, rx)) = UnixStream::pair() else { return };
    // A pipe end arrives as a handle: decode a receiving end around our
    // socket (its wire: readable, not writable, not remote; descriptor 0).
    let Ok(encoded) = codec::encode(&((true, false, false), 0u32)) else { return };
    let rx: Result<crate::Receiver<Mixed>, _> =
        fdpass::supply(vec![rx.into()], || codec::decode(&encoded));
    let Ok(rx) = rx else { return };
    if tx.write_all(bytes).is_err() {
        return;
    }
    drop(tx);
    while rx.recv().is_ok() {}
}

/// Decodes `data` as shared-memory handles (`Array`, `Value`) that arrived
/// with one descriptor, a shared-memory file of `8 * data[0]` bytes, and
/// uses them the way a program would.
pub fn shm_handle(data: &[u8]) {
    let [size, rest @ ..] = data else { return };
    let supplied = || memfds(1, &[*size]);
    let array: Result<Array<u64>, _> = fdpass::supply(supplied(), || codec::decode(rest));
    if let Ok(array) = array {
        if array.get_lock().is_none() {
            let v = array.to_vec();
            if let Some(last) = array.len().checked_sub(1) {
                let _ = array.set(last, v.len() as u64);
                let _ = array.get(last);
            }
        }
    }
    let value: Result<Value<u32>, _> = fdpass::supply(supplied(), || codec::decode(rest));
    if let Ok(value) = value {
        if value.get_lock().is_none() {
            value.set(value.get().wrapping_add(1));
        }
    }
}
