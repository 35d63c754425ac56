//! Arbitrary shared-memory images and a reference reader for them.
//!
//! [`reference_read`] is docs/protocol.md §1.5–1.6 written a second time, as plainly as
//! possible, over a byte slice: what a correct consumer must hand over from an image, and
//! where it must stop. The suites compare the ring's real consumer with it; `fuzz/libfuzzer`
//! does the same from libFuzzer's inputs.

use shmring_ring::layout::{DATA_OFFSET, max_message_limit, offsets};
use shmring_ring::{Bell, Config, Consumer, Corruption, RecvError, Ring, SetupError, TryRecvError};

use crate::Segment;

/// How the reference reader ends: at the published tail, or at an impossible value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Everything published was read.
    Empty,
    /// The indices were impossible when the consumer opened the ring.
    BadIndices,
    /// A record header word with an unknown kind at this ring position.
    Kind(u64),
    /// A message record that is too long at this ring position.
    Length(u64),
    /// A padding record that does not end at the ring's end, or is not fully published.
    Padding(u64),
    /// A tail that is not a multiple of 8.
    TailMisaligned,
    /// A tail more than the capacity ahead of the consumer.
    TailOutOfRange,
    /// A tail behind the last one accepted.
    TailBackwards,
    /// The producer closed and everything was read.
    Closed,
}

impl End {
    /// The [`End`] a ring's corruption report corresponds to.
    pub fn of(c: &Corruption) -> End {
        match *c {
            Corruption::RecordKind { position, .. } => End::Kind(position),
            Corruption::RecordLength { position, .. } => End::Length(position),
            Corruption::Padding { position, .. } => End::Padding(position),
            Corruption::IndexMisaligned { index: "tail", .. } => End::TailMisaligned,
            Corruption::IndexOutOfRange { index: "tail", .. } => End::TailOutOfRange,
            Corruption::IndexMovedBackwards { index: "tail", .. } => End::TailBackwards,
            _ => End::BadIndices,
        }
    }
}

/// Read `data` (the ring's data area, `capacity` bytes) from `head` to `tail` as a correct
/// consumer must: the messages it hands over, and how it stops.
pub fn reference_read(
    data: &[u8],
    head: u64,
    tail: u64,
    max_message: usize,
) -> (Vec<Vec<u8>>, End) {
    let cap = data.len() as u64;
    assert!(cap.is_power_of_two());
    let mut out = Vec::new();
    if head % 8 != 0 || tail % 8 != 0 || tail.wrapping_sub(head) > cap {
        return (out, End::BadIndices);
    }
    let mut at = head;
    while at != tail {
        let pos = at & (cap - 1);
        let p = pos as usize;
        let word = u64::from_le_bytes(data[p..p + 8].try_into().expect("8 bytes"));
        let (kind, len) = (word >> 32, word & 0xFFFF_FFFF);
        let published = tail.wrapping_sub(at);
        let to_end = cap - pos;
        match kind {
            1 => {
                let size = 8 + len.div_ceil(8) * 8;
                if len > max_message as u64 || size > published || size > to_end {
                    return (out, End::Length(pos));
                }
                out.push(data[p + 8..p + 8 + len as usize].to_vec());
                at = at.wrapping_add(size);
            }
            2 => {
                if len + 8 != to_end || to_end > published {
                    return (out, End::Padding(pos));
                }
                at = at.wrapping_add(to_end);
            }
            _ => return (out, End::Kind(pos)),
        }
    }
    (out, End::Empty)
}

/// One record (or something pretending to be one) laid into an image by [`build`].
#[derive(Debug, Clone)]
pub enum Piece {
    /// A well-formed message of this many bytes (capped at the maximum), padded before if
    /// it would cross the end, as an honest producer writes it.
    Message(u16),
    /// A message header claiming `len` bytes, with whatever payload follows.
    Claim(u32),
    /// A padding header claiming `len` bytes.
    Padding(u32),
    /// Any header word at all.
    Word(u64),
}

/// A shared-memory image: the data area and the two indices.
#[derive(Debug, Clone)]
pub struct Image {
    /// The data area (`capacity` bytes).
    pub data: Vec<u8>,
    /// The consumer's index.
    pub head: u64,
    /// The producer's index.
    pub tail: u64,
}

