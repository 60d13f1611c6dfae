//! Seed 002, the pool's apply family: six different functions submitted to
//! one pool with `apply_async`, results taken with `get()` after
//! `close()`/`join()`, `apply` one at a time; and a crawler that downloads
//! in the pool and parses in the parent's callback with a regex.
//!
//! The seed's random sleeps of up to 40 s are fixed per function and scaled
//! to milliseconds, so every run does the same. The machine has no network:
//! the crawler's pages come from a small HTTP server on 127.0.0.1 in a
//! thread of this process, which answers like the seed's site would (the
//! board pages, one of them a ranking of ten films).
//!
//! `cargo run --release --example s002_pool_apply [-- S002.12 ...]`

#[macro_use]
#[path = "common/mod.rs"]
mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::Context;
use multiproc::Pool;

pub const SCENARIOS: &[common::Scenario] = &[
    ("S002.12", "Pool(4) runs six different functions (apply_async, no arguments) side by side; apply_async(work, 2).get() after close/join gives 4; apply of 10 messages in Pool(3) is serial, apply_async of them is 3 at a time, and get() returns them in order", s002_12),
    ("S002.13", "Crawler: six board pages downloaded in Pool(4) from a local HTTP server, parsed in the parent's callback (its pid) with a regex that finds the ten films of board 7", s002_13),
];

fn main() -> std::process::ExitCode {
    common::run(SCENARIOS)
}

/// One second of the seed, here.
const SECOND: Duration = Duration::from_millis(20);

/// What each of the six functions reports: its name, the pid it ran in, and
/// how long it slept.
type Report = (String, u32, Duration);

/// The body shared by the seed's six functions: announce, sleep, report.
fn task(name: &str, seconds: f64) -> Report {
    println!("Run task {name}-{}", std::process::id());
    let start = Instant::now();
    thread::sleep(SECOND.mul_f64(seconds));
    let took = start.elapsed();
    println!("Task {name} runs {:.2} seconds.", took.as_secs_f64() / SECOND.as_secs_f64());
    (name.to_string(), std::process::id(), took)
}

// The seed's sleeps are `random() * 10`, `* 40`, `* 30` and `* 20`; these are
// fixed draws of them.
fn lee() -> Report {
    task("Lee", 4.2)
}
fn marlon() -> Report {
    task("Marlon", 17.5)
}
fn allen() -> Report {
    task("Allen", 11.0)
}
fn frank() -> Report {
    task("Frank", 6.3)
}
fn egon() -> Report {
    task("Egon", 9.8)
}
fn lily() -> Report {
    task("Lily", 2.7)
}

/// The seed's `work`: "starting work...", three seconds, `n**2`.
fn work(n: u64) -> u64 {
    println!("starting work...");
    thread::sleep(SECOND * 3);
    n * n
}

/// The seed's `func`: prints the message, naps, returns it.
fn func(msg: String) -> String {
    println!("msg: {msg}");
    thread::sleep(SECOND * 2);
    msg
}

