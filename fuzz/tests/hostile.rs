//! Suite 2, the hostile peer: a peer that writes anything anywhere in the shared segment (and,
//! in `open.rs`, offers anything as the ring's memfd and as its waiter). The only allowed
//! outcomes are a correct message or a `Corrupted`/validation error: never a panic, an
//! out-of-bounds access, a loop or a hang.
//!
//! "Correct" is decided by a second consumer written from docs/protocol.md alone
//! (`shmring_fuzz::image::RefConsumer`), run in lockstep over the same segment: the real
//! consumer must hand over exactly its messages and stop exactly where and how it stops.
//! Every case runs under a deadline; run under AddressSanitizer (docs/testing.md) the suite
//! also proves that no access leaves the mapping.

use std::time::{Duration, Instant};

use proptest::prelude::*;
use shmring_fuzz::image::{self, End, Piece, RefConsumer};
use shmring_fuzz::{Claim, Segment, deadline, max_message_for, message, proptest_config};
use shmring_ring::layout::{self, offsets};
use shmring_ring::{
    Config, RecvError, RecvTimeoutError, Ring, SendError, TryRecvError, TrySendError, WaitStrategy,
};

// ---------------------------------------------------------------------------------------
// A consumer over an arbitrary image: what it hands over equals the reference reader's.

fn piece() -> impl Strategy<Value = Piece> {
    prop_oneof![
        8 => any::<u16>().prop_map(|l| Piece::Message(l % 600)),
        1 => prop_oneof![
            Just(u32::MAX),
            Just(u32::MAX - 7),
            any::<u32>(),
            0u32..600,
        ]
        .prop_map(Piece::Claim),
        1 => prop_oneof![any::<u32>(), 0u32..1024].prop_map(Piece::Padding),
        1 => prop_oneof![
            any::<u64>(),
            (3u64..=u64::from(u32::MAX)).prop_map(|k| k << 32),
            any::<u32>().prop_map(u64::from),
        ]
        .prop_map(Piece::Word),
    ]
}

#[derive(Debug, Clone)]
struct ImageCase {
    capacity: usize,
    max_pick: u16,
    head: u64,
    pieces: Vec<Piece>,
    fill: Vec<u8>,
    tail_shift: i64,
    how: Vec<u8>,
}

fn image_case() -> impl Strategy<Value = ImageCase> {
    (
        (6u32..=10).prop_map(|s| 1usize << s),
        any::<u16>(),
        prop_oneof![shmring_fuzz::start_index(), any::<u64>()],
        prop::collection::vec(piece(), 0..24),
        prop::collection::vec(any::<u8>(), 0..12),
        prop_oneof![
            4 => Just(0i64),
            4 => (-8i64..=8).prop_map(|k| k * 8),
            1 => -64i64..=64,
            1 => any::<i64>(),
        ],
        prop::collection::vec(any::<u8>(), 1..6),
    )
        .prop_map(
            |(capacity, max_pick, head, pieces, fill, tail_shift, how)| ImageCase {
                capacity,
                max_pick,
                head,
                pieces,
                fill,
                tail_shift,
                how,
            },
        )
}

proptest! {
    #![proptest_config(proptest_config(1000, "proptest-regressions/hostile-image.txt"))]

    /// FAULTS R1, R3: indices and records from the peer, checked against the reference.
    #[test]
    fn a_consumer_reads_any_image_exactly_like_the_reference(c in image_case()) {
        deadline(30, "image case", move || {
            let max = max_message_for(c.capacity, c.max_pick);
            let img = image::build(c.capacity, max, c.head, &c.pieces, &c.fill, c.tail_shift);
            let (want, want_end) = image::reference_read(&img.data, img.head, img.tail, max);
            let got = image::consume(&img, max, &c.how);
            assert_eq!(got.end, want_end, "how the consumer stopped");
            assert_eq!(got.messages.len(), want.len(), "message count");
            assert!(got.messages == want, "message bytes differ from the reference");
        });
    }
}

// ---------------------------------------------------------------------------------------
// A live ring with an honest producer, a consumer, and a hostile writer between operations.

