//! shmem-ipc 0.3, the strongest published Rust peer of the same kind (memfd + eventfd ring
//! between processes), driven through the same [`MsgTx`]/[`MsgRx`] drivers and checks as
//! shmpipe. `shmpipe bench` runs it as the transports `shmem-ipc` and `shmem-ipc-spin`; the
//! criterion `ipc` bench runs the same code (it adds iceoryx2, which stays there).
//!
//! shmem-ipc's ring holds fixed-size items; one `[u8; N]` item is one message, so only the
//! sizes of [`SHMEM_SIZES`] run. Its documented API: `send_raw` / `receive_raw` with raw
//! pointers, which write the peer's eventfd when the ring was empty (sender) or full
//! (receiver), and `block_until_writable` / `block_until_readable` to sleep. Two wait
//! policies ([`ShmemWait`]): block at once when a call makes no progress (its documented
//! blocking use), or spin re-checking for up to shmpipe's default spin budget first (what
//! shmpipe's default `SpinThenBlock` does). Messages are copied in and out (its "untrusted
//! peer" use), as shmpipe's `send`/`drain` do.

use std::fs::File;
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use shmem_ipc::sharedring::{Receiver, Sender};

use super::Wiring;
use crate::worker::{MsgRx, MsgTx, Worker};
use crate::{Counters, Error, Role, Workload};

/// The message sizes shmem-ipc runs (its items are typed `[u8; N]`, one type per size).
pub const SHMEM_SIZES: [usize; 5] = [8, 64, 512, 4096, 65536];

/// How a shmem-ipc side waits when `send_raw` / `receive_raw` make no progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShmemWait {
    /// Call `block_until_writable` / `block_until_readable` at once (its documented use).
    Block,
    /// Spin re-checking for this long, then block.
    SpinThenBlock(Duration),
}

impl ShmemWait {
    fn spin(self) -> Duration {
        match self {
            ShmemWait::Block => Duration::ZERO,
            ShmemWait::SpinThenBlock(d) => d,
        }
    }
}

/// Whether shmem-ipc runs `size`-byte messages.
pub fn shmem_supports(size: usize) -> bool {
    SHMEM_SIZES.contains(&size)
}

/// Call `$f::<N>(args)` for the sizes of [`SHMEM_SIZES`] (shmem-ipc's items are typed).
macro_rules! by_size {
    ($size:expr, $f:ident ( $($arg:expr),* )) => {
        match $size {
            8 => $f::<8>($($arg),*),
            64 => $f::<64>($($arg),*),
            512 => $f::<512>($($arg),*),
            4096 => $f::<4096>($($arg),*),
            65536 => $f::<65536>($($arg),*),
            n => Err(Error::Protocol(format!(
                "shmem-ipc: no item type for {n}-byte messages (sizes: {SHMEM_SIZES:?})"
            ))),
        }
    };
}

fn peer_err(what: &str, e: impl std::fmt::Debug) -> Error {
    Error::Protocol(format!("shmem-ipc {what}: {e:?}"))
}

/// Parent: one ring (two for `rtt`: forward and back) of `capacity` bytes of items; both
/// workers get the memfd and the two eventfds of each. The parent keeps nothing: the fds
/// keep the memory alive.
///
/// # Errors
///
/// A size shmem-ipc does not run, a ring of fewer than two items, or shmem-ipc's own failure.
pub fn wire_shmem(w: Workload, capacity: usize) -> Result<Wiring, Error> {
    by_size!(w.size(), wire(w, capacity))
}

fn wire<const N: usize>(w: Workload, capacity: usize) -> Result<Wiring, Error> {
    if capacity / N < 2 {
        return Err(Error::Protocol(format!(
            "shmem-ipc: a ring of {capacity} bytes holds fewer than two {N}-byte items"
        )));
    }
    let mut wiring = Wiring::default();
    let rings = if matches!(w, Workload::Rtt(_)) { 2 } else { 1 };
    for _ in 0..rings {
        let r: Receiver<[u8; N]> =
            Receiver::new(capacity / N).map_err(|e| peer_err("Receiver::new", e))?;
        for f in [r.memfd().as_file(), r.empty_signal(), r.full_signal()] {
            for side in [&mut wiring.producer, &mut wiring.consumer] {
                side.push(OwnedFd::from(f.try_clone().map_err(|e| Error::Io {
                    op: "fcntl(F_DUPFD_CLOEXEC)",
                    source: e,
                })?));
            }
        }
    }
    Ok(wiring)
}

/// Worker: open the ring(s) from the fds that came with the job and serve rounds.
///
/// # Errors
///
/// As for [`Worker::drive`], and shmem-ipc's failures.
pub fn run_shmem(w: &mut Worker, wait: ShmemWait) -> Result<(), Error> {
    by_size!(w.job().workload.size(), run(w, wait))
}

