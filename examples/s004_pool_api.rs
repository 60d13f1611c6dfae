//! Seed 004, the rest of the Pool API: `apply_async` with callbacks and
//! arguments, `map_async` and chunksize, `starmap_async`, `imap` and
//! `imap_unordered`, errors, `AsyncResult`, and the thread pool. (The seed's
//! `concurrent.futures` part, S004.1–S004.3, is not here.)
//!
//! `cargo run --release --example s004_pool_api [-- S004.8 ...]`

#[macro_use]
#[path = "common/mod.rs"]
mod common;

use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::Context;
use multiproc::{current_process, AsyncResult, Error, Pool, TaskFn, ThreadPool};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub const SCENARIOS: &[common::Scenario] = &[
    ("S004.4", "apply_async with callback and error_callback, positional (tuple) and keyword (struct) arguments; tasks of 1 s scaled to 50 ms", s004_4),
    ("S004.5", "map_async: the callback gets the whole list; chunksize, and the default rule divmod(len, workers * 4) seen through worker pids", s004_5),
    ("S004.6", "starmap_async with two arguments per task, results in order", s004_6),
    ("S004.7", "imap yields in input order, imap_unordered in completion order (tasks sleep 4..1 x 80 ms)", s004_7),
    ("S004.8", "Errors: a panicking task reaches error_callback alone; one bad item fails a whole map_async; a task that catches its error returns a value", s004_8),
    ("S004.9", "AsyncResult: ready(), successful() (None while running), get_timeout's timeout error, get() returning the task's panic with message and location", s004_9),
    ("S004.10", "A callback's result does not change what get() returns", s004_10),
    ("S004.11", "ThreadPool: the same API run by threads of this process (capturing closures allowed); tasks of 1 s scaled to 100 ms", s004_11),
];

fn main() -> std::process::ExitCode {
    common::run(SCENARIOS)
}

/// The seed's 1 s task, scaled down twentyfold.
const T: Duration = Duration::from_millis(50);

/// The seed's `task`: prints, sleeps, prints again, returns its argument.
fn task(name: u32) -> u32 {
    println!("{name} is running");
    thread::sleep(T);
    println!("{name} is done");
    name
}

/// `task`, but item 2 divides by zero: a panic, Rust's uncaught exception.
fn task_failing(name: u32) -> u32 {
    println!("{name} is running");
    thread::sleep(T);
    if name == 2 {
        let divisor = name - 2;
        println!("{}", 1 / divisor);
    }
    println!("{name} is done");
    name
}

/// `task`, but item 2 catches its division by zero and returns an error value
/// (the seed's `try: 1 / 0 except: return 'error'`).
fn task_caught(name: u32) -> Result<u32, String> {
    println!("{name} is running");
    thread::sleep(T);
    if name == 2 && 1u32.checked_div(name - 2).is_none() {
        return Err("error 1/0".to_string());
    }
    println!("{name} is done");
    Ok(name)
}

/// The seed's `func2` callback: says which process runs it.
fn func2<T: std::fmt::Debug>(res: &T) -> (String, u32) {
    thread::sleep(T / 5);
    let me = current_process();
    println!("{res:?}: current process: {} pid: {}", me.name, me.pid);
    (me.name, me.pid)
}

/// What the seed's callbacks saw: values (`callback`), errors
/// (`error_callback`), and the process each callback ran in.
struct Seen<R> {
    values: Vec<R>,
    errors: Vec<Error>,
    places: Vec<(String, u32)>,
}

/// Callbacks run in this process, so they can share state with it.
type Shared<R> = Arc<Mutex<Seen<R>>>;

