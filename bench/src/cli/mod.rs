//! `shmpipe bench`: every transport against every workload, each cell in fresh worker
//! processes pinned to two CPUs, several runs interleaved, a table of medians and ratios.
//!
//! Here: the arguments, the cells and their runs, and each cell's summary with the ratios
//! that pair cells of the same run; the report (tables, headline, JSON, Markdown, plot) is
//! `report.rs`, the machine description `machine.rs`.

use std::error::Error as StdError;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::session::{CellSpec, Launcher, RoundOutcome, Session};
use crate::stats::{median, spread};
use crate::transport::{self, Kind, Transport, peers};
use crate::{Error, Workload};

mod machine;
mod report;

use machine::Machine;

/// Arguments of `shmpipe bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Short cells (about 30 s on 2 cores instead of about 3 minutes).
    #[arg(long)]
    pub quick: bool,
    /// Transports to run, comma-separated [default: all but shmpipe-tokio and
    /// shmpipe-tokio-spin]. See --list.
    #[arg(long, value_delimiter = ',', value_parser = parse_transport)]
    pub transports: Vec<Transport>,
    /// Workloads to run, comma-separated: thr-SIZE, rtt-SIZE, idle
    /// [default: thr-8,thr-64,thr-512,thr-4096,thr-65536,rtt-64,idle].
    #[arg(long, value_delimiter = ',', value_parser = Workload::parse)]
    pub workloads: Vec<Workload>,
    /// Message sizes of the throughput workloads, comma-separated (replaces the thr-* of
    /// the workload list).
    #[arg(long, value_delimiter = ',')]
    pub sizes: Vec<usize>,
    /// Runs of every cell, interleaved; the tables show the median and the spread.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub runs: u32,
    /// Measured time per cell and run, in milliseconds [default: 700; --quick: 90].
    #[arg(long)]
    pub measure_ms: Option<u64>,
    /// Warm-up per cell and run, in milliseconds [default: 200; --quick: 30].
    #[arg(long)]
    pub warmup_ms: Option<u64>,
    /// Ring capacity in bytes; pipes and sockets get kernel buffers of this size where the
    /// kernel allows.
    #[arg(long, default_value_t = 1 << 20)]
    pub capacity: usize,
    /// shmpipe producers publish every N messages through the batch API, and shmem-ipc
    /// producers write N per `send_raw` (1: every send publishes, like one write(2) per
    /// message).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub batch: u32,
    /// shmpipe consumers take at most N messages per `drain` call, so that they release
    /// space at least every N messages [default: all there are].
    #[arg(long, value_name = "N")]
    pub drain_max: Option<usize>,
    /// Spin budget of the `shmpipe` and `shmem-ipc-spin` transports' waits before they sleep,
    /// and `shmpipe-tokio`'s before it parks (`set_spin`), in microseconds [default: the
    /// library's, 50; on tokio, 0].
    #[arg(long, value_name = "US")]
    pub spin_us: Option<u64>,
    /// CPUs for the producer and the consumer, e.g. `0,1` [default: the first two this
    /// process may run on].
    #[arg(long, value_delimiter = ',')]
    pub cpus: Vec<usize>,
    /// Kill a cell's workers and report it failed after this many seconds.
    #[arg(long, default_value_t = 30)]
    pub cell_timeout: u64,
    /// Write the results as JSON (format: docs/benchmarks.md).
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,
    /// Write the tables as Markdown (for docs/benchmarks.md).
    #[arg(long, value_name = "PATH")]
    pub markdown: Option<PathBuf>,
    /// Draw throughput by message size and round-trip percentiles as SVG.
    #[arg(long, value_name = "PATH.svg")]
    pub plot: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    pub no_progress: bool,
    /// List transports and workloads, then exit.
    #[arg(long)]
    pub list: bool,
    /// Inject a fault into every message-carrying cell, to see the checks and the deadlines
    /// work: `corrupt:SEQ` flips a bit of message SEQ, `stall` stops the consumer.
    #[arg(long, hide = true, value_parser = parse_fault)]
    pub inject: Option<crate::worker::Fault>,
    /// Run as a benchmark worker (internal: the job arrives on stdin).
    #[arg(long, hide = true)]
    pub worker: bool,
}

fn parse_fault(s: &str) -> Result<crate::worker::Fault, String> {
    use crate::worker::Fault;
    if s == "stall" {
        return Ok(Fault::Stall);
    }
    s.strip_prefix("corrupt:")
        .and_then(|n| n.parse().ok())
        .map(Fault::Corrupt)
        .ok_or_else(|| format!("bad fault {s:?} (corrupt:SEQ or stall)"))
}

