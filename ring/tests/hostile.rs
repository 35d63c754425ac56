//! A hostile peer writes the shared segment (through the memfd: the same pages the ring has
//! mapped) and the ring must answer `Corrupted`, never panic, hang or read out of bounds.
//! Rows R1-R4, R6 and R9 of ../shared/FAULTS.md (R5 is in ring.rs, R7 in loom.rs, R8 in
//! segment.rs).
#![cfg(not(miri))]

mod common;

use std::time::{Duration, Instant};

use shmring_ring::layout::offsets;
use shmring_ring::{
    Config, Consumer, Corruption, DATA_OFFSET, Producer, RecvError, Ring, SendError, TryRecvError,
    TrySendError,
};

const CAP: u64 = 4096;

struct Peer {
    ring: Ring,
}

impl Peer {
    fn new() -> (Peer, Producer, Consumer) {
        let ring = Ring::create(&Config::new().capacity(CAP as usize)).unwrap();
        let (tx, rx) = ring.pair().unwrap();
        (Peer { ring }, tx, rx)
    }

    fn write_u64(&self, offset: usize, value: u64) {
        rustix::io::pwrite(self.ring.memfd(), &value.to_le_bytes(), offset as u64).unwrap();
    }

    fn read_u64(&self, offset: usize) -> u64 {
        let mut b = [0u8; 8];
        rustix::io::pread(self.ring.memfd(), &mut b, offset as u64).unwrap();
        u64::from_le_bytes(b)
    }

    /// Overwrite the record header word at data position `pos`.
    fn write_record(&self, pos: u64, kind: u32, len: u32) {
        self.write_u64(
            DATA_OFFSET + pos as usize,
            (u64::from(kind) << 32) | u64::from(len),
        );
    }
}

fn corrupted(r: Result<usize, TryRecvError>) -> Corruption {
    match r {
        Err(TryRecvError::Failed(RecvError::Corrupted(c))) => c,
        other => panic!("expected Corrupted, got {other:?}"),
    }
}

#[test]
fn r1_a_tail_more_than_a_capacity_ahead_is_corruption_and_sticks() {
    for bad in [CAP + 8, CAP + 1, u64::MAX - 7, 1 << 40] {
        let (peer, _tx, mut rx) = Peer::new();
        peer.write_u64(offsets::TAIL, bad);
        let mut buf = Vec::new();
        let c = corrupted(rx.try_recv(&mut buf));
        assert!(
            matches!(
                c,
                Corruption::IndexOutOfRange { .. } | Corruption::IndexMisaligned { .. }
            ),
            "{bad}: {c}"
        );
        // It stays reported, even if the peer puts the tail back.
        peer.write_u64(offsets::TAIL, 0);
        assert_eq!(corrupted(rx.try_recv(&mut buf)), c);
        assert!(
            matches!(rx.recv(&mut buf), Err(RecvError::Corrupted(_))),
            "blocking recv too"
        );
    }
}

#[test]
fn r2_a_tail_that_moves_backwards_is_corruption() {
    let (peer, mut tx, mut rx) = Peer::new();
    for _ in 0..3 {
        tx.try_send(b"12345678").unwrap();
    }
    let mut buf = Vec::new();
    for _ in 0..3 {
        rx.try_recv(&mut buf).unwrap();
    }
    peer.write_u64(offsets::TAIL, 16); // behind the 48 bytes already read
    assert!(matches!(
        corrupted(rx.try_recv(&mut buf)),
        Corruption::IndexOutOfRange { .. }
    ));
}

#[test]
fn r2_a_head_that_moves_backwards_or_past_the_tail_is_corruption_for_the_producer() {
    // Moves backwards within range.
    let ring = Ring::create(&Config::new().capacity(256)).unwrap();
    let (mut tx, mut rx) = ring.pair().unwrap();
    let peer = Peer { ring };
    for _ in 0..4 {
        tx.try_send(&[0; 56]).unwrap(); // four 64-byte records: full
    }
    let mut buf = Vec::new();
    rx.try_recv(&mut buf).unwrap();
    rx.try_recv(&mut buf).unwrap(); // released: head = 128
    tx.try_send(&[0; 56]).unwrap(); // refreshes the head: 128; tail = 320
    peer.write_u64(offsets::HEAD, 64);
    match tx.try_send(&[0; 57]) {
        Err(TrySendError::Failed(SendError::Corrupted(Corruption::IndexMovedBackwards {
            ..
        }))) => {}
        other => panic!("{other:?}"),
    }
    // Past the published tail.
    let (peer, mut tx, _rx) = Peer::new();
    while tx.try_send(&[0; 100]).is_ok() {}
    peer.write_u64(offsets::HEAD, CAP * 2);
    assert!(matches!(
        tx.try_send(&[0; 100]),
        Err(TrySendError::Failed(SendError::Corrupted(
            Corruption::IndexOutOfRange { .. }
        )))
    ));
    assert!(
        matches!(tx.send(&[0; 100]), Err(SendError::Corrupted(_))),
        "sticks"
    );
}

