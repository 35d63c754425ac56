//! The producing side: reserve, write, commit, publish.

use std::cell::Cell;
use std::marker::PhantomData;
use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use crate::error::{CloseError, Corruption, SendError, SendTimeoutError, TrySendError};
use crate::layout::{
    self, KIND_MESSAGE, KIND_PADDING, RECORD_ALIGN, STATE_CLOSED, encode_record, record_size,
};
use crate::raw::{self, Span};
use crate::segment::Io;
use std::sync::Arc;

use crate::sync::{Ordering, fence};
use crate::wait::{Blocked, WaitFailure, WaitStrategy, Waiter};

/// What the producer does and how often; cheap enough to leave on (plain counters in the
/// handle, no atomics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProducerStats {
    /// Messages committed.
    pub messages: u64,
    /// Payload bytes committed.
    pub bytes: u64,
    /// Tail publications (one Release store each).
    pub batches: u64,
    /// Publications after which the consumer was announced asleep, so the bell was rung.
    pub wakeups_sent: u64,
    /// Publications that rang nothing, because the consumer was not asleep.
    pub wakeups_skipped: u64,
    /// Times a send found the ring full (once per blocking call, once per `Full` answer).
    pub full: u64,
    /// Times the producer went to sleep waiting for the consumer's bell.
    pub sleeps: u64,
}

/// The failure that ended this producer; every later call reports it again.
#[derive(Debug, Clone, Copy)]
enum Sticky {
    Closed,
    Corrupted(Corruption),
}

impl From<Sticky> for SendError {
    fn from(s: Sticky) -> Self {
        match s {
            Sticky::Closed => SendError::Closed,
            Sticky::Corrupted(c) => SendError::Corrupted(c),
        }
    }
}

impl WaitFailure for SendError {
    fn peer_gone() -> Self {
        SendError::PeerGone
    }
}

/// The producer's private state. Indices are free-running u64 byte counts; positions are
/// `index & mask`. Invariant: `head <= published <= tail <= head + capacity`.
#[derive(Debug)]
struct State {
    /// End of everything written, including staged records not yet published.
    tail: u64,
    /// The tail last stored to shared memory.
    published: u64,
    /// The consumer's head as last loaded and checked.
    head: u64,
    capacity: u64,
    mask: u64,
    max_message: usize,
    /// A batch publishes by itself once this many bytes are staged.
    publish_every: u64,
    /// `producer_waiting` was left set by `arm`.
    armed: bool,
    /// Neither armed nor failed: the fast path may run. One branch instead of two.
    clear: bool,
    /// The fork generation this handle was claimed in (see raw.rs, invariant 5).
    fork_gen: u32,
    closed: bool,
    sticky: Option<Sticky>,
    stats: ProducerStats,
}

/// The sending half of a ring. `Send` but not `Sync`: one thread at a time, `&mut self`.
///
/// ```compile_fail
/// fn shared<T: Sync>() {}
/// shared::<shmring_ring::Producer>();
/// ```
#[derive(Debug)]
pub struct Producer {
    io: Io,
    st: State,
    wait: WaitStrategy,
    peer: Option<Arc<OwnedFd>>,
    _not_sync: PhantomData<Cell<()>>,
}

impl State {
    fn fail(&mut self, s: Sticky) -> SendError {
        self.sticky = Some(s);
        self.clear = false;
        s.into()
    }

