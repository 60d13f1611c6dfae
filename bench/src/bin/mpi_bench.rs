//! The MPI workloads, side by side with mpi4py.futures in the same run.
//!
//! ```text
//! cargo build --release -p multiproc-bench --features mpi --bin mpi-bench
//! target/release/mpi-bench            # the driver: runs both under mpirun -n 4
//! ```
//!
//! Started without an MPI launcher this binary is the driver: it runs itself
//! under `mpirun -n 4` (rank 0 measures, ranks 1-3 serve) once with
//! isolation (the default: tasks in local worker processes) and once with
//! `isolate(false)`, then `bench/python/mpi_futures_bench.py` under
//! `mpirun -n 4 python3 -m mpi4py.futures`, and prints one table. Every
//! figure is the median of the repetitions.

use std::process::Command;
use std::time::{Duration, Instant};

const ITEMS: u64 = 10_000;
const APPLIES: usize = 2_000;

fn noop(x: u64) -> u64 {
    x
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Rank 0 of a measuring run: prints `name seconds` lines.
fn measure(isolate: bool, reps: usize) -> Result<(), multiproc::Error> {
    let tag = if isolate { "ours" } else { "ours-on-rank" };
    if isolate {
        // The floor: once per run is enough.
        let floor = median(
            (0..reps).map(|_| multiproc::mpi::__ping_pong(5_000, 8)).collect::<Result<_, _>>()?,
        );
        println!("RESULT mpi-floor pingpong {:.9}", floor.as_secs_f64());
    }
    let pool = multiproc::mpi::Pool::builder().isolate(isolate).build()?;
    // Warm-up: local workers start, the ranks' queues deepen.
    pool.chunksize(1).map(noop, 0..ITEMS)?;
    for chunksize in [1usize, 100] {
        let times = (0..reps)
            .map(|_| {
                let t = Instant::now();
                let out = pool.chunksize(chunksize).map(noop, 0..ITEMS)?;
                assert_eq!(out.len(), ITEMS as usize);
                Ok(t.elapsed())
            })
            .collect::<Result<Vec<_>, multiproc::Error>>()?;
        println!("RESULT {tag} map-chunksize-{chunksize} {:.9}", median(times).as_secs_f64());
    }
    let times = (0..reps)
        .map(|_| {
            let t = Instant::now();
            for i in 0..APPLIES as u64 {
                pool.apply(noop, i)?;
            }
            Ok(t.elapsed() / APPLIES as u32)
        })
        .collect::<Result<Vec<_>, multiproc::Error>>()?;
    println!("RESULT {tag} apply {:.9}", median(times).as_secs_f64());
    pool.close();
    pool.join()
}

fn mpirun(args: &[&str]) -> Result<String, String> {
    let out = Command::new("timeout")
        .args(["--kill-after=10", "600", "mpirun", "--oversubscribe", "-n", "4"])
        .args(args)
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .output()
        .map_err(|e| format!("could not run mpirun: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(format!(
            "mpirun {args:?} failed ({}):\n{text}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(text)
}

fn results(text: &str) -> Vec<(String, String, f64)> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.strip_prefix("RESULT ")?.split_whitespace();
            Some((w.next()?.to_string(), w.next()?.to_string(), w.next()?.parse().ok()?))
        })
        .collect()
}

fn drive(reps: usize) -> Result<(), String> {
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let me = me.to_string_lossy().into_owned();
    let reps_s = reps.to_string();
    let mut all = results(&mpirun(&[&me, "--rank0", "isolate", &reps_s])?);
    all.extend(results(&mpirun(&[&me, "--rank0", "on-rank", &reps_s])?));
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/mpi_futures_bench.py");
    match mpirun(&["python3", "-m", "mpi4py.futures", script, &reps_s]) {
        Ok(t) => all.extend(results(&t)),
        Err(e) => eprintln!("mpi4py.futures skipped: {e}"),
    }
    let get =
        |who: &str, what: &str| all.iter().find(|(w, n, _)| w == who && n == what).map(|r| r.2);
    let ms = |v: Option<f64>| v.map_or("-".to_string(), |s| format!("{:.2} ms", s * 1e3));
    let us = |v: Option<f64>| v.map_or("-".to_string(), |s| format!("{:.1} µs", s * 1e6));
    println!("\nMPI workloads, mpirun -n 4 --oversubscribe, median of {reps} (same run):\n");
    println!("| workload | mpi4py.futures | ours (isolated, default) | ours (isolate(false)) |");
    println!("|---|---|---|---|");
    for c in ["1", "100"] {
        let w = format!("map-chunksize-{c}");
        println!(
            "| 10k trivial tasks, 3 worker ranks, chunksize {c} | {} | {} | {} |",
            ms(get("mpi4py", &w)),
            ms(get("ours", &w)),
            ms(get("ours-on-rank", &w))
        );
    }
    println!(
        "| `apply` round trip rank 0 → worker rank | {} | {} | {} |",
        us(get("mpi4py", "apply")),
        us(get("ours", "apply")),
        us(get("ours-on-rank", "apply"))
    );
    println!(
        "| MPI ping-pong floor (8 B) | {} | {} | |",
        us(get("mpi4py", "pingpong")),
        us(get("mpi-floor", "pingpong"))
    );
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--rank0") {
        let isolate = args.get(1).map(String::as_str) != Some("on-rank");
        let reps = args.get(2).and_then(|r| r.parse().ok()).unwrap_or(5);
        if let Err(e) = measure(isolate, reps) {
            eprintln!("mpi-bench: {e}");
            std::process::exit(1);
        }
        return;
    }
    let reps = args.iter().position(|a| a == "--reps").and_then(|i| args.get(i + 1)?.parse().ok());
    if let Err(e) = drive(reps.unwrap_or(5)) {
        eprintln!("mpi-bench: {e}");
        std::process::exit(1);
    }
}
