//! The handshake's packets, byte for byte (docs/protocol.md §2), and the negotiation rule.
//!
//! Pure functions: no I/O, no allocation except a reject's reason text. A peer written in
//! another language needs docs/protocol.md; a hostile peer written in Rust (tests, fuzzing)
//! can use these encoders to get everything right except the one field it wants wrong.

use std::fmt;

use shmpipe_ring::layout::{self, ShapeError};

/// First four bytes of every packet: ASCII `"SHMH"`.
pub const MAGIC: [u8; 4] = *b"SHMH";
/// Handshake protocol version, bytes 4..6 of every packet. Peers must agree exactly.
pub const VERSION: u16 = 1;
/// Length of the common packet header (magic, version, kind).
pub const HEADER_LEN: usize = 8;
/// Length of a HELLO packet.
pub const HELLO_LEN: usize = 64;
/// Length of a RING packet (its three fds travel in its one `SCM_RIGHTS` message).
pub const RING_LEN: usize = 32;
/// Length of a READY packet.
pub const READY_LEN: usize = HEADER_LEN;
/// Shortest REJECT packet (header and code, empty reason).
pub const REJECT_MIN_LEN: usize = 12;
/// Longest packet a peer may send; anything longer is an error.
pub const MAX_PACKET: usize = 256;
/// Longest reason text in a REJECT packet, in bytes.
pub const MAX_REASON: usize = MAX_PACKET - REJECT_MIN_LEN;
/// The fds that travel with a RING packet, in this order: the memfd of the ring the sender
/// produces into, the waiter (epoll fd) of the bell it rings as that ring's producer, and the
/// waiter of the bell it rings as the consumer of the receiver's ring.
pub const RING_FDS: usize = 3;

/// Packet kinds (bytes 6..8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum Kind {
    /// Each side's proposal; first packet in each direction.
    Hello = 1,
    /// The ring the sender will produce into; carries three fds ([`RING_FDS`]).
    Ring = 2,
    /// The client accepts the server's ring; last packet of the handshake.
    Ready = 3,
    /// The sender gives up; a code and a reason follow.
    Reject = 4,
}

impl Kind {
    fn from_u16(v: u16) -> Option<Kind> {
        Some(match v {
            1 => Kind::Hello,
            2 => Kind::Ring,
            3 => Kind::Ready,
            4 => Kind::Reject,
            _ => return None,
        })
    }

    /// The packet's name as the docs write it.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Hello => "HELLO",
            Kind::Ring => "RING",
            Kind::Ready => "READY",
            Kind::Reject => "REJECT",
        }
    }
}

/// Which end of the socket a HELLO comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Role {
    /// The side that called `connect`.
    Client = 1,
    /// The side that accepted.
    Server = 2,
}

/// One side's proposal: what it will produce, what it wants to receive, what it accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hello {
    /// Who sends this hello.
    pub role: Role,
    /// The ring layout version (docs/protocol.md §1) the sender speaks.
    pub ring_version: u32,
    /// Capacity the sender wants for the ring it produces into: a power of two.
    pub send_capacity: u64,
    /// Largest message the sender will send; 0 means a quarter of the final capacity.
    pub max_message: u64,
    /// Least capacity the sender wants for the ring it consumes; 0 means no wish.
    pub recv_capacity: u64,
    /// Largest capacity the sender will create or map.
    pub max_ring: u64,
}

/// The numbers that travel with a RING packet's fds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingDesc {
    /// Data capacity in bytes (the memfd is `DATA_OFFSET + capacity` bytes).
    pub capacity: u64,
    /// Largest message in bytes, as written in the ring's header.
    pub max_message: u64,
}

/// Why a side gave up, as sent in a REJECT packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RejectCode(pub u32);

impl RejectCode {
    /// The peer speaks another handshake or ring layout version.
    pub const VERSION: RejectCode = RejectCode(1);
    /// The peer's credentials are not allowed by the policy.
    pub const NOT_PERMITTED: RejectCode = RejectCode(2);
    /// The proposals cannot be reconciled (capacities, limits).
    pub const INCOMPATIBLE: RejectCode = RejectCode(3);
    /// A malformed or unexpected packet.
    pub const PROTOCOL: RejectCode = RejectCode(4);
    /// The ring's fds or header failed validation.
    pub const BAD_RING: RejectCode = RejectCode(5);
    /// The sender failed on its own side (out of memory, fds, ...).
    pub const INTERNAL: RejectCode = RejectCode(6);
    /// The sender's handshake deadline passed.
    pub const TIMEOUT: RejectCode = RejectCode(7);
}

