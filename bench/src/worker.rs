//! What a worker process runs: receive a [`Job`] and its fds on stdin (the control socket),
//! pin itself, connect its end of the transport, then serve rounds until told to stop.
//!
//! `shmpipe bench --worker`, the worker binary and the criterion bench binaries (re-executing
//! themselves) all end up in [`main_with`], each passing the function that runs the job's
//! transport (`transport::run`; the criterion `ipc` bench passes one that also knows
//! iceoryx2). This module knows no transport: the transports build on it.

use std::os::fd::OwnedFd;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::ctl::Ctl;
use crate::payload::Pattern;
use crate::{Counters, Error, Percentiles, Role, Workload, monotonic_ns, process_cpu_ns};

/// What one worker is asked to do.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Job {
    /// Transport name (`shmpipe`, `pipe`, ..., or a peer library's name in the criterion
    /// benches).
    pub transport: String,
    /// The workload.
    pub workload: Workload,
    /// This worker's side.
    pub role: Role,
    /// CPUs to pin to: this worker's one CPU, or for a solo worker the pair it uses.
    pub cpus: Vec<usize>,
    /// The parent's pid: a worker whose parent is gone exits at once.
    pub parent_pid: i32,
    /// Ring capacity in bytes (ring transports).
    pub capacity: usize,
    /// Messages per publication for batching senders (1: every message on its own).
    pub batch: usize,
    /// Ring consumers take at most this many messages per `drain` call (0: all there are).
    #[serde(default)]
    pub drain_max: usize,
    /// Spin budget of the `shmpipe`, `shmpipe-tokio` and `shmem-ipc-spin` transports, in
    /// microseconds (None: each one's default).
    #[serde(default)]
    pub spin_us: Option<u64>,
    /// Transport-specific rendezvous (a service name, a socket path), if any.
    pub tag: String,
    /// A fault to inject, to prove the checks and the deadlines work.
    #[serde(default)]
    pub fault: Option<Fault>,
}

/// A deliberate failure (`shmpipe bench --inject`, and the tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Fault {
    /// The producer flips one bit in the last byte of message `seq` after writing it.
    Corrupt(u64),
    /// The consumer stops working in its first round (and is killed at the deadline).
    Stall,
}

/// One round: `n` messages (or round trips, or copies).
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Round {
    /// How many.
    pub n: u64,
    /// `idle` only: how long the producer stays quiet before its one message.
    pub idle_ms: u64,
}

/// What a worker reports after a round.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RoundReport {
    /// CLOCK_MONOTONIC when this side started the round (a producer: before its first send).
    pub start_ns: u64,
    /// CLOCK_MONOTONIC when this side finished (a consumer: after its last receive).
    pub end_ns: u64,
    /// Round-trip percentiles (`rtt` producer, spin floor).
    pub latency: Option<Percentiles>,
    /// Messages that failed their check.
    pub errors: u64,
    /// The first failure, described.
    pub first_error: Option<String>,
    /// The transport's counters so far (cumulative).
    pub counters: Counters,
    /// `idle` consumer: CPU time used during the round, in nanoseconds.
    pub cpu_ns: Option<u64>,
}

/// Parent to worker.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ToWorker {
    Job(Job),
    /// Everyone is connected; the peer's pid (to watch through a pidfd).
    Go {
        peer_pid: Option<i32>,
    },
    Round(Round),
    Stop,
}

/// Worker to parent.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum FromWorker {
    Ready,
    RoundDone(RoundReport),
    Done(Counters),
    Failed(String),
}

/// The sending half of a transport, as the drivers use it.
pub trait MsgTx {
    /// The buffer for the next message: exactly the workload's message size. The driver
    /// fills it, then calls [`MsgTx::send`].
    fn buf(&mut self) -> &mut [u8];
    /// Send (or, for a batching sender, stage) the message in [`MsgTx::buf`].
    fn send(&mut self) -> Result<(), Error>;
    /// Make everything sent so far visible to the receiver.
    fn flush(&mut self) -> Result<(), Error> {
        Ok(())
    }
    /// The last call: close the sending side cleanly.
    fn finish(&mut self) -> Result<(), Error> {
        self.flush()
    }
    /// This side's counters.
    fn counters(&self) -> Counters {
        Counters::default()
    }
    /// Watch the peer's pidfd while blocked.
    fn watch_peer(&mut self, _pidfd: &Arc<OwnedFd>) {}
}

