//! The rows of docs/faults.md that one process can stage against the ring, one test
//! each (named by row id), with a hostile peer acting through what a peer process holds: the
//! memfd (pwrite) and the waiter fds of the bells (epoll instances; the peer can change
//! their flags, harvest them, and add fds of its own to the one it made). No eventfd of ours
//! ever reaches a peer. Every test runs under a deadline.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rustix::event::{EventfdFlags, Timespec, epoll, eventfd};
use shmpipe_fuzz::{
    Apart, Claim, LEN_MASK, Segment, check, claim_apart, deadline, fill, message, message_word,
    padding_word, record_word, state,
};
use shmpipe_ring::{
    Bell, CloseError, Config, Consumer, Corruption, Producer, RecvError, RecvTimeoutError, Ring,
    SendError, SendTimeoutError, SetupError, TryRecvError, TrySendError, WaitStrategy, channel,
};

fn dup(fd: impl AsFd) -> OwnedFd {
    rustix::io::fcntl_dupfd_cloexec(fd, 0).expect("dup")
}

fn ring(cap: usize, wait: WaitStrategy) -> (Ring, Segment) {
    let ring = Ring::create(&Config::new().capacity(cap).wait(wait)).expect("create");
    let seg = Segment::new(ring.memfd(), cap);
    (ring, seg)
}

/// Both ends, claimed as two processes claim them.
fn ends(ring: &Ring) -> (Producer, Consumer) {
    Claim::Apart.claim(ring).expect("claim both ends")
}

/// The consumer alone (the producer role stays free), sleeping on the waiter of a bell
/// nobody rings.
fn consumer_only(ring: &Ring) -> Consumer {
    let peer = Bell::new().expect("bell");
    let waiter = peer.waiter_fd().try_clone_to_owned().expect("dup");
    ring.consumer(Bell::new().expect("bell"), waiter)
        .expect("consumer")
}

fn corrupted(r: Result<usize, TryRecvError>) -> Corruption {
    match r {
        Err(TryRecvError::Failed(RecvError::Corrupted(c))) => c,
        other => panic!("expected Corrupted, got {other:?}"),
    }
}

/// Where the sweeps start a 256-byte ring's indices: the first lap, just below the tag's
/// wrap (the tag is bits 34..3 of the index, so it wraps at 2^35) and just below the u64
/// wrap. Each is a multiple of the capacity: index `base + p` is at position `p`.
const STARTS: [u64; 3] = [0, (1 << 35) - 256, u64::MAX - 255];

/// The corruption a header word must be reported as, without its details.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bad {
    Tag,
    Kind,
    Length,
    Padding,
}

/// The exact report docs/protocol.md §1.6 calls for when `word` is read at index `at` of a
/// `cap`-byte ring whose maximum message is `max`.
fn report(bad: Bad, word: u64, at: u64, cap: u64, max: usize) -> Corruption {
    let position = at % cap;
    let to_end = cap - position;
    let len = word & LEN_MASK;
    match bad {
        Bad::Tag => Corruption::RecordTag {
            position,
            word,
            index: at,
        },
        Bad::Kind => Corruption::RecordKind { position, word },
        Bad::Length => Corruption::RecordLength {
            position,
            len,
            max: max as u64,
            to_end,
        },
        Bad::Padding => Corruption::Padding {
            position,
            len,
            to_end,
        },
    }
}

/// faults.md R1 and R3 in band, swept: at every position of a 256-byte ring, on the first lap,
/// across the tag's wrap and across the u64 wrap, one honest message and then, where the
/// next record goes, a header word that is impossible there: a record of an earlier or a
/// later lap (what a stale payload word looks like), of the neighbouring index, a tag one
/// bit off; kind 0 or 3 (with this index's tag or another's); a message one byte over the
/// maximum, one byte past the ring's end, or of the largest length the bits hold; padding
/// that stops 8 bytes short of the end, runs 8 past it, or claims the largest length. The
/// consumer hands over the honest message, then names exactly that word, position and index
/// (docs/protocol.md §1.6), for good and to every kind of receive. (ring/tests/hostile.rs
/// has one row of each at position 0.)
#[test]
fn r1_r3_every_impossible_header_word_is_named_exactly_at_every_position() {
    deadline(60, "R1/R3 sweep", || {
        let cap = 256u64;
        let max = 64usize;
        let mut checked = 0;
        for base in STARTS {
            for pos in (0..cap).step_by(8) {
                let at = base.wrapping_add(pos);
                let to_end = cap - pos;
                let cases = [
                    (message_word(at.wrapping_sub(cap), 8), Bad::Tag),
                    (message_word(at.wrapping_add(cap), 8), Bad::Tag),
                    (message_word(at.wrapping_add(8), 8), Bad::Tag),
                    (padding_word(at ^ (1 << 34), to_end - 8), Bad::Tag),
                    (record_word(0, at, 8), Bad::Kind),
                    (record_word(3, at, 8), Bad::Kind),
                    (record_word(0, at.wrapping_add(cap), 8), Bad::Kind),
                    (message_word(at, max as u64 + 1), Bad::Length),
                    (message_word(at, to_end - 8 + 1), Bad::Length),
                    (message_word(at, LEN_MASK), Bad::Length),
                    (padding_word(at, (to_end - 8).wrapping_sub(8)), Bad::Padding),
                    (padding_word(at, to_end), Bad::Padding),
                    (padding_word(at, LEN_MASK), Bad::Padding),
                ];
                for (k, (word, bad)) in cases.into_iter().enumerate() {
                    let what = format!("index {at:#x} (position {pos}), case {k}: {word:#018x}");
                    // The honest message: a record ending just at `at` (8 bytes long when
                    // only position 0 is before it, 16 otherwise).
                    let size = if pos == 8 { 8 } else { 16 };
                    let honest = vec![k as u8; size as usize - 8];
                    let cfg = Config::new()
                        .capacity(cap as usize)
                        .max_message(max)
                        .start_index(at.wrapping_sub(size))
                        .wait(WaitStrategy::Spin);
                    let ring = Ring::create(&cfg).expect("create");
                    let seg = Segment::new(ring.memfd(), cap as usize);
                    let claim = if k % 2 == 0 {
                        Claim::Pair
                    } else {
                        Claim::Apart
                    };
                    let (mut tx, mut rx) = claim.claim(&ring).expect("claim");
                    tx.try_send(&honest).expect("send");
                    assert_eq!(seg.word(at), 0, "{what}: the word after the record");
                    seg.set_word(at, word);
                    let want = report(bad, word, at, cap, max);
                    let mut buf = Vec::new();
                    rx.try_recv(&mut buf).expect("the honest message");
                    assert_eq!(buf, honest, "{what}");
                    assert_eq!(corrupted(rx.try_recv(&mut buf)), want, "{what}");
                    // Sticky, whatever the call, and never a view of it.
                    assert_eq!(corrupted(rx.try_recv(&mut buf)), want, "{what}");
                    assert!(matches!(
                        rx.try_drain_views(10, |_| panic!("a view of garbage")),
                        Err(TryRecvError::Failed(RecvError::Corrupted(c))) if c == want
                    ));
                    assert!(matches!(
                        rx.try_drain(10, |_| panic!("a copy of garbage")),
                        Err(TryRecvError::Failed(RecvError::Corrupted(c))) if c == want
                    ));
                    assert!(matches!(
                        rx.recv_timeout(&mut buf, Duration::from_millis(1)),
                        Err(RecvTimeoutError::Failed(RecvError::Corrupted(c))) if c == want
                    ));
                    // Even if the peer puts an honest word back.
                    seg.set_word(at, message_word(at, 0));
                    assert_eq!(corrupted(rx.try_recv(&mut buf)), want, "{what}");
                    checked += 1;
                }
            }
        }
        assert_eq!(checked, 3 * 32 * 13);
    });
}

