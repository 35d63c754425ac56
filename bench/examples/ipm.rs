//! Instructions per message on the ring's hot path, counted by callgrind (repeatable where
//! timings are not). One thread sends and receives 64-byte messages over one ring, so the
//! count is the code path alone, with no cache line crossing cores.
//!
//! ```text
//! cargo build --release -p shmpipe-bench --example ipm
//! valgrind --tool=callgrind --toggle-collect='*ipm_single*' --callgrind-out-file=/tmp/ipm.out \
//!     target/release/examples/ipm single 1000000
//! callgrind_annotate /tmp/ipm.out | grep 'PROGRAM TOTALS'   # Ir / 1000000 = instructions per message
//! ```
//!
//! Variants: `single` (`try_send` + `try_recv`: one publication and one release per
//! message), `drain` (`try_send` + `try_drain`, which copies the message out for its
//! closure: the per-message path of `Sender::send` and `Receiver::drain`), `batch` (64 messages staged with `batch()` and one publication, then one `drain`
//! that copies each out and releases once), `views` (as `batch`, but `try_drain_views` with a
//! copy of each message into a private buffer). For comparison, the same two loops over
//! shmem-ipc's ring of `[u8; 64]` items: `shmem-single` (one item per `send_raw` and per
//! `receive_raw`) and `shmem-batch` (64 items per call, one bulk copy each way); and
//! `crossbeam` (crossbeam-channel's bounded channel of `[u8; 64]`, `send` + `recv`; its
//! creation is counted too, a few hundred instructions in all). Only the loop
//! function is counted (`--toggle-collect='*ipm_VARIANT*'`, with `-` as `_`), so set-up and
//! warm-up are excluded.

use std::hint::black_box;

use shmem_ipc::sharedring::{Receiver, Sender};
use shmpipe_ring::floor::{FloorConsumer, FloorProducer};
use shmpipe_ring::{Config, Consumer, Producer, Ring, channel};

const SIZE: usize = 64;
const BATCH: u64 = 64;

#[inline(always)]
fn run_single(p: &mut Producer, c: &mut Consumer, n: u64) -> u64 {
    let mut msg = [0u8; SIZE];
    let mut out = Vec::with_capacity(SIZE);
    let mut sum = 0u64;
    for i in 0..n {
        msg[..8].copy_from_slice(&i.to_le_bytes());
        p.try_send(black_box(&msg)).expect("room");
        c.try_recv(&mut out).expect("a message");
        sum = sum.wrapping_add(u64::from_le_bytes(out[..8].try_into().expect("8 bytes")));
    }
    sum
}

#[inline(always)]
fn run_drain(p: &mut Producer, c: &mut Consumer, n: u64) -> u64 {
    let mut msg = [0u8; SIZE];
    let mut sum = 0u64;
    for i in 0..n {
        msg[..8].copy_from_slice(&i.to_le_bytes());
        p.try_send(black_box(&msg)).expect("room");
        c.try_drain(usize::MAX, |m| {
            sum = sum.wrapping_add(u64::from_le_bytes(m[..8].try_into().expect("8 bytes")));
        })
        .expect("a message");
    }
    sum
}

#[inline(always)]
fn run_batch(p: &mut Producer, c: &mut Consumer, n: u64) -> u64 {
    let mut msg = [0u8; SIZE];
    let mut sum = 0u64;
    let mut i = 0;
    while i < n {
        let k = BATCH.min(n - i);
        let mut b = p.batch();
        for j in i..i + k {
            msg[..8].copy_from_slice(&j.to_le_bytes());
            b.try_send(black_box(&msg)).expect("room");
        }
        b.publish().expect("publish");
        drop(b);
        let got = c
            .try_drain(k as usize, |m| {
                sum = sum.wrapping_add(u64::from_le_bytes(m[..8].try_into().expect("8 bytes")));
            })
            .expect("messages");
        assert_eq!(got as u64, k);
        i += k;
    }
    sum
}

