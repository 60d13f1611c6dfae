//! procspawn's `Pool`: a Rust anchor for the process workloads. It has no map
//! (W2 is chunked by hand) and every call is its own ipc-channel pair.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use procspawn::{JoinHandle, Pool, SpawnError};
use serde_bytes::ByteBuf;

use super::Runner;
use crate::figures::{Contender, Sample, Status, Workload};
use crate::params::Params;
use crate::tasks::{
    self, boom, checksum, checksum_bytes, getpid, inc, inc_chunk, long_task, noop, secs, spin,
};
use crate::{peak, procfs, stats};

pub struct Procspawn;

type R<T> = Result<T, String>;

fn e(err: SpawnError) -> String {
    err.to_string()
}

fn pool(n: usize) -> R<Pool> {
    Pool::new(n).map_err(e)
}

fn join_all<T>(handles: Vec<JoinHandle<T>>) -> R<Vec<T>>
where
    T: serde::Serialize + serde::de::DeserializeOwned,
{
    handles.into_iter().map(|h| h.join().map_err(e)).collect()
}

/// Runs `f` over `items` keeping at most `window` calls in flight, joining
/// the oldest before submitting the next. procspawn's pool needs this for
/// large arguments: a finished call blocks its monitor thread until joined,
/// and `spawn` blocks writing arguments that no idle worker will read, so
/// submitting everything first deadlocks.
fn windowed<A, T>(pool: &Pool, items: impl IntoIterator<Item = A>, f: fn(A) -> T) -> R<Vec<T>>
where
    A: serde::Serialize + serde::de::DeserializeOwned,
    T: serde::Serialize + serde::de::DeserializeOwned + Send + 'static,
{
    let window = pool.size();
    let mut pending: std::collections::VecDeque<JoinHandle<T>> = std::collections::VecDeque::new();
    let mut out = Vec::new();
    for item in items {
        if pending.len() == window {
            if let Some(h) = pending.pop_front() {
                out.push(h.join().map_err(e)?);
            }
        }
        pending.push_back(pool.spawn(item, f));
    }
    for h in pending {
        out.push(h.join().map_err(e)?);
    }
    Ok(out)
}

/// One call in flight per worker, for W2 and W8's large arguments.
const WINDOW_NOTE: &str =
    "one call in flight per worker (more deadlocks procspawn's pool with large arguments)";

/// Runs a few calls so that every worker has served one before timing.
fn warm(pool: &Pool, n: u64) -> R<()> {
    join_all((0..8 * n).map(|i| pool.spawn(i, inc)).collect()).map(drop)
}

fn children() -> BTreeSet<u32> {
    procfs::children(std::process::id()).into_iter().collect()
}

impl Runner for Procspawn {
    fn contender(&self) -> Contender {
        Contender::Procspawn
    }

    fn applies(&self, w: Workload) -> Result<(), &'static str> {
        if w.on_threads() {
            return Err("a process-pool library");
        }
        if w.on_channels() {
            return Err("no queue or pipe of its own");
        }
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
            Workload::T1 | Workload::T3 | Workload::Q1 | Workload::P1 => {
                Err("not applicable".into())
            }
        }
    }
}

fn w1(p: &Params) -> R<Vec<Sample>> {
    let pool = pool(2)?;
    warm(&pool, 2)?;
    let mut failed = None;
    let (median, p99) = stats::latencies(p.w1_calls, |i| {
        if let Err(err) = pool.spawn(i, inc).join() {
            failed = Some(e(err));
        }
    });
    match failed {
        Some(err) => Err(err),
        None => Ok(vec![Sample::ok("W1", median), Sample::ok("W1.p99", p99)]),
    }
}

/// `x + 1` over `0..n`, in chunks of `cs` sent as one call each.
fn map_chunked(pool: &Pool, n: u64, cs: usize) -> R<()> {
    let chunks = (0..n).step_by(cs).map(|start| (start..n.min(start + cs as u64)).collect());
    let out: Vec<u64> = windowed(pool, chunks, inc_chunk)?.into_iter().flatten().collect();
    if out.len() as u64 != n || out.last() != Some(&n) {
        return Err("hand-chunked map returned wrong items".into());
    }
    Ok(())
}