/// faults.md R2 in band: the consumer never reads the producer's index while the producer is
/// open; once it says it closed (state 2 in its state word), the final `tail` it left must be
/// exactly where its records end (docs/protocol.md §1.8). Swept over where the indices
/// start, 0 to 9 messages (some wrapping, with padding), and final tails behind, ahead,
/// misaligned, a lap off or anywhere: every message arrives, then `ClosedShort` naming that
/// tail and the consumer's index, for good; the true tail gives `Closed`. A close the peer
/// forges (state 2 written into the producer's word while the producer is open, `tail`
/// still the starting index) is a clean end only while nothing was published, and
/// `ClosedShort` once the consumer has moved. (ring/tests/hostile.rs has one such row.)
#[test]
fn r2_a_final_tail_the_records_do_not_reach_is_closed_short() {
    deadline(30, "R2 sweep", || {
        let cap = 256u64;
        for base in STARTS {
            let start = base.wrapping_add(cap - 40);
            for n in [0u64, 1, 3, 9] {
                for delta in [0i64, -8, 8, 1, -(cap as i64), cap as i64, 64, i64::MIN] {
                    let what = format!("start {start:#x}, {n} messages, tail off by {delta}");
                    let cfg = Config::new()
                        .capacity(cap as usize)
                        .start_index(start)
                        .wait(WaitStrategy::Spin);
                    let ring = Ring::create(&cfg).expect("create");
                    let seg = Segment::new(ring.memfd(), cap as usize);
                    let (mut tx, mut rx) = ends(&ring);
                    for seq in 0..n {
                        tx.try_send(&message(seq, (seq * 5 % 20) as usize))
                            .expect("send");
                    }
                    drop(tx);
                    let end = seg.tail();
                    let tail = end.wrapping_add(delta as u64);
                    seg.set_tail(tail);
                    let (mut buf, mut scratch) = (Vec::new(), Vec::new());
                    for seq in 0..n {
                        rx.try_recv(&mut buf).expect("a message before the end");
                        assert!(check(seq, &buf, &mut scratch), "{what}: message {seq}");
                    }
                    if delta == 0 {
                        assert!(
                            matches!(
                                rx.try_recv(&mut buf),
                                Err(TryRecvError::Failed(RecvError::Closed))
                            ),
                            "{what}"
                        );
                        continue;
                    }
                    let want = Corruption::ClosedShort { tail, head: end };
                    assert_eq!(corrupted(rx.try_recv(&mut buf)), want, "{what}");
                    seg.set_tail(end);
                    assert_eq!(corrupted(rx.try_recv(&mut buf)), want, "{what}: sticky");
                }
            }
            // The forged close.
            for n in [0u64, 2] {
                let cfg = Config::new().capacity(cap as usize).start_index(start);
                let ring = Ring::create(&cfg).expect("create");
                let seg = Segment::new(ring.memfd(), cap as usize);
                let (mut tx, mut rx) = ends(&ring);
                let mut buf = Vec::new();
                for seq in 0..n {
                    tx.try_send(&message(seq, 8)).expect("send");
                    rx.try_recv(&mut buf).expect("receive");
                }
                seg.set_producer_word(state::CLOSED);
                let r = rx.try_recv(&mut buf);
                if n == 0 {
                    assert!(
                        matches!(r, Err(TryRecvError::Failed(RecvError::Closed))),
                        "{r:?}"
                    );
                } else {
                    assert_eq!(
                        corrupted(r),
                        Corruption::ClosedShort {
                            tail: start,
                            head: start + 16 * n
                        }
                    );
                }
                drop(tx);
            }
        }
    });
}

/// A state word outside docs/protocol.md §1.3 (bits other than the state, WAITING and
/// MEMBARRIER, or state 3) is `Corrupted(State)` for the side that reads it (§1.6), and
/// sticks; the words §1.3 allows, flags included, are not. The consumer looks at the
/// producer's word when it finds nothing at its index and after each release, so messages
/// published before the garbage still arrive if no release comes between (three small ones
/// in a 4 KiB ring: its first release is when it has caught up); the producer looks at the
/// consumer's word before it writes anything, so it fails without publishing.
#[test]
fn a_state_word_outside_the_protocol_is_corruption_for_the_other_side() {
    deadline(10, "state words", || {
        let garbage = [
            3u32,
            1 | 4,
            1 << 10,
            2 | 1 << 31,
            3 | state::WAITING,
            0x8000_0001,
            u32::MAX - 1,
            // (u32::MAX: `a_state_word_of_all_ones_is_corruption_too`.)
        ];
        for word in garbage {
            // The producer's word, read by the consumer.
            let (r, seg) = ring(4096, WaitStrategy::Spin);
            let (mut tx, mut rx) = ends(&r);
            for seq in 0..3 {
                tx.try_send(&message(seq, 10)).expect("send");
            }
            seg.set_producer_word(word);
            let (mut buf, mut scratch) = (Vec::new(), Vec::new());
            for seq in 0..3 {
                rx.try_recv(&mut buf).expect("a message published before");
                assert!(check(seq, &buf, &mut scratch), "message {seq}");
            }
            let want = Corruption::State {
                side: "producer",
                word,
            };
            assert_eq!(
                corrupted(rx.try_recv(&mut buf)),
                want,
                "producer word {word:#x}"
            );
            seg.set_producer_word(state::ACTIVE);
            assert_eq!(corrupted(rx.try_recv(&mut buf)), want, "sticky");

            // The consumer's word, read by the producer.
            let (r, seg) = ring(4096, WaitStrategy::Spin);
            let (mut tx, mut rx) = ends(&r);
            tx.try_send(b"before").expect("send");
            seg.set_consumer_word(word);
            let want = Corruption::State {
                side: "consumer",
                word,
            };
            match tx.try_send(b"after") {
                Err(TrySendError::Failed(SendError::Corrupted(c))) => assert_eq!(c, want),
                other => panic!("consumer word {word:#x}: {other:?}"),
            }
            assert!(matches!(tx.send(b"x"), Err(SendError::Corrupted(c)) if c == want));
            rx.try_recv(&mut buf).expect("the message before");
            assert_eq!(buf, b"before");
            assert!(
                matches!(rx.try_recv(&mut buf), Err(TryRecvError::Empty)),
                "published after the garbage"
            );
        }
        // Flags alone, or a free role, are words §1.3 writes: nothing to report.
        for word in [
            state::FREE,
            state::WAITING,
            state::MEMBARRIER,
            state::ACTIVE | state::WAITING | state::MEMBARRIER,
        ] {
            let (r, seg) = ring(4096, WaitStrategy::Spin);
            let (mut tx, mut rx) = ends(&r);
            seg.set_producer_word(word);
            seg.set_consumer_word(word);
            let mut buf = Vec::new();
            assert!(matches!(rx.try_recv(&mut buf), Err(TryRecvError::Empty)));
            tx.try_send(b"still fine").expect("send");
            rx.try_recv(&mut buf).expect("receive");
            assert_eq!(buf, b"still fine");
        }
    });
}

