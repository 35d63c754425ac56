//! The handshake itself (docs/protocol.md §2.3), each side a state machine written once: the
//! client's is driven blocking against one deadline ([`client`]) or by tokio's reactor (feature
//! `tokio`), the server's by a listener whenever a client's socket is readable, so one slow
//! client never holds up another.
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

use rustix::event::PollFlags;

use shmpipe_ring::{Bell, Config, Consumer, Producer, Ring};

use crate::connection::Connection;
use crate::error::HandshakeError;
use crate::options::{Options, PeerCredentials};
use crate::sock;
use crate::wire::{self, Hello, Incompatibility, Kind, MAX_PACKET, Packet, Plan, RingDesc, Role};

fn config(desc: RingDesc, options: &Options) -> Config {
    Config::new()
        .capacity(desc.capacity as usize)
        .max_message(desc.max_message as usize)
        .wait(options.wait)
}

/// The two bells a side rings: `data` as the producer of its ring, `space` as the consumer of
/// the peer's ring.
#[derive(Debug)]
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
        return Err(HandshakeError::Incompatible(Incompatibility::Ring {
            got: desc,
            negotiated: plan.theirs,
        }));
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
        return Err(HandshakeError::Incompatible(Incompatibility::Role {
            got: h.role,
            expected: expected_role,
        }));
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
    if let Some((code, reason)) = error.reject() {
        let _ = sock::send_packet(sock, &wire::encode_reject(code, &reason), &[], None);
    }
}

/// The client's whole handshake on a connected socket, within `deadline`: the
/// [`ClientHandshake`] state machine, driven with `poll`(2). (The `tokio` feature drives the
/// same machine from tokio's reactor.)
pub(crate) fn client(
    sock: OwnedFd,
    options: &Options,
    deadline: Instant,
) -> Result<Connection, HandshakeError> {
    let mut hs = ClientHandshake::start(sock.as_fd(), options, Some(deadline))?;
    loop {
        match hs.advance(sock.as_fd(), options)? {
            Progress::Complete => return hs.into_connection(sock),
            Progress::Stepped => {}
            Progress::Blocked => {
                let flags = PollFlags::IN | PollFlags::RDHUP;
                match sock::wait_for(sock.as_fd(), flags, deadline) {
                    Ok(true) => {}
                    Ok(false) => return Err(hs.expire(sock.as_fd(), options)),
                    Err(e) => return Err(hs.fail(sock.as_fd(), HandshakeError::io("poll")(e))),
                }
            }
        }
    }
}

/// What one turn of a handshake did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Progress {
    /// Nothing to read: wait until the socket is readable (or the deadline), then advance.
    Blocked,
    /// Took a packet and answered it: advance again at once (another may be queued).
    Stepped,
    /// The handshake is complete: take the connection.
    Complete,
}

/// Where a client-side handshake stands. (One per handshake, moved only at its steps: the
/// size of its variants does not matter.)
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
enum ClientStep {
    /// Sent our HELLO; waiting for the server's.
    Hello,
    /// Sent our RING; waiting for the server's. Our ring's producer role is claimed once the
    /// server's space waiter arrives with it.
    Ring {
        plan: Plan,
        ring: Ring,
        bells: Bells,
    },
    /// Sent READY: the connection is ready to be taken.
    Complete {
        producer: Producer,
        consumer: Consumer,
    },
    /// Failed.
    Done,
}

/// The client's side of the handshake (docs/protocol.md §2.5) as a state machine, written
/// once and driven either blocking ([`client`]) or by an async reactor: [`start`] sends the
/// HELLO, then each [`advance`] takes at most one packet without blocking and answers it.
/// The socket stays the driver's (it may sit in a reactor's registration meanwhile).
///
/// [`start`]: ClientHandshake::start
/// [`advance`]: ClientHandshake::advance
#[derive(Debug)]
pub(crate) struct ClientHandshake {
    pidfd: Option<OwnedFd>,
    peer: PeerCredentials,
    ours: Hello,
    step: ClientStep,
    /// How long a send may wait for room in the socket; `None`: it never waits (a packet of
    /// this handshake never finds the socket full unless the server misbehaves, and then it
    /// fails at once with `EAGAIN`).
    send_deadline: Option<Instant>,
    /// Gave up (and told the server).
    failed: bool,
}

