//! Creating, opening and claiming a ring: the memfd (memfd_create(2), fcntl(2) "File sealing"),
//! the validation of a memfd received from a peer before it is mapped, and role claims.

#[cfg(not(any(miri, loom)))]
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use crate::barrier;
use crate::consumer::Consumer;
use crate::end::{Io, Shared, Side};
use crate::error::SetupError;
use crate::layout::{
    self, DATA_OFFSET, DEFAULT_CAPACITY, MAGIC, MEMBARRIER, STATE_ACTIVE, STATE_FREE, VERSION,
};
use crate::notify::{Bell, Wake};
use crate::producer::Producer;
use crate::raw::Region;
use crate::sync::{Arc, AtomicU32, Ordering};
use crate::wait::WaitStrategy;

/// The shape of a ring. Both sides must agree on `capacity` and `max_message`; the wait
/// strategy is each handle's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    capacity: usize,
    max_message: Option<usize>,
    wait: WaitStrategy,
    membarrier: bool,
    start_index: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            capacity: DEFAULT_CAPACITY,
            max_message: None,
            wait: WaitStrategy::default(),
            membarrier: true,
            start_index: 0,
        }
    }
}

impl Config {
    /// 1 MiB of data, messages up to 256 KiB, spin-then-block waits.
    pub fn new() -> Self {
        Self::default()
    }

    /// Data capacity in bytes: a power of two from [`MIN_CAPACITY`](crate::MIN_CAPACITY) to
    /// [`MAX_CAPACITY`](crate::MAX_CAPACITY).
    pub fn capacity(mut self, bytes: usize) -> Self {
        self.capacity = bytes;
        self
    }

    /// Largest message in bytes; default a quarter of the capacity, at most
    /// [`max_message_limit`](crate::layout::max_message_limit)`(capacity)` (half less 8).
    pub fn max_message(mut self, bytes: usize) -> Self {
        self.max_message = Some(bytes);
        self
    }

    /// How the handles claimed from this ring wait (each handle can change its own later).
    pub fn wait(mut self, wait: WaitStrategy) -> Self {
        self.wait = wait;
        self
    }

    /// Whether the handles claimed from this ring may sleep with `membarrier(2)`, so that
    /// the other side's publications need no fence (default: yes, where the kernel allows it;
    /// docs/design.md, "The wake-up fence"). Off, both sides fence every publication.
    pub fn membarrier(mut self, on: bool) -> Self {
        self.membarrier = on;
        self
    }

    /// Where both indices start. Only for tests of index wrap-around (near `u32::MAX` and
    /// `u64::MAX`); rounded down to a multiple of 8.
    #[doc(hidden)]
    pub fn start_index(mut self, index: u64) -> Self {
        self.start_index = index & !7;
        self
    }

    /// The configured data capacity.
    pub fn capacity_bytes(&self) -> usize {
        self.capacity
    }

    /// The effective maximum message size.
    pub fn max_message_bytes(&self) -> usize {
        self.max_message
            .unwrap_or_else(|| layout::default_max_message(self.capacity))
    }

    /// The configured wait strategy.
    pub fn wait_strategy(&self) -> WaitStrategy {
        self.wait
    }

    /// Check the numbers without creating anything.
    ///
    /// # Errors
    ///
    /// [`SetupError::InvalidConfig`] naming the impossible number.
    pub fn validate(&self) -> Result<(), SetupError> {
        layout::check_shape(self.capacity as u64, self.max_message_bytes() as u64)?;
        Ok(())
    }
}

/// A ring segment: mapped and validated. Claim one [`Producer`] and one [`Consumer`] from it:
/// both in this process with [`Ring::pair`], or one here and one in the peer process, each
/// with a [`Bell`] of its own and the waiter fd of the other's bell (`Ring::producer`,
/// `Ring::consumer`).
#[derive(Debug)]
pub struct Ring {
    shared: Arc<Shared>,
    wait: WaitStrategy,
    membarrier: bool,
}

