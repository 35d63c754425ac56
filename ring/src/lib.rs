//! A lock-free single-producer/single-consumer ring of variable-size byte messages in a sealed
//! memfd, with eventfd wake-ups rung through epoll: shmpipe's core. No sockets here; `shmpipe-handshake` hands
//! a ring's memfd and each side's [`Bell`] waiter to the other process, which
//! [`Ring::open`]s the memfd and claims its role.
//!
//! In steady state a message costs no system call and moves no cache line but its own: the
//! producer writes a record and publishes it by storing its header word; the consumer finds
//! it by that word, copies it out, and gives space back once per batch. A side rings its bell
//! (a private eventfd the peer watches through an epoll fd) only when the other side has
//! announced that it sleeps.
//!
//! ```
//! use shmpipe_ring::{Config, channel};
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
// Raw pointer work lives in `raw` (and its loom twin); the two zero-copy accessors
// (`Message::as_slice`, `Grant::as_mut_slice`) opt in where they are declared.
#![deny(unsafe_code)]

// memfd seals, eventfd, epoll, membarrier and 64-bit atomic indices: Linux on a 64-bit target.
#[cfg(not(all(target_os = "linux", target_pointer_width = "64")))]
compile_error!(
    "shmpipe supports Linux on 64-bit targets only: it needs memfd seals, eventfd, epoll and \
     membarrier, and 64-bit atomics for its ring indices"
);

mod barrier;
mod consumer;
mod end;
mod error;
#[cfg(not(loom))]
#[doc(hidden)]
pub mod floor;
pub mod layout;
#[cfg_attr(any(miri, loom), path = "notify_local.rs")]
mod notify;
mod producer;
#[cfg_attr(loom, path = "raw_loom.rs")]
mod raw;
#[cfg(test)]
mod raw_contract;
mod segment;
mod sync;
mod typed;
mod wait;

/// The crate whose traits say which types [`Producer::send_value`] and
/// [`Consumer::recv_value`] carry as their bytes (`Pod`, `Zeroable`, `NoUninit`), re-exported
/// so that users derive them against the same crate: `#[derive(Pod, Zeroable)]` with
/// `#[bytemuck(crate = "shmpipe_ring::bytemuck")]`, or a `bytemuck = "1"` of their own.
pub use bytemuck;
pub use consumer::{Consumer, ConsumerStats, Message};
#[cfg(feature = "serde")]
pub use error::SendSerdeError;
pub use error::{
    CloseError, Corruption, RecvError, RecvTimeoutError, RecvValueError, SendError,
    SendTimeoutError, SetupError, TryRecvError, TrySendError,
};
pub use layout::{DATA_OFFSET, DEFAULT_CAPACITY, MAX_CAPACITY, MIN_CAPACITY, ShapeError};
pub use notify::Bell;
/// The codec of the `serde` feature ([`Producer::send_serde`]), re-exported for its
/// [`postcard::Error`] in [`RecvValueError::Decode`] and [`SendSerdeError::Encode`].
#[cfg(feature = "serde")]
pub use postcard;
pub use producer::{Batch, Grant, Producer, ProducerStats};
pub use segment::{Config, Ring};
pub use typed::ValueGrant;
pub use wait::{DEFAULT_SPIN, WaitStrategy};

/// Whether this process sleeps with `membarrier(2)` (registered for
/// `MEMBARRIER_CMD_GLOBAL_EXPEDITED`), so that a peer that does too publishes without a fence
/// (docs/design.md, "The wake-up fence"). Found out once per process; false on kernels before
/// 4.16 and in sandboxes that refuse the call, where both sides fence every publication.
pub fn membarrier_available() -> bool {
    barrier::available()
}

/// Create a ring and claim both ends, for two threads of this process.
///
/// # Errors
///
/// As for [`Ring::create`].
pub fn channel(config: &Config) -> Result<(Producer, Consumer), SetupError> {
    Ring::create(config)?.pair()
}
