//! Seed 002, processes: starting them from a function or from a type that
//! implements `Run`, a TCP upper-casing server with a process per client and
//! then a pool, the `Process` methods and attributes, and processes sharing
//! the terminal and one file. (Queues, pipes and locks are in
//! `s002_ipc.rs`.)
//!
//! The seed's sleeps of seconds are scaled down tenfold or more, and its
//! random sleeps are fixed per process, so that every run does the same.
//!
//! `cargo run --release --example s002_processes [-- S002.3 ...]`

#[macro_use]
#[path = "common/mod.rs"]
mod common;

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

use common::Context;
use multiproc::{current_process, ErrorKind, Event, Fd, Lock, Pool, Process, Queue, Run};
use serde::{Deserialize, Serialize};

pub const SCENARIOS: &[common::Scenario] = &[
    ("S002.1", "Processes from a function with arguments and from a Run type (1-4 s naps scaled to 100-400 ms): the parent prints at once; the four run side by side", s002_1),
    ("S002.2", "TCP upper-casing server on 127.0.0.1: a process per client (the socket passed as Fd), then Pool(4) serving 6 clients, 2 of which wait", s002_2),
    ("S002.3", "terminate, is_alive, kill, a lock freed by a killed holder, daemon with join(timeout), name, pid, exitcode (0, -15, -9)", s002_3),
    ("S002.4", "Processes share the terminal (20 loggers print their names) and one file (5 processes append 20 lines each; none lost)", s002_4),
];

fn main() -> std::process::ExitCode {
    common::run(SCENARIOS)
}

/// The seed's second, scaled down tenfold.
const SECOND: Duration = Duration::from_millis(100);

/// How long anything may take before the scenario calls it hung.
const BOUND: Duration = Duration::from_secs(10);

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

// ---------------------------------------------------------------- S002.1

const NAMES: [&str; 4] = ["egon", "alex", "wupeiqi", "yuanhao"];
/// The seed's `random.randrange(1, 5)` seconds, fixed per process.
const NAPS: [u32; 4] = [3, 1, 4, 2];

/// The seed's `piao`: prints, naps, prints; then reports its name and pid.
fn piao(name: String, seconds: u32, done: Queue<(String, u32)>) {
    println!("{name} piaoing");
    thread::sleep(SECOND * seconds);
    println!("{name} piao end");
    done.put((name, std::process::id())).expect("report to the parent");
}

/// The seed's `class Piao(Process)` with its `run`. Its name is the
/// process's name, set by the parent with `set_name` as the seed sets
/// `self.name`.
#[derive(Serialize, Deserialize)]
struct Piao {
    seconds: u32,
    done: Queue<(String, u32)>,
}

impl Run for Piao {
    fn run(self) {
        let name = current_process().name;
        println!("{name} is piaoing");
        thread::sleep(SECOND * self.seconds);
        println!("{name} is piao end");
        self.done.put((name, std::process::id())).expect("report to the parent");
    }
}

/// Starts `ps`, prints "main thread" at once, then joins them and checks
/// that the parent did not wait and that the children ran side by side.
fn start_and_carry_on(ps: &mut [Process], done: &Queue<(String, u32)>) -> Result<(), String> {
    let started = Instant::now();
    for p in ps.iter_mut() {
        p.start().context("start")?;
    }
    println!("main thread");
    let finished_first = done.qsize();
    let printed_at = started.elapsed();
    for p in ps.iter_mut() {
        join_ok(p)?;
    }
    let took = started.elapsed();
    let mut got = Vec::new();
    for _ in 0..ps.len() {
        got.push(done.get_timeout(BOUND).context("a child's report")?);
    }
    got.sort();
    let mut want: Vec<(String, u32)> =
        ps.iter().map(|p| (p.name().to_string(), p.pid().unwrap_or(0))).collect();
    want.sort();
    println!(
        "\"main thread\" printed {printed_at:.2?} after the first start; all done in {took:.2?}"
    );
    ensure!(
        finished_first == 0,
        "{finished_first} children had finished before the parent printed: start() should not wait"
    );
    ensure!(got == want, "the children reported {got:?}, want {want:?}");
    let total: u32 = NAPS.iter().sum();
    let (longest, sum) = (SECOND * *NAPS.iter().max().unwrap_or(&0), SECOND * total);
    ensure!(took >= longest, "all done in {took:?}, before the longest nap ({longest:?})");
    ensure!(
        took < sum * 3 / 4,
        "all done in {took:?}: side by side they take about {longest:?}, one after another {sum:?}"
    );
    Ok(())
}

