//! The listening side: a socket file only its owner can reach, a lock file that tells a stale
//! socket from a live one, and an accept that runs every client's handshake side by side.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::event::epoll;
use rustix::fs::{FileType, FlockOperation, Mode, OFlags};
use rustix::io::Errno;
use rustix::net::{SocketAddrUnix, SocketFlags};
use rustix::time::{Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags};

use crate::connection::Connection;
use crate::error::{AcceptError, BindError};
use crate::handshake::ServerHandshake;
use crate::options::Options;
use crate::sock;

const LISTEN_KEY: u64 = 0;
const TIMER_KEY: u64 = 1;
const FIRST_PENDING: u64 = 2;
const BACKLOG: i32 = 128;

/// A file's identity, to unlink only what we created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileId {
    dev: u64,
    ino: u64,
}

impl FileId {
    fn of(st: &rustix::fs::Stat) -> FileId {
        FileId {
            dev: st.st_dev,
            ino: st.st_ino,
        }
    }

    fn at(path: &Path) -> Option<FileId> {
        rustix::fs::lstat(path).ok().map(|st| FileId::of(&st))
    }
}

/// The lock file beside the socket (`<path>.lock`), `flock`ed for the listener's life. Whoever
/// holds it owns the socket path and may replace a stale socket there.
#[derive(Debug)]
struct Lock {
    fd: OwnedFd,
    path: PathBuf,
    /// Only the process that took the lock removes the file (not a forked child).
    owner: rustix::process::Pid,
}

impl Lock {
    fn acquire(socket: &Path, lock_path: PathBuf) -> Result<Lock, BindError> {
        let io = |op| {
            let path = lock_path.clone();
            move |e: Errno| BindError::Io {
                op,
                path,
                source: e.into(),
            }
        };
        // The file we lock must still be the one at the path: a listener that is shutting down
        // unlinks it while holding the lock, and whoever locked the unlinked file must retry.
        for _ in 0..16 {
            let fd = rustix::fs::open(
                &lock_path,
                OFlags::RDWR | OFlags::CREATE | OFlags::CLOEXEC | OFlags::NOFOLLOW,
                Mode::from_raw_mode(0o600),
            )
            .map_err(io("open"))?;
            match rustix::fs::flock(&fd, FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => {}
                Err(Errno::WOULDBLOCK) => {
                    return Err(BindError::InUse {
                        path: socket.to_owned(),
                    });
                }
                Err(e) => return Err(io("flock")(e)),
            }
            let held = FileId::of(&rustix::fs::fstat(&fd).map_err(io("fstat"))?);
            if FileId::at(&lock_path) == Some(held) {
                return Ok(Lock {
                    fd,
                    path: lock_path,
                    owner: rustix::process::getpid(),
                });
            }
        }
        Err(BindError::InUse {
            path: socket.to_owned(),
        })
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        // Still holding the lock: unlink first, then the fd closes and releases it.
        if rustix::process::getpid() != self.owner {
            return;
        }
        if let Ok(st) = rustix::fs::fstat(&self.fd) {
            if FileId::at(&self.path) == Some(FileId::of(&st)) {
                let _ = rustix::fs::unlink(&self.path);
            }
        }
    }
}

/// One handshake in progress.
#[derive(Debug)]
struct Pending {
    hs: ServerHandshake,
}

/// A Unix socket that accepts shmpipe connections.
///
/// The socket file is created mode 0600 (before `listen`, so no one else can ever connect),
/// and removed when the listener drops. A stale file left by a crashed listener is replaced;
/// a live listener's is never touched (see [`Listener::bind`]).
///
/// Handshakes run side by side: a client that stalls, sends garbage or dies costs only its
/// own handshake (an [`AcceptError::Handshake`] once its deadline passes or it fails), never
/// another client's. Up to [`Options::max_pending`] run at once.
///
/// For an event loop: [`AsFd::as_fd`] is readable whenever [`Listener::try_accept`] has work
/// (a new client, a handshake step, an expired deadline).
#[derive(Debug)]
pub struct Listener {
    sock: OwnedFd,
    epoll: OwnedFd,
    timer: OwnedFd,
    path: PathBuf,
    /// Absolute socket path and its identity, to unlink only our own file.
    abs_path: PathBuf,
    id: Option<FileId>,
    options: Options,
    pending: Vec<Option<Pending>>,
    n_pending: usize,
    accepting: bool,
    /// Keys of the events of the last `epoll_wait`.
    events: Vec<u64>,
    /// Declared last: the lock is released only after the socket file is gone.
    _lock: Lock,
}

