//! Errors: one small enum per operation. Every handshake failure says what was wrong.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use shmpipe_ring::SetupError;

use crate::options::{OptionsError, PeerCredentials};
use crate::wire::{Incompatibility, RejectCode, WireError};

/// Why a handshake failed. The connection is gone and every fd it received is closed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// A system call failed.
    #[error("{op} failed: {source}")]
    Io {
        /// The call, as its man page names it.
        op: &'static str,
        /// The OS error.
        source: io::Error,
    },
    /// The handshake deadline passed.
    #[error("handshake timed out after {after:?} waiting for the peer's {waiting_for}")]
    Timeout {
        /// The handshake timeout that expired.
        after: Duration,
        /// The packet we were waiting for.
        waiting_for: &'static str,
    },
    /// The peer closed the socket (or died) mid-handshake.
    #[error("the peer closed the connection while we waited for its {waiting_for}")]
    PeerClosed {
        /// The packet we were waiting for.
        waiting_for: &'static str,
    },
    /// The peer's credentials are not allowed by our [`PeerPolicy`](crate::PeerPolicy).
    #[error("peer ({0}) not allowed by the peer policy")]
    NotPermitted(PeerCredentials),
    /// The peer refused the handshake and said why.
    #[error("the peer rejected the handshake ({code}): {reason}")]
    Rejected {
        /// The peer's reason code.
        code: RejectCode,
        /// The peer's words.
        reason: String,
    },
    /// A packet's bytes are malformed.
    #[error("bad packet while waiting for the peer's {waiting_for}: {source}")]
    Wire {
        /// The packet we were waiting for.
        waiting_for: &'static str,
        /// What is wrong with it.
        source: WireError,
    },
    /// A well-formed packet of the wrong kind.
    #[error("expected the peer's {expected}, got {got}")]
    Unexpected {
        /// The packet we were waiting for.
        expected: &'static str,
        /// The kind that came.
        got: &'static str,
    },
    /// A packet longer than any the protocol has.
    #[error("packet longer than 256 bytes while waiting for the peer's {waiting_for}")]
    TooLong {
        /// The packet we were waiting for.
        waiting_for: &'static str,
    },
    /// Not exactly the fds the packet must carry (three with RING, none otherwise).
    #[error("the peer's {waiting_for} came with {got} fds, expected {expected}")]
    FdCount {
        /// The packet that carried them.
        waiting_for: &'static str,
        /// How many it must carry.
        expected: usize,
        /// How many arrived (all closed).
        got: usize,
    },
    /// The kernel truncated the fds (`MSG_CTRUNC`): the peer sent more than we have room for,
    /// or we are at our fd limit (`RLIMIT_NOFILE`).
    #[error(
        "fds with the peer's {waiting_for} were truncated (MSG_CTRUNC; {got} arrived, all \
         closed): too many were sent, or this process is at its fd limit"
    )]
    FdsTruncated {
        /// The packet that carried them.
        waiting_for: &'static str,
        /// How many arrived before the truncation.
        got: usize,
    },
    /// The two sides' proposals cannot be reconciled, or the peer's ring is not the
    /// negotiated one.
    #[error("incompatible peer: {0}")]
    Incompatible(#[source] Incompatibility),
    /// The peer's ring failed validation (fd kinds, seals, size, header).
    #[error("the peer's ring is unusable: {0}")]
    BadRing(#[source] SetupError),
    /// Creating or claiming our own ring failed.
    #[error("setting up our ring failed: {0}")]
    Setup(#[source] SetupError),
}

impl HandshakeError {
    pub(crate) fn io(op: &'static str) -> impl FnOnce(rustix::io::Errno) -> HandshakeError {
        move |e| HandshakeError::Io {
            op,
            source: e.into(),
        }
    }

    /// The code and the reason we tell the peer when we give up with this error, in the
    /// peer's terms ("your RING", not "the peer's RING"); `None` when telling it is pointless
    /// (it is gone, or it gave up first).
    pub(crate) fn reject(&self) -> Option<(RejectCode, String)> {
        Some(match self {
            HandshakeError::PeerClosed { .. } | HandshakeError::Rejected { .. } => return None,
            HandshakeError::NotPermitted(_) => (
                RejectCode::NOT_PERMITTED,
                "peer credentials not allowed".to_owned(),
            ),
            HandshakeError::Wire {
                waiting_for,
                source,
            } => {
                let code = match source {
                    WireError::Version(_) => RejectCode::VERSION,
                    _ => RejectCode::PROTOCOL,
                };
                (code, format!("bad packet as your {waiting_for}: {source}"))
            }
            HandshakeError::Unexpected { expected, got } => (
                RejectCode::PROTOCOL,
                format!("expected your {expected}, got {got}"),
            ),
            HandshakeError::TooLong { waiting_for } => (
                RejectCode::PROTOCOL,
                format!("packet longer than 256 bytes as your {waiting_for}"),
            ),
            HandshakeError::FdCount {
                waiting_for,
                expected,
                got,
            } => (
                RejectCode::PROTOCOL,
                format!("your {waiting_for} came with {got} fds, expected {expected}"),
            ),
            HandshakeError::FdsTruncated { waiting_for, got } => (
                RejectCode::PROTOCOL,
                format!("fds with your {waiting_for} were truncated ({got} arrived): too many"),
            ),
            HandshakeError::Incompatible(i) => (RejectCode::INCOMPATIBLE, i.for_peer()),
            HandshakeError::BadRing(SetupError::BadWaiter { why }) => (
                RejectCode::BAD_RING,
                format!("your waiter fd is unusable: {why}"),
            ),
            HandshakeError::BadRing(e) => {
                (RejectCode::BAD_RING, format!("your ring is unusable: {e}"))
            }
            HandshakeError::Timeout { after, waiting_for } => (
                RejectCode::TIMEOUT,
                format!("handshake timed out after {after:?} waiting for your {waiting_for}"),
            ),
            HandshakeError::Io { .. } | HandshakeError::Setup(_) => {
                (RejectCode::INTERNAL, self.to_string())
            }
        })
    }
}

/// Why [`Listener::bind`](crate::Listener::bind) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BindError {
    /// The options are out of range.
    #[error("invalid options: {0}")]
    InvalidOptions(#[source] OptionsError),
    /// A live listener holds the path (its lock file is locked, or it answers connections).
    #[error("{}: another listener is live on this socket", path.display())]
    InUse {
        /// The socket path.
        path: PathBuf,
    },
    /// Something that is not a socket is in the way; it is left alone.
    #[error("{}: exists and is not a socket; refusing to replace it", path.display())]
    NotASocket {
        /// The socket path.
        path: PathBuf,
    },
    /// A system call failed.
    #[error("{}: {op} failed: {source}", path.display())]
    Io {
        /// The call.
        op: &'static str,
        /// The path it was about.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
}

/// Why an accept produced no connection. The listener stays usable after every one of these:
/// a failed handshake concerns one client only.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AcceptError {
    /// No handshake completed before the accept's deadline.
    #[error("no connection before the accept deadline")]
    Timeout,
    /// One client's handshake failed; it has been disconnected.
    #[error("handshake with client ({}) failed: {source}", peer_label(peer))]
    Handshake {
        /// The client's credentials, if they could be read.
        peer: Option<PeerCredentials>,
        /// What went wrong.
        source: HandshakeError,
    },
    /// A system call of the listener failed (`accept4` at the fd limit, for example).
    #[error("{op} failed: {source}")]
    Io {
        /// The call.
        op: &'static str,
        /// The OS error.
        source: io::Error,
    },
}

fn peer_label(p: &Option<PeerCredentials>) -> String {
    p.map_or_else(|| "unknown".to_owned(), |c| c.to_string())
}

/// Why [`connect`](crate::connect) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The options are out of range.
    #[error("invalid options: {0}")]
    InvalidOptions(#[source] OptionsError),
    /// No listener could be reached at the path.
    #[error("cannot connect to {}: {source}{}", path.display(), connect_hint(source))]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// The OS error (`ENOENT`: no such socket; `ECONNREFUSED`: nobody listens on it).
        source: io::Error,
    },
    /// The handshake failed.
    #[error("handshake with {} failed: {source}", path.display())]
    Handshake {
        /// The socket path.
        path: PathBuf,
        /// What went wrong.
        source: HandshakeError,
    },
}

fn connect_hint(e: &io::Error) -> &'static str {
    if e.raw_os_error() == Some(rustix::io::Errno::CONNREFUSED.raw_os_error()) {
        " (nobody listens: a stale socket file?)"
    } else {
        ""
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{HelloError, Role, Whose};

    /// What we tell the peer speaks of its things as "your", never as "the peer's".
    #[test]
    fn reject_reasons_are_in_the_peers_terms() {
        let errors = [
            HandshakeError::Timeout {
                after: Duration::from_secs(5),
                waiting_for: "RING",
            },
            HandshakeError::Wire {
                waiting_for: "HELLO",
                source: WireError::Version(9),
            },
            HandshakeError::Unexpected {
                expected: "RING",
                got: "READY",
            },
            HandshakeError::TooLong {
                waiting_for: "RING",
            },
            HandshakeError::FdCount {
                waiting_for: "RING",
                expected: 3,
                got: 1,
            },
            HandshakeError::FdsTruncated {
                waiting_for: "RING",
                got: 8,
            },
            HandshakeError::Incompatible(Incompatibility::Hello {
                whose: Whose::Peers,
                error: HelloError::RingVersion(7),
            }),
            HandshakeError::Incompatible(Incompatibility::RingTooLarge {
                ring: Whose::Peers,
                capacity: 1 << 20,
                limit: 1 << 16,
                limited_by: "consumer",
            }),
            HandshakeError::Incompatible(Incompatibility::Role {
                got: Role::Server,
                expected: Role::Client,
            }),
            HandshakeError::BadRing(SetupError::BadWaiter {
                why: "not an epoll fd".into(),
            }),
            HandshakeError::BadRing(SetupError::RoleTaken("consumer")),
        ];
        for e in &errors {
            let ours = e.to_string();
            let (code, theirs) = e.reject().expect("worth telling");
            assert!(ours.contains("the peer's"), "{ours}");
            assert!(!theirs.contains("the peer"), "{code}: {theirs}");
            assert!(theirs.contains("your"), "{code}: {theirs}");
        }
        let ours = HandshakeError::Incompatible(Incompatibility::Hello {
            whose: Whose::Ours,
            error: HelloError::RingVersion(7),
        });
        assert_eq!(
            ours.to_string(),
            "incompatible peer: our HELLO: ring layout version 7, this side speaks 2"
        );
        let (code, theirs) = ours.reject().unwrap();
        assert_eq!(code, RejectCode::INCOMPATIBLE);
        assert_eq!(
            theirs,
            "the other side's HELLO: ring layout version 7, this side speaks 2"
        );
        assert!(
            HandshakeError::PeerClosed {
                waiting_for: "RING"
            }
            .reject()
            .is_none()
        );
    }
}
