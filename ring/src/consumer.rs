//! The consuming side: find records, copy them out (or lend a view), release space in batches.

use std::cell::Cell;
use std::marker::PhantomData;
use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use crate::error::{Corruption, RecvError, RecvTimeoutError, TryRecvError};
use crate::layout::{self, KIND_MESSAGE, RECORD_ALIGN, Record, STATE_CLOSED, record_size};
use crate::raw::{self, Span};
use crate::segment::Io;
use std::sync::Arc;

use crate::sync::{Ordering, fence};
use crate::wait::{Blocked, WaitFailure, WaitStrategy, Waiter};

/// What the consumer does and how often; plain counters in the handle.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConsumerStats {
    /// Messages received.
    pub messages: u64,
    /// Payload bytes received.
    pub bytes: u64,
    /// Head releases (one Release store each).
    pub batches: u64,
    /// Releases after which the producer was announced asleep, so its bell was rung.
    pub wakeups_sent: u64,
    /// Releases that rang nothing, because the producer was not asleep.
    pub wakeups_skipped: u64,
    /// Times a receive found the ring empty (once per blocking call, once per `Empty`).
    pub empty: u64,
    /// Times the consumer went to sleep waiting for the producer's bell.
    pub sleeps: u64,
}

#[derive(Debug, Clone, Copy)]
enum Sticky {
    Closed,
    Corrupted(Corruption),
}

impl From<Sticky> for RecvError {
    fn from(s: Sticky) -> Self {
        match s {
            Sticky::Closed => RecvError::Closed,
            Sticky::Corrupted(c) => RecvError::Corrupted(c),
        }
    }
}

impl WaitFailure for RecvError {
    fn peer_gone() -> Self {
        RecvError::PeerGone
    }
}

/// The consumer's private state. Invariant: `released <= head <= tail <= released + capacity`,
/// where `tail` is the producer's index as last loaded and checked.
#[derive(Debug)]
struct State {
    /// Start of the next unread record.
    head: u64,
    /// The head last stored to shared memory.
    released: u64,
    /// The producer's tail as last loaded and checked.
    tail: u64,
    capacity: u64,
    mask: u64,
    max_message: usize,
    /// Release before this many bytes are held, even in the middle of a known batch.
    release_every: u64,
    armed: bool,
    /// Neither armed nor failed: the fast path may run.
    clear: bool,
    /// The fork generation this handle was claimed in (see raw.rs, invariant 5).
    fork_gen: u32,
    sticky: Option<Sticky>,
    stats: ConsumerStats,
}

/// The receiving half of a ring. `Send` but not `Sync`: one thread at a time, `&mut self`.
///
/// ```compile_fail
/// fn shared<T: Sync>() {}
/// shared::<shmring_ring::Consumer>();
/// ```
#[derive(Debug)]
pub struct Consumer {
    io: Io,
    st: State,
    /// Private copy target for `drain`; grows to the largest message and stays.
    scratch: Vec<u8>,
    wait: WaitStrategy,
    peer: Option<Arc<OwnedFd>>,
    _not_sync: PhantomData<Cell<()>>,
}

impl State {
    fn fail(&mut self, s: Sticky) -> RecvError {
        self.sticky = Some(s);
        self.clear = false;
        s.into()
    }

    /// Position and length of the next message's payload, skipping padding; `None` if empty.
    /// The fast path takes a message record inside what the last tail load showed, checked
    /// exactly as `parse_record` checks it; when that is used up and already released, it
    /// loads the tail once and takes it if `check_tail` would accept it with something to
    /// read. Anything else (empty, padding, corruption, a pending failure) goes the general
    /// way, which loads and checks again.
    #[inline(always)]
    fn next(&mut self, sh: &Io) -> Result<Option<(usize, usize)>, RecvError> {
        if self.clear && raw::fork_generation() == self.fork_gen {
            if self.head == self.tail && self.head == self.released {
                // SYNC(tail): as in `load_tail`.
                let tail = sh.region.header().tail.load(Ordering::Acquire);
                // `check_tail` with `prev == head`: aligned, and 1..=capacity bytes ahead.
                let avail = tail.wrapping_sub(self.head);
                if tail % RECORD_ALIGN as u64 == 0 && avail.wrapping_sub(1) < self.capacity {
                    self.tail = tail;
                }
            }
            if self.head == self.tail {
                return self.next_slow(sh);
            }
            let pos = (self.head & self.mask) as usize;
            let word = sh.region.load_word(pos);
            let len = word as u32 as usize;
            if word >> 32 == u64::from(KIND_MESSAGE) && len <= self.max_message {
                let size = record_size(len);
                if size as u64 <= self.tail.wrapping_sub(self.head)
                    && size <= self.capacity as usize - pos
                {
                    return Ok(Some((pos + RECORD_ALIGN, len)));
                }
            }
        }
        self.next_slow(sh)
    }

