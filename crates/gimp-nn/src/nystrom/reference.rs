//! The graph reference: Nyström attention from candle's ordinary ops with autograd through
//! every step, the straightforward formulation the fused ops and streaming inference are
//! checked against (`tests/nystrom_parity.rs`), and the source of the CLS attention map.
//! It is never chosen by [`super::choose_path`]; callers ask for it by name.

use super::geometry::Geometry;
use super::residual_conv::depthwise_seq_conv;
use super::NystromAttention;
use crate::ops::{self, Mode};
use candle_core::{DType, Result, Tensor, D};

/// The three factors of the approximation `F1 · Z · F3` (per head).
pub struct AttentionParts {
    /// `softmax(Q K̃ᵀ)`, `[b, h, n', m]`.
    pub f1: Tensor,
    /// The pseudo-inverse of `softmax(Q̃ K̃ᵀ)`, `[b, h, m, m]`.
    pub z: Tensor,
    /// `softmax(Q̃ Kᵀ)`, `[b, h, m, n']`.
    pub f3: Tensor,
}

/// Moore–Penrose pseudo-inverse of each `[m, m]` matrix of `a` (`[b, h, m, m]`), as the reference
/// computes it: `Z₀ = Aᵀ / (max row-abs-sum · max column-abs-sum)` with both maxima over the
/// whole tensor, then `Z ← ¼ Z (13I − AZ(15I − AZ(7I − AZ)))`.
pub fn pinv_iterative(a: &Tensor, iterations: usize) -> Result<Tensor> {
    let m = a.dim(D::Minus1)?;
    let abs = a.abs()?;
    let row_max = abs.sum(D::Minus1)?.max_all()?;
    let col_max = abs.sum(D::Minus2)?.max_all()?;
    let mut z = a
        .transpose(D::Minus1, D::Minus2)?
        .contiguous()?
        .broadcast_div(&(row_max * col_max)?)?;
    let eye = Tensor::eye(m, DType::F32, a.device())?;
    for _ in 0..iterations {
        let az = a.matmul(&z)?;
        let t = az.matmul(&eye.affine(7.0, 0.0)?.broadcast_sub(&az)?)?;
        let t = az.matmul(&eye.affine(15.0, 0.0)?.broadcast_sub(&t)?)?;
        z = z
            .matmul(&eye.affine(13.0, 0.0)?.broadcast_sub(&t)?)?
            .affine(0.25, 0.0)?;
    }
    Ok(z)
}

impl NystromAttention {
    fn split_heads(&self, t: &Tensor) -> Result<Tensor> {
        let (b, n, _) = t.dims3()?;
        t.reshape((b, n, self.cfg.heads, self.cfg.dim_head))?
            .transpose(1, 2)?
            .contiguous()
    }

    /// Q (scaled), K, V per head for the front-padded input, and the layout.
    fn project(&self, x: &Tensor) -> Result<(Tensor, Tensor, Tensor, Geometry)> {
        let (qkv, geo) = self.padded_qkv(x)?;
        let inner = self.cfg.heads * self.cfg.dim_head;
        let q = self.split_heads(&qkv.narrow(D::Minus1, 0, inner)?)?;
        let k = self.split_heads(&qkv.narrow(D::Minus1, inner, inner)?)?;
        let v = self.split_heads(&qkv.narrow(D::Minus1, 2 * inner, inner)?)?;
        let q = q.affine(1.0 / (self.cfg.dim_head as f64).sqrt(), 0.0)?;
        Ok((q, k, v, geo))
    }

    /// Landmarks: means of `l` consecutive padded rows (divisor `l` even over padding).
    fn landmarks(&self, t: &Tensor, l: usize) -> Result<Tensor> {
        let (b, h, np, d) = t.dims4()?;
        t.reshape((b, h, np / l, l, d))?
            .sum(3)?
            .affine(1.0 / l as f64, 0.0)
    }

    fn parts(&self, q: &Tensor, k: &Tensor, geo: &Geometry) -> Result<AttentionParts> {
        let ql = self.landmarks(q, geo.segment)?;
        let kl = self.landmarks(k, geo.segment)?;
        let klt = kl.transpose(D::Minus1, D::Minus2)?.contiguous()?;
        let f1 = ops::softmax_last(&q.matmul(&klt)?)?;
        let a = ops::softmax_last(&ql.matmul(&klt)?)?;
        let f3 = ops::softmax_last(&ql.matmul(&k.transpose(D::Minus1, D::Minus2)?.contiguous()?)?)?;
        let z = pinv_iterative(&a, self.cfg.pinv_iterations)?;
        Ok(AttentionParts { f1, z, f3 })
    }

