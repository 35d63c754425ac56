//! The wake-up fence, made asymmetric.
//!
//! The sleep/wake protocol is a store-load pair on each side (Dekker's pattern): the side that
//! makes progress stores an index or a record word and then loads the other side's state word;
//! the side about to sleep stores `WAITING` in its state word and then re-checks the index or
//! word. If both loads could see the old values, the sleeper would sleep on progress nobody
//! tells it about. Symmetric SeqCst fences between each store and load prevent that, but put a
//! full fence on every publication. This module moves its cost to the rare side, as folly's
//! `asymmetric_thread_fence_light/heavy` and liburcu's membarrier flavour do:
//!
//! - [`light`], on every publication and release: a compiler fence only, so the store is not
//!   moved after the load in program order.
//! - [`heavy`], once before every sleep: `membarrier(MEMBARRIER_CMD_GLOBAL_EXPEDITED)`, which
//!   runs a full memory barrier on every CPU running a thread of a process registered with
//!   `MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED` (Linux 4.16+), and returns after they have.
//!
//! Why that suffices: the barrier the kernel runs on the progressing side's CPU lands somewhere
//! in its program. If it lands before that side's load, the sleeper's `WAITING` store (made
//! before the `membarrier` call) is visible to the load, and the progressing side rings. If it
//! lands after the side's store, the store is visible before `membarrier` returns, and the
//! sleeper's re-check sees it. A thread that is not running has gone through a context switch,
//! itself a full barrier. Either way one of the two loads sees the other side's store.
//!
//! The light side may drop its fence only if the sleeper will issue the `membarrier` and its
//! own process is registered: each side sets [`MEMBARRIER`](crate::layout) in its state word at
//! claim if its process registered, and a side uses the light form only after it has seen that
//! bit in the peer's word. Until then, or if registration failed (old kernel, seccomp), both
//! sides use SeqCst fences: the protocol of version 1, which [`available`] reports.
//!
//! Under loom both halves are SeqCst fences ("the heavy side's barrier stands for a fence on
//! both sides"), and the mutant `light` or `heavy` (`SHMPIPE_MUTANT`, ring/build.rs) removes one, which must make a
//! model fail (ring/tests/loom.rs).

use crate::sync::{Ordering, fence};

/// Whether this process is registered for `MEMBARRIER_CMD_GLOBAL_EXPEDITED` and a call to it
/// succeeded, found out once per process.
#[cfg(not(any(loom, miri)))]
pub(crate) fn available() -> bool {
    use rustix::thread::{MembarrierCommand, MembarrierQuery, membarrier, membarrier_query};
    static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        let needed = MembarrierQuery::GLOBAL_EXPEDITED | MembarrierQuery::REGISTER_GLOBAL_EXPEDITED;
        membarrier_query().contains(needed)
            && membarrier(MembarrierCommand::RegisterGlobalExpedited).is_ok()
            && membarrier(MembarrierCommand::GlobalExpedited).is_ok()
    })
}

/// Under loom the asymmetric form is modelled (both halves are fences); under miri there are
/// no system calls, so the fallback runs.
#[cfg(any(loom, miri))]
pub(crate) fn available() -> bool {
    cfg!(loom)
}

/// The progressing side's half, between its store and its load of the peer's state word.
/// `fence_too` when the peer may sleep without a `membarrier` (the fallback).
#[inline(always)]
pub(crate) fn light(fence_too: bool) {
    #[cfg(loom)]
    {
        let _ = fence_too;
        #[cfg(not(shmpipe_mutant = "light"))]
        fence(Ordering::SeqCst);
    }
    #[cfg(not(loom))]
    if fence_too {
        fence(Ordering::SeqCst);
    } else {
        std::sync::atomic::compiler_fence(Ordering::SeqCst);
    }
}

/// The sleeper's half, between its `WAITING` store and its re-check. `membarrier` when this
/// side announced the `MEMBARRIER` flag at claim.
#[cold]
pub(crate) fn heavy(membarrier: bool) {
    #[cfg(not(shmpipe_mutant = "heavy"))]
    fence(Ordering::SeqCst);
    #[cfg(not(any(loom, miri)))]
    if membarrier {
        use rustix::thread::{MembarrierCommand, membarrier};
        // It succeeded when it was detected; should it fail now (nothing documented makes it),
        // a wake-up may be lost, which costs a sleep slice (`wait::RECHECK`), not a message.
        let _ = membarrier(MembarrierCommand::GlobalExpedited);
    }
    #[cfg(any(loom, miri))]
    let _ = membarrier;
}
