//! Async waits usable from any executor: `Queue::get_async`,
//! `Connection::recv_async`, `Event::wait_async`, `Lock::acquire_async`…
//!
//! Every async method is the non-blocking form of its operation tried on
//! each poll; when it cannot go on, the future hands its `Waker` to one
//! small reactor thread of this process (started at the first wait), which
//! wakes it when it may go on:
//!
//! - *Descriptors* (a queue's receiving socket, a pipe end, a pidfd): the
//!   reactor `ppoll`s every registered descriptor, level-triggered, and
//!   wakes a future once its descriptor is ready, hangs up or errs. A peer
//!   that dies closes its end, so its future wakes and sees the error.
//! - *Shared-memory words* (an `Event`'s flag, a `Lock`'s robust mutex, a
//!   bounded queue's free places): the future retries after a nap that the
//!   reactor times, 50 us at first and doubling up to 2 ms. A robust
//!   mutex is owned by the thread that takes it, so no helper thread may
//!   block in `pthread_mutex_lock` for the future, and its futex word is
//!   the C library's private business; retrying keeps every wait on the
//!   path the blocking calls use, at a cost of at most 500 wake-ups a second
//!   per waiting future.
//!
//! No runtime is named: the reactor knows only `Waker`s, so tokio,
//! async-std, smol or a hand-written `block_on` all work, and nothing blocks
//! the executor's thread. A future that is dropped takes its registration
//! with it.

mod pipe;
mod queue;
mod sync;

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::sync::Arc;
use std::task::{Context, Waker};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::error::{Error, Result};
use crate::sys;

/// The first nap of a future retrying a shared-memory word.
const NAP_FIRST: Duration = Duration::from_micros(50);
/// The longest nap: the latency a retried wait may add at worst.
const NAP_MAX: Duration = Duration::from_millis(2);

/// One registered wait.
struct Entry {
    id: u64,
    what: What,
    waker: Waker,
}

enum What {
    /// A descriptor and what is wanted of it.
    Fd(RawFd, Ready),
    /// A moment.
    At(Instant),
}

struct Reactor {
    entries: Mutex<(u64, Vec<Entry>)>,
    notify: sys::EventFd,
}

impl Reactor {
    fn add(&self, what: What, waker: Waker) -> u64 {
        let mut e = self.entries.lock();
        e.0 += 1;
        let id = e.0;
        e.1.push(Entry { id, what, waker });
        drop(e);
        self.notify.notify();
        id
    }

    /// Gives a descriptor wait still pending on the same descriptor and
    /// events the newest waker; true when it did. Any other registration
    /// `id` is withdrawn.
    fn refresh(&self, id: u64, what: &What, waker: &Waker) -> bool {
        let mut e = self.entries.lock();
        let Some(i) = e.1.iter().position(|e| e.id == id) else { return false };
        let entry = &mut e.1[i];
        if let (What::Fd(a, x), What::Fd(b, y)) = (&entry.what, what) {
            if a == b && x == y {
                if !entry.waker.will_wake(waker) {
                    entry.waker = waker.clone();
                }
                return true;
            }
        }
        e.1.swap_remove(i);
        false
    }

    fn remove(&self, id: u64) {
        let mut e = self.entries.lock();
        if let Some(i) = e.1.iter().position(|e| e.id == id) {
            e.1.swap_remove(i);
        }
    }

    /// The reactor thread: waits for any registered descriptor or moment
    /// and wakes whose wait is over.
    fn run(&self) {
        let mut fds: Vec<sys::PollNumber> = Vec::new();
        let mut ids: Vec<u64> = Vec::new();
        let mut woken: Vec<Waker> = Vec::new();
        loop {
            fds.clear();
            ids.clear();
            let notify = self.notify.fd().as_raw_fd();
            fds.push(sys::PollNumber { fd: notify, read: true, write: false, ready: false });
            let mut next: Option<Instant> = None;
            for e in self.entries.lock().1.iter() {
                match e.what {
                    What::Fd(fd, ready) => {
                        let (read, write) = match ready {
                            Ready::Read => (true, false),
                            Ready::Write => (false, true),
                            Ready::ReadWrite => (true, true),
                        };
                        fds.push(sys::PollNumber { fd, read, write, ready: false });
                        ids.push(e.id);
                    }
                    What::At(t) => next = Some(next.map_or(t, |n| n.min(t))),
                }
            }
            let timeout = next.map(|t| t.saturating_duration_since(Instant::now()));
            // A registered descriptor closed meanwhile comes back ready
            // (invalid, or reused): that only wakes a future, which then
            // tries its operation again.
            if sys::poll_numbers(&mut fds, timeout).is_err() {
                // Nothing to wait on is broken for good: wake everyone,
                // whose retries then meet the error themselves, and nap
                // rather than spin.
                for e in self.entries.lock().1.drain(..) {
                    woken.push(e.waker);
                }
                woken.drain(..).for_each(Waker::wake);
                std::thread::sleep(NAP_MAX);
                continue;
            }
            if fds[0].ready {
                self.notify.drain();
            }
            let now = Instant::now();
            let mut e = self.entries.lock();
            e.1.retain_mut(|entry| {
                let done = match entry.what {
                    What::At(t) => t <= now,
                    What::Fd(..) => {
                        ids.iter().position(|&id| id == entry.id).is_some_and(|k| fds[k + 1].ready)
                    }
                };
                if done {
                    woken.push(entry.waker.clone());
                }
                !done
            });
            drop(e);
            woken.drain(..).for_each(Waker::wake);
        }
    }
}

