//! Values that try to break whoever decodes or encodes them: nested far too
//! deep, serde impls that panic, serde errors with their own messages. Each
//! must fail only its own task or item, with the cause in the error, and the
//! pool, queue or pipe must go on.

use multiproc::{pipe, ErrorKind, Pool, Process, Queue};
use serde::de::{self, Deserializer};
use serde::ser::{self, SerializeSeq, SerializeTuple, Serializer};
use serde::{Deserialize, Serialize};

use crate::support::{bounded, getpid, sqr, STARTUP};

/// A chain of boxes, decoded by serde's derived (recursive) code. Built,
/// encoded and dropped without recursion, so only the decoder is tested.
#[derive(Deserialize)]
enum Nest {
    Leaf,
    Node(Box<Nest>),
}

impl Nest {
    fn deep(depth: u32) -> Nest {
        let mut nest = Nest::Leaf;
        for _ in 0..depth {
            nest = Nest::Node(Box::new(nest));
        }
        nest
    }

    fn depth(&self) -> u32 {
        let mut depth = 0;
        let mut at = self;
        while let Nest::Node(inner) = at {
            depth += 1;
            at = inner;
        }
        depth
    }
}

impl Serialize for Nest {
    /// postcard writes a variant as its index and a tuple with no length, so
    /// the chain is its depth in `1`s (`Node`) and a final `0` (`Leaf`).
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let depth = self.depth();
        let mut t = s.serialize_tuple(depth as usize + 1)?;
        for _ in 0..depth {
            t.serialize_element(&1u8)?;
        }
        t.serialize_element(&0u8)?;
        t.end()
    }
}

impl Drop for Nest {
    fn drop(&mut self) {
        let Nest::Node(inner) = self else { return };
        // Unlink the chain below, then drop it link by link: each link is
        // dropped with `Leaf` below it, so no drop recurses more than once.
        let mut next = std::mem::replace(&mut **inner, Nest::Leaf);
        while let Nest::Node(inner) = &mut next {
            let below = std::mem::replace(&mut **inner, Nest::Leaf);
            next = below;
        }
    }
}

fn nest(depth: u32) -> Nest {
    Nest::deep(depth)
}

fn one_worker() -> (Pool, u32) {
    let pool = Pool::new(1).unwrap();
    let pid = pool.apply(getpid, ()).unwrap();
    (pool, pid)
}

#[test]
fn a_result_nested_100_000_deep_fails_only_its_task() {
    let (pool, pid) = one_worker();
    let err = bounded(STARTUP, "a deep result", move || {
        let err = pool.apply_async(nest, 100_000).get_timeout(STARTUP).map(|_| ()).unwrap_err();
        // The slot survived: the same worker runs the next task.
        assert_eq!(pool.apply_async(getpid, ()).get_timeout(STARTUP).unwrap(), pid);
        err
    });
    assert_eq!(err.kind(), ErrorKind::Deserialize, "{err:?}");
    let msg = err.message();
    assert!(msg.contains("Nest") && msg.contains("result"), "{msg}");
    assert!(msg.contains("nested more than 512 levels"), "{msg}");
}

#[test]
fn a_result_nested_a_few_hundred_deep_still_arrives() {
    let (pool, _) = one_worker();
    let back = pool.apply_async(nest, 400).get_timeout(STARTUP).unwrap();
    assert_eq!(back.depth(), 400);
}

#[test]
fn deep_values_on_a_queue_or_pipe_fail_only_that_item() {
    bounded(STARTUP, "deep values on a queue and a pipe", || {
        let q: Queue<Nest> = Queue::new().unwrap();
        q.put(Nest::deep(100_000)).map_err(|_| "put").unwrap();
        q.put(Nest::deep(3)).map_err(|_| "put").unwrap();
        let err = q.get_timeout(STARTUP).map(|_| ()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Deserialize, "{err:?}");
        assert!(err.message().contains("nested more than"), "{err}");
        assert_eq!(q.get_timeout(STARTUP).unwrap().depth(), 3);

        let (a, b) = pipe::<Nest>().unwrap();
        // From another thread: 100 kB may not fit in the socket's buffer.
        std::thread::spawn(move || {
            a.send(&Nest::deep(100_000)).unwrap();
            a.send(&Nest::deep(5)).unwrap();
        });
        let err = b.recv_timeout(STARTUP).map(|_| ()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Deserialize, "{err:?}");
        assert!(err.message().contains("nested more than"), "{err}");
        assert_eq!(b.recv_timeout(STARTUP).unwrap().depth(), 5);
    });
}

// --- serde impls that panic ----------------------------------------------

/// Encodes fine; its `Deserialize` panics when the value says so.
#[derive(Debug, Serialize)]
struct Touchy {
    panic_on_decode: bool,
    n: u32,
}

impl<'de> Deserialize<'de> for Touchy {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (panic_on_decode, n) = <(bool, u32)>::deserialize(d)?;
        if panic_on_decode {
            panic!("Touchy {n} panics when decoded");
        }
        Ok(Touchy { panic_on_decode, n })
    }
}

