//! docs/protocol.md §1, section by section, against the implementation: the bytes a peer
//! sees in a ring's memfd (header offsets and values, the zero gaps, the indices, the state
//! words, the record header word's bits, record alignment, the cleared word, padding) and the
//! answers of the ring to words written by hand. Every number is written out again from the
//! document, not taken from the ring's constants (as `handshake.rs` does for §2).

use std::time::Duration;

use shmpipe_fuzz::{Segment, message_word, padding_word, record_word};
use shmpipe_ring::layout::{self, offsets};
use shmpipe_ring::{
    Bell, CloseError, Config, Consumer, Corruption, Producer, RecvError, Ring, SendError,
    SetupError, TryRecvError, TrySendError,
};

/// §1.1: the header's fields, as the table lists them: (offset, size, name).
const FIELDS: [(usize, usize, &str); 9] = [
    (0, 8, "magic"),
    (8, 4, "version"),
    (12, 4, "data_offset"),
    (16, 8, "capacity"),
    (24, 8, "max_message"),
    (128, 8, "tail"),
    (256, 8, "head"),
    (384, 4, "producer"),
    (512, 4, "consumer"),
];

const PAGE: usize = 4096;
const STATE_ACTIVE: u32 = 1;
const STATE_CLOSED: u32 = 2;
const WAITING: u32 = 0x100;
const MEMBARRIER: u32 = 0x200;

fn config(capacity: usize, max: usize) -> Config {
    Config::new()
        .capacity(capacity)
        .max_message(max)
        .membarrier(false)
}

fn new_ring(capacity: usize, max: usize, start: u64) -> (Ring, Segment) {
    let ring = Ring::create(&config(capacity, max).start_index(start)).unwrap();
    let seg = Segment::new(ring.memfd(), capacity);
    (ring, seg)
}

/// A waiter fd, as a peer would send it (its bell is dropped: nobody rings it).
fn waiter() -> std::os::fd::OwnedFd {
    Bell::new()
        .unwrap()
        .waiter_fd()
        .try_clone_to_owned()
        .unwrap()
}

/// Only the consumer end, claimed as a process would; the producer is written by hand.
fn consumer_only(ring: &Ring) -> Consumer {
    ring.consumer(Bell::new().unwrap(), waiter()).unwrap()
}

/// Only the producer end; the consumer is written by hand.
fn producer_only(ring: &Ring) -> Producer {
    ring.producer(Bell::new().unwrap(), waiter()).unwrap()
}

fn header_bytes(seg: &Segment) -> Vec<u8> {
    let mut b = vec![0u8; PAGE];
    seg.read(0, &mut b);
    b
}

// ---------------------------------------------------------------------------------------------
// §1: the memfd

#[test]
fn s1_the_memfd_is_a_header_page_then_capacity_zeroed_data_bytes_sealed() {
    for capacity in [64usize, 4096, 1 << 16] {
        let (ring, seg) = new_ring(capacity, capacity / 4, 0);
        let st = rustix::fs::fstat(ring.memfd()).unwrap();
        assert_eq!(st.st_size as usize, PAGE + capacity);
        let seals = rustix::fs::fcntl_get_seals(ring.memfd()).unwrap();
        use rustix::fs::SealFlags as S;
        assert!(seals.contains(S::SHRINK | S::GROW | S::SEAL), "{seals:?}");
        assert!(!seals.intersects(S::WRITE | S::FUTURE_WRITE), "{seals:?}");
        assert!(seg.data().iter().all(|&b| b == 0), "data all zero");
    }
    // A power of two from 64 to 2^30.
    for bad in [32usize, 65, 1000, 1 << 31] {
        assert!(
            matches!(config(bad, 8).validate(), Err(SetupError::InvalidConfig(_))),
            "{bad}"
        );
    }
    assert!(config(1 << 30, 8).validate().is_ok());
}

// ---------------------------------------------------------------------------------------------
// §1.1: the header

