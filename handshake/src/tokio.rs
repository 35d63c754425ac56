//! shmpipe in a tokio service (feature `tokio`): [`Listener`], [`connect`], [`Connection`],
//! [`Sender`] and [`Receiver`], whose waits are `.await`s on tokio's reactor instead of
//! blocked threads.
//!
//! They are the blocking types of this crate in a [`tokio::io::unix::AsyncFd`] over the one fd
//! of each handle, driven by its readiness protocol (the docs of [`crate::Sender`] and
//! [`crate::Receiver`]): try; if the ring is full (or empty), `arm`, which announces in shared
//! memory that this side waits, so the peer rings its bell; await readability of the handle's
//! fd; try again. A message costs no system call and no `.await` that yields while the peer
//! keeps up; the reactor is involved only when a side would otherwise block. The errors are the
//! blocking API's: [`RecvError::Closed`] and [`RecvError::PeerGone`] once everything the
//! peer committed was received, [`SendError::PeerGone`], `Corrupted`, and so on.
//!
//! The handshake is the blocking API's state machine (docs/protocol.md §2.5) driven by the
//! reactor: [`connect`] never blocks a worker thread, and its deadline
//! ([`Options::handshake_timeout`]) runs on tokio's clock. [`Listener::accept`] drives every
//! client's handshake side by side, as [`crate::Listener`] does; their deadlines are kept by
//! the listener's own timer on `CLOCK_MONOTONIC`, the clock tokio reads (they do not follow
//! `tokio::time::pause`).
//!
//! Every type needs a tokio runtime with its reactor (IO enabled): create and use them inside
//! one. Which `.await`s may be cancelled is said on each (`# Cancel safety`).
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use shmpipe_handshake::Options;
//! use shmpipe_handshake::tokio::{Listener, connect};
//!
//! let mut listener = Listener::bind("/tmp/demo.sock", &Options::new())?;
//! tokio::spawn(async move {
//!     while let Ok(conn) = listener.accept().await {
//!         tokio::spawn(async move {
//!             let (mut tx, mut rx) = conn.split();
//!             let mut buf = Vec::new();
//!             while rx.recv(&mut buf).await.is_ok() {
//!                 if tx.send(&buf).await.is_err() {
//!                     break;
//!                 }
//!             }
//!         });
//!     }
//! });
//! let mut conn = connect("/tmp/demo.sock", &Options::new()).await?;
//! conn.send(b"ping").await?;
//! let mut reply = Vec::new();
//! conn.recv(&mut reply).await?;
//! assert_eq!(reply, b"ping");
//! # Ok(())
//! # }
//! ```

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::Path;
use std::time::Duration;

use ::tokio::io::Interest;
use ::tokio::io::unix::AsyncFd;
use ::tokio::time::Instant;
use rustix::io::Errno;
use rustix::net::SocketAddrUnix;
use shmpipe_ring::{
    CloseError, ConsumerStats, Grant, ProducerStats, RecvError, SendError, TryRecvError,
    TrySendError,
};

use crate::error::{AcceptError, BindError, ConnectError, HandshakeError};
use crate::handshake::{ClientHandshake, Progress};
use crate::options::{Options, PeerCredentials};
use crate::sock;

/// How many times `recv`, `drain`, `send` and `reserve` yield to the runtime, trying again
/// after each, before they park on the reactor (the default of
/// [`Receiver::set_yields`]/[`Sender::set_yields`]). A peer that keeps up publishes again
/// within a yield, and parking costs a barrier, a ring and a wake-up; a yield lets every other
/// ready task run first, so unlike the spin budget it never holds the worker thread.
pub const DEFAULT_YIELDS: u32 = 64;

/// A handle inside an `AsyncFd`: registered by the one fd of its readiness protocol.
#[derive(Debug)]
struct Fd<T>(T);

