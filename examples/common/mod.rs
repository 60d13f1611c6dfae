//! The scenario runner shared by the per-seed examples and the tour.
//!
//! Each example file holds a table of scenarios; this runs the ones named on
//! the command line (all of them when none is named), prints each one's id and
//! description, then PASS or FAIL, and ends with `N passed, M failed`.
//! A name selects a scenario by its id (`S000.6`) or a whole seed by the id's
//! prefix (`S000`).

use std::fmt::Display;
use std::panic::{self, AssertUnwindSafe};
use std::process::ExitCode;
use std::time::Instant;

/// One scenario: its id, what it shows in one line, and the function that runs
/// it and checks what it observes.
pub(crate) type Scenario = (&'static str, &'static str, fn() -> Result<(), String>);

/// Returns `Err(message)` from the enclosing scenario when `cond` is false.
macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!($($msg)+));
        }
    };
}

/// Turns any displayable error into a scenario failure that says what failed.
pub(crate) trait Context<T> {
    /// `Err(e)` becomes `Err("{what}: {e}")`.
    fn context(self, what: &str) -> Result<T, String>;
}

impl<T, E: Display> Context<T> for Result<T, E> {
    fn context(self, what: &str) -> Result<T, String> {
        self.map_err(|e| format!("{what}: {e}"))
    }
}

fn selected(id: &str, wanted: &[String]) -> bool {
    wanted.is_empty()
        || wanted.iter().any(|w| {
            id.eq_ignore_ascii_case(w)
                || (id.len() > w.len()
                    && id[..w.len()].eq_ignore_ascii_case(w)
                    && id.as_bytes()[w.len()] == b'.')
        })
}

/// Runs the scenarios selected by the command-line arguments, in table order.
pub(crate) fn run(scenarios: &[Scenario]) -> ExitCode {
    let wanted: Vec<String> = std::env::args().skip(1).collect();
    for w in &wanted {
        if !scenarios.iter().any(|s| selected(s.0, std::slice::from_ref(w))) {
            let ids: Vec<&str> = scenarios.iter().map(|s| s.0).collect();
            eprintln!("no scenario named {w:?}; known: {}", ids.join(" "));
            return ExitCode::from(2);
        }
    }
    let (mut passed, mut failed) = (0, 0);
    let total = Instant::now();
    for &(id, what, scenario) in scenarios.iter().filter(|s| selected(s.0, &wanted)) {
        println!("=== {id}: {what}");
        let started = Instant::now();
        // A scenario that panics fails on its own; the others still run.
        let outcome = panic::catch_unwind(AssertUnwindSafe(scenario))
            .unwrap_or_else(|_| Err("the scenario panicked".to_string()));
        let took = started.elapsed();
        match outcome {
            Ok(()) => {
                passed += 1;
                println!("PASS {id} ({took:.2?})\n");
            }
            Err(e) => {
                failed += 1;
                println!("FAIL {id} ({took:.2?}): {e}\n");
            }
        }
    }
    println!("(total {:.2?})", total.elapsed());
    println!("{passed} passed, {failed} failed");
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
