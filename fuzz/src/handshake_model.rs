//! The handshake of docs/protocol.md §2 written a second time, as plainly as possible, to
//! decide what the real one must answer. The handshake suites (`tests/handshake.rs`, pure, and
//! `tests/handshake_live.rs`, over real sockets) compare `shmpipe_handshake` with it:
//!
//! * the bytes: [`model_decode`], a decoder written from §2.2-2.3 and step 3 of §2.6;
//! * the negotiation of §2.4: [`model_negotiate`], both rings or the words its error must
//!   contain;
//! * the checks of §2.6 in their order, for what a rogue peer sends ([`script`] makes its
//!   [`Script`] from the [`Step`]s a case generates): [`expect`] gives the [`Outcome`], a
//!   connection or the [`Fault`] the real side must report and while waiting for which packet;
//!   [`check_fault`] compares a real [`HandshakeError`] with it, and [`reject_code_for`] gives
//!   the REJECT code §2.3 sends for one. What each kind of fd a rogue may send ([`FdKind`])
//!   must be refused with is a [`RingFault`].
//!
//! Nothing here runs a handshake or opens an fd.

use shmpipe_handshake::HandshakeError;
use shmpipe_handshake::wire::{
    self, Hello, Kind, Packet, Plan, RejectCode, RingDesc, Role, WireError,
};
use shmpipe_ring::SetupError;
use shmpipe_ring::layout::{self, DATA_OFFSET};

use crate::handshake_gen::{Mutation, apply};

// ---------------------------------------------------------------------------------------------
// The protocol document, re-implemented: §2.2-2.3 (bytes), §2.4 (negotiation)

/// The smallest ring capacity §2.4 allows.
pub const MIN_CAP: u64 = 64;
/// The largest ring capacity §2.4 allows.
pub const MAX_CAP: u64 = 1 << 30;

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
}

/// A decoder written from docs/protocol.md §2.2-2.3 and step 3 of §2.6: at least 8 bytes,
/// magic, version 1, a known kind, that kind's exact length (12 to 256 for REJECT), a role of
/// 1 or 2, reserved bytes zero. (§2.6 lists the role after the reserved bytes; the library
/// checks the role first. Both are a `Wire` error with REJECT code 4: only which of two faults
/// in one HELLO is named differs. We follow the library here.)
pub fn model_decode(b: &[u8]) -> Result<Packet, WireError> {
    if b.len() < 8 {
        return Err(WireError::Short(b.len()));
    }
    let magic: [u8; 4] = b[..4].try_into().unwrap();
    if &magic != b"SHMH" {
        return Err(WireError::Magic(magic));
    }
    let version = u16::from_le_bytes([b[4], b[5]]);
    if version != 1 {
        return Err(WireError::Version(version));
    }
    let kind = u16::from_le_bytes([b[6], b[7]]);
    let (name, fits, expected) = match kind {
        1 => ("HELLO", b.len() == 64, 64),
        2 => ("RING", b.len() == 32, 32),
        3 => ("READY", b.len() == 8, 8),
        4 => ("REJECT", (12..=256).contains(&b.len()), 12),
        k => return Err(WireError::Kind(k)),
    };
    if !fits {
        return Err(WireError::Length {
            kind: name,
            len: b.len(),
            expected,
        });
    }
    let reserved = |r: std::ops::Range<usize>| -> Result<(), WireError> {
        match r.into_iter().find(|&i| b[i] != 0) {
            Some(offset) => Err(WireError::Reserved {
                kind: name,
                offset,
                value: b[offset],
            }),
            None => Ok(()),
        }
    };
    match kind {
        1 => {
            let role = match b[8] {
                1 => Role::Client,
                2 => Role::Server,
                r => return Err(WireError::Role(r)),
            };
            reserved(9..12)?;
            reserved(48..64)?;
            Ok(Packet::Hello(Hello {
                role,
                ring_version: u32_at(b, 12),
                send_capacity: u64_at(b, 16),
                max_message: u64_at(b, 24),
                recv_capacity: u64_at(b, 32),
                max_ring: u64_at(b, 40),
            }))
        }
        2 => {
            reserved(24..32)?;
            Ok(Packet::Ring(RingDesc {
                capacity: u64_at(b, 8),
                max_message: u64_at(b, 16),
            }))
        }
        3 => Ok(Packet::Ready),
        _ => Ok(Packet::Reject {
            code: RejectCode(u32_at(b, 8)),
            reason: String::from_utf8_lossy(&b[12..]).into_owned(),
        }),
    }
}

