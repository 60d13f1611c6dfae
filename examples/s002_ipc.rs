//! Seed 002, talking and synchronising processes: `Queue` and
//! `JoinableQueue`, pipes, and the `Lock`, `Semaphore` and `Event` shared by
//! processes. (Starting processes is in `s002_processes.rs`; the seed's
//! `Manager` and its last pool examples are not here.)
//!
//! The seed's sleeps of seconds are scaled down to tens of milliseconds, and
//! its random sleeps are fixed per process, so that every run does the same.
//!
//! `cargo run --release --example s002_ipc [-- S002.6 ...]`

#[macro_use]
#[path = "common/mod.rs"]
mod common;

use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

use common::Context;
use multiproc::{
    pipe, pipe_one_way, Array, Connection, ErrorKind, Event, JoinableQueue, Lock, Process,
    PutError, Queue, Receiver, Semaphore, Sender, Value,
};
use serde::{Deserialize, Serialize};

pub const SCENARIOS: &[common::Scenario] = &[
    ("S002.5", "Queue(3): put, full, qsize, put_nowait's Full handing the value back, get_nowait's Empty, puts and gets that block (with timeouts of 50 ms, which report Timeout), close", s002_5),
    ("S002.6", "Producer/consumer: without a sentinel the consumer never ends; with None it does; JoinableQueue with task_done/join, daemon consumers, 3 consumers, the producer in a child", s002_6),
    ("S002.7", "Pipes: one-way producer/consumer ending at end-of-file once every writer is closed, poll, byte messages, a request/response adder over a duplex pipe", s002_7),
    ("S002.9", "Lock: 100 processes buy from a file used as a database holding 1 ticket (latency 1-3 s scaled to 20 ms); exactly one is sold", s002_9),
    ("S002.10", "Semaphore(5) with 13 processes (0-3 s stays scaled to 0-150 ms): never more than 5 inside at once", s002_10),
    ("S002.11", "Event: a traffic light switching every 10 s (scaled to 300 ms); cars wait for green; police cars wait 1 s (30 ms) and go on red", s002_11),
];

fn main() -> std::process::ExitCode {
    common::run(SCENARIOS)
}

/// How long anything may take before the scenario calls it hung.
const BOUND: Duration = Duration::from_secs(10);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Waits (at most `BOUND`) for `p` to exit and returns its exit code.
fn join_bounded(p: &mut Process) -> Result<Option<i32>, String> {
    if !p.join_timeout(BOUND).context("join")? {
        let _ = p.kill();
        let _ = p.join();
        return Err(format!("{} (pid {:?}) was still running after {BOUND:?}", p.name(), p.pid()));
    }
    Ok(p.exitcode())
}

/// Waits (at most `BOUND`) for `p` to exit and checks that it exited with 0.
fn join_ok(p: &mut Process) -> Result<(), String> {
    let code = join_bounded(p)?;
    ensure!(code == Some(0), "{} (pid {:?}) exited with {code:?}", p.name(), p.pid());
    Ok(())
}

fn start_all(ps: &mut [Process]) -> Result<(), String> {
    ps.iter_mut().try_for_each(|p| p.start().context("start"))
}

fn join_all(ps: &mut [Process]) -> Result<(), String> {
    ps.iter_mut().try_for_each(join_ok)
}

/// Takes `n` items from `q`, waiting at most `BOUND` for each.
fn take<T: serde::de::DeserializeOwned>(q: &Queue<T>, n: usize) -> Result<Vec<T>, String> {
    (0..n).map(|_| q.get_timeout(BOUND).context("get")).collect()
}

// ---------------------------------------------------------------- S002.5

/// Takes one item from `q` after `wait`.
fn get_later(q: Queue<u32>, wait: Duration) {
    thread::sleep(wait);
    println!("the child took {}", q.get().expect("get"));
}

/// Puts `item` on `q` after `wait`.
fn put_later(q: Queue<u32>, item: u32, wait: Duration) {
    thread::sleep(wait);
    q.put(item).expect("put");
}

