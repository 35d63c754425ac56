//! Where a 64-byte round trip goes: the same ping-pong between two pinned threads over
//! (1) a minimal ring that publishes a tail index, (2) a minimal ring whose consumer detects
//! records from their length word (no index line), and (3) shmpipe's ring used layer by layer:
//! a spin over `try_drain_views`, over `try_drain`/`try_recv` (copying), and blocking `recv`.
//! The minimal rings use shmpipe's publish protocol (Release store, SeqCst fence, load of the
//! peer's waiting flag) and nothing else.
//!
//! `cargo run --release -p shmpipe-bench --example rtt_layers [round-trips]`
//! (figures and what they decided: docs/design.md).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::*, fence};
use std::time::Instant;

use shmpipe_ring::{Config, Consumer, Producer, TryRecvError, WaitStrategy, channel};

const CAP: usize = 1 << 16;
const MSG: usize = 64;
const WORDS: usize = MSG / 8;
/// Words per record: a length word, then the payload.
const REC: usize = WORDS + 1;
const MASK: usize = CAP / 8 - 1;

fn pin(cpu: usize) {
    let mut set = rustix::thread::CpuSet::new();
    set.set(cpu);
    rustix::thread::sched_setaffinity(None, &set).expect("sched_setaffinity");
}

/// A line of its own for each shared word, as in shmpipe's header.
#[repr(align(128))]
struct Line(AtomicU64);

/// A minimal single-producer ring of u64 words; it never fills in a ping-pong.
struct Mini {
    tail: Line,
    head: Line,
    waiting: Line,
    data: Box<[AtomicU64]>,
}

impl Mini {
    fn new() -> Arc<Mini> {
        let line = || Line(AtomicU64::new(0));
        Arc::new(Mini {
            tail: line(),
            head: line(),
            waiting: line(),
            data: (0..CAP / 8).map(|_| AtomicU64::new(0)).collect(),
        })
    }

    fn word(&self, i: usize) -> &AtomicU64 {
        &self.data[i & MASK]
    }

    /// What every publish and release does after its index store.
    fn fence_and_check_waiting(&self) {
        fence(SeqCst);
        let _ = self.waiting.0.load(Relaxed);
    }
}

trait End: Send {
    fn send(&mut self, v: u64);
    fn recv(&mut self) -> u64;
}

/// (1) The consumer learns of records from the producer's tail index.
struct ByIndex {
    tx: Arc<Mini>,
    tail: u64,
    rx: Arc<Mini>,
    head: u64,
    seen: u64,
}

impl End for ByIndex {
    fn send(&mut self, v: u64) {
        let p = self.tail as usize;
        self.tx.word(p).store(MSG as u64, Relaxed);
        for i in 0..WORDS {
            self.tx.word(p + 1 + i).store(v, Relaxed);
        }
        self.tail += REC as u64;
        self.tx.tail.0.store(self.tail, Release);
        self.tx.fence_and_check_waiting();
    }

    fn recv(&mut self) -> u64 {
        while self.head == self.seen {
            self.seen = self.rx.tail.0.load(Acquire);
            if self.head == self.seen {
                std::hint::spin_loop();
            }
        }
        let p = self.head as usize;
        assert_eq!(self.rx.word(p).load(Relaxed), MSG as u64);
        let v = (0..WORDS).fold(0, |x, i| x ^ self.rx.word(p + 1 + i).load(Relaxed));
        self.head += REC as u64;
        self.rx.head.0.store(self.head, Release);
        self.rx.fence_and_check_waiting();
        v
    }
}

/// (2) The consumer polls the next record's length word; the producer writes a zero after
/// each record, then the length (Release), and publishes no tail.
struct ByLength {
    tx: Arc<Mini>,
    tail: u64,
    rx: Arc<Mini>,
    head: u64,
}

impl End for ByLength {
    fn send(&mut self, v: u64) {
        let p = self.tail as usize;
        for i in 0..WORDS {
            self.tx.word(p + 1 + i).store(v, Relaxed);
        }
        self.tx.word(p + REC).store(0, Relaxed);
        self.tx.word(p).store(MSG as u64, Release);
        self.tail += REC as u64;
        self.tx.fence_and_check_waiting();
    }

    fn recv(&mut self) -> u64 {
        let p = self.head as usize;
        while self.rx.word(p).load(Acquire) == 0 {
            std::hint::spin_loop();
        }
        let v = (0..WORDS).fold(0, |x, i| x ^ self.rx.word(p + 1 + i).load(Relaxed));
        self.head += REC as u64;
        self.rx.head.0.store(self.head, Release);
        self.rx.fence_and_check_waiting();
        v
    }
}

/// (3) shmpipe's ring, received `how`.
#[derive(Clone, Copy)]
enum How {
    Views,
    Drain,
    TryRecv,
    Recv,
}