    /// The layer built from candle's ordinary ops (autograd through every step): the
    /// straightforward formulation the fused op is checked against.
    pub fn forward_graph(&self, x: &Tensor, mode: &Mode) -> Result<Tensor> {
        let (b, _, _) = x.dims3()?;
        let (q, k, v, geo) = self.project(x)?;
        let p = self.parts(&q, &k, &geo)?;
        // F1 (Z (F3 V)): re-associated from the reference's (F1 Z)(F3 V) so that nothing of size
        // n' × m × m is computed (4× fewer flops at m = 256, d_h = 64); never n' × n'.
        let mut out = p.f1.matmul(&p.z.matmul(&p.f3.matmul(&v)?)?)?;
        if let Some(w) = &self.res_conv {
            let (h, k) = (self.cfg.heads, self.cfg.residual_kernel);
            out = (out + depthwise_seq_conv(&v, &w.reshape((h, k))?)?)?;
        }
        let out =
            out.transpose(1, 2)?
                .reshape((b, geo.padded, self.cfg.heads * self.cfg.dim_head))?;
        self.project_and_unpad(&out, &geo, mode)
    }

    /// Attention of the query at original position `row` over the original tokens,
    /// `[b, h, n]` (`F1 Z F3` restricted to that row, front padding removed), in memory linear in
    /// the bag: the heat maps' and every inference pass's CLS attention. [`Self::attention_row_graph`]
    /// formed `F1` and `F3` whole (`2 · h · n' · m` floats, 2.5 GB at 150,000 patches, and
    /// as much again for their products); this forms the landmarks from segment means of the
    /// input (the projection is linear), `Z` and the query row's `F1` row, then reads the keys
    /// twice in chunks of [`super::STREAM_CHUNK`] rows, projecting them as it goes: once for each
    /// landmark's log-sum-exp over every key (`F3`'s softmax), once for the row
    /// `(F1[row] Z) F3`. Nothing is recorded for backpropagation.
    pub fn attention_row(&self, x: &Tensor, row: usize) -> Result<Tensor> {
        self.attention_row_chunked(x, row, super::STREAM_CHUNK)
    }

    pub(crate) fn attention_row_chunked(
        &self,
        x: &Tensor,
        row: usize,
        chunk: usize,
    ) -> Result<Tensor> {
        let (b, n, _) = x.dims3()?;
        let geo = self.geometry(n);
        let (h, dh, m) = (self.cfg.heads, self.cfg.dim_head, self.cfg.landmarks);
        let inner = h * dh;
        let chunk = chunk.max(1);
        let w = self.to_qkv.weight.detach();
        let scale = 1.0 / (dh as f64).sqrt();
        // `[r, inner]` → `[h, r, dh]`
        let heads = |t: &Tensor| -> Result<Tensor> {
            let r = t.dim(0)?;
            t.reshape((r, h, dh))?.transpose(0, 1)?.contiguous()
        };
        let wq = w.narrow(0, 0, inner)?.t()?.contiguous()?;
        let wk = w.narrow(0, inner, inner)?.t()?.contiguous()?;
        let mut rows = Vec::with_capacity(b);
        for i in 0..b {
            let xi = x.get(i)?.detach().contiguous()?; // [n, dim]
                                                       // Landmarks: segment means of the front-padded rows' projections (the padding's
                                                       // zero rows count in the divisor, as in `landmarks`), accumulated chunk by chunk.
            let mut sums = vec![0f32; 2 * m * inner];
            for at in (0..n).step_by(chunk) {
                let len = chunk.min(n - at);
                let xc = xi.narrow(0, at, len)?;
                let q = xc
                    .matmul(&wq)?
                    .affine(scale, 0.0)?
                    .flatten_all()?
                    .to_vec1::<f32>()?;
                let k = xc.matmul(&wk)?.flatten_all()?.to_vec1::<f32>()?;
                for t in 0..len {
                    let seg = (geo.pad + at + t) / geo.segment;
                    for (which, v) in [&q, &k].into_iter().enumerate() {
                        let dst =
                            &mut sums[(which * m + seg) * inner..(which * m + seg + 1) * inner];
                        for (d, s) in dst.iter_mut().zip(&v[t * inner..(t + 1) * inner]) {
                            *d += s;
                        }
                    }
                }
            }
            let means = Tensor::from_vec(sums, (2 * m, inner), x.device())?
                .affine(1.0 / geo.segment as f64, 0.0)?;
            let ql = heads(&means.narrow(0, 0, m)?)?; // [h, m, dh]
            let kl = heads(&means.narrow(0, m, m)?)?;
            let klt = kl.transpose(1, 2)?.contiguous()?; // [h, dh, m]
            let a = ops::softmax_last(&ql.matmul(&klt)?)?;
            let z = pinv_iterative(&a.unsqueeze(0)?, self.cfg.pinv_iterations)?.squeeze(0)?;
            let q_row = heads(&xi.narrow(0, row, 1)?.matmul(&wq)?.affine(scale, 0.0)?)?;
            let f1_row = ops::softmax_last(&q_row.matmul(&klt)?)?; // [h, 1, m]
            let left = f1_row.matmul(&z)?; // [h, 1, m]
                                           // Scores of every landmark query against the keys of rows [at, at + len).
            let scores = |at: usize, len: usize| -> Result<Tensor> {
                let k = heads(&xi.narrow(0, at, len)?.matmul(&wk)?)?; // [h, len, dh]
                ql.matmul(&k.transpose(1, 2)?.contiguous()?) // [h, m, len]
            };
            // Each landmark's log-sum-exp over every padded key; the padding's keys are zero
            // vectors, with a score of 0.
            let mut lse: Option<Tensor> = (geo.pad > 0)
                .then(|| {
                    Tensor::full(0f32, (h, m, 1), x.device())?.affine(1.0, (geo.pad as f64).ln())
                })
                .transpose()?;
            for at in (0..n).step_by(chunk) {
                let s = scores(at, chunk.min(n - at))?;
                let mx = s.max_keepdim(2)?;
                let part = (s.broadcast_sub(&mx)?.exp()?.sum_keepdim(2)?.log()? + mx)?;
                lse = Some(match lse {
                    None => part,
                    Some(l) => {
                        let top = l.maximum(&part)?;
                        let sum =
                            (l.broadcast_sub(&top)?.exp()? + part.broadcast_sub(&top)?.exp()?)?;
                        (sum.log()? + top)?
                    }
                });
            }
            let lse = lse.ok_or_else(|| candle_core::Error::Msg("empty bag".into()))?;
            let mut parts = Vec::with_capacity(n.div_ceil(chunk));
            for at in (0..n).step_by(chunk) {
                let f3 = scores(at, chunk.min(n - at))?.broadcast_sub(&lse)?.exp()?;
                parts.push(left.matmul(&f3)?.squeeze(1)?); // [h, len]
            }
            rows.push(Tensor::cat(&parts, 1)?);
        }
        Tensor::stack(&rows, 0)
    }