#[test]
fn s1_1_header_fields_sit_at_the_documented_offsets_with_the_documented_values() {
    // The crate's own table says the same.
    let ours = [
        offsets::MAGIC,
        offsets::VERSION,
        offsets::DATA_OFFSET,
        offsets::CAPACITY,
        offsets::MAX_MESSAGE,
        offsets::TAIL,
        offsets::HEAD,
        offsets::PRODUCER,
        offsets::CONSUMER,
    ];
    for ((off, _, name), o) in FIELDS.iter().zip(ours) {
        assert_eq!(*off, o, "{name}");
    }
    assert_eq!(layout::DATA_OFFSET, PAGE);
    assert_eq!(layout::MAGIC, 0x0045_5049_504D_4853);
    assert_eq!(layout::VERSION, 2);

    let start = (1u64 << 32) - 16;
    let (_ring, seg) = new_ring(4096, 1000, start);
    let h = header_bytes(&seg);
    assert_eq!(&h[0..8], b"SHMPIPE\0");
    assert_eq!(u32::from_le_bytes(h[8..12].try_into().unwrap()), 2);
    assert_eq!(u32::from_le_bytes(h[12..16].try_into().unwrap()), 4096);
    assert_eq!(u64::from_le_bytes(h[16..24].try_into().unwrap()), 4096);
    assert_eq!(u64::from_le_bytes(h[24..32].try_into().unwrap()), 1000);
    assert_eq!(u64::from_le_bytes(h[128..136].try_into().unwrap()), start);
    assert_eq!(u64::from_le_bytes(h[256..264].try_into().unwrap()), start);
    assert_eq!(u32::from_le_bytes(h[384..388].try_into().unwrap()), 0);
    assert_eq!(u32::from_le_bytes(h[512..516].try_into().unwrap()), 0);
    // Everything not in the table is zero, up to the data.
    for (i, &b) in h.iter().enumerate() {
        let in_field = FIELDS
            .iter()
            .any(|&(off, size, _)| (off..off + size).contains(&i));
        if !in_field {
            assert_eq!(b, 0, "byte {i} of the header page");
        }
    }
}

#[test]
fn s1_1_each_side_writes_only_its_own_fields() {
    let (ring, seg) = new_ring(256, 64, 0);
    let before = header_bytes(&seg);
    let (mut tx, mut rx) = ring.pair().unwrap();
    tx.send(b"0123456789").unwrap();
    let mut buf = Vec::new();
    rx.try_recv(&mut buf).unwrap();
    let after = header_bytes(&seg);
    // The configuration line and `tail` are unchanged while both sides are open; `head`
    // moved (the consumer released), and the state words say active.
    assert_eq!(before[0..256], after[0..256]);
    assert_eq!(seg.head(), 24);
    assert_eq!(seg.producer_word() & 0b11, STATE_ACTIVE);
    assert_eq!(seg.consumer_word() & 0b11, STATE_ACTIVE);
    assert_eq!(
        after[388..512],
        [0u8; 124][..],
        "the gap after the producer word"
    );
    assert_eq!(after[516..PAGE], vec![0u8; PAGE - 516][..]);
    drop((tx, rx));
}

// ---------------------------------------------------------------------------------------------
// §1.2: indices

#[test]
fn s1_2_byte_index_i_lives_at_data_position_i_mod_capacity() {
    for start in [0u64, (1 << 32) - 16, u64::MAX - 15] {
        let (ring, seg) = new_ring(64, 24, start);
        let (mut tx, mut rx) = ring.pair().unwrap();
        tx.send(b"abc").unwrap();
        let pos = (start & 63) as usize;
        assert_eq!(seg.u64_at(PAGE + pos), message_word(start, 3), "{start}");
        let mut p = [0u8; 3];
        seg.read(PAGE + pos + 8, &mut p);
        assert_eq!(&p, b"abc");
        let mut buf = Vec::new();
        rx.try_recv(&mut buf).unwrap();
        assert_eq!(seg.head(), start.wrapping_add(16), "head wraps at 2^64");
        // `tail` is private until the producer closes: still the start.
        assert_eq!(seg.tail(), start);
        tx.close(Duration::from_secs(5)).unwrap();
        assert_eq!(seg.tail(), start.wrapping_add(16));
    }
}

