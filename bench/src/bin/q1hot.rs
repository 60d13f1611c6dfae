//! The harness's Q1 alone (one producer process puts `0..N` as `u64`, the
//! parent gets them in order), with its count from the command line, for
//! instruction counting under callgrind and for quick timing.
//!
//! ```sh
//! q1hot N          # N items, order checked
//! q1hot N --time   # and print ns/item and items/s (clock from the first item)
//! q1hot N --thread # the producer is a thread of this process (the same
//!                  # queue code; for callgrind, which counts threads of
//!                  # one process together)
//! valgrind --tool=callgrind --trace-children=yes target/release/q1hot 100000
//! ```

use std::time::Instant;

use multiproc::{Process, Queue};

fn produce((q, n): (Queue<u64>, u64)) {
    for i in 0..n {
        q.put(i).expect("put");
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let timed = args.iter().any(|a| a == "--time");
    let thread = args.iter().any(|a| a == "--thread");
    let Some(n) = args
        .iter()
        .find(|a| !a.starts_with("--"))
        .and_then(|a| a.parse::<u64>().ok())
        .filter(|&n| (1..=100_000_000).contains(&n))
    else {
        eprintln!("usage: q1hot N [--time] [--thread]   (1 <= N <= 100000000)");
        std::process::exit(2);
    };
    let q = Queue::new().expect("queue");
    let mut child = Process::new(produce, (q.clone(), n));
    let producer = if thread {
        let q = q.clone();
        Some(std::thread::spawn(move || produce((q, n))))
    } else {
        child.start().expect("start");
        None
    };
    let first = q.get().expect("get");
    let t = Instant::now();
    for expect in first + 1..n {
        let v = q.get().expect("get");
        assert_eq!(v, expect, "out of order");
    }
    let secs = t.elapsed().as_secs_f64();
    match producer {
        Some(t) => t.join().expect("producer thread"),
        None => child.join().expect("join"),
    }
    if timed {
        let per = secs * 1e9 / (n - 1).max(1) as f64;
        println!("q1 {n}: {per:.1} ns per item, {:.2} M items/s", 1e3 / per);
    }
}
