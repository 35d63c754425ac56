//! What the typed layer costs over raw bytes, for one 64-byte struct per message.
//!
//! - `typed/one-thread-64`: one thread sends and receives over one ring, so nothing crosses
//!   cores and the difference between the cells is the code path: `bytes` (`try_send` of the
//!   struct's bytes, `try_recv` into a vector), `value` (`try_send_value`, `try_recv_value`:
//!   the same copy in, one copy out into a local struct), `grant` (`try_reserve_value`,
//!   `write`, `commit`), `serde` (`try_send_serde` of a serde struct with the same fields,
//!   postcard, `try_recv_serde`).
//! - `typed/thr-64`: a producer and a consumer thread pinned to two CPUs, as in
//!   `inproc/thr-64`: `bytes` (`send`, `drain`), `value` (`send_value`, `recv_value` per
//!   message), `value-drain` (`send_value`, `try_drain_values`, spinning while empty),
//!   `serde` (`send_serde`, `recv_serde`).
//!
//! Every message is checked on the consumer: the received struct (or its bytes) equals the
//! one made for its sequence number.
//!
//! `cargo bench -p shmpipe-bench --bench typed`

use std::sync::Barrier;
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, Throughput, criterion_group, criterion_main};
use serde::{Deserialize, Serialize};
use shmpipe_ring::bytemuck::{self, Pod, Zeroable};
use shmpipe_ring::{Config, Consumer, Producer, RecvValueError, TryRecvError, channel};

const CAPACITY: usize = 1 << 20;

/// The plain-old-data message: 64 bytes, one cache line.
#[derive(Debug, Clone, Copy, PartialEq, Pod, Zeroable)]
#[bytemuck(crate = "shmpipe_ring::bytemuck")]
#[repr(C)]
struct Msg {
    seq: u64,
    body: [u64; 7],
}

/// The same fields for serde: postcard writes each u64 as a varint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct SerdeMsg {
    seq: u64,
    body: [u64; 7],
}

fn msg(seq: u64) -> Msg {
    let mut body = [0u64; 7];
    for (i, w) in body.iter_mut().enumerate() {
        *w = seq
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .rotate_left(i as u32 * 9);
    }
    Msg { seq, body }
}

fn serde_msg(seq: u64) -> SerdeMsg {
    let Msg { seq, body } = msg(seq);
    SerdeMsg { seq, body }
}

fn cpus() -> (Option<usize>, Option<usize>) {
    static CPUS: std::sync::OnceLock<(Option<usize>, Option<usize>)> = std::sync::OnceLock::new();
    *CPUS.get_or_init(|| {
        let c = shmpipe_bench::allowed_cpus();
        (c.first().copied(), c.get(1).copied())
    })
}

fn pin(cpu: Option<usize>) {
    if let Some(c) = cpu {
        shmpipe_bench::pin_to(c).expect("sched_setaffinity");
    }
}

/// One thread, one ring: the code path of each API with nothing crossing cores.
fn single_thread(c: &mut Criterion) {
    let mut g = c.benchmark_group("typed/one-thread-64");
    g.throughput(Throughput::Elements(1));
    let (mut p, mut c) = channel(&Config::new().capacity(CAPACITY)).expect("ring");
    let mut seq = 0u64;
    let mut out = Vec::with_capacity(64);
    g.bench_function("bytes", |b| {
        b.iter(|| {
            let m = msg(seq);
            p.try_send(bytemuck::bytes_of(&m)).expect("room");
            c.try_recv(&mut out).expect("a message");
            assert!(out == bytemuck::bytes_of(&m), "VERIFICATION FAILED");
            seq += 1;
        })
    });
    g.bench_function("value", |b| {
        b.iter(|| {
            let m = msg(seq);
            p.try_send_value(&m).expect("room");
            let got: Msg = c.try_recv_value().expect("a value");
            assert!(got == m, "VERIFICATION FAILED");
            seq += 1;
        })
    });
    g.bench_function("grant", |b| {
        b.iter(|| {
            let m = msg(seq);
            let mut grant = p.try_reserve_value::<Msg>().expect("room");
            grant.write(&m);
            grant.commit().expect("commit");
            let got: Msg = c.try_recv_value().expect("a value");
            assert!(got == m, "VERIFICATION FAILED");
            seq += 1;
        })
    });
    g.bench_function("serde", |b| {
        b.iter(|| {
            let m = serde_msg(seq);
            p.try_send_serde(&m).expect("room");
            let got: SerdeMsg = c.try_recv_serde().expect("a value");
            assert!(got == m, "VERIFICATION FAILED");
            seq += 1;
        })
    });
    g.finish();
}

