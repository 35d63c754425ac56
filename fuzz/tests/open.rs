//! Suite 2, continued: what a hostile peer can offer at set-up. Arbitrary combinations of fd
//! kind (memfd with or without sealing, tmpfs and disk files, pipe, eventfd, socket), seals,
//! size, header fields and indices are handed to `Ring::open`, and the answer must be the
//! first failing check of docs/protocol.md §1.9, decided here independently. A ring that
//! opens must be sealed against shrinking (faults.md M2: the peer's `ftruncate` fails, no
//! SIGBUS). Then each role is claimed with whatever the peer offers as its waiter: the
//! waiter of a real bell, an empty epoll instance, or an eventfd (plain, blocking,
//! semaphore), pipe, memfd, socket or regular file. Only an epoll fd is accepted; anything
//! else is `BadWaiter`, the offered fd is closed and the role stays free. Role words the peer
//! left set make the claim `RoleTaken`; a role is claimed once.

use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use proptest::prelude::*;
use rustix::fs::{MemfdFlags, Mode, OFlags, SealFlags};
use shmpipe_fuzz::{deadline, proptest_config};
use shmpipe_ring::layout::{self, DATA_OFFSET, offsets};
use shmpipe_ring::{Bell, Config, Ring, SetupError, TryRecvError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MemKind {
    Memfd,
    /// A memfd created without `MFD_ALLOW_SEALING`: it reports `F_SEAL_SEAL` from birth.
    MemfdNoSealing,
    /// An unlinked file on disk (`O_TMPFILE` in /tmp).
    DiskFile,
    /// An unlinked tmpfs file (`O_TMPFILE` in /dev/shm): passes fstat, fails the seals.
    ShmFile,
    Pipe,
    Eventfd,
    Socket,
}

/// What the peer offers as the waiter a role sleeps on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WaiterKind {
    /// The waiter of the other role's bell, as an honest peer sends it.
    PeerBell,
    /// An epoll instance that watches nothing: accepted (it is one; it never wakes us, so
    /// we wait out our re-check period, which a peer that never rings costs anyway).
    EmptyEpoll,
    /// An eventfd (a waiter must be an epoll instance): refused.
    Eventfd,
    /// An eventfd without `EFD_NONBLOCK`.
    BlockingEventfd,
    /// An `EFD_SEMAPHORE` eventfd (faults.md S12's fd).
    Semaphore,
    /// The read end of a pipe.
    Pipe,
    Memfd,
    Socket,
    /// An unlinked regular file on disk.
    RegularFile,
    /// Whatever the producer was offered, again (faults.md S11's shape: one fd for both roles;
    /// consumer only).
    SameAsProducer,
}

#[derive(Debug, Clone, Copy)]
enum Size {
    Exact,
    Delta(i32),
    Zero,
}

#[derive(Debug, Clone)]
struct OpenCase {
    shift: u32,
    mem: MemKind,
    seals: u8,
    size: Size,
    /// (field, value): rewrite one header field after writing a correct header.
    header: Option<(u8, u64)>,
    /// The producer's and the consumer's waiter.
    waiters: (WaiterKind, WaiterKind),
    states: (u32, u32),
}

fn waiter_kind(consumer: bool) -> impl Strategy<Value = WaiterKind> {
    let same = if consumer { 1 } else { 0 };
    prop_oneof![
        10 => Just(WaiterKind::PeerBell),
        1 => Just(WaiterKind::EmptyEpoll),
        1 => Just(WaiterKind::Eventfd),
        1 => Just(WaiterKind::BlockingEventfd),
        1 => Just(WaiterKind::Semaphore),
        1 => Just(WaiterKind::Pipe),
        1 => Just(WaiterKind::Memfd),
        1 => Just(WaiterKind::Socket),
        1 => Just(WaiterKind::RegularFile),
        same => Just(WaiterKind::SameAsProducer),
    ]
}

/// A state word the peer left in a role (docs/protocol.md §1.3): free, any state, flags
/// alone (still not free: a claim needs the whole word zero), or garbage.
fn role_word() -> impl Strategy<Value = u32> {
    prop_oneof![
        4 => 0u32..4,
        1 => Just(1 << 8),
        1 => Just(1 << 9),
        1 => Just(1 | 1 << 8 | 1 << 9),
        1 => any::<u32>(),
    ]
}

