//! Kill -9 loop (faults.md E4, L2, R9 across real processes): in each iteration a child process
//! (this binary re-executed) connects through the real handshake and streams
//! sequence-numbered, self-checking messages of random sizes as fast as it can, and the test
//! SIGKILLs it at a random instant: before it connects, during the handshake, mid-stream, or
//! while it is blocked on a full ring. The test, the receiver, must get a gap-free prefix of
//! the stream, every byte intact, at least every message the child saw accepted, and then an
//! error (`PeerGone`, or a failed accept if the handshake had not completed) within 100 ms of
//! the kill; no fd or ring mapping may outlive an iteration, and no zombie remain.
//!
//! 200 iterations by default (the CI setting); `SHMPIPE_KILL_ITERATIONS=N` for more. The
//! choices (where to aim the kill, ring size, how the receiver waits, message sizes) come from
//! a seeded generator: the seed is printed, and `SHMPIPE_KILL_SEED=S` replays them (the
//! instants themselves depend on the scheduler).

use std::io::Read;
use std::os::unix::fs::FileExt;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::sync::mpsc::{self, RecvTimeoutError as ChanTimeout};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec, poll};
use rustix::process::{Pid, PidfdFlags, Signal};
use shmpipe_fuzz::deadline;
use shmpipe_fuzz::process::{
    Peer, Pipes, Rng, Stream, TempDir, child_role, children, env_u64, fd_count, fd_table,
    memfd_mappings,
};
use shmpipe_handshake::{AcceptError, Listener, Options, connect};
use shmpipe_ring::{RecvError, RecvTimeoutError, TryRecvError, WaitStrategy};

const ITERATIONS_VAR: &str = "SHMPIPE_KILL_ITERATIONS";
const SEED_VAR: &str = "SHMPIPE_KILL_SEED";
/// From `kill(2)` to the error, at most (faults.md E4).
const DETECTION_LIMIT: Duration = Duration::from_millis(100);
/// The child records how many of its sends have returned, every this many messages.
const COUNT_EVERY: u64 = 16;

/// When the killer strikes.
#[derive(Debug, Clone, Copy)]
enum Aim {
    /// This long after the spawn: a fraction of the usual spawn-to-accept time, so mostly
    /// before the child connects.
    Startup(Duration),
    /// This long after the spawn: around the usual end of the handshake.
    Handshake(Duration),
    /// This long after the accept, while the test reads as fast as it can.
    Stream(Duration),
    /// This long after the accept, while the test reads nothing: the child fills the ring
    /// and blocks in `send`.
    Blocked(Duration),
}

#[derive(Debug, Clone, Copy)]
struct Plan {
    aim: Aim,
    /// The child's send ring (the one the test reads).
    capacity: usize,
    /// How the test's receiver waits.
    wait: WaitStrategy,
    /// Stream id: message lengths and bytes derive from it.
    stream: u64,
}

impl Plan {
    fn draw(rng: &mut Rng, usual_accept: Duration) -> Plan {
        let kib = |k: usize| k << 10;
        let (aim, capacity) = match rng.below(100) {
            0..15 => (
                // Aimed at the whole start-up, most of these land in the handshake: the first
                // quarter gives a few kills before the connect in every 200 iterations.
                Aim::Startup(usual_accept.mul_f64(0.25 * rng.unit())),
                rng.pick(&[kib(4), kib(64), kib(1024)]),
            ),
            // Big rings make the handshake longer (the child creates and fallocates its
            // ring in the middle of it), so more of these land inside it.
            15..30 => (
                Aim::Handshake(usual_accept.mul_f64(0.8 + 0.3 * rng.unit())),
                rng.pick(&[kib(4), kib(1024), kib(4096), kib(16384)]),
            ),
            30..75 => (
                Aim::Stream(Duration::from_micros(rng.range(0, 40_000))),
                rng.pick(&[kib(4), kib(16), kib(64), kib(256), kib(1024)]),
            ),
            _ => (
                Aim::Blocked(Duration::from_micros(rng.range(2_000, 12_000))),
                rng.pick(&[kib(4), kib(16), kib(64)]),
            ),
        };
        let wait = if rng.below(2) == 0 {
            WaitStrategy::Block
        } else {
            WaitStrategy::default()
        };
        Plan {
            aim,
            capacity,
            wait,
            stream: rng.next_u64(),
        }
    }
}