pub fn s002_5() -> Result<(), String> {
    let t = ms(50);
    let q = Queue::bounded(3).context("Queue::bounded(3)")?;
    for i in 1..=3 {
        q.put(i).context("put")?;
    }
    println!("full: {}, qsize: {}", q.full(), q.qsize());
    ensure!(q.full() && q.qsize() == 3, "after 3 puts: full {}, qsize {}", q.full(), q.qsize());
    let r = q.put_nowait(4);
    println!("put_nowait(4): {r:?}");
    ensure!(matches!(r, Err(PutError::Full(4))), "put_nowait on a full queue gave {r:?}");
    let started = Instant::now();
    let r = q.put_timeout(4, t);
    let waited = started.elapsed();
    println!("put_timeout(4, {t:?}): {r:?} after {waited:.2?}");
    ensure!(matches!(r, Err(PutError::Timeout(4))), "put_timeout on a full queue gave {r:?}");
    ensure!(waited >= t, "put_timeout gave up after {waited:?}, before {t:?}");

    // A blocking put waits until a child takes an item.
    let mut child = Process::new(get_later, (q.clone(), t * 2));
    child.start().context("start")?;
    let started = Instant::now();
    q.put(4).context("put")?;
    let waited = started.elapsed();
    println!("put(4) waited {waited:.2?} for a free place");
    join_ok(&mut child)?;
    ensure!(waited >= t, "put(4) on a full queue returned after {waited:?}");

    let got = [q.get_nowait(), q.get_nowait(), q.get_nowait()];
    println!("{got:?}");
    let got: Vec<u32> = got.into_iter().collect::<Result<_, _>>().context("get_nowait")?;
    ensure!(got == [2, 3, 4], "got {got:?}: the child should have taken 1, then FIFO 2, 3, 4");
    println!("empty: {}, qsize: {}", q.empty(), q.qsize());
    ensure!(q.empty() && q.qsize() == 0, "after 4 gets: empty {}, qsize {}", q.empty(), q.qsize());
    let r = q.get_nowait().map_err(|e| e.kind());
    println!("get_nowait(): {r:?}");
    ensure!(r == Err(ErrorKind::Empty), "get_nowait on an empty queue gave {r:?}");
    let started = Instant::now();
    let r = q.get_timeout(t).map_err(|e| e.kind());
    let waited = started.elapsed();
    println!("get_timeout({t:?}): {r:?} after {waited:.2?}");
    ensure!(r == Err(ErrorKind::Timeout), "get_timeout on an empty queue gave {r:?}");
    ensure!(waited >= t, "get_timeout gave up after {waited:?}, before {t:?}");

    // A blocking get waits until a child puts an item.
    let mut child = Process::new(put_later, (q.clone(), 5, t * 2));
    child.start().context("start")?;
    let started = Instant::now();
    let got = q.get().context("get")?;
    let waited = started.elapsed();
    println!("get() waited {waited:.2?} and got {got}");
    join_ok(&mut child)?;
    ensure!(got == 5 && waited >= t, "get() returned {got} after {waited:?}");

    q.close();
    let (put, get) = (q.put(6), q.get().map_err(|e| e.kind()));
    println!("after close(): put(6): {put:?}, get(): {get:?}");
    ensure!(matches!(put, Err(PutError::Closed(6))), "put after close gave {put:?}");
    ensure!(get == Err(ErrorKind::Closed), "get after close gave {get:?}");
    Ok(())
}

// ---------------------------------------------------------------- S002.6

const BUNS: usize = 10;

/// The seed's random 1-3 s between items, fixed per item and scaled to 10-30 ms.
fn pace(i: usize, scale_ms: u64) -> Duration {
    ms((i * 2 % 3 + 1) as u64 * scale_ms)
}

/// The seed's producer: makes the buns and puts them on `q`.
fn produce(q: &Queue<Option<String>>, scale_ms: u64) -> Result<Vec<String>, String> {
    let buns: Vec<String> = (0..BUNS).map(|i| format!("bun {i}")).collect();
    for (i, bun) in buns.iter().enumerate() {
        thread::sleep(pace(i, scale_ms));
        println!("producer made {bun}");
        q.put(Some(bun.clone())).map_err(|e| format!("put: {e}"))?;
    }
    Ok(buns)
}

/// The seed's consumer: takes buns until the sentinel `None`, and reports
/// each one on `eaten`.
fn consumer(q: Queue<Option<String>>, eaten: Queue<String>, scale_ms: u64) {
    for i in 0.. {
        thread::sleep(pace(i + 1, scale_ms));
        let Some(bun) = q.get().expect("get") else { break };
        println!("consumer got {bun}");
        eaten.put(bun).expect("report");
    }
}

/// The seed's JoinableQueue consumer: never ends; marks each item done.
fn joinable_consumer(name: String, q: JoinableQueue<String>, eaten: Queue<String>, scale_ms: u64) {
    for i in 0.. {
        thread::sleep(pace(i, scale_ms));
        let bun = q.get().expect("get");
        println!("{name} got {bun}");
        eaten.put(bun).expect("report");
        q.task_done().expect("task_done");
    }
}

