//! Seed 000, Pool basics: `map`, `apply`, `apply_async`, return values,
//! callbacks and a small crawler, as the tutorial shows them with Python's
//! `multiprocessing.Pool`.
//!
//! `cargo run --release --example s000_pool_basics [-- S000.3 ...]`

#[macro_use]
#[path = "common/mod.rs"]
mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use common::Context;
use multiproc::{ErrorKind, Pool, Process};

pub const SCENARIOS: &[common::Scenario] = &[
    ("S000.1", "Pool(5).map over 1000 tasks sleeping 0.1 s, scaled to 100 tasks x 10 ms, with a progress hook; close() then join(), stats(), then the main process prints", s000_1),
    ("S000.2", "1000 trivial tasks: Pool(5).map (creation and close/join included) against 1000 processes started one per task", s000_2),
    ("S000.3", "apply is synchronous: 20 tasks of 0.1 s (scaled to 10 ms) in Pool(5) run one after another", s000_3),
    ("S000.4", "apply_async of 1000 tasks returns at once; close() and join() wait for them all (workers print every 100th)", s000_4),
    ("S000.5", "Return values: map returns the list, apply the value, apply_async an AsyncResult to get() after join(); get() inside the submit loop makes it serial", s000_5),
    ("S000.6", "Callbacks run in the main process with the task's value; get() still returns the task's value", s000_6),
    ("S000.7", "Crawler: apply_async(get_url) over 5 pages of a local HTTP server (100 ms latency each); the callback prints url, status, length", s000_7),
];

fn main() -> std::process::ExitCode {
    common::run(SCENARIOS)
}

/// The seed's 0.1 s sleep, scaled down tenfold.
const SLEEP: Duration = Duration::from_millis(10);

/// The seed's `fun`: sleeps, prints `i + 1`. It also returns it (Python's
/// returns `None`) so the scenario can check every task ran.
fn fun(i: u32) -> u32 {
    thread::sleep(SLEEP);
    println!("{}", i + 1);
    i + 1
}

/// The seed's trivial `fun`: `i += 1`, nothing printed.
fn increment(i: u32) -> u32 {
    i + 1
}

/// `increment`, printing every 100th number so that the log stays readable.
fn increment_and_print(i: u32) -> u32 {
    if (i + 1) % 100 == 0 {
        println!("{}", i + 1);
    }
    i + 1
}

/// Sleeps `ms` milliseconds and returns them.
fn nap(ms: u64) -> u64 {
    thread::sleep(Duration::from_millis(ms));
    ms
}

/// The seed's callback task: `i * '*'`.
fn stars(i: usize) -> String {
    "*".repeat(i)
}

pub fn s000_1() -> Result<(), String> {
    const N: u32 = 100;
    let started = Instant::now();
    let pool = Pool::new(5).context("Pool::new(5)")?;
    // Python: `join` must come after `close` or `terminate`, else an error.
    let early = pool.join();
    ensure!(
        matches!(&early, Err(e) if e.kind() == ErrorKind::PoolStillRunning),
        "join() before close() should fail with PoolStillRunning, got {early:?}"
    );
    println!("join() before close(): {}", early.unwrap_err());
    // Not in the seed: the map reports its progress (a closure here; with
    // the `progress` feature, `multiproc::progress::bar()` draws a bar).
    let quarter = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let seen = quarter.clone();
    let progress = move |done: u64, total: Option<u64>| {
        let total = total.unwrap_or(u64::from(N));
        let q = done * 4 / total.max(1);
        if q > seen.swap(q, std::sync::atomic::Ordering::Relaxed) {
            println!("progress: {done}/{total} tasks done");
        }
    };
    let out = pool.progress(progress).map(fun, 0..N).context("map")?;
    pool.close();
    pool.join().context("join")?;
    let took = started.elapsed();
    println!("------ main process ------ ({N} tasks in {took:.2?})");
    // Not in the seed: what each worker did (mpire's worker insights).
    let stats = pool.stats();
    println!("{stats}");
    let busy = stats.total().busy;
    ensure!(
        busy >= SLEEP * N * 9 / 10,
        "the workers were busy {busy:?}, less than the {:?} they slept",
        SLEEP * N
    );
    ensure!(
        quarter.load(std::sync::atomic::Ordering::Relaxed) == 4,
        "the progress hook did not hear the last task"
    );
    ensure!(out == (1..=N).collect::<Vec<_>>(), "map returned {out:?}, not 1..={N}");
    let (ideal, serial) = (SLEEP * N / 5, SLEEP * N);
    ensure!(took >= ideal, "{took:?} is faster than 5 workers can sleep ({ideal:?})");
    ensure!(
        took < serial * 3 / 4,
        "{took:?}: 5 workers should take about {ideal:?}, not near the serial {serial:?}"
    );
    Ok(())
}