/// Is `c` a capacity §2.4 allows: a power of two from [`MIN_CAP`] to [`MAX_CAP`]?
pub fn cap_ok(c: u64) -> bool {
    c.is_power_of_two() && (MIN_CAP..=MAX_CAP).contains(&c)
}

/// The words an error message must contain, from anything printable.
pub fn words(w: &[&dyn ToString]) -> Vec<String> {
    w.iter().map(|w| w.to_string()).collect()
}

/// §2.4, a HELLO on its own: the words an error about it must contain (the field and its
/// value), or `None` if its numbers are possible.
fn model_check(h: &Hello) -> Option<Vec<String>> {
    if h.ring_version != layout::VERSION {
        return Some(words(&[&"ring layout version", &h.ring_version]));
    }
    if !cap_ok(h.send_capacity) {
        return Some(words(&[&"send capacity", &h.send_capacity]));
    }
    if h.recv_capacity != 0 && !cap_ok(h.recv_capacity) {
        return Some(words(&[&"receive capacity", &h.recv_capacity]));
    }
    if h.max_message > h.send_capacity / 2 - 8 {
        return Some(words(&[&"max message", &h.max_message]));
    }
    None
}

/// §2.4: the ring `p` produces for `c`.
fn model_ring(p: &Hello, c: &Hello, who: &str) -> Result<RingDesc, Vec<String>> {
    let capacity = p.send_capacity.max(c.recv_capacity);
    for (side, limit) in [("its producer", p.max_ring), ("its consumer", c.max_ring)] {
        if capacity > limit {
            return Err(words(&[
                &who,
                &"(max_ring)",
                &side,
                &format!("{capacity} bytes"),
                &format!("{limit}-byte"),
            ]));
        }
    }
    let max_message = match p.max_message {
        0 => capacity / 4,
        m => m,
    };
    Ok(RingDesc {
        capacity,
        max_message,
    })
}

/// §2.4 from `ours`' side: both rings, or the words the error must contain.
pub fn model_negotiate(ours: &Hello, peer: &Hello) -> Result<Plan, Vec<String>> {
    if let Some(mut w) = model_check(peer) {
        w.push("the peer's HELLO".into());
        return Err(w);
    }
    if let Some(mut w) = model_check(ours) {
        w.push("our HELLO".into());
        return Err(w);
    }
    Ok(Plan {
        ours: model_ring(ours, peer, "our ring")?,
        theirs: model_ring(peer, ours, "the peer's ring")?,
    })
}

// ---------------------------------------------------------------------------------------------
// Fds a rogue peer sends, and how §2.6 step 8 judges them

