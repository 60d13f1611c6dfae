//! `connection` as CPython's `_TestListener`, `_TestListenerClient`,
//! `_TestAuthentication` and `TestWait` pin it down (Listener/Client over
//! TCP and a Unix path, the address of a port-0 listener, a wrong key
//! refused on both sides, `wait` over several connections with a timeout,
//! `recv_bytes_into` into a short buffer), and what this crate adds: a
//! listener that keeps serving after a bad, silent or hostile client (random
//! bytes, a 4 GiB length), a client that is neither fooled nor stalled by a
//! fake listener, and TCP connections that refuse to carry handles.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use multiproc::connection::{self, Address, Client, Listener, ToAddress};
use multiproc::{pipe, pipe_one_way, Connection, ErrorKind, Process, Queue};
use serde::{Deserialize, Serialize};

use crate::ipc_util::{
    assert_prompt, assert_waited, bounded, join_ok, start_daemon, timed, TempDir, PROMPT,
};

const KEY: &[u8] = b"the right key";

fn tcp_listener() -> Listener {
    Listener::bind("127.0.0.1:0", KEY).unwrap()
}

/// Connects from a thread with `key` and runs `then` on the connection.
fn client_thread<T: Send + 'static>(
    addr: &Address,
    key: &'static [u8],
    then: impl FnOnce(Connection<String>) -> T + Send + 'static,
) -> std::thread::JoinHandle<multiproc::Result<T>> {
    let addr = addr.clone();
    std::thread::spawn(move || Client::connect::<String>(&addr, key).map(then))
}

fn echo_once(c: Connection<String>) -> String {
    c.send(&"hello".to_string()).unwrap();
    c.recv().unwrap()
}

/// Accepts one client and checks it speaks.
fn serve_one_good_client(l: &Listener) {
    let client = client_thread(l.address(), KEY, echo_once);
    let c = l.accept::<String>().unwrap();
    assert_eq!(c.recv().unwrap(), "hello");
    c.send(&"world".to_string()).unwrap();
    assert_eq!(client.join().unwrap().unwrap(), "world");
}

#[test]
fn tcp_right_key_connects_and_messages_flow_both_ways() {
    bounded(PROMPT * 3, "tcp round trip", || {
        let l = tcp_listener();
        let Address::Tcp(a) = l.address() else { panic!("not TCP: {:?}", l.address()) };
        assert_ne!(a.port(), 0, "the address names the port actually bound");
        serve_one_good_client(&l);
        // And again: one listener serves many clients.
        serve_one_good_client(&l);
    });
}

#[test]
fn tcp_carries_large_messages_and_bytes() {
    bounded(PROMPT * 3, "tcp large", || {
        let l = tcp_listener();
        let addr = l.address().clone();
        let big: Vec<u8> = (0..3u32 << 20).map(|i| (i * 7) as u8).collect();
        let expect = big.clone();
        let client = std::thread::spawn(move || {
            let c = Client::connect::<Vec<u8>>(&addr, KEY).unwrap();
            c.send(&big).unwrap();
            c.send_bytes(b"raw").unwrap();
            c.recv().unwrap()
        });
        let c = l.accept::<Vec<u8>>().unwrap();
        let got = c.recv().unwrap();
        assert_eq!(got, expect);
        assert_eq!(c.recv_bytes().unwrap(), b"raw");
        c.send(&got[..10].to_vec()).unwrap();
        assert_eq!(client.join().unwrap(), &expect[..10]);
    });
}

/// A local message this large travels as a file; TCP carries no
/// descriptors, so over TCP it must go in the stream (it was lost before).
#[test]
fn tcp_carries_messages_above_the_file_threshold_in_the_stream() {
    bounded(PROMPT * 5, "tcp huge", || {
        let l = tcp_listener();
        let addr = l.address().clone();
        let huge: Vec<u8> = (0..9u32 << 20).map(|i| (i * 13) as u8).collect();
        let expect = huge.clone();
        let client = std::thread::spawn(move || {
            let c = Client::connect::<multiproc::Bytes>(&addr, KEY).unwrap();
            c.send_bytes(&huge).unwrap();
            c.send(&multiproc::Bytes::from(huge)).unwrap();
            c.recv_bytes().unwrap()
        });
        let c = l.accept::<multiproc::Bytes>().unwrap();
        assert!(c.recv_bytes().unwrap() == expect, "raw bytes came back changed");
        assert!(c.recv().unwrap().into_vec() == expect, "Bytes came back changed");
        c.send_bytes(b"ok").unwrap();
        assert_eq!(client.join().unwrap(), b"ok");
    });
}