fn make_touchy(n: u32) -> Touchy {
    Touchy { panic_on_decode: n % 2 == 1, n }
}

fn take_touchy(t: Touchy) -> u32 {
    t.n
}

#[test]
fn a_result_whose_deserialize_panics_fails_only_its_task() {
    let (pool, pid) = one_worker();
    bounded(STARTUP, "a result that panics in the parent", move || {
        let err = pool.apply_async(make_touchy, 1).get_timeout(STARTUP).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Deserialize, "{err:?}");
        let msg = err.message();
        assert!(msg.contains("Touchy 1 panics when decoded"), "{msg}");
        assert!(msg.contains("Touchy") && msg.contains("in the parent"), "{msg}");
        // With its only worker, the pool goes on.
        assert_eq!(pool.apply_async(make_touchy, 2).get_timeout(STARTUP).unwrap().n, 2);
        assert_eq!(pool.apply_async(getpid, ()).get_timeout(STARTUP).unwrap(), pid);
        // In a chunk, only the items that panic fail.
        let out: Vec<_> = pool.chunksize(3).imap(make_touchy, 0..6).collect();
        let ok: Vec<Option<u32>> = out.iter().map(|r| r.as_ref().ok().map(|t| t.n)).collect();
        assert_eq!(ok, vec![Some(0), None, Some(2), None, Some(4), None]);
        assert_eq!(pool.apply_async(sqr, 9).get_timeout(STARTUP).unwrap(), 81);
    });
}

#[test]
fn an_argument_whose_deserialize_panics_in_the_worker_is_a_task_panic() {
    let (pool, pid) = one_worker();
    bounded(STARTUP, "an argument that panics in the worker", move || {
        let arg = Touchy { panic_on_decode: true, n: 7 };
        let err = pool.apply_async(take_touchy, arg).get_timeout(STARTUP).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::TaskPanicked, "{err:?}");
        assert_eq!(err.panic_message(), Some("Touchy 7 panics when decoded"));
        assert_eq!(err.pid(), Some(pid));
        assert_eq!(pool.apply_async(getpid, ()).get_timeout(STARTUP).unwrap(), pid);
    });
}

#[test]
fn items_whose_deserialize_panics_fail_alone_on_a_queue_and_a_pipe() {
    bounded(STARTUP, "panicking items on a queue and a pipe", || {
        let q: Queue<Touchy> = Queue::new().unwrap();
        for n in [1, 2] {
            q.put(make_touchy(n)).map_err(|_| "put").unwrap();
        }
        let err = q.get_timeout(STARTUP).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Deserialize, "{err:?}");
        assert!(err.message().contains("Touchy 1 panics when decoded"), "{err}");
        assert_eq!(q.get_timeout(STARTUP).unwrap().n, 2);

        let (a, b) = pipe::<Touchy>().unwrap();
        a.send(&make_touchy(3)).unwrap();
        a.send(&make_touchy(4)).unwrap();
        let err = b.recv_timeout(STARTUP).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Deserialize, "{err:?}");
        assert!(err.message().contains("Touchy 3 panics when decoded"), "{err}");
        assert_eq!(b.recv_timeout(STARTUP).unwrap().n, 4);
    });
}

/// Writes `written` elements, then panics (or, with `refuse`, returns a
/// serde error of its own) before the sequence ends.
#[derive(Debug, Deserialize)]
struct Flaky {
    written: u32,
    refuse: bool,
}

impl Serialize for Flaky {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.written as usize + 1))?;
        for i in 0..self.written {
            seq.serialize_element(&i)?;
        }
        if self.refuse {
            return Err(ser::Error::custom(format!(
                "Flaky refuses after {} elements: the flux capacitor is not serializable",
                self.written
            )));
        }
        panic!("Flaky panics after {} elements", self.written);
    }
}

/// `Ok(n)` encodes as a `u32`; the rest as the `Flaky` they name.
#[derive(Debug, Deserialize)]
enum MaybeFlaky {
    Fine(u32),
    Flaky(Flaky),
}

impl Serialize for MaybeFlaky {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            MaybeFlaky::Fine(n) => s.serialize_newtype_variant("MaybeFlaky", 0, "Fine", n),
            MaybeFlaky::Flaky(f) => s.serialize_newtype_variant("MaybeFlaky", 1, "Flaky", f),
        }
    }
}

/// Item 1 of every three panics mid-serialize, item 2 refuses with a message.
fn make_flaky(n: u32) -> MaybeFlaky {
    match n % 3 {
        0 => MaybeFlaky::Fine(n),
        1 => MaybeFlaky::Flaky(Flaky { written: 40, refuse: false }),
        _ => MaybeFlaky::Flaky(Flaky { written: 40, refuse: true }),
    }
}

