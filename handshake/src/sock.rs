//! Socket plumbing: `SOCK_SEQPACKET` (unix(7)), `sendmsg`/`recvmsg` with one `SCM_RIGHTS`
//! message (cmsg(3)), `poll`(2) against one deadline, `SO_PEERCRED`, `pidfd_open`(2).
//!
//! Every socket is non-blocking and close-on-exec; every send is `MSG_NOSIGNAL`; every
//! receive is `MSG_CMSG_CLOEXEC` into room for more fds than any packet may carry, so extras
//! and truncation show; received fds are `OwnedFd`s from the moment rustix hands them over.

use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec, poll};
use rustix::io::Errno;
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags,
    SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketFlags, SocketType, recvmsg,
    sendmsg, socket_with,
};

use crate::error::HandshakeError;
use crate::options::PeerCredentials;
use crate::wire::{self, Kind, MAX_PACKET, Packet, RING_FDS};

/// Room for this many fds per receive, exactly: more than any packet may carry, so a peer
/// that sends a few too many is seen (and they are closed); beyond this, `MSG_CTRUNC` says
/// so (docs/protocol.md §2.1).
pub(crate) const RECV_FDS: usize = 8;

/// `sizeof(struct cmsghdr)` on the 64-bit Linux targets this crate builds for.
const CMSGHDR: usize = 16;

/// The receive control buffer: `CMSG_SPACE(RECV_FDS * sizeof(int))` bytes, aligned for a
/// `cmsghdr`. The kernel installs `(msg_controllen - sizeof(cmsghdr)) / sizeof(int)` fds at
/// most, so the buffer's length is the limit. (`rustix::cmsg_space!` adds slack to align an
/// unaligned buffer; left in, that slack made room for 8 to 10 fds depending on where the
/// buffer happened to sit on the stack.)
#[repr(C, align(8))]
struct RecvControl([MaybeUninit<u8>; CMSGHDR + RECV_FDS * 4]);

const _: () = {
    // The fds fill whole 8-byte units, so CMSG_SPACE adds no padding after them.
    assert!(RECV_FDS * 4 % 8 == 0);
    // Our exact size is what rustix's macro asks for less its alignment slack.
    assert!(
        size_of::<RecvControl>() + align_of::<RecvControl>()
            == rustix::cmsg_space!(ScmRights(RECV_FDS))
    );
};

/// A new unbound `SOCK_SEQPACKET` Unix socket, non-blocking and close-on-exec.
pub(crate) fn seqpacket() -> rustix::io::Result<OwnedFd> {
    socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )
}

/// Sleep until `fd` reports one of `flags` (or hang-up/error) or `deadline` passes.
/// Returns `false` on timeout. EINTR restarts the wait with the time left.
pub(crate) fn wait_for(
    fd: BorrowedFd<'_>,
    flags: PollFlags,
    deadline: Instant,
) -> rustix::io::Result<bool> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(false);
        }
        let ts = timespec(left);
        let mut fds = [PollFd::from_borrowed_fd(fd, flags)];
        match poll(&mut fds, Some(&ts)) {
            Ok(0) | Err(Errno::INTR) => continue,
            Ok(_) => return Ok(true),
            Err(e) => return Err(e),
        }
    }
}

pub(crate) fn timespec(d: Duration) -> Timespec {
    Timespec::try_from(d).unwrap_or(Timespec {
        tv_sec: i64::MAX,
        tv_nsec: 0,
    })
}

/// True if `fd` reports readability, hang-up or an error right now (zero-timeout poll).
pub(crate) fn fired(fd: BorrowedFd<'_>) -> bool {
    let flags = PollFlags::IN | PollFlags::RDHUP | PollFlags::HUP | PollFlags::ERR;
    let mut fds = [PollFd::from_borrowed_fd(fd, flags)];
    matches!(poll(&mut fds, Some(&Timespec::default())), Ok(1))
}

