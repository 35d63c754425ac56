//! Opening a ring from a peer's fds: rows M1-M4, S7 and S10 of docs/faults.md, the
//! waiter checks that replace S11-S12, and the wake-up faults E1-E3 and R8. Tests here hold
//! one lock so /proc/self/fd counts are exact.
#![cfg(not(miri))]

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use rustix::fs::{MemfdFlags, SealFlags};
use shmpipe_ring::layout::{self, offsets};
use shmpipe_ring::{
    Bell, Config, Consumer, DATA_OFFSET, Producer, RecvTimeoutError, Ring, SetupError,
    TryRecvError, WaitStrategy, channel,
};

use shmpipe_testkit::fds::fd_count;
use shmpipe_testkit::serial;

const CAP: usize = 4096;

fn cfg() -> Config {
    Config::new().capacity(CAP)
}

fn eventfd() -> OwnedFd {
    rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC).unwrap()
}

/// A hand-made segment: header fields as given, `size` bytes, then `seals` added.
fn segment(capacity: u64, max: u64, size: u64, seals: SealFlags) -> OwnedFd {
    let fd =
        rustix::fs::memfd_create("test", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING).unwrap();
    let put = |off: usize, bytes: &[u8]| {
        rustix::io::pwrite(&fd, bytes, off as u64).unwrap();
    };
    put(offsets::MAGIC, b"SHMPIPE\0");
    put(offsets::VERSION, &layout::VERSION.to_le_bytes());
    put(offsets::DATA_OFFSET, &(DATA_OFFSET as u32).to_le_bytes());
    put(offsets::CAPACITY, &capacity.to_le_bytes());
    put(offsets::MAX_MESSAGE, &max.to_le_bytes());
    rustix::fs::ftruncate(&fd, size).unwrap(); // after the header, which would extend it
    if !seals.is_empty() {
        rustix::fs::fcntl_add_seals(&fd, seals).unwrap();
    }
    fd
}

fn good_segment() -> OwnedFd {
    segment(
        CAP as u64,
        (CAP / 4) as u64,
        (DATA_OFFSET + CAP) as u64,
        SealFlags::SHRINK | SealFlags::GROW,
    )
}

/// Open `memfd`, which must fail, and check that it was closed.
fn rejected(memfd: OwnedFd) -> SetupError {
    let before = fd_count();
    let err = match Ring::open(memfd, &cfg()) {
        Ok(_) => panic!("accepted"),
        Err(e) => e,
    };
    let after = fd_count();
    assert_eq!(
        after,
        before - 1,
        "fd leaked: {before} before, {after} after"
    );
    err
}

/// A waiter fd for tests that do not care who rings.
fn some_waiter() -> OwnedFd {
    Bell::new()
        .unwrap()
        .waiter_fd()
        .try_clone_to_owned()
        .unwrap()
}

/// Both ends of `ring` in this process through the cross-process API: each claims with its own
/// bell and the other's waiter, as two processes would after exchanging them.
fn claim_both(ring: &Ring) -> (Producer, Consumer) {
    let (data, space) = (Bell::new().unwrap(), Bell::new().unwrap());
    let dup = |b: &Bell| b.waiter_fd().try_clone_to_owned().unwrap();
    let (data_waiter, space_waiter) = (dup(&data), dup(&space));
    (
        ring.producer(data, space_waiter).unwrap(),
        ring.consumer(space, data_waiter).unwrap(),
    )
}

#[test]
fn a_ring_opened_from_the_creators_memfd_talks_to_the_creator() {
    let _s = serial();
    let a = Ring::create(&cfg()).unwrap();
    let b = Ring::open(a.memfd().try_clone_to_owned().unwrap(), &cfg()).unwrap();
    let (data, space) = (Bell::new().unwrap(), Bell::new().unwrap());
    let dup = |b: &Bell| b.waiter_fd().try_clone_to_owned().unwrap();
    let (data_waiter, space_waiter) = (dup(&data), dup(&space));
    let mut tx = a.producer(data, space_waiter).unwrap();
    let mut rx = b.consumer(space, data_waiter).unwrap();
    assert!(
        matches!(
            a.consumer(Bell::new().unwrap(), some_waiter()),
            Err(SetupError::RoleTaken("consumer"))
        ),
        "claims are shared"
    );
    tx.try_send(b"across mappings").unwrap();
    let mut buf = Vec::new();
    rx.try_recv(&mut buf).unwrap();
    assert_eq!(buf, b"across mappings");
}

