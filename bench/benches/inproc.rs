//! In-process criterion benches: one shmpipe ring between two threads pinned to two CPUs, by
//! message size and batch size (messages per publication: 1, i.e. `send` per message, then
//! 8, 64 and 512 through `batch()`), against crossbeam-channel's bounded channel between the
//! same two threads, and a single-thread memcpy as the ceiling for large messages. Every
//! message is checked byte by byte on the consumer, the same check `shmpipe bench` uses.
//! `inproc/pingpong` decomposes a cross-core round trip (one line, two lines, two lines and
//! fences); `inproc/one-thread-64` is the code path with nothing crossing cores;
//! `inproc/payload-65536` is what writing and checking a 64 KiB message costs one core.
//!
//! `cargo bench -p shmpipe-bench --bench inproc`

use std::hint::black_box;
use std::sync::Barrier;
use std::sync::atomic::{AtomicU64, Ordering, fence};
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, Throughput, criterion_group, criterion_main};
use shmpipe_bench::payload::Pattern;
use shmpipe_bench::transport::{MEMCPY_BLOCK, MEMCPY_SPAN};
use shmpipe_ring::{Config, Consumer, Producer, channel};

const SIZES: [usize; 5] = [8, 64, 512, 4096, 65536];
/// Messages per publication in the batched variants (1 is `send` per message).
const BATCHES: [u64; 3] = [8, 64, 512];
const CAPACITY: usize = 1 << 20;

/// The producer's and the consumer's CPU: the first two this process may use, read once,
/// before any benchmark pins the main thread (after which it may use only one).
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

/// Producer state that lives across `iter_custom` calls.
struct Tx {
    p: Producer,
    pattern: Pattern,
    buf: Vec<u8>,
    seq: u64,
}

/// Consumer state that lives across `iter_custom` calls.
struct Rx {
    c: Consumer,
    pattern: Pattern,
    seq: u64,
}

impl Tx {
    fn run(&mut self, n: u64, batch: u64) {
        if batch <= 1 {
            for _ in 0..n {
                self.pattern.fill(self.seq, &mut self.buf);
                self.p.send(&self.buf).expect("send");
                self.seq += 1;
            }
            return;
        }
        let mut left = n;
        while left > 0 {
            let k = left.min(batch);
            let mut b = self.p.batch();
            for _ in 0..k {
                self.pattern.fill(self.seq, &mut self.buf);
                b.send(&self.buf).expect("send");
                self.seq += 1;
            }
            b.publish().expect("publish");
            left -= k;
        }
    }
}

impl Rx {
    /// Receive `n` messages; returns when the last one was checked.
    fn run(&mut self, n: u64) -> Instant {
        let mut got = 0;
        let mut bad = 0u64;
        while got < n {
            let (pattern, seq) = (&self.pattern, &mut self.seq);
            got += self
                .c
                .drain((n - got) as usize, |m| {
                    bad += u64::from(pattern.check(*seq, m).is_err());
                    *seq += 1;
                })
                .expect("drain") as u64;
        }
        let done = Instant::now();
        assert_eq!(bad, 0, "VERIFICATION FAILED: {bad} bad messages");
        done
    }
}

/// Two threads over one ring; `batch` messages per publication.
fn ring(g: &mut BenchmarkGroup<'_, WallTime>, name: &str, size: usize, batch: u64) {
    let (p, c) = channel(&Config::new().capacity(CAPACITY)).expect("ring");
    let mut tx = Tx {
        p,
        pattern: Pattern::new(size),
        buf: vec![0; size],
        seq: 0,
    };
    let mut rx = Rx {
        c,
        pattern: Pattern::new(size),
        seq: 0,
    };
    let (cpu0, cpu1) = cpus();
    g.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let barrier = Barrier::new(2);
            std::thread::scope(|s| {
                let consumer = s.spawn(|| {
                    pin(cpu1);
                    barrier.wait();
                    rx.run(iters)
                });
                pin(cpu0);
                barrier.wait();
                let start = Instant::now();
                tx.run(iters, batch);
                consumer.join().expect("consumer thread") - start
            })
        })
    });
}

