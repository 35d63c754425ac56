//! Suite 2, the hostile peer: a peer that writes anything anywhere in the shared segment (and,
//! in `open.rs`, offers anything as the ring's memfd and as its waiter). The only allowed
//! outcomes are a correct message or a `Corrupted`/validation error: never a panic, an
//! out-of-bounds access, a loop or a hang.
//!
//! "Correct" is decided by a second consumer written from docs/protocol.md alone
//! (`shmpipe_fuzz::image::RefConsumer`), run in lockstep over the same segment: the real
//! consumer must hand over exactly its messages and stop exactly where and how it stops.
//! Every case runs under a deadline; run under AddressSanitizer (docs/testing.md) the suite
//! also proves that no access leaves the mapping.

use std::time::{Duration, Instant};

use proptest::prelude::*;
use shmpipe_fuzz::image::{self, End, Finish, Piece, RefConsumer};
use shmpipe_fuzz::{
    Claim, LEN_MASK, Segment, deadline, max_message_for, message, message_word, padding_word,
    proptest_config, record_word, state,
};
use shmpipe_ring::layout::{self, offsets};
use shmpipe_ring::{
    Config, RecvError, RecvTimeoutError, Ring, SendError, TryRecvError, TrySendError, WaitStrategy,
};

// ---------------------------------------------------------------------------------------
// A consumer over an arbitrary image: what it hands over equals the reference reader's.

fn piece() -> impl Strategy<Value = Piece> {
    prop_oneof![
        24 => any::<u16>().prop_map(|l| Piece::Message(l % 600)),
        1 => prop_oneof![
            Just(LEN_MASK as u32),
            Just(u32::MAX),
            any::<u32>(),
            0u32..600,
        ]
        .prop_map(Piece::Claim),
        1 => prop_oneof![any::<u32>(), 0u32..1024].prop_map(Piece::Padding),
        1 => (
            0u16..600,
            prop_oneof![
                // An earlier or a later lap (a stale word), a neighbour, a tag off by 2^32
                // records, anywhere.
                Just(-1i64 << 7),
                Just(1i64 << 7),
                Just(-1i64),
                Just(1i64),
                Just(1i64 << 32),
                any::<i64>(),
            ],
            any::<bool>(),
        )
            .prop_map(|(l, d, lap)| Piece::Retag(l, if lap { d.signum() } else { d }, lap)),
        1 => (any::<u8>(), 0u16..600).prop_map(|(k, l)| Piece::Kind(k, l)),
        1 => Just(Piece::Zero),
        1 => prop_oneof![
            any::<u64>(),
            (3u64..=u64::from(u32::MAX)).prop_map(|k| k << 32),
            any::<u32>().prop_map(u64::from),
        ]
        .prop_map(Piece::Word),
    ]
}

/// A producer state word (docs/protocol.md §1.3): what an honest producer leaves (free,
/// active, closed, with its flags; closed and WAITING while it waits in `close`), or
/// anything.
fn producer_word() -> impl Strategy<Value = u32> {
    prop_oneof![
        3 => Just(state::FREE),
        3 => Just(state::ACTIVE),
        1 => Just(state::ACTIVE | state::MEMBARRIER),
        1 => Just(state::ACTIVE | state::WAITING),
        4 => Just(state::CLOSED),
        1 => Just(state::CLOSED | state::MEMBARRIER),
        1 => Just(state::CLOSED | state::WAITING),
        1 => Just(3u32),
        1 => any::<u32>(),
    ]
}

fn finish() -> impl Strategy<Value = Finish> {
    (
        prop_oneof![9 => Just(true), 1 => Just(false)],
        producer_word(),
        prop_oneof![
            24 => Just(0i64),
            3 => (-8i64..=8).prop_map(|k| k * 8),
            1 => -64i64..=64,
            1 => any::<i64>(),
        ],
        prop_oneof![
            3 => Just(Vec::new()),
            1 => prop::collection::vec((any::<u16>(), any::<u8>()), 1..4),
        ],
    )
        .prop_map(|(clear_end, producer, tail_shift, flips)| Finish {
            clear_end,
            producer,
            tail_shift,
            flips,
        })
}

