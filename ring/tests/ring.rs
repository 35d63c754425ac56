//! In-process behaviour of the ring: records, wrap, capacity edges, batching, grants, close,
//! blocking and stats. Runs under miri too (over heap memory).

mod common;

use std::time::{Duration, Instant};

use common::{check, deadline, fill, scaled, size_for};
use shmpipe_ring::{
    CloseError, Config, RecvError, RecvTimeoutError, Ring, SendError, SendTimeoutError, SetupError,
    TryRecvError, TrySendError, WaitStrategy, channel,
};

fn small(cap: usize) -> Config {
    Config::new().capacity(cap)
}

#[test]
fn messages_round_trip_with_their_exact_bytes() {
    let (mut tx, mut rx) = channel(&small(4096)).unwrap();
    let mut buf = Vec::new();
    let mut want = Vec::new();
    for (seq, len) in [0usize, 1, 7, 8, 9, 63, 64, 65, 1000, 1024]
        .into_iter()
        .enumerate()
    {
        fill(seq as u64, len, &mut want);
        tx.try_send(&want).unwrap();
        assert_eq!(rx.try_recv(&mut buf).unwrap(), len);
        assert_eq!(buf, want);
    }
    assert!(matches!(rx.try_recv(&mut buf), Err(TryRecvError::Empty)));
}

#[test]
fn the_smallest_ring_wraps_with_padding_and_keeps_order() {
    // 64 bytes, max message 16: a 16-byte message is a 24-byte record, so positions cycle
    // through every offset and a padding record is needed on most laps.
    let (mut tx, mut rx) = channel(&small(64)).unwrap();
    assert_eq!(tx.max_message(), 16);
    let mut buf = Vec::new();
    let mut want = Vec::new();
    let mut next_recv = 0u64;
    for seq in 0..scaled(5000) as u64 {
        let len = (seq % 17) as usize;
        fill(seq, len, &mut want);
        while let Err(TrySendError::Full) = tx.try_send(&want) {
            // Drain until it fits; it must, before the ring is empty.
            rx.try_recv(&mut buf).unwrap();
            check(next_recv, &buf, &mut want);
            next_recv += 1;
            fill(seq, len, &mut want);
        }
    }
    while rx.try_recv(&mut buf).is_ok() {
        check(next_recv, &buf, &mut want);
        next_recv += 1;
    }
    assert_eq!(next_recv, scaled(5000) as u64);
}

#[test]
fn max_message_is_accepted_and_one_more_byte_is_refused() {
    let (mut tx, mut rx) = channel(&small(4096)).unwrap();
    let max = tx.max_message();
    assert_eq!(max, 1024);
    let msg = vec![0xA5; max];
    let mut buf = Vec::new();
    for _ in 0..10 {
        tx.try_send(&msg).unwrap();
        assert_eq!(rx.try_recv(&mut buf).unwrap(), max);
        assert_eq!(buf, msg);
    }
    let too_big = vec![0; max + 1];
    assert!(matches!(
        tx.try_send(&too_big),
        Err(TrySendError::Failed(SendError::TooLarge { len, max: m })) if len == max + 1 && m == max
    ));
    assert!(matches!(
        tx.try_reserve(max + 1),
        Err(TrySendError::Failed(SendError::TooLarge { .. }))
    ));
    // The refusal is not sticky.
    tx.try_send(b"still fine").unwrap();
}

#[test]
fn a_configured_max_up_to_half_the_ring_always_fits_an_empty_ring() {
    let cap = 256;
    let max = cap / 2 - 8;
    let (mut tx, mut rx) = channel(&small(cap).max_message(max)).unwrap();
    let mut buf = Vec::new();
    // Walk the indices through every 8-byte offset, then send a max message from there.
    for offset in 0..cap / 8 {
        for _ in 0..offset {
            tx.try_send(b"").unwrap();
            rx.try_recv(&mut buf).unwrap();
        }
        tx.try_send(&vec![offset as u8; max]).unwrap();
        rx.try_recv(&mut buf).unwrap();
        assert_eq!(buf, vec![offset as u8; max]);
    }
}