#[test]
fn a_hand_made_segment_with_the_right_seals_opens() {
    let _s = serial();
    let ring = Ring::open(good_segment(), &cfg()).unwrap();
    let seals = rustix::fs::fcntl_get_seals(ring.memfd()).unwrap();
    assert!(seals.contains(SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL));
    let (mut tx, mut rx) = claim_both(&ring);
    tx.try_send(b"hand-made").unwrap();
    rx.try_recv(&mut Vec::new()).unwrap();
}

#[test]
fn m1_missing_seals_are_added_when_possible_and_refused_when_not() {
    let _s = serial();
    let size = (DATA_OFFSET + CAP) as u64;
    // Unsealed but sealable: we seal it ourselves before mapping.
    let ring = Ring::open(segment(CAP as u64, 1024, size, SealFlags::empty()), &cfg()).unwrap();
    let seals = rustix::fs::fcntl_get_seals(ring.memfd()).unwrap();
    assert!(seals.contains(SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL));
    drop(ring);
    // Seals sealed without SHRINK/GROW: the peer could shrink it under us.
    let e = rejected(segment(CAP as u64, 1024, size, SealFlags::SEAL));
    assert!(matches!(e, SetupError::Seals { .. }), "{e}");
    // A write seal would make our shared writable mapping impossible.
    let e = rejected(segment(CAP as u64, 1024, size, SealFlags::FUTURE_WRITE));
    assert!(matches!(e, SetupError::Seals { .. }), "{e}");
}

#[test]
fn m2_the_peer_cannot_shrink_a_mapped_segment() {
    let _s = serial();
    let ring = Ring::create(&cfg()).unwrap();
    let (mut tx, mut rx) = ring.pair().unwrap();
    let err = rustix::fs::ftruncate(ring.memfd(), 0).unwrap_err();
    assert_eq!(err, rustix::io::Errno::PERM);
    // And the ring in use keeps working (no SIGBUS).
    tx.try_send(b"ok").unwrap();
    rx.try_recv(&mut Vec::new()).unwrap();
}

#[test]
fn m3_a_segment_of_the_wrong_size_is_refused() {
    let _s = serial();
    let seals = SealFlags::SHRINK | SealFlags::GROW;
    for size in [
        0,
        4096,
        (DATA_OFFSET + CAP) as u64 - 8,
        (DATA_OFFSET + CAP) as u64 + 4096,
        1 << 31,
    ] {
        let e = rejected(segment(CAP as u64, 1024, size, seals));
        assert!(
            matches!(e, SetupError::SizeMismatch { actual, .. } if actual == size),
            "{size}: {e}"
        );
    }
}

#[test]
fn m4_a_header_that_disagrees_with_the_negotiation_is_refused() {
    let _s = serial();
    let size = (DATA_OFFSET + CAP) as u64;
    let seals = SealFlags::SHRINK | SealFlags::GROW;
    let e = rejected(segment(2 * CAP as u64, 1024, size, seals));
    assert!(
        matches!(
            e,
            SetupError::HeaderMismatch {
                what: "capacity",
                ..
            }
        ),
        "{e}"
    );
    let e = rejected(segment(CAP as u64, 2000, size, seals));
    assert!(
        matches!(
            e,
            SetupError::HeaderMismatch {
                what: "max message",
                ..
            }
        ),
        "{e}"
    );
    for (off, bytes, what) in [
        (offsets::MAGIC, &b"SHMRINX\0"[..], "magic"),
        (offsets::VERSION, &1u32.to_le_bytes()[..], "version"),
        (
            offsets::DATA_OFFSET,
            &8192u32.to_le_bytes()[..],
            "data offset",
        ),
    ] {
        let fd = segment(CAP as u64, 1024, size, SealFlags::empty());
        rustix::io::pwrite(&fd, bytes, off as u64).unwrap();
        let e = rejected(fd);
        assert!(
            matches!(e, SetupError::HeaderMismatch { what: w, .. } if w == what),
            "{e}"
        );
    }
    // Indices that are impossible from the start are refused at open.
    let fd = good_segment();
    rustix::io::pwrite(&fd, &(CAP as u64 + 8).to_le_bytes(), offsets::TAIL as u64).unwrap();
    assert!(matches!(rejected(fd), SetupError::Corrupted(_)));
}

