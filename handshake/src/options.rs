//! What a side asks for and what it accepts: ring sizes, waiting, deadline, peer policy.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use shmpipe_ring::{WaitStrategy, layout};

use crate::wire::{Hello, Role};

/// Default [`Options::max_ring`]: 64 MiB.
pub const DEFAULT_MAX_RING: usize = 64 << 20;
/// Default [`Options::handshake_timeout`]: 5 s.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Default [`Options::max_pending`]: 64 handshakes in progress.
pub const DEFAULT_MAX_PENDING: usize = 64;

/// Who the peer process is, as the kernel recorded it when the socket connected
/// (`SO_PEERCRED`, unix(7)): it cannot be forged, but it is a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerCredentials {
    /// The peer's process id in our pid namespace (`None` if it is not visible here).
    pub pid: Option<u32>,
    /// Effective user id.
    pub uid: u32,
    /// Effective group id.
    pub gid: u32,
}

impl fmt::Display for PeerCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.pid {
            Some(pid) => write!(f, "pid {pid}, uid {}, gid {}", self.uid, self.gid),
            None => write!(f, "pid ?, uid {}, gid {}", self.uid, self.gid),
        }
    }
}

type Check = Arc<dyn Fn(&PeerCredentials) -> bool + Send + Sync>;

/// Which peers a side accepts, judged on the peer's [`PeerCredentials`]. The listener checks
/// the connecting process before reading a byte from it; `connect` checks the listening
/// process before sending one.
#[derive(Clone, Default)]
pub struct PeerPolicy {
    rule: Rule,
}

#[derive(Clone, Default)]
enum Rule {
    /// The peer's uid equals ours (the default).
    #[default]
    SameUser,
    /// Anyone who can reach the socket.
    Anyone,
    /// The peer's uid is in `uids` or its gid in `gids`.
    Allow { uids: Vec<u32>, gids: Vec<u32> },
    /// A function decides.
    Custom(Check),
}

impl fmt::Debug for PeerPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.rule {
            Rule::SameUser => f.write_str("PeerPolicy::same_user()"),
            Rule::Anyone => f.write_str("PeerPolicy::anyone()"),
            Rule::Allow { uids, gids } => f
                .debug_struct("PeerPolicy::allow")
                .field("uids", uids)
                .field("gids", gids)
                .finish(),
            Rule::Custom(_) => f.write_str("PeerPolicy::custom(..)"),
        }
    }
}

impl PeerPolicy {
    /// Accept only peers running as our effective uid (the default).
    pub fn same_user() -> Self {
        PeerPolicy {
            rule: Rule::SameUser,
        }
    }

    /// Accept any peer that can reach the socket (the file's permissions still apply).
    pub fn anyone() -> Self {
        PeerPolicy { rule: Rule::Anyone }
    }

    /// Accept peers whose uid is in `uids` or whose (primary) gid is in `gids`. Our own uid
    /// is not implied: list it if you want it.
    pub fn allow(uids: impl IntoIterator<Item = u32>, gids: impl IntoIterator<Item = u32>) -> Self {
        PeerPolicy {
            rule: Rule::Allow {
                uids: uids.into_iter().collect(),
                gids: gids.into_iter().collect(),
            },
        }
    }

    /// Let `f` decide. It runs on the thread that accepts or connects, before the handshake.
    pub fn custom(f: impl Fn(&PeerCredentials) -> bool + Send + Sync + 'static) -> Self {
        PeerPolicy {
            rule: Rule::Custom(Arc::new(f)),
        }
    }

    /// Does the policy accept this peer?
    pub fn allows(&self, peer: &PeerCredentials) -> bool {
        match &self.rule {
            Rule::SameUser => peer.uid == rustix::process::geteuid().as_raw(),
            Rule::Anyone => true,
            Rule::Allow { uids, gids } => uids.contains(&peer.uid) || gids.contains(&peer.gid),
            Rule::Custom(f) => f(peer),
        }
    }
}

