//! Soak: a duplex stream of mixed-size messages between this process and a child process
//! (this binary re-executed), over a fresh connection every ~2 s, for 20 s (the CI setting)
//! or `SHMPIPE_SOAK_SECS`. Each direction is one sequence-numbered, self-checking stream that
//! runs on across reconnects: every message arrives exactly once, in order, with its bytes,
//! and each connection ends with `close(timeout)` returning `Ok` on both sides, so nothing is
//! lost between connections. After every connection both processes check themselves: the
//! same fds as after the first, no ring still mapped, and no growth of the live heap (counted
//! by a global allocator) or of VmRSS beyond small bounds (see `HEAP_GROWTH`,
//! `RSS_GROWTH_KIB`).
//!
//! Choices (cycle lengths, ring sizes, which send and receive calls) come from a seeded
//! generator; the seed is printed and `SHMPIPE_SOAK_SEED` replays them.

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use shmpipe_fuzz::deadline;
use shmpipe_fuzz::process::{
    Peer, Pipes, Rng, Stream, TempDir, child_role, env_u64, fd_count, fd_table, memfd_mappings,
    mix, status_kib,
};
use shmpipe_handshake::{Listener, Options, Receiver, Sender, connect};
use shmpipe_ring::{RecvError, RecvTimeoutError};

/// Counts the bytes live on the heap, so that a leak shows exactly rather than through the
/// allocator's own retention in VmRSS.
struct Counting;

static LIVE: AtomicI64 = AtomicI64::new(0);

// SAFETY: every call goes to `System` with the caller's own arguments, so `System`'s
// guarantees are ours; the only addition is a relaxed counter update.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded unchanged; the caller upholds `alloc`'s contract.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size() as i64, Ordering::Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded unchanged; the caller upholds `alloc_zeroed`'s contract.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size() as i64, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged; `ptr` came from this allocator (that is, `System`).
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size() as i64, Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded unchanged; the caller upholds `realloc`'s contract.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_add(new_size as i64 - layout.size() as i64, Ordering::Relaxed);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Bytes allocated and not yet freed, by every thread of this process.
fn live_heap() -> i64 {
    LIVE.load(Ordering::Relaxed)
}

const SECS_VAR: &str = "SHMPIPE_SOAK_SECS";
const SEED_VAR: &str = "SHMPIPE_SOAK_SEED";
/// How long a connection lives, at random in this range.
const CYCLE_MS: (u64, u64) = (1_500, 2_500);
/// Ring sizes a connection may use (each direction drawn on its own). The first connection
/// uses the largest both ways, so that every buffer has reached its full size before the
/// memory baseline is taken.
const CAPACITIES: [usize; 5] = [4 << 10, 16 << 10, 64 << 10, 256 << 10, 1 << 20];
const LARGEST: usize = 1 << 20;
/// Bytes live on the heap may grow this much from the end of the first connection to any
/// later connection's end. Everything a connection allocates (its handles, the handshake's
/// buffers, a consumer's drain scratch of up to 256 KiB) is freed when it ends, and the
/// message buffers are allocated once at their full size; runs here show no growth at all
/// in either process (0 bytes). The bound leaves room for a standard-library structure that
/// keeps a block once, and catches a leak of 128 bytes per connection within the 20 s run
/// (about 9 connections), of 8 bytes within 300 s (about 145).
const HEAP_GROWTH: u64 = 1 << 10;
/// VmRSS may grow this much from the end of the first connection to any later connection's
/// end. What glibc keeps after a free is resident without being live: here a step of about
/// 0.2 MiB after the first few connections (a freed 256 KiB block raises its mmap threshold,
/// and later blocks of that size come from, and stay in, its heap), then about 0.1 MiB over
/// the next 140 connections, with the live heap flat. The bound is ten times that, and still
/// catches a leaked mapping of the 1 MiB rings, whose pages a stream touches, within a few
/// connections; smaller leaks are the heap and fd checks' job.
const RSS_GROWTH_KIB: u64 = 4 << 10;
/// Any single wait: a message, an accept, a close, a report.
const WAIT: Duration = Duration::from_secs(10);

/// The two streams: the test sends `DOWN`, the child sends `UP`.
fn stream_ids(seed: u64) -> (u64, u64) {
    (mix(seed ^ 0xD0), mix(seed ^ 0x0B))
}

