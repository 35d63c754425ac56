//! The typed layer (ring/src/typed.rs): plain-old-data values as their bytes, through every
//! send and receive, across wraps, at alignments 8 and 16 and at sizes that are not multiples
//! of 8; messages of the wrong size (consumed and reported); zero-sized values; values too
//! large for the ring; and, with the `serde` feature, postcard round trips, malformed
//! payloads and values that do not encode. Runs under miri too (over heap memory).

mod common;

use std::mem::{offset_of, size_of};
use std::time::Duration;

use common::{deadline, scaled};
use shmpipe_ring::bytemuck::{self, Pod, Zeroable};
use shmpipe_ring::{
    Config, RecvError, RecvTimeoutError, RecvValueError, SendError, TryRecvError, TrySendError,
    channel,
};

/// Align 8, 24 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Pod, Zeroable)]
#[bytemuck(crate = "shmpipe_ring::bytemuck")]
#[repr(C)]
struct Tick {
    seq: u64,
    price: f64,
    qty: u32,
    venue: u32,
}

/// Align 16, 32 bytes: wider than the ring's 8-byte record alignment.
#[derive(Debug, Clone, Copy, PartialEq, Pod, Zeroable)]
#[bytemuck(crate = "shmpipe_ring::bytemuck")]
#[repr(C, align(16))]
struct Wide {
    id: u128,
    lo: u64,
    hi: u64,
}

/// Align 4, 12 bytes: a record with 4 bytes of padding after it.
#[derive(Debug, Clone, Copy, PartialEq, Pod, Zeroable)]
#[bytemuck(crate = "shmpipe_ring::bytemuck")]
#[repr(C)]
struct Quad {
    a: u32,
    b: u16,
    c: u16,
    d: u32,
}

/// Align 1, 13 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Pod, Zeroable)]
#[bytemuck(crate = "shmpipe_ring::bytemuck")]
#[repr(C)]
struct Odd {
    tag: [u8; 2],
    body: [u8; 11],
}

fn tick(seq: u64) -> Tick {
    Tick {
        seq,
        price: seq as f64 * 0.25,
        qty: seq as u32 ^ 0xA5A5,
        venue: (seq % 7) as u32,
    }
}

fn wide(seq: u64) -> Wide {
    Wide {
        id: u128::from(seq) << 64 | 0xDEAD_BEEF,
        lo: !seq,
        hi: seq.rotate_left(17),
    }
}

fn odd(seq: u64) -> Odd {
    let mut body = [0u8; 11];
    for (i, b) in body.iter_mut().enumerate() {
        *b = (seq as u8).wrapping_mul(31).wrapping_add(i as u8);
    }
    Odd {
        tag: (seq as u16).to_le_bytes(),
        body,
    }
}

fn quad(seq: u64) -> Quad {
    Quad {
        a: seq as u32,
        b: !seq as u16,
        c: (seq >> 3) as u16,
        d: seq as u32 ^ 0x5A5A_5A5A,
    }
}

fn small(cap: usize) -> Config {
    Config::new().capacity(cap)
}

