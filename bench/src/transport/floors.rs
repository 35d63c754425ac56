//! The references: the ring floor (shmpipe's record bytes with nothing else), the eventfd and
//! spin ping-pong floors, and the memcpy ceiling.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rustix::io::Errno;
use shmpipe_ring::floor::{FloorConsumer, FloorProducer};
use shmpipe_ring::{Ring, WaitStrategy};

use super::ring::ring_config;
use super::{Wiring, dup};
use crate::worker::{Body, Checks, Job, MsgRx, MsgTx, Round, RoundReport, Worker};
use crate::{Counters, Error, Role, Workload, monotonic_ns};

/// Size of the memcpy ceiling's source and destination buffers.
pub const MEMCPY_SPAN: usize = 8 << 20;
/// Block size of the memcpy ceiling.
pub const MEMCPY_BLOCK: usize = 64 << 10;

/// Parent, ring floor: the rings are created here and both workers get their memfds.
pub(super) fn wire_ring_floor(
    wiring: &mut Wiring,
    w: Workload,
    capacity: usize,
) -> Result<(), Error> {
    let rtt = matches!(w, Workload::Rtt(_));
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
    Ok(())
}

/// Worker, ring floor: open the ring(s) from the memfds that came with the job.
pub(super) fn run_ring_floor(
    w: &mut Worker,
    job: &Job,
    mut next: impl FnMut() -> Result<OwnedFd, Error>,
) -> Result<(), Error> {
    let size = job.workload.size();
    let rtt = matches!(job.workload, Workload::Rtt(_));
    let producer = job.role == Role::Producer;
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

/// Parent, eventfd floor: two eventfds (ping, pong); both workers get both.
pub(super) fn wire_eventfd_floor(wiring: &mut Wiring) -> Result<(), Error> {
    for _ in 0..2 {
        let fd = rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC)
            .map_err(Error::os("eventfd"))?;
        wiring.producer.push(dup(fd.as_fd())?);
        wiring.consumer.push(fd);
    }
    Ok(())
}

/// Worker, eventfd floor.
pub(super) fn run_eventfd_floor(
    w: &mut Worker,
    job: &Job,
    mut next: impl FnMut() -> Result<OwnedFd, Error>,
) -> Result<(), Error> {
    let mut body = EventfdFloor {
        ping: next()?,
        pong: next()?,
        role: job.role,
        checks: Checks::default(),
    };
    w.serve(&mut body)
}

/// Worker, spin floor (solo).
pub(super) fn run_spin_floor(w: &mut Worker, job: &Job) -> Result<(), Error> {
    let mut body = SpinFloor::new(&job.cpus)?;
    w.serve(&mut body)
}

/// Worker, memcpy ceiling (solo).
pub(super) fn run_memcpy_ceiling(w: &mut Worker, job: &Job) -> Result<(), Error> {
    if let Some(&cpu) = job.cpus.first() {
        crate::pin_to(cpu)?;
    }
    let mut body = MemcpyCeiling::new();
    w.serve(&mut body)
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