#[inline(always)]
fn run_views(p: &mut Producer, c: &mut Consumer, n: u64) -> u64 {
    let mut msg = [0u8; SIZE];
    let mut copy = [0u8; SIZE];
    let mut sum = 0u64;
    let mut i = 0;
    while i < n {
        let k = BATCH.min(n - i);
        let mut b = p.batch();
        for j in i..i + k {
            msg[..8].copy_from_slice(&j.to_le_bytes());
            b.try_send(black_box(&msg)).expect("room");
        }
        b.publish().expect("publish");
        drop(b);
        let got = c
            .try_drain_views(k as usize, |m| {
                m.copy_to_slice(&mut copy);
                sum = sum.wrapping_add(u64::from_le_bytes(copy[..8].try_into().expect("8")));
            })
            .expect("messages");
        assert_eq!(got as u64, k);
        i += k;
    }
    sum
}

/// shmem-ipc's two ends over one ring of 64-byte items (1 MiB).
struct Shmem {
    tx: Sender<[u8; SIZE]>,
    rx: Receiver<[u8; SIZE]>,
}

impl Shmem {
    fn new() -> Shmem {
        let rx: Receiver<[u8; SIZE]> = Receiver::new((1 << 20) / SIZE).expect("shmem-ipc ring");
        let clone = |f: &std::fs::File| f.try_clone().expect("dup");
        let tx = Sender::open(
            (1 << 20) / SIZE,
            clone(rx.memfd().as_file()),
            clone(rx.empty_signal()),
            clone(rx.full_signal()),
        )
        .expect("shmem-ipc sender");
        Shmem { tx, rx }
    }

    /// Send `k` messages from `msgs` with one `send_raw`, receive them with one
    /// `receive_raw` into `out`.
    #[inline(always)]
    fn round(&mut self, msgs: &[u8], out: &mut [u8], k: usize) {
        // Up to the end of the ring per call: twice when the batch wraps.
        let mut sent = 0;
        while sent < k {
            self.tx
                .send_raw(|p, count| {
                    let n = count.min(k - sent);
                    // SAFETY: send_raw hands us `count >= n` writable items at `p`; `msgs`
                    // holds `k >= sent + n` items of private memory.
                    unsafe {
                        std::ptr::copy_nonoverlapping(
                            msgs[sent * SIZE..].as_ptr(),
                            p.cast::<u8>(),
                            n * SIZE,
                        )
                    };
                    sent += n;
                    n
                })
                .expect("send_raw");
        }
        let mut got = 0;
        while got < sent {
            self.rx
                .receive_raw(|p, count| {
                    let n = count.min(sent - got);
                    // SAFETY: receive_raw hands us `count >= n` readable items at `p`; `out`
                    // has room for `k >= got + n` items.
                    unsafe {
                        std::ptr::copy_nonoverlapping(
                            p.cast::<u8>(),
                            out[got * SIZE..].as_mut_ptr(),
                            n * SIZE,
                        )
                    };
                    got += n;
                    n
                })
                .expect("receive_raw");
        }
    }
}

#[inline(always)]
fn run_shmem(s: &mut Shmem, n: u64, k: u64) -> u64 {
    let mut msgs = vec![0u8; SIZE * k as usize];
    let mut out = vec![0u8; SIZE * k as usize];
    let mut sum = 0u64;
    let mut i = 0;
    while i < n {
        let k = k.min(n - i);
        for (j, m) in msgs.chunks_exact_mut(SIZE).take(k as usize).enumerate() {
            m[..8].copy_from_slice(&(i + j as u64).to_le_bytes());
        }
        s.round(black_box(&msgs), &mut out, k as usize);
        for m in out.chunks_exact(SIZE).take(k as usize) {
            sum = sum.wrapping_add(u64::from_le_bytes(m[..8].try_into().expect("8 bytes")));
        }
        i += k;
    }
    sum
}

#[inline(never)]
fn ipm_shmem_single(s: &mut Shmem, n: u64) -> u64 {
    run_shmem(s, n, 1)
}

#[inline(never)]
fn ipm_shmem_batch(s: &mut Shmem, n: u64) -> u64 {
    run_shmem(s, n, BATCH)
}

#[inline(never)]
fn ipm_crossbeam(n: u64) -> u64 {
    let (tx, rx) = crossbeam_channel::bounded::<[u8; SIZE]>((1 << 20) / (SIZE + 8));
    let mut sum = 0u64;
    for i in 0..n {
        let mut m = [0u8; SIZE];
        m[..8].copy_from_slice(&i.to_le_bytes());
        tx.send(black_box(m)).expect("room");
        let out = rx.recv().expect("a message");
        sum = sum.wrapping_add(u64::from_le_bytes(out[..8].try_into().expect("8 bytes")));
    }
    sum
}

