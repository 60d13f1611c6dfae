//! multiproc's `Pool` (and `ThreadPool` for T1/T3): the library under test.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use multiproc::{active_children, Bytes, Pool, Process, ThreadPool};

use super::Runner;
use crate::figures::{Contender, Sample, Status, Workload};
use crate::params::Params;
use crate::tasks::{self, boom, checksum, checksum_blob, getpid, inc, long_task, noop, secs, spin};
use crate::{peak, procfs, stats};

pub struct Multiproc;

type R<T> = Result<T, String>;

fn e(err: multiproc::Error) -> String {
    err.to_string()
}

fn pool(n: usize) -> R<Pool> {
    Pool::new(n).map_err(e)
}

/// Runs a few tasks and waits until all `n` workers are up, before timing
/// (a busy machine can take longer to start a worker than to run the tasks).
fn warm(pool: &Pool, n: u64) -> R<()> {
    pool.chunksize(1).map(inc, 0..8 * n).map_err(e)?;
    let end = Instant::now() + Duration::from_secs(10);
    while (worker_pids().len() as u64) < n {
        if Instant::now() > end {
            return Err(format!("fewer than {n} workers up after 10 s"));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(())
}

fn worker_pids() -> BTreeSet<u32> {
    active_children().into_iter().map(|c| c.pid).collect()
}

impl Runner for Multiproc {
    fn contender(&self) -> Contender {
        Contender::Multiproc
    }

    fn applies(&self, _w: Workload) -> Result<(), &'static str> {
        Ok(())
    }

    fn run(&mut self, w: Workload, p: &Params) -> R<Vec<Sample>> {
        match w {
            Workload::W1 => w1(p),
            Workload::W2 => w2(p),
            Workload::W3 => w3(p),
            Workload::W4 => w4(p),
            Workload::W5 => w5(),
            Workload::W6 => w6(p),
            Workload::W7 => w7(p),
            Workload::W8 => w8(p),
            Workload::W9 => w9(p),
            Workload::W10 => w10(p),
            Workload::T1 => t1(p),
            Workload::T3 => t3(p),
            Workload::Q1 => crate::channels::q1(p),
            Workload::P1 => crate::channels::p1(p),
        }
    }
}

fn w1(p: &Params) -> R<Vec<Sample>> {
    let pool = pool(2)?;
    warm(&pool, 2)?;
    let mut failed = None;
    let (median, p99) = stats::latencies(p.w1_calls, |i| {
        if let Err(err) = pool.apply(inc, i) {
            failed = Some(e(err));
        }
    });
    if let Some(err) = failed {
        return Err(err);
    }
    Ok(vec![Sample::ok("W1", median), Sample::ok("W1.p99", p99)])
}

fn t1(p: &Params) -> R<Vec<Sample>> {
    let pool = ThreadPool::new(2).map_err(e)?;
    pool.map(|x: u64| x + 1, 0..16).map_err(e)?;
    let (median, p99) = stats::latencies(p.t1_calls, |i| {
        let _ = pool.apply(|x: u64| x + 1, i);
    });
    Ok(vec![Sample::ok("T1", median), Sample::ok("T1.p99", p99)])
}

/// W2's default map in the current process (also run by the peak-RSS child).
pub fn map_default(n: u64) -> R<()> {
    let pool = pool(2)?;
    let out = pool.map(inc, 0..n).map_err(e)?;
    check_map(&out, n)
}

fn check_map(out: &[u64], n: u64) -> R<()> {
    if out.len() as u64 != n || out.last() != Some(&n) {
        return Err(format!("map returned {} items, wrong", out.len()));
    }
    Ok(())
}

fn w2(p: &Params) -> R<Vec<Sample>> {
    let n = p.w2_items;
    let pool = pool(2)?;
    warm(&pool, 2)?;
    let t = Instant::now();
    let out = pool.map(inc, 0..n).map_err(e)?;
    let default = n as f64 / secs(t);
    check_map(&out, n)?;
    drop(out);
    // The same map reporting to a progress hook: its cost is the ratio of
    // W2.progress to W2.default.
    let seen = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let hook = {
        let seen = seen.clone();
        move |done: u64, _: Option<u64>| seen.store(done, std::sync::atomic::Ordering::Relaxed)
    };
    let t = Instant::now();
    let out = pool.progress(hook).map(inc, 0..n).map_err(e)?;
    let with_progress = n as f64 / secs(t);
    check_map(&out, n)?;
    if seen.load(std::sync::atomic::Ordering::Relaxed) != n {
        return Err("the progress hook did not see every item".into());
    }
    drop(out);
    let mut best = (default, "default".to_string());
    for &cs in &p.w2_chunksizes {
        let t = Instant::now();
        let out = pool.chunksize(cs).map(inc, 0..n).map_err(e)?;
        let rate = n as f64 / secs(t);
        check_map(&out, n)?;
        if rate > best.0 {
            best = (rate, cs.to_string());
        }
    }
    drop(pool);
    Ok(vec![
        Sample::ok("W2.default", default),
        Sample::ok("W2.progress", with_progress),
        Sample::ok("W2.best", best.0).with_note(format!("chunksize {}", best.1)),
        peak::measure(Contender::Multiproc, p),
    ])
}

fn w3(p: &Params) -> R<Vec<Sample>> {
    let pool = pool(2)?;
    warm(&pool, 2)?;
    let n = p.w3_tasks;
    let t = Instant::now();
    let results: Vec<_> = (0..n).map(|i| pool.apply_async(inc, i)).collect();
    let mut sum = 0;
    for r in results {
        sum += r.get().map_err(e)?;
    }
    let rate = n as f64 / secs(t);
    if sum != n * (n + 1) / 2 {
        return Err("wrong sum".into());
    }
    Ok(vec![Sample::ok("W3", rate)])
}

fn t3(p: &Params) -> R<Vec<Sample>> {
    let pool = ThreadPool::new(2).map_err(e)?;
    pool.map(|x: u64| x + 1, 0..16).map_err(e)?;
    let n = p.t3_tasks;
    let t = Instant::now();
    let results: Vec<_> = (0..n).map(|i| pool.apply_async(|x: u64| x + 1, i)).collect();
    let mut sum = 0;
    for r in results {
        sum += r.get().map_err(e)?;
    }
    let rate = n as f64 / secs(t);
    if sum != n * (n + 1) / 2 {
        return Err("wrong sum".into());
    }
    Ok(vec![Sample::ok("T3", rate)])
}

fn w4(p: &Params) -> R<Vec<Sample>> {
    let ms = super::median_ms(p.w4_samples, || {
        let t = Instant::now();
        let pool = pool(4)?;
        pool.apply(inc, 1).map_err(e)?;
        let s = secs(t);
        drop(pool);
        Ok(s)
    })?;
    Ok(vec![Sample::ok("W4", ms)])
}

fn w5() -> R<Vec<Sample>> {
    let before = worker_pids();
    let pool = pool(1)?;
    pool.apply(inc, 1).map_err(e)?;
    std::thread::sleep(Duration::from_millis(300));
    let new: Vec<u32> = worker_pids().difference(&before).copied().collect();
    let [pid] = new[..] else {
        return Err(format!("expected 1 new worker, found {new:?}"));
    };
    let (rss, uss) = procfs::rss_uss_kib(pid)?;
    let note = "a worker is this bench binary re-executed";
    Ok(vec![
        Sample::ok("W5.rss", rss as f64 / 1024.0).with_note(note),
        Sample::ok("W5.uss", uss as f64 / 1024.0),
    ])
}

fn w6(p: &Params) -> R<Vec<Sample>> {
    let iters = tasks::calibrate_spin(p.w6_task_secs);
    let mut times = Vec::new();
    for workers in [1, 2] {
        let pool = pool(workers)?;
        warm(&pool, workers as u64)?;
        let t = Instant::now();
        pool.chunksize(1).map(spin, vec![iters; p.w6_tasks]).map_err(e)?;
        times.push(secs(t));
    }
    let note = format!("1 worker {:.2} s, 2 workers {:.2} s", times[0], times[1]);
    Ok(vec![Sample::ok("W6", times[0] / times[1]).with_note(note)])
}

fn w7(p: &Params) -> R<Vec<Sample>> {
    let n = p.w7_tasks as u64;
    let t = Instant::now();
    let pool = pool(5)?;
    pool.map(inc, 0..n).map_err(e)?;
    pool.close();
    pool.join().map_err(e)?;
    let t_pool = secs(t);
    drop(pool);

    let t = Instant::now();
    let mut procs: Vec<Process> = (0..n).map(|i| Process::new(noop, i)).collect();
    for proc in &mut procs {
        proc.start().map_err(e)?;
    }
    for proc in &mut procs {
        proc.join().map_err(e)?;
    }
    let t_procs = secs(t);
    let bad = procs.iter().map(Process::exitcode).filter(|&c| c != Some(0)).count();
    if bad > 0 {
        return Err(format!("{bad} processes did not exit with 0"));
    }
    Ok(vec![
        Sample::ok("W7.pool", t_pool),
        Sample::ok("W7.procs", t_procs).with_note("started all, then joined all"),
        Sample::ok("W7.ratio", t_procs / t_pool),
    ])
}

fn w8(p: &Params) -> R<Vec<Sample>> {
    let bufs = tasks::buffers(p.w8_buffers, p.w8_buf_bytes);
    let expected: Vec<u64> = bufs.iter().map(|b| checksum(b.clone())).collect();
    let blobs: Vec<Bytes> = bufs.iter().cloned().map(Bytes::from).collect();
    // Each pass on a pool of its own, started and warmed alike: the second
    // pass on one pool would find the first's buffers already faulted in,
    // in the parent and in the workers (Python's single pass starts cold).
    let pool_vec = pool(2)?;
    warm(&pool_vec, 2)?;
    let t = Instant::now();
    let sums = pool_vec.map(checksum, bufs).map_err(e)?;
    let s = secs(t);
    drop(pool_vec);
    let pool_blobs = pool(2)?;
    warm(&pool_blobs, 2)?;
    let t = Instant::now();
    let blob_sums = pool_blobs.map(checksum_blob, blobs).map_err(e)?;
    let s_blobs = secs(t);
    if sums != expected || blob_sums != expected {
        return Err("wrong checksums".into());
    }
    let gb = (p.w8_buffers * p.w8_buf_bytes) as f64 / 1e9;
    Ok(vec![
        Sample::ok("W8", gb / s).with_note("Vec<u8> arguments, default chunksize"),
        Sample::ok("W8.bytebuf", gb / s_blobs)
            .with_note("multiproc::Bytes arguments, a fresh pool"),
    ])
}

fn w9(p: &Params) -> R<Vec<Sample>> {
    let pool = pool(2)?;
    warm(&pool, 2)?;
    let before = worker_pids();
    let n = p.w9_tasks as u64;
    let t = Instant::now();
    let results: Vec<_> = (0..n).map(|i| pool.apply_async(boom, i)).collect();
    let panicked = results
        .into_iter()
        .map(|r| r.get())
        .filter(|r| r.as_ref().is_err_and(|err| err.is_panic()))
        .count();
    let per_task = secs(t) / n as f64 * 1e6;
    let after = worker_pids();
    let survived = before == after && before.len() == 2 && panicked as u64 == n;
    let note = format!("{panicked}/{n} failed as panics; workers {before:?} -> {after:?}");
    Ok(vec![
        Sample::ok("W9", per_task).with_note(note),
        Sample::ok("W9.survived", if survived { 1.0 } else { 0.0 }),
    ])
}

fn w10(p: &Params) -> R<Vec<Sample>> {
    let bound = Duration::from_secs_f64(p.w10_timeout_s);
    let base = format!("{}/multiproc-{}", p.tmpdir, std::process::id());
    let (one, two) = (format!("{base}-1"), format!("{base}-2"));
    let _ = (std::fs::remove_file(&one), std::fs::remove_file(&two));
    let pool = pool(2)?;
    let victim_task = pool.apply_async(long_task, one.clone());
    let victim = tasks::wait_for_pid_file(&one, Duration::from_secs(10))?;
    let _busy_task = pool.apply_async(long_task, two.clone());
    let busy = tasks::wait_for_pid_file(&two, Duration::from_secs(10))?;

    let t0 = Instant::now();
    // SAFETY: SIGKILL to a live worker of the pool above, which is not reaped
    // while its task is pending.
    unsafe { libc::kill(victim as i32, libc::SIGKILL) };
    let probe = pool.apply_async(getpid, 0);
    let failed = victim_task.get_timeout(bound);
    let fail_ms = secs(t0) * 1000.0;
    let served = probe.get_timeout(bound);
    let ready_ms = secs(t0) * 1000.0;
    let workers_then = worker_pids();
    drop(pool);

    let err = match failed {
        Ok(_) => return Err("the killed task returned a value".into()),
        Err(err) if err.is_timeout() => {
            let note = format!("the killed task's result did not fail within {bound:?}");
            return Ok(vec![
                Sample::not_ok("W10", Status::Hangs, &note),
                Sample::not_ok("W10.fail", Status::Hangs, note),
            ]);
        }
        Err(err) => err,
    };
    let fail = Sample::ok("W10.fail", fail_ms).with_note(format!("{:?}", err.kind()));
    match served {
        Ok(pid) if pid != victim && pid != busy => {
            let note = format!("a new task ran on pid {pid} (victim {victim}, busy {busy})");
            Ok(vec![Sample::ok("W10", ready_ms).with_note(note), fail])
        }
        Ok(pid) => Err(format!("the probe ran on pid {pid}, not on a replacement")),
        Err(err) => Ok(vec![
            Sample::not_ok(
                "W10",
                Status::Failed,
                format!(
                    "a task submitted after the kill did not run within {bound:?} ({:?}); \
                     workers then: {workers_then:?} (victim {victim}, busy {busy})",
                    err.kind()
                ),
            ),
            fail,
        ]),
    }
}
