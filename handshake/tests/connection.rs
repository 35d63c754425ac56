//! What a connection does when both sides behave: sizes, both directions, closing, the
//! socket file, event loops and the selector, and many cycles without a leaked fd.

mod common;

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use shmpipe_handshake::{
    AcceptError, BindError, ConnectError, Connection, Listener, Options, Selector, connect,
};
use shmpipe_ring::{RecvError, RecvTimeoutError, TryRecvError};
use shmpipe_testkit::blocked::{Wait, getpid, gettid, wait_until_asleep};

fn pair(server: &Options, client: &Options) -> (TempDir, Connection, Connection) {
    let dir = TempDir::new();
    let mut listener = Listener::bind(dir.sock(), server).unwrap();
    let path = dir.sock();
    let client = client.clone();
    let t = std::thread::spawn(move || connect(&path, &client));
    let s = listener.accept_timeout(Duration::from_secs(10)).unwrap();
    let c = t.join().unwrap().unwrap();
    (dir, s, c)
}

#[test]
fn both_directions_carry_messages_in_order() {
    let _g = serial();
    let (_dir, server, client) = pair(&opts(), &opts());
    let (mut stx, mut srx) = server.split();
    let (mut ctx, mut crx) = client.split();
    const N: u32 = 50_000;
    let a = std::thread::spawn(move || {
        for i in 0..N {
            ctx.send(&i.to_le_bytes()).unwrap();
        }
        ctx.close(Duration::from_secs(10)).unwrap();
    });
    let b = std::thread::spawn(move || {
        for i in 0..N {
            stx.send(&(i ^ 0xdead_beef).to_le_bytes()).unwrap();
        }
        stx.close(Duration::from_secs(10)).unwrap();
    });
    let mut buf = Vec::new();
    for i in 0..N {
        srx.recv(&mut buf).unwrap();
        assert_eq!(buf, i.to_le_bytes());
        crx.recv(&mut buf).unwrap();
        assert_eq!(buf, (i ^ 0xdead_beef).to_le_bytes());
    }
    assert!(matches!(srx.recv(&mut buf), Err(RecvError::Closed)));
    assert!(matches!(crx.recv(&mut buf), Err(RecvError::Closed)));
    a.join().unwrap();
    b.join().unwrap();
}

#[test]
fn ring_sizes_follow_the_negotiation_rule() {
    let _g = serial();
    let server = opts().send_capacity(1 << 12).max_message(1000);
    let client = opts().send_capacity(1 << 14).recv_capacity(1 << 16);
    let (_dir, mut s, mut c) = pair(&server, &client);
    // Server -> client: max(4096, 65536); the server's max message as set.
    assert_eq!(s.sender().capacity(), 1 << 16);
    assert_eq!(s.sender().max_message(), 1000);
    assert_eq!(c.receiver().capacity(), 1 << 16);
    assert_eq!(c.receiver().max_message(), 1000);
    // Client -> server: its own 16 KiB, default max message a quarter of it.
    assert_eq!(c.sender().capacity(), 1 << 14);
    assert_eq!(c.sender().max_message(), 1 << 12);
    assert_eq!(s.receiver().capacity(), 1 << 14);
    assert_eq!(s.peer().uid, rustix::process::geteuid().as_raw());
    assert_eq!(s.peer().pid, Some(std::process::id()));
}

#[test]
fn a_ring_too_large_for_the_peer_fails_on_both_sides_with_the_numbers() {
    let _g = serial();
    let dir = TempDir::new();
    let mut listener = Listener::bind(dir.sock(), &opts().max_ring(1 << 16)).unwrap();
    let path = dir.sock();
    let t = std::thread::spawn(move || connect(&path, &opts().recv_capacity(1 << 20)));
    let e = listener
        .accept_timeout(Duration::from_secs(10))
        .unwrap_err();
    assert!(e.to_string().contains("1048576"), "{e}");
    let e = t.join().unwrap().unwrap_err();
    assert!(
        matches!(e, ConnectError::Handshake { .. }) && e.to_string().contains("1048576"),
        "{e}"
    );
}