impl fmt::Display for RejectCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match *self {
            RejectCode::VERSION => "version",
            RejectCode::NOT_PERMITTED => "not permitted",
            RejectCode::INCOMPATIBLE => "incompatible",
            RejectCode::PROTOCOL => "protocol",
            RejectCode::BAD_RING => "bad ring",
            RejectCode::INTERNAL => "internal",
            RejectCode::TIMEOUT => "timeout",
            _ => return write!(f, "code {}", self.0),
        };
        f.write_str(name)
    }
}

/// A decoded packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    /// See [`Hello`].
    Hello(Hello),
    /// See [`RingDesc`].
    Ring(RingDesc),
    /// The handshake is complete.
    Ready,
    /// The peer gave up.
    Reject {
        /// Why, as a code.
        code: RejectCode,
        /// Why, in words (UTF-8, decoded lossily).
        reason: String,
    },
}

impl Packet {
    /// The packet's kind.
    pub fn kind(&self) -> Kind {
        match self {
            Packet::Hello(_) => Kind::Hello,
            Packet::Ring(_) => Kind::Ring,
            Packet::Ready => Kind::Ready,
            Packet::Reject { .. } => Kind::Reject,
        }
    }
}

/// What is wrong with a packet's bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// Shorter than the 8-byte header.
    #[error("packet of {0} bytes is shorter than the 8-byte header")]
    Short(usize),
    /// The first four bytes are not `"SHMH"`.
    #[error("bad magic {0:02x?} (not a shmpipe peer)")]
    Magic([u8; 4]),
    /// Another handshake version.
    #[error("handshake version {0}, this side speaks {VERSION}")]
    Version(u16),
    /// An unknown kind.
    #[error("unknown packet kind {0}")]
    Kind(u16),
    /// The length does not match the kind.
    #[error("{kind} packet of {len} bytes, expected {expected}")]
    Length {
        /// The packet's kind name.
        kind: &'static str,
        /// Its length.
        len: usize,
        /// The length its kind requires (the minimum for REJECT).
        expected: usize,
    },
    /// A reserved byte is not zero.
    #[error("reserved byte {offset} of a {kind} packet is {value:#04x}, must be 0")]
    Reserved {
        /// The packet's kind name.
        kind: &'static str,
        /// Offset of the first non-zero reserved byte.
        offset: usize,
        /// Its value.
        value: u8,
    },
    /// A HELLO with an unknown role.
    #[error("unknown role {0} in HELLO")]
    Role(u8),
}

fn header(kind: Kind, out: &mut [u8]) {
    out[0..4].copy_from_slice(&MAGIC);
    out[4..6].copy_from_slice(&VERSION.to_le_bytes());
    out[6..8].copy_from_slice(&(kind as u16).to_le_bytes());
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().expect("8 bytes"))
}

fn check_reserved(kind: Kind, b: &[u8], range: std::ops::Range<usize>) -> Result<(), WireError> {
    for off in range {
        if b[off] != 0 {
            return Err(WireError::Reserved {
                kind: kind.name(),
                offset: off,
                value: b[off],
            });
        }
    }
    Ok(())
}

impl Hello {
    /// The 64 bytes on the wire.
    pub fn encode(&self) -> [u8; HELLO_LEN] {
        let mut b = [0u8; HELLO_LEN];
        header(Kind::Hello, &mut b);
        b[8] = self.role as u8;
        b[12..16].copy_from_slice(&self.ring_version.to_le_bytes());
        b[16..24].copy_from_slice(&self.send_capacity.to_le_bytes());
        b[24..32].copy_from_slice(&self.max_message.to_le_bytes());
        b[32..40].copy_from_slice(&self.recv_capacity.to_le_bytes());
        b[40..48].copy_from_slice(&self.max_ring.to_le_bytes());
        b
    }
}

impl RingDesc {
    /// The 32 bytes on the wire (the fds travel beside them).
    pub fn encode(&self) -> [u8; RING_LEN] {
        let mut b = [0u8; RING_LEN];
        header(Kind::Ring, &mut b);
        b[8..16].copy_from_slice(&self.capacity.to_le_bytes());
        b[16..24].copy_from_slice(&self.max_message.to_le_bytes());
        b
    }
}

/// The 8 bytes of a READY packet.
pub fn encode_ready() -> [u8; READY_LEN] {
    let mut b = [0u8; READY_LEN];
    header(Kind::Ready, &mut b);
    b
}

