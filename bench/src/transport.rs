//! The transports: shmring rings with each wait strategy, the peer library shmem-ipc in its
//! two wait modes ([`crate::peers`]), the OS baselines (pipe, Unix stream and seqpacket
//! sockets) and the references (the ring floor, eventfd and spin ping-pong floors, the memcpy
//! ceiling).
//!
//! The parent creates every transport's kernel objects ([`wire`]) and hands each worker its
//! end; the worker wraps them in a [`MsgTx`]/[`MsgRx`] (or a floor's own loop) and serves
//! rounds ([`run`]).
//!
//! The OS baselines are used the way a careful user would: one `write(2)`/`send(2)` per
//! message, so that each message is visible to the reader at once (as with `Producer::send`),
//! a 4-byte length prefix on the stream transports, a reader that takes up to 256 KiB per
//! `read(2)` and splits frames, and kernel buffers raised to the ring's capacity where the
//! kernel allows it.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rustix::io::Errno;
use serde::{Deserialize, Serialize};
use shmring_ring::floor::{FloorConsumer, FloorProducer};
use shmring_ring::{Batch, Config, Consumer, Producer, RecvError, Ring, SendError, WaitStrategy};

use crate::peers::ShmemWait;
use crate::worker::{Body, Checks, MsgRx, MsgTx, Round, RoundReport, Worker};
use crate::{Counters, Error, Role, Workload, monotonic_ns};

/// A transport `shmring bench` knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Transport {
    /// A shmring ring, default waits (spin for 50 µs, then sleep on the eventfd).
    Shmring,
    /// A shmring ring whose waits only spin.
    ShmringSpin,
    /// A shmring ring whose waits sleep on the eventfd at once.
    ShmringBlock,
    /// Peer: shmem-ipc 0.3, blocking at once when the ring is empty (full), its documented use.
    ShmemIpc,
    /// Peer: shmem-ipc 0.3, spinning up to shmring's default budget before it blocks.
    ShmemIpcSpin,
    /// A pipe (pipe(2)), length-prefixed frames.
    Pipe,
    /// A Unix stream socketpair, length-prefixed frames.
    UdsStream,
    /// A Unix seqpacket socketpair, one message per packet.
    UdsSeqpacket,
    /// Reference: shmring's record bytes with nothing else ([`shmring_ring::floor`]): no
    /// validation, no wake-ups (both sides spin), no statistics.
    RingFloor,
    /// Reference: eventfd ping-pong between two processes, both blocking in read(2).
    EventfdFloor,
    /// Reference: busy-spin ping-pong on one cache line between two CPUs.
    SpinFloor,
    /// Reference: single-thread memcpy of 64 KiB blocks over an 8 MiB buffer.
    MemcpyCeiling,
}

/// What a transport is, for the ratios.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// One of ours.
    Shmring,
    /// What a user would otherwise pick.
    OsBaseline,
    /// A published library of the same kind (shmem-ipc).
    Peer,
    /// A physical floor or ceiling.
    Reference,
}

/// Size of the memcpy ceiling's source and destination buffers.
pub const MEMCPY_SPAN: usize = 8 << 20;
/// Block size of the memcpy ceiling.
pub const MEMCPY_BLOCK: usize = 64 << 10;

impl Transport {
    /// Every transport, in table order.
    pub const ALL: [Transport; 12] = [
        Transport::Shmring,
        Transport::ShmringSpin,
        Transport::ShmringBlock,
        Transport::ShmemIpc,
        Transport::ShmemIpcSpin,
        Transport::Pipe,
        Transport::UdsStream,
        Transport::UdsSeqpacket,
        Transport::RingFloor,
        Transport::EventfdFloor,
        Transport::SpinFloor,
        Transport::MemcpyCeiling,
    ];

