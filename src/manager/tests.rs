//! What a hostile client can do to a server: each malformed request gets an
//! error reply and the server goes on serving a well-behaved client.

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use super::proto::{message, Code, Kind, Op, Reply, Request, MAX_FRAME};
use super::transport::Stream;
use super::{Manager, ManagerServer};
use crate::connection::Client;
use crate::ErrorKind;

const KEY: &[u8] = b"hostility";

fn server() -> (ManagerServer, String) {
    let s = Manager::serve("127.0.0.1:0", KEY).unwrap();
    let crate::connection::Address::Tcp(addr) = s.address() else { panic!("not TCP") };
    let addr = addr.to_string();
    (s, addr)
}

fn client(addr: &str) -> Stream {
    Client::connect::<()>(addr, KEY).unwrap()
}

fn ask(s: &Stream, bytes: &[u8]) -> Reply {
    s.send_bytes(bytes).unwrap();
    crate::codec::decode(&s.recv_bytes().unwrap()).expect("a reply that decodes")
}

fn req(s: &Stream, r: &Request) -> Reply {
    ask(s, &message(r).unwrap())
}

#[track_caller]
fn code(r: Reply) -> Code {
    match r {
        Reply::Err { code, .. } => code,
        other => panic!("expected an error reply, got {other:?}"),
    }
}

/// The well-behaved client still gets served.
fn still_serves(addr: &str) {
    let m = Manager::connect(addr, KEY).unwrap();
    let l = m.list_from([1u8, 2]).unwrap();
    l.append(3).unwrap();
    assert_eq!(l.to_vec().unwrap(), [1, 2, 3]);
}

#[test]
fn random_bytes_get_an_error_reply_and_the_connection_goes_on() {
    let (_s, addr) = server();
    let s = client(&addr);
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for len in [0usize, 1, 7, 64, 1000, 70_000] {
        let body: Vec<u8> = (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                // Never a valid request's first byte (0, 1, 2): garbage only.
                (seed as u8) | 0x10
            })
            .collect();
        assert_eq!(code(ask(&s, &body)), Code::Protocol, "{len} random bytes");
    }
    assert!(matches!(req(&s, &Request::Ping), Reply::Done));
    still_serves(&addr);
}

#[test]
fn an_oversized_request_gets_an_error_reply() {
    let (_s, addr) = server();
    let s = client(&addr);
    assert_eq!(code(ask(&s, &vec![0u8; MAX_FRAME + 1])), Code::Protocol);
    assert!(matches!(req(&s, &Request::Ping), Reply::Done));
    still_serves(&addr);
}

/// Over the connection's limit the server does not read the request at all:
/// that client's connection ends (it was buffered whole before, up to 4 GiB).
#[test]
fn a_request_over_the_connection_limit_ends_only_that_connection() {
    let (_s, addr) = server();
    let s = client(&addr);
    let huge = vec![0u8; super::server::CONNECTION_LIMIT as usize + 1];
    let started = std::time::Instant::now();
    let outcome = s.send_bytes(&huge).and_then(|()| s.recv_bytes());
    assert!(outcome.is_err(), "the server answered a request it should not have read");
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
    still_serves(&addr);
}

#[test]
fn a_4_gib_length_prefix_before_authenticating_is_refused() {
    let (_s, addr) = server();
    let mut raw = TcpStream::connect(&addr).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = raw.write_all(&u32::MAX.to_le_bytes());
    let _ = raw.write_all(&[0xff; 64]);
    still_serves(&addr);
    drop(raw);
    still_serves(&addr);
}

#[test]
fn unregistered_and_mismatched_operations_get_errors() {
    let (_s, addr) = server();
    let s = client(&addr);
    let op = |obj, op| Request::Call { obj, op };
    let user = Request::Create { kind: Kind::User("NoSuchType".into()), init: vec![] };
    assert_eq!(code(req(&s, &user)), Code::NotRegistered);
    assert_eq!(code(req(&s, &op(12345, Op::Len))), Code::NoSuchObject);
    let Reply::Created(id) = req(&s, &Request::Create { kind: Kind::List, init: vec![0] }) else {
        panic!("no list")
    };
    let method = Op::Method { name: "rm -rf".into(), args: vec![] };
    assert_eq!(code(req(&s, &op(id, method))), Code::WrongKind);
    assert_eq!(code(req(&s, &op(id, Op::Acquire { wait: None, block: true }))), Code::WrongKind);
    assert_eq!(code(req(&s, &op(id, Op::Index(i64::MIN)))), Code::OutOfRange);
    // A bad initial value is refused, not stored.
    let bad = Request::Create { kind: Kind::Dict, init: vec![0xff; 9] };
    assert_eq!(code(req(&s, &bad)), Code::Protocol);
    still_serves(&addr);
}

#[test]
fn absurd_counts_are_refused_without_allocating() {
    let (_s, addr) = server();
    let s = client(&addr);
    // A Create of a List whose initial items claim 2^30 elements in 5 bytes.
    let init = [0x80u8, 0x80, 0x80, 0x80, 0x04];
    let mut body = vec![0u8, 1, init.len() as u8]; // Request::Create, Kind::List, len
    body.extend_from_slice(&init);
    assert_eq!(code(ask(&s, &body)), Code::Protocol);
    still_serves(&addr);
}

#[test]
fn wrong_keys_and_garbage_handshakes_are_refused() {
    let (_s, addr) = server();
    let e = Client::connect::<()>(addr.as_str(), b"not the key").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Authentication, "{e}");
    let e = Manager::connect(addr.as_str(), b"not the key").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Authentication, "{e}");
    let mut raw = TcpStream::connect(&addr).unwrap();
    let _ = raw.write_all(&[0x5a; 4096]);
    still_serves(&addr);
}

#[test]
fn a_client_gone_mid_request_leaves_the_server_consistent() {
    let (_s, addr) = server();
    let m = Manager::connect(addr.as_str(), KEY).unwrap();
    let l = m.list_from([1u8]).unwrap();
    let q = m.queue::<u8>().unwrap();
    // A request sent, the client gone before its reply: it happened or not.
    let s = client(&addr);
    s.send_bytes(&message(&Request::Call { obj: l.h.id, op: Op::Append(vec![2]) }).unwrap())
        .unwrap();
    drop(s);
    // A client gone while blocked in a get takes nothing with it.
    let s = client(&addr);
    s.send_bytes(
        &message(&Request::Call { obj: q.h.id, op: Op::Take { wait: None, block: true } }).unwrap(),
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(30));
    drop(s);
    std::thread::sleep(Duration::from_millis(100));
    q.put(9).unwrap();
    assert_eq!(q.get_timeout(Duration::from_secs(5)).unwrap(), 9);
    let got = l.to_vec().unwrap();
    assert!(got == [1] || got == [1, 2], "{got:?}");
    l.append(3).unwrap();
    assert_eq!(l.to_vec().unwrap().last(), Some(&3));
}