impl Ring {
    /// Create a new ring: a memfd (`MFD_CLOEXEC | MFD_NOEXEC_SEAL`), sized with `fallocate`
    /// so a lack of memory shows now rather than as SIGBUS later, sealed with
    /// `F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL`, and mapped shared.
    ///
    /// # Errors
    ///
    /// [`SetupError::InvalidConfig`] for out-of-range numbers, [`SetupError::Io`] naming the
    /// failing call otherwise.
    pub fn create(config: &Config) -> Result<Ring, SetupError> {
        config.validate()?;
        let cap = config.capacity;
        #[cfg(any(miri, loom))]
        let region = Region::heap(cap);
        #[cfg(not(any(miri, loom)))]
        let (region, memfd) = {
            let memfd = create_memfd(DATA_OFFSET + cap)?;
            let region = Region::map(memfd.as_fd(), cap).map_err(|e| SetupError::Io {
                op: "mmap",
                source: e,
            })?;
            (region, memfd)
        };
        let h = region.header();
        let c = &h.config;
        c.magic.store(MAGIC, Ordering::Relaxed);
        c.version.store(VERSION, Ordering::Relaxed);
        c.data_offset.store(DATA_OFFSET as u32, Ordering::Relaxed);
        c.capacity.store(cap as u64, Ordering::Relaxed);
        c.max_message
            .store(config.max_message_bytes() as u64, Ordering::Relaxed);
        h.tail.store(config.start_index, Ordering::Relaxed);
        h.head.store(config.start_index, Ordering::Relaxed);
        let shared = Shared {
            max_message: config.max_message_bytes(),
            region,
            #[cfg(not(any(miri, loom)))]
            memfd,
        };
        Ok(Ring {
            shared: Arc::new(shared),
            wait: config.wait,
            membarrier: config.membarrier,
        })
    }

    /// Open a ring a peer created, from its memfd and the configuration both sides agreed on.
    /// Before anything is mapped: it must be a memfd whose seals forbid shrinking and growing
    /// (added here if the peer left them off and still can be), with no write seal, and
    /// exactly `DATA_OFFSET + capacity` bytes long. After mapping, the header must carry the
    /// magic, this layout version, and the agreed capacity and maximum message, and its
    /// indices must be possible. The fd is closed on every error.
    ///
    /// # Errors
    ///
    /// A [`SetupError`] naming the first check that failed.
    #[cfg(not(any(miri, loom)))]
    pub fn open(memfd: OwnedFd, config: &Config) -> Result<Ring, SetupError> {
        config.validate()?;
        let cap = config.capacity;
        check_memfd(memfd.as_fd(), (DATA_OFFSET + cap) as u64)?;
        let region = Region::map(memfd.as_fd(), cap).map_err(|e| SetupError::Io {
            op: "mmap",
            source: e,
        })?;
        let c = &region.header().config;
        let expect = |what, found: u64, expected: u64| {
            if found == expected {
                Ok(())
            } else {
                Err(SetupError::HeaderMismatch {
                    what,
                    found,
                    expected,
                })
            }
        };
        expect("magic", c.magic.load(Ordering::Relaxed), MAGIC)?;
        expect(
            "version",
            c.version.load(Ordering::Relaxed).into(),
            VERSION.into(),
        )?;
        expect(
            "data offset",
            c.data_offset.load(Ordering::Relaxed).into(),
            DATA_OFFSET as u64,
        )?;
        expect("capacity", c.capacity.load(Ordering::Relaxed), cap as u64)?;
        expect(
            "max message",
            c.max_message.load(Ordering::Relaxed),
            config.max_message_bytes() as u64,
        )?;
        let ring = Ring {
            shared: Arc::new(Shared {
                max_message: config.max_message_bytes(),
                region,
                memfd,
            }),
            wait: config.wait,
            membarrier: config.membarrier,
        };
        // Checked again, authoritatively, when a role is claimed.
        ring.indices()?;
        Ok(ring)
    }