impl<T: AsFd> AsRawFd for Fd<T> {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

/// Register `handle`'s fd with tokio's reactor, for readability (a handle's fd never becomes
/// writable).
///
/// tokio 1.54 deprecated its safe constructors in favour of an `unsafe` one whose contract is
/// that the fd stays open and the same while registered (I/O safety); this crate forbids
/// `unsafe`, and keeps that contract by construction instead: the fd of a [`Fd`] is owned by
/// the handle inside, which never changes it, and no `&mut` to the handle is ever handed out
/// (which would let a caller swap it for another), only `into_inner`, which deregisters first.
#[allow(deprecated)]
fn register<T: AsRawFd>(handle: T) -> io::Result<AsyncFd<T>> {
    AsyncFd::with_interest(handle, Interest::READABLE)
}

/// Run `attempt` until it yields a value or `budget` has passed (`Ok(None)`). Reads the clock
/// every 64 turns; a zero budget returns at once.
fn spin<T, E>(
    budget: Duration,
    mut attempt: impl FnMut() -> Result<Option<T>, E>,
) -> Result<Option<T>, E> {
    if budget.is_zero() {
        return Ok(None);
    }
    let start = std::time::Instant::now();
    let mut turns = 0u32;
    loop {
        std::hint::spin_loop();
        if let Some(v) = attempt()? {
            return Ok(Some(v));
        }
        turns = turns.wrapping_add(1);
        if turns % 64 == 0 && start.elapsed() >= budget {
            return Ok(None);
        }
    }
}

/// After an `arm` that found nothing: wait until the handle's fd is readable, or
/// [`RECHECK`](crate::RECHECK) has passed, whichever comes first; the caller then tries again
/// (and arms again).
///
/// A readiness left from an earlier wake-up may end the wait at once; it is cleared and the
/// caller tries, arms, and waits again. A ring after the `arm` is a new readiness event, which
/// `clear_ready` never clears. The timeout is the protocol's (docs/protocol.md §1.7): the fd
/// is a hint, not a promise. The reactor learns of a ring through two nested epoll instances
/// and checks, when it harvests the event, that the peer's bell still reads ready; a peer
/// that closes its bell right after ringing it (a producer dropped after its close), or that
/// harvests its own waiter, can make that check fail and the event vanish. Re-checking the
/// ring every 100 ms bounds what that costs to 100 ms, never a hang.
async fn wait_readable<T: AsRawFd>(io: &mut AsyncFd<T>) -> io::Result<()> {
    if let Ok(ready) = ::tokio::time::timeout(crate::RECHECK, io.readable_mut()).await {
        ready?.clear_ready();
    }
    Ok(())
}

fn recv_step<T>(r: Result<T, TryRecvError>) -> Result<Option<T>, RecvError> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(TryRecvError::Empty) => Ok(None),
        Err(TryRecvError::Failed(e)) => Err(e),
    }
}

fn send_step<T>(r: Result<T, TrySendError>) -> Result<Option<T>, SendError> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(TrySendError::Full) => Ok(None),
        Err(TrySendError::Failed(e)) => Err(e),
    }
}

/// The receiving half of a [`Connection`] on tokio: a [`crate::Receiver`] whose waits are
/// `.await`s.
///
/// Every message committed by the peer is delivered once, in order; then `recv` and `drain`
/// fail with the error that ended the stream ([`RecvError::Closed`] if the peer closed its
/// sender, [`RecvError::PeerGone`] if its process went away), and keep failing with it.
#[derive(Debug)]
pub struct Receiver {
    io: AsyncFd<Fd<crate::Receiver>>,
    spin: Duration,
    yields: u32,
}

impl Receiver {
    /// Put a blocking receiver on tokio's reactor.
    ///
    /// # Errors
    ///
    /// If registering its fd fails (`epoll_ctl`).
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime, or in one without IO enabled.
    pub fn new(rx: crate::Receiver) -> io::Result<Receiver> {
        Ok(Receiver {
            io: register(Fd(rx))?,
            spin: Duration::ZERO,
            yields: DEFAULT_YIELDS,
        })
    }

    /// Receive the next message into `buf` (replacing its contents), waiting for it without
    /// blocking the thread. Returns its length.
    ///
    /// # Errors
    ///
    /// As for [`crate::Receiver::recv`]: `Closed` or `PeerGone` once everything the peer
    /// committed has been received; `Corrupted`; `Io` if the reactor fails.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a message is taken from the ring only by the step that completes the
    /// future, so if it is dropped (in a `select!` branch that lost, say), no message was
    /// received and the next call gets the one this call would have got. `buf` may have been
    /// cleared or not; its contents are meaningful only after `Ok`.
    pub async fn recv(&mut self, buf: &mut Vec<u8>) -> Result<usize, RecvError> {
        let mut yields = self.yields;
        loop {
            if let Some(n) = recv_step(self.io.get_mut().0.try_recv(buf))? {
                return Ok(n);
            }
            let rx = &mut self.io.get_mut().0;
            if let Some(n) = spin(self.spin, || recv_step(rx.try_recv(buf)))? {
                return Ok(n);
            }
            if yields > 0 {
                yields -= 1;
                ::tokio::task::yield_now().await;
                continue;
            }
            self.park().await?;
        }
    }