#[test]
fn invalid_options_are_refused_before_touching_anything() {
    let _g = serial();
    let dir = TempDir::new();
    for o in [
        Options::new().send_capacity(1000),
        Options::new().recv_capacity(3),
        Options::new().send_capacity(1 << 12).max_message(1 << 12),
        Options::new().send_capacity(1 << 20).max_ring(1 << 16),
        Options::new().max_pending(0),
    ] {
        assert!(matches!(
            Listener::bind(dir.sock(), &o),
            Err(BindError::InvalidOptions(_))
        ));
        assert!(matches!(
            connect(dir.sock(), &o),
            Err(ConnectError::InvalidOptions(_))
        ));
    }
    assert!(!dir.sock().exists());
}

#[test]
fn connecting_to_nothing_says_so() {
    let _g = serial();
    let dir = TempDir::new();
    let e = connect(dir.sock(), &opts()).unwrap_err();
    assert!(
        matches!(&e, ConnectError::Connect { source, .. } if source.kind() == std::io::ErrorKind::NotFound),
        "{e}"
    );
    // A stale socket file: nobody listens.
    let s = raw_socket();
    rustix::net::bind(&s, &rustix::net::SocketAddrUnix::new(dir.sock()).unwrap()).unwrap();
    let e = connect(dir.sock(), &opts()).unwrap_err();
    assert!(e.to_string().contains("stale socket"), "{e}");
}

#[test]
fn socket_file_is_0600_and_goes_away_with_the_listener() {
    let _g = serial();
    let dir = TempDir::new();
    let listener = Listener::bind(dir.sock(), &opts()).unwrap();
    let mode = std::fs::metadata(dir.sock()).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(listener.path(), dir.sock());
    drop(listener);
    assert!(!dir.sock().exists());
    assert!(
        std::fs::read_dir(dir.path()).unwrap().next().is_none(),
        "no lock file left"
    );
}

#[test]
fn accept_timeout_and_try_accept_return_when_nobody_comes() {
    let _g = serial();
    let dir = TempDir::new();
    let mut listener = Listener::bind(dir.sock(), &opts()).unwrap();
    assert!(listener.try_accept().unwrap().is_none());
    let t = Instant::now();
    assert!(matches!(
        listener.accept_timeout(Duration::from_millis(200)),
        Err(AcceptError::Timeout)
    ));
    // Not before its timeout; the `Timeout` answer says the timeout ended it, so the upper
    // bound is only a hang guard.
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(200) && took < Duration::from_secs(10),
        "{took:?}"
    );
}

#[test]
fn close_returns_only_once_the_peer_consumed_everything() {
    let _g = serial();
    let (_dir, server, client) = pair(&opts(), &opts());
    let (mut tx, _crx) = client.split();
    let (_stx, mut rx) = server.split();
    for i in 0..100u32 {
        tx.send(&i.to_le_bytes()).unwrap();
    }
    // Nothing is read until `close` has been seen asleep in `epoll_wait`, waiting for the
    // consumer: it did not return while everything was still unread. (The timeouts, 10 s,
    // are hang guards.)
    let (tid_tx, tid_rx) = mpsc::channel();
    let closer = std::thread::spawn(move || {
        tid_tx.send(gettid()).unwrap();
        tx.close(Duration::from_secs(10))
    });
    wait_until_asleep(
        getpid(),
        tid_rx.recv().unwrap(),
        Wait::Epoll,
        Duration::from_secs(10),
        "close with 100 messages unread",
        || !closer.is_finished(),
    );
    assert!(
        !closer.is_finished(),
        "close returned with 100 messages unread"
    );
    let mut buf = Vec::new();
    let mut n = 0;
    loop {
        match rx.recv_timeout(&mut buf, Duration::from_secs(10)) {
            Ok(_) => n += 1,
            Err(RecvTimeoutError::Failed(RecvError::Closed)) => break,
            Err(e) => panic!("after {n} messages: {e}"),
        }
    }
    assert_eq!(n, 100);
    closer
        .join()
        .unwrap()
        .expect("close confirms that everything was consumed");
}

