//! What the fault suites (`faults_*.rs`) share beyond `common/`: a listener that must fail a
//! rogue client's handshake with the fd count restored ([`server_fails`]), the HELLO exchange
//! of a raw server ([`raw_server_hello`]), a look at an fd and a kill for the tests that kill a
//! peer ([`readable`], [`kill9`]), and the dispatch of a binary's ignored `child` entry to the
//! scenario a re-executed child is to play ([`run_child`]).

#![allow(dead_code, unreachable_pub)]

use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::time::Duration;

use crate::common::*;
use shmpipe_handshake::wire::{self, Packet};
use shmpipe_handshake::{AcceptError, HandshakeError, Listener, Options};

/// Run `peer` (in a thread) against a listener with `options`; the handshake must fail. Returns
/// the listener's error and what the peer returned, after checking that the process holds
/// exactly the fds it held before.
pub fn server_fails<T: Send + 'static>(
    options: Options,
    peer: impl FnOnce(PathBuf) -> T + Send + 'static,
) -> (HandshakeError, T) {
    let dir = TempDir::new();
    let before = fd_count();
    if std::env::var("SHMPIPE_FD_DEBUG").is_ok() {
        for fd in fd_set() {
            eprintln!(
                "before: {fd} -> {:?}",
                std::fs::read_link(format!("/proc/self/fd/{fd}"))
            );
        }
    }
    let mut listener = Listener::bind(dir.sock(), &options).expect("bind");
    let path = dir.sock();
    let t = std::thread::spawn(move || peer(path));
    let r = listener.accept_timeout(Duration::from_secs(10));
    let out = t.join().expect("peer thread");
    drop(listener);
    let err = match r {
        Err(AcceptError::Handshake { source, peer }) => {
            assert!(
                peer.is_some(),
                "credentials are known for an accepted socket"
            );
            source
        }
        Ok(c) => panic!("handshake unexpectedly succeeded: {c:?}"),
        Err(e) => panic!("unexpected accept error: {e}"),
    };
    assert_fds_restored(before, &format!("after `{err}`"));
    (err, out)
}

pub fn raw_server_hello(s: &OwnedFd) -> wire::Plan {
    let (b, _) = recv_raw(s, Duration::from_secs(5)).expect("client HELLO");
    let Ok(Packet::Hello(theirs)) = wire::decode(&b) else {
        panic!("expected HELLO")
    };
    send_raw(s, &server_hello().encode(), &[]).unwrap();
    wire::negotiate(&server_hello(), &theirs).unwrap()
}

/// Is `fd` readable right now (one `poll`, no wait)?
pub fn readable(fd: BorrowedFd<'_>) -> bool {
    use rustix::event::{PollFd, PollFlags, Timespec, poll};
    let mut fds = [PollFd::from_borrowed_fd(fd, PollFlags::IN)];
    poll(&mut fds, Some(&Timespec::default())).expect("poll") > 0
}

/// SIGKILL our child `pid` (it stays unreaped: its `Reaper` reaps it).
pub fn kill9(pid: u32) {
    let pid = rustix::process::Pid::from_raw(pid as i32).expect("a child's pid");
    rustix::process::kill_process(pid, rustix::process::Signal::KILL).expect("kill");
}

/// Play the scenario that `SHMPIPE_SCENARIO` names (set by `common::spawn_child`), one of this
/// binary's `scenarios`: what each suite's ignored `child` entry runs.
pub fn run_child(scenarios: &[(&str, fn())]) {
    let scenario = std::env::var("SHMPIPE_SCENARIO").expect("SHMPIPE_SCENARIO");
    match scenarios.iter().find(|(name, _)| *name == scenario) {
        Some((_, run)) => run(),
        None => panic!("unknown scenario {scenario}"),
    }
}