#[test]
fn pod_values_round_trip_through_every_send_and_receive() {
    assert_eq!((size_of::<Tick>(), align_of::<Tick>()), (24, 8));
    assert_eq!((size_of::<Wide>(), align_of::<Wide>()), (32, 16));
    assert_eq!((size_of::<Quad>(), align_of::<Quad>()), (12, 4));
    assert_eq!((size_of::<Odd>(), align_of::<Odd>()), (13, 1));
    // 256 bytes: the record sizes (32, 40, 24 and 24 bytes) land at every 8-aligned position
    // and wrap with padding every few messages.
    let (mut tx, mut rx) = channel(&small(256)).unwrap();
    for seq in 0..scaled(2000) as u64 {
        match seq % 6 {
            5 => tx.send_value(&quad(seq)).unwrap(),
            0 => tx.send_value(&tick(seq)).unwrap(),
            1 => tx.try_send_value(&wide(seq)).unwrap(),
            2 => tx
                .send_value_timeout(&odd(seq), Duration::from_secs(5))
                .unwrap(),
            3 => {
                let mut g = tx.try_reserve_value::<Tick>().unwrap();
                g.write(&tick(seq));
                g.commit().unwrap();
            }
            _ => {
                let mut g = tx.reserve_value::<Wide>().unwrap();
                let w = wide(seq);
                g.write_at(offset_of!(Wide, hi), &w.hi);
                g.write_at(offset_of!(Wide, id), &w.id);
                g.write_at(offset_of!(Wide, lo), &w.lo);
                g.commit().unwrap();
            }
        }
        match seq % 6 {
            5 => assert_eq!(rx.recv_value::<Quad>().unwrap(), quad(seq)),
            0 => assert_eq!(rx.try_recv_value::<Tick>().unwrap(), tick(seq)),
            1 => assert_eq!(rx.recv_value::<Wide>().unwrap(), wide(seq)),
            2 => assert_eq!(
                rx.recv_value_timeout::<Odd>(Duration::from_secs(5))
                    .unwrap(),
                odd(seq)
            ),
            3 => {
                let mut got = Vec::new();
                assert_eq!(rx.try_drain_values(8, |t: Tick| got.push(t)).unwrap(), 1);
                assert_eq!(got, [tick(seq)]);
            }
            _ => assert_eq!(rx.try_recv_value::<Wide>().unwrap(), wide(seq)),
        }
    }
    assert!(matches!(
        rx.try_recv_value::<Tick>(),
        Err(RecvValueError::Recv(TryRecvError::Empty))
    ));
}

#[test]
fn a_value_is_exactly_its_bytes_on_the_wire() {
    let (mut tx, mut rx) = channel(&small(4096)).unwrap();
    let mut buf = Vec::new();
    tx.send_value(&odd(3)).unwrap();
    assert_eq!(rx.try_recv(&mut buf).unwrap(), 13);
    assert_eq!(buf, bytemuck::bytes_of(&odd(3)));
    // And bytes of the right length are a value, whoever sent them.
    tx.send(bytemuck::bytes_of(&wide(9))).unwrap();
    assert_eq!(rx.try_recv_value::<Wide>().unwrap(), wide(9));
}

#[test]
fn a_drain_hands_over_many_values_with_one_release() {
    let (mut tx, mut rx) = channel(&small(1 << 16)).unwrap();
    {
        let mut b = tx.batch();
        for seq in 0..100 {
            b.send(bytemuck::bytes_of(&tick(seq))).unwrap();
        }
    }
    let mut got = Vec::new();
    assert_eq!(rx.try_drain_values(64, |t: Tick| got.push(t)).unwrap(), 64);
    assert_eq!(rx.try_drain_values(64, |t: Tick| got.push(t)).unwrap(), 36);
    assert_eq!(got, (0..100).map(tick).collect::<Vec<_>>());
    assert_eq!(rx.try_drain_values(0, |_: Tick| ()).unwrap(), 0);
    assert!(matches!(
        rx.try_drain_values(8, |_: Tick| ()),
        Err(RecvValueError::Recv(TryRecvError::Empty))
    ));
    // The first drain stopped short of the end, so only the second released: one store.
    assert_eq!(rx.stats().batches, 1);
}

#[test]
fn a_message_of_the_wrong_size_is_consumed_and_reported() {
    let (mut tx, mut rx) = channel(&small(4096)).unwrap();
    tx.send(&[1; 23]).unwrap();
    tx.send_value(&tick(1)).unwrap();
    tx.send(&[2; 25]).unwrap();
    tx.send_value(&tick(2)).unwrap();
    assert!(matches!(
        rx.try_recv_value::<Tick>(),
        Err(RecvValueError::WrongSize {
            len: 23,
            expected: 24
        })
    ));
    // The stream goes on after it.
    assert_eq!(rx.try_recv_value::<Tick>().unwrap(), tick(1));
    let e = rx.recv_value::<Tick>().unwrap_err();
    assert!(
        matches!(
            e,
            RecvValueError::WrongSize {
                len: 25,
                expected: 24
            }
        ),
        "{e:?}"
    );
    assert_eq!(
        e.to_string(),
        "message of 25 bytes where a value of 24 bytes was expected"
    );
    assert_eq!(rx.recv_value::<Tick>().unwrap(), tick(2));
    assert_eq!(rx.stats().messages, 4);
}