#[derive(Debug, Clone)]
struct ImageCase {
    capacity: usize,
    max_pick: u16,
    head: u64,
    pieces: Vec<Piece>,
    fill: Vec<u8>,
    finish: Finish,
    how: Vec<u8>,
}

fn image_case() -> impl Strategy<Value = ImageCase> {
    (
        (6u32..=10).prop_map(|s| 1usize << s),
        any::<u16>(),
        // Mostly aligned heads: a misaligned one stops the open (BadIndices), once is enough.
        prop_oneof![
            12 => shmpipe_fuzz::start_index().prop_map(|h| h & !7),
            1 => any::<u64>(),
        ],
        prop::collection::vec(piece(), 0..24),
        prop::collection::vec(any::<u8>(), 0..12),
        finish(),
        prop::collection::vec(any::<u8>(), 1..6),
    )
        .prop_map(
            |(capacity, max_pick, head, pieces, fill, finish, how)| ImageCase {
                capacity,
                max_pick,
                head,
                pieces,
                fill,
                finish,
                how,
            },
        )
}

fn image_of(c: &ImageCase) -> (image::Image, usize) {
    let max = max_message_for(c.capacity, c.max_pick);
    let img = image::build(c.capacity, max, c.head, &c.pieces, &c.fill, &c.finish);
    (img, max)
}

proptest! {
    #![proptest_config(proptest_config(1000, "proptest-regressions/hostile-image.txt"))]

    /// faults.md R1-R3 in band: records, the producer's state word and its final tail from the
    /// peer, checked against the reference.
    #[test]
    fn a_consumer_reads_any_image_exactly_like_the_reference(c in image_case()) {
        deadline(30, "image case", move || {
            let (img, max) = image_of(&c);
            let want = image::reference_read(&img.data, img.head, img.tail, img.producer, max);
            let got = image::consume(&img, max, &c.how);
            assert_eq!(got.end, want.end, "how the consumer stopped");
            assert_eq!(got.messages.len(), want.messages.len(), "message count");
            assert!(got.messages == want.messages, "message bytes differ from the reference");
        });
    }
}

/// The images the property above draws reach every way of stopping, each of them (but the
/// open's refusal) after two messages or more too, and a third of all cases end only after
/// two messages: the comparison is not just "corrupt at the first word". Checked on the
/// reference alone (cheap), over a fixed sequence of cases.
#[test]
fn the_images_reach_every_ending_after_messages() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::{RngAlgorithm, TestRng, TestRunner};
    let mut runner = TestRunner::new_with_rng(
        proptest::test_runner::Config::default(),
        TestRng::deterministic_rng(RngAlgorithm::ChaCha),
    );
    let strategy = image_case();
    let mut ends: std::collections::BTreeMap<&str, (u32, u32)> = Default::default();
    let n = 3000;
    for _ in 0..n {
        let c = strategy.new_tree(&mut runner).expect("a case").current();
        let (img, max) = image_of(&c);
        let r = image::reference_read(&img.data, img.head, img.tail, img.producer, max);
        let name = match r.end {
            End::Empty => "Empty",
            End::BadIndices => "BadIndices",
            End::Tag(_) => "Tag",
            End::Kind(_) => "Kind",
            End::Length(_) => "Length",
            End::Padding(_) => "Padding",
            End::ClosedShort { .. } => "ClosedShort",
            End::State(_) => "State",
            End::Closed => "Closed",
        };
        let e = ends.entry(name).or_default();
        e.0 += 1;
        e.1 += u32::from(r.messages.len() >= 2);
    }
    for name in [
        "Empty",
        "BadIndices",
        "Tag",
        "Kind",
        "Length",
        "Padding",
        "ClosedShort",
        "State",
        "Closed",
    ] {
        let (count, deep) = ends.get(name).copied().unwrap_or_default();
        assert!(count >= n / 200, "{name}: {count} of {n} ({ends:?})");
        eprintln!("{name}: {count} ({deep} after two messages or more)");
        if name != "BadIndices" {
            assert!(deep > 0, "{name} never after two messages ({ends:?})");
        }
    }
    let deep: u32 = ends.values().map(|e| e.1).sum();
    assert!(
        deep >= n / 3,
        "{deep} of {n} end after two or more messages ({ends:?})"
    );
}

