//! The messages between rank 0 and the other ranks, one MPI tag each.
//!
//! Every message is read with bounds: a peer's count or length is compared
//! with what is left of the message before anything is allocated or sliced.

use std::time::Duration;

use crate::error::{Error, ErrorKind};

/// Rank 0 → rank: "are you this build?" (16 bytes of fingerprint).
pub(crate) const HELLO: i32 = 1;
/// Rank → rank 0: one byte, 1 for the same build, 0 for another.
pub(crate) const HELLO_REPLY: i32 = 2;
/// Rank 0 → rank: a new pool's options; the previous pool is ended.
pub(crate) const POOL: i32 = 3;
/// Rank 0 → rank: a batch of tasks.
pub(crate) const TASKS: i32 = 4;
/// Rank → rank 0: a batch of results.
pub(crate) const DONE: i32 = 5;
/// Rank 0 → rank: stop the current pool's tasks now (`terminate`).
pub(crate) const TERMINATE: i32 = 6;
/// Rank 0 → rank: the program ends; finalize and exit.
pub(crate) const EXIT: i32 = 7;
/// Rank 0 → rank 1: answer at once with PONG (the benchmark's MPI floor).
pub(crate) const PING: i32 = 8;
pub(crate) const PONG: i32 = 9;

/// A pool's options, as a rank needs them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PoolOptions {
    /// Run tasks in local worker processes (crash containment), or on the
    /// rank's own thread.
    pub(crate) isolate: bool,
    pub(crate) local_workers: u32,
    pub(crate) task_timeout: Option<Duration>,
    pub(crate) max_tasks_per_child: Option<u64>,
}

/// Reads a message from a peer, never past its end.
pub(crate) struct Reader<'a>(&'a [u8]);

fn bad(what: &str) -> Error {
    Error::new(ErrorKind::Protocol, format!("a malformed MPI message from a rank: {what}"))
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader(bytes)
    }

    pub(crate) fn bytes(&mut self, n: usize) -> Result<&'a [u8], Error> {
        if n > self.0.len() {
            return Err(bad("a length runs past the end"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], Error> {
        Ok(self.bytes(N)?.try_into().expect("N bytes"))
    }

    pub(crate) fn u8(&mut self) -> Result<u8, Error> {
        Ok(self.array::<1>()?[0])
    }

    pub(crate) fn u32(&mut self) -> Result<u32, Error> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    pub(crate) fn u64(&mut self) -> Result<u64, Error> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// A count of items each at least `min_size` bytes long, checked
    /// against what is left.
    pub(crate) fn count(&mut self, min_size: usize) -> Result<usize, Error> {
        let n = self.u32()? as usize;
        if n.saturating_mul(min_size) > self.0.len() {
            return Err(bad("a count larger than the message"));
        }
        Ok(n)
    }

    /// A length-prefixed byte string.
    pub(crate) fn blob(&mut self) -> Result<&'a [u8], Error> {
        let n = self.u32()? as usize;
        self.bytes(n)
    }
}

pub(crate) fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

pub(crate) fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

pub(crate) fn put_blob(out: &mut Vec<u8>, b: &[u8]) {
    put_u32(out, u32::try_from(b.len()).expect("blobs are bounded by MAX_MESSAGE"));
    out.extend_from_slice(b);
}

impl PoolOptions {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(21);
        out.push(u8::from(self.isolate));
        put_u32(&mut out, self.local_workers);
        put_u64(
            &mut out,
            self.task_timeout.map_or(0, |t| t.as_nanos().min(u64::MAX as u128) as u64),
        );
        put_u64(&mut out, self.max_tasks_per_child.unwrap_or(0));
        out
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<PoolOptions, Error> {
        let mut r = Reader::new(bytes);
        let isolate = r.u8()? != 0;
        // A rank starts at most this many local workers, whatever it is told.
        let local_workers = r.u32()?.clamp(1, 1024);
        let timeout = r.u64()?;
        let max_tasks = r.u64()?;
        Ok(PoolOptions {
            isolate,
            local_workers,
            task_timeout: (timeout > 0).then(|| Duration::from_nanos(timeout)),
            max_tasks_per_child: (max_tasks > 0).then_some(max_tasks),
        })
    }
}

/// One task of a TASKS batch: id, task entry offset, encoded chunk.
pub(crate) fn put_task(out: &mut Vec<u8>, id: u64, offset: i64, chunk: &[u8]) {
    put_u64(out, id);
    put_u64(out, offset as u64);
    put_blob(out, chunk);
}