    /// Hand up to `max` messages to `f`, each as a private copy, waiting for the first; then
    /// take whatever else is there without waiting. Returns how many were handed over.
    /// `Ok(0)` only for `max == 0`.
    ///
    /// # Errors
    ///
    /// As for [`Receiver::recv`]. An error after some messages ends the batch early and is
    /// reported by the next call.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: messages are handed to `f` only by the step that completes the future,
    /// each exactly once; if the future is dropped, `f` has seen none, and the next call
    /// hands them over.
    pub async fn drain(
        &mut self,
        max: usize,
        mut f: impl FnMut(&[u8]),
    ) -> Result<usize, RecvError> {
        if max == 0 {
            return Ok(0);
        }
        let mut yields = self.yields;
        loop {
            if let Some(n) = recv_step(self.io.get_mut().0.try_drain(max, &mut f))? {
                return Ok(n);
            }
            let rx = &mut self.io.get_mut().0;
            if let Some(n) = spin(self.spin, || recv_step(rx.try_drain(max, &mut f)))? {
                return Ok(n);
            }
            if yields > 0 {
                yields -= 1;
                ::tokio::task::yield_now().await;
                continue;
            }
            self.park().await?;
        }
    }

    /// Arm, and wait for the fd until a message (or the end) is there. Returns when a receive
    /// should be tried. After a wake-up it arms again rather than trying: an `arm` while still
    /// armed only harvests and re-checks, so a spurious wake-up or a re-check costs no barrier.
    async fn park(&mut self) -> Result<(), RecvError> {
        while !self.io.get_mut().0.arm()? {
            wait_readable(&mut self.io).await?;
        }
        Ok(())
    }

    /// Receive the next message into `buf` if there is one, without waiting
    /// ([`crate::Receiver::try_recv`]).
    ///
    /// # Errors
    ///
    /// As for [`crate::Receiver::try_recv`].
    pub fn try_recv(&mut self, buf: &mut Vec<u8>) -> Result<usize, TryRecvError> {
        self.io.get_mut().0.try_recv(buf)
    }

    /// [`Receiver::drain`] without waiting ([`crate::Receiver::try_drain`]).
    ///
    /// # Errors
    ///
    /// As for [`crate::Receiver::try_drain`].
    pub fn try_drain(&mut self, max: usize, f: impl FnMut(&[u8])) -> Result<usize, TryRecvError> {
        self.io.get_mut().0.try_drain(max, f)
    }

    /// Spin for up to `budget` (polling the ring, burning the thread) before parking the task
    /// on the reactor. Zero, the default, parks at once. A wake-up through the reactor costs
    /// a few microseconds; a latency-sensitive task on a thread of its own may trade CPU for
    /// them. Spinning blocks the worker thread, so other tasks on it wait meanwhile.
    pub fn set_spin(&mut self, budget: Duration) {
        self.spin = budget;
    }

    /// Yield to the runtime up to `n` times, trying again after each, before parking
    /// ([`DEFAULT_YIELDS`] unless set). Zero parks as soon as the ring is empty.
    pub fn set_yields(&mut self, n: u32) {
        self.yields = n;
    }

    /// True once the peer is gone (see [`crate::Receiver::is_peer_gone`]).
    pub fn is_peer_gone(&mut self) -> bool {
        self.io.get_mut().0.is_peer_gone()
    }

    /// Who the peer is.
    pub fn peer(&self) -> PeerCredentials {
        self.io.get_ref().0.peer()
    }

    /// Counters since the connection was made.
    pub fn stats(&self) -> ConsumerStats {
        self.io.get_ref().0.stats()
    }

    /// Data capacity of the ring in bytes.
    pub fn capacity(&self) -> usize {
        self.io.get_ref().0.capacity()
    }

    /// Largest message in bytes.
    pub fn max_message(&self) -> usize {
        self.io.get_ref().0.max_message()
    }