    /// The name used on the command line and in the JSON.
    pub fn name(self) -> &'static str {
        match self {
            Transport::Shmring => "shmring",
            Transport::ShmringSpin => "shmring-spin",
            Transport::ShmringBlock => "shmring-block",
            Transport::ShmemIpc => "shmem-ipc",
            Transport::ShmemIpcSpin => "shmem-ipc-spin",
            Transport::Pipe => "pipe",
            Transport::UdsStream => "uds-stream",
            Transport::UdsSeqpacket => "uds-seqpacket",
            Transport::RingFloor => "ring-floor",
            Transport::EventfdFloor => "eventfd-floor",
            Transport::SpinFloor => "spin-floor",
            Transport::MemcpyCeiling => "memcpy-ceiling",
        }
    }

    /// The transport with this name.
    pub fn parse(s: &str) -> Option<Transport> {
        Transport::ALL.into_iter().find(|t| t.name() == s)
    }

    /// Ours, a peer library, an OS baseline, or a reference.
    pub fn kind(self) -> Kind {
        match self {
            Transport::Shmring | Transport::ShmringSpin | Transport::ShmringBlock => Kind::Shmring,
            Transport::ShmemIpc | Transport::ShmemIpcSpin => Kind::Peer,
            Transport::Pipe | Transport::UdsStream | Transport::UdsSeqpacket => Kind::OsBaseline,
            Transport::RingFloor
            | Transport::EventfdFloor
            | Transport::SpinFloor
            | Transport::MemcpyCeiling => Kind::Reference,
        }
    }

    /// Whether this transport runs `w` at all.
    pub fn supports(self, w: Workload) -> bool {
        match self {
            Transport::RingFloor => matches!(w, Workload::Thr(_) | Workload::Rtt(_)),
            Transport::ShmemIpc | Transport::ShmemIpcSpin => crate::peers::shmem_supports(w.size()),
            Transport::EventfdFloor | Transport::SpinFloor => matches!(w, Workload::Rtt(_)),
            Transport::MemcpyCeiling => w == Workload::Thr(MEMCPY_BLOCK),
            _ => true,
        }
    }

    /// Runs in one process (no producer/consumer pair).
    pub fn is_solo(self) -> bool {
        matches!(self, Transport::SpinFloor | Transport::MemcpyCeiling)
    }

    fn wait(self) -> Option<WaitStrategy> {
        match self {
            Transport::Shmring => Some(WaitStrategy::default()),
            Transport::ShmringSpin => Some(WaitStrategy::Spin),
            Transport::ShmringBlock => Some(WaitStrategy::Block),
            _ => None,
        }
    }
}

/// What the parent hands each worker of a cell.
#[derive(Debug, Default)]
pub struct Wiring {
    /// The producer's fds (or the solo worker's).
    pub producer: Vec<OwnedFd>,
    /// The consumer's fds.
    pub consumer: Vec<OwnedFd>,
    /// One worker instead of two.
    pub solo: bool,
    /// Rendezvous for the job: the handshake's socket path for the shmring transports, a
    /// service name for iceoryx2 (criterion bench); empty when the fds are all there is.
    pub tag: String,
    /// A directory that lives as long as the cell (the socket's).
    pub dir: Option<tempfile::TempDir>,
}

/// The ring configuration both sides of a bench ring agree on.
pub fn ring_config(capacity: usize, wait: WaitStrategy) -> Config {
    Config::new().capacity(capacity).wait(wait)
}

