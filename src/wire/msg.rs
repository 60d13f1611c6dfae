//! Every message of the parent–worker protocol, each with its encoder and
//! its decoder side by side.
//!
//! A message's head is fixed-width little-endian fields; its tail (a chunk
//! of items, the outcomes of one) is opaque here and ends the body, so a
//! decoder borrows it and never copies it. Decoders take the body of one
//! frame whose kind the channel has already checked against its limits, and
//! answer a malformed body with a [`Violation`] that completes "the peer
//! sent …"; they never panic on any input.

use std::borrow::Cow;
use std::os::fd::OwnedFd;

use super::conn::{le, Frozen, Output, Tail, Violation};

pub(crate) const INIT: u8 = 1;
pub(crate) const TASK: u8 = 2;
pub(crate) const RUN: u8 = 3;
pub(crate) const CALL: u8 = 4;
pub(crate) const READY: u8 = 10;
pub(crate) const MISMATCH: u8 = 11;
pub(crate) const INIT_FAILED: u8 = 12;
pub(crate) const DONE: u8 = 13;
/// In a worker's results ring only (`wire::ring`): the result of a task
/// comes on the channel instead.
pub(crate) const ON_CHANNEL: u8 = 14;

/// The kinds of a pipe's frames (a channel of its own: the numbers may
/// repeat the ones above).
pub(crate) const PIPE_OBJECT: u8 = 1;
pub(crate) const PIPE_BYTES: u8 = 2;

/// The name of a frame kind of the parent–worker protocol, for messages.
pub(crate) fn kind_name(kind: u8) -> String {
    match kind {
        INIT => "INIT".into(),
        TASK => "TASK".into(),
        RUN => "RUN".into(),
        CALL => "CALL".into(),
        READY => "READY".into(),
        MISMATCH => "MISMATCH".into(),
        INIT_FAILED => "INIT_FAILED".into(),
        DONE => "DONE".into(),
        ON_CHANNEL => "ON_CHANNEL".into(),
        k => format!("unknown kind {k}"),
    }
}

/// The largest result frame a worker may send, 2 GiB. A bigger result fails
/// its task with a `Protocol` error; the cap keeps a worker's header from
/// making the parent wait for (or reserve) data that never comes, while
/// leaving results of a gigabyte room.
pub(crate) const MAX_RESULT_FRAME: u32 = 2 << 30;
/// Frames a worker may send before READY (its pid, an empty MISMATCH body;
/// room is left for a few more bytes), with and without an initializer.
pub(crate) const HANDSHAKE: &[(u8, u32)] = &[(READY, 64), (MISMATCH, 64), (INIT_FAILED, 64 << 10)];
pub(crate) const HANDSHAKE_NO_INIT: &[(u8, u32)] = &[(READY, 64), (MISMATCH, 64)];
/// After READY a worker sends only results.
pub(crate) const RUNNING: &[(u8, u32)] = &[(DONE, MAX_RESULT_FRAME)];

fn short(kind: u8, len: usize, head: usize) -> Violation {
    Violation(format!(
        "a {} frame of {len} bytes, shorter than its {head}-byte head",
        kind_name(kind)
    ))
}

fn fixed<const N: usize>(body: &[u8], at: usize) -> [u8; N] {
    le::<N>(body, at).expect("length checked by the caller")
}

fn i64_at(body: &[u8], at: usize) -> i64 {
    i64::from_le_bytes(fixed(body, at))
}

fn u64_at(body: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(fixed(body, at))
}

/// A call of a task entry: the entry's offset (see `task::trampoline_at`)
/// and the chunk of arguments it decodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Call<C> {
    pub(crate) entry: i64,
    pub(crate) chunk: C,
}

/// INIT, parent → worker, first frame: the parent's build fingerprint and
/// the pool's initializer, if it has one.
///
/// `fingerprint [16] · has initializer u8 (0 or 1) · entry i64 ·
/// memory limit u64 (0: none) · results ring u8 (0 or 1) · chunk`; without
/// an initializer the entry is 0 and the chunk empty. With a results ring,
/// the frame's last two descriptors are the ring and its doorbell
/// (`wire::ring`); the initializer's handles come before them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Init<C> {
    pub(crate) fingerprint: [u8; 16],
    /// The address space the worker caps itself at, in bytes (0: no cap).
    pub(crate) memory_limit: u64,
    /// The frame ends with a results ring and its doorbell.
    pub(crate) results: bool,
    pub(crate) init: Option<Call<C>>,
}

