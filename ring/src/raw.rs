//! Raw access to the shared segment: the one module of the ring with `unsafe` code.
//!
//! # Safety
//!
//! A [`Region`] is `DATA_OFFSET + capacity` bytes that another process may read and write at
//! any time. The rest of the crate reaches it only through the safe methods here, which keep
//! these invariants:
//!
//! 1. **Live and large enough.** `base` is the start of a mapping (under miri, a heap block) of
//!    at least `DATA_OFFSET + capacity` bytes, 4096-aligned, owned by the `Region` and released
//!    only when it drops. A memfd is sealed against shrinking before it is mapped, so its pages
//!    cannot vanish under us (no SIGBUS).
//! 2. **Bounds.** `capacity` is a power of two, at least `MIN_CAPACITY`. Every method checks
//!    position and length against it with `assert!`. Callers validate peer values first, so an
//!    assert that fires is a bug in this crate, never the peer's doing.
//! 3. **No references to shared bytes.** We form `&Header` (atomics only: valid for every bit
//!    pattern, mutated through `&`) and `&AtomicU64` for record headers, and copy payload with
//!    raw pointers into private memory. `&[u8]`/`&mut [u8]` over the segment exist only in the
//!    two `unsafe fn` zero-copy views, whose callers take over the obligation.
//! 4. **A lying peer yields bytes, not control.** The protocol orders each payload copy after
//!    the Acquire load that published it. A peer that breaks the protocol can change bytes while
//!    we copy them; the copy is private and the caller treats it as data. Control words are read
//!    once, atomically, and checked (`layout::parse_record`, `check_head`, `check_tail`).
//! 5. **No use after fork.** The mapping is `MADV_DONTFORK`: a forked child does not have it.
//!    Handles compare [`fork_generation`] (bumped by a `pthread_atfork` child hook) with the one
//!    they were created in, and a `Region` dropped in a child does not unmap the address range.

// Under miri there is no memfd: the mapping half of this module is unused there.
#![cfg_attr(miri, allow(dead_code))]

#[cfg(miri)]
use std::alloc::Layout;
use std::marker::PhantomData;
use std::mem;
use std::ptr::{self, NonNull};
use std::sync::atomic::{AtomicU32 as StdAtomicU32, Ordering as StdOrdering};

use crate::layout::{DATA_OFFSET, Header, MIN_CAPACITY, RECORD_ALIGN, encode_record};
use crate::sync::{AtomicU64, Ordering};

static FORK_GENERATION: StdAtomicU32 = StdAtomicU32::new(0);

extern "C" fn child_after_fork() {
    // Only an atomic add: async-signal-safe, as an atfork child handler must be.
    FORK_GENERATION.fetch_add(1, StdOrdering::Relaxed);
}

fn register_fork_hook() {
    #[cfg(not(any(miri, loom)))]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            // SAFETY: `child_after_fork` is an `extern "C" fn()` that only performs an atomic
            // add, so it is safe to run in a child of a multi-threaded process. Registration
            // happens once per process (Once), and pthread_atfork has no other precondition.
            let rc = unsafe { libc::pthread_atfork(None, None, Some(child_after_fork)) };
            // ENOMEM is the only documented failure; without the hook, a forked child would
            // fault on the unmapped pages instead of getting `Forked`.
            debug_assert_eq!(rc, 0);
        });
    }
}

/// How many times this process's lineage has forked since the hook was registered. A handle
/// whose generation differs was inherited by a child and must not touch the segment.
#[inline]
pub(crate) fn fork_generation() -> u32 {
    FORK_GENERATION.load(StdOrdering::Relaxed)
}

enum Backing {
    Map(memmap2::MmapRaw),
    #[cfg(miri)]
    Heap(Layout),
    /// Left behind in a forked child: nothing to release.
    Gone,
}

/// The shared segment: header, then `capacity` data bytes.
pub(crate) struct Region {
    base: NonNull<u8>,
    capacity: usize,
    backing: Backing,
    fork_gen: u32,
}

// SAFETY: a Region is a pointer to memory that every process and thread accesses only through
// atomics and raw copies (invariant 3); nothing in it is tied to the creating thread.
unsafe impl Send for Region {}
// SAFETY: as above; `&Region` methods take `&self` and all shared state is atomics or
// protocol-owned byte ranges.
unsafe impl Sync for Region {}

impl std::fmt::Debug for Region {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Region")
            .field("base", &self.base)
            .field("capacity", &self.capacity)
            .finish()
    }
}

