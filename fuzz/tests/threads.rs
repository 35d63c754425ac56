//! Suite 4, threads: a producer thread and a consumer thread stream random message sizes
//! through random small rings, each side with its own random wait strategy and a random mix
//! of every send and receive call (blocking, with short timeouts that expire and are
//! retried, non-blocking spins, batches, grants, zero-copy views). Every message must arrive
//! exactly once, in order, with its bytes; a send that timed out must have written nothing
//! (it is retried, and a duplicate would show); the stream ends with `Closed` after the last
//! message. The ends are claimed with `channel`, or as two processes claim them (a bell each,
//! sleeping on a duplicate of the other's waiter), so both wake-up paths carry the streams.
//! Run under ThreadSanitizer this is also a data-race check (docs/testing.md).

use std::io::Write as _;
use std::time::Duration;

use proptest::prelude::*;
use shmpipe_fuzz::{Claim, check, deadline, fill, long_run, max_message_for, proptest_config};
use shmpipe_ring::{
    Config, RecvError, RecvTimeoutError, Ring, SendTimeoutError, TryRecvError, TrySendError,
    WaitStrategy, channel,
};

#[derive(Debug, Clone, Copy)]
enum SendApi {
    Send,
    /// `send_timeout` with this many microseconds, retried until it succeeds.
    SendTimeout(u16),
    TrySpin,
    /// `reserve_timeout`, written through `io::Write`, committed.
    Reserve(u16),
    /// This many messages staged in one batch with `Batch::send_timeout`.
    Batch(u8, u16),
    /// This many messages through `send_all`.
    SendAll(u8),
}

#[derive(Debug, Clone, Copy)]
enum RecvApi {
    /// `recv_timeout` with a long timeout.
    Recv,
    /// `recv` and `drain`, no timeout at all (the case's deadline catches a hang).
    Forever(u8),
    /// `recv_timeout` with this many microseconds, retried until a message comes.
    RecvTimeout(u16),
    TrySpin,
    Drain(u8),
    DrainTimeout(u8, u16),
    Views(u8),
}

fn wait() -> impl Strategy<Value = WaitStrategy> {
    prop_oneof![
        Just(WaitStrategy::Spin),
        Just(WaitStrategy::Block),
        (0u64..200).prop_map(|us| WaitStrategy::SpinThenBlock(Duration::from_micros(us))),
    ]
}

fn send_api() -> impl Strategy<Value = SendApi> {
    prop_oneof![
        Just(SendApi::Send),
        (0u16..3000).prop_map(SendApi::SendTimeout),
        Just(SendApi::TrySpin),
        (0u16..3000).prop_map(SendApi::Reserve),
        (1u8..16, 0u16..3000).prop_map(|(n, t)| SendApi::Batch(n, t)),
        (1u8..16).prop_map(SendApi::SendAll),
    ]
}

fn recv_api() -> impl Strategy<Value = RecvApi> {
    prop_oneof![
        Just(RecvApi::Recv),
        (0u8..8).prop_map(RecvApi::Forever),
        (0u16..3000).prop_map(RecvApi::RecvTimeout),
        Just(RecvApi::TrySpin),
        (1u8..32).prop_map(RecvApi::Drain),
        (1u8..32, 0u16..3000).prop_map(|(n, t)| RecvApi::DrainTimeout(n, t)),
        (1u8..32).prop_map(RecvApi::Views),
    ]
}

#[derive(Debug, Clone)]
struct Case {
    capacity: usize,
    max_pick: u16,
    start: u64,
    waits: (WaitStrategy, WaitStrategy),
    count: u64,
    size_seed: u64,
    sends: Vec<SendApi>,
    recvs: Vec<RecvApi>,
    close: bool,
    /// `channel` (`Ring::pair`) or two bells crossed as between two processes.
    claim: Claim,
}

