//! The facade across real processes: this binary re-executes itself as the peer (the ignored
//! `child` entry). Integrity in both directions, kill -9 on either side, many cycles, and a
//! selector that notices a killed client.

mod common;

use std::time::{Duration, Instant};

use common::*;
use shmring::{Listener, Options, RecvError, SendError, TryRecvError, connect};

/// 32 MiB each way unless SHMRING_STREAM_BYTES says otherwise.
fn stream_bytes() -> u64 {
    std::env::var("SHMRING_STREAM_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(32 << 20)
}

fn options() -> Options {
    Options::new()
        .send_capacity(1 << 18)
        .handshake_timeout(Duration::from_secs(10))
}

/// Send `total` bytes of `Pattern(seed)` and check the peer's `Pattern(peer_seed)`, at the
/// same time; returns (checksum sent, checksum received).
fn duplex(conn: shmring::Connection, seed: u64, peer_seed: u64, total: u64) -> (Fnv, Fnv) {
    let (mut tx, mut rx) = conn.split();
    let max = tx.max_message();
    let sender = std::thread::spawn(move || {
        let mut p = Pattern::new(seed, max);
        let mut sum = Fnv::new();
        let mut sent = 0u64;
        let mut buf = Vec::new();
        while sent < total {
            p.fill(&mut buf);
            buf.truncate(buf.len().min((total - sent) as usize));
            tx.send(&buf).expect("send");
            sum.update(&buf);
            sent += buf.len() as u64;
        }
        tx.close(Duration::from_secs(60))
            .expect("the peer consumed everything");
        sum
    });
    let max = rx.max_message();
    let mut expect = Pattern::new(peer_seed, max);
    let mut want = Vec::new();
    let mut got = Vec::new();
    let mut sum = Fnv::new();
    let mut received = 0u64;
    loop {
        match rx.recv(&mut got) {
            Ok(_) => {}
            Err(RecvError::Closed) => break,
            Err(e) => panic!("after {received} bytes: {e}"),
        }
        expect.fill(&mut want);
        want.truncate(want.len().min((total - received) as usize));
        assert!(got == want, "message at byte {received} differs");
        sum.update(&got);
        received += got.len() as u64;
    }
    assert_eq!(received, total);
    (sender.join().unwrap(), sum)
}

#[test]
fn stream_integrity_with_checksums_in_both_directions() {
    let _g = serial();
    let dir = TempDir::new();
    let mut listener = Listener::bind(dir.sock(), &options()).unwrap();
    let total = stream_bytes();
    let child = spawn_child(
        "duplex",
        &[
            ("PEER_PATH", dir.sock().display().to_string()),
            ("TOTAL", total.to_string()),
        ],
    );
    let mut reaper = Reaper(Some(child));
    let conn = listener.accept_timeout(Duration::from_secs(20)).unwrap();
    let (sent, received) = duplex(conn, 1, 2, total);
    let child = reaper.0.take().unwrap();
    let out = finish(child, Duration::from_secs(120), "duplex child");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The child's checksums, computed on its side of each stream, match ours.
    assert!(
        text.contains(&format!("sent {:016x}", received.0)),
        "{text}"
    );
    assert!(
        text.contains(&format!("received {:016x}", sent.0)),
        "{text}"
    );
}

fn duplex_child() {
    let path = std::env::var("PEER_PATH").unwrap();
    let total = std::env::var("TOTAL").unwrap().parse().unwrap();
    let conn = connect(&path, &options()).unwrap();
    let (sent, received) = duplex(conn, 2, 1, total);
    println!("@@ sent {:016x}", sent.0);
    println!("@@ received {:016x}", received.0);
}

#[test]
fn kill_9_of_the_sender_mid_stream() {
    let _g = serial();
    let dir = TempDir::new();
    let mut listener = Listener::bind(dir.sock(), &options()).unwrap();
    let child = spawn_child(
        "counter",
        &[("PEER_PATH", dir.sock().display().to_string())],
    );
    let mut conn = listener.accept_timeout(Duration::from_secs(20)).unwrap();
    let killer = std::thread::spawn(move || {
        let mut child = child;
        std::thread::sleep(Duration::from_millis(300));
        child.kill().unwrap(); // SIGKILL
        let at = Instant::now();
        child.wait().unwrap();
        at
    });
    let mut buf = Vec::new();
    let mut next = 0u64;
    let err = loop {
        match conn.recv(&mut buf) {
            Ok(_) => {
                let n = u64::from_le_bytes(buf[..8].try_into().unwrap());
                assert_eq!(n, next, "gap or duplicate");
                assert!(
                    buf[8..].iter().all(|&b| b == n as u8),
                    "message {n} corrupted"
                );
                next += 1;
            }
            Err(e) => break e,
        }
    };
    let ended = Instant::now();
    let killed = killer.join().unwrap();
    assert!(matches!(err, RecvError::PeerGone), "{err}");
    assert!(
        next > 1000,
        "only {next} messages before the kill: the test proved little"
    );
    let after = ended.saturating_duration_since(killed);
    assert!(
        after < Duration::from_millis(100),
        "error {after:?} after the kill"
    );
    println!("received a prefix of {next} messages, then PeerGone {after:?} after the kill");
}

/// Sends message n = (n as u64, then n % 256 repeated) forever.
fn counter_child() {
    let path = std::env::var("PEER_PATH").unwrap();
    let (mut tx, _rx) = connect(&path, &options()).unwrap().split();
    let mut buf = vec![0u8; 200];
    for n in 0u64.. {
        buf[..8].copy_from_slice(&n.to_le_bytes());
        buf[8..].fill(n as u8);
        tx.send(&buf).unwrap();
    }
}

#[test]
fn kill_9_of_the_receiver_while_the_sender_is_blocked() {
    let _g = serial();
    let dir = TempDir::new();
    let mut listener = Listener::bind(dir.sock(), &options()).unwrap();
    let mut child = spawn_child("idle", &[("PEER_PATH", dir.sock().display().to_string())]);
    let conn = listener.accept_timeout(Duration::from_secs(20)).unwrap();
    assert_eq!(marked_line(&mut child), "ready");
    let (mut tx, _rx) = conn.split();
    while tx.try_send(&[1u8; 4000]).is_ok() {}
    let sender = std::thread::spawn(move || {
        let r = tx.send(&[1u8; 4000]);
        (r, Instant::now())
    });
    std::thread::sleep(Duration::from_millis(100));
    assert!(!sender.is_finished(), "the ring was not full");
    child.kill().unwrap();
    let killed = Instant::now();
    child.wait().unwrap();
    let (r, done) = sender.join().unwrap();
    assert!(matches!(r, Err(SendError::PeerGone)), "{r:?}");
    let after = done.saturating_duration_since(killed);
    assert!(
        after < Duration::from_millis(100),
        "unblocked {after:?} after the kill"
    );
}

fn idle_child() {
    let path = std::env::var("PEER_PATH").unwrap();
    let _conn = connect(&path, &options()).unwrap();
    println!("@@ ready");
    std::thread::sleep(Duration::from_secs(120));
}

#[test]
fn a_thousand_connect_close_cycles_against_another_process() {
    let _g = serial();
    let dir = TempDir::new();
    let mut server = spawn_child("echo", &[("PEER_PATH", dir.sock().display().to_string())]);
    assert_eq!(marked_line(&mut server), "listening");
    let server = Reaper(Some(server));
    let before = fd_count();
    let o = options().send_capacity(1 << 12);
    let mut buf = Vec::new();
    for i in 0..1000u32 {
        let mut c = connect(dir.sock(), &o).unwrap();
        c.send(&i.to_le_bytes()).unwrap();
        c.recv(&mut buf).unwrap();
        assert_eq!(buf, i.to_le_bytes());
        assert!(fd_count() > before, "a live connection holds fds");
    }
    assert_eq!(fd_count(), before, "fds leaked over 1000 cycles");
    drop(server);
}

/// Serves one connection at a time: echo one message, wait for the close.
fn echo_child() {
    let path = std::env::var("PEER_PATH").unwrap();
    let o = options().send_capacity(1 << 12);
    let mut listener = Listener::bind(&path, &o).unwrap();
    println!("@@ listening");
    let mut buf = Vec::new();
    loop {
        let mut c = listener.accept().unwrap();
        c.recv(&mut buf).unwrap();
        c.send(&buf).unwrap();
        let _ = c.recv(&mut buf);
    }
}

#[test]
fn a_selector_notices_a_killed_client() {
    let _g = serial();
    let dir = TempDir::new();
    let mut listener = Listener::bind(dir.sock(), &options()).unwrap();
    let mut sel = shmring::Selector::new().unwrap();
    let mut keep = Vec::new();
    let mut tokens = Vec::new();
    let mut children = Vec::new();
    for _ in 0..3 {
        children.push(spawn_child(
            "idle",
            &[("PEER_PATH", dir.sock().display().to_string())],
        ));
        let (tx, rx) = listener
            .accept_timeout(Duration::from_secs(20))
            .unwrap()
            .split();
        keep.push(tx);
        tokens.push(sel.insert(rx).unwrap());
    }
    for c in &mut children {
        assert_eq!(marked_line(c), "ready");
    }
    let mut ready = Vec::new();
    sel.select(&mut ready, Some(Duration::from_millis(50)))
        .unwrap();
    assert!(ready.is_empty());
    let mut victim = children.remove(1);
    victim.kill().unwrap();
    let killed = Instant::now();
    victim.wait().unwrap();
    sel.select(&mut ready, Some(Duration::from_secs(5)))
        .unwrap();
    assert!(killed.elapsed() < Duration::from_millis(100));
    assert_eq!(ready, [tokens[1]]);
    assert!(matches!(
        sel.get_mut(tokens[1]).unwrap().try_recv(&mut Vec::new()),
        Err(TryRecvError::Failed(RecvError::PeerGone))
    ));
    sel.remove(tokens[1]);
    // The others are still idle and alive.
    sel.select(&mut ready, Some(Duration::from_millis(50)))
        .unwrap();
    assert!(ready.is_empty());
    let _reap: Vec<Reaper> = children.into_iter().map(|c| Reaper(Some(c))).collect();
}

/// Entry point for re-executed children; not a test by itself.
#[test]
#[ignore = "entry point for child processes of other tests"]
fn child() {
    match std::env::var("SHMRING_ROLE")
        .expect("SHMRING_ROLE")
        .as_str()
    {
        "duplex" => duplex_child(),
        "counter" => counter_child(),
        "idle" => idle_child(),
        "echo" => echo_child(),
        r => panic!("unknown role {r}"),
    }
}
