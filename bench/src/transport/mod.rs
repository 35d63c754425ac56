//! The transports: shmpipe rings with each wait strategy, blocking and on tokio
//! ([`shmpipe_handshake::tokio`]), the peer library shmem-ipc in its two wait modes
//! ([`peers`]), the OS baselines (pipe, Unix stream and seqpacket sockets) and the references
//! (the ring floor, eventfd and spin ping-pong floors, the memcpy ceiling).
//!
//! The parent creates every transport's kernel objects ([`wire`]) and hands each worker its
//! end; the worker wraps them in a [`MsgTx`]/[`MsgRx`] (or a floor's own loop) and serves
//! rounds ([`run`]).
//!
//! This module holds the list and the dispatch; each kind of transport has a file of its own:
//! `ring.rs` (shmpipe), `ring_tokio.rs` (shmpipe on tokio), [`peers`] (shmem-ipc), `os.rs`
//! (pipes and sockets) and `floors.rs` (the references).
//!
//! [`MsgTx`]: crate::worker::MsgTx
//! [`MsgRx`]: crate::worker::MsgRx

use std::os::fd::OwnedFd;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use shmpipe_ring::WaitStrategy;

use crate::worker::Worker;
use crate::{Error, Workload};

mod floors;
mod os;
pub mod peers;
mod ring;
mod ring_tokio;

pub use floors::{MEMCPY_BLOCK, MEMCPY_SPAN};
pub use os::{PacketRx, PacketTx, StreamRx, StreamTx};
use peers::ShmemWait;
pub use ring::{ConsumerEnd, ProducerEnd, RingRx, RingTx, ring_config};

/// A transport `shmpipe bench` knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Transport {
    /// A shmpipe ring, default waits (spin for 50 µs, then sleep on the eventfd).
    Shmpipe,
    /// A shmpipe ring whose waits only spin.
    ShmpipeSpin,
    /// A shmpipe ring whose waits sleep on the eventfd at once.
    ShmpipeBlock,
    /// A shmpipe ring driven through the tokio API (`send(..).await`, `drain(..).await`,
    /// `recv(..).await`) on a `current_thread` runtime, with the API's defaults: no spinning,
    /// a few yields to the runtime, then the task parks on the reactor (`--spin-us` sets a
    /// budget with `set_spin`).
    ShmpipeTokio,
    /// As `shmpipe-tokio` with `set_yields(0)`: a wait parks the task at once.
    ShmpipeTokioPark,
    /// As `shmpipe-tokio`, with `set_spin` on both halves: a wait spins for as long as it
    /// takes, as `shmpipe-spin`'s do, and never parks.
    ShmpipeTokioSpin,
    /// Peer: shmem-ipc 0.3, blocking at once when the ring is empty (full), its documented use.
    ShmemIpc,
    /// Peer: shmem-ipc 0.3, spinning up to shmpipe's default budget before it blocks.
    ShmemIpcSpin,
    /// A pipe (pipe(2)), length-prefixed frames.
    Pipe,
    /// A Unix stream socketpair, length-prefixed frames.
    UdsStream,
    /// A Unix seqpacket socketpair, one message per packet.
    UdsSeqpacket,
    /// Reference: shmpipe's record bytes with nothing else ([`shmpipe_ring::floor`]): no
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
    Shmpipe,
    /// What a user would otherwise pick.
    OsBaseline,
    /// A published library of the same kind (shmem-ipc).
    Peer,
    /// A physical floor or ceiling.
    Reference,
}

impl Transport {
    /// Every transport, in table order.
    pub const ALL: [Transport; 15] = [
        Transport::Shmpipe,
        Transport::ShmpipeSpin,
        Transport::ShmpipeBlock,
        Transport::ShmpipeTokio,
        Transport::ShmpipeTokioPark,
        Transport::ShmpipeTokioSpin,
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

    /// What `shmpipe bench` runs when no transport is named: all but the tokio ones, which
    /// measure the async API over the same rings as `shmpipe` and `shmpipe-spin` (name them
    /// with `--transports`).
    pub const DEFAULT: [Transport; 12] = [
        Transport::Shmpipe,
        Transport::ShmpipeSpin,
        Transport::ShmpipeBlock,
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
            Transport::Shmpipe => "shmpipe",
            Transport::ShmpipeSpin => "shmpipe-spin",
            Transport::ShmpipeBlock => "shmpipe-block",
            Transport::ShmpipeTokio => "shmpipe-tokio",
            Transport::ShmpipeTokioPark => "shmpipe-tokio-park",
            Transport::ShmpipeTokioSpin => "shmpipe-tokio-spin",
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
            Transport::Shmpipe
            | Transport::ShmpipeSpin
            | Transport::ShmpipeBlock
            | Transport::ShmpipeTokio
            | Transport::ShmpipeTokioPark
            | Transport::ShmpipeTokioSpin => Kind::Shmpipe,
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
            Transport::ShmemIpc | Transport::ShmemIpcSpin => peers::shmem_supports(w.size()),
            Transport::EventfdFloor | Transport::SpinFloor => matches!(w, Workload::Rtt(_)),
            Transport::MemcpyCeiling => w == Workload::Thr(MEMCPY_BLOCK),
            _ => true,
        }
    }

