//! The patch aggregator's first layer on a whole bag in training, as one candle op with a
//! hand-written backward pass: CLS, then `ReLU(x Wᵀ + b)` of every patch read window by window
//! from a row reader, then the square padding's copies of the first patches — the tokens that
//! enter the first layer, `[1, 1 + N + add, dim]`.
//!
//! Through candle's ordinary ops a 150,000-patch TransMIL step held the bag as a tensor
//! (0.6 GB), the fused Linear's pre-activation and output, the padded copy and the copy with
//! CLS (0.3 GB each) until its backward pass: 1.5 GB besides the tokens themselves. Here only
//! the tokens exist; the backward pass reads the bag again from its reader (the
//! memory-mapped feature cache) for the weight gradient, and takes the ReLU's derivative from
//! the output (positive exactly where the pre-activation is). The bag is a leaf: no gradient
//! flows into it.

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use gimp_io::bag::SharedRows;
use gimp_nn::cpu::matmul::{linear_rows, mm_parallel, View};
use gimp_nn::cpu::{slice, with_data};

/// Patches read and embedded at a time: 16 MB of 1024-d features.
const WINDOW: usize = 4096;

pub(crate) struct BagEmbedding {
    bag: SharedRows,
    /// Square-padding copies of the first patches after the last (0 without padding).
    add: usize,
}

impl BagEmbedding {
    pub(crate) fn new(bag: SharedRows, add: usize) -> Self {
        Self { bag, add }
    }

    /// The tokens `[1, 1 + N + add, dim]` from `fc1`'s weight `[dim, D]` and bias `[dim]` and
    /// the CLS token `[1, 1, dim]`.
    pub(crate) fn tokens(self, w: &Tensor, b: &Tensor, cls: &Tensor) -> Result<Tensor> {
        w.contiguous()?
            .apply_op3(&b.contiguous()?, &cls.contiguous()?, self)
    }

    fn check(&self, w: &Layout, b: &Layout, cls: &Layout) -> Result<(usize, usize, usize)> {
        let (n, d_in) = self.bag.dims();
        let (dim, wd) = w.shape().dims2()?;
        if wd != d_in || b.shape().elem_count() != dim || cls.shape().elem_count() != dim {
            candle_core::bail!(
                "bag embedding: a bag of {d_in} values per patch for weights {:?}, bias {:?}, \
                 CLS {:?}",
                w.dims(),
                b.dims(),
                cls.dims()
            );
        }
        if self.add > n {
            candle_core::bail!("bag embedding: {} padding copies of {n} patches", self.add);
        }
        Ok((n, d_in, dim))
    }

    /// Each window `(first row, rows)` of the bag, read into `buf`.
    fn windows(&self, mut each: impl FnMut(usize, usize, &[f32]) -> Result<()>) -> Result<()> {
        let (n, d_in) = self.bag.dims();
        let mut buf = vec![0f32; WINDOW.min(n) * d_in];
        for first in (0..n).step_by(WINDOW) {
            let rows = WINDOW.min(n - first);
            let src = &mut buf[..rows * d_in];
            self.bag
                .read_rows(first, src)
                .map_err(candle_core::Error::wrap)?;
            each(first, rows, src)?;
        }
        Ok(())
    }
}

impl CustomOp3 for BagEmbedding {
    fn name(&self) -> &'static str {
        "bag-embedding"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, d_in, dim) = self.check(l1, l2, l3)?;
        let w = slice(s1, l1, "bag embedding: weight")?;
        let b = slice(s2, l2, "bag embedding: bias")?;
        let cls = slice(s3, l3, "bag embedding: CLS")?;
        let t = 1 + n + self.add;
        let mut out = vec![0f32; t * dim];
        out[..dim].copy_from_slice(cls);
        let wv = View::dense(w, dim, d_in);
        self.windows(|first, rows, src| {
            let dst = &mut out[(1 + first) * dim..(1 + first + rows) * dim];
            linear_rows(src, wv, Some(b), dst);
            dst.iter_mut().for_each(|v| *v = v.max(0.0));
            Ok(())
        })?;
        out.copy_within(dim..(1 + self.add) * dim, (1 + n) * dim);
        Ok((CpuStorage::F32(out), Shape::from((1, t, dim))))
    }

    fn bwd(
        &self,
        w: &Tensor,
        b: &Tensor,
        cls: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (n, d_in) = self.bag.dims();
        let dim = b.elem_count();
        let grad = grad.contiguous()?;
        let (dw, db) = with_data(res, |out| {
            with_data(&grad, |g| {
                let mut dw = vec![0f32; dim * d_in];
                let mut db = vec![0f32; dim];
                let mut dpre = vec![0f32; WINDOW.min(n) * dim];
                let mut started = false;
                self.windows(|first, rows, src| {
                    let dp = &mut dpre[..rows * dim];
                    for (j, row) in dp.chunks_exact_mut(dim).enumerate() {
                        let p = first + j;
                        let at = (1 + p) * dim;
                        row.copy_from_slice(&g[at..at + dim]);
                        // A padding copy's gradient goes to the patch it copies.
                        if p < self.add {
                            let copy = (1 + n + p) * dim;
                            row.iter_mut()
                                .zip(&g[copy..copy + dim])
                                .for_each(|(a, v)| *a += v);
                        }
                        row.iter_mut()
                            .zip(&out[at..at + dim])
                            .for_each(|(a, &y)| *a = if y > 0.0 { *a } else { 0.0 });
                        db.iter_mut().zip(row.iter()).for_each(|(a, v)| *a += v);
                    }
                    let dpv = View::dense(dp, rows, dim);
                    mm_parallel(&mut dw, dpv.t(), View::dense(src, rows, d_in), started, 1.0);
                    started = true;
                    Ok(())
                })?;
                Ok((dw, db))
            })
        })?;
        let dcls = grad.narrow(1, 0, 1)?.reshape(cls.shape())?;
        Ok((
            Some(Tensor::from_vec(dw, w.shape(), w.device())?),
            Some(Tensor::from_vec(db, b.shape(), b.device())?),
            Some(dcls),
        ))
    }
}
