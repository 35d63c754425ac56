//! The byte-exact shared layout (docs/protocol.md §1 is the same table in prose) and the pure
//! functions that decide whether what a peer wrote is possible.
//!
//! Everything here is safe, allocation-free and thread-free, so the fuzz suites call it directly.

use crossbeam_utils::CachePadded;

use crate::error::Corruption;
use crate::sync::{AtomicU32, AtomicU64};

/// `b"SHMPIPE\0"` read as a little-endian u64: the first word of every segment.
pub const MAGIC: u64 = u64::from_le_bytes(*b"SHMPIPE\0");
/// Layout version; bumped on any change to this file's numbers or to what a word means.
/// Version 2: records are published in band (index tag in each header word, the word after
/// every record cleared first); `tail` is written only at close; one state word per side.
pub const VERSION: u32 = 2;
/// Byte offset of the data area in the segment (one page; the header uses the first 640 bytes).
pub const DATA_OFFSET: usize = 4096;
/// Record header size and record alignment, in bytes.
pub const RECORD_ALIGN: usize = 8;
/// Smallest data capacity.
pub const MIN_CAPACITY: usize = 64;
/// Largest data capacity (1 GiB): a peer cannot make us map more than this, and a record
/// length always fits the header word's 30 length bits.
pub const MAX_CAPACITY: usize = 1 << 30;
/// Default data capacity (1 MiB).
pub const DEFAULT_CAPACITY: usize = 1 << 20;

/// A side's state word: the low two bits are the state, the bits above are flags.
pub(crate) const STATE_MASK: u32 = 0b11;
/// No handle has claimed this role.
pub(crate) const STATE_FREE: u32 = 0;
/// Claimed and open.
pub(crate) const STATE_ACTIVE: u32 = 1;
/// Closed for good: its last index store is visible to whoever sees this (Release).
pub(crate) const STATE_CLOSED: u32 = 2;
/// Flag: this side may be asleep on the other side's bell; whoever makes progress for it rings.
pub(crate) const WAITING: u32 = 1 << 8;
/// Flag, set at claim: this side's process is registered for
/// `MEMBARRIER_CMD_GLOBAL_EXPEDITED` and issues one before every sleep, so the other side may
/// replace its fence by a compiler fence (docs/design.md, "The wake-up fence").
pub(crate) const MEMBARRIER: u32 = 1 << 9;

/// Record header word: bits 0..30 are the length.
pub(crate) const LEN_MASK: u64 = (1 << 30) - 1;
/// Record header word: bits 30..32 are the kind.
pub(crate) const KIND_SHIFT: u32 = 30;
/// A message record.
pub(crate) const KIND_MESSAGE: u64 = 1;
/// Padding up to the end of the ring.
pub(crate) const KIND_PADDING: u64 = 2;

/// Set once by the creator before the segment is shared; read once by whoever opens it.
#[repr(C)]
#[derive(Debug)]
pub(crate) struct ConfigLine {
    pub(crate) magic: AtomicU64,
    pub(crate) version: AtomicU32,
    pub(crate) data_offset: AtomicU32,
    pub(crate) capacity: AtomicU64,
    pub(crate) max_message: AtomicU64,
}

/// The shared header. Each field after `config` is written by exactly one side and sits on its
/// own 128-byte line, so a write by one side never invalidates a line the other side polls.
/// None of them changes per message: records are published by their own header words.
///
/// Invariant (checked by [`check_head`] and at claim, never assumed): `head` and `tail` are
/// multiples of 8, and `head <= tail <= head + capacity` in wrapping u64 arithmetic.
#[repr(C)]
#[derive(Debug)]
pub(crate) struct Header {
    pub(crate) config: CachePadded<ConfigLine>,
    /// The producer's index: where both indices start, and once the producer has closed, the
    /// end of everything it published (stored before `STATE_CLOSED`, Release).
    pub(crate) tail: CachePadded<AtomicU64>,
    /// The consumer's index: bytes released for reuse (written by the consumer, Release).
    pub(crate) head: CachePadded<AtomicU64>,
    /// The producer's state word (`STATE_*` | flags).
    pub(crate) producer: CachePadded<AtomicU32>,
    /// The consumer's state word.
    pub(crate) consumer: CachePadded<AtomicU32>,
}

