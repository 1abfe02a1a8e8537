//! Reusable `f32` buffers for the fused kernels' large intermediates.
//!
//! `vec![0.0; n]` zeroes every buffer; for the `N' × m` attention matrices that a matrix
//! product overwrites entirely anyway, that zeroing was several percent of a training step.
//! [`buffer`] hands back a previously [`recycle`]d buffer of the same length with its old
//! (initialised, finite) contents, so callers must write every element before reading any —
//! which the products with `accumulate = false` do.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// Smaller buffers are not pooled (the allocator serves them well).
static MIN_LEN: AtomicUsize = AtomicUsize::new(1 << 18);

/// Pools buffers of every size, so that tests on small shapes exercise reuse (stale contents).
#[doc(hidden)]
pub fn pool_every_size() {
    MIN_LEN.store(1, Ordering::Relaxed);
}

fn min_len() -> usize {
    MIN_LEN.load(Ordering::Relaxed)
}
/// At most this many bytes wait in the pool unless `GIMP_SCRATCH_MB` says otherwise.
const DEFAULT_MAX_BYTES: usize = 1 << 30;

/// A ceiling below the configured size (`usize::MAX`: none), lowered while whole-bag training
/// steps run ([`crate::memory::WholeBag`]).
static CEILING: AtomicUsize = AtomicUsize::new(usize::MAX);

fn max_bytes() -> usize {
    static CAP: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    let configured = *CAP.get_or_init(|| {
        std::env::var("GIMP_SCRATCH_MB")
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok())
            .map_or(DEFAULT_MAX_BYTES, |mb| mb.saturating_mul(1 << 20))
    });
    configured.min(CEILING.load(Ordering::Relaxed))
}

/// Sets the ceiling, returning the previous one, and frees what the pool holds above it.
pub(crate) fn set_ceiling(bytes: usize) -> usize {
    let before = CEILING.swap(bytes, Ordering::Relaxed);
    let mut pool = POOL.lock().unwrap_or_else(|p| p.into_inner());
    let mut held: usize = pool.iter().map(|b| b.len() * 4).sum();
    while held > max_bytes() {
        match pool.pop() {
            Some(b) => held -= b.len() * 4,
            None => break,
        }
    }
    before
}

static POOL: Mutex<Vec<Vec<f32>>> = Mutex::new(Vec::new());

/// A buffer of `len` values whose contents are unspecified (not necessarily zero).
pub fn buffer(len: usize) -> Vec<f32> {
    if len >= min_len() {
        let mut pool = POOL.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = pool.iter().position(|v| v.len() == len) {
            return pool.swap_remove(i);
        }
    }
    vec![0.0; len]
}

/// Returns a buffer to the pool (or frees it when the pool is full or it is small).
pub fn recycle(v: Vec<f32>) {
    if v.len() < min_len() {
        return;
    }
    let mut pool = POOL.lock().unwrap_or_else(|p| p.into_inner());
    let held: usize = pool.iter().map(|b| b.len() * 4).sum();
    if held + v.len() * 4 <= max_bytes() {
        pool.push(v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recycled_buffers_come_back_by_length() {
        let big = 1 << 18;
        let mut a = buffer(big + 3);
        a[0] = 7.0;
        let ptr = a.as_ptr();
        recycle(a);
        let b = buffer(big + 3);
        assert_eq!(b.as_ptr(), ptr);
        assert_eq!(b.len(), big + 3);
        let c = buffer(big + 4);
        assert_ne!(c.as_ptr(), ptr);
        assert!(c.iter().all(|&v| v == 0.0), "a fresh buffer is zeroed");
        recycle(b);
        recycle(c);
    }
}
