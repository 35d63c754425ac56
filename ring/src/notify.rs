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
//! The sleeper never reads anyone's eventfd either: it polls the epoll fd and harvests the
//! edge with `epoll_wait` and a zero timeout, which cannot block whatever the peer does to the
//! epoll fd's flags. Every sleep has a timeout and the caller re-checks the ring after every
//! wake-up, so a peer that rings too often costs a loop turn, and one that never rings costs
//! latency, never liveness.

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

/// The peer's bell as seen from here: the epoll fd this side sleeps on.
#[derive(Debug)]
pub(crate) struct Wake {
    epoll: OwnedFd,
}

impl Wake {
    /// Take a waiter fd received from the peer, after checking it is an epoll instance.
    pub(crate) fn adopt(fd: OwnedFd) -> Result<Wake, SetupError> {
        check_waiter(fd.as_fd())?;
        Ok(Wake { epoll: fd })
    }

    /// A waiter for our own bell, for two handles in one process.
    pub(crate) fn local(bell: &Bell) -> io::Result<Wake> {
        Ok(Wake {
            epoll: bell.waiter.try_clone()?,
        })
    }

    /// Sleep until the bell rings, `peer` (if any) is readable or hung up, or `timeout`
    /// passes; then harvest the edge.
    pub(crate) fn wait(
        &self,
        timeout: Duration,
        peer: Option<BorrowedFd<'_>>,
    ) -> io::Result<Woken> {
        let ts = Timespec::try_from(timeout).unwrap_or(Timespec {
            tv_sec: i64::MAX,
            tv_nsec: 0,
        });
        let gone = PollFlags::IN | PollFlags::RDHUP | PollFlags::HUP | PollFlags::ERR;
        let mut fds = [
            PollFd::new(&self.epoll, PollFlags::IN),
            PollFd::from_borrowed_fd(peer.unwrap_or(self.epoll.as_fd()), gone),
        ];
        let n = if peer.is_some() { 2 } else { 1 };
        match poll(&mut fds[..n], Some(&ts)) {
            Ok(_) => {}
            Err(Errno::INTR) => return Ok(Woken::Signalled),
            Err(e) => return Err(e.into()),
        }
        if n == 2 && fds[1].revents().intersects(gone) {
            return Ok(Woken::PeerGone);
        }
        if fds[0].revents().is_empty() {
            return Ok(Woken::TimedOut);
        }
        self.reset();
        Ok(Woken::Signalled)
    }

    /// Harvest pending edges without waiting (`epoll_wait` with a zero timeout never blocks).
    pub(crate) fn reset(&self) {
        let mut events = [epoll::Event {
            flags: epoll::EventFlags::empty(),
            data: epoll::EventData::new_u64(0),
        }; 4];
        let _ = epoll::wait(&self.epoll, &mut events, Some(&Timespec::default()));
    }
}

impl AsFd for Wake {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.epoll.as_fd()
    }
}

/// A waiter fd must be an epoll instance: `anon_inode:[eventpoll]` in /proc/thread-self/fd.
fn check_waiter(fd: BorrowedFd<'_>) -> Result<(), SetupError> {
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
    Ok(())
}

/// True when `peer` reports hang-up or readability right now (spin-mode liveness check).
pub(crate) fn peer_gone(peer: BorrowedFd<'_>) -> bool {
    let gone = PollFlags::IN | PollFlags::RDHUP | PollFlags::HUP | PollFlags::ERR;
    let mut fds = [PollFd::from_borrowed_fd(peer, gone)];
    matches!(poll(&mut fds, Some(&Timespec::default())), Ok(1)) && fds[0].revents().intersects(gone)
}