/// W2's map for the peak-RSS child, chunked as Python's default would.
pub fn map_default(n: u64) -> R<()> {
    let pool = pool(2)?;
    map_chunked(&pool, n, n.div_ceil(8) as usize)
}

fn w2(p: &Params) -> R<Vec<Sample>> {
    let n = p.w2_items;
    let pool = pool(2)?;
    warm(&pool, 2)?;
    let mut best = (0.0, 0);
    for &cs in &p.w2_chunksizes {
        let t = Instant::now();
        map_chunked(&pool, n, cs)?;
        let rate = n as f64 / secs(t);
        if rate > best.0 {
            best = (rate, cs);
        }
    }
    drop(pool);
    let na = "no map: chunked by hand only (see W2.best)";
    Ok(vec![
        Sample::not_ok("W2.default", Status::NotApplicable, na),
        Sample::ok("W2.best", best.0)
            .with_note(format!("hand-chunked, chunksize {}; {WINDOW_NOTE}", best.1)),
        peak::measure(Contender::Procspawn, p),
    ])
}

fn w3(p: &Params) -> R<Vec<Sample>> {
    let pool = pool(2)?;
    warm(&pool, 2)?;
    let (n, wave) = (p.w3_tasks, p.procspawn_wave as u64);
    let fds_before = procfs::open_fds();
    let mut fds_per_task = 0.0;
    let t = Instant::now();
    let mut sum = 0;
    for start in (0..n).step_by(wave as usize) {
        let handles: Vec<_> = (start..n.min(start + wave)).map(|i| pool.spawn(i, inc)).collect();
        if start == 0 {
            fds_per_task = (procfs::open_fds() - fds_before) as f64 / handles.len() as f64;
        }
        sum += join_all(handles)?.into_iter().sum::<u64>();
    }
    let rate = n as f64 / secs(t);
    if sum != n * (n + 1) / 2 {
        return Err("wrong sum".into());
    }
    let note = format!(
        "in waves of {wave}: a pending call holds ~{fds_per_task:.1} file descriptors, \
         so {n} at once would pass the open-files limit"
    );
    Ok(vec![Sample::ok("W3", rate).with_note(note)])
}

fn w4(p: &Params) -> R<Vec<Sample>> {
    let ms = super::median_ms(p.w4_samples, || {
        let t = Instant::now();
        let pool = pool(4)?;
        pool.spawn(1, inc).join().map_err(e)?;
        let s = secs(t);
        pool.kill();
        Ok(s)
    })?;
    Ok(vec![Sample::ok("W4", ms)])
}

fn w5() -> R<Vec<Sample>> {
    let before = children();
    let pool = pool(1)?;
    pool.spawn(1, inc).join().map_err(e)?;
    std::thread::sleep(Duration::from_millis(300));
    let new: Vec<u32> = children().difference(&before).copied().collect();
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
        join_all((0..p.w6_tasks).map(|_| pool.spawn(iters, spin)).collect())?;
        times.push(secs(t));
    }
    let note = format!("1 worker {:.2} s, 2 workers {:.2} s", times[0], times[1]);
    Ok(vec![Sample::ok("W6", times[0] / times[1]).with_note(note)])
}

fn w7(p: &Params) -> R<Vec<Sample>> {
    let n = p.w7_tasks as u64;
    let t = Instant::now();
    let pool = pool(5)?;
    join_all((0..n).map(|i| pool.spawn(i, inc)).collect())?;
    pool.shutdown();
    let t_pool = secs(t);
    drop(pool);

    let t = Instant::now();
    let handles: Vec<_> = (0..n).map(|i| procspawn::spawn(i, noop)).collect();
    join_all(handles)?;
    let t_procs = secs(t);
    Ok(vec![
        Sample::ok("W7.pool", t_pool).with_note("Pool(5): spawn per item, join all, shutdown"),
        Sample::ok("W7.procs", t_procs).with_note("procspawn::spawn per task, then join all"),
        Sample::ok("W7.ratio", t_procs / t_pool),
    ])
}