/// The seed's JoinableQueue producer: puts the buns, then waits until every
/// one is marked done.
fn joinable_producer(buns: Vec<String>, q: JoinableQueue<String>) {
    for bun in buns {
        q.put(bun.clone()).expect("put");
        println!("producer made {bun}");
    }
    q.join();
}

/// Checks that `eaten` holds each of `buns` exactly once and nothing more.
fn check_eaten(eaten: &Queue<String>, buns: &[String]) -> Result<(), String> {
    let mut got = take(eaten, buns.len())?;
    ensure!(eaten.empty(), "more items were eaten than made ({} extra)", eaten.qsize());
    got.sort();
    let mut want = buns.to_vec();
    want.sort();
    ensure!(got == want, "eaten {got:?}, made {want:?}");
    Ok(())
}

/// Ends daemon consumers still waiting on their queue, as Python does when
/// the main process exits (the tour goes on, so it ends them itself).
fn end_daemons(ps: &mut [Process]) -> Result<(), String> {
    for p in ps.iter_mut() {
        ensure!(p.is_alive(), "consumer {} ended, but it loops forever", p.name());
        p.terminate().context("terminate")?;
    }
    for p in ps.iter_mut() {
        let code = join_bounded(p)?;
        ensure!(code == Some(-15), "{} exited with {code:?} after terminate", p.name());
    }
    Ok(())
}

/// Three daemon consumers named "consumer 1" to "consumer 3".
fn three_consumers(
    q: &JoinableQueue<String>,
    eaten: &Queue<String>,
    scale_ms: u64,
) -> Vec<Process> {
    (1..=3)
        .map(|i| {
            let name = format!("consumer {i}");
            let mut p =
                Process::new(joinable_consumer, (name.clone(), q.clone(), eaten.clone(), scale_ms));
            p.set_name(name);
            p.set_daemon(true).expect("set_daemon before start");
            p
        })
        .collect()
}

pub fn s002_6() -> Result<(), String> {
    let eaten = Queue::new().context("Queue::new")?;

    println!("-- no sentinel: the consumer waits for ever");
    let q = Queue::new().context("Queue::new")?;
    let mut c = Process::new(consumer, (q.clone(), eaten.clone(), 0));
    c.start().context("start")?;
    let buns = produce(&q, 0)?;
    println!("main thread");
    check_eaten(&eaten, &buns)?;
    ensure!(!c.join_timeout(ms(100)).context("join")?, "the consumer ended without a sentinel");
    println!("every bun eaten, and the consumer still waits for more: terminate it");
    c.terminate().context("terminate")?;
    join_bounded(&mut c)?;

    println!("-- the producer puts None when done");
    let mut c = Process::new(consumer, (q.clone(), eaten.clone(), 10));
    c.start().context("start")?;
    let buns = produce(&q, 10)?;
    q.put(None).map_err(|e| format!("put: {e}"))?;
    join_ok(&mut c)?;
    println!("main thread");
    check_eaten(&eaten, &buns)?;

    println!("-- JoinableQueue: a daemon consumer calls task_done, the producer join()s");
    let q = JoinableQueue::new().context("JoinableQueue::new")?;
    let mut c =
        Process::new(joinable_consumer, ("consumer".to_string(), q.clone(), eaten.clone(), 0));
    c.set_daemon(true).context("set_daemon")?;
    c.start().context("start")?;
    joinable_producer(buns.clone(), q.clone());
    println!("main thread");
    // Each consumer reports before it marks the item done.
    ensure!(eaten.qsize() == BUNS, "join() returned with {} of {BUNS} eaten", eaten.qsize());
    check_eaten(&eaten, &buns)?;
    end_daemons(std::slice::from_mut(&mut c))?;

    println!("-- one producer, three consumers");
    let mut cs = three_consumers(&q, &eaten, 10);
    start_all(&mut cs)?;
    joinable_producer(buns.clone(), q.clone());
    println!("main thread");
    check_eaten(&eaten, &buns)?;
    end_daemons(&mut cs)?;

    println!("-- the producer in a child process");
    let mut cs = three_consumers(&q, &eaten, 0);
    start_all(&mut cs)?;
    let mut p4 = Process::new(joinable_producer, (buns.clone(), q.clone()));
    p4.start().context("start")?;
    join_ok(&mut p4)?;
    println!("main thread");
    check_eaten(&eaten, &buns)?;
    end_daemons(&mut cs)
}