#[test]
fn a_drain_ends_at_a_message_of_the_wrong_size() {
    let (mut tx, mut rx) = channel(&small(4096)).unwrap();
    tx.send_value(&tick(0)).unwrap();
    tx.send_value(&tick(1)).unwrap();
    tx.send_value(&wide(2)).unwrap();
    tx.send_value(&tick(3)).unwrap();
    let mut got = Vec::new();
    let r = rx.try_drain_values(10, |t: Tick| got.push(t));
    assert!(
        matches!(
            r,
            Err(RecvValueError::WrongSize {
                len: 32,
                expected: 24
            })
        ),
        "{r:?}"
    );
    // The values before it were handed over; the bad one was consumed; the one after waits.
    assert_eq!(got, [tick(0), tick(1)]);
    assert_eq!(rx.stats().messages, 3);
    assert_eq!(rx.try_drain_values(10, |t: Tick| got.push(t)).unwrap(), 1);
    assert_eq!(got, [tick(0), tick(1), tick(3)]);
}

#[test]
fn a_zero_sized_value_is_a_zero_length_message() {
    let (mut tx, mut rx) = channel(&small(4096)).unwrap();
    tx.send_value(&()).unwrap();
    tx.try_reserve_value::<()>().unwrap().commit().unwrap();
    tx.send(b"x").unwrap();
    tx.send_value(&()).unwrap();
    let mut buf = vec![9];
    assert_eq!(rx.try_recv(&mut buf).unwrap(), 0);
    rx.try_recv_value::<()>().unwrap();
    assert!(matches!(
        rx.try_recv_value::<()>(),
        Err(RecvValueError::WrongSize {
            len: 1,
            expected: 0
        })
    ));
    // And an empty message is not a non-empty value.
    assert!(matches!(
        rx.try_recv_value::<u64>(),
        Err(RecvValueError::WrongSize {
            len: 0,
            expected: 8
        })
    ));
}

#[test]
fn a_value_larger_than_the_maximum_message_is_too_large() {
    let (mut tx, mut rx) = channel(&small(4096)).unwrap();
    assert_eq!(tx.max_message(), 1024);
    let big = [7u8; 1025];
    assert!(matches!(
        tx.send_value(&big),
        Err(SendError::TooLarge {
            len: 1025,
            max: 1024
        })
    ));
    assert!(matches!(
        tx.try_send_value(&big),
        Err(TrySendError::Failed(SendError::TooLarge { len: 1025, .. }))
    ));
    assert!(matches!(
        tx.try_reserve_value::<[u8; 1025]>(),
        Err(TrySendError::Failed(SendError::TooLarge { len: 1025, .. }))
    ));
    assert!(matches!(
        tx.reserve_value::<[u64; 200]>(),
        Err(SendError::TooLarge { len: 1600, .. })
    ));
    // The largest that fits goes through.
    tx.send_value(&[7u8; 1024]).unwrap();
    assert_eq!(rx.try_recv_value::<[u8; 1024]>().unwrap(), [7u8; 1024]);
}

#[test]
fn a_dropped_value_grant_sends_nothing() {
    let (mut tx, mut rx) = channel(&small(4096)).unwrap();
    {
        let mut g = tx.reserve_value::<Tick>().unwrap();
        g.write(&tick(1));
    } // dropped without a commit
    tx.reserve_value::<Tick>().unwrap().abort();
    assert!(matches!(
        rx.try_recv_value::<Tick>(),
        Err(RecvValueError::Recv(TryRecvError::Empty))
    ));
    tx.send_value(&tick(2)).unwrap();
    assert_eq!(rx.try_recv_value::<Tick>().unwrap(), tick(2));
}

