//! What shmpipe's fuzz suites share: the hostile peer's view of a ring segment ([`Segment`]),
//! the two ways of claiming a ring's ends ([`Claim`], [`claim_apart`]), self-checking message
//! patterns ([`fill`], [`check`]), the case counts of the short and the long setting
//! ([`cases`], [`proptest_config`]) and the deadline every waiting test runs under
//! ([`deadline`]).
//!
//! The suites themselves are the integration tests in `tests/`; docs/testing.md says what
//! each one proves and how to run it short or long.
//!
//! No `unsafe` here: a hostile peer writes the shared segment through its memfd with
//! `pwrite(2)`, which shows up at once in the ring's `MAP_SHARED` mapping.

#![forbid(unsafe_code)]

pub mod handshake_gen;
pub mod handshake_model;
pub mod image;
pub mod process;

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use proptest::test_runner::{Config as ProptestConfig, FileFailurePersistence};
use shmpipe_ring::layout::{self, offsets};
use shmpipe_ring::{Bell, Consumer, Producer, Ring, SetupError};

/// The environment variable that selects the long setting: the number of cases per property.
pub const CASES_VAR: &str = "SHMPIPE_FUZZ_CASES";

/// Cases per property: `SHMPIPE_FUZZ_CASES`, else proptest's own `PROPTEST_CASES`, else
/// `short` (the CI setting).
pub fn cases(short: u32) -> u32 {
    [CASES_VAR, "PROPTEST_CASES"]
        .iter()
        .find_map(|v| std::env::var(v).ok()?.trim().parse().ok())
        .unwrap_or(short)
}

/// True when the long setting was asked for (so a suite may also lengthen each case).
pub fn long_run() -> bool {
    cases(0) != 0
}

/// The proptest configuration of one suite: [`cases`]`(short)` cases, shrunk failures kept in
/// `proptest-regressions/<file>.txt` (relative to the crate, where `cargo test` runs) and
/// replayed first on every run, and shrinking bounded so a hanging case cannot stall CI.
pub fn proptest_config(short: u32, file: &'static str) -> ProptestConfig {
    ProptestConfig {
        cases: cases(short),
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(file))),
        max_shrink_time: 120_000,
        ..ProptestConfig::default()
    }
}

/// Run `f` on its own thread and panic (fail the test) if it has not finished within `secs`;
/// a panic inside `f` is re-raised here, so proptest sees and shrinks it. (Shared with the
/// other suites: `shmpipe_testkit::deadline`.)
pub use shmpipe_testkit::deadline;

/// How a test claims the two ends of a ring in one process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// `Ring::pair`: both ends at once, each sleeping on a local copy of the other's waiter.
    Pair,
    /// [`claim_apart`]: each end with a bell of its own and a duplicate of the other end's
    /// waiter fd, exactly as two processes claim them after the handshake.
    Apart,
}

impl Claim {
    /// Claim both ends of `ring` this way.
    ///
    /// # Errors
    ///
    /// What `Ring::pair`, `Ring::producer` or `Ring::consumer` answered.
    pub fn claim(self, ring: &Ring) -> Result<(Producer, Consumer), SetupError> {
        match self {
            Claim::Pair => ring.pair(),
            Claim::Apart => claim_apart(ring).map(|e| (e.tx, e.rx)),
        }
    }
}

/// Either way of claiming, for a generated case.
pub fn claim() -> impl proptest::strategy::Strategy<Value = Claim> {
    use proptest::prelude::*;
    prop_oneof![Just(Claim::Pair), Just(Claim::Apart)]
}

/// The two ends of a ring claimed as two processes claim them, and what each process holds
/// of the other's bell: a hostile peer acts on these copies.
#[derive(Debug)]
pub struct Apart {
    /// The producer: rings its own bell, sleeps on the consumer bell's waiter.
    pub tx: Producer,
    /// The consumer: rings its own bell, sleeps on the producer bell's waiter.
    pub rx: Consumer,
    /// A copy of the waiter of the producer's bell (the data-ready side): what the
    /// consumer's process holds, and the only thing of that bell that ever leaves it.
    pub data_waiter: OwnedFd,
    /// A copy of the waiter of the consumer's bell (the space-ready side): what the
    /// producer's process holds.
    pub space_waiter: OwnedFd,
}

