//! Losses of GiMP and its baselines, on candle tensors (all differentiable).

use crate::ops::{log_softmax_last, Mode};
use candle_core::{DType, Device, Result, Tensor, D};
use rand::Rng;

/// Row indices as the `u32` tensor `index_select` takes.
pub fn index_tensor(idx: &[usize], device: &Device) -> Result<Tensor> {
    Tensor::from_vec(
        idx.iter().map(|&i| i as u32).collect::<Vec<_>>(),
        idx.len(),
        device,
    )
}

/// Mean cross-entropy of `logits` `[B, C]` against class indices.
pub fn cross_entropy(logits: &Tensor, targets: &[usize]) -> Result<Tensor> {
    let (b, c) = logits.dims2()?;
    if targets.len() != b || targets.iter().any(|&t| t >= c) {
        candle_core::bail!(
            "cross_entropy: {} targets for {b} rows of {c} classes",
            targets.len()
        );
    }
    let lsm = log_softmax_last(logits)?;
    let idx = index_tensor(targets, logits.device())?.reshape((b, 1))?;
    lsm.gather(&idx, 1)?.neg()?.mean_all()
}

/// Mean binary cross-entropy with logits (PyTorch `BCEWithLogitsLoss`), in its stable form
/// `max(x, 0) − x·y + log(1 + e^{−|x|})`.
pub fn bce_with_logits(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let pos = logits.relu()?;
    let soft = (logits.abs()?.neg()?.exp()? + 1.0)?.log()?;
    ((pos - logits.mul(targets)?)? + soft)?.mean_all()
}

/// Mean absolute error over the rows listed in `rows` and every column (`docs/DESIGN.md` §7: L1 on the
/// masked positions, averaged).
pub fn masked_l1(pred: &Tensor, target: &Tensor, rows: &[usize]) -> Result<Tensor> {
    if rows.is_empty() {
        return Tensor::zeros((), DType::F32, pred.device());
    }
    let idx = index_tensor(rows, pred.device())?;
    let p = pred.index_select(&idx, 0)?;
    let t = target.index_select(&idx, 0)?;
    (p - t)?.abs()?.mean_all()
}

/// How triplets are formed in a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mining {
    /// One positive and one negative at random per anchor (`docs/DESIGN.md` §8 default).
    Random,
    /// The farthest positive and the closest negative.
    BatchHard,
}

/// Triplet loss `mean_a max(‖x_a − x_p‖² + δ − ‖x_a − x_n‖², 0)` over anchors that have both a
/// positive (same label, other sample) and a negative. Returns `None` when no anchor does.
pub fn triplet(
    emb: &Tensor,
    labels: &[usize],
    margin: f64,
    mining: Mining,
    mode: &Mode,
) -> Result<Option<Tensor>> {
    let b = labels.len();
    // Squared distances ‖x_i‖² + ‖x_j‖² − 2 x_i·x_j, [B, B].
    let sq = emb.sqr()?.sum_keepdim(1)?;
    let dist = (sq.broadcast_add(&sq.t()?)? - emb.matmul(&emb.t()?)?.affine(2.0, 0.0)?)?.relu()?;
    let dvals: Vec<Vec<f32>> = dist.detach().to_vec2()?;
    let (mut anchors, mut pos, mut neg) = (Vec::new(), Vec::new(), Vec::new());
    for a in 0..b {
        let ps: Vec<usize> = (0..b)
            .filter(|&j| j != a && labels[j] == labels[a])
            .collect();
        let ns: Vec<usize> = (0..b).filter(|&j| labels[j] != labels[a]).collect();
        if ps.is_empty() || ns.is_empty() {
            continue;
        }
        let (p, n) = match mining {
            Mining::Random => {
                mode.with_rng(|r| (ps[r.gen_range(0..ps.len())], ns[r.gen_range(0..ns.len())]))
            }
            Mining::BatchHard => {
                let p = *ps
                    .iter()
                    .max_by(|&&x, &&y| dvals[a][x].total_cmp(&dvals[a][y]))
                    .unwrap_or(&ps[0]);
                let n = *ns
                    .iter()
                    .min_by(|&&x, &&y| dvals[a][x].total_cmp(&dvals[a][y]))
                    .unwrap_or(&ns[0]);
                (p, n)
            }
        };
        anchors.push(a);
        pos.push(p);
        neg.push(n);
    }
    if anchors.is_empty() {
        return Ok(None);
    }
    let flat = dist.flatten_all()?;
    let pick = |other: &[usize]| -> Result<Tensor> {
        let idx: Vec<usize> = anchors.iter().zip(other).map(|(a, o)| a * b + o).collect();
        flat.index_select(&index_tensor(&idx, emb.device())?, 0)
    };
    let dp = pick(&pos)?;
    let dn = pick(&neg)?;
    Ok(Some(((dp - dn)? + margin)?.relu()?.mean_all()?))
}

