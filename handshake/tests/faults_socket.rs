//! The handshake rows of docs/faults.md about the socket: peers that stall or send garbage
//! (S9, and version mismatches), peers of another user (S13) and the socket path (S14), each
//! provoked by the rustix-written peer in `common/`. Each test names its row. Tests that count
//! fds run one at a time (`serial()`); tests that need a process of their own (another uid, a
//! listener killed with SIGKILL) re-run this binary's ignored `child` entry.
//!
//! The other handshake rows are in the other `faults_*.rs` files (see `faults_fds.rs`).

mod common;
mod faults_common;

use std::time::{Duration, Instant};

use common::*;
use faults_common::*;
use shmpipe_handshake::wire::{
    self, HelloError, Incompatibility, Packet, RejectCode, Whose, WireError,
};
use shmpipe_handshake::{
    AcceptError, BindError, ConnectError, HandshakeError, Listener, PeerPolicy, connect,
};

// ---------------------------------------------------------------------------------------------
// S9: stalls and garbage cost only the offender

#[test]
fn s9_silent_and_trickling_peers_expire_while_others_are_served() {
    let _g = serial();
    let dir = TempDir::new();
    let before = fd_count();
    let options = opts().handshake_timeout(Duration::from_millis(500));
    let mut listener = Listener::bind(dir.sock(), &options).unwrap();
    let silent = raw_connect(&dir.sock());
    let trickle = raw_connect(&dir.sock());
    send_raw(&trickle, &client_hello().encode(), &[]).unwrap();
    let t0 = Instant::now();
    let path = dir.sock();
    let good = std::thread::spawn(move || connect(&path, &opts()));
    let conn = listener
        .accept_timeout(Duration::from_secs(5))
        .expect("a good client is served while two others stall");
    assert!(
        t0.elapsed() < Duration::from_millis(450),
        "served only after {:?}",
        t0.elapsed()
    );
    let client = good.join().unwrap().expect("good client");
    let mut waiting = Vec::new();
    for _ in 0..2 {
        match listener.accept_timeout(Duration::from_secs(5)) {
            Err(AcceptError::Handshake {
                source: HandshakeError::Timeout { waiting_for, .. },
                ..
            }) => waiting.push(waiting_for),
            r => panic!("expected a handshake timeout, got {r:?}"),
        }
    }
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_millis(1500),
        "{took:?}"
    );
    waiting.sort_unstable();
    assert_eq!(waiting, ["HELLO", "RING"]);
    assert_eq!(
        reject_code(&reply(&silent)),
        Some(RejectCode::TIMEOUT.0),
        "the silent peer is told"
    );
    assert!(matches!(reply(&trickle), Some(Packet::Hello(_))));
    assert_eq!(reject_code(&reply(&trickle)), Some(RejectCode::TIMEOUT.0));
    assert_eq!(listener.pending(), 0);
    drop((silent, trickle, conn, client, listener));
    assert_fds_restored(before, "s9");
}

#[test]
fn s9_a_client_stalled_after_hello_costs_no_ring() {
    let _g = serial();
    let dir = TempDir::new();
    let mut listener = Listener::bind(dir.sock(), &opts().max_ring(1 << 30)).unwrap();
    let memfds = || {
        fd_set()
            .into_iter()
            .filter(|fd| {
                std::fs::read_link(format!("/proc/self/fd/{fd}"))
                    .is_ok_and(|l| l.to_string_lossy().contains("memfd:"))
            })
            .count()
    };
    // It asks for the largest ring we allow, then stalls.
    let s = raw_connect(&dir.sock());
    let greedy = wire::Hello {
        recv_capacity: 1 << 30,
        max_ring: 1 << 30,
        ..client_hello()
    };
    send_raw(&s, &greedy.encode(), &[]).unwrap();
    while listener.pending() == 0 || recv_raw(&s, Duration::ZERO).is_none() {
        assert!(listener.try_accept().unwrap().is_none());
    }
    assert_eq!(listener.pending(), 1);
    assert_eq!(
        memfds(),
        0,
        "the server created a ring for a client that has none"
    );
}

