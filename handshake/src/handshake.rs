//! The handshake itself (docs/protocol.md §2.3): the client as straight-line code against one
//! deadline, the server as a state machine a listener drives when the socket is readable, so
//! one slow client never holds up another.
//!
//! ```text
//! client                          server
//!   HELLO  ------------------------->          (server checks SO_PEERCRED first)
//!          <-------------------------  HELLO
//!   RING + [memfd, data, space] ---->          (server validates, opens, claims consumer,
//!                                               then creates its own ring and claims its
//!                                               producer with the client's space waiter)
//!          <----- RING + [memfd, data, space]
//!   READY  ------------------------->          (nothing is ever sent again)
//! ```
//!
//! In each RING, `memfd` is the ring the sender produces into; `data` the waiter (an epoll
//! fd) of the bell the sender rings as that ring's producer, which the receiver sleeps on as
//! its consumer; `space` the waiter of the bell the sender rings as the consumer of the
//! receiver's ring, which the receiver sleeps on as that ring's producer. Neither side ever
//! sends or accepts an eventfd. The client claims its producer role only once the server's
//! RING has brought the server's space waiter.
//!
//! Either side may answer any step with REJECT instead, and then closes.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Instant;

use shmring_ring::{Bell, Config, Consumer, Producer, Ring};

use crate::connection::Connection;
use crate::error::HandshakeError;
use crate::options::{Options, PeerCredentials};
use crate::sock;
use crate::wire::{self, Hello, Kind, MAX_PACKET, Packet, Plan, RingDesc, Role};

fn config(desc: RingDesc, options: &Options) -> Config {
    Config::new()
        .capacity(desc.capacity as usize)
        .max_message(desc.max_message as usize)
        .wait(options.wait)
}

/// The two bells a side rings: `data` as the producer of its ring, `space` as the consumer of
/// the peer's ring.
struct Bells {
    data: Bell,
    space: Bell,
}

fn bells() -> Result<Bells, HandshakeError> {
    let bell = || {
        Bell::new().map_err(|source| HandshakeError::Io {
            op: "eventfd/epoll_create1",
            source,
        })
    };
    Ok(Bells {
        data: bell()?,
        space: bell()?,
    })
}

/// Create the ring we produce into. Its producer role is claimed once the peer's space waiter
/// has arrived.
fn create_ours(plan: &Plan, options: &Options) -> Result<Ring, HandshakeError> {
    Ring::create(&config(plan.ours, options)).map_err(HandshakeError::Setup)
}

/// Claim the producer role of our ring with our data bell and the peer's space waiter.
fn claim_ours(ring: &Ring, data: Bell, their_space: OwnedFd) -> Result<Producer, HandshakeError> {
    // `producer` runs the waiter probe (`Bell::check_waiter`): an epoll fd we can watch, and
    // whose watcher fits into the caller's event loop.
    ring.producer(data, their_space)
        .map_err(HandshakeError::BadRing)
}

/// Validate the peer's RING packet and fds, map the ring, claim its consumer role with our
/// space bell and the peer's data waiter. Returns the consumer and the peer's space waiter.
fn open_theirs(
    packet: Packet,
    fds: Vec<OwnedFd>,
    plan: &Plan,
    options: &Options,
    space: Bell,
) -> Result<(Consumer, OwnedFd), HandshakeError> {
    let Packet::Ring(desc) = packet else {
        unreachable!("`expect` checked the kind")
    };
    if desc != plan.theirs {
        return Err(HandshakeError::Incompatible(format!(
            "the peer's RING describes a {}-byte ring with {}-byte messages; the negotiated \
             ring is {} bytes with {}-byte messages",
            desc.capacity, desc.max_message, plan.theirs.capacity, plan.theirs.max_message
        )));
    }
    let [memfd, data_waiter, space_waiter]: [OwnedFd; 3] =
        fds.try_into().expect("`expect` checked the count");
    let ring = Ring::open(memfd, &config(plan.theirs, options)).map_err(HandshakeError::BadRing)?;
    let consumer = ring
        .consumer(space, data_waiter)
        .map_err(HandshakeError::BadRing)?;
    // Checked now, so that a server refuses a bad space waiter before it creates its ring.
    Bell::check_waiter(space_waiter.as_fd()).map_err(HandshakeError::BadRing)?;
    Ok((consumer, space_waiter))
}

fn peer_hello(packet: Packet, expected_role: Role) -> Result<Hello, HandshakeError> {
    let Packet::Hello(h) = packet else {
        unreachable!("`expect` checked the kind")
    };
    if h.role != expected_role {
        return Err(HandshakeError::Incompatible(format!(
            "the peer's HELLO says it is a {:?}, expected a {expected_role:?}",
            h.role
        )));
    }
    Ok(h)
}

