//! Two processes over one ring. The test binary re-runs itself as the child (see
//! common::child); the `child_*` tests do nothing unless started that way.
#![cfg(not(miri))]

mod common;

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::child;
use common::{check, fill, size_for};
use shmpipe_ring::{
    Bell, Config, RecvError, RecvTimeoutError, Ring, SendError, TryRecvError, TrySendError,
    WaitStrategy, channel,
};

const STREAM_BYTES: u64 = 1 << 30;
const MAX: usize = 64 * 1024;

fn config(wait: &str) -> Config {
    let wait = match wait {
        "spin" => WaitStrategy::Spin,
        "block" => WaitStrategy::Block,
        _ => WaitStrategy::default(),
    };
    Config::new().capacity(1 << 20).max_message(MAX).wait(wait)
}

/// In a child: open the ring the parent sent, send back our bell's waiter, and return the ring
/// with our bell and the parent's waiter, ready to claim a role.
fn open_from_parent(wait: &str) -> (Ring, Bell, OwnedFd) {
    let [memfd, parent_waiter]: [OwnedFd; 2] = child::receive_fds().try_into().expect("two fds");
    let ring = Ring::open(memfd, &config(wait)).unwrap();
    let bell = Bell::new().unwrap();
    child::send_to_parent(&[bell.waiter_fd()]);
    (ring, bell, parent_waiter)
}

/// In the parent: create a ring and a bell, start `test` with the memfd and our waiter, and
/// return the ring, our bell and the child's waiter.
fn spawn_with_ring(test: &str, wait: &str) -> (Ring, Bell, OwnedFd, child::Child) {
    let ring = Ring::create(&config(wait)).unwrap();
    let bell = Bell::new().unwrap();
    let child = child::spawn(test, wait, &[ring.memfd(), bell.waiter_fd()]);
    let [child_waiter]: [OwnedFd; 1] = child.receive_fds().try_into().expect("one fd");
    (ring, bell, child_waiter, child)
}

fn parent_pidfd() -> Option<Arc<OwnedFd>> {
    let ppid = rustix::process::getppid().unwrap();
    Some(Arc::new(
        rustix::process::pidfd_open(ppid, rustix::process::PidfdFlags::empty()).unwrap(),
    ))
}

/// The stream's message sizes: stop after the message that reaches STREAM_BYTES.
fn stream_len(seq: u64) -> usize {
    size_for(seq, MAX)
}

#[test]
fn child_stream_consumer() {
    let Some(wait) = child::role() else { return };
    let (ring, bell, parent_waiter) = open_from_parent(&wait);
    let mut rx = ring.consumer(bell, parent_waiter).unwrap();
    rx.watch_peer(parent_pidfd()).unwrap();
    let (mut buf, mut scratch) = (Vec::new(), Vec::new());
    let (mut seq, mut bytes) = (0u64, 0u64);
    loop {
        match rx.recv_timeout(&mut buf, Duration::from_secs(60)) {
            Ok(len) => {
                assert_eq!(len, stream_len(seq), "message {seq} has the wrong length");
                check(seq, &buf, &mut scratch);
                seq += 1;
                bytes += len as u64;
            }
            Err(RecvTimeoutError::Failed(RecvError::Closed)) => break,
            Err(e) => panic!("after {seq} messages: {e}"),
        }
    }
    assert!(bytes >= STREAM_BYTES && bytes - (stream_len(seq - 1) as u64) < STREAM_BYTES);
    let s = rx.stats();
    println!(
        "consumer: {seq} messages, {bytes} bytes, {} releases, {} sleeps",
        s.batches, s.sleeps
    );
}

fn stream_gib(wait: &str) {
    let (ring, bell, child_waiter, child) = spawn_with_ring("child_stream_consumer", wait);
    let mut tx = ring.producer(bell, child_waiter).unwrap();
    tx.watch_peer(Some(Arc::new(child.pidfd()))).unwrap();
    let mut msg = Vec::new();
    let (mut seq, mut bytes) = (0u64, 0u64);
    while bytes < STREAM_BYTES {
        let len = stream_len(seq);
        fill(seq, len, &mut msg);
        tx.send_timeout(&msg, Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("message {seq}: {e}"));
        bytes += len as u64;
        seq += 1;
    }
    let stats = tx.stats();
    // Ok means the consumer released every byte: it read all of it.
    tx.close(Duration::from_secs(60)).unwrap();
    assert!(child.wait(60).success(), "the consumer found a bad message");
    assert_eq!(stats.messages, seq);
}