    #[cold]
    #[inline(never)]
    fn next_slow(&mut self, sh: &Io) -> Result<Option<(usize, usize)>, RecvError> {
        if let Some(s) = self.sticky {
            return Err(s.into());
        }
        if sh.region.forked() {
            return Err(RecvError::Forked);
        }
        if self.armed {
            self.armed = false;
            self.clear = true;
            sh.region
                .header()
                .consumer_waiting
                .store(0, Ordering::Relaxed);
        }
        loop {
            if self.head == self.tail {
                self.release(sh);
                if !self.refresh_tail(sh)? {
                    return Ok(None);
                }
            }
            let pos = (self.head & self.mask) as usize;
            let avail = self.tail.wrapping_sub(self.head);
            // The header word is read once, into a local, and checked before use.
            let word = sh.region.load_word(pos);
            match layout::parse_record(word, pos, avail, self.capacity as usize, self.max_message) {
                Ok(Record::Message { len }) => return Ok(Some((pos + RECORD_ALIGN, len))),
                Ok(Record::Padding { skip }) => self.head = self.head.wrapping_add(skip as u64),
                Err(c) => return Err(self.fail(Sticky::Corrupted(c))),
            }
        }
    }

    /// Step over the message `next` returned.
    #[inline(always)]
    fn consume(&mut self, len: usize) {
        self.head = self.head.wrapping_add(record_size(len) as u64);
        self.stats.messages += 1;
        self.stats.bytes += len as u64;
    }

    /// Release eagerly at the end of what one tail load showed, or every quarter ring.
    #[inline(always)]
    fn maybe_release(&mut self, sh: &Io) {
        if self.head == self.tail || self.head.wrapping_sub(self.released) >= self.release_every {
            self.release(sh);
        }
    }

    /// Store the head (once for everything consumed) and wake the producer if it sleeps.
    #[inline(always)]
    fn release(&mut self, sh: &Io) {
        if self.head == self.released {
            return;
        }
        let h = sh.region.header();
        // SYNC(head): Release orders our reads of the released bytes before the producer's
        // reuse of them; pairs with its Acquire load in `refresh_head`.
        h.head.store(self.head, Ordering::Release);
        self.released = self.head;
        self.stats.batches += 1;
        // WAKE(space): pairs with the fence in the producer's wait (wait.rs).
        fence(Ordering::SeqCst);
        if h.producer_waiting.load(Ordering::Relaxed) != 0 {
            self.stats.wakeups_sent += 1;
            sh.bell.ring();
        } else {
            self.stats.wakeups_skipped += 1;
        }
    }

    /// A release in the middle of a long drain, out of line: inlined, its fence (a barrier to
    /// the compiler too) kept the drain loop's state in memory on every turn and cut 64-byte
    /// throughput in one process from about 30 to 7-9 M/s.
    #[cold]
    #[inline(never)]
    fn release_mid_batch(&mut self, sh: &Io) {
        self.release(sh);
    }

    /// Load and check the producer's index. `Ok(true)` if there is something to read.
    #[inline(never)]
    fn refresh_tail(&mut self, sh: &Io) -> Result<bool, RecvError> {
        let h = sh.region.header();
        if self.load_tail(sh)? {
            return Ok(true);
        }
        // SYNC(close): Acquire pairs with the producer's Release store of CLOSED, which
        // follows its final tail store: a tail loaded after this sees everything it sent.
        if h.producer_state.load(Ordering::Acquire) == STATE_CLOSED {
            if self.load_tail(sh)? {
                return Ok(true);
            }
            return Err(self.fail(Sticky::Closed));
        }
        Ok(false)
    }

