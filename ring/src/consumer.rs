//! The consuming side: find records by their header words, copy them out (or lend a view),
//! release space in batches.

use std::cell::Cell;
use std::marker::PhantomData;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use crossbeam_utils::CachePadded;

use crate::barrier;
use crate::end::{Gate, Io, PeerWord, Seen, Sticky, never_timeout};
use crate::error::{Corruption, RecvError, RecvTimeoutError, TryRecvError};
use crate::layout::{
    self, KIND_MESSAGE, LEN_MASK, RECORD_ALIGN, Record, STATE_CLOSED, STATE_MASK, record_size,
};
use crate::raw::Span;
use crate::sync::Ordering;
use crate::wait::{self, Blocked, WaitFailure, WaitStrategy};

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
    /// Times a receive found the ring empty (once per blocking call, once per `Empty`).
    pub empty: u64,
    /// Times the consumer went to sleep waiting for the producer's bell.
    pub sleeps: u64,
    /// Whether releases use a compiler fence only, because both processes sleep with a
    /// membarrier (see [`ProducerStats::membarrier`](crate::ProducerStats::membarrier)).
    pub membarrier: bool,
}

impl WaitFailure for RecvError {
    fn peer_gone() -> Self {
        RecvError::PeerGone
    }
}

/// The consumer's private state. Invariant: `released <= head`, and everything from `head`
/// on is unread.
#[derive(Debug)]
struct State {
    /// The index of the next record to read.
    head: u64,
    /// Messages received.
    messages: u64,
    /// The head last stored to shared memory.
    released: u64,
    capacity: u64,
    mask: u64,
    max_message: usize,
    /// Release once this many bytes are held, even in the middle of a batch.
    release_every: u64,
    /// The producer's state word, as far as we know it.
    peer: PeerWord,
    /// Our state word was left with `WAITING` by `arm`.
    armed: bool,
    /// Neither armed nor failed, nor forked, nor told its peer is gone: the fast path may run.
    gate: Gate,
    /// The peer is known to be gone: once the ring is empty, receives fail with `PeerGone`.
    peer_gone: bool,
    sticky: Option<Sticky>,
    stats: ConsumerStats,
    /// Payload bytes (kept apart from `messages`: two adjacent counters are merged into one
    /// vector add, which costs more than two scalar ones).
    bytes: u64,
}

/// The receiving half of a ring. `Send` but not `Sync`: one thread at a time, `&mut self`.
///
/// ```compile_fail
/// fn shared<T: Sync>() {}
/// shared::<shmpipe_ring::Consumer>();
/// ```
#[derive(Debug)]
pub struct Consumer {
    io: Io,
    /// Alone in its cache lines: nothing another thread of this process touches can share a
    /// line with what this handle writes per message.
    st: CachePadded<State>,
    /// Private copy target for `drain`; grows to the largest message and stays.
    scratch: Vec<u8>,
    _not_sync: PhantomData<Cell<()>>,
}

impl State {
    fn fail(&mut self, s: Sticky) -> RecvError {
        self.sticky = Some(s);
        self.gate.shut();
        s.into()
    }

    /// The error a `Next::Failed` stands for.
    fn error(&self) -> RecvError {
        self.sticky.map_or(RecvError::Forked, RecvError::from)
    }

    /// The next message's payload position and length, skipping padding: the general path,
    /// for everything `drain`'s fast loop does not take.
    #[cold]
    #[inline(never)]
    fn next_slow(&mut self, sh: &Io) -> Next {
        if self.sticky.is_some() {
            return Next::Failed;
        }
        if sh.region.forked() {
            self.fail(Sticky::Forked);
            return Next::Failed;
        }
        self.disarm(sh);
        let r = sh.region.view();
        loop {
            // The header word is read once, into a local, and checked before use.
            let word = r.load_word(self.head);
            let cap = self.capacity as usize;
            match layout::parse_record(word, self.head, cap, self.max_message) {
                Ok(Record::Message { len }) => {
                    let pos = (self.head & self.mask) as usize;
                    return Next::Message(pos + RECORD_ALIGN, len);
                }
                Ok(Record::Padding { skip }) => {
                    self.head = self.head.wrapping_add(skip as u64);
                    if !self.maybe_release(sh) {
                        return Next::Failed;
                    }
                }
                Ok(Record::Empty) => {
                    self.release(sh);
                    // SYNC(close): Acquire pairs with the producer's Release store of its
                    // CLOSED word, which follows its last publication and its final tail.
                    let w = r.header().producer.load(Ordering::Acquire);
                    if w == self.peer.ok {
                        return self.empty();
                    }
                    // No ring here: a producer waits only for a release (space, or the
                    // confirmation of its close), and `release` rang after the last one.
                    if self.peer_changed(sh, w, false) == Seen::Garbage {
                        return Next::Failed;
                    }
                    if w & STATE_MASK != STATE_CLOSED {
                        return self.empty();
                    }
                    if r.load_word(self.head) != 0 {
                        continue; // published, then closed
                    }
                    let tail = r.header().tail.load(Ordering::Relaxed);
                    let end = if tail == self.head {
                        Sticky::Closed
                    } else {
                        Sticky::Corrupted(Corruption::ClosedShort {
                            tail,
                            head: self.head,
                        })
                    };
                    self.fail(end);
                    return Next::Failed;
                }
                Err(c) => {
                    self.fail(Sticky::Corrupted(c));
                    return Next::Failed;
                }
            }
        }
    }

