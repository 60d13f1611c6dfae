//! A quick timing of the process-shared primitives: uncontended `Lock`
//! acquire+release, a `Queue` round trip between two processes, `Queue`
//! throughput of small items between two processes, and `Pipe` bandwidth for
//! 1 MiB messages. The bench harness holds the full comparisons.

use std::time::Instant;

use multiproc::{pipe_one_way, Lock, Process, Queue, Sender};

fn echo((inbox, outbox): (Queue<u64>, Queue<u64>)) {
    while let Ok(v) = inbox.get() {
        if v == u64::MAX {
            return;
        }
        outbox.put(v).unwrap();
    }
}

fn produce((q, n): (Queue<u64>, u64)) {
    for i in 0..n {
        q.put(i).unwrap();
    }
}

fn send_mib((tx, n): (Sender<()>, usize)) {
    let buf = vec![7u8; 1 << 20];
    for _ in 0..n {
        tx.send_bytes(&buf).unwrap();
    }
}

fn main() -> multiproc::Result<()> {
    let lock = Lock::new()?;
    let n = 1_000_000;
    let t = Instant::now();
    for _ in 0..n {
        drop(lock.acquire()?);
    }
    println!(
        "Lock acquire+release, uncontended: {:.1} ns",
        t.elapsed().as_nanos() as f64 / n as f64
    );

    let (inbox, outbox) = (Queue::new()?, Queue::new()?);
    let mut p = Process::new(echo, (inbox.clone(), outbox.clone()));
    p.start()?;
    for i in 0..1000 {
        inbox.put(i).unwrap();
        outbox.get()?;
    }
    let rounds = 20_000;
    let t = Instant::now();
    for i in 0..rounds {
        inbox.put(i).unwrap();
        outbox.get()?;
    }
    println!(
        "Queue round trip between two processes: {:.1} us",
        t.elapsed().as_secs_f64() * 1e6 / rounds as f64
    );
    inbox.put(u64::MAX).unwrap();
    p.join()?;

    let q = Queue::new()?;
    let items = 1_000_000u64;
    let mut p = Process::new(produce, (q.clone(), items));
    let t = Instant::now();
    p.start()?;
    for _ in 0..items {
        q.get()?;
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "Queue throughput, small items, 2 processes: {:.2} M items/s",
        items as f64 / secs / 1e6
    );
    p.join()?;

    let (rx, tx) = pipe_one_way::<()>()?;
    let msgs = 2000;
    let mut p = Process::new(send_mib, (tx, msgs));
    let t = Instant::now();
    p.start()?;
    let mut total = 0;
    for _ in 0..msgs {
        total += rx.recv_bytes()?.len();
    }
    let secs = t.elapsed().as_secs_f64();
    println!("Pipe, 1 MiB messages: {:.2} GB/s", total as f64 / secs / 1e9);
    p.join()
}