#[test]
fn configurations_out_of_range_are_refused() {
    for cap in [0, 32, 100, 3000, (1 << 30) * 2] {
        assert!(
            matches!(Ring::create(&small(cap)), Err(SetupError::InvalidConfig(_))),
            "{cap}"
        );
    }
    assert!(matches!(
        Ring::create(&small(256).max_message(121)),
        Err(SetupError::InvalidConfig(_))
    ));
    assert!(Ring::create(&small(256).max_message(120)).is_ok());
}

#[test]
fn zero_length_messages_are_messages() {
    let (mut tx, mut rx) = channel(&small(64)).unwrap();
    let mut buf = vec![1, 2, 3];
    let mut sent = 0;
    while tx.try_send(b"").is_ok() {
        sent += 1;
    }
    assert_eq!(
        sent, 7,
        "a zero-length message takes one 8-byte record header (and one word stays free)"
    );
    for _ in 0..sent {
        assert_eq!(rx.try_recv(&mut buf).unwrap(), 0);
        assert!(buf.is_empty());
    }
    assert!(matches!(rx.try_recv(&mut buf), Err(TryRecvError::Empty)));
}

#[test]
fn a_full_ring_refuses_then_accepts_after_a_receive() {
    let (mut tx, mut rx) = channel(&small(256)).unwrap();
    let msg = [7u8; 56]; // 64-byte records: three fit (a full ring keeps one word free)
    for _ in 0..3 {
        tx.try_send(&msg).unwrap();
    }
    assert!(matches!(tx.try_send(&msg), Err(TrySendError::Full)));
    assert!(matches!(tx.try_reserve(56), Err(TrySendError::Full)));
    assert_eq!(tx.stats().full, 2);
    let mut buf = Vec::new();
    rx.try_recv(&mut buf).unwrap();
    tx.try_send(&msg).unwrap();
    assert!(matches!(tx.try_send(&msg), Err(TrySendError::Full)));
}

fn stream_across(start: u64) {
    let cfg = small(128).start_index(start);
    let (mut tx, mut rx) = channel(&cfg).unwrap();
    let (mut buf, mut want) = (Vec::new(), Vec::new());
    let (mut sent, mut got) = (0u64, 0u64);
    // Enough traffic to carry the indices well past the wrap point.
    while got < scaled(400) as u64 {
        let len = size_for(sent, tx.max_message());
        fill(sent, len, &mut want);
        match tx.try_send(&want) {
            Ok(()) => sent += 1,
            Err(TrySendError::Full) => {
                rx.try_recv(&mut buf).unwrap();
                check(got, &buf, &mut want);
                got += 1;
            }
            Err(e) => panic!("{e}"),
        }
    }
}

#[test]
fn indices_wrap_past_u64_max() {
    stream_across(u64::MAX - 200);
}

#[test]
fn indices_cross_u32_max() {
    stream_across(u64::from(u32::MAX) - 200);
}