/// `ring-floor`: the same record bytes with nothing else (one thread, as above).
#[inline(never)]
fn ipm_floor(p: &mut FloorProducer, c: &mut FloorConsumer, n: u64) -> u64 {
    let mut msg = [0u8; SIZE];
    let mut sum = 0u64;
    for i in 0..n {
        msg[..8].copy_from_slice(&i.to_le_bytes());
        p.send(black_box(&msg));
        c.drain(usize::MAX, |m| {
            sum = sum.wrapping_add(u64::from_le_bytes(m[..8].try_into().expect("8 bytes")));
        });
    }
    sum
}

/// The counted functions: `--toggle-collect` matches these names only.
macro_rules! counted {
    ($($name:ident => $body:ident),*) => {$(
        #[inline(never)]
        fn $name(p: &mut Producer, c: &mut Consumer, n: u64) -> u64 {
            $body(p, c, n)
        }
    )*};
}
counted!(
    ipm_single => run_single,
    ipm_drain => run_drain,
    ipm_batch => run_batch,
    ipm_views => run_views
);

fn main() {
    let mut args = std::env::args().skip(1);
    let variant = args.next().unwrap_or_else(|| "single".into());
    let n: u64 = args
        .next()
        .map_or(1_000_000, |s| s.parse().expect("a count"));
    let expect: u64 = (0..n).fold(0u64, |a, i| a.wrapping_add(i));
    if variant == "crossbeam" {
        assert_eq!(ipm_crossbeam(n), expect, "messages lost or changed");
        println!("{variant}: {n} messages of {SIZE} bytes");
        return;
    }
    if let Some(k) = match variant.as_str() {
        "shmem-single" => Some(1),
        "shmem-batch" => Some(BATCH),
        _ => None,
    } {
        let mut s = Shmem::new();
        black_box(run_shmem(&mut s, 20_000, k));
        let sum = if k == 1 {
            ipm_shmem_single(&mut s, n)
        } else {
            ipm_shmem_batch(&mut s, n)
        };
        assert_eq!(sum, expect, "messages lost or changed");
        println!("{variant}: {n} messages of {SIZE} bytes");
        return;
    }
    if variant == "floor" {
        let cfg = Config::new().capacity(1 << 20);
        let ring = Ring::create(&cfg).expect("ring");
        let other =
            Ring::open(ring.memfd().try_clone_to_owned().expect("dup"), &cfg).expect("open");
        let (mut p, mut c) = (FloorProducer::new(ring), FloorConsumer::new(other));
        black_box(ipm_floor(&mut p, &mut c, 20_000));
        let expect: u64 = (0..n).fold(0u64, |a, i| a.wrapping_add(i));
        assert_eq!(
            ipm_floor(&mut p, &mut c, n),
            expect,
            "messages lost or changed"
        );
        println!("{variant}: {n} messages of {SIZE} bytes");
        return;
    }
    let (mut p, mut c) = channel(&Config::new().capacity(1 << 20)).expect("ring");
    let (warm, counted): (fn(&mut Producer, &mut Consumer, u64) -> u64, _) = match variant.as_str()
    {
        "single" => (
            run_single as fn(&mut Producer, &mut Consumer, u64) -> u64,
            ipm_single as fn(&mut Producer, &mut Consumer, u64) -> u64,
        ),
        "drain" => (run_drain, ipm_drain),
        "batch" => (run_batch, ipm_batch),
        "views" => (run_views, ipm_views),
        other => {
            panic!(
                "unknown variant {other:?} (single, drain, batch, views, floor, shmem-single, shmem-batch, crossbeam)"
            )
        }
    };
    // Warm up outside the counted function: first-touch page faults, branch history.
    black_box(warm(&mut p, &mut c, 20_000));
    assert_eq!(
        counted(&mut p, &mut c, n),
        expect,
        "messages lost or changed"
    );
    println!("{variant}: {n} messages of {SIZE} bytes");
}