#[test]
fn dropping_one_side_ends_the_other_sides_stream() {
    let _g = serial();
    let (_dir, mut server, client) = pair(&opts(), &opts());
    drop(client);
    let mut buf = Vec::new();
    assert!(matches!(server.recv(&mut buf), Err(RecvError::Closed)));
    assert!(matches!(
        server.send(b"x"),
        Err(shmpipe_ring::SendError::Closed)
    ));
}

#[test]
fn a_raw_peer_built_from_the_wire_module_alone_interoperates() {
    let _g = serial();
    let dir = TempDir::new();
    let mut listener = Listener::bind(dir.sock(), &opts()).unwrap();
    let path = dir.sock();
    let t = std::thread::spawn(move || {
        let peer = Peer::hello(&path, client_hello());
        let half = peer.ring();
        peer.send_ring(&half.fds());
        let mut raw = peer.finish(half);
        raw.producer.send(b"from raw").unwrap();
        let mut buf = Vec::new();
        raw.consumer.recv(&mut buf).unwrap();
        buf
    });
    let mut conn = listener.accept_timeout(Duration::from_secs(10)).unwrap();
    let mut buf = Vec::new();
    conn.recv(&mut buf).unwrap();
    assert_eq!(buf, b"from raw");
    conn.send(b"from library").unwrap();
    assert_eq!(t.join().unwrap(), b"from library");
}

