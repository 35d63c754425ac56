//! The shmpipe transports on tokio (`shmpipe-tokio`, `shmpipe-tokio-spin`): the rings of
//! `shmpipe` and `shmpipe-spin`, connected by the same blocking handshake with the same
//! options, then put on the reactor of a `current_thread` runtime
//! ([`shmpipe_handshake::tokio::Sender::new`], [`Receiver::new`]) and driven through the
//! async API. Each round is one `block_on`, inside which every message is an `.await`:
//! `send(..).await` per message (or batches staged with `batch()` and `try_send`),
//! `drain(..).await` on the consumer, `send(..).await` and `recv(..).await` for round trips.
//! Every byte is checked as in the other transports' drivers ([`crate::worker`]).
//!
//! `shmpipe-tokio` waits as the API does by default (a few yields to the runtime, then it
//! parks), spinning first only if `--spin-us` gives it a `set_spin` budget;
//! `shmpipe-tokio-park` parks at once (`set_yields(0)`); `shmpipe-tokio-spin` spins for as
//! long as it takes and never parks.

use std::time::{Duration, Instant};

use shmpipe_handshake::tokio::{Receiver, Sender};
use shmpipe_ring::{RecvError, TrySendError};
use tokio::runtime::Runtime;

use super::{Transport, ring};
use crate::payload::Pattern;
use crate::worker::{Body, Checks, Fault, Job, Round, RoundReport, Worker};
use crate::{Counters, Error, Role, Workload, monotonic_ns, process_cpu_ns};

/// `shmpipe-tokio-spin`'s spin budget (`set_spin`): as long as it takes, which is what
/// `shmpipe-spin`'s [`WaitStrategy::Spin`](shmpipe_ring::WaitStrategy::Spin) does.
const SPIN: Duration = Duration::MAX;

/// Worker: connect through the blocking handshake, put the halves this side uses on a
/// `current_thread` runtime's reactor, and serve rounds.
pub(super) fn run(w: &mut Worker, job: &Job, t: Transport) -> Result<(), Error> {
    let rtt = matches!(job.workload, Workload::Rtt(_));
    let producer = job.role == Role::Producer;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Io {
            op: "tokio runtime",
            source: e,
        })?;
    let conn = ring::connect(job, t.wait().expect("a ring"))?;
    let (sender, receiver) = conn.split();
    let spin = match (t, job.spin_us) {
        (Transport::ShmpipeTokioSpin, _) => SPIN,
        (_, Some(us)) => Duration::from_micros(us),
        (_, None) => Duration::ZERO,
    };
    let yields = match t {
        Transport::ShmpipeTokioPark => 0,
        _ => shmpipe_handshake::tokio::DEFAULT_YIELDS,
    };
    let reactor = |e| Error::Io {
        op: "epoll_ctl (tokio)",
        source: e,
    };
    // The unused half stays open until the end (dropping it would close its ring).
    let (tx, rx, spare_tx, spare_rx) = {
        let _rt = rt.enter();
        let (tx, spare_tx) = if producer || rtt {
            let mut tx = Sender::new(sender).map_err(reactor)?;
            tx.set_spin(spin);
            tx.set_yields(yields);
            (Some(tx), None)
        } else {
            (None, Some(sender))
        };
        let (rx, spare_rx) = if !producer || rtt {
            let mut rx = Receiver::new(receiver).map_err(reactor)?;
            rx.set_spin(spin);
            rx.set_yields(yields);
            (Some(rx), None)
        } else {
            (None, Some(receiver))
        };
        (tx, rx, spare_tx, spare_rx)
    };
    let size = job.workload.size();
    let mut body = AsyncBody {
        ends: Ends {
            tx,
            rx,
            role: job.role,
            workload: job.workload,
            pattern: Pattern::new(size),
            fault: job.fault,
            batch: job.batch.max(1),
            drain_max: if job.drain_max == 0 {
                usize::MAX
            } else {
                job.drain_max
            },
            out: vec![0; size * job.batch.max(1)],
            inbox: Vec::with_capacity(size),
            sent: 0,
            expected: 0,
            checks: Checks::default(),
        },
        rt,
    };
    let r = w.serve(&mut body);
    drop(body);
    drop((spare_tx, spare_rx));
    r
}

/// The runtime and this side's ends; each round is one `block_on`.
#[derive(Debug)]
struct AsyncBody {
    /// Declared first: the ends leave the reactor before the runtime goes.
    ends: Ends,
    rt: Runtime,
}

/// This side's async halves and the drivers' state.
#[derive(Debug)]
struct Ends {
    tx: Option<Sender>,
    rx: Option<Receiver>,
    role: Role,
    workload: Workload,
    pattern: Pattern,
    fault: Option<Fault>,
    /// Messages staged per publication (1: `send(..).await` each).
    batch: usize,
    /// Most messages per `drain`.
    drain_max: usize,
    /// The messages to send: one, or a batch of them back to back.
    out: Vec<u8>,
    /// Where `recv` puts a message.
    inbox: Vec<u8>,
    /// Next sequence number to send / to expect.
    sent: u64,
    expected: u64,
    checks: Checks,
}

fn recv_error(e: RecvError) -> Error {
    match e {
        RecvError::Closed => Error::Eof,
        e => e.into(),
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX).max(1)
}

/// Stage the `size`-byte messages in `msgs` with `batch()` and `try_send`, publishing them
/// with one store; when the ring is full, publish what is staged and `send(..).await` the
/// message that did not fit (the way the tokio `Sender::batch` docs tell a task to batch).
async fn send_batch(tx: &mut Sender, msgs: &[u8], size: usize) -> Result<(), Error> {
    let mut rest = msgs.chunks_exact(size);
    loop {
        let full = {
            let mut b = tx.batch();
            let full = loop {
                let Some(m) = rest.next() else { break None };
                match b.try_send(m) {
                    Ok(()) => {}
                    Err(TrySendError::Full) => break Some(m),
                    Err(TrySendError::Failed(e)) => return Err(e.into()),
                }
            };
            b.publish()?;
            full
        };
        match full {
            Some(m) => tx.send(m).await?,
            None => return Ok(()),
        }
    }
}

