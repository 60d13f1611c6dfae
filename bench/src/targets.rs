//! The targets of `docs/benchmarks.md`, and
//! whether a run met them.

use crate::figures::{figure, Better, Contender, Status};
use crate::results::Table;

use Contender::{Procspawn, PyPool, Rayon};

/// A target for one of our figures.
pub struct Target {
    pub id: &'static str,
    /// As `docs/benchmarks.md` states it (what this harness cannot check in brackets).
    pub text: &'static str,
    /// An absolute bound, in the figure's unit and direction.
    pub bound: Option<f64>,
    /// Ratios to reach: against this contender's figure of that id, at least
    /// this many times better.
    pub versus: &'static [(Contender, &'static str, f64)],
}

const fn t(
    id: &'static str,
    text: &'static str,
    bound: Option<f64>,
    versus: &'static [(Contender, &'static str, f64)],
) -> Target {
    Target { id, text, bound, versus }
}

pub const TARGETS: &[Target] = &[
    t(
        "W1",
        ">=3x procspawn, >=25x py Pool [<=2x the socket floor]",
        None,
        &[(PyPool, "W1", 25.0), (Procspawn, "W1", 3.0)],
    ),
    t(
        "W2.default",
        ">=100M/s; >=3x procspawn's best, >=15x py Pool's best",
        Some(100e6),
        &[(Procspawn, "W2.best", 3.0), (PyPool, "W2.best", 15.0)],
    ),
    t("W2.peak_rss", "<= procspawn's", None, &[(Procspawn, "W2.peak_rss", 1.0)]),
    t("W3", ">=1M/s; >=60x py Pool", Some(1e6), &[(PyPool, "W3", 60.0)]),
    t("W4", "<=2 ms; >=6x py fork [40x spawn]", Some(2.0), &[(PyPool, "W4", 6.0)]),
    t("W5.rss", "<=2 MiB; >=6x smaller than py", Some(2.0), &[(PyPool, "W5.rss", 6.0)]),
    t("W6", ">=1.95x", Some(1.95), &[]),
    t("W7.pool", "<=5 ms", Some(0.005), &[]),
    t("W7.procs", ">=10x faster than py fork", None, &[(PyPool, "W7.procs", 10.0)]),
    t("W8", ">=1 GB/s; >=2x py Pool", Some(1.0), &[(PyPool, "W8", 2.0)]),
    t("W8.bytebuf", ">=3 GB/s; >=4x py Pool", Some(3.0), &[(PyPool, "W8", 4.0)]),
    t("W9", "<=50 us; >=1000x procspawn", Some(50.0), &[(Procspawn, "W9", 1000.0)]),
    t("W9.survived", "the worker survives", Some(1.0), &[]),
    t("W10", "<=10 ms (py Pool hangs)", Some(10.0), &[]),
    t("T1", ">=1.5x rayon", None, &[(Rayon, "T1", 1.5)]),
    t("T3", ">=2M/s; >=1.5x rayon", Some(2e6), &[(Rayon, "T3", 1.5)]),
    t("Q1", ">=3M/s; >=50x py Queue", Some(3e6), &[(PyPool, "Q1", 50.0)]),
    t("P1", ">=4 GB/s; >=4x py Pipe", Some(4.0), &[(PyPool, "P1", 4.0)]),
];

pub fn target(id: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.id == id)
}

/// Whether a target was met.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Met {
    Yes,
    No,
    /// A figure it needs was not measured.
    Unknown,
}

impl Met {
    pub fn as_str(self) -> &'static str {
        match self {
            Met::Yes => "yes",
            Met::No => "NO",
            Met::Unknown => "?",
        }
    }
}

/// Checks `target` against the run: every part must hold.
pub fn check(target: &Target, table: &Table<'_>) -> Met {
    let Some(def) = figure(target.id) else {
        return Met::Unknown;
    };
    let Some(ours) = table.value(target.id, Contender::Multiproc) else {
        // Measured but without a value (failed, hangs): not met.
        let measured = table.get(target.id, Contender::Multiproc);
        return match measured.map(|f| f.status) {
            Some(Status::Failed | Status::Hangs | Status::Broken) => Met::No,
            _ => Met::Unknown,
        };
    };
    let mut met = Met::Yes;
    if let Some(bound) = target.bound {
        let ok = match def.better {
            Better::Lower => ours <= bound,
            Better::Higher => ours >= bound,
        };
        if !ok {
            return Met::No;
        }
    }
    for &(c, id, factor) in target.versus {
        match table.value(id, c) {
            Some(theirs) if def.better.ratio(ours, theirs) < factor => return Met::No,
            Some(_) => {}
            None => met = Met::Unknown,
        }
    }
    met
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_target_names_a_known_figure() {
        for t in TARGETS {
            assert!(figure(t.id).is_some(), "{}", t.id);
            for (_, id, _) in t.versus {
                assert!(figure(id).is_some(), "{id}");
            }
        }
    }
}
