//! Test plumbing and a hostile peer written with rustix: it speaks the handshake from
//! `shmpipe_handshake::wire` alone, so it can get everything right except the one thing a test
//! wants wrong.

#![allow(dead_code, unreachable_pub, missing_docs, unused_imports)]

use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::process::{Child, ExitStatus, Stdio};
use std::time::Duration;

use rustix::event::{PollFd, PollFlags, Timespec, poll};
use rustix::fs::{MemfdFlags, SealFlags};
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, SocketAddrUnix, SocketFlags, SocketType,
};
use shmpipe_handshake::Options;
use shmpipe_handshake::wire::{self, Hello, Packet, Plan, RingDesc, Role};
use shmpipe_ring::{Bell, Config, Consumer, Producer, Ring, layout};

// Shared with the other suites: fd counts, temp dirs, the serial lock, children.
pub use shmpipe_testkit::TempDir;
pub use shmpipe_testkit::child::{Reaper, assert_success, finish as finish_child, marked_line};
pub use shmpipe_testkit::fds::{assert_fds_restored, fd_count, fd_set};
pub use shmpipe_testkit::{serial, skip};

/// Small rings and a short handshake: tests stay fast.
pub fn opts() -> Options {
    Options::new()
        .send_capacity(1 << 16)
        .handshake_timeout(Duration::from_secs(5))
}

pub fn raw_socket() -> OwnedFd {
    rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )
    .expect("socket")
}

/// A blocking SEQPACKET client.
pub fn raw_connect(path: &Path) -> OwnedFd {
    let s = raw_socket();
    rustix::net::connect(&s, &SocketAddrUnix::new(path).expect("addr")).expect("connect");
    s
}

