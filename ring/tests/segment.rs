//! Opening a ring from fds: every check of ../shared/FAULTS.md rows M1-M4 and S10-S12, and the
//! eventfd faults E1-E3 and R8. Tests here hold one lock so /proc/self/fd counts are exact.
#![cfg(not(miri))]

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rustix::fs::{MemfdFlags, SealFlags};
use shmring_ring::layout::offsets;
use shmring_ring::{
    Config, DATA_OFFSET, RecvTimeoutError, Ring, RingFds, SetupError, TryRecvError, channel,
};

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

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
    put(offsets::MAGIC, b"SHMRING\0");
    put(offsets::VERSION, &1u32.to_le_bytes());
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

fn open(memfd: OwnedFd, data_ready: OwnedFd, space_ready: OwnedFd) -> Result<Ring, SetupError> {
    Ring::open(
        RingFds {
            memfd,
            data_ready,
            space_ready,
        },
        &cfg(),
    )
}

/// Open from these three fds, which must fail, and check that all three were closed.
fn rejected(memfd: OwnedFd, data_ready: OwnedFd, space_ready: OwnedFd) -> SetupError {
    let before = fd_count();
    let err = match open(memfd, data_ready, space_ready) {
        Ok(_) => panic!("accepted"),
        Err(e) => e,
    };
    let after = fd_count();
    assert_eq!(
        after,
        before - 3,
        "fds leaked: {before} before, {after} after"
    );
    err
}

#[test]
fn a_ring_opened_from_the_creators_fds_talks_to_the_creator() {
    let _s = serial();
    let a = Ring::create(&cfg()).unwrap();
    let dup = |fd: BorrowedFd<'_>| fd.try_clone_to_owned().unwrap();
    let [m, d, s] = a.fds();
    let b = open(dup(m), dup(d), dup(s)).unwrap();
    let mut tx = a.producer().unwrap();
    let mut rx = b.consumer().unwrap();
    assert!(
        matches!(a.consumer(), Err(SetupError::RoleTaken("consumer"))),
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
    let ring = open(good_segment(), eventfd(), eventfd()).unwrap();
    let seals = rustix::fs::fcntl_get_seals(ring.fds()[0]).unwrap();
    assert!(seals.contains(SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL));
}

#[test]
fn m1_missing_seals_are_added_when_possible_and_refused_when_not() {
    let _s = serial();
    let size = (DATA_OFFSET + CAP) as u64;
    // Unsealed but sealable: we seal it ourselves before mapping.
    let ring = open(
        segment(CAP as u64, 1024, size, SealFlags::empty()),
        eventfd(),
        eventfd(),
    )
    .unwrap();
    let seals = rustix::fs::fcntl_get_seals(ring.fds()[0]).unwrap();
    assert!(seals.contains(SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL));
    drop(ring);
    // Seals sealed without SHRINK/GROW: the peer could shrink it under us.
    let e = rejected(
        segment(CAP as u64, 1024, size, SealFlags::SEAL),
        eventfd(),
        eventfd(),
    );
    assert!(matches!(e, SetupError::Seals { .. }), "{e}");
    // A write seal would make our shared writable mapping impossible.
    let e = rejected(
        segment(CAP as u64, 1024, size, SealFlags::FUTURE_WRITE),
        eventfd(),
        eventfd(),
    );
    assert!(matches!(e, SetupError::Seals { .. }), "{e}");
}

#[test]
fn m2_the_peer_cannot_shrink_a_mapped_segment() {
    let _s = serial();
    let (mut tx, mut rx) = channel(&cfg()).unwrap();
    let ring = Ring::create(&cfg()).unwrap();
    let err = rustix::fs::ftruncate(ring.fds()[0], 0).unwrap_err();
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
        let e = rejected(segment(CAP as u64, 1024, size, seals), eventfd(), eventfd());
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
    let e = rejected(
        segment(2 * CAP as u64, 1024, size, seals),
        eventfd(),
        eventfd(),
    );
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
    let e = rejected(segment(CAP as u64, 2000, size, seals), eventfd(), eventfd());
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
        (offsets::VERSION, &2u32.to_le_bytes()[..], "version"),
        (
            offsets::DATA_OFFSET,
            &8192u32.to_le_bytes()[..],
            "data offset",
        ),
    ] {
        let fd = segment(CAP as u64, 1024, size, SealFlags::empty());
        rustix::io::pwrite(&fd, bytes, off as u64).unwrap();
        let e = rejected(fd, eventfd(), eventfd());
        assert!(
            matches!(e, SetupError::HeaderMismatch { what: w, .. } if w == what),
            "{e}"
        );
    }
    // Indices that are impossible from the start are refused when a role is claimed.
    let fd = good_segment();
    rustix::io::pwrite(&fd, &(CAP as u64 + 8).to_le_bytes(), offsets::TAIL as u64).unwrap();
    let ring = open(fd, eventfd(), eventfd()).unwrap();
    assert!(matches!(ring.consumer(), Err(SetupError::Corrupted(_))));
}

