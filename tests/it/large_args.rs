//! Large task arguments are written into their file once, when the job is
//! made (not at each send): they arrive whole at sizes on both sides of the
//! file threshold, a job sent again after its worker died arrives whole from
//! the same file, and the parent keeps no file or descriptor of a job once
//! it is done.

use multiproc::{Bytes, Pool};

use crate::ipc_util::dev_shm;
use crate::large_values::{held, reversed};

const MIB: usize = 1 << 20;
/// The size above which a frame's body travels in a file.
const THRESHOLD: usize = 4 * MIB;
/// What a TASK frame's body adds to one `Bytes` argument of 4 MiB or so:
/// the task's head (16), the chunk's header (16), the value's length (a
/// 4-byte varint) and the chunk's one-entry length table (4). A DONE body
/// adds to a `Bytes` result the same less 8 (its head is the id alone).
const TASK_OVERHEAD: usize = 40;

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(29).wrapping_add(seed)).collect()
}

fn sum(b: Bytes) -> u64 {
    b.iter().map(|&x| u64::from(x)).sum()
}

/// Ends its worker once the jobs queued behind it have had time to be sent.
fn die(_: ()) -> u64 {
    std::thread::sleep(std::time::Duration::from_millis(300));
    std::process::exit(7)
}

fn sqr(x: u64) -> u64 {
    x * x
}

#[test]
fn arguments_and_results_around_the_file_threshold_arrive_whole() {
    if !crate::support::alone() {
        return;
    }
    let shm = dev_shm();
    {
        let pool = Pool::new(1).unwrap();
        assert_eq!(pool.apply(sum, Bytes::from(vec![1, 2])).unwrap(), 3);
    }
    let before = held();
    let pool = Pool::new(2).unwrap();
    // Bodies from 3 bytes below the threshold to 3 above it, each way.
    let sizes: Vec<usize> = (THRESHOLD - TASK_OVERHEAD - 3..=THRESHOLD - TASK_OVERHEAD + 3)
        .chain(THRESHOLD - TASK_OVERHEAD + 5..=THRESHOLD - TASK_OVERHEAD + 11)
        .collect();
    for (i, &len) in sizes.iter().enumerate() {
        let data = pattern(len, i as u8);
        let got = pool.apply(reversed, Bytes::from(data.clone())).unwrap().into_vec();
        assert_eq!(got.len(), len);
        assert!(got.iter().eq(data.iter().rev()), "{len} bytes arrived changed");
    }
    // Several large items in one chunk, and chunks of one, through `map`.
    let items: Vec<Bytes> = sizes
        .iter()
        .enumerate()
        .map(|(i, &len)| Bytes::from(pattern(len, 100 + i as u8)))
        .collect();
    let want: Vec<u64> = items.iter().map(|b| sum(b.clone())).collect();
    assert_eq!(pool.chunksize(3).map(sum, items.clone()).unwrap(), want);
    assert_eq!(pool.chunksize(1).map(sum, items).unwrap(), want);
    drop(pool);
    assert_eq!(held(), before, "files, mappings or descriptors left (memfds, maps, fds)");
    assert_eq!(dev_shm(), shm, "something appeared in /dev/shm");
}

#[test]
fn a_large_job_sent_again_after_its_worker_died_arrives_whole() {
    if !crate::support::alone() {
        return;
    }
    {
        let pool = Pool::new(1).unwrap();
        assert_eq!(pool.apply(sum, Bytes::from(vec![1, 2])).unwrap(), 3);
    }
    let before = held();
    let pool = Pool::new(1).unwrap();
    // Fast tasks first, so the worker is sent several jobs at a time: the
    // large ones behind the one that kills it are then sent to it, and
    // again to its replacement.
    assert_eq!(pool.chunksize(1).map(sqr, 0..2000u64).unwrap().len(), 2000);
    let items: Vec<Vec<u8>> = (0..3).map(|i| pattern(THRESHOLD + 1000 * i, i as u8)).collect();
    let dying = pool.apply_async(die, ());
    let large: Vec<_> =
        items.iter().map(|b| pool.apply_async(sum, Bytes::from(b.clone()))).collect();
    assert!(dying.get().is_err(), "a task that ended its worker succeeded");
    for (r, b) in large.into_iter().zip(&items) {
        assert_eq!(r.get().unwrap(), sum(Bytes::from(b.clone())), "a job arrived changed");
    }
    drop(pool);
    assert_eq!(held(), before, "files, mappings or descriptors left (memfds, maps, fds)");
}