fn open_case() -> impl Strategy<Value = OpenCase> {
    (
        6u32..=14,
        prop_oneof![
            8 => Just(MemKind::Memfd),
            1 => Just(MemKind::MemfdNoSealing),
            1 => Just(MemKind::DiskFile),
            1 => Just(MemKind::ShmFile),
            1 => Just(MemKind::Pipe),
            1 => Just(MemKind::Eventfd),
            1 => Just(MemKind::Socket),
        ],
        prop_oneof![
            4 => Just(0b111u8),
            2 => Just(0u8),
            1 => Just(0b011u8),
            1 => Just(0b100u8),
            3 => 0u8..32,
        ],
        prop_oneof![
            6 => Just(Size::Exact),
            2 => prop_oneof![-8192i32..=8192, Just(-1), Just(1), Just(4096), Just(-4096)]
                .prop_map(Size::Delta),
            1 => Just(Size::Zero),
        ],
        prop_oneof![
            6 => Just(None),
            3 => (0u8..7, prop_oneof![any::<u64>(), 0u64..9, Just(4096u64), Just(64u64)])
                .prop_map(Some),
        ],
        (waiter_kind(false), waiter_kind(true)),
        prop_oneof![8 => Just((0u32, 0u32)), 1 => (role_word(), role_word())],
    )
        .prop_map(
            |(shift, mem, seals, size, header, waiters, states)| OpenCase {
                shift,
                mem,
                seals,
                size,
                header,
                waiters,
                states,
            },
        )
}

/// What `Ring::open` must answer, with the field for header mismatches.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Want {
    Opens,
    /// `NotMemfd` or `Seals`: a file that is not a sealable memfd.
    NotAMemfd,
    Seals,
    Size,
    Header(&'static str),
    /// Indices that break docs/protocol.md §1.2.
    Indices,
}

fn seal_flags(bits: u8) -> SealFlags {
    let mut s = SealFlags::empty();
    for (bit, f) in [
        (1, SealFlags::SHRINK),
        (2, SealFlags::GROW),
        (4, SealFlags::SEAL),
        (8, SealFlags::WRITE),
        (16, SealFlags::FUTURE_WRITE),
    ] {
        if bits & bit != 0 {
            s |= f;
        }
    }
    s
}

fn memfd(sealing: bool) -> OwnedFd {
    let flags = if sealing {
        MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING
    } else {
        MemfdFlags::CLOEXEC
    };
    rustix::fs::memfd_create("hostile", flags).expect("memfd_create")
}

fn tmpfile(dir: &str) -> OwnedFd {
    rustix::fs::open(
        dir,
        OFlags::TMPFILE | OFlags::RDWR | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )
    .expect("O_TMPFILE")
}

/// Is a waiter of this kind an epoll instance? (`SameAsProducer` is what the producer got.)
fn is_epoll(kind: WaiterKind) -> bool {
    matches!(kind, WaiterKind::PeerBell | WaiterKind::EmptyEpoll)
}

fn socket() -> OwnedFd {
    use rustix::net::{AddressFamily, SocketFlags, SocketType, socketpair};
    socketpair(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )
    .expect("socketpair")
    .0
}

/// The fd offered as a waiter of `kind`; `peer` is the bell of the other role, `producers`
/// what the producer was offered.
fn waiter(kind: WaiterKind, peer: &Bell, producers: Option<&OwnedFd>) -> OwnedFd {
    use rustix::event::EventfdFlags as F;
    match kind {
        WaiterKind::PeerBell => peer.waiter_fd().try_clone_to_owned().expect("dup"),
        WaiterKind::EmptyEpoll => {
            rustix::event::epoll::create(rustix::event::epoll::CreateFlags::CLOEXEC)
                .expect("epoll_create1")
        }
        WaiterKind::Eventfd => {
            rustix::event::eventfd(0, F::CLOEXEC | F::NONBLOCK).expect("eventfd")
        }
        WaiterKind::BlockingEventfd => rustix::event::eventfd(0, F::CLOEXEC).expect("eventfd"),
        WaiterKind::Semaphore => {
            rustix::event::eventfd(0, F::CLOEXEC | F::NONBLOCK | F::SEMAPHORE).expect("eventfd")
        }
        WaiterKind::Pipe => rustix::pipe::pipe().expect("pipe").0,
        WaiterKind::Memfd => memfd(true),
        WaiterKind::Socket => socket(),
        WaiterKind::RegularFile => tmpfile("/tmp"),
        WaiterKind::SameAsProducer => producers
            .expect("the producer's waiter")
            .try_clone()
            .expect("dup"),
    }
}

