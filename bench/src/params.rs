//! The counts of one run: the full run follows docs/benchmarks.md; `--quick`
//! uses fewer repetitions and smaller counts. The same values go to the Python
//! scripts as JSON, so every contender does the same work.

use serde::{Deserialize, Serialize};

/// Repetitions of a full run; fewer never replace the committed chart.
pub const FULL_REPS: usize = 5;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Params {
    pub quick: bool,
    /// Repetitions of every workload, interleaved across contenders.
    pub reps: usize,
    pub w1_calls: usize,
    pub w2_items: u64,
    /// Chunksizes tried for W2's "best".
    pub w2_chunksizes: Vec<usize>,
    /// ProcessPoolExecutor.map's default chunksize is 1: fewer items there.
    pub w2_ppe_default_items: u64,
    pub w3_tasks: u64,
    /// procspawn holds file descriptors per pending task: W3 runs in waves.
    pub procspawn_wave: usize,
    /// Pool creations per repetition of W4 (their median is the sample).
    pub w4_samples: usize,
    pub w6_task_secs: f64,
    pub w6_tasks: usize,
    pub w7_tasks: usize,
    pub w8_buffers: usize,
    pub w8_buf_bytes: usize,
    pub w9_tasks: usize,
    /// A panic kills procspawn's worker (tens of ms to replace): fewer there.
    pub w9_procspawn_tasks: usize,
    /// How long W10 waits for a result before calling it a hang.
    pub w10_timeout_s: f64,
    pub t1_calls: usize,
    pub t3_tasks: u64,
    /// Small items through a queue (Q1).
    pub q1_items: u64,
    /// 1 MiB messages through a pipe (P1).
    pub p1_msgs: usize,
    /// Scratch directory for W10's pid files.
    pub tmpdir: String,
}

impl Params {
    pub fn full(tmpdir: String) -> Params {
        Params {
            quick: false,
            reps: FULL_REPS,
            w1_calls: 2000,
            w2_items: 1_000_000,
            w2_chunksizes: vec![1_000, 10_000, 50_000, 125_000, 250_000],
            w2_ppe_default_items: 20_000,
            w3_tasks: 100_000,
            procspawn_wave: 1_000,
            w4_samples: 5,
            w6_task_secs: 0.4,
            w6_tasks: 8,
            w7_tasks: 1000,
            w8_buffers: 16,
            w8_buf_bytes: 8 << 20,
            w9_tasks: 1000,
            w9_procspawn_tasks: 20,
            w10_timeout_s: 3.0,
            t1_calls: 2000,
            t3_tasks: 100_000,
            q1_items: 1_000_000,
            p1_msgs: 2_000,
            tmpdir,
        }
    }

    pub fn quick(tmpdir: String) -> Params {
        Params {
            quick: true,
            reps: 2,
            w1_calls: 500,
            w2_items: 200_000,
            w2_chunksizes: vec![1_000, 25_000, 100_000],
            w2_ppe_default_items: 5_000,
            w3_tasks: 20_000,
            w4_samples: 3,
            w6_task_secs: 0.1,
            w7_tasks: 200,
            w8_buf_bytes: 2 << 20,
            w9_tasks: 200,
            w9_procspawn_tasks: 5,
            w10_timeout_s: 1.5,
            t1_calls: 500,
            t3_tasks: 20_000,
            q1_items: 200_000,
            p1_msgs: 500,
            ..Params::full(tmpdir)
        }
    }

    /// The counts, for the run's header.
    pub fn describe(&self) -> String {
        format!(
            "{} repetitions; W1 {} calls; W2 {} items, chunksizes {:?} (PPE default: {} items); \
             W3 {} tasks (procspawn in waves of {}); W4 {} pools per rep; W6 {} tasks of ~{} s; \
             W7 {} tasks; W8 {} x {} MiB; W9 {} tasks (procspawn {}); W10 bound {} s; \
             T1 {} calls; T3 {} tasks; Q1 {} items; P1 {} x 1 MiB",
            self.reps,
            self.w1_calls,
            self.w2_items,
            self.w2_chunksizes,
            self.w2_ppe_default_items,
            self.w3_tasks,
            self.procspawn_wave,
            self.w4_samples,
            self.w6_tasks,
            self.w6_task_secs,
            self.w7_tasks,
            self.w8_buffers,
            self.w8_buf_bytes >> 20,
            self.w9_tasks,
            self.w9_procspawn_tasks,
            self.w10_timeout_s,
            self.t1_calls,
            self.t3_tasks,
            self.q1_items,
            self.p1_msgs,
        )
    }
}