/// Lay `pieces` out from `head` in a `capacity`-byte ring whose data starts as `fill`
/// (repeated), stopping before the ring would overflow. The tail is where the pieces end,
/// moved by `tail_shift` bytes (0 for an honest tail).
pub fn build(
    capacity: usize,
    max_message: usize,
    head: u64,
    pieces: &[Piece],
    fill: &[u8],
    tail_shift: i64,
) -> Image {
    let cap = capacity as u64;
    let mut data: Vec<u8> = if fill.is_empty() {
        vec![0; capacity]
    } else {
        fill.iter().copied().cycle().take(capacity).collect()
    };
    let mut at = head & !7;
    let put = |data: &mut Vec<u8>, at: u64, w: u64| {
        let p = (at & (cap - 1)) as usize;
        data[p..p + 8].copy_from_slice(&w.to_le_bytes());
    };
    for (i, piece) in pieces.iter().enumerate() {
        let used = at.wrapping_sub(head & !7);
        let to_end = cap - (at & (cap - 1));
        match *piece {
            Piece::Message(len) => {
                let len = usize::from(len).min(max_message);
                let size = 8 + len.div_ceil(8) as u64 * 8;
                let need = if size <= to_end { size } else { to_end + size };
                if used + need > cap {
                    break;
                }
                if size > to_end {
                    put(&mut data, at, (2u64 << 32) | (to_end - 8));
                    at = at.wrapping_add(to_end);
                }
                put(&mut data, at, (1u64 << 32) | len as u64);
                let p = (at & (cap - 1)) as usize + 8;
                for (k, b) in data[p..p + len].iter_mut().enumerate() {
                    *b = (i as u8).wrapping_mul(31).wrapping_add(k as u8);
                }
                at = at.wrapping_add(size);
            }
            Piece::Claim(len) | Piece::Padding(len) => {
                let kind = if matches!(piece, Piece::Claim(_)) {
                    1
                } else {
                    2
                };
                if used + 8 > cap {
                    break;
                }
                put(&mut data, at, (kind << 32) | u64::from(len));
                let skip = 8 + u64::from(len).div_ceil(8) * 8;
                if used + skip.min(to_end) > cap {
                    break;
                }
                at = at.wrapping_add(skip.min(to_end));
            }
            Piece::Word(w) => {
                if used + 8 > cap {
                    break;
                }
                put(&mut data, at, w);
                at = at.wrapping_add(8);
            }
        }
    }
    Image {
        data,
        head,
        tail: at.wrapping_add(tail_shift as u64),
    }
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
/// `try_drain_views` in turn (chosen by `how`) until it reports `Empty` or an error. Bounded:
/// a ring of `capacity` bytes holds at most `capacity / 8` records, so more calls than that
/// mean a loop.
///
/// # Panics
///
/// If opening fails for any reason but impossible indices, or the claim fails; if the
/// consumer answers anything but a message, `Empty` or `Corrupted`, hands over a message
/// longer than the maximum, or does not stop.
pub fn consume(image: &Image, max_message: usize, how: &[u8]) -> Outcome {
    let capacity = image.data.len();
    assert!(max_message <= max_message_limit(capacity));
    let cfg = Config::new().capacity(capacity).max_message(max_message);
    let creator = Ring::create(&cfg).expect("create");
    let seg = Segment::new(creator.memfd(), capacity);
    seg.write(DATA_OFFSET, &image.data);
    seg.set_u64(offsets::HEAD, image.head);
    seg.set_u64(offsets::TAIL, image.tail);
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
        match r {
            Ok(_) => {}
            Err(TryRecvError::Empty) => {
                return Outcome {
                    messages,
                    end: End::Empty,
                };
            }
            Err(TryRecvError::Failed(RecvError::Corrupted(c))) => {
                // Sticky: asked again, the consumer says the same.
                match rx.try_recv(&mut buf) {
                    Err(TryRecvError::Failed(RecvError::Corrupted(c2))) if c2 == c => {}
                    other => panic!("corruption {c} not sticky: then {other:?}"),
                }
                return Outcome {
                    messages,
                    end: End::of(&c),
                };
            }
            Err(e) => panic!("unexpected answer: {e}"),
        }
    }
    panic!("the consumer did not stop after {} calls", capacity / 8 + 2);
}