// ---------------------------------------------------------------------------------------
// A live ring with an honest producer, a consumer, and a hostile writer between operations.

/// A value relative to an index in the segment now.
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
    /// Where the consumer reads next, as far as the peer can tell: the released head.
    Head,
    /// Where the published records end (the producer writes next there): the word the
    /// producer cleared.
    Next,
    /// Any 8-aligned position, on the consumer's lap.
    Pos(u16),
}

#[derive(Debug, Clone, Copy)]
enum WordVal {
    /// A message header with the index's tag.
    Message(u32),
    MessageMax,
    MessageMaxPlusOne,
    /// Padding of the only legal length at its position, with the index's tag.
    PaddingToEnd,
    Padding(u32),
    /// A message header with the tag of the index this many laps (and 8-byte steps) away.
    Retag(i8, i16, u32),
    /// A header with the index's tag and another kind.
    Kind(u8, u32),
    /// Nothing here: un-publish.
    Zero,
    Raw(u64),
}

#[derive(Debug, Clone, Copy)]
enum Hostile {
    /// The `tail` field, relative to where the published records end: read by the consumer
    /// only once the producer's word says closed.
    Tail(Rel),
    /// The `head` field, relative to itself: read by the producer when the ring looks full.
    Head(Rel),
    Word(WordAt, WordVal),
    Payload(u16, u64),
    /// The producer's state word: any value.
    ProducerWord(u32),
    /// The consumer's state word: any value.
    ConsumerWord(u32),
    /// A state word (the producer's if true) with these bits of WAITING and MEMBARRIER
    /// flipped, and its state replaced by the low two bits of the third field if asked.
    Flags(bool, u32, Option<u8>),
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
        2 => Just(WordAt::Next),
        2 => any::<u16>().prop_map(WordAt::Pos),
    ];
    let len = || prop_oneof![0u32..700, any::<u32>()];
    let val = prop_oneof![
        2 => len().prop_map(WordVal::Message),
        1 => Just(WordVal::MessageMax),
        1 => Just(WordVal::MessageMaxPlusOne),
        2 => Just(WordVal::PaddingToEnd),
        1 => prop_oneof![0u32..1100, any::<u32>()].prop_map(WordVal::Padding),
        2 => (
            prop_oneof![Just(-1i8), Just(1), Just(0), any::<i8>()],
            prop_oneof![Just(0i16), Just(1), Just(-1), any::<i16>()],
            0u32..700,
        )
            .prop_map(|(l, s, n)| WordVal::Retag(l, s, n)),
        1 => (any::<u8>(), 0u32..700).prop_map(|(k, n)| WordVal::Kind(k, n)),
        1 => Just(WordVal::Zero),
        1 => any::<u64>().prop_map(WordVal::Raw),
    ];
    let flags = prop_oneof![
        Just(state::WAITING),
        Just(state::MEMBARRIER),
        Just(state::WAITING | state::MEMBARRIER),
    ];
    prop_oneof![
        3 => rel().prop_map(Hostile::Tail),
        2 => rel().prop_map(Hostile::Head),
        6 => (at, val).prop_map(|(a, v)| Hostile::Word(a, v)),
        2 => (any::<u16>(), any::<u64>()).prop_map(|(p, v)| Hostile::Payload(p, v)),
        1 => prop_oneof![0u32..=3, any::<u32>()].prop_map(Hostile::ProducerWord),
        1 => prop_oneof![0u32..=3, any::<u32>()].prop_map(Hostile::ConsumerWord),
        2 => (any::<bool>(), flags, prop_oneof![Just(None), (0u8..4).prop_map(Some)])
            .prop_map(|(p, f, s)| Hostile::Flags(p, f, s)),
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
        shmpipe_fuzz::start_index(),
        prop::collection::vec(step(), 1..80),
        shmpipe_fuzz::claim(),
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
        Hostile::Tail(r) => {
            let end = image::published_end(seg, max);
            seg.set_tail(rel(end, seg.head(), r));
        }
        Hostile::Head(r) => {
            let end = image::published_end(seg, max);
            seg.set_head(rel(seg.head(), end, r));
        }
        Hostile::Word(at, v) => {
            let head = seg.head() & !7;
            let index = match at {
                WordAt::Head => head,
                WordAt::Next => image::published_end(seg, max),
                WordAt::Pos(p) => {
                    head.wrapping_add((u64::from(p) * 8).wrapping_sub(head) & (cap - 1))
                }
            };
            let to_end = cap - (index & (cap - 1));
            let word = match v {
                WordVal::Message(len) => message_word(index, len.into()),
                WordVal::MessageMax => message_word(index, max as u64),
                WordVal::MessageMaxPlusOne => message_word(index, max as u64 + 1),
                WordVal::PaddingToEnd => padding_word(index, to_end - 8),
                WordVal::Padding(len) => padding_word(index, len.into()),
                WordVal::Retag(laps, steps, len) => {
                    let other = index
                        .wrapping_add((i64::from(laps) as u64).wrapping_mul(cap))
                        .wrapping_add((i64::from(steps) as u64).wrapping_mul(8));
                    message_word(other, len.into())
                }
                WordVal::Kind(k, len) => record_word(u64::from(k), index, len.into()),
                WordVal::Zero => 0,
                WordVal::Raw(w) => w,
            };
            seg.set_word(index, word);
        }
        Hostile::Payload(p, v) => {
            let pos = usize::from(p) % (seg.capacity() - 8);
            seg.write(layout::DATA_OFFSET + pos, &v.to_le_bytes());
        }
        Hostile::ProducerWord(v) => seg.set_producer_word(v),
        Hostile::ConsumerWord(v) => seg.set_consumer_word(v),
        Hostile::Flags(producer, flags, st) => {
            let now = if producer {
                seg.producer_word()
            } else {
                seg.consumer_word()
            };
            let mut w = now ^ flags;
            if let Some(st) = st {
                w = (w & !state::MASK) | u32::from(st);
            }
            if producer {
                seg.set_producer_word(w);
            } else {
                seg.set_consumer_word(w);
            }
        }
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
    let mut reference = RefConsumer::new(start, max);
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
                reference.recv(&seg).map(|m| m.into_iter().collect()),
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
                // Every attempt of the wait is a `try_recv`, and nothing moves meanwhile.
                (
                    answer(r),
                    reference.recv(&seg).map(|m| m.into_iter().collect()),
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

    /// faults.md R1-R3, R6: hostile writes between operations; the consumer agrees with the
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
        shmpipe_fuzz::start_index(),
        prop::collection::vec(hostile(), 1..12),
        (any::<bool>(), any::<bool>()),
        shmpipe_fuzz::claim(),
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
                Ok(()) | Err(shmpipe_ring::SendTimeoutError::Timeout) => {}
                Err(shmpipe_ring::SendTimeoutError::Failed(e)) => {
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
    // Each case streams for 30 ms: the long setting runs a tenth of SHMPIPE_FUZZ_CASES.
    #![proptest_config(proptest::test_runner::Config {
        cases: if shmpipe_fuzz::long_run() { shmpipe_fuzz::cases(0) / 10 } else { 40 },
        ..proptest_config(40, "proptest-regressions/hostile-race.txt")
    })]

    /// faults.md R4 generalised: the hostile writes of the live suite, from a third thread,
    /// while both ends stream: only messages (within the maximum) or a sticky
    /// `Corrupted`/`Closed`, never a panic or a hang.
    #[test]
    fn hostile_writes_racing_both_ends_never_panic_or_hang(c in race_case()) {
        deadline(30, "race case", move || run_race(c));
    }
}
