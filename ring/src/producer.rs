//! The producing side: reserve, write, stage, publish.
//!
//! A record is published by its own header word: the producer writes the payload, clears the
//! word just after the record (so the consumer finds zero there, never a word left from an
//! earlier lap), and stores the header word with Release. A batch defers only its first
//! header word: the records after it are unreachable until that one store publishes them all.

use std::cell::Cell;
use std::marker::PhantomData;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use crossbeam_utils::CachePadded;

use crate::end::{Gate, Io, PeerWord, Seen, Sticky, never_timeout};
use crate::error::{CloseError, Corruption, SendError, SendTimeoutError, TrySendError};
use crate::layout::{
    self, KIND_MESSAGE, KIND_PADDING, RECORD_ALIGN, STATE_CLOSED, STATE_MASK, encode_record,
    record_size,
};
use crate::raw::SpanMut;
use crate::sync::Ordering;
use crate::wait::{self, Blocked, WaitFailure, WaitStrategy};

/// What the producer does and how often; cheap enough to leave on (plain counters in the
/// handle, no atomics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProducerStats {
    /// Messages committed.
    pub messages: u64,
    /// Payload bytes committed.
    pub bytes: u64,
    /// Publications (one Release store of a header word each).
    pub batches: u64,
    /// Publications after which the consumer was announced asleep, so its bell was rung.
    pub wakeups_sent: u64,
    /// Times a send found the ring full (once per blocking call, once per `Full` answer).
    pub full: u64,
    /// Times the producer went to sleep waiting for the consumer's bell.
    pub sleeps: u64,
    /// Whether publications use a compiler fence only, because both processes sleep with a
    /// membarrier (docs/design.md, "The wake-up fence"); false while that is not known yet,
    /// and on kernels or sandboxes without `membarrier(2)`.
    pub membarrier: bool,
}

impl WaitFailure for SendError {
    fn peer_gone() -> Self {
        SendError::PeerGone
    }
}

/// The producer's private state. Indices are free-running u64 byte counts; positions are
/// `index & mask`. Invariant: `head <= published <= tail`, `tail + 8 <= head + capacity`.
#[derive(Debug)]
struct State {
    /// End of everything written, including staged records.
    tail: u64,
    /// Messages committed.
    messages: u64,
    /// Everything before this index is visible to the consumer. When something is staged,
    /// the record at `published` is the first one, and `pending` is its header word.
    published: u64,
    /// The header word of the record at `published`, not stored yet; 0 when nothing is staged.
    pending: u64,
    /// The consumer's head as last loaded and checked.
    head: u64,
    capacity: u64,
    mask: u64,
    max_message: usize,
    /// A batch publishes by itself once this many bytes are staged.
    publish_every: u64,
    /// The consumer's state word, as far as we know it.
    peer: PeerWord,
    /// Our state word was left with `WAITING` by `arm`.
    armed: bool,
    /// Neither armed nor failed, nor forked: the fast path may run.
    gate: Gate,
    closed: bool,
    sticky: Option<Sticky>,
    stats: ProducerStats,
    /// Payload bytes (kept apart from `messages`: two adjacent counters are merged into one
    /// vector add, which costs more than two scalar ones).
    bytes: u64,
}

/// The sending half of a ring. `Send` but not `Sync`: one thread at a time, `&mut self`.
///
/// ```compile_fail
/// fn shared<T: Sync>() {}
/// shared::<shmpipe_ring::Producer>();
/// ```
#[derive(Debug)]
pub struct Producer {
    io: Io,
    /// Alone in its cache lines: nothing another thread of this process touches can share a
    /// line with what this handle writes per message.
    st: CachePadded<State>,
    /// The `serde` feature's encoding buffer (`crate::typed`): grows to the largest value sent
    /// and stays.
    #[cfg(feature = "serde")]
    pub(crate) scratch: Vec<u8>,
    _not_sync: PhantomData<Cell<()>>,
}

/// Where a reserved message goes: `at` is where its first record starts (padding to the
/// ring's end, if it must wrap), `start` its own header.
#[derive(Debug, Clone, Copy)]
struct Slot {
    at: u64,
    start: u64,
}