impl ClientHandshake {
    /// On a connected socket: check the server's credentials, then send our HELLO. On
    /// error the server has been told why (REJECT), when that is worth telling.
    pub(crate) fn start(
        sock: BorrowedFd<'_>,
        options: &Options,
        send_deadline: Option<Instant>,
    ) -> Result<ClientHandshake, HandshakeError> {
        let peer = sock::peer_credentials(sock)?;
        let hs = ClientHandshake {
            pidfd: sock::peer_pidfd(&peer),
            peer,
            ours: options.hello(Role::Client),
            step: ClientStep::Hello,
            send_deadline,
            failed: false,
        };
        let hello = || {
            if !options.policy.allows(&peer) {
                return Err(HandshakeError::NotPermitted(peer));
            }
            send(sock, &hs.ours.encode(), &[], send_deadline, Kind::Hello)
        };
        match hello() {
            Ok(()) => Ok(hs),
            Err(e) => {
                reject(sock, &e);
                Err(e)
            }
        }
    }

    fn waiting_for(&self) -> &'static str {
        match self.step {
            ClientStep::Hello => Kind::Hello.name(),
            ClientStep::Ring { .. } => Kind::Ring.name(),
            ClientStep::Complete { .. } | ClientStep::Done => "nothing",
        }
    }

    /// Take the next packet, if one is there, and answer it. On error the server has been
    /// told why (if it is still there) and the handshake is over.
    pub(crate) fn advance(
        &mut self,
        sock: BorrowedFd<'_>,
        options: &Options,
    ) -> Result<Progress, HandshakeError> {
        self.turn(sock, options).map_err(|e| self.fail(sock, e))
    }

    /// Give up with `e`: tell the server (best effort, once) and drop everything made so far.
    pub(crate) fn fail(&mut self, sock: BorrowedFd<'_>, e: HandshakeError) -> HandshakeError {
        if !self.failed {
            self.failed = true;
            reject(sock, &e);
        }
        self.step = ClientStep::Done;
        e
    }

    /// The deadline passed: tell the server (best effort) and give up.
    pub(crate) fn expire(&mut self, sock: BorrowedFd<'_>, options: &Options) -> HandshakeError {
        let e = HandshakeError::Timeout {
            after: options.handshake_timeout,
            waiting_for: self.waiting_for(),
        };
        self.fail(sock, e)
    }

    fn turn(
        &mut self,
        sock: BorrowedFd<'_>,
        options: &Options,
    ) -> Result<Progress, HandshakeError> {
        let expected = match self.step {
            ClientStep::Hello => Kind::Hello,
            ClientStep::Ring { .. } => Kind::Ring,
            ClientStep::Complete { .. } => return Ok(Progress::Complete),
            ClientStep::Done => {
                return Err(HandshakeError::Unexpected {
                    expected: "nothing",
                    got: "a call after the handshake failed",
                });
            }
        };
        let mut buf = [0u8; MAX_PACKET];
        let Some(got) =
            sock::try_recv_packet(sock, &mut buf).map_err(sock::recv_error(expected))?
        else {
            return Ok(Progress::Blocked);
        };
        match std::mem::replace(&mut self.step, ClientStep::Done) {
            ClientStep::Hello => {
                let (packet, _) = sock::expect(sock, got, &buf, Kind::Hello)?;
                let plan = plan(&self.ours, &peer_hello(packet, Role::Server)?)?;
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
                    self.send_deadline,
                    Kind::Ring,
                )?;
                self.step = ClientStep::Ring { plan, ring, bells };
                Ok(Progress::Stepped)
            }
            ClientStep::Ring { plan, ring, bells } => {
                let (packet, fds) = sock::expect(sock, got, &buf, Kind::Ring)?;
                let (consumer, their_space) =
                    open_theirs(packet, fds, &plan, options, bells.space)?;
                let producer = claim_ours(&ring, bells.data, their_space)?;
                send(
                    sock,
                    &wire::encode_ready(),
                    &[],
                    self.send_deadline,
                    Kind::Ready,
                )?;
                self.step = ClientStep::Complete { producer, consumer };
                Ok(Progress::Complete)
            }
            ClientStep::Complete { .. } | ClientStep::Done => unreachable!("handled above"),
        }
    }

    /// The finished connection (after `advance` returned [`Progress::Complete`]), on the
    /// socket the handshake ran on.
    pub(crate) fn into_connection(self, sock: OwnedFd) -> Result<Connection, HandshakeError> {
        let ClientStep::Complete { producer, consumer } = self.step else {
            unreachable!("into_connection before the handshake completed")
        };
        // Registering the peer watch can fail only for lack of kernel memory.
        Connection::new(sock, self.pidfd, self.peer, producer, consumer)
    }
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
        let deadline = crate::deadline_after(options.handshake_timeout);
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