fn plan(ours: &Hello, theirs: &Hello) -> Result<Plan, HandshakeError> {
    wire::negotiate(ours, theirs).map_err(HandshakeError::Incompatible)
}

/// Send one packet; `next` is what we expect from the peer after it (for the error if the
/// peer is gone).
fn send(
    sock: BorrowedFd<'_>,
    bytes: &[u8],
    fds: &[BorrowedFd<'_>],
    deadline: Option<Instant>,
    next: Kind,
) -> Result<(), HandshakeError> {
    sock::send_packet(sock, bytes, fds, deadline).map_err(|e| match e {
        rustix::io::Errno::PIPE | rustix::io::Errno::CONNRESET => {
            sock::closed_because(sock, next.name())
        }
        e => HandshakeError::io("sendmsg")(e),
    })
}

/// Tell the peer why we give up, if that is worth telling; best effort, never blocks.
pub(crate) fn reject(sock: BorrowedFd<'_>, error: &HandshakeError) {
    if let Some(code) = error.reject_code() {
        // Our error, told from the peer's side ("the peer's RING" is its RING).
        let reason = match error {
            HandshakeError::NotPermitted(_) => "peer credentials not allowed".to_owned(),
            e => e.to_string().replace("the peer's ", "your "),
        };
        let _ = sock::send_packet(sock, &wire::encode_reject(code, &reason), &[], None);
    }
}

/// The client's whole handshake on a connected socket, within `deadline`.
pub(crate) fn client(
    sock: OwnedFd,
    options: &Options,
    deadline: Instant,
) -> Result<Connection, HandshakeError> {
    let peer = sock::peer_credentials(&sock)?;
    let pidfd = sock::peer_pidfd(&peer);
    match client_steps(sock.as_fd(), peer, options, deadline) {
        // Registering the peer watch can fail only for lack of kernel memory.
        Ok((producer, consumer)) => Connection::new(sock, pidfd, peer, producer, consumer),
        Err(e) => {
            reject(sock.as_fd(), &e);
            Err(e)
        }
    }
}

fn client_steps(
    sock: BorrowedFd<'_>,
    peer: PeerCredentials,
    options: &Options,
    deadline: Instant,
) -> Result<(Producer, Consumer), HandshakeError> {
    if !options.policy.allows(&peer) {
        return Err(HandshakeError::NotPermitted(peer));
    }
    let timeout = options.handshake_timeout;
    let ours = options.hello(Role::Client);
    send(sock, &ours.encode(), &[], Some(deadline), Kind::Hello)?;

    let (packet, _) = sock::recv_expect(sock, Kind::Hello, deadline, timeout)?;
    let plan = plan(&ours, &peer_hello(packet, Role::Server)?)?;
    let ring = create_ours(&plan, options)?;
    let bells = bells()?;
    send(
        sock,
        &plan.ours.encode(),
        &[
            ring.memfd(),
            bells.data.waiter_fd(),
            bells.space.waiter_fd(),
        ],
        Some(deadline),
        Kind::Ring,
    )?;

    let (packet, fds) = sock::recv_expect(sock, Kind::Ring, deadline, timeout)?;
    let (consumer, their_space) = open_theirs(packet, fds, &plan, options, bells.space)?;
    let producer = claim_ours(&ring, bells.data, their_space)?;
    send(
        sock,
        &wire::encode_ready(),
        &[],
        Some(deadline),
        Kind::Ready,
    )?;
    Ok((producer, consumer))
}

/// Where a server-side handshake stands.
#[derive(Debug)]
enum Step {
    /// Waiting for the client's HELLO.
    Hello,
    /// Sent our HELLO; waiting for the client's RING. Our ring is created only once the
    /// client's ring and data waiter have passed validation, so a client that stalls or lies
    /// about them costs no ring memory. (Its space waiter is checked when we claim our
    /// producer role; a bad one frees the new ring at once.)
    Ring { plan: Plan },
    /// Sent our RING; waiting for READY.
    Ready {
        producer: Producer,
        consumer: Consumer,
    },
    /// Received READY: the connection is ready to be taken.
    Complete {
        producer: Producer,
        consumer: Consumer,
    },
    /// Failed.
    Done,
}

impl Step {
    fn waiting_for(&self) -> &'static str {
        match self {
            Step::Hello => "HELLO",
            Step::Ring { .. } => "RING",
            Step::Ready { .. } => "READY",
            Step::Complete { .. } | Step::Done => "nothing",
        }
    }
}

/// One client's handshake on the server side, advanced by [`ServerHandshake::on_readable`]
/// whenever its socket is readable.
#[derive(Debug)]
pub(crate) struct ServerHandshake {
    sock: OwnedFd,
    pidfd: Option<OwnedFd>,
    peer: PeerCredentials,
    ours: Hello,
    step: Step,
    deadline: Instant,
}

