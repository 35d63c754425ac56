//! A connection: one ring in each direction and the socket that says whether the peer lives.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use rustix::event::epoll;
#[cfg(feature = "serde")]
use shmpipe_ring::SendSerdeError;
use shmpipe_ring::bytemuck::{NoUninit, Pod};
use shmpipe_ring::{
    Batch, CloseError, Consumer, ConsumerStats, Grant, Message, Producer, ProducerStats, RecvError,
    RecvTimeoutError, RecvValueError, SendError, SendTimeoutError, TryRecvError, TrySendError,
    ValueGrant, WaitStrategy,
};

use crate::error::HandshakeError;
use crate::options::PeerCredentials;
use crate::sock;

/// What tells us the peer is gone: the socket (never written after the handshake, so
/// readable only at hang-up) and, where the peer's pid is visible, a pidfd (readable when the
/// process exits, even if a forked child keeps the socket open). With both, `watch` is an
/// epoll fd over the two, readable as soon as either is.
#[derive(Debug)]
struct Link {
    /// Declared first so it is closed before the fds it watches.
    watch: Arc<OwnedFd>,
    _socket: Arc<OwnedFd>,
    _pidfd: Option<OwnedFd>,
    peer: PeerCredentials,
}

impl Link {
    fn new(socket: OwnedFd, pidfd: Option<OwnedFd>, peer: PeerCredentials) -> Link {
        let socket = Arc::new(socket);
        let watch = pidfd.as_ref().and_then(|p| both(&socket, p).ok());
        Link {
            // Without the epoll (out of fds or memory), the socket alone still tells.
            watch: watch.map_or_else(|| socket.clone(), Arc::new),
            _socket: socket,
            _pidfd: pidfd,
            peer,
        }
    }

    fn fired(&self) -> bool {
        sock::fired(self.watch.as_fd())
    }
}

/// An epoll fd that is readable as soon as the socket or the pidfd is.
fn both(socket: &OwnedFd, pidfd: &OwnedFd) -> rustix::io::Result<OwnedFd> {
    let ep = epoll::create(epoll::CreateFlags::CLOEXEC)?;
    let gone = epoll::EventFlags::IN | epoll::EventFlags::RDHUP;
    epoll::add(&ep, socket, epoll::EventData::new_u64(0), gone)?;
    epoll::add(&ep, pidfd, epoll::EventData::new_u64(1), gone)?;
    Ok(ep)
}

/// A duplex shared-memory connection to one peer process: a [`Sender`] on the ring this side
/// created, a [`Receiver`] on the ring the peer created. [`split`](Connection::split) them to
/// use each from its own thread.
///
/// Nothing crosses the socket after the handshake; it stays open to tell each side when the
/// other is gone. Dropping both halves closes it.
///
/// A connection has no fd of its own to poll: each half has one ([`AsFd`] on [`Sender`] and
/// [`Receiver`]), and each covers the peer's death as well as the ring's wake-ups. To wait on
/// both halves from one thread, put the whole connection into a
/// [`Selector`](crate::Selector) ([`insert_connection`](crate::Selector::insert_connection)),
/// or both fds into your own event loop.
#[derive(Debug)]
pub struct Connection {
    pub(crate) sender: Sender,
    pub(crate) receiver: Receiver,
}

impl Connection {
    pub(crate) fn new(
        socket: OwnedFd,
        pidfd: Option<OwnedFd>,
        peer: PeerCredentials,
        mut producer: Producer,
        mut consumer: Consumer,
    ) -> Result<Connection, HandshakeError> {
        let link = Arc::new(Link::new(socket, pidfd, peer));
        let watch = |e| HandshakeError::Io {
            op: "epoll_ctl (peer watch)",
            source: e,
        };
        producer
            .watch_peer(Some(link.watch.clone()))
            .map_err(watch)?;
        consumer
            .watch_peer(Some(link.watch.clone()))
            .map_err(watch)?;
        Ok(Connection {
            sender: Sender {
                producer,
                link: link.clone(),
            },
            receiver: Receiver { consumer, link },
        })
    }

