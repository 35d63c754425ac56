//! One thread, many connections: an epoll set over receivers' waiters and peer
//! watches (epoll(7)), plus any other fds the caller wants woken by (a [`Listener`]).
//!
//! [`Listener`]: crate::Listener

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use rustix::event::epoll;
use rustix::io::Errno;

use crate::connection::Receiver;
use crate::sock;

/// Identifies a receiver or fd registered with a [`Selector`], as returned by its `insert`
/// calls; only a selector makes one. Tokens of removed entries are reused. Use it as a map
/// key for what you keep per connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Token(usize);

impl Token {
    /// A small number, distinct among the entries of one selector (its slot): usable as an
    /// index into a `Vec` of your own.
    pub fn index(self) -> usize {
        self.0
    }
}

const DATA: u64 = 0;
const WATCH: u64 = 1;
const FD: u64 = 2;

fn key(slot: usize, tag: u64) -> epoll::EventData {
    epoll::EventData::new_u64(((slot as u64) << 2) | tag)
}

#[derive(Debug)]
enum Slot {
    Free,
    Receiver {
        rx: Box<Receiver>,
        /// Not known to be armed: arm (and maybe report) it before the next sleep.
        dirty: bool,
        /// Reported in the current `select` call.
        reported: bool,
    },
    Fd {
        reported: bool,
    },
}

/// Waits on many [`Receiver`]s at once and reports which have something to receive, or whose
/// peer is gone; sleeps (no spinning) while none has. Owns its receivers; reach one with
/// [`Selector::get_mut`].
///
/// Each `select` arms every receiver that may have been used since it was last armed (see the
/// readiness protocol on [`Receiver`]), so a producer rings its bell only for receivers that
/// sleep here; a wake-up costs one `epoll_wait` here and one harvest when the receiver is
/// armed again. Receivers' waiters are watched edge-triggered, so a peer that keeps its waiter
/// readable cannot make `select` spin. A ready receiver stays ready (is reported again) until
/// it is drained: take what is there with the `try_*` calls. A receiver whose calls fail
/// (`Closed`, `PeerGone`, ...) keeps being reported until you [`remove`](Selector::remove) it.
///
/// ```no_run
/// use shmring_handshake::{Listener, Options, Selector, Token};
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let mut listener = Listener::bind("/tmp/echo.sock", &Options::new())?;
/// let mut sel = Selector::new()?;
/// let accept = sel.insert_fd(&listener)?;
/// let mut ready = Vec::new();
/// loop {
///     sel.select(&mut ready, None)?;
///     for &t in &ready {
///         if t == accept {
///             if let Some(conn) = listener.try_accept().ok().flatten() {
///                 let (_tx, rx) = conn.split();
///                 sel.insert(rx)?;
///             }
///             continue;
///         }
///         let rx = sel.get_mut(t).expect("registered");
///         if rx.try_drain(usize::MAX, |m| println!("{} bytes", m.len())).is_err_and(|e| {
///             !matches!(e, shmring_ring::TryRecvError::Empty)
///         }) {
///             sel.remove(t);
///         }
///     }
/// }
/// # }
/// ```
#[derive(Debug)]
pub struct Selector {
    epoll: OwnedFd,
    slots: Vec<Slot>,
    free: Vec<usize>,
    events: Vec<u64>,
}

impl Selector {
    /// An empty selector.
    ///
    /// # Errors
    ///
    /// If `epoll_create1` fails.
    pub fn new() -> io::Result<Selector> {
        Ok(Selector {
            epoll: epoll::create(epoll::CreateFlags::CLOEXEC)?,
            slots: Vec::new(),
            free: Vec::new(),
            events: Vec::with_capacity(64),
        })
    }