/// What a rogue sends in one fd slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FdKind {
    /// A ring memfd as a correct peer makes it: right size and header, sealed.
    Memfd,
    /// Right size and header, no seals yet: the receiver seals it (M2) and accepts it.
    UnsealedMemfd,
    /// Only `F_SEAL_SHRINK`: the receiver adds the rest and accepts it.
    HalfSealedMemfd,
    /// 4096 bytes short (M3).
    ShortMemfd,
    /// 4096 bytes long (M3).
    LongMemfd,
    /// Created without `MFD_ALLOW_SEALING`: reports `F_SEAL_SEAL` alone (M1).
    UnsealableMemfd,
    /// `F_SEAL_SEAL` without SHRINK and GROW: they can never be added (M1).
    SealsSealedMemfd,
    /// A write seal (`F_SEAL_FUTURE_WRITE`): no shared writable mapping (M1).
    WriteSealedMemfd,
    /// The header's capacity is half the negotiated one (M4).
    WrongHeaderMemfd,
    /// The consumer's role word already says "taken".
    TakenMemfd,
    /// `tail` beyond `head + capacity`.
    CorruptMemfd,
    /// An epoll instance: what a waiter must be.
    Epoll,
    /// An epoll instance watching one that watches one (3 levels): accepted, and what we
    /// build over it still fits into an event loop.
    Epoll3,
    /// 4 levels: our epoll over it can be built, but could not be watched by the caller's
    /// event loop (epoll nests at most 5 deep).
    Epoll4,
    /// 5 levels: our own epoll cannot watch it (`ELOOP`).
    Epoll5,
    /// An eventfd.
    Eventfd,
    /// An `EFD_SEMAPHORE` eventfd.
    SemaphoreEventfd,
    /// The read end of a pipe.
    Pipe,
    /// One end of a STREAM socket pair.
    Socket,
    /// An unlinked file on disk (`O_TMPFILE` in /tmp).
    DiskFile,
    /// An unlinked tmpfs file (`O_TMPFILE` in /dev/shm): reports `F_SEAL_SEAL` alone.
    ShmFile,
    /// /dev/null, opened read-write.
    DevNull,
    /// The previous slot's fd once more (the same fd twice in one message; in slot 0, a
    /// [`FdKind::Memfd`]).
    Again,
}

/// Every [`FdKind`].
pub const ALL_KINDS: &[FdKind] = &[
    FdKind::Memfd,
    FdKind::UnsealedMemfd,
    FdKind::HalfSealedMemfd,
    FdKind::ShortMemfd,
    FdKind::LongMemfd,
    FdKind::UnsealableMemfd,
    FdKind::SealsSealedMemfd,
    FdKind::WriteSealedMemfd,
    FdKind::WrongHeaderMemfd,
    FdKind::TakenMemfd,
    FdKind::CorruptMemfd,
    FdKind::Epoll,
    FdKind::Epoll3,
    FdKind::Epoll4,
    FdKind::Epoll5,
    FdKind::Eventfd,
    FdKind::SemaphoreEventfd,
    FdKind::Pipe,
    FdKind::Socket,
    FdKind::DiskFile,
    FdKind::ShmFile,
    FdKind::DevNull,
    FdKind::Again,
];

/// The kinds as they arrive: [`FdKind::Again`] replaced by what it repeats.
fn resolve(kinds: &[FdKind]) -> Vec<FdKind> {
    let mut out: Vec<FdKind> = Vec::with_capacity(kinds.len());
    for &k in kinds {
        out.push(match (k, out.last()) {
            (FdKind::Again, Some(&prev)) => prev,
            (FdKind::Again, None) => FdKind::Memfd,
            (k, _) => k,
        });
    }
    out
}

