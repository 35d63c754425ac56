//! `mio::event::Source` for [`Receiver`], [`Sender`] and [`Listener`] (feature `mio`).
//!
//! Each registers the one fd the handle's readiness protocol names ([`AsFd::as_fd`]) through
//! `mio::unix::SourceFd`. mio registers edge-triggered, which is what the protocol wants; the
//! rules for each type are on its impl.

use std::io;
use std::os::fd::{AsFd, AsRawFd};

use mio::event::Source;
use mio::unix::SourceFd;
use mio::{Interest, Registry};

use crate::connection::{Receiver, Sender};
use crate::listener::Listener;

/// `impl Source for $ty` through the one fd of its readiness protocol, with the doc comment
/// given (each type's rules).
macro_rules! source_by_fd {
    ($(#[$doc:meta])* $ty:ty) => {
        $(#[$doc])*
        impl Source for $ty {
            fn register(
                &mut self,
                registry: &Registry,
                token: mio::Token,
                interests: Interest,
            ) -> io::Result<()> {
                SourceFd(&self.as_fd().as_raw_fd()).register(registry, token, interests)
            }

            fn reregister(
                &mut self,
                registry: &Registry,
                token: mio::Token,
                interests: Interest,
            ) -> io::Result<()> {
                SourceFd(&self.as_fd().as_raw_fd()).reregister(registry, token, interests)
            }

            fn deregister(&mut self, registry: &Registry) -> io::Result<()> {
                SourceFd(&self.as_fd().as_raw_fd()).deregister(registry)
            }
        }
    };
}

source_by_fd! {
    /// A receiver in a `mio::Poll`: the readiness protocol of [`Receiver`], edge-triggered.
    ///
    /// - Register with [`Interest::READABLE`] (the fd never becomes writable). A readable event
    ///   means a message may have arrived, or the peer is gone.
    /// - **Arm before every wait**: `receiver.arm()?`; on `Ok(true)` receive at once; on
    ///   `Ok(false)` go back to `poll` and wait for an event with this token. Without the arm the
    ///   producer does not ring, and no event comes.
    /// - On an event, take what is there (`try_recv`/`try_drain` until `Empty` or an error), then
    ///   arm again. Spurious events are possible (a peer may ring without cause): an `Empty`
    ///   answer just means arm and wait again.
    /// - Poll with a timeout of at most [`RECHECK`](crate::RECHECK) (100 ms) while a handle is
    ///   armed, and after a timeout arm again (which re-checks the ring): an event can be lost on
    ///   its way through the nested epoll instances, and this bounds what that costs.
    /// - No re-registration is needed between waits; if you re-register anyway (another token),
    ///   arm afterwards, before you wait.
    /// - Once the peer is gone, the receives hand over what it committed, then fail with
    ///   `PeerGone` (or `Closed`, if it closed first): deregister and drop the receiver then.
    Receiver
}

source_by_fd! {
    /// A sender in a `mio::Poll`: the readiness protocol of [`Sender`], edge-triggered.
    ///
    /// - Register with [`Interest::READABLE`], **not** `WRITABLE`: room in the ring is signalled
    ///   by the consumer's bell, which makes the fd readable; it never becomes writable. A
    ///   readable event means there may be room, or the peer is gone.
    /// - Send with `try_send` while it succeeds. On `Full`, **arm before you wait**:
    ///   `sender.arm(len)?` for the message you hold; `Ok(true)` means it fits now (send it),
    ///   `Ok(false)` go back to `poll` and wait for an event with this token, then try again.
    ///   `arm` fails with `PeerGone` once the peer is gone.
    /// - A sender with nothing to send needs no arm and gets no events it must handle (an event
    ///   may still come, from an earlier arm: ignore it).
    /// - Poll with a timeout of at most [`RECHECK`](crate::RECHECK) while armed, and arm again
    ///   after a timeout, as for [`Receiver`].
    /// - No re-registration is needed between waits; if you re-register anyway, arm afterwards.
    Sender
}

source_by_fd! {
    /// A listener in a `mio::Poll`: its fd is readable whenever [`Listener::try_accept`] has work
    /// (a new client, a step of a handshake in progress, an expired handshake deadline).
    ///
    /// - Register with [`Interest::READABLE`].
    /// - mio is edge-triggered: on each event, call `try_accept` **until it returns `Ok(None)`**.
    ///   `Ok(Some(conn))` is a new connection (register its halves), and
    ///   `Err(AcceptError::Handshake { .. })` one client's failed handshake: keep calling. Only
    ///   `Ok(None)` says that everything pending was handled and the next event will come.
    /// - No arm is needed: every handshake in progress is watched by the listener itself, and its
    ///   deadlines by a timer inside it, which wakes the fd when one expires.
    Listener
}
