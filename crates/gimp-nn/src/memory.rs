//! Memory before speed for whole-bag training (`docs/PERFORMANCE.md`, "What bounds the
//! memory").
//!
//! Three things trade memory for speed, and all three pay off only when the same shapes recur:
//! the fused Nyström and gated-attention ops keep their attention matrices (or embeddings) for
//! the backward pass below a size limit, the scratch pool keeps freed kernel buffers, and the
//! caching allocator keeps freed blocks — both by exact size. A pre-training step sees the same
//! 6,000-row windows every time and gains from all three; a fine-tuning step sees one patient's
//! whole bag, a different size each time, so kept buffers are rarely reused and only add to the
//! peak. While a [`WholeBag`] guard lives, the ops rebuild what they would keep and both caches
//! hold nothing: on 6,000- and 24,000-patch GiMP fine-tuning steps this took the peak from 0.41
//! and 0.40 of PyTorch's to 0.24 and 0.27, for 10–30% more time.

/// Whole-bag training mode for as long as it lives (on this thread for the attention limit,
/// process-wide for the caches); dropping it restores the previous settings.
pub struct WholeBag {
    alloc: usize,
    scratch: usize,
    keep: Option<usize>,
}

impl WholeBag {
    pub fn enter() -> Self {
        Self {
            alloc: crate::cpu::alloc::set_ceiling(0),
            scratch: crate::cpu::scratch::set_ceiling(0),
            keep: crate::nystrom::set_keep_attention_limit(Some(0)),
        }
    }
}

impl Drop for WholeBag {
    fn drop(&mut self) {
        crate::cpu::alloc::set_ceiling(self.alloc);
        crate::cpu::scratch::set_ceiling(self.scratch);
        crate::nystrom::set_keep_attention_limit(self.keep);
    }
}

/// Bags from this many patches on train in [`WholeBag`] mode (smaller ones gain little memory
/// and would lose the kept buffers' speed).
pub const WHOLE_BAG_PATCHES: usize = 4_096;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guard_lowers_and_restores_every_setting() {
        let keep_before = crate::nystrom::keep_attention_limit();
        let scratch_before = crate::cpu::scratch::set_ceiling(usize::MAX);
        {
            let _g = WholeBag::enter();
            assert_eq!(crate::nystrom::keep_attention_limit(), 0);
            assert_eq!(crate::cpu::scratch::set_ceiling(0), 0);
            {
                let _inner = WholeBag::enter();
            }
            assert_eq!(
                crate::nystrom::keep_attention_limit(),
                0,
                "nesting keeps it"
            );
        }
        assert_eq!(crate::nystrom::keep_attention_limit(), keep_before);
        assert_eq!(crate::cpu::scratch::set_ceiling(scratch_before), usize::MAX);
    }
}
