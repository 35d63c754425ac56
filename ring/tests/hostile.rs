//! A hostile peer writes the shared segment (through the memfd: the same pages the ring has
//! mapped) and the ring must answer `Corrupted`, never panic, hang or read out of bounds.
//! Rows R1-R4, R6 and R9 of docs/faults.md (R5 is in ring.rs, R7 in loom.rs, R8 in
//! segment.rs).
#![cfg(not(miri))]

mod common;

use std::time::{Duration, Instant};

use shmpipe_ring::layout::{self, offsets};
use shmpipe_ring::{
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

    /// Overwrite the record header word at ring index `index` with a record of `kind` and
    /// `len`, carrying `index`'s tag (the word the protocol's producer would write there).
    fn write_record(&self, index: u64, kind: u64, len: u64) {
        self.write_word(index, layout::encode_record(kind, index, len as usize));
    }

    /// Overwrite the word at ring index `index` with `word`.
    fn write_word(&self, index: u64, word: u64) {
        self.write_u64(DATA_OFFSET + (index % CAP) as usize, word);
    }
}

fn corrupted(r: Result<usize, TryRecvError>) -> Corruption {
    match r {
        Err(TryRecvError::Failed(RecvError::Corrupted(c))) => c,
        other => panic!("expected Corrupted, got {other:?}"),
    }
}

const MESSAGE: u64 = 1;
const PADDING: u64 = 2;

#[test]
fn r1_a_record_word_with_another_index_tag_is_corruption_and_sticks() {
    // The in-band analogue of an index more than a capacity ahead: a word that is a valid
    // record for another index (an earlier lap, a later one, another position).
    for other in [CAP, 2 * CAP, 8, u64::MAX - 7] {
        let (peer, mut tx, mut rx) = Peer::new();
        tx.try_send(&[7; 16]).unwrap();
        peer.write_word(0, layout::encode_record(MESSAGE, other, 16));
        let mut buf = Vec::new();
        let c = corrupted(rx.try_recv(&mut buf));
        assert!(matches!(c, Corruption::RecordTag { .. }), "{other}: {c}");
        // It stays reported, even if the peer puts the word back.
        peer.write_record(0, MESSAGE, 16);
        assert_eq!(corrupted(rx.try_recv(&mut buf)), c);
        assert!(
            matches!(rx.recv(&mut buf), Err(RecvError::Corrupted(_))),
            "blocking recv too"
        );
    }
}

#[test]
fn r1_a_payload_word_left_from_an_earlier_lap_is_never_taken_for_a_record() {
    // The producer's own payload, on one lap, carries exactly the word that would be a valid
    // record header at that index on the next lap. The consumer must see the word the
    // producer cleared there instead (docs/protocol.md §1.4: the word after every record).
    let (peer, mut tx, mut rx) = Peer::new();
    let mut buf = Vec::new();
    // Records of 64 bytes; the forged word sits at index CAP + 32 (position 32), inside the
    // payload of the first record.
    let forged = layout::encode_record(MESSAGE, CAP + 32, 8);
    let mut first = [0u8; 56];
    first[24..32].copy_from_slice(&forged.to_le_bytes());
    tx.try_send(&first).unwrap();
    for _ in 0..CAP / 64 - 2 {
        tx.try_send(&[1; 56]).unwrap();
    }
    for _ in 0..CAP / 64 - 1 {
        rx.try_recv(&mut buf).unwrap();
    }
    // The last 64 bytes of the lap (a full ring keeps one word free).
    tx.try_send(&[1; 56]).unwrap();
    rx.try_recv(&mut buf).unwrap();
    assert_eq!(
        peer.read_u64(DATA_OFFSET + 32),
        forged,
        "the bait is in place"
    );
    // Next lap: one 24-byte record at position 0 (index CAP), ending at position 32.
    tx.try_send(&[2; 24]).unwrap();
    rx.try_recv(&mut buf).unwrap();
    assert_eq!(buf, [2; 24]);
    assert!(
        matches!(rx.try_recv(&mut buf), Err(TryRecvError::Empty)),
        "the stale payload word was taken for a record"
    );
}

#[test]
fn r2_a_producer_that_closes_claiming_more_than_it_published_is_corruption() {
    let (peer, mut tx, mut rx) = Peer::new();
    tx.try_send(b"only this").unwrap();
    drop(tx);
    // The close left the final tail; a peer that says it published more.
    peer.write_u64(offsets::TAIL, 64);
    let mut buf = Vec::new();
    rx.try_recv(&mut buf).unwrap();
    assert_eq!(buf, b"only this");
    let c = corrupted(rx.try_recv(&mut buf));
    assert!(
        matches!(c, Corruption::ClosedShort { tail: 64, head: 24 }),
        "{c}"
    );
}

