//! The tokio API (feature `tokio`; `cargo test -p shmpipe-handshake --features tokio`): both
//! directions with every byte checked, backpressure, a peer killed with SIGKILL while we await,
//! cancellation of every future at random points, a thousand connections without a leaked fd,
//! and the handshake's deadline. Each scenario runs on a `current_thread` runtime and on a
//! `multi_thread` one, under a deadline; children are killed and reaped.

mod common;

use std::future::Future;
use std::pin::pin;
use std::process::Child;
use std::task::Poll;
use std::time::{Duration, Instant};

use common::{TempDir, assert_fds_restored, fd_count, serial, spawn_child};
use proptest::prelude::*;
use shmpipe_handshake::tokio::{Connection, Listener, Receiver, Sender, connect};
use shmpipe_handshake::{ConnectError, HandshakeError, Options};
use shmpipe_ring::{RecvError, SendError, TrySendError};
use tokio::runtime::{Builder, Runtime};

fn runtimes() -> [(&'static str, Runtime); 2] {
    [
        (
            "current_thread",
            Builder::new_current_thread().enable_all().build().unwrap(),
        ),
        (
            "multi_thread",
            Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap(),
        ),
    ]
}

/// Run the scenario `f` on both runtime flavours, each within `limit`.
fn on_both<F, Fut>(what: &str, limit: Duration, f: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = ()>,
{
    for (flavour, rt) in runtimes() {
        rt.block_on(async {
            if tokio::time::timeout(limit, f()).await.is_err() {
                panic!("{what} on {flavour}: not done after {limit:?}");
            }
        });
    }
}

/// Small rings, so that both sides wait on each other often.
fn small() -> Options {
    Options::new()
        .capacity(1 << 12)
        .handshake_timeout(Duration::from_secs(5))
}

/// Message `i`: its index, then bytes derived from it; 8 to ~1000 bytes.
fn message(i: u64) -> Vec<u8> {
    let len = 8 + (i.wrapping_mul(7919) % 1000) as usize;
    let mut m = i.to_le_bytes().to_vec();
    m.extend((8..len).map(|j| (i as usize).wrapping_mul(31).wrapping_add(j) as u8));
    m
}

fn index_of(m: &[u8]) -> u64 {
    let i = u64::from_le_bytes(m[..8].try_into().unwrap());
    assert_eq!(m, message(i), "message {i} corrupted");
    i
}

/// A listener and a client connected to it, both on this runtime.
async fn pair(dir: &TempDir, options: &Options) -> (Connection, Connection) {
    let mut listener = Listener::bind(dir.sock(), options).unwrap();
    let (server, client) = tokio::join!(listener.accept(), connect(dir.sock(), options));
    (server.unwrap(), client.unwrap())
}

#[test]
fn both_directions_every_byte_checked() {
    let _g = serial();
    const N: u64 = 20_000;
    on_both("echo", Duration::from_secs(60), || async {
        let dir = TempDir::new();
        let (server, client) = pair(&dir, &small()).await;
        // The server echoes, receiving with `drain` and sending with `send` and `reserve`.
        let server = tokio::spawn(async move {
            let (mut tx, mut rx) = server.split();
            let mut batch = Vec::new();
            loop {
                batch.clear();
                match rx.drain(16, |m| batch.push(m.to_vec())).await {
                    Ok(_) => {}
                    Err(RecvError::Closed) => break,
                    Err(e) => panic!("server recv: {e}"),
                }
                for m in &batch {
                    if m[0] % 2 == 0 {
                        tx.send(m).await.unwrap();
                    } else {
                        let mut g = tx.reserve(m.len()).await.unwrap();
                        g.copy_from_slice(m);
                        g.commit().unwrap();
                    }
                }
            }
            tx.close(Duration::from_secs(10)).await.unwrap();
        });
        let (mut tx, mut rx) = client.split();
        let writer = tokio::spawn(async move {
            for i in 0..N {
                tx.send(&message(i)).await.unwrap();
            }
            tx.close(Duration::from_secs(10)).await.unwrap();
        });
        let mut buf = Vec::new();
        for i in 0..N {
            rx.recv(&mut buf).await.unwrap();
            assert_eq!(index_of(&buf), i);
        }
        assert!(matches!(rx.recv(&mut buf).await, Err(RecvError::Closed)));
        writer.await.unwrap();
        server.await.unwrap();
    });
}

#[test]
fn a_sender_awaiting_space_is_woken_when_the_consumer_drains() {
    let _g = serial();
    on_both("backpressure", Duration::from_secs(20), || async {
        let dir = TempDir::new();
        let (server, client) = pair(&dir, &small()).await;
        let (mut tx, _rx) = client.split();
        let (_stx, mut srx) = server.split();
        let msg = [7u8; 200];
        let mut sent = 0;
        while tx.try_send(&msg).is_ok() {
            sent += 1;
        }
        assert!(sent > 0);
        let blocked = tokio::spawn(async move {
            tx.send(&msg).await.unwrap();
            tx
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!blocked.is_finished(), "the ring was full: send must wait");
        let mut buf = Vec::new();
        for _ in 0..sent {
            srx.recv(&mut buf).await.unwrap();
        }
        let t = Instant::now();
        let tx = tokio::time::timeout(Duration::from_secs(5), blocked)
            .await
            .expect("the drained consumer woke the sender")
            .unwrap();
        assert!(t.elapsed() < Duration::from_secs(1));
        assert!(tx.stats().full >= 1);
        srx.recv(&mut buf).await.unwrap();
        assert_eq!(buf, msg);
    });
}

#[test]
fn a_receiver_parks_and_is_woken_by_each_message() {
    let _g = serial();
    on_both("ping-pong", Duration::from_secs(20), || async {
        let dir = TempDir::new();
        let (mut server, mut client) = pair(&dir, &small()).await;
        let echo = tokio::spawn(async move {
            let mut buf = Vec::new();
            while server.recv(&mut buf).await.is_ok() {
                server.send(&buf).await.unwrap();
            }
        });
        let mut buf = Vec::new();
        for i in 0..500u64 {
            if i % 50 == 0 {
                // Idle long enough for both sides to park on the reactor.
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            client.send(&message(i)).await.unwrap();
            client.recv(&mut buf).await.unwrap();
            assert_eq!(index_of(&buf), i);
        }
        drop(client);
        echo.await.unwrap();
    });
}

#[test]
fn spin_budget_changes_nothing_but_the_wait() {
    let _g = serial();
    on_both("spin", Duration::from_secs(20), || async {
        let dir = TempDir::new();
        let (server, client) = pair(&dir, &small()).await;
        let (mut tx, _) = client.split();
        let (_, mut rx) = server.split();
        tx.set_spin(Duration::from_micros(20));
        rx.set_spin(Duration::from_micros(20));
        let reader = tokio::spawn(async move {
            let mut buf = Vec::new();
            for i in 0..2000 {
                rx.recv(&mut buf).await.unwrap();
                assert_eq!(index_of(&buf), i);
            }
        });
        for i in 0..2000 {
            tx.send(&message(i)).await.unwrap();
        }
        reader.await.unwrap();
    });
}

#[test]
fn errors_are_the_blocking_apis() {
    let _g = serial();
    on_both("errors", Duration::from_secs(20), || async {
        let dir = TempDir::new();
        let (server, client) = pair(&dir, &small()).await;
        let (mut tx, mut rx) = client.split();
        let too_big = vec![0u8; tx.max_message() + 1];
        assert!(matches!(
            tx.send(&too_big).await,
            Err(SendError::TooLarge { .. })
        ));
        let (stx, srx) = server.split();
        // The peer closes its receiver: our sends fail with Closed.
        drop(srx);
        let mut closed = false;
        for _ in 0..100 {
            if let Err(e) = tx.send(b"x").await {
                assert!(matches!(e, SendError::Closed), "{e}");
                closed = true;
                break;
            }
        }
        assert!(closed);
        // The peer closes its sender after one message: we get it, then Closed for good.
        let mut stx = stx;
        stx.send(b"last").await.unwrap();
        let closing = tokio::spawn(stx.close(Duration::from_secs(5)));
        let mut buf = Vec::new();
        rx.recv(&mut buf).await.unwrap();
        assert_eq!(buf, b"last");
        assert!(matches!(rx.recv(&mut buf).await, Err(RecvError::Closed)));
        assert!(matches!(rx.drain(8, |_| {}).await, Err(RecvError::Closed)));
        closing.await.unwrap().expect("Ok: we consumed everything");
    });
}

#[test]
fn connect_times_out_on_a_silent_listener_on_tokios_clock() {
    let _g = serial();
    on_both("silent listener", Duration::from_secs(10), || async {
        let dir = TempDir::new();
        // A socket that listens and never answers: connect succeeds, the HELLO never comes.
        let sock = common::raw_socket();
        let addr = rustix::net::SocketAddrUnix::new(dir.sock()).unwrap();
        rustix::net::bind(&sock, &addr).unwrap();
        rustix::net::listen(&sock, 8).unwrap();
        let t = Instant::now();
        let options = small().handshake_timeout(Duration::from_millis(200));
        match connect(dir.sock(), &options).await {
            Err(ConnectError::Handshake {
                source:
                    HandshakeError::Timeout {
                        waiting_for: "HELLO",
                        ..
                    },
                ..
            }) => {}
            r => panic!("expected a timeout waiting for HELLO, got {r:?}"),
        }
        let took = t.elapsed();
        assert!(
            took >= Duration::from_millis(190) && took < Duration::from_secs(2),
            "{took:?}"
        );
        // No socket file at all: `Connect` with ENOENT, at once.
        let gone = dir.path().join("none");
        assert!(matches!(
            connect(&gone, &small()).await,
            Err(ConnectError::Connect { .. })
        ));
    });
}

#[test]
fn connect_waits_for_a_listener_that_comes_late() {
    let _g = serial();
    on_both("late listener", Duration::from_secs(10), || async {
        let dir = TempDir::new();
        let path = dir.sock();
        let options = small().wait_for_listener(Duration::from_secs(5));
        let client = tokio::spawn({
            let path = path.clone();
            let options = options.clone();
            async move { connect(&path, &options).await }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut listener = Listener::bind(&path, &small()).unwrap();
        let mut server = listener.accept().await.unwrap();
        let mut client = client.await.unwrap().unwrap();
        client.send(b"hi").await.unwrap();
        let mut buf = Vec::new();
        server.recv(&mut buf).await.unwrap();
        assert_eq!(buf, b"hi");
    });
}

#[test]
fn a_stalled_client_does_not_hold_up_accept() {
    let _g = serial();
    on_both("stalled client", Duration::from_secs(10), || async {
        let dir = TempDir::new();
        let options = small().handshake_timeout(Duration::from_millis(300));
        let mut listener = Listener::bind(dir.sock(), &options).unwrap();
        // Connects and says nothing.
        let _stalled = common::raw_connect(&dir.sock());
        let good = tokio::spawn({
            let path = dir.sock();
            let options = options.clone();
            async move { connect(&path, &options).await.map(|_| ()) }
        });
        let mut accepted = false;
        let mut failed = false;
        while !(accepted && failed) {
            match listener.accept().await {
                Ok(_) => accepted = true,
                Err(shmpipe_handshake::AcceptError::Handshake { source, .. }) => {
                    assert!(matches!(source, HandshakeError::Timeout { .. }), "{source}");
                    failed = true;
                }
                Err(e) => panic!("{e}"),
            }
        }
        good.await.unwrap().unwrap();
    });
}

// ---- the peer killed while we await ------------------------------------------------------

/// How many messages the child sends before it waits to be killed.
const COMMITTED: u64 = 300;

/// Run by [`spawn_child`]: connect (blocking API) to `SHMPIPE_SOCK`, then act out
/// `SHMPIPE_SCENARIO`, and wait to be killed.
#[test]
#[ignore = "a child process of the kill tests"]
fn child() {
    let Ok(scenario) = std::env::var("SHMPIPE_SCENARIO") else {
        return;
    };
    let path = std::env::var("SHMPIPE_SOCK").unwrap();
    let mut conn = shmpipe_handshake::connect(&path, &small()).unwrap();
    match scenario.as_str() {
        "send-then-wait" => {
            for i in 0..COMMITTED {
                conn.send(&message(i)).unwrap();
            }
        }
        "read-nothing" => {}
        s => panic!("unknown scenario {s}"),
    }
    std::thread::sleep(Duration::from_secs(60));
}

/// Kills the child when dropped, so a failing test leaves nothing running.
struct Reaper(Option<Child>);

impl Reaper {
    /// SIGKILL now; returns the moment of the kill.
    fn kill(&mut self) -> Instant {
        let c = self.0.as_mut().unwrap();
        c.kill().unwrap();
        let t = Instant::now();
        c.wait().unwrap();
        t
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        if let Some(c) = &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

async fn accept_child(dir: &TempDir, scenario: &str) -> (Connection, Reaper) {
    let mut listener = Listener::bind(dir.sock(), &small()).unwrap();
    let sock = dir.sock().to_string_lossy().into_owned();
    let child = Reaper(Some(spawn_child(scenario, &[("SHMPIPE_SOCK", &sock)])));
    let conn = tokio::time::timeout(Duration::from_secs(20), listener.accept())
        .await
        .expect("the child connected")
        .unwrap();
    (conn, child)
}

#[test]
fn peer_killed_while_we_await_recv_delivers_the_prefix_then_peer_gone() {
    let _g = serial();
    on_both("SIGKILL during recv", Duration::from_secs(60), || async {
        let dir = TempDir::new();
        let (conn, mut child) = accept_child(&dir, "send-then-wait").await;
        let (_tx, mut rx) = conn.split();
        let mut buf = Vec::new();
        for i in 0..COMMITTED {
            rx.recv(&mut buf).await.unwrap();
            assert_eq!(index_of(&buf), i);
        }
        let waiting = tokio::spawn(async move {
            let r = rx.recv(&mut buf).await;
            (r, Instant::now())
        });
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert!(!waiting.is_finished(), "nothing more was sent");
        let killed = child.kill();
        let (r, at) = waiting.await.unwrap();
        assert!(matches!(r, Err(RecvError::PeerGone)), "{r:?}");
        let after = at.saturating_duration_since(killed);
        assert!(
            after < Duration::from_millis(100),
            "PeerGone {after:?} after the kill"
        );
    });
}

#[test]
fn peer_killed_while_we_await_send_fails_with_peer_gone() {
    let _g = serial();
    on_both("SIGKILL during send", Duration::from_secs(60), || async {
        let dir = TempDir::new();
        let (conn, mut child) = accept_child(&dir, "read-nothing").await;
        let (mut tx, _rx) = conn.split();
        let msg = [1u8; 100];
        loop {
            match tx.try_send(&msg) {
                Ok(()) => {}
                Err(TrySendError::Full) => break,
                Err(e) => panic!("{e}"),
            }
        }
        let waiting = tokio::spawn(async move {
            let r = tx.send(&msg).await;
            (r, Instant::now())
        });
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert!(!waiting.is_finished(), "the ring is full");
        let killed = child.kill();
        let (r, at) = waiting.await.unwrap();
        assert!(matches!(r, Err(SendError::PeerGone)), "{r:?}");
        let after = at.saturating_duration_since(killed);
        assert!(
            after < Duration::from_millis(100),
            "PeerGone {after:?} after the kill"
        );
    });
}

// ---- cancellation ------------------------------------------------------------------------

/// Poll `fut` at most `polls` times (yielding in between, so the other side runs), then drop
/// it: cancellation wherever it happens to stand, parked or not.
async fn poll_at_most<F: Future>(fut: F, polls: usize) -> Option<F::Output> {
    let mut fut = pin!(fut);
    for _ in 0..polls {
        let r = std::future::poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx))).await;
        if let Poll::Ready(v) = r {
            return Some(v);
        }
        tokio::task::yield_now().await;
    }
    None
}

/// Both sides through futures cancelled after a random number of polls: the receiver must see
/// exactly 0..n, each once, in order.
fn cancel_run(flavour_multi: bool, n: u64, send_polls: Vec<usize>, recv_polls: Vec<usize>) {
    let rt = if flavour_multi {
        Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    } else {
        Builder::new_current_thread().enable_all().build().unwrap()
    };
    rt.block_on(async move {
        let run = async move {
            let dir = TempDir::new();
            // Messages up to ~1000 bytes in a 4 KiB ring: the sender waits often.
            let options = Options::new()
                .capacity(1 << 12)
                .handshake_timeout(Duration::from_secs(5));
            let (server, client) = pair(&dir, &options).await;
            let (mut tx, _) = client.split();
            let (_, mut rx) = server.split();
            let writer = tokio::spawn(async move {
                let mut k = 0;
                for i in 0..n {
                    let m = message(i % 200);
                    let m = [&i.to_le_bytes()[..], &m[8..]].concat();
                    loop {
                        let polls = send_polls[k % send_polls.len()];
                        k += 1;
                        let done = if i % 2 == 0 {
                            poll_at_most(tx.send(&m), polls).await
                        } else {
                            poll_at_most(
                                async {
                                    let mut g = tx.reserve(m.len()).await?;
                                    g.copy_from_slice(&m);
                                    g.commit()
                                },
                                polls,
                            )
                            .await
                        };
                        match done {
                            Some(r) => {
                                r.unwrap();
                                break;
                            }
                            None => continue, // nothing was sent: send it again
                        }
                    }
                }
                tx.close(Duration::from_secs(10)).await.unwrap();
            });
            let mut next = 0u64;
            let mut k = 0;
            let mut buf = Vec::new();
            let mut got = Vec::new();
            loop {
                let polls = recv_polls[k % recv_polls.len()];
                k += 1;
                got.clear();
                let r = if k % 2 == 0 {
                    poll_at_most(rx.recv(&mut buf), polls)
                        .await
                        .map(|r| r.map(|_| got.push(buf.clone())))
                } else {
                    poll_at_most(rx.drain(7, |m| got.push(m.to_vec())), polls)
                        .await
                        .map(|r| r.map(drop))
                };
                match r {
                    None => {} // cancelled: nothing may have been taken
                    Some(Ok(())) => {
                        for m in &got {
                            let i = u64::from_le_bytes(m[..8].try_into().unwrap());
                            assert_eq!(i, next, "lost or duplicated");
                            assert_eq!(&m[8..], &message(i % 200)[8..]);
                            next += 1;
                        }
                    }
                    Some(Err(RecvError::Closed)) => break,
                    Some(Err(e)) => panic!("{e}"),
                }
                assert!(
                    got.is_empty() || r.is_some(),
                    "a cancelled receive took messages"
                );
            }
            assert_eq!(next, n, "every message arrived");
            writer.await.unwrap();
        };
        tokio::time::timeout(Duration::from_secs(60), run)
            .await
            .expect("cancellation run finished");
    });
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("SHMPIPE_FUZZ_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(16),
        ..ProptestConfig::default()
    })]

    #[test]
    fn cancelled_futures_lose_and_duplicate_nothing(
        multi in any::<bool>(),
        send_polls in proptest::collection::vec(1usize..6, 1..16),
        recv_polls in proptest::collection::vec(1usize..6, 1..16),
    ) {
        let _g = serial();
        cancel_run(multi, 400, send_polls, recv_polls);
    }
}

// ---- a thousand connections --------------------------------------------------------------

#[test]
fn a_thousand_tasks_connect_and_close_leaving_no_fd_behind() {
    let _g = serial();
    let rt = Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // Counted once the runtime (its epoll, its eventfd) exists.
    rt.block_on(async {
        let run = async {
            let before = fd_count();
            let dir = TempDir::new();
            let options = Options::new()
                .capacity(1 << 12)
                .handshake_timeout(Duration::from_secs(20));
            let mut listener = Listener::bind(dir.sock(), &options).unwrap();
            const TASKS: usize = 1000;
            let server = tokio::spawn(async move {
                let mut served = tokio::task::JoinSet::new();
                for _ in 0..TASKS {
                    let mut conn = listener.accept().await.unwrap();
                    served.spawn(async move {
                        let mut buf = Vec::new();
                        conn.recv(&mut buf).await.unwrap();
                        assert!(buf.starts_with(b"hello "));
                        assert!(matches!(conn.recv(&mut buf).await, Err(RecvError::Closed)));
                    });
                }
                while let Some(r) = served.join_next().await {
                    r.unwrap();
                }
            });
            // At most 64 connections open at once (each holds about 20 fds on both sides).
            let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(64));
            let mut clients = tokio::task::JoinSet::new();
            for i in 0..TASKS {
                let (path, options, gate) = (dir.sock(), options.clone(), gate.clone());
                clients.spawn(async move {
                    let _permit = gate.acquire().await.unwrap();
                    let conn = connect(&path, &options).await.unwrap();
                    let (mut tx, _rx) = conn.split();
                    tx.send(format!("hello {i}").as_bytes()).await.unwrap();
                    tx.close(Duration::from_secs(20)).await.unwrap();
                });
            }
            while let Some(r) = clients.join_next().await {
                r.unwrap();
            }
            server.await.unwrap();
            drop(dir);
            assert_fds_restored(before, "1000 tokio connections");
        };
        tokio::time::timeout(Duration::from_secs(120), run)
            .await
            .expect("1000 connections within the deadline");
    });
}

/// The handles are `Send`, and so are the futures of their calls: they go into
/// `tokio::spawn` on a multi-threaded runtime.
#[test]
fn handles_and_futures_are_send() {
    let _g = serial();
    fn send<T: Send>(_: &T) {}
    fn is_send<T: Send>() {}
    is_send::<Sender>();
    is_send::<Receiver>();
    is_send::<Connection>();
    is_send::<Listener>();
    let rt = Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let dir = TempDir::new();
        let (mut a, mut b) = pair(&dir, &small()).await;
        let mut buf = Vec::new();
        send(&a.send(b"x"));
        send(&b.recv(&mut buf));
        send(&connect(dir.sock(), &small()));
    });
}