#[test]
fn s10_things_that_are_not_memfds_are_refused_as_the_segment() {
    let _s = serial();
    let (pipe_r, _pipe_w) = rustix::pipe::pipe().unwrap();
    let tmp = std::env::temp_dir().join(format!("shmpipe-s10-{}", std::process::id()));
    let file = std::fs::File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .unwrap();
    file.set_len((DATA_OFFSET + CAP) as u64).unwrap();
    let _ = std::fs::remove_file(&tmp);
    let shm_path = format!("/dev/shm/shmpipe-s10-{}", std::process::id());
    let shm = std::fs::File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&shm_path);
    let (sock, _peer) = rustix::net::socketpair(
        rustix::net::AddressFamily::UNIX,
        rustix::net::SocketType::STREAM,
        rustix::net::SocketFlags::CLOEXEC,
        None,
    )
    .unwrap();
    let mut candidates: Vec<(&str, OwnedFd)> = vec![
        ("eventfd", eventfd()),
        ("pipe", pipe_r),
        ("regular file", file.into()),
        ("socket", sock),
        ("epoll fd", some_waiter()),
    ];
    if let Ok(shm) = shm {
        shm.set_len((DATA_OFFSET + CAP) as u64).unwrap();
        let _ = std::fs::remove_file(&shm_path);
        candidates.push(("/dev/shm file", shm.into()));
    }
    for (what, fd) in candidates {
        let e = rejected(fd);
        assert!(
            matches!(e, SetupError::NotMemfd | SetupError::Seals { .. }),
            "{what}: {e}"
        );
    }
}

#[test]
fn a_waiter_that_is_not_an_epoll_fd_is_refused_and_the_role_stays_free() {
    let _s = serial();
    let ring = Ring::create(&cfg()).unwrap();
    let (pipe_r, _w) = rustix::pipe::pipe().unwrap();
    let memfd = rustix::fs::memfd_create("x", MemfdFlags::CLOEXEC).unwrap();
    let sem = rustix::event::eventfd(0, rustix::event::EventfdFlags::SEMAPHORE).unwrap();
    for (what, fd) in [
        ("eventfd", eventfd()),
        ("semaphore eventfd", sem),
        ("pipe", pipe_r),
        ("memfd", memfd),
    ] {
        let before = fd_count();
        let e = ring.consumer(Bell::new().unwrap(), fd).unwrap_err();
        assert!(matches!(e, SetupError::BadWaiter { .. }), "{what}: {e}");
        assert_eq!(
            fd_count(),
            before - 1,
            "{what}: the refused fd must be closed"
        );
    }
    // Nothing was claimed by the refusals.
    ring.consumer(Bell::new().unwrap(), some_waiter()).unwrap();
}

#[test]
fn s7_every_fd_we_make_is_close_on_exec() {
    let _s = serial();
    let ring = Ring::create(&cfg()).unwrap();
    let bell = Bell::new().unwrap();
    for fd in [ring.memfd(), bell.waiter_fd()] {
        assert!(
            rustix::io::fcntl_getfd(fd)
                .unwrap()
                .contains(rustix::io::FdFlags::CLOEXEC)
        );
    }
}

/// A hostile peer's bell, made by hand: its own eventfd, and an epoll fd watching it that it
/// hands to us as its waiter. It can ring it as often as it likes, or harvest it itself.
struct HostileBell {
    eventfd: OwnedFd,
    waiter: OwnedFd,
}

impl HostileBell {
    fn new() -> HostileBell {
        use rustix::event::epoll;
        let eventfd = eventfd();
        let waiter = epoll::create(epoll::CreateFlags::CLOEXEC).unwrap();
        epoll::add(
            &waiter,
            &eventfd,
            epoll::EventData::new_u64(0),
            epoll::EventFlags::IN | epoll::EventFlags::ET,
        )
        .unwrap();
        HostileBell { eventfd, waiter }
    }

    fn ring(&self) {
        rustix::io::write(&self.eventfd, &1u64.to_ne_bytes()).unwrap();
    }
}

/// A producer whose peer is `hostile` (it gave us its waiter), and our consumer.
fn with_hostile_producer(wait: WaitStrategy, hostile: &HostileBell) -> (Producer, Consumer) {
    let ring = Ring::create(&cfg().wait(wait)).unwrap();
    let (data, space) = (Bell::new().unwrap(), Bell::new().unwrap());
    let tx = ring
        .producer(data, hostile.waiter.try_clone().unwrap())
        .unwrap();
    // Our consumer sleeps on the hostile side's waiter for data.
    let rx = ring
        .consumer(space, hostile.waiter.try_clone().unwrap())
        .unwrap();
    (tx, rx)
}