/// What fd number `n` refers to now, as /proc/self/fd shows it: device, inode and (for an
/// eventfd, whose inodes are all the one anonymous inode) its `eventfd-id`; `None` once the
/// number is closed. A number that was closed and reused by another thread shows a different
/// object, so "closed" can be told without touching a raw fd.
fn identity(n: RawFd) -> Option<(u64, u64, Option<String>)> {
    let meta = std::fs::metadata(format!("/proc/self/fd/{n}")).ok()?;
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{n}")).ok()?;
    let id = info
        .lines()
        .find(|l| l.starts_with("eventfd-id:"))
        .map(str::to_owned);
    Some((meta.dev(), meta.ino(), id))
}

/// Claim one role with the waiter `fd` of `kind` (`epoll`: the test made it an epoll
/// instance), as the test's decision says it must go: an epoll fd claims a free role and meets `RoleTaken` on a taken one; anything else is
/// `BadWaiter` whatever the role word says. Every refused fd must be closed, and a refusal
/// must leave the role as it was: a good waiter (`good`) then claims it if it was free. A
/// claimed role cannot be claimed again. The first claim rings `bell`, later ones a bell of
/// their own. Returns the handle if the role was claimed.
fn offer<T>(
    role: &str,
    (kind, epoll): (WaiterKind, bool),
    (bell, fd): (Bell, OwnedFd),
    state: u32,
    claim: impl Fn(Bell, OwnedFd) -> Result<T, SetupError>,
    good: impl Fn() -> OwnedFd,
) -> Option<T> {
    let n = fd.as_raw_fd();
    let offered = identity(n).expect("the offered fd is open");
    let r = claim(bell, fd);
    let at = format!("{role} offered {kind:?} with role word {state}");
    let claimed = match r {
        Ok(h) => {
            assert!(epoll && state == 0, "{at}: claimed");
            Some(h)
        }
        Err(SetupError::BadWaiter { why }) => {
            assert!(!epoll, "{at}: an epoll fd refused: {why}");
            None
        }
        Err(SetupError::RoleTaken(r)) => {
            assert!(epoll && state != 0, "{at}: RoleTaken");
            assert_eq!(r, role, "{at}: RoleTaken names the role");
            None
        }
        Err(e) => panic!("{at}: unexpected claim error: {e}"),
    };
    if let Some(h) = claimed {
        // Once per ring.
        match claim(Bell::new().expect("bell"), good()) {
            Err(SetupError::RoleTaken(_)) => {}
            Err(e) => panic!("{at}: claimed twice: {e}"),
            Ok(_) => panic!("{at}: claimed twice"),
        }
        return Some(h);
    }
    assert_ne!(
        identity(n),
        Some(offered),
        "{at}: the refused fd is still open"
    );
    match claim(Bell::new().expect("bell"), good()) {
        Ok(h) => {
            assert_eq!(state, 0, "{at}: a taken role claimed after the refusal");
            Some(h)
        }
        Err(SetupError::RoleTaken(_)) => {
            assert_ne!(state, 0, "{at}: the refusal took the role");
            None
        }
        Err(e) => panic!("{at}: claim with a good waiter after the refusal: {e}"),
    }
}