struct Ring {
    tx: Producer,
    rx: Consumer,
    how: How,
    buf: Vec<u8>,
}

impl End for Ring {
    fn send(&mut self, v: u64) {
        self.tx.try_send(&[v as u8; MSG]).expect("send");
    }

    fn recv(&mut self) -> u64 {
        let mut x = 0;
        loop {
            let r = match self.how {
                How::Views => self.rx.try_drain_views(1, |m| {
                    let mut b = [0u8; MSG];
                    m.copy_to_slice(&mut b);
                    x = u64::from(b[0]);
                }),
                How::Drain => self.rx.try_drain(1, |m| x = u64::from(m[0])),
                How::TryRecv => self.rx.try_recv(&mut self.buf).map(|_| {
                    x = u64::from(self.buf[0]);
                    1
                }),
                How::Recv => {
                    self.rx.recv(&mut self.buf).expect("recv");
                    return u64::from(self.buf[0]);
                }
            };
            match r {
                Ok(_) => return x,
                Err(TryRecvError::Empty) => std::hint::spin_loop(),
                Err(e) => panic!("{e}"),
            }
        }
    }
}

/// Median round trip in ns over batches of 100, `n` round trips after 10% warm-up.
fn measure(n: u64, mut ours: Box<dyn End>, mut echo: Box<dyn End>) -> u64 {
    let warm = n / 10;
    let t = std::thread::spawn(move || {
        pin(1);
        for _ in 0..warm + n {
            let v = echo.recv();
            echo.send(v);
        }
    });
    pin(0);
    let mut samples = Vec::with_capacity((n / 100) as usize);
    let mut t0 = Instant::now();
    for i in 0..warm + n {
        ours.send(i);
        let _ = ours.recv();
        if i >= warm && i % 100 == 99 {
            let now = Instant::now();
            samples.push((now - t0).as_nanos() as u64 / 100);
            t0 = now;
        } else if i % 100 == 99 {
            t0 = Instant::now();
        }
    }
    t.join().expect("echo thread");
    samples.sort_unstable();
    samples[samples.len() / 2]
}

/// Our end and the echo's end.
type Pair = (Box<dyn End>, Box<dyn End>);

/// A named way to make a pair.
type Case = (&'static str, fn() -> Pair);

fn mini(by_length: bool) -> Pair {
    let (a, b) = (Mini::new(), Mini::new());
    if by_length {
        let ours = ByLength {
            tx: a.clone(),
            tail: 0,
            rx: b.clone(),
            head: 0,
        };
        (
            Box::new(ours),
            Box::new(ByLength {
                tx: b,
                tail: 0,
                rx: a,
                head: 0,
            }),
        )
    } else {
        let ours = ByIndex {
            tx: a.clone(),
            tail: 0,
            rx: b.clone(),
            head: 0,
            seen: 0,
        };
        (
            Box::new(ours),
            Box::new(ByIndex {
                tx: b,
                tail: 0,
                rx: a,
                head: 0,
                seen: 0,
            }),
        )
    }
}

fn ring(how: How) -> Pair {
    let cfg = Config::new().capacity(CAP).wait(WaitStrategy::Spin);
    let (ta, ra) = channel(&cfg).expect("ring");
    let (tb, rb) = channel(&cfg).expect("ring");
    let buf = Vec::with_capacity(MSG);
    (
        Box::new(Ring {
            tx: ta,
            rx: rb,
            how,
            buf: buf.clone(),
        }),
        Box::new(Ring {
            tx: tb,
            rx: ra,
            how,
            buf,
        }),
    )
}

fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .map_or(300_000, |s| s.parse().expect("a count"));
    println!(
        "64-byte round trip between two pinned threads, median of batches of 100 ({n} round trips, 3 runs)"
    );
    let cases: [Case; 6] = [
        ("minimal ring, tail index", || mini(false)),
        ("minimal ring, length word", || mini(true)),
        ("shmpipe, spin on try_drain_views", || ring(How::Views)),
        ("shmpipe, spin on try_drain (copy)", || ring(How::Drain)),
        ("shmpipe, spin on try_recv (copy)", || ring(How::TryRecv)),
        ("shmpipe, blocking recv (spin)", || ring(How::Recv)),
    ];
    let mut results = vec![Vec::new(); cases.len()];
    for _ in 0..3 {
        for (i, (_, make)) in cases.iter().enumerate() {
            let (ours, echo) = make();
            results[i].push(measure(n, ours, echo));
        }
    }
    for ((name, _), r) in cases.iter().zip(&results) {
        println!("{name:>36}: {:>4} ns   (runs: {r:?})", {
            let mut s = r.clone();
            s.sort_unstable();
            s[1]
        });
    }
}
