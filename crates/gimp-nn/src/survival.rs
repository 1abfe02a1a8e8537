//! Survival losses (`docs/DESIGN.md` §34): the discrete-time negative log-likelihood of MCAT and
//! PORPOISE, and the Cox partial likelihood. Both are compositions of candle ops, so autograd
//! gives their backward; both work in any float dtype.

use crate::loss::index_tensor;
use candle_core::{Result, Tensor};

/// Which survival loss a model trains with (`docs/DESIGN.md` §34): MCAT's and PORPOISE's
/// discrete-time negative log-likelihood over time bins, or Cox's partial likelihood on one
/// log-risk output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SurvivalLoss {
    /// [`nll_survival`]: one output per time bin (hazard logits).
    #[default]
    Nll,
    /// [`cox_partial_likelihood`]: one output, the log-risk.
    Cox,
}

impl SurvivalLoss {
    pub fn name(self) -> &'static str {
        match self {
            SurvivalLoss::Nll => "nll",
            SurvivalLoss::Cox => "cox",
        }
    }
}

impl std::str::FromStr for SurvivalLoss {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "nll" => Ok(SurvivalLoss::Nll),
            "cox" => Ok(SurvivalLoss::Cox),
            other => Err(format!(
                "unknown survival loss '{other}', expected nll or cox"
            )),
        }
    }
}

/// Lower bound of the probabilities whose logs the NLL takes (MCAT's and PORPOISE's `eps`).
pub const NLL_EPS: f64 = 1e-7;

/// Weight of the uncensored-only term: 0 in both references' training scripts
/// (`--alpha_surv` default; MCAT's `NLLSurvLoss` class defaults to 0.15 and its `nll_loss`
/// function to 0.4, but `main.py` always passes the flag).
pub const REFERENCE_ALPHA: f64 = 0.0;

/// `log σ(x) = −softplus(−x)` and `log(1 − σ(x)) = −softplus(x)` without forming `σ(x)`:
/// `softplus(x) = max(x, 0) + log(1 + e^{−|x|})` stays finite (and its gradient too) where
/// `1 − σ(x)` would round to 0.
fn softplus(x: &Tensor) -> Result<Tensor> {
    x.relu()? + (x.abs()?.neg()?.exp()? + 1.0)?.log()?
}

/// The discrete-time survival negative log-likelihood (Zadeh & Schmid 2020) as MCAT and PORPOISE
/// compute it, mean over the batch. `logits` `[B, K]`: hazards `h = σ(logits)`, survival
/// `S_k = Π_{j≤k} (1 − h_j)`, `S_{−1} = 1`. A patient with an event in bin `y` contributes
/// `−log S_{y−1} − log h_y`, a censored one `−log S_y`; each probability is clamped below at
/// [`NLL_EPS`] before its log. The loss is `(1 − α)·(censored + uncensored) + α·uncensored`.
///
/// Computed in log space (`log S` as a cumulative sum of `log(1 − h)`): `log(max(p, ε))` equals
/// `max(log p, log ε)`, so the clamps are the references' exactly, without the cumulative
/// product underflowing to a 0 whose log has no gradient.
pub fn nll_survival(
    logits: &Tensor,
    bins: &[usize],
    censored: &[bool],
    alpha: f64,
) -> Result<Tensor> {
    let (b, k) = logits.dims2()?;
    if bins.len() != b || censored.len() != b || bins.iter().any(|&y| y >= k) {
        candle_core::bail!(
            "nll_survival: {} bins and {} censoring flags for {b} patients of {k} time bins",
            bins.len(),
            censored.len()
        );
    }
    let device = logits.device();
    let dtype = logits.dtype();
    let log_eps = NLL_EPS.ln();
    let log_hazard = softplus(&logits.neg()?)?.neg()?;
    let log_survival = softplus(logits)?.neg()?.cumsum(1)?;
    let log_survival_padded =
        Tensor::cat(&[Tensor::zeros((b, 1), dtype, device)?, log_survival], 1)?;
    let at = |t: &Tensor, idx: &[usize]| -> Result<Tensor> {
        let idx = index_tensor(idx, device)?.reshape((b, 1))?;
        t.gather(&idx, 1)?.maximum(log_eps)?.squeeze(1)
    };
    let next: Vec<usize> = bins.iter().map(|&y| y + 1).collect();
    let s_before = at(&log_survival_padded, bins)?;
    let h_at = at(&log_hazard, bins)?;
    let s_after = at(&log_survival_padded, &next)?;
    let flag = |v: bool| if v { 1.0 } else { 0.0 };
    let c = Tensor::from_vec(
        censored.iter().map(|&v| flag(v)).collect::<Vec<f64>>(),
        b,
        device,
    )?
    .to_dtype(dtype)?;
    let uncensored = (c.affine(-1.0, 1.0)? * (s_before + h_at)?)?.neg()?;
    let censored_term = (c * s_after)?.neg()?;
    let per_patient = ((censored_term + &uncensored)?.affine(1.0 - alpha, 0.0)?
        + uncensored.affine(alpha, 0.0)?)?;
    per_patient.mean_all()
}

