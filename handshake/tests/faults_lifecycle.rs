//! The handshake rows of docs/faults.md about the process: a signal flood during handshakes
//! (S8) and the process lifecycle (L1-L5: SIGPIPE, a peer killed at each handshake step, fork,
//! exec, a consumer killed while the ring is full). Each test names its row. Tests that count
//! fds run one at a time (`serial()`); tests that need a process of their own (signals,
//! SIGPIPE, fork, kill -9) re-run this binary's ignored `child` entry.
//!
//! The other handshake rows are in the other `faults_*.rs` files (see `faults_fds.rs`).

mod common;
mod faults_common;

use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;
use faults_common::*;
use shmpipe_handshake::wire::{self, Packet};
use shmpipe_handshake::{AcceptError, ConnectError, HandshakeError, Listener, connect};
use shmpipe_ring::{RecvError, RecvTimeoutError, SendTimeoutError};

// ---------------------------------------------------------------------------------------------
// S8: signals

#[test]
fn s8_signal_flood_without_sa_restart_during_handshakes() {
    let _g = serial();
    let out = finish_child(spawn_child("s8", &[]), Duration::from_secs(60), "s8 child");
    assert_success(&out, "s8 child");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("signals delivered"), "{text}");
}

static HITS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

extern "C" fn count_signal(_: libc::c_int) {
    HITS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

fn s8_child() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    // SAFETY: the handler only performs an atomic add, which is async-signal-safe; the
    // sigaction struct is fully initialised (zeroed, then the handler and an empty mask).
    // sa_flags = 0: no SA_RESTART, so interrupted calls in every thread fail with EINTR.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = count_signal as *const () as usize;
        libc::sigemptyset(&mut sa.sa_mask);
        sa.sa_flags = 0;
        assert_eq!(libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut()), 0);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let flood = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            // SAFETY: plain libc calls on a local, initialised signal set; blocking SIGUSR1
            // here leaves the signals to the threads doing handshakes.
            unsafe {
                let mut set: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut set);
                libc::sigaddset(&mut set, libc::SIGUSR1);
                libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            }
            while !stop.load(Ordering::Relaxed) {
                // SAFETY: kill(2) on our own pid with a signal that has a handler.
                unsafe { libc::kill(libc::getpid(), libc::SIGUSR1) };
                std::thread::sleep(Duration::from_micros(20));
            }
        })
    };
    let dir = TempDir::new();
    let options = opts().wait(shmpipe_ring::WaitStrategy::Block);
    for i in 0..20 {
        let mut listener = Listener::bind(dir.sock(), &options).unwrap();
        let path = dir.sock();
        let o = options.clone();
        let t = std::thread::spawn(move || {
            let mut c = connect(&path, &o).expect("connect under a signal flood");
            let mut buf = Vec::new();
            c.recv(&mut buf).expect("recv under a signal flood");
            buf
        });
        let mut server = listener.accept().expect("accept under a signal flood");
        server.send(format!("msg {i}").as_bytes()).unwrap();
        assert_eq!(t.join().unwrap(), format!("msg {i}").as_bytes());
    }
    stop.store(true, Ordering::Relaxed);
    flood.join().unwrap();
    let hits = HITS.load(Ordering::Relaxed);
    assert!(
        hits > 100,
        "only {hits} signals landed: the flood proved nothing"
    );
    println!("{hits} signals delivered");
}

// ---------------------------------------------------------------------------------------------
// L1-L5: process lifecycle

#[test]
fn l1_sending_to_a_closed_peer_is_an_error_not_sigpipe() {
    let _g = serial();
    let out = finish_child(spawn_child("l1", &[]), Duration::from_secs(20), "l1 child");
    assert_eq!(
        exited_by_signal(&out.status),
        None,
        "killed by a signal: {out:?}"
    );
    assert_success(&out, "l1 child");
    assert!(String::from_utf8_lossy(&out.stdout).contains("survived"));
}

