//! What is measured: workloads, contenders, the figures each workload yields,
//! and one measured sample of a figure.

use std::fmt;

/// A workload of `docs/benchmarks.md`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Workload {
    W1,
    W2,
    W3,
    W4,
    W5,
    W6,
    W7,
    W8,
    W9,
    W10,
    T1,
    T3,
    /// Queue throughput, small items, one producer process to one consumer.
    Q1,
    /// Pipe bandwidth, 1 MiB messages, one sending process to one receiver.
    P1,
}

impl Workload {
    pub const ALL: [Workload; 14] = [
        Workload::W1,
        Workload::W2,
        Workload::W3,
        Workload::W4,
        Workload::W5,
        Workload::W6,
        Workload::W7,
        Workload::W8,
        Workload::W9,
        Workload::W10,
        Workload::T1,
        Workload::T3,
        Workload::Q1,
        Workload::P1,
    ];

    pub fn parse(s: &str) -> Option<Workload> {
        Workload::ALL.into_iter().find(|w| w.to_string().eq_ignore_ascii_case(s))
    }

    /// T1 and T3 run on thread pools; the rest on process pools.
    pub fn on_threads(self) -> bool {
        matches!(self, Workload::T1 | Workload::T3)
    }

    /// Q1 and P1 measure the process-shared channels, not a pool.
    pub fn on_channels(self) -> bool {
        matches!(self, Workload::Q1 | Workload::P1)
    }

    /// One line on what the workload does, for the table's legend.
    pub fn describe(self) -> &'static str {
        match self {
            Workload::W1 => "apply(x+1) waited one at a time, 2 workers",
            Workload::W2 => "map(x+1) over 1M ints, 2 workers; parent peak RSS in a fresh process",
            Workload::W3 => "apply_async(x+1) x 100k, then wait for all, 2 workers",
            Workload::W4 => "create a pool of 4 and get one result",
            Workload::W5 => "one idle worker's memory (smaps_rollup)",
            Workload::W6 => "8 CPU-bound tasks of ~0.4 s: 1 worker vs 2",
            Workload::W7 => {
                "1000 trivial tasks: Pool(5).map incl. create/close/join vs 1 process per task"
            }
            Workload::W8 => "map over 16 buffers of 8 MiB returning a checksum, 2 workers",
            Workload::W9 => "1000 panicking (raising) tasks, submitted then waited, 2 workers",
            Workload::W10 => {
                "SIGKILL a worker mid-task: until its result fails and a replacement ran a task"
            }
            Workload::T1 => "W1 on a thread pool of 2",
            Workload::T3 => "W3 on a thread pool of 2",
            Workload::Q1 => "Queue: 1 producer process puts small ints, the parent gets them",
            Workload::P1 => "Pipe: 1 sending process, 1 MiB messages as bytes to the parent",
        }
    }
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// Who is measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Contender {
    Multiproc,
    PyPool,
    PyExecutor,
    Procspawn,
    Rayon,
}

impl Contender {
    pub const ALL: [Contender; 5] = [
        Contender::Multiproc,
        Contender::PyPool,
        Contender::PyExecutor,
        Contender::Procspawn,
        Contender::Rayon,
    ];

    /// Short column heading.
    pub fn column(self) -> &'static str {
        match self {
            Contender::Multiproc => "multiproc",
            Contender::PyPool => "py Pool",
            Contender::PyExecutor => "py PPE",
            Contender::Procspawn => "procspawn",
            Contender::Rayon => "rayon",
        }
    }

    /// Short name of what ran for `w`: the column heading, except where
    /// the Python anchor is not its Pool (Q1 runs its Queue, P1 its Pipe).
    pub fn short(self, w: Workload) -> &'static str {
        match (self, w) {
            (Contender::PyPool, Workload::Q1) => "py Queue",
            (Contender::PyPool, Workload::P1) => "py Pipe",
            _ => self.column(),
        }
    }

    /// Full name of what ran for `w` (thread workloads use the thread pools).
    pub fn name(self, w: Workload) -> &'static str {
        match (self, w) {
            (Contender::Multiproc, Workload::Q1) => return "multiproc.Queue",
            (Contender::Multiproc, Workload::P1) => return "multiproc.Pipe",
            (Contender::PyPool, Workload::Q1) => return "python.multiprocessing.Queue",
            (Contender::PyPool, Workload::P1) => return "python.multiprocessing.Pipe",
            _ => {}
        }
        match (self, w.on_threads()) {
            (Contender::Multiproc, false) => "multiproc.Pool",
            (Contender::Multiproc, true) => "multiproc.ThreadPool",
            (Contender::PyPool, false) => "python.multiprocessing.Pool",
            (Contender::PyPool, true) => "python.multiprocessing.pool.ThreadPool",
            (Contender::PyExecutor, _) => "python.concurrent.futures.ProcessPoolExecutor",
            (Contender::Procspawn, _) => "procspawn.Pool",
            (Contender::Rayon, _) => "rayon.ThreadPool",
        }
    }

    /// Whether this contender counts as an anchor for our ratio on `w`:
    /// process pools for process workloads, thread pools for thread ones.
    /// (Rayon's W2 and W6 figures are shown for scale, not compared.)
    pub fn is_anchor(self, w: Workload) -> bool {
        match self {
            Contender::Multiproc => false,
            Contender::PyPool => true,
            Contender::PyExecutor | Contender::Procspawn => !w.on_threads() && !w.on_channels(),
            Contender::Rayon => w.on_threads(),
        }
    }
}

/// Which direction is better.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Better {
    Lower,
    Higher,
}

