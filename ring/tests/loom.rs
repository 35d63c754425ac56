//! loom models of the ring's atomics: `RUSTFLAGS="--cfg loom" cargo test -p shmring-ring
//! --release --test loom`. Under loom the data area is loom-tracked memory (raw_loom.rs), so a
//! payload or record-header access not ordered by the index protocol fails the model; a
//! sleeping side blocks on a loom condition variable with no timeout, so a lost wake-up is a
//! deadlock that loom reports.
#![cfg(loom)]

use loom::thread;
use shmring_ring::{Config, RecvError, TryRecvError, WaitStrategy, channel};

fn config() -> Config {
    Config::new().capacity(64).wait(WaitStrategy::Block)
}

/// Publish path: records written before the tail's Release store are fully visible after the
/// consumer's Acquire load, across a wrap with padding, and space released by the consumer is
/// reused only after its reads. The consumer polls (no sleeping) so every interleaving of the
/// index traffic is explored.
#[test]
fn loom_publish_and_reuse() {
    loom::model(|| {
        // 64-byte ring, max message 16. Start at 40 so the second record must pad and wrap.
        let (mut tx, mut rx) = channel(&config().start_index(40)).unwrap();
        let producer = thread::spawn(move || {
            for msg in [&b"abcdefghij"[..], b"klmnopqrstuvw", b"xy"] {
                while let Err(e) = tx.try_send(msg) {
                    assert!(matches!(e, shmring_ring::TrySendError::Full), "{e}");
                    thread::yield_now();
                }
            }
        });
        let mut buf = Vec::new();
        let mut got = Vec::new();
        while got.len() < 3 {
            match rx.try_recv(&mut buf) {
                Ok(_) => got.push(buf.clone()),
                Err(TryRecvError::Empty) => thread::yield_now(),
                Err(e) => panic!("{e}"),
            }
        }
        producer.join().unwrap();
        assert_eq!(got, [&b"abcdefghij"[..], b"klmnopqrstuvw", b"xy"]);
    });
}

/// Sleep/wake, consumer side: a consumer that finds the ring empty announces, re-checks and
/// sleeps; the producer's publish must wake it. The producer stays alive until the consumer
/// is done, so its close signal cannot mask a lost wake-up.
#[test]
fn loom_sleep_wake_consumer() {
    loom::model(|| {
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
    loom::model(|| {
        let (mut tx, mut rx) = channel(&config()).unwrap();
        // Fill: 64 bytes = four 16-byte records (8-byte payloads).
        for _ in 0..4 {
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
        assert_eq!(n, 4);
    });
}

/// Close: a consumer asleep on an empty ring wakes when the producer closes, after it has
/// received what was sent before the close.
#[test]
fn loom_close_wakes_sleeper() {
    loom::model(|| {
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
    loom::model(|| {
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