/// The receiving half of a transport.
pub trait MsgRx {
    /// Wait for at least one message, then hand up to `max` of those available to `f`, in
    /// order. Returns how many were handed over (at least 1).
    ///
    /// # Errors
    ///
    /// [`Error::Eof`] if the sender closed; any transport error.
    fn recv<F: FnMut(&[u8])>(&mut self, max: usize, f: F) -> Result<usize, Error>;
    /// This side's counters.
    fn counters(&self) -> Counters {
        Counters::default()
    }
    /// Watch the peer's pidfd while blocked.
    fn watch_peer(&mut self, _pidfd: &Arc<OwnedFd>) {}
}

/// What a worker does with each control message; [`Worker::serve`] runs the protocol.
pub trait Body {
    /// Both workers are connected; `peer` is a pidfd of the other one, if there is one.
    fn go(&mut self, _peer: Option<Arc<OwnedFd>>) -> Result<(), Error> {
        Ok(())
    }
    /// Run one round.
    fn round(&mut self, round: Round) -> Result<RoundReport, Error>;
    /// Close cleanly and report the final counters.
    fn stop(&mut self) -> Result<Counters, Error>;
}

/// A worker process: its job, the fds that came with it, and the control channel.
#[derive(Debug)]
pub struct Worker {
    job: Job,
    fds: Vec<OwnedFd>,
    ctl: Ctl,
}

impl Worker {
    /// The job.
    pub fn job(&self) -> &Job {
        &self.job
    }

    /// The fds sent with the job (the worker's end of the transport), in the order the
    /// parent's [`Wiring`](crate::transport::Wiring) listed them.
    pub fn take_fds(&mut self) -> Vec<OwnedFd> {
        std::mem::take(&mut self.fds)
    }

    /// Serve the round protocol: ready, go, rounds, stop.
    ///
    /// # Errors
    ///
    /// Whatever `body` or the control channel reports.
    pub fn serve(&mut self, body: &mut impl Body) -> Result<(), Error> {
        self.ctl.send(&FromWorker::Ready, &[])?;
        let peer = match self.ctl.recv(None)? {
            (ToWorker::Go { peer_pid }, _) => peer_pid.and_then(pidfd),
            (other, _) => return Err(unexpected(&other)),
        };
        body.go(peer)?;
        loop {
            match self.ctl.recv(None)? {
                (ToWorker::Round(r), _) => {
                    let report = body.round(r)?;
                    self.ctl.send(&FromWorker::RoundDone(report), &[])?;
                }
                (ToWorker::Stop, _) => {
                    let counters = body.stop()?;
                    return self.ctl.send(&FromWorker::Done(counters), &[]);
                }
                (other, _) => return Err(unexpected(&other)),
            }
        }
    }

    /// Run the standard message drivers (`thr`, `rtt`, `idle`) over a transport's two
    /// halves: a producer of `thr` needs only `tx`, a consumer only `rx`; `rtt` needs both.
    ///
    /// # Errors
    ///
    /// As for [`Worker::serve`]; a missing half is a protocol error.
    pub fn drive<T: MsgTx, R: MsgRx>(&mut self, tx: Option<T>, rx: Option<R>) -> Result<(), Error> {
        let mut body = Driver::new(&self.job, tx, rx)?;
        self.serve(&mut body)
    }
}

fn unexpected(m: &ToWorker) -> Error {
    Error::Protocol(format!("unexpected control message {m:?}"))
}

fn pidfd(pid: i32) -> Option<Arc<OwnedFd>> {
    let pid = rustix::process::Pid::from_raw(pid)?;
    rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty())
        .ok()
        .map(Arc::new)
}

/// The entry point of a worker process. `run` runs the job's transport (it fails on a
/// transport it does not know).
pub fn main_with(run: fn(&mut Worker) -> Result<(), Error>) -> ExitCode {
    let mut w = match start() {
        Ok(w) => w,
        Err(e) => {
            eprintln!("shmpipe bench worker: {e}");
            return ExitCode::FAILURE;
        }
    };
    match run(&mut w) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The parent shows this; if it is gone, stderr is the last resort.
            if w.ctl.send(&FromWorker::Failed(e.to_string()), &[]).is_err() {
                eprintln!("shmpipe bench worker ({}): {e}", w.job.role.name());
            }
            ExitCode::FAILURE
        }
    }
}