#[derive(Serialize, Deserialize, Debug)]
enum Msg {
    Pid(u32),
    Queue(Queue<String>),
    Done,
}

/// A child: connects to the Unix listener, sends its pid, then a queue (a
/// handle: Unix connections carry them), and waits for the parent's word.
fn connect_pid_and_queue(path: String) {
    let c = Client::connect::<Msg>(Path::new(&path), KEY).unwrap();
    c.send(&Msg::Pid(std::process::id())).unwrap();
    let q = Queue::<String>::new().unwrap();
    q.put("through a queue".to_string()).unwrap();
    c.send(&Msg::Queue(q)).unwrap();
    assert!(matches!(c.recv_timeout(Duration::from_secs(10)), Ok(Msg::Done)));
}

#[test]
fn unix_path_listener_serves_a_child_process_and_removes_its_file() {
    let dir = TempDir::new();
    let path = dir.file("listener.sock");
    let l = Listener::bind(PathBuf::from(&path), KEY).unwrap();
    assert_eq!(l.address(), &Address::Unix(PathBuf::from(&path)));
    assert!(Path::new(&path).exists());
    let mut p = start_daemon(Process::new(connect_pid_and_queue, path.clone()));
    let (l, c) = bounded(PROMPT * 3, "accept a child", move || {
        let c = l.accept_timeout::<Msg>(PROMPT * 2).unwrap();
        (l, c)
    });
    let pid = p.pid().unwrap();
    assert!(matches!(c.recv().unwrap(), Msg::Pid(got) if got == pid));
    let Msg::Queue(q) = c.recv().unwrap() else { panic!("expected a queue") };
    assert_eq!(q.get_timeout(PROMPT).unwrap(), "through a queue");
    c.send(&Msg::Done).unwrap();
    join_ok(&mut p);
    drop(l);
    assert!(!Path::new(&path).exists(), "the socket file is removed on drop");
}

#[test]
fn a_unix_path_in_use_is_an_error_that_names_it() {
    let dir = TempDir::new();
    let path = dir.file("taken.sock");
    let _first = Listener::bind(PathBuf::from(&path), KEY).unwrap();
    let err = Listener::bind(PathBuf::from(&path), KEY).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Io);
    assert!(err.message().contains("taken.sock"), "{err}");
}

#[test]
fn wrong_key_fails_both_sides_and_the_listener_goes_on() {
    bounded(PROMPT * 3, "wrong key", || {
        let l = tcp_listener();
        let bad = client_thread(l.address(), b"a wrong key", echo_once);
        let (err, took) = timed(|| l.accept::<String>().unwrap_err());
        assert_prompt(took, "accept of a client with a wrong key");
        assert_eq!(err.kind(), ErrorKind::Authentication, "{err}");
        assert!(err.message().contains("different authkeys"), "{err}");
        let client_err = bad.join().unwrap().unwrap_err();
        assert_eq!(client_err.kind(), ErrorKind::Authentication, "{client_err}");
        assert!(client_err.message().contains("refused this client's key"), "{client_err}");
        serve_one_good_client(&l);
    });
}

#[test]
fn a_listener_with_another_key_is_refused_by_the_client() {
    bounded(PROMPT * 3, "listener wrong key", || {
        let dir = TempDir::new();
        let l = Listener::bind(dir.file("l.sock").as_str(), b"the listener's own key").unwrap();
        let client = client_thread(l.address(), KEY, echo_once);
        assert_eq!(l.accept::<String>().unwrap_err().kind(), ErrorKind::Authentication);
        assert_eq!(client.join().unwrap().unwrap_err().kind(), ErrorKind::Authentication);
    });
}