#[test]
fn a_grant_writes_in_place_and_publishes_on_commit_only() {
    use std::io::Write;
    let (mut tx, mut rx) = channel(&small(4096)).unwrap();
    let mut buf = Vec::new();

    let mut g = tx.try_reserve(10).unwrap();
    assert_eq!(g.len(), 10);
    g.copy_from_slice(b"0123456789");
    assert!(
        matches!(rx.try_recv(&mut buf), Err(TryRecvError::Empty)),
        "visible before commit"
    );
    g.commit().unwrap();
    rx.try_recv(&mut buf).unwrap();
    assert_eq!(buf, b"0123456789");

    // Dropped without commit: nothing is published and the room comes back.
    let mut g = tx.try_reserve(100).unwrap();
    g.write_at(0, b"aborted");
    g.abort();
    assert!(matches!(rx.try_recv(&mut buf), Err(TryRecvError::Empty)));

    // io::Write and a shorter commit.
    let mut g = tx.reserve(64).unwrap();
    write!(g, "hello {}", 42).unwrap();
    let n = g.written();
    g.commit_prefix(n).unwrap();
    rx.try_recv(&mut buf).unwrap();
    assert_eq!(buf, b"hello 42");

    let mut g = tx.try_reserve(4).unwrap();
    assert_eq!(
        g.write(b"123456").unwrap(),
        4,
        "io::Write stops at the reservation's end"
    );
    g.commit().unwrap();
    rx.try_recv(&mut buf).unwrap();
    assert_eq!(buf, b"1234");
    assert_eq!(tx.stats().messages, 3);
}

#[test]
#[should_panic(expected = "grant overflow")]
fn writing_past_a_grant_panics_instead_of_corrupting() {
    let (mut tx, _rx) = channel(&small(4096)).unwrap();
    let mut g = tx.try_reserve(4).unwrap();
    g.write_at(2, b"abc");
}

#[test]
fn an_aborted_grant_that_needed_padding_leaves_nothing_behind() {
    let (mut tx, mut rx) = channel(&small(256)).unwrap();
    let mut buf = Vec::new();
    for _ in 0..3 {
        tx.try_send(&[1; 56]).unwrap(); // 64-byte records: 64 bytes left before the end
        rx.try_recv(&mut buf).unwrap();
    }
    tx.try_reserve(56).unwrap().abort(); // a 64-byte record fits exactly
    tx.try_reserve(57).unwrap().abort(); // a 72-byte record must pad and wrap
    tx.try_send(b"after").unwrap();
    rx.try_recv(&mut buf).unwrap();
    assert_eq!(buf, b"after");
    assert!(matches!(rx.try_recv(&mut buf), Err(TryRecvError::Empty)));
}

#[test]
fn a_batch_publishes_with_one_index_store() {
    let (mut tx, mut rx) = channel(&small(4096)).unwrap();
    let mut buf = Vec::new();
    {
        let mut b = tx.batch();
        for i in 0..10u8 {
            b.try_send(&[i; 20]).unwrap();
        }
        let mut g = b.try_reserve(3).unwrap();
        g.copy_from_slice(b"end");
        g.commit().unwrap();
        assert_eq!(b.staged_bytes(), 10 * 32 + 16);
        assert!(
            matches!(rx.try_recv(&mut buf), Err(TryRecvError::Empty)),
            "visible before publish"
        );
    }
    assert_eq!(tx.stats().batches, 1);
    assert_eq!(tx.stats().messages, 11);
    let mut n = 0;
    let got = rx
        .try_drain(usize::MAX, |m| {
            if n < 10 {
                assert_eq!(m, &[n as u8; 20]);
            } else {
                assert_eq!(m, b"end");
            }
            n += 1;
        })
        .unwrap();
    assert_eq!(got, 11);
    assert_eq!(
        rx.stats().batches,
        1,
        "one head release for the whole drain"
    );
}

#[test]
fn a_batch_publishes_by_itself_every_quarter_ring() {
    let (mut tx, mut rx) = channel(&small(1024)).unwrap();
    let mut b = tx.batch();
    for _ in 0..8 {
        b.try_send(&[0; 24]).unwrap(); // 32-byte records: 8 make a quarter
    }
    let mut buf = Vec::new();
    assert!(
        rx.try_recv(&mut buf).is_ok(),
        "a quarter ring staged must be published"
    );
    drop(b);
}