impl Listener {
    /// Listen on the Unix socket at `path` (`SOCK_SEQPACKET`).
    ///
    /// First takes an exclusive `flock` on `<path>.lock` (created 0600 if missing): if another
    /// listener holds it, fails with [`BindError::InUse`]. Holding the lock, it looks at
    /// `path`: a socket there that refuses connections is stale and is replaced; one that
    /// accepts them belongs to a listener that does not use the lock and is left alone
    /// (`InUse`); anything else is left alone ([`BindError::NotASocket`]). The new socket file
    /// is made 0600 before `listen`.
    ///
    /// # Errors
    ///
    /// A [`BindError`].
    pub fn bind(path: impl AsRef<Path>, options: &Options) -> Result<Listener, BindError> {
        let path = path.as_ref();
        options.validate().map_err(BindError::InvalidOptions)?;
        let io = |op| {
            move |e: Errno| BindError::Io {
                op,
                path: path.to_owned(),
                source: e.into(),
            }
        };
        let abs_path = std::path::absolute(path).map_err(|e| BindError::Io {
            op: "getcwd",
            path: path.to_owned(),
            source: e,
        })?;
        // Everything that can fail without touching the path comes first.
        let epoll = epoll::create(epoll::CreateFlags::CLOEXEC).map_err(io("epoll_create1"))?;
        let timer = rustix::time::timerfd_create(
            TimerfdClockId::Monotonic,
            TimerfdFlags::CLOEXEC | TimerfdFlags::NONBLOCK,
        )
        .map_err(io("timerfd_create"))?;
        let mut lock_path = abs_path.clone().into_os_string();
        lock_path.push(".lock");
        let lock = Lock::acquire(path, lock_path.into())?;

        let addr = SocketAddrUnix::new(path).map_err(io("bind"))?;
        remove_stale(path, &addr)?;
        let sock = sock::seqpacket().map_err(io("socket"))?;
        match rustix::net::bind(&sock, &addr) {
            Ok(()) => {}
            // Someone not using the lock got there between our look and our bind.
            Err(Errno::ADDRINUSE) => {
                return Err(BindError::InUse {
                    path: path.to_owned(),
                });
            }
            Err(e) => return Err(io("bind")(e)),
        }
        let id = FileId::at(path);
        // Until `listen`, connections are refused: no one can get in before the mode is set.
        let permissions = rustix::fs::chmod(path, Mode::from_raw_mode(0o600));
        let listening = permissions.and_then(|()| rustix::net::listen(&sock, BACKLOG));
        if let Err(e) = listening {
            if id.is_some() && FileId::at(path) == id {
                let _ = rustix::fs::unlink(path);
            }
            return Err(io("chmod/listen")(e));
        }

        // From here on, dropping the listener removes the socket file.
        let listener = Listener {
            sock,
            epoll,
            timer,
            path: path.to_owned(),
            abs_path,
            id,
            options: options.clone(),
            pending: Vec::new(),
            n_pending: 0,
            accepting: true,
            events: Vec::with_capacity(64),
            _lock: lock,
        };
        let readable = epoll::EventFlags::IN;
        for (fd, key) in [(&listener.sock, LISTEN_KEY), (&listener.timer, TIMER_KEY)] {
            epoll::add(
                &listener.epoll,
                fd,
                epoll::EventData::new_u64(key),
                readable,
            )
            .map_err(io("epoll_ctl"))?;
        }
        Ok(listener)
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Handshakes in progress.
    pub fn pending(&self) -> usize {
        self.n_pending
    }

    /// Wait for the next connection whose handshake completes.
    ///
    /// # Errors
    ///
    /// [`AcceptError::Handshake`] when one client's handshake fails (call again to keep
    /// serving), [`AcceptError::Io`] if the listener's own calls fail.
    pub fn accept(&mut self) -> Result<Connection, AcceptError> {
        loop {
            if let Some(c) = self.poll_next(None)? {
                return Ok(c);
            }
        }
    }

    /// Like [`Listener::accept`], giving up after `timeout`.
    ///
    /// # Errors
    ///
    /// [`AcceptError::Timeout`], or as for [`Listener::accept`].
    pub fn accept_timeout(&mut self, timeout: Duration) -> Result<Connection, AcceptError> {
        match Instant::now().checked_add(timeout) {
            Some(deadline) => self.accept_deadline(deadline),
            None => self.accept(),
        }
    }

    /// Like [`Listener::accept`], giving up at `deadline`.
    ///
    /// # Errors
    ///
    /// [`AcceptError::Timeout`], or as for [`Listener::accept`].
    pub fn accept_deadline(&mut self, deadline: Instant) -> Result<Connection, AcceptError> {
        self.poll_next(Some(deadline))?.ok_or(AcceptError::Timeout)
    }

    /// Make whatever progress is possible without waiting: accept new clients, advance their
    /// handshakes, expire overdue ones. `Ok(None)`: no connection completed.
    ///
    /// # Errors
    ///
    /// As for [`Listener::accept`].
    pub fn try_accept(&mut self) -> Result<Option<Connection>, AcceptError> {
        self.poll_next(Some(Instant::now()))
    }

    /// The accept loop: returns at the first completed connection, the first failed
    /// handshake, or the deadline (`Ok(None)`).
    fn poll_next(&mut self, deadline: Option<Instant>) -> Result<Option<Connection>, AcceptError> {
        loop {
            self.expire()?;
            let now = Instant::now();
            let mut wait = deadline.map(|d| d.saturating_duration_since(now));
            if let Some(first) = self.earliest() {
                let until = first.saturating_duration_since(now);
                wait = Some(wait.map_or(until, |w| w.min(until)));
            }
            self.events.clear();
            sock::epoll_wait(self.epoll.as_fd(), wait, &mut self.events)
                .map_err(io_error("epoll_wait"))?;
            for i in 0..self.events.len() {
                let key = self.events[i];
                if let Some(done) = self.on_event(key)? {
                    return Ok(Some(done));
                }
            }
            if self.events.is_empty() && deadline.is_some_and(|d| Instant::now() >= d) {
                self.expire()?;
                return Ok(None);
            }
        }
    }

    fn on_event(&mut self, key: u64) -> Result<Option<Connection>, AcceptError> {
        match key {
            LISTEN_KEY => self.accept_one().map(|()| None),
            TIMER_KEY => {
                let mut buf = [0u8; 8];
                let _ = rustix::io::read(&self.timer, &mut buf);
                Ok(None)
            }
            k => {
                let slot = (k - FIRST_PENDING) as usize;
                let Some(p) = self.pending.get_mut(slot).and_then(Option::as_mut) else {
                    return Ok(None); // already finished in this round
                };
                match p.hs.on_readable(&self.options) {
                    Ok(false) => Ok(None),
                    Ok(true) => {
                        let hs = self.take(slot).hs;
                        let peer = Some(hs.peer());
                        hs.into_connection()
                            .map(Some)
                            .map_err(|source| AcceptError::Handshake { peer, source })
                    }
                    Err(source) => {
                        let p = self.take(slot);
                        Err(AcceptError::Handshake {
                            peer: Some(p.hs.peer()),
                            source,
                        })
                    }
                }
            }
        }
    }

    /// Accept one client from the backlog and start its handshake.
    fn accept_one(&mut self) -> Result<(), AcceptError> {
        let flags = SocketFlags::CLOEXEC | SocketFlags::NONBLOCK;
        let conn = match rustix::net::accept_with(&self.sock, flags) {
            Ok(c) => c,
            Err(Errno::AGAIN | Errno::INTR | Errno::CONNABORTED) => return Ok(()),
            Err(e) => return Err(io_error("accept4")(e)),
        };
        let hs = ServerHandshake::start(conn, &self.options)
            .map_err(|(peer, source)| AcceptError::Handshake { peer, source })?;
        let slot = match self.pending.iter().position(Option::is_none) {
            Some(i) => i,
            None => {
                self.pending.push(None);
                self.pending.len() - 1
            }
        };
        epoll::add(
            &self.epoll,
            hs.socket(),
            epoll::EventData::new_u64(FIRST_PENDING + slot as u64),
            epoll::EventFlags::IN | epoll::EventFlags::RDHUP,
        )
        .map_err(io_error("epoll_ctl"))?;
        self.pending[slot] = Some(Pending { hs });
        self.n_pending += 1;
        self.update()
    }

    /// Remove a pending handshake from the set.
    fn take(&mut self, slot: usize) -> Pending {
        let p = self.pending[slot].take().expect("slot in use");
        let _ = epoll::delete(&self.epoll, p.hs.socket());
        self.n_pending -= 1;
        let _ = self.update();
        p
    }

    /// Fail the first overdue handshake, if any.
    fn expire(&mut self) -> Result<(), AcceptError> {
        let now = Instant::now();
        let overdue = self
            .pending
            .iter()
            .position(|p| p.as_ref().is_some_and(|p| p.hs.deadline() <= now));
        if let Some(slot) = overdue {
            let p = self.take(slot);
            let peer = Some(p.hs.peer());
            let source = p.hs.expire(&self.options);
            return Err(AcceptError::Handshake { peer, source });
        }
        Ok(())
    }

    fn earliest(&self) -> Option<Instant> {
        self.pending.iter().flatten().map(|p| p.hs.deadline()).min()
    }

    /// Keep the timer on the earliest deadline (so the epoll fd wakes an outside event loop
    /// when a handshake expires), and stop taking clients while `max_pending` run.
    fn update(&mut self) -> Result<(), AcceptError> {
        let value = match self.earliest() {
            // A zero it_value would disarm the timer: at least 1 ns.
            Some(d) => d
                .saturating_duration_since(Instant::now())
                .max(Duration::from_nanos(1)),
            None => Duration::ZERO,
        };
        let spec = Itimerspec {
            it_interval: sock::timespec(Duration::ZERO),
            it_value: sock::timespec(value),
        };
        rustix::time::timerfd_settime(&self.timer, TimerfdTimerFlags::empty(), &spec)
            .map_err(io_error("timerfd_settime"))?;
        let want = self.n_pending < self.options.max_pending;
        if want != self.accepting {
            let flags = if want {
                epoll::EventFlags::IN
            } else {
                epoll::EventFlags::empty()
            };
            epoll::modify(
                &self.epoll,
                &self.sock,
                epoll::EventData::new_u64(LISTEN_KEY),
                flags,
            )
            .map_err(io_error("epoll_ctl"))?;
            self.accepting = want;
        }
        Ok(())
    }
}

impl AsFd for Listener {
    /// An epoll fd, readable whenever [`Listener::try_accept`] has work to do.
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.epoll.as_fd()
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        // A forked child that drops its copy must not remove the parent's socket.
        if rustix::process::getpid() == self._lock.owner
            && self.id.is_some()
            && FileId::at(&self.abs_path) == self.id
        {
            let _ = rustix::fs::unlink(&self.abs_path);
        }
    }
}

