//! Cross-process criterion benches: producer and consumer in two worker processes (this
//! binary re-executed with `--shmpipe-bench-worker`), pinned to two CPUs, the same drivers and
//! byte-by-byte checks as `shmpipe bench`. Each benchmark keeps one pair of workers for all
//! of criterion's samples; `iter_custom(n)` is one round of `n` messages (or round trips).
//!
//! Besides shmpipe (blocking, and on tokio: `shmpipe-tokio`, `shmpipe-tokio-spin`), pipes and
//! Unix sockets, `ring-floor` (shmpipe's record bytes with nothing else: the yardstick) and the
//! two strongest published Rust peers run the same workloads:
//! `shmem-ipc` (memfd + eventfd ring; `shmpipe_bench::transport::peers`, in its blocking mode
//! `shmem-ipc-block` and its spin-then-block mode `shmem-ipc-spin`) and `iceoryx2` (zero-copy
//! publish-subscribe; `peers.rs`).
//!
//! `cargo bench -p shmpipe-bench --bench ipc`

use std::process::ExitCode;
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, Throughput, criterion_group};
use shmpipe_bench::Workload;
use shmpipe_bench::session::{CellSpec, Launcher, Session};
use shmpipe_bench::transport::{self, Transport, Wiring};

mod peers;

/// The first argument that turns this binary into a worker.
const WORKER_FLAG: &str = "--shmpipe-bench-worker";
const SIZES: [usize; 5] = [8, 64, 512, 4096, 65536];
/// Ring capacity, and the byte size of every peer's queue.
const CAPACITY: usize = 1 << 20;
/// Messages per publication in the batched variants.
const BATCH: usize = 64;

/// A transport of the bench library (shmem-ipc included), or iceoryx2.
#[derive(Clone, Copy)]
enum Contender {
    Builtin(Transport),
    Iceoryx2,
}

impl Contender {
    fn name(self) -> &'static str {
        match self {
            Contender::Builtin(t) => t.name(),
            Contender::Iceoryx2 => peers::ICEORYX2,
        }
    }

    /// Create the transport; `keep` holds whatever must outlive the workers' start-up.
    fn wire(self, w: Workload) -> (Wiring, Option<peers::Keep>) {
        match self {
            Contender::Builtin(t) => (transport::wire(t, w, CAPACITY).expect("wiring"), None),
            Contender::Iceoryx2 => {
                let (wiring, keep) = peers::wire_iceoryx2(w, CAPACITY).expect("iceoryx2 wiring");
                (wiring, Some(keep))
            }
        }
    }
}

/// One benchmark: start a pair of workers, let criterion ask for rounds, stop them.
fn cross(
    g: &mut BenchmarkGroup<'_, WallTime>,
    label: &str,
    who: Contender,
    w: Workload,
    batch: usize,
) {
    let launcher = Launcher::current_exe(&[WORKER_FLAG]).expect("own path");
    let spec = CellSpec {
        transport: who.name().into(),
        workload: w,
        capacity: CAPACITY,
        batch,
        drain_max: 0,
        spin_us: None,
        cpus: shmpipe_bench::allowed_cpus().into_iter().take(2).collect(),
        fault: None,
    };
    let (wiring, keep) = who.wire(w);
    // Generous: criterion decides how long a benchmark runs; a hang still ends.
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut session = Session::start(&launcher, &spec, wiring, deadline)
        .unwrap_or_else(|e| panic!("{label}: start: {e}"));
    g.bench_function(label, |b| {
        b.iter_custom(|iters| {
            let o = session
                .round(iters, Duration::ZERO)
                .unwrap_or_else(|e| panic!("{label}: {e}"));
            assert_eq!(
                o.errors,
                0,
                "VERIFICATION FAILED: {label}: {}",
                o.first_error.unwrap_or_default()
            );
            o.elapsed
        })
    });
    session
        .stop()
        .unwrap_or_else(|e| panic!("{label}: stop: {e}"));
    drop(keep);
}

fn throughput(c: &mut Criterion) {
    use Transport as T;
    for size in SIZES {
        let w = Workload::Thr(size);
        let mut g = c.benchmark_group(format!("ipc/thr-{size}"));
        g.throughput(Throughput::Elements(1));
        for t in [
            T::Shmpipe,
            T::ShmpipeSpin,
            T::ShmpipeTokio,
            T::ShmpipeTokioSpin,
        ] {
            cross(&mut g, t.name(), Contender::Builtin(t), w, 1);
        }
        cross(
            &mut g,
            &format!("shmpipe-batch{BATCH}"),
            Contender::Builtin(T::Shmpipe),
            w,
            BATCH,
        );
        for t in [T::Pipe, T::UdsStream, T::UdsSeqpacket, T::RingFloor] {
            cross(&mut g, t.name(), Contender::Builtin(t), w, 1);
        }
        shmem_ipc(&mut g, w);
        cross(
            &mut g,
            &format!("shmem-ipc-spin-batch{BATCH}"),
            Contender::Builtin(T::ShmemIpcSpin),
            w,
            BATCH,
        );
        cross(&mut g, peers::ICEORYX2, Contender::Iceoryx2, w, 1);
        g.finish();
    }
}

fn latency(c: &mut Criterion) {
    use Transport as T;
    let w = Workload::Rtt(64);
    let mut g = c.benchmark_group("ipc/rtt-64");
    for t in [
        T::Shmpipe,
        T::ShmpipeSpin,
        T::ShmpipeBlock,
        T::ShmpipeTokio,
        T::ShmpipeTokioPark,
        T::ShmpipeTokioSpin,
        T::Pipe,
        T::UdsStream,
        T::UdsSeqpacket,
        T::RingFloor,
        T::EventfdFloor,
        T::SpinFloor,
    ] {
        cross(&mut g, t.name(), Contender::Builtin(t), w, 1);
    }
    shmem_ipc(&mut g, w);
    cross(&mut g, peers::ICEORYX2, Contender::Iceoryx2, w, 1);
    g.finish();
}

/// shmem-ipc in both wait modes, one message per `send_raw`: `shmem-ipc-block` (the
/// `shmem-ipc` transport: block at once, its documented use) and `shmem-ipc-spin` (spin up to
/// shmpipe's default budget, then block).
fn shmem_ipc(g: &mut BenchmarkGroup<'_, WallTime>, w: Workload) {
    use Transport as T;
    for (label, t) in [
        ("shmem-ipc-block", T::ShmemIpc),
        ("shmem-ipc-spin", T::ShmemIpcSpin),
    ] {
        cross(g, label, Contender::Builtin(t), w, 1);
    }
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_millis(1500))
        .sample_size(10)
}

criterion_group! {
    name = benches;
    config = config();
    targets = throughput, latency
}

fn main() -> ExitCode {
    if std::env::args().nth(1).as_deref() == Some(WORKER_FLAG) {
        return shmpipe_bench::worker::main_with(peers::run);
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
    ExitCode::SUCCESS
}
