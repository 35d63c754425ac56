//! docs/protocol.md §2.5, *A listener that stops accepting*: a client queued in the backlog
//! of a listener that is dropped, or connected to one that never accepts, hears no REJECT.
//! The first sees the socket hang up (`PeerClosed`), the second its own deadline (`Timeout`).

mod common;

use std::time::{Duration, Instant};

use common::*;
use shmpipe_handshake::{ConnectError, HandshakeError, Listener, connect};

#[test]
fn a_client_in_the_backlog_of_a_dropped_listener_sees_a_hang_up_without_reject() {
    let _g = serial();
    let dir = TempDir::new();
    let listener = Listener::bind(dir.sock(), &opts()).unwrap();
    let path = dir.sock();
    let client = std::thread::spawn(move || {
        connect(&path, &opts().handshake_timeout(Duration::from_secs(20)))
    });
    // Let the client connect and send its HELLO into the backlog; nobody accepts it.
    std::thread::sleep(Duration::from_millis(200));
    let start = Instant::now();
    drop(listener);
    match client.join().unwrap() {
        Err(ConnectError::Handshake {
            source: HandshakeError::PeerClosed { waiting_for },
            ..
        }) => assert_eq!(waiting_for, "HELLO"),
        r => panic!("expected PeerClosed, got {r:?}"),
    }
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "the hang-up is seen at once, not at the deadline"
    );
    // The socket file went with the listener: a new client meets ENOENT.
    match connect(dir.sock(), &opts()) {
        Err(ConnectError::Connect { source, .. }) => {
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound, "{source}");
        }
        r => panic!("expected a connect error, got {r:?}"),
    }
}

#[test]
fn a_raw_client_of_a_dropped_listener_reads_only_end_of_file() {
    let _g = serial();
    let dir = TempDir::new();
    let listener = Listener::bind(dir.sock(), &opts()).unwrap();
    let sock = raw_connect(&dir.sock());
    send_raw(&sock, &client_hello().encode(), &[]).unwrap();
    drop(listener);
    // The kernel resets the queued connection: the HELLO it held unread makes the first read
    // ECONNRESET, then end of file. No packet, no REJECT, ever arrives.
    let mut buf = [0u8; 256];
    let mut reads = Vec::new();
    for _ in 0..2 {
        let r = rustix::net::recv(&sock, &mut buf, rustix::net::RecvFlags::DONTWAIT);
        reads.push(r.map(|(n, _)| n));
    }
    assert!(
        matches!(reads[..], [Err(rustix::io::Errno::CONNRESET), Ok(0)]),
        "{reads:?}"
    );
}

#[test]
fn a_client_of_a_listener_that_never_accepts_times_out() {
    let _g = serial();
    let dir = TempDir::new();
    let _listener = Listener::bind(dir.sock(), &opts()).unwrap();
    let timeout = Duration::from_millis(300);
    let start = Instant::now();
    match connect(dir.sock(), &opts().handshake_timeout(timeout)) {
        Err(ConnectError::Handshake {
            source: HandshakeError::Timeout { waiting_for, .. },
            ..
        }) => assert_eq!(waiting_for, "HELLO"),
        r => panic!("expected Timeout, got {r:?}"),
    }
    assert!(start.elapsed() >= timeout);
}
