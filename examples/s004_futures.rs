//! Seed 004, first part: `concurrent.futures` executors. A process executor
//! of two workers runs five tasks on only two pids; a thread executor runs
//! them in this process; `result()` in the submit loop makes the calls
//! serial, while `add_done_callback` receives each finished future.
//!
//! `cargo run --release --example s004_futures [-- S004.1 ...]`

#[macro_use]
#[path = "common/mod.rs"]
mod common;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::Context;
use multiproc::{ProcessPoolExecutor, ThreadPoolExecutor};

pub const SCENARIOS: &[common::Scenario] = &[
    ("S004.1", "ProcessPoolExecutor(2): submit 5 tasks sleeping 1-3 s (scaled to 50-150 ms), shutdown(); only two worker pids ever appear", s004_1),
    ("S004.2", "ThreadPoolExecutor(2): the same with threads; one pid (this process), two threads", s004_2),
    ("S004.3", "submit(..).result() in the loop is serial; add_done_callback gets the finished future", s004_3),
];

fn main() -> std::process::ExitCode {
    common::run(SCENARIOS)
}

/// The seed's `random.randint(1, 3)` seconds, scaled to 50–150 ms and made
/// deterministic from the task's index.
fn nap(i: u64) -> Duration {
    Duration::from_millis(50 * (1 + (i * 7 + 3) % 3))
}

/// The seed's `walk`: prints its name and pid, sleeps, returns its pid.
fn walk(name: String, i: u64) -> u32 {
    println!("{name} is run PID:{}", std::process::id());
    thread::sleep(nap(i));
    std::process::id()
}

pub fn s004_1() -> Result<(), String> {
    let pool = ProcessPoolExecutor::new(2).context("ProcessPoolExecutor::new")?;
    let futures = (0..5)
        .map(|i| pool.submit(walk, (format!("egon{i}"), i)))
        .collect::<Result<Vec<_>, _>>()
        .context("submit")?;
    pool.shutdown(); // waits for every task, like the seed's shutdown()
    println!("main");
    let mut pids = BTreeSet::new();
    for f in &futures {
        ensure!(f.done(), "shutdown(wait) returned before a task finished");
        pids.insert(f.result().context("walk")?);
    }
    println!("worker pids: {pids:?}");
    ensure!(pids.len() == 2, "expected exactly two worker pids, saw {pids:?}");
    ensure!(!pids.contains(&std::process::id()), "a task ran in the parent");
    ensure!(pool.submit(walk, ("late".into(), 0)).is_err(), "submit after shutdown was accepted");
    Ok(())
}

pub fn s004_2() -> Result<(), String> {
    let pool = ThreadPoolExecutor::new(2).context("ThreadPoolExecutor::new")?;
    let threads = Arc::new(Mutex::new(BTreeSet::new()));
    let futures = (0..5)
        .map(|i| {
            let threads = threads.clone();
            pool.submit(
                move |name: String| {
                    threads.lock().unwrap().insert(format!("{:?}", thread::current().id()));
                    walk(name, i)
                },
                format!("egon{i}"),
            )
        })
        .collect::<Result<Vec<_>, _>>()
        .context("submit")?;
    pool.shutdown();
    println!("main");
    let pids: BTreeSet<u32> = futures.iter().map(|f| f.result().unwrap()).collect();
    let threads = threads.lock().unwrap().len();
    println!("pids: {pids:?}, threads used: {threads}");
    ensure!(pids == BTreeSet::from([std::process::id()]), "thread tasks saw pids {pids:?}");
    ensure!(threads <= 2, "{threads} threads ran tasks in an executor of 2");
    Ok(())
}

fn square_slowly(i: u64) -> u64 {
    thread::sleep(Duration::from_millis(40));
    i * i
}

pub fn s004_3() -> Result<(), String> {
    let pool = ProcessPoolExecutor::new(2).context("ProcessPoolExecutor::new")?;
    pool.submit(square_slowly, 0).context("warm-up")?.result().context("warm-up")?;

    // result() right after submit waits for each task in turn: serial.
    let t = Instant::now();
    for i in 0..5 {
        let r = pool.submit(square_slowly, i).context("submit")?.result().context("result")?;
        println!("{r}");
    }
    let serial = t.elapsed();

    // With a callback the loop does not wait; the callback gets the future.
    let got = Arc::new(Mutex::new(Vec::new()));
    let t = Instant::now();
    let mut futures = Vec::new();
    for i in 0..5 {
        let got = got.clone();
        let f = pool.submit(square_slowly, i).context("submit")?;
        f.add_done_callback(move |fut| {
            let done = fut.done();
            let res = fut.result().unwrap();
            println!("callback: {res} (future done: {done}, pid {})", std::process::id());
            got.lock().unwrap().push((res, done, std::process::id()));
        });
        futures.push(f);
    }
    let submitting = t.elapsed();
    for f in &futures {
        f.wait();
    }
    let parallel = t.elapsed();
    println!("serial with result(): {serial:.2?}; submit loop with callbacks: {submitting:.2?}, all done after {parallel:.2?}");
    let mut got = got.lock().unwrap().clone();
    got.sort();
    ensure!(
        got.iter().map(|g| g.0).collect::<Vec<_>>() == vec![0, 1, 4, 9, 16],
        "callbacks saw {got:?}"
    );
    ensure!(
        got.iter().all(|g| g.1 && g.2 == std::process::id()),
        "a callback ran before its future was done or outside the parent: {got:?}"
    );
    ensure!(
        serial >= Duration::from_millis(5 * 40),
        "five serial 40 ms tasks took only {serial:?}"
    );
    ensure!(
        submitting < Duration::from_millis(40),
        "the callback loop waited for tasks ({submitting:?})"
    );
    ensure!(
        parallel < serial,
        "two workers with callbacks ({parallel:?}) were not faster than serial ({serial:?})"
    );
    Ok(())
}