/// Send one packet, with `fds` (at most three) in one `SCM_RIGHTS` message. `MSG_NOSIGNAL`:
/// a closed peer is `EPIPE`, never `SIGPIPE`. If the socket is full, wait for room until
/// `deadline` (`None`: do not wait).
pub(crate) fn send_packet(
    sock: BorrowedFd<'_>,
    bytes: &[u8],
    fds: &[BorrowedFd<'_>],
    deadline: Option<Instant>,
) -> rustix::io::Result<()> {
    assert!(fds.len() <= RING_FDS);
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(RING_FDS))];
    loop {
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !fds.is_empty() {
            let pushed = control.push(SendAncillaryMessage::ScmRights(fds));
            assert!(pushed, "control buffer sized for {RING_FDS} fds");
        }
        let flags = SendFlags::NOSIGNAL | SendFlags::DONTWAIT;
        match sendmsg(sock, &[IoSlice::new(bytes)], &mut control, flags) {
            // SOCK_SEQPACKET sends the whole packet or nothing.
            Ok(n) if n == bytes.len() => return Ok(()),
            Ok(_) => return Err(Errno::MSGSIZE),
            Err(Errno::INTR) => {}
            Err(Errno::AGAIN) => match deadline {
                Some(d) if wait_for(sock, PollFlags::OUT, d)? => {}
                _ => return Err(Errno::AGAIN),
            },
            Err(e) => return Err(e),
        }
    }
}

/// One packet as it came off the socket, before anything is believed.
#[derive(Debug)]
pub(crate) struct Received {
    len: usize,
    fds: Vec<OwnedFd>,
    /// `MSG_TRUNC`: the packet was longer than [`MAX_PACKET`].
    too_long: bool,
    /// `MSG_CTRUNC`: some fds did not fit or could not be installed.
    fds_truncated: bool,
}

/// Receive one packet without blocking (`Ok(None)`: nothing there yet). Every fd that came
/// with it is in the result, close-on-exec, owned.
pub(crate) fn try_recv_packet(
    sock: BorrowedFd<'_>,
    buf: &mut [u8; MAX_PACKET],
) -> rustix::io::Result<Option<Received>> {
    let mut space = RecvControl([MaybeUninit::uninit(); CMSGHDR + RECV_FDS * 4]);
    let mut control = RecvAncillaryBuffer::new(&mut space.0);
    let flags = RecvFlags::CMSG_CLOEXEC | RecvFlags::DONTWAIT;
    let mut reset = false;
    let msg = loop {
        match recvmsg(sock, &mut [IoSliceMut::new(buf)], &mut control, flags) {
            Ok(msg) => break msg,
            // A peer that closes with our packets unread makes the kernel report ECONNRESET
            // once, ahead of anything it sent before closing (its REJECT, say): look again.
            Err(Errno::CONNRESET) if !reset => reset = true,
            Err(Errno::AGAIN) if reset => return Err(Errno::CONNRESET),
            Err(Errno::AGAIN) => return Ok(None),
            Err(Errno::INTR) => {}
            Err(e) => return Err(e),
        }
    };
    // Take every fd at once; anything rustix does not recognise it closes when `control`
    // drops. The kernel merges several SCM_RIGHTS messages of one packet into one.
    let mut fds = Vec::new();
    for m in control.drain() {
        if let RecvAncillaryMessage::ScmRights(it) = m {
            fds.extend(it);
        }
    }
    Ok(Some(Received {
        len: msg.bytes,
        fds,
        too_long: msg.flags.contains(ReturnFlags::TRUNC),
        fds_truncated: msg.flags.contains(ReturnFlags::CTRUNC),
    }))
}