#[test]
fn a_silent_client_does_not_delay_the_next_and_times_out_alone() {
    bounded(PROMPT * 4, "silent client", || {
        let mut l = tcp_listener();
        let handshake = Duration::from_millis(500);
        l.set_handshake_timeout(handshake);
        let Address::Tcp(a) = l.address().clone() else { unreachable!() };
        let silent = TcpStream::connect(a).unwrap();
        // Let the listener take the silent one first.
        let asked = Duration::from_millis(50);
        let (r, took) = timed(|| l.accept_timeout::<String>(asked));
        assert!(matches!(r, Err(e) if e.is_timeout()));
        assert_waited(took, asked, "accept_timeout with only a silent client");
        let (_, took) = timed(|| serve_one_good_client(&l));
        assert!(took < handshake, "a good client waited {took:?} behind a silent one");
        let (err, took) = timed(|| l.accept::<String>().unwrap_err());
        assert_eq!(err.kind(), ErrorKind::Authentication, "{err}");
        assert!(err.message().contains("did not complete the handshake"), "{err}");
        assert!(took < handshake + PROMPT, "the silent client was dropped after {took:?}");
        // The listener closed the silent client's socket.
        let mut s = silent;
        s.set_read_timeout(Some(PROMPT)).unwrap();
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
        serve_one_good_client(&l);
    });
}

/// Connects a raw TCP socket, sends `bytes` and hangs up, and returns what `accept`
/// reports; then checks the listener still serves a good client.
fn hostile_client(bytes: &[u8]) -> multiproc::Error {
    let l = tcp_listener();
    let Address::Tcp(a) = l.address().clone() else { unreachable!() };
    let mut raw = TcpStream::connect(a).unwrap();
    raw.write_all(bytes).unwrap();
    // Then nothing more: a listener that waited for more would stall.
    raw.shutdown(std::net::Shutdown::Write).unwrap();
    let (err, took) = timed(|| l.accept::<String>().unwrap_err());
    assert_prompt(took, "accept of a hostile client");
    assert_eq!(err.kind(), ErrorKind::Authentication, "{err}");
    serve_one_good_client(&l);
    drop(raw);
    err
}