    fn alloc(&mut self) -> usize {
        match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push(Slot::Free);
                self.slots.len() - 1
            }
        }
    }

    /// Add a receiver; it is armed at the next [`select`](Selector::select).
    ///
    /// # Errors
    ///
    /// If `epoll_ctl` fails; the receiver is dropped then (which closes it).
    pub fn insert(&mut self, rx: Receiver) -> io::Result<Token> {
        let slot = self.alloc();
        // Edge-triggered: the waiter is the peer's epoll fd, and the peer can keep it readable
        // for free (add an always-readable fd to it); level-triggered, every `select` would
        // return at once. Each ring still gives an edge (every wake-up callback inside the
        // waiter wakes its watchers), and `dirty` plus `arm` keep a ready receiver reported.
        let added = epoll::add(
            &self.epoll,
            rx.as_fd(),
            key(slot, DATA),
            epoll::EventFlags::IN | epoll::EventFlags::ET,
        )
        .and_then(|()| {
            epoll::add(
                &self.epoll,
                rx.peer_fd(),
                key(slot, WATCH),
                epoll::EventFlags::IN | epoll::EventFlags::RDHUP,
            )
            .inspect_err(|_| {
                let _ = epoll::delete(&self.epoll, rx.as_fd());
            })
        });
        if let Err(e) = added {
            self.free.push(slot);
            return Err(e.into());
        }
        self.slots[slot] = Slot::Receiver {
            rx: Box::new(rx),
            dirty: true,
            reported: false,
        };
        Ok(Token(slot))
    }

    /// Also wake up when `fd` is readable (level-triggered): a [`Listener`](crate::Listener),
    /// say. Keep `fd` open until [`remove_fd`](Selector::remove_fd).
    ///
    /// # Errors
    ///
    /// If `epoll_ctl` fails.
    pub fn insert_fd(&mut self, fd: impl AsFd) -> io::Result<Token> {
        let slot = self.alloc();
        if let Err(e) = epoll::add(&self.epoll, fd, key(slot, FD), epoll::EventFlags::IN) {
            self.free.push(slot);
            return Err(e.into());
        }
        self.slots[slot] = Slot::Fd { reported: false };
        Ok(Token(slot))
    }

    /// Take a receiver out (to drop it, or to use it elsewhere).
    pub fn remove(&mut self, t: Token) -> Option<Receiver> {
        match self.slots.get(t.0) {
            Some(Slot::Receiver { .. }) => {}
            _ => return None,
        }
        let Slot::Receiver { rx, .. } = std::mem::replace(&mut self.slots[t.0], Slot::Free) else {
            unreachable!()
        };
        let _ = epoll::delete(&self.epoll, rx.as_fd());
        // Already gone if the watch fired (see `select`).
        let _ = epoll::delete(&self.epoll, rx.peer_fd());
        self.free.push(t.0);
        Some(*rx)
    }

    /// Stop watching an fd added with [`insert_fd`](Selector::insert_fd).
    ///
    /// # Errors
    ///
    /// If `t` is not an fd entry (`EINVAL`) or `epoll_ctl` fails.
    pub fn remove_fd(&mut self, t: Token, fd: impl AsFd) -> io::Result<()> {
        if !matches!(self.slots.get(t.0), Some(Slot::Fd { .. })) {
            return Err(Errno::INVAL.into());
        }
        self.slots[t.0] = Slot::Free;
        self.free.push(t.0);
        match epoll::delete(&self.epoll, fd) {
            Ok(()) | Err(Errno::NOENT | Errno::BADF) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// The receiver behind `t`. It will be re-armed before the next sleep, whatever you do
    /// with it.
    pub fn get_mut(&mut self, t: Token) -> Option<&mut Receiver> {
        match self.slots.get_mut(t.0) {
            Some(Slot::Receiver { rx, dirty, .. }) => {
                *dirty = true;
                Some(rx)
            }
            _ => None,
        }
    }

    /// Receivers registered (fd entries not counted).
    pub fn len(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| matches!(s, Slot::Receiver { .. }))
            .count()
    }

    /// True when no receiver is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Fill `ready` with the tokens of receivers that have something (a message, the end of the
    /// stream, a gone peer, an error) and of fds that are readable. Sleeps until at least one
    /// is, or `timeout` passes (`None`: no limit); then `ready` may be empty.
    ///
    /// # Errors
    ///
    /// If `epoll_wait` fails (never for `EINTR`: that returns with what is ready, maybe
    /// nothing).
    pub fn select(&mut self, ready: &mut Vec<Token>, timeout: Option<Duration>) -> io::Result<()> {
        ready.clear();
        for (i, slot) in self.slots.iter_mut().enumerate() {
            match slot {
                Slot::Receiver {
                    rx,
                    dirty,
                    reported,
                } => {
                    *reported = false;
                    if *dirty {
                        // Err: the receiver will report it when used.
                        if rx.consumer.arm().unwrap_or(true) {
                            *reported = true;
                            ready.push(Token(i));
                        } else {
                            *dirty = false;
                        }
                    }
                }
                Slot::Fd { reported } => *reported = false,
                Slot::Free => {}
            }
        }
        let wait = if ready.is_empty() {
            timeout
        } else {
            Some(Duration::ZERO)
        };
        self.events.clear();
        sock::epoll_wait(self.epoll.as_fd(), wait, &mut self.events)?;
        for &k in &self.events {
            let (i, tag) = ((k >> 2) as usize, k & 3);
            match self.slots.get_mut(i) {
                Some(Slot::Receiver {
                    rx,
                    dirty,
                    reported,
                }) => {
                    if tag == WATCH {
                        rx.consumer.note_peer_gone();
                        // Level-triggered and never clearing: stop watching it.
                        let _ = epoll::delete(&self.epoll, rx.peer_fd());
                    }
                    // A data event needs nothing here: the waiter stays readable until the
                    // receiver is armed again, and `arm` harvests it before it re-checks.
                    *dirty = true;
                    if !*reported {
                        *reported = true;
                        ready.push(Token(i));
                    }
                }
                Some(Slot::Fd { reported }) if tag == FD && !*reported => {
                    *reported = true;
                    ready.push(Token(i));
                }
                _ => {}
            }
        }
        Ok(())
    }
}
