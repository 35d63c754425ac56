//! The byte-exact shared layout (docs/protocol.md is the same table in prose) and the pure
//! functions that decide whether what a peer wrote is possible.
//!
//! Everything here is safe, allocation-free and thread-free, so the fuzz suites call it directly.

use crossbeam_utils::CachePadded;

use crate::error::Corruption;
use crate::sync::{AtomicU32, AtomicU64};

/// `b"SHMRING\0"` read as a little-endian u64: the first word of every segment.
pub const MAGIC: u64 = u64::from_le_bytes(*b"SHMRING\0");
/// Layout version; bumped on any change to this file's numbers.
pub const VERSION: u32 = 1;
/// Byte offset of the data area in the segment (one page; the header uses the first 896 bytes).
pub const DATA_OFFSET: usize = 4096;
/// Record header size and record alignment, in bytes.
pub const RECORD_ALIGN: usize = 8;
/// Smallest data capacity: room for a 24-byte message plus its header, twice.
pub const MIN_CAPACITY: usize = 64;
/// Largest data capacity (1 GiB): a peer cannot make us map more than this.
pub const MAX_CAPACITY: usize = 1 << 30;
/// Default data capacity (1 MiB).
pub const DEFAULT_CAPACITY: usize = 1 << 20;

/// `state` word values. Each side writes only its own state word.
pub(crate) const STATE_FREE: u32 = 0;
pub(crate) const STATE_ACTIVE: u32 = 1;
pub(crate) const STATE_CLOSED: u32 = 2;

/// Record kinds (the high half of a record header word).
pub(crate) const KIND_MESSAGE: u32 = 1;
pub(crate) const KIND_PADDING: u32 = 2;

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
///
/// Invariant (checked by [`check_tail`] and [`check_head`], never assumed):
/// `head <= tail <= head + capacity` in wrapping u64 arithmetic, both multiples of 8.
#[repr(C)]
#[derive(Debug)]
pub(crate) struct Header {
    pub(crate) config: CachePadded<ConfigLine>,
    /// Producer's index: bytes ever written (written by the producer, Release).
    pub(crate) tail: CachePadded<AtomicU64>,
    /// Consumer's index: bytes ever released (written by the consumer, Release).
    pub(crate) head: CachePadded<AtomicU64>,
    /// Non-zero while the producer may sleep on `space_ready`.
    pub(crate) producer_waiting: CachePadded<AtomicU32>,
    /// Non-zero while the consumer may sleep on `data_ready`.
    pub(crate) consumer_waiting: CachePadded<AtomicU32>,
    /// Producer's `STATE_*` word: its role claim and its close.
    pub(crate) producer_state: CachePadded<AtomicU32>,
    /// Consumer's `STATE_*` word.
    pub(crate) consumer_state: CachePadded<AtomicU32>,
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
    /// `producer_waiting: u32`
    pub const PRODUCER_WAITING: usize = 384;
    /// `consumer_waiting: u32`
    pub const CONSUMER_WAITING: usize = 512;
    /// `producer_state: u32`
    pub const PRODUCER_STATE: usize = 640;
    /// `consumer_state: u32`
    pub const CONSUMER_STATE: usize = 768;
    /// Size of the header struct; bytes from here to `DATA_OFFSET` are zero and unused.
    pub const HEADER_SIZE: usize = 896;
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
    assert!(offset_of!(Header, producer_waiting) == offsets::PRODUCER_WAITING);
    assert!(offset_of!(Header, consumer_waiting) == offsets::CONSUMER_WAITING);
    assert!(offset_of!(Header, producer_state) == offsets::PRODUCER_STATE);
    assert!(offset_of!(Header, consumer_state) == offsets::CONSUMER_STATE);
    assert!(size_of::<Header>() == offsets::HEADER_SIZE);
    assert!(std::mem::align_of::<Header>() == 128);
    assert!(offsets::HEADER_SIZE <= DATA_OFFSET);
    assert!(DATA_OFFSET % 128 == 0);
    assert!(MIN_CAPACITY.is_power_of_two() && MAX_CAPACITY.is_power_of_two());
};

