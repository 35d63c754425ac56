//! The peers, driven through the same [`MsgTx`]/[`MsgRx`] drivers and checks as shmring:
//!
//! - **shmem-ipc** (memfd + eventfd ring of fixed-size items; one item = one message, typed
//!   `[u8; N]`). Its documented API: `send_raw` / `receive_raw` with raw pointers, which signal
//!   the peer's eventfd when the ring was empty (sender) or full (receiver), and
//!   `block_until_writable` / `block_until_readable` to sleep. We give it the same wait policy
//!   as shmring's default: spin up to 50 µs re-checking, then sleep. Messages are copied in
//!   and out (its "untrusted peer" use), as shmring's `send`/`drain` do.
//! - **iceoryx2** (zero-copy publish-subscribe): a `[u8]` slice service with
//!   `enable_safe_overflow(false)` and `BackpressureStrategy::RetryUntilDelivered` (otherwise it
//!   silently drops messages), the publisher loans a slice, copies the message in and sends;
//!   the subscriber polls `receive()` in a busy loop (publish-subscribe itself has no blocking
//!   receive; waking a subscriber takes a separate event service) and checks the sample in
//!   place (zero-copy).

use std::fs::File;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use shmring_bench::transport::Wiring;
use shmring_bench::worker::{MsgRx, MsgTx, Worker};
use shmring_bench::{Counters, Error, Role, Workload};

/// A peer library.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Peer {
    ShmemIpc,
    Iceoryx2,
}

/// Parent-side objects that must live while the workers start (iceoryx2's service).
pub(crate) type Keep = Box<dyn std::any::Any>;

/// Spin this long before sleeping (shmring's default `SpinThenBlock`).
const SPIN: Duration = shmring_ring::DEFAULT_SPIN;

impl Peer {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Peer::ShmemIpc => "shmem-ipc",
            Peer::Iceoryx2 => "iceoryx2",
        }
    }

    /// Create the peer's transport for `w` and split it between the workers.
    pub(crate) fn wire(
        self,
        w: Workload,
        capacity: usize,
    ) -> Result<(Wiring, Option<Keep>), String> {
        match self {
            Peer::ShmemIpc => Ok((by_size!(w.size(), shmem::wire(w, capacity))?, None)),
            Peer::Iceoryx2 => {
                let (wiring, keep) = ice::wire(w, capacity)?;
                Ok((wiring, Some(keep)))
            }
        }
    }
}

/// The worker hook: take over the peers' transports.
pub(crate) fn run(w: &mut Worker) -> Option<Result<(), Error>> {
    match w.job().transport.as_str() {
        "shmem-ipc" => Some(by_size!(w.job().workload.size(), shmem::run(w))),
        "iceoryx2" => Some(ice::run(w)),
        _ => None,
    }
}

/// Call `$f::<N>(args)` for the message sizes the benches use (shmem-ipc's items are typed).
macro_rules! by_size {
    ($size:expr, $m:ident :: $f:ident ( $($arg:expr),* )) => {
        match $size {
            8 => $m::$f::<8>($($arg),*),
            64 => $m::$f::<64>($($arg),*),
            512 => $m::$f::<512>($($arg),*),
            4096 => $m::$f::<4096>($($arg),*),
            65536 => $m::$f::<65536>($($arg),*),
            n => Err(format!("shmem-ipc bench: no item type for {n}-byte messages").into()),
        }
    };
}
use by_size;

fn peer_err(what: &str, e: impl std::fmt::Debug) -> Error {
    Error::Protocol(format!("{what}: {e:?}"))
}

/// Spin for up to [`SPIN`] since `since`, then tell the caller to sleep.
fn should_sleep(since: &mut Option<Instant>) -> bool {
    let start = *since.get_or_insert_with(Instant::now);
    if start.elapsed() < SPIN {
        std::hint::spin_loop();
        return false;
    }
    *since = None;
    true
}