    /// Runs in one process (no producer/consumer pair).
    pub fn is_solo(self) -> bool {
        matches!(self, Transport::SpinFloor | Transport::MemcpyCeiling)
    }

    /// The wait strategy of the ring's blocking handles. The tokio transports get those of
    /// their blocking twins (`shmpipe`, `shmpipe-spin`), so that only the API differs.
    fn wait(self) -> Option<WaitStrategy> {
        match self {
            Transport::Shmpipe | Transport::ShmpipeTokio | Transport::ShmpipeTokioPark => {
                Some(WaitStrategy::default())
            }
            Transport::ShmpipeSpin | Transport::ShmpipeTokioSpin => Some(WaitStrategy::Spin),
            Transport::ShmpipeBlock => Some(WaitStrategy::Block),
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
    /// Rendezvous for the job: the handshake's socket path for the shmpipe transports, a
    /// service name for iceoryx2 (criterion bench); empty when the fds are all there is.
    pub tag: String,
    /// A directory that lives as long as the cell (the socket's).
    pub dir: Option<tempfile::TempDir>,
}

/// Create `t`'s kernel objects for workload `w` and split them between the workers. The
/// shmpipe transports get a socket path for the handshake instead: each worker creates the
/// ring it sends on, as any two processes using shmpipe would. The ring floor's rings and
/// shmem-ipc's are created here and both workers get their memfds (the parent keeps no
/// mapping: the fds keep the memory alive).
///
/// # Errors
///
/// The failing system call.
pub fn wire(t: Transport, w: Workload, capacity: usize) -> Result<Wiring, Error> {
    let mut wiring = Wiring {
        solo: t.is_solo(),
        ..Wiring::default()
    };
    match t {
        Transport::Shmpipe
        | Transport::ShmpipeSpin
        | Transport::ShmpipeBlock
        | Transport::ShmpipeTokio
        | Transport::ShmpipeTokioPark
        | Transport::ShmpipeTokioSpin => {
            ring::wire(&mut wiring, w, capacity)?;
        }
        Transport::RingFloor => floors::wire_ring_floor(&mut wiring, w, capacity)?,
        Transport::ShmemIpc | Transport::ShmemIpcSpin => {
            return peers::wire_shmem(w, capacity);
        }
        Transport::Pipe => os::wire_pipe(&mut wiring, w, capacity)?,
        Transport::UdsStream | Transport::UdsSeqpacket => {
            os::wire_socket(&mut wiring, t, capacity)?;
        }
        Transport::EventfdFloor => floors::wire_eventfd_floor(&mut wiring)?,
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

/// The worker's side of every transport of this module: the job's transport, by name; wrap
/// the fds that came with the job and serve rounds. `shmpipe bench --worker` and the worker
/// binary hand it to [`worker::main_with`](crate::worker::main_with).
///
/// # Errors
///
/// An unknown transport; as for [`Worker::drive`] or [`Worker::serve`].
pub fn run(w: &mut Worker) -> Result<(), Error> {
    let Some(t) = Transport::parse(&w.job().transport) else {
        return Err(Error::Protocol(format!(
            "unknown transport {:?}",
            w.job().transport
        )));
    };
    let job = w.job().clone();
    // The peer takes its fds itself.
    match t {
        Transport::ShmemIpc => return peers::run_shmem(w, ShmemWait::Block),
        Transport::ShmemIpcSpin => {
            let spin = job
                .spin_us
                .map_or(shmpipe_ring::DEFAULT_SPIN, Duration::from_micros);
            return peers::run_shmem(w, ShmemWait::SpinThenBlock(spin));
        }
        _ => {}
    }
    let mut fds = w.take_fds().into_iter();
    let next = move || {
        fds.next()
            .ok_or_else(|| Error::Protocol(format!("{}: too few fds", t.name())))
    };
    match t {
        Transport::Shmpipe | Transport::ShmpipeSpin | Transport::ShmpipeBlock => {
            ring::run(w, &job, t)
        }
        Transport::ShmpipeTokio | Transport::ShmpipeTokioPark | Transport::ShmpipeTokioSpin => {
            ring_tokio::run(w, &job, t)
        }
        Transport::RingFloor => floors::run_ring_floor(w, &job, next),
        Transport::ShmemIpc | Transport::ShmemIpcSpin => unreachable!("handled above"),
        Transport::Pipe => os::run_pipe(w, &job, next),
        Transport::UdsStream | Transport::UdsSeqpacket => os::run_socket(w, &job, t, next),
        Transport::EventfdFloor => floors::run_eventfd_floor(w, &job, next),
        Transport::SpinFloor => floors::run_spin_floor(w, &job),
        Transport::MemcpyCeiling => floors::run_memcpy_ceiling(w, &job),
    }
}