    /// The memfd to hand to the peer.
    #[cfg(not(any(miri, loom)))]
    pub fn memfd(&self) -> BorrowedFd<'_> {
        self.shared.memfd.as_fd()
    }

    /// Claim the producer role for this process. `bell` is what it rings to wake the consumer
    /// (send its [`Bell::waiter_fd`] to the peer); `peer_waiter` is the waiter fd of the
    /// consumer's bell, which the producer sleeps on when the ring is full. Once per ring,
    /// across all processes that share it.
    ///
    /// # Errors
    ///
    /// [`SetupError::BadWaiter`] if `peer_waiter` is not an epoll fd;
    /// [`SetupError::RoleTaken`] if a producer was claimed before (even one since dropped);
    /// [`SetupError::Corrupted`] if the indices in the header are impossible.
    #[cfg(not(any(miri, loom)))]
    pub fn producer(&self, bell: Bell, peer_waiter: OwnedFd) -> Result<Producer, SetupError> {
        let wake = Wake::adopt(peer_waiter)?;
        let (own, head, tail) = self.claim(Side::Producer)?;
        Ok(Producer::new(
            self.io(Side::Producer, own, bell, wake),
            head,
            tail,
        ))
    }

    /// Claim the consumer role for this process. `bell` is what it rings to wake the producer;
    /// `peer_waiter` is the waiter fd of the producer's bell. Once per ring.
    ///
    /// # Errors
    ///
    /// As for [`Ring::producer`].
    #[cfg(not(any(miri, loom)))]
    pub fn consumer(&self, bell: Bell, peer_waiter: OwnedFd) -> Result<Consumer, SetupError> {
        let wake = Wake::adopt(peer_waiter)?;
        let (own, head, _) = self.claim(Side::Consumer)?;
        Ok(Consumer::new(
            self.io(Side::Consumer, own, bell, wake),
            head,
        ))
    }

    /// Claim both roles for two threads of this process, each with a new bell.
    ///
    /// # Errors
    ///
    /// [`SetupError::RoleTaken`] if either role was claimed before (this call then takes
    /// neither); [`SetupError::Io`] if a bell cannot be made.
    pub fn pair(&self) -> Result<(Producer, Consumer), SetupError> {
        let bell = || {
            Bell::new().map_err(|e| SetupError::Io {
                op: "eventfd/epoll_create1",
                source: e,
            })
        };
        let (data, space) = (bell()?, bell()?);
        let local = |b: &Bell| {
            Wake::local(b).map_err(|e| SetupError::Io {
                op: "dup",
                source: e,
            })
        };
        let (data_wake, space_wake) = (local(&data)?, local(&space)?);
        let (p_own, head, tail) = self.claim(Side::Producer)?;
        let (c_own, _, _) = self.claim(Side::Consumer).inspect_err(|_| {
            // Give the producer role back: this call takes both or neither.
            self.word(Side::Producer)
                .store(STATE_FREE, Ordering::Release);
        })?;
        Ok((
            Producer::new(self.io(Side::Producer, p_own, data, space_wake), head, tail),
            Consumer::new(self.io(Side::Consumer, c_own, space, data_wake), head),
        ))
    }

    fn io(&self, side: Side, own: u32, bell: Bell, wake: Wake) -> Io {
        Io {
            region: self.shared.region.clone(),
            shared: self.shared.clone(),
            side,
            bell,
            wake,
            own: std::cell::Cell::new(own),
            wait: self.wait,
            peer_watch: None,
        }
    }

    fn word(&self, side: Side) -> &AtomicU32 {
        let h = self.shared.region.header();
        match side {
            Side::Producer => &h.producer,
            Side::Consumer => &h.consumer,
        }
    }

    /// Take `side`'s role: its state word goes from FREE to ACTIVE (with `MEMBARRIER` if this
    /// process sleeps with a membarrier). Returns that word and the indices to start from.
    fn claim(&self, side: Side) -> Result<(u32, u64, u64), SetupError> {
        let own = if self.membarrier && barrier::available() {
            STATE_ACTIVE | MEMBARRIER
        } else {
            STATE_ACTIVE
        };
        let word = self.word(side);
        word.compare_exchange(STATE_FREE, own, Ordering::AcqRel, Ordering::Acquire)
            .map_err(|_| SetupError::RoleTaken(side.name()))?;
        // Our own index is read back from shared memory once, here, and never again. A claim
        // refused for impossible indices gives the role back: no handle exists to close it.
        let (head, tail) = self
            .indices()
            .inspect_err(|_| word.store(STATE_FREE, Ordering::Release))?;
        Ok((own, head, tail))
    }

    /// The indices in the header, if they are possible.
    fn indices(&self) -> Result<(u64, u64), SetupError> {
        let h = self.shared.region.header();
        let cap = self.shared.region.capacity();
        let head = h.head.load(Ordering::Acquire);
        let tail = h.tail.load(Ordering::Acquire);
        layout::check_indices(head, tail, cap)?;
        Ok((head, tail))
    }

    /// Data capacity in bytes.
    pub fn capacity(&self) -> usize {
        self.shared.region.capacity()
    }

    #[cfg_attr(loom, allow(dead_code))]
    pub(crate) fn region(&self) -> &Region {
        &self.shared.region
    }

    /// Largest message in bytes.
    pub fn max_message(&self) -> usize {
        self.shared.max_message
    }
}

