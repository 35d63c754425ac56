//! The OS baselines: a pipe, and Unix stream and seqpacket socketpairs.
//!
//! The OS baselines are used the way a careful user would: one `write(2)`/`send(2)` per
//! message, so that each message is visible to the reader at once (as with `Producer::send`),
//! a 4-byte length prefix on the stream transports, a reader that takes up to 256 KiB per
//! `read(2)` and splits frames, and kernel buffers raised to the ring's capacity where the
//! kernel allows it.

use std::os::fd::{AsFd, OwnedFd};

use rustix::io::Errno;

use super::{Transport, Wiring, dup};
use crate::worker::{Job, MsgRx, MsgTx, Worker};
use crate::{Error, Role, Workload};

/// Parent, pipe: one pipe (two for `rtt`: forward and back).
pub(super) fn wire_pipe(wiring: &mut Wiring, w: Workload, capacity: usize) -> Result<(), Error> {
    let rtt = matches!(w, Workload::Rtt(_));
    let (r, wr) = pipe(capacity)?;
    wiring.producer.push(wr);
    wiring.consumer.push(r);
    if rtt {
        let (r, wr) = pipe(capacity)?;
        wiring.producer.push(r);
        wiring.consumer.push(wr);
    }
    Ok(())
}

fn pipe(capacity: usize) -> Result<(OwnedFd, OwnedFd), Error> {
    let (r, w) =
        rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).map_err(Error::os("pipe2"))?;
    // Best effort: capped by /proc/sys/fs/pipe-max-size for unprivileged users.
    let _ = rustix::pipe::fcntl_setpipe_size(&w, capacity);
    Ok((r, w))
}

/// Parent, Unix sockets (`t`: stream or seqpacket): one socketpair, used both ways.
pub(super) fn wire_socket(wiring: &mut Wiring, t: Transport, capacity: usize) -> Result<(), Error> {
    let ty = if t == Transport::UdsStream {
        rustix::net::SocketType::STREAM
    } else {
        rustix::net::SocketType::SEQPACKET
    };
    let (a, b) = rustix::net::socketpair(
        rustix::net::AddressFamily::UNIX,
        ty,
        rustix::net::SocketFlags::CLOEXEC,
        None,
    )
    .map_err(Error::os("socketpair"))?;
    for s in [&a, &b] {
        // Best effort: capped by net.core.wmem_max / rmem_max.
        let _ = rustix::net::sockopt::set_socket_send_buffer_size(s, capacity);
        let _ = rustix::net::sockopt::set_socket_recv_buffer_size(s, capacity);
    }
    wiring.producer.push(a);
    wiring.consumer.push(b);
    Ok(())
}

/// Worker, pipe: length-prefixed frames on the pipe(s) that came with the job.
pub(super) fn run_pipe(
    w: &mut Worker,
    job: &Job,
    mut next: impl FnMut() -> Result<OwnedFd, Error>,
) -> Result<(), Error> {
    let size = job.workload.size();
    let rtt = matches!(job.workload, Workload::Rtt(_));
    let producer = job.role == Role::Producer;
    let first = next()?;
    let second = if rtt { Some(next()?) } else { None };
    // Producer: write end, then (rtt) the pong read end; consumer the reverse.
    let (txfd, rxfd) = if producer {
        (Some(first), second)
    } else {
        (second, Some(first))
    };
    w.drive(
        txfd.map(|fd| StreamTx::new(fd, size)),
        rxfd.map(|fd| StreamRx::new(fd, size)),
    )
}

/// Worker, Unix sockets (`t`: stream or seqpacket) on the socket that came with the job.
pub(super) fn run_socket(
    w: &mut Worker,
    job: &Job,
    t: Transport,
    mut next: impl FnMut() -> Result<OwnedFd, Error>,
) -> Result<(), Error> {
    let size = job.workload.size();
    let rtt = matches!(job.workload, Workload::Rtt(_));
    let producer = job.role == Role::Producer;
    let sock = next()?;
    let sends = producer || rtt;
    let recvs = !producer || rtt;
    let txfd = if sends {
        Some(dup(sock.as_fd())?)
    } else {
        None
    };
    let rxfd = if recvs { Some(sock) } else { None };
    if t == Transport::UdsStream {
        w.drive(
            txfd.map(|fd| StreamTx::new(fd, size)),
            rxfd.map(|fd| StreamRx::new(fd, size)),
        )
    } else {
        w.drive(
            txfd.map(|fd| PacketTx::new(fd, size)),
            rxfd.map(|fd| PacketRx::new(fd, size)),
        )
    }
}

// ---------------------------------------------------------------------------------------
// Byte streams: pipes and Unix stream sockets

/// Length prefix of a stream frame.
const PREFIX: usize = 4;

/// One `write(2)` per message: `[len: u32 LE][payload]`.
#[derive(Debug)]
pub struct StreamTx {
    fd: OwnedFd,
    frame: Vec<u8>,
}

impl StreamTx {
    /// Frames of `size`-byte messages on `fd`.
    pub fn new(fd: OwnedFd, size: usize) -> StreamTx {
        let mut frame = vec![0; PREFIX + size];
        frame[..PREFIX].copy_from_slice(&(size as u32).to_le_bytes());
        StreamTx { fd, frame }
    }
}