pub fn s002_1() -> Result<(), String> {
    let done = Queue::new().context("Queue::new")?;
    println!("-- way 1: Process::new(piao, args)");
    let mut ps: Vec<Process> = NAMES
        .iter()
        .zip(NAPS)
        .map(|(name, s)| {
            let mut p = Process::new(piao, (name.to_string(), s, done.clone()));
            p.set_name(*name);
            p
        })
        .collect();
    start_and_carry_on(&mut ps, &done)?;

    println!("-- way 2: Process::from_run(Piao {{ .. }})");
    let mut ps: Vec<Process> = NAMES
        .iter()
        .zip(NAPS)
        .map(|(name, seconds)| {
            let mut p = Process::from_run(Piao { seconds, done: done.clone() });
            p.set_name(*name);
            p
        })
        .collect();
    start_and_carry_on(&mut ps, &done)
}

// ---------------------------------------------------------------- S002.2

/// Messages each client sends, one after another.
const MESSAGES: usize = 3;

/// The seed's `talk`: sends back what the client sends, upper-cased, until
/// the client closes. Returns the pid that served it.
fn talk(conn: Fd<TcpStream>, client_addr: String) -> u32 {
    let pid = std::process::id();
    println!("process {pid} talks to {client_addr}");
    let mut conn = conn.into_inner();
    let _ = conn.set_read_timeout(Some(BOUND));
    let mut buf = [0; 1024];
    loop {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if conn.write_all(&buf[..n].to_ascii_uppercase()).is_err() {
                    break;
                }
            }
        }
    }
    pid
}

/// The seed's client: sends `MESSAGES` lines, pausing between them, and
/// returns each line with its reply.
fn client(addr: SocketAddr, id: usize, pause: Duration) -> std::io::Result<Vec<(String, String)>> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(BOUND))?;
    let mut talked = Vec::new();
    for j in 0..MESSAGES {
        if j > 0 {
            thread::sleep(pause);
        }
        let msg = format!("hello from client {id}, message {j}");
        s.write_all(msg.as_bytes())?;
        let mut reply = vec![0; msg.len()];
        s.read_exact(&mut reply)?;
        let reply = String::from_utf8_lossy(&reply).into_owned();
        println!(">>: {msg}\n{reply}");
        talked.push((msg, reply));
    }
    Ok(talked)
}

/// Accepts one connection, giving up at `deadline`.
fn accept(server: &TcpListener, deadline: Instant) -> Result<(TcpStream, SocketAddr), String> {
    loop {
        match server.accept() {
            Ok((conn, addr)) => {
                conn.set_nonblocking(false).context("set_nonblocking")?;
                return Ok((conn, addr));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                ensure!(Instant::now() < deadline, "no client connected within {BOUND:?}");
                thread::sleep(Duration::from_millis(1));
            }
            Err(e) => return Err(format!("accept: {e}")),
        }
    }
}

type Client = thread::JoinHandle<std::io::Result<Vec<(String, String)>>>;

/// Starts `n` clients of `addr`, each pausing `pause` between messages.
fn start_clients(addr: SocketAddr, n: usize, pause: Duration) -> Vec<Client> {
    (0..n).map(|id| thread::spawn(move || client(addr, id, pause))).collect()
}

/// Waits for the clients and checks that every reply is its line upper-cased.
fn check_clients(clients: Vec<Client>) -> Result<(), String> {
    for (id, c) in clients.into_iter().enumerate() {
        let talked = c.join().map_err(|_| format!("client {id} panicked"))?;
        let talked = talked.context(&format!("client {id}"))?;
        ensure!(talked.len() == MESSAGES, "client {id} exchanged {} messages", talked.len());
        for (msg, reply) in talked {
            ensure!(reply == msg.to_uppercase(), "client {id} sent {msg:?} and got {reply:?}");
        }
    }
    Ok(())
}