#[test]
fn s1_2_impossible_indices_are_refused_at_claim_and_say_what_is_wrong() {
    // tail behind head.
    let (ring, seg) = new_ring(64, 24, 64);
    seg.set_tail(8);
    let e = ring.consumer(Bell::new().unwrap(), waiter()).unwrap_err();
    assert!(
        matches!(
            e,
            SetupError::Corrupted(Corruption::TailBehindHead { tail: 8, head: 64 })
        ),
        "{e}"
    );
    assert!(e.to_string().contains("behind head index 64"), "{e}");
    // A refused claim leaves the role free (§1.3, §1.8).
    assert_eq!(seg.consumer_word(), 0);
    // tail more than a capacity ahead.
    seg.set_tail(64 + 72);
    let e = ring.consumer(Bell::new().unwrap(), waiter()).unwrap_err();
    assert!(
        matches!(e, SetupError::Corrupted(Corruption::IndexOutOfRange { .. })),
        "{e}"
    );
    // Not a multiple of 8.
    seg.set_tail(65);
    let e = ring.consumer(Bell::new().unwrap(), waiter()).unwrap_err();
    assert!(
        matches!(e, SetupError::Corrupted(Corruption::IndexMisaligned { .. })),
        "{e}"
    );
    // Exactly a capacity ahead is possible.
    seg.set_tail(128);
    consumer_only(&ring);
}

// ---------------------------------------------------------------------------------------------
// §1.3: state words

#[test]
fn s1_3_state_words_go_free_active_closed() {
    let (ring, seg) = new_ring(256, 64, 0);
    assert_eq!((seg.producer_word(), seg.consumer_word()), (0, 0));
    let (tx, rx) = ring.pair().unwrap();
    // Membarrier off: exactly state 1, no flags.
    assert_eq!(
        (seg.producer_word(), seg.consumer_word()),
        (STATE_ACTIVE, STATE_ACTIVE)
    );
    tx.close(Duration::ZERO).unwrap();
    assert_eq!(
        seg.producer_word(),
        STATE_CLOSED,
        "WAITING cleared after close"
    );
    drop(rx);
    assert_eq!(seg.consumer_word(), STATE_CLOSED);
    // A role is claimed once in the ring's life.
    assert!(matches!(
        ring.producer(Bell::new().unwrap(), waiter()),
        Err(SetupError::RoleTaken(_))
    ));
}

#[test]
fn s1_3_the_membarrier_flag_is_bit_9_and_nothing_else_is_set_while_awake() {
    let ring = Ring::create(&Config::new().capacity(256).max_message(64)).unwrap();
    let seg = Segment::new(ring.memfd(), 256);
    let (_tx, _rx) = ring.pair().unwrap();
    for w in [seg.producer_word(), seg.consumer_word()] {
        assert!(
            w == STATE_ACTIVE || w == STATE_ACTIVE | MEMBARRIER,
            "{w:#x}"
        );
    }
}

#[test]
fn s1_3_a_sleeper_announces_waiting_in_bit_8() {
    let (ring, seg) = new_ring(256, 64, 0);
    let (_tx, mut rx) = ring.pair().unwrap();
    // `arm` announces WAITING for an event loop, exactly as a blocking wait does.
    assert!(!rx.arm().unwrap());
    assert_eq!(seg.consumer_word(), STATE_ACTIVE | WAITING);
    let mut buf = Vec::new();
    assert!(matches!(rx.try_recv(&mut buf), Err(TryRecvError::Empty)));
    assert_eq!(
        seg.consumer_word(),
        STATE_ACTIVE,
        "cleared by the next call"
    );
}