/// Byte offsets of each header field; the same numbers are in docs/protocol.md.
pub mod offsets {
    /// `magic: u64`
    pub const MAGIC: usize = 0;
    /// `version: u32`
    pub const VERSION: usize = 8;
    /// `data_offset: u32`
    pub const DATA_OFFSET: usize = 12;
    /// `capacity: u64`
    pub const CAPACITY: usize = 16;
    /// `max_message: u64`
    pub const MAX_MESSAGE: usize = 24;
    /// `tail: u64`
    pub const TAIL: usize = 128;
    /// `head: u64`
    pub const HEAD: usize = 256;
    /// `producer: u32`, the producer's state word
    pub const PRODUCER: usize = 384;
    /// `consumer: u32`, the consumer's state word
    pub const CONSUMER: usize = 512;
    /// Size of the header struct; bytes from here to `DATA_OFFSET` are zero and unused.
    pub const HEADER_SIZE: usize = 640;
}

#[cfg(not(loom))]
const _: () = {
    use std::mem::{offset_of, size_of};
    assert!(offset_of!(Header, config) + offset_of!(ConfigLine, magic) == offsets::MAGIC);
    assert!(offset_of!(ConfigLine, version) == offsets::VERSION);
    assert!(offset_of!(ConfigLine, data_offset) == offsets::DATA_OFFSET);
    assert!(offset_of!(ConfigLine, capacity) == offsets::CAPACITY);
    assert!(offset_of!(ConfigLine, max_message) == offsets::MAX_MESSAGE);
    assert!(offset_of!(Header, tail) == offsets::TAIL);
    assert!(offset_of!(Header, head) == offsets::HEAD);
    assert!(offset_of!(Header, producer) == offsets::PRODUCER);
    assert!(offset_of!(Header, consumer) == offsets::CONSUMER);
    assert!(size_of::<Header>() == offsets::HEADER_SIZE);
    assert!(std::mem::align_of::<Header>() == 128);
    assert!(offsets::HEADER_SIZE <= DATA_OFFSET);
    assert!(DATA_OFFSET % 128 == 0);
    assert!(MIN_CAPACITY.is_power_of_two() && MAX_CAPACITY.is_power_of_two());
    // Every length a record can carry (at most a capacity) fits the length bits.
    assert!(MAX_CAPACITY as u64 <= LEN_MASK + 1);
};

/// Why a ring's shape is impossible. The one place the capacity rules live: the ring's
/// [`Config`](crate::Config), the handshake's options and its HELLO checks all ask here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ShapeError {
    /// Not a power of two, or outside [`MIN_CAPACITY`]..=[`MAX_CAPACITY`].
    #[error("capacity {0} is not a power of two from {MIN_CAPACITY} to {MAX_CAPACITY}")]
    Capacity(u64),
    /// Larger than [`max_message_limit`] allows for the capacity.
    #[error("max message {max} exceeds {limit} for a {capacity}-byte ring")]
    MaxMessage {
        /// The maximum message asked for.
        max: u64,
        /// The largest possible for this capacity.
        limit: u64,
        /// The ring's capacity.
        capacity: u64,
    },
}

/// Check a capacity on its own.
///
/// # Errors
///
/// [`ShapeError::Capacity`].
pub fn check_capacity(capacity: u64) -> Result<(), ShapeError> {
    let range = MIN_CAPACITY as u64..=MAX_CAPACITY as u64;
    if capacity.is_power_of_two() && range.contains(&capacity) {
        Ok(())
    } else {
        Err(ShapeError::Capacity(capacity))
    }
}

