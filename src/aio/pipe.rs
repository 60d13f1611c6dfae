//! `Connection::recv_async` and `Connection::send_async` (and the same on a
//! one-way pipe's `Receiver` and `Sender`): the connection's non-blocking
//! receive and send steps, resumed when the socket is ready.

use std::future::poll_fn;
use std::task::Poll;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{Ready, Wait};
use crate::error::Result;
use crate::pipe::{Connection, Receiver, Sender, TryRecv, TrySend};

impl<T: DeserializeOwned> Connection<T> {
    /// Waits for the next value, as [`recv`](Connection::recv), without
    /// blocking the executor's thread: usable from tokio or any other
    /// executor.
    ///
    /// A peer that dies (or closes its end) wakes the future with
    /// [`ErrorKind::Closed`](crate::ErrorKind::Closed), or
    /// [`ErrorKind::Protocol`](crate::ErrorKind::Protocol) when it died in
    /// the middle of a message.
    ///
    /// *Cancel safety*: a message is taken only in the poll that returns
    /// it; part of one read meanwhile stays buffered in this end. Dropping
    /// the future loses nothing: the next receive, async or not, gets the
    /// message.
    ///
    /// # Errors
    /// As [`recv`](Connection::recv).
    ///
    /// # Examples
    ///
    /// ```
    /// use multiproc::{pipe, Connection, Process};
    ///
    /// fn child(c: Connection<u64>) { c.send(&42).unwrap(); }
    ///
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// let (here, there) = pipe::<u64>()?;
    /// let mut p = Process::new(child, there);
    /// p.start()?;
    /// assert_eq!(here.recv_async().await?, 42);
    /// // The child exited and our copy of its end went with it: end of file.
    /// assert_eq!(here.recv_async().await.unwrap_err().kind(), multiproc::ErrorKind::Closed);
    /// p.join_async().await?;
    /// # Ok::<(), multiproc::Error>(())
    /// # }).unwrap();
    /// ```
    pub async fn recv_async(&self) -> Result<T> {
        // Decoded where it lies: a large `Bytes` in it views its file.
        self.recv_async_with(|c| c.try_recv_with(Self::decode_value)).await?
    }
}

impl<T> Connection<T> {
    /// Waits for the next message and returns its bytes, as
    /// [`recv_bytes`](Connection::recv_bytes), without blocking the
    /// executor's thread. Cancel-safe as [`recv_async`](Connection::recv_async).
    ///
    /// # Errors
    /// As [`recv_async`](Connection::recv_async).
    ///
    /// # Examples
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// let (a, b) = multiproc::pipe::<()>()?;
    /// a.send_bytes_async(b"raw").await?;
    /// assert_eq!(b.recv_bytes_async().await?, b"raw");
    /// # Ok::<(), multiproc::Error>(())
    /// # }).unwrap();
    /// ```
    pub async fn recv_bytes_async(&self) -> Result<Vec<u8>> {
        Ok(self.recv_async_with(Self::try_recv_frame).await?.0)
    }

    /// Waits without blocking for the next message, taken by `step`.
    async fn recv_async_with<R>(
        &self,
        mut step: impl FnMut(&Self) -> Result<TryRecv<R>>,
    ) -> Result<R> {
        let mut wait = Wait::new();
        poll_fn(|cx| {
            let step = match step(self) {
                Ok(TryRecv::Frame(out)) => return Poll::Ready(Ok(out)),
                Err(e) => return Poll::Ready(Err(e)),
                Ok(step) => step,
            };
            let armed = match (step, self.recv_fd()) {
                // Level-triggered: data that came after the try wakes us at once.
                (TryRecv::Empty, Some(fd)) => wait.fd(cx, fd, Ready::Read),
                // A blocking receive on another thread holds this end: the
                // socket stays readable until it reads, so retry instead.
                _ => wait.retry(cx),
            };
            match armed {
                Ok(()) => Poll::Pending,
                Err(e) => Poll::Ready(Err(e)),
            }
        })
        .await
    }

    /// Sends raw bytes, as [`send_bytes`](Connection::send_bytes), without
    /// blocking the executor's thread while the socket is full.
    /// Cancel safety as [`send_async`](Connection::send_async).
    ///
    /// # Errors
    /// As [`send_bytes`](Connection::send_bytes).
    ///
    /// # Examples
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// let (a, b) = multiproc::pipe::<()>()?;
    /// a.send_bytes_async(&[7; 100_000]).await?; // more than the socket holds
    /// assert_eq!(b.recv_bytes_async().await?.len(), 100_000);
    /// # Ok::<(), multiproc::Error>(())
    /// # }).unwrap();
    /// ```
    pub async fn send_bytes_async(&self, bytes: &[u8]) -> Result<()> {
        self.send_chunk_async(crate::wire::Chunk::from(bytes.to_vec()), Vec::new()).await
    }

