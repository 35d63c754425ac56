//! How blocking calls wait: crossbeam's ladder of try, spin, announce, re-check, sleep.

use std::io;
use std::os::fd::BorrowedFd;
use std::time::{Duration, Instant};

use crate::barrier;
use crate::error::{RecvError, RecvTimeoutError, SendError, SendTimeoutError};
use crate::layout::WAITING;
use crate::notify::{self, Wake, Woken};
use crate::sync::{AtomicU32, Ordering, Pacer};

/// Default spin budget of [`WaitStrategy::SpinThenBlock`]: about two blocking wake-ups on the
/// reference machine, so spinning never costs more than twice what it saves.
pub const DEFAULT_SPIN: Duration = Duration::from_micros(50);

/// The longest a sleeper trusts the peer's bell: it re-checks the ring at least this often,
/// so a wake-up stolen by a hostile peer delays it, never hangs it.
pub(crate) const RECHECK: Duration = Duration::from_millis(100);

/// How a blocking call waits for the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum WaitStrategy {
    /// Never sleep: poll the ring until it is ready or the deadline passes. The lowest
    /// latency; burns the core while waiting.
    Spin,
    /// Announce and sleep at once. No spinning; every wait costs a wake-up.
    Block,
    /// Spin for up to the given time, then sleep. The default, with [`DEFAULT_SPIN`].
    SpinThenBlock(Duration),
}

impl Default for WaitStrategy {
    fn default() -> Self {
        WaitStrategy::SpinThenBlock(DEFAULT_SPIN)
    }
}

/// The two ways a wait fails that are not the operation's own errors.
pub(crate) trait WaitFailure: From<io::Error> {
    fn peer_gone() -> Self;
}

/// How a wait ended without a value.
#[derive(Debug)]
pub(crate) enum Blocked<E> {
    Timeout,
    Failed(E),
}

impl<E> From<E> for Blocked<E> {
    fn from(e: E) -> Self {
        Blocked::Failed(e)
    }
}

/// What a wait needs besides the attempt itself.
pub(crate) struct Waiter<'a> {
    pub(crate) strategy: WaitStrategy,
    /// The peer's bell, which this side sleeps on.
    pub(crate) wake: &'a Wake,
    /// This side's state word in the shared header, where it announces `WAITING`.
    pub(crate) flag: &'a AtomicU32,
    /// The state word's value while this side is awake.
    pub(crate) own: u32,
    /// Whether this side's heavy barrier is a membarrier (it announced `MEMBARRIER`).
    pub(crate) membarrier: bool,
    /// An fd that becomes readable or hung up when the peer is gone.
    pub(crate) peer: Option<BorrowedFd<'a>>,
    /// How long to wait at most; `None`: as long as it takes.
    pub(crate) timeout: Option<Duration>,
}

/// Announce that this side may sleep: store `WAITING` in its state word, then the heavy
/// barrier. The caller re-checks the ring after this and sleeps only if nothing changed.
///
/// WAKE: this store, the barrier and the re-check pair with the other side's record or index
/// store, light barrier and load of this word (`PeerWord::check`): of the two stores, at
/// least one is seen by the other side's load. Either our re-check sees the progress, or the
/// other side sees `WAITING` and rings. Without either barrier each side could read the
/// other's old value and we would sleep on progress already made; the loom model
/// `loom_sleep_wake_consumer` and its mutants (ring/tests/loom.rs) show exactly that.
/// barrier.rs says why a membarrier here lets the other side use a compiler fence.
pub(crate) fn announce(flag: &AtomicU32, own: u32, membarrier: bool) {
    flag.store(own | WAITING, Ordering::Relaxed);
    barrier::heavy(membarrier);
}

/// Clears the waiting flag on every way out of a sleep loop.
struct Announced<'a> {
    flag: &'a AtomicU32,
    own: u32,
}

impl Drop for Announced<'_> {
    fn drop(&mut self) {
        self.flag.store(self.own, Ordering::Relaxed);
    }
}