    /// The two halves, to move to different threads.
    pub fn split(self) -> (Sender, Receiver) {
        (self.sender, self.receiver)
    }

    /// The sending half.
    pub fn sender(&mut self) -> &mut Sender {
        &mut self.sender
    }

    /// The receiving half.
    pub fn receiver(&mut self) -> &mut Receiver {
        &mut self.receiver
    }

    /// Send one message, waiting for room as long as it takes (see [`Producer::send`]).
    ///
    /// # Errors
    ///
    /// As for [`Producer::send`]; [`SendError::PeerGone`] if the peer dies meanwhile.
    pub fn send(&mut self, msg: &[u8]) -> Result<(), SendError> {
        self.sender.send(msg)
    }

    /// Receive one message into `buf`, waiting as long as it takes (see [`Consumer::recv`]).
    ///
    /// # Errors
    ///
    /// As for [`Consumer::recv`]: `Closed` or `PeerGone` once everything the peer committed
    /// has been received.
    pub fn recv(&mut self, buf: &mut Vec<u8>) -> Result<usize, RecvError> {
        self.receiver.recv(buf)
    }

    /// Who the peer is (`SO_PEERCRED` at connect time).
    pub fn peer(&self) -> PeerCredentials {
        self.sender.link.peer
    }

    /// The peer watch alone: readable (or hung up) once the peer is gone, never before. It is
    /// the socket, or an epoll fd over the socket and a pidfd of the peer. Never read or write
    /// it. Optional: each half's [`AsFd::as_fd`] already covers the peer's death.
    pub fn peer_fd(&self) -> BorrowedFd<'_> {
        self.sender.link.watch.as_fd()
    }
}

/// The sending half of a [`Connection`]: the producer of the ring this side created, whose
/// blocking calls also watch the peer's liveness, and which keeps the socket open.
///
/// # Readiness protocol for your own event loop
///
/// Poll one fd: [`AsFd::as_fd`] (the same fd as [`waiter_fd`](Sender::waiter_fd)), for
/// readability. It is an epoll instance of this handle's own, which watches the bell the
/// consumer rings when it frees space (edge-triggered) and the connection's peer watch
/// (level-triggered), so it becomes readable when there may be room and when the peer is gone.
///
/// 1. `sender.arm(len)?`: `Ok(true)` means a `len`-byte message fits now; send it
///    ([`try_send`](Sender::try_send) succeeds). `Err(`[`SendError::PeerGone`]`)` once the
///    peer is gone; other errors as for `send`.
/// 2. On `Ok(false)`, wait until the fd is readable **or [`RECHECK`](crate::RECHECK) (100 ms)
///    has passed**, then go back to 1 (or try the send first: a `Full` answer sends you back
///    to 1). The fd is a hint: a wake-up can be lost on its way through the nested epoll
///    instances (see `RECHECK`), and the timeout bounds what that costs.
///
/// Arm before **every** wait: `arm` announces in shared memory that this side waits, which is
/// what makes the consumer ring; without it the fd may never become readable. `arm` also
/// harvests the fd, so level-triggered loops (`poll`, `epoll` without `EPOLLET`) work as
/// well as edge-triggered ones (`EPOLLET`, mio, tokio's `AsyncFd`). Register for readability
/// only (`EPOLLIN`; `Interest::READABLE` in mio and tokio). [`Selector`](crate::Selector)
/// does all this for you ([`Selector::want_send`](crate::Selector::want_send)), and so does
/// `shmpipe_handshake::tokio::Sender` (feature `tokio`).
///
/// Whatever the peer does to its bell, nothing can lose a wake-up or block `arm`; a peer that
/// rings without cause costs a spurious wake-up per ring, nothing more.
/// [`peer_fd`](Sender::peer_fd) exists for loops that want to watch the peer's death on its
/// own; you need not.
#[derive(Debug)]
pub struct Sender {
    producer: Producer,
    link: Arc<Link>,
}