impl<C: Tail + Copy> Init<C> {
    pub(crate) fn encode(&self, out: &mut Output, fds: Vec<OwnedFd>) -> crate::Result<()> {
        let start = out.begin_frame(INIT);
        out.buf().extend_from_slice(&self.fingerprint);
        match &self.init {
            Some(call) => {
                out.buf().push(1);
                out.buf().extend_from_slice(&call.entry.to_le_bytes());
                out.buf().extend_from_slice(&self.memory_limit.to_le_bytes());
                out.buf().push(self.results.into());
                out.tail(call.chunk);
            }
            None => {
                out.buf().extend_from_slice(&[0; 9]);
                out.buf().extend_from_slice(&self.memory_limit.to_le_bytes());
                out.buf().push(self.results.into());
            }
        }
        out.end_frame(start, fds)
    }
}

impl<'a> Init<&'a [u8]> {
    pub(crate) const HEAD: usize = 34;

    pub(crate) fn decode(body: &'a [u8]) -> Result<Self, Violation> {
        if body.len() < Self::HEAD {
            return Err(short(INIT, body.len(), Self::HEAD));
        }
        let fingerprint = fixed::<16>(body, 0);
        let (entry, chunk) = (i64_at(body, 17), &body[Self::HEAD..]);
        let memory_limit = u64_at(body, 25);
        let results = match body[33] {
            0 => false,
            1 => true,
            b => {
                return Err(Violation(format!(
                    "an INIT frame whose results-ring flag is {b}, neither 0 nor 1"
                )))
            }
        };
        let init = match body[16] {
            1 => Some(Call { entry, chunk }),
            0 if entry == 0 && chunk.is_empty() => None,
            0 => {
                return Err(Violation(
                    "an INIT frame without an initializer that carries one".to_string(),
                ))
            }
            b => {
                return Err(Violation(format!(
                    "an INIT frame whose initializer flag is {b}, neither 0 nor 1"
                )))
            }
        };
        Ok(Init { fingerprint, memory_limit, results, init })
    }
}

/// TASK (or CALL), parent → worker: one job.
///
/// `task id u64 · entry i64 · chunk`. The same body travels as a CALL
/// frame when the sender is a caller that waits for this result itself
/// (`apply` on a lent worker): having answered it, the worker looks for its
/// next task for a moment before it sleeps (`engine::spin`), since a caller
/// in a loop sends the next one at once. A TASK from a slot thread does not
/// ask that: a worker spinning there would take a core from the slot
/// thread that must read its results.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Task<C> {
    pub(crate) id: u64,
    pub(crate) call: Call<C>,
    /// Sent as CALL: its sender waits for it.
    pub(crate) waited: bool,
}

/// The frame kind of a task body, [`CALL`] when its sender waits for it.
fn task_kind(waited: bool) -> u8 {
    if waited {
        CALL
    } else {
        TASK
    }
}

impl<C: Tail + Copy> Task<C> {
    pub(crate) fn encode(&self, out: &mut Output, fds: Vec<OwnedFd>) -> crate::Result<()> {
        let start = out.begin_frame(task_kind(self.waited));
        let head = out.buf();
        head.extend_from_slice(&self.id.to_le_bytes());
        head.extend_from_slice(&self.call.entry.to_le_bytes());
        out.tail(self.call.chunk);
        out.end_frame(start, fds)
    }
}

impl Task<&[u8]> {
    /// The whole body of this TASK frame in a frozen file, when it is large
    /// enough to travel in one (see [`Frozen`]): made once, when the job is,
    /// and sent with [`Task::encode_frozen`] as often as the job is sent.
    pub(crate) fn freeze(&self) -> Option<Frozen> {
        Frozen::of(&[&self.id.to_le_bytes(), &self.call.entry.to_le_bytes(), self.call.chunk])
    }
}

impl Task<()> {
    /// Queues a TASK (`waited`: CALL) frame whose body [`Task::freeze`] made.
    pub(crate) fn encode_frozen(
        out: &mut Output,
        body: &Frozen,
        fds: Vec<OwnedFd>,
        waited: bool,
    ) -> crate::Result<()> {
        out.push_frozen(task_kind(waited), body, fds)
    }
}

impl<'a> Task<&'a [u8]> {
    pub(crate) const HEAD: usize = 16;

