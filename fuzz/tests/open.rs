//! Suite 2, continued: what a hostile peer can offer at open time. Arbitrary combinations of
//! fd kind (memfd with or without sealing, tmpfs and disk files, pipe, eventfd, socket), seals,
//! size, header fields, indices, role words and eventfd kinds are handed to `Ring::open`,
//! and the answer must be the first failing check of docs/protocol.md §1.9, decided here
//! independently. A ring that opens must also be usable, sealed against shrinking (FAULTS
//! M2: the peer's `ftruncate` fails, no SIGBUS) and have non-blocking eventfds.

use std::os::fd::{AsFd, OwnedFd};

use proptest::prelude::*;
use rustix::fs::{MemfdFlags, Mode, OFlags, SealFlags};
use shmring_fuzz::{deadline, proptest_config};
use shmring_ring::layout::{self, DATA_OFFSET, offsets};
use shmring_ring::{Config, Ring, RingFds, SetupError};

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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EvKind {
    Eventfd,
    /// An eventfd without `EFD_NONBLOCK`: accepted, and made non-blocking by open.
    Blocking,
    Semaphore,
    Pipe,
    Memfd,
    /// The data-ready eventfd again (space-ready only).
    SameAsData,
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
    data: EvKind,
    space: EvKind,
    states: (u32, u32),
}

fn ev_kind(same: bool) -> impl Strategy<Value = EvKind> {
    let w = if same { 1 } else { 0 };
    prop_oneof![
        8 => Just(EvKind::Eventfd),
        1 => Just(EvKind::Blocking),
        1 => Just(EvKind::Semaphore),
        1 => Just(EvKind::Pipe),
        1 => Just(EvKind::Memfd),
        w => Just(EvKind::SameAsData),
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
        ev_kind(false),
        ev_kind(true),
        prop_oneof![8 => Just((0u32, 0u32)), 1 => (0u32..4, 0u32..4)],
    )
        .prop_map(
            |(shift, mem, seals, size, header, data, space, states)| OpenCase {
                shift,
                mem,
                seals,
                size,
                header,
                data,
                space,
                states,
            },
        )
}

