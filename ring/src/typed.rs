//! Typed messages over the byte API: one value per message.
//!
//! # Plain old data, as its bytes
//!
//! A `T` that can be viewed as bytes goes through the ring as exactly its `size_of::<T>()`
//! bytes, with no encoding: [`Producer::send_value`] is [`Producer::send`] of those bytes,
//! [`Producer::reserve_value`] writes them in place, and [`Consumer::recv_value`] and
//! [`Consumer::try_drain_values`] copy a message straight from the ring into a `T` of the
//! caller's (one copy, the byte API's own). Sending needs [`NoUninit`] (no padding, whose
//! uninitialised bytes would otherwise reach the peer); receiving needs [`Pod`] (every bit
//! pattern is a valid `T`, so whatever the peer wrote is a `T`, never undefined behaviour).
//! Derive them on a `#[repr(C)]` struct:
//!
//! ```
//! use shmpipe_ring::bytemuck::{Pod, Zeroable};
//! use shmpipe_ring::{Config, channel};
//!
//! #[derive(Debug, Clone, Copy, PartialEq, Pod, Zeroable)]
//! #[bytemuck(crate = "shmpipe_ring::bytemuck")] // or depend on `bytemuck = "1"` yourself
//! #[repr(C)]
//! struct Tick {
//!     seq: u64,
//!     price: f64,
//!     qty: u32,
//!     venue: u32,
//! }
//!
//! let (mut tx, mut rx) = channel(&Config::new())?;
//! tx.send_value(&Tick { seq: 1, price: 2.5, qty: 3, venue: 4 })?;
//! assert_eq!(rx.try_recv_value::<Tick>()?, Tick { seq: 1, price: 2.5, qty: 3, venue: 4 });
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! **Why receives copy.** The peer is not trusted, and shared memory can change under us at
//! any time: a `&T` into the ring would let the producer's process change a value behind a
//! shared reference, which is undefined behaviour in safe code. So a value is copied out of
//! the ring into private memory, as [`Consumer::recv`] copies bytes (docs/design.md, "Typed
//! messages: why receiving copies"); for a value of a few cache lines the copy is the read
//! the caller would have done anyway. The borrowed route stays the byte API's `unsafe`
//! [`Message::as_slice`], for peers you trust.
//!
//! **Sizes.** A message whose length is not `size_of::<T>()` is
//! [`RecvValueError::WrongSize`]. It is consumed and reported, so the stream goes on: the next
//! receive reads the message after it, and a loop that logs errors and carries on cannot
//! spin on one bad message. A zero-sized `T` (`()`) is a zero-length message.
//!
//! **Alignment.** Records start 8-aligned in the ring. Since every receive copies into a
//! local `T`, a `T` of any alignment (16, 64) works, and a `T` whose size is not a multiple of
//! 8 too (the record is padded; the message is `size_of::<T>()` bytes). Alignment matters only
//! to whoever views a grant's bytes as a `&mut T` through the `unsafe`
//! [`Grant::as_mut_slice`] (see [`ValueGrant::grant_mut`]).
//!
//! **Why bytemuck.** Its two derives (`Pod`, `Zeroable`) check at compile time that a struct
//! is `#[repr(C)]` (or transparent) with no padding and only plain-old-data fields, which is
//! exactly what "a value is its bytes" needs, and its finer traits match the two directions
//! ([`NoUninit`] to send, [`Pod`] to receive). It is 1.x and has been since 2019, so the
//! re-export [`crate::bytemuck`] (`shmpipe::bytemuck`) is no semver hazard, and a user's own
//! `bytemuck = "1"` resolves to the same crate: there is no version skew between the traits
//! a user derives and the ones these methods ask for. zerocopy does as much (and validates
//! enums and `bool`s with `TryFromBytes`), but asks for four derives per type
//! (`FromBytes`, `IntoBytes`, `Immutable`, `KnownLayout`), and its 0.x releases rename traits
//! (0.8 renamed `AsBytes`), so re-exporting it would tie this crate's semver to its.
//!
//! # Everything else: serde (feature `serde`)
//!
//! [`Producer::send_serde`] encodes any `Serialize` value with postcard (compact: varints,
//! no field names; well kept; a stable wire format since 1.0) and sends it as one message;
//! [`Consumer::recv_serde`] decodes a private copy into any `DeserializeOwned` type. The
//! encoding goes to a buffer the producer keeps (it grows to the largest value and stays), then
//! into the ring with the byte API's one copy: simpler than sizing the value first
//! (`postcard::experimental::serialized_size` walks it a second time) and writing in place
//! through a grant a byte at a time. An encoding longer than the maximum message is
//! [`SendError::TooLarge`]; a message that does not decode, or has bytes after the value, is
//! [`RecvValueError::Decode`], consumed like a wrong-sized one. A peer's bytes never make a
//! decode panic: postcard checks every length and tag against the bytes it has.

