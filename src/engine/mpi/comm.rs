//! The few MPI calls the backend makes, over rsmpi's raw bindings.
//!
//! Every call goes through the one [`Comm`] of the process, behind a mutex:
//! MPI is initialised with `MPI_THREAD_SERIALIZED` and the lock is what makes
//! that promise true. Sends are non-blocking (`MPI_Isend`) and their buffers
//! are kept until `MPI_Test` says they left: two ranks that send each other a
//! large message at once would otherwise both wait in a blocking send for a
//! receive the other never posts. Receives are matched probes
//! (`MPI_Improbe` + `MPI_Mrecv`), so a message's length is known, and
//! bounded, before any memory is given to it.

use std::os::raw::{c_int, c_void};
use std::sync::OnceLock;

use mpi::ffi;
use parking_lot::{Mutex, MutexGuard};

use crate::error::{Error, ErrorKind, Result};

/// The largest message taken from a peer; a larger one is received into
/// nothing (MPI truncates it) and reported.
pub(crate) const MAX_MESSAGE: usize = 1 << 30;

/// This process's place in the job.
#[derive(Clone, Copy, Debug)]
pub(crate) struct World {
    pub(crate) rank: i32,
    pub(crate) size: i32,
}

/// A received message.
pub(crate) struct Message {
    pub(crate) source: i32,
    pub(crate) tag: i32,
    /// `None` when the peer sent more than [`MAX_MESSAGE`] bytes.
    pub(crate) body: Option<Vec<u8>>,
}

/// The MPI library, once initialised.
pub(crate) struct Comm {
    world: World,
    /// Sends in flight, with the buffers MPI still reads.
    pending: Vec<(ffi::MPI_Request, Vec<u8>)>,
    finalized: bool,
}

// SAFETY: MPI handles are plain values (pointers into the library's own
// tables in Open MPI); the library was initialised for calls from any
// thread, one at a time, which the mutex around the one `Comm` guarantees.
unsafe impl Send for Comm {}

static COMM: OnceLock<std::result::Result<Mutex<Comm>, Error>> = OnceLock::new();

fn check(what: &str, code: c_int) -> Result<()> {
    if code == 0 {
        Ok(())
    } else {
        Err(Error::new(ErrorKind::Io, format!("MPI: {what} failed (error code {code})")))
    }
}

fn comm_world() -> ffi::MPI_Comm {
    // SAFETY: a constant set by rsmpi's C shim when the program is loaded.
    unsafe { ffi::RSMPI_COMM_WORLD }
}

fn bytes_type() -> ffi::MPI_Datatype {
    // SAFETY: as above.
    unsafe { ffi::RSMPI_UINT8_T }
}

fn init() -> Result<Comm> {
    let mut flag: c_int = 0;
    // SAFETY: MPI_Initialized may be called at any time and writes one int.
    check("MPI_Initialized", unsafe { ffi::MPI_Initialized(&mut flag) })?;
    if flag != 0 {
        return Err(Error::new(
            ErrorKind::InvalidState,
            "MPI was initialised by someone else in this process; multiproc::mpi must be the one \
             that initialises it (do not call mpi::initialize yourself)",
        ));
    }
    let mut provided: c_int = 0;
    // SAFETY: null argc/argv are allowed since MPI-2; `provided` is one int.
    let code = unsafe {
        ffi::MPI_Init_thread(
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            ffi::RSMPI_THREAD_SERIALIZED,
            &mut provided,
        )
    };
    check("MPI_Init_thread", code)?;
    // SAFETY: a constant of the shim.
    if provided < unsafe { ffi::RSMPI_THREAD_SERIALIZED } {
        return Err(Error::new(
            ErrorKind::Io,
            "MPI: the library does not allow calls from more than one thread \
             (MPI_THREAD_SERIALIZED), which multiproc needs",
        ));
    }
    let (mut rank, mut size): (c_int, c_int) = (0, 0);
    // SAFETY: MPI is initialised; each call writes one int. Errors are
    // returned rather than aborting the job, so a bad message is ours to
    // report.
    unsafe {
        check("MPI_Comm_rank", ffi::MPI_Comm_rank(comm_world(), &mut rank))?;
        check("MPI_Comm_size", ffi::MPI_Comm_size(comm_world(), &mut size))?;
        check(
            "MPI_Comm_set_errhandler",
            ffi::MPI_Comm_set_errhandler(comm_world(), ffi::RSMPI_ERRORS_RETURN),
        )?;
    }
    Ok(Comm { world: World { rank, size }, pending: Vec::new(), finalized: false })
}

/// The process's MPI, initialised on first use.
pub(crate) fn comm() -> Result<MutexGuard<'static, Comm>> {
    match COMM.get_or_init(|| init().map(Mutex::new)) {
        Ok(m) => Ok(m.lock()),
        Err(e) => Err(e.clone()),
    }
}

/// The process's MPI if it was initialised (never initialises it).
pub(crate) fn comm_if_initialized() -> Option<MutexGuard<'static, Comm>> {
    match COMM.get() {
        Some(Ok(m)) => Some(m.lock()),
        _ => None,
    }
}

