"""Reference values for gimp-metrics' survival metrics (crates/gimp-metrics/tests/fixtures/survival.json).

Two fixed random cohorts, each a training part (for the censoring distribution) and a test part:
"ties" has integer times (many tied times, events and censorings at the same time) and risk scores
rounded to one decimal (tied risks), "continuous" has neither. For each: Harrell's c-index and its
pair counts (scikit-survival `concordance_index_censored`), Uno's IPCW c-index without and with a
truncation time (`concordance_index_ipcw`), the Kaplan-Meier estimate of the test part
(`kaplan_meier_estimator`), the cumulative/dynamic AUC and its summary (`cumulative_dynamic_auc`),
Brier scores and the integrated Brier score of predicted survival probabilities (`brier_score`,
`integrated_brier_score`), and the log-rank test between two, three and four risk groups (lifelines
`logrank_test`, `multivariate_logrank_test`).

Also MCAT's discrete time bins (datasets/dataset_survival.py: pandas `qcut` of the uncensored
patients' times into 4 quantile bins, outer edges moved to the smallest and largest time -/+ 1e-6,
`cut` with right=False) with the quantiles taken over a training part only, as gimp-rs fits them
(crates/gimp-cohort/tests/fixtures/survival_bins.json).

Run once (needs numpy, pandas, scikit-survival, lifelines); the output is committed.
"""
import json
import sys

import numpy as np
import pandas as pd
from lifelines.statistics import logrank_test, multivariate_logrank_test
from sksurv.metrics import (brier_score, concordance_index_censored, concordance_index_ipcw,
                            cumulative_dynamic_auc, integrated_brier_score)
from sksurv.nonparametric import kaplan_meier_estimator
from sksurv.util import Surv

out = sys.argv[1] if len(sys.argv) > 1 else "crates/gimp-metrics/tests/fixtures/survival.json"
bins_out = sys.argv[2] if len(sys.argv) > 2 else "crates/gimp-cohort/tests/fixtures/survival_bins.json"


def cohort(rng, n, tied):
    """Exponential event times whose hazard grows with a latent risk, uniform censoring times."""
    latent = rng.normal(size=n)
    event_time = rng.exponential(scale=30.0 * np.exp(-0.8 * latent))
    censor_time = rng.uniform(5.0, 90.0, size=n)
    time = np.minimum(event_time, censor_time)
    event = event_time <= censor_time
    # A noisy estimate of the latent risk.
    risk = latent + rng.normal(scale=0.7, size=n)
    if tied:
        time = np.ceil(time)
        risk = np.round(risk, 1)
    return time, event, risk, latent


def case(name, seed, n_train, n_test, tied):
    rng = np.random.default_rng(seed)
    tr_time, tr_event, _, _ = cohort(rng, n_train, tied)
    te_time, te_event, risk, latent = cohort(rng, n_test, tied)
    # Test follow-up within the training follow-up, as IPCW needs; the longest training time
    # censored so that the censoring distribution stays positive there.
    top = tr_time.max()
    te_time = np.minimum(te_time, top - (1.0 if tied else 0.5))
    tr_event[np.argmax(tr_time)] = False
    train = Surv.from_arrays(tr_event, tr_time)
    test = Surv.from_arrays(te_event, te_time)

    harrell = concordance_index_censored(te_event, te_time, risk)
    uno = concordance_index_ipcw(train, test, risk)
    tau = float(np.quantile(te_time, 0.7))
    uno_tau = concordance_index_ipcw(train, test, risk, tau=tau)
    km_time, km_surv = kaplan_meier_estimator(te_event, te_time)

    times = np.quantile(te_time[te_event], [0.1, 0.3, 0.5, 0.7, 0.9])
    times = np.unique(times)
    auc, mean_auc = cumulative_dynamic_auc(train, test, risk, times)
    # Survival probabilities of a proportional-hazards model with the latent risk.
    surv_prob = np.exp(-np.outer(np.exp(0.8 * latent), times) / 30.0)
    _, brier = brier_score(train, test, surv_prob, times)
    ibs = integrated_brier_score(train, test, surv_prob, times)

    # Risk groups by the estimate: halves and tertiles.
    order = np.argsort(risk, kind="stable")
    two = np.zeros(n_test, dtype=int)
    two[order[n_test // 2:]] = 1
    three = np.zeros(n_test, dtype=int)
    three[order[n_test // 3:]] = 1
    three[order[2 * n_test // 3:]] = 2
    lr2 = logrank_test(te_time[two == 0], te_time[two == 1], te_event[two == 0], te_event[two == 1])
    lr3 = multivariate_logrank_test(te_time, three, te_event)
    four = np.zeros(n_test, dtype=int)
    for k in range(1, 4):
        four[order[k * n_test // 4:]] = k
    lr4 = multivariate_logrank_test(te_time, four, te_event)

    return {
        "name": name,
        "train_time": tr_time.tolist(),
        "train_event": tr_event.tolist(),
        "time": te_time.tolist(),
        "event": te_event.tolist(),
        "risk": risk.tolist(),
        "harrell": {"cindex": harrell[0], "concordant": int(harrell[1]), "discordant": int(harrell[2]),
                    "tied_risk": int(harrell[3]), "tied_time": int(harrell[4])},
        "uno": uno[0],
        "tau": tau,
        "uno_tau": uno_tau[0],
        "km_time": km_time.tolist(),
        "km_survival": km_surv.tolist(),
        "times": times.tolist(),
        "auc": auc.tolist(),
        "mean_auc": float(mean_auc),
        "survival_probability": surv_prob.tolist(),
        "brier": brier.tolist(),
        "integrated_brier": float(ibs),
        "groups_two": two.tolist(),
        "logrank_two": {"statistic": float(lr2.test_statistic), "p": float(lr2.p_value)},
        "groups_three": three.tolist(),
        "logrank_three": {"statistic": float(lr3.test_statistic), "p": float(lr3.p_value)},
        "groups_four": four.tolist(),
        "logrank_four": {"statistic": float(lr4.test_statistic), "p": float(lr4.p_value)},
    }


cases = [case("ties", 17, 60, 40, True), case("continuous", 71, 50, 30, False)]
with open(out, "w") as f:
    json.dump({"cases": cases}, f, indent=None)
    f.write("\n")
print(f"wrote {out}")


def mcat_bins(seed, n, n_bins=4):
    rng = np.random.default_rng(seed)
    time = np.round(rng.exponential(scale=30.0, size=n), 1)
    censorship = (rng.uniform(size=n) < 0.4).astype(int)
    train = rng.uniform(size=n) < 0.7
    uncensored = time[train & (censorship < 1)]
    _, q_bins = pd.qcut(uncensored, q=n_bins, retbins=True, labels=False)
    eps = 1e-6
    q_bins[-1] = time.max() + eps
    q_bins[0] = time.min() - eps
    labels, _ = pd.cut(time, bins=q_bins, retbins=True, labels=False, right=False, include_lowest=True)
    return {"time": time.tolist(), "censorship": censorship.tolist(), "train": train.tolist(),
            "edges": q_bins.tolist(), "bins": np.asarray(labels).astype(int).tolist()}


with open(bins_out, "w") as f:
    json.dump({"cases": [mcat_bins(5, 50), mcat_bins(6, 120)]}, f)
    f.write("\n")
print(f"wrote {bins_out}")