/// A REJECT packet; `reason` is cut to [`MAX_REASON`] bytes at a character boundary.
pub fn encode_reject(code: RejectCode, reason: &str) -> Vec<u8> {
    let mut end = reason.len().min(MAX_REASON);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut b = vec![0u8; REJECT_MIN_LEN + end];
    header(Kind::Reject, &mut b);
    b[8..12].copy_from_slice(&code.0.to_le_bytes());
    b[12..].copy_from_slice(&reason.as_bytes()[..end]);
    b
}

/// Decode one packet. Checks the header, the exact length of the kind and that reserved
/// bytes are zero; the numbers inside are checked by [`negotiate`] and the caller.
///
/// # Errors
///
/// A [`WireError`] naming the first thing wrong.
pub fn decode(b: &[u8]) -> Result<Packet, WireError> {
    if b.len() < HEADER_LEN {
        return Err(WireError::Short(b.len()));
    }
    let magic: [u8; 4] = b[0..4].try_into().expect("4 bytes");
    if magic != MAGIC {
        return Err(WireError::Magic(magic));
    }
    let version = u16::from_le_bytes([b[4], b[5]]);
    if version != VERSION {
        return Err(WireError::Version(version));
    }
    let raw_kind = u16::from_le_bytes([b[6], b[7]]);
    let kind = Kind::from_u16(raw_kind).ok_or(WireError::Kind(raw_kind))?;
    let exact = |expected: usize| {
        if b.len() == expected {
            Ok(())
        } else {
            Err(WireError::Length {
                kind: kind.name(),
                len: b.len(),
                expected,
            })
        }
    };
    match kind {
        Kind::Hello => {
            exact(HELLO_LEN)?;
            let role = match b[8] {
                1 => Role::Client,
                2 => Role::Server,
                r => return Err(WireError::Role(r)),
            };
            check_reserved(kind, b, 9..12)?;
            check_reserved(kind, b, 48..64)?;
            Ok(Packet::Hello(Hello {
                role,
                ring_version: u32_at(b, 12),
                send_capacity: u64_at(b, 16),
                max_message: u64_at(b, 24),
                recv_capacity: u64_at(b, 32),
                max_ring: u64_at(b, 40),
            }))
        }
        Kind::Ring => {
            exact(RING_LEN)?;
            check_reserved(kind, b, 24..32)?;
            Ok(Packet::Ring(RingDesc {
                capacity: u64_at(b, 8),
                max_message: u64_at(b, 16),
            }))
        }
        Kind::Ready => {
            exact(READY_LEN)?;
            Ok(Packet::Ready)
        }
        Kind::Reject => {
            if !(REJECT_MIN_LEN..=MAX_PACKET).contains(&b.len()) {
                return Err(WireError::Length {
                    kind: kind.name(),
                    len: b.len(),
                    expected: REJECT_MIN_LEN,
                });
            }
            Ok(Packet::Reject {
                code: RejectCode(u32_at(b, 8)),
                reason: String::from_utf8_lossy(&b[12..]).into_owned(),
            })
        }
    }
}

/// The two rings of a connection, as both sides compute them from the two HELLOs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// The ring this side creates and produces into.
    pub ours: RingDesc,
    /// The ring the peer creates and this side consumes.
    pub theirs: RingDesc,
}

/// Check a HELLO's numbers on their own: ring layout version, capacities, maximum message.
///
/// # Errors
///
/// Which number is impossible.
pub fn check_hello(h: &Hello) -> Result<(), HelloError> {
    if h.ring_version != layout::VERSION {
        return Err(HelloError::RingVersion(h.ring_version));
    }
    // In the order of docs/protocol.md §2.4: the capacities, then the maximum message (0
    // means "a quarter of the final capacity", always within the limit).
    layout::check_capacity(h.send_capacity).map_err(HelloError::SendCapacity)?;
    if h.recv_capacity != 0 {
        layout::check_capacity(h.recv_capacity).map_err(HelloError::RecvCapacity)?;
    }
    layout::check_shape(h.send_capacity, h.max_message).map_err(HelloError::Shape)?;
    Ok(())
}

/// A number of a HELLO that no ring can have ([`check_hello`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HelloError {
    /// A ring layout version this side does not speak.
    #[error("ring layout version {0}, this side speaks {v}", v = layout::VERSION)]
    RingVersion(u32),
    /// The capacity of the ring the sender would produce into.
    #[error("send {0}")]
    SendCapacity(#[source] ShapeError),
    /// The receive capacity asked for.
    #[error("receive {0}")]
    RecvCapacity(#[source] ShapeError),
    /// The maximum message does not fit the send capacity.
    #[error("{0}")]
    Shape(#[source] ShapeError),
}

/// Whose HELLO, whose ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Whose {
    /// This side's.
    Ours,
    /// The peer's.
    Peers,
}

impl fmt::Display for Whose {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Whose::Ours => "our",
            Whose::Peers => "the peer's",
        })
    }
}