/// A value relative to what is in the segment now.
#[derive(Debug, Clone, Copy)]
enum Rel {
    Same,
    /// Plus this many 8-byte steps.
    Steps(i16),
    /// Plus one byte: misaligned.
    PlusOne,
    /// The other index plus the capacity plus this many bytes.
    PastCapacity(u8),
    Raw(u64),
}

#[derive(Debug, Clone, Copy)]
enum WordAt {
    /// Where the consumer reads next (as far as the peer can tell: the released head).
    Head,
    /// Where the producer writes next.
    Tail,
    /// Any 8-aligned position.
    Pos(u16),
}

#[derive(Debug, Clone, Copy)]
enum WordVal {
    Message(u32),
    MessageMax,
    MessageMaxPlusOne,
    /// Padding of the only legal length at its position.
    PaddingToEnd,
    Padding(u32),
    Raw(u64),
}

#[derive(Debug, Clone, Copy)]
enum Hostile {
    Tail(Rel),
    Head(Rel),
    Word(WordAt, WordVal),
    Payload(u16, u64),
    ProducerState(u32),
    ConsumerState(u32),
    Waiting(bool, u32),
    /// A creator field the handles must never read again after open.
    Config(u8, u64),
}

#[derive(Debug, Clone, Copy)]
enum Step {
    Send(u16),
    SendBatch(u8, u16),
    Recv,
    Drain(u8),
    Views(u8),
    RecvTimeout(u8),
    Evil(Hostile),
}

fn rel() -> impl Strategy<Value = Rel> {
    prop_oneof![
        2 => Just(Rel::Same),
        4 => (-16i16..=160).prop_map(Rel::Steps),
        1 => Just(Rel::PlusOne),
        2 => prop_oneof![Just(0u8), Just(8), Just(16), 0u8..=16].prop_map(Rel::PastCapacity),
        1 => any::<u64>().prop_map(Rel::Raw),
    ]
}

fn hostile() -> impl Strategy<Value = Hostile> {
    let at = prop_oneof![
        3 => Just(WordAt::Head),
        1 => Just(WordAt::Tail),
        2 => any::<u16>().prop_map(WordAt::Pos),
    ];
    let val = prop_oneof![
        2 => prop_oneof![0u32..700, any::<u32>()].prop_map(WordVal::Message),
        1 => Just(WordVal::MessageMax),
        1 => Just(WordVal::MessageMaxPlusOne),
        2 => Just(WordVal::PaddingToEnd),
        1 => prop_oneof![0u32..1100, any::<u32>()].prop_map(WordVal::Padding),
        1 => any::<u64>().prop_map(WordVal::Raw),
    ];
    prop_oneof![
        4 => rel().prop_map(Hostile::Tail),
        2 => rel().prop_map(Hostile::Head),
        5 => (at, val).prop_map(|(a, v)| Hostile::Word(a, v)),
        2 => (any::<u16>(), any::<u64>()).prop_map(|(p, v)| Hostile::Payload(p, v)),
        1 => prop_oneof![0u32..=3, any::<u32>()].prop_map(Hostile::ProducerState),
        1 => prop_oneof![0u32..=3, any::<u32>()].prop_map(Hostile::ConsumerState),
        1 => (any::<bool>(), any::<u32>()).prop_map(|(w, v)| Hostile::Waiting(w, v)),
        1 => (any::<u8>(), any::<u64>()).prop_map(|(f, v)| Hostile::Config(f, v)),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => any::<u16>().prop_map(Step::Send),
        2 => (1u8..8, any::<u16>()).prop_map(|(n, l)| Step::SendBatch(n, l)),
        4 => Just(Step::Recv),
        2 => (0u8..10).prop_map(Step::Drain),
        1 => (1u8..10).prop_map(Step::Views),
        1 => (0u8..3).prop_map(Step::RecvTimeout),
        5 => hostile().prop_map(Step::Evil),
    ]
}

#[derive(Debug, Clone)]
struct LiveCase {
    capacity: usize,
    max_pick: u16,
    start: u64,
    steps: Vec<Step>,
    claim: Claim,
}

