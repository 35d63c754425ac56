//! Instructions per message through the tokio API against the blocking one, counted by
//! callgrind: one thread, one connection to itself, 64-byte messages, `send(..).await` then
//! `try_drain` (`tokio`) or `try_send` then `try_drain` (`blocking`), both handles of the
//! handshake's `Sender`/`Receiver`.
//!
//! ```text
//! cargo build --release -p shmpipe-bench --example ipm_tokio
//! valgrind --tool=callgrind --toggle-collect='*ipm_tokio_loop*' --callgrind-out-file=/tmp/t.out \
//!     target/release/examples/ipm_tokio tokio 1000000
//! valgrind --tool=callgrind --toggle-collect='*ipm_blocking_loop*' --callgrind-out-file=/tmp/b.out \
//!     target/release/examples/ipm_tokio blocking 1000000
//! callgrind_annotate /tmp/t.out | grep 'PROGRAM TOTALS'   # Ir / 1000000 = instructions per message
//! ```

use std::hint::black_box;

use shmpipe_handshake::{Listener, Options, connect};

const SIZE: usize = 64;

#[inline(never)]
fn ipm_tokio_loop(
    rt: &tokio::runtime::Runtime,
    tx: &mut shmpipe_handshake::tokio::Sender,
    rx: &mut shmpipe_handshake::Receiver,
    n: u64,
) -> u64 {
    rt.block_on(async {
        let mut msg = [0u8; SIZE];
        let mut sum = 0u64;
        for i in 0..n {
            msg[..8].copy_from_slice(&i.to_le_bytes());
            tx.send(black_box(&msg)).await.expect("room");
            rx.try_drain(usize::MAX, |m| {
                sum = sum.wrapping_add(u64::from_le_bytes(m[..8].try_into().expect("8")));
            })
            .expect("a message");
        }
        sum
    })
}

#[inline(never)]
fn ipm_blocking_loop(
    tx: &mut shmpipe_handshake::Sender,
    rx: &mut shmpipe_handshake::Receiver,
    n: u64,
) -> u64 {
    let mut msg = [0u8; SIZE];
    let mut sum = 0u64;
    for i in 0..n {
        msg[..8].copy_from_slice(&i.to_le_bytes());
        tx.send(black_box(&msg)).expect("room");
        rx.try_drain(usize::MAX, |m| {
            sum = sum.wrapping_add(u64::from_le_bytes(m[..8].try_into().expect("8")));
        })
        .expect("a message");
    }
    sum
}

fn main() {
    let mut args = std::env::args().skip(1);
    let variant = args.next().unwrap_or_else(|| "tokio".into());
    let n: u64 = args
        .next()
        .map_or(1_000_000, |s| s.parse().expect("a count"));
    let dir = tempfile::tempdir().expect("a temp dir");
    let path = dir.path().join("s");
    let mut listener = Listener::bind(&path, &Options::new()).expect("bind");
    let p = path.clone();
    let client = std::thread::spawn(move || connect(&p, &Options::new()).expect("connect"));
    let server = listener.accept().expect("accept");
    let client = client.join().expect("client");
    let (tx, _rx0) = client.split();
    let (_tx0, mut rx) = server.split();
    let sum = if variant == "tokio" {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let mut tx = {
            let _g = rt.enter();
            shmpipe_handshake::tokio::Sender::new(tx).expect("register")
        };
        ipm_tokio_loop(&rt, &mut tx, &mut rx, n)
    } else {
        let mut tx = tx;
        ipm_blocking_loop(&mut tx, &mut rx, n)
    };
    println!("{variant}: {n} messages, checksum {sum}");
}
