//! The client's side of the handshake rows of docs/faults.md: `connect` validates a server
//! (a raw rustix server in a thread) as strictly as the listener validates a client: a bad
//! memfd, a silent server, a server that says it is a client, a REJECT, credentials checked
//! before anything is said. Tests that count fds run one at a time (`serial()`).
//!
//! The other handshake rows are in the other `faults_*.rs` files (see `faults_fds.rs`).

mod common;
mod faults_common;

use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use common::*;
use faults_common::*;
use shmpipe_handshake::wire::{self, Packet, RejectCode};
use shmpipe_handshake::{ConnectError, HandshakeError, Options, PeerPolicy, connect};
use shmpipe_ring::SetupError;

// ---------------------------------------------------------------------------------------------
// The client validates the server as strictly

fn client_fails<T: Send + 'static>(
    options: Options,
    server: impl FnOnce(OwnedFd) -> T + Send + 'static,
) -> (HandshakeError, T) {
    let dir = TempDir::new();
    let before = fd_count();
    let l = raw_socket();
    rustix::net::bind(&l, &rustix::net::SocketAddrUnix::new(dir.sock()).unwrap()).unwrap();
    rustix::net::listen(&l, 8).unwrap();
    let t = std::thread::spawn(move || {
        let c = rustix::net::accept(&l).unwrap();
        server(c)
    });
    let r = connect(dir.sock(), &options);
    let out = t.join().unwrap();
    let e = match r {
        Err(ConnectError::Handshake { source, .. }) => source,
        r => panic!("expected a handshake error, got {r:?}"),
    };
    assert_fds_restored(before, &format!("client after `{e}`"));
    (e, out)
}

#[test]
fn client_rejects_a_bad_memfd_from_the_server() {
    let _g = serial();
    let (e, reply) = client_fails(opts(), |s| {
        let plan = raw_server_hello(&s);
        let (_, fds) = recv_raw(&s, Duration::from_secs(5)).expect("client RING");
        assert_eq!(fds.len(), 3);
        let (pipe, _w) = rustix::pipe::pipe().unwrap();
        let (d, sp) = (epoll_fd(), epoll_fd());
        send_raw(
            &s,
            &plan.ours.encode(),
            &[&[pipe.as_fd(), d.as_fd(), sp.as_fd()]],
        )
        .unwrap();
        reply(&s)
    });
    assert!(
        matches!(e, HandshakeError::BadRing(SetupError::NotMemfd)),
        "{e}"
    );
    assert_eq!(reject_code(&reply), Some(RejectCode::BAD_RING.0));
}

#[test]
fn client_times_out_on_a_silent_server() {
    let _g = serial();
    let t = Instant::now();
    let (e, _) = client_fails(opts().handshake_timeout(Duration::from_millis(300)), |s| {
        std::thread::sleep(Duration::from_millis(600));
        drop(s);
    });
    assert!(
        matches!(
            e,
            HandshakeError::Timeout {
                waiting_for: "HELLO",
                ..
            }
        ),
        "{e}"
    );
    assert!(t.elapsed() >= Duration::from_millis(300));
}

#[test]
fn client_refuses_a_server_that_says_it_is_a_client() {
    let _g = serial();
    let (e, _) = client_fails(opts(), |s| {
        recv_raw(&s, Duration::from_secs(5)).unwrap();
        send_raw(&s, &client_hello().encode(), &[]).unwrap();
        reply(&s)
    });
    assert!(matches!(e, HandshakeError::Incompatible(_)), "{e}");
}

#[test]
fn client_reports_the_servers_reject_reason() {
    let _g = serial();
    let (e, _) = client_fails(opts(), |s| {
        recv_raw(&s, Duration::from_secs(5)).unwrap();
        send_raw(
            &s,
            &wire::encode_reject(RejectCode::INTERNAL, "out of memfds"),
            &[],
        )
        .unwrap();
    });
    assert!(
        matches!(&e, HandshakeError::Rejected { code: RejectCode::INTERNAL, reason } if reason == "out of memfds"),
        "{e}"
    );
}

#[test]
fn client_checks_the_servers_credentials_before_saying_anything() {
    let _g = serial();
    let (e, first) = client_fails(opts().peer_policy(PeerPolicy::custom(|_| false)), |s| {
        recv_raw(&s, Duration::from_secs(5)).map(|(b, _)| wire::decode(&b))
    });
    assert!(matches!(e, HandshakeError::NotPermitted(_)), "{e}");
    assert!(
        matches!(
            first,
            Some(Ok(Packet::Reject {
                code: RejectCode::NOT_PERMITTED,
                ..
            }))
        ),
        "the server heard {first:?}"
    );
}