/// This process's reactor, started at the first call (and again in a
/// forked child, which has the memory but not the thread).
fn reactor() -> Result<Arc<Reactor>> {
    let pid = std::process::id();
    let mut slot = REACTOR.lock();
    if let Some((owner, r)) = slot.as_ref() {
        if *owner == pid {
            return Ok(r.clone());
        }
    }
    let notify =
        sys::EventFd::new().map_err(|e| Error::io("could not create the async reactor", e))?;
    let r = Arc::new(Reactor { entries: Mutex::new((0, Vec::new())), notify });
    let run = r.clone();
    std::thread::Builder::new()
        .name("multiproc-aio".into())
        .spawn(move || run.run())
        .map_err(|e| Error::io("could not start the async reactor thread", e))?;
    *slot = Some((pid, r.clone()));
    Ok(r)
}

/// Wakes every future waiting on descriptor `fd`: for input read off the
/// socket by someone else (a send reading into its connection's receiving
/// half), which leaves a frame buffered but the socket no longer readable.
pub(crate) fn wake_fd(fd: BorrowedFd<'_>) {
    let fd = fd.as_raw_fd();
    let r = {
        let slot = REACTOR.lock();
        match slot.as_ref() {
            Some((pid, r)) if *pid == std::process::id() => r.clone(),
            _ => return,
        }
    };
    let mut woken = Vec::new();
    r.entries.lock().1.retain(|e| {
        let hit = matches!(e.what, What::Fd(f, _) if f == fd);
        if hit {
            woken.push(e.waker.clone());
        }
        !hit
    });
    woken.into_iter().for_each(Waker::wake);
}

/// This process's reactor and the pid it was started in.
static REACTOR: Mutex<Option<(u32, Arc<Reactor>)>> = Mutex::new(None);

/// The one registration of a pending future, withdrawn when it is dropped
/// (a cancelled future leaves nothing behind).
pub(crate) struct Wait {
    reg: Option<(Arc<Reactor>, u64)>,
    nap: Duration,
}

/// What to wait for on a descriptor.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ready {
    Read,
    Write,
    ReadWrite,
}

impl Wait {
    pub(crate) fn new() -> Wait {
        Wait { reg: None, nap: NAP_FIRST }
    }

    /// Wakes `cx`'s task once `fd` is ready as asked (or hangs up, or errs).
    /// The descriptor must stay open while this registration lasts: the
    /// caller keeps what owns it borrowed for as long as it holds `self`.
    pub(crate) fn fd(&mut self, cx: &Context<'_>, fd: BorrowedFd<'_>, ready: Ready) -> Result<()> {
        self.nap = NAP_FIRST;
        self.arm(cx, What::Fd(fd.as_fd().as_raw_fd(), ready))
    }

    /// Wakes `cx`'s task after the next nap of a retrying wait (see the
    /// module comment); each nap doubles up to 2 ms.
    pub(crate) fn retry(&mut self, cx: &Context<'_>) -> Result<()> {
        let at = Instant::now() + self.nap;
        self.nap = (self.nap * 2).min(NAP_MAX);
        self.arm(cx, What::At(at))
    }

    fn arm(&mut self, cx: &Context<'_>, what: What) -> Result<()> {
        // A registration for the same kind of wait still pending only gets
        // the newest waker; anything else is replaced.
        if let Some((r, id)) = self.reg.take() {
            if r.refresh(id, &what, cx.waker()) {
                self.reg = Some((r, id));
                return Ok(());
            }
        }
        let r = reactor()?;
        let id = r.add(what, cx.waker().clone());
        self.reg = Some((r, id));
        Ok(())
    }
}

impl Drop for Wait {
    fn drop(&mut self) {
        if let Some((r, id)) = self.reg.take() {
            r.remove(id);
        }
    }
}
