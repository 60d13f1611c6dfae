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

/// The largest job outcome a rank sends (its encoded results); a larger one
/// becomes an error for that job. Half a message, less room for the
/// records' headers, so that a batch sealed as soon as it passes half a
/// message (see [`Outbox`]) never passes a whole one, which rank 0 would
/// drop unread and so wait for its jobs forever.
const MAX_OUTCOMES: usize = comm::MAX_MESSAGE / 2 - 1024;

/// Results waiting to go to rank 0, in batches of at most
/// [`comm::MAX_MESSAGE`] bytes: one being filled, and those full already.
struct Outbox {
    batches: Mutex<Batches>,
    waker: Thread,
    /// A batch is sealed once it holds more than this many bytes.
    seal_at: usize,
}

#[derive(Default)]
struct Batches {
    /// Records in `open`.
    n: u32,
    open: Vec<u8>,
    sealed: std::collections::VecDeque<Vec<u8>>,
}

impl Outbox {
    fn new(waker: Thread) -> Outbox {
        Outbox { batches: Mutex::default(), waker, seal_at: comm::MAX_MESSAGE / 2 }
    }

    fn put(&self, write: impl FnOnce(&mut Vec<u8>)) {
        let mut b = self.batches.lock();
        if b.n == 0 {
            b.open.clear();
            wire::put_u32(&mut b.open, 0);
        }
        write(&mut b.open);
        b.n += 1;
        if b.open.len() > self.seal_at {
            let full = Self::close(&mut b);
            b.sealed.push_back(full);
        }
        drop(b);
        self.waker.unpark();
    }

    /// The open batch with its count written, leaving none open.
    fn close(b: &mut Batches) -> Vec<u8> {
        let n = std::mem::take(&mut b.n);
        let mut body = std::mem::take(&mut b.open);
        body[..4].copy_from_slice(&n.to_le_bytes());
        body
    }

    /// The next batch to send, oldest first, if there is one.
    fn take(&self) -> Option<Vec<u8>> {
        let mut b = self.batches.lock();
        if let Some(full) = b.sealed.pop_front() {
            return Some(full);
        }
        (b.n > 0).then(|| Self::close(&mut b))
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
    let outbox = Arc::new(Outbox::new(std::thread::current()));
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
                        while let Some(body) = rank.outbox.take() {
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
/// leave this machine, or are more than one message carries.
fn finish(out: &mut Vec<u8>, id: u64, pid: u32, outcomes: &[u8], no_fds: bool) {
    finish_within(out, id, pid, outcomes, no_fds, MAX_OUTCOMES)
}

fn finish_within(out: &mut Vec<u8>, id: u64, pid: u32, outcomes: &[u8], no_fds: bool, max: usize) {
    if !no_fds {
        let e = Error::new(
            ErrorKind::Serialize,
            "a task's result holds a file descriptor (multiproc::Fd), which cannot travel \
             between MPI ranks",
        );
        wire::put_error(out, id, pid, &e);
    } else if outcomes.len() > max {
        let e = Error::new(
            ErrorKind::Serialize,
            format!(
                "a task's result encodes to {} bytes, more than the {max} bytes one message \
                 from an MPI rank carries; return large data through shared storage (a file, \
                 say) instead",
                outcomes.len()
            ),
        );
        wire::put_error(out, id, pid, &e);
    } else {
        wire::put_outcomes(out, id, pid, outcomes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(body: &[u8]) -> (u32, usize) {
        let n = u32::from_le_bytes(body[..4].try_into().unwrap());
        (n, body.len())
    }

    #[test]
    fn an_outbox_seals_batches_before_they_outgrow_a_message() {
        let mut outbox = Outbox::new(std::thread::current());
        outbox.seal_at = 100;
        for id in 0..10u64 {
            outbox.put(|o| wire::put_outcomes(o, id, 1, &[7; 40]));
        }
        let mut batches = Vec::new();
        while let Some(b) = outbox.take() {
            batches.push(b);
        }
        // Each batch passed 100 bytes by one record at most, and together
        // they hold the ten records in order.
        let record = {
            let mut one = Vec::new();
            wire::put_outcomes(&mut one, 0, 1, &[7; 40]);
            one.len()
        };
        assert!(batches.len() > 1, "one batch of {} bytes", batches[0].len());
        let mut ids = Vec::new();
        for b in &batches {
            let (n, len) = records(b);
            assert!(len <= 100 + record, "a batch of {len} bytes");
            assert_eq!(len, 4 + n as usize * record);
            for i in 0..n as usize {
                let at = 4 + i * record;
                ids.push(u64::from_le_bytes(b[at..at + 8].try_into().unwrap()));
            }
        }
        assert_eq!(ids, (0..10).collect::<Vec<_>>());
        assert!(outbox.take().is_none());
    }

    #[test]
    fn an_outcome_over_the_limit_becomes_an_error_for_its_job() {
        let mut out = Vec::new();
        finish_within(&mut out, 9, 1, &[0; 64], true, 32);
        let mut r = Reader::new(&out);
        assert_eq!(r.u64().unwrap(), 9);
        let mut ok = Vec::new();
        finish_within(&mut ok, 9, 1, &[0; 32], true, 32);
        assert!(out.len() < ok.len() + 300);
        let text = String::from_utf8_lossy(&out);
        assert!(text.contains("encodes to 64 bytes, more than the 32"), "{text}");
    }
}