    /// [`Self::attention_row`] from the graph reference, forming `F1` and `F3` whole (what the
    /// chunked version is checked against).
    pub fn attention_row_graph(&self, x: &Tensor, row: usize) -> Result<Tensor> {
        let (q, k, _, geo) = self.project(x)?;
        let p = self.parts(&q, &k, &geo)?;
        let left = p.f1.narrow(2, geo.pad + row, 1)?.matmul(&p.z)?;
        left.matmul(&p.f3)?.squeeze(2)?.narrow(2, geo.pad, geo.n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nystrom::NystromConfig;
    use crate::ParamStore;
    use candle_core::Device;

    #[test]
    fn chunked_attention_row_equals_the_graphs() {
        // 8 landmarks over 1000 and 1003 tokens: no front padding and 5 rows of it; chunks of 7
        // keys (a partial last chunk) and one chunk of every key. (On a few dozen random tokens
        // the landmarks are means of a handful of rows and the pseudo-inverse amplifies the
        // rounding of either order to about 1e-3 of the values.)
        for (n, legacy) in [(1000, false), (1003, true), (1003, false)] {
            let cfg = NystromConfig {
                dim: 16,
                heads: 2,
                dim_head: 8,
                landmarks: 8,
                pinv_iterations: 6,
                residual: true,
                residual_kernel: 3,
                dropout: 0.0,
                legacy_front_slice: legacy,
            };
            let store = ParamStore::new(7);
            let attn = NystromAttention::new(&store.root(), cfg).unwrap();
            // A fixed input (the test must not depend on the run): a seeded normal draw.
            let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(n as u64);
            let values: Vec<f32> = (0..2 * n * 16)
                .map(|_| rand_distr::Distribution::sample(&rand_distr::StandardNormal, &mut rng))
                .collect();
            let x = Tensor::from_vec(values, (2, n, 16), &Device::Cpu).unwrap();
            for row in [0, n - 1] {
                let want = attn.attention_row_graph(&x, row).unwrap();
                for chunk in [7, n] {
                    let got = attn.attention_row_chunked(&x, row, chunk).unwrap();
                    assert_eq!(got.dims(), want.dims());
                    let err = (got - &want)
                        .unwrap()
                        .abs()
                        .unwrap()
                        .max_all()
                        .unwrap()
                        .to_scalar::<f32>()
                        .unwrap();
                    let max = want
                        .abs()
                        .unwrap()
                        .max_all()
                        .unwrap()
                        .to_scalar::<f32>()
                        .unwrap();
                    assert!(
                        err < 1e-4 * max,
                        "n {n} row {row} chunk {chunk}: {err} of {max}"
                    );
                }
            }
        }
    }
}
