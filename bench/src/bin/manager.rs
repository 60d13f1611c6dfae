//! The manager workloads, multiproc next to Python's `Manager` in the same
//! run: a proxy dict get+set round trip from a child (us), and 10 processes
//! x 1000 appends to a shared list (appends/s).
//!
//! `cargo run --release -p multiproc-bench --bin manager [-- ROUNDS]`
//! (run from the repository root; Python's side is
//! `bench/python/manager_bench.py`).

use std::time::Instant;

use multiproc::manager::{DictProxy, ListProxy, Manager, ValueProxy};
use multiproc::Process;

fn roundtrip((d, n, out): (DictProxy<String, u64>, u64, ValueProxy<f64>)) {
    let k = "k".to_string();
    d.insert(k.clone(), 0).unwrap();
    let t = Instant::now();
    for _ in 0..n {
        let v = d.get(&k).unwrap().unwrap();
        d.insert(k.clone(), v + 1).unwrap();
    }
    out.set(t.elapsed().as_secs_f64() / n as f64 * 1e6).unwrap();
}

fn appender((l, n): (ListProxy<u64>, u64)) {
    for i in 0..n {
        l.append(i).unwrap();
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn ours(n: u64, per: u64) -> (f64, f64) {
    let m = Manager::start().unwrap();
    let d = m.dict::<String, u64>().unwrap();
    let out = m.value(0.0f64).unwrap();
    let mut p = Process::new(roundtrip, (d.clone(), n, out.clone()));
    p.start().unwrap();
    p.join().unwrap();
    let rt = out.get().unwrap();
    let l = m.list::<u64>().unwrap();
    let t = Instant::now();
    let mut ps: Vec<Process> = (0..10).map(|_| Process::new(appender, (l.clone(), per))).collect();
    for p in &mut ps {
        p.start().unwrap();
    }
    for p in &mut ps {
        p.join().unwrap();
    }
    let el = t.elapsed().as_secs_f64();
    assert_eq!(l.len().unwrap() as u64, 10 * per);
    (rt, (10 * per) as f64 / el)
}

fn python(n: u64, per: u64) -> Option<(f64, f64)> {
    let out = std::process::Command::new("python3")
        .args(["bench/python/manager_bench.py", &n.to_string(), &per.to_string()])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(text.trim()).ok()?;
    Some((v["roundtrip_us"].as_f64()?, v["appends_per_s"].as_f64()?))
}

fn main() {
    let reps: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(3);
    let (n, per) = (5000, 1000);
    let (mut rt, mut ap, mut prt, mut pap) = (vec![], vec![], vec![], vec![]);
    for _ in 0..reps {
        let (a, b) = ours(n, per);
        rt.push(a);
        ap.push(b);
        if let Some((a, b)) = python(n, per) {
            prt.push(a);
            pap.push(b);
        }
    }
    println!("median of {reps} interleaved runs ({n} get+set round trips; 10 x {per} appends)");
    println!("{:<40} {:>12} {:>12}", "", "multiproc", "Python");
    let p = |v: &Vec<f64>| if v.is_empty() { f64::NAN } else { median(v.clone()) };
    println!(
        "{:<40} {:>12.1} {:>12.1}",
        "dict get+set round trip from a child (us)",
        p(&rt),
        p(&prt)
    );
    println!("{:<40} {:>12.0} {:>12.0}", "10 procs x 1000 list appends (ops/s)", p(&ap), p(&pap));
    println!(
        "ratios: round trip {:.1}x faster, appends {:.1}x faster",
        p(&prt) / p(&rt),
        p(&ap) / p(&pap)
    );
}