/// write(2) all of `bytes`, retrying short writes and EINTR.
fn write_all(fd: &OwnedFd, mut bytes: &[u8]) -> Result<(), Error> {
    while !bytes.is_empty() {
        match rustix::io::write(fd, bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(Errno::INTR) => {}
            Err(Errno::PIPE | Errno::CONNRESET) => return Err(Error::Eof),
            Err(e) => return Err(Error::os("write")(e)),
        }
    }
    Ok(())
}

impl MsgTx for StreamTx {
    #[inline]
    fn buf(&mut self) -> &mut [u8] {
        &mut self.frame[PREFIX..]
    }

    #[inline]
    fn send(&mut self) -> Result<(), Error> {
        write_all(&self.fd, &self.frame)
    }
}

/// Reads up to 256 KiB per `read(2)` and splits frames.
#[derive(Debug)]
pub struct StreamRx {
    fd: OwnedFd,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    size: usize,
}

impl StreamRx {
    /// Frames of `size`-byte messages from `fd`.
    pub fn new(fd: OwnedFd, size: usize) -> StreamRx {
        StreamRx {
            fd,
            buf: vec![0; (4 * (PREFIX + size)).max(256 << 10)],
            start: 0,
            end: 0,
            size,
        }
    }
}

impl MsgRx for StreamRx {
    fn recv<F: FnMut(&[u8])>(&mut self, max: usize, mut f: F) -> Result<usize, Error> {
        loop {
            let mut k = 0;
            while k < max && self.end - self.start >= PREFIX {
                let at = self.start;
                let len = u32::from_le_bytes(self.buf[at..at + PREFIX].try_into().expect("4"));
                if len as usize != self.size {
                    return Err(Error::Protocol(format!(
                        "stream frame of {len} bytes, expected {} (framing lost)",
                        self.size
                    )));
                }
                let end = at + PREFIX + self.size;
                if end > self.end {
                    break;
                }
                f(&self.buf[at + PREFIX..end]);
                self.start = end;
                k += 1;
            }
            if k > 0 {
                return Ok(k);
            }
            if self.start == self.end {
                (self.start, self.end) = (0, 0);
            } else if self.buf.len() - self.end < PREFIX + self.size {
                self.buf.copy_within(self.start..self.end, 0);
                (self.start, self.end) = (0, self.end - self.start);
            }
            match rustix::io::read(&self.fd, &mut self.buf[self.end..]) {
                Ok(0) => return Err(Error::Eof),
                Ok(n) => self.end += n,
                Err(Errno::INTR) => {}
                Err(Errno::CONNRESET) => return Err(Error::Eof),
                Err(e) => return Err(Error::os("read")(e)),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Unix seqpacket sockets

/// One `send(2)` per message, one packet per message.
#[derive(Debug)]
pub struct PacketTx {
    fd: OwnedFd,
    buf: Vec<u8>,
}

impl PacketTx {
    /// Packets of `size` bytes on `fd`.
    pub fn new(fd: OwnedFd, size: usize) -> PacketTx {
        PacketTx {
            fd,
            buf: vec![0; size],
        }
    }
}

impl MsgTx for PacketTx {
    #[inline]
    fn buf(&mut self) -> &mut [u8] {
        &mut self.buf
    }

    #[inline]
    fn send(&mut self) -> Result<(), Error> {
        loop {
            match rustix::net::send(&self.fd, &self.buf, rustix::net::SendFlags::NOSIGNAL) {
                Ok(n) if n == self.buf.len() => return Ok(()),
                Ok(n) => {
                    return Err(Error::Protocol(format!(
                        "short seqpacket send: {n} of {}",
                        self.buf.len()
                    )));
                }
                Err(Errno::INTR) => {}
                Err(Errno::PIPE | Errno::CONNRESET) => return Err(Error::Eof),
                Err(e) => return Err(Error::os("send")(e)),
            }
        }
    }
}

/// One `recv(2)` per message, into a buffer one byte larger than a message (so an oversized
/// packet shows as a wrong length instead of being cut to size).
#[derive(Debug)]
pub struct PacketRx {
    fd: OwnedFd,
    buf: Vec<u8>,
}

impl PacketRx {
    /// Packets of `size` bytes from `fd`.
    pub fn new(fd: OwnedFd, size: usize) -> PacketRx {
        PacketRx {
            fd,
            buf: vec![0; size + 1],
        }
    }
}

impl MsgRx for PacketRx {
    #[inline]
    fn recv<F: FnMut(&[u8])>(&mut self, _max: usize, mut f: F) -> Result<usize, Error> {
        loop {
            match rustix::net::recv(&self.fd, &mut self.buf, rustix::net::RecvFlags::empty()) {
                Ok((0, _)) => return Err(Error::Eof),
                Ok((n, _)) => {
                    f(&self.buf[..n.min(self.buf.len())]);
                    return Ok(1);
                }
                Err(Errno::INTR) => {}
                Err(Errno::CONNRESET) => return Err(Error::Eof),
                Err(e) => return Err(Error::os("recv")(e)),
            }
        }
    }
}