fn live_case() -> impl Strategy<Value = LiveCase> {
    (
        (6u32..=10).prop_map(|s| 1usize << s),
        any::<u16>(),
        shmring_fuzz::start_index(),
        prop::collection::vec(step(), 1..80),
        shmring_fuzz::claim(),
    )
        .prop_map(|(capacity, max_pick, start, steps, claim)| LiveCase {
            capacity,
            max_pick,
            start,
            steps,
            claim,
        })
}

fn apply(h: Hostile, seg: &Segment, max: usize) {
    let cap = seg.capacity() as u64;
    let rel = |now: u64, other: u64, r: Rel| match r {
        Rel::Same => now,
        Rel::Steps(k) => now.wrapping_add((i64::from(k) * 8) as u64),
        Rel::PlusOne => now.wrapping_add(1),
        Rel::PastCapacity(b) => other.wrapping_add(cap + u64::from(b)),
        Rel::Raw(v) => v,
    };
    match h {
        Hostile::Tail(r) => seg.set_tail(rel(seg.tail(), seg.head(), r)),
        Hostile::Head(r) => seg.set_head(rel(seg.head(), seg.tail(), r)),
        Hostile::Word(at, v) => {
            let index = match at {
                WordAt::Head => seg.head(),
                WordAt::Tail => seg.tail(),
                WordAt::Pos(p) => u64::from(p) * 8,
            } & !7;
            let to_end = cap - (index & (cap - 1));
            let word = match v {
                WordVal::Message(len) => shmring_fuzz::message_word(len),
                WordVal::MessageMax => shmring_fuzz::message_word(max as u32),
                WordVal::MessageMaxPlusOne => shmring_fuzz::message_word(max as u32 + 1),
                WordVal::PaddingToEnd => shmring_fuzz::padding_word((to_end - 8) as u32),
                WordVal::Padding(len) => shmring_fuzz::padding_word(len),
                WordVal::Raw(w) => w,
            };
            seg.set_word(index, word);
        }
        Hostile::Payload(p, v) => {
            let pos = usize::from(p) % (seg.capacity() - 8);
            seg.write(layout::DATA_OFFSET + pos, &v.to_le_bytes());
        }
        Hostile::ProducerState(v) => seg.set_u32(offsets::PRODUCER_STATE, v),
        Hostile::ConsumerState(v) => seg.set_u32(offsets::CONSUMER_STATE, v),
        Hostile::Waiting(producer, v) => seg.set_u32(
            if producer {
                offsets::PRODUCER_WAITING
            } else {
                offsets::CONSUMER_WAITING
            },
            v,
        ),
        Hostile::Config(f, v) => match f % 5 {
            0 => seg.set_u64(offsets::MAGIC, v),
            1 => seg.set_u32(offsets::VERSION, v as u32),
            2 => seg.set_u32(offsets::DATA_OFFSET, v as u32),
            3 => seg.set_u64(offsets::CAPACITY, v),
            _ => seg.set_u64(offsets::MAX_MESSAGE, v),
        },
    }
}

/// What a consumer call answered, comparable with the reference.
fn answer(r: Result<Vec<Vec<u8>>, TryRecvError>) -> Result<Vec<Vec<u8>>, End> {
    match r {
        Ok(v) => Ok(v),
        Err(TryRecvError::Empty) => Ok(Vec::new()),
        Err(TryRecvError::Failed(RecvError::Closed)) => Err(End::Closed),
        Err(TryRecvError::Failed(RecvError::Corrupted(c))) => Err(End::of(&c)),
        Err(TryRecvError::Failed(e)) => panic!("unexpected consumer error: {e}"),
    }
}