#[cfg(not(any(miri, loom)))]
fn create_memfd(size: usize) -> Result<OwnedFd, SetupError> {
    use rustix::fs::{FallocateFlags, MemfdFlags, SealFlags};
    let fd =
        match rustix::fs::memfd_create("shmpipe", MemfdFlags::CLOEXEC | MemfdFlags::NOEXEC_SEAL) {
            // Before Linux 6.3 there is no MFD_NOEXEC_SEAL.
            Err(rustix::io::Errno::INVAL) => {
                rustix::fs::memfd_create("shmpipe", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)
            }
            r => r,
        }
        .map_err(SetupError::io("memfd_create"))?;
    rustix::fs::fallocate(&fd, FallocateFlags::empty(), 0, size as u64)
        .map_err(SetupError::io("fallocate"))?;
    rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL)
        .map_err(SetupError::io("fcntl(F_ADD_SEALS)"))?;
    Ok(fd)
}

/// Seals first (a sealed size cannot change after we look at it), then type and size.
#[cfg(not(any(miri, loom)))]
fn check_memfd(fd: BorrowedFd<'_>, size: u64) -> Result<(), SetupError> {
    use rustix::fs::SealFlags;
    let seals = match rustix::fs::fcntl_get_seals(fd) {
        Ok(s) => s,
        Err(rustix::io::Errno::INVAL) => return Err(SetupError::NotMemfd),
        Err(e) => return Err(SetupError::io("fcntl(F_GET_SEALS)")(e)),
    };
    let bad = |s: SealFlags| SetupError::Seals { seals: s.bits() };
    if seals.intersects(SealFlags::WRITE | SealFlags::FUTURE_WRITE) {
        return Err(bad(seals));
    }
    let needed = SealFlags::SHRINK | SealFlags::GROW;
    if !seals.contains(needed) {
        // The peer left them off; we can still add them unless it sealed the seals.
        rustix::fs::fcntl_add_seals(fd, needed).map_err(|_| bad(seals))?;
    }
    if !seals.contains(SealFlags::SEAL) {
        // Stop the peer from adding a write seal that would break our mapping later.
        rustix::fs::fcntl_add_seals(fd, SealFlags::SEAL).map_err(|_| bad(seals))?;
    }
    let st = rustix::fs::fstat(fd).map_err(SetupError::io("fstat"))?;
    if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile {
        return Err(SetupError::NotMemfd);
    }
    let actual = st.st_size as u64;
    if actual != size {
        return Err(SetupError::SizeMismatch {
            expected: size,
            actual,
        });
    }
    Ok(())
}