    async fn send_chunk_async(
        &self,
        bytes: crate::wire::Chunk,
        fds: Vec<std::os::fd::OwnedFd>,
    ) -> Result<()> {
        let mut wait = Wait::new();
        let mut fds = Some(fds);
        // Where the message ends in the stream, once it is queued.
        let mut end: Option<u64> = None;
        poll_fn(|cx| {
            let step = match end {
                None => match self.try_start_send(&bytes, &mut fds) {
                    Ok(Some((e, step))) => {
                        end = Some(e);
                        Ok(step)
                    }
                    Ok(None) => Ok(TrySend::Busy),
                    Err(e) => Err(e),
                },
                Some(e) => self.try_continue_send(e),
            };
            let armed = match step {
                Ok(TrySend::Done) => return Poll::Ready(Ok(())),
                Err(e) => return Poll::Ready(Err(e)),
                Ok(TrySend::Pending) => {
                    let (fd, read) = self.send_fd();
                    wait.fd(cx, fd, if read { Ready::ReadWrite } else { Ready::Write })
                }
                // A blocking send on another thread holds this end.
                Ok(TrySend::Busy) => wait.retry(cx),
            };
            match armed {
                Ok(()) => Poll::Pending,
                Err(e) => Poll::Ready(Err(e)),
            }
        })
        .await
    }
}

impl<T: Serialize> Connection<T> {
    /// Sends a value, as [`send`](Connection::send), without blocking the
    /// executor's thread while the socket is full (a large message, a slow
    /// reader). A peer that dies wakes the future with
    /// [`ErrorKind::Closed`](crate::ErrorKind::Closed).
    ///
    /// *Cancel safety*: the value is encoded at the first poll. Dropping
    /// the future before then sends nothing; after a poll that returned
    /// `Pending`, the message is committed: its rest stays queued on this
    /// end and goes out with the next send here (async or not), never
    /// interleaved with another message. (If this end is dropped first,
    /// the peer reads [`ErrorKind::Protocol`](crate::ErrorKind::Protocol),
    /// never half a value.)
    ///
    /// # Errors
    /// As [`send`](Connection::send).
    ///
    /// # Examples
    ///
    /// ```
    /// use multiproc::{pipe, Connection, Process};
    ///
    /// fn echo(c: Connection<String>) { let s = c.recv().unwrap(); c.send(&(s + "!")).unwrap(); }
    ///
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// let (here, there) = pipe::<String>()?;
    /// let mut p = Process::new(echo, there);
    /// p.start()?;
    /// here.send_async(&"hi".to_string()).await?;
    /// assert_eq!(here.recv_async().await?, "hi!");
    /// p.join_async().await?;
    /// # Ok::<(), multiproc::Error>(())
    /// # }).unwrap();
    /// ```
    pub async fn send_async(&self, value: &T) -> Result<()> {
        let encoded = self.encode_value(value);
        let (bytes, fds) = encoded?;
        self.send_chunk_async(bytes, fds).await
    }
}

impl<T: DeserializeOwned> Receiver<T> {
    /// Waits for the next value without blocking the executor's thread, as
    /// [`Connection::recv_async`] (cancel-safe in the same way).
    ///
    /// # Errors
    /// As [`recv`](Receiver::recv).
    ///
    /// # Examples
    ///
    /// ```
    /// use multiproc::{pipe_one_way, Process, Sender};
    ///
    /// fn child(tx: Sender<u64>) { tx.send(&42).unwrap(); }
    ///
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// let (rx, tx) = pipe_one_way::<u64>()?;
    /// let mut p = Process::new(child, tx);
    /// p.start()?;
    /// assert_eq!(rx.recv_async().await?, 42);
    /// // The child exited and the only sender went with it: end of file.
    /// assert_eq!(rx.recv_async().await.unwrap_err().kind(), multiproc::ErrorKind::Closed);
    /// p.join_async().await?;
    /// # Ok::<(), multiproc::Error>(())
    /// # }).unwrap();
    /// ```
    pub async fn recv_async(&self) -> Result<T> {
        self.inner().recv_async().await
    }
}

impl<T> Receiver<T> {
    /// Waits for the next message and returns its bytes without blocking
    /// the executor's thread, as [`Connection::recv_bytes_async`].
    ///
    /// # Errors
    /// As [`recv_async`](Receiver::recv_async).
    pub async fn recv_bytes_async(&self) -> Result<Vec<u8>> {
        self.inner().recv_bytes_async().await
    }
}

impl<T> Sender<T> {
    /// Sends raw bytes without blocking the executor's thread while the
    /// socket is full, as [`Connection::send_bytes_async`].
    ///
    /// # Errors
    /// As [`send_bytes`](Sender::send_bytes).
    ///
    /// # Examples
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// let (rx, tx) = multiproc::pipe_one_way::<()>()?;
    /// let (sent, got) = tokio::join!(tx.send_bytes_async(&[7; 100_000]), rx.recv_bytes_async());
    /// sent?;
    /// assert_eq!(got?.len(), 100_000);
    /// # Ok::<(), multiproc::Error>(())
    /// # }).unwrap();
    /// ```
    pub async fn send_bytes_async(&self, bytes: &[u8]) -> Result<()> {
        self.inner().send_bytes_async(bytes).await
    }
}

impl<T: Serialize> Sender<T> {
    /// Sends a value without blocking the executor's thread while the
    /// socket is full, as [`Connection::send_async`] (with the same cancel
    /// safety).
    ///
    /// # Errors
    /// As [`send`](Sender::send).
    pub async fn send_async(&self, value: &T) -> Result<()> {
        self.inner().send_async(value).await
    }
}