    /// Zero-copy drain without waiting ([`crate::Receiver::try_drain_views`]).
    ///
    /// # Errors
    ///
    /// As for [`crate::Receiver::try_drain_views`].
    pub fn try_drain_views(
        &mut self,
        max: usize,
        f: impl FnMut(shmpipe_ring::Message<'_>),
    ) -> Result<usize, TryRecvError> {
        self.io.get_mut().0.try_drain_views(max, f)
    }

    /// The blocking receiver inside.
    pub fn get_ref(&self) -> &crate::Receiver {
        &self.io.get_ref().0
    }

    /// Take the blocking receiver out of the reactor.
    pub fn into_inner(self) -> crate::Receiver {
        self.io.into_inner().0
    }
}

/// The sending half of a [`Connection`] on tokio: a [`crate::Sender`] whose waits for room are
/// `.await`s.
#[derive(Debug)]
pub struct Sender {
    io: AsyncFd<Fd<crate::Sender>>,
    spin: Duration,
    yields: u32,
}

impl Sender {
    /// Put a blocking sender on tokio's reactor.
    ///
    /// # Errors
    ///
    /// If registering its fd fails (`epoll_ctl`).
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime, or in one without IO enabled.
    pub fn new(tx: crate::Sender) -> io::Result<Sender> {
        Ok(Sender {
            io: register(Fd(tx))?,
            spin: Duration::ZERO,
            yields: DEFAULT_YIELDS,
        })
    }

    /// Send `msg`, waiting for room without blocking the thread. Returns once the message is
    /// published (not once it is read: see [`Sender::close`]).
    ///
    /// # Errors
    ///
    /// As for [`crate::Sender::send`]: `TooLarge` (nothing sent), `Closed` (the peer closed
    /// its receiver), `PeerGone`, `Corrupted`; `Io` if the reactor fails.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: the message is written and published in one step, the one that completes
    /// the future. If the future is dropped before it completed, nothing of `msg` was sent;
    /// send it again to send it.
    pub async fn send(&mut self, msg: &[u8]) -> Result<(), SendError> {
        let mut yields = self.yields;
        loop {
            if send_step(self.io.get_mut().0.try_send(msg))?.is_some() {
                return Ok(());
            }
            let tx = &mut self.io.get_mut().0;
            if spin(self.spin, || send_step(tx.try_send(msg)))?.is_some() {
                return Ok(());
            }
            if yields > 0 {
                yields -= 1;
                ::tokio::task::yield_now().await;
                continue;
            }
            self.park(msg.len()).await?;
        }
    }

    /// Reserve room for a `len`-byte message, waiting for it without blocking the thread, and
    /// get a [`Grant`] to write the message in place; [`Grant::commit`] publishes it, and a
    /// dropped grant gives the room back.
    ///
    /// # Errors
    ///
    /// As for [`Sender::send`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: if the future is dropped before it completed, nothing was reserved.
    pub async fn reserve(&mut self, len: usize) -> Result<Grant<'_>, SendError> {
        let mut yields = self.yields;
        loop {
            // A probe: the grant is dropped at once, which gives the room back (reserving
            // writes nothing). The grant returned is taken below, outside the loop.
            if send_step(self.io.get_mut().0.try_reserve(len).map(drop))?.is_some() {
                break;
            }
            let tx = &mut self.io.get_mut().0;
            if spin(self.spin, || send_step(tx.try_reserve(len).map(drop)))?.is_some() {
                break;
            }
            if yields > 0 {
                yields -= 1;
                ::tokio::task::yield_now().await;
                continue;
            }
            self.park(len).await?;
        }
        match self.io.get_mut().0.try_reserve(len) {
            Ok(grant) => Ok(grant),
            Err(TrySendError::Failed(e)) => Err(e),
            Err(TrySendError::Full) => unreachable!("the room found above is taken only here"),
        }
    }

    /// Arm for `len` bytes, and wait for the fd until they fit (or the peer is gone). Returns
    /// when a send should be tried. Arms again after a wake-up, as [`Receiver`] does.
    async fn park(&mut self, len: usize) -> Result<(), SendError> {
        while !self.io.get_mut().0.arm(len)? {
            wait_readable(&mut self.io).await?;
        }
        Ok(())
    }

    /// Send `msg` if there is room now ([`crate::Sender::try_send`]).
    ///
    /// # Errors
    ///
    /// As for [`crate::Sender::try_send`].
    pub fn try_send(&mut self, msg: &[u8]) -> Result<(), TrySendError> {
        self.io.get_mut().0.try_send(msg)
    }

