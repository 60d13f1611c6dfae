//! A rank other than 0: takes tasks from rank 0 and sends back their
//! outcomes, until rank 0 says the program ends.
//!
//! With isolation (the default) the rank's tasks run in local worker
//! processes of its own, a process-backend engine: a task that panics,
//! segfaults, aborts or runs past its timeout fails alone, with the error
//! the local pool gives it, and the local pool replaces the worker. Without,
//! the rank runs each chunk on its own thread (a panic is still caught).
//!
//! Only this thread calls MPI on a rank. Results of the local workers are
//! put in an outbox by the slot threads, which unpark this one; everything
//! in the outbox leaves in one message.

use std::sync::Arc;
use std::thread::Thread;
use std::time::Duration;

use parking_lot::Mutex;

use super::comm::{self, Comm, World};
use super::wire::{self, PoolOptions, Reader};
use super::Backoff;
use crate::engine::procs::{JobDone, ProcEngine, ProcOptions};
use crate::engine::Engine;
use crate::error::{Error, ErrorKind};

/// Results waiting to go to rank 0.
struct Outbox {
    batch: Mutex<(u32, Vec<u8>)>,
    waker: Thread,
}

impl Outbox {
    fn put(&self, write: impl FnOnce(&mut Vec<u8>)) {
        let mut b = self.batch.lock();
        if b.0 == 0 {
            b.1.clear();
            wire::put_u32(&mut b.1, 0);
        }
        write(&mut b.1);
        b.0 += 1;
        drop(b);
        self.waker.unpark();
    }

    /// The batch to send, if there is one.
    fn take(&self) -> Option<Vec<u8>> {
        let mut b = self.batch.lock();
        if b.0 == 0 {
            return None;
        }
        let n = std::mem::take(&mut b.0);
        let mut body = std::mem::take(&mut b.1);
        body[..4].copy_from_slice(&n.to_le_bytes());
        Some(body)
    }
}

enum Runs {
    /// No pool yet, or the last one ended.
    Nothing,
    Local(Arc<ProcEngine>),
    OnThisThread,
    /// The local pool could not start: every task fails with why.
    Failed(Error),
}

struct Rank {
    me: World,
    outbox: Arc<Outbox>,
    runs: Runs,
    /// This rank is another build than rank 0: it runs nothing.
    other_build: bool,
}

/// Serves rank 0; returns the exit code.
pub(super) fn serve(me: World) -> i32 {
    let outbox =
        Arc::new(Outbox { batch: Mutex::new((0, Vec::new())), waker: std::thread::current() });
    let mut rank = Rank { me, outbox, runs: Runs::Nothing, other_build: false };
    let mut backoff = Backoff::new();
    loop {
        let Ok(mut c) = comm::comm() else { return 1 };
        let mut active = false;
        loop {
            match c.receive(Some(0), None) {
                Ok(Some(m)) => {
                    active = true;
                    if m.tag == wire::EXIT {
                        rank.end(false);
                        if let Some(body) = rank.outbox.take() {
                            let _ = c.send(0, wire::DONE, body);
                        }
                        c.flush(Duration::from_secs(5));
                        c.finalize();
                        return 0;
                    }
                    rank.handle(&mut c, m.tag, m.body.as_deref().unwrap_or(&[]));
                }
                Ok(None) => break,
                Err(e) => {
                    report!(ERROR, rank = rank.me.rank, error: display = e; "multiproc: MPI rank {}: {e}", rank.me.rank);
                    break;
                }
            }
        }
        if let Some(body) = rank.outbox.take() {
            active = true;
            if let Err(e) = c.send(0, wire::DONE, body) {
                report!(ERROR, rank = rank.me.rank, error: display = e; "multiproc: MPI rank {} could not send results: {e}", rank.me.rank);
            }
        }
        c.progress();
        drop(c);
        if active {
            backoff.reset();
        } else {
            backoff.wait(Duration::from_millis(2));
        }
    }
}