fn l1_child() {
    // SAFETY: restoring the default action of SIGPIPE (Rust's runtime ignores it; a C or
    // Python host does not) before any thread of ours writes to a socket.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let dir = TempDir::new();
    let mut listener = Listener::bind(dir.sock(), &opts()).unwrap();
    {
        // A client that says HELLO and hangs up before we answer.
        let s = raw_connect(&dir.sock());
        send_raw(&s, &client_hello().encode(), &[]).unwrap();
    }
    match listener.accept_timeout(Duration::from_secs(5)) {
        Err(AcceptError::Handshake {
            source: HandshakeError::PeerClosed { .. },
            ..
        }) => {}
        r => panic!("expected PeerClosed, got {r:?}"),
    }
    println!("survived");
}

#[test]
fn l2_client_killed_at_each_handshake_step() {
    let _g = serial();
    for step in 0..=4 {
        let dir = TempDir::new();
        let before = fd_count();
        let mut listener = Listener::bind(dir.sock(), &opts()).unwrap();
        let mut child = spawn_child(
            "l2-client",
            &[
                ("PEER_PATH", dir.sock().to_str().unwrap()),
                ("STEP", &step.to_string()),
            ],
        );
        let killer = std::thread::spawn(move || {
            let line = marked_line(&mut child);
            assert_eq!(line, format!("step {step}"));
            child.kill().unwrap();
            child.wait().unwrap();
            Instant::now()
        });
        let r = listener.accept_timeout(Duration::from_secs(10));
        let done = Instant::now();
        let killed = killer.join().unwrap_or_else(|_| {
            panic!("step {step}: the killer failed (its message is above); {r:?}")
        });
        match r {
            Err(AcceptError::Handshake {
                source: HandshakeError::PeerClosed { .. },
                ..
            }) => {}
            r => panic!("step {step}: expected PeerClosed, got {r:?}"),
        }
        assert!(
            done.saturating_duration_since(killed) < Duration::from_secs(1),
            "step {step}: noticed late"
        );
        drop(listener);
        assert_fds_restored(before, &format!("client killed at step {step}"));
    }
}

/// Steps of the raw client: 0 connected, 1 sent HELLO, 2 got HELLO, 3 sent RING, 4 got RING.
fn l2_client_child() {
    let path = PathBuf::from(std::env::var("PEER_PATH").unwrap());
    let step: u32 = std::env::var("STEP").unwrap().parse().unwrap();
    let s = raw_connect(&path);
    let mut keep = Vec::new();
    if step >= 1 {
        send_raw(&s, &client_hello().encode(), &[]).unwrap();
    }
    if step >= 2 {
        let (b, _) = recv_raw(&s, Duration::from_secs(5)).unwrap();
        let Ok(Packet::Hello(theirs)) = wire::decode(&b) else {
            panic!()
        };
        let plan = wire::negotiate(&client_hello(), &theirs).unwrap();
        if step >= 3 {
            let half = Half::new(plan.ours);
            send_raw(&s, &plan.ours.encode(), &[&half.fds()]).unwrap();
            keep.push(half);
        }
        if step >= 4 {
            let (_, fds) = recv_raw(&s, Duration::from_secs(5)).unwrap();
            assert_eq!(fds.len(), 3);
        }
    }
    println!("@@ step {step}");
    std::thread::sleep(Duration::from_secs(60));
}

#[test]
fn l2_server_killed_at_each_handshake_step() {
    let _g = serial();
    for step in 0..=4 {
        let dir = TempDir::new();
        let before = fd_count();
        let mut child = spawn_child(
            "l2-server",
            &[
                ("PEER_PATH", dir.sock().to_str().unwrap()),
                ("STEP", &step.to_string()),
            ],
        );
        assert_eq!(marked_line(&mut child), "listening");
        let path = dir.sock();
        let client = std::thread::spawn(move || {
            let r = connect(&path, &opts());
            (r, Instant::now())
        });
        assert_eq!(marked_line(&mut child), format!("step {step}"));
        child.kill().unwrap();
        child.wait().unwrap();
        let killed = Instant::now();
        let (r, done) = client.join().unwrap();
        match r {
            Err(ConnectError::Handshake {
                source: HandshakeError::PeerClosed { .. },
                ..
            }) => {}
            // Killed after it sent its RING: our READY may have gone out first. Then the
            // connection exists and reports the peer gone at once: its peer watch has fired
            // already, so the receive does not wait (its 10 s timeout is a hang guard).
            Ok(mut c) if step == 4 => {
                assert!(
                    c.receiver().is_peer_gone(),
                    "step 4: the watch did not fire"
                );
                let r = c
                    .receiver()
                    .recv_timeout(&mut Vec::new(), Duration::from_secs(10));
                assert!(
                    matches!(r, Err(RecvTimeoutError::Failed(RecvError::PeerGone))),
                    "{r:?}"
                );
            }
            r => panic!("step {step}: expected PeerClosed, got {r:?}"),
        }
        assert!(
            done.saturating_duration_since(killed) < Duration::from_secs(1),
            "step {step}: noticed late"
        );
        drop(child); // its stdout and stderr pipes
        assert_fds_restored(before, &format!("server killed at step {step}"));
    }
}