impl Sender {
    /// Send `msg`, waiting for room as long as it takes ([`Producer::send`]).
    ///
    /// # Errors
    ///
    /// As for [`Producer::send`]; [`SendError::PeerGone`] if the peer dies meanwhile.
    #[inline]
    pub fn send(&mut self, msg: &[u8]) -> Result<(), SendError> {
        self.producer.send(msg)
    }

    /// Send `msg` if there is room now ([`Producer::try_send`]).
    ///
    /// # Errors
    ///
    /// As for [`Producer::try_send`].
    #[inline]
    pub fn try_send(&mut self, msg: &[u8]) -> Result<(), TrySendError> {
        self.producer.try_send(msg)
    }

    /// Send `msg`, waiting at most `timeout` for room ([`Producer::send_timeout`]).
    ///
    /// # Errors
    ///
    /// As for [`Producer::send_timeout`].
    pub fn send_timeout(&mut self, msg: &[u8], timeout: Duration) -> Result<(), SendTimeoutError> {
        self.producer.send_timeout(msg, timeout)
    }

    /// Send every message in order, publishing them in batches ([`Producer::send_all`]).
    ///
    /// # Errors
    ///
    /// As for [`Producer::send_all`].
    pub fn send_all<M: AsRef<[u8]>>(&mut self, msgs: &[M]) -> Result<(), SendError> {
        self.producer.send_all(msgs)
    }