/// Why two HELLOs cannot be reconciled, or the peer's RING is not what they agreed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Incompatibility {
    /// A HELLO has an impossible number.
    #[error("{whose} HELLO: {error}")]
    Hello {
        /// Whose HELLO.
        whose: Whose,
        /// What is wrong with it.
        #[source]
        error: HelloError,
    },
    /// A ring would be larger than one side accepts (its `max_ring`).
    #[error(
        "{ring} ring would be {capacity} bytes, above the {limit}-byte limit (max_ring) of its \
         {limited_by}"
    )]
    RingTooLarge {
        /// Whose ring (who produces into it).
        ring: Whose,
        /// The capacity the rule gives it.
        capacity: u64,
        /// The smaller limit.
        limit: u64,
        /// Which end of that ring has the limit: `"producer"` or `"consumer"`.
        limited_by: &'static str,
    },
    /// The peer's HELLO names the wrong role (two clients, or two servers).
    #[error("the peer's HELLO says it is a {got:?}, expected a {expected:?}")]
    Role {
        /// The role it says it has.
        got: Role,
        /// The role it must have.
        expected: Role,
    },
    /// The peer's RING describes another ring than the negotiated one.
    #[error(
        "the peer's RING describes a {}-byte ring with {}-byte messages; the negotiated ring \
         is {} bytes with {}-byte messages",
        got.capacity, got.max_message, negotiated.capacity, negotiated.max_message
    )]
    Ring {
        /// What its RING says.
        got: RingDesc,
        /// What both sides computed.
        negotiated: RingDesc,
    },
}

impl Incompatibility {
    /// The same, told to the peer ("your" where we say "the peer's").
    pub fn for_peer(&self) -> String {
        let you = |w: Whose| match w {
            Whose::Ours => "the other side's",
            Whose::Peers => "your",
        };
        match self {
            Incompatibility::Hello { whose, error } => format!("{} HELLO: {error}", you(*whose)),
            Incompatibility::RingTooLarge {
                ring,
                capacity,
                limit,
                limited_by,
            } => format!(
                "{} ring would be {capacity} bytes, above the {limit}-byte limit (max_ring) \
                 of its {limited_by}",
                you(*ring)
            ),
            Incompatibility::Role { got, expected } => {
                format!("your HELLO says you are a {got:?}, expected a {expected:?}")
            }
            Incompatibility::Ring { got, negotiated } => format!(
                "your RING describes a {}-byte ring with {}-byte messages; the negotiated ring \
                 is {} bytes with {}-byte messages",
                got.capacity, got.max_message, negotiated.capacity, negotiated.max_message
            ),
        }
    }
}

/// The ring `producer` creates for `consumer`: capacity `max(producer.send_capacity,
/// consumer.recv_capacity)`, within both sides' `max_ring`; max message as the producer asked,
/// or a quarter of the capacity.
fn ring_for(producer: &Hello, consumer: &Hello, ring: Whose) -> Result<RingDesc, Incompatibility> {
    let capacity = producer.send_capacity.max(consumer.recv_capacity);
    for (limited_by, limit) in [
        ("producer", producer.max_ring),
        ("consumer", consumer.max_ring),
    ] {
        if capacity > limit {
            return Err(Incompatibility::RingTooLarge {
                ring,
                capacity,
                limit,
                limited_by,
            });
        }
    }
    let max_message = match producer.max_message {
        0 => layout::default_max_message(capacity as usize) as u64,
        m => m,
    };
    Ok(RingDesc {
        capacity,
        max_message,
    })
}