/// What the iterations added up to.
#[derive(Debug, Default)]
struct Tally {
    before_connect: u64,
    in_handshake: u64,
    mid_stream: u64,
    /// Of `mid_stream`: killed before its first message arrived.
    mid_stream_empty: u64,
    /// Connected iterations whose last receive was asleep when the death woke it.
    woken: u64,
    blocked: u64,
    /// Aimed at a full ring, but the child was not (yet) asleep in `send` when it died.
    blocked_missed: u64,
    messages: u64,
    bytes: u64,
    detections: u64,
    latency_max: Duration,
    latency_sum: Duration,
    /// The longest from the kill to the child's exit, as its pidfd told the killer.
    exit_max: Duration,
    /// The slowest detection: what, where, and the load average then.
    worst: String,
}

impl Tally {
    /// The error came at `at`; the child was killed at `kill` and seen to exit at `exit`.
    fn detected(
        &mut self,
        at: Instant,
        (kill, exit): (Instant, Option<Instant>),
        what: &str,
        i: u64,
        plan: &Plan,
    ) {
        let after = at.saturating_duration_since(kill);
        let exit = exit.map(|e| e.saturating_duration_since(kill));
        let how = format!(
            "iteration {i}, {what}, {plan:?}: error {after:.2?} after the kill, exit seen \
             {exit:.2?} after it, load average {}",
            loadavg().trim()
        );
        assert!(at >= kill, "error before the kill: {how}");
        assert!(
            after < DETECTION_LIMIT,
            "too late (limit {DETECTION_LIMIT:?}): {how}"
        );
        self.detections += 1;
        if after > self.latency_max {
            self.worst = how;
        }
        self.latency_max = self.latency_max.max(after);
        self.latency_sum += after;
        self.exit_max = self.exit_max.max(exit.unwrap_or_default());
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg").unwrap_or_default()
}

/// The thread that kills the child at the planned instant, then notes when the child's
/// pidfd says it has exited (kill to exit is the kernel's share of the detection latency).
/// Dropping it kills the child at once if that has not happened yet, and joins the thread.
struct Killer {
    accepted: Option<mpsc::Sender<Instant>>,
    report: mpsc::Receiver<(Instant, Option<Instant>)>,
    killed_at: Option<(Instant, Option<Instant>)>,
    thread: Option<JoinHandle<()>>,
}

impl Killer {
    fn start(pid: Pid, aim: Aim, spawned: Instant) -> Killer {
        let (accepted, inbox) = mpsc::channel::<Instant>();
        let (report, reports) = mpsc::channel();
        let thread = std::thread::spawn(move || {
            let at = match aim {
                Aim::Startup(d) | Aim::Handshake(d) => spawned + d,
                Aim::Stream(d) | Aim::Blocked(d) => {
                    match inbox.recv_timeout(Duration::from_secs(10)) {
                        Ok(t) => t + d,
                        Err(_) => Instant::now(),
                    }
                }
            };
            let pidfd = rustix::process::pidfd_open(pid, PidfdFlags::empty()).ok();
            // Sleep until `at`; strike at once if the test gives up (drops its sender).
            loop {
                let left = at.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                match inbox.recv_timeout(left) {
                    Ok(_) => {}
                    Err(ChanTimeout::Timeout | ChanTimeout::Disconnected) => break,
                }
            }
            let t = Instant::now();
            // The child is reaped only after this thread is joined: the pid is still ours.
            rustix::process::kill_process(pid, Signal::KILL).expect("kill(SIGKILL)");
            let exited = pidfd.and_then(|fd| {
                let mut fds = [PollFd::new(&fd, PollFlags::IN)];
                let limit = Timespec::try_from(Duration::from_secs(5)).expect("timespec");
                loop {
                    match poll(&mut fds, Some(&limit)) {
                        Ok(n) => break (n > 0).then(Instant::now),
                        Err(rustix::io::Errno::INTR) => {}
                        Err(_) => break None,
                    }
                }
            });
            let _ = report.send((t, exited));
        });
        Killer {
            accepted: Some(accepted),
            report: reports,
            killed_at: None,
            thread: Some(thread),
        }
    }

