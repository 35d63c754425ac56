//! The contract of the raw module, checked against whichever implementation is compiled: raw.rs
//! normally and under miri, raw_loom.rs under `--cfg loom` (inside a loom model). The two
//! cannot drift apart unnoticed: CI runs this file both ways.

use crate::layout::{DATA_OFFSET, Header};
use crate::raw::{Region, fork_generation};
use crate::sync::Ordering;

const CAP: usize = 64;

fn run(f: impl Fn() + Sync + Send + 'static) {
    #[cfg(loom)]
    loom::model(f);
    #[cfg(not(loom))]
    f();
}

#[test]
fn a_new_region_is_zero_and_knows_its_capacity() {
    run(|| {
        let r = Region::heap(CAP);
        assert_eq!(r.capacity(), CAP);
        assert!(!r.forked());
        assert_eq!(fork_generation(), fork_generation());
        let h: &Header = r.header();
        assert_eq!(h.tail.load(Ordering::Relaxed), 0);
        assert_eq!(h.head.load(Ordering::Relaxed), 0);
        assert_eq!(h.producer.load(Ordering::Relaxed), 0);
        assert_eq!(h.consumer.load(Ordering::Relaxed), 0);
        let v = r.view();
        for index in (0..CAP as u64).step_by(8) {
            assert_eq!(v.load_word(index), 0, "word at {index}");
        }
        let _ = DATA_OFFSET;
    });
}

#[test]
fn words_are_addressed_by_index_modulo_the_capacity() {
    run(|| {
        let r = Region::heap(CAP);
        let v = r.view();
        v.store_word(8, 1);
        v.publish_word(CAP as u64 + 16, 2);
        assert_eq!(v.load_word(8 + 3 * CAP as u64), 1);
        assert_eq!(v.load_word(16), 2);
        // The last word of the data area, and its index on a far lap.
        v.store_word(u64::MAX - 7, 3);
        assert_eq!(v.load_word(CAP as u64 - 8), 3);
    });
}

#[test]
fn payload_bytes_and_words_are_the_same_memory() {
    run(|| {
        let r = Region::heap(CAP);
        let v = r.view();
        v.write(8, &0x0102_0304_0506_0708u64.to_le_bytes());
        assert_eq!(v.load_word(8), 0x0102_0304_0506_0708);
        v.store_word(16, u64::from_le_bytes(*b"abcdefgh"));
        let mut out = vec![9; 3];
        v.read_to_vec(18, 4, &mut out);
        assert_eq!(out, b"cdef");
        // Unaligned writes that span words leave their neighbours alone.
        v.write(13, b"XYZ");
        let mut all = Vec::new();
        v.read_to_vec(8, 16, &mut all);
        assert_eq!(&all, b"\x08\x07\x06\x05\x04XYZabcdefgh");
    });
}

#[test]
fn spans_read_and_write_their_window() {
    run(|| {
        let r = Region::heap(CAP);
        let v = r.view();
        let mut w = v.span_mut(24, 10);
        w.write_at(0, b"0123456789");
        w.write_at(8, b"ab");
        let s = v.span(24, 10);
        assert_eq!(s.len(), 10);
        let mut dst = [0; 10];
        s.read_into(&mut dst);
        assert_eq!(&dst, b"01234567ab");
        let mut out = Vec::new();
        s.read_to_vec(&mut out);
        assert_eq!(out, b"01234567ab");
        // The window may end exactly at the end of the data area.
        let _ = v.span(CAP - 8, 8);
        let _ = v.span(CAP, 0);
    });
}

#[test]
#[should_panic(expected = "out of bounds")]
fn a_span_past_the_end_panics() {
    run(|| {
        let r = Region::heap(CAP);
        let _ = r.view().span(CAP - 8, 9);
    });
}

#[test]
#[should_panic(expected = "out of bounds")]
fn a_write_past_the_end_panics() {
    run(|| {
        let r = Region::heap(CAP);
        r.view().write(CAP - 2, b"abc");
    });
}

#[test]
#[should_panic(expected = "grant overflow")]
fn writing_past_a_window_panics() {
    run(|| {
        let r = Region::heap(CAP);
        r.view().span_mut(0, 4).write_at(2, b"abc");
    });
}
