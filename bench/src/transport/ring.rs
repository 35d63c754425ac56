//! The shmpipe transports (`shmpipe`, `shmpipe-spin`, `shmpipe-block`): the two workers
//! connect through the handshake, one ring each way, and the bench drives either end the way
//! a user of it would ([`ProducerEnd`], [`ConsumerEnd`], wrapped in [`RingTx`] / [`RingRx`]).

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use shmpipe_ring::{Batch, Config, Consumer, Producer, RecvError, SendError, WaitStrategy};

use super::{Transport, Wiring};
use crate::worker::{Job, MsgRx, MsgTx, Worker};
use crate::{Counters, Error, Role, Workload};

/// The ring configuration both sides of a bench ring agree on.
pub fn ring_config(capacity: usize, wait: WaitStrategy) -> Config {
    Config::new().capacity(capacity).wait(wait)
}

/// Parent: no kernel objects, a socket path for the handshake instead (each worker creates
/// the ring it sends on, as any two processes using shmpipe would).
pub(super) fn wire(wiring: &mut Wiring, w: Workload, capacity: usize) -> Result<(), Error> {
    let config = ring_config(capacity, WaitStrategy::default());
    if w.size() > config.max_message_bytes() {
        return Err(Error::Protocol(format!(
            "{w}: messages exceed the ring's maximum of {} bytes",
            config.max_message_bytes()
        )));
    }
    let dir = tempfile::Builder::new()
        .prefix("shmpipe-bench-")
        .tempdir()
        .map_err(|e| Error::Io {
            op: "mkdir",
            source: e,
        })?;
    wiring.tag = dir.path().join("s").to_string_lossy().into_owned();
    wiring.dir = Some(dir);
    Ok(())
}

/// How long a worker waits for its peer's half of the handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Worker: connect through the handshake and serve rounds.
pub(super) fn run(w: &mut Worker, job: &Job, t: Transport) -> Result<(), Error> {
    let size = job.workload.size();
    let rtt = matches!(job.workload, Workload::Rtt(_));
    let producer = job.role == Role::Producer;
    let wait = match (t, job.spin_us) {
        (Transport::Shmpipe, Some(us)) => WaitStrategy::SpinThenBlock(Duration::from_micros(us)),
        _ => t.wait().expect("a ring"),
    };
    let conn = connect(job, wait)?;
    let (sender, receiver) = conn.split();
    let sends = producer || rtt;
    let recvs = !producer || rtt;
    // The unused half stays open until the end (dropping it would close its ring).
    let (tx, spare_tx) = if sends {
        (Some(RingTx::new(sender, size, job.batch)), None)
    } else {
        (None, Some(sender))
    };
    let (rx, spare_rx) = if recvs {
        (Some(RingRx::new(receiver, job.drain_max)), None)
    } else {
        (None, Some(receiver))
    };
    let r = w.drive(tx, rx);
    drop((spare_tx, spare_rx));
    r
}

/// Worker: the job's connection through the handshake, with waits of strategy `wait`. The
/// consumer listens, the producer connects: one ring each way, of the job's capacity.
pub(super) fn connect(
    job: &Job,
    wait: WaitStrategy,
) -> Result<shmpipe_handshake::Connection, Error> {
    let options = shmpipe_handshake::Options::new()
        .capacity(job.capacity)
        .wait(wait)
        .handshake_timeout(HANDSHAKE_TIMEOUT);
    if job.role == Role::Producer {
        shmpipe_handshake::connect(
            &job.tag,
            // The two workers start at the same time: wait for the consumer's listener.
            &options.clone().wait_for_listener(HANDSHAKE_TIMEOUT),
        )
        .map_err(|e| Error::Handshake(e.to_string()))
    } else {
        let mut listener = shmpipe_handshake::Listener::bind(&job.tag, &options)
            .map_err(|e| Error::Handshake(e.to_string()))?;
        listener
            .accept_timeout(HANDSHAKE_TIMEOUT)
            .map_err(|e| Error::Handshake(e.to_string()))
    }
}

