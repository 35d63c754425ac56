//! Arbitrary shared-memory images and two reference consumers for them.
//!
//! [`reference_read`] is docs/protocol.md §1.4 and §1.6 written a second time, as plainly as
//! possible, over a byte slice: what a correct consumer must hand over from an image, and
//! where and how it must stop. [`RefConsumer`] is the same reader over a live segment, call
//! by call. The suites compare the ring's real consumer with them; `fuzz/libfuzzer` does the
//! same from libFuzzer's inputs.
//!
//! Both readers walk from the consumer's index reading one header word at a time, until a
//! zero word ("nothing here yet") or an impossible one. They never look at `tail` except
//! when the producer's state word says it closed (§1.8), and they look at that state word
//! only where §1.6 makes a consumer load it: at a zero word, and after each release of
//! `head` (step 3). Where §1.6 leaves the consumer a choice (how often to release in a long
//! batch: "at least every capacity/4 bytes"), they release exactly when a quarter ring is
//! held, the least often allowed, as the ring's consumer does.

use shmpipe_ring::layout::{DATA_OFFSET, max_message_limit, offsets};
use shmpipe_ring::{Bell, Config, Consumer, Corruption, RecvError, Ring, SetupError, TryRecvError};

use crate::{KIND_MESSAGE, KIND_PADDING, LEN_MASK, Segment, state, tag_of};

/// How a reference reader ends, and what a ring's consumer error corresponds to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// A zero word at the consumer's index and a producer that has not closed: nothing more
    /// now.
    Empty,
    /// The indices were impossible when the consumer opened the ring (§1.9, §1.2).
    BadIndices,
    /// A header word with another index's tag (`RecordTag`) at this ring position.
    Tag(u64),
    /// A header word with an unknown kind (`RecordKind`) at this ring position.
    Kind(u64),
    /// A message too long or running past the ring's end (`RecordLength`) at this position.
    Length(u64),
    /// Padding that does not end at the ring's end (`Padding`) at this position.
    Padding(u64),
    /// The producer closed with a final `tail` other than the index where the ring holds
    /// nothing more (`ClosedShort`).
    ClosedShort {
        /// The final tail the producer left.
        tail: u64,
        /// The consumer's index, where it found the zero word.
        head: u64,
    },
    /// The producer's state word holds a value §1.3 never writes (`State`).
    State(u32),
    /// The producer closed and everything it published was read.
    Closed,
}

impl End {
    /// The [`End`] a consumer's corruption report corresponds to.
    ///
    /// # Panics
    ///
    /// For a corruption a consumer never reports (those are the producer's, or the open's).
    pub fn of(c: &Corruption) -> End {
        match *c {
            Corruption::RecordTag { position, .. } => End::Tag(position),
            Corruption::RecordKind { position, .. } => End::Kind(position),
            Corruption::RecordLength { position, .. } => End::Length(position),
            Corruption::Padding { position, .. } => End::Padding(position),
            Corruption::ClosedShort { tail, head } => End::ClosedShort { tail, head },
            Corruption::State {
                side: "producer",
                word,
            } => End::State(word),
            _ => panic!("a consumer reported {c}, which no consumer ever should"),
        }
    }
}

/// What the header word `word`, read at index `index` of a `capacity`-byte ring, is
/// (docs/protocol.md §1.4, §1.6 step 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Word {
    /// Zero: nothing published here yet.
    Zero,
    /// A message of this length; its record is this many bytes.
    Message(u64, u64),
    /// Padding: skip this many bytes (header included) to the end of the ring.
    Padding(u64),
    /// Anything else.
    Bad(End),
}

fn classify(word: u64, index: u64, capacity: u64, max_message: usize) -> Word {
    if word == 0 {
        return Word::Zero;
    }
    let pos = index & (capacity - 1);
    let to_end = capacity - pos;
    let (tag, kind, len) = (word >> 32, (word >> 30) & 0b11, word & LEN_MASK);
    if kind != KIND_MESSAGE && kind != KIND_PADDING {
        return Word::Bad(End::Kind(pos));
    }
    if tag != tag_of(index) {
        return Word::Bad(End::Tag(pos));
    }
    if kind == KIND_MESSAGE {
        let size = 8 + len.div_ceil(8) * 8;
        if len > max_message as u64 || size > to_end {
            return Word::Bad(End::Length(pos));
        }
        return Word::Message(len, size);
    }
    if len + 8 != to_end {
        return Word::Bad(End::Padding(pos));
    }
    Word::Padding(to_end)
}

