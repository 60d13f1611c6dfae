//! multiproc's benchmark harness: every workload of `docs/benchmarks.md`, side by
//! side with Python's `multiprocessing.Pool` and `ProcessPoolExecutor`,
//! procspawn and rayon, in one run, repetitions interleaved across contenders.
//!
//! ```sh
//! cargo run --release -p multiproc-bench              # full run
//! cargo run --release -p multiproc-bench -- --quick   # < 3 minutes
//! cargo run --release -p multiproc-bench -- W1 W3     # a subset
//! ```
//!
//! Writes the table to stdout, `target/bench/results.json`,
//! `target/bench/results.md` (a summary, the table and the machine's floors
//! measured before and after) and `target/bench/ratios.svg`. Only a full run
//! (every workload, full counts, at least 5 repetitions) also copies the page
//! and the chart to `docs/bench/`; a `--quick` or subset run never replaces
//! the committed ones.

mod channels;
mod figures;
mod floor;
mod params;
mod peak;
mod procfs;
mod report;
mod results;
mod runners;
mod stats;
mod svg;
mod targets;
mod tasks;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::Instant;

use figures::{Status, Workload};
use params::Params;
use results::Results;
use runners::python;

const USAGE: &str = "usage: multiproc-bench [--quick] [--reps N] [WORKLOAD ...]
  --quick    fewer repetitions and smaller counts (under 3 minutes on 2 cores)
  --reps N   repetitions of every workload (default: 5 full, 2 quick)
  WORKLOAD   W1 W2 W3 W4 W5 W6 W7 W8 W9 W10 T1 T3 Q1 P1 (default: all)
  PYTHON=... the interpreter for the Python contenders (default: python3)
Writes target/bench/results.json, results.md and ratios.svg. Only a full run
(every workload, no --quick, at least 5 repetitions) also replaces the
committed docs/bench/results.md and docs/bench/ratios.svg.";

fn main() {
    // procspawn's workers re-enter main and are diverted here; multiproc's
    // are diverted before main.
    procspawn::init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some(peak::CHILD_FLAG) {
        std::process::exit(peak::child_main(&args[1..]));
    }
    if let Err(e) = run(&args) {
        eprintln!("multiproc-bench: {e}");
        std::process::exit(1);
    }
}

struct Options {
    quick: bool,
    reps: Option<usize>,
    workloads: Vec<Workload>,
}

fn parse(args: &[String]) -> Result<Options, String> {
    let mut opts = Options { quick: false, reps: None, workloads: Vec::new() };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => opts.quick = true,
            "--reps" => {
                let n = it.next().and_then(|n| n.parse().ok()).filter(|&n| n > 0);
                opts.reps = Some(n.ok_or("--reps needs a positive number")?);
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            id => match Workload::parse(id) {
                Some(w) if !opts.workloads.contains(&w) => opts.workloads.push(w),
                Some(_) => {}
                None => return Err(format!("unknown argument {id:?}\n{USAGE}")),
            },
        }
    }
    if opts.workloads.is_empty() {
        opts.workloads = Workload::ALL.to_vec();
    }
    opts.workloads.sort();
    Ok(opts)
}

/// The workspace root, wherever CARGO_TARGET_DIR points.
fn workspace_root() -> PathBuf {
    let bench = Path::new(env!("CARGO_MANIFEST_DIR"));
    bench.parent().unwrap_or(bench).to_path_buf()
}