/// Check a capacity and a maximum message size together.
///
/// # Errors
///
/// The first [`ShapeError`] found.
pub fn check_shape(capacity: u64, max_message: u64) -> Result<(), ShapeError> {
    check_capacity(capacity)?;
    let limit = max_message_limit(capacity as usize) as u64;
    if max_message > limit {
        return Err(ShapeError::MaxMessage {
            max: max_message,
            limit,
            capacity,
        });
    }
    Ok(())
}

/// Largest `max_message` a ring of `capacity` bytes accepts: a record of at most half the ring
/// less 8 always fits into an empty ring, wherever the indices stand, together with the padding
/// before it and the cleared word after it.
pub fn max_message_limit(capacity: usize) -> usize {
    capacity / 2 - RECORD_ALIGN
}

/// The default `max_message` for a ring of `capacity` bytes: a quarter of it.
pub fn default_max_message(capacity: usize) -> usize {
    capacity / 4
}

/// Bytes a message of `len` bytes occupies in the ring: header plus payload rounded up to 8.
#[inline]
pub fn record_size(len: usize) -> usize {
    // `len` is at most a capacity (2^30) wherever this is used, so this cannot overflow.
    (len + 2 * RECORD_ALIGN - 1) & !(RECORD_ALIGN - 1)
}

/// The tag half of the header word of a record of `kind` at `index`: bits 32..64 carry
/// bits 3..35 of the index (so a word left from an earlier lap never matches), bits 30..32 the
/// kind. `index` is a multiple of 8, so `index << 29` has its low 32 bits clear.
#[inline(always)]
pub(crate) fn tag(kind: u64, index: u64) -> u64 {
    (index << 29) | (kind << KIND_SHIFT)
}

/// The header word of a record of `kind` and `len` at `index`.
#[inline(always)]
pub fn encode_record(kind: u64, index: u64, len: usize) -> u64 {
    tag(kind, index) | len as u64
}

/// What the word at the consumer's index says, once checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Record {
    /// Zero: nothing has been published here yet.
    Empty,
    /// A message of `len` bytes whose payload starts 8 bytes after the header.
    Message {
        /// Payload length in bytes.
        len: usize,
    },
    /// Padding up to the end of the ring: skip `skip` bytes (header included).
    Padding {
        /// Bytes from the header to the end of the ring.
        skip: usize,
    },
}

/// Decide what the header `word` read at index `index` means. Every value comes from the
/// peer and is checked: zero, or a word carrying this index's tag whose record lies inside
/// the ring (a message no longer than `max_message`, padding that ends exactly at the end).
pub fn parse_record(
    word: u64,
    index: u64,
    capacity: usize,
    max_message: usize,
) -> Result<Record, Corruption> {
    if word == 0 {
        return Ok(Record::Empty);
    }
    let pos = index & (capacity as u64 - 1);
    let to_end = capacity as u64 - pos;
    let len = word & LEN_MASK;
    let high = word & !LEN_MASK;
    if high == tag(KIND_MESSAGE, index) {
        if len > max_message as u64 || record_size(len as usize) as u64 > to_end {
            return Err(Corruption::RecordLength {
                position: pos,
                len,
                max: max_message as u64,
                to_end,
            });
        }
        return Ok(Record::Message { len: len as usize });
    }
    if high == tag(KIND_PADDING, index) {
        if len + RECORD_ALIGN as u64 != to_end {
            return Err(Corruption::Padding {
                position: pos,
                len,
                to_end,
            });
        }
        return Ok(Record::Padding {
            skip: to_end as usize,
        });
    }
    let kind = (word >> KIND_SHIFT) & 0b11;
    if kind == KIND_MESSAGE || kind == KIND_PADDING {
        return Err(Corruption::RecordTag {
            position: pos,
            word,
            index,
        });
    }
    Err(Corruption::RecordKind {
        position: pos,
        word,
    })
}