    fn load_tail(&mut self, sh: &Io) -> Result<bool, RecvError> {
        // SYNC(tail): Acquire pairs with the producer's Release store in `publish`: every
        // record below this tail is fully written before we read it.
        let tail = sh.region.header().tail.load(Ordering::Acquire);
        match layout::check_tail(self.head, self.tail, tail, self.capacity as usize) {
            Ok(avail) => {
                self.tail = tail;
                Ok(avail > 0)
            }
            Err(c) => Err(self.fail(Sticky::Corrupted(c))),
        }
    }

    #[inline(always)]
    fn try_recv(&mut self, sh: &Io, buf: &mut Vec<u8>) -> Result<Option<usize>, RecvError> {
        let Some((pos, len)) = self.next(sh)? else {
            return Ok(None);
        };
        sh.region.read_to_vec(pos, len, buf);
        self.consume(len);
        self.maybe_release(sh);
        Ok(Some(len))
    }

    /// Hand up to `max` messages to `f`, then release once. `Ok(0)` if empty. An error after
    /// some messages were handed over ends the batch; the next call reports it.
    #[inline]
    fn drain<'s>(
        &mut self,
        sh: &'s Io,
        max: usize,
        mut f: impl FnMut(Span<'s>),
    ) -> Result<usize, RecvError> {
        if max == 0 {
            return Ok(0);
        }
        let mut n = 0;
        while n < max {
            match self.next(sh) {
                Ok(Some((pos, len))) => {
                    // Consumed only after `f` returns: a panicking `f` loses nothing.
                    f(sh.region.span(pos, len));
                    self.consume(len);
                    n += 1;
                    // A long drain gives space back as it goes, so a producer waiting on a
                    // full ring can refill behind us instead of sleeping through the batch.
                    if self.head.wrapping_sub(self.released) >= self.release_every {
                        self.release_mid_batch(sh);
                    }
                }
                Ok(None) => break,
                Err(e) if n == 0 => return Err(e),
                Err(_) => break,
            }
        }
        self.release(sh);
        Ok(n)
    }
}

impl Consumer {
    pub(crate) fn new(io: Io, head: u64, tail: u64, wait: WaitStrategy) -> Consumer {
        let capacity = io.region.capacity() as u64;
        let st = State {
            head,
            released: head,
            tail,
            capacity,
            mask: capacity - 1,
            max_message: io.max_message,
            release_every: capacity / 4,
            armed: false,
            clear: true,
            fork_gen: crate::raw::fork_generation(),
            sticky: None,
            stats: ConsumerStats::default(),
        };
        Consumer {
            io,
            st,
            scratch: Vec::new(),
            wait,
            peer: None,
            _not_sync: PhantomData,
        }
    }