/// The messages of one direction, mixed: single sends mostly, batches of 2..8 published with
/// one store, and reserve-copy-commit, each waiting at most `WAIT` for room, until `stop`
/// says so; then `close` must confirm that the peer consumed everything.
struct Pump {
    stream: Stream,
    rng: Rng,
    buf: Vec<u8>,
    batch: Vec<Vec<u8>>,
}

impl Pump {
    fn new(id: u64, seed: u64) -> Pump {
        Pump {
            stream: Stream::new(id),
            rng: Rng::new(seed),
            buf: Vec::with_capacity(LARGEST),
            batch: (0..8).map(|_| Vec::with_capacity(LARGEST)).collect(),
        }
    }

    fn run(&mut self, mut tx: Sender, stop: impl Fn() -> bool) -> Result<(), String> {
        let max = tx.max_message();
        let at = |s: &Stream| format!("sending message {}", s.next);
        while !stop() {
            match self.rng.below(8) {
                0 => {
                    let n = self.rng.range(2, 8) as usize;
                    for b in &mut self.batch[..n] {
                        self.stream.produce(max, b);
                    }
                    let mut batch = tx.batch();
                    for b in &self.batch[..n] {
                        batch
                            .send_timeout(b, WAIT)
                            .map_err(|e| format!("{}: batch: {e}", at(&self.stream)))?;
                    }
                    batch
                        .publish()
                        .map_err(|e| format!("{}: publish: {e}", at(&self.stream)))?;
                }
                1 => {
                    self.stream.produce(max, &mut self.buf);
                    let mut g = tx
                        .reserve_timeout(self.buf.len(), WAIT)
                        .map_err(|e| format!("{}: reserve: {e}", at(&self.stream)))?;
                    g.copy_from_slice(&self.buf);
                    g.commit()
                        .map_err(|e| format!("{}: commit: {e}", at(&self.stream)))?;
                }
                _ => {
                    self.stream.produce(max, &mut self.buf);
                    tx.send_timeout(&self.buf, WAIT)
                        .map_err(|e| format!("{}: send: {e}", at(&self.stream)))?;
                }
            }
        }
        tx.close(WAIT)
            .map_err(|e| format!("close after message {}: {e}", self.stream.next))
    }
}

/// The other direction: `recv_timeout` or `drain_timeout` at random, every message verified,
/// until the peer's close (`Closed`).
struct Sink {
    stream: Stream,
    rng: Rng,
    buf: Vec<u8>,
}

impl Sink {
    fn new(id: u64, seed: u64) -> Sink {
        Sink {
            stream: Stream::new(id),
            rng: Rng::new(seed),
            buf: Vec::with_capacity(LARGEST),
        }
    }

    fn run(&mut self, rx: &mut Receiver) -> Result<(), String> {
        let max = rx.max_message();
        loop {
            let r = if self.rng.below(4) == 0 {
                let (stream, mut bad) = (&mut self.stream, None);
                let r = rx.drain_timeout(16, WAIT, |m| {
                    if bad.is_none() {
                        bad = stream.verify(m, max).err();
                    }
                });
                if let Some(e) = bad {
                    return Err(e);
                }
                r
            } else {
                let r = rx.recv_timeout(&mut self.buf, WAIT);
                if r.is_ok() {
                    self.stream.verify(&self.buf, max)?;
                }
                r
            };
            match r {
                Ok(_) => {}
                Err(RecvTimeoutError::Failed(RecvError::Closed)) => return Ok(()),
                Err(e) => {
                    return Err(format!("receiving message {}: {e}", self.stream.next));
                }
            }
        }
    }
}

/// What one process saw: its own traffic and resources.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Report {
    sent: u64,
    sent_bytes: u64,
    received: u64,
    received_bytes: u64,
    cycles: u64,
    /// fds, VmRSS (KiB) and live heap bytes at the end of the first connection, at the end
    /// of the last, and the most at the end of any.
    fds_first: u64,
    fds_last: u64,
    rss_first: u64,
    rss_last: u64,
    rss_max: u64,
    heap_first: u64,
    heap_last: u64,
    heap_max: u64,
    /// The most memfd mappings (rings) at the end of any connection: 0 expected.
    maps_max: u64,
    /// VmHWM (KiB) at the end.
    hwm: u64,
}

impl Report {
    fn fields(&self) -> [u64; 15] {
        [
            self.sent,
            self.sent_bytes,
            self.received,
            self.received_bytes,
            self.cycles,
            self.fds_first,
            self.fds_last,
            self.rss_first,
            self.rss_last,
            self.rss_max,
            self.heap_first,
            self.heap_last,
            self.heap_max,
            self.maps_max,
            self.hwm,
        ]
    }