/// How a two-thread cell sends and receives.
#[derive(Clone, Copy)]
enum Path {
    Bytes,
    Value,
    ValueDrain,
    Serde,
}

fn send(p: &mut Producer, path: Path, seq: u64) {
    match path {
        Path::Bytes => p.send(bytemuck::bytes_of(&msg(seq))).expect("send"),
        Path::Value | Path::ValueDrain => p.send_value(&msg(seq)).expect("send_value"),
        Path::Serde => p.send_serde(&serde_msg(seq)).expect("send_serde"),
    }
}

/// Receive `n` messages from `*next` on; returns when the last one was checked.
fn receive(c: &mut Consumer, path: Path, next: &mut u64, n: u64) -> Instant {
    let end = *next + n;
    let mut bad = 0u64;
    match path {
        Path::Bytes => {
            while *next < end {
                c.drain((end - *next) as usize, |m| {
                    bad += u64::from(m != bytemuck::bytes_of(&msg(*next)));
                    *next += 1;
                })
                .expect("drain");
            }
        }
        Path::Value => {
            while *next < end {
                let m: Msg = c.recv_value().expect("recv_value");
                bad += u64::from(m != msg(*next));
                *next += 1;
            }
        }
        Path::ValueDrain => {
            while *next < end {
                match c.try_drain_values((end - *next) as usize, |m: Msg| {
                    bad += u64::from(m != msg(*next));
                    *next += 1;
                }) {
                    Ok(_) => {}
                    Err(RecvValueError::Recv(TryRecvError::Empty)) => std::hint::spin_loop(),
                    Err(e) => panic!("drain_values: {e}"),
                }
            }
        }
        Path::Serde => {
            while *next < end {
                let m: SerdeMsg = c.recv_serde().expect("recv_serde");
                bad += u64::from(m != serde_msg(*next));
                *next += 1;
            }
        }
    }
    let done = Instant::now();
    assert_eq!(bad, 0, "VERIFICATION FAILED: {bad} bad messages");
    done
}

/// Two pinned threads over one ring.
fn ring(g: &mut BenchmarkGroup<'_, WallTime>, name: &str, path: Path) {
    let (mut p, mut c) = channel(&Config::new().capacity(CAPACITY)).expect("ring");
    let (mut sent, mut received) = (0u64, 0u64);
    let (cpu0, cpu1) = cpus();
    g.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let barrier = Barrier::new(2);
            std::thread::scope(|s| {
                let consumer = s.spawn(|| {
                    pin(cpu1);
                    barrier.wait();
                    receive(&mut c, path, &mut received, iters)
                });
                pin(cpu0);
                barrier.wait();
                let start = Instant::now();
                for _ in 0..iters {
                    send(&mut p, path, sent);
                    sent += 1;
                }
                consumer.join().expect("consumer thread") - start
            })
        })
    });
}

fn threads(c: &mut Criterion) {
    let mut g = c.benchmark_group("typed/thr-64");
    g.throughput(Throughput::Elements(1));
    ring(&mut g, "bytes", Path::Bytes);
    ring(&mut g, "value", Path::Value);
    ring(&mut g, "value-drain", Path::ValueDrain);
    ring(&mut g, "serde", Path::Serde);
    g.finish();
}

fn config() -> Criterion {
    cpus();
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(20)
}

criterion_group! {
    name = benches;
    config = config();
    targets = single_thread, threads
}
criterion_main!(benches);