/// What [`reference_read`] hands over and how it stops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Read {
    /// The messages, in order.
    pub messages: Vec<Vec<u8>>,
    /// How it stopped.
    pub end: End,
    /// The index it stopped at: where it found the zero word (or the impossible one).
    pub at: u64,
}

/// Read `data` (the ring's data area, `capacity` bytes) from `head` as a correct consumer
/// must, given the header's `tail` and the producer's state word `producer`: the messages it
/// hands over, and how it stops.
///
/// §1.9 first: a consumer opening the segment refuses indices that break §1.2. Then §1.6:
/// read the word at the index; a message or padding with this index's tag and a possible
/// length is taken and the index moves past it; a zero word ends the read: a producer state
/// word outside §1.3 is `State`; a closed producer (state 2, whatever its flags) is `Closed`
/// if `tail` is this index and `ClosedShort` otherwise (§1.8); else `Empty`. Anything else
/// is the corruption it is. After each record the consumer has taken, it releases once it
/// holds a quarter ring (and at the zero word), and each release loads the producer's state
/// word: if that is outside §1.3, the read stops there with `State`, after the message just
/// handed over.
///
/// # Panics
///
/// If `data.len()` is not a power of two.
pub fn reference_read(
    data: &[u8],
    head: u64,
    tail: u64,
    producer: u32,
    max_message: usize,
) -> Read {
    let cap = data.len() as u64;
    assert!(cap.is_power_of_two());
    let mut messages = Vec::new();
    let stop = |messages, end, at| Read { messages, end, at };
    if head % 8 != 0 || tail % 8 != 0 || tail.wrapping_sub(head) > cap {
        return stop(messages, End::BadIndices, head);
    }
    let word_at = |index: u64| {
        let p = (index & (cap - 1)) as usize;
        u64::from_le_bytes(data[p..p + 8].try_into().expect("8 bytes"))
    };
    let (mut at, mut released) = (head, head);
    // Tags differ from one lap to the next, so no walk takes more than a lap of records.
    for _ in 0..=cap / 8 {
        match classify(word_at(at), at, cap, max_message) {
            Word::Zero => {
                let end = if !state::valid(producer) {
                    End::State(producer)
                } else if state::closed(producer) {
                    // (A second load of the word finds it still zero: the image is still.)
                    if tail == at {
                        End::Closed
                    } else {
                        End::ClosedShort { tail, head: at }
                    }
                } else {
                    End::Empty
                };
                return stop(messages, end, at);
            }
            Word::Message(len, size) => {
                let p = (at & (cap - 1)) as usize + 8;
                messages.push(data[p..p + len as usize].to_vec());
                at = at.wrapping_add(size);
            }
            Word::Padding(skip) => at = at.wrapping_add(skip),
            Word::Bad(end) => return stop(messages, end, at),
        }
        if at.wrapping_sub(released) >= cap / 4 {
            released = at;
            if !state::valid(producer) {
                return stop(messages, End::State(producer), at);
            }
        }
    }
    panic!("the reference read more than a lap of {cap} bytes from {head}");
}

/// One record (or something pretending to be one) laid into an image by [`build`].
#[derive(Debug, Clone)]
pub enum Piece {
    /// A well-formed message of this many bytes (capped at the maximum), padded before if
    /// it would cross the end, as an honest producer writes it.
    Message(u16),
    /// A message header with this index's tag claiming `len` bytes (cut to the 30 length
    /// bits), with whatever payload follows.
    Claim(u32),
    /// A padding header with this index's tag claiming `len` bytes.
    Padding(u32),
    /// A well-formed message of this many bytes (capped at the maximum) whose header word
    /// carries the tag of another index: this one plus the `i64` times the capacity if the
    /// flag is set (an earlier or a later lap: a stale word), times 8 otherwise (a
    /// neighbour, anywhere).
    Retag(u16, i64, bool),
    /// A message of this many bytes (capped) whose header word has this index's tag and
    /// kind `k % 4` instead of 1.
    Kind(u8, u16),
    /// A zero word: nothing published here (the pieces after it are unreachable).
    Zero,
    /// Any header word at all.
    Word(u64),
}

