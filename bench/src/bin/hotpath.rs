//! One hot-path workload, with its count from the command line, for
//! instruction counting under callgrind (`bench/callgrind/count.sh`).
//!
//! ```sh
//! hotpath w1 N   # N sequential pool.apply(inc, x) on a Pool of 2
//! hotpath w3 N   # N pool.apply_async(inc, x), then wait for all
//! hotpath w2 N   # pool.map(inc, 0..N), default chunksize
//! hotpath t1 N   # as w1, on a ThreadPool of 2
//! hotpath t3 N   # as w3, on a ThreadPool of 2
//! hotpath w7 N   # N Process::start of a no-op, then join all (W7.procs)
//! hotpath w8 N   # pool.map(sum, N buffers of 8 MiB as Bytes) (W8.bytebuf)
//! hotpath codec N # no pool: 0..N as varints into one buffer and back, the
//!                 # least work any postcard wire does for W2's items: the
//!                 # ceiling that encoding puts on W2 (`--time` prints ns/item)
//! ```
//!
//! Every run does the same fixed warm-up first (both workers started and
//! having run a task), so that the difference between two counts is the
//! work of the extra tasks alone. The result is checked, so a run that
//! counts instructions also proves it did the work.

use multiproc::{Bytes, Pool, Process, ThreadPool};

const USAGE: &str = "usage: hotpath WORKLOAD N
  WORKLOAD  w1 (Pool.apply), w3 (Pool.apply_async, wait all), w2 (Pool.map,
            default chunksize), t1 (ThreadPool.apply), t3 (ThreadPool.apply_async),
            w7 (Process.start of a no-op N times, then join all),
            w8 (Pool.map of a byte sum over N 8 MiB Bytes buffers),
            codec (varint-encode 0..N and decode it, no pool; --time prints ns/item)
  N         tasks (items for w2), at most 100000000";

/// Workers in every pool, as in the harness's W1, W2, W3, T1 and T3.
const WORKERS: usize = 2;
/// Warm-up tasks, one at a time per chunk so that every worker gets some.
const WARM: u64 = 8 * WORKERS as u64;

fn inc(x: u64) -> u64 {
    x + 1
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (args, timed) = match &args[..] {
        [rest @ .., last] if last == "--time" => (rest, true),
        _ => (&args[..], false),
    };
    let parsed = match args {
        [w, n] => n.parse::<u64>().ok().filter(|&n| n <= 100_000_000).map(|n| (w.as_str(), n)),
        _ => None,
    };
    let Some((workload, n)) = parsed else {
        eprintln!("{USAGE}");
        std::process::exit(2);
    };
    let run = match workload {
        "w1" => w1,
        "w2" => w2,
        "w3" => w3,
        "t1" => t1,
        "t3" => t3,
        "w7" => w7,
        "w8" => w8,
        "codec" => codec,
        _ => {
            eprintln!("unknown workload {workload:?}\n{USAGE}");
            std::process::exit(2);
        }
    };
    let start = std::time::Instant::now();
    if let Err(e) = run(n) {
        eprintln!("hotpath {workload} {n}: {e}");
        std::process::exit(1);
    }
    if timed {
        let ns = start.elapsed().as_nanos() as f64 / n.max(1) as f64;
        println!("{workload} {n}: {ns:.2} ns per unit, {:.1} M units/s", 1e3 / ns);
    }
}

type R = Result<(), String>;

fn e(err: multiproc::Error) -> String {
    err.to_string()
}

/// The sum of `inc(x)` over `0..n`.
fn expected(n: u64) -> u64 {
    n * (n + 1) / 2
}

fn check(what: &str, got: u64, n: u64) -> R {
    if got == expected(n) {
        Ok(())
    } else {
        Err(format!("{what}: sum {got}, expected {}", expected(n)))
    }
}

fn process_pool() -> Result<Pool, String> {
    let pool = Pool::new(WORKERS).map_err(e)?;
    let warm = pool.chunksize(1).map(inc, 0..WARM).map_err(e)?;
    check("warm-up", warm.iter().sum(), WARM)?;
    Ok(pool)
}

fn thread_pool() -> Result<ThreadPool, String> {
    let pool = ThreadPool::new(WORKERS).map_err(e)?;
    let warm = pool.map(inc, 0..WARM).map_err(e)?;
    check("warm-up", warm.iter().sum(), WARM)?;
    Ok(pool)
}

fn finish(pool: Pool) -> R {
    pool.close();
    pool.join().map_err(e)
}