#[test]
#[should_panic(expected = "grant overflow")]
fn a_field_past_the_value_panics() {
    let (mut tx, _rx) = channel(&small(4096)).unwrap();
    let mut g = tx.reserve_value::<Tick>().unwrap();
    g.write_at(20, &0u64);
}

#[test]
fn values_stream_between_threads_until_closed() {
    let n = scaled(20_000) as u64;
    let (mut tx, mut rx) = channel(&small(1 << 12)).unwrap();
    let reader = std::thread::spawn(move || {
        let mut next = 0;
        loop {
            match rx.recv_value::<Wide>() {
                Ok(w) => {
                    assert_eq!(w, wide(next));
                    next += 1;
                }
                Err(RecvValueError::Recv(RecvError::Closed)) => return next,
                Err(e) => panic!("{e}"),
            }
        }
    });
    deadline(60, "typed stream", move || {
        for seq in 0..n {
            tx.send_value(&wide(seq)).unwrap();
        }
        tx.close(Duration::from_secs(30)).unwrap();
        assert_eq!(reader.join().unwrap(), n);
    });
}

#[test]
fn a_typed_receive_times_out_on_an_empty_ring() {
    let (_tx, mut rx) = channel(&small(4096)).unwrap();
    assert!(matches!(
        rx.recv_value_timeout::<Tick>(Duration::from_millis(1)),
        Err(RecvValueError::Recv(RecvTimeoutError::Timeout))
    ));
    assert_eq!(rx.stats().empty, 1);
}

