//! iceoryx2, the peer that runs in the criterion bench only, driven through the same
//! [`MsgTx`]/[`MsgRx`] drivers and checks as shmpipe. (shmem-ipc, the other peer, is a transport
//! of the bench library, `shmpipe_bench::transport::peers`, shared with `shmpipe bench`.)
//!
//! **iceoryx2** (zero-copy publish-subscribe): a `[u8]` slice service with
//! `enable_safe_overflow(false)` and `BackpressureStrategy::RetryUntilDelivered` (otherwise it
//! silently drops messages), the publisher loans a slice, copies the message in and sends;
//! the subscriber polls `receive()` in a busy loop (publish-subscribe itself has no blocking
//! receive; waking a subscriber takes a separate event service) and checks the sample in
//! place (zero-copy).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use shmpipe_bench::transport::Wiring;
use shmpipe_bench::worker::{MsgRx, MsgTx, Worker};
use shmpipe_bench::{Error, Role, Workload};

/// Parent-side objects that must live while the workers start (iceoryx2's service).
pub(crate) type Keep = Box<dyn std::any::Any>;

/// The transport name iceoryx2 runs under.
pub(crate) const ICEORYX2: &str = "iceoryx2";

/// Create iceoryx2's service(s) for `w`; the workers find them by the wiring's tag.
pub(crate) fn wire_iceoryx2(w: Workload, capacity: usize) -> Result<(Wiring, Keep), String> {
    ice::wire(w, capacity)
}

/// The worker's transports: iceoryx2's here, every other one the bench library's.
pub(crate) fn run(w: &mut Worker) -> Result<(), Error> {
    match w.job().transport.as_str() {
        ICEORYX2 => ice::run(w),
        _ => shmpipe_bench::transport::run(w),
    }
}

fn peer_err(what: &str, e: impl std::fmt::Debug) -> Error {
    Error::Protocol(format!("{what}: {e:?}"))
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

    /// Samples in flight: as many messages as a shmpipe ring of `capacity` bytes holds.
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
            "shmpipe-bench/{}/{}",
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
