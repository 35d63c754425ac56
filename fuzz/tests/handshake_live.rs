//! Suite 3, "Handshake bytes", its live half: arbitrary HELLO, RING and READY packets, and the
//! fds that travel with them (counts from none to a truncating flood; memfds sealed, unsealed,
//! unsealable, of the wrong size or header, with a taken role or impossible indices; epoll fds,
//! eventfds, pipes, sockets, disk and tmpfs files, /dev/null; the same fd twice), sent over
//! real sockets by a rogue client (rustix, in a thread) against a real [`Listener`], and by a
//! rogue server against a real [`connect`].
//!
//! The expected answer is decided independently, from docs/protocol.md §2, by
//! `shmpipe_fuzz::handshake_model` (the negotiation of §2.4 and the order of checks of §2.6):
//!
//! * each case ends in a working connection that carries a message each way (only when
//!   everything the rogue sent was valid), or in the specific [`HandshakeError`] for the first
//!   fault the rogue injected, with the REJECT code of §2.3 sent back and the socket closed.
//!   The listener then still serves an honest client (faults.md S9), and every fd a connection
//!   holds is close-on-exec (S7);
//! * no fd is lost: the set of this process's open fds (/proc/self/fd) is the same after each
//!   case as before it (S1-S4, S10, M1, M3: "all closed"). Every test of this file holds
//!   [`LOCK`] for its whole run, so no other test's fds show up in the count.
//!
//! The pure half (`wire::decode`, `wire::negotiate`) is `handshake.rs`.
//!
//! The short setting (CI) runs a few hundred cases per property; `SHMPIPE_FUZZ_CASES=N` runs N
//! (`--nocapture` prints how the cases ended). Shrunk failures are kept in
//! `proptest-regressions/handshake.txt` (shared with the pure half) and replayed first.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use rustix::event::{PollFd, PollFlags, Timespec, poll};
use rustix::fs::{MemfdFlags, Mode, OFlags, SealFlags};
use rustix::io::Errno;
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, SocketAddrUnix, SocketFlags, SocketType,
};
use shmpipe_fuzz::deadline;
use shmpipe_fuzz::handshake_gen::{LOCK, mutation, packet_like, pick_max_message, property};
use shmpipe_fuzz::handshake_model::{
    ALL_KINDS, Act, Cmsg, Emit, Fault, FdKind, NO_PLAN, ONE_MESSAGE, Other, Outcome, RingFault,
    Script, Step, check_fault, expect, reject_code_for, script,
};
use shmpipe_fuzz::process::TempDir;
use shmpipe_handshake::wire::{self, Hello, Packet, RingDesc, Role, WireError};
use shmpipe_handshake::{
    AcceptError, ConnectError, Connection, HandshakeError, Listener, Options, Selector, connect,
};
use shmpipe_ring::layout::{self, DATA_OFFSET, offsets};
use shmpipe_ring::{Bell, Config, Consumer, Producer, Ring};
use shmpipe_testkit::fds::{describe as describe_fds, fd_set as open_fds};

// ---------------------------------------------------------------------------------------------
// Counting fds

fn describe(fds: &BTreeSet<i32>) -> String {
    describe_fds(fds, ", ")
}