fn run_live(c: LiveCase) {
    let max = max_message_for(c.capacity, c.max_pick);
    let cfg = Config::new()
        .capacity(c.capacity)
        .max_message(max)
        .start_index(c.start)
        .wait(WaitStrategy::Block);
    let ring = Ring::create(&cfg).expect("create");
    let seg = Segment::new(ring.memfd(), c.capacity);
    let (mut tx, mut rx) = c.claim.claim(&ring).expect("claim both ends");
    let start = c.start & !7;
    let mut reference = RefConsumer::new(start, start, max);
    let mut producer_failed: Option<String> = None;
    let mut buf = Vec::new();
    let mut seq = 0u64;
    for (i, s) in c.steps.iter().enumerate() {
        let at = format!("step {i} ({s:?})");
        let (got, want) = match *s {
            Step::Evil(h) => {
                apply(h, &seg, max);
                continue;
            }
            Step::Send(l) | Step::SendBatch(_, l) => {
                let n = if let Step::SendBatch(n, _) = *s { n } else { 1 };
                let mut b = tx.batch();
                for k in 0..n {
                    seq += 1;
                    let len = usize::from(l.wrapping_add(u16::from(k))) % (max + 2);
                    let r = b.try_send(&message(seq, len));
                    match (&producer_failed, r) {
                        (Some(was), Ok(())) => panic!("{at}: producer sent after {was}"),
                        (None, Ok(()) | Err(TrySendError::Full)) => {}
                        (_, Err(TrySendError::Failed(SendError::TooLarge { .. }))) if len > max => {
                        }
                        (Some(was), Err(TrySendError::Failed(e))) => {
                            assert_eq!(&e.to_string(), was, "{at}: producer error not sticky")
                        }
                        (None, Err(TrySendError::Failed(e))) => {
                            assert!(
                                matches!(e, SendError::Corrupted(_) | SendError::Closed),
                                "{at}: {e}"
                            );
                            producer_failed = Some(e.to_string());
                        }
                        (Some(_), Err(TrySendError::Full)) => {
                            panic!("{at}: Full after a sticky error")
                        }
                    }
                }
                drop(b);
                continue;
            }
            Step::Recv => (
                answer(rx.try_recv(&mut buf).map(|_| vec![buf.clone()])),
                reference.next(&seg).map(|m| m.into_iter().collect()),
            ),
            Step::Drain(max_n) => {
                let mut got = Vec::new();
                let r = rx.try_drain(usize::from(max_n), |m| got.push(m.to_vec()));
                (
                    answer(r.map(|_| got)),
                    reference.drain(&seg, usize::from(max_n)),
                )
            }
            Step::Views(max_n) => {
                let mut got = Vec::new();
                let r = rx.try_drain_views(usize::from(max_n), |m| got.push(m.to_vec()));
                (
                    answer(r.map(|_| got)),
                    reference.drain(&seg, usize::from(max_n)),
                )
            }
            Step::RecvTimeout(ms) => {
                let timeout = Duration::from_millis(u64::from(ms));
                let t = Instant::now();
                let r = rx.recv_timeout(&mut buf, timeout);
                let took = t.elapsed();
                assert!(
                    took < timeout + Duration::from_secs(2),
                    "{at}: recv_timeout({timeout:?}) took {took:?}"
                );
                let r = match r {
                    Ok(_) => Ok(vec![buf.clone()]),
                    Err(RecvTimeoutError::Timeout) => Err(TryRecvError::Empty),
                    Err(RecvTimeoutError::Failed(e)) => Err(TryRecvError::Failed(e)),
                };
                (
                    answer(r),
                    reference.next(&seg).map(|m| m.into_iter().collect()),
                )
            }
        };
        assert_eq!(
            got.as_ref().err(),
            want.as_ref().err(),
            "{at}: consumer and reference disagree on the outcome"
        );
        if let (Ok(g), Ok(w)) = (&got, &want) {
            assert_eq!(g.len(), w.len(), "{at}: message count");
            for (k, (g, w)) in g.iter().zip(w).enumerate() {
                assert!(g.len() <= max, "{at}: message longer than the maximum");
                assert!(g == w, "{at}: message {k} differs from the reference");
            }
        }
    }
}

proptest! {
    #![proptest_config(proptest_config(1000, "proptest-regressions/hostile-live.txt"))]

    /// FAULTS R1-R3, R6: hostile writes between operations; the consumer agrees with the
    /// reference, the producer fails only with a sticky `Corrupted`/`Closed`.
    #[test]
    fn hostile_writes_between_operations_give_messages_or_corrupted(c in live_case()) {
        deadline(60, "live case", move || run_live(c));
    }
}

// ---------------------------------------------------------------------------------------
// The same hostile writes from a third thread, while producer and consumer threads stream.