pub fn s002_12() -> Result<(), String> {
    let parent = std::process::id();
    println!("parent process {parent}");
    let pool = Pool::new(4).context("Pool::new(4)")?;
    let started = Instant::now();
    // Six different functions into one pool: each is its own task type.
    let results = vec![
        pool.apply_async(lee, ()),
        pool.apply_async(marlon, ()),
        pool.apply_async(allen, ()),
        pool.apply_async(frank, ()),
        pool.apply_async(egon, ()),
        pool.apply_async(lily, ()),
    ];
    println!("Waiting for all subprocesses done...");
    pool.close();
    pool.join().context("join")?;
    let took = started.elapsed();
    println!("All subprocesses done.");
    ensure!(results.iter().all(|r| r.ready()), "join returned before every task finished");
    let mut reports = Vec::new();
    for r in results {
        reports.push(r.get().context("get")?);
    }
    let names: Vec<&str> = reports.iter().map(|r| r.0.as_str()).collect();
    ensure!(
        names == ["Lee", "Marlon", "Allen", "Frank", "Egon", "Lily"],
        "the results name {names:?}"
    );
    let pids: BTreeSet<u32> = reports.iter().map(|r| r.1).collect();
    ensure!(!pids.contains(&parent), "a task ran in the parent");
    ensure!(
        pids.len() <= 4,
        "the six tasks ran in {} processes, more than the pool's 4",
        pids.len()
    );
    let serial: Duration = reports.iter().map(|r| r.2).sum();
    let longest = reports.iter().map(|r| r.2).max().unwrap_or_default();
    println!("six tasks: {took:.2?} in 4 workers, {serial:.2?} one after another");
    ensure!(took >= longest, "join returned after {took:?}, before the longest task's {longest:?}");
    ensure!(took < serial * 3 / 4, "four workers took {took:?} for {serial:?} of naps");

    // apply_async, then get() once the pool is closed and joined.
    let pool = Pool::new(4).context("Pool::new(4)")?;
    let res = pool.apply_async(work, 2);
    pool.close();
    pool.join().context("join")?;
    let four = res.get().context("get")?;
    println!("{four}");
    ensure!(four == 4, "work(2) gave {four}");

    // apply: one task at a time, the result at once.
    let msgs: Vec<String> = (0..10).map(|i| format!("hello {i}")).collect();
    let pool = Pool::new(3).context("Pool::new(3)")?;
    let started = Instant::now();
    let mut applied = Vec::new();
    for m in &msgs {
        applied.push(pool.apply(func, m.clone()).context("apply")?);
    }
    let serial = started.elapsed();
    println!("==============================>");
    pool.close();
    pool.join().context("join")?;
    println!("{applied:?}");
    ensure!(applied == msgs, "apply returned {applied:?}");
    ensure!(serial >= SECOND * 20, "ten applies of {:?} took {serial:?}", SECOND * 2);

    // apply_async of the same: three at a time, in order through get().
    let pool = Pool::new(3).context("Pool::new(3)")?;
    let started = Instant::now();
    let pending: Vec<_> = msgs.iter().map(|m| pool.apply_async(func, m.clone())).collect();
    println!("==============================>");
    pool.close();
    pool.join().context("join")?;
    let parallel = started.elapsed();
    let mut got = Vec::new();
    for p in pending {
        got.push(p.get().context("get")?);
    }
    for g in &got {
        println!("{g}");
    }
    println!("apply x10: {serial:.2?}; apply_async x10 in Pool(3): {parallel:.2?}");
    ensure!(got == msgs, "get() returned {got:?}");
    ensure!(parallel < serial * 3 / 4, "apply_async took {parallel:?}, apply {serial:?}");
    Ok(())
}

// --- S002.13 ----------------------------------------------------------------------

/// The board pages of the seed's site; board 7 is a ranking of films.
const BOARDS: [u32; 6] = [1, 2, 3, 4, 5, 7];
const FILMS: [(&str, &str, &str, &str); 10] = [
    ("The Wandering Lantern", "Lin Qiu, Mara Holt", "2019-02-05", "9.5"),
    ("Eleven Bridges", "Sam Okafor", "2018-07-06", "9.4"),
    ("A Harbour in Winter", "Ines Varga, Tom Reyes", "2017-12-22", "9.3"),
    ("Paper Kites", "Yu Tang", "2016-04-01", "9.3"),
    ("The Salt Road", "Dara Finn, Oleg Ivanov", "2015-09-30", "9.2"),
    ("Copper Moon", "Aiko Mori", "2014-11-11", "9.1"),
    ("North of Quiet", "Ben Carter, Sofia Lund", "2013-03-15", "9.0"),
    ("Glass Orchard", "Priya Rao", "2012-06-08", "8.9"),
    ("The Last Tram", "Hugo Weiss, Nia Cole", "2011-10-19", "8.8"),
    ("Small Hours", "Ren Ito", "2010-01-29", "8.7"),
];