/// faults.md R4: a peer rewriting the length (and now and then the kind) of published headers
/// while the consumer reads never makes it read outside the ring: every message it hands
/// over is at most the maximum, or it reports corruption. The words keep their index's tag,
/// so they pass that check and the length is what decides.
#[test]
fn r4_a_peer_rewriting_a_published_length_never_causes_an_out_of_bounds_read() {
    deadline(60, "R4", || {
        let cap = 1024;
        let (mut messages, mut corrupted) = (0, 0);
        for round in 0..100u64 {
            let (ring, seg) = ring(cap, WaitStrategy::Spin);
            let max = ring.max_message();
            let mut rx = consumer_only(&ring);
            // 16 published messages of 32 bytes (40-byte records), then the zero word.
            for i in 0..16u64 {
                seg.write_data(i * 40 + 8, &message(i, 32));
                seg.set_word(i * 40, message_word(i * 40, 32));
            }
            let stop = Arc::new(AtomicBool::new(false));
            let writes = Arc::new(AtomicU64::new(0));
            let rewriter = {
                let seg = Segment::new(seg.fd(), cap);
                let (stop, writes) = (stop.clone(), writes.clone());
                std::thread::spawn(move || {
                    let mut x = 0x2545_F491_4F6C_DD1Du64 ^ round;
                    while !stop.load(Ordering::Relaxed) {
                        writes.fetch_add(1, Ordering::Relaxed);
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        let len = match x % 4 {
                            0 => LEN_MASK,
                            1 => (x >> 8) % 2048,
                            _ => 32,
                        };
                        let at = (x >> 40) % 16 * 40;
                        let kind = if x % 16 == 5 { 2 } else { 1 };
                        seg.set_word(at, record_word(kind, at, len));
                    }
                })
            };
            while writes.load(Ordering::Relaxed) < 50 {
                std::thread::yield_now();
            }
            let mut buf = Vec::new();
            for _ in 0..=16 {
                match rx.try_recv(&mut buf) {
                    Ok(n) => {
                        assert!(n <= max && n == buf.len(), "{n} bytes, max {max}");
                        messages += 1;
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Failed(RecvError::Corrupted(_))) => {
                        corrupted += 1;
                        break;
                    }
                    Err(e) => panic!("{e}"),
                }
            }
            stop.store(true, Ordering::Relaxed);
            rewriter.join().unwrap();
        }
        assert!(
            messages > 0 && corrupted > 0,
            "{messages} messages, {corrupted} corrupted"
        );
    });
}

/// faults.md R6, over a stream: the peer scribbles over the index fields it does not own
/// between every two messages (the consumer's `head`, and `tail`, which holds only the
/// starting index while the producer is open). The consumer keeps its own head and never
/// reads `tail` before the close; the producer keeps its own tail and writes the true one
/// when it closes.
#[test]
fn r6_a_peer_overwriting_our_published_index_does_not_affect_us() {
    deadline(10, "R6", || {
        let (ring, seg) = ring(256, WaitStrategy::Spin);
        let (mut tx, mut rx) = ends(&ring);
        let mut buf = Vec::new();
        let mut scratch = Vec::new();
        let mut end = 0u64;
        for seq in 0..200u64 {
            let len = (seq % 40) as usize;
            tx.try_send(&message(seq, len)).unwrap();
            let size = 8 + len.next_multiple_of(8) as u64;
            if size > 256 - end % 256 {
                end += 256 - end % 256; // padding to the end
            }
            end += size;
            // The consumer's index, overwritten by the peer it belongs to... is ignored by
            // the consumer itself (it keeps its own).
            seg.set_head(seg.head().wrapping_add(8 * (seq % 3)));
            seg.set_tail(seg.tail().wrapping_add(8 * (seq % 5)) ^ (seq << 40));
            rx.try_recv(&mut buf).unwrap();
            assert!(check(seq, &buf, &mut scratch), "message {seq}");
        }
        assert!(matches!(rx.try_recv(&mut buf), Err(TryRecvError::Empty)));
        // The close writes the true final index over the garbage.
        drop(tx);
        assert_eq!(seg.tail(), end, "final tail");
        assert!(matches!(
            rx.try_recv(&mut buf),
            Err(TryRecvError::Failed(RecvError::Closed))
        ));
    });
}

#[test]
fn r6_a_producer_refuses_an_impossible_head() {
    deadline(10, "R6 producer", || {
        for bad in [3u64, 4096, u64::MAX - 7] {
            let (ring, seg) = ring(64, WaitStrategy::Spin);
            let (mut tx, _rx) = ends(&ring);
            while tx.try_send(&[1; 16]).is_ok() {}
            // The producer looks at the head only when full: now.
            seg.set_head(bad);
            match tx.try_send(&[1; 16]) {
                Err(TrySendError::Failed(SendError::Corrupted(_))) => {}
                other => panic!("head {bad}: {other:?}"),
            }
            assert!(matches!(tx.send(b"x"), Err(SendError::Corrupted(_))));
        }
    });
}