/// A shared-memory image: the data area and what the header says of it.
#[derive(Debug, Clone)]
pub struct Image {
    /// The data area (`capacity` bytes).
    pub data: Vec<u8>,
    /// The consumer's index.
    pub head: u64,
    /// The `tail` field: the starting index, or the final one once the producer closed.
    pub tail: u64,
    /// The producer's state word.
    pub producer: u32,
}

/// How [`build`] finishes an image.
#[derive(Debug, Clone)]
pub struct Finish {
    /// Clear the word just past the last piece, as an honest producer does before it
    /// publishes (docs/protocol.md §1.4); otherwise it keeps whatever `fill` left there.
    pub clear_end: bool,
    /// The producer's state word.
    pub producer: u32,
    /// Added (wrapping) to the honest `tail`: the end of the pieces if `producer` says
    /// closed, the head otherwise (the starting index a creator leaves).
    pub tail_shift: i64,
    /// Bit flips after everything is laid: (offset from the head, modulo the bytes laid
    /// plus the word after them; bit number modulo 8).
    pub flips: Vec<(u16, u8)>,
}

/// Lay `pieces` out from `head` in a `capacity`-byte ring whose data starts as `fill`
/// (repeated), stopping before the pieces and the word after them would overflow the ring,
/// then finish it as `finish` says.
pub fn build(
    capacity: usize,
    max_message: usize,
    head: u64,
    pieces: &[Piece],
    fill: &[u8],
    finish: &Finish,
) -> Image {
    let cap = capacity as u64;
    let mut data: Vec<u8> = if fill.is_empty() {
        vec![0; capacity]
    } else {
        fill.iter().copied().cycle().take(capacity).collect()
    };
    let base = head & !7;
    let mut at = base;
    let put = |data: &mut Vec<u8>, at: u64, w: u64| {
        let p = (at & (cap - 1)) as usize;
        data[p..p + 8].copy_from_slice(&w.to_le_bytes());
    };
    let payload = |data: &mut Vec<u8>, at: u64, len: usize, i: usize| {
        let p = (at & (cap - 1)) as usize + 8;
        for (k, b) in data[p..p + len].iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(31).wrapping_add(k as u8);
        }
    };
    for (i, piece) in pieces.iter().enumerate() {
        let used = at.wrapping_sub(base);
        let to_end = cap - (at & (cap - 1));
        // Room for `size` bytes from `at` and the word after them.
        let fits = |size: u64| used + size + 8 <= cap;
        match *piece {
            Piece::Message(len) | Piece::Retag(len, ..) | Piece::Kind(_, len) => {
                let len = usize::from(len).min(max_message);
                let size = 8 + len.div_ceil(8) as u64 * 8;
                let need = if size <= to_end { size } else { to_end + size };
                if !fits(need) {
                    break;
                }
                if size > to_end {
                    put(&mut data, at, crate::padding_word(at, to_end - 8));
                    at = at.wrapping_add(to_end);
                }
                let word = match *piece {
                    Piece::Retag(_, d, lap) => {
                        let unit = if lap { cap } else { 8 };
                        let other = at.wrapping_add((d as u64).wrapping_mul(unit));
                        crate::message_word(other, len as u64)
                    }
                    Piece::Kind(k, _) => crate::record_word(u64::from(k), at, len as u64),
                    _ => crate::message_word(at, len as u64),
                };
                put(&mut data, at, word);
                payload(&mut data, at, len, i);
                at = at.wrapping_add(size);
            }
            Piece::Claim(len) | Piece::Padding(len) => {
                let len = u64::from(len) & LEN_MASK;
                let skip = (8 + len.div_ceil(8) * 8).min(to_end);
                if !fits(skip) {
                    break;
                }
                let word = if matches!(piece, Piece::Claim(_)) {
                    crate::message_word(at, len)
                } else {
                    crate::padding_word(at, len)
                };
                put(&mut data, at, word);
                at = at.wrapping_add(skip);
            }
            Piece::Zero | Piece::Word(_) => {
                if !fits(8) {
                    break;
                }
                put(
                    &mut data,
                    at,
                    if let Piece::Word(w) = *piece { w } else { 0 },
                );
                at = at.wrapping_add(8);
            }
        }
    }
    if finish.clear_end {
        put(&mut data, at, 0);
    }
    let span = at.wrapping_sub(base) + 8;
    for &(off, bit) in &finish.flips {
        let p = (base.wrapping_add(u64::from(off) % span) & (cap - 1)) as usize;
        data[p] ^= 1 << (bit % 8);
    }
    let honest = if state::closed(finish.producer) {
        at
    } else {
        head
    };
    Image {
        data,
        head,
        tail: honest.wrapping_add(finish.tail_shift as u64),
        producer: finish.producer,
    }
}

