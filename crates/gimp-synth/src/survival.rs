//! Survival outcomes of a synthetic cohort with a known truth (`docs/DESIGN.md` §28): Weibull
//! event times under proportional hazards with the log-hazard
//!
//! `η = class_effect · (class/(C−1) − ½) + programme_effect · u + purity_effect · z(purity)`,
//!
//! where `u = (f₀ + f₁)/√2` combines the patient's first two latent gene programmes (written into
//! its expression) and `z(purity)` is the standardised tumour purity (written into both the
//! slide's tumour fraction and the subtype programme's strength); exponential censoring times
//! whose rate gives the configured expected censoring fraction.
//!
//! Every number comes from the patient's latent variables and a survival stream of its own,
//! drawn from nowhere else, so adding survival changes no other file of the cohort.

use crate::config::{SurvivalSettings, SynthConfig};
use crate::model::{self, PatientLatent};
use gimp_metrics::survival::{concordance_index_censored, Outcomes, TIED_TOL};
use rand::Rng;

/// Months are written with MCAT's two decimals; no time is below one hundredth.
const RESOLUTION: f64 = 0.01;

/// One patient's survival truth and observation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PatientSurvival {
    /// The true log-hazard η: the best possible risk score.
    pub log_hazard: f64,
    /// The latent programme risk `u` (standard normal).
    pub programme_risk: f64,
    pub event_time: f64,
    pub censoring_time: f64,
    /// `min(event, censoring)` rounded to 0.01 months, at least 0.01.
    pub months: f64,
    /// 1 when censored (MCAT's `censorship`).
    pub censored: bool,
}

/// Survival of every patient, with the censoring rate solved for the cohort's log-hazards.
pub fn outcomes(
    cfg: &SynthConfig,
    s: &SurvivalSettings,
    patients: &[PatientLatent],
) -> Vec<PatientSurvival> {
    let c = cfg.classes.len().max(2);
    let (a, b) = cfg.purity_beta;
    let purity_mean = a / (a + b);
    let purity_sd = (a * b / ((a + b).powi(2) * (a + b + 1.0))).sqrt();
    let log_hazards: Vec<(f64, f64)> = patients
        .iter()
        .map(|p| {
            let f = model::programme_factors(&mut model::expression_rng(cfg, p));
            let u = (f[0] as f64 + f[1] as f64) / std::f64::consts::SQRT_2;
            let class = p.true_class as f64 / (c - 1) as f64 - 0.5;
            let purity = (p.purity - purity_mean) / purity_sd;
            (
                s.class_effect * class + s.programme_effect * u + s.purity_effect * purity,
                u,
            )
        })
        .collect();
    // Weibull scale so that a patient with η = 0 has the configured median.
    let scale = s.median_months / std::f64::consts::LN_2.powf(1.0 / s.shape);
    let rate = censoring_rate(
        &log_hazards.iter().map(|h| h.0).collect::<Vec<_>>(),
        scale,
        s.shape,
        s.censoring_rate,
    );
    patients
        .iter()
        .zip(&log_hazards)
        .map(|(p, &(eta, u))| {
            let mut rng = model::stream(cfg.seed ^ 0x5A17_1CA1, p.index as u64);
            // 1 − U lies in (0, 1]; its log is finite.
            let e_event = -(1.0 - rng.gen::<f64>()).ln();
            let e_censor = -(1.0 - rng.gen::<f64>()).ln();
            let event_time = scale * (e_event / eta.exp()).powf(1.0 / s.shape);
            let censoring_time = if rate > 0.0 {
                e_censor / rate
            } else {
                f64::INFINITY
            };
            let observed = event_time.min(censoring_time);
            PatientSurvival {
                log_hazard: eta,
                programme_risk: u,
                event_time,
                censoring_time,
                months: ((observed / RESOLUTION).round() * RESOLUTION).max(RESOLUTION),
                censored: censoring_time < event_time,
            }
        })
        .collect()
}

/// The exponential censoring rate μ whose expected censored fraction over these patients,
/// `mean_i P(C < Tᵢ) = mean_i ∫ μ e^{−μc} Sᵢ(c) dc` with the Weibull survival
/// `Sᵢ(t) = exp(−(t/scale)^shape · e^{ηᵢ})`, is `target` (0 → no censoring). With `c = x/μ` the
/// integral is `E_x[Sᵢ(x/μ)]` over x ~ Exp(1): a midpoint rule over 400 of its quantiles. μ by
/// bisection on its logarithm (the fraction grows with μ).
fn censoring_rate(log_hazards: &[f64], scale: f64, shape: f64, target: f64) -> f64 {
    if target <= 0.0 {
        return 0.0;
    }
    const NODES: usize = 400;
    // Sᵢ(x/μ) = exp(−x^shape · (μ·scale)^−shape · e^ηᵢ): the powers are computed once.
    let powers: Vec<f64> = (0..NODES)
        .map(|j| (-(1.0 - (j as f64 + 0.5) / NODES as f64).ln()).powf(shape))
        .collect();
    let hazards: Vec<f64> = log_hazards.iter().map(|e| e.exp()).collect();
    let fraction = |log_mu: f64| -> f64 {
        let c = (-shape * (log_mu + scale.ln())).exp();
        hazards
            .iter()
            .map(|h| powers.iter().map(|p| (-p * c * h).exp()).sum::<f64>())
            .sum::<f64>()
            / (NODES * hazards.len().max(1)) as f64
    };
    // μ between 1e-6 and 1e6 events per `scale`: 60 halvings leave a relative error of 1e-16.
    let (mut lo, mut hi) = ((1e-6 / scale).ln(), (1e6 / scale).ln());
    for _ in 0..60 {
        let mid = 0.5 * (lo + hi);
        if fraction(mid) < target {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    (0.5 * (lo + hi)).exp()
}

/// Harrell's c-index of the true log-hazard on the written outcomes: the ceiling a model can
/// reach on this cohort (up to sampling). `None` when no patient has an event.
pub fn truth_cindex(outcomes: &[PatientSurvival]) -> Option<f64> {
    let time: Vec<f64> = outcomes.iter().map(|o| o.months).collect();
    let event: Vec<bool> = outcomes.iter().map(|o| !o.censored).collect();
    let risk: Vec<f64> = outcomes.iter().map(|o| o.log_hazard).collect();
    let o = Outcomes::new(&time, &event).ok()?;
    concordance_index_censored(o, &risk, TIED_TOL)
        .ok()
        .map(|c| c.cindex)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn censoring_rate_gives_the_expected_fraction() {
        // Exponential times (shape 1) and censoring: P(C < T) = μ / (μ + e^η / scale), closed form.
        let etas = [-1.0, 0.0, 0.5, 2.0];
        let mu = censoring_rate(&etas, 10.0, 1.0, 0.4);
        let closed: f64 = etas
            .iter()
            .map(|&e: &f64| mu / (mu + e.exp() / 10.0))
            .sum::<f64>()
            / 4.0;
        assert!((closed - 0.4).abs() < 2e-3, "{closed}");
        assert_eq!(censoring_rate(&etas, 10.0, 1.0, 0.0), 0.0);
    }
}
