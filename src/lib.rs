//! shmring: messages between processes on one Linux host through shared memory.
//!
//! See the README and docs/ for the design. This crate re-exports the ring.

pub use shmring_ring::*;