#[test]
fn send_all_delivers_everything_in_order_across_many_laps() {
    let cfg = small(1024);
    let (mut tx, mut rx) = channel(&cfg).unwrap();
    let msgs: Vec<Vec<u8>> = (0..scaled(2000) as u64)
        .map(|s| {
            let mut v = Vec::new();
            fill(s, size_for(s, 256), &mut v);
            v
        })
        .collect();
    let n = msgs.len();
    let reader = std::thread::spawn(move || {
        let mut scratch = Vec::new();
        let mut seq = 0u64;
        while seq < n as u64 {
            rx.drain(64, |m| {
                check(seq, m, &mut scratch);
                seq += 1;
            })
            .unwrap();
        }
        rx
    });
    deadline(60, "send_all", move || {
        tx.send_all(&msgs).unwrap();
        let rx = reader.join().unwrap();
        assert!(tx.stats().batches < n as u64, "send_all must batch");
        drop(rx);
    });
}

#[test]
fn views_lend_messages_in_place() {
    let (mut tx, mut rx) = channel(&small(4096)).unwrap();
    tx.send_all(&[b"alpha".as_slice(), b"", b"gamma"]).unwrap();
    let mut seen = Vec::new();
    rx.try_drain_views(2, |m| {
        let mut v = vec![0; m.len()];
        m.copy_to_slice(&mut v);
        assert_eq!(v, m.to_vec());
        seen.push(v);
    })
    .unwrap();
    rx.try_drain_views(10, |m| {
        // SAFETY: the producer is this crate's and is idle; nothing writes the record.
        seen.push(unsafe { m.as_slice() }.to_vec())
    })
    .unwrap();
    assert_eq!(seen, [b"alpha".to_vec(), vec![], b"gamma".to_vec()]);
}

#[test]
fn after_close_the_consumer_gets_everything_then_closed() {
    let (mut tx, mut rx) = channel(&small(4096)).unwrap();
    for i in 0..5u8 {
        tx.try_send(&[i]).unwrap();
    }
    {
        let mut b = tx.batch();
        b.try_send(b"staged").unwrap();
    }
    let mut b = tx.batch();
    b.try_send(b"staged, then dropped with the producer")
        .unwrap();
    std::mem::forget(b); // nothing published by the batch itself...
    drop(tx); // ...but dropping the producer publishes what was committed
    let mut buf = Vec::new();
    for i in 0..5u8 {
        rx.try_recv(&mut buf).unwrap();
        assert_eq!(buf, [i]);
    }
    rx.try_recv(&mut buf).unwrap();
    assert_eq!(buf, b"staged");
    rx.try_recv(&mut buf).unwrap();
    assert_eq!(buf, b"staged, then dropped with the producer");
    for _ in 0..3 {
        assert!(matches!(
            rx.try_recv(&mut buf),
            Err(TryRecvError::Failed(RecvError::Closed))
        ));
    }
    assert!(matches!(rx.recv(&mut buf), Err(RecvError::Closed)));
}

#[test]
fn close_confirms_consumption_or_says_how_much_was_left() {
    // Consumed everything: Ok.
    let (mut tx, mut rx) = channel(&small(4096)).unwrap();
    tx.send(b"x").unwrap();
    let mut buf = Vec::new();
    rx.try_recv(&mut buf).unwrap();
    tx.close(Duration::ZERO).unwrap();

    // Nothing consumed before the timeout.
    let (mut tx, _rx) = channel(&small(4096)).unwrap();
    tx.send(b"abc").unwrap();
    let t = Instant::now();
    match tx.close(Duration::from_millis(30)) {
        Err(CloseError::Timeout { unconsumed: 16 }) => {}
        other => panic!("{other:?}"),
    }
    assert!(t.elapsed() >= Duration::from_millis(30));

    // The consumer went away with data unread.
    let (mut tx, rx) = channel(&small(4096)).unwrap();
    tx.send(b"abc").unwrap();
    drop(rx);
    assert!(matches!(
        tx.close(Duration::from_secs(5)),
        Err(CloseError::Unconsumed { unconsumed: 16 })
    ));
}