    /// Reserve room for a message if there is room now ([`crate::Sender::try_reserve`]).
    ///
    /// # Errors
    ///
    /// As for [`crate::Sender::try_reserve`].
    pub fn try_reserve(&mut self, len: usize) -> Result<Grant<'_>, TrySendError> {
        self.io.get_mut().0.try_reserve(len)
    }

    /// Publish anything staged ([`crate::Sender::flush`]).
    ///
    /// # Errors
    ///
    /// As for [`crate::Sender::flush`].
    pub fn flush(&mut self) -> Result<(), SendError> {
        self.io.get_mut().0.flush()
    }

    /// Close the ring and wait at most `timeout` until the peer has consumed everything
    /// ([`crate::Sender::close`]). `Ok` means every message sent was received.
    ///
    /// The wait runs on tokio's blocking pool (`spawn_blocking`), sleeping on the handle's
    /// bell as the blocking `close` does, so it occupies a blocking thread for up to
    /// `timeout`, never a worker.
    ///
    /// # Errors
    ///
    /// As for [`crate::Sender::close`]: `Timeout` or `Unconsumed` with the bytes not
    /// consumed; the error that had already ended the sender; `Io` if the runtime shut down
    /// before the close ran.
    ///
    /// # Cancel safety
    ///
    /// The ring is closed whatever happens to the future: dropping it before its first poll
    /// drops the sender (which closes without waiting); dropping it later leaves the wait to
    /// finish on the blocking pool. Only the confirmation is lost.
    pub async fn close(self, timeout: Duration) -> Result<(), CloseError> {
        let tx = self.into_inner();
        match ::tokio::task::spawn_blocking(move || tx.close(timeout)).await {
            Ok(r) => r,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => Err(CloseError::Failed(SendError::Io(io::Error::other(
                "the runtime shut down before the close ran",
            )))),
        }
    }

    /// Spin for up to `budget` (polling the ring, burning the thread) before parking the task
    /// on the reactor. Zero, the default, parks at once. See [`Receiver::set_spin`].
    pub fn set_spin(&mut self, budget: Duration) {
        self.spin = budget;
    }

    /// Yield to the runtime up to `n` times, trying again after each, before parking
    /// ([`DEFAULT_YIELDS`] unless set). Zero parks as soon as the ring is full.
    pub fn set_yields(&mut self, n: u32) {
        self.yields = n;
    }

    /// True once the peer is gone (see [`crate::Sender::is_peer_gone`]).
    pub fn is_peer_gone(&self) -> bool {
        self.io.get_ref().0.is_peer_gone()
    }

    /// Who the peer is.
    pub fn peer(&self) -> PeerCredentials {
        self.io.get_ref().0.peer()
    }

    /// Counters since the connection was made.
    pub fn stats(&self) -> ProducerStats {
        self.io.get_ref().0.stats()
    }

    /// Data capacity of the ring in bytes.
    pub fn capacity(&self) -> usize {
        self.io.get_ref().0.capacity()
    }

    /// Largest message in bytes.
    pub fn max_message(&self) -> usize {
        self.io.get_ref().0.max_message()
    }

    /// Stage several messages and publish them with one store ([`crate::Sender::batch`]). From
    /// a task, stage with [`Batch::try_send`](shmpipe_ring::Batch::try_send) (on `Full`, drop
    /// the batch, which publishes, and `send(..).await` the message);
    /// [`Batch::send`](shmpipe_ring::Batch::send) would block the thread.
    pub fn batch(&mut self) -> shmpipe_ring::Batch<'_> {
        self.io.get_mut().0.batch()
    }

    /// The blocking sender inside.
    pub fn get_ref(&self) -> &crate::Sender {
        &self.io.get_ref().0
    }

    /// Take the blocking sender out of the reactor.
    pub fn into_inner(self) -> crate::Sender {
        self.io.into_inner().0
    }
}

/// A duplex shared-memory connection on tokio: a [`Sender`] and a [`Receiver`];
/// [`split`](Connection::split) them to use each from its own task.
#[derive(Debug)]
pub struct Connection {
    sender: Sender,
    receiver: Receiver,
}

impl Connection {
    /// Put a blocking connection on tokio's reactor.
    ///
    /// # Errors
    ///
    /// If registering its fds fails (`epoll_ctl`).
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime, or in one without IO enabled.
    pub fn new(conn: crate::Connection) -> io::Result<Connection> {
        let (tx, rx) = conn.split();
        Ok(Connection {
            sender: Sender::new(tx)?,
            receiver: Receiver::new(rx)?,
        })
    }

