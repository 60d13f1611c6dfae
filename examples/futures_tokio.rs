//! A process-pool `Future` awaited inside a tokio runtime, alongside 1,000
//! other futures: awaiting it blocks no runtime thread, so the other tasks
//! all finish while the process task is still running.
//!
//! `cargo run --release --example futures_tokio`

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use multiproc::ProcessPoolExecutor;

/// Runs in a worker process.
fn slow_sum(n: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(300));
    (1..=n).sum()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> multiproc::Result<()> {
    let executor = ProcessPoolExecutor::new(2)?;
    let started = Instant::now();
    let future = executor.submit(slow_sum, 1_000_000)?;

    let finished = Arc::new(AtomicUsize::new(0));
    let others: Vec<_> = (0..1000u64)
        .map(|i| {
            let finished = finished.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(1 + i % 50)).await;
                finished.fetch_add(1, Ordering::SeqCst);
            })
        })
        .collect();
    for task in others {
        task.await.expect("a tokio task failed");
    }
    let others_done = started.elapsed();
    let all_others = finished.load(Ordering::SeqCst);
    println!(
        "1000 tokio tasks finished after {others_done:.2?}; process task done: {}",
        future.done()
    );

    let sum = future.await?;
    println!("process task returned {sum} after {:.2?}", started.elapsed());
    assert_eq!(sum, 500_000_500_000);
    assert_eq!(all_others, 1000);
    assert!(others_done < Duration::from_millis(300), "the runtime was blocked");
    Ok(())
}