/// The risk score of a discrete-time model, as MCAT and PORPOISE rank patients: minus the sum
/// of the survival curve, `−Σ_k S_k` (higher: shorter expected survival). `logits` `[B, K]`.
pub fn discrete_risk(logits: &Tensor) -> Result<Tensor> {
    discrete_survival(logits)?.sum(1)?.neg()
}

/// The survival curve of a discrete-time model: `S_k = Π_{j≤k} (1 − σ(logit_j))`, the
/// probability of no event up to the end of bin `k`, computed as `exp(−Σ softplus)`.
/// `logits` `[B, K]` → `[B, K]`.
pub fn discrete_survival(logits: &Tensor) -> Result<Tensor> {
    softplus(logits)?.neg()?.cumsum(1)?.exp()
}

/// Negative Cox partial log-likelihood with Breslow's handling of tied times, as MCAT's
/// `CoxSurvLoss` writes it: for each patient `i` with an event, `θ_i − log Σ_{j: t_j ≥ t_i}
/// e^{θ_j}` (everyone with an equal or later time is in the risk set), summed and divided by the
/// batch size (all patients, censored included). `risk` `[B]` or `[B, 1]`: higher is a higher
/// hazard. The log-sum-exp subtracts the (detached) largest risk for stability.
pub fn cox_partial_likelihood(risk: &Tensor, time: &[f64], event: &[bool]) -> Result<Tensor> {
    let theta = risk.flatten_all()?;
    let b = theta.dim(0)?;
    if time.len() != b || event.len() != b || b == 0 {
        candle_core::bail!(
            "cox_partial_likelihood: {} times and {} event flags for {b} risks",
            time.len(),
            event.len()
        );
    }
    let device = theta.device();
    let dtype = theta.dtype();
    let at_risk: Vec<f64> = (0..b)
        .flat_map(|i| (0..b).map(move |j| (i, j)))
        .map(|(i, j)| if time[j] >= time[i] { 1.0 } else { 0.0 })
        .collect();
    let at_risk = Tensor::from_vec(at_risk, (b, b), device)?.to_dtype(dtype)?;
    let top = theta.detach().max_all()?;
    let shifted = theta.broadcast_sub(&top)?.exp()?.reshape((b, 1))?;
    let log_risk_set = at_risk
        .matmul(&shifted)?
        .squeeze(1)?
        .log()?
        .broadcast_add(&top)?;
    let events = Tensor::from_vec(
        event
            .iter()
            .map(|&e| if e { 1.0 } else { 0.0 })
            .collect::<Vec<f64>>(),
        b,
        device,
    )?
    .to_dtype(dtype)?;
    ((theta - log_risk_set)? * events)?.mean_all()?.neg()
}
