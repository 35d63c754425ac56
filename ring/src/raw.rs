//! Raw access to the shared segment: the one module of the ring with `unsafe` code.
//!
//! # Safety
//!
//! A [`Region`] is `DATA_OFFSET + capacity` bytes that another process may read and write at
//! any time. The rest of the crate reaches it only through the safe methods here, which keep
//! these invariants:
//!
//! 1. **Live and large enough.** `base` is the start of a mapping (under miri, a heap block) of
//!    at least `DATA_OFFSET + capacity` bytes, 4096-aligned, owned by the `Mapping` that every
//!    clone of the `Region` keeps alive, and released only when the last clone drops. A memfd is sealed against shrinking before it is mapped, so its pages
//!    cannot vanish under us (no SIGBUS).
//! 2. **Bounds.** `capacity` is a power of two, at least `MIN_CAPACITY`. Record header words
//!    are addressed by ring index, reduced modulo the capacity and rounded down to 8, so they
//!    are always inside; every other method checks position and length with `assert!`. Callers
//!    validate peer values first, so an assert that fires is a bug in this crate, never the
//!    peer's doing.
//! 3. **No references to shared bytes.** We form `&Header` (atomics only: valid for every bit
//!    pattern, mutated through `&`) and `&AtomicU64` for record headers, and copy payload with
//!    raw pointers into private memory. `&[u8]`/`&mut [u8]` over the segment exist only in the
//!    two `unsafe fn` zero-copy views, whose callers take over the obligation.
//! 4. **A lying peer yields bytes, not control.** The protocol orders each payload copy after
//!    the Acquire load of the header word that published it. A peer that breaks the protocol
//!    can change bytes while we copy them; the copy is private and the caller treats it as
//!    data. Control words are read once, atomically, and checked (`layout::parse_record`,
//!    `check_head`, `check_indices`).
//! 5. **No use after fork.** The mapping is `MADV_DONTFORK`: a forked child does not have it.
//!    Handles compare [`fork_generation`] (bumped by a `pthread_atfork` child hook) with the one
//!    they were created in, and a `Mapping` dropped in a child does not unmap the address range.

// Under miri there is no memfd: the mapping half of this module is unused there.
#![cfg_attr(miri, allow(dead_code))]
#![allow(unsafe_code)]

#[cfg(any(miri, test))]
use std::alloc::Layout;
use std::marker::PhantomData;
use std::mem;
use std::ptr::{self, NonNull};
use std::sync::atomic::{AtomicU32 as StdAtomicU32, Ordering as StdOrdering};

use crate::layout::{DATA_OFFSET, Header, MIN_CAPACITY, RECORD_ALIGN};
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
    #[cfg(any(miri, test))]
    Heap(NonNull<u8>, Layout),
}

/// What a region points into: a mapping (or, under miri and in unit tests, a heap block),
/// released when the last [`Region`] pointing into it drops.
struct Mapping {
    /// `None` only while dropping.
    backing: Option<Backing>,
    fork_gen: u32,
}

impl Drop for Mapping {
    fn drop(&mut self) {
        match self.backing.take() {
            // In a forked child the address range is not ours (MADV_DONTFORK): do not unmap
            // whatever the child may have mapped there since.
            Some(Backing::Map(map)) if fork_generation() != self.fork_gen => mem::forget(map),
            Some(Backing::Map(map)) => drop(map),
            #[cfg(any(miri, test))]
            // SAFETY: allocated in `Region::heap` with exactly this layout, freed once (the
            // backing is taken out above).
            Some(Backing::Heap(ptr, layout)) => unsafe {
                std::alloc::dealloc(ptr.as_ptr(), layout)
            },
            None => {}
        }
    }
}

/// The shared segment: header, then `capacity` data bytes. Each handle holds its own clone,
/// so the fields its hot path reads are in its own cache lines, never in a line another
/// thread of this process reads or writes per message.
#[derive(Clone)]
pub(crate) struct Region {
    base: NonNull<u8>,
    capacity: usize,
    fork_gen: u32,
    _mapping: std::sync::Arc<Mapping>,
}