#[test]
fn r3_impossible_record_headers_are_corruption() {
    let max = (CAP / 4) as u32;
    let cases: [(&str, u32, u32); 6] = [
        ("longer than published", 1, 64),
        ("longer than max", 1, max + 1),
        ("u32::MAX length", 1, u32::MAX),
        ("unknown kind", 7, 8),
        ("zero word", 0, 0),
        ("padding not to the end", 2, 8),
    ];
    for (what, kind, len) in cases {
        let (peer, mut tx, mut rx) = Peer::new();
        tx.try_send(&[0xAB; 24]).unwrap(); // one 32-byte record at 0
        peer.write_record(0, kind, len);
        let c = corrupted(rx.try_recv(&mut Vec::new()));
        let expected = match what {
            "unknown kind" | "zero word" => matches!(c, Corruption::RecordKind { .. }),
            "padding not to the end" => matches!(c, Corruption::Padding { .. }),
            _ => matches!(c, Corruption::RecordLength { .. }),
        };
        assert!(expected, "{what}: {c}");
    }
}

#[test]
fn r3_a_record_that_would_straddle_the_end_is_corruption() {
    let (peer, mut tx, mut rx) = Peer::new();
    let mut buf = Vec::new();
    // Walk to 16 bytes before the end, then publish a record there claiming 40 bytes.
    for _ in 0..((CAP - 16) / 16) {
        tx.try_send(&[1; 8]).unwrap();
        rx.try_recv(&mut buf).unwrap();
    }
    tx.try_send(&[1; 8]).unwrap(); // fills the last 16 bytes exactly
    tx.try_send(&[2; 8]).unwrap(); // continues at position 0: 32 bytes published in all
    peer.write_record(CAP - 16, 1, 40); // 48 bytes from 16 before the end: past the end

    assert!(matches!(
        corrupted(rx.try_recv(&mut buf)),
        Corruption::RecordLength { .. }
    ));
}

#[test]
fn r4_a_length_rewritten_while_being_read_never_goes_out_of_bounds() {
    // A thread rewrites the header of the next record with random values, as fast as it can,
    // while the consumer reads. Allowed: a message (its bytes may be garbage) or Corrupted.
    let deadline = Instant::now() + Duration::from_secs(if cfg!(debug_assertions) { 2 } else { 5 });
    let mut rounds = 0;
    let mut outcomes = [0u32; 2];
    while Instant::now() < deadline {
        rounds += 1;
        let (peer, mut tx, mut rx) = Peer::new();
        let fd = peer.ring.memfd().try_clone_to_owned().unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let vandal = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ rounds;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let pos = (x >> 3) % (CAP / 8) * 8;
                    // Kind 1 or 2 with a random length: the nastiest plausible headers.
                    let word = ((1 + (x & 1)) << 32) | (x >> 40);
                    let _ = rustix::io::pwrite(&fd, &word.to_le_bytes(), DATA_OFFSET as u64 + pos);
                }
            })
        };
        let mut buf = Vec::new();
        for i in 0..200u32 {
            let _ = tx.try_send(&i.to_le_bytes().repeat(1 + i as usize % 50));
            match rx.try_recv(&mut buf) {
                Ok(n) => {
                    assert!(n <= rx.max_message());
                    outcomes[0] += 1;
                }
                Err(TryRecvError::Empty) => {}
                Err(TryRecvError::Failed(RecvError::Corrupted(_))) => {
                    outcomes[1] += 1;
                    break;
                }
                Err(e) => panic!("{e}"),
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        vandal.join().unwrap();
    }
    assert!(
        outcomes[1] > 0,
        "the vandal never caused a detected corruption in {rounds} rounds"
    );
}

#[test]
fn r6_a_peer_overwriting_our_published_index_does_not_affect_us() {
    let (peer, mut tx, mut rx) = Peer::new();
    let mut buf = Vec::new();
    for i in 0..3u8 {
        tx.try_send(&[i; 8]).unwrap();
    }
    // Garbage over the consumer's published head: the consumer keeps its own copy.
    peer.write_u64(offsets::HEAD, 0xDEAD_BEEF_DEAD_BEE8);
    for i in 0..3u8 {
        rx.try_recv(&mut buf).unwrap();
        assert_eq!(buf, [i; 8]);
    }
    assert_eq!(
        peer.read_u64(offsets::HEAD),
        48,
        "our next release wrote the true head back"
    );
    // Garbage over the producer's published tail: the producer's next publish overwrites it.
    peer.write_u64(offsets::TAIL, 0xDEAD_BEEF_DEAD_BEE8);
    tx.try_send(b"fine").unwrap();
    assert_eq!(peer.read_u64(offsets::TAIL), 64);
    rx.try_recv(&mut buf).unwrap();
    assert_eq!(buf, b"fine");
}

#[test]
fn r9_uncommitted_or_unpublished_records_of_a_vanished_producer_are_never_seen() {
    let (_peer, mut tx, mut rx) = Peer::new();
    tx.try_send(b"committed").unwrap();
    {
        let mut g = tx.try_reserve(32).unwrap();
        g.copy_from_slice(&[0xEE; 32]);
        g.abort(); // the process "dies" with the grant written, uncommitted (no destructor)
    }
    let mut b = tx.batch();
    b.try_send(b"staged, never published").unwrap();
    std::mem::forget(b);
    std::mem::forget(tx); // no Drop: no publish, no close, as after SIGKILL
    let mut buf = Vec::new();
    rx.try_recv(&mut buf).unwrap();
    assert_eq!(buf, b"committed");
    assert!(matches!(rx.try_recv(&mut buf), Err(TryRecvError::Empty)));
}
