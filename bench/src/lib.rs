//! shmpipe's benchmark drivers: the workloads behind `shmpipe bench` and the criterion benches.
//!
//! A benchmark *cell* is one transport running one workload between two worker processes
//! (or, for the single-process references, one). The parent ([`session::Session`]) spawns the
//! workers, hands each its end of the transport over a control socket (`SCM_RIGHTS`), pins
//! them to different CPUs, and then asks for *rounds* of `n` messages. Every consumer checks
//! the sequence number and every byte of every message ([`payload`]). A worker that hangs
//! past the cell's deadline is killed, and so is every worker whose parent dies.
//!
//! - [`transport`]: the transports (shmpipe rings, pipes, Unix sockets, the floors) behind
//!   [`worker::MsgTx`] / [`worker::MsgRx`];
//! - [`transport::peers`]: shmem-ipc, the peer library, behind the same traits;
//! - [`worker`]: what a worker process runs;
//! - [`session`]: the parent's side of one cell;
//! - [`cli`]: `shmpipe bench`.

pub mod cli;
mod ctl;
pub mod payload;
mod plot;
pub mod session;
pub mod stats;
pub mod transport;
pub mod worker;

use std::fmt;
use std::io;

use serde::{Deserialize, Serialize};

/// Everything that can go wrong in a benchmark cell.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A system call failed.
    #[error("{op} failed: {source}")]
    Io {
        /// The call, as its man page names it.
        op: &'static str,
        /// The OS error.
        source: io::Error,
    },
    /// Creating or opening a ring failed.
    #[error("ring set-up: {0}")]
    Setup(#[from] shmpipe_ring::SetupError),
    /// A ring send failed.
    #[error("ring send: {0}")]
    Send(#[from] shmpipe_ring::SendError),
    /// A ring receive failed.
    #[error("ring receive: {0}")]
    Recv(#[from] shmpipe_ring::RecvError),
    /// The shmpipe handshake failed.
    #[error("handshake: {0}")]
    Handshake(String),
    /// The peer closed its end before the round was complete.
    #[error("the peer closed the transport in the middle of a round")]
    Eof,
    /// A message failed its check.
    #[error("verification failed: {0}")]
    Verify(#[from] payload::Mismatch),
    /// The other end of the control channel is gone.
    #[error("the control channel closed")]
    ControlClosed,
    /// The cell did not finish before its deadline; its workers were killed.
    #[error("deadline exceeded; workers killed")]
    Deadline,
    /// A worker reported a failure.
    #[error("worker ({role}) failed: {message}")]
    Worker {
        /// Which worker.
        role: &'static str,
        /// What it said.
        message: String,
    },
    /// Something in the benchmark protocol was not as expected.
    #[error("{0}")]
    Protocol(String),
}

impl From<String> for Error {
    fn from(s: String) -> Error {
        Error::Protocol(s)
    }
}

impl Error {
    pub(crate) fn os(op: &'static str) -> impl FnOnce(rustix::io::Errno) -> Error {
        move |e| Error::Io {
            op,
            source: e.into(),
        }
    }
}

/// What a cell measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Workload {
    /// One-way, back-to-back messages of this many bytes: messages/s and MB/s.
    Thr(usize),
    /// Ping-pong of one message of this many bytes: round-trip percentiles.
    Rtt(usize),
    /// The consumer blocks on an empty transport; the CPU time it uses meanwhile.
    Idle,
}

impl Workload {
    /// The size of each message (8 for `idle`, which sends one message at the end).
    pub fn size(&self) -> usize {
        match *self {
            Workload::Thr(n) | Workload::Rtt(n) => n,
            Workload::Idle => payload::MIN_SIZE,
        }
    }

    /// Parse `thr-N`, `rtt-N` or `idle`.
    pub fn parse(s: &str) -> Result<Workload, String> {
        let size = |n: &str| {
            let n: usize = n
                .parse()
                .map_err(|_| format!("bad message size in workload {s:?}"))?;
            if n < payload::MIN_SIZE {
                return Err(format!(
                    "workload {s:?}: messages carry at least {} bytes",
                    payload::MIN_SIZE
                ));
            }
            Ok(n)
        };
        if s == "idle" {
            Ok(Workload::Idle)
        } else if let Some(n) = s.strip_prefix("thr-") {
            Ok(Workload::Thr(size(n)?))
        } else if let Some(n) = s.strip_prefix("rtt-") {
            Ok(Workload::Rtt(size(n)?))
        } else {
            Err(format!(
                "unknown workload {s:?} (expected thr-SIZE, rtt-SIZE or idle)"
            ))
        }
    }
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Workload::Thr(n) => write!(f, "thr-{n}"),
            Workload::Rtt(n) => write!(f, "rtt-{n}"),
            Workload::Idle => f.write_str("idle"),
        }
    }
}

/// Which side of a cell a worker plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// Sends (`thr`), pings and measures (`rtt`), stays quiet then sends one (`idle`).
    Producer,
    /// Receives and checks (`thr`), echoes (`rtt`), blocks and measures its CPU (`idle`).
    Consumer,
    /// A single-process reference (memcpy, the spin floor's two threads).
    Solo,
}

impl Role {
    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Role::Producer => "producer",
            Role::Consumer => "consumer",
            Role::Solo => "solo",
        }
    }
}

/// Counters a transport keeps (the shmpipe rings' `stats()`); `None` where it has none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// eventfd writes this side made to wake the other.
    pub wakeups_sent: Option<u64>,
    /// Times this side slept on its eventfd.
    pub sleeps: Option<u64>,
}

impl Counters {
    /// Add two sides' counters (a missing counter stays missing only if both miss it).
    pub fn plus(self, o: Counters) -> Counters {
        let add = |a: Option<u64>, b: Option<u64>| match (a, b) {
            (None, None) => None,
            (a, b) => Some(a.unwrap_or(0) + b.unwrap_or(0)),
        };
        Counters {
            wakeups_sent: add(self.wakeups_sent, o.wakeups_sent),
            sleeps: add(self.sleeps, o.sleeps),
        }
    }

    /// `self - earlier`, per counter.
    pub fn since(self, earlier: Counters) -> Counters {
        let sub = |a: Option<u64>, b: Option<u64>| a.map(|a| a.saturating_sub(b.unwrap_or(0)));
        Counters {
            wakeups_sent: sub(self.wakeups_sent, earlier.wakeups_sent),
            sleeps: sub(self.sleeps, earlier.sleeps),
        }
    }
}

/// Round-trip percentiles of one round, in nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    /// Median.
    pub p50: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Largest.
    pub max: u64,
}

/// CLOCK_MONOTONIC in nanoseconds: one clock for every process on the host, so a producer's
/// start and a consumer's end can be subtracted.
pub fn monotonic_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// CPU time this process has used (CLOCK_PROCESS_CPUTIME_ID), in nanoseconds.
pub fn process_cpu_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// The CPUs this process may run on (sched_getaffinity(2)), in order.
pub fn allowed_cpus() -> Vec<usize> {
    match rustix::thread::sched_getaffinity(None) {
        Ok(set) => (0..rustix::thread::CpuSet::MAX_CPU)
            .filter(|&c| set.is_set(c))
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Pin the calling thread to `cpu` (sched_setaffinity(2)).
pub fn pin_to(cpu: usize) -> Result<(), Error> {
    let mut set = rustix::thread::CpuSet::new();
    set.set(cpu);
    rustix::thread::sched_setaffinity(None, &set).map_err(Error::os("sched_setaffinity"))
}