    /// Nothing to read, and the producer has not closed: `Empty`, or, once the peer is known
    /// to be gone, `PeerGone` for good (everything it published has been received).
    fn empty(&mut self) -> Next {
        if self.peer_gone {
            self.fail(Sticky::PeerGone);
            return Next::Failed;
        }
        Next::Empty
    }

    /// Note that the peer is gone; the fast path stops, so the next empty ring says so.
    fn note_peer_gone(&mut self) {
        self.peer_gone = true;
        self.gate.shut();
    }

    /// Clear a `WAITING` left by `arm`.
    fn disarm(&mut self, sh: &Io) {
        if self.armed {
            self.armed = false;
            if self.sticky.is_none() && !self.peer_gone {
                self.gate.reopen();
            }
            sh.own_word().store(sh.own(), Ordering::Relaxed);
        }
    }

    /// Step over the message `next` returned.
    #[inline(always)]
    fn consume(&mut self, len: usize) {
        self.head = self.head.wrapping_add(record_size(len) as u64);
        self.messages += 1;
        self.bytes += len as u64;
    }

    /// Release once a quarter ring is held: a producer waiting on a full ring can refill
    /// behind us instead of sleeping through the batch. False if the release found the
    /// producer's state word impossible (the consumer has failed).
    #[inline(always)]
    fn maybe_release(&mut self, sh: &Io) -> bool {
        if self.head.wrapping_sub(self.released) >= self.release_every {
            self.release_mid_batch(sh);
            return self.sticky.is_none();
        }
        true
    }