#[test]
fn external_event_loop_protocol() {
    use rustix::event::{PollFd, PollFlags, poll};
    let _g = serial();
    let (_dir, server, client) = pair(&opts(), &opts());
    let (_stx, mut rx) = server.split();
    let (mut tx, _crx) = client.split();
    let producer = std::thread::spawn(move || {
        for i in 0..2000u32 {
            tx.send(&i.to_le_bytes()).unwrap();
            if i % 200 == 0 {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        tx.close(Duration::from_secs(10)).unwrap();
    });
    let mut next = 0u32;
    let mut sleeps = 0;
    let mut buf = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    'outer: loop {
        assert!(Instant::now() < deadline, "event loop stuck at {next}");
        loop {
            match rx.try_recv(&mut buf) {
                Ok(_) => {
                    assert_eq!(buf, next.to_le_bytes());
                    next += 1;
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Failed(RecvError::Closed)) => break 'outer,
                Err(e) => panic!("{e}"),
            }
        }
        if rx.arm().unwrap() {
            continue;
        }
        // Level-triggered poll on both fds, as the docs describe.
        let mut fds = [
            PollFd::new(&rx, PollFlags::IN),
            PollFd::from_borrowed_fd(rx.peer_fd(), PollFlags::IN | PollFlags::RDHUP),
        ];
        poll(
            &mut fds,
            Some(&rustix::event::Timespec::try_from(Duration::from_secs(5)).unwrap()),
        )
        .unwrap();
        sleeps += 1;
    }
    assert_eq!(next, 2000);
    assert!(
        sleeps > 0,
        "never slept: the test proved nothing about arm()"
    );
    producer.join().unwrap();
}

#[test]
fn selector_serves_many_clients_from_one_thread() {
    let _g = serial();
    const CLIENTS: usize = 8;
    const N: u32 = 5000;
    let dir = TempDir::new();
    let mut listener = Listener::bind(dir.sock(), &opts()).unwrap();
    let mut sel = Selector::new().unwrap();
    let accept = sel.insert_fd(&listener).unwrap();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|k| {
            let path = dir.sock();
            std::thread::spawn(move || {
                let (mut tx, _rx) = connect(&path, &opts()).unwrap().split();
                for i in 0..N {
                    tx.send(&[&(k as u32).to_le_bytes()[..], &i.to_le_bytes()].concat())
                        .unwrap();
                    if i % 500 == 0 {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
                tx.close(Duration::from_secs(30)).unwrap();
            })
        })
        .collect();
    let mut next: HashMap<u32, u32> = HashMap::new();
    let mut done = 0;
    let mut ready = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while done < CLIENTS {
        assert!(Instant::now() < deadline, "selector stuck: {next:?}");
        sel.select(&mut ready, Some(Duration::from_secs(5)))
            .unwrap();
        for &t in &ready {
            if t == accept {
                if let Some(conn) = listener.try_accept().unwrap() {
                    sel.insert(conn.split().1).unwrap();
                }
                continue;
            }
            let rx = sel.get_mut(t).unwrap();
            let r = rx.try_drain(usize::MAX, |m| {
                let k = u32::from_le_bytes(m[..4].try_into().unwrap());
                let i = u32::from_le_bytes(m[4..].try_into().unwrap());
                let n = next.entry(k).or_default();
                assert_eq!(i, *n, "client {k}");
                *n += 1;
            });
            match r {
                Ok(_) | Err(TryRecvError::Empty) => {}
                Err(TryRecvError::Failed(RecvError::Closed)) => {
                    sel.remove(t).unwrap();
                    done += 1;
                }
                Err(e) => panic!("{e}"),
            }
        }
    }
    assert!(sel.is_empty());
    assert_eq!(next.len(), CLIENTS);
    assert!(next.values().all(|&n| n == N), "{next:?}");
    for c in clients {
        c.join().unwrap();
    }
}

#[test]
fn selector_sleeps_while_everyone_is_idle() {
    let _g = serial();
    let dir = TempDir::new();
    let mut listener = Listener::bind(dir.sock(), &opts()).unwrap();
    let mut sel = Selector::new().unwrap();
    let mut keep = Vec::new();
    for _ in 0..4 {
        let path = dir.sock();
        let t = std::thread::spawn(move || connect(&path, &opts()).unwrap());
        let (tx, rx) = listener
            .accept_timeout(Duration::from_secs(10))
            .unwrap()
            .split();
        sel.insert(rx).unwrap();
        keep.push((tx, t.join().unwrap()));
    }
    let mut ready = Vec::new();
    // The first select arms everyone (nothing is ready), the second proves the sleep.
    sel.select(&mut ready, Some(Duration::ZERO)).unwrap();
    assert!(ready.is_empty());
    let cpu = thread_cpu_ns();
    let t = Instant::now();
    sel.select(&mut ready, Some(Duration::from_millis(300)))
        .unwrap();
    let (wall, spent) = (t.elapsed(), thread_cpu_ns() - cpu);
    assert!(ready.is_empty());
    assert!(wall >= Duration::from_millis(290), "{wall:?}");
    assert!(
        spent < 20_000_000,
        "idle select burned {spent} ns of CPU in {wall:?}"
    );
    // And wakes when one of them sends: a select is one `epoll_wait` with no re-check of its
    // own, so only the sender's wake-up can end it with the token (the 5 s is a hang guard).
    let (_, client) = &mut keep[2];
    client.send(b"wake").unwrap();
    sel.select(&mut ready, Some(Duration::from_secs(5)))
        .unwrap();
    assert_eq!(ready.len(), 1, "the selector was not woken by the message");
    let mut buf = Vec::new();
    sel.get_mut(ready[0]).unwrap().try_recv(&mut buf).unwrap();
    assert_eq!(buf, b"wake");
}

#[test]
fn selector_reports_a_closed_peer() {
    let _g = serial();
    let (_dir, server, client) = pair(&opts(), &opts());
    let mut sel = Selector::new().unwrap();
    let t = sel.insert(server.split().1).unwrap();
    let mut ready = Vec::new();
    sel.select(&mut ready, Some(Duration::ZERO)).unwrap();
    assert!(ready.is_empty());
    drop(client);
    sel.select(&mut ready, Some(Duration::from_secs(5)))
        .unwrap();
    assert_eq!(ready, [t]);
    assert!(matches!(
        sel.get_mut(t).unwrap().try_recv(&mut Vec::new()),
        Err(TryRecvError::Failed(RecvError::Closed))
    ));
    assert!(sel.remove(t).is_some());
    assert!(sel.remove(t).is_none());
}

/// The cycle test, with both sides in this process: every fd of every connection,
/// handshake and listener comes back.
#[test]
fn a_thousand_connect_close_cycles_leak_no_fd() {
    let _g = serial();
    let dir = TempDir::new();
    let before = fd_count();
    let small = opts().send_capacity(1 << 12);
    let mut listener = Listener::bind(dir.sock(), &small).unwrap();
    let during = fd_count();
    let path = dir.sock();
    let o = small.clone();
    let client = std::thread::spawn(move || {
        for i in 0..1000u32 {
            let mut c = connect(&path, &o).unwrap();
            c.send(&i.to_le_bytes()).unwrap();
            let mut buf = Vec::new();
            c.recv(&mut buf).unwrap();
            assert_eq!(buf, i.to_le_bytes());
        }
    });
    for _ in 0..1000 {
        let mut s = listener.accept_timeout(Duration::from_secs(10)).unwrap();
        let mut buf = Vec::new();
        s.recv(&mut buf).unwrap();
        s.send(&buf).unwrap();
        // The client may still be reading: wait for its close before dropping ours.
        let _ = s.recv(&mut buf);
    }
    client.join().unwrap();
    assert_fds_restored(during, "listener alive after 1000 cycles");
    drop(listener);
    assert_fds_restored(before, "after 1000 cycles");
}

#[test]
fn a_client_told_to_wait_for_the_listener_connects_once_it_is_there() {
    let _g = serial();
    let dir = TempDir::new();
    let path = dir.sock();
    // Without the option: no socket file yet is an error at once.
    assert!(matches!(
        connect(&path, &opts()),
        Err(ConnectError::Connect { .. })
    ));
    // The client is retrying while the listener does not exist yet: seen asleep between two
    // attempts (the 10 s limit is a hang guard).
    let (tid_tx, tid_rx) = mpsc::channel();
    let client = {
        let path = path.clone();
        let options = opts().wait_for_listener(Duration::from_secs(20));
        std::thread::spawn(move || {
            tid_tx.send(gettid()).unwrap();
            connect(&path, &options)
        })
    };
    wait_until_asleep(
        getpid(),
        tid_rx.recv().unwrap(),
        Wait::Sleep,
        Duration::from_secs(10),
        "a client waiting for the listener",
        || !client.is_finished(),
    );
    let mut listener = Listener::bind(&path, &opts()).unwrap();
    let mut server = listener.accept_timeout(Duration::from_secs(20)).unwrap();
    let mut client = client
        .join()
        .unwrap()
        .expect("connected once the listener was there");
    client.send(b"late but here").unwrap();
    let mut buf = Vec::new();
    server.recv(&mut buf).unwrap();
    assert_eq!(buf, b"late but here");
}

#[test]
fn a_client_that_waits_for_the_listener_gives_up_after_its_wait() {
    let _g = serial();
    let dir = TempDir::new();
    let t0 = Instant::now();
    let r = connect(
        dir.sock(),
        &opts().wait_for_listener(Duration::from_millis(100)),
    );
    assert!(matches!(r, Err(ConnectError::Connect { .. })), "{r:?}");
    // It retried for its wait, not less (the upper bound is only a hang guard).
    let waited = t0.elapsed();
    assert!(waited >= Duration::from_millis(100), "{waited:?}");
    assert!(waited < Duration::from_secs(20), "{waited:?}");
}

#[test]
fn duration_max_means_no_limit_not_a_panic() {
    let _g = serial();
    let forever = opts()
        .handshake_timeout(Duration::MAX)
        .wait_for_listener(Duration::MAX);
    let (_dir, server, client) = pair(&forever, &forever);
    let (mut tx, _crx) = client.split();
    let (_stx, mut rx) = server.split();
    tx.send(b"after forever").unwrap();
    let mut buf = Vec::new();
    rx.recv(&mut buf).unwrap();
    assert_eq!(buf, b"after forever");
}