impl State {
    fn fail(&mut self, s: Sticky) -> SendError {
        self.sticky = Some(s);
        self.gate.shut();
        s.into()
    }

    /// Everything the fast path skips: a sticky failure, a fork, an `arm` to undo, a
    /// consumer word that is not the usual one (closed: fail before writing anything, so that
    /// `Closed` means "not delivered").
    fn check(&mut self, sh: &Io) -> Result<(), SendError> {
        self.check_live(sh, false)
    }

    /// [`State::check`], keeping an `arm` if `keep_armed` unless the consumer's word ends the
    /// ring.
    fn check_live(&mut self, sh: &Io, keep_armed: bool) -> Result<(), SendError> {
        if let Some(s) = self.sticky {
            return Err(s.into());
        }
        if sh.region.forked() {
            return Err(self.fail(Sticky::Forked));
        }
        if !keep_armed {
            self.disarm(sh);
        }
        // SYNC(close): pairs with the consumer's Release store of its CLOSED word.
        let w = sh.region.header().consumer.load(Ordering::Acquire);
        if w != self.peer.ok {
            match self.peer.learn(w, sh.membarrier()) {
                Seen::Closed => {
                    self.disarm(sh);
                    return Err(self.fail(Sticky::Closed));
                }
                Seen::Garbage => {
                    self.disarm(sh);
                    let c = Corruption::State {
                        side: "consumer",
                        word: w,
                    };
                    return Err(self.fail(Sticky::Corrupted(c)));
                }
                Seen::Waiting | Seen::Quiet => {}
            }
            self.stats.membarrier = !self.peer.fence;
        }
        Ok(())
    }

    /// Clear a `WAITING` left by `arm`, so a producer that is busy again is not rung for
    /// nothing.
    fn disarm(&mut self, sh: &Io) {
        if self.armed {
            self.armed = false;
            if self.sticky.is_none() {
                self.gate.reopen();
            }
            sh.own_word().store(sh.own(), Ordering::Relaxed);
        }
    }

    /// Bytes a `len`-byte message takes from `tail` on: padding to the end if it must wrap,
    /// the record, and the word after it that is cleared.
    #[inline]
    fn need(&self, len: usize) -> u64 {
        let size = record_size(len) as u64;
        let to_end = self.capacity - (self.tail & self.mask);
        let pad = if size <= to_end { 0 } else { to_end };
        pad + size + RECORD_ALIGN as u64
    }

    /// Find room for a `len`-byte message. `Ok(None)` means full. Nothing is written yet.
    fn reserve(&mut self, sh: &Io, len: usize) -> Result<Option<Slot>, SendError> {
        self.check(sh)?;
        if len > self.max_message {
            return Err(SendError::TooLarge {
                len,
                max: self.max_message,
            });
        }
        let need = self.need(len);
        if self.tail.wrapping_sub(self.head) + need > self.capacity {
            self.refresh_head(sh)?;
            if self.tail.wrapping_sub(self.head) + need > self.capacity {
                return Ok(None);
            }
        }
        let at = self.tail;
        let size = record_size(len) as u64;
        let to_end = self.capacity - (at & self.mask);
        let start = if size <= to_end {
            at
        } else {
            at.wrapping_add(to_end)
        };
        Ok(Some(Slot { at, start }))
    }

    /// Add the record at `index` (its payload, if any, already in place) to what is written:
    /// clear the word after it, then store its header word, or keep it as `pending` if it is
    /// the first record not yet published.
    #[inline(always)]
    fn put(&mut self, sh: &Io, index: u64, word: u64, size: u64) {
        let r = sh.region.view();
        let next = index.wrapping_add(size);
        #[cfg(not(shmpipe_mutant = "no_clear"))]
        r.store_word(next, 0);
        if index == self.published {
            self.pending = word;
        } else {
            r.store_word(index, word);
        }
        self.tail = next;
    }

