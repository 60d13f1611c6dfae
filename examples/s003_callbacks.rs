//! Seed 003, locks and pool callbacks: a `Lock` passed to 10 processes that
//! print under it; `apply` runs tasks one at a time, `apply_async` runs them
//! in parallel, and the callback runs in the parent process.
//!
//! `cargo run --release --example s003_callbacks [-- S003.2 ...]`

#[macro_use]
#[path = "common/mod.rs"]
mod common;

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::Context;
use multiproc::{Fd, Lock, Pool, Process};

pub const SCENARIOS: &[common::Scenario] = &[
    ("S003.1", "A Lock passed to 10 processes that print under it; each also logs start and end lines to one file around a 5 ms nap, and no two overlap", s003_1),
    ("S003.2", "apply is serial, apply_async parallel: 10 tasks of 2 s (scaled to 100 ms) in Pool(5) take 10x and 2x the task time", s003_2),
    ("S003.3", "The callback runs in the parent: its pid is the parent's, the tasks' pids are the workers'", s003_3),
];

fn main() -> std::process::ExitCode {
    common::run(SCENARIOS)
}

/// How long a process may take before the scenario calls it hung.
const BOUND: Duration = Duration::from_secs(10);

/// The seed's `f`: prints under the lock, taken and released Python's way.
/// It also writes a start and an end line to the shared `log` around a short
/// nap, so that the scenario can see that no two processes were inside at once.
fn f(l: Lock, i: u32, mut log: Fd<File>) {
    l.acquire_raw(true, None).expect("acquire");
    log.write_all(format!("start {i}\n").as_bytes()).expect("write the log");
    println!("hello world {i}");
    thread::sleep(Duration::from_millis(5));
    log.write_all(format!("end {i}\n").as_bytes()).expect("write the log");
    l.release().expect("release");
}

pub fn s003_1() -> Result<(), String> {
    let path = std::env::temp_dir().join(format!("multiproc-s003_1-{}", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let log = OpenOptions::new().create(true).append(true).open(&path).context("open the log")?;
    let lock = Lock::new().context("Lock::new")?;
    let mut ps = Vec::new();
    for i in 0..10 {
        let log = Fd::new(log.try_clone().context("try_clone")?);
        let mut p = Process::new(f, (lock.clone(), i, log));
        p.start().context("start")?;
        ps.push(p);
    }
    let mut codes = Vec::new();
    for p in &mut ps {
        let done = p.join_timeout(BOUND).context("join")?;
        codes.push(if done { p.exitcode() } else { None });
    }
    let text = std::fs::read_to_string(&path);
    let _ = std::fs::remove_file(&path);
    ensure!(codes.iter().all(|c| *c == Some(0)), "exit codes {codes:?}, want 0 for all");
    let text = text.context("read the log")?;
    let lines: Vec<&str> = text.lines().collect();
    let mut seen = BTreeSet::new();
    for pair in lines.chunks(2) {
        let i = pair[0].strip_prefix("start ");
        ensure!(
            pair.len() == 2 && i.is_some() && pair[1].strip_prefix("end ") == i,
            "the log interleaves: {pair:?} in {lines:?}"
        );
        seen.insert(i.unwrap_or_default());
    }
    println!("the log shows 10 start/end pairs, none interleaved");
    ensure!(seen.len() == 10 && lines.len() == 20, "the log holds {lines:?}");
    Ok(())
}

/// The seed's 2 s task, scaled down twentyfold.
const T: Duration = Duration::from_millis(100);

/// The seed's `Foo`: sleeps, prints its pid, returns `i + 100`; it also
/// returns the pid so that the parent can check where it ran.
fn foo(i: u32) -> (u32, u32) {
    thread::sleep(T);
    println!("current process {}", std::process::id());
    (i + 100, std::process::id())
}

pub fn s003_2() -> Result<(), String> {
    let pool = Pool::new(5).context("Pool::new(5)")?;
    let started = Instant::now();
    for i in 0..10 {
        pool.apply(foo, i).context("apply")?;
    }
    println!("end");
    pool.close();
    pool.join().context("join")?;
    let serial = started.elapsed();
    println!("apply x10: {serial:.2?}\n");

    let pool = Pool::new(5).context("Pool::new(5)")?;
    let done = Arc::new(Mutex::new(Vec::new()));
    let started = Instant::now();
    for i in 0..10 {
        let done = done.clone();
        // The seed's `Bar`.
        // The callback is all we need: the handle can go, the task still runs.
        drop(pool.apply_async(foo, i).callback(move |(arg, _): &(u32, u32)| {
            println!("-->exec done: {arg}");
            done.lock().unwrap().push(*arg);
        }));
    }
    println!("end");
    let before_end = done.lock().unwrap().len();
    pool.close();
    pool.join().context("join")?;
    let parallel = started.elapsed();
    println!("apply_async x10: {parallel:.2?}");

    ensure!(
        serial >= T * 10,
        "apply x10 took {serial:?}, less than 10 tasks of {T:?} one after another"
    );
    ensure!(
        parallel < T * 5,
        "apply_async x10 took {parallel:?}: 5 at a time should take about {:?}",
        T * 2
    );
    ensure!(before_end == 0, "\"end\" should print before any task is done ({before_end} were)");
    let mut done = done.lock().unwrap().clone();
    done.sort();
    ensure!(done == (100..110).collect::<Vec<_>>(), "callbacks got {done:?}");
    Ok(())
}

pub fn s003_3() -> Result<(), String> {
    let parent = std::process::id();
    println!("main process {parent}");
    let pool = Pool::new(5).context("Pool::new(5)")?;
    let seen = Arc::new(Mutex::new(Vec::new()));
    for i in 0..10 {
        let seen = seen.clone();
        drop(pool.apply_async(foo, i).callback(move |&(arg, task_pid): &(u32, u32)| {
            let me = std::process::id();
            println!("-->exec done: {arg} {me}");
            seen.lock().unwrap().push((arg, task_pid, me));
        }));
    }
    println!("end");
    pool.close();
    pool.join().context("join")?;

    let seen = seen.lock().unwrap().clone();
    ensure!(seen.len() == 10, "{} callbacks ran, want 10", seen.len());
    let workers: BTreeSet<u32> = seen.iter().map(|s| s.1).collect();
    println!("tasks ran in workers {workers:?}; every callback ran in {parent}");
    for (arg, task_pid, callback_pid) in seen {
        ensure!(
            callback_pid == parent,
            "the callback for {arg} ran in {callback_pid}, not the parent {parent}"
        );
        ensure!(task_pid != parent, "task {arg} ran in the parent, not a worker");
    }
    ensure!(workers.len() <= 5, "tasks ran in {} processes, more than the pool's 5", workers.len());
    Ok(())
}