fn run(args: &[String]) -> Result<(), String> {
    let opts = parse(args)?;
    let tmp = std::env::temp_dir().join(format!("multiproc-bench-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
    let tmpdir = tmp.to_string_lossy().into_owned();
    let mut p = if opts.quick { Params::quick(tmpdir) } else { Params::full(tmpdir) };
    p.reps = opts.reps.unwrap_or(p.reps);
    let mode = if opts.quick { "quick" } else { "full" };
    let nofile = procfs::raise_nofile_limit();
    let python = python::version().unwrap_or_else(|e| format!("unavailable: {e}"));
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    println!("multiproc-bench, {mode} run: {}", p.describe());
    if opts.quick {
        println!(
            "(quick: fewer repetitions and smaller counts than docs/benchmarks.md's workloads)"
        );
    }
    println!(
        "{} CPUs; load average {}; open-files limit {nofile}; {python} (fork start method)",
        multiproc::cpu_count(),
        load.join(" ")
    );
    println!(
        "workloads: {}\n",
        opts.workloads.iter().map(|w| w.to_string()).collect::<Vec<_>>().join(" ")
    );

    let floor_before = floor();
    println!("floor before: {}\n", floor_before.trim().replace('\n', "; "));
    let start = Instant::now();
    let results = measure(&opts.workloads, &p);
    let floor_after = floor();
    let _ = std::fs::remove_dir_all(&tmp);
    let figures = results.figures();

    let table = report::table(&figures);
    println!("{table}");
    println!("floor after: {}\n", floor_after.trim().replace('\n', "; "));
    if opts.quick {
        println!("(quick run: smaller counts; the targets are stated for the full counts)\n");
    }
    for u in results.unknown() {
        println!("warning: {u}");
    }
    let root = workspace_root();
    let out = root.join("target/bench");
    let json = report::json(&figures, mode);
    let text = serde_json::to_string_pretty(&json).map_err(|e| e.to_string())?;
    report::write(&out.join("results.json"), &(text + "\n"))?;
    let subtitle = format!(
        "{mode} run, median of {} repetitions, {} CPUs, load {}; workloads {}",
        p.reps,
        multiproc::cpu_count(),
        load.join(" "),
        opts.workloads.iter().map(|w| w.to_string()).collect::<Vec<_>>().join(" ")
    );
    let chart = svg::chart(&figures, &subtitle);
    report::write(&out.join("ratios.svg"), &chart)?;
    println!("wrote {}", out.join("results.json").display());
    println!("wrote {}", out.join("ratios.svg").display());
    let when = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let page = format!(
        "# Benchmark results\n\nWritten by `multiproc-bench` ({mode} run, {when}, {} \
         s). How each workload is measured: [`docs/benchmarks.md`](../benchmarks.md).\n\n\
         Machine: {} CPUs, {python}, load average {} at the start.\n\n\
         ## Summary\n\n{}\n\
         ## Every figure\n\n```text\n{table}```\n\n\
         ## The machine's floor, the same minutes\n\n\
         Before the run:\n\n```text\n{}\n```\n\nAfter the run:\n\n```text\n{}\n```\n",
        start.elapsed().as_secs_f64().round(),
        multiproc::cpu_count(),
        load.join(" "),
        report::summary(&figures),
        floor_before.trim(),
        floor_after.trim(),
    );
    report::write(&out.join("results.md"), &page)?;
    println!("wrote {}", out.join("results.md").display());
    match may_publish(opts.quick, p.reps, &opts.workloads) {
        Ok(()) => {
            for (name, text) in [("ratios.svg", &chart), ("results.md", &page)] {
                let docs = root.join("docs/bench").join(name);
                report::write(&docs, text)?;
                println!("wrote {}", docs.display());
            }
        }
        Err(why) => println!("(docs/bench/ left as it is: {why})"),
    }
    println!("{mode} run took {:.0} s", start.elapsed().as_secs_f64());
    Ok(())
}

/// The machine's floors, measured now (a socket round trip, pipelined
/// messages, a thread hand-off), or why they could not be.
fn floor() -> String {
    floor::measure().unwrap_or_else(|e| format!("floor not measured: {e}\n"))
}

/// Whether a run's chart may replace the committed `docs/bench/ratios.svg`:
/// only a full run may (every workload, full counts, at least
/// [`params::FULL_REPS`] repetitions). Otherwise, why not.
fn may_publish(quick: bool, reps: usize, workloads: &[Workload]) -> Result<(), String> {
    let mut why = Vec::new();
    if quick {
        why.push("a --quick run".to_string());
    }
    if reps < params::FULL_REPS {
        why.push(format!("{reps} repetitions, fewer than {}", params::FULL_REPS));
    }
    let missing: Vec<String> =
        Workload::ALL.iter().filter(|w| !workloads.contains(w)).map(|w| w.to_string()).collect();
    if !missing.is_empty() {
        why.push(format!("without {}", missing.join(" ")));
    }
    if why.is_empty() {
        Ok(())
    } else {
        Err(format!("only a full run replaces it; this was {}", why.join(", ")))
    }
}

/// Runs every workload: repetition 1 of every contender, then repetition 2,
/// ..., starting each round at the next contender so no one always goes first.
fn measure(workloads: &[Workload], p: &Params) -> Results {
    let mut runners = runners::all();
    let mut results = Results::default();
    for &w in workloads {
        eprintln!("{w}: {}", w.describe());
        for r in &runners {
            if let Err(why) = r.applies(w) {
                results.add_all(w, r.contender(), Status::NotApplicable, why);
            }
        }
        let n = runners.len();
        for rep in 0..p.reps {
            for k in 0..n {
                let r = &mut runners[(k + rep) % n];
                if r.applies(w).is_err() {
                    continue;
                }
                let c = r.contender();
                let t = Instant::now();
                let outcome = catch_unwind(AssertUnwindSafe(|| r.run(w, p)));
                let err = match outcome {
                    Ok(Ok(samples)) => {
                        results.add(c, samples);
                        None
                    }
                    Ok(Err(e)) => Some(e),
                    Err(panic) => Some(format!("panicked: {}", panic_message(&*panic))),
                };
                if let Some(e) = &err {
                    results.add_all(w, c, Status::Failed, e);
                }
                eprintln!(
                    "  rep {}/{} {:<10} {:6.2} s{}",
                    rep + 1,
                    p.reps,
                    c.column(),
                    t.elapsed().as_secs_f64(),
                    err.map(|e| format!("  FAILED: {e}")).unwrap_or_default()
                );
            }
        }
    }
    results
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> Vec<Workload> {
        Workload::ALL.to_vec()
    }

    #[test]
    fn only_a_full_run_replaces_the_committed_chart() {
        assert_eq!(may_publish(false, 5, &all()), Ok(()));
        assert_eq!(may_publish(false, 9, &all()), Ok(()));
        let mut shuffled = all();
        shuffled.reverse();
        assert_eq!(may_publish(false, 5, &shuffled), Ok(()));

        let quick = may_publish(true, 5, &all()).unwrap_err();
        assert!(quick.contains("--quick"), "{quick}");
        // The quick default of 2 repetitions, every workload: the old bug.
        let quick_default = may_publish(true, 2, &all()).unwrap_err();
        assert!(quick_default.contains("--quick") && quick_default.contains("2 repetitions"));
        let few = may_publish(false, 4, &all()).unwrap_err();
        assert!(few.contains("4 repetitions, fewer than 5"), "{few}");
        let subset = may_publish(false, 5, &[Workload::W1, Workload::W3]).unwrap_err();
        assert!(subset.starts_with("only a full run"), "{subset}");
        assert!(subset.ends_with("without W2 W4 W5 W6 W7 W8 W9 W10 T1 T3 Q1 P1"), "{subset}");
        let one_short = &all()[1..];
        assert!(may_publish(false, 5, one_short).unwrap_err().contains("without W1"));
        assert!(may_publish(false, 5, &[]).is_err());
    }

    #[test]
    fn a_full_run_by_default_meets_the_rule_and_a_quick_one_does_not() {
        let opts = parse(&[]).unwrap();
        let full = Params::full(String::new());
        assert_eq!(may_publish(opts.quick, full.reps, &opts.workloads), Ok(()));
        let opts = parse(&["--quick".to_string()]).unwrap();
        let quick = Params::quick(String::new());
        assert!(may_publish(opts.quick, quick.reps, &opts.workloads).is_err());
        let opts = parse(&["W1".to_string(), "--reps".to_string(), "7".to_string()]).unwrap();
        assert!(may_publish(opts.quick, 7, &opts.workloads).is_err());
    }
}