/// Smooth top-1 SVM (oval-group smooth-topk, k = 1, as CLAM uses it): per sample with scores x,
/// label y and Δ_j = α[j ≠ y], the hard loss `max_j(x_j + Δ_j) − x_y` when the top-1 − top-2 gap
/// is at least τ·ln(1000), else `τ·log Σ_j exp((x_j + Δ_j − x_y)/τ)`; mean over the batch.
pub fn smooth_top1_svm(scores: &Tensor, labels: &[usize], alpha: f64, tau: f64) -> Result<Tensor> {
    let (b, c) = scores.dims2()?;
    let vals: Vec<Vec<f32>> = scores.detach().to_vec2()?;
    let mut delta = vec![alpha as f32; b * c];
    for (i, &y) in labels.iter().enumerate() {
        delta[i * c + y] = 0.0;
    }
    let delta = Tensor::from_vec(delta, (b, c), scores.device())?;
    let idx = index_tensor(labels, scores.device())?.reshape((b, 1))?;
    let xy = scores.gather(&idx, 1)?;
    let aug = scores.add(&delta)?.broadcast_sub(&xy)?;
    let mut losses = Vec::with_capacity(b);
    let thresh = tau * 1000f64.ln();
    for (i, row) in vals.iter().enumerate() {
        let mut sorted = row.clone();
        sorted.sort_by(|a, b| b.total_cmp(a));
        let gap = if c > 1 {
            (sorted[0] - sorted[1]) as f64
        } else {
            f64::INFINITY
        };
        let r = aug.narrow(0, i, 1)?;
        let l = if gap >= thresh {
            r.max_keepdim(1)?
        } else {
            let s = r.affine(1.0 / tau, 0.0)?;
            let m = s.detach().max_keepdim(1)?;
            (s.broadcast_sub(&m)?.exp()?.sum_keepdim(1)?.log()? + m)?.affine(tau, 0.0)?
        };
        losses.push(l);
    }
    Tensor::cat(&losses, 0)?.mean_all()
}

/// InfoNCE between two views `[B, D]` (rows i of `a` and `b` are the positive pair): cross-entropy
/// of the cosine-similarity matrix divided by `temperature`, averaged over both directions.
pub fn info_nce(a: &Tensor, b: &Tensor, temperature: f64) -> Result<Tensor> {
    let norm = |t: &Tensor| -> Result<Tensor> {
        t.broadcast_div(&(t.sqr()?.sum_keepdim(D::Minus1)?.sqrt()? + 1e-12)?)
    };
    let (an, bn) = (norm(a)?, norm(b)?);
    let logits = an.matmul(&bn.t()?)?.affine(1.0 / temperature, 0.0)?;
    let n = logits.dim(0)?;
    let targets: Vec<usize> = (0..n).collect();
    let l1 = cross_entropy(&logits, &targets)?;
    let l2 = cross_entropy(&logits.t()?.contiguous()?, &targets)?;
    (l1 + l2)? * 0.5
}