#[test]
fn r2_a_head_that_moves_backwards_or_past_the_tail_is_corruption_for_the_producer() {
    // Moves backwards within range.
    let ring = Ring::create(&Config::new().capacity(256)).unwrap();
    let (mut tx, mut rx) = ring.pair().unwrap();
    let peer = Peer { ring };
    for _ in 0..3 {
        tx.try_send(&[0; 56]).unwrap(); // three 64-byte records: full (one word stays free)
    }
    let mut buf = Vec::new();
    rx.try_recv(&mut buf).unwrap();
    rx.try_recv(&mut buf).unwrap(); // released: head = 128
    tx.try_send(&[0; 56]).unwrap(); // refreshes the head: 128; tail = 256
    tx.try_send(&[0; 56]).unwrap(); // tail = 320
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
            Corruption::HeadPastPublished { .. }
        )))
    ));
    assert!(
        matches!(tx.send(&[0; 100]), Err(SendError::Corrupted(_))),
        "sticks"
    );
}

#[test]
fn r3_impossible_record_headers_are_corruption() {
    let max = CAP / 4;
    let cases: [(&str, u64); 7] = [
        (
            "longer than max",
            layout::encode_record(MESSAGE, 0, max as usize + 1),
        ),
        (
            "longest length",
            layout::encode_record(MESSAGE, 0, (1 << 30) - 1),
        ),
        (
            "past the ring's end",
            layout::encode_record(MESSAGE, 0, CAP as usize),
        ),
        ("unknown kind 0", (1 << 33) | 8),
        ("unknown kind 3", layout::encode_record(3, 0, 8)),
        (
            "padding not to the end",
            layout::encode_record(PADDING, 0, 8),
        ),
        ("stale tag", layout::encode_record(MESSAGE, CAP, 8)),
    ];
    for (what, word) in cases {
        let (peer, mut tx, mut rx) = Peer::new();
        tx.try_send(&[0xAB; 24]).unwrap(); // one 32-byte record at 0
        peer.write_word(0, word);
        let c = corrupted(rx.try_recv(&mut Vec::new()));
        let expected = match what {
            "unknown kind 0" | "unknown kind 3" => matches!(c, Corruption::RecordKind { .. }),
            "padding not to the end" => matches!(c, Corruption::Padding { .. }),
            "stale tag" => matches!(c, Corruption::RecordTag { .. }),
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
    peer.write_record(CAP - 16, MESSAGE, 40); // 48 bytes from 16 before the end
    assert!(matches!(
        corrupted(rx.try_recv(&mut buf)),
        Corruption::RecordLength { .. }
    ));
}

#[test]
fn r3_a_zero_word_is_nothing_yet_not_corruption() {
    let (peer, mut tx, mut rx) = Peer::new();
    tx.try_send(b"12345678").unwrap();
    peer.write_word(0, 0); // un-publish it
    assert!(matches!(
        rx.try_recv(&mut Vec::new()),
        Err(TryRecvError::Empty)
    ));
}

#[test]
fn r4_a_length_rewritten_while_being_read_never_goes_out_of_bounds() {
    // A thread rewrites the header of the next record with random values, as fast as it can,
    // while the consumer reads. Allowed: a message (its bytes may be garbage) or Corrupted.
    // Rounds until the vandal has caused 5 detected corruptions (its teeth), for at least 1 s
    // and at most 20 s: on a loaded 2-core machine the vandal thread may wait for a CPU.
    let start = Instant::now();
    let mut rounds = 0;
    let mut outcomes = [0u32; 2];
    while start.elapsed() < Duration::from_secs(1)
        || (outcomes[1] < 5 && start.elapsed() < Duration::from_secs(20))
    {
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
                    // Half the time just past what the consumer released (where the next
                    // records go, and what it reads next), half anywhere.
                    let pos = if x & 2 == 0 {
                        let mut head = [0u8; 8];
                        let _ = rustix::io::pread(&fd, &mut head, offsets::HEAD as u64);
                        (u64::from_le_bytes(head) + 8 * ((x >> 8) % 16)) % CAP
                    } else {
                        (x >> 3) % (CAP / 8) * 8
                    };
                    // Kind 1 or 2 with a random length and the tag of this position on one
                    // of the first laps: the nastiest plausible headers.
                    let index = pos + CAP * ((x >> 20) % 8);
                    let len = (x >> 40) as usize & ((1 << 30) - 1);
                    let word = layout::encode_record(1 + (x & 1), index, len);
                    let _ = rustix::io::pwrite(&fd, &word.to_le_bytes(), DATA_OFFSET as u64 + pos);
                }
            })
        };
        let mut buf = Vec::new();
        for i in 0..200u32 {
            // Let the vandal run between the two sides' calls.
            std::thread::yield_now();
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
        "the vandal never caused a detected corruption in {rounds} rounds ({outcomes:?})"
    );
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
