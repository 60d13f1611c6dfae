//! `Manager` as CPython's manager tests pin it down: proxies of dict, list,
//! namespace, queue, value, lock, event, semaphore and barrier; proxies that
//! travel to processes and pool tasks; nested proxies; user types; a remote
//! server with a right and a wrong key; and the failure cases: a server
//! killed, a parent killed, a client killed holding a lock or blocked in a
//! queue.

use std::time::{Duration, Instant};

use multiproc::manager::{
    DictProxy, ListProxy, LockProxy, Manager, Method, Methods, QueueProxy, Shared,
};
use multiproc::{ErrorKind, Pool, Process};

use crate::support::{
    assert_faster, bounded, send_beacon, send_signal, wait_pid_gone, Beacon, PROMPT, STARTUP,
};

#[test]
fn dict_operations_follow_python() {
    bounded(STARTUP, "dict", || {
        let m = Manager::start().unwrap();
        let d = m.dict_from([("name".to_string(), 1u32)]).unwrap();
        assert_eq!(d.get(&"name".to_string()).unwrap(), Some(1));
        assert_eq!(d.get(&"nope".to_string()).unwrap(), None);
        d.insert("b".into(), 2).unwrap();
        d.insert("a".into(), 3).unwrap();
        d.insert("name".into(), 4).unwrap(); // keeps its place
        assert_eq!(d.keys().unwrap(), ["name", "b", "a"]);
        assert_eq!(d.values().unwrap(), [4, 2, 3]);
        assert_eq!(d.len().unwrap(), 3);
        assert!(d.contains_key(&"a".to_string()).unwrap());
        assert_eq!(d.remove(&"b".to_string()).unwrap(), Some(2));
        assert_eq!(d.remove(&"b".to_string()).unwrap(), None);
        assert_eq!(d.setdefault("c".into(), 9).unwrap(), 9);
        assert_eq!(d.setdefault("c".into(), 10).unwrap(), 9);
        d.update([("x".to_string(), 7), ("a".to_string(), 8)]).unwrap();
        let items = d.items().unwrap();
        assert_eq!(items, [("name".into(), 4), ("a".into(), 8), ("c".into(), 9), ("x".into(), 7)]);
        d.clear().unwrap();
        assert!(d.is_empty().unwrap());
    });
}

#[test]
fn list_operations_follow_python() {
    bounded(STARTUP, "list", || {
        let m = Manager::start().unwrap();
        let l = m.list_from(vec![1i64, 2, 3]).unwrap();
        l.append(4).unwrap();
        l.extend([5, 6]).unwrap();
        assert_eq!(l.get(-1).unwrap(), 6);
        assert_eq!(l.get(0).unwrap(), 1);
        l.set(-2, 50).unwrap();
        assert_eq!(l.pop().unwrap(), 6);
        assert_eq!(l.pop_at(0).unwrap(), 1);
        l.insert(100, 7).unwrap(); // clamped to the end, as in Python
        l.insert(-100, 0).unwrap(); // clamped to the start
        assert_eq!(l.to_vec().unwrap(), [0, 2, 3, 4, 50, 7]);
        assert_eq!(l.len().unwrap(), 6);
        let e = l.get(6).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
        l.clear().unwrap();
        assert_eq!(l.pop().unwrap_err().kind(), ErrorKind::InvalidArgument);
    });
}

#[test]
fn namespace_and_value() {
    bounded(STARTUP, "namespace", || {
        let m = Manager::start().unwrap();
        let ns = m.namespace().unwrap();
        ns.set("x", &1u8).unwrap();
        ns.set("name", &"bob".to_string()).unwrap();
        assert_eq!(ns.get::<u8>("x").unwrap(), Some(1));
        assert_eq!(ns.get::<String>("name").unwrap().as_deref(), Some("bob"));
        assert_eq!(ns.get::<u8>("y").unwrap(), None);
        assert_eq!(ns.names().unwrap(), ["x", "name"]);
        assert!(ns.remove("x").unwrap());
        assert!(!ns.remove("x").unwrap());
        // The wrong type for a value is a deserialization error, not garbage.
        let e = ns.get::<Vec<u64>>("name");
        assert!(e.is_err() || e.unwrap() != Some(vec![]));

        let v = m.value(1.5f64).unwrap();
        assert_eq!(v.get().unwrap(), 1.5);
        v.set(2.5).unwrap();
        assert_eq!(v.swap(3.5).unwrap(), 2.5);
        assert_eq!(v.get().unwrap(), 3.5);
    });
}