#[test]
fn close_waits_for_a_slow_consumer() {
    let (mut tx, mut rx) = channel(&small(4096)).unwrap();
    for i in 0..50u32 {
        tx.send(&i.to_le_bytes()).unwrap();
    }
    let reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let mut n = 0;
        loop {
            match rx.recv_timeout(&mut buf, Duration::from_secs(10)) {
                Ok(_) => {
                    n += 1;
                    std::thread::sleep(Duration::from_micros(200));
                }
                Err(RecvTimeoutError::Failed(RecvError::Closed)) => return n,
                Err(e) => panic!("{e}"),
            }
        }
    });
    deadline(30, "close", move || {
        tx.close(Duration::from_secs(20)).unwrap();
        assert_eq!(reader.join().unwrap(), 50);
    });
}

#[test]
fn sending_to_a_dropped_consumer_fails_with_closed() {
    let (mut tx, rx) = channel(&small(4096)).unwrap();
    drop(rx);
    assert!(matches!(
        tx.try_send(b"lost?"),
        Err(TrySendError::Failed(SendError::Closed))
    ));
    assert!(matches!(tx.send(b"lost?"), Err(SendError::Closed)));
}

#[test]
fn each_role_is_claimed_once() {
    let ring = Ring::create(&small(4096)).unwrap();
    let (tx, rx) = ring.pair().unwrap();
    assert!(matches!(
        ring.pair(),
        Err(SetupError::RoleTaken("producer"))
    ));
    drop((tx, rx));
    assert!(
        matches!(ring.pair(), Err(SetupError::RoleTaken("producer"))),
        "closed is not free"
    );
}

#[cfg(not(miri))]
#[test]
fn a_pair_that_cannot_take_both_roles_takes_neither() {
    use shmpipe_ring::Bell;
    let ring = Ring::create(&small(4096)).unwrap();
    let (ours, theirs) = (Bell::new().unwrap(), Bell::new().unwrap());
    let waiter = theirs.waiter_fd().try_clone_to_owned().unwrap();
    let _rx = ring.consumer(ours, waiter).unwrap();
    assert!(matches!(
        ring.pair(),
        Err(SetupError::RoleTaken("consumer"))
    ));
    // The producer role was given back.
    let waiter = Bell::new()
        .unwrap()
        .waiter_fd()
        .try_clone_to_owned()
        .unwrap();
    ring.producer(theirs, waiter).unwrap();
}

#[test]
fn timeouts_expire_on_empty_and_full() {
    for wait in [
        WaitStrategy::Spin,
        WaitStrategy::Block,
        WaitStrategy::default(),
    ] {
        let (mut tx, mut rx) = channel(&small(64).wait(wait)).unwrap();
        let mut buf = Vec::new();
        let t = Instant::now();
        assert!(matches!(
            rx.recv_timeout(&mut buf, Duration::from_millis(20)),
            Err(RecvTimeoutError::Timeout)
        ));
        assert!(t.elapsed() >= Duration::from_millis(20), "{wait:?}");
        while tx.try_send(&[0; 16]).is_ok() {}
        let t = Instant::now();
        assert!(matches!(
            tx.send_timeout(&[0; 16], Duration::from_millis(20)),
            Err(SendTimeoutError::Timeout)
        ));
        assert!(t.elapsed() >= Duration::from_millis(20), "{wait:?}");
        assert!(matches!(rx.drain_timeout(1, Duration::ZERO, |_| {}), Ok(1)));
    }
}

#[test]
fn a_blocked_consumer_wakes_when_the_producer_closes() {
    let (tx, mut rx) = channel(&small(4096).wait(WaitStrategy::Block)).unwrap();
    let reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        rx.recv(&mut buf).map(|_| ()).unwrap_err()
    });
    deadline(10, "blocked consumer", move || {
        std::thread::sleep(Duration::from_millis(20));
        drop(tx);
        assert!(matches!(reader.join().unwrap(), RecvError::Closed));
    });
}