#[test]
fn random_bytes_in_the_handshake_fail_only_that_client() {
    bounded(PROMPT * 3, "random bytes", || {
        let noise: Vec<u8> =
            (0..4096u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
        let err = hostile_client(&noise);
        assert!(err.message().contains("not a multiproc handshake"), "{err}");
    });
}

#[test]
fn a_4_gib_length_in_the_handshake_is_refused_at_once() {
    bounded(PROMPT * 3, "4 GiB length", || {
        // A frame header of the handshake's kind that declares 4 GiB.
        let err = hostile_client(&[0xff, 0xff, 0xff, 0xff, 0xa5, 0x00, 1, 2, 3]);
        assert!(err.message().contains("at most 128 bytes"), "{err}");
        // Python's framing (a big-endian length) is refused the same way.
        let err = hostile_client(&[0x00, 0x00, 0x00, 0x14, b'#', b'C']);
        assert!(err.message().contains("not a multiproc handshake"), "{err}");
    });
}

#[test]
fn a_client_that_hangs_up_mid_handshake_fails_only_itself() {
    bounded(PROMPT * 3, "hang up", || {
        let err = hostile_client(&[]);
        assert!(err.message().contains("closed the connection"), "{err}");
    });
}

/// A fake listener on a raw socket that sends `reply` (or nothing) to the
/// first client.
fn fake_listener(reply: Option<Vec<u8>>) -> (Address, std::thread::JoinHandle<()>) {
    let raw = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = Address::Tcp(raw.local_addr().unwrap());
    let t = std::thread::spawn(move || {
        let (mut s, _) = raw.accept().unwrap();
        if let Some(r) = reply {
            let _ = s.write_all(&r);
        }
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut sink = Vec::new();
        let _ = s.read_to_end(&mut sink);
    });
    (addr, t)
}

#[test]
fn a_client_is_not_fooled_or_stalled_by_a_fake_listener() {
    bounded(PROMPT * 4, "fake listeners", || {
        for reply in [vec![0xff, 0xff, 0xff, 0xff, 0xa5, 0], b"#CHALLENGE#".to_vec()] {
            let (addr, t) = fake_listener(Some(reply));
            let (err, took) = timed(|| Client::connect::<()>(&addr, KEY).unwrap_err());
            assert_prompt(took, "connect to a fake listener");
            assert_eq!(err.kind(), ErrorKind::Authentication, "{err}");
            t.join().unwrap();
        }
        let (addr, t) = fake_listener(None);
        let asked = Duration::from_millis(300);
        let (err, took) = timed(|| Client::connect_timeout::<()>(&addr, KEY, asked).unwrap_err());
        assert!(err.is_timeout(), "{err}");
        assert_waited(took, asked, "connect to a silent listener");
        t.join().unwrap();
    });
}

/// A listener that goes away mid-handshake (its process was killed) is not a
/// refusal of the key: the client is told the connection closed.
#[test]
fn a_listener_that_hangs_up_mid_handshake_is_closed_not_a_refusal() {
    bounded(PROMPT * 3, "listener hangs up", || {
        let raw = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = Address::Tcp(raw.local_addr().unwrap());
        let t = std::thread::spawn(move || drop(raw.accept().unwrap()));
        let (err, took) = timed(|| Client::connect::<()>(&addr, KEY).unwrap_err());
        assert_prompt(took, "connect to a listener that hung up");
        assert_eq!(err.kind(), ErrorKind::Closed, "{err}");
        assert!(err.message().contains("closed the connection during the handshake"), "{err}");
        t.join().unwrap();
    });
}

#[test]
fn connecting_where_nothing_listens_is_an_io_error() {
    let dir = TempDir::new();
    let err = Client::connect::<()>(dir.file("nobody.sock").as_str(), KEY).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Io, "{err}");
    assert!(err.message().contains("nobody.sock"), "{err}");
}

#[test]
fn an_empty_key_and_a_bad_address_are_refused() {
    assert_eq!(Listener::bind("127.0.0.1:0", b"").unwrap_err().kind(), ErrorKind::InvalidArgument);
    assert_eq!(
        Client::connect::<()>("127.0.0.1:1", b"").unwrap_err().kind(),
        ErrorKind::InvalidArgument
    );
    let err = "no port here".to_address().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    assert!(matches!("127.0.0.1:80".to_address(), Ok(Address::Tcp(_))));
    assert_eq!("./x.sock".to_address().unwrap(), Address::Unix(PathBuf::from("./x.sock")));
    assert!(matches!(("localhost", 80).to_address(), Ok(Address::Tcp(a)) if a.port() == 80));
}

fn recv_on_tcp(c: Connection<u32>) {
    let v = c.recv().unwrap();
    c.send(&(v + 1)).unwrap();
}

#[test]
fn tcp_refuses_handles_but_travels_to_a_child_itself() {
    bounded(PROMPT * 4, "tcp handles", || {
        let l = Listener::bind("127.0.0.1:0", KEY).unwrap();
        let addr = l.address().clone();
        let client = std::thread::spawn(move || {
            let c = Client::connect::<Queue<u32>>(&addr, KEY).unwrap();
            let err = c.send(&Queue::new().unwrap()).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
            assert!(err.message().contains("TCP"), "{err}");
            // Nothing was sent: the connection still works for plain bytes.
            c.send_bytes(b"still here").unwrap();
            let c: Connection<u32> = Client::connect(&addr, KEY).unwrap();
            c.send(&41).unwrap();
            c.recv().unwrap()
        });
        let first = l.accept::<Queue<u32>>().unwrap();
        assert_eq!(first.recv_bytes().unwrap(), b"still here");
        // The second connection is handed to a child, which answers on it.
        let second = l.accept::<u32>().unwrap();
        let mut p = start_daemon(Process::new(recv_on_tcp, second));
        assert_eq!(client.join().unwrap(), 42);
        join_ok(&mut p);
    });
}