#[test]
fn queue_put_get_timeouts_and_wakeups() {
    bounded(STARTUP, "queue", || {
        let m = Manager::start().unwrap();
        let q = m.queue_bounded::<String>(2).unwrap();
        assert_eq!(q.get_nowait().unwrap_err().kind(), ErrorKind::Empty);
        q.put("a".into()).unwrap();
        q.put_nowait("b".into()).unwrap();
        assert_eq!(q.put_nowait("c".into()).unwrap_err().kind(), ErrorKind::Full);
        let t = Instant::now();
        assert_eq!(
            q.put_timeout("c".into(), Duration::from_millis(100)).unwrap_err().kind(),
            ErrorKind::Timeout
        );
        assert!(t.elapsed() >= Duration::from_millis(100));
        assert_eq!(q.qsize().unwrap(), 2);
        assert_eq!(q.get().unwrap(), "a");
        assert_eq!(q.get().unwrap(), "b");
        let t = Instant::now();
        assert_eq!(
            q.get_timeout(Duration::from_millis(100)).unwrap_err().kind(),
            ErrorKind::Timeout
        );
        assert!(t.elapsed() >= Duration::from_millis(100));
        // A blocked get does not hold up the server: another thread's put
        // reaches it and wakes it.
        let q2 = q.clone();
        let getter = std::thread::spawn(move || q2.get_timeout(Duration::from_secs(10)));
        std::thread::sleep(Duration::from_millis(50));
        let t = Instant::now();
        q.put("late".into()).unwrap();
        assert_eq!(getter.join().unwrap().unwrap(), "late");
        assert_faster(t.elapsed(), PROMPT, "a put waking a blocked get");
        assert!(q.empty().unwrap());
    });
}

#[test]
fn lock_event_semaphore_barrier() {
    bounded(STARTUP, "sync", || {
        let m = Manager::start().unwrap();
        let lock = m.lock().unwrap();
        let g = lock.acquire().unwrap();
        assert!(!g.previous_owner_died());
        assert!(lock.locked().unwrap());
        let other = lock.clone();
        assert!(other.acquire_timeout(Duration::from_millis(50)).unwrap().is_none());
        drop(g);
        assert!(!lock.locked().unwrap());
        assert!(other.acquire_timeout(Duration::from_millis(50)).unwrap().is_some());
        assert_eq!(lock.release().unwrap_err().kind(), ErrorKind::InvalidState);

        let ev = m.event().unwrap();
        assert!(!ev.is_set().unwrap());
        assert!(!ev.wait_timeout(Duration::from_millis(30)).unwrap());
        let ev2 = ev.clone();
        let waiter = std::thread::spawn(move || ev2.wait_timeout(Duration::from_secs(10)));
        std::thread::sleep(Duration::from_millis(30));
        ev.set().unwrap();
        assert!(waiter.join().unwrap().unwrap());
        ev.clear().unwrap();
        assert!(!ev.is_set().unwrap());

        let sem = m.bounded_semaphore(2).unwrap();
        sem.acquire().unwrap();
        assert!(sem.acquire_timeout(Duration::from_millis(10)).unwrap());
        assert!(!sem.acquire_timeout(Duration::from_millis(30)).unwrap());
        assert_eq!(sem.value().unwrap(), 0);
        sem.release().unwrap();
        sem.release().unwrap();
        assert_eq!(sem.release().unwrap_err().kind(), ErrorKind::InvalidArgument);

        let b = m.barrier(3).unwrap();
        let waits: Vec<_> = (0..3)
            .map(|_| {
                let b = b.clone();
                std::thread::spawn(move || b.wait_timeout(Duration::from_secs(10)).unwrap())
            })
            .collect();
        let mut idx: Vec<usize> = waits.into_iter().map(|t| t.join().unwrap()).collect();
        idx.sort();
        assert_eq!(idx, [0, 1, 2]);
        assert_eq!(b.parties().unwrap(), 3);
        // A timed-out wait breaks the barrier for every later waiter.
        assert_eq!(
            b.wait_timeout(Duration::from_millis(30)).unwrap_err().kind(),
            ErrorKind::BrokenBarrier
        );
        assert_eq!(b.wait().unwrap_err().kind(), ErrorKind::BrokenBarrier);
        b.reset().unwrap();
        assert_eq!(b.n_waiting().unwrap(), 0);
        assert_eq!(m.barrier(0).unwrap_err().kind(), ErrorKind::InvalidArgument);
    });
}