pub fn s002_2() -> Result<(), String> {
    let server = TcpListener::bind("127.0.0.1:0").context("bind 127.0.0.1:0")?;
    server.set_nonblocking(true).context("set_nonblocking")?;
    let addr = server.local_addr().context("local_addr")?;
    println!("server on {addr}");

    println!("-- a process per client");
    const CLIENTS: usize = 4;
    let clients = start_clients(addr, CLIENTS, Duration::from_millis(10));
    let deadline = Instant::now() + BOUND;
    let mut talkers = Vec::new();
    for _ in 0..CLIENTS {
        let (conn, client_addr) = accept(&server, deadline)?;
        let mut p = Process::new(talk, (Fd::new(conn), client_addr.to_string()));
        p.start().context("start")?;
        talkers.push(p);
    }
    check_clients(clients)?;
    for p in &mut talkers {
        join_ok(p)?;
    }

    println!("-- Pool(4) serving 6 clients");
    // Each client holds its connection for two pauses, and a worker serves
    // one connection at a time: two clients wait for a free worker.
    const POOLED: usize = 6;
    let pause = Duration::from_millis(30);
    let hold = pause * (MESSAGES as u32 - 1);
    let started = Instant::now();
    let pool = Pool::new(4).context("Pool::new(4)")?;
    let clients = start_clients(addr, POOLED, pause);
    let mut served = Vec::new();
    for _ in 0..POOLED {
        let (conn, client_addr) = accept(&server, deadline)?;
        served.push(pool.apply_async(talk, (Fd::new(conn), client_addr.to_string())));
    }
    check_clients(clients)?;
    let took = started.elapsed();
    let mut pids = Vec::new();
    for r in &served {
        pids.push(r.get_timeout(BOUND).context("a pool's talk")?);
    }
    pool.close();
    pool.join().context("join")?;
    pids.sort();
    pids.dedup();
    println!("{POOLED} clients served by worker pids {pids:?} in {took:.2?}");
    let parent = std::process::id();
    ensure!(pids.len() <= 4, "{} workers served, more than the pool's 4", pids.len());
    ensure!(!pids.contains(&parent), "the parent served a client itself");
    ensure!(
        took >= hold * 2,
        "done in {took:?}: 6 clients on 4 workers need two rounds of {hold:?}"
    );
    Ok(())
}

// ---------------------------------------------------------------- S002.3

/// Takes the lock, says so, and holds it far longer than the scenario lasts.
fn hold_lock(lock: Lock, holding: Event) {
    let _guard = lock.acquire().expect("take the lock");
    holding.set();
    thread::sleep(BOUND);
}

/// Naps two seconds (scaled), then sets `finished`.
fn nap_then_set(finished: Event) {
    println!("{} is piaoing", current_process().name);
    thread::sleep(SECOND * 2);
    println!("{} is piao end", current_process().name);
    finished.set();
}

/// The seed's daemon example, run in a child so that its end can be seen:
/// starts `nap_then_set` (a daemon or not), waits 0.1 ms for it, prints
/// "start" and returns. A daemon dies with this process; a non-daemon child is
/// waited for before this process exits.
fn daemon_parent(daemon: bool, finished: Event) {
    let mut p = Process::new(nap_then_set, finished);
    p.set_name("egon");
    p.set_daemon(daemon).expect("set_daemon before start");
    p.start().expect("start");
    let exited = p.join_timeout(Duration::from_micros(100)).expect("join_timeout");
    assert!(!exited, "the child ended within 0.1 ms of a 200 ms nap");
    println!("start");
}