/// The smallest encoded task (an empty chunk).
pub(crate) const MIN_TASK: usize = 8 + 8 + 4;

/// How a DONE entry says its job went.
pub(crate) const DONE_OUTCOMES: u8 = 0;
pub(crate) const DONE_ERROR: u8 = 1;

/// The smallest encoded result.
pub(crate) const MIN_DONE: usize = 8 + 4 + 1 + 4;

/// A result of outcomes: id, pid of the process that ran it, the encoded
/// outcomes of its chunk.
pub(crate) fn put_outcomes(out: &mut Vec<u8>, id: u64, pid: u32, outcomes: &[u8]) {
    put_u64(out, id);
    put_u32(out, pid);
    out.push(DONE_OUTCOMES);
    put_blob(out, outcomes);
}

/// A result that is an error for every item of the job.
pub(crate) fn put_error(out: &mut Vec<u8>, id: u64, pid: u32, err: &Error) {
    put_u64(out, id);
    put_u32(out, pid);
    out.push(DONE_ERROR);
    let mut body = vec![kind_code(err.kind())];
    body.extend_from_slice(err.message().as_bytes());
    put_blob(out, &body);
}

const KINDS: [ErrorKind; 19] = [
    ErrorKind::TaskPanicked,
    ErrorKind::WorkerDied,
    ErrorKind::Timeout,
    ErrorKind::Cancelled,
    ErrorKind::PoolNotRunning,
    ErrorKind::PoolStillRunning,
    ErrorKind::InitializerFailed,
    ErrorKind::Serialize,
    ErrorKind::Deserialize,
    ErrorKind::BuildMismatch,
    ErrorKind::InvalidArgument,
    ErrorKind::ResultTaken,
    ErrorKind::InvalidState,
    ErrorKind::Protocol,
    ErrorKind::BrokenBarrier,
    ErrorKind::Closed,
    ErrorKind::Empty,
    ErrorKind::Full,
    ErrorKind::Io,
];

fn kind_code(kind: ErrorKind) -> u8 {
    KINDS.iter().position(|k| *k == kind).unwrap_or(13) as u8
}

/// The error a rank sent for a job (body of a `DONE_ERROR` entry).
pub(crate) fn decode_error(body: &[u8], rank: i32) -> Error {
    let (kind, message) = match body.split_first() {
        Some((k, m)) => (
            KINDS.get(*k as usize).copied().unwrap_or(ErrorKind::Protocol),
            String::from_utf8_lossy(m).into_owned(),
        ),
        None => (ErrorKind::Protocol, "an empty error".to_string()),
    };
    Error::new(kind, format!("on MPI rank {rank}: {message}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_round_trip_and_are_clamped() {
        let o = PoolOptions {
            isolate: true,
            local_workers: 3,
            task_timeout: Some(Duration::from_millis(250)),
            max_tasks_per_child: None,
        };
        assert_eq!(PoolOptions::decode(&o.encode()).unwrap(), o);
        let huge = PoolOptions { local_workers: u32::MAX, ..o };
        assert_eq!(PoolOptions::decode(&huge.encode()).unwrap().local_workers, 1024);
        assert!(PoolOptions::decode(&[1, 2]).is_err());
    }

    #[test]
    fn a_count_or_length_past_the_end_is_refused() {
        let mut msg = Vec::new();
        put_u32(&mut msg, 1_000_000);
        assert!(Reader::new(&msg).count(MIN_TASK).is_err());
        let mut blob = Vec::new();
        put_u32(&mut blob, 10);
        blob.extend_from_slice(b"short");
        assert!(Reader::new(&blob).blob().is_err());
    }

    #[test]
    fn errors_keep_their_kind() {
        let mut out = Vec::new();
        put_error(&mut out, 7, 42, &Error::new(ErrorKind::WorkerDied, "killed by SIGSEGV"));
        let mut r = Reader::new(&out);
        assert_eq!(r.u64().unwrap(), 7);
        assert_eq!(r.u32().unwrap(), 42);
        assert_eq!(r.u8().unwrap(), DONE_ERROR);
        let e = decode_error(r.blob().unwrap(), 3);
        assert_eq!(e.kind(), ErrorKind::WorkerDied);
        assert!(e.message().contains("rank 3") && e.message().contains("SIGSEGV"));
        assert_eq!(decode_error(&[200], 1).kind(), ErrorKind::Protocol);
    }
}