fn parse_transport(s: &str) -> Result<Transport, String> {
    Transport::parse(s).ok_or_else(|| {
        let names: Vec<&str> = Transport::ALL.iter().map(|t| t.name()).collect();
        format!("unknown transport {s:?} (one of {})", names.join(", "))
    })
}

/// The default workloads.
pub const DEFAULT_WORKLOADS: [Workload; 7] = [
    Workload::Thr(8),
    Workload::Thr(64),
    Workload::Thr(512),
    Workload::Thr(4096),
    Workload::Thr(65536),
    Workload::Rtt(64),
    Workload::Idle,
];

/// Settings derived from the arguments.
#[derive(Debug, Clone, Serialize)]
struct Settings {
    quick: bool,
    runs: u32,
    warmup_ms: u64,
    measure_ms: u64,
    capacity: usize,
    batch: u32,
    drain_max: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    spin_us: Option<u64>,
    cpus: Vec<usize>,
    cell_timeout_s: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    inject: Option<crate::worker::Fault>,
}

/// One cell: a transport and a workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cell {
    transport: Transport,
    workload: Workload,
}

/// One run of one cell.
#[derive(Debug, Clone)]
struct Run {
    measured: RoundOutcome,
    /// Check failures over all rounds of the run (warm-up included).
    errors: u64,
    first_error: Option<String>,
}

/// Every run of one cell, summarized.
#[derive(Debug, Clone, Serialize)]
struct Summary {
    transport: String,
    workload: String,
    msgs_per_sec: Option<f64>,
    mb_per_sec: Option<f64>,
    p50_ns: Option<f64>,
    p99_ns: Option<f64>,
    p999_ns: Option<f64>,
    max_ns: Option<f64>,
    spread: f64,
    verified: bool,
    wakeups_sent: Option<f64>,
    /// eventfd writes per million messages (thr) or round trips (rtt).
    wakeups_per_million: Option<f64>,
    /// `idle`: CPU the blocked consumer used, as a percentage of the idle time.
    idle_cpu_percent: Option<f64>,
    /// Messages (or round trips) in the median run's measured round.
    messages: Option<f64>,
    /// Runs that completed.
    runs: usize,
    /// What failed: runs that did not complete, and check failures.
    failures: Vec<String>,
    /// Against `ring-floor` in the same run (when it ran and passed its checks): `thr`, this
    /// cell's msgs/s over ring-floor's; `rtt`, this cell's p50 over ring-floor's; the median
    /// of that ratio taken run by run (see `paired`).
    vs_ring_floor: Option<f64>,
    /// shmpipe transports only, against the better shmem-ipc mode of the same workload
    /// ([`Summary::best_peer`]): `thr`, msgs/s over its msgs/s; `rtt`, its p50 over this
    /// cell's p50 (how many times faster).
    vs_best_peer: Option<f64>,
    /// The shmem-ipc mode `vs_best_peer` compares with: the higher msgs/s, or the lower p50.
    best_peer: Option<String>,
    #[serde(skip)]
    cell: Option<(Transport, Workload)>,
    /// The main figure of each run, by run number (msgs/s, p50; `None` for a failed run),
    /// for the paired ratios.
    #[serde(skip)]
    per_run: Vec<Option<f64>>,
}

