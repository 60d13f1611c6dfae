//! The integration suite: one test binary, so worker processes (this binary,
//! re-executed) are built once.
//!
//! Waits that a regression could turn into a hang are bounded inside the tests
//! (`support::bounded`, `get_timeout`, `join_timeout`); the nextest profile's
//! slow-timeout bounds everything else.

#[path = "it/aio.rs"]
mod aio;
#[path = "it/apply_here.rs"]
mod apply_here;
#[path = "it/async_result.rs"]
mod async_result;
#[path = "it/connection.rs"]
mod connection;
#[path = "it/error_messages.rs"]
mod error_messages;
#[path = "it/events.rs"]
mod events;
#[path = "it/fork_server.rs"]
mod fork_server;
#[path = "it/futures.rs"]
mod futures;
#[path = "it/hostile_ipc.rs"]
mod hostile_ipc;
#[path = "it/hostile_timing.rs"]
mod hostile_timing;
#[path = "it/hostile_values.rs"]
mod hostile_values;
#[path = "it/hostile_worker.rs"]
mod hostile_worker;
#[path = "it/ipc_pipe.rs"]
mod ipc_pipe;
#[path = "it/ipc_queue.rs"]
mod ipc_queue;
#[path = "it/ipc_shm.rs"]
mod ipc_shm;
#[path = "it/ipc_sync.rs"]
mod ipc_sync;
#[path = "it/ipc_util.rs"]
mod ipc_util;
#[path = "it/large_args.rs"]
mod large_args;
#[path = "it/large_values.rs"]
mod large_values;
#[path = "it/manager.rs"]
mod manager;
#[path = "it/memory_cap.rs"]
mod memory_cap;
#[path = "it/no_pidfd.rs"]
mod no_pidfd;
#[path = "it/pipe_large.rs"]
mod pipe_large;
#[path = "it/pod.rs"]
mod pod;
#[path = "it/pool.rs"]
mod pool;
#[path = "it/pool_failures.rs"]
mod pool_failures;
#[path = "it/process.rs"]
mod process;
#[path = "it/progress.rs"]
mod progress;
#[path = "it/queue_ring.rs"]
mod queue_ring;
#[path = "it/queue_stuck_peer.rs"]
mod queue_stuck_peer;
#[path = "it/results_ring.rs"]
mod results_ring;
#[path = "it/scheduling.rs"]
mod scheduling;
#[path = "it/seccomp.rs"]
mod seccomp;
#[path = "it/sentinel.rs"]
mod sentinel;
#[path = "it/stats.rs"]
mod stats;
#[path = "it/support.rs"]
mod support;
#[path = "it/thread_pool.rs"]
mod thread_pool;
#[path = "it/timeouts.rs"]
mod timeouts;
#[path = "it/under_valgrind.rs"]
mod under_valgrind;
#[path = "it/worker_trust.rs"]
mod worker_trust;