/// Claim both ends of `ring` with a new [`Bell`] each, handing each end a duplicate of the
/// other's waiter fd (as the handshake sends it over SCM_RIGHTS).
///
/// # Errors
///
/// What `Ring::producer` or `Ring::consumer` answered.
///
/// # Panics
///
/// If a bell or a duplicate fd cannot be made.
pub fn claim_apart(ring: &Ring) -> Result<Apart, SetupError> {
    let (data, space) = (Bell::new().expect("bell"), Bell::new().expect("bell"));
    let dup = |b: &Bell| b.waiter_fd().try_clone_to_owned().expect("dup a waiter");
    let (data_waiter, space_waiter) = (dup(&data), dup(&space));
    let (for_rx, for_tx) = (dup(&data), dup(&space));
    let tx = ring.producer(data, for_tx)?;
    let rx = ring.consumer(space, for_rx)?;
    Ok(Apart {
        tx,
        rx,
        data_waiter,
        space_waiter,
    })
}

/// Self-checking messages, shared with the other suites: `fill(seq, len, out)` makes message
/// `seq` of `len` bytes (every byte a function of `seq` and its position, and
/// `fill(seq, k)` a prefix of `fill(seq, n)` for `k <= n`), `message(seq, len)` returns it.
pub use shmpipe_testkit::{fill, message};

/// Is `msg` exactly message `seq` of its length?
pub fn check(seq: u64, msg: &[u8], scratch: &mut Vec<u8>) -> bool {
    shmpipe_testkit::is_message(seq, msg, scratch)
}

/// The state-word bits of docs/protocol.md §1.3, written out again from the document (the
/// ring's own constants are private to it).
pub mod state {
    /// Bits 1..0: the state.
    pub const MASK: u32 = 0b11;
    /// No handle has claimed the role.
    pub const FREE: u32 = 0;
    /// Claimed and open.
    pub const ACTIVE: u32 = 1;
    /// Closed for good.
    pub const CLOSED: u32 = 2;
    /// Bit 8: this side may be asleep on the other side's bell.
    pub const WAITING: u32 = 1 << 8;
    /// Bit 9: this side sleeps with a membarrier.
    pub const MEMBARRIER: u32 = 1 << 9;

    /// Is `word` a state word the protocol can write (no bits outside §1.3, not state 3)?
    pub fn valid(word: u32) -> bool {
        word & !(MASK | WAITING | MEMBARRIER) == 0 && word & MASK != 3
    }

    /// Does `word` say closed (state 2, whatever the flags)?
    pub fn closed(word: u32) -> bool {
        word & MASK == CLOSED
    }
}

/// Record kind of a message (docs/protocol.md §1.4).
pub const KIND_MESSAGE: u64 = 1;
/// Record kind of padding.
pub const KIND_PADDING: u64 = 2;
/// The length bits of a record header word (bits 29..0).
pub const LEN_MASK: u64 = (1 << 30) - 1;

/// The tag of a record at `index`: bits 34..3 of the index, as the high half of its header
/// word (docs/protocol.md §1.4).
pub fn tag_of(index: u64) -> u64 {
    (index >> 3) & 0xFFFF_FFFF
}

/// The header word of a record of `kind` and `len` at `index`, written from
/// docs/protocol.md §1.4 rather than with the ring's `encode_record`: tag in bits 63..32,
/// kind in 31..30, length in 29..0 (`len` is cut to its 30 bits).
pub fn record_word(kind: u64, index: u64, len: u64) -> u64 {
    (tag_of(index) << 32) | ((kind & 0b11) << 30) | (len & LEN_MASK)
}

/// Header word of a message of `len` bytes at `index`.
pub fn message_word(index: u64, len: u64) -> u64 {
    record_word(KIND_MESSAGE, index, len)
}

/// Header word of a padding record of `len` bytes (after its header) at `index`.
pub fn padding_word(index: u64, len: u64) -> u64 {
    record_word(KIND_PADDING, index, len)
}

/// A ring segment seen through its memfd: what a peer process (honest or not) can read and
/// write, at the byte offsets of docs/protocol.md. Owns a duplicate of the fd, so it can
/// outlive the borrow of the ring and move to another thread.
#[derive(Debug)]
pub struct Segment {
    fd: OwnedFd,
    capacity: usize,
}

/// The header fields an invariant check looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Indices {
    /// The `tail` field: the starting index until the producer closes, then its final index.
    pub tail: u64,
    /// The consumer's released index.
    pub head: u64,
    /// The producer's state word.
    pub producer: u32,
    /// The consumer's state word.
    pub consumer: u32,
}

