//! The handshake rows of docs/faults.md about the fds a peer sends: how many arrive and how
//! (S1-S7), the wrong kind of fd in a slot (S10-S12) and a bad memfd (M1-M4), each provoked by
//! the rustix-written peer in `common/`. Each test names its row. Tests that count fds run one
//! at a time (`serial()`); S6 needs a process of its own (an fd limit) and re-runs this
//! binary's ignored `child` entry.
//!
//! The other handshake rows: `faults_socket.rs` (S9, S13, S14), `faults_wakeups.rs` (S11's
//! waiters that only delay, E1-E4), `faults_lifecycle.rs` (S8, L1-L5) and `faults_client.rs`
//! (the client's checks of the server); what they share is in `faults_common/`.

mod common;
mod faults_common;

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Duration;

use common::*;
use faults_common::*;
use rustix::fs::SealFlags;
use shmpipe_handshake::wire::{self, Packet, RejectCode, RingDesc, WireError};
use shmpipe_handshake::{AcceptError, HandshakeError, Incompatibility, Listener, connect};
use shmpipe_ring::{RecvTimeoutError, SetupError, layout};

/// A peer that completes HELLO, then sends `fds` with a RING packet; returns the reply.
fn ring_with(
    fds: impl FnOnce(&Peer) -> Vec<OwnedFd> + Send + 'static,
) -> (HandshakeError, Option<Packet>) {
    server_fails(opts(), move |path| {
        let p = Peer::hello(&path, client_hello());
        let fds = fds(&p);
        let b: Vec<BorrowedFd<'_>> = fds.iter().map(|f| f.as_fd()).collect();
        p.send_ring(&b);
        reply(&p.sock)
    })
}

/// A RING's fds that pass every check: a good memfd and two epoll instances as waiters.
fn valid_fds(p: &Peer) -> Vec<OwnedFd> {
    vec![good_memfd(p.plan.ours, sealed()), epoll_fd(), epoll_fd()]
}

// ---------------------------------------------------------------------------------------------
// S1-S7: what arrives with SCM_RIGHTS

#[test]
fn s1_more_fds_than_our_buffer_holds_is_truncation_and_all_are_closed() {
    let _g = serial();
    let (e, reply) = ring_with(|_| (0..20).map(|_| eventfd(false)).collect());
    // Room for exactly 8 (protocol.md §2.1), never all 20.
    assert!(
        matches!(e, HandshakeError::FdsTruncated { got: 8, .. }),
        "{e}"
    );
    assert!(e.to_string().contains("MSG_CTRUNC"), "{e}");
    assert_eq!(reject_code(&reply), Some(RejectCode::PROTOCOL.0));
}

#[test]
fn s1_eight_fds_arrive_and_a_ninth_truncates() {
    let _g = serial();
    // protocol.md §2.1: room for exactly 8, wherever the receive buffer sits.
    let (e, _) = ring_with(|_| (0..8).map(|_| eventfd(false)).collect());
    assert!(
        matches!(
            e,
            HandshakeError::FdCount {
                expected: 3,
                got: 8,
                ..
            }
        ),
        "{e}"
    );
    let (e, _) = ring_with(|_| (0..9).map(|_| eventfd(false)).collect());
    assert!(
        matches!(e, HandshakeError::FdsTruncated { got: 8, .. }),
        "{e}"
    );
}