    /// The two halves, to move to different tasks.
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

    /// Send one message ([`Sender::send`]).
    ///
    /// # Errors
    ///
    /// As for [`Sender::send`].
    ///
    /// # Cancel safety
    ///
    /// As for [`Sender::send`]: the whole message or nothing.
    pub async fn send(&mut self, msg: &[u8]) -> Result<(), SendError> {
        self.sender.send(msg).await
    }

    /// Receive one message ([`Receiver::recv`]).
    ///
    /// # Errors
    ///
    /// As for [`Receiver::recv`].
    ///
    /// # Cancel safety
    ///
    /// As for [`Receiver::recv`]: a dropped future received nothing.
    pub async fn recv(&mut self, buf: &mut Vec<u8>) -> Result<usize, RecvError> {
        self.receiver.recv(buf).await
    }

    /// Who the peer is (`SO_PEERCRED` at connect time).
    pub fn peer(&self) -> PeerCredentials {
        self.sender.peer()
    }

    /// Take the blocking connection out of the reactor.
    pub fn into_inner(self) -> crate::Connection {
        crate::Connection {
            sender: self.sender.into_inner(),
            receiver: self.receiver.into_inner(),
        }
    }
}

/// Connect to the listener at `path` and run the handshake on tokio's reactor, all within
/// [`Options::handshake_timeout`] on tokio's clock. Checks the listener's credentials against
/// the [`PeerPolicy`](crate::PeerPolicy) before sending anything. With
/// [`Options::wait_for_listener`], first retries (every 10 ms, on tokio's timer) while nobody
/// listens at `path` yet. The async twin of [`crate::connect`]; nothing in it blocks the
/// thread.
///
/// # Errors
///
/// As for [`crate::connect`].
///
/// # Cancel safety
///
/// Dropping the future abandons the attempt cleanly: the socket and everything the handshake
/// made so far are closed, and the listener sees the handshake fail. No connection can be
/// lost, since none exists before the future completes.
pub async fn connect(
    path: impl AsRef<Path>,
    options: &Options,
) -> Result<Connection, ConnectError> {
    let path = path.as_ref();
    options.validate().map_err(ConnectError::InvalidOptions)?;
    let give_up = Instant::now().checked_add(options.wait_for_listener);
    loop {
        match connect_once(path, options).await {
            Err(ConnectError::Connect { source, .. })
                if matches!(
                    source.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
                ) && give_up.is_none_or(|g| Instant::now() < g) =>
            {
                ::tokio::time::sleep(Duration::from_millis(10)).await;
            }
            r => return r,
        }
    }
}