    /// Stage several messages and publish them with one store ([`Producer::batch`]).
    pub fn batch(&mut self) -> Batch<'_> {
        self.producer.batch()
    }

    /// Reserve room to write a message in place, if there is room now
    /// ([`Producer::try_reserve`]).
    ///
    /// # Errors
    ///
    /// As for [`Producer::try_reserve`].
    pub fn try_reserve(&mut self, len: usize) -> Result<Grant<'_>, TrySendError> {
        self.producer.try_reserve(len)
    }

    /// Reserve room to write a message in place, waiting as long as it takes
    /// ([`Producer::reserve`]).
    ///
    /// # Errors
    ///
    /// As for [`Producer::reserve`].
    pub fn reserve(&mut self, len: usize) -> Result<Grant<'_>, SendError> {
        self.producer.reserve(len)
    }

    /// Reserve room to write a message in place, waiting at most `timeout`
    /// ([`Producer::reserve_timeout`]).
    ///
    /// # Errors
    ///
    /// As for [`Producer::reserve_timeout`].
    pub fn reserve_timeout(
        &mut self,
        len: usize,
        timeout: Duration,
    ) -> Result<Grant<'_>, SendTimeoutError> {
        self.producer.reserve_timeout(len, timeout)
    }

    /// Send `value` as its bytes, waiting for room as long as it takes
    /// ([`Producer::send_value`]).
    ///
    /// # Errors
    ///
    /// As for [`Producer::send_value`]; [`SendError::PeerGone`] if the peer dies meanwhile.
    #[inline]
    pub fn send_value<T: NoUninit>(&mut self, value: &T) -> Result<(), SendError> {
        self.producer.send_value(value)
    }

    /// Send `value` as its bytes if there is room now ([`Producer::try_send_value`]).
    ///
    /// # Errors
    ///
    /// As for [`Producer::try_send_value`].
    #[inline]
    pub fn try_send_value<T: NoUninit>(&mut self, value: &T) -> Result<(), TrySendError> {
        self.producer.try_send_value(value)
    }

    /// Send `value` as its bytes, waiting at most `timeout` for room
    /// ([`Producer::send_value_timeout`]).
    ///
    /// # Errors
    ///
    /// As for [`Producer::send_value_timeout`].
    pub fn send_value_timeout<T: NoUninit>(
        &mut self,
        value: &T,
        timeout: Duration,
    ) -> Result<(), SendTimeoutError> {
        self.producer.send_value_timeout(value, timeout)
    }

    /// Reserve room for one `T` to write in place, waiting as long as it takes
    /// ([`Producer::reserve_value`]).
    ///
    /// # Errors
    ///
    /// As for [`Producer::reserve_value`].
    pub fn reserve_value<T: NoUninit>(&mut self) -> Result<ValueGrant<'_, T>, SendError> {
        self.producer.reserve_value()
    }

    /// Reserve room for one `T` to write in place, if there is room now
    /// ([`Producer::try_reserve_value`]).
    ///
    /// # Errors
    ///
    /// As for [`Producer::try_reserve_value`].
    pub fn try_reserve_value<T: NoUninit>(&mut self) -> Result<ValueGrant<'_, T>, TrySendError> {
        self.producer.try_reserve_value()
    }

    /// Encode `value` with postcard and send it, waiting for room as long as it takes
    /// ([`Producer::send_serde`]; feature `serde`).
    ///
    /// # Errors
    ///
    /// As for [`Producer::send_serde`].
    #[cfg(feature = "serde")]
    pub fn send_serde<T: serde::Serialize + ?Sized>(
        &mut self,
        value: &T,
    ) -> Result<(), SendSerdeError<SendError>> {
        self.producer.send_serde(value)
    }

    /// Encode `value` with postcard and send it if there is room now
    /// ([`Producer::try_send_serde`]; feature `serde`).
    ///
    /// # Errors
    ///
    /// As for [`Producer::try_send_serde`].
    #[cfg(feature = "serde")]
    pub fn try_send_serde<T: serde::Serialize + ?Sized>(
        &mut self,
        value: &T,
    ) -> Result<(), SendSerdeError<TrySendError>> {
        self.producer.try_send_serde(value)
    }

    /// Publish anything staged ([`Producer::flush`]).
    ///
    /// # Errors
    ///
    /// As for [`Producer::flush`].
    pub fn flush(&mut self) -> Result<(), SendError> {
        self.producer.flush()
    }

    /// Arm for an external event loop (see the type's docs): harvest old wake-ups, announce
    /// that we wait, and report whether a `len`-byte message fits.
    ///
    /// # Errors
    ///
    /// As for [`Producer::arm`], and [`SendError::PeerGone`] if the peer is gone.
    pub fn arm(&mut self, len: usize) -> Result<bool, SendError> {
        if self.producer.arm(len)? {
            return Ok(true);
        }
        if self.link.fired() {
            return Err(SendError::PeerGone);
        }
        Ok(false)
    }

    /// Close the ring and wait at most `timeout` until the peer has consumed everything
    /// (see [`Producer::close`]). `Ok` means every message sent was received.
    ///
    /// # Errors
    ///
    /// As for [`Producer::close`]; `Unconsumed` if the peer died first.
    pub fn close(self, timeout: Duration) -> Result<(), CloseError> {
        self.producer.close(timeout)
    }

    /// True once the peer is gone (socket hung up, or its process exited). One `poll`.
    pub fn is_peer_gone(&self) -> bool {
        self.link.fired()
    }

    /// The peer watch alone: readable (or hung up) once the peer is gone. Never read or write
    /// it. Optional: [`AsFd::as_fd`] already covers the peer's death.
    pub fn peer_fd(&self) -> BorrowedFd<'_> {
        self.link.watch.as_fd()
    }

    /// The fd to poll (the same as [`AsFd::as_fd`]): readable when the consumer may have freed
    /// space, or the peer is gone (see the readiness protocol).
    pub fn waiter_fd(&self) -> BorrowedFd<'_> {
        self.producer.as_fd()
    }

    /// Who the peer is.
    pub fn peer(&self) -> PeerCredentials {
        self.link.peer
    }

    /// Change how blocking calls wait ([`Producer::set_wait`]).
    pub fn set_wait(&mut self, wait: WaitStrategy) {
        self.producer.set_wait(wait);
    }

    /// Counters since the connection was made.
    pub fn stats(&self) -> ProducerStats {
        self.producer.stats()
    }

    /// Data capacity of the ring in bytes.
    pub fn capacity(&self) -> usize {
        self.producer.capacity()
    }

    /// Largest message in bytes.
    pub fn max_message(&self) -> usize {
        self.producer.max_message()
    }
}

