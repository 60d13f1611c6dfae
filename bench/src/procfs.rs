//! Reading /proc: a process's children and memory, and this process's peak RSS.

use std::fs;

/// Pids of the live (not zombie) processes whose parent is `ppid`.
pub fn children(ppid: u32) -> Vec<u32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out: Vec<u32> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| {
            let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            // The command name may hold spaces and parentheses.
            let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
            let mut fields = rest.split_whitespace();
            let state = fields.next();
            let parent = fields.next().and_then(|p| p.parse::<u32>().ok());
            parent == Some(ppid) && state != Some("Z")
        })
        .collect();
    out.sort_unstable();
    out
}

/// (RSS, USS) of `pid` in KiB from smaps_rollup; USS counts its private pages.
pub fn rss_uss_kib(pid: u32) -> Result<(u64, u64), String> {
    let text = fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .map_err(|e| format!("cannot read /proc/{pid}/smaps_rollup: {e}"))?;
    let (mut rss, mut private) = (0, 0);
    for line in text.lines() {
        let Some((key, rest)) = line.split_once(':') else {
            continue;
        };
        let kib: u64 = rest.split_whitespace().next().and_then(|v| v.parse().ok()).unwrap_or(0);
        match key {
            "Rss" => rss = kib,
            "Private_Clean" | "Private_Dirty" | "Private_Hugetlb" => private += kib,
            _ => {}
        }
    }
    Ok((rss, private))
}

/// A `kB` field of /proc/self/status (VmHWM, VmRSS, ...), in KiB.
pub fn self_status_kib(field: &str) -> Option<u64> {
    let text = fs::read_to_string("/proc/self/status").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// How many file descriptors this process has open.
pub fn open_fds() -> usize {
    fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

/// Raises the soft limit on open files to the hard limit (procspawn keeps
/// descriptors per pending task; Python's Process keeps one per child).
/// Returns the limit in force.
pub fn raise_nofile_limit() -> u64 {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `lim` is a valid, writable rlimit for the call to fill.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 0;
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
        // SAFETY: `raised` is a valid rlimit within the hard limit.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            return raised.rlim_cur;
        }
    }
    lim.rlim_cur
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_memory_and_children() {
        assert!(self_status_kib("VmHWM").unwrap() > 0);
        let (rss, uss) = rss_uss_kib(std::process::id()).unwrap();
        assert!(rss >= uss && uss > 0);
        let mut child = std::process::Command::new("sleep").arg("5").spawn().unwrap();
        assert!(children(std::process::id()).contains(&child.id()));
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!children(std::process::id()).contains(&child.id()));
    }
}