/// How a ring's validation (§2.6 step 8) must fail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RingFault {
    /// `NotMemfd`: the memfd slot holds something else.
    NotMemfd,
    /// `Seals`: seals that cannot be completed, or a write seal.
    Seals,
    /// `SizeMismatch`.
    Size {
        /// The size of the negotiated ring.
        expected: u64,
        /// The memfd's size.
        actual: u64,
    },
    /// `HeaderMismatch` naming this field.
    Header(&'static str),
    /// `Corrupted`: impossible indices.
    Corrupted,
    /// `BadWaiter`: not an epoll instance; the reason names what the fd is instead.
    NotEpoll(&'static str),
    /// `BadWaiter`: an epoll instance nested too deeply; the reason says so.
    TooDeep(&'static str),
    /// `RoleTaken`: the consumer's role word already says taken.
    RoleTaken,
}

/// Slot 0, the memfd: §2.6 step 8.2-8.3.
fn memfd_verdict(kind: FdKind, desc: RingDesc) -> Result<(), RingFault> {
    let size = DATA_OFFSET as u64 + desc.capacity;
    match kind {
        FdKind::Memfd | FdKind::UnsealedMemfd | FdKind::HalfSealedMemfd | FdKind::TakenMemfd => {
            Ok(())
        }
        FdKind::ShortMemfd => Err(RingFault::Size {
            expected: size,
            actual: size - 4096,
        }),
        FdKind::LongMemfd => Err(RingFault::Size {
            expected: size,
            actual: size + 4096,
        }),
        FdKind::UnsealableMemfd | FdKind::SealsSealedMemfd | FdKind::WriteSealedMemfd => {
            Err(RingFault::Seals)
        }
        // A tmpfs file that is not a memfd reports F_SEAL_SEAL alone.
        FdKind::ShmFile => Err(RingFault::Seals),
        FdKind::WrongHeaderMemfd => Err(RingFault::Header("capacity")),
        FdKind::CorruptMemfd => Err(RingFault::Corrupted),
        FdKind::Epoll
        | FdKind::Epoll3
        | FdKind::Epoll4
        | FdKind::Epoll5
        | FdKind::Eventfd
        | FdKind::SemaphoreEventfd
        | FdKind::Pipe
        | FdKind::Socket
        | FdKind::DiskFile
        | FdKind::DevNull => Err(RingFault::NotMemfd),
        FdKind::Again => unreachable!("resolved"),
    }
}

/// Slots 1 and 2, the waiters (§2.6 steps 8.4-8.5): an epoll instance our own epoll can
/// watch, with a level left for the caller's event loop over ours. What /proc shows for
/// anything else.
fn waiter_verdict(kind: FdKind) -> Result<(), RingFault> {
    Err(RingFault::NotEpoll(match kind {
        FdKind::Epoll | FdKind::Epoll3 => return Ok(()),
        FdKind::Epoll4 => return Err(RingFault::TooDeep("nested so deeply")),
        FdKind::Epoll5 => return Err(RingFault::TooDeep("cannot be watched")),
        FdKind::Eventfd | FdKind::SemaphoreEventfd => "anon_inode:[eventfd]",
        FdKind::Pipe => "pipe:[",
        FdKind::Socket => "socket:[",
        FdKind::DiskFile => "/tmp/",
        FdKind::ShmFile => "/dev/shm/",
        FdKind::DevNull => "/dev/null",
        FdKind::Again => unreachable!("resolved"),
        _ => "/memfd:rogue",
    }))
}

// ---------------------------------------------------------------------------------------------
// What a rogue does at each step, and what the real side must answer

/// Another well-formed packet than the one expected.
#[derive(Debug, Clone)]
pub enum Other {
    /// The rogue's HELLO, saying it has this role.
    Hello(Role),
    /// A RING for the rogue's ring.
    Ring,
    /// READY.
    Ready,
    /// A REJECT with this code and reason.
    Reject(u32, String),
}

/// What the rogue does at one step.
#[derive(Debug, Clone)]
pub enum Act {
    /// The packet a correct peer sends here.
    Right,
    /// That packet with one change.
    Mutated(Mutation),
    /// A well-formed packet of another kind (or a HELLO of the wrong role).
    Other(Other),
    /// Anything.
    Bytes(Vec<u8>),
    /// Nothing: the real side's deadline must end it.
    Silent,
    /// Hang up.
    Close,
}

/// One step of a rogue: what it does, and the fds that go with the packet.
#[derive(Debug, Clone)]
pub struct Step {
    /// What it sends (or does instead).
    pub act: Act,
    /// The fds sent with the packet.
    pub fds: Vec<FdKind>,
    /// How they travel.
    pub cmsg: Cmsg,
}

/// How the fds travel: in how many `SCM_RIGHTS` messages (the kernel merges them into one
/// list), and whether an `SCM_CREDENTIALS` message rides along (faults.md S4; the kernel does
/// not deliver it to a socket without `SO_PASSCRED`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cmsg {
    /// How many `SCM_RIGHTS` messages the fds are split over.
    pub groups: usize,
    /// Whether an `SCM_CREDENTIALS` message rides along.
    pub creds: bool,
}

/// All fds in one `SCM_RIGHTS` message, and nothing else: what a correct peer sends.
pub const ONE_MESSAGE: Cmsg = Cmsg {
    groups: 1,
    creds: false,
};

/// What the rogue sends at one step, decided before anything runs.
#[derive(Debug, Clone)]
pub enum Emit {
    /// These bytes, with fds of these kinds, travelling so.
    Packet(Vec<u8>, Vec<FdKind>, Cmsg),
    /// Nothing.
    Silent,
    /// Hang up.
    Close,
}

/// The rogue's whole part: what it sends at each step, and the rings it believes in.
#[derive(Debug, Clone)]
pub struct Script {
    /// What it sends at each step: HELLO, RING and (a client) READY.
    pub steps: Vec<Emit>,
    /// The rogue's plan (its `ours` is what it produces into), if its HELLO negotiates.
    pub plan: Option<Plan>,
}

/// A ring for packets and fds sent where no plan exists.
pub const NO_PLAN: RingDesc = RingDesc {
    capacity: 4096,
    max_message: 1024,
};

fn send_of(step: &Step, right: &[u8], hello: &Hello, desc: RingDesc) -> Emit {
    let bytes = match &step.act {
        Act::Right => right.to_vec(),
        Act::Mutated(m) => apply(m, right.to_vec()),
        Act::Other(Other::Hello(role)) => Hello {
            role: *role,
            ..*hello
        }
        .encode()
        .to_vec(),
        Act::Other(Other::Ring) => desc.encode().to_vec(),
        Act::Other(Other::Ready) => wire::encode_ready().to_vec(),
        Act::Other(Other::Reject(code, reason)) => wire::encode_reject(RejectCode(*code), reason),
        Act::Bytes(b) => b.clone(),
        Act::Silent => return Emit::Silent,
        Act::Close => return Emit::Close,
    };
    Emit::Packet(bytes, step.fds.clone(), step.cmsg)
}

/// The rogue's script: its HELLO (`hello`, as `steps[0]` changes it), then its RING for the
/// plan that HELLO negotiates with `peer` (the real side's HELLO), then (a client) READY.
pub fn script(hello: &Hello, peer: &Hello, steps: &[Step]) -> Script {
    let first = send_of(&steps[0], &hello.encode(), hello, NO_PLAN);
    let plan = match &first {
        Emit::Packet(b, ..) => match model_decode(b) {
            Ok(Packet::Hello(sent)) => model_negotiate(&sent, peer).ok(),
            _ => None,
        },
        _ => None,
    };
    let desc = plan.map_or(NO_PLAN, |p| p.ours);
    let mut sends = vec![first, send_of(&steps[1], &desc.encode(), hello, desc)];
    if let Some(s) = steps.get(2) {
        sends.push(send_of(s, &wire::encode_ready(), hello, desc));
    }
    Script { steps: sends, plan }
}

/// How a handshake must fail at a step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// `Wire`: the packet does not decode, with this error.
    Wire(WireError),
    /// `TooLong`: longer than any packet.
    TooLong,
    /// `Rejected`: the rogue sent a REJECT.
    Rejected {
        /// Its code.
        code: u32,
        /// Its reason.
        reason: String,
    },
    /// `Unexpected`: a packet of this kind where another was expected.
    Unexpected(&'static str),
    /// `FdCount`: the wrong number of fds with the packet.
    FdCount {
        /// What the packet carries: 3 with a RING, none with anything else.
        expected: usize,
        /// How many were sent.
        got: usize,
    },
    /// More fds than the receiver has room for (8, §2.1): `FdsTruncated` with the 8 that
    /// arrived, all closed.
    Truncated {
        /// How many were sent.
        sent: usize,
    },
    /// `Incompatible`, with a message containing these words.
    Incompatible(Vec<String>),
    /// `BadRing`: the RING's fds do not make a ring (§2.6 step 8).
    BadRing(RingFault),
    /// `Timeout`: the rogue stayed silent.
    Timeout,
    /// `PeerClosed`: the rogue hung up.
    PeerClosed,
}

/// How a handshake with a rogue must end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A connection.
    Connects,
    /// An error.
    Fails {
        /// The packet the real side was waiting for: "HELLO", "RING" or "READY".
        waiting_for: &'static str,
        /// What it must report.
        fault: Fault,
    },
}

