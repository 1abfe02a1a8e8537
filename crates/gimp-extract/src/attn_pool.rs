//! CoCa's attentional pooler with one learned query, then a LayerNorm: the head CONCH v1 and
//! v1.5 put on their ViT trunk (`attn_pool_contrast`, `ln_contrast`; `docs/DESIGN.md` §35).
//!
//! The reference computes `LN_out(W_o · MHA(W_q · LN_q(query), W_k · LN_k(x), W_v · LN_k(x)) +
//! b_o)` over the trunk's tokens `x`. The query does not depend on the image, so it is
//! projected once at load; and with a single query row per head the keys and values need never
//! be formed: a head's scores are `LN_k(x) · (W_kₕᵀ qₕ)` (the key bias adds the same number to
//! every score and cancels in the softmax), and its output is `W_vₕ · (Σₜ aₜ LN_k(x)ₜ) + b_vₕ`
//! (the weights sum to one). That turns two `T × C × 2·inner` products per image into
//! `T × C × heads` ones — the same arithmetic, reordered.

use gimp_nn::cpu::lanes;
use gimp_nn::cpu::matmul::{mm, View};
use rayon::prelude::*;

/// LayerNorm ε of the pooler's and the output's norms (`nn.LayerNorm`'s default).
pub const EPS: f32 = 1e-5;

/// The pooler's tensors, row-major, in PyTorch's `[out, in]` Linear layout.
pub struct PoolerWeights {
    /// `[queries, d_model]`; only the first query's output is returned.
    pub query: Vec<f32>,
    pub ln_q: (Vec<f32>, Vec<f32>),
    pub ln_k: (Vec<f32>, Vec<f32>),
    /// `[inner, d_model]`, `[inner, context]`, `[inner, context]`, `[d_model, inner]`.
    pub w_q: Vec<f32>,
    pub w_k: Vec<f32>,
    pub w_v: Vec<f32>,
    pub w_o: Vec<f32>,
    /// Biases, where the reference has them (`nn.MultiheadAttention`: all four; CONCH v1.5's
    /// einsum pooler: none).
    pub b_q: Option<Vec<f32>>,
    pub b_v: Option<Vec<f32>>,
    pub b_o: Option<Vec<f32>>,
    /// The LayerNorm on the pooled vector (`ln_contrast`).
    pub ln_out: (Vec<f32>, Vec<f32>),
    pub heads: usize,
}

/// A loaded pooler, the query already projected.
pub struct AttentionalPooler {
    context: usize,
    d_model: usize,
    inner: usize,
    heads: usize,
    ln_k: (Vec<f32>, Vec<f32>),
    /// `[heads, context]`: `W_kₕᵀ qₕ · scale` per head.
    key_probe: Vec<f32>,
    w_v: Vec<f32>,
    b_v: Option<Vec<f32>>,
    w_o: Vec<f32>,
    b_o: Option<Vec<f32>>,
    ln_out: (Vec<f32>, Vec<f32>),
}

impl AttentionalPooler {
    /// Builds the pooler; the shapes have been checked by the caller (`context` is the trunk's
    /// width, `d_model` the query's, `inner` the projections' output).
    pub fn new(w: PoolerWeights, context: usize, d_model: usize, inner: usize) -> Self {
        let hd = inner / w.heads;
        let scale = (hd as f32).powf(-0.5);
        let mut q_ln = vec![0f32; d_model];
        lanes::layer_norm_rows(&w.query[..d_model], &mut q_ln, &w.ln_q.0, &w.ln_q.1, EPS);
        // q = W_q · LN_q(query) + b_q.
        let q: Vec<f32> = (0..inner)
            .map(|o| {
                let row = &w.w_q[o * d_model..(o + 1) * d_model];
                let dot: f32 = row.iter().zip(&q_ln).map(|(a, b)| a * b).sum();
                dot + w.b_q.as_ref().map_or(0.0, |b| b[o])
            })
            .collect();
        // Per head h: probe_h[c] = scale · Σ_j q[h·hd + j] · W_k[h·hd + j, c].
        let mut key_probe = vec![0f32; w.heads * context];
        for h in 0..w.heads {
            let probe = &mut key_probe[h * context..(h + 1) * context];
            for j in 0..hd {
                let qj = q[h * hd + j] * scale;
                let row = &w.w_k[(h * hd + j) * context..(h * hd + j + 1) * context];
                probe.iter_mut().zip(row).for_each(|(p, k)| *p += qj * k);
            }
        }
        Self {
            context,
            d_model,
            inner,
            heads: w.heads,
            ln_k: w.ln_k,
            key_probe,
            w_v: w.w_v,
            b_v: w.b_v,
            w_o: w.w_o,
            b_o: w.b_o,
            ln_out: w.ln_out,
        }
    }

    pub fn out_dim(&self) -> usize {
        self.d_model
    }