/// Steps of the raw server: 0 accepted, 1 got HELLO, 2 sent HELLO, 3 got RING, 4 sent RING.
fn l2_server_child() {
    let path = PathBuf::from(std::env::var("PEER_PATH").unwrap());
    let step: u32 = std::env::var("STEP").unwrap().parse().unwrap();
    let l = raw_socket();
    rustix::net::bind(&l, &rustix::net::SocketAddrUnix::new(&path).unwrap()).unwrap();
    rustix::net::listen(&l, 8).unwrap();
    println!("@@ listening");
    let s = rustix::net::accept(&l).unwrap();
    let mut keep = Vec::new();
    if step >= 1 {
        let (b, _) = recv_raw(&s, Duration::from_secs(5)).unwrap();
        let Ok(Packet::Hello(theirs)) = wire::decode(&b) else {
            panic!()
        };
        let plan = wire::negotiate(&server_hello(), &theirs).unwrap();
        if step >= 2 {
            send_raw(&s, &server_hello().encode(), &[]).unwrap();
        }
        let mut client_space = None;
        if step >= 3 {
            let (_, fds) = recv_raw(&s, Duration::from_secs(5)).unwrap();
            let [_, _, space]: [OwnedFd; 3] = fds.try_into().expect("3 fds");
            client_space = Some(space);
        }
        if step >= 4 {
            let half = Half::new(plan.ours);
            let fds = half.fds().map(|f| f.try_clone_to_owned().unwrap());
            // Held (not dropped: dropping would close the ring) until we are killed.
            let producer = half
                .ring
                .producer(half.data, client_space.take().unwrap())
                .unwrap();
            let b: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
            send_raw(&s, &plan.ours.encode(), &[&b]).unwrap();
            keep.push((producer, fds));
        }
    }
    println!("@@ step {step}");
    std::thread::sleep(Duration::from_secs(60));
}

#[test]
fn l3_a_forked_child_cannot_use_the_connection() {
    let _g = serial();
    let out = finish_child(spawn_child("l3", &[]), Duration::from_secs(20), "l3 child");
    assert_success(&out, "l3 child");
    assert!(String::from_utf8_lossy(&out.stdout).contains("forked child refused"));
}

fn l3_child() {
    let dir = TempDir::new();
    let mut listener = Listener::bind(dir.sock(), &opts()).unwrap();
    let path = dir.sock();
    let t = std::thread::spawn(move || connect(&path, &opts()).unwrap());
    let _server = listener.accept_timeout(Duration::from_secs(10)).unwrap();
    let mut conn = t.join().unwrap();
    // SAFETY: the child only calls the ring's fork check (atomics, no allocation on the error
    // path) and _exit; the other threads of this process are idle.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        let send = matches!(conn.send(b"x"), Err(shmpipe_ring::SendError::Forked));
        let mut buf = Vec::new();
        let recv = matches!(
            conn.receiver().try_recv(&mut buf),
            Err(shmpipe_ring::TryRecvError::Failed(
                shmpipe_ring::RecvError::Forked
            ))
        );
        // SAFETY: leaving the child without running destructors or atexit handlers.
        unsafe { libc::_exit(if send && recv { 0 } else { 1 }) };
    }
    let mut status = 0;
    // SAFETY: waiting for the child we just forked.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "status {status}"
    );
    // The parent's connection is unaffected.
    conn.send(b"still mine").unwrap();
    // A forked child that drops its copy of a listener leaves the parent's socket alone.
    // SAFETY: as above; the child drops the listener (closing fds, freeing memory: glibc's
    // atfork handlers keep malloc usable) and leaves with _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        drop(listener);
        // SAFETY: leaving the child without running destructors or atexit handlers.
        unsafe { libc::_exit(0) };
    }
    // SAFETY: waiting for the child we just forked.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(
        dir.sock().exists(),
        "a forked child removed the parent's socket"
    );
    assert!(
        dir.path().join("s.lock").exists(),
        "a forked child removed the parent's lock"
    );
    drop(listener);
    assert!(!dir.sock().exists());
    println!("forked child refused");
}

