//! The facade across real processes: this binary re-executes itself as the peer (the ignored
//! `child` entry). Integrity in both directions, kill -9 on either side, many cycles, and a
//! selector that notices a killed client.

mod common;

use std::time::{Duration, Instant};

use common::*;
use shmpipe::{
    Listener, Options, RecvError, RecvTimeoutError, SendError, SendTimeoutError, TryRecvError,
    connect,
};

/// 32 MiB each way unless SHMPIPE_STREAM_BYTES says otherwise.
fn stream_bytes() -> u64 {
    std::env::var("SHMPIPE_STREAM_BYTES")
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
fn duplex(conn: shmpipe::Connection, seed: u64, peer_seed: u64, total: u64) -> (Fnv, Fnv) {
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
    let mut reaper = Reaper::new(child);
    let conn = listener.accept_timeout(Duration::from_secs(20)).unwrap();
    let (sent, received) =
        shmpipe_testkit::deadline(300, "duplex stream", move || duplex(conn, 1, 2, total));
    let child = reaper.take();
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

/// faults.md E4 across processes: the sender is killed mid-stream (once 10 000 messages
/// have arrived, not after a guess at how long that takes); every message it committed
/// arrives, intact and in order, then `PeerGone`, which only the peer watch gives. The
/// timeouts are hang guards; how fast the watch wakes a sleeper is asserted in
/// handshake/tests/faults_wakeups.rs (E4) and ring/tests/two_process.rs.
#[test]
fn kill_9_of_the_sender_mid_stream() {
    const BEFORE_KILL: u64 = 10_000;
    let _g = serial();
    let dir = TempDir::new();
    let mut listener = Listener::bind(dir.sock(), &options()).unwrap();
    let mut child = Reaper::new(spawn_child(
        "counter",
        &[("PEER_PATH", dir.sock().display().to_string())],
    ));
    let mut conn = listener.accept_timeout(Duration::from_secs(20)).unwrap();
    let mut buf = Vec::new();
    let mut next = 0u64;
    let mut killed = None;
    let err = loop {
        match conn
            .receiver()
            .recv_timeout(&mut buf, Duration::from_secs(10))
        {
            Ok(_) => {
                let n = u64::from_le_bytes(buf[..8].try_into().unwrap());
                assert_eq!(n, next, "gap or duplicate");
                assert!(
                    buf[8..].iter().all(|&b| b == n as u8),
                    "message {n} corrupted"
                );
                next += 1;
                if next == BEFORE_KILL {
                    child.child().kill().unwrap(); // SIGKILL
                    killed = Some(Instant::now());
                }
            }
            Err(e) => break e,
        }
    };
    let after = killed.expect("killed").elapsed();
    assert!(
        matches!(err, RecvTimeoutError::Failed(RecvError::PeerGone)),
        "{err}"
    );
    assert!(next >= BEFORE_KILL);
    assert!(conn.receiver().is_peer_gone());
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

/// faults.md L5 across processes: a sender blocked on a full ring (seen asleep in
/// `epoll_wait`, where the ring waits) is woken by its receiver's death: `PeerGone`, and the
/// death is an event of the epoll set it sleeps in, so the sleep in progress ends at once
/// rather than at the 100 ms re-check. The timeouts are hang guards.
#[test]
fn kill_9_of_the_receiver_while_the_sender_is_blocked() {
    let _g = serial();
    let dir = TempDir::new();
    let mut listener = Listener::bind(dir.sock(), &options()).unwrap();
    let mut child = Reaper::new(spawn_child(
        "idle",
        &[("PEER_PATH", dir.sock().display().to_string())],
    ));
    let conn = listener.accept_timeout(Duration::from_secs(20)).unwrap();
    assert_eq!(marked_line(child.child()), "ready");
    let (mut tx, _rx) = conn.split();
    while tx.try_send(&[1u8; 4000]).is_ok() {}
    let (tid_tx, tid_rx) = std::sync::mpsc::channel();
    let sender = std::thread::spawn(move || {
        tid_tx.send(gettid()).unwrap();
        let r = tx.send_timeout(&[1u8; 4000], Duration::from_secs(10));
        (r, Instant::now(), tx)
    });
    wait_until_asleep(
        getpid(),
        tid_rx.recv().unwrap(),
        Wait::Epoll,
        Duration::from_secs(10),
        "a sender on a full ring",
        || !sender.is_finished(),
    );
    child.child().kill().unwrap();
    let killed = Instant::now();
    let (r, done, tx) = sender.join().unwrap();
    assert!(
        matches!(r, Err(SendTimeoutError::Failed(SendError::PeerGone))),
        "{r:?}"
    );
    assert!(tx.stats().sleeps >= 1, "the sender never slept");
    assert!(
        readable(tx.waiter_fd()),
        "the receiver's death is not an event of the epoll set the sender sleeps in"
    );
    println!(
        "unblocked {:?} after the kill",
        done.saturating_duration_since(killed)
    );
}

/// Is `fd` readable right now (one `poll`, no wait)?
fn readable(fd: std::os::fd::BorrowedFd<'_>) -> bool {
    use rustix::event::{PollFd, PollFlags, Timespec, poll};
    let mut fds = [PollFd::from_borrowed_fd(fd, PollFlags::IN)];
    poll(&mut fds, Some(&Timespec::default())).expect("poll") > 0
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
    let server = Reaper::new(server);
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
    let mut sel = shmpipe::Selector::new().unwrap();
    let mut keep = Vec::new();
    let mut tokens = Vec::new();
    let mut children = Vec::new();
    for _ in 0..3 {
        children.push(Reaper::new(spawn_child(
            "idle",
            &[("PEER_PATH", dir.sock().display().to_string())],
        )));
        let (tx, rx) = listener
            .accept_timeout(Duration::from_secs(20))
            .unwrap()
            .split();
        keep.push(tx);
        tokens.push(sel.insert(rx).unwrap());
    }
    for c in &mut children {
        assert_eq!(marked_line(c.child()), "ready");
    }
    let mut ready = Vec::new();
    sel.select(&mut ready, Some(Duration::from_millis(50)))
        .unwrap();
    assert!(ready.is_empty());
    let mut victim = children.remove(1);
    victim.child().kill().unwrap();
    // The death itself wakes the select: it returns with the victim's token alone, not
    // empty-handed at its timeout (5 s, a hang guard).
    sel.select(&mut ready, Some(Duration::from_secs(5)))
        .unwrap();
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
    drop(victim);
    drop(children);
}

/// Entry point for re-executed children; not a test by itself.
#[test]
#[ignore = "entry point for child processes of other tests"]
fn child() {
    match std::env::var("SHMPIPE_ROLE")
        .expect("SHMPIPE_ROLE")
        .as_str()
    {
        "duplex" => duplex_child(),
        "counter" => counter_child(),
        "idle" => idle_child(),
        "echo" => echo_child(),
        r => panic!("unknown role {r}"),
    }
}