use std::any::type_name;
use std::marker::PhantomData;
use std::mem::size_of;
use std::time::Duration;

use bytemuck::{NoUninit, Pod};

use crate::end::never_timeout;
use crate::error::{
    RecvError, RecvTimeoutError, RecvValueError, SendError, SendTimeoutError, TryRecvError,
    TrySendError,
};
use crate::wait::Blocked;
use crate::{Consumer, Grant, Message, Producer};

impl Producer {
    /// Send `value` as its `size_of::<T>()` bytes, waiting for room as long as it takes (the
    /// same call as [`Producer::send`] of [`bytemuck::bytes_of`]`(value)`).
    ///
    /// # Errors
    ///
    /// As for [`Producer::send`]; [`SendError::TooLarge`] if `T` is larger than the maximum
    /// message.
    #[inline]
    pub fn send_value<T: NoUninit>(&mut self, value: &T) -> Result<(), SendError> {
        self.send(bytemuck::bytes_of(value))
    }

    /// Send `value` as its bytes if there is room now.
    ///
    /// # Errors
    ///
    /// As for [`Producer::try_send`].
    #[inline]
    pub fn try_send_value<T: NoUninit>(&mut self, value: &T) -> Result<(), TrySendError> {
        self.try_send(bytemuck::bytes_of(value))
    }

    /// Send `value` as its bytes, waiting at most `timeout` for room.
    ///
    /// # Errors
    ///
    /// As for [`Producer::send_timeout`].
    pub fn send_value_timeout<T: NoUninit>(
        &mut self,
        value: &T,
        timeout: Duration,
    ) -> Result<(), SendTimeoutError> {
        self.send_timeout(bytemuck::bytes_of(value), timeout)
    }

    /// Reserve room for one `T`, waiting as long as it takes, and write it in place through
    /// the [`ValueGrant`].
    ///
    /// # Errors
    ///
    /// As for [`Producer::reserve`].
    pub fn reserve_value<T: NoUninit>(&mut self) -> Result<ValueGrant<'_, T>, SendError> {
        self.reserve(size_of::<T>()).map(ValueGrant::new)
    }

    /// Reserve room for one `T` if there is room now.
    ///
    /// # Errors
    ///
    /// As for [`Producer::try_reserve`].
    pub fn try_reserve_value<T: NoUninit>(&mut self) -> Result<ValueGrant<'_, T>, TrySendError> {
        self.try_reserve(size_of::<T>()).map(ValueGrant::new)
    }
}

