//! loom models of the ring's atomics: `RUSTFLAGS="--cfg loom" cargo test -p shmpipe-ring
//! --release --test loom`. Under loom the data area is loom-tracked atomic words
//! (raw_loom.rs), payload and record headers alike, so a payload read not ordered after the
//! header word that published it can see an old value, which the content checks catch; a
//! sleeping side blocks on a loom condition variable with no timeout, so a lost wake-up is a
//! deadlock that loom reports.
//!
//! The mutants, built with `SHMPIPE_MUTANT=light`, `heavy` or `no_clear` (ring/build.rs):
//! `light` drops the progressing side's barrier, `heavy` the sleeper's (barrier.rs),
//! `no_clear` the producer's clearing of the word after each record (producer.rs). Each must
//! make a model here fail; .ci/run checks that they still do.
#![cfg(loom)]

use loom::thread;
use shmpipe_ring::layout::encode_record;
use shmpipe_ring::{Config, Consumer, Producer, RecvError, TryRecvError, WaitStrategy, channel};

/// Explore the model with at most three preemptions per execution (`LOOM_MAX_PREEMPTIONS`
/// overrides): every bug these models have found needs two. Unbounded, the suite takes
/// over ten minutes.
fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = Some(3);
    }
    builder.check(f);
}

fn config() -> Config {
    Config::new().capacity(64).wait(WaitStrategy::Block)
}

/// A producer thread that `try_send`s each message, yielding while the ring is full, and
/// hands its producer back when done.
fn spinning_producer(mut tx: Producer, msgs: Vec<Vec<u8>>) -> thread::JoinHandle<Producer> {
    thread::spawn(move || {
        for m in &msgs {
            while let Err(e) = tx.try_send(m) {
                assert!(matches!(e, shmpipe_ring::TrySendError::Full), "{e}");
                thread::yield_now();
            }
        }
        tx
    })
}

/// `try_recv` until `n` messages arrived, yielding while the ring is empty.
fn polled(rx: &mut Consumer, n: usize) -> Vec<Vec<u8>> {
    let mut buf = Vec::new();
    let mut got = Vec::new();
    while got.len() < n {
        match rx.try_recv(&mut buf) {
            Ok(_) => got.push(buf.clone()),
            Err(TryRecvError::Empty) => thread::yield_now(),
            Err(e) => panic!("{e}"),
        }
    }
    got
}

/// Publish path: a record's payload is fully visible after the consumer's Acquire load of its
/// header word, across a wrap with padding, and space released by the consumer is reused only
/// after its reads. The consumer polls (no sleeping) so every interleaving is explored.
#[test]
fn loom_publish_and_reuse() {
    model(|| {
        // 64-byte ring, max message 16. Start at 48 so the first record must pad and wrap.
        let (tx, mut rx) = channel(&config().start_index(48)).unwrap();
        let msgs = vec![
            b"abcdefghij".to_vec(),
            b"klmnopqrstuvw".to_vec(),
            b"xy".to_vec(),
        ];
        let producer = spinning_producer(tx, msgs.clone());
        assert_eq!(polled(&mut rx, 3), msgs);
        drop(producer.join().unwrap());
    });
}

/// Publication in band across a lap: the word after each record is cleared before the record
/// is published, so a consumer that catches up finds zero there, never a word of an earlier
/// lap's payload. Here that payload word is forged to be exactly the header the next lap
/// would have at that index; the mutant without the clearing takes it for a fourth message.
#[test]
fn loom_stale_payload_is_never_a_record() {
    model(|| {
        let (tx, mut rx) = channel(&config().max_message(24)).unwrap();
        // A (32 bytes at 0), B (32 at 32, once A is released), C (16 at 64 = position 0).
        // After C the consumer looks at index 80, position 16: A's payload bytes 8..16.
        let mut a = [0u8; 24];
        a[8..16].copy_from_slice(&encode_record(1, 80, 0).to_le_bytes());
        let msgs = vec![a.to_vec(), vec![2; 24], vec![3; 8]];
        let producer = spinning_producer(tx, msgs.clone());
        assert_eq!(polled(&mut rx, 3), msgs);
        let tx = producer.join().unwrap();
        let mut buf = Vec::new();
        assert!(
            matches!(rx.try_recv(&mut buf), Err(TryRecvError::Empty)),
            "a fourth message appeared"
        );
        drop(tx);
    });
}

/// Sleep/wake, consumer side: a consumer that finds the ring empty announces, re-checks and
/// sleeps; the producer's publish must wake it. The producer stays alive until the consumer
/// is done, so its close signal cannot mask a lost wake-up.
#[test]
fn loom_sleep_wake_consumer() {
    model(|| {
        let (mut tx, mut rx) = channel(&config()).unwrap();
        let consumer = thread::spawn(move || {
            let mut buf = Vec::new();
            rx.recv(&mut buf).unwrap();
            assert_eq!(buf, b"wake");
        });
        tx.try_send(b"wake").unwrap();
        consumer.join().unwrap();
        drop(tx);
    });
}

/// Sleep/wake, producer side: a producer that finds the ring full sleeps; the consumer's
/// release must wake it.
#[test]
fn loom_sleep_wake_producer() {
    model(|| {
        let (mut tx, mut rx) = channel(&config()).unwrap();
        // Fill: three 16-byte records (8-byte payloads) and the word after them.
        for _ in 0..3 {
            tx.try_send(&[1; 8]).unwrap();
        }
        let producer = thread::spawn(move || {
            tx.send(&[2; 8]).unwrap();
            tx
        });
        let mut buf = Vec::new();
        rx.try_recv(&mut buf).unwrap();
        let tx = producer.join().unwrap();
        drop(tx);
        let mut n = 0;
        while rx.try_recv(&mut buf).is_ok() {
            n += 1;
        }
        assert_eq!(n, 3);
    });
}

/// Close: a consumer asleep on an empty ring wakes when the producer closes, after it has
/// received what was sent before the close.
#[test]
fn loom_close_wakes_sleeper() {
    model(|| {
        let (mut tx, mut rx) = channel(&config()).unwrap();
        let consumer = thread::spawn(move || {
            let mut buf = Vec::new();
            rx.recv(&mut buf).unwrap();
            assert_eq!(buf, b"last");
            assert!(matches!(rx.recv(&mut buf), Err(RecvError::Closed)));
        });
        tx.try_send(b"last").unwrap();
        drop(tx);
        consumer.join().unwrap();
    });
}

/// Close confirmation: a producer closing with a timeout gets `Ok` when the consumer consumed
/// everything, even if the consumer releases its last batch and closes while the producer is
/// checking (it must re-read the head after seeing the close).
#[test]
fn loom_close_confirms_consumption() {
    model(|| {
        let (mut tx, mut rx) = channel(&config()).unwrap();
        tx.try_send(b"one").unwrap();
        tx.try_send(b"two").unwrap();
        let consumer = thread::spawn(move || {
            let mut buf = Vec::new();
            rx.try_recv(&mut buf).unwrap();
            rx.try_recv(&mut buf).unwrap();
            // Dropped here: releases the last batch, then closes.
        });
        let r = tx.close(std::time::Duration::from_secs(3600));
        assert!(r.is_ok(), "everything was consumed, yet close said {r:?}");
        consumer.join().unwrap();
    });
}