impl Rank {
    fn handle(&mut self, c: &mut Comm, tag: i32, body: &[u8]) {
        match tag {
            wire::HELLO => {
                self.other_build = body != super::build_print();
                let _ = c.send(0, wire::HELLO_REPLY, vec![u8::from(!self.other_build)]);
            }
            wire::POOL => {
                self.end(false);
                self.runs = match PoolOptions::decode(body) {
                    Err(e) => Runs::Failed(e),
                    Ok(o) if !o.isolate => Runs::OnThisThread,
                    Ok(o) => {
                        let options = ProcOptions {
                            workers: Some(o.local_workers as usize),
                            task_timeout: o.task_timeout,
                            max_tasks_per_child: o.max_tasks_per_child.map(|n| n as usize),
                            ..ProcOptions::default()
                        };
                        match options.build(false, "local_workers") {
                            Ok(engine) => Runs::Local(engine),
                            Err(e) => Runs::Failed(e),
                        }
                    }
                };
            }
            wire::TERMINATE => self.end(true),
            wire::PING => {
                let _ = c.send(0, wire::PONG, body.to_vec());
            }
            wire::TASKS => {
                if let Err(e) = self.run_tasks(body) {
                    report!(ERROR, rank = self.me.rank, error: display = e; "multiproc: MPI rank {}: {e}", self.me.rank);
                }
            }
            _ => {}
        }
    }

    /// Ends the current pool: at once (`terminate`), or after what it holds.
    fn end(&mut self, now: bool) {
        if let Runs::Local(engine) = std::mem::replace(&mut self.runs, Runs::Nothing) {
            if now {
                engine.terminate();
            } else {
                engine.close();
            }
            engine.join_workers();
            engine.face_dropped();
        }
    }

    fn run_tasks(&mut self, body: &[u8]) -> Result<(), Error> {
        let mut r = Reader::new(body);
        let n = r.count(wire::MIN_TASK)?;
        let pid = std::process::id();
        for _ in 0..n {
            let id = r.u64()?;
            let offset = r.u64()? as i64;
            let chunk = r.blob()?;
            if self.other_build {
                let e = Error::build_mismatch("this MPI rank");
                self.outbox.put(|out| wire::put_error(out, id, pid, &e));
                continue;
            }
            match &self.runs {
                Runs::Local(engine) => engine.submit(
                    (offset, "sent by MPI rank 0"),
                    (chunk.to_vec(), Vec::new()),
                    self.done(id),
                    None,
                    false,
                ),
                Runs::OnThisThread => {
                    let mut out = Vec::new();
                    let fds = crate::task::run_chunk_at(offset, chunk, Vec::new(), &mut out);
                    self.outbox.put(|o| finish(o, id, pid, &out, fds.is_empty()));
                }
                Runs::Failed(e) => {
                    let e = e.clone();
                    self.outbox.put(|out| wire::put_error(out, id, pid, &e));
                }
                Runs::Nothing => {
                    let e = Error::not_running_because("MPI rank", "it has no pool");
                    self.outbox.put(|out| wire::put_error(out, id, pid, &e));
                }
            }
        }
        Ok(())
    }

    /// The callback of job `id` on the local pool: its outcome goes to the
    /// outbox.
    fn done(&self, id: u64) -> JobDone {
        let outbox = self.outbox.clone();
        Box::new(move |outcome, pid| {
            let pid = pid.unwrap_or(0);
            match outcome {
                Ok((bytes, fds)) => outbox.put(|o| finish(o, id, pid, bytes, fds.is_empty())),
                Err(e) => {
                    let pid = e.pid().unwrap_or(pid);
                    outbox.put(|o| wire::put_error(o, id, pid, &e))
                }
            }
        })
    }
}

/// Writes a job's outcomes, unless they carry descriptors, which cannot
/// leave this machine.
fn finish(out: &mut Vec<u8>, id: u64, pid: u32, outcomes: &[u8], no_fds: bool) {
    if no_fds {
        wire::put_outcomes(out, id, pid, outcomes);
    } else {
        let e = Error::new(
            ErrorKind::Serialize,
            "a task's result holds a file descriptor (multiproc::Fd), which cannot travel \
             between MPI ranks",
        );
        wire::put_error(out, id, pid, &e);
    }
}