/// What `Ring::open` must answer, with the role for eventfd errors and the field for header
/// mismatches.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Want {
    Opens,
    /// `NotMemfd` or `Seals`: a file that is not a sealable memfd.
    NotAMemfd,
    Seals,
    Size,
    Eventfd(&'static str),
    Header(&'static str),
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

fn eventfd(kind: EvKind, data: &OwnedFd) -> OwnedFd {
    use rustix::event::EventfdFlags as F;
    match kind {
        EvKind::Eventfd => rustix::event::eventfd(0, F::CLOEXEC | F::NONBLOCK).expect("eventfd"),
        EvKind::Blocking => rustix::event::eventfd(0, F::CLOEXEC).expect("eventfd"),
        EvKind::Semaphore => {
            rustix::event::eventfd(0, F::CLOEXEC | F::NONBLOCK | F::SEMAPHORE).expect("eventfd")
        }
        EvKind::Pipe => rustix::pipe::pipe().expect("pipe").0,
        EvKind::Memfd => memfd(true),
        EvKind::SameAsData => rustix::io::fcntl_dupfd_cloexec(data, 0).expect("dup"),
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
            (offsets::PRODUCER_STATE, c.states.0),
            (offsets::CONSUMER_STATE, c.states.1),
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
    let data = eventfd(c.data, &mem);
    let space = eventfd(c.space, &data);
    let keep = (
        rustix::io::fcntl_dupfd_cloexec(&mem, 0).expect("dup"),
        rustix::io::fcntl_dupfd_cloexec(&data, 0).expect("dup"),
        rustix::io::fcntl_dupfd_cloexec(&space, 0).expect("dup"),
    );

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
        for (role, kind) in [("data-ready", c.data), ("space-ready", c.space)] {
            if !matches!(kind, EvKind::Eventfd | EvKind::Blocking) {
                return Want::Eventfd(role);
            }
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
        Want::Opens
    })();

    let fds = RingFds {
        memfd: mem,
        data_ready: data,
        space_ready: space,
    };
    let r = Ring::open(fds, &Config::new().capacity(cap));
    let got = match &r {
        Ok(_) => Want::Opens,
        Err(SetupError::NotMemfd) if want == Want::NotAMemfd => Want::NotAMemfd,
        Err(SetupError::Seals { .. }) if want == Want::NotAMemfd => Want::NotAMemfd,
        Err(SetupError::Seals { .. }) => Want::Seals,
        Err(SetupError::SizeMismatch { expected, actual }) => {
            assert_eq!((*expected, *actual), (size as u64, actual_size));
            Want::Size
        }
        Err(SetupError::BadEventfd { role, .. }) => Want::Eventfd(role),
        Err(SetupError::HeaderMismatch { what, .. }) => Want::Header(what),
        Err(e) => panic!("unexpected open error: {e}"),
    };
    assert_eq!(got, want, "{r:?}");
    let Ok(ring) = r else { return };

    // Sealed now: a peer can no longer shrink it (FAULTS M2), nor add a write seal.
    let now = rustix::fs::fcntl_get_seals(&keep.0).expect("seals");
    assert!(now.contains(SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL));
    assert!(rustix::fs::ftruncate(&keep.0, 0).is_err(), "shrink allowed");
    // Both eventfds forced non-blocking (the flag lives in the shared file description).
    for fd in [&keep.1, &keep.2] {
        let fl = rustix::fs::fcntl_getfl(fd.as_fd()).expect("getfl");
        assert!(fl.contains(OFlags::NONBLOCK), "eventfd left blocking");
    }

    // Roles and indices are checked when claimed.
    let (tail, head) = (fields[5].1, fields[6].1);
    let indices_ok = layout::check_tail(head, head, tail, cap).is_ok()
        && layout::check_head(tail, head, head, cap).is_ok();
    let claims = [
        (ring.producer().map(drop), c.states.0),
        (ring.consumer().map(drop), c.states.1),
    ];
    for (r, state) in claims {
        match r {
            Ok(()) => assert!(state == 0 && indices_ok, "claimed: state {state}"),
            Err(SetupError::RoleTaken(_)) => assert_ne!(state, 0),
            Err(SetupError::Corrupted(_)) => assert!(state == 0 && !indices_ok),
            Err(e) => panic!("claim: {e}"),
        }
    }
}

proptest! {
    #![proptest_config(proptest_config(1000, "proptest-regressions/open.txt"))]

    /// FAULTS M1, M3, M4, S10, S11, S12: everything `Ring::open` is offered.
    #[test]
    fn open_answers_the_first_failing_check(c in open_case()) {
        deadline(30, "open case", move || run_open(c));
    }
}

/// A ring created by hand from docs/protocol.md alone (this file's header writer), opened,
/// and used: the layout the document gives is the one the ring reads.
#[test]
fn a_ring_written_from_the_protocol_document_carries_messages() {
    deadline(30, "hand-made ring", || {
        let cap = 4096;
        let mem = memfd(true);
        rustix::fs::ftruncate(&mem, (DATA_OFFSET + cap) as u64).expect("ftruncate");
        let w = |off: usize, b: &[u8]| {
            rustix::io::pwrite(&mem, b, off as u64).expect("pwrite");
        };
        w(0, b"SHMRING\0");
        w(8, &1u32.to_le_bytes());
        w(12, &4096u32.to_le_bytes());
        w(16, &(cap as u64).to_le_bytes());
        w(24, &(cap as u64 / 4).to_le_bytes());
        // One message and one padding record, already published at indices 4080..
        let start = 4080u64;
        w(128, &start.to_le_bytes());
        w(256, &start.to_le_bytes());
        rustix::fs::fcntl_add_seals(&mem, SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL)
            .expect("seal");
        let ev = || rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC).unwrap();
        let ring = Ring::open(
            RingFds {
                memfd: rustix::io::fcntl_dupfd_cloexec(&mem, 0).unwrap(),
                data_ready: ev(),
                space_ready: ev(),
            },
            &Config::new().capacity(cap),
        )
        .expect("open");
        let mut rx = ring.consumer().expect("consumer");
        // Padding at 4080 (16 bytes to the end: len 8), then "hello" at 0, tail 4096 + 16.
        w(DATA_OFFSET + 4080, &((2u64 << 32) | 8).to_le_bytes());
        w(DATA_OFFSET, &((1u64 << 32) | 5).to_le_bytes());
        w(DATA_OFFSET + 8, b"hello");
        w(128, &(4096u64 + 16).to_le_bytes());
        let mut buf = Vec::new();
        assert_eq!(rx.try_recv(&mut buf).expect("message"), 5);
        assert_eq!(buf, b"hello");
        // Producer side of the same ring: its records are where §1.3 puts them.
        let mut tx = ring.producer().expect("producer");
        tx.try_send(b"world!").expect("send");
        let mut word = [0u8; 8];
        rustix::io::pread(&mem, &mut word, (DATA_OFFSET + 16) as u64).unwrap();
        assert_eq!(u64::from_le_bytes(word), (1u64 << 32) | 6);
        let mut tail = [0u8; 8];
        rustix::io::pread(&mem, &mut tail, 128).unwrap();
        assert_eq!(u64::from_le_bytes(tail), 4096 + 16 + 16);
    });
}