/// Where the records published from the segment's `head` end, as any peer can find it
/// without being told: walk them (as [`reference_read`] does) to the first zero word, or to
/// the first impossible one. With an honest producer, where it writes next.
pub fn published_end(seg: &Segment, max_message: usize) -> u64 {
    let head = seg.head() & !7;
    reference_read(&seg.data(), head, head, state::FREE, max_message).at
}

/// Turn a libFuzzer input into an image, its maximum message and the receive calls that
/// drain it (`fuzz/libfuzzer`'s `consumer_image` target); `None` if it is too short.
///
/// Byte 0 picks the capacity (64..1024), bytes 1-2 the maximum message, bytes 3-10 the
/// head, bytes 11-12 the `tail` field's distance from it (any i16: misaligned, backwards
/// and past-capacity tails come up), byte 13 the producer's state word (its low 3 bits: free,
/// active, active with MEMBARRIER or WAITING, closed, closed and waiting, state 3, or bytes
/// 14-17 as a raw word) and, in its top bit, whether to stamp tags: then every header word
/// the walk from the head reaches that has kind 1 or 2 gets its index's tag, so that
/// lengths, kinds and payload are what the input decides and the reader gets past the first
/// word. Bytes 14-16 pick the receive calls; the rest is the data area from the head on
/// (repeated to fill the ring).
pub fn from_fuzz_input(input: &[u8]) -> Option<(Image, usize, Vec<u8>)> {
    if input.len() < 18 {
        return None;
    }
    let capacity = 1usize << (6 + input[0] % 5);
    let cap = capacity as u64;
    let max = crate::max_message_for(capacity, u16::from_le_bytes([input[1], input[2]]));
    let head = u64::from_le_bytes(input[3..11].try_into().expect("8 bytes"));
    let shift = i16::from_le_bytes([input[11], input[12]]);
    let producer = match input[13] & 7 {
        0 => state::FREE,
        1 => state::ACTIVE,
        2 => state::ACTIVE | state::MEMBARRIER,
        3 => state::ACTIVE | state::WAITING,
        4 => state::CLOSED,
        5 => state::CLOSED | state::WAITING,
        6 => 3,
        _ => u32::from_le_bytes(input[14..18].try_into().expect("4 bytes")),
    };
    let how = input[14..17].to_vec();
    let bytes = &input[18..];
    let mut data = vec![0u8; capacity];
    for (i, b) in bytes.iter().cycle().take(capacity).enumerate() {
        data[(head as usize).wrapping_add(i) & (capacity - 1)] = *b;
    }
    if input[13] & 0x80 != 0 {
        let mut at = head & !7;
        for _ in 0..=cap / 8 {
            let p = (at & (cap - 1)) as usize;
            let word = u64::from_le_bytes(data[p..p + 8].try_into().expect("8 bytes"));
            let (kind, len) = ((word >> 30) & 0b11, word & LEN_MASK);
            if word == 0 || (kind != KIND_MESSAGE && kind != KIND_PADDING) {
                break;
            }
            let stamped = crate::record_word(kind, at, len);
            data[p..p + 8].copy_from_slice(&stamped.to_le_bytes());
            let to_end = cap - p as u64;
            let size = if kind == KIND_MESSAGE {
                8 + len.div_ceil(8) * 8
            } else {
                to_end
            };
            if size > to_end {
                break;
            }
            at = at.wrapping_add(size);
        }
    }
    let img = Image {
        data,
        head,
        tail: head.wrapping_add(i64::from(shift) as u64),
        producer,
    };
    Some((img, max, how))
}

