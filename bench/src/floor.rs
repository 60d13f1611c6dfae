//! Measured floors under the workloads: what the machine itself costs.
//!
//! - a round trip of 8 bytes over a Unix stream socket between two processes,
//!   blocking reads (the floor under W1's `apply` round trip);
//! - the same, pipelined 64 deep (the floor under W3's throughput);
//! - a round trip between two threads through a mutex and condvar (the floor
//!   under T1, and under each thread hop inside a process pool);
//! - 16 buffers of 8 MiB, each written once into a fresh memory file, then
//!   each mapped and its bytes summed, on one thread (the floor under
//!   W8.bytebuf: the one copy a sender makes and the one read a receiver
//!   makes, with no pool, no framing and no second process).
//!
//! The harness measures them before and after every run (into its results
//! page); `cargo run --release -p multiproc-bench --bin floor` prints them alone.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use multiproc::{Fd, Process};

fn echo(mut s: Fd<UnixStream>) {
    let mut buf = [0u8; 8 * 64];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if s.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Measures the four floors; one line each.
pub fn measure() -> multiproc::Result<String> {
    let mut out = String::new();
    let (mut ours, theirs) = UnixStream::pair().expect("socketpair");
    let mut p = Process::new(echo, Fd::new(theirs));
    p.start()?;
    let mut buf = [0u8; 8];
    for _ in 0..1000 {
        ours.write_all(&buf).unwrap();
        ours.read_exact(&mut buf).unwrap();
    }
    let lat: Vec<f64> = (0..5000)
        .map(|_| {
            let t = Instant::now();
            ours.write_all(&buf).unwrap();
            ours.read_exact(&mut buf).unwrap();
            t.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    let _ = writeln!(
        out,
        "process round trip, 8 bytes over a Unix socket: median {:.1} us",
        median(lat)
    );

    let n = 200_000usize;
    let depth = 64;
    let t = Instant::now();
    let mut sent = 0;
    let mut got = 0;
    let mut big = vec![0u8; 8 * depth];
    while got < n {
        let k = depth.min(n - sent).min(depth - (sent - got));
        if k > 0 {
            ours.write_all(&big[..8 * k]).unwrap();
            sent += k;
        }
        let r = ours.read(&mut big).unwrap();
        got += r / 8;
        if r % 8 != 0 {
            ours.read_exact(&mut big[..8 - r % 8]).unwrap();
            got += 1;
        }
    }
    let _ = writeln!(
        out,
        "process messages, 8 bytes pipelined {depth} deep: {:.0} k/s",
        n as f64 / t.elapsed().as_secs_f64() / 1e3
    );
    drop(ours);
    p.join()?;

    let pair = Arc::new((Mutex::new((0u64, 0u64)), Condvar::new()));
    let other = pair.clone();
    let rounds = 20_000u64;
    let h = std::thread::spawn(move || {
        let (m, c) = &*other;
        for i in 1..=rounds {
            let mut g = m.lock().unwrap();
            while g.0 < i {
                g = c.wait(g).unwrap();
            }
            g.1 = i;
            c.notify_all();
        }
    });
    let (m, c) = &*pair;
    let t = Instant::now();
    for i in 1..=rounds {
        let mut g = m.lock().unwrap();
        g.0 = i;
        c.notify_all();
        while g.1 < i {
            g = c.wait(g).unwrap();
        }
    }
    let _ = writeln!(
        out,
        "thread round trip, mutex and condvar: {:.1} us",
        t.elapsed().as_secs_f64() * 1e6 / rounds as f64
    );
    h.join().unwrap();

    let (copy, read) = memory_files(16, 8 << 20);
    let _ = writeln!(
        out,
        "16 x 8 MiB, one copy each into a fresh memory file: {copy:.2} GB/s; mapped and summed: \
         {read:.2} GB/s; both on 2 cores at best: {:.2} GB/s",
        2.0 / (1.0 / copy + 1.0 / read)
    );
    Ok(out)
}

/// Writes `count` buffers of `size` bytes, each once, into a fresh memory
/// file (dropping the buffer after, as a pool's `map` drops its input), then
/// maps each file and sums its bytes as W8.bytebuf's task does: the rates of
/// the copy and of the read, in GB/s.
fn memory_files(count: usize, size: usize) -> (f64, f64) {
    let bufs: Vec<Vec<u8>> = (0..count).map(|i| vec![i as u8 | 1; size]).collect();
    let t = Instant::now();
    let files: Vec<std::fs::File> = bufs
        .into_iter()
        .map(|buf| {
            // SAFETY: memfd_create takes a NUL-terminated name and flags; it
            // returns a new descriptor or -1.
            let fd = unsafe { libc::memfd_create(c"floor".as_ptr(), libc::MFD_CLOEXEC) };
            assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
            // SAFETY: `fd` is a new descriptor that nothing else owns.
            let file = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
            std::os::unix::fs::FileExt::write_all_at(&file, &buf, 0).expect("write memory file");
            file
        })
        .collect();
    let copy = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let mut total = 0u64;
    for file in files {
        let fd = std::os::fd::AsRawFd::as_raw_fd(&file);
        // SAFETY: a fresh read-only mapping of `size` bytes of a file that
        // is `size` long and that no one else can shrink (nobody else has it).
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size,
                libc::PROT_READ,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                fd,
                0,
            )
        };
        assert!(p != libc::MAP_FAILED, "mmap: {}", std::io::Error::last_os_error());
        // SAFETY: `p` maps `size` readable bytes until the munmap below.
        let bytes = unsafe { std::slice::from_raw_parts(p.cast::<u8>(), size) };
        total += bytes.iter().map(|&b| u64::from(b)).sum::<u64>();
        // SAFETY: `p` is the mapping made above, of `size` bytes, and
        // `bytes` is not used after this.
        unsafe { libc::munmap(p, size) };
    }
    let read = t.elapsed().as_secs_f64();
    let want: u64 = (0..count).map(|i| u64::from(i as u8 | 1) * size as u64).sum();
    assert_eq!(total, want, "the memory files' bytes summed wrong");
    let gb = (count * size) as f64 / 1e9;
    (gb / copy, gb / read)
}
