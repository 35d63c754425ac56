//! Every transport and workload runs end to end in real worker processes, and the harness
//! catches what it exists to catch: a corrupted byte fails the check, a stuck worker is
//! killed at the deadline. Each test has a deadline of its own (the session's).

use std::time::{Duration, Instant};

use shmpipe_bench::session::{CellSpec, Launcher, Session};
use shmpipe_bench::transport::{self, Transport};
use shmpipe_bench::worker::Fault;
use shmpipe_bench::{Error, Workload};

fn launcher() -> Launcher {
    Launcher::new(env!("CARGO_BIN_EXE_shmpipe-bench-worker"), &[])
}

fn spec(t: Transport, w: Workload, fault: Option<Fault>) -> CellSpec {
    CellSpec {
        transport: t.name().into(),
        workload: w,
        capacity: 1 << 20,
        batch: 1,
        drain_max: 0,
        spin_us: None,
        cpus: shmpipe_bench::allowed_cpus().into_iter().take(2).collect(),
        fault,
    }
}

fn start(t: Transport, w: Workload, fault: Option<Fault>, secs: u64) -> Session {
    let wiring = transport::wire(t, w, 1 << 20).expect("wiring");
    let deadline = Instant::now() + Duration::from_secs(secs);
    Session::start(&launcher(), &spec(t, w, fault), wiring, deadline)
        .unwrap_or_else(|e| panic!("{} {w}: start: {e}", t.name()))
}

#[test]
fn every_transport_runs_every_workload_it_supports() {
    let workloads = [
        Workload::Thr(8),
        Workload::Thr(100),
        Workload::Thr(65536),
        Workload::Rtt(64),
        Workload::Idle,
    ];
    for t in Transport::ALL {
        for w in workloads {
            if !t.supports(w) || (w == Workload::Idle && t.is_solo()) {
                continue;
            }
            let mut s = start(t, w, None, 60);
            let n = match w {
                Workload::Thr(65536) => 300,
                Workload::Rtt(_) => 200,
                Workload::Idle => 1,
                _ => 20_000,
            };
            // Two rounds: sequence numbers must carry over from one to the next.
            for _ in 0..2 {
                let idle = if w == Workload::Idle {
                    Duration::from_millis(20)
                } else {
                    Duration::ZERO
                };
                let o = s
                    .round(n, idle)
                    .unwrap_or_else(|e| panic!("{} {w}: {e}", t.name()));
                assert_eq!(o.errors, 0, "{} {w}: {:?}", t.name(), o.first_error);
                assert!(o.elapsed > Duration::ZERO, "{} {w}", t.name());
                if matches!(w, Workload::Rtt(_)) {
                    let p = o.latency.expect("round-trip percentiles");
                    assert!(p.p50 > 0 && p.p50 <= p.p99 && p.p99 <= p.max, "{p:?}");
                }
                if w == Workload::Idle {
                    assert!(o.idle_cpu.is_some(), "{}: no CPU figure", t.name());
                }
            }
            s.stop()
                .unwrap_or_else(|e| panic!("{} {w}: stop: {e}", t.name()));
        }
    }
}

/// Two short rounds of `n` messages (round trips): both must verify, and the sequence numbers
/// carry over from one to the next.
fn two_rounds(t: Transport, w: Workload, n: u64) {
    let mut s = start(t, w, None, 30);
    for _ in 0..2 {
        let o = s
            .round(n, Duration::ZERO)
            .unwrap_or_else(|e| panic!("{} {w}: {e}", t.name()));
        assert_eq!(o.errors, 0, "{} {w}: {:?}", t.name(), o.first_error);
        assert_eq!(o.n, n);
        assert!(o.elapsed > Duration::ZERO, "{} {w}", t.name());
        if matches!(w, Workload::Rtt(_)) {
            let p = o.latency.expect("round-trip percentiles");
            assert!(p.p50 > 0 && p.p50 <= p.p99 && p.p99 <= p.max, "{p:?}");
        }
    }
    s.stop()
        .unwrap_or_else(|e| panic!("{} {w}: stop: {e}", t.name()));
}

#[test]
fn the_ring_floor_runs_thr_64_and_rtt_64() {
    // 50 000 messages of 64 bytes: about three laps of the 1 MiB ring.
    two_rounds(Transport::RingFloor, Workload::Thr(64), 50_000);
    two_rounds(Transport::RingFloor, Workload::Rtt(64), 500);
}