#[test]
fn a_result_whose_serialize_panics_is_a_task_panic_and_the_worker_lives() {
    let (pool, pid) = one_worker();
    bounded(STARTUP, "results that panic in the worker", move || {
        let err = pool.apply_async(make_flaky, 1).get_timeout(STARTUP).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::TaskPanicked, "{err:?}");
        assert_eq!(err.panic_message(), Some("Flaky panics after 40 elements"));
        assert_eq!(err.pid(), Some(pid), "not WorkerDied: the same worker reported it");
        // Chunks: a panic part-way through one result leaves no partial
        // bytes behind to corrupt its neighbours.
        let out: Vec<_> = pool.chunksize(9).imap(make_flaky, 0..9).collect();
        for (n, r) in out.iter().enumerate() {
            match (n % 3, r) {
                (0, Ok(MaybeFlaky::Fine(m))) => assert_eq!(*m as usize, n),
                (1, Err(e)) => assert_eq!(e.kind(), ErrorKind::TaskPanicked, "{e:?}"),
                (2, Err(e)) => assert_eq!(e.kind(), ErrorKind::Serialize, "{e:?}"),
                other => panic!("item {n}: {other:?}"),
            }
        }
        assert_eq!(pool.apply_async(getpid, ()).get_timeout(STARTUP).unwrap(), pid);
    });
}

fn take_flaky(f: Flaky) -> u32 {
    f.written
}

#[test]
fn an_argument_whose_serialize_panics_in_the_parent_fails_only_its_task() {
    let (pool, pid) = one_worker();
    bounded(STARTUP, "an argument that panics in the parent", move || {
        let arg = Flaky { written: 2, refuse: false };
        let err = pool.apply_async(take_flaky, arg).get_timeout(STARTUP).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::TaskPanicked, "{err:?}");
        assert_eq!(err.panic_message(), Some("Flaky panics after 2 elements"));
        assert_eq!(pool.apply_async(getpid, ()).get_timeout(STARTUP).unwrap(), pid);
    });
}

fn exit_quietly(_: Touchy) {}

#[test]
fn process_arguments_whose_serde_panics_fail_cleanly() {
    bounded(STARTUP, "process arguments that panic", || {
        // Encoding in the parent: `start` fails with the panic.
        let mut p = Process::new(take_flaky, Flaky { written: 1, refuse: false });
        let err = p.start().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::TaskPanicked, "{err:?}");
        assert_eq!(err.panic_message(), Some("Flaky panics after 1 elements"));
        // Decoding in the child: it reports the panic and exits 1, instead of
        // aborting (which would be -SIGABRT).
        let mut p = Process::new(exit_quietly, Touchy { panic_on_decode: true, n: 5 });
        p.start().unwrap();
        assert!(p.join_timeout(STARTUP).unwrap(), "the child ended");
        assert_eq!(p.exitcode(), Some(1));
    });
}

// --- serde's own error messages -------------------------------------------

#[test]
fn custom_serde_error_messages_reach_the_caller() {
    const WHY: &str = "the flux capacitor is not serializable";
    let (pool, _) = one_worker();
    bounded(STARTUP, "custom serde messages", move || {
        // Encoded in the worker.
        let err = pool.apply_async(make_flaky, 2).get_timeout(STARTUP).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Serialize, "{err:?}");
        assert!(err.message().contains(WHY), "{err}");
        assert!(err.message().contains("MaybeFlaky"), "{err}");
        // Encoded in the parent.
        let arg = Flaky { written: 0, refuse: true };
        let err = pool.apply_async(take_flaky, arg).get_timeout(STARTUP).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Serialize, "{err:?}");
        assert!(err.message().contains(WHY), "{err}");
        // Decoded in the parent.
        let err = pool.apply_async(refuse_to_decode, ()).get_timeout(STARTUP).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Deserialize, "{err:?}");
        assert!(err.message().contains("Stubborn says no to 3"), "{err}");
        // Decoded in the worker.
        let err = pool.apply_async(take_stubborn, Stubborn(4)).get_timeout(STARTUP).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Deserialize, "{err:?}");
        assert!(err.message().contains("Stubborn says no to 4"), "{err}");
        // On a queue and a pipe.
        let q: Queue<Flaky> = Queue::new().unwrap();
        let Err(multiproc::PutError::Failed(_, err)) = q.put(Flaky { written: 1, refuse: true })
        else {
            panic!("the put should fail");
        };
        assert!(err.message().contains(WHY), "{err}");
        let (a, b) = pipe::<Stubborn>().unwrap();
        a.send(&Stubborn(5)).unwrap();
        let err = b.recv_timeout(STARTUP).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Deserialize, "{err:?}");
        assert!(err.message().contains("Stubborn says no to 5"), "{err}");
    });
}

/// Encodes as a `u32`; its `Deserialize` refuses with its own message.
#[derive(Debug, Serialize)]
struct Stubborn(u32);

impl<'de> Deserialize<'de> for Stubborn {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = u32::deserialize(d)?;
        Err(de::Error::custom(format!("Stubborn says no to {n}")))
    }
}

fn refuse_to_decode(_: ()) -> Stubborn {
    Stubborn(3)
}

fn take_stubborn(s: Stubborn) -> u32 {
    s.0
}