impl<R: Clone + std::fmt::Debug + Send + 'static> Seen<R> {
    fn shared() -> Shared<R> {
        Arc::new(Mutex::new(Seen { values: Vec::new(), errors: Vec::new(), places: Vec::new() }))
    }

    /// The seed's `func2` as a callback.
    fn callback(seen: &Shared<R>) -> impl FnOnce(&R) + Send + 'static + use<R> {
        let seen = seen.clone();
        move |res| {
            let place = func2(res);
            let mut seen = seen.lock().unwrap();
            seen.places.push(place);
            seen.values.push(res.clone());
        }
    }

    /// The seed's `func3` as an error callback: prints the error.
    fn error_callback(seen: &Shared<R>) -> impl FnOnce(&Error) + Send + 'static + use<R> {
        let seen = seen.clone();
        move |e| {
            println!("error_callback: {e}");
            seen.lock().unwrap().errors.push(e.clone());
        }
    }

    /// The values and errors seen, once every callback is known to have run
    /// in the main process.
    fn checked(seen: &Shared<R>) -> Result<(Vec<R>, Vec<Error>), String> {
        let mut seen = seen.lock().unwrap();
        let me = (String::from("MainProcess"), std::process::id());
        ensure!(
            seen.places.iter().all(|p| *p == me),
            "callbacks ran in {:?}, not all in {me:?}",
            seen.places
        );
        Ok((std::mem::take(&mut seen.values), std::mem::take(&mut seen.errors)))
    }
}

/// The seed's pattern: in a `Pool(5)`, `apply_async(f, i)` for `i` in 1..5
/// with `func2` and `func3` as callbacks, then `close()` and `join()`.
fn apply_each<F, M, R>(f: F) -> Result<(Vec<R>, Vec<Error>), String>
where
    F: TaskFn<u32, M, Output = R> + Copy,
    M: 'static,
    R: Serialize + DeserializeOwned + Clone + std::fmt::Debug + Send + 'static,
{
    let pool = Pool::new(5).context("Pool::new(5)")?;
    let seen = Seen::shared();
    for i in 1..5 {
        // The callbacks hold what they need: the handle itself can go.
        drop(
            pool.apply_async(f, i)
                .callback(Seen::callback(&seen))
                .error_callback(Seen::error_callback(&seen)),
        );
    }
    pool.close();
    pool.join().context("join")?;
    println!("main");
    Seen::checked(&seen)
}

/// The same with one `map_async(f, 1..5)`: the callback gets the whole list.
fn map_all<F, M, R>(f: F) -> Result<(Vec<Vec<R>>, Vec<Error>), String>
where
    F: TaskFn<u32, M, Output = R> + Copy,
    M: 'static,
    R: Serialize + DeserializeOwned + Clone + std::fmt::Debug + Send + 'static,
{
    let pool = Pool::new(5).context("Pool::new(5)")?;
    let seen = Seen::shared();
    drop(
        pool.map_async(f, 1..5)
            .callback(Seen::callback(&seen))
            .error_callback(Seen::error_callback(&seen)),
    );
    pool.close();
    pool.join().context("join")?;
    println!("main");
    Seen::checked(&seen)
}

/// Python's keyword arguments become a serde struct with named fields.
#[derive(Serialize, Deserialize)]
struct Person {
    name: String,
    age: u32,
}

fn introduce(p: Person) -> String {
    format!("{} is {}", p.name, p.age)
}

/// The seed's two-argument `task2`; several arguments travel as a tuple.
fn task2(name: String, age: u32) -> String {
    println!("{name} {age}");
    format!("{name} is {age}")
}

pub fn s004_4() -> Result<(), String> {
    let (mut values, errors) = apply_each(task)?;
    values.sort();
    ensure!(values == [1, 2, 3, 4], "callbacks got {values:?}");
    ensure!(errors.is_empty(), "error_callback ran: {errors:?}");

    // Positional arguments: a tuple. Keyword arguments: a struct.
    let pool = Pool::new(5).context("Pool::new(5)")?;
    let positional = pool.apply_async(task2, ("张珊".to_string(), 5));
    let keyword = pool.apply_async(introduce, Person { name: "李四".to_string(), age: 4 });
    let (positional, keyword) = (positional.get(), keyword.get());
    println!("positional: {positional:?}, keyword: {keyword:?}");
    ensure!(positional.ok().as_deref() == Some("张珊 is 5"), "tuple args");
    ensure!(keyword.ok().as_deref() == Some("李四 is 4"), "struct args");
    Ok(())
}

/// Returns the pid of the worker that ran it.
fn where_am_i(_item: u32) -> u32 {
    std::process::id()
}

/// The lengths of the runs of equal neighbours: `[7, 7, 9]` gives `[2, 1]`.
fn runs(pids: &[u32]) -> Vec<usize> {
    pids.chunk_by(|a, b| a == b).map(<[u32]>::len).collect()
}