/// The same two threads over crossbeam-channel's bounded channel of `[u8; N]` (no
/// allocation per message), holding as many bytes as the ring.
fn crossbeam<const N: usize>(g: &mut BenchmarkGroup<'_, WallTime>) {
    let (tx, rx) = crossbeam_channel::bounded::<[u8; N]>((CAPACITY / (N + 8)).max(1));
    let pattern = Pattern::new(N);
    let (mut sent, mut received) = (0u64, 0u64);
    let (cpu0, cpu1) = cpus();
    g.bench_function("crossbeam-bounded", |b| {
        b.iter_custom(|iters| {
            let barrier = Barrier::new(2);
            std::thread::scope(|s| {
                let consumer = s.spawn(|| {
                    pin(cpu1);
                    barrier.wait();
                    let mut bad = 0u64;
                    for _ in 0..iters {
                        let m = rx.recv().expect("recv");
                        bad += u64::from(pattern.check(received, &m).is_err());
                        received += 1;
                    }
                    let done = Instant::now();
                    assert_eq!(bad, 0, "VERIFICATION FAILED: {bad} bad messages");
                    done
                });
                pin(cpu0);
                barrier.wait();
                let start = Instant::now();
                for _ in 0..iters {
                    let mut m = [0u8; N];
                    pattern.fill(sent, &mut m);
                    tx.send(m).expect("send");
                    sent += 1;
                }
                consumer.join().expect("consumer thread") - start
            })
        })
    });
}

/// Single-thread memcpy of 64 KiB blocks over an 8 MiB buffer: one element = one block.
fn memcpy(g: &mut BenchmarkGroup<'_, WallTime>) {
    let src: Vec<u8> = (0..MEMCPY_SPAN).map(|i| (i * 7) as u8).collect();
    let mut dst = vec![1u8; MEMCPY_SPAN];
    let blocks = MEMCPY_SPAN / MEMCPY_BLOCK;
    let mut at = 0;
    g.bench_function("memcpy-64KiB-over-8MiB", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                let r = at * MEMCPY_BLOCK..(at + 1) * MEMCPY_BLOCK;
                dst[r.clone()].copy_from_slice(&src[r]);
                black_box(&mut dst);
                at = (at + 1) % blocks;
            }
            start.elapsed()
        })
    });
    // Only if it ran (a filter may skip it): the last block copied matches its source.
    if dst.iter().any(|&b| b != 1) {
        let last = (at + blocks - 1) % blocks * MEMCPY_BLOCK;
        let last = last..last + MEMCPY_BLOCK;
        assert!(
            dst[last.clone()] == src[last],
            "memcpy reference lost bytes"
        );
    }
}

fn threads(c: &mut Criterion) {
    for size in SIZES {
        let mut g = c.benchmark_group(format!("inproc/thr-{size}"));
        g.throughput(Throughput::Elements(1));
        ring(&mut g, "shmpipe", size, 1);
        for batch in BATCHES {
            ring(&mut g, &format!("shmpipe-batch{batch}"), size, batch);
        }
        match size {
            8 => crossbeam::<8>(&mut g),
            64 => crossbeam::<64>(&mut g),
            512 => crossbeam::<512>(&mut g),
            4096 => crossbeam::<4096>(&mut g),
            65536 => crossbeam::<65536>(&mut g),
            _ => unreachable!(),
        }
        if size == MEMCPY_BLOCK {
            memcpy(&mut g);
        }
        g.finish();
    }
}

/// One thread sends and receives 64-byte messages over one ring: the cost of the code path
/// with no cache line crossing cores.
fn single_thread(c: &mut Criterion) {
    let mut g = c.benchmark_group("inproc/one-thread-64");
    g.throughput(Throughput::Elements(1));
    let (mut p, mut c) = channel(&Config::new().capacity(CAPACITY)).expect("ring");
    let pattern = Pattern::new(64);
    let mut buf = vec![0u8; 64];
    let mut out = Vec::with_capacity(64);
    let mut seq = 0u64;
    g.bench_function("send+try_recv", |b| {
        b.iter(|| {
            pattern.fill(seq, &mut buf);
            p.try_send(&buf).expect("room");
            c.try_recv(&mut out).expect("a message");
            assert!(pattern.check(seq, &out).is_ok(), "VERIFICATION FAILED");
            seq += 1;
        })
    });
    g.finish();
}

/// One 128-byte line.
#[repr(align(128))]
#[derive(Default)]
struct Line(AtomicU64);

/// What a ping-pong moves each way, from the physical floor up to a ring's publication.
#[derive(Clone, Copy)]
enum Hop {
    /// One cache line: the value is the message (`spin-floor`).
    OneLine,
    /// A data line, then an index line (Release) that the peer polls (Acquire) before it
    /// reads the data: the least any index-plus-data ring moves per message.
    TwoLines,
    /// As `TwoLines`, plus what a shmpipe publication and release add: a SeqCst fence and a
    /// load of the peer's "waiting" flag after the index store, on both sides.
    TwoLinesFenced,
}