// SAFETY: a Region is a pointer to memory that every process and thread accesses only through
// atomics and raw copies (invariant 3); nothing in it is tied to the creating thread.
unsafe impl Send for Region {}
// SAFETY: as above; `&Region` methods take `&self` and all shared state is atomics or
// protocol-owned byte ranges.
unsafe impl Sync for Region {}
// SAFETY: a Mapping is only dropped (unmapped or freed) from whichever thread holds the last
// Region; nothing in it is tied to the thread that made it.
unsafe impl Send for Mapping {}
// SAFETY: a Mapping is never accessed through `&Mapping`.
unsafe impl Sync for Mapping {}

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
        Ok(Region::new(base, capacity, Backing::Map(map)))
    }

    /// A zeroed heap region, for running the ring core under miri (which has no memfd).
    #[cfg(any(miri, test))]
    pub(crate) fn heap(capacity: usize) -> Region {
        assert!(capacity.is_power_of_two() && capacity >= MIN_CAPACITY);
        let layout = Layout::from_size_align(DATA_OFFSET + capacity, 4096).expect("layout");
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        let base = NonNull::new(ptr).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        Region::new(base, capacity, Backing::Heap(base, layout))
    }

    fn new(base: NonNull<u8>, capacity: usize, backing: Backing) -> Region {
        let fork_gen = fork_generation();
        Region {
            base,
            capacity,
            fork_gen,
            _mapping: std::sync::Arc::new(Mapping {
                backing: Some(backing),
                fork_gen,
            }),
        }
    }

    #[inline]
    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    /// The segment as a `Copy` handle for the hot paths: its base and capacity live in
    /// registers instead of being reloaded through the region after every atomic access.
    #[inline(always)]
    pub(crate) fn view(&self) -> View<'_> {
        View {
            base: self.base,
            capacity: self.capacity,
            _region: PhantomData,
        }
    }

    /// The header at the start of the segment.
    #[inline(always)]
    pub(crate) fn header(&self) -> &Header {
        self.view().header()
    }

    /// True when this handle was inherited by a forked child (invariant 5).
    #[inline]
    pub(crate) fn forked(&self) -> bool {
        fork_generation() != self.fork_gen
    }
}

/// A `Copy` view of a [`Region`] (see [`Region::view`]), through which the data area is read
/// and written. It borrows the region, so invariant 1 holds for its life.
#[derive(Clone, Copy)]
pub(crate) struct View<'a> {
    base: NonNull<u8>,
    capacity: usize,
    _region: PhantomData<&'a Region>,
}