    fn accepted(&self, at: Instant) {
        if let Some(tx) = &self.accepted {
            let _ = tx.send(at);
        }
    }

    /// The instant of the kill, if it has happened (and the child's exit was seen).
    fn try_killed(&mut self) -> Option<Instant> {
        if self.killed_at.is_none() {
            self.killed_at = self.report.try_recv().ok();
        }
        self.killed_at.map(|k| k.0)
    }

    /// The instant of the kill and of the child's exit, waiting for them (at most `limit`).
    fn killed(&mut self, limit: Duration) -> (Instant, Option<Instant>) {
        if self.killed_at.is_none() {
            let t = self
                .report
                .recv_timeout(limit)
                .expect("the killer did not strike in time");
            self.killed_at = Some(t);
        }
        self.killed_at.expect("set")
    }
}

impl Drop for Killer {
    fn drop(&mut self) {
        self.accepted = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn readable(fd: impl rustix::fd::AsFd) -> bool {
    let mut fds = [PollFd::new(&fd, PollFlags::IN)];
    poll(&mut fds, Some(&Timespec::default())).expect("poll") > 0
}

/// Where one iteration's files live.
struct Paths {
    sock: PathBuf,
    count: PathBuf,
}

/// One iteration; returns the spawn-to-accept time if the handshake completed.
fn iteration(i: u64, plan: &Plan, paths: &Paths, tally: &mut Tally) -> Option<Duration> {
    std::fs::write(&paths.count, 0u64.to_le_bytes()).expect("reset the count file");
    let opts = Options::new()
        .send_capacity(4096)
        .handshake_timeout(Duration::from_secs(5));
    let mut listener = Listener::bind(&paths.sock, &opts).expect("bind");
    let env = [
        ("PEER_PATH", paths.sock.display().to_string()),
        ("COUNT_FILE", paths.count.display().to_string()),
        ("CAPACITY", plan.capacity.to_string()),
        ("STREAM", plan.stream.to_string()),
    ];
    // Declared before the killer, so dropped after it: the killer strikes (if it has not),
    // then the child is reaped.
    let mut peer = Peer::spawn("stream", &env, Pipes::StderrOnly);
    let spawned = Instant::now();
    let mut killer = Killer::start(peer.pid(), plan.aim, spawned);
    let mut reaped = None;
    let ctx = |what: &str| format!("iteration {i} ({plan:?}): {what}");

    // Accept in short slices: a child killed before it connected produces no event at all,
    // and is recognised once it is reaped with nothing pending.
    let hard = spawned + Duration::from_secs(10);
    let accepted = loop {
        let r = listener.accept_timeout(Duration::from_millis(2));
        let now = Instant::now();
        match r {
            Ok(conn) => break Some((conn, now)),
            Err(AcceptError::Handshake { source, .. }) => {
                let k = killer.killed(Duration::from_secs(2));
                let what = format!("killed in the handshake ({source})");
                tally.detected(now, k, &what, i, plan);
                tally.in_handshake += 1;
                break None;
            }
            Err(AcceptError::Timeout) => {
                if let Some(k) = killer.try_killed() {
                    if reaped.is_none() {
                        reaped = Some(peer.reap(Duration::from_secs(5)).unwrap_or_else(|| {
                            panic!("{}", ctx("the child is alive 5 s after SIGKILL"))
                        }));
                    }
                    // Dead and reaped: whatever it connected is in our backlog or pending.
                    if listener.pending() == 0 && !readable(&listener) {
                        tally.before_connect += 1;
                        break None;
                    }
                    assert!(
                        now < k + Duration::from_secs(1),
                        "{}",
                        ctx("the killed child's connection still pending 1 s after the kill")
                    );
                }
                assert!(now < hard, "{}", ctx("no connection and no kill in 10 s"));
            }
            Err(e) => panic!("{}", ctx(&format!("accept: {e}"))),
        }
    };

    let mut received = None;
    let mut usual = None;
    if let Some((conn, at)) = accepted {
        killer.accepted(at);
        usual = Some(at - spawned);
        let (_tx, mut rx) = conn.split();
        rx.set_wait(plan.wait);
        let blocked = matches!(plan.aim, Aim::Blocked(_));
        if blocked {
            // Read nothing until the child is dead: it fills the ring and sleeps in `send`.
            killer.killed(Duration::from_secs(12));
        }
        let max = rx.max_message();
        let mut stream = Stream::new(plan.stream);
        let mut buf = Vec::new();
        let (gone, slept) = loop {
            let slept = rx.stats().sleeps;
            match rx.recv_timeout(&mut buf, Duration::from_secs(3)) {
                Ok(_) => {
                    if let Err(e) = stream.verify(&buf, max) {
                        panic!("{}", ctx(&e));
                    }
                }
                Err(RecvTimeoutError::Failed(RecvError::PeerGone)) => {
                    break (Instant::now(), slept);
                }
                Err(RecvTimeoutError::Timeout) => panic!(
                    "{}",
                    ctx(&format!(
                        "after {} messages, neither a message nor an error for 3 s",
                        stream.next
                    ))
                ),
                Err(RecvTimeoutError::Failed(e)) => {
                    panic!("{}", ctx(&format!("after {} messages: {e}", stream.next)))
                }
            }
        };
        // The end is final: nothing more arrives. (A blocking call's `PeerGone` does not
        // reach the `try_*` calls by itself; `is_peer_gone` passes it on, as documented.)
        assert!(
            rx.is_peer_gone(),
            "{}",
            ctx("PeerGone, yet not is_peer_gone")
        );
        match rx.try_recv(&mut buf) {
            Err(TryRecvError::Failed(RecvError::PeerGone)) => {}
            other => panic!("{}", ctx(&format!("after PeerGone: {other:?}"))),
        }
        let k = killer.killed(Duration::from_secs(2));
        // The call that ended in PeerGone went to sleep: the death woke it (faults.md E4).
        tally.woken += u64::from(rx.stats().sleeps > slept);
        // Nothing was released before the kill in a blocked iteration, so a wake-up counted
        // now means the producer's "asleep" flag was up when it died.
        let asleep = rx.stats().wakeups_sent > 0;
        let what = if blocked && asleep {
            tally.blocked += 1;
            "killed asleep on a full ring"
        } else {
            tally.blocked_missed += u64::from(blocked);
            tally.mid_stream += 1;
            tally.mid_stream_empty += u64::from(stream.next == 0);
            "killed mid-stream"
        };
        tally.detected(gone, k, what, i, plan);
        tally.messages += stream.next;
        tally.bytes += stream.bytes;
        received = Some(stream.next);
    }

    drop(killer);
    let (status, stderr) = match reaped {
        Some(r) => r,
        None => peer
            .reap(Duration::from_secs(5))
            .unwrap_or_else(|| panic!("{}", ctx("the child is alive 5 s after SIGKILL"))),
    };
    assert_eq!(
        status.signal(),
        Some(Signal::KILL.as_raw()),
        "{}",
        ctx(&format!("the child ended by itself ({status}):\n{stderr}"))
    );
    // Every message the child saw accepted (as of its last count) was received.
    let mut count = [0u8; 8];
    std::fs::File::open(&paths.count)
        .and_then(|mut f| f.read_exact(&mut count))
        .expect("read the count file");
    let committed = u64::from_le_bytes(count);
    assert!(
        received.unwrap_or(0) >= committed,
        "{}",
        ctx(&format!(
            "the child had {committed} sends accepted, we received {received:?}"
        ))
    );
    drop(listener);
    usual
}

#[test]
fn kill_9_at_random_instants_leaves_a_verified_prefix_and_a_prompt_error() {
    let iterations = env_u64(ITERATIONS_VAR, 200);
    let seed = shmpipe_fuzz::process::seed(SEED_VAR);
    eprintln!("kill loop: {iterations} iterations, {SEED_VAR}={seed}");
    let started = Instant::now();
    let (tally, usual) = deadline(
        60 + iterations,
        "kill loop",
        move || -> (Tally, Duration) {
            let dir = TempDir::tagged("kill");
            let paths = Paths {
                sock: dir.path().join("s"),
                count: dir.path().join("count"),
            };
            let mut rng = shmpipe_fuzz::process::Rng::new(seed);
            let mut tally = Tally::default();
            // Spawn-to-accept, as a moving average: where the early aims point.
            let mut usual = Duration::from_millis(15);
            let fds = fd_count();
            for i in 0..iterations {
                let plan = Plan::draw(&mut rng, usual);
                if let Some(d) = iteration(i, &plan, &paths, &mut tally) {
                    usual = usual.mul_f64(0.8) + d.mul_f64(0.2);
                }
                let now = fd_count();
                assert_eq!(
                    now,
                    fds,
                    "iteration {i} ({plan:?}): {now} fds open, {fds} before the loop:\n{}",
                    fd_table()
                );
                let maps = memfd_mappings();
                assert_eq!(
                    maps, 0,
                    "iteration {i} ({plan:?}): {maps} rings still mapped"
                );
                if let Some(kids) = children() {
                    assert!(kids.is_empty(), "iteration {i}: children left: {kids:?}");
                }
            }
            (tally, usual)
        },
    );
    let t = &tally;
    eprintln!(
        "kill loop: {iterations} iterations in {:.1} s ({SEED_VAR}={seed}): killed before \
         connecting {}, in the handshake {}, mid-stream {} ({} before the first message), \
         asleep on a full ring {} (+{} aimed there but not yet asleep); the receiver asleep \
         when woken by the death {}; {} messages ({} bytes) verified; detection latency max \
         {:.2} ms, mean {:.2} ms over {} errors (kill to exit at most {:.2} ms; slowest: {}); \
         spawn to accept {usual:.2?} (moving average)",
        started.elapsed().as_secs_f64(),
        t.before_connect,
        t.in_handshake,
        t.mid_stream,
        t.mid_stream_empty,
        t.blocked,
        t.blocked_missed,
        t.woken,
        t.messages,
        t.bytes,
        t.latency_max.as_secs_f64() * 1e3,
        t.latency_sum.as_secs_f64() * 1e3 / t.detections.max(1) as f64,
        t.detections,
        t.exit_max.as_secs_f64() * 1e3,
        t.worst,
    );
    // The loop proved what it claims only if each kind of kill happened.
    assert!(t.before_connect > 0, "no kill before the connect");
    assert!(t.mid_stream > 0, "no kill mid-stream");
    assert!(t.blocked > 0, "no kill of a child asleep on a full ring");
    assert!(t.messages > 0, "no message verified");
}

/// The child: connect and stream until killed.
fn stream_child() {
    let var = |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("{k} not set"));
    let counter = std::fs::OpenOptions::new()
        .write(true)
        .open(var("COUNT_FILE"))
        .expect("open the count file");
    let opts = Options::new()
        .send_capacity(var("CAPACITY").parse().expect("CAPACITY"))
        .handshake_timeout(Duration::from_secs(5));
    let (mut tx, _rx) = connect(var("PEER_PATH"), &opts).expect("connect").split();
    let max = tx.max_message();
    let mut stream = Stream::new(var("STREAM").parse().expect("STREAM"));
    let mut buf = Vec::new();
    loop {
        stream.produce(max, &mut buf);
        if let Err(e) = tx.send(&buf) {
            // The test never goes first: this is a failure it reports.
            eprintln!("send of message {} failed: {e}", stream.next - 1);
            std::process::exit(2);
        }
        if stream.next % COUNT_EVERY == 0 {
            counter
                .write_at(&stream.next.to_le_bytes(), 0)
                .expect("write the count");
        }
    }
}

/// Entry point of the re-executed child; not a test by itself (does nothing when run by
/// hand).
#[test]
#[ignore = "entry point for the child processes of the other tests"]
fn child() {
    match child_role().as_deref() {
        Some("stream") => stream_child(),
        Some(r) => panic!("unknown role {r}"),
        None => eprintln!("not a child process: nothing to do"),
    }
}
