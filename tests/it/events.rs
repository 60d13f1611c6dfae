//! The library's events through `tracing` (the `tracing` feature): a
//! subscriber sees a killed worker and a timed-out task, with their pid and
//! signal.
#![cfg(feature = "tracing")]

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

use multiproc::{ErrorKind, Pool};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

use crate::support::{send_signal, STARTUP};

/// One event as recorded: its level and fields, each as text.
#[derive(Debug, Clone)]
struct Seen {
    level: tracing::Level,
    target: String,
    fields: HashMap<String, String>,
}

static SEEN: Mutex<Vec<Seen>> = Mutex::new(Vec::new());

struct Recorder;

struct Fields<'a>(&'a mut HashMap<String, String>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(field.name().to_string(), format!("{value:?}"));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_string(), value.to_string());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_string(), value.to_string());
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_string(), value.to_string());
    }
}

impl Subscriber for Recorder {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        let mut fields = HashMap::new();
        event.record(&mut Fields(&mut fields));
        let meta = event.metadata();
        let seen = Seen { level: *meta.level(), target: meta.target().to_string(), fields };
        SEEN.lock().unwrap_or_else(|e| e.into_inner()).push(seen);
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

fn record_events() {
    // Each test runs in its own process under nextest; a second call in
    // one process (cargo test) finds the recorder already set.
    let _ = tracing::subscriber::set_global_default(Recorder);
}

fn events_for(pid: u32) -> Vec<Seen> {
    let pid = pid.to_string();
    let seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
    seen.iter().filter(|s| s.fields.get("pid") == Some(&pid)).cloned().collect()
}

fn nap_then_pid(ms: u64) -> u32 {
    std::thread::sleep(Duration::from_millis(ms));
    std::process::id()
}

fn pid(_: ()) -> u32 {
    std::process::id()
}

#[test]
fn a_killed_worker_is_an_event_with_its_pid_and_signal() {
    record_events();
    let pool = Pool::new(1).unwrap();
    let worker = pool.apply(pid, ()).unwrap();
    let slow = pool.apply_async(nap_then_pid, 60_000);
    // Let the task start, then kill its worker from outside.
    std::thread::sleep(Duration::from_millis(200));
    send_signal(worker, libc::SIGKILL);
    let err = slow.get_timeout(STARTUP).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::WorkerDied, "{err}");
    let next = pool.apply(pid, ()).unwrap();
    let events = events_for(worker);
    let died = events
        .iter()
        .find(|e| e.level == tracing::Level::WARN)
        .unwrap_or_else(|| panic!("no warning for worker {worker}: {events:?}"));
    assert_eq!(died.target, "multiproc");
    assert_eq!(died.fields.get("signal").map(String::as_str), Some("9"), "{died:?}");
    assert!(died.fields["message"].contains("killed by SIGKILL"), "{died:?}");
    assert!(events.iter().any(|e| e.fields["message"].contains("started")), "{events:?}");
    assert!(events.iter().any(|e| e.fields["message"].contains("replaced")), "{events:?}");
    assert!(events_for(next).iter().any(|e| e.fields["message"].contains("started")));
}

#[test]
fn a_task_timeout_is_an_event_with_the_pid_of_the_worker_killed() {
    record_events();
    let pool =
        Pool::builder().processes(1).task_timeout(Duration::from_millis(300)).build().unwrap();
    let worker = pool.apply(pid, ()).unwrap();
    let err = pool.apply(nap_then_pid, 60_000).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    let events = events_for(worker);
    let timed_out = events
        .iter()
        .find(|e| e.fields["message"].contains("timed out"))
        .unwrap_or_else(|| panic!("no timeout event for worker {worker}: {events:?}"));
    assert_eq!(timed_out.level, tracing::Level::WARN);
    assert_eq!(timed_out.fields.get("signal").map(String::as_str), Some("9"));
    assert_eq!(timed_out.fields.get("timeout_ms").map(String::as_str), Some("300"));
    assert!(timed_out.fields.contains_key("task"), "{timed_out:?}");
}