    fn line(&self) -> String {
        let f: Vec<String> = self.fields().iter().map(u64::to_string).collect();
        f.join(" ")
    }

    fn parse(line: &str) -> Option<Report> {
        let n: Vec<u64> = line
            .split_whitespace()
            .map(|w| w.parse().ok())
            .collect::<Option<_>>()?;
        let [a, b, c, d, e, f, g, h, i, j, k, l, m, o, q] = n[..] else {
            return None;
        };
        let r = Report {
            sent: a,
            sent_bytes: b,
            received: c,
            received_bytes: d,
            cycles: e,
            fds_first: f,
            fds_last: g,
            rss_first: h,
            rss_last: i,
            rss_max: j,
            heap_first: k,
            heap_last: l,
            heap_max: m,
            maps_max: o,
            hwm: q,
        };
        (r.fields()[..] == n[..]).then_some(r)
    }

    /// Note the resources at the end of a connection.
    fn sample(&mut self) {
        let fds = fd_count() as u64;
        let rss = status_kib(None, "VmRSS").unwrap_or(0);
        let heap = live_heap().max(0) as u64;
        self.cycles += 1;
        if self.cycles == 1 {
            (self.fds_first, self.rss_first, self.heap_first) = (fds, rss, heap);
        }
        (self.fds_last, self.rss_last, self.heap_last) = (fds, rss, heap);
        self.rss_max = self.rss_max.max(rss);
        self.heap_max = self.heap_max.max(heap);
        self.maps_max = self.maps_max.max(memfd_mappings() as u64);
    }

    /// The checks each process makes on itself after each connection.
    fn check(&self, who: &str) -> Result<(), String> {
        if self.fds_last != self.fds_first {
            return Err(format!(
                "{who}: {} fds open after connection {}, {} after the first",
                self.fds_last, self.cycles, self.fds_first
            ));
        }
        if self.maps_max != 0 {
            return Err(format!(
                "{who}: {} memfd mappings after a connection ended: a ring was not unmapped",
                self.maps_max
            ));
        }
        if self.heap_max > self.heap_first + HEAP_GROWTH {
            return Err(format!(
                "{who}: {} heap bytes live after the first connection, {} after a later one \
                 (bound: +{HEAP_GROWTH})",
                self.heap_first, self.heap_max
            ));
        }
        if self.rss_max > self.rss_first + RSS_GROWTH_KIB {
            return Err(format!(
                "{who}: resident memory grew from {} KiB after the first connection to {} KiB \
                 (bound: +{RSS_GROWTH_KIB} KiB)",
                self.rss_first, self.rss_max
            ));
        }
        Ok(())
    }
}

