//! Wake-ups over an eventfd (eventfd(2)), one per direction.
//!
//! The eventfd's open file description is shared with the peer (SCM_RIGHTS), so the peer can
//! read our counts, fill the counter, or clear `O_NONBLOCK` under us. Hence: we read only with
//! `preadv2(RWF_NOWAIT)`, which never blocks whatever the file flags say; we write with
//! `O_NONBLOCK` set and take EAGAIN (counter saturated) as "already signalled"; every sleep has
//! a timeout and the caller re-checks the ring after every wake-up, real or not.

use std::io::{self, IoSliceMut};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Duration;

use rustix::event::{EventfdFlags, PollFd, PollFlags, Timespec, eventfd, poll};
use rustix::io::{Errno, ReadWriteFlags};

/// Why a sleep ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Woken {
    /// The counter was non-zero (or a signal interrupted the sleep): re-check the ring.
    Signalled,
    /// The timeout passed.
    TimedOut,
    /// The peer watch fd reported hang-up or readability.
    PeerGone,
}

/// One eventfd: the sleeping side waits on it, the other side writes it.
#[derive(Debug)]
pub(crate) struct Notifier {
    fd: OwnedFd,
}

impl Notifier {
    /// A fresh non-blocking, close-on-exec eventfd with a zero counter.
    pub(crate) fn new() -> io::Result<Notifier> {
        let fd = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?;
        Ok(Notifier { fd })
    }

    /// Adopt a validated eventfd received from the peer, forcing `O_NONBLOCK` on it.
    pub(crate) fn adopt(fd: OwnedFd) -> io::Result<Notifier> {
        let flags = rustix::fs::fcntl_getfl(&fd)?;
        rustix::fs::fcntl_setfl(&fd, flags | rustix::fs::OFlags::NONBLOCK)?;
        Ok(Notifier { fd })
    }

    /// Add one to the counter. EAGAIN means the counter is saturated, which already wakes
    /// the sleeper, so it counts as success.
    pub(crate) fn signal(&self) -> io::Result<()> {
        loop {
            match rustix::io::write(&self.fd, &1u64.to_ne_bytes()) {
                Ok(_) | Err(Errno::AGAIN) => return Ok(()),
                Err(Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Sleep until the counter is non-zero, `peer` (if any) is readable or hung up, or
    /// `timeout` passes; then reset the counter without blocking.
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
            PollFd::new(&self.fd, PollFlags::IN),
            PollFd::from_borrowed_fd(peer.unwrap_or(self.fd.as_fd()), gone),
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

    /// Zero the counter. RWF_NOWAIT: never blocks, even if the peer cleared O_NONBLOCK and
    /// read the count first (then we get EAGAIN, which is fine).
    fn reset(&self) {
        let mut buf = [0u8; 8];
        let _ = rustix::io::preadv2(
            &self.fd,
            &mut [IoSliceMut::new(&mut buf)],
            u64::MAX,
            ReadWriteFlags::NOWAIT,
        );
    }
}

impl AsFd for Notifier {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// True when `peer` reports hang-up or readability right now (spin-mode liveness check).
pub(crate) fn peer_gone(peer: BorrowedFd<'_>) -> bool {
    let gone = PollFlags::IN | PollFlags::RDHUP | PollFlags::HUP | PollFlags::ERR;
    let mut fds = [PollFd::from_borrowed_fd(peer, gone)];
    matches!(poll(&mut fds, Some(&Timespec::default())), Ok(1)) && fds[0].revents().intersects(gone)
}