pub fn s004_5() -> Result<(), String> {
    let (lists, errors) = map_all(task)?;
    ensure!(
        lists == [vec![1, 2, 3, 4]] && errors.is_empty(),
        "the callback should get the whole list once, got {lists:?} and errors {errors:?}"
    );

    // A chunk of items is one task. With one task per worker, every chunk
    // runs in a fresh worker, so the pids show where the chunks begin.
    let pool = Pool::builder().processes(5).max_tasks_per_child(1).build().context("build")?;
    let pids = pool.chunksize(3).map(where_am_i, 0..10).context("map")?;
    println!("chunksize 3, 10 items: chunks of {:?}", runs(&pids));
    ensure!(
        runs(&pids) == [3, 3, 3, 1],
        "chunksize 3 should give chunks of 3, 3, 3, 1: pids {pids:?}"
    );
    // The default: `chunksize, extra = divmod(len, workers * 4)`, plus one
    // if there is an extra.
    let (len, workers) = (90, pool.processes());
    let (mut chunksize, extra) = (len / (workers * 4), len % (workers * 4));
    if extra > 0 {
        chunksize += 1;
    }
    let pids = pool.map(where_am_i, 0..len as u32).context("map")?;
    let chunks = runs(&pids);
    println!("default chunksize for {len} items on {workers} workers: divmod({len}, {}) = ({}, {extra}) -> {chunksize}; chunks of {chunks:?}", workers * 4, len / (workers * 4));
    ensure!(
        chunks == vec![chunksize; len.div_ceil(chunksize)],
        "want {} chunks of {chunksize}, got {chunks:?}",
        len.div_ceil(chunksize)
    );
    Ok(())
}

pub fn s004_6() -> Result<(), String> {
    let pool = Pool::new(5).context("Pool::new(5)")?;
    let people = [("张珊", 5), ("李四", 4), ("王五", 9)].map(|(n, a)| (n.to_string(), a));
    let result = pool.starmap_async(task2, people);
    pool.close();
    pool.join().context("join")?;
    println!("main");
    let got = result.get().context("get")?;
    println!("{got:?}");
    ensure!(got == ["张珊 is 5", "李四 is 4", "王五 is 9"], "starmap returned {got:?}");
    Ok(())
}

/// The seed's one-argument `task2`; item `name` sleeps `5 - name` steps, so
/// the last item finishes first.
fn task2_reversed(name: u32) -> String {
    thread::sleep(Duration::from_millis(80) * (5 - name));
    println!("{name}");
    format!("{name} OK")
}

/// Drains an imap iterator, noting when each result arrived.
fn drain(
    it: impl Iterator<Item = multiproc::Result<String>>,
) -> Result<Vec<(String, Duration)>, String> {
    let started = Instant::now();
    it.map(|r| {
        let v = r.context("imap item")?;
        println!("{v}");
        Ok((v, started.elapsed()))
    })
    .collect()
}

pub fn s004_7() -> Result<(), String> {
    let step = Duration::from_millis(80);
    // A fresh pool, not warmed up with quick tasks: a worker that has just run
    // quick tasks currently takes several of these slow ones at once and runs
    // them one after another, which would blur the completion order.
    let pool = Pool::new(5).context("Pool::new(5)")?;
    let ordered = drain(pool.imap(task2_reversed, 1..5))?;
    let unordered = drain(pool.imap_unordered(task2_reversed, 1..5))?;
    pool.close();
    pool.join().context("join")?;
    println!("main");

    let names = |v: &[(String, Duration)]| v.iter().map(|x| x.0.clone()).collect::<Vec<_>>();
    ensure!(
        names(&ordered) == ["1 OK", "2 OK", "3 OK", "4 OK"],
        "imap should keep input order: {:?}",
        names(&ordered)
    );
    ensure!(ordered[0].1 >= step * 4, "imap's first result waits for item 1 (4 steps)");
    ensure!(
        names(&unordered) == ["4 OK", "3 OK", "2 OK", "1 OK"],
        "imap_unordered should yield in completion order: {:?}",
        names(&unordered)
    );
    ensure!(
        unordered[0].1 < step * 3,
        "imap_unordered should yield item 4 as soon as it is done (1 step), not after {:?}",
        unordered[0].1
    );
    Ok(())
}