pub fn s002_3() -> Result<(), String> {
    println!("-- terminate() and is_alive()");
    let done = Queue::new().context("Queue::new")?;
    let mut p1 = Process::from_run(Piao { seconds: 2, done: done.clone() });
    p1.set_name("egon1");
    ensure!(p1.exitcode().is_none(), "exitcode before start: {:?}", p1.exitcode());
    p1.start().context("start")?;
    p1.terminate().context("terminate")?;
    // The signal is on its way: the child may still be alive here (usually
    // it is), as the seed says.
    println!("{}", p1.is_alive());
    println!("start");
    let code = join_bounded(&mut p1)?;
    let alive = p1.is_alive();
    println!("{alive}");
    ensure!(!alive, "is_alive() after join is true");
    println!("exitcode after terminate: {code:?}");
    ensure!(code == Some(-15), "exitcode after terminate is {code:?}, want Some(-15)");
    ensure!(done.empty(), "the terminated child finished its run");
    let late = p1.set_daemon(true).map(|_| ()).map_err(|e| e.kind());
    ensure!(late == Err(ErrorKind::InvalidState), "set_daemon after start gave {late:?}");

    println!("-- kill() of a process holding a lock: the lock is not lost");
    let (lock, holding) = (Lock::new().context("Lock::new")?, Event::new().context("Event")?);
    let mut holder = Process::new(hold_lock, (lock.clone(), holding.clone()));
    holder.start().context("start")?;
    ensure!(holding.wait_timeout(BOUND), "the holder never took the lock");
    holder.kill().context("kill")?;
    let code = join_bounded(&mut holder)?;
    println!("exitcode after kill: {code:?}");
    ensure!(code == Some(-9), "exitcode after kill is {code:?}, want Some(-9)");
    let guard = lock.acquire_timeout(BOUND).context("acquire")?;
    let Some(guard) = guard else { return Err("the dead holder's lock stayed taken".into()) };
    println!("lock taken; its previous owner died: {}", guard.previous_owner_died());
    ensure!(guard.previous_owner_died(), "the guard should say its previous owner died");
    drop(guard);

    println!("-- daemon = true, join(0.1 ms): the daemon dies with its parent");
    let finished = Event::new().context("Event::new")?;
    let mut parent = Process::new(daemon_parent, (true, finished.clone()));
    parent.start().context("start")?;
    join_ok(&mut parent)?;
    let outlived = finished.wait_timeout(SECOND * 4);
    ensure!(!outlived, "the daemon finished its nap after its parent exited");
    println!("-- the same with daemon = false: the parent waits for it");
    let mut parent = Process::new(daemon_parent, (false, finished.clone()));
    parent.start().context("start")?;
    join_ok(&mut parent)?;
    ensure!(finished.is_set(), "the parent exited before its non-daemon child finished");

    println!("-- name and pid");
    let unnamed = Process::new(nap_then_set, finished.clone());
    ensure!(unnamed.name().starts_with("Process-"), "default name {:?}", unnamed.name());
    drop(unnamed);
    let mut p = Process::from_run(Piao { seconds: 1, done: done.clone() });
    p.set_name("egon");
    p.start().context("start")?;
    println!("start");
    let pid = p.pid();
    println!("{}", pid.unwrap_or(0));
    ensure!(p.exitcode().is_none(), "exitcode while running: {:?}", p.exitcode());
    join_ok(&mut p)?;
    let (name, child_pid) = done.get_timeout(BOUND).context("the child's report")?;
    ensure!(name == "egon", "the child calls itself {name:?}, the parent named it \"egon\"");
    ensure!(pid == Some(child_pid), "pid() is {pid:?}, the child's own pid is {child_pid}");
    println!("exitcode after a normal end: {:?}", p.exitcode());
    Ok(())
}

// ---------------------------------------------------------------- S002.4

/// The seed's `Logger`: a process whose run prints its name.
#[derive(Serialize, Deserialize)]
struct Logger;

impl Run for Logger {
    fn run(self) {
        println!("{}", current_process().name);
    }
}

/// Lines each writer appends.
const LINES: usize = 20;

/// The seed's `work(f, msg)`: writes to a file opened by the parent. Each
/// line goes in one `write` to a file opened for appending, so no line is
/// torn or overwritten.
fn work(mut f: Fd<File>, msg: String) {
    for j in 0..LINES {
        f.write_all(format!("{msg} line {j}\n").as_bytes()).expect("write to the shared file");
    }
    f.flush().expect("flush");
}

pub fn s002_4() -> Result<(), String> {
    println!("-- the terminal: 20 loggers (the seed starts 1,000,000)");
    let mut loggers: Vec<Process> = (1..=20)
        .map(|i| {
            let mut p = Process::from_run(Logger);
            // Python names an instance of a `Process` subclass after the class.
            p.set_name(format!("Logger-{i}"));
            p
        })
        .collect();
    for p in &mut loggers {
        p.start().context("start")?;
    }
    for p in &mut loggers {
        join_ok(p)?;
    }

    println!("-- one file: 5 processes append to the file the parent opened");
    let tmp = TempFile::new("s002_4.txt");
    let f = OpenOptions::new().create(true).append(true).open(&tmp.0).context("open")?;
    let mut writers = Vec::new();
    for i in 0..5 {
        let f = f.try_clone().context("try_clone")?;
        let mut p = Process::new(work, (Fd::new(f), i.to_string()));
        p.start().context("start")?;
        writers.push(p);
    }
    for p in &mut writers {
        join_ok(p)?;
    }
    let text = std::fs::read_to_string(&tmp.0).context("read the file back")?;
    let mut got: Vec<&str> = text.lines().collect();
    println!("{} lines, the first: {:?}", got.len(), &got[..got.len().min(3)]);
    got.sort();
    let mut want: Vec<String> =
        (0..5).flat_map(|i| (0..LINES).map(move |j| format!("{i} line {j}"))).collect();
    want.sort();
    ensure!(got == want, "the file holds {} lines, not the {} written", got.len(), want.len());
    Ok(())
}
