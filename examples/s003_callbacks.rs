//! Seed 003, pool callbacks: `apply` runs tasks one at a time, `apply_async`
//! runs them in parallel, and the callback runs in the parent process.
//! (The seed's first part, a `Lock` shared by processes, is not a pool
//! scenario and is not here.)
//!
//! `cargo run --release --example s003_callbacks [-- S003.2 ...]`

#[macro_use]
#[path = "common/mod.rs"]
mod common;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::Context;
use multiproc::Pool;

pub const SCENARIOS: &[common::Scenario] = &[
    ("S003.2", "apply is serial, apply_async parallel: 10 tasks of 2 s (scaled to 100 ms) in Pool(5) take 10x and 2x the task time", s003_2),
    ("S003.3", "The callback runs in the parent: its pid is the parent's, the tasks' pids are the workers'", s003_3),
];

fn main() -> std::process::ExitCode {
    common::run(SCENARIOS)
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
