//! Errors: one small enum per operation (crossbeam's habit). Failures that end a handle for
//! good are [`SendError`] and [`RecvError`]; the `Try*` and `*Timeout` enums add the one
//! transient answer of their operation and wrap the rest.

use std::io;

use crate::layout::ShapeError;

/// What was impossible in the shared memory. Every value here came from the peer (or from
/// something that overwrote the segment): the ring stops at the first one and reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Corruption {
    /// The producer's index in the header is more than a capacity ahead of the consumer's.
    #[error(
        "{index} index {value} is {} bytes ahead of head index {other}: more than the capacity ({capacity})",
        .value.wrapping_sub(*.other)
    )]
    IndexOutOfRange {
        /// `"tail"`.
        index: &'static str,
        /// The value read.
        value: u64,
        /// The index it was compared with.
        other: u64,
        /// Ring capacity in bytes.
        capacity: u64,
    },
    /// The producer's index in the header is behind the consumer's (`tail - head`, in wrapping
    /// arithmetic, is 2^63 or more): the producer's index never falls behind the consumer's.
    #[error("tail index {tail} is {} bytes behind head index {head}", .head.wrapping_sub(*.tail))]
    TailBehindHead {
        /// The tail read.
        tail: u64,
        /// The head read.
        head: u64,
    },
    /// The consumer released bytes the producer never published.
    #[error("head index {head} is past everything published (up to index {published})")]
    HeadPastPublished {
        /// The head read.
        head: u64,
        /// The end of what the producer published.
        published: u64,
    },
    /// The peer's index went backwards.
    #[error("{index} index moved backwards from {was} to {now}")]
    IndexMovedBackwards {
        /// `"head"` or `"tail"`.
        index: &'static str,
        /// The last accepted value.
        was: u64,
        /// The value read now.
        now: u64,
    },
    /// The peer's index is not a multiple of 8.
    #[error("{index} index {value} is not a multiple of 8")]
    IndexMisaligned {
        /// `"head"` or `"tail"`.
        index: &'static str,
        /// The value read.
        value: u64,
    },
    /// A record header has an unknown kind.
    #[error("record at ring position {position} has an unknown header {word:#018x}")]
    RecordKind {
        /// Ring position of the record header.
        position: u64,
        /// The whole header word.
        word: u64,
    },
    /// A record header carries another index's tag: a word left from an earlier lap, or one
    /// written where no record starts.
    #[error(
        "record header {word:#018x} at ring position {position} does not carry the tag of index {index}"
    )]
    RecordTag {
        /// Ring position of the record header.
        position: u64,
        /// The whole header word.
        word: u64,
        /// The consumer's index there.
        index: u64,
    },
    /// A message record is longer than the maximum message, or runs past the end of the ring.
    #[error(
        "record at ring position {position} claims {len} bytes: {}",
        record_length_reason(*len, *max, *to_end)
    )]
    RecordLength {
        /// Ring position of the record header.
        position: u64,
        /// Claimed payload length.
        len: u64,
        /// The negotiated maximum message size.
        max: u64,
        /// Bytes from `position` to the end of the ring (header included).
        to_end: u64,
    },
    /// A padding record does not end exactly at the end of the ring: its `len` is not
    /// `to_end - 8` (the bytes after its header up to the end of the data area).
    #[error(
        "padding at ring position {position} has length {len}, but padding there must have length {} (the ring ends {to_end} bytes from it, its 8-byte header included)",
        .to_end.saturating_sub(8)
    )]
    Padding {
        /// Ring position of the padding header.
        position: u64,
        /// Claimed padding length (after the header).
        len: u64,
        /// Bytes from `position` to the end of the ring (header included).
        to_end: u64,
    },
    /// The producer closed with a final tail the consumer's index does not reach: it claims
    /// records the ring does not hold.
    #[error("the producer closed at index {tail}, but the ring holds no record at index {head}")]
    ClosedShort {
        /// The producer's final tail.
        tail: u64,
        /// The consumer's index, where the ring holds nothing.
        head: u64,
    },
    /// The peer's state word holds a value the protocol never writes.
    #[error("the {side}'s state word is {word:#x}")]
    State {
        /// `"producer"` or `"consumer"`.
        side: &'static str,
        /// The value read.
        word: u32,
    },
}