fn io_error(op: &'static str) -> impl Fn(Errno) -> AcceptError {
    move |e| AcceptError::Io {
        op,
        source: e.into(),
    }
}

/// With the lock held: clear `path` if it holds a stale socket.
fn remove_stale(path: &Path, addr: &SocketAddrUnix) -> Result<(), BindError> {
    let st = match rustix::fs::lstat(path) {
        Ok(st) => st,
        Err(Errno::NOENT) => return Ok(()),
        Err(e) => {
            return Err(BindError::Io {
                op: "lstat",
                path: path.to_owned(),
                source: e.into(),
            });
        }
    };
    if FileType::from_raw_mode(st.st_mode) != FileType::Socket {
        return Err(BindError::NotASocket {
            path: path.to_owned(),
        });
    }
    // Ask it: a live listener of any socket type answers (or says EPROTOTYPE, or its backlog
    // is full); only ECONNREFUSED means nobody is bound to it any more.
    let probe = sock::seqpacket().map_err(|e| BindError::Io {
        op: "socket",
        path: path.to_owned(),
        source: e.into(),
    })?;
    match rustix::net::connect(&probe, addr) {
        Err(Errno::CONNREFUSED) => {}
        _ => {
            return Err(BindError::InUse {
                path: path.to_owned(),
            });
        }
    }
    match rustix::fs::unlink(path) {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        Err(e) => Err(BindError::Io {
            op: "unlink",
            path: path.to_owned(),
            source: e.into(),
        }),
    }
}
