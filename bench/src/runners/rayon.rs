//! rayon's `ThreadPool`: the thread anchor for T1/T3 (a spawn and a channel
//! per call, as an `AsyncResult` is), and W2/W6's shape without processes.

use std::sync::mpsc;
use std::time::Instant;

use rayon::prelude::*;
use rayon::ThreadPool;

use super::Runner;
use crate::figures::{Contender, Sample, Workload};
use crate::params::Params;
use crate::tasks::{self, secs, spin};
use crate::{peak, stats};

pub struct Rayon;

type R<T> = Result<T, String>;

fn pool(n: usize) -> R<ThreadPool> {
    rayon::ThreadPoolBuilder::new().num_threads(n).build().map_err(|e| e.to_string())
}

/// Runs `x + 1` on the pool; the receiver gets the result.
fn submit(pool: &ThreadPool, x: u64) -> mpsc::Receiver<u64> {
    let (tx, rx) = mpsc::sync_channel(1);
    pool.spawn(move || {
        let _ = tx.send(x + 1);
    });
    rx
}

impl Runner for Rayon {
    fn contender(&self) -> Contender {
        Contender::Rayon
    }

    fn applies(&self, w: Workload) -> Result<(), &'static str> {
        match w {
            Workload::W2 | Workload::W6 | Workload::T1 | Workload::T3 => Ok(()),
            _ => Err("threads: no processes (see T1/T3)"),
        }
    }

    fn run(&mut self, w: Workload, p: &Params) -> R<Vec<Sample>> {
        match w {
            Workload::W2 => w2(p),
            Workload::W6 => w6(p),
            Workload::T1 => t1(p),
            Workload::T3 => t3(p),
            _ => Err("not applicable".into()),
        }
    }
}

/// W2's map on 2 threads (also run by the peak-RSS child).
pub fn map_default(n: u64) -> R<()> {
    let pool = pool(2)?;
    let out: Vec<u64> =
        pool.install(|| (0..n as usize).into_par_iter().map(|x| x as u64 + 1).collect());
    check(&out, n)
}

fn check(out: &[u64], n: u64) -> R<()> {
    if out.len() as u64 != n || out.last() != Some(&n) {
        return Err("map returned wrong items".into());
    }
    Ok(())
}

fn w2(p: &Params) -> R<Vec<Sample>> {
    let n = p.w2_items;
    let pool = pool(2)?;
    let t = Instant::now();
    let out: Vec<u64> =
        pool.install(|| (0..n as usize).into_par_iter().map(|x| x as u64 + 1).collect());
    let default = n as f64 / secs(t);
    check(&out, n)?;
    let mut best = (default, "rayon's own splitting".to_string());
    for &cs in &p.w2_chunksizes {
        let t = Instant::now();
        let out: Vec<u64> = pool.install(|| {
            (0..n as usize).into_par_iter().with_min_len(cs).map(|x| x as u64 + 1).collect()
        });
        let rate = n as f64 / secs(t);
        check(&out, n)?;
        if rate > best.0 {
            best = (rate, format!("with_min_len({cs})"));
        }
    }
    let note = "threads, shown for scale (not an anchor for process pools)";
    Ok(vec![
        Sample::ok("W2.default", default).with_note(note),
        Sample::ok("W2.best", best.0).with_note(best.1),
        peak::measure(Contender::Rayon, p),
    ])
}

fn w6(p: &Params) -> R<Vec<Sample>> {
    let iters = tasks::calibrate_spin(p.w6_task_secs);
    let mut times = Vec::new();
    for threads in [1, 2] {
        let pool = pool(threads)?;
        let t = Instant::now();
        let _: u64 = pool
            .install(|| (0..p.w6_tasks).into_par_iter().with_max_len(1).map(|_| spin(iters)).sum());
        times.push(secs(t));
    }
    let note = format!("1 thread {:.2} s, 2 threads {:.2} s", times[0], times[1]);
    Ok(vec![Sample::ok("W6", times[0] / times[1]).with_note(note)])
}

fn t1(p: &Params) -> R<Vec<Sample>> {
    let pool = pool(2)?;
    let (median, p99) = stats::latencies(p.t1_calls, |i| {
        let _ = submit(&pool, i).recv();
    });
    let note = "pool.spawn + a sync_channel(1) per call";
    Ok(vec![Sample::ok("T1", median).with_note(note), Sample::ok("T1.p99", p99)])
}

fn t3(p: &Params) -> R<Vec<Sample>> {
    let pool = pool(2)?;
    let n = p.t3_tasks;
    let t = Instant::now();
    let receivers: Vec<_> = (0..n).map(|i| submit(&pool, i)).collect();
    let sum: u64 = receivers.into_iter().map(|r| r.recv().unwrap_or(0)).sum();
    let rate = n as f64 / secs(t);
    if sum != n * (n + 1) / 2 {
        return Err("wrong sum".into());
    }
    Ok(vec![Sample::ok("T3", rate).with_note("pool.spawn + a sync_channel(1) per task")])
}
