//! A connection: one ring in each direction and the socket that says whether the peer lives.

use std::ops::{Deref, DerefMut};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use rustix::event::epoll;
use shmring_ring::{
    CloseError, Consumer, Message, Producer, RecvError, RecvTimeoutError, SendError, TryRecvError,
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
#[derive(Debug)]
pub struct Connection {
    sender: Sender,
    receiver: Receiver,
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
            receiver: Receiver {
                consumer,
                link,
                gone: false,
            },
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
}

impl AsFd for Connection {
    /// The peer watch: readable (or hung up) once the peer is gone, never before. It is the
    /// socket, or an epoll fd over the socket and a pidfd of the peer. Never read or write it.
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.sender.link.watch.as_fd()
    }
}

/// The sending half of a [`Connection`]: a [`Producer`] (all its methods are available through
/// `Deref`) whose blocking calls also watch the peer's liveness, and which keeps the socket
/// open.
///
/// # Readiness protocol for your own event loop
///
/// 1. `sender.arm(len)?`: `Ok(true)` means a `len`-byte message fits now; send it.
/// 2. On `Ok(false)`, wait until [`AsFd::as_fd`] (the waiter the consumer rings) or
///    [`peer_fd`](Sender::peer_fd) is readable, then go back to 1. `arm` fails with
///    [`SendError::PeerGone`] once the peer is gone.
///
/// The waiter is an epoll fd the peer made and still holds. Nothing it does to it can lose a
/// message or block `arm`, but it can keep it readable at no cost to itself: watch it
/// edge-triggered (`EPOLLET` in an epoll set of your own), or a level-triggered loop may be
/// made to spin.
#[derive(Debug)]
pub struct Sender {
    producer: Producer,
    link: Arc<Link>,
}

impl Sender {
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

    /// The fd that becomes readable (or hung up) when the peer is gone. Never read or write it.
    pub fn peer_fd(&self) -> BorrowedFd<'_> {
        self.link.watch.as_fd()
    }

    /// Who the peer is.
    pub fn peer(&self) -> PeerCredentials {
        self.link.peer
    }
}

impl Deref for Sender {
    type Target = Producer;
    fn deref(&self) -> &Producer {
        &self.producer
    }
}

impl DerefMut for Sender {
    fn deref_mut(&mut self) -> &mut Producer {
        &mut self.producer
    }
}

impl AsFd for Sender {
    /// The waiter the peer rings when it frees space (see the readiness protocol on
    /// [`Sender`]).
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.producer.as_fd()
    }
}

/// The receiving half of a [`Connection`]: a [`Consumer`] (all its methods are available
/// through `Deref`) whose blocking calls also watch the peer's liveness, and which keeps the
/// socket open.
///
/// Once the peer is gone, receives hand over every message it committed, then fail with
/// [`RecvError::PeerGone`] (or `Closed`, if it closed its sender first). Blocking calls notice
/// by themselves; the non-blocking `try_*` calls notice once [`arm`](Receiver::arm),
/// [`is_peer_gone`](Receiver::is_peer_gone) or a blocking call has seen it (so a spinning
/// `try_recv` costs no system call).
///
/// # Readiness protocol for your own event loop
///
/// 1. `receiver.arm()?`: `Ok(true)` means something is ready (a message, or the end of the
///    stream); call `try_recv`/`try_drain` until `Empty` or an error, then go back to 1.
/// 2. On `Ok(false)`, wait until [`AsFd::as_fd`] (the waiter the peer rings when it sends)
///    or [`peer_fd`](Receiver::peer_fd) is readable (level-triggered is correct: `arm`
///    harvests the waiter), then go back to 1.
///
/// The waiter is an epoll fd the peer made and still holds. Nothing it does to it can lose a
/// message or block `arm`, but it can keep it readable at no cost to itself: watch it
/// edge-triggered (`EPOLLET` in an epoll set of your own), or a level-triggered loop may be
/// made to spin. [`Selector`](crate::Selector) does exactly this, edge-triggered, for many
/// receivers.
#[derive(Debug)]
pub struct Receiver {
    consumer: Consumer,
    link: Arc<Link>,
    /// The peer watch fired: `Empty` from now on means `PeerGone`.
    gone: bool,
}

impl Receiver {
    /// Arm for an external event loop (see the type's docs): harvest old wake-ups, announce
    /// that we wait, and report whether a message or the end of the stream is ready.
    /// If the peer is gone, returns `Ok(true)` so that the next `try_*` call drains what is
    /// left and then reports [`RecvError::PeerGone`].
    ///
    /// # Errors
    ///
    /// As for [`Consumer::arm`].
    pub fn arm(&mut self) -> Result<bool, RecvError> {
        if self.arm_quiet()? {
            return Ok(true);
        }
        if self.link.fired() {
            self.gone = true;
            return Ok(true);
        }
        Ok(false)
    }

    /// `arm` without looking at the peer watch: the selector looks only when its epoll set
    /// says the watch fired.
    pub(crate) fn arm_quiet(&mut self) -> Result<bool, RecvError> {
        Ok(self.consumer.arm()? || self.gone)
    }