/// Judge a received packet: the expected kind with exactly the fds it must carry (three with
/// RING, none otherwise). A REJECT becomes [`HandshakeError::Rejected`]. On any error every
/// received fd is closed (dropped).
pub(crate) fn expect(
    sock: BorrowedFd<'_>,
    got: Received,
    buf: &[u8; MAX_PACKET],
    expected: Kind,
) -> Result<(Packet, Vec<OwnedFd>), HandshakeError> {
    let waiting_for = expected.name();
    let n_fds = got.fds.len();
    if got.fds_truncated {
        return Err(HandshakeError::FdsTruncated {
            waiting_for,
            got: n_fds,
        });
    }
    if got.too_long {
        return Err(HandshakeError::TooLong { waiting_for });
    }
    if got.len == 0 && n_fds == 0 && hung_up(sock) {
        return Err(HandshakeError::PeerClosed { waiting_for });
    }
    let packet = wire::decode(&buf[..got.len]).map_err(|source| HandshakeError::Wire {
        waiting_for,
        source,
    })?;
    if let Packet::Reject { code, reason } = packet {
        return Err(HandshakeError::Rejected { code, reason });
    }
    if packet.kind() != expected {
        return Err(HandshakeError::Unexpected {
            expected: waiting_for,
            got: packet.kind().name(),
        });
    }
    let want = if expected == Kind::Ring { RING_FDS } else { 0 };
    if n_fds != want {
        return Err(HandshakeError::FdCount {
            waiting_for,
            expected: want,
            got: n_fds,
        });
    }
    Ok((packet, got.fds))
}

/// After a send failed because the peer hung up: did it leave a REJECT saying why?
pub(crate) fn closed_because(sock: BorrowedFd<'_>, next: &'static str) -> HandshakeError {
    let mut buf = [0u8; MAX_PACKET];
    if let Ok(Some(got)) = try_recv_packet(sock, &mut buf) {
        if let Ok(Packet::Reject { code, reason }) = wire::decode(&buf[..got.len]) {
            return HandshakeError::Rejected { code, reason };
        }
    }
    HandshakeError::PeerClosed { waiting_for: next }
}

/// A failed `recvmsg`: a reset connection is the peer going away.
pub(crate) fn recv_error(expected: Kind) -> impl FnOnce(Errno) -> HandshakeError {
    move |e| match e {
        Errno::CONNRESET => HandshakeError::PeerClosed {
            waiting_for: expected.name(),
        },
        e => HandshakeError::io("recvmsg")(e),
    }
}

fn hung_up(sock: BorrowedFd<'_>) -> bool {
    let flags = PollFlags::RDHUP | PollFlags::HUP;
    let mut fds = [PollFd::from_borrowed_fd(sock, flags)];
    matches!(poll(&mut fds, Some(&Timespec::default())), Ok(1))
        && fds[0].revents().intersects(flags)
}

/// The peer's credentials as the kernel recorded them at connect/listen time.
pub(crate) fn peer_credentials(sock: impl AsFd) -> Result<PeerCredentials, HandshakeError> {
    let c = rustix::net::sockopt::socket_peercred(sock)
        .map_err(HandshakeError::io("getsockopt(SO_PEERCRED)"))?;
    Ok(PeerCredentials {
        pid: u32::try_from(c.pid.as_raw_nonzero().get()).ok(),
        uid: c.uid.as_raw(),
        gid: c.gid.as_raw(),
    })
}

/// A pidfd for the peer, to notice its death even if a forked child keeps the socket open.
/// `None` if the pid is not visible here or the process is already gone (the socket will
/// say so).
pub(crate) fn peer_pidfd(peer: &PeerCredentials) -> Option<OwnedFd> {
    let pid = rustix::process::Pid::from_raw(i32::try_from(peer.pid?).ok()?)?;
    rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).ok()
}

/// `epoll_wait` for up to 64 events, or until `timeout` (`None`: no limit); appends each
/// event's key to `keys`. EINTR returns with nothing.
pub(crate) fn epoll_wait(
    epoll: BorrowedFd<'_>,
    timeout: Option<Duration>,
    keys: &mut Vec<u64>,
) -> rustix::io::Result<()> {
    use rustix::event::epoll;
    let mut buf = [MaybeUninit::<epoll::Event>::uninit(); 64];
    let ts = timeout.map(timespec);
    match epoll::wait(epoll, &mut buf, ts.as_ref()) {
        Ok((events, _)) => {
            keys.extend(events.iter().map(|e| e.data.u64()));
            Ok(())
        }
        Err(Errno::INTR) => Ok(()),
        Err(e) => Err(e),
    }
}
