//! Collecting samples across repetitions and summarising them per figure.

use std::collections::BTreeMap;

use crate::figures::{figure, Contender, FigureDef, Sample, Status, Summary, Workload, FIGURES};
use crate::stats;

/// The summary of one figure for one contender over the repetitions.
pub struct Figure {
    pub def: &'static FigureDef,
    pub contender: Contender,
    /// Median (or, for yes/no figures, the minimum) of the good repetitions.
    pub value: Option<f64>,
    /// Min and max of the good repetitions.
    pub spread: Option<(f64, f64)>,
    /// Good repetitions, and all repetitions.
    pub reps: (usize, usize),
    pub status: Status,
    /// One note that stands for the repetitions (failures first).
    pub note: Option<String>,
    /// Every distinct note of the repetitions.
    pub notes: Vec<String>,
}

#[derive(Default)]
pub struct Results {
    samples: BTreeMap<(usize, Contender), Vec<Sample>>,
    unknown: Vec<String>,
}

fn index(id: &str) -> Option<usize> {
    FIGURES.iter().position(|f| f.id == id)
}

impl Results {
    pub fn add(&mut self, c: Contender, samples: Vec<Sample>) {
        for s in samples {
            match index(&s.id) {
                Some(i) => self.samples.entry((i, c)).or_default().push(s),
                None => self.unknown.push(format!("{}: unknown figure {}", c.column(), s.id)),
            }
        }
    }

    /// Records every figure of `w` as `status` for `c`.
    pub fn add_all(&mut self, w: Workload, c: Contender, status: Status, note: &str) {
        let samples = FIGURES
            .iter()
            .filter(|f| f.workload == w)
            .map(|f| Sample::not_ok(f.id, status, note))
            .collect();
        self.add(c, samples);
    }

    /// Figure ids a contender reported that the catalog does not know.
    pub fn unknown(&self) -> &[String] {
        &self.unknown
    }

    pub fn figures(&self) -> Vec<Figure> {
        self.samples.iter().map(|(&(i, c), samples)| summarise(&FIGURES[i], c, samples)).collect()
    }
}

fn summarise(def: &'static FigureDef, c: Contender, samples: &[Sample]) -> Figure {
    let good: Vec<f64> =
        samples.iter().filter(|s| s.status == Status::Ok).filter_map(|s| s.value).collect();
    let bad: Vec<&Sample> = samples.iter().filter(|s| s.status != Status::Ok).collect();
    let mut notes: Vec<String> = Vec::new();
    for n in samples.iter().filter_map(|s| s.note.as_deref()) {
        if !notes.iter().any(|m| m == n) {
            notes.push(n.to_string());
        }
    }
    let first_good = samples.iter().find(|s| s.status == Status::Ok).and_then(|s| s.note.clone());
    let first_bad = bad.first().and_then(|s| s.note.clone());
    let note = match (good.is_empty(), bad.is_empty()) {
        (_, true) => first_good,
        (true, false) => first_bad,
        (false, false) => {
            let mut n = format!(
                "{} of {} repetitions {}: {}",
                bad.len(),
                samples.len(),
                bad[0].status.as_str(),
                first_bad.unwrap_or_default()
            );
            if let Some(g) = first_good {
                n.push_str(" | ");
                n.push_str(&g);
            }
            Some(n)
        }
    };
    let (value, spread) = if good.is_empty() {
        (None, None)
    } else {
        let min = good.iter().copied().fold(f64::INFINITY, f64::min);
        let max = good.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let v = match def.summary {
            Summary::Median => stats::median(&good),
            Summary::All => min,
        };
        (Some(v), Some((min, max)))
    };
    Figure {
        def,
        contender: c,
        value,
        spread,
        reps: (good.len(), samples.len()),
        status: if good.is_empty() {
            bad.first().map_or(Status::Failed, |s| s.status)
        } else {
            Status::Ok
        },
        note,
        notes,
    }
}

/// Looks figures up by id and contender.
pub struct Table<'a> {
    figures: &'a [Figure],
}

impl<'a> Table<'a> {
    pub fn new(figures: &'a [Figure]) -> Self {
        Table { figures }
    }

    pub fn get(&self, id: &str, c: Contender) -> Option<&'a Figure> {
        self.figures.iter().find(|f| f.def.id == id && f.contender == c)
    }

    pub fn value(&self, id: &str, c: Contender) -> Option<f64> {
        self.get(id, c).and_then(|f| f.value)
    }

    /// Our ratio to the best anchor for `id`: (anchor, its value, ratio > 1
    /// when we are better).
    pub fn ratio(&self, id: &str) -> Option<(Contender, f64, f64)> {
        let def = figure(id)?;
        if !def.compared {
            return None;
        }
        let ours = self.value(id, Contender::Multiproc)?;
        let best = Contender::ALL
            .into_iter()
            .filter(|c| c.is_anchor(def.workload))
            .filter_map(|c| Some((c, self.value(id, c)?)))
            .reduce(|a, b| if def.better.prefers(b.1, a.1) { b } else { a })?;
        Some((best.0, best.1, def.better.ratio(ours, best.1)))
    }
}