#[test]
fn a_producer_blocked_on_a_full_ring_wakes_when_the_consumer_goes() {
    let (mut tx, rx) = channel(&small(64).wait(WaitStrategy::Block)).unwrap();
    while tx.try_send(&[0; 16]).is_ok() {}
    let writer = std::thread::spawn(move || tx.send(&[0; 16]).unwrap_err());
    deadline(10, "blocked producer", move || {
        std::thread::sleep(Duration::from_millis(20));
        drop(rx);
        assert!(matches!(writer.join().unwrap(), SendError::Closed));
    });
}

fn stream(
    wait: WaitStrategy,
    cap: usize,
    count: u64,
) -> (shmpipe_ring::ProducerStats, shmpipe_ring::ConsumerStats) {
    let (mut tx, mut rx) = channel(&small(cap).wait(wait)).unwrap();
    let max = tx.max_message();
    let reader = std::thread::spawn(move || {
        let (mut buf, mut scratch) = (Vec::new(), Vec::new());
        for seq in 0..count {
            rx.recv_timeout(&mut buf, Duration::from_secs(10)).unwrap();
            check(seq, &buf, &mut scratch);
        }
        let mut buf = Vec::new();
        assert!(matches!(
            rx.recv_timeout(&mut buf, Duration::from_secs(10)),
            Err(RecvTimeoutError::Failed(RecvError::Closed))
        ));
        rx.stats()
    });
    deadline(120, "stream", move || {
        let mut msg = Vec::new();
        for seq in 0..count {
            fill(seq, size_for(seq, max), &mut msg);
            tx.send_timeout(&msg, Duration::from_secs(10)).unwrap();
        }
        let ps = tx.stats();
        tx.close(Duration::from_secs(10)).unwrap();
        (ps, reader.join().unwrap())
    })
}

#[test]
fn two_threads_stream_in_order_with_every_wait_strategy() {
    for wait in [
        WaitStrategy::Spin,
        WaitStrategy::Block,
        WaitStrategy::SpinThenBlock(Duration::from_micros(5)),
        WaitStrategy::default(),
    ] {
        for cap in [64, 1024, 1 << 16] {
            let n = scaled(20_000) as u64;
            let (ps, cs) = stream(wait, cap, n);
            assert_eq!(ps.messages, n);
            assert_eq!(cs.messages, n);
            assert_eq!(ps.bytes, cs.bytes);
            if wait == WaitStrategy::Spin {
                assert_eq!(cs.sleeps + ps.sleeps, 0, "spin never sleeps");
                assert_eq!(ps.wakeups_sent + cs.wakeups_sent, 0, "nobody to wake");
            }
            assert!(
                ps.wakeups_sent <= ps.batches,
                "at most one ring per publication"
            );
            assert!(
                cs.wakeups_sent <= cs.batches,
                "at most one ring per release"
            );
        }
    }
}

#[test]
fn stats_count_what_happened() {
    let (mut tx, mut rx) = channel(&small(4096)).unwrap();
    tx.try_send(b"12345").unwrap();
    tx.send_all(&[b"a".as_slice(), b"bc"]).unwrap();
    let ps = tx.stats();
    assert_eq!((ps.messages, ps.bytes, ps.batches), (3, 8, 2));
    assert_eq!(ps.wakeups_sent, 0, "nobody sleeps");
    let mut buf = Vec::new();
    assert!(matches!(rx.try_recv(&mut buf), Ok(5)));
    assert_eq!(rx.try_drain(10, |_| {}).unwrap(), 2);
    assert!(rx.try_recv(&mut buf).is_err());
    let cs = rx.stats();
    assert_eq!((cs.messages, cs.bytes, cs.empty), (3, 8, 1));
    // The space goes back once, when the receives found the ring empty.
    assert_eq!(cs.batches, 1, "one release per batch");
}