/// What the real consumer did with an image.
#[derive(Debug, PartialEq, Eq)]
pub struct Outcome {
    /// The messages it handed over, in order.
    pub messages: Vec<Vec<u8>>,
    /// How it stopped.
    pub end: End,
}

/// Write `image` into a fresh ring (as a hostile creator would, through the memfd), open
/// that memfd as the consumer's process does (`Ring::open`, which checks the indices), claim
/// the consumer with a bell of its own, and drain it with `try_drain`, `try_recv` and
/// `try_drain_views` in turn (chosen by `how`) until it reports `Empty`, `Closed` or an
/// error. Bounded: a ring of `capacity` bytes holds at most `capacity / 8` records, so more
/// calls than that mean a loop.
///
/// # Panics
///
/// If opening fails for any reason but impossible indices, or the claim fails; if the
/// consumer answers anything but a message, `Empty`, `Closed` or `Corrupted`, hands over a
/// message longer than the maximum, changes its final answer when asked again, or does not
/// stop.
pub fn consume(image: &Image, max_message: usize, how: &[u8]) -> Outcome {
    let capacity = image.data.len();
    assert!(max_message <= max_message_limit(capacity));
    let cfg = Config::new().capacity(capacity).max_message(max_message);
    let creator = Ring::create(&cfg).expect("create");
    let seg = Segment::new(creator.memfd(), capacity);
    seg.write(DATA_OFFSET, &image.data);
    seg.set_u64(offsets::HEAD, image.head);
    seg.set_u64(offsets::TAIL, image.tail);
    seg.set_producer_word(image.producer);
    let memfd = creator.memfd().try_clone_to_owned().expect("dup the memfd");
    let ring = match Ring::open(memfd, &cfg) {
        Ok(ring) => ring,
        Err(SetupError::Corrupted(_)) => {
            return Outcome {
                messages: Vec::new(),
                end: End::BadIndices,
            };
        }
        Err(e) => panic!("open: {e}"),
    };
    // The producer's process would send its bell's waiter; nobody rings it here.
    let peer = Bell::new().expect("bell");
    let waiter = peer.waiter_fd().try_clone_to_owned().expect("dup a waiter");
    let mut rx: Consumer = ring
        .consumer(Bell::new().expect("bell"), waiter)
        .unwrap_or_else(|e| panic!("claim after a successful open: {e}"));
    let mut messages = Vec::new();
    let mut buf = Vec::new();
    for call in 0..=capacity / 8 + 1 {
        let pick = how.get(call % how.len().max(1)).copied().unwrap_or(0);
        let r = match pick % 3 {
            0 => rx.try_drain(usize::from(pick / 3) + 1, |m| messages.push(m.to_vec())),
            1 => rx.try_recv(&mut buf).map(|_| {
                messages.push(buf.clone());
                1
            }),
            _ => rx.try_drain_views(usize::from(pick / 3) + 1, |m| messages.push(m.to_vec())),
        };
        if let Some(m) = messages.iter().find(|m| m.len() > max_message) {
            panic!("handed over {} bytes, max {max_message}", m.len());
        }
        let end = match r {
            Ok(_) => continue,
            Err(TryRecvError::Empty) => End::Empty,
            Err(TryRecvError::Failed(RecvError::Closed)) => End::Closed,
            Err(TryRecvError::Failed(RecvError::Corrupted(c))) => End::of(&c),
            Err(e) => panic!("unexpected answer: {e}"),
        };
        if end != End::Empty {
            // Sticky: asked again, the consumer says the same.
            let again = rx.try_recv(&mut buf);
            let same = match (&again, end) {
                (Err(TryRecvError::Failed(RecvError::Closed)), End::Closed) => true,
                (Err(TryRecvError::Failed(RecvError::Corrupted(c))), _) => End::of(c) == end,
                _ => false,
            };
            assert!(same, "{end:?} not sticky: then {again:?}");
        }
        return Outcome { messages, end };
    }
    panic!("the consumer did not stop after {} calls", capacity / 8 + 2);
}