/// Send `bytes` with one `SCM_RIGHTS` message per group of fds.
pub fn send_raw(
    sock: impl AsFd,
    bytes: &[u8],
    groups: &[&[BorrowedFd<'_>]],
) -> rustix::io::Result<usize> {
    let mut space = vec![MaybeUninit::uninit(); 4096];
    let mut control = SendAncillaryBuffer::new(&mut space);
    for g in groups {
        assert!(control.push(SendAncillaryMessage::ScmRights(g)));
    }
    rustix::net::sendmsg(
        sock,
        &[IoSlice::new(bytes)],
        &mut control,
        SendFlags::NOSIGNAL,
    )
}

/// Receive one packet (and its fds) within `timeout`; `None` on timeout.
pub fn recv_raw(sock: impl AsFd, timeout: Duration) -> Option<(Vec<u8>, Vec<OwnedFd>)> {
    let ts = Timespec::try_from(timeout).unwrap();
    let mut pfd = [PollFd::new(&sock, PollFlags::IN)];
    if poll(&mut pfd, Some(&ts)).expect("poll") == 0 {
        return None;
    }
    let mut buf = vec![0u8; 1024];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(16))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let msg = rustix::net::recvmsg(
        &sock,
        &mut [IoSliceMut::new(&mut buf)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )
    .expect("recvmsg");
    let mut fds = Vec::new();
    for m in control.drain() {
        if let RecvAncillaryMessage::ScmRights(it) = m {
            fds.extend(it);
        }
    }
    buf.truncate(msg.bytes);
    Some((buf, fds))
}

pub fn client_hello() -> Hello {
    Hello {
        role: Role::Client,
        ring_version: layout::VERSION,
        send_capacity: 1 << 16,
        max_message: 0,
        recv_capacity: 0,
        max_ring: 1 << 20,
    }
}

pub fn server_hello() -> Hello {
    Hello {
        role: Role::Server,
        ..client_hello()
    }
}

/// What the peer hears back: the decoded packet, or `None` if the socket closed silently.
pub fn reply(sock: impl AsFd) -> Option<Packet> {
    let (bytes, _) = recv_raw(sock, Duration::from_secs(5))?;
    if bytes.is_empty() {
        return None;
    }
    Some(wire::decode(&bytes).expect("the library sends well-formed packets"))
}

pub fn reject_code(p: &Option<Packet>) -> Option<u32> {
    match p {
        Some(Packet::Reject { code, .. }) => Some(code.0),
        _ => None,
    }
}

/// The raw client, after the HELLO exchange.
#[derive(Debug)]
pub struct Peer {
    pub sock: OwnedFd,
    pub plan: Plan,
    pub hello: Hello,
}

impl Peer {
    pub fn hello(path: &Path, hello: Hello) -> Peer {
        let sock = raw_connect(path);
        send_raw(&sock, &hello.encode(), &[]).expect("send HELLO");
        let (bytes, fds) = recv_raw(&sock, Duration::from_secs(5)).expect("server HELLO");
        assert!(fds.is_empty());
        let Ok(Packet::Hello(theirs)) = wire::decode(&bytes) else {
            panic!("expected HELLO, got {:?}", wire::decode(&bytes))
        };
        let plan = wire::negotiate(&hello, &theirs).expect("negotiate");
        Peer { sock, plan, hello }
    }

    /// A valid ring for the negotiated plan and the two bells this side rings: what a correct
    /// client sends with its RING ([`Half::fds`]).
    pub fn ring(&self) -> Half {
        Half::new(self.plan.ours)
    }

    pub fn send_ring(&self, fds: &[BorrowedFd<'_>]) {
        self.send_ring_as(self.plan.ours, &[fds]);
    }

    pub fn send_ring_as(&self, desc: RingDesc, groups: &[&[BorrowedFd<'_>]]) {
        send_raw(&self.sock, &desc.encode(), groups).expect("send RING");
    }

    /// After our RING: take the server's RING and its fds (memfd, data waiter, space waiter).
    pub fn server_ring(&self) -> [OwnedFd; 3] {
        let (bytes, fds) = recv_raw(&self.sock, Duration::from_secs(5)).expect("server RING");
        assert_eq!(
            wire::decode(&bytes),
            Ok(Packet::Ring(self.plan.theirs)),
            "server RING"
        );
        fds.try_into().expect("3 fds")
    }

    /// After our RING (the fds of `half`): take the server's, open it, claim both our roles
    /// as a correct client does, say READY. Keeps copies of every waiter involved.
    pub fn finish(self, half: Half) -> Raw {
        let theirs = self.server_ring();
        let dup = |f: &OwnedFd| f.try_clone().expect("dup");
        let copies = [dup(&theirs[0]), dup(&theirs[1]), dup(&theirs[2])];
        let data_waiter = half.data.waiter_fd().try_clone_to_owned().expect("dup");
        let space_waiter = half.space.waiter_fd().try_clone_to_owned().expect("dup");
        let [memfd, their_data, their_space] = theirs;
        let ring = Ring::open(memfd, &config(self.plan.theirs)).expect("open server ring");
        let consumer = ring
            .consumer(half.space, their_data)
            .expect("claim consumer");
        let producer = half
            .ring
            .producer(half.data, their_space)
            .expect("claim producer");
        send_raw(&self.sock, &wire::encode_ready(), &[]).expect("send READY");
        Raw {
            peer: self,
            producer,
            consumer,
            data_waiter,
            space_waiter,
            theirs: copies,
        }
    }

    /// After a RING of hand-made fds: take the server's, claim its consumer role with a new
    /// bell, say READY. Our own ring (if any) stays unclaimed.
    pub fn finish_consumer(&self) -> Consumer {
        let [memfd, their_data, _their_space] = self.server_ring();
        let ring = Ring::open(memfd, &config(self.plan.theirs)).expect("open server ring");
        let c = ring
            .consumer(Bell::new().expect("bell"), their_data)
            .expect("claim consumer");
        send_raw(&self.sock, &wire::encode_ready(), &[]).expect("send READY");
        c
    }
}

/// What a correct side makes before it sends its RING: the ring it produces into, the bell it
/// rings as that ring's producer (`data`) and the one it rings as the consumer of the peer's
/// ring (`space`).
#[derive(Debug)]
pub struct Half {
    pub ring: Ring,
    pub data: Bell,
    pub space: Bell,
}

impl Half {
    pub fn new(desc: RingDesc) -> Half {
        Half {
            ring: Ring::create(&config(desc)).expect("create ring"),
            data: Bell::new().expect("bell"),
            space: Bell::new().expect("bell"),
        }
    }

    /// The fds of a RING packet, in protocol order: memfd, data waiter, space waiter.
    pub fn fds(&self) -> [BorrowedFd<'_>; 3] {
        [
            self.ring.memfd(),
            self.data.waiter_fd(),
            self.space.waiter_fd(),
        ]
    }
}

/// The raw client after a complete handshake, with copies of every waiter so that a test can
/// abuse them.
#[derive(Debug)]
pub struct Raw {
    /// Its socket stays open: closing it tells the server the peer is gone.
    pub peer: Peer,
    pub producer: Producer,
    pub consumer: Consumer,
    /// The waiter of our data bell: the server sleeps on it as our consumer.
    pub data_waiter: OwnedFd,
    /// The waiter of our space bell: the server sleeps on it as our producer.
    pub space_waiter: OwnedFd,
    /// What the server sent: its memfd, its data waiter (our consumer sleeps on it) and its
    /// space waiter (our producer sleeps on it).
    pub theirs: [OwnedFd; 3],
}

pub fn config(desc: RingDesc) -> Config {
    Config::new()
        .capacity(desc.capacity as usize)
        .max_message(desc.max_message as usize)
}

/// A fresh epoll instance: a waiter that passes every check and that nobody rings.
pub fn epoll_fd() -> OwnedFd {
    rustix::event::epoll::create(rustix::event::epoll::CreateFlags::CLOEXEC).expect("epoll_create1")
}

pub fn eventfd(semaphore: bool) -> OwnedFd {
    use rustix::event::EventfdFlags;
    let mut flags = EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK;
    if semaphore {
        flags |= EventfdFlags::SEMAPHORE;
    }
    rustix::event::eventfd(0, flags).expect("eventfd")
}

/// A hand-made ring memfd: `size` bytes, a header claiming `capacity` and `max_message`,
/// then `seals` added (if `sealing` allows it at all).
pub fn memfd_ring(
    size: u64,
    capacity: u64,
    max_message: u64,
    sealing: bool,
    seals: SealFlags,
) -> OwnedFd {
    let mut flags = MemfdFlags::CLOEXEC;
    if sealing {
        flags |= MemfdFlags::ALLOW_SEALING;
    }
    let fd = rustix::fs::memfd_create("hostile", flags).expect("memfd_create");
    rustix::fs::ftruncate(&fd, size).expect("ftruncate");
    let mut header = [0u8; 32];
    header[0..8].copy_from_slice(&layout::MAGIC.to_le_bytes());
    header[8..12].copy_from_slice(&layout::VERSION.to_le_bytes());
    header[12..16].copy_from_slice(&(layout::DATA_OFFSET as u32).to_le_bytes());
    header[16..24].copy_from_slice(&capacity.to_le_bytes());
    header[24..32].copy_from_slice(&max_message.to_le_bytes());
    rustix::io::pwrite(&fd, &header, 0).expect("pwrite header");
    if !seals.is_empty() {
        rustix::fs::fcntl_add_seals(&fd, seals).expect("add seals");
    }
    fd
}

/// The ring memfd the plan asks for, correct in every respect, with `seals`.
pub fn good_memfd(desc: RingDesc, seals: SealFlags) -> OwnedFd {
    memfd_ring(
        layout::DATA_OFFSET as u64 + desc.capacity,
        desc.capacity,
        desc.max_message,
        true,
        seals,
    )
}

pub fn sealed() -> SealFlags {
    SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL
}

/// Re-run this test binary's ignored `child` entry with `SHMPIPE_SCENARIO=scenario`.
pub fn spawn_child(scenario: &str, env: &[(&str, &str)]) -> Child {
    let mut cmd = shmpipe_testkit::child::rerun("child", true);
    cmd.env("SHMPIPE_SCENARIO", scenario)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().expect("spawn child")
}

pub fn exited_by_signal(s: &ExitStatus) -> Option<i32> {
    use std::os::unix::process::ExitStatusExt;
    s.signal()
}

pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Nanoseconds this thread has run on a CPU (/proc/thread-self/schedstat).
pub fn thread_cpu_ns() -> u64 {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").expect("schedstat");
    s.split_whitespace().next().unwrap().parse().unwrap()
}
