//! Reusable `f32` buffers for the fused kernels' large intermediates.
//!
//! `vec![0.0; n]` zeroes every buffer; for the `N' × m` attention matrices that a matrix
//! product overwrites entirely anyway, that zeroing was several percent of a training step.
//! [`buffer`] hands back a previously [`recycle`]d buffer of the same length with its old
//! (initialised, finite) contents, so callers must write every element before reading any —
//! which the products with `accumulate = false` do.

use std::sync::Mutex;

/// Smaller buffers are not pooled (the allocator serves them well).
const MIN_LEN: usize = 1 << 18;
/// At most this many bytes wait in the pool.
const MAX_BYTES: usize = 1 << 30;

static POOL: Mutex<Vec<Vec<f32>>> = Mutex::new(Vec::new());

/// A buffer of `len` values whose contents are unspecified (not necessarily zero).
pub fn buffer(len: usize) -> Vec<f32> {
    if len >= MIN_LEN {
        let mut pool = POOL.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = pool.iter().position(|v| v.len() == len) {
            return pool.swap_remove(i);
        }
    }
    vec![0.0; len]
}

/// Returns a buffer to the pool (or frees it when the pool is full or it is small).
pub fn recycle(v: Vec<f32>) {
    if v.len() < MIN_LEN {
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
        let mut a = buffer(MIN_LEN + 3);
        a[0] = 7.0;
        let ptr = a.as_ptr();
        recycle(a);
        let b = buffer(MIN_LEN + 3);
        assert_eq!(b.as_ptr(), ptr);
        assert_eq!(b.len(), MIN_LEN + 3);
        let c = buffer(MIN_LEN + 4);
        assert_ne!(c.as_ptr(), ptr);
        assert!(c.iter().all(|&v| v == 0.0), "a fresh buffer is zeroed");
        recycle(b);
        recycle(c);
        let small = buffer(10);
        assert_eq!(small, vec![0.0; 10]);
    }
}
