//! Runs a command in a world without pidfds: `pidfd_open` fails with ENOSYS
//! in it and in every process it starts, as it does under valgrind 3.19 and
//! on kernels before 5.3. For checking that multiproc's fallbacks (a pool
//! that notices dead workers by their channels alone, waits for an exit by
//! asking `waitid`) hold, without valgrind's slowness:
//!
//! ```sh
//! cargo build -p multiproc-bench --bin no-pidfd
//! target/debug/no-pidfd cargo nextest run -p multiproc
//! ```
//!
//! A seccomp filter does it; it is inherited across fork and exec and
//! cannot be lifted, and it asks for no privilege (it sets no_new_privs).

use std::os::unix::process::CommandExt;
use std::process::Command;

/// `AUDIT_ARCH_X86_64` and friends: the architecture the filter expects.
#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xC000_003E;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xC000_00B7;

/// Offsets in `struct seccomp_data`.
const NR_OFFSET: u32 = 0;
const ARCH_OFFSET: u32 = 4;

fn stmt(code: u32, k: u32) -> libc::sock_filter {
    libc::sock_filter { code: code as u16, jt: 0, jf: 0, k }
}

fn jump_eq(k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter { code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16, jt, jf, k }
}

fn refuse_pidfd_open() -> std::io::Result<()> {
    let load = libc::BPF_LD | libc::BPF_W | libc::BPF_ABS;
    let ret = libc::BPF_RET | libc::BPF_K;
    let mut filter = [
        stmt(load, ARCH_OFFSET),
        // Another architecture's numbers mean other calls: leave them be.
        jump_eq(AUDIT_ARCH, 0, 3),
        stmt(load, NR_OFFSET),
        jump_eq(libc::SYS_pidfd_open as u32, 0, 1),
        stmt(ret, libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32),
        stmt(ret, libc::SECCOMP_RET_ALLOW),
    ];
    let prog = libc::sock_fprog { len: filter.len() as u16, filter: filter.as_mut_ptr() };
    // SAFETY: PR_SET_NO_NEW_PRIVS takes plain integers and touches no memory.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `prog` points at `filter`, both alive across the call; the
    // kernel copies the program before returning.
    let r = unsafe {
        libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER, &prog as *const _, 0, 0)
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn main() {
    let mut args = std::env::args_os().skip(1);
    let Some(program) = args.next() else {
        eprintln!("usage: no-pidfd COMMAND [ARG ...]");
        std::process::exit(2);
    };
    if let Err(e) = refuse_pidfd_open() {
        eprintln!("no-pidfd: could not install the seccomp filter: {e}");
        std::process::exit(1);
    }
    let err = Command::new(&program).args(args).exec();
    eprintln!("no-pidfd: could not run {}: {err}", program.to_string_lossy());
    std::process::exit(127);
}