    #[inline]
    fn check(&mut self, sh: &Io) -> Result<(), SendError> {
        if let Some(s) = self.sticky {
            return Err(s.into());
        }
        if sh.region.forked() {
            return Err(SendError::Forked);
        }
        if self.armed {
            self.armed = false;
            self.clear = true;
            sh.region
                .header()
                .producer_waiting
                .store(0, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Clear a waiting flag left by `arm`, so a closed producer is not rung for nothing.
    fn disarm(&mut self, sh: &Io) {
        if self.armed {
            self.armed = false;
            self.clear = self.sticky.is_none();
            sh.region
                .header()
                .producer_waiting
                .store(0, Ordering::Relaxed);
        }
    }

    /// Find room for a `len`-byte message, writing a padding record first if it must wrap.
    /// Returns the index of the record header. `Ok(None)` means full.
    #[inline]
    fn reserve(&mut self, sh: &Io, len: usize) -> Result<Option<u64>, SendError> {
        self.check(sh)?;
        if len > self.max_message {
            return Err(SendError::TooLarge {
                len,
                max: self.max_message,
            });
        }
        if !self.fits(sh, len)? {
            return Ok(None);
        }
        let size = record_size(len) as u64;
        let pos = self.tail & self.mask;
        let to_end = self.capacity - pos;
        if size > to_end {
            let pad = encode_record(KIND_PADDING, (to_end - RECORD_ALIGN as u64) as u32);
            sh.region.store_word(pos as usize, pad);
            return Ok(Some(self.tail.wrapping_add(to_end)));
        }
        Ok(Some(self.tail))
    }

    /// Is there room for a `len`-byte message (and the padding before it, if it must wrap)?
    /// Looks at the consumer's index only when the cached one says no.
    #[inline]
    fn fits(&mut self, sh: &Io, len: usize) -> Result<bool, SendError> {
        let size = record_size(len) as u64;
        let to_end = self.capacity - (self.tail & self.mask);
        let need = if size <= to_end { size } else { to_end + size };
        if self.tail.wrapping_sub(self.head) + need <= self.capacity {
            return Ok(true);
        }
        self.refresh_head(sh)?;
        Ok(self.tail.wrapping_sub(self.head) + need <= self.capacity)
    }

    /// Make the record at `start` (payload already written) part of the staged tail.
    #[inline]
    fn commit(&mut self, sh: &Io, start: u64, len: usize) {
        let pos = (start & self.mask) as usize;
        sh.region
            .store_word(pos, encode_record(KIND_MESSAGE, len as u32));
        self.tail = start.wrapping_add(record_size(len) as u64);
        self.stats.messages += 1;
        self.stats.bytes += len as u64;
    }

    /// Store the tail (once for everything staged) and wake the consumer if it sleeps.
    #[inline(always)]
    fn publish(&mut self, sh: &Io) -> Result<(), SendError> {
        if self.tail == self.published {
            return Ok(());
        }
        let h = sh.region.header();
        // Checked before the store, never after: `Closed` must mean "not delivered". A check
        // after it would report a message the consumer read just before closing as lost (the
        // loom model `loom_sleep_wake_consumer` caught that), inviting a duplicate resend.
        if h.consumer_state.load(Ordering::Relaxed) == STATE_CLOSED {
            return Err(self.fail(Sticky::Closed));
        }
        // SYNC(tail): Release publishes every record up to `tail`; pairs with the consumer's
        // Acquire load in `refresh_tail`.
        h.tail.store(self.tail, Ordering::Release);
        self.published = self.tail;
        self.stats.batches += 1;
        // WAKE(data): this fence orders the tail store before the flag load; it pairs with
        // the fence between the consumer's flag store and its re-check (wait.rs). See there.
        fence(Ordering::SeqCst);
        if h.consumer_waiting.load(Ordering::Relaxed) != 0 {
            self.stats.wakeups_sent += 1;
            // A failed write cannot lose the message: the consumer re-checks on a timer.
            sh.bell.ring();
        } else {
            self.stats.wakeups_skipped += 1;
        }
        Ok(())
    }

    /// Load and check the consumer's index (only when the cached one says "full").
    #[inline(never)]
    fn refresh_head(&mut self, sh: &Io) -> Result<(), SendError> {
        let h = sh.region.header();
        // SYNC(head): Acquire pairs with the consumer's Release store in `release`: the
        // consumer's reads of the bytes it released happen before we overwrite them.
        let head = h.head.load(Ordering::Acquire);
        match layout::check_head(self.published, self.head, head, self.capacity as usize) {
            Ok(_) => self.head = head,
            Err(c) => return Err(self.fail(Sticky::Corrupted(c))),
        }
        if h.consumer_state.load(Ordering::Acquire) == STATE_CLOSED {
            return Err(self.fail(Sticky::Closed));
        }
        Ok(())
    }

    /// Stage `msg` (and publish it if asked, or if a quarter ring is staged). `Ok(false)`
    /// means full. The fast path covers the common case (room by the cached head, no wrap,
    /// nothing pending) in one guard; everything else takes the general path.
    #[inline(always)]
    fn try_send(&mut self, sh: &Io, msg: &[u8], publish: bool) -> Result<bool, SendError> {
        let len = msg.len();
        if self.clear && len <= self.max_message && raw::fork_generation() == self.fork_gen {
            let size = record_size(len) as u64;
            let pos = self.tail & self.mask;
            if size <= self.capacity - pos
                && self.tail.wrapping_sub(self.head) + size <= self.capacity
            {
                sh.region.write_record(pos as usize, KIND_MESSAGE, msg);
                self.tail = self.tail.wrapping_add(size);
                self.stats.messages += 1;
                self.stats.bytes += len as u64;
                if publish || self.tail.wrapping_sub(self.published) >= self.publish_every {
                    self.publish(sh)?;
                }
                return Ok(true);
            }
        }
        self.try_send_slow(sh, msg, publish)
    }

    #[cold]
    #[inline(never)]
    fn try_send_slow(&mut self, sh: &Io, msg: &[u8], publish: bool) -> Result<bool, SendError> {
        let Some(start) = self.reserve(sh, msg.len())? else {
            return Ok(false);
        };
        let pos = (start & self.mask) as usize;
        sh.region.write(pos + RECORD_ALIGN, msg);
        self.commit(sh, start, msg.len());
        if publish || self.tail.wrapping_sub(self.published) >= self.publish_every {
            self.publish(sh)?;
        }
        Ok(true)
    }
}

impl Producer {
    pub(crate) fn new(io: Io, head: u64, tail: u64, wait: WaitStrategy) -> Producer {
        let capacity = io.region.capacity() as u64;
        let st = State {
            tail,
            published: tail,
            head,
            capacity,
            mask: capacity - 1,
            max_message: io.max_message,
            publish_every: capacity / 4,
            armed: false,
            clear: true,
            fork_gen: crate::raw::fork_generation(),
            closed: false,
            sticky: None,
            stats: ProducerStats::default(),
        };
        Producer {
            io,
            st,
            wait,
            peer: None,
            _not_sync: PhantomData,
        }
    }

    /// Send `msg` if there is room now, and publish it.
    ///
    /// # Errors
    ///
    /// [`TrySendError::Full`] if there is no room (nothing written), otherwise a
    /// [`SendError`] that will not go away.
    #[inline]
    pub fn try_send(&mut self, msg: &[u8]) -> Result<(), TrySendError> {
        match self.st.try_send(&self.io, msg, true) {
            Ok(true) => Ok(()),
            Ok(false) => {
                self.st.stats.full += 1;
                Err(TrySendError::Full)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Send `msg`, waiting for room as long as it takes.
    ///
    /// # Errors
    ///
    /// A [`SendError`]: too large, consumer closed or gone, ring corrupted.
    pub fn send(&mut self, msg: &[u8]) -> Result<(), SendError> {
        self.send_impl(msg, None, true).map_err(never_timeout)
    }

    /// Send `msg`, waiting for room at most `timeout`.
    ///
    /// # Errors
    ///
    /// [`SendTimeoutError::Timeout`] if there was still no room (nothing written), or a
    /// [`SendError`].
    pub fn send_timeout(&mut self, msg: &[u8], timeout: Duration) -> Result<(), SendTimeoutError> {
        self.send_impl(msg, Some(timeout), true)
            .map_err(timeout_error)
    }

    /// Send every message in order, publishing once per run that fits (and at least every
    /// quarter ring), waiting for room as needed. On error, the messages before the failing
    /// one were sent.
    ///
    /// # Errors
    ///
    /// As for [`Producer::send`].
    pub fn send_all<M: AsRef<[u8]>>(&mut self, msgs: &[M]) -> Result<(), SendError> {
        let mut batch = self.batch();
        for m in msgs {
            batch.send(m.as_ref())?;
        }
        batch.publish()
    }

    /// Stage several messages and publish them with one index store: the batch publishes
    /// when dropped or on [`Batch::publish`], before it waits for room, and by itself once a
    /// quarter of the ring is staged.
    pub fn batch(&mut self) -> Batch<'_> {
        Batch { producer: self }
    }

    /// Reserve room for a `len`-byte message and get a [`Grant`] to write it in place.
    /// Nothing is visible to the consumer until [`Grant::commit`]; a dropped grant gives the
    /// room back.
    ///
    /// # Errors
    ///
    /// As for [`Producer::try_send`].
    pub fn try_reserve(&mut self, len: usize) -> Result<Grant<'_>, TrySendError> {
        match self.st.reserve(&self.io, len) {
            Ok(Some(start)) => Ok(self.grant(start, len, true)),
            Ok(None) => {
                self.st.stats.full += 1;
                Err(TrySendError::Full)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Reserve room for a `len`-byte message, waiting as long as it takes.
    ///
    /// # Errors
    ///
    /// As for [`Producer::send`].
    pub fn reserve(&mut self, len: usize) -> Result<Grant<'_>, SendError> {
        let start = self.reserve_impl(len, None).map_err(never_timeout)?;
        Ok(self.grant(start, len, true))
    }

    /// Reserve room for a `len`-byte message, waiting at most `timeout`.
    ///
    /// # Errors
    ///
    /// As for [`Producer::send_timeout`].
    pub fn reserve_timeout(
        &mut self,
        len: usize,
        timeout: Duration,
    ) -> Result<Grant<'_>, SendTimeoutError> {
        let start = self
            .reserve_impl(len, Some(timeout))
            .map_err(timeout_error)?;
        Ok(self.grant(start, len, true))
    }

    /// Publish anything staged (by a batch that is still alive, or a committed grant of one).
    ///
    /// # Errors
    ///
    /// [`SendError::Closed`] if the consumer is gone.
    pub fn flush(&mut self) -> Result<(), SendError> {
        self.st.check(&self.io)?;
        self.st.publish(&self.io)
    }

    /// Mark the ring closed, wake the consumer, and wait at most `timeout` until it has
    /// consumed everything. `Ok` means every committed message was read; `Duration::ZERO`
    /// checks without waiting. Dropping a producer closes without waiting.
    ///
    /// # Errors
    ///
    /// [`CloseError::Timeout`] or [`CloseError::Unconsumed`] with the bytes not consumed, or
    /// the [`SendError`] that had already ended this producer.
    pub fn close(mut self, timeout: Duration) -> Result<(), CloseError> {
        let sh = &self.io;
        let st = &mut self.st;
        if sh.region.forked() {
            return Err(SendError::Forked.into());
        }
        st.disarm(sh);
        let published = st.publish(sh);
        st.closed = true;
        mark_closed(sh);
        published?;
        let waiter = Waiter {
            strategy: self.wait,
            wake: &sh.wake,
            flag: &sh.region.header().producer_waiting,
            peer: self.peer.as_deref().map(AsFd::as_fd),
            // A timeout too long to represent means no deadline.
            timeout: Some(timeout),
        };
        let mut sleeps = 0;
        let r = waiter.wait(&mut sleeps, || {
            let h = sh.region.header();
            let mut drained = || -> Result<bool, SendError> {
                let head = h.head.load(Ordering::Acquire); // SYNC(head)
                layout::check_head(st.published, st.head, head, st.capacity as usize)?;
                st.head = head;
                Ok(head == st.published)
            };
            if drained()? {
                return Ok(Some(()));
            }
            // SYNC(close): Acquire pairs with the consumer's Release store of CLOSED, which
            // follows its last head store; re-read the head, or a final release that landed
            // between our two loads would be reported as unconsumed data.
            if h.consumer_state.load(Ordering::Acquire) == STATE_CLOSED {
                return if drained()? {
                    Ok(Some(()))
                } else {
                    Err(SendError::Closed)
                };
            }
            Ok(None)
        });
        st.stats.sleeps += sleeps;
        let unconsumed = st.published.wrapping_sub(st.head);
        match r {
            Ok(()) => Ok(()),
            Err(Blocked::Timeout) => Err(CloseError::Timeout { unconsumed }),
            Err(Blocked::Failed(SendError::Closed | SendError::PeerGone)) => {
                Err(CloseError::Unconsumed { unconsumed })
            }
            Err(Blocked::Failed(e)) => Err(e.into()),
        }
    }

    /// Set the producer's `waiting` flag for an external event loop and report whether a
    /// `len`-byte message fits now. If it returns `Ok(false)`, wait until [`AsFd::as_fd`]
    /// (where the consumer's bell rings) is readable, then retry the send; the next send clears the
    /// flag. If it returns `Ok(true)`, send at once (the flag is already cleared).
    ///
    /// # Errors
    ///
    /// As for [`Producer::send`].
    pub fn arm(&mut self, len: usize) -> Result<bool, SendError> {
        let sh = &self.io;
        self.st.check(sh)?;
        if len > self.st.max_message {
            return Err(SendError::TooLarge {
                len,
                max: self.st.max_message,
            });
        }
        self.st.publish(sh)?;
        // Harvest old rings first: the waiter stays readable until harvested, and what it
        // said is about to be re-checked anyway.
        sh.wake.reset();
        let flag = &sh.region.header().producer_waiting;
        flag.store(1, Ordering::Relaxed);
        self.st.armed = true;
        self.st.clear = false;
        fence(Ordering::SeqCst); // WAKE(space): see wait.rs
        let ready = self.st.fits(sh, len)?;
        if ready {
            flag.store(0, Ordering::Relaxed);
            self.st.armed = false;
            self.st.clear = self.st.sticky.is_none();
        }
        Ok(ready)
    }

    /// Watch `fd` while blocked: when it becomes readable or hangs up, the peer is taken to
    /// be gone and blocking calls fail with [`SendError::PeerGone`]. Use a pidfd of the peer
    /// process, or a socket the peer never writes to after set-up.
    ///
    /// # Errors
    ///
    /// If the fd cannot be added to this handle's epoll set (`epoll_ctl`).
    pub fn watch_peer(&mut self, fd: Option<Arc<OwnedFd>>) -> std::io::Result<()> {
        self.io.wake.watch(fd.clone())?;
        self.peer = fd;
        Ok(())
    }

    /// Change how this handle waits.
    pub fn set_wait(&mut self, wait: WaitStrategy) {
        self.wait = wait;
    }

    /// Counters since the handle was claimed.
    pub fn stats(&self) -> ProducerStats {
        self.st.stats
    }

    /// Data capacity in bytes.
    pub fn capacity(&self) -> usize {
        self.st.capacity as usize
    }

    /// Largest message in bytes.
    pub fn max_message(&self) -> usize {
        self.st.max_message
    }

    fn grant(&mut self, start: u64, len: usize, publish: bool) -> Grant<'_> {
        Grant {
            shared: &self.io,
            st: &mut self.st,
            start,
            len,
            written: 0,
            publish,
        }
    }

    /// The slow path of every blocking send: publish what is staged (the consumer may be
    /// waiting for it), then wait for room.
    fn send_impl(
        &mut self,
        msg: &[u8],
        timeout: Option<Duration>,
        publish: bool,
    ) -> Result<(), Blocked<SendError>> {
        if self.st.try_send(&self.io, msg, publish)? {
            return Ok(());
        }
        self.st.stats.full += 1;
        let sh = &self.io;
        let st = &mut self.st;
        st.publish(sh)?;
        let waiter = waiter(sh, self.wait, &self.peer, timeout);
        let mut sleeps = 0;
        let r = waiter.wait(&mut sleeps, || {
            st.try_send(sh, msg, publish).map(|sent| sent.then_some(()))
        });
        st.stats.sleeps += sleeps;
        r
    }

    fn reserve_impl(
        &mut self,
        len: usize,
        timeout: Option<Duration>,
    ) -> Result<u64, Blocked<SendError>> {
        if let Some(start) = self.st.reserve(&self.io, len)? {
            return Ok(start);
        }
        self.st.stats.full += 1;
        let sh = &self.io;
        let st = &mut self.st;
        st.publish(sh)?;
        let waiter = waiter(sh, self.wait, &self.peer, timeout);
        let mut sleeps = 0;
        let r = waiter.wait(&mut sleeps, || st.reserve(sh, len));
        st.stats.sleeps += sleeps;
        r
    }
}

fn waiter<'a>(
    sh: &'a Io,
    strategy: WaitStrategy,
    peer: &'a Option<Arc<OwnedFd>>,
    timeout: Option<Duration>,
) -> Waiter<'a> {
    Waiter {
        strategy,
        wake: &sh.wake,
        flag: &sh.region.header().producer_waiting,
        peer: peer.as_deref().map(AsFd::as_fd),
        timeout,
    }
}

/// Store CLOSED and wake the consumer unconditionally (once per ring: no need to ask).
fn mark_closed(sh: &Io) {
    let h = sh.region.header();
    // SYNC(close): Release orders the final tail store before it; pairs with the consumer's
    // Acquire load of `producer_state` in `refresh_tail`.
    h.producer_state.store(STATE_CLOSED, Ordering::Release);
    sh.bell.ring();
}

impl Drop for Producer {
    fn drop(&mut self) {
        if self.st.closed || self.io.region.forked() {
            return;
        }
        self.st.disarm(&self.io);
        let _ = self.st.publish(&self.io);
        mark_closed(&self.io);
    }
}

#[cfg(not(any(miri, loom)))]
impl AsFd for Producer {
    /// An epoll fd that becomes readable when the consumer rings (see [`Producer::arm`]).
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.io.wake.as_fd()
    }
}

fn never_timeout(b: Blocked<SendError>) -> SendError {
    match b {
        Blocked::Failed(e) => e,
        Blocked::Timeout => unreachable!("no timeout was set"),
    }
}

fn timeout_error(b: Blocked<SendError>) -> SendTimeoutError {
    match b {
        Blocked::Failed(e) => SendTimeoutError::Failed(e),
        Blocked::Timeout => SendTimeoutError::Timeout,
    }
}

/// Messages staged together and published with one index store. See [`Producer::batch`].
#[derive(Debug)]
pub struct Batch<'a> {
    producer: &'a mut Producer,
}