#[derive(Debug, Clone)]
struct RaceCase {
    capacity: usize,
    max_pick: u16,
    start: u64,
    evil: Vec<Hostile>,
    waits: (bool, bool),
    claim: Claim,
}

fn race_case() -> impl Strategy<Value = RaceCase> {
    (
        (6u32..=10).prop_map(|s| 1usize << s),
        any::<u16>(),
        shmring_fuzz::start_index(),
        prop::collection::vec(hostile(), 1..12),
        (any::<bool>(), any::<bool>()),
        shmring_fuzz::claim(),
    )
        .prop_map(|(capacity, max_pick, start, evil, waits, claim)| RaceCase {
            capacity,
            max_pick,
            start,
            evil,
            waits,
            claim,
        })
}

fn run_race(c: RaceCase) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let max = max_message_for(c.capacity, c.max_pick);
    let wait = |spin| {
        if spin {
            WaitStrategy::Spin
        } else {
            WaitStrategy::Block
        }
    };
    let cfg = Config::new()
        .capacity(c.capacity)
        .max_message(max)
        .start_index(c.start);
    let ring = Ring::create(&cfg).expect("create");
    let (mut tx, mut rx) = c.claim.claim(&ring).expect("claim both ends");
    tx.set_wait(wait(c.waits.0));
    rx.set_wait(wait(c.waits.1));
    let stop = Arc::new(AtomicBool::new(false));
    let evil = {
        let seg = Segment::new(ring.memfd(), c.capacity);
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                for &h in &c.evil {
                    apply(h, &seg, max);
                }
            }
        })
    };
    let until = Instant::now() + Duration::from_millis(30);
    let writer = std::thread::spawn(move || {
        let mut seq = 0u64;
        while Instant::now() < until {
            seq += 1;
            match tx.send_timeout(
                &message(seq, seq as usize % (max + 1)),
                Duration::from_millis(2),
            ) {
                Ok(()) | Err(shmring_ring::SendTimeoutError::Timeout) => {}
                Err(shmring_ring::SendTimeoutError::Failed(e)) => {
                    assert!(
                        matches!(e, SendError::Corrupted(_) | SendError::Closed),
                        "producer: {e}"
                    );
                    // Sticky.
                    let again = tx.try_send(b"x");
                    assert!(
                        matches!(again, Err(TrySendError::Failed(ref e2)) if e2.to_string() == e.to_string()),
                        "producer error not sticky: {e} then {again:?}"
                    );
                    break;
                }
            }
        }
    });
    let mut buf = Vec::new();
    let mut ended: Option<String> = None;
    while Instant::now() < until {
        match rx.recv_timeout(&mut buf, Duration::from_millis(2)) {
            Ok(n) => {
                assert!(ended.is_none(), "a message after {ended:?}");
                assert!(n <= max && n == buf.len(), "{n} bytes, max {max}");
            }
            Err(RecvTimeoutError::Timeout) => assert!(ended.is_none(), "Timeout after {ended:?}"),
            Err(RecvTimeoutError::Failed(e)) => {
                assert!(
                    matches!(e, RecvError::Corrupted(_) | RecvError::Closed),
                    "consumer: {e}"
                );
                let e = e.to_string();
                if let Some(was) = &ended {
                    assert_eq!(&e, was, "consumer error not sticky");
                }
                ended = Some(e);
            }
        }
    }
    drop(rx);
    writer
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p));
    stop.store(true, Ordering::Relaxed);
    evil.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
}

proptest! {
    // Each case streams for 30 ms: the long setting runs a tenth of SHMRING_FUZZ_CASES.
    #![proptest_config(proptest::test_runner::Config {
        cases: if shmring_fuzz::long_run() { shmring_fuzz::cases(0) / 10 } else { 40 },
        ..proptest_config(40, "proptest-regressions/hostile-race.txt")
    })]

    /// FAULTS R4 generalised: the hostile writes of the live suite, from a third thread,
    /// while both ends stream: only messages (within the maximum) or a sticky
    /// `Corrupted`/`Closed`, never a panic or a hang.
    #[test]
    fn hostile_writes_racing_both_ends_never_panic_or_hang(c in race_case()) {
        deadline(30, "race case", move || run_race(c));
    }
}