// ---------------------------------------------------------------- S002.7

/// The seed's pipe consumer: receives buns until end-of-file (Python's
/// `EOFError`), reporting each one.
fn pipe_consumer(right: Receiver<u32>, name: String, eaten: Queue<u32>) {
    loop {
        match right.recv() {
            Ok(bun) => {
                println!("{name} got bun {bun}");
                eaten.put(bun).expect("report");
            }
            Err(e) if e.kind() == ErrorKind::Closed => break,
            Err(e) => panic!("{name}: {e}"),
        }
    }
    println!("{name}: end of file");
}

/// Sends three byte messages, one of them empty and one of 100 kB.
fn send_raw(tx: Sender<()>) {
    for msg in raw_messages() {
        tx.send_bytes(&msg).expect("send_bytes");
    }
}

fn raw_messages() -> [Vec<u8>; 3] {
    [b"hello in bytes".to_vec(), Vec::new(), (0..100_000).map(|i| i as u8).collect()]
}

/// The adder's messages: a request, and its reply.
#[derive(Serialize, Deserialize, Debug, PartialEq)]
enum Adder {
    Add(i64, i64),
    Sum(i64),
}

/// The seed's `adder`: answers each `Add` with its `Sum` until end-of-file.
fn adder(server: Connection<Adder>, name: String) {
    loop {
        match server.recv() {
            Ok(Adder::Add(x, y)) => server.send(&Adder::Sum(x + y)).expect("send"),
            Ok(other) => panic!("{name} got {other:?}"),
            Err(e) if e.kind() == ErrorKind::Closed => break,
            Err(e) => panic!("{name}: {e}"),
        }
    }
    println!("server done");
}

pub fn s002_7() -> Result<(), String> {
    println!("-- one-way pipe: the parent produces, c1 consumes");
    // The first end receives, the second sends (`right.send(..)` would not
    // compile: a `Receiver` has no `send`). The child gets only the end it
    // uses: once moved into `Process::new` and started, the parent has no
    // copy of it left to close.
    let (right, left) = pipe_one_way::<u32>().context("pipe")?;
    let eaten = Queue::new().context("Queue::new")?;
    let mut c1 = Process::new(pipe_consumer, (right, "c1".to_string(), eaten.clone()));
    c1.start().context("start")?;
    for bun in 0..10 {
        left.send(&bun).context("send")?;
    }
    let got = take(&eaten, 10)?;
    ensure!(got == (0..10).collect::<Vec<_>>(), "c1 got {got:?}");
    // Every bun is in, but the parent's writer is still open: no end-of-file.
    let ended = c1.join_timeout(ms(200)).context("join")?;
    println!("c1 ended while the parent's writer was open: {ended}");
    ensure!(!ended, "c1 saw end-of-file while a writer was still open");
    left.close();
    join_ok(&mut c1)?;
    println!("main process");

    println!("-- byte messages; poll");
    let (rx, tx) = pipe_one_way::<()>().context("pipe")?;
    let mut sender = Process::new(send_raw, tx);
    sender.start().context("start")?;
    for want in raw_messages() {
        ensure!(rx.poll(Some(BOUND)).context("poll")?, "no message within {BOUND:?}");
        let got = rx.recv_bytes().context("recv_bytes")?;
        println!("recv_bytes: {} bytes", got.len());
        ensure!(got == want, "got {} bytes, sent {}", got.len(), want.len());
    }
    join_ok(&mut sender)?;
    // The only writer was the child's: poll says end-of-file is ready.
    ensure!(rx.poll(Some(BOUND)).context("poll")?, "poll does not report end-of-file");
    let eof = rx.recv_bytes().map_err(|e| e.kind());
    println!("after the sender exited: {eof:?}");
    ensure!(eof == Err(ErrorKind::Closed), "recv_bytes after every writer closed gave {eof:?}");

    println!("-- request/response over a duplex pipe: the adder");
    let (server, client) = pipe::<Adder>().context("pipe")?;
    let mut c1 = Process::new(adder, (server, "c1".to_string()));
    c1.start().context("start")?;
    let early = client.poll(Some(ms(50))).context("poll")?;
    ensure!(!early, "a reply is ready before any request");
    for (x, y) in [(10, 20), (-7, 7), (1 << 40, 1)] {
        client.send(&Adder::Add(x, y)).context("send")?;
        let reply = client.recv_timeout(BOUND).context("recv")?;
        println!("{x} + {y}: {reply:?}");
        ensure!(reply == Adder::Sum(x + y), "{x} + {y} came back as {reply:?}");
    }
    ensure!(
        !c1.join_timeout(ms(50)).context("join")?,
        "the server ended while the client was open"
    );
    client.close();
    join_ok(&mut c1)?;
    println!("main process");
    Ok(())
}