fn run<const N: usize>(w: &mut Worker, wait: ShmemWait) -> Result<(), Error> {
    let job = w.job().clone();
    let items = job.capacity / N;
    let spin = wait.spin();
    let mut fds = w.take_fds().into_iter().map(File::from);
    let mut three = || -> Result<(File, File, File), Error> {
        let mut next = || {
            fds.next()
                .ok_or_else(|| Error::Protocol("shmem-ipc: too few fds".into()))
        };
        Ok((next()?, next()?, next()?))
    };
    let forward = three()?;
    let back = match job.workload {
        Workload::Rtt(_) => Some(three()?),
        _ => None,
    };
    let (tx, rx) = if job.role == Role::Producer {
        (Some(forward), back)
    } else {
        (back, Some(forward))
    };
    let tx = match tx {
        Some((m, e, f)) => Some(ShmemTx::<N> {
            s: Sender::open(items, m, e, f).map_err(|e| peer_err("Sender::open", e))?,
            stage: vec![0; N * job.batch.max(1)],
            batch: job.batch.max(1),
            staged: 0,
            spin,
            signals: 0,
            sleeps: 0,
        }),
        None => None,
    };
    let rx = match rx {
        Some((m, e, f)) => {
            let room = ((256 << 10) / N).clamp(1, 4096);
            Some(ShmemRx::<N> {
                r: Receiver::open(items, m, e, f).map_err(|e| peer_err("Receiver::open", e))?,
                local: vec![0; N * room],
                room,
                spin,
                signals: 0,
                sleeps: 0,
            })
        }
        None => None,
    };
    w.drive(tx, rx)
}

/// Whether to sleep now: at once with no spin budget, else after spinning for `spin` since
/// `since` (the first call that made no progress).
#[inline]
fn should_sleep(spin: Duration, since: &mut Option<Instant>) -> bool {
    if spin.is_zero() {
        return true;
    }
    let start = *since.get_or_insert_with(Instant::now);
    if start.elapsed() < spin {
        std::hint::spin_loop();
        return false;
    }
    *since = None;
    true
}

/// Sends one item per message; with `batch > 1`, stages that many and writes them with as
/// few `send_raw` calls as the ring allows.
struct ShmemTx<const N: usize> {
    s: Sender<[u8; N]>,
    stage: Vec<u8>,
    batch: usize,
    staged: usize,
    spin: Duration,
    signals: u64,
    sleeps: u64,
}

impl<const N: usize> MsgTx for ShmemTx<N> {
    fn buf(&mut self) -> &mut [u8] {
        &mut self.stage[self.staged * N..(self.staged + 1) * N]
    }

    fn send(&mut self) -> Result<(), Error> {
        self.staged += 1;
        if self.staged == self.batch {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), Error> {
        let mut done = 0;
        let mut spinning = None;
        while done < self.staged {
            let src = &self.stage[done * N..self.staged * N];
            let mut wrote = 0;
            let status = self
                .s
                .send_raw(|p, count| {
                    let k = count.min(src.len() / N);
                    // SAFETY: send_raw's contract: `count` writable items at `p`, in the
                    // mapping; we write `k <= count` from `src` (private, >= `k * N`
                    // bytes), so both ranges are valid and cannot overlap.
                    unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), p.cast::<u8>(), k * N) };
                    wrote = k;
                    k
                })
                .map_err(|e| peer_err("send_raw", e))?;
            self.signals += u64::from(status.signal);
            if wrote > 0 {
                done += wrote;
                spinning = None;
            } else if should_sleep(self.spin, &mut spinning) {
                self.sleeps += 1;
                self.s
                    .block_until_writable()
                    .map_err(|e| peer_err("block_until_writable", e))?;
            }
        }
        self.staged = 0;
        Ok(())
    }

    fn counters(&self) -> Counters {
        Counters {
            wakeups_sent: Some(self.signals),
            sleeps: Some(self.sleeps),
        }
    }
}

/// Copies up to `room` items out per `receive_raw`, then hands them to the driver.
struct ShmemRx<const N: usize> {
    r: Receiver<[u8; N]>,
    local: Vec<u8>,
    room: usize,
    spin: Duration,
    signals: u64,
    sleeps: u64,
}

impl<const N: usize> MsgRx for ShmemRx<N> {
    fn recv<F: FnMut(&[u8])>(&mut self, max: usize, mut f: F) -> Result<usize, Error> {
        let limit = max.min(self.room);
        let mut spinning = None;
        loop {
            let local = &mut self.local;
            let mut got = 0;
            let status = self
                .r
                .receive_raw(|p, count| {
                    let k = count.min(limit);
                    // SAFETY: receive_raw's contract: `count` readable items at `p`; we
                    // copy `k <= count` into `local` (room for `limit >= k` items); plain
                    // `u8`, valid whatever the peer wrote.
                    unsafe {
                        std::ptr::copy_nonoverlapping(p.cast::<u8>(), local.as_mut_ptr(), k * N)
                    };
                    got = k;
                    k
                })
                .map_err(|e| peer_err("receive_raw", e))?;
            self.signals += u64::from(status.signal);
            if got > 0 {
                for m in self.local[..got * N].chunks_exact(N) {
                    f(m);
                }
                return Ok(got);
            }
            if should_sleep(self.spin, &mut spinning) {
                self.sleeps += 1;
                self.r
                    .block_until_readable()
                    .map_err(|e| peer_err("block_until_readable", e))?;
            }
        }
    }

    fn counters(&self) -> Counters {
        Counters {
            wakeups_sent: Some(self.signals),
            sleeps: Some(self.sleeps),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_size_has_an_item_type() {
        for n in SHMEM_SIZES {
            assert!(shmem_supports(n));
            let wiring = wire_shmem(Workload::Thr(n), 1 << 20).expect("wiring");
            assert_eq!((wiring.producer.len(), wiring.consumer.len()), (3, 3));
        }
        let wiring = wire_shmem(Workload::Rtt(64), 1 << 20).expect("wiring");
        assert_eq!((wiring.producer.len(), wiring.consumer.len()), (6, 6));
        assert!(!shmem_supports(100));
        assert!(wire_shmem(Workload::Thr(100), 1 << 20).is_err());
        assert!(wire_shmem(Workload::Thr(65536), 65536).is_err());
    }
}