impl<'a> View<'a> {
    /// The header at the start of the segment.
    #[inline(always)]
    pub(crate) fn header(self) -> &'a Header {
        // SAFETY: invariant 1: `base` is 4096-aligned (Header needs 128) and the segment holds
        // at least DATA_OFFSET >= size_of::<Header>() bytes (const-asserted in layout). Header
        // is only atomics and padding, valid for any bytes and mutated only through `&`.
        unsafe { self.base.cast::<Header>().as_ref() }
    }

    /// Pointer to data byte `pos`, after checking that `len` bytes from there are in the ring.
    #[inline(always)]
    fn data(self, pos: usize, len: usize) -> *mut u8 {
        assert!(
            pos <= self.capacity && len <= self.capacity - pos,
            "ring access out of bounds"
        );
        // SAFETY: invariant 1: DATA_OFFSET + pos + len <= DATA_OFFSET + capacity, inside the
        // allocation, so the offset stays in bounds.
        unsafe { self.base.as_ptr().add(DATA_OFFSET + pos) }
    }

    /// The record header word at ring index `index` (its position is `index` modulo the
    /// capacity, rounded down to 8: always inside the data area, so no check is needed).
    #[inline(always)]
    fn word(self, index: u64) -> &'a AtomicU64 {
        debug_assert!(index % 8 == 0, "misaligned record header");
        let pos = index as usize & (self.capacity - RECORD_ALIGN);
        // The 8 bytes at DATA_OFFSET + pos, pos <= capacity - 8 and a multiple of 8: inside the
        // mapping (invariant 1) and 8-aligned (base is page-aligned). AtomicU64 is valid for any
        // bits and has u64's layout; every access to a header word is atomic (invariant 3).
        let at = self
            .base
            .as_ptr()
            .wrapping_add(DATA_OFFSET + pos)
            .cast::<AtomicU64>();
        // SAFETY: `at` is in bounds, aligned and only ever accessed atomically (above).
        unsafe { &*at }
    }

    /// Load the record header word at `index`. Acquire: pairs with the Release store that
    /// published it (`publish_word`), so the record's payload is visible after it.
    #[inline(always)]
    pub(crate) fn load_word(self, index: u64) -> u64 {
        // SYNC(record): pairs with `publish_word`.
        self.word(index).load(Ordering::Acquire)
    }

    /// Store a record header word (or the zero that clears one) that a later `publish_word`
    /// makes visible.
    #[inline(always)]
    pub(crate) fn store_word(self, index: u64, value: u64) {
        self.word(index).store(value, Ordering::Relaxed)
    }

    /// Store the header word that publishes its record and everything written before it.
    #[inline(always)]
    pub(crate) fn publish_word(self, index: u64, value: u64) {
        // SYNC(record): Release pairs with the Acquire in `load_word`.
        self.word(index).store(value, Ordering::Release)
    }

    /// Replace the contents of `out` with the `len` bytes at data position `pos`, without
    /// zero-filling first.
    #[inline]
    pub(crate) fn read_to_vec(self, pos: usize, len: usize, out: &mut Vec<u8>) {
        self.span(pos, len).read_to_vec(out)
    }

    /// Copy `src` to data position `pos`.
    #[inline(always)]
    pub(crate) fn write(self, pos: usize, src: &[u8]) {
        let dst = self.data(pos, src.len());
        // SAFETY: `dst` is in bounds for src.len() bytes (checked by `data`); `src` is private
        // memory, so the ranges cannot overlap. The range is ours by protocol (reserved, not
        // yet published); a peer writing into it is invariant 4.
        unsafe { ptr::copy_nonoverlapping(src.as_ptr(), dst, src.len()) }
    }

    /// A bounds-checked window of `len` data bytes at `pos`, to read.
    #[inline(always)]
    pub(crate) fn span(self, pos: usize, len: usize) -> Span<'a> {
        let ptr = self.data(pos, len);
        Span {
            // SAFETY: `data` returns base + offset, and base is non-null.
            ptr: unsafe { NonNull::new_unchecked(ptr) },
            len,
            _region: PhantomData,
        }
    }

    /// A bounds-checked window of `len` data bytes at `pos`, to write in place: the range must
    /// be reserved (ours by protocol) for the window's life.
    #[inline]
    pub(crate) fn span_mut(self, pos: usize, len: usize) -> SpanMut<'a> {
        SpanMut {
            span: self.span(pos, len),
        }
    }
}

/// `len` bytes of the data area, checked to lie inside it, borrowed from the region, to read.
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

    /// Replace the contents of `out` with the span's bytes, without zero-filling first.
    #[inline(always)]
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
}

/// A reserved window of the data area, to write. Not `Copy`: a mutable slice of it borrows
/// the window, so two cannot coexist.
pub(crate) struct SpanMut<'a> {
    span: Span<'a>,
}

impl<'a> SpanMut<'a> {
    /// Copy `src` to byte `offset` of the window.
    #[inline]
    pub(crate) fn write_at(&mut self, offset: usize, src: &[u8]) {
        let len = self.span.len;
        assert!(offset <= len && src.len() <= len - offset, "grant overflow");
        // SAFETY: the span is in bounds of the region (checked when it was made) and
        // offset + src.len() <= len (checked above); `src` is private memory.
        unsafe {
            ptr::copy_nonoverlapping(src.as_ptr(), self.span.ptr.as_ptr().add(offset), src.len())
        }
    }

    /// Turn the window into a mutable slice. The window is consumed and is not `Copy`, so
    /// each window gives at most one slice.
    ///
    /// # Safety
    ///
    /// No one else (no thread, no other process) may read or write these bytes while the
    /// slice lives.
    #[inline]
    pub(crate) unsafe fn into_mut_slice(self) -> &'a mut [u8] {
        // SAFETY: in bounds and non-null (checked at creation); this window is consumed, and
        // the caller guarantees no one else touches the bytes while the slice lives.
        unsafe { std::slice::from_raw_parts_mut(self.span.ptr.as_ptr(), self.span.len) }
    }
}