/// A second consumer, written from docs/protocol.md §1.6 and §1.8 alone, that reads a live
/// segment in lockstep with the real one: it keeps a private head, reads each header word
/// once, checks every value it reads, loads the producer's state word at a zero word and
/// after each release, and stops for good at the first impossible value. Its releases
/// happen where the ring's consumer makes them (a quarter ring held in the middle of a
/// receive, and when a receive ends with nothing more ready); it stores nothing itself.
#[derive(Debug, Clone)]
pub struct RefConsumer {
    head: u64,
    released: u64,
    max_message: usize,
    stopped: Option<End>,
}

impl RefConsumer {
    /// A consumer that claimed the ring when its head was `head`.
    pub fn new(head: u64, max_message: usize) -> RefConsumer {
        RefConsumer {
            head,
            released: head,
            max_message,
            stopped: None,
        }
    }

    /// The consumer's private head.
    pub fn head(&self) -> u64 {
        self.head
    }

    /// How it stopped, if it did.
    pub fn stopped(&self) -> Option<End> {
        self.stopped
    }

    fn stop<T>(&mut self, e: End) -> Result<T, End> {
        self.stopped = Some(e);
        Err(e)
    }

    /// §1.6 step 3: release what is held (the real consumer stores `head`), then load the
    /// producer's state word and reject one outside §1.3.
    fn release(&mut self, seg: &Segment) -> Result<(), End> {
        if self.head == self.released {
            return Ok(());
        }
        self.released = self.head;
        let p = seg.producer_word();
        if state::valid(p) {
            Ok(())
        } else {
            self.stop(End::State(p))
        }
    }

    /// Release if a quarter ring is held (in the middle of a receive).
    fn maybe_release(&mut self, seg: &Segment) -> Result<(), End> {
        if self.head.wrapping_sub(self.released) >= seg.capacity() as u64 / 4 {
            self.release(seg)?;
        }
        Ok(())
    }

    /// At the end of a receive: release if nothing more is ready (a zero word at the head).
    fn release_if_caught_up(&mut self, seg: &Segment) {
        if self.stopped.is_none() && seg.word(self.head) == 0 {
            let _ = self.release(seg);
        }
    }

    /// The next message, `Ok(None)` if none is published, or how the stream ended. Does
    /// not end the receive: [`RefConsumer::recv`] and [`RefConsumer::drain`] do.
    ///
    /// # Errors
    ///
    /// [`End::Closed`] or the corruption found, then the same on every later call.
    fn next(&mut self, seg: &Segment) -> Result<Option<Vec<u8>>, End> {
        if let Some(e) = self.stopped {
            return Err(e);
        }
        let cap = seg.capacity() as u64;
        loop {
            match classify(seg.word(self.head), self.head, cap, self.max_message) {
                Word::Zero => {
                    self.release(seg)?;
                    let p = seg.producer_word();
                    if !state::valid(p) {
                        return self.stop(End::State(p));
                    }
                    if !state::closed(p) {
                        return Ok(None);
                    }
                    // Closed: load the word once more (§1.8); published, then closed?
                    if seg.word(self.head) != 0 {
                        continue;
                    }
                    let tail = seg.tail();
                    return self.stop(if tail == self.head {
                        End::Closed
                    } else {
                        End::ClosedShort {
                            tail,
                            head: self.head,
                        }
                    });
                }
                Word::Message(len, size) => {
                    let pos = self.head & (cap - 1);
                    let mut msg = vec![0; len as usize];
                    seg.read(DATA_OFFSET + pos as usize + 8, &mut msg);
                    self.head = self.head.wrapping_add(size);
                    // A release that finds the producer's word impossible stops the consumer
                    // after this message, which it has handed over already.
                    let _ = self.maybe_release(seg);
                    return Ok(Some(msg));
                }
                Word::Padding(skip) => {
                    self.head = self.head.wrapping_add(skip);
                    self.maybe_release(seg)?;
                }
                Word::Bad(end) => return self.stop(end),
            }
        }
    }

