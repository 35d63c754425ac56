//! libFuzzer target: the consumer's view of an arbitrary shared-memory image.
//!
//! The input is a ring shape and an image: byte 0 picks the capacity (64..1024), bytes 1-2
//! the maximum message, bytes 3-10 the head, bytes 11-12 the tail's distance from it (any
//! i16, so misaligned, backwards and past-capacity tails come up), bytes 13-15 which receive
//! calls drain it, and the rest is the data area from the head on (repeated to fill the
//! ring). The real consumer, run over that image in a real memfd ring, must hand over
//! exactly the messages of the reference reader (docs/protocol.md §1.5-1.6 written a second
//! time) and stop where and how it stops; any panic (an out-of-bounds assert, an arithmetic
//! overflow, a mismatch) or, under ASan (cargo fuzz's default), a bad access is a crash.

#![no_main]

use libfuzzer_sys::fuzz_target;
use shmring_fuzz::image::{self, Image};

fuzz_target!(|input: &[u8]| {
    if input.len() < 16 {
        return;
    }
    let capacity = 1usize << (6 + input[0] % 5);
    let max = shmring_fuzz::max_message_for(capacity, u16::from_le_bytes([input[1], input[2]]));
    let head = u64::from_le_bytes(input[3..11].try_into().expect("8 bytes"));
    let shift = i16::from_le_bytes([input[11], input[12]]);
    let how = &input[13..16];
    let bytes = &input[16..];
    let mut data = vec![0u8; capacity];
    if !bytes.is_empty() {
        for (i, b) in bytes.iter().cycle().take(capacity).enumerate() {
            data[(head as usize).wrapping_add(i) & (capacity - 1)] = *b;
        }
    }
    let img = Image {
        data,
        head,
        tail: head.wrapping_add(i64::from(shift) as u64),
    };
    let (want, want_end) = image::reference_read(&img.data, img.head, img.tail, max);
    let got = image::consume(&img, max, how);
    assert_eq!(got.end, want_end, "how the consumer stopped");
    assert!(got.messages == want, "messages differ from the reference");
});