/// §2.6 steps 1-6 for one packet and its fds: the packet, or how it must be refused.
fn judge(send: &Emit, expected: Kind) -> Result<Packet, Fault> {
    let (bytes, kinds) = match send {
        Emit::Packet(b, k, _) => (b, k),
        Emit::Silent => return Err(Fault::Timeout),
        Emit::Close => return Err(Fault::PeerClosed),
    };
    let sent = kinds.len();
    let judged = (|| {
        if bytes.len() > wire::MAX_PACKET {
            return Err(Fault::TooLong);
        }
        let p = model_decode(bytes).map_err(Fault::Wire)?;
        if let Packet::Reject { code, reason } = p {
            return Err(Fault::Rejected {
                code: code.0,
                reason,
            });
        }
        if p.kind() != expected {
            return Err(Fault::Unexpected(p.kind().name()));
        }
        let want = if expected == Kind::Ring { 3 } else { 0 };
        if sent != want {
            return Err(Fault::FdCount {
                expected: want,
                got: sent,
            });
        }
        Ok(p)
    })();
    // §2.1: the receiver offers room for exactly 8 fds; a 9th truncates.
    match sent {
        0..=8 => judged,
        _ => Err(Fault::Truncated { sent }),
    }
}

/// §2.6 step 8: a RING describing `desc` with fds of `kinds` (3 of them), received by a side
/// whose plan says the peer's ring is `theirs`.
fn ring_verdict(desc: RingDesc, theirs: RingDesc, kinds: &[FdKind]) -> Result<(), Fault> {
    if desc != theirs {
        return Err(Fault::Incompatible(words(&[
            &"negotiated",
            &format!("{}-byte ring", desc.capacity),
        ])));
    }
    let k = resolve(kinds);
    memfd_verdict(k[0], theirs).map_err(Fault::BadRing)?;
    waiter_verdict(k[1]).map_err(Fault::BadRing)?;
    if k[0] == FdKind::TakenMemfd {
        return Err(Fault::BadRing(RingFault::RoleTaken));
    }
    waiter_verdict(k[2]).map_err(Fault::BadRing)
}