/// Why [`Options`] are impossible.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum OptionsError {
    /// The send ring's capacity, or the maximum message for it.
    SendRing(layout::ShapeError),
    /// The receive capacity is neither 0 nor a possible capacity.
    RecvCapacity(layout::ShapeError),
    /// `max_ring` is below one of this side's own ring sizes.
    MaxRing {
        /// The `max_ring` asked for.
        max_ring: usize,
        /// The send capacity.
        send: usize,
        /// The receive capacity (0: no wish).
        recv: usize,
    },
    /// `max_pending` is 0.
    MaxPending,
}

impl std::fmt::Display for OptionsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OptionsError::SendRing(e @ layout::ShapeError::Capacity(_)) => write!(f, "send {e}"),
            OptionsError::SendRing(e) => write!(f, "{e}"),
            OptionsError::RecvCapacity(e) => write!(f, "receive {e}"),
            OptionsError::MaxRing {
                max_ring,
                send,
                recv,
            } => write!(
                f,
                "max_ring {max_ring} is below this side's own ring sizes ({send}, {recv})"
            ),
            OptionsError::MaxPending => write!(f, "max_pending must be at least 1"),
        }
    }
}

impl std::error::Error for OptionsError {}

/// How a side sets up its half of a connection. Both `connect` and `Listener::bind` take one.
///
/// Each side creates the ring it sends on. Its capacity is the larger of this side's
/// [`send_capacity`](Options::send_capacity) and the peer's
/// [`recv_capacity`](Options::recv_capacity), and must not exceed either side's
/// [`max_ring`](Options::max_ring) (docs/protocol.md §2.4).
#[derive(Debug, Clone)]
pub struct Options {
    pub(crate) send_capacity: usize,
    pub(crate) recv_capacity: usize,
    pub(crate) max_message: usize,
    pub(crate) max_ring: usize,
    pub(crate) wait: WaitStrategy,
    pub(crate) handshake_timeout: Duration,
    pub(crate) policy: PeerPolicy,
    pub(crate) max_pending: usize,
    pub(crate) wait_for_listener: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            send_capacity: shmpipe_ring::DEFAULT_CAPACITY,
            recv_capacity: 0,
            max_message: 0,
            max_ring: DEFAULT_MAX_RING,
            wait: WaitStrategy::default(),
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            policy: PeerPolicy::default(),
            max_pending: DEFAULT_MAX_PENDING,
            wait_for_listener: Duration::ZERO,
        }
    }
}

impl Options {
    /// 1 MiB send ring, no wish for the receive ring, rings up to 64 MiB accepted,
    /// spin-then-block waits, a 5 s handshake, same-uid peers only.
    pub fn new() -> Self {
        Self::default()
    }

    /// Capacity of the ring this side sends on: a power of two from
    /// [`MIN_CAPACITY`](shmpipe_ring::MIN_CAPACITY) to [`MAX_CAPACITY`](shmpipe_ring::MAX_CAPACITY).
    /// The peer's [`recv_capacity`](Options::recv_capacity) may make it larger.
    pub fn send_capacity(mut self, bytes: usize) -> Self {
        self.send_capacity = bytes;
        self
    }

    /// The least capacity this side wants on the ring it receives on (0: whatever the peer
    /// sends with). The peer creates that ring, so this is a request the peer's
    /// [`max_ring`](Options::max_ring) may refuse.
    pub fn recv_capacity(mut self, bytes: usize) -> Self {
        self.recv_capacity = bytes;
        self
    }

    /// Set both [`send_capacity`](Options::send_capacity) and
    /// [`recv_capacity`](Options::recv_capacity).
    pub fn capacity(self, bytes: usize) -> Self {
        self.send_capacity(bytes).recv_capacity(bytes)
    }

    /// Largest message this side sends (0, the default: a quarter of the send ring). At most
    /// half the send capacity less 8.
    pub fn max_message(mut self, bytes: usize) -> Self {
        self.max_message = bytes;
        self
    }

    /// Largest ring this side will create or map, in data bytes (default 64 MiB). Bounds
    /// what a peer can make us map, and what it can make us allocate: a peer's
    /// [`recv_capacity`](Options::recv_capacity) grows the ring this side creates (and
    /// `fallocate`s) up to this limit, once per connection.
    pub fn max_ring(mut self, bytes: usize) -> Self {
        self.max_ring = bytes;
        self
    }