    /// Decodes a TASK body, or a CALL body when `waited`.
    pub(crate) fn decode(body: &'a [u8], waited: bool) -> Result<Self, Violation> {
        if body.len() < Self::HEAD {
            return Err(short(task_kind(waited), body.len(), Self::HEAD));
        }
        let call = Call { entry: i64_at(body, 8), chunk: &body[Self::HEAD..] };
        Ok(Task { id: u64_at(body, 0), call, waited })
    }
}

/// RUN, parent → process (a `Process`, not a pool worker): the one call it
/// makes.
///
/// `fingerprint [16] · entry i64 · chunk`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Run<C> {
    pub(crate) fingerprint: [u8; 16],
    pub(crate) call: Call<C>,
}

impl<C: Tail + Copy> Run<C> {
    pub(crate) fn encode(&self, out: &mut Output, fds: Vec<OwnedFd>) -> crate::Result<()> {
        let start = out.begin_frame(RUN);
        out.buf().extend_from_slice(&self.fingerprint);
        out.buf().extend_from_slice(&self.call.entry.to_le_bytes());
        out.tail(self.call.chunk);
        out.end_frame(start, fds)
    }
}

impl<'a> Run<&'a [u8]> {
    pub(crate) const HEAD: usize = 24;

    pub(crate) fn decode(body: &'a [u8]) -> Result<Self, Violation> {
        if body.len() < Self::HEAD {
            return Err(short(RUN, body.len(), Self::HEAD));
        }
        let call = Call { entry: i64_at(body, 16), chunk: &body[Self::HEAD..] };
        Ok(Run { fingerprint: fixed::<16>(body, 0), call })
    }
}

/// READY, worker → parent: the handshake passed; tasks may come.
///
/// `pid u32 · results ring u8 (1: the worker puts its results in the ring
/// INIT gave it; anything else, or no byte: on the channel)`; more bytes
/// after these are ignored, for a later version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Ready {
    pub(crate) pid: u32,
    pub(crate) results: bool,
}

impl Ready {
    pub(crate) fn encode(&self, out: &mut Output) -> crate::Result<()> {
        let mut body = [0; 5];
        body[..4].copy_from_slice(&self.pid.to_le_bytes());
        body[4] = self.results.into();
        out.push_frame(READY, &body[..], Vec::new())
    }

    pub(crate) fn decode(body: &[u8]) -> Result<Self, Violation> {
        match le::<4>(body, 0) {
            Some(pid) => {
                Ok(Ready { pid: u32::from_le_bytes(pid), results: body.get(4) == Some(&1) })
            }
            None => Err(short(READY, body.len(), 4)),
        }
    }
}

/// MISMATCH, worker → parent: the worker is another build and refuses to
/// serve. The body is empty: a peer that does not know the fingerprint
/// learns nothing from failing (bytes after it are ignored).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Mismatch;

impl Mismatch {
    pub(crate) fn encode(&self, out: &mut Output) -> crate::Result<()> {
        out.push_frame(MISMATCH, &[][..], Vec::new())
    }

    pub(crate) fn decode(_body: &[u8]) -> Result<Self, Violation> {
        Ok(Mismatch)
    }
}

/// INIT_FAILED, worker → parent: the pool's initializer failed.
///
/// `message (UTF-8; other bytes are shown replaced)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct InitFailed<'a> {
    pub(crate) message: Cow<'a, str>,
}

impl<'a> InitFailed<'a> {
    pub(crate) fn encode(&self, out: &mut Output) -> crate::Result<()> {
        out.push_frame(INIT_FAILED, self.message.as_bytes(), Vec::new())
    }

    pub(crate) fn decode(body: &'a [u8]) -> Result<Self, Violation> {
        Ok(InitFailed { message: String::from_utf8_lossy(body) })
    }
}

/// DONE, worker → parent: the outcomes of one task, one item per argument
/// (made by `task::run_chunk_at`; opaque here).
///
/// `task id u64 · outcomes`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Done<C> {
    pub(crate) id: u64,
    pub(crate) outcomes: C,
}

impl<C: Tail + Copy> Done<C> {
    /// (The worker writes its outcomes in place: [`Done::encode_with`].)
    #[cfg(test)]
    pub(crate) fn encode(&self, out: &mut Output, fds: Vec<OwnedFd>) -> crate::Result<()> {
        let start = out.begin_frame(DONE);
        out.buf().extend_from_slice(&self.id.to_le_bytes());
        out.tail(self.outcomes);
        out.end_frame(start, fds)
    }
}

