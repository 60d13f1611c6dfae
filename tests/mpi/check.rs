//! MPI scenarios, run by `tests/mpi/run.sh` under `mpirun -n 3` and `-n 5`.
//!
//! `mpi_check` (no argument) runs every check on rank 0 and prints
//! `N passed, N failed`; the exit code is non-zero when any failed.
//! `mpi_check mismatch` expects `world()` to refuse ranks of another build
//! (run as `mpirun -n 1 mpi_check mismatch : -n 2 mpi_pool`).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use multiproc::mpi::{Pool, ProcessPoolExecutor};
use multiproc::ErrorKind;

fn square(x: u64) -> u64 {
    x * x
}

fn add(a: u64, b: u64) -> u64 {
    a + b
}

/// The rank and pid of the process that runs the task.
fn whoami(_: ()) -> (u32, u32) {
    (multiproc::mpi::launched_rank().unwrap_or(u32::MAX), std::process::id())
}

fn boom(x: u64) -> u64 {
    if x == 3 {
        panic!("boom at {x}");
    }
    x
}

fn segfault(x: u64) -> u64 {
    if x == 0 {
        // SAFETY: deliberately kills this worker process with SIGSEGV.
        unsafe { libc::raise(libc::SIGSEGV) };
    }
    x
}

fn nap(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

type Check = fn() -> Result<(), String>;

fn ensure(cond: bool, what: impl FnOnce() -> String) -> Result<(), String> {
    if cond {
        Ok(())
    } else {
        Err(what())
    }
}

fn results_in_order() -> Result<(), String> {
    let pool = Pool::world().map_err(|e| e.to_string())?;
    let want: Vec<u64> = (0..2000).map(square).collect();
    let got = pool.map(square, 0..2000u64).map_err(|e| e.to_string())?;
    ensure(got == want, || "map".into())?;
    for chunk in [1, 7, 100] {
        let got = pool.chunksize(chunk).map(square, 0..2000u64).map_err(|e| e.to_string())?;
        ensure(got == want, || format!("map chunksize {chunk}"))?;
    }
    let lazy: Vec<u64> = pool.imap(square, 0..2000u64).map(|r| r.unwrap()).collect();
    ensure(lazy == want, || "imap".into())?;
    let mut unordered: Vec<u64> =
        pool.imap_unordered(square, 0..2000u64).map(|r| r.unwrap()).collect();
    unordered.sort_unstable();
    ensure(unordered == want, || "imap_unordered".into())?;
    let sums = pool.starmap(add, (0..100u64).map(|i| (i, i))).map_err(|e| e.to_string())?;
    ensure(sums == (0..100).map(|i| 2 * i).collect::<Vec<_>>(), || "starmap".into())?;
    ensure(pool.apply(add, (2, 3)).map_err(|e| e.to_string())? == 5, || "apply".into())?;
    pool.close();
    pool.join().map_err(|e| e.to_string())
}

fn tasks_run_on_other_ranks_and_callbacks_on_rank_0() -> Result<(), String> {
    let pool = Pool::world().map_err(|e| e.to_string())?;
    let me = std::process::id();
    let seen = Arc::new(AtomicU32::new(0));
    let s = seen.clone();
    let (rank, pid) = pool
        .apply_async(whoami, ())
        .callback(move |_| s.store(std::process::id(), Ordering::SeqCst))
        .get()
        .map_err(|e| e.to_string())?;
    ensure(rank >= 1 && pid != me, || format!("the task ran on rank {rank}, pid {pid}"))?;
    pool.close();
    pool.join().map_err(|e| e.to_string())?;
    ensure(seen.load(Ordering::SeqCst) == me, || "the callback did not run on rank 0".into())?;
    let ranks: std::collections::BTreeSet<u32> = pool_ranks()?;
    let size = std::env::var("OMPI_COMM_WORLD_SIZE").ok().and_then(|s| s.parse().ok());
    ensure(Some(ranks.len() as u32 + 1) == size, || format!("tasks ran on ranks {ranks:?}"))
}

fn pool_ranks() -> Result<std::collections::BTreeSet<u32>, String> {
    let pool = Pool::world().map_err(|e| e.to_string())?;
    let out = pool.chunksize(1).map(|_: u64| nap(20), 0..40u64).map_err(|e| e.to_string())?;
    drop(out);
    let r = pool.chunksize(1).map(|_: u64| whoami(()).0, 0..200u64).map_err(|e| e.to_string())?;
    Ok(r.into_iter().collect())
}

fn errors_and_panics_propagate() -> Result<(), String> {
    let pool = Pool::world().map_err(|e| e.to_string())?;
    let out: Vec<_> = pool.chunksize(1).imap(boom, 0..6u64).collect();
    for (i, r) in out.iter().enumerate() {
        match (i, r) {
            (3, Err(e)) => ensure(
                e.kind() == ErrorKind::TaskPanicked && e.panic_message() == Some("boom at 3"),
                || format!("panic: {e}"),
            )?,
            (_, Ok(v)) => ensure(*v == i as u64, || format!("item {i}"))?,
            (_, r) => return Err(format!("item {i}: {r:?}")),
        }
    }
    let e = pool.map(boom, 0..6u64).unwrap_err();
    ensure(e.is_panic(), || format!("map: {e}"))?;
    Ok(())
}

fn byte_len(b: multiproc::Bytes) -> usize {
    b.len()
}

/// An argument larger than one message to a rank is refused at once, with
/// an error naming the cause (a rank used to drop the message, and the call
/// never returned); the pool goes on.
fn an_argument_too_large_for_a_message_is_refused() -> Result<(), String> {
    let pool = Pool::world().map_err(|e| e.to_string())?;
    let huge = multiproc::Bytes::from(vec![0u8; (512 << 20) + 1]);
    let e = pool.apply(byte_len, huge).unwrap_err();
    ensure(e.kind() == ErrorKind::Serialize && e.to_string().contains("one message"), || {
        format!("too large: {e}")
    })?;
    let small = multiproc::Bytes::from(vec![1u8; 1000]);
    ensure(pool.apply(byte_len, small).ok() == Some(1000), || "the pool did not go on".into())
}

fn a_segfault_fails_only_its_task() -> Result<(), String> {
    let pool = Pool::world().map_err(|e| e.to_string())?;
    let out: Vec<_> = pool.chunksize(1).imap(segfault, 0..20u64).collect();
    let e = out[0].as_ref().unwrap_err();
    ensure(e.kind() == ErrorKind::WorkerDied && e.to_string().contains("SIGSEGV"), || {
        format!("segfault: {e}")
    })?;
    for (i, r) in out.iter().enumerate().skip(1) {
        ensure(r.as_ref().ok() == Some(&(i as u64)), || format!("item {i}: {r:?}"))?;
    }
    // The rank replaced its worker and goes on.
    let again = pool.map(square, 0..100u64).map_err(|e| e.to_string())?;
    ensure(again.len() == 100, || "after the crash".into())
}

fn per_task_timeout() -> Result<(), String> {
    let pool = Pool::builder()
        .task_timeout(Duration::from_millis(300))
        .build()
        .map_err(|e| e.to_string())?;
    let t = Instant::now();
    let e = pool.apply(nap, 10_000).unwrap_err();
    ensure(e.is_timeout(), || format!("timeout: {e}"))?;
    ensure(t.elapsed() < Duration::from_secs(5), || format!("took {:?}", t.elapsed()))?;
    ensure(matches!(pool.apply(nap, 1), Ok(1)), || "after the timeout".into())
}

fn terminate_cancels_without_waiting() -> Result<(), String> {
    let pool = Pool::world().map_err(|e| e.to_string())?;
    let slow = pool.chunksize(1).map_async(nap, vec![5_000u64; 8]);
    std::thread::sleep(Duration::from_millis(200));
    let t = Instant::now();
    pool.terminate();
    let e = slow.get().unwrap_err();
    ensure(e.is_cancelled(), || format!("terminate: {e}"))?;
    pool.join().map_err(|e| e.to_string())?;
    ensure(t.elapsed() < Duration::from_secs(2), || format!("took {:?}", t.elapsed()))?;
    drop(pool);
    // The ranks stopped those tasks: a new pool runs at once.
    let pool = Pool::world().map_err(|e| e.to_string())?;
    let t = Instant::now();
    ensure(matches!(pool.apply(square, 9), Ok(81)), || "new pool".into())?;
    ensure(t.elapsed() < Duration::from_secs(3), || format!("new pool took {:?}", t.elapsed()))
}

fn executor_futures() -> Result<(), String> {
    let ex = ProcessPoolExecutor::world().map_err(|e| e.to_string())?;
    let futures: Vec<_> = (0..50u64)
        .map(|i| ex.submit(square, i))
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    let done = multiproc::wait(futures.clone(), None, multiproc::ALL_COMPLETED);
    ensure(done.not_done.is_empty(), || "wait".into())?;
    let got: Vec<u64> = futures.iter().map(|f| f.result().unwrap()).collect();
    ensure(got == (0..50).map(square).collect::<Vec<_>>(), || "results".into())?;
    let n = multiproc::as_completed(futures.clone(), None).count();
    ensure(n == 50, || format!("as_completed gave {n}"))?;
    let f = ex.submit(add, (40, 2)).map_err(|e| e.to_string())?;
    let rt = tokio::runtime::Builder::new_current_thread().build().map_err(|e| e.to_string())?;
    let v = rt.block_on(f).map_err(|e| e.to_string())?;
    ensure(v == 42, || ".await".into())?;
    let mapped: Vec<u64> = ex.map(square, 0..100u64).map(Result::unwrap).collect();
    ensure(mapped.len() == 100, || "executor map".into())?;
    ex.shutdown();
    Ok(())
}

fn main() {
    if std::env::args().nth(1).as_deref() == Some("mismatch") {
        match Pool::world() {
            Err(e) if e.kind() == ErrorKind::BuildMismatch => {
                println!("refused: {e}");
                println!("1 passed, 0 failed");
            }
            other => {
                println!("expected a build mismatch, got {:?}", other.map(|p| p.processes()));
                println!("0 passed, 1 failed");
                std::process::exit(1);
            }
        }
        return;
    }
    if std::env::args().nth(1).as_deref() == Some("rank-dies") {
        // A task that kills its whole rank (no isolation): Open MPI ends the
        // job; rank 0 must not outlive it waiting (run.sh bounds the time).
        let pool = Pool::builder().isolate(false).build().expect("world");
        let r = pool.apply(segfault, 0);
        println!("rank 0 still running after its worker rank died: {r:?}");
        std::thread::sleep(Duration::from_secs(30));
        std::process::exit(3);
    }
    if std::env::args().nth(1).as_deref() == Some("idle") {
        // For measuring what idle ranks cost: a pool that waits 2 s.
        let pool = Pool::world().expect("world");
        assert_eq!(pool.apply(square, 3).ok(), Some(9));
        std::thread::sleep(Duration::from_secs(2));
        return;
    }
    let checks: [(&str, Check); 8] = [
        ("results_in_order", results_in_order),
        (
            "tasks_run_on_other_ranks_and_callbacks_on_rank_0",
            tasks_run_on_other_ranks_and_callbacks_on_rank_0,
        ),
        ("errors_and_panics_propagate", errors_and_panics_propagate),
        (
            "an_argument_too_large_for_a_message_is_refused",
            an_argument_too_large_for_a_message_is_refused,
        ),
        ("a_segfault_fails_only_its_task", a_segfault_fails_only_its_task),
        ("per_task_timeout", per_task_timeout),
        ("terminate_cancels_without_waiting", terminate_cancels_without_waiting),
        ("executor_futures", executor_futures),
    ];
    let (mut passed, mut failed) = (0, 0);
    for (name, check) in checks {
        let t = Instant::now();
        match check() {
            Ok(()) => {
                passed += 1;
                println!("PASS {name} ({:.0?})", t.elapsed());
            }
            Err(why) => {
                failed += 1;
                println!("FAIL {name}: {why}");
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    if failed > 0 {
        std::process::exit(1);
    }
}