/// Run the benchmark.
///
/// # Errors
///
/// Bad arguments, or a failure outside any cell (a cell's own failure is reported in the
/// table and turns the exit code non-zero).
pub fn run(args: BenchArgs) -> Result<ExitCode, Box<dyn StdError>> {
    if args.worker {
        return Ok(crate::worker::main_with(crate::transport::run));
    }
    if args.list {
        list();
        return Ok(ExitCode::SUCCESS);
    }
    let settings = settings(&args)?;
    let cells = cells(&args)?;
    let launcher = Launcher::current_exe(&["bench", "--worker"])?;
    let machine = Machine::probe(&settings);
    println!("{}", machine.describe(&settings));
    let total = cells.len() * settings.runs as usize;
    let per_cell = Duration::from_millis(settings.warmup_ms + settings.measure_ms);
    println!(
        "{} cells x {} runs, interleaved; about {} s.",
        cells.len(),
        settings.runs,
        (per_cell.as_secs_f64() * 1.25 * total as f64 + 0.02 * total as f64).ceil()
    );
    let bar = progress(total as u64, args.no_progress);
    let started = Instant::now();
    let mut runs: Vec<Vec<Result<Run, String>>> = vec![Vec::new(); cells.len()];
    for r in 0..settings.runs {
        for (i, cell) in cells.iter().enumerate() {
            bar.set_message(format!(
                "run {}/{}: {} {}",
                r + 1,
                settings.runs,
                cell.transport.name(),
                cell.workload
            ));
            let result = run_cell(&launcher, &settings, *cell).map_err(|e| e.to_string());
            match &result {
                // On stderr even when the bar is hidden (stderr not a terminal).
                Err(e) => bar.suspend(|| {
                    eprintln!(
                        "FAILED: {} {} (run {}): {e}",
                        cell.transport.name(),
                        cell.workload,
                        r + 1
                    )
                }),
                Ok(run) if run.errors > 0 => bar.suspend(|| {
                    eprintln!(
                        "VERIFICATION FAILED: {} {} (run {}): {} bad messages; first: {}",
                        cell.transport.name(),
                        cell.workload,
                        r + 1,
                        run.errors,
                        run.first_error.as_deref().unwrap_or("?")
                    )
                }),
                Ok(_) => {}
            }
            runs[i].push(result);
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    let elapsed = started.elapsed();
    let mut summaries: Vec<Summary> = cells
        .iter()
        .zip(&runs)
        .map(|(c, r)| summarize(*c, r, &settings))
        .collect();
    relate(&mut summaries);
    print!("{}", report::render(&summaries, &settings));
    println!("Finished in {:.1} s.", elapsed.as_secs_f64());
    let machine = machine.finish();
    report::write_files(&args, &summaries, &settings, &machine)?;
    let failed: Vec<&Summary> = summaries.iter().filter(|s| !s.verified).collect();
    if failed.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!();
    eprintln!("shmpipe bench: {} cell(s) FAILED:", failed.len());
    for s in failed {
        for f in &s.failures {
            eprintln!("  {} {}: {f}", s.transport, s.workload);
        }
    }
    Ok(ExitCode::FAILURE)
}

fn list() {
    println!("transports:");
    for t in Transport::ALL {
        let kind = match t.kind() {
            Kind::Shmpipe => "shmpipe",
            Kind::Peer => "peer library",
            Kind::OsBaseline => "OS baseline",
            Kind::Reference => "reference",
        };
        let mut what = if t.kind() == Kind::Peer {
            format!(
                "{kind} (sizes {})",
                peers::SHMEM_SIZES.map(|n| n.to_string()).join(", ")
            )
        } else {
            kind.to_string()
        };
        if !Transport::DEFAULT.contains(&t) {
            what.push_str(", not run by default");
        }
        println!("  {:<18} {what}", t.name());
    }
    println!("workloads: thr-SIZE (e.g. thr-64), rtt-SIZE (e.g. rtt-64), idle");
    let d: Vec<String> = DEFAULT_WORKLOADS.iter().map(Workload::to_string).collect();
    println!("default workloads: {}", d.join(","));
}

fn settings(args: &BenchArgs) -> Result<Settings, String> {
    let cpus = if args.cpus.is_empty() {
        crate::allowed_cpus().into_iter().take(2).collect()
    } else {
        if args.cpus.len() > 2 {
            return Err("--cpus takes one or two CPUs".into());
        }
        args.cpus.clone()
    };
    shmpipe_ring::Config::new()
        .capacity(args.capacity)
        .validate()
        .map_err(|e| format!("--capacity: {e}"))?;
    let (warmup, measure) = if args.quick { (30, 90) } else { (200, 700) };
    Ok(Settings {
        quick: args.quick,
        runs: args.runs,
        warmup_ms: args.warmup_ms.unwrap_or(warmup),
        measure_ms: args.measure_ms.unwrap_or(measure).max(1),
        capacity: args.capacity,
        batch: args.batch,
        drain_max: args.drain_max.unwrap_or(0),
        spin_us: args.spin_us,
        cpus,
        cell_timeout_s: args.cell_timeout.max(1),
        inject: args.inject,
    })
}

fn cells(args: &BenchArgs) -> Result<Vec<Cell>, String> {
    let transports: Vec<Transport> = if args.transports.is_empty() {
        Transport::DEFAULT.to_vec()
    } else {
        args.transports.clone()
    };
    let mut workloads: Vec<Workload> = if args.workloads.is_empty() {
        DEFAULT_WORKLOADS.to_vec()
    } else {
        args.workloads.clone()
    };
    if !args.sizes.is_empty() {
        workloads.retain(|w| !matches!(w, Workload::Thr(_)));
        for &s in &args.sizes {
            workloads.push(Workload::parse(&format!("thr-{s}"))?);
        }
    }
    workloads.sort();
    workloads.dedup();
    let mut cells = Vec::new();
    for &w in &workloads {
        for &t in &transports {
            if t.supports(w) && !(w == Workload::Idle && t.kind() == Kind::Reference) {
                cells.push(Cell {
                    transport: t,
                    workload: w,
                });
            }
        }
    }
    if cells.is_empty() {
        return Err("no transport runs any of the chosen workloads".into());
    }
    Ok(cells)
}

fn progress(total: u64, hidden: bool) -> ProgressBar {
    if hidden {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} cells  {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(250));
    bar
}

/// Run one cell once: spawn, warm up, measure, stop.
fn run_cell(launcher: &Launcher, s: &Settings, cell: Cell) -> Result<Run, Error> {
    let deadline = Instant::now() + Duration::from_secs(s.cell_timeout_s);
    let wiring = transport::wire(cell.transport, cell.workload, s.capacity)?;
    let spec = CellSpec {
        transport: cell.transport.name().into(),
        workload: cell.workload,
        capacity: s.capacity,
        batch: s.batch as usize,
        drain_max: s.drain_max,
        spin_us: s.spin_us,
        cpus: s.cpus.clone(),
        fault: s.inject,
    };
    let mut session = Session::start(launcher, &spec, wiring, deadline)?;
    let warmup = Duration::from_millis(s.warmup_ms);
    let measure = Duration::from_millis(s.measure_ms);
    let mut errors = 0;
    let mut first_error = None;
    let mut note = |o: &RoundOutcome| {
        errors += o.errors;
        if first_error.is_none() {
            first_error.clone_from(&o.first_error);
        }
    };
    let measured = if cell.workload == Workload::Idle {
        let o = session.round(1, measure.max(Duration::from_millis(200)))?;
        note(&o);
        o
    } else {
        let mut n: u64 = match cell.workload {
            Workload::Rtt(_) => 100,
            _ => 1000,
        };
        let warm_end = Instant::now() + warmup;
        let rate = loop {
            let o = session.round(n, Duration::ZERO)?;
            note(&o);
            let rate = o.n as f64 / o.elapsed.as_secs_f64().max(1e-9);
            let left = warm_end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break rate;
            }
            // Several warm-up rounds, each sized from the last rate.
            n = calibrated(rate, left.min(warmup / 3).max(Duration::from_millis(5)));
        };
        let o = session.round(calibrated(rate, measure), Duration::ZERO)?;
        note(&o);
        o
    };
    session.stop()?;
    Ok(Run {
        measured,
        errors,
        first_error,
    })
}

/// How many messages take about `d` at `rate` per second.
fn calibrated(rate: f64, d: Duration) -> u64 {
    ((rate * d.as_secs_f64()) as u64).clamp(10, 2_000_000_000)
}

fn summarize(cell: Cell, runs: &[Result<Run, String>], s: &Settings) -> Summary {
    let ok: Vec<&Run> = runs.iter().filter_map(|r| r.as_ref().ok()).collect();
    let mut failures: Vec<String> = runs
        .iter()
        .enumerate()
        .filter_map(|(i, r)| r.as_ref().err().map(|e| format!("run {}: {e}", i + 1)))
        .collect();
    for (i, r) in runs.iter().enumerate() {
        if let Ok(r) = r {
            if r.errors > 0 {
                failures.push(format!(
                    "run {}: verification failed: {} bad messages; first: {}",
                    i + 1,
                    r.errors,
                    r.first_error.as_deref().unwrap_or("?")
                ));
            }
        }
    }
    let col =
        |f: &dyn Fn(&Run) -> Option<f64>| -> Vec<f64> { ok.iter().filter_map(|r| f(r)).collect() };
    let size = cell.workload.size() as f64;
    let thr = matches!(cell.workload, Workload::Thr(_));
    let rtt = matches!(cell.workload, Workload::Rtt(_));
    let rate =
        col(&|r| thr.then(|| r.measured.n as f64 / r.measured.elapsed.as_secs_f64().max(1e-12)));
    let lat = |f: fn(&crate::Percentiles) -> u64| {
        median(&col(&|r| r.measured.latency.as_ref().map(|p| f(p) as f64)))
    };
    let wakeups = col(&|r| r.measured.counters.wakeups_sent.map(|w| w as f64));
    let per_million = col(&|r| {
        r.measured
            .counters
            .wakeups_sent
            .map(|w| w as f64 * 1e6 / r.measured.n.max(1) as f64)
    });
    let idle_ms = s.measure_ms.max(200) as f64;
    let idle = col(&|r| {
        r.measured
            .idle_cpu
            .map(|c| c.as_secs_f64() * 1e3 / idle_ms * 100.0)
    });
    let p50s = col(&|r| r.measured.latency.as_ref().map(|p| p.p50 as f64));
    let spread_of = if thr {
        spread(&rate)
    } else if rtt {
        spread(&p50s)
    } else {
        spread(&idle)
    };
    let msgs_per_sec = median(&rate);
    let per_run = runs
        .iter()
        .map(|r| {
            let r = r.as_ref().ok().filter(|r| r.errors == 0)?;
            if thr {
                Some(r.measured.n as f64 / r.measured.elapsed.as_secs_f64().max(1e-12))
            } else {
                r.measured.latency.as_ref().map(|p| p.p50 as f64)
            }
        })
        .collect();
    Summary {
        transport: cell.transport.name().into(),
        workload: cell.workload.to_string(),
        msgs_per_sec,
        mb_per_sec: msgs_per_sec.map(|m| m * size / 1e6),
        p50_ns: lat(|p| p.p50),
        p99_ns: lat(|p| p.p99),
        p999_ns: lat(|p| p.p999),
        max_ns: lat(|p| p.max),
        spread: spread_of,
        verified: failures.is_empty() && !ok.is_empty(),
        wakeups_sent: median(&wakeups),
        wakeups_per_million: median(&per_million),
        idle_cpu_percent: median(&idle),
        messages: median(&col(&|r| Some(r.measured.n as f64))),
        runs: ok.len(),
        failures,
        vs_ring_floor: None,
        vs_best_peer: None,
        best_peer: None,
        cell: Some((cell.transport, cell.workload)),
        per_run,
    }
}

/// The median over runs of `a`'s figure over `b`'s in the same run. Cells run interleaved,
/// each run of every cell before the next run of any, and the transports of one workload one
/// after the other; so the two figures of a pair were measured seconds apart, on the same
/// placement of the VM's CPUs, and their ratio is steadier than the ratio of two medians.
fn paired(a: &Summary, b: &Summary) -> Option<f64> {
    let ratios: Vec<f64> = a
        .per_run
        .iter()
        .zip(&b.per_run)
        .filter_map(|(x, y)| match (x, y) {
            (Some(x), Some(y)) if *y > 0.0 => Some(x / y),
            _ => None,
        })
        .collect();
    median(&ratios)
}

/// Fill in the ratios that compare cells of the same run: to `ring-floor`, and (shmpipe
/// transports) to the better shmem-ipc mode.
fn relate(all: &mut [Summary]) {
    let related: Vec<(Option<f64>, Option<f64>, Option<String>)> = all
        .iter()
        .map(|s| {
            let Some((t, w)) = s.cell else {
                return (None, None, None);
            };
            let floor = find(all, Transport::RingFloor, w).filter(|f| f.verified);
            let peer = (t.kind() == Kind::Shmpipe)
                .then(|| best_of(all, w, Kind::Peer))
                .flatten();
            let (vs_floor, vs_peer) = match w {
                Workload::Thr(_) => (
                    floor.and_then(|f| paired(s, f)),
                    peer.and_then(|p| paired(s, p)),
                ),
                Workload::Rtt(_) => (
                    floor.and_then(|f| paired(s, f)),
                    peer.and_then(|p| paired(p, s)),
                ),
                Workload::Idle => (None, None),
            };
            let name = vs_peer.and(peer).map(|p| p.transport.clone());
            (vs_floor, vs_peer, name)
        })
        .collect();
    for (s, (f, p, n)) in all.iter_mut().zip(related) {
        s.vs_ring_floor = f;
        s.vs_best_peer = p;
        s.best_peer = n;
    }
}

fn find(all: &[Summary], t: Transport, w: Workload) -> Option<&Summary> {
    all.iter().find(|s| s.cell == Some((t, w)))
}

/// The best verified transport of `kind` for `w`: highest msgs/s (thr) or lowest p50 (rtt).
fn best_of(all: &[Summary], w: Workload, kind: Kind) -> Option<&Summary> {
    let os = all
        .iter()
        .filter(|s| s.verified)
        .filter(|s| matches!(s.cell, Some((t, ww)) if ww == w && t.kind() == kind));
    match w {
        Workload::Thr(_) => os
            .filter(|s| s.msgs_per_sec.is_some())
            .max_by(|a, b| a.msgs_per_sec.partial_cmp(&b.msgs_per_sec).expect("finite")),
        Workload::Rtt(_) => os
            .filter(|s| s.p50_ns.is_some())
            .min_by(|a, b| a.p50_ns.partial_cmp(&b.p50_ns).expect("finite")),
        Workload::Idle => None,
    }
}