/// Room for one `T` in the ring, reserved by [`Producer::reserve_value`]: a [`Grant`] of
/// `size_of::<T>()` bytes that writes whole values or single fields. Nothing is visible to
/// the consumer until [`commit`](ValueGrant::commit); dropping it gives the room back.
///
/// The bytes are not zeroed: what is not written before the commit is whatever an earlier
/// message left there. Write the whole value, or every field.
///
/// ```
/// use std::mem::offset_of;
/// use shmpipe_ring::bytemuck::{Pod, Zeroable};
/// use shmpipe_ring::{Config, channel};
///
/// #[derive(Debug, Clone, Copy, PartialEq, Pod, Zeroable)]
/// #[bytemuck(crate = "shmpipe_ring::bytemuck")]
/// #[repr(C)]
/// struct Pair {
///     a: u64,
///     b: u64,
/// }
///
/// let (mut tx, mut rx) = channel(&Config::new())?;
/// let mut g = tx.reserve_value::<Pair>()?;
/// g.write_at(offset_of!(Pair, a), &1u64); // field by field, in place
/// g.write_at(offset_of!(Pair, b), &2u64);
/// g.commit()?;
/// assert_eq!(rx.try_recv_value::<Pair>()?, Pair { a: 1, b: 2 });
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct ValueGrant<'a, T> {
    grant: Grant<'a>,
    _value: PhantomData<fn(&T)>,
}

impl<T> std::fmt::Debug for ValueGrant<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ValueGrant")
            .field("type", &type_name::<T>())
            .field("len", &self.grant.len())
            .finish()
    }
}

impl<'a, T: NoUninit> ValueGrant<'a, T> {
    fn new(grant: Grant<'a>) -> Self {
        ValueGrant {
            grant,
            _value: PhantomData,
        }
    }

    /// Copy the whole of `value` into the reservation.
    pub fn write(&mut self, value: &T) {
        self.grant.write_at(0, bytemuck::bytes_of(value));
    }

    /// Copy `field` to byte `offset` of the value (use [`std::mem::offset_of!`]), leaving the
    /// other bytes as they are.
    ///
    /// # Panics
    ///
    /// If `offset + size_of::<F>()` exceeds `size_of::<T>()`.
    pub fn write_at<F: NoUninit>(&mut self, offset: usize, field: &F) {
        self.grant.write_at(offset, bytemuck::bytes_of(field));
    }

    /// The byte grant underneath, for what the typed methods do not do: its `unsafe`
    /// [`Grant::as_mut_slice`] viewed with [`bytemuck::try_from_bytes_mut`] gives a `&mut T`
    /// in the ring, if you trust the consumer's process (see that method's safety contract)
    /// and the slot is aligned for `T` (always, for an alignment of 8 or less: records start
    /// 8-aligned).
    pub fn grant_mut(&mut self) -> &mut Grant<'a> {
        &mut self.grant
    }

    /// Give the room back without publishing anything: the same as dropping the grant.
    pub fn abort(self) {}

    /// Publish the value (see [`Grant::commit`]).
    ///
    /// # Errors
    ///
    /// [`SendError::Closed`] if the consumer is gone.
    pub fn commit(self) -> Result<(), SendError> {
        self.grant.commit()
    }
}

/// A message that is not a `T`: the part of [`RecvValueError`] that does not depend on the
/// kind of receive.
enum NotA {
    WrongSize {
        len: usize,
        expected: usize,
    },
    #[cfg(feature = "serde")]
    Decode {
        len: usize,
        source: postcard::Error,
    },
}

impl NotA {
    fn into_err<E>(self) -> RecvValueError<E> {
        match self {
            NotA::WrongSize { len, expected } => RecvValueError::WrongSize { len, expected },
            #[cfg(feature = "serde")]
            NotA::Decode { len, source } => RecvValueError::Decode { len, source },
        }
    }
}

/// Copy a message into `v`, if it is `size_of::<T>()` bytes long. `T: Pod`: every byte
/// pattern the peer may have written, even while we copied, is a valid `T`.
#[inline(always)]
fn pod_into<T: Pod>(m: Message<'_>, v: &mut T) -> Result<(), NotA> {
    let expected = size_of::<T>();
    if m.len() != expected {
        return Err(NotA::WrongSize {
            len: m.len(),
            expected,
        });
    }
    m.copy_to_slice(bytemuck::bytes_of_mut(v));
    Ok(())
}

/// The answer of a `try_*` receive for what a wait-less [`Consumer::drain_with`] returned:
/// its "nothing" is `Empty`.
fn try_answer(b: Blocked<RecvError>) -> TryRecvError {
    match b {
        Blocked::Timeout => TryRecvError::Empty,
        Blocked::Failed(e) => TryRecvError::Failed(e),
    }
}