#[test]
fn wait_returns_the_ready_connections_or_nothing_after_the_timeout() {
    bounded(PROMPT * 3, "wait", || {
        let ends: Vec<_> = (0..4).map(|_| pipe::<u32>().unwrap()).collect();
        let readers: Vec<&dyn connection::Waitable> = ends.iter().map(|(a, _)| a as _).collect();
        let asked = Duration::from_millis(100);
        let (ready, took) = timed(|| connection::wait(&readers, Some(asked)).unwrap());
        assert!(ready.is_empty(), "{ready:?}");
        assert_waited(took, asked, "wait with nothing ready");
        ends[1].1.send(&1).unwrap();
        ends[3].1.send(&3).unwrap();
        let ready = connection::wait(&readers, Some(PROMPT)).unwrap();
        assert_eq!(ready, vec![1, 3]);
        assert_eq!(ends[3].0.recv().unwrap(), 3);
        // Still buffered after a wait: the message is not lost.
        assert_eq!(connection::wait(&readers, Some(PROMPT)).unwrap(), vec![1]);
        assert_eq!(ends[1].0.recv().unwrap(), 1);
        // A message sent while waiting wakes it.
        let (late_rx, late_tx) = pipe_one_way::<u32>().unwrap();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            late_tx.send(&9).unwrap();
            late_tx
        });
        let (ready, took) = timed(|| connection::wait(&[&ends[0].0, &late_rx], None).unwrap());
        assert_eq!(ready, vec![1]);
        assert!(took < PROMPT, "{took:?}");
        // End of file counts as ready (recv then says Closed).
        drop(t.join().unwrap());
        assert_eq!(connection::wait(&[&late_rx], Some(PROMPT)).unwrap(), vec![0]);
        assert_eq!(late_rx.recv().unwrap(), 9);
        assert_eq!(late_rx.recv().unwrap_err().kind(), ErrorKind::Closed);
    });
}

#[test]
fn wait_covers_a_listener_and_its_connections() {
    bounded(PROMPT * 3, "wait listener", || {
        let l = tcp_listener();
        assert!(connection::wait(&[&l], Some(Duration::from_millis(20))).unwrap().is_empty());
        let client = client_thread(l.address(), KEY, |c| {
            c.send(&"ping".to_string()).unwrap();
            c.recv().unwrap()
        });
        assert_eq!(connection::wait(&[&l], Some(PROMPT)).unwrap(), vec![0]);
        let c = l.accept::<String>().unwrap();
        assert_eq!(connection::wait(&[&l, &c], Some(PROMPT)).unwrap(), vec![1]);
        assert_eq!(c.recv().unwrap(), "ping");
        c.send(&"pong".to_string()).unwrap();
        assert_eq!(client.join().unwrap().unwrap(), "pong");
    });
}

#[test]
fn recv_bytes_into_a_short_buffer_keeps_the_message() {
    bounded(PROMPT * 2, "recv_bytes_into", || {
        let (a, b) = pipe::<String>().unwrap();
        a.send_bytes(b"0123456789").unwrap();
        a.send_bytes(b"next").unwrap();
        let mut small = [0u8; 4];
        let err = b.recv_bytes_into(&mut small).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::BufferTooShort);
        assert!(err.message().contains("10 bytes"), "{err}");
        assert_eq!(small, [0; 4], "nothing is copied into a short buffer");
        // Again too short: still kept.
        assert!(b.recv_bytes_into(&mut small[..2]).is_err());
        let mut buf = [0u8; 32];
        // Python's offset: receive into the tail of a buffer.
        let n = b.recv_bytes_into(&mut buf[5..]).unwrap();
        assert_eq!(&buf[5..5 + n], b"0123456789");
        assert_eq!(b.recv_bytes_into(&mut small).unwrap(), 4);
        assert_eq!(&small, b"next");
        // A kept message goes to recv_bytes, and to a typed recv.
        a.send(&"a typed value".to_string()).unwrap();
        assert!(b.recv_bytes_into(&mut small).is_err());
        assert!(b.poll(Some(Duration::ZERO)).unwrap(), "a kept message is ready");
        assert_eq!(connection::wait(&[&b], Some(Duration::ZERO)).unwrap(), vec![0]);
        assert_eq!(b.recv().unwrap(), "a typed value");
        a.send_bytes(b"longer than four").unwrap();
        assert!(b.recv_bytes_into(&mut small).is_err());
        assert_eq!(b.recv_bytes().unwrap(), b"longer than four");
        // An empty message fits an empty buffer.
        a.send_bytes(b"").unwrap();
        assert_eq!(b.recv_bytes_into(&mut []).unwrap(), 0);
    });
}