fn w1(n: u64) -> R {
    let pool = process_pool()?;
    let mut sum = 0;
    for i in 0..n {
        sum += pool.apply(inc, i).map_err(e)?;
    }
    check("w1", sum, n)?;
    finish(pool)
}

fn w3(n: u64) -> R {
    let pool = process_pool()?;
    let pending: Vec<_> = (0..n).map(|i| pool.apply_async(inc, i)).collect();
    let mut sum = 0;
    for r in pending {
        sum += r.get().map_err(e)?;
    }
    check("w3", sum, n)?;
    finish(pool)
}

fn w2(n: u64) -> R {
    let pool = process_pool()?;
    let out = pool.map(inc, 0..n).map_err(e)?;
    if out.len() as u64 != n {
        return Err(format!("w2: {} items back, expected {n}", out.len()));
    }
    check("w2", out.iter().sum(), n)?;
    finish(pool)
}

fn t1(n: u64) -> R {
    let pool = thread_pool()?;
    let mut sum = 0;
    for i in 0..n {
        sum += pool.apply(inc, i).map_err(e)?;
    }
    check("t1", sum, n)?;
    pool.close();
    pool.join().map_err(e)
}

fn t3(n: u64) -> R {
    let pool = thread_pool()?;
    let pending: Vec<_> = (0..n).map(|i| pool.apply_async(inc, i)).collect();
    let mut sum = 0;
    for r in pending {
        sum += r.get().map_err(e)?;
    }
    check("t3", sum, n)?;
    pool.close();
    pool.join().map_err(e)
}

fn noop(_: u64) {}

/// W7.procs: every process started, then every one joined, each checked
/// for exit code 0. No warm-up: the first start's cost (the fork server's
/// own) is part of what W7 measures.
fn w7(n: u64) -> R {
    let mut procs: Vec<Process> = (0..n).map(|i| Process::new(noop, i)).collect();
    for proc in &mut procs {
        proc.start().map_err(e)?;
    }
    for proc in &mut procs {
        proc.join().map_err(e)?;
    }
    let bad = procs.iter().filter(|p| p.exitcode() != Some(0)).count();
    if bad > 0 {
        return Err(format!("w7: {bad} processes did not exit with 0"));
    }
    Ok(())
}

fn byte_sum(buf: Bytes) -> u64 {
    buf.iter().map(|&b| u64::from(b)).sum()
}

/// W8.bytebuf: `n` buffers of 8 MiB, each byte its index's low bits (and
/// never 0, so that no buffer is the allocator's untouched zero pages),
/// through `map` as [`Bytes`]; each buffer's byte sum checked.
fn w8(n: u64) -> R {
    const SIZE: usize = 8 << 20;
    let fill = |i: u64| i as u8 | 1;
    let bufs: Vec<Bytes> = (0..n).map(|i| Bytes::from(vec![fill(i); SIZE])).collect();
    let pool = process_pool()?;
    let start = std::time::Instant::now();
    let sums = pool.map(byte_sum, bufs).map_err(e)?;
    let s = start.elapsed().as_secs_f64();
    for (i, sum) in sums.into_iter().enumerate() {
        if sum != u64::from(fill(i as u64)) * SIZE as u64 {
            return Err(format!("w8: buffer {i} summed to {sum}"));
        }
    }
    eprintln!("w8 {n}: map {:.1} ms, {:.2} GB/s", s * 1e3, (n as f64 * SIZE as f64) / s / 1e9);
    finish(pool)
}

/// The floor under W2's codec: each item of `0..n` as a LEB128 varint (what
/// postcard writes for a `u64`) into one buffer, then read back and summed,
/// then the same for the results, all on one core with no pool, no
/// serde, no panic guards and no length table. A pool's `map` does this
/// twice per item in the parent (its arguments out, its results in) and
/// twice in a worker; this is the least that can cost.
fn codec(n: u64) -> R {
    fn put(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push(v as u8 | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }
    fn take(bytes: &[u8], at: &mut usize) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *bytes.get(*at)?;
            *at += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }
    // Arguments out (parent), results back (worker), results in (parent).
    let mut args = Vec::with_capacity(n as usize * 3);
    (0..n).for_each(|i| put(&mut args, i));
    let mut results = Vec::with_capacity(n as usize * 3);
    let mut at = 0;
    for _ in 0..n {
        let x = take(&args, &mut at).ok_or("codec: arguments cut short")?;
        put(&mut results, std::hint::black_box(inc(x)));
    }
    let (mut sum, mut at) = (0, 0);
    for _ in 0..n {
        sum += take(&results, &mut at).ok_or("codec: results cut short")?;
    }
    check("codec", sum, n)
}