fn run_open(c: OpenCase) {
    let cap = 1usize << c.shift;
    let max = cap / 4;
    let size = DATA_OFFSET + cap;
    let is_file = matches!(
        c.mem,
        MemKind::Memfd | MemKind::MemfdNoSealing | MemKind::DiskFile | MemKind::ShmFile
    );
    let mem = match c.mem {
        MemKind::Memfd => memfd(true),
        MemKind::MemfdNoSealing => memfd(false),
        MemKind::DiskFile => tmpfile("/tmp"),
        MemKind::ShmFile => tmpfile("/dev/shm"),
        MemKind::Pipe => rustix::pipe::pipe().expect("pipe").0,
        MemKind::Eventfd => {
            rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC).expect("eventfd")
        }
        MemKind::Socket => {
            use rustix::net::{AddressFamily, SocketFlags, SocketType, socketpair};
            socketpair(
                AddressFamily::UNIX,
                SocketType::STREAM,
                SocketFlags::CLOEXEC,
                None,
            )
            .expect("socketpair")
            .0
        }
    };

    // Write the header a creator following docs/protocol.md §1.1 would write, then the
    // peer's one change, then size and seal.
    let mut fields: [(usize, u64, usize, &str); 7] = [
        (offsets::MAGIC, layout::MAGIC, 8, "magic"),
        (offsets::VERSION, layout::VERSION.into(), 4, "version"),
        (offsets::DATA_OFFSET, DATA_OFFSET as u64, 4, "data offset"),
        (offsets::CAPACITY, cap as u64, 8, "capacity"),
        (offsets::MAX_MESSAGE, max as u64, 8, "max message"),
        (offsets::TAIL, 0, 8, "tail"),
        (offsets::HEAD, 0, 8, "head"),
    ];
    if let Some((f, v)) = c.header {
        let f = &mut fields[usize::from(f) % fields.len()];
        f.1 = if f.2 == 4 { v & 0xFFFF_FFFF } else { v };
    }
    let actual_size = match c.size {
        Size::Exact => size as u64,
        Size::Delta(d) => (size as i64 + i64::from(d)).max(0) as u64,
        Size::Zero => 0,
    };
    if is_file {
        rustix::fs::ftruncate(&mem, actual_size).expect("ftruncate");
        for &(off, v, width, _) in &fields {
            if off + width <= actual_size as usize {
                let n = rustix::io::pwrite(&mem, &v.to_le_bytes()[..width], off as u64)
                    .expect("pwrite");
                assert_eq!(n, width);
            }
        }
        for (off, v) in [
            (offsets::PRODUCER, c.states.0),
            (offsets::CONSUMER, c.states.1),
        ] {
            if off + 4 <= actual_size as usize {
                rustix::io::pwrite(&mem, &v.to_le_bytes(), off as u64).expect("pwrite");
            }
        }
    }
    let mut seals = SealFlags::empty();
    if c.mem == MemKind::Memfd {
        seals = seal_flags(c.seals);
        rustix::fs::fcntl_add_seals(&mem, seals).expect("add seals");
    }
    let keep = rustix::io::fcntl_dupfd_cloexec(&mem, 0).expect("dup");

    // The answer §1.9 demands, check by check.
    let want = (|| {
        match c.mem {
            MemKind::Memfd => {
                if seals.intersects(SealFlags::WRITE | SealFlags::FUTURE_WRITE) {
                    return Want::Seals;
                }
                if seals.contains(SealFlags::SEAL)
                    && !seals.contains(SealFlags::SHRINK | SealFlags::GROW)
                {
                    return Want::Seals;
                }
            }
            MemKind::MemfdNoSealing => return Want::Seals,
            _ => return Want::NotAMemfd,
        }
        if actual_size != size as u64 {
            return Want::Size;
        }
        for &(_, v, _, what) in &fields[..5] {
            let right = match what {
                "magic" => layout::MAGIC,
                "version" => layout::VERSION.into(),
                "data offset" => DATA_OFFSET as u64,
                "capacity" => cap as u64,
                _ => max as u64,
            };
            if v != right {
                return Want::Header(what);
            }
        }
        // §1.2: both multiples of 8, `tail - head <= capacity` in wrapping arithmetic.
        let (tail, head) = (fields[5].1, fields[6].1);
        if tail % 8 != 0 || head % 8 != 0 || tail.wrapping_sub(head) > cap as u64 {
            return Want::Indices;
        }
        Want::Opens
    })();

    let r = Ring::open(mem, &Config::new().capacity(cap));
    let got = match &r {
        Ok(_) => Want::Opens,
        Err(SetupError::NotMemfd) if want == Want::NotAMemfd => Want::NotAMemfd,
        Err(SetupError::Seals { .. }) if want == Want::NotAMemfd => Want::NotAMemfd,
        Err(SetupError::Seals { .. }) => Want::Seals,
        Err(SetupError::SizeMismatch { expected, actual }) => {
            assert_eq!((*expected, *actual), (size as u64, actual_size));
            Want::Size
        }
        Err(SetupError::HeaderMismatch { what, .. }) => Want::Header(what),
        Err(SetupError::Corrupted(_)) => Want::Indices,
        Err(e) => panic!("unexpected open error: {e}"),
    };
    assert_eq!(got, want, "{r:?}");
    let Ok(ring) = r else { return };

    // Sealed now: a peer can no longer shrink it (faults.md M2), nor add a write seal.
    let now = rustix::fs::fcntl_get_seals(&keep).expect("seals");
    assert!(now.contains(SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL));
    assert!(rustix::fs::ftruncate(&keep, 0).is_err(), "shrink allowed");

    // Each role claimed with what the peer offers as the other role's waiter.
    let (producer_bell, consumer_bell) = (Bell::new().expect("bell"), Bell::new().expect("bell"));
    let dup = |b: &Bell| b.waiter_fd().try_clone_to_owned().expect("dup");
    let (producer_waiter, consumer_waiter) = (dup(&producer_bell), dup(&consumer_bell));
    let (pk, ck) = c.waiters;
    let for_producer = waiter(pk, &consumer_bell, None);
    let for_consumer = waiter(ck, &producer_bell, Some(&for_producer));
    let consumer_epoll = if ck == WaiterKind::SameAsProducer {
        is_epoll(pk)
    } else {
        is_epoll(ck)
    };
    let tx = offer(
        "producer",
        (pk, is_epoll(pk)),
        (producer_bell, for_producer),
        c.states.0,
        |bell, w| ring.producer(bell, w),
        || consumer_waiter.try_clone().expect("dup"),
    );
    let rx = offer(
        "consumer",
        (ck, consumer_epoll),
        (consumer_bell, for_consumer),
        c.states.1,
        |bell, w| ring.consumer(bell, w),
        || producer_waiter.try_clone().expect("dup"),
    );

    // Both claimed on a ring the peer left empty: it carries a message.
    let empty = fields[5].1 == fields[6].1;
    if let (Some(mut tx), Some(mut rx), true) = (tx, rx, empty) {
        tx.try_send(b"through").expect("send");
        let mut buf = Vec::new();
        rx.try_recv(&mut buf).expect("receive");
        assert_eq!(buf, b"through");
        // A consumer that sleeps on the waiter of the bell the producer rings (the producer
        // claimed with it at once; the consumer was offered its waiter, or got it after a
        // refusal) is woken when the producer rings.
        if is_epoll(pk) && (ck == WaiterKind::PeerBell || !consumer_epoll) {
            assert!(!rx.arm().expect("arm"), "empty: arm says wait");
            tx.try_send(b"wake").expect("send");
            assert!(readable(rx.as_fd(), Duration::from_secs(5)), "no wake-up");
        }
    }
}