/// Block once on `done` before the first connection (nothing can be on it yet). The first
/// blocking receive on a std channel allocates for good: the thread's waiting context (48
/// bytes) and room in the channel's list of waiters (96 bytes). Whether our first blocking
/// receive on `done` came in connection 1 or 100 was timing, so without this the live heap
/// grew by those 144 bytes in some runs.
fn warm_up<T>(done: &mpsc::Receiver<T>) {
    assert!(done.recv_timeout(Duration::from_millis(1)).is_err());
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

#[test]
fn soak_duplex_with_reconnects_loses_nothing_and_grows_nothing() {
    let secs = env_u64(SECS_VAR, 20);
    let seed = shmpipe_fuzz::process::seed(SEED_VAR);
    eprintln!("soak: {secs} s, {SEED_VAR}={seed}");
    let (ours, child, trend) = deadline(secs + 90, "soak", move || soak(secs, seed));
    let gb = |b: u64| b as f64 / 1e9;
    eprintln!(
        "soak: {secs} s, {} connections ({} reconnects): test -> child {} messages ({:.2} GB), \
         child -> test {} messages ({:.2} GB), all verified, none lost; fds: test {} -> {}, \
         child {} -> {}; VmRSS after the first connection -> end (max): test {:.1} -> {:.1} \
         ({:.1}) MiB, child {:.1} -> {:.1} ({:.1}) MiB; live heap growth: test {} B, child {} \
         B; VmHWM: test {:.1} MiB, child {:.1} MiB; the test's VmRSS in MiB by connection: \
         {trend} ({SEED_VAR}={seed})",
        ours.cycles,
        ours.cycles - 1,
        ours.sent,
        gb(ours.sent_bytes),
        ours.received,
        gb(ours.received_bytes),
        ours.fds_first,
        ours.fds_last,
        child.fds_first,
        child.fds_last,
        mib(ours.rss_first),
        mib(ours.rss_last),
        mib(ours.rss_max),
        mib(child.rss_first),
        mib(child.rss_last),
        mib(child.rss_max),
        ours.heap_max - ours.heap_first,
        child.heap_max - child.heap_first,
        mib(ours.hwm),
        mib(child.hwm),
    );
    assert!(
        ours.cycles >= 2,
        "a single connection: no reconnect was tested"
    );
}

/// The test's side. Returns its own report and the child's.
fn soak(secs: u64, seed: u64) -> (Report, Report, String) {
    let dir = TempDir::tagged("soak");
    let sock = dir.path().join("s");
    let stop_file = dir.path().join("stop");
    let opts = Options::new()
        .send_capacity(CAPACITIES[0])
        .handshake_timeout(WAIT);
    let mut listener = Listener::bind(&sock, &opts).expect("bind");
    let peer = Peer::spawn(
        "soak",
        &[
            ("PEER_PATH", sock.display().to_string()),
            ("STOP_FILE", stop_file.display().to_string()),
            ("SOAK_SEED", seed.to_string()),
        ],
        Pipes::Report,
    );
    let (down, up) = stream_ids(seed);

    // The sending half lives on one thread for the whole run (no thread, stack or arena
    // churn between connections): it gets each connection's Sender and the instant to close.
    let (jobs, inbox) = mpsc::channel::<(Sender, Instant)>();
    let (done_tx, done) = mpsc::channel::<Result<(), String>>();
    let sender = std::thread::spawn(move || {
        let mut pump = Pump::new(down, mix(seed ^ 1));
        for (tx, until) in inbox {
            let r = pump.run(tx, || Instant::now() >= until);
            let failed = r.is_err();
            let _ = done_tx.send(r);
            if failed {
                break;
            }
        }
        pump.stream
    });

    let mut rng = Rng::new(mix(seed ^ 2));
    let mut sink = Sink::new(up, mix(seed ^ 3));
    warm_up(&done);
    let mut report = Report::default();
    // VmRSS (KiB, and its anonymous and file-backed parts) and the live heap at the end of
    // connections 1, 2, 4, 8, ... and the last; allocated now, so that it adds nothing later.
    let mut trend: Vec<[u64; 5]> = Vec::with_capacity(64);
    let end = Instant::now() + Duration::from_secs(secs);
    let mut cycles = || -> Result<(), String> {
        loop {
            let n = report.cycles + 1;
            let now = Instant::now();
            let mut until = now + Duration::from_millis(rng.range(CYCLE_MS.0, CYCLE_MS.1));
            let last = until + Duration::from_millis(CYCLE_MS.0) > end;
            if last {
                until = end.max(now);
            }
            let conn = listener
                .accept_timeout(WAIT)
                .map_err(|e| format!("connection {n}: accept: {e}"))?;
            if last {
                // The child looks for the file after each connection ends. It is connected
                // now, so the first look that can see it is the one after this connection,
                // which ends only after our close (below): it sees it then.
                std::fs::write(&stop_file, b"").expect("create the stop file");
            }
            let (tx, mut rx) = conn.split();
            jobs.send((tx, until)).expect("the sending thread is gone");
            sink.run(&mut rx)
                .map_err(|e| format!("connection {n}: {e}"))?;
            match done.recv_timeout(WAIT) {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(format!("connection {n}: {e}")),
                Err(e) => return Err(format!("connection {n}: no word from the sender: {e}")),
            }
            drop(rx);
            report.sample();
            if report.cycles.is_power_of_two() || last {
                let part = |f| status_kib(None, f).unwrap_or(0);
                let (anon, file) = (part("RssAnon"), part("RssFile"));
                trend.push([report.cycles, report.rss_last, anon, file, report.heap_last]);
            }
            report
                .check("test")
                .map_err(|e| format!("after connection {n}: {e}\n{}", fd_table()))?;
            if last {
                return Ok(());
            }
        }
    };
    if let Err(e) = cycles() {
        // The child may have found the fault first: its word is worth having.
        panic!("{e}\n{}", peer.stop(Duration::from_secs(2)));
    }
    drop(jobs);
    let sent = sender.join().expect("the sending thread panicked");
    (report.sent, report.sent_bytes) = (sent.next, sent.bytes);
    (report.received, report.received_bytes) = (sink.stream.next, sink.stream.bytes);
    report.hwm = status_kib(None, "VmHWM").unwrap_or(0);

    let out = peer.finish(WAIT);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the child failed ({}):\n{stderr}",
        out.status
    );
    let child = stdout
        .lines()
        .find_map(|l| Report::parse(l.split_once("@@ soak ")?.1))
        .unwrap_or_else(|| panic!("no report from the child:\n{stdout}\n{stderr}"));
    // Exactly once, both ways: what one side verified is all the other sent.
    assert_eq!(
        (child.received, child.received_bytes),
        (report.sent, report.sent_bytes),
        "test -> child: messages and bytes verified by the child vs sent"
    );
    assert_eq!(
        (report.received, report.received_bytes),
        (child.sent, child.sent_bytes),
        "child -> test: messages and bytes verified by the test vs sent by the child"
    );
    assert_eq!(child.cycles, report.cycles, "connections seen by each side");
    // The child checked itself after each connection; its numbers must say so.
    if let Err(e) = child.check("child") {
        panic!("{e}");
    }
    drop(listener);
    let trend: Vec<String> = trend
        .iter()
        .map(|[n, rss, anon, file, heap]| {
            format!(
                "{n}: {:.2} ({:.2} anon, {:.2} file; heap {heap} B)",
                mib(*rss),
                mib(*anon),
                mib(*file)
            )
        })
        .collect();
    (report, child, trend.join(", "))
}