async fn connect_once(path: &Path, options: &Options) -> Result<Connection, ConnectError> {
    let deadline = Instant::now().checked_add(options.handshake_timeout);
    let fail = |e: Errno| ConnectError::Connect {
        path: path.to_owned(),
        source: e.into(),
    };
    let handshake_failed = |source| ConnectError::Handshake {
        path: path.to_owned(),
        source,
    };
    let addr = SocketAddrUnix::new(path).map_err(fail)?;
    let sock = sock::seqpacket().map_err(fail)?;
    loop {
        match rustix::net::connect(&sock, &addr) {
            Ok(()) => break,
            Err(Errno::INTR) => {}
            // The listener's backlog is full: it is busy, not gone. Retry until the deadline.
            Err(Errno::AGAIN) if deadline.is_none_or(|d| Instant::now() < d) => {
                ::tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Err(Errno::AGAIN) => {
                return Err(handshake_failed(HandshakeError::Timeout {
                    after: options.handshake_timeout,
                    waiting_for: "accept (backlog full)",
                }));
            }
            Err(e) => return Err(fail(e)),
        }
    }
    let conn = client(sock, options, deadline)
        .await
        .map_err(handshake_failed)?;
    Connection::new(conn).map_err(|source| {
        handshake_failed(HandshakeError::Io {
            op: "epoll_ctl (tokio)",
            source,
        })
    })
}

/// The client's handshake state machine ([`ClientHandshake`], the one the blocking `connect`
/// drives with `poll`), driven by tokio's reactor against `deadline` on tokio's clock.
async fn client(
    sock: OwnedFd,
    options: &Options,
    deadline: Option<Instant>,
) -> Result<crate::Connection, HandshakeError> {
    let reactor = |source| HandshakeError::Io {
        op: "epoll_ctl (tokio)",
        source,
    };
    let sock = register(sock).map_err(reactor)?;
    let fd = || -> BorrowedFd<'_> { sock.get_ref().as_fd() };
    let mut hs = ClientHandshake::start(fd(), options, None)?;
    let steps = async {
        loop {
            match hs.advance(fd(), options)? {
                Progress::Complete => return Ok(()),
                Progress::Stepped => {}
                Progress::Blocked => match sock.readable().await {
                    // Cleared only after `advance` found nothing: a packet that arrives from
                    // now on is a new readiness event.
                    Ok(mut ready) => ready.clear_ready(),
                    Err(e) => {
                        let e = HandshakeError::Io {
                            op: "epoll_wait (tokio)",
                            source: e,
                        };
                        return Err(hs.fail(fd(), e));
                    }
                },
            }
        }
    };
    let done = match deadline {
        Some(d) => ::tokio::time::timeout_at(d, steps).await.ok(),
        None => Some(steps.await),
    };
    match done {
        Some(Ok(())) => hs.into_connection(sock.into_inner()),
        Some(Err(e)) => Err(e),
        None => Err(hs.expire(fd(), options)),
    }
}

/// A Unix socket that accepts shmpipe connections, on tokio: a [`crate::Listener`] whose
/// [`accept`](Listener::accept) is an `.await`.
///
/// Handshakes run side by side inside it, each with its own deadline, as in
/// [`crate::Listener`]: a client that stalls, sends garbage or dies costs only its own
/// handshake (an [`AcceptError::Handshake`] from `accept`, after which you call it again).
#[derive(Debug)]
pub struct Listener {
    io: AsyncFd<Fd<crate::Listener>>,
}

impl Listener {
    /// Listen on the Unix socket at `path`, as [`crate::Listener::bind`] does, and register
    /// it with tokio's reactor.
    ///
    /// # Errors
    ///
    /// As for [`crate::Listener::bind`]; [`BindError::Io`] if the registration fails.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime, or in one without IO enabled.
    pub fn bind(path: impl AsRef<Path>, options: &Options) -> Result<Listener, BindError> {
        let path = path.as_ref();
        let listener = crate::Listener::bind(path, options)?;
        Listener::new(listener).map_err(|source| BindError::Io {
            op: "epoll_ctl (tokio)",
            path: path.to_owned(),
            source,
        })
    }

    /// Put a blocking listener on tokio's reactor.
    ///
    /// # Errors
    ///
    /// If the registration fails (`epoll_ctl`).
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime, or in one without IO enabled.
    pub fn new(listener: crate::Listener) -> io::Result<Listener> {
        Ok(Listener {
            io: register(Fd(listener))?,
        })
    }

    /// Wait for the next connection whose handshake completes, driving every client's
    /// handshake meanwhile.
    ///
    /// # Errors
    ///
    /// [`AcceptError::Handshake`] when one client's handshake fails (call again to keep
    /// serving); [`AcceptError::Io`] if the listener's own calls or the reactor fail.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a connection is taken out of the listener only by the step that completes
    /// the future, so dropping it loses none; handshakes in progress stay in the listener
    /// and go on at the next call.
    pub async fn accept(&mut self) -> Result<Connection, AcceptError> {
        let reactor = |op| move |source| AcceptError::Io { op, source };
        loop {
            let mut ready = self
                .io
                .readable_mut()
                .await
                .map_err(reactor("epoll_wait (tokio)"))?;
            match ready.get_inner_mut().0.try_accept() {
                Ok(Some(conn)) => {
                    return Connection::new(conn).map_err(reactor("epoll_ctl (tokio)"));
                }
                // Everything pending was handled: the next client, packet or deadline is a
                // new readiness event. (An error or a connection returns first, leaving the
                // readiness set, so the next call looks again.)
                Ok(None) => ready.clear_ready(),
                Err(e) => return Err(e),
            }
        }
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        self.io.get_ref().0.path()
    }

    /// Handshakes in progress.
    pub fn pending(&self) -> usize {
        self.io.get_ref().0.pending()
    }

    /// Take the blocking listener out of the reactor.
    pub fn into_inner(self) -> crate::Listener {
        self.io.into_inner().0
    }
}
