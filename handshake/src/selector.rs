//! One thread, many connections: an epoll set over the handles' fds (epoll(7)), for receivers
//! that wait for messages and senders that wait for room, plus any other fds the caller wants
//! woken by (a [`Listener`]).
//!
//! [`Listener`]: crate::Listener

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use rustix::event::epoll;
use rustix::io::Errno;
use shmpipe_ring::SendError;

use crate::connection::{Connection, Receiver, Sender};
use crate::sock;

/// Identifies a receiver, sender, connection or fd registered with a [`Selector`], as returned
/// by its `insert` calls; only a selector makes one. Tokens of removed entries are reused. Use
/// it as a map key for what you keep per connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Token(usize);

impl Token {
    /// A small number, distinct among the entries of one selector (its slot): usable as an
    /// index into a `Vec` of your own.
    pub fn index(self) -> usize {
        self.0
    }
}

/// A receiver's fd (the producer rang, or the peer is gone).
const RX: u64 = 0;
/// A receiver's peer watch (the peer is gone), so that arming never needs a `poll` of it.
const WATCH: u64 = 1;
/// An fd of the caller's.
const FD: u64 = 2;
/// A sender's fd (the consumer rang, or the peer is gone).
const TX: u64 = 3;

fn key(slot: usize, tag: u64) -> epoll::EventData {
    epoll::EventData::new_u64(((slot as u64) << 2) | tag)
}

/// The handles of one entry (boxed in its slot, with the rest of the entry).
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
enum Handles {
    Receiver(Receiver),
    Sender(Sender),
    Connection(Connection),
}

impl Handles {
    fn rx(&mut self) -> Option<&mut Receiver> {
        match self {
            Handles::Receiver(rx) => Some(rx),
            Handles::Connection(c) => Some(c.receiver()),
            Handles::Sender(_) => None,
        }
    }

    fn tx(&mut self) -> Option<&mut Sender> {
        match self {
            Handles::Sender(tx) => Some(tx),
            Handles::Connection(c) => Some(c.sender()),
            Handles::Receiver(_) => None,
        }
    }

    fn rx_ref(&self) -> Option<&Receiver> {
        match self {
            Handles::Receiver(rx) => Some(rx),
            Handles::Connection(c) => Some(&c.receiver),
            Handles::Sender(_) => None,
        }
    }

    fn tx_ref(&self) -> Option<&Sender> {
        match self {
            Handles::Sender(tx) => Some(tx),
            Handles::Connection(c) => Some(&c.sender),
            Handles::Receiver(_) => None,
        }
    }
}

#[derive(Debug)]
struct Entry {
    handles: Handles,
    /// The receiver is not known to be armed: arm (and maybe report) it before the next sleep.
    rx_dirty: bool,
    /// The caller waits for room for a message of this many bytes ([`Selector::want_send`]).
    want: Option<usize>,
    /// The sender is not known to be armed for `want`.
    tx_dirty: bool,
    /// The receiver's peer watch is registered (until it fires).
    watching: bool,
    /// Reported in the current `select` call.
    reported: bool,
}

#[derive(Debug)]
enum Slot {
    Free,
    Entry(Box<Entry>),
    Fd { reported: bool },
}

