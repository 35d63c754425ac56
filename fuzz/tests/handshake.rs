//! Suite 3, "Handshake bytes", its pure half: arbitrary byte strings, packets and HELLOs
//! against the handshake's parser and negotiation.
//!
//! The expected answer is decided independently, from docs/protocol.md §2, by
//! `shmpipe_fuzz::handshake_model` (a decoder written from §2.2-2.3 and the negotiation of
//! §2.4): `wire::decode` answers every byte string exactly as that decoder does (never a
//! panic), every packet round-trips, a HELLO with one bad field is refused with the error that
//! names the field, and `wire::negotiate` plans the rings §2.4 describes.
//!
//! The live half, a rogue peer over real sockets, is `handshake_live.rs`.
//!
//! The short setting (CI) runs a few thousand cases per property; `SHMPIPE_FUZZ_CASES=N` runs
//! N. Shrunk failures are kept in `proptest-regressions/handshake.txt` (shared with the live
//! half) and replayed first.

use std::fmt::Debug;

use proptest::prelude::*;
use shmpipe_fuzz::handshake_gen::{
    apply, interesting_u64, mutation, packet_like, pick_max_message, property,
};
use shmpipe_fuzz::handshake_model::{MAX_CAP, cap_ok, model_decode, model_negotiate, words};
use shmpipe_handshake::wire::{
    self, Hello, Incompatibility, Packet, RejectCode, RingDesc, Role, Whose, WireError,
};
use shmpipe_ring::layout;

// ---------------------------------------------------------------------------------------------
// Packets, and what an error must say

fn encode(p: &Packet) -> Vec<u8> {
    match p {
        Packet::Hello(h) => h.encode().to_vec(),
        Packet::Ring(r) => r.encode().to_vec(),
        Packet::Ready => wire::encode_ready().to_vec(),
        Packet::Reject { code, reason } => wire::encode_reject(*code, reason),
    }
}

