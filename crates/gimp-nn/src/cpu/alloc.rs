//! A global allocator that keeps large freed blocks for reuse.
//!
//! Every candle op allocates its output. In a training step most tensors are tens of megabytes,
//! above glibc's mmap threshold (at most 32 MiB), so each one is a fresh `mmap` whose pages the
//! kernel faults in and zeroes on first touch, and `munmap`s on free: `perf` of the GiMP
//! pre-training step showed about 30% of the time in the kernel's page-fault and page-clearing
//! paths. The same shapes recur every step, so keeping freed blocks of those exact sizes and
//! handing them back removes that cost. Small allocations go straight to the system allocator.
//!
//! Below the cache, a program that owns its process (gimp-rs's binary, the benchmarks; not the
//! Python module, which lives in the interpreter's process) tells glibc once, at start, to serve
//! large blocks from its heap instead of fresh `mmap`s and never to hand the heap's free top back
//! to the system ([`keep_freed_memory`]). Whole-bag training runs with this cache empty (its
//! blocks are kept by exact size, and one patient's tensors differ in size from the next one's),
//! so without it every tensor above glibc's 32 MiB mmap ceiling was mapped, faulted in page by
//! page, zeroed by the kernel and unmapped again: a TransMIL epoch on 150,000-patch bags spent
//! 197 of its 430 CPU seconds in the kernel (34 million minor page faults; issue 26). glibc's
//! heap reuses freed blocks of any size (best fit, neighbours coalesced), so a run's memory is
//! the largest set of blocks alive at once plus what lies between them, faulted in once.
//!
//! The cache holds at most [`CachingAlloc::DEFAULT_CAP`] bytes (or `GIMP_ALLOC_CACHE_MB`
//! megabytes, read once; 0 disables it, a value that is not a number keeps the default); beyond
//! that the oldest blocks are returned to the system. Install it in a binary with
//! `#[global_allocator] static A: gimp_nn::cpu::alloc::CachingAlloc = gimp_nn::cpu::alloc::CachingAlloc::new();`

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// Blocks smaller than this are not cached (glibc reuses them well on its heap).
const MIN_CACHED: usize = 1 << 20;
/// A training step frees a few hundred large tensors; a linear scan of this many slots costs
/// nothing next to the megabytes each one holds.
const SLOTS: usize = 1024;
const CAP_UNSET: usize = usize::MAX;

/// A process-wide ceiling on every [`CachingAlloc`]'s cache (`usize::MAX`: none), lowered
/// while whole-bag training steps run ([`crate::memory::WholeBag`]): their tensors differ in
/// size from one patient to the next, so kept blocks are rarely reused and only raise the peak.
static CEILING: AtomicUsize = AtomicUsize::new(usize::MAX);

/// Sets the ceiling, returning the previous one; cached blocks above it are returned to the
/// system as large blocks are freed.
pub(crate) fn set_ceiling(bytes: usize) -> usize {
    CEILING.swap(bytes, Ordering::Relaxed)
}

#[derive(Clone, Copy)]
struct Slot {
    ptr: usize,
    size: usize,
    align: usize,
    /// Insertion order, to evict the oldest.
    stamp: u64,
}

const EMPTY: Slot = Slot {
    ptr: 0,
    size: 0,
    align: 0,
    stamp: 0,
};

struct Cache {
    slots: [Slot; SLOTS],
    bytes: usize,
    clock: u64,
}

pub struct CachingAlloc {
    cache: Mutex<Cache>,
    cap: AtomicUsize,
}

impl Default for CachingAlloc {
    fn default() -> Self {
        Self::new()
    }
}

impl CachingAlloc {
    /// Bytes of freed blocks kept when `GIMP_ALLOC_CACHE_MB` is not set.
    pub const DEFAULT_CAP: usize = 512 << 20;

    pub const fn new() -> Self {
        Self {
            cache: Mutex::new(Cache {
                slots: [EMPTY; SLOTS],
                bytes: 0,
                clock: 0,
            }),
            cap: AtomicUsize::new(CAP_UNSET),
        }
    }