/// Why a send can never succeed on this producer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The message is longer than the ring's maximum message size. Nothing was written.
    #[error("message of {len} bytes exceeds the maximum of {max}")]
    TooLarge {
        /// Message length.
        len: usize,
        /// The ring's maximum message size.
        max: usize,
    },
    /// The consumer closed its end; nothing sent from now on will be read.
    #[error("the consumer closed the ring")]
    Closed,
    /// The peer process is gone (its watch fd reported hang-up) without closing the ring.
    #[error("the peer is gone")]
    PeerGone,
    /// The shared memory holds something impossible.
    #[error("ring corrupted: {0}")]
    Corrupted(#[from] Corruption),
    /// This handle was inherited across `fork()`; only the process that claimed it may use it.
    #[error("ring handle used in a forked child")]
    Forked,
    /// Sleeping (`epoll_wait`) failed.
    #[error("waiting for the consumer failed: {0}")]
    Io(#[from] io::Error),
}

/// The answer of [`Producer::try_send`](crate::Producer::try_send) and
/// [`Producer::try_reserve`](crate::Producer::try_reserve).
#[derive(Debug, thiserror::Error)]
pub enum TrySendError {
    /// No room now; the message was not written. Retry, or block with `send`.
    #[error("ring full")]
    Full,
    /// The send can never succeed.
    #[error(transparent)]
    Failed(#[from] SendError),
}

/// The answer of [`Producer::send_timeout`](crate::Producer::send_timeout).
#[derive(Debug, thiserror::Error)]
pub enum SendTimeoutError {
    /// Still no room when the timeout expired; the message was not written.
    #[error("timed out waiting for room in the ring")]
    Timeout,
    /// The send can never succeed.
    #[error(transparent)]
    Failed(#[from] SendError),
}

/// Why a receive can never succeed on this consumer (after everything committed was read).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecvError {
    /// The producer closed the ring and every message it committed has been received.
    #[error("the producer closed the ring")]
    Closed,
    /// The peer process is gone without closing; every message it published was received.
    #[error("the peer is gone")]
    PeerGone,
    /// The shared memory holds something impossible.
    #[error("ring corrupted: {0}")]
    Corrupted(#[from] Corruption),
    /// This handle was inherited across `fork()`; only the process that claimed it may use it.
    #[error("ring handle used in a forked child")]
    Forked,
    /// Sleeping (`epoll_wait`) failed.
    #[error("waiting for the producer failed: {0}")]
    Io(#[from] io::Error),
}

/// The answer of [`Consumer::try_recv`](crate::Consumer::try_recv) and friends.
#[derive(Debug, thiserror::Error)]
pub enum TryRecvError {
    /// Nothing to read now.
    #[error("ring empty")]
    Empty,
    /// Nothing will ever be read again.
    #[error(transparent)]
    Failed(#[from] RecvError),
}

/// The answer of [`Consumer::recv_timeout`](crate::Consumer::recv_timeout) and friends.
#[derive(Debug, thiserror::Error)]
pub enum RecvTimeoutError {
    /// Nothing arrived before the timeout.
    #[error("timed out waiting for a message")]
    Timeout,
    /// Nothing will ever be read again.
    #[error(transparent)]
    Failed(#[from] RecvError),
}

/// Why a typed receive ([`Consumer::recv_value`](crate::Consumer::recv_value) and the other
/// `*_value` and `*_serde` receives) handed over no value. `E` is the answer of the byte API's
/// receive of the same kind: [`RecvError`], [`TryRecvError`] (whose `Empty` is "nothing now")
/// or [`RecvTimeoutError`].
///
/// A message that is not a value of the type asked for (`WrongSize`, `Decode`) is consumed and
/// reported: the stream goes on, and the next receive reads the message after it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecvValueError<E> {
    /// The message is not `size_of::<T>()` bytes long. It was consumed.
    #[error("message of {len} bytes where a value of {expected} bytes was expected")]
    WrongSize {
        /// The message's length.
        len: usize,
        /// `size_of::<T>()`.
        expected: usize,
    },
    /// (Feature `serde`.) The message is not a postcard encoding of the type asked for, or
    /// has bytes after one (reported as `DeserializeBadEncoding`). It was consumed.
    #[cfg(feature = "serde")]
    #[error("message of {len} bytes does not decode: {source}")]
    Decode {
        /// The message's length.
        len: usize,
        /// What postcard found wrong.
        source: postcard::Error,
    },
    /// The receive itself found nothing (`Empty`, `Timeout`) or failed for good.
    #[error(transparent)]
    Recv(#[from] E),
}

/// Why [`Producer::send_serde`](crate::Producer::send_serde) (feature `serde`) sent nothing.
/// `E` is the answer of the byte API's send of the same kind: [`SendError`] (`TooLarge` for
/// an encoding longer than the maximum message) or [`TrySendError`].
#[cfg(feature = "serde")]
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SendSerdeError<E> {
    /// The value does not encode: its `Serialize` failed, or it is a sequence or map whose
    /// length is not known in advance. Nothing was sent.
    #[error("the value does not encode: {0}")]
    Encode(#[source] postcard::Error),
    /// The send of the encoded bytes.
    #[error(transparent)]
    Send(#[from] E),
}

/// Why [`Producer::close`](crate::Producer::close) could not confirm that every message was
/// consumed. The ring is closed either way.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CloseError {
    /// The consumer had not released everything when the timeout expired.
    #[error("{unconsumed} bytes still unconsumed when the close timed out")]
    Timeout {
        /// Published bytes the consumer had not released.
        unconsumed: u64,
    },
    /// The consumer closed, or its process went away, before reading everything.
    #[error("the consumer went away with {unconsumed} bytes unconsumed")]
    Unconsumed {
        /// Published bytes the consumer never released.
        unconsumed: u64,
    },
    /// The send side had already failed; nothing can be confirmed.
    #[error(transparent)]
    Failed(#[from] SendError),
}

/// Why a ring could not be created, opened or claimed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SetupError {
    /// The configuration is out of range (capacity, max message).
    #[error("invalid configuration: {0}")]
    InvalidConfig(#[from] ShapeError),
    /// A system call failed during set-up.
    #[error("{op} failed: {source}")]
    Io {
        /// The call that failed, as its man page names it.
        op: &'static str,
        /// The OS error.
        source: io::Error,
    },
    /// The fd offered as the ring's memory is not a memfd (`F_GET_SEALS` is refused).
    #[error("the ring's memory fd is not a memfd")]
    NotMemfd,
    /// The memfd lacks `F_SEAL_SHRINK | F_SEAL_GROW` and they can no longer be added, or
    /// carries a write seal that forbids a shared writable mapping.
    #[error("the ring's memfd has unusable seals ({seals:#x})")]
    Seals {
        /// The seals found (`F_SEAL_*` bits).
        seals: u32,
    },
    /// The memfd's size is not the size the negotiated capacity implies.
    #[error("the ring's memfd is {actual} bytes, expected {expected}")]
    SizeMismatch {
        /// `DATA_OFFSET + capacity`.
        expected: u64,
        /// `st_size`.
        actual: u64,
    },
    /// The header does not describe the ring that was negotiated.
    #[error("ring header mismatch: {what} is {found}, expected {expected}")]
    HeaderMismatch {
        /// The field that differs.
        what: &'static str,
        /// The value in the segment.
        found: u64,
        /// The value expected.
        expected: u64,
    },
    /// The initial indices in the header are impossible.
    #[error("ring header corrupted: {0}")]
    Corrupted(#[from] Corruption),
    /// The fd offered as the peer's waiter is not an epoll instance.
    #[error("the peer's waiter fd is unusable: {why}")]
    BadWaiter {
        /// What is wrong with it.
        why: String,
    },
    /// The role is already taken (by this process or by the peer).
    #[error("the {0} role of this ring is already taken")]
    RoleTaken(&'static str),
}

impl SetupError {
    #[cfg_attr(any(miri, loom), allow(dead_code))]
    pub(crate) fn io(op: &'static str) -> impl FnOnce(rustix::io::Errno) -> SetupError {
        move |e| SetupError::Io {
            op,
            source: e.into(),
        }
    }
}

/// Which bound a [`Corruption::RecordLength`] broke.
fn record_length_reason(len: u64, max: u64, to_end: u64) -> String {
    if len > max {
        format!("more than the maximum message ({max})")
    } else {
        // `len <= max`, which fits the ring, so the size cannot overflow.
        format!(
            "with its 8-byte header, padded to 8, it takes {} bytes, more than the {to_end} \
             left before the ring's end",
            crate::layout::record_size(len as usize)
        )
    }
}