fn assert_words(msg: &str, words: &[String], ctx: &dyn Debug) {
    for w in words {
        assert!(
            msg.contains(w.as_str()),
            "{msg:?} does not say {w:?} ({ctx:?})"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Strategies for packets

fn any_hello() -> impl Strategy<Value = Hello> {
    (
        prop_oneof![Just(Role::Client), Just(Role::Server)],
        prop_oneof![8 => Just(layout::VERSION), 1 => Just(layout::VERSION - 1), 1 => any::<u32>()],
        prop_oneof![8 => (6u32..=30).prop_map(|s| 1u64 << s), 2 => interesting_u64()],
        prop_oneof![3 => Just(0u64), 3 => 0u64..=1 << 20, 1 => interesting_u64()],
        prop_oneof![
            6 => Just(0u64),
            3 => (6u32..=30).prop_map(|s| 1u64 << s),
            1 => interesting_u64()
        ],
        prop_oneof![8 => (6u32..=30).prop_map(|s| 1u64 << s), 2 => interesting_u64()],
    )
        .prop_map(
            |(role, ring_version, send_capacity, max_message, recv_capacity, max_ring)| Hello {
                role,
                ring_version,
                send_capacity,
                max_message,
                recv_capacity,
                max_ring,
            },
        )
}

fn any_packet() -> impl Strategy<Value = Packet> {
    prop_oneof![
        any_hello().prop_map(Packet::Hello),
        (interesting_u64(), interesting_u64()).prop_map(|(capacity, max_message)| {
            Packet::Ring(RingDesc {
                capacity,
                max_message,
            })
        }),
        Just(Packet::Ready),
        (any::<u32>(), ".{0,300}").prop_map(|(code, reason)| Packet::Reject {
            code: RejectCode(code),
            reason,
        }),
    ]
}

// ---------------------------------------------------------------------------------------------
// Pure properties

fn decode_case(b: Vec<u8>) {
    let got = wire::decode(&b);
    assert_eq!(got, model_decode(&b), "bytes {b:02x?}");
    // What decodes is canonical: encoding it again gives the same bytes (a REJECT's reason
    // only if it was valid UTF-8; otherwise it was decoded lossily, by design).
    if let Ok(p) = got
        && (!matches!(p, Packet::Reject { .. }) || std::str::from_utf8(&b[12..]).is_ok())
    {
        assert_eq!(encode(&p), b, "{p:?} re-encoded");
    }
}

fn round_trip_case(p: Packet) {
    let b = encode(&p);
    match &p {
        Packet::Reject { code, reason } => {
            assert!((wire::REJECT_MIN_LEN..=wire::MAX_PACKET).contains(&b.len()));
            let Ok(Packet::Reject { code: c, reason: r }) = wire::decode(&b) else {
                panic!("{:?}", wire::decode(&b))
            };
            assert_eq!(c, *code);
            // Cut at a character boundary within 244 bytes, never shorter than it must be.
            assert!(reason.starts_with(&r), "{r:?} is not a prefix");
            assert!(r.len() <= wire::MAX_REASON);
            assert!(
                r.len() == reason.len() || r.len() + 4 > wire::MAX_REASON,
                "cut to {} bytes",
                r.len()
            );
        }
        _ => assert_eq!(wire::decode(&b), Ok(p)),
    }
}

/// One field of a valid HELLO made wrong.
#[derive(Debug, Clone)]
enum BadField {
    Magic([u8; 4]),
    Version(u16),
    /// Never 1 (HELLO) or 4 (a 64-byte REJECT is a well-formed REJECT).
    Kind(u16),
    Role(u8),
    Reserved(usize, u8),
    Length(usize),
    RingVersion(u32),
    SendCapacity(u64),
    RecvCapacity(u64),
    /// This much above the limit for the send capacity.
    MaxMessage(u64),
    /// Below what the rings need: picks a value under that.
    MaxRing(u64),
}

fn bad_field() -> impl Strategy<Value = BadField> {
    let reserved: Vec<usize> = (9..12).chain(48..64).collect();
    prop_oneof![
        any::<[u8; 4]>()
            .prop_filter("magic", |m| m != b"SHMH")
            .prop_map(BadField::Magic),
        any::<u16>()
            .prop_filter("version", |v| *v != 1)
            .prop_map(BadField::Version),
        any::<u16>()
            .prop_filter("kind", |k| *k != 1 && *k != 4)
            .prop_map(BadField::Kind),
        any::<u8>()
            .prop_filter("role", |r| *r != 1 && *r != 2)
            .prop_map(BadField::Role),
        (prop::sample::select(reserved), 1u8..=255).prop_map(|(o, v)| BadField::Reserved(o, v)),
        (0usize..=300)
            .prop_filter("length", |n| *n != 64)
            .prop_map(BadField::Length),
        // The previous layout's peer is the likeliest wrong version.
        prop_oneof![Just(layout::VERSION - 1), any::<u32>()]
            .prop_filter("ring version", |v| *v != layout::VERSION)
            .prop_map(BadField::RingVersion),
        interesting_u64()
            .prop_filter("bad capacity", |c| !cap_ok(*c))
            .prop_map(BadField::SendCapacity),
        interesting_u64()
            .prop_filter("bad capacity", |c| *c != 0 && !cap_ok(*c))
            .prop_map(BadField::RecvCapacity),
        interesting_u64().prop_map(BadField::MaxMessage),
        any::<u64>().prop_map(BadField::MaxRing),
    ]
}

/// A valid client HELLO that negotiates with [`listener_hello`].
fn good_hello() -> impl Strategy<Value = Hello> {
    (
        6u32..=20,
        prop_oneof![Just(0u32), 6u32..=20],
        any::<u16>(),
        0u32..=2,
    )
        .prop_map(|(s, r, m, grow)| {
            let send_capacity = 1u64 << s;
            let recv_capacity = if r == 0 { 0 } else { 1u64 << r };
            let need = send_capacity.max(recv_capacity).max(1 << 12);
            Hello {
                role: Role::Client,
                ring_version: layout::VERSION,
                send_capacity,
                max_message: pick_max_message(send_capacity, m),
                recv_capacity,
                max_ring: (need << grow).min(MAX_CAP),
            }
        })
}

/// The other side of [`good_hello`]: a 4 KiB ring, rings up to 1 GiB accepted.
fn listener_hello() -> Hello {
    Hello {
        role: Role::Server,
        ring_version: layout::VERSION,
        send_capacity: 1 << 12,
        max_message: 0,
        recv_capacity: 0,
        max_ring: MAX_CAP,
    }
}

fn bad_field_case((base, bad): (Hello, BadField)) {
    let ours = listener_hello();
    model_negotiate(&ours, &base).expect("the base HELLO negotiates");
    wire::negotiate(&ours, &base).expect("the base HELLO negotiates");
    let good = base.encode();
    let mut b = good.to_vec();
    let mut h = base;
    // For the numbers: what negotiation must say about the changed HELLO, and the words
    // that name the field and its value.
    let mut number: Option<Vec<String>> = None;
    let mut only_negotiation = false;
    match bad {
        BadField::Magic(m) => b[0..4].copy_from_slice(&m),
        BadField::Version(v) => b[4..6].copy_from_slice(&v.to_le_bytes()),
        BadField::Kind(k) => b[6..8].copy_from_slice(&k.to_le_bytes()),
        BadField::Role(r) => b[8] = r,
        BadField::Reserved(o, v) => b[o] = v,
        BadField::Length(n) => b.resize(n, 0),
        BadField::RingVersion(v) => {
            h.ring_version = v;
            number = Some(words(&[&"ring layout version", &v]));
        }
        BadField::SendCapacity(c) => {
            h.send_capacity = c;
            h.max_message = 0;
            number = Some(words(&[&"send capacity", &c]));
        }
        BadField::RecvCapacity(c) => {
            h.recv_capacity = c;
            number = Some(words(&[&"receive capacity", &c]));
        }
        BadField::MaxMessage(excess) => {
            let m = (h.send_capacity / 2 - 8)
                .saturating_add(1)
                .saturating_add(excess);
            h.max_message = m;
            number = Some(words(&[&"max message", &m]));
        }
        BadField::MaxRing(pick) => {
            // Both rings must fit within each side's max_ring; anything below the larger
            // of the two rings it takes part in is too small.
            let need = h.send_capacity.max(ours.send_capacity).max(h.recv_capacity);
            let v = pick % need;
            h.max_ring = v;
            number = Some(words(&[&"(max_ring)", &format!("{v}-byte")]));
            only_negotiation = true;
        }
    }
    if number.is_some() {
        b = h.encode().to_vec();
    }
    let got = wire::decode(&b);
    let wire_error = match bad {
        BadField::Magic(m) => Some(WireError::Magic(m)),
        BadField::Version(v) => Some(WireError::Version(v)),
        BadField::Kind(2) => Some(WireError::Length {
            kind: "RING",
            len: 64,
            expected: 32,
        }),
        BadField::Kind(3) => Some(WireError::Length {
            kind: "READY",
            len: 64,
            expected: 8,
        }),
        BadField::Kind(k) => Some(WireError::Kind(k)),
        BadField::Role(r) => Some(WireError::Role(r)),
        BadField::Reserved(offset, value) => Some(WireError::Reserved {
            kind: "HELLO",
            offset,
            value,
        }),
        BadField::Length(n) if n < 8 => Some(WireError::Short(n)),
        BadField::Length(n) => Some(WireError::Length {
            kind: "HELLO",
            len: n,
            expected: 64,
        }),
        _ => None,
    };
    if let Some(e) = wire_error {
        assert_eq!(got, Err(e), "{bad:?}");
        return;
    }
    assert_eq!(
        got,
        Ok(Packet::Hello(h)),
        "{bad:?}: numbers decode as they are"
    );
    let w = number.expect("a number was changed");
    match wire::check_hello(&h) {
        Ok(()) => assert!(only_negotiation, "{bad:?}: check_hello accepted {h:?}"),
        Err(msg) => {
            assert!(!only_negotiation, "{bad:?}: check_hello refused: {msg}");
            assert_words(&msg.to_string(), &w, &bad);
        }
    }
    // Negotiation refuses it from either side, naming whose HELLO it was (or the ring).
    let as_peer = wire::negotiate(&ours, &h).expect_err("negotiated with a bad HELLO");
    assert_words(&as_peer.to_string(), &w, &bad);
    let as_ours = wire::negotiate(&h, &ours).expect_err("negotiated with a bad HELLO");
    assert_words(&as_ours.to_string(), &w, &bad);
    if !only_negotiation {
        assert!(
            matches!(
                as_peer,
                Incompatibility::Hello {
                    whose: Whose::Peers,
                    ..
                }
            ),
            "{as_peer}"
        );
        assert!(
            matches!(
                as_ours,
                Incompatibility::Hello {
                    whose: Whose::Ours,
                    ..
                }
            ),
            "{as_ours}"
        );
    }
}

fn negotiate_case((a, b): (Hello, Hello)) {
    for (ours, peer) in [(&a, &b), (&b, &a)] {
        match (wire::negotiate(ours, peer), model_negotiate(ours, peer)) {
            (Ok(got), Ok(want)) => assert_eq!(got, want, "{ours:?} with {peer:?}"),
            (Err(msg), Err(w)) => assert_words(&msg.to_string(), &w, &(ours, peer)),
            (got, want) => panic!("{ours:?} with {peer:?}: got {got:?}, want {want:?}"),
        }
    }
    // Both sides compute the same two rings.
    if let (Ok(x), Ok(y)) = (wire::negotiate(&a, &b), wire::negotiate(&b, &a)) {
        assert_eq!((x.ours, x.theirs), (y.theirs, y.ours));
    }
}

#[test]
fn decode_answers_as_the_protocol_document_says() {
    let bytes = prop_oneof![
        3 => packet_like(),
        2 => (any_packet(), mutation()).prop_map(|(p, m)| apply(&m, encode(&p))),
        1 => prop::collection::vec(any::<u8>(), 0..=300),
    ];
    property("decode", 3000, 10, bytes, decode_case);
}

#[test]
fn every_packet_round_trips() {
    property("round trip", 1000, 10, any_packet(), round_trip_case);
}

#[test]
fn a_hello_with_one_bad_field_is_refused_naming_it() {
    property(
        "one bad field",
        2000,
        10,
        (good_hello(), bad_field()),
        bad_field_case,
    );
}

#[test]
fn negotiation_follows_the_protocol_document() {
    property(
        "negotiation",
        2000,
        10,
        (any_hello(), any_hello()),
        negotiate_case,
    );
}