/// Largest `max_message` a ring of `capacity` bytes accepts. A record of at most half the
/// ring always fits into an empty ring, wherever the indices stand: either before the end, or
/// after padding to the end (the padding is then shorter than the half the record leaves).
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
    RECORD_ALIGN + len.next_multiple_of(RECORD_ALIGN)
}

#[inline]
pub(crate) fn encode_record(kind: u32, len: u32) -> u64 {
    (u64::from(kind) << 32) | u64::from(len)
}

/// What the record at the consumer's position is, once its header word has been checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Record {
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

/// Decide what a record header `word` at ring position `pos` means, given that `avail` bytes
/// (from `pos` on) were published. Every value comes from the peer and is checked: the record
/// must lie inside both the published bytes and the ring, and padding must end at the ring's
/// end exactly.
pub fn parse_record(
    word: u64,
    pos: usize,
    avail: u64,
    capacity: usize,
    max_message: usize,
) -> Result<Record, Corruption> {
    let kind = (word >> 32) as u32;
    let len = word as u32 as usize;
    let to_end = capacity - pos;
    match kind {
        KIND_MESSAGE => {
            let size = record_size(len);
            if len > max_message || size as u64 > avail || size > to_end {
                return Err(Corruption::RecordLength {
                    position: pos as u64,
                    len: len as u64,
                    max: max_message as u64,
                    available: avail.min(to_end as u64),
                });
            }
            Ok(Record::Message { len })
        }
        KIND_PADDING => {
            if len + RECORD_ALIGN != to_end || to_end as u64 > avail {
                return Err(Corruption::Padding {
                    position: pos as u64,
                    len: len as u64,
                    expected: (to_end - RECORD_ALIGN) as u64,
                });
            }
            Ok(Record::Padding { skip: to_end })
        }
        _ => Err(Corruption::RecordKind {
            position: pos as u64,
            word,
        }),
    }
}

/// Check a producer index just loaded from shared memory. `head` is the consumer's own
/// position, `prev` the last accepted tail. Returns the number of readable bytes.
pub fn check_tail(head: u64, prev: u64, tail: u64, capacity: usize) -> Result<u64, Corruption> {
    let avail = tail.wrapping_sub(head);
    if tail % RECORD_ALIGN as u64 != 0 {
        return Err(Corruption::IndexMisaligned {
            index: "tail",
            value: tail,
        });
    }
    if avail > capacity as u64 {
        return Err(Corruption::IndexOutOfRange {
            index: "tail",
            value: tail,
            other: head,
            capacity: capacity as u64,
        });
    }
    if tail.wrapping_sub(prev) > capacity as u64 {
        return Err(Corruption::IndexMovedBackwards {
            index: "tail",
            was: prev,
            now: tail,
        });
    }
    Ok(avail)
}