impl Consumer {
    /// Receive one message into a `T` (copied into place, not moved through the layers),
    /// waiting as `wait` says. Nothing there is `Blocked::Timeout`, whether or not it waited.
    #[inline(always)]
    fn recv_pod<T: Pod>(
        &mut self,
        wait: Option<Option<Duration>>,
    ) -> Result<Result<T, NotA>, Blocked<RecvError>> {
        let mut v = T::zeroed();
        let mut got = None;
        self.drain_with(1, wait, |m, _| {
            got = Some(pod_into(m, &mut v));
            true
        })?;
        match got {
            Some(Ok(())) => Ok(Ok(v)),
            Some(Err(e)) => Ok(Err(e)),
            None => Err(Blocked::Timeout),
        }
    }

    /// Receive the next message as a `T` if there is one now.
    ///
    /// # Errors
    ///
    /// [`RecvValueError::WrongSize`] if the message is not `size_of::<T>()` bytes (it is
    /// consumed); otherwise the answer of [`Consumer::try_recv`] (`Empty`, or a failure that
    /// will not go away), as [`RecvValueError::Recv`].
    #[inline]
    pub fn try_recv_value<T: Pod>(&mut self) -> Result<T, RecvValueError<TryRecvError>> {
        match self.recv_pod(None) {
            Ok(r) => r.map_err(NotA::into_err),
            Err(b) => Err(try_answer(b).into()),
        }
    }

    /// Receive the next message as a `T`, waiting as long as it takes.
    ///
    /// # Errors
    ///
    /// [`RecvValueError::WrongSize`] (the message is consumed), or the [`RecvError`] of
    /// [`Consumer::recv`].
    #[inline]
    pub fn recv_value<T: Pod>(&mut self) -> Result<T, RecvValueError<RecvError>> {
        match self.recv_pod(Some(None)) {
            Ok(r) => r.map_err(NotA::into_err),
            Err(b) => Err(never_timeout(b).into()),
        }
    }

    /// Receive the next message as a `T`, waiting at most `timeout`.
    ///
    /// # Errors
    ///
    /// [`RecvValueError::WrongSize`] (the message is consumed), or the answer of
    /// [`Consumer::recv_timeout`].
    pub fn recv_value_timeout<T: Pod>(
        &mut self,
        timeout: Duration,
    ) -> Result<T, RecvValueError<RecvTimeoutError>> {
        match self.recv_pod(Some(Some(timeout))) {
            Ok(r) => r.map_err(NotA::into_err),
            Err(b) => Err(RecvTimeoutError::from(b).into()),
        }
    }

    /// Hand each available message (up to `max`) to `f` as a `T` copied out of the ring,
    /// releasing their space with one index store, as [`Consumer::try_drain`] does. Returns
    /// how many were handed over.
    ///
    /// # Errors
    ///
    /// A message of the wrong size ends the batch: the values before it have been handed to
    /// `f`, it is consumed, and the call returns [`RecvValueError::WrongSize`]; the messages
    /// after it stay in the ring for the next call. Otherwise as for [`Consumer::try_drain`]
    /// (`Empty` if there was nothing), as [`RecvValueError::Recv`].
    #[inline]
    pub fn try_drain_values<T: Pod>(
        &mut self,
        max: usize,
        mut f: impl FnMut(T),
    ) -> Result<usize, RecvValueError<TryRecvError>> {
        if max == 0 {
            return Ok(0);
        }
        let mut bad = None;
        let mut v = T::zeroed();
        let n = self
            .drain_with(max, None, |m, _| match pod_into(m, &mut v) {
                Ok(()) => {
                    f(v);
                    true
                }
                Err(e) => {
                    bad = Some(e);
                    false
                }
            })
            .map_err(try_answer)?;
        match (n, bad) {
            (_, Some(e)) => Err(e.into_err()),
            (0, None) => Err(TryRecvError::Empty.into()),
            (n, None) => Ok(n),
        }
    }
}

