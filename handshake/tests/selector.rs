//! The Selector as a server's one thread: it waits for room on any client's ring as well as
//! for messages, without spinning; whole connections under one token; a dead peer reported to
//! a waiting sender. Every wait has a deadline.

mod common;

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use common::{TempDir, serial, thread_cpu_ns};
use shmpipe_handshake::{Connection, Listener, Options, Selector, Token, connect};
use shmpipe_ring::{RecvError, SendError, TryRecvError, TrySendError};

fn small() -> Options {
    Options::new()
        .capacity(1 << 12)
        .handshake_timeout(Duration::from_secs(5))
}

/// A server-side connection and the client's, in this process.
fn pair(dir: &TempDir) -> (Connection, Connection) {
    let mut listener = Listener::bind(dir.sock(), &small()).unwrap();
    let path = dir.sock();
    let client = std::thread::spawn(move || connect(&path, &small()).unwrap());
    let server = listener.accept_timeout(Duration::from_secs(10)).unwrap();
    (server, client.join().unwrap())
}

fn fill(conn: &mut Connection, msg: &[u8]) -> usize {
    let mut n = 0;
    loop {
        match conn.sender().try_send(msg) {
            Ok(()) => n += 1,
            Err(TrySendError::Full) => return n,
            Err(e) => panic!("{e}"),
        }
    }
}

