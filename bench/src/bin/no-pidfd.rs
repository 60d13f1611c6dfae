//! Runs a command in a world without pidfds: `pidfd_open` fails with ENOSYS
//! in it and in every process it starts, as it does under valgrind 3.19 and
//! on kernels before 5.3. For checking that multiproc's fallbacks (a pool
//! that asks `waitid` whether a worker exited, `wait_exit` by polling) hold
//! across the whole suite, without valgrind's slowness:
//!
//! ```sh
//! cargo build -p multiproc-bench --bin no-pidfd
//! target/debug/no-pidfd cargo nextest run -p multiproc
//! ```
//!
//! Expected failure there: `worker_trust::a_setuid_program_never_becomes_a_worker`,
//! since no_new_privs (which the filter needs) makes the setuid bit inert.

use std::os::unix::process::CommandExt;
use std::process::Command;

// The filter is the one the integration tests use.
#[path = "../../../tests/it/seccomp.rs"]
mod seccomp;

fn main() {
    let mut args = std::env::args_os().skip(1);
    let Some(program) = args.next() else {
        eprintln!("usage: no-pidfd COMMAND [ARG ...]");
        std::process::exit(2);
    };
    if let Err(e) = seccomp::refuse_pidfd_open() {
        eprintln!("no-pidfd: could not install the seccomp filter: {e}");
        std::process::exit(1);
    }
    let err = Command::new(&program).args(args).exec();
    eprintln!("no-pidfd: could not run {}: {err}", program.to_string_lossy());
    std::process::exit(127);
}