/// Check a consumer index just loaded from shared memory. It must be a multiple of 8, at or
/// after `prev` (the last one accepted) and at or before `published` (the consumer cannot
/// release what it was never given). Returns the bytes still in use (`published - head`).
pub fn check_head(published: u64, prev: u64, head: u64) -> Result<u64, Corruption> {
    if head % RECORD_ALIGN as u64 != 0 {
        return Err(Corruption::IndexMisaligned {
            index: "head",
            value: head,
        });
    }
    let moved = head.wrapping_sub(prev);
    if moved > published.wrapping_sub(prev) {
        if (moved as i64) < 0 {
            return Err(Corruption::IndexMovedBackwards {
                index: "head",
                was: prev,
                now: head,
            });
        }
        return Err(Corruption::HeadPastPublished { head, published });
    }
    Ok(published.wrapping_sub(head))
}

/// Check the indices found in a header when a role is claimed: both multiples of 8, `tail`
/// not behind `head` (`TailBehindHead`: `tail - head` is 2^63 or more in wrapping arithmetic)
/// and at most a capacity ahead of it (`IndexOutOfRange`).
pub fn check_indices(head: u64, tail: u64, capacity: usize) -> Result<(), Corruption> {
    for (index, value) in [("head", head), ("tail", tail)] {
        if value % RECORD_ALIGN as u64 != 0 {
            return Err(Corruption::IndexMisaligned { index, value });
        }
    }
    let ahead = tail.wrapping_sub(head);
    if ahead > capacity as u64 && (ahead as i64) < 0 {
        return Err(Corruption::TailBehindHead { tail, head });
    }
    if ahead > capacity as u64 {
        return Err(Corruption::IndexOutOfRange {
            index: "tail",
            value: tail,
            other: head,
            capacity: capacity as u64,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_sizes_are_aligned_and_include_the_header() {
        assert_eq!(record_size(0), 8);
        assert_eq!(record_size(1), 16);
        assert_eq!(record_size(8), 16);
        assert_eq!(record_size(9), 24);
        assert_eq!(record_size(64), 72);
    }

    #[test]
    fn limits_keep_a_max_record_with_its_padding_and_cleared_word_in_the_ring() {
        for cap in [MIN_CAPACITY, 4096, DEFAULT_CAPACITY, MAX_CAPACITY] {
            let size = record_size(max_message_limit(cap));
            // Worst case: padding of size - 8 before it, and the word after it.
            assert!(size - 8 + size + 8 <= cap, "{cap}");
            assert!(default_max_message(cap) <= max_message_limit(cap));
            assert_eq!(
                check_shape(cap as u64, max_message_limit(cap) as u64),
                Ok(())
            );
        }
        assert!(matches!(
            check_shape(4096, 4096),
            Err(ShapeError::MaxMessage { .. })
        ));
        assert_eq!(check_capacity(1000), Err(ShapeError::Capacity(1000)));
        assert_eq!(check_capacity(32), Err(ShapeError::Capacity(32)));
        assert_eq!(check_capacity(1 << 31), Err(ShapeError::Capacity(1 << 31)));
    }

    #[test]
    fn words_carry_the_index_tag_kind_and_length() {
        let w = encode_record(KIND_MESSAGE, 8 * 5, 24);
        assert_eq!(w, (5 << 32) | (1 << 30) | 24);
        // The tag wraps with the index.
        let w = encode_record(KIND_PADDING, u64::MAX - 7, 0);
        assert_eq!(w >> 32, u64::from(u32::MAX));
        assert_ne!(
            encode_record(KIND_MESSAGE, 0, 0),
            0,
            "a record is never zero"
        );
    }

    #[test]
    fn parse_accepts_exact_fits_and_rejects_overruns() {
        let cap = 64;
        assert_eq!(parse_record(0, 0, cap, 24), Ok(Record::Empty));
        let w = encode_record(KIND_MESSAGE, 32, 24);
        assert_eq!(
            parse_record(w, 32, cap, 24),
            Ok(Record::Message { len: 24 })
        );
        // The same record read a lap later, or at another index, is stale.
        assert!(matches!(
            parse_record(w, 32 + 64, cap, 24),
            Err(Corruption::RecordTag { .. })
        ));
        // Straddles the end of the ring.
        let w = encode_record(KIND_MESSAGE, 40, 24);
        let e = parse_record(w, 40, cap, 24).unwrap_err();
        assert!(matches!(e, Corruption::RecordLength { .. }));
        assert_eq!(
            e.to_string(),
            "record at ring position 40 claims 24 bytes: with its 8-byte header, padded to 8, it \
             takes 32 bytes, more than the 24 left before the ring's end"
        );
        // Longer than max_message.
        let w = encode_record(KIND_MESSAGE, 0, 25);
        let e = parse_record(w, 0, cap, 24).unwrap_err();
        assert!(matches!(e, Corruption::RecordLength { .. }));
        assert_eq!(
            e.to_string(),
            "record at ring position 0 claims 25 bytes: more than the maximum message (24)"
        );
        // The largest length the bits hold cannot overflow the size arithmetic.
        let w = encode_record(KIND_MESSAGE, 0, LEN_MASK as usize);
        assert!(parse_record(w, 0, cap, 24).is_err());
        // Unknown kinds.
        for kind in [0u64, 3] {
            let w = tag(kind, 16) | 8 | (1 << 40);
            assert!(matches!(
                parse_record(w, 16, cap, 24),
                Err(Corruption::RecordKind { .. })
            ));
        }
    }

    #[test]
    fn padding_must_end_exactly_at_the_ring_end() {
        let cap = 64;
        let ok = encode_record(KIND_PADDING, 40, 16);
        assert_eq!(
            parse_record(ok, 40, cap, 24),
            Ok(Record::Padding { skip: 24 })
        );
        let short = encode_record(KIND_PADDING, 32, 16);
        assert!(matches!(
            parse_record(short, 32, cap, 24),
            Err(Corruption::Padding { .. })
        ));
        // The length counts the bytes after the header: a padding that counts its header too
        // is 8 bytes too long, and the report says which length was due.
        let counted_header = encode_record(KIND_PADDING, 8, 56);
        let e = parse_record(counted_header, 8, cap, 24).unwrap_err();
        assert_eq!(
            e.to_string(),
            "padding at ring position 8 has length 56, but padding there must have length 48 \
             (the ring ends 56 bytes from it, its 8-byte header included)"
        );
    }

    #[test]
    fn head_checks_cover_overrun_backwards_and_misalignment() {
        assert_eq!(check_head(72, 8, 40), Ok(32));
        assert!(matches!(
            check_head(72, 8, 80),
            Err(Corruption::HeadPastPublished { .. })
        ));
        assert!(matches!(
            check_head(72, 40, 32),
            Err(Corruption::IndexMovedBackwards { .. })
        ));
        assert!(matches!(
            check_head(72, 8, 9),
            Err(Corruption::IndexMisaligned { .. })
        ));
        // Across the u64 wrap.
        let t = 40u64;
        assert_eq!(check_head(t, u64::MAX - 7, u64::MAX - 7), Ok(48));
        assert_eq!(check_head(t, u64::MAX - 7, t), Ok(0));
    }

    #[test]
    fn claimed_indices_must_be_aligned_and_within_a_capacity() {
        assert_eq!(check_indices(8, 72, 64), Ok(()));
        assert!(check_indices(8, 80, 64).is_err());
        assert!(check_indices(9, 9, 64).is_err());
        assert_eq!(
            check_indices(8, 0, 64),
            Err(Corruption::TailBehindHead { tail: 0, head: 8 }),
            "tail behind head"
        );
        assert!(matches!(
            check_indices(8, 80, 64),
            Err(Corruption::IndexOutOfRange { .. })
        ));
        assert_eq!(check_indices(u64::MAX - 7, 8, 64), Ok(()));
        assert_eq!(
            check_indices(64, 8, 64).unwrap_err().to_string(),
            "tail index 8 is 56 bytes behind head index 64"
        );
        assert_eq!(
            check_indices(8, 80, 64).unwrap_err().to_string(),
            "tail index 80 is 72 bytes ahead of head index 8: more than the capacity (64)"
        );
    }
}