#[test]
fn s9_a_full_house_of_stallers_delays_but_never_blocks_a_good_client() {
    let _g = serial();
    let dir = TempDir::new();
    let options = opts()
        .handshake_timeout(Duration::from_millis(300))
        .max_pending(1);
    let mut listener = Listener::bind(dir.sock(), &options).unwrap();
    let _staller = raw_connect(&dir.sock());
    // Let the listener take the staller into its only slot.
    assert!(listener.try_accept().unwrap().is_none());
    assert_eq!(listener.pending(), 1);
    let path = dir.sock();
    let good = std::thread::spawn(move || connect(&path, &opts()));
    assert!(matches!(
        listener.accept_timeout(Duration::from_secs(5)),
        Err(AcceptError::Handshake {
            source: HandshakeError::Timeout { .. },
            ..
        })
    ));
    listener
        .accept_timeout(Duration::from_secs(5))
        .expect("served once the slot is free");
    good.join().unwrap().unwrap();
}

#[test]
fn s9_garbage_gets_a_protocol_reject() {
    let _g = serial();
    let (e, reply) = server_fails(opts(), |path| {
        let s = raw_connect(&path);
        send_raw(&s, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", &[]).unwrap();
        reply(&s)
    });
    assert!(
        matches!(
            e,
            HandshakeError::Wire {
                source: WireError::Magic(_),
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(reject_code(&reply), Some(RejectCode::PROTOCOL.0));
}

#[test]
fn s9_an_oversized_packet() {
    let _g = serial();
    let (e, _) = server_fails(opts(), |path| {
        let s = raw_connect(&path);
        let mut big = client_hello().encode().to_vec();
        big.resize(4000, 0);
        send_raw(&s, &big, &[]).unwrap();
        reply(&s)
    });
    assert!(matches!(e, HandshakeError::TooLong { .. }), "{e}");
}

#[test]
fn version_mismatch_is_named_and_told() {
    let _g = serial();
    let (e, reply) = server_fails(opts(), |path| {
        let s = raw_connect(&path);
        let mut hello = client_hello().encode();
        hello[4] = 2;
        send_raw(&s, &hello, &[]).unwrap();
        reply(&s)
    });
    assert!(
        matches!(
            e,
            HandshakeError::Wire {
                source: WireError::Version(2),
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("version 2"), "{e}");
    assert_eq!(reject_code(&reply), Some(RejectCode::VERSION.0));
}

#[test]
fn ring_layout_version_mismatch() {
    let _g = serial();
    let (e, reply) = server_fails(opts(), |path| {
        let s = raw_connect(&path);
        let h = wire::Hello {
            ring_version: 7,
            ..client_hello()
        };
        send_raw(&s, &h.encode(), &[]).unwrap();
        reply(&s)
    });
    assert!(
        matches!(
            &e,
            HandshakeError::Incompatible(Incompatibility::Hello {
                whose: Whose::Peers,
                error: HelloError::RingVersion(7),
            })
        ),
        "{e}"
    );
    assert_eq!(reject_code(&reply), Some(RejectCode::INCOMPATIBLE.0));
}

// ---------------------------------------------------------------------------------------------
// S13: credentials

#[test]
fn s13_other_users() {
    let _g = serial();
    if !is_root() {
        skip("s13 needs root to run a peer under another uid");
        return;
    }
    let dir = TempDir::new();
    let nobody = 65534u32;
    let spawn_as_nobody = |mode: &str| {
        use std::os::unix::process::CommandExt;
        let mut cmd = shmpipe_testkit::child::rerun("child", true);
        cmd.env("SHMPIPE_SCENARIO", "s13")
            .env("S13_PATH", dir.sock())
            .env("S13_MODE", mode)
            .uid(nobody)
            .gid(nobody)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        cmd.spawn().unwrap()
    };
    // The directory must be searchable by the other user; the socket's own mode decides.
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();

    // 1. The socket file is 0600: another user cannot even connect.
    let mut listener = Listener::bind(dir.sock(), &opts()).unwrap();
    let mode = std::fs::metadata(dir.sock()).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
        0o600
    );
    let out = finish_child(
        spawn_as_nobody("default"),
        Duration::from_secs(20),
        "s13 eacces",
    );
    assert_success(&out, "s13 eacces");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("connect: EACCES"),
        "{out:?}"
    );

    // 2. With the file opened up, SO_PEERCRED still stops them (policy: same uid).
    std::fs::set_permissions(
        dir.sock(),
        std::os::unix::fs::PermissionsExt::from_mode(0o666),
    )
    .unwrap();
    let child = spawn_as_nobody("allow-root");
    match listener.accept_timeout(Duration::from_secs(10)) {
        Err(AcceptError::Handshake {
            source: HandshakeError::NotPermitted(c),
            ..
        }) => assert_eq!(c.uid, nobody),
        r => panic!("expected NotPermitted, got {r:?}"),
    }
    let out = finish_child(child, Duration::from_secs(20), "s13 rejected");
    assert_success(&out, "s13 rejected");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("rejected: not permitted"),
        "{out:?}"
    );
    drop(listener);

    // 3. Allowed by uid, and the client allows us: a working connection.
    let mut listener = Listener::bind(
        dir.sock(),
        &opts().peer_policy(PeerPolicy::allow([nobody], [])),
    )
    .unwrap();
    std::fs::set_permissions(
        dir.sock(),
        std::os::unix::fs::PermissionsExt::from_mode(0o666),
    )
    .unwrap();
    let child = spawn_as_nobody("allow-root");
    let mut conn = listener
        .accept_timeout(Duration::from_secs(10))
        .expect("allowed peer");
    assert_eq!(conn.peer().uid, nobody);
    let mut buf = Vec::new();
    conn.recv(&mut buf).unwrap();
    assert_eq!(buf, b"hello from nobody");
    let out = finish_child(child, Duration::from_secs(20), "s13 allowed");
    assert_success(&out, "s13 allowed");
    drop((conn, listener));

    // 4. The client checks the server too: by default it wants its own uid, and we are root.
    let mut listener =
        Listener::bind(dir.sock(), &opts().peer_policy(PeerPolicy::anyone())).unwrap();
    std::fs::set_permissions(
        dir.sock(),
        std::os::unix::fs::PermissionsExt::from_mode(0o666),
    )
    .unwrap();
    let child = spawn_as_nobody("default");
    match listener.accept_timeout(Duration::from_secs(10)) {
        Err(AcceptError::Handshake {
            source: HandshakeError::Rejected { code, .. },
            ..
        }) => assert_eq!(code, RejectCode::NOT_PERMITTED),
        r => panic!("expected the client to reject us, got {r:?}"),
    }
    let out = finish_child(child, Duration::from_secs(20), "s13 client check");
    assert_success(&out, "s13 client check");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("client refused server uid 0"),
        "{out:?}"
    );
}

fn s13_child() {
    let path = std::env::var("S13_PATH").unwrap();
    let options = match std::env::var("S13_MODE").unwrap().as_str() {
        "allow-root" => opts().peer_policy(PeerPolicy::allow([0], [])),
        _ => opts(),
    };
    match connect(&path, &options) {
        Ok(mut c) => {
            c.send(b"hello from nobody").unwrap();
            c.split().0.close(Duration::from_secs(5)).unwrap();
            println!("connected");
        }
        Err(ConnectError::Connect { source, .. })
            if source.raw_os_error() == Some(rustix::io::Errno::ACCESS.raw_os_error()) =>
        {
            println!("connect: EACCES");
        }
        Err(ConnectError::Handshake {
            source: HandshakeError::Rejected { code, .. },
            ..
        }) if code == RejectCode::NOT_PERMITTED => println!("rejected: not permitted"),
        Err(ConnectError::Handshake {
            source: HandshakeError::NotPermitted(c),
            ..
        }) => println!("client refused server uid {}", c.uid),
        Err(e) => panic!("unexpected: {e}"),
    }
}

// ---------------------------------------------------------------------------------------------
// S14: the socket path

#[test]
fn s14_stale_socket_is_replaced_and_a_second_listener_refused() {
    let _g = serial();
    let dir = TempDir::new();
    // A stale socket file: bound, then its socket closed, as a crashed listener leaves it.
    {
        let s = raw_socket();
        rustix::net::bind(&s, &rustix::net::SocketAddrUnix::new(dir.sock()).unwrap()).unwrap();
    }
    assert!(dir.sock().exists());
    let mut first = Listener::bind(dir.sock(), &opts()).expect("stale socket replaced");
    match Listener::bind(dir.sock(), &opts()) {
        Err(BindError::InUse { .. }) => {}
        r => panic!("second listener must refuse: {r:?}"),
    }
    // The first one still works.
    let path = dir.sock();
    let t = std::thread::spawn(move || connect(&path, &opts()));
    first.accept_timeout(Duration::from_secs(10)).unwrap();
    t.join().unwrap().unwrap();
    drop(first);
    assert!(!dir.sock().exists(), "socket file removed on drop");
    assert!(
        !dir.path().join("s.lock").exists(),
        "lock file removed on drop"
    );
}

#[test]
fn s14_a_crashed_listener_is_replaced() {
    let _g = serial();
    let dir = TempDir::new();
    let mut child = spawn_child("s14-listen", &[("S14_PATH", dir.sock().to_str().unwrap())]);
    assert_eq!(marked_line(&mut child), "listening");
    // While it lives, nobody takes its path.
    assert!(matches!(
        Listener::bind(dir.sock(), &opts()),
        Err(BindError::InUse { .. })
    ));
    child.kill().unwrap(); // SIGKILL: no cleanup
    child.wait().unwrap();
    assert!(dir.sock().exists(), "a crash leaves the socket file");
    let mut l = Listener::bind(dir.sock(), &opts()).expect("stale socket replaced");
    let path = dir.sock();
    let t = std::thread::spawn(move || connect(&path, &opts()));
    l.accept_timeout(Duration::from_secs(10)).unwrap();
    t.join().unwrap().unwrap();
}

fn s14_listen_child() {
    let _l = Listener::bind(std::env::var("S14_PATH").unwrap(), &opts()).unwrap();
    println!("@@ listening");
    std::thread::sleep(Duration::from_secs(60));
}

#[test]
fn s14_a_live_foreign_listener_is_never_stolen() {
    let _g = serial();
    let dir = TempDir::new();
    let foreign = raw_socket();
    rustix::net::bind(
        &foreign,
        &rustix::net::SocketAddrUnix::new(dir.sock()).unwrap(),
    )
    .unwrap();
    rustix::net::listen(&foreign, 8).unwrap();
    assert!(matches!(
        Listener::bind(dir.sock(), &opts()),
        Err(BindError::InUse { .. })
    ));
    // Its socket is untouched: clients still reach it.
    let _c = raw_connect(&dir.sock());
    rustix::net::accept(&foreign).unwrap();
}

#[test]
fn s14_something_else_at_the_path_is_left_alone() {
    let _g = serial();
    let dir = TempDir::new();
    std::fs::write(dir.sock(), b"precious").unwrap();
    assert!(matches!(
        Listener::bind(dir.sock(), &opts()),
        Err(BindError::NotASocket { .. })
    ));
    assert_eq!(std::fs::read(dir.sock()).unwrap(), b"precious");
}

// ---------------------------------------------------------------------------------------------
// Children: scenarios that need a process of their own.

/// Entry point for re-executed children (see `common::spawn_child`); not a test by itself.
#[test]
#[ignore = "entry point for child processes of other tests"]
fn child() {
    run_child(&[("s13", s13_child), ("s14-listen", s14_listen_child)]);
}
