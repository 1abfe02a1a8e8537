//! Matrix products on strided views of `f32` slices, through the `gemm` crate (its AVX-512
//! kernels are chosen at run time). Views carry row and column strides, so transposes and
//! column blocks (one head's Q inside `qkv`) cost nothing and nothing is copied to multiply.

use gemm::Parallelism;

/// A read-only strided matrix: element `(i, j)` is `d[off + i·rs + j·cs]`.
#[derive(Clone, Copy)]
pub struct View<'a> {
    pub(crate) d: &'a [f32],
    pub(crate) off: usize,
    pub(crate) rows: usize,
    pub(crate) cols: usize,
    pub(crate) rs: usize,
    pub(crate) cs: usize,
}

impl<'a> View<'a> {
    /// A contiguous row-major `rows × cols` matrix.
    pub fn dense(d: &'a [f32], rows: usize, cols: usize) -> Self {
        assert_eq!(d.len(), rows * cols, "matrix buffer size");
        Self {
            d,
            off: 0,
            rows,
            cols,
            rs: cols,
            cs: 1,
        }
    }

    /// `rows × cols` with rows `rs` apart starting at `off`, contiguous within a row.
    pub fn rows_of(d: &'a [f32], off: usize, rows: usize, cols: usize, rs: usize) -> Self {
        assert!(
            rows == 0 || off + (rows - 1) * rs + cols <= d.len(),
            "strided matrix outside its buffer"
        );
        Self {
            d,
            off,
            rows,
            cols,
            rs,
            cs: 1,
        }
    }

    /// Rows `r0 .. r0 + count` of a matrix.
    pub fn rows(&self, r0: usize, count: usize) -> Self {
        assert!(r0 + count <= self.rows, "rows outside the matrix");
        Self {
            off: self.off + r0 * self.rs,
            rows: count,
            ..*self
        }
    }

    /// A contiguous row-major copy. The convolutions read 33 neighbouring rows at a time; rows
    /// of Q K V sit 6 KB apart inside `qkv`, a stride that maps them onto a few L1 cache sets
    /// and thrashes them, so they run on a packed copy instead.
    pub fn to_dense(&self) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.rows * self.cols);
        for i in 0..self.rows {
            out.extend_from_slice(self.row(i));
        }
        out
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    pub fn t(self) -> Self {
        Self {
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
            ..self
        }
    }

    /// Row `i` of a matrix whose rows are contiguous (every view but a transposed one).
    pub fn row(&self, i: usize) -> &'a [f32] {
        assert_eq!(self.cs, 1, "row of a transposed view");
        &self.d[self.off + i * self.rs..self.off + i * self.rs + self.cols]
    }
}

/// `dst` (contiguous row-major) `= [dst +] alpha · a · b`, on the calling thread (callers run
/// heads in parallel).
pub fn mm(dst: &mut [f32], a: View, b: View, accumulate: bool, alpha: f32) {
    gemm_into(dst, a, b, accumulate, alpha, Parallelism::None)
}

/// `mm` on all of rayon's threads, for one large product.
pub fn mm_parallel(dst: &mut [f32], a: View, b: View, accumulate: bool, alpha: f32) {
    let threads = rayon::current_num_threads();
    let par = if threads > 1 {
        Parallelism::Rayon(threads)
    } else {
        Parallelism::None
    };
    gemm_into(dst, a, b, accumulate, alpha, par)
}

fn gemm_into(dst: &mut [f32], a: View, b: View, accumulate: bool, alpha: f32, par: Parallelism) {
    assert_eq!(a.cols, b.rows, "inner dimensions");
    assert_eq!(dst.len(), a.rows * b.cols, "output size");
    if dst.is_empty() {
        return;
    }
    if a.cols == 0 {
        if !accumulate {
            dst.fill(0.0);
        }
        return;
    }
    // SAFETY: the views were bounds-checked when built (every element they address lies in
    // their slice), `dst` holds exactly `a.rows × b.cols` elements written with unit column
    // stride, and `dst` is a unique borrow, so it aliases neither input.
    unsafe {
        gemm::gemm(
            a.rows,
            b.cols,
            a.cols,
            dst.as_mut_ptr(),
            1,
            b.cols as isize,
            accumulate,
            a.d.as_ptr().add(a.off),
            a.cs as isize,
            a.rs as isize,
            b.d.as_ptr().add(b.off),
            b.cs as isize,
            b.rs as isize,
            1.0,
            alpha,
            false,
            false,
            false,
            par,
        )
    }
}

/// `dst = src · Wᵀ (+ bias)` for `src` `[rows, in]`, `W` `[out, in]`, on all threads.
pub fn linear_rows(src: &[f32], w: View, bias: Option<&[f32]>, dst: &mut [f32]) {
    let rows = src.len() / w.cols();
    mm_parallel(dst, View::dense(src, rows, w.cols()), w.t(), false, 1.0);
    if let Some(b) = bias {
        for row in dst.chunks_exact_mut(b.len()) {
            row.iter_mut().zip(b).for_each(|(a, v)| *a += v);
        }
    }
}
