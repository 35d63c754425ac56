//! Test helpers: every test that waits on another thread runs under a deadline.
#![allow(dead_code, unreachable_pub)]

use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::mpsc;
use std::time::Duration;

/// Run `f` on its own thread and fail the test if it has not finished within `secs`
/// (under miri, which is ~1000x slower, the deadline is stretched).
pub fn deadline<T: Send + 'static>(
    secs: u64,
    what: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let secs = if cfg!(miri) { secs * 200 } else { secs };
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(catch_unwind(AssertUnwindSafe(f)));
    });
    match rx.recv_timeout(Duration::from_secs(secs)) {
        Ok(Ok(v)) => v,
        Ok(Err(panic)) => resume_unwind(panic),
        Err(_) => panic!("{what}: still running after {secs} s (hang)"),
    }
}

/// Loop counts scaled down under miri.
pub fn scaled(n: usize) -> usize {
    if cfg!(miri) { (n / 100).max(4) } else { n }
}

/// A message whose every byte is a function of `seq` and its length, to check in place.
pub fn fill(seq: u64, len: usize, out: &mut Vec<u8>) {
    out.clear();
    let mut x = seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let take = (len - out.len()).min(8);
        out.extend_from_slice(&x.to_le_bytes()[..take]);
    }
}

/// Check a message made by `fill`.
pub fn check(seq: u64, msg: &[u8], scratch: &mut Vec<u8>) {
    fill(seq, msg.len(), scratch);
    assert!(
        msg == &scratch[..],
        "message {seq} of {} bytes corrupted",
        msg.len()
    );
}

/// Message length for `seq`: mostly small, sometimes large, never above `max`.
pub fn size_for(seq: u64, max: usize) -> usize {
    let r = seq.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40;
    let len = match r % 16 {
        0 => r as usize % (max + 1),
        1..=3 => 0,
        _ => r as usize % 257,
    };
    len.min(max)
}
