//! What an idle async receiver costs: a tokio `Receiver` (`shmpipe_handshake::tokio`) awaits
//! `recv` on a connection whose peer sends nothing, for a while; then the CPU time the process
//! used meanwhile (CLOCK_PROCESS_CPUTIME_ID), per second of idling, and how often the
//! receiving task woke up for nothing: the polls of its `recv` future, the thread's voluntary
//! context switches (`/proc/thread-self/status`), and the receiver's counters.
//!
//! ```text
//! cargo run --release -p shmpipe-bench --example idle_cpu -- [SECONDS] [SPIN_US]    (5, 0)
//! ```
//!
//! `SPIN_US` is the receiver's `set_spin` budget, spent again after every wake-up. The runtime
//! is a `current_thread` one with IO and time enabled, on this one thread; the peer is the
//! other end of the connection on the same runtime, connected and then left alone (it never
//! runs while the receiver waits). An idle receiver still wakes: `recv` re-checks the ring
//! every `RECHECK` (100 ms) when no bell rings, so expect about 10 wake-ups a second.

use std::future::{Future, poll_fn};
use std::pin::pin;
use std::time::{Duration, Instant};

use shmpipe_handshake::Options;
use shmpipe_handshake::tokio::{Listener, connect};

/// CPU time this process has used, in nanoseconds.
fn process_cpu_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// The calling thread's voluntary context switches (each a sleep in `epoll_wait`, here), if
/// `/proc` tells.
fn voluntary_switches() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/thread-self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
        .and_then(|v| v.trim().parse().ok())
}

fn main() {
    let mut args = std::env::args().skip(1);
    let secs: f64 = args.next().map_or(5.0, |a| a.parse().expect("SECONDS"));
    let spin = Duration::from_micros(args.next().map_or(0, |a| a.parse().expect("SPIN_US")));
    let idle = Duration::from_secs_f64(secs);

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("s");
        let options = Options::new();
        let mut listener = Listener::bind(&path, &options).expect("bind");
        let (server, client) = tokio::join!(listener.accept(), connect(&path, &options));
        let (_server_tx, mut rx) = server.expect("accept").split();
        // The peer: connected, silent, open until the end.
        let _peer = client.expect("connect");
        drop(listener);
        rx.set_spin(spin);

        let mut buf = Vec::new();
        let mut polls = 0u64;
        let switches = voluntary_switches();
        let (cpu, t0) = (process_cpu_ns(), Instant::now());
        let got = {
            let mut recv = pin!(rx.recv(&mut buf));
            let counted = poll_fn(|cx| {
                polls += 1;
                recv.as_mut().poll(cx)
            });
            tokio::time::timeout(idle, counted).await
        };
        let cpu = Duration::from_nanos(process_cpu_ns() - cpu);
        let wall = t0.elapsed();
        let switches = voluntary_switches()
            .zip(switches)
            .map(|(b, a)| b.saturating_sub(a));
        if let Ok(r) = got {
            panic!("the silent peer delivered something: {r:?}");
        }

        let per_s = |x: f64| x / wall.as_secs_f64();
        let stats = rx.stats();
        println!(
            "idle async receiver (tokio current_thread, spin {} us): {:.2} s",
            spin.as_micros(),
            wall.as_secs_f64()
        );
        println!(
            "CPU: {:.3} ms in all, {:.1} us per second ({:.4}% of a core)",
            cpu.as_secs_f64() * 1e3,
            per_s(cpu.as_secs_f64() * 1e6),
            per_s(cpu.as_secs_f64() * 100.0)
        );
        // The first poll starts the wait; the last is the deadline that ends it.
        let wakeups = polls.saturating_sub(1);
        println!(
            "task wake-ups (polls of recv after the first): {wakeups}, {:.1}/s, {:.1} us of CPU each",
            per_s(wakeups as f64),
            cpu.as_secs_f64() * 1e6 / wakeups.max(1) as f64
        );
        match switches {
            Some(s) => println!(
                "voluntary context switches of this thread: {s}, {:.1}/s",
                per_s(s as f64)
            ),
            None => println!("voluntary context switches: /proc/thread-self/status unreadable"),
        }
        println!(
            "receiver stats: sleeps {}, wakeups_sent {}, empty {}, messages {}",
            stats.sleeps, stats.wakeups_sent, stats.empty, stats.messages
        );
    });
}