fn s002_8_foo((name, d, l): (String, DictProxy<String, u32>, ListProxy<u32>)) {
    l.append(std::process::id()).unwrap();
    d.insert(name, std::process::id()).unwrap();
}

/// S002.8: ten processes append their pid and set `d[name] = pid`.
#[test]
fn ten_processes_share_a_dict_and_a_list() {
    bounded(STARTUP * 2, "S002.8", || {
        let m = Manager::start().unwrap();
        let d = m.dict_from([("name".to_string(), 0u32)]).unwrap();
        let l = m.list_from([0u32]).unwrap();
        let mut ps: Vec<Process> = (0..10)
            .map(|i| Process::new(s002_8_foo, (format!("p{i}"), d.clone(), l.clone())))
            .collect();
        for p in &mut ps {
            p.start().unwrap();
        }
        for p in &mut ps {
            p.join().unwrap();
            assert_eq!(p.exitcode(), Some(0));
        }
        assert_eq!(d.len().unwrap(), 11);
        assert_eq!(l.len().unwrap(), 11);
        for (i, p) in ps.iter().enumerate() {
            assert_eq!(d.get(&format!("p{i}")).unwrap(), p.pid());
        }
        let mut pids = l.to_vec().unwrap()[1..].to_vec();
        pids.sort();
        let mut want: Vec<u32> = ps.iter().map(|p| p.pid().unwrap()).collect();
        want.sort();
        assert_eq!(pids, want);
    });
}

fn push_from_task((q, n): (QueueProxy<u64>, u64)) -> u64 {
    q.put(n * n).unwrap();
    n
}

#[test]
fn proxies_travel_to_pool_tasks() {
    bounded(STARTUP, "pool", || {
        let m = Manager::start().unwrap();
        let q = m.queue::<u64>().unwrap();
        let pool = Pool::new(2).unwrap();
        let args: Vec<_> = (0..10u64).map(|n| (q.clone(), n)).collect();
        assert_eq!(pool.map(push_from_task, args).unwrap(), (0..10).collect::<Vec<_>>());
        let mut got: Vec<u64> = (0..10).map(|_| q.get_timeout(PROMPT).unwrap()).collect();
        got.sort();
        assert_eq!(got, (0..10u64).map(|n| n * n).collect::<Vec<_>>());
    });
}

#[test]
fn nested_proxies() {
    bounded(STARTUP, "nested", || {
        let m = Manager::start().unwrap();
        let outer = m.dict::<String, ListProxy<String>>().unwrap();
        let inner = m.list::<String>().unwrap();
        outer.insert("inner".into(), inner.clone()).unwrap();
        let back = outer.get(&"inner".to_string()).unwrap().unwrap();
        back.append("through the dict".into()).unwrap();
        assert_eq!(inner.to_vec().unwrap(), ["through the dict"]);
    });
}

#[derive(Default)]
struct Account {
    balance: i64,
    log: Vec<String>,
}

const DEPOSIT: Method<Account, (String, i64), i64> = Method::new("deposit");
const BALANCE: Method<Account, (), i64> = Method::new("balance");
const LOG_LEN: Method<Account, (), usize> = Method::new("log_len");

impl Shared for Account {
    const NAME: &'static str = "Account";
    type Init = i64;
    fn create(balance: i64) -> Account {
        Account { balance, log: Vec::new() }
    }
    fn methods(m: &mut Methods<Account>) {
        m.add(DEPOSIT, |a, (who, n)| {
            a.balance += n;
            a.log.push(who);
            a.balance
        });
        m.add(BALANCE, |a, ()| a.balance);
        m.add(LOG_LEN, |a, ()| a.log.len());
    }
}

fn deposit_many(p: multiproc::manager::Proxy<Account>) {
    for _ in 0..100 {
        p.call(DEPOSIT, (std::process::id().to_string(), 1)).unwrap();
    }
}