#[test]
fn a_child_process_receives_a_gib_intact_spinning() {
    stream_gib("spin");
}

#[test]
fn a_child_process_receives_a_gib_intact_blocking() {
    stream_gib("block");
}

/// Child: produce 1000 messages, say so, then wait to be killed.
#[test]
fn child_producer_then_hang() {
    let Some(wait) = child::role() else { return };
    let (ring, bell, parent_waiter) = open_from_parent(&wait);
    let mut tx = ring.producer(bell, parent_waiter).unwrap();
    let mut msg = Vec::new();
    for seq in 0..1000 {
        fill(seq, size_for(seq, 512), &mut msg);
        tx.send_timeout(&msg, Duration::from_secs(30)).unwrap();
    }
    println!("sent");
    std::thread::sleep(Duration::from_secs(60));
}

#[test]
fn a_killed_producer_leaves_a_complete_prefix_then_peer_gone() {
    let (ring, bell, child_waiter, mut child) =
        spawn_with_ring("child_producer_then_hang", "block");
    let mut rx = ring.consumer(bell, child_waiter).unwrap();
    rx.watch_peer(Some(Arc::new(child.pidfd()))).unwrap();
    child::expect_line(&mut child, "sent");
    let (mut buf, mut scratch) = (Vec::new(), Vec::new());
    for seq in 0..10 {
        rx.recv_timeout(&mut buf, Duration::from_secs(10)).unwrap();
        check(seq, &buf, &mut scratch);
    }
    child.proc.kill().unwrap();
    child.proc.wait().unwrap();
    // Everything it committed is still delivered, in order, once; then PeerGone.
    for seq in 10..1000 {
        rx.recv_timeout(&mut buf, Duration::from_secs(10)).unwrap();
        check(seq, &buf, &mut scratch);
    }
    match rx.recv_timeout(&mut buf, Duration::from_secs(10)) {
        Err(RecvTimeoutError::Failed(RecvError::PeerGone)) => {}
        other => panic!("expected PeerGone, got {other:?}"),
    }
}

/// Bit 8 of a state word: its end announced that it may sleep (docs/protocol.md §1.3).
const WAITING: u32 = 1 << 8;

/// The state word at `offset` (`offsets::PRODUCER` or `offsets::CONSUMER`) of the ring
/// behind `memfd`, read as the peer process would see it.
fn state_word(memfd: &OwnedFd, offset: usize) -> u32 {
    let mut b = [0u8; 4];
    let n = rustix::io::pread(memfd, &mut b, offset as u64).unwrap();
    assert_eq!(n, 4);
    u32::from_le_bytes(b)
}

/// Is `fd` readable right now (one `poll`, no wait)?
fn readable(fd: BorrowedFd<'_>) -> bool {
    use rustix::event::{PollFd, PollFlags, Timespec, poll};
    let mut fds = [PollFd::from_borrowed_fd(fd, PollFlags::IN)];
    poll(&mut fds, Some(&Timespec::default())).unwrap() > 0
}

