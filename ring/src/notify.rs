//! Wake-ups: eventfd(2) rung through epoll(7).
//!
//! Each side rings a [`Bell`] that only it holds: a private, non-blocking eventfd, watched
//! edge-triggered by an epoll instance. It hands the peer only the epoll fd, and the peer
//! sleeps on that. No other process ever holds the eventfd's open file description, so no peer
//! can clear `O_NONBLOCK` on it, drain its counter or fill it: ringing never blocks and is
//! never stolen. (An eventfd shared over SCM_RIGHTS shares its file description, flags
//! included, and cannot be reopened to get a private one; a peer that cleared `O_NONBLOCK` and
//! saturated the counter could block the ringer's `write` forever. This design removes that.)
//!
//! The sleeper never reads anyone's eventfd either: it sleeps in a private epoll instance that
//! watches the peer's epoll fd edge-triggered (see [`Wake`]), which nothing the peer does can
//! make block past its timeout. Every sleep has a timeout and the caller re-checks the ring
//! after every wake-up, so a peer that rings too often costs a loop turn, and one that never
//! rings costs latency, never liveness.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::time::Duration;

use rustix::event::{EventfdFlags, PollFd, PollFlags, Timespec, epoll, eventfd, poll};
use rustix::io::Errno;

use crate::error::SetupError;

/// Why a sleep ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Woken {
    /// The bell rang (or a signal interrupted the sleep): re-check the ring.
    Signalled,
    /// The timeout passed.
    TimedOut,
    /// The peer watch fd reported hang-up or readability.
    PeerGone,
}

/// What this side rings to wake its peer: a private eventfd and the epoll fd that watches it.
/// Send [`Bell::waiter_fd`] to the peer (it sleeps on it); keep the bell.
#[derive(Debug)]
pub struct Bell {
    eventfd: OwnedFd,
    waiter: OwnedFd,
}

impl Bell {
    /// A new bell: `eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)` watched with
    /// `EPOLLIN | EPOLLET` by `epoll_create1(EPOLL_CLOEXEC)`.
    ///
    /// # Errors
    ///
    /// The OS error of `eventfd`, `epoll_create1` or `epoll_ctl`.
    pub fn new() -> io::Result<Bell> {
        let eventfd = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?;
        let waiter = epoll::create(epoll::CreateFlags::CLOEXEC)?;
        epoll::add(
            &waiter,
            &eventfd,
            epoll::EventData::new_u64(0),
            epoll::EventFlags::IN | epoll::EventFlags::ET,
        )?;
        Ok(Bell { eventfd, waiter })
    }

    /// The epoll fd to hand to the peer, which sleeps on it.
    pub fn waiter_fd(&self) -> BorrowedFd<'_> {
        self.waiter.as_fd()
    }

    /// Check that `fd`, received from a peer as its waiter, is one we can sleep on and hand
    /// out: an epoll instance, which our own epoll can watch, and which is shallow enough for
    /// that epoll to fit into one more (the caller's event loop or a `Selector`). The same
    /// probe [`Ring::producer`](crate::Ring::producer) and
    /// [`Ring::consumer`](crate::Ring::consumer) run when they adopt it; call this to refuse a
    /// bad waiter before creating anything for it.
    ///
    /// # Errors
    ///
    /// [`SetupError::BadWaiter`] saying what is wrong with it.
    pub fn check_waiter(fd: BorrowedFd<'_>) -> Result<(), SetupError> {
        probe(fd).map(drop)
    }

    /// Ring: every write is a new edge for the waiter, even while the counter is non-zero.
    pub(crate) fn ring(&self) {
        let one = 1u64.to_ne_bytes();
        loop {
            match rustix::io::write(&self.eventfd, &one) {
                Ok(_) => return,
                Err(Errno::INTR) => continue,
                // Saturated after 2^64 - 2 rings (only we write it): reset and ring again.
                Err(Errno::AGAIN) => {
                    let _ = rustix::io::read(&self.eventfd, &mut [0u8; 8]);
                }
                // Nothing else is documented for a valid eventfd; the sleeper re-checks on a
                // timer anyway, so a lost ring costs latency, not a message.
                Err(_) => return,
            }
        }
    }
}

/// The peer's bell as seen from here. We sleep in our own private epoll instance, which
/// watches the peer's waiter edge-triggered and, once set, the peer-watch fd level-triggered:
/// one `epoll_wait` both sleeps and consumes the edge (the peer's waiter itself is never
/// harvested, so a wake-up costs the ringer's `write` and our `epoll_wait`, as a bare eventfd
/// ping-pong does). Each ring of the peer's bell wakes its waiter's pollers, so our outer edge
/// fires on every ring even while the inner instance stays ready, and a peer that harvests its
/// own waiter cannot steal it.
#[derive(Debug)]
pub(crate) struct Wake {
    epoll: OwnedFd,
    /// The peer's waiter, kept open while registered.
    _waiter: OwnedFd,
    /// The peer-watch fd registered in `epoll`, kept open while registered.
    watched: Option<std::sync::Arc<OwnedFd>>,
}

const BELL: u64 = 0;
const PEER: u64 = 1;

impl Wake {
    /// Take a waiter fd received from the peer, after the probe of [`Bell::check_waiter`].
    pub(crate) fn adopt(fd: OwnedFd) -> Result<Wake, SetupError> {
        let epoll = probe(fd.as_fd())?;
        Ok(Wake {
            epoll,
            _waiter: fd,
            watched: None,
        })
    }