/// Check a consumer index just loaded from shared memory. `published` is the tail the
/// producer has made visible (the consumer cannot have released more), `prev` the last
/// accepted head. Returns the bytes still in use (published, not released).
pub fn check_head(
    published: u64,
    prev: u64,
    head: u64,
    capacity: usize,
) -> Result<u64, Corruption> {
    if head % RECORD_ALIGN as u64 != 0 {
        return Err(Corruption::IndexMisaligned {
            index: "head",
            value: head,
        });
    }
    let used = published.wrapping_sub(head);
    if used > capacity as u64 {
        return Err(Corruption::IndexOutOfRange {
            index: "head",
            value: head,
            other: published,
            capacity: capacity as u64,
        });
    }
    if head.wrapping_sub(prev) > capacity as u64 {
        return Err(Corruption::IndexMovedBackwards {
            index: "head",
            was: prev,
            now: head,
        });
    }
    Ok(used)
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
    fn limits_keep_a_max_record_within_half_the_ring() {
        for cap in [MIN_CAPACITY, 4096, DEFAULT_CAPACITY, MAX_CAPACITY] {
            assert!(record_size(max_message_limit(cap)) <= cap / 2);
            assert!(default_max_message(cap) <= max_message_limit(cap));
        }
    }

    #[test]
    fn parse_accepts_exact_fits_and_rejects_overruns() {
        let cap = 64;
        let w = encode_record(KIND_MESSAGE, 24);
        assert_eq!(
            parse_record(w, 0, 32, cap, 24),
            Ok(Record::Message { len: 24 })
        );
        assert_eq!(
            parse_record(w, 32, 32, cap, 24),
            Ok(Record::Message { len: 24 })
        );
        // 32 bytes needed, 24 published.
        assert!(matches!(
            parse_record(w, 0, 24, cap, 24),
            Err(Corruption::RecordLength { .. })
        ));
        // Straddles the end of the ring.
        assert!(matches!(
            parse_record(w, 40, 64, cap, 24),
            Err(Corruption::RecordLength { .. })
        ));
        // Longer than max_message.
        let w = encode_record(KIND_MESSAGE, 25);
        assert!(matches!(
            parse_record(w, 0, 64, cap, 24),
            Err(Corruption::RecordLength { .. })
        ));
        // A u32::MAX length cannot overflow the size arithmetic.
        let w = encode_record(KIND_MESSAGE, u32::MAX);
        assert!(parse_record(w, 0, 64, cap, 24).is_err());
    }

    #[test]
    fn padding_must_end_exactly_at_the_ring_end() {
        let cap = 64;
        let ok = encode_record(KIND_PADDING, 16);
        assert_eq!(
            parse_record(ok, 40, 24, cap, 24),
            Ok(Record::Padding { skip: 24 })
        );
        assert!(matches!(
            parse_record(ok, 32, 64, cap, 24),
            Err(Corruption::Padding { .. })
        ));
        // Padding that was not fully published.
        assert!(matches!(
            parse_record(ok, 40, 16, cap, 24),
            Err(Corruption::Padding { .. })
        ));
        assert!(matches!(
            parse_record(0, 0, 64, cap, 24),
            Err(Corruption::RecordKind { .. })
        ));
    }

    #[test]
    fn tail_checks_cover_overrun_backwards_and_misalignment() {
        let cap = 64;
        assert_eq!(check_tail(8, 8, 72, cap), Ok(64));
        assert!(matches!(
            check_tail(8, 8, 80, cap),
            Err(Corruption::IndexOutOfRange { .. })
        ));
        assert!(matches!(
            check_tail(8, 40, 32, cap),
            Err(Corruption::IndexMovedBackwards { .. })
        ));
        assert!(matches!(
            check_tail(8, 8, 12, cap),
            Err(Corruption::IndexMisaligned { .. })
        ));
        // Across the u64 wrap.
        let head = u64::MAX - 15;
        assert_eq!(check_tail(head, head, head.wrapping_add(48), cap), Ok(48));
    }

    #[test]
    fn head_checks_cover_overrun_backwards_and_misalignment() {
        let cap = 64;
        assert_eq!(check_head(72, 8, 40, cap), Ok(32));
        assert!(matches!(
            check_head(72, 8, 80, cap),
            Err(Corruption::IndexOutOfRange { .. })
        ));
        assert!(matches!(
            check_head(72, 40, 32, cap),
            Err(Corruption::IndexMovedBackwards { .. })
        ));
        assert!(matches!(
            check_head(72, 8, 9, cap),
            Err(Corruption::IndexMisaligned { .. })
        ));
        let t = 40u64;
        assert_eq!(check_head(t, u64::MAX - 7, u64::MAX - 7, cap), Ok(48));
    }
}