impl Segment {
    /// The segment behind `memfd` (a ring's `Ring::memfd()`) with `capacity` data bytes.
    ///
    /// # Panics
    ///
    /// If the fd cannot be duplicated.
    pub fn new(memfd: BorrowedFd<'_>, capacity: usize) -> Segment {
        let fd = rustix::io::fcntl_dupfd_cloexec(memfd, 0).expect("dup the memfd");
        Segment { fd, capacity }
    }

    /// Data capacity in bytes.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The memfd.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Read `buf.len()` bytes at byte `offset` of the segment.
    ///
    /// # Panics
    ///
    /// If the read fails or is short (the range lies outside the segment).
    pub fn read(&self, offset: usize, buf: &mut [u8]) {
        let n = rustix::io::pread(&self.fd, &mut *buf, offset as u64).expect("pread");
        assert_eq!(n, buf.len(), "short pread at {offset}");
    }

    /// Write `bytes` at byte `offset` of the segment.
    ///
    /// # Panics
    ///
    /// If the write fails or is short.
    pub fn write(&self, offset: usize, bytes: &[u8]) {
        let n = rustix::io::pwrite(&self.fd, bytes, offset as u64).expect("pwrite");
        assert_eq!(n, bytes.len(), "short pwrite at {offset}");
    }

    /// The u64 at byte `offset`.
    pub fn u64_at(&self, offset: usize) -> u64 {
        let mut b = [0; 8];
        self.read(offset, &mut b);
        u64::from_le_bytes(b)
    }

    /// Store `v` at byte `offset`.
    pub fn set_u64(&self, offset: usize, v: u64) {
        self.write(offset, &v.to_le_bytes());
    }

    /// The u32 at byte `offset`.
    pub fn u32_at(&self, offset: usize) -> u32 {
        let mut b = [0; 4];
        self.read(offset, &mut b);
        u32::from_le_bytes(b)
    }

    /// Store `v` at byte `offset`.
    pub fn set_u32(&self, offset: usize, v: u32) {
        self.write(offset, &v.to_le_bytes());
    }

    /// The `tail` field: where both indices started, or, once the producer has closed, the
    /// end of everything it published (docs/protocol.md §1.1). It does not move per message.
    pub fn tail(&self) -> u64 {
        self.u64_at(offsets::TAIL)
    }

    /// Overwrite the `tail` field.
    pub fn set_tail(&self, v: u64) {
        self.set_u64(offsets::TAIL, v);
    }

    /// The consumer's released index.
    pub fn head(&self) -> u64 {
        self.u64_at(offsets::HEAD)
    }

    /// Overwrite the consumer's index.
    pub fn set_head(&self, v: u64) {
        self.set_u64(offsets::HEAD, v);
    }

    /// The producer's state word (docs/protocol.md §1.3).
    pub fn producer_word(&self) -> u32 {
        self.u32_at(offsets::PRODUCER)
    }

    /// Overwrite the producer's state word.
    pub fn set_producer_word(&self, v: u32) {
        self.set_u32(offsets::PRODUCER, v);
    }

    /// The consumer's state word.
    pub fn consumer_word(&self) -> u32 {
        self.u32_at(offsets::CONSUMER)
    }

    /// Overwrite the consumer's state word.
    pub fn set_consumer_word(&self, v: u32) {
        self.set_u32(offsets::CONSUMER, v);
    }

    /// A copy of the whole data area (`capacity` bytes), read with one `pread`.
    pub fn data(&self) -> Vec<u8> {
        let mut v = vec![0; self.capacity];
        self.read(layout::DATA_OFFSET, &mut v);
        v
    }

    /// Byte offset in the segment of data index `index` (masked to the ring).
    pub fn data_offset(&self, index: u64) -> usize {
        layout::DATA_OFFSET + (index as usize & (self.capacity - 1))
    }

    /// The record header word at data index `index` (8-aligned).
    pub fn word(&self, index: u64) -> u64 {
        self.u64_at(self.data_offset(index))
    }

    /// Overwrite the record header word at data index `index` (8-aligned).
    pub fn set_word(&self, index: u64, word: u64) {
        self.set_u64(self.data_offset(index), word);
    }

    /// Write payload bytes at data index `index`; they must not cross the end of the ring.
    pub fn write_data(&self, index: u64, bytes: &[u8]) {
        let pos = index as usize & (self.capacity - 1);
        assert!(
            bytes.len() <= self.capacity - pos,
            "write past the ring end"
        );
        self.write(layout::DATA_OFFSET + pos, bytes);
    }