#[test]
fn s2_four_fds_where_three_are_expected() {
    let _g = serial();
    let (e, _) = ring_with(|p| {
        let mut v = valid_fds(p);
        v.push(eventfd(false));
        v
    });
    assert!(
        matches!(
            e,
            HandshakeError::FdCount {
                expected: 3,
                got: 4,
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn s3_two_fds_where_three_are_expected() {
    let _g = serial();
    let (e, reply) = ring_with(|p| {
        let mut v = valid_fds(p);
        v.pop();
        v
    });
    assert!(
        matches!(
            e,
            HandshakeError::FdCount {
                expected: 3,
                got: 2,
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(reject_code(&reply), Some(RejectCode::PROTOCOL.0));
}

#[test]
fn s3_no_fds_with_ring() {
    let _g = serial();
    let (e, _) = ring_with(|_| Vec::new());
    assert!(
        matches!(
            e,
            HandshakeError::FdCount {
                expected: 3,
                got: 0,
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn s4_two_scm_rights_messages_are_merged_and_counted() {
    let _g = serial();
    let (e, _) = server_fails(opts(), |path| {
        let p = Peer::hello(&path, client_hello());
        let a = valid_fds(&p);
        let b = valid_fds(&p);
        let a: Vec<_> = a.iter().map(|f| f.as_fd()).collect();
        let b: Vec<_> = b.iter().map(|f| f.as_fd()).collect();
        p.send_ring_as(p.plan.ours, &[&a, &b]);
        reply(&p.sock)
    });
    // The kernel delivers one SCM_RIGHTS message holding all six.
    assert!(
        matches!(
            e,
            HandshakeError::FdCount {
                expected: 3,
                got: 6,
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn s4_fds_with_a_packet_that_carries_none() {
    let _g = serial();
    let (e, reply) = server_fails(opts(), |path| {
        let s = raw_connect(&path);
        let extra = eventfd(false);
        send_raw(&s, &client_hello().encode(), &[&[extra.as_fd()]]).unwrap();
        reply(&s)
    });
    assert!(
        matches!(
            e,
            HandshakeError::FdCount {
                expected: 0,
                got: 1,
                waiting_for: "HELLO"
            }
        ),
        "{e}"
    );
    assert_eq!(reject_code(&reply), Some(RejectCode::PROTOCOL.0));
}

#[test]
fn s4_fds_with_ready_are_refused() {
    let _g = serial();
    let (e, _) = server_fails(opts(), |path| {
        let p = Peer::hello(&path, client_hello());
        let half = p.ring();
        p.send_ring(&half.fds());
        let (bytes, _) = recv_raw(&p.sock, Duration::from_secs(5)).expect("server RING");
        assert!(matches!(wire::decode(&bytes), Ok(Packet::Ring(_))));
        let extra = eventfd(false);
        send_raw(&p.sock, &wire::encode_ready(), &[&[extra.as_fd()]]).unwrap();
        reply(&p.sock)
    });
    assert!(
        matches!(
            e,
            HandshakeError::FdCount {
                expected: 0,
                got: 1,
                waiting_for: "READY"
            }
        ),
        "{e}"
    );
}

/// The only other control message an unprivileged peer can attach is SCM_CREDENTIALS, and the
/// kernel does not deliver it to a socket without SO_PASSCRED (we never set it): the
/// handshake is unaffected. (rustix's receive API also skips any type it does not know, and
/// closes fds it finds in what it skips.)
#[test]
fn s4_credentials_message_is_not_delivered() {
    use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
    let _g = serial();
    let dir = TempDir::new();
    let mut listener = Listener::bind(dir.sock(), &opts()).unwrap();
    let path = dir.sock();
    let t = std::thread::spawn(move || {
        let p = Peer::hello(&path, client_hello());
        let half = p.ring();
        let fds = half.fds();
        let mut space = vec![std::mem::MaybeUninit::uninit(); 1024];
        let mut control = SendAncillaryBuffer::new(&mut space);
        assert!(control.push(SendAncillaryMessage::ScmRights(&fds)));
        let me = rustix::net::UCred {
            pid: rustix::process::getpid(),
            uid: rustix::process::getuid(),
            gid: rustix::process::getgid(),
        };
        assert!(control.push(SendAncillaryMessage::ScmCredentials(me)));
        rustix::net::sendmsg(
            &p.sock,
            &[std::io::IoSlice::new(&p.plan.ours.encode())],
            &mut control,
            SendFlags::NOSIGNAL,
        )
        .unwrap();
        p.finish(half)
    });
    let conn = listener.accept_timeout(Duration::from_secs(10));
    let _peer = t.join().unwrap();
    conn.expect("handshake with a credentials message");
}

#[test]
fn s5_stream_sockets_cannot_connect_and_do_not_disturb_the_listener() {
    let _g = serial();
    let dir = TempDir::new();
    let mut listener = Listener::bind(dir.sock(), &opts()).unwrap();
    let s = rustix::net::socket_with(
        rustix::net::AddressFamily::UNIX,
        rustix::net::SocketType::STREAM,
        rustix::net::SocketFlags::CLOEXEC,
        None,
    )
    .unwrap();
    let addr = rustix::net::SocketAddrUnix::new(dir.sock()).unwrap();
    assert_eq!(
        rustix::net::connect(&s, &addr),
        Err(rustix::io::Errno::PROTOTYPE)
    );
    let path = dir.sock();
    let t = std::thread::spawn(move || connect(&path, &opts()));
    listener.accept_timeout(Duration::from_secs(10)).unwrap();
    t.join().unwrap().unwrap();
}

#[test]
fn s5_zero_byte_packet_with_fds() {
    let _g = serial();
    let (e, _) = server_fails(opts(), |path| {
        let p = Peer::hello(&path, client_hello());
        let fds = valid_fds(&p);
        let b: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
        send_raw(&p.sock, &[], &[&b]).unwrap();
        reply(&p.sock)
    });
    assert!(
        matches!(
            e,
            HandshakeError::Wire {
                source: WireError::Short(0),
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn s6_fd_limit_at_recvmsg_is_truncation_without_leak() {
    let _g = serial();
    let out = finish_child(spawn_child("s6", &[]), Duration::from_secs(30), "s6 child");
    assert_success(&out, "s6 child");
}

fn s6_child() {
    let dir = TempDir::new();
    let before = fd_count();
    let mut listener = Listener::bind(dir.sock(), &opts()).unwrap();
    let path = dir.sock();
    let t = std::thread::spawn(move || {
        let p = Peer::hello(&path, client_hello());
        let half = p.ring();
        // The server has created its ring by now (it sent its HELLO after that). Leave room
        // for exactly one more fd in this process, then send three.
        let probe = eventfd(false);
        let next = rustix::fd::AsRawFd::as_raw_fd(&probe) as u64;
        drop(probe);
        let old = rustix::process::getrlimit(rustix::process::Resource::Nofile);
        rustix::process::setrlimit(
            rustix::process::Resource::Nofile,
            rustix::process::Rlimit {
                current: Some(next + 1),
                maximum: old.maximum,
            },
        )
        .unwrap();
        p.send_ring(&half.fds());
        let reply = recv_raw(&p.sock, Duration::from_secs(5)).map(|(b, _)| wire::decode(&b));
        (old, reply)
    });
    let r = listener.accept_timeout(Duration::from_secs(10));
    let (old, reply) = t.join().unwrap();
    rustix::process::setrlimit(rustix::process::Resource::Nofile, old).unwrap();
    match r {
        Err(AcceptError::Handshake {
            source: HandshakeError::FdsTruncated { got, .. },
            ..
        }) => assert_eq!(got, 1, "one slot was free"),
        r => panic!("expected FdsTruncated, got {r:?}"),
    }
    assert!(
        matches!(reply, Some(Ok(Packet::Reject { .. }))),
        "{reply:?}"
    );
    drop(listener);
    assert_fds_restored(before, "s6");
}

#[test]
fn s7_every_fd_of_a_connection_is_close_on_exec() {
    let _g = serial();
    let dir = TempDir::new();
    let before = fd_set();
    let mut listener = Listener::bind(dir.sock(), &opts()).unwrap();
    let path = dir.sock();
    let t = std::thread::spawn(move || connect(&path, &opts()).unwrap());
    let server = listener.accept_timeout(Duration::from_secs(10)).unwrap();
    let client = t.join().unwrap();
    let new: Vec<i32> = fd_set().difference(&before).copied().collect();
    // Listener: socket, lock, epoll, timer. Each side: socket, pidfd, watch epoll, the memfds
    // of both rings, its two bells (an eventfd and an epoll fd each) and the peer's two
    // waiters. (The fd that listed the directory before may be reused by one.)
    assert!(
        new.len() >= 3 + 2 * 11,
        "only {} new fds: {new:?}",
        new.len()
    );
    let mut checked = 0;
    for fd in new {
        let link = std::fs::read_link(format!("/proc/self/fd/{fd}"));
        let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}"));
        let (Ok(link), Ok(info)) = (link, info) else {
            continue; // the fd that listed the directory, closed since
        };
        let flags = info
            .lines()
            .find_map(|l| l.strip_prefix("flags:"))
            .map(|v| u32::from_str_radix(v.trim(), 8).unwrap())
            .unwrap();
        assert!(
            flags & 0o2000000 != 0,
            "fd {fd} ({}) lacks O_CLOEXEC: flags {flags:o}",
            link.display()
        );
        checked += 1;
    }
    assert!(checked >= 3 + 2 * 11, "checked {checked}");
    drop((server, client));
}

// ---------------------------------------------------------------------------------------------
// S10-S12: the wrong kind of fd

// Since the bells, a RING carries a memfd and two epoll fds, and no eventfd is ever accepted:
// every other kind of fd in any slot is refused, and every fd that came with it is closed.

fn memfd_slot(fd: impl FnOnce(&Peer) -> OwnedFd + Send + 'static) -> SetupError {
    let _g = serial();
    let (e, reply) = ring_with(move |p| vec![fd(p), epoll_fd(), epoll_fd()]);
    assert_eq!(reject_code(&reply), Some(RejectCode::BAD_RING.0));
    match e {
        HandshakeError::BadRing(s) => s,
        e => panic!("expected BadRing, got {e}"),
    }
}

#[test]
fn s10_an_eventfd_as_the_memfd() {
    let e = memfd_slot(|_| eventfd(false));
    assert!(matches!(e, SetupError::NotMemfd), "{e}");
}

#[test]
fn s10_an_epoll_fd_as_the_memfd() {
    let e = memfd_slot(|_| epoll_fd());
    assert!(matches!(e, SetupError::NotMemfd), "{e}");
}

#[test]
fn s10_a_pipe_as_the_memfd() {
    let e = memfd_slot(|_| rustix::pipe::pipe().unwrap().0);
    assert!(matches!(e, SetupError::NotMemfd), "{e}");
}

#[test]
fn s10_a_socket_as_the_memfd() {
    let e = memfd_slot(|_| raw_socket());
    assert!(matches!(e, SetupError::NotMemfd), "{e}");
}

#[test]
fn s10_a_regular_file_as_the_memfd() {
    let e = memfd_slot(|p| {
        // On the build directory's file system (a disk, not tmpfs).
        let path = std::env::current_dir()
            .unwrap()
            .join(format!(".s10-{}", std::process::id()));
        let f = std::fs::File::create_new(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        f.set_len(layout::DATA_OFFSET as u64 + p.plan.ours.capacity)
            .unwrap();
        f.into()
    });
    // F_GET_SEALS is EINVAL on a disk file; a tmpfs file would show only F_SEAL_SEAL.
    assert!(
        matches!(e, SetupError::NotMemfd | SetupError::Seals { .. }),
        "{e}"
    );
}

#[test]
fn s10_an_unlinked_dev_shm_file_as_the_memfd() {
    if !std::path::Path::new("/dev/shm").is_dir() {
        skip("s10: no /dev/shm to make a shmem file in");
        return;
    }
    let e = memfd_slot(|p| {
        let path = format!("/dev/shm/shmpipe-s10-{}", std::process::id());
        let f = std::fs::File::create_new(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        let fd: OwnedFd = f.into();
        let desc = p.plan.ours;
        let good = good_memfd(desc, SealFlags::empty());
        // Same size and header bytes as a real ring.
        rustix::fs::ftruncate(&fd, layout::DATA_OFFSET as u64 + desc.capacity).unwrap();
        let mut header = [0u8; 32];
        rustix::io::pread(&good, &mut header, 0).unwrap();
        rustix::io::pwrite(&fd, &header, 0).unwrap();
        fd
    });
    // A shmem file that is not a memfd reports F_SEAL_SEAL alone: nothing can be added.
    assert!(
        matches!(e, SetupError::Seals { seals } if seals == SealFlags::SEAL.bits()),
        "{e}"
    );
}

/// A RING whose waiter `slot` (1: data, 2: space) is `fd`, everything else valid: refused
/// with `BadWaiter`, every fd closed (`server_fails` checks the count). Returns the reason.
fn waiter_slot(slot: usize, fd: impl FnOnce(&Peer) -> OwnedFd + Send + 'static) -> String {
    let _g = serial();
    let (e, reply) = ring_with(move |p| {
        let mut v = valid_fds(p);
        v[slot] = fd(p);
        v
    });
    assert_eq!(
        reject_code(&reply),
        Some(RejectCode::BAD_RING.0),
        "slot {slot}"
    );
    match e {
        HandshakeError::BadRing(SetupError::BadWaiter { why }) => why,
        e => panic!("slot {slot}: expected BadWaiter, got {e}"),
    }
}

#[test]
fn s10_a_pipe_as_a_waiter() {
    for slot in [1, 2] {
        let why = waiter_slot(slot, |_| rustix::pipe::pipe().unwrap().0);
        assert!(why.contains("pipe:"), "slot {slot}: {why}");
    }
}

#[test]
fn s10_a_memfd_as_a_waiter() {
    for slot in [1, 2] {
        let why = waiter_slot(slot, |p| good_memfd(p.plan.ours, sealed()));
        assert!(why.contains("memfd:"), "slot {slot}: {why}");
    }
}

#[test]
fn s10_a_socket_as_a_waiter() {
    for slot in [1, 2] {
        let why = waiter_slot(slot, |_| raw_socket());
        assert!(why.contains("socket:"), "slot {slot}: {why}");
    }
}

/// S11 before the bells was "the same eventfd for both roles"; no eventfd is accepted now.
#[test]
fn s11_an_eventfd_in_either_waiter_slot_is_refused() {
    for slot in [1, 2] {
        let why = waiter_slot(slot, |_| eventfd(false));
        assert!(why.contains("[eventfd]"), "slot {slot}: {why}");
    }
}

/// S12 before the bells was "a semaphore eventfd"; refused like any eventfd now.
#[test]
fn s12_a_semaphore_eventfd_in_either_waiter_slot_is_refused() {
    for slot in [1, 2] {
        let why = waiter_slot(slot, |_| eventfd(true));
        assert!(why.contains("[eventfd]"), "slot {slot}: {why}");
    }
}

/// The bell of the ringing side is an eventfd behind an epoll fd; a peer that sends its
/// eventfd instead of the epoll fd (an old client, or one that wants us to write it) is refused.
#[test]
fn s12_the_bells_eventfd_itself_is_refused() {
    let _g = serial();
    let (e, _) = ring_with(|p| {
        let v = valid_fds(p);
        let [m, _, s] = v.try_into().unwrap();
        let ev = eventfd(false);
        rustix::event::epoll::add(
            &s,
            &ev,
            rustix::event::epoll::EventData::new_u64(0),
            rustix::event::epoll::EventFlags::IN | rustix::event::epoll::EventFlags::ET,
        )
        .unwrap();
        vec![m, ev, s]
    });
    assert!(
        matches!(&e, HandshakeError::BadRing(SetupError::BadWaiter { why }) if why.contains("[eventfd]")),
        "{e}"
    );
}

// ---------------------------------------------------------------------------------------------
// M1-M4: the memfd

#[test]
fn m1_memfd_whose_seals_cannot_be_added() {
    // Without MFD_ALLOW_SEALING the kernel seals the seals at birth.
    let e = memfd_slot(|p| {
        let d = p.plan.ours;
        memfd_ring(
            layout::DATA_OFFSET as u64 + d.capacity,
            d.capacity,
            d.max_message,
            false,
            SealFlags::empty(),
        )
    });
    assert!(matches!(e, SetupError::Seals { .. }), "{e}");
    let e = memfd_slot(|p| good_memfd(p.plan.ours, SealFlags::SEAL));
    assert!(matches!(e, SetupError::Seals { .. }), "{e}");
}

#[test]
fn m1_memfd_with_a_write_seal() {
    let e = memfd_slot(|p| good_memfd(p.plan.ours, SealFlags::FUTURE_WRITE | sealed()));
    assert!(matches!(e, SetupError::Seals { .. }), "{e}");
}

#[test]
fn m2_unsealed_memfd_is_sealed_by_us_and_cannot_shrink() {
    let _g = serial();
    let dir = TempDir::new();
    let mut listener = Listener::bind(dir.sock(), &opts()).unwrap();
    let path = dir.sock();
    let t = std::thread::spawn(move || {
        let p = Peer::hello(&path, client_hello());
        let memfd = good_memfd(p.plan.ours, SealFlags::empty());
        let (d, s) = (epoll_fd(), epoll_fd());
        p.send_ring(&[memfd.as_fd(), d.as_fd(), s.as_fd()]);
        let consumer = p.finish_consumer();
        (p, memfd, d, s, consumer)
    });
    let mut conn = listener
        .accept_timeout(Duration::from_secs(10))
        .expect("accepted");
    let (_p, memfd, _d, _s, _consumer) = t.join().unwrap();
    let seals = rustix::fs::fcntl_get_seals(&memfd).unwrap();
    assert!(seals.contains(sealed()), "we sealed it: {seals:?}");
    assert_eq!(
        rustix::fs::ftruncate(&memfd, 0),
        Err(rustix::io::Errno::PERM)
    );
    assert_eq!(
        rustix::fs::fcntl_add_seals(&memfd, SealFlags::FUTURE_WRITE),
        Err(rustix::io::Errno::PERM)
    );
    // Our mapping is intact: reading the ring is fine (and empty).
    assert!(matches!(
        conn.receiver()
            .recv_timeout(&mut Vec::new(), Duration::from_millis(10)),
        Err(RecvTimeoutError::Timeout)
    ));
}

#[test]
fn m3_memfd_size_differs_from_the_negotiated_one() {
    for delta in [-4096i64, 4096] {
        let e = memfd_slot(move |p| {
            let d = p.plan.ours;
            let size = (layout::DATA_OFFSET as i64 + d.capacity as i64 + delta) as u64;
            memfd_ring(size, d.capacity, d.max_message, true, sealed())
        });
        assert!(matches!(e, SetupError::SizeMismatch { .. }), "{e}");
    }
}

#[test]
fn m3_a_ring_above_our_limit_is_refused_before_anything_is_created() {
    let _g = serial();
    let (e, reply) = server_fails(opts().max_ring(1 << 16), |path| {
        let s = raw_connect(&path);
        let h = wire::Hello {
            send_capacity: 1 << 20,
            ..client_hello()
        };
        send_raw(&s, &h.encode(), &[]).unwrap();
        reply(&s)
    });
    assert!(
        matches!(
            &e,
            HandshakeError::Incompatible(Incompatibility::RingTooLarge {
                capacity: 1048576,
                limit: 65536,
                ..
            })
        ),
        "{e}"
    );
    assert_eq!(reject_code(&reply), Some(RejectCode::INCOMPATIBLE.0));
}

#[test]
fn m4_header_capacity_differs_from_the_negotiated_one() {
    let e = memfd_slot(|p| {
        let d = p.plan.ours;
        memfd_ring(
            layout::DATA_OFFSET as u64 + d.capacity,
            d.capacity / 2,
            d.max_message,
            true,
            sealed(),
        )
    });
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
    let e = memfd_slot(|p| {
        let d = p.plan.ours;
        memfd_ring(
            layout::DATA_OFFSET as u64 + d.capacity,
            d.capacity,
            d.max_message + 8,
            true,
            sealed(),
        )
    });
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
}

#[test]
fn m4_ring_packet_differs_from_the_negotiated_ring() {
    let _g = serial();
    let (e, reply) = server_fails(opts(), |path| {
        let p = Peer::hello(&path, client_hello());
        let lie = RingDesc {
            capacity: p.plan.ours.capacity * 2,
            ..p.plan.ours
        };
        let fds = valid_fds(&p);
        let b: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
        p.send_ring_as(lie, &[&b]);
        reply(&p.sock)
    });
    assert!(
        matches!(
            &e,
            HandshakeError::Incompatible(Incompatibility::Ring { .. })
        ),
        "{e}"
    );
    assert_eq!(reject_code(&reply), Some(RejectCode::INCOMPATIBLE.0));
}

// ---------------------------------------------------------------------------------------------
// Children: scenarios that need a process of their own.

/// Entry point for re-executed children (see `common::spawn_child`); not a test by itself.
#[test]
#[ignore = "entry point for child processes of other tests"]
fn child() {
    run_child(&[("s6", s6_child)]);
}
