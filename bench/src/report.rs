//! The run's outputs: the terminal table and results.json.

use std::fmt::Write as _;
use std::path::Path;

use serde_json::{json, Value};

use crate::figures::{Contender, Status, Workload, FIGURES};
use crate::results::{Figure, Table};
use crate::targets::{self, check};

/// A number in the figure's unit, short: 3 significant digits, k/M for rates.
pub fn fmt_value(v: f64, unit: &str) -> String {
    if unit == "bool" {
        return if v >= 1.0 { "yes" } else { "no" }.to_string();
    }
    let (v, suffix) = if unit.ends_with("/s") && v >= 1e6 {
        (v / 1e6, "M")
    } else if unit.ends_with("/s") && v >= 1e3 {
        (v / 1e3, "k")
    } else {
        (v, "")
    };
    let s = if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else if v >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    };
    s + suffix
}

/// A figure as a table cell: value and relative spread, or its status.
fn cell(f: Option<&Figure>) -> String {
    let Some(f) = f else {
        return "-".to_string();
    };
    match (f.value, f.spread) {
        (Some(v), Some((lo, hi))) if f.def.unit != "bool" && v != 0.0 && f.reps.0 > 1 => {
            let pct = (hi - lo) / 2.0 / v.abs() * 100.0;
            format!("{} ±{:.0}%", fmt_value(v, f.def.unit), pct)
        }
        (Some(v), _) => fmt_value(v, f.def.unit),
        (None, _) if f.status == Status::NotApplicable => "n/a".to_string(),
        (None, _) if f.status == Status::Failed => "FAILED".to_string(),
        (None, _) => f.status.as_str().to_string(),
    }
}

/// The terminal table, its legend and the notes.
pub fn table(figures: &[Figure]) -> String {
    let tab = Table::new(figures);
    let mut rows: Vec<Vec<String>> = vec![];
    let mut head = vec!["figure".to_string(), "unit".to_string()];
    head.extend(Contender::ALL.iter().map(|c| c.column().to_string()));
    head.extend(["ours/best".into(), "target".into(), "met".into()]);
    rows.push(head);
    for def in FIGURES {
        if !figures.iter().any(|f| f.def.id == def.id) {
            continue;
        }
        let mut row = vec![def.id.to_string(), def.unit.to_string()];
        row.extend(Contender::ALL.iter().map(|&c| cell(tab.get(def.id, c))));
        row.push(match tab.ratio(def.id) {
            Some((c, _, r)) => format!("{} {}", fmt_ratio(r), c.short(def.workload)),
            None => String::new(),
        });
        match targets::target(def.id) {
            Some(t) => {
                row.push(t.text.to_string());
                row.push(check(t, &tab).as_str().to_string());
            }
            None => row.extend([String::new(), String::new()]),
        }
        rows.push(row);
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for (n, row) in rows.iter().enumerate() {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(i, (s, &w))| {
                let pad = w - s.chars().count();
                if (2..2 + Contender::ALL.len()).contains(&i) {
                    format!("{}{s}", " ".repeat(pad))
                } else {
                    format!("{s}{}", " ".repeat(pad))
                }
            })
            .collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
        if n == 0 {
            let total: usize = widths.iter().sum::<usize>() + 2 * (widths.len() - 1);
            let _ = writeln!(out, "{}", "-".repeat(total));
        }
    }
    out.push_str(
        "\nEach cell: median over the repetitions, ± half the min-max range relative to it \
         (exact min/max in results.json).\nours/best: multiproc vs the best anchor on that \
         figure (process pools for W*, thread pools for T*; rayon's W2/W6 are shown for \
         scale only), >1 means multiproc is better.\n",
    );
    out.push_str("\nNotes (first repetition's; all of them in results.json):\n");
    // Figures of one workload that share a contender and note share a line.
    let mut lines: Vec<(Workload, String, Contender, String)> = Vec::new();
    for f in figures {
        let Some(note) = &f.note else { continue };
        let text = match f.status {
            Status::Ok => note.clone(),
            s => format!("[{}] {note}", s.as_str()),
        };
        let w = f.def.workload;
        match lines.iter_mut().find(|l| l.0 == w && l.2 == f.contender && l.3 == text) {
            Some(l) => {
                l.1.push(',');
                l.1.push_str(f.def.id);
            }
            None => lines.push((w, f.def.id.to_string(), f.contender, text)),
        }
    }
    lines.sort_by_key(|l| (l.0, l.2));
    let w = lines.iter().map(|l| l.1.len()).max().unwrap_or(0);
    for (_, ids, c, text) in lines {
        let _ = writeln!(out, "  {ids:<w$}  {:<10} {text}", c.column());
    }
    out
}

pub fn fmt_ratio(r: f64) -> String {
    if r >= 100.0 {
        format!("{r:.0}x")
    } else if r >= 10.0 {
        format!("{r:.1}x")
    } else {
        format!("{r:.2}x")
    }
}

