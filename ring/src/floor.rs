//! `ring-floor`: the yardstick the benchmarks put next to shmpipe in the same run.
//!
//! The same record bytes as the ring (docs/protocol.md §1.4), written and read with nothing
//! else: the producer copies the payload in, clears the word after the record and stores the
//! header word (Release); the consumer spins on the header word at its index, copies the
//! payload out, and releases its index every quarter ring and whenever it finds the ring
//! empty, as the ring does. No validation of what the peer wrote (beyond the bounds the safe
//! accessors assert), no state words, no wake-ups (both sides spin), no statistics, no errors.
//! Whatever shmpipe spends beyond this, per message, is the price of its guarantees.
//!
//! Not an API: the bench and fuzz crates use it; it may change with any release.

use crate::layout::{
    KIND_MESSAGE, KIND_PADDING, LEN_MASK, RECORD_ALIGN, encode_record, record_size,
};
use crate::segment::Ring;
use crate::sync::{Ordering, Pacer, spin_hint};

/// The producing side of the floor. Takes a ring whose roles are never claimed.
#[derive(Debug)]
pub struct FloorProducer {
    ring: Ring,
    tail: u64,
    head: u64,
    capacity: u64,
}

impl FloorProducer {
    /// Produce into `ring` from the index in its header.
    pub fn new(ring: Ring) -> FloorProducer {
        let h = ring.region().header();
        let tail = h.tail.load(Ordering::Relaxed);
        let head = h.head.load(Ordering::Relaxed);
        let capacity = ring.capacity() as u64;
        FloorProducer {
            ring,
            tail,
            head,
            capacity,
        }
    }

    /// Write and publish `msg`, spinning while the ring is full.
    ///
    /// # Panics
    ///
    /// If `msg` is longer than the ring's maximum message.
    #[inline]
    pub fn send(&mut self, msg: &[u8]) {
        assert!(msg.len() <= self.ring.max_message(), "message too large");
        let r = self.ring.region().view();
        let size = record_size(msg.len()) as u64;
        let mask = self.capacity - 1;
        let to_end = self.capacity - (self.tail & mask);
        let pad = if size <= to_end { 0 } else { to_end };
        while self.tail.wrapping_sub(self.head) + pad + size + RECORD_ALIGN as u64 > self.capacity {
            spin_hint();
            self.head = r.header().head.load(Ordering::Acquire);
        }
        let mut index = self.tail;
        if pad != 0 {
            // Written first, published last: the message after it is in place by then.
            let start = index.wrapping_add(pad);
            let pos = (start & mask) as usize;
            r.write(pos + RECORD_ALIGN, msg);
            r.store_word(start.wrapping_add(size), 0);
            r.store_word(start, encode_record(KIND_MESSAGE, start, msg.len()));
            r.publish_word(index, encode_record(KIND_PADDING, index, pad as usize - 8));
            index = start;
        } else {
            let pos = (index & mask) as usize;
            r.write(pos + RECORD_ALIGN, msg);
            r.store_word(index.wrapping_add(size), 0);
            r.publish_word(index, encode_record(KIND_MESSAGE, index, msg.len()));
        }
        self.tail = index.wrapping_add(size);
    }
}

/// The consuming side of the floor.
#[derive(Debug)]
pub struct FloorConsumer {
    ring: Ring,
    head: u64,
    released: u64,
    capacity: u64,
    buf: Vec<u8>,
}

impl FloorConsumer {
    /// Consume from `ring` from the index in its header.
    pub fn new(ring: Ring) -> FloorConsumer {
        let head = ring.region().header().head.load(Ordering::Relaxed);
        let capacity = ring.capacity() as u64;
        FloorConsumer {
            ring,
            head,
            released: head,
            capacity,
            buf: Vec::new(),
        }
    }

    /// Spin until a record is there, then hand up to `max` messages (each copied out) to
    /// `f`. Returns how many.
    #[inline]
    pub fn drain(&mut self, max: usize, mut f: impl FnMut(&[u8])) -> usize {
        let r = self.ring.region().view();
        let mask = self.capacity - 1;
        let mut n = 0;
        let mut pacer = Pacer::default();
        while n < max {
            let word = r.load_word(self.head);
            if word == 0 {
                if self.head != self.released {
                    r.header().head.store(self.head, Ordering::Release);
                    self.released = self.head;
                }
                if n > 0 {
                    break;
                }
                pacer.pause();
                continue;
            }
            let len = (word & LEN_MASK) as usize;
            if (word >> 30) & 0b11 == KIND_PADDING {
                self.head = self.head.wrapping_add(len as u64 + RECORD_ALIGN as u64);
                continue;
            }
            let pos = (self.head & mask) as usize;
            r.read_to_vec(pos + RECORD_ALIGN, len, &mut self.buf);
            f(&self.buf);
            n += 1;
            self.head = self.head.wrapping_add(record_size(len) as u64);
            if self.head.wrapping_sub(self.released) >= self.capacity / 4 {
                r.header().head.store(self.head, Ordering::Release);
                self.released = self.head;
            }
        }
        n
    }
}