/// Create `t`'s kernel objects for workload `w` and split them between the workers. The
/// shmring transports get a socket path for the handshake instead: each worker creates the
/// ring it sends on, as any two processes using shmring would. The ring floor's rings and
/// shmem-ipc's are created here and both workers get their memfds (the parent keeps no
/// mapping: the fds keep the memory alive).
///
/// # Errors
///
/// The failing system call.
pub fn wire(t: Transport, w: Workload, capacity: usize) -> Result<Wiring, Error> {
    let rtt = matches!(w, Workload::Rtt(_));
    let mut wiring = Wiring {
        solo: t.is_solo(),
        ..Wiring::default()
    };
    match t {
        Transport::Shmring | Transport::ShmringSpin | Transport::ShmringBlock => {
            let config = ring_config(capacity, WaitStrategy::default());
            if w.size() > config.max_message_bytes() {
                return Err(Error::Protocol(format!(
                    "{w}: messages exceed the ring's maximum of {} bytes",
                    config.max_message_bytes()
                )));
            }
            let dir = tempfile::Builder::new()
                .prefix("shmring-bench-")
                .tempdir()
                .map_err(|e| Error::Io {
                    op: "mkdir",
                    source: e,
                })?;
            wiring.tag = dir.path().join("s").to_string_lossy().into_owned();
            wiring.dir = Some(dir);
            return Ok(wiring);
        }
        Transport::RingFloor => {
            // Forward (producer to consumer), and for rtt back; both workers get both memfds
            // in that order and each takes the side it plays.
            let config = ring_config(capacity, WaitStrategy::Spin);
            for _ in 0..if rtt { 2 } else { 1 } {
                let ring = Ring::create(&config)?;
                if w.size() > ring.max_message() {
                    return Err(Error::Protocol(format!(
                        "{w}: messages exceed the ring's maximum of {} bytes",
                        ring.max_message()
                    )));
                }
                wiring.producer.push(dup(ring.memfd())?);
                wiring.consumer.push(dup(ring.memfd())?);
            }
        }
        Transport::ShmemIpc | Transport::ShmemIpcSpin => {
            return crate::peers::wire_shmem(w, capacity);
        }
        Transport::Pipe => {
            let (r, wr) = pipe(capacity)?;
            wiring.producer.push(wr);
            wiring.consumer.push(r);
            if rtt {
                let (r, wr) = pipe(capacity)?;
                wiring.producer.push(r);
                wiring.consumer.push(wr);
            }
        }
        Transport::UdsStream | Transport::UdsSeqpacket => {
            let ty = if t == Transport::UdsStream {
                rustix::net::SocketType::STREAM
            } else {
                rustix::net::SocketType::SEQPACKET
            };
            let (a, b) = rustix::net::socketpair(
                rustix::net::AddressFamily::UNIX,
                ty,
                rustix::net::SocketFlags::CLOEXEC,
                None,
            )
            .map_err(Error::os("socketpair"))?;
            for s in [&a, &b] {
                // Best effort: capped by net.core.wmem_max / rmem_max.
                let _ = rustix::net::sockopt::set_socket_send_buffer_size(s, capacity);
                let _ = rustix::net::sockopt::set_socket_recv_buffer_size(s, capacity);
            }
            wiring.producer.push(a);
            wiring.consumer.push(b);
        }
        Transport::EventfdFloor => {
            for _ in 0..2 {
                let fd = rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC)
                    .map_err(Error::os("eventfd"))?;
                wiring.producer.push(dup(fd.as_fd())?);
                wiring.consumer.push(fd);
            }
        }
        Transport::SpinFloor | Transport::MemcpyCeiling => {}
    }
    Ok(wiring)
}

fn dup(fd: std::os::fd::BorrowedFd<'_>) -> Result<OwnedFd, Error> {
    fd.try_clone_to_owned().map_err(|e| Error::Io {
        op: "fcntl(F_DUPFD_CLOEXEC)",
        source: e,
    })
}

fn pipe(capacity: usize) -> Result<(OwnedFd, OwnedFd), Error> {
    let (r, w) =
        rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).map_err(Error::os("pipe2"))?;
    // Best effort: capped by /proc/sys/fs/pipe-max-size for unprivileged users.
    let _ = rustix::pipe::fcntl_setpipe_size(&w, capacity);
    Ok((r, w))
}