pub fn s004_8() -> Result<(), String> {
    println!("-- apply_async, task 2 panics");
    let (mut values, errors) = apply_each(task_failing)?;
    values.sort();
    ensure!(values == [1, 3, 4], "the other tasks should succeed: {values:?}");
    ensure!(
        errors.len() == 1 && errors[0].panic_message() == Some("attempt to divide by zero"),
        "want one division-by-zero error, got {errors:?}"
    );

    println!("-- apply_async, task 2 catches its error");
    let (mut values, errors) = apply_each(task_caught)?;
    values.sort_by_key(|v| *v.as_ref().unwrap_or(&2)); // the error is item 2's
    let want = [Ok(1), Err("error 1/0".to_string()), Ok(3), Ok(4)];
    ensure!(values == want, "callbacks got {values:?}");
    ensure!(errors.is_empty(), "error_callback ran: {errors:?}");

    println!("-- map_async, item 2 panics");
    let (lists, errors) = map_all(task_failing)?;
    ensure!(lists.is_empty(), "the callback ran with {lists:?}");
    ensure!(
        errors.len() == 1 && errors[0].is_panic(),
        "want one panic for the whole call, got {errors:?}"
    );

    println!("-- map_async, item 2 catches its error");
    let (lists, errors) = map_all(task_caught)?;
    ensure!(lists == [want.to_vec()], "the callback got {lists:?}");
    ensure!(errors.is_empty(), "error_callback ran: {errors:?}");
    Ok(())
}

/// The seed's `task2` of 3-1-4: prints where it runs, returns `"{name} OK"`;
/// with `fail`, item 2 divides by zero.
fn task2_where(name: u32, fail: bool) -> String {
    let me = current_process();
    println!("{name} {} {}", me.pid, me.name);
    if fail && name == 2 {
        let divisor = name - 2;
        println!("{}", 1 / divisor);
    }
    format!("{name} OK")
}

fn nap(ms: u64) -> u64 {
    thread::sleep(Duration::from_millis(ms));
    ms
}

/// Prints ready, successful and get of each result, as the seed's loop does.
fn report(
    results: Vec<AsyncResult<String>>,
) -> Vec<(bool, Option<bool>, multiproc::Result<String>)> {
    results
        .into_iter()
        .map(|r| {
            let (ready, successful) = (r.ready(), r.successful());
            println!("ready {ready}\nsuccessful {successful:?}");
            let got = r.get();
            match &got {
                Ok(v) => println!("get {v}"),
                Err(e) => println!(
                    "get failed: {e}\n  panic message: {:?}\n  location: {:?}\n  worker pid: {:?}",
                    e.panic_message(),
                    e.location(),
                    e.pid()
                ),
            }
            (ready, successful, got)
        })
        .collect()
}

pub fn s004_9() -> Result<(), String> {
    let pool = Pool::new(5).context("Pool::new(5)")?;
    let slow = pool.apply_async(nap, 200);
    let (ready, successful) = (slow.ready(), slow.successful());
    let early = slow.get_timeout(Duration::from_millis(20));
    println!("a 200 ms task just submitted: ready {ready}, successful {successful:?}, get_timeout(20 ms): {early:?}");
    ensure!(!ready && successful.is_none(), "a running task is not ready");
    ensure!(early.as_ref().is_err_and(Error::is_timeout), "get_timeout should time out: {early:?}");
    let results: Vec<_> = (1..5).map(|i| pool.apply_async(task2_where, (i, false))).collect();
    pool.close();
    pool.join().context("join")?;
    ensure!(slow.get().ok() == Some(200), "the timed-out get lost the result");
    println!("{:=^60}", " ok ");
    for (i, (ready, successful, got)) in (1..).zip(report(results)) {
        ensure!(ready && successful == Some(true), "task {i} not done after join");
        ensure!(got.ok() == Some(format!("{i} OK")), "task {i}: wrong value");
    }

    println!("-- task 2 panics");
    let pool = Pool::new(5).context("Pool::new(5)")?;
    let results: Vec<_> = (1..5).map(|i| pool.apply_async(task2_where, (i, true))).collect();
    pool.close();
    pool.join().context("join")?;
    println!("{:=^60}", " ok ");
    // Python's get() raised here and ended the program; the other results
    // are still there.
    for (i, (ready, successful, got)) in (1..).zip(report(results)) {
        ensure!(ready, "task {i} not ready after join");
        if i != 2 {
            ensure!(successful == Some(true) && got.is_ok(), "task {i} should succeed");
            continue;
        }
        ensure!(successful == Some(false), "task 2 should be unsuccessful");
        let err = got.err().ok_or("task 2 should fail")?;
        let located = err.location().is_some_and(|l| l.contains("s004_pool_api.rs"));
        let in_worker = err.pid().is_some_and(|p| p != std::process::id());
        ensure!(
            err.panic_message() == Some("attempt to divide by zero") && located && in_worker,
            "task 2's error should carry the panic message, where in this file it \
             panicked and the worker's pid: {err:?}"
        );
    }
    Ok(())
}

