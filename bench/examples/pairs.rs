//! shmpipe against ring-floor, in pairs: one run of each, back to back, between two threads of
//! this process pinned to CPUs 0 and 1, repeated; each pair's ratio, and their median.
//!
//! ```text
//! cargo run --release -p shmpipe-bench --example pairs -- [SIZE] [PAIRS]    (64, 12)
//! ```
//!
//! Why pairs: this VM's host moves its virtual CPUs, and the same run of the same code moves
//! 5, 25 or 100 M messages/s depending on where they land (the spin floor's round trip swings
//! between 140 and 420 ns the same way). Two runs a second apart share the placement, so
//! their ratio is steady where the figures themselves are not. Each run is 3 million
//! messages: `Sender::send` and `Receiver::drain(usize::MAX, ..)`'s ring path for shmpipe,
//! `FloorProducer::send` and `FloorConsumer::drain` for the floor.

use std::time::{Duration, Instant};

use shmpipe_ring::floor::{FloorConsumer, FloorProducer};
use shmpipe_ring::{Config, Ring, channel};

const MESSAGES: u64 = 3_000_000;

fn pin(cpu: usize) {
    let mut set = rustix::thread::CpuSet::new();
    set.set(cpu);
    rustix::thread::sched_setaffinity(None, &set).expect("sched_setaffinity");
}

fn config() -> Config {
    Config::new().capacity(1 << 20)
}

/// Messages per second of one run; `recv` runs on CPU 1 until it has them all.
fn run(
    mut send: impl FnMut(&[u8]),
    recv: impl FnOnce() -> u64 + Send + 'static,
    size: usize,
) -> f64 {
    let reader = std::thread::spawn(move || {
        pin(1);
        recv()
    });
    pin(0);
    let msg = vec![7u8; size];
    let t0 = Instant::now();
    for _ in 0..MESSAGES {
        send(&msg);
    }
    let sum = reader.join().expect("reader");
    let dt = t0.elapsed().max(Duration::from_nanos(1));
    assert_eq!(sum, MESSAGES * 7, "messages lost or changed");
    MESSAGES as f64 / dt.as_secs_f64()
}

fn shmpipe(size: usize) -> f64 {
    let (mut tx, mut rx) = channel(&config()).expect("ring");
    run(
        move |m| tx.send(m).expect("send"),
        move || {
            let (mut got, mut sum) = (0, 0u64);
            while got < MESSAGES {
                got += rx
                    .drain(usize::MAX, |m| sum += u64::from(m[0]))
                    .expect("drain") as u64;
            }
            sum
        },
        size,
    )
}

fn floor(size: usize) -> f64 {
    let ring = Ring::create(&config()).expect("ring");
    let memfd = ring.memfd().try_clone_to_owned().expect("dup");
    let mut rx = FloorConsumer::new(Ring::open(memfd, &config()).expect("open"));
    let mut tx = FloorProducer::new(ring);
    run(
        move |m| tx.send(m),
        move || {
            let (mut got, mut sum) = (0, 0u64);
            while got < MESSAGES {
                got += rx.drain(usize::MAX, |m| sum += u64::from(m[0])) as u64;
            }
            sum
        },
        size,
    )
}

fn main() {
    let mut args = std::env::args().skip(1);
    let size: usize = args.next().map_or(64, |s| s.parse().expect("a size"));
    let pairs: usize = args.next().map_or(12, |s| s.parse().expect("a count"));
    let mut ratios = Vec::new();
    for _ in 0..pairs {
        let (s, f) = (shmpipe(size), floor(size));
        ratios.push(s / f);
        println!(
            "shmpipe {:6.1} M/s  ring-floor {:6.1} M/s  ratio {:.2}",
            s / 1e6,
            f / 1e6,
            s / f
        );
    }
    ratios.sort_by(f64::total_cmp);
    println!(
        "{size}-byte messages, {pairs} pairs: median shmpipe/ring-floor {:.2}",
        ratios[ratios.len() / 2]
    );
}