impl Region {
    /// Map `DATA_OFFSET + capacity` bytes of `fd` shared and read-write. The caller has checked
    /// that the fd is a memfd sealed against shrinking whose size is exactly that.
    pub(crate) fn map(fd: std::os::fd::BorrowedFd<'_>, capacity: usize) -> std::io::Result<Region> {
        assert!(capacity.is_power_of_two() && capacity >= MIN_CAPACITY);
        register_fork_hook();
        let len = DATA_OFFSET + capacity;
        let map = memmap2::MmapOptions::new().len(len).map_raw(&fd)?;
        map.advise(memmap2::Advice::DontFork)?;
        let base = NonNull::new(map.as_mut_ptr()).expect("mmap returned null");
        assert!(map.len() >= len && base.as_ptr() as usize % 4096 == 0);
        Ok(Region {
            base,
            capacity,
            backing: Backing::Map(map),
            fork_gen: fork_generation(),
        })
    }

    /// A zeroed heap region, for running the ring core under miri (which has no memfd).
    #[cfg(miri)]
    pub(crate) fn heap(capacity: usize) -> Region {
        assert!(capacity.is_power_of_two() && capacity >= MIN_CAPACITY);
        let layout = Layout::from_size_align(DATA_OFFSET + capacity, 4096).expect("layout");
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        let base = NonNull::new(ptr).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        Region {
            base,
            capacity,
            backing: Backing::Heap(layout),
            fork_gen: fork_generation(),
        }
    }

    #[inline]
    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    /// The header at the start of the segment.
    #[inline]
    pub(crate) fn header(&self) -> &Header {
        // SAFETY: invariant 1: `base` is 4096-aligned (Header needs 128) and the segment holds
        // at least DATA_OFFSET >= size_of::<Header>() bytes (const-asserted in layout). Header
        // is only atomics and padding, valid for any bytes and mutated only through `&`.
        unsafe { self.base.cast::<Header>().as_ref() }
    }

    /// Pointer to data byte `pos`, after checking that `len` bytes from there are in the ring.
    #[inline]
    fn data(&self, pos: usize, len: usize) -> *mut u8 {
        assert!(
            pos <= self.capacity && len <= self.capacity - pos,
            "ring access out of bounds"
        );
        // SAFETY: invariant 1: DATA_OFFSET + pos + len <= DATA_OFFSET + capacity, inside the
        // allocation, so the offset stays in bounds.
        unsafe { self.base.as_ptr().add(DATA_OFFSET + pos) }
    }

    #[inline]
    fn word(&self, pos: usize) -> &AtomicU64 {
        assert!(pos % 8 == 0, "misaligned record header");
        let p = self.data(pos, 8);
        // SAFETY: `p` is in bounds for 8 bytes (checked by `data`) and 8-aligned (base is
        // page-aligned, DATA_OFFSET and pos are multiples of 8). AtomicU64 is valid for any
        // bits and has u64's layout; every access to record headers is atomic (invariant 3).
        unsafe { &*p.cast::<AtomicU64>() }
    }

    /// Read the record header word at data position `pos` (8-aligned).
    #[inline]
    pub(crate) fn load_word(&self, pos: usize) -> u64 {
        // Ordered by the Acquire load of the tail that published it.
        self.word(pos).load(Ordering::Relaxed)
    }

    /// Write the record header word at data position `pos` (8-aligned).
    #[inline]
    pub(crate) fn store_word(&self, pos: usize, value: u64) {
        // Published by the Release store of the tail that follows.
        self.word(pos).store(value, Ordering::Relaxed)
    }

    /// Replace the contents of `out` with the `len` bytes at data position `pos`, without
    /// zero-filling first.
    #[inline]
    pub(crate) fn read_to_vec(&self, pos: usize, len: usize, out: &mut Vec<u8>) {
        let src = self.data(pos, len);
        out.clear();
        out.reserve(len);
        // SAFETY: `src` is in bounds for len bytes (checked by `data`); `out` has capacity for
        // len bytes after `reserve` and is private memory, so the ranges cannot overlap. After
        // the copy the first len bytes are initialised, which makes `set_len` sound.
        unsafe {
            ptr::copy_nonoverlapping(src, out.as_mut_ptr(), len);
            out.set_len(len);
        }
    }

    /// Write a whole record at data position `pos` (8-aligned): the payload, then its header
    /// word. One bounds check covers both.
    #[inline]
    pub(crate) fn write_record(&self, pos: usize, kind: u32, payload: &[u8]) {
        let dst = self.data(pos, RECORD_ALIGN + payload.len());
        // SAFETY: header and payload are in bounds (checked by `data`); `payload` is private
        // memory, so the ranges cannot overlap; the range is ours by protocol (invariant 4).
        unsafe { ptr::copy_nonoverlapping(payload.as_ptr(), dst.add(RECORD_ALIGN), payload.len()) }
        self.store_word(pos, encode_record(kind, payload.len() as u32));
    }

