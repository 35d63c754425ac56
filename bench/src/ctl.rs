//! The control channel between the parent and a worker: one end of a `SOCK_SEQPACKET`
//! socketpair (unix(7)), given to the worker as its stdin. Each message is one JSON document;
//! fds travel with it as `SCM_RIGHTS` and arrive close-on-exec (`MSG_CMSG_CLOEXEC`).

use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Instant;

use rustix::event::{PollFd, PollFlags, Timespec, poll};
use rustix::io::Errno;
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, SocketFlags, SocketType,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::Error;

/// Largest control message (a job, a round report).
const MAX_MSG: usize = 1 << 16;
/// Most fds one message carries (two rings: six).
pub(crate) const MAX_FDS: usize = 8;

/// One end of a control channel.
#[derive(Debug)]
pub(crate) struct Ctl {
    fd: OwnedFd,
}

impl Ctl {
    /// A connected pair: ours, and the fd to give the worker as stdin.
    pub(crate) fn pair() -> Result<(Ctl, OwnedFd), Error> {
        let (a, b) = rustix::net::socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )
        .map_err(Error::os("socketpair(control)"))?;
        Ok((Ctl { fd: a }, b))
    }

    /// The worker's end: its stdin.
    pub(crate) fn from_stdin() -> Result<Ctl, Error> {
        let fd = std::io::stdin()
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| Error::Io {
                op: "dup(stdin)",
                source: e,
            })?;
        Ok(Ctl { fd })
    }

    /// Send `msg` with `fds` attached.
    pub(crate) fn send<T: Serialize>(&self, msg: &T, fds: &[BorrowedFd<'_>]) -> Result<(), Error> {
        let bytes = serde_json::to_vec(msg).map_err(|e| Error::Protocol(e.to_string()))?;
        if bytes.len() > MAX_MSG || fds.len() > MAX_FDS {
            return Err(Error::Protocol(format!(
                "control message too large ({} bytes, {} fds)",
                bytes.len(),
                fds.len()
            )));
        }
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
        let mut cmsg = SendAncillaryBuffer::new(&mut space);
        if !fds.is_empty() && !cmsg.push(SendAncillaryMessage::ScmRights(fds)) {
            return Err(Error::Protocol("too many fds for one message".into()));
        }
        loop {
            match rustix::net::sendmsg(
                &self.fd,
                &[IoSlice::new(&bytes)],
                &mut cmsg,
                SendFlags::NOSIGNAL,
            ) {
                Ok(_) => return Ok(()),
                Err(Errno::INTR) => continue,
                Err(Errno::PIPE | Errno::CONNRESET) => return Err(Error::ControlClosed),
                Err(e) => return Err(Error::os("sendmsg(control)")(e)),
            }
        }
    }

    /// Receive one message and the fds that came with it, waiting until `deadline` (or
    /// forever).
    pub(crate) fn recv<T: DeserializeOwned>(
        &self,
        deadline: Option<Instant>,
    ) -> Result<(T, Vec<OwnedFd>), Error> {
        if let Some(d) = deadline {
            self.wait_readable(d)?;
        }
        let mut buf = vec![0u8; MAX_MSG];
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
        let mut cmsg = RecvAncillaryBuffer::new(&mut space);
        let got = loop {
            match rustix::net::recvmsg(
                &self.fd,
                &mut [IoSliceMut::new(&mut buf)],
                &mut cmsg,
                RecvFlags::CMSG_CLOEXEC,
            ) {
                Ok(r) => break r,
                Err(Errno::INTR) => continue,
                Err(Errno::CONNRESET) => return Err(Error::ControlClosed),
                Err(e) => return Err(Error::os("recvmsg(control)")(e)),
            }
        };
        // Take every fd that arrived, so that none leaks even if the message is bad.
        let mut fds = Vec::new();
        for m in cmsg.drain() {
            if let RecvAncillaryMessage::ScmRights(received) = m {
                fds.extend(received);
            }
        }
        if got.bytes == 0 {
            return Err(Error::ControlClosed);
        }
        let msg = serde_json::from_slice(&buf[..got.bytes])
            .map_err(|e| Error::Protocol(format!("bad control message: {e}")))?;
        Ok((msg, fds))
    }

    fn wait_readable(&self, deadline: Instant) -> Result<(), Error> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::Deadline);
            }
            let ts = Timespec::try_from(left).unwrap_or(Timespec {
                tv_sec: i64::MAX,
                tv_nsec: 0,
            });
            let mut fds = [PollFd::new(&self.fd, PollFlags::IN)];
            match poll(&mut fds, Some(&ts)) {
                Ok(0) => continue,
                Ok(_) => return Ok(()),
                Err(Errno::INTR) => continue,
                Err(e) => return Err(Error::os("poll(control)")(e)),
            }
        }
    }
}

impl AsFd for Ctl {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}