/// A ring's sending end: a claimed [`Producer`], or the handshake's `Sender` (a producer
/// that also watches the peer through the connection's socket and pidfd). The bench calls
/// what a user of that end would call.
pub trait ProducerEnd {
    /// `send` one message.
    ///
    /// # Errors
    ///
    /// As for [`Producer::send`].
    fn send(&mut self, msg: &[u8]) -> Result<(), SendError>;
    /// A batch to stage messages in.
    fn batch(&mut self) -> Batch<'_>;
    /// Its counters.
    fn stats(&self) -> shmpipe_ring::ProducerStats;
    /// Close without waiting for the consumer.
    fn close_now(self);
    /// Watch the peer's pidfd while blocked (the handshake's `Sender` already does).
    fn watch(&mut self, pidfd: &Arc<OwnedFd>);
}

impl ProducerEnd for Producer {
    #[inline]
    fn send(&mut self, msg: &[u8]) -> Result<(), SendError> {
        Producer::send(self, msg)
    }
    fn batch(&mut self) -> Batch<'_> {
        Producer::batch(self)
    }
    fn stats(&self) -> shmpipe_ring::ProducerStats {
        Producer::stats(self)
    }
    fn close_now(self) {
        let _ = self.close(Duration::ZERO);
    }
    fn watch(&mut self, pidfd: &Arc<OwnedFd>) {
        // Our own pidfd of our own worker: only a kernel out of memory refuses it.
        self.watch_peer(Some(pidfd.clone()))
            .expect("epoll_ctl: watch the peer's pidfd");
    }
}

impl ProducerEnd for shmpipe_handshake::Sender {
    #[inline]
    fn send(&mut self, msg: &[u8]) -> Result<(), SendError> {
        shmpipe_handshake::Sender::send(self, msg)
    }
    fn batch(&mut self) -> Batch<'_> {
        shmpipe_handshake::Sender::batch(self)
    }
    fn stats(&self) -> shmpipe_ring::ProducerStats {
        shmpipe_handshake::Sender::stats(self)
    }
    fn close_now(self) {
        let _ = self.close(Duration::ZERO);
    }
    fn watch(&mut self, _: &Arc<OwnedFd>) {}
}

/// A ring's receiving end: a claimed [`Consumer`], or the handshake's `Receiver`.
pub trait ConsumerEnd {
    /// Block for at least one message and hand up to `max` to `f`, as a user of this end
    /// would call it: [`Consumer::drain`], or the handshake's `Receiver::drain`.
    ///
    /// # Errors
    ///
    /// As for [`Consumer::drain`].
    fn drain(&mut self, max: usize, f: impl FnMut(&[u8])) -> Result<usize, RecvError>;
    /// Its counters.
    fn stats(&self) -> shmpipe_ring::ConsumerStats;
    /// Watch the peer's pidfd while blocked (the handshake's `Receiver` already does).
    fn watch(&mut self, pidfd: &Arc<OwnedFd>);
}

impl ConsumerEnd for Consumer {
    #[inline]
    fn drain(&mut self, max: usize, f: impl FnMut(&[u8])) -> Result<usize, RecvError> {
        Consumer::drain(self, max, f)
    }
    fn stats(&self) -> shmpipe_ring::ConsumerStats {
        Consumer::stats(self)
    }
    fn watch(&mut self, pidfd: &Arc<OwnedFd>) {
        // Our own pidfd of our own worker: only a kernel out of memory refuses it.
        self.watch_peer(Some(pidfd.clone()))
            .expect("epoll_ctl: watch the peer's pidfd");
    }
}

impl ConsumerEnd for shmpipe_handshake::Receiver {
    #[inline]
    fn drain(&mut self, max: usize, f: impl FnMut(&[u8])) -> Result<usize, RecvError> {
        shmpipe_handshake::Receiver::drain(self, max, f)
    }
    fn stats(&self) -> shmpipe_ring::ConsumerStats {
        shmpipe_handshake::Receiver::stats(self)
    }
    fn watch(&mut self, _: &Arc<OwnedFd>) {}
}