/// results.json: one object per figure and contender.
pub fn json(figures: &[Figure], mode: &str) -> Value {
    let tab = Table::new(figures);
    let items: Vec<Value> = figures
        .iter()
        .map(|f| {
            let w = f.def.workload;
            let mut o = json!({
                "id": f.def.id,
                "workload": w.to_string(),
                "contender": f.contender.name(w),
                "metric": f.def.metric,
                "value": f.value,
                "unit": f.def.unit,
                "better": f.def.better.as_str(),
                "status": f.status.as_str(),
                "reps": f.reps.0,
                "mode": mode,
            });
            if let Some((lo, hi)) = f.spread {
                o["spread"] = json!({"min": lo, "max": hi});
            }
            if let Some(n) = &f.note {
                o["note"] = json!(n);
            }
            if f.notes.len() > 1 {
                o["rep_notes"] = json!(f.notes);
            }
            if f.contender == Contender::Multiproc {
                if let Some((c, v, r)) = tab.ratio(f.def.id) {
                    o["ratio_to_best_anchor"] = json!(r);
                    o["best_anchor"] = json!({"contender": c.name(w), "value": v});
                }
                if let Some(t) = targets::target(f.def.id) {
                    o["target"] = json!(t.text);
                    o["target_met"] = match check(t, &tab) {
                        targets::Met::Yes => json!(true),
                        targets::Met::No => json!(false),
                        targets::Met::Unknown => Value::Null,
                    };
                }
            }
            o
        })
        .collect();
    Value::Array(items)
}

pub fn write(path: &Path, text: &str) -> Result<(), String> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
}

/// The figures a reader meets first, each said in words: what was done, and
/// the figure's unit as a reader would write it.
const HEADLINES: &[(&str, &str)] = &[
    ("W1", "`apply`, one task waited at a time (per call)"),
    ("W2.default", "`map(x+1)` over 1M integers, default chunksize"),
    ("W3", "100k `apply_async`, then wait for all"),
    ("W4", "start a pool of 4 and get one result"),
    ("W5.rss", "memory of one idle worker (RSS)"),
    ("W6", "CPU-bound tasks: speed-up of 2 workers over 1"),
    ("W7.procs", "1000 processes started, one per task"),
    ("W8", "16 × 8 MiB `Vec<u8>` through `map`"),
    ("W8.bytebuf", "the same as `Bytes`"),
    ("W9", "a task that panics (the worker survives)"),
    ("W10", "a worker SIGKILLed: until its result fails and a replacement ran"),
    ("T1", "`ThreadPool::apply`, one task at a time"),
    ("T3", "`ThreadPool`: 100k `apply_async`"),
    ("Q1", "`Queue`: small items, one process to another"),
    ("P1", "`pipe`: 1 MiB messages, one process to another"),
];

/// A value with its unit, for a reader: `38.8 µs`, `52.2 M/s`, `1.20 GB/s`.
pub fn with_unit(v: f64, unit: &str) -> String {
    let unit = match unit {
        "us" => " µs",
        "items/s" | "tasks/s" => "/s",
        "x" => "×",
        "MiB" => " MiB",
        "ms" => " ms",
        "s" => " s",
        "GB/s" => " GB/s",
        other => return format!("{} {other}", fmt_value(v, other)),
    };
    let n = fmt_value(v, if unit == "/s" { "items/s" } else { "" });
    format!("{n}{unit}")
}

/// The short results table (Markdown): one row per headline figure, our
/// figure, the best other contender's, one ratio, and whether the target is
/// met. For the README, read in seconds; the full table is beside it.
pub fn summary(figures: &[Figure]) -> String {
    let tab = Table::new(figures);
    let mut out = String::from(
        "| what | multiproc | best alternative | multiproc is | target met |\n|---|---|---|---|---|\n",
    );
    for &(id, what) in HEADLINES {
        let Some(def) = crate::figures::figure(id) else { continue };
        let Some(ours) = tab.get(id, Contender::Multiproc) else { continue };
        let mine = match ours.value {
            Some(v) => with_unit(v, def.unit),
            None => ours.status.as_str().to_string(),
        };
        let (best, ratio) = match tab.ratio(id) {
            Some((c, v, r)) => {
                let how = if r >= 1.0 {
                    format!("**{}** better", fmt_ratio(r).replace('x', "×"))
                } else {
                    format!("{} (worse)", fmt_ratio(r).replace('x', "×"))
                };
                (format!("{} {}", c.short(def.workload), with_unit(v, def.unit)), how)
            }
            None => ("—".to_string(), "—".to_string()),
        };
        // Contenders that hang or break where we have a figure say more than a ratio.
        let stuck: Vec<String> = Contender::ALL
            .iter()
            .filter(|c| c.is_anchor(def.workload))
            .filter_map(|&c| {
                let f = tab.get(id, c)?;
                matches!(f.status, Status::Hangs | Status::Broken)
                    .then(|| format!("{} {}", c.short(def.workload), f.status.as_str()))
            })
            .collect();
        let best = if stuck.is_empty() { best } else { format!("{best}; {}", stuck.join(", ")) };
        let met = match targets::target(id) {
            Some(t) => {
                let met = match check(t, &tab) {
                    targets::Met::Yes => "yes",
                    targets::Met::No => "no",
                    targets::Met::Unknown => "?",
                };
                format!("{met} ({})", t.text)
            }
            None => String::new(),
        };
        let _ = writeln!(out, "| {what} | {mine} | {best} | {ratio} | {met} |");
    }
    out
}