    /// Check what docs/protocol.md §1.1-1.3 say always holds of the header as it is now: the
    /// creator's fields intact; `head` a multiple of 8; `tail` a multiple of 8 and, once the
    /// producer has closed (when it holds the final index), `head <= tail <= head + capacity`
    /// in wrapping arithmetic; both state words within §1.3 (no bits outside state, WAITING
    /// and MEMBARRIER; never state 3). Before the close `tail` is the starting index, which
    /// only the caller knows.
    ///
    /// # Errors
    ///
    /// A description of the first invariant that does not hold.
    pub fn check_invariants(&self, max_message: usize) -> Result<Indices, String> {
        let (tail, head) = (self.tail(), self.head());
        let (producer, consumer) = (self.producer_word(), self.consumer_word());
        let cap = self.capacity as u64;
        if tail % 8 != 0 || head % 8 != 0 {
            return Err(format!("misaligned indices: tail {tail}, head {head}"));
        }
        let expect = [
            ("magic", self.u64_at(offsets::MAGIC), layout::MAGIC),
            (
                "version",
                self.u32_at(offsets::VERSION).into(),
                layout::VERSION.into(),
            ),
            (
                "data_offset",
                self.u32_at(offsets::DATA_OFFSET).into(),
                layout::DATA_OFFSET as u64,
            ),
            ("capacity", self.u64_at(offsets::CAPACITY), cap),
            (
                "max_message",
                self.u64_at(offsets::MAX_MESSAGE),
                max_message as u64,
            ),
        ];
        for (what, found, want) in expect {
            if found != want {
                return Err(format!("{what} is {found}, expected {want}"));
            }
        }
        for (what, w) in [("producer", producer), ("consumer", consumer)] {
            if !state::valid(w) {
                return Err(format!("the {what}'s state word is {w:#x}"));
            }
        }
        if state::closed(producer) && tail.wrapping_sub(head) > cap {
            return Err(format!(
                "free space negative: final tail {tail} - head {head} > capacity {cap}"
            ));
        }
        Ok(Indices {
            tail,
            head,
            producer,
            consumer,
        })
    }
}

/// Starting indices worth testing: zero, just below the u32, tag (2^35) and u64 wrap points
/// (so the indices cross them within a few laps of a small ring), and anywhere.
pub fn start_index() -> impl proptest::strategy::Strategy<Value = u64> {
    use proptest::prelude::*;
    prop_oneof![
        Just(0u64),
        // Just below 2^32, or 2^35 where the record tags (bits 34..3) wrap. (One arm, so
        // the seeds saved for the other arms still replay the cases they were saved for.)
        (0u64..=2049).prop_map(|d| [1u64 << 32, 1 << 35][d as usize % 2] - 8 * (d / 2)),
        (0u64..=1024).prop_map(|d| 0u64.wrapping_sub(8 * d)),
        any::<u64>(),
    ]
}

/// A small ring capacity: a power of two from the minimum (64) to 4096 bytes.
pub fn small_capacity() -> impl proptest::strategy::Strategy<Value = usize> {
    use proptest::prelude::*;
    (6u32..=12).prop_map(|s| 1usize << s)
}

/// Resolve a 16-bit choice into a maximum message for a ring of `capacity`: the legal range
/// is 0 to `max_message_limit(capacity)`, and both ends are favoured.
pub fn max_message_for(capacity: usize, pick: u16) -> usize {
    let limit = layout::max_message_limit(capacity);
    match pick % 8 {
        0 => limit,
        1 => capacity / 4,
        2 => (pick as usize / 8) % 9,
        _ => pick as usize % (limit + 1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The header words written here from docs/protocol.md §1.4 are the ring's own.
    #[test]
    fn record_words_match_the_rings_encoding() {
        for index in [0u64, 8, 4096, (1 << 32) - 8, 1 << 35, u64::MAX - 7] {
            for len in [0u64, 1, 24, LEN_MASK] {
                for kind in [KIND_MESSAGE, KIND_PADDING] {
                    assert_eq!(
                        record_word(kind, index, len),
                        layout::encode_record(kind, index, len as usize),
                        "kind {kind}, index {index}, len {len}"
                    );
                }
            }
        }
        assert_eq!(message_word(8 * 5, 24), (5 << 32) | (1 << 30) | 24);
    }
}