    /// Copy `src` to data position `pos`.
    #[inline]
    pub(crate) fn write(&self, pos: usize, src: &[u8]) {
        let dst = self.data(pos, src.len());
        // SAFETY: `dst` is in bounds for src.len() bytes (checked by `data`); `src` is private
        // memory, so the ranges cannot overlap. The range is ours by protocol (reserved, not
        // yet published); a peer writing into it is invariant 4.
        unsafe { ptr::copy_nonoverlapping(src.as_ptr(), dst, src.len()) }
    }

    /// A bounds-checked window of `len` data bytes at `pos`, for the zero-copy APIs.
    #[inline]
    pub(crate) fn span(&self, pos: usize, len: usize) -> Span<'_> {
        let ptr = self.data(pos, len);
        Span {
            // SAFETY: `data` returns base + offset, and base is non-null.
            ptr: unsafe { NonNull::new_unchecked(ptr) },
            len,
            _region: PhantomData,
        }
    }

    /// True when this handle was inherited by a forked child (invariant 5).
    #[inline]
    pub(crate) fn forked(&self) -> bool {
        fork_generation() != self.fork_gen
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        match mem::replace(&mut self.backing, Backing::Gone) {
            // In a forked child the address range is not ours (MADV_DONTFORK): do not unmap
            // whatever the child may have mapped there since.
            Backing::Map(map) if self.forked() => mem::forget(map),
            Backing::Map(map) => drop(map),
            #[cfg(miri)]
            // SAFETY: allocated in `heap` with exactly this layout, freed once (backing is
            // replaced with Gone above).
            Backing::Heap(layout) => unsafe { std::alloc::dealloc(self.base.as_ptr(), layout) },
            Backing::Gone => {}
        }
    }
}

/// `len` bytes of the data area, checked to lie inside it, borrowed from the region.
#[derive(Clone, Copy)]
pub(crate) struct Span<'a> {
    ptr: NonNull<u8>,
    len: usize,
    _region: PhantomData<&'a Region>,
}

impl<'a> Span<'a> {
    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Copy `src` to byte `offset` of the span.
    #[inline]
    pub(crate) fn write_at(&self, offset: usize, src: &[u8]) {
        assert!(
            offset <= self.len && src.len() <= self.len - offset,
            "grant overflow"
        );
        // SAFETY: the span is in bounds of the region (checked when it was made) and
        // offset + src.len() <= len (checked above); `src` is private memory.
        unsafe { ptr::copy_nonoverlapping(src.as_ptr(), self.ptr.as_ptr().add(offset), src.len()) }
    }

    /// Replace the contents of `out` with the span's bytes, without zero-filling first.
    #[inline]
    pub(crate) fn read_to_vec(&self, out: &mut Vec<u8>) {
        out.clear();
        out.reserve(self.len);
        // SAFETY: the span is in bounds of the region; `out` has capacity for len bytes after
        // `reserve` and is private memory; after the copy the first len bytes are initialised.
        unsafe {
            ptr::copy_nonoverlapping(self.ptr.as_ptr(), out.as_mut_ptr(), self.len);
            out.set_len(self.len);
        }
    }

    /// Copy the whole span into `dst` (`dst.len() == self.len()`).
    #[inline]
    pub(crate) fn read_into(&self, dst: &mut [u8]) {
        assert_eq!(
            dst.len(),
            self.len,
            "destination length differs from the message length"
        );
        // SAFETY: the span is in bounds of the region; `dst` is private memory of equal length.
        unsafe { ptr::copy_nonoverlapping(self.ptr.as_ptr(), dst.as_mut_ptr(), self.len) }
    }

    /// View the span as a shared slice.
    ///
    /// # Safety
    ///
    /// No one (no thread, no other process) may write these bytes while the slice lives.
    #[inline]
    pub(crate) unsafe fn as_slice(&self) -> &'a [u8] {
        // SAFETY: in bounds and non-null (checked at creation); the caller guarantees the bytes
        // do not change while the slice lives, which is what `&[u8]` requires.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// View the span as a mutable slice.
    ///
    /// # Safety
    ///
    /// No one else may read or write these bytes while the slice lives.
    #[inline]
    pub(crate) unsafe fn as_mut_slice(&mut self) -> &'a mut [u8] {
        // SAFETY: in bounds and non-null (checked at creation); `&mut self` plus the caller's
        // guarantee make this the only access for the slice's life.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}