/// The child: connect, stream both ways until the test closes, again and again until the
/// stop file appears; then print its report.
fn soak_child() {
    let var = |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("{k} not set"));
    let path = PathBuf::from(var("PEER_PATH"));
    let stop_file = PathBuf::from(var("STOP_FILE"));
    let seed: u64 = var("SOAK_SEED").parse().expect("SOAK_SEED");
    let (down, up) = stream_ids(seed);
    let (jobs, inbox) = mpsc::channel::<(Sender, Arc<AtomicBool>)>();
    let (done_tx, done) = mpsc::channel::<Result<(), String>>();
    let sender = std::thread::spawn(move || {
        let mut pump = Pump::new(up, mix(seed ^ 4));
        for (tx, stop) in inbox {
            let r = pump.run(tx, || stop.load(Ordering::Relaxed));
            let failed = r.is_err();
            let _ = done_tx.send(r);
            if failed {
                break;
            }
        }
        pump.stream
    });
    let mut rng = Rng::new(mix(seed ^ 5));
    let mut sink = Sink::new(down, mix(seed ^ 6));
    warm_up(&done);
    let mut report = Report::default();
    loop {
        let n = report.cycles + 1;
        let (ours, theirs) = if n == 1 {
            (LARGEST, LARGEST)
        } else {
            (rng.pick(&CAPACITIES), rng.pick(&CAPACITIES))
        };
        let opts = Options::new()
            .send_capacity(ours)
            .recv_capacity(theirs)
            .handshake_timeout(WAIT);
        let conn = connect(&path, &opts).unwrap_or_else(|e| panic!("connection {n}: {e}"));
        let (tx, mut rx) = conn.split();
        let stop = Arc::new(AtomicBool::new(false));
        jobs.send((tx, stop.clone()))
            .expect("the sending thread is gone");
        let received = sink.run(&mut rx);
        // Our sender stops once the test's stream has ended, in either case.
        stop.store(true, Ordering::Relaxed);
        if let Err(e) = received {
            panic!("connection {n}: {e}");
        }
        match done.recv_timeout(WAIT) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("connection {n}: {e}"),
            Err(e) => panic!("connection {n}: no word from the sender: {e}"),
        }
        drop(rx);
        report.sample();
        if let Err(e) = report.check("child") {
            panic!("after connection {n}: {e}\n{}", fd_table());
        }
        if is_file(&stop_file) {
            break;
        }
    }
    drop(jobs);
    let sent = sender.join().expect("the sending thread panicked");
    (report.sent, report.sent_bytes) = (sent.next, sent.bytes);
    (report.received, report.received_bytes) = (sink.stream.next, sink.stream.bytes);
    report.hwm = status_kib(None, "VmHWM").unwrap_or(0);
    println!("@@ soak {}", report.line());
}

fn is_file(p: &Path) -> bool {
    std::fs::metadata(p).is_ok()
}

/// Entry point of the re-executed child; not a test by itself (does nothing when run by
/// hand).
#[test]
#[ignore = "entry point for the child processes of the other tests"]
fn child() {
    match child_role().as_deref() {
        Some("soak") => soak_child(),
        Some(r) => panic!("unknown role {r}"),
        None => eprintln!("not a child process: nothing to do"),
    }
}