/// How long a worker waits for its peer's half of the handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The worker's side: wrap the fds that came with the job and serve rounds.
pub(crate) fn run(w: &mut Worker, t: Transport) -> Result<(), Error> {
    let job = w.job().clone();
    // The peer takes its fds itself.
    match t {
        Transport::ShmemIpc => return crate::peers::run_shmem(w, ShmemWait::Block),
        Transport::ShmemIpcSpin => {
            let spin = job
                .spin_us
                .map_or(shmring_ring::DEFAULT_SPIN, Duration::from_micros);
            return crate::peers::run_shmem(w, ShmemWait::SpinThenBlock(spin));
        }
        _ => {}
    }
    let mut fds = w.take_fds().into_iter();
    let mut next = || {
        fds.next()
            .ok_or_else(|| Error::Protocol(format!("{}: too few fds", t.name())))
    };
    let size = job.workload.size();
    let rtt = matches!(job.workload, Workload::Rtt(_));
    let producer = job.role == Role::Producer;
    match t {
        Transport::Shmring | Transport::ShmringSpin | Transport::ShmringBlock => {
            // The consumer listens, the producer connects: one ring each way.
            let options = shmring_handshake::Options::new()
                .capacity(job.capacity)
                .wait(match (t, job.spin_us) {
                    (Transport::Shmring, Some(us)) => {
                        WaitStrategy::SpinThenBlock(Duration::from_micros(us))
                    }
                    _ => t.wait().expect("a ring"),
                })
                .handshake_timeout(HANDSHAKE_TIMEOUT);
            let conn = if producer {
                shmring_handshake::connect(
                    &job.tag,
                    // The two workers start at the same time: wait for the consumer's listener.
                    &options.clone().wait_for_listener(HANDSHAKE_TIMEOUT),
                )
                .map_err(|e| Error::Handshake(e.to_string()))?
            } else {
                let mut listener = shmring_handshake::Listener::bind(&job.tag, &options)
                    .map_err(|e| Error::Handshake(e.to_string()))?;
                listener
                    .accept_timeout(HANDSHAKE_TIMEOUT)
                    .map_err(|e| Error::Handshake(e.to_string()))?
            };
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
        Transport::RingFloor => {
            let config = ring_config(job.capacity, WaitStrategy::Spin);
            let mut open = || -> Result<Ring, Error> {
                let ring = Ring::open(next()?, &config)?;
                if size > ring.max_message() {
                    return Err(Error::Protocol(format!(
                        "{}: messages exceed the ring's maximum of {} bytes",
                        job.workload,
                        ring.max_message()
                    )));
                }
                Ok(ring)
            };
            let forward = open()?;
            let back = if rtt { Some(open()?) } else { None };
            let (tx, rx) = if producer {
                (Some(forward), back)
            } else {
                (back, Some(forward))
            };
            w.drive(
                tx.map(|r| FloorTx {
                    p: FloorProducer::new(r),
                    buf: vec![0; size],
                }),
                rx.map(|r| FloorRx {
                    c: FloorConsumer::new(r),
                    max: if job.drain_max == 0 {
                        usize::MAX
                    } else {
                        job.drain_max
                    },
                }),
            )
        }
        Transport::ShmemIpc | Transport::ShmemIpcSpin => unreachable!("handled above"),
        Transport::Pipe => {
            let first = next()?;
            let second = if rtt { Some(next()?) } else { None };
            // Producer: write end, then (rtt) the pong read end; consumer the reverse.
            let (txfd, rxfd) = if producer {
                (Some(first), second)
            } else {
                (second, Some(first))
            };
            w.drive(
                txfd.map(|fd| StreamTx::new(fd, size)),
                rxfd.map(|fd| StreamRx::new(fd, size)),
            )
        }
        Transport::UdsStream | Transport::UdsSeqpacket => {
            let sock = next()?;
            let sends = producer || rtt;
            let recvs = !producer || rtt;
            let txfd = if sends {
                Some(dup(sock.as_fd())?)
            } else {
                None
            };
            let rxfd = if recvs { Some(sock) } else { None };
            if t == Transport::UdsStream {
                w.drive(
                    txfd.map(|fd| StreamTx::new(fd, size)),
                    rxfd.map(|fd| StreamRx::new(fd, size)),
                )
            } else {
                w.drive(
                    txfd.map(|fd| PacketTx::new(fd, size)),
                    rxfd.map(|fd| PacketRx::new(fd, size)),
                )
            }
        }
        Transport::EventfdFloor => {
            let mut body = EventfdFloor {
                ping: next()?,
                pong: next()?,
                role: job.role,
                checks: Checks::default(),
            };
            w.serve(&mut body)
        }
        Transport::SpinFloor => {
            let mut body = SpinFloor::new(&job.cpus)?;
            w.serve(&mut body)
        }
        Transport::MemcpyCeiling => {
            if let Some(&cpu) = job.cpus.first() {
                crate::pin_to(cpu)?;
            }
            let mut body = MemcpyCeiling::new();
            w.serve(&mut body)
        }
    }
}

// ---------------------------------------------------------------------------------------
// shmring

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
    fn stats(&self) -> shmring_ring::ProducerStats;
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
    fn stats(&self) -> shmring_ring::ProducerStats {
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

impl ProducerEnd for shmring_handshake::Sender {
    #[inline]
    fn send(&mut self, msg: &[u8]) -> Result<(), SendError> {
        shmring_handshake::Sender::send(self, msg)
    }
    fn batch(&mut self) -> Batch<'_> {
        shmring_handshake::Sender::batch(self)
    }
    fn stats(&self) -> shmring_ring::ProducerStats {
        shmring_handshake::Sender::stats(self)
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
    fn stats(&self) -> shmring_ring::ConsumerStats;
    /// Watch the peer's pidfd while blocked (the handshake's `Receiver` already does).
    fn watch(&mut self, pidfd: &Arc<OwnedFd>);
}

impl ConsumerEnd for Consumer {
    #[inline]
    fn drain(&mut self, max: usize, f: impl FnMut(&[u8])) -> Result<usize, RecvError> {
        Consumer::drain(self, max, f)
    }
    fn stats(&self) -> shmring_ring::ConsumerStats {
        Consumer::stats(self)
    }
    fn watch(&mut self, pidfd: &Arc<OwnedFd>) {
        // Our own pidfd of our own worker: only a kernel out of memory refuses it.
        self.watch_peer(Some(pidfd.clone()))
            .expect("epoll_ctl: watch the peer's pidfd");
    }
}

impl ConsumerEnd for shmring_handshake::Receiver {
    #[inline]
    fn drain(&mut self, max: usize, f: impl FnMut(&[u8])) -> Result<usize, RecvError> {
        shmring_handshake::Receiver::drain(self, max, f)
    }
    fn stats(&self) -> shmring_ring::ConsumerStats {
        shmring_handshake::Receiver::stats(self)
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

// ---------------------------------------------------------------------------------------
// The ring floor

/// [`FloorProducer::send`] per message (it spins while the ring is full).
#[derive(Debug)]
struct FloorTx {
    p: FloorProducer,
    buf: Vec<u8>,
}

impl MsgTx for FloorTx {
    #[inline]
    fn buf(&mut self) -> &mut [u8] {
        &mut self.buf
    }

    #[inline]
    fn send(&mut self) -> Result<(), Error> {
        self.p.send(&self.buf);
        Ok(())
    }
}

/// [`FloorConsumer::drain`] (it spins until there is a message), at most `max` per call.
#[derive(Debug)]
struct FloorRx {
    c: FloorConsumer,
    max: usize,
}

impl MsgRx for FloorRx {
    #[inline]
    fn recv<F: FnMut(&[u8])>(&mut self, max: usize, f: F) -> Result<usize, Error> {
        Ok(self.c.drain(max.min(self.max).max(1), f))
    }
}

// ---------------------------------------------------------------------------------------
// Byte streams: pipes and Unix stream sockets

/// Length prefix of a stream frame.
const PREFIX: usize = 4;

/// One `write(2)` per message: `[len: u32 LE][payload]`.
#[derive(Debug)]
pub struct StreamTx {
    fd: OwnedFd,
    frame: Vec<u8>,
}

impl StreamTx {
    /// Frames of `size`-byte messages on `fd`.
    pub fn new(fd: OwnedFd, size: usize) -> StreamTx {
        let mut frame = vec![0; PREFIX + size];
        frame[..PREFIX].copy_from_slice(&(size as u32).to_le_bytes());
        StreamTx { fd, frame }
    }
}

/// write(2) all of `bytes`, retrying short writes and EINTR.
fn write_all(fd: &OwnedFd, mut bytes: &[u8]) -> Result<(), Error> {
    while !bytes.is_empty() {
        match rustix::io::write(fd, bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(Errno::INTR) => {}
            Err(Errno::PIPE | Errno::CONNRESET) => return Err(Error::Eof),
            Err(e) => return Err(Error::os("write")(e)),
        }
    }
    Ok(())
}

impl MsgTx for StreamTx {
    #[inline]
    fn buf(&mut self) -> &mut [u8] {
        &mut self.frame[PREFIX..]
    }

    #[inline]
    fn send(&mut self) -> Result<(), Error> {
        write_all(&self.fd, &self.frame)
    }
}

/// Reads up to 256 KiB per `read(2)` and splits frames.
#[derive(Debug)]
pub struct StreamRx {
    fd: OwnedFd,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    size: usize,
}

impl StreamRx {
    /// Frames of `size`-byte messages from `fd`.
    pub fn new(fd: OwnedFd, size: usize) -> StreamRx {
        StreamRx {
            fd,
            buf: vec![0; (4 * (PREFIX + size)).max(256 << 10)],
            start: 0,
            end: 0,
            size,
        }
    }
}

impl MsgRx for StreamRx {
    fn recv<F: FnMut(&[u8])>(&mut self, max: usize, mut f: F) -> Result<usize, Error> {
        loop {
            let mut k = 0;
            while k < max && self.end - self.start >= PREFIX {
                let at = self.start;
                let len = u32::from_le_bytes(self.buf[at..at + PREFIX].try_into().expect("4"));
                if len as usize != self.size {
                    return Err(Error::Protocol(format!(
                        "stream frame of {len} bytes, expected {} (framing lost)",
                        self.size
                    )));
                }
                let end = at + PREFIX + self.size;
                if end > self.end {
                    break;
                }
                f(&self.buf[at + PREFIX..end]);
                self.start = end;
                k += 1;
            }
            if k > 0 {
                return Ok(k);
            }
            if self.start == self.end {
                (self.start, self.end) = (0, 0);
            } else if self.buf.len() - self.end < PREFIX + self.size {
                self.buf.copy_within(self.start..self.end, 0);
                (self.start, self.end) = (0, self.end - self.start);
            }
            match rustix::io::read(&self.fd, &mut self.buf[self.end..]) {
                Ok(0) => return Err(Error::Eof),
                Ok(n) => self.end += n,
                Err(Errno::INTR) => {}
                Err(Errno::CONNRESET) => return Err(Error::Eof),
                Err(e) => return Err(Error::os("read")(e)),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Unix seqpacket sockets

/// One `send(2)` per message, one packet per message.
#[derive(Debug)]
pub struct PacketTx {
    fd: OwnedFd,
    buf: Vec<u8>,
}

impl PacketTx {
    /// Packets of `size` bytes on `fd`.
    pub fn new(fd: OwnedFd, size: usize) -> PacketTx {
        PacketTx {
            fd,
            buf: vec![0; size],
        }
    }
}

impl MsgTx for PacketTx {
    #[inline]
    fn buf(&mut self) -> &mut [u8] {
        &mut self.buf
    }

    #[inline]
    fn send(&mut self) -> Result<(), Error> {
        loop {
            match rustix::net::send(&self.fd, &self.buf, rustix::net::SendFlags::NOSIGNAL) {
                Ok(n) if n == self.buf.len() => return Ok(()),
                Ok(n) => {
                    return Err(Error::Protocol(format!(
                        "short seqpacket send: {n} of {}",
                        self.buf.len()
                    )));
                }
                Err(Errno::INTR) => {}
                Err(Errno::PIPE | Errno::CONNRESET) => return Err(Error::Eof),
                Err(e) => return Err(Error::os("send")(e)),
            }
        }
    }
}

/// One `recv(2)` per message, into a buffer one byte larger than a message (so an oversized
/// packet shows as a wrong length instead of being cut to size).
#[derive(Debug)]
pub struct PacketRx {
    fd: OwnedFd,
    buf: Vec<u8>,
}

impl PacketRx {
    /// Packets of `size` bytes from `fd`.
    pub fn new(fd: OwnedFd, size: usize) -> PacketRx {
        PacketRx {
            fd,
            buf: vec![0; size + 1],
        }
    }
}

impl MsgRx for PacketRx {
    #[inline]
    fn recv<F: FnMut(&[u8])>(&mut self, _max: usize, mut f: F) -> Result<usize, Error> {
        loop {
            match rustix::net::recv(&self.fd, &mut self.buf, rustix::net::RecvFlags::empty()) {
                Ok((0, _)) => return Err(Error::Eof),
                Ok((n, _)) => {
                    f(&self.buf[..n.min(self.buf.len())]);
                    return Ok(1);
                }
                Err(Errno::INTR) => {}
                Err(Errno::CONNRESET) => return Err(Error::Eof),
                Err(e) => return Err(Error::os("recv")(e)),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// References

/// Eventfd ping-pong: the producer writes 1 to `ping` and blocks reading `pong`; the
/// consumer blocks reading `ping` and writes 1 to `pong`. Each read must return exactly 1.
#[derive(Debug)]
struct EventfdFloor {
    ping: OwnedFd,
    pong: OwnedFd,
    role: Role,
    checks: Checks,
}

impl EventfdFloor {
    fn read_one(&mut self, fd_is_ping: bool) -> Result<(), Error> {
        let fd = if fd_is_ping { &self.ping } else { &self.pong };
        let mut b = [0u8; 8];
        loop {
            match rustix::io::read(fd, &mut b) {
                Ok(8) => break,
                Ok(n) => return Err(Error::Protocol(format!("eventfd read of {n} bytes"))),
                Err(Errno::INTR) => {}
                Err(e) => return Err(Error::os("read(eventfd)")(e)),
            }
        }
        let v = u64::from_ne_bytes(b);
        if v != 1 {
            self.checks
                .fail(format!("eventfd counter was {v}, expected 1"));
        }
        Ok(())
    }
}

fn signal(fd: &OwnedFd) -> Result<(), Error> {
    loop {
        match rustix::io::write(fd, &1u64.to_ne_bytes()) {
            Ok(_) => return Ok(()),
            Err(Errno::INTR) => {}
            Err(e) => return Err(Error::os("write(eventfd)")(e)),
        }
    }
}

impl Body for EventfdFloor {
    fn round(&mut self, r: Round) -> Result<RoundReport, Error> {
        let mut rep = RoundReport {
            start_ns: monotonic_ns(),
            ..RoundReport::default()
        };
        if self.role == Role::Producer {
            let mut hist = crate::worker::histogram();
            for _ in 0..r.n {
                let t0 = Instant::now();
                signal(&self.ping)?;
                self.read_one(false)?;
                hist.saturating_record(nanos(t0.elapsed()));
            }
            rep.latency = Some(crate::worker::percentiles(&hist));
        } else {
            for _ in 0..r.n {
                self.read_one(true)?;
                signal(&self.pong)?;
            }
        }
        rep.end_ns = monotonic_ns();
        rep.errors = std::mem::take(&mut self.checks.errors);
        rep.first_error = self.checks.first.take();
        Ok(rep)
    }

    fn stop(&mut self) -> Result<Counters, Error> {
        Ok(Counters::default())
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX).max(1)
}

/// One cache line, alone.
#[repr(align(128))]
#[derive(Debug, Default)]
struct Line(AtomicU64);

/// The echo thread's stop value.
const STOP: u64 = u64::MAX;

/// Busy-spin ping-pong on one cache line between two threads pinned to two CPUs: the
/// floor for anything that crosses cores. (Threads of one process rather than two processes:
/// the coherence traffic for one line is the same, and sharing a line between processes
/// would need an unsafe cast of mapped memory to an atomic.) The pinger stores an odd
/// value and spins until the echo thread stores the next even one; each side checks it sees
/// exactly the value it expects.
#[derive(Debug)]
struct SpinFloor {
    line: Arc<Line>,
    echo_errors: Arc<AtomicU64>,
    echo: Option<std::thread::JoinHandle<()>>,
    cpus: Vec<usize>,
    next: u64,
    checks: Checks,
}

impl SpinFloor {
    fn new(cpus: &[usize]) -> Result<SpinFloor, Error> {
        if let Some(&c) = cpus.first() {
            crate::pin_to(c)?;
        }
        Ok(SpinFloor {
            line: Arc::new(Line::default()),
            echo_errors: Arc::new(AtomicU64::new(0)),
            echo: None,
            cpus: cpus.to_vec(),
            next: 1,
            checks: Checks::default(),
        })
    }
}

impl Body for SpinFloor {
    fn go(&mut self, _: Option<Arc<OwnedFd>>) -> Result<(), Error> {
        let line = self.line.clone();
        let errors = self.echo_errors.clone();
        let cpu = self.cpus.get(1).copied();
        self.echo = Some(std::thread::spawn(move || {
            if let Some(c) = cpu {
                let _ = crate::pin_to(c);
            }
            let mut expect = 1u64;
            loop {
                let v = line.0.load(Ordering::Acquire);
                if v == STOP {
                    return;
                }
                if v == expect {
                    line.0.store(v + 1, Ordering::Release);
                    expect += 2;
                } else if v != expect - 1 {
                    errors.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                std::hint::spin_loop();
            }
        }));
        Ok(())
    }

    fn round(&mut self, r: Round) -> Result<RoundReport, Error> {
        let mut rep = RoundReport {
            start_ns: monotonic_ns(),
            ..RoundReport::default()
        };
        let mut hist = crate::worker::histogram();
        let deadline = Instant::now() + Duration::from_secs(5);
        for _ in 0..r.n {
            let v = self.next;
            let t0 = Instant::now();
            self.line.0.store(v, Ordering::Release);
            let mut spins = 0u32;
            loop {
                let seen = self.line.0.load(Ordering::Acquire);
                if seen == v + 1 {
                    break;
                }
                if seen != v {
                    self.checks
                        .fail(format!("spin floor saw {seen}, expected {v} or {}", v + 1));
                    break;
                }
                spins = spins.wrapping_add(1);
                if spins % (1 << 20) == 0 && Instant::now() > deadline {
                    return Err(Error::Protocol(
                        "spin floor: the echo thread stopped".into(),
                    ));
                }
                std::hint::spin_loop();
            }
            hist.saturating_record(nanos(t0.elapsed()));
            self.next += 2;
        }
        rep.end_ns = monotonic_ns();
        rep.latency = Some(crate::worker::percentiles(&hist));
        let echo = self.echo_errors.swap(0, Ordering::Relaxed);
        if echo > 0 {
            self.checks
                .fail(format!("the echo thread saw {echo} unexpected values"));
        }
        rep.errors = std::mem::take(&mut self.checks.errors);
        rep.first_error = self.checks.first.take();
        Ok(rep)
    }

    fn stop(&mut self) -> Result<Counters, Error> {
        self.line.0.store(STOP, Ordering::Release);
        if let Some(h) = self.echo.take() {
            let _ = h.join();
        }
        Ok(Counters::default())
    }
}

impl Drop for SpinFloor {
    fn drop(&mut self) {
        // On an error path: release the echo thread so the process can exit.
        self.line.0.store(STOP, Ordering::Release);
    }
}

/// Single-thread memcpy of [`MEMCPY_BLOCK`]-byte blocks from one [`MEMCPY_SPAN`] buffer to
/// another, cycling through them: the most a core can move when every byte is read and
/// written once outside its L2.
#[derive(Debug)]
struct MemcpyCeiling {
    src: Vec<u8>,
    dst: Vec<u8>,
    block: usize,
}

impl MemcpyCeiling {
    fn new() -> MemcpyCeiling {
        let src: Vec<u8> = (0..MEMCPY_SPAN).map(|i| (i * 7 + i / 4099) as u8).collect();
        // Touch the destination so page faults stay out of the measurement.
        let dst = vec![1u8; MEMCPY_SPAN];
        MemcpyCeiling { src, dst, block: 0 }
    }
}

impl Body for MemcpyCeiling {
    fn round(&mut self, r: Round) -> Result<RoundReport, Error> {
        let blocks = MEMCPY_SPAN / MEMCPY_BLOCK;
        let mut rep = RoundReport {
            start_ns: monotonic_ns(),
            ..RoundReport::default()
        };
        let mut last = self.block;
        for _ in 0..r.n {
            let at = self.block * MEMCPY_BLOCK;
            self.dst[at..at + MEMCPY_BLOCK].copy_from_slice(&self.src[at..at + MEMCPY_BLOCK]);
            std::hint::black_box(&mut self.dst);
            last = self.block;
            self.block = (self.block + 1) % blocks;
        }
        rep.end_ns = monotonic_ns();
        let at = last * MEMCPY_BLOCK;
        if r.n > 0 && self.dst[at..at + MEMCPY_BLOCK] != self.src[at..at + MEMCPY_BLOCK] {
            rep.errors = 1;
            rep.first_error = Some(format!("memcpy block {last} differs from its source"));
        }
        Ok(rep)
    }

    fn stop(&mut self) -> Result<Counters, Error> {
        Ok(Counters::default())
    }
}