#[cfg(feature = "serde")]
mod serde_feature {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Serialize, Serializer};
    use shmpipe_ring::postcard;
    use shmpipe_ring::{SendSerdeError, TrySendError};

    use super::*;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    enum Side {
        Buy,
        Sell { limit: Option<i64> },
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Order {
        id: u64,
        symbol: String,
        side: Side,
        fills: Vec<(u32, f64)>,
        tags: BTreeMap<String, u8>,
    }

    fn order(seq: u64) -> Order {
        Order {
            id: seq,
            symbol: format!("SYM{seq}"),
            side: if seq % 2 == 0 {
                Side::Buy
            } else {
                Side::Sell {
                    limit: (seq % 3 != 0).then_some(-(seq as i64)),
                }
            },
            fills: (0..seq % 4).map(|i| (i as u32, i as f64 / 3.0)).collect(),
            tags: (0..seq % 3).map(|i| (format!("t{i}"), i as u8)).collect(),
        }
    }

    #[test]
    fn serde_values_round_trip_in_postcard() {
        let (mut tx, mut rx) = channel(&small(1024)).unwrap();
        for seq in 0..scaled(500) as u64 {
            let o = order(seq);
            if seq % 2 == 0 {
                tx.send_serde(&o).unwrap();
            } else {
                tx.try_send_serde(&o).unwrap();
            }
            let got: Order = match seq % 3 {
                0 => rx.recv_serde().unwrap(),
                1 => rx.try_recv_serde().unwrap(),
                _ => rx.recv_serde_timeout(Duration::from_secs(5)).unwrap(),
            };
            assert_eq!(got, o);
        }
        // Compact: the bytes are postcard's, nothing added.
        let mut buf = Vec::new();
        tx.send_serde(&order(5)).unwrap();
        rx.try_recv(&mut buf).unwrap();
        assert_eq!(buf, postcard::to_allocvec(&order(5)).unwrap());
        // Unsized values encode too.
        tx.send_serde("text").unwrap();
        assert_eq!(rx.try_recv_serde::<String>().unwrap(), "text");
        assert!(matches!(
            rx.try_recv_serde::<Order>(),
            Err(RecvValueError::Recv(TryRecvError::Empty))
        ));
    }

    #[test]
    fn a_malformed_payload_is_a_decode_error_and_is_consumed() {
        let (mut tx, mut rx) = channel(&small(4096)).unwrap();
        let good = postcard::to_allocvec(&order(7)).unwrap();
        let cases: [(&[u8], postcard::Error); 5] = [
            // Cut short: the symbol's length says more bytes follow than the message has.
            (
                &good[..good.len() - 3],
                postcard::Error::DeserializeUnexpectedEnd,
            ),
            // A varint that never ends.
            (&[0xFF; 12], postcard::Error::DeserializeBadVarint),
            // id 1, a 2-byte symbol that is not UTF-8.
            (&[1, 2, 0xC3, 0x28], postcard::Error::DeserializeBadUtf8),
            // id 1, symbol "", side 9: no such variant (serde's derive reports it).
            (&[1, 0, 9], postcard::Error::SerdeDeCustom),
            // A whole order, then a byte more.
            (
                &[good.as_slice(), &[0]].concat(),
                postcard::Error::DeserializeBadEncoding,
            ),
        ];
        for (bytes, _) in &cases {
            tx.send(bytes).unwrap();
            tx.send_serde(&order(8)).unwrap();
        }
        for (bytes, want) in cases {
            match rx.try_recv_serde::<Order>() {
                Err(RecvValueError::Decode { len, source }) => {
                    assert_eq!((len, source), (bytes.len(), want));
                }
                other => panic!("{bytes:?}: {other:?}"),
            }
            // Consumed: the next message is the good one after it.
            assert_eq!(rx.recv_serde::<Order>().unwrap(), order(8));
        }
    }

    /// A value whose `Serialize` fails.
    struct Unencodable;

    impl Serialize for Unencodable {
        fn serialize<S: Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
            Err(serde::ser::Error::custom("no"))
        }
    }

    #[test]
    fn a_value_that_does_not_encode_sends_nothing() {
        let (mut tx, mut rx) = channel(&small(4096)).unwrap();
        assert!(matches!(
            tx.send_serde(&Unencodable),
            Err(SendSerdeError::Encode(postcard::Error::SerdeSerCustom))
        ));
        assert!(matches!(
            tx.try_send_serde(&Unencodable),
            Err(SendSerdeError::Encode(_))
        ));
        // The producer's buffer survives the failure.
        tx.send_serde(&order(1)).unwrap();
        assert_eq!(rx.try_recv_serde::<Order>().unwrap(), order(1));
        assert!(rx.try_recv(&mut Vec::new()).is_err());
    }

    #[test]
    fn an_encoding_longer_than_the_maximum_message_is_too_large() {
        let (mut tx, mut rx) = channel(&small(4096)).unwrap();
        // A 1022-byte vector is 2 bytes of length and 1022 of data: 1024, the maximum.
        tx.send_serde(&vec![1u8; 1022]).unwrap();
        assert_eq!(rx.try_recv_serde::<Vec<u8>>().unwrap(), vec![1u8; 1022]);
        assert!(matches!(
            tx.send_serde(&vec![1u8; 1023]),
            Err(SendSerdeError::Send(SendError::TooLarge {
                len: 1025,
                max: 1024
            }))
        ));
        assert!(matches!(
            tx.try_send_serde(&vec![1u8; 4000]),
            Err(SendSerdeError::Send(TrySendError::Failed(
                SendError::TooLarge { len: 4002, .. }
            )))
        ));
        assert!(rx.try_recv(&mut Vec::new()).is_err());
    }

    #[test]
    fn serde_values_stream_between_threads_until_closed() {
        let n = scaled(5_000) as u64;
        let (mut tx, mut rx) = channel(&small(1 << 12)).unwrap();
        let reader = std::thread::spawn(move || {
            let mut next = 0;
            loop {
                match rx.recv_serde::<Order>() {
                    Ok(o) => {
                        assert_eq!(o, order(next));
                        next += 1;
                    }
                    Err(RecvValueError::Recv(RecvError::Closed)) => return next,
                    Err(e) => panic!("{e}"),
                }
            }
        });
        deadline(60, "serde stream", move || {
            for seq in 0..n {
                tx.send_serde(&order(seq)).unwrap();
            }
            tx.close(Duration::from_secs(30)).unwrap();
            assert_eq!(reader.join().unwrap(), n);
        });
    }
}