#[test]
fn r8_a_ring_on_an_empty_ring_puts_the_consumer_back_to_sleep() {
    deadline(10, "R8", || {
        let (ring, _seg) = ring(256, WaitStrategy::Block);
        let Apart {
            tx: _tx,
            mut rx,
            data_waiter,
            ..
        } = claim_apart(&ring).expect("claim");
        // The producer's process rings its side with nothing published: its bell's epoll
        // fd is its own, so it can attach an eventfd of its choosing and write that.
        let spam = Extra::attach(&data_waiter, Edge::Triggered);
        let spammer = std::thread::spawn(move || {
            for _ in 0..5 {
                spam.poke();
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        let t = Instant::now();
        let mut buf = Vec::new();
        assert!(matches!(
            rx.recv_timeout(&mut buf, Duration::from_millis(150)),
            Err(RecvTimeoutError::Timeout)
        ));
        assert!(t.elapsed() >= Duration::from_millis(150));
        spammer.join().unwrap();
        assert!(rx.stats().sleeps >= 2, "{:?}", rx.stats());
    });
}

/// faults.md R9 in band: what a producer wrote but never published is never delivered, even
/// when it is bait. A grant is written (its payload a run of words each of which is a
/// valid header for its own index) and then dropped, as a producer that dies before
/// committing leaves it; one small message is sent over its start; the producer then goes
/// (its drop closes the ring). The consumer gets the committed messages and `Closed`: the
/// word after the last record was cleared before it was published (docs/protocol.md §1.4),
/// so the bait behind it is never read, and the final tail is exactly where the records end.
/// (ring/tests/hostile.rs has the producer that vanishes without closing.)
#[test]
fn r9_a_record_written_but_not_published_is_never_delivered() {
    deadline(10, "R9", || {
        let (ring, seg) = ring(4096, WaitStrategy::Spin);
        let (mut tx, mut rx) = ends(&ring);
        tx.try_send(b"committed").unwrap(); // 24 bytes at 0
        {
            let mut g = tx.try_reserve(64).unwrap(); // header at 24, payload 32..96
            for k in 0..8u64 {
                let index = 32 + 8 * k;
                g.write_at(8 * k as usize, &message_word(index, 0).to_le_bytes());
            }
        }
        assert_eq!(seg.word(40), message_word(40, 0), "the bait is in place");
        tx.try_send(b"x").unwrap(); // 16 bytes at 24: clears the word at 40
        drop(tx);
        assert_eq!(seg.tail(), 40);
        let mut buf = Vec::new();
        for want in [&b"committed"[..], b"x"] {
            rx.try_recv(&mut buf).unwrap();
            assert_eq!(buf, want);
        }
        assert!(matches!(
            rx.try_recv(&mut buf),
            Err(TryRecvError::Failed(RecvError::Closed))
        ));
    });
}

/// An fd a hostile peer attaches to the epoll fd of its own bell (the waiter it gave us), to
/// wake us when it likes.
struct Extra {
    fd: OwnedFd,
}

/// How an [`Extra`] is watched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Edge {
    /// Edge-triggered, as a bell: one wake-up per write.
    Triggered,
    /// Level-triggered and left readable: the waiter reports ready on every look.
    Level,
}

impl Extra {
    /// A non-blocking eventfd added to `waiter` (the peer may do that to an epoll fd it made).
    fn attach(waiter: &OwnedFd, edge: Edge) -> Extra {
        Extra::try_attach(waiter, edge).expect("epoll_ctl(ADD) an eventfd to the waiter")
    }

    /// As [`Extra::attach`]; `None` if `waiter` refuses it.
    fn try_attach(waiter: &OwnedFd, edge: Edge) -> Option<Extra> {
        let fd = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK).expect("eventfd");
        let mut flags = epoll::EventFlags::IN;
        if edge == Edge::Triggered {
            flags |= epoll::EventFlags::ET;
        }
        epoll::add(waiter, &fd, epoll::EventData::new_u64(7), flags).ok()?;
        Some(Extra { fd })
    }

    /// Make it readable (again): one more wake-up for whoever sleeps on the waiter.
    fn poke(&self) {
        rustix::io::write(&self.fd, &1u64.to_ne_bytes()).expect("write the extra eventfd");
    }
}

/// The peer clears `O_NONBLOCK` on a waiter fd it holds (the open file description is shared
/// with ours: the flag is its to change).
fn make_blocking(fd: &OwnedFd) {
    let fl = rustix::fs::fcntl_getfl(fd).expect("getfl");
    rustix::fs::fcntl_setfl(fd, fl - rustix::fs::OFlags::NONBLOCK).expect("setfl");
    let fl = rustix::fs::fcntl_getfl(fd).expect("getfl");
    assert!(!fl.contains(rustix::fs::OFlags::NONBLOCK));
}

/// A thief: the peer harvests every edge of a waiter fd it holds before the side sleeping
/// on it sees it (`epoll_wait` on its copy, 5 ms at a time, after clearing `O_NONBLOCK`),
/// until `stop` is set. Returns how many edges it took.
fn steal_wakeups(fd: OwnedFd, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    make_blocking(&fd);
    std::thread::spawn(move || {
        let mut stolen = 0u64;
        let mut events = [epoll::Event {
            flags: epoll::EventFlags::empty(),
            data: epoll::EventData::new_u64(0),
        }; 8];
        let slice = Timespec {
            tv_sec: 0,
            tv_nsec: 5_000_000,
        };
        while !stop.load(Ordering::Relaxed) {
            if let Ok(n) = epoll::wait(&fd, &mut events, Some(&slice)) {
                stolen += n as u64;
            }
        }
        stolen
    })
}

#[test]
fn e1_a_peer_that_steals_wakeups_only_delays_the_consumer() {
    deadline(20, "E1", || {
        let (ring, _seg) = ring(4096, WaitStrategy::Block);
        let Apart {
            mut tx,
            mut rx,
            data_waiter,
            ..
        } = claim_apart(&ring).expect("claim");
        let stop = Arc::new(AtomicBool::new(false));
        let thief = steal_wakeups(data_waiter, stop.clone());
        let mut buf = Vec::new();
        // Timeouts hold although the waiter is now blocking and harvested by the thief.
        let t = Instant::now();
        assert!(matches!(
            rx.recv_timeout(&mut buf, Duration::from_millis(50)),
            Err(RecvTimeoutError::Timeout)
        ));
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
        // Messages sent while the consumer sleeps arrive although their wake-ups are stolen.
        let reader = std::thread::spawn(move || {
            let t = Instant::now();
            for i in 0..5u8 {
                rx.recv_timeout(&mut buf, Duration::from_secs(5)).unwrap();
                assert_eq!(buf, [i]);
            }
            t.elapsed()
        });
        for i in 0..5u8 {
            std::thread::sleep(Duration::from_millis(30));
            tx.try_send(&[i]).unwrap();
        }
        let took = reader.join().unwrap();
        assert!(took < Duration::from_secs(3), "{took:?}");
        stop.store(true, Ordering::Relaxed);
        // How many edges the thief won is timing; that the producer rang is not.
        thief.join().unwrap();
        assert!(tx.stats().wakeups_sent > 0, "{:?}", tx.stats());
    });
}

#[test]
fn e2_a_peer_cannot_fill_the_counter_we_ring_and_rings_never_block() {
    deadline(20, "E2", || {
        let (ring, seg) = ring(4096, WaitStrategy::Block);
        let Apart {
            mut tx,
            mut rx,
            data_waiter,
            ..
        } = claim_apart(&ring).expect("claim");
        // The attack that hung the producer when the peer held our eventfd: clear
        // `O_NONBLOCK` on what it holds and saturate the counter. It holds an epoll fd now,
        // which takes no writes (and gives no reads).
        make_blocking(&data_waiter);
        let filled = rustix::io::write(&data_waiter, &0xffff_ffff_ffff_fffeu64.to_ne_bytes());
        assert!(
            filled.is_err(),
            "the waiter took a counter write: {filled:?}"
        );
        assert!(rustix::io::read(&data_waiter, &mut [0u8; 8]).is_err());
        // The consumer says it sleeps, so every publish rings; nobody ever harvests.
        for i in 0..100u32 {
            seg.set_consumer_word(seg.consumer_word() | state::WAITING);
            tx.try_send(&i.to_le_bytes()).unwrap();
        }
        let mut buf = Vec::new();
        for i in 0..100u32 {
            rx.recv_timeout(&mut buf, Duration::from_secs(1)).unwrap();
            assert_eq!(buf, i.to_le_bytes());
        }
        assert_eq!(tx.stats().wakeups_sent, 100, "{:?}", tx.stats());
        drop(data_waiter);
    });
}

/// What a hostile peer does to a waiter fd it holds, all at once: clears `O_NONBLOCK`, tries
/// to saturate it with a counter write (what hung us when it held our eventfd), and attaches
/// fds of its own: an eventfd, left readable if `level` (then the waiter reports ready on
/// every look) or edge-triggered, and `nest` (another epoll fd) if given. Returns the write's
/// result, the attached eventfd, and whether every attach worked; nothing here may fail
/// before the ring is exercised, so that a ring that hands out the wrong fd shows as a hang.
fn abuse(
    waiter: &OwnedFd,
    level: bool,
    nest: Option<&OwnedFd>,
) -> (rustix::io::Result<usize>, Option<Extra>, bool) {
    let fl = rustix::fs::fcntl_getfl(waiter).expect("getfl");
    rustix::fs::fcntl_setfl(waiter, fl - rustix::fs::OFlags::NONBLOCK).expect("setfl");
    let filled = rustix::io::write(waiter, &0xffff_ffff_ffff_fffeu64.to_ne_bytes());
    let edge = if level { Edge::Level } else { Edge::Triggered };
    let extra = Extra::try_attach(waiter, edge);
    if let Some(e) = &extra {
        e.poke();
    }
    let nested = nest.is_none_or(|n| {
        epoll::add(
            waiter,
            n,
            epoll::EventData::new_u64(9),
            epoll::EventFlags::IN,
        )
        .is_ok()
    });
    (filled, extra, nested)
}

/// faults.md E1 and E2 in the bell model, against the attack on a shared eventfd (a peer that
/// cleared `O_NONBLOCK` on it and filled its counter would hang our `write` forever): nothing
/// a peer does to a waiter fd it holds (clear `O_NONBLOCK`, write
/// it, never harvest it, harvest it itself, attach fds that keep it readable, nest another
/// epoll fd in it) makes our rings block, or our timeouts, `arm` or `close` fail. Each end
/// is "us" for one direction: the producer's waiter is abused by the consumer's process and
/// the consumer's by the producer's. A ring that handed out its eventfd again would block in
/// step 1 (the deadline reports it); one that harvested with a blocking `epoll_wait` would
/// block in `arm` once the thief has emptied the waiter.
#[test]
fn e1_e2_nothing_a_peer_does_to_a_waiter_blocks_our_rings_or_breaks_our_timeouts() {
    deadline(60, "E1+E2", || {
        for (harvest, level) in [(false, true), (true, false), (true, true), (false, false)] {
            let at = format!("harvest {harvest}, level-triggered extra {level}");
            let (ring, seg) = ring(4096, WaitStrategy::Block);
            let Apart {
                mut tx,
                mut rx,
                data_waiter,
                space_waiter,
            } = claim_apart(&ring).expect("claim");
            let nest = dup(&space_waiter);
            let (filled_d, extra_d, nested) = abuse(&data_waiter, level, Some(&nest));
            let (filled_s, extra_s, _) = abuse(&space_waiter, level, None);
            let stop = Arc::new(AtomicBool::new(false));
            let thieves: Vec<_> = if harvest {
                [&data_waiter, &space_waiter]
                    .map(|w| steal_wakeups(dup(w), stop.clone()))
                    .into()
            } else {
                Vec::new()
            };

            // 1. Rings never block: each side is told the other sleeps before every message.
            let mut buf = Vec::new();
            for i in 0..2000u32 {
                seg.set_consumer_word(seg.consumer_word() | state::WAITING);
                tx.try_send(&i.to_le_bytes()).unwrap();
                seg.set_producer_word(seg.producer_word() | state::WAITING);
                rx.try_recv(&mut buf).unwrap();
                assert_eq!(buf, i.to_le_bytes(), "{at}");
            }
            assert!(tx.stats().wakeups_sent >= 2000, "{at}: {:?}", tx.stats());
            assert!(rx.stats().wakeups_sent >= 2000, "{at}: {:?}", rx.stats());

            // 2. Timeouts hold on both ends, and `arm` (which harvests) returns at once.
            let within = |what: &str, t: Instant, d: Duration| {
                let e = t.elapsed();
                assert!(
                    e >= d && e < d + Duration::from_secs(2),
                    "{at}: {what} returned after {e:?}"
                );
            };
            let short = Duration::from_millis(50);
            let t = Instant::now();
            let r = rx.recv_timeout(&mut buf, short);
            assert!(matches!(r, Err(RecvTimeoutError::Timeout)), "{at}: {r:?}");
            within("recv_timeout", t, short);
            let t = Instant::now();
            let r = rx.drain_timeout(8, short, |_| panic!("nothing was sent"));
            assert!(matches!(r, Err(RecvTimeoutError::Timeout)), "{at}: {r:?}");
            within("drain_timeout", t, short);
            let t = Instant::now();
            assert!(!rx.arm().unwrap(), "{at}: empty, arm says wait");
            within("Consumer::arm", t, Duration::ZERO);
            while tx.try_send(&[1; 64]).is_ok() {}
            let t = Instant::now();
            let r = tx.send_timeout(&[1; 64], short);
            assert!(matches!(r, Err(SendTimeoutError::Timeout)), "{at}: {r:?}");
            within("send_timeout", t, short);
            let t = Instant::now();
            assert!(!tx.arm(64).unwrap(), "{at}: full, arm says wait");
            within("Producer::arm", t, Duration::ZERO);

            // 3. `close` waits out its timeout and says what was left.
            let t = Instant::now();
            match tx.close(short) {
                Err(CloseError::Timeout { unconsumed }) => assert!(unconsumed > 0, "{at}"),
                other => panic!("{at}: close: {other:?}"),
            }
            within("close", t, short);
            stop.store(true, Ordering::Relaxed);
            for t in thieves {
                t.join().unwrap();
            }

            // The attack itself: nothing took the counter write; the peer's fds were
            // attached (so the abuse really happened).
            assert!(
                filled_d.is_err() && filled_s.is_err(),
                "{at}: a waiter took a write"
            );
            assert!(
                extra_d.is_some() && extra_s.is_some() && nested,
                "{at}: attach failed"
            );
            drop(nest);
        }
    });
}

#[test]
fn e3_a_flood_of_spurious_signals_loses_nothing() {
    deadline(30, "E3", || {
        let (ring, _seg) = ring(256, WaitStrategy::Block);
        let Apart {
            mut tx,
            mut rx,
            data_waiter,
            space_waiter,
        } = claim_apart(&ring).expect("claim");
        // Each peer attaches an eventfd to the waiter it made and hammers it: both ends are
        // woken for nothing, constantly.
        let spam = [
            Extra::attach(&data_waiter, Edge::Triggered),
            Extra::attach(&space_waiter, Edge::Triggered),
        ];
        let stop = Arc::new(AtomicBool::new(false));
        let flood = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    for s in &spam {
                        s.poke();
                    }
                    n += 1;
                }
                n
            })
        };
        let count = 3000u64;
        let reader = std::thread::spawn(move || {
            let (mut buf, mut scratch) = (Vec::new(), Vec::new());
            for seq in 0..count {
                rx.recv_timeout(&mut buf, Duration::from_secs(10)).unwrap();
                assert!(check(seq, &buf, &mut scratch), "message {seq}");
            }
            assert!(matches!(
                rx.recv_timeout(&mut buf, Duration::from_secs(10)),
                Err(RecvTimeoutError::Failed(RecvError::Closed))
            ));
        });
        let mut msg = Vec::new();
        for seq in 0..count {
            fill(seq, (seq % 60) as usize, &mut msg);
            tx.send_timeout(&msg, Duration::from_secs(10)).unwrap();
        }
        drop(tx);
        reader.join().unwrap();
        stop.store(true, Ordering::Relaxed);
        assert!(flood.join().unwrap() > 0);
    });
}

