//! What both handshake suites (`tests/handshake.rs`, pure, and `tests/handshake_live.rs`, over
//! real sockets) generate, and how they run it: numbers worth writing into a field
//! ([`interesting_u64`]), packet-shaped bytes ([`packet_like`]), one change to a well-formed
//! packet ([`Mutation`], [`mutation`], [`apply`]), a maximum message for a ring
//! ([`pick_max_message`]), and [`property`], which runs a property case by case under a
//! deadline with [`LOCK`] held. The answers they are checked against are
//! [`handshake_model`](crate::handshake_model)'s.

use std::fmt::Debug;
use std::sync::Mutex;

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::TestRunner;

use crate::{deadline, proptest_config};

// ---------------------------------------------------------------------------------------------
// Running the properties one at a time

/// Held by every test of the handshake suites for its whole run ([`property`] takes it): the
/// live suite's fd counts see no other test's fds.
pub static LOCK: Mutex<()> = Mutex::new(());

/// Where both handshake suites keep their shrunk failures (relative to the crate), replayed
/// first on every run.
pub const REGRESSIONS: &str = "proptest-regressions/handshake.txt";

/// Run `case` on `short` cases (or `SHMPIPE_FUZZ_CASES`), each under a deadline of `secs`,
/// with [`LOCK`] held throughout.
pub fn property<S>(name: &str, short: u32, secs: u64, strategy: S, case: fn(S::Value))
where
    S: Strategy,
    S::Value: Debug + Send + 'static,
{
    let _serial = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let mut runner = TestRunner::new(proptest_config(short, REGRESSIONS));
    let result = runner.run(&strategy, |v| {
        deadline(secs, name, move || case(v));
        Ok(())
    });
    if let Err(e) = result {
        panic!("{name}: {e}");
    }
}

// ---------------------------------------------------------------------------------------------
// Strategies for bytes

/// Numbers worth writing into a field: small ones, powers of two and their neighbours, the
/// extremes, anything.
pub fn interesting_u64() -> impl Strategy<Value = u64> {
    prop_oneof![
        (0u64..=8),
        (0u32..=40).prop_map(|s| 1u64 << s),
        (0u32..=40).prop_map(|s| (1u64 << s) + 1),
        (1u32..=40).prop_map(|s| (1u64 << s) - 1),
        Just(u64::from(u32::MAX)),
        Just(u64::MAX),
        any::<u64>(),
    ]
}

/// The (offset, width) of every field of a packet of kind `kind` (header fields included).
fn fields_of(kind: u16) -> &'static [(usize, usize)] {
    const HEADER: &[(usize, usize)] = &[(0, 4), (4, 2), (6, 2)];
    match kind {
        1 => &[
            (0, 4),
            (4, 2),
            (6, 2),
            (8, 1),
            (9, 1),
            (11, 1),
            (12, 4),
            (16, 8),
            (24, 8),
            (32, 8),
            (40, 8),
            (48, 8),
            (56, 8),
        ],
        2 => &[(0, 4), (4, 2), (6, 2), (8, 8), (16, 8), (24, 8)],
        _ => HEADER,
    }
}

/// One change to a well-formed packet.
#[derive(Debug, Clone)]
pub enum Mutation {
    /// Set one byte.
    Byte(Index, u8),
    /// Write a number into one field of the packet's kind (header fields included).
    Field(Index, u64),
    /// Cut the packet short.
    Truncate(Index),
    /// Append bytes.
    Extend(Vec<u8>),
}

/// Any [`Mutation`]; a field write most often.
pub fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        2 => (any::<Index>(), any::<u8>()).prop_map(|(i, v)| Mutation::Byte(i, v)),
        4 => (any::<Index>(), interesting_u64()).prop_map(|(i, v)| Mutation::Field(i, v)),
        1 => any::<Index>().prop_map(Mutation::Truncate),
        1 => prop::collection::vec(any::<u8>(), 1..=260).prop_map(Mutation::Extend),
    ]
}

/// `b` (a well-formed packet) changed as `m` says.
pub fn apply(m: &Mutation, mut b: Vec<u8>) -> Vec<u8> {
    match m {
        Mutation::Byte(i, v) => {
            let i = i.index(b.len());
            b[i] = *v;
        }
        Mutation::Field(i, v) => {
            let fields = fields_of(u16::from_le_bytes([b[6], b[7]]));
            let (off, width) = fields[i.index(fields.len())];
            b[off..off + width].copy_from_slice(&v.to_le_bytes()[..width]);
        }
        Mutation::Truncate(i) => b.truncate(i.index(b.len())),
        Mutation::Extend(more) => b.extend_from_slice(more),
    }
    b
}

/// Packet-shaped bytes: a header that is usually right, a kind that is usually known, a
/// length near that kind's (or around 0..8, 12, 256), a body of zeros with a few bytes set,
/// or random.
pub fn packet_like() -> impl Strategy<Value = Vec<u8>> {
    let header = (
        prop::bool::weighted(0.9),
        prop::bool::weighted(0.9),
        prop_oneof![8 => 1u16..=4, 1 => any::<u16>()],
        prop_oneof![4 => Just(1u8), 4 => Just(2u8), 1 => any::<u8>()],
    );
    let length = (0u8..5, -2i64..=2, 0usize..=300);
    let body = (
        prop::bool::weighted(0.7),
        prop::collection::vec((any::<Index>(), any::<u8>()), 0..=2),
        prop::collection::vec(any::<u8>(), 300),
    );
    (header, length, body).prop_map(
        |((magic_ok, version_ok, kind, role), (sel, delta, any_len), (zero, pokes, random))| {
            let exact: i64 = match kind {
                1 => 64,
                2 => 32,
                3 => 8,
                4 => 12,
                _ => 16,
            };
            let len = match sel {
                0 | 1 => (exact + delta).max(0) as usize,
                2 => (delta + 6).max(0) as usize,
                3 => (256 + delta) as usize,
                _ => any_len,
            };
            let mut b = if zero { vec![0u8; 300] } else { random };
            b[0..4].copy_from_slice(if magic_ok { b"SHMH" } else { b"SHMX" });
            if version_ok {
                b[4..6].copy_from_slice(&1u16.to_le_bytes());
            }
            b[6..8].copy_from_slice(&kind.to_le_bytes());
            if zero {
                b[8] = role;
            }
            b.truncate(len);
            if !b.is_empty() {
                for (i, v) in pokes {
                    let i = i.index(b.len());
                    b[i] = v;
                }
            }
            b
        },
    )
}

/// A maximum message for a `cap`-byte ring, from a 16-bit choice: 0 (the default), the
/// limit, or anything up to it.
pub fn pick_max_message(cap: u64, pick: u16) -> u64 {
    let limit = cap / 2 - 8;
    match pick % 4 {
        0 | 1 => 0,
        2 => limit,
        _ => u64::from(pick) % (limit + 1),
    }
}