fn start() -> Result<Worker, Error> {
    // Die with the parent (PR_SET_PDEATHSIG), and make sure it has not died already.
    rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
        .map_err(Error::os("prctl(PR_SET_PDEATHSIG)"))?;
    let ctl = Ctl::from_stdin()?;
    let (job, fds) = match ctl.recv(None)? {
        (ToWorker::Job(job), fds) => (job, fds),
        (other, _) => return Err(unexpected(&other)),
    };
    if rustix::process::getppid().map(|p| p.as_raw_nonzero().get()) != Some(job.parent_pid) {
        return Err(Error::Protocol("the parent is gone".into()));
    }
    if job.role != Role::Solo {
        if let Some(&cpu) = job.cpus.first() {
            crate::pin_to(cpu)?;
        }
    }
    Ok(Worker { job, fds, ctl })
}

/// A latency histogram from 1 ns to 100 s at 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("valid histogram bounds")
}

/// The percentiles the reports carry.
pub fn percentiles(h: &Histogram<u64>) -> Percentiles {
    Percentiles {
        p50: h.value_at_quantile(0.5),
        p99: h.value_at_quantile(0.99),
        p999: h.value_at_quantile(0.999),
        max: h.max(),
    }
}

/// Counts check failures and keeps the first one's description.
#[derive(Debug, Default)]
pub struct Checks {
    /// Failures so far.
    pub errors: u64,
    /// The first failure.
    pub first: Option<String>,
}

impl Checks {
    /// Record the result of one check.
    #[inline]
    pub fn record<E: std::fmt::Display>(&mut self, r: Result<(), E>) {
        if let Err(e) = r {
            self.fail(e.to_string());
        }
    }

    /// Record a failure.
    #[cold]
    pub fn fail(&mut self, what: String) {
        self.errors += 1;
        if self.first.is_none() {
            self.first = Some(what);
        }
    }

    pub(crate) fn take_into(&mut self, r: &mut RoundReport) {
        r.errors = std::mem::take(&mut self.errors);
        r.first_error = self.first.take();
    }
}

/// Write message `seq` into `buf`, with the injected corruption if it is this one.
#[inline]
pub(crate) fn write(pattern: &Pattern, fault: Option<Fault>, seq: u64, buf: &mut [u8]) {
    pattern.fill(seq, buf);
    if fault == Some(Fault::Corrupt(seq)) {
        let last = buf.len() - 1;
        buf[last] ^= 1;
    }
}

/// The standard drivers over a [`MsgTx`]/[`MsgRx`] pair.
struct Driver<T, R> {
    tx: Option<T>,
    rx: Option<R>,
    role: Role,
    workload: Workload,
    pattern: Pattern,
    fault: Option<Fault>,
    /// Next sequence number to send / to expect.
    sent: u64,
    expected: u64,
    checks: Checks,
}

impl<T: MsgTx, R: MsgRx> Driver<T, R> {
    fn new(job: &Job, tx: Option<T>, rx: Option<R>) -> Result<Self, Error> {
        let need_tx = matches!(
            (job.workload, job.role),
            (_, Role::Producer) | (Workload::Rtt(_), Role::Consumer)
        );
        let need_rx = matches!(
            (job.workload, job.role),
            (_, Role::Consumer) | (Workload::Rtt(_), Role::Producer)
        );
        if (need_tx && tx.is_none()) || (need_rx && rx.is_none()) || job.role == Role::Solo {
            return Err(Error::Protocol(format!(
                "transport {} lacks a direction for {} as {}",
                job.transport,
                job.workload,
                job.role.name()
            )));
        }
        Ok(Driver {
            tx,
            rx,
            role: job.role,
            workload: job.workload,
            pattern: Pattern::new(job.workload.size()),
            fault: job.fault,
            sent: 0,
            expected: 0,
            checks: Checks::default(),
        })
    }

    fn counters(&self) -> Counters {
        let t = self.tx.as_ref().map(MsgTx::counters).unwrap_or_default();
        let r = self.rx.as_ref().map(MsgRx::counters).unwrap_or_default();
        t.plus(r)
    }