#[test]
fn user_types_are_updated_atomically_from_processes() {
    bounded(STARTUP * 2, "user type", || {
        let m = Manager::builder().register::<Account>().start().unwrap();
        let acct = m.shared::<Account>(1000).unwrap();
        let mut ps: Vec<Process> =
            (0..4).map(|_| Process::new(deposit_many, acct.clone())).collect();
        for p in &mut ps {
            p.start().unwrap();
        }
        for p in &mut ps {
            p.join().unwrap();
            assert_eq!(p.exitcode(), Some(0));
        }
        assert_eq!(acct.call(BALANCE, ()).unwrap(), 1400);
        assert_eq!(acct.call(LOG_LEN, ()).unwrap(), 400);
        // A server without the type refuses to make one.
        let plain = Manager::start().unwrap();
        let e = plain.shared::<Account>(0).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Protocol, "{e}");
    });
}

#[test]
fn remote_manager_right_and_wrong_key() {
    bounded(STARTUP, "remote", || {
        multiproc::manager::register::<Account>();
        let server = Manager::serve("127.0.0.1:0", b"right key").unwrap();
        let addr = server.address().clone();
        let t = Instant::now();
        let e = Manager::connect(&addr, b"wrong key").unwrap_err();
        assert_faster(t.elapsed(), PROMPT, "a wrong key refused");
        assert_eq!(e.kind(), ErrorKind::Authentication, "{e}");
        let client = Manager::connect(&addr, b"right key").unwrap();
        let d = client.dict::<u8, String>().unwrap();
        d.insert(1, "one".into()).unwrap();
        assert_eq!(d.get(&1).unwrap().as_deref(), Some("one"));
        let a = client.shared::<Account>(5).unwrap();
        assert_eq!(a.call(DEPOSIT, ("remote".into(), 5)).unwrap(), 10);
        // The wrong key did not disturb the server.
        assert!(Manager::connect(&addr, b"").is_err());
        assert_eq!(d.len().unwrap(), 1);
        server.shutdown();
        let t = Instant::now();
        assert_eq!(d.len().unwrap_err().kind(), ErrorKind::Closed);
        assert_faster(t.elapsed(), PROMPT, "a call to a stopped server");
    });
}

#[test]
fn server_killed_fails_every_call_promptly() {
    bounded(STARTUP, "server killed", || {
        let m = Manager::start().unwrap();
        let d = m.dict::<u8, u8>().unwrap();
        let q = m.queue::<u8>().unwrap();
        d.insert(1, 1).unwrap();
        let q2 = q.clone();
        let blocked = std::thread::spawn(move || q2.get());
        std::thread::sleep(Duration::from_millis(50));
        send_signal(m.pid().unwrap(), libc::SIGKILL);
        let t = Instant::now();
        let e = blocked.join().unwrap().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Closed, "{e}");
        assert_eq!(d.get(&1).unwrap_err().kind(), ErrorKind::Closed);
        assert_eq!(m.list::<u8>().unwrap_err().kind(), ErrorKind::Closed);
        assert_faster(t.elapsed(), PROMPT, "calls to a killed server");
        drop(m); // and dropping never hangs
    });
}

#[test]
fn shutdown_and_drop_are_bounded() {
    bounded(STARTUP, "shutdown", || {
        let mut m = Manager::start().unwrap();
        let pid = m.pid().unwrap();
        let l = m.list::<u8>().unwrap();
        let t = Instant::now();
        m.shutdown();
        m.shutdown();
        assert_faster(t.elapsed(), PROMPT, "shutdown");
        assert!(wait_pid_gone(pid, PROMPT));
        assert_eq!(l.len().unwrap_err().kind(), ErrorKind::Closed);
    });
}

fn start_manager_then_sleep(beacon: String) {
    let m = Manager::start().unwrap();
    send_beacon(&beacon, &m.pid().unwrap().to_string());
    std::thread::sleep(Duration::from_secs(60));
}

#[test]
fn parent_killed_takes_the_server_with_it() {
    bounded(STARTUP, "parent killed", || {
        let beacon = Beacon::new();
        let mut parent = Process::new(start_manager_then_sleep, beacon.path());
        parent.start().unwrap();
        let server = beacon.recv_pid(STARTUP, "the server's pid");
        assert!(crate::support::pid_is_running(server));
        parent.kill().unwrap();
        parent.join().unwrap();
        assert!(wait_pid_gone(server, PROMPT), "the manager server {server} outlived its parent");
    });
}