#[test]
fn e1_a_peer_that_harvests_our_wakeups_on_its_own_waiter_only_delays_us() {
    // The peer that gave us its waiter still holds it: it can make it blocking and harvest
    // every edge before we see it. Our timeouts must hold and messages still arrive.
    let _s = serial();
    let ring = Ring::create(&cfg().wait(WaitStrategy::Block)).unwrap();
    let (data, space) = (Bell::new().unwrap(), Bell::new().unwrap());
    let thief_copy = data.waiter_fd().try_clone_to_owned().unwrap();
    let flags = rustix::fs::fcntl_getfl(&thief_copy).unwrap();
    rustix::fs::fcntl_setfl(&thief_copy, flags - rustix::fs::OFlags::NONBLOCK).unwrap();
    let data_waiter = data.waiter_fd().try_clone_to_owned().unwrap();
    let space_waiter = space.waiter_fd().try_clone_to_owned().unwrap();
    let mut tx = ring.producer(data, space_waiter).unwrap();
    let mut rx = ring.consumer(space, data_waiter).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let thief = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            use rustix::event::epoll;
            let mut ev = [epoll::Event {
                flags: epoll::EventFlags::empty(),
                data: epoll::EventData::new_u64(0),
            }; 4];
            let slice = rustix::event::Timespec {
                tv_sec: 0,
                tv_nsec: 10_000_000,
            };
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = epoll::wait(&thief_copy, &mut ev, Some(&slice)); // steals every edge
            }
        })
    };
    let mut buf = Vec::new();
    let t = Instant::now();
    assert!(matches!(
        rx.recv_timeout(&mut buf, Duration::from_millis(50)),
        Err(RecvTimeoutError::Timeout)
    ));
    assert!(t.elapsed() < Duration::from_millis(500));
    let writer = std::thread::spawn(move || {
        for i in 0..5u8 {
            std::thread::sleep(Duration::from_millis(20));
            tx.try_send(&[i]).unwrap();
        }
        tx
    });
    for i in 0..5u8 {
        rx.recv_timeout(&mut buf, Duration::from_secs(5)).unwrap();
        assert_eq!(buf, [i]);
    }
    let tx = writer.join().unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    thief.join().unwrap();
    drop(tx);
}

#[test]
fn e2_nothing_a_peer_does_to_our_waiter_can_block_our_rings() {
    // A peer holding the eventfd we ring could clear O_NONBLOCK on it and saturate its
    // counter, and our next ring would block; but the peer only ever has our epoll fd, so the
    // attack has nothing to hold. Here it makes that fd blocking and never harvests it, while
    // we ring 100,000 times.
    let _s = serial();
    let ring = Ring::create(&cfg()).unwrap();
    let (data, space) = (Bell::new().unwrap(), Bell::new().unwrap());
    let peer_copy = data.waiter_fd().try_clone_to_owned().unwrap();
    let flags = rustix::fs::fcntl_getfl(&peer_copy).unwrap();
    rustix::fs::fcntl_setfl(&peer_copy, flags - rustix::fs::OFlags::NONBLOCK).unwrap();
    let data_waiter = data.waiter_fd().try_clone_to_owned().unwrap();
    let space_waiter = space.waiter_fd().try_clone_to_owned().unwrap();
    let mut tx = ring.producer(data, space_waiter).unwrap();
    let mut rx = ring.consumer(space, data_waiter).unwrap();
    let t = Instant::now();
    for _ in 0..100_000 {
        assert!(
            !rx.arm().unwrap(),
            "empty: the consumer announces it sleeps"
        );
        tx.try_send(b"x").unwrap(); // rings: the consumer said it sleeps
        rx.try_recv(&mut Vec::new()).unwrap();
    }
    assert_eq!(tx.stats().wakeups_sent, 100_000);
    assert!(t.elapsed() < Duration::from_secs(60));
    drop(peer_copy);
}