impl Comm {
    pub(crate) fn world(&self) -> World {
        self.world
    }

    /// Starts sending `body` to `dest`; it leaves during later calls.
    pub(crate) fn send(&mut self, dest: i32, tag: i32, body: Vec<u8>) -> Result<()> {
        if self.finalized {
            return Err(Error::new(ErrorKind::Closed, "MPI was finalized"));
        }
        let count = c_int::try_from(body.len()).map_err(|_| {
            Error::new(ErrorKind::InvalidArgument, "an MPI message of 2 GiB or more")
        })?;
        // SAFETY: a null request is a valid initial value, overwritten below.
        let mut request = unsafe { ffi::RSMPI_REQUEST_NULL };
        // SAFETY: `body`'s heap buffer is kept in `pending` (moving the Vec
        // does not move it) until MPI_Test reports the send complete.
        let code = unsafe {
            ffi::MPI_Isend(
                body.as_ptr().cast::<c_void>(),
                count,
                bytes_type(),
                dest,
                tag,
                comm_world(),
                &mut request,
            )
        };
        check("MPI_Isend", code)?;
        self.pending.push((request, body));
        Ok(())
    }

    /// Lets finished sends go; true when none is left.
    pub(crate) fn progress(&mut self) -> bool {
        self.pending.retain_mut(|(request, _)| {
            let mut flag: c_int = 0;
            // SAFETY: `request` is an active request of ours; the status is
            // ignored.
            let code = unsafe { ffi::MPI_Test(request, &mut flag, ffi::RSMPI_STATUS_IGNORE) };
            code == 0 && flag == 0
        });
        self.pending.is_empty()
    }

    /// Takes one message from `source` with `tag` (`None`: any), if one came.
    pub(crate) fn receive(
        &mut self,
        source: Option<i32>,
        tag: Option<i32>,
    ) -> Result<Option<Message>> {
        if self.finalized {
            return Ok(None);
        }
        let mut flag: c_int = 0;
        // SAFETY: plain values, overwritten by the probe.
        let mut message = unsafe { ffi::RSMPI_MESSAGE_NULL };
        // SAFETY: MPI_Status is plain integers; all-zero is a valid value.
        let mut status: ffi::MPI_Status = unsafe { std::mem::zeroed() };
        // SAFETY: constants of the shim.
        let source = source.unwrap_or(unsafe { ffi::RSMPI_ANY_SOURCE });
        // SAFETY: as above.
        let tag = tag.unwrap_or(unsafe { ffi::RSMPI_ANY_TAG });
        // SAFETY: the out-pointers are valid for the call.
        let code = unsafe {
            ffi::MPI_Improbe(source, tag, comm_world(), &mut flag, &mut message, &mut status)
        };
        check("MPI_Improbe", code)?;
        if flag == 0 {
            return Ok(None);
        }
        let mut count: c_int = 0;
        // SAFETY: `status` was filled by the probe.
        check("MPI_Get_count", unsafe { ffi::MPI_Get_count(&status, bytes_type(), &mut count) })?;
        let len = usize::try_from(count).unwrap_or(usize::MAX);
        let (source, tag) = (status.MPI_SOURCE, status.MPI_TAG);
        let keep = len <= MAX_MESSAGE;
        let mut body = vec![0u8; if keep { len } else { 0 }];
        let capacity = if keep { count } else { 0 };
        // SAFETY: `body` has room for `capacity` bytes; `message` is the
        // matched message of the probe, received exactly once. A message
        // larger than the room is truncated by MPI (the error is returned,
        // not raised, and the message is gone either way).
        let code = unsafe {
            ffi::MPI_Mrecv(
                body.as_mut_ptr().cast::<c_void>(),
                capacity,
                bytes_type(),
                &mut message,
                ffi::RSMPI_STATUS_IGNORE,
            )
        };
        if keep {
            check("MPI_Mrecv", code)?;
        }
        Ok(Some(Message { source, tag, body: keep.then_some(body) }))
    }

    /// Waits (polling, up to `limit`) until every send has left.
    pub(crate) fn flush(&mut self, limit: std::time::Duration) -> bool {
        let end = std::time::Instant::now() + limit;
        while !self.progress() {
            if std::time::Instant::now() >= end {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_micros(50));
        }
        true
    }

    /// Ends MPI for this process; sends not yet gone are abandoned.
    pub(crate) fn finalize(&mut self) {
        if self.finalized {
            return;
        }
        self.finalized = true;
        for (request, _) in &mut self.pending {
            // SAFETY: an active request of ours, cancelled and freed once.
            unsafe {
                ffi::MPI_Cancel(request);
                ffi::MPI_Request_free(request);
            }
        }
        // The buffers are leaked, not freed: MPI may still hold them.
        std::mem::take(&mut self.pending).into_iter().for_each(|(_, b)| std::mem::forget(b));
        // SAFETY: called once, by the thread holding the lock; no other MPI
        // call follows (`finalized` guards them).
        unsafe {
            ffi::MPI_Finalize();
        }
    }
}