#[test]
fn l4_every_fd_of_a_ring_is_close_on_exec() {
    let cloexec = |what: &str, fd: std::os::fd::BorrowedFd<'_>| {
        let flags = rustix::io::fcntl_getfd(fd).unwrap();
        assert!(flags.contains(rustix::io::FdFlags::CLOEXEC), "{what}");
    };
    let bell = Bell::new().unwrap();
    cloexec("a bell's waiter", bell.waiter_fd());
    for claim in [Claim::Pair, Claim::Apart] {
        let (ring, _seg) = ring(4096, WaitStrategy::Spin);
        cloexec("the memfd", ring.memfd());
        let (tx, rx) = claim.claim(&ring).unwrap();
        cloexec("the producer's waiter", tx.as_fd());
        cloexec("the consumer's waiter", rx.as_fd());
    }
}

/// L5's sibling, a lost race at close: the consumer reads everything, sees `Closed` and goes
/// away while the producer's `close` waits. `close` must say `Ok`. A `close` that loads the
/// head, then the consumer's state, and not the head again, reports a consumer that released
/// and closed between the two loads as `Unconsumed` (docs/testing.md: the close race). A
/// race, so a stress loop: four pairs at once beside CPU hogs.
#[test]
fn close_after_the_consumer_read_everything_and_left_is_ok() {
    // The window is two loads wide: several pairs at once on two cores make preemption
    // inside it likely.
    let rounds = if shmpipe_fuzz::long_run() { 400 } else { 50 };
    deadline(240, "close race", move || {
        let stop = Arc::new(AtomicBool::new(false));
        let hogs: Vec<_> = (0..4)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::hint::spin_loop();
                    }
                })
            })
            .collect();
        let pairs: Vec<_> = (0..4)
            .map(|_| std::thread::spawn(move || (0..rounds).filter(|_| close_round()).count()))
            .collect();
        let bad: usize = pairs.into_iter().map(|p| p.join().unwrap()).sum();
        stop.store(true, Ordering::Relaxed);
        hogs.into_iter().for_each(|h| h.join().unwrap());
        assert_eq!(
            bad,
            0,
            "close said Unconsumed after a full read, {bad} times in {}",
            4 * rounds
        );
    });
}