#[test]
fn s10_things_that_are_not_memfds_are_refused_as_the_segment() {
    let _s = serial();
    let (pipe_r, _pipe_w) = rustix::pipe::pipe().unwrap();
    let file = std::fs::File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(std::env::temp_dir().join(format!("shmring-s10-{}", std::process::id())))
        .unwrap();
    file.set_len((DATA_OFFSET + CAP) as u64).unwrap();
    let shm_path = format!("/dev/shm/shmring-s10-{}", std::process::id());
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
    ];
    if let Ok(shm) = shm {
        shm.set_len((DATA_OFFSET + CAP) as u64).unwrap();
        let _ = std::fs::remove_file(&shm_path);
        candidates.push(("/dev/shm file", shm.into()));
    }
    for (what, fd) in candidates {
        let e = rejected(fd, eventfd(), eventfd());
        assert!(
            matches!(e, SetupError::NotMemfd | SetupError::Seals { .. }),
            "{what}: {e}"
        );
    }
    let _ = std::fs::remove_file(
        std::env::temp_dir().join(format!("shmring-s10-{}", std::process::id())),
    );
}

#[test]
fn s10_things_that_are_not_eventfds_are_refused_as_eventfds() {
    let _s = serial();
    let (pipe_r, _w) = rustix::pipe::pipe().unwrap();
    let memfd = rustix::fs::memfd_create("x", MemfdFlags::CLOEXEC).unwrap();
    for (what, fd) in [("pipe", pipe_r), ("memfd", memfd)] {
        let e = rejected(good_segment(), fd, eventfd());
        assert!(
            matches!(
                e,
                SetupError::BadEventfd {
                    role: "data-ready",
                    ..
                }
            ),
            "{what}: {e}"
        );
    }
    let e = rejected(good_segment(), eventfd(), rustix::pipe::pipe().unwrap().0);
    assert!(
        matches!(
            e,
            SetupError::BadEventfd {
                role: "space-ready",
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn s11_the_same_eventfd_for_both_roles_is_refused() {
    let _s = serial();
    let fd = eventfd();
    let again = fd.try_clone().unwrap();
    let e = rejected(good_segment(), fd, again);
    assert!(matches!(e, SetupError::BadEventfd { .. }), "{e}");
    assert!(e.to_string().contains("same eventfd"), "{e}");
}

#[test]
fn s12_a_semaphore_eventfd_is_refused() {
    let _s = serial();
    let sem = rustix::event::eventfd(0, rustix::event::EventfdFlags::SEMAPHORE).unwrap();
    let e = rejected(good_segment(), sem, eventfd());
    assert!(e.to_string().contains("semaphore"), "{e}");
}

#[test]
fn s7_every_ring_fd_is_close_on_exec() {
    let _s = serial();
    let ring = Ring::create(&cfg()).unwrap();
    for fd in ring.fds() {
        assert!(
            rustix::io::fcntl_getfd(fd)
                .unwrap()
                .contains(rustix::io::FdFlags::CLOEXEC)
        );
    }
}

/// The peer's copy of an eventfd shares our open file description.
fn peer_copy(fd: BorrowedFd<'_>) -> OwnedFd {
    fd.try_clone_to_owned().unwrap()
}

#[test]
fn e1_a_peer_that_clears_nonblock_and_steals_wakeups_cannot_block_the_consumer() {
    let _s = serial();
    let (mut tx, mut rx) = channel(&cfg().wait(shmring_ring::WaitStrategy::Block)).unwrap();
    let data_ready = peer_copy(rx.as_fd());
    let flags = rustix::fs::fcntl_getfl(&data_ready).unwrap();
    rustix::fs::fcntl_setfl(&data_ready, flags - rustix::fs::OFlags::NONBLOCK).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let thief = {
        let stop = stop.clone();
        let fd = data_ready.try_clone().unwrap();
        std::thread::spawn(move || {
            let mut b = [0u8; 8];
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = rustix::io::read(&fd, &mut b); // blocking: steals every signal
            }
        })
    };
    // Timeouts hold although the fd is now blocking for everyone.
    let mut buf = Vec::new();
    let t = Instant::now();
    assert!(matches!(
        rx.recv_timeout(&mut buf, Duration::from_millis(50)),
        Err(RecvTimeoutError::Timeout)
    ));
    assert!(t.elapsed() < Duration::from_millis(500));
    // Stolen wake-ups delay messages by at most the re-check interval, never lose them.
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
    rustix::io::write(&data_ready, &1u64.to_ne_bytes()).unwrap(); // release the thief
    thief.join().unwrap();
    drop(tx);
}

#[test]
fn e2_a_peer_that_saturates_the_counter_does_not_block_the_producer() {
    let _s = serial();
    let (mut tx, mut rx) = channel(&cfg()).unwrap();
    let data_ready = peer_copy(rx.as_fd());
    rustix::io::write(&data_ready, &(u64::MAX - 1).to_ne_bytes()).unwrap();
    assert!(
        !rx.arm().unwrap(),
        "empty ring: the consumer announces it sleeps"
    );
    let t = Instant::now();
    tx.try_send(b"through a full counter").unwrap();
    assert!(t.elapsed() < Duration::from_secs(1));
    assert_eq!(
        tx.stats().wakeups_sent,
        1,
        "the write found the counter full and moved on"
    );
    let mut buf = Vec::new();
    rx.try_recv(&mut buf).unwrap();
    assert_eq!(buf, b"through a full counter");
}

#[test]
fn e3_a_flood_of_spurious_signals_costs_no_error_and_loses_nothing() {
    let _s = serial();
    let (mut tx, mut rx) = channel(&cfg().wait(shmring_ring::WaitStrategy::Block)).unwrap();
    let data_ready = peer_copy(rx.as_fd());
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flood = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = rustix::io::write(&data_ready, &1u64.to_ne_bytes());
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
    let signals = flood.join().unwrap();
    // Each spurious wake-up costs at most one loop turn: sleeps never exceed the signals.
    assert!(
        rx.stats().sleeps <= signals + 1,
        "{} sleeps for {signals} signals",
        rx.stats().sleeps
    );
}

#[test]
fn r8_a_signal_with_an_empty_ring_puts_the_consumer_back_to_sleep() {
    let _s = serial();
    let (_tx, mut rx) = channel(&cfg().wait(shmring_ring::WaitStrategy::Block)).unwrap();
    rustix::io::write(rx.as_fd(), &1u64.to_ne_bytes()).unwrap();
    let mut buf = Vec::new();
    assert!(matches!(
        rx.recv_timeout(&mut buf, Duration::from_millis(50)),
        Err(RecvTimeoutError::Timeout)
    ));
    assert!(
        rx.stats().sleeps >= 2,
        "woke on the stale signal, found nothing, slept again"
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
    assert!(
        readable(rx.as_fd()),
        "the producer signals an armed consumer"
    );
    rx.try_recv(&mut Vec::new()).unwrap();
    // Disarmed by the receive: the next publish does not signal.
    tx.try_send(b"y").unwrap();
    assert_eq!(tx.stats().wakeups_sent, 1);
    assert!(rx.arm().unwrap(), "a message is waiting: do not sleep");
}