/// Run `f` (given the fds open before it) and check that afterwards exactly the same fds are
/// open: what it opened is closed, and it closed nothing it did not own.
fn fds_unchanged(what: &str, f: impl FnOnce(&BTreeSet<i32>)) {
    let before = open_fds();
    f(&before);
    // Everything is dropped and every thread joined: nothing should be closing late. A short
    // grace period costs nothing when all is well.
    let until = Instant::now() + Duration::from_millis(500);
    loop {
        let after = open_fds();
        if after == before {
            return;
        }
        if Instant::now() >= until {
            let leaked: BTreeSet<i32> = after.difference(&before).copied().collect();
            let lost: BTreeSet<i32> = before.difference(&after).copied().collect();
            panic!(
                "{what}: {} fds open after the case, {} before; leaked: [{}]; closed but not \
                 ours: {lost:?}",
                after.len(),
                before.len(),
                describe(&leaked)
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// faults.md S7: every fd opened since `before` (ours, the rogue's and all the connection
/// received) is close-on-exec.
fn assert_cloexec_since(before: &BTreeSet<i32>) {
    const O_CLOEXEC: u32 = 0o2_000_000;
    for fd in open_fds().difference(before) {
        let Ok(info) = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")) else {
            continue; // the directory handle that listed it, closed since
        };
        let flags = info
            .lines()
            .find_map(|l| l.strip_prefix("flags:"))
            .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
            .expect("flags in fdinfo");
        assert!(
            flags & O_CLOEXEC != 0,
            "fd {} is not close-on-exec (flags {flags:o})",
            describe(&BTreeSet::from([*fd]))
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Fds a rogue peer sends

fn any_kind() -> impl Strategy<Value = FdKind> {
    prop::sample::select(ALL_KINDS)
}

/// A ring memfd for `desc` as a correct peer makes it (`DATA_OFFSET + capacity` bytes, the
/// header of docs/protocol.md §1.1, sealed), changed as `kind` says.
fn memfd(kind: FdKind, desc: RingDesc) -> OwnedFd {
    let sealing = kind != FdKind::UnsealableMemfd;
    let mut flags = MemfdFlags::CLOEXEC;
    if sealing {
        flags |= MemfdFlags::ALLOW_SEALING;
    }
    let fd = rustix::fs::memfd_create("rogue", flags).expect("memfd_create");
    let size = DATA_OFFSET as u64 + desc.capacity;
    let size = match kind {
        FdKind::ShortMemfd => size - 4096,
        FdKind::LongMemfd => size + 4096,
        _ => size,
    };
    rustix::fs::ftruncate(&fd, size).expect("ftruncate");
    let header_capacity = match kind {
        FdKind::WrongHeaderMemfd => desc.capacity / 2,
        _ => desc.capacity,
    };
    let put = |off: usize, b: &[u8]| {
        if off as u64 + b.len() as u64 <= size {
            let n = rustix::io::pwrite(&fd, b, off as u64).expect("pwrite");
            assert_eq!(n, b.len());
        }
    };
    put(offsets::MAGIC, &layout::MAGIC.to_le_bytes());
    put(offsets::VERSION, &layout::VERSION.to_le_bytes());
    put(offsets::DATA_OFFSET, &(DATA_OFFSET as u32).to_le_bytes());
    put(offsets::CAPACITY, &header_capacity.to_le_bytes());
    put(offsets::MAX_MESSAGE, &desc.max_message.to_le_bytes());
    match kind {
        FdKind::TakenMemfd => put(offsets::CONSUMER, &1u32.to_le_bytes()),
        FdKind::CorruptMemfd => put(offsets::TAIL, &(desc.capacity + 8).to_le_bytes()),
        _ => {}
    }
    let all = SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL;
    let seals = match kind {
        FdKind::UnsealedMemfd | FdKind::UnsealableMemfd => SealFlags::empty(),
        FdKind::HalfSealedMemfd => SealFlags::SHRINK,
        FdKind::SealsSealedMemfd => SealFlags::SEAL,
        FdKind::WriteSealedMemfd => all | SealFlags::FUTURE_WRITE,
        _ => all,
    };
    if !seals.is_empty() {
        rustix::fs::fcntl_add_seals(&fd, seals).expect("add seals");
    }
    fd
}

fn tmpfile(dir: &str, size: u64) -> OwnedFd {
    let fd = rustix::fs::open(
        dir,
        OFlags::TMPFILE | OFlags::RDWR | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )
    .expect("O_TMPFILE");
    rustix::fs::ftruncate(&fd, size).expect("ftruncate");
    fd
}

/// An fd of `kind`; what it needs kept open (the inner levels of an epoll chain) goes to
/// `keep`.
fn make_fd(kind: FdKind, desc: RingDesc, keep: &mut Vec<OwnedFd>) -> OwnedFd {
    use rustix::event::{EventfdFlags, epoll, eventfd};
    let size = DATA_OFFSET as u64 + desc.capacity;
    let new_epoll = || epoll::create(epoll::CreateFlags::CLOEXEC).expect("epoll_create1");
    match kind {
        FdKind::Epoll => new_epoll(),
        FdKind::Epoll3 | FdKind::Epoll4 | FdKind::Epoll5 => {
            let levels = match kind {
                FdKind::Epoll3 => 3,
                FdKind::Epoll4 => 4,
                _ => 5,
            };
            let mut top = new_epoll();
            for _ in 1..levels {
                let outer = new_epoll();
                epoll::add(
                    &outer,
                    &top,
                    epoll::EventData::new_u64(0),
                    epoll::EventFlags::IN,
                )
                .expect("nest an epoll");
                keep.push(std::mem::replace(&mut top, outer));
            }
            top
        }
        FdKind::Eventfd => {
            eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK).expect("eventfd")
        }
        FdKind::SemaphoreEventfd => eventfd(
            0,
            EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK | EventfdFlags::SEMAPHORE,
        )
        .expect("eventfd"),
        FdKind::Pipe => {
            rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
                .expect("pipe")
                .0
        }
        FdKind::Socket => {
            rustix::net::socketpair(
                AddressFamily::UNIX,
                SocketType::STREAM,
                SocketFlags::CLOEXEC,
                None,
            )
            .expect("socketpair")
            .0
        }
        FdKind::DiskFile => tmpfile("/tmp", size),
        FdKind::ShmFile => tmpfile("/dev/shm", size),
        FdKind::DevNull => {
            rustix::fs::open("/dev/null", OFlags::RDWR | OFlags::CLOEXEC, Mode::empty())
                .expect("/dev/null")
        }
        k => memfd(k, desc),
    }
}

/// The fds of one packet (`None` where a slot repeats the previous one), and what they need
/// kept open.
fn make_fds(kinds: &[FdKind], desc: RingDesc) -> Held {
    let mut keep = Vec::new();
    let fds = kinds
        .iter()
        .enumerate()
        .map(|(i, &k)| match k {
            FdKind::Again if i > 0 => None,
            FdKind::Again => Some(make_fd(FdKind::Memfd, desc, &mut keep)),
            k => Some(make_fd(k, desc, &mut keep)),
        })
        .collect();
    Held { fds, _keep: keep }
}

fn borrow_fds(made: &[Option<OwnedFd>]) -> Vec<BorrowedFd<'_>> {
    let mut out: Vec<BorrowedFd<'_>> = Vec::with_capacity(made.len());
    for fd in made {
        let b = match fd {
            Some(fd) => fd.as_fd(),
            None => *out.last().expect("slot 0 is never Again"),
        };
        out.push(b);
    }
    out
}

// ---------------------------------------------------------------------------------------------
// What a rogue does at each step

fn cmsg() -> impl Strategy<Value = Cmsg> {
    (
        prop_oneof![8 => Just(1usize), 1 => 2usize..=3],
        prop::bool::weighted(0.1),
    )
        .prop_map(|(groups, creds)| Cmsg { groups, creds })
}

fn act() -> impl Strategy<Value = Act> {
    prop_oneof![
        45 => Just(Act::Right),
        10 => mutation().prop_map(Act::Mutated),
        5 => prop_oneof![
            prop_oneof![Just(Role::Client), Just(Role::Server)].prop_map(Other::Hello),
            Just(Other::Ring),
            Just(Other::Ready),
            (any::<u32>(), ".{0,40}").prop_map(|(c, r)| Other::Reject(c, r)),
        ]
        .prop_map(Act::Other),
        4 => packet_like().prop_map(Act::Bytes),
        1 => Just(Act::Silent),
        1 => Just(Act::Close),
    ]
}

/// A HELLO's or READY's fds: usually none (S4 otherwise).
fn no_fds() -> impl Strategy<Value = Vec<FdKind>> {
    prop_oneof![
        14 => Just(Vec::new()),
        3 => prop::collection::vec(any_kind(), 1..=3),
        1 => prop::collection::vec(any_kind(), 9..=14),
    ]
}

/// A RING's fds: usually three, mostly of the right kinds; sometimes 0 to 8 (S2, S3); now and
/// then a flood the receiver's buffer cannot hold (S1).
fn ring_fds() -> impl Strategy<Value = Vec<FdKind>> {
    let slot0 = prop_oneof![
        14 => Just(FdKind::Memfd),
        2 => Just(FdKind::UnsealedMemfd),
        1 => Just(FdKind::HalfSealedMemfd),
        6 => any_kind(),
    ];
    let waiter = || prop_oneof![12 => Just(FdKind::Epoll), 3 => any_kind()];
    let count = prop_oneof![16 => Just(3usize), 6 => 0usize..=8, 1 => 9usize..=16];
    (
        count,
        slot0,
        waiter(),
        waiter(),
        prop::collection::vec(any_kind(), 13),
    )
        .prop_map(|(n, a, b, c, rest)| {
            let mut v = vec![a, b, c];
            v.extend(rest);
            v.truncate(n);
            v
        })
}

fn step(fds: impl Strategy<Value = Vec<FdKind>>) -> impl Strategy<Value = Step> {
    (act(), fds, cmsg()).prop_map(|(act, fds, cmsg)| Step { act, fds, cmsg })
}

// ---------------------------------------------------------------------------------------------
// The rogue's socket

fn raw_socket() -> OwnedFd {
    rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )
    .expect("socket")
}

/// Wait until `fd` is readable, at most `timeout`.
fn readable(fd: BorrowedFd<'_>, timeout: Duration) -> bool {
    let until = Instant::now() + timeout;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        let ts = Timespec::try_from(left).expect("timespec");
        let mut pfd = [PollFd::from_borrowed_fd(fd, PollFlags::IN)];
        match poll(&mut pfd, Some(&ts)) {
            Ok(0) => return false,
            Ok(_) => return true,
            Err(Errno::INTR) => {}
            Err(e) => panic!("poll: {e}"),
        }
    }
}

/// Send one packet with its fds, split over `cmsg.groups` `SCM_RIGHTS` messages.
fn send_packet(
    sock: &OwnedFd,
    bytes: &[u8],
    fds: &[BorrowedFd<'_>],
    cmsg: Cmsg,
) -> Result<(), Errno> {
    let mut space = vec![
        MaybeUninit::uninit();
        rustix::cmsg_space!(
            ScmRights(32),
            ScmRights(32),
            ScmRights(32),
            ScmCredentials(1)
        )
    ];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() {
        for group in fds.chunks(fds.len().div_ceil(cmsg.groups)) {
            assert!(control.push(SendAncillaryMessage::ScmRights(group)));
        }
    }
    if cmsg.creds {
        let me = rustix::net::UCred {
            pid: rustix::process::getpid(),
            uid: rustix::process::getuid(),
            gid: rustix::process::getgid(),
        };
        assert!(control.push(SendAncillaryMessage::ScmCredentials(me)));
    }
    let n = rustix::net::sendmsg(
        sock,
        &[IoSlice::new(bytes)],
        &mut control,
        SendFlags::NOSIGNAL,
    )?;
    assert_eq!(n, bytes.len(), "SEQPACKET sends all or nothing");
    Ok(())
}

/// What the rogue hears.
#[derive(Debug)]
enum Heard {
    Packet(Result<Packet, WireError>, Vec<OwnedFd>),
    /// The real side closed the socket.
    Eof,
    /// Nothing within the time allowed.
    Silence,
}

fn hear(sock: &OwnedFd, timeout: Duration) -> Heard {
    if !readable(sock.as_fd(), timeout) {
        return Heard::Silence;
    }
    let mut buf = [0u8; 1024];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(16))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let msg = match rustix::net::recvmsg(
        sock,
        &mut [IoSliceMut::new(&mut buf)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    ) {
        Ok(m) => m,
        Err(Errno::CONNRESET) => return Heard::Eof,
        Err(e) => panic!("recvmsg: {e}"),
    };
    let mut fds = Vec::new();
    for m in control.drain() {
        if let RecvAncillaryMessage::ScmRights(it) = m {
            fds.extend(it);
        }
    }
    if msg.bytes == 0 && fds.is_empty() {
        return Heard::Eof;
    }
    Heard::Packet(wire::decode(&buf[..msg.bytes]), fds)
}

/// Everything the real side said after the rogue's last step, until it closed (or went
/// quiet): a failing side sends one REJECT (or nothing) and closes.
fn hear_out(sock: &OwnedFd, first: Heard, timeout: Duration) -> Vec<Heard> {
    let mut all = vec![first];
    while all.len() < 4 && matches!(all.last(), Some(Heard::Packet(..))) {
        all.push(hear(sock, timeout));
    }
    all
}

/// A real failure was told to the rogue as §2.3 says: one REJECT with the error's code and
/// no fds, then the socket closed; or, for a peer that is gone or gave up, just the close.
fn check_told(heard: &[Heard], e: &HandshakeError) -> Result<(), String> {
    let told = match reject_code_for(e) {
        Some(code) => match heard {
            [
                Heard::Packet(Ok(Packet::Reject { code: c, reason }), fds),
                Heard::Eof,
            ] => c.0 == code && fds.is_empty() && !reason.is_empty(),
            _ => false,
        },
        None => matches!(heard, [Heard::Eof]),
    };
    if told {
        Ok(())
    } else {
        Err(format!(
            "after `{e}` the rogue heard {heard:?}, expected REJECT code {:?} and a close",
            reject_code_for(e)
        ))
    }
}

/// The ends of a connection the rogue holds after a handshake it completed.
#[derive(Debug)]
struct RogueEnds {
    consumer: Consumer,
    producer: Producer,
}

/// What the rogue saw.
#[derive(Debug, Default)]
struct RogueRun {
    /// The real side's HELLO, if it sent one.
    hello: Option<Hello>,
    /// What the real side said after the rogue's last step (empty if the rogue hung up, or
    /// expects a connection).
    heard: Vec<Heard>,
    /// Claimed ends, if the handshake went through.
    ends: Option<RogueEnds>,
    /// Something went differently than any correct peer would make it go.
    odd: Option<String>,
}

fn config(desc: RingDesc) -> Config {
    Config::new()
        .capacity(desc.capacity as usize)
        .max_message(desc.max_message as usize)
}

/// Claim the consumer of the real side's ring (its memfd and data waiter) and the producer of
/// the rogue's own (a copy of its memfd, the real side's space waiter), as a correct peer
/// does. `None` with the reason if the rogue's fds were not a usable ring.
fn claim_ends(
    real: [OwnedFd; 3],
    real_desc: RingDesc,
    own_memfd: BorrowedFd<'_>,
    own_desc: RingDesc,
) -> Result<RogueEnds, String> {
    let [memfd, data, space] = real;
    let theirs = Ring::open(memfd, &config(real_desc)).map_err(|e| format!("their ring: {e}"))?;
    let consumer = theirs
        .consumer(Bell::new().expect("bell"), data)
        .map_err(|e| format!("their consumer: {e}"))?;
    let own = Ring::open(
        own_memfd.try_clone_to_owned().expect("dup"),
        &config(own_desc),
    )
    .map_err(|e| format!("our ring: {e}"))?;
    let producer = own
        .producer(Bell::new().expect("bell"), space)
        .map_err(|e| format!("our producer: {e}"))?;
    Ok(RogueEnds { consumer, producer })
}

fn three(fds: Vec<OwnedFd>) -> Option<[OwnedFd; 3]> {
    fds.try_into().ok()
}

/// The rogue's fds of one step, held until the end of the case, as a peer would hold them.
#[derive(Debug, Default)]
struct Held {
    /// What went out, slot by slot (`None`: the previous slot's fd again).
    fds: Vec<Option<OwnedFd>>,
    /// What they need kept open (inner levels of an epoll chain).
    _keep: Vec<OwnedFd>,
}

/// Perform one step: `Ok(held fds)` if a packet went out or the rogue stays silent, `Err` if
/// it hung up (`sock` is then closed) or the send failed (recorded in `run`).
fn perform(
    sock: &mut Option<OwnedFd>,
    send: &Emit,
    desc: RingDesc,
    run: &mut RogueRun,
) -> Result<Held, ()> {
    match send {
        Emit::Close => {
            *sock = None;
            Err(())
        }
        Emit::Silent => Ok(Held::default()),
        Emit::Packet(bytes, kinds, cmsg) => {
            let made = make_fds(kinds, desc);
            let s = sock.as_ref().expect("open");
            match send_packet(s, bytes, &borrow_fds(&made.fds), *cmsg) {
                Ok(()) => Ok(made),
                Err(e) => {
                    run.odd = Some(format!("sendmsg failed: {e}"));
                    Err(())
                }
            }
        }
    }
}

/// How long the rogue waits for an answer: past the real side's handshake deadline.
fn patience(timeout: Duration) -> Duration {
    timeout + Duration::from_secs(5)
}

/// A rogue client: connects to `path` and plays `script`; `connects`: the model expects the
/// handshake to complete, so after READY the rogue waits for nothing.
fn rogue_client(path: &Path, script: &Script, connects: bool, timeout: Duration) -> RogueRun {
    let mut run = RogueRun::default();
    let s = raw_socket();
    rustix::net::connect(&s, &SocketAddrUnix::new(path).expect("addr")).expect("connect");
    let mut sock = Some(s);
    let desc = script.plan.map_or(NO_PLAN, |p| p.ours);
    let mut held: Vec<Held> = Vec::new();
    let mut real_ring = None;
    for (i, send) in script.steps.iter().enumerate() {
        match perform(&mut sock, send, desc, &mut run) {
            Ok(h) => held.push(h),
            Err(()) => return run,
        }
        let s = sock.as_ref().expect("open");
        if i == 2 && connects {
            let own = borrow_fds(&held[1].fds);
            let plan = script.plan.expect("a plan");
            match claim_ends(
                real_ring.take().expect("their RING"),
                plan.theirs,
                own[0],
                plan.ours,
            ) {
                Ok(ends) => run.ends = Some(ends),
                Err(e) => run.odd = Some(e),
            }
            return run;
        }
        let heard = hear(s, patience(timeout));
        match (i, heard) {
            (0, Heard::Packet(Ok(Packet::Hello(h)), fds)) if fds.is_empty() => {
                run.hello = Some(h);
                if script.plan.is_none() {
                    run.odd = Some(format!("the listener answered HELLO {h:?}"));
                    return run;
                }
            }
            (1, Heard::Packet(Ok(Packet::Ring(d)), fds)) if fds.len() == 3 => {
                if Some(d) != script.plan.map(|p| p.theirs) {
                    run.odd = Some(format!("the listener's RING is {d:?}"));
                    return run;
                }
                real_ring = three(fds);
            }
            (_, heard) => {
                run.heard = hear_out(s, heard, patience(timeout));
                return run;
            }
        }
    }
    unreachable!("three steps")
}

/// A rogue server: accepts one client on `listener`, checks its HELLO is `client`'s, and
/// plays `script`.
fn rogue_server(
    listener: &OwnedFd,
    client: &Hello,
    script: &Script,
    connects: bool,
    timeout: Duration,
) -> RogueRun {
    let mut run = RogueRun::default();
    assert!(
        readable(listener.as_fd(), Duration::from_secs(10)),
        "the client never connected"
    );
    let s = rustix::net::accept_with(listener, SocketFlags::CLOEXEC).expect("accept");
    match hear(&s, Duration::from_secs(10)) {
        Heard::Packet(Ok(Packet::Hello(h)), fds) if fds.is_empty() && h == *client => {}
        other => panic!("the client's HELLO: {other:?}, expected {client:?}"),
    }
    let mut sock = Some(s);
    let desc = script.plan.map_or(NO_PLAN, |p| p.ours);
    let mut held: Vec<Held> = Vec::new();
    let mut client_ring = None;
    for (i, send) in script.steps.iter().enumerate() {
        match perform(&mut sock, send, desc, &mut run) {
            Ok(h) => held.push(h),
            Err(()) => return run,
        }
        let s = sock.as_ref().expect("open");
        let heard = hear(s, patience(timeout));
        match (i, heard) {
            (0, Heard::Packet(Ok(Packet::Ring(d)), fds)) if fds.len() == 3 => {
                if Some(d) != script.plan.map(|p| p.theirs) {
                    run.odd = Some(format!("the client's RING is {d:?}"));
                    return run;
                }
                client_ring = three(fds);
            }
            (1, Heard::Packet(Ok(Packet::Ready), fds)) if fds.is_empty() && connects => {
                let own = borrow_fds(&held[1].fds);
                let plan = script.plan.expect("a plan");
                match claim_ends(
                    client_ring.take().expect("their RING"),
                    plan.theirs,
                    own[0],
                    plan.ours,
                ) {
                    Ok(ends) => run.ends = Some(ends),
                    Err(e) => run.odd = Some(e),
                }
                return run;
            }
            (_, heard) => {
                run.heard = hear_out(s, heard, patience(timeout));
                return run;
            }
        }
    }
    unreachable!("two steps")
}

/// A message each way over a connection the handshake produced.
fn exchange(conn: &mut Connection, ends: &mut RogueEnds) {
    let t = Duration::from_secs(5);
    let mut buf = Vec::new();
    conn.sender()
        .send_timeout(b"R", t)
        .expect("send to the rogue");
    ends.consumer
        .recv_timeout(&mut buf, t)
        .expect("the rogue receives");
    assert_eq!(buf, b"R");
    ends.producer
        .send_timeout(b"P", t)
        .expect("the rogue sends");
    conn.receiver()
        .recv_timeout(&mut buf, t)
        .expect("receive from the rogue");
    assert_eq!(buf, b"P");
}

/// The handles a handshake hands out go into an event loop: the receiver into a [`Selector`],
/// the sender's fd into an epoll set.
fn fits_an_event_loop(conn: Connection) {
    use rustix::event::epoll;
    let (tx, rx) = conn.split();
    let set = epoll::create(epoll::CreateFlags::CLOEXEC).expect("epoll_create1");
    epoll::add(
        &set,
        tx.as_fd(),
        epoll::EventData::new_u64(0),
        epoll::EventFlags::IN,
    )
    .expect("the sender's fd goes into an epoll set");
    let mut selector = Selector::new().expect("selector");
    selector
        .insert(rx)
        .expect("the receiver goes into a Selector");
}

// ---------------------------------------------------------------------------------------------
// Live cases

/// The real side's sizes.
#[derive(Debug, Clone, Copy)]
struct Sizes {
    send: u32,
    recv: Option<u32>,
    max_ring: u32,
    max_message: u16,
}

fn sizes() -> impl Strategy<Value = Sizes> {
    (
        6u32..=12,
        prop_oneof![3 => Just(None), 1 => (6u32..=12).prop_map(Some)],
        12u32..=16,
        any::<u16>(),
    )
        .prop_map(|(send, recv, max_ring, max_message)| Sizes {
            send,
            recv,
            max_ring,
            max_message,
        })
}

impl Sizes {
    fn options(&self, timeout: Duration) -> Options {
        let h = self.hello(Role::Client);
        Options::new()
            .send_capacity(h.send_capacity as usize)
            .recv_capacity(h.recv_capacity as usize)
            .max_ring(h.max_ring as usize)
            .max_message(h.max_message as usize)
            .handshake_timeout(timeout)
    }

    /// The HELLO these options make (docs/protocol.md §2.3).
    fn hello(&self, role: Role) -> Hello {
        let send_capacity = 1u64 << self.send;
        Hello {
            role,
            ring_version: layout::VERSION,
            send_capacity,
            max_message: pick_max_message(send_capacity, self.max_message),
            recv_capacity: self.recv.map_or(0, |r| 1u64 << r),
            max_ring: 1u64 << self.max_ring,
        }
    }
}

/// A valid HELLO for the rogue; about one in five does not negotiate with [`sizes`].
fn rogue_hello(role: Role) -> impl Strategy<Value = Hello> {
    (
        6u32..=14,
        prop_oneof![3 => Just(0u32), 1 => 6u32..=15],
        prop_oneof![8 => 12u32..=17, 1 => 6u32..=11, 1 => Just(30)],
        any::<u16>(),
    )
        .prop_map(move |(s, r, m, mm)| {
            let send_capacity = 1u64 << s;
            Hello {
                role,
                ring_version: layout::VERSION,
                send_capacity,
                max_message: pick_max_message(send_capacity, mm),
                recv_capacity: if r == 0 { 0 } else { 1u64 << r },
                max_ring: 1u64 << m,
            }
        })
}

/// A handshake deadline that load on a 2-core machine never reaches, and a short one for the
/// cases where the rogue stalls.
const HANDSHAKE: Duration = Duration::from_secs(10);
const STALL: Duration = Duration::from_millis(250);

#[derive(Debug, Clone)]
struct LiveCase {
    /// The real side's options.
    sizes: Sizes,
    /// The rogue's HELLO as a correct peer would send it.
    hello: Hello,
    /// HELLO, RING and (rogue client only) READY.
    steps: Vec<Step>,
}

impl LiveCase {
    fn timeout(&self) -> Duration {
        if self.steps.iter().any(|s| matches!(s.act, Act::Silent)) {
            STALL
        } else {
            HANDSHAKE
        }
    }
}

fn live_case(rogue: Role) -> impl Strategy<Value = LiveCase> {
    let n = if rogue == Role::Client { 3 } else { 2 };
    let steps = (step(no_fds()), step(ring_fds()), step(no_fds()));
    (
        sizes(),
        rogue_hello(rogue),
        steps,
        prop::bool::weighted(0.2),
    )
        .prop_map(move |(sizes, hello, (a, b, c), honest)| {
            let mut steps = vec![a, b, c];
            steps.truncate(n);
            if honest {
                // Everything right: the handshake completes if the two HELLOs negotiate.
                for (i, s) in steps.iter_mut().enumerate() {
                    s.act = Act::Right;
                    s.fds = if i == 1 {
                        vec![FdKind::Memfd, FdKind::Epoll, FdKind::Epoll]
                    } else {
                        Vec::new()
                    };
                    s.cmsg = ONE_MESSAGE;
                }
            }
            LiveCase {
                sizes,
                hello,
                steps,
            }
        })
}

/// How many cases of each live property ended how (printed with `--nocapture`): what the
/// short and the long settings actually covered.
static TALLY: Mutex<BTreeMap<(&str, String), usize>> = Mutex::new(BTreeMap::new());

fn variant(debug: String) -> String {
    debug
        .split(|c: char| !c.is_alphanumeric())
        .next()
        .unwrap_or_default()
        .to_owned()
}

fn label(o: &Outcome) -> String {
    match o {
        Outcome::Connects => "connected".into(),
        Outcome::Fails { waiting_for, fault } => {
            let f = match fault {
                Fault::Wire(w) => format!("Wire({})", variant(format!("{w:?}"))),
                Fault::BadRing(r) => format!("BadRing({})", variant(format!("{r:?}"))),
                f => variant(format!("{f:?}")),
            };
            format!("{waiting_for}: {f}")
        }
    }
}

fn tally(who: &'static str, want: &Outcome) {
    let mut t = TALLY.lock().unwrap_or_else(|e| e.into_inner());
    *t.entry((who, label(want))).or_default() += 1;
}

fn print_tally(who: &str) {
    let t = TALLY.lock().unwrap_or_else(|e| e.into_inner());
    let total: usize = t
        .iter()
        .filter(|((w, _), _)| *w == who)
        .map(|(_, n)| n)
        .sum();
    eprintln!("{who}: {total} cases");
    for ((_, l), n) in t.iter().filter(|((w, _), _)| *w == who) {
        eprintln!("  {n:6}  {l}");
    }
}

/// Compare what the real side did with what the model says, and how the rogue was told.
fn judge_run(
    who: &'static str,
    want: &Outcome,
    got: Result<Connection, HandshakeError>,
    run: &mut RogueRun,
    before: &BTreeSet<i32>,
) {
    if let Some(odd) = &run.odd {
        panic!("expected {want:?}; the rogue saw something odd: {odd}; real side: {got:?}");
    }
    match (want, got) {
        (Outcome::Connects, Ok(mut conn)) => {
            let ends = run.ends.as_mut().expect("the rogue claimed its ends");
            exchange(&mut conn, ends);
            assert_cloexec_since(before);
            fits_an_event_loop(conn);
        }
        (Outcome::Fails { waiting_for, fault }, Err(e)) => {
            check_fault(fault, waiting_for, &e).unwrap_or_else(|m| panic!("{m}"));
            if !run.heard.is_empty() {
                check_told(&run.heard, &e).unwrap_or_else(|m| panic!("{m}"));
            }
        }
        (want, got) => panic!(
            "expected {want:?}, got {:?}; the rogue heard {:?}",
            got.map(|_| "a connection"),
            run.heard
        ),
    }
    tally(who, want);
}

/// A rogue client against a real listener. Afterwards an honest client is served (S9).
fn rogue_client_case(c: LiveCase) {
    let timeout = c.timeout();
    let real = c.sizes.hello(Role::Server);
    let script = script(&c.hello, &real, &c.steps);
    let want = expect(&script, &real);
    fds_unchanged("rogue client case", |before| {
        let dir = TempDir::tagged("fuzz-hs");
        let mut listener = Listener::bind(dir.sock(), &c.sizes.options(timeout)).expect("bind");
        let path = dir.sock();
        let (s, connects) = (script.clone(), want == Outcome::Connects);
        let rogue = std::thread::spawn(move || rogue_client(&path, &s, connects, timeout));
        let got = listener.accept_timeout(patience(timeout));
        let mut run = rogue.join().expect("the rogue client panicked");
        if let Some(h) = run.hello {
            assert_eq!(h, real, "the listener's HELLO");
        }
        let got = match got {
            Ok(c) => Ok(c),
            Err(AcceptError::Handshake { source, peer }) => {
                assert!(
                    peer.is_some(),
                    "credentials are known for an accepted socket"
                );
                Err(source)
            }
            Err(e) => panic!("accept: {e}"),
        };
        judge_run("rogue client", &want, got, &mut run, before);
        drop(run);

        // The listener still serves an honest client.
        let path = dir.sock();
        let opts = Options::new()
            .send_capacity(1 << 12)
            .max_ring(1 << 16)
            .handshake_timeout(HANDSHAKE);
        let honest = std::thread::spawn(move || connect(&path, &opts));
        let served = listener.accept_timeout(patience(HANDSHAKE));
        let client = honest.join().expect("the honest client panicked");
        served.expect("the listener serves an honest client after the rogue");
        client.expect("the honest client connects");
    });
}

/// A rogue server against a real `connect`.
fn rogue_server_case(c: LiveCase) {
    let timeout = c.timeout();
    let real = c.sizes.hello(Role::Client);
    let script = script(&c.hello, &real, &c.steps);
    let want = expect(&script, &real);
    fds_unchanged("rogue server case", |before| {
        let dir = TempDir::tagged("fuzz-hs");
        let listener = raw_socket();
        rustix::net::bind(&listener, &SocketAddrUnix::new(dir.sock()).expect("addr"))
            .expect("bind");
        rustix::net::listen(&listener, 4).expect("listen");
        let path = dir.sock();
        let opts = c.sizes.options(timeout);
        let client = std::thread::spawn(move || connect(&path, &opts));
        let connects = want == Outcome::Connects;
        let mut run = rogue_server(&listener, &real, &script, connects, timeout);
        let got = match client.join().expect("connect panicked") {
            Ok(c) => Ok(c),
            Err(ConnectError::Handshake { source, .. }) => Err(source),
            Err(e) => panic!("connect: {e}"),
        };
        judge_run("rogue server", &want, got, &mut run, before);
    });
}

/// A rogue client (any bytes, any fds, at each of HELLO, RING and READY) against a real
/// listener: faults.md S1-S5, S9, S10-S12, M1, M3, M4, S7 on success.
#[test]
fn a_rogue_client_gets_the_specific_error_and_costs_no_fd() {
    property(
        "rogue client",
        300,
        60,
        live_case(Role::Client),
        rogue_client_case,
    );
    print_tally("rogue client");
}

/// A rogue server (any bytes, any fds, at HELLO and RING) against a real `connect`.
#[test]
fn a_rogue_server_gets_the_specific_error_and_costs_no_fd() {
    property(
        "rogue server",
        300,
        60,
        live_case(Role::Server),
        rogue_server_case,
    );
    print_tally("rogue server");
}

/// Regression: a waiter nested 4 deep (an epoll over an epoll over ...) passed the handshake,
/// which then handed out a receiver or sender that no event loop could watch: the
/// `Selector::insert` that followed failed with a bare "Too many levels of symbolic links"
/// (ELOOP), far from its cause. Now the handshake refuses it (`BadRing(BadWaiter)`), in either
/// slot and on either side; 3 levels still connect and fit a `Selector`, 5 were always refused.
#[test]
fn a_waiter_nested_too_deeply_for_an_event_loop_is_refused_at_the_handshake() {
    let _serial = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let honest = |rogue: Role, slot: usize, kind: FdKind| {
        let mut fds = vec![FdKind::Memfd, FdKind::Epoll, FdKind::Epoll];
        fds[slot] = kind;
        let step = |fds: Vec<FdKind>| Step {
            act: Act::Right,
            fds,
            cmsg: ONE_MESSAGE,
        };
        let mut steps = vec![step(Vec::new()), step(fds), step(Vec::new())];
        steps.truncate(if rogue == Role::Client { 3 } else { 2 });
        LiveCase {
            sizes: Sizes {
                send: 12,
                recv: None,
                max_ring: 16,
                max_message: 0,
            },
            hello: Hello {
                role: rogue,
                ring_version: layout::VERSION,
                send_capacity: 1 << 12,
                max_message: 0,
                recv_capacity: 0,
                max_ring: 1 << 16,
            },
            steps,
        }
    };
    for rogue in [Role::Client, Role::Server] {
        for slot in [1, 2] {
            for (kind, refused) in [
                (FdKind::Epoll3, None),
                (FdKind::Epoll4, Some("nested so deeply")),
                (FdKind::Epoll5, Some("cannot be watched")),
            ] {
                let c = honest(rogue, slot, kind);
                let real = c.sizes.hello(match rogue {
                    Role::Client => Role::Server,
                    Role::Server => Role::Client,
                });
                // The model says so (the live case below checks the real side against it).
                let want = match refused {
                    None => Outcome::Connects,
                    Some(w) => Outcome::Fails {
                        waiting_for: "RING",
                        fault: Fault::BadRing(RingFault::TooDeep(w)),
                    },
                };
                assert_eq!(expect(&script(&c.hello, &real, &c.steps), &real), want);
                let what = format!("rogue {rogue:?}, {kind:?} in slot {slot}");
                deadline(30, &what, move || match rogue {
                    Role::Client => rogue_client_case(c),
                    Role::Server => rogue_server_case(c),
                });
            }
        }
    }
}
