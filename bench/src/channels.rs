//! Q1 and P1: multiproc's `Queue` and `Pipe` between two processes (the
//! parent is the consumer). The clock starts at the first item or message
//! received, so the producer's start-up is not in the figure.

use std::time::Instant;

use multiproc::{pipe_one_way, Process, Queue, Sender};

use crate::figures::Sample;
use crate::params::Params;

type R<T> = Result<T, String>;

fn e(err: multiproc::Error) -> String {
    err.to_string()
}

/// The producer of Q1: `n` small items, then it exits (flushing its outbox).
pub fn produce((q, n): (Queue<u64>, u64)) {
    for i in 0..n {
        q.put(i).expect("put");
    }
}

/// The sender of P1: `n` messages of 1 MiB as bytes.
pub fn send_mib((tx, n): (Sender<()>, usize)) {
    let buf = vec![7u8; 1 << 20];
    for _ in 0..n {
        tx.send_bytes(&buf).expect("send_bytes");
    }
}

pub fn q1(p: &Params) -> R<Vec<Sample>> {
    let q = Queue::new().map_err(e)?;
    let n = p.q1_items;
    let mut child = Process::new(produce, (q.clone(), n));
    child.start().map_err(e)?;
    let first = q.get().map_err(e)?;
    let t = Instant::now();
    for expect in (first + 1..).take(n.saturating_sub(1) as usize) {
        let v = q.get().map_err(e)?;
        if v != expect {
            return Err(format!("item {v} came where {expect} was due"));
        }
    }
    let secs = t.elapsed().as_secs_f64();
    child.join().map_err(e)?;
    Ok(vec![Sample::ok("Q1", (n - 1) as f64 / secs)
        .with_note(format!("{n} u64 items, order checked, clock from the first item"))])
}

pub fn p1(p: &Params) -> R<Vec<Sample>> {
    let (rx, tx) = pipe_one_way::<()>().map_err(e)?;
    let n = p.p1_msgs;
    let mut child = Process::new(send_mib, (tx, n));
    child.start().map_err(e)?;
    rx.recv_bytes().map_err(e)?;
    let t = Instant::now();
    let mut total = 0;
    for _ in 1..n {
        let m = rx.recv_bytes().map_err(e)?;
        if m.len() != 1 << 20 {
            return Err(format!("a message of {} bytes", m.len()));
        }
        total += m.len();
    }
    let secs = t.elapsed().as_secs_f64();
    child.join().map_err(e)?;
    Ok(vec![Sample::ok("P1", total as f64 / secs / 1e9)
        .with_note(format!("{n} x 1 MiB send_bytes/recv_bytes, clock from the first"))])
}