/// One producer/consumer round; true if `close` reported `Unconsumed`.
fn close_round() -> bool {
    let cfg = Config::new().capacity(256).wait(WaitStrategy::Spin);
    let (mut tx, mut rx) = channel(&cfg).unwrap();
    let reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        while rx.recv_timeout(&mut buf, Duration::from_secs(10)).is_ok() {}
        // `Closed` after the last message; dropping `rx` closes the consumer.
    });
    for i in 0..16u32 {
        tx.send_timeout(&[i as u8; 24], Duration::from_secs(10))
            .unwrap();
    }
    let r = tx.close(Duration::from_secs(10));
    reader.join().unwrap();
    match r {
        Ok(()) => false,
        Err(CloseError::Unconsumed { .. }) => true,
        Err(e) => panic!("{e}"),
    }
}

/// A socket pair standing in for the link to a peer process: dropping `.1` is the peer's
/// death as the ring's watch fd sees it (POLLHUP/POLLRDHUP). The real SIGKILL is the kill -9
/// suite's (pending: handshake).
fn peer_link() -> (Arc<OwnedFd>, OwnedFd) {
    use rustix::net::{AddressFamily, SocketFlags, SocketType, socketpair};
    let (a, b) = socketpair(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )
    .expect("socketpair");
    (Arc::new(a), b)
}

#[test]
fn e4_a_sleeping_consumer_whose_peer_goes_gets_what_was_committed_then_peer_gone() {
    deadline(10, "E4", || {
        let (ring, _seg) = ring(4096, WaitStrategy::Block);
        let (mut tx, mut rx) = ends(&ring);
        let (watch, peer) = peer_link();
        rx.watch_peer(Some(watch)).unwrap();
        tx.try_send(b"last words").unwrap();
        // The peer dies without closing the ring: its state word still says active (`tx`
        // lives on, unused); only the watch fd tells.
        let mut buf = Vec::new();
        rx.recv_timeout(&mut buf, Duration::from_secs(1)).unwrap();
        assert_eq!(buf, b"last words");
        let sleeper = std::thread::spawn(move || {
            let r = rx.recv_timeout(&mut buf, Duration::from_secs(5));
            (r.map(|_| ()), Instant::now())
        });
        std::thread::sleep(Duration::from_millis(50));
        let died = Instant::now();
        drop(peer);
        let (r, woke) = sleeper.join().unwrap();
        assert!(
            matches!(r, Err(RecvTimeoutError::Failed(RecvError::PeerGone))),
            "{r:?}"
        );
        let took = woke.duration_since(died);
        assert!(took < Duration::from_millis(100), "woken after {took:?}");
    });
}

#[test]
fn l5_a_producer_blocked_on_a_full_ring_whose_peer_goes_fails_with_peer_gone() {
    deadline(10, "L5", || {
        let (ring, _seg) = ring(64, WaitStrategy::Block);
        let (mut tx, _rx) = ends(&ring);
        let (watch, peer) = peer_link();
        tx.watch_peer(Some(watch)).unwrap();
        while tx.try_send(&[0; 16]).is_ok() {}
        // The consumer's process dies without closing: `_rx` lives on, unused, so the state
        // word still says active; only the watch fd tells.
        let writer = std::thread::spawn(move || tx.send_timeout(&[0; 16], Duration::from_secs(5)));
        std::thread::sleep(Duration::from_millis(50));
        drop(peer);
        match writer.join().unwrap() {
            Err(shmpipe_ring::SendTimeoutError::Failed(SendError::PeerGone)) => {}
            other => panic!("{other:?}"),
        }
    });
}

/// A side that armed for an event loop and then went away must not leave its waiting flag
/// set: nobody will sleep on it again, yet the other side would ring on every batch for the
/// rest of the stream (a syscall each). Close and drop clear it; a flag that survived them
/// would make the consumer ring on every release (docs/testing.md, ring bug 2).
#[test]
fn a_producer_closed_after_arm_leaves_no_waiting_flag() {
    deadline(10, "arm then close", || {
        for close in [false, true] {
            let (ring, seg) = ring(64, WaitStrategy::Spin);
            let (mut tx, mut rx) = ends(&ring);
            while tx.try_send(&[0; 16]).is_ok() {}
            assert!(!tx.arm(16).unwrap(), "full: arm says wait");
            assert_ne!(seg.producer_word() & state::WAITING, 0, "arm sets the flag");
            if close {
                let r = tx.close(Duration::ZERO);
                assert!(matches!(r, Err(CloseError::Timeout { .. })), "{r:?}");
            } else {
                drop(tx);
            }
            assert_eq!(
                seg.producer_word() & !state::MEMBARRIER,
                state::CLOSED,
                "flag left set (close: {close})"
            );
            let mut buf = Vec::new();
            while rx.try_recv(&mut buf).is_ok() {}
            assert_eq!(
                rx.stats().wakeups_sent,
                0,
                "wake-ups sent to a closed producer (close: {close})"
            );
        }
    });
}

/// The consumer's side of the same: a consumer that armed and was dropped clears its flag.
#[test]
fn a_consumer_dropped_after_arm_leaves_no_waiting_flag() {
    let (ring, seg) = ring(64, WaitStrategy::Spin);
    let (_tx, mut rx) = ends(&ring);
    assert!(!rx.arm().unwrap(), "empty: arm says wait");
    assert_ne!(seg.consumer_word() & state::WAITING, 0, "arm sets the flag");
    drop(rx);
    assert_eq!(
        seg.consumer_word() & !state::MEMBARRIER,
        state::CLOSED,
        "flag left set"
    );
}

