//! Typed messages over a connection: a client streams plain-old-data `Tick`s (sent as their
//! 24 bytes, copied into a `Tick` on receipt), then a serde `Report` with strings and a vector
//! (postcard); the server checks both and answers with a serde `Ack`.
//!
//! ```text
//! cargo run --features serde --example typed [-- TICKS]
//! ```
//!
//! Both sides run in this process (the server on a thread), over a real socket and the
//! handshake, as two processes would.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use shmpipe::bytemuck::{Pod, Zeroable};
use shmpipe::{Listener, Options, RecvError, RecvValueError, connect};

/// A plain-old-data message: `#[repr(C)]`, no padding, every field valid for any bits.
#[derive(Debug, Clone, Copy, PartialEq, Pod, Zeroable)]
#[bytemuck(crate = "shmpipe::bytemuck")]
#[repr(C)]
struct Tick {
    seq: u64,
    price: f64,
    qty: u32,
    venue: u32,
}

/// Anything else: encoded with postcard (feature `serde`).
#[derive(Debug, Serialize, Deserialize)]
struct Report {
    ticks: u64,
    venues: Vec<String>,
    note: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Ack {
    ticks: u64,
    volume: u64,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: u64 = std::env::args().nth(1).map_or(Ok(100_000), |s| s.parse())?;
    let dir = std::env::temp_dir().join(format!("shmpipe-typed-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("typed.sock");
    let mut listener = Listener::bind(&path, &Options::new())?;

    let server = std::thread::spawn(
        move || -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
            let (mut tx, mut rx) = listener.accept()?.split();
            let (mut ticks, mut volume) = (0u64, 0u64);
            // Ticks until the report. A message of another size would be `WrongSize`, consumed, so
            // a server could log it and go on; this one knows the report comes after `n` ticks.
            while ticks < n {
                let t: Tick = rx.recv_value()?;
                assert_eq!(t.seq, ticks, "ticks arrive in order");
                volume += u64::from(t.qty);
                ticks += 1;
            }
            let report: Report = rx.recv_serde()?;
            println!("server: {ticks} ticks, volume {volume}; report {report:?}");
            assert_eq!(report.ticks, ticks);
            tx.send_serde(&Ack { ticks, volume })?;
            // The client closes after our ack: nothing more comes.
            match rx.recv_value::<Tick>() {
                Err(RecvValueError::Recv(RecvError::Closed)) => Ok(()),
                other => Err(format!("expected the end of the stream, got {other:?}").into()),
            }
        },
    );

    let (mut tx, mut rx) = connect(&path, &Options::new())?.split();
    let start = std::time::Instant::now();
    for seq in 0..n {
        let tick = Tick {
            seq,
            price: 100.0 + (seq % 50) as f64 * 0.25,
            qty: (seq % 10) as u32 + 1,
            venue: (seq % 3) as u32,
        };
        if seq % 2 == 0 {
            tx.send_value(&tick)?; // a copy of its bytes into the ring
        } else {
            // Or written into room reserved in the ring: whole, or field by field with
            // `g.write_at(std::mem::offset_of!(Tick, qty), &qty)`.
            let mut g = tx.reserve_value::<Tick>()?;
            g.write(&tick);
            g.commit()?;
        }
    }
    let elapsed = start.elapsed();
    tx.send_serde(&Report {
        ticks: n,
        venues: vec!["XNAS".into(), "XLON".into(), "XTKS".into()],
        note: Some("end of session".into()),
    })?;
    let ack: Ack = rx.recv_serde()?;
    println!(
        "client: sent {n} ticks in {elapsed:?} ({:.0} ns each); ack {ack:?}",
        elapsed.as_nanos() as f64 / n.max(1) as f64
    );
    tx.close(Duration::from_secs(5))?; // Ok: the server consumed everything
    server
        .join()
        .expect("server thread")
        .map_err(|e| e.to_string())?;
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
