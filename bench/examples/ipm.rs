//! Instructions per message on the ring's hot path, counted by callgrind (repeatable where
//! timings are not). One thread sends and receives 64-byte messages over one ring, so the
//! count is the code path alone, with no cache line crossing cores.
//!
//! ```text
//! cargo build --release -p shmring-bench --example ipm
//! valgrind --tool=callgrind --toggle-collect='*ipm_single*' --callgrind-out-file=/tmp/ipm.out \
//!     target/release/examples/ipm single 1000000
//! callgrind_annotate /tmp/ipm.out | grep 'PROGRAM TOTALS'   # Ir / 1000000 = instructions per message
//! ```
//!
//! Variants: `single` (`try_send` + `try_recv`: one publication and one release per
//! message), `batch` (64 messages staged with `batch()` and one publication, then one `drain`
//! that copies each out and releases once), `views` (as `batch`, but `try_drain_views` with a
//! copy of each message into a private buffer). Only the loop function is counted
//! (`--toggle-collect`), so set-up and warm-up are excluded.

use std::hint::black_box;

use shmring_ring::{Config, Consumer, Producer, channel};

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

/// The counted functions: `--toggle-collect` matches these names only.
macro_rules! counted {
    ($($name:ident => $body:ident),*) => {$(
        #[inline(never)]
        fn $name(p: &mut Producer, c: &mut Consumer, n: u64) -> u64 {
            $body(p, c, n)
        }
    )*};
}
counted!(ipm_single => run_single, ipm_batch => run_batch, ipm_views => run_views);

fn main() {
    let mut args = std::env::args().skip(1);
    let variant = args.next().unwrap_or_else(|| "single".into());
    let n: u64 = args
        .next()
        .map_or(1_000_000, |s| s.parse().expect("a count"));
    let (mut p, mut c) = channel(&Config::new().capacity(1 << 20)).expect("ring");
    let (warm, counted): (fn(&mut Producer, &mut Consumer, u64) -> u64, _) = match variant.as_str()
    {
        "single" => (
            run_single as fn(&mut Producer, &mut Consumer, u64) -> u64,
            ipm_single as fn(&mut Producer, &mut Consumer, u64) -> u64,
        ),
        "batch" => (run_batch, ipm_batch),
        "views" => (run_views, ipm_views),
        other => panic!("unknown variant {other:?} (single, batch, views)"),
    };
    // Warm up outside the counted function: first-touch page faults, branch history.
    black_box(warm(&mut p, &mut c, 20_000));
    let expect: u64 = (0..n).fold(0u64, |a, i| a.wrapping_add(i));
    assert_eq!(
        counted(&mut p, &mut c, n),
        expect,
        "messages lost or changed"
    );
    println!("{variant}: {n} messages of {SIZE} bytes");
}
