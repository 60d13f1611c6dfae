//! The parent's peak RSS during W2's map, measured in a fresh child process
//! of this binary per contender so earlier workloads do not pollute it.

use std::process::Command;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::figures::{Contender, Sample, Status};
use crate::params::Params;
use crate::procfs;
use crate::runners::{self, run_bounded};

/// The flag that turns this binary into the peak-RSS child.
pub const CHILD_FLAG: &str = "--child-peak";

#[derive(Serialize, Deserialize)]
struct Reply {
    peak_kib: u64,
    base_kib: u64,
}

fn key(c: Contender) -> &'static str {
    match c {
        Contender::Multiproc => "multiproc",
        Contender::Procspawn => "procspawn",
        _ => "rayon",
    }
}

/// In the parent: W2.peak_rss for `c`, from a fresh child.
pub fn measure(c: Contender, p: &Params) -> Sample {
    match measure_inner(c, p) {
        Ok(s) => s,
        Err(e) => Sample::not_ok("W2.peak_rss", Status::Failed, e),
    }
}

fn measure_inner(c: Contender, p: &Params) -> Result<Sample, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let params = serde_json::to_string(p).map_err(|e| e.to_string())?;
    let mut cmd = Command::new(exe);
    cmd.arg(CHILD_FLAG).arg(key(c)).arg(params);
    let out = run_bounded(cmd, Duration::from_secs(120))?;
    let reply: Reply = serde_json::from_str(out.trim())
        .map_err(|e| format!("unreadable peak child output ({e}): {}", out.trim()))?;
    let mut note = format!(
        "VmHWM of a fresh process; {:.1} MiB before the pool",
        reply.base_kib as f64 / 1024.0
    );
    if c == Contender::Procspawn {
        note.push_str("; hand-chunked in 8 chunks");
    }
    Ok(Sample::ok("W2.peak_rss", reply.peak_kib as f64 / 1024.0).with_note(note))
}

/// In the child: runs W2's default map once and prints its VmHWM as JSON.
pub fn child_main(args: &[String]) -> i32 {
    let [key, params] = args else {
        eprintln!("usage: {CHILD_FLAG} CONTENDER PARAMS_JSON");
        return 2;
    };
    let p: Params = match serde_json::from_str(params) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("bad params: {e}");
            return 2;
        }
    };
    let base_kib = procfs::self_status_kib("VmRSS").unwrap_or(0);
    let n = p.w2_items;
    let run = match key.as_str() {
        "multiproc" => runners::multiproc::map_default(n),
        "procspawn" => runners::procspawn::map_default(n),
        "rayon" => runners::rayon::map_default(n),
        other => Err(format!("unknown contender {other}")),
    };
    if let Err(e) = run {
        eprintln!("{e}");
        return 1;
    }
    let peak_kib = procfs::self_status_kib("VmHWM").unwrap_or(0);
    let reply = Reply { peak_kib, base_kib };
    println!("{}", serde_json::to_string(&reply).unwrap_or_default());
    0
}