    /// Receive the next message into `buf` (replacing its contents) if there is one.
    /// Returns its length. `buf` keeps its capacity, so a reused buffer does not allocate.
    ///
    /// # Errors
    ///
    /// [`TryRecvError::Empty`] if nothing is there now; otherwise a [`RecvError`] that will
    /// not go away (`Closed` only after every committed message was received).
    #[inline]
    pub fn try_recv(&mut self, buf: &mut Vec<u8>) -> Result<usize, TryRecvError> {
        match self.st.try_recv(&self.io, buf) {
            Ok(Some(n)) => Ok(n),
            Ok(None) => {
                self.st.stats.empty += 1;
                Err(TryRecvError::Empty)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Receive the next message into `buf`, waiting as long as it takes.
    ///
    /// # Errors
    ///
    /// A [`RecvError`]: closed (after everything was received), peer gone, corrupted.
    pub fn recv(&mut self, buf: &mut Vec<u8>) -> Result<usize, RecvError> {
        self.recv_impl(buf, None).map_err(never_timeout)
    }

    /// Receive the next message into `buf`, waiting at most `timeout`.
    ///
    /// # Errors
    ///
    /// [`RecvTimeoutError::Timeout`], or a [`RecvError`].
    pub fn recv_timeout(
        &mut self,
        buf: &mut Vec<u8>,
        timeout: Duration,
    ) -> Result<usize, RecvTimeoutError> {
        self.recv_impl(buf, Some(timeout)).map_err(timeout_error)
    }

    /// Hand each available message (up to `max`) to `f` as a private copy, then release
    /// their space with one index store. Returns how many were handed over.
    ///
    /// # Errors
    ///
    /// [`TryRecvError::Empty`] if there was nothing; a [`RecvError`] if the first message
    /// could not be read (an error after some messages ends the batch early and is reported
    /// by the next call).
    #[inline]
    pub fn try_drain(
        &mut self,
        max: usize,
        mut f: impl FnMut(&[u8]),
    ) -> Result<usize, TryRecvError> {
        let scratch = &mut self.scratch;
        let n = self.st.drain(&self.io, max, |span| {
            copy_out(span, scratch);
            f(scratch);
        })?;
        self.empty_if_zero(max, n)
    }

    /// Like [`Consumer::try_drain`], waiting as long as it takes for the first message.
    ///
    /// # Errors
    ///
    /// As for [`Consumer::recv`].
    pub fn drain(&mut self, max: usize, f: impl FnMut(&[u8])) -> Result<usize, RecvError> {
        self.drain_impl(max, None, f).map_err(never_timeout)
    }

    /// Like [`Consumer::try_drain`], waiting at most `timeout` for the first message.
    ///
    /// # Errors
    ///
    /// As for [`Consumer::recv_timeout`].
    pub fn drain_timeout(
        &mut self,
        max: usize,
        timeout: Duration,
        f: impl FnMut(&[u8]),
    ) -> Result<usize, RecvTimeoutError> {
        self.drain_impl(max, Some(timeout), f)
            .map_err(timeout_error)
    }

    /// Zero-copy drain: hand each available message (up to `max`) to `f` as a [`Message`]
    /// view into the ring, then release their space with one index store.
    ///
    /// # Errors
    ///
    /// As for [`Consumer::try_drain`].
    #[inline]
    pub fn try_drain_views(
        &mut self,
        max: usize,
        mut f: impl FnMut(Message<'_>),
    ) -> Result<usize, TryRecvError> {
        let n = self.st.drain(&self.io, max, |span| f(Message { span }))?;
        self.empty_if_zero(max, n)
    }

    /// Set the consumer's `waiting` flag for an external event loop and report whether a
    /// message (or the end of the stream) is ready. If it returns `Ok(false)`, wait until
    /// [`AsFd::as_fd`] (where the producer's bell rings) is readable, or a timeout of your choosing,
    /// then call a `try_*` receive; it clears the flag. If `Ok(true)`, receive at once.
    /// Level-triggered loops are fine: `arm` consumes the wake-up it reports.
    ///
    /// # Errors
    ///
    /// A [`RecvError`] that will not go away.
    pub fn arm(&mut self) -> Result<bool, RecvError> {
        let sh = &self.io;
        if self.st.head != self.st.tail {
            return Ok(true);
        }
        self.st.release(sh);
        // Harvest old rings first: the waiter stays readable until harvested, and what it
        // said is about to be re-checked anyway.
        sh.wake.reset();
        let flag = &sh.region.header().consumer_waiting;
        flag.store(1, Ordering::Relaxed);
        self.st.armed = true;
        self.st.clear = false;
        fence(Ordering::SeqCst); // WAKE(data): see wait.rs
        let ready = match self.st.refresh_tail(sh) {
            Ok(ready) => ready,
            Err(RecvError::Closed) => true,
            Err(e) => return Err(e),
        };
        if ready {
            flag.store(0, Ordering::Relaxed);
            self.st.armed = false;
            self.st.clear = self.st.sticky.is_none();
        }
        Ok(ready)
    }

    /// Watch `fd` while blocked: once it is readable or hung up, the peer is taken to be gone
    /// and, after every published message has been received, receives fail with
    /// [`RecvError::PeerGone`]. Use a pidfd of the peer, or a socket it never writes to.
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
    pub fn stats(&self) -> ConsumerStats {
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

    /// `Empty` when a drain that asked for something got nothing.
    fn empty_if_zero(&mut self, max: usize, n: usize) -> Result<usize, TryRecvError> {
        if n == 0 && max > 0 {
            self.st.stats.empty += 1;
            return Err(TryRecvError::Empty);
        }
        Ok(n)
    }

    fn recv_impl(
        &mut self,
        buf: &mut Vec<u8>,
        timeout: Option<Duration>,
    ) -> Result<usize, Blocked<RecvError>> {
        if let Some(n) = self.st.try_recv(&self.io, buf)? {
            return Ok(n);
        }
        self.st.stats.empty += 1;
        let sh = &self.io;
        let st = &mut self.st;
        let waiter = waiter(sh, self.wait, &self.peer, timeout);
        let mut sleeps = 0;
        let r = waiter.wait(&mut sleeps, || st.try_recv(sh, buf));
        st.stats.sleeps += sleeps;
        r
    }

    fn drain_impl(
        &mut self,
        max: usize,
        timeout: Option<Duration>,
        mut f: impl FnMut(&[u8]),
    ) -> Result<usize, Blocked<RecvError>> {
        if max == 0 {
            return Ok(0);
        }
        let sh = &self.io;
        let st = &mut self.st;
        let scratch = &mut self.scratch;
        let mut attempt = || {
            let n = st.drain(sh, max, |span| {
                copy_out(span, scratch);
                f(scratch);
            })?;
            Ok((n > 0).then_some(n))
        };
        if let Some(n) = attempt()? {
            return Ok(n);
        }
        let waiter = waiter(sh, self.wait, &self.peer, timeout);
        let mut sleeps = 0;
        let r = waiter.wait(&mut sleeps, attempt);
        self.st.stats.empty += 1;
        self.st.stats.sleeps += sleeps;
        r
    }
}

#[inline]
fn copy_out(span: Span<'_>, out: &mut Vec<u8>) {
    span.read_to_vec(out);
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
        flag: &sh.region.header().consumer_waiting,
        peer: peer.as_deref().map(AsFd::as_fd),
        timeout,
    }
}

fn never_timeout(b: Blocked<RecvError>) -> RecvError {
    match b {
        Blocked::Failed(e) => e,
        Blocked::Timeout => unreachable!("no timeout was set"),
    }
}

fn timeout_error(b: Blocked<RecvError>) -> RecvTimeoutError {
    match b {
        Blocked::Failed(e) => RecvTimeoutError::Failed(e),
        Blocked::Timeout => RecvTimeoutError::Timeout,
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        if self.io.region.forked() {
            return;
        }
        let sh = &self.io;
        self.st.release(sh);
        if self.st.armed {
            sh.region
                .header()
                .consumer_waiting
                .store(0, Ordering::Relaxed);
        }
        // SYNC(close): Release orders the final head store before it; pairs with the
        // producer's Acquire load of `consumer_state` in `close`. Then wake a producer blocked
        // on a full ring (or waiting in `close`) unconditionally.
        sh.region
            .header()
            .consumer_state
            .store(STATE_CLOSED, Ordering::Release);
        sh.bell.ring();
    }
}

#[cfg(not(any(miri, loom)))]
impl AsFd for Consumer {
    /// An epoll fd that becomes readable when the producer rings (see [`Consumer::arm`]).
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.io.wake.as_fd()
    }
}

/// A message still in the ring, lent to a [`Consumer::try_drain_views`] closure.
///
/// Its bytes stay in shared memory until the closure returns. Copy them out with
/// [`Message::copy_to_slice`] or [`Message::to_vec`] (always sound), or borrow them with the
/// `unsafe` [`Message::as_slice`] when you trust the producer.
#[derive(Clone, Copy)]
pub struct Message<'a> {
    span: Span<'a>,
}

impl std::fmt::Debug for Message<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Message").field("len", &self.len()).finish()
    }
}