/// `send_all` stops at the first message it cannot send and has sent exactly the ones
/// before it (its documented contract), in one batch.
#[test]
fn send_all_sends_exactly_the_messages_before_a_refused_one() {
    let (ring, _seg) = ring(4096, WaitStrategy::Spin);
    let (mut tx, mut rx) = ends(&ring);
    let max = tx.max_message();
    let too_big = vec![7u8; max + 1];
    let msgs: [&[u8]; 4] = [b"one", b"two", &too_big, b"never"];
    assert!(matches!(
        tx.send_all(&msgs),
        Err(SendError::TooLarge { len, .. }) if len == max + 1
    ));
    let mut buf = Vec::new();
    for want in [&b"one"[..], b"two"] {
        rx.try_recv(&mut buf).unwrap();
        assert_eq!(buf, want);
    }
    assert!(matches!(rx.try_recv(&mut buf), Err(TryRecvError::Empty)));
    // Not sticky: the producer goes on.
    tx.send_all(&[b"after"]).unwrap();
    rx.try_recv(&mut buf).unwrap();
    assert_eq!(buf, b"after");
}

/// Timeouts too large to add to `Instant::now()` mean "no timeout", on both ends and in
/// `close`, and never overflow.
#[test]
fn huge_timeouts_wait_without_overflowing() {
    deadline(10, "huge timeouts", || {
        for wait in [WaitStrategy::Block, WaitStrategy::Spin] {
            let (ring, _seg) = ring(64, wait);
            let (mut tx, mut rx) = ends(&ring);
            while tx.try_send(&[1; 16]).is_ok() {}
            let reader = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(20));
                let mut buf = Vec::new();
                let mut n = 0;
                while rx.recv_timeout(&mut buf, Duration::MAX).is_ok() {
                    n += 1;
                }
                n
            });
            tx.send_timeout(&[2; 16], Duration::MAX).unwrap();
            tx.close(Duration::MAX).unwrap();
            assert!(reader.join().unwrap() >= 3);
        }
    });
}

/// `close(timeout)` with a timeout too large to add to `Instant::now()` waits as long as it
/// takes, like `send_timeout` and `recv_timeout` do. A `close` that computed
/// `deadline(timeout).or(Some(Instant::now()))` would return `Timeout` at once
/// (docs/testing.md, ring bug 3).
#[test]
fn close_with_a_huge_timeout_waits_for_the_consumer() {
    deadline(10, "close(MAX)", || {
        for wait in [WaitStrategy::Block, WaitStrategy::Spin] {
            let (ring, _seg) = ring(4096, wait);
            let (mut tx, mut rx) = ends(&ring);
            tx.try_send(b"read me first").unwrap();
            let reader = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                let mut buf = Vec::new();
                rx.recv_timeout(&mut buf, Duration::from_secs(5)).unwrap();
                rx
            });
            let t = Instant::now();
            let r = tx.close(Duration::MAX);
            let waited = t.elapsed();
            drop(reader.join().unwrap());
            assert!(r.is_ok(), "close(Duration::MAX) with {wait:?}: {r:?}");
            assert!(
                waited >= Duration::from_millis(40),
                "returned after {waited:?}"
            );
        }
    });
}

/// E2 in the other direction: the peer saturates an eventfd it attached to its own waiter
/// (the one our producer sleeps on). Its wake-ups stop; the consumer's real ones still reach
/// a producer blocked on a full ring, message after message.
#[test]
fn e2_a_saturated_counter_on_the_waiter_we_sleep_on_does_not_stop_real_wakeups() {
    deadline(20, "E2 space-ready", || {
        let (ring, _seg) = ring(64, WaitStrategy::Block);
        let Apart {
            mut tx,
            mut rx,
            space_waiter,
            ..
        } = claim_apart(&ring).expect("claim");
        let full = Extra::attach(&space_waiter, Edge::Triggered);
        rustix::io::write(&full.fd, &0xffff_ffff_ffff_fffeu64.to_ne_bytes()).unwrap();
        let reader = std::thread::spawn(move || {
            let (mut buf, mut scratch) = (Vec::new(), Vec::new());
            for seq in 0..500u64 {
                rx.recv_timeout(&mut buf, Duration::from_secs(5)).unwrap();
                assert!(check(seq, &buf, &mut scratch), "message {seq}");
            }
        });
        let t = Instant::now();
        for seq in 0..500u64 {
            tx.send_timeout(&message(seq, 16), Duration::from_secs(5))
                .unwrap();
        }
        reader.join().unwrap();
        // About 10 ms here. Left to its 100 ms re-check (no ring reaching it), the producer
        // took 10.7 s for its ~100 sleeps.
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "{:?} for 500 messages ({:?})",
            t.elapsed(),
            tx.stats()
        );
    });
}

/// E1 from the producer's side: a peer that harvests the wake-ups on its own waiter (after
/// clearing `O_NONBLOCK`) delays a producer blocked on a full ring by at most the re-check
/// period.
#[test]
fn e1_a_peer_that_steals_space_wakeups_only_delays_the_producer() {
    deadline(20, "E1 space-ready", || {
        let (ring, _seg) = ring(64, WaitStrategy::Block);
        let Apart {
            mut tx,
            mut rx,
            space_waiter,
            ..
        } = claim_apart(&ring).expect("claim");
        let stop = Arc::new(AtomicBool::new(false));
        let thief = steal_wakeups(space_waiter, stop.clone());
        while tx.try_send(&[3; 16]).is_ok() {}
        let reader = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(30));
            // Both records: a third needs 16 bytes of padding, 24 of record and the word
            // after it, 48 in all, before the 64-byte ring has room.
            let mut buf = Vec::new();
            rx.try_recv(&mut buf).unwrap();
            rx.try_recv(&mut buf).unwrap();
            rx
        });
        let t = Instant::now();
        tx.send_timeout(&[4; 16], Duration::from_secs(5)).unwrap();
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        stop.store(true, Ordering::Relaxed);
        drop(reader.join().unwrap());
        thief.join().unwrap();
    });
}

/// A claim refused because the indices are impossible must leave the role free, as a claim
/// refused for a bad waiter does: nothing was handed out, so nothing can ever close that
/// role. `Ring::pair` promises both or neither.
#[test]
fn a_claim_refused_for_impossible_indices_leaves_the_role_free() {
    let (ring, seg) = ring(256, WaitStrategy::Spin);
    let head = seg.head();
    // A created ring is not checked again until a claim; a peer (or a stray writer) with
    // the memfd breaks the tail first.
    seg.set_tail(head + 3);
    let r = ring.pair();
    assert!(matches!(r, Err(SetupError::Corrupted(_))), "{r:?}");
    assert_eq!(seg.producer_word(), state::FREE, "producer role taken");
    assert_eq!(seg.consumer_word(), state::FREE, "consumer role taken");
    seg.set_tail(head);
    ring.pair().expect("the roles, free again");
}

/// faults.md E3 asks for bounded CPU under spurious wake-ups. A peer that keeps the waiter it
/// gave us readable (a level-triggered, always-readable fd of its own attached to it) gets
/// nothing from us but a re-check per wake-up; yet the sleeper polls that waiter
/// level-triggered, so every poll returns at once and it spins until its timeout. Counted
/// by the handles' `sleeps`: a sleeper woken for nothing should sleep a few times per
/// 100 ms re-check period, not tens of thousands. (The handshake suite's
/// `e3_a_waiter_kept_readable_does_not_make_us_spin` shows the CPU time it costs.)
#[test]
fn e3_a_waiter_kept_readable_does_not_make_the_sleepers_spin() {
    deadline(10, "E3 spin", || {
        let (ring, _seg) = ring(64, WaitStrategy::Block);
        let Apart {
            mut tx,
            mut rx,
            data_waiter,
            space_waiter,
        } = claim_apart(&ring).expect("claim");
        let kept = [
            Extra::attach(&data_waiter, Edge::Level),
            Extra::attach(&space_waiter, Edge::Level),
        ];
        kept.iter().for_each(Extra::poke);
        let short = Duration::from_millis(200);
        let mut buf = Vec::new();
        let r = rx.recv_timeout(&mut buf, short);
        assert!(matches!(r, Err(RecvTimeoutError::Timeout)), "{r:?}");
        while tx.try_send(&[0; 16]).is_ok() {}
        let r = tx.send_timeout(&[0; 16], short);
        assert!(matches!(r, Err(SendTimeoutError::Timeout)), "{r:?}");
        let (rs, ts) = (rx.stats().sleeps, tx.stats().sleeps);
        assert!(
            rs <= 20 && ts <= 20,
            "{rs} consumer and {ts} producer sleeps in {short:?} each"
        );
    });
}

