//! Measured floors under the workloads: what the machine itself costs.
//!
//! - a round trip of 8 bytes over a Unix stream socket between two processes,
//!   blocking reads (the floor under W1's `apply` round trip);
//! - the same, pipelined 64 deep (the floor under W3's throughput);
//! - a round trip between two threads through a mutex and condvar (the floor
//!   under T1, and under each thread hop inside a process pool).
//!
//! The harness measures them before and after every run (into its results
//! page); `cargo run --release -p multiproc-bench --bin floor` prints them alone.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use multiproc::{Fd, Process};

fn echo(mut s: Fd<UnixStream>) {
    let mut buf = [0u8; 8 * 64];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if s.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Measures the three floors; one line each.
pub fn measure() -> multiproc::Result<String> {
    let mut out = String::new();
    let (mut ours, theirs) = UnixStream::pair().expect("socketpair");
    let mut p = Process::new(echo, Fd::new(theirs));
    p.start()?;
    let mut buf = [0u8; 8];
    for _ in 0..1000 {
        ours.write_all(&buf).unwrap();
        ours.read_exact(&mut buf).unwrap();
    }
    let lat: Vec<f64> = (0..5000)
        .map(|_| {
            let t = Instant::now();
            ours.write_all(&buf).unwrap();
            ours.read_exact(&mut buf).unwrap();
            t.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    let _ = writeln!(
        out,
        "process round trip, 8 bytes over a Unix socket: median {:.1} us",
        median(lat)
    );

    let n = 200_000usize;
    let depth = 64;
    let t = Instant::now();
    let mut sent = 0;
    let mut got = 0;
    let mut big = vec![0u8; 8 * depth];
    while got < n {
        let k = depth.min(n - sent).min(depth - (sent - got));
        if k > 0 {
            ours.write_all(&big[..8 * k]).unwrap();
            sent += k;
        }
        let r = ours.read(&mut big).unwrap();
        got += r / 8;
        if r % 8 != 0 {
            ours.read_exact(&mut big[..8 - r % 8]).unwrap();
            got += 1;
        }
    }
    let _ = writeln!(
        out,
        "process messages, 8 bytes pipelined {depth} deep: {:.0} k/s",
        n as f64 / t.elapsed().as_secs_f64() / 1e3
    );
    drop(ours);
    p.join()?;

    let pair = Arc::new((Mutex::new((0u64, 0u64)), Condvar::new()));
    let other = pair.clone();
    let rounds = 20_000u64;
    let h = std::thread::spawn(move || {
        let (m, c) = &*other;
        for i in 1..=rounds {
            let mut g = m.lock().unwrap();
            while g.0 < i {
                g = c.wait(g).unwrap();
            }
            g.1 = i;
            c.notify_all();
        }
    });
    let (m, c) = &*pair;
    let t = Instant::now();
    for i in 1..=rounds {
        let mut g = m.lock().unwrap();
        g.0 = i;
        c.notify_all();
        while g.1 < i {
            g = c.wait(g).unwrap();
        }
    }
    let _ = writeln!(
        out,
        "thread round trip, mutex and condvar: {:.1} us",
        t.elapsed().as_secs_f64() * 1e6 / rounds as f64
    );
    h.join().unwrap();
    Ok(out)
}