impl AsFd for Sender {
    /// The one fd to poll: readable when the consumer may have freed space, or the peer is
    /// gone ([`Sender::waiter_fd`]; see the readiness protocol).
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.producer.as_fd()
    }
}

/// The receiving half of a [`Connection`]: the consumer of the ring the peer created, whose
/// blocking calls also watch the peer's liveness, and which keeps the socket open.
///
/// Once the peer is gone, receives hand over every message it committed, then fail with
/// [`RecvError::PeerGone`] (or `Closed`, if it closed its sender first). Blocking calls notice
/// by themselves; the non-blocking `try_*` calls notice once [`arm`](Receiver::arm),
/// [`is_peer_gone`](Receiver::is_peer_gone) or a blocking call has seen it (so a spinning
/// `try_recv` costs no system call). The consumer remembers it, whichever call saw it.
///
/// # Readiness protocol for your own event loop
///
/// Poll one fd: [`AsFd::as_fd`] (the same fd as [`waiter_fd`](Receiver::waiter_fd)), for
/// readability. It is an epoll instance of this handle's own, which watches the bell the
/// producer rings when it publishes (edge-triggered) and the connection's peer watch
/// (level-triggered), so it becomes readable when a message may have arrived and when the peer
/// is gone.
///
/// 1. `receiver.arm()?`: `Ok(true)` means something is ready (a message, the end of the
///    stream, or the peer's death); call `try_recv`/`try_drain` until `Empty` or an error,
///    then go back to 1. Once the peer is gone, they hand over every message it committed,
///    then fail with [`RecvError::PeerGone`].
/// 2. On `Ok(false)`, wait until the fd is readable **or [`RECHECK`](crate::RECHECK) (100 ms)
///    has passed**, then go back to 1 (or try a receive first: an `Empty` answer sends you
///    back to 1). The fd is a hint: a wake-up can be lost on its way through the nested epoll
///    instances (see `RECHECK`), and the timeout bounds what that costs.
///
/// Arm before **every** wait: `arm` announces in shared memory that this side waits, which is
/// what makes the producer ring; without it the fd may never become readable. `arm` also
/// harvests the fd, so level-triggered loops (`poll`, `epoll` without `EPOLLET`) work as
/// well as edge-triggered ones (`EPOLLET`, mio, tokio's `AsyncFd`). Register for readability
/// only (`EPOLLIN`; `Interest::READABLE` in mio and tokio). [`Selector`](crate::Selector)
/// does all this for many receivers, and so does `shmpipe_handshake::tokio::Receiver`
/// (feature `tokio`).
///
/// Whatever the peer does to its bell, nothing can lose a message or block `arm`; a peer that
/// rings without cause costs a spurious wake-up per ring, nothing more.
/// [`peer_fd`](Receiver::peer_fd) exists for loops that want to watch the peer's death on its
/// own; you need not.
#[derive(Debug)]
pub struct Receiver {
    pub(crate) consumer: Consumer,
    link: Arc<Link>,
}

impl Receiver {
    /// Receive the next message into `buf`, waiting as long as it takes
    /// ([`Consumer::recv`]).
    ///
    /// # Errors
    ///
    /// As for [`Consumer::recv`]: `Closed` or `PeerGone` once everything the peer committed
    /// has been received.
    #[inline]
    pub fn recv(&mut self, buf: &mut Vec<u8>) -> Result<usize, RecvError> {
        self.consumer.recv(buf)
    }