pub fn s004_10() -> Result<(), String> {
    let pool = Pool::new(5).context("Pool::new(5)")?;
    let made = Arc::new(Mutex::new(Vec::new()));
    let results: Vec<_> = (1..5)
        .map(|i| {
            let made = made.clone();
            // The seed's func2: `c = res + "<<<"; print(c); return c`. A
            // callback sees `&T` and returns nothing: it cannot change get().
            pool.apply_async(task2_where, (i, false)).callback(move |res| {
                let c = format!("{res}<<<");
                println!("{c}");
                made.lock().unwrap().push(c);
            })
        })
        .collect();
    pool.close();
    pool.join().context("join")?;
    println!("{:=^60}", " ok ");
    for (i, (_, _, got)) in (1..).zip(report(results)) {
        ensure!(got.ok() == Some(format!("{i} OK")), "get() of task {i} changed");
    }
    let mut made = made.lock().unwrap().clone();
    made.sort();
    ensure!(made == ["1 OK<<<", "2 OK<<<", "3 OK<<<", "4 OK<<<"], "callbacks made {made:?}");
    Ok(())
}

pub fn s004_11() -> Result<(), String> {
    const STEP: Duration = Duration::from_millis(100);
    let pool = ThreadPool::new(5).context("ThreadPool::new(5)")?;
    // Thread pool tasks may capture, and share state with this thread.
    let (suffix, places) = (String::from(" OK"), Arc::new(Mutex::new(Vec::new())));
    let task2 = {
        let places = places.clone();
        move |name: u32| {
            thread::sleep(STEP);
            let me = current_process();
            let thread = thread::current().name().unwrap_or("?").to_string();
            println!("{name} {} {} ({thread})", me.pid, me.name);
            places.lock().unwrap().push((me.name, me.pid));
            format!("{name}{suffix}")
        }
    };
    let started = Instant::now();
    let results: Vec<_> = (1..5)
        .map(|i| pool.apply_async(task2.clone(), i).callback(|res| println!("{res}<<<")))
        .collect();
    pool.close();
    pool.join().context("join")?;
    let took = started.elapsed();
    println!("{:=^60}", " ok ");
    for (i, (ready, successful, got)) in (1..).zip(report(results)) {
        ensure!(ready && successful == Some(true), "task {i} not done after join");
        ensure!(got.ok() == Some(format!("{i} OK")), "task {i}: wrong value");
    }
    let me = (String::from("MainProcess"), std::process::id());
    let places = places.lock().unwrap().clone();
    ensure!(
        places.len() == 4 && places.iter().all(|p| *p == me),
        "thread tasks run in this process {me:?}, not {places:?}"
    );
    println!("4 tasks of {STEP:?} on 5 threads: {took:.2?}");
    ensure!(took < STEP * 5 / 2, "the 4 tasks should run at once, took {took:?}");

    // map with a capturing closure, same API as Pool.
    let factor = 3;
    let pool = ThreadPool::new(2).context("ThreadPool::new(2)")?;
    let tripled = pool.map(move |x: u32| x * factor, 0..5).context("map")?;
    println!("map(x * {factor}): {tripled:?}");
    ensure!(tripled == [0, 3, 6, 9, 12], "map returned {tripled:?}");
    Ok(())
}
