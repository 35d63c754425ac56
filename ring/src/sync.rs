//! One switch between `std` and `loom` primitives (crossbeam's `primitive` pattern), so the
//! ring's protocol code is the same code that the loom models check.

#[cfg(loom)]
pub(crate) use loom::sync::{
    Arc, Condvar, Mutex,
    atomic::{AtomicU32, AtomicU64, Ordering, fence},
};

#[cfg(not(loom))]
pub(crate) use std::sync::{
    Arc,
    atomic::{AtomicU32, AtomicU64, Ordering, fence},
};
#[cfg(all(miri, not(loom)))]
pub(crate) use std::sync::{Condvar, Mutex};

/// A hint inside spin loops; under loom it yields so the model can schedule the peer.
#[inline]
pub(crate) fn spin_hint() {
    #[cfg(loom)]
    loom::thread::yield_now();
    #[cfg(not(loom))]
    std::hint::spin_loop();
}

/// How a spinning wait paces its polls of the ring: one pause between polls. (Backing off
/// exponentially after a few polls, crossbeam's `Backoff`, measured no steadier and no faster
/// for streams here, and costs round trips up to the length of the longest pause.)
#[derive(Debug, Default)]
pub(crate) struct Pacer {}

impl Pacer {
    #[inline]
    pub(crate) fn pause(&mut self) {
        spin_hint();
    }
}