    /// Receive the next message into `buf` if there is one ([`Consumer::try_recv`]).
    ///
    /// # Errors
    ///
    /// As for [`Consumer::try_recv`].
    #[inline]
    pub fn try_recv(&mut self, buf: &mut Vec<u8>) -> Result<usize, TryRecvError> {
        self.consumer.try_recv(buf)
    }

    /// Receive the next message into `buf`, waiting at most `timeout`
    /// ([`Consumer::recv_timeout`]).
    ///
    /// # Errors
    ///
    /// As for [`Consumer::recv_timeout`].
    pub fn recv_timeout(
        &mut self,
        buf: &mut Vec<u8>,
        timeout: Duration,
    ) -> Result<usize, RecvTimeoutError> {
        self.consumer.recv_timeout(buf, timeout)
    }

    /// Hand up to `max` messages to `f` as private copies, waiting for the first
    /// ([`Consumer::drain`]).
    ///
    /// # Errors
    ///
    /// As for [`Consumer::drain`].
    #[inline]
    pub fn drain(&mut self, max: usize, f: impl FnMut(&[u8])) -> Result<usize, RecvError> {
        self.consumer.drain(max, f)
    }

    /// [`Receiver::drain`] without waiting ([`Consumer::try_drain`]).
    ///
    /// # Errors
    ///
    /// As for [`Consumer::try_drain`].
    #[inline]
    pub fn try_drain(&mut self, max: usize, f: impl FnMut(&[u8])) -> Result<usize, TryRecvError> {
        self.consumer.try_drain(max, f)
    }

    /// [`Receiver::drain`], waiting at most `timeout` for the first message
    /// ([`Consumer::drain_timeout`]).
    ///
    /// # Errors
    ///
    /// As for [`Consumer::drain_timeout`].
    pub fn drain_timeout(
        &mut self,
        max: usize,
        timeout: Duration,
        f: impl FnMut(&[u8]),
    ) -> Result<usize, RecvTimeoutError> {
        self.consumer.drain_timeout(max, timeout, f)
    }