/// SIGKILL the child from another thread; returns when it was killed. With `asleep`
/// (`memfd` and the offset of our end's state word), first wait until our end has announced
/// that it sleeps (`WAITING`), so that the kill lands while we sleep; without it (a spinning
/// end never announces), kill at once. The wait for the announcement is a hang guard: 10 s.
fn kill_when_asleep(
    child: &child::Child,
    asleep: Option<(OwnedFd, usize)>,
) -> std::thread::JoinHandle<Instant> {
    let pid = rustix::process::Pid::from_child(&child.proc);
    std::thread::spawn(move || {
        if let Some((memfd, offset)) = asleep {
            let end = Instant::now() + Duration::from_secs(10);
            while state_word(&memfd, offset) & WAITING == 0 {
                assert!(
                    Instant::now() < end,
                    "our end never announced that it sleeps"
                );
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        let at = Instant::now();
        rustix::process::kill_process(pid, rustix::process::Signal::KILL).unwrap();
        at
    })
}

/// faults.md E4: "woken with `PeerGone` within 100 ms". What makes that hold is asserted,
/// not the wall clock of this shared machine: the consumer's peer is killed while it sleeps
/// (its `WAITING` announcement is seen first); nothing is pending in the epoll set it sleeps
/// in before the kill, and the death makes that set readable (the pidfd is in it,
/// level-triggered), so the `epoll_wait` in progress returns at once rather than at the
/// 100 ms re-check; the answer is `PeerGone`, which only the peer watch gives. A spinning
/// consumer never sleeps: its spin loop polls the watch. The 10 s timeout is a hang guard.
#[test]
fn a_sleeping_consumer_wakes_within_100ms_of_its_producer_being_killed() {
    for wait in ["block", "default", "spin"] {
        let (ring, bell, child_waiter, mut child) =
            spawn_with_ring("child_producer_then_hang", wait);
        let memfd = ring.memfd().try_clone_to_owned().unwrap();
        let mut rx = ring.consumer(bell, child_waiter).unwrap();
        rx.watch_peer(Some(Arc::new(child.pidfd()))).unwrap();
        child::expect_line(&mut child, "sent");
        let mut buf = Vec::new();
        for _ in 0..1000 {
            rx.recv_timeout(&mut buf, Duration::from_secs(10)).unwrap();
        }
        // `arm` harvests the producer's old wake-ups; the `try_recv` withdraws the
        // announcement. The producer lives: nothing can wake the consumer now.
        assert!(!rx.arm().unwrap(), "{wait}: all 1000 were received");
        assert!(matches!(rx.try_recv(&mut buf), Err(TryRecvError::Empty)));
        assert!(
            !readable(rx.as_fd()),
            "{wait}: the consumer's epoll set is readable before the kill"
        );
        let sleeps = rx.stats().sleeps;
        let spins = wait == "spin";
        let asleep = (!spins).then_some((memfd, shmpipe_ring::layout::offsets::CONSUMER));
        let killer = kill_when_asleep(&child, asleep);
        let r = rx.recv_timeout(&mut buf, Duration::from_secs(10));
        let woke = Instant::now();
        let killed = killer
            .join()
            .unwrap_or_else(|_| panic!("{wait}: the killer failed (its message is above); {r:?}"));
        assert!(
            matches!(r, Err(RecvTimeoutError::Failed(RecvError::PeerGone))),
            "{wait}: {r:?}"
        );
        let slept = rx.stats().sleeps - sleeps;
        if spins {
            assert_eq!(slept, 0, "{wait}: a spinning consumer slept");
        } else {
            assert!(slept >= 1, "{wait}: the consumer never slept");
            assert!(
                readable(rx.as_fd()),
                "{wait}: the death is not an event of the epoll set the consumer sleeps in: \
                 only the 100 ms re-check would wake it"
            );
        }
        eprintln!("{wait}: PeerGone {:?} after the kill", woke - killed);
    }
}

/// Child: open as consumer and never read.
#[test]
fn child_idle_consumer() {
    let Some(wait) = child::role() else { return };
    let (ring, bell, parent_waiter) = open_from_parent(&wait);
    let _rx = ring.consumer(bell, parent_waiter).unwrap();
    println!("ready");
    std::thread::sleep(Duration::from_secs(60));
}

/// faults.md L5: a producer blocked on a full ring unblocks with an error when its consumer
/// dies. As for E4 above, the cause is asserted: killed while asleep (`WAITING` seen), the
/// death makes the epoll set it sleeps in readable, the answer is `PeerGone`. The 10 s
/// timeout is a hang guard.
#[test]
fn a_producer_blocked_on_a_full_ring_wakes_when_its_consumer_is_killed() {
    for wait in ["block", "default", "spin"] {
        let (ring, bell, child_waiter, mut child) = spawn_with_ring("child_idle_consumer", wait);
        let memfd = ring.memfd().try_clone_to_owned().unwrap();
        let mut tx = ring.producer(bell, child_waiter).unwrap();
        tx.watch_peer(Some(Arc::new(child.pidfd()))).unwrap();
        child::expect_line(&mut child, "ready");
        while tx.try_send(&[0; 4096]).is_ok() {}
        // The consumer never rang; `arm` harvests nothing and the `try_send` withdraws it.
        assert!(!tx.arm(4096).unwrap(), "{wait}: the ring is full");
        assert!(tx.try_send(&[0; 4096]).is_err());
        assert!(
            !readable(tx.as_fd()),
            "{wait}: the producer's epoll set is readable before the kill"
        );
        let sleeps = tx.stats().sleeps;
        let spins = wait == "spin";
        let asleep = (!spins).then_some((memfd, shmpipe_ring::layout::offsets::PRODUCER));
        let killer = kill_when_asleep(&child, asleep);
        let r = tx.send_timeout(&[0; 4096], Duration::from_secs(10));
        let woke = Instant::now();
        let killed = killer
            .join()
            .unwrap_or_else(|_| panic!("{wait}: the killer failed (its message is above); {r:?}"));
        assert!(
            matches!(
                r,
                Err(shmpipe_ring::SendTimeoutError::Failed(SendError::PeerGone))
            ),
            "{wait}: {r:?}"
        );
        let slept = tx.stats().sleeps - sleeps;
        if spins {
            assert_eq!(slept, 0, "{wait}: a spinning producer slept");
        } else {
            assert!(slept >= 1, "{wait}: the producer never slept");
            assert!(
                readable(tx.as_fd()),
                "{wait}: the death is not an event of the epoll set the producer sleeps in"
            );
        }
        eprintln!("{wait}: PeerGone {:?} after the kill", woke - killed);
    }
}

/// Child: reserve, write the payload, commit nothing, say so, wait to be killed.
#[test]
fn child_dies_mid_write() {
    let Some(wait) = child::role() else { return };
    let (ring, bell, parent_waiter) = open_from_parent(&wait);
    let mut tx = ring.producer(bell, parent_waiter).unwrap();
    tx.try_send(b"committed").unwrap();
    let mut g = tx.try_reserve(100).unwrap();
    g.copy_from_slice(&[0xEE; 100]);
    println!("written");
    std::thread::sleep(Duration::from_secs(60));
    g.commit().unwrap();
}

#[test]
fn a_record_written_but_not_committed_by_a_killed_producer_is_never_delivered() {
    let (ring, bell, child_waiter, mut child) = spawn_with_ring("child_dies_mid_write", "block");
    let mut rx = ring.consumer(bell, child_waiter).unwrap();
    rx.watch_peer(Some(Arc::new(child.pidfd()))).unwrap();
    child::expect_line(&mut child, "written");
    child.proc.kill().unwrap();
    child.proc.wait().unwrap();
    let mut buf = Vec::new();
    assert_eq!(
        rx.recv_timeout(&mut buf, Duration::from_secs(10)).unwrap(),
        9
    );
    assert_eq!(buf, b"committed");
    assert!(matches!(
        rx.recv_timeout(&mut buf, Duration::from_secs(10)),
        Err(RecvTimeoutError::Failed(RecvError::PeerGone))
    ));
}

#[test]
fn a_forked_child_cannot_use_the_parents_handles() {
    let (mut tx, mut rx) = channel(&Config::new().capacity(4096)).unwrap();
    tx.try_send(b"before fork").unwrap();
    // SAFETY: the child only checks two error results (no allocation, no locks held by other
    // threads), drops the handles (which must not touch the unmapped segment) and `_exit`s.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let mut buf = Vec::new();
        let refused = matches!(
            tx.try_send(b"x"),
            Err(TrySendError::Failed(SendError::Forked))
        ) && matches!(
            rx.try_recv(&mut buf),
            Err(TryRecvError::Failed(RecvError::Forked))
        );
        drop((tx, rx));
        // SAFETY: `_exit` ends the child without running the parent's atexit handlers.
        unsafe { libc::_exit(if refused { 0 } else { 1 }) };
    }
    let mut status = 0;
    // SAFETY: `pid` is our child; `status` is a valid out-pointer.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "child status {status:#x}"
    );
    // The parent's handles still work.
    let mut buf = Vec::new();
    rx.try_recv(&mut buf).unwrap();
    assert_eq!(buf, b"before fork");
    tx.try_send(b"after fork").unwrap();
    rx.try_recv(&mut buf).unwrap();
    assert_eq!(buf, b"after fork");
}
