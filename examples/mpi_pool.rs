//! A pool whose workers are the ranks of an MPI job.
//!
//! ```text
//! cargo build --release --features mpi --example mpi_pool
//! mpirun -n 4 target/release/examples/mpi_pool
//! ```
//!
//! Rank 0 runs `main`; ranks 1..3 are diverted before `main` and serve the
//! pool. The program maps a CPU-bound function over 10,000 items and prints
//! how many tasks each rank's worker processes ran.

use std::collections::BTreeMap;

/// A CPU-bound task: some rounds of an integer hash; returns the result and
/// the MPI rank that ran it.
fn work(x: u64) -> (u64, u32) {
    let mut h = x.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    for _ in 0..20_000 {
        h ^= h >> 29;
        h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    }
    (h, multiproc::mpi::launched_rank().unwrap_or(0))
}

fn main() -> Result<(), multiproc::Error> {
    let pool = multiproc::mpi::Pool::world()?;
    let start = std::time::Instant::now();
    let results = pool.chunksize(50).map(work, 0..10_000u64)?;
    let elapsed = start.elapsed();
    let mut per_rank = BTreeMap::new();
    for (_, rank) in &results {
        *per_rank.entry(*rank).or_insert(0usize) += 1;
    }
    println!("{} tasks on {} workers in {elapsed:.2?}", results.len(), pool.processes());
    for (rank, n) in per_rank {
        println!("  rank {rank}: {n} tasks");
    }
    pool.close();
    pool.join()
}
