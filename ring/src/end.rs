//! What both ends of a ring share: the segment and the bells ([`Io`]), how an end waits, the
//! failure that ended it ([`Sticky`]), and what it knows of the other side's state word
//! ([`PeerWord`]).

use std::cell::Cell;
use std::io;
#[cfg(not(any(miri, loom)))]
use std::os::fd::BorrowedFd;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use crate::barrier;
use crate::error::{Corruption, RecvError, SendError};
use crate::layout::{MEMBARRIER, STATE_ACTIVE, STATE_CLOSED, STATE_FREE, STATE_MASK, WAITING};
use crate::notify::{Bell, Wake};
use crate::raw::Region;
use crate::sync::{self, AtomicU32, Ordering};
use crate::wait::{Blocked, WaitStrategy, Waiter};

/// The memory of one ring, shared by its handles in one process and mapped by both peers.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) region: Region,
    pub(crate) max_message: usize,
    #[cfg(not(any(miri, loom)))]
    pub(crate) memfd: OwnedFd,
}

/// Which end a handle is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    Producer,
    Consumer,
}

impl Side {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Side::Producer => "producer",
            Side::Consumer => "consumer",
        }
    }
}

/// What one end works with: the segment, the bell it rings to wake its peer, the peer's
/// waiter it sleeps on, and the fd that tells it the peer is gone.
#[derive(Debug)]
pub(crate) struct Io {
    pub(crate) shared: sync::Arc<Shared>,
    /// This end's own clone of the region: what its hot path reads is in its own lines.
    pub(crate) region: Region,
    pub(crate) side: Side,
    pub(crate) bell: Bell,
    pub(crate) wake: Wake,
    /// This end's state word while it is awake: `STATE_ACTIVE`, with `MEMBARRIER` if this
    /// process sleeps with a membarrier; `STATE_CLOSED` with the same flag once it closed
    /// (a closing producer still waits, for its confirmation).
    pub(crate) own: Cell<u32>,
    pub(crate) wait: WaitStrategy,
    /// An fd that becomes readable or hangs up when the peer is gone.
    pub(crate) peer_watch: Option<Arc<OwnedFd>>,
}

impl std::ops::Deref for Io {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.shared
    }
}

impl Io {
    /// This end's state word.
    pub(crate) fn own_word(&self) -> &AtomicU32 {
        let h = self.region.header();
        match self.side {
            Side::Producer => &h.producer,
            Side::Consumer => &h.consumer,
        }
    }

    /// The other end's state word.
    pub(crate) fn peer_word(&self) -> &AtomicU32 {
        let h = self.region.header();
        match self.side {
            Side::Producer => &h.consumer,
            Side::Consumer => &h.producer,
        }
    }

    /// Whether this end sleeps with a membarrier (announced at claim).
    pub(crate) fn membarrier(&self) -> bool {
        self.own() & MEMBARRIER != 0
    }

    /// This end's state word while it is awake.
    pub(crate) fn own(&self) -> u32 {
        self.own.get()
    }

    /// A wait on the peer's bell, announced in this end's state word.
    pub(crate) fn waiter(&self, timeout: Option<Duration>) -> Waiter<'_> {
        Waiter {
            strategy: self.wait,
            wake: &self.wake,
            flag: self.own_word(),
            own: self.own(),
            membarrier: self.membarrier(),
            peer: self.peer_watch.as_deref().map(AsFd::as_fd),
            timeout,
        }
    }

    /// Watch `fd` while blocked (see `Producer::watch_peer`).
    pub(crate) fn watch_peer(&mut self, fd: Option<Arc<OwnedFd>>) -> io::Result<()> {
        self.wake.watch(fd.clone())?;
        self.peer_watch = fd;
        Ok(())
    }

    /// Store `STATE_CLOSED` (Release: after this end's last index store) and ring the peer
    /// unconditionally: once per ring, so no need to ask whether it sleeps.
    pub(crate) fn mark_closed(&self) {
        let closed = STATE_CLOSED | (self.own() & MEMBARRIER);
        self.own.set(closed);
        // SYNC(close): pairs with the other end's Acquire load of this word.
        self.own_word().store(closed, Ordering::Release);
        self.bell.ring();
    }

    /// The waiter fd this end sleeps on.
    #[cfg(not(any(miri, loom)))]
    pub(crate) fn waiter_fd(&self) -> BorrowedFd<'_> {
        self.wake.as_fd()
    }
}