fn case() -> impl Strategy<Value = Case> {
    let count = if long_run() { 50u64..5000 } else { 20u64..600 };
    (
        (6u32..=12).prop_map(|s| 1usize << s),
        any::<u16>(),
        shmpipe_fuzz::start_index(),
        (wait(), wait()),
        count,
        any::<u64>(),
        prop::collection::vec(send_api(), 1..6),
        prop::collection::vec(recv_api(), 1..6),
        any::<bool>(),
        shmpipe_fuzz::claim(),
    )
        .prop_map(
            |(capacity, max_pick, start, waits, count, size_seed, sends, recvs, close, claim)| {
                Case {
                    capacity,
                    max_pick,
                    start,
                    waits,
                    count,
                    size_seed,
                    sends,
                    recvs,
                    close,
                    claim,
                }
            },
        )
}

/// Length of message `seq`: mostly small, sometimes the maximum or anything up to it.
fn size(seed: u64, seq: u64, max: usize) -> usize {
    let r =
        (seed ^ seq.wrapping_mul(0x2545_F491_4F6C_DD1D)).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 24;
    match r % 8 {
        0 => max,
        1 => 0,
        2 | 3 => r as usize % (max + 1),
        _ => (r as usize >> 8) % 33 % (max + 1),
    }
}

fn us(t: u16) -> Duration {
    Duration::from_micros(u64::from(t))
}