    /// A waiter for our own bell, for two handles in one process.
    pub(crate) fn local(bell: &Bell) -> io::Result<Wake> {
        let epoll = epoll::create(epoll::CreateFlags::CLOEXEC)?;
        Ok(Wake::over(epoll, bell.waiter.try_clone()?)?)
    }

    fn over(epoll: OwnedFd, waiter: OwnedFd) -> rustix::io::Result<Wake> {
        epoll::add(
            &epoll,
            &waiter,
            epoll::EventData::new_u64(BELL),
            epoll::EventFlags::IN | epoll::EventFlags::ET,
        )?;
        Ok(Wake {
            epoll,
            _waiter: waiter,
            watched: None,
        })
    }

    /// Watch `peer` too (replacing any earlier one): its readability or hang-up wakes us.
    pub(crate) fn watch(&mut self, peer: Option<std::sync::Arc<OwnedFd>>) -> io::Result<()> {
        if let Some(old) = self.watched.take() {
            let _ = epoll::delete(&self.epoll, &*old);
        }
        if let Some(fd) = &peer {
            let gone = epoll::EventFlags::IN
                | epoll::EventFlags::RDHUP
                | epoll::EventFlags::HUP
                | epoll::EventFlags::ERR;
            epoll::add(&self.epoll, &**fd, epoll::EventData::new_u64(PEER), gone)?;
        }
        self.watched = peer;
        Ok(())
    }

    /// Sleep until the peer's bell rings, the watched peer fd is readable or hung up, or
    /// `timeout` passes.
    pub(crate) fn wait(&self, timeout: Duration) -> io::Result<Woken> {
        let ts = Timespec::try_from(timeout).unwrap_or(Timespec {
            tv_sec: i64::MAX,
            tv_nsec: 0,
        });
        let mut events = [epoll::Event {
            flags: epoll::EventFlags::empty(),
            data: epoll::EventData::new_u64(BELL),
        }; 2];
        let n = match epoll::wait(&self.epoll, &mut events, Some(&ts)) {
            Ok(n) => n,
            Err(Errno::INTR) => return Ok(Woken::Signalled),
            Err(e) => return Err(e.into()),
        };
        let events = &events[..n];
        if events.iter().any(|e| e.data.u64() == PEER) {
            return Ok(Woken::PeerGone);
        }
        Ok(if n == 0 {
            Woken::TimedOut
        } else {
            Woken::Signalled
        })
    }

    /// Consume pending edges without waiting (`epoll_wait` with a zero timeout never blocks).
    pub(crate) fn reset(&self) {
        let mut events = [epoll::Event {
            flags: epoll::EventFlags::empty(),
            data: epoll::EventData::new_u64(BELL),
        }; 2];
        let _ = epoll::wait(&self.epoll, &mut events, Some(&Timespec::default()));
    }
}

impl AsFd for Wake {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.epoll.as_fd()
    }
}

/// The one check of a peer's waiter: it must be an epoll instance (`anon_inode:[eventpoll]` in
/// /proc/thread-self/fd); our own epoll instance must be able to watch it (a peer that nested
/// it too deeply gets `ELOOP`); and our instance must fit into one more, the caller's event
/// loop (epoll nests at most 5 deep, so a waiter nested 4 deep would pass the first two steps
/// and break the caller's first `epoll_ctl` with a bare "Too many levels of symbolic links").
/// Returns our epoll instance, watching the waiter edge-triggered.
fn probe(fd: BorrowedFd<'_>) -> Result<OwnedFd, SetupError> {
    let n = fd.as_raw_fd();
    let bad = |why: String| SetupError::BadWaiter { why };
    let link = std::fs::read_link(format!("/proc/thread-self/fd/{n}"))
        .map_err(|e| bad(format!("cannot inspect /proc/thread-self/fd/{n}: {e}")))?;
    if link.as_os_str() != "anon_inode:[eventpoll]" {
        return Err(bad(format!(
            "it is {}, not an epoll instance",
            link.display()
        )));
    }
    let create = || {
        epoll::create(epoll::CreateFlags::CLOEXEC).map_err(|e| SetupError::Io {
            op: "epoll_create1",
            source: e.into(),
        })
    };
    let ours = create()?;
    epoll::add(
        &ours,
        fd,
        epoll::EventData::new_u64(BELL),
        epoll::EventFlags::IN | epoll::EventFlags::ET,
    )
    .map_err(|e| bad(format!("it cannot be watched (epoll_ctl: {e})")))?;
    // Closing `outer` removes the registration again.
    let outer = create()?;
    match epoll::add(
        &outer,
        &ours,
        epoll::EventData::new_u64(0),
        epoll::EventFlags::IN,
    ) {
        Ok(()) => Ok(ours),
        Err(Errno::LOOP) => Err(bad(
            "it is an epoll instance nested so deeply that our epoll over it could not be \
             watched from an event loop (ELOOP one level up)"
                .into(),
        )),
        Err(e) => Err(SetupError::Io {
            op: "epoll_ctl",
            source: e.into(),
        }),
    }
}

/// True when `peer` reports hang-up or readability right now (spin-mode liveness check).
pub(crate) fn peer_gone(peer: BorrowedFd<'_>) -> bool {
    let gone = PollFlags::IN | PollFlags::RDHUP | PollFlags::HUP | PollFlags::ERR;
    let mut fds = [PollFd::from_borrowed_fd(peer, gone)];
    matches!(poll(&mut fds, Some(&Timespec::default())), Ok(1)) && fds[0].revents().intersects(gone)
}