impl Batch<'_> {
    /// Stage `msg` if there is room now.
    ///
    /// # Errors
    ///
    /// As for [`Producer::try_send`]; on `Full`, what was staged stays staged.
    #[inline]
    pub fn try_send(&mut self, msg: &[u8]) -> Result<(), TrySendError> {
        let p = &mut *self.producer;
        match p.st.try_send(&p.io, msg, false) {
            Ok(true) => Ok(()),
            Ok(false) => {
                p.st.stats.full += 1;
                Err(TrySendError::Full)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Stage `msg`, publishing what is staged and waiting if there is no room.
    ///
    /// # Errors
    ///
    /// As for [`Producer::send`].
    pub fn send(&mut self, msg: &[u8]) -> Result<(), SendError> {
        self.producer
            .send_impl(msg, None, false)
            .map_err(never_timeout)
    }

    /// Stage `msg`, waiting at most `timeout` for room.
    ///
    /// # Errors
    ///
    /// As for [`Producer::send_timeout`].
    pub fn send_timeout(&mut self, msg: &[u8], timeout: Duration) -> Result<(), SendTimeoutError> {
        self.producer
            .send_impl(msg, Some(timeout), false)
            .map_err(timeout_error)
    }

    /// Reserve room to write a message in place; its commit stages it in this batch.
    ///
    /// # Errors
    ///
    /// As for [`Producer::try_reserve`].
    pub fn try_reserve(&mut self, len: usize) -> Result<Grant<'_>, TrySendError> {
        let p = &mut *self.producer;
        match p.st.reserve(&p.io, len) {
            Ok(Some(start)) => Ok(p.grant(start, len, false)),
            Ok(None) => {
                p.st.stats.full += 1;
                Err(TrySendError::Full)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Publish everything staged now, with one index store.
    ///
    /// # Errors
    ///
    /// [`SendError::Closed`] if the consumer is gone.
    pub fn publish(&mut self) -> Result<(), SendError> {
        self.producer.flush()
    }

    /// Bytes staged and not yet published (record headers and padding included).
    pub fn staged_bytes(&self) -> usize {
        self.producer
            .st
            .tail
            .wrapping_sub(self.producer.st.published) as usize
    }
}

impl Drop for Batch<'_> {
    fn drop(&mut self) {
        // An error here is sticky and reported by the producer's next call.
        let _ = self.producer.flush();
    }
}

/// Room for one message, reserved in the ring and invisible to the consumer until committed.
/// Dropping it without [`commit`](Grant::commit) gives the room back.
///
/// The bytes are not zeroed: they hold whatever an earlier message left there. A grant never
/// hands out a reference to them except through the `unsafe` [`Grant::as_mut_slice`].
#[derive(Debug)]
pub struct Grant<'a> {
    shared: &'a Io,
    st: &'a mut State,
    start: u64,
    len: usize,
    written: usize,
    publish: bool,
}

impl Grant<'_> {
    fn span(&self) -> Span<'_> {
        let pos = (self.start & self.st.mask) as usize + RECORD_ALIGN;
        self.shared.region.span(pos, self.len)
    }

    /// Reserved length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True for a zero-length reservation.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Copy `bytes` to `offset` in the reservation.
    ///
    /// # Panics
    ///
    /// If `offset + bytes.len()` exceeds [`Grant::len`].
    pub fn write_at(&mut self, offset: usize, bytes: &[u8]) {
        self.span().write_at(offset, bytes);
    }

    /// Fill the whole reservation from `bytes`.
    ///
    /// # Panics
    ///
    /// If `bytes.len()` differs from [`Grant::len`].
    pub fn copy_from_slice(&mut self, bytes: &[u8]) {
        assert_eq!(
            bytes.len(),
            self.len,
            "source length differs from the grant length"
        );
        self.span().write_at(0, bytes);
    }

    /// Bytes written so far through [`std::io::Write`].
    pub fn written(&self) -> usize {
        self.written
    }

    /// The reservation as a mutable slice, for serializers that write in place.
    ///
    /// # Safety
    ///
    /// The bytes live in memory the consumer's process can also write. The slice is sound
    /// only if no one else reads or writes this range while it lives, which holds for any
    /// consumer that follows the protocol (it never touches unpublished bytes), such as this
    /// crate's. Against a hostile peer, use [`Grant::write_at`] instead.
    #[cfg(not(loom))]
    pub unsafe fn as_mut_slice(&mut self) -> &mut [u8] {
        let mut span = self.span();
        // SAFETY: the caller guarantees exclusive access (this fn's contract); the span is
        // the reserved range, and `&mut self` keeps this the only slice of it.
        unsafe { span.as_mut_slice() }
    }

    /// Give the room back without publishing anything: the same as dropping the grant.
    pub fn abort(self) {}

    /// Publish (or, in a batch, stage) the message with all [`Grant::len`] bytes.
    ///
    /// # Errors
    ///
    /// [`SendError::Closed`] if the consumer is gone.
    pub fn commit(self) -> Result<(), SendError> {
        let len = self.len;
        self.commit_prefix(len)
    }

    /// Publish (or stage) only the first `len` bytes; the rest of the room goes back.
    ///
    /// # Panics
    ///
    /// If `len` exceeds [`Grant::len`].
    ///
    /// # Errors
    ///
    /// As for [`Grant::commit`].
    pub fn commit_prefix(self, len: usize) -> Result<(), SendError> {
        assert!(len <= self.len, "commit of more than was reserved");
        self.st.commit(self.shared, self.start, len);
        if self.publish || self.st.tail.wrapping_sub(self.st.published) >= self.st.publish_every {
            self.st.publish(self.shared)?;
        }
        Ok(())
    }
}

impl std::io::Write for Grant<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = buf.len().min(self.len - self.written);
        self.span().write_at(self.written, &buf[..n]);
        self.written += n;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
