//! What every message carries, so that every consumer can check every byte it receives.
//!
//! Message `seq` of size `n` (at least 8 bytes) holds `seq` as a little-endian u64 in its first
//! 8 bytes, then the words of a fixed pseudo-random pattern XORed with a mix of `seq`. A
//! consumer that expects `seq` recomputes all of it: a lost, repeated, reordered, torn or stale
//! message (a record left from an earlier lap of a ring has a different `seq`) or a shifted
//! read fails the check. Filling and checking are word-at-a-time loops the compiler
//! vectorizes, the same code for every transport.

use std::fmt;

/// Smallest message the workloads send: room for the sequence number.
pub const MIN_SIZE: usize = 8;

/// The expected contents of every message of one size.
#[derive(Debug, Clone)]
pub struct Pattern {
    size: usize,
    /// Pattern words for bytes 8.. (the last one may be partial).
    words: Vec<u64>,
}

/// A message that is not what the sender wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    /// The sequence number the consumer expected.
    pub expected_seq: u64,
    /// The sequence number found in the first 8 bytes (if there were 8).
    pub found_seq: Option<u64>,
    /// The message length found.
    pub len: usize,
    /// The message length expected.
    pub expected_len: usize,
    /// Offset of the first wrong byte, if the length and sequence number were right.
    pub offset: Option<usize>,
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.len != self.expected_len {
            return write!(
                f,
                "message {} is {} bytes, expected {}",
                self.expected_seq, self.len, self.expected_len
            );
        }
        match (self.found_seq, self.offset) {
            (Some(found), _) if found != self.expected_seq => write!(
                f,
                "expected message {}, got message {found}",
                self.expected_seq
            ),
            (_, Some(offset)) => write!(
                f,
                "message {} has a wrong byte at offset {offset}",
                self.expected_seq
            ),
            _ => write!(f, "message {} is wrong", self.expected_seq),
        }
    }
}

impl std::error::Error for Mismatch {}

/// splitmix64's finalizer: every bit of `seq` changes about half the bits of the mask.
#[inline]
fn mix(seq: u64) -> u64 {
    let mut z = seq.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Pattern {
    /// The pattern for `size`-byte messages.
    ///
    /// # Panics
    ///
    /// If `size < MIN_SIZE`.
    pub fn new(size: usize) -> Pattern {
        assert!(size >= MIN_SIZE, "messages carry at least {MIN_SIZE} bytes");
        let body = size - MIN_SIZE;
        let words = (0..body.div_ceil(8) as u64)
            .map(|i| mix(i ^ 0x5348_4D52_494E_4721))
            .collect();
        Pattern { size, words }
    }

    /// Message size in bytes.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Write message `seq` into `buf` (which must be exactly `size` bytes).
    #[inline]
    pub fn fill(&self, seq: u64, buf: &mut [u8]) {
        assert_eq!(buf.len(), self.size);
        let (head, body) = buf.split_at_mut(MIN_SIZE);
        head.copy_from_slice(&seq.to_le_bytes());
        let m = mix(seq);
        let mut chunks = body.chunks_exact_mut(8);
        for (c, w) in (&mut chunks).zip(&self.words) {
            c.copy_from_slice(&(w ^ m).to_le_bytes());
        }
        let rest = chunks.into_remainder();
        if !rest.is_empty() {
            let w = self.words[self.words.len() - 1] ^ m;
            rest.copy_from_slice(&w.to_le_bytes()[..rest.len()]);
        }
    }

    /// Check that `msg` is exactly message `seq`.
    ///
    /// # Errors
    ///
    /// A [`Mismatch`] describing the first difference.
    #[inline]
    pub fn check(&self, seq: u64, msg: &[u8]) -> Result<(), Mismatch> {
        if msg.len() == self.size && self.diff(seq, msg) == 0 {
            return Ok(());
        }
        Err(self.explain(seq, msg))
    }

    /// OR of the differences of every word: zero if and only if the message is right
    /// (branch-free, so it vectorizes).
    #[inline]
    fn diff(&self, seq: u64, msg: &[u8]) -> u64 {
        let (head, body) = msg.split_at(MIN_SIZE);
        let mut d = u64::from_le_bytes(head.try_into().expect("8 bytes")) ^ seq;
        let m = mix(seq);
        let mut chunks = body.chunks_exact(8);
        for (c, w) in (&mut chunks).zip(&self.words) {
            d |= u64::from_le_bytes(c.try_into().expect("8 bytes")) ^ w ^ m;
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let w = (self.words[self.words.len() - 1] ^ m).to_le_bytes();
            d |= u64::from(rest != &w[..rest.len()]);
        }
        d
    }

    #[cold]
    fn explain(&self, seq: u64, msg: &[u8]) -> Mismatch {
        let found_seq = msg
            .get(..MIN_SIZE)
            .map(|h| u64::from_le_bytes(h.try_into().expect("8 bytes")));
        let mut offset = None;
        if msg.len() == self.size {
            let mut want = vec![0; self.size];
            self.fill(seq, &mut want);
            offset = msg.iter().zip(&want).position(|(a, b)| a != b);
        }
        Mismatch {
            expected_seq: seq,
            found_seq,
            len: msg.len(),
            expected_len: self.size,
            offset,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_every_byte_matters() {
        for size in [8, 9, 15, 64, 100, 4096] {
            let p = Pattern::new(size);
            let mut buf = vec![0; size];
            p.fill(7, &mut buf);
            assert_eq!(p.check(7, &buf), Ok(()));
            let e = p.check(8, &buf).unwrap_err();
            assert_eq!(e.found_seq, Some(7));
            for i in 0..size {
                let mut bad = buf.clone();
                bad[i] ^= 0x10;
                let e = p.check(7, &bad).unwrap_err();
                if i >= MIN_SIZE {
                    assert_eq!(e.offset, Some(i), "size {size} byte {i}");
                }
            }
            assert!(p.check(7, &buf[..size - 1]).is_err());
        }
    }

    #[test]
    fn bodies_differ_between_messages() {
        let p = Pattern::new(64);
        let (mut a, mut b) = (vec![0; 64], vec![0; 64]);
        p.fill(1, &mut a);
        p.fill(2, &mut b);
        assert_ne!(a[8..], b[8..]);
        // A stale body under a correct header is caught.
        b[..8].copy_from_slice(&1u64.to_le_bytes());
        assert!(p.check(1, &b).is_err());
    }
}