fn hold_lock_then_sleep((lock, beacon): (LockProxy, String)) {
    let g = lock.acquire().unwrap();
    send_beacon(&beacon, &std::process::id().to_string());
    std::thread::sleep(Duration::from_secs(60));
    drop(g);
}

#[test]
fn lock_of_a_killed_holder_is_released_with_owner_died() {
    bounded(STARTUP, "lock owner died", || {
        let m = Manager::start().unwrap();
        let lock = m.lock().unwrap();
        let beacon = Beacon::new();
        let mut p = Process::new(hold_lock_then_sleep, (lock.clone(), beacon.path()));
        p.start().unwrap();
        beacon.recv_pid(STARTUP, "the holder");
        assert!(lock.acquire_timeout(Duration::from_millis(20)).unwrap().is_none());
        p.kill().unwrap();
        let t = Instant::now();
        let g = lock.acquire_timeout(PROMPT).unwrap().expect("the lock came back");
        assert!(g.previous_owner_died());
        assert_faster(t.elapsed(), PROMPT, "the lock of a killed holder");
        drop(g);
        let g = lock.acquire().unwrap();
        assert!(!g.previous_owner_died());
    });
}

fn blocked_get((q, beacon): (QueueProxy<u32>, String)) {
    send_beacon(&beacon, "blocking");
    let _ = q.get();
    send_beacon(&beacon, "got one");
}

#[test]
fn blocked_get_of_a_killed_client_takes_nothing() {
    bounded(STARTUP, "blocked get", || {
        let m = Manager::start().unwrap();
        let q = m.queue::<u32>().unwrap();
        let beacon = Beacon::new();
        let mut p = Process::new(blocked_get, (q.clone(), beacon.path()));
        p.start().unwrap();
        beacon.recv(STARTUP, "the child blocking");
        std::thread::sleep(Duration::from_millis(50));
        p.kill().unwrap();
        p.join().unwrap();
        // The server notices within its check interval; the item must then
        // stay for us, not go to the dead client.
        std::thread::sleep(Duration::from_millis(100));
        q.put(7).unwrap();
        assert_eq!(q.get_timeout(PROMPT).unwrap(), 7);
        assert!(beacon.try_recv(Duration::from_millis(10)).is_none());
    });
}

#[test]
fn timed_calls_keep_their_bound_when_the_server_is_stopped() {
    // A stopped server keeps its sockets open: only the client's own bound
    // (the call's timeout and a grace) ends a timed call.
    let mut m = Manager::start().unwrap();
    let q = m.queue::<u32>().unwrap();
    let lock = m.lock().unwrap();
    let ev = m.event().unwrap();
    let pid = m.pid().expect("a started manager has a server process");
    send_signal(pid, libc::SIGSTOP);
    // Resumed however the test ends.
    struct Cont(u32);
    impl Drop for Cont {
        fn drop(&mut self) {
            send_signal(self.0, libc::SIGCONT);
        }
    }
    let cont = Cont(pid);
    let limit = Duration::from_millis(100) + Duration::from_secs(2) + PROMPT;
    for (what, call) in [
        (
            "get_timeout",
            Box::new(|| q.get_timeout(Duration::from_millis(100)).map(drop))
                as Box<dyn Fn() -> multiproc::Result<()> + '_>,
        ),
        ("get_nowait", Box::new(|| q.get_nowait().map(drop))),
        ("put_timeout", Box::new(|| q.put_timeout(1, Duration::from_millis(100)))),
        (
            "acquire_timeout",
            Box::new(|| lock.acquire_timeout(Duration::from_millis(100)).map(drop)),
        ),
        ("wait_timeout", Box::new(|| ev.wait_timeout(Duration::from_millis(100)).map(drop))),
    ] {
        let t = Instant::now();
        let err = call().expect_err(what);
        assert!(t.elapsed() < limit, "{what} took {:?}", t.elapsed());
        assert!(t.elapsed() >= Duration::from_secs(2), "{what} gave up early: {:?}", t.elapsed());
        assert_eq!(err.kind(), ErrorKind::Timeout, "{what}: {err}");
        assert!(err.to_string().contains("did not answer"), "{what}: {err}");
    }
    drop(cont);
    // Resumed, the server answers again on fresh connections.
    q.put(7).unwrap();
    assert_eq!(q.get_timeout(PROMPT).unwrap(), 7);
    m.shutdown();
}