#[test]
fn l4_an_exec_child_inherits_none_of_the_ipc_fds() {
    let _g = serial();
    let dir = TempDir::new();
    let mut listener = Listener::bind(dir.sock(), &opts()).unwrap();
    let path = dir.sock();
    let t = std::thread::spawn(move || connect(&path, &opts()).unwrap());
    let _server = listener.accept_timeout(Duration::from_secs(10)).unwrap();
    let _client = t.join().unwrap();
    let out = std::process::Command::new("ls")
        .args(["-l", "/proc/self/fd/"])
        .output()
        .expect("run ls");
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(listing.contains("->"), "{listing}");
    for kind in [
        "memfd",
        "eventfd",
        "eventpoll",
        "pidfd",
        "timerfd",
        "socket:",
    ] {
        assert!(
            !listing.contains(kind),
            "the child inherited a {kind}:\n{listing}"
        );
    }
}

#[test]
fn l5_consumer_killed_while_the_ring_is_full_unblocks_the_producer() {
    let _g = serial();
    let dir = TempDir::new();
    let mut listener = Listener::bind(dir.sock(), &opts()).unwrap();
    use shmpipe_testkit::blocked::{Wait, getpid, gettid, wait_until_asleep};
    let mut child = Reaper::new(spawn_child(
        "l5-consumer",
        &[("PEER_PATH", dir.sock().to_str().unwrap())],
    ));
    let conn = listener.accept_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(marked_line(child.child()), "ready");
    let (mut tx, _rx) = conn.split();
    while tx.try_send(&[7u8; 1000]).is_ok() {}
    let (tid_tx, tid_rx) = std::sync::mpsc::channel();
    // The 10 s timeout is a hang guard.
    let sender = std::thread::spawn(move || {
        tid_tx.send(gettid()).unwrap();
        let r = tx.send_timeout(&[7u8; 1000], Duration::from_secs(10));
        (r, Instant::now(), tx)
    });
    // Blocked on the full ring: asleep in `epoll_wait`, seen in /proc.
    wait_until_asleep(
        getpid(),
        tid_rx.recv().unwrap(),
        Wait::Epoll,
        Duration::from_secs(10),
        "l5: the sender",
        || !sender.is_finished(),
    );
    let killed = Instant::now();
    kill9(child.child().id());
    let (r, done, tx) = sender.join().unwrap();
    assert!(
        matches!(
            r,
            Err(SendTimeoutError::Failed(shmpipe_ring::SendError::PeerGone))
        ),
        "{r:?}"
    );
    assert!(tx.stats().sleeps >= 1, "the sender never slept");
    assert!(
        readable(tx.waiter_fd()),
        "the peer's death is not an event of the epoll set the sender sleeps in"
    );
    eprintln!(
        "l5: PeerGone {:?} after the kill",
        done.saturating_duration_since(killed)
    );
}

/// A raw client that completes the handshake and never reads.
fn l5_consumer_child() {
    let peer = Peer::hello(
        std::path::Path::new(&std::env::var("PEER_PATH").unwrap()),
        client_hello(),
    );
    let half = peer.ring();
    peer.send_ring(&half.fds());
    let _raw = peer.finish(half);
    println!("@@ ready");
    std::thread::sleep(Duration::from_secs(60));
}

// ---------------------------------------------------------------------------------------------
// Children: scenarios that need a process of their own.

/// Entry point for re-executed children (see `common::spawn_child`); not a test by itself.
#[test]
#[ignore = "entry point for child processes of other tests"]
fn child() {
    run_child(&[
        ("s8", s8_child),
        ("l1", l1_child),
        ("l2-client", l2_client_child),
        ("l2-server", l2_server_child),
        ("l3", l3_child),
        ("l5-consumer", l5_consumer_child),
    ]);
}
