//! The loom twin of `raw.rs`: the same API over loom-tracked memory, so the protocol code in
//! producer.rs and consumer.rs is model-checked unchanged. The contract both satisfy is the
//! test at the end of raw.rs, compiled under both cfgs.
//!
//! The header is an ordinary allocation of loom atomics. The data area is a slice of loom
//! `AtomicU64` words, and payload bytes live in the same words as record header words, as in
//! the real ring: a position that holds payload on one lap holds a header on another, which is
//! what the clear-ahead rule and the index tag are about. Header words are loaded with Acquire
//! and published with Release; payload is copied word by word with Relaxed accesses, so a copy
//! not ordered after the publication that covers it can read an old value, which the models'
//! content checks catch.

use crate::layout::{Header, RECORD_ALIGN};
use crate::sync::{AtomicU32, AtomicU64, Ordering};

pub(crate) fn fork_generation() -> u32 {
    0
}

/// raw.rs's `Copy` view; here the region itself.
pub(crate) type View<'a> = &'a Region;

#[derive(Clone)]
pub(crate) struct Region {
    inner: std::sync::Arc<Inner>,
}

struct Inner {
    header: Header,
    words: Box<[AtomicU64]>,
    capacity: usize,
}

impl std::fmt::Debug for Region {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Region")
            .field("capacity", &self.inner.capacity)
            .finish()
    }
}

impl Region {
    pub(crate) fn heap(capacity: usize) -> Region {
        use crate::layout::ConfigLine;
        use crossbeam_utils::CachePadded;
        let header = Header {
            config: CachePadded::new(ConfigLine {
                magic: AtomicU64::new(0),
                version: AtomicU32::new(0),
                data_offset: AtomicU32::new(0),
                capacity: AtomicU64::new(0),
                max_message: AtomicU64::new(0),
            }),
            tail: CachePadded::new(AtomicU64::new(0)),
            head: CachePadded::new(AtomicU64::new(0)),
            producer: CachePadded::new(AtomicU32::new(0)),
            consumer: CachePadded::new(AtomicU32::new(0)),
        };
        let words = (0..capacity / 8).map(|_| AtomicU64::new(0)).collect();
        Region {
            inner: std::sync::Arc::new(Inner {
                header,
                words,
                capacity,
            }),
        }
    }

    pub(crate) fn capacity(&self) -> usize {
        self.inner.capacity
    }

    pub(crate) fn header(&self) -> &Header {
        &self.inner.header
    }

    pub(crate) fn view(&self) -> View<'_> {
        self
    }

    fn word(&self, index: u64) -> &AtomicU64 {
        debug_assert!(index % 8 == 0, "misaligned record header");
        &self.inner.words[(index as usize & (self.inner.capacity - RECORD_ALIGN)) / 8]
    }

    pub(crate) fn load_word(&self, index: u64) -> u64 {
        self.word(index).load(Ordering::Acquire)
    }

    pub(crate) fn store_word(&self, index: u64, value: u64) {
        self.word(index).store(value, Ordering::Relaxed)
    }

    pub(crate) fn publish_word(&self, index: u64, value: u64) {
        self.word(index).store(value, Ordering::Release)
    }

    fn data(&self, pos: usize, len: usize) {
        assert!(
            pos <= self.inner.capacity && len <= self.inner.capacity - pos,
            "ring access out of bounds"
        );
    }

    /// Copy bytes out with one Relaxed load per word touched.
    fn read_bytes(&self, pos: usize, dst: &mut [u8]) {
        self.data(pos, dst.len());
        let mut at = pos;
        let mut out = dst;
        while !out.is_empty() {
            let word = self.inner.words[at / 8]
                .load(Ordering::Relaxed)
                .to_le_bytes();
            let from = at % 8;
            let n = (8 - from).min(out.len());
            out[..n].copy_from_slice(&word[from..from + n]);
            out = &mut out[n..];
            at += n;
        }
    }

    pub(crate) fn read_to_vec(&self, pos: usize, len: usize, out: &mut Vec<u8>) {
        self.span(pos, len).read_to_vec(out)
    }

    /// Copy bytes in with one Relaxed store per word touched (and a load first for a word
    /// only partly written; only the producer writes payload, so it reads back its own).
    pub(crate) fn write(&self, pos: usize, src: &[u8]) {
        self.data(pos, src.len());
        let mut at = pos;
        let mut rest = src;
        while !rest.is_empty() {
            let w = &self.inner.words[at / 8];
            let from = at % 8;
            let n = (8 - from).min(rest.len());
            let mut word = if n == 8 {
                [0; 8]
            } else {
                w.load(Ordering::Relaxed).to_le_bytes()
            };
            word[from..from + n].copy_from_slice(&rest[..n]);
            w.store(u64::from_le_bytes(word), Ordering::Relaxed);
            rest = &rest[n..];
            at += n;
        }
    }

    pub(crate) fn span(&self, pos: usize, len: usize) -> Span<'_> {
        self.data(pos, len);
        Span {
            region: self,
            pos,
            len,
        }
    }

    pub(crate) fn span_mut(&self, pos: usize, len: usize) -> SpanMut<'_> {
        SpanMut {
            span: self.span(pos, len),
        }
    }

    pub(crate) fn forked(&self) -> bool {
        false
    }
}

#[derive(Clone, Copy)]
pub(crate) struct Span<'a> {
    region: &'a Region,
    pos: usize,
    len: usize,
}

impl Span<'_> {
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn read_to_vec(&self, out: &mut Vec<u8>) {
        out.clear();
        out.resize(self.len, 0);
        self.region.read_bytes(self.pos, out)
    }

    pub(crate) fn read_into(&self, dst: &mut [u8]) {
        assert_eq!(
            dst.len(),
            self.len,
            "destination length differs from the message length"
        );
        self.region.read_bytes(self.pos, dst)
    }
}

pub(crate) struct SpanMut<'a> {
    span: Span<'a>,
}

impl SpanMut<'_> {
    pub(crate) fn write_at(&mut self, offset: usize, src: &[u8]) {
        let len = self.span.len;
        assert!(offset <= len && src.len() <= len - offset, "grant overflow");
        self.span.region.write(self.span.pos + offset, src)
    }
}