impl Done<()> {
    /// Encodes the DONE frame of task `id` with outcomes written in place by
    /// `outcomes`, which returns the descriptors they carry: the worker's
    /// results go straight into the output buffer.
    pub(crate) fn encode_with(
        out: &mut Output,
        id: u64,
        outcomes: impl FnOnce(&mut Vec<u8>) -> Vec<OwnedFd>,
    ) -> crate::Result<()> {
        let start = out.begin_frame(DONE);
        out.buf().extend_from_slice(&id.to_le_bytes());
        let fds = outcomes(out.buf());
        out.end_frame(start, fds)
    }

    /// The task id at the start of a DONE body that may not have arrived
    /// whole, once its 8 bytes have: a result is judged by its task before
    /// its body is awaited.
    pub(crate) fn id_of_partial(start: &[u8]) -> Option<u64> {
        le::<8>(start, 0).map(u64::from_le_bytes)
    }
}

impl<'a> Done<&'a [u8]> {
    pub(crate) const HEAD: usize = 8;

    pub(crate) fn decode(body: &'a [u8]) -> Result<Self, Violation> {
        if body.len() < Self::HEAD {
            return Err(Violation("a result too short to name its task".to_string()));
        }
        Ok(Done { id: u64_at(body, 0), outcomes: &body[Self::HEAD..] })
    }
}

/// ON_CHANNEL, worker → parent, in the results ring only: the result of
/// task `id` is too large for the ring (or carries descriptors) and is the
/// next DONE on the channel. The parent takes no DONE from the channel that
/// a record like this did not announce, so results from the two ways keep
/// the order the worker ran its tasks in.
///
/// `task id u64`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct OnChannel {
    pub(crate) id: u64,
}

impl OnChannel {
    pub(crate) fn encode(&self, out: &mut Output) -> crate::Result<()> {
        out.push_frame(ON_CHANNEL, &self.id.to_le_bytes()[..], Vec::new())
    }

    pub(crate) fn decode(body: &[u8]) -> Result<Self, Violation> {
        match le::<8>(body, 0) {
            Some(id) if body.len() == 8 => Ok(OnChannel { id: u64::from_le_bytes(id) }),
            _ => Err(Violation(format!(
                "an ON_CHANNEL record of {} bytes, not the 8 of a task id",
                body.len()
            ))),
        }
    }
}

