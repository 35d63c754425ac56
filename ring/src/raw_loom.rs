//! The loom twin of `raw.rs`: the same API over loom-tracked memory, so the protocol code in
//! producer.rs and consumer.rs is model-checked unchanged.
//!
//! The header is an ordinary allocation of loom atomics. The data area is a slice of
//! `loom::cell::UnsafeCell<u64>` words: loom fails a model if any payload or record-header
//! access is not ordered after the index store that handed that range to the accessing side.

use std::marker::PhantomData;

use loom::cell::UnsafeCell;

use crate::layout::Header;
use crate::sync::{AtomicU32, AtomicU64};

pub(crate) fn fork_generation() -> u32 {
    0
}

pub(crate) struct Region {
    header: Box<Header>,
    words: Box<[UnsafeCell<u64>]>,
    capacity: usize,
}

impl std::fmt::Debug for Region {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Region")
            .field("capacity", &self.capacity)
            .finish()
    }
}

impl Region {
    pub(crate) fn heap(capacity: usize) -> Region {
        use crate::layout::ConfigLine;
        use crossbeam_utils::CachePadded;
        let header = Box::new(Header {
            config: CachePadded::new(ConfigLine {
                magic: AtomicU64::new(0),
                version: AtomicU32::new(0),
                data_offset: AtomicU32::new(0),
                capacity: AtomicU64::new(0),
                max_message: AtomicU64::new(0),
            }),
            tail: CachePadded::new(AtomicU64::new(0)),
            head: CachePadded::new(AtomicU64::new(0)),
            producer_waiting: CachePadded::new(AtomicU32::new(0)),
            consumer_waiting: CachePadded::new(AtomicU32::new(0)),
            producer_state: CachePadded::new(AtomicU32::new(0)),
            consumer_state: CachePadded::new(AtomicU32::new(0)),
        });
        let words = (0..capacity / 8).map(|_| UnsafeCell::new(0)).collect();
        Region {
            header,
            words,
            capacity,
        }
    }

    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    pub(crate) fn header(&self) -> &Header {
        &self.header
    }

    pub(crate) fn load_word(&self, pos: usize) -> u64 {
        assert!(pos % 8 == 0);
        // SAFETY: loom checks that no write to this word is concurrent with the read.
        self.words[pos / 8].with(|p| unsafe { *p })
    }

    pub(crate) fn store_word(&self, pos: usize, value: u64) {
        assert!(pos % 8 == 0);
        // SAFETY: loom checks that no other access to this word is concurrent with the write.
        self.words[pos / 8].with_mut(|p| unsafe { *p = value })
    }

    fn read_bytes(&self, pos: usize, dst: &mut [u8]) {
        assert!(pos + dst.len() <= self.capacity);
        for (i, b) in dst.iter_mut().enumerate() {
            let at = pos + i;
            let word = self.load_word(at & !7);
            *b = word.to_le_bytes()[at % 8];
        }
    }

    pub(crate) fn read_to_vec(&self, pos: usize, len: usize, out: &mut Vec<u8>) {
        out.clear();
        out.resize(len, 0);
        self.read_bytes(pos, out)
    }

    pub(crate) fn write(&self, pos: usize, src: &[u8]) {
        assert!(pos + src.len() <= self.capacity);
        for (i, b) in src.iter().enumerate() {
            let at = pos + i;
            let mut bytes = self.load_word(at & !7).to_le_bytes();
            bytes[at % 8] = *b;
            self.store_word(at & !7, u64::from_le_bytes(bytes));
        }
    }

    pub(crate) fn write_record(&self, pos: usize, kind: u32, payload: &[u8]) {
        self.write(pos + 8, payload);
        self.store_word(
            pos,
            crate::layout::encode_record(kind, payload.len() as u32),
        );
    }

    pub(crate) fn span(&self, pos: usize, len: usize) -> Span<'_> {
        assert!(pos + len <= self.capacity);
        Span {
            region: self,
            pos,
            len,
            _p: PhantomData,
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
    _p: PhantomData<&'a ()>,
}

impl<'a> Span<'a> {
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn write_at(&self, offset: usize, src: &[u8]) {
        assert!(offset + src.len() <= self.len);
        self.region.write(self.pos + offset, src)
    }

    pub(crate) fn read_to_vec(&self, out: &mut Vec<u8>) {
        self.region.read_to_vec(self.pos, self.len, out)
    }

    pub(crate) fn read_into(&self, dst: &mut [u8]) {
        assert_eq!(dst.len(), self.len);
        self.region.read_bytes(self.pos, dst)
    }
}