pub fn s000_2() -> Result<(), String> {
    const N: u32 = 1000;
    let started = Instant::now();
    let pool = Pool::new(5).context("Pool::new(5)")?;
    let out = pool.map(increment, 0..N).context("map")?;
    pool.close();
    pool.join().context("join")?;
    let pool_time = started.elapsed();
    println!("Pool(5).map of {N} tasks: {pool_time:.3?}");
    ensure!(out == (1..=N).collect::<Vec<_>>(), "map returned wrong values");

    // As the seed: start every process, then join them all.
    let started = Instant::now();
    let mut processes = Vec::with_capacity(N as usize);
    for i in 0..N {
        let mut p = Process::new(increment, i);
        p.start().context("Process::start")?;
        processes.push(p);
    }
    for p in &mut processes {
        p.join().context("Process::join")?;
    }
    let process_time = started.elapsed();
    println!("{N} processes, one per task: {process_time:.3?}");
    println!("the pool is {:.0}x faster", process_time.as_secs_f64() / pool_time.as_secs_f64());
    for p in &mut processes {
        let code = p.exitcode();
        ensure!(code == Some(0), "{} exited with {code:?}", p.name());
    }
    ensure!(
        pool_time < process_time,
        "the pool ({pool_time:?}) should beat one process per task ({process_time:?})"
    );
    Ok(())
}

pub fn s000_3() -> Result<(), String> {
    const N: u32 = 20;
    let pool = Pool::new(5).context("Pool::new(5)")?;
    let started = Instant::now();
    for i in 0..N {
        // `apply` waits for the task: its value is there when it returns.
        let v = pool.apply(fun, i).context("apply")?;
        ensure!(v == i + 1, "apply(fun, {i}) returned {v}");
    }
    let took = started.elapsed();
    pool.close();
    pool.join().context("join")?;
    println!("------ main process ------ ({N} applies in {took:.2?})");
    // Five workers running in parallel would need only a fifth of this.
    ensure!(
        took >= SLEEP * N,
        "{took:?} < {:?}: the applies overlapped, so apply was not synchronous",
        SLEEP * N
    );
    Ok(())
}

pub fn s000_4() -> Result<(), String> {
    const N: u32 = 1000;
    let pool = Pool::new(5).context("Pool::new(5)")?;
    let submitted = Instant::now();
    let results: Vec<_> = (0..N).map(|i| pool.apply_async(increment_and_print, i)).collect();
    println!(
        "submitted {N} tasks in {:.2?}; the main process goes on at once",
        submitted.elapsed()
    );
    pool.close();
    pool.join().context("join")?;
    println!("------ main process ------ (all done after {:.2?})", submitted.elapsed());
    // join() waited for every queued task, so all results are in.
    for (i, r) in (0..N).zip(&results) {
        ensure!(r.ready(), "task {i} was not done after close() and join()");
    }
    for (i, r) in (0..N).zip(results) {
        ensure!(r.get().ok() == Some(i + 1), "task {i} has a wrong result");
    }
    Ok(())
}