    pub(crate) fn mark_gone(&mut self) {
        self.gone = true;
    }

    fn empty(&self) -> TryRecvError {
        if self.gone {
            TryRecvError::Failed(RecvError::PeerGone)
        } else {
            TryRecvError::Empty
        }
    }

    /// Note what a blocking call found: once it has said `PeerGone`, so do the `try_*` calls.
    fn seen<T, E>(&mut self, r: Result<T, E>, gone: impl FnOnce(&E) -> bool) -> Result<T, E> {
        if let Err(e) = &r {
            if gone(e) {
                self.gone = true;
            }
        }
        r
    }

    /// [`Consumer::recv`]; once it has returned [`RecvError::PeerGone`], the `try_*` calls
    /// report it too instead of `Empty`.
    ///
    /// # Errors
    ///
    /// As for [`Consumer::recv`].
    pub fn recv(&mut self, buf: &mut Vec<u8>) -> Result<usize, RecvError> {
        let r = self.consumer.recv(buf);
        self.seen(r, |e| matches!(e, RecvError::PeerGone))
    }

    /// [`Consumer::recv_timeout`], remembering `PeerGone` as [`Receiver::recv`] does.
    ///
    /// # Errors
    ///
    /// As for [`Consumer::recv_timeout`].
    pub fn recv_timeout(
        &mut self,
        buf: &mut Vec<u8>,
        timeout: Duration,
    ) -> Result<usize, RecvTimeoutError> {
        let r = self.consumer.recv_timeout(buf, timeout);
        self.seen(r, |e| {
            matches!(e, RecvTimeoutError::Failed(RecvError::PeerGone))
        })
    }

    /// [`Consumer::drain`], remembering `PeerGone` as [`Receiver::recv`] does.
    ///
    /// # Errors
    ///
    /// As for [`Consumer::drain`].
    pub fn drain(&mut self, max: usize, f: impl FnMut(&[u8])) -> Result<usize, RecvError> {
        let r = self.consumer.drain(max, f);
        self.seen(r, |e| matches!(e, RecvError::PeerGone))
    }

    /// [`Consumer::drain_timeout`], remembering `PeerGone` as [`Receiver::recv`] does.
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
        let r = self.consumer.drain_timeout(max, timeout, f);
        self.seen(r, |e| {
            matches!(e, RecvTimeoutError::Failed(RecvError::PeerGone))
        })
    }

    /// [`Consumer::try_recv`], reporting [`RecvError::PeerGone`] instead of `Empty` once the
    /// peer is known to be gone and everything it sent was received.
    ///
    /// # Errors
    ///
    /// As for [`Consumer::try_recv`].
    pub fn try_recv(&mut self, buf: &mut Vec<u8>) -> Result<usize, TryRecvError> {
        match self.consumer.try_recv(buf) {
            Err(TryRecvError::Empty) => Err(self.empty()),
            r => r,
        }
    }

    /// [`Consumer::try_drain`], with `PeerGone` as for [`Receiver::try_recv`].
    ///
    /// # Errors
    ///
    /// As for [`Consumer::try_drain`].
    pub fn try_drain(&mut self, max: usize, f: impl FnMut(&[u8])) -> Result<usize, TryRecvError> {
        match self.consumer.try_drain(max, f) {
            Err(TryRecvError::Empty) => Err(self.empty()),
            r => r,
        }
    }

    /// [`Consumer::try_drain_views`], with `PeerGone` as for [`Receiver::try_recv`].
    ///
    /// # Errors
    ///
    /// As for [`Consumer::try_drain_views`].
    pub fn try_drain_views(
        &mut self,
        max: usize,
        f: impl FnMut(Message<'_>),
    ) -> Result<usize, TryRecvError> {
        match self.consumer.try_drain_views(max, f) {
            Err(TryRecvError::Empty) => Err(self.empty()),
            r => r,
        }
    }

    /// True once the peer is gone (socket hung up, or its process exited). One `poll`; from
    /// then on the `try_*` calls report `PeerGone` after the last message.
    pub fn is_peer_gone(&mut self) -> bool {
        if !self.gone && self.link.fired() {
            self.gone = true;
        }
        self.gone
    }

    /// The fd that becomes readable (or hung up) when the peer is gone. Never read or write it.
    pub fn peer_fd(&self) -> BorrowedFd<'_> {
        self.link.watch.as_fd()
    }

    /// Who the peer is.
    pub fn peer(&self) -> PeerCredentials {
        self.link.peer
    }
}

impl Deref for Receiver {
    type Target = Consumer;
    fn deref(&self) -> &Consumer {
        &self.consumer
    }
}

impl DerefMut for Receiver {
    fn deref_mut(&mut self) -> &mut Consumer {
        &mut self.consumer
    }
}

impl AsFd for Receiver {
    /// The waiter the peer rings when it sends (see the readiness protocol on [`Receiver`]).
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.consumer.as_fd()
    }
}
