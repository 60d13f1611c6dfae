//! A quick timing of the pool's round trip and throughput, on 2 workers:
//! `apply` latency (median and p99 of 2000 calls) and 100,000 `apply_async`
//! tasks waited for together. The full comparison lives in the bench harness.

use std::time::Instant;

use multiproc::Pool;

fn inc(x: u64) -> u64 {
    x + 1
}

fn main() -> multiproc::Result<()> {
    let pool = Pool::new(2)?;
    pool.map(inc, 0..100)?; // warm up both workers
    let mut lat: Vec<f64> = (0..2000)
        .map(|i| {
            let t = Instant::now();
            pool.apply(inc, i).unwrap();
            t.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    lat.sort_by(f64::total_cmp);
    println!("apply round trip: median {:.1} us, p99 {:.1} us", lat[1000], lat[1980]);

    let n = 100_000u64;
    let t = Instant::now();
    let results: Vec<_> = (0..n).map(|i| pool.apply_async(inc, i)).collect();
    let sum: u64 = results.into_iter().map(|r| r.get().unwrap()).sum();
    let secs = t.elapsed().as_secs_f64();
    assert_eq!(sum, n * (n + 1) / 2);
    println!("apply_async x {n}: {:.0} tasks/s ({secs:.3} s)", n as f64 / secs);
    pool.close();
    pool.join()
}