#[test]
fn the_tokio_transports_batch_through_a_full_ring() {
    // A 4 KiB ring holds about 50 messages of 64 bytes: batches of 100 fill it midway, and the
    // producer awaits room in the middle of every batch.
    let w = Workload::Thr(64);
    for t in [Transport::ShmpipeTokio, Transport::ShmpipeTokioSpin] {
        let mut spec = spec(t, w, None);
        spec.capacity = 1 << 12;
        spec.batch = 100;
        let wiring = transport::wire(t, w, spec.capacity).expect("wiring");
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut s = Session::start(&launcher(), &spec, wiring, deadline)
            .unwrap_or_else(|e| panic!("{} {w}: start: {e}", t.name()));
        // Not a multiple of the batch: the last one is short.
        for _ in 0..2 {
            let o = s
                .round(20_050, Duration::ZERO)
                .unwrap_or_else(|e| panic!("{} {w}: {e}", t.name()));
            assert_eq!(o.errors, 0, "{} {w}: {:?}", t.name(), o.first_error);
        }
        s.stop()
            .unwrap_or_else(|e| panic!("{} {w}: stop: {e}", t.name()));
    }
}

#[test]
fn shmem_ipc_blocking_runs_thr_64() {
    two_rounds(Transport::ShmemIpc, Workload::Thr(64), 50_000);
}

#[test]
fn shmem_ipc_runs_only_its_item_sizes() {
    for t in [Transport::ShmemIpc, Transport::ShmemIpcSpin] {
        for n in transport::peers::SHMEM_SIZES {
            assert!(t.supports(Workload::Thr(n)) && t.supports(Workload::Rtt(n)));
        }
        assert!(t.supports(Workload::Idle));
        for w in [
            Workload::Thr(100),
            Workload::Rtt(16),
            Workload::Thr(1 << 17),
        ] {
            assert!(!t.supports(w), "{} {w}", t.name());
        }
    }
    assert!(!Transport::RingFloor.supports(Workload::Idle));
}

#[test]
fn a_corrupted_byte_fails_the_check() {
    for t in [
        Transport::Shmpipe,
        Transport::ShmpipeTokio,
        Transport::RingFloor,
        Transport::Pipe,
        Transport::UdsSeqpacket,
    ] {
        for w in [Workload::Thr(64), Workload::Rtt(64)] {
            let mut s = start(t, w, Some(Fault::Corrupt(1234)), 30);
            let o = s.round(3000, Duration::ZERO).expect("round");
            // The consumer sees the bad message; in rtt the echo carries it back, so the
            // producer sees it too.
            assert!(o.errors >= 1, "{} {w}: corruption not detected", t.name());
            let e = o.first_error.expect("a description");
            assert!(
                e.contains("message 1234") && e.contains("offset 63"),
                "{} {w}: {e}",
                t.name()
            );
            let o = s.round(100, Duration::ZERO).expect("round");
            assert_eq!(o.errors, 0, "only one message was corrupted");
            s.stop().expect("stop");
        }
    }
}

#[test]
fn a_stuck_worker_is_killed_at_the_deadline() {
    let t0 = Instant::now();
    let mut s = start(Transport::Shmpipe, Workload::Thr(64), Some(Fault::Stall), 3);
    match s.round(1000, Duration::ZERO) {
        Err(Error::Deadline) => {}
        other => panic!("expected the deadline, got {other:?}"),
    }
    drop(s); // kills and reaps both workers
    assert!(t0.elapsed() < Duration::from_secs(10));
}

#[test]
fn a_crashed_worker_is_reported() {
    // A transport name the worker does not know: it reports and exits before Ready.
    let wiring = transport::Wiring::default();
    let mut spec = spec(Transport::Pipe, Workload::Thr(64), None);
    spec.transport = "no-such-transport".into();
    let deadline = Instant::now() + Duration::from_secs(10);
    match Session::start(&launcher(), &spec, wiring, deadline) {
        Err(Error::Worker { message, .. }) => {
            assert!(message.contains("unknown transport"), "{message}")
        }
        other => panic!("expected a worker failure, got {other:?}"),
    }
}