impl Ends {
    fn counters(&self) -> Counters {
        let t = self.tx.as_ref().map(|tx| {
            let s = tx.stats();
            Counters {
                wakeups_sent: Some(s.wakeups_sent),
                sleeps: Some(s.sleeps),
            }
        });
        let r = self.rx.as_ref().map(|rx| {
            let s = rx.stats();
            Counters {
                wakeups_sent: Some(s.wakeups_sent),
                sleeps: Some(s.sleeps),
            }
        });
        t.unwrap_or_default().plus(r.unwrap_or_default())
    }

    async fn produce(&mut self, n: u64) -> Result<(), Error> {
        let size = self.pattern.size();
        let tx = self.tx.as_mut().ok_or_else(|| missing("sending"))?;
        let mut left = n;
        while left > 0 {
            let k = left.min(self.batch as u64) as usize;
            for m in self.out[..k * size].chunks_exact_mut(size) {
                crate::worker::write(&self.pattern, self.fault, self.sent, m);
                self.sent += 1;
            }
            if self.batch == 1 {
                tx.send(&self.out[..size]).await?;
            } else {
                send_batch(tx, &self.out[..k * size], size).await?;
            }
            left -= k as u64;
        }
        Ok(())
    }

    async fn consume(&mut self, n: u64) -> Result<(), Error> {
        let rx = self.rx.as_mut().ok_or_else(|| missing("receiving"))?;
        let (pattern, checks, expected) = (&self.pattern, &mut self.checks, &mut self.expected);
        let mut got = 0u64;
        while got < n {
            let max = usize::try_from(n - got)
                .unwrap_or(usize::MAX)
                .min(self.drain_max);
            got += rx
                .drain(max, |m| {
                    checks.record(pattern.check(*expected, m));
                    *expected += 1;
                })
                .await
                .map_err(recv_error)? as u64;
        }
        Ok(())
    }

    async fn ping(&mut self, n: u64) -> Result<crate::Percentiles, Error> {
        let size = self.pattern.size();
        let tx = self.tx.as_mut().ok_or_else(|| missing("sending"))?;
        let rx = self.rx.as_mut().ok_or_else(|| missing("receiving"))?;
        let mut hist = crate::worker::histogram();
        for _ in 0..n {
            let seq = self.sent;
            let msg = &mut self.out[..size];
            crate::worker::write(&self.pattern, self.fault, seq, msg);
            let t0 = Instant::now();
            tx.send(msg).await?;
            rx.recv(&mut self.inbox).await.map_err(recv_error)?;
            self.checks.record(self.pattern.check(seq, &self.inbox));
            hist.saturating_record(nanos(t0.elapsed()));
            self.sent += 1;
        }
        Ok(crate::worker::percentiles(&hist))
    }

    async fn echo(&mut self, n: u64) -> Result<(), Error> {
        let tx = self.tx.as_mut().ok_or_else(|| missing("sending"))?;
        let rx = self.rx.as_mut().ok_or_else(|| missing("receiving"))?;
        for _ in 0..n {
            rx.recv(&mut self.inbox).await.map_err(recv_error)?;
            self.checks
                .record(self.pattern.check(self.expected, &self.inbox));
            self.expected += 1;
            tx.send(&self.inbox).await?;
        }
        Ok(())
    }
}

fn missing(direction: &str) -> Error {
    Error::Protocol(format!(
        "shmpipe on tokio: no {direction} half for this job"
    ))
}

impl Body for AsyncBody {
    fn round(&mut self, r: Round) -> Result<RoundReport, Error> {
        let ends = &mut self.ends;
        let mut rep = RoundReport {
            start_ns: monotonic_ns(),
            ..RoundReport::default()
        };
        if ends.fault == Some(Fault::Stall) && ends.role == Role::Consumer {
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
        match (ends.workload, ends.role) {
            (Workload::Thr(_), Role::Producer) => self.rt.block_on(ends.produce(r.n))?,
            (Workload::Thr(_), Role::Consumer) => self.rt.block_on(ends.consume(r.n))?,
            (Workload::Rtt(_), Role::Producer) => {
                rep.latency = Some(self.rt.block_on(ends.ping(r.n))?);
            }
            (Workload::Rtt(_), Role::Consumer) => self.rt.block_on(ends.echo(r.n))?,
            (Workload::Idle, Role::Producer) => {
                std::thread::sleep(Duration::from_millis(r.idle_ms));
                rep.start_ns = monotonic_ns();
                self.rt.block_on(ends.produce(1))?;
            }
            (Workload::Idle, Role::Consumer) => {
                let cpu = process_cpu_ns();
                self.rt.block_on(ends.consume(1))?;
                rep.cpu_ns = Some(process_cpu_ns() - cpu);
            }
            (_, Role::Solo) => {
                return Err(Error::Protocol("shmpipe on tokio: no solo jobs".into()));
            }
        }
        rep.end_ns = monotonic_ns();
        rep.counters = ends.counters();
        ends.checks.take_into(&mut rep);
        Ok(rep)
    }

    fn stop(&mut self) -> Result<Counters, Error> {
        let counters = self.ends.counters();
        if let Some(tx) = self.ends.tx.take() {
            // Every send and batch published before it returned, and the consumer has
            // checked every message already; don't wait for it.
            let _ = tx.into_inner().close(Duration::ZERO);
        }
        Ok(counters)
    }
}