    fn produce(&mut self, n: u64) -> Result<(), Error> {
        let tx = self.tx.as_mut().expect("checked in new");
        for _ in 0..n {
            write(&self.pattern, self.fault, self.sent, tx.buf());
            tx.send()?;
            self.sent += 1;
        }
        tx.flush()
    }

    fn consume(&mut self, n: u64) -> Result<(), Error> {
        let rx = self.rx.as_mut().expect("checked in new");
        let (pattern, checks, expected) = (&self.pattern, &mut self.checks, &mut self.expected);
        let mut got = 0u64;
        while got < n {
            let max = usize::try_from(n - got).unwrap_or(usize::MAX);
            got += rx.recv(max, |m| {
                checks.record(pattern.check(*expected, m));
                *expected += 1;
            })? as u64;
        }
        Ok(())
    }

    fn ping(&mut self, n: u64) -> Result<Percentiles, Error> {
        let tx = self.tx.as_mut().expect("checked in new");
        let rx = self.rx.as_mut().expect("checked in new");
        let mut hist = histogram();
        for _ in 0..n {
            write(&self.pattern, self.fault, self.sent, tx.buf());
            let (pattern, checks, seq) = (&self.pattern, &mut self.checks, self.sent);
            let t0 = Instant::now();
            tx.send()?;
            tx.flush()?;
            rx.recv(1, |m| checks.record(pattern.check(seq, m)))?;
            let dt = t0.elapsed();
            hist.saturating_record(u64::try_from(dt.as_nanos()).unwrap_or(u64::MAX).max(1));
            self.sent += 1;
        }
        Ok(percentiles(&hist))
    }

    fn echo(&mut self, n: u64) -> Result<(), Error> {
        let tx = self.tx.as_mut().expect("checked in new");
        let rx = self.rx.as_mut().expect("checked in new");
        for _ in 0..n {
            let (pattern, checks, seq) = (&self.pattern, &mut self.checks, self.expected);
            rx.recv(1, |m| {
                checks.record(pattern.check(seq, m));
                let out = tx.buf();
                if out.len() == m.len() {
                    out.copy_from_slice(m);
                }
            })?;
            self.expected += 1;
            tx.send()?;
            tx.flush()?;
        }
        Ok(())
    }
}

impl<T: MsgTx, R: MsgRx> Body for Driver<T, R> {
    fn go(&mut self, peer: Option<Arc<OwnedFd>>) -> Result<(), Error> {
        if let Some(p) = &peer {
            if let Some(tx) = &mut self.tx {
                tx.watch_peer(p);
            }
            if let Some(rx) = &mut self.rx {
                rx.watch_peer(p);
            }
        }
        Ok(())
    }

    fn round(&mut self, r: Round) -> Result<RoundReport, Error> {
        let mut rep = RoundReport {
            start_ns: monotonic_ns(),
            ..RoundReport::default()
        };
        if self.fault == Some(Fault::Stall) && self.role == Role::Consumer {
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
        match (self.workload, self.role) {
            (Workload::Thr(_), Role::Producer) => self.produce(r.n)?,
            (Workload::Thr(_), Role::Consumer) => self.consume(r.n)?,
            (Workload::Rtt(_), Role::Producer) => rep.latency = Some(self.ping(r.n)?),
            (Workload::Rtt(_), Role::Consumer) => self.echo(r.n)?,
            (Workload::Idle, Role::Producer) => {
                std::thread::sleep(Duration::from_millis(r.idle_ms));
                rep.start_ns = monotonic_ns();
                self.produce(1)?;
            }
            (Workload::Idle, Role::Consumer) => {
                let cpu = process_cpu_ns();
                self.consume(1)?;
                rep.cpu_ns = Some(process_cpu_ns() - cpu);
            }
            (_, Role::Solo) => unreachable!("rejected in new"),
        }
        rep.end_ns = monotonic_ns();
        rep.counters = self.counters();
        self.checks.take_into(&mut rep);
        Ok(rep)
    }

    fn stop(&mut self) -> Result<Counters, Error> {
        if let Some(tx) = &mut self.tx {
            tx.finish()?;
        }
        Ok(self.counters())
    }
}
