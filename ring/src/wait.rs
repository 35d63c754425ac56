//! How blocking calls wait: crossbeam's ladder of try, spin, announce, re-check, sleep.

use std::io;
use std::os::fd::BorrowedFd;
use std::time::{Duration, Instant};

use crate::notify::{self, Wake, Woken};
use crate::sync::{AtomicU32, Ordering, fence, spin_hint};

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
    /// This side's "I may be asleep" flag in the shared header.
    pub(crate) flag: &'a AtomicU32,
    /// An fd that becomes readable or hung up when the peer is gone.
    pub(crate) peer: Option<BorrowedFd<'a>>,
    /// How long to wait at most; `None`: as long as it takes.
    pub(crate) timeout: Option<Duration>,
}

/// Clears the waiting flag on every way out of a sleep loop.
struct Announced<'a>(&'a AtomicU32);

impl Drop for Announced<'_> {
    fn drop(&mut self) {
        self.0.store(0, Ordering::Relaxed);
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
            loop {
                if let Some(v) = attempt()? {
                    return Ok(v);
                }
                spin_hint();
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

        let _announced = Announced(self.flag);
        loop {
            // WAKE: announce, then re-check. This store, the SeqCst fence and the re-check
            // pair with the peer's index store, fence and load of this flag
            // (`publish`/`release`): of the two stores, at least one is seen by the other
            // side's load. Either our re-check sees the new index, or the peer sees the flag
            // and signals; without both fences each side could read the other's old value
            // and we would sleep on data that is already there (the loom model
            // `sleep_wake` finds exactly that).
            self.flag.store(1, Ordering::Relaxed);
            fence(Ordering::SeqCst);
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