    /// How the connection's sender and receiver wait (each can change its own later).
    pub fn wait(mut self, wait: WaitStrategy) -> Self {
        self.wait = wait;
        self
    }

    /// One deadline for the whole handshake, from connect (or accept) to a usable
    /// connection. A peer that stalls longer gets an error and its fds are freed.
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// Client only: how long [`connect`](crate::connect) keeps retrying (every 10 ms) while
    /// there is no socket at the path yet (`ENOENT`) or nobody listens on it (`ECONNREFUSED`),
    /// for a client started together with its server (default: zero, fail at once). The
    /// handshake's own deadline starts once connected.
    pub fn wait_for_listener(mut self, wait: Duration) -> Self {
        self.wait_for_listener = wait;
        self
    }

    /// Which peers to accept (default: same uid).
    pub fn peer_policy(mut self, policy: PeerPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Listener only: the most handshakes in progress at once (default 64). Further clients
    /// wait in the socket's backlog until a handshake finishes or times out.
    pub fn max_pending(mut self, n: usize) -> Self {
        self.max_pending = n;
        self
    }

    /// Check the numbers without touching the system.
    ///
    /// # Errors
    ///
    /// An [`OptionsError`] naming the first impossible number.
    pub fn validate(&self) -> Result<(), OptionsError> {
        let cap = self.send_capacity;
        layout::check_shape(cap as u64, self.max_message as u64).map_err(OptionsError::SendRing)?;
        let rc = self.recv_capacity;
        if rc != 0 {
            layout::check_capacity(rc as u64).map_err(OptionsError::RecvCapacity)?;
        }
        if self.max_ring < cap || self.max_ring < rc {
            return Err(OptionsError::MaxRing {
                max_ring: self.max_ring,
                send: cap,
                recv: rc,
            });
        }
        if self.max_pending == 0 {
            return Err(OptionsError::MaxPending);
        }
        Ok(())
    }

    pub(crate) fn hello(&self, role: Role) -> Hello {
        Hello {
            role,
            ring_version: layout::VERSION,
            send_capacity: self.send_capacity as u64,
            max_message: self.max_message as u64,
            recv_capacity: self.recv_capacity as u64,
            max_ring: self.max_ring.min(layout::MAX_CAPACITY) as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hex dump in docs/protocol.md §2.3.
    #[test]
    fn default_client_hello_is_the_documented_one() {
        let doc = "53 48 4d 48 01 00 01 00  01 00 00 00 02 00 00 00
                   00 00 10 00 00 00 00 00  00 00 00 00 00 00 00 00
                   00 00 00 00 00 00 00 00  00 00 00 04 00 00 00 00
                   00 00 00 00 00 00 00 00  00 00 00 00 00 00 00 00";
        let bytes: Vec<u8> = doc
            .split_whitespace()
            .map(|b| u8::from_str_radix(b, 16).unwrap())
            .collect();
        assert_eq!(Options::new().hello(Role::Client).encode().to_vec(), bytes);
    }

    #[test]
    fn policies() {
        let me = rustix::process::geteuid().as_raw();
        let peer = |uid, gid| PeerCredentials {
            pid: Some(1),
            uid,
            gid,
        };
        assert!(PeerPolicy::default().allows(&peer(me, 5)));
        assert!(!PeerPolicy::same_user().allows(&peer(me + 1, 5)));
        assert!(PeerPolicy::anyone().allows(&peer(me + 1, 5)));
        let set = PeerPolicy::allow([7], [9]);
        assert!(set.allows(&peer(7, 0)) && set.allows(&peer(8, 9)) && !set.allows(&peer(me, 0)));
        assert!(PeerPolicy::custom(|p| p.gid == 3).allows(&peer(0, 3)));
        assert_eq!(
            format!("{:?}", PeerPolicy::custom(|_| true)),
            "PeerPolicy::custom(..)"
        );
    }
}