#[test]
fn recv_bytes_into_works_over_tcp() {
    bounded(PROMPT * 3, "recv_bytes_into tcp", || {
        let l = tcp_listener();
        let client = client_thread(l.address(), KEY, |c| {
            c.send_bytes(&[7u8; 100]).unwrap();
            c.recv_bytes().unwrap()
        });
        let c = l.accept::<String>().unwrap();
        let mut buf = vec![0u8; 10];
        assert_eq!(c.recv_bytes_into(&mut buf).unwrap_err().kind(), ErrorKind::BufferTooShort);
        buf.resize(100, 0);
        assert_eq!(c.recv_bytes_into(&mut buf).unwrap(), 100);
        assert_eq!(buf, vec![7u8; 100]);
        c.send_bytes(b"ok").unwrap();
        assert_eq!(client.join().unwrap().unwrap(), b"ok");
    });
}

/// Sends `n` numbered messages right after connecting, before the listener
/// even accepts.
fn pipelining_client(addr: Address, n: u32) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let c = Client::connect::<u32>(&addr, KEY).unwrap();
        for i in 0..n {
            c.send(&i).unwrap();
        }
        assert_eq!(c.recv().unwrap(), n);
    })
}

#[test]
fn messages_sent_right_after_the_handshake_are_not_lost() {
    bounded(PROMPT * 3, "pipelined", || {
        let dir = TempDir::new();
        for l in [tcp_listener(), Listener::bind(dir.file("p.sock").as_str(), KEY).unwrap()] {
            let client = pipelining_client(l.address().clone(), 200);
            let c = l.accept::<u32>().unwrap();
            // Let everything arrive at once, behind the handshake's last frame.
            std::thread::sleep(Duration::from_millis(20));
            for i in 0..200 {
                assert_eq!(c.recv().unwrap(), i);
            }
            c.send(&200).unwrap();
            client.join().unwrap();
        }
    });
}

#[test]
fn several_threads_accept_from_one_listener() {
    bounded(PROMPT * 3, "accept threads", || {
        let l = std::sync::Arc::new(tcp_listener());
        let acceptors: Vec<_> = (0..3)
            .map(|_| {
                let l = l.clone();
                std::thread::spawn(move || {
                    let c = l.accept_timeout::<u32>(PROMPT).unwrap();
                    let v = c.recv().unwrap();
                    c.send(&(v * 10)).unwrap();
                })
            })
            .collect();
        let clients: Vec<_> = (1..=3u32)
            .map(|i| {
                let addr = l.address().clone();
                std::thread::spawn(move || {
                    let c = Client::connect::<u32>(&addr, KEY).unwrap();
                    c.send(&i).unwrap();
                    c.recv().unwrap()
                })
            })
            .collect();
        let mut got: Vec<u32> = clients.into_iter().map(|c| c.join().unwrap()).collect();
        got.sort();
        assert_eq!(got, vec![10, 20, 30]);
        for a in acceptors {
            a.join().unwrap();
        }
    });
}

#[test]
fn wait_on_nothing_that_can_become_ready_returns_at_once() {
    bounded(PROMPT, "wait on nothing", || {
        // (A one-way pipe's sending end cannot be waited on: it is not
        // `Waitable`, so that mistake does not compile.)
        let (ready, took) = timed(|| connection::wait(&[], None).unwrap());
        assert!(ready.is_empty());
        assert_prompt(took, "wait(&[], None)");
        let asked = Duration::from_millis(30);
        let (ready, took) = timed(|| connection::wait(&[], Some(asked)).unwrap());
        assert!(ready.is_empty());
        assert_waited(took, asked, "wait on nothing with a timeout");
    });
}
