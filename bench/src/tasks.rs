//! The task functions every Rust contender runs, and helpers around them.
//! Process pools need `fn` items with serde arguments: these are they.

use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

pub fn inc(x: u64) -> u64 {
    x + 1
}

pub fn noop(_x: u64) {}

pub fn boom(x: u64) -> u64 {
    panic!("boom {x}")
}

pub fn getpid(_x: u64) -> u32 {
    std::process::id()
}

/// `x + 1` over a hand-made chunk (procspawn has no map).
pub fn inc_chunk(chunk: Vec<u64>) -> Vec<u64> {
    chunk.into_iter().map(inc).collect()
}

/// CPU-bound work: `n` steps of a linear congruential generator.
pub fn spin(n: u64) -> u64 {
    let mut x: u64 = 1;
    for _ in 0..n {
        x = black_box(
            x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407),
        );
    }
    x
}

/// How many `spin` steps take about `secs` on this machine (best of 3).
pub fn calibrate_spin(secs: f64) -> u64 {
    let n = 5_000_000;
    let best = (0..3)
        .map(|_| {
            let t = Instant::now();
            black_box(spin(black_box(n)));
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min);
    ((n as f64 * secs / best) as u64).max(1)
}

/// The sum of a buffer's bytes.
pub fn checksum(buf: Vec<u8>) -> u64 {
    buf.iter().map(|&b| u64::from(b)).sum()
}

/// The sum of a buffer's bytes, for a buffer that serde moves as one blob.
pub fn checksum_bytes(buf: serde_bytes::ByteBuf) -> u64 {
    checksum(buf.into_vec())
}

/// The sum of a buffer's bytes, as multiproc's bytes fast path (its
/// `Bytes`) carries it: read where it arrived, shared memory or not.
pub fn checksum_blob(buf: multiproc::Bytes) -> u64 {
    buf.iter().map(|&b| u64::from(b)).sum()
}

/// `count` buffers of `size` pseudo-random bytes.
pub fn buffers(count: usize, size: usize) -> Vec<Vec<u8>> {
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    (0..count)
        .map(|_| {
            let mut buf = Vec::with_capacity(size);
            while buf.len() < size {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let take = (size - buf.len()).min(8);
                buf.extend_from_slice(&state.to_le_bytes()[..take]);
            }
            buf
        })
        .collect()
}

/// W10's victim task: publishes its worker's pid in the file `path`, then
/// sleeps far beyond any bound of the benchmark.
pub fn long_task(path: String) -> u32 {
    let tmp = format!("{path}.tmp");
    let pid = std::process::id();
    if std::fs::write(&tmp, pid.to_string()).is_ok() {
        let _ = std::fs::rename(&tmp, &path);
    }
    std::thread::sleep(Duration::from_secs(60));
    pid
}

/// Waits for a `long_task` to publish its pid in `path`.
pub fn wait_for_pid_file(path: &str, timeout: Duration) -> Result<u32, String> {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if let Ok(text) = std::fs::read_to_string(Path::new(path)) {
            return text.trim().parse().map_err(|e| format!("bad pid file: {e}"));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Err(format!("no worker started the long task within {timeout:?}"))
}

/// Seconds since `t`, for readability at the call sites.
pub fn secs(t: Instant) -> f64 {
    t.elapsed().as_secs_f64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helpers() {
        let bufs = buffers(2, 1001);
        assert_eq!(bufs[0].len(), 1001);
        assert_ne!(bufs[0], bufs[1]);
        assert_eq!(checksum(vec![1, 2, 255]), 258);
        assert_eq!(inc_chunk(vec![1, 2]), vec![2, 3]);
        assert!(calibrate_spin(0.01) > 0);
    }
}