#[test]
fn a_sender_waiting_for_room_sleeps_and_is_reported_when_the_peer_drains() {
    let _g = serial();
    let dir = TempDir::new();
    let (mut server, client) = pair(&dir);
    let msg = [5u8; 300];
    let sent = fill(&mut server, &msg);
    let mut sel = Selector::new().unwrap();
    let t = sel.insert_connection(server).unwrap();
    assert!(!sel.want_send(t, msg.len()).unwrap(), "the ring is full");

    // Nothing to do for 300 ms: select sleeps (a few re-checks, no spinning) and reports
    // nothing.
    let mut ready = Vec::new();
    let (cpu, start) = (thread_cpu_ns(), Instant::now());
    while start.elapsed() < Duration::from_millis(300) {
        sel.select(&mut ready, Some(Duration::from_millis(300)))
            .unwrap();
        assert!(ready.is_empty(), "nothing changed: {ready:?}");
    }
    let used = Duration::from_nanos(thread_cpu_ns() - cpu);
    assert!(
        used < Duration::from_millis(60),
        "select spun: {used:?} of CPU"
    );

    // The client drains: the server's token comes up, and the send goes through.
    let drainer = std::thread::spawn(move || {
        let mut client = client;
        let mut buf = Vec::new();
        for _ in 0..=sent {
            client
                .receiver()
                .recv_timeout(&mut buf, Duration::from_secs(10))
                .unwrap();
        }
        client
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        sel.select(&mut ready, Some(Duration::from_secs(1)))
            .unwrap();
        if ready.contains(&t) {
            match sel.sender_mut(t).unwrap().try_send(&msg) {
                Ok(()) => break,
                Err(TrySendError::Full) => {
                    if sel.want_send(t, msg.len()).unwrap() {
                        sel.sender_mut(t).unwrap().try_send(&msg).unwrap();
                        break;
                    }
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert!(Instant::now() < deadline, "the sender was never reported");
    }
    drainer.join().unwrap();
    assert!(sel.remove_connection(t).is_some());
    assert!(sel.is_empty());
}

#[test]
fn want_send_says_at_once_when_the_room_is_there_and_reports_a_gone_peer() {
    let _g = serial();
    let dir = TempDir::new();
    let (server, client) = pair(&dir);
    let (tx, _rx) = server.split();
    let mut sel = Selector::new().unwrap();
    let t = sel.insert_sender(tx).unwrap();
    assert!(sel.want_send(t, 100).unwrap(), "an empty ring has room");
    assert!(matches!(
        sel.want_send(t, 1 << 20),
        Err(SendError::TooLarge { .. })
    ));
    // Fill it, wait for room, and let the peer die instead.
    let msg = [1u8; 100];
    while sel.sender_mut(t).unwrap().try_send(&msg).is_ok() {}
    assert!(!sel.want_send(t, msg.len()).unwrap());
    drop(client);
    let mut ready = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !ready.contains(&t) {
        sel.select(&mut ready, Some(Duration::from_secs(1)))
            .unwrap();
        assert!(
            Instant::now() < deadline,
            "the peer's death was never reported"
        );
    }
    // The peer is gone: asking again says so.
    let r = sel.want_send(t, msg.len());
    assert!(
        matches!(r, Err(SendError::PeerGone) | Err(SendError::Closed)),
        "{r:?}"
    );
    assert!(sel.remove(t).is_none(), "not a receiver entry");
    assert!(sel.remove_sender(t).is_some());
    assert!(matches!(sel.want_send(t, 1), Err(SendError::Io(_))));
}

/// A whole echo server on one thread, replying to slow readers: each client's replies fill
/// its ring, the server keeps what it could not send and waits for room with `want_send`.
/// Every byte comes back, in order.
#[test]
fn one_thread_echoes_to_slow_readers_through_full_rings() {
    let _g = serial();
    const CLIENTS: usize = 4;
    const N: u64 = 3000;
    let dir = TempDir::new();
    let mut listener = Listener::bind(dir.sock(), &small()).unwrap();
    let clients: Vec<_> = (0..CLIENTS as u64)
        .map(|c| {
            let path = dir.sock();
            std::thread::spawn(move || {
                let conn = connect(&path, &small()).unwrap();
                let (mut tx, mut rx) = conn.split();
                let reader = std::thread::spawn(move || {
                    let mut buf = Vec::new();
                    for i in 0..N {
                        if i % 500 == 0 {
                            // A slow reader: the server's replies pile up meanwhile.
                            std::thread::sleep(Duration::from_millis(20));
                        }
                        rx.recv_timeout(&mut buf, Duration::from_secs(20)).unwrap();
                        let want = message(c, i);
                        assert_eq!(buf, want, "client {c} reply {i}");
                    }
                });
                for i in 0..N {
                    tx.send_timeout(&message(c, i), Duration::from_secs(20))
                        .unwrap();
                }
                reader.join().unwrap();
                tx.close(Duration::from_secs(10)).unwrap();
            })
        })
        .collect();

    let mut sel = Selector::new().unwrap();
    let accept = sel.insert_fd(&listener).unwrap();
    let mut queues: HashMap<Token, VecDeque<Vec<u8>>> = HashMap::new();
    let (mut accepted, mut finished, mut waits) = (0, 0, 0);
    let mut ready = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while finished < CLIENTS {
        assert!(Instant::now() < deadline, "echo server deadline");
        sel.select(&mut ready, Some(Duration::from_secs(1)))
            .unwrap();
        for &t in &ready {
            if t == accept {
                while let Ok(Some(conn)) = listener.try_accept() {
                    queues.insert(sel.insert_connection(conn).unwrap(), VecDeque::new());
                    accepted += 1;
                }
                continue;
            }
            let q = queues.get_mut(&t).unwrap();
            let conn = sel.connection_mut(t).unwrap();
            // Take what is there (a fair share per turn), then reply as far as the ring lets.
            let mut ended = false;
            match conn.receiver().try_drain(64, |m| q.push_back(m.to_vec())) {
                Ok(_) | Err(TryRecvError::Empty) => {}
                Err(TryRecvError::Failed(RecvError::Closed)) => ended = true,
                Err(TryRecvError::Failed(e)) => panic!("{e}"),
            }
            loop {
                while let Some(m) = q.front() {
                    match sel.sender_mut(t).unwrap().try_send(m) {
                        Ok(()) => {
                            q.pop_front();
                        }
                        Err(TrySendError::Full) => break,
                        Err(e) => panic!("{e}"),
                    }
                }
                let Some(m) = q.front() else { break };
                // `Ok(true)`: the room came meanwhile, send on; `Ok(false)`: reported later.
                if !sel.want_send(t, m.len()).unwrap() {
                    waits += 1;
                    break;
                }
            }
            if ended && q.is_empty() {
                sel.remove_connection(t).unwrap();
                queues.remove(&t);
                finished += 1;
            }
        }
    }
    for c in clients {
        c.join().unwrap();
    }
    assert_eq!(accepted, CLIENTS);
    assert!(
        waits > 0,
        "the slow readers never filled a ring: the test proves nothing"
    );
}

fn message(client: u64, i: u64) -> Vec<u8> {
    let len = 16 + ((client * 131 + i * 7919) % 700) as usize;
    let mut m = client.to_le_bytes().to_vec();
    m.extend_from_slice(&i.to_le_bytes());
    m.extend((16..len).map(|j| (i as usize * 31 + j) as u8));
    m
}

/// A sender closed and dropped at once takes its bell with it, and the kernel may drop the
/// close's wake-up on its way through the nested epoll instances (it re-checks the bell when
/// the event is harvested). The selector re-checks its handles every `RECHECK`, so the end of
/// the stream is still reported, within about that long.
#[test]
fn a_peer_that_closes_and_drops_its_sender_at_once_is_still_reported() {
    let _g = serial();
    for _ in 0..20 {
        let dir = TempDir::new();
        let (server, client) = pair(&dir);
        let (_stx, srx) = server.split();
        let (ctx, _crx) = client.split();
        let mut sel = Selector::new().unwrap();
        let t = sel.insert(srx).unwrap();
        let mut ready = Vec::new();
        sel.select(&mut ready, Some(Duration::from_millis(10)))
            .unwrap();
        assert!(ready.is_empty());
        let closer = std::thread::spawn(move || {
            let _ = ctx.close(Duration::ZERO);
        });
        let start = Instant::now();
        loop {
            sel.select(&mut ready, Some(Duration::from_secs(1)))
                .unwrap();
            if ready.contains(&t) {
                let r = sel.get_mut(t).unwrap().try_recv(&mut Vec::new());
                if matches!(r, Err(TryRecvError::Failed(RecvError::Closed))) {
                    break;
                }
            }
            assert!(
                start.elapsed() < Duration::from_secs(2),
                "the close was never reported"
            );
        }
        closer.join().unwrap();
    }
}