pub fn s000_5() -> Result<(), String> {
    let pool = Pool::new(5).context("Pool::new(5)")?;
    // map returns the list.
    let res = pool.map(fun, 0..20).context("map")?;
    println!("map: {res:?}");
    ensure!(res == (1..=20).collect::<Vec<u32>>(), "map returned {res:?}");

    // apply returns the value itself, no get() needed.
    let res_l = (0..1000)
        .map(|i| pool.apply(increment, i))
        .collect::<Result<Vec<_>, _>>()
        .context("apply")?;
    println!("apply x1000: {:?} ... {:?}", &res_l[..5], &res_l[995..]);
    ensure!(res_l == (1..=1000).collect::<Vec<u32>>(), "apply returned wrong values");

    // apply_async returns an AsyncResult; collect them, get() after join().
    let pending: Vec<_> = (0..1000).map(|i| pool.apply_async(increment, i)).collect();
    pool.close();
    pool.join().context("join")?;
    let got = pending.into_iter().map(|r| r.get()).collect::<Result<Vec<_>, _>>().context("get")?;
    println!("apply_async x1000, get() after join(): {:?} ...", &got[..5]);
    ensure!(got == (1..=1000).collect::<Vec<u32>>(), "get returned wrong values");

    // The seed's warning: get() inside the submit loop waits for each task.
    const MS: u64 = 30;
    let pool = Pool::new(5).context("Pool::new(5)")?;
    let started = Instant::now();
    for _ in 0..10 {
        pool.apply_async(nap, MS).get().context("get")?;
    }
    let in_loop = started.elapsed();
    let started = Instant::now();
    let pending: Vec<_> = (0..10).map(|_| pool.apply_async(nap, MS)).collect();
    for r in pending {
        r.get().context("get")?;
    }
    let after = started.elapsed();
    println!("10 tasks of {MS} ms: get() in the loop {in_loop:.2?}, get() after submitting all {after:.2?}");
    ensure!(in_loop >= Duration::from_millis(10 * MS), "get() in the loop should be serial");
    ensure!(
        after < in_loop / 2,
        "submitting all first should run 5 at a time ({after:?} vs {in_loop:?})"
    );
    Ok(())
}

pub fn s000_6() -> Result<(), String> {
    let parent = std::process::id();
    let pool = Pool::new(5).context("Pool::new(5)")?;
    // The callback runs in this process, so it may capture and update local
    // state: here a log of what it got and where it ran.
    let seen = Arc::new(Mutex::new(Vec::new()));
    for i in 0..10 {
        let seen = seen.clone();
        // The callback is all we need: the handle can go, the task still runs.
        drop(pool.apply_async(stars, i).callback(move |arg: &String| {
            println!("callback: {arg:<10} (pid {})", std::process::id());
            seen.lock().unwrap().push((arg.clone(), std::process::id()));
        }));
    }
    // A callback that "returns" `arg + "1"`: in Rust it gets `&T` and returns
    // nothing, so whatever it makes cannot reach get().
    let results: Vec<_> = (0..10)
        .map(|i| {
            pool.apply_async(stars, i).callback(|arg: &String| {
                let changed = format!("{arg}1");
                println!("callback made {changed:?}");
            })
        })
        .collect();
    for (i, r) in results.into_iter().enumerate() {
        let v = r.get().context("get")?;
        println!("get: {v}");
        ensure!(v == stars(i), "get() returned {v:?}, not the task's value");
    }
    pool.close();
    pool.join().context("join")?;

    let mut seen = seen.lock().unwrap().clone();
    seen.sort();
    let want: Vec<(String, u32)> = (0..10).map(|i| (stars(i), parent)).collect();
    ensure!(seen == want, "callbacks saw {seen:?}, want each value once in pid {parent}");
    Ok(())
}

/// What the crawler's task returns: the url, the status code, the body length.
type Page = (String, u16, usize);