/// Waits on many [`Receiver`]s and [`Sender`]s at once (alone, or as whole [`Connection`]s)
/// and reports which can make progress: a receiver with something to receive, a sender with
/// the room it was asked to wait for ([`want_send`](Selector::want_send)), or either with its
/// peer gone. Sleeps (no spinning) while none can. Owns its handles; reach them with
/// [`get_mut`](Selector::get_mut), [`sender_mut`](Selector::sender_mut) and
/// [`connection_mut`](Selector::connection_mut).
///
/// Each `select` arms every handle that may have been used since it was last armed (the
/// readiness protocol on [`Receiver`] and [`Sender`]), so the peer rings a bell only for
/// handles that sleep here; a wake-up costs one `epoll_wait` here and one harvest when the
/// handle is armed again. The handles' fds are watched edge-triggered, so a peer that rings
/// without cause costs a spurious report per ring, never a spin.
///
/// - A receiver is reported while it has something: take it with the `try_*` calls (a ready
///   receiver that is not drained is reported again). One whose calls fail (`Closed`,
///   `PeerGone`, ...) keeps being reported until you remove it.
/// - A sender is reported only after [`want_send`](Selector::want_send) asked for room that
///   was not there, once the room is there (or the peer is gone); the wish is then spent:
///   send with [`Sender::try_send`], and on `Full` ask again.
/// - A connection's token is reported for either half; try both (the `try_*` calls cost no
///   system call when there is nothing to do).
///
/// ```no_run
/// use shmpipe_handshake::{Listener, Options, Selector, Token};
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
///             !matches!(e, shmpipe_ring::TryRecvError::Empty)
///         }) {
///             sel.remove(t);
///         }
///     }
/// }
/// # }
/// ```
///
/// A server that also replies inserts whole connections and keeps, per token, what it still
/// has to send; examples/echo_server.rs does that.
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
        self.add(Handles::Receiver(rx))
    }

    /// Add a sender. It is reported only once [`want_send`](Selector::want_send) asked for
    /// room.
    ///
    /// # Errors
    ///
    /// If `epoll_ctl` fails; the sender is dropped then (which closes it).
    pub fn insert_sender(&mut self, tx: Sender) -> io::Result<Token> {
        self.add(Handles::Sender(tx))
    }

    /// Add both halves of a connection under one token: reported when its receiver has
    /// something, or its sender has the room [`want_send`](Selector::want_send) asked for.
    ///
    /// # Errors
    ///
    /// If `epoll_ctl` fails; the connection is dropped then (which closes it).
    pub fn insert_connection(&mut self, conn: Connection) -> io::Result<Token> {
        self.add(Handles::Connection(conn))
    }

    fn add(&mut self, handles: Handles) -> io::Result<Token> {
        let slot = self.alloc();
        // Edge-triggered: each ring of the peer's bell is an edge of the handle's fd; `arm`
        // (with `dirty`) keeps a ready handle reported, so no event is needed twice.
        let et = epoll::EventFlags::IN | epoll::EventFlags::ET;
        let mut watching = false;
        let r = (|| -> rustix::io::Result<()> {
            if let Some(rx) = handles.rx_ref() {
                epoll::add(&self.epoll, rx.as_fd(), key(slot, RX), et)?;
                // The peer watch too, level-triggered: it fires once and is then deleted, so
                // arming a receiver never needs a `poll` of it. (Only for receivers: the
                // sender's `arm` polls it itself, and one link cannot be added twice.)
                epoll::add(
                    &self.epoll,
                    rx.peer_fd(),
                    key(slot, WATCH),
                    epoll::EventFlags::IN | epoll::EventFlags::RDHUP,
                )?;
                watching = true;
            }
            if let Some(tx) = handles.tx_ref() {
                epoll::add(&self.epoll, tx.as_fd(), key(slot, TX), et)?;
            }
            Ok(())
        })();
        if let Err(e) = r {
            if let Some(rx) = handles.rx_ref() {
                let _ = epoll::delete(&self.epoll, rx.as_fd());
                if watching {
                    let _ = epoll::delete(&self.epoll, rx.peer_fd());
                }
            }
            if let Some(tx) = handles.tx_ref() {
                let _ = epoll::delete(&self.epoll, tx.as_fd());
            }
            self.free.push(slot);
            return Err(e.into());
        }
        self.slots[slot] = Slot::Entry(Box::new(Entry {
            handles,
            rx_dirty: true,
            want: None,
            tx_dirty: false,
            watching,
            reported: false,
        }));
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

    fn take(&mut self, t: Token) -> Option<Handles> {
        let Slot::Entry(e) = std::mem::replace(self.slots.get_mut(t.0)?, Slot::Free) else {
            unreachable!("checked by the caller")
        };
        if let Some(rx) = e.handles.rx_ref() {
            let _ = epoll::delete(&self.epoll, rx.as_fd());
            if e.watching {
                let _ = epoll::delete(&self.epoll, rx.peer_fd());
            }
        }
        if let Some(tx) = e.handles.tx_ref() {
            let _ = epoll::delete(&self.epoll, tx.as_fd());
        }
        self.free.push(t.0);
        Some(e.handles)
    }

    fn is(&self, t: Token, f: impl Fn(&Handles) -> bool) -> bool {
        matches!(self.slots.get(t.0), Some(Slot::Entry(e)) if f(&e.handles))
    }

    /// Take out a receiver added with [`insert`](Selector::insert) (to drop it, or to use it
    /// elsewhere). `None` (and nothing removed) for any other token.
    pub fn remove(&mut self, t: Token) -> Option<Receiver> {
        if !self.is(t, |h| matches!(h, Handles::Receiver(_))) {
            return None;
        }
        match self.take(t)? {
            Handles::Receiver(rx) => Some(rx),
            _ => unreachable!(),
        }
    }

    /// Take out a sender added with [`insert_sender`](Selector::insert_sender). `None` (and
    /// nothing removed) for any other token.
    pub fn remove_sender(&mut self, t: Token) -> Option<Sender> {
        if !self.is(t, |h| matches!(h, Handles::Sender(_))) {
            return None;
        }
        match self.take(t)? {
            Handles::Sender(tx) => Some(tx),
            _ => unreachable!(),
        }
    }

    /// Take out a connection added with [`insert_connection`](Selector::insert_connection).
    /// `None` (and nothing removed) for any other token.
    pub fn remove_connection(&mut self, t: Token) -> Option<Connection> {
        if !self.is(t, |h| matches!(h, Handles::Connection(_))) {
            return None;
        }
        match self.take(t)? {
            Handles::Connection(c) => Some(c),
            _ => unreachable!(),
        }
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

    fn entry(&mut self, t: Token) -> Option<&mut Entry> {
        match self.slots.get_mut(t.0) {
            Some(Slot::Entry(e)) => Some(e),
            _ => None,
        }
    }

    /// The receiver behind `t` (a receiver or a connection entry). It will be re-armed before
    /// the next sleep, whatever you do with it.
    pub fn get_mut(&mut self, t: Token) -> Option<&mut Receiver> {
        let e = self.entry(t)?;
        e.rx_dirty = true;
        e.handles.rx()
    }

    /// The sender behind `t` (a sender or a connection entry). If a
    /// [`want_send`](Selector::want_send) is pending, it is re-armed before the next sleep,
    /// whatever you do with it.
    pub fn sender_mut(&mut self, t: Token) -> Option<&mut Sender> {
        let e = self.entry(t)?;
        e.tx_dirty = true;
        e.handles.tx()
    }

    /// The connection behind `t` (a connection entry). Both halves are re-armed before the
    /// next sleep, whatever you do with it.
    pub fn connection_mut(&mut self, t: Token) -> Option<&mut Connection> {
        let e = self.entry(t)?;
        e.rx_dirty = true;
        e.tx_dirty = true;
        match &mut e.handles {
            Handles::Connection(c) => Some(c),
            _ => None,
        }
    }

    /// Ask to have `t` reported once its sender has room for a `len`-byte message. Arms the
    /// sender at once: `Ok(true)` means the message fits now (send it; nothing is pending),
    /// `Ok(false)` that `t` will be reported when it may fit, or the peer is gone. One wish
    /// at a time, spent when reported; a new one replaces it.
    ///
    /// # Errors
    ///
    /// As for [`Sender::arm`]: [`SendError::PeerGone`] once the peer is gone,
    /// [`SendError::TooLarge`], `Closed`, `Corrupted`; and [`SendError::Io`] (`NotFound`) if
    /// `t` has no sender.
    pub fn want_send(&mut self, t: Token, len: usize) -> Result<bool, SendError> {
        let Some(e) = self.entry(t) else {
            return Err(SendError::Io(io::ErrorKind::NotFound.into()));
        };
        let Some(tx) = e.handles.tx() else {
            return Err(SendError::Io(io::ErrorKind::NotFound.into()));
        };
        e.want = None;
        e.tx_dirty = false;
        let fits = tx.arm(len)?;
        if !fits {
            e.want = Some(len);
        }
        Ok(fits)
    }

    /// Entries registered (receivers, senders and connections; fd entries not counted).
    pub fn len(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| matches!(s, Slot::Entry(_)))
            .count()
    }

    /// True when no receiver, sender or connection is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Fill `ready` with the tokens of entries that can make progress (a receiver with
    /// something to receive, a sender with the room asked for, a gone peer, an error) and of
    /// fds that are readable. Sleeps until at least one is, or `timeout` passes (`None`: no
    /// limit); then `ready` may be empty.
    ///
    /// While it sleeps, it re-arms (re-checks) every waiting handle at least every
    /// [`RECHECK`](crate::RECHECK), as every wait of this crate does: a wake-up can be lost on
    /// its way through the nested epoll instances (a peer that drops its bell right after
    /// ringing it), and the re-check bounds what that costs. Each re-check of a handle is one
    /// `arm` (an `epoll_wait` and a heavy barrier).
    ///
    /// # Errors
    ///
    /// If `epoll_wait` fails (never for `EINTR`: that returns with what is ready, maybe
    /// nothing).
    pub fn select(&mut self, ready: &mut Vec<Token>, timeout: Option<Duration>) -> io::Result<()> {
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        loop {
            ready.clear();
            let waiting = self.arm_dirty(ready);
            let now = Instant::now();
            let left = match deadline {
                Some(d) => Some(d.saturating_duration_since(now)),
                None if timeout.is_some() => Some(Duration::MAX), // too far to represent
                None => None,
            };
            let (wait, capped) = if !ready.is_empty() {
                (Some(Duration::ZERO), false)
            } else if waiting && left.is_none_or(|l| l > crate::RECHECK) {
                (Some(crate::RECHECK), true)
            } else {
                (left, false)
            };
            self.events.clear();
            sock::epoll_wait(self.epoll.as_fd(), wait, &mut self.events)?;
            self.take_events(ready);
            if !ready.is_empty() || deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(());
            }
            if capped && self.events.is_empty() && now.elapsed() >= crate::RECHECK {
                // Nothing for a whole re-check interval: look at every waiting handle again.
                for slot in &mut self.slots {
                    if let Slot::Entry(e) = slot {
                        e.rx_dirty = true;
                        e.tx_dirty = e.want.is_some();
                    }
                }
                continue;
            }
            if self.events.is_empty() {
                return Ok(()); // EINTR, or the caller's timeout
            }
            // Only events that report nothing (a sender's ring nobody waits for): sleep on.
        }
    }

    /// Arm every entry that may have been used since it was last armed; report the ready ones.
    /// Returns whether any handle is left armed and waiting.
    fn arm_dirty(&mut self, ready: &mut Vec<Token>) -> bool {
        let mut waiting = false;
        for (i, slot) in self.slots.iter_mut().enumerate() {
            match slot {
                Slot::Entry(e) => {
                    e.reported = false;
                    if let (true, Some(rx)) = (e.rx_dirty, e.handles.rx()) {
                        // Err: the receiver will report it when used.
                        if rx.consumer.arm().unwrap_or(true) {
                            e.reported = true;
                        } else {
                            e.rx_dirty = false;
                        }
                    }
                    let tx = match e.want {
                        Some(len) if e.tx_dirty && !e.reported => {
                            e.handles.tx().map(|tx| (tx, len))
                        }
                        _ => None,
                    };
                    if let Some((tx, len)) = tx {
                        match tx.arm(len) {
                            Ok(false) => e.tx_dirty = false,
                            // The room is there (the wish is spent), or the sender failed
                            // (kept: reported until removed; `want_send` says why).
                            Ok(true) => {
                                e.want = None;
                                e.reported = true;
                            }
                            Err(_) => e.reported = true,
                        }
                    }
                    if e.reported {
                        ready.push(Token(i));
                    } else if e.handles.rx_ref().is_some() || e.want.is_some() {
                        waiting = true;
                    }
                }
                Slot::Fd { reported } => *reported = false,
                Slot::Free => {}
            }
        }
        waiting
    }

    /// Mark and report the entries the last `epoll_wait` named.
    fn take_events(&mut self, ready: &mut Vec<Token>) {
        for &k in &self.events {
            let (i, tag) = ((k >> 2) as usize, k & 3);
            match self.slots.get_mut(i) {
                Some(Slot::Entry(e)) => {
                    let report = match tag {
                        WATCH => {
                            if let Some(rx) = e.handles.rx() {
                                rx.consumer.note_peer_gone();
                                // Level-triggered and never clearing: stop watching it.
                                let _ = epoll::delete(&self.epoll, rx.peer_fd());
                                e.watching = false;
                            }
                            e.rx_dirty = true;
                            e.tx_dirty = true;
                            true
                        }
                        // A ring needs nothing here: the fd stays readable until the handle
                        // is armed again, and `arm` harvests it before it re-checks.
                        RX => {
                            e.rx_dirty = true;
                            true
                        }
                        TX => {
                            e.tx_dirty = true;
                            // Reported only if asked for; the wish is spent (a `Full` answer
                            // asks again).
                            e.want.take().is_some()
                        }
                        _ => false,
                    };
                    if report && !e.reported {
                        e.reported = true;
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
    }
}