    /// One receive, as `try_recv` makes it: the next message (`Ok(None)` if none), with the
    /// release of a receive that leaves nothing ready.
    ///
    /// # Errors
    ///
    /// As for [`RefConsumer::next`].
    pub fn recv(&mut self, seg: &Segment) -> Result<Option<Vec<u8>>, End> {
        let m = self.next(seg)?;
        if m.is_some() {
            self.release_if_caught_up(seg);
        }
        Ok(m)
    }

    /// Up to `max` messages, as `try_drain` hands them over: an error after the first
    /// message ends the batch and is reported by the next call.
    ///
    /// # Errors
    ///
    /// As for [`RefConsumer::next`], when it fails on the first message.
    pub fn drain(&mut self, seg: &Segment, max: usize) -> Result<Vec<Vec<u8>>, End> {
        let mut out = Vec::new();
        if max == 0 {
            // Nothing asked for: nothing read, nothing released, whatever is there.
            return Ok(out);
        }
        while out.len() < max {
            match self.next(seg) {
                Ok(Some(m)) => out.push(m),
                Ok(None) => return Ok(out),
                Err(e) if out.is_empty() => return Err(e),
                Err(_) => return Ok(out),
            }
        }
        self.release_if_caught_up(seg);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An image read by hand: a message, padding, a message on the next lap, the zero word.
    #[test]
    fn the_reference_reads_what_the_protocol_says() {
        let cap = 64u64;
        let head = 2 * cap + 32;
        let mut data = vec![0xAAu8; 64];
        let mut put = |at: u64, w: u64| {
            let p = (at % cap) as usize;
            data[p..p + 8].copy_from_slice(&w.to_le_bytes());
        };
        put(head, crate::message_word(head, 3)); // 16 bytes at 32
        put(head + 16, crate::padding_word(head + 16, 8)); // 16 bytes at 48, to the end
        put(head + 32, crate::message_word(head + 32, 8)); // 16 bytes at 0
        put(head + 48, 0);
        let read = |data: &[u8], producer, tail| reference_read(data, head, tail, producer, 16);
        let r = read(&data, state::ACTIVE, head);
        assert_eq!((r.end, r.at), (End::Empty, head + 48));
        assert_eq!(r.messages, [vec![0xAA; 3], vec![0xAA; 8]]);
        let r = read(&data, state::CLOSED, head + 48);
        assert_eq!(r.end, End::Closed);
        let r = read(&data, state::CLOSED | state::WAITING, head + 40);
        assert_eq!(
            r.end,
            End::ClosedShort {
                tail: head + 40,
                head: head + 48
            }
        );
        // A quarter ring (16 bytes) is held after the first message: the release there
        // finds the garbage.
        let r = read(&data, 3, head);
        assert_eq!((r.end, r.messages.len()), (End::State(3), 1));
        assert_eq!(read(&data, state::ACTIVE, head + 1).end, End::BadIndices);
        // The word of the next lap's record at 0 read a lap early is stale.
        let mut stale = data.clone();
        stale[0..8].copy_from_slice(&crate::message_word(head + 32 + cap, 8).to_le_bytes());
        assert_eq!(read(&stale, state::ACTIVE, head).end, End::Tag(0));
    }

    #[test]
    fn fuzz_inputs_decode_and_stamped_tags_reach_past_the_first_word() {
        let mut input = vec![0u8; 18];
        input[0] = 2; // 256 bytes
        input[13] = 0x80 | 1; // stamp tags; producer active
        // Messages of 8 bytes: kind 1 in bits 31..30 of each header word.
        for _ in 0..8 {
            input.extend_from_slice(&(1u64 << 30 | 8).to_le_bytes());
            input.extend_from_slice(&[7; 8]);
        }
        input.extend_from_slice(&[0; 8]);
        let (img, max, how) = from_fuzz_input(&input).expect("long enough");
        assert_eq!((img.data.len(), how.len()), (256, 3));
        let r = reference_read(&img.data, img.head, img.tail, img.producer, max);
        assert!(r.messages.len() >= 8, "{r:?}");
        assert!(from_fuzz_input(&input[..17]).is_none());
    }
}
