//! shmpipe: messages between processes on one Linux host through shared memory.
//!
//! Two processes that share nothing but a socket path get a duplex connection: one
//! lock-free ring in each direction, in a sealed memfd, handed over once with `SCM_RIGHTS`.
//! After that a message costs no system call unless the other side sleeps.
//!
//! ```
//! use shmpipe::{Listener, Options, connect};
//!
//! # let dir = std::env::temp_dir().join(format!("shmpipe-facade-doc-{}", std::process::id()));
//! # std::fs::create_dir_all(&dir)?;
//! let path = dir.join("demo.sock");
//! let mut listener = Listener::bind(&path, &Options::new())?;
//! let server = std::thread::spawn(move || {
//!     let mut conn = listener.accept().expect("handshake");
//!     let mut buf = Vec::new();
//!     let mut lines = Vec::new();
//!     while conn.recv(&mut buf).is_ok() {
//!         lines.push(String::from_utf8_lossy(&buf).into_owned());
//!     } // Err(Closed): the client closed after its last message
//!     lines
//! });
//! let (mut tx, _rx) = connect(&path, &Options::new())?.split();
//! tx.send(b"hello")?;
//! tx.send(b"world")?;
//! tx.close(std::time::Duration::from_secs(5))?; // Ok: the server consumed both
//! assert_eq!(server.join().unwrap(), ["hello", "world"]);
//! # std::fs::remove_dir_all(&dir)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! - Connections: [`Listener`], [`connect`], [`Connection`] (split into [`Sender`] and
//!   [`Receiver`]), [`Options`], [`PeerPolicy`]; many connections on one thread: [`Selector`].
//! - The ring underneath: [`Producer`], [`Consumer`], [`channel`] for two threads of one
//!   process, and their errors. A [`Sender`] is a [`Producer`] that also watches its peer
//!   process and owns the connection's socket; a [`Receiver`] likewise a [`Consumer`]: use
//!   `Sender`/`Receiver` between processes, `Producer`/`Consumer` between threads or with a
//!   set-up of your own.
//!
//! - Async services: with the `tokio` feature, `shmpipe::tokio` has the same
//!   connections with `.await`ing `connect`, `accept`, `send` and `recv`; with the `mio`
//!   feature, [`Receiver`], [`Sender`] and [`Listener`] are `mio::event::Source`s. Either way
//!   each handle has one fd to poll ([`AsFd`](std::os::fd::AsFd)), which covers the peer's
//!   death too; the readiness protocol is on [`Receiver`] and [`Sender`].
//!
//! - Typed messages: [`Sender::send_value`] and [`Receiver::recv_value`] (and the same on
//!   [`Producer`] and [`Consumer`]) carry a [`bytemuck::Pod`] struct as its bytes, copied into
//!   a value of yours on receipt, with its size checked ([`RecvValueError`]); with the `serde`
//!   feature, `send_serde`/`recv_serde` carry any serde type, encoded with postcard.
//!
//! Design: docs/design.md. The bytes (ring layout and handshake): docs/protocol.md.

// Connections between processes.
/// shmpipe on tokio (feature `tokio`): `Listener`, `connect`, `Connection`, `Sender`,
/// `Receiver` whose waits are `.await`s.
#[cfg(feature = "tokio")]
pub use shmpipe_handshake::tokio;
pub use shmpipe_handshake::{
    AcceptError, BindError, ConnectError, Connection, DEFAULT_HANDSHAKE_TIMEOUT,
    DEFAULT_MAX_PENDING, DEFAULT_MAX_RING, HandshakeError, HelloError, Incompatibility, Listener,
    Options, OptionsError, PeerCredentials, PeerPolicy, Receiver, Selector, Sender, Token, Whose,
    connect,
};
// The ring underneath, for two threads of one process ([`channel`]) or a hand-made set-up
// ([`Ring`], [`Bell`]); the byte layout and the handshake's wire format are in the
// `shmpipe-ring` and `shmpipe-handshake` crates and docs/protocol.md, not here.
pub use shmpipe_ring::{
    Batch, Bell, CloseError, Config, Consumer, ConsumerStats, Corruption, DEFAULT_CAPACITY,
    DEFAULT_SPIN, Grant, MAX_CAPACITY, MIN_CAPACITY, Message, Producer, ProducerStats, RecvError,
    RecvTimeoutError, RecvValueError, Ring, SendError, SendTimeoutError, SetupError, ShapeError,
    TryRecvError, TrySendError, ValueGrant, WaitStrategy, channel, membarrier_available,
};
// Typed messages: `send_value`/`recv_value` carry `bytemuck::Pod` types as their bytes; derive
// them with `#[bytemuck(crate = "shmpipe::bytemuck")]` (or a `bytemuck = "1"` of your own).
// With the `serde` feature, `send_serde`/`recv_serde` carry any serde type in postcard.
pub use shmpipe_ring::bytemuck;
#[cfg(feature = "serde")]
pub use shmpipe_ring::{SendSerdeError, postcard};

/// The README's Rust code, compiled by `cargo test` as a doctest so that it cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