/// A frame a pool worker (or a `Process`) reads from its parent.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ToWorker<'a> {
    Init(Init<&'a [u8]>),
    Task(Task<&'a [u8]>),
    Run(Run<&'a [u8]>),
}

impl<'a> ToWorker<'a> {
    pub(crate) fn decode(kind: u8, body: &'a [u8]) -> Result<Self, Violation> {
        match kind {
            INIT => Init::decode(body).map(ToWorker::Init),
            TASK => Task::decode(body, false).map(ToWorker::Task),
            CALL => Task::decode(body, true).map(ToWorker::Task),
            RUN => Run::decode(body).map(ToWorker::Run),
            k => Err(wrong_kind(k, "a parent")),
        }
    }
}

/// A frame the parent reads from a pool worker.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum FromWorker<'a> {
    Ready(Ready),
    Mismatch(Mismatch),
    InitFailed(InitFailed<'a>),
    Done(Done<&'a [u8]>),
}

impl<'a> FromWorker<'a> {
    pub(crate) fn decode(kind: u8, body: &'a [u8]) -> Result<Self, Violation> {
        match kind {
            READY => Ready::decode(body).map(FromWorker::Ready),
            MISMATCH => Mismatch::decode(body).map(FromWorker::Mismatch),
            INIT_FAILED => InitFailed::decode(body).map(FromWorker::InitFailed),
            DONE => Done::decode(body).map(FromWorker::Done),
            k => Err(wrong_kind(k, "a worker")),
        }
    }
}

fn wrong_kind(kind: u8, from: &str) -> Violation {
    Violation(format!("a frame of {}, which {from} never sends", kind_name(kind)))
}

/// A pipe's message: a value encoded by the codec, or raw bytes. Either
/// is the whole body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PipeMessage<C> {
    Object(C),
    Bytes(C),
}

impl<C: Tail + Copy> PipeMessage<C> {
    pub(crate) fn encode(&self, out: &mut Output, fds: Vec<OwnedFd>) -> crate::Result<()> {
        match *self {
            PipeMessage::Object(b) => out.push_frame(PIPE_OBJECT, b, fds),
            PipeMessage::Bytes(b) => out.push_frame(PIPE_BYTES, b, fds),
        }
    }
}

impl<'a> PipeMessage<&'a [u8]> {
    /// A pipe accepts any kind (a peer may be a later version): an unknown
    /// one is read as bytes, so `recv_bytes` still returns them.
    pub(crate) fn decode(kind: u8, body: &'a [u8]) -> Self {
        match kind {
            PIPE_OBJECT => PipeMessage::Object(body),
            _ => PipeMessage::Bytes(body),
        }
    }

    /// The message's bytes, whatever its kind.
    pub(crate) fn bytes(&self) -> &'a [u8] {
        match *self {
            PipeMessage::Object(b) | PipeMessage::Bytes(b) => b,
        }
    }
}

/// Runs every decoder on `body` as a frame of `kind`: the fuzz target's
/// way in.
#[cfg(feature = "fuzzing")]
pub(crate) fn decode_all(kind: u8, body: &[u8]) {
    let _ = ToWorker::decode(kind, body);
    let _ = FromWorker::decode(kind, body);
    let _ = PipeMessage::decode(kind, body).bytes();
    let _ = Done::id_of_partial(body);
}

#[cfg(test)]
mod tests {
    use super::super::conn::{check_header, Accept, Chunk, Conn, SHARE_ABOVE};
    use super::*;
    use std::os::unix::net::UnixStream;

    /// Sends what `encode` queues through a real socket and returns the
    /// frame that arrives: its kind, body and descriptor count.
    fn through_socket(encode: impl FnOnce(&mut Output)) -> (u8, Vec<u8>, usize) {
        let (a, b) = UnixStream::pair().unwrap();
        let (mut a, mut b) = (Conn::new(a.into()), Conn::new(b.into()));
        let reader = std::thread::spawn(move || {
            let mut eof = false;
            loop {
                if let Some((kind, body, fds)) = b.next_frame() {
                    return (kind, b.body(body).to_vec(), fds.len());
                }
                assert!(!eof, "end of file before the frame");
                eof = b.read_blocking().unwrap();
            }
        });
        encode(a.output());
        a.flush_blocking().unwrap();
        drop(a);
        reader.join().unwrap()
    }

    fn fds(n: usize) -> Vec<OwnedFd> {
        (0..n).map(|_| OwnedFd::from(UnixStream::pair().unwrap().0)).collect()
    }

    const FP: [u8; 16] = [7; 16];

    #[test]
    fn init_round_trips_with_and_without_an_initializer() {
        let call = Some(Call { entry: -42, chunk: &b"args"[..] });
        let with = Init { fingerprint: FP, memory_limit: 1 << 30, results: true, init: call };
        let (kind, body, n) = through_socket(|o| with.encode(o, fds(2)).unwrap());
        assert_eq!((kind, n), (INIT, 2));
        assert_eq!(ToWorker::decode(kind, &body), Ok(ToWorker::Init(with)));
        let without: Init<&[u8]> =
            Init { fingerprint: FP, memory_limit: 0, results: false, init: None };
        let (kind, body, _) = through_socket(|o| without.encode(o, Vec::new()).unwrap());
        assert_eq!(body.len(), Init::HEAD);
        assert_eq!(Init::decode(&body), Ok(without));
        assert_eq!(kind, INIT);
    }

    #[test]
    fn task_round_trips_from_a_small_and_a_large_chunk_as_task_and_as_call() {
        for (len, waited) in [(0, false), (5, true), (SHARE_ABOVE + 1, false), (300_000, true)] {
            let bytes: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let chunk = Chunk::from(bytes.clone());
            assert_eq!(matches!(chunk, Chunk::Large(_)), len > SHARE_ABOVE);
            let call = Call { entry: 1 << 40, chunk: &chunk };
            let task = Task { id: u64::MAX - 3, call, waited };
            let (kind, body, n) = through_socket(|o| task.encode(o, fds(1)).unwrap());
            let want_kind = if waited { CALL } else { TASK };
            assert_eq!((kind, n, body.len()), (want_kind, 1, Task::HEAD + len));
            let call = Call { entry: 1 << 40, chunk: &bytes[..] };
            let want = Task { id: task.id, call, waited };
            assert_eq!(ToWorker::decode(kind, &body), Ok(ToWorker::Task(want)));
        }
    }

    #[test]
    fn run_round_trips() {
        let run = Run { fingerprint: FP, call: Call { entry: 9, chunk: &b"x"[..] } };
        let (kind, body, _) = through_socket(|o| run.encode(o, Vec::new()).unwrap());
        assert_eq!(ToWorker::decode(kind, &body), Ok(ToWorker::Run(run)));
    }

    #[test]
    fn worker_messages_round_trip() {
        for results in [false, true] {
            let ready = Ready { pid: 4121, results };
            let (k, b, _) = through_socket(|o| ready.encode(o).unwrap());
            assert_eq!(FromWorker::decode(k, &b), Ok(FromWorker::Ready(ready)));
        }
        // A READY of the first version, with no results byte: no ring.
        let first_version = 4121u32.to_le_bytes();
        let older = FromWorker::decode(READY, &first_version);
        assert_eq!(older, Ok(FromWorker::Ready(Ready { pid: 4121, results: false })));
        let (k, b, _) = through_socket(|o| OnChannel { id: 77 }.encode(o).unwrap());
        assert_eq!((k, OnChannel::decode(&b)), (ON_CHANNEL, Ok(OnChannel { id: 77 })));
        assert!(OnChannel::decode(&b[..7]).is_err() && OnChannel::decode(&[0; 9]).is_err());
        let (k, b, _) = through_socket(|o| Mismatch.encode(o).unwrap());
        assert!(b.is_empty(), "a MISMATCH must reveal nothing");
        assert_eq!(FromWorker::decode(k, &b), Ok(FromWorker::Mismatch(Mismatch)));
        let failed = InitFailed { message: "panicked at src/a.rs:1:2: no".into() };
        let (k, b, _) = through_socket(|o| failed.encode(o).unwrap());
        assert_eq!(FromWorker::decode(k, &b), Ok(FromWorker::InitFailed(failed)));
        let done = Done { id: 17, outcomes: &b"outcomes"[..] };
        let (k, b, n) = through_socket(|o| done.encode(o, fds(3)).unwrap());
        assert_eq!(n, 3);
        assert_eq!(FromWorker::decode(k, &b), Ok(FromWorker::Done(done)));
        assert_eq!(Done::id_of_partial(&b[..8]), Some(17));
        assert_eq!(Done::id_of_partial(&b[..7]), None);
    }

    #[test]
    fn done_written_in_place_round_trips_with_its_descriptors() {
        let (k, b, n) = through_socket(|o| {
            Done::encode_with(o, 5, |out| {
                out.extend_from_slice(b"in place");
                fds(2)
            })
            .unwrap()
        });
        assert_eq!((k, n), (DONE, 2));
        assert_eq!(Done::decode(&b), Ok(Done { id: 5, outcomes: &b"in place"[..] }));
    }

    #[test]
    fn a_frame_that_cannot_travel_is_taken_back_whole() {
        let (a, _b) = UnixStream::pair().unwrap();
        let mut a = Conn::new(a.into());
        let err = Done::encode_with(a.output(), 5, |out| {
            out.extend_from_slice(b"lost");
            fds(sys_max() + 1)
        })
        .unwrap_err();
        assert!(err.to_string().contains("at most 253"), "{err}");
        assert!(!a.has_output());
        assert_eq!(a.queued(), 0);
        // The next frame is whole and alone.
        let (k, b, _) = through_socket(|o| {
            let _ = Done::encode_with(o, 1, |_| fds(sys_max() + 1));
            Ready { pid: 3, results: true }.encode(o).unwrap();
        });
        let ready = Ready { pid: 3, results: true };
        assert_eq!(FromWorker::decode(k, &b), Ok(FromWorker::Ready(ready)));
    }

    fn sys_max() -> usize {
        crate::sys::MAX_FDS_PER_MESSAGE
    }

    #[test]
    fn pipe_messages_round_trip_and_unknown_kinds_read_as_bytes() {
        for msg in [PipeMessage::Object(&b"v"[..]), PipeMessage::Bytes(&b"raw"[..])] {
            let (k, b, _) = through_socket(|o| msg.encode(o, Vec::new()).unwrap());
            assert_eq!(PipeMessage::decode(k, &b), msg);
        }
        assert_eq!(PipeMessage::decode(99, b"later"), PipeMessage::Bytes(&b"later"[..]));
    }

    #[test]
    fn truncated_bodies_are_violations_that_name_the_message() {
        let full_init = [[7u8; 16].as_slice(), &[1], &[0; 17]].concat();
        for (kind, full, head) in [
            (INIT, full_init, Init::HEAD),
            (TASK, vec![0; Task::HEAD], Task::HEAD),
            (CALL, vec![0; Task::HEAD], Task::HEAD),
            (RUN, vec![0; Run::HEAD], Run::HEAD),
        ] {
            for len in 0..head {
                let v = ToWorker::decode(kind, &full[..len]).unwrap_err();
                let want = format!(
                    "a {} frame of {len} bytes, shorter than its {head}-byte head",
                    kind_name(kind)
                );
                assert_eq!(v.0, want);
            }
            assert!(ToWorker::decode(kind, &full).is_ok());
        }
        for len in 0..4 {
            let v = FromWorker::decode(READY, &[0; 4][..len]).unwrap_err();
            assert!(v.0.contains("READY frame") && v.0.contains("4-byte head"), "{v}");
        }
        for len in 0..8 {
            let v = FromWorker::decode(DONE, &[0; 8][..len]).unwrap_err();
            assert_eq!(v.0, "a result too short to name its task");
        }
    }

    #[test]
    fn malformed_init_heads_are_violations() {
        let mut body = [[7u8; 16].as_slice(), &[2], &[0; 17]].concat();
        let v = Init::decode(&body).unwrap_err();
        assert!(v.0.contains("initializer flag is 2"), "{v}");
        body[16] = 0;
        body[33] = 3;
        let v = Init::decode(&body).unwrap_err();
        assert!(v.0.contains("results-ring flag is 3"), "{v}");
        body[33] = 1;
        body.push(1);
        let v = Init::decode(&body).unwrap_err();
        assert!(v.0.contains("without an initializer that carries one"), "{v}");
    }

    #[test]
    fn kinds_from_the_other_direction_are_violations() {
        for kind in [READY, MISMATCH, INIT_FAILED, DONE, 0, 99] {
            let v = ToWorker::decode(kind, &[0; 64]).unwrap_err();
            assert!(v.0.contains("which a parent never sends"), "{v}");
        }
        for kind in [INIT, TASK, CALL, RUN, 0, 99] {
            let v = FromWorker::decode(kind, &[0; 64]).unwrap_err();
            assert!(v.0.contains(&kind_name(kind)) && v.0.contains("a worker never sends"), "{v}");
        }
    }

    #[test]
    fn oversized_frames_are_refused_by_their_header() {
        let header = |len: u32, kind: u8| {
            let mut h = [0u8; 6];
            h[..4].copy_from_slice(&len.to_le_bytes());
            h[4] = kind;
            h
        };
        let handshake = Accept::Only(HANDSHAKE);
        assert!(check_header(&header(64, READY), handshake).is_ok());
        let v = check_header(&header(65, READY), handshake).unwrap_err();
        assert!(v.0.contains("READY frame header declaring 65 bytes"), "{v}");
        let v = check_header(&header((64 << 10) + 1, INIT_FAILED), handshake).unwrap_err();
        assert!(v.0.contains("INIT_FAILED"), "{v}");
        let v = check_header(&header(1, INIT_FAILED), Accept::Only(HANDSHAKE_NO_INIT)).unwrap_err();
        assert!(v.0.contains("not valid at this point"), "{v}");
        let running = Accept::Only(RUNNING);
        assert!(check_header(&header(MAX_RESULT_FRAME, DONE), running).is_ok());
        let v = check_header(&header(MAX_RESULT_FRAME + 1, DONE), running).unwrap_err();
        assert!(v.0.contains("DONE frame header"), "{v}");
        let v = check_header(&header(8, READY), running).unwrap_err();
        assert!(v.0.contains("not valid at this point"), "{v}");
    }

    #[test]
    fn decoders_never_panic_on_any_short_body() {
        // Every kind, every length up to past the longest head, two fillers.
        for kind in 0..=u8::MAX {
            for len in 0..40 {
                for fill in [0u8, 0xff] {
                    let body = vec![fill; len];
                    let _ = ToWorker::decode(kind, &body);
                    let _ = FromWorker::decode(kind, &body);
                    let _ = PipeMessage::decode(kind, &body);
                    let _ = Done::id_of_partial(&body);
                }
            }
        }
    }
}