/// A ring's producer: `send` per message, or with `batch > 1` staged messages published
/// together through `Producer::batch` (one index store per batch).
#[derive(Debug)]
pub struct RingTx<P> {
    end: Option<P>,
    stage: Vec<u8>,
    size: usize,
    batch: usize,
    staged: usize,
}

impl<P: ProducerEnd> RingTx<P> {
    /// Wrap a claimed producer for `size`-byte messages.
    pub fn new(end: P, size: usize, batch: usize) -> RingTx<P> {
        let batch = batch.max(1);
        RingTx {
            end: Some(end),
            stage: vec![0; size * batch],
            size,
            batch,
            staged: 0,
        }
    }

    fn p(&mut self) -> &mut P {
        self.end.as_mut().expect("used after finish")
    }
}

impl<P: ProducerEnd> MsgTx for RingTx<P> {
    #[inline]
    fn buf(&mut self) -> &mut [u8] {
        let at = self.staged * self.size;
        &mut self.stage[at..at + self.size]
    }

    #[inline]
    fn send(&mut self) -> Result<(), Error> {
        if self.batch == 1 {
            let p = self.end.as_mut().expect("used after finish");
            return Ok(p.send(&self.stage)?);
        }
        self.staged += 1;
        if self.staged == self.batch {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), Error> {
        if self.staged == 0 {
            return Ok(());
        }
        let (size, staged) = (self.size, self.staged);
        self.staged = 0;
        let stage = std::mem::take(&mut self.stage);
        let r = (|| {
            let mut b = self.p().batch();
            for m in stage[..size * staged].chunks_exact(size) {
                b.send(m)?;
            }
            b.publish()
        })();
        self.stage = stage;
        Ok(r?)
    }

    fn finish(&mut self) -> Result<(), Error> {
        self.flush()?;
        if let Some(end) = self.end.take() {
            // The consumer has checked every message already; don't wait for it.
            end.close_now();
        }
        Ok(())
    }

    fn counters(&self) -> Counters {
        match &self.end {
            Some(end) => {
                let s = end.stats();
                Counters {
                    wakeups_sent: Some(s.wakeups_sent),
                    sleeps: Some(s.sleeps),
                }
            }
            None => Counters::default(),
        }
    }

    fn watch_peer(&mut self, pidfd: &Arc<OwnedFd>) {
        if let Some(end) = &mut self.end {
            end.watch(pidfd);
        }
    }
}

/// A ring's consumer, draining with one head store per batch (copying: the safe API).
#[derive(Debug)]
pub struct RingRx<C> {
    end: C,
    /// Most messages per `drain` call.
    max: usize,
}

impl<C: ConsumerEnd> RingRx<C> {
    /// Wrap a claimed consumer that takes at most `max` messages per `drain` (0: no limit).
    pub fn new(end: C, max: usize) -> RingRx<C> {
        let max = if max == 0 { usize::MAX } else { max };
        RingRx { end, max }
    }
}

impl<C: ConsumerEnd> MsgRx for RingRx<C> {
    #[inline]
    fn recv<F: FnMut(&[u8])>(&mut self, max: usize, f: F) -> Result<usize, Error> {
        match self.end.drain(max.min(self.max), f) {
            Ok(n) => Ok(n),
            Err(RecvError::Closed) => Err(Error::Eof),
            Err(e) => Err(e.into()),
        }
    }

    fn counters(&self) -> Counters {
        let s = self.end.stats();
        Counters {
            wakeups_sent: Some(s.wakeups_sent),
            sleeps: Some(s.sleeps),
        }
    }

    fn watch_peer(&mut self, pidfd: &Arc<OwnedFd>) {
        self.end.watch(pidfd);
    }
}
