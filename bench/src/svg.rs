//! The chart of our ratios to the best anchor, as hand-written SVG: one
//! horizontal bar per figure on a log scale, 1x marked, targets ticked.

use std::fmt::Write as _;

use crate::figures::{figure, Contender, Status, FIGURES};
use crate::report::{fmt_ratio, with_unit};
use crate::results::{Figure, Table};
use crate::targets;

const WIDTH: f64 = 1100.0;
const LABEL_W: f64 = 300.0;
const PLOT_X0: f64 = LABEL_W + 10.0;
const PLOT_X1: f64 = WIDTH - 290.0;
const ROW_H: f64 = 26.0;
const TOP: f64 = 70.0;
/// The scale: 10^MIN_DEC .. 10^MAX_DEC.
const MIN_DEC: f64 = -2.0;
const MAX_DEC: f64 = 3.0;

fn x_of(ratio: f64) -> f64 {
    let d = ratio.log10().clamp(MIN_DEC, MAX_DEC);
    PLOT_X0 + (d - MIN_DEC) / (MAX_DEC - MIN_DEC) * (PLOT_X1 - PLOT_X0)
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// The chart for `figures`; `subtitle` says which run it shows.
pub fn chart(figures: &[Figure], subtitle: &str) -> String {
    let tab = Table::new(figures);
    // A row per compared figure we measured: a ratio, or why there is none.
    let rows: Vec<(&str, String, Option<f64>)> = FIGURES
        .iter()
        .filter(|d| d.compared)
        .filter_map(|d| {
            let label = format!("{} ({})", d.id, d.metric);
            match tab.ratio(d.id) {
                Some((_, _, r)) => Some((d.id, label, Some(r))),
                None => {
                    let ours = tab.get(d.id, Contender::Multiproc)?;
                    (ours.status != Status::NotApplicable && ours.value.is_none())
                        .then_some((d.id, label, None))
                }
            }
        })
        .collect();
    let height = TOP + rows.len().max(1) as f64 * ROW_H + 50.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">"##
    );
    let _ = writeln!(
        s,
        r##"<rect width="100%" height="100%" fill="#ffffff"/>
<text x="12" y="24" font-size="16" font-weight="bold">multiproc vs the best anchor (log scale, &gt;1x: multiproc is better)</text>
<text x="12" y="44" fill="#555">{}</text>"##,
        esc(subtitle)
    );
    let bottom = TOP + rows.len() as f64 * ROW_H;
    for dec in (MIN_DEC as i32)..=(MAX_DEC as i32) {
        let r = 10f64.powi(dec);
        let x = x_of(r);
        let (stroke, w) = if dec == 0 { ("#333", 1.5) } else { ("#ddd", 1.0) };
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" y1="{:.1}" x2="{x:.1}" y2="{bottom:.1}" stroke="{stroke}" stroke-width="{w}"/>
<text x="{x:.1}" y="{:.1}" text-anchor="middle" fill="#555">{}</text>"##,
            TOP - 8.0,
            bottom + 16.0,
            fmt_ratio(r)
        );
    }
    for (i, (id, label, r)) in rows.iter().enumerate() {
        let y = TOP + i as f64 * ROW_H;
        let text_y = y + ROW_H * 0.65;
        let _ = writeln!(
            s,
            r##"<text x="{LABEL_W:.1}" y="{text_y:.1}" text-anchor="end">{}</text>"##,
            esc(label)
        );
        let Some(r) = *r else {
            let status = tab.get(id, Contender::Multiproc).map_or("failed", |f| f.status.as_str());
            let _ = writeln!(
                s,
                r##"<text x="{:.1}" y="{text_y:.1}" fill="#c0392b">multiproc: {status} (no ratio)</text>"##,
                x_of(1.0) + 6.0
            );
            continue;
        };
        let (x1, x2) = (x_of(1.0), x_of(r));
        let (left, w) = (x1.min(x2), (x2 - x1).abs().max(1.0));
        let fill = if r >= 1.0 { "#2e8b57" } else { "#c0392b" };
        let workload = crate::figures::figure(id).map(|d| d.workload);
        let anchor = match (tab.ratio(id), workload) {
            (Some((c, _, _)), Some(w)) => c.short(w),
            (Some((c, _, _)), None) => c.column(),
            (None, _) => "",
        };
        let mut text_x = x1.max(x2) + 6.0;
        let _ = writeln!(
            s,
            r##"<rect x="{left:.1}" y="{:.1}" width="{w:.1}" height="{:.1}" fill="{fill}"/>"##,
            y + 5.0,
            ROW_H - 10.0
        );
        if let Some(factor) = target_factor(id, &tab) {
            let tx = x_of(factor);
            text_x = text_x.max(tx + 6.0);
            let _ = writeln!(
                s,
                r##"<line x1="{tx:.1}" y1="{:.1}" x2="{tx:.1}" y2="{:.1}" stroke="#1f4e9c" stroke-width="2" stroke-dasharray="3,2"><title>target {}</title></line>"##,
                y + 2.0,
                y + ROW_H - 2.0,
                fmt_ratio(factor)
            );
        }
        let unit = figure(id).map_or("", |d| d.unit);
        let absolute = match (tab.value(id, Contender::Multiproc), tab.ratio(id)) {
            (Some(ours), Some((_, theirs, _))) => {
                format!(" ({} vs {})", with_unit(ours, unit), with_unit(theirs, unit))
            }
            _ => String::new(),
        };
        let _ = writeln!(
            s,
            r##"<text x="{text_x:.1}" y="{text_y:.1}" fill="#222">{} vs {}{}</text>"##,
            fmt_ratio(r),
            esc(anchor),
            esc(&absolute)
        );
    }
    let _ = writeln!(
        s,
        r##"<text x="12" y="{:.1}" fill="#555">Green: multiproc better, red: worse. Blue dashes: the ratio the target asks for against that anchor. Data: target/bench/results.json</text>
</svg>"##,
        height - 14.0
    );
    s
}

/// The ratio a target asks for against the anchor that is best on `id`.
fn target_factor(id: &str, tab: &Table<'_>) -> Option<f64> {
    let (best, _, _) = tab.ratio(id)?;
    targets::target(id)?
        .versus
        .iter()
        .find(|(c, ref_id, _)| *c == best && *ref_id == id)
        .map(|v| v.2)
}