    /// Release if the ring holds nothing more now: the end of a receive that emptied it.
    #[inline(always)]
    fn release_if_caught_up(&mut self, sh: &Io) {
        if self.head != self.released && sh.region.view().load_word(self.head) == 0 {
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
        if let Some(w) = self.peer.check(&h.producer) {
            self.peer_changed(sh, w, true);
        }
    }

    /// A release in the middle of a long drain, out of line, so that the drain loop's state
    /// stays in registers.
    #[cold]
    #[inline(never)]
    fn release_mid_batch(&mut self, sh: &Io) {
        self.release(sh);
    }

    /// The producer's word is not the usual one: after a release (`ring`), ring it if it
    /// waits (for space, or for the confirmation of its close); remember garbage as
    /// corruption.
    #[cold]
    #[inline(never)]
    fn peer_changed(&mut self, sh: &Io, w: u32, ring: bool) -> Seen {
        let seen = self.peer.learn(w, sh.membarrier());
        match seen {
            Seen::Waiting if ring => {
                self.stats.wakeups_sent += 1;
                sh.bell.ring();
            }
            Seen::Garbage => {
                self.fail(Sticky::Corrupted(Corruption::State {
                    side: "producer",
                    word: w,
                }));
            }
            // A close is acted on where it matters: when the ring is empty.
            Seen::Waiting | Seen::Closed | Seen::Quiet => {}
        }
        self.stats.membarrier = !self.peer.fence;
        seen
    }

    /// Whether a receive would find something now: a record word, or the producer's close.
    fn ready(&self, sh: &Io) -> bool {
        let r = sh.region.view();
        r.load_word(self.head) != 0
            || r.header().producer.load(Ordering::Acquire) & STATE_MASK == STATE_CLOSED
    }

    /// Hand up to `max` messages to `f`; release when the ring is empty, or every quarter
    /// ring. `Ok(0)` if empty. An error after some messages were handed over ends the batch;
    /// the next call reports it. `f` returns false to end the batch after its message (which
    /// is consumed); the callers that never stop early pass `true`, which compiles away.
    ///
    /// The fast loop takes a message whose header word carries this index's tag and whose
    /// record lies inside the ring, checked exactly as `parse_record` checks it; and it stops
    /// at a zero word when the producer's state word is the usual one, after releasing what
    /// this side holds. Anything else (padding, corruption, a close, a producer that waits, a
    /// pending failure) goes to `next_slow`, which loads and checks again.
    #[inline(always)]
    fn drain<'s>(
        &mut self,
        sh: &'s Io,
        max: usize,
        mut f: impl FnMut(Span<'s>) -> bool,
    ) -> Result<usize, RecvError> {
        let r = sh.region.view();
        let mut n = 0;
        if self.gate.is_open() {
            let h = r.header();
            while n < max {
                let head = self.head;
                let word = r.load_word(head);
                let len = (word & LEN_MASK) as usize;
                if word & !LEN_MASK == layout::tag(KIND_MESSAGE, head) {
                    // `pos + 8 <= capacity` (both multiples of 8), and the rest of the ring is
                    // a multiple of 8, so this is `record_size(len) <= capacity - pos`,
                    // written as the span's own bounds check so that one covers both.
                    let start = (head & self.mask) as usize + RECORD_ALIGN;
                    if len > self.max_message || len > self.capacity as usize - start {
                        break;
                    }
                    // Consumed only after `f` returns: a panicking `f` loses nothing.
                    let more = f(r.span(start, len));
                    self.consume(len);
                    n += 1;
                    if !self.maybe_release(sh) {
                        return Ok(n);
                    }
                    if !more {
                        self.release_if_caught_up(sh);
                        return Ok(n);
                    }
                    continue;
                }
                if word != 0 {
                    break;
                }
                if head != self.released {
                    // SYNC(head): as in `release`.
                    h.head.store(head, Ordering::Release);
                    self.released = head;
                    self.stats.batches += 1;
                    barrier::light(self.peer.fence);
                    let w = h.producer.load(Ordering::Relaxed);
                    if w == self.peer.ok {
                        return Ok(n);
                    }
                    // After a release, as in `release`: ring a producer that waits.
                    self.peer_changed(sh, w, true);
                } else if h.producer.load(Ordering::Relaxed) == self.peer.ok {
                    return Ok(n);
                }
                break;
            }
            if n == max {
                self.release_if_caught_up(sh);
                return Ok(n);
            }
        }
        while n < max {
            match self.next_slow(sh) {
                Next::Message(pos, len) => {
                    let more = f(r.span(pos, len));
                    self.consume(len);
                    n += 1;
                    if !self.maybe_release(sh) {
                        return Ok(n);
                    }
                    if !more {
                        break;
                    }
                }
                // `next_slow` released on the way.
                Next::Empty => return Ok(n),
                Next::Failed if n == 0 => return Err(self.error()),
                Next::Failed => return Ok(n),
            }
        }
        self.release_if_caught_up(sh);
        Ok(n)
    }

    /// Receive one message into `buf`.
    #[inline(always)]
    fn try_recv(&mut self, sh: &Io, buf: &mut Vec<u8>) -> Result<Option<usize>, RecvError> {
        let mut got = None;
        self.drain(sh, 1, |span| {
            span.read_to_vec(buf);
            got = Some(span.len());
            true
        })?;
        Ok(got)
    }
}

/// What [`State::next_slow`] found.
#[derive(Debug, Clone, Copy)]
enum Next {
    /// A message: payload position and length.
    Message(usize, usize),
    /// Nothing now (what this side held is released).
    Empty,
    /// The consumer has failed for good: [`State::error`] says why.
    Failed,
}

impl Consumer {
    pub(crate) fn new(io: Io, head: u64) -> Consumer {
        let capacity = io.region.capacity() as u64;
        let st = State {
            head,
            released: head,
            capacity,
            mask: capacity - 1,
            max_message: io.max_message,
            release_every: capacity / 4,
            peer: PeerWord::default(),
            armed: false,
            gate: Gate::new(),
            peer_gone: false,
            sticky: None,
            stats: ConsumerStats::default(),
            bytes: 0,
            messages: 0,
        };
        Consumer {
            io,
            st: CachePadded::new(st),
            scratch: Vec::new(),
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
    #[inline]
    pub fn recv(&mut self, buf: &mut Vec<u8>) -> Result<usize, RecvError> {
        if let Some(n) = self.st.try_recv(&self.io, buf)? {
            return Ok(n);
        }
        self.wait_for(None, |st, sh| st.try_recv(sh, buf))
            .map_err(never_timeout)
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
        if let Some(n) = self.st.try_recv(&self.io, buf)? {
            return Ok(n);
        }
        self.wait_for(Some(timeout), |st, sh| st.try_recv(sh, buf))
            .map_err(RecvTimeoutError::from)
    }

    /// Hand each available message (up to `max`) to `f` as a private copy, releasing their
    /// space with one index store (every quarter ring in a long drain). Returns how many
    /// were handed over.
    ///
    /// # Errors
    ///
    /// [`TryRecvError::Empty`] if there was nothing; a [`RecvError`] if the first message
    /// could not be read (an error after some messages ends the batch early and is reported
    /// by the next call).
    #[inline(always)]
    pub fn try_drain(&mut self, max: usize, f: impl FnMut(&[u8])) -> Result<usize, TryRecvError> {
        if max == 0 {
            return Ok(0);
        }
        match self.drain_copies(max, f)? {
            0 => {
                self.st.stats.empty += 1;
                Err(TryRecvError::Empty)
            }
            n => Ok(n),
        }
    }

    /// Like [`Consumer::try_drain`], waiting as long as it takes for the first message.
    ///
    /// # Errors
    ///
    /// As for [`Consumer::recv`].
    #[inline(always)]
    pub fn drain(&mut self, max: usize, mut f: impl FnMut(&[u8])) -> Result<usize, RecvError> {
        match self.drain_copies(max, &mut f)? {
            0 if max > 0 => self.drain_impl(max, None, f).map_err(never_timeout),
            n => Ok(n),
        }
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
            .map_err(RecvTimeoutError::from)
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
        if max == 0 {
            return Ok(0);
        }
        match self.st.drain(&self.io, max, |span| {
            f(Message { span });
            true
        })? {
            0 => {
                self.st.stats.empty += 1;
                Err(TryRecvError::Empty)
            }
            n => Ok(n),
        }
    }

    /// Announce `WAITING` for an external event loop and report whether a message (or the
    /// end of the stream, or the peer's death once noted) is ready. If it returns `Ok(false)`,
    /// wait until the waiter fd (where the producer's bell rings) or the peer watch fd is
    /// readable, or a timeout of your choosing, then call a `try_*` receive; it clears the
    /// announcement. If `Ok(true)`, receive at once. Level-triggered loops are fine: `arm`
    /// consumes the wake-up it reports. `arm` does not look at the peer watch fd itself (an
    /// event loop watches it): see [`Consumer::is_peer_gone`] and
    /// [`Consumer::note_peer_gone`].
    ///
    /// # Errors
    ///
    /// A [`RecvError`] that will not go away (`Closed` is reported by the receive that
    /// follows an `Ok(true)`).
    pub fn arm(&mut self) -> Result<bool, RecvError> {
        let sh = &self.io;
        let st = &mut self.st;
        match st.sticky {
            Some(Sticky::Closed) => return Ok(true),
            Some(s) => return Err(s.into()),
            None => {}
        }
        if sh.region.forked() {
            return Err(st.fail(Sticky::Forked));
        }
        // Harvest old rings first: the waiter stays readable until harvested, and what it
        // said is about to be re-checked anyway.
        if st.armed {
            // Still armed since the last `arm` (no receive came between): WAITING has been set,
            // barrier and all, ever since, so a release of the producer's made since rang us.
            // Re-check without announcing again (no membarrier per re-arm of an idle handle).
            sh.wake.reset();
        } else {
            if st.ready(sh) || st.peer_gone {
                return Ok(true);
            }
            st.release(sh);
            sh.wake.reset();
            wait::announce(sh.own_word(), sh.own(), sh.membarrier());
            st.armed = true;
            st.gate.shut();
        }
        let ready = st.ready(sh) || st.peer_gone;
        if ready {
            st.disarm(sh);
        }
        Ok(ready)
    }

    /// True once the peer is known to be gone: told by [`Consumer::note_peer_gone`], found by a
    /// wait or by `arm`, or now, by one `poll` of the peer watch fd (see
    /// [`Consumer::watch_peer`]). From then on, once everything the peer published has been
    /// received, receives fail with [`RecvError::PeerGone`].
    pub fn is_peer_gone(&mut self) -> bool {
        if !self.st.peer_gone && (self.st.sticky == Some(Sticky::PeerGone) || peer_fired(&self.io))
        {
            self.st.note_peer_gone();
        }
        self.st.peer_gone
    }

    /// Tell the consumer that its peer is gone (an event loop of yours saw the peer watch fd
    /// fire): once everything the peer published has been received, receives fail with
    /// [`RecvError::PeerGone`] instead of answering `Empty`.
    pub fn note_peer_gone(&mut self) {
        self.st.note_peer_gone();
    }

    /// Watch `fd` while blocked: once it is readable or hung up, the peer is taken to be gone
    /// and, after every published message has been received, receives fail with
    /// [`RecvError::PeerGone`]. Use a pidfd of the peer, or a socket it never writes to.
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
    pub fn stats(&self) -> ConsumerStats {
        ConsumerStats {
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

    /// `drain` with a private copy of each message.
    #[inline(always)]
    fn drain_copies(&mut self, max: usize, mut f: impl FnMut(&[u8])) -> Result<usize, RecvError> {
        let scratch = &mut self.scratch;
        self.st.drain(&self.io, max, |span| {
            span.read_to_vec(scratch);
            f(scratch);
            true
        })
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
        self.drain_with(max, Some(timeout), |m, scratch| {
            m.span.read_to_vec(scratch);
            f(scratch);
            true
        })
    }

    /// The drain under the blocking byte drains and the typed layer (`crate::typed`): hand up
    /// to `max` messages to `f`, with this consumer's scratch vector, until `f` returns false
    /// (that message is consumed too). With `wait`, wait for the first message (at most the
    /// timeout it holds); without, `Ok(0)` means empty, counted as such.
    #[inline(always)]
    pub(crate) fn drain_with(
        &mut self,
        max: usize,
        wait: Option<Option<Duration>>,
        mut f: impl FnMut(Message<'_>, &mut Vec<u8>) -> bool,
    ) -> Result<usize, Blocked<RecvError>> {
        let (io, st, scratch) = (&self.io, &mut self.st, &mut self.scratch);
        let n = st.drain(io, max, |span| f(Message { span }, scratch))?;
        if n > 0 || max == 0 {
            return Ok(n);
        }
        st.stats.empty += 1;
        let Some(timeout) = wait else {
            return Ok(0);
        };
        let mut sleeps = 0;
        let r = io.waiter(timeout).wait(&mut sleeps, || {
            let n = st.drain(io, max, |span| f(Message { span }, scratch))?;
            Ok((n > 0).then_some(n))
        });
        st.after_wait(sleeps, r)
    }

    /// Wait until `attempt` yields a value: the ring was empty.
    #[cold]
    fn wait_for<T>(
        &mut self,
        timeout: Option<Duration>,
        mut attempt: impl FnMut(&mut State, &Io) -> Result<Option<T>, RecvError>,
    ) -> Result<T, Blocked<RecvError>> {
        let (io, st) = (&self.io, &mut self.st);
        st.stats.empty += 1;
        let mut sleeps = 0;
        let r = io.waiter(timeout).wait(&mut sleeps, || attempt(st, io));
        st.after_wait(sleeps, r)
    }
}

impl State {
    /// Count the sleeps; a `PeerGone` the wait found (after everything was received) ends
    /// the consumer.
    fn after_wait<T>(
        &mut self,
        sleeps: u64,
        r: Result<T, Blocked<RecvError>>,
    ) -> Result<T, Blocked<RecvError>> {
        self.stats.sleeps += sleeps;
        if let Err(Blocked::Failed(RecvError::PeerGone)) = r {
            self.peer_gone = true;
            self.fail(Sticky::PeerGone);
        }
        r
    }
}

/// One `poll` of the peer watch fd, if there is one.
fn peer_fired(sh: &Io) -> bool {
    sh.peer_watch
        .as_deref()
        .is_some_and(|fd| crate::notify::peer_gone(std::os::fd::AsFd::as_fd(fd)))
}

impl Drop for Consumer {
    fn drop(&mut self) {
        if self.io.region.forked() {
            return;
        }
        self.st.release(&self.io);
        // After the last head store (Release); wakes a producer blocked on a full ring or
        // waiting in `close`.
        self.io.mark_closed();
    }
}

#[cfg(not(any(miri, loom)))]
impl std::os::fd::AsFd for Consumer {
    /// An epoll fd that becomes readable when the producer rings (see [`Consumer::arm`]).
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.io.waiter_fd()
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
    #[inline]
    pub fn copy_to_slice(&self, dst: &mut [u8]) {
        self.span.read_into(dst);
    }

    /// Replace the contents of `out` with the payload, without zero-filling first.
    #[cfg(feature = "serde")]
    pub(crate) fn read_to_vec(&self, out: &mut Vec<u8>) {
        self.span.read_to_vec(out);
    }

    /// Copy the payload into a new vector.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.span.read_to_vec(&mut v);
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
    #[allow(unsafe_code)]
    pub unsafe fn as_slice(&self) -> &'a [u8] {
        // SAFETY: the caller guarantees no concurrent writer (this fn's contract); the span
        // is the message's published range, untouched by a well-behaved producer until
        // release.
        unsafe { self.span.as_slice() }
    }
}
