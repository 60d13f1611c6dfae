//! Python's `multiprocessing.Pool` (and its `ThreadPool` for T1/T3) and
//! `concurrent.futures.ProcessPoolExecutor`, driven by bench/python/mpbench.py
//! in a fresh interpreter per repetition; its JSON output becomes samples.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use serde::Deserialize;

use super::{run_bounded, Runner};
use crate::figures::{Contender, Sample, Status, Workload};
use crate::params::Params;

pub struct Python {
    contender: Contender,
}

#[derive(Deserialize)]
struct Reply {
    figures: Vec<Figure>,
}

#[derive(Deserialize)]
struct Figure {
    id: String,
    value: Option<f64>,
    status: String,
    note: Option<String>,
}

/// The interpreter: `$PYTHON` or `python3`.
pub fn interpreter() -> String {
    std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_string())
}

/// The driver script, found from this crate's source directory.
pub fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python/mpbench.py")
}

/// `python3 --version`, or why it cannot run.
pub fn version() -> Result<String, String> {
    let out = Command::new(interpreter())
        .arg("--version")
        .output()
        .map_err(|e| format!("cannot run {}: {e}", interpreter()))?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

impl Python {
    pub fn pool() -> Python {
        Python { contender: Contender::PyPool }
    }

    pub fn executor() -> Python {
        Python { contender: Contender::PyExecutor }
    }

    fn key(&self, w: Workload) -> &'static str {
        match (self.contender, w.on_threads()) {
            (Contender::PyPool, true) => "threads",
            (Contender::PyPool, false) => "mp",
            _ => "ppe",
        }
    }

    fn invoke(&self, workload: &str, key: &str, p: &Params) -> Result<Vec<Sample>, String> {
        let params = serde_json::to_string(p).map_err(|e| e.to_string())?;
        let mut cmd = Command::new(interpreter());
        cmd.arg(script()).arg(key).arg(workload).arg(params);
        let out = run_bounded(cmd, Duration::from_secs(300))?;
        let reply: Reply = serde_json::from_str(out.trim())
            .map_err(|e| format!("unreadable output ({e}): {}", super::last_lines(&out, 2)))?;
        Ok(reply
            .figures
            .into_iter()
            .map(|f| Sample {
                id: f.id,
                value: f.value,
                status: Status::parse(&f.status),
                note: f.note,
            })
            .collect())
    }
}

impl Runner for Python {
    fn contender(&self) -> Contender {
        self.contender
    }

    fn applies(&self, w: Workload) -> Result<(), &'static str> {
        if self.contender == Contender::PyExecutor && w.on_threads() {
            return Err("thread workloads use multiprocessing.pool.ThreadPool");
        }
        if self.contender == Contender::PyExecutor && w.on_channels() {
            return Err("multiprocessing's Queue and Pipe are in the py Pool column");
        }
        Ok(())
    }

    fn run(&mut self, w: Workload, p: &Params) -> Result<Vec<Sample>, String> {
        let key = self.key(w);
        let mut samples = self.invoke(&w.to_string(), key, p)?;
        match w {
            Workload::W2 => match self.invoke("PEAK", key, p) {
                Ok(s) => samples.extend(s),
                Err(e) => samples.push(Sample::not_ok("W2.peak_rss", Status::Failed, e)),
            },
            Workload::W8 => {
                let why = "Python's bytes already travel as one pickled blob (see W8)";
                samples.push(Sample::not_ok("W8.bytebuf", Status::NotApplicable, why));
            }
            Workload::W7 if self.contender == Contender::PyExecutor => {
                let why = "an executor has no process-per-task form";
                samples.push(Sample::not_ok("W7.procs", Status::NotApplicable, why));
                samples.push(Sample::not_ok("W7.ratio", Status::NotApplicable, why));
            }
            _ => {}
        }
        Ok(samples)
    }
}