#[cfg(feature = "serde")]
mod serde_codec {
    use serde::Serialize;
    use serde::de::DeserializeOwned;

    use super::*;
    use crate::error::SendSerdeError;

    /// Encode `value` into `buf` (emptied first; its allocation is kept). On an encoding
    /// error `buf` loses its allocation, nothing else.
    fn encode<T: Serialize + ?Sized>(buf: &mut Vec<u8>, value: &T) -> postcard::Result<()> {
        let mut v = std::mem::take(buf);
        v.clear();
        *buf = postcard::to_extend(value, v)?;
        Ok(())
    }

    /// Decode a message, copied out of the ring into `scratch` first (a hostile producer can
    /// change the ring's bytes during a decode, but not the copy's), as exactly one `T`.
    fn decode<T: DeserializeOwned>(m: Message<'_>, scratch: &mut Vec<u8>) -> Result<T, NotA> {
        m.read_to_vec(scratch);
        let len = scratch.len();
        match postcard::take_from_bytes::<T>(scratch) {
            Ok((v, [])) => Ok(v),
            Ok(_) => Err(NotA::Decode {
                len,
                source: postcard::Error::DeserializeBadEncoding,
            }),
            Err(source) => Err(NotA::Decode { len, source }),
        }
    }

    impl Producer {
        /// Encode `value` with postcard into a buffer this producer keeps, and send it as one
        /// message, waiting for room as long as it takes.
        ///
        /// # Errors
        ///
        /// [`SendSerdeError::Encode`] if it does not encode; otherwise the [`SendError`] of
        /// [`Producer::send`] (`TooLarge` if the encoding is longer than the maximum message)
        /// as [`SendSerdeError::Send`]. Nothing is sent on an error.
        pub fn send_serde<T: Serialize + ?Sized>(
            &mut self,
            value: &T,
        ) -> Result<(), SendSerdeError<SendError>> {
            encode(&mut self.scratch, value).map_err(SendSerdeError::Encode)?;
            let buf = std::mem::take(&mut self.scratch);
            let r = self.send(&buf);
            self.scratch = buf;
            Ok(r?)
        }

        /// [`Producer::send_serde`] if there is room now.
        ///
        /// # Errors
        ///
        /// As for [`Producer::send_serde`], with the answer of [`Producer::try_send`]
        /// (`Full`: nothing was sent).
        pub fn try_send_serde<T: Serialize + ?Sized>(
            &mut self,
            value: &T,
        ) -> Result<(), SendSerdeError<TrySendError>> {
            encode(&mut self.scratch, value).map_err(SendSerdeError::Encode)?;
            let buf = std::mem::take(&mut self.scratch);
            let r = self.try_send(&buf);
            self.scratch = buf;
            Ok(r?)
        }
    }