    /// The trunk's tokens `[B, T, context]` → pooled, normalised vectors `[B, d_model]`,
    /// images in parallel.
    pub fn forward(&self, tokens: &[f32], b: usize, t: usize) -> Vec<f32> {
        let (c, hd) = (self.context, self.inner / self.heads);
        let mut out = vec![0f32; b * self.d_model];
        out.par_chunks_mut(self.d_model)
            .zip(tokens.par_chunks(t * c))
            .for_each(|(o, x)| {
                let mut xn = vec![0f32; t * c];
                lanes::layer_norm_rows(x, &mut xn, &self.ln_k.0, &self.ln_k.1, EPS);
                // Scores [heads, T], softmax over the tokens.
                let mut scores = vec![0f32; self.heads * t];
                let probe = View::dense(&self.key_probe, self.heads, c);
                mm(&mut scores, probe, View::dense(&xn, t, c).t(), false, 1.0);
                lanes::softmax_rows(&mut scores, t);
                // Attention-weighted context per head [heads, C].
                let mut mixed = vec![0f32; self.heads * c];
                mm(
                    &mut mixed,
                    View::dense(&scores, self.heads, t),
                    View::dense(&xn, t, c),
                    false,
                    1.0,
                );
                // Head h's output: W_v rows of h on its mixed context, plus the value bias.
                let mut attended = vec![0f32; self.inner];
                for (h, m) in mixed.chunks_exact(c).enumerate() {
                    for j in h * hd..(h + 1) * hd {
                        let row = &self.w_v[j * c..(j + 1) * c];
                        let dot: f32 = row.iter().zip(m).map(|(a, b)| a * b).sum();
                        attended[j] = dot + self.b_v.as_ref().map_or(0.0, |bv| bv[j]);
                    }
                }
                let mut pooled = vec![0f32; self.d_model];
                for (i, p) in pooled.iter_mut().enumerate() {
                    let row = &self.w_o[i * self.inner..(i + 1) * self.inner];
                    let dot: f32 = row.iter().zip(&attended).map(|(a, b)| a * b).sum();
                    *p = dot + self.b_o.as_ref().map_or(0.0, |bo| bo[i]);
                }
                lanes::layer_norm_rows(&pooled, o, &self.ln_out.0, &self.ln_out.1, EPS);
            });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reordered computation against the textbook one (keys and values formed, biases
    /// included) on small random weights.
    #[test]
    fn matches_the_direct_computation() {
        let (c, dm, inner, heads, t) = (6, 4, 8, 2, 5);
        let mut seed = 7u32;
        let mut r = |n: usize| -> Vec<f32> {
            (0..n)
                .map(|_| {
                    seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                    (seed >> 8) as f32 / (1u32 << 24) as f32 - 0.5
                })
                .collect()
        };
        let ln = |v: Vec<f32>, n: usize| (v.iter().map(|a| 1.0 + a).collect(), v[..n].to_vec());
        let w = PoolerWeights {
            query: r(dm),
            ln_q: ln(r(dm), dm),
            ln_k: ln(r(c), c),
            w_q: r(inner * dm),
            w_k: r(inner * c),
            w_v: r(inner * c),
            w_o: r(dm * inner),
            b_q: Some(r(inner)),
            b_v: Some(r(inner)),
            b_o: Some(r(dm)),
            ln_out: ln(r(dm), dm),
            heads,
        };
        let b_k = r(inner);
        let x = r(2 * t * c);
        // Direct: q, K, V, softmax(q Kᵀ / √hd) V per head, W_o, LN.
        let lin = |w: &[f32], b: Option<&[f32]>, v: &[f32], out: usize, inp: usize| -> Vec<f32> {
            (0..out)
                .map(|o| {
                    let d: f32 = (0..inp).map(|i| w[o * inp + i] * v[i]).sum();
                    d + b.map_or(0.0, |b| b[o])
                })
                .collect()
        };
        let norm = |v: &[f32], g: &(Vec<f32>, Vec<f32>)| {
            let mut o = vec![0f32; v.len()];
            lanes::layer_norm_rows(v, &mut o, &g.0, &g.1, EPS);
            o
        };
        let q = lin(
            &w.w_q,
            w.b_q.as_deref(),
            &norm(&w.query, &w.ln_q),
            inner,
            dm,
        );
        let hd = inner / heads;
        let mut want = Vec::new();
        for img in x.chunks_exact(t * c) {
            let xs: Vec<Vec<f32>> = img.chunks_exact(c).map(|v| norm(v, &w.ln_k)).collect();
            let ks: Vec<Vec<f32>> = xs
                .iter()
                .map(|v| lin(&w.w_k, Some(&b_k), v, inner, c))
                .collect();
            let vs: Vec<Vec<f32>> = xs
                .iter()
                .map(|v| lin(&w.w_v, w.b_v.as_deref(), v, inner, c))
                .collect();
            let mut att = vec![0f32; inner];
            for h in 0..heads {
                let s: Vec<f32> = ks
                    .iter()
                    .map(|k| {
                        (0..hd).map(|j| q[h * hd + j] * k[h * hd + j]).sum::<f32>()
                            / (hd as f32).sqrt()
                    })
                    .collect();
                let m = s.iter().cloned().fold(f32::MIN, f32::max);
                let e: Vec<f32> = s.iter().map(|v| (v - m).exp()).collect();
                let z: f32 = e.iter().sum();
                for (ti, v) in vs.iter().enumerate() {
                    for j in 0..hd {
                        att[h * hd + j] += e[ti] / z * v[h * hd + j];
                    }
                }
            }
            want.extend(norm(
                &lin(&w.w_o, w.b_o.as_deref(), &att, dm, inner),
                &w.ln_out,
            ));
        }
        let got = AttentionalPooler::new(w, c, dm, inner).forward(&x, 2, t);
        for (a, b) in got.iter().zip(&want) {
            assert!((a - b).abs() < 1e-4, "{a} vs {b}");
        }
    }
}