/// Is `fd` readable within `timeout`?
fn readable(fd: std::os::fd::BorrowedFd<'_>, timeout: Duration) -> bool {
    use rustix::event::{PollFd, PollFlags, Timespec, poll};
    let ts = Timespec::try_from(timeout).expect("timespec");
    let mut fds = [PollFd::from_borrowed_fd(fd, PollFlags::IN)];
    matches!(poll(&mut fds, Some(&ts)), Ok(1))
}

proptest! {
    #![proptest_config(proptest_config(1000, "proptest-regressions/open.txt"))]

    /// faults.md M1, M2, M3, M4, S10, and S11/S12 in their new form (no eventfd is accepted as
    /// a waiter): everything `Ring::open` and a claim are offered.
    #[test]
    fn open_answers_the_first_failing_check(c in open_case()) {
        deadline(30, "open case", move || run_open(c));
    }
}

/// A ring created by hand from docs/protocol.md alone (this file's header writer), opened,
/// and used: the layout the document gives is the one the ring reads and writes. The numbers
/// are the document's, written out, not the ring's constants: when the layout changes, this
/// test is to be rewritten from the new document.
#[test]
fn a_ring_written_from_the_protocol_document_carries_messages() {
    deadline(30, "hand-made ring", || {
        let cap = 4096;
        let mem = memfd(true);
        rustix::fs::ftruncate(&mem, (DATA_OFFSET + cap) as u64).expect("ftruncate");
        let w = |off: usize, b: &[u8]| {
            rustix::io::pwrite(&mem, b, off as u64).expect("pwrite");
        };
        let r64 = |off: usize| {
            let mut b = [0u8; 8];
            rustix::io::pread(&mem, &mut b, off as u64).expect("pread");
            u64::from_le_bytes(b)
        };
        let r32 = |off: usize| {
            let mut b = [0u8; 4];
            rustix::io::pread(&mem, &mut b, off as u64).expect("pread");
            u32::from_le_bytes(b)
        };
        // §1.4: tag (the index divided by 8, mod 2^32) in bits 63..32, kind in 31..30,
        // length in 29..0.
        let word = |kind: u64, index: u64, len: u64| {
            (((index / 8) % (1 << 32)) << 32) | (kind << 30) | len
        };
        // §1.1.
        w(0, b"SHMPIPE\0");
        w(8, &2u32.to_le_bytes());
        w(12, &4096u32.to_le_bytes());
        w(16, &(cap as u64).to_le_bytes());
        w(24, &(cap as u64 / 4).to_le_bytes());
        // §1.2: both indices start at 4080, 16 bytes before the end.
        let start = 4080u64;
        w(128, &start.to_le_bytes());
        w(256, &start.to_le_bytes());
        rustix::fs::fcntl_add_seals(&mem, SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL)
            .expect("seal");
        let ring = Ring::open(
            rustix::io::fcntl_dupfd_cloexec(&mem, 0).unwrap(),
            &Config::new().capacity(cap),
        )
        .expect("open");
        let (producer_bell, consumer_bell) = (Bell::new().unwrap(), Bell::new().unwrap());
        let dup = |b: &Bell| b.waiter_fd().try_clone_to_owned().unwrap();
        let (for_tx, for_rx) = (dup(&consumer_bell), dup(&producer_bell));
        let mut rx = ring.consumer(consumer_bell, for_rx).expect("consumer");
        // §1.3: the consumer's state word says active (with MEMBARRIER or not).
        assert_eq!(r32(512) & !(1 << 9), 1, "consumer state word");
        let mut buf = Vec::new();
        assert!(matches!(rx.try_recv(&mut buf), Err(TryRecvError::Empty)));
        // A producer that never claimed the role publishes by hand, as §1.4 orders it: a
        // padding record at 4080 (16 bytes to the end: length 8) and "hello" at 4096
        // (position 0) in one batch: the payload, the zero word after the last record
        // (4112, position 16; the memfd is zero already), the second header word, and the
        // first one last.
        w(DATA_OFFSET + 8, b"hello");
        w(DATA_OFFSET + 16, &0u64.to_le_bytes());
        w(DATA_OFFSET, &word(1, 4096, 5).to_le_bytes());
        assert!(
            matches!(rx.try_recv(&mut buf), Err(TryRecvError::Empty)),
            "a record behind an unpublished one was read"
        );
        w(DATA_OFFSET + 4080, &word(2, 4080, 8).to_le_bytes());
        assert_eq!(rx.try_recv(&mut buf).expect("message"), 5);
        assert_eq!(buf, b"hello");
        assert!(matches!(rx.try_recv(&mut buf), Err(TryRecvError::Empty)));
        // §1.6 step 3: the consumer released everything it read.
        assert_eq!(r64(256), 4112, "head");
        // The hand-made producer hands its role over: its final index becomes the starting
        // index of the producer that claims the role (§1.8 reads it from `tail`).
        w(128, &4112u64.to_le_bytes());
        let mut tx = ring.producer(producer_bell, for_tx).expect("producer");
        assert_eq!(r32(384) & !(1 << 9), 1, "producer state word");
        tx.try_send(b"world!").expect("send");
        // Its record is where §1.4 puts it, and the word after it is zero.
        assert_eq!(r64(DATA_OFFSET + 16), word(1, 4112, 6));
        assert_eq!(r64(DATA_OFFSET + 32), 0, "the word after the record");
        let mut payload = [0u8; 6];
        rustix::io::pread(&mem, &mut payload, (DATA_OFFSET + 24) as u64).unwrap();
        assert_eq!(&payload, b"world!");
        assert_eq!(r64(128), 4112, "tail moved before the close");
        rx.try_recv(&mut buf).expect("message");
        assert_eq!(buf, b"world!");
        // §1.8: closing leaves the final index in `tail`, then state 2.
        drop(tx);
        assert_eq!(r64(128), 4128, "final tail");
        assert_eq!(
            r32(384) & !(1 << 9),
            2,
            "producer state word after the close"
        );
        assert!(matches!(
            rx.try_recv(&mut buf),
            Err(TryRecvError::Failed(shmpipe_ring::RecvError::Closed))
        ));
    });
}