    /// Make the message reserved in `slot` (payload written) part of what is written.
    fn commit(&mut self, sh: &Io, slot: Slot, len: usize) {
        if slot.at != slot.start {
            let pad = slot.start.wrapping_sub(slot.at);
            let word = encode_record(KIND_PADDING, slot.at, (pad - RECORD_ALIGN as u64) as usize);
            self.put(sh, slot.at, word, pad);
        }
        let size = record_size(len) as u64;
        self.put(
            sh,
            slot.start,
            encode_record(KIND_MESSAGE, slot.start, len),
            size,
        );
        self.messages += 1;
        self.bytes += len as u64;
    }

    /// Store the first staged header word, which publishes everything written, and wake the
    /// consumer if it sleeps.
    #[inline(always)]
    fn publish(&mut self, sh: &Io) {
        if self.pending == 0 {
            return;
        }
        sh.region.view().publish_word(self.published, self.pending);
        self.pending = 0;
        self.published = self.tail;
        self.stats.batches += 1;
        self.notify(sh);
    }

    /// After a publication: ring the consumer if its state word says it may sleep.
    #[inline(always)]
    fn notify(&mut self, sh: &Io) {
        if let Some(w) = self.peer.check(&sh.region.header().consumer) {
            self.peer_changed(sh, w);
        }
    }

    /// The consumer's word is not the usual one. A close is reported by the next call: what
    /// was just published may have been read, so this call must not say `Closed`, which
    /// means "not delivered".
    #[cold]
    #[inline(never)]
    fn peer_changed(&mut self, sh: &Io, w: u32) {
        match self.peer.learn(w, sh.membarrier()) {
            Seen::Waiting => {
                self.stats.wakeups_sent += 1;
                // A failed write cannot lose the message: the consumer re-checks on a timer.
                sh.bell.ring();
            }
            Seen::Closed => {
                self.fail(Sticky::Closed);
            }
            Seen::Garbage => {
                self.fail(Sticky::Corrupted(Corruption::State {
                    side: "consumer",
                    word: w,
                }));
            }
            Seen::Quiet => {}
        }
        self.stats.membarrier = !self.peer.fence;
    }

    /// Load and check the consumer's index (only when the cached one says "full").
    #[inline(never)]
    fn refresh_head(&mut self, sh: &Io) -> Result<(), SendError> {
        let h = sh.region.header();
        // SYNC(head): Acquire pairs with the consumer's Release store in `release`: the
        // consumer's reads of the bytes it released happen before we overwrite them.
        let head = h.head.load(Ordering::Acquire);
        match layout::check_head(self.published, self.head, head) {
            Ok(_) => self.head = head,
            Err(c) => return Err(self.fail(Sticky::Corrupted(c))),
        }
        // SYNC(close): pairs with the consumer's Release store of its CLOSED word.
        if sh.peer_word().load(Ordering::Acquire) & STATE_MASK == STATE_CLOSED {
            return Err(self.fail(Sticky::Closed));
        }
        Ok(())
    }

    /// Write `msg` and stage it (and publish it if asked, or if a quarter ring is staged).
    /// `Ok(false)` means full. The fast path covers the common case (the consumer awake and
    /// open, room by the cached head, no wrap, nothing staged) in one guard; everything else
    /// takes the general path.
    #[inline(always)]
    fn try_send(&mut self, sh: &Io, msg: &[u8], publish: bool) -> Result<bool, SendError> {
        let len = msg.len();
        let r = sh.region.view();
        let h = r.header();
        if self.gate.is_open()
            && len <= self.max_message
            && h.consumer.load(Ordering::Relaxed) == self.peer.ok
        {
            let size = record_size(len) as u64;
            let index = self.tail;
            // The payload's start: `pos + 8 <= capacity`, both multiples of 8, so the test
            // below is `size <= capacity - pos`, written as `write`'s own bounds check.
            let start = (index & self.mask) as usize + RECORD_ALIGN;
            if len <= self.capacity as usize - start
                && index.wrapping_sub(self.head) + size + (RECORD_ALIGN as u64) <= self.capacity
            {
                r.write(start, msg);
                let next = index.wrapping_add(size);
                #[cfg(not(shmpipe_mutant = "no_clear"))]
                r.store_word(next, 0);
                let word = encode_record(KIND_MESSAGE, index, len);
                self.tail = next;
                self.messages += 1;
                self.bytes += len as u64;
                if index != self.published {
                    // Staged behind the batch's first record, which publishes it.
                    r.store_word(index, word);
                    if publish || next.wrapping_sub(self.published) >= self.publish_every {
                        self.publish(sh);
                    }
                } else if publish || size >= self.publish_every {
                    r.publish_word(index, word);
                    self.published = next;
                    self.stats.batches += 1;
                    self.notify(sh);
                } else {
                    self.pending = word;
                }
                return Ok(true);
            }
        }
        self.try_send_slow(sh, msg, publish)
    }