#[test]
fn e3_a_flood_of_spurious_rings_costs_no_error_and_loses_nothing() {
    let _s = serial();
    let hostile = std::sync::Arc::new(HostileBell::new());
    let (mut tx, mut rx) = with_hostile_producer(WaitStrategy::Block, &hostile);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flood = {
        let (stop, hostile) = (stop.clone(), hostile.clone());
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                hostile.ring();
                n += 1;
            }
            n
        })
    };
    let mut buf = Vec::new();
    let t = Instant::now();
    assert!(matches!(
        rx.recv_timeout(&mut buf, Duration::from_millis(100)),
        Err(RecvTimeoutError::Timeout)
    ));
    assert!(t.elapsed() >= Duration::from_millis(100));
    for i in 0..100u8 {
        tx.try_send(&[i]).unwrap();
    }
    for i in 0..100u8 {
        rx.recv_timeout(&mut buf, Duration::from_secs(5)).unwrap();
        assert_eq!(buf, [i]);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let rings = flood.join().unwrap();
    // Each spurious wake-up costs at most one loop turn: sleeps never exceed the rings.
    assert!(
        rx.stats().sleeps <= rings + 1,
        "{} sleeps for {rings} rings",
        rx.stats().sleeps
    );
}

#[test]
fn r8_a_ring_with_an_empty_ring_buffer_puts_the_consumer_back_to_sleep() {
    let _s = serial();
    let hostile = HostileBell::new();
    let (_tx, mut rx) = with_hostile_producer(WaitStrategy::Block, &hostile);
    hostile.ring();
    let mut buf = Vec::new();
    assert!(matches!(
        rx.recv_timeout(&mut buf, Duration::from_millis(50)),
        Err(RecvTimeoutError::Timeout)
    ));
    assert!(
        rx.stats().sleeps >= 2,
        "woke on the stale ring, found nothing, slept again"
    );
    assert!(matches!(rx.try_recv(&mut buf), Err(TryRecvError::Empty)));
}

#[test]
fn arm_reports_readiness_for_an_external_event_loop() {
    let _s = serial();
    let (mut tx, mut rx) = channel(&cfg()).unwrap();
    assert!(!rx.arm().unwrap());
    let readable = |fd: BorrowedFd<'_>| {
        let mut p = [rustix::event::PollFd::from_borrowed_fd(
            fd,
            rustix::event::PollFlags::IN,
        )];
        rustix::event::poll(&mut p, Some(&rustix::event::Timespec::default())).unwrap() == 1
    };
    assert!(!readable(rx.as_fd()));
    tx.try_send(b"x").unwrap();
    assert!(readable(rx.as_fd()), "the producer rings an armed consumer");
    rx.try_recv(&mut Vec::new()).unwrap();
    // Disarmed by the receive: the next publish does not ring.
    tx.try_send(b"y").unwrap();
    assert_eq!(tx.stats().wakeups_sent, 1);
    assert!(rx.arm().unwrap(), "a message is waiting: do not sleep");
    rx.try_recv(&mut Vec::new()).unwrap();
    // Arming again harvests the old ring: a level-triggered loop does not spin on it.
    assert!(!rx.arm().unwrap());
    assert!(!readable(rx.as_fd()), "arm() reset the waiter");
}

#[test]
fn a_closed_producer_leaves_no_waiting_flag_behind() {
    let _s = serial();
    let ring = Ring::create(&cfg()).unwrap();
    let (mut tx, rx) = ring.pair().unwrap();
    while tx.try_send(&[0; 16]).is_ok() {}
    assert!(
        !tx.arm(16).unwrap(),
        "full: the producer announces it sleeps"
    );
    drop(tx);
    let mut word = [0u8; 4];
    rustix::io::pread(ring.memfd(), &mut word, offsets::PRODUCER as u64).unwrap();
    assert_eq!(
        u32::from_le_bytes(word) & 0x100,
        0,
        "a dropped producer must not stay 'asleep'"
    );
    drop(rx);
}

#[test]
fn close_with_an_unrepresentable_timeout_waits_instead_of_returning_at_once() {
    let _s = serial();
    let (mut tx, mut rx) = channel(&cfg()).unwrap();
    tx.try_send(b"read me").unwrap();
    let reader = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        rx.try_recv(&mut Vec::new()).unwrap();
        rx
    });
    tx.close(Duration::MAX).unwrap();
    drop(reader.join().unwrap());
}

#[test]
fn draining_zero_messages_is_not_empty() {
    let _s = serial();
    let (mut tx, mut rx) = channel(&cfg()).unwrap();
    tx.try_send(b"waiting").unwrap();
    assert_eq!(rx.try_drain(0, |_| panic!("asked for none")).unwrap(), 0);
    assert_eq!(rx.drain(0, |_| panic!("asked for none")).unwrap(), 0);
    assert_eq!(rx.try_drain(1, |m| assert_eq!(m, b"waiting")).unwrap(), 1);
}
