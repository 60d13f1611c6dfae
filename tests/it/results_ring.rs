//! A worker's results ring: results come back through shared memory when
//! they are small, through the channel when not, in order either way; a
//! worker that dies with results in the ring loses none of them; and a task
//! that writes over the ring fails alone.

use std::time::{Duration, Instant};

use multiproc::{ErrorKind, Pool};

use crate::support::{assert_faster, getpid, sqr, wait_pid_gone, PROMPT, STARTUP};

/// `n` bytes that say which `n` they are.
fn sized(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 + n) as u8).collect()
}

/// Sizes below a ring record, above one (the channel, announced), and
/// above the threshold for a file of its own (the channel, with a memfd).
const SIZES: [usize; 5] = [0, 9, 20_000, 3, 300_000];

#[test]
fn results_of_every_size_arrive_in_order_whichever_way_they_travel() {
    let pool = Pool::new(2).unwrap();
    let sizes: Vec<usize> = (0..300).map(|i| SIZES[i % SIZES.len()]).collect();
    let pending: Vec<_> = sizes.iter().map(|&n| pool.apply_async(sized, n)).collect();
    for (i, (r, &n)) in pending.into_iter().zip(&sizes).enumerate() {
        let got = r.get_timeout(STARTUP).unwrap();
        assert!(got == sized(n), "result {i}: {} bytes, wanted {n} of its own", got.len());
    }
    // One item per chunk, so that results of both ways interleave in one map.
    let mapped = pool.chunksize(1).map(sized, sizes.clone()).unwrap();
    assert!(mapped.iter().zip(&sizes).all(|(got, &n)| *got == sized(n)), "map lost its order");
}

/// Ends this worker with SIGKILL.
fn die(_: u64) -> u64 {
    // SAFETY: kill on our own pid touches no memory.
    unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    unreachable!("SIGKILL returned")
}

#[test]
fn a_worker_killed_with_results_in_its_ring_loses_none_of_them() {
    let pool = Pool::new(1).unwrap();
    let pid = pool.apply(getpid, ()).unwrap();
    // Fast tasks in a row: their results are in the ring, most of them
    // before the slot has looked, when the last one kills the worker.
    let before: Vec<_> = (0..200u64).map(|i| pool.apply_async(sqr, i)).collect();
    let fatal = pool.apply_async(die, 0);
    let after: Vec<_> = (0..20u64).map(|i| pool.apply_async(sqr, i)).collect();
    for (i, r) in before.into_iter().enumerate() {
        let i = i as u64;
        assert_eq!(r.get_timeout(STARTUP).unwrap(), i * i, "task {i}, before the death");
    }
    let err = fatal.get_timeout(STARTUP).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::WorkerDied, "{err:?}");
    assert_eq!(err.pid(), Some(pid), "{err:?}");
    for (i, r) in after.into_iter().enumerate() {
        let i = i as u64;
        assert_eq!(r.get_timeout(STARTUP).unwrap(), i * i, "task {i}, after the death");
    }
}

/// The address of this worker's results ring, from its mappings.
fn ring_address() -> usize {
    let maps = std::fs::read_to_string("/proc/self/maps").expect("read /proc/self/maps");
    let line = maps
        .lines()
        .find(|l| l.contains("/memfd:multiproc-results"))
        .expect("a worker maps its results ring");
    let start = line.split('-').next().expect("a range");
    usize::from_str_radix(start, 16).expect("a hex address")
}

/// Rings every eventfd this process holds (the ring's doorbell is one).
fn ring_doorbells() {
    for entry in std::fs::read_dir("/proc/self/fd").expect("list /proc/self/fd").flatten() {
        let is_eventfd =
            std::fs::read_link(entry.path()).is_ok_and(|t| t.to_string_lossy().contains("eventfd"));
        let fd: Option<i32> = entry.file_name().to_string_lossy().parse().ok();
        if let (true, Some(fd)) = (is_eventfd, fd) {
            // SAFETY: an 8-byte write from a live buffer to an eventfd.
            unsafe { libc::write(fd, 1u64.to_ne_bytes().as_ptr().cast(), 8) };
        }
    }
}

/// Says a record of `cut` bytes was published past what the parent read
/// (a header is 6 bytes: 3 is cut short), wakes the parent, and waits.
fn corrupt_ring(cut: u64) -> u32 {
    let header = ring_address() as *mut u64;
    // SAFETY: the ring's header is at least 512 bytes of mapped, writable
    // shared memory: the written position at 0, the read one at 128 (each
    // on a line of 128 bytes). The parent reads both only as atomics and
    // checks them.
    unsafe {
        let read = header.add(16).read_volatile();
        header.write_volatile(read + cut);
    }
    ring_doorbells();
    std::thread::sleep(Duration::from_secs(60));
    std::process::id()
}

#[test]
fn a_task_that_writes_over_its_results_ring_fails_alone_and_at_once() {
    let pool = Pool::new(1).unwrap();
    for (cut, says) in [(3, "cut short"), (1 << 40, "bytes are waiting")] {
        let pid = pool.apply(getpid, ()).unwrap();
        let started = Instant::now();
        let err = pool.apply_async(corrupt_ring, cut).get_timeout(STARTUP).unwrap_err();
        assert_faster(started.elapsed(), PROMPT, "refusing a corrupt results ring");
        assert_eq!(err.kind(), ErrorKind::Protocol, "{err:?}");
        assert_eq!(err.pid(), Some(pid), "{err:?}");
        assert!(err.message().contains(says), "{err}");
        assert!(wait_pid_gone(pid, PROMPT), "the worker {pid} that broke its ring still runs");
        let squares: Vec<_> = (0..50u64).map(|i| pool.apply_async(sqr, i)).collect();
        for (i, r) in squares.into_iter().enumerate() {
            let i = i as u64;
            assert_eq!(r.get_timeout(STARTUP).unwrap(), i * i, "task {i} after the corruption");
        }
    }
}