#[test]
fn s1_3_garbage_state_words_are_corruption_and_state_0_is_tolerated() {
    let garbage = [3u32, 0x4, 0x80, 0x400, 0x8000_0001, 1 | 0x1000, 2 | 0x800];
    for w in garbage {
        let (ring, seg) = new_ring(256, 64, 0);
        let mut rx = consumer_only(&ring);
        seg.set_producer_word(w);
        let mut buf = Vec::new();
        match rx.try_recv(&mut buf) {
            Err(TryRecvError::Failed(RecvError::Corrupted(Corruption::State {
                side: "producer",
                word,
            }))) => assert_eq!(word, w),
            r => panic!("{w:#x}: {r:?}"),
        }
        let e = rx.try_recv(&mut buf).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("ring corrupted: the producer's state word is {w:#x}"),
            "sticky"
        );
    }
    // State 0 with flags, or a claimed word that returns to 0: read as "free / active, not
    // waiting". No error, no end of stream.
    for w in [0u32, WAITING, MEMBARRIER, WAITING | MEMBARRIER] {
        let (ring, seg) = new_ring(256, 64, 0);
        let mut rx = consumer_only(&ring);
        seg.set_producer_word(STATE_ACTIVE);
        let mut buf = Vec::new();
        assert!(matches!(rx.try_recv(&mut buf), Err(TryRecvError::Empty)));
        seg.set_producer_word(w);
        assert!(
            matches!(rx.try_recv(&mut buf), Err(TryRecvError::Empty)),
            "{w:#x}"
        );
    }
    // The producer judges the consumer's word the same way.
    let (ring, seg) = new_ring(256, 64, 0);
    let mut tx = producer_only(&ring);
    seg.set_consumer_word(3);
    match tx.try_send(b"x") {
        Err(TrySendError::Failed(SendError::Corrupted(Corruption::State {
            side: "consumer",
            word: 3,
        }))) => {}
        r => panic!("{r:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// §1.4: records

#[test]
fn s1_4_the_header_word_is_tag_kind_len_and_never_zero() {
    for index in [0u64, 8, 40, (1 << 32) - 8, 1 << 35, u64::MAX - 7] {
        for (kind, len) in [(1u64, 0u64), (1, 13), (2, 48), (1, (1 << 30) - 1)] {
            let w = record_word(kind, index, len);
            assert_eq!(w >> 32, (index >> 3) & 0xFFFF_FFFF, "tag");
            assert_eq!((w >> 30) & 0b11, kind, "kind");
            assert_eq!(w & ((1 << 30) - 1), len, "len");
            assert_eq!(w, (index << 29) | (kind << 30) | len, "the closed form");
            assert_eq!(layout::encode_record(kind, index, len as usize), w);
            assert_ne!(w, 0);
        }
    }
}

#[test]
fn s1_4_a_message_is_its_word_its_payload_rounded_to_8_and_a_cleared_word_after() {
    let (ring, seg) = new_ring(256, 64, 0);
    // Dirty the data area as an earlier lap would have left it.
    seg.write(PAGE, &[0xAB; 256]);
    let (mut tx, mut rx) = ring.pair().unwrap();
    let mut at = 0u64;
    for len in [0usize, 1, 7, 8, 9, 13, 16] {
        let payload: Vec<u8> = (0..len as u8).collect();
        tx.send(&payload).unwrap();
        let size = 8 + len.div_ceil(8) * 8;
        assert_eq!(layout::record_size(len), size);
        assert_eq!(seg.word(at), message_word(at, len as u64), "len {len}");
        let mut p = vec![0u8; len];
        seg.read(seg.data_offset(at) + 8, &mut p);
        assert_eq!(p, payload);
        assert_eq!(seg.word(at + size as u64), 0, "the word after the record");
        at += size as u64;
        assert_eq!(at % 8, 0, "records are 8-byte aligned");
    }
    let mut buf = Vec::new();
    while rx.try_recv(&mut buf).is_ok() {}
    assert_eq!(seg.head(), at);
}

#[test]
fn s1_4_padding_covers_the_rest_of_the_lap_and_the_message_starts_the_next() {
    let (ring, seg) = new_ring(64, 24, 0);
    let (mut tx, mut rx) = ring.pair().unwrap();
    let mut buf = Vec::new();
    // A record may end exactly at the end of the data area (its cleared word is then the
    // first word of the next lap): a 24-byte message at 32 is a 32-byte record ending at 64.
    for m in [&b"a"[..], b"b", &[5u8; 24]] {
        tx.send(m).unwrap();
        rx.try_recv(&mut buf).unwrap();
    }
    assert_eq!(seg.word(32), message_word(32, 24));
    // Now at 64 (position 0): 16 + 16 + 16 bytes, the next record goes at position 48.
    for m in [&b"c"[..], b"d", b"e"] {
        tx.send(m).unwrap();
        rx.try_recv(&mut buf).unwrap();
    }
    // A 24-byte message (32-byte record) does not fit in the 16 bytes left: padding at 48
    // (index 112) of len 64 - 48 - 8 = 8, the message at index 128 (position 0).
    tx.send(&[7u8; 24]).unwrap();
    assert_eq!(seg.word(112), padding_word(112, 8));
    assert_eq!(seg.word(128), message_word(128, 24));
    assert_eq!(seg.word(160), 0, "the cleared word after the message");
    assert_eq!(rx.try_recv(&mut buf).unwrap(), 24);
    assert_eq!(buf, [7u8; 24]);
    assert_eq!(seg.head(), 160);
}

#[test]
fn s1_4_a_producer_needs_room_for_the_record_and_the_word_after_it() {
    let (ring, seg) = new_ring(64, 24, 0);
    let mut tx = producer_only(&ring);
    // 16-byte records (8 header + 8 payload): the third ends at 48 and its cleared word at
    // 56 <= 64: fits. A fourth would end at 64, and 64 + 8 > head + capacity: full.
    tx.try_send(&[1; 8]).unwrap();
    tx.try_send(&[2; 8]).unwrap();
    tx.try_send(&[3; 8]).unwrap();
    assert!(matches!(tx.try_send(&[4; 8]), Err(TrySendError::Full)));
    assert_eq!(seg.word(48), 0);
    // The consumer releases 16 bytes: head = 16, room up to 80 = 64 + 16 (the record) + 8.
    seg.set_head(16);
    tx.try_send(&[4; 8]).unwrap();
}

// ---------------------------------------------------------------------------------------------
// §1.6: consuming words written by hand

#[test]
fn s1_6_a_consumer_reads_records_written_from_the_document() {
    let (ring, seg) = new_ring(64, 24, 0);
    let mut rx = consumer_only(&ring);
    seg.set_producer_word(STATE_ACTIVE);
    let mut buf = Vec::new();
    assert!(matches!(rx.try_recv(&mut buf), Err(TryRecvError::Empty)));
    // Payload, cleared word after it, then the header word.
    seg.write_data(8, b"hello");
    seg.set_word(16, 0);
    seg.set_word(0, message_word(0, 5));
    assert_eq!(rx.try_recv(&mut buf).unwrap(), 5);
    assert_eq!(buf, b"hello");
    // A message of 24 bytes, up to position 48.
    seg.write_data(24, &[9; 24]);
    seg.set_word(48, 0);
    seg.set_word(16, message_word(16, 24));
    assert_eq!(rx.try_recv(&mut buf).unwrap(), 24);
    assert_eq!(seg.head(), 48, "released: the ring was empty after it");
    // A batch of two: padding to the end, then a message on the next lap; the padding's word
    // (the first record) is stored last. Room: 64 + 16 + 8 <= head + 64.
    seg.write_data(72, b"lap2");
    seg.set_word(80, 0);
    seg.set_word(64, message_word(64, 4));
    seg.set_word(48, padding_word(48, 64 - 48 - 8));
    assert_eq!(rx.try_recv(&mut buf).unwrap(), 4);
    assert_eq!(buf, b"lap2");
    // The close: final tail, then state 2. The stream ends cleanly.
    seg.set_tail(80);
    seg.set_producer_word(STATE_CLOSED);
    assert!(matches!(
        rx.try_recv(&mut buf),
        Err(TryRecvError::Failed(RecvError::Closed))
    ));
}

#[test]
fn s1_6_each_impossible_word_is_reported_as_what_it_is() {
    type Case = (&'static str, u64, fn(&Corruption) -> bool, &'static str);
    let cases: [Case; 6] = [
        (
            "stale tag",
            message_word(64, 4),
            |c| matches!(c, Corruption::RecordTag { .. }),
            "does not carry the tag of index 8",
        ),
        (
            "kind 0",
            record_word(0, 8, 4),
            |c| matches!(c, Corruption::RecordKind { .. }),
            "unknown header",
        ),
        (
            "kind 3",
            record_word(3, 8, 4),
            |c| matches!(c, Corruption::RecordKind { .. }),
            "unknown header",
        ),
        (
            "longer than max_message",
            message_word(8, 25),
            |c| matches!(c, Corruption::RecordLength { .. }),
            "claims 25 bytes",
        ),
        (
            "padding that counts its header",
            padding_word(8, 56),
            |c| matches!(c, Corruption::Padding { .. }),
            "has length 56, but padding there must have length 48",
        ),
        (
            "padding short of the end",
            padding_word(8, 40),
            |c| matches!(c, Corruption::Padding { .. }),
            "has length 40, but padding there must have length 48",
        ),
    ];
    for (name, word, is, text) in cases {
        let (ring, seg) = new_ring(64, 24, 8);
        let mut rx = consumer_only(&ring);
        seg.set_word(8, word);
        let mut buf = Vec::new();
        match rx.try_recv(&mut buf) {
            Err(TryRecvError::Failed(RecvError::Corrupted(c))) => {
                assert!(is(&c), "{name}: {c:?}");
                assert!(c.to_string().contains(text), "{name}: {c}");
            }
            r => panic!("{name}: {r:?}"),
        }
    }
}

#[test]
fn s1_6_a_producer_checks_every_head_it_loads() {
    type Case = (u64, fn(&Corruption) -> bool);
    let cases: [Case; 3] = [
        (9, |c| matches!(c, Corruption::IndexMisaligned { .. })),
        (72, |c| matches!(c, Corruption::HeadPastPublished { .. })),
        (u64::MAX - 7, |c| {
            matches!(c, Corruption::IndexMovedBackwards { .. })
        }),
    ];
    for (head, is) in cases {
        let (ring, seg) = new_ring(64, 24, 0);
        let mut tx = producer_only(&ring);
        // Fill the ring so that the next send must load `head`.
        while tx.try_send(&[0; 8]).is_ok() {}
        seg.set_head(head);
        match tx.try_send(&[0; 8]) {
            Err(TrySendError::Failed(SendError::Corrupted(c))) => assert!(is(&c), "{c:?}"),
            r => panic!("head {head}: {r:?}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// §1.8: closing

#[test]
fn s1_8_a_close_that_claims_more_than_the_ring_holds_is_closed_short() {
    let (ring, seg) = new_ring(64, 24, 0);
    let mut rx = consumer_only(&ring);
    seg.set_tail(16);
    seg.set_producer_word(STATE_CLOSED);
    let mut buf = Vec::new();
    match rx.try_recv(&mut buf) {
        Err(TryRecvError::Failed(RecvError::Corrupted(Corruption::ClosedShort {
            tail: 16,
            head: 0,
        }))) => {}
        r => panic!("{r:?}"),
    }
}

#[test]
fn s1_8_close_with_a_timeout_waits_for_head_to_reach_the_final_index() {
    let (ring, seg) = new_ring(256, 64, 0);
    let mut tx = producer_only(&ring);
    seg.set_consumer_word(STATE_ACTIVE);
    tx.send(b"0123456789").unwrap();
    // Nothing consumed: the close times out with the 24 bytes published.
    match tx.close(Duration::from_millis(50)) {
        Err(CloseError::Timeout { unconsumed: 24 }) => {}
        r => panic!("{r:?}"),
    }
    assert_eq!(seg.tail(), 24, "the final index is in `tail`");
    assert_eq!(seg.producer_word(), STATE_CLOSED, "closed, WAITING cleared");

    // The consumer releases everything while the producer waits: Ok.
    let (ring, seg) = new_ring(256, 64, 0);
    let mut tx = producer_only(&ring);
    seg.set_consumer_word(STATE_ACTIVE);
    tx.send(b"0123456789").unwrap();
    let peer = std::thread::spawn(move || {
        // Wait until the producer announces it waits with its state closed (2|W).
        let start = std::time::Instant::now();
        while seg.producer_word() != STATE_CLOSED | WAITING {
            assert!(start.elapsed() < Duration::from_secs(10), "never waited");
            std::thread::yield_now();
        }
        seg.set_head(24);
    });
    tx.close(Duration::from_secs(10)).unwrap();
    peer.join().unwrap();

    // The consumer closes first with bytes left: unconsumed.
    let (ring, seg) = new_ring(256, 64, 0);
    let mut tx = producer_only(&ring);
    seg.set_consumer_word(STATE_ACTIVE);
    tx.send(b"0123456789").unwrap();
    tx.send(b"abc").unwrap();
    seg.set_head(24);
    seg.set_consumer_word(STATE_CLOSED);
    match tx.close(Duration::from_secs(10)) {
        Err(CloseError::Unconsumed { unconsumed: 16 }) => {}
        r => panic!("{r:?}"),
    }
}