mod shmem {
    use super::*;
    use shmem_ipc::sharedring::{Receiver, Sender};

    /// Parent: one ring (two for `rtt`) of `capacity` bytes of items; both workers get the
    /// memfd and the two eventfds.
    pub(super) fn wire<const N: usize>(w: Workload, capacity: usize) -> Result<Wiring, String> {
        let mut wiring = Wiring::default();
        let rings = if matches!(w, Workload::Rtt(_)) { 2 } else { 1 };
        for _ in 0..rings {
            let r: Receiver<[u8; N]> =
                Receiver::new(capacity / N).map_err(|e| format!("shmem-ipc: {e}"))?;
            for f in [r.memfd().as_file(), r.empty_signal(), r.full_signal()] {
                for side in [&mut wiring.producer, &mut wiring.consumer] {
                    side.push(OwnedFd::from(f.try_clone().map_err(|e| e.to_string())?));
                }
            }
        }
        Ok(wiring)
    }

    /// Worker: open the ring(s) from the fds and serve.
    pub(super) fn run<const N: usize>(w: &mut Worker) -> Result<(), Error> {
        let job = w.job().clone();
        let items = job.capacity / N;
        let mut fds = w.take_fds().into_iter().map(File::from);
        let mut three = || -> Result<(File, File, File), Error> {
            let mut next = || {
                fds.next()
                    .ok_or_else(|| Error::Protocol("too few fds".into()))
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
                    signals: 0,
                    sleeps: 0,
                })
            }
            None => None,
        };
        w.drive(tx, rx)
    }

    pub(super) struct ShmemTx<const N: usize> {
        s: Sender<[u8; N]>,
        stage: Vec<u8>,
        batch: usize,
        staged: usize,
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
                        unsafe {
                            std::ptr::copy_nonoverlapping(src.as_ptr(), p.cast::<u8>(), k * N)
                        };
                        wrote = k;
                        k
                    })
                    .map_err(|e| peer_err("send_raw", e))?;
                self.signals += u64::from(status.signal);
                if wrote > 0 {
                    done += wrote;
                    spinning = None;
                } else if should_sleep(&mut spinning) {
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

    pub(super) struct ShmemRx<const N: usize> {
        r: Receiver<[u8; N]>,
        local: Vec<u8>,
        room: usize,
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
                if should_sleep(&mut spinning) {
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
}

mod ice {
    use super::*;
    use iceoryx2::port::LoanError;
    use iceoryx2::port::publisher::Publisher;
    use iceoryx2::port::subscriber::Subscriber;
    use iceoryx2::prelude::*;
    use iceoryx2::service::port_factory::publish_subscribe::PortFactory;

    type Factory = PortFactory<ipc::Service, [u8], ()>;

    static SERVICES: AtomicU64 = AtomicU64::new(0);

    /// Samples in flight: as many messages as a shmring ring of `capacity` bytes holds.
    fn depth(size: usize, capacity: usize) -> usize {
        (capacity / (size + 8)).clamp(2, 65536)
    }

    fn quiet() {
        set_log_level(LogLevel::Error);
    }

    fn service(
        node: &Node<ipc::Service>,
        name: &str,
        size: usize,
        capacity: usize,
    ) -> Result<Factory, Error> {
        let name: ServiceName = name.try_into().map_err(|e| peer_err("ServiceName", e))?;
        node.service_builder(&name)
            .publish_subscribe::<[u8]>()
            .enable_safe_overflow(false)
            .subscriber_max_buffer_size(depth(size, capacity))
            .history_size(0)
            .max_publishers(1)
            .max_subscribers(1)
            .max_nodes(3)
            .open_or_create()
            .map_err(|e| peer_err("open_or_create", e))
    }

    /// Parent: create the service(s) under a fresh name and keep them open until the workers
    /// have opened them too.
    pub(super) fn wire(w: Workload, capacity: usize) -> Result<(Wiring, Keep), String> {
        quiet();
        let node = NodeBuilder::new()
            .create::<ipc::Service>()
            .map_err(|e| format!("iceoryx2 node: {e:?}"))?;
        let tag = format!(
            "shmring-bench/{}/{}",
            std::process::id(),
            SERVICES.fetch_add(1, Ordering::Relaxed)
        );
        let mut services = vec![
            service(&node, &format!("{tag}/fwd"), w.size(), capacity).map_err(|e| e.to_string())?,
        ];
        if matches!(w, Workload::Rtt(_)) {
            services.push(
                service(&node, &format!("{tag}/back"), w.size(), capacity)
                    .map_err(|e| e.to_string())?,
            );
        }
        let wiring = Wiring {
            tag,
            ..Wiring::default()
        };
        Ok((wiring, Box::new((services, node))))
    }

    /// Worker: open the service(s), create this side's ports, serve.
    pub(super) fn run(w: &mut Worker) -> Result<(), Error> {
        quiet();
        let job = w.job().clone();
        let size = job.workload.size();
        let node = NodeBuilder::new()
            .create::<ipc::Service>()
            .map_err(|e| peer_err("node", e))?;
        let forward = service(&node, &format!("{}/fwd", job.tag), size, job.capacity)?;
        let back = match job.workload {
            Workload::Rtt(_) => Some(service(
                &node,
                &format!("{}/back", job.tag),
                size,
                job.capacity,
            )?),
            _ => None,
        };
        let (tx, rx) = if job.role == Role::Producer {
            (Some(&forward), back.as_ref())
        } else {
            (back.as_ref(), Some(&forward))
        };
        let tx = match tx {
            Some(s) => Some(IceTx {
                p: s.publisher_builder()
                    .initial_max_slice_len(size)
                    .backpressure_strategy(BackpressureStrategy::RetryUntilDelivered)
                    .create()
                    .map_err(|e| peer_err("publisher", e))?,
                buf: vec![0; size],
            }),
            None => None,
        };
        let rx = match rx {
            Some(s) => Some(IceRx {
                s: s.subscriber_builder()
                    .buffer_size(depth(size, job.capacity))
                    .create()
                    .map_err(|e| peer_err("subscriber", e))?,
            }),
            None => None,
        };
        w.drive(tx, rx)
    }

    pub(super) struct IceTx {
        p: Publisher<ipc::Service, [u8], ()>,
        buf: Vec<u8>,
    }

    impl MsgTx for IceTx {
        fn buf(&mut self) -> &mut [u8] {
            &mut self.buf
        }

        fn send(&mut self) -> Result<(), Error> {
            let give_up = Instant::now() + Duration::from_secs(10);
            loop {
                match self.p.loan_slice_uninit(self.buf.len()) {
                    Ok(sample) => {
                        sample
                            .write_from_slice(&self.buf)
                            .send()
                            .map_err(|e| peer_err("send", e))?;
                        return Ok(());
                    }
                    // Every sample is in flight: wait for the subscriber to release one.
                    Err(LoanError::OutOfMemory | LoanError::ExceedsMaxLoans)
                        if Instant::now() < give_up =>
                    {
                        std::hint::spin_loop();
                    }
                    Err(e) => return Err(peer_err("loan_slice_uninit", e)),
                }
            }
        }
    }

    pub(super) struct IceRx {
        s: Subscriber<ipc::Service, [u8], ()>,
    }

    impl MsgRx for IceRx {
        fn recv<F: FnMut(&[u8])>(&mut self, max: usize, mut f: F) -> Result<usize, Error> {
            loop {
                let mut n = 0;
                while n < max {
                    match self.s.receive().map_err(|e| peer_err("receive", e))? {
                        Some(sample) => {
                            f(sample.payload());
                            n += 1;
                        }
                        None => break,
                    }
                }
                if n > 0 {
                    return Ok(n);
                }
                std::hint::spin_loop();
            }
        }
    }
}
