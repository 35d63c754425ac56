//! libFuzzer target: the consumer's view of an arbitrary shared-memory image.
//!
//! The input is a ring shape, the header fields a consumer reads (head, the `tail` field, the
//! producer's state word) and a data area, decoded by `shmpipe_fuzz::image::from_fuzz_input`
//! (which can stamp each reachable header word with its index's tag, so that the fuzzer's
//! lengths and kinds get past the first word). The real consumer, run over that image in a
//! real memfd ring, must hand over exactly the messages of the reference reader
//! (docs/protocol.md §1.4 and §1.6 written a second time) and stop where and how it stops;
//! any panic (an out-of-bounds assert, an arithmetic overflow, a mismatch) or, under ASan
//! (cargo fuzz's default), a bad access is a crash.

#![no_main]

use libfuzzer_sys::fuzz_target;
use shmpipe_fuzz::image;

fuzz_target!(|input: &[u8]| {
    let Some((img, max, how)) = image::from_fuzz_input(input) else {
        return;
    };
    let want = image::reference_read(&img.data, img.head, img.tail, img.producer, max);
    let got = image::consume(&img, max, &how);
    assert_eq!(got.end, want.end, "how the consumer stopped");
    assert!(
        got.messages == want.messages,
        "messages differ from the reference"
    );
});