    fn cap(&self) -> usize {
        let c = self.cap.load(Ordering::Relaxed);
        if c != CAP_UNSET {
            return c.min(CEILING.load(Ordering::Relaxed));
        }
        // `std::env::var_os` allocates a small buffer, below MIN_CACHED: no recursion into the
        // cache, and a concurrent first call merely reads the variable twice.
        let c = std::env::var_os("GIMP_ALLOC_CACHE_MB")
            .and_then(|v| v.to_str().and_then(|s| s.trim().parse::<usize>().ok()))
            .map(|mb| mb.saturating_mul(1 << 20))
            .unwrap_or(Self::DEFAULT_CAP);
        self.cap.store(c, Ordering::Relaxed);
        c.min(CEILING.load(Ordering::Relaxed))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Cache> {
        // A panic never happens while the lock is held (no allocation, no indexing out of
        // bounds), but a poisoned lock must not take the allocator down either.
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A cached block of exactly this layout, if any.
    fn take(&self, layout: Layout) -> Option<*mut u8> {
        let mut c = self.lock();
        let i = c
            .slots
            .iter()
            .position(|s| s.ptr != 0 && s.size == layout.size() && s.align == layout.align())?;
        let s = c.slots[i];
        c.slots[i] = EMPTY;
        c.bytes -= s.size;
        Some(s.ptr as *mut u8)
    }

    /// Removes the oldest block if keeping `size` more bytes would pass the cap or no slot is
    /// free; the caller gives it back to the system outside the lock.
    fn evict_for(&self, size: usize, cap: usize) -> Option<Slot> {
        let mut c = self.lock();
        if c.bytes + size <= cap && c.slots.iter().any(|s| s.ptr == 0) {
            return None;
        }
        let i = c
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.ptr != 0)
            .min_by_key(|(_, s)| s.stamp)
            .map(|(i, _)| i)?;
        let s = c.slots[i];
        c.bytes -= s.size;
        c.slots[i] = EMPTY;
        Some(s)
    }

    /// Keeps the block if a slot is free (after eviction there always is one).
    fn put(&self, ptr: *mut u8, layout: Layout) -> bool {
        let mut c = self.lock();
        c.clock += 1;
        let stamp = c.clock;
        let Some(i) = c.slots.iter().position(|s| s.ptr == 0) else {
            return false;
        };
        c.slots[i] = Slot {
            ptr: ptr as usize,
            size: layout.size(),
            align: layout.align(),
            stamp,
        };
        c.bytes += layout.size();
        true
    }
}

/// Tells glibc (once; later calls do nothing) to serve every allocation from its heaps, never from
/// a dedicated `mmap` (`M_MMAP_MAX` = 0), and never to return the main heap's free top to the
/// system (`M_TRIM_THRESHOLD` = -1): freed memory stays resident and is reused without a page
/// fault. For a program that owns its process, first thing in `main` (it changes the allocator
/// of everything in the process); elsewhere than glibc it does nothing. `GIMP_MALLOC_DEFAULTS=1`
/// leaves glibc's defaults (to measure the difference).
pub fn keep_freed_memory() {
    // 0: not yet, 1: being set (by the first caller; others go on without waiting), 2: done.
    static STATE: AtomicUsize = AtomicUsize::new(0);
    if STATE.load(Ordering::Acquire) == 2
        || STATE
            .compare_exchange(0, 1, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
    {
        return;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `getenv` reads the environment without allocating and the name is a NUL-terminated literal; `mallopt` only changes glibc's
    // allocation parameters and is safe to call at any time, from any thread.
    unsafe {
        let v = libc::getenv(c"GIMP_MALLOC_DEFAULTS".as_ptr());
        if v.is_null() || *v != b'1' as libc::c_char {
            libc::mallopt(libc::M_MMAP_MAX, 0);
            libc::mallopt(libc::M_TRIM_THRESHOLD, -1);
        }
    }
    STATE.store(2, Ordering::Release);
}

// SAFETY: every block comes from `System`, and a block is in exactly one place at a time: handed
// out to its user, or in one cache slot (`take` clears the slot under the lock before handing the
// block out, `put` fills one after its user freed it). A cached block is handed out only for a
// layout of exactly the size and alignment it was allocated with, so it meets that layout, and
// it goes back to `System` with that same layout. Nothing here unwinds: the lock is taken with
// poisoning ignored and the code under it neither allocates nor indexes out of bounds.
unsafe impl GlobalAlloc for CachingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() >= MIN_CACHED {
            if let Some(p) = self.take(layout) {
                return p;
            }
        }
        // SAFETY: the caller's layout (non-zero size, per `GlobalAlloc::alloc`) is passed on.
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.size() >= MIN_CACHED {
            if let Some(p) = self.take(layout) {
                // SAFETY: `p` is a live block of exactly `layout.size()` bytes that `take` just
                // removed from the cache, so nothing else reads or writes it.
                std::ptr::write_bytes(p, 0, layout.size());
                return p;
            }
        }
        // SAFETY: as in `alloc`.
        System.alloc_zeroed(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // The size test comes first: `cap()` may read the environment, which allocates and
        // frees small buffers that must not come back here.
        // SAFETY (each `System.dealloc` below): the caller guarantees `ptr` was allocated by
        // this allocator with `layout`, which means by `System` with `layout` (see the impl).
        if layout.size() < MIN_CACHED {
            return System.dealloc(ptr, layout);
        }
        let cap = self.cap();
        if layout.size() > cap {
            // A lowered ceiling: give back what the cache holds above it.
            while let Some(s) = self.evict_for(0, cap) {
                // SAFETY: as for the evictions below.
                System.dealloc(
                    s.ptr as *mut u8,
                    Layout::from_size_align_unchecked(s.size, s.align),
                );
            }
            return System.dealloc(ptr, layout);
        }
        while let Some(s) = self.evict_for(layout.size(), cap) {
            // SAFETY: an evicted block left the cache under the lock, so this is its only
            // owner; its size and alignment were copied from the valid `Layout` it was freed
            // with, which is also the one `System` allocated it with.
            System.dealloc(
                s.ptr as *mut u8,
                Layout::from_size_align_unchecked(s.size, s.align),
            );
        }
        if !self.put(ptr, layout) {
            System.dealloc(ptr, layout);
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if layout.size() < MIN_CACHED && new_size < MIN_CACHED {
            // SAFETY: neither the old nor the new size is ever cached, so `ptr` came straight
            // from `System` with `layout`, and `System` may resize it; the caller's guarantees
            // on `new_size` are passed on.
            return System.realloc(ptr, layout, new_size);
        }
        // SAFETY: the alignment is a valid layout's, and the caller guarantees that `new_size`
        // is non-zero and, rounded up to it, does not overflow `isize` (`GlobalAlloc::realloc`).
        let new_layout = Layout::from_size_align_unchecked(new_size, layout.align());
        let p = self.alloc(new_layout);
        if !p.is_null() {
            // SAFETY: `ptr` is live for `layout.size()` bytes and `p` for `new_size`; `p` is a
            // different block (`ptr` is still allocated, hence not in the cache).
            std::ptr::copy_nonoverlapping(ptr, p, layout.size().min(new_size));
            // SAFETY: `ptr` was allocated by this allocator with `layout` (caller's guarantee).
            self.dealloc(ptr, layout);
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuses_exact_sizes_and_respects_the_cap() {
        let a = CachingAlloc::new();
        a.cap.store(3 << 20, Ordering::Relaxed);
        let l = Layout::from_size_align(1 << 20, 64).unwrap();
        // SAFETY: every block is freed once, with the layout it was allocated with, and read or
        // written only while allocated and within its size.
        unsafe {
            let p = a.alloc(l);
            p.write(7);
            a.dealloc(p, l);
            assert_eq!(a.alloc(l), p, "a freed block of the same size comes back");
            let z = Layout::from_size_align(1 << 20, 64).unwrap();
            a.dealloc(p, l);
            let q = a.alloc_zeroed(z);
            assert_eq!(q, p);
            assert!(std::slice::from_raw_parts(q, 1 << 20)
                .iter()
                .all(|&b| b == 0));
            // Four 1 MiB blocks into a 3 MiB cache: the oldest goes back to the system.
            let blocks: Vec<*mut u8> = (0..3).map(|_| a.alloc(l)).chain([q]).collect();
            for &b in &blocks {
                a.dealloc(b, l);
            }
            assert_eq!(a.lock().bytes, 3 << 20);
            let other = Layout::from_size_align(2 << 20, 64).unwrap();
            let r = a.alloc(other);
            assert!(
                !blocks.contains(&r),
                "no block of another size is handed out"
            );
            a.dealloc(r, other);
            assert!(a.lock().bytes <= 3 << 20);
            // realloc keeps the contents.
            let s = a.alloc(l);
            s.write_bytes(5, 1 << 20);
            let t = a.realloc(s, l, 3 << 20);
            assert!(std::slice::from_raw_parts(t, 1 << 20)
                .iter()
                .all(|&b| b == 5));
            a.dealloc(t, Layout::from_size_align(3 << 20, 64).unwrap());
        }
    }
}
