//! A lock-free single-producer/single-consumer ring of variable-size byte messages in a sealed
//! memfd, with eventfd wake-ups rung through epoll: shmring's core. No sockets here; `shmring-handshake` hands
//! a ring's memfd and each side's [`Bell`] waiter to the other process, which
//! [`Ring::open`]s the memfd and claims its role.
//!
//! In steady state a message costs no system call: the producer writes a record and stores
//! its index; the consumer loads that index once per batch and copies records out. A side
//! rings its bell (a private eventfd the peer watches through an epoll fd) only when the other
//! side has announced that it sleeps.
//!
//! ```
//! use shmring_ring::{Config, channel};
//!
//! let (mut tx, mut rx) = channel(&Config::new().capacity(1 << 16))?;
//! let reader = std::thread::spawn(move || {
//!     let mut buf = Vec::new();
//!     let mut total = 0;
//!     while rx.recv(&mut buf).is_ok() {
//!         total += buf.len();
//!     }
//!     total // `recv` fails with `Closed` once everything sent was received
//! });
//! for i in 0..1000u32 {
//!     tx.send(&i.to_le_bytes())?;
//! }
//! tx.send_all(&[b"one".as_slice(), b"batch", b"of three"])?;
//! tx.close(std::time::Duration::from_secs(5))?; // Ok: the reader consumed everything
//! assert_eq!(reader.join().unwrap(), 4000 + 16);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! How it works and why: docs/design.md. The bytes: docs/protocol.md.

#![deny(unsafe_op_in_unsafe_fn)]

mod consumer;
mod error;
pub mod layout;
#[cfg_attr(any(miri, loom), path = "notify_local.rs")]
mod notify;
mod producer;
#[cfg_attr(loom, path = "raw_loom.rs")]
mod raw;
mod segment;
mod sync;
mod wait;

pub use consumer::{Consumer, ConsumerStats, Message};
pub use error::{
    CloseError, Corruption, RecvError, RecvTimeoutError, SendError, SendTimeoutError, SetupError,
    TryRecvError, TrySendError,
};
pub use layout::{DATA_OFFSET, DEFAULT_CAPACITY, MAX_CAPACITY, MIN_CAPACITY};
pub use notify::Bell;
pub use producer::{Batch, Grant, Producer, ProducerStats};
pub use segment::{Config, Ring};
pub use wait::{DEFAULT_SPIN, WaitStrategy};

/// Create a ring and claim both ends, for two threads of this process.
///
/// # Errors
///
/// As for [`Ring::create`].
pub fn channel(config: &Config) -> Result<(Producer, Consumer), SetupError> {
    Ring::create(config)?.pair()
}