/// docs/protocol.md §1.3 and §1.6: a producer closing with a timeout sets WAITING in its
/// state word next to state 2 while it waits for the consumer to confirm; a consumer that
/// then finds nothing at its index must ring it and report the end of the stream (the
/// producer is closed, whatever its flags). Found by this suite's reference consumers: the
/// ring's consumer takes a closed producer with WAITING set for an open one (its
/// `PeerWord::learn` answers `Waiting` before `Closed`), so `try_recv` says `Empty` after
/// the last message while `arm` says ready, and a consumer blocked in `recv` learns of the
/// close only at its next 100 ms re-check, as the second half shows with an honest producer.
#[test]
fn a_consumer_sees_the_end_of_the_stream_while_the_closed_producer_waits() {
    deadline(20, "closed and waiting", || {
        // The state word as a closing producer leaves it while it waits.
        let (r, seg) = ring(4096, WaitStrategy::Spin);
        let (mut tx, mut rx) = ends(&r);
        tx.try_send(b"last").unwrap();
        drop(tx);
        let mut buf = Vec::new();
        rx.try_recv(&mut buf).unwrap();
        seg.set_producer_word(seg.producer_word() | state::WAITING);
        assert!(rx.arm().unwrap(), "arm: the end of the stream is ready");
        let r = rx.try_recv(&mut buf);
        assert!(
            matches!(r, Err(TryRecvError::Failed(RecvError::Closed))),
            "closed producer with WAITING set: {r:?}"
        );

        // An honest producer asleep in `close` while a blocked consumer reads the last
        // message: the consumer's `Closed` must not wait for its 100 ms re-check.
        let mut late = Vec::new();
        for _ in 0..5 {
            let (r, _seg) = ring(4096, WaitStrategy::Block);
            let (mut tx, mut rx) = ends(&r);
            tx.try_send(b"last").unwrap();
            let reader = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(20)); // `close` is asleep by now
                let mut buf = Vec::new();
                rx.recv(&mut buf).unwrap();
                let r = rx.recv(&mut buf);
                (r.map(|_| ()), Instant::now())
            });
            tx.close(Duration::from_secs(5))
                .expect("everything was consumed");
            let closed = Instant::now();
            let (r, ended) = reader.join().unwrap();
            assert!(matches!(r, Err(RecvError::Closed)), "{r:?}");
            late.push(ended.saturating_duration_since(closed));
        }
        assert!(
            late.iter().all(|d| *d < Duration::from_millis(50)),
            "Closed seen this long after close returned: {late:?}"
        );
    });
}

/// `a_state_word_outside_the_protocol_is_corruption_for_the_other_side` for the word with
/// every bit set, written before the reader has seen the real word. Found by this suite:
/// the ring's `PeerWord` starts with `ok = u32::MAX` as "not seen yet", so that value is
/// taken for the peer's usual word and never checked: the consumer answers `Empty` for ever
/// and the producer sends on, where docs/protocol.md §1.6 has both reject the word.
#[test]
fn a_state_word_of_all_ones_is_corruption_too() {
    deadline(10, "state word u32::MAX", || {
        let (r, seg) = ring(4096, WaitStrategy::Spin);
        let (mut tx, mut rx) = ends(&r);
        seg.set_producer_word(u32::MAX);
        seg.set_consumer_word(u32::MAX);
        let got = rx.try_recv(&mut Vec::new());
        let sent = tx.try_send(b"x");
        let consumer_ok = matches!(
            got,
            Err(TryRecvError::Failed(RecvError::Corrupted(
                Corruption::State {
                    side: "producer",
                    word: u32::MAX
                }
            )))
        );
        let producer_ok = matches!(
            sent,
            Err(TrySendError::Failed(SendError::Corrupted(
                Corruption::State {
                    side: "consumer",
                    word: u32::MAX
                }
            )))
        );
        assert!(
            consumer_ok && producer_ok,
            "consumer answered {got:?}, producer {sent:?}"
        );
    });
}

/// docs/protocol.md §1.6: a release loads the producer's state word, and one outside §1.3 is
/// rejected: the consumer reports `State` and stops, handing over nothing more. Found by this
/// suite's reference consumers; two ways the ring's consumer goes on after it has seen the
/// garbage (and set its sticky error):
/// - in a long `try_drain`, the release every quarter ring finds it, but the drain's fast
///   loop keeps handing over messages up to its `max` or the ring's end (here 6 messages
///   where the quarter-ring release comes after the 3rd);
/// - after padding, the release made on skipping it finds it, but the general path goes on
///   to the record after the padding and hands it over (or reports that record's corruption
///   instead, if it has one).
#[test]
fn a_consumer_that_rejects_the_producers_state_word_hands_over_nothing_more() {
    deadline(10, "reject, then stop", || {
        // A long drain: six 24-byte records in a 256-byte ring (quarter: 64 bytes).
        let (r, seg) = ring(256, WaitStrategy::Spin);
        let (mut tx, mut rx) = ends(&r);
        for seq in 0..6 {
            tx.try_send(&message(seq, 16)).unwrap();
        }
        seg.set_producer_word(3);
        let mut n = 0;
        let first = rx.try_drain(usize::MAX, |_| n += 1);
        let then = rx.try_drain(usize::MAX, |_| n += 1);
        let drained = format!("{first:?} then {then:?}: {n} messages");

        // Padding: a 48-byte record at 192 (held: 48), padding at 240 (held: 64, a quarter:
        // released), then a record at 0.
        let cfg = Config::new()
            .capacity(256)
            .start_index(192)
            .wait(WaitStrategy::Spin);
        let r = Ring::create(&cfg).unwrap();
        let seg = Segment::new(r.memfd(), 256);
        let (mut tx, mut rx) = ends(&r);
        tx.try_send(&[1; 40]).unwrap();
        tx.try_send(&[2; 24]).unwrap();
        seg.set_producer_word(3);
        let mut buf = Vec::new();
        rx.try_recv(&mut buf).unwrap();
        assert_eq!(buf, [1; 40]);
        let after_padding = rx.try_recv(&mut buf);

        let want = Corruption::State {
            side: "producer",
            word: 3,
        };
        let long_ok = n == 3 && first.is_ok() && then.is_err();
        let padding_ok = matches!(
            after_padding,
            Err(TryRecvError::Failed(RecvError::Corrupted(c))) if c == want
        );
        assert!(
            long_ok && padding_ok,
            "expected 3 messages then {want}, and {want} after the padding; got, long drain: \
             {drained}; after the padding: {after_padding:?}"
        );
    });
}
