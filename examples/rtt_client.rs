//! A request/response client that measures its own round trips against
//! `examples/echo_server.rs`: sends a message, waits for the echo, repeats.
//!
//! ```text
//! cargo run --release --example rtt_client -- /tmp/echo.sock [COUNT [SIZE [spin|block]]]
//! ```
//!
//! Prints min, median, p99, p99.9 and max of the round-trip time. The numbers depend on how
//! both sides wait: with `spin` this client never sleeps, but the echo server sleeps in epoll
//! between requests, so every request pays one wake-up on the server side.

use std::time::{Duration, Instant};

use shmpipe::{Options, WaitStrategy, connect};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .ok_or("usage: rtt_client SOCKET [COUNT [SIZE [spin|block]]]")?;
    let count: usize = args.next().map_or(Ok(10_000), |s| s.parse())?;
    let size: usize = args.next().map_or(Ok(64), |s| s.parse())?;
    let wait = match args.next().as_deref() {
        None => WaitStrategy::default(),
        Some("spin") => WaitStrategy::Spin,
        Some("block") => WaitStrategy::Block,
        Some(w) => return Err(format!("unknown wait strategy {w}").into()),
    };
    let mut conn = connect(&path, &Options::new().wait(wait))?;
    let request = vec![0x5a; size];
    let mut reply = Vec::with_capacity(size);
    let mut rtts = Vec::with_capacity(count);
    for i in 0..count + count / 10 {
        let t = Instant::now();
        conn.send(&request)?;
        conn.recv(&mut reply)?;
        let rtt = t.elapsed();
        if reply != request {
            return Err(format!("round trip {i}: the echo differs").into());
        }
        if i >= count / 10 {
            rtts.push(rtt); // the first tenth warms up caches and the server
        }
    }
    rtts.sort_unstable();
    let at = |q: f64| rtts[((rtts.len() - 1) as f64 * q) as usize];
    let mean = rtts.iter().sum::<Duration>() / rtts.len() as u32;
    println!(
        "{count} round trips of {size} bytes: min {:?}  median {:?}  p99 {:?}  p99.9 {:?}  max {:?}  mean {mean:?}",
        rtts[0],
        at(0.5),
        at(0.99),
        at(0.999),
        rtts[rtts.len() - 1]
    );
    conn.split().0.close(Duration::from_secs(5))?;
    Ok(())
}
