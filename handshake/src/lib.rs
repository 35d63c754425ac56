//! shmpipe's handshake: two processes that share nothing but a socket path get a duplex
//! shared-memory [`Connection`]: one `shmpipe-ring` ring in each direction.
//!
//! A [`Listener`] binds a `SOCK_SEQPACKET` Unix socket; [`connect`] reaches it. The two sides
//! exchange versioned HELLOs, then each passes, with one `SCM_RIGHTS` message, the memfd of the
//! ring it produces into and the waiters (epoll fds) of the two bells it rings: as that ring's
//! producer, and as the consumer of the peer's ring. No eventfd ever crosses. Everything
//! received is validated before it is mapped (fd count and kind, seals, size, header), and
//! every failure is a [`HandshakeError`] that says what was wrong, with every received fd
//! closed. After the handshake no byte crosses the socket: it stays open so that each side
//! learns, even while blocked on a ring, that the other is gone.
//!
//! ```
//! use shmpipe_handshake::{Listener, Options, connect};
//!
//! let dir = std::env::temp_dir().join(format!("shmpipe-doc-{}", std::process::id()));
//! std::fs::create_dir_all(&dir)?;
//! let path = dir.join("s");
//! let mut listener = Listener::bind(&path, &Options::new())?;
//! let server = std::thread::spawn(move || -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//!     let mut conn = listener.accept()?;
//!     let mut buf = Vec::new();
//!     conn.recv(&mut buf)?;
//!     conn.send(&buf)?; // echo
//!     Ok(())
//! });
//! let mut conn = connect(&path, &Options::new())?;
//! conn.send(b"ping")?;
//! let mut reply = Vec::new();
//! conn.recv(&mut reply)?;
//! assert_eq!(reply, b"ping");
//! server.join().unwrap().unwrap();
//! # std::fs::remove_dir_all(&dir)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! The bytes on the wire: docs/protocol.md §2.

#![forbid(unsafe_code)]

mod connection;
mod error;
mod handshake;
mod listener;
#[cfg(feature = "mio")]
mod mio_source;
mod options;
mod selector;
mod sock;
#[cfg(feature = "tokio")]
pub mod tokio;
pub mod wire;

use std::path::Path;
use std::time::{Duration, Instant};

use rustix::io::Errno;
use rustix::net::SocketAddrUnix;

pub use connection::{Connection, Receiver, Sender};
pub use error::{AcceptError, BindError, ConnectError, HandshakeError};
pub use listener::Listener;
pub use options::{
    DEFAULT_HANDSHAKE_TIMEOUT, DEFAULT_MAX_PENDING, DEFAULT_MAX_RING, Options, OptionsError,
    PeerCredentials, PeerPolicy,
};
pub use selector::{Selector, Token};
pub use wire::{HelloError, Incompatibility, Whose};

/// The longest a waiting handle trusts its fd: every wait of this crate (the blocking calls,
/// [`Selector::select`], the `tokio` types) re-checks the ring at least this often, and an
/// event loop of your own should too (wait with a timeout of at most this, then `arm` again).
///
/// A wake-up reaches your event loop through two nested epoll instances, and the kernel checks
/// at each level, when the event is harvested, that the level below still reads ready. A peer
/// that closes its bell right after ringing it (a sender dropped just after its close) or
/// harvests its own waiter can make that check fail, and the event is gone. Nothing is lost in
/// the ring; the re-check bounds the delay to this interval (docs/protocol.md §1.7).
pub const RECHECK: Duration = Duration::from_millis(100);

/// Connect to the [`Listener`] at `path` and run the handshake, all within
/// [`Options::handshake_timeout`]. Checks the listener's credentials against the
/// [`PeerPolicy`] before sending anything. With [`Options::wait_for_listener`], first retries
/// while nobody listens at `path` yet.
///
/// # Errors
///
/// [`ConnectError::Connect`] if no listener can be reached (`ENOENT`: no socket file;
/// `ECONNREFUSED`: a stale one), [`ConnectError::Handshake`] if the handshake fails.
pub fn connect(path: impl AsRef<Path>, options: &Options) -> Result<Connection, ConnectError> {
    let path = path.as_ref();
    options.validate().map_err(ConnectError::InvalidOptions)?;
    let give_up = deadline_after(options.wait_for_listener);
    loop {
        match connect_once(path, options) {
            Err(ConnectError::Connect { source, .. })
                if matches!(
                    source.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                ) && Instant::now() < give_up =>
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            r => return r,
        }
    }
}

/// `after` from now, or a century from now where that overflows an `Instant`: a
/// `Duration::MAX` timeout means no limit, not a panic.
pub(crate) fn deadline_after(after: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(after)
        .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 24 * 3600))
}

fn connect_once(path: &Path, options: &Options) -> Result<Connection, ConnectError> {
    let deadline = deadline_after(options.handshake_timeout);
    let fail = |e: Errno| ConnectError::Connect {
        path: path.to_owned(),
        source: e.into(),
    };
    let addr = SocketAddrUnix::new(path).map_err(fail)?;
    let sock = sock::seqpacket().map_err(fail)?;
    loop {
        match rustix::net::connect(&sock, &addr) {
            Ok(()) => break,
            Err(Errno::INTR) => {}
            // The listener's backlog is full: it is busy, not gone. Retry until the deadline.
            Err(Errno::AGAIN) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(Errno::AGAIN) => {
                return Err(ConnectError::Handshake {
                    path: path.to_owned(),
                    source: HandshakeError::Timeout {
                        after: options.handshake_timeout,
                        waiting_for: "accept (backlog full)",
                    },
                });
            }
            Err(e) => return Err(fail(e)),
        }
    }
    handshake::client(sock, options, deadline).map_err(|source| ConnectError::Handshake {
        path: path.to_owned(),
        source,
    })
}
