//! `Queue::get_async` and `Queue::put_async`: the queue's own non-blocking
//! get and put, retried when the reactor says they may succeed.

use std::future::poll_fn;
use std::task::Poll;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{Ready, Wait};
use crate::error::{ErrorKind, Result};
use crate::queue::{PutError, Queue};

impl<T: DeserializeOwned> Queue<T> {
    /// Takes the next item, as [`get`](Queue::get), without blocking the
    /// executor's thread: usable from tokio or any other executor.
    ///
    /// *Cancel safety*: an item is taken only in the poll that returns it,
    /// so dropping the future (a timeout, a `select!` that went the other
    /// way) loses no item; it stays for the next getter.
    ///
    /// A queue has no single peer whose death could end the wait: like
    /// `get`, this waits until an item comes or the handle is
    /// [closed](Queue::close) here; bound it with your executor's timeout.
    ///
    /// # Errors
    /// As [`get`](Queue::get).
    ///
    /// # Examples
    ///
    /// ```
    /// use multiproc::{Process, Queue};
    ///
    /// fn produce(q: Queue<String>) { q.put("from the child".into()).unwrap(); }
    ///
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// let q = Queue::new()?;
    /// let mut p = Process::new(produce, q.clone());
    /// p.start()?;
    /// assert_eq!(q.get_async().await?, "from the child");
    /// p.join_async().await?;
    /// # Ok::<(), multiproc::Error>(())
    /// # }).unwrap();
    /// ```
    pub async fn get_async(&self) -> Result<T> {
        let mut wait = Wait::new();
        let mut waiting = None;
        poll_fn(|cx| loop {
            if waiting.is_some() {
                self.drain_wake();
            }
            match self.get_nowait() {
                Err(e) if matches!(e.kind(), ErrorKind::Empty | ErrorKind::Timeout) => {}
                done => {
                    if done.is_ok() {
                        self.pass_wake_on();
                    }
                    return Poll::Ready(done);
                }
            }
            // Counted as waiting first, then one more look: a put that
            // committed before it counted us is seen by that look, one
            // after it writes the wake-up descriptor.
            if waiting.is_none() {
                waiting = Some(self.async_waiting());
                continue;
            }
            return match wait.fd(cx, self.wake_fd(), Ready::Read) {
                Ok(()) => Poll::Pending,
                Err(e) => Poll::Ready(Err(e)),
            };
        })
        .await
    }
}

impl<T: Serialize> Queue<T> {
    /// Puts `value`, as [`put`](Queue::put), without blocking the
    /// executor's thread while a bounded queue is full. An unbounded queue
    /// never waits, so this completes in its first poll.
    ///
    /// A full bounded queue is waited on by retrying (its free places are a
    /// counter in shared memory): a place that frees up is seen within
    /// 2 ms at worst (see the `aio` module).
    ///
    /// *Cancel safety*: the value is put only in the poll that returns
    /// `Ok`; dropping the future before then drops the value, unput.
    ///
    /// # Errors
    /// As [`put`](Queue::put); the value comes back.
    ///
    /// # Examples
    ///
    /// ```
    /// use multiproc::Queue;
    ///
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// let q = Queue::bounded(1)?;
    /// q.put_async(1u32).await.unwrap();
    /// let (put, got) = tokio::join!(q.put_async(2), async { q.get_async().await });
    /// put.unwrap();
    /// assert_eq!(got?, 1);
    /// assert_eq!(q.get_async().await?, 2);
    /// # Ok::<(), multiproc::Error>(())
    /// # }).unwrap();
    /// ```
    pub async fn put_async(&self, value: T) -> std::result::Result<(), PutError<T>> {
        let mut wait = Wait::new();
        let mut value = Some(value);
        poll_fn(|cx| {
            let v = value.take().expect("polled after completion");
            // Never waits for the ring's mutex: a stopped holder does
            // not block the executor's thread, the retry comes back later.
            match self.put_now(v) {
                Err(PutError::Full(v)) => {
                    if let Err(e) = wait.retry(cx) {
                        return Poll::Ready(Err(PutError::Failed(v, e)));
                    }
                    value = Some(v);
                    Poll::Pending
                }
                done => Poll::Ready(done),
            }
        })
        .await
    }
}