/// A second consumer, written from docs/protocol.md §1.5, §1.6 and §1.8 alone, that reads a
/// live segment in lockstep with the real one: it keeps a private head and a cached tail,
/// loads the tail only when the two are equal, checks every value it reads, and stops for
/// good at the first impossible one.
#[derive(Debug, Clone)]
pub struct RefConsumer {
    head: u64,
    tail: u64,
    max_message: usize,
    stopped: Option<End>,
}

impl RefConsumer {
    /// A consumer that claimed the ring when its indices were `head` and `tail`.
    pub fn new(head: u64, tail: u64, max_message: usize) -> RefConsumer {
        RefConsumer {
            head,
            tail,
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

    fn stop(&mut self, e: End) -> Result<Option<Vec<u8>>, End> {
        self.stopped = Some(e);
        Err(e)
    }

    /// Load and check the tail (§1.6). `Ok(true)` if something is published.
    fn load_tail(&mut self, seg: &Segment) -> Result<bool, End> {
        let cap = seg.capacity() as u64;
        let tail = seg.tail();
        if tail % 8 != 0 {
            return Err(End::TailMisaligned);
        }
        if tail.wrapping_sub(self.head) > cap {
            return Err(End::TailOutOfRange);
        }
        if tail.wrapping_sub(self.tail) > cap {
            return Err(End::TailBackwards);
        }
        self.tail = tail;
        Ok(tail != self.head)
    }

    /// The next message, `Ok(None)` if none is published, or how the stream ended.
    ///
    /// # Errors
    ///
    /// [`End::Closed`] or the corruption found, then the same on every later call.
    pub fn next(&mut self, seg: &Segment) -> Result<Option<Vec<u8>>, End> {
        if let Some(e) = self.stopped {
            return Err(e);
        }
        let cap = seg.capacity() as u64;
        loop {
            if self.head == self.tail {
                match self.load_tail(seg) {
                    Ok(true) => {}
                    Ok(false) => {
                        if seg.u32_at(offsets::PRODUCER_STATE) != 2 {
                            return Ok(None);
                        }
                        // Closed: load the tail once more (§1.8).
                        match self.load_tail(seg) {
                            Ok(true) => {}
                            Ok(false) => return self.stop(End::Closed),
                            Err(e) => return self.stop(e),
                        }
                    }
                    Err(e) => return self.stop(e),
                }
            }
            let pos = self.head & (cap - 1);
            let word = seg.word(self.head);
            let (kind, len) = (word >> 32, word & 0xFFFF_FFFF);
            let published = self.tail.wrapping_sub(self.head);
            let to_end = cap - pos;
            match kind {
                1 => {
                    let size = 8 + len.div_ceil(8) * 8;
                    if len > self.max_message as u64 || size > published || size > to_end {
                        return self.stop(End::Length(pos));
                    }
                    let mut msg = vec![0; len as usize];
                    seg.read(DATA_OFFSET + pos as usize + 8, &mut msg);
                    self.head = self.head.wrapping_add(size);
                    return Ok(Some(msg));
                }
                2 => {
                    if len + 8 != to_end || to_end > published {
                        return self.stop(End::Padding(pos));
                    }
                    self.head = self.head.wrapping_add(to_end);
                }
                _ => return self.stop(End::Kind(pos)),
            }
        }
    }

    /// Up to `max` messages, as `try_drain` hands them over: an error after the first
    /// message ends the batch and is reported by the next call.
    ///
    /// # Errors
    ///
    /// As for [`RefConsumer::next`], when it fails on the first message.
    pub fn drain(&mut self, seg: &Segment, max: usize) -> Result<Vec<Vec<u8>>, End> {
        let mut out = Vec::new();
        while out.len() < max {
            match self.next(seg) {
                Ok(Some(m)) => out.push(m),
                Ok(None) => break,
                Err(e) if out.is_empty() => return Err(e),
                Err(_) => break,
            }
        }
        Ok(out)
    }
}