impl Waiter<'_> {
    /// Run `attempt` until it yields a value, fails, or the timeout passes. `attempt`
    /// returns `Ok(None)` for "not yet". `sleeps` counts sleeps.
    ///
    /// The clock is read only once the wait is under way (after 64 spin turns, or before the
    /// first sleep): a message that arrives while we spin costs no clock read, which in a VM
    /// costs as much as the rest of a round trip. The timeout is counted from that first
    /// read, so a wait may last a few microseconds longer than asked, never shorter.
    pub(crate) fn wait<T, E: WaitFailure>(
        &self,
        sleeps: &mut u64,
        mut attempt: impl FnMut() -> Result<Option<T>, E>,
    ) -> Result<T, Blocked<E>> {
        if self.timeout == Some(Duration::ZERO) {
            return attempt()?.ok_or(Blocked::Timeout);
        }
        // `None` until the clock is first read; then the deadline, if any.
        let mut clock: Option<(Instant, Option<Instant>)> = None;
        let mut started = |now: Instant| {
            *clock.get_or_insert_with(|| (now, self.timeout.and_then(|t| now.checked_add(t))))
        };
        let spin = match self.strategy {
            WaitStrategy::Spin => None,
            WaitStrategy::Block => Some(Duration::ZERO),
            WaitStrategy::SpinThenBlock(d) => Some(d),
        };
        if spin != Some(Duration::ZERO) {
            let mut tries = 0u32;
            let mut pacer = Pacer::default();
            loop {
                if let Some(v) = attempt()? {
                    return Ok(v);
                }
                pacer.pause();
                tries = tries.wrapping_add(1);
                // Reading the clock costs ~25 ns or more; do it every 64 turns.
                if tries % 64 == 0 {
                    let now = Instant::now();
                    let (start, deadline) = started(now);
                    if deadline.is_some_and(|d| now >= d) {
                        return Err(Blocked::Timeout);
                    }
                    if spin.is_some_and(|s| now - start >= s) {
                        break;
                    }
                    if tries % (64 * 256) == 0 && self.peer.is_some_and(notify::peer_gone) {
                        return self.after_peer_gone(&mut attempt);
                    }
                }
            }
        }

        let _announced = Announced {
            flag: self.flag,
            own: self.own,
        };
        loop {
            announce(self.flag, self.own, self.membarrier);
            if let Some(v) = attempt()? {
                return Ok(v);
            }
            let now = Instant::now();
            let slice = match started(now).1 {
                None => RECHECK,
                Some(d) => {
                    let left = d.saturating_duration_since(now);
                    if left.is_zero() {
                        return Err(Blocked::Timeout);
                    }
                    left.min(RECHECK)
                }
            };
            *sleeps += 1;
            match self.wake.wait(slice).map_err(E::from)? {
                Woken::PeerGone => return self.after_peer_gone(&mut attempt),
                Woken::Signalled | Woken::TimedOut => {}
            }
        }
    }

    /// The peer is gone: hand over anything it committed first, then report it.
    fn after_peer_gone<T, E: WaitFailure>(
        &self,
        attempt: &mut impl FnMut() -> Result<Option<T>, E>,
    ) -> Result<T, Blocked<E>> {
        match attempt()? {
            Some(v) => Ok(v),
            None => Err(Blocked::Failed(E::peer_gone())),
        }
    }
}

impl From<Blocked<SendError>> for SendTimeoutError {
    fn from(b: Blocked<SendError>) -> Self {
        match b {
            Blocked::Failed(e) => SendTimeoutError::Failed(e),
            Blocked::Timeout => SendTimeoutError::Timeout,
        }
    }
}

impl From<Blocked<RecvError>> for RecvTimeoutError {
    fn from(b: Blocked<RecvError>) -> Self {
        match b {
            Blocked::Failed(e) => RecvTimeoutError::Failed(e),
            Blocked::Timeout => RecvTimeoutError::Timeout,
        }
    }
}