/// Board 7 as the seed's regex expects it: one `<dd>` per film.
fn board_7() -> String {
    let mut html = String::from("<html><body><dl class=\"board-wrapper\">\n");
    for (i, (title, actors, released, score)) in FILMS.iter().enumerate() {
        let (int, frac) = score.split_at(2);
        html += &format!(
            "<dd>\n  <i class=\"board-index board-index-{n}\">{n}</i>\n  \
             <p class=\"name\"><a href=\"/films/{n}\" title=\"{title}\">{title}</a></p>\n  \
             <p class=\"star\">\n      Stars: {actors}\n  </p>\n  \
             <p class=\"releasetime\">Date: {released}</p>\n  \
             <p class=\"score\"><i class=\"integer\">{int}</i><i class=\"fraction\">{frac}</i></p>\n\
             </dd>\n",
            n = i + 1
        );
    }
    html + "</dl></body></html>\n"
}

fn page(board: u32) -> String {
    if board == 7 {
        board_7()
    } else {
        format!("<html><body><h1>board {board}</h1><p>no ranking here</p></body></html>\n")
    }
}

/// The seed's regex, with its `d+` (a typo for `\d+`) as meant.
const PATTERN: &str = r#"(?s)<dd>.*?board-index.*?>(\d+)<.*?title="(.*?)".*?star.*?>(.*?)<.*?releasetime.*?>(.*?)<.*?integer.*?>(.*?)<.*?fraction.*?>(.*?)<"#;

/// Serves `count` GET requests on `listener`, each after `latency` (the
/// network it stands for), one thread per request; stops after that many.
fn serve(listener: TcpListener, count: usize, latency: Duration) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        thread::scope(|s| {
            for _ in 0..count {
                let Ok((conn, _)) = listener.accept() else { return };
                s.spawn(move || answer(conn, latency));
            }
        });
    })
}

fn answer(conn: TcpStream, latency: Duration) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
    let mut reader = BufReader::new(&conn);
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    // Skip the headers, up to the blank line.
    let mut line = String::new();
    while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line.trim_end() != "" {
        line.clear();
    }
    let board = request_line
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.strip_prefix("/board/"))
        .and_then(|n| n.parse::<u32>().ok())
        .filter(|n| BOARDS.contains(n));
    thread::sleep(latency);
    let (status, body) = match board {
        Some(n) => ("200 OK", page(n)),
        None => ("404 Not Found", String::from("no such board\n")),
    };
    let mut out = &conn;
    let _ = write!(
        out,
        "HTTP/1.0 {status}\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
}

/// What the pool's download returns: the url, the worker's pid, the HTTP
/// status and the page.
type Download = (String, u32, u16, String);

/// The seed's `get_page`, run in a worker: an HTTP/1.0 GET.
fn get_page(url: String) -> Download {
    let pid = std::process::id();
    println!("(process {pid}) downloading page {url}");
    let rest = url.strip_prefix("http://").expect("an http:// url");
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let mut conn = TcpStream::connect(host).expect("connect to the page's server");
    conn.set_read_timeout(Some(Duration::from_secs(10))).expect("a read timeout");
    write!(conn, "GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").expect("send the request");
    let mut response = String::new();
    conn.read_to_string(&mut response).expect("read the response");
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (url, pid, status, body.to_string())
}

/// One film as the seed's `parse_page` prints it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Film {
    index: String,
    title: String,
    actor: String,
    time: String,
    score: String,
}

/// The seed's `parse_page`, run in the parent's callback: the regex's six
/// groups become a film (the actors without their "Stars: " label, the date
/// without "Date: ").
fn parse_page(re: &regex::Regex, content: &str) -> Vec<Film> {
    re.captures_iter(content)
        .map(|c| Film {
            index: c[1].to_string(),
            title: c[2].to_string(),
            actor: c[3].trim().trim_start_matches("Stars: ").to_string(),
            time: c[4].trim_start_matches("Date: ").to_string(),
            score: format!("{}{}", &c[5], &c[6]),
        })
        .collect()
}

