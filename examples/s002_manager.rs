//! Seed 002's `Manager` (S002.8): a dict and a list on a server process,
//! changed by ten processes through proxies; and a manager served over TCP
//! on 127.0.0.1 that a client with the right key uses and a client with the
//! wrong key cannot reach.
//!
//! `cargo run --release --example s002_manager [-- S002.8 ...]`

#[macro_use]
#[path = "common/mod.rs"]
mod common;

use std::fmt;
use std::time::Duration;

use common::Context;
use multiproc::manager::{DictProxy, ListProxy, Manager};
use multiproc::Process;
use serde::{Deserialize, Serialize};

pub const SCENARIOS: &[common::Scenario] = &[
    ("S002.8", "Manager(): d = manager.dict({'name': 'egon'}), l = manager.list(['init']); 10 processes append their pid to l and set d['p<i>'] = pid; the parent prints both (11 keys, 11 items)", s002_8),
    ("S002.8r", "A remote Manager on 127.0.0.1: a client with the right key shares a dict with a child process; a client with the wrong key is refused and the server goes on", s002_8_remote),
];

fn main() -> std::process::ExitCode {
    common::run(SCENARIOS)
}

/// How long anything may take before the scenario calls it hung.
const BOUND: Duration = Duration::from_secs(10);

/// A value of the seed's dict and list: a string or a pid, printed as
/// Python prints them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Item {
    Str(String),
    Pid(u32),
}

impl fmt::Display for Item {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Item::Str(s) => write!(f, "'{s}'"),
            Item::Pid(p) => write!(f, "{p}"),
        }
    }
}

fn foo((name, d, l): (String, DictProxy<String, Item>, ListProxy<Item>)) {
    let pid = std::process::id();
    l.append(Item::Pid(pid)).expect("append to the shared list");
    d.insert(name, Item::Pid(pid)).expect("set in the shared dict");
}

fn python_dict(items: &[(String, Item)]) -> String {
    let body: Vec<String> = items.iter().map(|(k, v)| format!("'{k}': {v}")).collect();
    format!("{{{}}}", body.join(", "))
}

fn python_list(items: &[Item]) -> String {
    let body: Vec<String> = items.iter().map(Item::to_string).collect();
    format!("[{}]", body.join(", "))
}

fn join_ok(p: &mut Process) -> Result<(), String> {
    if !p.join_timeout(BOUND).context("join")? {
        let _ = p.kill();
        return Err(format!("{} was still running after {BOUND:?}", p.name()));
    }
    let code = p.exitcode();
    ensure!(code == Some(0), "{} exited with {code:?}", p.name());
    Ok(())
}

fn s002_8() -> Result<(), String> {
    let manager = Manager::start().context("Manager()")?;
    let d = manager.dict_from([("name".to_string(), Item::Str("egon".into()))]).context("dict")?;
    let l = manager.list_from([Item::Str("init".into())]).context("list")?;
    let mut p_l = Vec::new();
    for i in 0..10 {
        let mut p = Process::new(foo, (format!("p{i}"), d.clone(), l.clone()));
        p.start().context("start")?;
        p_l.push(p);
    }
    for p in &mut p_l {
        join_ok(p)?;
    }
    let items = d.items().context("d.items()")?;
    let list = l.to_vec().context("list(l)")?;
    println!("{}", python_dict(&items));
    println!("{}", python_list(&list));
    ensure!(items.len() == 11, "the dict holds {} keys, not 11", items.len());
    ensure!(list.len() == 11, "the list holds {} items, not 11", list.len());
    for (i, p) in p_l.iter().enumerate() {
        let pid = Item::Pid(p.pid().unwrap_or(0));
        ensure!(
            d.get(&format!("p{i}")).context("get")? == Some(pid.clone()),
            "d['p{i}'] is not {pid}"
        );
        ensure!(list.contains(&pid), "the list lacks {pid}");
    }
    Ok(())
}

fn count_to((d, n): (DictProxy<String, Item>, u32)) {
    for i in 0..n {
        d.insert(format!("k{i}"), Item::Pid(i)).expect("insert over TCP");
    }
}

fn s002_8_remote() -> Result<(), String> {
    let server = Manager::serve("127.0.0.1:0", b"the right key").context("serve")?;
    let addr = server.address().clone();
    println!("serving on {addr}");
    match Manager::connect(&addr, b"a wrong key") {
        Ok(_) => return Err("a client with the wrong key was let in".into()),
        Err(e) => println!("wrong key: {e}"),
    }
    let client = Manager::connect(&addr, b"the right key").context("connect")?;
    let d = client.dict::<String, Item>().context("dict")?;
    let mut p = Process::new(count_to, (d.clone(), 5));
    p.start().context("start")?;
    join_ok(&mut p)?;
    let items = d.items().context("items")?;
    println!("right key: {}", python_dict(&items));
    ensure!(items.len() == 5, "the dict holds {} keys, not 5", items.len());
    server.shutdown();
    ensure!(d.len().is_err(), "a proxy still worked after the server shut down");
    Ok(())
}