impl ServerHandshake {
    /// A freshly accepted socket: check the client's credentials before reading anything.
    pub(crate) fn start(
        sock: OwnedFd,
        options: &Options,
    ) -> Result<ServerHandshake, (Option<PeerCredentials>, HandshakeError)> {
        let deadline = Instant::now() + options.handshake_timeout;
        let peer = sock::peer_credentials(&sock).map_err(|e| (None, e))?;
        if !options.policy.allows(&peer) {
            let e = HandshakeError::NotPermitted(peer);
            reject(sock.as_fd(), &e);
            return Err((Some(peer), e));
        }
        Ok(ServerHandshake {
            pidfd: sock::peer_pidfd(&peer),
            sock,
            peer,
            ours: options.hello(Role::Server),
            step: Step::Hello,
            deadline,
        })
    }

    pub(crate) fn deadline(&self) -> Instant {
        self.deadline
    }

    pub(crate) fn peer(&self) -> PeerCredentials {
        self.peer
    }

    /// The deadline passed: tell the client (best effort) and give up.
    pub(crate) fn expire(self, options: &Options) -> HandshakeError {
        let e = HandshakeError::Timeout {
            after: options.handshake_timeout,
            waiting_for: self.step.waiting_for(),
        };
        reject(self.sock.as_fd(), &e);
        e
    }

    /// The socket is readable: take one packet and answer it. `Ok(true)`: the handshake is
    /// complete, call [`ServerHandshake::into_connection`]. On error the client has been told
    /// why (if it is still there) and everything this handshake holds is closed when `self`
    /// drops.
    pub(crate) fn on_readable(&mut self, options: &Options) -> Result<bool, HandshakeError> {
        match self.advance(options) {
            Ok(done) => Ok(done),
            Err(e) => {
                reject(self.sock.as_fd(), &e);
                self.step = Step::Done;
                Err(e)
            }
        }
    }

    fn advance(&mut self, options: &Options) -> Result<bool, HandshakeError> {
        let sock = self.sock.as_fd();
        let mut buf = [0u8; MAX_PACKET];
        let expected = match self.step {
            Step::Hello => Kind::Hello,
            Step::Ring { .. } => Kind::Ring,
            _ => Kind::Ready,
        };
        let Some(got) =
            sock::try_recv_packet(sock, &mut buf).map_err(sock::recv_error(expected))?
        else {
            return Ok(false);
        };
        match std::mem::replace(&mut self.step, Step::Done) {
            Step::Hello => {
                let (packet, _) = sock::expect(sock, got, &buf, Kind::Hello)?;
                let plan = plan(&self.ours, &peer_hello(packet, Role::Client)?)?;
                send(sock, &self.ours.encode(), &[], None, Kind::Ring)?;
                self.step = Step::Ring { plan };
                Ok(false)
            }
            Step::Ring { plan } => {
                let (packet, fds) = sock::expect(sock, got, &buf, Kind::Ring)?;
                let bells = bells()?;
                // Copies of our waiters to send: the bells themselves go into the handles.
                let dup = |b: &Bell| {
                    b.waiter_fd()
                        .try_clone_to_owned()
                        .map_err(|source| HandshakeError::Io { op: "dup", source })
                };
                let (data_waiter, space_waiter) = (dup(&bells.data)?, dup(&bells.space)?);
                let (consumer, their_space) =
                    open_theirs(packet, fds, &plan, options, bells.space)?;
                let ring = create_ours(&plan, options)?;
                let producer = claim_ours(&ring, bells.data, their_space)?;
                let fds = [ring.memfd(), data_waiter.as_fd(), space_waiter.as_fd()];
                send(sock, &plan.ours.encode(), &fds, None, Kind::Ready)?;
                self.step = Step::Ready { producer, consumer };
                Ok(false)
            }
            Step::Ready { producer, consumer } => {
                sock::expect(sock, got, &buf, Kind::Ready)?;
                self.step = Step::Complete { producer, consumer };
                Ok(true)
            }
            Step::Complete { .. } | Step::Done => Err(HandshakeError::Unexpected {
                expected: "nothing",
                got: "a packet",
            }),
        }
    }

    /// The finished connection (after `on_readable` returned `Ok(true)`).
    pub(crate) fn into_connection(self) -> Result<Connection, HandshakeError> {
        let Step::Complete { producer, consumer } = self.step else {
            unreachable!("into_connection before the handshake completed")
        };
        Connection::new(self.sock, self.pidfd, self.peer, producer, consumer)
    }

    pub(crate) fn socket(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }
}