fn w8(p: &Params) -> R<Vec<Sample>> {
    let bufs = tasks::buffers(p.w8_buffers, p.w8_buf_bytes);
    let expected: Vec<u64> = bufs.iter().map(|b| checksum(b.clone())).collect();
    let blobs: Vec<ByteBuf> = bufs.iter().cloned().map(ByteBuf::from).collect();
    let pool = pool(2)?;
    warm(&pool, 2)?;
    let t = Instant::now();
    let sums = windowed(&pool, bufs, checksum)?;
    let s = secs(t);
    let t = Instant::now();
    let blob_sums = windowed(&pool, blobs, checksum_bytes)?;
    let s_blobs = secs(t);
    if sums != expected || blob_sums != expected {
        return Err("wrong checksums".into());
    }
    let gb = (p.w8_buffers * p.w8_buf_bytes) as f64 / 1e9;
    Ok(vec![
        Sample::ok("W8", gb / s).with_note(format!("Vec<u8> arguments; {WINDOW_NOTE}")),
        Sample::ok("W8.bytebuf", gb / s_blobs),
    ])
}

fn w9(p: &Params) -> R<Vec<Sample>> {
    // A panic ends the worker process; its stderr would print every panic.
    let pool = Pool::builder(2).disable_stderr().build().map_err(e)?;
    warm(&pool, 2)?;
    let before = children();
    let n = p.w9_procspawn_tasks as u64;
    let t = Instant::now();
    let handles: Vec<_> = (0..n).map(|i| pool.spawn(i, boom)).collect();
    let errors: Vec<SpawnError> = handles.into_iter().filter_map(|h| h.join().err()).collect();
    let panicked = errors.iter().filter(|err| err.is_panic()).count();
    let other = errors.iter().find(|err| !err.is_panic());
    let per_task = secs(t) / n as f64 * 1e6;
    std::thread::sleep(Duration::from_millis(100));
    let after = children();
    let survived = before == after && errors.len() as u64 == n;
    let note = format!(
        "{n} tasks only (each panic ends its worker, which the pool restarts); \
         {panicked}/{n} failed as panics, {} with other errors{}; workers {before:?} -> {after:?}",
        errors.len() - panicked,
        other.map(|e| format!(" (\"{e}\")")).unwrap_or_default()
    );
    Ok(vec![
        Sample::ok("W9", per_task).with_note(note),
        Sample::ok("W9.survived", if survived { 1.0 } else { 0.0 }),
    ])
}

fn w10(p: &Params) -> R<Vec<Sample>> {
    let bound = Duration::from_secs_f64(p.w10_timeout_s);
    let base = format!("{}/procspawn-{}", p.tmpdir, std::process::id());
    let (one, two) = (format!("{base}-1"), format!("{base}-2"));
    let _ = (std::fs::remove_file(&one), std::fs::remove_file(&two));
    let pool = pool(2)?;
    let result = (|| {
        let mut victim_task = pool.spawn(one.clone(), long_task);
        let victim = tasks::wait_for_pid_file(&one, Duration::from_secs(10))?;
        let _busy_task = pool.spawn(two.clone(), long_task);
        let busy = tasks::wait_for_pid_file(&two, Duration::from_secs(10))?;
        let t0 = Instant::now();
        // SAFETY: SIGKILL to a worker of the pool above, busy with our task.
        unsafe { libc::kill(victim as i32, libc::SIGKILL) };
        let mut probe = pool.spawn(0, getpid);
        let failed = victim_task.join_timeout(bound);
        let fail_ms = secs(t0) * 1000.0;
        let served = probe.join_timeout(bound);
        let ready_ms = secs(t0) * 1000.0;
        Ok::<_, String>((failed, fail_ms, served, ready_ms, victim, busy))
    })();
    pool.kill();
    let (failed, fail_ms, served, ready_ms, victim, busy) = result?;
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
    let fail = Sample::ok("W10.fail", fail_ms).with_note(err.to_string());
    match served {
        Ok(pid) if pid != victim && pid != busy => {
            let note = format!("a new task ran on pid {pid} (victim {victim}, busy {busy})");
            Ok(vec![Sample::ok("W10", ready_ms).with_note(note), fail])
        }
        Ok(pid) => Err(format!("the probe ran on pid {pid}, not on a replacement")),
        Err(err) => Ok(vec![
            Sample::not_ok("W10", Status::Failed, format!("no replacement ran a task: {err}")),
            fail,
        ]),
    }
}
