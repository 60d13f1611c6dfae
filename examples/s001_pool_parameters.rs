//! Seed 001, Pool parameters: the size and the initializer, `apply` against
//! `apply_async` over 10000 tasks, callbacks, and `map` returning in order.
//!
//! `cargo run --release --example s001_pool_parameters [-- S001.2 ...]`

#[macro_use]
#[path = "common/mod.rs"]
mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use common::Context;
use multiproc::{cpu_count, current_process, Pool};

pub const SCENARIOS: &[common::Scenario] = &[
    ("S001.1", "Pool(processes, initializer, initargs): each worker runs the initializer once before its tasks; the default size is cpu_count()", s001_1),
    ("S001.2", "apply of 10000 tasks one by one, timed (printing only the first and last results)", s001_2),
    ("S001.3", "apply_async with a callback that post-processes each result in the parent", s001_3),
    ("S001.4", "apply_async of 10000 tasks, close/join, then get() every result, timed against 10000 applies", s001_4),
    ("S001.5", "map blocks until all 100 results are in and returns them in input order; the pool stays usable after it", s001_5),
];

fn main() -> std::process::ExitCode {
    common::run(SCENARIOS)
}

/// The seed's `func`: `num + 1`.
fn func(num: u32) -> u32 {
    num + 1
}

/// What the initializer left in this worker: Python's `initargs` as a tuple.
static INIT: OnceLock<(String, u32)> = OnceLock::new();
/// How many times the initializer ran in this process.
static INIT_RUNS: AtomicUsize = AtomicUsize::new(0);

fn initializer(prefix: String, scale: u32) {
    INIT_RUNS.fetch_add(1, Ordering::SeqCst);
    let me = current_process();
    println!("initializer({prefix:?}, {scale}) in {} (pid {})", me.name, me.pid);
    let _ = INIT.set((prefix, scale));
}

/// A task that uses what the initializer set, and says where it ran.
fn scaled(i: u32) -> (String, u32, usize) {
    let (prefix, scale) = INIT.get().expect("the initializer ran first");
    (format!("{prefix}{}", i * scale), std::process::id(), INIT_RUNS.load(Ordering::SeqCst))
}

pub fn s001_1() -> Result<(), String> {
    let default = Pool::builder().build().context("Pool::builder().build()")?;
    println!("cpu_count() = {}; Pool() has {} workers", cpu_count(), default.processes());
    ensure!(default.processes() == cpu_count(), "the default size should be cpu_count()");
    drop(default);

    let pool = Pool::builder()
        .processes(2)
        .initializer(initializer, ("item-".to_string(), 10))
        .build()
        .context("build")?;
    let out = pool.chunksize(1).map(scaled, 0..8).context("map")?;
    pool.close();
    pool.join().context("join")?;
    let mut pids = BTreeSet::new();
    for (i, (text, pid, runs)) in (0..).zip(&out) {
        println!("task {i}: {text:<8} in pid {pid}");
        ensure!(*text == format!("item-{}", i * 10), "task {i} got {text:?}");
        ensure!(*runs == 1, "the initializer ran {runs} times in worker {pid}");
        pids.insert(*pid);
    }
    ensure!(
        pids.len() <= 2 && !pids.contains(&std::process::id()),
        "tasks ran in {pids:?}: want at most 2 worker pids, not the parent's"
    );
    ensure!(INIT.get().is_none(), "the initializer must run in the workers, not in the parent");
    Ok(())
}

pub fn s001_2() -> Result<(), String> {
    const N: u32 = 10_000;
    let pool = Pool::new(5).context("Pool::new(5)")?;
    let started = Instant::now();
    for i in 0..N {
        let res = pool.apply(func, i).context("apply")?;
        if i < 3 || i == N - 1 {
            println!("{res}");
        } else if i == 3 {
            println!("...");
        }
        ensure!(res == i + 1, "apply(func, {i}) returned {res}");
    }
    let took = started.elapsed();
    println!("{N} applies: {took:.3?} ({:.1} us each)", took.as_secs_f64() * 1e6 / f64::from(N));
    Ok(())
}

pub fn s001_3() -> Result<(), String> {
    let parent = std::process::id();
    let pool = Pool::builder().build().context("Pool()")?;
    let seen = Arc::new(Mutex::new(Vec::new()));
    for i in 0..10 {
        let seen = seen.clone();
        // The seed's call_back: `p1 += 1; print(p1)`, run by the parent.
        // The callback is all we need: the handle can go, the task still runs.
        drop(pool.apply_async(func, i).callback(move |p1: &u32| {
            let p1 = p1 + 1;
            println!("{p1}");
            seen.lock().unwrap().push((p1, std::process::id()));
        }));
    }
    pool.close();
    pool.join().context("join")?;
    let mut seen = seen.lock().unwrap().clone();
    seen.sort();
    let want: Vec<(u32, u32)> = (2..=11).map(|v| (v, parent)).collect();
    ensure!(seen == want, "callbacks saw {seen:?}, want 2..=11 once each in pid {parent}");
    Ok(())
}

pub fn s001_4() -> Result<(), String> {
    const N: u32 = 10_000;
    let pool = Pool::new(5).context("Pool::new(5)")?;
    let started = Instant::now();
    let pending: Vec<_> = (0..N).map(|i| pool.apply_async(func, i)).collect();
    pool.close();
    pool.join().context("join")?;
    let got = pending.into_iter().map(|r| r.get()).collect::<Result<Vec<_>, _>>().context("get")?;
    let async_time = started.elapsed();
    println!("{:?} ... {:?}", &got[..3], &got[got.len() - 1..]);
    ensure!(got == (1..=N).collect::<Vec<_>>(), "wrong results");

    let pool = Pool::new(5).context("Pool::new(5)")?;
    let started = Instant::now();
    for i in 0..N {
        pool.apply(func, i).context("apply")?;
    }
    let apply_time = started.elapsed();
    println!(
        "{N} tasks: apply_async then get() {async_time:.3?}; apply one by one {apply_time:.3?}"
    );
    ensure!(
        async_time < apply_time,
        "apply_async ({async_time:?}) should beat waiting for each apply ({apply_time:?})"
    );
    Ok(())
}

/// The seed's `func` for `map`: prints `num + 1` and returns it. Sleeps a few
/// milliseconds that vary with `num`, so tasks finish out of input order.
fn func_print(num: u32) -> u32 {
    thread::sleep(Duration::from_millis(u64::from(num % 7)));
    println!("{}", num + 1);
    num + 1
}

pub fn s001_5() -> Result<(), String> {
    let pool = Pool::new(5).context("Pool::new(5)")?;
    let started = Instant::now();
    let res = pool.map(func_print, 0..100).context("map")?;
    let took = started.elapsed();
    println!("map returned in the main process after {took:.2?}: {res:?}");
    ensure!(res == (1..=100).collect::<Vec<_>>(), "map's results are not in input order");
    // No result can come back before its task has slept.
    let slept: u64 = (0..100).map(|n| n % 7).sum();
    let least = Duration::from_millis(slept) / 5;
    ensure!(
        took >= least,
        "map returned after {took:?}, before 5 workers could finish ({least:?})"
    );
    // The seed says map closes and joins the pool itself; it does not: the
    // pool takes more work until close() and join().
    let again = pool.map(func, 0..3).context("a second map")?;
    ensure!(again == [1, 2, 3], "the second map returned {again:?}");
    pool.close();
    pool.join().context("join")?;
    Ok(())
}