impl Better {
    pub fn as_str(self) -> &'static str {
        match self {
            Better::Lower => "lower",
            Better::Higher => "higher",
        }
    }

    /// True when `a` is better than `b`.
    pub fn prefers(self, a: f64, b: f64) -> bool {
        match self {
            Better::Lower => a < b,
            Better::Higher => a > b,
        }
    }

    /// How many times better `ours` is than `other` (> 1: ours is better).
    pub fn ratio(self, ours: f64, other: f64) -> f64 {
        match self {
            Better::Lower => other / ours,
            Better::Higher => ours / other,
        }
    }
}

/// How the repetitions of a figure are summarised.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Summary {
    Median,
    /// Yes/no figures: all repetitions must say yes.
    All,
}

/// One figure a workload yields.
pub struct FigureDef {
    pub id: &'static str,
    pub workload: Workload,
    pub metric: &'static str,
    pub unit: &'static str,
    pub better: Better,
    pub summary: Summary,
    /// Whether our ratio to the best anchor is meaningful for it.
    pub compared: bool,
}

const fn def(
    id: &'static str,
    workload: Workload,
    metric: &'static str,
    unit: &'static str,
    better: Better,
) -> FigureDef {
    FigureDef { id, workload, metric, unit, better, summary: Summary::Median, compared: true }
}

use Better::{Higher, Lower};
use Workload as W;

/// Every figure, in table order.
pub const FIGURES: &[FigureDef] = &[
    def("W1", W::W1, "apply round trip, median", "us", Lower),
    def("W1.p99", W::W1, "apply round trip, p99", "us", Lower),
    def("W2.default", W::W2, "map, default chunksize", "items/s", Higher),
    def("W2.progress", W::W2, "map, default chunksize, progress hook", "items/s", Higher),
    def("W2.best", W::W2, "map, best chunksize", "items/s", Higher),
    def("W2.peak_rss", W::W2, "parent peak RSS (VmHWM)", "MiB", Lower),
    def("W3", W::W3, "apply_async throughput", "tasks/s", Higher),
    def("W4", W::W4, "pool(4) + first result", "ms", Lower),
    def("W5.rss", W::W5, "idle worker RSS", "MiB", Lower),
    def("W5.uss", W::W5, "idle worker USS", "MiB", Lower),
    def("W6", W::W6, "speed-up, 2 workers vs 1", "x", Higher),
    def("W7.pool", W::W7, "Pool(5).map, create to join", "s", Lower),
    def("W7.procs", W::W7, "one process per task", "s", Lower),
    FigureDef { compared: false, ..def("W7.ratio", W::W7, "process-per-task / pool", "x", Lower) },
    def("W8", W::W8, "bytes moved through map", "GB/s", Higher),
    def(
        "W8.bytebuf",
        W::W8,
        "same, bytes fast path (multiproc::Bytes; procspawn: serde_bytes::ByteBuf)",
        "GB/s",
        Higher,
    ),
    def("W9", W::W9, "per panicking task", "us", Lower),
    FigureDef {
        summary: Summary::All,
        compared: false,
        ..def("W9.survived", W::W9, "worker survived (same pids)", "bool", Higher)
    },
    def("W10", W::W10, "kill to failed result + replacement", "ms", Lower),
    def("W10.fail", W::W10, "kill to failed result", "ms", Lower),
    def("T1", W::T1, "apply round trip, median", "us", Lower),
    def("T1.p99", W::T1, "apply round trip, p99", "us", Lower),
    def("T3", W::T3, "apply_async throughput", "tasks/s", Higher),
    def("Q1", W::Q1, "Queue, small items, 1 -> 1 process", "items/s", Higher),
    def("P1", W::P1, "Pipe, 1 MiB messages, 1 -> 1 process", "GB/s", Higher),
];

pub fn figure(id: &str) -> Option<&'static FigureDef> {
    FIGURES.iter().find(|f| f.id == id)
}

/// How a sample (or a figure) came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Ok,
    /// A bounded wait ran out where the contender would wait forever.
    Hangs,
    /// The whole pool became unusable.
    Broken,
    Failed,
    NotApplicable,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Hangs => "hangs",
            Status::Broken => "broken",
            Status::Failed => "failed",
            Status::NotApplicable => "n/a",
        }
    }

    pub fn parse(s: &str) -> Status {
        match s {
            "ok" => Status::Ok,
            "hangs" => Status::Hangs,
            "broken" => Status::Broken,
            "n/a" => Status::NotApplicable,
            _ => Status::Failed,
        }
    }
}

/// One repetition's value of one figure for one contender.
#[derive(Clone, Debug)]
pub struct Sample {
    pub id: String,
    pub value: Option<f64>,
    pub status: Status,
    pub note: Option<String>,
}

impl Sample {
    pub fn ok(id: &str, value: f64) -> Sample {
        Sample { id: id.to_string(), value: Some(value), status: Status::Ok, note: None }
    }

    pub fn with_note(mut self, note: impl Into<String>) -> Sample {
        self.note = Some(note.into());
        self
    }

    pub fn not_ok(id: &str, status: Status, note: impl Into<String>) -> Sample {
        Sample { id: id.to_string(), value: None, status, note: Some(note.into()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Q1 and P1 are compared with Python's Queue and Pipe, and the
    /// results page must say so rather than "py Pool".
    #[test]
    fn the_python_anchor_is_named_by_what_ran() {
        assert_eq!(Contender::PyPool.short(Workload::Q1), "py Queue");
        assert_eq!(Contender::PyPool.short(Workload::P1), "py Pipe");
        assert_eq!(Contender::PyPool.short(Workload::W3), "py Pool");
        assert_eq!(Contender::Procspawn.short(Workload::Q1), "procspawn");
    }
}