pub fn s002_13() -> Result<(), String> {
    const LATENCY: Duration = Duration::from_millis(60);
    let parent = std::process::id();
    let listener = TcpListener::bind("127.0.0.1:0").context("bind the HTTP server")?;
    let addr: SocketAddr = listener.local_addr().context("local_addr")?;
    let server = serve(listener, BOARDS.len(), LATENCY);
    let urls: Vec<String> = BOARDS.iter().map(|n| format!("http://{addr}/board/{n}")).collect();
    let re = Arc::new(regex::Regex::new(PATTERN).context("compile the pattern")?);

    // What the callbacks saw: (url, worker pid, callback pid, films).
    let parsed = Arc::new(Mutex::new(Vec::new()));
    let pool = Pool::new(4).context("Pool::new(4)")?;
    let started = Instant::now();
    let mut pending = Vec::new();
    for url in &urls {
        let (parsed, re) = (parsed.clone(), re.clone());
        pending.push(pool.apply_async(get_page, url.clone()).callback(
            move |(url, worker, status, body): &Download| {
                let me = std::process::id();
                println!("<process {me}> parsing page: {url} (status {status})");
                let films = parse_page(&re, body);
                for f in &films {
                    println!(
                        "{{'index': '{}', 'title': '{}', 'actor': '{}', 'time': '{}', 'score': '{}'}}",
                        f.index, f.title, f.actor, f.time, f.score
                    );
                }
                parsed.lock().unwrap().push((url.clone(), *worker, me, *status, films));
            },
        ));
    }
    // Close, then join: join waits for the tasks and their callbacks.
    pool.close();
    pool.join().context("join")?;
    let took = started.elapsed();
    println!("{{main process {parent}}}");
    let mut fetched = Vec::new();
    for p in pending {
        let (url, _, status, _) = p.get().context("get")?;
        println!("{url}");
        fetched.push((url, status));
    }
    server.join().map_err(|_| "the HTTP server panicked".to_string())?;

    let parsed = parsed.lock().unwrap().clone();
    ensure!(parsed.len() == urls.len(), "{} callbacks ran for {} pages", parsed.len(), urls.len());
    ensure!(
        fetched.iter().map(|f| &f.0).eq(urls.iter()),
        "get() returned the pages {fetched:?}, not in submission order"
    );
    ensure!(fetched.iter().all(|f| f.1 == 200), "statuses {fetched:?}");
    let workers: BTreeSet<u32> = parsed.iter().map(|p| p.1).collect();
    ensure!(!workers.contains(&parent), "a page was downloaded in the parent");
    ensure!(workers.len() <= 4, "downloads ran in {} processes", workers.len());
    for (url, _, callback_pid, _, films) in &parsed {
        ensure!(*callback_pid == parent, "{url} was parsed in {callback_pid}, not the parent");
        let want = if url.ends_with("/board/7") { FILMS.len() } else { 0 };
        ensure!(films.len() == want, "{url}: the regex found {} films, want {want}", films.len());
    }
    let board_7 = &parsed.iter().find(|p| p.0.ends_with("/board/7")).expect("board 7").4;
    for (i, (f, (title, actors, released, score))) in board_7.iter().zip(FILMS).enumerate() {
        let want = Film {
            index: (i + 1).to_string(),
            title: title.into(),
            actor: actors.into(),
            time: released.into(),
            score: score.into(),
        };
        ensure!(*f == want, "film {}: parsed {f:?}, want {want:?}", i + 1);
    }
    let serial = LATENCY * urls.len() as u32;
    println!("downloaded {} pages in {took:.2?} ({serial:?} one at a time)", urls.len());
    ensure!(took < serial * 9 / 10, "4 workers took {took:?}: the downloads did not overlap");
    Ok(())
}