/// What the real side, `real` (its HELLO), must answer to the rogue's `script`.
pub fn expect(script: &Script, real: &Hello) -> Outcome {
    let fails = |waiting_for, fault| Outcome::Fails { waiting_for, fault };
    let rogue_role = match real.role {
        Role::Client => "Server",
        Role::Server => "Client",
    };
    let h = match judge(&script.steps[0], Kind::Hello) {
        Ok(Packet::Hello(h)) => h,
        Ok(p) => unreachable!("{p:?}"),
        Err(f) => return fails("HELLO", f),
    };
    if format!("{:?}", h.role) != rogue_role {
        let w = words(&[&format!("says it is a {:?}", h.role)]);
        return fails("HELLO", Fault::Incompatible(w));
    }
    let plan = match model_negotiate(real, &h) {
        Ok(p) => p,
        Err(w) => return fails("HELLO", Fault::Incompatible(w)),
    };
    let desc = match judge(&script.steps[1], Kind::Ring) {
        Ok(Packet::Ring(d)) => d,
        Ok(p) => unreachable!("{p:?}"),
        Err(f) => return fails("RING", f),
    };
    let Emit::Packet(_, kinds, _) = &script.steps[1] else {
        unreachable!("judged a packet")
    };
    if let Err(f) = ring_verdict(desc, plan.theirs, kinds) {
        return fails("RING", f);
    }
    if let Some(ready) = script.steps.get(2)
        && let Err(f) = judge(ready, Kind::Ready)
    {
        return fails("READY", f);
    }
    Outcome::Connects
}