/// The seed's `get_url`: a minimal HTTP/1.0 GET. An I/O failure panics, which
/// fails the task and reaches the error callback, as an exception would.
fn get_url(url: String) -> Page {
    let rest = url.strip_prefix("http://").expect("an http:// url");
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let mut conn = TcpStream::connect(host).expect("connect");
    conn.set_read_timeout(Some(Duration::from_secs(10))).expect("set a read timeout");
    write!(conn, "GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").expect("send the request");
    let mut response = Vec::new();
    conn.read_to_end(&mut response).expect("read the response");
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n").expect("a header end");
    let status =
        head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).expect("a status code");
    (url, status, body.len())
}

/// A tiny HTTP server on 127.0.0.1 that serves fixed pages, each after a
/// delay that stands for the network. It stops when dropped.
struct Server {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    fn start(pages: Vec<(String, String)>, delay: Duration) -> std::io::Result<Server> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let pages = Arc::new(pages);
        let thread = thread::spawn(move || {
            for conn in listener.incoming() {
                if stopping.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let pages = pages.clone();
                thread::spawn(move || respond(conn, &pages, delay));
            }
        });
        Ok(Server { addr, stop, thread: Some(thread) })
    }
}

fn respond(mut conn: TcpStream, pages: &[(String, String)], delay: Duration) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
    let mut request = Vec::new();
    let mut buf = [0; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 16 * 1024 {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    let request = String::from_utf8_lossy(&request);
    let path = request.split_whitespace().nth(1).unwrap_or("/");
    thread::sleep(delay);
    let (status, body) = match pages.iter().find(|(p, _)| p == path) {
        Some((_, body)) => ("200 OK", body.as_str()),
        None => ("404 Not Found", "not found"),
    };
    let _ = write!(
        conn,
        "HTTP/1.0 {status}\r\nContent-Type: text/html\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let _ = conn.shutdown(Shutdown::Both);
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so that it sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub fn s000_7() -> Result<(), String> {
    const DELAY: Duration = Duration::from_millis(100);
    let sites =
        ["www.baidu.com", "www.sogou.com", "www.hao123.com", "www.yangxiaoer.cc", "www.python.org"];
    let pages: Vec<(String, String)> = sites
        .iter()
        .enumerate()
        .map(|(i, site)| {
            let body = format!(
                "<html><head><title>{site}</title></head><body>{}</body></html>",
                "<p>hello</p>".repeat(10 * (i + 1))
            );
            (format!("/{site}"), body)
        })
        .collect();
    let server = Server::start(pages.clone(), DELAY).context("start the HTTP server")?;
    let urls: Vec<String> = sites.iter().map(|s| format!("http://{}/{s}", server.addr)).collect();

    let parent = std::process::id();
    let got = Arc::new(Mutex::new(Vec::new()));
    let failed = Arc::new(Mutex::new(Vec::new()));
    let started = Instant::now();
    let pool = Pool::new(4).context("Pool::new(4)")?;
    for url in &urls {
        let (got, failed) = (got.clone(), failed.clone());
        drop(
            pool.apply_async(get_url, url.clone())
                .callback(move |page: &Page| {
                    let (url, status, len) = page;
                    println!("url: {url}  status: {status}  page length: {len}");
                    got.lock().unwrap().push((page.clone(), std::process::id()));
                })
                .error_callback(move |e| failed.lock().unwrap().push(e.to_string())),
        );
    }
    pool.close();
    pool.join().context("join")?;
    let took = started.elapsed();
    println!("crawled {} pages in {took:.2?}", urls.len());
    drop(server);

    let failed = failed.lock().unwrap();
    ensure!(failed.is_empty(), "downloads failed: {failed:?}");
    let mut got = got.lock().unwrap().clone();
    got.sort();
    let mut want: Vec<(Page, u32)> = urls
        .iter()
        .zip(&pages)
        .map(|(url, (_, body))| ((url.clone(), 200, body.len()), parent))
        .collect();
    want.sort();
    ensure!(got == want, "callbacks got {got:?}, want {want:?} (each page once, in pid {parent})");
    let serial = DELAY * urls.len() as u32;
    ensure!(
        took < serial * 9 / 10,
        "4 workers should fetch in parallel: {took:?} vs {serial:?} one at a time"
    );
    Ok(())
}