/// Compute both rings from our HELLO and the peer's. Both sides run the same rule on the same
/// two packets, so they agree without another round trip.
///
/// # Errors
///
/// What cannot be reconciled.
pub fn negotiate(ours: &Hello, peer: &Hello) -> Result<Plan, Incompatibility> {
    let hello = |whose| move |error| Incompatibility::Hello { whose, error };
    check_hello(peer).map_err(hello(Whose::Peers))?;
    check_hello(ours).map_err(hello(Whose::Ours))?;
    Ok(Plan {
        ours: ring_for(ours, peer, Whose::Ours)?,
        theirs: ring_for(peer, ours, Whose::Peers)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(role: Role) -> Hello {
        Hello {
            role,
            ring_version: layout::VERSION,
            send_capacity: 1 << 16,
            max_message: 0,
            recv_capacity: 0,
            max_ring: 1 << 20,
        }
    }

    #[test]
    fn round_trips() {
        let h = Hello {
            max_message: 1000,
            recv_capacity: 1 << 12,
            ..hello(Role::Server)
        };
        assert_eq!(decode(&h.encode()), Ok(Packet::Hello(h)));
        let r = RingDesc {
            capacity: 4096,
            max_message: 77,
        };
        assert_eq!(decode(&r.encode()), Ok(Packet::Ring(r)));
        assert_eq!(decode(&encode_ready()), Ok(Packet::Ready));
        let rej = encode_reject(RejectCode::BAD_RING, "nope");
        assert_eq!(
            decode(&rej),
            Ok(Packet::Reject {
                code: RejectCode::BAD_RING,
                reason: "nope".into()
            })
        );
    }

    #[test]
    fn hello_bytes_are_as_documented() {
        let b = hello(Role::Client).encode();
        assert_eq!(&b[..8], b"SHMH\x01\x00\x01\x00");
        assert_eq!(b[8], 1);
        assert_eq!(&b[12..16], &2u32.to_le_bytes());
        assert_eq!(&b[16..24], &65536u64.to_le_bytes());
        assert_eq!(&b[40..48], &(1u64 << 20).to_le_bytes());
        assert!(b[48..].iter().all(|&x| x == 0));
    }

    #[test]
    fn rejects_malformed() {
        let h = hello(Role::Client).encode();
        assert_eq!(decode(&h[..5]), Err(WireError::Short(5)));
        let mut bad = h;
        bad[0] = b'X';
        assert!(matches!(decode(&bad), Err(WireError::Magic(_))));
        let mut bad = h;
        bad[4] = 2;
        assert_eq!(decode(&bad), Err(WireError::Version(2)));
        let mut bad = h;
        bad[6] = 9;
        assert_eq!(decode(&bad), Err(WireError::Kind(9)));
        assert!(matches!(
            decode(&h[..63]),
            Err(WireError::Length { expected: 64, .. })
        ));
        let mut bad = h;
        bad[60] = 1;
        assert!(matches!(
            decode(&bad),
            Err(WireError::Reserved { offset: 60, .. })
        ));
        let mut bad = h;
        bad[8] = 3;
        assert_eq!(decode(&bad), Err(WireError::Role(3)));
        let mut long = encode_reject(RejectCode::PROTOCOL, "x").to_vec();
        long.resize(MAX_PACKET + 1, b'x');
        assert!(decode(&long).is_err());
    }

    #[test]
    fn reject_reason_is_cut_at_a_char_boundary() {
        let reason = "é".repeat(200);
        let b = encode_reject(RejectCode::INTERNAL, &reason);
        assert!(b.len() <= MAX_PACKET);
        let Ok(Packet::Reject { reason: r, .. }) = decode(&b) else {
            panic!("not a reject")
        };
        assert!(reason.starts_with(&r) && !r.is_empty());
    }

    #[test]
    fn negotiation_takes_the_larger_wish_within_limits() {
        let c = Hello {
            send_capacity: 1 << 12,
            recv_capacity: 1 << 18,
            ..hello(Role::Client)
        };
        let s = hello(Role::Server);
        let pc = negotiate(&c, &s).unwrap();
        let ps = negotiate(&s, &c).unwrap();
        assert_eq!(pc.ours, ps.theirs);
        assert_eq!(pc.theirs, ps.ours);
        assert_eq!(pc.ours.capacity, 1 << 12);
        assert_eq!(pc.ours.max_message, 1 << 10);
        assert_eq!(pc.theirs.capacity, 1 << 18);
        let greedy = Hello {
            recv_capacity: 1 << 21,
            ..c
        };
        let e = negotiate(&s, &greedy).unwrap_err();
        assert_eq!(
            e,
            Incompatibility::RingTooLarge {
                ring: Whose::Ours,
                capacity: 1 << 21,
                limit: 1 << 20,
                limited_by: "producer",
            }
        );
        assert!(
            e.to_string().contains("our ring would be 2097152 bytes"),
            "{e}"
        );
    }

    #[test]
    fn negotiation_checks_the_peers_numbers() {
        let s = hello(Role::Server);
        for bad in [
            Hello {
                send_capacity: 100,
                ..hello(Role::Client)
            },
            Hello {
                send_capacity: 32,
                ..hello(Role::Client)
            },
            Hello {
                recv_capacity: 3,
                ..hello(Role::Client)
            },
            Hello {
                max_message: 1 << 15,
                ..hello(Role::Client)
            },
            Hello {
                ring_version: 9,
                ..hello(Role::Client)
            },
        ] {
            assert!(negotiate(&s, &bad).is_err(), "{bad:?}");
        }
    }
}