/// The failure that ended an end; every later call reports it again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sticky {
    /// The other end closed (for a consumer: after everything was received).
    Closed,
    /// The other end's process is gone (for a consumer: after everything was received).
    PeerGone,
    Corrupted(Corruption),
    /// The handle was inherited across `fork()`.
    Forked,
}

impl From<Sticky> for SendError {
    fn from(s: Sticky) -> Self {
        match s {
            Sticky::Closed => SendError::Closed,
            Sticky::PeerGone => SendError::PeerGone,
            Sticky::Corrupted(c) => SendError::Corrupted(c),
            Sticky::Forked => SendError::Forked,
        }
    }
}

impl From<Sticky> for RecvError {
    fn from(s: Sticky) -> Self {
        match s {
            Sticky::Closed => RecvError::Closed,
            Sticky::PeerGone => RecvError::PeerGone,
            Sticky::Corrupted(c) => RecvError::Corrupted(c),
            Sticky::Forked => RecvError::Forked,
        }
    }
}

/// A blocking call without a timeout cannot time out.
pub(crate) fn never_timeout<E>(b: Blocked<E>) -> E {
    match b {
        Blocked::Failed(e) => e,
        Blocked::Timeout => unreachable!("no timeout was set"),
    }
}

/// What this end knows of the other end's state word: the value that means "nothing to do",
/// and whether our light barrier must still be a fence (see barrier.rs).
#[derive(Debug, Clone, Copy)]
pub(crate) struct PeerWord {
    /// The peer's word when there is nothing to do: `STATE_FREE` until the peer claims (it
    /// cannot sleep or close before), then its claimed word without WAITING. Anything else,
    /// garbage included, takes the slow path.
    pub(crate) ok: u32,
    /// Our light barrier is a SeqCst fence: until the peer has shown `MEMBARRIER`, or when our
    /// own process is not registered.
    pub(crate) fence: bool,
}

/// What an unusual peer word means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Seen {
    /// Claimed (or not yet) and awake: nothing to do.
    Quiet,
    /// It may be asleep: ring its bell.
    Waiting,
    /// It closed.
    Closed,
    /// A value the protocol never writes.
    Garbage,
}

impl Default for PeerWord {
    fn default() -> Self {
        PeerWord {
            ok: STATE_FREE,
            fence: true,
        }
    }
}

impl PeerWord {
    /// After this end's store: the light barrier, then the peer's word if it is not the usual
    /// one. The usual case is one compiler fence, one load of a line the peer rarely writes,
    /// and one compare.
    #[inline(always)]
    pub(crate) fn check(&self, word: &AtomicU32) -> Option<u32> {
        barrier::light(self.fence);
        let w = word.load(Ordering::Relaxed);
        if w == self.ok { None } else { Some(w) }
    }

    /// Make sense of an unusual word `w`, learning the usual one if it is claimed and awake.
    /// `membarrier`: whether this end's own process is registered.
    #[cold]
    pub(crate) fn learn(&mut self, w: u32, membarrier: bool) -> Seen {
        let state = w & STATE_MASK;
        if w & !(STATE_MASK | WAITING | MEMBARRIER) != 0 || state > STATE_CLOSED {
            return Seen::Garbage;
        }
        if state == STATE_ACTIVE {
            self.ok = w & !WAITING;
            self.fence = !(membarrier && w & MEMBARRIER != 0);
        }
        // A closed producer may still wait, for the consumer to confirm it read everything.
        if w & WAITING != 0 && state != STATE_FREE {
            return Seen::Waiting;
        }
        if state == STATE_CLOSED {
            return Seen::Closed;
        }
        Seen::Quiet
    }
}

/// The fast paths' one guard: open while the handle is neither armed nor failed, and only in
/// the fork generation it was claimed in (raw.rs, invariant 5). One load and one compare.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Gate {
    /// The fork generation while open; `u64::MAX`, which no u32 generation equals, while shut.
    open: u64,
    fork_gen: u32,
}

impl Gate {
    pub(crate) fn new() -> Gate {
        let fork_gen = crate::raw::fork_generation();
        Gate {
            open: u64::from(fork_gen),
            fork_gen,
        }
    }

    #[inline(always)]
    pub(crate) fn is_open(&self) -> bool {
        u64::from(crate::raw::fork_generation()) == self.open
    }

    pub(crate) fn shut(&mut self) {
        self.open = u64::MAX;
    }

    pub(crate) fn reopen(&mut self) {
        self.open = u64::from(self.fork_gen);
    }
}
