//! Row primitives of the fused kernels, written so the compiler vectorises them, and compiled
//! for the CPU the program runs on.
//!
//! Two things keep plain Rust loops slow here. A running `f32` sum is a sequential dependency
//! the compiler may not reorder, so `iter().sum()` and dot products run one element at a time;
//! these helpers keep 16 independent partial sums (a fixed order, so results are deterministic)
//! which become one vector register. And the crate is built for baseline x86-64 (SSE2), so that
//! one binary runs on every node of a cluster; [`crate::multiversion!`] compiles a kernel also for AVX2
//! and AVX-512 and picks at run time, as the `gemm` crate does for matrix products.

/// Defines `fn NAME(args) -> ret { body }` compiled three times (AVX-512, AVX2+FMA, baseline)
/// and dispatched on the running CPU's features.
#[macro_export]
#[doc(hidden)]
macro_rules! multiversion {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($arg:ident : $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$m])* $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn body($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                // SAFETY (both): `unsafe` only because calling code compiled for CPU features
                // the processor lacks is undefined; they are called below only after the
                // features are detected.
                #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
                unsafe fn v4($($arg: $ty),*) $(-> $ret)? { body($($arg),*) }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn v3($($arg: $ty),*) $(-> $ret)? { body($($arg),*) }
                if std::is_x86_feature_detected!("avx512f")
                    && std::is_x86_feature_detected!("avx512vl")
                    && std::is_x86_feature_detected!("avx2")
                    && std::is_x86_feature_detected!("fma")
                {
                    // SAFETY: the CPU has the features `v4` was compiled for.
                    return unsafe { v4($($arg),*) };
                }
                if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                    // SAFETY: as above, for `v3`.
                    return unsafe { v3($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}

const L: usize = 16;

/// `Σ a[i]·b[i]` over the common length, in 16 partial sums.
#[inline(always)]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let (ca, cb) = (a.chunks_exact(L), b.chunks_exact(L));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    let mut acc = [0f32; L];
    for (x, y) in ca.zip(cb) {
        for k in 0..L {
            acc[k] += x[k] * y[k];
        }
    }
    let mut s = acc.iter().sum::<f32>();
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

/// `Σ a[i]`, in 16 partial sums.
#[inline(always)]
pub fn sum(a: &[f32]) -> f32 {
    let c = a.chunks_exact(L);
    let r = c.remainder();
    let mut acc = [0f32; L];
    for x in c {
        for k in 0..L {
            acc[k] += x[k];
        }
    }
    acc.iter().sum::<f32>() + r.iter().sum::<f32>()
}

/// `Σ (a[i] − m)²`, in 16 partial sums.
#[inline(always)]
pub fn sum_sq_dev(a: &[f32], m: f32) -> f32 {
    let c = a.chunks_exact(L);
    let r = c.remainder();
    let mut acc = [0f32; L];
    for x in c {
        for k in 0..L {
            acc[k] += (x[k] - m) * (x[k] - m);
        }
    }
    acc.iter().sum::<f32>() + r.iter().map(|v| (v - m) * (v - m)).sum::<f32>()
}

/// The largest value (−∞ for an empty slice).
#[inline(always)]
pub fn max(a: &[f32]) -> f32 {
    let c = a.chunks_exact(L);
    let r = c.remainder();
    let mut acc = [f32::NEG_INFINITY; L];
    for x in c {
        for k in 0..L {
            acc[k] = acc[k].max(x[k]);
        }
    }
    acc.iter()
        .chain(r)
        .copied()
        .fold(f32::NEG_INFINITY, f32::max)
}

/// `eˣ` to within a few units in the last place, written so a loop of it vectorises (libm's
/// `expf` is a call per element). Range reduction `x = n·ln 2 + r` with `|r| ≤ ln 2 / 2`
/// (Cody–Waite, two-part ln 2), the Taylor polynomial of degree 7 for `eʳ` (truncation below
/// 6·10⁻⁹ relative), and `2ⁿ` assembled in the exponent bits. Below −87.3 the result is 0
/// (PyTorch's `expf` gives subnormals there; every use here is a softmax, where they vanish).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // Adding and subtracting 1.5·2²³ rounds to the nearest integer without a rounding
    // instruction (SSE2 has none).
    const ROUND: f32 = 12_582_912.0;
    let xc = x.clamp(-87.3, 88.7);
    let shifted = xc * LOG2E + ROUND;
    let n = shifted - ROUND;
    let r = (xc - n * LN2_HI) - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0
                    + r * (1.0 / 24.0
                        + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    // The integer n sits in the low mantissa bits of `shifted`: reading it from there avoids a
    // float-to-int conversion (whose saturating form the compiler does not vectorise).
    let n_int = shifted.to_bits() as i32 - ROUND.to_bits() as i32;
    let scale = f32::from_bits(((n_int + 127) << 23) as u32);
    if x < -87.3 {
        0.0
    } else {
        p * scale
    }
}

/// `acc += alpha · x` on one 16-lane register.
#[inline(always)]
pub fn axpy16(acc: &mut [f32; 16], alpha: f32, x: &[f32; 16]) {
    for k in 0..16 {
        acc[k] += alpha * x[k];
    }
}

/// `acc += a ⊙ b` on one 16-lane register.
#[inline(always)]
pub fn fma16(acc: &mut [f32; 16], a: &[f32; 16], b: &[f32; 16]) {
    for k in 0..16 {
        acc[k] += a[k] * b[k];
    }
}

/// `y += alpha · x`.
#[inline(always)]
pub fn axpy(y: &mut [f32], alpha: f32, x: &[f32]) {
    y.iter_mut().zip(x).for_each(|(a, b)| *a += alpha * b);
}

// Row kernels of the fused ops, dispatched on the CPU's vector extensions.

crate::multiversion! {
    /// Row-wise softmax in place (max subtracted first).
    pub fn softmax_rows(x: &mut [f32], cols: usize) {
        for row in x.chunks_exact_mut(cols) {
            let max = max(row);
            for v in row.iter_mut() {
                *v = exp(*v - max);
            }
            let inv = 1.0 / sum(row);
            row.iter_mut().for_each(|v| *v *= inv);
        }
    }
}

crate::multiversion! {
    /// Softmax backward in place: `g ← f ⊙ (g − Σ_row g ⊙ f)`.
    pub fn softmax_backward_rows(f: &[f32], g: &mut [f32], cols: usize) {
        for (fr, gr) in f.chunks_exact(cols).zip(g.chunks_exact_mut(cols)) {
            let dot = dot(fr, gr);
            for (gv, fv) in gr.iter_mut().zip(fr) {
                *gv = fv * (*gv - dot);
            }
        }
    }
}

crate::multiversion! {
    /// Softmax backward for columns `c0 .. c0 + cb` of the row-softmax `f` (`[rows, n]`), with
    /// each row's `Σ_j g ⊙ f` given: `g ← f ⊙ (g − rowdot)` on the block `g` (`[rows, cb]`).
    pub(crate) fn softmax_backward_block(f: &[f32], n: usize, c0: usize, g: &mut [f32], cb: usize, rowdot: &[f32]) {
        for (i, gr) in g.chunks_exact_mut(cb).enumerate() {
            let fr = &f[i * n + c0..i * n + c0 + cb];
            let dot = rowdot[i];
            for (gv, fv) in gr.iter_mut().zip(fr) {
                *gv = fv * (*gv - dot);
            }
        }
    }
}

crate::multiversion! {
    /// LayerNorm of each row of `src` into `dst` (biased variance, as PyTorch).
    pub fn layer_norm_rows(src: &[f32], dst: &mut [f32], weight: &[f32], bias: &[f32], eps: f32) {
        let dim = weight.len();
        for (s, o) in src.chunks_exact(dim).zip(dst.chunks_exact_mut(dim)) {
            let mean = sum(s) / dim as f32;
            let var = sum_sq_dev(s, mean) / dim as f32;
            let inv = 1.0 / (var + eps).sqrt();
            for (((o, &v), &g), &b) in o.iter_mut().zip(s).zip(weight).zip(bias) {
                *o = (v - mean) * inv * g + b;
            }
        }
    }
}

crate::multiversion! {
    /// LayerNorm backward for whole rows: writes `dx`, adds into `dw` and `db`. Each row's
    /// mean and 1/σ are recomputed (cheaper than keeping them).
    pub fn layer_norm_backward_rows(
        dx: &mut [f32],
        x: &[f32],
        g: &[f32],
        w: &[f32],
        eps: f32,
        dw: &mut [f32],
        db: &mut [f32],
    ) {
        let dim = w.len();
        let mut xhat = vec![0f32; dim];
        let mut gw = vec![0f32; dim];
        for ((dxr, xr), gr) in dx.chunks_exact_mut(dim).zip(x.chunks_exact(dim)).zip(g.chunks_exact(dim)) {
            let mean = sum(xr) / dim as f32;
            let rstd = 1.0 / (sum_sq_dev(xr, mean) / dim as f32 + eps).sqrt();
            for j in 0..dim {
                xhat[j] = (xr[j] - mean) * rstd;
                gw[j] = gr[j] * w[j];
                dw[j] += gr[j] * xhat[j];
                db[j] += gr[j];
            }
            let m1 = sum(&gw) / dim as f32;
            let m2 = dot(&gw, &xhat) / dim as f32;
            for j in 0..dim {
                dxr[j] = rstd * (gw[j] - m1 - xhat[j] * m2);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    crate::multiversion! {
        fn dispatched_dot(a: &[f32], b: &[f32]) -> f32 {
            dot(a, b)
        }
    }

    #[test]
    fn exp_is_within_a_few_ulp_of_libm() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let (ours, libm) = (exp(x) as f64, (x as f64).exp());
            worst = worst.max((ours - libm).abs() / libm);
            x += 0.000_731;
        }
        assert!(worst < 4e-7, "largest relative error {worst}");
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(-100.0), 0.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert!(exp(f32::NAN).is_nan());
    }

    #[test]
    fn reductions_agree_with_plain_loops() {
        for n in [0usize, 1, 15, 16, 17, 100, 1000] {
            let a: Vec<f32> = (0..n)
                .map(|i| ((i * 7919) % 101) as f32 / 50.0 - 1.0)
                .collect();
            let b: Vec<f32> = (0..n)
                .map(|i| ((i * 104729) % 89) as f32 / 40.0 - 1.0)
                .collect();
            let plain_dot: f64 = a
                .iter()
                .zip(&b)
                .map(|(x, y)| (*x as f64) * (*y as f64))
                .sum();
            assert!((dispatched_dot(&a, &b) as f64 - plain_dot).abs() < 1e-4 * (n as f64 + 1.0));
            let plain_sum: f64 = a.iter().map(|&x| x as f64).sum();
            assert!((sum(&a) as f64 - plain_sum).abs() < 1e-4 * (n as f64 + 1.0));
            let mean = if n > 0 {
                plain_sum as f32 / n as f32
            } else {
                0.0
            };
            let plain_sq: f64 = a.iter().map(|&x| ((x - mean) as f64).powi(2)).sum();
            assert!((sum_sq_dev(&a, mean) as f64 - plain_sq).abs() < 1e-4 * (n as f64 + 1.0));
            let plain_max = a.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            assert_eq!(max(&a), plain_max);
        }
    }
}
