//! The contenders: each runs a workload once and returns its samples.

pub mod multiproc;
pub mod procspawn;
pub mod python;
pub mod rayon;

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::figures::{Contender, Sample, Workload};
use crate::params::Params;

/// One contender of the benchmark.
pub trait Runner {
    fn contender(&self) -> Contender;

    /// `Err(why)` when the workload does not apply to this contender.
    fn applies(&self, w: Workload) -> Result<(), &'static str>;

    /// Runs one repetition of `w`; `Err` when the whole workload failed.
    fn run(&mut self, w: Workload, p: &Params) -> Result<Vec<Sample>, String>;
}

/// Every contender, in column order.
pub fn all() -> Vec<Box<dyn Runner>> {
    vec![
        Box::new(multiproc::Multiproc),
        Box::new(python::Python::pool()),
        Box::new(python::Python::executor()),
        Box::new(procspawn::Procspawn),
        Box::new(rayon::Rayon),
    ]
}

/// Runs `cmd` in its own process group and returns its stdout; past
/// `timeout` the group (the command and whatever it started) is killed.
pub fn run_bounded(mut cmd: Command, timeout: Duration) -> Result<String, String> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|e| format!("cannot start {cmd:?}: {e}"))?;
    let pgid = child.id() as i32;
    let read = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    let out = read(Box::new(child.stdout.take().expect("piped")));
    let err = read(Box::new(child.stderr.take().expect("piped")));
    let end = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() < end => std::thread::sleep(Duration::from_millis(5)),
            _ => break None,
        }
    };
    if status.is_none() {
        // SAFETY: signalling the process group of the child this function started.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
        let _ = child.wait();
    }
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    match status {
        Some(s) if s.success() => Ok(stdout),
        Some(s) => Err(format!("{s}: {}", last_lines(&stderr, 3))),
        None => Err(format!("killed after {timeout:?}: {}", last_lines(&stderr, 3))),
    }
}

/// The last `n` non-empty lines of `text`, joined by " | ".
pub fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

/// Runs `f` for each repetition of W4: times pool creation plus a first
/// result `samples` times and returns the median in ms.
pub fn median_ms(
    samples: usize,
    mut f: impl FnMut() -> Result<f64, String>,
) -> Result<f64, String> {
    let v = (0..samples).map(|_| f()).collect::<Result<Vec<f64>, String>>()?;
    Ok(crate::stats::median(&v) * 1000.0)
}