    impl Consumer {
        /// Receive one message and make it a `T` with `decode`, waiting as `wait` says (see
        /// [`Consumer::drain_with`]). Nothing there is `Blocked::Timeout`, waited or not.
        #[inline(always)]
        fn recv_with<T>(
            &mut self,
            wait: Option<Option<Duration>>,
            mut decode: impl FnMut(Message<'_>, &mut Vec<u8>) -> Result<T, NotA>,
        ) -> Result<Result<T, NotA>, Blocked<RecvError>> {
            let mut out = None;
            self.drain_with(1, wait, |m, scratch| {
                out = Some(decode(m, scratch));
                true
            })?;
            out.ok_or(Blocked::Timeout)
        }

        /// Receive the next message and decode it as a `T` (postcard), waiting as long as it
        /// takes.
        ///
        /// # Errors
        ///
        /// [`RecvValueError::Decode`] if the message is not one encoded `T` (it is consumed),
        /// or the [`RecvError`] of [`Consumer::recv`].
        pub fn recv_serde<T: DeserializeOwned>(&mut self) -> Result<T, RecvValueError<RecvError>> {
            match self.recv_with(Some(None), decode) {
                Ok(r) => r.map_err(NotA::into_err),
                Err(b) => Err(never_timeout(b).into()),
            }
        }

        /// Receive the next message and decode it as a `T` if there is one now.
        ///
        /// # Errors
        ///
        /// [`RecvValueError::Decode`] (the message is consumed), or the answer of
        /// [`Consumer::try_recv`].
        pub fn try_recv_serde<T: DeserializeOwned>(
            &mut self,
        ) -> Result<T, RecvValueError<TryRecvError>> {
            match self.recv_with(None, decode) {
                Ok(r) => r.map_err(NotA::into_err),
                Err(b) => Err(try_answer(b).into()),
            }
        }

        /// Receive the next message and decode it as a `T`, waiting at most `timeout`.
        ///
        /// # Errors
        ///
        /// [`RecvValueError::Decode`] (the message is consumed), or the answer of
        /// [`Consumer::recv_timeout`].
        pub fn recv_serde_timeout<T: DeserializeOwned>(
            &mut self,
            timeout: Duration,
        ) -> Result<T, RecvValueError<RecvTimeoutError>> {
            match self.recv_with(Some(Some(timeout)), decode) {
                Ok(r) => r.map_err(NotA::into_err),
                Err(b) => Err(RecvTimeoutError::from(b).into()),
            }
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    //! The typed layer's own paths (under miri, over a heap ring): the copies in and out, the
    //! size check, and the early end of a drain at a wrong-sized message. Nothing here blocks.

    use bytemuck::{Pod, Zeroable};

    use crate::error::{RecvValueError, TryRecvError};
    use crate::{Config, channel};

    #[derive(Debug, Clone, Copy, PartialEq, Pod, Zeroable)]
    #[repr(C, align(16))]
    struct Wide {
        a: u64,
        b: u32,
        c: u16,
        d: u8,
        e: u8,
    }

    fn pair() -> (crate::Producer, crate::Consumer) {
        channel(&Config::new().capacity(4096)).expect("ring")
    }

    #[test]
    fn typed_values_round_trip_and_wrong_sizes_are_consumed() {
        let (mut tx, mut rx) = pair();
        let w = Wide {
            a: u64::MAX - 1,
            b: 7,
            c: 9,
            d: 1,
            e: 2,
        };
        tx.try_send_value(&w).unwrap();
        tx.try_send(b"short").unwrap();
        let mut g = tx.try_reserve_value::<Wide>().unwrap();
        g.write(&w);
        g.write_at(std::mem::offset_of!(Wide, b), &8u32);
        g.commit().unwrap();
        assert_eq!(rx.try_recv_value::<Wide>().unwrap(), w);
        assert!(matches!(
            rx.try_recv_value::<Wide>(),
            Err(RecvValueError::WrongSize {
                len: 5,
                expected: 16
            })
        ));
        assert_eq!(rx.try_recv_value::<Wide>().unwrap(), Wide { b: 8, ..w });
        assert!(matches!(
            rx.try_recv_value::<Wide>(),
            Err(RecvValueError::Recv(TryRecvError::Empty))
        ));
    }

    #[test]
    fn typed_drain_stops_after_a_wrong_size() {
        let (mut tx, mut rx) = pair();
        for i in 0..3u64 {
            tx.try_send_value(&i).unwrap();
        }
        tx.try_send_value(&1u32).unwrap();
        tx.try_send_value(&3u64).unwrap();
        let mut got = Vec::new();
        let r = rx.try_drain_values::<u64>(10, |v| got.push(v));
        assert!(
            matches!(
                r,
                Err(RecvValueError::WrongSize {
                    len: 4,
                    expected: 8
                })
            ),
            "{r:?}"
        );
        assert_eq!(got, [0, 1, 2]);
        assert_eq!(rx.try_drain_values::<u64>(10, |v| got.push(v)).unwrap(), 1);
        assert_eq!(got, [0, 1, 2, 3]);
        assert_eq!(rx.stats().messages, 5);
    }
}