fn run(c: Case) {
    let max = max_message_for(c.capacity, c.max_pick);
    let cfg = Config::new()
        .capacity(c.capacity)
        .max_message(max)
        .start_index(c.start)
        .wait(c.waits.0);
    let (mut tx, mut rx) = match c.claim {
        Claim::Pair => channel(&cfg).expect("channel"),
        Claim::Apart => {
            let ring = Ring::create(&cfg).expect("create");
            Claim::Apart.claim(&ring).expect("claim both ends")
        }
    };
    rx.set_wait(c.waits.1);
    let (count, seed) = (c.count, c.size_seed);
    let recvs = c.recvs.clone();
    let long = Duration::from_secs(20);

    let reader = std::thread::spawn(move || {
        let mut next = 0u64;
        let mut scratch = Vec::new();
        let mut buf = Vec::new();
        let mut take = |m: &[u8], next: &mut u64| {
            assert!(*next < count, "message {} after the last one", *next);
            assert_eq!(
                m.len(),
                size(seed, *next, max),
                "length of message {}",
                *next
            );
            assert!(check(*next, m, &mut scratch), "message {} corrupted", *next);
            *next += 1;
        };
        let mut i = 0;
        while next < count {
            let api = recvs[i % recvs.len()];
            i += 1;
            match api {
                RecvApi::Recv => {
                    rx.recv_timeout(&mut buf, long).expect("recv");
                    take(&buf, &mut next);
                }
                RecvApi::Forever(0) => {
                    rx.recv(&mut buf).expect("recv");
                    take(&buf, &mut next);
                }
                RecvApi::Forever(n) => {
                    let got = rx
                        .drain(usize::from(n), |m| take(m, &mut next))
                        .expect("drain");
                    assert!(got >= 1 && got <= usize::from(n));
                }
                RecvApi::RecvTimeout(t) => loop {
                    match rx.recv_timeout(&mut buf, us(t)) {
                        Ok(_) => break take(&buf, &mut next),
                        Err(RecvTimeoutError::Timeout) => {}
                        Err(e) => panic!("recv_timeout: {e}"),
                    }
                },
                RecvApi::TrySpin => loop {
                    match rx.try_recv(&mut buf) {
                        Ok(_) => break take(&buf, &mut next),
                        Err(TryRecvError::Empty) => std::thread::yield_now(),
                        Err(e) => panic!("try_recv: {e}"),
                    }
                },
                RecvApi::Drain(n) => {
                    let got = rx
                        .drain_timeout(usize::from(n), long, |m| take(m, &mut next))
                        .expect("drain");
                    assert!(got >= 1 && got <= usize::from(n));
                }
                RecvApi::DrainTimeout(n, t) => loop {
                    match rx.drain_timeout(usize::from(n), us(t), |m| take(m, &mut next)) {
                        Ok(_) => break,
                        Err(RecvTimeoutError::Timeout) => {}
                        Err(e) => panic!("drain_timeout: {e}"),
                    }
                },
                RecvApi::Views(n) => loop {
                    match rx.try_drain_views(usize::from(n), |m| take(&m.to_vec(), &mut next)) {
                        Ok(_) => break,
                        Err(TryRecvError::Empty) => std::thread::yield_now(),
                        Err(e) => panic!("try_drain_views: {e}"),
                    }
                },
            }
        }
        // The end of the stream, once the producer closes.
        match rx.recv_timeout(&mut buf, long) {
            Err(RecvTimeoutError::Failed(RecvError::Closed)) => {}
            other => panic!("after the last message: {other:?}"),
        }
        // Dropping `rx` here, while the producer may still wait in `close`, is the close race
        // (docs/testing.md): `close` must re-load the head after it sees the consumer closed.
        rx.stats()
    });

    let mut msg = Vec::new();
    let mut seq = 0u64;
    let mut i = 0;
    while seq < count {
        let api = c.sends[i % c.sends.len()];
        i += 1;
        let len = size(seed, seq, max);
        match api {
            SendApi::Send => {
                fill(seq, len, &mut msg);
                tx.send(&msg).expect("send");
                seq += 1;
            }
            SendApi::SendTimeout(t) => {
                fill(seq, len, &mut msg);
                loop {
                    match tx.send_timeout(&msg, us(t)) {
                        Ok(()) => break,
                        Err(SendTimeoutError::Timeout) => {}
                        Err(e) => panic!("send_timeout: {e}"),
                    }
                }
                seq += 1;
            }
            SendApi::TrySpin => {
                fill(seq, len, &mut msg);
                loop {
                    match tx.try_send(&msg) {
                        Ok(()) => break,
                        Err(TrySendError::Full) => std::thread::yield_now(),
                        Err(e) => panic!("try_send: {e}"),
                    }
                }
                seq += 1;
            }
            SendApi::Reserve(t) => {
                fill(seq, len, &mut msg);
                let mut g = loop {
                    match tx.reserve_timeout(len, us(t)) {
                        Ok(g) => break g,
                        Err(SendTimeoutError::Timeout) => {}
                        Err(e) => panic!("reserve_timeout: {e}"),
                    }
                };
                g.write_all(&msg).expect("write into the grant");
                g.commit().expect("commit");
                seq += 1;
            }
            SendApi::Batch(n, t) => {
                let mut b = tx.batch();
                for _ in 0..n {
                    if seq == count {
                        break;
                    }
                    fill(seq, size(seed, seq, max), &mut msg);
                    loop {
                        match b.send_timeout(&msg, us(t)) {
                            Ok(()) => break,
                            Err(SendTimeoutError::Timeout) => {}
                            Err(e) => panic!("batch send_timeout: {e}"),
                        }
                    }
                    seq += 1;
                }
            }
            SendApi::SendAll(n) => {
                let end = (seq + u64::from(n)).min(count);
                let msgs: Vec<Vec<u8>> = (seq..end)
                    .map(|s| shmpipe_fuzz::message(s, size(seed, s, max)))
                    .collect();
                tx.send_all(&msgs).expect("send_all");
                seq = end;
            }
        }
    }
    let ps = tx.stats();
    let closed = if c.close {
        tx.close(long)
    } else {
        drop(tx);
        Ok(())
    };
    // The reader's failure, if any, explains the close's.
    let cs = reader
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p));
    if let Err(e) = closed {
        panic!("close failed although the consumer read everything: {e:?} ({cs:?})");
    }
    assert_eq!(ps.messages, count);
    assert_eq!(cs.messages, count);
    assert_eq!(ps.bytes, cs.bytes);
    // The producer rings only after a publication. (The consumer also rings from an empty
    // ring when it finds the producer waiting, so its count has no such bound.)
    assert!(ps.wakeups_sent <= ps.batches, "{ps:?}");
    // The producer saw the consumer's claimed word at its first send: both announced
    // MEMBARRIER exactly when this process can sleep with one, and then it publishes with a
    // compiler fence only. (The consumer may see only the closed word, if everything fit.)
    assert_eq!(
        ps.membarrier,
        shmpipe_ring::membarrier_available(),
        "{ps:?}"
    );
    assert!(!cs.membarrier || ps.membarrier, "{cs:?}");
}

proptest! {
    #![proptest_config(proptest_config(100, "proptest-regressions/threads.txt"))]

    #[test]
    fn two_threads_deliver_everything_once_in_order(c in case()) {
        deadline(120, "two-thread case", move || run(c));
    }
}