    #[cold]
    #[inline(never)]
    fn try_send_slow(&mut self, sh: &Io, msg: &[u8], publish: bool) -> Result<bool, SendError> {
        let Some(slot) = self.reserve(sh, msg.len())? else {
            return Ok(false);
        };
        let pos = (slot.start & self.mask) as usize;
        sh.region.view().write(pos + RECORD_ALIGN, msg);
        self.commit(sh, slot, msg.len());
        if publish || self.tail.wrapping_sub(self.published) >= self.publish_every {
            self.publish(sh);
        }
        Ok(true)
    }

    /// The producer is done: publish what is staged, leave the final tail, mark CLOSED and
    /// ring. Once.
    fn close(&mut self, sh: &Io) {
        if self.closed {
            return;
        }
        self.closed = true;
        self.disarm(sh);
        self.publish(sh);
        // SYNC(close): ordered before the CLOSED word by its Release store.
        sh.region
            .header()
            .tail
            .store(self.published, Ordering::Relaxed);
        sh.mark_closed();
    }
}

impl Producer {
    pub(crate) fn new(io: Io, head: u64, tail: u64) -> Producer {
        let capacity = io.region.capacity() as u64;
        let st = State {
            tail,
            published: tail,
            pending: 0,
            head,
            capacity,
            mask: capacity - 1,
            max_message: io.max_message,
            publish_every: capacity / 4,
            peer: PeerWord::default(),
            armed: false,
            gate: Gate::new(),
            closed: false,
            sticky: None,
            stats: ProducerStats::default(),
            bytes: 0,
            messages: 0,
        };
        Producer {
            io,
            st: CachePadded::new(st),
            #[cfg(feature = "serde")]
            scratch: Vec::new(),
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
    #[inline]
    pub fn send(&mut self, msg: &[u8]) -> Result<(), SendError> {
        if self.st.try_send(&self.io, msg, true)? {
            return Ok(());
        }
        self.send_impl(msg, None, true).map_err(never_timeout)
    }

    /// Send `msg`, waiting for room at most `timeout`.
    ///
    /// # Errors
    ///
    /// [`SendTimeoutError::Timeout`] if there was still no room (nothing written), or a
    /// [`SendError`].
    pub fn send_timeout(&mut self, msg: &[u8], timeout: Duration) -> Result<(), SendTimeoutError> {
        if self.st.try_send(&self.io, msg, true)? {
            return Ok(());
        }
        self.send_impl(msg, Some(timeout), true)
            .map_err(SendTimeoutError::from)
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

    /// Stage several messages and publish them with one store: the batch publishes when
    /// dropped or on [`Batch::publish`], before it waits for room, and by itself once a
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
            Ok(Some(slot)) => Ok(self.grant(slot, len, true)),
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
        let slot = self.reserve_impl(len, None).map_err(never_timeout)?;
        Ok(self.grant(slot, len, true))
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
        let slot = self
            .reserve_impl(len, Some(timeout))
            .map_err(SendTimeoutError::from)?;
        Ok(self.grant(slot, len, true))
    }

    /// Publish anything staged (by a batch that is still alive, or a committed grant of one).
    ///
    /// # Errors
    ///
    /// [`SendError::Closed`] if the consumer is gone (nothing more is published then).
    pub fn flush(&mut self) -> Result<(), SendError> {
        self.st.check(&self.io)?;
        self.st.publish(&self.io);
        Ok(())
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
        let failed = st.sticky;
        st.close(sh);
        if let Some(s @ (Sticky::Corrupted(_) | Sticky::PeerGone)) = failed {
            return Err(SendError::from(s).into());
        }
        let mut sleeps = 0;
        // A timeout too long to represent means no deadline.
        let r = sh.waiter(Some(timeout)).wait(&mut sleeps, || {
            let h = sh.region.header();
            let mut drained = || -> Result<bool, SendError> {
                let head = h.head.load(Ordering::Acquire); // SYNC(head)
                layout::check_head(st.published, st.head, head)?;
                st.head = head;
                Ok(head == st.published)
            };
            if drained()? {
                return Ok(Some(()));
            }
            // SYNC(close): Acquire pairs with the consumer's Release store of CLOSED, which
            // follows its last head store; re-read the head, or a final release that landed
            // between our two loads would be reported as unconsumed data.
            if sh.peer_word().load(Ordering::Acquire) & STATE_MASK == STATE_CLOSED {
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

    /// Announce `WAITING` for an external event loop and report whether a `len`-byte message
    /// fits now. If it returns `Ok(false)`, wait until the waiter fd (where the consumer's
    /// bell rings) is readable, then retry the send; the next send clears the announcement.
    /// If it returns `Ok(true)`, send at once (the announcement is already cleared).
    ///
    /// # Errors
    ///
    /// As for [`Producer::send`].
    pub fn arm(&mut self, len: usize) -> Result<bool, SendError> {
        let sh = &self.io;
        // Still armed since the last `arm` (no send came between): WAITING has been set,
        // barrier and all, ever since, so a release of the consumer's made since rang us.
        // Re-check without announcing again (no membarrier per re-arm of an idle handle).
        let rearm = self.st.armed;
        self.st.check_live(sh, rearm)?;
        if len > self.st.max_message {
            self.st.disarm(sh);
            return Err(SendError::TooLarge {
                len,
                max: self.st.max_message,
            });
        }
        // Harvest old rings first: the waiter stays readable until harvested, and what it
        // said is about to be re-checked anyway.
        if rearm {
            sh.wake.reset();
        } else {
            self.st.publish(sh);
            sh.wake.reset();
            wait::announce(sh.own_word(), sh.own(), sh.membarrier());
            self.st.armed = true;
            self.st.gate.shut();
        }
        let need = self.st.need(len);
        self.st.refresh_head(sh)?;
        let ready = self.st.tail.wrapping_sub(self.st.head) + need <= self.st.capacity;
        if ready {
            self.st.disarm(sh);
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
        self.io.watch_peer(fd)
    }

    /// Change how this handle waits.
    pub fn set_wait(&mut self, wait: WaitStrategy) {
        self.io.wait = wait;
    }

    /// Counters since the handle was claimed.
    pub fn stats(&self) -> ProducerStats {
        ProducerStats {
            messages: self.st.messages,
            bytes: self.st.bytes,
            ..self.st.stats
        }
    }

    /// Data capacity in bytes.
    pub fn capacity(&self) -> usize {
        self.st.capacity as usize
    }

    /// Largest message in bytes.
    pub fn max_message(&self) -> usize {
        self.st.max_message
    }

    fn grant(&mut self, slot: Slot, len: usize, publish: bool) -> Grant<'_> {
        Grant {
            shared: &self.io,
            st: &mut self.st,
            slot,
            len,
            written: 0,
            publish,
        }
    }

    /// The slow path of every blocking send: publish what is staged (the consumer may be
    /// waiting for it), then wait for room.
    #[cold]
    fn send_impl(
        &mut self,
        msg: &[u8],
        timeout: Option<Duration>,
        publish: bool,
    ) -> Result<(), Blocked<SendError>> {
        self.wait_for(timeout, |st, sh| {
            st.try_send(sh, msg, publish).map(|sent| sent.then_some(()))
        })
    }

    fn reserve_impl(
        &mut self,
        len: usize,
        timeout: Option<Duration>,
    ) -> Result<Slot, Blocked<SendError>> {
        if let Some(slot) = self.st.reserve(&self.io, len)? {
            return Ok(slot);
        }
        self.wait_for(timeout, |st, sh| st.reserve(sh, len))
    }

    /// Wait until `attempt` succeeds: the ring was full. Publishes what is staged first (the
    /// consumer may be waiting for it); a `PeerGone` the wait finds ends the producer.
    fn wait_for<T>(
        &mut self,
        timeout: Option<Duration>,
        mut attempt: impl FnMut(&mut State, &Io) -> Result<Option<T>, SendError>,
    ) -> Result<T, Blocked<SendError>> {
        self.st.stats.full += 1;
        let sh = &self.io;
        let st = &mut self.st;
        st.publish(sh);
        let mut sleeps = 0;
        let r = sh.waiter(timeout).wait(&mut sleeps, || attempt(st, sh));
        st.stats.sleeps += sleeps;
        if let Err(Blocked::Failed(SendError::PeerGone)) = r {
            st.fail(Sticky::PeerGone);
        }
        r
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        if !self.io.region.forked() {
            self.st.close(&self.io);
        }
    }
}

#[cfg(not(any(miri, loom)))]
impl std::os::fd::AsFd for Producer {
    /// An epoll fd that becomes readable when the consumer rings (see [`Producer::arm`]).
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.io.waiter_fd()
    }
}

/// Messages staged together and published with one store. See [`Producer::batch`].
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
    #[inline]
    pub fn send(&mut self, msg: &[u8]) -> Result<(), SendError> {
        let p = &mut *self.producer;
        if p.st.try_send(&p.io, msg, false)? {
            return Ok(());
        }
        p.send_impl(msg, None, false).map_err(never_timeout)
    }

    /// Stage `msg`, waiting at most `timeout` for room.
    ///
    /// # Errors
    ///
    /// As for [`Producer::send_timeout`].
    pub fn send_timeout(&mut self, msg: &[u8], timeout: Duration) -> Result<(), SendTimeoutError> {
        let p = &mut *self.producer;
        if p.st.try_send(&p.io, msg, false)? {
            return Ok(());
        }
        p.send_impl(msg, Some(timeout), false)
            .map_err(SendTimeoutError::from)
    }

    /// Reserve room to write a message in place; its commit stages it in this batch.
    ///
    /// # Errors
    ///
    /// As for [`Producer::try_reserve`].
    pub fn try_reserve(&mut self, len: usize) -> Result<Grant<'_>, TrySendError> {
        let p = &mut *self.producer;
        match p.st.reserve(&p.io, len) {
            Ok(Some(slot)) => Ok(p.grant(slot, len, false)),
            Ok(None) => {
                p.st.stats.full += 1;
                Err(TrySendError::Full)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Publish everything staged now, with one store.
    ///
    /// # Errors
    ///
    /// [`SendError::Closed`] if the consumer is gone.
    pub fn publish(&mut self) -> Result<(), SendError> {
        self.producer.flush()
    }

    /// Bytes staged and not yet published (record headers and padding included).
    pub fn staged_bytes(&self) -> usize {
        let st = &self.producer.st;
        st.tail.wrapping_sub(st.published) as usize
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
    slot: Slot,
    len: usize,
    written: usize,
    publish: bool,
}

impl Grant<'_> {
    fn span(&self) -> SpanMut<'_> {
        let pos = (self.slot.start & self.st.mask) as usize + RECORD_ALIGN;
        self.shared.region.view().span_mut(pos, self.len)
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
    #[allow(unsafe_code)]
    pub unsafe fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: the caller guarantees that no one else touches the reserved range (this
        // fn's contract); the slice borrows `self` mutably, so the grant cannot write through
        // another window, nor hand out a second slice, while it lives.
        unsafe { self.span().into_mut_slice() }
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
        self.st.check(self.shared)?;
        self.st.commit(self.shared, self.slot, len);
        if self.publish || self.st.tail.wrapping_sub(self.st.published) >= self.st.publish_every {
            self.st.publish(self.shared);
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
