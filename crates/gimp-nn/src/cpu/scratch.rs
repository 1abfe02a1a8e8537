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
/// At most this many bytes wait in the pool.
const MAX_BYTES: usize = 1 << 30;

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
    if held + v.len() * 4 <= MAX_BYTES {
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