/// One direction, laid out like a ring's header: the data line, the producer's index, the
/// consumer's index, and each side's "waiting" flag (written only by a side about to sleep,
/// so never here).
#[derive(Default)]
struct Lane {
    data: Line,
    tail: Line,
    head: Line,
    consumer_waiting: Line,
    producer_waiting: Line,
}

impl Lane {
    /// The producer's side: write the message, publish it.
    #[inline]
    fn put(&self, v: u64, hop: Hop) {
        match hop {
            Hop::OneLine => self.tail.0.store(v, Ordering::Release),
            Hop::TwoLines | Hop::TwoLinesFenced => {
                self.data.0.store(v, Ordering::Relaxed);
                self.tail.0.store(v, Ordering::Release);
                if let Hop::TwoLinesFenced = hop {
                    // A shmpipe publication: fence, then look whether the consumer sleeps.
                    fence(Ordering::SeqCst);
                    black_box(self.consumer_waiting.0.load(Ordering::Relaxed));
                }
            }
        }
    }

    /// The consumer's side: spin until `v` is published, read it; false if it is wrong.
    #[inline]
    fn take(&self, v: u64, hop: Hop) -> bool {
        while self.tail.0.load(Ordering::Acquire) != v {
            std::hint::spin_loop();
        }
        match hop {
            Hop::OneLine => true,
            Hop::TwoLines => self.data.0.load(Ordering::Relaxed) == v,
            Hop::TwoLinesFenced => {
                let ok = self.data.0.load(Ordering::Relaxed) == v;
                // A shmpipe release: store the head, fence, look whether the producer sleeps.
                self.head.0.store(v, Ordering::Release);
                fence(Ordering::SeqCst);
                black_box(self.producer_waiting.0.load(Ordering::Relaxed));
                ok
            }
        }
    }
}

/// Round trips between two pinned threads: the floor under any cross-core message. Each
/// sample reports its median round trip (one clock read per round trip, included).
fn pingpong(c: &mut Criterion) {
    let mut g = c.benchmark_group("inproc/pingpong");
    let (cpu0, cpu1) = cpus();
    for (name, hop) in [
        ("one-line", Hop::OneLine),
        ("two-lines", Hop::TwoLines),
        ("two-lines+fences", Hop::TwoLinesFenced),
    ] {
        let (ping, pong) = (Lane::default(), Lane::default());
        let mut next = 1u64;
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let first = next;
                next += iters;
                // Both threads pinned and running before anyone spins: a spinner that
                // waits for a thread still queued behind it on its own CPU burns a time slice.
                let barrier = Barrier::new(2);
                std::thread::scope(|s| {
                    s.spawn(|| {
                        pin(cpu1);
                        barrier.wait();
                        for v in first..first + iters {
                            assert!(ping.take(v, hop), "ping-pong lost a value");
                            pong.put(v, hop);
                        }
                    });
                    pin(cpu0);
                    barrier.wait();
                    let mut rtts = Vec::with_capacity(iters as usize);
                    let mut last = Instant::now();
                    for v in first..first + iters {
                        ping.put(v, hop);
                        assert!(pong.take(v, hop), "ping-pong lost a value");
                        let now = Instant::now();
                        rtts.push(now - last);
                        last = now;
                    }
                    // The median round trip, times the count: one round trip preempted for
                    // milliseconds on a shared VM would otherwise outweigh thousands.
                    rtts.sort_unstable();
                    rtts[rtts.len() / 2] * iters as u32
                })
            })
        });
    }
    g.finish();
}

/// What the checks cost on one core: writing and checking one 64 KiB message (every
/// transport pays both inside its measured time; the memcpy ceiling pays neither).
fn payload(c: &mut Criterion) {
    let mut g = c.benchmark_group("inproc/payload-65536");
    g.throughput(Throughput::Bytes(MEMCPY_BLOCK as u64));
    let pattern = Pattern::new(MEMCPY_BLOCK);
    let mut buf = vec![0u8; MEMCPY_BLOCK];
    let mut seq = 0u64;
    g.bench_function("fill", |b| {
        b.iter(|| {
            pattern.fill(seq, black_box(&mut buf));
            seq += 1;
        })
    });
    pattern.fill(7, &mut buf);
    g.bench_function("check", |b| {
        b.iter(|| assert!(pattern.check(7, black_box(&buf)).is_ok()))
    });
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
    targets = threads, single_thread, pingpong, payload
}
criterion_main!(benches);
