//! The scenarios of the seeds, in order: seed 000 (Pool basics), 001 (Pool
//! parameters), 002 (processes, queues, pipes, locks, semaphores, events),
//! 003 (a lock, and pool callbacks) and 004 (concurrent.futures executors and
//! the rest of the Pool API).
//! Each scenario prints what its Python original prints and checks what it
//! observes; the tour ends with `N passed, M failed` and fails if any failed.
//!
//! `cargo run --release --example tour [-- S000.6 S004 ...]`

// Each scenario file is an example of its own too, so each brings the runner
// with it: the module is compiled once per file on purpose.
#![allow(clippy::duplicate_mod)]

// The tour uses only the runner; the checking helpers serve the scenarios.
#[allow(dead_code, unused_macros)]
mod common;

// Each file is also an example of its own; its `main` is unused here.
#[allow(dead_code)]
#[path = "s000_pool_basics.rs"]
pub mod s000;
#[allow(dead_code)]
#[path = "s001_pool_parameters.rs"]
pub mod s001;
#[allow(dead_code)]
#[path = "s002_ipc.rs"]
pub mod s002_ipc;
#[allow(dead_code)]
#[path = "s002_manager.rs"]
pub mod s002_manager;
#[allow(dead_code)]
#[path = "s002_pool_apply.rs"]
pub mod s002_pool_apply;
#[allow(dead_code)]
#[path = "s002_processes.rs"]
pub mod s002_processes;
#[allow(dead_code)]
#[path = "s003_callbacks.rs"]
pub mod s003;
#[allow(dead_code)]
#[path = "s004_pool_api.rs"]
pub mod s004;
#[allow(dead_code)]
#[path = "s004_futures.rs"]
pub mod s004_futures;

fn main() -> std::process::ExitCode {
    let all = [
        s000::SCENARIOS,
        s001::SCENARIOS,
        s002_processes::SCENARIOS,
        s002_ipc::SCENARIOS,
        s002_manager::SCENARIOS,
        s002_pool_apply::SCENARIOS,
        s003::SCENARIOS,
        s004_futures::SCENARIOS,
        s004::SCENARIOS,
    ]
    .concat();
    common::run(&all)
}