    /// Zero-copy drain without waiting ([`Consumer::try_drain_views`]).
    ///
    /// # Errors
    ///
    /// As for [`Consumer::try_drain_views`].
    pub fn try_drain_views(
        &mut self,
        max: usize,
        f: impl FnMut(Message<'_>),
    ) -> Result<usize, TryRecvError> {
        self.consumer.try_drain_views(max, f)
    }

    /// Receive the next message as a `T`, waiting as long as it takes
    /// ([`Consumer::recv_value`]).
    ///
    /// # Errors
    ///
    /// As for [`Consumer::recv_value`]: `WrongSize` (the message is consumed), or `Closed` or
    /// `PeerGone` once everything the peer committed has been received.
    #[inline]
    pub fn recv_value<T: Pod>(&mut self) -> Result<T, RecvValueError<RecvError>> {
        self.consumer.recv_value()
    }

    /// Receive the next message as a `T` if there is one now ([`Consumer::try_recv_value`]).
    ///
    /// # Errors
    ///
    /// As for [`Consumer::try_recv_value`].
    #[inline]
    pub fn try_recv_value<T: Pod>(&mut self) -> Result<T, RecvValueError<TryRecvError>> {
        self.consumer.try_recv_value()
    }

    /// Receive the next message as a `T`, waiting at most `timeout`
    /// ([`Consumer::recv_value_timeout`]).
    ///
    /// # Errors
    ///
    /// As for [`Consumer::recv_value_timeout`].
    pub fn recv_value_timeout<T: Pod>(
        &mut self,
        timeout: Duration,
    ) -> Result<T, RecvValueError<RecvTimeoutError>> {
        self.consumer.recv_value_timeout(timeout)
    }

    /// Hand up to `max` available messages to `f` as `T`s, without waiting
    /// ([`Consumer::try_drain_values`]).
    ///
    /// # Errors
    ///
    /// As for [`Consumer::try_drain_values`].
    #[inline]
    pub fn try_drain_values<T: Pod>(
        &mut self,
        max: usize,
        f: impl FnMut(T),
    ) -> Result<usize, RecvValueError<TryRecvError>> {
        self.consumer.try_drain_values(max, f)
    }

    /// Receive the next message and decode it (postcard) as a `T`, waiting as long as it
    /// takes ([`Consumer::recv_serde`]; feature `serde`).
    ///
    /// # Errors
    ///
    /// As for [`Consumer::recv_serde`].
    #[cfg(feature = "serde")]
    pub fn recv_serde<T: serde::de::DeserializeOwned>(
        &mut self,
    ) -> Result<T, RecvValueError<RecvError>> {
        self.consumer.recv_serde()
    }

    /// Receive the next message and decode it as a `T` if there is one now
    /// ([`Consumer::try_recv_serde`]; feature `serde`).
    ///
    /// # Errors
    ///
    /// As for [`Consumer::try_recv_serde`].
    #[cfg(feature = "serde")]
    pub fn try_recv_serde<T: serde::de::DeserializeOwned>(
        &mut self,
    ) -> Result<T, RecvValueError<TryRecvError>> {
        self.consumer.try_recv_serde()
    }

    /// Receive the next message and decode it as a `T`, waiting at most `timeout`
    /// ([`Consumer::recv_serde_timeout`]; feature `serde`).
    ///
    /// # Errors
    ///
    /// As for [`Consumer::recv_serde_timeout`].
    #[cfg(feature = "serde")]
    pub fn recv_serde_timeout<T: serde::de::DeserializeOwned>(
        &mut self,
        timeout: Duration,
    ) -> Result<T, RecvValueError<RecvTimeoutError>> {
        self.consumer.recv_serde_timeout(timeout)
    }

    /// Arm for an external event loop (see the type's docs): harvest old wake-ups, announce
    /// that we wait, and report whether a message or the end of the stream is ready.
    /// If the peer is gone, returns `Ok(true)` so that the next `try_*` call drains what is
    /// left and then reports [`RecvError::PeerGone`].
    ///
    /// # Errors
    ///
    /// As for [`Consumer::arm`].
    pub fn arm(&mut self) -> Result<bool, RecvError> {
        Ok(self.consumer.arm()? || self.consumer.is_peer_gone())
    }

    /// True once the peer is gone (socket hung up, or its process exited); one `poll` until
    /// then. From then on the `try_*` calls report `PeerGone` after the last message.
    pub fn is_peer_gone(&mut self) -> bool {
        self.consumer.is_peer_gone()
    }

    /// The peer watch alone: readable (or hung up) once the peer is gone. Never read or write
    /// it. Optional: [`AsFd::as_fd`] already covers the peer's death.
    pub fn peer_fd(&self) -> BorrowedFd<'_> {
        self.link.watch.as_fd()
    }

    /// The fd to poll (the same as [`AsFd::as_fd`]): readable when a message may have arrived,
    /// or the peer is gone (see the readiness protocol).
    pub fn waiter_fd(&self) -> BorrowedFd<'_> {
        self.consumer.as_fd()
    }

    /// Who the peer is.
    pub fn peer(&self) -> PeerCredentials {
        self.link.peer
    }

    /// Change how blocking calls wait ([`Consumer::set_wait`]).
    pub fn set_wait(&mut self, wait: WaitStrategy) {
        self.consumer.set_wait(wait);
    }

    /// Counters since the connection was made.
    pub fn stats(&self) -> ConsumerStats {
        self.consumer.stats()
    }

    /// Data capacity of the ring in bytes.
    pub fn capacity(&self) -> usize {
        self.consumer.capacity()
    }

    /// Largest message in bytes.
    pub fn max_message(&self) -> usize {
        self.consumer.max_message()
    }
}

impl AsFd for Receiver {
    /// The one fd to poll: readable when a message may have arrived, or the peer is gone
    /// ([`Receiver::waiter_fd`]; see the readiness protocol).
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.consumer.as_fd()
    }
}