impl<'a> Message<'a> {
    /// Payload length in bytes.
    pub fn len(&self) -> usize {
        self.span.len()
    }

    /// True for a zero-length message.
    pub fn is_empty(&self) -> bool {
        self.span.len() == 0
    }

    /// Copy the payload into `dst`.
    ///
    /// # Panics
    ///
    /// If `dst.len()` differs from [`Message::len`].
    pub fn copy_to_slice(&self, dst: &mut [u8]) {
        self.span.read_into(dst);
    }

    /// Copy the payload into a new vector.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = Vec::new();
        copy_out(self.span, &mut v);
        v
    }

    /// Borrow the payload in place, without copying.
    ///
    /// # Safety
    ///
    /// The bytes live in memory the producer's process can also write. The slice is sound
    /// only if nothing writes them while it lives. A producer that follows the protocol never
    /// writes a published record before the consumer releases it, which happens after the
    /// drain closure returns; this crate's producer is such a producer. A hostile producer
    /// can change the bytes under the slice (undefined behaviour in Rust's model), so use
    /// the copying methods when the peer is not trusted.
    #[cfg(not(loom))]
    pub unsafe fn as_slice(&self) -> &'a [u8] {
        // SAFETY: the caller guarantees no concurrent writer (this fn's contract); the span
        // is the message's published range, untouched by a well-behaved producer until
        // release.
        unsafe { self.span.as_slice() }
    }
}