// ---------------------------------------------------------------- S002.9

/// A file in the temporary directory, removed when dropped.
struct TempFile(PathBuf);

impl TempFile {
    fn new(what: &str) -> TempFile {
        let path = std::env::temp_dir().join(format!("multiproc-{what}-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        TempFile(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Writes the database: the seed's `{"count": 1}`.
fn write_db(path: &str, count: u32) {
    std::fs::write(path, format!("{{\"count\": {count}}}")).expect("write the database");
}

/// Reads the ticket count back: a two-line JSON reader for this one object,
/// as the crate has no JSON library.
fn read_db(path: &str) -> u32 {
    let text = std::fs::read_to_string(path).expect("read the database");
    let (_, after) = text.split_once("\"count\":").expect("a \"count\" field");
    after.trim().trim_end_matches('}').trim().parse().expect("a ticket count")
}

/// The seed's `work`: under the lock, reads the count and, if a ticket is
/// left, takes it, waits for the "network", and writes the count back.
fn buy(db: String, lock: Lock, bought: Queue<bool>) {
    let _guard = lock.acquire().expect("take the lock");
    let count = read_db(&db);
    let got = count > 0;
    if got {
        thread::sleep(ms(20));
        write_db(&db, count - 1);
        println!("{} bought a ticket", std::process::id());
    } else {
        println!("{} could not buy a ticket", std::process::id());
    }
    bought.put(got).expect("report");
}

pub fn s002_9() -> Result<(), String> {
    let db = TempFile::new("s002_9-db.json");
    let path = db.0.to_string_lossy().into_owned();
    write_db(&path, 1);
    let (lock, bought) = (Lock::new().context("Lock::new")?, Queue::new().context("Queue")?);
    let mut ps: Vec<Process> =
        (0..100).map(|_| Process::new(buy, (path.clone(), lock.clone(), bought.clone()))).collect();
    start_all(&mut ps)?;
    join_all(&mut ps)?;
    println!("main thread");
    let reports = take(&bought, 100)?;
    let sold = reports.iter().filter(|b| **b).count();
    let left = read_db(&path);
    println!("{sold} ticket sold, {} refused; the database says {left} left", 100 - sold);
    ensure!(sold == 1, "{sold} tickets sold from a database holding 1");
    ensure!(left == 0, "the database says {left} tickets left");
    Ok(())
}

// ---------------------------------------------------------------- S002.10

/// The seed's `randint(0, 3)` seconds in the stall, fixed per user.
const STAYS: [u64; 13] = [2, 0, 3, 1, 2, 3, 1, 0, 3, 2, 1, 2, 0];

/// Slots of the counter array: users inside now, most ever inside, users who got in.
const INSIDE: usize = 0;
const MOST: usize = 1;
const ENTERED: usize = 2;

/// The seed's `go_wc`: takes a unit of the semaphore, stays, gives it back.
/// It counts who is inside in `counts`.
fn go_wc(sem: Semaphore, user: String, stay: Duration, counts: Array<u32>) {
    let _unit = sem.acquire();
    let inside = {
        let mut c = counts.lock().expect("lock the counters");
        c[INSIDE] += 1;
        c[ENTERED] += 1;
        c[MOST] = c[MOST].max(c[INSIDE]);
        c[INSIDE]
    };
    println!("{user} took a stall ({inside} inside)");
    thread::sleep(stay);
    counts.lock().expect("lock the counters")[INSIDE] -= 1;
}

pub fn s002_10() -> Result<(), String> {
    let sem = Semaphore::new(5).context("Semaphore::new(5)")?;
    let counts = Array::from_slice(&[0u32; 3]).context("Array")?;
    let mut ps: Vec<Process> = STAYS
        .iter()
        .enumerate()
        .map(|(i, s)| {
            Process::new(go_wc, (sem.clone(), format!("user{i}"), ms(s * 50), counts.clone()))
        })
        .collect();
    start_all(&mut ps)?;
    join_all(&mut ps)?;
    println!("============>");
    let c = counts.to_vec();
    println!("at most {} inside at once; {} got in", c[MOST], c[ENTERED]);
    ensure!(c[ENTERED] == 13, "{} of 13 users got in", c[ENTERED]);
    ensure!(c[MOST] <= 5, "{} users were inside at once with Semaphore(5)", c[MOST]);
    ensure!(c[MOST] >= 2, "never more than one inside: the semaphore acted as a lock");
    ensure!(
        c[INSIDE] == 0 && sem.get_value() == 5,
        "left inside {}, free {}",
        c[INSIDE],
        sem.get_value()
    );
    Ok(())
}

// ---------------------------------------------------------------- S002.11

/// The seed's second, scaled down to 30 ms.
const LIGHT_SECOND: u64 = 30;

/// What a car reports when it goes: its kind and number, whether the light
/// was green, and how many times the light had switched.
type Went = (String, u32, bool, u32);

/// The seed's `car`: waits for green; once moving (3-6 s, fixed per car),
/// goes if it is still green, or waits again.
fn car(e: Event, n: u32, switches: Value<u32>, went: Queue<Went>) {
    loop {
        if !e.is_set() {
            println!("red light, car{n} waits");
            e.wait();
            println!("car{n} sees the green light");
        }
        thread::sleep(ms((3 + u64::from(n) % 4) * LIGHT_SECOND));
        if !e.is_set() {
            continue;
        }
        println!("go, car{n}");
        went.put(("car".to_string(), n, true, switches.get())).expect("report");
        break;
    }
}

/// The seed's `police_car`: on red it waits 1 s for green at most, then goes
/// whatever the light. (The seed's version spins while the light is green;
/// this one just goes.) It reports on `arrived` when it reaches the light.
fn police_car(e: Event, n: u32, arrived: Queue<u32>, switches: Value<u32>, went: Queue<Went>) {
    arrived.put(n).expect("report");
    let green = if e.is_set() {
        true
    } else {
        println!("red light, police car{n} waits");
        e.wait_timeout(ms(LIGHT_SECOND))
    };
    println!("the light is {green}, police car{n} goes");
    went.put(("police car".to_string(), n, green, switches.get())).expect("report");
}

/// The seed's `traffic_lights`: switches the light every `interval`, for
/// ever; `switches` counts the switches.
fn traffic_lights(e: Event, interval: Duration, switches: Value<u32>) {
    loop {
        thread::sleep(interval);
        *switches.lock().expect("lock") += 1;
        if e.is_set() {
            println!("the light turns red");
            e.clear();
        } else {
            println!("the light turns green");
            e.set();
        }
    }
}

pub fn s002_11() -> Result<(), String> {
    let e = Event::new().context("Event::new")?;
    let went = Queue::new().context("Queue::new")?;
    let switches = Value::new(0u32).context("Value::new")?;
    let arrived = Queue::new().context("Queue::new")?;
    let mut police: Vec<Process> = (0..5)
        .map(|n| {
            let args = (e.clone(), n, arrived.clone(), switches.clone(), went.clone());
            Process::new(police_car, args)
        })
        .collect();
    start_all(&mut police)?;
    // As in the seed the police cars come first; the light starts once they
    // are all at it, so that a slow start cannot show one a green light.
    take(&arrived, 5)?;
    let interval = ms(10 * LIGHT_SECOND);
    let mut light = Process::new(traffic_lights, (e.clone(), interval, switches.clone()));
    light.start().context("start")?;
    let mut cars: Vec<Process> =
        (0..5).map(|n| Process::new(car, (e.clone(), n, switches.clone(), went.clone()))).collect();
    start_all(&mut cars)?;
    println!("============>");
    join_all(&mut police)?;
    let police_went = take(&went, 5)?;
    join_all(&mut cars)?;
    let cars_went = take(&went, 5)?;
    // The seed's light runs for ever; ours stops once every car is gone.
    light.terminate().context("terminate")?;
    let code = join_bounded(&mut light)?;
    ensure!(code == Some(-15), "the light exited with {code:?}");

    let on_green = |went: &[Went]| went.iter().filter(|w| w.2).count();
    println!(
        "police cars gone on green: {}; cars gone on green: {}",
        on_green(&police_went),
        on_green(&cars_went)
    );
    ensure!(
        police_went.iter().all(|w| w.0 == "police car"),
        "a car went before the police: {police_went:?}"
    );
    ensure!(on_green(&police_went) == 0, "police cars waited for the green light: {police_went:?}");
    ensure!(
        cars_went.iter().all(|w| w.0 == "car" && w.3 >= 1),
        "a car went before the light first turned green: {cars_went:?}"
    );
    Ok(())
}