/// Does `got` say what `want` says, at `waiting_for`?
pub fn check_fault(want: &Fault, waiting_for: &str, got: &HandshakeError) -> Result<(), String> {
    let ok = match (want, got) {
        (
            Fault::Wire(w),
            HandshakeError::Wire {
                waiting_for: s,
                source,
            },
        ) => *s == waiting_for && source == w,
        (Fault::TooLong, HandshakeError::TooLong { waiting_for: s }) => *s == waiting_for,
        (Fault::Rejected { code, reason }, HandshakeError::Rejected { code: c, reason: r }) => {
            c.0 == *code && r == reason
        }
        (Fault::Unexpected(kind), HandshakeError::Unexpected { expected, got }) => {
            *expected == waiting_for && got == kind
        }
        (
            Fault::FdCount { expected, got },
            HandshakeError::FdCount {
                waiting_for: s,
                expected: e,
                got: g,
            },
        ) => *s == waiting_for && e == expected && g == got,
        (
            Fault::Truncated { sent },
            HandshakeError::FdsTruncated {
                waiting_for: s,
                got,
            },
        ) => *s == waiting_for && *got == 8 && got < sent,
        (Fault::Incompatible(w), HandshakeError::Incompatible(i)) => {
            let msg = i.to_string();
            w.iter().all(|w| msg.contains(w.as_str()))
        }
        (Fault::BadRing(f), HandshakeError::BadRing(e)) => match (f, e) {
            (RingFault::NotMemfd, SetupError::NotMemfd) => true,
            (RingFault::Seals, SetupError::Seals { .. }) => true,
            (
                RingFault::Size { expected, actual },
                SetupError::SizeMismatch {
                    expected: e,
                    actual: a,
                },
            ) => e == expected && a == actual,
            (RingFault::Header(w), SetupError::HeaderMismatch { what, .. }) => what == w,
            (RingFault::Corrupted, SetupError::Corrupted(_)) => true,
            (RingFault::NotEpoll(w), SetupError::BadWaiter { why }) => {
                why.contains(w) && why.contains("not an epoll instance")
            }
            (RingFault::TooDeep(w), SetupError::BadWaiter { why }) => why.contains(w),
            (RingFault::RoleTaken, SetupError::RoleTaken(r)) => *r == "consumer",
            _ => false,
        },
        (Fault::Timeout, HandshakeError::Timeout { waiting_for: s, .. }) => *s == waiting_for,
        (Fault::PeerClosed, HandshakeError::PeerClosed { waiting_for: s }) => *s == waiting_for,
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "expected {want:?} while waiting for the {waiting_for}, got {got:?} ({got})"
        ))
    }
}

/// The REJECT code docs/protocol.md §2.3 and §2.6 give for an error; `None`: no REJECT (the
/// peer is gone, or it gave up first).
pub fn reject_code_for(e: &HandshakeError) -> Option<u32> {
    Some(match e {
        HandshakeError::Wire {
            source: WireError::Version(_),
            ..
        } => 1,
        HandshakeError::Wire { .. }
        | HandshakeError::TooLong { .. }
        | HandshakeError::Unexpected { .. }
        | HandshakeError::FdCount { .. }
        | HandshakeError::FdsTruncated { .. } => 4,
        HandshakeError::Incompatible(_) => 3,
        HandshakeError::BadRing(_) => 5,
        HandshakeError::Timeout { .. } => 7,
        HandshakeError::Rejected { .. } | HandshakeError::PeerClosed { .. } => return None,
        e => panic!("no fault of this suite gives {e}"),
    })
}
